-- durable.cleanup_events(queue, ttl_seconds, limit): deletes up to limit
-- events of the queue emitted more than ttl_seconds ago and returns how many
-- it deleted. limit defaults to 1000 (1 to 10000): call it again while it
-- returns limit.
--
-- A deleted event is as if never emitted: a later await_event of its name
-- waits for a new emit, and a new emit of the name is stored (the first emit
-- wins again). An event that a wait row still names (a task woken by it that
-- has not read it yet) is kept.
--
-- Index-driven: events_emitted, oldest first, and waits_event for the
-- waits. Locks the events it deletes with skip locked, so concurrent cleanups
-- never wait for each other. Raises QD001, QD002 (the queue) and QD006
-- (invalid_argument: ttl_seconds NULL or negative, limit outside 1 to 10000).
create or replace function durable.cleanup_events(
  p_queue_name text,
  p_ttl_seconds integer,
  p_limit integer default 1000)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as $$
declare
  v_cutoff timestamptz;
  v_deleted integer;
begin
  perform durable._require_queue(p_queue_name);
  if p_ttl_seconds is null or p_ttl_seconds < 0 then
    raise exception 'cleanup_events: ttl_seconds must be 0 or more, got % (queue %)',
      coalesce(p_ttl_seconds::text, 'NULL'), quote_literal(p_queue_name)
      using errcode = 'QD006',
            hint = 'Events emitted more than ttl_seconds ago are deleted.';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'cleanup_events: limit must be from 1 to 10000, got % (queue %)',
      coalesce(p_limit::text, 'NULL'), quote_literal(p_queue_name)
      using errcode = 'QD006',
            hint = 'Call it again while it returns the limit.';
  end if;

  v_cutoff := durable.current_time() - make_interval(secs => p_ttl_seconds);
  delete from durable.events e
   where e.queue_name = p_queue_name
     and e.event_name = any (array(
           select x.event_name
             from durable.events x
            where x.queue_name = p_queue_name
              and x.emitted_at < v_cutoff
              and not exists (select from durable.waits w
                               where w.queue_name = x.queue_name and w.event_name = x.event_name)
            order by x.emitted_at
            limit p_limit
              for update skip locked));
  get diagnostics v_deleted = row_count;
  return v_deleted;
end;
$$;
