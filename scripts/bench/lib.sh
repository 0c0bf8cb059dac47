# Shared by the benchmark scripts beside it; sourced, not run.

# The server arguments that lift every rate limit, so the load is the only limit measured.
# shellcheck disable=SC2034
LIMITS="--http-rate 100000 --http-burst 100000 --auth-rate-per-minute 100000 --auth-burst 100000 \
  --max-connections-per-user 100000 --messages-per-second 100000 --message-burst 100000 \
  --ws-frames-per-second 100000 --ws-frames-burst 100000"

pgbin=/usr/lib/postgresql/15/bin

# pg_start WORK [CORE]: a throwaway PostgreSQL 15 in WORK/pg on port 15432 with default settings
# (fsync and synchronous_commit on), the postmaster (and so every backend) pinned to CORE if
# given; PG_OPTS adds server options. Runs as the postgres user, so the script runs as root.
pg_start() {
    local pin=""
    [ -n "${2:-}" ] && pin="taskset -c $2 "
    mkdir "$1/pg" && chown postgres "$1/pg"
    su postgres -c "$pgbin/initdb -D $1/pg --auth=trust -U postgres" >/dev/null
    su postgres -c "$pin$pgbin/pg_ctl -D $1/pg -o '-p 15432 -k $1/pg ${PG_OPTS:-}' -l $1/pg/log start -w" >/dev/null
}

# pg_stop WORK: stops the PostgreSQL pg_start started there, if any.
pg_stop() {
    [ -d "$1/pg" ] && su postgres -c "$pgbin/pg_ctl -D $1/pg -m immediate stop" >/dev/null 2>&1 || true
}

# pg_cpu_ticks: the CPU time (clock ticks: user + system) of every process of the postgres
# user now alive: the postmaster, its background processes and the backends.
pg_cpu_ticks() {
    local total=0 pid f
    for pid in $(ps -u postgres -o pid=); do
        # Fields 14 and 15 of /proc/PID/stat, counted after the command's closing parenthesis.
        f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        # shellcheck disable=SC2086 # the fields, split on purpose
        set -- $f
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# pg_createdb NAME: a new database; its URL is postgres://postgres@127.0.0.1:15432/NAME.
pg_createdb() {
    su postgres -c "$pgbin/createdb -h 127.0.0.1 -p 15432 -U postgres $1"
}

# wait_healthy URL: waits up to 20 s for a server's /healthz; fails if it never answers.
wait_healthy() {
    for _ in $(seq 200); do
        curl -sf "$1/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1/healthz" >&2
    return 1
}

# one_line: the bench's JSON (from stdin) on one line, without a trailing newline. It is
# re-serialised rather than stripped of spaces, so strings inside it (a refusal's reason)
# keep theirs.
one_line() {
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")), end="")'
}
