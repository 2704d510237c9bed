\set k random(1, 9000000000000000000)
with k as (select 'key-' || cast(:k as bigint) as key),
t as (
  insert into durable.tasks (queue_name, task_id, task_name, params, retry_strategy, max_attempts, state,
                               attempts, last_attempt_run, enqueued_at, idempotency_key, key_hash, key_held)
  select 'bench', gen_random_uuid(), 'noop', '{"n": 1}', '{"kind": "none"}', 5, 'pending', 1, gen_random_uuid(), now(),
         k.key, sha256(convert_to('k:' || k.key, 'UTF8')), true
    from k
  on conflict (queue_name, task_name, key_hash) where key_held do nothing
  returning task_id, last_attempt_run)
insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
select 'bench', last_attempt_run, task_id, 1, 'pending', now(), now() from t;
