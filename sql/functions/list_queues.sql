-- durable.list_queues(): the registered queues, by name. Locks nothing.
create or replace function durable.list_queues()
returns table (queue_name text)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return query select q.queue_name from durable.queues q order by q.queue_name;
end;
$$;
