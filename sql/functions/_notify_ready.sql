-- durable._notify_ready(queue): tells the queue's waiting workers that a run
-- became claimable, by pg_notify('durable_<queue>', '') delivered at commit;
-- when no worker waits (none is registered by register_waiter), it notifies
-- nothing.
--
-- Why. Every notifying transaction takes the server-wide notification queue
-- lock at commit, so notifying on every spawn serializes the commits of all
-- spawners; a busy worker does not need the notification anyway, since it
-- claims again as soon as it finishes.
--
-- Why no wake-up is lost. Two advisory locks per queue, keyed by
-- hashtext(queue) with fixed first keys: the gate (1685418593) and the
-- waiters' lock (1685418594). This function holds the gate in share mode until
-- its transaction ends, then looks for a waiter by trying the waiters' lock in
-- exclusive mode and releasing it at once: it fails only while some waiter
-- holds it in share mode, and then this transaction notifies. register_waiter
-- takes the gate in exclusive mode before it takes the waiters' lock, so it
-- succeeds only when no transaction that decided not to notify is still
-- uncommitted; the worker's next claim, after registering, sees every run
-- those transactions made claimable. A transaction that decides after the
-- registration finds the waiter and notifies.
--
-- Raises nothing of its own.
create or replace function durable._notify_ready(p_queue_name text)
returns void
language plpgsql
as $$
declare
  v_key integer := pg_catalog.hashtext(p_queue_name);
  v_done boolean;
begin
  -- Assignments rather than perform: PL/pgSQL evaluates a simple expression
  -- without starting an executor, and this runs on every spawn.
  v_done := pg_catalog.pg_advisory_xact_lock_shared(1685418593, v_key) is null;
  if pg_catalog.pg_try_advisory_lock(1685418594, v_key) then
    v_done := pg_catalog.pg_advisory_unlock(1685418594, v_key);
  else
    v_done := pg_catalog.pg_notify('durable_' || p_queue_name, '') is null;
  end if;
end;
$$;
