#!/usr/bin/env bash
# Run a command against PostgreSQL.
#
#   scripts/pg.sh CMD [ARGS...]
#
# When DATABASE_URL is set, CMD runs against it unchanged. Otherwise a throwaway
# cluster is created in a temporary directory (as the postgres OS user when run as
# root, since initdb refuses root), started on a free local port, exported as
# DATABASE_URL for CMD, and removed when CMD exits. PostgreSQL 15 and plpgsql_check
# are installed with apt-get when missing (PG_BIN chooses another server build).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if [ -n "${DATABASE_URL:-}" ]; then
  exec "$@"
fi

"$here/install-postgres.sh"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

dir=$(mktemp -d /tmp/durable-pg.XXXXXX)
chmod 755 "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi

port=${PGPORT_THROWAWAY:-}
if [ -z "$port" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
fi

cleanup() {
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

"${as_pg[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log"; exit 1; }
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB -c fsync=${PG_FSYNC:-off} -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null || { cat "$dir/server.log"; exit 1; }

export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
export DURABLE_PG_DATA="$dir/data" DURABLE_PG_BIN="$PG_BIN" DURABLE_PG_PORT="$port"
echo "throwaway PostgreSQL at $DATABASE_URL" >&2
set +e
"$@"
status=$?
exit $status
