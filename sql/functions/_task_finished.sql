-- durable._task_finished(queue, task_id, state, now): what follows a task's
-- end, whatever ended it: runs waiting for it (await_task_result) wake, its
-- own waits are deleted, and when it failed or was cancelled its unfinished
-- children are cancelled, with a reason naming it (recursively, through
-- _cancel_task). The caller has
-- locked and updated the task. Raises nothing of its own.
create or replace function durable._task_finished(
  p_queue_name text,
  p_task_id uuid,
  p_state text,
  p_now timestamptz)
returns void
language plpgsql
as $$
declare
  v_child uuid;
begin
  perform durable._wake_waiters(p_queue_name, '$task:' || p_task_id::text, p_now);
  execute format('execute %I(%L)',
    durable._prepared(p_queue_name, 'unwait', '(uuid)', 'delete from durable.%5$I where task_id = $1'),
    p_task_id);
  if p_state in ('failed', 'cancelled') then
    for v_child in execute format('select task_id from durable.%I
                                    where parent_task_id = $1 and state in (''pending'', ''sleeping'', ''running'')
                                    order by task_id', 't_' || p_queue_name)
      using p_task_id
    loop
      perform durable._cancel_task(p_queue_name, v_child,
        jsonb_build_object('name', 'parent_' || p_state,
                           'message', format('parent task %s %s', p_task_id, p_state),
                           'parent_task_id', p_task_id),
        p_now, false);
    end loop;
  end if;
end;
$$;
