-- durable._raise_key_held(queue, task_id, holder): refuses to revive a task
-- whose idempotency key a newer live task holds. Raises QD014 (key_held).
create or replace function durable._raise_key_held(p_queue_name text, p_task_id uuid, p_holder uuid)
returns void
language plpgsql
as $$
begin
  raise exception 'cannot retry task % of queue % in place: its idempotency key is held by live task %',
    p_task_id, quote_literal(p_queue_name), coalesce(p_holder::text, '(another task)')
    using errcode = 'QD014',
          hint = 'Wait for that task, or retry with {"spawn_new": true} to get the holder back.';
end;
$$;
