-- durable.queue_stats(queue): one row of figures about a queue, for an
-- autoscaler or a person on call, cheap enough to poll every second.
--
--   pending, running, sleeping  tasks in each live state: exact.
--   completed, failed,          tasks in each final state: exact when the
--   cancelled                   queue has few finished tasks (see below),
--                               else estimates (terminal_counts says which).
--   finished                    completed + failed + cancelled.
--   ready_now                   runs a worker could claim now (pending or
--                               sleeping, available_at reached): exact.
--   scheduled                   pending or sleeping runs due later: exact.
--   oldest_ready_age            seconds since the longest-waiting ready run
--                               became available (0 when none is ready): how
--                               far behind the workers are.
--   keys_held                   live tasks holding an idempotency key: exact.
--   terminal_counts             'exact' or 'estimated'.
--   measured_at                 durable.current_time() of the figures.
--
-- Cost. The live figures read only the partial indexes of the queue's live
-- runs (runs_ready, runs_lease) and held keys (tasks_key), so they cost in
-- proportion to the live work, never to the finished tasks. Final states have
-- no index of their own (one would slow every state change), so the final
-- counts go by the planner's estimate of the queue's finished tasks holding
-- no key (_planned_rows, with the queue name as a literal: a parameter would
-- give a generic estimate): at most 20000, they are counted exactly, through tasks_finished
-- plus the finished tasks that still hold their key (tasks_key). Above, each
-- final state is the planner's estimate of the queue's tasks in that state,
-- from the statistics object tasks_queue_state (queue_name, state) of the
-- last ANALYZE (autovacuum runs it; a planner estimate is never below 1);
-- before any ANALYZE these are the planner's default guesses. The function is
-- volatile, not stable: PostgreSQL allows EXPLAIN only in volatile functions.
--
-- Locks nothing: plain reads of a snapshot. Raises QD001 and QD002.
create or replace function durable.queue_stats(p_queue_name text)
returns table (
  queue_name       text,
  pending          bigint,
  running          bigint,
  sleeping         bigint,
  completed        bigint,
  failed           bigint,
  cancelled        bigint,
  finished         bigint,
  ready_now        bigint,
  scheduled        bigint,
  oldest_ready_age double precision,
  keys_held        bigint,
  terminal_counts  text,
  measured_at      timestamptz)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := durable.current_time();
  v_pending bigint;
  v_running bigint;
  v_sleeping bigint;
  v_ready bigint;
  v_oldest timestamptz;
  v_keys bigint;
  v_completed bigint;
  v_failed bigint;
  v_cancelled bigint;
  v_exact boolean;
begin
  perform durable._require_queue(p_queue_name);

  -- Waiting runs: one pass over the ready index (live runs only).
  select count(*) filter (where r.state = 'pending'),
         count(*) filter (where r.state = 'sleeping'),
         count(*) filter (where r.available_at <= v_now),
         min(r.available_at) filter (where r.available_at <= v_now)
    into v_pending, v_sleeping, v_ready, v_oldest
    from durable.runs r
   where r.queue_name = p_queue_name and r.state in ('pending', 'sleeping');
  select count(*) into v_running
    from durable.runs r
   where r.queue_name = p_queue_name and r.state = 'running';
  select count(*) into v_keys
    from durable.tasks t
   where t.queue_name = p_queue_name and t.key_held;

  v_exact := durable._planned_rows(format(
    'select 1 from durable.tasks t where t.queue_name = %L and t.finished_at is not null and not t.key_held',
    p_queue_name)) <= 20000;
  if v_exact then
    -- The finished tasks are those of tasks_finished and the finished ones
    -- still holding their key (tasks_key): the two parts do not overlap.
    select count(*) filter (where x.state = 'completed'),
           count(*) filter (where x.state = 'failed'),
           count(*) filter (where x.state = 'cancelled')
      into v_completed, v_failed, v_cancelled
      from (select t.state from durable.tasks t
             where t.queue_name = p_queue_name and t.finished_at is not null and not t.key_held
            union all
            select t.state from durable.tasks t
             where t.queue_name = p_queue_name and t.key_held
               and t.state in ('completed', 'failed', 'cancelled')) x;
  else
    v_completed := round(durable._planned_rows(format(
      'select 1 from durable.tasks t where t.queue_name = %L and t.state = %L', p_queue_name, 'completed')));
    v_failed := round(durable._planned_rows(format(
      'select 1 from durable.tasks t where t.queue_name = %L and t.state = %L', p_queue_name, 'failed')));
    v_cancelled := round(durable._planned_rows(format(
      'select 1 from durable.tasks t where t.queue_name = %L and t.state = %L', p_queue_name, 'cancelled')));
  end if;

  return query select p_queue_name, v_pending, v_running, v_sleeping,
                      v_completed, v_failed, v_cancelled, v_completed + v_failed + v_cancelled,
                      v_ready, v_pending + v_sleeping - v_ready,
                      coalesce(extract(epoch from v_now - v_oldest)::double precision, 0),
                      v_keys,
                      case when v_exact then 'exact' else 'estimated' end,
                      v_now;
end;
$$;
