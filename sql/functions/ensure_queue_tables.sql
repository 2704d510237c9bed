-- durable.ensure_queue_tables(queue): creates the queue's tables, or brings
-- tables made by an older version up to date. Safe to call again.
--
--   durable.t_<queue>  one row per task: what to run, its options, its state and
--                      outcome, and its deduplication key.
--   durable.r_<queue>  one row per attempt (run) of a task: when it may start,
--                      who holds its lease until when, and how it ended.
--
-- Indexes:
--   r_<queue>_ready  pending/sleeping runs by available_at: what claim_task reads.
--   r_<queue>_lease  running runs by lease expiry: the lease-recovery sweep.
--   r_<queue>_task   runs of a task.
--   t_<queue>_key    unique (task_name, key_hash) for tasks whose key is held:
--                    the deduplication rule's index (see spawn_task). Only live
--                    keyed tasks are in it.
--   t_<queue>_parent children of a task, for cascading cancellation.
--   t_<queue>_deadline tasks with a cancellation deadline (max_delay,
--                    max_duration), swept by claim_task.
--
-- Durable execution (migration 003) adds:
--   durable.c_<queue>  checkpoints: one row per (task, step), written by the
--                      task's running run; a newer attempt's row is never
--                      overwritten by an older one.
--   durable.e_<queue>  events: one row per name; the first emit wins.
--   durable.w_<queue>  waits: one row per (task, step) waiting for an event
--                      (or a task's end, '$task:<id>') until its timeout,
--                      naming the run that sleeps on it (see _await).
--
-- Key retention and cleanup (migration 005) add:
--   t_<queue>.key_retention   seconds a keyed task keeps its key after it ends
--                             (NULL: none, 'Infinity': forever), from the spawn
--                             option key_retention_seconds.
--   t_<queue>.key_expires_at  set when such a task ends: its key stays held
--                             (key_held) until then (see spawn_task).
--   t_<queue>_finished  finished tasks that hold no key, by finished_at: what
--                       cleanup_tasks deletes, oldest first. Only rows that
--                       have ended enter it (finished_at is set once, at the
--                       end), so claims and other updates of live tasks keep
--                       their cost; the update that ends a task writes one more
--                       index entry.
--   t_<queue>_key_expiry finished tasks that retain their key, by expiry:
--                       cleanup_tasks releases the expired ones.
--   e_<queue>_emitted   events by emission time, for cleanup_events.
--
-- Locks the queue's row in durable.queues, so concurrent calls for one queue
-- serialize instead of failing on the catalog. Raises QD001
-- (invalid_queue_name) and QD002 (queue_not_found).
create or replace function durable.ensure_queue_tables(p_queue_name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set client_min_messages = warning
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
begin
  perform durable._validate_queue_name(p_queue_name);
  perform 1 from durable.queues q where q.queue_name = p_queue_name for update;
  if not found then
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'Create it with durable.create_queue(queue_name).';
  end if;

  execute format($ddl$
    create table if not exists durable.%I (
      task_id          uuid primary key,
      task_name        text not null,
      params           jsonb not null,
      headers          jsonb,
      retry_strategy   jsonb not null,
      max_attempts     integer not null,
      state            text not null
                       check (state in ('pending', 'running', 'sleeping',
                                        'completed', 'failed', 'cancelled')),
      attempts         integer not null,
      last_attempt_run uuid not null,
      result           jsonb,
      failure_reason   jsonb,
      enqueued_at      timestamptz not null,
      first_started_at timestamptz,
      finished_at      timestamptz
    )$ddl$, v_t);

  execute format($ddl$
    create table if not exists durable.%I (
      run_id           uuid primary key,
      task_id          uuid not null,
      attempt          integer not null,
      state            text not null
                       check (state in ('pending', 'running', 'sleeping',
                                        'completed', 'failed', 'cancelled')),
      available_at     timestamptz not null,
      claimed_by       text,
      claim_expires_at timestamptz,
      started_at       timestamptz,
      finished_at      timestamptz,
      result           jsonb,
      failure_reason   jsonb,
      created_at       timestamptz not null
    )$ddl$, v_r);

  execute format('create index if not exists %I on durable.%I (available_at) where state in (''pending'', ''sleeping'')',
                 v_r || '_ready', v_r);
  execute format('create index if not exists %I on durable.%I (claim_expires_at) where state = ''running''',
                 v_r || '_lease', v_r);
  execute format('create index if not exists %I on durable.%I (task_id)',
                 v_r || '_task', v_r);

  -- Deduplication (migration 002). idempotency_key keeps the caller's text for
  -- operators; key_hash is what the rule compares; key_held says the task holds
  -- its key. The unique index covers held keys only.
  execute format('alter table durable.%I
                    add column if not exists idempotency_key text,
                    add column if not exists key_hash bytea,
                    add column if not exists key_held boolean not null default false',
                 v_t);
  execute format('create unique index if not exists %I on durable.%I (task_name, key_hash) where key_held',
                 v_t || '_key', v_t);

  -- Durable execution (migration 003).
  execute format('alter table durable.%I
                    add column if not exists parent_task_id uuid,
                    add column if not exists max_duration integer,
                    add column if not exists cancel_deadline timestamptz',
                 v_t);
  execute format('create index if not exists %I on durable.%I (parent_task_id) where parent_task_id is not null',
                 v_t || '_parent', v_t);
  execute format('create index if not exists %I on durable.%I (cancel_deadline) where cancel_deadline is not null',
                 v_t || '_deadline', v_t);
  execute format($ddl$
    create table if not exists durable.%I (
      task_id    uuid not null,
      step_name  text not null,
      state      jsonb not null,
      run_id     uuid not null,
      attempt    integer not null,
      updated_at timestamptz not null,
      primary key (task_id, step_name)
    )$ddl$, 'c_' || p_queue_name);
  execute format($ddl$
    create table if not exists durable.%I (
      event_name text primary key,
      payload    jsonb not null,
      emitted_at timestamptz not null
    )$ddl$, 'e_' || p_queue_name);
  execute format($ddl$
    create table if not exists durable.%I (
      task_id    uuid not null,
      step_name  text not null,
      run_id     uuid not null,
      event_name text not null,
      timeout_at timestamptz not null,
      created_at timestamptz not null,
      primary key (task_id, step_name)
    )$ddl$, 'w_' || p_queue_name);
  execute format('create index if not exists %I on durable.%I (event_name)',
                 'w_' || p_queue_name || '_event', 'w_' || p_queue_name);

  -- Key retention and cleanup (migration 005).
  execute format('alter table durable.%I
                    add column if not exists key_retention double precision,
                    add column if not exists key_expires_at timestamptz',
                 v_t);
  execute format('create index if not exists %I on durable.%I (finished_at) where finished_at is not null and not key_held',
                 v_t || '_finished', v_t);
  execute format('create index if not exists %I on durable.%I (key_expires_at) where key_expires_at is not null',
                 v_t || '_key_expiry', v_t);
  execute format('create index if not exists %I on durable.%I (emitted_at)',
                 'e_' || p_queue_name || '_emitted', 'e_' || p_queue_name);
end;
$$;
