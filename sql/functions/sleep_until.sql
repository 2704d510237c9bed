-- durable.sleep_until(queue, task_id, run_id, step, wake_at): a durable sleep.
-- Returns true when the run has been suspended until the wake time (the
-- caller must stop working on it: its lease is released and the same run is
-- claimed again when due), false when the wake time has passed (carry on).
--
-- The first call for a step records its wake time as the step's checkpoint;
-- replays use the recorded time, so a sleep of "one hour" does not restart on
-- every attempt. Locks the run, then the task. Raises QD001, QD002, QD006
-- (empty step, NULL wake time), QD010, QD011, QD012 and QD013.
create or replace function durable.sleep_until(
  p_queue_name text,
  p_task_id uuid,
  p_run_id uuid,
  p_step_name text,
  p_wake_at timestamptz)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_attempt integer;
  v_state jsonb;
  v_wake_at timestamptz;
begin
  perform durable._require_queue(p_queue_name);
  if p_step_name is null or p_step_name = '' or p_wake_at is null then
    raise exception 'sleep_until needs a step name and a wake time (task %)', p_task_id
      using errcode = 'QD006';
  end if;
  v_attempt := durable._lock_running_run(p_queue_name, p_task_id, p_run_id, 'sleep');
  select c.state
    into v_state
    from durable.checkpoints c
   where c.task_id = p_task_id and c.step_name = p_step_name and c.queue_name = p_queue_name;
  if v_state is null then
    v_wake_at := p_wake_at;
    perform durable._write_checkpoint(p_queue_name, p_task_id, p_step_name,
      jsonb_build_object('wake_at', v_wake_at), p_run_id, v_attempt, v_now);
  else
    v_wake_at := (v_state ->> 'wake_at')::timestamptz;
  end if;
  if v_wake_at <= v_now then
    return false;
  end if;
  perform durable._suspend_run(p_queue_name, p_task_id, p_run_id, v_wake_at);
  return true;
end;
$$;
