-- durable._write_checkpoint(queue, task_id, step, state, run_id, attempt, now):
-- upserts a step's checkpoint unless a newer attempt already wrote it. The
-- caller has locked the running run (_lock_running_run). Locks the checkpoint
-- row. Raises nothing of its own.
create or replace function durable._write_checkpoint(
  p_queue_name text,
  p_task_id uuid,
  p_step_name text,
  p_state jsonb,
  p_run_id uuid,
  p_attempt integer,
  p_now timestamptz)
returns void
language plpgsql
as $$
begin
  insert into durable.checkpoints as c (queue_name, task_id, step_name, state, run_id, attempt, updated_at)
  values (p_queue_name, p_task_id, p_step_name, coalesce(p_state, 'null'::jsonb), p_run_id, p_attempt, p_now)
  on conflict on constraint checkpoints_pkey do update
     set state = excluded.state, run_id = excluded.run_id,
         attempt = excluded.attempt, updated_at = excluded.updated_at
   where c.queue_name = excluded.queue_name and c.attempt <= excluded.attempt;
end;
$$;
