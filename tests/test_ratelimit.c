/*
 * test_ratelimit.c - the rate limiter's decisions against a real redis-server, for each of the
 * five algorithms: exact admission (also across processes), costs, all-or-nothing policies,
 * refill arithmetic, retry-after that is exact, TTLs, scripts flushed, the deny cache and
 * batching. Redis failures are in test_ratelimit_faults.c, the command in
 * test_ratelimit_serve.c.
 *
 * Most tests use windows of an hour or a day so that no refill happens while they run and the
 * expected counts are exact; the few that need time to pass use windows of a second or less.
 * The fixed window's windows are aligned to the epoch, so a test of exact counts that ran across
 * the turn of an hour (or of a day) would see its count start again: a span of milliseconds in
 * an hour, the same odds as any test running across a clock change.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ratelimit.h"
#include "rl_internal.h"
#include "sd.h"
#include "support.h"

static test_target *server;
static sd_redis_url url;

static void start(void) {
    server = test_target_start();
    char err[160];
    cr_assert_eq(sd_redis_url_parse(test_target_url(server), &url, err, sizeof err), 0);
}

static void stop(void) {
    sd_redis_url_clear(&url);
    test_target_stop(server);
}

TestSuite(ratelimit, .init = start, .fini = stop);

static const rl_algorithm algorithms[] = {RL_TOKEN_BUCKET, RL_GCRA, RL_SLIDING_WINDOW_LOG,
                                          RL_SLIDING_WINDOW_COUNTER, RL_FIXED_WINDOW};
#define NALGS (sizeof algorithms / sizeof algorithms[0])

/* A configuration with the given policies (NULL-terminated). The deadline is generous: these
 * tests are about decisions, not about a slow Redis. */
static rl_config config(rl_algorithm a, const char *policy, ...) {
    rl_config cfg;
    rl_config_default(&cfg);
    cfg.algorithm = a;
    cfg.deadline_ms = 2000;
    char err[256];
    va_list ap;
    va_start(ap, policy);
    for (const char *p = policy; p; p = va_arg(ap, const char *)) {
        cr_assert_eq(rl_config_add_policy(&cfg, p, err, sizeof err), 0, "%s", err);
    }
    va_end(ap);
    return cfg;
}

static rl_sync *limiter(const rl_config *cfg) {
    rl_sync *l = NULL;
    cr_assert_eq(rl_sync_new(&url, cfg, &l), 0);
    return l;
}

/* One check, decided by Redis, the deny cache or (a cost above a quota) the policies alone:
 * never by a fallback. */
static rl_decision check(rl_sync *l, const char *key, long long cost) {
    rl_decision d;
    cr_assert_eq(rl_sync_check(l, key, cost, &d), 0);
    cr_assert(d.source == RL_SOURCE_REDIS || d.source == RL_SOURCE_DENY_CACHE ||
                  d.source == RL_SOURCE_POLICY,
              "decided by %s (%s), not Redis", rl_source_name(d.source), rl_strerror(d.error));
    return d;
}

static void sleep_ms(long long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- Policies ------------------------------------------------------------------------------- */

Test(ratelimit, policy_strings_parse_or_explain) {
    rl_policy p;
    char err[256];
    cr_assert_eq(rl_policy_parse("burst;q=100;w=60", &p, err, sizeof err), 0);
    cr_assert_str_eq(p.name, "burst");
    cr_assert_eq(p.quota, 100);
    cr_assert_eq(p.window_s, 60);
    cr_assert_eq(rl_policy_parse(" daily ; w=86400 ; q=1000 ", &p, err, sizeof err), 0);
    cr_assert_str_eq(p.name, "daily");
    cr_assert_eq(p.quota, 1000);

    const char *bad[] = {"",
                         ";q=1;w=1",
                         "x;q=1",
                         "x;w=1",
                         "x;q=0;w=1",
                         "x;q=1;w=0",
                         "x;q=-1;w=1",
                         "x;q=1.5;w=1",
                         "x;q=1;w=1;z=3",
                         "a b;q=1;w=1",
                         "x;q=100000;w=100000",
                         "x;q=1;w=1000000001",
                         "x\";q=1;w=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_assert_eq(rl_policy_parse(bad[i], &p, err, sizeof err), RL_EPOLICY, "'%s' accepted",
                     bad[i]);
        cr_assert_neq(err[0], '\0', "no message for '%s'", bad[i]);
    }
}

/* One check of cost q writes q log entries in one script, while Redis serves nobody else. */
Test(ratelimit, sliding_log_refuses_quotas_above_its_cap) {
    char err[256] = "";
    rl_config cfg = config(RL_SLIDING_WINDOW_LOG, "big;q=10001;w=60", NULL);
    cr_assert_eq(rl_config_validate(&cfg, err, sizeof err), RL_EPOLICY);
    cr_assert_not_null(strstr(err, "10000"), "%s", err);
    cr_assert_not_null(strstr(err, "sliding-window-counter"), "no alternative named: %s", err);
    rl_sync *l = NULL;
    cr_assert_eq(rl_sync_new(&url, &cfg, &l), RL_EPOLICY);
    cfg = config(RL_SLIDING_WINDOW_LOG, "cap;q=10000;w=60", NULL);
    cr_assert_eq(rl_config_validate(&cfg, err, sizeof err), 0, "%s", err);
    cfg = config(RL_SLIDING_WINDOW_COUNTER, "big;q=10001;w=60", NULL);
    cr_assert_eq(rl_config_validate(&cfg, err, sizeof err), 0, "%s", err);
}

Test(ratelimit, duplicate_policy_names_are_refused) {
    rl_config cfg = config(RL_TOKEN_BUCKET, "a;q=1;w=1", "a;q=2;w=2", NULL);
    char err[256];
    cr_assert_eq(rl_config_validate(&cfg, err, sizeof err), RL_EPOLICY);
    rl_sync *l = NULL;
    cr_assert_eq(rl_sync_new(&url, &cfg, &l), RL_EPOLICY);
}

/* ---- Admission ------------------------------------------------------------------------------ */

Test(ratelimit, admits_exactly_the_quota) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "hourly;q=25;w=3600", NULL);
        rl_sync *l = limiter(&cfg);
        int allowed = 0;
        for (int i = 0; i < 40; i++) {
            rl_decision d = check(l, "alice", 1);
            if (d.allowed) {
                allowed++;
                cr_assert_eq(d.policies[0].remaining, 25 - allowed, "%s",
                             rl_algorithm_name(algorithms[a]));
            } else {
                cr_assert_gt(d.retry_after_ms, 0);
                cr_assert(d.policies[0].violated);
            }
        }
        cr_assert_eq(allowed, 25, "%s admitted %d", rl_algorithm_name(algorithms[a]), allowed);
        rl_sync_free(l);
    }
}

/* Several processes hammer one key at once: exactly q are admitted between them. */
Test(ratelimit, processes_sharing_a_key_admit_exactly_the_quota) {
    enum { PROCS = 4, EACH = 60, QUOTA = 100 };
    for (size_t a = 0; a < NALGS; a++) {
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        pid_t pids[PROCS];
        for (int p = 0; p < PROCS; p++) {
            pids[p] = fork();
            cr_assert_geq(pids[p], 0);
            if (pids[p] == 0) {
                rl_config cfg = config(algorithms[a], "shared;q=100;w=86400", NULL);
                cfg.deny_cache_entries = 0; /* every check goes to Redis */
                rl_sync *l = NULL;
                int allowed = 0, failed = 0;
                if (rl_sync_new(&url, &cfg, &l) != 0) {
                    _exit(1);
                }
                for (int i = 0; i < EACH; i++) {
                    rl_decision d;
                    rl_sync_check(l, "hot", 1, &d);
                    allowed += d.allowed;
                    failed += d.source != RL_SOURCE_REDIS;
                }
                int out[2] = {allowed, failed};
                ssize_t n = write(fds[1], out, sizeof out);
                _exit(n == sizeof out ? 0 : 1);
            }
        }
        close(fds[1]);
        int total = 0;
        for (int p = 0; p < PROCS; p++) {
            int in[2];
            cr_assert_eq(read(fds[0], in, sizeof in), (ssize_t)sizeof in);
            cr_assert_eq(in[1], 0, "a child fell back");
            total += in[0];
            int status;
            waitpid(pids[p], &status, 0);
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        close(fds[0]);
        cr_assert_eq(total, QUOTA, "%s: %d processes admitted %d of a quota of %d",
                     rl_algorithm_name(algorithms[a]), PROCS, total, QUOTA);
    }
}

/* ---- Costs ---------------------------------------------------------------------------------- */

Test(ratelimit, cost_zero_peeks_without_consuming_or_writing) {
    sd_redis *admin = test_redis_connect(test_target_url(server));
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "p;q=5;w=3600", NULL);
        rl_sync *l = limiter(&cfg);
        rl_decision d = check(l, "peeker", 0);
        cr_assert(d.allowed);
        cr_assert_eq(d.policies[0].remaining, 5);
        cr_assert_eq(d.policies[0].reset_ms, 0, "a full quota has nothing to reset");
        char key[256];
        rl_config_key(&cfg, 0, "peeker", key, sizeof key);
        cr_assert_eq(test_redis_int(admin, "EXISTS %s", key), 0, "a peek wrote %s", key);
        check(l, "peeker", 2);
        d = check(l, "peeker", 0);
        cr_assert_eq(d.policies[0].remaining, 3, "%s", rl_algorithm_name(algorithms[a]));
        d = check(l, "peeker", 0);
        cr_assert_eq(d.policies[0].remaining, 3, "a peek consumed");
        rl_sync_free(l);
    }
    sd_redis_free(admin);
}

Test(ratelimit, cost_equal_to_remaining_is_allowed_and_empties) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "c;q=10;w=3600", NULL);
        rl_sync *l = limiter(&cfg);
        cr_assert(check(l, "k", 4).allowed);
        rl_decision d = check(l, "k", 6);
        cr_assert(d.allowed, "%s", rl_algorithm_name(algorithms[a]));
        cr_assert_eq(d.policies[0].remaining, 0);
        d = check(l, "k", 1);
        cr_assert_not(d.allowed);
        rl_sync_free(l);
    }
}

Test(ratelimit, cost_above_capacity_is_never_and_consumes_nothing) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "small;q=3;w=3600", "big;q=100;w=3600", NULL);
        rl_sync *l = limiter(&cfg);
        rl_decision d = check(l, "k", 4);
        cr_assert_not(d.allowed);
        cr_assert_eq(d.retry_after_ms, RL_NEVER);
        cr_assert_eq(d.source, RL_SOURCE_POLICY, "no state is needed to know it");
        cr_assert(d.policies[0].violated);
        cr_assert_not(d.policies[1].violated);
        d = check(l, "k", 0);
        cr_assert_eq(d.policies[0].remaining, 3, "%s", rl_algorithm_name(algorithms[a]));
        cr_assert_eq(d.policies[1].remaining, 100);
        rl_sync_free(l);
    }
}

Test(ratelimit, denied_checks_consume_nothing) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "d;q=5;w=3600", NULL);
        cfg.deny_cache_entries = 0;
        rl_sync *l = limiter(&cfg);
        cr_assert(check(l, "k", 4).allowed);
        for (int i = 0; i < 10; i++) {
            cr_assert_not(check(l, "k", 2).allowed);
        }
        rl_decision d = check(l, "k", 1);
        cr_assert(d.allowed, "%s: denials consumed quota", rl_algorithm_name(algorithms[a]));
        cr_assert_eq(d.policies[0].remaining, 0);
        rl_sync_free(l);
    }
}

/*
 * A peek is always allowed, even when a lowered quota leaves more in use than the new q: the
 * sliding windows once computed a positive wait for 0 units there (10 log entries under q = 5)
 * and denied the look, with a retry-after of the whole window.
 */
/* Spends `spent` of key "k" under the policy `high`, then returns a limiter of the same
 * algorithm under the lowered policy `low`, without a deny cache. */
static rl_sync *lowered(rl_algorithm a, const char *high, long long spent, const char *low) {
    rl_config before = config(a, high, NULL);
    rl_sync *l = limiter(&before);
    cr_assert(check(l, "k", spent).allowed);
    rl_sync_free(l);
    rl_config after = config(a, low, NULL);
    after.deny_cache_entries = 0;
    return limiter(&after);
}

Test(ratelimit, a_peek_is_allowed_after_the_quota_is_lowered) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_sync *l = lowered(algorithms[a], "p;q=10;w=3600", 10, "p;q=5;w=3600");
        rl_decision d = check(l, "k", 0);
        cr_assert(d.allowed, "%s denied a peek (retry %lld ms)", rl_algorithm_name(algorithms[a]),
                  d.retry_after_ms);
        cr_assert_eq(d.retry_after_ms, 0);
        cr_assert_eq(d.policies[0].remaining, 0);
        cr_assert_not(d.policies[0].violated);
        cr_assert_not(check(l, "k", 1).allowed, "%s", rl_algorithm_name(algorithms[a]));
        rl_sync_free(l);
    }
}

/* ---- Several policies ----------------------------------------------------------------------- */

Test(ratelimit, policies_are_all_or_nothing) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "wide;q=10;w=3600", "narrow;q=3;w=3600", NULL);
        cfg.deny_cache_entries = 0;
        rl_sync *l = limiter(&cfg);
        for (int i = 0; i < 3; i++) {
            cr_assert(check(l, "k", 1).allowed);
        }
        for (int i = 0; i < 5; i++) {
            rl_decision d = check(l, "k", 1);
            cr_assert_not(d.allowed);
            cr_assert_not(d.policies[0].violated);
            cr_assert(d.policies[1].violated);
            cr_assert_eq(rl_decision_violated(&d), 1);
        }
        rl_decision d = check(l, "k", 0);
        cr_assert_eq(d.policies[0].remaining, 7, "%s: the wide policy was charged by denials",
                     rl_algorithm_name(algorithms[a]));
        cr_assert_eq(d.policies[1].remaining, 0);
        rl_sync_free(l);
    }
}

/* ---- Refill and retry-after ----------------------------------------------------------------- */

Test(ratelimit, refill_over_an_hour_is_exact) {
    /* 1 per hour: the retry-after is the rest of the hour, to the millisecond. */
    for (size_t a = 0; a < 2; a++) {
        rl_config cfg = config(algorithms[a], "h;q=1;w=3600", NULL);
        rl_sync *l = limiter(&cfg);
        uint64_t t0 = sd_now_ms();
        cr_assert(check(l, "k", 1).allowed);
        rl_decision d = check(l, "k", 1);
        uint64_t spent = sd_now_ms() - t0;
        cr_assert_not(d.allowed);
        cr_assert_leq(d.retry_after_ms, 3600000);
        cr_assert_geq(d.retry_after_ms, 3600000 - (long long)spent - 1);
        cr_assert_eq(d.policies[0].reset_ms, d.retry_after_ms);
        rl_sync_free(l);
    }
}

Test(ratelimit, refill_of_a_fractional_interval_has_no_drift) {
    /* 7 per 3 s: one token every 428.571... ms, which no integer number of microseconds
     * represents. After the burst, each token comes back within ceil(3000 / 7) = 429 ms, and the
     * wait for all seven is at most the window: the fractions never add up. */
    for (size_t a = 0; a < 2; a++) {
        rl_config cfg = config(algorithms[a], "f;q=7;w=3", NULL);
        cfg.deny_cache_entries = 0;
        rl_sync *l = limiter(&cfg);
        cr_assert(check(l, "k", 7).allowed);
        uint64_t t0 = sd_now_ms();
        rl_decision one = check(l, "k", 1);
        rl_decision all = check(l, "k", 7);
        long long between = (long long)(sd_now_ms() - t0);
        cr_assert_not(one.allowed);
        cr_assert_gt(one.retry_after_ms, 0);
        cr_assert_leq(one.retry_after_ms, 429);
        cr_assert_leq(all.retry_after_ms, 3000);
        /* The seventh token arrives 6 intervals after the first: 6 * 3000 / 7 = 2571.4 ms, less
         * the time between the two checks, each rounded up to the millisecond. */
        long long gap = all.retry_after_ms - one.retry_after_ms;
        cr_assert(gap <= 2573 && gap >= 2570 - between, "%s: 6 intervals took %lld ms",
                  rl_algorithm_name(algorithms[a]), gap);
        rl_sync_free(l);
    }
}

Test(ratelimit, a_million_per_second_refills_per_microsecond) {
    for (size_t a = 0; a < 2; a++) {
        rl_config cfg = config(algorithms[a], "m;q=1000000;w=1", NULL);
        rl_sync *l = limiter(&cfg);
        rl_decision d = check(l, "k", 1000000);
        cr_assert(d.allowed);
        cr_assert_leq(d.policies[0].reset_ms, 1, "a token takes a microsecond");
        /* A round trip later, tokens have come back. */
        d = check(l, "k", 0);
        cr_assert_gt(d.policies[0].remaining, 0);
        cr_assert_lt(d.policies[0].remaining, 1000000);
        rl_sync_free(l);
    }
}

/* A client that waits exactly the retry-after it was given is admitted, for every algorithm. */
Test(ratelimit, waiting_the_retry_after_is_enough) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "r;q=3;w=1", NULL);
        rl_sync *l = limiter(&cfg);
        cr_assert(check(l, "k", 3).allowed);
        rl_decision d = check(l, "k", 2);
        if (algorithms[a] == RL_FIXED_WINDOW && d.allowed) {
            /* A window's edge fell between the two checks: empty the new window and ask again
             * (two edges within a second cannot fall between these checks). */
            cr_assert(check(l, "k", 1).allowed);
            d = check(l, "k", 2);
        }
        cr_assert_not(d.allowed, "%s", rl_algorithm_name(algorithms[a]));
        cr_assert_gt(d.retry_after_ms, 0);
        cr_assert_leq(d.retry_after_ms, 2000);
        sleep_ms(d.retry_after_ms);
        d = check(l, "k", 2);
        cr_assert(d.allowed, "%s: denied again after waiting the retry-after (source %s)",
                  rl_algorithm_name(algorithms[a]), rl_source_name(d.source));
        rl_sync_free(l);
    }
}

/* The token bucket and GCRA keep the same contract in different forms. */
Test(ratelimit, gcra_decides_like_the_token_bucket) {
    rl_config tb = config(RL_TOKEN_BUCKET, "x;q=50;w=86400", NULL);
    rl_config gc = config(RL_GCRA, "x;q=50;w=86400", NULL);
    rl_sync *a = limiter(&tb), *b = limiter(&gc);
    const long long costs[] = {1, 7, 0, 20, 30, 15, 1, 5, 50, 2, 6, 1};
    /* The two sequences run at slightly different instants, and a bucket's refill depends on
     * when each earlier check happened: retry-afters may differ by up to the largest gap seen
     * between a pair of checks (a ms or two, more on a loaded machine). */
    long long max_gap = 0;
    for (size_t i = 0; i < sizeof costs / sizeof costs[0]; i++) {
        uint64_t start = sd_now_ms();
        rl_decision x = check(a, "same", costs[i]), y = check(b, "same", costs[i]);
        long long gap = (long long)(sd_now_ms() - start);
        if (gap > max_gap)
            max_gap = gap;
        cr_assert_eq(x.allowed, y.allowed, "cost %lld", costs[i]);
        cr_assert_eq(x.policies[0].remaining, y.policies[0].remaining, "cost %lld", costs[i]);
        long long diff = x.retry_after_ms - y.retry_after_ms;
        cr_assert(diff >= -(max_gap + 2) && diff <= max_gap + 2,
                  "retry %lld vs %lld (pairs up to %lld ms apart)", x.retry_after_ms,
                  y.retry_after_ms, max_gap);
    }
    rl_sync_free(a);
    rl_sync_free(b);
}

Test(ratelimit, lowering_a_policy_clamps_existing_state) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_sync *l = lowered(algorithms[a], "p;q=100;w=3600", 20, "p;q=10;w=3600");
        rl_decision d = check(l, "k", 0);
        cr_assert_leq(d.policies[0].remaining, 10, "%s", rl_algorithm_name(algorithms[a]));
        int allowed = 0;
        for (int i = 0; i < 30; i++) {
            allowed += check(l, "k", 1).allowed;
        }
        cr_assert_leq(allowed, 10, "%s admitted %d under a quota of 10",
                      rl_algorithm_name(algorithms[a]), allowed);
        rl_sync_free(l);
    }
}

/* ---- Sliding windows ------------------------------------------------------------------------ */

/*
 * Clients hammer one key until 3q have been admitted (some 2.5 windows; longer on a slow
 * machine, which changes nothing: the run is counted in admissions, not in seconds). An
 * admission happened somewhere between the moment its check was sent and the moment the answer
 * came back; counting only admissions whose whole interval lies inside a window gives a lower
 * bound of what that window admitted, which the exact log must keep within q, including across
 * any edge.
 */
Test(ratelimit, sliding_log_never_admits_more_than_q_in_any_window) {
    enum { MAX = 60 }; /* 3q */
    rl_config cfg = config(RL_SLIDING_WINDOW_LOG, "s;q=20;w=1", NULL);
    cfg.deny_cache_entries = 0;
    rl_sync *l = limiter(&cfg);
    static uint64_t sent[MAX], got[MAX];
    int n = 0;
    uint64_t end = sd_now_ns() + 20000000000ULL; /* only against a limiter that admits nothing */
    while (n < MAX && sd_now_ns() < end) {
        uint64_t t = sd_now_ns();
        rl_decision d = check(l, "edge", 1);
        if (d.allowed) {
            sent[n] = t;
            got[n++] = sd_now_ns();
        }
    }
    cr_assert_geq(n, 40, "too few admissions (%d) to cross an edge", n);
    int worst = 0;
    for (int i = 0; i < n; i++) {
        int inside = 0;
        for (int j = i; j < n && got[j] <= sent[i] + 1000000000ULL; j++) {
            inside++;
        }
        worst = inside > worst ? inside : worst;
    }
    cr_assert_leq(worst, 20, "a window of 1 s admitted at least %d of 20", worst);
    rl_sync_free(l);
}

/* ---- Redis state ---------------------------------------------------------------------------- */

/* Two policies, and one alone (a path of its own for GCRA, whose INCRBY creates a missing key
 * without a TTL), with allowed and denied checks. */
Test(ratelimit, every_key_has_a_ttl) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "a;q=5;w=60", "b;q=50;w=86400", NULL);
        rl_sync *l = limiter(&cfg);
        for (int i = 0; i < 8; i++) {
            check(l, i % 2 ? "even" : "odd", 1);
        }
        rl_sync_free(l);
        cfg = config(algorithms[a], "c;q=5;w=60", NULL);
        l = limiter(&cfg);
        check(l, "solo", 1); /* a new key, checked once: nothing later can mend its TTL */
        for (int i = 0; i < 8; i++) {
            check(l, "busy", 1);
        }
        rl_sync_free(l);
    }
    /* KEYS answers for one node: ask each master of a cluster. */
    sd_redis *admin = test_redis_connect(test_target_url(server));
    size_t total = 0;
    for (int n = 0; n < test_target_nodes(server); n++) {
        redisReply *keys = test_target_node_command(server, n, "KEYS rl:*");
        total += keys->elements;
        for (size_t i = 0; i < keys->elements; i++) {
            long long ttl = test_redis_int(admin, "PTTL %s", keys->element[i]->str);
            cr_assert_gt(ttl, 0, "%s has no TTL (%lld)", keys->element[i]->str, ttl);
            cr_assert_leq(ttl, 2 * 86400 * 1000LL, "%s", keys->element[i]->str);
            const char *k = keys->element[i]->str;
            cr_assert(strstr(k, "{even}:") || strstr(k, "{odd}:") || strstr(k, "{solo}:") ||
                          strstr(k, "{busy}:"),
                      "%s has no hash tag", k);
        }
        freeReplyObject(keys);
    }
    cr_assert_eq(total, 6 * NALGS, "%zu algorithms x (2 keys x 2 policies + 2 keys), got %zu",
                 NALGS, total);
    sd_redis_free(admin);
}

/*
 * A key kept as one string expires at the end of the second in which its value stops mattering
 * (rl-common.lua, store()): for GCRA the TAT, for the token bucket the instant it is full again,
 * for the sliding-window counter the end of the next window. That holds whether the last write
 * set a new expiry or kept the old one, so the key never expires early and lives at most a second
 * longer. PEXPIRETIME and the value are read in one script, so no time passes between. Checks
 * every 5 ms at q = 20/s (and 7 per 3 s, whose GCRA TAT carries a remainder), allowed and
 * denied, until the expiry has moved at least once.
 */
static long long needed_us(rl_algorithm a, const char *value, long long w_s, long long now_us) {
    if (a == RL_GCRA || a == RL_TOKEN_BUCKET) {
        /* The TAT, or the instant the bucket is full again: the same number (token-bucket.lua). */
        return strtoll(value, NULL, 10);
    }
    /* The counter's integer form, whose first digit is its window's index modulo 10: the
     * window of now, or the one before if a window began since the check. */
    long long v = strtoll(value, NULL, 10), now_index = now_us / (w_s * 1000000);
    long long index = now_index - ((now_index - v / 100000000000000LL) % 10 + 10) % 10;
    cr_assert_leq(now_index - index, 1, "value %s read at window %lld", value, now_index);
    return (index + 2) * w_s * 1000000 - 1;
}

Test(ratelimit, keys_expire_on_the_second_after_their_value_stops_mattering) {
    const struct {
        rl_algorithm a;
        const char *policy;
        long long w;
    } cases[] = {{RL_GCRA, "g;q=20;w=1", 1},
                 {RL_GCRA, "h;q=7;w=3", 3},
                 {RL_TOKEN_BUCKET, "g;q=20;w=1", 1},
                 {RL_TOKEN_BUCKET, "h;q=7;w=3", 3},
                 {RL_SLIDING_WINDOW_COUNTER, "g;q=20;w=1", 1}};
    sd_redis *admin = test_redis_connect(test_target_url(server));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        rl_config cfg = config(cases[c].a, cases[c].policy, NULL);
        rl_sync *l = limiter(&cfg);
        char key[RL_REDIS_KEY_MAX];
        cr_assert_gt(rl_config_key(&cfg, 0, "grid", key, sizeof key), 0);
        long long seconds = 0, last = -1;
        int allowed = 0;
        int i;
        /* Until the expiry has moved to a second second (bounded by time, not by a count of
         * checks: on a loaded machine 200 checks may all fall in one second). */
        uint64_t give_up = sd_now_ms() + 20000;
        for (i = 0; i < 40 || (seconds < 2 && sd_now_ms() < give_up); i++) {
            allowed += check(l, "grid", 1).allowed;
            redisReply *r =
                sd_redis_command(admin, NULL, "EVAL %s 1 %s",
                                 "local t = redis.call('TIME') return {redis.call('GET', KEYS[1]), "
                                 "redis.call('PEXPIRETIME', KEYS[1]), t[1], t[2]}",
                                 key);
            cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 4);
            cr_assert_eq(r->element[0]->type, REDIS_REPLY_STRING, "%s is gone", key);
            long long now_us = strtoll(r->element[2]->str, NULL, 10) * 1000000 +
                               strtoll(r->element[3]->str, NULL, 10);
            long long needed = needed_us(cases[c].a, r->element[0]->str, cases[c].w, now_us);
            long long expires_ms = r->element[1]->integer;
            cr_assert_eq(expires_ms, (needed / 1000000 + 1) * 1000,
                         "%s %s: value '%s' matters until %lld us, key expires at %lld ms",
                         rl_algorithm_name(cases[c].a), cases[c].policy, r->element[0]->str, needed,
                         expires_ms);
            freeReplyObject(r);
            if (expires_ms != last) {
                seconds++;
                last = expires_ms;
            }
            sleep_ms(5);
        }
        cr_assert_gt(allowed, 0);
        cr_assert_lt(allowed, i, "%s never denied", cases[c].policy);
        cr_assert_geq(seconds, 2, "the expiry stayed in one second: the test proves nothing");
        rl_sync_free(l);
    }
    sd_redis_free(admin);
}

/*
 * Keys may hold any bytes, braces included. Every Redis key of one check must carry one
 * well-formed hash tag, the same for every policy, so that the check stays on one Redis Cluster
 * slot. Written raw, the key "}x" gave "rl:{}x}:burst:tb": an empty tag, so Redis Cluster hashes
 * each whole key, the policies land in different slots, and the script fails with CROSSSLOT.
 */
Test(ratelimit, hash_tags_keep_every_key_of_a_check_in_one_slot) {
    const char *keys[] = {"alice", "}x", "x}",    "{x",   "{", "}",
                          "{}",    "}{", "a{b}c", "{{}}", "%", "%7D"};
    rl_config cfg =
        config(RL_TOKEN_BUCKET, "burst;q=1;w=1", "daily;q=5;w=86400", "z;q=2;w=2", NULL);
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        int slot[3];
        for (size_t i = 0; i < 3; i++) {
            char buf[RL_REDIS_KEY_MAX];
            int n = rl_config_key(&cfg, i, keys[k], buf, sizeof buf);
            cr_assert_gt(n, 0);
            int open = 0, close = 0;
            for (int j = 0; j < n; j++) {
                open += buf[j] == '{';
                close += buf[j] == '}';
            }
            cr_assert(open == 1 && close == 1, "key '%s' gave %s", keys[k], buf);
            slot[i] = sd_redis_key_slot(buf, (size_t)n);
        }
        cr_assert(slot[0] == slot[1] && slot[1] == slot[2], "key '%s': slots %d, %d, %d", keys[k],
                  slot[0], slot[1], slot[2]);
    }
    /* Ordinary keys stay readable; escaped ones stay distinct from the escapes' own text. */
    char a[RL_REDIS_KEY_MAX], b[RL_REDIS_KEY_MAX];
    rl_config_key(&cfg, 0, "alice", a, sizeof a);
    cr_assert_str_eq(a, "rl:{alice}:burst:tb2");
    rl_config_key(&cfg, 0, "}x", a, sizeof a);
    rl_config_key(&cfg, 0, "%7Dx", b, sizeof b);
    cr_assert_str_neq(a, b);
    /* The longest key fits the documented buffer even when every byte is escaped. */
    char longest[RL_KEY_MAX + 1];
    memset(longest, '}', RL_KEY_MAX);
    longest[RL_KEY_MAX] = '\0';
    cfg.policies[0] = (rl_policy){"a-policy-name-of-31-characters.", 1, 1};
    snprintf(cfg.prefix, sizeof cfg.prefix, "%063d", 0);
    cfg.algorithm = RL_GCRA; /* the longest algorithm tag */
    static char big[RL_REDIS_KEY_MAX];
    cr_assert_gt(rl_config_key(&cfg, 0, longest, big, sizeof big), 0);
}

/*
 * Shared tags (cfg.tags = N): the name starts with the key's tag, a number whose slot is the
 * middle of the tag's N-th of the slot space, so that the tags lie evenly over the masters; the
 * client key stays in its own braces, and every policy of a check keeps one slot.
 */
Test(ratelimit, shared_tags_lie_evenly_over_the_slots) {
    rl_config cfg = config(RL_TOKEN_BUCKET, "burst;q=1;w=1", "daily;q=5;w=86400", NULL);
    char a[RL_REDIS_KEY_MAX];
    cr_assert_eq(rl_config_tag(&cfg, "alice"), -1);
    cfg.tags = 3;
    rl_config_key(&cfg, 0, "alice", a, sizeof a);
    cr_assert_str_eq(a, "rl:{16418}{alice}:burst:tb2");
    static const int counts[] = {1, 3, 6, 12, 1000, RL_MAX_TAGS};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        cfg.tags = counts[i];
        static unsigned char used[RL_MAX_TAGS];
        memset(used, 0, sizeof used);
        int distinct = 0;
        for (int k = 0; k < 20000; k++) {
            char key[32];
            snprintf(key, sizeof key, "user%d", k);
            int t = rl_config_tag(&cfg, key);
            cr_assert(t >= 0 && t < cfg.tags);
            distinct += !used[t];
            used[t] = 1;
            int slot[2];
            for (size_t p = 0; p < 2; p++) {
                int n = rl_config_key(&cfg, p, key, a, sizeof a);
                cr_assert_gt(n, 0);
                slot[p] = sd_redis_key_slot(a, (size_t)n);
            }
            int want = (int)((2 * (long long)t + 1) * 16384 / (2 * (long long)cfg.tags));
            cr_assert(slot[0] == want && slot[1] == want, "%d tags, key %s: slots %d, %d, not %d",
                      cfg.tags, key, slot[0], slot[1], want);
        }
        if (cfg.tags <= 1000) {
            cr_assert_eq(distinct, cfg.tags, "%d tags, %d used", cfg.tags, distinct);
        }
    }
    /* The longest key and tag fit the documented buffer. */
    char longest[RL_KEY_MAX + 1];
    memset(longest, '}', RL_KEY_MAX);
    longest[RL_KEY_MAX] = '\0';
    cfg.policies[0] = (rl_policy){"a-policy-name-of-31-characters.", 1, 1};
    snprintf(cfg.prefix, sizeof cfg.prefix, "%063d", 0);
    cfg.algorithm = RL_GCRA;
    static char big[RL_REDIS_KEY_MAX];
    cfg.tags = RL_MAX_TAGS;
    cr_assert_gt(rl_config_key(&cfg, 0, longest, big, sizeof big), 0);
    char err[200];
    cfg.tags = RL_MAX_TAGS + 1;
    cr_assert_neq(rl_config_validate(&cfg, err, sizeof err), 0);
    cfg.tags = -1;
    cr_assert_neq(rl_config_validate(&cfg, err, sizeof err), 0);
}

/* A key with braces is limited like any other, under its escaped name. */
Test(ratelimit, keys_with_braces_are_limited_under_an_escaped_name) {
    sd_redis *admin = test_redis_connect(test_target_url(server));
    rl_config cfg = config(RL_TOKEN_BUCKET, "b;q=2;w=3600", NULL);
    rl_sync *l = limiter(&cfg);
    cr_assert(check(l, "}x{", 1).allowed);
    cr_assert(check(l, "}x{", 1).allowed);
    cr_assert_not(check(l, "}x{", 1).allowed);
    cr_assert(check(l, "%7Dx%7B", 1).allowed, "a different key shared the state");
    cr_assert_eq(test_redis_int(admin, "EXISTS %s", "rl:{%7Dx%7B}:b:tb2"), 1);
    rl_sync_free(l);
    sd_redis_free(admin);
}

Test(ratelimit, scripts_flushed_from_redis_are_loaded_again) {
    sd_redis *admin = test_redis_connect(test_target_url(server));
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "f;q=5;w=3600", NULL);
        rl_sync *l = limiter(&cfg);
        cr_assert(check(l, "k", 2).allowed);
        redisReply *r = sd_redis_command(admin, NULL, "SCRIPT FLUSH");
        cr_assert_not_null(r);
        freeReplyObject(r);
        rl_decision d = check(l, "k", 2);
        cr_assert_eq(d.source, RL_SOURCE_REDIS);
        cr_assert(d.allowed);
        cr_assert_eq(d.policies[0].remaining, 1, "state lost across SCRIPT FLUSH");
        rl_sync_free(l);
    }
    sd_redis_free(admin);
}

/* ---- The deny cache ------------------------------------------------------------------------- */

Test(ratelimit, deny_cache_answers_until_the_retry_after_and_no_longer) {
    rl_config cfg = config(RL_TOKEN_BUCKET, "d;q=2;w=1", NULL);
    rl_sync *l = limiter(&cfg);
    cr_assert(check(l, "k", 2).allowed);
    rl_decision first = check(l, "k", 2);
    cr_assert_not(first.allowed);
    cr_assert_eq(first.source, RL_SOURCE_REDIS);
    rl_decision again = check(l, "k", 2);
    cr_assert_eq(again.source, RL_SOURCE_DENY_CACHE);
    cr_assert_not(again.allowed);
    cr_assert_leq(again.retry_after_ms, first.retry_after_ms);
    /* A smaller cost may pass sooner: the cache does not answer it. */
    cr_assert_eq(check(l, "k", 1).source, RL_SOURCE_REDIS);
    rl_stats s;
    rl_sync_stats(l, &s);
    cr_assert_eq(s.deny_cache_hits, 1);
    sleep_ms(first.retry_after_ms);
    rl_decision later = check(l, "k", 2);
    cr_assert(later.allowed, "denied past the retry-after (source %s)",
              rl_source_name(later.source));
    rl_sync_free(l);
}

/* The cache remembers a denial of cost 3; a cost of 5 under q = 3 is still "never", not that
 * denial's retry-after (it once got the whole window, 3,600,000 ms, from the cache). */
Test(ratelimit, deny_cache_never_answers_a_cost_above_the_quota) {
    rl_config cfg = config(RL_TOKEN_BUCKET, "d;q=3;w=3600", NULL);
    rl_sync *l = limiter(&cfg);
    cr_assert(check(l, "k", 3).allowed);
    rl_decision d = check(l, "k", 3);
    cr_assert_not(d.allowed);
    cr_assert_eq(d.source, RL_SOURCE_REDIS);
    cr_assert_eq(check(l, "k", 3).source, RL_SOURCE_DENY_CACHE, "the denial was not cached");
    d = check(l, "k", 5);
    cr_assert_not(d.allowed);
    cr_assert_eq(d.retry_after_ms, RL_NEVER, "retry %lld ms from %s", d.retry_after_ms,
                 rl_source_name(d.source));
    cr_assert(d.policies[0].violated);
    rl_sync_free(l);
}

/* ---- The asynchronous limiter --------------------------------------------------------------- */

typedef struct tally {
    int done, allowed, redis;
} tally;

static void count_cb(const rl_decision *d, void *udata) {
    tally *t = udata;
    t->done++;
    t->allowed += d->allowed;
    t->redis += d->source == RL_SOURCE_REDIS || d->source == RL_SOURCE_DENY_CACHE;
}

/* An asynchronous limiter on loop, connected. */
static rl_limiter *async_limiter(uv_loop_t *loop, const rl_config *cfg) {
    rl_limiter *l = NULL;
    cr_assert_eq(rl_limiter_new(loop, &url, cfg, &l), 0);
    cr_assert_eq(rl_limiter_wait_connected(l, 2000), 0);
    return l;
}

/* Runs loop until n checks counted in t are answered. */
static void await_tally(uv_loop_t *loop, const tally *t, int n) {
    while (t->done < n) {
        uv_run(loop, UV_RUN_ONCE);
    }
}

/* Frees the limiter and lets loop close its handles. */
static void async_free(uv_loop_t *loop, rl_limiter *l) {
    rl_limiter_free(l);
    uv_run(loop, UV_RUN_DEFAULT);
}

Test(ratelimit, async_checks_are_batched_and_exact) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "b;q=100;w=86400", NULL);
        cfg.max_calls = 2;
        rl_limiter *l = async_limiter(&loop, &cfg);
        tally t = {0, 0, 0};
        for (int i = 0; i < 300; i++) {
            cr_assert_eq(rl_limiter_check(l, "hot", 1, count_cb, &t), 0);
        }
        await_tally(&loop, &t, 300);
        cr_assert_eq(t.redis, 300, "%d of 300 fell back", 300 - t.redis);
        cr_assert_eq(t.allowed, 100, "%s admitted %d", rl_algorithm_name(algorithms[a]), t.allowed);
        rl_stats s;
        rl_limiter_stats(l, &s);
        cr_assert_lt(s.script_calls, 300, "no batching: %llu calls",
                     (unsigned long long)s.script_calls);
        /* All 300 were queued before any reply: each went to Redis in exactly one batch of at
         * most max_batch checks. */
        cr_assert_eq(s.batched_checks, 300, "%llu checks in batches",
                     (unsigned long long)s.batched_checks);
        cr_assert_geq(s.script_calls, (300 + (uint64_t)cfg.max_batch - 1) / cfg.max_batch);
        async_free(&loop, l);
    }
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open");
}

/* A value this script did not write under a limiter's key, a foreign string or a key of another
 * type (a hash), reads as a new key and is overwritten. MGET reads both as no key; GCRA's fast
 * path, whose INCRBY fails on both (and GET on the hash), must hand them to the general way
 * rather than fail the whole script. */
Test(ratelimit, a_foreign_value_or_type_reads_as_a_new_key) {
    rl_algorithm strings[] = {RL_GCRA, RL_TOKEN_BUCKET, RL_SLIDING_WINDOW_COUNTER, RL_FIXED_WINDOW};
    const char *plant[][2] = {{"SET %s %s", "not a state"}, {"HSET %s field %s", "value"}};
    sd_redis *admin = test_redis_connect(test_target_url(server));
    for (size_t a = 0; a < 4; a++) {
        for (size_t p = 0; p < 2; p++) {
            rl_config cfg = config(strings[a], "f;q=5;w=3600", NULL);
            char key[RL_REDIS_KEY_MAX];
            cr_assert_gt(rl_config_key(&cfg, 0, "foreign", key, sizeof key), 0);
            test_redis_int(admin, "DEL %s", key);
            redisReply *r = sd_redis_command(admin, NULL, plant[p][0], key, plant[p][1]);
            cr_assert(r && r->type != REDIS_REPLY_ERROR);
            freeReplyObject(r);
            rl_sync *l = limiter(&cfg);
            rl_decision d = check(l, "foreign", 1);
            const char *name = rl_algorithm_name(strings[a]);
            cr_assert(d.allowed, "%s after %s", name, plant[p][0]);
            cr_assert_eq(d.policies[0].remaining, 4, "%s after %s", name, plant[p][0]);
            r = sd_redis_command(admin, NULL, "GET %s", key);
            cr_assert(r && r->type == REDIS_REPLY_STRING, "%s left the %s", name, plant[p][0]);
            cr_assert_str_neq(r->str, "not a state", "%s left it", name);
            freeReplyObject(r);
            rl_sync_free(l);
        }
    }
    sd_redis_free(admin);
}

/* GCRA keeps a TAT with a remainder when the emission interval is not a whole number of
 * microseconds (3 spent of 7 per 3 s). Read under a policy whose interval is whole (3 per 3 s),
 * where the fast path's INCRBY cannot take it, the value must still count: 3 units of 3/7 s are
 * more than one unit of 1 s spent, so one more check empties the bucket. Read as a new key, it
 * would leave 2. */
Test(ratelimit, gcra_reads_a_remainder_left_by_another_policy) {
    rl_sync *l = lowered(RL_GCRA, "r;q=7;w=3", 3, "r;q=3;w=3");
    rl_decision d = check(l, "k", 1);
    cr_assert(d.allowed);
    cr_assert_eq(d.policies[0].remaining, 0);
    /* Charged under the new policy, the value is a lone integer again (the TAT rounded up by
     * under 1 us), so later checks of the key take the fast path instead of failing INCRBY. */
    rl_config cfg = config(RL_GCRA, "r;q=3;w=3", NULL);
    char key[RL_REDIS_KEY_MAX];
    cr_assert_gt(rl_config_key(&cfg, 0, "k", key, sizeof key), 0);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    redisReply *r = sd_redis_command(admin, NULL, "GET %s", key);
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    cr_assert_null(strchr(r->str, ' '), "value '%s' kept its remainder", r->str);
    freeReplyObject(r);
    sd_redis_free(admin);
    cr_assert_not(check(l, "k", 1).allowed);
    rl_sync_free(l);
}

/* A shorter window clamps what was spent under the longer one: the whole quota spent under 10 per
 * hour is, under 10 per minute, at most a minute's worth, and the next unit comes within a
 * minute. (GCRA's TAT then lies beyond the new window, which its fast path leaves to the general
 * way: pushed from there it would give a retry of most of an hour.) The sliding-window counter
 * and the fixed window number their windows by their length, so they start afresh instead
 * (README, "policy changes"), or, when the stored tag (fixed-window.lua,
 * sliding-window-counter.lua) happens to name a new window, keep the count at most that long. */
Test(ratelimit, shortening_the_window_clamps_existing_state) {
    for (size_t a = 0; a < NALGS; a++) {
        rl_sync *l = lowered(algorithms[a], "p;q=10;w=3600", 10, "p;q=10;w=60");
        rl_decision d = check(l, "k", 1);
        if (algorithms[a] == RL_SLIDING_WINDOW_COUNTER || algorithms[a] == RL_FIXED_WINDOW) {
            /* Unless the stored window's tag happens to name one of the new windows (one time in
             * five for the counter's one digit, where the count then lasts two new windows at
             * most; one in 10,000 for the fixed window's four). */
            cr_assert(d.allowed || d.retry_after_ms <= 120000, "%s: retry %lld ms",
                      rl_algorithm_name(algorithms[a]), d.retry_after_ms);
            rl_sync_free(l);
            continue;
        }
        cr_assert_not(d.allowed, "%s", rl_algorithm_name(algorithms[a]));
        cr_assert_gt(d.retry_after_ms, 0);
        cr_assert_leq(d.retry_after_ms, 60000, "%s: retry %lld ms under a 60 s window",
                      rl_algorithm_name(algorithms[a]), d.retry_after_ms);
        rl_sync_free(l);
    }
}

/* Several policies, one key checked many times in each batch: every check of a batch sees the
 * charges of the checks before it in that batch (the MGET at the start of the script is stale
 * by then), and the tighter policy caps the total. */
Test(ratelimit, async_batches_of_several_policies_are_exact) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    for (size_t a = 0; a < NALGS; a++) {
        rl_config cfg = config(algorithms[a], "wide;q=100;w=86400", "tight;q=37;w=3600", NULL);
        cfg.deny_cache_entries = 0;
        rl_limiter *l = async_limiter(&loop, &cfg);
        tally t = {0, 0, 0};
        for (int i = 0; i < 200; i++) {
            cr_assert_eq(rl_limiter_check(l, i % 4 ? "multi" : "other", 1, count_cb, &t), 0);
        }
        await_tally(&loop, &t, 200);
        cr_assert_eq(t.redis, 200, "%d of 200 fell back", 200 - t.redis);
        cr_assert_eq(t.allowed, 2 * 37, "%s admitted %d", rl_algorithm_name(algorithms[a]),
                     t.allowed);
        async_free(&loop, l);
    }
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open");
}

/* The largest batch the command accepts (--max-batch 4096) with the most policies: 4096 checks
 * of 8 keys each in one script call, more values than Lua can unpack at once. Every check is
 * decided by Redis, and exactly. */
Test(ratelimit, the_largest_batch_is_decided_whole) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    rl_algorithm big[] = {RL_GCRA, RL_TOKEN_BUCKET, RL_SLIDING_WINDOW_COUNTER, RL_FIXED_WINDOW};
    for (size_t a = 0; a < 4; a++) {
        rl_config cfg = config(big[a], "p1;q=1000;w=3600", "p2;q=1001;w=3600", "p3;q=1002;w=3600",
                               "p4;q=1003;w=3600", "p5;q=1004;w=3600", "p6;q=1005;w=3600",
                               "p7;q=1006;w=3600", "p8;q=1007;w=3600", NULL);
        cfg.max_batch = 4096;
        cfg.max_calls = 1;
        cfg.deny_cache_entries = 0;
        cfg.tags = 1; /* every key in one slot: one call on a Redis Cluster too */
        /* One script of 32,768 keys: seconds on a loaded machine under the sanitizers. */
        cfg.deadline_ms = 30000;
        cfg.reply_timeout_ms = 30000;
        rl_limiter *l = async_limiter(&loop, &cfg);
        tally t = {0, 0, 0};
        char key[32];
        for (int i = 0; i < 4096; i++) {
            snprintf(key, sizeof key, "big%d", i % 2048);
            cr_assert_eq(rl_limiter_check(l, key, 600, count_cb, &t), 0);
        }
        await_tally(&loop, &t, 4096);
        cr_assert_eq(t.redis, 4096, "%s: %d of 4096 fell back", rl_algorithm_name(big[a]),
                     4096 - t.redis);
        /* Each key is checked twice at cost 600 against q = 1000: the first passes, the
         * second does not. */
        cr_assert_eq(t.allowed, 2048, "%s admitted %d", rl_algorithm_name(big[a]), t.allowed);
        rl_stats s;
        rl_limiter_stats(l, &s);
        cr_assert_eq(s.script_calls, 1, "%llu calls", (unsigned long long)s.script_calls);
        async_free(&loop, l);
    }
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open");
}

/* ---- The sliding-window counter's error ----------------------------------------------------- */

typedef struct admissions {
    int n;
    uint64_t sent[4096], got[4096];
} admissions;

/* One check of cost 1 on key; records the admission's interval. Returns allowed. */
static int timed_check(rl_sync *l, const char *key, admissions *a) {
    uint64_t t = sd_now_ns();
    rl_decision d = check(l, key, 1);
    if (d.allowed && a->n < 4096) {
        a->sent[a->n] = t;
        a->got[a->n++] = sd_now_ns();
    }
    return d.allowed;
}

/* The most admissions certainly inside one window of w_ns (see the sliding-log test). */
static int most_in_a_window(const admissions *a, uint64_t w_ns) {
    int worst = 0;
    for (int i = 0; i < a->n; i++) {
        int inside = 0;
        for (int j = i; j < a->n && a->got[j] <= a->sent[i] + w_ns; j++) {
            inside++;
        }
        worst = inside > worst ? inside : worst;
    }
    return worst;
}

/* Sleeps until the wall clock (which Redis's TIME also reads on this machine) is `at_ms` into a
 * second. */
static void sleep_until_ms_of_second(long at_ms) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long ms = now.tv_nsec / 1000000;
    sleep_ms(ms < at_ms ? at_ms - ms : 1000 - ms + at_ms);
}

/* ---- The fixed window ---------------------------------------------------------------------- */

static long long redis_time_us(sd_redis *admin);

/*
 * The fixed window's known price: q checks just before a window's edge and q more just after it
 * are all admitted, 2q within much less than a window, where the sliding-window log admits q and
 * then nothing. The span is Redis's own clock from before the first burst to after the second;
 * a machine too slow to fit both bursts in under a window (or to start before the edge) only
 * makes the test try again, on a new key.
 */
Test(ratelimit, fixed_window_admits_2q_across_an_edge, .timeout = 60) {
    const rl_algorithm algs[] = {RL_FIXED_WINDOW, RL_SLIDING_WINDOW_LOG};
    sd_redis *admin = test_redis_connect(test_target_url(server));
    int after_edge[2];
    for (int a = 0; a < 2; a++) {
        rl_config cfg = config(algs[a], "edge;q=10;w=1", NULL);
        cfg.deny_cache_entries = 0;
        rl_sync *l = limiter(&cfg);
        int tries, before = 0;
        long long span = 0;
        for (tries = 0; tries < 8; tries++) {
            char key[32];
            snprintf(key, sizeof key, "edge%d", tries);
            /* Start 700 ms into a second of Redis's clock, 300 ms before the edge. */
            long long into = redis_time_us(admin) % 1000000;
            sleep_ms((into < 700000 ? 700000 - into : 1700000 - into) / 1000);
            long long t0 = redis_time_us(admin), edge = (t0 / 1000000 + 1) * 1000000;
            before = after_edge[a] = 0;
            for (int i = 0; i < 10; i++) {
                before += check(l, key, 1).allowed;
            }
            int one_more = check(l, key, 1).allowed;
            if (redis_time_us(admin) >= edge) {
                continue; /* the first burst (and the check past q) was not all before the edge */
            }
            cr_assert_not(one_more, "%s: q + 1 in one window", rl_algorithm_name(algs[a]));
            long long now;
            while ((now = redis_time_us(admin)) < edge) {
                sleep_ms((edge - now) / 1000 + 1);
            }
            for (int i = 0; i < 10; i++) {
                after_edge[a] += check(l, key, 1).allowed;
            }
            span = redis_time_us(admin) - t0;
            if (span < 1000000) {
                break;
            }
        }
        cr_assert_lt(tries, 8, "%s: no try fitted both bursts in a window",
                     rl_algorithm_name(algs[a]));
        cr_assert_eq(before, 10);
        fprintf(stderr, "%s: 10 admitted before a window's edge, %d after it, within %lld ms\n",
                rl_algorithm_name(algs[a]), after_edge[a], span / 1000);
        rl_sync_free(l);
    }
    sd_redis_free(admin);
    cr_assert_eq(after_edge[0], 10, "the fixed window admitted %d after the edge", after_edge[0]);
    cr_assert_eq(after_edge[1], 0, "the log admitted %d after the edge", after_edge[1]);
}

/* A fixed window's key holds tag * 10^11 + count (fixed-window.lua) and expires when its window
 * ends, a multiple of W since the epoch, whichever way it was written: the fast way's SET for a
 * single policy, the general way's for two. A denial leaves both value and expiry alone. Read
 * with TIME in one script, so no time passes between. */
Test(ratelimit, fixed_window_key_expires_at_the_window_end) {
    sd_redis *admin = test_redis_connect(test_target_url(server));
    for (int two = 0; two < 2; two++) {
        rl_config cfg = two ? config(RL_FIXED_WINDOW, "e;q=3;w=7", "other;q=100;w=60", NULL)
                            : config(RL_FIXED_WINDOW, "e;q=3;w=7", NULL);
        cfg.deny_cache_entries = 0;
        rl_sync *l = limiter(&cfg);
        const char *name = two ? "end2" : "end1";
        char key[RL_REDIS_KEY_MAX];
        cr_assert_gt(rl_config_key(&cfg, 0, name, key, sizeof key), 0);
        long long count = 0, expires = -1;
        for (int i = 0; i < 5; i++) {
            rl_decision d = check(l, name, 1);
            redisReply *r = sd_redis_command(
                admin, NULL, "EVAL %s 1 %s",
                "local t = redis.call('TIME') return {t[1], t[2], redis.call('GET', KEYS[1]), "
                "redis.call('PEXPIRETIME', KEYS[1])}",
                key);
            cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 4);
            long long now = strtoll(r->element[0]->str, NULL, 10) * 1000000 +
                            strtoll(r->element[1]->str, NULL, 10);
            long long index = now / 7000000;
            long long value = strtoll(r->element[2]->str, NULL, 10);
            long long ms = r->element[3]->integer;
            freeReplyObject(r);
            if (expires >= 0 && ms != expires) {
                count = 0; /* a new window began between two checks */
            }
            count += d.allowed;
            cr_assert_eq(d.allowed, count <= 3 && d.allowed, "policies %d", two + 1);
            cr_assert_eq(ms, (index + 1) * 7000, "key expires at %lld ms, window ends at %lld ms",
                         ms, (index + 1) * 7000);
            cr_assert_eq(value, (index % 10000) * 100000000000LL + count, "value %lld", value);
            expires = ms;
        }
        cr_assert_leq(count, 3);
        rl_sync_free(l);
    }
    sd_redis_free(admin);
}

/* The counter's integer form holds counts below 10^7 (sliding-window-counter.lua); a quota of
 * 5 * 10^6 or more is kept in the four-number form, which the fast way leaves to the general way,
 * and its counts still add up. Below that, the integer form. */
Test(ratelimit, sliding_counter_keeps_large_quotas_in_four_numbers) {
    sd_redis *admin = test_redis_connect(test_target_url(server));
    const char *policies[] = {"big;q=6000000;w=1500", "small;q=4999999;w=1500"};
    for (int i = 0; i < 2; i++) {
        rl_config cfg = config(RL_SLIDING_WINDOW_COUNTER, policies[i], NULL);
        rl_sync *l = limiter(&cfg);
        long long q = cfg.policies[0].quota;
        cr_assert_eq(check(l, "large", 1000).policies[0].remaining, q - 1000);
        cr_assert_eq(check(l, "large", 1).policies[0].remaining, q - 1001);
        cr_assert_eq(check(l, "large", 0).policies[0].remaining, q - 1001);
        char key[RL_REDIS_KEY_MAX];
        cr_assert_gt(rl_config_key(&cfg, 0, "large", key, sizeof key), 0);
        redisReply *r = sd_redis_command(admin, NULL, "GET %s", key);
        cr_assert(r && r->type == REDIS_REPLY_STRING);
        cr_assert_eq(strchr(r->str, ' ') != NULL, i == 0, "%s: '%s'", policies[i], r->str);
        freeReplyObject(r);
        rl_sync_free(l);
    }
    sd_redis_free(admin);
}

/*
 * The counter assumes the previous window's units were spread evenly. Traffic bunched at the
 * end of a window breaks that: a burst of q just before an edge, then steady traffic after it,
 * lets nearly 2q through in the one-second window straddling the edge. The exact log admits q.
 * Both figures are printed for the README; the assertions hold each algorithm to its bound.
 */
Test(ratelimit, sliding_counter_error_is_measured_and_below_2q, .timeout = 30) {
    const rl_algorithm algs[] = {RL_SLIDING_WINDOW_COUNTER, RL_SLIDING_WINDOW_LOG};
    int worst[2];
    for (int a = 0; a < 2; a++) {
        rl_config cfg = config(algs[a], "edge;q=50;w=1", NULL);
        cfg.deny_cache_entries = 0;
        rl_sync *l = limiter(&cfg);
        static admissions adm;
        /* The burst: q checks 900 ms into a window, then one check every 5 ms for 1.5 s. The
         * burst must start in the window's last 100 ms and end before its edge (a wall-clock
         * second: Redis's TIME reads the same clock): on a machine too loaded for that (a sleep
         * that overslept into the next second, 50 checks that took over 100 ms), it runs again
         * on a fresh key, five times at most. */
        for (int attempt = 0; attempt < 5; attempt++) {
            char key[32];
            snprintf(key, sizeof key, "bunched-%d", attempt);
            adm.n = 0;
            sleep_until_ms_of_second(900);
            struct timespec start;
            clock_gettime(CLOCK_REALTIME, &start);
            for (int i = 0; i < 50; i++) {
                timed_check(l, key, &adm);
            }
            int before_the_edge = start.tv_nsec >= 900000000L && time(NULL) == start.tv_sec;
            uint64_t end = sd_now_ns() + 1500000000ULL;
            while (sd_now_ns() < end) {
                timed_check(l, key, &adm);
                sleep_ms(5);
            }
            worst[a] = most_in_a_window(&adm, 1000000000ULL);
            if (before_the_edge) {
                break;
            }
        }
        rl_sync_free(l);
    }
    fprintf(stderr,
            "sliding-window-counter: at least %d admitted in one 1 s window with q=50 (bunched "
            "traffic); sliding-window-log: %d\n",
            worst[0], worst[1]);
    cr_assert_leq(worst[1], 50, "the log admitted %d", worst[1]);
    cr_assert_gt(worst[0], 50, "the counter's known error did not show (%d)", worst[0]);
    cr_assert_lt(worst[0], 100, "the counter admitted %d, beyond 2q", worst[0]);
}

/*
 * Under steady overload (4q per second, evenly spaced) the counter's estimate is close once the
 * first two windows have passed: the first admissions of a new key come as a burst (the whole
 * quota at once), which is the bunched case above. Only windows after that are measured, and
 * the figure printed is the README's.
 *
 * How steady the traffic is depends on the machine: next to CPU hogs a check every 5 ms may
 * become one every 20 ms, below q per second (then the counter rightly admits them all), or come
 * in bunches after a stall (then the counter's known error shows). So this test asserts only what
 * holds whatever the pace: at least 70% of what was offered is admitted, up to the 3q of three
 * windows (a counter whose previous window's weight did not decay would admit half; a cluster
 * under ASan on a busy machine once admitted 75%), and never
 * 2q in a window. That the estimate is exact when the traffic is as even as the counter assumes
 * is checked without timing by the next test.
 */
Test(ratelimit, sliding_counter_is_close_under_steady_load, .timeout = 30) {
    rl_config cfg = config(RL_SLIDING_WINDOW_COUNTER, "steady;q=50;w=1", NULL);
    cfg.deny_cache_entries = 0;
    rl_sync *l = limiter(&cfg);
    static admissions adm;
    adm.n = 0;
    int sent = 0;
    uint64_t settled = sd_now_ns() + 2000000000ULL, end = settled + 3000000000ULL;
    while (sd_now_ns() < end) {
        if (sd_now_ns() < settled) {
            check(l, "steady", 1);
        } else {
            timed_check(l, "steady", &adm);
            sent++;
        }
        sleep_ms(5);
    }
    int worst = most_in_a_window(&adm, 1000000000ULL);
    int offered = sent < 150 ? sent : 150;
    fprintf(stderr,
            "sliding-window-counter: at least %d admitted in one 1 s window with q=50 (steady "
            "4q/s, after 2 s), %d of %d in 3 s\n",
            worst, adm.n, sent);
    cr_assert_lt(worst, 100, "steady traffic admitted %d in a window of q=50", worst);
    cr_assert_geq(adm.n * 10, offered * 7,
                  "steady traffic admitted only %d of %d sent in 3 windows of q=50", adm.n, sent);
    rl_sync_free(l);
}

/* Redis's clock, in microseconds. */
static long long redis_time_us(sd_redis *admin) {
    redisReply *r = sd_redis_command(admin, NULL, "TIME");
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2);
    long long us =
        strtoll(r->element[0]->str, NULL, 10) * 1000000 + strtoll(r->element[1]->str, NULL, 10);
    freeReplyObject(r);
    return us;
}

/*
 * The counter's premise, checked without depending on the machine's speed. When the previous
 * window held q units spread evenly, as the counter assumes, a burst e into the current window
 * gets exactly the part of the quota that the previous window no longer overlaps: the k-th unit
 * passes once q - q (W - e) / W >= k, so floor(q e / W) pass in all. The key is planted with
 * the previous window's count q, Redis's TIME is read just before and just after the burst, and
 * the count admitted must lie between the two predictions, however long the burst took. (A burst
 * that crossed into the next window is tried again.)
 */
Test(ratelimit, sliding_counter_weighs_the_previous_window_by_its_overlap) {
    const long long q = 100, W = 10000000; /* 100 per 10 s, in microseconds */
    rl_config cfg = config(RL_SLIDING_WINDOW_COUNTER, "even;q=100;w=10", NULL);
    cfg.deny_cache_entries = 0;
    rl_sync *l = limiter(&cfg);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    char key[RL_REDIS_KEY_MAX];
    cr_assert_gt(rl_config_key(&cfg, 0, "even", key, sizeof key), 0);
    for (int form = 0; form < 2; form++) {
        int measured = 0;
        for (int attempt = 0; attempt < 5 && !measured; attempt++) {
            long long t0 = redis_time_us(admin), index = t0 / W;
            /* The previous window's state as its last check stored it: q units, expiring at the
             * end of the current window. In the four-number form, which the fast way hands to the
             * general one, then in the integer form, whose window the fast way rolls itself. */
            char value[96];
            if (form == 0) {
                snprintf(value, sizeof value, "%lld %lld 0 %lld", index - 1, q,
                         (index + 1) * W / 1000000);
            } else {
                snprintf(value, sizeof value, "%lld", ((index - 1) % 10) * 100000000000000LL + q);
            }
            redisReply *r = sd_redis_command(admin, NULL, "SET %s %s PX 60000", key, value);
            cr_assert_not_null(r);
            freeReplyObject(r);
            t0 = redis_time_us(admin);
            int admitted = 0;
            for (long long i = 0; i < q; i++) {
                admitted += check(l, "even", 1).allowed;
            }
            long long t1 = redis_time_us(admin);
            if (t0 / W != index || t1 / W != index) {
                continue;
            }
            long long lo = q * (t0 - index * W) / W, hi = q * (t1 - index * W) / W;
            cr_assert(admitted >= lo && admitted <= hi,
                      "%d admitted %lld-%lld us into the window; the previous window's weight "
                      "predicts %lld-%lld",
                      admitted, t0 - index * W, t1 - index * W, lo, hi);
            measured = 1;
        }
        cr_assert(measured, "form %d: every burst crossed a window's edge", form);
    }
    sd_redis_free(admin);
    rl_sync_free(l);
}
