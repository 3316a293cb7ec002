/*
 * redis_async.c - the asynchronous (libuv) connection (see redis.h).
 *
 * The async connection, as a state machine:
 *
 *               sd_aredis_new
 *                     │
 *                     v             connect failed / timed out
 *   ┌──────────> CONNECTING ─────────────────────────────────────┐
 *   │                 │ TCP up: AUTH, SELECT, SCRIPT LOADs sent  │
 *   │                 v                                          v
 *   │            HANDSHAKE ──── AUTH/SELECT refused ───────> WAITING (backoff timer)
 *   │                 │ last handshake reply                     │
 *   │                 v                                          │
 *   │              READY ──── connection lost ───────────────────┤
 *   └────────────────────────────────────────────────────────────┘ backoff elapsed
 *
 * Only READY accepts commands; in every other state sd_aredis_command fails at once with
 * SD_EDISCONNECTED, which is what lets callers bound their decision time when Redis is down.
 *
 * Redis Cluster detection. Until a connection made by sd_aredis_new knows what it talks to
 * (`probe`), its first handshake is AUTH and CLUSTER SLOTS only, on the first seed of the URL
 * (the next seed after each failed attempt). A cluster node answers with the slot map: the
 * connection gives up its own context and becomes a router (state CLUSTER, redis_acluster.c),
 * which opens one connection per master and reports up once every one of them is. A single
 * server answers that cluster support is disabled: the rest of the handshake (SELECT, the
 * SCRIPT LOADs) follows on the same connection, and the question is never asked again. So
 * detection never blocks the loop, a Redis that is down at start is detected when it comes up,
 * and no script is loaded on a node only to be dropped.
 *
 *   HANDSHAKE (probe) ── slot map ──> CLUSTER (routes to one connection per master, for good)
 *        │ "cluster support disabled"
 *        └──> SELECT, SCRIPT LOADs ──> READY (as above; probe is over)
 *
 * Deadlines. Each accepted command is a `struct areq` on the connection's pending list (a
 * doubly linked list, in send order). One uv_timer is armed for the earliest deadline. When it
 * fires, every expired request's callback runs with SD_ETIMEDOUT and the request is marked
 * `expired`; it stays on the list, because hiredis will still call us with its reply (or with
 * NULL when the connection goes), and only then may the request be freed. So a callback runs
 * exactly once, however late the reply.
 */
#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"
#include "sd.h"

/* ---- Command encoding ----------------------------------------------------------------------- */

/*
 * Encodes a command the way Redis reads every command, a RESP array of bulk strings
 * ("*<argc>\r\n" then "$<len>\r\n<bytes>\r\n" per argument), into a new buffer that the caller
 * frees with free(); returns its length. The buffer also ends in a NUL (not counted), as
 * hiredis's does: the NOSCRIPT retry searches it with string functions. This is what hiredis's
 * redisFormatCommandArgv does, but that one runs sprintf for every argument: for a batch of
 * rate-limit checks (100 arguments and more) its formatting was about a fifth of the client's
 * instructions per check (measured with callgrind; ratelimit/README.md), so the digits are written
 * here by hand. lens may be NULL for NUL-terminated arguments.
 */
size_t sd_redis__resp_format(char **out, int argc, const char **argv, const size_t *lens) {
    size_t total = 1 + 20 + 2 + 1;
    for (int i = 0; i < argc; i++)
        total += 1 + 20 + 2 + (lens ? lens[i] : strlen(argv[i])) + 2;
    char *buf = sd_xmalloc(total);
    char *p = buf;
    *p++ = '*';
    p += sd_format_uint(p, (uint64_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t len = lens ? lens[i] : strlen(argv[i]);
        *p++ = '$';
        p += sd_format_uint(p, len);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], len);
        p += len;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p = '\0';
    *out = buf;
    return (size_t)(p - buf);
}

/* ---- Asynchronous connection ---------------------------------------------------------------- */

enum astate { AS_CONNECTING, AS_HANDSHAKE, AS_READY, AS_WAITING, AS_CLUSTER, AS_CLOSED };

/* The kinds of handshake command: one Redis must accept (AUTH, SELECT, PING: an error reply
 * fails the handshake), and a SCRIPT LOAD (an error reply is logged, and the script's calls will
 * report it as EVAL would). */
enum { HS_REQUIRED = 1, HS_SCRIPT_LOAD = 2, HS_PROBE = 3 };

/* One command in flight. For scripts it keeps the formatted EVALSHA command, so that after a
 * NOSCRIPT reply it can be re-sent as EVAL without asking the caller for its arguments again. */
struct areq {
    struct areq *prev, *next;
    sd_aredis *owner;
    sd_aredis_cb *cb;
    void *privdata;
    uint64_t deadline_ns;
    int expired;       /* the callback already ran with SD_ETIMEDOUT */
    int internal;      /* a handshake command of ours: HS_REQUIRED, HS_SCRIPT_LOAD, HS_PROBE */
    sd_script *script; /* non-NULL for scripts until retried; a SCRIPT LOAD's script */
    char *cmd;         /* the formatted EVALSHA command (scripts only) */
    size_t cmdlen;
    int cmd_borrowed; /* cmd belongs to the cluster router's request, which outlives the
                       * callback's run only until then: read it only before areq_finish */
};

struct sd_aredis {
    uv_loop_t *loop;
    sd_redis_url url;
    sd_redis_opts opts;
    redisAsyncContext *ac;
    enum astate state;
    int backoff_ms;
    int handshake_left;        /* handshake replies still expected */
    struct areq *head, *tail;  /* pending commands in send order */
    size_t npending;           /* of those, not yet expired */
    uv_timer_t deadline_timer; /* armed for the earliest pending deadline */
    uint64_t armed_ns;         /* the deadline the timer is armed for, 0 when stopped */
    uv_timer_t conn_timer;     /* connect timeout, then reconnect backoff */
    int open_handles;          /* our timers not yet closed: free the struct at 0 */
    sd_aredis_state_cb *state_cb;
    void *state_privdata;
    /* Redis Cluster: when set, this connection only routes to one per master
     * (redis_acluster.c) and never connects itself. */
    struct sd_redis__acluster *cluster;
    int probe;          /* whether the URL names a cluster is not known yet (top of file) */
    int seed;           /* while probing: the seed of the URL this attempt connects to */
    char seed_host[64]; /* and its host, which CLUSTER SLOTS may leave out */
};

static void aredis_connect(sd_aredis *r);

static void list_push(sd_aredis *r, struct areq *q) {
    q->prev = r->tail;
    q->next = NULL;
    if (r->tail)
        r->tail->next = q;
    else
        r->head = q;
    r->tail = q;
}

static void list_unlink(sd_aredis *r, struct areq *q) {
    if (q->prev)
        q->prev->next = q->next;
    else
        r->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        r->tail = q->prev;
}

static void areq_free(sd_aredis *r, struct areq *q) {
    list_unlink(r, q);
    if (!q->cmd_borrowed)
        free(q->cmd);
    free(q);
}

/* Runs the caller's callback once, for a request that has not expired. */
static void areq_finish(sd_aredis *r, struct areq *q, redisReply *reply, int status) {
    if (!q->expired && !q->internal) {
        r->npending--;
        q->expired = 1;
        if (q->cmd_borrowed) /* the callback frees it */
            q->cmd = NULL;
        q->cb(r, reply, status, q->privdata);
    }
}

static void arm_deadline(sd_aredis *r, uint64_t deadline_ns);

static void schedule_reconnect(sd_aredis *r);

/*
 * Gives up on a connection whose oldest command has gone unanswered for connect_timeout_ms past
 * its deadline: the server is frozen, or the network dropped without a reset. Without this,
 * expired requests (which must wait for their replies) would pile up for as long as the silent
 * connection lasted. Freeing the context answers the pending commands SD_EDISCONNECTED.
 */
static void drop_unresponsive(sd_aredis *r) {
    sd_log(SD_LOG_WARN, "redis.unresponsive", "pending=%zu", r->npending);
    int was_ready = r->state == AS_READY;
    r->state = AS_WAITING; /* so on_disconnect leaves the reconnect to us */
    sd_redis__async_give_up(&r->ac);
    /* A caller's callback may have freed the connection meanwhile. */
    if (r->state == AS_CLOSED)
        return;
    if (was_ready && r->state_cb)
        r->state_cb(r, 0, r->state_privdata);
    if (r->state != AS_CLOSED)
        schedule_reconnect(r);
}

static void on_deadline(uv_timer_t *t) {
    sd_aredis *r = t->data;
    r->armed_ns = 0;
    /* Replies that arrived while the loop was held up are read before any is taken for late
     * (timers run before the loop polls for input; sd_aredis_read). */
    sd_aredis_read(r);
    if (r->state == AS_CLOSED)
        return;
    uint64_t now = sd_now_ns(), next = 0;
    /* Callbacks may send new commands (appended at the tail) or free the connection: remember
     * the next request before running a callback, and stop if the connection was freed. */
    for (struct areq *q = r->head, *nx; q != NULL; q = nx) {
        nx = q->next;
        if (q->expired || q->internal)
            continue;
        if (q->deadline_ns <= now) {
            areq_finish(r, q, NULL, SD_ETIMEDOUT);
            if (r->state == AS_CLOSED)
                return;
        } else if (next == 0 || q->deadline_ns < next) {
            next = q->deadline_ns;
        }
    }
    /* The head is the oldest request; if it expired, watch how long its reply stays away. */
    struct areq *oldest = r->head;
    if (oldest && oldest->expired && r->ac) {
        uint64_t give_up = oldest->deadline_ns + (uint64_t)r->opts.connect_timeout_ms * 1000000u;
        if (give_up <= now) {
            drop_unresponsive(r);
            return;
        }
        if (next == 0 || give_up < next)
            next = give_up;
    }
    if (next)
        arm_deadline(r, next);
}

static void arm_deadline(sd_aredis *r, uint64_t deadline_ns) {
    if (r->armed_ns != 0 && r->armed_ns <= deadline_ns)
        return;
    uint64_t now = sd_now_ns();
    uint64_t ms = deadline_ns > now ? (deadline_ns - now + 999999) / 1000000 : 0;
    r->armed_ns = deadline_ns;
    uv_timer_start(&r->deadline_timer, on_deadline, ms, 0);
}

static void set_state(sd_aredis *r, enum astate s) {
    int was_ready = r->state == AS_READY;
    r->state = s;
    if (r->state_cb && was_ready != (s == AS_READY))
        r->state_cb(r, s == AS_READY, r->state_privdata);
}

static void on_conn_timer(uv_timer_t *t);

/* Schedules the next connect attempt after the current backoff step. */
static void schedule_reconnect(sd_aredis *r) {
    if (r->probe)
        r->seed++; /* the next seed, if the URL has several */
    r->backoff_ms = sd_redis__backoff_next(r->backoff_ms, &r->opts);
    r->state = AS_WAITING;
    uv_timer_start(&r->conn_timer, on_conn_timer, (uint64_t)r->backoff_ms, 0);
}

static void on_conn_timer(uv_timer_t *t) {
    sd_aredis *r = t->data;
    if (r->state == AS_WAITING) {
        aredis_connect(r);
    } else if (r->state == AS_CONNECTING || r->state == AS_HANDSHAKE) {
        /* The connect (or the handshake) took too long: give up on this attempt. Freeing the
         * context runs the pending callbacks (only our handshake commands) with NULL. */
        sd_log(SD_LOG_WARN, "redis.connect_timeout", "timeout_ms=%d", r->opts.connect_timeout_ms);
        r->state = AS_WAITING;
        sd_redis__async_give_up(&r->ac);
        schedule_reconnect(r);
    }
}

static void probe_answered(sd_aredis *r, redisAsyncContext *ac, const redisReply *reply);
static int send_handshake(sd_aredis *r);

/* hiredis's callback for every command we send; privdata is the struct areq. */
static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
    struct areq *q = privdata;
    sd_aredis *r = q->owner;
    redisReply *reply = reply_;
    if (reply == NULL) {
        /* The connection went away (or is being freed) before the reply came. */
        areq_finish(r, q, NULL, r->state == AS_CLOSED ? SD_ECLOSED : SD_EDISCONNECTED);
        areq_free(r, q);
        return;
    }
    if (q->internal == HS_PROBE) {
        areq_free(r, q);
        r->handshake_left--;
        probe_answered(r, ac, reply);
        return;
    }
    if (q->internal) {
        if (reply->type == REDIS_REPLY_ERROR && q->internal == HS_REQUIRED) {
            sd_log(SD_LOG_ERROR, "redis.handshake_refused", "error=\"%.100s\"", reply->str);
            areq_free(r, q);
            redisAsyncDisconnect(ac);
            return;
        }
        if (reply->type == REDIS_REPLY_ERROR)
            sd_log(SD_LOG_ERROR, "redis.script_load_refused", "script=%s error=\"%.100s\"",
                   q->script->name, reply->str);
        areq_free(r, q);
        if (--r->handshake_left == 0 && r->state == AS_HANDSHAKE) {
            uv_timer_stop(&r->conn_timer);
            r->backoff_ms = 0;
            set_state(r, AS_READY);
        }
        return;
    }
    if (q->script && !q->expired && sd_redis__is_noscript(reply)) {
        /* Re-send as EVAL: "*N $7 EVALSHA $40 <sha>" becomes "*N $4 EVAL $len <body>". */
        const char *rest = strstr(q->cmd, "\r\n$40\r\n") + 7 + 40 + 2;
        const char *count_end = strchr(q->cmd, '\r');
        char *eval = sd_xasprintf("%.*s\r\n$4\r\nEVAL\r\n$%zu\r\n", (int)(count_end - q->cmd),
                                  q->cmd, q->script->len);
        size_t head = strlen(eval), restlen = q->cmdlen - (size_t)(rest - q->cmd);
        size_t total = head + q->script->len + 2 + restlen;
        eval = sd_xrealloc(eval, total);
        memcpy(eval + head, q->script->body, q->script->len);
        memcpy(eval + head + q->script->len, "\r\n", 2);
        memcpy(eval + head + q->script->len + 2, rest, restlen);
        q->script = NULL; /* retry once only */
        int ok = redisAsyncFormattedCommand(ac, on_reply, q, eval, total) == REDIS_OK;
        free(eval);
        if (ok)
            return;
        areq_finish(r, q, NULL, SD_EDISCONNECTED);
        areq_free(r, q);
        return;
    }
    areq_finish(r, q, reply, 0);
    areq_free(r, q);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    sd_aredis *r = ac->data;
    /* CLOSED: we are freeing it. WAITING: the connect timer gave up on it and already
     * scheduled the next attempt. CLUSTER: it was the probe's, and the router took over. */
    if (r == NULL || r->state == AS_CLOSED || r->state == AS_WAITING || r->state == AS_CLUSTER)
        return;
    r->ac = NULL;
    sd_log(SD_LOG_WARN, "redis.disconnected", "error=\"%s\"",
           status == REDIS_OK ? "closed" : ac->errstr);
    set_state(r, AS_WAITING);
    if (r->state != AS_CLOSED) /* the state callback may free the connection */
        schedule_reconnect(r);
}

/* Sends a handshake command of the given kind (HS_*); lens may be NULL, script is the one a
 * SCRIPT LOAD loads (for its log line). Returns 0 or -1. */
static int send_internal(sd_aredis *r, int kind, int argc, const char **argv, const size_t *lens,
                         sd_script *script) {
    struct areq *q = sd_xcalloc(1, sizeof *q);
    q->owner = r;
    q->internal = kind;
    q->script = script;
    list_push(r, q);
    if (redisAsyncCommandArgv(r->ac, on_reply, q, argc, argv, lens) != REDIS_OK) {
        areq_free(r, q);
        return -1;
    }
    r->handshake_left++;
    return 0;
}

static void on_connect(const redisAsyncContext *ac, int status) {
    sd_aredis *r = ac->data;
    if (r == NULL || r->state == AS_CLOSED)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        sd_log(SD_LOG_DEBUG, "redis.connect_failed", "error=\"%s\"", ac->errstr);
        r->ac = NULL;
        uv_timer_stop(&r->conn_timer);
        schedule_reconnect(r);
        return;
    }
    r->state = AS_HANDSHAKE;
    r->handshake_left = 0;
    int rc = 0;
    if (r->url.password) {
        const char *auth[3] = {"AUTH", r->url.user ? r->url.user : r->url.password,
                               r->url.password};
        rc |= send_internal(r, HS_REQUIRED, r->url.user ? 3 : 2, auth, NULL, NULL);
    }
    if (r->probe) {
        /* The rest of the handshake waits for the answer (probe_answered). */
        const char *slots[2] = {"CLUSTER", "SLOTS"};
        rc |= send_internal(r, HS_PROBE, 2, slots, NULL, NULL);
    } else {
        rc |= send_handshake(r);
    }
    if (rc != 0)
        redisAsyncDisconnect(r->ac);
}

/* The handshake after AUTH: SELECT, the SCRIPT LOADs, or a PING. Returns 0 or -1. */
static int send_handshake(sd_aredis *r) {
    int rc = 0;
    char db[16];
    snprintf(db, sizeof db, "%d", r->url.db);
    const char *select[2] = {"SELECT", db};
    const char *ping[1] = {"PING"};
    if (r->url.db)
        rc |= send_internal(r, HS_REQUIRED, 2, select, NULL, NULL);
    /* The scripts go after AUTH and SELECT: Redis answers in order, so READY (the last reply)
     * means every one of them is in the script cache. */
    for (size_t i = 0; i < r->opts.nscripts; i++) {
        const char *load[3] = {"SCRIPT", "LOAD", r->opts.scripts[i]->body};
        const size_t lens[3] = {6, 4, r->opts.scripts[i]->len};
        rc |= send_internal(r, HS_SCRIPT_LOAD, 3, load, lens, r->opts.scripts[i]);
    }
    /* With nothing else to send, a PING is the readiness probe. */
    if (r->handshake_left == 0)
        rc |= send_internal(r, HS_REQUIRED, 1, ping, NULL, NULL);
    return rc;
}

/*
 * The answer to the probe's CLUSTER SLOTS (top of file), inside hiredis's reply callback for ac.
 * A slot map: become the router and give up ac (hiredis frees it once this callback returns;
 * on_disconnect then finds the state CLUSTER and leaves it). "Cluster support disabled" (or a
 * server without the command, or a user not allowed it): a single server, so finish the
 * handshake here. Anything else (a node still loading its data, a cluster with no slot assigned
 * yet): fail this attempt and ask again on the next one.
 */
static void probe_answered(sd_aredis *r, redisAsyncContext *ac, const redisReply *reply) {
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        r->probe = 0;
        r->state = AS_CLUSTER;
        uv_timer_stop(&r->conn_timer);
        sd_redis__async_give_up(&r->ac);
        sd_log(SD_LOG_INFO, "redis.cluster_detected", "host=%s ranges=%zu", r->seed_host,
               reply->elements);
        r->cluster = sd_redis__acluster_new(r, r->loop, &r->url, &r->opts, reply, r->seed_host);
        return;
    }
    /* An ACL user without the right to ask (NOPERM) is taken for a single server too, rather
     * than never connecting. */
    int single = reply->type == REDIS_REPLY_ERROR &&
                 (strstr(reply->str, "cluster support disabled") != NULL ||
                  strncmp(reply->str, "ERR unknown command", 19) == 0 ||
                  strncmp(reply->str, "NOPERM", 6) == 0);
    if (!single) {
        sd_log(SD_LOG_WARN, "redis.cluster_probe_failed", "error=\"%.100s\"",
               reply->type == REDIS_REPLY_ERROR ? reply->str : "no slot is assigned");
        redisAsyncDisconnect(ac);
        return;
    }
    r->probe = 0;
    if (send_handshake(r) != 0)
        redisAsyncDisconnect(ac);
}

redisAsyncContext *sd_redis__async_open(uv_loop_t *loop, const sd_redis_url *url, void *data,
                                        redisConnectCallback *on_connect,
                                        redisDisconnectCallback *on_disconnect, char *err,
                                        size_t errlen) {
    redisAsyncContext *ac =
        url->path ? redisAsyncConnectUnix(url->path) : redisAsyncConnect(url->host, url->port);
    if (ac == NULL || ac->err || redisLibuvAttach(ac, loop) != REDIS_OK) {
        snprintf(err, errlen, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    ac->data = data;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

void sd_redis__async_give_up(redisAsyncContext **ac) {
    redisAsyncContext *given_up = *ac;
    *ac = NULL;
    if (given_up)
        redisAsyncFree(given_up);
}

static void aredis_connect(sd_aredis *r) {
    r->state = AS_CONNECTING;
    char err[160];
    /* While probing, each attempt goes to the next seed of the URL (then the first again). */
    sd_redis_url seed;
    if (r->probe && sd_redis__seed_url(&r->url, r->seed, &seed) != 0) {
        r->seed = 0;
        sd_redis__seed_url(&r->url, 0, &seed);
    }
    const sd_redis_url *target = r->probe ? &seed : &r->url;
    if (target->host)
        snprintf(r->seed_host, sizeof r->seed_host, "%s", target->host);
    redisAsyncContext *ac =
        sd_redis__async_open(r->loop, target, r, on_connect, on_disconnect, err, sizeof err);
    if (r->probe)
        sd_redis_url_clear(&seed);
    if (ac == NULL) {
        sd_log(SD_LOG_DEBUG, "redis.connect_failed", "error=\"%s\"", err);
        schedule_reconnect(r);
        return;
    }
    r->ac = ac;
    uv_timer_start(&r->conn_timer, on_conn_timer, (uint64_t)r->opts.connect_timeout_ms, 0);
}

static sd_aredis *aredis_alloc(uv_loop_t *loop, const sd_redis_url *url,
                               const sd_redis_opts *opts) {
    sd_redis__ignore_sigpipe();
    sd_aredis *r = sd_xcalloc(1, sizeof *r);
    r->loop = loop;
    sd_redis_url_copy(&r->url, url);
    r->opts = sd_redis__opts_resolve(opts);
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->conn_timer);
    r->deadline_timer.data = r;
    r->conn_timer.data = r;
    r->open_handles = 2;
    return r;
}

sd_aredis *sd_aredis__new_node(uv_loop_t *loop, const sd_redis_url *url,
                               const sd_redis_opts *opts) {
    sd_aredis *r = aredis_alloc(loop, url, opts);
    aredis_connect(r);
    return r;
}

void sd_aredis__report_state(sd_aredis *r, int connected) {
    if (r->state_cb)
        r->state_cb(r, connected, r->state_privdata);
}

int sd_aredis_new(uv_loop_t *loop, const sd_redis_url *url, const sd_redis_opts *opts,
                  sd_aredis **out) {
    if ((url->host == NULL) == (url->path == NULL))
        return -EINVAL;
    sd_aredis *r = aredis_alloc(loop, url, opts);
    r->probe = url->path == NULL; /* a Unix socket is never a cluster node */
    aredis_connect(r);
    *out = r;
    return 0;
}

void sd_aredis_set_state_cb(sd_aredis *r, sd_aredis_state_cb *cb, void *privdata) {
    r->state_cb = cb;
    r->state_privdata = privdata;
}

int sd_aredis_is_connected(const sd_aredis *r) {
    if (r->cluster)
        return sd_redis__acluster_up(r->cluster);
    return r->state == AS_READY;
}

int sd_aredis_is_cluster(const sd_aredis *r) {
    return r->cluster != NULL;
}

size_t sd_aredis_pending(const sd_aredis *r) {
    if (r->cluster)
        return sd_redis__acluster_pending(r->cluster);
    return r->npending;
}

static void on_wait_timer(uv_timer_t *t) {
    *(int *)t->data = 1;
}

int sd_aredis_wait_connected(sd_aredis *r, int timeout_ms) {
    int expired = 0;
    uv_timer_t t;
    uv_timer_init(r->loop, &t);
    t.data = &expired;
    uv_timer_start(&t, on_wait_timer, (uint64_t)timeout_ms, 0);
    while (!sd_aredis_is_connected(r) && !expired)
        uv_run(r->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    /* Let libuv finish closing the stack timer before it goes out of scope. */
    uv_run(r->loop, UV_RUN_NOWAIT);
    return sd_aredis_is_connected(r) ? 0 : SD_ETIMEDOUT;
}

/* Accepts a formatted command: registers the request, hands the bytes to hiredis (which copies
 * them), arms the deadline. For a script the request keeps cmd, for the NOSCRIPT retry: it takes
 * ownership of it on success unless `borrowed`; otherwise the caller frees it. */
static int send_formatted(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms, char *cmd,
                          size_t len, sd_script *script, int borrowed) {
    if (r->state == AS_CLOSED)
        return SD_ECLOSED;
    if (r->state != AS_READY)
        return SD_EDISCONNECTED;
    struct areq *q = sd_xcalloc(1, sizeof *q);
    q->owner = r;
    q->cb = cb;
    q->privdata = privdata;
    q->script = script;
    int ms = timeout_ms > 0 ? timeout_ms : r->opts.command_timeout_ms;
    q->deadline_ns = sd_now_ns() + (uint64_t)ms * 1000000u;
    list_push(r, q);
    if (redisAsyncFormattedCommand(r->ac, on_reply, q, cmd, len) != REDIS_OK) {
        areq_free(r, q);
        return SD_EDISCONNECTED;
    }
    if (script) {
        q->cmd = cmd;
        q->cmdlen = len;
        q->cmd_borrowed = borrowed;
    }
    r->npending++;
    arm_deadline(r, q->deadline_ns);
    return 0;
}

void sd_aredis_read(sd_aredis *r) {
    if (r && r->cluster) {
        sd_redis__acluster_read(r->cluster);
        return;
    }
    /* A non-blocking read: nothing arrived is EAGAIN, not an error. */
    if (r && (r->state == AS_READY || r->state == AS_HANDSHAKE) && r->ac)
        redisAsyncHandleRead(r->ac);
}

int sd_redis__aredis_closed(const sd_aredis *r) {
    return r->state == AS_CLOSED;
}

void sd_aredis_flush(sd_aredis *r) {
    if (r && r->cluster) {
        sd_redis__acluster_flush(r->cluster);
        return;
    }
    /* hiredis keeps unwritten bytes in obuf (an sds string, so "" when nothing is left). */
    if (r && r->state == AS_READY && r->ac && r->ac->c.obuf[0] != '\0')
        redisAsyncHandleWrite(r->ac);
}

int sd_aredis_commandv(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms, int argc,
                       const char **argv, const size_t *argvlen) {
    if (r->cluster && r->state != AS_CLOSED)
        return sd_redis__acluster_send(r->cluster, cb, privdata, timeout_ms, NULL, 0, argc, argv,
                                       argvlen);
    char *cmd = NULL;
    size_t len = sd_redis__resp_format(&cmd, argc, argv, argvlen);
    int rc = send_formatted(r, cb, privdata, timeout_ms, cmd, len, NULL, 0);
    free(cmd);
    return rc;
}

int sd_aredis_command(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms,
                      const char *fmt, ...) {
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return SD_EPARSE;
    if (r->cluster && r->state != AS_CLOSED) {
        /* The router needs the keys to find the slot: split the formatted command (arguments
         * point into cmd) and hand it over as it is, formatted once. */
        const char *small[16];
        size_t smalllen[16];
        int max = atoi(cmd + 1); /* the argument count of the formatted "*N\r\n..." */
        max = max > 0 ? max : 1;
        const char **argv = max <= 16 ? small : sd_xmalloc((size_t)max * sizeof *argv);
        size_t *lens = max <= 16 ? smalllen : sd_xmalloc((size_t)max * sizeof *lens);
        int argc = sd_redis__resp_argv(cmd, (size_t)len, max, argv, lens);
        int slot = argc < 0 ? SD_EPARSE : sd_redis__acluster_slot(argc, argv, lens);
        if (argv != small) {
            free(argv);
            free(lens);
        }
        if (slot < -1) {
            free(cmd);
            return SD_EPARSE;
        }
        return sd_redis__acluster_send_formatted(r->cluster, cb, privdata, timeout_ms, NULL, cmd,
                                                 (size_t)len, slot);
    }
    int rc = send_formatted(r, cb, privdata, timeout_ms, cmd, (size_t)len, NULL, 0);
    free(cmd);
    return rc;
}

int sd_aredis_script(sd_aredis *r, sd_script *script, sd_aredis_cb *cb, void *privdata,
                     int timeout_ms, int nkeys, int argc, const char **argv,
                     const size_t *argvlen) {
    if (r->cluster && r->state != AS_CLOSED)
        return sd_redis__acluster_send(r->cluster, cb, privdata, timeout_ms, script, nkeys, argc,
                                       argv, argvlen);
    struct sd_redis__script_call call;
    sd_redis__script_call_init(&call, script, nkeys, argc, argv, argvlen);
    char *cmd = NULL;
    size_t len = sd_redis__resp_format(&cmd, call.argc, call.argv, call.lens);
    sd_redis__script_call_release(&call);
    int rc = send_formatted(r, cb, privdata, timeout_ms, cmd, len, script, 0);
    if (rc != 0)
        free(cmd);
    return rc;
}

int sd_aredis__send_formatted(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms,
                              const char *cmd, size_t len, sd_script *script) {
    return send_formatted(r, cb, privdata, timeout_ms, (char *)cmd, len, script, 1);
}

static void on_handle_closed(uv_handle_t *h) {
    sd_aredis *r = h->data;
    if (--r->open_handles > 0)
        return;
    /* hiredis has answered every request it held by now (see sd_aredis_free); anything left
     * was never its to answer. */
    while (r->head)
        areq_free(r, r->head);
    sd_redis_url_clear(&r->url);
    sd_redis__opts_clear(&r->opts);
    free(r);
}

/*
 * Requests are only ever freed in on_reply, when hiredis gives them back, because hiredis may
 * still hold them here: sd_aredis_free can run inside a hiredis callback (a caller frees the
 * connection from its reply callback), where redisAsyncFree is deferred until that callback
 * returns, or inside hiredis's own teardown of a dropped connection, which is walking its list
 * of pending callbacks. So this function runs each caller's callback now (SD_ECLOSED) and
 * leaves the freeing to on_reply; the struct itself lives until the timers are closed, which
 * is after hiredis is done with it.
 */
void sd_aredis_free(sd_aredis *r) {
    if (r == NULL || r->state == AS_CLOSED)
        return;
    r->state = AS_CLOSED;
    r->state_cb = NULL;
    sd_redis__acluster_free(r->cluster);
    r->cluster = NULL;
    for (struct areq *q = r->head; q != NULL; q = q->next)
        areq_finish(r, q, NULL, SD_ECLOSED);
    sd_redis__async_give_up(&r->ac);
    uv_close((uv_handle_t *)&r->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->conn_timer, on_handle_closed);
}
