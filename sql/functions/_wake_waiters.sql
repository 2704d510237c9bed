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
-- Locks the runs, then their tasks. Prepared once per session (_prepared); the
-- caller runs with generic plans. Raises nothing of its own.
create or replace function durable._wake_waiters(p_queue_name text, p_wait_names text[], p_now timestamptz)
returns void
language plpgsql
as $$
declare
  v_woken bigint;
begin
  execute format('execute %I(%L, %L)',
    durable._prepared(p_queue_name, 'wake', '(text[], timestamptz)', $sql$
      with woken as (
        select r.run_id
          from durable.%2$I r
         where r.run_id = any (array(select w.run_id from durable.%5$I w where w.event_name = any ($1)))
           and r.state = 'sleeping'
           for no key update skip locked
      ), runs as (
        update durable.%2$I r
           set state = 'pending', available_at = $2
         where r.run_id = any (array(select run_id from woken))
        returning r.task_id
      ), tasks as (
        update durable.%1$I t
           set state = 'pending'
         where t.task_id = any (array(select task_id from runs)) and t.state = 'sleeping'
      )
      select count(*) from runs$sql$),
    p_wait_names, p_now)
    into v_woken;
  if v_woken > 0 then
    perform durable._notify_ready(p_queue_name);
  end if;
end;
$$;
