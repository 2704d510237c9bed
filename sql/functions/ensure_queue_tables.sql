-- durable.ensure_queue_tables(queue): creates the queue's views, or brings
-- them up to date. Safe to call again; create_queue calls it.
--
-- Every queue's rows live in five shared tables keyed by queue_name (made by
-- migration 010), so that every function runs static SQL, planned once per
-- session, rather than dynamic SQL planned on every call:
--
--   durable.tasks        one row per task: what to run, its options, its state
--                        and outcome, and its deduplication key.
--   durable.runs         one row per attempt (run) of a task: when it may
--                        start, who holds its lease until when, how it ended.
--   durable.checkpoints  one row per (task, step), written by the task's
--                        running run; an older attempt never overwrites a
--                        newer one's.
--   durable.events       one row per (queue, event name); the first emit wins.
--   durable.waits        one row per (task, step) waiting for an event (or a
--                        task's end, '$task:<id>') until its timeout, naming
--                        the run that sleeps on it (see _await).
--
-- Indexes (queue_name leads each one a function reads per queue):
--   tasks_key        unique (queue_name, task_name, key_hash) where key_held:
--                    the deduplication rule's index (see spawn_task). Only
--                    tasks holding their key are in it.
--   runs_ready       pending/sleeping runs by available_at: what claim_task reads.
--   runs_lease       running runs by lease expiry: the lease-recovery sweep.
--   runs_task        runs of a task.
--   tasks_parent     children of a task, for cascading cancellation.
--   tasks_deadline   tasks with a cancellation deadline (max_delay,
--                    max_duration), swept by claim_task.
--   tasks_finished   finished tasks whose key is free, by finished_at:
--                    cleanup_tasks.
--   tasks_key_expiry finished tasks whose retained key expires, by expiry.
--   events_emitted   events by emission time: cleanup_events.
--   waits_event      waits by event name: emit_event wakes them.
--
-- The views durable.t_<queue>, r_<queue>, c_<queue>, e_<queue> and w_<queue>
-- show the queue's rows of each table, with the table's columns but
-- queue_name, under the names the queue's tables had before migration 010:
-- for operators and psql users who read them. They grant nothing: like the
-- tables, only the schema's owner reads them; everyone else calls functions.
--
-- Locks the queue's row in durable.queues. Raises QD001 (invalid_queue_name)
-- and QD002 (queue_not_found).
create or replace function durable.ensure_queue_tables(p_queue_name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set client_min_messages = warning
as $$
declare
  v_view record;
begin
  perform durable._validate_queue_name(p_queue_name);
  perform 1 from durable.queues q where q.queue_name = p_queue_name for update;
  if not found then
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'Create it with durable.create_queue(queue_name).';
  end if;

  for v_view in
    select v.prefix, v.tbl,
           (select string_agg(quote_ident(a.attname), ', ' order by a.attnum)
              from pg_attribute a
             where a.attrelid = ('durable.' || v.tbl)::regclass
               and a.attnum > 0 and not a.attisdropped and a.attname <> 'queue_name') as cols
      from (values ('t_', 'tasks'), ('r_', 'runs'), ('c_', 'checkpoints'),
                   ('e_', 'events'), ('w_', 'waits')) v(prefix, tbl)
  loop
    execute format('create or replace view durable.%I as select %s from durable.%I where queue_name = %L',
                   v_view.prefix || p_queue_name, v_view.cols, v_view.tbl, p_queue_name);
  end loop;
end;
$$;
