-- durable.await_task_result(queue, task_id, run_id, step, child_task_id,
-- timeout_seconds): waits, durably, for another task of the queue (typically a
-- child spawned with the parent_task_id option) to finish.
--
-- Returns (status, payload) like await_event; the payload of 'received' is
-- {"task_id", "state", "result", "failure_reason"} of the finished task,
-- whatever way it ended. A child returned by a deduplicated spawn is waited
-- for the same way, so the wait completes whoever created it. Raises QD001,
-- QD002, QD006, QD010, QD011, QD012, QD013 and QD020 (task_not_found: no such
-- child).
create or replace function durable.await_task_result(
  p_queue_name text,
  p_task_id uuid,
  p_run_id uuid,
  p_step_name text,
  p_child_task_id uuid,
  p_timeout_seconds integer default null)
returns table (status text, payload jsonb)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
begin
  perform durable._require_queue(p_queue_name);
  if p_step_name is null or p_step_name = '' or p_timeout_seconds < 0 or p_child_task_id is null then
    raise exception 'await_task_result needs a step name, a task id and a timeout of 0 seconds or more (task %)', p_task_id
      using errcode = 'QD006';
  end if;
  perform
    from durable.tasks t
   where t.task_id = p_child_task_id and t.queue_name = p_queue_name;
  if not found then
    raise exception 'task % not found in queue %', p_child_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
  return query select * from durable._await(p_queue_name, p_task_id, p_run_id, p_step_name,
                                            '$task:' || p_child_task_id::text, p_timeout_seconds,
                                            p_child_task_id);
end;
$$;
