/*
 * limiter.c - the asynchronous limiter (rl_limiter): checks from many callers on one libuv loop,
 * coalesced into batches on one Redis connection.
 *
 * Why batch: every script call costs Redis about 15 us of CPU before the script does any work,
 * so one call per check tops out near 60k checks/s on one Redis core; a call that decides 16 to
 * 64 checks pays that once (DESIGN.md, "Measured facts"). Batching adds no waiting: a check
 * joins the queue, and the queue is flushed at the end of the same loop iteration (a uv_check
 * handle after I/O callbacks, a uv_prepare handle after timers), as one call per max_batch
 * checks while fewer than max_calls calls are in flight, written to the socket there and then
 * (sd_aredis_flush) rather than at the loop's next poll. Under load, checks that arrive while
 * the calls are in flight wait for the next reply and leave together: the batch grows with the
 * load, as in group commit.
 *
 * Redis Cluster: one script call may only name keys of one hash slot, and each check's keys
 * share one (its hash tag, rl_config_key). When the connection routes to a cluster
 * (sd_aredis_is_cluster, known once the connection first reports up: detection is part of its
 * handshake), each slot is a lane of its own: the batching above runs per slot, a
 * call taking the queued checks of one slot while no other call of that slot is in flight, and
 * the calls of one flush leave together (the connection pipelines each master's calls on its
 * socket). The lanes overlap one another, which is what max_calls gives a single Redis, so one
 * call per lane lets each lane's next batch grow while its call is out (two per lane made
 * smaller batches and fewer decisions/s, README "Redis Cluster"). Without batching (max_batch
 * 1) a lane keeps up to max_calls calls of one check in flight, as a single Redis does. A slot
 * whose call is out holds back no other slot: a slow master delays only its own checks. Keys spread
 * over many slots make calls of one check each; cfg->tags gathers the keys under N shared tags, N
 * lanes (README, "Redis Cluster", for the trade-off). On a single Redis the connection is the one
 * lane.
 *
 * Deadlines: each check's deadline counts from rl_limiter_check(). Checks still queued when
 * their deadline passes (all calls busy on a slow Redis, or a loop that was blocked), and the
 * checks of a call in flight at its oldest check's deadline, are answered as late (guard.c),
 * from a timer or before the next batch is formed. So every callback runs within the deadline,
 * give or take the loop's own latency. A call in flight stays in flight until its reply or
 * reply_timeout_ms: its reply reconciles the checks answered late (a refund when Redis charged
 * one the client was refused). Only calls that were sent count for the circuit breaker, and only
 * when lost or unanswered: a check that expired in the queue says nothing about Redis.
 *
 * Presence: without cfg->instances, a timer refreshes this limiter's member of the live set
 * every second (rl-presence.lua), whose size is N for the local fallback. The others learn of a
 * new member only at their next refresh, so a limiter that has just joined is not yet in their
 * N: if it granted locally now, the fleet's grants would add up to more than the allowance (four
 * gateways started together see N = 1, 2, 3, 4 and grant 1 + 1/2 + 1/3 + 1/4 of it). So a limiter
 * takes the count as its N only once it has been in the set for RL_PRESENCE_TTL_MS without a
 * gap: by then every live gateway has refreshed since it joined (they refresh every
 * RL_PRESENCE_EVERY_MS, and one silent for the TTL is no longer live) and counts it, and its own
 * count includes every gateway that has matured in turn. Until then N is unknown and the local
 * fallback grants nothing (guard.c). When Redis is back, what the local fallback admitted is
 * charged to it from flush() (clamped).
 *
 * Callbacks never run from inside rl_limiter_check() or rl_limiter_free() (ratelimit.h). An
 * answer decided on the spot (a cost above a quota, the deny cache, an open breaker, a
 * disconnected Redis, a limiter closing) goes into the ready array with its decision, and the
 * loop delivers the whole array in one go: from the uv_check handle after I/O callbacks, or from
 * a uv_idle handle, which is active only while the array is not empty and keeps the loop from
 * blocking in poll meanwhile. One handle for any number of answers, and no allocation once the
 * array has grown to the load: the array being delivered and the one filling up are swapped.
 * Answers Redis decided are delivered straight from the reply callback, already on the loop.
 *
 * Lifecycle of a check:
 *
 *   rl_limiter_check -> [cost above a quota | deny cache | breaker open | disconnected]
 *                    |      -> ready -> (loop: idle or check handle) -> cb
 *                    -> queue -> batch call -> reply -> cb
 *                         |               \-> error or deadline -> fallback -> cb
 *                         \-> deadline while queued -> fallback -> cb
 *   rl_limiter_free  -> queued and in-flight checks -> fallback (SD_ECLOSED) -> ready
 *                    -> (loop: the last handle's close callback) -> cb
 */
#include "ratelimit.h"
#include "rl_internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd.h"

static void on_idle(uv_idle_t *h);

typedef struct rl_check {
    struct rl_check *next;
    rl_check_cb *cb;
    void *udata;
    uint64_t start_ns, deadline_ns, hash;
    long long cost;
    int slot;     /* its keys' hash slot (on a cluster; 0 on a single Redis) */
    int answered; /* late: its answer went out before its reply came */
    int given;    /* the answer's allowed, when answered */
    char cost_text[24];
    size_t cost_len;
    const char *key;                 /* the client's key, in keys[] after the Redis keys */
    size_t key_len[RL_MAX_POLICIES]; /* the Redis keys, one per policy, in keys[] */
    char keys[];
} rl_check;

/* An answer decided without waiting, to be delivered from the loop. */
typedef struct rl_answer {
    rl_check_cb *cb;
    void *udata;
    rl_decision d;
} rl_answer;

typedef struct rl_batch {
    rl_limiter *l;
    int lane;                     /* its checks' slot on a cluster, 0 on a single Redis */
    struct rl_batch *prev, *next; /* the calls in flight */
    uint64_t deadline_ns;         /* its oldest check's: the checks are answered late then */
    int answered;                 /* they were */
    size_t n;
    rl_check *checks[];
} rl_batch;

struct rl_limiter {
    uv_loop_t *loop;
    rl_config cfg;
    rl_policy_args args;
    rl_guard guard;
    sd_aredis *redis;
    int cluster;           /* the connection routes to a Redis Cluster: a lane per slot */
    int cluster_up;        /* on a cluster: what the state callback last said */
    rl_check *head, *tail; /* queued checks, oldest first */
    size_t queued;
    uint32_t *calls;  /* script calls in flight per lane (16384 lanes on a cluster, else 1) */
    uint32_t *taking; /* on a cluster, while send_lanes() runs: checks taken per slot */
    rl_batch *flying; /* those calls, kept until their reply or reply_timeout_ms */
    uv_prepare_t prepare;
    uv_check_t check;
    uv_timer_t expiry; /* fires at the oldest queued check's deadline */
    /* Answers waiting for the loop (see the top of the file). The limiter owns both arrays;
     * while deliver() runs, the one it delivers belongs to it and spare is NULL. */
    rl_answer *ready, *spare;
    size_t nready, ready_cap, spare_cap;
    uv_idle_t idle;      /* active while nready > 0 */
    uv_timer_t presence; /* refreshes this gateway's presence, for N (guard.c) */
    char presence_key[80], presence_id[48];
    uint64_t present_since_ns; /* first presence reply of the current run without gaps, 0: none */
    uint64_t present_last_ns;  /* the latest presence reply */
    int closing;
    int handles_open;
};

/* Whether Redis can be asked. On a cluster, the state callback's last word: asking the
 * connection looks at every master of the slot map, too much for every check. */
static int redis_up(const rl_limiter *l) {
    return l->cluster ? l->cluster_up : sd_aredis_is_connected(l->redis);
}

/* Calls a cluster lane may have in flight: one while batching (the lane's next batch grows
 * while its call is out, the top of the file), max_calls without batching (max_batch 1), where
 * there is no batch to grow and a lane of one call at a time would serve one check per round
 * trip. */
static uint32_t lane_calls(const rl_limiter *l) {
    return l->cfg.max_batch == 1 ? (uint32_t)l->cfg.max_calls : 1;
}

/* Returns the next free slot of the ready array, growing it; ready_commit() fills in the rest. */
static rl_answer *ready_slot(rl_limiter *l) {
    if (l->nready == l->ready_cap) {
        l->ready_cap = l->ready_cap ? 2 * l->ready_cap : 64;
        l->ready = sd_xrealloc(l->ready, l->ready_cap * sizeof(*l->ready));
    }
    return &l->ready[l->nready];
}

/* Queues the decision written into ready_slot() for delivery from the loop. */
static void ready_commit(rl_limiter *l, rl_check_cb *cb, void *udata) {
    rl_answer *a = &l->ready[l->nready++];
    a->cb = cb;
    a->udata = udata;
    rl_guard_count(&l->guard, &a->d);
    if (l->nready == 1 && !l->closing) {
        uv_idle_start(&l->idle, on_idle);
    }
}

/* Answers delivered at most per call of deliver(), counted in whole rounds. */
#define DELIVER_BUDGET 1024

/* Delivers the ready answers, in rounds: each round takes the array as it is, and answers its
 * callbacks add go to the other array, for the next round. Rounds stop after DELIVER_BUDGET
 * answers, so that a caller that checks again from every callback cannot keep the loop here;
 * the rest waits for the next iteration. A callback may free the limiter: its memory lasts
 * until the close callbacks, and what is still ready then is delivered there. */
static void deliver(rl_limiter *l) {
    size_t delivered = 0;
    while (l->nready > 0 && delivered < DELIVER_BUDGET) {
        rl_answer *a = l->ready;
        size_t n = l->nready, cap = l->ready_cap;
        l->ready = l->spare;
        l->ready_cap = l->spare_cap;
        l->nready = 0;
        l->spare = NULL;
        l->spare_cap = 0;
        for (size_t i = 0; i < n; i++) {
            a[i].cb(&a[i].d, a[i].udata);
        }
        delivered += n;
        if (!l->spare) {
            l->spare = a;
            l->spare_cap = cap;
        } else {
            free(a);
        }
    }
    if (l->nready == 0 && !l->closing) {
        uv_idle_stop(&l->idle);
    }
}

static void on_idle(uv_idle_t *h) {
    deliver(h->data);
}

/* Answers a check, from the loop; once the limiter is closing, through the ready array. The
 * check stays the caller's to free. */
static void answer(rl_limiter *l, rl_check *c, const rl_decision *d) {
    c->answered = 1;
    c->given = d->allowed;
    if (l->closing) {
        *ready_slot(l) = (rl_answer){.d = *d};
        ready_commit(l, c->cb, c->udata);
    } else {
        rl_guard_count(&l->guard, d);
        c->cb(d, c->udata);
    }
}

/* Answers a check Redis did not decide (guard.c, step 3): in doubt when it was sent or its
 * deadline passed, else the fallback's. */
static void answer_without(rl_limiter *l, rl_check *c, int error, int in_doubt) {
    rl_decision d;
    rl_guard_after(&l->guard, c->key, c->hash, c->cost, c->start_ns, error, in_doubt, sd_now_ns(),
                   &d);
    answer(l, c, &d);
}

static rl_check *queue_pop(rl_limiter *l) {
    rl_check *c = l->head;
    l->head = c->next;
    if (!l->head) {
        l->tail = NULL;
    }
    l->queued--;
    return c;
}

/* Puts a check back into the queue, before the first check with a later deadline: the queue
 * stays in deadline order (expire_queued). */
static void queue_insert(rl_limiter *l, rl_check *c) {
    rl_check **link = &l->head, *prev = NULL;
    while (*link && (*link)->deadline_ns <= c->deadline_ns) {
        prev = *link;
        link = &prev->next;
    }
    c->next = *link;
    *link = c;
    if (c->next == NULL) {
        l->tail = c;
    }
    l->queued++;
}

/* Answers every queued check with the fallback (Redis was not asked). */
static void queue_fail(rl_limiter *l, int error) {
    while (l->head) {
        rl_check *c = queue_pop(l);
        answer_without(l, c, error, 0);
        free(c);
    }
}

/* A refund in flight: whose key it gives units back to. */
typedef struct rl_refund {
    rl_limiter *l;
    uint64_t hash;
} rl_refund;

/* Once the refund has run, a denial of its key that this limiter cached may predate it (a call
 * in flight when the refund was sent): the deny cache forgets it, so that the units given back
 * are not hidden until its retry-after. */
static void on_refund(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    rl_refund *f = privdata;
    if (status == 0 && reply->type == REDIS_REPLY_ERROR) {
        sd_log(SD_LOG_WARN, "ratelimit.refund_error", "error=\"%.200s\"", reply->str);
    } else if (status == 0 && !f->l->closing) {
        rl_guard_deny_forget(&f->l->guard, f->hash);
    }
    free(f);
}

/* Gives back what Redis charged for a check the client was refused (rl-refund.lua). */
static void refund_send(rl_limiter *l, rl_check *c) {
    size_t P = l->cfg.npolicies;
    const char *argv[RL_MAX_POLICIES + RL_REFUND_ARGS];
    size_t lens[RL_MAX_POLICIES + RL_REFUND_ARGS];
    char text[RL_REFUND_ARGS][24];
    const char *key = c->keys;
    for (size_t j = 0; j < P; j++) {
        argv[j] = key;
        lens[j] = c->key_len[j];
        key += c->key_len[j] + 1;
    }
    /* Redis charged the check after it started: at most this long ago (rounded up). */
    long long within_ms = (long long)((sd_now_ns() - c->start_ns) / 1000000) + 1;
    int n = rl_refund_argv(&l->cfg, c->cost, within_ms, text, argv + P, lens + P);
    rl_refund *f = sd_xmalloc(sizeof(*f));
    f->l = l;
    f->hash = c->hash;
    if (sd_aredis_script(l->redis, rl_refund_script(), on_refund, f, l->cfg.reply_timeout_ms,
                         (int)P, (int)P + n, argv, lens) < 0) {
        free(f);
        l->guard.stats.in_doubt++; /* the charge stays: the quota shrinks, never grows */
    }
}

static void flying_unlink(rl_limiter *l, rl_batch *b) {
    if (b->prev) {
        b->prev->next = b->next;
    } else {
        l->flying = b->next;
    }
    if (b->next) {
        b->next->prev = b->prev;
    }
}

/* Whether a reply is a Redis Cluster redirection (MOVED, ASK) or a request to retry (TRYAGAIN,
 * CLUSTERDOWN), which the connection passes on once it has followed too many: the script did
 * not run. */
static int redirected(const redisReply *reply) {
    static const char *const kinds[] = {"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"};
    if (reply->type != REDIS_REPLY_ERROR) {
        return 0;
    }
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (strncmp(reply->str, kinds[i], strlen(kinds[i])) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * A call's reply, its failure, or its reply_timeout_ms passing. Checks not answered yet get
 * Redis's decision (or the guard's answer); checks already answered late are reconciled: a
 * refund when Redis charged a check that was refused.
 */
static void on_reply(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    rl_batch *b = privdata;
    rl_limiter *l = b->l;
    uint64_t now = sd_now_ns();
    l->calls[b->lane]--;
    flying_unlink(l, b);
    if (status == 0 && !l->closing && redirected(reply)) {
        /* A slot on the move (resharding): the checks not answered yet go back into the queue
         * and leave with the next flush, or are answered late at their deadline. Those already
         * answered late were refused, and Redis did not charge them: nothing to reconcile. */
        sd_log(SD_LOG_WARN, "ratelimit.redirected", "error=\"%.200s\"", reply->str);
        rl_guard_call_done(&l->guard, 0, now);
        for (size_t i = 0; i < b->n; i++) {
            if (b->checks[i]->answered) {
                free(b->checks[i]);
            } else {
                queue_insert(l, b->checks[i]);
            }
        }
        free(b);
        return;
    }
    int rc = status;
    if (rc == 0 && reply->type != REDIS_REPLY_ARRAY) {
        rc = SD_EREDIS;
        if (reply->type == REDIS_REPLY_ERROR) {
            sd_log(SD_LOG_WARN, "ratelimit.script_error", "error=\"%.200s\"", reply->str);
        }
    }
    rl_guard_call_done(&l->guard, rc, now);
    for (size_t i = 0; i < b->n; i++) {
        rl_check *c = b->checks[i];
        rl_decision d;
        int crc = rc;
        if (crc == 0 && rl_decision_from_reply(&l->cfg, reply, i, c->cost, &d) != 0) {
            crc = SD_EREDIS;
        }
        if (crc < 0 && crc != SD_EREDIS) {
            /* Sent, never answered: Redis may still have run the script (README, "Not
             * guaranteed"); counted as charged. */
            l->guard.stats.in_doubt++;
        }
        if (c->answered) {
            rl_decision given = {.allowed = c->given};
            if (crc == 0 && rl_guard_reconcile(&l->guard, &given, &d, c->cost) && !l->closing) {
                refund_send(l, c);
            }
        } else if (crc == 0) {
            rl_guard_after(&l->guard, c->key, c->hash, c->cost, c->start_ns, 0, 0, now, &d);
            answer(l, c, &d);
        } else {
            /* Only a timeout leaves Redis able to run the call later: a lost connection means
             * it ran before or never will, and the fallback answers (README, the bound). */
            answer_without(l, c, crc, crc == SD_ETIMEDOUT);
        }
        free(c);
    }
    free(b);
}

/* A batch of room for n checks, none in it yet. */
static rl_batch *batch_alloc(rl_limiter *l, size_t n, int lane) {
    rl_batch *b = sd_xmalloc(sizeof(*b) + n * sizeof(rl_check *));
    b->l = l;
    b->lane = lane;
    b->prev = b->next = NULL;
    b->answered = 0;
    b->n = 0;
    return b;
}

/* On a single Redis: takes up to max_batch checks off the front of the queue.
 *
 * The queue is not spread over the free call slots. Calls sent together reach Redis together,
 * and Redis answers everything it read in one event-loop iteration with one write, so two calls
 * of 25 come back together like one of 50 and only cost a second call's overhead (one call made
 * 4-15% more decisions/s in the closed-loop benchmark, README "Speed"). The other slot is for
 * checks that arrive while this call is out. */
static rl_batch *batch_take(rl_limiter *l) {
    size_t max = (size_t)l->cfg.max_batch;
    rl_batch *b = batch_alloc(l, max < l->queued ? max : l->queued, 0);
    while (l->head && b->n < max) {
        b->checks[b->n++] = queue_pop(l);
    }
    return b;
}

/* A check taken by send_lanes(), and its place in the queue, to sort the taken checks by slot
 * and keep the queue's order within one. */
typedef struct rl_taken {
    rl_check *c;
    size_t index;
} rl_taken;

static int taken_cmp(const void *a, const void *b) {
    const rl_taken *x = a, *y = b;
    if (x->c->slot != y->c->slot) {
        return x->c->slot < y->c->slot ? -1 : 1;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Sends one batch. Returns 0, or a negative code after answering its checks by fallback. */
static int batch_send(rl_limiter *l, rl_batch *b, uint64_t now) {
    size_t P = l->cfg.npolicies;
    size_t argc = b->n * P + l->args.count + b->n;
    const char **argv = sd_xmalloc(argc * sizeof(*argv));
    size_t *lens = sd_xmalloc(argc * sizeof(*lens));
    size_t k = 0;
    uint64_t deadline = b->checks[0]->deadline_ns;
    for (size_t i = 0; i < b->n; i++) {
        const char *key = b->checks[i]->keys;
        for (size_t j = 0; j < P; j++) {
            argv[k] = key;
            lens[k++] = b->checks[i]->key_len[j];
            key += b->checks[i]->key_len[j] + 1;
        }
        if (b->checks[i]->deadline_ns < deadline) {
            deadline = b->checks[i]->deadline_ns;
        }
    }
    for (size_t i = 0; i < l->args.count; i++) {
        argv[k] = l->args.argv[i];
        lens[k++] = l->args.len[i];
    }
    for (size_t i = 0; i < b->n; i++) {
        argv[k] = b->checks[i]->cost_text;
        lens[k++] = b->checks[i]->cost_len;
    }
    /* The checks are answered at their deadline (expire_flying), but the call waits longer for
     * its reply, to reconcile it: only a reply later than reply_timeout_ms is a failure.
     * flush() has answered every check with less than half a millisecond left. */
    assert(deadline > now + 500000);
    b->deadline_ns = deadline;
    int timeout_ms =
        l->cfg.reply_timeout_ms > l->cfg.deadline_ms ? l->cfg.reply_timeout_ms : l->cfg.deadline_ms;
    int rc = sd_aredis_script(l->redis, rl_script(l->cfg.algorithm), on_reply, b, timeout_ms,
                              (int)(b->n * P), (int)argc, argv, lens);
    free(argv);
    free(lens);
    if (rc == 0) {
        l->calls[b->lane]++;
        b->next = l->flying;
        if (l->flying) {
            l->flying->prev = b;
        }
        l->flying = b;
        l->guard.stats.script_calls++;
        l->guard.stats.batched_checks += b->n;
        return 0;
    }
    /* Not accepted: the connection went down since flush() looked. That is Redis failing (and
     * it ends a half-open probe, which must not stay pending). */
    rl_guard_call_done(&l->guard, rc, now);
    for (size_t i = 0; i < b->n; i++) {
        answer_without(l, b->checks[i], rc, 0);
        free(b->checks[i]);
    }
    free(b);
    return rc;
}

/*
 * On a cluster: one pass over the queue takes, for every slot with no call in flight, up to
 * max_batch of its checks, in queue order; the others stay queued, in order. Then one call per
 * slot, each after the breaker admits it (a refusal answers its checks by fallback, as
 * queue_fail does). The fallback's callbacks may free the limiter: the calls not sent by then
 * answer their checks the same way (SD_ECLOSED).
 */
static void send_lanes(rl_limiter *l, uint64_t now) {
    size_t max = (size_t)l->cfg.max_batch, n = 0, index = 0;
    uint32_t cap = lane_calls(l);
    rl_taken *taken = sd_xmalloc(l->queued * sizeof(*taken));
    rl_check **link = &l->head, *prev = NULL;
    while (*link) {
        rl_check *c = *link;
        uint32_t flying = l->calls[c->slot];
        if (flying < cap && l->taking[c->slot] < (cap - flying) * max) {
            l->taking[c->slot]++;
            *link = c->next;
            if (l->tail == c) {
                l->tail = prev;
            }
            l->queued--;
            taken[n++] = (rl_taken){c, index};
        } else {
            prev = c;
            link = &c->next;
        }
        index++;
    }
    qsort(taken, n, sizeof(*taken), taken_cmp);
    for (size_t i = 0, end; i < n; i = end) {
        int slot = taken[i].c->slot;
        for (end = i + 1; end < n && taken[end].c->slot == slot; end++) {
        }
        if (end - i > max) {
            end = i + max; /* without batching, a lane sends several calls of one check */
        } else {
            l->taking[slot] = 0;
        }
        rl_batch *b = batch_alloc(l, end - i, slot);
        for (size_t j = i; j < end; j++) {
            b->checks[b->n++] = taken[j].c;
        }
        int refused = l->closing ? SD_ECLOSED : !rl_breaker_admit(&l->guard, now) ? RL_EBREAKER : 0;
        if (refused == 0) {
            batch_send(l, b, now);
            continue;
        }
        for (size_t j = 0; j < b->n; j++) {
            answer_without(l, b->checks[j], refused, 0);
            free(b->checks[j]);
        }
        free(b);
    }
    free(taken);
}

static void flush(rl_limiter *l);

/* Answers the queued checks with less than half a millisecond left: too late to send (the
 * connection's deadlines are whole milliseconds). Redis was not asked, so the breaker does not
 * hear of them. Deadlines grow along the queue (every check gets the same deadline_ms). */
static void expire_queued(rl_limiter *l, uint64_t now) {
    while (l->head && l->head->deadline_ns <= now + 500000) {
        rl_check *c = queue_pop(l);
        answer_without(l, c, SD_ETIMEDOUT, 1);
        free(c);
    }
}

/* Answers the checks of calls in flight whose deadline has passed: late, in doubt. The call
 * stays in flight: its reply reconciles them (on_reply). */
static void expire_flying(rl_limiter *l, uint64_t now) {
    for (rl_batch *b = l->flying; b; b = b->next) {
        if (!b->answered && b->deadline_ns <= now) {
            b->answered = 1;
            for (size_t i = 0; i < b->n; i++) {
                answer_without(l, b->checks[i], SD_ETIMEDOUT, 1);
            }
        }
    }
}

/* The next deadline to act on: the oldest queued check's or a call's not yet answered. */
static uint64_t next_deadline(rl_limiter *l) {
    uint64_t d = l->head ? l->head->deadline_ns : UINT64_MAX;
    for (rl_batch *b = l->flying; b; b = b->next) {
        if (!b->answered && b->deadline_ns < d) {
            d = b->deadline_ns;
        }
    }
    return d;
}

static void on_expiry(uv_timer_t *t) {
    rl_limiter *l = t->data;
    /* Replies already in the socket answer their checks first: after a loop held up, timers
     * run before the loop reads, and those checks would be answered as late (sd_aredis_read). */
    sd_aredis_read(l->redis);
    if (l->closing) {
        return;
    }
    uint64_t now = sd_now_ns();
    expire_flying(l, now);
    expire_queued(l, now);
    flush(l);
}

static void on_charge(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    rl_limiter *l = privdata;
    if (status == 0) {
        l->guard.stats.recovery_charged += (uint64_t)rl_charge_counted(&l->cfg, reply);
    }
}

/* Redis is back: charge what the local fallback admitted meanwhile, one call per key, each
 * unit only if it fits (clamped). A charge that fails is dropped (README, the bound). */
static void charge_pending(rl_limiter *l) {
    char *key;
    long long units;
    while (rl_guard_pending_pop(&l->guard, &key, &units)) {
        rl_charge_args a;
        rl_charge_args_init(&a, &l->cfg, &l->args, key, units);
        sd_aredis_script(l->redis, rl_script(l->cfg.algorithm), on_charge, l,
                         l->cfg.reply_timeout_ms, a.nkeys, a.argc, a.argv, a.lens);
        rl_charge_args_clear(&a);
        free(key);
    }
}

static void flush(rl_limiter *l) {
    uint64_t now = sd_now_ns();
    if (l->guard.npending > 0 && !l->closing && l->guard.breaker == RL_BREAKER_CLOSED &&
        redis_up(l)) {
        charge_pending(l);
    }
    while (l->head && (l->cluster || l->calls[0] < (uint32_t)l->cfg.max_calls)) {
        /* A loop blocked past the deadlines gets here before the expiry timer. */
        expire_queued(l, now);
        if (!l->head) {
            break;
        }
        if (!redis_up(l)) {
            queue_fail(l, SD_EDISCONNECTED);
            break;
        }
        if (l->cluster) {
            send_lanes(l, now); /* every lane that could send has sent */
            break;
        }
        if (rl_breaker_admit(&l->guard, now)) {
            batch_send(l, batch_take(l), now);
        } else {
            queue_fail(l, RL_EBREAKER);
            break;
        }
        now = sd_now_ns();
    }
    uint64_t d = next_deadline(l);
    if (d != UINT64_MAX) {
        uv_timer_start(&l->expiry, on_expiry, d > now ? (d - now + 999999) / 1000000 : 0, 0);
    } else {
        uv_timer_stop(&l->expiry);
    }
    /* Write the batches now rather than at the next poll. Not when a callback above (a check
     * answered by the fallback) freed the limiter: its connection is gone, and the limiter's
     * memory lasts only until its handles close. Last, because a failed write runs callbacks. */
    if (!l->closing) {
        sd_aredis_flush(l->redis);
    }
}

static void on_prepare(uv_prepare_t *h) {
    flush(h->data);
}

static void on_check(uv_check_t *h) {
    rl_limiter *l = h->data;
    deliver(l);
    if (!l->closing) {
        flush(l);
    }
}

static void on_presence_reply(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    rl_limiter *l = privdata;
    if (status != 0 || reply->type != REDIS_REPLY_INTEGER || reply->integer <= 0) {
        return;
    }
    uint64_t now = sd_now_ns(), ttl_ns = (uint64_t)RL_PRESENCE_TTL_MS * 1000000;
    /* A gap of a TTL (Redis away, or this loop stalled) may have dropped this gateway from the
     * others' counts: it joins anew. */
    if (l->present_since_ns == 0 || now - l->present_last_ns >= ttl_ns) {
        l->present_since_ns = now;
        l->guard.live = 0;
    }
    l->present_last_ns = now;
    /* The count is N only once every other live gateway has refreshed since this one joined
     * (the top of this file). */
    if (now - l->present_since_ns >= ttl_ns) {
        l->guard.live = (int)reply->integer;
    }
}

/* Says this gateway is alive and learns how many are (rl-presence.lua). */
static void presence_send(rl_limiter *l) {
    if (l->closing || !redis_up(l)) {
        return;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%d", RL_PRESENCE_TTL_MS);
    const char *argv[3] = {l->presence_key, l->presence_id, ttl};
    sd_aredis_script(l->redis, rl_presence_script(), on_presence_reply, l, l->cfg.reply_timeout_ms,
                     1, 3, argv, NULL);
}

static void on_presence(uv_timer_t *t) {
    presence_send(t->data);
}

/* The connection found a cluster (its first report of up): from now on each slot is a lane.
 * Nothing was sent before (a connection that was never up accepts no command), so no call is
 * in flight on the single lane; the checks queued meanwhile get their slots. */
static void cluster_detected(rl_limiter *l) {
    assert(l->calls[0] == 0);
    l->cluster = 1;
    free(l->calls);
    l->calls = sd_xcalloc(16384, sizeof(*l->calls));
    l->taking = sd_xcalloc(16384, sizeof(*l->taking));
    for (rl_check *c = l->head; c != NULL; c = c->next) {
        c->slot = sd_redis_key_slot(c->keys, c->key_len[0]);
    }
}

static void on_state(sd_aredis *r, int connected, void *privdata) {
    rl_limiter *l = privdata;
    if (connected && !l->cluster && sd_aredis_is_cluster(r)) {
        cluster_detected(l);
    }
    l->cluster_up = connected;
    if (connected) {
        rl_guard_reconnected(&l->guard);
        presence_send(l);
    }
    sd_log(connected ? SD_LOG_INFO : SD_LOG_WARN, "ratelimit.redis", "connected=%d", connected);
}

int rl_limiter_new(uv_loop_t *loop, const sd_redis_url *url, const rl_config *cfg,
                   rl_limiter **out) {
    int rc = rl_config_check(cfg);
    if (rc < 0) {
        return rc;
    }
    rl_limiter *l = sd_xcalloc(1, sizeof(*l));
    l->loop = loop;
    l->cfg = *cfg;
    rl_policy_args_init(&l->args, &l->cfg);
    rl_guard_init(&l->guard, &l->cfg);
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = cfg->deadline_ms;
    /* Loaded in the connect handshake, on every (re)connect, before the connection is ready. */
    sd_script *scripts[3] = {rl_script(cfg->algorithm), rl_refund_script(), rl_presence_script()};
    opts.scripts = scripts;
    opts.nscripts = 3;
    rc = sd_aredis_new(loop, url, &opts, &l->redis);
    if (rc < 0) {
        rl_guard_clear(&l->guard);
        free(l);
        return rc;
    }
    /* Not known yet (on_state, cluster_detected): the connection asks in its handshake. */
    l->calls = sd_xcalloc(1, sizeof(*l->calls));
    sd_aredis_set_state_cb(l->redis, on_state, l);
    uv_prepare_init(loop, &l->prepare);
    uv_check_init(loop, &l->check);
    uv_timer_init(loop, &l->expiry);
    uv_idle_init(loop, &l->idle);
    uv_timer_init(loop, &l->presence);
    l->prepare.data = l->check.data = l->expiry.data = l->idle.data = l->presence.data = l;
    snprintf(l->presence_key, sizeof(l->presence_key), "%sgateways", cfg->prefix);
    snprintf(l->presence_id, sizeof(l->presence_id), "%ld-%llx", (long)getpid(),
             (unsigned long long)(sd_now_ns() ^ (uintptr_t)l));
    if (cfg->instances == 0) {
        uv_timer_start(&l->presence, on_presence, RL_PRESENCE_EVERY_MS, RL_PRESENCE_EVERY_MS);
        uv_unref((uv_handle_t *)&l->presence);
    }
    uv_prepare_start(&l->prepare, on_prepare);
    uv_check_start(&l->check, on_check);
    /* These run every iteration but must not keep the loop alive on their own. */
    uv_unref((uv_handle_t *)&l->prepare);
    uv_unref((uv_handle_t *)&l->check);
    l->handles_open = 5;
    *out = l;
    return 0;
}

int rl_limiter_wait_connected(rl_limiter *l, int timeout_ms) {
    return sd_aredis_wait_connected(l->redis, timeout_ms);
}

int rl_limiter_check(rl_limiter *l, const char *key, long long cost, rl_check_cb *cb, void *udata) {
    if (l->closing) {
        return SD_ECLOSED;
    }
    if (rl_check_args(key, cost) < 0) {
        return RL_EARG;
    }
    rl_guard *g = &l->guard;
    uint64_t now = sd_now_ns();
    size_t keylen = strlen(key);
    uint64_t hash = rl_key_hash(key, keylen);
    /* Answers that need no waiting, delivered from the loop (guard.c, step 1): a cost above a
     * quota, the deny cache, a connection that is down, an open breaker. */
    rl_answer *a = ready_slot(l);
    if (rl_guard_before(g, key, hash, cost, redis_up(l), 0, now, &a->d)) {
        ready_commit(l, cb, udata);
        return 0;
    }
    size_t P = l->cfg.npolicies;
    /* Each Redis key: the prefix, the key with each byte escaped to at most three, the rest. */
    size_t room = P * (3 * keylen + sizeof(l->cfg.prefix) + RL_POLICY_NAME_MAX + 24) + keylen + 1;
    rl_check *c = sd_xmalloc(sizeof(*c) + room);
    c->next = NULL;
    c->cb = cb;
    c->udata = udata;
    c->start_ns = now;
    c->deadline_ns = now + (uint64_t)l->cfg.deadline_ms * 1000000;
    c->hash = hash;
    c->cost = cost;
    c->answered = c->given = 0;
    c->cost_len = rl_cost_format(c->cost_text, cost);
    char *p = c->keys;
    for (size_t i = 0; i < P; i++) {
        int n = rl_config_key(&l->cfg, i, key, p, room - (size_t)(p - c->keys));
        c->key_len[i] = (size_t)n;
        p += n + 1;
    }
    memcpy(p, key, keylen + 1);
    c->key = p;
    c->slot = l->cluster ? sd_redis_key_slot(c->keys, c->key_len[0]) : 0;
    if (l->tail) {
        l->tail->next = c;
    } else {
        l->head = c;
    }
    l->tail = c;
    l->queued++;
    return 0;
}

void rl_limiter_stats(const rl_limiter *l, rl_stats *out) {
    rl_guard_stats(&l->guard, out);
}

const rl_config *rl_limiter_config(const rl_limiter *l) {
    return &l->cfg;
}

static void on_close(uv_handle_t *h) {
    rl_limiter *l = h->data;
    if (--l->handles_open == 0) {
        /* The answers rl_limiter_free() made, and any a callback made while it closed. */
        deliver(l);
        free(l->ready);
        free(l->spare);
        free(l->calls);
        free(l->taking);
        rl_guard_clear(&l->guard);
        free(l);
    }
}

void rl_limiter_free(rl_limiter *l) {
    if (!l || l->closing) {
        return;
    }
    l->closing = 1;
    /* Every answer from here on goes through the ready array, delivered by on_close(). */
    queue_fail(l, SD_ECLOSED);
    /* Calls in flight are answered with SD_ECLOSED from inside this, then by the fallback. */
    sd_aredis_free(l->redis);
    l->redis = NULL;
    uv_close((uv_handle_t *)&l->prepare, on_close);
    uv_close((uv_handle_t *)&l->check, on_close);
    uv_close((uv_handle_t *)&l->expiry, on_close);
    uv_close((uv_handle_t *)&l->idle, on_close);
    uv_close((uv_handle_t *)&l->presence, on_close);
}
