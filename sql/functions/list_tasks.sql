-- durable.list_tasks(queue, state, task_name, idempotency_key, limit): up to
-- p_limit tasks of the queue matching every filter given (null: any), with
-- their current run. For operators; workers never need it.
--
-- Which index it reads (every one leads with queue_name), and in which order
-- the tasks come:
--   state pending or sleeping  the ready index of runs (runs_ready), in order
--                              of available_at: the order claims take.
--   state running              the lease index (runs_lease), in order of lease
--                              expiry: the first to expire first.
--   otherwise                  in no particular order, the first p_limit
--                              matches met among: finished tasks holding no
--                              key (tasks_finished), tasks holding a key
--                              (tasks_key), and, without a state, live tasks
--                              through their live run (runs_ready, runs_lease).
--                              Final states have no index of their own (one
--                              would slow every state change), so a filter that
--                              few finished tasks match may read many of the
--                              queue's finished tasks before it has p_limit rows.
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

  -- One statement per live state, each reading its own partial index in
  -- order (runs_ready, runs_lease): one statement for both could use neither.
  if p_state in ('pending', 'sleeping') then
    return query
      select t.task_id, t.task_name, t.state, t.attempts, t.max_attempts, t.idempotency_key,
             r.run_id, r.available_at, t.enqueued_at, t.first_started_at, t.finished_at,
             t.parent_task_id
        from durable.runs r
        join durable.tasks t
          on t.task_id = r.task_id and t.last_attempt_run = r.run_id and t.queue_name = p_queue_name
       where r.queue_name = p_queue_name
         and r.state in ('pending', 'sleeping') and r.state = p_state and t.state = p_state
         and (p_task_name is null or t.task_name = p_task_name)
         and (v_hash is null or t.key_hash = v_hash)
       order by r.available_at
       limit p_limit;
  elsif p_state = 'running' then
    return query
      select t.task_id, t.task_name, t.state, t.attempts, t.max_attempts, t.idempotency_key,
             r.run_id, r.available_at, t.enqueued_at, t.first_started_at, t.finished_at,
             t.parent_task_id
        from durable.runs r
        join durable.tasks t
          on t.task_id = r.task_id and t.last_attempt_run = r.run_id and t.queue_name = p_queue_name
       where r.queue_name = p_queue_name
         and r.state = 'running' and t.state = p_state
         and (p_task_name is null or t.task_name = p_task_name)
         and (v_hash is null or t.key_hash = v_hash)
       order by r.claim_expires_at
       limit p_limit;
  else
    -- Here p_state is null or a final state. The four parts do not overlap:
    -- finished without a key, with a key, live without a key (two run indexes).
    return query
      select t.task_id, t.task_name, t.state, t.attempts, t.max_attempts, t.idempotency_key,
             r.run_id, r.available_at, t.enqueued_at, t.first_started_at, t.finished_at,
             t.parent_task_id
        from (select f.* from durable.tasks f
               where f.queue_name = p_queue_name and f.finished_at is not null and not f.key_held
                 and (p_state is null or f.state = p_state)
                 and (p_task_name is null or f.task_name = p_task_name)
                 and (v_hash is null or f.key_hash = v_hash)
              union all
              select k.* from durable.tasks k
               where k.queue_name = p_queue_name and k.key_held
                 and (p_state is null or k.state = p_state)
                 and (p_task_name is null or k.task_name = p_task_name)
                 and (v_hash is null or k.key_hash = v_hash)
              union all
              select l.* from durable.runs lr
                join durable.tasks l
                  on l.task_id = lr.task_id and l.last_attempt_run = lr.run_id
                 and l.queue_name = p_queue_name
               where p_state is null
                 and lr.queue_name = p_queue_name and lr.state in ('pending', 'sleeping')
                 and not l.key_held
                 and (p_task_name is null or l.task_name = p_task_name)
                 and (v_hash is null or l.key_hash = v_hash)
              union all
              select l.* from durable.runs lr
                join durable.tasks l
                  on l.task_id = lr.task_id and l.last_attempt_run = lr.run_id
                 and l.queue_name = p_queue_name
               where p_state is null
                 and lr.queue_name = p_queue_name and lr.state = 'running'
                 and not l.key_held
                 and (p_task_name is null or l.task_name = p_task_name)
                 and (v_hash is null or l.key_hash = v_hash)
              limit p_limit) t
        left join durable.runs r on r.run_id = t.last_attempt_run and r.queue_name = p_queue_name;
  end if;
end;
$$;
