select task_id, last_attempt_run, attempts, state
  from durable.t_bench
 where task_name = 'noop' and key_hash = sha256(convert_to(concat('k', ':', 'held'), 'UTF8')) and key_held;
