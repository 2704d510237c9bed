-- durable.claim_task(queue, worker_id, claim_timeout, qty): leases up to qty
-- ready runs to a worker for claim_timeout seconds.
--
-- First it enforces cancellation deadlines: up to 100 tasks whose max_delay or
-- max_duration has passed are cancelled (skipping any another transaction
-- holds; a later claim gets them). Then it recovers lost leases: up to 100
-- running runs whose lease has expired fail with reason
-- {"name": "claim_timeout", ...} and their tasks retry under their policy (see
-- _schedule_retry). Then it takes the ready runs (pending or sleeping,
-- available_at <= now) in order of availability, marks them and their tasks
-- running and returns them; a task's first start replaces its max_delay
-- deadline with its max_duration one. Every step reads a partial index, so
-- its cost does not grow with finished history.
--
-- The three statements are prepared once per session (see _prepared) and run
-- with generic plans, so a claim is not planned on every call; their updates
-- find rows by primary key (= any (array(...))), a shape whose generic plan
-- cannot turn into a scan of the table. Bitmap scans are off while the plans
-- are made: a generic plan made before the queue's first ANALYZE (a burst
-- spawned into a new queue) would otherwise fetch and sort every ready run on
-- each claim instead of reading the ready index in order and stopping at the
-- limit.
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
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_expired_task uuid;
  v_expired_reason jsonb;
  v_started timestamptz;
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

  -- Cancel tasks past their deadline.
  for v_expired_task, v_started in execute format('execute %I(%L)',
      durable._prepared(p_queue_name, 'deadlines', '(timestamptz)',
        'select task_id, first_started_at from durable.%1$I
          where cancel_deadline <= $1 order by cancel_deadline limit 100'),
      v_now)
  loop
    perform durable._cancel_task(p_queue_name, v_expired_task,
      case when v_started is null
        then jsonb_build_object('name', 'max_delay', 'message', 'not started before its max_delay passed')
        else jsonb_build_object('name', 'max_duration', 'message', 'not finished before its max_duration passed')
      end,
      v_now, true);
  end loop;

  -- Recover runs whose lease expired.
  for v_expired_task, v_expired_reason in execute format('execute %I(%L)',
      durable._prepared(p_queue_name, 'expired', '(timestamptz)', $sql$
        with expired as (
          select r.run_id
            from durable.%2$I r
           where r.state = 'running' and r.claim_expires_at <= $1
           order by r.claim_expires_at
           limit 100
             for no key update skip locked
        )
        update durable.%2$I r
           set state = 'failed',
               finished_at = $1,
               failure_reason = jsonb_build_object(
                 'name', 'claim_timeout',
                 'message', format('lease of worker %%s expired at %%s', r.claimed_by, r.claim_expires_at),
                 'worker_id', r.claimed_by,
                 'claim_expires_at', r.claim_expires_at)
           where r.run_id = any (array(select run_id from expired))
        returning r.task_id, r.failure_reason$sql$),
      v_now)
  loop
    perform durable._schedule_retry(p_queue_name, v_expired_task, v_expired_reason, null, v_now);
  end loop;

  return query execute format('execute %I(%L, %L, %L, %L)',
    durable._prepared(p_queue_name, 'claim', '(timestamptz, integer, text, integer)', $sql$
      with picked as (
        select r.run_id, r.task_id
          from durable.%2$I r
          join durable.%1$I t on t.task_id = r.task_id
         where r.state in ('pending', 'sleeping') and r.available_at <= $1
           and (t.cancel_deadline is null or t.cancel_deadline > $1)
         order by r.available_at
         limit $2
           for no key update of r, t skip locked
      ), runs as (
        update durable.%2$I r
           set state = 'running',
               claimed_by = $3,
               claim_expires_at = $1 + make_interval(secs => $4),
               started_at = $1
         where r.run_id = any (array(select run_id from picked))
        returning r.run_id, r.task_id, r.attempt, r.claim_expires_at, r.available_at
      ), tasks as (
        update durable.%1$I t
           set state = 'running',
               first_started_at = coalesce(t.first_started_at, $1),
               cancel_deadline = case when t.first_started_at is null
                                      then $1 + make_interval(secs => t.max_duration)
                                      else t.cancel_deadline end
         where t.task_id = any (array(select task_id from runs))
        returning t.task_id, t.task_name, t.params, t.headers, t.max_attempts
      )
      select runs.run_id, runs.task_id, runs.attempt, tasks.task_name, tasks.params,
             tasks.headers, tasks.max_attempts, runs.claim_expires_at
        from runs
        join tasks on tasks.task_id = runs.task_id
       order by runs.available_at$sql$),
    v_now, p_qty, p_worker_id, p_claim_timeout);
end;
$$;
