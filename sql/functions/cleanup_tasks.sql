-- durable.cleanup_tasks(queue, ttl_seconds, limit): deletes up to limit
-- finished tasks (completed, failed or cancelled) of the queue that ended more
-- than ttl_seconds ago, with their runs, checkpoints and waits, and returns how
-- many tasks it deleted. limit defaults to 1000 (1 to 10000): call it again
-- while it returns limit.
--
-- What it never deletes: a live task (pending, running or sleeping, which
-- have no finished_at); a finished task that still holds its key
-- (key_retention_seconds not yet expired, or "forever"), whatever the ttl,
-- since a spawn with that key must find it; a finished task that a live task
-- is still waiting for (await_task_result: a wait row names it). Deleting a
-- task frees its key. Before deleting, it releases up to limit finished tasks
-- whose key retention has expired (key_held = false), as a spawn would, so
-- that they become deletable once older than the ttl.
--
-- Index-driven, over the queue's rows in the shared tables: the releases
-- read tasks_key_expiry, the deletions tasks_finished (finished tasks holding
-- no key, oldest first), then the runs, checkpoints and waits by task id.
-- Neither reads a live task, so the cost of a call does not grow with the
-- queue's size.
--
-- Locks: the tasks it releases or deletes, with skip locked, so it never waits
-- for (and never blocks) a worker, a spawn taking over an expired key or a
-- retry_task; a task locked meanwhile is left for the next call. Each row's
-- condition is checked again once locked, so a task retried in the meantime
-- is not deleted. Safe to run concurrently with spawns of the same keys: the
-- tasks it deletes are outside the key index (key_held is false), so a spawn
-- never finds or waits for one, and a released key goes through the same
-- unique index as a spawn's takeover. Concurrent cleanups skip each other's
-- rows.
--
-- Raises QD001, QD002 (the queue) and QD006 (invalid_argument: ttl_seconds
-- NULL or negative, limit outside 1 to 10000).
create or replace function durable.cleanup_tasks(
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
  v_now timestamptz := durable.current_time();
  v_ids uuid[];
begin
  perform durable._require_queue(p_queue_name);
  if p_ttl_seconds is null or p_ttl_seconds < 0 then
    raise exception 'cleanup_tasks: ttl_seconds must be 0 or more, got % (queue %)',
      coalesce(p_ttl_seconds::text, 'NULL'), quote_literal(p_queue_name)
      using errcode = 'QD006',
            hint = 'Tasks that ended more than ttl_seconds ago are deleted.';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'cleanup_tasks: limit must be from 1 to 10000, got % (queue %)',
      coalesce(p_limit::text, 'NULL'), quote_literal(p_queue_name)
      using errcode = 'QD006',
            hint = 'Call it again while it returns the limit.';
  end if;

  -- Expired retained keys: released, as a spawn would release them.
  update durable.tasks t
     set key_held = false, key_expires_at = null
   where t.task_id = any (array(
           select x.task_id from durable.tasks x
            where x.queue_name = p_queue_name and x.key_expires_at <= v_now
            order by x.key_expires_at
            limit p_limit
              for no key update skip locked))
     and t.queue_name = p_queue_name and t.key_held and t.key_expires_at <= v_now;

  -- The tasks to delete, locked.
  select array_agg(x.task_id) into v_ids
    from (select t.task_id from durable.tasks t
           where t.queue_name = p_queue_name
             and t.finished_at < v_now - make_interval(secs => p_ttl_seconds) and not t.key_held
             and not exists (select from durable.waits w
                              where w.queue_name = p_queue_name and w.event_name = '$task:' || t.task_id::text)
           order by t.finished_at
           limit p_limit
             for update of t skip locked) x;
  if v_ids is null then
    return 0;
  end if;

  -- Task ids are unique across queues, and these are the queue's: no
  -- queue_name test on waits, so that no plan reads waits_event for it.
  delete from durable.waits w where w.task_id = any (v_ids);
  delete from durable.checkpoints c where c.queue_name = p_queue_name and c.task_id = any (v_ids);
  delete from durable.runs r where r.queue_name = p_queue_name and r.task_id = any (v_ids);
  delete from durable.tasks t where t.queue_name = p_queue_name and t.task_id = any (v_ids);
  return cardinality(v_ids);
end;
$$;
