-- durable.set_queue_retention(queue, task_ttl_seconds, event_ttl_seconds):
-- sets the queue's retention policy, which cleanup_all applies: finished
-- tasks older than task_ttl_seconds and events older than event_ttl_seconds
-- are deleted (see cleanup_tasks and cleanup_events). A ttl is at least 1
-- second; NULL keeps that kind forever, which is every new queue's policy;
-- setting both NULL turns the policy off. Tasks that retain their key (key_retention_seconds) are kept
-- until it expires, whatever the ttl.
--
-- Updates the queue's row in durable.queues (a no-key update: it does not
-- wait for cleanup_all, which key-share locks the rows it reads). Raises
-- QD001, QD002 (the queue) and QD006 (invalid_argument: a ttl below 1).
create or replace function durable.set_queue_retention(
  p_queue_name text,
  p_task_ttl_seconds integer,
  p_event_ttl_seconds integer)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._require_queue(p_queue_name);
  if p_task_ttl_seconds < 1 or p_event_ttl_seconds < 1 then
    raise exception 'set_queue_retention: a ttl must be at least 1 second, or NULL for none, got % and % (queue %)',
      coalesce(p_task_ttl_seconds::text, 'NULL'), coalesce(p_event_ttl_seconds::text, 'NULL'),
      quote_literal(p_queue_name)
      using errcode = 'QD006',
            hint = 'cleanup_tasks and cleanup_events take a ttl of 0 for a one-off cleanup.';
  end if;
  update durable.queues q
     set task_ttl_seconds = p_task_ttl_seconds, event_ttl_seconds = p_event_ttl_seconds
   where q.queue_name = p_queue_name;
end;
$$;
