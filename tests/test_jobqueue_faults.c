/*
 * test_jobqueue_faults.c - the job queue when processes die: workers killed with SIGKILL (a
 * poison job ends DEAD; an effectively-once counter stays exact while workers are killed and
 * frozen at random) and redis-server killed and restarted (scripts loaded again, leases
 * reclaimed, no acknowledged enqueue lost with appendfsync always).
 *
 * Kills land at random moments: the cadence of the fault injection is a sleep, but nothing
 * waits on a sleep for correctness; the tests wait for jobs to reach their states.
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

static void start_with(const char *appendfsync) {
    server = test_redis_start(appendfsync);
    char err[160];
    cr_assert_eq(sd_redis_url_parse(sd_redis_server_url(server), &url, err, sizeof err), 0);
    jq_config_default(&cfg);
}

static void start(void) {
    start_with(NULL);
}

static void start_always(void) {
    start_with("always");
}

static void start_cluster(void) {
    cluster = test_redis_cluster_start(0);
    char err[160];
    cr_assert_eq(sd_redis_url_parse(sd_redis_cluster_server_url(cluster), &url, err, sizeof err),
                 0);
    jq_config_default(&cfg);
}

static void stop(void) {
    sd_redis_url_clear(&url);
    sd_redis_server_stop(server);
    if (cluster)
        sd_redis_cluster_server_stop(cluster);
}

TestSuite(jobqueue_faults, .init = start, .fini = stop, .timeout = 180);
TestSuite(jobqueue_durable, .init = start_always, .fini = stop, .timeout = 180);
TestSuite(jobqueue_faults_cluster, .init = start_cluster, .fini = stop, .timeout = 180);

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

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static jq_state state_of(jq_client *c, const char *q, const char *id, int *attempts) {
    jq_info info;
    int rc = jq_job_get(c, q, id, &info);
    cr_assert_eq(rc, 0, "get %s: %s", id, jq_strerror(rc));
    jq_state s = info.state;
    if (attempts)
        *attempts = info.attempts;
    jq_info_clear(&info);
    return s;
}

/* Housekeeps until job id is in state want (30 s at most), sleeping until the next scheduled
 * event between rounds. */
static void wait_state(jq_client *c, const char *q, const char *id, jq_state want) {
    uint64_t until = sd_now_ms() + 30000;
    for (;;) {
        jq_reap_result r;
        int rc = jq_reap(c, q, &r);
        if (rc == 0 && state_of(c, q, id, NULL) == want)
            return;
        cr_assert(sd_now_ms() < until, "job %s never became %s", id, jq_state_name(want));
        sleep_ms(rc == 0 && r.next_ms >= 0 && r.next_ms < 50 ? r.next_ms + 1 : 50);
    }
}

/* ---- Workers killed ------------------------------------------------------------------------- */

/* A worker that reserves one job, says so on fd, and hangs until it is killed. */
static void reserve_and_hang(int fd) {
    jq_client *c = NULL;
    if (jq_client_new(&url, &cfg, &c) != 0)
        _exit(2);
    jq_job j;
    size_t got = 0;
    if (jq_reserve_wait(c, "poison", 1, 200, 30000, &j, &got) != 0 || got != 1)
        _exit(3);
    char line[64];
    int n = snprintf(line, sizeof line, "%s %d\n", j.id, j.attempts);
    if (write(fd, line, (size_t)n) != n)
        _exit(4);
    for (;;)
        pause();
}

static void a_job_that_kills_its_worker_ends_dead_body(void);

Test(jobqueue_faults, a_job_that_kills_its_worker_ends_dead) {
    a_job_that_kills_its_worker_ends_dead_body();
}

Test(jobqueue_faults_cluster, a_job_that_kills_its_worker_ends_dead) {
    a_job_that_kills_its_worker_ends_dead_body();
}

static void a_job_that_kills_its_worker_ends_dead_body(void) {
    jq_client *c = client();
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.max_attempts = 3;
    jq_enqueued e;
    cr_assert_eq(jq_enqueue(c, "poison", "p", 1, &o, &e), 0);
    for (int k = 1; k <= 3; k++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork_child();
        if (pid == 0) {
            close(p[0]);
            reserve_and_hang(p[1]);
        }
        close(p[1]);
        char line[64], id[32];
        int attempts = 0;
        cr_assert_gt(test_read_line(p[0], line, sizeof line, 30000), 0, "worker %d got no job", k);
        cr_assert_eq(sscanf(line, "%31s %d", id, &attempts), 2);
        cr_assert_str_eq(id, e.id);
        cr_assert_eq(attempts, k, "the delivery to a killed worker was not counted");
        test_kill_wait(pid, SIGKILL);
        close(p[0]);
    }
    wait_state(c, "poison", e.id, JQ_STATE_DEAD);
    int attempts = 0;
    state_of(c, "poison", e.id, &attempts);
    cr_assert_eq(attempts, 3);
    jq_client_free(c);
}

/* A worker of the effectively-once test: reserve, a plain INCR (a side effect outside the
 * queue, which duplicates under redelivery), a little work, then the ack with its effect. */
static void counting_worker(void) {
    jq_client *c = NULL;
    if (jq_client_new(&url, &cfg, &c) != 0)
        _exit(2);
    char naive[256];
    jq_key(c, "once", ":naive", naive, sizeof naive);
    jq_effect fx = {JQ_EFFECT_INCRBY, "count", 1, NULL};
    srand((unsigned)getpid());
    for (;;) {
        jq_job j;
        size_t got = 0;
        if (jq_reserve_wait(c, "once", 1, 300, 1000, &j, &got) != 0 || got == 0)
            continue;
        redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "INCR %s", naive);
        freeReplyObject(r);
        sleep_ms(rand() % 6);
        jq_ack_effect(c, "once", &j, "", 0, &fx); /* JQ_ESTALE after a freeze: fine */
        jq_job_clear(&j);
    }
}

static pid_t spawn_worker(void) {
    pid_t pid = fork_child();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        counting_worker();
    return pid;
}

static void effectively_once_body(void);

Test(jobqueue_faults, effectively_once_counter_is_exact_with_workers_killed_at_random) {
    effectively_once_body();
}

Test(jobqueue_faults_cluster, effectively_once_counter_is_exact_with_workers_killed_at_random) {
    effectively_once_body();
}

static void effectively_once_body(void) {
    enum { N = 3000, W = 3 };
    jq_client *c = client();
    static jq_new_job jobs[N];
    static jq_enqueued out[N];
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.max_attempts = 1000; /* none may die of the kills */
    for (int i = 0; i < N; i++)
        jobs[i] = (jq_new_job){"x", 1, &o};
    cr_assert_eq(jq_enqueue_many(c, "once", jobs, N, out), 0);

    pid_t workers[W];
    for (int i = 0; i < W; i++)
        workers[i] = spawn_worker();
    srand(12345);
    int kills = 0, freezes = 0;
    uint64_t until = sd_now_ms() + 150000;
    for (;;) {
        jq_stats s;
        cr_assert_eq(jq_stats_get(c, "once", &s), 0);
        cr_assert_eq(s.dead, 0);
        if (s.done == N)
            break;
        cr_assert(sd_now_ms() < until, "only %lld of %d done", (long long)s.done, N);
        sleep_ms(20 + rand() % 80);
        int w = rand() % W;
        if (rand() % 4 == 0) {
            /* A slow worker: frozen past its lease, its job goes to another; when it wakes,
             * its ack must be refused, or the effect would count twice. */
            kill(workers[w], SIGSTOP);
            sleep_ms(400);
            kill(workers[w], SIGCONT);
            freezes++;
        } else {
            test_kill_wait(workers[w], SIGKILL);
            workers[w] = spawn_worker();
            kills++;
        }
    }
    for (int i = 0; i < W; i++)
        test_kill_wait(workers[i], SIGKILL);

    char key[256];
    cr_assert_gt(jq_effect_key(c, "once", "count", key, sizeof key), 0);
    redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "GET %s", key);
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    long long count = atoll(r->str);
    freeReplyObject(r);
    cr_assert_gt(jq_key(c, "once", ":naive", key, sizeof key), 0);
    r = sd_redis_command(jq_client_redis(c), NULL, "GET %s", key);
    long long naive = r && r->str ? atoll(r->str) : -1;
    freeReplyObject(r);
    cr_log_info("%d jobs, %d kills, %d freezes: effect counter %lld, plain counter %lld", N, kills,
                freezes, count, naive);
    cr_assert(kills > 0 && freezes > 0);
    cr_assert_eq(count, N, "the effectively-once counter is %lld for %d jobs", count, N);
    cr_assert_geq(naive, N);
    jq_client_free(c);
}

/* ---- Redis killed ---------------------------------------------------------------------------- */

Test(jobqueue_durable, redis_restart_reloads_scripts_and_reclaims_leases) {
    jq_client *c = client();
    jq_enqueued a, b;
    cr_assert_eq(jq_enqueue(c, "rs", "a", 1, NULL, &a), 0);
    cr_assert_eq(jq_enqueue(c, "rs", "b", 1, NULL, &b), 0);
    jq_job held;
    size_t got = 0;
    cr_assert_eq(jq_reserve(c, "rs", 1, 500, &held, &got), 0);
    cr_assert_eq(got, 1);
    cr_assert_str_eq(held.id, a.id);

    cr_assert_eq(sd_redis_server_signal(server, SIGKILL), 0);
    sd_redis_server_halt(server);
    cr_assert_eq(sd_redis_server_restart(server), 0);

    /* The same client: it reconnects and loads its scripts again (the restarted server has an
     * empty script cache). b is served first, then a once its lease has ended. */
    jq_job j;
    int rc = SD_EDISCONNECTED;
    uint64_t until = sd_now_ms() + 30000;
    while ((rc = jq_reserve_wait(c, "rs", 1, 60000, 30000, &j, &got)) != 0 && sd_now_ms() < until)
        sleep_ms(50); /* the reconnect's backoff */
    cr_assert_eq(rc, 0, "%s", jq_strerror(rc));
    cr_assert_eq(got, 1);
    cr_assert_str_eq(j.id, b.id);
    jq_job_clear(&j);
    cr_assert_eq(jq_reserve_wait(c, "rs", 1, 60000, 30000, &j, &got), 0);
    cr_assert_eq(got, 1);
    cr_assert_str_eq(j.id, a.id, "the lease held across the restart was not reclaimed");
    cr_assert_eq(j.attempts, 2);
    cr_assert_eq(jq_ack(c, "rs", &held, "", 0), JQ_ESTALE);
    cr_assert_eq(jq_ack(c, "rs", &j, "", 0), 0);
    jq_job_clear(&j);
    jq_job_clear(&held);
    jq_client_free(c);
}

/* Enqueues jobs one at a time and writes each acknowledged id to fd, until Redis fails. */
static void enqueue_until_error(int fd) {
    jq_client *c = NULL;
    if (jq_client_new(&url, &cfg, &c) != 0)
        _exit(2);
    for (int i = 0; i < 5000; i++) {
        char payload[16];
        int n = snprintf(payload, sizeof payload, "%d", i);
        jq_enqueued e;
        if (jq_enqueue(c, "dur", payload, (size_t)n, NULL, &e) != 0)
            _exit(0);
        char line[64];
        n = snprintf(line, sizeof line, "%s %s\n", e.id, payload);
        if (write(fd, line, (size_t)n) != n)
            _exit(3);
    }
    _exit(0);
}

Test(jobqueue_durable, sigkilled_redis_loses_no_acknowledged_enqueue) {
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork_child();
    if (pid == 0) {
        close(p[0]);
        enqueue_until_error(p[1]);
    }
    close(p[1]);
    FILE *in = fdopen(p[0], "r");
    static char ids[5000][JQ_ID_MAX];
    static char payloads[5000][16];
    int acked = 0;
    char line[128];
    while (acked < 5000 && fgets(line, sizeof line, in)) {
        cr_assert_eq(sscanf(line, "%23s %15s", ids[acked], payloads[acked]), 2);
        if (++acked == 1000)
            cr_assert_eq(sd_redis_server_signal(server, SIGKILL), 0);
    }
    fclose(in);
    test_wait_exit(pid, 30000);
    cr_assert_geq(acked, 1000);
    sd_redis_server_halt(server);
    cr_assert_eq(sd_redis_server_restart(server), 0);

    jq_client *c = client();
    for (int i = 0; i < acked; i++) {
        jq_info info;
        int rc = jq_job_get(c, "dur", ids[i], &info);
        cr_assert_eq(rc, 0, "acknowledged job %s (%d of %d) lost: %s", ids[i], i, acked,
                     jq_strerror(rc));
        cr_assert_str_eq(info.payload, payloads[i]);
        jq_info_clear(&info);
    }
    jq_stats s;
    cr_assert_eq(jq_stats_get(c, "dur", &s), 0);
    cr_assert_geq(s.ready, acked);
    cr_log_info("%d acknowledged enqueues before the kill, %lld jobs after the restart", acked,
                (long long)s.ready);
    jq_client_free(c);
}
