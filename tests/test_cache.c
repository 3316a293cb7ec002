/*
 * test_cache.c - the two-tier cache (cache/cache.h) against a real redis-server (and a private
 * Redis Cluster) and a real origin: a forked HTTP server that counts its calls, reports each
 * one on a pipe, and can hold its answers, fail, or release only its newest held request.
 *
 * Instances are cache objects with their own Redis connections: several on this process's
 * loop, or in forked processes. Every wait is for an event (an answer, a call the origin
 * reports, a counter of the cache) with a generous limit; time is made to pass only where a
 * TTL is the subject (degraded TTL), and then briefly.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache.h"
#include "http_client.h"
#include "redis_sub.h"
#include "sd.h"
#include "support.h"

/* ---- The origin ------------------------------------------------------------------------------ */

#define MAX_HELD 64

typedef struct origin {
    sd_http_server *srv;
    int out;
    int calls;
    int hold, fail;
    sd_http_req *held[MAX_HELD];
    int held_no[MAX_HELD];
    int nheld;
} origin;

/* GET /v/KEY answers "KEY#N", N the call's number (1, 2, ...): every load is told apart. */
static void origin_answer(origin *o, sd_http_req *req, int no) {
    const char *key = sd_http_req_path(req) + 3;
    if (o->fail) {
        sd_http_req_respond(req, 500, "text/plain", "down", 4);
        return;
    }
    if (strncmp(key, "nf", 2) == 0) {
        sd_http_req_respond(req, 404, "text/plain", "none", 4);
        return;
    }
    char body[256];
    int n = snprintf(body, sizeof body, "%s#%d", key, no);
    sd_http_req_respond(req, 200, "text/plain", body, (size_t)n);
}

static void origin_value(sd_http_req *req, void *udata) {
    origin *o = udata;
    int no = ++o->calls;
    dprintf(o->out, "call %d\n", no);
    if (o->hold && o->nheld < MAX_HELD) {
        o->held[o->nheld] = req;
        o->held_no[o->nheld++] = no;
        return;
    }
    origin_answer(o, req, no);
}

static void origin_ctl(sd_http_req *req, void *udata) {
    origin *o = udata;
    const char *p = sd_http_req_path(req);
    if (strcmp(p, "/_hold") == 0) {
        o->hold = 1;
    } else if (strcmp(p, "/_release") == 0) {
        o->hold = 0;
        for (int i = 0; i < o->nheld; i++)
            origin_answer(o, o->held[i], o->held_no[i]);
        o->nheld = 0;
    } else if (strcmp(p, "/_release_last") == 0) {
        if (o->nheld > 0) {
            o->nheld--;
            origin_answer(o, o->held[o->nheld], o->held_no[o->nheld]);
        }
    } else if (strcmp(p, "/_fail") == 0) {
        o->fail = 1;
    } else if (strcmp(p, "/_ok") == 0) {
        o->fail = 0;
    }
    char body[32];
    int n = snprintf(body, sizeof body, "%d", o->calls);
    sd_http_req_respond(req, 200, "text/plain", body, (size_t)n);
}

static void origin_main(int out, void *arg) {
    uv_loop_t l;
    uv_loop_init(&l);
    static origin o;
    o.out = out;
    o.srv = sd_http_server_new(&l, NULL);
    sd_http_server_route(o.srv, "GET", "/v/*", origin_value, &o);
    sd_http_server_route(o.srv, NULL, "/_*", origin_ctl, &o);
    if (sd_http_server_listen(o.srv, "127.0.0.1:0") != 0)
        _exit(1);
    test_serve_and_exit(&l, o.srv, out);
}

/* ---- Fixture --------------------------------------------------------------------------------- */

static sd_redis_server *server;
static sd_redis_cluster_server *cluster;
static char redis_url[512];
static uv_loop_t loop;
static pid_t origin_pid;
static int origin_port, origin_lines;
static uv_poll_t origin_poll;
static int origin_seen; /* calls the origin has reported on its pipe */
static char origin_buf[4096];
static sd_http_client *http;
static uv_timer_t guard;
static int guard_fired;

static void on_origin_lines(uv_poll_t *h, int status, int events) {
    ssize_t n = read(origin_lines, origin_buf, sizeof origin_buf);
    for (ssize_t i = 0; i < n; i++)
        origin_seen += origin_buf[i] == '\n';
    if (n <= 0)
        uv_poll_stop(h);
}

static void common_start(void) {
    origin_pid = test_fork_server(origin_main, NULL, &origin_port, &origin_lines);
    origin_seen = 0;
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_poll_init(&loop, &origin_poll, origin_lines);
    uv_poll_start(&origin_poll, UV_READABLE, on_origin_lines);
    uv_timer_init(&loop, &guard);
    http = sd_http_client_new(&loop, NULL);
    cr_assert_not_null(http);
}

static void single_start(void) {
    server = test_redis_start(NULL);
    snprintf(redis_url, sizeof redis_url, "%s", sd_redis_server_url(server));
    common_start();
}

static void cluster_start(void) {
    cluster = test_redis_cluster_start(0);
    snprintf(redis_url, sizeof redis_url, "%s", sd_redis_cluster_server_url(cluster));
    common_start();
}

/* Caches a test started and has not stopped: a failed assertion leaves them for the fixture. */
static cache *live[16];

static void common_stop(void) {
    for (int i = 0; i < 16; i++) {
        cache_free(live[i]);
        live[i] = NULL;
    }
    sd_http_client_free(http);
    uv_close((uv_handle_t *)&origin_poll, NULL);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&loop), 0, "handles left on the loop");
    close(origin_lines);
    test_kill_wait(origin_pid, SIGKILL);
    sd_redis_server_stop(server);
    server = NULL;
    sd_redis_cluster_server_stop(cluster);
    cluster = NULL;
}

TestSuite(cache, .init = single_start, .fini = common_stop, .timeout = 120);
TestSuite(cache_cluster, .init = cluster_start, .fini = common_stop, .timeout = 120);

/* ---- Helpers -----------------------------------------------------------------------------------
 */

static void on_guard(uv_timer_t *t) {
    guard_fired = 1;
}

/* Runs the loop until cond holds or ms pass (a timer guarantees the loop wakes). */
#define RUN_UNTIL(cond, ms)                                                                        \
    do {                                                                                           \
        guard_fired = 0;                                                                           \
        uv_timer_start(&guard, on_guard, (ms), 0);                                                 \
        while (!(cond) && !guard_fired)                                                            \
            uv_run(&loop, UV_RUN_ONCE);                                                            \
        uv_timer_stop(&guard);                                                                     \
    } while (0)

/* Lets ms pass on the loop: only where a TTL is what the test is about. */
static void pass_time(int ms) {
    guard_fired = 0;
    uv_timer_start(&guard, on_guard, (uint64_t)ms, 0);
    while (!guard_fired)
        uv_run(&loop, UV_RUN_ONCE);
}

/* Sends a control request to the origin; returns its call count. */
static int origin_ctl_send(const char *path) {
    char req[128], buf[1024];
    const char *body = NULL;
    snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: o\r\nContent-Length: 0\r\n\r\n", path);
    cr_assert_eq(test_http_exchange(origin_port, req, buf, sizeof buf, &body), 200);
    return atoi(body);
}

static int origin_calls(void) {
    return origin_ctl_send("/_calls");
}

static void on_origin(int err, sd_http_response *resp, void *udata) {
    cache_load *load = udata;
    if (err)
        cache_load_done(load, CACHE_ERROR, "", 0);
    else if (resp->status == 200)
        cache_load_done(load, CACHE_OK, resp->body, resp->body_len);
    else if (resp->status == 404)
        cache_load_done(load, CACHE_NOTFOUND, "", 0);
    else
        cache_load_done(load, CACHE_ERROR, resp->body, resp->body_len);
}

/* The loader every test uses: GET /v/KEY from the origin. */
static void origin_loader(cache_load *load, const char *key, size_t klen, void *udata) {
    sd_http_client *client = udata ? udata : http;
    char url[300];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v/%.*s", origin_port, (int)klen, key);
    sd_http_request req = {.url = url, .timeout_ms = 60000};
    if (sd_http_client_request(client, &req, on_origin, load) != 0)
        cache_load_done(load, CACHE_ERROR, "", 0);
}

typedef struct answers {
    int n, ok, notfound, error, timeouts, closed, stale;
    int by_source[4];
    char first[128];
    char last[128];
    int differ; /* values unlike the first */
} answers;

static void on_answer(cache *c, int err, const cache_result *res, void *udata) {
    answers *a = udata;
    a->n++;
    if (err) {
        a->timeouts += err == SD_ETIMEDOUT;
        a->closed += err == SD_ECLOSED;
        return;
    }
    a->ok += res->status == CACHE_OK;
    a->notfound += res->status == CACHE_NOTFOUND;
    a->error += res->status == CACHE_ERROR;
    a->stale += res->stale;
    a->by_source[res->source]++;
    snprintf(a->last, sizeof a->last, "%.*s", (int)res->len, res->value);
    if (a->n == 1)
        snprintf(a->first, sizeof a->first, "%s", a->last);
    else if (strcmp(a->first, a->last) != 0)
        a->differ++;
}

static cache_opts test_opts(void) {
    cache_opts o;
    cache_opts_default(&o);
    o.ttl_ms = 60000;
    o.wait_timeout_ms = 20000;
    o.lease_ms = 30000;
    o.reconnect_min_ms = 20;
    o.reconnect_max_ms = 50;
    o.xfetch_beta = 0; /* early refresh is random: tests that count calls switch it off */
    return o;
}

static cache *cache_start_url(const char *text, const cache_opts *o) {
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(text, &u, err, sizeof err), 0, "%s", err);
    cache *c = NULL;
    cr_assert_eq(cache_new(&loop, &u, o, &c), 0);
    sd_redis_url_clear(&u);
    for (int i = 0; i < 16; i++)
        if (!live[i]) {
            live[i] = c;
            break;
        }
    cr_assert_eq(cache_wait_ready(c, 10000), 0, "the cache did not connect");
    return c;
}

static cache *cache_start(const cache_opts *o) {
    return cache_start_url(redis_url, o);
}

static void cache_stop(cache *c) {
    for (int i = 0; i < 16; i++)
        if (live[i] == c)
            live[i] = NULL;
    cache_free(c);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static cache_stats stats(const cache *c) {
    cache_stats s;
    cache_stats_get(c, &s);
    return s;
}

static void get(cache *c, const char *key, answers *a) {
    cr_assert_eq(cache_get(c, key, strlen(key), origin_loader, NULL, on_answer, a), 0);
}

/* One get, run to its answer and until the cache has finished its work (the store). */
static answers get_one(cache *c, const char *key) {
    answers a = {0};
    get(c, key, &a);
    RUN_UNTIL(a.n == 1 && stats(c).flights == 0, 20000);
    cr_assert_eq(a.n, 1, "no answer for %s", key);
    return a;
}

/* The value hash's name for key (layout of cache-get.lua, default prefix). */
static sd_redis *sync_redis(void) {
    return test_redis_connect(redis_url);
}

/* ---- 1,000 concurrent misses in one process: one origin call ----------------------------------
 */

static void thousand_misses_one_call(void) {
    cache_opts o = test_opts();
    cache *c = cache_start(&o);
    answers a = {0};
    for (int i = 0; i < 1000; i++)
        get(c, "hot", &a);
    RUN_UNTIL(a.n == 1000 && stats(c).stored == 1, 30000);
    cr_assert_eq(a.n, 1000);
    cr_assert_eq(a.ok, 1000);
    cr_assert_eq(a.differ, 0);
    cr_assert_str_eq(a.first, "hot#1");
    cr_assert_eq(origin_calls(), 1, "the origin was called more than once");
    cache_stats s = stats(c);
    cr_assert_eq(s.loads, 1);
    cr_assert_eq(a.by_source[CACHE_SRC_ORIGIN], 1);
    cr_assert_eq(a.by_source[CACHE_SRC_COALESCED], 999, "in-process single-flight: %d joined",
                 a.by_source[CACHE_SRC_COALESCED]);
    /* Then a local hit. */
    answers b = get_one(c, "hot");
    cr_assert_eq(b.by_source[CACHE_SRC_LOCAL], 1);
    cr_assert_str_eq(b.first, "hot#1");
    cache_stop(c);
}

Test(cache, thousand_concurrent_misses_in_one_process_make_one_origin_call) {
    thousand_misses_one_call();
}
Test(cache_cluster, thousand_concurrent_misses_in_one_process_make_one_origin_call) {
    thousand_misses_one_call();
}

/* ---- 4 processes: one origin call in total ------------------------------------------------------
 */

/* A getter process: connects, says "ready", waits for a byte on go, then starts nget gets of
 * key; says "waiting" once its flight holds the lease or waits for another's, and "done OK
 * BODY TAKEOVERS COALESCED" when every get has its answer. */
typedef struct getter {
    pid_t pid;
    int report; /* read end: the getter's lines */
    int go;     /* write end: one byte starts it */
} getter;

typedef struct child_ctx {
    cache *c;
    answers a;
    int nget, said_waiting, out;
    const char *key;
    uv_poll_t go;
    uv_timer_t tick;
    int go_fd;
} child_ctx;

static void child_tick(uv_timer_t *t) {
    child_ctx *x = t->data;
    cache_stats s;
    cache_stats_get(x->c, &s);
    if (!x->said_waiting && s.leases + s.waits > 0) {
        x->said_waiting = 1;
        dprintf(x->out, "waiting\n");
    }
    if (x->a.n == x->nget) {
        dprintf(x->out, "done %d %s %llu %d %llu %llu %llu\n", x->a.ok, x->a.first,
                (unsigned long long)s.takeovers, x->a.by_source[CACHE_SRC_COALESCED],
                (unsigned long long)s.woken_by_message, (unsigned long long)s.woken_by_poll,
                (unsigned long long)s.fill_values);
        _exit(0);
    }
}

static void child_go(uv_poll_t *h, int status, int events) {
    child_ctx *x = h->data;
    char b;
    if (read(x->go_fd, &b, 1) != 1)
        _exit(2);
    uv_poll_stop(h);
    for (int i = 0; i < x->nget; i++)
        cache_get(x->c, x->key, strlen(x->key), origin_loader, NULL, on_answer, &x->a);
    uv_timer_start(&x->tick, child_tick, 2, 2);
}

static getter getter_spawn(const char *key, int nget, int lease_ms) {
    int rep[2], go[2];
    cr_assert_eq(pipe(rep), 0);
    cr_assert_eq(pipe(go), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(rep[0]);
        close(go[1]);
        uv_loop_t l;
        uv_loop_init(&l);
        sd_http_client *hc = sd_http_client_new(&l, NULL);
        static child_ctx x;
        x.out = rep[1];
        x.nget = nget;
        x.key = key;
        x.go_fd = go[0];
        sd_redis_url u;
        char err[160];
        if (sd_redis_url_parse(redis_url, &u, err, sizeof err) != 0)
            _exit(2);
        cache_opts o = test_opts();
        o.lease_ms = lease_ms;
        o.wait_poll_ms = 60000; /* longer than any test: only the message (or the lease's
                                   expiry) wakes a waiter, so the counters can tell */
        if (cache_new(&l, &u, &o, &x.c) != 0)
            _exit(2);
        /* Like cache_wait_ready, on this loop. */
        while (cache_is_degraded(x.c))
            uv_run(&l, UV_RUN_ONCE);
        http = hc; /* origin_loader's default client, in this process */
        uv_poll_init(&l, &x.go, go[0]);
        x.go.data = &x;
        uv_poll_start(&x.go, UV_READABLE, child_go);
        uv_timer_init(&l, &x.tick);
        x.tick.data = &x;
        dprintf(x.out, "ready\n");
        uv_run(&l, UV_RUN_DEFAULT);
        _exit(3);
    }
    close(rep[1]);
    close(go[0]);
    getter g = {.pid = pid, .report = rep[0], .go = go[1]};
    char line[64];
    cr_assert_gt(test_read_line(g.report, line, sizeof line, 20000), 0, "getter not ready");
    cr_assert_str_eq(line, "ready");
    return g;
}

static void getter_go(getter *g) {
    cr_assert_eq(write(g->go, "g", 1), 1);
}

static void getter_expect(getter *g, const char *want, char *line, size_t len) {
    cr_assert_gt(test_read_line(g->report, line, len, 30000), 0, "no '%s' from getter %d", want,
                 (int)g->pid);
    cr_assert_eq(strncmp(line, want, strlen(want)), 0, "getter said '%s', not '%s'", line, want);
}

static void getter_close(getter *g) {
    close(g->report);
    close(g->go);
    test_kill_wait(g->pid, SIGKILL);
}

static void four_processes_one_call(void) {
    origin_ctl_send("/_hold");
    getter g[4];
    for (int i = 0; i < 4; i++)
        g[i] = getter_spawn("shared", 250, 30000);
    for (int i = 0; i < 4; i++)
        getter_go(&g[i]);
    char line[160];
    /* Every process has its flight on Redis (the leader loading, the others waiting) before
     * the origin answers. */
    for (int i = 0; i < 4; i++)
        getter_expect(&g[i], "waiting", line, sizeof line);
    origin_ctl_send("/_release");
    unsigned long long by_msg = 0, by_poll = 0, values = 0;
    for (int i = 0; i < 4; i++) {
        getter_expect(&g[i], "done", line, sizeof line);
        int ok = 0, co = 0;
        char body[64];
        unsigned long long tk, m, p, v;
        cr_assert_eq(
            sscanf(line, "done %d %63s %llu %d %llu %llu %llu", &ok, body, &tk, &co, &m, &p, &v),
            7);
        cr_assert_eq(ok, 250, "process %d: %d of 250 answers", i, ok);
        cr_assert_str_eq(body, "shared#1");
        by_msg += m;
        by_poll += p;
        values += v;
    }
    cr_assert_eq(origin_calls(), 1, "4 processes made more than one origin call");
    /* The three waiting processes were each woken by the leader's message and answered from
     * the value it carried, with no look-up of their own. */
    cr_assert_eq(by_msg, 3, "woken by the message: %llu of 3", by_msg);
    cr_assert_eq(values, 3, "answered from the message's value: %llu of 3", values);
    cr_assert_eq(by_poll, 0);
    for (int i = 0; i < 4; i++)
        getter_close(&g[i]);
}

Test(cache, four_processes_make_one_origin_call_in_total) {
    four_processes_one_call();
}
Test(cache_cluster, four_processes_make_one_origin_call_in_total) {
    four_processes_one_call();
}

/* ---- cache_get_local: a synchronous peek at the local tier ---------------------------------
 */

Test(cache, get_local_answers_a_local_hit_in_place_and_nothing_else) {
    cache_opts o = test_opts();
    cache *c = cache_start(&o);
    cache_result r;
    cr_assert_eq(cache_get_local(c, "peek", 4, &r), 0, "a hit before any load");
    cr_assert_eq(stats(c).flights, 0, "the peek started a flight");
    answers a = get_one(c, "peek");
    cr_assert_str_eq(a.first, "peek#1");
    cache_stats before = stats(c);
    cr_assert_eq(cache_get_local(c, "peek", 4, &r), 1);
    cr_assert_eq(r.source, CACHE_SRC_LOCAL);
    cr_assert_eq(r.len, 6);
    cr_assert_eq(memcmp(r.value, "peek#1", 6), 0);
    cache_stats after = stats(c);
    cr_assert_eq(after.hits_local, before.hits_local + 1);
    cr_assert_eq(after.hits_redis, before.hits_redis);
    cr_assert_eq(after.flights, 0);
    /* An invalidation removes it from the peek too. */
    cr_assert_eq(cache_invalidate(c, "peek", 4, NULL, NULL), 0);
    cr_assert_eq(cache_get_local(c, "peek", 4, &r), 0);
    cr_assert_eq(origin_calls(), 1);
    cache_stop(c);
}

/* ---- A lost message: the fallback look-up answers the waiters ---------------------------------
 */

/* Another instance's lease is faked, then the value appears in Redis with no message (as if
 * the message were lost): the waiting flight finds it by its periodic look-up. */
static void lost_message_fallback(void) {
    cache_opts o = test_opts();
    o.wait_poll_ms = 100;
    cache *c = cache_start(&o);
    sd_redis *r = sync_redis();
    redisReply *rep = sd_redis_command(r, NULL, "SET cache:v1:{lost}:lease someone-else PX 60000");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    answers a = {0};
    get(c, "lost", &a);
    RUN_UNTIL(stats(c).waits == 1, 20000);
    cr_assert_eq(stats(c).waits, 1, "the get did not wait for the lease");
    /* Fresh for a long time (server ms far ahead); the lease goes, no PUBLISH. */
    rep = sd_redis_command(r, NULL,
                           "HSET cache:v1:{lost} v lost#x st 0 t 0 fu 9999999999999 "
                           "su 9999999999999 eu 9999999999999 d 0");
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
    cr_assert_eq(test_redis_int(r, "DEL cache:v1:{lost}:lease"), 1);
    RUN_UNTIL(a.n == 1, 20000);
    cr_assert_eq(a.ok, 1);
    cr_assert_str_eq(a.first, "lost#x");
    cache_stats st = stats(c);
    cr_assert_eq(st.woken_by_poll, 1);
    cr_assert_eq(st.woken_by_message, 0);
    cr_assert_eq(st.loads, 0);
    cr_assert_eq(origin_calls(), 0);
    sd_redis_free(r);
    cache_stop(c);
}

Test(cache, a_lost_message_is_covered_by_the_fallback_look_up) {
    lost_message_fallback();
}
Test(cache_cluster, a_lost_message_is_covered_by_the_fallback_look_up) {
    lost_message_fallback();
}

/* ---- The leader dies mid-load: exactly one takes over ------------------------------------------
 */

static void leader_killed_one_takeover(void) {
    origin_ctl_send("/_hold");
    getter a = getter_spawn("k", 1, 3000);
    getter b = getter_spawn("k", 1, 3000);
    getter c = getter_spawn("k", 1, 3000);
    getter_go(&a);
    RUN_UNTIL(origin_seen == 1, 20000);
    cr_assert_eq(origin_seen, 1, "the leader did not call the origin");
    char line[160];
    getter_go(&b);
    getter_go(&c);
    getter_expect(&b, "waiting", line, sizeof line);
    getter_expect(&c, "waiting", line, sizeof line);
    test_kill_wait(a.pid, SIGKILL);
    /* The lease expires; exactly one of b and c takes over and calls the origin. */
    RUN_UNTIL(origin_seen == 2, 20000);
    cr_assert_eq(origin_seen, 2, "nobody took over");
    origin_ctl_send("/_release");
    unsigned long long tb = 0, tc = 0;
    char body[64];
    int ok = 0, co = 0;
    getter_expect(&b, "done", line, sizeof line);
    cr_assert_eq(sscanf(line, "done %d %63s %llu %d", &ok, body, &tb, &co), 4);
    cr_assert_eq(ok, 1);
    cr_assert_str_eq(body, "k#2");
    getter_expect(&c, "done", line, sizeof line);
    cr_assert_eq(sscanf(line, "done %d %63s %llu %d", &ok, body, &tc, &co), 4);
    cr_assert_eq(ok, 1);
    cr_assert_str_eq(body, "k#2");
    cr_assert_eq(tb + tc, 1, "takeovers: %llu + %llu", tb, tc);
    cr_assert_eq(origin_calls(), 2);
    close(a.report);
    close(a.go);
    getter_close(&b);
    getter_close(&c);
}

Test(cache, a_killed_leader_is_replaced_by_exactly_one_instance) {
    leader_killed_one_takeover();
}
Test(cache_cluster, a_killed_leader_is_replaced_by_exactly_one_instance) {
    leader_killed_one_takeover();
}

/* ---- A leader that overran its lease: its late write is refused ---------------------------------
 */

static void late_write_refused(void) {
    origin_ctl_send("/_hold");
    cache_opts o = test_opts();
    o.lease_ms = 500;
    o.local_bytes = 0;
    cache_opts oa = o;
    oa.local_bytes = 1 << 20; /* a keeps what it loaded locally until its store is refused */
    cache *a = cache_start(&oa);
    cache *b = cache_start(&o);
    answers aa = {0}, ba = {0};
    get(a, "late", &aa);
    RUN_UNTIL(origin_seen == 1, 20000);
    cr_assert_eq(origin_seen, 1);
    get(b, "late", &ba);
    /* b waits for a's lease to run out, then takes over. */
    RUN_UNTIL(origin_seen == 2, 20000);
    cr_assert_eq(origin_seen, 2, "b did not take over");
    origin_ctl_send("/_release_last"); /* b's load answers first and is stored */
    RUN_UNTIL(ba.n == 1 && stats(b).stored == 1, 20000);
    cr_assert_eq(ba.ok, 1);
    cr_assert_str_eq(ba.first, "late#2");
    cr_assert_eq(stats(b).takeovers, 1);
    origin_ctl_send("/_release"); /* now a's load ends: its store must be refused */
    RUN_UNTIL(stats(a).fenced == 1, 20000);
    cr_assert_eq(stats(a).fenced, 1, "the old leader's late write was not refused");
    cr_assert_eq(aa.ok, 1);
    cr_assert_str_eq(aa.first, "late#1");
    /* What Redis holds is b's value: a fresh instance reads it. */
    cache *c = cache_start(&o);
    answers ca = get_one(c, "late");
    cr_assert_str_eq(ca.first, "late#2");
    cr_assert_eq(ca.by_source[CACHE_SRC_REDIS], 1);
    answers a2 = get_one(a, "late");
    cr_assert_str_eq(a2.first, "late#2", "the fenced instance kept its own value locally");
    cache_stop(a);
    cache_stop(b);
    cache_stop(c);
}

Test(cache, an_overrun_leaders_late_write_is_refused) {
    late_write_refused();
}
Test(cache_cluster, an_overrun_leaders_late_write_is_refused) {
    late_write_refused();
}

/* ---- A failing origin: calls bounded by the negative TTL, the failure shared ------------------
 */

static void failing_origin_bounded(void) {
    origin_ctl_send("/_fail");
    cache_opts o = test_opts();
    o.negative_ttl_ms = 60000;
    cache *a = cache_start(&o);
    cache *b = cache_start(&o);
    /* Five rounds of 100 concurrent gets on each of two instances: one call in all. */
    for (int round = 0; round < 5; round++) {
        answers aa = {0}, ba = {0};
        for (int i = 0; i < 100; i++) {
            get(a, "broken", &aa);
            get(b, "broken", &ba);
        }
        RUN_UNTIL(aa.n == 100 && ba.n == 100, 20000);
        cr_assert_eq(aa.error, 100, "round %d: %d errors on a", round, aa.error);
        cr_assert_eq(ba.error, 100, "round %d: %d errors on b", round, ba.error);
    }
    cr_assert_eq(origin_calls(), 1, "a failing origin was called %d times", origin_calls());
    /* Not found is cached the same way. */
    origin_ctl_send("/_ok");
    for (int round = 0; round < 3; round++) {
        answers aa = get_one(a, "nf-x");
        cr_assert_eq(aa.notfound, 1);
    }
    cr_assert_eq(origin_calls(), 2);
    cache_stop(a);
    cache_stop(b);
}

Test(cache, a_failing_origin_is_called_once_per_negative_ttl) {
    failing_origin_bounded();
}

/* ---- Stale while revalidating, and while the origin is down -----------------------------------
 */

/* Moves key's freshness (and optionally its stale-while-revalidate end) into the past, as time
 * would: the fields of cache-get.lua's hash. */
static void make_stale(const char *key, int also_swr) {
    sd_redis *r = sync_redis();
    char k[128];
    snprintf(k, sizeof k, "cache:v1:{%s}", key);
    test_redis_int(r, "HSET %s fu 0", k);
    if (also_swr)
        test_redis_int(r, "HSET %s su 0", k);
    sd_redis_free(r);
}

Test(cache, stale_is_served_while_one_load_revalidates) {
    cache_opts o = test_opts();
    o.swr_ms = 600000;
    o.local_bytes = 0;
    cache *a = cache_start(&o);
    cache *b = cache_start(&o);
    cr_assert_str_eq(get_one(a, "swr").first, "swr#1");
    make_stale("swr", 0);
    origin_ctl_send("/_hold");
    answers aa = {0}, ba = {0};
    for (int i = 0; i < 50; i++) {
        get(a, "swr", &aa);
        get(b, "swr", &ba);
    }
    /* Everyone is answered with the old value while the one refresh is held at the origin. */
    RUN_UNTIL(aa.n == 50 && ba.n == 50 && origin_seen == 2, 20000);
    cr_assert_eq(aa.n + ba.n, 100);
    cr_assert_eq(aa.stale + ba.stale, 100);
    cr_assert_str_eq(aa.first, "swr#1");
    cr_assert_str_eq(ba.first, "swr#1");
    cr_assert_eq(aa.differ + ba.differ, 0);
    cr_assert_eq(stats(a).refreshes + stats(b).refreshes, 1);
    origin_ctl_send("/_release");
    RUN_UNTIL(stats(a).stored + stats(b).stored == 2, 20000);
    answers fresh = get_one(b, "swr");
    cr_assert_str_eq(fresh.first, "swr#2");
    cr_assert_eq(fresh.stale, 0);
    cr_assert_eq(origin_calls(), 2);
    cache_stop(a);
    cache_stop(b);
}

Test(cache, stale_is_served_while_the_origin_is_down) {
    cache_opts o = test_opts();
    o.sie_ms = 600000;
    o.local_bytes = 0;
    cache *a = cache_start(&o);
    cr_assert_str_eq(get_one(a, "sie").first, "sie#1");
    make_stale("sie", 1);
    origin_ctl_send("/_fail");
    answers aa = {0};
    for (int i = 0; i < 50; i++)
        get(a, "sie", &aa);
    RUN_UNTIL(aa.n == 50, 20000);
    cr_assert_eq(aa.ok, 50, "stale-if-error: %d of 50 got the old value", aa.ok);
    cr_assert_eq(aa.stale, 50);
    cr_assert_str_eq(aa.first, "sie#1");
    /* The failure is cached: the next gets are stale answers without an origin call. */
    RUN_UNTIL(stats(a).stored == 2, 20000);
    answers again = get_one(a, "sie");
    cr_assert_str_eq(again.first, "sie#1");
    cr_assert_eq(again.stale, 1);
    cr_assert_eq(origin_calls(), 2);
    cache_stop(a);
}

/* XFetch: with a load time recorded as huge, every look-up is "near expiry": exactly one
 * caller refreshes early (the lease), everyone is answered with the fresh value meanwhile, and
 * the refresh records the real (small) load time, which ends the early refreshes. */
Test(cache, xfetch_refreshes_a_hot_key_early_exactly_once) {
    cache_opts o = test_opts();
    o.xfetch_beta = 1.0;
    o.local_bytes = 0;
    cache *a = cache_start(&o);
    cache *b = cache_start(&o);
    cr_assert_str_eq(get_one(a, "xf").first, "xf#1");
    sd_redis *r = sync_redis();
    test_redis_int(r, "HSET cache:v1:{xf} d 1000000000");
    sd_redis_free(r);
    origin_ctl_send("/_hold");
    answers aa = {0}, ba = {0};
    for (int i = 0; i < 50; i++) {
        get(a, "xf", &aa);
        get(b, "xf", &ba);
    }
    RUN_UNTIL(aa.n == 50 && ba.n == 50 && origin_seen == 2, 20000);
    cr_assert_eq(aa.ok + ba.ok, 100);
    cr_assert_eq(aa.stale + ba.stale, 0, "XFetch answers are fresh hits");
    cr_assert_str_eq(aa.first, "xf#1");
    cr_assert_eq(stats(a).refreshes + stats(b).refreshes, 1);
    origin_ctl_send("/_release");
    RUN_UNTIL(stats(a).stored + stats(b).stored == 2, 20000);
    answers after = {0};
    for (int i = 0; i < 20; i++)
        get(a, "xf", &after);
    RUN_UNTIL(after.n == 20 && stats(a).flights == 0, 20000);
    cr_assert_str_eq(after.first, "xf#2");
    cr_assert_eq(after.differ, 0);
    cr_assert_eq(origin_calls(), 2, "early refreshes went on after the real load time was known");
    cache_stop(a);
    cache_stop(b);
}

/* ---- Jittered TTLs -----------------------------------------------------------------------------
 */

static void sync_loader(cache_load *load, const char *key, size_t klen, void *udata) {
    cache_load_done(load, CACHE_OK, "x", 1);
}

static void jitter_spread(void) {
    cache_opts o = test_opts();
    o.ttl_ms = 10000;
    o.jitter_pct = 20;
    o.wait_timeout_ms = 60000;
    o.redis_timeout_ms = 30000; /* 20,000 pipelined scripts on a busy machine */
    cache *c = cache_start(&o);
    sd_redis *r = sync_redis();
    answers a = {0};
    char key[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "j%d", i);
        cr_assert_eq(cache_get(c, key, strlen(key), sync_loader, NULL, on_answer, &a), 0);
    }
    RUN_UNTIL(stats(c).stored == 10000, 60000);
    cache_stats st = stats(c);
    cr_assert_eq(st.stored, 10000, "stored %llu, loads %llu (degraded %llu), answers %d",
                 (unsigned long long)st.stored, (unsigned long long)st.loads,
                 (unsigned long long)st.degraded_loads, a.n);
    /* Each key's life, from the server time it was stored at (field t) to PEXPIRETIME. */
    int slices[10] = {0};
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "cache:v1:{j%d}", i);
        long long at = test_redis_int(r, "PEXPIRETIME %s", key);
        redisReply *t = sd_redis_command(r, NULL, "HGET %s t", key);
        cr_assert(t && t->type == REDIS_REPLY_STRING);
        long long life = at - atoll(t->str);
        freeReplyObject(t);
        cr_assert(life >= 8000 && life <= 12000, "key %d lives %lld ms", i, life);
        long long s = (life - 8000) / 400;
        slices[s > 9 ? 9 : s]++;
    }
    for (int s = 0; s < 10; s++)
        cr_assert_leq(slices[s], 1500, "slice %d holds %d of 10000 (uniform share 1000)", s,
                      slices[s]);
    sd_redis_free(r);
    cache_stop(c);
}

Test(cache, ttls_are_jittered_uniformly) {
    jitter_spread();
}
Test(cache_cluster, ttls_are_jittered_uniformly) {
    jitter_spread();
}

/* ---- Invalidation
 * -------------------------------------------------------------------------------- */

static void on_invalidated(cache *c, int err, void *udata) {
    int *done = udata;
    cr_assert_eq(err, 0);
    (*done)++;
}

static void invalidation_everywhere(void) {
    cache_opts o = test_opts();
    cache *c[3];
    for (int i = 0; i < 3; i++)
        c[i] = cache_start(&o);
    get_one(c[0], "inv");
    /* The fill message reaches every instance (on a cluster over the bus, maybe late): one that
     * came after an instance's own read would drop its fresh local copy. */
    RUN_UNTIL(stats(c[0]).fills == 1 && stats(c[1]).fills == 1 && stats(c[2]).fills == 1, 20000);
    cr_assert_eq(stats(c[2]).fills, 1);
    for (int i = 1; i < 3; i++)
        get_one(c[i], "inv");
    for (int i = 0; i < 3; i++) { /* every instance has it locally now */
        answers a = get_one(c[i], "inv");
        cr_assert_eq(a.by_source[CACHE_SRC_LOCAL], 1);
        cr_assert_str_eq(a.first, "inv#1");
    }
    int done = 0;
    cr_assert_eq(cache_invalidate(c[0], "inv", 3, on_invalidated, &done), 0);
    RUN_UNTIL(done == 1 && stats(c[1]).invalidations == 1 && stats(c[2]).invalidations == 1, 20000);
    cr_assert_eq(stats(c[2]).invalidations, 1);
    answers b = {0};
    for (int i = 0; i < 3; i++)
        get(c[i], "inv", &b);
    RUN_UNTIL(b.n == 3, 20000);
    cr_assert_eq(b.by_source[CACHE_SRC_LOCAL], 0, "an instance served its old local copy");
    cr_assert_str_eq(b.first, "inv#2");
    cr_assert_eq(b.differ, 0);
    cr_assert_eq(origin_calls(), 2);
    for (int i = 0; i < 3; i++)
        cache_stop(c[i]);
}

Test(cache, an_invalidation_reaches_every_instance) {
    invalidation_everywhere();
}
Test(cache_cluster, an_invalidation_reaches_every_instance) {
    invalidation_everywhere();
}

typedef struct gen_read {
    int done, err;
    long long gen;
} gen_read;

static void on_gen(cache *c, int err, long long gen, void *udata) {
    gen_read *g = udata;
    g->done++;
    g->err = err;
    g->gen = gen;
}

/* What instance c reads as key's invalidation count. */
static long long read_gen(cache *c, const char *key) {
    gen_read g = {0};
    cr_assert_eq(cache_gen_get(c, key, strlen(key), on_gen, &g), 0);
    cr_assert_eq(g.done, 0, "the callback ran inside the call");
    RUN_UNTIL(g.done == 1, 20000);
    cr_assert_eq(g.done, 1);
    cr_assert_eq(g.err, 0, "%s", sd_strerror(g.err));
    return g.gen;
}

/* Each invalidation, at any instance, moves the key's count, which every instance reads from
 * Redis at once, before any message: what lets a value fetched outside a lease be checked. The
 * count lives only for CACHE_GEN_KEEP_MS. */
static void invalidation_count(void) {
    cache_opts o = test_opts();
    cache *a = cache_start(&o);
    cache *b = cache_start(&o);
    cr_assert_eq(read_gen(a, "gen"), 0);
    for (int i = 1; i <= 2; i++) {
        int done = 0;
        cr_assert_eq(cache_invalidate(b, "gen", 3, on_invalidated, &done), 0);
        RUN_UNTIL(done == 1, 20000);
        cr_assert_eq(read_gen(a, "gen"), i);
    }
    cr_assert_eq(read_gen(a, "other"), 0, "another key's count moved");
    sd_redis *r = sync_redis();
    long long ttl = test_redis_int(r, "PTTL cache:v1:{gen}:gen");
    cr_assert(ttl > 0 && ttl <= CACHE_GEN_KEEP_MS, "the count is kept for %lld ms", ttl);
    sd_redis_free(r);
    cr_assert_eq(cache_gen_get(a, "", 0, on_gen, NULL), -EINVAL);
    cache_stop(a);
    cache_stop(b);
}

Test(cache, an_invalidation_moves_the_count_every_instance_reads) {
    invalidation_count();
}
Test(cache_cluster, an_invalidation_moves_the_count_every_instance_reads) {
    invalidation_count();
}

static void load_racing_invalidation(void) {
    cache_opts o = test_opts();
    cache *a = cache_start(&o);
    cache *b = cache_start(&o);
    origin_ctl_send("/_hold");
    answers aa = {0};
    get(a, "race", &aa);
    RUN_UNTIL(origin_seen == 1, 20000);
    int done = 0;
    cr_assert_eq(cache_invalidate(b, "race", 4, on_invalidated, &done), 0);
    RUN_UNTIL(done == 1 && stats(a).invalidations == 1, 20000);
    cr_assert_eq(stats(a).invalidations, 1);
    origin_ctl_send("/_release");
    RUN_UNTIL(aa.n == 1 && stats(a).not_stored == 1, 20000);
    cr_assert_eq(aa.ok, 1); /* its callers asked before the invalidation: they get it */
    cr_assert_eq(stats(a).not_stored, 1);
    /* Let a's refused store finish, then nothing of it may be anywhere. */
    RUN_UNTIL(stats(a).fenced == 1, 20000);
    cr_assert_eq(stats(a).fenced, 1, "the raced load's store was not refused");
    sd_redis *r = sync_redis();
    cr_assert_eq(test_redis_int(r, "EXISTS cache:v1:{race}"), 0, "the raced load was stored");
    sd_redis_free(r);
    answers again = get_one(a, "race");
    cr_assert_eq(again.by_source[CACHE_SRC_LOCAL], 0, "the raced load was kept locally");
    cr_assert_str_eq(again.first, "race#2");
    cache_stop(a);
    cache_stop(b);
}

Test(cache, a_load_racing_an_invalidation_stores_nothing) {
    load_racing_invalidation();
}
Test(cache_cluster, a_load_racing_an_invalidation_stores_nothing) {
    load_racing_invalidation();
}

/*
 * An invalidation made here, while the flight that loaded the old value is still storing it:
 * a get that comes right after must not be answered from that flight's value (it waits, and the
 * flight starts over). Before, only the invalidation's message, which comes later through the
 * subscriber, took the value away from the flight, so on a loaded machine a purge answered 200
 * and the next request still got the purged body.
 */
static cache_load *held_load;

/* The first load is held (the test ends it); a later one answers "new" at once. */
static void holding_loader(cache_load *load, const char *key, size_t klen, void *udata) {
    if (held_load == NULL)
        held_load = load;
    else
        cache_load_done(load, CACHE_OK, "new", 3);
}

static void invalidated_while_storing(void) {
    cache_opts o = test_opts();
    cache *c = cache_start(&o);
    held_load = NULL;
    answers first = {0}, second = {0};
    cr_assert_eq(cache_get(c, "purged", 6, holding_loader, NULL, on_answer, &first), 0);
    RUN_UNTIL(held_load != NULL, 20000);
    cr_assert_not_null(held_load, "the loader was not called");
    /* The load ends and its store is sent; in the same loop turn, before any reply: */
    cache_load_done(held_load, CACHE_OK, "old", 3);
    cr_assert_eq(cache_invalidate(c, "purged", 6, NULL, NULL), 0);
    cr_assert_eq(cache_get(c, "purged", 6, holding_loader, NULL, on_answer, &second), 0);
    RUN_UNTIL(first.n == 1 && second.n == 1 && stats(c).flights == 0, 20000);
    cr_assert_str_eq(first.first, "old"); /* asked before the invalidation */
    cr_assert_eq(second.n, 1);
    cr_assert_str_eq(second.first, "new", "a get after the invalidation got the old value");
    cache_stop(c);
}

Test(cache, a_get_after_an_invalidation_here_is_not_answered_with_the_old_value) {
    invalidated_while_storing();
}
Test(cache_cluster, a_get_after_an_invalidation_here_is_not_answered_with_the_old_value) {
    invalidated_while_storing();
}

/* ---- Lost connections --------------------------------------------------------------------------
 */

static void subscriber_killed(void) {
    cache_opts o = test_opts();
    cache *a = cache_start(&o);
    cr_assert_str_eq(get_one(a, "sk").first, "sk#1");
    cr_assert_eq(get_one(a, "sk").by_source[CACHE_SRC_LOCAL], 1);
    /* An invalidation this instance will never hear of: the Redis copy goes without a message,
     * then the subscriber connection is killed. */
    sd_redis *r = sync_redis();
    test_redis_int(r, "DEL cache:v1:{sk}");
    sd_redis_free(r);
    if (cluster) { /* the subscriber is connected to the first node */
        sd_redis *n0 =
            test_redis_connect(sd_redis_server_url(sd_redis_cluster_server_node(cluster, 0)));
        test_redis_int(n0, "CLIENT KILL TYPE pubsub");
        sd_redis_free(n0);
    } else {
        r = sync_redis();
        test_redis_int(r, "CLIENT KILL TYPE pubsub");
        sd_redis_free(r);
    }
    RUN_UNTIL(stats(a).sub_downs == 1 && !cache_is_degraded(a), 20000);
    cr_assert_eq(stats(a).sub_downs, 1);
    cr_assert_eq(cache_is_degraded(a), 0);
    answers after = get_one(a, "sk");
    cr_assert_eq(after.by_source[CACHE_SRC_LOCAL], 0, "a value cached before the drop was served");
    cr_assert_str_eq(after.first, "sk#2");
    cache_stop(a);
}

Test(cache, a_killed_subscriber_leaves_no_stale_local_hit) {
    subscriber_killed();
}
Test(cache_cluster, a_killed_subscriber_leaves_no_stale_local_hit) {
    subscriber_killed();
}

Test(cache, redis_down_coalesces_in_process_and_keeps_values_briefly) {
    cache_opts o = test_opts();
    o.degraded_ttl_ms = 300;
    cache *a = cache_start(&o);
    cr_assert_str_eq(get_one(a, "rd").first, "rd#1");
    cr_assert_eq(sd_redis_server_halt(server), 0);
    RUN_UNTIL(cache_is_degraded(a) && stats(a).sub_downs == 1, 20000);
    cr_assert_eq(stats(a).local_count, 0, "the local tier outlived the disconnect");
    answers m = {0};
    for (int i = 0; i < 200; i++)
        get(a, "rd", &m);
    RUN_UNTIL(m.n == 200, 20000);
    cr_assert_eq(m.ok, 200);
    cr_assert_str_eq(m.first, "rd#2");
    cr_assert_eq(origin_calls(), 2, "misses were not coalesced while Redis was down");
    /* Kept locally for the degraded TTL only. */
    cr_assert_eq(get_one(a, "rd").by_source[CACHE_SRC_LOCAL], 1);
    pass_time(400);
    cr_assert_str_eq(get_one(a, "rd").first, "rd#3");
    /* Redis back: shared again. */
    cr_assert_eq(sd_redis_server_restart(server), 0);
    RUN_UNTIL(!cache_is_degraded(a), 20000);
    cr_assert_eq(cache_is_degraded(a), 0);
    cache_stats before = stats(a);
    pass_time(400);
    answers back = get_one(a, "rd");
    cr_assert_str_eq(back.first, "rd#4");
    cr_assert_eq(stats(a).leases, before.leases + 1, "after the restart the load took no lease");
    cache_stop(a);
}

Test(cache, a_redis_restart_leaves_no_stale_local_hit) {
    cache_opts o = test_opts();
    cache *a = cache_start(&o);
    cr_assert_str_eq(get_one(a, "rr").first, "rr#1");
    cr_assert_eq(sd_redis_server_halt(server), 0);
    cr_assert_eq(sd_redis_server_restart(server), 0);
    RUN_UNTIL(stats(a).sub_downs == 1 && !cache_is_degraded(a), 20000);
    cr_assert_eq(stats(a).sub_downs, 1);
    answers after = get_one(a, "rr");
    cr_assert_eq(after.by_source[CACHE_SRC_LOCAL], 0);
    cr_assert_str_eq(after.first, "rr#2");
    cache_stop(a);
}

/* ---- A waiter that times out cancels nobody else ------------------------------------------------
 */

Test(cache, a_waiter_timing_out_cancels_nobody_else) {
    cache_opts o = test_opts();
    o.wait_timeout_ms = 200;
    cache *a = cache_start(&o);
    cache_opts o2 = test_opts();
    cache *b = cache_start(&o2);
    origin_ctl_send("/_hold");
    answers aa = {0}, ba = {0};
    get(a, "slow", &aa);
    RUN_UNTIL(origin_seen == 1, 20000);
    get(b, "slow", &ba);
    RUN_UNTIL(aa.n == 1, 20000);
    cr_assert_eq(aa.timeouts, 1, "a's get did not time out");
    origin_ctl_send("/_release");
    RUN_UNTIL(ba.n == 1, 20000);
    cr_assert_eq(ba.ok, 1, "b's wait was cancelled");
    cr_assert_str_eq(ba.first, "slow#1");
    cr_assert_eq(origin_calls(), 1);
    cache_stop(a);
    cache_stop(b);
}

/* ---- The fast path: a fresh Redis hit is one HMGET, anything else the script ------------------
 */

/* Calls of a command since the servers started, summed over every node (INFO commandstats). */
static long long command_calls(const char *name) {
    int n = cluster ? sd_redis_cluster_server_count(cluster) : 1;
    char needle[64];
    snprintf(needle, sizeof needle, "cmdstat_%s:calls=", name);
    long long total = 0;
    for (int i = 0; i < n; i++) {
        sd_redis_server *node = cluster ? sd_redis_cluster_server_node(cluster, i) : server;
        struct timeval tv = {5, 0};
        redisContext *rc = redisConnectWithTimeout("127.0.0.1", sd_redis_server_port(node), tv);
        cr_assert(rc != NULL && rc->err == 0, "cannot connect to node %d", i);
        redisReply *reply = redisCommand(rc, "INFO commandstats");
        cr_assert(reply != NULL && reply->type == REDIS_REPLY_STRING);
        const char *p = strstr(reply->str, needle);
        if (p)
            total += atoll(p + strlen(needle));
        freeReplyObject(reply);
        redisFree(rc);
    }
    return total;
}

/* Gets key (loaded before) until one is answered by the fast path: the cache learns Redis's
 * clock from a TIME sent when it connects, and uses no fast path before the answer. */
static void wait_fast_path(cache *c, const char *key) {
    for (int i = 0; i < 500 && stats(c).hits_fast == 0; i++)
        get_one(c, key);
    cr_assert_gt(stats(c).hits_fast, 0, "no look-up took the fast path");
}

/* Redis's clock in ms (the node TIME is routed to). */
static long long redis_now_ms(sd_redis *r) {
    int err = 0;
    redisReply *t = sd_redis_command(r, &err, "TIME");
    cr_assert(t != NULL && t->type == REDIS_REPLY_ARRAY && t->elements == 2, "%s",
              sd_strerror(err));
    long long ms = atoll(t->element[0]->str) * 1000 + atoll(t->element[1]->str) / 1000;
    freeReplyObject(t);
    return ms;
}

static void fresh_hit_is_one_hmget(void) {
    cache_opts o = test_opts();
    o.local_bytes = 0; /* every get a Redis look-up */
    cache *c = cache_start(&o);
    cr_assert_str_eq(get_one(c, "fp").first, "fp#1");
    wait_fast_path(c, "fp");
    cache_stats s0 = stats(c);
    long long evalsha0 = command_calls("evalsha"), hmget0 = command_calls("hmget");
    for (int i = 0; i < 20; i++) {
        answers a = get_one(c, "fp");
        cr_assert_str_eq(a.first, "fp#1");
        cr_assert_eq(a.by_source[CACHE_SRC_REDIS], 1);
        cr_assert_eq(a.stale, 0);
    }
    cr_assert_eq(stats(c).hits_redis - s0.hits_redis, 20);
    cr_assert_eq(stats(c).hits_fast - s0.hits_fast, 20);
    /* (Redis counts the script's own HMGET here too: 20 is one per get, and no script.) */
    cr_assert_eq(command_calls("hmget") - hmget0, 20);
    cr_assert_eq(command_calls("evalsha") - evalsha0, 0, "a fresh hit ran the script");

    /* A negative margin turns the fast path off: every hit is the script again. */
    cache_opts off = o;
    off.fast_margin_ms = -1;
    cache *d = cache_start(&off);
    evalsha0 = command_calls("evalsha");
    for (int i = 0; i < 20; i++)
        cr_assert_str_eq(get_one(d, "fp").first, "fp#1");
    cr_assert_eq(stats(d).hits_redis, 20);
    cr_assert_eq(stats(d).hits_fast, 0);
    cr_assert_eq(command_calls("evalsha") - evalsha0, 20);
    cr_assert_eq(origin_calls(), 1);
    cache_stop(c);
    cache_stop(d);
}

Test(cache, a_fresh_redis_hit_is_one_hmget_and_no_script) {
    fresh_hit_is_one_hmget();
}
Test(cache_cluster, a_fresh_redis_hit_is_one_hmget_and_no_script) {
    fresh_hit_is_one_hmget();
}

/* The fast path answers only what the script would: a value within the margin of its expiry
 * (by Redis's clock, not the local one) and a value past it go to the script, which serves
 * the second as stale-while-revalidate and refreshes it once. */
static void near_expiry_goes_to_the_script(void) {
    cache_opts o = test_opts();
    o.local_bytes = 0;
    o.swr_ms = 600000;
    cache *c = cache_start(&o);
    cr_assert_eq(get_one(c, "warm").ok, 1);
    wait_fast_path(c, "warm");
    cr_assert_eq(get_one(c, "edge").ok, 1);
    sd_redis *r = sync_redis();

    /* Fresh for 25 ms more: inside the 50 ms margin. */
    test_redis_int(r, "HSET cache:v1:{edge} fu %lld", redis_now_ms(r) + 25);
    cache_stats s0 = stats(c);
    long long evalsha0 = command_calls("evalsha");
    answers a = get_one(c, "edge");
    cr_assert_eq(a.ok, 1);
    cr_assert_eq(stats(c).hits_fast, s0.hits_fast, "a value about to expire was a fast hit");
    cr_assert_geq(command_calls("evalsha") - evalsha0, 1);

    /* Expired a second ago by Redis's clock, inside its stale-while-revalidate window. */
    long long now = redis_now_ms(r);
    test_redis_int(r, "HSET cache:v1:{edge} fu %lld su %lld", now - 1000, now + 600000);
    s0 = stats(c);
    int calls0 = origin_calls();
    a = get_one(c, "edge");
    cr_assert_eq(a.ok, 1);
    cr_assert_eq(a.stale, 1, "an expired value was answered as fresh");
    cr_assert_eq(stats(c).hits_fast, s0.hits_fast);
    cr_assert_eq(stats(c).refreshes - s0.refreshes, 1);
    cr_assert_eq(origin_calls() - calls0, 1);
    sd_redis_free(r);
    cache_stop(c);
}

Test(cache, a_value_near_or_past_expiry_goes_to_the_script) {
    near_expiry_goes_to_the_script();
}
Test(cache_cluster, a_value_near_or_past_expiry_goes_to_the_script) {
    near_expiry_goes_to_the_script();
}
