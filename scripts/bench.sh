#!/usr/bin/env bash
# make bench: durable's operations measured with pgbench, each beside its
# physical reference (a plain SQL statement doing the same inserts, or the same
# skip-locked claim and updates) on the same tables in the same run, with the
# ratio, since absolute figures on shared machines drift.
#
#   scripts/pg.sh scripts/bench.sh        (make bench does this)
#
# BENCH_SECONDS (default 10) is the length of each timed run; BENCH_CYCLES
# (default 5000) the claim+complete transactions per measurement;
# BENCH_FINISHED (default 1000000) the finished tasks of the history scenario.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATABASE_URL:?run under scripts/pg.sh or set DATABASE_URL}"
secs=${BENCH_SECONDS:-10}
cycles=${BENCH_CYCLES:-5000}
finished=${BENCH_FINISHED:-1000000}
bin=${DURABLE_PG_BIN:-${PG_BIN:-/usr/lib/postgresql/15/bin}}
pgbench=$bin/pgbench
[ -x "$pgbench" ] || pgbench=$(command -v pgbench)
psql=$(command -v psql || echo "$bin/psql")

db=durable_bench
admin=$DATABASE_URL
url=$(printf '%s' "$DATABASE_URL" | sed -E "s#/[^/?]+(\?|$)#/$db\1#")
sql() { "$psql" -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }

"$psql" -X -q -v ON_ERROR_STOP=1 "$admin" -c "drop database if exists $db with (force)" -c "create database $db"
sql -f sql/install.sql >/dev/null

reset_queue() {
  sql -c "select durable.drop_queue(q) from durable.list_queues() q where q = 'bench'" \
      -c "select durable.create_queue('bench')" >/dev/null
}
# prefill N STATE: N tasks with their run, in STATE (pending = ready now),
# with ids made as spawn_task makes them (durable._uuid7).
prefill() {
  sql -c "
    with t as (
      insert into durable.tasks (queue_name, task_id, task_name, params, retry_strategy, max_attempts, state,
                                 attempts, last_attempt_run, enqueued_at, finished_at)
      select 'bench', durable._uuid7(), 'noop', '{}', '{\"kind\": \"none\"}', 5, '$2', 1, durable._uuid7(),
             now() - interval '1 hour', case when '$2' = 'completed' then now() end
        from generate_series(1, $1)
      returning task_id, last_attempt_run, state, enqueued_at)
    insert into durable.runs (queue_name, run_id, task_id, attempt, state, available_at, created_at, finished_at)
    select 'bench', last_attempt_run, task_id, 1, state, enqueued_at, enqueued_at,
           case when state = 'completed' then now() end
      from t" >/dev/null
}
# settle: fresh statistics, and the prefill's dirty pages written out before a
# timed run, so that no run pays for the bulk load before it.
settle() { sql -c "vacuum analyze durable.tasks, durable.runs" -c "checkpoint" >/dev/null; }
# tps SCRIPT CLIENTS ARGS...: pgbench's rate, without connection time, times
# $per (default 1: transactions per second; the rows of a batch per
# transaction give rows per second).
tps() {
  local script=$1 clients=$2; shift 2
  "$pgbench" -n -M prepared -c "$clients" -j "$(( clients < 2 ? clients : 2 ))" "$@" \
    -f "bench/pgbench/$script" "$url" 2>&1 |
    awk -v per="${rows_per_tx:-1}" '/^tps/ { printf "%.0f", $3 * per; found=1 } END { if (!found) exit 1 }' ||
    { echo "pgbench failed on $script" >&2; "$pgbench" -n -M prepared -c "$clients" "$@" -f "bench/pgbench/$script" "$url" >&2 || true; exit 1; }
}

rows=()
row() { # name clients durable reference
  local ratio
  ratio=$(awk -v a="$3" -v b="$4" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  rows+=("$(printf '%-44s %7s %12s %12s %7s' "$1" "$2" "$3" "$4" "$ratio")")
  echo "${rows[-1]}" >&2
}

echo "durable bench: ${secs}s per timed run, $cycles claim+complete cycles per measurement" >&2
echo "PostgreSQL: $(sql -Atc 'show server_version'), $(nproc) cores" >&2

for c in 1 16; do
  reset_queue; settle; d=$(tps spawn_nokey.sql "$c" -T "$secs")
  reset_queue; settle; r=$(tps spawn_nokey.ref.sql "$c" -T "$secs")
  row "spawn, no key" "$c" "$d" "$r"
  [ "$c" = 1 ] && nokey1=$d
  reset_queue; settle; d=$(tps spawn_freshkey.sql "$c" -T "$secs")
  reset_queue; settle; r=$(tps spawn_freshkey.ref.sql "$c" -T "$secs")
  row "spawn, fresh key" "$c" "$d" "$r"
  [ "$c" = 1 ] && fresh1=$d
done

# Batches of 1,000 tasks without keys (spawn_tasks), in rows per second,
# beside one multi-row insert of the same tasks and runs, and beside single
# no-key spawns (one round trip per task).
reset_queue; settle; d=$(rows_per_tx=1000 tps spawn_batch.sql 1 -T "$secs")
reset_queue; settle; r=$(rows_per_tx=1000 tps spawn_batch.ref.sql 1 -T "$secs")
row "batch spawn (rows/s), 1,000 per call" 1 "$d" "$r"
row "  batch vs single spawn rows/s (target >= 10)" 1 "$d" "$nokey1"

reset_queue; settle; d=$(tps spawn_onlyonce.sql 1 -T "$secs")
reset_queue; settle; r=$(tps spawn_onlyonce.ref.sql 1 -T "$secs")
row "spawn, only_once (fresh params)" 1 "$d" "$r"

reset_queue
sql -c "select * from durable.spawn_task('bench', 'noop', '{\"n\": 1}', false, 'held')" >/dev/null
settle
before=$(sql -Atc "select n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables where relname = 'tasks'")
d=$(tps spawn_hit.sql 1 -T "$secs")
r=$(tps spawn_hit.ref.sql 1 -T "$secs")
row "spawn, key held (hit)" 1 "$d" "$r"
row "  hit vs fresh-key spawn (target >= 2)" 1 "$d" "$fresh1"
d=$(tps spawn_hit.sql 64 -T "$secs")
r=$(tps spawn_hit.ref.sql 64 -T "$secs")
row "one-key storm (hits)" 64 "$d" "$r"
sleep 1
after=$(sql -Atc "select n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables where relname = 'tasks'")
echo "writes to the task table during the hit runs: $((after - before)) (must be 0)" >&2

# claim_complete DEPTH FINISHED CLIENTS LABEL
claim_complete() {
  local depth=$1 done_tasks=$2 c=$3 label=$4 per=$(( cycles / $3 ))
  reset_queue
  [ "$done_tasks" -gt 0 ] && prefill "$done_tasks" completed
  [ "$depth" -gt 0 ] && prefill "$depth" pending
  prefill $(( per * c )) pending; settle
  d=$(tps claim_complete.sql "$c" -t "$per")
  prefill $(( per * c )) pending; settle
  r=$(tps claim_complete.ref.sql "$c" -t "$per")
  row "$label" "$c" "$d" "$r"
}
for c in 1 4 16; do claim_complete 0 0 "$c" "claim + complete, shallow queue"; done
claim_complete 10000 0 1 "claim + complete, 10,000 waiting"
claim_complete 0 "$finished" 1 "claim + complete, $finished finished in table"

echo
printf '%-44s %7s %12s %12s %7s\n' "operation" "clients" "durable/s" "reference/s" "ratio"
printf '%s\n' "${rows[@]}"
echo "($(sql -Atc 'show server_version'), $(nproc) cores, ${secs}s runs, $cycles cycles; $(date -u +%Y-%m-%d))"
