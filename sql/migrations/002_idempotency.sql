-- 002: first-served spawn deduplication. Adds the key columns and the partial
-- unique index to every existing queue (through ensure_queue_tables) and
-- replaces spawn_task with the version that takes p_only_once and
-- p_idempotency_key.

drop function durable.spawn_task(text, text, jsonb, jsonb);

-- function: ensure_queue_tables
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
--
-- Locks the queue's row in durable.queues, so concurrent calls for one queue
-- serialize instead of failing on the catalog. Raises QD001
-- (invalid_queue_name) and QD002 (queue_not_found).
create or replace function durable.ensure_queue_tables(p_queue_name text)
returns void
language plpgsql
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
end;
$$;
-- end function: ensure_queue_tables

-- function: spawn_task
-- durable.spawn_task(queue, task_name, params, only_once, idempotency_key, options):
-- enqueues a task, first-served per deduplication key.
--
-- The key. An explicit p_idempotency_key wins. Otherwise, with p_only_once, the
-- key is derived from the task name and the params as jsonb, so params equal as
-- JSON (key order, white space) give the same key. Otherwise there is no key
-- and every call creates a task. The stored key is a SHA-256 of a
-- domain-separated encoding ('k:' || key for explicit keys, 'o:' ||
-- [name, params] for derived ones), so keys of any length fit the index and
-- derived and explicit keys never collide. The caller's explicit key is kept
-- in idempotency_key for operators.
--
-- The rule. A key is scoped to one queue and one task name. It is held while its
-- task is pending, running or sleeping (waiting for a retry included): key_held
-- is true and the task is in the unique index t_<queue>_key. When the task
-- completes, fails or is cancelled, key_held turns false and the next spawn
-- creates a new task. A spawn that finds the key held returns the holder's
-- task_id, current run_id, attempt and state with created = false; it writes
-- nothing and does not touch the holder: the duplicate's params and options
-- are ignored.
--
-- Why it is race-free. Each try first looks the key up with a plain read (no
-- lock, so it never waits for a worker holding the task), then inserts with
-- on conflict do nothing on the unique index. If another transaction has
-- inserted the key and not committed, the insert waits for it: after a commit
-- it does nothing and the next lookup (a fresh snapshot at read committed)
-- finds the holder; after a rollback it inserts. If the holder ends between the
-- conflict and the lookup, the next try inserts. Tries are bounded; the last
-- resort is 40001, which a caller may retry. At repeatable read or serializable
-- a conflict with a row the caller's snapshot cannot see raises 40001 rather
-- than returning a task the caller cannot read.
--
-- Raises QD001 (invalid_queue_name), QD002 (queue_not_found), QD003
-- (invalid_task_name), QD004 (invalid_idempotency_key), QD005
-- (invalid_options) and 40001 (serialization_failure); nothing is written then.
create or replace function durable.spawn_task(
  p_queue_name text,
  p_task_name text,
  p_params jsonb default '{}',
  p_only_once boolean default false,
  p_idempotency_key text default null,
  p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean, state text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_now timestamptz := durable.current_time();
  v_params jsonb := coalesce(p_params, 'null'::jsonb);
  v_opts record;
  v_available_at timestamptz;
  v_key_hash bytea;
  v_task_id uuid := gen_random_uuid();
  v_run_id uuid := gen_random_uuid();
  v_inserted integer;
  v_try integer;
begin
  perform durable._require_queue(p_queue_name);
  if p_task_name is null or p_task_name = '' then
    raise exception 'task name must not be empty (queue %)', quote_literal(p_queue_name)
      using errcode = 'QD003',
            hint = 'Pass the name the worker registered the handler under.';
  end if;
  if p_idempotency_key = '' then
    raise exception 'idempotency key must not be empty (queue %, task %)',
      quote_literal(p_queue_name), quote_literal(p_task_name)
      using errcode = 'QD004',
            hint = 'Pass NULL for no key, or a non-empty key.';
  end if;
  select * into v_opts from durable._spawn_options(p_options);
  v_available_at := coalesce(v_opts.o_available_at, v_now);

  if p_idempotency_key is not null then
    v_key_hash := sha256(convert_to('k:' || p_idempotency_key, 'UTF8'));
  elsif p_only_once then
    v_key_hash := sha256(convert_to('o:' || jsonb_build_array(p_task_name, v_params)::text, 'UTF8'));
  else
    execute format($sql$
      with task as (
        insert into durable.%I (task_id, task_name, params, headers, retry_strategy,
                                max_attempts, state, attempts, last_attempt_run, enqueued_at)
        values ($1, $2, $3, $4, $5, $6, 'pending', 1, $7, $8)
      )
      insert into durable.%I (run_id, task_id, attempt, state, available_at, created_at)
      values ($7, $1, 1, 'pending', $9, $8)$sql$, v_t, v_r)
      using v_task_id, p_task_name, v_params, v_opts.o_headers, v_opts.o_retry_strategy,
            v_opts.o_max_attempts, v_run_id, v_now, v_available_at;
    return query select v_task_id, v_run_id, 1, true, 'pending'::text;
    return;
  end if;

  for v_try in 1 .. 5 loop
    -- The key is held: hand back the holder, write nothing.
    return query execute format(
      'select t.task_id, t.last_attempt_run, t.attempts, false, t.state
         from durable.%I t
        where t.task_name = $1 and t.key_hash = $2 and t.key_held', v_t)
      using p_task_name, v_key_hash;
    if found then
      return;
    end if;

    -- The key looks free: take it. A concurrent holder makes this do nothing.
    execute format($sql$
      with task as (
        insert into durable.%I (task_id, task_name, params, headers, retry_strategy,
                                max_attempts, state, attempts, last_attempt_run, enqueued_at,
                                idempotency_key, key_hash, key_held)
        values ($1, $2, $3, $4, $5, $6, 'pending', 1, $7, $8, $10, $11, true)
        on conflict (task_name, key_hash) where key_held do nothing
        returning 1
      )
      insert into durable.%I (run_id, task_id, attempt, state, available_at, created_at)
      select $7, $1, 1, 'pending', $9, $8 from task$sql$, v_t, v_r)
      using v_task_id, p_task_name, v_params, v_opts.o_headers, v_opts.o_retry_strategy,
            v_opts.o_max_attempts, v_run_id, v_now, v_available_at,
            p_idempotency_key, v_key_hash;
    get diagnostics v_inserted = row_count;
    if v_inserted = 1 then
      return query select v_task_id, v_run_id, 1, true, 'pending'::text;
      return;
    end if;
  end loop;

  raise exception 'could not spawn task % in queue %: its key changed hands % times in a row',
    quote_literal(p_task_name), quote_literal(p_queue_name), v_try
    using errcode = '40001',
          hint = 'Retry the spawn.';
end;
$$;
-- end function: spawn_task

do $$
declare
  v_queue text;
begin
  for v_queue in select q.queue_name from durable.queues q order by q.queue_name loop
    perform durable.ensure_queue_tables(v_queue);
  end loop;
end;
$$;
