-- durable.drop_queue(queue): deletes every task, run, checkpoint, event and
-- wait of the queue, drops its views (see ensure_queue_tables) and
-- unregisters it.
--
-- Takes the queue's transaction advisory lock exclusively (every other call
-- on the queue holds it shared, see _require_queue: the drop waits for calls
-- in flight, and calls that come meanwhile wait for the drop, then find no
-- queue), then the queue's row in durable.queues, then the queue's rows of
-- the shared tables (runs before tasks). Raises QD001 (invalid_queue_name) and QD002 (queue_not_found).
create or replace function durable.drop_queue(p_queue_name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._validate_queue_name(p_queue_name);
  perform pg_advisory_xact_lock(hashtextextended('durable-queue:' || p_queue_name, 0));
  perform 1 from durable.queues q where q.queue_name = p_queue_name for update;
  if not found then
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'durable.list_queues() lists the queues there are.';
  end if;
  execute format('drop view if exists durable.%I, durable.%I, durable.%I, durable.%I, durable.%I',
                 'w_' || p_queue_name, 'e_' || p_queue_name, 'c_' || p_queue_name,
                 'r_' || p_queue_name, 't_' || p_queue_name);
  delete from durable.waits w where w.queue_name = p_queue_name;
  delete from durable.events e where e.queue_name = p_queue_name;
  delete from durable.checkpoints c where c.queue_name = p_queue_name;
  delete from durable.runs r where r.queue_name = p_queue_name;
  delete from durable.tasks t where t.queue_name = p_queue_name;
  delete from durable.queues q where q.queue_name = p_queue_name;
end;
$$;
