-- durable._require_queue(queue): checks that the queue name is valid and the
-- queue exists, before any function touches the queue's tables.
--
-- A registered name is valid, so the name's rule is checked only when the
-- lookup misses. Takes the queue's transaction advisory lock in shared mode
-- (in memory: it writes nothing and shared holders never wait for each other),
-- which drop_queue takes exclusively: a call that meets a queue being dropped
-- waits for the drop and then finds no queue (QD002) instead of a missing
-- table, and a drop waits for the calls in flight. The lookup runs after the
-- lock, in a snapshot of its own (the function is volatile for that), and
-- reads durable.queues without locking it. Raises QD001 (invalid_queue_name)
-- and QD002 (queue_not_found).
create or replace function durable._require_queue(p_queue_name text)
returns void
language plpgsql
as $$
declare
  v_locked boolean;
begin
  -- An assignment rather than perform: PL/pgSQL evaluates a simple
  -- expression without starting an executor, and this runs on every call.
  v_locked := pg_advisory_xact_lock_shared(hashtextextended('durable-queue:' || p_queue_name, 0)) is null;
  perform 1 from durable.queues q where q.queue_name = p_queue_name;
  if not found then
    perform durable._validate_queue_name(p_queue_name);
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'Create it first with durable.create_queue(queue_name).';
  end if;
end;
$$;
