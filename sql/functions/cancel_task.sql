-- durable.cancel_task(queue, task_id): cancels a task that has not finished and
-- returns its state afterwards ('cancelled', or the final state it already had:
-- cancelling a finished task changes nothing).
--
-- The task's pending, sleeping or running run is cancelled too; a worker running
-- it learns so from its next extend_claim/complete_run/fail_run (QD013).
-- Cancelling frees the task's key, wakes the runs waiting for the task and
-- cancels its unfinished children (see _cancel_task). Locks the task's live
-- runs, then the task (runs before tasks, the order every function keeps).
-- Raises QD001, QD002 and QD020 (task_not_found).
create or replace function durable.cancel_task(p_queue_name text, p_task_id uuid)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_state text;
begin
  perform durable._require_queue(p_queue_name);
  v_state := durable._cancel_task(p_queue_name, p_task_id,
    jsonb_build_object('name', 'cancelled', 'message', 'cancelled by cancel_task'),
    durable.current_time(), false);
  if v_state is null then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
  return v_state;
end;
$$;
