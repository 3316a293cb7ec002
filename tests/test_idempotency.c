/*
 * test_idempotency.c - the Idempotency-Key handling of common/idempotency.h, through a small
 * app server built here on http.h, against a real redis-server and a real 3-master cluster.
 *
 * The app (forked per test) has one keyed POST route whose handler counts its runs and answers
 * by what the body says, and reports on a pipe when it runs, so tests wait for events:
 *
 *   POST /v1/things  "hold..."  the handler writes "held" and answers only on POST /release
 *                    "fail..."  500 (problem+json)
 *                    "busy..."  429 with Retry-After
 *                    anything   201, Location: /v1/things/N, {"n": N, "body": ...}
 *   POST /release    answers the oldest held request with its 201, then "released 1"
 *                    ("released 0" when none is held)
 *   GET /runs        how many times the handler ran
 *
 * N is the handler's run number, so a replayed response is told from a new one by its N.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "idempotency.h"
#include "sd.h"
#include "support.h"

/* ---- The app ------------------------------------------------------------------------------- */

typedef struct app_args {
    const char *redis_url;
    const char *scope_header; /* NULL: scope by address */
    int mark_ms;
} app_args;

typedef struct app {
    sd_http_server *srv;
    sd_aredis *redis;
    sd_idem *idem;
    int out;
    int runs;
    sd_idem_call *held[16];
    char *held_body[16];
    int held_n[16];
    int nheld;
    uv_signal_t term;
} app;

static void respond_created(app *a, sd_idem_call *call, int n, const char *body) {
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/things/%d", n);
    sd_idem_call_add_header(call, "Location", loc);
    sd_idem_call_respond_json(call, 201, json_pack("{s:i, s:s}", "n", n, "body", body));
}

static void things_handler(sd_idem_call *call, sd_http_req *req, void *udata) {
    app *a = udata;
    int n = ++a->runs;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    if (strncmp(body, "hold", 4) == 0 && a->nheld < 16) {
        a->held[a->nheld] = call;
        a->held_n[a->nheld] = n;
        a->held_body[a->nheld++] = sd_xstrdup(body);
        dprintf(a->out, "held\n");
    } else if (strncmp(body, "fail", 4) == 0) {
        sd_idem_call_respond_problem(call, 500, "about:blank", "Internal Server Error", "failed",
                                     NULL);
    } else if (strncmp(body, "busy", 4) == 0) {
        sd_idem_call_add_header(call, "Retry-After", "1");
        sd_idem_call_respond_problem(call, 429, "about:blank", "Too Many Requests", NULL, NULL);
    } else {
        respond_created(a, call, n, body);
    }
}

static void things_cb(sd_http_req *req, void *udata) {
    app *a = udata;
    sd_idem_handle(a->idem, req, things_handler, a);
}

static void release_cb(sd_http_req *req, void *udata) {
    app *a = udata;
    int k = a->nheld > 0;
    if (k) { /* the oldest held request */
        respond_created(a, a->held[0], a->held_n[0], a->held_body[0]);
        free(a->held_body[0]);
        memmove(a->held, a->held + 1, sizeof a->held[0] * (size_t)(a->nheld - 1));
        memmove(a->held_body, a->held_body + 1, sizeof a->held_body[0] * (size_t)(a->nheld - 1));
        memmove(a->held_n, a->held_n + 1, sizeof a->held_n[0] * (size_t)(a->nheld - 1));
        a->nheld--;
    }
    char text[32];
    int n = snprintf(text, sizeof text, "released %d", k);
    sd_http_req_respond(req, 200, "text/plain", text, (size_t)n);
}

static void runs_cb(sd_http_req *req, void *udata) {
    app *a = udata;
    char text[32];
    int n = snprintf(text, sizeof text, "%d", a->runs);
    sd_http_req_respond(req, 200, "text/plain", text, (size_t)n);
}

static void on_stopped(sd_http_server *srv, void *udata) {
    app *a = udata;
    sd_aredis_free(a->redis); /* first: its pending callbacks use the sd_idem */
    sd_idem_free(a->idem);
}

static void on_term(uv_signal_t *h, int sig) {
    app *a = h->data;
    uv_close((uv_handle_t *)&a->term, NULL);
    sd_http_server_stop(a->srv, 1000, on_stopped, a);
}

static void app_child(int out, void *arg) {
    const app_args *args = arg;
    /* Keep only the report pipe: an inherited descriptor (the write end of the embedded Redis's
     * janitor pipe, above all) would keep the test's teardown waiting on this process if a
     * failed assertion left it running. */
    if (out != 3) {
        dup2(out, 3);
        out = 3;
    }
    close_range(4, ~0U, 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    static app a;
    a.out = out;
    sd_redis_url url = {0};
    char err[160];
    if (sd_redis_url_parse(args->redis_url, &url, err, sizeof err) != 0)
        _exit(1);
    sd_redis_opts ropts;
    sd_redis_opts_default(&ropts);
    ropts.scripts = sd_idem_scripts;
    ropts.nscripts = sd_idem_nscripts;
    if (sd_aredis_new(&loop, &url, &ropts, &a.redis) != 0 ||
        sd_aredis_wait_connected(a.redis, 10000) != 0)
        _exit(1);
    sd_redis_url_clear(&url);
    sd_idem_opts iopts = {
        .prefix = "test:v1:idem", .scope_header = args->scope_header, .mark_ms = args->mark_ms};
    if (sd_idem_new(a.redis, &iopts, &a.idem) != 0)
        _exit(1);
    a.srv = sd_http_server_new(&loop, NULL);
    sd_idem_add_metrics(a.idem, a.srv);
    sd_http_server_route(a.srv, "POST", "/v1/things", things_cb, &a);
    sd_http_server_route(a.srv, "POST", "/release", release_cb, &a);
    sd_http_server_route(a.srv, "GET", "/runs", runs_cb, &a);
    if (sd_http_server_listen(a.srv, "127.0.0.1:0") != 0)
        _exit(1);
    uv_signal_init(&loop, &a.term);
    a.term.data = &a;
    uv_signal_start(&a.term, on_term, SIGTERM);
    test_serve_and_exit(&loop, a.srv, out);
}

typedef struct app_proc {
    pid_t pid;
    int port;
    int lines;
} app_proc;

static app_proc start_app(const char *redis_url, const char *scope_header, int mark_ms) {
    app_args args = {.redis_url = redis_url, .scope_header = scope_header, .mark_ms = mark_ms};
    app_proc p;
    p.pid = test_fork_server(app_child, &args, &p.port, &p.lines);
    return p;
}

static void stop_app(app_proc *p) {
    int status = test_kill_wait(p->pid, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the app did not exit cleanly (status %d: 3 = handles left, 4 = leak)", status);
    close(p->lines);
}

/* ---- The client ----------------------------------------------------------------------------- */

static char buf[16384];

/* Connects to the app from source address src ("127.0.0.1", "127.0.0.2": all of 127/8 is
 * loopback), so that tests can be two clients. */
static int connect_from(int port, const char *src) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &a.sin_addr);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0, "bind %s: %s", src, strerror(errno));
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends POST path with an optional key and Authorization header on a new connection from src;
 * returns the connection (the response not read yet). */
static int post_send(int port, const char *src, const char *path, const char *key, const char *auth,
                     const char *body) {
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: t\r\n%s%s%s%s%s%sContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     path, key ? "Idempotency-Key: " : "", key ? key : "", key ? "\r\n" : "",
                     auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "",
                     strlen(body), body);
    int fd = connect_from(port, src);
    test_write_all(fd, req, (size_t)n);
    return fd;
}

/* Reads the response on fd into buf, closes fd, returns the status; *body points into buf. */
static int read_close(int fd, const char **body) {
    int status = test_http_read_response(fd, buf, sizeof buf, body);
    close(fd);
    return status;
}

static int post(int port, const char *src, const char *key, const char *auth, const char *body,
                const char **resp) {
    return read_close(post_send(port, src, "/v1/things", key, auth, body), resp);
}

static int runs(app_proc *p) {
    const char *body;
    cr_assert_eq(test_http_exchange(p->port, "GET /runs HTTP/1.1\r\nHost: t\r\n\r\n", buf,
                                    sizeof buf, &body),
                 200);
    return atoi(body);
}

/* The value of a response header in buf (the last response read), or NULL. */
static const char *header(const char *name, char *out, size_t len) {
    size_t n = strlen(name);
    for (const char *p = strstr(buf, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':') {
            const char *v = p + 3 + n;
            while (*v == ' ')
                v++;
            const char *end = strstr(v, "\r\n");
            snprintf(out, len, "%.*s", (int)(end - v), v);
            return out;
        }
    }
    return NULL;
}

static void expect_problem(const char *body, const char *type) {
    char want[128];
    snprintf(want, sizeof want, "\"type\":\"%s\"", type);
    cr_assert(strstr(body, want) != NULL, "expected problem %s, got %s", type, body);
    char ct[64];
    cr_assert_str_eq(header("Content-Type", ct, sizeof ct), "application/problem+json");
}

/* ---- The rules, on any Redis ------------------------------------------------------------------
 */

/* Same key and body: the first response replayed (status, Location, body), the handler run once. */
static void check_replay(app_proc *p) {
    const char *body;
    cr_assert_eq(post(p->port, "127.0.0.1", "k-replay", NULL, "hello", &body), 201);
    char first[256], loc1[64], loc2[64], tmp[16];
    snprintf(first, sizeof first, "%s", body);
    cr_assert_not_null(header("Location", loc1, sizeof loc1));
    cr_assert_null(header("Idempotent-Replayed", tmp, sizeof tmp));
    int before = runs(p);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(post(p->port, "127.0.0.1", "k-replay", NULL, "hello", &body), 201);
        cr_assert_str_eq(body, first);
        cr_assert_str_eq(header("Location", loc2, sizeof loc2), loc1);
        cr_assert_str_eq(header("Idempotent-Replayed", tmp, sizeof tmp), "true");
        char ct[64];
        cr_assert_str_eq(header("Content-Type", ct, sizeof ct), "application/json");
    }
    cr_assert_eq(runs(p), before, "the handler ran again for a replay");
}

/* Same key, another body: 422, nothing run. */
static void check_mismatch(app_proc *p) {
    const char *body;
    cr_assert_eq(post(p->port, "127.0.0.1", "k-mismatch", NULL, "one", &body), 201);
    int before = runs(p);
    cr_assert_eq(post(p->port, "127.0.0.1", "k-mismatch", NULL, "two", &body), 422);
    expect_problem(body, "/problems/idempotency-key-reused");
    cr_assert_eq(runs(p), before);
}

/* Same key while the first is held: 409 (problem, Retry-After); once released, the replay. */
static void check_in_flight(app_proc *p) {
    const char *body;
    int first = post_send(p->port, "127.0.0.1", "/v1/things", "k-flight", NULL, "hold-1");
    char line[32];
    cr_assert_geq(test_read_line(p->lines, line, sizeof line, 10000), 0);
    cr_assert_str_eq(line, "held");
    int before = runs(p);
    cr_assert_eq(post(p->port, "127.0.0.1", "k-flight", NULL, "hold-1", &body), 409);
    expect_problem(body, "/problems/idempotency-key-in-use");
    char ra[16];
    cr_assert_not_null(header("Retry-After", ra, sizeof ra));
    cr_assert_gt(atoi(ra), 0);
    /* Another body while in flight is a misuse of the key, whatever the timing. */
    cr_assert_eq(post(p->port, "127.0.0.1", "k-flight", NULL, "hold-2", &body), 422);
    cr_assert_eq(runs(p), before);

    cr_assert_eq(read_close(post_send(p->port, "127.0.0.1", "/release", NULL, NULL, ""), &body),
                 200);
    cr_assert_str_eq(body, "released 1");
    cr_assert_eq(read_close(first, &body), 201);
    char firstbody[256];
    snprintf(firstbody, sizeof firstbody, "%s", body);
    cr_assert_eq(post(p->port, "127.0.0.1", "k-flight", NULL, "hold-1", &body), 201);
    cr_assert_str_eq(body, firstbody);
    cr_assert_eq(runs(p), before);
}

/* The same key from two client addresses: two runs, each replayed to its own client. */
static void check_scope_by_address(app_proc *p) {
    const char *body;
    char a[256];
    cr_assert_eq(post(p->port, "127.0.0.1", "k-scope", NULL, "x", &body), 201);
    snprintf(a, sizeof a, "%s", body);
    cr_assert_eq(post(p->port, "127.0.0.2", "k-scope", NULL, "x", &body), 201);
    cr_assert_str_neq(body, a, "a second client got the first client's response");
    char b[256];
    snprintf(b, sizeof b, "%s", body);
    cr_assert_eq(post(p->port, "127.0.0.1", "k-scope", NULL, "x", &body), 201);
    cr_assert_str_eq(body, a);
    cr_assert_eq(post(p->port, "127.0.0.2", "k-scope", NULL, "x", &body), 201);
    cr_assert_str_eq(body, b);
}

/* A 500 releases the key: the retry runs the handler again (and is not a 409). */
static void check_failure_releases(app_proc *p) {
    const char *body;
    int before = runs(p);
    cr_assert_eq(post(p->port, "127.0.0.1", "k-fail", NULL, "fail", &body), 500);
    cr_assert_eq(post(p->port, "127.0.0.1", "k-fail", NULL, "fail", &body), 500);
    cr_assert_eq(runs(p), before + 2, "a 5xx was replayed instead of run again");
    char tmp[16];
    cr_assert_null(header("Idempotent-Replayed", tmp, sizeof tmp));
}

static void check_all(const char *url) {
    app_proc p = start_app(url, NULL, 0);
    check_replay(&p);
    check_mismatch(&p);
    check_in_flight(&p);
    check_scope_by_address(&p);
    check_failure_releases(&p);
    stop_app(&p);
}

/* ---- Single Redis -----------------------------------------------------------------------------
 */

static sd_redis_server *redis;
static void start_redis(void) {
    redis = test_redis_start(NULL);
}
static void stop_redis(void) {
    sd_redis_server_stop(redis);
}
TestSuite(idempotency, .init = start_redis, .fini = stop_redis);

static app_proc app_on_redis(const char *scope_header, int mark_ms) {
    return start_app(sd_redis_server_url(redis), scope_header, mark_ms);
}

Test(idempotency, same_key_same_body_replays_the_first_response) {
    app_proc p = app_on_redis(NULL, 0);
    check_replay(&p);
    stop_app(&p);
}

Test(idempotency, same_key_another_body_is_422) {
    app_proc p = app_on_redis(NULL, 0);
    check_mismatch(&p);
    stop_app(&p);
}

Test(idempotency, same_key_while_in_flight_is_409) {
    app_proc p = app_on_redis(NULL, 0);
    check_in_flight(&p);
    stop_app(&p);
}

Test(idempotency, keys_are_scoped_per_client_address) {
    app_proc p = app_on_redis(NULL, 0);
    check_scope_by_address(&p);
    stop_app(&p);
}

Test(idempotency, a_5xx_releases_the_key) {
    app_proc p = app_on_redis(NULL, 0);
    check_failure_releases(&p);
    stop_app(&p);
}

Test(idempotency, a_429_is_not_replayed) {
    app_proc p = app_on_redis(NULL, 0);
    const char *body;
    cr_assert_eq(post(p.port, "127.0.0.1", "k-busy", NULL, "busy", &body), 429);
    cr_assert_eq(post(p.port, "127.0.0.1", "k-busy", NULL, "busy", &body), 429);
    cr_assert_eq(runs(&p), 2);
    stop_app(&p);
}

Test(idempotency, keys_are_scoped_per_token_when_configured) {
    app_proc p = app_on_redis("Authorization", 0);
    const char *body;
    char a[256];
    cr_assert_eq(post(p.port, "127.0.0.1", "k", "Bearer alice", "x", &body), 201);
    snprintf(a, sizeof a, "%s", body);
    cr_assert_eq(post(p.port, "127.0.0.1", "k", "Bearer bob", "x", &body), 201);
    cr_assert_str_neq(body, a, "bob got alice's response");
    /* The same token from another address is the same client. */
    cr_assert_eq(post(p.port, "127.0.0.2", "k", "Bearer alice", "x", &body), 201);
    cr_assert_str_eq(body, a);
    cr_assert_eq(runs(&p), 2);
    stop_app(&p);

    /* The token is never stored: no key or value in Redis holds it. */
    sd_redis *r = test_redis_connect(sd_redis_server_url(redis));
    redisReply *keys = sd_redis_command(r, NULL, "KEYS *");
    cr_assert(keys && keys->type == REDIS_REPLY_ARRAY && keys->elements > 0);
    for (size_t i = 0; i < keys->elements; i++) {
        cr_assert_null(strstr(keys->element[i]->str, "alice"));
        redisReply *h = sd_redis_command(r, NULL, "HGETALL %s", keys->element[i]->str);
        for (size_t j = 0; h && h->type == REDIS_REPLY_ARRAY && j < h->elements; j++)
            cr_assert_null(memmem(h->element[j]->str, h->element[j]->len, "alice", 5));
        freeReplyObject(h);
    }
    freeReplyObject(keys);
    sd_redis_free(r);
}

Test(idempotency, records_are_kept_24_hours_and_marks_expire) {
    app_proc p = app_on_redis(NULL, 0);
    const char *body;
    cr_assert_eq(post(p.port, "127.0.0.1", "k-ttl", NULL, "x", &body), 201);
    sd_redis *r = test_redis_connect(sd_redis_server_url(redis));
    redisReply *keys = sd_redis_command(r, NULL, "KEYS test:v1:idem{*}:*");
    cr_assert(keys && keys->type == REDIS_REPLY_ARRAY);
    cr_assert_eq(keys->elements, 1, "the mark outlived the record's write");
    cr_assert(strstr(keys->element[0]->str, ":rec") != NULL);
    long long ttl = test_redis_int(r, "TTL %s", keys->element[0]->str);
    cr_assert(ttl > 86000 && ttl <= 86400, "TTL %lld", ttl);
    freeReplyObject(keys);

    int held = post_send(p.port, "127.0.0.1", "/v1/things", "k-mark", NULL, "hold");
    char line[32];
    cr_assert_geq(test_read_line(p.lines, line, sizeof line, 10000), 0);
    keys = sd_redis_command(r, NULL, "KEYS test:v1:idem{*}:mark");
    cr_assert(keys && keys->type == REDIS_REPLY_ARRAY && keys->elements == 1);
    long long pttl = test_redis_int(r, "PTTL %s", keys->element[0]->str);
    cr_assert(pttl > 0 && pttl <= 60000, "the in-flight mark has no expiry of its own: %lld", pttl);
    freeReplyObject(keys);
    sd_redis_free(r);
    cr_assert_eq(read_close(post_send(p.port, "127.0.0.1", "/release", NULL, NULL, ""), &body),
                 200);
    cr_assert_eq(read_close(held, &body), 201);
    stop_app(&p);
}

Test(idempotency, a_crashed_server_blocks_its_key_only_until_the_mark_expires) {
    app_proc p = app_on_redis(NULL, 300);
    const char *body;
    int held = post_send(p.port, "127.0.0.1", "/v1/things", "k-crash", NULL, "hold");
    char line[32];
    cr_assert_geq(test_read_line(p.lines, line, sizeof line, 10000), 0);
    /* The server dies holding the key. */
    test_kill_wait(p.pid, SIGKILL);
    close(held);
    close(p.lines);

    app_proc q = app_on_redis(NULL, 300);
    sd_redis *r = test_redis_connect(sd_redis_server_url(redis));
    /* Wait for the event the rule is about: the mark's own expiry. */
    TEST_EVENTUALLY(test_redis_int(r, "DBSIZE") == 0, 10000);
    cr_assert_eq(test_redis_int(r, "DBSIZE"), 0, "the mark never expired");
    sd_redis_free(r);
    /* The retry of the same request runs (it is held too: same body), on the new server. */
    int retry = post_send(q.port, "127.0.0.1", "/v1/things", "k-crash", NULL, "hold");
    cr_assert_geq(test_read_line(q.lines, line, sizeof line, 10000), 0, "the retry did not run");
    cr_assert_str_eq(line, "held");
    cr_assert_eq(read_close(post_send(q.port, "127.0.0.1", "/release", NULL, NULL, ""), &body),
                 200);
    cr_assert_eq(read_close(retry, &body), 201);
    cr_assert_eq(runs(&q), 1);
    stop_app(&q);
}

Test(idempotency, a_handler_that_outlives_its_mark_records_nothing) {
    app_proc p = app_on_redis(NULL, 300);
    const char *body;
    int first = post_send(p.port, "127.0.0.1", "/v1/things", "k-late", NULL, "hold");
    char line[32];
    cr_assert_geq(test_read_line(p.lines, line, sizeof line, 10000), 0);
    sd_redis *r = test_redis_connect(sd_redis_server_url(redis));
    TEST_EVENTUALLY(test_redis_int(r, "DBSIZE") == 0, 10000);
    cr_assert_eq(test_redis_int(r, "DBSIZE"), 0);
    /* The key is free again: a retry takes it over and runs (and is held too). */
    int second = post_send(p.port, "127.0.0.1", "/v1/things", "k-late", NULL, "hold");
    cr_assert_geq(test_read_line(p.lines, line, sizeof line, 10000), 0);
    cr_assert_str_eq(line, "held");
    /* The first answers, finds its mark gone and records nothing: the key is still the
     * second's (409), not a replay of the first. */
    cr_assert_eq(read_close(post_send(p.port, "127.0.0.1", "/release", NULL, NULL, ""), &body),
                 200);
    cr_assert_eq(read_close(first, &body), 201);
    cr_assert(strstr(body, "\"n\":1") != NULL, "%s", body);
    cr_assert_eq(post(p.port, "127.0.0.1", "k-late", NULL, "hold", &body), 409,
                 "the late handler recorded over the key's owner");
    cr_assert_eq(read_close(post_send(p.port, "127.0.0.1", "/release", NULL, NULL, ""), &body),
                 200);
    cr_assert_eq(read_close(second, &body), 201);
    cr_assert_eq(post(p.port, "127.0.0.1", "k-late", NULL, "hold", &body), 201);
    cr_assert(strstr(body, "\"n\":2") != NULL, "the replay is not the key's owner's: %s", body);
    sd_redis_free(r);
    stop_app(&p);
}

Test(idempotency, redis_down_is_503_and_the_handler_does_not_run) {
    app_proc p = app_on_redis(NULL, 0);
    const char *body;
    char ra[16];
    /* Frozen: the begin script's deadline passes. */
    cr_assert_eq(sd_redis_server_signal(redis, SIGSTOP), 0);
    cr_assert_eq(post(p.port, "127.0.0.1", "k-frozen", NULL, "x", &body), 503);
    expect_problem(body, "/problems/idempotency-unavailable");
    cr_assert_eq(sd_redis_server_signal(redis, SIGCONT), 0);
    cr_assert_eq(runs(&p), 0, "the handler ran unchecked");
    /* Down: the connection refuses the call at once. */
    cr_assert_eq(sd_redis_server_halt(redis), 0);
    cr_assert_eq(post(p.port, "127.0.0.1", "k-down", NULL, "x", &body), 503);
    expect_problem(body, "/problems/idempotency-unavailable");
    cr_assert_str_eq(header("Retry-After", ra, sizeof ra), "1");
    cr_assert_eq(runs(&p), 0, "the handler ran unchecked");
    /* Without a key nothing needs the store: the handler runs. */
    cr_assert_eq(post(p.port, "127.0.0.1", NULL, NULL, "x", &body), 201);
    cr_assert_eq(runs(&p), 1);

    cr_assert_eq(sd_redis_server_restart(redis), 0);
    int status = 0;
    for (int i = 0;
         i < 200 && (status = post(p.port, "127.0.0.1", "k-down", NULL, "x", &body)) == 503; i++) {
        struct timespec ts = {0, 50000000}; /* the connection's reconnect backoff, at most 2 s */
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(status, 201, "still %d after Redis came back", status);
    stop_app(&p);
}

Test(idempotency, no_key_runs_every_time_and_a_bad_key_is_400) {
    app_proc p = app_on_redis(NULL, 0);
    const char *body;
    cr_assert_eq(post(p.port, "127.0.0.1", NULL, NULL, "x", &body), 201);
    cr_assert_eq(post(p.port, "127.0.0.1", NULL, NULL, "x", &body), 201);
    cr_assert_eq(runs(&p), 2);
    char longkey[300];
    memset(longkey, 'k', 256);
    longkey[256] = '\0';
    cr_assert_eq(post(p.port, "127.0.0.1", longkey, NULL, "x", &body), 400);
    expect_problem(body, "/problems/idempotency-key-invalid");
    cr_assert_eq(post(p.port, "127.0.0.1", "\"\"", NULL, "x", &body), 400);
    /* A quoted key (an RFC 8941 string, as the draft writes it) is the same key unquoted. */
    cr_assert_eq(post(p.port, "127.0.0.1", "\"q1\"", NULL, "y", &body), 201);
    char a[256];
    snprintf(a, sizeof a, "%s", body);
    cr_assert_eq(post(p.port, "127.0.0.1", "q1", NULL, "y", &body), 201);
    cr_assert_str_eq(body, a);
    cr_assert_eq(runs(&p), 3);
    stop_app(&p);
}

/* ---- Redis Cluster ----------------------------------------------------------------------------
 */

Test(idempotency_cluster, every_rule_holds_on_three_masters, .timeout = 120) {
    sd_redis_cluster_server *cl = test_redis_cluster_start(0);
    check_all(sd_redis_cluster_server_url(cl));
    sd_redis_cluster_server_stop(cl);
}
