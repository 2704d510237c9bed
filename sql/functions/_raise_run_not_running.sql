-- durable._raise_run_not_running(queue, run_id, action): explains why a run
-- could not be completed, failed or extended, and raises. Called after the
-- guarded update found no running run with a live lease.
--
-- Raises QD010 (run_not_found), QD012 (lease_lost: the lease expired, or the
-- run was recovered after it expired), QD013 (task_cancelled) or QD011
-- (run_not_running: the run already ended or has not started). Locks nothing.
create or replace function durable._raise_run_not_running(p_queue_name text, p_run_id uuid, p_action text)
returns void
language plpgsql
as $$
declare
  v_state text;
  v_expires timestamptz;
  v_reason jsonb;
  v_task_id uuid;
begin
  select r.state, r.claim_expires_at, r.failure_reason, r.task_id
    into v_state, v_expires, v_reason, v_task_id
    from durable.runs r
   where r.run_id = p_run_id and r.queue_name = p_queue_name;
  if v_state is null then
    raise exception 'cannot % run %: no such run in queue %', p_action, p_run_id, quote_literal(p_queue_name)
      using errcode = 'QD010';
  elsif v_state = 'cancelled' then
    raise exception 'cannot % run %: task % was cancelled', p_action, p_run_id, v_task_id
      using errcode = 'QD013',
            hint = 'Stop working on it; the task will not run again.';
  elsif v_state = 'running'
        or (v_state = 'failed' and v_reason ->> 'name' = 'claim_timeout') then
    raise exception 'cannot % run %: its lease expired at %', p_action, p_run_id, v_expires
      using errcode = 'QD012',
            hint = 'Extend the claim (durable.extend_claim) before it expires; the task is retried by another claim.';
  else
    raise exception 'cannot % run %: the run is %, not running', p_action, p_run_id, v_state
      using errcode = 'QD011';
  end if;
end;
$$;
