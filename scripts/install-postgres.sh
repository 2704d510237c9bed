#!/usr/bin/env bash
# Make sure the PostgreSQL 15 server, its client and plpgsql_check are installed.
# Installs Debian's packages with apt-get when something is missing (needs root).
set -euo pipefail
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
need=()
[ -x "$PG_BIN/initdb" ] || need+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
[ -f /usr/share/postgresql/15/extension/plpgsql_check.control ] || need+=(postgresql-15-plpgsql-check)
command -v python3 >/dev/null 2>&1 || true
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need[*]}; install them (apt-get install ${need[*]}) or set DATABASE_URL" >&2
    exit 1
  fi
  echo "installing ${need[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
