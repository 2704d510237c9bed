-- durable.queue_stats(queue): one row of figures about a queue, for an
-- autoscaler or a person on call, cheap enough to poll every second.
--
--   pending, running, sleeping  tasks in each live state: exact.
--   completed, failed,          tasks in each final state: exact when the task
--   cancelled                   table is small (at most 2 MiB), else estimates
--                               (terminal_counts says which; see below).
--   finished                    completed + failed + cancelled.
--   ready_now                   runs a worker could claim now (pending or
--                               sleeping, available_at reached): exact.
--   scheduled                   pending or sleeping runs due later: exact.
--   oldest_ready_age            seconds since the longest-waiting ready run
--                               became available (0 when none is ready): how
--                               far behind the workers are.
--   keys_held                   live tasks holding an idempotency key: exact.
--   terminal_counts             'exact' or 'estimated'.
--   measured_at                 durable.current_time() of the figures.
--
-- Cost. The live figures read only the partial indexes of live runs
-- (r_<queue>_ready, r_<queue>_lease) and held keys (t_<queue>_key), so they
-- cost in proportion to the live work, never to the finished tasks. Final
-- states have no index (one would slow every state change): counting them
-- exactly means reading the whole task table. So above 2 MiB of task table
-- they are estimated from PostgreSQL's statistics: the table's live-row count
-- (pg_stat_get_live_tuples, kept current by every insert and delete) minus
-- the exact live count gives `finished`, split between the three states by
-- the state column's frequencies from the last ANALYZE (autovacuum runs it);
-- before any ANALYZE the split is unknown and the three are null.
--
-- Locks nothing: plain reads of a snapshot. Raises QD001 and QD002.
create or replace function durable.queue_stats(p_queue_name text)
returns table (
  queue_name       text,
  pending          bigint,
  running          bigint,
  sleeping         bigint,
  completed        bigint,
  failed           bigint,
  cancelled        bigint,
  finished         bigint,
  ready_now        bigint,
  scheduled        bigint,
  oldest_ready_age double precision,
  keys_held        bigint,
  terminal_counts  text,
  measured_at      timestamptz)
language plpgsql
security definer
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := durable.current_time();
  v_t regclass;
  v_pending bigint;
  v_running bigint;
  v_sleeping bigint;
  v_ready bigint;
  v_oldest timestamptz;
  v_keys bigint;
  v_completed bigint;
  v_failed bigint;
  v_cancelled bigint;
  v_finished bigint;
  v_exact boolean;
  v_freq_completed double precision;
  v_freq_failed double precision;
  v_freq_cancelled double precision;
begin
  perform durable._require_queue(p_queue_name);
  v_t := format('durable.%I', 't_' || p_queue_name)::regclass;

  -- Waiting runs: one pass over the ready index (live runs only).
  execute format('select count(*) filter (where r.state = ''pending''),
                         count(*) filter (where r.state = ''sleeping''),
                         count(*) filter (where r.available_at <= $1),
                         min(r.available_at) filter (where r.available_at <= $1)
                    from durable.%I r
                   where r.state in (''pending'', ''sleeping'')', 'r_' || p_queue_name)
    into v_pending, v_sleeping, v_ready, v_oldest
    using v_now;
  execute format('select count(*) from durable.%I r where r.state = ''running''', 'r_' || p_queue_name)
    into v_running;
  execute format('select count(*) from durable.%I t where t.key_held', 't_' || p_queue_name)
    into v_keys;

  v_exact := pg_relation_size(v_t) <= 2 * 1024 * 1024;
  if v_exact then
    execute format('select count(*) filter (where t.state = ''completed''),
                           count(*) filter (where t.state = ''failed''),
                           count(*) filter (where t.state = ''cancelled'')
                      from durable.%I t', 't_' || p_queue_name)
      into v_completed, v_failed, v_cancelled;
    v_finished := v_completed + v_failed + v_cancelled;
  else
    v_finished := greatest(pg_stat_get_live_tuples(v_t) - v_pending - v_running - v_sleeping, 0);
    select max(f.freq) filter (where f.val = 'completed'),
           max(f.freq) filter (where f.val = 'failed'),
           max(f.freq) filter (where f.val = 'cancelled')
      into v_freq_completed, v_freq_failed, v_freq_cancelled
      from pg_stats s,
           unnest(s.most_common_vals::text::text[], s.most_common_freqs) as f(val, freq)
     where s.schemaname = 'durable' and s.tablename = 't_' || p_queue_name and s.attname = 'state';
    if coalesce(v_freq_completed, 0) + coalesce(v_freq_failed, 0) + coalesce(v_freq_cancelled, 0) > 0 then
      v_completed := round(v_finished * coalesce(v_freq_completed, 0)
                           / (coalesce(v_freq_completed, 0) + coalesce(v_freq_failed, 0) + coalesce(v_freq_cancelled, 0)));
      v_failed := round(v_finished * coalesce(v_freq_failed, 0)
                        / (coalesce(v_freq_completed, 0) + coalesce(v_freq_failed, 0) + coalesce(v_freq_cancelled, 0)));
      v_cancelled := v_finished - v_completed - v_failed;
    end if;
  end if;

  return query select p_queue_name, v_pending, v_running, v_sleeping,
                      v_completed, v_failed, v_cancelled, v_finished,
                      v_ready, v_pending + v_sleeping - v_ready,
                      coalesce(extract(epoch from v_now - v_oldest)::double precision, 0),
                      v_keys,
                      case when v_exact then 'exact' else 'estimated' end,
                      v_now;
end;
$$;
