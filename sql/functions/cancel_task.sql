-- durable.cancel_task(queue, task_id): cancels a task that has not finished and
-- returns its state afterwards ('cancelled', or the final state it already had:
-- cancelling a finished task changes nothing).
--
-- The task's pending, sleeping or running run is cancelled too; a worker running
-- it learns so from its next extend_claim/complete_run/fail_run (QD013).
-- Cancelling frees the task's key. Locks the task's live runs, then the task
-- (runs before tasks, the order every function keeps). Raises QD001, QD002 and
-- QD020 (task_not_found).
create or replace function durable.cancel_task(p_queue_name text, p_task_id uuid)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_now timestamptz := durable.current_time();
  v_state text;
begin
  perform durable._require_queue(p_queue_name);
  execute format('select 1 from durable.%I
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')
                   order by run_id for no key update', v_r)
    using p_task_id;
  execute format('select state from durable.%I where task_id = $1 for no key update', v_t)
    into v_state
    using p_task_id;
  if v_state is null then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
  if v_state in ('completed', 'failed', 'cancelled') then
    return v_state;
  end if;
  execute format('update durable.%I
                     set state = ''cancelled'', finished_at = $2
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')', v_r)
    using p_task_id, v_now;
  execute format('update durable.%I
                     set state = ''cancelled'', finished_at = $2, key_held = false
                   where task_id = $1', v_t)
    using p_task_id, v_now;
  return 'cancelled';
end;
$$;
