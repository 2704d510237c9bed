-- durable.complete_run(queue, run_id, result): records a run's result and
-- completes its task, which frees the task's key (or keeps it held for the
-- task's key_retention_seconds: _key_expires_at) and wakes the runs waiting
-- for the task (await_task_result).
--
-- The result is stored on the task (get_task_result reads it there). Only a
-- running run whose lease has not expired can complete. Its statements are
-- static and run with generic plans made once per session. Locks the run,
-- then the task (the order every function keeps). Raises QD001, QD002, QD010
-- (run_not_found), QD011 (run_not_running), QD012 (lease_lost) and QD013
-- (task_cancelled); nothing is written then.
create or replace function durable.complete_run(
  p_queue_name text,
  p_run_id uuid,
  p_result jsonb default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_task_id uuid;
begin
  perform durable._require_queue(p_queue_name);
  -- The state test is a case so that no generic plan can read the lease
  -- index (every running run) instead of the primary key.
  update durable.runs r
     set state = 'completed', finished_at = v_now
   where r.run_id = p_run_id and r.queue_name = p_queue_name
     and case when r.state = 'running' then r.claim_expires_at > v_now else false end
  returning r.task_id into v_task_id;
  if v_task_id is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, 'complete');
  end if;
  update durable.tasks t
     set state = 'completed', result = p_result, finished_at = v_now, cancel_deadline = null,
         key_held = t.key_held and t.key_retention is not null,
         key_expires_at = durable._key_expires_at(t.key_held, t.key_retention, v_now)
   where t.task_id = v_task_id;
  perform durable._task_finished(p_queue_name, array[v_task_id], 'completed', v_now);
end;
$$;
