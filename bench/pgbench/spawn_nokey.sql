select * from durable.spawn_task('bench', 'noop', '{"n": 1}');
