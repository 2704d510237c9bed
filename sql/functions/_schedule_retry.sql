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
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_max_attempts integer;
  v_strategy jsonb;
  v_attempts integer;
  v_at timestamptz;
  v_state text;
  v_run_id uuid := gen_random_uuid();
begin
  execute format('select max_attempts, retry_strategy, attempts from durable.%I
                   where task_id = $1 for no key update', v_t)
    into v_max_attempts, v_strategy, v_attempts
    using p_task_id;

  if v_attempts >= v_max_attempts
     or (jsonb_typeof(p_reason) = 'object' and p_reason -> 'retryable' = 'false'::jsonb) then
    execute format('update durable.%I
                       set state = ''failed'', failure_reason = $2, finished_at = $3,
                           cancel_deadline = null, key_held = key_held and key_retention is not null,
                           key_expires_at = durable._key_expires_at(key_held, key_retention, $3)
                     where task_id = $1', v_t)
      using p_task_id, p_reason, p_now;
    perform durable._task_finished(p_queue_name, array[p_task_id], 'failed', p_now);
    return 'failed';
  end if;

  v_at := coalesce(p_retry_at,
                   p_now + make_interval(secs => durable._retry_delay(v_strategy, v_attempts)));
  v_state := case when v_at > p_now then 'sleeping' else 'pending' end;
  execute format('insert into durable.%I (run_id, task_id, attempt, state, available_at, created_at)
                  values ($1, $2, $3, $4, $5, $6)', v_r)
    using v_run_id, p_task_id, v_attempts + 1, v_state, v_at, p_now;
  execute format('update durable.%I
                     set state = $2, attempts = $3, last_attempt_run = $4, failure_reason = $5
                   where task_id = $1', v_t)
    using p_task_id, v_state, v_attempts + 1, v_run_id, p_reason;
  if v_state = 'pending' then
    perform durable._notify_ready(p_queue_name);
  end if;
  return v_state;
end;
$$;
