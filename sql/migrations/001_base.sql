-- 001: the base schema. Queues, their task and run tables, and the task
-- lifecycle: spawn, claim, complete, fail, extend, cancel, result.

create schema if not exists durable;

create table durable.queues (
  queue_name text primary key,
  created_at timestamptz not null
);

-- function: current_time
-- durable.current_time(): the clock every durable function reads.
--
-- Returns the setting durable.fake_now when it is set and not empty (tests move
-- the clock with set_config('durable.fake_now', ...)), else the transaction's now().
-- Locks nothing. Raises 22007/22008 when durable.fake_now is not a timestamp.
create or replace function durable.current_time()
returns timestamptz
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(
    nullif(current_setting('durable.fake_now', true), '')::timestamptz,
    now()
  )
$$;
-- end function: current_time

-- function: _validate_queue_name
-- durable._validate_queue_name(queue): refuses a name that cannot be a queue.
--
-- A queue name is 1 to 48 bytes of ASCII letters, digits, '_' and '-', starting
-- with a letter, so 't_' || name and 'r_' || name are always valid, short
-- identifiers. Locks nothing. Raises QD001 (invalid_queue_name).
create or replace function durable._validate_queue_name(p_queue_name text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_queue_name is null
     or octet_length(p_queue_name) > 48
     or p_queue_name !~ '^[A-Za-z][A-Za-z0-9_-]*$' then
    raise exception 'invalid queue name %', coalesce(quote_literal(p_queue_name), 'NULL')
      using errcode = 'QD001',
            hint = 'A queue name is 1 to 48 ASCII letters, digits, "_" or "-", starting with a letter.';
  end if;
end;
$$;
-- end function: _validate_queue_name

-- function: _require_queue
-- durable._require_queue(queue): checks that the queue name is valid and the
-- queue exists, before any function touches the queue's tables.
--
-- Reads durable.queues without locking it. Raises QD001 (invalid_queue_name) and
-- QD002 (queue_not_found).
create or replace function durable._require_queue(p_queue_name text)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._validate_queue_name(p_queue_name);
  perform 1 from durable.queues q where q.queue_name = p_queue_name;
  if not found then
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'Create it first with durable.create_queue(queue_name).';
  end if;
end;
$$;
-- end function: _require_queue

-- function: ensure_queue_tables
-- durable.ensure_queue_tables(queue): creates the queue's tables, or brings
-- tables made by an older version up to date. Safe to call again.
--
--   durable.t_<queue>  one row per task: what to run, its options, its state and
--                      outcome.
--   durable.r_<queue>  one row per attempt (run) of a task: when it may start,
--                      who holds its lease until when, and how it ended.
--
-- Indexes:
--   r_<queue>_ready  pending/sleeping runs by available_at: what claim_task reads.
--   r_<queue>_lease  running runs by lease expiry: the lease-recovery sweep.
--   r_<queue>_task   runs of a task.
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

end;
$$;
-- end function: ensure_queue_tables

-- function: create_queue
-- durable.create_queue(queue): registers the queue and creates its tables.
--
-- Idempotent: creating an existing queue brings its tables up to date and
-- changes nothing else. Concurrent creators of one name serialize on the
-- queue's row in durable.queues (the unique index, then ensure_queue_tables'
-- row lock), so none of them fails on the catalog. Raises QD001
-- (invalid_queue_name).
create or replace function durable.create_queue(p_queue_name text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._validate_queue_name(p_queue_name);
  insert into durable.queues (queue_name, created_at)
  values (p_queue_name, durable.current_time())
  on conflict (queue_name) do nothing;
  perform durable.ensure_queue_tables(p_queue_name);
end;
$$;
-- end function: create_queue

-- function: drop_queue
-- durable.drop_queue(queue): drops the queue's tables with every task and run in
-- them, and unregisters it.
--
-- Locks the queue's row in durable.queues, then the tables (access exclusive, so
-- it waits for calls in flight on the queue). Raises QD001 (invalid_queue_name)
-- and QD002 (queue_not_found).
create or replace function durable.drop_queue(p_queue_name text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._validate_queue_name(p_queue_name);
  perform 1 from durable.queues q where q.queue_name = p_queue_name for update;
  if not found then
    raise exception 'queue % does not exist', quote_literal(p_queue_name)
      using errcode = 'QD002',
            hint = 'durable.list_queues() lists the queues there are.';
  end if;
  execute format('drop table if exists durable.%I, durable.%I',
                 'r_' || p_queue_name, 't_' || p_queue_name);
  delete from durable.queues q where q.queue_name = p_queue_name;
end;
$$;
-- end function: drop_queue

-- function: list_queues
-- durable.list_queues(): the registered queues, by name. Locks nothing.
create or replace function durable.list_queues()
returns table (queue_name text)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return query select q.queue_name from durable.queues q order by q.queue_name;
end;
$$;
-- end function: list_queues

-- function: _retry_strategy
-- durable._retry_strategy(strategy): validates a retry_strategy spawn option and
-- returns it with its defaults filled in.
--
--   {"kind": "none"}                                   retry at once
--   {"kind": "fixed", "base_seconds": 1}               wait base_seconds each time
--   {"kind": "exponential", "base_seconds": 1,         wait base_seconds * factor^(n-1)
--    "factor": 2, "max_seconds": 3600}                 after attempt n, at most max_seconds
--
-- Seconds are numbers from 0 to 31536000 (a year); factor is from 1 to 1000.
-- Locks nothing. Raises QD005 (invalid_options) naming the offending field.
create or replace function durable._retry_strategy(p_strategy jsonb)
returns jsonb
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_kind text;
  v_allowed text[];
  v_key text;
  v_val jsonb;
  v_out jsonb;
begin
  if jsonb_typeof(p_strategy) is distinct from 'object' then
    raise exception 'spawn option retry_strategy must be a JSON object, got %', p_strategy::text
      using errcode = 'QD005',
            hint = 'Example: {"kind": "exponential", "base_seconds": 1, "factor": 2, "max_seconds": 3600}.';
  end if;
  if jsonb_typeof(p_strategy -> 'kind') is distinct from 'string' then
    raise exception 'spawn option retry_strategy.kind must be "none", "fixed" or "exponential", got %',
      coalesce((p_strategy -> 'kind')::text, 'nothing')
      using errcode = 'QD005';
  end if;
  v_kind := p_strategy ->> 'kind';
  case v_kind
    when 'none' then
      v_allowed := array['kind'];
      v_out := jsonb_build_object('kind', 'none');
    when 'fixed' then
      v_allowed := array['kind', 'base_seconds'];
      v_out := jsonb_build_object('kind', 'fixed', 'base_seconds', 1);
    when 'exponential' then
      v_allowed := array['kind', 'base_seconds', 'factor', 'max_seconds'];
      v_out := jsonb_build_object('kind', 'exponential', 'base_seconds', 1, 'factor', 2, 'max_seconds', 3600);
    else
      raise exception 'spawn option retry_strategy.kind must be "none", "fixed" or "exponential", got %',
        quote_literal(v_kind)
        using errcode = 'QD005';
  end case;

  for v_key, v_val in select e.key, e.value from jsonb_each(p_strategy) e loop
    if not v_key = any (v_allowed) then
      raise exception 'unknown field % in spawn option retry_strategy of kind %', quote_literal(v_key), v_kind
        using errcode = 'QD005',
              hint = format('Kind %s takes the fields %s.', v_kind, array_to_string(v_allowed, ', '));
    end if;
    continue when v_key = 'kind';
    if jsonb_typeof(v_val) is distinct from 'number'
       or (v_key = 'factor' and (v_val::numeric < 1 or v_val::numeric > 1000))
       or (v_key <> 'factor' and (v_val::numeric < 0 or v_val::numeric > 31536000)) then
      raise exception 'spawn option retry_strategy.% must be a number %, got %', v_key,
        case when v_key = 'factor' then 'from 1 to 1000' else 'of seconds from 0 to 31536000' end,
        v_val::text
        using errcode = 'QD005';
    end if;
    v_out := v_out || jsonb_build_object(v_key, v_val);
  end loop;
  return v_out;
end;
$$;
-- end function: _retry_strategy

-- function: _retry_delay
-- durable._retry_delay(strategy, failed_attempt): seconds to wait before the
-- attempt after failed_attempt, under a strategy normalized by _retry_strategy.
-- Locks nothing, raises nothing.
create or replace function durable._retry_delay(p_strategy jsonb, p_failed_attempt integer)
returns double precision
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_base double precision := coalesce((p_strategy ->> 'base_seconds')::double precision, 1);
  v_factor double precision;
  v_max double precision;
  v_exp double precision;
begin
  case p_strategy ->> 'kind'
    when 'none' then
      return 0::double precision;
    when 'fixed' then
      return v_base;
    else
      v_factor := coalesce((p_strategy ->> 'factor')::double precision, 2);
      v_max := coalesce((p_strategy ->> 'max_seconds')::double precision, 3600);
      -- Compare in logarithms so that a large attempt number cannot overflow.
      v_exp := greatest(p_failed_attempt - 1, 0)::double precision * ln(v_factor);
      if v_base = 0 then
        return 0::double precision;
      elsif v_exp + ln(v_base) >= ln(greatest(v_max, 1e-9)) then
        return v_max;
      end if;
      return v_base * exp(v_exp);
  end case;
end;
$$;
-- end function: _retry_delay

-- function: _spawn_options
-- durable._spawn_options(options): validates spawn_task's p_options and returns
-- each option with its default filled in.
--
--   max_attempts    integer >= 1, default 5: attempts before the task fails.
--   retry_strategy  see durable._retry_strategy; default exponential 1s x2, at most 1h.
--   headers         JSON object handed to the worker with the task; default none.
--   available_at    timestamp (JSON string): not claimable before; default now.
--
-- A known option whose value is JSON null takes its default. Locks nothing.
-- Raises QD005 (invalid_options) naming the option: an unknown key (even one
-- set to null) or a wrong type is an error, never ignored.
create or replace function durable._spawn_options(
  p_options jsonb,
  out o_max_attempts integer,
  out o_retry_strategy jsonb,
  out o_headers jsonb,
  out o_available_at timestamptz)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_known constant text[] := array['max_attempts', 'retry_strategy', 'headers', 'available_at'];
  v_key text;
  v_val jsonb;
begin
  o_max_attempts := 5;
  o_retry_strategy := '{"kind": "exponential", "base_seconds": 1, "factor": 2, "max_seconds": 3600}'::jsonb;
  if p_options is null or p_options = '{}'::jsonb then
    return;
  end if;
  if jsonb_typeof(p_options) <> 'object' then
    raise exception 'spawn options must be a JSON object, got %', left(p_options::text, 200)
      using errcode = 'QD005',
            hint = 'Known options: max_attempts, retry_strategy, headers, available_at.';
  end if;

  for v_key, v_val in select e.key, e.value from jsonb_each(p_options) e loop
    if not v_key = any (v_known) then
      raise exception 'unknown spawn option %', quote_literal(v_key)
        using errcode = 'QD005',
              hint = 'Known options: max_attempts, retry_strategy, headers, available_at.';
    end if;
    continue when jsonb_typeof(v_val) = 'null';
    case v_key
      when 'max_attempts' then
        if jsonb_typeof(v_val) <> 'number'
           or v_val::numeric <> trunc(v_val::numeric)
           or v_val::numeric < 1 or v_val::numeric > 2147483647 then
          raise exception 'spawn option max_attempts must be an integer from 1 to 2147483647, got %',
            left(v_val::text, 200)
            using errcode = 'QD005';
        end if;
        o_max_attempts := v_val::numeric::integer;
      when 'retry_strategy' then
        o_retry_strategy := durable._retry_strategy(v_val);
      when 'headers' then
        if jsonb_typeof(v_val) <> 'object' then
          raise exception 'spawn option headers must be a JSON object, got %', left(v_val::text, 200)
            using errcode = 'QD005';
        end if;
        o_headers := v_val;
      when 'available_at' then
        begin
          if jsonb_typeof(v_val) <> 'string' then
            raise exception using errcode = '22007';
          end if;
          o_available_at := (v_val #>> array[]::text[])::timestamptz;
          if not isfinite(o_available_at) then
            raise exception using errcode = '22008';
          end if;
        exception when others then
          raise exception 'spawn option available_at must be a finite timestamp string, got %',
            left(v_val::text, 200)
            using errcode = 'QD005',
                  hint = 'Example: "2030-01-02T15:04:05Z".';
        end;
    end case;
  end loop;
end;
$$;
-- end function: _spawn_options

-- function: spawn_task
-- durable.spawn_task(queue, task_name, params, options): enqueues a task.
-- (Base version, replaced by migration 002 with the deduplicating one.)
create or replace function durable.spawn_task(
  p_queue_name text,
  p_task_name text,
  p_params jsonb default '{}',
  p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean, state text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := durable.current_time();
  v_opts record;
  v_task_id uuid := gen_random_uuid();
  v_run_id uuid := gen_random_uuid();
begin
  perform durable._require_queue(p_queue_name);
  if p_task_name is null or p_task_name = '' then
    raise exception 'task name must not be empty (queue %)', quote_literal(p_queue_name)
      using errcode = 'QD003';
  end if;
  select * into v_opts from durable._spawn_options(p_options);
  execute format($sql$
    with task as (
      insert into durable.%I (task_id, task_name, params, headers, retry_strategy,
                              max_attempts, state, attempts, last_attempt_run, enqueued_at)
      values ($1, $2, $3, $4, $5, $6, 'pending', 1, $7, $8)
    )
    insert into durable.%I (run_id, task_id, attempt, state, available_at, created_at)
    values ($7, $1, 1, 'pending', $9, $8)$sql$, 't_' || p_queue_name, 'r_' || p_queue_name)
    using v_task_id, p_task_name, coalesce(p_params, 'null'::jsonb), v_opts.o_headers,
          v_opts.o_retry_strategy, v_opts.o_max_attempts, v_run_id, v_now,
          coalesce(v_opts.o_available_at, v_now);
  return query select v_task_id, v_run_id, 1, true, 'pending'::text;
end;
$$;
-- end function: spawn_task

-- function: _schedule_retry
-- durable._schedule_retry(queue, task_id, reason, retry_at, now): after the
-- task's latest run failed, schedules its next attempt or fails the task.
--
-- The task fails (and frees its key) when its attempts are used up or the reason
-- is an object with "retryable": false. Otherwise a new run is created,
-- available at p_retry_at when given, else after the delay of the task's retry
-- strategy; it is 'sleeping' until then ('pending' when due at once). The
-- caller has already marked the failed run and locked it; this locks the task
-- row (runs before tasks, the order every function keeps). Returns the task's
-- new state. Raises nothing of its own.
create or replace function durable._schedule_retry(
  p_queue_name text,
  p_task_id uuid,
  p_reason jsonb,
  p_retry_at timestamptz,
  p_now timestamptz)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_max_attempts integer;
  v_strategy jsonb;
  v_attempts integer;
  v_at timestamptz;
  v_state text;
  v_run_id uuid := gen_random_uuid();
begin
  execute format('select max_attempts, retry_strategy, attempts from durable.%I
                   where task_id = $1 for no key update', v_t)
    into v_max_attempts, v_strategy, v_attempts
    using p_task_id;

  if v_attempts >= v_max_attempts
     or (jsonb_typeof(p_reason) = 'object' and p_reason -> 'retryable' = 'false'::jsonb) then
    execute format('update durable.%I
                       set state = ''failed'', failure_reason = $2, finished_at = $3, key_held = false
                     where task_id = $1', v_t)
      using p_task_id, p_reason, p_now;
    return 'failed';
  end if;

  v_at := coalesce(p_retry_at,
                   p_now + make_interval(secs => durable._retry_delay(v_strategy, v_attempts)));
  v_state := case when v_at > p_now then 'sleeping' else 'pending' end;
  execute format('insert into durable.%I (run_id, task_id, attempt, state, available_at, created_at)
                  values ($1, $2, $3, $4, $5, $6)', v_r)
    using v_run_id, p_task_id, v_attempts + 1, v_state, v_at, p_now;
  execute format('update durable.%I
                     set state = $2, attempts = $3, last_attempt_run = $4, failure_reason = $5
                   where task_id = $1', v_t)
    using p_task_id, v_state, v_attempts + 1, v_run_id, p_reason;
  return v_state;
end;
$$;
-- end function: _schedule_retry

-- function: claim_task
-- durable.claim_task(queue, worker_id, claim_timeout, qty): leases up to qty
-- ready runs to a worker for claim_timeout seconds.
--
-- First it recovers lost leases: up to 100 running runs whose lease has expired
-- fail with reason {"name": "claim_timeout", ...} and their tasks retry under
-- their policy (see _schedule_retry). Then it takes the ready runs (pending or
-- sleeping, available_at <= now) in order of availability, marks them and their
-- tasks running and returns them. Both steps read a partial index, so their
-- cost does not grow with finished history.
--
-- Locks: each run and its task with `for no key update skip locked`, so claimers
-- never wait for each other or for a run being completed or cancelled; the
-- recovery sweep locks runs before tasks, the order every function keeps.
-- Raises QD001, QD002 and QD006 (invalid_argument: empty worker id, timeout or
-- qty below 1, qty above 10000).
create or replace function durable.claim_task(
  p_queue_name text,
  p_worker_id text,
  p_claim_timeout integer default 30,
  p_qty integer default 1)
returns table (
  run_id uuid,
  task_id uuid,
  attempt integer,
  task_name text,
  params jsonb,
  headers jsonb,
  max_attempts integer,
  claim_expires_at timestamptz)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_now timestamptz := durable.current_time();
  v_expired_task uuid;
  v_expired_reason jsonb;
begin
  perform durable._require_queue(p_queue_name);
  if p_worker_id is null or p_worker_id = '' then
    raise exception 'worker id must not be empty'
      using errcode = 'QD006', hint = 'Name the worker, e.g. host:pid.';
  end if;
  if p_claim_timeout is null or p_claim_timeout < 1 then
    raise exception 'claim timeout must be at least 1 second, got %', coalesce(p_claim_timeout::text, 'NULL')
      using errcode = 'QD006';
  end if;
  if p_qty is null or p_qty < 1 or p_qty > 10000 then
    raise exception 'qty must be from 1 to 10000, got %', coalesce(p_qty::text, 'NULL')
      using errcode = 'QD006';
  end if;

  -- Recover runs whose lease expired.
  for v_expired_task, v_expired_reason in execute format($sql$
      with expired as (
        select r.run_id
          from durable.%1$I r
         where r.state = 'running' and r.claim_expires_at <= $1
         order by r.claim_expires_at
         limit 100
           for no key update skip locked
      )
      update durable.%1$I r
         set state = 'failed',
             finished_at = $1,
             failure_reason = jsonb_build_object(
               'name', 'claim_timeout',
               'message', format('lease of worker %%s expired at %%s', r.claimed_by, r.claim_expires_at),
               'worker_id', r.claimed_by,
               'claim_expires_at', r.claim_expires_at)
        from expired
       where r.run_id = expired.run_id
      returning r.task_id, r.failure_reason$sql$, v_r)
    using v_now
  loop
    perform durable._schedule_retry(p_queue_name, v_expired_task, v_expired_reason, null, v_now);
  end loop;

  return query execute format($sql$
    with picked as (
      select r.run_id, r.task_id
        from durable.%1$I r
        join durable.%2$I t on t.task_id = r.task_id
       where r.state in ('pending', 'sleeping') and r.available_at <= $1
       order by r.available_at
       limit $2
         for no key update of r, t skip locked
    ), runs as (
      update durable.%1$I r
         set state = 'running',
             claimed_by = $3,
             claim_expires_at = $1 + make_interval(secs => $4),
             started_at = $1
        from picked
       where r.run_id = picked.run_id
      returning r.run_id, r.task_id, r.attempt, r.claim_expires_at, r.available_at
    ), tasks as (
      update durable.%2$I t
         set state = 'running',
             first_started_at = coalesce(t.first_started_at, $1)
        from runs
       where t.task_id = runs.task_id
      returning t.task_id, t.task_name, t.params, t.headers, t.max_attempts
    )
    select runs.run_id, runs.task_id, runs.attempt, tasks.task_name, tasks.params,
           tasks.headers, tasks.max_attempts, runs.claim_expires_at
      from runs
      join tasks on tasks.task_id = runs.task_id
     order by runs.available_at$sql$, v_r, v_t)
    using v_now, p_qty, p_worker_id, p_claim_timeout;
end;
$$;
-- end function: claim_task

-- function: _raise_run_not_running
-- durable._raise_run_not_running(queue, run_id, action): explains why a run
-- could not be completed, failed or extended, and raises. Called after the
-- guarded update found no running run with a live lease.
--
-- Raises QD010 (run_not_found), QD012 (lease_lost: the lease expired, or the
-- run was recovered after it expired), QD013 (task_cancelled) or QD011
-- (run_not_running: the run already ended or has not started). Locks nothing.
create or replace function durable._raise_run_not_running(p_queue_name text, p_run_id uuid, p_action text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_state text;
  v_expires timestamptz;
  v_reason jsonb;
  v_task_id uuid;
begin
  execute format('select state, claim_expires_at, failure_reason, task_id from durable.%I where run_id = $1',
                 'r_' || p_queue_name)
    into v_state, v_expires, v_reason, v_task_id
    using p_run_id;
  if v_state is null then
    raise exception 'cannot % run %: no such run in queue %', p_action, p_run_id, quote_literal(p_queue_name)
      using errcode = 'QD010';
  elsif v_state = 'cancelled' then
    raise exception 'cannot % run %: task % was cancelled', p_action, p_run_id, v_task_id
      using errcode = 'QD013',
            hint = 'Stop working on it; the task will not run again.';
  elsif v_state = 'running'
        or (v_state = 'failed' and v_reason ->> 'name' = 'claim_timeout') then
    raise exception 'cannot % run %: its lease expired at %', p_action, p_run_id, v_expires
      using errcode = 'QD012',
            hint = 'Extend the claim (durable.extend_claim) before it expires; the task is retried by another claim.';
  else
    raise exception 'cannot % run %: the run is %, not running', p_action, p_run_id, v_state
      using errcode = 'QD011';
  end if;
end;
$$;
-- end function: _raise_run_not_running

-- function: complete_run
-- durable.complete_run(queue, run_id, result): records a run's result and
-- completes its task, which frees the task's key.
--
-- Only a running run whose lease has not expired can complete. Locks the run,
-- then the task (the order every function keeps). Raises QD001, QD002, QD010
-- (run_not_found), QD011 (run_not_running), QD012 (lease_lost) and QD013
-- (task_cancelled); nothing is written then.
create or replace function durable.complete_run(
  p_queue_name text,
  p_run_id uuid,
  p_result jsonb default null)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := durable.current_time();
  v_task_id uuid;
begin
  perform durable._require_queue(p_queue_name);
  execute format('update durable.%I
                     set state = ''completed'', result = $2, finished_at = $3
                   where run_id = $1 and state = ''running'' and claim_expires_at > $3
                  returning task_id', 'r_' || p_queue_name)
    into v_task_id
    using p_run_id, p_result, v_now;
  if v_task_id is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, 'complete');
  end if;
  execute format('update durable.%I
                     set state = ''completed'', result = $2, finished_at = $3, key_held = false
                   where task_id = $1', 't_' || p_queue_name)
    using v_task_id, p_result, v_now;
end;
$$;
-- end function: complete_run

-- function: fail_run
-- durable.fail_run(queue, run_id, reason, retry_at): records that a run failed
-- and schedules the task's next attempt, or fails the task when its attempts
-- are used up or the reason says {"retryable": false}.
--
-- The next attempt is available at p_retry_at when given, else after the delay
-- of the task's retry strategy. Only a running run whose lease has not expired
-- can fail. Locks the run, then the task. Raises QD001, QD002, QD006
-- (p_retry_at is not a finite time), QD010, QD011, QD012 and QD013 like
-- complete_run; nothing is written then.
create or replace function durable.fail_run(
  p_queue_name text,
  p_run_id uuid,
  p_reason jsonb,
  p_retry_at timestamptz default null)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := durable.current_time();
  v_reason jsonb := coalesce(p_reason, 'null'::jsonb);
  v_task_id uuid;
begin
  perform durable._require_queue(p_queue_name);
  if not isfinite(p_retry_at) then
    raise exception 'retry_at must be a finite time, got %', p_retry_at
      using errcode = 'QD006';
  end if;
  execute format('update durable.%I
                     set state = ''failed'', failure_reason = $2, finished_at = $3
                   where run_id = $1 and state = ''running'' and claim_expires_at > $3
                  returning task_id', 'r_' || p_queue_name)
    into v_task_id
    using p_run_id, v_reason, v_now;
  if v_task_id is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, 'fail');
  end if;
  perform durable._schedule_retry(p_queue_name, v_task_id, v_reason, p_retry_at, v_now);
end;
$$;
-- end function: fail_run

-- function: extend_claim
-- durable.extend_claim(queue, run_id, extend_by): keeps a running run's lease
-- alive until now + extend_by seconds, and returns the new expiry.
--
-- Workers call it as a heartbeat; its errors are how a worker learns that the
-- task was cancelled (QD013) or the lease was lost (QD012). Locks the run only.
-- Raises QD001, QD002, QD006 (extend_by below 1), QD010, QD011, QD012 and QD013.
create or replace function durable.extend_claim(
  p_queue_name text,
  p_run_id uuid,
  p_extend_by integer)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := durable.current_time();
  v_expires timestamptz;
begin
  perform durable._require_queue(p_queue_name);
  if p_extend_by is null or p_extend_by < 1 then
    raise exception 'extend_by must be at least 1 second, got %', coalesce(p_extend_by::text, 'NULL')
      using errcode = 'QD006';
  end if;
  execute format('update durable.%I
                     set claim_expires_at = $2 + make_interval(secs => $3)
                   where run_id = $1 and state = ''running'' and claim_expires_at > $2
                  returning claim_expires_at', 'r_' || p_queue_name)
    into v_expires
    using p_run_id, v_now, p_extend_by;
  if v_expires is null then
    perform durable._raise_run_not_running(p_queue_name, p_run_id, 'extend');
  end if;
  return v_expires;
end;
$$;
-- end function: extend_claim

-- function: cancel_task
-- durable.cancel_task(queue, task_id): cancels a task that has not finished and
-- returns its state afterwards ('cancelled', or the final state it already had:
-- cancelling a finished task changes nothing).
--
-- The task's pending, sleeping or running run is cancelled too; a worker running
-- it learns so from its next extend_claim/complete_run/fail_run (QD013).
-- Cancelling frees the task's key. Locks the task's live runs, then the task
-- (runs before tasks, the order every function keeps). Raises QD001, QD002 and
-- QD020 (task_not_found).
create or replace function durable.cancel_task(p_queue_name text, p_task_id uuid)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_t text := 't_' || p_queue_name;
  v_r text := 'r_' || p_queue_name;
  v_now timestamptz := durable.current_time();
  v_state text;
begin
  perform durable._require_queue(p_queue_name);
  execute format('select 1 from durable.%I
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')
                   order by run_id for no key update', v_r)
    using p_task_id;
  execute format('select state from durable.%I where task_id = $1 for no key update', v_t)
    into v_state
    using p_task_id;
  if v_state is null then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
  if v_state in ('completed', 'failed', 'cancelled') then
    return v_state;
  end if;
  execute format('update durable.%I
                     set state = ''cancelled'', finished_at = $2
                   where task_id = $1 and state in (''pending'', ''sleeping'', ''running'')', v_r)
    using p_task_id, v_now;
  execute format('update durable.%I
                     set state = ''cancelled'', finished_at = $2, key_held = false
                   where task_id = $1', v_t)
    using p_task_id, v_now;
  return 'cancelled';
end;
$$;
-- end function: cancel_task

-- function: get_task_result
-- durable.get_task_result(queue, task_id): a task's state and outcome: the
-- result of its completed run, or the reason of its latest failure (kept while
-- it waits to retry). Locks nothing. Raises QD001, QD002 and QD020
-- (task_not_found).
create or replace function durable.get_task_result(p_queue_name text, p_task_id uuid)
returns table (task_id uuid, state text, result jsonb, failure_reason jsonb)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform durable._require_queue(p_queue_name);
  return query execute format('select t.task_id, t.state, t.result, t.failure_reason
                                 from durable.%I t where t.task_id = $1', 't_' || p_queue_name)
    using p_task_id;
  if not found then
    raise exception 'task % not found in queue %', p_task_id, quote_literal(p_queue_name)
      using errcode = 'QD020';
  end if;
end;
$$;
-- end function: get_task_result

