/*
 * test_jobqueue_drop.c - jq_queue_drop (jobqueue.h) against a real redis-server: a queue with
 * jobs in every state is deleted to its last key but :seq; max bounds the count; a big queue
 * goes in several bounded scripts, and over the loop (jq_adrop) one bounded script a call; a
 * worker whose job was dropped is refused and recreates nothing; a queue made again under the
 * same name never reuses an id or a token. Every test runs twice: on a single Redis (suite
 * jobqueue_drop) and on a private 3-master cluster (suite jobqueue_drop_cluster), where the
 * keys are looked for on every master.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "jobqueue.h"
#include "sd.h"
#include "support.h"

static sd_redis_server *server;
static sd_redis_cluster_server *cluster;
static sd_redis_url url;
static jq_config cfg;

static void use_url(const char *text) {
    char err[160];
    cr_assert_eq(sd_redis_url_parse(text, &url, err, sizeof err), 0, "%s", err);
    jq_config_default(&cfg);
}

static void start_single(void) {
    server = test_redis_start(NULL);
    use_url(sd_redis_server_url(server));
}

static void start_cluster(void) {
    cluster = test_redis_cluster_start(0);
    use_url(sd_redis_cluster_server_url(cluster));
}

static void stop(void) {
    sd_redis_url_clear(&url);
    sd_redis_server_stop(server);
    if (cluster)
        sd_redis_cluster_server_stop(cluster);
}

TestSuite(jobqueue_drop, .init = start_single, .fini = stop, .timeout = 120);
TestSuite(jobqueue_drop_cluster, .init = start_cluster, .fini = stop, .timeout = 120);

/* A test that runs on both: its body is a function, registered in each suite. */
#define DROP_TEST(name)                                                                            \
    static void name##_body(void);                                                                 \
    Test(jobqueue_drop, name) {                                                                    \
        name##_body();                                                                             \
    }                                                                                              \
    Test(jobqueue_drop_cluster, name) {                                                            \
        name##_body();                                                                             \
    }                                                                                              \
    static void name##_body(void)

static jq_client *client(void) {
    jq_client *c = NULL;
    int rc = jq_client_new(&url, &cfg, &c);
    cr_assert_eq(rc, 0, "jq_client_new: %s", jq_strerror(rc));
    return c;
}

static jq_enqueued put(jq_client *c, const char *q, const char *payload, const jq_enqueue_opts *o) {
    jq_enqueued e;
    int rc = jq_enqueue(c, q, payload, strlen(payload), o, &e);
    cr_assert_eq(rc, 0, "enqueue: %s", jq_strerror(rc));
    return e;
}

/* Reserves exactly one job, the next READY one. */
static jq_job take(jq_client *c, const char *q) {
    jq_job j;
    size_t got = 0;
    int rc = jq_reserve(c, q, 1, 60000, &j, &got);
    cr_assert_eq(rc, 0, "reserve: %s", jq_strerror(rc));
    cr_assert_eq(got, 1, "no job reserved");
    return j;
}

static jq_stats stats(jq_client *c, const char *q) {
    jq_stats s;
    cr_assert_eq(jq_stats_get(c, q, &s), 0);
    return s;
}

static void assert_stats_zero(jq_client *c, const char *q) {
    jq_stats s = stats(c, q);
    cr_assert(s.ready == 0 && s.delayed == 0 && s.reserved == 0 && s.done == 0 && s.dead == 0 &&
                  s.cancelled == 0 && s.oldest_ready_age_ms == -1,
              "stats %lld %lld %lld %lld %lld %lld age %lld", (long long)s.ready,
              (long long)s.delayed, (long long)s.reserved, (long long)s.done, (long long)s.dead,
              (long long)s.cancelled, (long long)s.oldest_ready_age_ms);
}

/* Whether the queue's key with this suffix exists (routed to the queue's node). */
static int key_exists(jq_client *c, const char *q, const char *suffix) {
    char key[256];
    cr_assert_gt(jq_key(c, q, suffix, key, sizeof key), 0);
    return (int)test_redis_int(jq_client_redis(c), "EXISTS %s", key);
}

/* The servers that may hold keys: the single Redis, or every node of the cluster. */
static int nodes(sd_redis_server *out[8]) {
    if (!cluster) {
        out[0] = server;
        return 1;
    }
    int n = sd_redis_cluster_server_count(cluster);
    cr_assert_leq(n, 8);
    for (int i = 0; i < n; i++)
        out[i] = sd_redis_cluster_server_node(cluster, i);
    return n;
}

/* A plain connection to one server, no cluster routing: SCAN and INFO are about that node. */
static redisContext *node_connect(sd_redis_server *s) {
    redisContext *ctx = redisConnect("127.0.0.1", sd_redis_server_port(s));
    cr_assert(ctx && !ctx->err, "connect to node %d", sd_redis_server_port(s));
    return ctx;
}

/* The queue's keys, as suffixes after its base name (SCAN on every node), sorted and joined
 * with spaces into buf: what is really in Redis, not what the indexes say. Returns how many. */
static int queue_keys(jq_client *c, const char *q, char *buf, size_t len) {
    char base[256], pattern[260];
    int blen = jq_key(c, q, "", base, sizeof base);
    cr_assert_gt(blen, 0);
    snprintf(pattern, sizeof pattern, "%s*", base);
    char **found = NULL;
    size_t nfound = 0;
    sd_redis_server *list[8];
    int n = nodes(list);
    for (int i = 0; i < n; i++) {
        redisContext *ctx = node_connect(list[i]);
        char cursor[32] = "0";
        do {
            redisReply *reply = redisCommand(ctx, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
            cr_assert_not_null(reply, "SCAN: %s", ctx->errstr);
            cr_assert_eq(reply->type, REDIS_REPLY_ARRAY);
            cr_assert_eq(reply->elements, 2);
            snprintf(cursor, sizeof cursor, "%s", reply->element[0]->str);
            redisReply *keys = reply->element[1];
            for (size_t k = 0; k < keys->elements; k++) {
                found = sd_xrealloc(found, (nfound + 1) * sizeof *found);
                found[nfound++] = sd_xstrdup(keys->element[k]->str + blen);
            }
            freeReplyObject(reply);
        } while (strcmp(cursor, "0") != 0);
        redisFree(ctx);
    }
    /* Sorted, so a message lists them in a stable order. */
    for (size_t i = 1; i < nfound; i++)
        for (size_t j = i; j > 0 && strcmp(found[j - 1], found[j]) > 0; j--) {
            char *t = found[j];
            found[j] = found[j - 1];
            found[j - 1] = t;
        }
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < nfound; i++) {
        if (off < len)
            off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? " " : "", found[i]);
        free(found[i]);
    }
    free(found);
    return (int)nfound;
}

/* ---- Everything goes ------------------------------------------------------------------------ */

/* A queue with jobs in every state: two with a failure history (one DEAD, one READY again), one
 * with an idempotency key, and a wake list. */
DROP_TEST(a_queue_in_every_state_is_deleted_but_its_counter) {
    jq_client *c = client();
    const char *q = "every";
    jq_fail_opts now = {0, 0}, dead = {1, -1};

    put(c, q, "done", NULL);
    jq_job a = take(c, q);
    cr_assert_eq(jq_ack(c, q, &a, "ok", 2), 0);
    put(c, q, "dead", NULL);
    jq_job b = take(c, q);
    jq_state st;
    cr_assert_eq(jq_fail(c, q, &b, "broken", &dead, &st), 0);
    cr_assert_eq(st, JQ_STATE_DEAD);
    put(c, q, "reserved", NULL);
    jq_job d = take(c, q);
    put(c, q, "retried", NULL);
    jq_job r = take(c, q);
    cr_assert_eq(jq_fail(c, q, &r, "flaky", &now, &st), 0);
    cr_assert_eq(st, JQ_STATE_READY);
    put(c, q, "ready", NULL);
    jq_enqueue_opts later;
    jq_enqueue_opts_default(&later);
    later.delay_ms = 3600 * 1000;
    put(c, q, "delayed", &later);
    jq_enqueued g = put(c, q, "cancelled", NULL);
    cr_assert_eq(jq_cancel(c, q, g.id, NULL), 0);
    jq_enqueue_opts keyed;
    jq_enqueue_opts_default(&keyed);
    keyed.idempotency_key = "k1";
    put(c, q, "keyed", &keyed);

    jq_stats s = stats(c, q);
    cr_assert(s.ready == 3 && s.delayed == 1 && s.reserved == 1 && s.done == 1 && s.dead == 1 &&
              s.cancelled == 1);
    char keys[4096];
    /* The 8 jobs' records and payloads (:meta, :data), 5 cold hashes (a result, two errors, a
     * run_at, an idempotency key), 2 histories, the READY line of priority 0 and the set of
     * lines, 5 zsets, the lease set of the reserved job, the DONE list of the acked one and
     * its count, the counter, the wake list, the idempotency record. */
    cr_assert_eq(queue_keys(c, q, keys, sizeof keys), 22, "%s", keys);
    /* The scan sees them: the structure and both histories exist before the drop. */
    const char *before[] = {":meta",     ":data", ":lines",  ":ready:0",   ":delayed",
                            ":reserved", ":done", ":ndone",  ":cancelled", ":dead",
                            ":seq",      ":wake", ":idem:k1"};
    for (size_t i = 0; i < sizeof before / sizeof before[0]; i++)
        cr_assert(key_exists(c, q, before[i]), "%s missing before the drop: %s", before[i], keys);
    char log_b[64], log_r[64];
    snprintf(log_b, sizeof log_b, ":log:%s", b.id);
    snprintf(log_r, sizeof log_r, ":log:%s", r.id);
    cr_assert(key_exists(c, q, log_b) && key_exists(c, q, log_r), "%s", keys);
    size_t hist = 0;
    jq_attempt at[4];
    cr_assert_eq(jq_job_history(c, q, r.id, at, 4, &hist), 0);
    cr_assert_eq(hist, 1);

    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    cr_assert_eq(removed, 8);
    assert_stats_zero(c, q);
    /* Only the counter and the idempotency record (it expires by itself) are left. */
    int n = queue_keys(c, q, keys, sizeof keys);
    cr_assert_str_eq(keys, ":idem:k1 :seq", "left after the drop: %s", keys);
    cr_assert_eq(n, 2);
    cr_assert_gt(test_redis_int(jq_client_redis(c), "PTTL jq3:{jq:every}:idem:k1"), 0);
    cr_assert_eq(jq_job_history(c, q, r.id, at, 4, &hist), 0);
    cr_assert_eq(hist, 0);
    jq_info info;
    cr_assert_eq(jq_job_get(c, q, a.id, &info), JQ_ENOTFOUND);
    cr_assert_eq(jq_cancel(c, q, g.id, NULL), JQ_ENOTFOUND);

    /* Dropping an empty (or never used) queue is a no-op that succeeds. */
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    cr_assert_eq(removed, 0);
    cr_assert_eq(jq_queue_drop(c, "never-used", 0, &removed), 0);
    cr_assert_eq(removed, 0);
    cr_assert_eq(queue_keys(c, "never-used", keys, sizeof keys), 0, "%s", keys);
    jq_job_clear(&a);
    jq_job_clear(&b);
    jq_job_clear(&d);
    jq_job_clear(&r);
    jq_client_free(c);
}

Test(jobqueue_drop, bad_arguments_are_refused) {
    jq_client *c = client();
    int64_t removed = 7;
    cr_assert_eq(jq_queue_drop(c, "q", -1, &removed), JQ_EINVAL);
    cr_assert_eq(removed, 0);
    cr_assert_eq(jq_queue_drop(c, "a b", 0, &removed), JQ_EINVAL);
    jq_client_free(c);
}

/* ---- Bounds --------------------------------------------------------------------------------- */

DROP_TEST(max_deletes_exactly_that_many_the_next_to_run_first) {
    jq_client *c = client();
    const char *q = "bounded";
    jq_enqueued e[10];
    for (int i = 0; i < 10; i++)
        e[i] = put(c, q, "x", NULL);
    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 3, &removed), 0);
    cr_assert_eq(removed, 3);
    jq_stats s = stats(c, q);
    cr_assert_eq(s.ready, 7);
    cr_assert_eq(s.delayed + s.reserved + s.done + s.dead + s.cancelled, 0);
    /* The three records and payloads are gone with them. */
    char key[256];
    cr_assert_gt(jq_key(c, q, ":meta", key, sizeof key), 0);
    cr_assert_eq(test_redis_int(jq_client_redis(c), "HLEN %s", key), 7);
    cr_assert_gt(jq_key(c, q, ":data", key, sizeof key), 0);
    cr_assert_eq(test_redis_int(jq_client_redis(c), "HLEN %s", key), 7);
    cr_assert(key_exists(c, q, ":ready:0"), "the structure stays while jobs are left");
    jq_info info;
    for (int i = 0; i < 10; i++) {
        int rc = jq_job_get(c, q, e[i].id, &info);
        cr_assert_eq(rc, i < 3 ? JQ_ENOTFOUND : 0, "job %d: %s", i, jq_strerror(rc));
        if (rc == 0)
            jq_info_clear(&info);
    }
    /* What is left works as before. */
    jq_job jobs[10];
    size_t got = 0;
    cr_assert_eq(jq_reserve(c, q, 10, 60000, jobs, &got), 0);
    cr_assert_eq(got, 7);
    for (size_t i = 0; i < got; i++) {
        cr_assert_str_eq(jobs[i].id, e[3 + i].id);
        jq_job_clear(&jobs[i]);
    }
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    cr_assert_eq(removed, 7);
    assert_stats_zero(c, q);
    jq_client_free(c);
}

/* A drop that takes some DONE jobs counts them off the DONE count, which stats reads. */
DROP_TEST(a_partial_drop_counts_off_the_done_jobs_it_takes) {
    jq_client *c = client();
    const char *q = "partdone";
    for (int i = 0; i < 3; i++) {
        put(c, q, "x", NULL);
        jq_job j = take(c, q);
        cr_assert_eq(jq_ack(c, q, &j, "", 0), 0);
        jq_job_clear(&j);
    }
    cr_assert_eq(stats(c, q).done, 3);
    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 2, &removed), 0);
    cr_assert_eq(removed, 2);
    cr_assert_eq(stats(c, q).done, 1);
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    cr_assert_eq(removed, 1);
    assert_stats_zero(c, q);
    char keys[1024];
    cr_assert_eq(queue_keys(c, q, keys, sizeof keys), 1, "left: %s", keys);
    cr_assert_str_eq(keys, ":seq");
    jq_client_free(c);
}

/* The scripts run (EVALSHA and EVAL) on every node, from INFO commandstats. */
static long long scripts_run(void) {
    sd_redis_server *list[8];
    int n = nodes(list);
    long long calls = 0;
    for (int i = 0; i < n; i++) {
        redisContext *ctx = node_connect(list[i]);
        redisReply *reply = redisCommand(ctx, "INFO commandstats");
        cr_assert_not_null(reply);
        cr_assert_eq(reply->type, REDIS_REPLY_STRING);
        const char *names[] = {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="};
        for (int k = 0; k < 2; k++) {
            const char *p = strstr(reply->str, names[k]);
            if (p)
                calls += atoll(p + strlen(names[k]));
        }
        freeReplyObject(reply);
        redisFree(ctx);
    }
    return calls;
}

enum { BIG = 2500 }; /* jobs: three drop scripts of at most 1000 */

/* BIG jobs enqueued at once; returns their ids (a static array: one such queue at a time). */
static const jq_enqueued *put_big(jq_client *c, const char *q) {
    static jq_new_job jobs[BIG];
    static jq_enqueued out[BIG];
    for (int i = 0; i < BIG; i++)
        jobs[i] = (jq_new_job){"p", 1, NULL};
    cr_assert_eq(jq_enqueue_many(c, q, jobs, BIG, out), 0);
    return out;
}

/* A drop whose bound is exactly the READY jobs empties their line in the same call, and with it
 * the queue's structure: nothing is left but the counter. */
DROP_TEST(a_drop_of_exactly_the_ready_jobs_leaves_no_line) {
    jq_client *c = client();
    const char *q = "exact";
    for (int i = 0; i < 3; i++)
        put(c, q, "x", NULL);
    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 3, &removed), 0);
    cr_assert_eq(removed, 3);
    char keys[1024];
    queue_keys(c, q, keys, sizeof keys);
    cr_assert_str_eq(keys, ":seq", "left after the drop: %s", keys);
    jq_client_free(c);
}

DROP_TEST(a_big_queue_goes_in_several_bounded_scripts) {
    jq_client *c = client();
    const char *q = "big";
    put_big(c, q);
    /* Some of them reserved and some done, so more than one index is worked through. */
    jq_job taken[300];
    size_t got = 0;
    cr_assert_eq(jq_reserve(c, q, 300, 60000, taken, &got), 0);
    cr_assert_eq(got, 300);
    for (size_t i = 0; i < 100; i++)
        cr_assert_eq(jq_ack(c, q, &taken[i], "", 0), 0);
    for (size_t i = 0; i < got; i++)
        jq_job_clear(&taken[i]);

    long long before = scripts_run();
    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    long long calls = scripts_run() - before;
    cr_assert_eq(removed, BIG);
    /* At most 1000 jobs per script: 2500 jobs take three. */
    cr_assert_eq(calls, 3, "%lld scripts", calls);
    assert_stats_zero(c, q);
    char keys[4096];
    queue_keys(c, q, keys, sizeof keys);
    cr_assert_str_eq(keys, ":seq", "left after the drop: %s", keys);
    jq_client_free(c);
}

/* ---- Over the loop (jq_adrop) ---------------------------------------------------------------- */

typedef struct drop_step {
    int called, status, more;
    int64_t removed;
} drop_step;

static void on_drop_step(jq_aclient *c, int status, int64_t removed, int more, void *arg) {
    drop_step *d = arg;
    *d = (drop_step){d->called + 1, status, more, removed};
}

/* One jq_adrop on the loop, run until its callback. */
static drop_step adrop(uv_loop_t *loop, jq_aclient *ac, const char *q, int count) {
    drop_step d = {0};
    cr_assert_eq(jq_adrop(ac, q, count, on_drop_step, &d), 0);
    for (int i = 0; i < 100000 && !d.called; i++) {
        jq_aclient_flush(ac);
        uv_run(loop, UV_RUN_ONCE);
    }
    cr_assert_eq(d.called, 1);
    return d;
}

/* A step deletes count jobs, the next to run first, and says whether more are left; the last one
 * takes the structure too, as jq_queue_drop does. Bad arguments are refused with no call. */
DROP_TEST(the_asynchronous_drop_goes_one_bounded_step_a_call) {
    jq_client *c = client();
    const char *q = "astep";
    const jq_enqueued *out = put_big(c, q);
    uv_loop_t loop;
    uv_loop_init(&loop);
    jq_aclient *ac = NULL;
    cr_assert_eq(jq_aclient_new(&loop, &url, &cfg, &ac), 0);
    cr_assert_eq(jq_aclient_wait_connected(ac, 5000), 0);
    cr_assert_eq(jq_adrop(ac, q, 0, on_drop_step, NULL), JQ_EINVAL);
    cr_assert_eq(jq_adrop(ac, q, 1001, on_drop_step, NULL), JQ_EINVAL);
    cr_assert_eq(jq_adrop(ac, "a b", 10, on_drop_step, NULL), JQ_EINVAL);

    drop_step d = adrop(&loop, ac, q, 1000);
    cr_assert(d.status == 0 && d.removed == 1000 && d.more == 1, "status %d, %lld, more %d",
              d.status, (long long)d.removed, d.more);
    jq_info info;
    cr_assert_eq(jq_job_get(c, q, out[999].id, &info), JQ_ENOTFOUND);
    cr_assert_eq(jq_job_get(c, q, out[1000].id, &info), 0, "the step went past its count");
    jq_info_clear(&info);
    cr_assert_eq(stats(c, q).ready, BIG - 1000);
    d = adrop(&loop, ac, q, 1000);
    cr_assert(d.status == 0 && d.removed == 1000 && d.more == 1);
    d = adrop(&loop, ac, q, 1000);
    cr_assert(d.status == 0 && d.removed == 500 && d.more == 0, "last step: %lld, more %d",
              (long long)d.removed, d.more);
    assert_stats_zero(c, q);
    char keys[4096];
    queue_keys(c, q, keys, sizeof keys);
    cr_assert_str_eq(keys, ":seq", "left after the drop: %s", keys);
    /* An empty queue: nothing deleted, nothing more. */
    d = adrop(&loop, ac, q, 1000);
    cr_assert(d.status == 0 && d.removed == 0 && d.more == 0);

    jq_aclient_free(ac);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    jq_client_free(c);
}

/* ---- Workers of dropped jobs, and the queue made again --------------------------------------- */

DROP_TEST(a_worker_of_a_dropped_job_is_refused_and_recreates_nothing) {
    jq_client *c = client();
    const char *q = "leased";
    jq_job j[6];
    for (int i = 0; i < 6; i++) {
        put(c, q, "x", NULL);
        j[i] = take(c, q);
    }
    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    cr_assert_eq(removed, 6);

    cr_assert_eq(jq_ack(c, q, &j[0], "late", 4), JQ_ENOTFOUND);
    jq_state st = JQ_STATE_READY;
    cr_assert_eq(jq_fail(c, q, &j[1], "late", NULL, &st), JQ_ENOTFOUND);
    cr_assert_eq(jq_extend(c, q, &j[2], 60000), JQ_ENOTFOUND);
    cr_assert_eq(jq_release(c, q, &j[3]), JQ_ENOTFOUND);
    cr_assert_eq(jq_progress(c, q, &j[4], "50%", 3), JQ_ENOTFOUND);
    jq_effect fx = {JQ_EFFECT_INCRBY, "count", 1, NULL};
    cr_assert_eq(jq_ack_effect(c, q, &j[5], "late", 4, &fx), JQ_ENOTFOUND);
    jq_ack_item items[2] = {{&j[0], "a", 1}, {&j[1], "b", 1}};
    int codes[2] = {0, 0};
    cr_assert_eq(jq_ack_many(c, q, items, 2, codes), 0);
    cr_assert(codes[0] == JQ_ENOTFOUND && codes[1] == JQ_ENOTFOUND);

    /* No half job came back, nor an index, nor the effect. */
    char keys[4096];
    queue_keys(c, q, keys, sizeof keys);
    cr_assert_str_eq(keys, ":seq", "left after the late calls: %s", keys);
    assert_stats_zero(c, q);
    jq_reap_result rr;
    cr_assert_eq(jq_reap(c, q, &rr), 0);
    cr_assert(rr.promoted == 0 && rr.reclaimed == 0 && rr.buried == 0 && rr.next_ms == -1);
    for (int i = 0; i < 6; i++)
        jq_job_clear(&j[i]);
    jq_client_free(c);
}

/* Five jobs and a lease, dropped, then the same again: were the counter dropped too, the new
 * first job would have the old one's id and lease token, and the old worker's ack would land
 * on it. */
DROP_TEST(a_queue_made_again_never_reuses_an_id_or_a_token) {
    jq_client *c = client();
    const char *q = "again";
    long long highest = 0;
    for (int i = 0; i < 5; i++) {
        jq_enqueued e = put(c, q, "x", NULL);
        if (atoll(e.id) > highest)
            highest = atoll(e.id);
    }
    jq_job old = take(c, q);
    if (atoll(old.token) > highest)
        highest = atoll(old.token);
    int64_t removed = -1;
    cr_assert_eq(jq_queue_drop(c, q, 0, &removed), 0);
    cr_assert_eq(removed, 5);

    for (int i = 0; i < 5; i++) {
        jq_enqueued e = put(c, q, "x", NULL);
        cr_assert_gt(atoll(e.id), highest, "id %s after %lld", e.id, highest);
    }
    jq_job fresh = take(c, q);
    cr_assert_gt(atoll(fresh.token), highest);
    /* The old lease cannot touch the new job. */
    cr_assert_eq(jq_ack(c, q, &old, "stale", 5), JQ_ENOTFOUND);
    jq_info info;
    cr_assert_eq(jq_job_get(c, q, fresh.id, &info), 0);
    cr_assert_eq(info.state, JQ_STATE_RESERVED);
    jq_info_clear(&info);
    cr_assert_eq(jq_ack(c, q, &fresh, "ok", 2), 0);
    jq_job_clear(&old);
    jq_job_clear(&fresh);
    jq_client_free(c);
}
