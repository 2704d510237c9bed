-- durable._require_queue(queue): checks that the queue name is valid and the
-- queue exists, before any function touches the queue's tables.
--
-- Reads durable.queues without locking it. Raises QD001 (invalid_queue_name) and
-- QD002 (queue_not_found).
create or replace function durable._require_queue(p_queue_name text)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._validate_queue_name(p_queue_name);
  perform 1 from durable.queues q where q.queue_name = p_queue_name;
  if not found then
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'Create it first with durable.create_queue(queue_name).';
  end if;
end;
$$;
