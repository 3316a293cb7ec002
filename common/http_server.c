/*
 * http_server.c - the server around the connections of http.c: options and creation, the route
 * table and dispatch (with its 404 and 405), listening, the server's part of a graceful stop,
 * signals, freeing, and the built-in GET /healthz and GET /metrics with the Prometheus text
 * they produce. A connection's own life, with the state machine and the invariants every file
 * keeps, is in http.c; the handler's side (reading a request, rendering its response, counting
 * it in the statistics shown here) is in http_reply.c.
 *
 * Nothing here runs per request except routing, which an exact-path cache keeps to one hash and
 * one comparison for paths seen before.
 */
#include "http_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

enum { LISTEN_BACKLOG = 1024 };

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
    opts->max_output_bytes = 16 * 1024;
    opts->request_timeout_ms = 30000;
    opts->send_timeout_ms = 30000;
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
        if (opts->max_output_bytes)
            srv->opts.max_output_bytes = opts->max_output_bytes;
        if (opts->request_timeout_ms > 0)
            srv->opts.request_timeout_ms = opts->request_timeout_ms;
        if (opts->send_timeout_ms > 0)
            srv->opts.send_timeout_ms = opts->send_timeout_ms;
    }
    srv->server_line = sd_xasprintf("Server: %s\r\n", srv->opts.server_name);
    srv->server_line_len = strlen(srv->server_line);
    srv->opts.server_name = NULL; /* borrowed: only server_line is used from here on */
    srv->rbuf = sd_xmalloc(READ_BUF_SIZE);

    /* http_parser has its own, process-wide header limit (80 KiB by default, reported as
     * HPE_HEADER_OVERFLOW, which we answer with 431). Ours must trip first, or a long target
     * would get 431 instead of 414: http_parser counts each byte as it reads it but hands us
     * a piece only at its end or at the end of a read, so its count may be up to one read
     * buffer ahead of ours. 4 KiB more cover what ours leaves out (method, version, blanks). */
    size_t parser_max = srv->opts.max_header_bytes + READ_BUF_SIZE + 4096;
    if (parser_max > 80 * 1024)
        http_parser_set_max_header_size((uint32_t)parser_max);

    /* A write to a socket the client has closed must be an error (EPIPE), not the death of the
     * process: that is what SIGPIPE does by default. This affects the whole process. */
    signal(SIGPIPE, SIG_IGN);

    /* Neither built-in route reads a body, so none is accepted: a client cannot make the
     * server buffer a megabyte for a health check. */
    stats_row(srv, "unmatched");
    const sd_http_route_opts no_body = {.max_body_bytes = SD_HTTP_BODY_NONE};
    sd_http_server_route_opts(srv, "GET", "/healthz", healthz_cb, NULL, &no_body);
    sd_http_server_route_opts(srv, "GET", "/metrics", metrics_cb, NULL, &no_body);
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
    return sd_http_server_route_opts(srv, method, path, cb, udata, NULL);
}

int sd_http_server_route_opts(sd_http_server *srv, const char *method, const char *path,
                              sd_http_handler_cb *cb, void *udata, const sd_http_route_opts *opts) {
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
    /* Stored as the limit itself: 0 here means no body, not "the server's". */
    r->max_body_bytes = srv->opts.max_body_bytes;
    if (opts && opts->max_body_bytes)
        r->max_body_bytes = opts->max_body_bytes == SD_HTTP_BODY_NONE ? 0 : opts->max_body_bytes;
    memset(srv->cache, 0, sizeof srv->cache);
    return 0;
}

void sd_http_server_add_metrics(sd_http_server *srv, sd_http_metrics_cb *cb, void *udata) {
    srv->metrics = sd_xrealloc(srv->metrics, (srv->nmetrics + 1) * sizeof *srv->metrics);
    srv->metrics[srv->nmetrics++] = (metrics_source){cb, udata};
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

/* on_headers_complete (http.c) calls this for each request, so that the route's body limit
 * can be checked before any of the body is read. A request no route takes may carry a body up
 * to the server's limit: it gets its 404 or 405 once the body has arrived. */
size_t sd_http__req_route(sd_http_req *req) {
    sd_http_server *srv = req->conn->srv;
    req->allowed = 0;
    const route *r = route_find(srv, req, &req->allowed);
    req->route = r ? (int)(r - srv->routes) : -1;
    if (r == NULL)
        return srv->opts.max_body_bytes;
    return r->max_body_bytes;
}

/* on_message_complete (http.c) calls this for each request, in arrival order. */
void sd_http__req_dispatch(sd_http_req *req) {
    req->state = REQ_HANDLING;
    if (req->route < 0) {
        respond_not_found(req, req->allowed);
        return;
    }
    const route *r = &req->conn->srv->routes[req->route];
    req->stats = r->stats;
    r->cb(req, r->udata);
}

/* ---- Listening ------------------------------------------------------------------------------- */

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
        r = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, sd_http__on_connection);
    if (r != 0) {
        srv->listening = false;
        uv_close((uv_handle_t *)&srv->listener, srv_handle_closed);
        return r;
    }
    sd_http__sweep_start(srv);
    sd_log(SD_LOG_INFO, "http.listening", "addr=%s port=%d", addr, srv->port);
    return 0;
}

int sd_http_server_port(const sd_http_server *srv) {
    return srv->port;
}

int sd_http_addr_check(const char *addr) {
    struct sockaddr_storage ss;
    return addr ? parse_listen_addr(addr, &ss) : -EINVAL;
}

int sd_http_server_print_address(const sd_http_server *srv) {
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    if (!srv->listening)
        return -EINVAL;
    int r = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    if (r != 0)
        return r;
    char host[INET6_ADDRSTRLEN] = "";
    bool v6 = ss.ss_family == AF_INET6;
    if (v6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
    else
        uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
    printf("listening on http://%s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "", srv->port);
    return fflush(stdout) == 0 ? 0 : -errno;
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
    sd_http__req_pool_free(srv);
    free(srv->rbuf);
    free(srv->server_line);
    free(srv);
}

/* Runs done_cb once the last handle of a stopped server has closed, and performs a free that
 * had to wait for handles or for handlers still holding detached requests. http.c calls it each
 * time it frees a connection. */
void sd_http__srv_settle(sd_http_server *srv) {
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
    sd_http__srv_settle(srv);
}

/* When a stopping server has no connection left, its timers close; done follows. http.c calls
 * it each time a connection's handle closes. */
void sd_http__srv_check_drained(sd_http_server *srv) {
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
    sd_http__conns_close(srv);
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
    sd_http__conns_stop(srv);
    sd_http__srv_check_drained(srv);
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
    sd_http_server_stop(srv, srv->signal_grace_ms, srv->signal_done_cb, srv->signal_done_udata);
}

int sd_http_server_stop_on_signals(sd_http_server *srv, int grace_ms,
                                   void (*done_cb)(sd_http_server *srv, void *udata), void *udata) {
    if (srv->signals_started || srv->stopping)
        return -EINVAL;
    static const int signums[2] = {SIGINT, SIGTERM};
    srv->signal_grace_ms = grace_ms;
    srv->signal_done_cb = done_cb;
    srv->signal_done_udata = udata;
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

/* ---- Built-in routes ------------------------------------------------------------------------- */

static void healthz_cb(sd_http_req *req, void *udata) {
    static const char body[] = "{\"status\":\"ok\"}";
    sd_http_req_respond(req, 200, "application/json", body, sizeof body - 1);
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
    sd_http_buf_printf(
        b,
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
        "http_connection_timeouts_total{phase=\"idle\"} %llu\n"
        "http_connection_timeouts_total{phase=\"request\"} %llu\n"
        "http_connection_timeouts_total{phase=\"send\"} %llu\n",
        srv->nconns, (unsigned long long)srv->accepted, (unsigned long long)srv->rejected,
        (unsigned long long)srv->header_timeouts, (unsigned long long)srv->idle_timeouts,
        (unsigned long long)srv->request_timeouts, (unsigned long long)srv->send_timeouts);
    /* Output waiting on clients that do not read: a walk over the connections, which only a
     * scrape pays for. */
    size_t unsent = 0;
    int blocked = 0;
    for (const sd_http_conn *c = srv->conns; c; c = c->next) {
        unsent += sd_http__conn_unsent(c);
        blocked += c->send_deadline != 0;
    }
    sd_http_buf_printf(b,
                       "# HELP http_output_unsent_bytes Response bytes not yet taken by the "
                       "kernel, over all connections.\n"
                       "# TYPE http_output_unsent_bytes gauge\n"
                       "http_output_unsent_bytes %zu\n"
                       "# HELP http_connections_output_blocked Connections that parse and read "
                       "nothing because more than max_output_bytes wait on the client.\n"
                       "# TYPE http_connections_output_blocked gauge\n"
                       "http_connections_output_blocked %d\n"
                       "# HELP http_output_pauses_total Times a connection stopped parsing "
                       "because its unsent output passed max_output_bytes.\n"
                       "# TYPE http_output_pauses_total counter\n"
                       "http_output_pauses_total %llu\n",
                       unsent, blocked, (unsigned long long)srv->output_pauses);
    for (size_t i = 0; i < srv->nmetrics; i++)
        srv->metrics[i].cb(b, srv->metrics[i].udata);
    sd_http_req_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b->p, b->len);
}
