-- durable.cleanup_all(limit): applies every queue's retention policy (see
-- set_queue_retention) once, and returns one row per queue that has one, in
-- name order: (queue_name, task_ttl_seconds, event_ttl_seconds,
-- tasks_deleted, events_deleted). For each such queue it runs cleanup_tasks
-- and cleanup_events with the policy's ttl and limit (default 1000, 1 to
-- 10000, per queue and kind), so one call does a bounded amount of work:
-- schedule it often rather than making limit large. Meant for a scheduler,
-- e.g. pg_cron:
--   select cron.schedule('durable-cleanup', '* * * * *', 'select durable.cleanup_all()');
--
-- Locks each queue's row in durable.queues for key share, skip locked: a queue
-- being dropped or created (whose row is locked for update) is skipped this
-- time, and set_queue_retention is not blocked. The deletions lock as
-- cleanup_tasks and cleanup_events do (skip locked), so concurrent calls and
-- workers never wait for each other. Raises QD006 (invalid_argument: limit
-- outside 1 to 10000).
create or replace function durable.cleanup_all(p_limit integer default 1000)
returns table (queue_name text, task_ttl_seconds integer, event_ttl_seconds integer,
               tasks_deleted integer, events_deleted integer)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_queue text;
  v_task_ttl integer;
  v_event_ttl integer;
begin
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'cleanup_all: limit must be from 1 to 10000, got %', coalesce(p_limit::text, 'NULL')
      using errcode = 'QD006',
            hint = 'The limit applies to each queue''s tasks and events; call it again for more.';
  end if;
  for v_queue, v_task_ttl, v_event_ttl in
    select q.queue_name, q.task_ttl_seconds, q.event_ttl_seconds
      from durable.queues q
     where q.task_ttl_seconds is not null or q.event_ttl_seconds is not null
     order by q.queue_name
       for key share skip locked
  loop
    return query
      select v_queue, v_task_ttl, v_event_ttl,
             case when v_task_ttl is not null then durable.cleanup_tasks(v_queue, v_task_ttl, p_limit) else 0 end,
             case when v_event_ttl is not null then durable.cleanup_events(v_queue, v_event_ttl, p_limit) else 0 end;
  end loop;
end;
$$;
