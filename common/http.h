/*
 * http.h - a small HTTP/1.1 server on libuv + http_parser, shared by every component's server.
 *
 * What it does
 *  - Keep-alive and pipelining: requests on one connection are parsed as they arrive and their
 *    responses are written strictly in request order, even when a later handler answers first.
 *  - Bodies with Content-Length; a chunked request body is refused with 411.
 *  - Limits: header bytes (431; 414 when the request target alone is too long), body bytes
 *    (413; per route when the route sets its own), open connections (new ones closed at once),
 *    pipelined requests queued per connection, and response bytes not yet taken by a client
 *    that does not read (parsing and reading pause past max_output_bytes).
 *  - Timeouts: a request's headers must arrive within header_timeout_ms (slow-loris), the whole
 *    request with its body within request_timeout_ms (408), output over max_output_bytes must
 *    drain within send_timeout_ms, an idle keep-alive connection is closed after
 *    idle_timeout_ms.
 *  - Strict about what could smuggle a request past a proxy: whitespace in a header name
 *    (400), an HTTP major version other than 1 (505), an Expect other than 100-continue (417).
 *  - Graceful stop: stop accepting, let in-flight requests finish within a grace period, close.
 *  - Built-in routes GET /healthz and GET /metrics (Prometheus text: requests by route and
 *    status, a latency histogram, plus whatever components add with a metrics callback).
 *  - Reply helpers for JSON (jansson) and RFC 9457 application/problem+json.
 *
 * Handlers are asynchronous: a handler receives an sd_http_req and must, now or later, call
 * exactly one of the sd_http_req_respond* functions for it. After that call the request object
 * is no longer the handler's to touch. If the client goes away first, the request stays valid
 * until the handler responds (the response is then discarded), so handlers never see a
 * dangling pointer.
 *
 * Threading: one server runs on one uv_loop; every function here must be called on that loop's
 * thread.
 */
#ifndef SD_HTTP_H
#define SD_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sd_http_server sd_http_server;
typedef struct sd_http_req sd_http_req;

/*
 * Server options. A zero field keeps its default, so fields added later leave existing callers
 * unchanged.
 */
typedef struct sd_http_opts {
    size_t max_header_bytes; /* request line + headers, default 16 KiB -> 431 (414: target) */
    size_t max_body_bytes;   /* default 1 MiB -> 413; a route may set its own */
    int max_connections;     /* default 10000; over it new connections are closed at once */
    int max_pipelined;       /* requests queued on one connection, default 64 */
    int header_timeout_ms;   /* default 10000; the whole header must arrive in time */
    int idle_timeout_ms;     /* default 60000; keep-alive idle limit */
    const char *server_name; /* the Server header value, default "sysdesign" */
    /* Response bytes of one connection not yet taken by the kernel, default 16 KiB. Checked
     * after each parsed request: past it the connection parses and reads nothing more until
     * the client has taken its responses (one response may overshoot it). It is also the
     * slice of output a connection with a backlog of pipelined requests gets per turn of the
     * loop, which keeps other clients' latency low while one pipelines. */
    size_t max_output_bytes;
    int request_timeout_ms; /* default 30000; the whole request, header and body, from its
                               first byte (from accept for the first) -> 408, then close */
    int send_timeout_ms;    /* default 30000; output over max_output_bytes for this long (the
                               client does not read) -> the connection is closed */
} sd_http_opts;

/* Fills *opts with the defaults above. */
void sd_http_opts_default(sd_http_opts *opts);

/* A handler. It must eventually respond to req exactly once (see above). */
typedef void sd_http_handler_cb(sd_http_req *req, void *udata);

/* Appends Prometheus text lines to buf (a growing string; use sd_http_buf_printf). */
typedef struct sd_http_buf sd_http_buf;
typedef void sd_http_metrics_cb(sd_http_buf *buf, void *udata);
void sd_http_buf_printf(sd_http_buf *buf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Creates a server on loop. opts may be NULL (defaults). Never returns NULL. */
sd_http_server *sd_http_server_new(uv_loop_t *loop, const sd_http_opts *opts);

/*
 * Adds a route. method is "GET", "POST", ... or NULL for any method; path is matched exactly,
 * or as a prefix when it ends in '*' ("/v1/" then '*'), or "*" for everything not matched
 * otherwise.
 * The first matching route in the order added wins; /healthz and /metrics are matched before
 * all routes. A path that matches a route with another method gets 405; no route gets 404.
 * Returns 0 or -EINVAL.
 */
int sd_http_server_route(sd_http_server *srv, const char *method, const char *path,
                         sd_http_handler_cb *cb, void *udata);

/* What a route may set for itself; a zero field keeps the server's setting. */
typedef struct sd_http_route_opts {
    /* The largest request body this route accepts, checked against Content-Length as soon as
     * the header is parsed (413). 0: the server's max_body_bytes; SD_HTTP_BODY_NONE: no body
     * at all, for routes that read none (the built-in /healthz and /metrics use it). */
    size_t max_body_bytes;
} sd_http_route_opts;

#define SD_HTTP_BODY_NONE ((size_t)-1)

/* sd_http_server_route with options (opts may be NULL: the server's settings). Returns 0 or
 * -EINVAL. */
int sd_http_server_route_opts(sd_http_server *srv, const char *method, const char *path,
                              sd_http_handler_cb *cb, void *udata, const sd_http_route_opts *opts);

/* Adds a callback whose output is appended to GET /metrics. */
void sd_http_server_add_metrics(sd_http_server *srv, sd_http_metrics_cb *cb, void *udata);

/* The proxies whose X-Forwarded-For the server believes (DESIGN.md contract 10, --trust-proxy):
 * CIDR blocks, IPv4 or IPv6. Zero-initialised: none. */
#define SD_HTTP_TRUST_MAX 16
typedef struct sd_http_trust {
    int n;
    struct {
        int family; /* AF_INET or AF_INET6 */
        int bits;
        unsigned char net[16];
    } nets[SD_HTTP_TRUST_MAX];
} sd_http_trust;

/* Adds "ADDR/BITS" (or a bare address: one host) to t. Returns 0, or -1 with a message in err
 * (not an address, bits out of range, more than SD_HTTP_TRUST_MAX blocks). */
int sd_http_trust_add(sd_http_trust *t, const char *cidr, char *err, size_t errlen);

/* Whether the address text ("10.0.0.1", "::1") lies in one of t's blocks. */
int sd_http_trust_has(const sd_http_trust *t, const char *addr);

/* The server believes X-Forwarded-For from these proxies (copied; t may be NULL: none). */
void sd_http_server_trust(sd_http_server *srv, const sd_http_trust *t);

/*
 * Binds and listens on "HOST:PORT" (IPv4 dotted or "[v6]"; port 0 picks a free port).
 * Returns 0 or a negative errno. sd_http_server_port() then gives the bound port.
 */
int sd_http_server_listen(sd_http_server *srv, const char *addr);
int sd_http_server_port(const sd_http_server *srv);

/*
 * Stops gracefully: closes the listener, closes idle connections, lets requests already being
 * handled finish for up to grace_ms (their responses are sent with Connection: close), then
 * closes everything. done_cb (may be NULL) runs once all handles are closed; the server may be
 * freed from there or after. Calling it twice is harmless.
 */
void sd_http_server_stop(sd_http_server *srv, int grace_ms,
                         void (*done_cb)(sd_http_server *srv, void *udata), void *udata);

/* Frees a server that has been stopped (done_cb ran) or never listened. NULL is a no-op. */
void sd_http_server_free(sd_http_server *srv);

/*
 * Convenience for commands: on SIGINT or SIGTERM, call sd_http_server_stop(srv, grace_ms,
 * done_cb, udata) (done_cb may be NULL; it is where a command frees what its handlers used until
 * the last request finished) and afterwards let uv_run return (the signal handles are closed).
 * Returns 0 or -errno; when it fails, done_cb never runs.
 */
int sd_http_server_stop_on_signals(sd_http_server *srv, int grace_ms,
                                   void (*done_cb)(sd_http_server *srv, void *udata), void *udata);

/*
 * Prints the line every script and test reads to learn where a server listens, on stdout, and
 * flushes it: "listening on http://127.0.0.1:PORT" ("http://[::1]:PORT" for IPv6). Call after
 * sd_http_server_listen succeeded. Returns 0 or a negative errno.
 */
int sd_http_server_print_address(const sd_http_server *srv);

/* Checks a --listen address ("HOST:PORT", IPv4 dotted or "[v6]:PORT", port 0..65535) the way
 * sd_http_server_listen parses it, without binding. Returns 0 or -EINVAL. */
int sd_http_addr_check(const char *addr);

/* ---- Requests ------------------------------------------------------------------------------ */

const char *sd_http_req_method(const sd_http_req *req); /* "GET" */
const char *sd_http_req_path(const sd_http_req *req);   /* "/v1/check", no query */
const char *sd_http_req_query(const sd_http_req *req);  /* "a=1&b=2" or "" */
/* The value of a header (name case-insensitive), or NULL. The first one if repeated. */
const char *sd_http_req_header(const sd_http_req *req, const char *name);
/* The body (NUL-terminated for convenience) and its length; "" and 0 when none. */
const char *sd_http_req_body(const sd_http_req *req, size_t *len);
/* The peer's IP address as text ("127.0.0.1"). */
const char *sd_http_req_peer(const sd_http_req *req);
/* The client's IP address as text: the peer's, unless the peer is a trusted proxy
 * (sd_http_server_trust). Then X-Forwarded-For (several lines are one list, in order) is read
 * from the right, each proxy having appended the address it got the request from: the first
 * address that is not a trusted proxy is the client; entries left of it
 * may be the client's own inventions and are never read. When all are trusted, the left-most;
 * when the header is absent, the peer. An entry may carry a port ("1.2.3.4:5678",
 * "[2001:db8::1]:443") or a zone; one that is still not an address makes the client "unknown"
 * (never the hop before it, which may be loopback); empty entries are skipped. An IPv4-mapped
 * IPv6 address is matched as IPv4. For rate limits per client, Idempotency-Key scopes and the
 * management guard. */
const char *sd_http_req_client(sd_http_req *req);
/* The server this request arrived on. */
sd_http_server *sd_http_req_server(const sd_http_req *req);

/* Adds a response header (copied). Call before responding. */
void sd_http_req_add_header(sd_http_req *req, const char *name, const char *value);

/* Responds with status, content type (may be NULL when there is no body) and body (copied).
 * Content-Length, Date-free minimal headers and keep-alive handling are added here. */
void sd_http_req_respond(sd_http_req *req, int status, const char *content_type, const char *body,
                         size_t len);

/* Responds with a JSON body (application/json). Takes ownership of (steals) `json`. */
void sd_http_req_respond_json(sd_http_req *req, int status, json_t *json);

/*
 * Responds with an RFC 9457 problem (application/problem+json):
 *   {"type": type, "title": title, "status": status, "detail": detail, ...extra}
 * type is a URI reference: "about:blank" for a plain HTTP error, or a relative reference naming
 * the problem ("/problems/quota-exceeded"); detail may be NULL; extra (may be NULL, stolen) adds
 * members.
 */
void sd_http_req_respond_problem(sd_http_req *req, int status, const char *type, const char *title,
                                 const char *detail, json_t *extra);

#endif
