/*
 * http_client.h - outgoing HTTP for the components: the webhook sender's deliveries, the cache's
 * origin fetches. libcurl does the protocol (HTTP/1.1, HTTP/2 over TLS, TLS itself, redirects,
 * a per-host pool of keep-alive connections); its multi interface is driven by the caller's
 * libuv loop, so one thread runs any number of requests at once.
 *
 * Why two HTTP clients: bench/http_client.h is the load generator's, a fixed pool of keep-alive
 * connections to one server with no allocation per request, built to measure a server. This one
 * is for components talking to arbitrary servers: DNS, TLS, redirects, response caps, deadlines
 * and an address guard, at the cost of libcurl's work per request. Do not benchmark with it.
 *
 *   sd_http_client *c = sd_http_client_new(loop, NULL);   // NULL: default options
 *   sd_http_request req = {.method = "POST", .url = "https://example.com/hook",
 *                          .headers = hdrs, .body = json, .body_len = n};
 *   sd_http_client_request(c, &req, done_cb, ctx);        // done_cb runs later, exactly once
 *   ...
 *   sd_http_client_free(c);                                // in-flight: done_cb(SD_ECLOSED)
 *
 * Guarantees
 *  1. A request whose start call returns 0 has its callback run exactly once, later, from the
 *     loop; never from inside sd_http_client_request(). A start call that fails returns a
 *     negative code and the callback never runs.
 *  2. Each kind of failure has one code: SD_ETIMEDOUT (connect timeout or total deadline),
 *     SD_EHTTP_REFUSED, SD_EHTTP_DNS, SD_EHTTP_TLS, SD_EHTTP_TOOBIG, SD_EHTTP_RESET,
 *     SD_EHTTP_BLOCKED (the address hook refused), SD_EHTTP_SCHEME, SD_EHTTP_CONNECT (any other
 *     connect failure), SD_EHTTP_PROTOCOL (anything else: a malformed response, too many
 *     redirects), SD_ECLOSED (the client was freed first). An HTTP status, 3xx, 4xx or 5xx
 *     included, is a result (code 0), not an error. The codes live in sd.h so that sd_strerror()
 *     names them beside the Redis layer's: a component that logs both needs one function.
 *  3. A response body never holds more than max_response_bytes: the transfer stops with
 *     SD_EHTTP_TOOBIG as soon as a Content-Length or the bytes received say it would, and what
 *     was received is freed. Response headers are capped at SD_HTTP_CLIENT_MAX_HEADER_BYTES.
 *  4. Only http:// and https:// are used, for the request and for every redirect. Redirects are
 *     followed only when the request asks (max_redirects > 0).
 *  5. Every address the client connects to, for the first request and every redirect, is first
 *     given to the vet hook (if set), after DNS resolution: libcurl asks us to create each
 *     socket (CURLOPT_OPENSOCKETFUNCTION) with the resolved address in hand, and connects that
 *     socket to exactly that address. So a name that resolves to a public address when checked
 *     and to 127.0.0.1 when used (DNS rebinding) is caught: there is no second lookup. No packet
 *     is sent to a refused address. A request that could not connect after the hook refused at
 *     least one address ends with SD_EHTTP_BLOCKED (libcurl itself calls it a connect failure).
 *  6. Proxy environment variables (http_proxy, https_proxy, all_proxy) are ignored; a proxy is
 *     used only when opts.proxy names one: through a proxy the hook vets the proxy's address,
 *     not the target's (the proxy must guard the target), so an implicit one would void the
 *     guard. Keep-alive connections are pooled per client, and the hook is the client's, so a
 *     reused connection was vetted by the same policy.
 *
 * Threading: a client lives on one uv_loop; call everything on that loop's thread. libcurl's
 * process-wide curl_global_init() runs once, on the first sd_http_client_new() (pthread_once);
 * curl_global_cleanup() is never called here (a test may call it at exit for a clean leak
 * report).
 */
#ifndef SD_HTTP_CLIENT_H
#define SD_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "sd.h"

typedef struct sd_http_client sd_http_client;

/* The most response-header bytes kept for one response (over it: SD_EHTTP_TOOBIG). */
#define SD_HTTP_CLIENT_MAX_HEADER_BYTES (64 * 1024)

/*
 * The address hook: called, on the loop's thread and from inside libcurl, with each address the
 * client is about to connect to. Returns 0 to allow the connection, anything else to refuse it
 * (libcurl then tries the name's next address, if any). It must not call into the client.
 * sd_http_addr_is_public() below is the usual policy.
 */
typedef int sd_http_vet_fn(const struct sockaddr *addr, socklen_t len, void *udata);

typedef struct sd_http_client_opts {
    int connect_timeout_ms;       /* default for requests that set none: 10000 */
    int timeout_ms;               /* total deadline default, from the start call: 30000 */
    size_t max_response_bytes;    /* body cap default: 8 MiB */
    int max_connections_per_host; /* open at once; more requests wait for one. Default 32 */
    const char *proxy;            /* "http://host:port" (copied), or NULL for none at all */
    const char *user_agent;       /* copied; NULL: "sysdesign" */
    sd_http_vet_fn *vet;          /* NULL: every address is allowed */
    void *vet_udata;
} sd_http_client_opts;

void sd_http_client_opts_default(sd_http_client_opts *opts);

/* One request. Everything is borrowed for the start call only: the client copies what it keeps. */
typedef struct sd_http_request {
    const char *method;         /* "GET" when NULL; "HEAD" reads no body */
    const char *url;            /* http:// or https:// */
    const char *const *headers; /* "Name: value" lines, NULL-terminated, or NULL */
    const void *body;           /* sent when not NULL (even with body_len 0) */
    size_t body_len;            /* Content-Length of the body */
    int connect_timeout_ms;     /* 0: the client's */
    int timeout_ms;             /* total deadline from the start call, waiting for a
                                   connection included; 0: the client's */
    size_t max_response_bytes;  /* 0: the client's */
    int max_redirects;          /* 0: a 3xx is returned as it is; N: follow up to N */
} sd_http_request;

typedef struct sd_http_header {
    const char *name;  /* as the server spelled it */
    const char *value; /* without surrounding blanks */
} sd_http_header;

/* What the callback gets. Valid only during the callback: copy what you keep (or take the body
 * with sd_http_response_take_body()). */
typedef struct sd_http_response {
    int status;                    /* the final response's status; 0 if none was received */
    const sd_http_header *headers; /* the final response's header fields, in order */
    size_t nheaders;
    char *body; /* NUL-terminated for convenience; NULL on error */
    size_t body_len;
    const char *url;   /* the URL the final response came from (after redirects) */
    int redirects;     /* redirects followed */
    const char *error; /* libcurl's message when err != 0, else "" (for logs) */
} sd_http_response;

/* err is 0 when a response arrived (whatever its status), else a code of guarantee 2. resp is
 * never NULL. The callback may start new requests and may free the client. */
typedef void sd_http_response_cb(int err, sd_http_response *resp, void *udata);

/* Returns the value of the first header field called name (case-insensitive), or NULL. */
const char *sd_http_response_header(const sd_http_response *resp, const char *name);

/* Takes the body out of the response: the caller owns the returned buffer (free()) and the
 * response's body becomes NULL. Returns NULL when there is none. */
char *sd_http_response_take_body(sd_http_response *resp, size_t *len);

/*
 * Creates a client on loop with opts (NULL: defaults; copied). Returns NULL only when libcurl
 * cannot be initialised. Free it with sd_http_client_free().
 */
sd_http_client *sd_http_client_new(uv_loop_t *loop, const sd_http_client_opts *opts);

/*
 * Starts a request; cb(err, resp, udata) runs later, exactly once. Returns 0, or without
 * running cb: SD_EPARSE (no URL, a URL libcurl cannot parse, a header line without ':' or with
 * CR/LF), SD_EHTTP_SCHEME (a scheme other than http/https), SD_ECLOSED (the client is being
 * freed), -ENOMEM (libcurl failed to allocate).
 */
int sd_http_client_request(sd_http_client *c, const sd_http_request *req, sd_http_response_cb *cb,
                           void *udata);

typedef struct sd_http_client_stats {
    uint64_t requests;      /* started (start calls that returned 0) */
    uint64_t in_flight;     /* started, callback not yet run */
    uint64_t connections;   /* sockets opened: connects the hook allowed */
    uint64_t vet_refusals;  /* addresses the hook refused */
    size_t body_bytes_peak; /* the largest body buffer one response has held */
} sd_http_client_stats;

void sd_http_client_stats_get(const sd_http_client *c, sd_http_client_stats *out);

/*
 * Frees the client: every request still in flight has its callback run now with SD_ECLOSED
 * (their requests may start no new ones: SD_ECLOSED), connections are closed, and the memory
 * is released in libuv close callbacks, so run the loop afterwards (uv_run returns once they
 * ran). A no-op for NULL and when the client is already being freed. May be called from a
 * response callback.
 */
void sd_http_client_free(sd_http_client *c);

/*
 * The usual address policy for a hook: returns 1 when addr is a public unicast address, 0 for
 * loopback, private (RFC 1918, RFC 4193), shared (RFC 6598), link-local (which holds cloud
 * metadata services, 169.254.169.254), unspecified, multicast, broadcast, documentation and
 * reserved ranges, and for IPv4 mapped or translated into IPv6 in those ranges.
 */
int sd_http_addr_is_public(const struct sockaddr *addr);

#endif
