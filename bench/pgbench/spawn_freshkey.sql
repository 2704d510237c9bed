\set k random(1, 9000000000000000000)
select * from durable.spawn_task('bench', 'noop', '{"n": 1}', false, 'key-' || cast(:k as bigint));
