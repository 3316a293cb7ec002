#!/bin/sh
# The figures behind ratelimit/README.md's "Capacity math", measured on this machine:
#
#   1. Redis time per decision, per algorithm: `bench run ratelimit.<alg>.closed` against a
#      private redis-server, then INFO commandstats (EVALSHA usec, inside the script calls) and
#      INFO cpu (used_cpu_user + used_cpu_sys: all of Redis's CPU, network I/O included), each
#      divided by the checks the limiter sent to Redis (the bench's own count, printed at exit).
#   2. Memory per key, per algorithm: MEMORY USAGE of one key after one check, and the
#      INFO memory used_memory delta over 100,000 keys written by the algorithm's own script.
#
# Usage: bench/probes/ratelimit_capacity.sh [DURATION_S]   (from the repository root, after a
# build; default 3 s per algorithm). Starts its own redis-server on a free loopback port and
# stops it, by its PID, at exit. Prints the load average before and after.
set -eu

DURATION=${1:-3}
BIN=build/bin
ALGS="token-bucket gcra sliding-window-log sliding-window-counter fixed-window"
# The batched scenarios (50 checks per call), then GCRA with one call per check.
RUNS="token-bucket.closed gcra.closed sliding-window-log.closed sliding-window-counter.closed fixed-window.closed gcra.unbatched"
KEYS=100000
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="redis://127.0.0.1:$PORT"
CLI="redis-cli -p $PORT"

redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
    --logfile "$TMP/redis.log" >/dev/null 2>&1 &
RPID=$!
trap 'kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; rm -rf "$TMP"' EXIT INT TERM
i=0
until $CLI ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "redis-server did not start" >&2; exit 1; }
    sleep 0.05
done

info() { $CLI info "$1" | tr -d '\r'; }
field() { sed -n "s/^$1:\\([0-9.]*\\).*/\\1/p"; }
cpu() { info cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f", s }'; }

echo "machine: $(nproc) CPUs, $(uname -r), $(redis-server --version | cut -d' ' -f3)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== Redis time per decision (bench run ratelimit.<scenario> --duration $DURATION)"
printf '%-32s %10s %10s %12s %14s %14s %10s\n' scenario "decided/s" "to-Redis" "checks/call" \
    "script us/chk" "Redis CPU us/chk" "Redis CPU"
for a in $RUNS; do
    $CLI flushall >/dev/null
    $CLI config resetstat >/dev/null
    c0=$(cpu)
    t0=$(date +%s.%N)
    BENCH_PEERS=0 $BIN/bench run "ratelimit.$a" --duration "$DURATION" --redis "$URL" \
        --json "$TMP/$a.json" >"$TMP/$a.out" 2>"$TMP/$a.err"
    t1=$(date +%s.%N)
    c1=$(cpu)
    usec=$(info commandstats | sed -n 's/^cmdstat_evalsha:.*,usec=\([0-9]*\),.*/\1/p')
    line=$(grep '^ratelimit bench:' "$TMP/$a.err")
    checks=$(echo "$line" | sed -n 's/.* script calls for \([0-9]*\) checks.*/\1/p')
    calls=$(echo "$line" | sed -n 's/.* \([0-9]*\) script calls.*/\1/p')
    decided=$(python3 -c "import json; print(round(json.load(open('$TMP/$a.json'))['scenarios'][0]['achieved_rate']))")
    python3 - "$a" "$decided" "$checks" "$calls" "$usec" "$c0" "$c1" "$t0" "$t1" <<'EOF'
import sys
a, decided, checks, calls, usec, c0, c1, t0, t1 = sys.argv[1:]
checks, calls, usec = int(checks), int(calls), int(usec)
cpu = float(c1) - float(c0)
wall = float(t1) - float(t0)
print("%-32s %10s %10s %12.1f %14.2f %14.2f %9.0f%%" % (
    a, "{:,}".format(int(decided)), "{:,}".format(checks), checks / calls, usec / checks,
    cpu * 1e6 / checks, 100 * cpu / wall))
EOF
    echo "    $line"
done
echo "(decided/s: the bench's achieved rate, fallback answers included; to-Redis: checks sent to"
echo " Redis over warm-up and measurement, the rest answered by the deny cache or, after Redis"
echo " errors opened the breaker, the fallback; script us/chk: EVALSHA usec / to-Redis; Redis CPU"
echo " us/chk: used_cpu_user+sys delta / to-Redis; Redis CPU: that delta over the bench's wall time.)"

echo
echo "== Memory per key (policy daily;q=1000;w=86400, cost 1, $KEYS keys)"
printf '%-24s %14s %22s\n' algorithm "MEMORY USAGE" "used_memory delta/key"
for a in $ALGS; do
    $CLI flushall >/dev/null
    # One check through the command: loads the script and gives the EVALSHA line to replay.
    $CLI monitor >"$TMP/monitor" 2>/dev/null &
    mpid=$!
    sleep 0.2
    $BIN/ratelimit check --redis "$URL" --algorithm "$a" --policy 'daily;q=1000;w=86400' \
        --key probe --cost 1 >/dev/null 2>&1
    sleep 0.2
    kill "$mpid" 2>/dev/null || true
    wait "$mpid" 2>/dev/null || true
    key=$($CLI --scan | head -n 1)
    one=$($CLI memory usage "$key")
    # "EVALSHA" "<sha>" "1" "<key>" args...: the same call for KEYS other client keys.
    call=$(grep '"EVALSHA"' "$TMP/monitor" | head -n 1 | sed 's/^[^"]*//')
    $CLI flushall >/dev/null
    m0=$(info memory | field used_memory)
    python3 - "$call" "$key" "$KEYS" >"$TMP/pipe" <<'EOF'
import shlex, sys
call, key, n = shlex.split(sys.argv[1]), sys.argv[2], int(sys.argv[3])
k = call.index(key)
for i in range(n):
    args = call[:k] + [key.replace("{probe}", "{user%d}" % i)] + call[k + 1:]
    sys.stdout.write("*%d\r\n" % len(args))
    for x in args:
        b = x.encode()
        sys.stdout.write("$%d\r\n%s\r\n" % (len(b), x))
EOF
    $CLI --pipe <"$TMP/pipe" >"$TMP/pipe.out"
    m1=$(info memory | field used_memory)
    n=$($CLI dbsize)
    python3 -c "print('%-24s %12s B %20.1f B   (%d keys, used_memory %d -> %d)' % ('$a', '$one', ($m1 - $m0) / $n, $n, $m0, $m1))"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
date -u '+measured at %H:%M UTC'
