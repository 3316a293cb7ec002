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
# INSTANCES=N runs N load processes at once on each side, each with 50/N checks in flight (50 in
# all), as N gateway instances sharing one Redis would; each prints its own figures, then their
# sum. The processes start together and measure the same DURATION, give or take their start-up.
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
instances=${INSTANCES:-1}
case "$instances" in
'' | *[!0-9]*) instances=0 ;;
esac
if [ "$instances" -lt 1 ] || [ "$instances" -gt 50 ]; then
    echo "compare-ratelimit: INSTANCES must be a whole number from 1 to 50" >&2
    exit 2
fi
per=$((50 / instances))
scenarios="ratelimit.token-bucket.closed ratelimit.gcra.closed ratelimit.sliding-window-log.closed
ratelimit.sliding-window-counter.closed ratelimit.gcra.unbatched"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

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
    trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$dir" "$work"' \
        EXIT INT TERM
    REDIS_URL="redis://127.0.0.1:$port"
    i=0
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 100 ] || { echo "compare-ratelimit: redis-server did not start" >&2; exit 1; }
        sleep 0.05
    done
fi

# Runs "FUNCTION I ARGS..." for I = 0 .. INSTANCES-1 at once, each with its output in
# $work/FUNCTION.I, and waits for all of them.
in_parallel() {
    fn=$1
    shift
    i=0
    pids=""
    while [ "$i" -lt "$instances" ]; do
        "$fn" "$i" "$@" >"$work/$fn.$i" 2>&1 &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do wait "$p"; done
}

# One load process of each side; the first argument is its number, the rest go to the peer.
peer_one() {
    shift
    $pin node "$here/ratelimit-flexible.js" --redis "$REDIS_URL" --duration "$duration" \
        --in-flight "$per" "$@"
}
ours_one() {
    # shellcheck disable=SC2086
    $pin "$bin/bench" run $scenarios --duration "$duration" --redis "$REDIS_URL" \
        --in-flight "$per" --json "$work/ours.$1.json"
}

# The peer, INSTANCES processes at once; arguments go to ratelimit-flexible.js.
peer() {
    if [ "$instances" = 1 ]; then
        peer_one 0 "$@"
        return
    fi
    in_parallel peer_one "$@"
    grep -hv '^{' "$work"/peer_one.*
    node -e '
        const fs = require("fs"), dir = process.argv[1];
        const rows = fs.readdirSync(dir).filter((f) => f.startsWith("peer_one."))
            .map((f) => JSON.parse(fs.readFileSync(dir + "/" + f, "utf8").split("\n")
                .find((l) => l.startsWith("{"))));
        const sum = rows.reduce((a, r) => a + r.decisions_per_s, 0);
        console.log(`sum of ${rows.length} processes: ${Math.round(sum)} decisions/s`);
    ' "$work"
    rm -f "$work"/peer_one.*
}

# Ours: bench's closed-loop scenarios, INSTANCES processes at once.
ours() {
    if [ "$instances" = 1 ]; then
        ours_one 0
        return
    fi
    in_parallel ours_one
    grep -h "closed " "$work"/ours_one.*
    node -e '
        const fs = require("fs"), dir = process.argv[1], sum = {};
        for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".json")))
            for (const s of JSON.parse(fs.readFileSync(dir + "/" + f, "utf8")).scenarios)
                sum[s.name] = (sum[s.name] || 0) + s.achieved_rate;
        for (const [name, rate] of Object.entries(sum))
            console.log(`sum of ${process.argv[2]} processes: ${name} ${Math.round(rate)}/s`);
    ' "$work" "$instances"
}

# The peer runs before and after ours, so that a change in the machine's load during the run
# shows up as a difference between its two results rather than as a bias.
echo "== rate-limiter-flexible (RateLimiterRedis over ioredis) on $REDIS_URL, $instances process(es)"
peer
echo
echo "== ratelimit/ (bench, closed loop, 50 in flight in all, 10,000 keys, q=10 w=1), same Redis"
ours
echo
echo "== rate-limiter-flexible again, then with inMemoryBlockOnConsumed (its deny cache)"
peer
peer --block-in-memory
