#!/bin/sh
# How far one Redis goes on this machine, and what a hot key costs on a cluster: the figures
# behind "How far one Redis goes" in README.md and common/README.md.
#
#   1. One redis-server: redis-benchmark SET and GET (50 connections, one command per round
#      trip, then 16 pipelined), and EVALSHA of a one-line script (INCRBY of a random key), with
#      Redis's own CPU (INFO cpu, user + sys) per operation for each run: ops/s per Redis CPU is
#      what one core of Redis can serve when the clients are elsewhere.
#      Then the memory of a short link (a 7-character code -> a 100-byte URL, one string).
#   2. A 3-master Redis Cluster (redis-cli --cluster create, explicit --cluster-port values):
#      redis-benchmark --cluster SET/GET over 100,000 random keys (spread over the 3 masters),
#      then on one key (a hot key: every request goes to the master of its slot), with each
#      master's CPU (the hot key's master first).
#
# Usage: bench/probes/one_redis.sh [REQUESTS]  (default 200000 per run). Starts its own
# redis-servers on free loopback ports and stops them, by their PIDs, at exit. Prints the load
# average before and after: the machine is shared, and the client runs on the same 2 CPUs.
set -eu

N=${1:-200000}
TMP=$(mktemp -d)
PIDS=""
trap 'for p in $PIDS; do kill "$p" 2>/dev/null; done; for p in $PIDS; do wait "$p" 2>/dev/null; done; rm -rf "$TMP"' EXIT INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_redis DIR PORT [args...]: a redis-server without persistence; waits until it answers.
start_redis() {
    dir=$1 port=$2
    shift 2
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/redis.log" "$@" >/dev/null 2>&1 &
    PIDS="$PIDS $!"
    i=0
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "redis-server on $port did not start" >&2; exit 1; }
        sleep 0.05
    done
}

cpu() { # Redis's CPU seconds so far (user + sys)
    redis-cli -p "$1" info cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.3f", s }'
}

# bench LABEL PORT(S) -- redis-benchmark args: prints ops/s and Redis CPU us per op.
bench() {
    label=$1 ports=$2
    shift 2
    before=0 each_before=""
    for p in $ports; do
        c=$(cpu "$p")
        before=$(echo "$before + $c" | bc)
        each_before="$each_before $c"
    done
    # The CSV's first quoted line after the header ("test","rps",...) is the run's.
    rps=$(redis-benchmark -p "${ports%% *}" -n "$N" -c 50 --csv "$@" 2>/dev/null |
        awk -F'"' 'NF > 4 && $2 != "test" { print $4; exit }')
    after=0 shares=""
    set -- $each_before
    for p in $ports; do
        c=$(cpu "$p")
        after=$(echo "$after + $c" | bc)
        shares="$shares $(echo "$c - $1" | bc)"
        shift
    done
    us=$(echo "scale=2; ($after - $before) * 1000000 / $N" | bc)
    per_core=$(echo "scale=0; 1000000 / $us" | bc 2>/dev/null || echo "?")
    printf '%-40s %10s ops/s  Redis CPU %5s us/op (%s ops per Redis CPU-second)' \
        "$label" "$rps" "$us" "$per_core"
    case "$ports" in
    *" "*) printf '; CPU s per master:%s' "$shares" ;;
    esac
    printf '\n'
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(nproc) CPUs, $(redis-server --version | awk '{print $3}')"

echo "== one redis-server"
P=$(free_port)
start_redis "$TMP/single" "$P"
bench "SET, 1 per round trip" "$P" -t set -r 100000
bench "GET, 1 per round trip" "$P" -t get -r 100000
bench "SET, 16 pipelined" "$P" -t set -r 100000 -P 16
bench "GET, 16 pipelined" "$P" -t get -r 100000 -P 16
SHA=$(redis-cli -p "$P" script load "return redis.call('INCRBY', KEYS[1], ARGV[1])")
bench "EVALSHA (INCRBY), 1 per round trip" "$P" -r 100000 evalsha "$SHA" 1 'k:__rand_int__' 1

# What a short link costs in memory: a 7-character code mapped to a 100-byte URL, as one string
# (MEMORY USAGE), and used_memory per entry over 100,000 of them.
URL100=$(printf 'https://example.com/%080d' 0)
redis-cli -p "$P" set "u:{aB3dE9x}" "$URL100" >/dev/null
m0=$(redis-cli -p "$P" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }')
redis-cli -p "$P" eval "for i = 1, 100000 do redis.call('SET', 'u:{' .. string.format('%07d', i) .. '}', ARGV[1]) end" 0 "$URL100" >/dev/null
m1=$(redis-cli -p "$P" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }')
printf 'a short link (7-char code -> 100-byte URL): MEMORY USAGE %s B, used_memory %s B per entry over 100,000\n' \
    "$(redis-cli -p "$P" memory usage "u:{aB3dE9x}")" "$(( (m1 - m0) / 100000 ))"

echo "== a 3-master cluster (each master on its own port, 2 CPUs for all of them + the client)"
MASTERS=""
for m in 1 2 3; do
    port=$(free_port)
    bus=$(free_port)
    start_redis "$TMP/m$m" "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-port "$bus"
    MASTERS="$MASTERS $port"
done
MASTERS=${MASTERS# }
redis-cli --cluster create $(for p in $MASTERS; do printf '127.0.0.1:%s ' "$p"; done) \
    --cluster-yes >/dev/null
i=0
for p in $MASTERS; do
    until redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok'; do
        i=$((i + 1))
        [ $i -lt 400 ] || { echo "the cluster did not become ready" >&2; exit 1; }
        sleep 0.05
    done
done
bench "cluster SET, 100,000 keys on 3 masters" "$MASTERS" --cluster -t set -r 100000
bench "cluster GET, 100,000 keys on 3 masters" "$MASTERS" --cluster -t get -r 100000
# One hot key: redis-benchmark --cluster gives each node's clients keys of that node's slots, so
# the hot key is sent plainly to the master that holds it (a cluster client would send it there).
SLOT=$(redis-cli -p "${MASTERS%% *}" cluster keyslot hot)
OWNER=$(redis-cli -p "${MASTERS%% *}" cluster nodes | awk -v slot="$SLOT" '
    / master / { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
                 if (slot >= r[1] && slot <= r[2]) { split($2, a, "[:@]"); print a[2] } } }')
HOT_ORDER="$OWNER $(echo "$MASTERS" | tr ' ' '\n' | grep -vx "$OWNER" | tr '\n' ' ')"
bench "cluster SET of one hot key (slot $SLOT)" "${HOT_ORDER% }" set hot x
bench "cluster GET of one hot key (slot $SLOT)" "${HOT_ORDER% }" get hot

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "measured at $(date -u +%H:%M) UTC"
