/*
 * dedupe.c - the receiver's per-webhook-id marks in Redis (see dedupe.h for the design).
 *
 * A claim's memory outlives what the caller sees of it. It is freed only when three things are
 * over: the caller is done with it (state CLOSED), no Redis call of it is pending, and its renew
 * timer has been closed by libuv. claim_maybe_free() checks the three after each of them ends.
 *
 *   HELD -- wh_claim_finish() --> FINISHING -- the script's reply --> CLOSED
 *   HELD -- wh_dedupe_free() ------------------------------------------> CLOSED (abandoned)
 */
#include "dedupe.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd.h"
#include "wh_lua.h"

static sd_script renew_script = {"webhook/renew", NULL, 0, ""};
static sd_script finish_script = {"webhook/finish", NULL, 0, ""};
static sd_script release_script = {"webhook/release", NULL, 0, ""};
static sd_script *const scripts[] = {&renew_script, &finish_script, &release_script};

sd_script *const *wh_dedupe_scripts(size_t *n) {
    renew_script.body = sd_lua_wh_renew;
    renew_script.len = sd_lua_wh_renew_len;
    finish_script.body = sd_lua_wh_finish;
    finish_script.len = sd_lua_wh_finish_len;
    release_script.body = sd_lua_wh_release;
    release_script.len = sd_lua_wh_release_len;
    for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++)
        sd_script_init(scripts[i]);
    *n = sizeof scripts / sizeof scripts[0];
    return scripts;
}

typedef enum claim_state { CLAIM_HELD, CLAIM_FINISHING, CLAIM_CLOSED } claim_state;

struct wh_dedupe {
    uv_loop_t *loop;
    sd_aredis *redis;
    wh_dedupe_opts opts;
    char *prefix;
    wh_claim *claims; /* HELD and FINISHING claims, for wh_dedupe_free */
};

#define MARK_LEN (4 + 32) /* "run:" + 16 random bytes in hex */

struct wh_claim {
    uv_timer_t renew; /* renew.data points back here */
    wh_dedupe *d;     /* NULL once abandoned */
    sd_aredis *redis;
    claim_state state;
    char *key;
    char mark[MARK_LEN + 1];
    int lease_ms, timeout_ms;
    char lease[24], retention[24]; /* as script arguments */
    int pending;                   /* Redis calls not yet answered */
    int timer_open;
    int lost;
    int succeeded;
    uint64_t renewals;
    wh_claim_finish_cb *cb;
    void *udata;
    wh_claim *prev, *next;
};

void wh_dedupe_opts_default(wh_dedupe_opts *opts) {
    opts->prefix = "whrx:";
    opts->lease_ms = 30000;
    opts->renew_ms = 0;
    opts->retention_ms = 7LL * 24 * 3600 * 1000;
    opts->timeout_ms = 0;
}

wh_dedupe *wh_dedupe_new(uv_loop_t *loop, sd_aredis *redis, const wh_dedupe_opts *opts) {
    wh_dedupe_opts o;
    if (opts)
        o = *opts;
    else
        wh_dedupe_opts_default(&o);
    if (o.renew_ms == 0)
        o.renew_ms = o.lease_ms / 3;
    if (o.lease_ms <= 0 || o.renew_ms <= 0 || o.renew_ms >= o.lease_ms || o.retention_ms <= 0 ||
        o.timeout_ms < 0 || o.prefix == NULL)
        return NULL;
    size_t n;
    wh_dedupe_scripts(&n);
    wh_dedupe *d = sd_xcalloc(1, sizeof *d);
    d->loop = loop;
    d->redis = redis;
    d->opts = o;
    d->prefix = sd_xstrdup(o.prefix);
    d->opts.prefix = d->prefix;
    return d;
}

/* ---- claims ---- */

static void claim_unlink(wh_claim *c) {
    if (c->d == NULL)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->d->claims = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->d = NULL;
}

static void claim_maybe_free(wh_claim *c) {
    if (c->state != CLAIM_CLOSED || c->pending > 0 || c->timer_open)
        return;
    free(c->key);
    free(c);
}

static void on_timer_closed(uv_handle_t *h) {
    wh_claim *c = h->data;
    c->timer_open = 0;
    claim_maybe_free(c);
}

static void claim_stop_timer(wh_claim *c) {
    if (c->timer_open && !uv_is_closing((uv_handle_t *)&c->renew)) {
        uv_timer_stop(&c->renew);
        uv_close((uv_handle_t *)&c->renew, on_timer_closed);
    }
}

static void on_renewed(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    wh_claim *c = privdata;
    c->pending--;
    if (status == 0 && reply->type == REDIS_REPLY_INTEGER) {
        if (reply->integer == 1)
            c->renewals++;
        else
            c->lost = 1;
    }
    /* A failed renewal (timeout, Redis down) is tried again at the next tick; the lease is
     * lease_ms, three periods by default, so one miss loses nothing. */
    claim_maybe_free(c);
}

static void on_renew_tick(uv_timer_t *t) {
    wh_claim *c = t->data;
    if (c->state != CLAIM_HELD || c->pending > 0)
        return;
    const char *argv[] = {c->key, c->mark, c->lease};
    if (sd_aredis_script(c->redis, &renew_script, on_renewed, c, c->timeout_ms, 1, 3, argv, NULL) ==
        0)
        c->pending++;
}

static void on_finished(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    wh_claim *c = privdata;
    c->pending--;
    int err = status;
    wh_claim_result result = 0;
    if (err == 0 && reply->type != REDIS_REPLY_INTEGER)
        err = SD_EREDIS;
    if (err == 0) {
        long long v = reply->integer;
        if (c->succeeded)
            result = v == 1 ? WH_CLAIM_RECORDED : v == 2 ? WH_CLAIM_VANISHED : WH_CLAIM_TAKEN;
        else
            result = v == 1 ? WH_CLAIM_RECORDED : WH_CLAIM_TAKEN;
    }
    c->state = CLAIM_CLOSED;
    wh_claim_finish_cb *cb = c->cb;
    void *udata = c->udata;
    claim_maybe_free(c);
    cb(err, result, udata);
}

int wh_claim_finish(wh_claim *c, int succeeded, wh_claim_finish_cb *cb, void *udata) {
    if (c->state != CLAIM_HELD)
        return SD_ECLOSED;
    claim_stop_timer(c);
    claim_unlink(c);
    c->succeeded = succeeded != 0;
    c->cb = cb;
    c->udata = udata;
    int rc;
    if (succeeded) {
        const char *argv[] = {c->key, c->mark, c->retention};
        rc = sd_aredis_script(c->redis, &finish_script, on_finished, c, c->timeout_ms, 1, 3, argv,
                              NULL);
    } else {
        const char *argv[] = {c->key, c->mark};
        rc = sd_aredis_script(c->redis, &release_script, on_finished, c, c->timeout_ms, 1, 2, argv,
                              NULL);
    }
    if (rc != 0) {
        c->state = CLAIM_CLOSED;
        claim_maybe_free(c);
        return rc;
    }
    c->pending++;
    c->state = CLAIM_FINISHING;
    return 0;
}

int wh_claim_lost(const wh_claim *c) {
    return c->lost;
}

uint64_t wh_claim_renewals(const wh_claim *c) {
    return c->renewals;
}

/* ---- begin ---- */

typedef struct begin_op {
    wh_dedupe *d;
    char *key;
    char mark[MARK_LEN + 1];
    wh_dedupe_begin_cb *cb;
    void *udata;
} begin_op;

static wh_claim *claim_new(begin_op *op) {
    wh_dedupe *d = op->d;
    wh_claim *c = sd_xcalloc(1, sizeof *c);
    c->d = d;
    c->redis = d->redis;
    c->state = CLAIM_HELD;
    c->key = op->key;
    op->key = NULL;
    memcpy(c->mark, op->mark, sizeof c->mark);
    c->lease_ms = d->opts.lease_ms;
    c->timeout_ms = d->opts.timeout_ms;
    snprintf(c->lease, sizeof c->lease, "%d", d->opts.lease_ms);
    snprintf(c->retention, sizeof c->retention, "%lld", (long long)d->opts.retention_ms);
    uv_timer_init(d->loop, &c->renew);
    c->renew.data = c;
    c->timer_open = 1;
    uv_timer_start(&c->renew, on_renew_tick, (uint64_t)d->opts.renew_ms,
                   (uint64_t)d->opts.renew_ms);
    c->next = d->claims;
    if (d->claims)
        d->claims->prev = c;
    d->claims = c;
    return c;
}

static void begin_op_free(begin_op *op) {
    free(op->key);
    free(op);
}

static void on_claim_undone(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    begin_op *op = privdata;
    if (status == 0 && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        sd_log(SD_LOG_INFO, "webhook.claim_undone", "key=%s", op->key);
    begin_op_free(op);
}

/* Takes back a claim whose reply timed out (Limits in dedupe.h): Redis may have written the
 * mark all the same, and nobody would renew or finish it. The release compares the value with
 * op's token, so it drops that mark and nothing else; sent on the same connection after the
 * claim, it runs after it. Returns 0 when sent (op is freed with its reply). */
static int claim_undo(begin_op *op) {
    const char *argv[] = {op->key, op->mark};
    return sd_aredis_script(op->d->redis, &release_script, on_claim_undone, op,
                            op->d->opts.timeout_ms, 1, 2, argv, NULL);
}

static void on_claimed(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    begin_op *op = privdata;
    int err = status;
    wh_dedupe_state state = 0;
    wh_claim *claim = NULL;
    if (err == 0) {
        if (reply->type == REDIS_REPLY_NIL) {
            state = WH_DEDUPE_CLAIMED;
        } else if (reply->type == REDIS_REPLY_STRING) {
            state = reply->len == 4 && memcmp(reply->str, "done", 4) == 0 ? WH_DEDUPE_DONE
                                                                          : WH_DEDUPE_IN_FLIGHT;
        } else {
            err = SD_EREDIS;
        }
    }
    if (state == WH_DEDUPE_CLAIMED)
        claim = claim_new(op);
    int undoing = err == SD_ETIMEDOUT && claim_undo(op) == 0;
    op->cb(err, state, claim, op->udata);
    if (!undoing)
        begin_op_free(op);
}

int wh_dedupe_begin(wh_dedupe *d, const char *id, wh_dedupe_begin_cb *cb, void *udata) {
    if (id == NULL || id[0] == '\0')
        return -EINVAL;
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return -EIO;
    begin_op *op = sd_xcalloc(1, sizeof *op);
    op->d = d;
    op->cb = cb;
    op->udata = udata;
    op->key = sd_xasprintf("%s{%s}", d->prefix, id);
    memcpy(op->mark, "run:", 4);
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(op->mark + 4 + 2 * i, 3, "%02x", raw[i]);
    char lease[24];
    snprintf(lease, sizeof lease, "%d", d->opts.lease_ms);
    /* SET NX GET (Redis 7.0): claims the id and returns what was there in one command. */
    const char *argv[] = {"SET", op->key, op->mark, "NX", "GET", "PX", lease};
    int rc = sd_aredis_commandv(d->redis, on_claimed, op, d->opts.timeout_ms, 7, argv, NULL);
    if (rc != 0)
        begin_op_free(op);
    return rc;
}

void wh_dedupe_free(wh_dedupe *d) {
    if (d == NULL)
        return;
    while (d->claims) {
        wh_claim *c = d->claims;
        claim_unlink(c);
        claim_stop_timer(c);
        /* Abandoned: the caller was told the pointer is invalid from now on. The last of its
         * events (a pending renewal's reply, the timer's close) frees it. */
        c->state = CLAIM_CLOSED;
        claim_maybe_free(c);
    }
    free(d->prefix);
    free(d);
}
