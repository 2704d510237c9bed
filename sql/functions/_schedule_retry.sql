-- durable._schedule_retry(queue, task_id, reason, retry_at, now): after the
-- task's latest run failed, schedules its next attempt or fails the task.
--
-- The task fails (and frees its key unless it retains it, wakes its waiters and cancels its
-- unfinished children: _task_finished) when its attempts are used up or the
-- reason is an object with "retryable": false. Otherwise a new run is created,
-- available at p_retry_at when given, else after the delay of the task's retry
-- strategy; it is 'sleeping' until then ('pending' when due at once, which
-- notifies waiting workers: _notify_ready). The
-- caller has already marked the failed run and locked it; this locks the task
-- row (runs before tasks, the order every function keeps). Returns the task's
-- new state. Raises nothing of its own.
create or replace function durable._schedule_retry(
  p_queue_name text,
  p_task_id uuid,
  p_reason jsonb,
  p_retry_at timestamptz,
  p_now timestamptz)
returns text
language plpgsql
as $$
declare
  v_max_attempts integer;
  v_strategy jsonb;
  v_attempts integer;
  v_at timestamptz;
  v_state text;
  v_run_id uuid := durable._uuid7();
begin
  select t.max_attempts, t.retry_strategy, t.attempts
    into v_max_attempts, v_strategy, v_attempts
    from durable.tasks t
   where t.queue_name = p_queue_name and t.task_id = p_task_id
     for no key update;

  if v_attempts >= v_max_attempts
     or (jsonb_typeof(p_reason) = 'object' and p_reason -> 'retryable' = 'false'::jsonb) then
    update durable.tasks t
       set state = 'failed', failure_reason = p_reason, finished_at = p_now,
           cancel_deadline = null, key_held = t.key_held and t.key_retention is not null,
           key_expires_at = durable._key_expires_at(t.key_held, t.key_retention, p_now)
     where t.queue_name = p_queue_name and t.task_id = p_task_id;
    perform durable._task_finished(p_queue_name, array[p_task_id], 'failed', p_now);
    return 'failed';
  end if;

  v_at := coalesce(p_retry_at,
                   p_now + make_interval(secs => durable._retry_delay(v_strategy, v_attempts)));
  v_state := case when v_at > p_now then 'sleeping' else 'pending' end;
  insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
  values (p_queue_name, v_run_id, p_task_id, v_attempts + 1, v_state, v_at, p_now);
  update durable.tasks t
     set state = v_state, attempts = v_attempts + 1, last_attempt_run = v_run_id,
         failure_reason = p_reason
   where t.queue_name = p_queue_name and t.task_id = p_task_id;
  if v_state = 'pending' then
    perform durable._notify_ready(p_queue_name);
  end if;
  return v_state;
end;
$$;
