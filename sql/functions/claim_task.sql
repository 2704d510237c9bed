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
-- Before the two sweeps, one statement looks for anything to sweep, since
-- most claims find nothing (a probe costs less than the sweeps' statements).
-- The statements are static, so PL/pgSQL plans them once per session,
-- with generic plans; their updates find rows by primary key (= any
-- (array(...))), a shape whose generic plan cannot turn into a scan of the
-- table. Bitmap scans are off while the plans are made: a generic plan made
-- before the tables' first ANALYZE (a burst spawned into a new database)
-- would otherwise fetch and sort every ready run on each claim instead of
-- reading the ready index (queue_name, available_at) in order and stopping at
-- the limit.
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

  -- Most claims find no deadline passed and no lease expired: one statement
  -- looks for either, through the indexes the sweeps read, before them.
  if exists (select from durable.tasks t
              where t.queue_name = p_queue_name and t.cancel_deadline <= v_now)
     or exists (select from durable.runs r
                 where r.queue_name = p_queue_name and r.state = 'running' and r.claim_expires_at <= v_now) then
    -- Cancel tasks past their deadline.
    for v_expired_task, v_started in
      select t.task_id, t.first_started_at
        from durable.tasks t
       where t.queue_name = p_queue_name and t.cancel_deadline <= v_now
       order by t.cancel_deadline
       limit 100
    loop
      perform durable._cancel_task(p_queue_name, v_expired_task,
        case when v_started is null
          then jsonb_build_object('name', 'max_delay', 'message', 'not started before its max_delay passed')
          else jsonb_build_object('name', 'max_duration', 'message', 'not finished before its max_duration passed')
        end,
        v_now, true);
    end loop;

    -- Recover runs whose lease expired.
    for v_expired_task, v_expired_reason in
      with expired as (
        select r.run_id
          from durable.runs r
         where r.queue_name = p_queue_name and r.state = 'running' and r.claim_expires_at <= v_now
         order by r.claim_expires_at
         limit 100
           for no key update skip locked
      )
      update durable.runs r
         set state = 'failed',
             finished_at = v_now,
             failure_reason = jsonb_build_object(
               'name', 'claim_timeout',
               'message', format('lease of worker %s expired at %s', r.claimed_by, r.claim_expires_at),
               'worker_id', r.claimed_by,
               'claim_expires_at', r.claim_expires_at)
       where r.run_id = any (array(select e.run_id from expired e))
      returning r.task_id, r.failure_reason
    loop
      perform durable._schedule_retry(p_queue_name, v_expired_task, v_expired_reason, null, v_now);
    end loop;
  end if;

  return query
    with picked as (
      select r.run_id, r.task_id
        from durable.runs r
        join durable.tasks t on t.task_id = r.task_id
       where r.queue_name = p_queue_name
         and r.state in ('pending', 'sleeping') and r.available_at <= v_now
         and (t.cancel_deadline is null or t.cancel_deadline > v_now)
       order by r.available_at
       limit p_qty
         for no key update of r, t skip locked
    ), runs as (
      update durable.runs r
         set state = 'running',
             claimed_by = p_worker_id,
             claim_expires_at = v_now + make_interval(secs => p_claim_timeout),
             started_at = v_now
       where r.run_id = any (array(select p.run_id from picked p))
      returning r.run_id, r.task_id, r.attempt, r.claim_expires_at, r.available_at
    ), tasks as (
      update durable.tasks t
         set state = 'running',
             first_started_at = coalesce(t.first_started_at, v_now),
             cancel_deadline = case when t.first_started_at is null
                                    then v_now + make_interval(secs => t.max_duration)
                                    else t.cancel_deadline end
       where t.task_id = any (array(select u.task_id from runs u))
      returning t.task_id, t.task_name, t.params, t.headers, t.max_attempts
    )
    select u.run_id, u.task_id, u.attempt, k.task_name, k.params,
           k.headers, k.max_attempts, u.claim_expires_at
      from runs u
      join tasks k on k.task_id = u.task_id
     order by u.available_at;
end;
$$;
