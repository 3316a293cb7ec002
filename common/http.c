/*
 * http.c - the HTTP/1.1 server of http.h: libuv for I/O, http_parser for the protocol.
 *
 * One server runs on one uv_loop and one thread, like an nginx worker. Everything below is
 * arranged so the common case (a small request answered at once on a keep-alive connection)
 * costs one read(), one parse, one write() and no malloc: connections read into one shared
 * buffer, request objects come from a pool and keep their grown buffers, responses are rendered
 * straight into the connection's output buffer, and all responses produced by one read leave in
 * one write.
 *
 * A connection's life
 *
 *            accept
 *              |
 *              v
 *           READING ----- queue reaches max_pipelined -----> PAUSED
 *            |  ^                                              |
 *            |  +-------- queue drains below the limit --------+
 *            |
 *            | close_after: an error reply, HTTP/1.0 or "Connection: close", the client's
 *            | EOF, or a graceful stop
 *            v
 *         DRAINING       no more parsing; the queued requests are answered in order
 *            |
 *            | queue empty and every byte handed to the kernel
 *            v
 *         LINGERING      FIN sent (uv_shutdown); input is read and discarded, so unread input
 *            |           cannot turn our close into a reset that destroys the last response on
 *            |           its way (the "lingering close" of RFC 9112 section 9.6)
 *            | the client's EOF, or LINGER_MS passed
 *            v
 *          CLOSED        uv_close; the memory goes in the close callback
 *
 * A read or write error, a timeout, too many connections or the end of a stop's grace period
 * jump straight to CLOSED. Who moves a connection: conn_parse() pauses and conn_resume()
 * resumes; setting close_after (on_message_complete, conn_fail, conn_on_eof, conn_stop) starts
 * DRAINING; conn_after_io() calls conn_finish() once drained; on_shutdown() starts LINGERING;
 * conn_close() closes.
 *
 * Invariants
 *  1. Responses leave in request order. Requests join their connection's queue when their first
 *     byte is parsed; a response is rendered into the output buffer only when its request is at
 *     the head of the queue (an early answer waits in the request's own buffer until then).
 *  2. A request is in exactly one place: the server's pool, a connection's queue, or, detached,
 *     in the hands of a handler whose connection has closed (counted in conn->held).
 *  3. A connection's memory is freed only after its handle has closed and held is zero, so a
 *     handler may answer a detached request at any time; the answer is then dropped.
 *  4. At most one uv_write is in flight per connection; output produced meanwhile accumulates in
 *     the other of its two buffers.
 *  5. The parser runs only with conn->in_read set. Whatever a handler does during a parse
 *     (respond, even stop the server) only changes flags and buffers; flushing, resuming and
 *     closing happen afterwards in conn_after_io(), so the parser never re-enters itself.
 *
 * Timeouts use two deadlines per connection, checked by one coarse server-wide timer rather than
 * a timer per connection (a uv_timer restart per request would cost two heap operations):
 * header_deadline (the whole header of a request must arrive in time, counted from its first byte
 * or from accept) and idle_deadline (set from the loop's cached clock on each event while the
 * connection waits on the client: between requests, inside a body, or while a write is stuck).
 */
#include "http.h"

#include "sd.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    READ_BUF_SIZE = 64 * 1024,     /* the shared read buffer, libuv's usual suggestion */
    WRITE_HIGH_WATER = 256 * 1024, /* stop reading while this much output waits on the client */
    REQ_POOL_MAX = 1024,           /* spare request objects kept for reuse */
    REQ_KEEP_BYTES = 8 * 1024,     /* larger per-request buffers are freed, not pooled: the pool
                                      holds at most ~1024 * 3 * 8 KiB after any burst */
    LINGER_MS = 1000,              /* how long a closing connection waits for the client's EOF */
    LISTEN_BACKLOG = 1024,
    ROUTE_CACHE_SIZE = 64, /* a power of two */
    ROUTE_CACHE_PATH = 48,
};

#define NO_OFF UINT32_MAX /* an absent offset into a request's store */

/* ---- Growing buffers -------------------------------------------------------------------------
 * sd_http_buf is the one buffer type: request storage, output, metrics text. Buffers are cleared
 * by setting len to 0 and keep their capacity, which is what makes reuse allocation-free. */

struct sd_http_buf {
    char *p;
    size_t len;
    size_t cap;
};

static void buf_reserve(sd_http_buf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->p = sd_xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_append(sd_http_buf *b, const void *data, size_t n) {
    if (n == 0)
        return; /* data may be the NULL of an empty buffer, which memcpy must not get */
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_append_str(sd_http_buf *b, const char *s) {
    buf_append(b, s, strlen(s));
}

/* Decimal digits without snprintf, which costs more than the rest of a small response. */
static void buf_append_u64(sd_http_buf *b, uint64_t v) {
    char tmp[20];
    int i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

static void buf_free(sd_http_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void sd_http_buf_printf(sd_http_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= b->cap - b->len) {
        buf_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* ---- Types ----------------------------------------------------------------------------------- */

/* Latency buckets (upper bounds) of http_request_duration_seconds: from 100 us, which a local
 * keep-alive request takes, to 10 s. */
#define NBUCKETS 16
static const uint64_t bucket_ns[NBUCKETS] = {
    100000,   250000,    500000,    1000000,   2500000,    5000000,    10000000,   25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000};
static const char *const bucket_le[NBUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",    "10"};

/* Counters for one route pattern (routes that share a pattern share its row). Row 0 is
 * "unmatched": 404, 405 and the errors the server raises before any route is chosen. */
typedef struct route_stats {
    char *label;                    /* the pattern, escaped for a Prometheus label value */
    uint64_t by_status[500];        /* responses per status code, at status - 100 */
    uint64_t buckets[NBUCKETS + 1]; /* per bucket, not cumulative; the last is +Inf */
    uint64_t count;
    uint64_t sum_ns;
} route_stats;

enum { ROUTE_ANY_METHOD = -1 };

typedef struct route {
    int method; /* enum http_method or ROUTE_ANY_METHOD */
    char *path; /* without the '*' of a prefix pattern */
    size_t len;
    bool prefix;   /* the pattern ended in '*': a prefix match */
    bool fallback; /* "*": tried only after every other route */
    sd_http_handler_cb *cb;
    void *udata;
    int stats; /* index into srv->stats */
} route;

/* A direct-mapped cache of (method, exact path) -> route for paths that matched before. It
 * spares the scan over prefix routes on every request; it is emptied when a route is added. */
typedef struct route_cache_entry {
    uint8_t len; /* 0: empty */
    uint8_t method;
    int16_t route;
    char path[ROUTE_CACHE_PATH];
} route_cache_entry;

typedef struct sd_http_conn sd_http_conn;

enum req_state { REQ_PARSING, REQ_HANDLING, REQ_RESPONDED };
/* What a request's store received last, so the previous piece can be NUL-terminated when the
 * next one starts (http_parser may deliver one piece in several calls across reads). */
enum piece { PIECE_NONE, PIECE_URL, PIECE_FIELD, PIECE_VALUE, PIECE_BODY };

typedef struct header {
    uint32_t name, value; /* offsets into the store; value may be NO_OFF */
} header;

struct sd_http_req {
    sd_http_conn *conn;
    sd_http_req *next; /* in the connection's queue or the server's pool */
    enum req_state state;
    enum piece piece;
    bool detached;   /* the connection closed while the handler had the request */
    bool keep_alive; /* the client wants the connection kept after this request */
    bool is_head;    /* HEAD: the response carries no body */
    bool http10;     /* an HTTP/1.0 client: keep-alive must be confirmed */
    uint8_t method;
    int stats;
    uint64_t start_ns;
    size_t header_bytes;
    /* The request target, header names and values and the body, each NUL-terminated. */
    sd_http_buf store;
    uint32_t path_off, query_off, body_off;
    size_t path_len, body_len;
    header *headers;
    size_t nheaders, headers_cap;
    sd_http_buf extra; /* response header lines added by the handler */
    sd_http_buf out;   /* the rendered response while earlier requests are unanswered */
};

struct sd_http_conn {
    uv_tcp_t tcp;
    http_parser parser;
    sd_http_server *srv;
    sd_http_conn *prev, *next; /* srv->conns */
    sd_http_req *head, *tail;  /* requests in arrival order */
    sd_http_req *cur;          /* the request being parsed (the tail), or NULL */
    int nqueue;
    int held; /* detached requests not yet answered */
    int err_status;
    uint64_t nrequests;
    uint64_t header_deadline, idle_deadline; /* loop time in ms, 0 = none */
    sd_http_buf wbuf;                        /* output not yet handed to the kernel */
    sd_http_buf inflight;                    /* output owned by the pending uv_write */
    sd_http_buf pending;                     /* unparsed input kept while the parser is paused */
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    bool reading, in_read, in_headers, paused, writing, eof;
    bool close_after, shutting, lingering, closing, closed;
    char peer[INET6_ADDRSTRLEN];
};

typedef struct metrics_source {
    sd_http_metrics_cb *cb;
    void *udata;
} metrics_source;

struct sd_http_server {
    uv_loop_t *loop;
    sd_http_opts opts;
    char *server_line; /* "Server: name\r\n" */
    size_t server_line_len;
    route *routes;
    size_t nroutes;
    route_cache_entry cache[ROUTE_CACHE_SIZE];
    route_stats **stats;
    size_t nstats;
    metrics_source *metrics;
    size_t nmetrics;
    sd_http_buf metrics_text;
    char *rbuf; /* shared by every connection's reads: parsed before the next read */
    sd_http_req *pool;
    int npool;

    uv_tcp_t listener;
    uv_timer_t sweep, grace;
    uv_signal_t signals[2];
    bool listening, sweep_started, signals_started;
    int signal_grace_ms;
    int port;

    sd_http_conn *conns;
    int nconns;      /* connections whose handle is open */
    int conns_alive; /* connections whose memory is not freed yet */
    int handles_open;

    bool stopping, final_close, done_called, free_pending;
    void (*done_cb)(sd_http_server *srv, void *udata);
    void *done_udata;

    uint64_t accepted, rejected, header_timeouts, idle_timeouts, last_accept_error_ms;
};

static void conn_after_io(sd_http_conn *conn);
static void conn_close(sd_http_conn *conn);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void srv_handle_closed(uv_handle_t *handle);
static void healthz_cb(sd_http_req *req, void *udata);
static void metrics_cb(sd_http_req *req, void *udata);

/* ---- Server setup ---------------------------------------------------------------------------- */

void sd_http_opts_default(sd_http_opts *opts) {
    opts->max_header_bytes = 16 * 1024;
    opts->max_body_bytes = 1024 * 1024;
    opts->max_connections = 10000;
    opts->max_pipelined = 64;
    opts->header_timeout_ms = 10000;
    opts->idle_timeout_ms = 60000;
    opts->server_name = "sysdesign";
}

/* A Prometheus label value escapes backslash, double quote and newline (exposition format
 * 0.0.4). */
static char *label_escape(const char *s) {
    sd_http_buf b = {0};
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_append(&b, "\\", 1);
        if (*s == '\n')
            buf_append_str(&b, "\\n");
        else
            buf_append(&b, s, 1);
    }
    buf_append(&b, "", 1);
    return b.p;
}

/* The metrics row of a route pattern: routes that share a pattern share a row, so each label
 * set appears once in the exposition. */
static int stats_row(sd_http_server *srv, const char *pattern) {
    char *label = label_escape(pattern);
    for (size_t i = 0; i < srv->nstats; i++) {
        if (strcmp(srv->stats[i]->label, label) == 0) {
            free(label);
            return (int)i;
        }
    }
    srv->stats = sd_xrealloc(srv->stats, (srv->nstats + 1) * sizeof *srv->stats);
    route_stats *st = sd_xcalloc(1, sizeof *st);
    st->label = label;
    srv->stats[srv->nstats] = st;
    return (int)srv->nstats++;
}

sd_http_server *sd_http_server_new(uv_loop_t *loop, const sd_http_opts *opts) {
    sd_http_server *srv = sd_xcalloc(1, sizeof *srv);
    srv->loop = loop;
    sd_http_opts_default(&srv->opts);
    if (opts) {
        /* Zero fields keep their defaults, so callers may set only what they care about. */
        if (opts->max_header_bytes)
            srv->opts.max_header_bytes = opts->max_header_bytes;
        if (opts->max_body_bytes)
            srv->opts.max_body_bytes = opts->max_body_bytes;
        if (opts->max_connections > 0)
            srv->opts.max_connections = opts->max_connections;
        if (opts->max_pipelined > 0)
            srv->opts.max_pipelined = opts->max_pipelined;
        if (opts->header_timeout_ms > 0)
            srv->opts.header_timeout_ms = opts->header_timeout_ms;
        if (opts->idle_timeout_ms > 0)
            srv->opts.idle_timeout_ms = opts->idle_timeout_ms;
        if (opts->server_name)
            srv->opts.server_name = opts->server_name;
    }
    srv->server_line = sd_xasprintf("Server: %s\r\n", srv->opts.server_name);
    srv->server_line_len = strlen(srv->server_line);
    srv->opts.server_name = NULL; /* borrowed: only server_line is used from here on */
    srv->rbuf = sd_xmalloc(READ_BUF_SIZE);

    /* http_parser has its own, process-wide header limit (80 KiB by default, reported as
     * HPE_HEADER_OVERFLOW, which we also answer with 431). It must not be the smaller one. */
    if (srv->opts.max_header_bytes + 4096 > 80 * 1024)
        http_parser_set_max_header_size((uint32_t)(srv->opts.max_header_bytes + 4096));

    /* A write to a socket the client has closed must be an error (EPIPE), not the death of the
     * process: that is what SIGPIPE does by default. This affects the whole process. */
    signal(SIGPIPE, SIG_IGN);

    stats_row(srv, "unmatched");
    sd_http_server_route(srv, "GET", "/healthz", healthz_cb, NULL);
    sd_http_server_route(srv, "GET", "/metrics", metrics_cb, NULL);
    return srv;
}

static int method_from_name(const char *name) {
    for (int m = 0; m <= HTTP_SOURCE; m++)
        if (strcmp(http_method_str((enum http_method)m), name) == 0)
            return m;
    return -1;
}

int sd_http_server_route(sd_http_server *srv, const char *method, const char *path,
                         sd_http_handler_cb *cb, void *udata) {
    if (path == NULL || cb == NULL || (path[0] != '/' && strcmp(path, "*") != 0))
        return -EINVAL;
    int m = ROUTE_ANY_METHOD;
    if (method && (m = method_from_name(method)) < 0)
        return -EINVAL;
    srv->routes = sd_xrealloc(srv->routes, (srv->nroutes + 1) * sizeof *srv->routes);
    route *r = &srv->routes[srv->nroutes++];
    size_t len = strlen(path);
    r->method = m;
    r->fallback = strcmp(path, "*") == 0;
    r->prefix = !r->fallback && path[len - 1] == '*';
    r->len = r->prefix ? len - 1 : r->fallback ? 0 : len;
    r->path = sd_xstrndup(path, r->len);
    r->cb = cb;
    r->udata = udata;
    r->stats = stats_row(srv, path);
    memset(srv->cache, 0, sizeof srv->cache);
    return 0;
}

void sd_http_server_add_metrics(sd_http_server *srv, sd_http_metrics_cb *cb, void *udata) {
    srv->metrics = sd_xrealloc(srv->metrics, (srv->nmetrics + 1) * sizeof *srv->metrics);
    srv->metrics[srv->nmetrics++] = (metrics_source){cb, udata};
}

/* ---- Request objects ------------------------------------------------------------------------- */

static sd_http_req *req_get(sd_http_server *srv, sd_http_conn *conn) {
    sd_http_req *req = srv->pool;
    if (req) {
        srv->pool = req->next;
        srv->npool--;
    } else {
        req = sd_xcalloc(1, sizeof *req);
    }
    req->conn = conn;
    req->next = NULL;
    req->state = REQ_PARSING;
    req->piece = PIECE_NONE;
    req->detached = false;
    req->keep_alive = false;
    req->is_head = false;
    req->http10 = false;
    req->method = HTTP_GET;
    req->stats = 0;
    req->header_bytes = 0;
    req->store.len = 0;
    req->path_off = req->query_off = req->body_off = NO_OFF;
    req->path_len = req->body_len = 0;
    req->nheaders = 0;
    req->extra.len = 0;
    req->out.len = 0;
    return req;
}

static void req_destroy(sd_http_req *req) {
    buf_free(&req->store);
    buf_free(&req->extra);
    buf_free(&req->out);
    free(req->headers);
    free(req);
}

static void req_put(sd_http_server *srv, sd_http_req *req) {
    if (srv->npool >= REQ_POOL_MAX) {
        req_destroy(req);
        return;
    }
    /* A large body or response must not stay pinned in the pool. */
    if (req->store.cap > REQ_KEEP_BYTES)
        buf_free(&req->store);
    if (req->out.cap > REQ_KEEP_BYTES)
        buf_free(&req->out);
    if (req->extra.cap > REQ_KEEP_BYTES)
        buf_free(&req->extra);
    req->next = srv->pool;
    srv->pool = req;
    srv->npool++;
}

static void queue_push(sd_http_conn *conn, sd_http_req *req) {
    if (conn->tail)
        conn->tail->next = req;
    else
        conn->head = req;
    conn->tail = req;
    conn->nqueue++;
}

/* Drops the partly parsed request at the tail, when the connection will parse no more. */
static void queue_drop_cur(sd_http_conn *conn) {
    sd_http_req *req = conn->cur;
    if (req == NULL)
        return;
    conn->cur = NULL;
    conn->in_headers = false;
    conn->header_deadline = 0;
    sd_http_req *prev = NULL;
    for (sd_http_req *r = conn->head; r != req; r = r->next)
        prev = r;
    if (prev)
        prev->next = NULL;
    else
        conn->head = NULL;
    conn->tail = prev;
    conn->nqueue--;
    req_put(conn->srv, req);
}

/* ---- Routing --------------------------------------------------------------------------------- */

static bool route_path_matches(const route *r, const char *path, size_t len) {
    if (r->fallback)
        return true;
    if (r->prefix)
        return len >= r->len && memcmp(path, r->path, r->len) == 0;
    return len == r->len && memcmp(path, r->path, len) == 0;
}

/* A HEAD request is served by a GET route, minus the body (RFC 9110 section 9.3.2). */
static bool route_method_matches(const route *r, int method) {
    return r->method == ROUTE_ANY_METHOD || r->method == method ||
           (method == HTTP_HEAD && r->method == HTTP_GET);
}

static uint32_t path_hash(const char *path, size_t len, int method) {
    uint32_t h = 2166136261u ^ (uint32_t)method; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)path[i]) * 16777619u;
    return h;
}

/*
 * Finds the route for req, or NULL. When there is none, *allowed gets a bit per method that
 * some route accepts for this path (405 when non-zero, 404 otherwise).
 */
static const route *route_find(sd_http_server *srv, const sd_http_req *req, uint64_t *allowed) {
    const char *path = req->store.p + req->path_off;
    size_t len = req->path_len;
    route_cache_entry *e = NULL;
    if (len > 0 && len < ROUTE_CACHE_PATH) {
        e = &srv->cache[path_hash(path, len, req->method) & (ROUTE_CACHE_SIZE - 1)];
        if (e->len == len && e->method == req->method && memcmp(e->path, path, len) == 0)
            return &srv->routes[e->route];
    }
    *allowed = 0;
    const route *found = NULL;
    for (int pass = 0; pass < 2 && !found; pass++) {
        for (size_t i = 0; i < srv->nroutes; i++) {
            const route *r = &srv->routes[i];
            if (r->fallback != (pass == 1) || !route_path_matches(r, path, len))
                continue;
            if (route_method_matches(r, req->method)) {
                found = r;
                break;
            }
            *allowed |= r->method == ROUTE_ANY_METHOD ? ~0ull : 1ull << r->method;
            if (r->method == HTTP_GET)
                *allowed |= 1ull << HTTP_HEAD;
        }
    }
    if (found && e && srv->nroutes <= INT16_MAX) {
        e->len = (uint8_t)len;
        e->method = req->method;
        e->route = (int16_t)(found - srv->routes);
        memcpy(e->path, path, len);
    }
    return found;
}

static void respond_not_found(sd_http_req *req, uint64_t allowed) {
    if (allowed == 0) {
        sd_http_req_respond_problem(req, 404, "about:blank", "Not Found",
                                    "No route matches this path.", NULL);
        return;
    }
    char list[256] = "";
    size_t n = 0;
    for (int m = 0; m <= HTTP_SOURCE && n < sizeof list - 16; m++)
        if (allowed & (1ull << m))
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", n ? ", " : "",
                                  http_method_str((enum http_method)m));
    sd_http_req_add_header(req, "Allow", list);
    sd_http_req_respond_problem(req, 405, "about:blank", "Method Not Allowed",
                                "This path does not accept this method.", NULL);
}

static void req_dispatch(sd_http_conn *conn, sd_http_req *req) {
    req->state = REQ_HANDLING;
    uint64_t allowed = 0;
    const route *r = route_find(conn->srv, req, &allowed);
    if (r == NULL) {
        respond_not_found(req, allowed);
        return;
    }
    req->stats = r->stats;
    r->cb(req, r->udata);
}

/* ---- Parsing ----------------------------------------------------------------------------------
 * http_parser calls these while it walks the bytes of a read. Each request copies what it needs
 * (target, headers, body) into its own reusable store, so the read buffer can be reused at once
 * and a handler that answers later still has everything. */

static void req_end_piece(sd_http_req *req) {
    if (req->piece != PIECE_NONE)
        buf_append(&req->store, "", 1);
    req->piece = PIECE_NONE;
}

/* Appends header-section bytes, starting a new piece when the kind changes. The limit counts
 * the request target, names and values, plus 4 bytes per header for ": " and CRLF. */
static int req_append_header_piece(sd_http_conn *conn, enum piece kind, const char *at,
                                   size_t len) {
    sd_http_req *req = conn->cur;
    assert(req != NULL);
    if (req->piece != kind) {
        req_end_piece(req);
        req->piece = kind;
        uint32_t off = (uint32_t)req->store.len;
        if (kind == PIECE_URL) {
            req->path_off = off;
        } else if (kind == PIECE_FIELD) {
            if (req->nheaders == req->headers_cap) {
                req->headers_cap = req->headers_cap ? req->headers_cap * 2 : 16;
                req->headers = sd_xrealloc(req->headers, req->headers_cap * sizeof *req->headers);
            }
            req->headers[req->nheaders++] = (header){off, NO_OFF};
            req->header_bytes += 4;
        } else {
            req->headers[req->nheaders - 1].value = off;
        }
    }
    req->header_bytes += len;
    if (req->header_bytes > conn->srv->opts.max_header_bytes) {
        conn->err_status = 431;
        return -1;
    }
    buf_append(&req->store, at, len);
    return 0;
}

static int on_message_begin(http_parser *p) {
    sd_http_conn *conn = p->data;
    sd_http_server *srv = conn->srv;
    sd_http_req *req = req_get(srv, conn);
    req->start_ns = sd_now_ns();
    queue_push(conn, req);
    conn->cur = req;
    conn->in_headers = true;
    /* A new connection's first request keeps the deadline set at accept. */
    if (conn->nrequests > 0 || conn->header_deadline == 0)
        conn->header_deadline = uv_now(srv->loop) + (uint64_t)srv->opts.header_timeout_ms;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    return req_append_header_piece(p->data, PIECE_URL, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    return req_append_header_piece(p->data, PIECE_FIELD, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    return req_append_header_piece(p->data, PIECE_VALUE, at, len);
}

/* Splits the target into a NUL-terminated path and query, dropping any fragment. The
 * absolute form ("http://host/path?q", RFC 9112 section 3.2.2) goes through
 * http_parser_parse_url; the origin form, which is what clients send, is split by hand. */
static void req_split_target(sd_http_req *req) {
    char *url = req->store.p + req->path_off;
    size_t len = strlen(url);
    if (url[0] != '/') {
        struct http_parser_url u;
        http_parser_url_init(&u);
        if (http_parser_parse_url(url, len, 0, &u) == 0 && (u.field_set & (1 << UF_PATH))) {
            if (u.field_set & (1 << UF_QUERY)) {
                req->query_off = req->path_off + u.field_data[UF_QUERY].off;
                url[u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len] = '\0';
            }
            req->path_off += u.field_data[UF_PATH].off;
            req->path_len = u.field_data[UF_PATH].len;
            req->store.p[req->path_off + req->path_len] = '\0';
            return;
        }
        req->path_len = len;
        return;
    }
    char *hash = memchr(url, '#', len);
    if (hash) {
        *hash = '\0';
        len = (size_t)(hash - url);
    }
    char *q = memchr(url, '?', len);
    if (q) {
        *q = '\0';
        req->query_off = req->path_off + (uint32_t)(q + 1 - url);
        len = (size_t)(q - url);
    }
    req->path_len = len;
}

static int on_headers_complete(http_parser *p) {
    sd_http_conn *conn = p->data;
    sd_http_server *srv = conn->srv;
    sd_http_req *req = conn->cur;
    req_end_piece(req);
    conn->in_headers = false;
    conn->header_deadline = 0;
    req->method = (uint8_t)p->method;
    req->is_head = p->method == HTTP_HEAD;
    req->keep_alive = http_should_keep_alive(p) != 0;
    req->http10 = p->http_major == 1 && p->http_minor == 0;
    req_split_target(req);

    /* Only Content-Length bodies are accepted: a chunked (or otherwise transfer-coded) body has
     * no length we could check against the limit before reading it. */
    if (p->uses_transfer_encoding || (p->flags & F_CHUNKED)) {
        conn->err_status = 411;
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > srv->opts.max_body_bytes) {
        conn->err_status = 413;
        return -1;
    }
    /* A client that asked to be told before it sends its body gets the go-ahead now, but only
     * when nothing is queued before this request, so the interim response stays in order. */
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > 0 && req == conn->head &&
        p->http_major == 1 && p->http_minor >= 1) {
        const char *expect = sd_http_req_header(req, "Expect");
        if (expect && strcasecmp(expect, "100-continue") == 0)
            buf_append_str(&conn->wbuf, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    sd_http_conn *conn = p->data;
    sd_http_req *req = conn->cur;
    if (req->piece != PIECE_BODY) {
        req_end_piece(req);
        req->piece = PIECE_BODY;
        req->body_off = (uint32_t)req->store.len;
    }
    buf_append(&req->store, at, len);
    req->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p) {
    sd_http_conn *conn = p->data;
    sd_http_req *req = conn->cur;
    req_end_piece(req);
    conn->cur = NULL;
    conn->nrequests++;
    if (!req->keep_alive)
        conn->close_after = true;
    /* The handler may answer now or later, and may even stop the server; req is not ours to
     * touch after this call. */
    req_dispatch(conn, req);
    if (conn->closing || conn->close_after || conn->nqueue >= conn->srv->opts.max_pipelined)
        http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Answers a request the server refuses itself (400, 411, 413, 431) and ends the connection
 * after it: the rest of the input cannot be trusted to start at a request boundary. */
static void conn_fail(sd_http_conn *conn, int status, const char *detail) {
    sd_http_req *req = conn->cur;
    if (req == NULL) {
        req = req_get(conn->srv, conn);
        req->start_ns = sd_now_ns();
        queue_push(conn, req);
    }
    conn->cur = NULL;
    conn->in_headers = false;
    conn->header_deadline = 0;
    conn->close_after = true;
    req->state = REQ_HANDLING;
    req->keep_alive = false;
    req->stats = 0;
    sd_log(SD_LOG_DEBUG, "http.bad_request", "peer=%s status=%d detail=\"%s\"", conn->peer, status,
           detail);
    sd_http_req_respond_problem(req, status, "about:blank",
                                http_status_str((enum http_status)status), detail, NULL);
}

/* Parses len bytes at data. Bytes the paused parser did not take are kept in conn->pending
 * (data may already point there). */
static void conn_parse(sd_http_conn *conn, const char *data, size_t len) {
    size_t n = http_parser_execute(&conn->parser, &parser_settings, data, len);
    if (conn->closing)
        return;
    enum http_errno err = HTTP_PARSER_ERRNO(&conn->parser);
    if (err == HPE_PAUSED && !conn->close_after) {
        conn->paused = true;
        size_t rest = len - n;
        if (data == conn->pending.p) {
            memmove(conn->pending.p, data + n, rest);
            conn->pending.len = rest;
        } else {
            conn->pending.len = 0;
            buf_append(&conn->pending, data + n, rest);
        }
        return;
    }
    conn->pending.len = 0;
    if (err == HPE_OK || err == HPE_PAUSED) {
        /* After an Upgrade request the rest is another protocol, which we do not speak. */
        if (conn->parser.upgrade)
            conn->close_after = true;
        return;
    }
    int status = conn->err_status ? conn->err_status : err == HPE_HEADER_OVERFLOW ? 431 : 400;
    const char *detail = status == 431   ? "The request header is too large."
                         : status == 413 ? "The request body is too large."
                         : status == 411 ? "Send the body with a Content-Length, not chunked."
                                         : http_errno_description(err);
    conn_fail(conn, status, detail);
}

/* Parses what the paused parser left, after the queue drained below the limit. */
static void conn_resume(sd_http_conn *conn) {
    http_parser_pause(&conn->parser, 0);
    conn->paused = false;
    if (conn->pending.len == 0)
        return;
    conn->in_read = true;
    conn_parse(conn, conn->pending.p, conn->pending.len);
    conn->in_read = false;
}

/* ---- Connection I/O -------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    sd_http_conn *conn = handle->data;
    *buf = uv_buf_init(conn->srv->rbuf, READ_BUF_SIZE);
}

/* Starts or stops reading to match the state: nothing is read while the parser is paused,
 * while a lot of output waits on a slow client, or once no more requests will be parsed. */
static void conn_update_reading(sd_http_conn *conn) {
    bool backlogged = conn->writing && conn->wbuf.len + conn->inflight.len > WRITE_HIGH_WATER;
    bool want = !conn->closing && !conn->shutting &&
                (!conn->close_after && !conn->paused && !backlogged && !conn->eof);
    want = want || (conn->lingering && !conn->closing);
    if (want == conn->reading)
        return;
    conn->reading = want;
    if (!want) {
        uv_read_stop((uv_stream_t *)&conn->tcp);
        return;
    }
    if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) != 0)
        conn_close(conn);
}

static void on_write(uv_write_t *wr, int status) {
    sd_http_conn *conn = wr->handle->data;
    conn->writing = false;
    conn->inflight.len = 0;
    if (status < 0) {
        conn_close(conn);
        return;
    }
    conn_after_io(conn);
}

/* Hands wbuf to the kernel: uv_try_write first, which nearly always takes everything; the rest
 * goes to uv_write from the other buffer, so new output can accumulate meanwhile. */
static void conn_flush(sd_http_conn *conn) {
    if (conn->writing || conn->wbuf.len == 0)
        return;
    uv_buf_t b = uv_buf_init(conn->wbuf.p, (unsigned)conn->wbuf.len);
    int n = uv_try_write((uv_stream_t *)&conn->tcp, &b, 1);
    if (n >= 0 && (size_t)n == conn->wbuf.len) {
        conn->wbuf.len = 0;
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(conn);
        return;
    }
    if (n < 0)
        n = 0;
    sd_http_buf t = conn->inflight;
    conn->inflight = conn->wbuf;
    conn->wbuf = t;
    conn->wbuf.len = 0;
    b = uv_buf_init(conn->inflight.p + n, (unsigned)(conn->inflight.len - (size_t)n));
    if (uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, &b, 1, on_write) != 0) {
        conn_close(conn);
        return;
    }
    conn->writing = true;
}

/* Moves the answered requests at the head of the queue to the output, in order. */
static void conn_drain(sd_http_conn *conn) {
    sd_http_req *req;
    while ((req = conn->head) != NULL && req->state == REQ_RESPONDED) {
        if (req->out.len)
            buf_append(&conn->wbuf, req->out.p, req->out.len);
        conn->head = req->next;
        if (conn->head == NULL)
            conn->tail = NULL;
        conn->nqueue--;
        req_put(conn->srv, req);
    }
}

/* The FIN is out: linger, reading and discarding until the client's EOF or LINGER_MS. */
static void on_shutdown(uv_shutdown_t *sr, int status) {
    sd_http_conn *conn = sr->handle->data;
    if (conn->closing)
        return;
    if (status < 0) {
        conn_close(conn);
        return;
    }
    conn->lingering = true;
    conn->header_deadline = 0;
    int linger =
        conn->srv->opts.idle_timeout_ms < LINGER_MS ? conn->srv->opts.idle_timeout_ms : LINGER_MS;
    conn->idle_deadline = uv_now(conn->srv->loop) + (uint64_t)linger;
    conn_update_reading(conn);
}

/* Ends a drained connection: FIN, then LINGERING (see the diagram); or closes at once when the
 * client already sent its EOF, since then nothing unread can be left to provoke a reset. */
static void conn_finish(sd_http_conn *conn) {
    if (conn->eof) {
        conn_close(conn);
        return;
    }
    conn->shutting = true;
    conn_update_reading(conn);
    if (uv_shutdown(&conn->shutdown_req, (uv_stream_t *)&conn->tcp, on_shutdown) != 0)
        conn_close(conn);
}

/*
 * The one place that acts on a connection's state after anything happened to it (a read, a
 * write completing, a handler answering): resume a paused parser, flush output, finish a
 * connection that has nothing left to do, refresh the idle deadline, start or stop reading.
 */
static void conn_after_io(sd_http_conn *conn) {
    if (conn->in_read || conn->closing || conn->shutting)
        return;
    sd_http_server *srv = conn->srv;
    while (conn->paused && !conn->close_after && conn->nqueue < srv->opts.max_pipelined) {
        conn_resume(conn);
        if (conn->closing)
            return;
    }
    conn_flush(conn);
    if (conn->closing)
        return;
    if (conn->close_after && conn->head == NULL && !conn->writing && conn->wbuf.len == 0) {
        conn_finish(conn);
        return;
    }
    /* The client is the one expected to act: between requests, inside a body, or when a
     * write is stuck. While only handlers are busy, no idle deadline applies. */
    bool waiting = conn->head == NULL || conn->writing || (conn->cur && !conn->in_headers);
    conn->idle_deadline = waiting ? uv_now(srv->loop) + (uint64_t)srv->opts.idle_timeout_ms : 0;
    conn_update_reading(conn);
}

/* The client sent FIN: answer what is queued (it may be waiting for that), then close. */
static void conn_on_eof(sd_http_conn *conn) {
    conn->eof = true;
    conn->reading = false; /* libuv stops reading at EOF by itself */
    if (conn->lingering) {
        conn_close(conn);
        return;
    }
    conn->close_after = true;
    queue_drop_cur(conn);
    conn_after_io(conn);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    sd_http_conn *conn = stream->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            conn_on_eof(conn);
        else
            conn_close(conn);
        return;
    }
    if (conn->lingering || conn->close_after)
        return; /* input after the last request we will answer is discarded */
    conn->in_read = true;
    conn_parse(conn, buf->base, (size_t)nread);
    conn->in_read = false;
    conn_after_io(conn);
}

/* ---- Closing --------------------------------------------------------------------------------- */

static void srv_settle(sd_http_server *srv);
static void srv_check_drained(sd_http_server *srv);

/* Frees a closed connection once no handler holds one of its requests (invariant 3). */
static void conn_release(sd_http_conn *conn) {
    if (!conn->closed || conn->held > 0)
        return;
    sd_http_server *srv = conn->srv;
    buf_free(&conn->wbuf);
    buf_free(&conn->inflight);
    buf_free(&conn->pending);
    free(conn);
    srv->conns_alive--;
    srv_settle(srv);
}

static void on_conn_closed(uv_handle_t *handle) {
    sd_http_conn *conn = handle->data;
    sd_http_server *srv = conn->srv;
    conn->closed = true;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    srv->nconns--;
    srv_check_drained(srv);
    conn_release(conn);
}

/* Closes at once. Requests whose handlers are still running are detached (invariant 2); the
 * others go back to the pool. */
static void conn_close(sd_http_conn *conn) {
    if (conn->closing)
        return;
    conn->closing = true;
    conn->reading = false;
    sd_http_req *req = conn->head;
    while (req) {
        sd_http_req *next = req->next;
        if (req->state == REQ_HANDLING) {
            req->detached = true;
            req->next = NULL;
            conn->held++;
        } else {
            req_put(conn->srv, req);
        }
        req = next;
    }
    conn->head = conn->tail = conn->cur = NULL;
    conn->nqueue = 0;
    uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
}

/* ---- Timeouts -------------------------------------------------------------------------------- */

static void on_sweep(uv_timer_t *timer) {
    sd_http_server *srv = timer->data;
    uint64_t now = uv_now(srv->loop);
    for (sd_http_conn *conn = srv->conns; conn; conn = conn->next) {
        if (conn->closing)
            continue;
        if (conn->header_deadline && now >= conn->header_deadline) {
            srv->header_timeouts++;
            sd_log(SD_LOG_DEBUG, "http.header_timeout", "peer=%s", conn->peer);
            conn_close(conn);
        } else if (conn->idle_deadline && now >= conn->idle_deadline) {
            if (!conn->lingering)
                srv->idle_timeouts++;
            conn_close(conn);
        }
    }
}

/* ---- Accepting and listening ----------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status) {
    sd_http_server *srv = listener->data;
    if (status < 0) {
        /* Typically EMFILE under a connection flood: log it at most once a second. */
        uint64_t now = uv_now(srv->loop);
        if (now - srv->last_accept_error_ms >= 1000) {
            srv->last_accept_error_ms = now;
            sd_log(SD_LOG_WARN, "http.accept_failed", "error=%s", uv_strerror(status));
        }
        return;
    }
    sd_http_conn *conn = sd_xcalloc(1, sizeof *conn);
    conn->srv = srv;
    srv->conns_alive++;
    uv_tcp_init(srv->loop, &conn->tcp);
    conn->tcp.data = conn;
    conn->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = conn;
    srv->conns = conn;
    srv->nconns++;
    if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
        conn_close(conn);
        return;
    }
    if (srv->nconns > srv->opts.max_connections) {
        srv->rejected++;
        conn_close(conn);
        return;
    }
    srv->accepted++;
    uv_tcp_nodelay(&conn->tcp, 1);
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    if (uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, conn->peer, sizeof conn->peer);
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, conn->peer, sizeof conn->peer);
    }
    http_parser_init(&conn->parser, HTTP_REQUEST);
    conn->parser.data = conn;
    conn->header_deadline = uv_now(srv->loop) + (uint64_t)srv->opts.header_timeout_ms;
    conn_after_io(conn);
}

/* "HOST:PORT" with an IPv4 host, or "[v6]:PORT". */
static int parse_listen_addr(const char *addr, struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN];
    const char *port_text;
    size_t hlen;
    bool v6 = addr[0] == '[';
    if (v6) {
        const char *end = strchr(addr, ']');
        if (end == NULL || end[1] != ':')
            return -EINVAL;
        hlen = (size_t)(end - addr - 1);
        if (hlen >= sizeof host)
            return -EINVAL;
        memcpy(host, addr + 1, hlen);
        port_text = end + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon == NULL)
            return -EINVAL;
        hlen = (size_t)(colon - addr);
        if (hlen >= sizeof host)
            return -EINVAL;
        memcpy(host, addr, hlen);
        port_text = colon + 1;
    }
    host[hlen] = '\0';
    long long port;
    if (sd_parse_ll(port_text, 0, 65535, &port) != 0)
        return -EINVAL;
    memset(ss, 0, sizeof *ss);
    if (v6)
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) ? -EINVAL : 0;
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) ? -EINVAL : 0;
}

int sd_http_server_listen(sd_http_server *srv, const char *addr) {
    if (srv->listening || srv->stopping || addr == NULL)
        return -EINVAL;
    struct sockaddr_storage ss;
    int r = parse_listen_addr(addr, &ss);
    if (r < 0)
        return r;
    /* The socket is bound before libuv sees it, so a failure leaves no handle to close and the
     * server can simply be freed. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t sslen =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
        r = -errno;
        close(fd);
        return r;
    }
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    srv->handles_open++;
    srv->listening = true;
    r = uv_tcp_open(&srv->listener, fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
    if (r != 0) {
        srv->listening = false;
        uv_close((uv_handle_t *)&srv->listener, srv_handle_closed);
        return r;
    }

    /* One coarse timer checks every connection's deadlines: a quarter of the shortest timeout,
     * so a deadline is enforced at most 25% late. */
    if (!srv->sweep_started) {
        int t = srv->opts.header_timeout_ms < srv->opts.idle_timeout_ms
                    ? srv->opts.header_timeout_ms
                    : srv->opts.idle_timeout_ms;
        uint64_t every = (uint64_t)(t / 4 < 5 ? 5 : t / 4 > 1000 ? 1000 : t / 4);
        uv_timer_init(srv->loop, &srv->sweep);
        srv->sweep.data = srv;
        srv->handles_open++;
        srv->sweep_started = true;
        uv_timer_start(&srv->sweep, on_sweep, every, every);
        uv_unref((uv_handle_t *)&srv->sweep);
    }
    sd_log(SD_LOG_INFO, "http.listening", "addr=%s port=%d", addr, srv->port);
    return 0;
}

int sd_http_server_port(const sd_http_server *srv) {
    return srv->port;
}

/* ---- Stopping and freeing -------------------------------------------------------------------- */

static void srv_destroy(sd_http_server *srv) {
    for (size_t i = 0; i < srv->nroutes; i++)
        free(srv->routes[i].path);
    free(srv->routes);
    for (size_t i = 0; i < srv->nstats; i++) {
        free(srv->stats[i]->label);
        free(srv->stats[i]);
    }
    free(srv->stats);
    free(srv->metrics);
    buf_free(&srv->metrics_text);
    while (srv->pool) {
        sd_http_req *req = srv->pool;
        srv->pool = req->next;
        req_destroy(req);
    }
    free(srv->rbuf);
    free(srv->server_line);
    free(srv);
}

/* Runs done_cb once the last handle of a stopped server has closed, and performs a free that
 * had to wait for handles or for handlers still holding detached requests. */
static void srv_settle(sd_http_server *srv) {
    if (srv->handles_open > 0)
        return;
    if (srv->final_close && !srv->done_called) {
        srv->done_called = true;
        sd_log(SD_LOG_INFO, "http.stopped", "port=%d", srv->port);
        if (srv->done_cb) {
            bool deferred_free = srv->free_pending;
            srv->done_cb(srv, srv->done_udata); /* may free srv */
            if (!deferred_free)
                return;
        }
    }
    if (srv->free_pending && srv->conns_alive == 0)
        srv_destroy(srv);
}

static void srv_handle_closed(uv_handle_t *handle) {
    sd_http_server *srv = handle->data;
    srv->handles_open--;
    srv_settle(srv);
}

/* When a stopping server has no connection left, its timers close; done follows. */
static void srv_check_drained(sd_http_server *srv) {
    if (!srv->stopping || srv->nconns > 0 || srv->final_close)
        return;
    srv->final_close = true;
    uv_close((uv_handle_t *)&srv->grace, srv_handle_closed);
    if (srv->sweep_started)
        uv_close((uv_handle_t *)&srv->sweep, srv_handle_closed);
}

static void on_grace_expired(uv_timer_t *timer) {
    sd_http_server *srv = timer->data;
    sd_log(SD_LOG_WARN, "http.grace_expired", "port=%d connections=%d", srv->port, srv->nconns);
    for (sd_http_conn *conn = srv->conns; conn; conn = conn->next)
        conn_close(conn);
}

/* An idle connection closes now; one with requests in flight answers them (with
 * "Connection: close" on the last) and then closes. */
static void conn_stop(sd_http_conn *conn) {
    if (conn->closing || conn->close_after)
        return;
    conn->close_after = true;
    queue_drop_cur(conn);
    conn->pending.len = 0;
    if (conn->head == NULL && !conn->writing && conn->wbuf.len == 0) {
        conn_close(conn);
        return;
    }
    conn_after_io(conn);
}

static void signals_close(sd_http_server *srv) {
    if (!srv->signals_started)
        return;
    srv->signals_started = false;
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&srv->signals[i], srv_handle_closed);
}

void sd_http_server_stop(sd_http_server *srv, int grace_ms,
                         void (*done_cb)(sd_http_server *srv, void *udata), void *udata) {
    if (srv->stopping)
        return;
    srv->stopping = true;
    srv->done_cb = done_cb;
    srv->done_udata = udata;
    sd_log(SD_LOG_INFO, "http.stopping", "port=%d connections=%d grace_ms=%d", srv->port,
           srv->nconns, grace_ms);
    if (srv->listening) {
        srv->listening = false;
        uv_close((uv_handle_t *)&srv->listener, srv_handle_closed);
    }
    signals_close(srv);
    /* The grace timer exists even when nothing is in flight: closing it is what makes done_cb
     * run from a close callback, never from inside this call. */
    uv_timer_init(srv->loop, &srv->grace);
    srv->grace.data = srv;
    srv->handles_open++;
    uv_timer_start(&srv->grace, on_grace_expired, (uint64_t)(grace_ms > 0 ? grace_ms : 0), 0);
    for (sd_http_conn *conn = srv->conns; conn; conn = conn->next)
        conn_stop(conn);
    srv_check_drained(srv);
}

void sd_http_server_free(sd_http_server *srv) {
    if (srv == NULL)
        return;
    if (srv->handles_open > 0 || srv->conns_alive > 0) {
        srv->free_pending = true;
        return;
    }
    srv_destroy(srv);
}

static void on_signal(uv_signal_t *handle, int signum) {
    sd_http_server *srv = handle->data;
    sd_log(SD_LOG_INFO, "http.signal", "signal=%s", signum == SIGINT ? "SIGINT" : "SIGTERM");
    sd_http_server_stop(srv, srv->signal_grace_ms, NULL, NULL);
}

int sd_http_server_stop_on_signals(sd_http_server *srv, int grace_ms) {
    if (srv->signals_started || srv->stopping)
        return -EINVAL;
    static const int signums[2] = {SIGINT, SIGTERM};
    srv->signal_grace_ms = grace_ms;
    srv->signals_started = true;
    int r = 0;
    for (int i = 0; i < 2; i++) {
        uv_signal_init(srv->loop, &srv->signals[i]);
        srv->signals[i].data = srv;
        srv->handles_open++;
        if (r == 0)
            r = uv_signal_start(&srv->signals[i], on_signal, signums[i]);
        /* The signal handles alone must not keep the loop running. */
        uv_unref((uv_handle_t *)&srv->signals[i]);
    }
    if (r != 0)
        signals_close(srv);
    return r;
}

/* ---- Requests -------------------------------------------------------------------------------- */

const char *sd_http_req_method(const sd_http_req *req) {
    return http_method_str((enum http_method)req->method);
}

const char *sd_http_req_path(const sd_http_req *req) {
    return req->path_off == NO_OFF ? "" : req->store.p + req->path_off;
}

const char *sd_http_req_query(const sd_http_req *req) {
    return req->query_off == NO_OFF ? "" : req->store.p + req->query_off;
}

const char *sd_http_req_header(const sd_http_req *req, const char *name) {
    for (size_t i = 0; i < req->nheaders; i++) {
        const header *h = &req->headers[i];
        if (strcasecmp(req->store.p + h->name, name) == 0)
            return h->value == NO_OFF ? "" : req->store.p + h->value;
    }
    return NULL;
}

const char *sd_http_req_body(const sd_http_req *req, size_t *len) {
    if (len)
        *len = req->body_len;
    return req->body_len ? req->store.p + req->body_off : "";
}

const char *sd_http_req_peer(const sd_http_req *req) {
    return req->conn->peer;
}

sd_http_server *sd_http_req_server(const sd_http_req *req) {
    return req->conn->srv;
}

/* A name must be a token and a value must not hold CR, LF or NUL: anything else would let a
 * handler's input split the response (header injection). Such a header is dropped. */
static bool header_ok(const char *name, const char *value) {
    if (*name == '\0')
        return false;
    for (const char *s = name; *s; s++)
        if (*s <= ' ' || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s))
            return false;
    return strpbrk(value, "\r\n") == NULL;
}

void sd_http_req_add_header(sd_http_req *req, const char *name, const char *value) {
    if (!header_ok(name, value)) {
        sd_log(SD_LOG_WARN, "http.bad_response_header", "dropped=true");
        return;
    }
    buf_append_str(&req->extra, name);
    buf_append(&req->extra, ": ", 2);
    buf_append_str(&req->extra, value);
    buf_append(&req->extra, "\r\n", 2);
}

static void stats_record(sd_http_server *srv, const sd_http_req *req, int status) {
    route_stats *st = srv->stats[req->stats];
    uint64_t ns = sd_now_ns() - req->start_ns;
    int i = 0;
    while (i < NBUCKETS && ns > bucket_ns[i])
        i++;
    st->buckets[i]++;
    st->by_status[status - 100]++;
    st->count++;
    st->sum_ns += ns;
}

/*
 * Renders the response. "Connection: close" goes on a response after which the connection
 * closes: the client asked for it (or spoke HTTP/1.0 without keep-alive), or the connection is
 * draining and this is the last queued request. HTTP/1.0 keep-alive must be confirmed.
 */
static void req_render(sd_http_req *req, sd_http_buf *b, int status, const char *ctype,
                       const char *body, size_t len) {
    sd_http_conn *conn = req->conn;
    sd_http_server *srv = conn->srv;
    bool no_body = status == 204 || status == 304;
    buf_reserve(b, 160 + srv->server_line_len + req->extra.len + len);
    buf_append(b, "HTTP/1.1 ", 9);
    buf_append_u64(b, (uint64_t)status);
    buf_append(b, " ", 1);
    buf_append_str(b, http_status_str((enum http_status)status));
    buf_append(b, "\r\n", 2);
    buf_append(b, srv->server_line, srv->server_line_len);
    if (ctype && !no_body) {
        buf_append(b, "Content-Type: ", 14);
        buf_append_str(b, ctype);
        buf_append(b, "\r\n", 2);
    }
    if (!no_body) {
        buf_append(b, "Content-Length: ", 16);
        buf_append_u64(b, len);
        buf_append(b, "\r\n", 2);
    }
    if (!req->keep_alive || (conn->close_after && req->next == NULL && conn->cur == NULL))
        buf_append_str(b, "Connection: close\r\n");
    else if (req->http10)
        buf_append_str(b, "Connection: keep-alive\r\n");
    buf_append(b, req->extra.p, req->extra.len);
    buf_append(b, "\r\n", 2);
    if (!no_body && !req->is_head)
        buf_append(b, body, len);
}

void sd_http_req_respond(sd_http_req *req, int status, const char *content_type, const char *body,
                         size_t len) {
    assert(req->state == REQ_HANDLING);
    sd_http_conn *conn = req->conn;
    sd_http_server *srv = conn->srv;
    if (status < 200 || status > 599) {
        sd_log(SD_LOG_ERROR, "http.bad_status", "status=%d path=%s", status, sd_http_req_path(req));
        status = 500;
        content_type = NULL;
        len = 0;
    }
    stats_record(srv, req, status);
    if (req->detached) {
        conn->held--;
        req_put(srv, req);
        conn_release(conn);
        return;
    }
    /* At the head of the queue the response can go straight to the output (invariant 1). */
    req_render(req, req == conn->head ? &conn->wbuf : &req->out, status, content_type,
               body ? body : "", len);
    req->state = REQ_RESPONDED;
    conn_drain(conn);
    conn_after_io(conn);
}

void sd_http_req_respond_json(sd_http_req *req, int status, json_t *json) {
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    if (text == NULL) {
        sd_http_req_respond_problem(req, 500, "about:blank", "Internal Server Error",
                                    "The response could not be encoded as JSON.", NULL);
        return;
    }
    sd_http_req_respond(req, status, "application/json", text, strlen(text));
    free(text);
}

void sd_http_req_respond_problem(sd_http_req *req, int status, const char *type, const char *title,
                                 const char *detail, json_t *extra) {
    json_t *p = json_object();
    json_object_set_new(p, "type", json_string(type ? type : "about:blank"));
    json_object_set_new(p, "title",
                        json_string(title ? title : http_status_str((enum http_status)status)));
    json_object_set_new(p, "status", json_integer(status));
    if (detail)
        json_object_set_new(p, "detail", json_string(detail));
    /* Extension members may not replace the standard ones (RFC 9457 section 3.2). */
    if (extra) {
        json_object_update_missing(p, extra);
        json_decref(extra);
    }
    char *text = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    if (text == NULL) {
        sd_http_req_respond(req, status, NULL, NULL, 0);
        return;
    }
    sd_http_req_respond(req, status, "application/problem+json", text, strlen(text));
    free(text);
}

/* ---- Built-in routes ------------------------------------------------------------------------- */

static void healthz_cb(sd_http_req *req, void *udata) {
    static const char body[] = "{\"status\":\"ok\"}";
    sd_http_req_respond(req, 200, "application/json", body, sizeof body - 1);
}

/* Prometheus text exposition format 0.0.4: HELP and TYPE once per metric family, then one
 * sample per line. Histogram buckets are cumulative. */
static void metrics_cb(sd_http_req *req, void *udata) {
    sd_http_server *srv = sd_http_req_server(req);
    sd_http_buf *b = &srv->metrics_text;
    b->len = 0;
    sd_http_buf_printf(b, "# HELP http_requests_total HTTP requests answered, by the route "
                          "pattern that matched and the status.\n"
                          "# TYPE http_requests_total counter\n");
    for (size_t i = 0; i < srv->nstats; i++)
        for (int s = 0; s < 500; s++)
            if (srv->stats[i]->by_status[s])
                sd_http_buf_printf(b, "http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                                   srv->stats[i]->label, s + 100,
                                   (unsigned long long)srv->stats[i]->by_status[s]);
    sd_http_buf_printf(b, "# HELP http_request_duration_seconds Time from a request's first "
                          "byte to its response, by route pattern.\n"
                          "# TYPE http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < srv->nstats; i++) {
        const route_stats *st = srv->stats[i];
        if (st->count == 0)
            continue;
        uint64_t cum = 0;
        for (int k = 0; k <= NBUCKETS; k++) {
            cum += st->buckets[k];
            sd_http_buf_printf(b,
                               "http_request_duration_seconds_bucket{route=\"%s\",le=\"%s\"} "
                               "%llu\n",
                               st->label, k < NBUCKETS ? bucket_le[k] : "+Inf",
                               (unsigned long long)cum);
        }
        sd_http_buf_printf(b, "http_request_duration_seconds_sum{route=\"%s\"} %.9f\n", st->label,
                           (double)st->sum_ns / 1e9);
        sd_http_buf_printf(b, "http_request_duration_seconds_count{route=\"%s\"} %llu\n", st->label,
                           (unsigned long long)st->count);
    }
    sd_http_buf_printf(b,
                       "# HELP http_connections_open Client connections open now.\n"
                       "# TYPE http_connections_open gauge\n"
                       "http_connections_open %d\n"
                       "# HELP http_connections_accepted_total Client connections accepted.\n"
                       "# TYPE http_connections_accepted_total counter\n"
                       "http_connections_accepted_total %llu\n"
                       "# HELP http_connections_rejected_total Connections closed at once "
                       "because max_connections were open.\n"
                       "# TYPE http_connections_rejected_total counter\n"
                       "http_connections_rejected_total %llu\n"
                       "# HELP http_connection_timeouts_total Connections closed by a "
                       "timeout, by phase.\n"
                       "# TYPE http_connection_timeouts_total counter\n"
                       "http_connection_timeouts_total{phase=\"header\"} %llu\n"
                       "http_connection_timeouts_total{phase=\"idle\"} %llu\n",
                       srv->nconns, (unsigned long long)srv->accepted,
                       (unsigned long long)srv->rejected, (unsigned long long)srv->header_timeouts,
                       (unsigned long long)srv->idle_timeouts);
    for (size_t i = 0; i < srv->nmetrics; i++)
        srv->metrics[i].cb(b, srv->metrics[i].udata);
    sd_http_req_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b->p, b->len);
}
