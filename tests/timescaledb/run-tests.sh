#!/usr/bin/env bash
# Runs the PostgreSQL store's tests against a real TimescaleDB: PGlite with
# the TimescaleDB extension (server.mjs), then checks that `pentrace status`
# reports TimescaleDB active there. CI runs this before the main test step.
#
# Never skips as a whole: if the packages cannot be installed or the server
# does not come up, this fails. Tests the server cannot run (COPY, several
# connections at once) skip themselves by name and say why.
#
# Needs Node.js >= 20 with npm (the npm registry, for `npm ci`), cargo and
# cargo-nextest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
startup_timeout_s=${PENTRACE_TIMESCALEDB_STARTUP_TIMEOUT_S:-60}

say() { printf '[timescaledb] %s\n' "$*"; }
die() { printf '[timescaledb] FAILED: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null || die "node is not installed (Node.js >= 20 is needed)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old (>= 20 is needed)"

say "npm ci ($(node --version), npm $(npm --version))"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || die "npm ci failed in tests/timescaledb"

log=$(mktemp -t pentrace-timescaledb.XXXXXX.log)
server_pid=
stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}
trap stop_server EXIT

# Port 0: the server takes a free port and says which in its ready line, so
# nothing can take the port between choosing and binding it.
node "$here/server.mjs" 0 >"$log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 1 "$startup_timeout_s"); do
    port=$(sed -n 's/^ready on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 1
done
if [ -z "$port" ]; then
    cat "$log" >&2
    die "the TimescaleDB test server did not come up within ${startup_timeout_s}s"
fi
say "$(head -1 "$log")"
url="postgres://postgres@127.0.0.1:$port/postgres"

# The whole workspace is built, as the main test step builds it, so that
# step reuses these artifacts; only the store conformance suite's PostgreSQL
# instances run (`<area>::postgres::<test>`; the SQLite ones need no
# server and run in the main test step). One at a time
# (--no-capture implies it): the server has one connection. --no-capture
# also shows the skip lines; libtest's per-test chatter is left out of the
# display (the log keeps it), failures and panics are not.
say "store tests on TimescaleDB"
set +e
PENTRACE_TEST_TIMESCALEDB_URL=$url cargo nextest run --workspace --locked --profile ci \
    --no-capture -E 'package(pentrace-store) & binary(store) & test(/::postgres::/)' 2>&1 \
    | tee "$log.tests" \
    | grep --line-buffered -vE '^(running 1 test|test result: ok\..*|test .* \.\.\. ok|\s+START .*|)$'
tests_rc=${PIPESTATUS[0]}
set -e
if [ "$tests_rc" != 0 ]; then
    say "server log:"
    cat "$log" >&2
    die "store tests failed on TimescaleDB (exit $tests_rc)"
fi
kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; die "the server died during the tests"; }

# `pentrace status` on the server's own schema, migrated by `pentrace
# migrate` (the tests used schemas of their own and dropped them).
pentrace="${CARGO_TARGET_DIR:-$root/target}/debug/pentrace"
"$pentrace" migrate --database-url "$url" >/dev/null || die "pentrace migrate failed on TimescaleDB"
status=$("$pentrace" status --database-url "$url") || die "pentrace status failed on TimescaleDB"
say "pentrace status:"
printf '%s\n' "$status" | sed 's/^/    /'
expect() {
    printf '%s\n' "$status" | grep -qE "$1" || die "pentrace status does not report: $1"
}
expect '^timescaledb: active '
expect '^  hypertables: .*stroke_samples'
expect '^  compression policy: yes \(.*stroke_samples'
expect '^  continuous aggregates: .*usage_hourly'
expect '^  retention policies: none$'
expect '^migrations: all applied$'

stop_server
summary=$(grep -E '^ +Summary ' "$log.tests" | tail -1 | sed 's/^ *Summary *\[[^]]*\] *//')
skipped=$(grep -c '^SKIPPED on the TimescaleDB test server' "$log.tests" || true)
rm -f "$log" "$log.tests"
say "OK: $summary ($skipped of them skipped on this server, named above);" \
    "pentrace status reports TimescaleDB active"
