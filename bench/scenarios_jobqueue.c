/*
 * scenarios_jobqueue.c - the job queue's benchmarks: a producer (jq_aenqueue_many) and a worker
 * (the worker runtime, jq_worker, concurrency 50, reserving up to 100 jobs a call and acking the
 * handlers that finish in one loop iteration in one script) on the harness's loop, with a no-op
 * handler that finishes each job at once.
 *
 *   jobqueue.noop.single    closed loop, 500 jobs enqueued and not yet acked, one enqueue call
 *                           per job: jobs/s enqueue -> ack, and that latency
 *   jobqueue.noop.bulk100   the same with enqueues sent 100 jobs a call (a batch waits at most
 *                           BULK_WAIT_MS for its hundredth job)
 *   jobqueue.latency.1000   open loop at 1,000 jobs/s: latency from a job's planned enqueue
 *   jobqueue.latency.5000   time to the moment its handler starts (enqueue -> start),
 *                           coordinated omission corrected; and 5,000 jobs/s. The jobs the
 *                           generator starts in one loop iteration go in one enqueue call, sent
 *                           at the start of the next iteration (no wait): on schedule that is
 *                           one job per call; after a late wake-up, the jobs that fell due
 *                           meanwhile share one call, as a producer that pipelines would send
 *                           them, instead of one script each on a machine already behind
 *
 * One operation is one job. The throughput scenarios complete a job when its ack is answered:
 * the handler puts the job's operation on a FIFO, and after each loop iteration (a uv_check) as
 * many operations leave the FIFO as the worker's acked count grew (the worker sends acks in
 * finishing order on one connection, so they are answered in that order). The latency scenarios
 * complete a job when its handler is called. Each run uses its own queue (bench-PID-N), so no
 * job of an earlier run is seen; the payload is the job's index in the run's table of operations,
 * whose entry is cleared when it completes, so a job delivered twice completes once.
 *
 * The 500 jobs in flight are BullMQ's peer script's own bound for the same worker concurrency
 * (10 x 50); the peer (bench/peers/jobqueue-bullmq.js, registered in scenarios_peers.c) runs
 * after each scenario on the same Redis with the same concurrency, bulk size and rate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "jobqueue.h"
#include "sd.h"

#define CONCURRENCY 50
#define BULK_WAIT_MS 5

typedef struct jq_bench_op {
    void *token;
    bench_done_fn *done;
} jq_bench_op;

typedef struct jq_bench {
    jq_aclient *producer;
    jq_worker *worker;
    bench_later *later; /* completes the enqueues refused before they were sent */
    char queue[64];
    int bulk;     /* jobs per enqueue call, at most */
    int wait_ms;  /* how long a batch waits for its last job (0: the next loop iteration) */
    int on_start; /* complete at the handler's start (latency), else at the ack */
    /* Every job of the run, by index (the payload); an entry is cleared once completed. */
    jq_bench_op *ops;
    size_t nops, cap;
    /* Jobs gathered for the next enqueue call (bulk > 1). */
    size_t *batch;
    size_t nbatch;
    char (*payloads)[24];
    uv_timer_t flush;
    /* Jobs whose handler finished, waiting for their ack (throughput scenarios). */
    size_t *fifo;
    size_t fhead, ftail, fcap;
    int64_t acked_seen;
    uv_check_t check;
    int stopped;
    uint64_t enqueue_errors;
} jq_bench;

static int run_counter;

static void complete(jq_bench *b, size_t i, int err) {
    if (i >= b->nops || !b->ops[i].done)
        return;
    jq_bench_op op = b->ops[i];
    b->ops[i].done = NULL;
    op.done(op.token, err);
}

/* ---- The worker side ------------------------------------------------------------------------ */

static void fifo_push(jq_bench *b, size_t i) {
    if (b->ftail - b->fhead == b->fcap) {
        size_t ncap = b->fcap ? 2 * b->fcap : 1024;
        size_t *n = sd_xmalloc(ncap * sizeof *n);
        for (size_t k = 0; k < b->ftail - b->fhead; k++)
            n[k] = b->fifo[(b->fhead + k) % b->fcap];
        free(b->fifo);
        b->fifo = n;
        b->ftail -= b->fhead;
        b->fhead = 0;
        b->fcap = ncap;
    }
    b->fifo[b->ftail++ % b->fcap] = i;
}

static void handle(jq_task *task, const jq_job *job, void *arg) {
    jq_bench *b = arg;
    size_t i = (size_t)strtoull(job->payload, NULL, 10);
    if (b->on_start)
        complete(b, i, BENCH_OK);
    else
        fifo_push(b, i);
    jq_task_finish(task, 1, NULL, 0);
}

/* After each loop iteration: the jobs whose acks were answered since the last one. */
static void on_check(uv_check_t *h) {
    jq_bench *b = h->data;
    jq_worker_stats s = jq_worker_get_stats(b->worker);
    while (b->acked_seen < s.acked && b->fhead < b->ftail) {
        b->acked_seen++;
        complete(b, b->fifo[b->fhead++ % b->fcap], BENCH_OK);
    }
}

/* ---- The producer side ---------------------------------------------------------------------- */

typedef struct sent {
    jq_bench *b;
    size_t n;
    size_t idx[];
} sent;

static void on_enqueued(jq_aclient *c, int status, const jq_enqueued *out, size_t n, void *arg) {
    sent *s = arg;
    if (status != 0) {
        s->b->enqueue_errors += s->n;
        for (size_t k = 0; k < s->n; k++)
            complete(s->b, s->idx[k], BENCH_ERR_STATUS);
    }
    free(s);
}

/* Sends the gathered jobs in one call. */
static void send_batch(jq_bench *b) {
    uv_timer_stop(&b->flush);
    if (b->nbatch == 0)
        return;
    size_t n = b->nbatch;
    b->nbatch = 0;
    jq_new_job *jobs = sd_xmalloc(n * sizeof *jobs);
    sent *s = sd_xmalloc(sizeof *s + n * sizeof s->idx[0]);
    s->b = b;
    s->n = n;
    for (size_t k = 0; k < n; k++) {
        s->idx[k] = b->batch[k];
        int len = snprintf(b->payloads[k], sizeof b->payloads[k], "%zu", b->batch[k]);
        jobs[k] = (jq_new_job){b->payloads[k], (size_t)len, NULL};
    }
    int rc = jq_aenqueue_many(b->producer, b->queue, jobs, n, on_enqueued, s);
    free(jobs);
    if (rc != 0) {
        b->enqueue_errors += n;
        for (size_t k = 0; k < n; k++) {
            size_t i = s->idx[k];
            bench_later_done(b->later, b->ops[i].token, b->ops[i].done, BENCH_ERR_CONNECT);
            b->ops[i].done = NULL;
        }
        free(s);
    }
}

static void on_flush(uv_timer_t *h) {
    send_batch(h->data);
}

static void issue_job(void *ctx, void *token, bench_done_fn *done) {
    jq_bench *b = ctx;
    if (b->nops == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 65536;
        b->ops = sd_xrealloc(b->ops, b->cap * sizeof *b->ops);
    }
    size_t i = b->nops++;
    b->ops[i] = (jq_bench_op){token, done};
    b->batch[b->nbatch++] = i;
    if (b->nbatch == (size_t)b->bulk)
        send_batch(b);
    else if (b->nbatch == 1)
        uv_timer_start(&b->flush, on_flush, (uint64_t)b->wait_ms, 0);
}

/* ---- Setup and teardown --------------------------------------------------------------------- */

static int setup(const bench_env *env, bench_target *target, int bulk, int wait_ms, int on_start) {
    sd_redis_url url;
    char err[256];
    int rc = sd_redis_url_parse(env->redis_url, &url, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "jobqueue bench: %s\n", err);
        return rc;
    }
    jq_config cfg;
    jq_config_default(&cfg);
    snprintf(cfg.prefix, sizeof cfg.prefix, "jqbench:");
    /* A busy shared machine can hold a reply for a while: the scenarios measure the queue, not
     * how often a call misses a short deadline. */
    cfg.timeout_ms = 5000;
    jq_bench *b = sd_xcalloc(1, sizeof *b);
    snprintf(b->queue, sizeof b->queue, "bench-%d-%d", (int)getpid(), ++run_counter);
    b->bulk = bulk;
    b->wait_ms = wait_ms;
    b->on_start = on_start;
    b->batch = sd_xmalloc((size_t)bulk * sizeof *b->batch);
    b->payloads = sd_xmalloc((size_t)bulk * sizeof *b->payloads);
    rc = jq_aclient_new(env->loop, &url, &cfg, &b->producer);
    if (rc == 0 && jq_aclient_wait_connected(b->producer, 5000) != 0)
        rc = SD_ETIMEDOUT;
    jq_worker_opts wo;
    jq_worker_opts_default(&wo);
    wo.queue = b->queue;
    wo.concurrency = CONCURRENCY;
    wo.handler = handle;
    wo.arg = b;
    if (rc == 0)
        rc = jq_worker_new(env->loop, &url, &cfg, &wo, &b->worker, err, sizeof err);
    if (rc == 0)
        rc = jq_worker_start(b->worker);
    sd_redis_url_clear(&url);
    if (rc != 0) {
        fprintf(stderr, "jobqueue bench: Redis at %s: %s\n", env->redis_url, jq_strerror(rc));
        jq_aclient_free(b->producer);
        jq_worker_free(b->worker);
        free(b->batch);
        free(b->payloads);
        free(b);
        return rc;
    }
    uv_timer_init(env->loop, &b->flush);
    b->flush.data = b;
    uv_check_init(env->loop, &b->check);
    b->check.data = b;
    uv_check_start(&b->check, on_check);
    uv_unref((uv_handle_t *)&b->check);
    b->later = bench_later_new(env->loop);
    target->ctx = b;
    target->issue = issue_job;
    return 0;
}

static void on_stopped(jq_worker *w, void *arg) {
    ((jq_bench *)arg)->stopped = 1;
}

static void teardown(const bench_env *env, bench_target *target) {
    jq_bench *b = target->ctx;
    jq_worker_stats s = jq_worker_get_stats(b->worker);
    fprintf(stderr,
            "jobqueue bench: %s: %llu jobs enqueued, %lld started, %lld acked in %lld ack calls "
            "(%.1f per call), %llu enqueue errors\n",
            b->queue, (unsigned long long)b->nops, (long long)s.started, (long long)s.acked,
            (long long)s.ack_calls, s.ack_calls ? (double)s.acked / (double)s.ack_calls : 0.0,
            (unsigned long long)b->enqueue_errors);
    jq_worker_stop(b->worker, 1000, on_stopped, b);
    uint64_t until = sd_now_ms() + 10000;
    while (!b->stopped && sd_now_ms() < until)
        uv_run(env->loop, UV_RUN_ONCE);
    /* Jobs left in the queue (enqueued in the last moments) expire with the private Redis; on
     * a Redis of the user's they are the run's only leftovers, under the prefix jqbench:. */
    if (!b->stopped) {
        /* Its handler still points at b: keep both rather than free what it may touch. */
        fprintf(stderr, "jobqueue bench: %s: the worker did not stop within 10 s\n", b->queue);
        jq_aclient_free(b->producer);
        target->ctx = NULL;
        return;
    }
    jq_worker_free(b->worker);
    jq_aclient_free(b->producer);
    bench_later_free(b->later);
    uv_close((uv_handle_t *)&b->flush, NULL);
    uv_close((uv_handle_t *)&b->check, NULL);
    for (int i = 0; i < 20; i++)
        uv_run(env->loop, UV_RUN_NOWAIT);
    free(b->ops);
    free(b->batch);
    free(b->payloads);
    free(b->fifo);
    free(b);
    target->ctx = NULL;
}

static int setup_bulk1(const bench_env *env, bench_target *t) {
    return setup(env, t, 1, 0, 0);
}
static int setup_bulk100(const bench_env *env, bench_target *t) {
    return setup(env, t, 100, BULK_WAIT_MS, 0);
}
static int setup_latency(const bench_env *env, bench_target *t) {
    return setup(env, t, 100, 0, 1);
}

/* ---- The registry --------------------------------------------------------------------------- */

static const bench_scenario noop_bulk1 = {
    .name = "jobqueue.noop.single",
    .summary = "no-op jobs enqueue -> ack, 500 in flight, 1 job per enqueue, worker x50",
    .in_flight = 10 * CONCURRENCY,
    .default_duration_s = 4,
    .setup = setup_bulk1,
    .teardown = teardown,
};

static const bench_scenario noop_bulk100 = {
    .name = "jobqueue.noop.bulk100",
    .summary = "no-op jobs enqueue -> ack, 500 in flight, 100 jobs per enqueue, worker x50",
    .in_flight = 10 * CONCURRENCY,
    .default_duration_s = 4,
    .setup = setup_bulk100,
    .teardown = teardown,
};

static const bench_scenario latency_1000 = {
    .name = "jobqueue.latency.1000",
    .summary = "open loop 1,000 jobs/s: enqueue -> handler start, worker x50",
    .default_rate = 1000,
    .in_flight = 20000,
    .default_duration_s = 4,
    .setup = setup_latency,
    .teardown = teardown,
};

static const bench_scenario latency_5000 = {
    .name = "jobqueue.latency.5000",
    .summary = "open loop 5,000 jobs/s: enqueue -> handler start, worker x50",
    .default_rate = 5000,
    .in_flight = 50000,
    .default_duration_s = 4,
    .setup = setup_latency,
    .teardown = teardown,
};

const bench_scenario *const bench_scenarios_jobqueue[] = {
    &noop_bulk1, &noop_bulk100, &latency_1000, &latency_5000, NULL,
};
