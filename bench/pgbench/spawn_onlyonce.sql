\set k random(1, 9000000000000000000)
select * from durable.spawn_task('bench', 'noop', jsonb_build_object('n', cast(:k as bigint)), true);
