#!/usr/bin/env bash
# PostgreSQL ingest (docs/BENCHMARKS.md, "Ingest on PostgreSQL"): a throwaway PostgreSQL 15
# (default settings: fsync and synchronous_commit on) and the release server pinned to core 0,
# the bench on core 1; 64 senders with 32 messages in flight each for 10 s. Prints one JSON
# line per run, each on a fresh database.
#
#   scripts/bench/ingest-postgres.sh [runs]
#
# Needs `cargo build --release --bins` and PostgreSQL 15's binaries (run as root: PostgreSQL
# runs as the postgres user). Extra server arguments go in INGEST_SERVER_ARGS.
set -euo pipefail
runs=${1:-3}
bin=${CARGO_TARGET_DIR:-target}/release
pgbin=/usr/lib/postgresql/15/bin
work=$(mktemp -d)
chmod 755 "$work"
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -d "$work/pg" ] && su postgres -c "$pgbin/pg_ctl -D $work/pg -m immediate stop" >/dev/null 2>&1 || true
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/pg" && chown postgres "$work/pg"
su postgres -c "$pgbin/initdb -D $work/pg --auth=trust -U postgres" >/dev/null
# The postmaster on core 0: its backends inherit the pinning.
su postgres -c "taskset -c 0 $pgbin/pg_ctl -D $work/pg -o '-p 15432 -k $work/pg' -l $work/pg/log start -w" >/dev/null

LIMITS="--http-rate 100000 --http-burst 100000 --auth-rate-per-minute 100000 --auth-burst 100000 \
  --max-connections-per-user 100000 --messages-per-second 100000 --message-burst 100000 \
  --ws-frames-per-second 100000 --ws-frames-burst 100000"
export CONFAB_JWT_SECRET=ingest-bench-secret-ingest-bench-secret

for n in $(seq "$runs"); do
    su postgres -c "$pgbin/createdb -h 127.0.0.1 -p 15432 -U postgres ingest$n"
    # shellcheck disable=SC2086
    taskset -c 0 "$bin/confab" --listen 127.0.0.1:18100 \
        --database-url "postgres://postgres@127.0.0.1:15432/ingest$n" $LIMITS ${INGEST_SERVER_ARGS:-} \
        > "$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 200); do
        curl -sf http://127.0.0.1:18100/healthz >/dev/null && break
        sleep 0.1
    done
    taskset -c 1 "$bin/confab-bench" --url http://127.0.0.1:18100 --server-pid "$server_pid" --json \
        ingest --senders 64 --window 32 --seconds 10 | tr -d '\n '
    echo
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
done
