#!/bin/sh
# nginx-urlshortener.sh - the URL shortener's peer: nginx answering every request with
# `return 302`, loaded by the same client as ours (the urlshortener.redirect.* scenario of
# `bench` pointed at nginx with BENCH_US_URL), so that both figures come from one measuring code.
#
#   nginx-urlshortener.sh hot|open DURATION WARMUP IN_FLIGHT [REDIS_URL]
#
# hot: the closed loop of urlshortener.redirect.hot; open: the open loop of
# urlshortener.redirect.open at that scenario's default rate (35,000/s). nginx runs with one
# worker (urlshortener serve answers redirects on one thread), `nginx -c` on a config generated
# in a temporary directory, on 127.0.0.1 and a free port picked here, and is stopped by its PID.
# Prints the result line of bench/peers.h. Exit 3 with one line when nginx is missing.
# BENCH_BIN_DIR: where bench is (default: the source tree's build/bin; the scenarios set it).
set -eu
mode=$1 dur=$2 warm=$3 inflight=$4 redis=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
bin=${BENCH_BIN_DIR:-$here/../../build/bin}
nginx=$(command -v nginx || true)
if [ -z "$nginx" ]; then
    echo "nginx not found (Debian: apt-get install nginx-light)" >&2
    exit 3
fi
case $mode in
hot) scenario=urlshortener.redirect.hot ;;
open) scenario=urlshortener.redirect.open ;;
*) echo "usage: nginx-urlshortener.sh hot|open DURATION WARMUP IN_FLIGHT" >&2; exit 2 ;;
esac

dir=$(mktemp -d /tmp/nginx-us.XXXXXX)
nginx_pid=''
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$dir/tmp"
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
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        location / {
            add_header Cache-Control "private, max-age=0" always;
            return 302 https://example.com/landing;
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
# Status 1 with a report: the open loop fell below its rate (the report's achieved_rate says
# by how much), as ours may; anything else is an error.
rc=0
BENCH_PEERS=0 BENCH_US_URL="http://127.0.0.1:$port" \
    "$bin/bench" "$@" >"$dir/bench.out" 2>"$dir/bench.err" || rc=$?
if [ $rc -gt 1 ] || ! [ -s "$dir/r.json" ]; then
    echo "bench exited with status $rc: $(tail -n 1 "$dir/bench.err")" >&2
    exit 1
fi
jq -c --arg v "$version" '.scenarios[0] | {peer: "nginx return 302", version: $v,
    achieved_rate, p50_us, p99_us, max_us, count, errors}' "$dir/r.json"
