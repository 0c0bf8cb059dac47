#!/usr/bin/env bash
# Ingest with and without one webhook subscribed to `message.created` (docs/BENCHMARKS.md,
# "Webhooks"). Starts a receiver (nginx answering 204), the release server on core 0 and the
# bench on core 1, then prints one JSON line per run.
#
#   scripts/bench/webhooks.sh sqlite|postgres [runs]
#
# Needs `cargo build --release --bins`, nginx, and for postgres PostgreSQL 15's binaries
# (run as root: PostgreSQL runs as the postgres user). Everything lives in a temporary
# directory removed at the end.
set -euo pipefail
# shellcheck source=scripts/bench/lib.sh
. "$(dirname "$0")/lib.sh"
store=${1:?sqlite or postgres}
runs=${2:-2}
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    pg_stop "$work"
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 20000

cat > "$work/nginx.conf" <<EOF
daemon on;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
worker_processes 1;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx-body;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:18300;
        location /hook { return 204; }
    }
}
EOF
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work"

if [ "$store" = postgres ]; then
    pg_start "$work" 0
fi

run() { # run N with|without
    local db=(--data-dir "$work/data-$1")
    if [ "$store" = postgres ]; then
        pg_createdb "b$1"
        db=(--database-url "postgres://postgres@127.0.0.1:15432/b$1")
    fi
    # shellcheck disable=SC2086
    CONFAB_WEBHOOK_ALLOW_PRIVATE=true taskset -c 0 "$bin/confab" --listen 127.0.0.1:18100 \
        "${db[@]}" --admins bench-root --metrics-listen 127.0.0.1:19090 $LIMITS > "$work/server-$1.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_healthy http://127.0.0.1:18100
    local hook=()
    [ "$2" = with ] && hook=(--webhook http://127.0.0.1:18300/hook --admin bench-root --metrics-url http://127.0.0.1:19090)
    echo -n "{\"store\":\"$store\",\"webhook\":\"$2\",\"result\":"
    taskset -c 1 "$bin/confab-bench" --url http://127.0.0.1:18100 --server-pid "$pid" --json \
        ingest --senders 64 --window 32 --seconds 10 "${hook[@]}"
    echo "}"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

n=0
for _ in $(seq "$runs"); do
    for mode in without with; do
        n=$((n + 1))
        run "$n" "$mode"
    done
done
