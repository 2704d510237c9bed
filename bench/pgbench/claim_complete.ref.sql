with c as (
  select r.run_id, r.task_id
    from durable.runs r
   where r.queue_name = 'bench' and r.state in ('pending', 'sleeping') and r.available_at <= now()
   order by r.available_at
   limit 1
     for no key update skip locked
), runs as (
  update durable.runs r
     set state = 'running', claimed_by = 'w', claim_expires_at = now() + interval '30 seconds', started_at = now()
    from c where r.run_id = c.run_id
  returning r.run_id, r.task_id
)
update durable.tasks t set state = 'running', first_started_at = coalesce(t.first_started_at, now())
  from runs where t.task_id = runs.task_id
returning runs.run_id, runs.task_id \gset
update durable.runs set state = 'completed', finished_at = now() where run_id = :run_id;
update durable.tasks set state = 'completed', finished_at = now(), key_held = false where task_id = :task_id;
