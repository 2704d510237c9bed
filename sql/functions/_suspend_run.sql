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
  execute format('update durable.%I
                     set state = ''sleeping'', available_at = $2, claim_expires_at = null
                   where run_id = $1', 'r_' || p_queue_name)
    using p_run_id, p_wake_at;
  execute format('update durable.%I set state = ''sleeping'' where task_id = $1', 't_' || p_queue_name)
    using p_task_id;
end;
$$;
