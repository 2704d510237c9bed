-- durable._key_hash(task_name, params, only_once, idempotency_key): the
-- deduplication key a spawn stores in key_hash, or NULL for a spawn without a
-- key. The encoding is spawn_task's (see its header): an explicit key wins and
-- hashes as 'k:' || key; otherwise only_once hashes 'o:' || [name, params] as
-- jsonb text (SQL NULL params count as JSON null); otherwise there is no key.
--
-- A plain SQL expression, so the planner inlines it into set-based callers
-- (spawn_tasks) at no per-row call cost. It must stay byte for byte the same
-- as spawn_task's: TestSpawnGoldenKeyHash and the batch tests pin both.
-- Locks nothing; raises nothing.
create or replace function durable._key_hash(
  p_task_name text,
  p_params jsonb,
  p_only_once boolean,
  p_idempotency_key text)
returns bytea
language sql
stable
as $$
  select case
           when p_idempotency_key is not null then
             sha256(convert_to('k:' || p_idempotency_key, 'UTF8'))
           when p_only_once then
             sha256(convert_to('o:' || jsonb_build_array(p_task_name, coalesce(p_params, 'null'::jsonb))::text, 'UTF8'))
         end
$$;
