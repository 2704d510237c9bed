-- durable._await(queue, task_id, run_id, step, wait_name, timeout, child):
-- the shared body of await_event and await_task_result.
--
-- Returns ('received', payload) when what the step waits for is there (the
-- event's payload, or the child task's outcome), ('timed_out', null) once the
-- timeout has passed since the step's first wait, or ('suspended', null) after
-- suspending the run until it is woken or the timeout passes. The first two are
-- recorded as the step's checkpoint, so a replay returns the same answer. A
-- step has one wait row (durable.w_<queue>, keyed by task and step): a later
-- attempt replaying the step takes it over with its timeout, so retries and
-- lost leases do not restart the timeout.
--
-- Like every durable-execution call it first locks the caller's run
-- (_lock_running_run), so only the task's running run gets an answer, replays
-- included.
--
-- No lost wake-up: an event waiter and emit_event serialize on a transaction
-- advisory lock on (queue, event name); a child waiter share-locks the child
-- task row, which every end of the child updates. The waiter takes that lock
-- after its own run and reads what it waits for only then; wake-ups skip
-- locked runs, and a run they skip is either not sleeping yet (its waiter then
-- sees the event or end) or being claimed or cancelled. Taking the run first
-- follows the order of a cancellation cascading from parent to child (the
-- parent's run, then the child's task), so a parent awaiting its child never
-- deadlocks with its own cancellation. Raises QD010, QD011, QD012 and QD013
-- (see _lock_running_run).
create or replace function durable._await(
  p_queue_name text,
  p_task_id uuid,
  p_run_id uuid,
  p_step_name text,
  p_wait_name text,
  p_timeout_seconds integer,
  p_child_task_id uuid)
returns table (status text, payload jsonb)
language plpgsql
as $$
declare
  v_w text := 'w_' || p_queue_name;
  v_now timestamptz := durable.current_time();
  v_attempt integer;
  v_state jsonb;
  v_payload jsonb;
  v_timeout_at timestamptz;
begin
  v_attempt := durable._lock_running_run(p_queue_name, p_task_id, p_run_id, 'await');

  -- A replay: the step already resolved.
  execute format('select state from durable.%I where task_id = $1 and step_name = $2', 'c_' || p_queue_name)
    into v_state
    using p_task_id, p_step_name;
  if v_state is not null then
    return query select v_state ->> 'status', v_state -> 'payload';
    return;
  end if;

  if p_child_task_id is null then
    perform pg_advisory_xact_lock(hashtextextended('durable:' || p_queue_name || ':' || p_wait_name, 0));
    execute format('select payload from durable.%I where event_name = $1', 'e_' || p_queue_name)
      into v_payload
      using p_wait_name;
  else
    execute format('select case when state in (''completed'', ''failed'', ''cancelled'')
                      then jsonb_build_object(''task_id'', task_id, ''state'', state,
                                              ''result'', result, ''failure_reason'', failure_reason) end
                      from durable.%I where task_id = $1 for share', 't_' || p_queue_name)
      into v_payload
      using p_child_task_id;
  end if;

  if v_payload is not null then
    perform durable._write_checkpoint(p_queue_name, p_task_id, p_step_name,
      jsonb_build_object('status', 'received', 'payload', v_payload), p_run_id, v_attempt, v_now);
    execute format('delete from durable.%I where task_id = $1 and step_name = $2', v_w)
      using p_task_id, p_step_name;
    return query select 'received'::text, v_payload;
    return;
  end if;

  execute format('select timeout_at from durable.%I where task_id = $1 and step_name = $2', v_w)
    into v_timeout_at
    using p_task_id, p_step_name;
  if v_timeout_at is not null and v_timeout_at <= v_now then
    perform durable._write_checkpoint(p_queue_name, p_task_id, p_step_name,
      jsonb_build_object('status', 'timed_out'), p_run_id, v_attempt, v_now);
    execute format('delete from durable.%I where task_id = $1 and step_name = $2', v_w)
      using p_task_id, p_step_name;
    return query select 'timed_out'::text, null::jsonb;
    return;
  end if;
  if v_timeout_at is null then
    v_timeout_at := case when p_timeout_seconds is null then 'infinity'::timestamptz
                         else v_now + make_interval(secs => p_timeout_seconds) end;
    execute format('insert into durable.%I (task_id, step_name, run_id, event_name, timeout_at, created_at)
                    values ($1, $2, $3, $4, $5, $6)', v_w)
      using p_task_id, p_step_name, p_run_id, p_wait_name, v_timeout_at, v_now;
  else
    -- An earlier run of the task began this wait: this run takes it over.
    execute format('update durable.%I set run_id = $3, event_name = $4
                     where task_id = $1 and step_name = $2 and (run_id, event_name) is distinct from ($3, $4)', v_w)
      using p_task_id, p_step_name, p_run_id, p_wait_name;
  end if;
  perform durable._suspend_run(p_queue_name, p_task_id, p_run_id, v_timeout_at);
  return query select 'suspended'::text, null::jsonb;
end;
$$;
