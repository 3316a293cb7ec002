/*
 * test_ratelimit_faults.c - what the rate limiter does when Redis is stopped, frozen or
 * restarted: every check is still answered, by the configured fallback, the deadline cuts a
 * frozen Redis short, the circuit breaker stops waiting on it, and decisions come from Redis
 * again once it is back.
 *
 * Times are short and configurable: a 20 ms deadline and a 100 ms breaker cool-down.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>

#include "ratelimit.h"
#include "sd.h"
#include "support.h"

static sd_redis_server *server;
static sd_redis_url url;
static uv_loop_t loop;

static void start(void) {
    server = test_redis_start(NULL);
    char err[160];
    cr_assert_eq(sd_redis_url_parse(sd_redis_server_url(server), &url, err, sizeof err), 0);
    uv_loop_init(&loop);
}

static void stop(void) {
    sd_redis_url_clear(&url);
    sd_redis_server_stop(server);
    uv_loop_close(&loop);
}

TestSuite(ratelimit_faults, .init = start, .fini = stop, .timeout = 60);

static rl_config config(rl_fail_mode mode) {
    rl_config cfg;
    rl_config_default(&cfg);
    cfg.algorithm = RL_GCRA;
    cfg.on_error = mode;
    cfg.deadline_ms = 20;
    cfg.breaker_failures = 2;
    cfg.breaker_cooldown_ms = 100;
    char err[256];
    cr_assert_eq(rl_config_add_policy(&cfg, "f;q=10;w=3600", err, sizeof err), 0);
    return cfg;
}

static rl_limiter *limiter(const rl_config *cfg) {
    rl_limiter *l = NULL;
    cr_assert_eq(rl_limiter_new(&loop, &url, cfg, &l), 0);
    cr_assert_eq(rl_limiter_wait_connected(l, 2000), 0);
    return l;
}

typedef struct result {
    int done;
    rl_decision d;
} result;

static void keep_cb(const rl_decision *d, void *udata) {
    result *r = udata;
    r->done++;
    r->d = *d;
}

/* One check, the loop run until it is answered. *sync_answer tells whether the callback ran
 * before rl_limiter_check returned (no waiting at all). */
static rl_decision check(rl_limiter *l, const char *key, int *sync_answer) {
    result r = {0};
    cr_assert_eq(rl_limiter_check(l, key, 1, keep_cb, &r), 0);
    if (sync_answer) {
        *sync_answer = r.done;
    }
    while (!r.done) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    cr_assert_eq(r.done, 1, "callback ran %d times", r.done);
    return r.d;
}

static void on_pause(uv_timer_t *t) {
    (void)t;
}

/* Runs the loop for ms (the connection reconnects and timers fire meanwhile). */
static void pause_loop(int ms) {
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_pause, (uint64_t)ms, 0);
    uv_run(&loop, UV_RUN_ONCE);
    while (uv_is_active((uv_handle_t *)&t)) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Checks every 20 ms until Redis answers again; returns how many checks that took. */
static int await_redis(rl_limiter *l, const char *key) {
    for (int i = 1; i <= 250; i++) {
        if (check(l, key, NULL).source == RL_SOURCE_REDIS) {
            return i;
        }
        pause_loop(20);
    }
    cr_assert_fail("decisions never came from Redis again");
    return 0;
}

static void finish(rl_limiter *l) {
    rl_limiter_free(l);
    uv_run(&loop, UV_RUN_DEFAULT);
}

Test(ratelimit_faults, stopped_redis_fails_open) {
    rl_config cfg = config(RL_FAIL_OPEN);
    rl_limiter *l = limiter(&cfg);
    cr_assert_eq(check(l, "k", NULL).source, RL_SOURCE_REDIS);
    cr_assert_eq(sd_redis_server_halt(server), 0);
    for (int i = 0; i < 30; i++) {
        rl_decision d = check(l, "k", NULL);
        cr_assert_eq(d.source, RL_SOURCE_FAIL_OPEN);
        cr_assert(d.allowed);
        cr_assert_eq(d.policies[0].remaining, -1, "an unknown remaining must say so");
    }
    cr_assert_eq(sd_redis_server_restart(server), 0);
    await_redis(l, "k");
    rl_stats s;
    rl_limiter_stats(l, &s);
    cr_assert_gt(s.redis_errors, 0);
    cr_assert_geq(s.by_source[RL_SOURCE_FAIL_OPEN], 30);
    finish(l);
}

Test(ratelimit_faults, stopped_redis_fails_closed) {
    rl_config cfg = config(RL_FAIL_CLOSED);
    rl_limiter *l = limiter(&cfg);
    cr_assert(check(l, "k", NULL).allowed);
    cr_assert_eq(sd_redis_server_halt(server), 0);
    for (int i = 0; i < 10; i++) {
        rl_decision d = check(l, "k", NULL);
        cr_assert_eq(d.source, RL_SOURCE_FAIL_CLOSED);
        cr_assert_not(d.allowed);
        cr_assert_gt(d.retry_after_ms, 0);
    }
    cr_assert_eq(sd_redis_server_restart(server), 0);
    await_redis(l, "k");
    finish(l);
}

/* The local fallback admits q/N per instance: with q = 10 and N = 2, five for a new key. */
Test(ratelimit_faults, stopped_redis_falls_back_to_a_local_share) {
    rl_config cfg = config(RL_FAIL_LOCAL);
    cfg.instances = 2;
    rl_limiter *l = limiter(&cfg);
    cr_assert_eq(sd_redis_server_halt(server), 0);
    int allowed = 0;
    for (int i = 0; i < 20; i++) {
        rl_decision d = check(l, "fresh", NULL);
        cr_assert_eq(d.source, RL_SOURCE_LOCAL);
        allowed += d.allowed;
    }
    cr_assert_eq(allowed, 5);
    cr_assert_eq(sd_redis_server_restart(server), 0);
    await_redis(l, "fresh");
    finish(l);
}

/*
 * A frozen Redis (SIGSTOP) accepts connections and commands but never answers: the deadline
 * answers the first checks (SD_ETIMEDOUT), then the breaker opens and checks are answered at
 * once without waiting (RL_EBREAKER). After SIGCONT the breaker's probe finds Redis again.
 */
Test(ratelimit_faults, frozen_redis_hits_the_deadline_then_the_breaker) {
    rl_config cfg = config(RL_FAIL_OPEN);
    rl_limiter *l = limiter(&cfg);
    cr_assert_eq(check(l, "k", NULL).source, RL_SOURCE_REDIS);
    cr_assert_eq(sd_redis_server_signal(server, SIGSTOP), 0);
    for (int i = 0; i < cfg.breaker_failures; i++) {
        int sync_answer;
        rl_decision d = check(l, "k", &sync_answer);
        cr_assert_eq(d.error, SD_ETIMEDOUT, "check %d: %s", i, rl_strerror(d.error));
        cr_assert_not(sync_answer);
        cr_assert_eq(d.source, RL_SOURCE_FAIL_OPEN);
    }
    for (int i = 0; i < 20; i++) {
        int sync_answer;
        rl_decision d = check(l, "k", &sync_answer);
        cr_assert_eq(d.error, RL_EBREAKER, "%s", rl_strerror(d.error));
        cr_assert(sync_answer, "an open breaker must not wait");
    }
    rl_stats s;
    rl_limiter_stats(l, &s);
    cr_assert(s.breaker_open);
    cr_assert_eq(sd_redis_server_signal(server, SIGCONT), 0);
    await_redis(l, "k");
    rl_limiter_stats(l, &s);
    cr_assert_not(s.breaker_open);
    finish(l);
}

/* The blocking limiter keeps the same promises: fallback while Redis is down, Redis after. */
Test(ratelimit_faults, sync_limiter_recovers_after_a_restart) {
    rl_config cfg = config(RL_FAIL_CLOSED);
    rl_sync *l = NULL;
    cr_assert_eq(rl_sync_new(&url, &cfg, &l), 0);
    rl_decision d;
    cr_assert_eq(rl_sync_check(l, "k", 1, &d), 0);
    cr_assert_eq(d.source, RL_SOURCE_REDIS);
    cr_assert_eq(sd_redis_server_halt(server), 0);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(rl_sync_check(l, "k", 1, &d), 0);
        cr_assert_eq(d.source, RL_SOURCE_FAIL_CLOSED);
    }
    cr_assert_eq(sd_redis_server_restart(server), 0);
    int recovered = 0;
    for (int i = 0; i < 200 && !recovered; i++) {
        cr_assert_eq(rl_sync_check(l, "k", 1, &d), 0);
        recovered = d.source == RL_SOURCE_REDIS;
        if (!recovered) {
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
    }
    cr_assert(recovered, "the sync limiter never reached Redis again");
    /* The state written before the halt is gone (no persistence): a fresh bucket. */
    cr_assert(d.allowed);
    rl_sync_free(l);
}
