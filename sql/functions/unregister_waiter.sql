-- durable.unregister_waiter(queue): ends this session's registration as a
-- waiting worker of the queue (see register_waiter). Does nothing when the
-- session is not registered.
--
-- Locks: releases the session's share-mode waiters' advisory lock.
--
-- Raises QD001 (invalid_queue_name) and QD002 (queue_not_found).
create or replace function durable.unregister_waiter(p_queue_name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key integer := hashtext(p_queue_name);
begin
  perform durable._require_queue(p_queue_name);
  while durable._waiter_registered(v_key) loop
    perform pg_advisory_unlock_shared(1685418594, v_key);
  end loop;
end;
$$;
