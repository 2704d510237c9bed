-- durable.get_task(queue, task_id): everything an operator needs about one
-- task: its row, its runs (attempts, oldest first, each with who ran it, when
-- and how it ended: result or failure reason) and its checkpoints (steps, in
-- the order they were written), as JSON arrays.
--
-- Reads the queue's task in durable.tasks by primary key, its runs through
-- runs_task and its checkpoints through the primary key of
-- durable.checkpoints: its cost does not depend on the size of the queue.
-- Locks nothing: a snapshot, so the three parts agree. Raises QD001, QD002
-- and QD020 (task_not_found).
create or replace function durable.get_task(p_queue_name text, p_task_id uuid)
returns table (
  task_id          uuid,
  task_name        text,
  state            text,
  params           jsonb,
  headers          jsonb,
  attempts         integer,
  max_attempts     integer,
  retry_strategy   jsonb,
  idempotency_key  text,
  key_held         boolean,
  result           jsonb,
  failure_reason   jsonb,
  parent_task_id   uuid,
  cancel_deadline  timestamptz,
  enqueued_at      timestamptz,
  first_started_at timestamptz,
  finished_at      timestamptz,
  runs             jsonb,
  checkpoints      jsonb)
language plpgsql
security definer
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._require_queue(p_queue_name);
  return query
    select t.task_id, t.task_name, t.state, t.params, t.headers, t.attempts, t.max_attempts,
           t.retry_strategy, t.idempotency_key, t.key_held, t.result, t.failure_reason,
           t.parent_task_id, t.cancel_deadline, t.enqueued_at, t.first_started_at, t.finished_at,
           coalesce((select jsonb_agg(jsonb_build_object(
                              'run_id', r.run_id, 'attempt', r.attempt, 'state', r.state,
                              'available_at', r.available_at, 'claimed_by', r.claimed_by,
                              'claim_expires_at', r.claim_expires_at, 'started_at', r.started_at,
                              'finished_at', r.finished_at, 'result', r.result,
                              'failure_reason', r.failure_reason, 'created_at', r.created_at)
                            order by r.attempt, r.created_at)
                       from durable.runs r
                      where r.queue_name = p_queue_name and r.task_id = t.task_id), '[]'::jsonb),
           coalesce((select jsonb_agg(jsonb_build_object(
                              'step_name', c.step_name, 'state', c.state, 'run_id', c.run_id,
                              'attempt', c.attempt, 'updated_at', c.updated_at)
                            order by c.updated_at, c.step_name)
                       from durable.checkpoints c
                      where c.queue_name = p_queue_name and c.task_id = t.task_id), '[]'::jsonb)
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_id = p_task_id;
  if not found then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020',
            hint = 'List the queue''s tasks with durable.list_tasks(queue_name).';
  end if;
end;
$$;
