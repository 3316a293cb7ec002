/*
 * test_jobqueue_worker.c - the worker runtime (jq_worker, jobqueue.h) on a libuv loop against a
 * real redis-server: concurrency, heartbeats that keep a long job, the per-job timeout, cancel
 * reaching a running handler, the graceful stop, and the refusal of a visibility timeout too
 * short for heartbeats.
 *
 * Handlers here hold their jobs until the test (or a stop) ends them; the tests wait for
 * events (a count reached, a callback run), checked on a 5 ms tick of the same loop.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobqueue.h"
#include "sd.h"
#include "support.h"

static sd_redis_server *server;
static sd_redis_cluster_server *cluster;
static sd_redis_url url;
static jq_config cfg;
static uv_loop_t loop;

static void init_with(const char *text) {
    char err[160];
    cr_assert_eq(sd_redis_url_parse(text, &url, err, sizeof err), 0);
    jq_config_default(&cfg);
    cfg.timeout_ms = 200; /* lets leases of 600 ms pass the heartbeat check */
    uv_loop_init(&loop);
}

static void start(void) {
    server = test_redis_start(NULL);
    init_with(sd_redis_server_url(server));
}

static void start_always(void) {
    server = test_redis_start("always");
    init_with(sd_redis_server_url(server));
}

static void start_cluster(void) {
    cluster = test_redis_cluster_start(0);
    init_with(sd_redis_cluster_server_url(cluster));
}

static void stop(void) {
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    sd_redis_url_clear(&url);
    sd_redis_server_stop(server);
    if (cluster)
        sd_redis_cluster_server_stop(cluster);
}

TestSuite(jobqueue_worker, .init = start, .fini = stop, .timeout = 120);
TestSuite(jobqueue_worker_cluster, .init = start_cluster, .fini = stop, .timeout = 120);
TestSuite(jobqueue_worker_durable, .init = start_always, .fini = stop, .timeout = 120);

/* ---- The harness ---------------------------------------------------------------------------- */

#define MAX_TASKS 64

/* What the test's handler saw. */
typedef struct harness {
    jq_worker *w;
    jq_client *sync;
    jq_task *held[MAX_TASKS]; /* tasks whose handler has not finished yet */
    int nheld;
    int running, max_running, finished;
    int hold;            /* 1: handlers keep their jobs until the test ends them */
    int stop_reasons[8]; /* how often each reason came: [0] cancelled, [1] timeout, [2] closed */
    int stopped;
    int (*tick)(struct harness *h); /* returns non-zero when the test may go on */
    uv_timer_t tick_timer;
    int done;
} harness;

static harness H;

static void finish(jq_task *t, int ok, const char *text) {
    for (int i = 0; i < H.nheld; i++) {
        if (H.held[i] == t) {
            H.held[i] = H.held[--H.nheld];
            break;
        }
    }
    H.running--;
    H.finished++;
    jq_task_finish(t, ok, text, strlen(text));
}

static void on_job(jq_task *t, const jq_job *job, void *arg) {
    H.running++;
    if (H.running > H.max_running)
        H.max_running = H.running;
    if (!H.hold) {
        finish(t, 1, job->payload);
        return;
    }
    cr_assert_lt(H.nheld, MAX_TASKS);
    H.held[H.nheld++] = t;
}

static void on_stop_task(jq_task *t, int reason, void *arg) {
    int k = reason == JQ_ECANCELLED ? 0 : reason == SD_ETIMEDOUT ? 1 : reason == SD_ECLOSED ? 2 : 3;
    H.stop_reasons[k]++;
    finish(t, 0, "stopped");
}

static void on_stopped(jq_worker *w, void *arg) {
    H.stopped++;
}

static void on_tick(uv_timer_t *t) {
    if (!H.done && H.tick && H.tick(&H))
        H.done = 1;
}

static jq_worker *worker(const char *queue, int concurrency, int64_t vis, int64_t job_timeout) {
    jq_worker_opts o;
    jq_worker_opts_default(&o);
    o.queue = queue;
    o.concurrency = concurrency;
    o.visibility_ms = vis;
    o.job_timeout_ms = job_timeout;
    o.handler = on_job;
    o.stop = on_stop_task;
    char err[256];
    jq_worker *w = NULL;
    int rc = jq_worker_new(&loop, &url, &cfg, &o, &w, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return w;
}

static void setup(void) {
    memset(&H, 0, sizeof H);
    jq_config scfg = cfg;
    scfg.timeout_ms = 5000;
    cr_assert_eq(jq_client_new(&url, &scfg, &H.sync), 0);
}

/* Runs the loop until tick says so (60 s at most). */
static void run_until(int (*tick)(harness *)) {
    H.tick = tick;
    H.done = 0;
    uv_timer_init(&loop, &H.tick_timer);
    uv_timer_start(&H.tick_timer, on_tick, 5, 5);
    uint64_t until = sd_now_ms() + 60000;
    while (!H.done) {
        cr_assert(sd_now_ms() < until, "the condition never came");
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&H.tick_timer, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int is_stopped(harness *h) {
    return h->stopped > 0;
}

/* Stops the worker with grace_ms, waits for its stop callback, frees it. */
static void stop_worker(int64_t grace_ms) {
    jq_worker_stop(H.w, grace_ms, on_stopped, NULL);
    run_until(is_stopped);
    cr_assert_eq(H.stopped, 1);
    jq_worker_free(H.w);
    H.w = NULL;
    uv_run(&loop, UV_RUN_DEFAULT); /* the connections' handles close */
}

static jq_enqueued put(const char *q, const char *payload, int max_attempts) {
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.max_attempts = max_attempts;
    jq_enqueued e;
    cr_assert_eq(jq_enqueue(H.sync, q, payload, strlen(payload), &o, &e), 0);
    return e;
}

static jq_info info_of(const char *q, const char *id) {
    jq_info info;
    int rc = jq_job_get(H.sync, q, id, &info);
    cr_assert_eq(rc, 0, "%s", jq_strerror(rc));
    return info;
}

/* ---- Tests ------------------------------------------------------------------------------------
 */

static int wr_calls, wr_status;
static size_t wr_n;
static char wr_id[JQ_ID_MAX];

static void on_wait_reserved(jq_aclient *c, int status, jq_job *jobs, size_t n, int64_t next_ms,
                             void *arg) {
    wr_calls++;
    wr_status = status;
    wr_n = n;
    if (n > 0)
        snprintf(wr_id, sizeof wr_id, "%s", jobs[0].id);
    for (size_t i = 0; i < n; i++)
        jq_job_clear(&jobs[i]);
}

static int wait_reserved(harness *h) {
    return wr_calls > 0;
}

/* The wait and the reserve behind it: an enqueue made while the wait blocks ends it, and the
 * job comes back reserved in the same answer (the wait was 30 s: not its timeout). */
static void await_reserve_body(void) {
    setup();
    jq_aclient *c;
    cr_assert_eq(jq_aclient_new(&loop, &url, &cfg, &c), 0);
    cr_assert_eq(jq_aclient_wait_connected(c, 5000), 0);
    wr_calls = 0;
    wr_n = 0;
    uint64_t t0 = sd_now_ms();
    cr_assert_eq(jq_await_reserve(c, "wr", 30000, 5, 60000, on_wait_reserved, NULL), 0);
    cr_assert_eq(wr_calls, 0, "the callback ran from inside the call");
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT); /* the pair is sent */
    jq_enqueued e = put("wr", "x", 5);
    run_until(wait_reserved);
    cr_assert_eq(wr_calls, 1);
    cr_assert_eq(wr_status, 0);
    cr_assert_eq(wr_n, 1);
    cr_assert_str_eq(wr_id, e.id);
    cr_assert_lt(sd_now_ms() - t0, 20000, "the wait ended by its timeout, not the enqueue");
    jq_info info = info_of("wr", e.id);
    cr_assert_eq(info.state, JQ_STATE_RESERVED);
    jq_info_clear(&info);
    jq_aclient_free(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    jq_client_free(H.sync);
}

Test(jobqueue_worker, a_wait_with_its_reserve_returns_the_job_enqueued_meanwhile) {
    await_reserve_body();
}

Test(jobqueue_worker_cluster, a_wait_with_its_reserve_returns_the_job_enqueued_meanwhile) {
    await_reserve_body();
}

static int reserving_after_first_start = -1;

/* After each loop iteration: the reserves in flight once the first handler ran. */
static void on_check_first_start(uv_check_t *c) {
    jq_worker_stats st = jq_worker_get_stats(H.w);
    if (reserving_after_first_start < 0 && st.started == 1)
        reserving_after_first_start = st.reserving;
}

static int all_acked_3(harness *h) {
    return jq_worker_get_stats(h->w).acked == 3;
}

/* A handler that finished gives its slot back at once: with concurrency 1, the next reserve is
 * in flight by the end of the loop iteration that ran the first handler, before its ack is even
 * sent (the acks of an iteration leave on a 0 ms timer, in the next one). */
static void finished_slot_body(void) {
    setup();
    for (int i = 0; i < 3; i++)
        put("slot", "x", 5);
    reserving_after_first_start = -1;
    uv_check_t check;
    uv_check_init(&loop, &check);
    uv_check_start(&check, on_check_first_start);
    jq_worker_opts o;
    jq_worker_opts_default(&o);
    o.queue = "slot";
    o.concurrency = 1;
    o.batch = 1;
    o.visibility_ms = 60000;
    o.handler = on_job;
    o.stop = on_stop_task;
    char err[256];
    cr_assert_eq(jq_worker_new(&loop, &url, &cfg, &o, &H.w, err, sizeof err), 0, "%s", err);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(all_acked_3);
    uv_close((uv_handle_t *)&check, NULL);
    cr_assert_eq(reserving_after_first_start, 1,
                 "after the first handler finished, %d reserves were in flight",
                 reserving_after_first_start);
    cr_assert_eq(H.max_running, 1);
    stop_worker(1000);
    jq_client_free(H.sync);
}

Test(jobqueue_worker, a_finished_handler_frees_its_slot_before_its_ack_is_sent) {
    finished_slot_body();
}

static int all_acked_200(harness *h) {
    return jq_worker_get_stats(h->w).acked == 200;
}

static void runs_every_job_body(void) {
    setup();
    jq_new_job jobs[200];
    for (int i = 0; i < 200; i++)
        jobs[i] = (jq_new_job){"x", 1, NULL};
    jq_enqueued out[200];
    cr_assert_eq(jq_enqueue_many(H.sync, "run", jobs, 200, out), 0);
    H.w = worker("run", 4, 600, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    cr_assert_eq(H.running, 0, "a handler ran inside jq_worker_start");
    run_until(all_acked_200);
    cr_assert_leq(H.max_running, 4);
    /* Handlers finishing together share an ack script. */
    jq_worker_stats ws = jq_worker_get_stats(H.w);
    cr_assert_lt(ws.ack_calls, ws.acked, "%lld ack scripts for %lld jobs", (long long)ws.ack_calls,
                 (long long)ws.acked);
    stop_worker(1000);
    jq_stats s;
    cr_assert_eq(jq_stats_get(H.sync, "run", &s), 0);
    cr_assert(s.done == 200 && s.ready == 0 && s.reserved == 0);
    jq_client_free(H.sync);
}

Test(jobqueue_worker, runs_every_job_with_at_most_concurrency_handlers) {
    runs_every_job_body();
}

Test(jobqueue_worker_cluster, runs_every_job_with_at_most_concurrency_handlers) {
    runs_every_job_body();
}

static int three_running(harness *h) {
    return h->running == 3;
}

Test(jobqueue_worker, concurrency_is_used) {
    setup();
    for (int i = 0; i < 4; i++)
        put("conc", "x", 5);
    H.hold = 1;
    H.w = worker("conc", 3, 600, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(three_running);
    cr_assert_eq(H.max_running, 3);
    while (H.nheld > 0)
        finish(H.held[0], 1, "");
    stop_worker(1000);
    jq_client_free(H.sync);
}

/* Two reserves in flight: concurrency 4, batch 2, ten jobs ready. The start sends two reserves
 * of 2 (the second is on its way while the first one's jobs start), and the slots the first one
 * claimed are not asked for again by the second: exactly 4 handlers run, never more. */
static int reserving_seen_by_first_handler = -1;

static void on_job_note_reserving(jq_task *t, const jq_job *job, void *arg) {
    if (reserving_seen_by_first_handler < 0)
        reserving_seen_by_first_handler = jq_worker_get_stats(H.w).reserving;
    on_job(t, job, arg);
}

static int four_running_none_reserving(harness *h) {
    return h->running == 4 && jq_worker_get_stats(h->w).reserving == 0;
}

static void two_reserves_body(void) {
    setup();
    for (int i = 0; i < 10; i++)
        put("two", "x", 5);
    H.hold = 1;
    reserving_seen_by_first_handler = -1;
    jq_worker_opts o;
    jq_worker_opts_default(&o);
    o.queue = "two";
    o.concurrency = 4;
    o.batch = 2;
    o.visibility_ms = 600;
    o.handler = on_job_note_reserving;
    o.stop = on_stop_task;
    char err[256];
    cr_assert_eq(jq_worker_new(&loop, &url, &cfg, &o, &H.w, err, sizeof err), 0, "%s", err);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(four_running_none_reserving);
    cr_assert_eq(reserving_seen_by_first_handler, 1,
                 "the first handler saw %d reserves in flight, not the second one",
                 reserving_seen_by_first_handler);
    cr_assert_eq(H.max_running, 4);
    cr_assert_eq(jq_worker_get_stats(H.w).reserve_calls, 2);
    while (H.nheld > 0)
        finish(H.held[0], 1, "");
    stop_worker(1000);
    jq_stats s;
    cr_assert_eq(jq_stats_get(H.sync, "two", &s), 0);
    cr_assert_eq(s.reserved, 0);
    jq_client_free(H.sync);
}

Test(jobqueue_worker, a_second_reserve_is_in_flight_and_claims_other_slots) {
    two_reserves_body();
}

Test(jobqueue_worker_cluster, a_second_reserve_is_in_flight_and_claims_other_slots) {
    two_reserves_body();
}

/* Handlers that end with an ack with effect: each job's ack increments a counter in the same
 * script, so the counter equals the jobs acked. */
static void on_job_effect(jq_task *t, const jq_job *job, void *arg) {
    jq_effect fx = {JQ_EFFECT_INCRBY, "n", 1, NULL};
    H.finished++;
    jq_task_finish_effect(t, "ok", 2, &fx);
}

static int all_acked_30(harness *h) {
    return jq_worker_get_stats(h->w).acked == 30 && jq_worker_get_stats(h->w).running == 0;
}

static void ack_with_effect_body(void) {
    setup();
    jq_new_job jobs[30];
    for (int i = 0; i < 30; i++)
        jobs[i] = (jq_new_job){"x", 1, NULL};
    jq_enqueued out[30];
    cr_assert_eq(jq_enqueue_many(H.sync, "fxw", jobs, 30, out), 0);
    jq_worker_opts o;
    jq_worker_opts_default(&o);
    o.queue = "fxw";
    o.concurrency = 4;
    o.visibility_ms = 600;
    o.handler = on_job_effect;
    o.stop = on_stop_task;
    char err[256];
    cr_assert_eq(jq_worker_new(&loop, &url, &cfg, &o, &H.w, err, sizeof err), 0, "%s", err);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(all_acked_30);
    cr_assert_eq(H.finished, 30);
    stop_worker(1000);
    char key[256];
    cr_assert_gt(jq_effect_key(H.sync, "fxw", "n", key, sizeof key), 0);
    redisReply *g = sd_redis_command(jq_client_redis(H.sync), NULL, "GET %s", key);
    cr_assert(g && g->type == REDIS_REPLY_STRING && strcmp(g->str, "30") == 0,
              "the effect counter is not 30");
    freeReplyObject(g);
    jq_info info = info_of("fxw", out[7].id);
    cr_assert_eq(info.state, JQ_STATE_DONE);
    cr_assert_str_eq(info.result, "ok");
    jq_info_clear(&info);
    jq_client_free(H.sync);
}

Test(jobqueue_worker, a_task_finished_with_effect_acks_and_writes_the_effect) {
    ack_with_effect_body();
}

Test(jobqueue_worker_cluster, a_task_finished_with_effect_acks_and_writes_the_effect) {
    ack_with_effect_body();
}

/* A reaper beside the worker: if a lease lapsed, this would hand the job back to READY. */
static int reap_and_check_held(harness *h) {
    jq_reap_result r;
    jq_reap(h->sync, "long", &r);
    if (h->nheld == 1 && jq_worker_get_stats(h->w).heartbeats >= 6) {
        finish(h->held[0], 1, "done");
        return 1;
    }
    return 0;
}

static int acked_one(harness *h) {
    return jq_worker_get_stats(h->w).acked + jq_worker_get_stats(h->w).failed >= 1 ||
           (h->finished > 0 && jq_worker_get_stats(h->w).running == 0);
}

Test(jobqueue_worker, heartbeats_keep_a_job_longer_than_its_lease) {
    setup();
    jq_enqueued e = put("long", "x", 5);
    H.hold = 1;
    H.w = worker("long", 1, 1500, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    /* Six heartbeats (every 500 ms) are two whole leases of 1.5 s. A lease gives a heartbeat
     * 1 s of slack: with 600 ms leases (400 ms of it) a run beside two CPU hogs once saw one
     * lapse, and the job's second attempt. */
    run_until(reap_and_check_held);
    run_until(acked_one);
    jq_info info = info_of("long", e.id);
    cr_assert_eq(info.state, JQ_STATE_DONE, "state %s: the lease lapsed while the handler ran",
                 jq_state_name(info.state));
    cr_assert_eq(info.attempts, 1);
    jq_info_clear(&info);
    stop_worker(1000);
    jq_client_free(H.sync);
}

static int stopped_once(harness *h) {
    return h->finished == 1 && jq_worker_get_stats(h->w).running == 0;
}

Test(jobqueue_worker, a_handler_past_its_job_timeout_is_stopped_and_the_attempt_fails) {
    setup();
    jq_enqueued e = put("slow", "x", 1);
    H.hold = 1;
    H.w = worker("slow", 1, 600, 300);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(stopped_once);
    cr_assert_eq(H.stop_reasons[1], 1, "the handler was not told of its timeout");
    jq_info info = info_of("slow", e.id);
    cr_assert_eq(info.state, JQ_STATE_DEAD); /* max_attempts 1: the failed attempt was its last */
    cr_assert_not_null(strstr(info.last_error, "job timeout"), "%s", info.last_error);
    jq_info_clear(&info);
    stop_worker(1000);
    jq_client_free(H.sync);
}

static const char *cancel_id;

static int running_then_cancel(harness *h) {
    if (h->nheld == 1 && !h->stop_reasons[0] && cancel_id) {
        cr_assert_eq(jq_cancel(h->sync, "cw", cancel_id, NULL), 0);
        cancel_id = NULL;
    }
    return h->stop_reasons[0] == 1 && jq_worker_get_stats(h->w).running == 0;
}

Test(jobqueue_worker, cancel_reaches_the_running_handler) {
    setup();
    jq_enqueued e = put("cw", "x", 5);
    cancel_id = e.id;
    H.hold = 1;
    H.w = worker("cw", 1, 600, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(running_then_cancel);
    jq_info info = info_of("cw", e.id);
    cr_assert_eq(info.state, JQ_STATE_CANCELLED);
    jq_info_clear(&info);
    stop_worker(1000);
    jq_client_free(H.sync);
}

static int two_running(harness *h) {
    return h->nheld == 2;
}

Test(jobqueue_worker, graceful_stop_finishes_within_grace_and_releases_the_rest) {
    setup();
    jq_enqueued a = put("gs", "a", 5);
    jq_enqueued b = put("gs", "b", 5);
    jq_enqueued c = put("gs", "c", 5);
    H.hold = 1;
    H.w = worker("gs", 2, 600, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(two_running);
    /* Stop; one handler finishes within the grace, the other is still running when it ends. */
    jq_worker_stop(H.w, 300, on_stopped, NULL);
    jq_task *quick = H.held[0];
    char quick_id[JQ_ID_MAX];
    snprintf(quick_id, sizeof quick_id, "%s", jq_task_job(quick)->id);
    finish(quick, 1, "ok");
    run_until(is_stopped);
    cr_assert_eq(H.stop_reasons[2], 1, "the unfinished handler was not told to stop");
    jq_worker_free(H.w);
    uv_run(&loop, UV_RUN_DEFAULT);

    const char *ids[3] = {a.id, b.id, c.id};
    int done = 0;
    for (int i = 0; i < 3; i++) {
        jq_info info = info_of("gs", ids[i]);
        if (strcmp(ids[i], quick_id) == 0) {
            cr_assert_eq(info.state, JQ_STATE_DONE);
            done++;
        } else {
            cr_assert_eq(info.state, JQ_STATE_READY, "job %s is %s", ids[i],
                         jq_state_name(info.state));
            cr_assert_eq(info.attempts, 0, "a released delivery was counted");
        }
        jq_info_clear(&info);
    }
    cr_assert_eq(done, 1);
    jq_client_free(H.sync);
}

Test(jobqueue_worker, a_visibility_timeout_too_short_for_heartbeats_is_refused) {
    jq_worker_opts o;
    jq_worker_opts_default(&o);
    o.queue = "q";
    o.handler = on_job;
    o.visibility_ms = 3 * cfg.timeout_ms - 1;
    char err[256] = "";
    jq_worker *w = NULL;
    cr_assert_eq(jq_worker_new(&loop, &url, &cfg, &o, &w, err, sizeof err), JQ_EINVAL);
    cr_assert_null(w);
    cr_assert_not_null(strstr(err, "too short"), "%s", err);
    o.visibility_ms = 3 * cfg.timeout_ms;
    cr_assert_eq(jq_worker_new(&loop, &url, &cfg, &o, &w, err, sizeof err), 0, "%s", err);
    H.w = w;
    H.stopped = 0;
    stop_worker(0);
}

static int two_settled(harness *h) {
    jq_worker_stats s = jq_worker_get_stats(h->w);
    return s.acked + s.failed == 2 && s.running == 0;
}

Test(jobqueue_worker, a_result_over_the_bound_fails_its_job_alone) {
    cfg.max_result = 8;
    setup();
    jq_enqueued ok = put("big", "small", 1);
    jq_enqueued big = put("big", "a result far over eight bytes", 1);
    H.w = worker("big", 2, 600, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(two_settled);
    jq_info info = info_of("big", ok.id);
    cr_assert_eq(info.state, JQ_STATE_DONE);
    cr_assert_str_eq(info.result, "small");
    jq_info_clear(&info);
    info = info_of("big", big.id);
    cr_assert_eq(info.state, JQ_STATE_DEAD);
    cr_assert_str_eq(info.last_error, "result o"); /* cut at max_result, as every error text */
    jq_info_clear(&info);
    stop_worker(1000);
    jq_client_free(H.sync);
}

#define RESTART_JOBS 3000

static int restarted;

/* Kills Redis once a few hundred jobs are acked, restarts it, and waits for every job DONE. */
static int restart_then_all_done(harness *h) {
    if (!restarted && jq_worker_get_stats(h->w).acked >= 300) {
        cr_assert_eq(sd_redis_server_signal(server, SIGKILL), 0);
        sd_redis_server_halt(server);
        cr_assert_eq(sd_redis_server_restart(server), 0);
        restarted = 1;
        return 0;
    }
    jq_stats s;
    return restarted && jq_stats_get(h->sync, "rs", &s) == 0 && s.done == RESTART_JOBS;
}

Test(jobqueue_worker_durable, the_worker_rides_out_a_redis_restart) {
    setup();
    static jq_new_job jobs[RESTART_JOBS];
    static jq_enqueued out[RESTART_JOBS];
    for (int i = 0; i < RESTART_JOBS; i++)
        jobs[i] = (jq_new_job){"x", 1, NULL};
    cr_assert_eq(jq_enqueue_many(H.sync, "rs", jobs, RESTART_JOBS, out), 0);
    H.w = worker("rs", 4, 600, 0);
    cr_assert_eq(jq_worker_start(H.w), 0);
    run_until(restart_then_all_done);
    jq_stats s;
    cr_assert_eq(jq_stats_get(H.sync, "rs", &s), 0);
    cr_assert(s.done == RESTART_JOBS && s.dead == 0 && s.ready == 0 && s.reserved == 0);
    stop_worker(1000);
    jq_client_free(H.sync);
}

/* ---- The asynchronous enqueue ------------------------------------------------------------------
 */

typedef struct aenq {
    int calls, status;
    size_t n;
    jq_enqueued out[3];
} aenq;

static void on_aenqueued(jq_aclient *c, int status, const jq_enqueued *out, size_t n, void *arg) {
    aenq *a = arg;
    a->calls++;
    a->status = status;
    a->n = n;
    for (size_t i = 0; i < n && i < 3; i++)
        a->out[i] = out[i];
}

/* Runs the loop until a's callback ran (bounded). */
static void wait_called(aenq *a) {
    uint64_t until = sd_now_ms() + 30000;
    while (a->calls == 0) {
        cr_assert(sd_now_ms() < until, "the enqueue was never answered");
        uv_run(&loop, UV_RUN_ONCE);
    }
}

/* jq_aenqueue_many: one callback per call, never from inside it; the jobs exist with their
 * payloads; a repeated idempotency key gives the first id; a refused call runs no callback. */
static void aenqueue_body(void) {
    jq_aclient *ac = NULL;
    cr_assert_eq(jq_aclient_new(&loop, &url, &cfg, &ac), 0);
    cr_assert_eq(jq_aclient_wait_connected(ac, 5000), 0);
    jq_enqueue_opts keyed;
    jq_enqueue_opts_default(&keyed);
    keyed.idempotency_key = "k1";
    jq_new_job jobs[3] = {{"a", 1, NULL}, {"bb", 2, NULL}, {"ccc", 3, &keyed}};
    static aenq a, again, bad;
    cr_assert_eq(jq_aenqueue_many(ac, "aq", jobs, 3, on_aenqueued, &a), 0);
    cr_expect_eq(a.calls, 0, "the callback ran inside the call");
    cr_expect_eq(jq_aenqueue_many(ac, "aq", jobs, 0, on_aenqueued, &bad), JQ_EINVAL);
    cr_expect_eq(jq_aenqueue_many(ac, "bad queue", jobs, 1, on_aenqueued, &bad), JQ_EINVAL);
    wait_called(&a);
    cr_assert_eq(a.status, 0, "%s", jq_strerror(a.status));
    cr_assert_eq(a.n, 3);
    cr_expect_str_neq(a.out[0].id, a.out[1].id);
    cr_expect_str_neq(a.out[1].id, a.out[2].id);
    jq_client *c = NULL;
    cr_assert_eq(jq_client_new(&url, &cfg, &c), 0);
    for (int i = 0; i < 3; i++) {
        jq_info info;
        cr_assert_eq(jq_job_get(c, "aq", a.out[i].id, &info), 0);
        cr_expect_eq(info.payload_len, jobs[i].len);
        cr_expect_eq(memcmp(info.payload, jobs[i].payload, jobs[i].len), 0);
        cr_expect_eq(info.state, JQ_STATE_READY);
        jq_info_clear(&info);
        cr_expect_eq(a.out[i].created, 1);
    }
    cr_assert_eq(jq_aenqueue_many(ac, "aq", &jobs[2], 1, on_aenqueued, &again), 0);
    wait_called(&again);
    cr_assert_eq(again.status, 0);
    cr_expect_str_eq(again.out[0].id, a.out[2].id, "the key's first id");
    cr_expect_eq(again.out[0].created, 0);
    jq_stats s;
    cr_assert_eq(jq_stats_get(c, "aq", &s), 0);
    cr_expect_eq(s.ready, 3);
    cr_expect_eq(bad.calls, 0, "a refused call ran its callback");
    jq_client_free(c);
    jq_aclient_free(ac);
    uv_run(&loop, UV_RUN_NOWAIT);
}

Test(jobqueue_worker, aenqueue_many_enqueues_in_one_call_and_answers_later) {
    aenqueue_body();
}

Test(jobqueue_worker_cluster, aenqueue_many_enqueues_in_one_call_and_answers_later) {
    aenqueue_body();
}
