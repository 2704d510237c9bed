select count(*) from durable.spawn_tasks('bench',
  (select jsonb_agg(jsonb_build_object('task_name', 'noop', 'params', jsonb_build_object('n', i)))
     from generate_series(1, 1000) i));
