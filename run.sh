#!/usr/bin/env bash
# The project's two set-up commands (see README.md):
#   ./run.sh bench [bench run arguments...]   build, then benchmark every component
#   ./run.sh test                             build (normal + sanitizers), then run every test
#   ./run.sh redis-stop [--purge]             stop the local durable Redis (common/local_redis.h)
# Both install the Debian packages they need when they are missing (as root; otherwise they
# print the exact apt-get command and stop). A second run reinstalls nothing and rebuilds only
# what changed.
set -euo pipefail
cd "$(dirname "$0")"

# nodejs, npm: the peers of `bench run` (bench/peers, npm packages installed there on first use);
# nginx-light: the HTTP peer of the later components.
PACKAGES=(build-essential cmake pkg-config git libhiredis-dev libuv1-dev libcriterion-dev
          redis-server libhttp-parser-dev libcurl4-openssl-dev libjansson-dev libssl-dev
          nodejs npm nginx-light)
JOBS=$(nproc 2>/dev/null || echo 2)

usage() {
    cat <<USAGE
usage: ./run.sh bench [SCENARIO-PREFIX...] [bench run options]
       ./run.sh test
       ./run.sh build
       ./run.sh redis-stop [--purge]

  bench   builds (build/) and runs build/bin/bench run: every component's benchmark against a
          private redis-server (or REDIS_URL), with the peers beside them, and writes
          build/report/index.html and build/report/results.json (unless --html / --json are
          given). Extra arguments go to 'bench run'.
  test    builds build/ and build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer) and
          runs every Criterion suite in both; fails on any sanitizer report or leaked
          redis-server process.
  build   only builds build/.
  redis-stop
          stops the local durable Redis that jobqueue, webhook and urlshortener start on
          first use when given neither --redis nor REDIS_URL (a redis-server on a unix
          socket in \$XDG_STATE_HOME/sysdesign, default ~/.local/state/sysdesign). Its data
          (the AOF) stays for the next start; --purge deletes it too.
USAGE
}

install_packages() {
    local missing=()
    # A package counts as there when an installed one provides it (NodeSource's nodejs provides
    # npm, and conflicts with Debian's).
    local provided
    provided=$(dpkg-query -W -f='${db:Status-Abbrev}|${Provides}\n' 2>/dev/null |
        awk -F'|' '$1 ~ /^ii/ { print $2 }' | tr ',' '\n' | sed 's/(.*//; s/ //g')
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            grep -qx -- "$p" <<<"$provided" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]}" >&2
        echo "run as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build DIR [cmake options...]: configure once, then build incrementally.
build() {
    local dir=$1
    shift
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
    fi
    cmake --build "$dir" -j"$JOBS"
}

# run_suites DIR LABEL: runs every suite of one build with CTest, keeping the output for the
# sanitizer scan. Criterion does not fail a test for a LeakSanitizer report (the report comes
# after the test's result), so the log is searched for sanitizer reports afterwards.
run_suites() {
    local dir=$1 label=$2 log="$1/test-output.log"
    echo "== $label: running the test suites" >&2
    local rc=0
    ctest --test-dir "$dir" --output-on-failure -j"$JOBS" 2>&1 | tee "$log" || rc=$?
    # CTest keeps every suite's full output, passing or not, in LastTest.log.
    if grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$dir"/Testing/Temporary/LastTest.log "$log" 2>/dev/null; then
        echo "$label: sanitizer reports found:" >&2
        grep -hE -A12 "ERROR: (Address|Leak)Sanitizer|runtime error:" \
            "$dir"/Testing/Temporary/LastTest.log "$log" | head -80 >&2
        rc=1
    fi
    return $rc
}

# run_servers ID: the pids of running redis-servers that a test run tagged ID started.
run_servers() {
    local pid cwd
    for pid in $(pgrep -x redis-server || true); do
        cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
        case "$cwd" in
        */sd-redis-"$1"-*) echo "$pid" ;;
        esac
    done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
bench)
    install_packages
    build build
    args=("$@")
    for a in "$@"; do
        case "$a" in --help | -h) exec build/bin/bench run --help ;; esac
    done
    mkdir -p build/report
    html=1 json=1
    for a in "$@"; do
        case "$a" in
        --html | --html=*) html=0 ;;
        --json | --json=*) json=0 ;;
        esac
    done
    # On a busy machine an open loop may fall below its rate: the table marks it with '!' (a
    # result to read, not a failed run), so the main job's exit status does not count it.
    args+=(--below-target-ok)
    [ $html = 0 ] || args+=(--html build/report/index.html)
    [ $json = 0 ] || args+=(--json build/report/results.json)
    start=$SECONDS
    rc=0
    build/bin/bench run "${args[@]}" || rc=$?
    echo "bench: the run took $((SECONDS - start)) s (exit status $rc)" >&2
    exit $rc
    ;;
build)
    install_packages
    build build
    ;;
redis-stop)
    [ -x build/bin/sd-redis ] || { install_packages && build build; }
    exec build/bin/sd-redis stop "$@"
    ;;
test)
    install_packages
    # Tag every redis-server this run starts (common/redis_server.c puts SD_TEST_RUN_ID in the
    # name of the server's directory, which is its working directory), so that the leftover
    # check below counts only ours, not servers others start on the machine meanwhile.
    SD_TEST_RUN_ID="t$$_${RANDOM}"
    export SD_TEST_RUN_ID
    build build
    build build-asan -DSD_SANITIZE=ON
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    rc=0
    run_suites build "normal build" || rc=1
    run_suites build-asan "sanitizer build (ASan + UBSan + LSan)" || rc=1
    # Every suite starts and stops its own servers: none may outlive the run, nor its
    # directory. A janitor reaps servers whose owner crashed, so give it a moment before judging.
    for _ in $(seq 50); do
        leftover=$(run_servers "$SD_TEST_RUN_ID")
        [ -z "$leftover" ] && break
        sleep 0.1
    done
    if [ -n "$leftover" ]; then
        echo "redis-server processes left behind by the tests:" $leftover >&2
        rc=1
    fi
    dirs=$(ls -d "${TMPDIR:-/tmp}/sd-redis-$SD_TEST_RUN_ID-"* /tmp/sd-redis-"$SD_TEST_RUN_ID"-* \
        2>/dev/null | sort -u || true)
    if [ -n "$dirs" ]; then
        echo "redis-server directories left behind by the tests:" $dirs >&2
        rc=1
    fi
    if [ $rc -eq 0 ]; then
        echo "all test suites passed in both builds" >&2
    fi
    exit $rc
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage >&2
    exit 2
    ;;
esac
