#!/bin/sh
# redis-cost.sh - what one rate-limit decision costs Redis itself, per algorithm: the scripts of
# ratelimit/ run on a private redis-server with a fixed batch of checks per call, and Redis's own
# counters (INFO commandstats: evalsha's usec_per_call) divided by the checks in a call.
#
#   bench/peers/redis-cost.sh [SRC ...]
#
# Each SRC is a source tree whose ratelimit/*.lua are measured (default: this one), so that two
# versions can be compared in one session: `redis-cost.sh /tmp/old-tree .` measures each
# algorithm of the old tree, then of this one, ROUNDS times (default 3), alternating, on one
# Redis that is flushed between runs. The load is bench's: 10,000 random keys, q=10 per 1 s, cost
# 1; CALLS (default 2000) script calls of BATCH (default 50) checks each, sent pipelined through
# redis-cli --pipe, so that the client never waits and the figure is Redis's time alone. An
# algorithm a tree does not have is skipped. The end-to-end figures are compare-ratelimit.sh's.
#
# Two figures per run. evalsha's usec is wall-clock time: on a busy machine a Redis that loses
# its CPU in the middle of a script is charged for the wait. Redis's CPU time (INFO cpu,
# used_cpu_user + used_cpu_sys, over the run) is not, but includes reading and parsing the
# commands; both are divided by the checks.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${ROUNDS:-3}
calls=${CALLS:-2000}
batch=${BATCH:-50}
[ $# -gt 0 ] || set -- "$root"

dir=$(mktemp -d)
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly no \
    --daemonize no >"$dir/redis.log" 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
i=0
until redis-cli -p "$port" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "redis-cost: redis-server did not start" >&2; exit 1; }
    sleep 0.05
done

# The script of algorithm $2 in tree $1, as ratelimit.c builds it: rl-common.lua, the
# algorithm's file, and for a token bucket that runs GCRA's code (token-bucket.lua says so),
# gcra.lua after it.
script_of() {
    cat "$1/ratelimit/rl-common.lua"
    echo
    cat "$1/ratelimit/$2.lua"
    echo
    if [ "$2" = token-bucket ] && ! grep -q 'return rl_run' "$1/ratelimit/token-bucket.lua"; then
        cat "$1/ratelimit/gcra.lua"
    fi
}

# Writes CALLS EVALSHA commands of BATCH checks on random keys, in Redis's protocol, to $2.
commands() {
    python3 - "$1" "$calls" "$batch" >"$2" <<'EOF'
import random, sys
sha, calls, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(1)
out = []
def bulk(s):
    return "$%d\r\n%s\r\n" % (len(s.encode()), s)
for _ in range(calls):
    keys = ["rl:{k%d}:p" % random.randrange(10000) for _ in range(batch)]
    args = ["EVALSHA", sha, str(batch)] + keys + ["1", "10", "1"] + ["1"] * batch
    out.append("*%d\r\n" % len(args) + "".join(bulk(a) for a in args))
sys.stdout.write("".join(out))
EOF
}

# Redis's CPU time so far, in seconds.
cpu_seconds() {
    redis-cli -p "$port" info cpu | tr -d '\r' | awk -F: '
        $1 == "used_cpu_user" || $1 == "used_cpu_sys" { t += $2 } END { printf "%.6f", t }'
}

echo "redis-cost: $calls calls of $batch checks, 10,000 keys, q=10 w=1; load average" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-7s %-24s %-24s %-18s %s\n' round algorithm tree "evalsha us/check" "Redis CPU us/check"
r=1
while [ "$r" -le "$rounds" ]; do
    for alg in token-bucket gcra sliding-window-counter fixed-window sliding-window-log; do
        for src in "$@"; do
            [ -f "$src/ratelimit/$alg.lua" ] || continue
            script_of "$src" "$alg" >"$dir/script.lua"
            redis-cli -p "$port" flushall >/dev/null
            sha=$(redis-cli -p "$port" -x script load <"$dir/script.lua")
            commands "$sha" "$dir/commands"
            redis-cli -p "$port" config resetstat >/dev/null
            cpu0=$(cpu_seconds)
            redis-cli -p "$port" --pipe <"$dir/commands" >"$dir/pipe.out" 2>&1
            cpu1=$(cpu_seconds)
            line=$(redis-cli -p "$port" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:')
            errors=$(echo "$line" | sed -n 's/.*failed_calls=\([0-9]*\).*/\1/p')
            per=$(echo "$line" | sed -n 's/.*usec_per_call=\([0-9.]*\).*/\1/p')
            printf '%-7s %-24s %-24s %-18.2f %.2f%s\n' "$r" "$alg" "$src" \
                "$(echo "$per / $batch" | bc -l)" \
                "$(echo "($cpu1 - $cpu0) * 1000000 / ($calls * $batch)" | bc -l)" \
                "$([ "${errors:-0}" = 0 ] || echo " ($errors failed)")"
        done
    done
    r=$((r + 1))
done
