-- durable.set_task_checkpoint_state(queue, task_id, step, state, run_id,
-- extend_claim_by): records the result of a step, so that a later attempt
-- replaying the task skips it. Optionally renews the run's lease by
-- extend_claim_by seconds in the same call.
--
-- Only the task's running run with a live lease can write, and a checkpoint
-- written by a newer attempt is never overwritten by an older one. Locks the
-- run, then the checkpoint row. Raises QD001, QD002, QD006 (empty step name,
-- extend_claim_by below 1), QD010, QD011, QD012 and QD013.
create or replace function durable.set_task_checkpoint_state(
  p_queue_name text,
  p_task_id uuid,
  p_step_name text,
  p_state jsonb,
  p_run_id uuid,
  p_extend_claim_by integer default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_attempt integer;
begin
  perform durable._require_queue(p_queue_name);
  if p_step_name is null or p_step_name = '' then
    raise exception 'step name must not be empty (task %)', p_task_id
      using errcode = 'QD006';
  end if;
  if p_extend_claim_by is not null and p_extend_claim_by < 1 then
    raise exception 'extend_claim_by must be at least 1 second, got %', p_extend_claim_by
      using errcode = 'QD006';
  end if;
  v_attempt := durable._lock_running_run(p_queue_name, p_task_id, p_run_id, 'checkpoint');

  perform durable._write_checkpoint(p_queue_name, p_task_id, p_step_name, p_state, p_run_id, v_attempt, v_now);

  if p_extend_claim_by is not null then
    update durable.runs r
       set claim_expires_at = v_now + make_interval(secs => p_extend_claim_by)
     where r.run_id = p_run_id and r.queue_name = p_queue_name;
  end if;
end;
$$;
