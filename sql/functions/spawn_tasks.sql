-- durable.spawn_tasks(queue, tasks): spawns a batch of tasks in one call, each
-- element by spawn_task's rule, and returns one row per element in input
-- order: (ordinality from 1, task_id, run_id, attempt, created, state).
--
-- Elements. p_tasks is a JSON array of at most 10000 objects with the fields
--   task_name        string, required, not empty
--   params           any JSON, default {} (JSON null is spawn_task's NULL params)
--   only_once        true or false, default false
--   idempotency_key  non-empty string, default none
--   options          object as spawn_task's p_options, default {}
-- A field set to JSON null takes its default, except params. An unknown
-- field is an error, never ignored. An empty array returns no rows.
--
-- The rule is spawn_task's, element by element (see its header): the same key
-- (durable._key_hash, so batches and single spawns deduplicate against each
-- other), the same scope (queue and task name), the same holder returned with
-- created = false and nothing written for it. Elements of one batch with the
-- same key share one task: the first of them in input order creates it (or
-- finds the holder), the later ones get the same task with created = false.
--
-- How. Every element is checked before anything is written: one query over
-- the array, and one that runs _spawn_options for the elements that have
-- options (the others take the defaults without a call). Elements without a
-- key then go in with one statement: one multi-row insert of tasks and one of
-- runs, read straight from the array. For the keyed ones, each try looks up
-- the held keys in one statement, then inserts the others with on conflict do
-- nothing, in the order of (task_name, key_hash), and looks the conflicts up
-- again at the next try; when some keys stayed held, the holders whose key
-- retention has expired (see spawn_task's Key retention) are locked in key
-- order and released before the next try. Everything is set-based: the
-- per-element cost is that of the rows written, not of a call.
-- The statements over whole batches are run with execute ... using: each is
-- planned once per call, knowing the batch's arrays, which costs little
-- against the rows it writes; a generic plan would guess their sizes.
--
-- Why it is race-free and cannot deadlock. Lookups are plain reads and lock
-- nothing. An insert that meets a key another transaction has inserted and
-- not committed waits for it, as in spawn_task: after a commit the next try
-- finds the holder, after a rollback the insert goes on. Every batch inserts
-- its keys in one order, (task_name, key_hash), so while it waits it holds
-- only keys ordered before the one it waits for: two batches with overlapping
-- keys in opposite input orders never wait for each other in a cycle
-- (DEDUP_HARD_CASES 9). Tries are bounded; the last resort is 40001, which a
-- caller may retry. At repeatable read or serializable, a conflict with a row
-- the snapshot cannot see raises 40001. The order holds within one statement:
-- keys that the caller's transaction took in an earlier call (or an earlier
-- try took, when a holder ended in between) can still close a cycle with
-- another transaction (40P01). Parents are share-locked, in task_id order,
-- before any key, as in spawn_task.
--
-- When it created a task available at once, it notifies durable_<queue>
-- (delivered at commit, when a worker waits: see _notify_ready), once per
-- call, as spawn_task does.
--
-- Raises QD001, QD002 (the queue), QD006 (p_tasks not an array, more than
-- 10000 elements, an element not an object or with an unknown field or a
-- non-boolean only_once), QD003 (task name), QD004 (idempotency key), QD005
-- (options), QD016 and QD020 (parent_task_id), each naming the element's
-- position (the first malformed element, else the first with a bad parent),
-- and 40001; nothing is written then.
create or replace function durable.spawn_tasks(
  p_queue_name text,
  p_tasks jsonb)
returns table (ordinality integer, task_id uuid, run_id uuid, attempt integer, created boolean, state text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as $$
declare
  v_now timestamptz := durable.current_time();
  v_fields constant text[] := array['task_name', 'params', 'only_once', 'idempotency_key', 'options'];
  v_element_hint constant text :=
    'An element is {"task_name": text, "params": any, "only_once": bool, "idempotency_key": text, "options": object}.';
  v_len integer;
  v_def_max_attempts integer;
  v_def_retry_strategy jsonb;
  v_malformed boolean := false;
  v_first_bad integer;
  v_keyed integer;
  v_optioned integer;
  -- Options of the elements that have some, by element position.
  v_o_ord integer[];
  v_o_max_attempts integer[];
  v_o_retry_strategy jsonb[];
  v_o_headers jsonb[];
  v_o_available_at timestamptz[];
  v_o_parent uuid[];
  v_o_max_delay integer[];
  v_o_max_duration integer[];
  v_o_key_retention double precision[];
  -- The elements without a key, as created.
  v_u_ord integer[];
  v_u_task uuid[];
  v_u_run uuid[];
  -- The elements with a key.
  v_k_ord integer[];
  v_k_name text[];
  v_k_hash bytea[];
  -- Resolved keys: the holder each key got, and whether this call created it.
  v_res_name text[] := array[]::text[];
  v_res_hash bytea[] := array[]::bytea[];
  v_res_task uuid[] := array[]::uuid[];
  v_res_run uuid[] := array[]::uuid[];
  v_res_attempt integer[] := array[]::integer[];
  v_res_state text[] := array[]::text[];
  v_res_created boolean[] := array[]::boolean[];
  v_f_name text[];
  v_f_hash bytea[];
  v_f_task uuid[];
  v_f_run uuid[];
  v_f_attempt integer[];
  v_f_state text[];
  v_candidates integer;
  v_ready boolean := false;
  v_created_ready boolean;
  v_tries constant integer := 5;
  v_done boolean := false;
  v_pos integer;
  v_elem jsonb;
  v_field text;
  v_msg text;
  v_hint text;
  v_parent_id uuid;
  v_parent_state text;
begin
  perform durable._require_queue(p_queue_name);
  if p_tasks is null or jsonb_typeof(p_tasks) <> 'array' then
    raise exception 'spawn_tasks needs a JSON array of tasks, got %', coalesce(left(p_tasks::text, 200), 'NULL')
      using errcode = 'QD006',
            hint = v_element_hint;
  end if;
  v_len := jsonb_array_length(p_tasks);
  if v_len > 10000 then
    raise exception 'spawn_tasks takes at most 10000 tasks, got % (queue %)', v_len, quote_literal(p_queue_name)
      using errcode = 'QD006',
            hint = 'Split the batch.';
  end if;
  if v_len = 0 then
    return;
  end if;

  -- Check every element's shape at once. This only flags malformed elements;
  -- naming the first one is left to the loop below.
  select min(e.ord::integer) filter (
           where case
                   when jsonb_typeof(e.elem) <> 'object' then true
                   when e.elem - v_fields <> '{}'::jsonb then true
                   when jsonb_typeof(e.elem -> 'task_name') is distinct from 'string'
                        or e.elem ->> 'task_name' = '' then true
                   when coalesce(jsonb_typeof(e.elem -> 'only_once'), 'null') not in ('boolean', 'null') then true
                   when coalesce(jsonb_typeof(e.elem -> 'idempotency_key'), 'null') not in ('string', 'null')
                        or e.elem ->> 'idempotency_key' = '' then true
                   else false
                 end),
         (count(*) filter (where e.elem ->> 'idempotency_key' is not null or e.elem -> 'only_once' = 'true'::jsonb))::integer,
         (count(*) filter (where nullif(nullif(e.elem -> 'options', 'null'::jsonb), '{}'::jsonb) is not null))::integer
    into v_first_bad, v_keyed, v_optioned
    from jsonb_array_elements(p_tasks) with ordinality e(elem, ord);

  -- Options: parsed once, only for the elements that have some.
  if v_first_bad is null and v_optioned > 0 then
    begin
      select array_agg(e.ord::integer), array_agg(s.o_max_attempts), array_agg(s.o_retry_strategy), array_agg(s.o_headers),
             array_agg(s.o_available_at), array_agg(s.o_parent_task_id), array_agg(s.o_max_delay),
             array_agg(s.o_max_duration), array_agg(s.o_key_retention)
        into v_o_ord, v_o_max_attempts, v_o_retry_strategy, v_o_headers,
             v_o_available_at, v_o_parent, v_o_max_delay, v_o_max_duration, v_o_key_retention
        from jsonb_array_elements(p_tasks) with ordinality e(elem, ord)
        cross join lateral durable._spawn_options(e.elem -> 'options') s
       where nullif(nullif(e.elem -> 'options', 'null'::jsonb), '{}'::jsonb) is not null;
    exception when sqlstate 'QD005' then
      v_malformed := true;
    end;
  end if;

  if v_malformed or v_first_bad is not null then
    for v_pos, v_elem in
      select e.ord::integer, e.elem from jsonb_array_elements(p_tasks) with ordinality e(elem, ord) order by e.ord
    loop
      if jsonb_typeof(v_elem) <> 'object' then
        raise exception 'spawn_tasks element % is not a JSON object: % (queue %)',
          v_pos, left(v_elem::text, 200), quote_literal(p_queue_name)
          using errcode = 'QD006',
                hint = v_element_hint;
      end if;
      select k into v_field from jsonb_object_keys(v_elem) k where k <> all (v_fields) order by k limit 1;
      if v_field is not null then
        raise exception 'spawn_tasks element %: unknown field % (queue %)',
          v_pos, quote_literal(v_field), quote_literal(p_queue_name)
          using errcode = 'QD006',
                hint = v_element_hint;
      end if;
      if jsonb_typeof(v_elem -> 'task_name') is distinct from 'string' or v_elem ->> 'task_name' = '' then
        raise exception 'spawn_tasks element %: task name must be a non-empty string, got % (queue %)',
          v_pos, coalesce(left((v_elem -> 'task_name')::text, 200), 'nothing'), quote_literal(p_queue_name)
          using errcode = 'QD003',
                hint = 'Pass the name the worker registered the handler under.';
      end if;
      if coalesce(jsonb_typeof(v_elem -> 'only_once'), 'null') not in ('boolean', 'null') then
        raise exception 'spawn_tasks element %: only_once must be true or false, got % (queue %, task %)',
          v_pos, left((v_elem -> 'only_once')::text, 200), quote_literal(p_queue_name),
          quote_literal(v_elem ->> 'task_name')
          using errcode = 'QD006';
      end if;
      if coalesce(jsonb_typeof(v_elem -> 'idempotency_key'), 'null') not in ('string', 'null')
         or v_elem ->> 'idempotency_key' = '' then
        raise exception 'spawn_tasks element %: idempotency key must be a non-empty string, got % (queue %, task %)',
          v_pos, left((v_elem -> 'idempotency_key')::text, 200), quote_literal(p_queue_name),
          quote_literal(v_elem ->> 'task_name')
          using errcode = 'QD004',
                hint = 'Pass null (or leave it out) for no key, or a non-empty key.';
      end if;
      begin
        perform durable._spawn_options(nullif(v_elem -> 'options', 'null'::jsonb));
      exception when sqlstate 'QD005' then
        get stacked diagnostics v_msg = message_text, v_hint = pg_exception_hint;
        v_msg := format('spawn_tasks element %s: %s (queue %s, task %s)',
                        v_pos, v_msg, quote_literal(p_queue_name), quote_literal(v_elem ->> 'task_name'));
        if v_hint = '' then
          raise exception using errcode = 'QD005', message = v_msg;
        end if;
        raise exception using errcode = 'QD005', message = v_msg, hint = v_hint;
      end;
    end loop;
    -- Unreachable while the checks above agree.
    raise exception 'spawn_tasks found a malformed element but could not name it (queue %)', quote_literal(p_queue_name)
      using errcode = 'XX000';
  end if;

  -- Parents: share-locked until the batch commits (see spawn_task), in
  -- task_id order so that two batches never deadlock; then the first element
  -- whose parent is missing or finished.
  if cardinality(array_remove(v_o_parent, null)) > 0 then
    select count(*) into v_pos
      from (select 1 from durable.tasks t
             where t.task_id = any (v_o_parent) and t.queue_name = p_queue_name
             order by t.task_id for share) l;
    v_pos := null;
    select u.ord, u.parent_task_id, t.state
      into v_pos, v_parent_id, v_parent_state
      from unnest(v_o_ord, v_o_parent) u(ord, parent_task_id)
      left join durable.tasks t on t.task_id = u.parent_task_id and t.queue_name = p_queue_name
     where u.parent_task_id is not null
       and (t.state is null or t.state in ('failed', 'cancelled'))
     order by u.ord
     limit 1;
    if v_pos is not null and v_parent_state is null then
      raise exception 'spawn_tasks element %: parent task % not found in queue %', v_pos, v_parent_id, quote_literal(p_queue_name)
        using errcode = 'QD020',
              hint = 'A child task lives in its parent''s queue.';
    elsif v_pos is not null then
      raise exception 'spawn_tasks element %: parent task % in queue % is %: it takes no new children',
        v_pos, v_parent_id, quote_literal(p_queue_name), v_parent_state
        using errcode = 'QD016',
              hint = 'A child of a failed or cancelled task would be cancelled at once; retry the parent first.';
    end if;
  end if;

  select s.o_max_attempts, s.o_retry_strategy
    into v_def_max_attempts, v_def_retry_strategy
    from durable._spawn_options(null) s;

  -- Elements without a key: one insert of tasks and one of runs.
  if v_keyed < v_len then
    execute $sql$
      with e as (
        select x.ord::integer as ord,
               x.elem ->> 'task_name' as task_name,
               coalesce(x.elem -> 'params', '{}'::jsonb) as params,
               o.headers,
               coalesce(o.retry_strategy, $2) as retry_strategy,
               coalesce(o.max_attempts, $3) as max_attempts,
               coalesce(o.available_at, $4) as available_at,
               o.parent_task_id,
               o.max_duration,
               coalesce(o.available_at, $4) + make_interval(secs => o.max_delay) as cancel_deadline,
               durable._uuid7() as task_id,
               durable._uuid7() as run_id
          from jsonb_array_elements($1) with ordinality x(elem, ord)
          left join unnest($5::integer[], $6::integer[], $7::jsonb[], $8::jsonb[], $9::timestamptz[],
                           $10::uuid[], $11::integer[], $12::integer[])
                 o(ord, max_attempts, retry_strategy, headers, available_at, parent_task_id, max_delay, max_duration)
            on o.ord = x.ord
         where x.elem ->> 'idempotency_key' is null
           and x.elem -> 'only_once' is distinct from 'true'::jsonb
      ), task as (
        insert into durable.tasks (queue_name, task_id, task_name, params, headers, retry_strategy,
                                   max_attempts, state, attempts, last_attempt_run, enqueued_at,
                                   parent_task_id, max_duration, cancel_deadline)
        select $13, e.task_id, e.task_name, e.params, e.headers, e.retry_strategy,
               e.max_attempts, 'pending', 1, e.run_id, $4,
               e.parent_task_id, e.max_duration, e.cancel_deadline
          from e
      ), run as (
        insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
        select $13, e.run_id, e.task_id, 1, 'pending', e.available_at, $4
          from e
      )
      select array_agg(e.ord), array_agg(e.task_id), array_agg(e.run_id), bool_or(e.available_at <= $4)
        from e$sql$
      into v_u_ord, v_u_task, v_u_run, v_ready
      using p_tasks, v_def_retry_strategy, v_def_max_attempts, v_now,
            v_o_ord, v_o_max_attempts, v_o_retry_strategy, v_o_headers, v_o_available_at,
            v_o_parent, v_o_max_delay, v_o_max_duration, p_queue_name;
  end if;

  -- Elements with a key: the held ones are returned, the free ones taken in
  -- key order, the conflicts looked up again.
  if v_keyed > 0 then
    select array_agg(e.ord::integer),
           array_agg(e.elem ->> 'task_name'),
           array_agg(durable._key_hash(e.elem ->> 'task_name', coalesce(e.elem -> 'params', '{}'::jsonb),
                                       e.elem -> 'only_once' = 'true'::jsonb, e.elem ->> 'idempotency_key'))
      into v_k_ord, v_k_name, v_k_hash
      from jsonb_array_elements(p_tasks) with ordinality e(elem, ord)
     where e.elem ->> 'idempotency_key' is not null or e.elem -> 'only_once' = 'true'::jsonb;

    for v_try in 1 .. v_tries loop
      execute $sql$
        select array_agg(t.task_name), array_agg(t.key_hash), array_agg(t.task_id),
               array_agg(t.last_attempt_run), array_agg(t.attempts), array_agg(t.state)
          from (select distinct k.task_name, k.key_hash
                  from unnest($1::text[], $2::bytea[]) k(task_name, key_hash)
                 where not exists (select from unnest($3::text[], $4::bytea[]) r(task_name, key_hash)
                                    where r.task_name = k.task_name and r.key_hash = k.key_hash)) k
          join durable.tasks t on t.queue_name = $6 and t.task_name = k.task_name and t.key_hash = k.key_hash
                              and t.key_held and (t.key_expires_at is null or t.key_expires_at > $5)$sql$
        into v_f_name, v_f_hash, v_f_task, v_f_run, v_f_attempt, v_f_state
        using v_k_name, v_k_hash, v_res_name, v_res_hash, v_now, p_queue_name;
      if v_f_name is not null then
        v_res_name := v_res_name || v_f_name;
        v_res_hash := v_res_hash || v_f_hash;
        v_res_task := v_res_task || v_f_task;
        v_res_run := v_res_run || v_f_run;
        v_res_attempt := v_res_attempt || v_f_attempt;
        v_res_state := v_res_state || v_f_state;
        v_res_created := v_res_created || array_fill(false, array[cardinality(v_f_name)]);
      end if;

      -- One candidate per free-looking key, its first element, in key order.
      execute $sql$
        with k as (
          select distinct on (k.task_name collate "C", k.key_hash) k.ord, k.task_name, k.key_hash
            from unnest($1::integer[], $2::text[], $3::bytea[]) k(ord, task_name, key_hash)
           where not exists (select from unnest($4::text[], $5::bytea[]) r(task_name, key_hash)
                              where r.task_name = k.task_name and r.key_hash = k.key_hash)
           order by k.task_name collate "C", k.key_hash, k.ord
        ), c as (
          select k.task_name, k.key_hash,
                 x.elem ->> 'idempotency_key' as idempotency_key,
                 coalesce(x.elem -> 'params', '{}'::jsonb) as params,
                 o.headers,
                 coalesce(o.retry_strategy, $7) as retry_strategy,
                 coalesce(o.max_attempts, $8) as max_attempts,
                 coalesce(o.available_at, $9) as available_at,
                 o.parent_task_id,
                 o.max_duration,
                 coalesce(o.available_at, $9) + make_interval(secs => o.max_delay) as cancel_deadline,
                 o.key_retention,
                 durable._uuid7() as task_id,
                 durable._uuid7() as run_id
            from k
            join jsonb_array_elements($6) with ordinality x(elem, ord) on x.ord = k.ord
            left join unnest($10::integer[], $11::integer[], $12::jsonb[], $13::jsonb[], $14::timestamptz[],
                             $15::uuid[], $16::integer[], $17::integer[], $18::double precision[])
                   o(ord, max_attempts, retry_strategy, headers, available_at, parent_task_id, max_delay, max_duration,
                     key_retention)
              on o.ord = k.ord
        ), task as (
          insert into durable.tasks (queue_name, task_id, task_name, params, headers, retry_strategy,
                                     max_attempts, state, attempts, last_attempt_run, enqueued_at,
                                     idempotency_key, key_hash, key_held,
                                     parent_task_id, max_duration, cancel_deadline, key_retention)
          select $19, c.task_id, c.task_name, c.params, c.headers, c.retry_strategy,
                 c.max_attempts, 'pending', 1, c.run_id, $9,
                 c.idempotency_key, c.key_hash, true,
                 c.parent_task_id, c.max_duration, c.cancel_deadline, c.key_retention
            from c
           order by c.task_name collate "C", c.key_hash
          on conflict (queue_name, task_name, key_hash) where key_held do nothing
          returning task_id, task_name, key_hash, last_attempt_run
        ), run as (
          insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at)
          select $19, task.last_attempt_run, task.task_id, 1, 'pending', c.available_at, $9
            from task join c on c.task_id = task.task_id
        )
        select (select count(*) from k)::integer,
               array_agg(task.task_name), array_agg(task.key_hash), array_agg(task.task_id),
               array_agg(task.last_attempt_run), bool_or(c.available_at <= $9)
          from task join c on c.task_id = task.task_id$sql$
        into v_candidates, v_f_name, v_f_hash, v_f_task, v_f_run, v_created_ready
        using v_k_ord, v_k_name, v_k_hash, v_res_name, v_res_hash, p_tasks,
              v_def_retry_strategy, v_def_max_attempts, v_now,
              v_o_ord, v_o_max_attempts, v_o_retry_strategy, v_o_headers, v_o_available_at,
              v_o_parent, v_o_max_delay, v_o_max_duration, v_o_key_retention, p_queue_name;
      v_ready := coalesce(v_ready, false) or coalesce(v_created_ready, false);
      if v_f_name is not null then
        v_res_name := v_res_name || v_f_name;
        v_res_hash := v_res_hash || v_f_hash;
        v_res_task := v_res_task || v_f_task;
        v_res_run := v_res_run || v_f_run;
        v_res_attempt := v_res_attempt || array_fill(1, array[cardinality(v_f_name)]);
        v_res_state := v_res_state || array_fill('pending'::text, array[cardinality(v_f_name)]);
        v_res_created := v_res_created || array_fill(true, array[cardinality(v_f_name)]);
      end if;
      if coalesce(cardinality(v_f_name), 0) = v_candidates then
        v_done := true;
        exit;
      end if;

      -- Keys still held: by concurrent spawners (the next lookup finds them),
      -- or by finished tasks whose retention has expired: release those, in
      -- key order.
      execute $sql$
        update durable.tasks t set key_held = false, key_expires_at = null
         where t.task_id = any (array(
                 select h.task_id
                   from (select distinct k.task_name, k.key_hash
                           from unnest($1::text[], $2::bytea[]) k(task_name, key_hash)
                          where not exists (select from unnest($3::text[], $4::bytea[]) r(task_name, key_hash)
                                             where r.task_name = k.task_name and r.key_hash = k.key_hash)) k
                   join durable.tasks h on h.queue_name = $6 and h.task_name = k.task_name
                                       and h.key_hash = k.key_hash and h.key_held
                                      and case when h.key_expires_at is null then false else h.key_expires_at <= $5 end
                  order by h.task_name collate "C", h.key_hash
                    for no key update of h))
           and t.key_held and t.key_expires_at <= $5$sql$
        using v_k_name, v_k_hash, v_res_name, v_res_hash, v_now, p_queue_name;
    end loop;
    if not v_done then
      raise exception 'could not spawn % tasks in queue %: their keys changed hands % times in a row',
        v_keyed, quote_literal(p_queue_name), v_tries
        using errcode = '40001',
              hint = 'Retry the spawn.';
    end if;
  end if;

  -- Like spawn_task: created tasks available at once wake listening workers
  -- (one notification per call, delivered at commit).
  if coalesce(v_ready, false) then
    perform durable._notify_ready(p_queue_name);
  end if;

  -- One row per element, in input order. An element with a key gets its
  -- key's holder, and created only if this call created it and the element is
  -- the key's first in the batch.
  return query execute $sql$
    select u.ord, u.task_id, u.run_id, 1, true, 'pending'
      from unnest($1::integer[], $2::uuid[], $3::uuid[]) u(ord, task_id, run_id)
    union all
    select k.ord, r.task_id, r.run_id, r.attempt,
           r.created and k.ord = min(k.ord) over (partition by k.task_name, k.key_hash),
           r.state
      from unnest($4::integer[], $5::text[], $6::bytea[]) k(ord, task_name, key_hash)
      join unnest($7::text[], $8::bytea[], $9::uuid[], $10::uuid[], $11::integer[], $12::text[], $13::boolean[])
           r(task_name, key_hash, task_id, run_id, attempt, state, created)
        on r.task_name = k.task_name and r.key_hash = k.key_hash
     order by 1$sql$
    using v_u_ord, v_u_task, v_u_run, v_k_ord, v_k_name, v_k_hash,
          v_res_name, v_res_hash, v_res_task, v_res_run, v_res_attempt, v_res_state, v_res_created;
end;
$$;
