/*
 * scenarios_webhook.c - the webhook sender's benchmarks: a `webhook serve` child (delivery
 * workers inside it, --allow-private for loopback) and a receiver on the harness's own loop
 * that answers 200 at once.
 *
 *   webhook.deliveries.closed   closed loop, 200 messages posted and not yet received:
 *                               deliveries/s, POST /v1/messages -> the receiver has the body
 *   webhook.latency.1000        open loop at 1,000 messages/s: latency from a message's planned
 *                               post time to its first attempt reaching the receiver
 *                               (coordinated omission corrected)
 *   webhook.blackhole.1000      the same with a second, black-holed endpoint subscribed to every
 *                               message (it accepts connections and never answers); the
 *                               latency is the healthy endpoint's
 *   webhook.isolation.R.alone   webhook.latency.1000 and webhook.blackhole.1000 again, alternated
 *   webhook.isolation.R.hole    five rounds (R = 1..5), so that the healthy endpoint's p99
 *   webhook.isolation.R.twin    alone and beside the black hole come from one run, side by side,
 *   webhook.isolation.R.pair    and a swing of the machine's load shows as a swing between
 *                               rounds rather than as a cost of the hole; "twin" is "alone"
 *                               again, right after the hole: the control, whose ratio to "alone"
 *                               is what the measurement itself swings by; "pair" puts a second
 *                               healthy endpoint beside it instead (every message fans out to
 *                               two endpoints, as with the hole): the cost of the fan-out alone,
 *                               so that hole - pair is what the black hole itself costs
 *   webhook.isolation.pooled.*  rows that `bench run` adds (bench_scenario.pool): every message
 *                               of the five rounds of one kind in one histogram, the figures
 *                               the isolation goal is read from (a p99 of 20,000 messages, where
 *                               one round's 4,000 move by 20-30% with the machine's stalls)
 *
 * One operation is one message. It is posted through the API (sd_http_client, the producer's
 * cost is not what is measured but it shares the machine) with the payload {"i":N}, N the
 * message's index in the run's table of operations; it completes when the receiver gets a body
 * with that index, and the entry is then cleared, so a message delivered twice completes once.
 * A refused post (not 202) completes it with BENCH_ERR_STATUS. Each run subscribes its endpoints
 * to its own event type (bench.PID.N), so endpoints of earlier runs on the same Redis get
 * nothing of it, and deletes them at its teardown (DELETE /v1/endpoints/{id}, which drops their
 * queues): otherwise a black hole's backlog of thousands of jobs stayed in Redis, and every
 * later run's sender worked it off (refused connections, retries, dead letters) while being
 * measured, which made each isolation round slower than the one before it.
 *
 * The sender runs with its default --poll-ms 50 (given, as the others below: the idle period of
 * its endpoint-queue reads; the messages measured here are posted to the same process, whose
 * workers each enqueue wakes at once, so the poll does not set their latency), its default
 * --endpoint-concurrency 8 (given, so the
 * figures keep their meaning if the default changes; 32 delivered less than 8 in webhook/README's
 * first figures), --timeout-ms 2000 (the black hole's attempts end after 2 s, inside a short run)
 * and --retry-schedule 1s,1s.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "bench.h"
#include "http.h"
#include "jobqueue.h"
#include "../common/http_client.h" /* not bench/http_client.h, found first from here */
#include "sd.h"
#include "spawn.h"

#define IN_FLIGHT 200

typedef struct wh_bench_op {
    void *token;
    bench_done_fn *done;
} wh_bench_op;

typedef struct wh_bench {
    uv_loop_t *loop;
    bench_server sender;
    sd_http_server *rx;  /* the healthy receiver */
    sd_http_server *rx2; /* a second healthy endpoint (pair scenarios): answers, counts nothing */
    uv_tcp_t hole;       /* the black hole's listener (blackhole scenario) */
    int has_hole;
    uv_tcp_t *hole_conns[256]; /* connections it accepted and never reads */
    int nhole_conns;
    sd_http_client *http;
    bench_later *later;
    char ep_ids[3][48]; /* the endpoints this run added, deleted at its teardown */
    int neps;
    char event_type[64];
    char messages_url[128];
    wh_bench_op *ops;
    size_t nops, cap;
    uint64_t received, duplicates, post_errors;
} wh_bench;

static int run_counter;

static void complete(wh_bench *b, size_t i, int err) {
    if (i >= b->nops || !b->ops[i].done) {
        if (err == BENCH_OK)
            b->duplicates++;
        return;
    }
    wh_bench_op op = b->ops[i];
    b->ops[i].done = NULL;
    op.done(op.token, err);
}

/* ---- The receiver ---------------------------------------------------------------------------- */

/* The body is {"type":...,"timestamp":...,"data":{"i":N}}: find N without a JSON parse. */
static void on_delivery(sd_http_req *req, void *udata) {
    wh_bench *b = udata;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    sd_http_req_respond(req, 200, "text/plain", "ok", 2);
    const char *p = body ? strstr(body, "\"i\":") : NULL;
    if (!p)
        return;
    b->received++;
    complete(b, (size_t)strtoull(p + 4, NULL, 10), BENCH_OK);
}

static void on_other_delivery(sd_http_req *req, void *udata) {
    sd_http_req_respond(req, 200, "text/plain", "ok", 2);
}

static void on_hole_conn(uv_stream_t *server, int status) {
    wh_bench *b = server->data;
    if (status < 0 || b->nhole_conns == (int)(sizeof b->hole_conns / sizeof b->hole_conns[0]))
        return;
    uv_tcp_t *c = sd_xmalloc(sizeof *c);
    uv_tcp_init(b->loop, c);
    if (uv_accept(server, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, (uv_close_cb)free);
        return;
    }
    b->hole_conns[b->nhole_conns++] = c; /* never read, never answered */
}

/* ---- The API calls ----------------------------------------------------------------------------
 */

typedef struct post_ctx {
    wh_bench *b;
    size_t i;
    int status; /* setup's synchronous calls: the HTTP status, -1 on error */
    int done;
    char id[48]; /* the "id" of the answer's JSON body, if any */
} post_ctx;

static void on_posted(int err, sd_http_response *resp, void *udata) {
    post_ctx *c = udata;
    if (err != 0 || resp->status != 202) {
        c->b->post_errors++;
        complete(c->b, c->i, err != 0 ? BENCH_ERR_CONNECT : BENCH_ERR_STATUS);
    }
    free(c);
}

static void issue_message(void *ctx, void *token, bench_done_fn *done) {
    wh_bench *b = ctx;
    if (b->nops == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 65536;
        b->ops = sd_xrealloc(b->ops, b->cap * sizeof *b->ops);
    }
    size_t i = b->nops++;
    b->ops[i] = (wh_bench_op){token, done};
    char body[160];
    int n = snprintf(body, sizeof body, "{\"event_type\":\"%s\",\"payload\":{\"i\":%zu}}",
                     b->event_type, i);
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    post_ctx *c = sd_xcalloc(1, sizeof *c);
    c->b = b;
    c->i = i;
    sd_http_request req = {.method = "POST",
                           .url = b->messages_url,
                           .headers = headers,
                           .body = body,
                           .body_len = (size_t)n};
    if (sd_http_client_request(b->http, &req, on_posted, c) != 0) {
        free(c);
        b->post_errors++;
        b->ops[i].done = NULL;
        bench_later_done(b->later, token, done, BENCH_ERR_OTHER);
    }
}

static void on_setup_reply(int err, sd_http_response *resp, void *udata) {
    post_ctx *c = udata;
    c->status = err != 0 ? -1 : resp->status;
    json_t *j = err == 0 && resp->body ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(j, "id"));
    if (id)
        snprintf(c->id, sizeof c->id, "%s", id);
    json_decref(j);
    c->done = 1;
}

/* A request from setup or teardown, waiting for the answer; returns the status or -1, and the
 * answer's "id" in id_out (when not NULL). */
static int call_sync(wh_bench *b, const char *method, const char *url, const char *body,
                     char *id_out, size_t id_len) {
    post_ctx c = {.b = b};
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    sd_http_request req = {.method = method,
                           .url = url,
                           .headers = headers,
                           .body = body,
                           .body_len = body ? strlen(body) : 0};
    if (sd_http_client_request(b->http, &req, on_setup_reply, &c) != 0)
        return -1;
    while (!c.done)
        uv_run(b->loop, UV_RUN_ONCE);
    if (id_out)
        snprintf(id_out, id_len, "%s", c.id);
    return c.status;
}

/* ---- Setup and teardown -----------------------------------------------------------------------
 */

static void on_rx_stopped(sd_http_server *srv, void *udata) {
    *(int *)udata = 1;
}

static void wh_bench_free(wh_bench *b) {
    bench_server_stop(&b->sender, SIGTERM, 10000);
    if (b->http)
        sd_http_client_free(b->http);
    int rx_stopped = 0, rx2_stopped = 0;
    if (b->rx)
        sd_http_server_stop(b->rx, 0, on_rx_stopped, &rx_stopped);
    if (b->rx2)
        sd_http_server_stop(b->rx2, 0, on_rx_stopped, &rx2_stopped);
    for (int k = 0; k < b->nhole_conns; k++)
        uv_close((uv_handle_t *)b->hole_conns[k], (uv_close_cb)free);
    if (b->has_hole)
        uv_close((uv_handle_t *)&b->hole, NULL);
    if (b->later)
        bench_later_free(b->later);
    uint64_t until = sd_now_ms() + 5000;
    while (((b->rx && !rx_stopped) || (b->rx2 && !rx2_stopped)) && sd_now_ms() < until)
        uv_run(b->loop, UV_RUN_ONCE);
    for (int k = 0; k < 20; k++)
        uv_run(b->loop, UV_RUN_NOWAIT);
    if (!b->rx || rx_stopped)
        sd_http_server_free(b->rx); /* else kept: its handles may still be closing */
    if (!b->rx2 || rx2_stopped)
        sd_http_server_free(b->rx2);
    free(b->ops);
    free(b);
}

static int add_endpoint(wh_bench *b, const char *base, int port) {
    char url[160], body[320];
    snprintf(url, sizeof url, "%s/v1/endpoints", base);
    snprintf(body, sizeof body, "{\"url\":\"http://127.0.0.1:%d/hook\",\"event_types\":[\"%s\"]}",
             port, b->event_type);
    char *id = b->ep_ids[b->neps];
    int status = call_sync(b, "POST", url, body, id, sizeof b->ep_ids[0]);
    if (status != 201) {
        fprintf(stderr, "webhook bench: POST /v1/endpoints answered %d\n", status);
        return -1;
    }
    b->neps++;
    return 0;
}

/* The jobs left in an endpoint's queue, in every state, or -1 when they cannot be read. The
 * done ones count too: the sender's drop deletes them, and one cut short by the sender's stop
 * was finished --recheck-ms later by a later scenario's sender, 1,000 jobs a second, while that
 * scenario was being measured (a webhook.deliveries.closed run leaves some 25,000). */
static int64_t queue_left(jq_client *c, const char *endpoint_id) {
    char queue[80];
    snprintf(queue, sizeof queue, "wh1.ep.%s", endpoint_id);
    jq_stats st;
    if (jq_stats_get(c, queue, &st) != 0)
        return -1;
    return st.ready + st.delayed + st.reserved + st.done + st.dead + st.cancelled;
}

/* Deletes the run's endpoints (their queues with them: a black hole's backlog would otherwise
 * stay in Redis, and the next run's sender would work on it while being measured). The sender
 * answers 204 and then drops the queue, one 1,000-job script at a time: the sender is stopped only
 * once the queues are empty (10 s at most), or a later run's sender would finish the drop
 * while being measured. */
static void delete_endpoints(wh_bench *b, const char *redis_url) {
    for (int k = 0; k < b->neps; k++) {
        char url[256];
        snprintf(url, sizeof url, "%s/v1/endpoints/%s", b->sender.url, b->ep_ids[k]);
        int status = call_sync(b, "DELETE", url, NULL, NULL, 0);
        if (status != 204)
            fprintf(stderr, "webhook bench: DELETE /v1/endpoints/%s answered %d\n", b->ep_ids[k],
                    status);
    }
    sd_redis_url u;
    char err[128];
    jq_client *c = NULL;
    if (sd_redis_url_parse(redis_url, &u, err, sizeof err) != 0)
        return;
    if (jq_client_new(&u, NULL, &c) == 0) {
        uint64_t until = sd_now_ms() + 10000;
        for (int k = 0; k < b->neps; k++) {
            int64_t left;
            while ((left = queue_left(c, b->ep_ids[k])) > 0 && sd_now_ms() < until) {
                uv_run(b->loop, UV_RUN_NOWAIT); /* the receivers go on answering meanwhile */
                usleep(10000);
            }
            if (left != 0)
                fprintf(stderr, "webhook bench: endpoint %s: %lld jobs not dropped yet\n",
                        b->ep_ids[k], (long long)left);
        }
        jq_client_free(c);
    }
    sd_redis_url_clear(&u);
}

/* The second endpoint beside the measured one: none, a black hole, or one more healthy one. */
enum { SECOND_NONE, SECOND_HOLE, SECOND_HEALTHY };

static int setup(const bench_env *env, bench_target *target, int second) {
    int blackhole = second == SECOND_HOLE;
    wh_bench *b = sd_xcalloc(1, sizeof *b);
    b->loop = env->loop;
    snprintf(b->event_type, sizeof b->event_type, "bench.%d.%d", (int)getpid(), ++run_counter);

    b->rx = sd_http_server_new(env->loop, NULL);
    sd_http_server_route(b->rx, "POST", "/hook", on_delivery, b);
    int rc = sd_http_server_listen(b->rx, "127.0.0.1:0");
    if (rc == 0 && second == SECOND_HEALTHY) {
        b->rx2 = sd_http_server_new(env->loop, NULL);
        sd_http_server_route(b->rx2, "POST", "/hook", on_other_delivery, b);
        rc = sd_http_server_listen(b->rx2, "127.0.0.1:0");
    }
    if (rc == 0 && blackhole) {
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", 0, &a);
        uv_tcp_init(env->loop, &b->hole);
        b->hole.data = b;
        b->has_hole = 1;
        rc = uv_tcp_bind(&b->hole, (const struct sockaddr *)&a, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&b->hole, 256, on_hole_conn);
    }
    if (rc != 0) {
        fprintf(stderr, "webhook bench: cannot listen: %s\n", uv_strerror(rc));
        wh_bench_free(b);
        return rc;
    }

    char *path = sd_xasprintf("%s/webhook", env->bin_dir);
    const char *argv[] = {path,
                          "serve",
                          "--listen",
                          "127.0.0.1:0",
                          "--redis",
                          env->redis_url,
                          "--allow-private",
                          "--poll-ms",
                          "50",
                          "--endpoint-concurrency",
                          "8",
                          "--timeout-ms",
                          "2000",
                          "--retry-schedule",
                          "1s,1s",
                          NULL};
    char err[256];
    rc = bench_server_spawn(argv, NULL, 15000, &b->sender, err, sizeof err);
    free(path);
    if (rc < 0) {
        fprintf(stderr, "webhook bench: webhook serve did not start: %s\n", err);
        wh_bench_free(b);
        return rc;
    }

    sd_http_client_opts co;
    sd_http_client_opts_default(&co);
    co.max_connections_per_host = 64;
    co.timeout_ms = 10000;
    b->http = sd_http_client_new(env->loop, &co);
    b->later = bench_later_new(env->loop);
    snprintf(b->messages_url, sizeof b->messages_url, "%s/v1/messages", b->sender.url);

    rc = add_endpoint(b, b->sender.url, sd_http_server_port(b->rx));
    if (rc == 0 && b->rx2)
        rc = add_endpoint(b, b->sender.url, sd_http_server_port(b->rx2));
    if (rc == 0 && blackhole) {
        struct sockaddr_storage ss;
        int len = sizeof ss;
        uv_tcp_getsockname(&b->hole, (struct sockaddr *)&ss, &len);
        rc = add_endpoint(b, b->sender.url, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    if (rc != 0) {
        wh_bench_free(b);
        return rc;
    }
    target->ctx = b;
    target->issue = issue_message;
    return 0;
}

static void teardown(const bench_env *env, bench_target *target) {
    wh_bench *b = target->ctx;
    fprintf(stderr,
            "webhook bench: %s: %zu messages posted, %llu deliveries received (%llu duplicates), "
            "%llu post errors, %d black-hole connections\n",
            b->event_type, b->nops, (unsigned long long)b->received,
            (unsigned long long)b->duplicates, (unsigned long long)b->post_errors, b->nhole_conns);
    /* Operations still outstanding were not measured (the run has ended): drop them. */
    for (size_t i = 0; i < b->nops; i++)
        b->ops[i].done = NULL;
    delete_endpoints(b, env->redis_url);
    wh_bench_free(b);
    target->ctx = NULL;
}

static int setup_plain(const bench_env *env, bench_target *t) {
    return setup(env, t, SECOND_NONE);
}
static int setup_blackhole(const bench_env *env, bench_target *t) {
    return setup(env, t, SECOND_HOLE);
}
static int setup_pair(const bench_env *env, bench_target *t) {
    return setup(env, t, SECOND_HEALTHY);
}

/* ---- The registry -----------------------------------------------------------------------------
 */

static const bench_scenario deliveries = {
    .name = "webhook.deliveries.closed",
    .summary = "messages posted -> received by a local 200 receiver, 200 in flight",
    .in_flight = IN_FLIGHT,
    .default_duration_s = 4,
    .setup = setup_plain,
    .teardown = teardown,
};

static const bench_scenario latency_1000 = {
    .name = "webhook.latency.1000",
    .summary = "open loop 1,000 messages/s: enqueue -> first attempt at the receiver",
    .default_rate = 1000,
    .in_flight = 20000,
    .default_duration_s = 4,
    .setup = setup_plain,
    .teardown = teardown,
};

static const bench_scenario blackhole_1000 = {
    .name = "webhook.blackhole.1000",
    .summary = "the same beside a black-holed endpoint: the healthy endpoint's latency",
    .default_rate = 1000,
    .in_flight = 20000,
    .default_duration_s = 4,
    .setup = setup_blackhole,
    .teardown = teardown,
};

#define ISOLATION_ROUND(r)                                                                         \
    static const bench_scenario isolation_##r##_alone = {                                          \
        .name = "webhook.isolation." #r ".alone",                                                  \
        .summary = "round " #r ": as webhook.latency.1000 (the healthy endpoint alone)",           \
        .default_rate = 1000,                                                                      \
        .in_flight = 20000,                                                                        \
        .default_duration_s = 4,                                                                   \
        .setup = setup_plain,                                                                      \
        .teardown = teardown,                                                                      \
        .pool = "webhook.isolation.pooled.alone",                                                  \
    };                                                                                             \
    static const bench_scenario isolation_##r##_hole = {                                           \
        .name = "webhook.isolation." #r ".hole",                                                   \
        .summary = "round " #r ": as webhook.blackhole.1000 (beside the black hole)",              \
        .default_rate = 1000,                                                                      \
        .in_flight = 20000,                                                                        \
        .default_duration_s = 4,                                                                   \
        .setup = setup_blackhole,                                                                  \
        .teardown = teardown,                                                                      \
        .pool = "webhook.isolation.pooled.hole",                                                   \
    };                                                                                             \
    static const bench_scenario isolation_##r##_twin = {                                           \
        .name = "webhook.isolation." #r ".twin",                                                   \
        .summary = "round " #r ": alone again, the control (the spread of the same scenario)",     \
        .default_rate = 1000,                                                                      \
        .in_flight = 20000,                                                                        \
        .default_duration_s = 4,                                                                   \
        .setup = setup_plain,                                                                      \
        .teardown = teardown,                                                                      \
        .pool = "webhook.isolation.pooled.twin",                                                   \
    };                                                                                             \
    static const bench_scenario isolation_##r##_pair = {                                           \
        .name = "webhook.isolation." #r ".pair",                                                   \
        .summary = "round " #r ": beside a second healthy endpoint (the cost of the fan-out)",     \
        .default_rate = 1000,                                                                      \
        .in_flight = 20000,                                                                        \
        .default_duration_s = 4,                                                                   \
        .setup = setup_pair,                                                                       \
        .teardown = teardown,                                                                      \
        .pool = "webhook.isolation.pooled.pair",                                                   \
    };

ISOLATION_ROUND(1)
ISOLATION_ROUND(2)
ISOLATION_ROUND(3)
ISOLATION_ROUND(4)
ISOLATION_ROUND(5)

const bench_scenario *const bench_scenarios_webhook[] = {
    &deliveries,       &latency_1000,     &blackhole_1000,   &isolation_1_alone,
    &isolation_1_hole, &isolation_1_twin, &isolation_1_pair, &isolation_2_alone,
    &isolation_2_hole, &isolation_2_twin, &isolation_2_pair, &isolation_3_alone,
    &isolation_3_hole, &isolation_3_twin, &isolation_3_pair, &isolation_4_alone,
    &isolation_4_hole, &isolation_4_twin, &isolation_4_pair, &isolation_5_alone,
    &isolation_5_hole, &isolation_5_twin, &isolation_5_pair, NULL,
};
