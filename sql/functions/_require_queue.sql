-- durable._require_queue(queue): checks that the queue name is valid and the
-- queue exists, before any function touches the queue's tables.
--
-- A registered name is valid, so the name's rule is checked only when the
-- lookup misses. Reads durable.queues without locking it. Raises QD001
-- (invalid_queue_name) and QD002 (queue_not_found).
create or replace function durable._require_queue(p_queue_name text)
returns void
language plpgsql
stable
as $$
begin
  perform 1 from durable.queues q where q.queue_name = p_queue_name;
  if not found then
    perform durable._validate_queue_name(p_queue_name);
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'Create it first with durable.create_queue(queue_name).';
  end if;
end;
$$;
