-- durable.get_task_checkpoint_states(queue, task_id, run_id): the task's
-- recorded steps, for a run about to replay it. Locks nothing. Raises QD001,
-- QD002 and QD010 (run_not_found, also when the run is not this task's).
create or replace function durable.get_task_checkpoint_states(
  p_queue_name text,
  p_task_id uuid,
  p_run_id uuid)
returns table (step_name text, state jsonb, run_id uuid, attempt integer, updated_at timestamptz)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_task_id uuid;
begin
  perform durable._require_queue(p_queue_name);
  select r.task_id
    into v_task_id
    from durable.runs r
   where r.run_id = p_run_id and r.queue_name = p_queue_name;
  if v_task_id is distinct from p_task_id then
    raise exception 'run % of task % not found in queue %', p_run_id, p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD010';
  end if;
  return query
    select c.step_name, c.state, c.run_id, c.attempt, c.updated_at
      from durable.checkpoints c
     where c.task_id = p_task_id and c.queue_name = p_queue_name
     order by c.updated_at, c.step_name;
end;
$$;
