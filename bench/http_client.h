/*
 * http_client.h - an HTTP/1.1 load target for the harness: `bench http` uses it, and so can any
 * scenario that benchmarks one of the project's HTTP servers.
 * Not common/http_client.h (libcurl, for components' outgoing requests): this one measures.
 *
 * It keeps a fixed number of keep-alive connections to one server and sends one request at a
 * time on each (no pipelining: like wrk and wrk2, so results compare). An operation the harness
 * issues while every connection is busy waits in a FIFO queue for the next free one; that wait is
 * part of its latency, as it would be for a real client with a connection pool.
 *
 * Each operation completes with BENCH_OK, or with an error kind:
 *   BENCH_ERR_STATUS   a response whose status is not 2xx/3xx (or what opts->classify says)
 *   BENCH_ERR_CONNECT  could not connect, or the connection was lost before the response
 *   BENCH_ERR_TIMEOUT  no complete response within opts->timeout_ms (the connection is closed
 *                      and reopened, since a late response would otherwise answer the next request)
 *   BENCH_ERR_OTHER    a malformed response
 * A connection closed by the server (Connection: close, keep-alive limit, error) is reopened at
 * once; one that fails to connect is retried with backoff from 10 ms doubling to 1 s. While every
 * connection is waiting out such a backoff, operations fail at once with BENCH_ERR_CONNECT rather
 * than queue into timeouts.
 *
 * Everything runs on the loop given to bench_http_target_new(), on that loop's thread.
 */
#ifndef BENCH_HTTP_CLIENT_H
#define BENCH_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "bench.h"

/* Maps a response status to BENCH_OK or an error kind (BENCH_ERR_STATUS, or a scenario's own
 * kind below BENCH_ERR_KINDS). A rate-limiter scenario may, say, count 429 as a result. */
typedef int bench_http_classify_fn(int status, void *udata);

/* Room for the extra header lines of one request. */
#define BENCH_HTTP_EXTRA_MAX 256

/*
 * Adds header lines to one request: called once per request, just before it is sent, with a
 * buffer of len (BENCH_HTTP_EXTRA_MAX) bytes. Writes whole "Name: value\r\n" lines (not checked:
 * this is the hot path) and returns how many bytes it wrote, 0 for none. A rate-limiter scenario
 * uses it to spread requests over many client keys.
 */
typedef size_t bench_http_extra_fn(char *buf, size_t len, void *udata);

typedef struct bench_http_opts {
    const char *method;         /* "GET" when NULL */
    const char *const *headers; /* "Name: value" lines, NULL-terminated, or NULL; a Host header
                                   here replaces the one derived from the URL */
    const char *body;           /* request body (copied), or NULL */
    size_t body_len;            /* a Content-Length header is sent when body is not NULL */
    int timeout_ms;             /* per request, from the moment it is sent; 0 means 5000 */
    bench_http_classify_fn *classify; /* NULL: 2xx and 3xx are BENCH_OK, others BENCH_ERR_STATUS */
    void *classify_udata;
    bench_http_extra_fn *extra_headers; /* NULL: every request is the same bytes, written from
                                           one buffer (the fast path) */
    void *extra_headers_udata;
} bench_http_opts;

/*
 * Creates the target for `url` (http://host[:port]/path?query; host names are resolved now,
 * IPv4 preferred) with `connections` connections (1..10000), which start connecting at once.
 * opts may be NULL. On success returns 0 and fills *out: out->issue sends one request. On failure
 * returns -EINVAL (bad URL, method, header or count), -EPROTONOSUPPORT (not http://) or
 * -EHOSTUNREACH (name not resolved), and writes a message into err (if not NULL).
 */
int bench_http_target_new(uv_loop_t *loop, const char *url, int connections,
                          const bench_http_opts *opts, bench_target *out, char *err, size_t errlen);

/*
 * Runs the loop until every connection is up. Returns 0; the negative libuv/errno code of the
 * last connect failure when no connection could be made (message in err); or -ETIMEDOUT when
 * only some connected within timeout_ms. For setup code: it runs the whole loop.
 */
int bench_http_target_wait_connected(bench_target *t, int timeout_ms, char *err, size_t errlen);

/* Counters since creation. */
typedef struct bench_http_stats {
    uint64_t connects;       /* successful connects, including reconnects */
    uint64_t connect_errors; /* failed connect attempts */
    uint64_t closed;         /* connections closed by the server or after an error */
    uint64_t responses;      /* complete responses of any status */
} bench_http_stats;

void bench_http_target_stats(const bench_target *t, bench_http_stats *out);

/*
 * Closes every connection. Operations still queued or in flight complete with
 * BENCH_ERR_CONNECT from inside this call. The memory is released once libuv has closed the
 * handles: run the loop afterwards. Sets t->ctx to NULL; a target with a NULL ctx is a no-op.
 */
void bench_http_target_free(bench_target *t);

#endif
