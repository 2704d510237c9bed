-- durable.extend_claim(queue, run_id, extend_by): keeps a running run's lease
-- alive until now + extend_by seconds, and returns the new expiry.
--
-- Workers call it as a heartbeat; its errors are how a worker learns that the
-- task was cancelled (QD013) or the lease was lost (QD012). Locks the run only.
-- Raises QD001, QD002, QD006 (extend_by below 1), QD010, QD011, QD012 and QD013.
create or replace function durable.extend_claim(
  p_queue_name text,
  p_run_id uuid,
  p_extend_by integer)
returns timestamptz
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_expires timestamptz;
begin
  perform durable._require_queue(p_queue_name);
  if p_extend_by is null or p_extend_by < 1 then
    raise exception 'extend_by must be at least 1 second, got %', coalesce(p_extend_by::text, 'NULL')
      using errcode = 'QD006';
  end if;
  -- The state test is a case so that no generic plan can read the lease
  -- index (every running run) instead of the primary key.
  update durable.runs r
     set claim_expires_at = v_now + make_interval(secs => p_extend_by)
   where r.run_id = p_run_id and r.queue_name = p_queue_name
     and case when r.state = 'running' then r.claim_expires_at > v_now else false end
  returning r.claim_expires_at into v_expires;
  if v_expires is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, 'extend');
  end if;
  return v_expires;
end;
$$;
