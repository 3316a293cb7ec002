/*
 * http_client.c - the HTTP/1.1 load target (see http_client.h).
 *
 * A connection moves through these states:
 *
 *            connect ok               request sent
 *   CONNECTING ---------> IDLE <------------------> BUSY
 *       ^   |              |    response complete     |
 *       |   | fails        | server closes            | error, timeout, server closes
 *       |   v              v                          v
 *       | BACKOFF <--- CLOSING (uv_close pending) <---+
 *       |   |  (after a failed connect,    | (otherwise)
 *       |   |   or a connection lost       |
 *       |   |   before its first response) |
 *       +---+------------------------------+  reconnect: after the backoff, or at once
 *
 * Backing off after a connection that the server closes before answering anything matters as
 * much as after a refused connect: a server that accepts and closes at once would otherwise be
 * reconnected to thousands of times a second.
 *
 * A server may answer before it has read the whole request (RFC 9112 section 9.3 lets it, for
 * instance to refuse a large body early). The response then completes while part of the request
 * is still queued in libuv's write request, which a connection cannot reuse until its write_cb
 * has run. Such a connection is closed once the operation completes, and reconnects: the rest of
 * the old request must not be taken by the server as the start of the next one anyway.
 *
 * IDLE connections sit on a stack so that the next request takes one in O(1); requests that find
 * none wait in a FIFO ring. One timer sweeps every SWEEP_MS for requests past their deadline and
 * connections whose backoff is over, which costs far less than a timer per request.
 *
 * The request bytes are built once at creation and written from that one buffer by every
 * connection (uv_try_write first, which usually writes all of it in one system call; uv_write
 * for whatever is left). With an extra_headers callback, each request is written as three
 * pieces, still in one system call: the shared bytes up to the blank line that ends the header,
 * the lines the callback wrote into the connection's own buffer, and the shared rest. Responses
 * are parsed with http_parser; only the status and the end of the message matter, so no header
 * is copied.
 */
#include "http_client.h"

#include <assert.h>
#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sd.h"

#define SWEEP_MS 20
#define BACKOFF_MIN_MS 10
#define BACKOFF_MAX_MS 1000
#define READ_BUF 16384

enum { CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_CLOSING, CONN_BACKOFF };

typedef struct http_target http_target;

typedef struct http_conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    http_parser parser;
    http_target *t;
    int state;
    int open;            /* tcp handle initialised and not yet closed */
    int write_pending;   /* write_req is queued in libuv: it cannot be reused until write_cb */
    int answered;        /* a response has arrived since this connection was made */
    int backoff_ms;      /* next backoff (0: none yet); reset by the first response */
    int backoff_after;   /* the close in progress is followed by a backoff */
    uint64_t retry_ns;   /* BACKOFF: when to connect again */
    void *token;         /* BUSY: the operation in flight */
    bench_done_fn *done; /* BUSY: its completion */
    uint64_t issued_ns;  /* BUSY: when the operation was issued, which starts its deadline */
    char rbuf[READ_BUF];
    char extra[BENCH_HTTP_EXTRA_MAX]; /* BUSY: this request's extra header lines */
} http_conn;

typedef struct http_waiter {
    void *token;
    bench_done_fn *done;
    uint64_t since_ns;
} http_waiter;

struct http_target {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char *request;
    size_t request_len;
    size_t head_len; /* bytes of request before the blank line that ends the header */
    bench_http_extra_fn *extra;
    void *extra_udata;
    uint64_t timeout_ns;
    bench_http_classify_fn *classify;
    void *classify_udata;
    http_parser_settings settings;

    http_conn *conns;
    int nconns;
    int *idle; /* stack of IDLE connection indexes */
    int nidle;
    int up;          /* connections IDLE or BUSY */
    int connecting;  /* connections CONNECTING */
    int backing_off; /* connections closing after a failed connect, or in BACKOFF */
    int last_error;  /* libuv code of the last failed connect */

    http_waiter *queue; /* FIFO ring */
    size_t qcap, qhead, qlen;

    uv_timer_t sweep;
    bench_later *later; /* completes operations that fail inside issue() (bench.h's rule) */
    int open_handles;
    int freeing;
    bench_http_stats stats;
};

static void conn_connect(http_conn *c);
static void conn_close(http_conn *c, int backoff);
static void conn_lost(http_conn *c);

/* ---- The waiting queue --------------------------------------------------------------------- */

static void queue_push(http_target *t, void *token, bench_done_fn *done) {
    if (t->qlen == t->qcap) {
        size_t ncap = t->qcap ? t->qcap * 2 : 1024;
        http_waiter *q = sd_xmalloc(ncap * sizeof *q);
        for (size_t i = 0; i < t->qlen; i++)
            q[i] = t->queue[(t->qhead + i) % t->qcap];
        free(t->queue);
        t->queue = q;
        t->qcap = ncap;
        t->qhead = 0;
    }
    t->queue[(t->qhead + t->qlen) % t->qcap] = (http_waiter){token, done, sd_now_ns()};
    t->qlen++;
}

static http_waiter queue_pop(http_target *t) {
    http_waiter w = t->queue[t->qhead];
    t->qhead = (t->qhead + 1) % t->qcap;
    t->qlen--;
    return w;
}

/* Fails every queued operation with `kind`. */
static void queue_fail_all(http_target *t, int kind) {
    while (t->qlen > 0) {
        http_waiter w = queue_pop(t);
        w.done(w.token, kind);
    }
}

/* ---- Sending ------------------------------------------------------------------------------- */

/* Takes the operation off a BUSY connection (so that it is completed exactly once). */
static void conn_take_op(http_conn *c, void **token, bench_done_fn **done) {
    *token = c->token;
    *done = c->done;
    c->token = NULL;
    c->done = NULL;
}

static void conn_fail_op(http_conn *c, int kind) {
    void *token;
    bench_done_fn *done;
    conn_take_op(c, &token, &done);
    if (done)
        done(token, kind);
}

/* The same from conn_send(), which may run inside issue(): the completion comes from the loop. */
static void conn_fail_op_later(http_conn *c, int kind) {
    void *token;
    bench_done_fn *done;
    conn_take_op(c, &token, &done);
    if (done)
        bench_later_done(c->t->later, token, done, kind);
}

/* A connection is never reused while its write is pending (see the top of the file), so a
 * failed write always belongs to the operation in flight, if any is left. */
static void write_cb(uv_write_t *req, int status) {
    http_conn *c = req->data;
    c->write_pending = 0;
    if (status == 0 || status == UV_ECANCELED || c->state != CONN_BUSY)
        return;
    conn_fail_op(c, BENCH_ERR_CONNECT);
    conn_lost(c);
}

/* Sends an operation issued at issued_ns; its deadline runs from then, so that the time spent
 * waiting for a connection and the time after sending share one --timeout budget. */
static void conn_send(http_conn *c, void *token, bench_done_fn *done, uint64_t issued_ns) {
    http_target *t = c->t;
    assert(!c->write_pending);
    c->state = CONN_BUSY;
    c->token = token;
    c->done = done;
    c->issued_ns = issued_ns;
    /* The uncorrected latency starts here, not when the operation was issued: it may have
     * waited in the queue for a free connection. */
    bench_op_sent(token);
    uv_buf_t bufs[3];
    unsigned nbufs = 1;
    size_t total = t->request_len;
    bufs[0] = uv_buf_init(t->request, (unsigned)t->request_len);
    if (t->extra) {
        size_t extra = t->extra(c->extra, sizeof c->extra, t->extra_udata);
        if (extra > sizeof c->extra)
            extra = sizeof c->extra;
        bufs[0].len = t->head_len;
        bufs[1] = uv_buf_init(c->extra, (unsigned)extra);
        bufs[2] = uv_buf_init(t->request + t->head_len, (unsigned)(t->request_len - t->head_len));
        nbufs = 3;
        total += extra;
    }
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n == (int)total)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        conn_fail_op_later(c, BENCH_ERR_CONNECT);
        conn_lost(c);
        return;
    }
    /* Leave out what was written: whole pieces first, then the front of the next one. */
    uv_buf_t *rest = bufs;
    for (size_t skip = n > 0 ? (size_t)n : 0; skip > 0;) {
        if (skip >= rest->len) {
            skip -= rest->len;
            rest++;
            nbufs--;
        } else {
            rest->base += skip;
            rest->len -= skip;
            skip = 0;
        }
    }
    c->write_req.data = c;
    c->write_pending = 1;
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, rest, nbufs, write_cb);
    if (rc < 0) {
        c->write_pending = 0; /* a failed call never runs its callback */
        conn_fail_op_later(c, BENCH_ERR_CONNECT);
        conn_lost(c);
    }
}

/* A connection has become free: give it the oldest waiting operation, or park it. */
static void conn_ready(http_conn *c) {
    http_target *t = c->t;
    if (t->qlen > 0) {
        http_waiter w = queue_pop(t);
        conn_send(c, w.token, w.done, w.since_ns);
        return;
    }
    c->state = CONN_IDLE;
    t->idle[t->nidle++] = (int)(c - t->conns);
}

static void target_issue(void *ctx, void *token, bench_done_fn *done) {
    http_target *t = ctx;
    if (t->freeing) {
        bench_later_done(t->later, token, done, BENCH_ERR_CONNECT);
        return;
    }
    if (t->nidle > 0) {
        conn_send(&t->conns[t->idle[--t->nidle]], token, done, sd_now_ns());
        return;
    }
    if (t->backing_off == t->nconns) {
        /* Every connection is waiting out a backoff: the server is unreachable right now. */
        bench_later_done(t->later, token, done, BENCH_ERR_CONNECT);
        return;
    }
    queue_push(t, token, done);
}

/* ---- Receiving ----------------------------------------------------------------------------- */

/* A response to HEAD has headers only; returning 1 tells http_parser not to expect a body. */
static int on_headers_complete_head(http_parser *p) {
    return 1;
}

/* A 1xx response (100 Continue, 103 Early Hints) is interim: the final response follows on the
 * same connection, and a client must accept interim responses even unasked (RFC 9110 section
 * 15.2). http_parser reports each as a complete message; it is skipped here. 101 switches to
 * another protocol, which this client never asks for: it is taken as final, and fails. */
static bool status_is_interim(unsigned status) {
    return status >= 100 && status < 200 && status != 101;
}

static int on_message_complete(http_parser *p) {
    http_conn *c = p->data;
    http_target *t = c->t;
    if (c->state != CONN_BUSY || c->done == NULL)
        return -1; /* a response nobody asked for: treat the stream as broken */
    if (status_is_interim(p->status_code))
        return 0;
    t->stats.responses++;
    c->answered = 1;
    c->backoff_ms = 0;
    int status = (int)p->status_code;
    int kind;
    if (t->classify)
        kind = t->classify(status, t->classify_udata);
    else
        kind = status >= 200 && status < 400 ? BENCH_OK : BENCH_ERR_STATUS;
    void *token;
    bench_done_fn *done;
    conn_take_op(c, &token, &done);
    /* Free the connection before completing, so that an operation issued from inside done()
     * can use it straight away. A connection whose request is still being written answered
     * early: it is closed instead (see the top of the file). */
    if (http_should_keep_alive(p) && !c->write_pending)
        conn_ready(c);
    else
        conn_close(c, 0);
    done(token, kind);
    return 0;
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    http_conn *c = handle->data;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    http_conn *c = stream->data;
    if (nread == 0 || c->state == CONN_CLOSING)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && c->state == CONN_BUSY) {
            /* A response delimited by the end of the connection ends here. */
            http_parser_execute(&c->parser, &c->t->settings, NULL, 0);
        }
        if (c->state == CONN_BUSY)
            conn_fail_op(c, BENCH_ERR_CONNECT);
        if (c->state != CONN_CLOSING)
            conn_lost(c);
        return;
    }
    size_t parsed = http_parser_execute(&c->parser, &c->t->settings, buf->base, (size_t)nread);
    if (c->state == CONN_CLOSING)
        return;
    if (parsed != (size_t)nread || HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
        conn_fail_op(c, BENCH_ERR_OTHER);
        conn_close(c, 0);
    }
}

/* ---- Connecting and closing ---------------------------------------------------------------- */

/* Frees the target once its last handle has closed; the later queue calls what it still holds
 * from its own close callback. */
static void target_release(http_target *t) {
    bench_later_free(t->later);
    free(t->request);
    free(t->idle);
    free(t->queue);
    free(t->conns);
    free(t);
}

static void connect_cb(uv_connect_t *req, int status) {
    http_conn *c = req->data;
    http_target *t = c->t;
    if (status == UV_ECANCELED)
        return;
    if (status < 0) {
        t->last_error = status;
        t->stats.connect_errors++;
        conn_close(c, 1);
        return;
    }
    t->connecting--;
    t->stats.connects++;
    t->up++;
    c->answered = 0;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    conn_ready(c);
}

static void conn_closed_cb(uv_handle_t *handle) {
    http_conn *c = handle->data;
    http_target *t = c->t;
    c->open = 0;
    t->open_handles--;
    if (t->freeing) {
        if (t->open_handles == 0)
            target_release(t);
        return;
    }
    if (c->backoff_after) {
        c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (c->backoff_ms > BACKOFF_MAX_MS)
            c->backoff_ms = BACKOFF_MAX_MS;
        c->retry_ns = sd_now_ns() + (uint64_t)c->backoff_ms * 1000000u;
        c->state = CONN_BACKOFF;
        /* With nothing up and nothing trying, queued operations would only time out. */
        if (t->backing_off == t->nconns)
            queue_fail_all(t, BENCH_ERR_CONNECT);
    } else {
        conn_connect(c);
    }
}

/* Closes the connection; it reconnects once libuv has closed the handle, after a backoff when
 * `backoff` is set and at once otherwise. The caller has already completed any operation in
 * flight. */
static void conn_close(http_conn *c, int backoff) {
    http_target *t = c->t;
    if (c->state == CONN_CLOSING)
        return;
    if (c->state == CONN_IDLE) {
        for (int i = 0; i < t->nidle; i++) {
            if (&t->conns[t->idle[i]] == c) {
                t->idle[i] = t->idle[--t->nidle];
                break;
            }
        }
    }
    if (c->state == CONN_IDLE || c->state == CONN_BUSY) {
        t->up--;
        t->stats.closed++;
    }
    if (c->state == CONN_CONNECTING)
        t->connecting--;
    if (backoff)
        t->backing_off++;
    c->state = CONN_CLOSING;
    c->backoff_after = backoff;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

/* The connection broke (the server closed or reset it, or a write failed). Before its first
 * response that is the server refusing service as surely as a refused connect: back off. */
static void conn_lost(http_conn *c) {
    conn_close(c, !c->answered);
}

static void conn_connect(http_conn *c) {
    http_target *t = c->t;
    uv_tcp_init(t->loop, &c->tcp);
    c->tcp.data = c;
    c->open = 1;
    t->open_handles++;
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = CONN_CONNECTING;
    t->connecting++;
    c->connect_req.data = c;
    int rc =
        uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&t->addr, connect_cb);
    if (rc < 0) {
        t->last_error = rc;
        t->stats.connect_errors++;
        conn_close(c, 1);
    }
}

/* ---- Deadlines and backoff ----------------------------------------------------------------- */

static void sweep_cb(uv_timer_t *timer) {
    http_target *t = timer->data;
    uint64_t now = sd_now_ns();
    for (int i = 0; i < t->nconns; i++) {
        http_conn *c = &t->conns[i];
        if (c->state == CONN_BUSY && now - c->issued_ns > t->timeout_ns) {
            conn_fail_op(c, BENCH_ERR_TIMEOUT);
            conn_close(c, 0);
        } else if (c->state == CONN_BACKOFF && now >= c->retry_ns) {
            t->backing_off--;
            conn_connect(c);
        }
    }
    while (t->qlen > 0 && now - t->queue[t->qhead].since_ns > t->timeout_ns) {
        http_waiter w = queue_pop(t);
        w.done(w.token, BENCH_ERR_TIMEOUT);
    }
}

/* ---- Creation ------------------------------------------------------------------------------ */

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* A method is a token (RFC 9110 section 9.1): letters only is enough for a load generator. */
static int method_ok(const char *m) {
    if (*m == '\0')
        return 0;
    for (; *m; m++)
        if (!((*m >= 'A' && *m <= 'Z') || (*m >= 'a' && *m <= 'z')))
            return 0;
    return 1;
}

static int header_ok(const char *h) {
    const char *colon = strchr(h, ':');
    return colon && colon > h && strpbrk(h, "\r\n") == NULL;
}

/* Resolves host:port into *addr, preferring IPv4 (servers here bind 127.0.0.1). */
static int resolve(const char *host, const char *port, struct sockaddr_storage *addr) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return -EHOSTUNREACH;
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    memcpy(addr, pick->ai_addr, pick->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

int bench_http_target_new(uv_loop_t *loop, const char *url, int connections,
                          const bench_http_opts *opts, bench_target *out, char *err,
                          size_t errlen) {
    bench_http_opts defaults = {0};
    if (opts == NULL)
        opts = &defaults;
    if (connections < 1 || connections > 10000)
        return fail(err, errlen, -EINVAL, "%s", "connections must be 1..10000");
    const char *method = opts->method ? opts->method : "GET";
    if (!method_ok(method))
        return fail(err, errlen, -EINVAL, "bad method '%s'", method);
    int user_host = 0;
    for (const char *const *h = opts->headers; h && *h; h++) {
        if (!header_ok(*h))
            return fail(err, errlen, -EINVAL, "bad header '%s' (want 'Name: value')", *h);
        if (strncasecmp(*h, "host:", 5) == 0)
            user_host = 1;
    }

    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, strlen(url), 0, &u) != 0 || !(u.field_set & (1 << UF_SCHEMA)) ||
        !(u.field_set & (1 << UF_HOST)))
        return fail(err, errlen, -EINVAL, "bad URL '%s' (want http://host[:port]/path)", url);
    if (u.field_data[UF_SCHEMA].len != 4 ||
        strncasecmp(url + u.field_data[UF_SCHEMA].off, "http", 4) != 0)
        return fail(err, errlen, -EPROTONOSUPPORT, "unsupported URL '%s' (only http://)", url);
    if (u.field_set & (1 << UF_USERINFO))
        return fail(err, errlen, -EINVAL, "URL '%s' has user info, which is not supported", url);

    char *host = sd_xstrndup(url + u.field_data[UF_HOST].off, u.field_data[UF_HOST].len);
    char port[8] = "80";
    if (u.field_set & (1 << UF_PORT))
        snprintf(port, sizeof port, "%u", (unsigned)u.port);
    /* The request target: path and query as written, "/" when the URL has no path. */
    const char *target = "/";
    size_t target_len = 1;
    if (u.field_set & (1 << UF_PATH)) {
        target = url + u.field_data[UF_PATH].off;
        target_len = u.field_data[UF_PATH].len;
        if (u.field_set & (1 << UF_QUERY))
            target_len =
                u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len - u.field_data[UF_PATH].off;
    }

    http_target *t = sd_xcalloc(1, sizeof *t);
    int rc = resolve(host, port, &t->addr);
    if (rc < 0) {
        free(t);
        rc = fail(err, errlen, rc, "cannot resolve host '%s'", host);
        free(host);
        return rc;
    }

    /* Build the request once. IPv6 literals keep their brackets in the Host header. */
    int v6 = strchr(host, ':') != NULL;
    char *req = NULL;
    size_t req_len = 0;
    FILE *f = open_memstream(&req, &req_len);
    if (f == NULL) {
        fprintf(stderr, "fatal: out of memory\n");
        abort();
    }
    fprintf(f, "%s %.*s HTTP/1.1\r\n", method, (int)target_len, target);
    if (!user_host)
        fprintf(f, "Host: %s%s%s%s%s\r\n", v6 ? "[" : "", host, v6 ? "]" : "",
                (u.field_set & (1 << UF_PORT)) ? ":" : "",
                (u.field_set & (1 << UF_PORT)) ? port : "");
    for (const char *const *h = opts->headers; h && *h; h++)
        fprintf(f, "%s\r\n", *h);
    if (opts->body)
        fprintf(f, "Content-Length: %zu\r\n", opts->body_len);
    fflush(f); /* updates req_len: the extra header lines of each request go here */
    size_t head_len = req_len;
    fputs("\r\n", f);
    if (opts->body && opts->body_len)
        fwrite(opts->body, 1, opts->body_len, f);
    fclose(f);
    free(host);

    t->loop = loop;
    t->later = bench_later_new(loop);
    t->request = req;
    t->request_len = req_len;
    t->head_len = head_len;
    t->extra = opts->extra_headers;
    t->extra_udata = opts->extra_headers_udata;
    t->timeout_ns = (uint64_t)(opts->timeout_ms > 0 ? opts->timeout_ms : 5000) * 1000000u;
    t->classify = opts->classify;
    t->classify_udata = opts->classify_udata;
    t->settings.on_message_complete = on_message_complete;
    if (strcasecmp(method, "HEAD") == 0)
        t->settings.on_headers_complete = on_headers_complete_head;
    t->nconns = connections;
    t->conns = sd_xcalloc((size_t)connections, sizeof *t->conns);
    t->idle = sd_xcalloc((size_t)connections, sizeof *t->idle);

    uv_timer_init(loop, &t->sweep);
    t->sweep.data = t;
    t->open_handles = 1;
    uv_timer_start(&t->sweep, sweep_cb, SWEEP_MS, SWEEP_MS);
    for (int i = 0; i < connections; i++) {
        t->conns[i].t = t;
        conn_connect(&t->conns[i]);
    }
    out->ctx = t;
    out->issue = target_issue;
    return 0;
}

int bench_http_target_wait_connected(bench_target *bt, int timeout_ms, char *err, size_t errlen) {
    http_target *t = bt->ctx;
    uint64_t deadline = sd_now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (t->up < t->nconns) {
        if (t->backing_off == t->nconns) {
            if (err && errlen)
                snprintf(err, errlen, "cannot connect: %s", uv_strerror(t->last_error));
            return t->last_error;
        }
        if (sd_now_ns() >= deadline) {
            if (err && errlen)
                snprintf(err, errlen, "only %d of %d connections up after %d ms", t->up, t->nconns,
                         timeout_ms);
            return -ETIMEDOUT;
        }
        uv_run(t->loop, UV_RUN_ONCE); /* the sweep timer bounds each wait to SWEEP_MS */
    }
    return 0;
}

void bench_http_target_stats(const bench_target *bt, bench_http_stats *out) {
    const http_target *t = bt->ctx;
    *out = t->stats;
}

static void sweep_closed_cb(uv_handle_t *handle) {
    /* The same accounting as a connection's close: the last handle frees the target. */
    http_target *t = handle->data;
    t->open_handles--;
    if (t->open_handles == 0)
        target_release(t);
}

void bench_http_target_free(bench_target *bt) {
    http_target *t = bt ? bt->ctx : NULL;
    if (t == NULL)
        return;
    bt->ctx = NULL;
    t->freeing = 1;
    for (int i = 0; i < t->nconns; i++) {
        http_conn *c = &t->conns[i];
        if (c->state == CONN_BUSY)
            conn_fail_op(c, BENCH_ERR_CONNECT);
    }
    queue_fail_all(t, BENCH_ERR_CONNECT);
    for (int i = 0; i < t->nconns; i++) {
        http_conn *c = &t->conns[i];
        if (c->open && !uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    }
    uv_close((uv_handle_t *)&t->sweep, sweep_closed_cb);
}
