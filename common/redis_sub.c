/*
 * redis_sub.c - the pub/sub subscriber (see redis_sub.h), on hiredis's async API and its libuv
 * adapter.
 *
 * The connection, as a state machine (enum sub_state):
 *
 *            sd_redis_sub_new
 *                   │
 *                   v          connect failed / connect timeout
 *   ┌───────> CONNECTING ─────────────────────────────────────┐
 *   │               │ TCP up: AUTH, PSUBSCRIBE <ping pattern>, │
 *   │               │ SUBSCRIBE / PSUBSCRIBE the whole set      v
 *   │               v          AUTH refused / timeout     WAITING (backoff timer)
 *   │           SYNCING ────────────────────────────────────> │ ^
 *   │               │ every subscription confirmed            │ │
 *   │               v          (state callback: 1)            │ │
 *   │              UP ────── lost, killed, PING unanswered ───┘ │
 *   │                        (state callback: 0)                │
 *   └───────────────────────────────────────────────────────────┘ backoff elapsed
 *
 *   on_connect: CONNECTING -> SYNCING.  check_up / go_up: SYNCING -> UP.
 *   went_down: any -> WAITING (and the callback when it leaves UP).  on_conn_timer: WAITING ->
 *   CONNECTING, or a connect timeout.  sd_redis_sub_free: any -> CLOSED.
 *
 * Invariants
 *  1. The state callback runs exactly when UP is entered (1) or left (0), so the owner hears
 *     1, 0, 1, 0, ... and never twice the same word. It never runs after sd_redis_sub_free.
 *  2. UP means: connected, AUTH accepted, and every subscription in the set confirmed by Redis
 *     on this connection (a confirmation comes before any message for that channel, in order).
 *  3. Any hiredis callback whose context is not s->ac is ignored: s->ac is cleared before a
 *     context is given up, so the NULL replies and the disconnect callback that hiredis runs
 *     while freeing it change nothing.
 *  4. A message is delivered only if its channel (or pattern) is still in the set, so nothing
 *     arrives after sd_redis_sub_unsubscribe, even a message already in the socket buffer.
 *  5. One backoff sequence for every failure: it doubles from reconnect_min_ms to
 *     reconnect_max_ms and is reset when the connection comes UP.
 *
 * PING under hiredis 0.14. hiredis routes each reply of a subscribed connection by its first
 * element: "message" and "subscribe" by the channel, and anything starting with 'p' ("pmessage",
 * "psubscribe", ... and also "pong") by the pattern in the second element. A PING sent with
 * redisAsyncCommand would wait forever on a callback list that only error replies shift (one
 * list node per PING, kept until the connection closes) and its "pong" would be dropped. So the
 * subscriber PSUBSCRIBEs one pattern of its own, SD_REDIS_SUB_PING_PATTERN, and sends
 * `PING SD_REDIS_SUB_PING_PATTERN` as raw bytes (redisAppendFormattedCommand, no callback):
 * the answer ["pong", SD_REDIS_SUB_PING_PATTERN] is routed to the callback of that pattern,
 * on_sub_reply. The pattern has no glob characters, so it matches only a channel of the same
 * name, which nobody publishes to (and a message there would be ignored). The confirmation of
 * this pattern is also what makes an empty subscription set count as confirmed. hiredis 1.1 and
 * later route "pong" differently; the test that checks pings are answered would then fail.
 *
 * The SIGPIPE rule and the reconnect backoff are the Redis layer's own (redis_internal.h).
 */
#include "redis_sub.h"

#include <errno.h>
#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "redis_internal.h"
#include "sd.h"

enum sub_state { SUB_CONNECTING, SUB_SYNCING, SUB_UP, SUB_WAITING, SUB_CLOSED };

/* One channel or pattern of the set, in the order the owner added them. */
struct subscription {
    struct subscription *next;
    int pattern;   /* PSUBSCRIBE rather than SUBSCRIBE */
    int confirmed; /* Redis confirmed it on the current connection */
    char name[];
};

struct sd_redis_sub {
    uv_loop_t *loop;
    sd_redis_url url;
    sd_redis_sub_opts opts;
    char where[256]; /* the URL as logged (no password) */
    redisAsyncContext *ac;
    enum sub_state state;
    int backoff_ms;
    struct subscription *subs;
    int ping_confirmed;   /* our own pattern is confirmed on this connection */
    int ping_outstanding; /* a PING was sent and its answer has not come */
    uint64_t ping_sent_ns;
    uint64_t last_rx_ns;   /* when the last reply of any kind arrived */
    uv_timer_t conn_timer; /* connect timeout, then the reconnect backoff */
    uv_timer_t ping_timer; /* UP: the next PING or the PING deadline; SYNCING: a deferred check */
    int open_handles;      /* timers not yet closed: the struct is freed at 0 */
    sd_redis_sub_message_cb *on_message;
    sd_redis_sub_state_cb *on_state;
    void *udata;
    sd_redis_sub_stats stats;
};

static void sub_connect(sd_redis_sub *s);
static void on_conn_timer(uv_timer_t *t);
static void on_ping_timer(uv_timer_t *t);

/* ---- Small helpers -------------------------------------------------------------------------- */

void sd_redis_sub_opts_default(sd_redis_sub_opts *opts) {
    sd_redis_opts_default(&opts->redis);
    opts->ping_interval_ms = 1000;
    opts->ping_timeout_ms = 1000;
}

/* The options in effect: the defaults, overridden by every positive field of *given. */
static sd_redis_sub_opts opts_fill(const sd_redis_sub_opts *given) {
    sd_redis_sub_opts o;
    sd_redis_sub_opts_default(&o);
    if (given == NULL)
        return o;
    if (given->redis.connect_timeout_ms > 0)
        o.redis.connect_timeout_ms = given->redis.connect_timeout_ms;
    if (given->redis.reconnect_min_ms > 0)
        o.redis.reconnect_min_ms = given->redis.reconnect_min_ms;
    if (given->redis.reconnect_max_ms > 0)
        o.redis.reconnect_max_ms = given->redis.reconnect_max_ms;
    if (given->ping_interval_ms > 0)
        o.ping_interval_ms = given->ping_interval_ms;
    if (given->ping_timeout_ms > 0)
        o.ping_timeout_ms = given->ping_timeout_ms;
    return o;
}

static struct subscription *sub_find(const sd_redis_sub *s, const char *name, int pattern) {
    for (struct subscription *e = s->subs; e != NULL; e = e->next)
        if (e->pattern == pattern && strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends (P)SUBSCRIBE or (P)UNSUBSCRIBE for one name. hiredis keeps the callback of a
 * (P)SUBSCRIBE for every later reply about that name (confirmations and messages). Returns 0 or
 * -1 (the context is going away; the next connect sends the whole set again). */
static int send_sub_command(sd_redis_sub *s, const char *verb, const char *name) {
    const char *argv[2] = {verb, name};
    return redisAsyncCommandArgv(s->ac, on_sub_reply, s, 2, argv, NULL) == REDIS_OK ? 0 : -1;
}

/* ---- Going down and coming up --------------------------------------------------------------- */

/*
 * Leaves the current connection attempt or connection (already given up by the caller: s->ac
 * is NULL) for WAITING, schedules the next attempt after the backoff and, if the subscriber
 * was UP, logs the drop and tells the owner. The owner's callback runs last: it may free s.
 */
static void went_down(sd_redis_sub *s, const char *reason) {
    int was_up = s->state == SUB_UP;
    s->state = SUB_WAITING;
    s->ping_confirmed = 0;
    s->ping_outstanding = 0;
    for (struct subscription *e = s->subs; e != NULL; e = e->next)
        e->confirmed = 0;
    uv_timer_stop(&s->ping_timer);
    s->backoff_ms = sd_redis__backoff_next(s->backoff_ms, &s->opts.redis);
    uv_timer_start(&s->conn_timer, on_conn_timer, (uint64_t)s->backoff_ms, 0);
    if (!was_up) {
        sd_log(SD_LOG_DEBUG, "redis_sub.connect_failed", "url=%s reason=\"%s\" retry_in_ms=%d",
               s->where, reason, s->backoff_ms);
        return;
    }
    s->stats.downs++;
    sd_log(SD_LOG_WARN, "redis_sub.down", "url=%s reason=\"%s\" retry_in_ms=%d", s->where, reason,
           s->backoff_ms);
    if (s->on_state)
        s->on_state(s, 0, s->udata);
}

/* Gives up the current context ourselves (connect timeout, AUTH refused, PING unanswered).
 * Inside a hiredis callback the free is deferred by hiredis until the callback returns. */
static void drop(sd_redis_sub *s, const char *reason) {
    sd_redis__async_give_up(&s->ac);
    went_down(s, reason);
}

static void go_up(sd_redis_sub *s) {
    s->state = SUB_UP;
    s->backoff_ms = 0;
    uv_timer_stop(&s->conn_timer);
    uv_timer_start(&s->ping_timer, on_ping_timer, (uint64_t)s->opts.ping_interval_ms, 0);
    s->stats.ups++;
    size_t n = 0;
    for (struct subscription *e = s->subs; e != NULL; e = e->next)
        n++;
    sd_log(SD_LOG_INFO, "redis_sub.up", "url=%s subscriptions=%zu", s->where, n);
    if (s->on_state)
        s->on_state(s, 1, s->udata);
}

/* SYNCING -> UP once our ping pattern and every subscription of the set are confirmed. */
static void check_up(sd_redis_sub *s) {
    if (s->state != SUB_SYNCING || !s->ping_confirmed)
        return;
    for (struct subscription *e = s->subs; e != NULL; e = e->next)
        if (!e->confirmed)
            return;
    go_up(s);
}

/* ---- PING ----------------------------------------------------------------------------------- */

/* Appends `PING <ping pattern>` to the output buffer with no callback (see the top of the file)
 * and asks the adapter for a writable event, so the bytes go out from the loop. */
static void send_ping(sd_redis_sub *s) {
    char cmd[96];
    int len = snprintf(cmd, sizeof cmd, "*2\r\n$4\r\nPING\r\n$%zu\r\n%s\r\n",
                       strlen(SD_REDIS_SUB_PING_PATTERN), SD_REDIS_SUB_PING_PATTERN);
    if (redisAppendFormattedCommand(&s->ac->c, cmd, (size_t)len) != REDIS_OK) {
        drop(s, "out of memory");
        return;
    }
    if (s->ac->ev.addWrite)
        s->ac->ev.addWrite(s->ac->ev.data);
    s->ping_outstanding = 1;
    s->ping_sent_ns = sd_now_ns();
    uv_timer_start(&s->ping_timer, on_ping_timer, (uint64_t)s->opts.ping_timeout_ms, 0);
}

static void on_ping_timer(uv_timer_t *t) {
    sd_redis_sub *s = t->data;
    if (s->state == SUB_SYNCING) {
        check_up(s); /* deferred from sd_redis_sub_unsubscribe */
        return;
    }
    if (s->state != SUB_UP)
        return;
    if (!s->ping_outstanding) {
        send_ping(s);
        return;
    }
    if (s->last_rx_ns > s->ping_sent_ns) {
        /* Other replies are still arriving: the answer is queued behind them. Wait for another
         * period in which nothing at all arrives before giving up. */
        s->ping_sent_ns = sd_now_ns();
        uv_timer_start(&s->ping_timer, on_ping_timer, (uint64_t)s->opts.ping_timeout_ms, 0);
        return;
    }
    char reason[64];
    snprintf(reason, sizeof reason, "no answer to PING within %d ms", s->opts.ping_timeout_ms);
    drop(s, reason);
}

static void on_pong(sd_redis_sub *s) {
    s->stats.pongs++;
    s->ping_outstanding = 0;
    if (s->state == SUB_UP)
        uv_timer_start(&s->ping_timer, on_ping_timer, (uint64_t)s->opts.ping_interval_ms, 0);
}

/* ---- Replies -------------------------------------------------------------------------------- */

static int is_string(const redisReply *r) {
    return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

static void deliver(sd_redis_sub *s, const redisReply *channel, const redisReply *pattern,
                    const redisReply *payload) {
    if (!is_string(channel) || !is_string(payload) || (pattern && !is_string(pattern)))
        return;
    /* Invariant 4: only what is still in the set. */
    if (sub_find(s, pattern ? pattern->str : channel->str, pattern != NULL) == NULL)
        return;
    s->stats.messages++;
    if (s->on_message)
        s->on_message(s, channel->str, pattern ? pattern->str : NULL, payload->str, payload->len,
                      s->udata);
}

static void confirm(sd_redis_sub *s, const redisReply *name, int pattern) {
    if (!is_string(name))
        return;
    if (pattern && strcmp(name->str, SD_REDIS_SUB_PING_PATTERN) == 0) {
        s->ping_confirmed = 1;
    } else {
        struct subscription *e = sub_find(s, name->str, pattern);
        if (e == NULL)
            return; /* unsubscribed meanwhile */
        e->confirmed = 1;
    }
    check_up(s);
}

/* hiredis's callback for everything about our subscriptions: confirmations, messages and the
 * answers to PING (see the top of the file). privdata is the subscriber. */
static void on_sub_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
    sd_redis_sub *s = privdata;
    redisReply *r = reply_;
    if (r == NULL || ac != s->ac) /* invariant 3 */
        return;
    s->last_rx_ns = sd_now_ns();
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_string(r->element[0]))
        return;
    const char *kind = r->element[0]->str;
    if (strcasecmp(kind, "message") == 0 && r->elements == 3) {
        deliver(s, r->element[1], NULL, r->element[2]);
    } else if (strcasecmp(kind, "pmessage") == 0 && r->elements == 4) {
        if (is_string(r->element[1]) && strcmp(r->element[1]->str, SD_REDIS_SUB_PING_PATTERN) != 0)
            deliver(s, r->element[2], r->element[1], r->element[3]);
    } else if (strcasecmp(kind, "subscribe") == 0) {
        confirm(s, r->element[1], 0);
    } else if (strcasecmp(kind, "psubscribe") == 0) {
        confirm(s, r->element[1], 1);
    } else if (strcasecmp(kind, "pong") == 0) {
        on_pong(s);
    }
    /* "unsubscribe" / "punsubscribe": nothing to do, the name already left the set. */
}

static void on_auth(redisAsyncContext *ac, void *reply_, void *privdata) {
    sd_redis_sub *s = privdata;
    redisReply *r = reply_;
    if (r == NULL || ac != s->ac)
        return;
    s->last_rx_ns = sd_now_ns();
    if (r->type == REDIS_REPLY_ERROR) {
        char reason[160];
        snprintf(reason, sizeof reason, "AUTH refused: %.100s", r->str);
        sd_log(SD_LOG_ERROR, "redis_sub.auth_refused", "url=%s error=\"%.100s\"", s->where, r->str);
        drop(s, reason);
    }
}

/* ---- Connecting ----------------------------------------------------------------------------- */

static void on_connect(const redisAsyncContext *cac, int status) {
    sd_redis_sub *s = cac->data;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (s == NULL || ac != s->ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this callback returns. */
        char reason[160];
        snprintf(reason, sizeof reason, "%s", ac->errstr);
        s->ac = NULL;
        went_down(s, reason);
        return;
    }
    s->state = SUB_SYNCING;
    int rc = 0;
    if (s->url.password) {
        const char *auth[3] = {"AUTH", s->url.user ? s->url.user : s->url.password,
                               s->url.password};
        int argc = s->url.user ? 3 : 2;
        rc |= redisAsyncCommandArgv(ac, on_auth, s, argc, auth, NULL) == REDIS_OK ? 0 : -1;
    }
    rc |= send_sub_command(s, "PSUBSCRIBE", SD_REDIS_SUB_PING_PATTERN);
    for (struct subscription *e = s->subs; e != NULL; e = e->next) {
        e->confirmed = 0;
        rc |= send_sub_command(s, e->pattern ? "PSUBSCRIBE" : "SUBSCRIBE", e->name);
    }
    /* hiredis 0.14 runs this callback without marking itself inside a callback, so freeing the
     * context here would free it under hiredis's feet: let the connect timer give up on it at
     * once, from the loop, instead. */
    if (rc != 0)
        uv_timer_start(&s->conn_timer, on_conn_timer, 0, 0);
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
    sd_redis_sub *s = cac->data;
    if (s == NULL || cac != s->ac) /* invariant 3: we gave it up ourselves */
        return;
    char reason[160];
    snprintf(reason, sizeof reason, "%s", status == REDIS_OK ? "closed" : cac->errstr);
    s->ac = NULL; /* hiredis frees the context after this callback */
    went_down(s, reason);
}

static void sub_connect(sd_redis_sub *s) {
    s->state = SUB_CONNECTING;
    char reason[160];
    redisAsyncContext *ac =
        sd_redis__async_open(s->loop, &s->url, s, on_connect, on_disconnect, reason, sizeof reason);
    if (ac == NULL) {
        went_down(s, reason);
        return;
    }
    s->ac = ac;
    uv_timer_start(&s->conn_timer, on_conn_timer, (uint64_t)s->opts.redis.connect_timeout_ms, 0);
}

static void on_conn_timer(uv_timer_t *t) {
    sd_redis_sub *s = t->data;
    if (s->state == SUB_WAITING) {
        sub_connect(s);
    } else if (s->state == SUB_CONNECTING || s->state == SUB_SYNCING) {
        char reason[96];
        snprintf(reason, sizeof reason, "not connected and subscribed within %d ms",
                 s->opts.redis.connect_timeout_ms);
        drop(s, reason);
    }
}

/* ---- Public API ----------------------------------------------------------------------------- */

int sd_redis_sub_new(uv_loop_t *loop, const sd_redis_url *url, const sd_redis_sub_opts *opts,
                     sd_redis_sub **out) {
    if ((url->host == NULL) == (url->path == NULL))
        return -EINVAL;
    sd_redis__ignore_sigpipe();
    sd_redis_sub *s = sd_xcalloc(1, sizeof *s);
    s->loop = loop;
    sd_redis_url_copy(&s->url, url);
    sd_redis_url_format(&s->url, s->where, sizeof s->where);
    s->opts = opts_fill(opts);
    uv_timer_init(loop, &s->conn_timer);
    uv_timer_init(loop, &s->ping_timer);
    s->conn_timer.data = s;
    s->ping_timer.data = s;
    s->open_handles = 2;
    sub_connect(s);
    *out = s;
    return 0;
}

void sd_redis_sub_set_callbacks(sd_redis_sub *sub, sd_redis_sub_message_cb *on_message,
                                sd_redis_sub_state_cb *on_state, void *udata) {
    sub->on_message = on_message;
    sub->on_state = on_state;
    sub->udata = udata;
}

static int sub_add(sd_redis_sub *s, const char *name, int pattern) {
    if (name == NULL || (pattern && strcmp(name, SD_REDIS_SUB_PING_PATTERN) == 0))
        return -EINVAL;
    if (s->state == SUB_CLOSED)
        return SD_ECLOSED;
    if (sub_find(s, name, pattern) != NULL)
        return 0;
    size_t len = strlen(name);
    struct subscription *e = sd_xcalloc(1, sizeof *e + len + 1);
    e->pattern = pattern;
    memcpy(e->name, name, len + 1);
    struct subscription **tail = &s->subs;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = e;
    /* While CONNECTING or WAITING the next handshake sends it with the rest of the set. A
     * failed send means the context is going away: the same holds. */
    if (s->state == SUB_SYNCING || s->state == SUB_UP)
        send_sub_command(s, pattern ? "PSUBSCRIBE" : "SUBSCRIBE", name);
    return 0;
}

static int sub_remove(sd_redis_sub *s, const char *name, int pattern) {
    if (name == NULL)
        return -EINVAL;
    if (s->state == SUB_CLOSED)
        return SD_ECLOSED;
    struct subscription **link = &s->subs;
    while (*link != NULL && ((*link)->pattern != pattern || strcmp((*link)->name, name) != 0))
        link = &(*link)->next;
    struct subscription *e = *link;
    if (e == NULL)
        return -ENOENT;
    *link = e->next;
    free(e);
    if (s->state == SUB_SYNCING || s->state == SUB_UP)
        send_sub_command(s, pattern ? "PUNSUBSCRIBE" : "UNSUBSCRIBE", name);
    /* The one unconfirmed subscription may have been this one: check from the loop, since the
     * state callback must not run from inside this call. */
    if (s->state == SUB_SYNCING)
        uv_timer_start(&s->ping_timer, on_ping_timer, 0, 0);
    return 0;
}

int sd_redis_sub_subscribe(sd_redis_sub *sub, const char *channel) {
    return sub_add(sub, channel, 0);
}

int sd_redis_sub_psubscribe(sd_redis_sub *sub, const char *pattern) {
    return sub_add(sub, pattern, 1);
}

int sd_redis_sub_unsubscribe(sd_redis_sub *sub, const char *channel) {
    return sub_remove(sub, channel, 0);
}

int sd_redis_sub_punsubscribe(sd_redis_sub *sub, const char *pattern) {
    return sub_remove(sub, pattern, 1);
}

int sd_redis_sub_is_up(const sd_redis_sub *sub) {
    return sub->state == SUB_UP;
}

size_t sd_redis_sub_unconfirmed(const sd_redis_sub *sub) {
    size_t n = 0;
    for (const struct subscription *e = sub->subs; e != NULL; e = e->next)
        n += !e->confirmed;
    return n;
}

void sd_redis_sub_stats_get(const sd_redis_sub *sub, sd_redis_sub_stats *out) {
    *out = sub->stats;
}

static void on_handle_closed(uv_handle_t *h) {
    sd_redis_sub *s = h->data;
    if (--s->open_handles > 0)
        return;
    while (s->subs != NULL) {
        struct subscription *e = s->subs;
        s->subs = e->next;
        free(e);
    }
    sd_redis_url_clear(&s->url);
    free(s);
}

/*
 * The struct lives until both timers are closed (a later loop iteration), which is after
 * hiredis is done with the context: when this runs inside one of our hiredis callbacks,
 * redisAsyncFree only marks the context, and hiredis frees it when the callback returns,
 * calling on_sub_reply with NULL for each subscription and then on_disconnect; both find
 * s->ac cleared and do nothing.
 */
void sd_redis_sub_free(sd_redis_sub *sub) {
    if (sub == NULL || sub->state == SUB_CLOSED)
        return;
    sub->state = SUB_CLOSED;
    sub->on_message = NULL;
    sub->on_state = NULL;
    sd_redis__async_give_up(&sub->ac);
    uv_close((uv_handle_t *)&sub->conn_timer, on_handle_closed);
    uv_close((uv_handle_t *)&sub->ping_timer, on_handle_closed);
}
