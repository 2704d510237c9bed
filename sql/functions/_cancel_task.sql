-- durable._cancel_task(queue, task_id, reason, now, skip_locked): cancels a
-- task that has not finished, with its live run, records reason as its
-- failure_reason, and cascades (_task_finished: waiters wake, unfinished
-- children are cancelled). Returns the task's state afterwards ('cancelled',
-- or the final state it already had), NULL when there is no such task, and,
-- with skip_locked, 'skipped' when its run or task is locked by another
-- transaction (the sweeps in claim_task try again later).
--
-- Locks the task's live runs, then the task (runs before tasks). Raises
-- nothing of its own.
create or replace function durable._cancel_task(
  p_queue_name text,
  p_task_id uuid,
  p_reason jsonb,
  p_now timestamptz,
  p_skip_locked boolean)
returns text
language plpgsql
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_lock text := case when p_skip_locked then 'for no key update skip locked' else 'for no key update' end;
  v_live integer;
  v_locked integer;
  v_state text;
begin
  execute format('select count(*) from durable.%I
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')', v_r)
    into v_live
    using p_task_id;
  execute format('select count(*) from (select 1 from durable.%I
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')
                   order by run_id %s) l', v_r, v_lock)
    into v_locked
    using p_task_id;
  if p_skip_locked and v_locked < v_live then
    return 'skipped';
  end if;
  execute format('select state from durable.%I where task_id = $1 %s', v_t, v_lock)
    into v_state
    using p_task_id;
  if v_state is null then
    if p_skip_locked then
      execute format('select state from durable.%I where task_id = $1', v_t) into v_state using p_task_id;
      return case when v_state is null then null else 'skipped' end;
    end if;
    return null;
  end if;
  if v_state in ('completed', 'failed', 'cancelled') then
    return v_state;
  end if;

  execute format('update durable.%I
                     set state = ''cancelled'', finished_at = $2
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')', v_r)
    using p_task_id, p_now;
  execute format('update durable.%I
                     set state = ''cancelled'', finished_at = $2, failure_reason = $3,
                         cancel_deadline = null, key_held = key_held and key_retention is not null,
                         key_expires_at = durable._key_expires_at(key_held, key_retention, $2)
                   where task_id = $1', v_t)
    using p_task_id, p_now, p_reason;
  perform durable._task_finished(p_queue_name, array[p_task_id], 'cancelled', p_now);
  return 'cancelled';
end;
$$;
