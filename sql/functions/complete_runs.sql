-- durable.complete_runs(queue, runs): completes a batch of runs, each as
-- complete_run would, and returns (run_id, completed, error_code) for every
-- element of the batch, in input order.
--
-- p_runs is a JSON array of objects {"run_id": uuid, "result": any}; an
-- element without "result" stores NULL, like complete_run's default. Every run
-- that is running with a live lease is completed and its result stored on its
-- task, which is completed, frees its key (unless it retains it:
-- _key_expires_at) and drops its cancellation deadline;
-- the runs waiting for the task wake and the task's own waits are deleted, as
-- _task_finished does for a completed task. The other runs are left as they
-- are and reported with completed = false and the code complete_run would
-- raise for them: QD010 (run_not_found), QD011 (run_not_running), QD012
-- (lease_lost) or QD013 (task_cancelled). One run that cannot complete does
-- not stop the others.
--
-- A run that another transaction holds locked at that moment (cancelling it,
-- or extending its lease) is not waited for: it is reported with 55P03
-- (lock_not_available), and complete_run, which waits, settles it. A batch
-- holding some runs must never wait for another: a cancellation cascading from
-- a parent to its child locks the parent's run before the child's, an order
-- that a batch holding both cannot promise to keep, so waiting could deadlock.
--
-- It is set-based: one statement completes the runs, one their tasks, and
-- _task_finished (the same one complete_run uses) wakes their waiters and
-- deletes their waits for the whole batch, whatever its size (one more
-- statement reads why the others did not complete, when some did not). The
-- statements are static and run with generic plans made once per session.
--
-- Locks the runs in run_id order with `for no key update skip locked`, then
-- their tasks (runs before tasks, the order every function keeps), then the
-- sleeping runs it wakes (skip locked) and their tasks. Raises QD001, QD002 and
-- QD006 (invalid_argument: p_runs is not an array of at most 10000 objects
-- with a uuid "run_id" and no keys but "run_id" and "result", or names a run
-- twice); nothing is written then.
create or replace function durable.complete_runs(
  p_queue_name text,
  p_runs jsonb)
returns table (run_id uuid, completed boolean, error_code text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_bad bigint;
  v_ids uuid[];
  v_results jsonb[];
  v_dup uuid;
  v_done_runs uuid[];
  v_done_tasks uuid[];
  v_task_results jsonb;
  v_missing uuid[];
  v_codes jsonb;
begin
  perform durable._require_queue(p_queue_name);
  if jsonb_typeof(p_runs) is distinct from 'array' then
    raise exception 'complete_runs takes a JSON array of {"run_id": ..., "result": ...} objects, got %',
      coalesce(left(p_runs::text, 200), 'NULL')
      using errcode = 'QD006';
  end if;
  if jsonb_array_length(p_runs) > 10000 then
    raise exception 'complete_runs takes at most 10000 runs at once, got %', jsonb_array_length(p_runs)
      using errcode = 'QD006', hint = 'Split the batch.';
  end if;
  select e.ord into v_bad
    from jsonb_array_elements(p_runs) with ordinality e(elem, ord)
   where case
           when jsonb_typeof(e.elem) <> 'object' then true
           else jsonb_typeof(e.elem -> 'run_id') is distinct from 'string'
                or e.elem - 'run_id' - 'result' <> '{}'::jsonb
         end
   order by e.ord
   limit 1;
  if v_bad is not null then
    raise exception 'element % of complete_runs'' array is not an object {"run_id": uuid, "result": any} with no other keys: %',
      v_bad, left((p_runs -> (v_bad::integer - 1))::text, 200)
      using errcode = 'QD006', hint = 'Each element names a run_id (a uuid) and, optionally, the result.';
  end if;
  begin
    select array_agg((e.elem ->> 'run_id')::uuid order by e.ord), array_agg(e.elem -> 'result' order by e.ord)
      into v_ids, v_results
      from jsonb_array_elements(p_runs) with ordinality e(elem, ord);
  exception when invalid_text_representation then
    raise exception 'complete_runs: a run_id is not a uuid: %', sqlerrm
      using errcode = 'QD006';
  end;
  if v_ids is null then
    return;
  end if;
  select d.id into v_dup from unnest(v_ids) d(id) group by d.id having count(*) > 1 limit 1;
  if v_dup is not null then
    raise exception 'complete_runs names run % more than once', v_dup
      using errcode = 'QD006';
  end if;

  -- The runs, in run_id order, skipping those another transaction holds. The
  -- runs are found by primary key only, and tested once locked: a test in the
  -- where clause would let a generic plan read the lease index, every running
  -- run of the queue, instead.
  with picked as (
    select r.run_id, r.state = 'running' and r.claim_expires_at > v_now as live
      from durable.runs r
     where r.run_id = any (v_ids) and r.queue_name = p_queue_name
     order by r.run_id
       for no key update skip locked
  ), done as (
    update durable.runs r
       set state = 'completed', finished_at = v_now
     where r.run_id = any (array(select p.run_id from picked p where p.live))
    returning r.run_id, r.task_id
  )
  select array_agg(d.run_id order by d.run_id), array_agg(d.task_id order by d.run_id)
    into v_done_runs, v_done_tasks
    from done d;

  if v_done_runs is not null then
    -- Their tasks. The results go as one object keyed by task id (absent for
    -- SQL NULL), so that the update finds each task by primary key.
    select jsonb_object_agg(d.tid::text, i.res) filter (where i.res is not null)
      into v_task_results
      from unnest(v_done_runs, v_done_tasks) d(rid, tid)
      join unnest(v_ids, v_results) i(rid, res) on i.rid = d.rid;
    update durable.tasks t
       set state = 'completed', result = v_task_results -> t.task_id::text, finished_at = v_now,
           cancel_deadline = null, key_held = t.key_held and t.key_retention is not null,
           key_expires_at = durable._key_expires_at(t.key_held, t.key_retention, v_now)
     where t.task_id = any (v_done_tasks);

    perform durable._task_finished(p_queue_name, v_done_tasks, 'completed', v_now);
  end if;

  -- Why the others did not complete (_raise_run_not_running's rules; a run
  -- still running with a live lease was skipped as locked).
  if v_done_runs is null or cardinality(v_done_runs) < cardinality(v_ids) then
    select array_agg(m.id) into v_missing
      from (select unnest(v_ids) except select unnest(v_done_runs)) m(id);
    select jsonb_object_agg(m.run_id, coalesce(
             (select case
                       when r.state = 'cancelled' then 'QD013'
                       when r.state = 'running' and r.claim_expires_at > v_now then '55P03'
                       when r.state = 'running'
                            or (r.state = 'failed' and r.failure_reason ->> 'name' = 'claim_timeout') then 'QD012'
                       else 'QD011'
                     end
                from durable.runs r
               where r.run_id = m.run_id and r.queue_name = p_queue_name),
             'QD010'))
      into v_codes
      from unnest(v_missing) m(run_id);
  end if;

  return query
    select i.id, (v_codes ->> i.id::text) is null, v_codes ->> i.id::text
      from unnest(v_ids) with ordinality i(id, ord)
     order by i.ord;
end;
$$;
