/*
 * test_webhook_sender.c - `webhook serve` and `webhook deliver` (webhook/sender.c) as processes,
 * against a real Redis (or a cluster: SD_TEST_REDIS=cluster) and endpoints that are forked HTTP
 * servers on loopback.
 *
 * An endpoint (endpoint_start) answers from a script, one entry per request in order, the last
 * repeated: "200", "500", "410", "429:1" (429 with Retry-After: 1), "hang" (never answers: a
 * black hole), "slow" (answers 200 after 1 s). It verifies every request's Standard Webhooks
 * signature with the endpoint's secret (signature.h) and writes one line per request to the
 * test: "<webhook-id> <verified 0|1> <answer> <monotonic ms> <body bytes>". Tests wait for
 * those lines (or for the API to show a state), never sleep to synchronise, and assert on
 * counts and order, not on how fast anything went.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "spawn.h"
#include "http.h"
#include "jobqueue.h"
#include "node.h"
#include "sd.h"
#include "signature.h"
#include "support.h"

/* ---- the endpoint ---- */

typedef struct endpoint_cfg {
    const char *script;
    char secret[WH_SECRET_TEXT_MAX];
    int port;          /* 0: any */
    int redirect_port; /* "302" answers redirect to 127.0.0.1:redirect_port */
} endpoint_cfg;

typedef struct ep_child {
    endpoint_cfg *cfg;
    wh_secret secret;
    int out, n;
} ep_child;

/* The script's entry for request n (0-based). */
static void script_entry(const char *script, int n, char *out, size_t len) {
    const char *p = script;
    for (int i = 0; i < n; i++) {
        const char *c = strchr(p, ',');
        if (!c)
            break;
        p = c + 1;
    }
    size_t k = strcspn(p, ",");
    snprintf(out, len, "%.*s", (int)(k < len - 1 ? k : len - 1), p);
}

typedef struct slow_reply {
    uv_timer_t t;
    sd_http_req *req;
} slow_reply;

static void on_slow_closed(uv_handle_t *h) {
    free(h->data);
}

static void on_slow(uv_timer_t *t) {
    slow_reply *s = t->data;
    sd_http_req_respond(s->req, 200, "text/plain", "ok", 2);
    uv_close((uv_handle_t *)t, on_slow_closed);
}

static void on_ep_request(sd_http_req *req, void *udata) {
    ep_child *c = udata;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    const char *id = sd_http_req_header(req, "webhook-id");
    int ok = wh_signature_verify(&c->secret, 1, id, sd_http_req_header(req, "webhook-timestamp"),
                                 sd_http_req_header(req, "webhook-signature"), body, len,
                                 (int64_t)time(NULL), 300) == 0;
    char e[32];
    script_entry(c->cfg->script, c->n++, e, sizeof e);
    /* Then what an independent verifier needs: the timestamp, the signature header (blanks as
     * '|'), the body in base64. */
    char *b64 = sd_xmalloc(4 * (len / 3 + 1) + 1);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body, (int)len);
    const char *ts = sd_http_req_header(req, "webhook-timestamp");
    const char *sh = sd_http_req_header(req, "webhook-signature");
    char *sig = sd_xstrdup(sh ? sh : "-");
    for (char *p = sig; *p; p++)
        if (*p == ' ')
            *p = '|';
    dprintf(c->out, "%s %d %s %llu %zu %s %s %s\n", id ? id : "-", ok, e,
            (unsigned long long)sd_now_ms(), len, ts ? ts : "-", sig, len ? b64 : "=");
    free(b64);
    free(sig);
    if (strcmp(e, "hang") == 0)
        return; /* never answered: the server keeps the connection until it stops */
    if (strcmp(e, "slow") == 0) {
        slow_reply *s = sd_xcalloc(1, sizeof *s);
        s->req = req;
        uv_timer_init(uv_default_loop(), &s->t);
        s->t.data = s;
        uv_timer_start(&s->t, on_slow, 1000, 0);
        return;
    }
    int status = atoi(e);
    if (status == 302) {
        char loc[64];
        snprintf(loc, sizeof loc, "http://127.0.0.1:%d/elsewhere", c->cfg->redirect_port);
        sd_http_req_add_header(req, "Location", loc);
    }
    const char *ra = strchr(e, ':');
    if (ra)
        sd_http_req_add_header(req, "Retry-After", ra + 1);
    sd_http_req_respond(req, status, "text/plain", "x", 1);
}

static void endpoint_main(int out, void *arg) {
    ep_child c = {.cfg = arg, .out = out};
    wh_secret_parse(c.cfg->secret, &c.secret);
    uv_loop_t *loop = uv_default_loop();
    sd_http_server *srv = sd_http_server_new(loop, NULL);
    sd_http_server_route(srv, "POST", "*", on_ep_request, &c);
    sd_http_server_route(srv, "GET", "*", on_ep_request, &c); /* a followed 302 turns into GET */
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", c.cfg->port);
    if (sd_http_server_listen(srv, addr) != 0)
        _exit(5);
    dprintf(out, "%d\n", sd_http_server_port(srv));
    uv_run(loop, UV_RUN_DEFAULT);
    _exit(0);
}

typedef struct endpoint {
    endpoint_cfg cfg;
    pid_t pid;
    int port, lines;
    char id[64];
} endpoint;

static void endpoint_start(endpoint *e, const char *script, int port) {
    e->cfg.script = script;
    e->cfg.port = port;
    if (!e->cfg.secret[0])
        cr_assert_eq(wh_secret_generate(32, e->cfg.secret, sizeof e->cfg.secret), 0);
    e->pid = test_fork_server(endpoint_main, &e->cfg, &e->port, &e->lines);
}

static void endpoint_stop(endpoint *e) {
    if (e->pid > 0)
        test_kill_wait(e->pid, SIGKILL);
    e->pid = 0;
    if (e->lines > 0)
        close(e->lines);
    e->lines = 0;
}

/* One request the endpoint saw. */
typedef struct seen {
    char id[64];
    int verified;
    char answer[32];
    unsigned long long at_ms;
    size_t len;
    char ts[32], sig[512], body[8192];
} seen;

/* Waits (up to timeout_ms) for the endpoint's next request; returns 0, or -1 when none came. */
static int endpoint_next(endpoint *e, seen *s, int timeout_ms) {
    static char line[9000];
    if (test_read_line(e->lines, line, sizeof line, timeout_ms) <= 0)
        return -1;
    cr_assert_eq(sscanf(line, "%63s %d %31s %llu %zu %31s %511s %8191s", s->id, &s->verified,
                        s->answer, &s->at_ms, &s->len, s->ts, s->sig, s->body),
                 8, "bad line '%s'", line);
    for (char *p = s->sig; *p; p++)
        if (*p == '|')
            *p = ' ';
    if (strcmp(s->body, "=") == 0)
        s->body[0] = 0;
    return 0;
}

/* ---- the sender ---- */

typedef struct rig {
    test_target *redis;
    bench_server srv;
} rig;

static void sender_start_args(rig *g, const char *const *extra) {
    char *bin = test_bin_path("webhook");
    const char *argv[32] = {bin,           "serve",   "--listen",
                            "127.0.0.1:0", "--redis", test_target_url(g->redis)};
    int n = 6;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char err[256];
    cr_assert_eq(bench_server_spawn(argv, NULL, 20000, &g->srv, err, sizeof err), 0, "%s", err);
    free(bin);
}

static void rig_start(rig *g, const char *const *extra) {
    memset(g, 0, sizeof *g);
    g->redis = test_target_start();
    sender_start_args(g, extra);
}

static void rig_stop(rig *g) {
    if (g->srv.pid) {
        int st = bench_server_stop(&g->srv, SIGTERM, 20000);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "webhook serve did not stop cleanly: %d",
                  st);
    }
    test_target_stop(g->redis);
}

/* One API call; returns the status and the parsed body in *out (NULL when not JSON). */
static int api(rig *g, const char *method, const char *path, const char *body, const char *hdr,
               json_t **out) {
    char *req = sd_xasprintf("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%s"
                             "Content-Length: %zu\r\n\r\n%s",
                             method, path, hdr ? hdr : "", hdr ? "\r\n" : "",
                             body ? strlen(body) : 0, body ? body : "");
    static char buf[1 << 16];
    const char *rb = NULL;
    int st = test_http_exchange(g->srv.port, req, buf, sizeof buf, &rb);
    free(req);
    if (out)
        *out = rb ? json_loads(rb, 0, NULL) : NULL;
    return st;
}

static void endpoint_create(rig *g, endpoint *e, const char *extra_json) {
    char *body = sd_xasprintf("{\"url\":\"http://127.0.0.1:%d/hook\",\"secret\":\"%s\"%s}", e->port,
                              e->cfg.secret, extra_json ? extra_json : "");
    json_t *j;
    cr_assert_eq(api(g, "POST", "/v1/endpoints", body, NULL, &j), 201);
    snprintf(e->id, sizeof e->id, "%s", json_string_value(json_object_get(j, "id")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "secret")), e->cfg.secret);
    json_decref(j);
    free(body);
}

static void message_post(rig *g, const char *type, char *id_out, size_t len) {
    char *body =
        sd_xasprintf("{\"event_type\":\"%s\",\"payload\":{\"n\":1,\"s\":\"\\u00e9\"}}", type);
    json_t *j;
    cr_assert_eq(api(g, "POST", "/v1/messages", body, NULL, &j), 202);
    snprintf(id_out, len, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    free(body);
}

/* Polls the API (every 20 ms, up to 30 s) until GET path's JSON satisfies pred. */
static json_t *api_until(rig *g, const char *path, int (*pred)(json_t *, void *), void *arg) {
    for (int i = 0; i < 1500; i++) {
        json_t *j = NULL;
        if (api(g, "GET", path, NULL, NULL, &j) == 200 && pred(j, arg))
            return j;
        json_decref(j);
        usleep(20000);
    }
    cr_assert_fail("GET %s never reached the expected state", path);
    return NULL;
}

static int has_dead_letter_for(json_t *arr, void *msg) {
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d) if (strcmp(json_string_value(json_object_get(d, "message_id")),
                                             msg) == 0) return 1;
    return 0;
}

static json_t *dead_letter_for(rig *g, const char *msg) {
    json_t *arr = api_until(g, "/v1/dead-letters", has_dead_letter_for, (void *)msg);
    size_t i;
    json_t *d, *found = NULL;
    json_array_foreach(arr, i, d) if (strcmp(json_string_value(json_object_get(d, "message_id")),
                                             msg) == 0) found = json_incref(d);
    json_decref(arr);
    return found;
}

static const char *FAST[] = {"--retry-schedule", "50ms,50ms", "--timeout-ms", "2000",
                             "--allow-private",  "--poll-ms", "10",           NULL};

TestSuite(webhook_sender, .timeout = 240);

Test(webhook_sender, a_message_is_delivered_signed_with_the_message_id) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "user.created", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0, "no delivery came");
    cr_expect_str_eq(s.id, msg);
    cr_expect_eq(s.verified, 1, "the signature did not verify");
    json_t *m;
    char path[128];
    snprintf(path, sizeof path, "/v1/messages/%s", msg);
    cr_assert_eq(api(&g, "GET", path, NULL, NULL, &m), 200);
    cr_expect_eq(json_object_get(json_object_get(m, "payload"), "n") != NULL, 1);
    json_decref(m);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, failures_follow_the_schedule_then_a_dead_letter_replays_with_the_same_id) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "500,500,500,200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    seen s[4];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(endpoint_next(&e, &s[i], 20000), 0, "attempt %d did not come", i + 1);
        cr_expect_str_eq(s[i].id, msg);
        cr_expect_eq(s[i].verified, 1);
    }
    /* The schedule is 50 ms with -10% jitter: each retry waited at least 45 ms. */
    cr_expect_geq(s[1].at_ms - s[0].at_ms, 45);
    cr_expect_geq(s[2].at_ms - s[1].at_ms, 45);
    json_t *d = dead_letter_for(&g, msg);
    cr_expect_eq(json_integer_value(json_object_get(d, "attempts")), 3);
    cr_expect_eq(endpoint_next(&e, &s[3], 300), -1, "an attempt after the dead letter");
    char path[128];
    snprintf(path, sizeof path, "/v1/dead-letters/%s/replay",
             json_string_value(json_object_get(d, "id")));
    json_t *r;
    cr_assert_eq(api(&g, "POST", path, "", NULL, &r), 202);
    json_decref(r);
    cr_assert_eq(endpoint_next(&e, &s[3], 20000), 0, "the replay did not come");
    cr_expect_str_eq(s[3].id, msg, "the replay has another webhook-id");
    cr_expect_eq(s[3].verified, 1);
    json_t *arr;
    cr_assert_eq(api(&g, "GET", "/v1/dead-letters", NULL, NULL, &arr), 200);
    cr_expect_eq(has_dead_letter_for(arr, msg), 0, "the replayed dead letter is still listed");
    json_decref(arr);
    json_decref(d);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, retry_after_of_a_429_is_honoured) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "429:1,200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    seen a, b;
    cr_assert_eq(endpoint_next(&e, &a, 20000), 0);
    cr_assert_eq(endpoint_next(&e, &b, 20000), 0);
    /* The schedule says 50 ms; Retry-After says 1 s, and wins. */
    cr_expect_geq(b.at_ms - a.at_ms, 950, "the retry came after %llu ms", b.at_ms - a.at_ms);
    endpoint_stop(&e);
    rig_stop(&g);
}

static int is_disabled(json_t *j, void *arg) {
    const char *st = json_string_value(json_object_get(j, "state"));
    return st && strcmp(st, "disabled") == 0;
}

Test(webhook_sender, a_410_disables_the_endpoint_and_keeps_its_messages) {
    rig g;
    rig_start(&g, FAST);
    endpoint gone = {0}, ok = {0};
    endpoint_start(&gone, "410", 0);
    endpoint_create(&g, &gone, NULL);
    char msg[64], msg2[64];
    message_post(&g, "a", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&gone, &s, 20000), 0);
    char path[128];
    snprintf(path, sizeof path, "/v1/endpoints/%s", gone.id);
    json_decref(api_until(&g, path, is_disabled, NULL));
    /* Later messages reach a healthy endpoint and never the disabled one. */
    endpoint_start(&ok, "200", 0);
    endpoint_create(&g, &ok, NULL);
    message_post(&g, "a", msg2, sizeof msg2);
    cr_assert_eq(endpoint_next(&ok, &s, 20000), 0);
    cr_expect_str_eq(s.id, msg2);
    cr_expect_eq(endpoint_next(&gone, &s, 300), -1, "a disabled endpoint got a request");
    json_t *arr;
    cr_assert_eq(api(&g, "GET", "/v1/dead-letters", NULL, NULL, &arr), 200);
    cr_expect_eq(json_array_size(arr), 0, "the disabled endpoint's message was dropped");
    json_decref(arr);
    endpoint_stop(&gone);
    endpoint_stop(&ok);
    rig_stop(&g);
}

Test(webhook_sender, a_403_stops_after_three_attempts) {
    rig g;
    const char *args[] = {"--retry-schedule",
                          "50ms,50ms,50ms,50ms,50ms,50ms",
                          "--allow-private",
                          "--poll-ms",
                          "10",
                          NULL};
    rig_start(&g, args);
    endpoint e = {0};
    endpoint_start(&e, "403", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    seen s;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    json_t *d = dead_letter_for(&g, msg);
    cr_expect_eq(json_integer_value(json_object_get(d, "attempts")), 3);
    cr_expect_eq(endpoint_next(&e, &s, 300), -1, "a fourth attempt on 403");
    json_decref(d);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, a_receiver_down_then_up_gets_the_message) {
    rig g;
    const char *args[] = {"--retry-schedule",
                          "100ms,100ms,200ms,200ms,400ms,400ms,1s,1s,1s",
                          "--allow-private",
                          "--poll-ms",
                          "10",
                          NULL};
    rig_start(&g, args);
    endpoint e = {0};
    e.port = test_closed_port();
    cr_assert_eq(wh_secret_generate(32, e.cfg.secret, sizeof e.cfg.secret), 0);
    endpoint_create(&g, &e, NULL);
    char msg[64], path[128];
    message_post(&g, "a", msg, sizeof msg);
    snprintf(path, sizeof path, "/v1/endpoints/%s", e.id);
    for (int i = 0;; i++) { /* until an attempt has failed */
        json_t *j;
        cr_assert_eq(api(&g, "GET", path, NULL, NULL, &j), 200);
        long long failed = json_integer_value(json_object_get(j, "failed"));
        json_decref(j);
        if (failed > 0)
            break;
        cr_assert_lt(i, 1500, "no attempt failed");
        usleep(20000);
    }
    endpoint_start(&e, "200", e.port);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 30000), 0, "the message never came");
    cr_expect_str_eq(s.id, msg);
    endpoint_stop(&e);
    rig_stop(&g);
}

/* With the breaker open and the endpoint's queue empty (every earlier message dead), a new
 * message is parked; it is moved while the breaker is half open and is the probe that closes it,
 * so an endpoint that comes back is not left with its messages parked. */
Test(webhook_sender, a_message_parked_behind_an_open_breaker_is_its_probe) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    e.port = test_closed_port();
    cr_assert_eq(wh_secret_generate(32, e.cfg.secret, sizeof e.cfg.secret), 0);
    endpoint_create(&g, &e, NULL);
    /* Three messages of three attempts each, all refused: nine failures in a row open the
     * breaker (five do), and all three end as dead letters. */
    char msg[3][64];
    for (int i = 0; i < 3; i++)
        message_post(&g, "a", msg[i], sizeof msg[i]);
    for (int i = 0; i < 3; i++)
        json_decref(dead_letter_for(&g, msg[i]));
    endpoint_start(&e, "200", e.port);
    char last[64];
    message_post(&g, "a", last, sizeof last);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 30000), 0,
                 "the message parked behind the breaker never came");
    cr_expect_str_eq(s.id, last);
    endpoint_stop(&e);
    rig_stop(&g);
}

/* Waits for n distinct ids at e; returns how many requests it took. */
static int collect_distinct(endpoint *e, int n, int timeout_ms) {
    char(*ids)[64] = sd_xcalloc((size_t)n, 64);
    int distinct = 0, requests = 0;
    while (distinct < n) {
        seen s;
        cr_assert_eq(endpoint_next(e, &s, timeout_ms), 0, "only %d of %d messages came", distinct,
                     n);
        cr_expect_eq(s.verified, 1);
        requests++;
        int dup = 0;
        for (int i = 0; i < distinct; i++)
            dup |= strcmp(ids[i], s.id) == 0;
        if (!dup)
            snprintf(ids[distinct++], 64, "%s", s.id);
    }
    free(ids);
    return requests;
}

Test(webhook_sender, deliveries_resume_by_themselves_after_a_redis_restart) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    /* Redis down: a message is refused (503), not half stored. */
    cr_assert_eq(test_target_halt(g.redis), 0);
    cr_expect_eq(
        api(&g, "POST", "/v1/messages", "{\"event_type\":\"a\",\"payload\":1}", NULL, NULL), 503);
    cr_assert_eq(test_target_restart(g.redis), 0);
    /* The test's Redis keeps no data over a restart: the endpoint comes back by hand, once the
     * sender answers something other than 503 (its connection reconnects after a backoff). */
    char *body =
        sd_xasprintf("{\"url\":\"http://127.0.0.1:%d/\",\"secret\":\"%s\"}", e.port, e.cfg.secret);
    int st = 0;
    for (int i = 0; i < 1500 && (st = api(&g, "POST", "/v1/endpoints", body, NULL, NULL)) == 503;
         i++)
        usleep(20000);
    cr_assert_eq(st, 201);
    free(body);
    /* Messages go over the sender's asynchronous connections, which reconnect on their own
     * backoff: a post answered 503 meanwhile is sent again with its Idempotency-Key, as a
     * client would. */
    for (int i = 0; i < 10; i++) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "Idempotency-Key: after-restart-%d", i);
        for (int k = 0;
             k < 1500 && (st = api(&g, "POST", "/v1/messages",
                                   "{\"event_type\":\"a\",\"payload\":2}", hdr, NULL)) == 503;
             k++)
            usleep(20000);
        cr_assert_eq(st, 202);
    }
    /* The same sender process delivers everything sent after the restart. */
    collect_distinct(&e, 10, 30000);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, a_sender_killed_mid_delivery_loses_nothing) {
    rig g;
    const char *args[] = {"--retry-schedule", "50ms",      "--timeout-ms", "300",
                          "--allow-private",  "--poll-ms", "10",           NULL};
    rig_start(&g, args);
    endpoint e = {0};
    /* The first five requests are held: the sender dies with them in flight. */
    endpoint_start(&e, "hang,hang,hang,hang,hang,200", 0);
    endpoint_create(&g, &e, "");
    char msg[64];
    for (int i = 0; i < 5; i++)
        message_post(&g, "a", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    test_kill_wait(g.srv.pid, SIGKILL);
    g.srv.pid = 0;
    /* A separate delivery process takes over once the leases end. */
    const char *argv[] = {"webhook",          "deliver",   "--redis",      test_target_url(g.redis),
                          "--retry-schedule", "50ms",      "--timeout-ms", "300",
                          "--allow-private",  "--poll-ms", "10",           NULL};
    int out;
    pid_t d = test_spawn(argv, NULL, &out);
    collect_distinct(&e, 5, 60000);
    test_kill_wait(d, SIGTERM);
    close(out);
    endpoint_stop(&e);
    rig_stop(&g);
}

/* A counter of the sender's /metrics ("webhook_attempts_total{outcome=\"failed\"}"), or -1. */
static long long metric(rig *g, const char *name) {
    static char buf[1 << 16];
    const char *body = NULL;
    if (test_http_exchange(g->srv.port,
                           "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
                           sizeof buf, &body) != 200 ||
        !body)
        return -1;
    size_t n = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return atoll(p + n + 1);
    return -1;
}

#define DELIVERED "webhook_attempts_total{outcome=\"delivered\"}"
#define FAILED "webhook_attempts_total{outcome=\"failed\"}"

/* The jobs a queue holds in the states a drop empties (the live ones). */
static long long queue_jobs(rig *g, const char *endpoint_id) {
    sd_redis_url url;
    char err[128];
    cr_assert_eq(sd_redis_url_parse(test_target_url(g->redis), &url, err, sizeof err), 0);
    jq_client *c = NULL;
    cr_assert_eq(jq_client_new(&url, NULL, &c), 0);
    char queue[64];
    snprintf(queue, sizeof queue, "wh1.ep.%s", endpoint_id);
    jq_stats st;
    cr_assert_eq(jq_stats_get(c, queue, &st), 0);
    jq_client_free(c);
    sd_redis_url_clear(&url);
    return st.ready + st.delayed + st.reserved;
}

Test(webhook_sender, a_black_holed_endpoint_does_not_delay_a_healthy_one) {
    rig g;
    const char *args[] = {"--timeout-ms",  "120000", "--allow-private",        "--poll-ms", "10",
                          "--concurrency", "6",      "--endpoint-concurrency", "2",         NULL};
    rig_start(&g, args);
    endpoint hole = {0}, ok = {0};
    endpoint_start(&hole, "hang", 0);
    endpoint_start(&ok, "200", 0);
    endpoint_create(&g, &hole, NULL);
    endpoint_create(&g, &ok, NULL);
    /* First the black hole fills its cap: two messages, both of its attempts hanging there
     * (a 2-minute timeout: none of them ends during the test). */
    char msg[64];
    for (int i = 0; i < 2; i++)
        message_post(&g, "a", msg, sizeof msg);
    seen s;
    for (int i = 0; i < 2; i++)
        cr_assert_eq(endpoint_next(&hole, &s, 60000), 0, "the black hole got %d attempts of 2", i);
    cr_expect_eq(collect_distinct(&ok, 2, 60000), 2);
    /* Then 30 more: every one reaches the healthy endpoint while the hole's two attempts are all
     * still pending - none failed, none timed out, no third one started. */
    for (int i = 0; i < 30; i++)
        message_post(&g, "a", msg, sizeof msg);
    cr_expect_eq(collect_distinct(&ok, 30, 60000), 30);
    long long delivered = 0;
    for (int i = 0; i < 1500 && (delivered = metric(&g, DELIVERED)) < 32; i++)
        usleep(20000);
    cr_expect_eq(delivered, 32);
    cr_expect_eq(metric(&g, FAILED), 0, "an attempt of the black hole ended");
    int held = 0;
    while (endpoint_next(&hole, &s, 200) == 0)
        held++;
    cr_expect_eq(held, 0, "the black hole got %d attempts over its cap of 2", held);
    /* The 30 were parked for the hole (its slots all taken) and stay parked while they hang:
     * moved to a queue that no slot can drain, they would only cost Redis time. */
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    cr_expect_eq(test_redis_int(r, "ZCARD wh1:{wh1}:ep:%s:parked", hole.id), 30);
    usleep(300000); /* 15 rounds of the mover */
    cr_expect_eq(test_redis_int(r, "ZCARD wh1:{wh1}:ep:%s:parked", hole.id), 30,
                 "a black hole's parked messages were moved while it hung");
    cr_expect_eq(queue_jobs(&g, hole.id), 2);
    sd_redis_free(r);
    endpoint_stop(&hole);
    endpoint_stop(&ok);
    bench_server_stop(&g.srv, SIGKILL, 5000);
    test_target_stop(g.redis);
}

/*
 * Parking (sender.c): a message parked for an endpoint and left there by a process that died
 * before moving it is moved by another sender's sweep and delivered; parked again after its job
 * was made (a crash between the enqueue and the removal), it is moved again without a second
 * job or delivery, since the message id is the job's idempotency key.
 */
Test(webhook_sender, a_message_left_parked_is_moved_and_delivered_once) {
    rig g;
    const char *args[] = {"--allow-private", "--poll-ms", "10", NULL};
    rig_start(&g, args);
    endpoint ok = {0};
    endpoint_start(&ok, "200", 0);
    endpoint_create(&g, &ok, NULL);
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    const char *id = "msg_0123456789abcdef01234567";
    cr_assert_eq(test_redis_int(r,
                                "HSET wh1:{wh1}:msg:%s event_type a created_ms 1 body "
                                "{\"type\":\"a\",\"data\":{\"n\":7}}",
                                id),
                 3);
    cr_assert_eq(test_redis_int(r, "SADD wh1:{wh1}:msg:%s:eps %s", id, ok.id), 1);
    cr_assert_eq(test_redis_int(r, "ZADD wh1:{wh1}:ep:%s:parked 1 %s", ok.id, id), 1);
    seen s;
    cr_assert_eq(endpoint_next(&ok, &s, 60000), 0, "the parked message was not delivered");
    cr_assert_str_eq(s.id, id);
    cr_assert_eq(s.verified, 1);
    long long left = 1;
    for (int i = 0; i < 500 && (left = test_redis_int(r, "ZCARD wh1:{wh1}:ep:%s:parked", ok.id));
         i++)
        usleep(20000);
    cr_assert_eq(left, 0, "the moved message is still parked");
    /* Parked again: moved (the zset empties) and not delivered a second time. */
    cr_assert_eq(test_redis_int(r, "ZADD wh1:{wh1}:ep:%s:parked 2 %s", ok.id, id), 1);
    for (int i = 0; i < 500 && (left = test_redis_int(r, "ZCARD wh1:{wh1}:ep:%s:parked", ok.id));
         i++)
        usleep(20000);
    cr_assert_eq(left, 0, "the message parked again was not moved");
    cr_expect_neq(endpoint_next(&ok, &s, 1000), 0, "delivered twice: %s", s.id);
    sd_redis_free(r);
    endpoint_stop(&ok);
    rig_stop(&g);
}

Test(webhook_sender, deleting_an_endpoint_drops_its_queue_and_its_deliveries) {
    rig g;
    const char *args[] = {
        "--timeout-ms",  "120000", "--allow-private",        "--poll-ms", "10",
        "--concurrency", "6",      "--endpoint-concurrency", "2",         "--recheck-ms",
        "3000",          NULL};
    rig_start(&g, args);
    endpoint hole = {0}, ok = {0};
    endpoint_start(&hole, "hang", 0);
    endpoint_start(&ok, "200", 0);
    endpoint_create(&g, &hole, NULL);
    endpoint_create(&g, &ok, NULL);
    /* A backlog at the black hole: its two request slots hang, the rest waits in its queue. */
    char msg[64];
    int n = 20;
    for (int i = 0; i < n; i++)
        message_post(&g, "a", msg, sizeof msg);
    seen s;
    for (int i = 0; i < 2; i++)
        cr_assert_eq(endpoint_next(&hole, &s, 60000), 0, "the black hole got %d attempts of 2", i);
    cr_assert_eq(collect_distinct(&ok, n, 60000), n);
    /* Messages for the hole once its slots were taken were parked (sender.c, "Parking"). */
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    long long parked = test_redis_int(r, "ZCARD wh1:{wh1}:ep:%s:parked", hole.id);
    cr_assert_gt(parked, 0);
    cr_assert_eq(queue_jobs(&g, hole.id) + parked, n,
                 "the hole's messages, queued, held or parked");

    char path[96];
    snprintf(path, sizeof path, "/v1/endpoints/%s", hole.id);
    cr_assert_eq(api(&g, "DELETE", path, NULL, NULL, NULL), 204);
    /* The queue is dropped right after the answer (a_deleted_endpoints_backlog_is_dropped_after_
     * the_answer shows it without the drain's help). */
    long long queued = 1;
    for (int i = 0; i < 1500 && (queued = queue_jobs(&g, hole.id)) > 0; i++)
        usleep(20000);
    cr_expect_eq(queued, 0, "the deleted endpoint's jobs are still queued");
    cr_expect_eq(test_redis_int(r, "EXISTS wh1:{wh1}:ep:%s:parked", hole.id), 0);
    cr_expect_eq(api(&g, "GET", path, NULL, NULL, NULL), 404);
    cr_expect_eq(api(&g, "DELETE", path, NULL, NULL, NULL), 404);
    char rot[128];
    snprintf(rot, sizeof rot, "%s/rotate-secret", path);
    cr_expect_eq(api(&g, "POST", rot, "{}", NULL, NULL), 404);
    /* What stays: the hash, marked and expiring, without its secrets; the id in the list whose
     * queues the senders drop again for a while (a fan-out under way at the deletion). */
    cr_expect_eq(test_redis_int(r, "SISMEMBER wh1:{wh1}:eps %s", hole.id), 0);
    cr_expect_gt(test_redis_int(r, "PTTL wh1:{wh1}:ep:%s", hole.id), 0);
    cr_expect_eq(test_redis_int(r, "HEXISTS wh1:{wh1}:ep:%s secret", hole.id), 0);
    cr_expect_eq(test_redis_int(r, "HEXISTS wh1:{wh1}:eps_deleted %s", hole.id), 1);
    /* A dead letter of the deleted endpoint is not replayed into a queue nobody reads. */
    redisReply *w = sd_redis_command(
        r, NULL,
        "HSET wh1:{wh1}:dead dl_x {\"id\":\"dl_x\",\"message_id\":\"%s\",\"endpoint_id\":\"%s\"}",
        msg, hole.id);
    cr_assert(w && w->type == REDIS_REPLY_INTEGER);
    freeReplyObject(w);
    cr_expect_eq(api(&g, "POST", "/v1/dead-letters/dl_x/replay", NULL, NULL, NULL), 409);
    cr_expect_eq(queue_jobs(&g, hole.id), 0);
    sd_redis_free(r);

    /* New messages reach the healthy endpoint and make no job for the deleted one. */
    for (int i = 0; i < 5; i++)
        message_post(&g, "a", msg, sizeof msg);
    cr_expect_eq(collect_distinct(&ok, 5, 60000), 5);
    cr_expect_eq(queue_jobs(&g, hole.id), 0);
    /* A delivery that lands in the queue after the deletion (a fan-out that was under way) is
     * dropped by the sender's drain once the recheck is due (3 s here), and the id leaves the
     * list of deleted endpoints. */
    sd_redis_url url;
    char err[128];
    cr_assert_eq(sd_redis_url_parse(test_target_url(g.redis), &url, err, sizeof err), 0);
    jq_client *c = NULL;
    cr_assert_eq(jq_client_new(&url, NULL, &c), 0);
    char queue[80];
    snprintf(queue, sizeof queue, "wh1.ep.%s", hole.id);
    jq_enqueued e;
    cr_assert_eq(jq_enqueue(c, queue, msg, strlen(msg), NULL, &e), 0);
    jq_client_free(c);
    sd_redis_url_clear(&url);
    long long left = 1;
    for (int i = 0; i < 1500 && (left = queue_jobs(&g, hole.id)) > 0; i++)
        usleep(20000);
    cr_expect_eq(left, 0, "a late delivery of the deleted endpoint was never dropped");
    r = test_redis_connect(test_target_url(g.redis));
    long long listed = 1;
    for (int i = 0; i < 1500 && (listed = test_redis_int(r, "HLEN wh1:{wh1}:eps_deleted")) > 0; i++)
        usleep(20000);
    cr_expect_eq(listed, 0, "the deleted endpoint stayed in the drain's list");
    sd_redis_free(r);
    endpoint_stop(&hole);
    endpoint_stop(&ok);
    rig_stop(&g);
}

/* A backlog of several drop batches (1,000 jobs each) goes after the DELETE's answer, a batch
 * per loop iteration, without the drain (its recheck is a day away here): the deletion's own
 * drop goes on until the queue is empty, and the endpoint is gone meanwhile. */
Test(webhook_sender, a_deleted_endpoints_backlog_is_dropped_after_the_answer) {
    rig g;
    const char *args[] = {"--allow-private", "--no-deliver", "--recheck-ms", "86400000", NULL};
    rig_start(&g, args);
    json_t *j = NULL;
    cr_assert_eq(
        api(&g, "POST", "/v1/endpoints", "{\"url\":\"http://127.0.0.1:9/hook\"}", NULL, &j), 201);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    sd_redis_url url;
    char err[128];
    cr_assert_eq(sd_redis_url_parse(test_target_url(g.redis), &url, err, sizeof err), 0);
    jq_client *c = NULL;
    cr_assert_eq(jq_client_new(&url, NULL, &c), 0);
    char queue[80];
    snprintf(queue, sizeof queue, "wh1.ep.%s", id);
    enum { N = 2500 };
    static jq_new_job jobs[N];
    static jq_enqueued out[N];
    for (int i = 0; i < N; i++)
        jobs[i] = (jq_new_job){.payload = "msg_x", .len = 5};
    cr_assert_eq(jq_enqueue_many(c, queue, jobs, N, out), 0);
    jq_client_free(c);
    sd_redis_url_clear(&url);
    cr_assert_eq(queue_jobs(&g, id), N);
    char path[96];
    snprintf(path, sizeof path, "/v1/endpoints/%s", id);
    cr_assert_eq(api(&g, "DELETE", path, NULL, NULL, NULL), 204);
    cr_expect_eq(api(&g, "GET", path, NULL, NULL, NULL), 404);
    long long queued = N;
    for (int i = 0; i < 1500 && (queued = queue_jobs(&g, id)) > 0; i++)
        usleep(20000);
    cr_expect_eq(queued, 0, "%lld of the deleted endpoint's %d jobs are still queued", queued, N);
    rig_stop(&g);
}

Test(webhook_sender, with_a_token_every_api_call_wants_it) {
    char file[] = "/tmp/wh-token-XXXXXX";
    int fd = mkstemp(file);
    cr_assert_geq(fd, 0);
    const char *token = "tok-9f2c1a7e5b3d8c40";
    cr_assert_eq(dprintf(fd, "%s\n", token), (int)strlen(token) + 1);
    close(fd);
    rig g;
    const char *args[] = {"--api-token-file", file, "--allow-private", NULL};
    rig_start(&g, args);
    const char *body = "{\"url\":\"http://127.0.0.1:9/hook\"}";
    json_t *j = NULL;
    cr_expect_eq(api(&g, "POST", "/v1/endpoints", body, NULL, &j), 401);
    cr_expect_str_eq(json_string_value(json_object_get(j, "title")), "Unauthorized");
    json_decref(j);
    cr_expect_eq(
        api(&g, "POST", "/v1/endpoints", body, "Authorization: Bearer tok-9f2c1a7e5b3d8c4", NULL),
        401, "a prefix of the token was taken");
    cr_expect_eq(api(&g, "POST", "/v1/endpoints", body, "Authorization: Basic dG9r", NULL), 401);
    cr_expect_eq(api(&g, "GET", "/v1/dead-letters", NULL, NULL, NULL), 401);
    cr_expect_eq(
        api(&g, "POST", "/v1/messages", "{\"event_type\":\"a\",\"payload\":1}", NULL, NULL), 401);
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    cr_expect_eq(test_redis_int(r, "SCARD wh1:{wh1}:eps"), 0, "a refused call stored something");
    sd_redis_free(r);
    char auth[64];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    cr_expect_eq(api(&g, "POST", "/v1/endpoints", body, auth, NULL), 201);
    cr_expect_eq(api(&g, "GET", "/v1/dead-letters", NULL, auth, NULL), 200);
    cr_expect_eq(api(&g, "GET", "/metrics", NULL, NULL, NULL), 200, "metrics need no token");
    rig_stop(&g);
    /* A token too short to be one is a usage error that does not print it. */
    cr_assert_eq(truncate(file, 0), 0);
    fd = open(file, O_WRONLY);
    cr_assert_eq(dprintf(fd, "short-tok\n"), 10);
    close(fd);
    static test_run_out out;
    const char *bad[] = {"serve", "--listen", "127.0.0.1:0", "--api-token-file", file, NULL};
    test_run_program("webhook", bad, NULL, NULL, &out);
    cr_expect_eq(out.status, 2, "%s", out.err);
    cr_expect(strstr(out.err, "16 to 510 characters"), "%s", out.err);
    cr_expect_null(strstr(out.err, "short-tok"), "the token was printed: %s", out.err);
    unlink(file);
}

static int delivered_at_least(json_t *j, void *n) {
    return json_integer_value(json_object_get(j, "delivered")) >= *(int *)n;
}

Test(webhook_sender, the_endpoint_counts_every_delivery_once) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    int n = 60;
    for (int i = 0; i < n; i++)
        message_post(&g, "a", msg, sizeof msg);
    cr_expect_eq(collect_distinct(&e, n, 60000), n);
    /* The deliveries are counted in batches (one increment per endpoint per loop iteration):
     * the sum is every delivery, once. */
    char path[96];
    snprintf(path, sizeof path, "/v1/endpoints/%s", e.id);
    json_t *j = api_until(&g, path, delivered_at_least, &n);
    cr_expect_eq(json_integer_value(json_object_get(j, "delivered")), n);
    cr_expect_eq(json_integer_value(json_object_get(j, "failed")), 0);
    cr_expect_eq(json_integer_value(json_object_get(j, "failures_in_a_row")), 0);
    json_decref(j);
    cr_expect_eq(metric(&g, DELIVERED), n);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, the_visibility_timeout_outlasts_a_slow_attempt) {
    rig g;
    const char *args[] = {"--timeout-ms", "3000", "--allow-private", "--poll-ms", "10", NULL};
    rig_start(&g, args);
    endpoint e = {0};
    endpoint_start(&e, "slow", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    for (int i = 0; i < 3; i++)
        message_post(&g, "a", msg, sizeof msg);
    /* Each slow attempt succeeds after 1 s: exactly one request per message. */
    cr_expect_eq(collect_distinct(&e, 3, 30000), 3);
    seen s;
    cr_expect_eq(endpoint_next(&e, &s, 1500), -1, "a message was delivered twice");
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, without_allow_private_no_connection_reaches_loopback) {
    rig g;
    const char *args[] = {"--retry-schedule", "50ms", "--poll-ms", "10", NULL};
    rig_start(&g, args);
    int port;
    int lfd = test_listen_loopback(&port);
    char *body = sd_xasprintf("{\"url\":\"http://127.0.0.1:%d/\"}", port);
    json_t *j;
    cr_expect_eq(api(&g, "POST", "/v1/endpoints", body, NULL, &j), 422);
    json_decref(j);
    free(body);
    body = sd_xasprintf("{\"url\":\"http://localhost:%d/\"}", port);
    cr_expect_eq(api(&g, "POST", "/v1/endpoints", body, NULL, NULL), 422);
    free(body);
    /* An endpoint whose name resolves to loopback only at delivery (as DNS rebinding would make
     * it): written straight into Redis, past the URL check. The connect-time vet refuses it. */
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    redisReply *rep = sd_redis_command(r, NULL,
                                       "HSET wh1:{wh1}:ep:ep_rebound url %s secret "
                                       "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw state enabled "
                                       "event_types *",
                                       url);
    freeReplyObject(rep);
    freeReplyObject(sd_redis_command(r, NULL, "SADD wh1:{wh1}:eps ep_rebound"));
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    char path[128];
    snprintf(path, sizeof path, "/v1/messages/%s", msg);
    for (int i = 0;; i++) {
        json_t *m;
        cr_assert_eq(api(&g, "GET", path, NULL, NULL, &m), 200);
        size_t n = json_array_size(json_object_get(m, "attempts"));
        const char *err = n ? json_string_value(json_object_get(
                                  json_array_get(json_object_get(m, "attempts"), 0), "error"))
                            : NULL;
        if (n) {
            cr_expect(strstr(err, "block") || strstr(err, "refused"), "error: %s", err);
            json_decref(m);
            break;
        }
        json_decref(m);
        cr_assert_lt(i, 1500, "no attempt was recorded");
        usleep(20000);
    }
    /* The attempt is over, and nothing connected to the listener. */
    struct timeval tv = {0, 1000};
    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    cr_expect_lt(accept(lfd, NULL, NULL), 0, "a connection reached the loopback listener");
    close(lfd);
    sd_redis_free(r);
    rig_stop(&g);
}

Test(webhook_sender, bad_input_is_a_problem_and_stores_nothing) {
    rig g;
    rig_start(&g, FAST);
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    const char *bodies[] = {"not json",
                            "[]",
                            "{\"url\":1}",
                            "{\"url\":\"ftp://x/\"}",
                            "{\"url\":\"http://127.0.0.1:1/\",\"secret\":\"whsec_short\"}",
                            "{\"url\":\"http://127.0.0.1:1/\",\"event_types\":\"a\"}",
                            NULL};
    for (int i = 0; bodies[i]; i++) {
        json_t *j;
        int st = api(&g, "POST", "/v1/endpoints", bodies[i], NULL, &j);
        cr_expect(st >= 400 && st < 500, "%s -> %d", bodies[i], st);
        cr_expect(json_object_get(j, "title") != NULL, "%s: no problem body", bodies[i]);
        json_decref(j);
    }
    const char *msgs[] = {"nope", "{\"payload\":1}", "{\"event_type\":\"a\"}",
                          "{\"event_type\":\"\",\"payload\":1}", NULL};
    for (int i = 0; msgs[i]; i++) {
        int st = api(&g, "POST", "/v1/messages", msgs[i], NULL, NULL);
        cr_expect(st >= 400 && st < 500, "%s -> %d", msgs[i], st);
    }
    cr_expect_eq(api(&g, "GET", "/v1/messages/msg_nope", NULL, NULL, NULL), 404);
    cr_expect_eq(api(&g, "GET", "/v1/endpoints/ep_nope", NULL, NULL, NULL), 404);
    cr_expect_eq(api(&g, "POST", "/v1/dead-letters/dl_nope/replay", "", NULL, NULL), 404);
    cr_expect_eq(test_redis_int(r, "EXISTS wh1:{wh1}:eps"), 0, "bad input stored an endpoint");
    sd_redis_free(r);
    rig_stop(&g);
}

Test(webhook_sender, the_npm_package_verifies_every_delivery_across_a_rotation) {
    char why[512];
    if (!node_ready(why, sizeof why))
        cr_skip_test("skipped: %s", why);
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "200", 0);
    endpoint_create(&g, &e, NULL);
    char old_secret[WH_SECRET_TEXT_MAX], msg[64], path[128];
    snprintf(old_secret, sizeof old_secret, "%s", e.cfg.secret);
    const char *bodies[] = {
        "{\"event_type\":\"a\",\"payload\":{}}",
        "{\"event_type\":\"b\",\"payload\":\"\\u00e9\\u6f22\\ud83d\\ude00 \\\" \"}",
        "{\"event_type\":\"c\",\"payload\":[1,2.5,null,true]}", NULL};
    json_t *j;
    cr_assert_eq(api(&g, "POST", "/v1/messages", bodies[0], NULL, &j), 202);
    json_decref(j);
    seen s[3];
    cr_assert_eq(endpoint_next(&e, &s[0], 20000), 0);
    /* Rotate: from now on both secrets sign, one entry each. */
    snprintf(path, sizeof path, "/v1/endpoints/%s/rotate-secret", e.id);
    cr_assert_eq(api(&g, "POST", path, "{\"grace_seconds\":3600}", NULL, &j), 200);
    char new_secret[WH_SECRET_TEXT_MAX];
    snprintf(new_secret, sizeof new_secret, "%s", json_string_value(json_object_get(j, "secret")));
    json_decref(j);
    cr_assert_str_neq(new_secret, old_secret);
    for (int i = 1; i < 3; i++) {
        cr_assert_eq(api(&g, "POST", "/v1/messages", bodies[i], NULL, &j), 202);
        snprintf(msg, sizeof msg, "%s", json_string_value(json_object_get(j, "id")));
        json_decref(j);
        cr_assert_eq(endpoint_next(&e, &s[i], 20000), 0);
        cr_expect_str_eq(s[i].id, msg);
        cr_expect_eq(strchr(s[i].sig, ' ') != NULL, 1, "one signature after a rotation: %s",
                     s[i].sig);
    }
    /* Every delivery by the old secret, the rotated ones by the new too. */
    char *input = sd_xstrdup("");
    int expected = 0;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < (i ? 2 : 1); k++) {
            json_t *c = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "op", "verify", "secret",
                                  k ? new_secret : old_secret, "id", s[i].id, "ts", s[i].ts, "sig",
                                  s[i].sig, "body", s[i].body);
            char *line = json_dumps(c, JSON_COMPACT);
            char *next = sd_xasprintf("%s%s\n", input, line);
            free(input);
            free(line);
            json_decref(c);
            input = next;
            expected++;
        }
    int status;
    char *out = node_run("webhook-check.mjs", NULL, input, strlen(input), &status);
    cr_assert_eq(status, 0);
    int oks = 0;
    for (char *p = out; (p = strstr(p, "ok")) != NULL; p += 2)
        oks++;
    cr_expect_eq(oks, expected, "standardwebhooks answered:\n%s", out);
    free(out);
    free(input);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, sustained_failure_disables_the_endpoint_and_keeps_its_message) {
    rig g;
    const char *args[] = {"--retry-schedule",
                          "50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms",
                          "--disable-after",
                          "3",
                          "--allow-private",
                          "--poll-ms",
                          "10",
                          NULL};
    rig_start(&g, args);
    endpoint e = {0};
    endpoint_start(&e, "500,500,500,200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64], path[128];
    message_post(&g, "a", msg, sizeof msg);
    seen s;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    snprintf(path, sizeof path, "/v1/endpoints/%s", e.id);
    json_decref(api_until(&g, path, is_disabled, NULL));
    /* A message for the disabled endpoint is parked, and stays parked while it is disabled. */
    char msg2[64];
    message_post(&g, "a", msg2, sizeof msg2);
    cr_expect_eq(endpoint_next(&e, &s, 300), -1, "a disabled endpoint got a request");
    sd_redis *r = test_redis_connect(test_target_url(g.redis));
    cr_expect_eq(test_redis_int(r, "ZCARD wh1:{wh1}:ep:%s:parked", e.id), 1,
                 "the message for a disabled endpoint left its parked zset");
    sd_redis_free(r);
    /* Enabled again, it gets the kept message, with its id, and the parked one. */
    snprintf(path, sizeof path, "/v1/endpoints/%s/enable", e.id);
    cr_assert_eq(api(&g, "POST", path, "", NULL, NULL), 200);
    int got = 0;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(endpoint_next(&e, &s, 20000), 0, "%d of the 2 messages came", i);
        cr_expect_str_eq(s.answer, "200");
        got |= strcmp(s.id, msg) == 0 ? 1 : strcmp(s.id, msg2) == 0 ? 2 : 4;
    }
    cr_expect_eq(got, 3, "not the kept message and the parked one");
    json_t *arr;
    cr_assert_eq(api(&g, "GET", "/v1/dead-letters", NULL, NULL, &arr), 200);
    cr_expect_eq(json_array_size(arr), 0);
    json_decref(arr);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, a_redirect_is_a_failure_and_is_not_followed) {
    rig g;
    rig_start(&g, FAST);
    endpoint target = {0}, e = {0};
    endpoint_start(&target, "200", 0);
    e.cfg.redirect_port = target.port;
    endpoint_start(&e, "302,200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    cr_expect_str_eq(s.answer, "302");
    /* The retry comes back to the endpoint itself; the redirect's target never hears of it. */
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    cr_expect_str_eq(s.id, msg);
    cr_expect_eq(endpoint_next(&target, &s, 300), -1, "the redirect was followed");
    endpoint_stop(&target);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, an_idempotency_key_makes_one_message) {
    rig g;
    rig_start(&g, FAST);
    endpoint e = {0};
    endpoint_start(&e, "200", 0);
    endpoint_create(&g, &e, NULL);
    const char *body = "{\"event_type\":\"a\",\"payload\":1}";
    json_t *a, *b;
    cr_assert_eq(api(&g, "POST", "/v1/messages", body, "Idempotency-Key: order-17", &a), 202);
    cr_assert_eq(api(&g, "POST", "/v1/messages", body, "Idempotency-Key: order-17", &b), 202);
    cr_expect_str_eq(json_string_value(json_object_get(a, "id")),
                     json_string_value(json_object_get(b, "id")));
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    cr_expect_str_eq(s.id, json_string_value(json_object_get(a, "id")));
    /* A message sent after it arrives next: the repeated POST made no second delivery. */
    char msg2[64];
    message_post(&g, "a", msg2, sizeof msg2);
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    cr_expect_str_eq(s.id, msg2);
    json_decref(a);
    json_decref(b);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, sigterm_releases_attempts_in_flight_for_the_next_process) {
    rig g;
    const char *args[] = {"--timeout-ms", "60000", "--allow-private", "--poll-ms", "10", NULL};
    rig_start(&g, args);
    endpoint e = {0};
    endpoint_start(&e, "hang,200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    message_post(&g, "a", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    /* Stopped with the attempt held: it exits 0 and gives the job back at once. */
    int st = bench_server_stop(&g.srv, SIGTERM, 20000);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "webhook serve did not stop cleanly: %d", st);
    /* The next process delivers it long before the 65 s lease would have ended. */
    const char *argv[] = {"webhook",      "deliver", "--redis",         test_target_url(g.redis),
                          "--timeout-ms", "60000",   "--allow-private", "--poll-ms",
                          "10",           NULL};
    int out;
    pid_t d = test_spawn(argv, NULL, &out);
    cr_assert_eq(endpoint_next(&e, &s, 30000), 0, "the released attempt never came");
    cr_expect_str_eq(s.id, msg);
    st = test_kill_wait(d, SIGTERM);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "webhook deliver did not stop cleanly: %d",
              st);
    close(out);
    endpoint_stop(&e);
    rig_stop(&g);
}

Test(webhook_sender, a_persistent_redis_restarted_mid_delivery_loses_no_message) {
    if (test_target_is_cluster())
        cr_skip_test("skipped: one server with AOF (the cluster run restarts without data)");
    sd_redis_server *redis = test_redis_start("always");
    rig g;
    memset(&g, 0, sizeof g);
    char *bin = test_bin_path("webhook");
    const char *argv[] = {bin,
                          "serve",
                          "--listen",
                          "127.0.0.1:0",
                          "--redis",
                          sd_redis_server_url(redis),
                          "--retry-schedule",
                          "50ms,100ms,200ms,400ms,800ms,1s,1s,1s,1s,1s",
                          "--timeout-ms",
                          "500",
                          "--allow-private",
                          "--poll-ms",
                          "10",
                          NULL};
    char err[256];
    cr_assert_eq(bench_server_spawn(argv, NULL, 20000, &g.srv, err, sizeof err), 0, "%s", err);
    free(bin);
    endpoint e = {0};
    endpoint_start(&e, "200", 0);
    endpoint_create(&g, &e, NULL);
    char msg[64];
    for (int i = 0; i < 20; i++)
        message_post(&g, "a", msg, sizeof msg);
    seen s;
    cr_assert_eq(endpoint_next(&e, &s, 20000), 0);
    cr_assert_eq(sd_redis_server_halt(redis), 0);
    cr_assert_eq(sd_redis_server_restart(redis), 0);
    /* Every message, those delivered before the restart included, arrives; none is lost. */
    char(*ids)[64] = sd_xcalloc(20, 64);
    snprintf(ids[0], 64, "%s", s.id);
    int distinct = 1;
    while (distinct < 20) {
        cr_assert_eq(endpoint_next(&e, &s, 30000), 0, "only %d of 20 messages came", distinct);
        int dup = 0;
        for (int i = 0; i < distinct; i++)
            dup |= strcmp(ids[i], s.id) == 0;
        if (!dup)
            snprintf(ids[distinct++], 64, "%s", s.id);
    }
    free(ids);
    endpoint_stop(&e);
    int st = bench_server_stop(&g.srv, SIGTERM, 20000);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "webhook serve did not stop cleanly: %d", st);
    sd_redis_server_stop(redis);
}

/* Whether fd has bytes (or an EOF) to read now, without waiting. */
static int readable_now(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* A management call waiting for Redis holds its own request, not the process: with Redis frozen
 * (SIGSTOP, every node), a GET of an endpoint sent before a GET /metrics is still unanswered
 * when /metrics has its answer, and gets its own once Redis goes on. A loop that waited for the
 * first (a synchronous call) would answer /metrics only after it: the connections are open
 * before any request is sent, and the endpoint's requests are sent first, so the server reads
 * them first. A client that resets its connection meanwhile loses its answer and nothing else.
 * Then the sender stops cleanly (exit 0, and no leak in the sanitizer build) with such a call in
 * flight. */
Test(webhook_sender, a_management_call_waiting_for_redis_holds_up_no_other_request) {
    rig g;
    rig_start(&g, FAST);
    json_t *j = NULL;
    cr_assert_eq(
        api(&g, "POST", "/v1/endpoints", "{\"url\":\"http://127.0.0.1:9/hook\"}", NULL, &j), 201);
    char get[160];
    snprintf(get, sizeof get,
             "GET /v1/endpoints/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
             json_string_value(json_object_get(j, "id")));
    json_decref(j);
    const char *metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    static char buf[1 << 16];

    cr_assert_eq(test_target_signal(g.redis, SIGSTOP), 0);
    int a = test_tcp_connect(g.srv.port), c = test_tcp_connect(g.srv.port),
        b = test_tcp_connect(g.srv.port);
    test_write_all(a, get, strlen(get));
    test_write_all(c, get, strlen(get));
    test_write_all(b, metrics, strlen(metrics));
    cr_expect_eq(test_http_read_response(b, buf, sizeof buf, NULL), 200);
    /* The call's deadline is the connection's command timeout (1 s): only a machine that took
     * that long to answer /metrics could see the endpoint's answer (a 503) here. */
    cr_expect_not(readable_now(a), "the endpoint's GET was answered before /metrics");
    /* The second GET's client goes away (a reset): its answer, when it comes, is dropped. */
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(c, SOL_SOCKET, SO_LINGER, &reset, sizeof reset), 0);
    close(c);
    cr_assert_eq(test_target_signal(g.redis, SIGCONT), 0);
    int st = test_http_read_response(a, buf, sizeof buf, NULL);
    cr_expect(st == 200 || st == 503, "the endpoint's GET got %d", st);
    close(a);
    close(b);
    cr_expect_eq(api(&g, "GET", "/metrics", NULL, NULL, NULL), 200);

    /* A stop while a call waits for a frozen Redis: the call is answered (503 at its deadline),
     * or its connection closed if the stop came before the request was read; either way the
     * process exits 0. */
    cr_assert_eq(test_target_signal(g.redis, SIGSTOP), 0);
    a = test_tcp_connect(g.srv.port);
    test_write_all(a, get, strlen(get));
    cr_assert_eq(kill(g.srv.pid, SIGTERM), 0);
    int got = test_http_read_response(a, buf, sizeof buf, NULL);
    cr_expect(got == 503 || got == -1, "the GET in flight at the stop got %d", got);
    close(a);
    st = test_wait_exit(g.srv.pid, 20000);
    g.srv.pid = 0;
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "webhook serve did not stop cleanly: %d", st);
    cr_assert_eq(test_target_signal(g.redis, SIGCONT), 0);
    rig_stop(&g);
}
