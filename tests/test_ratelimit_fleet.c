/*
 * test_ratelimit_fleet.c - several `ratelimit serve` gateways on one Redis, with their default
 * options, hammered on one key by many keep-alive clients: the fleet admits exactly the quota
 * (give or take one) however slow the machine is, and stays within the bound of the README
 * ("Exact under slowness") when Redis is frozen in the middle of the hammer.
 *
 * The assertions are about counts, never about speed: they must hold on a loaded machine (run
 * them beside two `yes >/dev/null`). The admitted count may fall short of q only by refunds that
 * had not landed when the hammer ended; the test waits for the gateways' refunds to settle (an
 * event, polled on /metrics) before it reads the count Redis holds.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"
#include "support.h"

static test_target *server;

static void start(void) {
    server = test_target_start();
}

static void stop(void) {
    test_target_stop(server);
}

TestSuite(ratelimit_fleet, .init = start, .fini = stop, .timeout = 120);

enum { GATEWAYS = 4, CLIENTS = 32, REQUESTS = 2000 };

typedef struct fleet {
    bench_server g[GATEWAYS];
} fleet;

/* Starts the gateways with their default options, but for the policy and the algorithm. */
static fleet fleet_start(const char *policy, const char *algorithm) {
    fleet f;
    for (int i = 0; i < GATEWAYS; i++) {
        const char *argv[] = {
            "ratelimit", "serve", "--listen",    "127.0.0.1:0", "--redis", test_target_url(server),
            "--policy",  policy,  "--algorithm", algorithm,     NULL};
        f.g[i] = test_server_start(argv);
    }
    return f;
}

static void fleet_stop(fleet *f) {
    for (int i = 0; i < GATEWAYS; i++) {
        int status = test_kill_wait(f->g[i].pid, SIGTERM);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "gateway %d: no clean exit", i);
    }
}

/* The hammer: CLIENTS threads, each with one keep-alive connection to a gateway, take requests
 * from a shared count until REQUESTS have been sent. */
typedef struct hammer {
    atomic_int next, ok, denied, other;
    atomic_int limit; /* requests to send in all */
    int fds[CLIENTS];
    pthread_t threads[CLIENTS];
} hammer;

typedef struct client {
    hammer *h;
    int fd;
} client;

static void *client_run(void *arg) {
    client *c = arg;
    hammer *h = c->h;
    static const char req[] = "GET /v1/things HTTP/1.1\r\nHost: x\r\nX-Api-Key: tenant\r\n\r\n";
    char resp[4096];
    while (atomic_fetch_add(&h->next, 1) < atomic_load(&h->limit)) {
        size_t off = 0;
        while (off < sizeof req - 1) {
            ssize_t n = write(c->fd, req + off, sizeof req - 1 - off);
            if (n <= 0) {
                atomic_fetch_add(&h->other, 1);
                return NULL;
            }
            off += (size_t)n;
        }
        int status = test_http_read_response(c->fd, resp, sizeof resp, NULL);
        if (status == 200) {
            atomic_fetch_add(&h->ok, 1);
        } else if (status == 429) {
            atomic_fetch_add(&h->denied, 1);
        } else {
            atomic_fetch_add(&h->other, 1);
            return NULL;
        }
    }
    return NULL;
}

static client clients[CLIENTS];

/* Starts the clients, which send until `limit` requests have been sent in all (set before any
 * client starts: a client that found the old limit reached would leave for good). */
static void hammer_start(hammer *h, fleet *f, int limit) {
    atomic_init(&h->next, 0);
    atomic_init(&h->ok, 0);
    atomic_init(&h->denied, 0);
    atomic_init(&h->other, 0);
    atomic_init(&h->limit, limit);
    for (int i = 0; i < CLIENTS; i++) {
        h->fds[i] = test_tcp_connect(f->g[i % GATEWAYS].port);
        clients[i] = (client){h, h->fds[i]};
        cr_assert_eq(pthread_create(&h->threads[i], NULL, client_run, &clients[i]), 0);
    }
}

static void hammer_join(hammer *h) {
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(h->threads[i], NULL);
        close(h->fds[i]);
    }
    cr_assert_eq(atomic_load(&h->other), 0, "a request got neither 200 nor 429");
    cr_assert_eq(atomic_load(&h->ok) + atomic_load(&h->denied), atomic_load(&h->limit));
}

/* A gateway's metric from /metrics (the first sample of that name). */
static long long metric(bench_server *g, const char *name) {
    static char resp[65536];
    const char *body;
    int status = test_http_exchange(g->port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", resp,
                                    sizeof resp, &body);
    cr_assert_eq(status, 200);
    char needle[128];
    snprintf(needle, sizeof needle, "\n%s ", name);
    const char *p = strstr(body - 1, needle);
    cr_assert(p, "no metric %s", name);
    return atoll(p + strlen(needle));
}

/* Sum of a metric over the fleet. */
static long long fleet_metric(fleet *f, const char *name) {
    long long sum = 0;
    for (int i = 0; i < GATEWAYS; i++) {
        sum += metric(&f->g[i], name);
    }
    return sum;
}

/* What Redis holds of the hammered key's quota: one look (cost 0) by `ratelimit check`. */
static long long redis_remaining(const char *policy, const char *algorithm) {
    static test_run_out r;
    test_run_program("ratelimit",
                     (const char *[]){"check", "--redis", test_target_url(server), "--policy",
                                      policy, "--algorithm", algorithm, "--key", "tenant", "--cost",
                                      "0", "--deadline-ms", "5000", NULL},
                     NULL, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *p = strstr(r.out, "\"remaining\":");
    cr_assert_not_null(p, "%s", r.out);
    return atoll(p + strlen("\"remaining\":"));
}

static int pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
    return 1;
}

static const char *const algorithms[] = {"token-bucket", "gcra", "sliding-window-log",
                                         "sliding-window-counter", "fixed-window"};

/* One test per algorithm, named name_<algorithm>, each running run(algorithm). */
#define FOR_EACH_ALGORITHM(name, run)                                                              \
    Test(ratelimit_fleet, name##_token_bucket) {                                                   \
        run(algorithms[0]);                                                                        \
    }                                                                                              \
    Test(ratelimit_fleet, name##_gcra) {                                                           \
        run(algorithms[1]);                                                                        \
    }                                                                                              \
    Test(ratelimit_fleet, name##_sliding_window_log) {                                             \
        run(algorithms[2]);                                                                        \
    }                                                                                              \
    Test(ratelimit_fleet, name##_sliding_window_counter) {                                         \
        run(algorithms[3]);                                                                        \
    }                                                                                              \
    Test(ratelimit_fleet, name##_fixed_window) {                                                   \
        run(algorithms[4]);                                                                        \
    }

/*
 * The cold start of the issue: four fresh gateways with default options (5 ms deadline, one
 * instance assumed), 2,000 requests for one key from 32 clients. The first checks are often late
 * on a loaded machine; they are refused, not admitted by each gateway's local fallback, and
 * refunded when Redis's late reply says it charged them.
 */
static void cold_start(const char *algorithm) {
    enum { Q = 300 };
    const char *policy = "hour;q=300;w=3600";
    fleet f = fleet_start(policy, algorithm);
    hammer h;
    hammer_start(&h, &f, REQUESTS);
    hammer_join(&h);
    int ok = atomic_load(&h.ok);
    long long late = fleet_metric(&f, "ratelimit_decisions_by_source_total{source=\"late\"}");
    long long refunds = fleet_metric(&f, "ratelimit_refunds_total");
    long long local = fleet_metric(&f, "ratelimit_decisions_by_source_total{source=\"local\"}");
    cr_expect_leq(ok, Q, "%s: the fleet admitted %d for a quota of %d", algorithm, ok, Q);
    /* Nothing of the quota is lost: what was not admitted is still in Redis once the refunds of
     * the late checks have landed (they may land after the last request; polled, the event is
     * the count). Only a call whose reply took longer than reply_timeout_ms (1 s) on a very
     * loaded machine cannot be reconciled: what Redis charged for it stays charged, in doubt. */
    long long left = 0, doubt = 0;
    uint64_t give_up = sd_now_ms() + 30000;
    do {
        left = redis_remaining(policy, algorithm);
        doubt = fleet_metric(&f, "ratelimit_in_doubt_checks_total");
    } while (ok + left < Q - 1 - doubt && sd_now_ms() < give_up && pause_ms(100));
    cr_log_info("%s: admitted %d of %d for q=%d (late %lld, refunds %lld, local %lld, in doubt "
                "%lld, left %lld)",
                algorithm, ok, REQUESTS, Q, late, refunds, local, doubt, left);
    fprintf(stderr,
            "fleet cold start %s: admitted %d of %d for q=%d (late %lld, refunds %lld, in doubt "
            "%lld, left in Redis %lld)\n",
            algorithm, ok, REQUESTS, Q, late, refunds, doubt, left);
    cr_expect_geq(ok + left, Q - 1 - doubt,
                  "%s: admitted %d and %lld left of a quota of %d (in doubt %lld): units lost",
                  algorithm, ok, left, Q, doubt);
    fleet_stop(&f);
}

/* In the fixed-window test the hour is aligned to the epoch: a run across the turn of an hour
 * would see a second quota (odds: the run's few seconds in an hour). */
FOR_EACH_ALGORITHM(cold_start_admits_exactly_the_quota, cold_start)

/*
 * Redis frozen (SIGSTOP) for 2 s in the middle of the hammer, then thawed, and 2,000 more
 * requests after the thaw: the fleet's total stays within the README's bound, q + floor(q / 10)
 * here (in fact within q: a frozen Redis is only late, and late checks are refused).
 */
static void stall(const char *algorithm) {
    enum { Q = 100 };
    fleet f = fleet_start("hour;q=100;w=3600", algorithm);
    hammer h;
    hammer_start(&h, &f, 1 << 30); /* until 2,000 after the thaw (below) */
    /* Freeze once some of the quota is spent (polled: the count is the event). */
    uint64_t give_up = sd_now_ms() + 60000;
    while (atomic_load(&h.ok) < Q / 3 && atomic_load(&h.next) < REQUESTS && sd_now_ms() < give_up) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(test_target_signal(server, SIGSTOP), 0);
    struct timespec two = {2, 0};
    nanosleep(&two, NULL); /* the length of the stall is the scenario, not a synchronisation */
    int before = atomic_load(&h.ok);
    cr_assert_eq(test_target_signal(server, SIGCONT), 0);
    atomic_store(&h.limit, atomic_load(&h.next) + REQUESTS);
    hammer_join(&h);
    int ok = atomic_load(&h.ok);
    fprintf(stderr,
            "fleet stall %s: admitted %d of %d for q=%d (bound %d), %d before the thaw; "
            "refunds %lld, local %lld\n",
            algorithm, ok, atomic_load(&h.limit), Q, Q + Q / 10, before,
            fleet_metric(&f, "ratelimit_refunds_total"),
            fleet_metric(&f, "ratelimit_decisions_by_source_total{source=\"local\"}"));
    cr_expect_leq(ok, Q + Q / 10, "%s: the fleet admitted %d, above the bound %d", algorithm, ok,
                  Q + Q / 10);
    fleet_stop(&f);
}

FOR_EACH_ALGORITHM(a_stalled_redis_keeps_the_fleet_within_the_bound, stall)
