-- durable._await(queue, task_id, run_id, step, wait_name, timeout, child):
-- the shared body of await_event and await_task_result.
--
-- Returns ('received', payload) when what the step waits for is there (the
-- event's payload, or the child task's outcome), ('timed_out', null) once the
-- timeout has passed since the step's first wait, or ('suspended', null) after
-- suspending the run until it is woken or the timeout passes. The first two are
-- recorded as the step's checkpoint, so a replay returns the same answer. A
-- step has one wait row (in durable.waits, keyed by task and step): a later
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
  v_now timestamptz := durable.current_time();
  v_attempt integer;
  v_state jsonb;
  v_payload jsonb;
  v_timeout_at timestamptz;
begin
  v_attempt := durable._lock_running_run(p_queue_name, p_task_id, p_run_id, 'await');

  -- A replay: the step already resolved.
  select c.state
    into v_state
    from durable.checkpoints c
   where c.task_id = p_task_id and c.step_name = p_step_name and c.queue_name = p_queue_name;
  if v_state is not null then
    return query select v_state ->> 'status', v_state -> 'payload';
    return;
  end if;

  if p_child_task_id is null then
    perform pg_advisory_xact_lock(hashtextextended('durable:' || p_queue_name || ':' || p_wait_name, 0));
    select e.payload
      into v_payload
      from durable.events e
     where e.queue_name = p_queue_name and e.event_name = p_wait_name;
  else
    select case when t.state in ('completed', 'failed', 'cancelled')
             then jsonb_build_object('task_id', t.task_id, 'state', t.state,
                                     'result', t.result, 'failure_reason', t.failure_reason) end
      into v_payload
      from durable.tasks t
     where t.task_id = p_child_task_id and t.queue_name = p_queue_name
       for share;
  end if;

  if v_payload is not null then
    perform durable._write_checkpoint(p_queue_name, p_task_id, p_step_name,
      jsonb_build_object('status', 'received', 'payload', v_payload), p_run_id, v_attempt, v_now);
    delete from durable.waits w
     where w.task_id = p_task_id and w.step_name = p_step_name and w.queue_name = p_queue_name;
    return query select 'received'::text, v_payload;
    return;
  end if;

  select w.timeout_at
    into v_timeout_at
    from durable.waits w
   where w.task_id = p_task_id and w.step_name = p_step_name and w.queue_name = p_queue_name;
  if v_timeout_at is not null and v_timeout_at <= v_now then
    perform durable._write_checkpoint(p_queue_name, p_task_id, p_step_name,
      jsonb_build_object('status', 'timed_out'), p_run_id, v_attempt, v_now);
    delete from durable.waits w
     where w.task_id = p_task_id and w.step_name = p_step_name and w.queue_name = p_queue_name;
    return query select 'timed_out'::text, null::jsonb;
    return;
  end if;
  if v_timeout_at is null then
    v_timeout_at := case when p_timeout_seconds is null then 'infinity'::timestamptz
                         else v_now + make_interval(secs => p_timeout_seconds) end;
    insert into durable.waits (queue_name, task_id, step_name, run_id, event_name, timeout_at, created_at)
    values (p_queue_name, p_task_id, p_step_name, p_run_id, p_wait_name, v_timeout_at, v_now);
  else
    -- An earlier run of the task began this wait: this run takes it over.
    update durable.waits w
       set run_id = p_run_id, event_name = p_wait_name
     where w.task_id = p_task_id and w.step_name = p_step_name and w.queue_name = p_queue_name
       and (w.run_id, w.event_name) is distinct from (p_run_id, p_wait_name);
  end if;
  perform durable._suspend_run(p_queue_name, p_task_id, p_run_id, v_timeout_at);
  return query select 'suspended'::text, null::jsonb;
end;
$$;
