select run_id from durable.claim_task('bench', 'w', 30, 1) \gset
select durable.complete_run('bench', :run_id, null);
