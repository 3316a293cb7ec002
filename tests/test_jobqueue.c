/*
 * test_jobqueue.c - the job queue library (jobqueue.h) against a real redis-server: the
 * lifecycle, leases and their fence, retries and backoff, dead letters, cancel, idempotency
 * keys, ordering, back-pressure and housekeeping in bounded batches. Most tests run twice: on a
 * single Redis (suite jobqueue) and on a private 3-master cluster (suite jobqueue_cluster).
 * Crashes and restarts (workers killed, Redis killed) are in test_jobqueue_faults.c.
 *
 * Where time must pass (a lease must expire), leases are a few hundred ms and the test waits
 * for the event (a blocking reserve that wakes when the lease ends), never for a fixed sleep.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

TestSuite(jobqueue, .init = start_single, .fini = stop, .timeout = 120);
TestSuite(jobqueue_cluster, .init = start_cluster, .fini = stop, .timeout = 120);

/* A test that runs on both: its body is a function, registered in each suite. */
#define JQ_TEST(name)                                                                              \
    static void name##_body(void);                                                                 \
    Test(jobqueue, name) {                                                                         \
        name##_body();                                                                             \
    }                                                                                              \
    Test(jobqueue_cluster, name) {                                                                 \
        name##_body();                                                                             \
    }                                                                                              \
    static void name##_body(void)

/* fork() for a child that dies with the test process, so a failed assertion leaves no worker
 * behind. */
static pid_t fork_child(void) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    return pid;
}

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

/* Reserves exactly one job (asserts that one came within 30 s). */
static jq_job take(jq_client *c, const char *q, int64_t vis) {
    jq_job j;
    size_t got = 0;
    int rc = jq_reserve_wait(c, q, 1, vis, 30000, &j, &got);
    cr_assert_eq(rc, 0, "reserve: %s", jq_strerror(rc));
    cr_assert_eq(got, 1, "no job reserved");
    return j;
}

/* Enqueues jobs "a", "b" and "c" in one call and reserves the three in one, for vis ms. */
static void take_three(jq_client *c, const char *q, int64_t vis, jq_enqueued ids[3], jq_job j[3]) {
    jq_new_job jobs[3] = {{"a", 1, NULL}, {"b", 1, NULL}, {"c", 1, NULL}};
    cr_assert_eq(jq_enqueue_many(c, q, jobs, 3, ids), 0);
    size_t got = 0;
    cr_assert_eq(jq_reserve(c, q, 3, vis, j, &got), 0);
    cr_assert_eq(got, 3);
}

static jq_state state_of(jq_client *c, const char *q, const char *id) {
    jq_info info;
    int rc = jq_job_get(c, q, id, &info);
    cr_assert_eq(rc, 0, "get %s: %s", id, jq_strerror(rc));
    jq_state s = info.state;
    jq_info_clear(&info);
    return s;
}

static jq_stats stats(jq_client *c, const char *q) {
    jq_stats s;
    cr_assert_eq(jq_stats_get(c, q, &s), 0);
    return s;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Housekeeps until job id is in state want (30 s at most): between rounds it sleeps until the
 * next scheduled event (a lease's end), which is when the state can change. */
static void wait_state(jq_client *c, const char *q, const char *id, jq_state want) {
    uint64_t until = sd_now_ms() + 30000;
    for (;;) {
        jq_reap_result r;
        cr_assert_eq(jq_reap(c, q, &r), 0);
        if (state_of(c, q, id) == want)
            return;
        cr_assert(sd_now_ms() < until, "job %s never became %s", id, jq_state_name(want));
        sleep_ms(r.next_ms >= 0 && r.next_ms < 50 ? r.next_ms + 1 : 50);
    }
}

/* ---- Lifecycle ------------------------------------------------------------------------------ */

JQ_TEST(lifecycle_enqueue_reserve_progress_ack) {
    jq_client *c = client();
    jq_enqueued e = put(c, "life", "hello", NULL);
    cr_assert_eq(e.created, 1);
    cr_assert_eq(state_of(c, "life", e.id), JQ_STATE_READY);
    jq_stats s = stats(c, "life");
    cr_assert_eq(s.ready, 1);
    cr_assert_geq(s.oldest_ready_age_ms, 0);

    jq_job j = take(c, "life", 60000);
    cr_assert_str_eq(j.id, e.id);
    cr_assert_eq(j.payload_len, 5);
    cr_assert_str_eq(j.payload, "hello");
    cr_assert_eq(j.attempts, 1);
    cr_assert_eq(j.max_attempts, 5);
    cr_assert_eq(state_of(c, "life", e.id), JQ_STATE_RESERVED);
    s = stats(c, "life");
    cr_assert(s.ready == 0 && s.reserved == 1 && s.oldest_ready_age_ms == -1);

    cr_assert_eq(jq_progress(c, "life", &j, "50%", 3), 0);
    cr_assert_eq(jq_ack(c, "life", &j, "ok", 2), 0);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "life", e.id, &info), 0);
    cr_assert_eq(info.state, JQ_STATE_DONE);
    cr_assert_str_eq(info.result, "ok");
    cr_assert_str_eq(info.progress, "50%");
    cr_assert_gt(info.finished_ms, 0);
    jq_info_clear(&info);
    s = stats(c, "life");
    cr_assert(s.done == 1 && s.reserved == 0 && s.ready == 0);
    /* A second ack of the same lease is refused: the job is no longer RESERVED. */
    cr_assert_eq(jq_ack(c, "life", &j, "again", 5), JQ_ESTALE);
    jq_job_clear(&j);

    /* DONE is kept for its retention: the job's cold hash (its result and progress) expires
     * then. */
    char key[256];
    cr_assert_gt(jq_key(c, "life", ":job:", key, sizeof key - 24), 0);
    strcat(key, e.id);
    long long pttl = test_redis_int(jq_client_redis(c), "PTTL %s", key);
    cr_assert(pttl > 0 && pttl <= cfg.done_retention_ms, "pttl %lld", pttl);
    jq_client_free(c);
}

JQ_TEST(bulk_enqueue_is_one_call_in_order) {
    jq_client *c = client();
    jq_new_job jobs[50];
    char text[50][8];
    for (int i = 0; i < 50; i++) {
        snprintf(text[i], sizeof text[i], "j%d", i);
        jobs[i] = (jq_new_job){text[i], strlen(text[i]), NULL};
    }
    jq_enqueued out[50];
    cr_assert_eq(jq_enqueue_many(c, "bulk", jobs, 50, out), 0);
    jq_job got[50];
    size_t n = 0;
    cr_assert_eq(jq_reserve(c, "bulk", 50, 60000, got, &n), 0);
    cr_assert_eq(n, 50);
    for (int i = 0; i < 50; i++) {
        cr_assert_str_eq(got[i].id, out[i].id);
        cr_assert_str_eq(got[i].payload, text[i]);
        jq_job_clear(&got[i]);
    }
    jq_client_free(c);
}

/* One ack call answers job by job: each result lands on its own job, a refused job (here a
 * stale token, and a job named twice) is named with its code, and the others are acked. */
JQ_TEST(a_batch_ack_answers_job_by_job) {
    jq_client *c = client();
    jq_enqueued ids[3];
    jq_job j[3];
    take_three(c, "acks", 60000, ids, j);
    cr_assert_eq(j[1].attempts, 1);
    cr_assert_eq(j[1].max_attempts, 5);
    jq_job stale = j[1];
    snprintf(stale.token, sizeof stale.token, "%s", "999999");
    /* The first job twice: the second copy finds it acked already. */
    jq_ack_item items[4] = {
        {&j[0], NULL, 0}, {&stale, "lost", 4}, {&j[2], "third", 5}, {&j[0], NULL, 0}};
    int codes[4] = {-99, -99, -99, -99};
    cr_assert_eq(jq_ack_many(c, "acks", items, 4, codes), 0);
    cr_assert(codes[0] == 0 && codes[1] == JQ_ESTALE && codes[2] == 0 && codes[3] == JQ_ESTALE,
              "%d %d %d %d", codes[0], codes[1], codes[2], codes[3]);
    cr_assert_eq(stats(c, "acks").done, 2);
    const char *want_result[3] = {"", NULL, "third"};
    for (int i = 0; i < 3; i += 2) {
        jq_info info;
        cr_assert_eq(jq_job_get(c, "acks", ids[i].id, &info), 0);
        cr_assert_eq(info.state, JQ_STATE_DONE);
        cr_assert_str_eq(info.result ? info.result : "", want_result[i]);
        jq_info_clear(&info);
    }
    cr_assert_eq(state_of(c, "acks", ids[1].id), JQ_STATE_RESERVED);
    cr_assert_eq(stats(c, "acks").reserved, 1);
    for (int i = 0; i < 3; i++)
        jq_job_clear(&j[i]);
    jq_client_free(c);
}

JQ_TEST(empty_queue_reserves_nothing) {
    jq_client *c = client();
    jq_job j;
    size_t got = 7;
    cr_assert_eq(jq_reserve(c, "none", 10, 1000, &j, &got), 0);
    cr_assert_eq(got, 0);
    jq_client_free(c);
}

Test(jobqueue, bad_arguments_are_refused) {
    jq_client *c = client();
    jq_enqueued e;
    cr_assert_eq(jq_enqueue(c, "bad{name}", "x", 1, NULL, &e), JQ_EINVAL);
    cr_assert_eq(jq_enqueue(c, "", "x", 1, NULL, &e), JQ_EINVAL);
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.priority = 1001;
    cr_assert_eq(jq_enqueue(c, "q", "x", 1, &o, &e), JQ_EINVAL);
    jq_enqueue_opts_default(&o);
    o.max_attempts = 0;
    cr_assert_eq(jq_enqueue(c, "q", "x", 1, &o, &e), JQ_EINVAL);
    char *big = calloc(1, cfg.max_payload + 1);
    cr_assert_eq(jq_enqueue(c, "q", big, cfg.max_payload + 1, NULL, &e), JQ_ETOOBIG);
    free(big);
    jq_job j;
    size_t got;
    cr_assert_eq(jq_reserve(c, "q", 0, 1000, &j, &got), JQ_EINVAL);
    cr_assert_eq(jq_reserve(c, "q", 1, 0, &j, &got), JQ_EINVAL);
    cr_assert_eq(stats(c, "q").ready, 0);
    jq_client_free(c);
}

/* ---- Leases: redelivery, fencing, extend, release ----------------------------------------- */

JQ_TEST(expired_lease_is_redelivered) {
    jq_client *c = client();
    jq_enqueued e = put(c, "lease", "p", NULL);
    jq_job first = take(c, "lease", 200);
    /* Nobody acks: the blocking reserve wakes when the lease ends and gets the job back. */
    jq_job second = take(c, "lease", 60000);
    cr_assert_str_eq(second.id, e.id);
    cr_assert_eq(second.attempts, 2);
    cr_assert_str_neq(second.token, first.token);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "lease", e.id, &info), 0);
    cr_assert_not_null(strstr(info.last_error, "lease expired"), "%s", info.last_error);
    jq_info_clear(&info);
    jq_job_clear(&first);
    jq_job_clear(&second);
    jq_client_free(c);
}

JQ_TEST(stale_token_is_refused_and_changes_nothing) {
    jq_client *c = client();
    jq_enqueued e = put(c, "fence", "p", NULL);
    jq_job old = take(c, "fence", 200);
    jq_job now = take(c, "fence", 60000);
    cr_assert_str_eq(now.id, e.id);

    cr_assert_eq(jq_ack(c, "fence", &old, "late", 4), JQ_ESTALE);
    jq_state st = JQ_STATE_READY;
    cr_assert_eq(jq_fail(c, "fence", &old, "late", NULL, &st), JQ_ESTALE);
    cr_assert_eq(jq_extend(c, "fence", &old, 60000), JQ_ESTALE);
    cr_assert_eq(jq_release(c, "fence", &old), JQ_ESTALE);
    cr_assert_eq(jq_progress(c, "fence", &old, "x", 1), JQ_ESTALE);
    jq_effect fx = {JQ_EFFECT_INCRBY, "n", 1, NULL};
    cr_assert_eq(jq_ack_effect(c, "fence", &old, "", 0, &fx), JQ_ESTALE);

    jq_info info;
    cr_assert_eq(jq_job_get(c, "fence", e.id, &info), 0);
    cr_assert_eq(info.state, JQ_STATE_RESERVED);
    cr_assert_eq(info.attempts, 2);
    cr_assert_str_eq(info.progress, "");
    cr_assert_str_eq(info.result, "");
    cr_assert_eq(info.lease_until_ms, now.lease_until_ms);
    jq_info_clear(&info);
    char key[256];
    cr_assert_gt(jq_effect_key(c, "fence", "n", key, sizeof key), 0);
    redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "EXISTS %s", key);
    cr_assert_eq(r->integer, 0, "a stale ack applied its effect");
    freeReplyObject(r);

    /* The current holder is unaffected. */
    cr_assert_eq(jq_ack(c, "fence", &now, "ok", 2), 0);
    cr_assert_eq(state_of(c, "fence", e.id), JQ_STATE_DONE);
    jq_job_clear(&old);
    jq_job_clear(&now);
    jq_client_free(c);
}

JQ_TEST(extend_keeps_the_job_past_its_first_lease) {
    jq_client *c = client();
    jq_enqueued e = put(c, "ext", "p", NULL);
    jq_job j = take(c, "ext", 300);
    int64_t first = j.lease_until_ms;
    cr_assert_eq(jq_extend(c, "ext", &j, 60000), 0);
    cr_assert_gt(j.lease_until_ms, first + 50000);
    /* Wait for longer than the first lease: nothing is redelivered. */
    jq_job other;
    size_t got = 0;
    cr_assert_eq(jq_reserve_wait(c, "ext", 1, 1000, 900, &other, &got), 0);
    cr_assert_eq(got, 0, "the extended job was redelivered");
    cr_assert_eq(state_of(c, "ext", e.id), JQ_STATE_RESERVED);
    cr_assert_eq(jq_ack(c, "ext", &j, "", 0), 0);
    jq_job_clear(&j);
    jq_client_free(c);
}

JQ_TEST(extend_after_the_lease_ended_is_refused) {
    jq_client *c = client();
    put(c, "ext2", "p", NULL);
    jq_job j = take(c, "ext2", 100);
    /* The next reserve waits out the lease (it wakes when the lease ends). */
    jq_job again = take(c, "ext2", 60000);
    cr_assert_eq(jq_extend(c, "ext2", &j, 60000), JQ_ESTALE);
    jq_job_clear(&j);
    jq_job_clear(&again);
    jq_client_free(c);
}

/* Redis's clock, ms. */
static int64_t redis_now_ms(jq_client *c) {
    redisReply *t = sd_redis_command(jq_client_redis(c), NULL, "TIME");
    cr_assert(t && t->type == REDIS_REPLY_ARRAY && t->elements == 2);
    int64_t now = atoll(t->element[0]->str) * 1000 + atoll(t->element[1]->str) / 1000;
    freeReplyObject(t);
    return now;
}

/* Waits until Redis's clock has moved on by ms. */
static void wait_redis_ms(jq_client *c, int64_t ms) {
    int64_t t0 = redis_now_ms(c);
    while (redis_now_ms(c) < t0 + ms)
        sleep_ms(10);
}

static int key_exists(jq_client *c, const char *q, const char *suffix) {
    char key[256];
    cr_assert_gt(jq_key(c, q, suffix, key, sizeof key), 0);
    return (int)test_redis_int(jq_client_redis(c), "EXISTS %s", key);
}

/* A batch reserved in one call shares one lease deadline, and so one lease set; its jobs leave
 * it one by one (an extend moves a job to the set of its new deadline, an ack takes it out),
 * the reaper takes only what is left at the deadline, and the last job out takes the set and
 * its entry in :reserved with it. */
JQ_TEST(a_batch_leased_together_leaves_its_lease_set_job_by_job) {
    jq_client *c = client();
    jq_enqueued ids[3];
    jq_job j[3];
    take_three(c, "group", 1500, ids, j);
    int64_t first = j[0].lease_until_ms;
    cr_assert(j[1].lease_until_ms == first && j[2].lease_until_ms == first);
    char first_set[64];
    snprintf(first_set, sizeof first_set, ":lease:%lld", (long long)first);
    cr_assert_eq(key_exists(c, "group", first_set), 1);

    cr_assert_eq(jq_extend(c, "group", &j[0], 60000), 0);
    cr_assert_eq(stats(c, "group").reserved, 3, "the extended job is counted twice or not at all");
    cr_assert_eq(jq_ack(c, "group", &j[1], "", 0), 0);
    cr_assert_eq(stats(c, "group").reserved, 2, "the ack took more or less than its job");

    while (redis_now_ms(c) <= first)
        sleep_ms(50);
    jq_reap_result r;
    cr_assert_eq(jq_reap(c, "group", &r), 0);
    cr_assert_eq(r.reclaimed, 1, "only the job left in the set is reclaimed");
    cr_assert_eq(state_of(c, "group", ids[2].id), JQ_STATE_READY);
    cr_assert_eq(state_of(c, "group", ids[0].id), JQ_STATE_RESERVED);
    cr_assert_eq(state_of(c, "group", ids[1].id), JQ_STATE_DONE);
    cr_assert_eq(key_exists(c, "group", first_set), 0);
    cr_assert_eq(stats(c, "group").reserved, 1);

    cr_assert_eq(jq_ack(c, "group", &j[0], "", 0), 0);
    cr_assert_eq(stats(c, "group").reserved, 0);
    cr_assert_eq(key_exists(c, "group", ":reserved"), 0, "a lease deadline with no job is left");
    for (int i = 0; i < 3; i++)
        jq_job_clear(&j[i]);
    jq_client_free(c);
}

JQ_TEST(a_lease_past_its_deadline_is_void_even_if_nobody_took_the_job) {
    jq_client *c = client();
    jq_enqueued e = put(c, "void", "p", NULL);
    jq_job j = take(c, "void", 100);
    int64_t now;
    while ((now = redis_now_ms(c)) <= j.lease_until_ms)
        sleep_ms(j.lease_until_ms - now + 1);
    /* Not reaped yet: the job is still RESERVED under this token, but the lease is over. */
    cr_assert_eq(state_of(c, "void", e.id), JQ_STATE_RESERVED);
    cr_assert_eq(jq_extend(c, "void", &j, 60000), JQ_ESTALE);
    cr_assert_eq(jq_ack(c, "void", &j, "", 0), JQ_ESTALE);
    cr_assert_eq(state_of(c, "void", e.id), JQ_STATE_RESERVED);
    jq_job_clear(&j);
    jq_client_free(c);
}

JQ_TEST(release_returns_the_job_without_counting_the_delivery) {
    jq_client *c = client();
    jq_enqueued a = put(c, "rel", "a", NULL);
    jq_enqueued b = put(c, "rel", "b", NULL);
    jq_job ja = take(c, "rel", 60000);
    cr_assert_str_eq(ja.id, a.id);
    cr_assert_eq(jq_release(c, "rel", &ja), 0);
    /* Back in its old place (before b), and its attempts as before the delivery. */
    jq_job again = take(c, "rel", 60000);
    cr_assert_str_eq(again.id, a.id);
    cr_assert_eq(again.attempts, 1);
    jq_job jb = take(c, "rel", 60000);
    cr_assert_str_eq(jb.id, b.id);
    jq_job_clear(&ja);
    jq_job_clear(&again);
    jq_job_clear(&jb);
    jq_client_free(c);
}

/* ---- Failures: backoff, dead letters ----------------------------------------------------- */

Test(jobqueue, backoff_is_capped_exponential_with_full_jitter) {
    /* The top of the range (rnd = cap) and the bottom (0). */
    for (int a = 1; a <= 6; a++) {
        int64_t cap = 100LL << (a - 1);
        cr_assert_eq(jq_backoff_ms(100, 100000, a, (uint64_t)cap), cap, "attempt %d", a);
        cr_assert_eq(jq_backoff_ms(100, 100000, a, (uint64_t)cap + 1), 0);
    }
    cr_assert_eq(jq_backoff_ms(100, 1000, 5, 1000), 1000);
    cr_assert_eq(jq_backoff_ms(100, 1000, 5, 1001), 0);
    /* Huge attempts and bounds do not overflow: the result stays within [0, max]. */
    int64_t big = INT64_MAX / 2;
    for (int a = 1; a < 200; a += 7) {
        int64_t d = jq_backoff_ms(3, big, a, UINT64_MAX);
        cr_assert(d >= 0 && d <= big, "attempt %d: %lld", a, (long long)d);
        d = jq_backoff_ms(1000, 300000, a, UINT64_MAX - 1);
        cr_assert(d >= 0 && d <= 300000);
    }
    cr_assert_eq(jq_backoff_ms(INT64_MAX, INT64_MAX, 100, (uint64_t)INT64_MAX), INT64_MAX);
    /* Full jitter: many draws cover the range, not just its top. */
    int low = 0, high = 0;
    for (uint64_t r = 0; r < 1000; r++) {
        int64_t d = jq_backoff_ms(100, 100000, 4, r * 2654435761u);
        low += d < 200;
        high += d > 600;
    }
    cr_assert(low > 100 && high > 100, "low %d high %d", low, high);
}

JQ_TEST(fail_retries_after_the_backoff_then_dies) {
    cfg.backoff_base_ms = 100;
    cfg.backoff_max_ms = 150;
    jq_client *c = client();
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.max_attempts = 3;
    jq_enqueued e = put(c, "retry", "p", &o);
    for (int attempt = 1; attempt <= 3; attempt++) {
        jq_job j = take(c, "retry", 60000);
        cr_assert_eq(j.attempts, attempt);
        jq_state st = JQ_STATE_READY;
        cr_assert_eq(jq_fail(c, "retry", &j, "boom", NULL, &st), 0);
        jq_info info;
        cr_assert_eq(jq_job_get(c, "retry", e.id, &info), 0);
        if (attempt < 3) {
            /* DELAYED for at most the capped backoff, or READY at once when the draw was 0. */
            cr_assert(st == JQ_STATE_DELAYED || st == JQ_STATE_READY, "%s", jq_state_name(st));
            if (st == JQ_STATE_DELAYED) {
                int64_t wait = info.run_at_ms - info.failed_ms;
                int64_t cap = attempt == 1 ? 100 : 150;
                cr_assert(wait > 0 && wait <= cap, "attempt %d waits %lld", attempt,
                          (long long)wait);
            }
        } else {
            cr_assert_eq(st, JQ_STATE_DEAD);
            cr_assert_eq(info.state, JQ_STATE_DEAD);
            cr_assert_str_eq(info.last_error, "boom");
        }
        jq_info_clear(&info);
        jq_job_clear(&j);
    }
    jq_client_free(c);
}

JQ_TEST(failed_attempts_are_kept_in_a_history_that_expires_with_the_job) {
    cfg.dead_retention_ms = 3600000;
    jq_client *c = client();
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.max_attempts = 3;
    jq_enqueued e = put(c, "hist", "p", &o);
    jq_fail_opts now = {0, 0};
    jq_job j = take(c, "hist", 60000);
    cr_assert_eq(jq_fail(c, "hist", &j, "first", &now, NULL), 0);
    jq_job_clear(&j);
    j = take(c, "hist", 100);
    jq_job_clear(&j);
    j = take(c, "hist", 60000); /* after the second lease expired */
    jq_fail_opts dead = {1, -1};
    cr_assert_eq(jq_fail(c, "hist", &j, "third", &dead, NULL), 0);
    jq_job_clear(&j);
    jq_attempt h[5];
    size_t got = 0;
    cr_assert_eq(jq_job_history(c, "hist", e.id, h, 5, &got), 0);
    cr_assert_eq(got, 3);
    cr_assert(h[0].attempt == 3 && strcmp(h[0].error, "third") == 0);
    cr_assert(h[1].attempt == 2 && strcmp(h[1].error, "lease expired") == 0, "%d %s", h[1].attempt,
              h[1].error);
    cr_assert(h[2].attempt == 1 && strcmp(h[2].error, "first") == 0);
    cr_assert(h[0].at_ms >= h[1].at_ms && h[1].at_ms >= h[2].at_ms && h[2].at_ms > 0);
    char key[256];
    char suffix[64];
    snprintf(suffix, sizeof suffix, ":log:%s", e.id);
    cr_assert_gt(jq_key(c, "hist", suffix, key, sizeof key), 0);
    long long pttl = test_redis_int(jq_client_redis(c), "PTTL %s", key);
    cr_assert(pttl > 0 && pttl <= 3600000, "the history has no TTL: %lld", pttl);
    /* Redrive keeps it (and its job) for good again; purge deletes both. */
    int64_t n = 0;
    cr_assert_eq(jq_dlq_redrive(c, "hist", 0, &n), 0);
    cr_assert_eq(test_redis_int(jq_client_redis(c), "PTTL %s", key), -1);
    jq_client_free(c);
}

JQ_TEST(an_acked_job_s_history_expires_with_it_and_a_clean_job_has_none) {
    cfg.done_retention_ms = 3600000;
    jq_client *c = client();
    jq_enqueued e = put(c, "hist2", "p", NULL);
    jq_enqueued clean = put(c, "hist2", "q", NULL);
    jq_fail_opts now = {0, 0};
    jq_job j = take(c, "hist2", 60000);
    cr_assert_str_eq(j.id, e.id);
    cr_assert_eq(jq_fail(c, "hist2", &j, "first", &now, NULL), 0);
    jq_job_clear(&j);
    /* Both are acked in one call: the one with a failure behind it, then the clean one. */
    jq_job a = take(c, "hist2", 60000);
    jq_job b = take(c, "hist2", 60000);
    cr_assert_str_eq(a.id, clean.id);
    cr_assert_str_eq(b.id, e.id);
    jq_ack_item items[2] = {{&a, "r", 1}, {&b, "r", 1}};
    int codes[2] = {-99, -99};
    cr_assert_eq(jq_ack_many(c, "hist2", items, 2, codes), 0);
    cr_assert(codes[0] == 0 && codes[1] == 0, "%d %d", codes[0], codes[1]);
    char key[256];
    char suffix[64];
    snprintf(suffix, sizeof suffix, ":log:%s", e.id);
    cr_assert_gt(jq_key(c, "hist2", suffix, key, sizeof key), 0);
    long long pttl = test_redis_int(jq_client_redis(c), "PTTL %s", key);
    cr_assert(pttl > 0 && pttl <= 3600000, "the history of a DONE job has no TTL: %lld", pttl);
    snprintf(suffix, sizeof suffix, ":log:%s", clean.id);
    cr_assert_eq(key_exists(c, "hist2", suffix), 0);
    jq_job_clear(&a);
    jq_job_clear(&b);
    jq_client_free(c);
}

JQ_TEST(fail_with_retry_after_waits_exactly_that_long) {
    jq_client *c = client();
    jq_enqueued e = put(c, "ra", "p", NULL);
    jq_job j = take(c, "ra", 60000);
    jq_fail_opts fo = {0, 60000};
    jq_state st;
    cr_assert_eq(jq_fail(c, "ra", &j, "later", &fo, &st), 0);
    cr_assert_eq(st, JQ_STATE_DELAYED);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "ra", e.id, &info), 0);
    cr_assert_eq(info.run_at_ms - info.failed_ms, 60000);
    jq_info_clear(&info);
    jq_job none;
    size_t got = 1;
    cr_assert_eq(jq_reserve(c, "ra", 1, 1000, &none, &got), 0);
    cr_assert_eq(got, 0);
    jq_job_clear(&j);
    jq_client_free(c);
}

JQ_TEST(permanent_failure_is_dead_at_once) {
    jq_client *c = client();
    jq_enqueued e = put(c, "perm", "p", NULL);
    jq_job j = take(c, "perm", 60000);
    jq_fail_opts fo = {1, -1};
    jq_state st;
    cr_assert_eq(jq_fail(c, "perm", &j, "bad input", &fo, &st), 0);
    cr_assert_eq(st, JQ_STATE_DEAD);
    cr_assert_eq(state_of(c, "perm", e.id), JQ_STATE_DEAD);
    cr_assert_eq(stats(c, "perm").dead, 1);
    jq_job_clear(&j);
    jq_client_free(c);
}

JQ_TEST(expired_leases_count_and_end_dead_at_the_limit) {
    jq_client *c = client();
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.max_attempts = 2;
    jq_enqueued e = put(c, "poison", "p", &o);
    jq_job a = take(c, "poison", 100);
    jq_job b = take(c, "poison", 100); /* after a's lease ended */
    cr_assert_eq(b.attempts, 2);
    wait_state(c, "poison", e.id, JQ_STATE_DEAD);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "poison", e.id, &info), 0);
    cr_assert_not_null(strstr(info.last_error, "lease expired"), "%s", info.last_error);
    jq_info_clear(&info);
    jq_job_clear(&a);
    jq_job_clear(&b);
    jq_client_free(c);
}

JQ_TEST(dead_letters_list_redrive_and_purge) {
    jq_client *c = client();
    jq_fail_opts fo = {1, -1};
    jq_enqueued ids[3];
    for (int i = 0; i < 3; i++) {
        char p[8];
        snprintf(p, sizeof p, "d%d", i);
        ids[i] = put(c, "dlq", p, NULL);
        jq_job j = take(c, "dlq", 60000);
        cr_assert_eq(jq_fail(c, "dlq", &j, "no", &fo, NULL), 0);
        jq_job_clear(&j);
    }
    jq_info list[5];
    size_t got = 0;
    cr_assert_eq(jq_dlq_list(c, "dlq", 0, 5, list, &got), 0);
    cr_assert_eq(got, 3);
    for (size_t i = 0; i < got; i++) {
        cr_assert_str_eq(list[i].id, ids[i].id);
        cr_assert_str_eq(list[i].last_error, "no");
        cr_assert_eq(list[i].attempts, 1);
        cr_assert_gt(list[i].failed_ms, 0);
        jq_info_clear(&list[i]);
    }
    int64_t moved = 0;
    cr_assert_eq(jq_dlq_redrive(c, "dlq", 1, &moved), 0);
    cr_assert_eq(moved, 1);
    jq_job j = take(c, "dlq", 60000);
    cr_assert_str_eq(j.id, ids[0].id);
    cr_assert_eq(j.attempts, 1, "redrive starts the attempts again");
    jq_job_clear(&j);
    int64_t removed = 0;
    cr_assert_eq(jq_dlq_purge(c, "dlq", 0, &removed), 0);
    cr_assert_eq(removed, 2);
    cr_assert_eq(stats(c, "dlq").dead, 0);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "dlq", ids[1].id, &info), JQ_ENOTFOUND);
    jq_attempt h[2];
    size_t got_h = 1;
    cr_assert_eq(jq_job_history(c, "dlq", ids[1].id, h, 2, &got_h), 0);
    cr_assert_eq(got_h, 0, "purge left the job's history behind");
    jq_client_free(c);
}

/* ---- Cancel ---------------------------------------------------------------------------------- */

JQ_TEST(cancel_ready_and_delayed_jobs_at_once) {
    jq_client *c = client();
    jq_enqueued r = put(c, "can", "r", NULL);
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.delay_ms = 60000;
    jq_enqueued d = put(c, "can", "d", &o);
    jq_state was;
    cr_assert_eq(jq_cancel(c, "can", r.id, &was), 0);
    cr_assert_eq(was, JQ_STATE_READY);
    cr_assert_eq(jq_cancel(c, "can", d.id, &was), 0);
    cr_assert_eq(was, JQ_STATE_DELAYED);
    cr_assert_eq(state_of(c, "can", r.id), JQ_STATE_CANCELLED);
    cr_assert_eq(state_of(c, "can", d.id), JQ_STATE_CANCELLED);
    jq_stats s = stats(c, "can");
    cr_assert(s.ready == 0 && s.delayed == 0 && s.cancelled == 2);
    cr_assert_eq(jq_cancel(c, "can", r.id, &was), JQ_ESTATE);
    cr_assert_eq(jq_cancel(c, "can", "999999", &was), JQ_ENOTFOUND);
    jq_job j;
    size_t got = 1;
    cr_assert_eq(jq_reserve(c, "can", 1, 1000, &j, &got), 0);
    cr_assert_eq(got, 0);
    jq_client_free(c);
}

JQ_TEST(cancel_of_a_reserved_job_is_learned_and_never_done) {
    jq_client *c = client();
    jq_enqueued e = put(c, "canr", "p", NULL);
    jq_job j = take(c, "canr", 60000);
    jq_state was;
    cr_assert_eq(jq_cancel(c, "canr", e.id, &was), 0);
    cr_assert_eq(was, JQ_STATE_RESERVED);
    cr_assert_eq(state_of(c, "canr", e.id), JQ_STATE_RESERVED);
    cr_assert_eq(jq_extend(c, "canr", &j, 60000), JQ_ECANCELLED);
    cr_assert_eq(jq_progress(c, "canr", &j, "1", 1), JQ_ECANCELLED);
    cr_assert_eq(jq_ack(c, "canr", &j, "done", 4), JQ_ECANCELLED);
    cr_assert_eq(state_of(c, "canr", e.id), JQ_STATE_CANCELLED);
    jq_job_clear(&j);
    jq_client_free(c);
}

/* A worker in another process runs a long job with heartbeats; cancel from this process stops
 * it and the job ends CANCELLED. */
static void heartbeat_worker(int fd) {
    jq_client *c = NULL;
    if (jq_client_new(&url, &cfg, &c) != 0)
        _exit(10);
    jq_job j;
    size_t got = 0;
    if (jq_reserve_wait(c, "canw", 1, 600, 30000, &j, &got) != 0 || got != 1)
        _exit(11);
    if (write(fd, "r\n", 2) != 2)
        _exit(12);
    for (int i = 0; i < 1000; i++) { /* the handler: a heartbeat every 200 ms */
        sleep_ms(200);
        int rc = jq_extend(c, "canw", &j, 600);
        if (rc == JQ_ECANCELLED) {
            jq_state st;
            _exit(jq_fail(c, "canw", &j, "cancelled", NULL, &st) == JQ_ECANCELLED ? 0 : 13);
        }
        if (rc != 0)
            _exit(14);
    }
    _exit(15);
}

JQ_TEST(cancel_reaches_a_running_worker_through_its_heartbeat) {
    jq_client *c = client();
    jq_enqueued e = put(c, "canw", "long", NULL);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork_child();
    if (pid == 0) {
        close(p[0]);
        heartbeat_worker(p[1]);
    }
    close(p[1]);
    char line[8];
    cr_assert_gt(test_read_line(p[0], line, sizeof line, 30000), 0, "the worker never started");
    cr_assert_eq(jq_cancel(c, "canw", e.id, NULL), 0);
    int status = test_wait_exit(pid, 30000);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %d", status);
    cr_assert_eq(state_of(c, "canw", e.id), JQ_STATE_CANCELLED);
    close(p[0]);
    jq_client_free(c);
}

/* ---- Idempotency keys and back-pressure ---------------------------------------------------- */

JQ_TEST(idempotency_key_returns_the_first_id) {
    jq_client *c = client();
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.idempotency_key = "order-42";
    jq_enqueued a = put(c, "idem", "a", &o);
    jq_enqueued b = put(c, "idem", "b", &o);
    cr_assert_eq(a.created, 1);
    cr_assert_eq(b.created, 0);
    cr_assert_str_eq(a.id, b.id);
    /* Also once the job is done: the key outlives it. */
    jq_job j = take(c, "idem", 60000);
    cr_assert_eq(jq_ack(c, "idem", &j, "", 0), 0);
    jq_enqueued d = put(c, "idem", "d", &o);
    cr_assert_str_eq(d.id, a.id);
    cr_assert_eq(d.created, 0);
    /* The same key twice in one bulk call makes one job. */
    jq_enqueue_opts o2 = o;
    o2.idempotency_key = "bulk-key";
    jq_new_job three[3] = {{"x", 1, &o2}, {"y", 1, &o2}, {"z", 1, NULL}};
    jq_enqueued out[3];
    cr_assert_eq(jq_enqueue_many(c, "idem", three, 3, out), 0);
    cr_assert_str_eq(out[0].id, out[1].id);
    cr_assert(out[0].created == 1 && out[1].created == 0 && out[2].created == 1);
    /* The job after the repeated key has the next new id, and it is the job "z". */
    cr_assert_eq(atoll(out[2].id), atoll(out[0].id) + 1);
    jq_info zi;
    cr_assert_eq(jq_job_get(c, "idem", out[2].id, &zi), 0);
    cr_assert_eq(zi.payload_len, 1);
    cr_assert_eq(zi.payload[0], 'z');
    jq_info_clear(&zi);
    cr_assert_eq(stats(c, "idem").ready, 2);
    jq_job_clear(&j);
    jq_client_free(c);
}

JQ_TEST(idempotency_key_raced_by_eight_processes_makes_one_job) {
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pids[8];
    for (int i = 0; i < 8; i++) {
        pids[i] = fork_child();
        if (pids[i] == 0) {
            close(p[0]);
            jq_client *c = NULL;
            if (jq_client_new(&url, &cfg, &c) != 0)
                _exit(2);
            jq_enqueue_opts o;
            jq_enqueue_opts_default(&o);
            o.idempotency_key = "race";
            jq_enqueued e;
            if (jq_enqueue(c, "race", "p", 1, &o, &e) != 0)
                _exit(3);
            char line[64];
            int n = snprintf(line, sizeof line, "%s %d\n", e.id, e.created);
            _exit(write(p[1], line, (size_t)n) == n ? 0 : 4);
        }
    }
    close(p[1]);
    char first[64] = "";
    int created = 0;
    for (int i = 0; i < 8; i++) {
        char line[64], id[32];
        int cr = 0;
        cr_assert_gt(test_read_line(p[0], line, sizeof line, 30000), 0);
        cr_assert_eq(sscanf(line, "%31s %d", id, &cr), 2);
        if (!first[0])
            snprintf(first, sizeof first, "%s", id);
        cr_assert_str_eq(id, first, "two ids for one key");
        created += cr;
    }
    for (int i = 0; i < 8; i++) {
        int st = test_wait_exit(pids[i], 30000);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    close(p[0]);
    cr_assert_eq(created, 1);
    jq_client *c = client();
    cr_assert_eq(stats(c, "race").ready, 1);
    jq_client_free(c);
}

JQ_TEST(back_pressure_refuses_over_the_bound_and_keeps_the_key_free) {
    cfg.max_ready = 3;
    jq_client *c = client();
    for (int i = 0; i < 3; i++)
        put(c, "bp", "p", NULL);
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.idempotency_key = "k";
    jq_enqueued e;
    cr_assert_eq(jq_enqueue(c, "bp", "p", 1, &o, &e), JQ_EFULL);
    cr_assert_eq(stats(c, "bp").ready, 3);
    /* A bulk call that would pass the bound is refused whole. */
    jq_job j = take(c, "bp", 60000);
    jq_new_job two[2] = {{"a", 1, NULL}, {"b", 1, NULL}};
    jq_enqueued out[2];
    cr_assert_eq(jq_enqueue_many(c, "bp", two, 2, out), JQ_EFULL);
    cr_assert_eq(stats(c, "bp").ready, 2);
    /* Room for one again: the refused key was not consumed, so this creates the job. */
    cr_assert_eq(jq_enqueue(c, "bp", "p", 1, &o, &e), 0);
    cr_assert_eq(e.created, 1);
    jq_job_clear(&j);
    jq_client_free(c);
}

/* ---- Ordering -------------------------------------------------------------------------------- */

JQ_TEST(priority_first_then_fifo) {
    jq_client *c = client();
    const char *names[] = {"a", "b", "hi", "c", "lo", "hi2"};
    int prio[] = {0, 0, 5, 0, -5, 5};
    for (int i = 0; i < 6; i++) {
        jq_enqueue_opts o;
        jq_enqueue_opts_default(&o);
        o.priority = prio[i];
        put(c, "prio", names[i], &o);
    }
    const char *want[] = {"hi", "hi2", "a", "b", "c", "lo"};
    jq_job got[6];
    size_t n = 0;
    cr_assert_eq(jq_reserve(c, "prio", 6, 60000, got, &n), 0);
    cr_assert_eq(n, 6);
    for (int i = 0; i < 6; i++) {
        cr_assert_str_eq(got[i].payload, want[i], "position %d", i);
        jq_job_clear(&got[i]);
    }
    jq_client_free(c);
}

/* The oldest-ready age is that of the longest-waiting line, whatever its priority: the front of
 * every priority's line is looked at, not only the line that runs next. The extreme priorities
 * keep their order too. */
JQ_TEST(oldest_ready_age_looks_at_every_priority) {
    jq_client *c = client();
    jq_enqueue_opts lo, hi;
    jq_enqueue_opts_default(&lo);
    jq_enqueue_opts_default(&hi);
    lo.priority = JQ_PRIORITY_MIN;
    hi.priority = JQ_PRIORITY_MAX;
    jq_enqueued old = put(c, "age", "old", &lo);
    wait_redis_ms(c, 300);
    put(c, "age", "mid", NULL);
    jq_enqueued young = put(c, "age", "young", &hi);
    jq_stats s = stats(c, "age");
    jq_info a, b;
    cr_assert_eq(jq_job_get(c, "age", old.id, &a), 0);
    cr_assert_eq(jq_job_get(c, "age", young.id, &b), 0);
    int64_t gap = b.created_ms - a.created_ms;
    cr_assert_geq(gap, 300);
    /* At least the gap: the low-priority job's age, not the age of the one that runs next. */
    cr_assert_geq(s.oldest_ready_age_ms, gap, "age %lld, gap %lld",
                  (long long)s.oldest_ready_age_ms, (long long)gap);
    jq_info_clear(&a);
    jq_info_clear(&b);
    const char *want[] = {"young", "mid", "old"};
    jq_job got[3];
    size_t n = 0;
    cr_assert_eq(jq_reserve(c, "age", 3, 60000, got, &n), 0);
    cr_assert_eq(n, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(got[i].payload, want[i], "position %d", i);
        jq_job_clear(&got[i]);
    }
    jq_client_free(c);
}

JQ_TEST(delayed_jobs_wait_and_then_run_in_due_order) {
    jq_client *c = client();
    /* Seven late jobs first, so the three due together get ids 8, 9 and 10: FIFO must not
     * follow the ids' text order ("10" < "8"). */
    jq_new_job jobs[10];
    jq_enqueue_opts o[10];
    const char *names[] = {"late", "late", "late", "late", "late",
                           "late", "late", "t1",   "t2",   "t3"};
    int64_t delay[] = {60000, 60000, 60000, 60000, 60000, 60000, 60000, 300, 300, 300};
    for (int i = 0; i < 10; i++) {
        jq_enqueue_opts_default(&o[i]);
        o[i].delay_ms = delay[i];
        jobs[i] = (jq_new_job){names[i], strlen(names[i]), &o[i]};
    }
    jq_enqueued out[10];
    cr_assert_eq(jq_enqueue_many(c, "delay", jobs, 10, out), 0);
    cr_assert_str_eq(out[9].id, "10");
    jq_job none;
    size_t got = 1;
    cr_assert_eq(jq_reserve(c, "delay", 1, 1000, &none, &got), 0);
    cr_assert_eq(got, 0, "a delayed job ran early");
    cr_assert_eq(stats(c, "delay").delayed, 10);
    for (int i = 7; i <= 9; i++) {
        jq_job j = take(c, "delay", 60000); /* wakes when they fall due */
        cr_assert_str_eq(j.payload, names[i], "ties in due time are FIFO");
        jq_job_clear(&j);
    }
    cr_assert_eq(stats(c, "delay").delayed, 7);
    jq_client_free(c);
}

/* ---- Blocking reserve ----------------------------------------------------------------------- */

JQ_TEST(a_reserve_that_empties_the_queue_drops_the_stale_wake_tokens) {
    jq_client *c = client();
    for (int i = 0; i < 5; i++)
        put(c, "stale", "x", NULL);
    char key[256];
    cr_assert_gt(jq_key(c, "stale", ":wake", key, sizeof key), 0);
    cr_assert_eq(test_redis_int(jq_client_redis(c), "LLEN %s", key), 5);
    jq_job jobs[3];
    size_t got = 0;
    cr_assert_eq(jq_reserve(c, "stale", 3, 60000, jobs, &got), 0);
    cr_assert_eq(got, 3);
    for (size_t i = 0; i < got; i++)
        jq_job_clear(&jobs[i]);
    /* Two jobs are still READY: the tokens stay for the waits that will take them. */
    cr_assert_eq(test_redis_int(jq_client_redis(c), "LLEN %s", key), 5);
    cr_assert_eq(jq_reserve(c, "stale", 3, 60000, jobs, &got), 0);
    cr_assert_eq(got, 2);
    for (size_t i = 0; i < got; i++)
        jq_job_clear(&jobs[i]);
    cr_assert_eq(test_redis_int(jq_client_redis(c), "LLEN %s", key), 0,
                 "a wait would wake for a queue with nothing READY");
    jq_client_free(c);
}

JQ_TEST(blocking_reserve_wakes_on_an_enqueue) {
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork_child();
    if (pid == 0) {
        close(p[0]);
        jq_client *c = NULL;
        if (jq_client_new(&url, &cfg, &c) != 0)
            _exit(2);
        if (write(p[1], "w\n", 2) != 2)
            _exit(3);
        jq_job j;
        size_t got = 0;
        uint64_t t0 = sd_now_ms();
        int rc = jq_reserve_wait(c, "wake", 1, 60000, 60000, &j, &got);
        char line[64];
        int n = snprintf(line, sizeof line, "%d %zu %llu\n", rc, got,
                         (unsigned long long)(sd_now_ms() - t0));
        _exit(write(p[1], line, (size_t)n) == n ? 0 : 4);
    }
    close(p[1]);
    char line[64];
    cr_assert_gt(test_read_line(p[0], line, sizeof line, 30000), 0);
    /* Let the child block (its BLPOP is in Redis once CLIENT LIST shows it blocked). */
    jq_client *c = client();
    if (server) {
        uint64_t until = sd_now_ms() + 10000;
        for (;;) {
            redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "CLIENT LIST");
            int blocked = r && r->str && strstr(r->str, "cmd=blpop");
            freeReplyObject(r);
            if (blocked || sd_now_ms() > until)
                break;
            sleep_ms(5);
        }
    }
    put(c, "wake", "now", NULL);
    cr_assert_gt(test_read_line(p[0], line, sizeof line, 30000), 0);
    int rc = -1;
    size_t got = 0;
    unsigned long long waited = 0;
    cr_assert_eq(sscanf(line, "%d %zu %llu", &rc, &got, &waited), 3);
    cr_assert_eq(rc, 0);
    cr_assert_eq(got, 1);
    /* Woken by the enqueue, far sooner than its 60 s wait. */
    cr_assert_lt(waited, 30000);
    test_wait_exit(pid, 10000);
    close(p[0]);
    jq_client_free(c);
}

/* ---- Effects -------------------------------------------------------------------------------- */

JQ_TEST(ack_with_effect_writes_once) {
    jq_client *c = client();
    put(c, "fx", "a", NULL);
    put(c, "fx", "b", NULL);
    jq_effect inc = {JQ_EFFECT_INCRBY, "count", 5, NULL};
    jq_job a = take(c, "fx", 60000);
    cr_assert_eq(jq_ack_effect(c, "fx", &a, "r", 1, &inc), 0);
    cr_assert_eq(jq_ack_effect(c, "fx", &a, "r", 1, &inc), JQ_ESTALE);
    jq_effect h = {JQ_EFFECT_HSET, "results", 0, "v"};
    jq_job b = take(c, "fx", 60000);
    cr_assert_eq(jq_ack_effect(c, "fx", &b, "r", 1, &h), 0);
    char key[256];
    cr_assert_gt(jq_effect_key(c, "fx", "count", key, sizeof key), 0);
    redisReply *g = sd_redis_command(jq_client_redis(c), NULL, "GET %s", key);
    cr_assert(g && g->type == REDIS_REPLY_STRING && strcmp(g->str, "5") == 0);
    freeReplyObject(g);
    cr_assert_gt(jq_effect_key(c, "fx", "results", key, sizeof key), 0);
    redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "HGET %s %s", key, b.id);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(r->str, "v");
    freeReplyObject(r);
    jq_job_clear(&a);
    jq_job_clear(&b);
    jq_client_free(c);
}

/* ---- Housekeeping in bounded batches ------------------------------------------------------ */

Test(jobqueue, ten_thousand_expiring_leases_are_reaped_in_bounded_batches) {
    jq_client *c = client();
    enum { N = 10000 };
    static jq_new_job jobs[1000];
    for (int i = 0; i < 1000; i++)
        jobs[i] = (jq_new_job){"x", 1, NULL};
    static jq_enqueued out[1000];
    for (int k = 0; k < N / 1000; k++)
        cr_assert_eq(jq_enqueue_many(c, "many", jobs, 1000, out), 0);
    static jq_job held[1000];
    for (int k = 0; k < N / 1000; k++) {
        size_t got = 0;
        cr_assert_eq(jq_reserve(c, "many", 1000, 600000, held, &got), 0);
        cr_assert_eq(got, 1000);
        for (size_t i = 0; i < got; i++)
            jq_job_clear(&held[i]);
    }
    cr_assert_eq(stats(c, "many").reserved, N);
    jq_reap_result r0;
    cr_assert_eq(jq_reap(c, "many", &r0), 0);
    cr_assert_eq(r0.reclaimed, 0, "reclaimed before the leases ended");
    /* All 10,000 leases end at the same moment: the scores of the reserved zset (the lease
     * deadlines, one per reserve here; what the reaper reads) are set to the epoch in one step,
     * whatever the time the reserves took. */
    char key[256];
    cr_assert_gt(jq_key(c, "many", ":reserved", key, sizeof key), 0);
    redisReply *x = sd_redis_command(jq_client_redis(c), NULL, "EVAL %s 1 %s",
                                     "for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do "
                                     "redis.call('ZADD', KEYS[1], 1, id) end return 0",
                                     key);
    cr_assert(x && x->type == REDIS_REPLY_INTEGER);
    freeReplyObject(x);
    int calls = 0, total = 0;
    for (;;) {
        jq_reap_result r;
        cr_assert_eq(jq_reap(c, "many", &r), 0);
        cr_assert_leq(r.reclaimed, cfg.housekeep_batch);
        if (r.reclaimed == 0)
            break;
        total += r.reclaimed;
        calls++;
    }
    cr_assert_eq(total, N);
    cr_assert_geq(calls, N / cfg.housekeep_batch);
    jq_stats s = stats(c, "many");
    cr_assert(s.ready == N && s.reserved == 0, "ready %lld reserved %lld", (long long)s.ready,
              (long long)s.reserved);
    jq_client_free(c);
}

/* Enqueues n jobs (at most 50) in one call, reserves them in one and acks them in one, all
 * asserted; fills jobs (the caller clears them) and returns n. */
static size_t finish_batch(jq_client *c, const char *q, size_t n, jq_job *jobs) {
    jq_new_job batch[50];
    jq_enqueued ids[50];
    jq_ack_item items[50];
    int codes[50];
    cr_assert_leq(n, 50);
    for (size_t i = 0; i < n; i++)
        batch[i] = (jq_new_job){"p", 1, NULL};
    cr_assert_eq(jq_enqueue_many(c, q, batch, n, ids), 0);
    size_t got = 0;
    cr_assert_eq(jq_reserve(c, q, (int)n, 60000, jobs, &got), 0);
    cr_assert_eq(got, n);
    for (size_t i = 0; i < got; i++)
        items[i] = (jq_ack_item){&jobs[i], NULL, 0};
    cr_assert_eq(jq_ack_many(c, q, items, got, codes), 0);
    for (size_t i = 0; i < got; i++)
        cr_assert_eq(codes[i], 0);
    return got;
}

/* A reserve of n deletes up to n finished jobs past retention, even when that is more than a
 * housekeeping batch: the deletions keep up with what a reserve can finish. */
Test(jobqueue, a_reserve_deletes_as_many_finished_jobs_as_it_can_take) {
    cfg.done_retention_ms = 100;
    cfg.housekeep_batch = 10;
    jq_client *c = client();
    jq_job jobs[50];
    size_t got = finish_batch(c, "trim", 50, jobs);
    wait_redis_ms(c, 150);
    put(c, "trim", "next", NULL);
    jq_job next;
    size_t one = 0;
    cr_assert_eq(jq_reserve(c, "trim", 50, 60000, &next, &one), 0);
    cr_assert_eq(one, 1);
    char key[256];
    cr_assert_gt(jq_key(c, "trim", ":meta", key, sizeof key), 0);
    cr_assert_eq(test_redis_int(jq_client_redis(c), "HLEN %s", key), 1,
                 "only the new job's record is left");
    for (size_t i = 0; i < got; i++)
        jq_job_clear(&jobs[i]);
    jq_job_clear(&next);
    jq_client_free(c);
}

/* DONE jobs are counted by :ndone: a stats call first trims up to housekeep_batch of those past
 * retention, so a backlog of more than a batch is counted off a batch per call (no call runs
 * long) until the count is 0, and the records go with it (jq-stats.lua). */
Test(jobqueue, stats_trims_finished_jobs_a_batch_at_a_time) {
    /* Long enough that the count of 25 is read before it ends, on a busy machine too. */
    cfg.done_retention_ms = 2000;
    cfg.housekeep_batch = 10;
    jq_client *c = client();
    jq_job jobs[25];
    size_t got = finish_batch(c, "tally", 25, jobs);
    cr_assert_eq(stats(c, "tally").done, 25);
    wait_redis_ms(c, 2050);
    char meta[256];
    cr_assert_gt(jq_key(c, "tally", ":meta", meta, sizeof meta), 0);
    long long left = 25;
    for (int call = 0; call < 3; call++) {
        left = left > 10 ? left - 10 : 0;
        cr_assert_eq(stats(c, "tally").done, left, "call %d", call);
        cr_assert_eq(test_redis_int(jq_client_redis(c), "HLEN %s", meta), left, "call %d", call);
    }
    cr_assert_eq(key_exists(c, "tally", ":ndone"), 0);
    for (size_t i = 0; i < got; i++)
        jq_job_clear(&jobs[i]);
    jq_client_free(c);
}

Test(jobqueue, retention_ends_and_done_jobs_are_gone) {
    cfg.done_retention_ms = 200;
    jq_client *c = client();
    jq_enqueued e = put(c, "ret", "p", NULL);
    jq_job j = take(c, "ret", 60000);
    cr_assert_eq(jq_ack(c, "ret", &j, "", 0), 0);
    cr_assert_eq(stats(c, "ret").done, 1);
    jq_info info;
    uint64_t until = sd_now_ms() + 30000;
    while (jq_job_get(c, "ret", e.id, &info) == 0) {
        jq_info_clear(&info);
        cr_assert(sd_now_ms() < until, "the done job never expired");
        sleep_ms(50);
    }
    cr_assert_eq(stats(c, "ret").done, 0);
    jq_reap_result r;
    cr_assert_eq(jq_reap(c, "ret", &r), 0);
    /* Housekeeping took its index entry, count, record and payload. */
    const char *gone[] = {":done", ":ndone", ":meta", ":data"};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(key_exists(c, "ret", gone[i]), 0, "%s is left", gone[i]);
    jq_job_clear(&j);
    jq_client_free(c);
}

/* A finished job keeps the retention of the client that finished it: a client configured with a
 * shorter one still reads it, and counts it. */
JQ_TEST(a_job_keeps_the_retention_it_finished_with) {
    jq_client *c = client();
    jq_enqueued e = put(c, "keep", "p", NULL);
    jq_job j = take(c, "keep", 60000);
    cr_assert_eq(jq_ack(c, "keep", &j, "", 0), 0);
    jq_config brief = cfg;
    brief.done_retention_ms = 1;
    jq_client *b = NULL;
    cr_assert_eq(jq_client_new(&url, &brief, &b), 0);
    wait_redis_ms(c, 20);
    jq_info info;
    cr_assert_eq(jq_job_get(b, "keep", e.id, &info), 0, "the reader's retention decided");
    cr_assert_eq(info.state, JQ_STATE_DONE);
    jq_info_clear(&info);
    cr_assert_eq(stats(b, "keep").done, 1);
    jq_job_clear(&j);
    jq_client_free(b);
    jq_client_free(c);
}

Test(jobqueue, an_evicting_redis_is_refused) {
    jq_client *c = client();
    char err[256] = "";
    cr_assert_eq(jq_client_check_redis(c, err, sizeof err), 0, "%s", err);
    redisReply *r =
        sd_redis_command(jq_client_redis(c), NULL, "CONFIG SET maxmemory-policy allkeys-lru");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    cr_assert_eq(jq_client_check_redis(c, err, sizeof err), JQ_EEVICTION);
    cr_assert_not_null(strstr(err, "allkeys-lru"), "%s", err);
    cr_assert_not_null(strstr(err, "noeviction"), "%s", err);
    jq_client_free(c);
}
