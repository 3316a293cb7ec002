/*
 * http.c - the HTTP/1.1 server of http.h: libuv for I/O, http_parser for the protocol. This file
 * is a connection's life; http_server.c is the server around the connections (options, routes,
 * listening, stopping, /healthz and /metrics) and http_reply.c the handler's side (reading a
 * request, rendering its response). http_internal.h holds the types the three share.
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
 *           READING --- queue reaches max_pipelined, or ---> PAUSED
 *            |  ^         unsent output passes max_output_bytes  |
 *            |  |                                                |
 *            |  +--- queue below the limit and output drained ---+
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
 * Both pauses are checked after every parsed request, so a client that pipelines thousands of
 * requests answered at once and reads nothing makes the server hold at most max_output_bytes
 * (plus one response) for it, whatever it sends. Paused for its output, a connection writes
 * through uv_write, whose callback comes in a later turn of the loop (conn_flush). From then on
 * the connection is "backlogged" until it has drained everything: it renders one response per
 * turn, in turn with all the others, so a hundred such clients delay a well-behaved one by a
 * hundred renders at most, not a hundred times max_output_bytes of them.
 *
 * Timeouts use four deadlines per connection, checked by one coarse server-wide timer rather
 * than a timer per connection (a uv_timer restart per request would cost two heap operations):
 *  - header_deadline: the whole header of a request must arrive in time, counted from its first
 *    byte or from accept (slow-loris); the connection is closed.
 *  - request_deadline: the whole request, header and body, likewise; a request still arriving
 *    then gets 408 and the connection is closed after it. Without it a body trickled a byte at
 *    a time would hold a connection for as long as each byte renewed the idle deadline.
 *  - send_deadline: output over max_output_bytes must drain in time; it runs from the moment
 *    the output goes over and stops when it is back under; the connection is closed.
 *  - idle_deadline: set from the loop's cached clock on each event while the connection waits
 *    on the client: between requests, inside a body, or while a write is stuck.
 */
#include "http_internal.h"

#include <assert.h>
#include <strings.h>
#include <sys/socket.h>

enum {
    REQ_POOL_MAX = 1024,       /* spare request objects kept for reuse */
    REQ_KEEP_BYTES = 8 * 1024, /* larger per-request buffers are freed, not pooled: the pool
                                  holds at most ~1024 * 3 * 8 KiB after any burst */
    LINGER_MS = 1000,          /* how long a closing connection waits for the client's EOF */
};

static void conn_after_io(sd_http_conn *conn);
static void conn_close(sd_http_conn *conn);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

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
    req->route = -1;
    req->allowed = 0;
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

void sd_http__req_pool_free(sd_http_server *srv) {
    while (srv->pool) {
        sd_http_req *req = srv->pool;
        srv->pool = req->next;
        req_destroy(req);
    }
    srv->npool = 0;
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
    conn->request_deadline = 0;
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

/* ---- Parsing ----------------------------------------------------------------------------------
 * http_parser calls these while it walks the bytes of a read. Each request copies what it needs
 * (target, headers, body) into its own reusable store, so the read buffer can be reused at once
 * and a handler that answers later still has everything. */

/* Stops the parser with the status and detail conn_parse() answers (the detail is static). */
static int conn_refuse(sd_http_conn *conn, int status, const char *detail) {
    conn->err_status = status;
    conn->err_detail = detail;
    return -1;
}

/* Answered past max_output_bytes: the client is not reading what it asked for. A backlogged
 * connection counts as full with any output unsent, so that it renders one response per turn
 * of the loop: a hundred clients that pipeline /metrics and read slowly then cost one render
 * each per turn, not max_output_bytes each, and other clients' requests wait one short turn. */
static bool conn_output_full(const sd_http_conn *conn) {
    size_t unsent = sd_http__conn_unsent(conn);
    return unsent > conn->srv->opts.max_output_bytes || (conn->backlogged && unsent > 0);
}

size_t sd_http__conn_unsent(const sd_http_conn *conn) {
    return conn->wbuf.len + conn->inflight.len;
}

static void req_end_piece(sd_http_req *req) {
    if (req->piece != PIECE_NONE)
        buf_append(&req->store, "", 1);
    req->piece = PIECE_NONE;
}

/* Appends header-section bytes, starting a new piece when the kind changes. The limit counts
 * the request target, names and values, plus 4 bytes per header for ": " and CRLF. The target
 * comes first, so while it is still arriving it is all that has been counted: a target over
 * the limit on its own gets 414 URI Too Long (RFC 9110 section 15.5.15) rather than 431. */
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
    if (req->header_bytes > conn->srv->opts.max_header_bytes)
        return kind == PIECE_URL ? conn_refuse(conn, 414, "The request target is too long.")
                                 : conn_refuse(conn, 431, "The request header is too large.");
    /* A field name is a token, which has no whitespace (RFC 9110 section 5.1). http_parser, as
     * built without its strict mode, lets a blank through ("Host : x"); a server that takes
     * that as "Host" while a proxy in front of it did not is how requests are smuggled, so
     * RFC 9112 section 5.1 requires 400. */
    if (kind == PIECE_FIELD && (memchr(at, ' ', len) || memchr(at, '\t', len)))
        return conn_refuse(conn, 400, "A header field name contains whitespace.");
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
    /* A new connection's first request keeps the deadlines set at accept. */
    if (conn->nrequests > 0 || conn->header_deadline == 0) {
        uint64_t now = uv_now(srv->loop);
        conn->header_deadline = now + (uint64_t)srv->opts.header_timeout_ms;
        conn->request_deadline = now + (uint64_t)srv->opts.request_timeout_ms;
    }
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

/* True when every member of every Expect field is 100-continue, the one expectation HTTP
 * defines (RFC 9110 section 10.1.1); empty list members are allowed and ignored. */
static bool req_expect_known(const sd_http_req *req) {
    for (size_t i = 0; i < req->nheaders; i++) {
        const header *h = &req->headers[i];
        if (strcasecmp(req->store.p + h->name, "Expect") != 0 || h->value == NO_OFF)
            continue;
        const char *v = req->store.p + h->value;
        while (*v) {
            size_t n = strcspn(v, ",");
            const char *a = v, *z = v + n;
            while (a < z && (*a == ' ' || *a == '\t'))
                a++;
            while (z > a && (z[-1] == ' ' || z[-1] == '\t'))
                z--;
            if (z > a && !((size_t)(z - a) == 12 && strncasecmp(a, "100-continue", 12) == 0))
                return false;
            v += n + (v[n] == ',');
        }
    }
    return true;
}

static int on_headers_complete(http_parser *p) {
    sd_http_conn *conn = p->data;
    sd_http_req *req = conn->cur;
    req_end_piece(req);
    conn->in_headers = false;
    conn->header_deadline = 0;
    req->method = (uint8_t)p->method;
    req->is_head = p->method == HTTP_HEAD;
    req->keep_alive = http_should_keep_alive(p) != 0;
    req->http10 = p->http_major == 1 && p->http_minor == 0;
    req_split_target(req);

    /* HTTP/1.x only: any 1.x is read as 1.1 (RFC 9112 section 2.3), another major version is
     * a protocol this server does not speak. */
    if (p->http_major != 1)
        return conn_refuse(conn, 505, "Only HTTP/1.x is supported.");
    /* Only Content-Length bodies are accepted: a chunked (or otherwise transfer-coded) body has
     * no length we could check against the limit before reading it. */
    if (p->uses_transfer_encoding || (p->flags & F_CHUNKED))
        return conn_refuse(conn, 411, "Send the body with a Content-Length, not chunked.");
    /* An expectation the server cannot meet must not be ignored (RFC 9110 section 10.1.1):
     * the client may be relying on it. */
    if (!req_expect_known(req))
        return conn_refuse(conn, 417, "The only expectation supported is 100-continue.");
    /* The route decides how large a body it takes: refused here, before any of it is read. */
    size_t max_body = sd_http__req_route(req);
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > max_body)
        return conn_refuse(conn, 413, "The request body is too large.");
    /* A client that asked to be told before it sends its body gets the go-ahead now, but only
     * when nothing is queued before this request, so the interim response stays in order.
     * (Otherwise the client sends the body after its own wait, RFC 9110 section 10.1.1.) An
     * HTTP/1.0 client's expectation is ignored, as the same section requires. */
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > 0 && req == conn->head &&
        p->http_minor >= 1) {
        /* Every member of Expect is 100-continue by now: any member at all asks for it. */
        const char *expect = sd_http_req_header(req, "Expect");
        if (expect && expect[strspn(expect, " \t,")] != '\0')
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
    conn->request_deadline = 0;
    conn->nrequests++;
    if (!req->keep_alive)
        conn->close_after = true;
    /* The handler may answer now or later, and may even stop the server; req is not ours to
     * touch after this call. */
    sd_http__req_dispatch(req);
    /* Checked after every request, not every read: one 64 KiB read of small pipelined
     * requests answered at once (/metrics, 404s) could otherwise render megabytes. */
    bool output_full = conn_output_full(conn);
    if (output_full) {
        conn->backlogged = true;
        conn->srv->output_pauses++;
    }
    if (conn->closing || conn->close_after || conn->nqueue >= conn->srv->opts.max_pipelined ||
        output_full)
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

/* Answers a request the server refuses itself (400, 408, 411, 413, 414, 417, 431, 505) and ends
 * the connection after it: the rest of the input cannot be trusted to start at a request
 * boundary. */
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
    conn->request_deadline = 0;
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
    if (conn->err_status) {
        conn_fail(conn, conn->err_status, conn->err_detail);
        return;
    }
    if (err == HPE_HEADER_OVERFLOW)
        conn_fail(conn, 431, "The request header is too large.");
    else
        conn_fail(conn, 400, http_errno_description(err));
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
    bool backlogged = conn_output_full(conn);
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
    /* Everything written and no input left over: the client has caught up. */
    if (conn->wbuf.len == 0 && conn->pending.len == 0)
        conn->backlogged = false;
    conn_after_io(conn);
}

/* Hands wbuf to the kernel: uv_try_write first, which nearly always takes everything; the rest
 * goes to uv_write from the other buffer, so new output can accumulate meanwhile.
 *
 * A connection whose parser is paused for its output skips uv_try_write: its write completes
 * in a later turn of the loop at the earliest (libuv defers the callback even when the kernel
 * takes everything at once), and on_write resumes the parser then. So a client that pipelines
 * thousands of requests answered at once is served max_output_bytes per turn, in turn with
 * every other connection, instead of keeping the loop to itself while the kernel's socket
 * buffers swallow megabytes. */
static void conn_flush(sd_http_conn *conn) {
    if (conn->writing || conn->wbuf.len == 0)
        return;
    uv_buf_t b = uv_buf_init(conn->wbuf.p, (unsigned)conn->wbuf.len);
    bool defer = conn->paused && conn_output_full(conn);
    int n = defer ? UV_EAGAIN : uv_try_write((uv_stream_t *)&conn->tcp, &b, 1);
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

/* http_reply.c calls this once a handler's response is rendered (into the output when the
 * request was at the head of the queue, into the request's own buffer otherwise). */
void sd_http__req_answered(sd_http_req *req) {
    sd_http_conn *conn = req->conn;
    conn_drain(conn);
    conn_after_io(conn);
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
    conn->header_deadline = conn->request_deadline = conn->send_deadline = 0;
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
    /* Parse what a pause left while there is room; a pause for output resumes from on_write
     * (see conn_flush). */
    while (conn->paused && !conn->close_after && conn->nqueue < srv->opts.max_pipelined &&
           !conn_output_full(conn)) {
        conn_resume(conn);
        if (conn->closing)
            return;
    }
    conn_flush(conn);
    if (conn->closing)
        return;
    /* Output the client leaves unread past the limit must drain in time; the clock starts
     * when it goes over and stops when it is back under. */
    if (!conn_output_full(conn))
        conn->send_deadline = 0;
    else if (conn->send_deadline == 0)
        conn->send_deadline = uv_now(srv->loop) + (uint64_t)srv->opts.send_timeout_ms;
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
    sd_http__srv_settle(srv);
}

/* http_reply.c calls this when a handler answers a request its connection detached. */
void sd_http__req_drop_detached(sd_http_req *req) {
    sd_http_conn *conn = req->conn;
    conn->held--;
    req_put(conn->srv, req);
    conn_release(conn);
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
    sd_http__srv_check_drained(srv);
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

/* The request deadline passed: a request still arriving (a trickled body, each byte of which
 * renews the idle deadline) is answered 408 and the connection closed after it; with nothing
 * of a request received it is simply closed. */
static void conn_timeout_request(sd_http_conn *conn) {
    conn->request_deadline = 0;
    if (conn->cur == NULL || conn->close_after) {
        conn_close(conn);
        return;
    }
    conn_fail(conn, 408, "The request did not arrive in time."); /* flushes and closes */
}

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
        } else if (conn->request_deadline && now >= conn->request_deadline) {
            srv->request_timeouts++;
            sd_log(SD_LOG_DEBUG, "http.request_timeout", "peer=%s", conn->peer);
            conn_timeout_request(conn);
        } else if (conn->send_deadline && now >= conn->send_deadline) {
            srv->send_timeouts++;
            sd_log(SD_LOG_DEBUG, "http.send_timeout", "peer=%s", conn->peer);
            conn_close(conn);
        } else if (conn->idle_deadline && now >= conn->idle_deadline) {
            if (!conn->lingering)
                srv->idle_timeouts++;
            conn_close(conn);
        }
    }
}

/* One coarse timer checks every connection's deadlines: a quarter of the shortest timeout, so a
 * deadline is enforced at most 25% late. It does not keep the loop alive on its own. */
void sd_http__sweep_start(sd_http_server *srv) {
    if (srv->sweep_started)
        return;
    const int timeouts[] = {srv->opts.header_timeout_ms, srv->opts.idle_timeout_ms,
                            srv->opts.request_timeout_ms, srv->opts.send_timeout_ms};
    int t = timeouts[0];
    for (size_t i = 1; i < sizeof timeouts / sizeof timeouts[0]; i++)
        t = timeouts[i] < t ? timeouts[i] : t;
    uint64_t every = (uint64_t)(t / 4 < 5 ? 5 : t / 4 > 1000 ? 1000 : t / 4);
    uv_timer_init(srv->loop, &srv->sweep);
    srv->sweep.data = srv;
    srv->handles_open++;
    srv->sweep_started = true;
    uv_timer_start(&srv->sweep, on_sweep, every, every);
    uv_unref((uv_handle_t *)&srv->sweep);
}

/* ---- Accepting ------------------------------------------------------------------------------- */

/* The listener's callback (http_server.c listens): a new connection starts in READING, with
 * the header deadline of its first request running from now. */
void sd_http__on_connection(uv_stream_t *listener, int status) {
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
    conn->request_deadline = uv_now(srv->loop) + (uint64_t)srv->opts.request_timeout_ms;
    conn_after_io(conn);
}

/* ---- Graceful stop --------------------------------------------------------------------------- */

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

/* sd_http_server_stop calls this once the listener is closed. Closing a connection only starts
 * uv_close, and the list loses it in the close callback, so walking the list here is safe. */
void sd_http__conns_stop(sd_http_server *srv) {
    for (sd_http_conn *conn = srv->conns; conn; conn = conn->next)
        conn_stop(conn);
}

/* The grace period ended: every connection left closes now, its running requests detached. */
void sd_http__conns_close(sd_http_server *srv) {
    for (sd_http_conn *conn = srv->conns; conn; conn = conn->next)
        conn_close(conn);
}
