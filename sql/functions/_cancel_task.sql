-- durable._cancel_task(queue, task_id, reason, now, skip_locked): cancels a
-- task that has not finished, with its live run, records reason as its
-- failure_reason, and cascades (_task_finished: waiters wake, unfinished
-- children are cancelled). Returns the task's state afterwards ('cancelled',
-- or the final state it already had), NULL when the queue has no such task
-- in durable.tasks, and, with skip_locked, 'skipped' when its run or task is
-- locked by another transaction (the sweeps in claim_task try again later).
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
  v_live bigint;
  v_locked bigint;
  v_state text;
begin
  if p_skip_locked then
    select count(*) into v_live
      from durable.runs r
     where r.queue_name = p_queue_name and r.task_id = p_task_id
       and r.state in ('pending', 'sleeping', 'running');
    select count(*) into v_locked
      from (select 1 from durable.runs r
             where r.queue_name = p_queue_name and r.task_id = p_task_id
               and r.state in ('pending', 'sleeping', 'running')
             order by r.run_id
               for no key update skip locked) l;
    if v_locked < v_live then
      return 'skipped';
    end if;
    select t.state into v_state
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_id = p_task_id
       for no key update skip locked;
    if v_state is null then
      select t.state into v_state
        from durable.tasks t
       where t.queue_name = p_queue_name and t.task_id = p_task_id;
      return case when v_state is null then null else 'skipped' end;
    end if;
  else
    perform 1
       from durable.runs r
      where r.queue_name = p_queue_name and r.task_id = p_task_id
        and r.state in ('pending', 'sleeping', 'running')
      order by r.run_id
        for no key update;
    select t.state into v_state
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_id = p_task_id
       for no key update;
    if v_state is null then
      return null;
    end if;
  end if;
  if v_state in ('completed', 'failed', 'cancelled') then
    return v_state;
  end if;

  update durable.runs r
     set state = 'cancelled', finished_at = p_now
   where r.queue_name = p_queue_name and r.task_id = p_task_id
     and r.state in ('pending', 'sleeping', 'running');
  update durable.tasks t
     set state = 'cancelled', finished_at = p_now, failure_reason = p_reason,
         cancel_deadline = null, key_held = t.key_held and t.key_retention is not null,
         key_expires_at = durable._key_expires_at(t.key_held, t.key_retention, p_now)
   where t.queue_name = p_queue_name and t.task_id = p_task_id;
  perform durable._task_finished(p_queue_name, array[p_task_id], 'cancelled', p_now);
  return 'cancelled';
end;
$$;
