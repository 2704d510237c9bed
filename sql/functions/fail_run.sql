-- durable.fail_run(queue, run_id, reason, retry_at): records that a run failed
-- and schedules the task's next attempt, or fails the task when its attempts
-- are used up or the reason says {"retryable": false}.
--
-- The next attempt is available at p_retry_at when given, else after the delay
-- of the task's retry strategy. Only a running run whose lease has not expired
-- can fail. Locks the run, then the task. Raises QD001, QD002, QD006
-- (p_retry_at is not a finite time), QD010, QD011, QD012 and QD013 like
-- complete_run; nothing is written then.
create or replace function durable.fail_run(
  p_queue_name text,
  p_run_id uuid,
  p_reason jsonb,
  p_retry_at timestamptz default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_reason jsonb := coalesce(p_reason, 'null'::jsonb);
  v_task_id uuid;
begin
  perform durable._require_queue(p_queue_name);
  if not isfinite(p_retry_at) then
    raise exception 'retry_at must be a finite time, got %', p_retry_at
      using errcode = 'QD006';
  end if;
  update durable.runs r
     set state = 'failed', failure_reason = v_reason, finished_at = v_now
   where r.queue_name = p_queue_name and r.run_id = p_run_id
     and r.state = 'running' and r.claim_expires_at > v_now
  returning r.task_id into v_task_id;
  if v_task_id is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, 'fail');
  end if;
  perform durable._schedule_retry(p_queue_name, v_task_id, v_reason, p_retry_at, v_now);
end;
$$;
