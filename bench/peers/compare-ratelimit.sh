#!/bin/sh
# compare-ratelimit.sh - ratelimit/ and Node's rate-limiter-flexible side by side, one run, one
# Redis: the same load (50 checks in flight, 10,000 random keys, q=10 per 1 s) from bench's
# closed-loop scenarios and from ratelimit-flexible.js.
#
#   bench/peers/compare-ratelimit.sh            a private redis-server, stopped at the end
#   REDIS_URL=redis://host:port bench/peers/compare-ratelimit.sh
#
# First the headline: ROUNDS (default 5) runs of ours alternating with runs of the peer, the
# peer first and last, so that every run of ours sits between two of the peer's. The speed of a
# shared machine drifts within minutes; each run of ours is compared with the mean of the two
# around it, and the summary gives every round's ratio and p99s, and their median. Then the rest:
# each of our algorithms once, and the peer with its deny cache.
#
# ALGORITHMS names ours (default "gcra"; any of token-bucket, gcra, sliding-window-counter,
# fixed-window, sliding-window-log, space-separated). With several, each round runs every one in
# turn with a run of the peer after each: peer, ours (first), peer, ours (second), peer, ... so
# every run of every algorithm still sits between two of the peer's, and each gets its own table.
# For each run of ours the summary also gives Redis's own time per decision: the private
# redis-server's counters are reset before the run (CONFIG RESETSTAT) and read after it (INFO
# commandstats), and evalsha's total microseconds are divided by the checks the scripts decided
# (the count bench prints; the deny cache's answers never reach Redis).
#
# BIN names the directory holding `bench` (default build/bin); DURATION the measured seconds of
# each run (default 4); OTHERS=0 skips the runs after the headline.
# PIN=1 runs everything (the private redis-server, node, bench) on CPU 0 with taskset: a
# diagnostic that takes the cost of waking a process on the other CPU out of every round trip
# (ratelimit/README.md, "Numbers"); not the default, and both sides get the same treatment.
# INSTANCES=N runs N load processes at once on each side, each with 50/N checks in flight (50 in
# all), as N gateway instances sharing one Redis would; a run's figures are their sum (rates) and
# their worst (p99). The processes start together and measure the same DURATION, give or take
# their start-up.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN:-$root/build/bin}
duration=${DURATION:-4}
# Exits with a message unless $2, the value of the setting named $1, is a whole number from 1
# to 50.
require_count() {
    case "$2" in
    '' | *[!0-9]*) ;;
    *) [ "$2" -lt 1 ] || [ "$2" -gt 50 ] || return 0 ;;
    esac
    echo "compare-ratelimit: $1 must be a whole number from 1 to 50" >&2
    exit 2
}
rounds=${ROUNDS:-5}
require_count ROUNDS "$rounds"
algorithms=${ALGORITHMS:-gcra}
for a in $algorithms; do
    case "$a" in
    token-bucket | gcra | sliding-window-counter | fixed-window | sliding-window-log) ;;
    *)
        echo "compare-ratelimit: unknown algorithm '$a' in ALGORITHMS" >&2
        exit 2
        ;;
    esac
done
pin=""
if [ "${PIN:-0}" = 1 ]; then
    if [ -n "${REDIS_URL:-}" ]; then
        echo "compare-ratelimit: PIN=1 needs the private redis-server (unset REDIS_URL)" >&2
        exit 2
    fi
    pin="taskset -c 0"
fi
instances=${INSTANCES:-1}
require_count INSTANCES "$instances"
if [ $((50 % instances)) != 0 ]; then
    echo "compare-ratelimit: INSTANCES must divide the 50 in flight (1, 2, 5, 10, 25 or 50)" >&2
    exit 2
fi
per=$((50 / instances))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

if [ ! -x "$bin/bench" ]; then
    echo "compare-ratelimit: $bin/bench not found (build first, or set BIN)" >&2
    exit 1
fi
if [ ! -d "$here/node_modules/rate-limiter-flexible" ]; then
    (cd "$here" && npm ci --no-audit --no-fund >&2)
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

# One load process of each side, writing to $work/NAME.I.out (the peer: its line and a JSON line)
# and $work/NAME.I.json (bench). The first argument is the process number, the second the run's
# NAME; the rest go to the peer, or are bench's scenarios.
peer_one() {
    i=$1 name=$2
    shift 2
    $pin node "$here/ratelimit-flexible.js" --redis "$REDIS_URL" --duration "$duration" \
        --in-flight "$per" "$@" >"$work/$name.$i.out"
}
ours_one() {
    i=$1 name=$2
    shift 2
    $pin "$bin/bench" run "$@" --duration "$duration" --redis "$REDIS_URL" --in-flight "$per" \
        --json "$work/$name.$i.json" >"$work/$name.$i.out" 2>&1
}

# Runs "FUNCTION I NAME ARGS..." for I = 0 .. INSTANCES-1 at once and waits for all of them.
in_parallel() {
    fn=$1
    shift
    i=0
    pids=""
    while [ "$i" -lt "$instances" ]; do
        "$fn" "$i" "$@" &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do wait "$p"; done
}

# Prints one run: the peer's own lines, or bench's table rows.
show() {
    name=$1
    case "$name" in
    peer*) grep -hv '^{' "$work/$name".*.out ;;
    *) grep -h "^ratelimit\." "$work/$name".*.out ;;
    esac
    [ "$instances" -gt 1 ] || return 0
    node -e '
        const fs = require("fs"), [dir, name] = process.argv.slice(1), sum = {};
        for (const f of fs.readdirSync(dir).filter((f) => f.startsWith(name + ".")))
            if (f.endsWith(".json"))
                for (const s of JSON.parse(fs.readFileSync(dir + "/" + f, "utf8")).scenarios)
                    sum[s.name] = (sum[s.name] || 0) + s.achieved_rate;
            else
                for (const l of fs.readFileSync(dir + "/" + f, "utf8").split("\n"))
                    if (l.startsWith("{")) sum.peer = (sum.peer || 0) + JSON.parse(l).decisions_per_s;
        for (const [what, rate] of Object.entries(sum))
            console.log(`sum of the processes: ${what} ${Math.round(rate)}/s`);
    ' "$work" "$name"
}

# The summary, from the runs' files: every run's rate (summed over the processes) and p99 (the
# worst process), then, for the headline, each round's ratio to the mean of the peer's runs
# around it.
summary() {
    node -e '
        const fs = require("fs"), dir = process.argv[1], rounds = Number(process.argv[2]);
        const algs = process.argv[3].split(" ").filter((a) => a);
        const files = (name) => fs.readdirSync(dir).filter((f) => f.startsWith(name + "."));
        function peer(name) {
            const rows = files(name).filter((f) => f.endsWith(".out")).map((f) => JSON.parse(
                fs.readFileSync(dir + "/" + f, "utf8").split("\n").find((l) => l.startsWith("{"))));
            return {rate: rows.reduce((a, r) => a + r.decisions_per_s, 0),
                    p99: Math.max(...rows.map((r) => r.p99_us))};
        }
        // The checks the scripts decided, from the line bench prints at the end of a scenario.
        function decided(name) {
            let n = 0;
            for (const f of files(name).filter((f) => f.endsWith(".out")))
                for (const m of fs.readFileSync(dir + "/" + f, "utf8").matchAll(
                         /script calls for (\d+) checks/g))
                    n += Number(m[1]);
            return n;
        }
        function ours(name, scenario) {
            const rows = files(name).filter((f) => f.endsWith(".json")).map((f) => JSON.parse(
                fs.readFileSync(dir + "/" + f, "utf8")).scenarios.find((s) => s.name === scenario));
            let usec = NaN, calls = 0;
            try {
                const line = fs.readFileSync(dir + "/" + name + ".stats", "utf8");
                usec = Number(/usec=(\d+)/.exec(line)[1]);
                calls = Number(/calls=(\d+)/.exec(line)[1]);
            } catch (e) {}
            const checks = decided(name);
            return {rate: rows.reduce((a, r) => a + r.achieved_rate, 0),
                    p99: Math.max(...rows.map((r) => r.p99_us)),
                    us: checks ? usec / checks : NaN, per_call: calls ? checks / calls : NaN};
        }
        const ms = (us) => (us / 1000).toFixed(2) + " ms";
        const k = (r) => Math.round(r).toLocaleString("en-US");
        algs.forEach((alg, ai) => {
            const ratios = [];
            let both = 0;
            console.log(`== ${alg}`);
            console.log("round  peer before        ours               peer after         ratio  " +
                "lower p99  Redis us/decision (checks/call)");
            for (let r = 1; r <= rounds; r++) {
                const seq = (r - 1) * algs.length + ai;
                const a = peer("peer" + seq), o = ours("ours" + r + "-" + alg,
                                                      "ratelimit." + alg + ".closed"),
                      b = peer("peer" + (seq + 1));
                const ratio = o.rate / ((a.rate + b.rate) / 2),
                      lower = o.p99 < Math.min(a.p99, b.p99);
                ratios.push(ratio);
                both += ratio >= 2 && lower;
                console.log(`${String(r).padStart(5)}  ${(k(a.rate) + " " + ms(a.p99)).padEnd(17)}  ` +
                    `${(k(o.rate) + " " + ms(o.p99)).padEnd(17)}  ` +
                    `${(k(b.rate) + " " + ms(b.p99)).padEnd(17)}  ${ratio.toFixed(2).padStart(4)}x  ` +
                    `${(lower ? "yes" : "no").padEnd(9)}  ${o.us.toFixed(2)} (${o.per_call.toFixed(1)})`);
            }
            ratios.sort((x, y) => x - y);
            const mid = ratios.length >> 1;
            const median = ratios.length % 2 ? ratios[mid] : (ratios[mid - 1] + ratios[mid]) / 2;
            console.log(`median ratio ${median.toFixed(2)}x (range ${ratios[0].toFixed(2)}x-` +
                `${ratios[ratios.length - 1].toFixed(2)}x); ${both} of ${rounds} rounds at 2x or ` +
                `more with a lower p99 than both runs of the peer around them`);
            console.log();
        });
    ' "$work" "$rounds" "$algorithms"
}

# Redis's counters, reset before a run of ours and read after it into $work/NAME.stats: the
# evalsha line of INFO commandstats ("cmdstat_evalsha:calls=...,usec=...,...").
redis_cli() {
    redis-cli -u "$REDIS_URL" "$@"
}
run() {
    kind=$1 name=$2
    shift 2
    [ "$kind" != ours ] || redis_cli config resetstat >/dev/null
    if [ "$instances" = 1 ]; then
        "${kind}_one" 0 "$name" "$@"
    else
        in_parallel "${kind}_one" "$name" "$@"
    fi
    [ "$kind" != ours ] || redis_cli info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:' \
        >"$work/$name.stats" || true
    show "$name"
}

echo "== rate-limiter-flexible (RateLimiterRedis over ioredis) and ratelimit/ ($algorithms),"
echo "   alternating, on $REDIS_URL: closed loop, 50 in flight in all ($instances process(es) a"
echo "   side), 10,000 keys, q=10 w=1, $duration s a run; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
run peer peer0
r=1
seq=0
while [ "$r" -le "$rounds" ]; do
    for a in $algorithms; do
        run ours "ours$r-$a" "ratelimit.$a.closed"
        seq=$((seq + 1))
        run peer "peer$seq"
    done
    r=$((r + 1))
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
summary
echo
[ "${OTHERS:-1}" = 1 ] || exit 0
echo "== the other algorithms of ratelimit/, and GCRA unbatched (one call per check), same Redis"
run ours others ratelimit.token-bucket.closed ratelimit.sliding-window-log.closed \
    ratelimit.sliding-window-counter.closed ratelimit.gcra.unbatched
echo
echo "== rate-limiter-flexible with inMemoryBlockOnConsumed (its deny cache)"
run peer peer_block --block-in-memory
