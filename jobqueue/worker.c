/*
 * worker.c - the worker runtime of jobqueue.h: runs up to `concurrency` handlers at once on a
 * libuv loop, keeps their leases alive with heartbeats, enforces a per-job timeout, and stops
 * gracefully.
 *
 * A worker's loop
 *
 *   pump() -- a free slot, not stopping --> jq_areserve(unclaimed free slots) --> on_reserved()
 *     ^                                                                   |      |
 *     |                    jobs: task_start() for each, then pump() <-----+      |
 *     |                                                                          |
 *     +--------- on_reserved() <-- jq_await_reserve(BLPOP on the wake list ---- none
 *                                   until the next scheduled event or at most WAIT_MAX_MS,
 *                                   and a reserve pipelined behind it)
 *
 * Up to RESERVES_MAX (2) reserves are in flight at once, each claiming the slots it asked for,
 * so the next batch is on its way while the last one starts; the worker waits only when a
 * reserve found nothing and no other is in flight. The wait carries its own reserve: Redis runs
 * it as soon as an enqueue's wake token ends the BLPOP, so a job enqueued to an idle worker
 * costs one round trip to start, not two (wake, then reserve). (jq_await, a wait alone, is
 * left for the case of no free slot.)

 * A task's life (task->state)
 *
 *   RUNNING --- the handler calls jq_task_finish ---> FINISHING --- reply --> CLOSING --> freed
 *      |                                               (fail or release sent; an ack joins
 *      |                                                the acks of this loop iteration, sent
 *      |                                                together by on_flush; nothing when
 *      |                                                the lease was lost)
 *      +-- heartbeat says cancelled / lease lost, the job timeout fires, or the stop's grace
 *          ends: task->stop_reason is set and the handler's stop function is called; the
 *          task stays RUNNING until the handler finishes. The reason decides what finishing
 *          sends: JQ_ECANCELLED a fail (the job ends CANCELLED), SD_ETIMEDOUT a fail counted as
 *          an attempt, SD_ECLOSED (grace over) a release, JQ_ESTALE nothing.
 *
 * Heartbeats: every visibility/3 a task extends its lease to a full visibility timeout. A
 * heartbeat that fails for a transient reason (timeout, Redis down) is simply tried again at the
 * next tick; jq_worker_new refuses a visibility timeout under 3 x the Redis deadline, so two
 * ticks each get a whole deadline before the lease can end.
 *
 * Memory: a task is freed only when its handles are closed and no call about it is in flight
 * (task->pending); the worker is freed by jq_worker_free after its stop callback ran.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jq_internal.h"
#include "sd.h"

#define WAIT_MAX_MS 1000
#define RETRY_MS 100
#define RESERVES_MAX 2

typedef enum task_state { TASK_RUNNING, TASK_FINISHING, TASK_CLOSING } task_state;

struct jq_task {
    jq_worker *w;
    jq_job job;
    task_state state;
    int stop_reason; /* 0 while the handler may run on */
    int pending;     /* calls in flight and open handles */
    uv_timer_t heartbeat;
    uv_timer_t timeout;
    jq_task *prev, *next;
    char *result; /* a successful handler's result, kept until its batched ack is sent */
    size_t result_len;
};

struct jq_worker {
    uv_loop_t *loop;
    jq_aclient *c;
    jq_worker_opts opts;
    char queue[JQ_QUEUE_MAX + 1];
    jq_task *tasks; /* the running ones (a list) */
    int in_flight;  /* tasks not yet freed */
    int acking;     /* of those, tasks whose handler is done and whose ack is queued or sent,
                     * unanswered: they hold no slot */
    int reserving;  /* reserves in flight: at most RESERVES_MAX */
    int claimed;    /* slots those reserves may fill (what each asked for) */
    int waiting, retrying;
    int wait_reserves; /* the wait in flight has a reserve behind it (jq_await_reserve) */
    int stopping, stopped;
    int releases; /* releases in flight for jobs reserved during the stop */
    uv_timer_t retry;
    uv_timer_t grace;
    uv_timer_t flush; /* a 0 ms timer: sends the acks of one loop iteration together */
    jq_task **acks;   /* finished tasks whose ack is not sent yet */
    size_t nacks, acks_cap;
    size_t max_result; /* cfg.max_result: a larger result fails its job, alone */
    int open_handles;
    jq_worker_stop_cb *stop_cb;
    void *stop_arg;
    jq_worker_stats stats;
};

static void pump(jq_worker *w);
static void maybe_stopped(jq_worker *w);

/* ---- Tasks ---------------------------------------------------------------------------------- */

static void task_unref(jq_task *t) {
    if (--t->pending > 0)
        return;
    jq_worker *w = t->w;
    jq_job_clear(&t->job);
    free(t->result);
    free(t);
    w->in_flight--;
    pump(w);
    maybe_stopped(w);
}

static void on_task_handle_closed(uv_handle_t *h) {
    task_unref(h->data);
}

/* The task's last step: unlink it and close its timers (each close drops a reference). */
static void task_close(jq_task *t) {
    jq_worker *w = t->w;
    t->state = TASK_CLOSING;
    if (t->prev)
        t->prev->next = t->next;
    else
        w->tasks = t->next;
    if (t->next)
        t->next->prev = t->prev;
    uv_close((uv_handle_t *)&t->heartbeat, on_task_handle_closed);
    uv_close((uv_handle_t *)&t->timeout, on_task_handle_closed);
    task_unref(t); /* the reference the task held on itself */
}

/* Asks the handler to stop, once, for reason. */
static void task_stop(jq_task *t, int reason) {
    if (t->state != TASK_RUNNING || t->stop_reason)
        return;
    t->stop_reason = reason;
    uv_timer_stop(&t->heartbeat);
    uv_timer_stop(&t->timeout);
    if (t->w->opts.stop)
        t->w->opts.stop(t, reason, t->w->opts.arg);
}

static void on_heartbeat_reply(jq_aclient *c, int status, int64_t value, void *arg) {
    jq_task *t = arg;
    if (status == 0)
        t->job.lease_until_ms = value;
    else if (status == JQ_ECANCELLED || status == JQ_ESTALE || status == JQ_ENOTFOUND)
        task_stop(t, status == JQ_ECANCELLED ? JQ_ECANCELLED : JQ_ESTALE);
    /* else a transient failure: the next tick tries again */
    task_unref(t);
}

static void on_heartbeat(uv_timer_t *h) {
    jq_task *t = h->data;
    jq_worker *w = t->w;
    if (t->state != TASK_RUNNING || t->stop_reason)
        return;
    if (jq_aextend(w->c, w->queue, &t->job, w->opts.visibility_ms, on_heartbeat_reply, t) == 0)
        t->pending++;
    w->stats.heartbeats++;
}

static void on_job_timeout(uv_timer_t *h) {
    task_stop(h->data, SD_ETIMEDOUT);
}

static void on_finish_reply(jq_aclient *c, int status, int64_t value, void *arg) {
    jq_task *t = arg;
    t->pending--; /* this call's reference; task_close drops the task's own */
    task_close(t);
}

/* One batched ack in flight: the tasks it acks. */
typedef struct ack_batch {
    jq_worker *w;
    size_t n;
    jq_task *tasks[];
} ack_batch;

static void on_batch_acked(jq_aclient *c, int status, const int *codes, size_t n, void *arg) {
    ack_batch *b = arg;
    for (size_t i = 0; i < b->n; i++) {
        jq_task *t = b->tasks[i];
        if (status == 0 && codes[i] == 0)
            t->w->stats.acked++;
        t->w->acking--;
        t->pending--;
        task_close(t);
    }
    free(b);
}

/* Sends the acks of the handlers that finished since the last flush, 1,000 per script: a busy
 * worker pays one round trip for many jobs. A task whose handler is done no longer holds one of
 * the `concurrency` slots (ack_later counts it in `acking`), so the next reserve waits neither
 * for this flush nor for its answer. */
static void on_flush(uv_timer_t *h) {
    jq_worker *w = h->data;
    while (w->nacks > 0) {
        size_t n = w->nacks > 1000 ? 1000 : w->nacks;
        ack_batch *b = sd_xmalloc(sizeof *b + n * sizeof b->tasks[0]);
        b->w = w;
        b->n = n;
        jq_ack_item *items = sd_xmalloc(n * sizeof *items);
        for (size_t i = 0; i < n; i++) {
            jq_task *t = w->acks[w->nacks - n + i];
            b->tasks[i] = t;
            items[i] = (jq_ack_item){&t->job, t->result, t->result_len};
        }
        w->nacks -= n;
        int rc = jq_aack_many(w->c, w->queue, items, n, on_batch_acked, b);
        free(items);
        w->stats.ack_calls += rc == 0;
        if (rc != 0) {
            /* Not sent (Redis down, or a result over the bound): the leases will expire and
             * the jobs come back. */
            for (size_t i = 0; i < n; i++) {
                w->acking--;
                b->tasks[i]->pending--;
                task_close(b->tasks[i]);
            }
            free(b);
        }
    }
    /* The handlers are done: their slots take new jobs while the acks are on their way. */
    pump(w);
}

static void ack_later(jq_worker *w, jq_task *t, const void *data, size_t len) {
    t->result = sd_xmalloc(len + 1);
    if (len > 0)
        memcpy(t->result, data, len);
    t->result_len = len;
    if (w->nacks == w->acks_cap) {
        w->acks_cap = w->acks_cap ? 2 * w->acks_cap : 64;
        w->acks = sd_xrealloc(w->acks, w->acks_cap * sizeof *w->acks);
    }
    w->acks[w->nacks++] = t;
    w->acking++;
    t->pending++;
    if (w->nacks == 1)
        uv_timer_start(&w->flush, on_flush, 0, 0);
}

void jq_task_finish(jq_task *t, int ok, const void *data, size_t len) {
    assert(t->state == TASK_RUNNING);
    jq_worker *w = t->w;
    t->state = TASK_FINISHING;
    uv_timer_stop(&t->heartbeat);
    uv_timer_stop(&t->timeout);
    int rc = -1;
    int reason = t->stop_reason;
    if (reason == JQ_ESTALE) {
        rc = -1; /* the lease is gone: nothing may be sent about this job */
    } else if (reason == SD_ECLOSED) {
        rc = jq_arelease(w->c, w->queue, &t->job, on_finish_reply, t);
        w->stats.released += rc == 0;
    } else if (reason == 0 && ok && len <= w->max_result) {
        ack_later(w, t, data, len);
        return;
    } else {
        char error[256];
        if (reason == 0 && ok)
            snprintf(error, sizeof error, "result of %zu bytes over the bound of %zu", len,
                     w->max_result);
        else if (reason == SD_ETIMEDOUT)
            snprintf(error, sizeof error, "job timeout after %lld ms",
                     (long long)w->opts.job_timeout_ms);
        else if (reason == JQ_ECANCELLED)
            snprintf(error, sizeof error, "cancelled");
        else
            snprintf(error, sizeof error, "%.*s", (int)(len < 255 ? len : 255),
                     data ? (const char *)data : "");
        if (strlen(error) > w->max_result)
            error[w->max_result] = '\0'; /* the error text has the result's bound */
        rc = jq_afail(w->c, w->queue, &t->job, error, NULL, on_finish_reply, t);
        w->stats.failed += rc == 0;
    }
    if (rc == 0) {
        t->pending++;
        return;
    }
    /* Nothing sent (lease lost, or Redis down: the lease will expire and the job come back).
     * Closing now is safe: the handler called us, and task_close frees nothing before the
     * timers' close callbacks, which run from the loop. */
    task_close(t);
}

static void on_effect_acked(jq_aclient *c, int status, int64_t value, void *arg) {
    jq_task *t = arg;
    if (status == 0)
        t->w->stats.acked++;
    t->pending--;
    task_close(t);
}

void jq_task_finish_effect(jq_task *t, const void *data, size_t len, const jq_effect *fx) {
    assert(t->state == TASK_RUNNING);
    jq_worker *w = t->w;
    if (t->stop_reason != 0 || len > w->max_result) {
        jq_task_finish(t, 1, data, len); /* a fail or a release, as for a plain ack */
        return;
    }
    int rc = jq_aack_effect(w->c, w->queue, &t->job, data, len, fx, on_effect_acked, t);
    if (rc != 0) {
        /* A bad effect fails the job (not sent either when Redis is down: the lease expires). */
        char error[128];
        snprintf(error, sizeof error, "ack with effect refused: %s", jq_strerror(rc));
        jq_task_finish(t, 0, error, strlen(error));
        return;
    }
    t->state = TASK_FINISHING;
    uv_timer_stop(&t->heartbeat);
    uv_timer_stop(&t->timeout);
    t->pending++;
}

const jq_job *jq_task_job(const jq_task *t) {
    return &t->job;
}

static void task_start(jq_worker *w, jq_job *job) {
    jq_task *t = sd_xcalloc(1, sizeof *t);
    t->w = w;
    t->job = *job; /* takes the payload */
    memset(job, 0, sizeof *job);
    t->state = TASK_RUNNING;
    t->pending = 3; /* the task itself and its two timers */
    uv_timer_init(w->loop, &t->heartbeat);
    uv_timer_init(w->loop, &t->timeout);
    t->heartbeat.data = t;
    t->timeout.data = t;
    uint64_t every = (uint64_t)w->opts.visibility_ms / 3;
    uv_timer_start(&t->heartbeat, on_heartbeat, every, every);
    if (w->opts.job_timeout_ms > 0)
        uv_timer_start(&t->timeout, on_job_timeout, (uint64_t)w->opts.job_timeout_ms, 0);
    t->next = w->tasks;
    if (w->tasks)
        w->tasks->prev = t;
    w->tasks = t;
    w->in_flight++;
    w->stats.started++;
    w->opts.handler(t, &t->job, w->opts.arg);
}

/* ---- Reserving ------------------------------------------------------------------------------ */

static void on_retry(uv_timer_t *h) {
    jq_worker *w = h->data;
    w->retrying = 0;
    pump(w);
}

static void retry_later(jq_worker *w) {
    w->retrying = 1;
    uv_timer_start(&w->retry, on_retry, RETRY_MS, 0);
}

static void on_woken(jq_aclient *c, int status, int64_t woken, void *arg) {
    jq_worker *w = arg;
    w->waiting = 0;
    if (w->stopping) {
        maybe_stopped(w);
        return;
    }
    if (status != 0 && status != SD_ECLOSED)
        retry_later(w);
    else
        pump(w);
}

static void on_stop_release(jq_aclient *c, int status, int64_t value, void *arg) {
    jq_worker *w = arg;
    w->releases--;
    maybe_stopped(w);
}

/* One reserve in flight: the slots it asked for, and whether it waits behind a BLPOP. */
typedef struct reserve_call {
    jq_worker *w;
    int slots;
    int waited;
} reserve_call;

/* Slots neither running a handler nor claimed by a reserve in flight. */
static int free_slots(const jq_worker *w) {
    int n = w->opts.concurrency - (w->in_flight - w->acking) - w->claimed;
    return n > w->opts.batch ? w->opts.batch : n;
}

static void on_reserved(jq_aclient *c, int status, jq_job *jobs, size_t n, int64_t next_ms,
                        void *arg) {
    reserve_call *r = arg;
    jq_worker *w = r->w;
    w->reserving--;
    w->claimed -= r->slots;
    if (r->waited)
        w->waiting = w->wait_reserves = 0;
    free(r);
    if (w->stopping) {
        /* Reserved while the stop began: hand them straight back, last first, since each
         * release goes to the front of its line: the batch keeps its order there. */
        for (size_t i = n; i-- > 0;) {
            if (jq_arelease(w->c, w->queue, &jobs[i], on_stop_release, w) == 0) {
                w->releases++;
                w->stats.released++;
            }
            jq_job_clear(&jobs[i]);
        }
        maybe_stopped(w);
        return;
    }
    if (status != 0) {
        retry_later(w);
        return;
    }
    for (size_t i = 0; i < n; i++)
        task_start(w, &jobs[i]);
    if (n > 0) {
        pump(w);
        return;
    }
    if (w->reserving > 0)
        return; /* the other reserve decides whether to wait */
    int64_t wait = next_ms >= 0 && next_ms + 1 < WAIT_MAX_MS ? next_ms + 1 : WAIT_MAX_MS;
    int slots = free_slots(w);
    if (slots > 0) {
        /* Wait and reserve in one go: the reserve runs in Redis the moment the wait ends. */
        reserve_call *next = sd_xmalloc(sizeof *next);
        *next = (reserve_call){w, slots, 1};
        if (jq_await_reserve(w->c, w->queue, wait, slots, w->opts.visibility_ms, on_reserved,
                             next) == 0) {
            w->waiting = w->wait_reserves = 1;
            w->reserving++;
            w->claimed += slots;
            w->stats.reserve_calls++;
            return;
        }
        free(next);
    } else if (jq_await(w->c, w->queue, wait, on_woken, w) == 0) {
        w->waiting = 1;
        return;
    }
    retry_later(w);
}

/* Keeps up to RESERVES_MAX reserves in flight while slots are free, each for the slots no
 * other reserve has claimed: with one, a worker starts at most `batch` jobs per round trip
 * plus loop iteration; with two, the next batch is on its way while the last one starts. */
static void pump(jq_worker *w) {
    while (!w->stopping && !w->waiting && !w->retrying && w->reserving < RESERVES_MAX) {
        int slots = free_slots(w);
        if (slots <= 0)
            return;
        reserve_call *r = sd_xmalloc(sizeof *r);
        *r = (reserve_call){w, slots, 0};
        if (jq_areserve(w->c, w->queue, slots, w->opts.visibility_ms, on_reserved, r) != 0) {
            free(r);
            retry_later(w);
            return;
        }
        w->reserving++;
        w->claimed += slots;
        w->stats.reserve_calls++;
    }
}

/* ---- Life of the worker --------------------------------------------------------------------- */

void jq_worker_opts_default(jq_worker_opts *o) {
    memset(o, 0, sizeof *o);
    o->concurrency = 1;
    o->visibility_ms = 30000;
    o->batch = 100;
}

int jq_worker_new(uv_loop_t *loop, const sd_redis_url *url, const jq_config *cfg,
                  const jq_worker_opts *opts, jq_worker **out, char *err, size_t errlen) {
    jq_config def;
    if (!cfg) {
        jq_config_default(&def);
        cfg = &def;
    }
    const char *bad = NULL;
    if (!opts->queue || !jq_queue_name_valid(opts->queue))
        bad = "invalid queue name";
    else if (!opts->handler)
        bad = "no handler";
    else if (opts->concurrency < 1 || opts->concurrency > 10000)
        bad = "concurrency must be 1 to 10000";
    else if (opts->batch < 1 || opts->batch > 1000)
        bad = "batch must be 1 to 1000";
    else if (opts->job_timeout_ms < 0)
        bad = "job timeout must be 0 (none) or positive";
    else if (opts->visibility_ms > 24LL * 3600 * 1000)
        bad = "visibility timeout must be at most 24 h";
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        return JQ_EINVAL;
    }
    if (opts->visibility_ms < 3LL * cfg->timeout_ms) {
        snprintf(err, errlen,
                 "visibility timeout %lld ms is too short: heartbeats run every third of it and "
                 "each may take up to the Redis deadline (%d ms), so it must be at least %lld ms "
                 "or a running job could be handed to a second worker",
                 (long long)opts->visibility_ms, cfg->timeout_ms, 3LL * cfg->timeout_ms);
        return JQ_EINVAL;
    }
    jq_worker *w = sd_xcalloc(1, sizeof *w);
    int rc = jq_aclient_new(loop, url, cfg, &w->c);
    if (rc != 0) {
        snprintf(err, errlen, "%s", jq_strerror(rc));
        free(w);
        return rc;
    }
    w->loop = loop;
    w->opts = *opts;
    w->max_result = cfg->max_result;
    snprintf(w->queue, sizeof w->queue, "%s", opts->queue);
    w->opts.queue = w->queue;
    uv_timer_init(loop, &w->retry);
    uv_timer_init(loop, &w->grace);
    uv_timer_init(loop, &w->flush);
    w->retry.data = w;
    w->grace.data = w;
    w->flush.data = w;
    *out = w;
    return 0;
}

int jq_worker_start(jq_worker *w) {
    if (w->stopping)
        return SD_ECLOSED;
    /* Reserving begins from the loop, so no handler runs inside this call. */
    w->retrying = 1;
    uv_timer_start(&w->retry, on_retry, 0, 0);
    return 0;
}

static void on_worker_handle_closed(uv_handle_t *h) {
    jq_worker *w = h->data;
    if (--w->open_handles == 0 && w->stop_cb)
        w->stop_cb(w, w->stop_arg);
}

static void maybe_stopped(jq_worker *w) {
    if (!w->stopping || w->stopped || w->in_flight > 0 || w->reserving || w->waiting ||
        w->releases > 0)
        return;
    w->stopped = 1;
    w->open_handles = 3;
    uv_close((uv_handle_t *)&w->retry, on_worker_handle_closed);
    uv_close((uv_handle_t *)&w->grace, on_worker_handle_closed);
    uv_close((uv_handle_t *)&w->flush, on_worker_handle_closed);
}

static void on_grace_over(uv_timer_t *h) {
    jq_worker *w = h->data;
    for (jq_task *t = w->tasks; t; t = t->next)
        task_stop(t, SD_ECLOSED);
}

void jq_worker_stop(jq_worker *w, int64_t grace_ms, jq_worker_stop_cb *cb, void *arg) {
    if (w->stopping)
        return;
    w->stopping = 1;
    w->stop_cb = cb;
    w->stop_arg = arg;
    uv_timer_stop(&w->retry);
    w->retrying = 0;
    uv_timer_start(&w->grace, on_grace_over, (uint64_t)(grace_ms > 0 ? grace_ms : 0), 0);
    if (w->waiting && w->wait_reserves) {
        /* A wait with its reserve behind it must not be cut off: Redis may have run the
         * reserve already, and jobs whose answer is lost would stay RESERVED until their
         * leases expire (the delivery counted). A wake token ends the wait at once (or, if
         * another worker's wait takes it, the wait ends within WAIT_MAX_MS), and on_reserved
         * releases whatever it reserved. */
        jq__awake(w->c, w->queue);
    } else {
        /* A plain BLPOP would hold the stop for up to WAIT_MAX_MS: close the connection it
         * waits on. Its callback (on_woken) runs from inside this with SD_ECLOSED and only
         * clears the flag; the stop callback itself runs later, from the handles' close
         * callbacks. */
        jq_aclient_close_waiter(w->c);
    }
    maybe_stopped(w);
}

void jq_worker_free(jq_worker *w) {
    if (!w)
        return;
    assert(w->stopped);
    jq_aclient_free(w->c);
    free(w->acks);
    free(w);
}

jq_worker_stats jq_worker_get_stats(const jq_worker *w) {
    jq_worker_stats s = w->stats;
    s.running = w->in_flight;
    s.reserving = w->reserving;
    return s;
}
