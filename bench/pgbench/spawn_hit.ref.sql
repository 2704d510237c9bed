select task_id, last_attempt_run, attempts, state
  from durable.tasks
 where queue_name = 'bench' and task_name = 'noop' and key_hash = sha256(convert_to(concat('k', ':', 'held'), 'UTF8')) and key_held;
