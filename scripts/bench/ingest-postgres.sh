#!/usr/bin/env bash
# PostgreSQL ingest (docs/BENCHMARKS.md, "Ingest on PostgreSQL"): a throwaway PostgreSQL 15
# (default settings: fsync and synchronous_commit on) and the release server pinned to core 0,
# the bench on core 1; 64 senders with 32 messages in flight each for 10 s. Prints one JSON
# line per run, each on a fresh database, with PostgreSQL's CPU and the CPU per message on
# core 0 (server and PostgreSQL) added to the bench's figures.
#
#   scripts/bench/ingest-postgres.sh [runs]
#
# Needs `cargo build --release --bins` and PostgreSQL 15's binaries (run as root: PostgreSQL
# runs as the postgres user). Extra server arguments go in INGEST_SERVER_ARGS.
set -euo pipefail
# shellcheck source=scripts/bench/lib.sh
. "$(dirname "$0")/lib.sh"
runs=${1:-3}
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
chmod 755 "$work"
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    pg_stop "$work"
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT

pg_start "$work" 0
export CONFAB_JWT_SECRET=ingest-bench-secret-ingest-bench-secret

for n in $(seq "$runs"); do
    pg_createdb "ingest$n"
    # shellcheck disable=SC2086
    taskset -c 0 "$bin/confab" --listen 127.0.0.1:18100 \
        --database-url "postgres://postgres@127.0.0.1:15432/ingest$n" $LIMITS ${INGEST_SERVER_ARGS:-} \
        > "$work/server.log" 2>&1 &
    server_pid=$!
    wait_healthy http://127.0.0.1:18100
    pg_before=$(pg_cpu_ticks)
    result=$(taskset -c 1 "$bin/confab-bench" --url http://127.0.0.1:18100 --server-pid "$server_pid" \
        --json ingest --senders 64 --window 32 --seconds 10)
    pg_after=$(pg_cpu_ticks)
    # PostgreSQL's CPU beside the server's, and both per committed message: on a machine whose
    # speed moves from hour to hour, the CPU a message costs on the shared core is steadier
    # than the rate.
    echo "$result" | PG_TICKS=$((pg_after - pg_before)) TICKS=$(getconf CLK_TCK) python3 -c '
import json, os, sys
r = json.load(sys.stdin)
pg = int(os.environ["PG_TICKS"]) / int(os.environ["TICKS"])
server = r["server_cpu_percent"] / 100 * r["seconds"]
r["postgres_cpu_percent"] = round(100 * pg / r["seconds"])
r["core0_cpu_us_per_message"] = round(1e6 * (pg + server) / max(r["acked_messages"], 1), 2)
print(json.dumps(r, separators=(",", ":")))'
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
done
