#!/bin/sh
# compare-ratelimit.sh - ratelimit/ and Node's rate-limiter-flexible side by side, one run, one
# Redis: the same load (50 checks in flight, 10,000 random keys, q=10 per 1 s) from bench's
# closed-loop scenarios and from ratelimit-flexible.js, one after the other.
#
#   bench/peers/compare-ratelimit.sh            a private redis-server, stopped at the end
#   REDIS_URL=redis://host:port bench/peers/compare-ratelimit.sh
#
# BIN names the directory holding `bench` (default build/bin); DURATION the measured seconds.
# PIN=1 runs everything (the private redis-server, node, bench) on CPU 0 with taskset: a
# diagnostic that takes the cost of waking a process on the other CPU out of every round trip
# (ratelimit/README.md, "Numbers"); not the default, and both sides get the same treatment.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN:-$root/build/bin}
duration=${DURATION:-4}
pin=""
if [ "${PIN:-0}" = 1 ]; then
    if [ -n "${REDIS_URL:-}" ]; then
        echo "compare-ratelimit: PIN=1 needs the private redis-server (unset REDIS_URL)" >&2
        exit 2
    fi
    pin="taskset -c 0"
fi

if [ ! -x "$bin/bench" ]; then
    echo "compare-ratelimit: $bin/bench not found (build first, or set BIN)" >&2
    exit 1
fi
if [ ! -d "$here/node_modules/rate-limiter-flexible" ]; then
    (cd "$here" && npm install --no-audit --no-fund >&2)
fi

if [ -z "${REDIS_URL:-}" ]; then
    dir=$(mktemp -d)
    port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
    $pin redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly no \
        --daemonize no >"$dir/redis.log" 2>&1 &
    redis_pid=$!
    trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
    REDIS_URL="redis://127.0.0.1:$port"
    i=0
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 100 ] || { echo "compare-ratelimit: redis-server did not start" >&2; exit 1; }
        sleep 0.05
    done
fi

# The peer runs before and after ours, so that a change in the machine's load during the run
# shows up as a difference between its two results rather than as a bias.
echo "== rate-limiter-flexible (RateLimiterRedis over ioredis) on $REDIS_URL"
$pin node "$here/ratelimit-flexible.js" --redis "$REDIS_URL" --duration "$duration"
echo
echo "== ratelimit/ (bench, closed loop, 50 in flight, 10,000 keys, q=10 w=1), same Redis"
$pin "$bin/bench" run ratelimit.token-bucket.closed ratelimit.gcra.closed \
    ratelimit.sliding-window-log.closed ratelimit.sliding-window-counter.closed \
    ratelimit.gcra.unbatched --duration "$duration" --redis "$REDIS_URL"
echo
echo "== rate-limiter-flexible again, then with inMemoryBlockOnConsumed (its deny cache)"
$pin node "$here/ratelimit-flexible.js" --redis "$REDIS_URL" --duration "$duration"
$pin node "$here/ratelimit-flexible.js" --redis "$REDIS_URL" --duration "$duration" --block-in-memory
