-- durable._wake_waiters(queue, wait_name, now): makes every sleeping run that
-- waits for wait_name (an event name, or '$task:<id>' for a task's end)
-- claimable now.
--
-- Runs are locked with skip locked: a sleeping run that another transaction
-- holds is being claimed, cancelled or woken, so it needs no wake-up from here
-- (a run still deciding to wait is running, not sleeping, and reads what it
-- waits for only after this transaction ends: see _await), and a blocking lock
-- here could close a cycle with a cancellation cascading the other way.
-- Locks the runs, then their tasks. Raises nothing of its own.
create or replace function durable._wake_waiters(p_queue_name text, p_wait_name text, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  execute format($sql$
    with woken as (
      select r.run_id
        from durable.%1$I w
        join durable.%2$I r on r.run_id = w.run_id
       where w.event_name = $1 and r.state = 'sleeping'
         for no key update of r skip locked
    ), runs as (
      update durable.%2$I r
         set state = 'pending', available_at = $2
        from woken
       where r.run_id = woken.run_id
      returning r.task_id
    )
    update durable.%3$I t
       set state = 'pending'
      from runs
     where t.task_id = runs.task_id and t.state = 'sleeping'$sql$,
    'w_' || p_queue_name, 'r_' || p_queue_name, 't_' || p_queue_name)
    using p_wait_name, p_now;
end;
$$;
