-- durable.await_event(queue, task_id, run_id, step, event_name,
-- timeout_seconds): waits, durably, for an event of the queue.
--
-- Returns (status, payload): 'received' with the payload when the event has
-- been emitted (before or after the wait began), 'timed_out' once
-- timeout_seconds have passed since the first wait (NULL: wait forever), or
-- 'suspended' when the run has just been put to sleep: the caller must stop
-- working on it; the same run is claimed again when the event arrives or the
-- timeout passes, and its replay of this call returns the answer. Any number
-- of runs may wait for one event; emit_event wakes them all. See _await for
-- why a racing emit is never lost. Raises QD001, QD002, QD006 (empty step,
-- negative timeout), QD007 (invalid_event_name), QD010, QD011, QD012, QD013.
create or replace function durable.await_event(
  p_queue_name text,
  p_task_id uuid,
  p_run_id uuid,
  p_step_name text,
  p_event_name text,
  p_timeout_seconds integer default null)
returns table (status text, payload jsonb)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
begin
  perform durable._require_queue(p_queue_name);
  perform durable._validate_event_name(p_event_name);
  if p_step_name is null or p_step_name = '' or p_timeout_seconds < 0 then
    raise exception 'await_event needs a step name and a timeout of 0 seconds or more (task %)', p_task_id
      using errcode = 'QD006';
  end if;
  return query select * from durable._await(p_queue_name, p_task_id, p_run_id, p_step_name,
                                            p_event_name, p_timeout_seconds, null);
end;
$$;
