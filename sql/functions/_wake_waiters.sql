-- durable._wake_waiters(queue, wait_names, now): makes every sleeping run that
-- waits for one of wait_names (event names, or '$task:<id>' for a task's end)
-- claimable now, and when it woke any, notifies durable_<queue> (delivered at
-- commit, when a worker waits: _notify_ready) so that it claims them at once.
--
-- Runs are locked with skip locked: a sleeping run that another transaction
-- holds is being claimed, cancelled or woken, so it needs no wake-up from here
-- (a run still deciding to wait is running, not sleeping, and reads what it
-- waits for only after this transaction ends: see _await), and a blocking lock
-- here could close a cycle with a cancellation cascading the other way.
-- Locks the runs, then their tasks. Static SQL; the callers run with generic
-- plans. Raises nothing of its own.
create or replace function durable._wake_waiters(p_queue_name text, p_wait_names text[], p_now timestamptz)
returns void
language plpgsql
as $$
declare
  v_woken bigint;
begin
  -- The state test is a case so that no generic plan can read the ready
  -- index (every pending or sleeping run) instead of the primary key.
  with locked as (
    select r.run_id
      from durable.runs r
     where r.run_id = any (array(select w.run_id
                                   from durable.waits w
                                  where w.queue_name = p_queue_name and w.event_name = any (p_wait_names)))
       and r.queue_name = p_queue_name
       and case when r.state = 'sleeping' then true else false end
       for no key update skip locked
  ), woken as (
    update durable.runs r
       set state = 'pending', available_at = p_now
     where r.run_id = any (array(select l.run_id from locked l))
       and r.queue_name = p_queue_name
    returning r.task_id
  ), tasks_woken as (
    update durable.tasks t
       set state = 'pending'
     where t.task_id = any (array(select k.task_id from woken k))
       and t.queue_name = p_queue_name
       and t.state = 'sleeping'
  )
  select count(*) into v_woken from woken;
  if v_woken > 0 then
    perform durable._notify_ready(p_queue_name);
  end if;
end;
$$;
