/*
 * scenarios_peers.c - the peers `bench run` measures beside our scenarios (peers.h), and the
 * hook that runs them.
 *
 * Each peer runs right after the scenario it is compared with, on the same Redis, with that
 * scenario's closed-loop concurrency (or --in-flight), warm-up and duration, and the same keys
 * and policy (built into the peer's command). One round, ours first: a shared machine drifts
 * over minutes, so the two runs are kept seconds apart; bench/peers/compare-ratelimit.sh runs
 * several alternating rounds when the ratio itself is the question.
 *
 * To add a peer: put its program in bench/peers/ (with its npm packages in package.json and
 * package-lock.json, if any), make it print the result line peers.h describes, and add an entry
 * below. BENCH_PEERS=0 in the environment runs no peer; BENCH_PEERS_DIR points elsewhere than
 * the source tree's bench/peers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "peers.h"
#include "report.h"
#include "sd.h"

#ifndef BENCH_PEERS_DIR
#define BENCH_PEERS_DIR "bench/peers"
#endif

static const char *const NODE[] = {"node", NULL};
static const char *const RLF_NPM[] = {"rate-limiter-flexible", "ioredis", NULL};
static const char NODE_HINT[] = "Debian: apt-get install nodejs npm, as ./run.sh does";

/* rate-limiter-flexible under the load of ratelimit.*.closed: 10,000 random keys, q=10 per 1 s
 * (the script's defaults, which are the scenarios' policy). */
static const char *const RLF_ARGV[] = {"node",        "{peers_dir}/ratelimit-flexible.js",
                                       "--redis",     "{redis}",
                                       "--duration",  "{duration}",
                                       "--warmup",    "{warmup}",
                                       "--in-flight", "{in_flight}",
                                       NULL};
static const bench_peer rate_limiter_flexible = {
    .name = "rate-limiter-flexible",
    .compared_with = "ratelimit.gcra.closed",
    .summary = "Node's RateLimiterRedis over ioredis, 10,000 keys, q=10 w=1",
    .argv = RLF_ARGV,
    .programs = NODE,
    .npm = RLF_NPM,
    .hint = NODE_HINT,
};

/* The same peer again beside each of the other algorithms that hold one integer per key and
 * decide a check with one INCRBY (token bucket, sliding-window counter, fixed window), so that
 * the main job shows each one's ratio from runs seconds apart. Each adds the peer's warm-up and
 * duration (about 5 s) to the job. The sliding-window log, whose cost per check grows with its
 * log by design, is compared by hand (compare-ratelimit.sh). */
#define RLF_BESIDE(ident, scenario)                                                                \
    static const bench_peer ident = {                                                              \
        .name = "rate-limiter-flexible",                                                           \
        .compared_with = scenario,                                                                 \
        .summary = "Node's RateLimiterRedis over ioredis, 10,000 keys, q=10 w=1",                  \
        .argv = RLF_ARGV,                                                                          \
        .programs = NODE,                                                                          \
        .npm = RLF_NPM,                                                                            \
        .hint = NODE_HINT,                                                                         \
    }
RLF_BESIDE(rlf_beside_tb, "ratelimit.token-bucket.closed");
RLF_BESIDE(rlf_beside_swc, "ratelimit.sliding-window-counter.closed");
RLF_BESIDE(rlf_beside_fw, "ratelimit.fixed-window.closed");

/* The same with its in-process block of keys over their quota, its counterpart of the deny
 * cache that ratelimit.gcra.closed has on. */
static const char *const RLF_BLOCK_ARGV[] = {"node",
                                             "{peers_dir}/ratelimit-flexible.js",
                                             "--redis",
                                             "{redis}",
                                             "--duration",
                                             "{duration}",
                                             "--warmup",
                                             "{warmup}",
                                             "--in-flight",
                                             "{in_flight}",
                                             "--block-in-memory",
                                             NULL};
static const bench_peer rate_limiter_flexible_block = {
    .name = "rate-limiter-flexible+block",
    .compared_with = "ratelimit.gcra.closed",
    .summary = "the same with inMemoryBlockOnConsumed (its deny cache)",
    .argv = RLF_BLOCK_ARGV,
    .programs = NODE,
    .npm = RLF_NPM,
    .hint = NODE_HINT,
};

/* BullMQ (Queue + Worker over ioredis, its defaults but the worker's concurrency) beside each
 * jobqueue.* scenario: the same worker concurrency (50, fixed in the scenarios, so not
 * {in_flight}, which is the open loop's cap there), the same bulk size or rate. In throughput
 * mode the script keeps 10 x concurrency jobs enqueued and not completed, as ours keeps 500 in
 * flight; in latency mode it adds one job at a time at the planned times and measures enqueue ->
 * start, as ours. */
static const char *const BULLMQ_NPM[] = {"bullmq", "ioredis", NULL};
static const char BULLMQ_SUMMARY[] = "BullMQ Queue + Worker over ioredis, defaults, concurrency 50";
#define BULLMQ_BESIDE(ident, scenario, ...)                                                        \
    static const char *const ident##_argv[] = {"node",          "{peers_dir}/jobqueue-bullmq.js",  \
                                               "--redis",       "{redis}",                         \
                                               "--duration",    "{duration}",                      \
                                               "--warmup",      "{warmup}",                        \
                                               "--concurrency", "50",                              \
                                               __VA_ARGS__,     NULL};                             \
    static const bench_peer ident = {                                                              \
        .name = "bullmq",                                                                          \
        .compared_with = scenario,                                                                 \
        .summary = BULLMQ_SUMMARY,                                                                 \
        .argv = ident##_argv,                                                                      \
        .programs = NODE,                                                                          \
        .npm = BULLMQ_NPM,                                                                         \
        .hint = NODE_HINT,                                                                         \
    }
BULLMQ_BESIDE(bullmq_bulk1, "jobqueue.noop.single", "--mode", "throughput", "--bulk", "1");
BULLMQ_BESIDE(bullmq_bulk100, "jobqueue.noop.bulk100", "--mode", "throughput", "--bulk", "100");
BULLMQ_BESIDE(bullmq_lat1000, "jobqueue.latency.1000", "--mode", "latency", "--rate", "1000",
              "--drain", "10");
BULLMQ_BESIDE(bullmq_lat5000, "jobqueue.latency.5000", "--mode", "latency", "--rate", "5000",
              "--drain", "10");

/* nginx proxy_cache with proxy_cache_lock on, in front of the same cache-origin, loaded by the
 * same client (bench/peers/nginx-cache.sh): local-tier hits and the stampede. */
static const char *const NGINX_PROGRAMS[] = {"nginx", "jq", "curl", "python3", NULL};
static const char NGINX_HINT[] = "Debian: apt-get install nginx-light jq curl";
static const char *const NGINX_HIT_ARGV[] = {
    "sh", "{peers_dir}/nginx-cache.sh", "hit", "{duration}", "{warmup}", "{in_flight}", "{redis}",
    NULL};
static const char *const NGINX_STAMPEDE_ARGV[] = {"sh",       "{peers_dir}/nginx-cache.sh",
                                                  "stampede", "{duration}",
                                                  "{warmup}", "{in_flight}",
                                                  "{redis}",  NULL};
static const bench_peer nginx_cache_hit = {
    .name = "nginx-proxy_cache",
    .compared_with = "cache.serve.local-hit",
    .summary = "nginx proxy_cache, 1 worker, one hot path",
    .argv = NGINX_HIT_ARGV,
    .programs = NGINX_PROGRAMS,
    .hint = NGINX_HINT,
};
static const bench_peer nginx_cache_stampede = {
    .name = "nginx-proxy_cache_lock",
    .compared_with = "cache.stampede",
    .summary = "nginx proxy_cache_lock on, rounds of concurrent misses, 50 ms origin",
    .argv = NGINX_STAMPEDE_ARGV,
    .programs = NGINX_PROGRAMS,
    .hint = NGINX_HINT,
};

/* nginx `return 302` (one worker, a generated config) beside the hot redirect closed loop and
 * the open loop at 35,000/s, loaded by the same client (bench/peers/nginx-urlshortener.sh). */
static const char *const NGINX_US_HOT_ARGV[] = {"sh",       "{peers_dir}/nginx-urlshortener.sh",
                                                "hot",      "{duration}",
                                                "{warmup}", "{in_flight}",
                                                "{redis}",  NULL};
static const char *const NGINX_US_OPEN_ARGV[] = {"sh",       "{peers_dir}/nginx-urlshortener.sh",
                                                 "open",     "{duration}",
                                                 "{warmup}", "{in_flight}",
                                                 "{redis}",  NULL};
static const bench_peer nginx_us_hot = {
    .name = "nginx-return-302",
    .compared_with = "urlshortener.redirect.hot",
    .summary = "nginx `return 302`, 1 worker",
    .argv = NGINX_US_HOT_ARGV,
    .programs = NGINX_PROGRAMS,
    .hint = NGINX_HINT,
};
static const bench_peer nginx_us_open = {
    .name = "nginx-return-302",
    .compared_with = "urlshortener.redirect.open",
    .summary = "nginx `return 302`, 1 worker, open loop at 35,000/s",
    .argv = NGINX_US_OPEN_ARGV,
    .programs = NGINX_PROGRAMS,
    .hint = NGINX_HINT,
};

const bench_peer *const bench_peers[] = {
    &rate_limiter_flexible, &rate_limiter_flexible_block,
    &rlf_beside_tb,         &rlf_beside_swc,
    &rlf_beside_fw,         &bullmq_bulk1,
    &bullmq_bulk100,        &bullmq_lat1000,
    &bullmq_lat5000,        &nginx_cache_hit,
    &nginx_cache_stampede,  &nginx_us_hot,
    &nginx_us_open,         NULL,
};

void bench_peers_run_after(const char *scenario, const bench_env *env, double warmup_s,
                           int in_flight, bench_row *row) {
    size_t n = 0;
    for (const bench_peer *const *p = bench_peers; *p; p++)
        if (strcmp((*p)->compared_with, scenario) == 0)
            n++;
    const char *off = getenv("BENCH_PEERS");
    if (n == 0 || (off && strcmp(off, "0") == 0))
        return;
    const char *dir = getenv("BENCH_PEERS_DIR");
    bench_peer_params params = {.peers_dir = dir && dir[0] ? dir : BENCH_PEERS_DIR,
                                .redis_url = env->redis_url,
                                .duration_s = env->duration_s,
                                .warmup_s = warmup_s,
                                .in_flight = in_flight};
    row->peers = sd_xcalloc(n, sizeof *row->peers);
    for (const bench_peer *const *p = bench_peers; *p; p++) {
        if (strcmp((*p)->compared_with, scenario) != 0)
            continue;
        bench_peer_result *res = &row->peers[row->npeers++];
        if (row->failure[0]) {
            memset(res, 0, sizeof *res);
            snprintf(res->name, sizeof res->name, "%s", (*p)->name);
            snprintf(res->compared_with, sizeof res->compared_with, "%s", scenario);
            snprintf(res->skipped, sizeof res->skipped, "%s did not run", scenario);
        } else {
            fprintf(stderr, "bench run: peer %s (%s), %d in flight, %g s after %g s of warm-up\n",
                    (*p)->name, (*p)->summary, in_flight, env->duration_s, warmup_s);
            bench_peer_run(*p, &params, res);
            /* The loop did not run while the peer did: its cached time is seconds old, and a
             * timer the next scenario starts from it (a connect deadline) would fire at once. */
            uv_update_time(env->loop);
        }
        if (res->skipped[0]) {
            fprintf(stderr, "bench run: peer %s skipped: %s\n", res->name, res->skipped);
        } else {
            char p99[32];
            fprintf(stderr, "bench run: peer %s %s: %.0f/s, p99 %s, %llu errors\n", res->name,
                    res->version, res->achieved_rate,
                    bench_format_us((double)res->p99_us, p99, sizeof p99),
                    (unsigned long long)res->errors);
        }
    }
}
