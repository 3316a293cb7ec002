/*
 * test_cache_serve.c - `cache serve`, the caching reverse proxy, run from build/bin against a
 * private redis-server and a forked origin that counts its calls and can hold its answers.
 *
 * Waits are for events (a response, a line from the origin); where only another process's
 * counters can tell (every instance has its flight on Redis), /metrics is polled.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd.h"
#include "support.h"

/* ---- The origin: GET anything answers "PATH#N" ("PATH#N+auth" to a request with
 * Authorization); /ns... adds Cache-Control: no-store, /cookie... a Set-Cookie, /pub... public,
 * /smax... s-maxage, /priv... only a max-age ----------------------------------------------------
 */

typedef struct origin {
    int out, calls, hold;
    sd_http_req *held[16];
    int held_no[16], nheld;
} origin;

static void origin_answer(sd_http_req *req, int no) {
    const char *path = sd_http_req_path(req);
    char body[256];
    int n = snprintf(body, sizeof body, "%s#%d%s", path, no,
                     sd_http_req_header(req, "Authorization") ? "+auth" : "");
    if (strncmp(path, "/ns", 3) == 0)
        sd_http_req_add_header(req, "Cache-Control", "no-store");
    if (strncmp(path, "/pub", 4) == 0)
        sd_http_req_add_header(req, "Cache-Control", "public, max-age=60");
    if (strncmp(path, "/smax", 5) == 0)
        sd_http_req_add_header(req, "Cache-Control", "s-maxage=60");
    if (strncmp(path, "/priv", 5) == 0)
        sd_http_req_add_header(req, "Cache-Control", "max-age=60");
    if (strncmp(path, "/cookie", 7) == 0)
        sd_http_req_add_header(req, "Set-Cookie", "id=1");
    sd_http_req_respond(req, 200, "text/plain", body, (size_t)n);
}

static void origin_value(sd_http_req *req, void *udata) {
    origin *o = udata;
    int no = ++o->calls;
    dprintf(o->out, "call %d\n", no);
    if (o->hold && o->nheld < 16) {
        o->held[o->nheld] = req;
        o->held_no[o->nheld++] = no;
        return;
    }
    origin_answer(req, no);
}

static void origin_ctl(sd_http_req *req, void *udata) {
    origin *o = udata;
    const char *p = sd_http_req_path(req);
    if (strcmp(p, "/_hold") == 0)
        o->hold = 1;
    if (strcmp(p, "/_release") == 0) {
        o->hold = 0;
        for (int i = 0; i < o->nheld; i++)
            origin_answer(o->held[i], o->held_no[i]);
        o->nheld = 0;
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
    sd_http_server *srv = sd_http_server_new(&l, NULL);
    sd_http_server_route(srv, "POST", "/_*", origin_ctl, &o);
    sd_http_server_route(srv, "GET", "*", origin_value, &o);
    if (sd_http_server_listen(srv, "127.0.0.1:0") != 0)
        _exit(1);
    test_serve_and_exit(&l, srv, out);
}

/* ---- Fixture ----------------------------------------------------------------------------------
 */

static sd_redis_server *server;
static pid_t origin_pid;
static int origin_port, origin_lines;
static bench_server inst[4];

static void start(void) {
    server = test_redis_start(NULL);
    origin_pid = test_fork_server(origin_main, NULL, &origin_port, &origin_lines);
}

static void stop(void) {
    for (int i = 0; i < 4; i++)
        bench_server_stop(&inst[i], SIGTERM, 10000);
    close(origin_lines);
    test_kill_wait(origin_pid, SIGKILL);
    sd_redis_server_stop(server);
}

TestSuite(cache_serve, .init = start, .fini = stop, .timeout = 120);

static void start_instances(int n) {
    char origin_url[64];
    snprintf(origin_url, sizeof origin_url, "http://127.0.0.1:%d", origin_port);
    for (int i = 0; i < n; i++) {
        const char *argv[] = {"cache",    "serve",    "--listen", "127.0.0.1:0",
                              "--origin", origin_url, "--redis",  sd_redis_server_url(server),
                              NULL};
        inst[i] = test_server_start(argv);
    }
}

static int origin_ctl_send(const char *path) {
    char req[128], buf[1024];
    const char *body = NULL;
    snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: o\r\nContent-Length: 0\r\n\r\n", path);
    cr_assert_eq(test_http_exchange(origin_port, req, buf, sizeof buf, &body), 200);
    return atoi(body);
}

/* One GET; returns the status, the body and the X-Cache value. */
static int get(int port, const char *path, char *body, size_t blen, char *xcache, size_t xlen) {
    char req[256], buf[8192];
    const char *b = NULL;
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: site\r\n\r\n", path);
    int st = test_http_exchange(port, req, buf, sizeof buf, &b);
    snprintf(body, blen, "%s", b ? b : "");
    const char *x = strstr(buf, "X-Cache: ");
    snprintf(xcache, xlen, "%.*s", x ? (int)strcspn(x + 9, "\r") : 0, x ? x + 9 : "");
    return st;
}

/* One GET with an Authorization header; returns the status and the body. */
static int get_authorized(int port, const char *path, char *body, size_t blen) {
    char req[256], buf[8192];
    const char *b = NULL;
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer t\r\n\r\n",
             path);
    int st = test_http_exchange(port, req, buf, sizeof buf, &b);
    snprintf(body, blen, "%s", b ? b : "");
    return st;
}

/* The value of one counter in an instance's /metrics. */
static long long metric(int port, const char *name) {
    static char buf[65536];
    const char *body = NULL;
    cr_assert_eq(test_http_exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", buf,
                                    sizeof buf, &body),
                 200);
    const char *p = strstr(body, name);
    return p ? atoll(p + strlen(name) + 1) : -1;
}

/* ---- The done-when of the issue: 4 instances, 400 requests, one origin request ----------------
 */

#define NREQ 400

Test(cache_serve, four_instances_answer_400_concurrent_requests_with_one_origin_call) {
    start_instances(4);
    origin_ctl_send("/_hold");
    static int fds[NREQ];
    char req[128];
    snprintf(req, sizeof req, "GET /cold?x=1 HTTP/1.1\r\nHost: site\r\n\r\n");
    for (int i = 0; i < NREQ; i++) {
        fds[i] = test_tcp_connect(inst[i % 4].port);
        test_write_all(fds[i], req, strlen(req));
    }
    /* Every instance has its flight on Redis (one loading, three waiting) before the origin
     * answers: only their counters can say so. */
    long long on_redis = 0;
    TEST_EVENTUALLY((on_redis = metric(inst[0].port, "cache_misses_total") +
                                metric(inst[1].port, "cache_misses_total") +
                                metric(inst[2].port, "cache_misses_total") +
                                metric(inst[3].port, "cache_misses_total") +
                                metric(inst[0].port, "cache_waits_total") +
                                metric(inst[1].port, "cache_waits_total") +
                                metric(inst[2].port, "cache_waits_total") +
                                metric(inst[3].port, "cache_waits_total")) >= 4,
                    20000);
    cr_assert_geq(on_redis, 4);
    origin_ctl_send("/_release");
    int miss = 0, coalesced = 0;
    static char buf[8192];
    for (int i = 0; i < NREQ; i++) {
        const char *body = NULL;
        cr_assert_eq(test_http_read_response(fds[i], buf, sizeof buf, &body), 200);
        cr_assert_str_eq(body, "/cold#1");
        miss += strstr(buf, "X-Cache: MISS") != NULL;
        coalesced += strstr(buf, "X-Cache: COALESCED") != NULL;
        close(fds[i]);
    }
    cr_assert_eq(origin_ctl_send("/_calls"), 1, "more than one origin request");
    cr_assert_eq(miss, 1);
    cr_assert_eq(coalesced, NREQ - 1);
    /* The three other instances were each woken once (tests/test_cache.c shows, with the
     * fallback look-up switched off, that the message alone does it). */
    long long woken = 0;
    for (int i = 0; i < 4; i++)
        woken += metric(inst[i].port, "cache_woken_total{by=\"message\"}") +
                 metric(inst[i].port, "cache_woken_total{by=\"poll\"}");
    cr_assert_eq(woken, 3);
    /* And then a hit, from the local tier. */
    char body[256], x[32];
    cr_assert_eq(get(inst[1].port, "/cold?x=1", body, sizeof body, x, sizeof x), 200);
    cr_assert_str_eq(x, "HIT");
    cr_assert_str_eq(body, "/cold#1");
}

/* ---- After the subscriber is killed and the value purged, nobody serves the old one -----------
 */

Test(cache_serve, after_a_killed_subscriber_and_a_purge_no_instance_serves_the_old_value) {
    start_instances(2);
    char body[256], x[32];
    for (int i = 0; i < 2; i++)
        get(inst[i].port, "/p", body, sizeof body, x, sizeof x);
    for (int i = 0; i < 2; i++) {
        get(inst[i].port, "/p", body, sizeof body, x, sizeof x);
        cr_assert_str_eq(body, "/p#1");
        cr_assert_str_eq(x, "HIT");
    }
    sd_redis *r = test_redis_connect(sd_redis_server_url(server));
    test_redis_int(r, "CLIENT KILL TYPE pubsub");
    sd_redis_free(r);
    for (int i = 0; i < 2; i++) {
        TEST_EVENTUALLY(metric(inst[i].port, "cache_local_drops_total") == 1 &&
                            metric(inst[i].port, "cache_degraded") == 0,
                        20000);
        cr_assert_eq(metric(inst[i].port, "cache_local_drops_total"), 1);
    }
    char req[128], buf[2048];
    snprintf(req, sizeof req, "PURGE /p HTTP/1.1\r\nHost: site\r\n\r\n");
    cr_assert_eq(test_http_exchange(inst[0].port, req, buf, sizeof buf, NULL), 200);
    for (int i = 0; i < 2; i++) {
        get(inst[i].port, "/p", body, sizeof body, x, sizeof x);
        cr_assert_str_eq(body, "/p#2", "instance %d served '%s' (%s)", i, body, x);
    }
    cr_assert_eq(origin_ctl_send("/_calls"), 2);
}

/* ---- Cache-Control: no-store and Set-Cookie are not stored
 * --------------------------------------- */

Test(cache_serve, no_store_and_set_cookie_responses_are_not_stored) {
    start_instances(1);
    char body[256], x[32];
    for (int i = 1; i <= 2; i++) {
        get(inst[0].port, "/ns", body, sizeof body, x, sizeof x);
        cr_assert_str_eq(x, "MISS");
    }
    for (int i = 1; i <= 2; i++) {
        get(inst[0].port, "/cookie", body, sizeof body, x, sizeof x);
        cr_assert_str_eq(x, "MISS");
    }
    cr_assert_eq(origin_ctl_send("/_calls"), 4);
    /* A plain response is stored. */
    get(inst[0].port, "/plain", body, sizeof body, x, sizeof x);
    get(inst[0].port, "/plain", body, sizeof body, x, sizeof x);
    cr_assert_str_eq(x, "HIT");
    cr_assert_eq(origin_ctl_send("/_calls"), 5);
}

/* A request with Authorization always goes to the origin, with its header. Its answer is
 * stored for everyone else only when it says public or s-maxage (RFC 9111 section 3.5): then
 * the next request without Authorization is answered from it, with no origin call. */
Test(cache_serve, an_authorized_answer_is_shared_only_when_public) {
    start_instances(1);
    char body[256], x[32];
    const char *paths[] = {"/pub-a", "/smax-a", "/priv-a"};
    /* /pub-a was invalidated before, as by a purge long ago: its count in Redis is 1. What
     * counts is that it does not move while the request is at the origin. */
    sd_redis *r = test_redis_connect(sd_redis_server_url(server));
    cr_assert_eq(test_redis_int(r, "INCR %s", "cache:v1:{GET site /pub-a}:gen"), 1);
    sd_redis_free(r);
    int calls = origin_ctl_send("/_calls");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(get_authorized(inst[0].port, paths[i], body, sizeof body), 200);
        char want[64];
        snprintf(want, sizeof want, "%s#%d+auth", paths[i], ++calls);
        cr_assert_str_eq(body, want, "the origin did not get the Authorization header");
        cr_assert_eq(get(inst[0].port, paths[i], body, sizeof body, x, sizeof x), 200);
        if (i < 2) {
            cr_assert_str_eq(body, want, "%s: the public answer was not shared", paths[i]);
        } else {
            snprintf(want, sizeof want, "%s#%d", paths[i], ++calls);
            cr_assert_str_eq(body, want, "the private answer was shared");
            cr_assert_str_eq(x, "MISS");
        }
        cr_assert_eq(origin_ctl_send("/_calls"), calls);
    }
    cr_assert_eq(metric(inst[0].port, "cache_authorized_shared_total"), 2);
    /* Never answered from the cache itself: the origin may answer it differently. */
    cr_assert_eq(get_authorized(inst[0].port, "/pub-a", body, sizeof body), 200);
    cr_assert_eq(origin_ctl_send("/_calls"), calls + 1);
}

/* A purge that comes while a request with Authorization is at the origin: the answer was made
 * before the purge, so it is not shared afterwards, public or not. */
Test(cache_serve, an_authorized_answer_overtaken_by_a_purge_is_not_shared) {
    start_instances(1);
    int calls = origin_ctl_send("/_calls");
    origin_ctl_send("/_hold");
    int fd = test_tcp_connect(inst[0].port);
    const char *req = "GET /pub-race HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer t\r\n\r\n";
    test_write_all(fd, req, strlen(req));
    char line[64], buf[4096], body[256], x[32];
    cr_assert_gt(test_read_line(origin_lines, line, sizeof line, 20000), 0, "the origin got none");
    cr_assert_eq(test_http_exchange(inst[0].port, "PURGE /pub-race HTTP/1.1\r\nHost: site\r\n\r\n",
                                    buf, sizeof buf, NULL),
                 200);
    origin_ctl_send("/_release");
    const char *b = NULL;
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &b), 200);
    close(fd);
    char want[64];
    snprintf(want, sizeof want, "/pub-race#%d+auth", calls + 1);
    cr_assert_str_eq(b, want);
    cr_assert_eq(get(inst[0].port, "/pub-race", body, sizeof body, x, sizeof x), 200);
    snprintf(want, sizeof want, "/pub-race#%d", calls + 2);
    cr_assert_str_eq(body, want, "the answer from before the purge was shared");
}

/* A purge at another instance whose message has not come when the origin answers: here, what
 * its script writes in Redis (the key's invalidation count goes up), without the message. The
 * count read under the lease differs from the one read before the request left: the answer is
 * not shared, and the load asks the origin itself. */
Test(cache_serve, an_authorized_answer_overtaken_by_a_purge_elsewhere_is_not_shared) {
    start_instances(1);
    sd_redis *r = test_redis_connect(sd_redis_server_url(server));
    int calls = origin_ctl_send("/_calls");
    origin_ctl_send("/_hold");
    int fd = test_tcp_connect(inst[0].port);
    const char *req = "GET /pub-far HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer t\r\n\r\n";
    test_write_all(fd, req, strlen(req));
    char line[64], buf[4096], body[256], x[32], want[64];
    cr_assert_gt(test_read_line(origin_lines, line, sizeof line, 20000), 0, "the origin got none");
    cr_assert_eq(test_redis_int(r, "INCR %s", "cache:v1:{GET site /pub-far}:gen"), 1);
    origin_ctl_send("/_release");
    const char *b = NULL;
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &b), 200);
    close(fd);
    snprintf(want, sizeof want, "/pub-far#%d+auth", calls + 1);
    cr_assert_str_eq(b, want);
    TEST_EVENTUALLY(metric(inst[0].port, "cache_authorized_overtaken_total") == 1, 10000);
    cr_assert_eq(metric(inst[0].port, "cache_authorized_overtaken_total"), 1);
    cr_assert_eq(metric(inst[0].port, "cache_authorized_shared_total"), 0);
    cr_assert_eq(get(inst[0].port, "/pub-far", body, sizeof body, x, sizeof x), 200);
    snprintf(want, sizeof want, "/pub-far#%d", calls + 2);
    cr_assert_str_eq(body, want, "the answer from before the purge was shared");
    sd_redis_free(r);
}

/* With --admin-token-file, a purge wants the bearer token (401 without it, nothing purged). */
Test(cache_serve, with_an_admin_token_a_purge_wants_it) {
    char file[] = "/tmp/cache-token-XXXXXX";
    test_temp_file(file, "purge-4b8e1d0c7a92f356\n");
    char origin_url[64];
    snprintf(origin_url, sizeof origin_url, "http://127.0.0.1:%d", origin_port);
    const char *argv[] = {"cache",
                          "serve",
                          "--listen",
                          "127.0.0.1:0",
                          "--origin",
                          origin_url,
                          "--redis",
                          sd_redis_server_url(server),
                          "--admin-token-file",
                          file,
                          NULL};
    inst[0] = test_server_start(argv);
    unlink(file);
    char body[256], x[32], buf[2048];
    get(inst[0].port, "/tok", body, sizeof body, x, sizeof x);
    cr_assert_eq(test_http_exchange(inst[0].port, "PURGE /tok HTTP/1.1\r\nHost: site\r\n\r\n", buf,
                                    sizeof buf, NULL),
                 401);
    get(inst[0].port, "/tok", body, sizeof body, x, sizeof x);
    cr_assert_str_eq(x, "HIT", "a refused purge purged");
    cr_assert_eq(test_http_exchange(inst[0].port,
                                    "PURGE /tok HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer "
                                    "purge-4b8e1d0c7a92f356\r\n\r\n",
                                    buf, sizeof buf, NULL),
                 200);
    get(inst[0].port, "/tok", body, sizeof body, x, sizeof x);
    cr_assert_str_eq(x, "MISS", "the purge with the token did not purge");
}

Test(cache_serve, post_v1_purge_invalidates_a_path) {
    start_instances(1);
    char body[256], x[32];
    get(inst[0].port, "/q", body, sizeof body, x, sizeof x);
    const char *req = "POST /v1/purge HTTP/1.1\r\nHost: site\r\nContent-Type: application/json\r\n"
                      "Content-Length: 13\r\n\r\n{\"path\":\"/q\"}";
    char buf[2048];
    cr_assert_eq(test_http_exchange(inst[0].port, req, buf, sizeof buf, NULL), 200);
    get(inst[0].port, "/q", body, sizeof body, x, sizeof x);
    cr_assert_str_eq(body, "/q#2");
}
