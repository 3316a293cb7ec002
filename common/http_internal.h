/*
 * http_internal.h - what the three files of the HTTP server share; private to common/http*.c.
 *
 * The server of http.h is split by concern:
 *  - http.c         a connection's life: the state machine and its invariants (read that file's
 *                   opening comment first), request objects, parsing, pipelining, limits,
 *                   timeouts, and a connection's part in a graceful stop;
 *  - http_server.c  the server around the connections: options, routes and dispatch, listening,
 *                   stopping, freeing, and the built-in GET /healthz and GET /metrics;
 *  - http_reply.c   the handler's side: reading a request, adding headers, and rendering the
 *                   response in order, plain, as JSON or as an RFC 9457 problem.
 *
 * This header holds the data model they all touch (server, connection, request and the route
 * and statistics rows), the growing buffer with its helpers as static inline functions, since
 * every request calls them many times in each file, and the few functions one file calls in
 * another.
 * Those carry the prefix sd_http__ (two underscores), as libuv marks its internal uv__
 * functions: they are not part of http.h and may change with the implementation.
 */
#ifndef SD_HTTP_INTERNAL_H
#define SD_HTTP_INTERNAL_H

#include "http.h"

#include "sd.h"

#include <http_parser.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

enum {
    READ_BUF_SIZE = 64 * 1024, /* the shared read buffer, libuv's usual suggestion */
    ROUTE_CACHE_SIZE = 64,     /* a power of two */
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

static inline void buf_reserve(sd_http_buf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->p = sd_xrealloc(b->p, cap);
    b->cap = cap;
}

static inline void buf_append(sd_http_buf *b, const void *data, size_t n) {
    if (n == 0)
        return; /* data may be the NULL of an empty buffer, which memcpy must not get */
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static inline void buf_append_str(sd_http_buf *b, const char *s) {
    buf_append(b, s, strlen(s));
}

static inline void buf_free(sd_http_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- Types ----------------------------------------------------------------------------------- */

/* Latency buckets (upper bounds) of http_request_duration_seconds: from 100 us, which a local
 * keep-alive request takes, to 10 s. http_reply.c counts each response into one of them and
 * http_server.c shows them in /metrics. They are static here, not defined once in one file, so
 * the per-response search compares against constants the compiler can see. */
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
    int stats;             /* index into srv->stats */
    size_t max_body_bytes; /* resolved: the route's own limit or the server's; 0: none */
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
    int route;        /* index into srv->routes, or -1 (404/405), found when the header ends */
    uint64_t allowed; /* when route is -1: a bit per method some route takes for this path */
    uint64_t start_ns;
    size_t header_bytes;
    /* The request target, header names and values and the body, each NUL-terminated. */
    sd_http_buf store;
    uint32_t path_off, query_off, body_off;
    size_t path_len, body_len;
    header *headers;
    size_t nheaders, headers_cap;
    sd_http_buf extra;             /* response header lines added by the handler */
    sd_http_buf out;               /* the rendered response while earlier requests are unanswered */
    char client[INET6_ADDRSTRLEN]; /* sd_http_req_client's answer when it is not the peer */
};

struct sd_http_conn {
    uv_tcp_t tcp;
    http_parser parser;
    sd_http_server *srv;
    sd_http_conn *prev, *next; /* srv->conns */
    sd_http_req *head, *tail;  /* requests in arrival order */
    sd_http_req *cur;          /* the request being parsed (the tail), or NULL */
    int nqueue;
    int held;               /* detached requests not yet answered */
    int err_status;         /* why the parser was stopped: the status to answer */
    const char *err_detail; /* and the problem's detail (static text), or NULL */
    uint64_t nrequests;
    /* Loop time in ms, 0 = none: the current request's header and whole request, an idle
     * wait on the client, and output stuck over max_output_bytes. */
    uint64_t header_deadline, request_deadline, idle_deadline, send_deadline;
    sd_http_buf wbuf;     /* output not yet handed to the kernel */
    sd_http_buf inflight; /* output owned by the pending uv_write */
    sd_http_buf pending;  /* unparsed input kept while the parser is paused */
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    bool reading, in_read, in_headers, paused, writing, eof;
    /* Its output went over max_output_bytes while it still had requests to parse: until it has
     * drained everything, it is served one request per turn of the loop (see conn_output_full). */
    bool backlogged;
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
    sd_http_trust trust; /* proxies whose X-Forwarded-For is believed (http_trust.c) */
    char *server_line;   /* "Server: name\r\n" */
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
    void (*signal_done_cb)(sd_http_server *srv, void *udata); /* for the stop a signal starts */
    void *signal_done_udata;
    int port;

    sd_http_conn *conns;
    int nconns;      /* connections whose handle is open */
    int conns_alive; /* connections whose memory is not freed yet */
    int handles_open;

    bool stopping, final_close, done_called, free_pending;
    void (*done_cb)(sd_http_server *srv, void *udata);
    void *done_udata;

    uint64_t accepted, rejected, header_timeouts, idle_timeouts, last_accept_error_ms;
    uint64_t request_timeouts, send_timeouts, output_pauses;
};

/* ---- Defined in http.c ----------------------------------------------------------------------- */

/* Frees the server's spare request objects (when the server is freed). */
void sd_http__req_pool_free(sd_http_server *srv);

/* A handler answered req, which is still on its connection: its response is rendered and its
 * state is REQ_RESPONDED. Moves what can now go out to the output, in order, and acts on it. */
void sd_http__req_answered(sd_http_req *req);

/* A handler answered a detached request: the answer is dropped, the request goes back to the
 * pool, and its connection's memory is freed if this was the last request it waited for. */
void sd_http__req_drop_detached(sd_http_req *req);

/* The listener's connection callback: a new connection enters READING. */
void sd_http__on_connection(uv_stream_t *listener, int status);

/* Starts the one timer that enforces every connection's deadlines. */
void sd_http__sweep_start(sd_http_server *srv);

/* A graceful stop reaches the connections: idle ones close, busy ones start DRAINING. */
void sd_http__conns_stop(sd_http_server *srv);

/* The end of a stop's grace period: every connection left goes to CLOSED at once, detaching
 * the requests whose handlers are still running. */
void sd_http__conns_close(sd_http_server *srv);

/* ---- Defined in http_server.c ---------------------------------------------------------------- */

/* Finds the route of a request whose header has been parsed (stored in req->route) and returns
 * the largest body it accepts in bytes (0: none). */
size_t sd_http__req_route(sd_http_req *req);

/* Calls the handler of the route found by sd_http__req_route, or answers 404 or 405 itself. */
void sd_http__req_dispatch(sd_http_req *req);

/* Unsent response bytes of a connection (output buffer and the write in flight). */
size_t sd_http__conn_unsent(const sd_http_conn *conn);

/* A connection's handle closed: a stopping server with none left closes its timers. */
void sd_http__srv_check_drained(sd_http_server *srv);

/* A connection's memory was freed: runs done_cb or a deferred free once nothing is left. */
void sd_http__srv_settle(sd_http_server *srv);

#endif
