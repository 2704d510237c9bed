-- durable.retry_task(queue, task_id, options): runs a failed or cancelled task
-- again and returns (task_id, run_id, attempt, created, state) like spawn_task.
--
-- Options (JSON object): "spawn_new" (boolean, default false) and
-- "max_attempts" (integer >= 1). In place (the default), the task gets a new
-- run, attempt n+1, and takes its idempotency key again; its max_attempts
-- becomes the option's value, or grows by one when the attempts are used up,
-- its max_duration (if any) counts again from the retry's first start, and its
-- awaits start afresh (its waits ended with it: _task_finished).
-- If a newer live task holds the key meanwhile, the in-place retry fails with
-- QD014 naming the holder: there are never two live holders of one key. A
-- task that retains its key after it ended (key_retention_seconds) holds it
-- still: an in-place retry keeps holding it, and its retention counts again
-- from its next end. Another finished task that retains the key unexpired is
-- a holder too (QD014); one whose retention has expired is released first,
-- under its row lock, as spawn_task does. With "spawn_new": true, the task's
-- name, params, key and options are spawned as a new task through spawn_task,
-- so the key's holder is returned (created = false) instead: a live task, or
-- the task itself while it retains its key.
--
-- The new run is claimable at once: an in-place retry notifies durable_<queue>
-- (delivered at commit) when a worker waits for work (see _notify_ready).
--
-- A child whose parent failed or was cancelled is not retried (QD016), as
-- spawn_task refuses such a child: it would be live under a finished parent.
--
-- Locks the task's parent, if any, in share mode (as spawn_task does: an end
-- of the parent waits for the retry and then cascades to the child), then the
-- task row: parents before children, the order of the cancellation cascade;
-- then, to release an expired holder of its key, that holder's row (two tasks
-- never both hold one key, so two retries never lock each other's rows in
-- opposite orders). Raises QD001, QD002, QD005 (invalid options), QD014
-- (key_held), QD015 (task_not_retryable: the task is not failed or cancelled),
-- QD016 (parent_finished) and QD020 (task_not_found).
create or replace function durable.retry_task(
  p_queue_name text,
  p_task_id uuid,
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
  v_task_name text;
  v_params jsonb;
  v_headers jsonb;
  v_retry_strategy jsonb;
  v_task_max_attempts integer;
  v_state text;
  v_attempts integer;
  v_idempotency_key text;
  v_key_hash bytea;
  v_parent_task_id uuid;
  v_parent_state text;
  v_max_duration integer;
  v_key_retention double precision;
  v_key text;
  v_val jsonb;
  v_spawn_new boolean := false;
  v_max_attempts integer;
  v_holder uuid;
  v_run_id uuid := durable._uuid7();
begin
  perform durable._require_queue(p_queue_name);
  if p_options is not null and jsonb_typeof(p_options) <> 'object' then
    raise exception 'retry_task options must be a JSON object, got %', left(p_options::text, 200)
      using errcode = 'QD005';
  end if;
  for v_key, v_val in select e.key, e.value from jsonb_each(coalesce(p_options, '{}'::jsonb)) e loop
    case v_key
      when 'spawn_new' then
        if jsonb_typeof(v_val) <> 'boolean' then
          raise exception 'retry_task option spawn_new must be true or false, got %', v_val::text
            using errcode = 'QD005';
        end if;
        v_spawn_new := v_val::boolean;
      when 'max_attempts' then
        if jsonb_typeof(v_val) <> 'number' or v_val::numeric <> trunc(v_val::numeric)
           or v_val::numeric < 1 or v_val::numeric > 2147483647 then
          raise exception 'retry_task option max_attempts must be an integer from 1 to 2147483647, got %', v_val::text
            using errcode = 'QD005';
        end if;
        v_max_attempts := v_val::numeric::integer;
      else
        raise exception 'unknown retry_task option %', quote_literal(v_key)
          using errcode = 'QD005', hint = 'Known options: spawn_new, max_attempts.';
    end case;
  end loop;

  -- A task's parent never changes: read it without a lock, lock the parent,
  -- then the task.
  select t.parent_task_id into v_parent_task_id
    from durable.tasks t
   where t.queue_name = p_queue_name and t.task_id = p_task_id;
  if v_parent_task_id is not null then
    select t.state into v_parent_state
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_id = v_parent_task_id
       for share;
  end if;

  select t.task_name, t.params, t.headers, t.retry_strategy, t.max_attempts, t.state,
         t.attempts, t.idempotency_key, t.key_hash, t.parent_task_id, t.max_duration,
         t.key_retention
    into v_task_name, v_params, v_headers, v_retry_strategy, v_task_max_attempts, v_state,
         v_attempts, v_idempotency_key, v_key_hash, v_parent_task_id, v_max_duration,
         v_key_retention
    from durable.tasks t
   where t.queue_name = p_queue_name and t.task_id = p_task_id
     for no key update;
  if v_state is null then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
  if v_state not in ('failed', 'cancelled') then
    raise exception 'task % is %: only failed or cancelled tasks can be retried', p_task_id, v_state
      using errcode = 'QD015';
  end if;
  if v_parent_state in ('failed', 'cancelled') then
    raise exception 'task % in queue % is a child of task %, which is %: it cannot run again',
      p_task_id, quote_literal(p_queue_name), v_parent_task_id, v_parent_state
      using errcode = 'QD016',
            hint = 'Retry the parent first.';
  end if;

  if v_spawn_new then
    return query select * from durable.spawn_task(
      p_queue_name, v_task_name, v_params,
      v_key_hash is not null and v_idempotency_key is null,
      v_idempotency_key,
      jsonb_strip_nulls(jsonb_build_object(
        'max_attempts', coalesce(v_max_attempts, v_task_max_attempts),
        'retry_strategy', v_retry_strategy,
        'headers', v_headers,
        'parent_task_id', v_parent_task_id,
        'max_duration', v_max_duration,
        'key_retention_seconds', case when v_key_retention = 'Infinity'::double precision then to_jsonb('forever'::text)
                                      else to_jsonb(v_key_retention) end)));
    return;
  end if;

  if v_key_hash is not null then
    select t.task_id into v_holder
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_name = v_task_name and t.key_hash = v_key_hash
       and t.key_held and t.task_id <> p_task_id
       and (t.key_expires_at is null or t.key_expires_at > v_now);
    if v_holder is not null then
      perform durable._raise_key_held(p_queue_name, p_task_id, v_holder);
    end if;
    update durable.tasks t
       set key_held = false, key_expires_at = null
     where t.queue_name = p_queue_name and t.task_name = v_task_name and t.key_hash = v_key_hash
       and t.key_held and t.task_id <> p_task_id
       and case when t.key_expires_at is null then false else t.key_expires_at <= v_now end;
  end if;

  begin
    update durable.tasks t
       set state = 'pending', attempts = t.attempts + 1, last_attempt_run = v_run_id,
           max_attempts = coalesce(v_max_attempts, greatest(v_task_max_attempts, v_attempts + 1)),
           key_held = t.key_hash is not null, key_expires_at = null,
           result = null, finished_at = null, first_started_at = null
     where t.queue_name = p_queue_name and t.task_id = p_task_id;
  exception when unique_violation then
    select t.task_id into v_holder
      from durable.tasks t
     where t.queue_name = p_queue_name and t.task_name = v_task_name and t.key_hash = v_key_hash
       and t.key_held and t.task_id <> p_task_id;
    perform durable._raise_key_held(p_queue_name, p_task_id, v_holder);
  end;
  insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
  values (p_queue_name, v_run_id, p_task_id, v_attempts + 1, 'pending', v_now, v_now);
  perform durable._notify_ready(p_queue_name);
  return query select p_task_id, v_run_id, v_attempts + 1, false, 'pending'::text;
end;
$$;
