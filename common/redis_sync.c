/*
 * redis_sync.c - the synchronous connection (see redis.h): a hiredis context with a connect
 * timeout and a per-command socket timeout, reconnected inside later calls after a capped
 * backoff, and scripts run as EVALSHA with EVAL after NOSCRIPT, both steps within one timeout.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"
#include "sd.h"

/* hiredis writes with write(2), and a write to a connection Redis has closed raises SIGPIPE,
 * whose default is to kill the process. Every connection therefore sets SIGPIPE to ignored (the
 * write then fails with EPIPE and the connection is lost like any other), unless the program
 * has chosen a disposition of its own. This affects the whole process. */
void sd_redis__ignore_sigpipe(void) {
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

static struct timeval ms_to_tv(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* ---- Synchronous connection ---------------------------------------------------------------- */

struct sd_redis {
    sd_redis_url url;
    sd_redis_opts opts;
    redisContext *c;      /* NULL while disconnected */
    uint64_t retry_at_ms; /* no reconnect attempt before this (monotonic ms) */
    int backoff_ms;       /* current backoff step, 0 after a success */
    int timeout_ms;       /* per-command socket timeout */
    char err[160];
    /* Redis Cluster (redis_cluster.c): probe says to ask INFO cluster on the next successful
     * connect; once the server is a cluster node, every call goes to the router instead. */
    int probe;
    struct sd_redis__cluster *cluster;
};

/* Runs one handshake command on a fresh context; returns 0 or SD_EREDIS / SD_EDISCONNECTED. */
static int handshake_step(sd_redis *r, int argc, const char **argv) {
    redisReply *reply = redisCommandArgv(r->c, argc, argv, NULL);
    if (reply == NULL) {
        snprintf(r->err, sizeof r->err, "%s during %s", r->c->errstr, argv[0]);
        return SD_EDISCONNECTED;
    }
    int rc = reply->type == REDIS_REPLY_ERROR ? SD_EREDIS : 0;
    if (rc)
        snprintf(r->err, sizeof r->err, "%s refused: %.100s", argv[0], reply->str);
    freeReplyObject(reply);
    return rc;
}

static void drop_context(sd_redis *r) {
    if (r->c)
        redisFree(r->c);
    r->c = NULL;
}

/* Loads the connection's scripts on a fresh context, all SCRIPT LOADs written at once and their
 * replies read in order. Returns 0, or SD_ETIMEDOUT / SD_EDISCONNECTED when the connection
 * failed. A refused load is logged, not an error: the script's calls will report it. */
static int load_scripts(sd_redis *r) {
    for (size_t i = 0; i < r->opts.nscripts; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", r->opts.scripts[i]->body};
        const size_t lens[3] = {6, 4, r->opts.scripts[i]->len};
        if (redisAppendCommandArgv(r->c, 3, argv, lens) != REDIS_OK) {
            snprintf(r->err, sizeof r->err, "out of memory during SCRIPT LOAD");
            return SD_EDISCONNECTED;
        }
    }
    for (size_t i = 0; i < r->opts.nscripts; i++) {
        redisReply *reply = NULL;
        errno = 0;
        if (redisGetReply(r->c, (void **)&reply) != REDIS_OK) {
            snprintf(r->err, sizeof r->err, "%s during SCRIPT LOAD", r->c->errstr);
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? SD_ETIMEDOUT : SD_EDISCONNECTED;
        }
        if (reply->type == REDIS_REPLY_ERROR)
            sd_log(SD_LOG_ERROR, "redis.script_load_refused", "script=%s error=\"%.100s\"",
                   r->opts.scripts[i]->name, reply->str);
        freeReplyObject(reply);
    }
    return 0;
}

/* Connects now: TCP or unix, timeouts, AUTH, SELECT, SCRIPT LOAD. On failure schedules the next
 * attempt. */
static int connect_now(sd_redis *r) {
    /* A reconnect inside a command must not outlast the command's own timeout: callers with a
     * deadline (a rate-limit decision) set the command timeout to the time they have left. */
    int ms = r->opts.connect_timeout_ms;
    if (r->timeout_ms > 0 && r->timeout_ms < ms)
        ms = r->timeout_ms;
    struct timeval ctv = ms_to_tv(ms);
    errno = 0;
    r->c = r->url.path ? redisConnectUnixWithTimeout(r->url.path, ctv)
                       : redisConnectWithTimeout(r->url.host, r->url.port, ctv);
    int rc = 0;
    if (r->c == NULL) {
        snprintf(r->err, sizeof r->err, "out of memory");
        rc = SD_EDISCONNECTED;
    } else if (r->c->err) {
        snprintf(r->err, sizeof r->err, "connect: %s", r->c->errstr);
        rc = (errno == ETIMEDOUT || errno == EINPROGRESS) ? SD_ETIMEDOUT : SD_EDISCONNECTED;
    } else {
        redisSetTimeout(r->c, ms_to_tv(r->timeout_ms));
        if (r->url.password) {
            const char *auth[3] = {"AUTH", r->url.user ? r->url.user : r->url.password,
                                   r->url.password};
            rc = handshake_step(r, r->url.user ? 3 : 2, auth);
        }
        if (rc == 0 && r->url.db != 0) {
            char db[16];
            snprintf(db, sizeof db, "%d", r->url.db);
            const char *select[2] = {"SELECT", db};
            rc = handshake_step(r, 2, select);
        }
        if (rc == 0 && (rc = load_scripts(r)) != 0) {
            /* The server took the connection and the AUTH: it is slow, not down. Like a command
             * that fails, this drops the context without a backoff, so the next call tries again
             * at once (and a frozen server costs each call its timeout, as before the loads). */
            drop_context(r);
            r->retry_at_ms = 0;
            return rc;
        }
    }
    if (rc != 0) {
        drop_context(r);
        r->backoff_ms = sd_redis__backoff_next(r->backoff_ms, &r->opts);
        r->retry_at_ms = sd_now_ms() + (uint64_t)r->backoff_ms;
        char where[256];
        sd_log(SD_LOG_WARN, "redis.connect_failed", "url=%s error=\"%s\" retry_in_ms=%d",
               sd_redis_url_format(&r->url, where, sizeof where), r->err, r->backoff_ms);
        return rc;
    }
    r->backoff_ms = 0;
    if (r->probe) {
        int on = sd_redis__cluster_probe(r->c);
        r->probe = on < 0;
        if (on == 1) {
            /* From now on this context is not used: the router keeps one per master. */
            drop_context(r);
            r->cluster = sd_redis__cluster_new(&r->url, &r->opts, r->timeout_ms);
            return sd_redis__cluster_start(r->cluster);
        }
    }
    return 0;
}

/* Makes sure there is a usable context, reconnecting if the backoff allows. */
static int ensure_connected(sd_redis *r) {
    if (r->c && r->c->err == 0)
        return 0;
    drop_context(r);
    if (sd_now_ms() < r->retry_at_ms) {
        snprintf(r->err, sizeof r->err, "Redis is down; next reconnect attempt in %d ms",
                 (int)(r->retry_at_ms - sd_now_ms()));
        return SD_EDISCONNECTED;
    }
    return connect_now(r);
}

/* Classifies a failed call (NULL reply): a socket timeout or a broken connection. In both
 * cases the reply stream is out of step with our requests, so the context is dropped and the
 * next call reconnects (at once: this was not a failed connect). */
static int fail_call(sd_redis *r, int saved_errno) {
    int rc =
        (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK) ? SD_ETIMEDOUT : SD_EDISCONNECTED;
    snprintf(r->err, sizeof r->err, "%s", r->c && r->c->errstr[0] ? r->c->errstr : "I/O error");
    drop_context(r);
    r->retry_at_ms = 0;
    return rc;
}

static sd_redis *redis_alloc(const sd_redis_url *url, const sd_redis_opts *opts) {
    sd_redis *r = sd_xcalloc(1, sizeof *r);
    sd_redis_url_copy(&r->url, url);
    r->opts = sd_redis__opts_resolve(opts);
    r->timeout_ms = r->opts.command_timeout_ms;
    r->probe = 1;
    if (url->seeds) {
        r->probe = 0;
        r->cluster = sd_redis__cluster_new(url, opts, r->timeout_ms);
    }
    return r;
}

sd_redis *sd_redis__new_node(const sd_redis_url *url, const sd_redis_opts *opts) {
    sd_redis *r = sd_xcalloc(1, sizeof *r);
    sd_redis_url_copy(&r->url, url);
    r->opts = sd_redis__opts_resolve(opts);
    r->timeout_ms = r->opts.command_timeout_ms;
    connect_now(r); /* a failure only starts the backoff */
    return r;
}

int sd_redis_connect(const sd_redis_url *url, const sd_redis_opts *opts, sd_redis **out) {
    sd_redis__ignore_sigpipe();
    sd_redis *r = redis_alloc(url, opts);
    int rc = r->cluster ? sd_redis__cluster_start(r->cluster) : connect_now(r);
    if (rc != 0) {
        sd_redis_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

sd_redis *sd_redis_new(const sd_redis_url *url, const sd_redis_opts *opts) {
    sd_redis__ignore_sigpipe();
    sd_redis *r = redis_alloc(url, opts);
    /* A failure only starts the backoff: later calls reconnect. */
    if (r->cluster)
        sd_redis__cluster_start(r->cluster);
    else
        connect_now(r);
    return r;
}

void sd_redis_free(sd_redis *r) {
    if (r == NULL)
        return;
    drop_context(r);
    sd_redis__cluster_free(r->cluster);
    sd_redis_url_clear(&r->url);
    sd_redis__opts_clear(&r->opts);
    free(r);
}

void sd_redis_set_timeout(sd_redis *r, int timeout_ms) {
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : r->opts.command_timeout_ms;
    if (r->c)
        redisSetTimeout(r->c, ms_to_tv(r->timeout_ms));
    if (r->cluster)
        sd_redis__cluster_set_timeout(r->cluster, r->timeout_ms);
}

const char *sd_redis_errstr(const sd_redis *r) {
    if (r->cluster)
        return sd_redis__cluster_errstr(r->cluster);
    return r->err;
}

static void set_err(int *err, int code) {
    if (err)
        *err = code;
}

redisReply *sd_redis_commandv(sd_redis *r, int *err, int argc, const char **argv,
                              const size_t *argvlen) {
    if (r->cluster)
        return sd_redis__cluster_commandv(r->cluster, err, argc, argv, argvlen);
    int rc = ensure_connected(r);
    if (rc != 0) {
        set_err(err, rc);
        return NULL;
    }
    errno = 0;
    redisReply *reply = redisCommandArgv(r->c, argc, argv, argvlen);
    if (reply == NULL)
        set_err(err, fail_call(r, errno));
    return reply;
}

redisReply *sd_redis_vcommand(sd_redis *r, int *err, const char *fmt, va_list ap) {
    if (r->cluster)
        return sd_redis__cluster_vcommand(r->cluster, err, fmt, ap);
    int rc = ensure_connected(r);
    if (rc != 0) {
        set_err(err, rc);
        return NULL;
    }
    errno = 0;
    redisReply *reply = redisvCommand(r->c, fmt, ap);
    if (reply == NULL)
        set_err(err, fail_call(r, errno));
    return reply;
}

redisReply *sd_redis_command(sd_redis *r, int *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = sd_redis_vcommand(r, err, fmt, ap);
    va_end(ap);
    return reply;
}

/* One step of sd_redis_script: the command, with the whole milliseconds left before deadline_ns
 * (the call's own, absolute deadline) as its timeout. */
static redisReply *script_step(sd_redis *r, int *err, uint64_t deadline_ns,
                               const struct sd_redis__script_call *call) {
    uint64_t now = sd_now_ns();
    int left = now < deadline_ns ? (int)((deadline_ns - now) / 1000000) : 0;
    if (left < 1) {
        set_err(err, SD_ETIMEDOUT);
        return NULL;
    }
    sd_redis_set_timeout(r, left);
    return sd_redis_commandv(r, err, call->argc, call->argv, call->lens);
}

redisReply *sd_redis_script(sd_redis *r, int *err, int timeout_ms, sd_script *script, int nkeys,
                            int argc, const char **argv, const size_t *argvlen) {
    int own_timeout = r->timeout_ms;
    uint64_t deadline_ns =
        sd_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : own_timeout) * 1000000u;
    struct sd_redis__script_call call;
    sd_redis__script_call_init(&call, script, nkeys, argc, argv, argvlen);
    redisReply *reply = script_step(r, err, deadline_ns, &call);
    if (sd_redis__is_noscript(reply)) {
        freeReplyObject(reply);
        sd_redis__script_call_use_eval(&call, script);
        reply = script_step(r, err, deadline_ns, &call);
    }
    sd_redis__script_call_release(&call);
    sd_redis_set_timeout(r, own_timeout);
    return reply;
}

int sd_redis_append(sd_redis *r, const char *fmt, ...) {
    va_list ap;
    if (r->cluster) {
        char *cmd = NULL;
        va_start(ap, fmt);
        int len = redisvFormatCommand(&cmd, fmt, ap);
        va_end(ap);
        return len < 0 ? SD_EPARSE : sd_redis__cluster_append(r->cluster, cmd, (size_t)len);
    }
    int rc = ensure_connected(r);
    if (rc != 0)
        return rc;
    va_start(ap, fmt);
    rc = redisvAppendCommand(r->c, fmt, ap) == REDIS_OK ? 0 : SD_EPARSE;
    va_end(ap);
    return rc;
}

int sd_redis_appendv(sd_redis *r, int argc, const char **argv, const size_t *argvlen) {
    if (r->cluster) {
        char *cmd = NULL;
        int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
        return len < 0 ? SD_EPARSE : sd_redis__cluster_append(r->cluster, cmd, (size_t)len);
    }
    int rc = ensure_connected(r);
    if (rc != 0)
        return rc;
    return redisAppendCommandArgv(r->c, argc, argv, argvlen) == REDIS_OK ? 0 : SD_EPARSE;
}

redisReply *sd_redis_get_reply(sd_redis *r, int *err) {
    if (r->cluster)
        return sd_redis__cluster_get_reply(r->cluster, err);
    if (r->c == NULL) {
        set_err(err, SD_EDISCONNECTED);
        return NULL;
    }
    void *reply = NULL;
    errno = 0;
    if (redisGetReply(r->c, &reply) != REDIS_OK) {
        set_err(err, fail_call(r, errno));
        return NULL;
    }
    return reply;
}
