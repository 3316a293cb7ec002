/*
 * scenarios_ratelimit.c - the rate limiter's benchmarks.
 *
 *   ratelimit.<algorithm>.closed   50 checks in flight over 10,000 random keys at q=10, w=1: the
 *                                  decisions/s one Redis sustains, and their latency; batching
 *                                  and the deny cache on, as `ratelimit serve` runs them
 *   ratelimit.gcra.unbatched       the same with one script call per check and no deny cache,
 *                                  to show what batching buys
 *   ratelimit.token-bucket.open    open loop at a fixed rate (20,000/s, about half of what one
 *                                  Redis sustains here): latency with coordinated omission
 *                                  corrected, at a load with headroom
 *   ratelimit.serve.closed         through `ratelimit serve` with the harness's HTTP client, 50
 *                                  connections, the same 10,000 random keys (X-Api-Key) and policy
 *   ratelimit.frozen-redis         Redis frozen with SIGSTOP: how long decisions take when the
 *                                  store never answers (deadline, then the circuit breaker)
 *
 * A decision counts as successful only when Redis (or the deny cache, which holds Redis's own
 * denials) made it: a fallback decision is reported as a timeout error, so a saturated Redis
 * cannot hide behind the fallback. The frozen-Redis scenario is the exception: measuring the
 * fallback is its point. The Redis deadline in the throughput scenarios is 50 ms rather than the
 * gateway's 5 ms, so that they measure what Redis sustains rather than how often it misses 5 ms;
 * the gateway scenario gets --deadline-ms 50 for the same reason (over HTTP a fallback's 200 or
 * 429 cannot be told from Redis's).
 *
 * Every scenario keeps its keys under three shared hash tags (rl_config.tags, `--tags 3`): on
 * the 3-master private cluster of `bench run --cluster`, one batching lane per master
 * (ratelimit/README.md, "Redis Cluster"); on a single Redis only the key names change.
 *
 * The same load from Node's rate-limiter-flexible is bench/peers/ratelimit-flexible.js; run both
 * against one Redis with bench/peers/compare-ratelimit.sh.
 */
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "http_client.h"
#include "ratelimit.h"
#include "redis_server.h"
#include "sd.h"
#include "spawn.h"

#define KEYS 10000

/* ---- In-process scenarios: the library on the harness's loop -------------------------------- */

typedef struct rl_bench {
    rl_limiter *limiter;
    bench_later *later; /* completes the checks the limiter refused (none, in practice) */
    uint64_t rng;
    int fallback_ok; /* count fallback decisions as successes (frozen Redis) */
    sd_redis_server *frozen;
    char keys[KEYS][16];
} rl_bench;

typedef struct rl_bench_op {
    void *token;
    bench_done_fn *done;
    rl_bench *b;
} rl_bench_op;

/* xorshift64* (Marsaglia; Vigna): cheap and good enough to pick keys uniformly. */
static uint64_t next_random(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ULL;
}

static void on_decided(const rl_decision *d, void *udata) {
    rl_bench_op *op = udata;
    int from_redis = d->source == RL_SOURCE_REDIS || d->source == RL_SOURCE_DENY_CACHE;
    op->done(op->token, from_redis || op->b->fallback_ok ? BENCH_OK : BENCH_ERR_TIMEOUT);
    free(op);
}

static void issue_check(void *ctx, void *token, bench_done_fn *done) {
    rl_bench *b = ctx;
    rl_bench_op *op = sd_xmalloc(sizeof(*op));
    op->token = token;
    op->done = done;
    op->b = b;
    const char *key = b->keys[next_random(&b->rng) % KEYS];
    if (rl_limiter_check(b->limiter, key, 1, on_decided, op) < 0) {
        free(op);
        bench_later_done(b->later, token, done, BENCH_ERR_OTHER);
    }
}

/* The limiter of every in-process scenario: algorithm a, the bench policy, the library's
 * defaults otherwise (a 5 ms deadline); batch = 0 sends one call per check, no deny cache. */
static rl_config bench_config(rl_algorithm a, int batch) {
    rl_config cfg;
    rl_config_default(&cfg);
    cfg.algorithm = a;
    snprintf(cfg.prefix, sizeof cfg.prefix, "rlbench:");
    cfg.tags = 3; /* the top of the file */
    if (!batch) {
        cfg.max_batch = 1;
        cfg.max_calls = 64;
        cfg.deny_cache_entries = 0;
    }
    char err[256];
    int rc = rl_config_add_policy(&cfg, "bench;q=10;w=1", err, sizeof err);
    assert(rc == 0);
    (void)rc;
    return cfg;
}

/* Sets up a limiter with cfg on the Redis at url_text, connected. */
static int setup_library(const bench_env *env, bench_target *target, const rl_config *cfg,
                         const char *url_text) {
    sd_redis_url url;
    char err[256];
    int rc = sd_redis_url_parse(url_text, &url, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "ratelimit bench: %s\n", err);
        return rc;
    }
    rl_bench *b = sd_xcalloc(1, sizeof(*b));
    b->rng = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < KEYS; i++) {
        snprintf(b->keys[i], sizeof b->keys[i], "user%d", i);
    }
    rc = rl_limiter_new(env->loop, &url, cfg, &b->limiter);
    sd_redis_url_clear(&url);
    /* 10 s: on a cluster every master's connection must finish its handshake (script loads),
     * which took more than 2 s on a machine loaded by other work. */
    if (rc == 0 && rl_limiter_wait_connected(b->limiter, 10000) != 0) {
        fprintf(stderr, "ratelimit bench: Redis at %s did not answer\n", url_text);
        rl_limiter_free(b->limiter);
        rc = SD_ETIMEDOUT;
    }
    if (rc < 0) {
        free(b);
        return rc;
    }
    b->later = bench_later_new(env->loop);
    target->ctx = b;
    target->issue = issue_check;
    return 0;
}

/* A throughput scenario: the 50 ms deadline explained at the top of this file. */
static int setup_throughput(const bench_env *env, bench_target *t, rl_algorithm a, int batch) {
    rl_config cfg = bench_config(a, batch);
    cfg.deadline_ms = 50;
    return setup_library(env, t, &cfg, env->redis_url);
}

static void teardown_library(const bench_env *env, bench_target *target) {
    rl_bench *b = target->ctx;
    rl_stats s;
    rl_limiter_stats(b->limiter, &s);
    fprintf(stderr,
            "ratelimit bench: %llu allowed, %llu denied (%llu by the deny cache), %llu script "
            "calls for %llu checks (%.1f per call), %llu Redis errors\n",
            (unsigned long long)s.allowed, (unsigned long long)s.denied,
            (unsigned long long)s.deny_cache_hits, (unsigned long long)s.script_calls,
            (unsigned long long)s.batched_checks,
            s.script_calls ? (double)s.batched_checks / (double)s.script_calls : 0.0,
            (unsigned long long)s.redis_errors);
    rl_limiter_free(b->limiter);
    bench_later_free(b->later);
    for (int i = 0; i < 20; i++) {
        uv_run(env->loop, UV_RUN_NOWAIT);
    }
    if (b->frozen) {
        sd_redis_server_signal(b->frozen, SIGCONT);
        sd_redis_server_stop(b->frozen);
    }
    free(b);
    target->ctx = NULL;
}

static int setup_tb(const bench_env *env, bench_target *t) {
    return setup_throughput(env, t, RL_TOKEN_BUCKET, 1);
}
static int setup_gcra(const bench_env *env, bench_target *t) {
    return setup_throughput(env, t, RL_GCRA, 1);
}
static int setup_swl(const bench_env *env, bench_target *t) {
    return setup_throughput(env, t, RL_SLIDING_WINDOW_LOG, 1);
}
static int setup_swc(const bench_env *env, bench_target *t) {
    return setup_throughput(env, t, RL_SLIDING_WINDOW_COUNTER, 1);
}
static int setup_fw(const bench_env *env, bench_target *t) {
    return setup_throughput(env, t, RL_FIXED_WINDOW, 1);
}
static int setup_unbatched(const bench_env *env, bench_target *t) {
    return setup_throughput(env, t, RL_GCRA, 0);
}

/* A private Redis, frozen once the limiter is connected: every call would wait forever. The
 * limiter has the gateway's own deadline (5 ms), which this scenario is about. */
static int setup_frozen(const bench_env *env, bench_target *t) {
    sd_redis_server *s = NULL;
    int rc = sd_redis_server_start(NULL, &s);
    if (rc < 0) {
        return rc;
    }
    rl_config cfg = bench_config(RL_GCRA, 1);
    rc = setup_library(env, t, &cfg, sd_redis_server_url(s));
    if (rc == 0) {
        rl_bench *b = t->ctx;
        b->frozen = s;
        b->fallback_ok = 1;
        rc = sd_redis_server_signal(s, SIGSTOP);
        if (rc < 0) {
            teardown_library(env, t); /* stops the server too */
        }
        return rc;
    }
    sd_redis_server_stop(s);
    return rc;
}

/* ---- Through `ratelimit serve` ------------------------------------------------------------- */

typedef struct rl_serve {
    bench_target http;
    bench_server gateway; /* the `ratelimit serve` child */
    uint64_t rng;
} rl_serve;

/* 429 is a decision like 200: both count as answered. */
static int classify_decision(int status, void *udata) {
    return status == 200 || status == 429 ? BENCH_OK : BENCH_ERR_STATUS;
}

/* Each request names one of the KEYS clients, "user0".."user9999" as in the library scenarios. */
static size_t key_header(char *buf, size_t len, void *udata) {
    rl_serve *s = udata;
    int n = snprintf(buf, len, "X-Api-Key: user%d\r\n", (int)(next_random(&s->rng) % KEYS));
    return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

static void issue_http(void *ctx, void *token, bench_done_fn *done) {
    rl_serve *s = ctx;
    s->http.issue(s->http.ctx, token, done);
}

/* Starts bin_dir/ratelimit serve on a free port. Returns 0 or a negative errno (reported). */
static int spawn_gateway(const bench_env *env, bench_server *gw) {
    char *path = sd_xasprintf("%s/ratelimit", env->bin_dir);
    const char *argv[] = {path,
                          "serve",
                          "--listen",
                          "127.0.0.1:0",
                          "--redis",
                          env->redis_url,
                          "--prefix",
                          "rlbench:",
                          "--policy",
                          "bench;q=10;w=1",
                          "--algorithm",
                          "gcra",
                          "--deadline-ms",
                          "50",
                          "--tags",
                          "3",
                          NULL};
    char err[256];
    int rc = bench_server_spawn(argv, NULL, 5000, gw, err, sizeof err);
    free(path);
    if (rc < 0) {
        fprintf(stderr, "ratelimit bench: ratelimit serve did not start: %s\n", err);
    }
    return rc;
}

static int setup_serve(const bench_env *env, bench_target *target) {
    rl_serve *s = sd_xcalloc(1, sizeof(*s));
    s->rng = 0x9E3779B97F4A7C15ULL;
    int rc = spawn_gateway(env, &s->gateway);
    if (rc < 0) {
        free(s);
        return rc;
    }
    char url[128], err[256];
    snprintf(url, sizeof url, "%s/v1/resource", s->gateway.url);
    bench_http_opts opts = {
        .classify = classify_decision, .extra_headers = key_header, .extra_headers_udata = s};
    rc = bench_http_target_new(env->loop, url, 50, &opts, &s->http, err, sizeof err);
    if (rc == 0) {
        rc = bench_http_target_wait_connected(&s->http, 5000, err, sizeof err);
    }
    if (rc < 0) {
        fprintf(stderr, "ratelimit bench: %s\n", err);
        bench_http_target_free(&s->http);
        bench_server_stop(&s->gateway, SIGKILL, 5000);
        free(s);
        return rc;
    }
    target->ctx = s;
    target->issue = issue_http;
    return 0;
}

static void teardown_serve(const bench_env *env, bench_target *target) {
    rl_serve *s = target->ctx;
    bench_http_target_free(&s->http);
    for (int i = 0; i < 20; i++) {
        uv_run(env->loop, UV_RUN_NOWAIT);
    }
    bench_server_stop(&s->gateway, SIGTERM, 10000);
    free(s);
    target->ctx = NULL;
}

/* ---- The registry --------------------------------------------------------------------------- */

#define CLOSED(ident, alg, setup_fn)                                                               \
    static const bench_scenario ident = {                                                          \
        .name = "ratelimit." alg ".closed",                                                        \
        .summary = alg ": 50 in flight, 10,000 keys, q=10 w=1, batched, deny cache",               \
        .default_rate = 0,                                                                         \
        .in_flight = 50,                                                                           \
        .default_duration_s = 4,                                                                   \
        .setup = setup_fn,                                                                         \
        .teardown = teardown_library,                                                              \
    }

CLOSED(tb_closed, "token-bucket", setup_tb);
CLOSED(gcra_closed, "gcra", setup_gcra);
CLOSED(swl_closed, "sliding-window-log", setup_swl);
CLOSED(swc_closed, "sliding-window-counter", setup_swc);
CLOSED(fw_closed, "fixed-window", setup_fw);

static const bench_scenario gcra_unbatched = {
    .name = "ratelimit.gcra.unbatched",
    .summary = "gcra: 50 in flight, one script call per check, no deny cache",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_unbatched,
    .teardown = teardown_library,
};

static const bench_scenario tb_open = {
    .name = "ratelimit.token-bucket.open",
    .summary = "token-bucket: open loop at 20,000 checks/s, 10,000 keys, q=10 w=1",
    .default_rate = 20000,
    .in_flight = 2000,
    .default_duration_s = 4,
    .setup = setup_tb,
    .teardown = teardown_library,
};

static const bench_scenario serve_closed = {
    .name = "ratelimit.serve.closed",
    .summary = "GET through `ratelimit serve` (gcra), 50 connections, 10,000 keys, q=10 w=1",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_serve,
    .teardown = teardown_serve,
};

static const bench_scenario frozen = {
    .name = "ratelimit.frozen-redis",
    .summary = "Redis frozen (SIGSTOP): decision time with a 5 ms deadline and the breaker",
    .in_flight = 50,
    .default_duration_s = 3,
    .setup = setup_frozen,
    .teardown = teardown_library,
};

const bench_scenario *const bench_scenarios_ratelimit[] = {
    &tb_closed,      &gcra_closed, &swl_closed,   &swc_closed, &fw_closed,
    &gcra_unbatched, &tb_open,     &serve_closed, &frozen,     NULL,
};
