#!/usr/bin/env bash
# The reconnect storm (docs/BENCHMARKS.md, "A reconnect storm"): three release servers (A, B,
# C) sharing a throwaway PostgreSQL and Redis; the bench opens SOCKETS sockets on A, each
# subscribed to 20 shared rooms, sends messages through B, kills A and measures how fast every
# socket resumes on B and C and catches up. Prints one JSON line per run.
#
#   scripts/bench/storm.sh [sockets] [runs]
#
# Needs `cargo build --release --bins`, redis-server and PostgreSQL 15's binaries (run as root:
# PostgreSQL runs as the postgres user). Nothing is pinned: the servers, the databases and the
# bench share the machine's cores, as pods on one node would. Everything lives in a temporary
# directory removed at the end.
set -euo pipefail
# shellcheck source=scripts/bench/lib.sh
. "$(dirname "$0")/lib.sh"
sockets=${1:-15000}
runs=${2:-1}
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    redis-cli -p 16379 shutdown nosave >/dev/null 2>&1 || true
    pg_stop "$work"
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 20000

PG_OPTS="-c max_connections=200" pg_start "$work"
redis-server --port 16379 --save '' --appendonly no --daemonize yes --logfile "$work/redis.log"

export CONFAB_JWT_SECRET=storm-bench-secret-storm-bench-secret

server() { # server NAME PORT DB -> pid in $server_pid
    # shellcheck disable=SC2086
    "$bin/confab" --listen "127.0.0.1:$2" --database-url "postgres://postgres@127.0.0.1:15432/$3" \
        --redis-url redis://127.0.0.1:16379 --metrics-listen "127.0.0.1:$(($2 + 1000))" $LIMITS ${STORM_SERVER_ARGS:-} \
        > "$work/server-$1.log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    wait_healthy "http://127.0.0.1:$2" && return
    echo "server $1 did not start:" >&2
    cat "$work/server-$1.log" >&2
    exit 1
}

for n in $(seq "$runs"); do
    pg_createdb "storm$n"
    redis-cli -p 16379 flushall >/dev/null
    server a 18101 "storm$n"; a=$server_pid
    disown "$a" # the bench kills it; no "Killed" line from the shell
    server b 18102 "storm$n"; b=$server_pid
    server c 18103 "storm$n"; c=$server_pid
    echo -n "{\"run\":$n,\"result\":"
    "$bin/confab-bench" --url http://127.0.0.1:18101 --bind 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --json \
        storm --sockets "$sockets" --victim-pid "$a" \
        --resume-url http://127.0.0.1:18102,http://127.0.0.1:18103 --resume-pid "$b,$c" \
        --database-url "postgres://postgres@127.0.0.1:15432/storm$n" --redis-url redis://127.0.0.1:16379 \
        | one_line
    echo "}"
    if [ -n "${STORM_KEEP:-}" ]; then
        cp "$work"/server-*.log "$STORM_KEEP"/
        curl -s http://127.0.0.1:19102/metrics > "$STORM_KEEP/metrics-b.txt"
        redis-cli -p 16379 info commandstats > "$STORM_KEEP/redis-commandstats.txt"
    fi
    kill "$b" "$c"
    wait "$b" "$c" 2>/dev/null || true
done
