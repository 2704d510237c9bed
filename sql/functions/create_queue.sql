-- durable.create_queue(queue): registers the queue and creates its tables.
--
-- Idempotent: creating an existing queue brings its tables up to date and
-- changes nothing else. Concurrent creators of one name serialize on the
-- queue's row in durable.queues (the unique index, then ensure_queue_tables'
-- row lock), so none of them fails on the catalog. Raises QD001
-- (invalid_queue_name).
create or replace function durable.create_queue(p_queue_name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._validate_queue_name(p_queue_name);
  insert into durable.queues (queue_name, created_at)
  values (p_queue_name, durable.current_time())
  on conflict (queue_name) do nothing;
  perform durable.ensure_queue_tables(p_queue_name);
end;
$$;
