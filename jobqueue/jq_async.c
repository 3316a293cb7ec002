/*
 * jq_async.c - the asynchronous job-queue client of jobqueue.h: the same scripts as the
 * synchronous client (jobqueue.c), sent over sd_aredis on a libuv loop. It holds two
 * connections: one for the scripts, and one that only ever blocks in BLPOP on a queue's wake
 * list, because Redis answers a connection's commands in order and a blocked BLPOP would hold
 * every script queued behind it.
 *
 * Every call follows the callback rule of STYLE.md: when it returns 0 its callback runs
 * exactly once, later (never from inside the call); when it returns an error the callback
 * never runs. Each call carries a small record (acall) to its reply callback; the record is
 * freed there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jq_internal.h"
#include "sd.h"

struct jq_aclient {
    sd_aredis *redis;  /* scripts */
    sd_aredis *waiter; /* BLPOP, and the reserve pipelined behind it (jq_await_reserve) */
    jq_config cfg;
};

/* One call in flight. */
typedef struct acall {
    jq_aclient *c;
    void *cb;
    void *arg;
    int n; /* reserve: the jobs asked for; ack: the items */
} acall;

int jq_aclient_new(uv_loop_t *loop, const sd_redis_url *url, const jq_config *cfg,
                   jq_aclient **out) {
    jq_config def;
    sd_redis_opts opts;
    sd_script *list[JQ_S_COUNT];
    if (jq__connect_opts(&cfg, &def, &opts, list) != 0)
        return JQ_EINVAL;
    jq_aclient *c = sd_xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    int rc = sd_aredis_new(loop, url, &opts, &c->redis);
    if (rc == 0) {
        opts.scripts = NULL;
        opts.nscripts = 0;
        rc = sd_aredis_new(loop, url, &opts, &c->waiter);
    }
    if (rc != 0) {
        sd_aredis_free(c->redis);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int jq_aclient_wait_connected(jq_aclient *c, int timeout_ms) {
    int rc = sd_aredis_wait_connected(c->redis, timeout_ms);
    return rc != 0 || !c->waiter ? rc : sd_aredis_wait_connected(c->waiter, timeout_ms);
}

void jq_aclient_close_waiter(jq_aclient *c) {
    sd_aredis *w = c->waiter;
    c->waiter = NULL;
    sd_aredis_free(w);
}

void jq_aclient_flush(jq_aclient *c) {
    if (c)
        sd_aredis_flush(c->redis);
}

void jq_aclient_free(jq_aclient *c) {
    if (!c)
        return;
    sd_aredis_free(c->redis);
    sd_aredis_free(c->waiter);
    free(c);
}

/* Sends script `which` with the list a (freed here) for the reply callback on_reply. */
static int send_script(jq_aclient *c, int which, jq__args *a, int nkeys, sd_aredis_cb *on_reply,
                       void *cb, void *arg, int n) {
    acall *call = sd_xmalloc(sizeof *call);
    *call = (acall){c, cb, arg, n};
    int rc = sd_aredis_script(c->redis, jq__script(which), on_reply, call, c->cfg.timeout_ms, nkeys,
                              a->n, a->v, a->l);
    jq__args_free(a);
    if (rc != 0)
        free(call);
    return rc;
}

/* The status of a script's reply: its transport status, an error reply, or the code of its
 * first element. */
static int reply_status(const redisReply *reply, int status, size_t min) {
    if (status != 0)
        return status;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < min)
        return SD_EREDIS;
    return 0;
}

/* ---- Enqueue ---------------------------------------------------------------------------- */

static void on_enqueued(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_enqueued_cb *cb = (jq_enqueued_cb *)call->cb;
    jq_enqueued *out = sd_xcalloc((size_t)call->n, sizeof *out);
    int rc = reply_status(reply, status, 1);
    if (rc == 0)
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
    if (rc == 0)
        rc = jq__enqueue_parse(reply, (size_t)call->n, out);
    cb(call->c, rc, out, rc == 0 ? (size_t)call->n : 0, call->arg);
    free(out);
    free(call);
}

int jq_aenqueue_many(jq_aclient *c, const char *queue, const jq_new_job *jobs, size_t n,
                     jq_enqueued_cb *cb, void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__enqueue_args(&c->cfg, &a, jobs, n);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return send_script(c, JQ_S_ENQUEUE, &a, 1, on_enqueued, (void *)cb, arg, (int)n);
}

/* ---- Reserve ---------------------------------------------------------------------------- */

static void on_reserve(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_reserve_cb *cb = (jq_reserve_cb *)call->cb;
    jq_job *jobs = sd_xcalloc((size_t)call->n, sizeof *jobs);
    size_t got = 0;
    int64_t next = -1;
    int rc = reply_status(reply, status, 3);
    if (rc == 0)
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
    if (rc == 0)
        rc = jq__reserve_parse(reply, call->n, jobs, &got, &next);
    cb(call->c, rc, jobs, got, next, call->arg);
    free(jobs);
    free(call);
}

int jq_areserve(jq_aclient *c, const char *queue, int n, int64_t visibility_ms, jq_reserve_cb *cb,
                void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__reserve_args(&a, n, visibility_ms);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return send_script(c, JQ_S_RESERVE, &a, 1, on_reserve, (void *)cb, arg, n);
}

/* ---- Wake -------------------------------------------------------------------------------- */

static void on_wake(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_value_cb *cb = (jq_value_cb *)call->cb;
    int rc = status;
    int64_t woken = 0;
    if (rc == 0 && reply->type == REDIS_REPLY_ERROR)
        rc = SD_EREDIS;
    else if (rc == 0)
        woken = reply->type == REDIS_REPLY_ARRAY;
    cb(call->c, rc, woken, call->arg);
    free(call);
}

int jq_await(jq_aclient *c, const char *queue, int64_t wait_ms, jq_value_cb *cb, void *arg) {
    if (!c->waiter)
        return SD_ECLOSED;
    char key[JQ_QUEUE_MAX + 64];
    if (jq_key_cfg(&c->cfg, queue, ":wake", key, sizeof key) < 0 || wait_ms < 1 ||
        wait_ms > 3600000)
        return JQ_EINVAL;
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (double)wait_ms / 1000.0);
    acall *call = sd_xmalloc(sizeof *call);
    *call = (acall){c, (void *)cb, arg, 0};
    int rc = sd_aredis_command(c->waiter, on_wake, call, (int)wait_ms + c->cfg.timeout_ms,
                               "BLPOP %s %s", key, secs);
    if (rc != 0)
        free(call);
    return rc;
}

/* The wait's own reply: nothing to do, the reserve behind it carries the result. */
static void on_wait_over(sd_aredis *r, redisReply *reply, int status, void *privdata) {}

int jq_await_reserve(jq_aclient *c, const char *queue, int64_t wait_ms, int n,
                     int64_t visibility_ms, jq_reserve_cb *cb, void *arg) {
    if (!c->waiter)
        return SD_ECLOSED;
    char key[JQ_QUEUE_MAX + 64];
    if (jq_key_cfg(&c->cfg, queue, ":wake", key, sizeof key) < 0 || wait_ms < 1 ||
        wait_ms > 3600000)
        return JQ_EINVAL;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__reserve_args(&a, n, visibility_ms);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (double)wait_ms / 1000.0);
    int deadline = (int)wait_ms + c->cfg.timeout_ms;
    rc = sd_aredis_command(c->waiter, on_wait_over, NULL, deadline, "BLPOP %s %s", key, secs);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    /* Pipelined behind the BLPOP on the same connection: Redis answers a connection's commands
     * in order, so it runs this reserve the moment the wait ends, with no round trip to us. */
    acall *call = sd_xmalloc(sizeof *call);
    *call = (acall){c, (void *)cb, arg, n};
    rc = sd_aredis_script(c->waiter, jq__script(JQ_S_RESERVE), on_reserve, call, deadline, 1, a.n,
                          a.v, a.l);
    jq__args_free(&a);
    if (rc != 0)
        free(call); /* the BLPOP alone is harmless: its reply is dropped */
    return rc;
}

int jq__awake(jq_aclient *c, const char *queue) {
    char key[JQ_QUEUE_MAX + 64];
    if (jq_key_cfg(&c->cfg, queue, ":wake", key, sizeof key) < 0)
        return JQ_EINVAL;
    return sd_aredis_command(c->redis, on_wait_over, NULL, 0, "RPUSH %s 1", key);
}

/* ---- Acks --------------------------------------------------------------------------------- */

static void on_codes(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_codes_cb *cb = (jq_codes_cb *)call->cb;
    int *codes = sd_xcalloc((size_t)call->n, sizeof *codes);
    int rc = reply_status(reply, status, 0);
    if (rc == 0)
        rc = jq__ack_parse(reply, (size_t)call->n, codes);
    cb(call->c, rc, codes, (size_t)call->n, call->arg);
    free(codes);
    free(call);
}

int jq_aack_many(jq_aclient *c, const char *queue, const jq_ack_item *items, size_t n,
                 jq_codes_cb *cb, void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__ack_args(&c->cfg, &a, items, n);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return send_script(c, JQ_S_ACK, &a, 1, on_codes, (void *)cb, arg, (int)n);
}

/* The reply {code}: cb gets the code as its status. */
static void on_code(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_value_cb *cb = (jq_value_cb *)call->cb;
    int rc = reply_status(reply, status, 1);
    if (rc == 0)
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
    cb(call->c, rc, 0, call->arg);
    free(call);
}

int jq_aack_effect(jq_aclient *c, const char *queue, const jq_job *job, const void *result,
                   size_t len, const jq_effect *fx, jq_value_cb *cb, void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__ack_effect_args(&c->cfg, &a, queue, job, result, len, fx);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return send_script(c, JQ_S_ACK_EFFECT, &a, 2, on_code, (void *)cb, arg, 0);
}

/* ---- Fail, extend, release --------------------------------------------------------------- */

/* The reply {code, value}: value a number (extend) or a state name (fail). */
static void on_value(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_value_cb *cb = (jq_value_cb *)call->cb;
    int rc = reply_status(reply, status, 1);
    int64_t value = 0;
    if (rc == 0) {
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
        if (reply->elements >= 2) {
            const redisReply *v = reply->element[1];
            jq_state s;
            if (v->type == REDIS_REPLY_STRING && jq_state_parse(v->str, &s) == 0)
                value = s;
            else
                value = jq__elem_ll(v);
        }
    }
    cb(call->c, rc, value, call->arg);
    free(call);
}

int jq_afail(jq_aclient *c, const char *queue, const jq_job *job, const char *error,
             const jq_fail_opts *opts, jq_value_cb *cb, void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__fail_args(&c->cfg, &a, job, error, opts);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return send_script(c, JQ_S_FAIL, &a, 1, on_value, (void *)cb, arg, 0);
}

int jq_aextend(jq_aclient *c, const char *queue, const jq_job *job, int64_t ms, jq_value_cb *cb,
               void *arg) {
    if (ms < 1 || ms > 24LL * 3600 * 1000)
        return JQ_EINVAL;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__lease_args(&a, job);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    jq__args_num(&a, ms);
    return send_script(c, JQ_S_EXTEND, &a, 1, on_value, (void *)cb, arg, 0);
}

int jq_arelease(jq_aclient *c, const char *queue, const jq_job *job, jq_value_cb *cb, void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__lease_args(&a, job);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return send_script(c, JQ_S_RELEASE, &a, 1, on_value, (void *)cb, arg, 0);
}

/* ---- Inspect: a job, a cancel, the counts ------------------------------------------------ */

typedef struct info_call {
    jq_aclient *c;
    jq_info_cb *cb;
    void *arg;
    char id[JQ_ID_MAX];
} info_call;

static void on_info(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    info_call *call = privdata;
    jq_info info;
    memset(&info, 0, sizeof info);
    int rc = status != 0 ? status : jq__info_parse(reply, call->id, &info);
    call->cb(call->c, rc, rc == 0 ? &info : NULL, call->arg);
    jq_info_clear(&info);
    free(call);
}

int jq_ajob_get(jq_aclient *c, const char *queue, const char *id, jq_info_cb *cb, void *arg) {
    if (!jq__id_valid(id))
        return JQ_ENOTFOUND;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    jq__args_str(&a, id);
    info_call *call = sd_xmalloc(sizeof *call);
    *call = (info_call){.c = c, .cb = cb, .arg = arg};
    snprintf(call->id, sizeof call->id, "%s", id);
    int rc = sd_aredis_script(c->redis, jq__script(JQ_S_GET), on_info, call, c->cfg.timeout_ms, 1,
                              a.n, a.v, a.l);
    jq__args_free(&a);
    if (rc != 0)
        free(call);
    return rc;
}

static void on_cancel(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_value_cb *cb = (jq_value_cb *)call->cb;
    jq_state was = JQ_STATE_READY;
    int rc = reply_status(reply, status, 1);
    if (rc == 0) {
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
        jq__cancel_parse(reply, &was);
    }
    cb(call->c, rc, (int64_t)was, call->arg);
    free(call);
}

int jq_acancel(jq_aclient *c, const char *queue, const char *id, jq_value_cb *cb, void *arg) {
    if (!jq__id_valid(id))
        return JQ_ENOTFOUND;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    jq__args_str(&a, id);
    return send_script(c, JQ_S_CANCEL, &a, 1, on_cancel, (void *)cb, arg, 0);
}

static void on_stats(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_stats_cb *cb = (jq_stats_cb *)call->cb;
    jq_stats st;
    memset(&st, 0, sizeof st);
    int rc = reply_status(reply, status, 1);
    if (rc == 0)
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
    if (rc == 0)
        rc = jq__stats_parse(reply, &st);
    cb(call->c, rc, rc == 0 ? &st : NULL, call->arg);
    free(call);
}

int jq_astats(jq_aclient *c, const char *queue, jq_stats_cb *cb, void *arg) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    return send_script(c, JQ_S_STATS, &a, 1, on_stats, (void *)cb, arg, 0);
}

static void on_dropped(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    acall *call = privdata;
    jq_dropped_cb *cb = (jq_dropped_cb *)call->cb;
    int64_t removed = 0;
    int more = 0;
    int rc = reply_status(reply, status, 1);
    if (rc == 0)
        rc = jq__lua_code(jq__elem_ll(reply->element[0]));
    if (rc == 0)
        rc = jq__drop_parse(reply, &removed, &more);
    cb(call->c, rc, removed, more, call->arg);
    free(call);
}

int jq_adrop(jq_aclient *c, const char *queue, int count, jq_dropped_cb *cb, void *arg) {
    if (count < 1 || count > 1000)
        return JQ_EINVAL;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    jq__args_num(&a, count);
    return send_script(c, JQ_S_DROP, &a, 1, on_dropped, (void *)cb, arg, 0);
}
