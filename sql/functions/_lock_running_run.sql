-- durable._lock_running_run(queue, task_id, run_id): locks a run that belongs
-- to the task, is running and holds a live lease, and returns its attempt.
-- Durable-execution calls (checkpoints, sleeps, awaits) start with it, so a
-- run that lost its lease or was cancelled cannot write.
--
-- Locks the run row (runs before tasks, the order every function keeps).
-- Raises QD010 (run_not_found, also when the run is not this task's), QD011,
-- QD012 and QD013 like complete_run.
create or replace function durable._lock_running_run(p_queue_name text, p_task_id uuid, p_run_id uuid, p_action text)
returns integer
language plpgsql
as $$
declare
  v_now timestamptz := durable.current_time();
  v_attempt integer;
  v_task_id uuid;
begin
  -- The state test is a case so that no generic plan can read the lease
  -- index (every running run) instead of the primary key.
  select r.attempt, r.task_id
    into v_attempt, v_task_id
    from durable.runs r
   where r.run_id = p_run_id and r.queue_name = p_queue_name
     and case when r.state = 'running' then r.claim_expires_at > v_now else false end
     for no key update;
  if v_attempt is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, p_action);
  end if;
  if v_task_id is distinct from p_task_id then
    raise exception 'cannot % run %: it belongs to task %, not %', p_action, p_run_id, v_task_id, p_task_id
      using errcode = 'QD010';
  end if;
  return v_attempt;
end;
$$;
