-- durable.get_task_result(queue, task_id): a task's state and outcome: the
-- result of its completed run, or the reason of its latest failure (kept while
-- it waits to retry). Locks nothing. Raises QD001, QD002 and QD020
-- (task_not_found).
create or replace function durable.get_task_result(p_queue_name text, p_task_id uuid)
returns table (task_id uuid, state text, result jsonb, failure_reason jsonb)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._require_queue(p_queue_name);
  return query
    select t.task_id, t.state, t.result, t.failure_reason
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_id = p_task_id;
  if not found then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
end;
$$;
