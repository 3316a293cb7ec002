/*
 * http_reply.c - the handler's side of http.h: reading a parsed request, adding response
 * headers, and answering, plain, as JSON or as an RFC 9457 problem. Each answer is counted in
 * its route's statistics (shown by /metrics in http_server.c), rendered, and handed to http.c,
 * which sends it in request order (invariant 1 in http.c) or drops it when the connection has
 * gone (invariants 2 and 3).
 *
 * This is the per-request path of every response: rendering writes the status line and headers
 * by hand, without snprintf, straight into the connection's output buffer when it can.
 */
#include "http_internal.h"

#include <assert.h>
#include <strings.h>

/* ---- Reading a request ----------------------------------------------------------------------- */

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

/* ---- Answering ------------------------------------------------------------------------------- */

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

/* Counts a response in its route's row: by status, and in the latency histogram from the
 * request's first byte to now. */
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
        sd_http__req_drop_detached(req);
        return;
    }
    /* At the head of the queue the response can go straight to the output (invariant 1). */
    req_render(req, req == conn->head ? &conn->wbuf : &req->out, status, content_type,
               body ? body : "", len);
    req->state = REQ_RESPONDED;
    sd_http__req_answered(req);
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
