#!/bin/sh
# nginx-cache.sh - the cache's peer: nginx proxy_cache with proxy_cache_lock on, in front of
# the same origin (cache-origin) and loaded by the same client (the cache.* scenario of `bench`
# pointed at nginx with BENCH_CACHE_URL), so that both figures come from one measuring code.
#
#   nginx-cache.sh hit|stampede DURATION WARMUP IN_FLIGHT [REDIS_URL]
#
# hit: one hot path, as cache.serve.local-hit; stampede: rounds of IN_FLIGHT concurrent
# requests for a cold path with a 50 ms origin, as cache.stampede. nginx runs with one worker
# (cache serve is one thread), `nginx -c` on a config generated in a temporary directory, on
# 127.0.0.1 and a free port picked here, and is stopped by its PID. Prints the result line of
# bench/peers.h; the stampede's origin calls per round go into its "version" field, which is
# what the report shows beside the peer's name. Exit 3 with one line when nginx is missing.
# BENCH_BIN_DIR: where bench and cache-origin are (default: the source tree's build/bin; the
# cache scenarios set it to their own). BENCH_NGINX_LOG: a file to append the scenario's
# "cache bench:" lines to (origin calls, latency from each request's send).
set -eu
mode=$1 dur=$2 warm=$3 inflight=$4 redis=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
bin=${BENCH_BIN_DIR:-$here/../../build/bin}
nginx=$(command -v nginx || true)
[ -x /usr/sbin/nginx ] && [ -z "$nginx" ] && nginx=/usr/sbin/nginx
if [ -z "$nginx" ]; then
    echo "nginx not found (Debian: apt-get install nginx-light)" >&2
    exit 3
fi
case $mode in
hit) delay=0 scenario=cache.serve.local-hit ;;
stampede) delay=50 scenario=cache.stampede ;;
*) echo "usage: nginx-cache.sh hit|stampede DURATION WARMUP IN_FLIGHT" >&2; exit 2 ;;
esac

dir=$(mktemp -d /tmp/nginx-cache.XXXXXX)
origin_pid='' nginx_pid=''
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null && wait "$origin_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

"$bin/cache-origin" --delay-ms "$delay" >"$dir/origin.out" 2>"$dir/origin.err" &
origin_pid=$!
i=0
until grep -q '^listening on ' "$dir/origin.out"; do
    i=$((i + 1))
    [ $i -gt 100 ] && { echo "cache-origin did not start" >&2; exit 1; }
    sleep 0.1
done
origin=$(sed -n 's/^listening on //p' "$dir/origin.out")
oport=${origin##*:}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$dir/cache" "$dir/tmp"
# As root the workers would drop to nobody, who cannot write into the private directory.
user_line=''
[ "$(id -u)" = 0 ] && user_line='user root;'
for attempt in 1 2 3; do
    port=$(free_port)
    cat >"$dir/nginx.conf" <<CONF
daemon off;
$user_line
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    proxy_cache_path $dir/cache levels=1:2 keys_zone=bench:16m max_size=256m inactive=10m use_temp_path=off;
    upstream origin { server 127.0.0.1:$oport; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_valid 200 10m;
            add_header X-Cache \$upstream_cache_status;
        }
    }
}
CONF
    "$nginx" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" &
    nginx_pid=$!
    i=0 up=0
    while [ $i -lt 50 ]; do
        if curl -s -o /dev/null "http://127.0.0.1:$port/_up"; then up=1; break; fi
        kill -0 "$nginx_pid" 2>/dev/null || break
        i=$((i + 1))
        sleep 0.1
    done
    [ $up = 1 ] && break
    kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null || true
    nginx_pid=''
done
if [ -z "$nginx_pid" ]; then
    echo "nginx did not start: $(tail -n 1 "$dir/error.log" 2>/dev/null)" >&2
    exit 1
fi
version=$("$nginx" -v 2>&1 | sed 's/.*nginx\///')

set -- run "$scenario" --duration "$dur" --warmup "$warm" --in-flight "$inflight" --json "$dir/r.json"
[ -n "$redis" ] && set -- "$@" --redis "$redis"
BENCH_PEERS=0 BENCH_CACHE_URL="http://127.0.0.1:$port" BENCH_CACHE_ORIGIN="$origin" \
    "$bin/bench" "$@" >"$dir/bench.out" 2>"$dir/bench.err" || {
    echo "bench exited with an error: $(tail -n 1 "$dir/bench.err")" >&2
    exit 1
}
# Latencies as the table shows ours (from the load generator's issue); the send-based
# figures of both are on the scenario's teardown line (stderr of bench, kept in bench.err).
per_round=$(sed -n 's/.*(\([0-9.]*\) per round).*/\1/p' "$dir/bench.err" | tail -n 1)
[ -n "$per_round" ] && version="$version, $per_round origin/round"
[ -n "${BENCH_NGINX_LOG:-}" ] && grep 'cache bench:' "$dir/bench.err" >>"$BENCH_NGINX_LOG"
jq -c --arg v "$version" '.scenarios[0] | {peer: "nginx proxy_cache", version: $v,
    achieved_rate, p50_us, p99_us, max_us, count, errors}' "$dir/r.json"
