-- durable._task_finished(queue, task_ids, state, now): what follows the end of
-- tasks that ended the same way (state), whatever ended them: runs waiting for
-- them (await_task_result) wake, their own waits are deleted, and when they
-- failed or were cancelled their unfinished children (in the same queue, as
-- every child is) are cancelled, with a reason naming the parent
-- (recursively, through _cancel_task). One call for a batch (complete_runs)
-- costs one statement per step, as for one task. Most tasks have no waiter
-- and no wait of their own: one probe of the waits table finds that out, and
-- then nothing else runs (the wake-up and the delete would read the same rows
-- in the same way). The caller has locked and updated the tasks. Raises
-- nothing of its own.
create or replace function durable._task_finished(
  p_queue_name text,
  p_task_ids uuid[],
  p_state text,
  p_now timestamptz)
returns void
language plpgsql
as $$
declare
  v_child uuid;
  v_parent uuid;
  v_names text[] := array(select '$task:' || t.id::text from unnest(p_task_ids) t(id));
begin
  if exists (select from durable.waits w
              where w.queue_name = p_queue_name and w.event_name = any (v_names))
     or exists (select from durable.waits w where w.task_id = any (p_task_ids)) then
    perform durable._wake_waiters(p_queue_name, v_names, p_now);
    -- The tasks are the queue's (task ids are unique across queues): no
    -- queue_name test, so that no plan reads waits_event for it.
    delete from durable.waits w where w.task_id = any (p_task_ids);
  end if;
  if p_state in ('failed', 'cancelled') then
    for v_child, v_parent in
      select t.task_id, t.parent_task_id
        from durable.tasks t
       where t.parent_task_id = any (p_task_ids) and t.queue_name = p_queue_name
         and t.state in ('pending', 'sleeping', 'running')
       order by t.task_id
    loop
      perform durable._cancel_task(p_queue_name, v_child,
        jsonb_build_object('name', 'parent_' || p_state,
                           'message', format('parent task %s %s', v_parent, p_state),
                           'parent_task_id', v_parent),
        p_now, false);
    end loop;
  end if;
end;
$$;
