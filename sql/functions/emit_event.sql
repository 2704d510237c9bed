-- durable.emit_event(queue, event_name, payload): records an event and wakes
-- every run waiting for it. Returns true when this call recorded it, false
-- when the event already existed: the first emit wins and later ones change
-- nothing.
--
-- Takes the transaction advisory lock on (queue, event name) that waiters
-- take, so an emit racing an await_event is never lost; wakes waiting runs
-- with skip locked (see _wake_waiters). Raises QD001, QD002 and QD007
-- (invalid_event_name).
create or replace function durable.emit_event(
  p_queue_name text,
  p_event_name text,
  p_payload jsonb default null)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_inserted integer;
begin
  perform durable._require_queue(p_queue_name);
  perform durable._validate_event_name(p_event_name);
  perform pg_advisory_xact_lock(hashtextextended('durable:' || p_queue_name || ':' || p_event_name, 0));
  insert into durable.events (queue_name, event_name, payload, emitted_at)
  values (p_queue_name, p_event_name, coalesce(p_payload, 'null'::jsonb), v_now)
  on conflict on constraint events_pkey do nothing;
  get diagnostics v_inserted = row_count;
  if v_inserted = 0 then
    return false;
  end if;
  perform durable._wake_waiters(p_queue_name, array[p_event_name], v_now);
  return true;
end;
$$;
