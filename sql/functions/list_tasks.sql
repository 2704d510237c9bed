-- durable.list_tasks(queue, state, task_name, idempotency_key, limit): up to
-- p_limit tasks of the queue matching every filter given (null: any), with
-- their current run. For operators; workers never need it.
--
-- Which index it reads, and in which order the tasks come:
--   state pending or sleeping  the ready index of runs (r_<queue>_ready), in
--                              order of available_at: the order claims take.
--   state running              the lease index (r_<queue>_lease), in order of
--                              lease expiry: the first to expire first.
--   otherwise                  the task table, in no particular order: the first
--                              p_limit matches met. Final states have no index
--                              (one would slow every state change), so a filter
--                              that few finished tasks match may read much of
--                              the table before it has p_limit rows.
-- The live-state plans read only live runs, however many tasks have finished,
-- walking the index in its order and stopping at p_limit matches (ties in
-- available_at or lease expiry come in no particular order).
-- p_idempotency_key matches explicit keys (spawn_task's p_idempotency_key)
-- by their hash, as spawn_task compares them.
--
-- Locks nothing. Raises QD001, QD002 and QD006 (invalid_argument: an unknown
-- state, p_limit outside 1..1000).
create or replace function durable.list_tasks(
  p_queue_name text,
  p_state text default null,
  p_task_name text default null,
  p_idempotency_key text default null,
  p_limit integer default 100)
returns table (
  task_id          uuid,
  task_name        text,
  state            text,
  attempts         integer,
  max_attempts     integer,
  idempotency_key  text,
  run_id           uuid,
  available_at     timestamptz,
  enqueued_at      timestamptz,
  first_started_at timestamptz,
  finished_at      timestamptz,
  parent_task_id   uuid)
language plpgsql
security definer
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hash bytea := durable._key_hash(p_task_name, null, false, p_idempotency_key);
  v_filters text := '($2::text is null or t.task_name = $2)
                     and ($3::bytea is null or t.key_hash = $3)';
  v_columns text := 't.task_id, t.task_name, t.state, t.attempts, t.max_attempts, t.idempotency_key,
                     r.run_id, r.available_at, t.enqueued_at, t.first_started_at, t.finished_at,
                     t.parent_task_id';
begin
  perform durable._require_queue(p_queue_name);
  if p_state is not null
     and p_state not in ('pending', 'running', 'sleeping', 'completed', 'failed', 'cancelled') then
    raise exception 'unknown task state %', quote_literal(p_state)
      using errcode = 'QD006',
            hint = 'A state is one of pending, running, sleeping, completed, failed, cancelled.';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'limit must be between 1 and 1000, got %', coalesce(p_limit::text, 'null')
      using errcode = 'QD006';
  end if;

  if p_state in ('pending', 'sleeping') then
    return query execute format(
      'select ' || v_columns || '
         from durable.%2$I r
         join durable.%1$I t on t.task_id = r.task_id and t.last_attempt_run = r.run_id
        where r.state in (''pending'', ''sleeping'') and r.state = $1 and t.state = $1
          and ' || v_filters || '
        order by r.available_at
        limit $4', 't_' || p_queue_name, 'r_' || p_queue_name)
      using p_state, p_task_name, v_hash, p_limit;
  elsif p_state = 'running' then
    return query execute format(
      'select ' || v_columns || '
         from durable.%2$I r
         join durable.%1$I t on t.task_id = r.task_id and t.last_attempt_run = r.run_id
        where r.state = ''running'' and t.state = $1
          and ' || v_filters || '
        order by r.claim_expires_at
        limit $4', 't_' || p_queue_name, 'r_' || p_queue_name)
      using p_state, p_task_name, v_hash, p_limit;
  else
    return query execute format(
      'select ' || v_columns || '
         from (select * from durable.%1$I t
                where ($1::text is null or t.state = $1)
                  and ' || v_filters || '
                limit $4) t
         left join durable.%2$I r on r.run_id = t.last_attempt_run', 't_' || p_queue_name, 'r_' || p_queue_name)
      using p_state, p_task_name, v_hash, p_limit;
  end if;
end;
$$;
