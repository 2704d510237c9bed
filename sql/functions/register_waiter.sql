-- durable.register_waiter(queue): registers this session as a worker waiting
-- for the queue's runs, so that transactions making a run claimable notify
-- durable_<queue> (see _notify_ready); without a registered waiter they
-- notify nothing.
--
-- Use it in the session that LISTENs on durable_<queue>, when a claim found
-- nothing:
--   true:  registered. Claim once more (runs committed before the
--          registration notified nobody), then wait for a notification or
--          the poll interval.
--   false: transactions that decided not to notify have not committed yet
--          (a spawn inside a long transaction, say). Nothing is registered:
--          claim again after a short pause instead of waiting.
-- The registration lasts until unregister_waiter or the end of the session;
-- call unregister_waiter when a notification arrives, so that transactions
-- stop notifying while the worker is busy. Registering twice is harmless.
--
-- Locks: the queue's gate advisory lock, exclusive and only if free (never
-- waiting), until this transaction ends; then the waiters' advisory lock in
-- share mode, held by the session. Call it outside a long transaction: the
-- gate held makes every spawn in the queue wait.
--
-- Raises QD001 (invalid_queue_name) and QD002 (queue_not_found).
create or replace function durable.register_waiter(p_queue_name text)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key integer := hashtext(p_queue_name);
begin
  perform durable._require_queue(p_queue_name);
  if durable._waiter_registered(v_key) then
    return true;
  end if;
  if not pg_try_advisory_xact_lock(1685418593, v_key) then
    return false;
  end if;
  perform pg_advisory_lock_shared(1685418594, v_key);
  return true;
end;
$$;
