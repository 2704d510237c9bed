-- durable._suspend_run(queue, task_id, run_id, wake_at): puts a running run to
-- sleep until wake_at ('infinity': until woken): the run and its task become
-- 'sleeping', the lease is released, and claim_task hands the same run out
-- again once it is due (or woken by _wake_waiters). The caller has locked the
-- run; this locks the task. Raises nothing of its own.
create or replace function durable._suspend_run(
  p_queue_name text,
  p_task_id uuid,
  p_run_id uuid,
  p_wake_at timestamptz)
returns void
language plpgsql
as $$
begin
  update durable.runs r
     set state = 'sleeping', available_at = p_wake_at, claim_expires_at = null
   where r.run_id = p_run_id and r.queue_name = p_queue_name;
  update durable.tasks t
     set state = 'sleeping'
   where t.task_id = p_task_id and t.queue_name = p_queue_name;
end;
$$;
