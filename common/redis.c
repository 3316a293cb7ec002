/*
 * redis.c - URLs, the sync and async Redis connections, and the script registry (see redis.h).
 *
 * The async connection, as a state machine:
 *
 *               sd_aredis_new
 *                     │
 *                     v        connect failed / timed out
 *   ┌──────────> CONNECTING ──────────────────────────────┐
 *   │                 │ TCP up: AUTH, SELECT sent          │
 *   │                 v                                   v
 *   │            HANDSHAKE ──── AUTH/SELECT refused ──> WAITING (backoff timer)
 *   │                 │ last handshake reply OK             │
 *   │                 v                                   │
 *   │              READY ──── connection lost ──────────────┤
 *   └─────────────────────────────────────────────────────┘ backoff elapsed
 *
 * Only READY accepts commands; in every other state sd_aredis_command fails at once with
 * SD_EDISCONNECTED, which is what lets callers bound their decision time when Redis is down.
 *
 * Deadlines. Each accepted command is a `struct areq` on the connection's pending list (a
 * doubly linked list, in send order). One uv_timer is armed for the earliest deadline. When it
 * fires, every expired request's callback runs with SD_ETIMEDOUT and the request is marked
 * `expired`; it stays on the list, because hiredis will still call us with its reply (or with
 * NULL when the connection goes), and only then may the request be freed. So a callback runs
 * exactly once, however late the reply.
 */
#include "redis.h"

#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "redis_server.h"
#include "sd.h"

/* ---- URLs ---------------------------------------------------------------------------------- */

static int url_error(char *err, size_t errlen, const char *msg) {
    if (err && errlen)
        snprintf(err, errlen, "invalid Redis URL: %s", msg);
    return SD_EPARSE;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes %XX escapes of s[0..n) into a new string, or returns NULL on a bad escape. */
static char *percent_decode(const char *s, size_t n) {
    char *out = sd_xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = i + 2 < n + 1 ? hexval(s[i + 1]) : -1;
        int lo = hi >= 0 && i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

static int parse_db(const char *s, size_t n, int *db) {
    if (n == 0 || n > 9)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *db = v;
    return 0;
}

/* Parses "[user][:password]@" from the start of an authority of length n. Returns the number of
 * bytes consumed (0 when there is no '@'), or -1 on a bad escape. */
static long parse_userinfo(const char *a, size_t n, sd_redis_url *u) {
    const char *at = memrchr(a, '@', n);
    if (at == NULL)
        return 0;
    size_t len = (size_t)(at - a);
    const char *colon = memchr(a, ':', len);
    size_t ulen = colon ? (size_t)(colon - a) : len;
    if (ulen > 0 && (u->user = percent_decode(a, ulen)) == NULL)
        return -1;
    if (colon && (u->password = percent_decode(colon + 1, len - ulen - 1)) == NULL)
        return -1;
    return (long)(len + 1);
}

static int parse_tcp(const char *s, sd_redis_url *u, char *err, size_t errlen) {
    size_t alen = strcspn(s, "/?#");
    long used = parse_userinfo(s, alen, u);
    if (used < 0)
        return url_error(err, errlen, "bad %-escape in the user or password");
    const char *h = s + used, *end = s + alen;
    const char *hend, *port = NULL;
    if (h < end && *h == '[') {
        hend = memchr(h, ']', (size_t)(end - h));
        if (hend == NULL)
            return url_error(err, errlen, "unclosed '[' in the host");
        u->host = sd_xstrndup(h + 1, (size_t)(hend - h - 1));
        hend++;
        if (hend < end && *hend != ':')
            return url_error(err, errlen, "unexpected text after ']'");
        port = hend < end ? hend + 1 : NULL;
    } else {
        const char *colon = memchr(h, ':', (size_t)(end - h));
        hend = colon ? colon : end;
        u->host = sd_xstrndup(h, (size_t)(hend - h));
        port = colon ? colon + 1 : NULL;
    }
    if (u->host[0] == '\0')
        return url_error(err, errlen, "the host is empty");
    if (port) {
        int p = 0;
        if (port == end || end - port > 5)
            return url_error(err, errlen, "the port must be a number from 1 to 65535");
        for (const char *c = port; c < end; c++) {
            if (*c < '0' || *c > '9')
                return url_error(err, errlen, "the port must be a number from 1 to 65535");
            p = p * 10 + (*c - '0');
        }
        if (p < 1 || p > 65535)
            return url_error(err, errlen, "the port must be a number from 1 to 65535");
        u->port = p;
    }
    const char *rest = end;
    if (*rest == '/') {
        rest++;
        size_t dlen = strcspn(rest, "?#");
        if (dlen > 0 && parse_db(rest, dlen, &u->db) != 0)
            return url_error(err, errlen, "the path must be a database number (/0, /1, ...)");
        rest += dlen;
    }
    if (*rest != '\0')
        return url_error(err, errlen, "query strings and fragments are not supported");
    return 0;
}

static int parse_unix(const char *s, sd_redis_url *u, char *err, size_t errlen) {
    if (*s != '/')
        return url_error(err, errlen, "a unix URL needs an absolute path: unix:///path/to.sock");
    size_t plen = strcspn(s, "?#");
    u->path = sd_xstrndup(s, plen);
    const char *q = s + plen;
    if (*q == '\0')
        return 0;
    if (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, strlen(q + 4), &u->db) != 0)
        return url_error(err, errlen, "the only query a unix URL takes is ?db=N");
    return 0;
}

int sd_redis_url_parse(const char *text, sd_redis_url *out, char *err, size_t errlen) {
    sd_redis_url u = {.port = 6379};
    int rc;
    if (text == NULL || *text == '\0')
        rc = url_error(err, errlen, "empty");
    else if (strncmp(text, "redis://", 8) == 0)
        rc = parse_tcp(text + 8, &u, err, errlen);
    else if (strncmp(text, "unix://", 7) == 0)
        rc = parse_unix(text + 7, &u, err, errlen);
    else if (strncmp(text, "rediss://", 9) == 0)
        rc = url_error(err, errlen, "TLS (rediss://) is not supported by this build");
    else
        rc = url_error(err, errlen, "it must start with redis:// or unix://");
    if (rc != 0) {
        sd_redis_url_clear(&u);
        return rc;
    }
    *out = u;
    return 0;
}

void sd_redis_url_clear(sd_redis_url *url) {
    free(url->host);
    free(url->path);
    free(url->user);
    if (url->password) {
        memset(url->password, 0, strlen(url->password));
        free(url->password);
    }
    memset(url, 0, sizeof *url);
}

static char *dup_or_null(const char *s) {
    return s ? sd_xstrdup(s) : NULL;
}

void sd_redis_url_copy(sd_redis_url *dst, const sd_redis_url *src) {
    *dst = *src;
    dst->host = dup_or_null(src->host);
    dst->path = dup_or_null(src->path);
    dst->user = dup_or_null(src->user);
    dst->password = dup_or_null(src->password);
}

const char *sd_redis_url_format(const sd_redis_url *url, char *buf, size_t buflen) {
    char auth[160] = "";
    if (url->user || url->password)
        snprintf(auth, sizeof auth, "%s%s@", url->user ? url->user : "",
                 url->password ? ":***" : "");
    if (url->path && url->db)
        snprintf(buf, buflen, "unix://%s?db=%d", url->path, url->db);
    else if (url->path)
        snprintf(buf, buflen, "unix://%s", url->path);
    else if (strchr(url->host, ':'))
        snprintf(buf, buflen, "redis://%s[%s]:%d/%d", auth, url->host, url->port, url->db);
    else
        snprintf(buf, buflen, "redis://%s%s:%d/%d", auth, url->host, url->port, url->db);
    return buf;
}

void sd_redis_opts_default(sd_redis_opts *opts) {
    opts->connect_timeout_ms = 1000;
    opts->command_timeout_ms = 1000;
    opts->reconnect_min_ms = 50;
    opts->reconnect_max_ms = 2000;
}

static sd_redis_opts opts_or_default(const sd_redis_opts *opts) {
    sd_redis_opts o;
    sd_redis_opts_default(&o);
    if (opts) {
        if (opts->connect_timeout_ms > 0)
            o.connect_timeout_ms = opts->connect_timeout_ms;
        if (opts->command_timeout_ms > 0)
            o.command_timeout_ms = opts->command_timeout_ms;
        if (opts->reconnect_min_ms > 0)
            o.reconnect_min_ms = opts->reconnect_min_ms;
        if (opts->reconnect_max_ms > 0)
            o.reconnect_max_ms = opts->reconnect_max_ms;
    }
    return o;
}

static struct timeval ms_to_tv(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Next backoff step: doubles from min up to max. */
static int backoff_next(int current, const sd_redis_opts *o) {
    if (current <= 0)
        return o->reconnect_min_ms;
    return current * 2 > o->reconnect_max_ms ? o->reconnect_max_ms : current * 2;
}

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
static size_t resp_format(char **out, int argc, const char **argv, const size_t *lens) {
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

/* ---- Scripts -------------------------------------------------------------------------------- */

void sd_script_init(sd_script *script) {
    if (script->sha[0])
        return;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(script->body, script->len, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        fprintf(stderr, "fatal: SHA1 of script %s failed\n", script->name);
        abort();
    }
    char hex[41];
    for (unsigned i = 0; i < 20; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    memcpy(script->sha, hex, sizeof hex);
}

static int is_noscript(const redisReply *reply) {
    return reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* The argv of "EVALSHA sha nkeys args..." (or "EVAL body nkeys args..."): small calls use the
 * arrays inside the struct, larger ones allocate (script_call_release frees them). */
struct script_call {
    const char *small[32];
    size_t smalllen[32];
    const char **argv;
    size_t *lens;
    int argc;
    char nkeys[16];
};

static void script_call_init(struct script_call *c, sd_script *script, int nkeys, int argc,
                             const char **argv, const size_t *argvlen) {
    sd_script_init(script);
    c->argc = argc + 3;
    c->argv = c->small;
    c->lens = c->smalllen;
    if (c->argc > 32) {
        c->argv = sd_xmalloc(sizeof *c->argv * (size_t)c->argc);
        c->lens = sd_xmalloc(sizeof *c->lens * (size_t)c->argc);
    }
    snprintf(c->nkeys, sizeof c->nkeys, "%d", nkeys);
    c->argv[0] = "EVALSHA";
    c->lens[0] = 7;
    c->argv[1] = script->sha;
    c->lens[1] = 40;
    c->argv[2] = c->nkeys;
    c->lens[2] = strlen(c->nkeys);
    for (int i = 0; i < argc; i++) {
        c->argv[3 + i] = argv[i];
        c->lens[3 + i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
}

/* Turns the call into "EVAL body ...", for the retry after NOSCRIPT. */
static void script_call_use_eval(struct script_call *c, const sd_script *script) {
    c->argv[0] = "EVAL";
    c->lens[0] = 4;
    c->argv[1] = script->body;
    c->lens[1] = script->len;
}

static void script_call_release(struct script_call *c) {
    if (c->argv != c->small) {
        free(c->argv);
        free(c->lens);
    }
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

/* Connects now: TCP or unix, timeouts, AUTH, SELECT. On failure schedules the next attempt. */
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
    }
    if (rc != 0) {
        drop_context(r);
        r->backoff_ms = backoff_next(r->backoff_ms, &r->opts);
        r->retry_at_ms = sd_now_ms() + (uint64_t)r->backoff_ms;
        char where[256];
        sd_log(SD_LOG_WARN, "redis.connect_failed", "url=%s error=\"%s\" retry_in_ms=%d",
               sd_redis_url_format(&r->url, where, sizeof where), r->err, r->backoff_ms);
        return rc;
    }
    r->backoff_ms = 0;
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
    r->opts = opts_or_default(opts);
    r->timeout_ms = r->opts.command_timeout_ms;
    return r;
}

/* hiredis writes with write(2), and a write to a connection Redis has closed raises SIGPIPE,
 * whose default is to kill the process. Every connection therefore sets SIGPIPE to ignored (the
 * write then fails with EPIPE and the connection is lost like any other), unless the program
 * has chosen a disposition of its own. This affects the whole process. */
static void ignore_sigpipe(void) {
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

int sd_redis_connect(const sd_redis_url *url, const sd_redis_opts *opts, sd_redis **out) {
    ignore_sigpipe();
    sd_redis *r = redis_alloc(url, opts);
    int rc = connect_now(r);
    if (rc != 0) {
        sd_redis_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

sd_redis *sd_redis_new(const sd_redis_url *url, const sd_redis_opts *opts) {
    ignore_sigpipe();
    sd_redis *r = redis_alloc(url, opts);
    connect_now(r); /* a failure only starts the backoff: later calls reconnect */
    return r;
}

void sd_redis_free(sd_redis *r) {
    if (r == NULL)
        return;
    drop_context(r);
    sd_redis_url_clear(&r->url);
    free(r);
}

void sd_redis_set_timeout(sd_redis *r, int timeout_ms) {
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : r->opts.command_timeout_ms;
    if (r->c)
        redisSetTimeout(r->c, ms_to_tv(r->timeout_ms));
}

const char *sd_redis_errstr(const sd_redis *r) {
    return r->err;
}

static void set_err(int *err, int code) {
    if (err)
        *err = code;
}

redisReply *sd_redis_commandv(sd_redis *r, int *err, int argc, const char **argv,
                              const size_t *argvlen) {
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

/* One step of sd_redis_script: the command, with the time left before deadline_ns (if any) as
 * its timeout. */
static redisReply *script_step(sd_redis *r, int *err, uint64_t deadline_ns,
                               const struct script_call *call) {
    if (deadline_ns) {
        uint64_t now = sd_now_ns();
        int left = now < deadline_ns ? (int)((deadline_ns - now) / 1000000) : 0;
        if (left < 1) {
            set_err(err, SD_ETIMEDOUT);
            return NULL;
        }
        sd_redis_set_timeout(r, left);
    }
    return sd_redis_commandv(r, err, call->argc, call->argv, call->lens);
}

redisReply *sd_redis_script(sd_redis *r, int *err, uint64_t deadline_ns, sd_script *script,
                            int nkeys, int argc, const char **argv, const size_t *argvlen) {
    int own_timeout = r->timeout_ms;
    struct script_call call;
    script_call_init(&call, script, nkeys, argc, argv, argvlen);
    redisReply *reply = script_step(r, err, deadline_ns, &call);
    if (is_noscript(reply)) {
        freeReplyObject(reply);
        script_call_use_eval(&call, script);
        reply = script_step(r, err, deadline_ns, &call);
    }
    script_call_release(&call);
    if (deadline_ns)
        sd_redis_set_timeout(r, own_timeout);
    return reply;
}

int sd_redis_append(sd_redis *r, const char *fmt, ...) {
    int rc = ensure_connected(r);
    if (rc != 0)
        return rc;
    va_list ap;
    va_start(ap, fmt);
    rc = redisvAppendCommand(r->c, fmt, ap) == REDIS_OK ? 0 : SD_EPARSE;
    va_end(ap);
    return rc;
}

int sd_redis_appendv(sd_redis *r, int argc, const char **argv, const size_t *argvlen) {
    int rc = ensure_connected(r);
    if (rc != 0)
        return rc;
    return redisAppendCommandArgv(r->c, argc, argv, argvlen) == REDIS_OK ? 0 : SD_EPARSE;
}

redisReply *sd_redis_get_reply(sd_redis *r, int *err) {
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

/* ---- Asynchronous connection ---------------------------------------------------------------- */

enum astate { AS_CONNECTING, AS_HANDSHAKE, AS_READY, AS_WAITING, AS_CLOSED };

/* One command in flight. For scripts it keeps the formatted EVALSHA command, so that after a
 * NOSCRIPT reply it can be re-sent as EVAL without asking the caller for its arguments again. */
struct areq {
    struct areq *prev, *next;
    sd_aredis *owner;
    sd_aredis_cb *cb;
    void *privdata;
    uint64_t deadline_ns;
    int expired;       /* the callback already ran with SD_ETIMEDOUT */
    int internal;      /* a handshake command of ours (AUTH, SELECT) */
    sd_script *script; /* non-NULL for scripts until retried */
    char *cmd;         /* the formatted EVALSHA command (scripts only) */
    size_t cmdlen;
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
    free(q->cmd);
    free(q);
}

/* Runs the caller's callback once, for a request that has not expired. */
static void areq_finish(sd_aredis *r, struct areq *q, redisReply *reply, int status) {
    if (!q->expired && !q->internal) {
        r->npending--;
        q->expired = 1;
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
    redisAsyncContext *ac = r->ac;
    int was_ready = r->state == AS_READY;
    r->ac = NULL;
    r->state = AS_WAITING; /* so on_disconnect leaves the reconnect to us */
    redisAsyncFree(ac);
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
    uint64_t now = sd_now_ns(), next = 0;
    r->armed_ns = 0;
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
    r->backoff_ms = backoff_next(r->backoff_ms, &r->opts);
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
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        r->state = AS_WAITING;
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(r);
    }
}

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
    if (q->internal) {
        if (reply->type == REDIS_REPLY_ERROR) {
            sd_log(SD_LOG_ERROR, "redis.handshake_refused", "error=\"%.100s\"", reply->str);
            areq_free(r, q);
            redisAsyncDisconnect(ac);
            return;
        }
        areq_free(r, q);
        if (--r->handshake_left == 0 && r->state == AS_HANDSHAKE) {
            uv_timer_stop(&r->conn_timer);
            r->backoff_ms = 0;
            set_state(r, AS_READY);
        }
        return;
    }
    if (q->script && !q->expired && is_noscript(reply)) {
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
     * scheduled the next attempt. */
    if (r == NULL || r->state == AS_CLOSED || r->state == AS_WAITING)
        return;
    r->ac = NULL;
    sd_log(SD_LOG_WARN, "redis.disconnected", "error=\"%s\"",
           status == REDIS_OK ? "closed" : ac->errstr);
    set_state(r, AS_WAITING);
    if (r->state != AS_CLOSED) /* the state callback may free the connection */
        schedule_reconnect(r);
}

/* Sends a handshake command (AUTH, SELECT). Returns 0 or -1. */
static int send_internal(sd_aredis *r, int argc, const char **argv) {
    struct areq *q = sd_xcalloc(1, sizeof *q);
    q->owner = r;
    q->internal = 1;
    list_push(r, q);
    if (redisAsyncCommandArgv(r->ac, on_reply, q, argc, argv, NULL) != REDIS_OK) {
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
        rc |= send_internal(r, r->url.user ? 3 : 2, auth);
    }
    char db[16];
    snprintf(db, sizeof db, "%d", r->url.db);
    const char *select[2] = {"SELECT", db};
    const char *ping[1] = {"PING"};
    /* SELECT also serves as the readiness probe when there is nothing else to send. */
    rc |= r->url.db ? send_internal(r, 2, select) : send_internal(r, 1, ping);
    if (rc != 0)
        redisAsyncDisconnect(r->ac);
}

static void aredis_connect(sd_aredis *r) {
    r->state = AS_CONNECTING;
    redisAsyncContext *ac = r->url.path ? redisAsyncConnectUnix(r->url.path)
                                        : redisAsyncConnect(r->url.host, r->url.port);
    if (ac == NULL || ac->err || redisLibuvAttach(ac, r->loop) != REDIS_OK) {
        sd_log(SD_LOG_DEBUG, "redis.connect_failed", "error=\"%s\"",
               ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    uv_timer_start(&r->conn_timer, on_conn_timer, (uint64_t)r->opts.connect_timeout_ms, 0);
}

int sd_aredis_new(uv_loop_t *loop, const sd_redis_url *url, const sd_redis_opts *opts,
                  sd_aredis **out) {
    if ((url->host == NULL) == (url->path == NULL))
        return -EINVAL;
    ignore_sigpipe();
    sd_aredis *r = sd_xcalloc(1, sizeof *r);
    r->loop = loop;
    sd_redis_url_copy(&r->url, url);
    r->opts = opts_or_default(opts);
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->conn_timer);
    r->deadline_timer.data = r;
    r->conn_timer.data = r;
    r->open_handles = 2;
    aredis_connect(r);
    *out = r;
    return 0;
}

void sd_aredis_set_state_cb(sd_aredis *r, sd_aredis_state_cb *cb, void *privdata) {
    r->state_cb = cb;
    r->state_privdata = privdata;
}

int sd_aredis_is_connected(const sd_aredis *r) {
    return r->state == AS_READY;
}

size_t sd_aredis_pending(const sd_aredis *r) {
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
    while (r->state != AS_READY && !expired)
        uv_run(r->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    /* Let libuv finish closing the stack timer before it goes out of scope. */
    uv_run(r->loop, UV_RUN_NOWAIT);
    return r->state == AS_READY ? 0 : SD_ETIMEDOUT;
}

/* Accepts a formatted command: registers the request, hands the bytes to hiredis, arms the
 * deadline. Takes ownership of cmd when keep_cmd (a script), else the caller frees it. */
static int send_formatted(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms, char *cmd,
                          size_t len, sd_script *script) {
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
    }
    r->npending++;
    arm_deadline(r, q->deadline_ns);
    return 0;
}

void sd_aredis_flush(sd_aredis *r) {
    /* hiredis keeps unwritten bytes in obuf (an sds string, so "" when nothing is left). */
    if (r && r->state == AS_READY && r->ac && r->ac->c.obuf[0] != '\0')
        redisAsyncHandleWrite(r->ac);
}

int sd_aredis_commandv(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms, int argc,
                       const char **argv, const size_t *argvlen) {
    char *cmd = NULL;
    size_t len = resp_format(&cmd, argc, argv, argvlen);
    int rc = send_formatted(r, cb, privdata, timeout_ms, cmd, len, NULL);
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
    int rc = send_formatted(r, cb, privdata, timeout_ms, cmd, (size_t)len, NULL);
    free(cmd);
    return rc;
}

int sd_aredis_script(sd_aredis *r, sd_script *script, sd_aredis_cb *cb, void *privdata,
                     int timeout_ms, int nkeys, int argc, const char **argv,
                     const size_t *argvlen) {
    struct script_call call;
    script_call_init(&call, script, nkeys, argc, argv, argvlen);
    char *cmd = NULL;
    size_t len = resp_format(&cmd, call.argc, call.argv, call.lens);
    script_call_release(&call);
    int rc = send_formatted(r, cb, privdata, timeout_ms, cmd, len, script);
    if (rc != 0)
        free(cmd);
    return rc;
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
    for (struct areq *q = r->head; q != NULL; q = q->next)
        areq_finish(r, q, NULL, SD_ECLOSED);
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac)
        redisAsyncFree(ac);
    uv_close((uv_handle_t *)&r->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->conn_timer, on_handle_closed);
}

/* ---- Choosing a Redis ----------------------------------------------------------------------- */

int sd_redis_resolve(const char *flag_url, sd_redis_url *url, sd_redis_server **server_out) {
    const char *text = flag_url && *flag_url ? flag_url : getenv("REDIS_URL");
    const char *source = flag_url && *flag_url ? "--redis" : "REDIS_URL";
    *server_out = NULL;
    if (text && *text) {
        char err[160];
        if (sd_redis_url_parse(text, url, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", source, err);
            return SD_EPARSE;
        }
        char shown[256];
        fprintf(stderr, "redis: using %s (from %s)\n",
                sd_redis_url_format(url, shown, sizeof shown), source);
        return 0;
    }
    int rc = sd_redis_server_start(NULL, server_out);
    if (rc != 0)
        return rc;
    char err[160];
    rc = sd_redis_url_parse(sd_redis_server_url(*server_out), url, err, sizeof err);
    if (rc != 0) {
        sd_redis_server_stop(*server_out);
        *server_out = NULL;
        return rc;
    }
    fprintf(stderr, "redis: using %s (a private redis-server, pid %d, stopped at exit)\n",
            sd_redis_server_url(*server_out), (int)sd_redis_server_pid(*server_out));
    return 0;
}
