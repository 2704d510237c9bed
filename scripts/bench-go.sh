#!/usr/bin/env bash
# make bench, second half: durable's Go worker and River (its own module,
# bench/river) working the same number of no-op jobs on the same PostgreSQL in
# the same run, BENCH_JOBS (default 50000) jobs each; then the Go benchmarks
# of the client's calls (bench_test.go), BENCH_GO_TIME (default 2s) each, and
# the spawn-to-start latency through the worker (bench/latency).
#
#   scripts/pg.sh scripts/bench-go.sh        (make bench does this)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?run under scripts/pg.sh or set DATABASE_URL}"
jobs=${BENCH_JOBS:-50000}
bin=${DURABLE_PG_BIN:-${PG_BIN:-/usr/lib/postgresql/15/bin}}
psql=$(command -v psql || echo "$bin/psql")

db=durable_bench_go
url=$(printf '%s' "$DATABASE_URL" | sed -E "s#/[^/?]+(\?|$)#/$db\1#")
"$psql" -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "drop database if exists $db with (force)" -c "create database $db"

echo
echo "Go workers, $jobs no-op jobs each, one process, same server:"
go run ./bench/worker -database-url "$url" -tasks "$jobs"
(cd bench/river && go run . -database-url "$url" -jobs "$jobs")
"$psql" -X -q "$DATABASE_URL" -c "drop database if exists $db with (force)"

echo
echo "Spawn-to-start latency through the Go worker, idle queue, 500 spawns one at a time:"
"$psql" -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "create database $db"
go run ./bench/latency -database-url "$url" -spawns "${BENCH_LATENCY_SPAWNS:-500}"
"$psql" -X -q "$DATABASE_URL" -c "drop database if exists $db with (force)"

echo
echo "Go benchmarks of the client's calls (go test -bench, tasks/s per call):"
go test -run '^$' -bench . -benchtime "${BENCH_GO_TIME:-2s}" . | grep -E '^Benchmark|^ok|FAIL'
