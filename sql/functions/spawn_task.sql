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
-- is true and the task is in the unique index tasks_key (queue_name,
-- task_name, key_hash) where key_held. When the task
-- completes, fails or is cancelled, key_held turns false and the next spawn
-- creates a new task. A spawn that finds the key held returns the holder's
-- task_id, current run_id, attempt and state with created = false; it writes
-- nothing and does not touch the holder: the duplicate's params and options
-- are ignored.
--
-- Key retention. With the option key_retention_seconds (seconds, or
-- "forever"), a keyed task keeps its key after it ends: key_held stays true
-- and key_expires_at is set to the end plus the retention (see
-- _key_expires_at). Until then a spawn with the key returns the finished task,
-- created = false, with its final state (its result through get_task_result).
-- From key_expires_at on the key is free: the lookup skips the expired holder,
-- the insert conflicts with it, and the spawn releases it (key_held = false,
-- under the row's lock, only if it is still held and expired) and tries
-- again. Concurrent spawners at the moment of expiry queue on that row lock:
-- the first releases and inserts in one transaction, the others find the
-- holder released and, at the next try, the first one's task (its insert
-- waits for the first one's commit, as below). The unique index never holds
-- two rows of one key, so exactly one spawn creates. The default, 0, frees the
-- key when the task ends. cleanup_tasks releases expired keys too, and
-- deleting a task frees its key.
--
-- Why it is race-free. Each try first looks the key up with a plain read (no
-- lock, so it never waits for a worker holding the task), then inserts with
-- on conflict do nothing on the unique index. If another transaction has
-- inserted the key and not committed, the insert waits for it: after a commit
-- it does nothing and the next lookup (a fresh snapshot at read committed)
-- finds the holder; after a rollback it inserts. If the holder ends between the
-- conflict and the lookup, the next try inserts. After a conflict, a holder
-- whose retention has expired is released (see Key retention). Tries are bounded; the last
-- resort is 40001, which a caller may retry. At repeatable read or serializable
-- a conflict with a row the caller's snapshot cannot see raises 40001 rather
-- than returning a task the caller cannot read.
--
-- Options (see _spawn_options) may make the task a child of another task of
-- the queue (parent_task_id) and give it a cancellation deadline (max_delay,
-- max_duration, enforced by claim_task through an index, never by a scan).
-- The parent's row is share-locked until the spawn commits: a cancellation
-- or failure of the parent (which updates that row before it cascades to the
-- children) either waits for the spawn and then sees the child, or ends
-- first and the spawn, having waited for it, refuses the child (QD016).
--
-- A created task available at once notifies durable_<queue> (pg_notify,
-- delivered when the spawn commits) when a worker waits for work (see
-- _notify_ready and register_waiter), so that it claims the task without
-- waiting for its next poll. A spawn that returns the key's holder notifies
-- nothing.
--
-- Raises QD001 (invalid_queue_name), QD002 (queue_not_found), QD003
-- (invalid_task_name), QD004 (invalid_idempotency_key), QD005
-- (invalid_options), QD016 (parent_finished: the parent failed or was
-- cancelled), QD020 (task_not_found: no such parent task) and 40001
-- (serialization_failure); nothing is written then.
create or replace function durable.spawn_task(
  p_queue_name text,
  p_task_name text,
  p_params jsonb default '{}',
  p_only_once boolean default false,
  p_idempotency_key text default null,
  p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean, state text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_params jsonb := coalesce(p_params, 'null'::jsonb);
  v_opts record;
  v_available_at timestamptz;
  v_cancel_deadline timestamptz;
  v_key_hash bytea;
  v_task_id uuid;
  v_run_id uuid;
  v_inserted integer;
  v_parent_state text;
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
  v_opts := durable._spawn_options(p_options);
  v_available_at := coalesce(v_opts.o_available_at, v_now);
  if v_opts.o_max_delay is not null then
    v_cancel_deadline := v_available_at + make_interval(secs => v_opts.o_max_delay);
  end if;
  if v_opts.o_parent_task_id is not null then
    select t.state into v_parent_state
      from durable.tasks t
     where t.task_id = v_opts.o_parent_task_id and t.queue_name = p_queue_name
       for share;
    if v_parent_state is null then
      raise exception 'parent task % not found in queue %', v_opts.o_parent_task_id, quote_literal(p_queue_name)
        using errcode = 'QD020',
              hint = 'A child task lives in its parent''s queue.';
    elsif v_parent_state in ('failed', 'cancelled') then
      raise exception 'parent task % in queue % is %: it takes no new children',
        v_opts.o_parent_task_id, quote_literal(p_queue_name), v_parent_state
        using errcode = 'QD016',
              hint = 'A child of a failed or cancelled task would be cancelled at once; retry the parent first.';
    end if;
  end if;

  v_key_hash := durable._key_hash(p_task_name, v_params, p_only_once, p_idempotency_key);
  if v_key_hash is null then
    v_task_id := durable._uuid7();
    v_run_id := durable._uuid7();
    with task as (
      insert into durable.tasks (queue_name, task_id, task_name, params, headers, retry_strategy,
                                 max_attempts, state, attempts, last_attempt_run, enqueued_at,
                                 parent_task_id, max_duration, cancel_deadline)
      values (p_queue_name, v_task_id, p_task_name, v_params, v_opts.o_headers, v_opts.o_retry_strategy,
              v_opts.o_max_attempts, 'pending', 1, v_run_id, v_now,
              v_opts.o_parent_task_id, v_opts.o_max_duration, v_cancel_deadline)
    )
    insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
    values (p_queue_name, v_run_id, v_task_id, 1, 'pending', v_available_at, v_now);
    if v_available_at <= v_now then
      perform durable._notify_ready(p_queue_name);
    end if;
    return query select v_task_id, v_run_id, 1, true, 'pending'::text;
    return;
  end if;

  for v_try in 1 .. 5 loop
    -- The key is held: hand back the holder, write nothing.
    return query
      select t.task_id, t.last_attempt_run, t.attempts, false, t.state
        from durable.tasks t
       where t.queue_name = p_queue_name and t.task_name = p_task_name and t.key_hash = v_key_hash
         and t.key_held and (t.key_expires_at is null or t.key_expires_at > v_now);
    if found then
      return;
    end if;

    -- The key looks free: take it. A concurrent holder makes this do nothing.
    if v_task_id is null then
      v_task_id := durable._uuid7();
      v_run_id := durable._uuid7();
    end if;
    with task as (
      insert into durable.tasks (queue_name, task_id, task_name, params, headers, retry_strategy,
                                 max_attempts, state, attempts, last_attempt_run, enqueued_at,
                                 idempotency_key, key_hash, key_held,
                                 parent_task_id, max_duration, cancel_deadline, key_retention)
      values (p_queue_name, v_task_id, p_task_name, v_params, v_opts.o_headers, v_opts.o_retry_strategy,
              v_opts.o_max_attempts, 'pending', 1, v_run_id, v_now,
              p_idempotency_key, v_key_hash, true,
              v_opts.o_parent_task_id, v_opts.o_max_duration, v_cancel_deadline, v_opts.o_key_retention)
      on conflict (queue_name, task_name, key_hash) where key_held do nothing
      returning 1
    )
    insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
    select p_queue_name, v_run_id, v_task_id, 1, 'pending', v_available_at, v_now from task;
    get diagnostics v_inserted = row_count;
    if v_inserted = 1 then
      if v_available_at <= v_now then
        perform durable._notify_ready(p_queue_name);
      end if;
      return query select v_task_id, v_run_id, 1, true, 'pending'::text;
      return;
    end if;

    -- The key is held: by a concurrent spawner (the next lookup finds it), or
    -- by a finished task whose retention has expired: release that one. The
    -- expiry test is a case so that no plan reads tasks_key_expiry (every
    -- expired key of the queue) instead of the key index.
    update durable.tasks t
       set key_held = false, key_expires_at = null
     where t.queue_name = p_queue_name and t.task_name = p_task_name and t.key_hash = v_key_hash
       and t.key_held
       and case when t.key_expires_at is null then false else t.key_expires_at <= v_now end;
  end loop;

  raise exception 'could not spawn task % in queue %: its key changed hands 5 times in a row',
    quote_literal(p_task_name), quote_literal(p_queue_name)
    using errcode = '40001',
          hint = 'Retry the spawn.';
end;
$$;
