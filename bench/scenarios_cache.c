/*
 * scenarios_cache.c - the cache's benchmarks, through `cache serve` in front of `cache-origin`
 * (bench/cache_origin.c), on the run's Redis.
 *
 *   cache.serve.local-hit     50 connections, one hot path: local-tier hits/s and latency
 *   cache.serve.redis-hit     the same with --local-bytes 0: every hit is one EVALSHA (shared by
 *                             the gets of one key that overlap it: one flight per key)
 *   cache.serve.redis-open    open loop, 5,000/s by default (a fraction of the closed loop's
 *                             rate, so that the main job does not fall behind on a busy
 *                             machine; --rate half of the peak for the README): latency with
 *                             headroom, coordinated omission corrected
 *   cache.serve.redis-spread  --local-bytes 0 and 2,000 paths taken in turn: no two requests in
 *                             flight share a path, so none joins another's flight and each hit
 *                             is a Redis look-up of its own (the hot path's peak is raised by
 *                             the gets that share one look-up)
 *   cache.serve.redis-spread-open  the same in an open loop, 5,000/s by default (--rate)
 *   cache.stampede            1,000 connections, one `cache serve`, a 50 ms origin: rounds of
 *                             1,000 concurrent requests for a path nobody asked for before;
 *                             latency of every request, and the origin's calls per round
 *   cache.fleet-stampede      the same with 4 `cache serve` on the one Redis and 400 requests
 *                             per round, spread round-robin over the four (the issue's done-when)
 *   cache.zipf                50 connections, paths drawn from Zipf(0.99) over 100,000 keys, a
 *                             local tier of 1 MiB: the mix of local hits, Redis hits and misses
 *
 * The load is made by a small HTTP target of this file rather than bench/http_client.c,
 * because the path changes per request: a connection pool (one keep-alive connection per
 * operation in flight, each bound to one server), one request at a time per connection, the
 * path chosen when the request is sent. A stampede round is the next `in_flight` operations
 * the load generator issues: in a closed loop all of the first round are issued at once, and
 * each later round as the previous one's answers arrive, so every round is a burst of
 * concurrent misses for one cold path (a request of a round that comes after the round's
 * value is stored is a hit, and faster: the figure only flatters no one).
 *
 * The origin counts its calls (GET /_calls); the teardown prints calls per round. A request
 * counts as successful when it gets a 200.
 *
 * BENCH_CACHE_URL=http://HOST:PORT (with BENCH_CACHE_ORIGIN, the origin's URL) points the hit
 * and stampede scenarios at another cache in front of a `cache-origin` started by the caller:
 * that is how bench/peers/nginx-cache.sh measures nginx proxy_cache with the same client.
 */
#include <errno.h>
#include <http_parser.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"
#include "sd.h"
#include "spawn.h"

#define MAX_SERVERS 4
#define ZIPF_KEYS 100000
#define SPREAD_KEYS 2000
#define OP_TIMEOUT_MS 10000

/* ---- The HTTP target --------------------------------------------------------------------------
 */

typedef struct cb_target cb_target;

typedef struct cb_conn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timer;
    http_parser parser;
    cb_target *t;
    int server;
    int up;           /* connected */
    int busy;         /* a request in flight */
    int closing;      /* uv_close called, waiting for its callbacks */
    int handles_open; /* tcp + timer not yet closed */
    void *token;
    bench_done_fn *done;
    char req[256];
    int status;
    uint64_t sent_ns;
    uint64_t round_no; /* stampede: the round of the request in flight */
    int in_xcache;     /* the header being parsed is X-Cache */
    int miss;          /* its answer said X-Cache: MISS (the round's leader) */
} cb_conn;

/* One stampede request's latency from its send, its round, and whether it was the MISS. */
typedef struct cb_lat {
    uint64_t round;
    uint32_t us;
    int miss;
    int server; /* which instance answered it */
} cb_lat;

typedef struct cb_pending {
    void *token;
    bench_done_fn *done;
} cb_pending;

/* What path the next request asks for: seq is the operation's number since the start. */
typedef int cb_path_fn(cb_target *t, uint64_t seq, char *buf, size_t len);

struct cb_target {
    uv_loop_t *loop;
    struct sockaddr_in addr[MAX_SERVERS];
    int nservers;
    cb_conn **conns;
    int nconns;
    cb_pending *queue; /* ring of operations waiting for a connection */
    size_t qhead, qlen, qcap;
    uint64_t seq;
    cb_path_fn *path;
    int round;       /* stampede: operations per round, sent together (0: no rounds) */
    int outstanding; /* stampede: requests of the current round not yet answered */
    cb_lat *lat;     /* stampede: each request's latency from its send, for the teardown */
    size_t nlat, caplat;
    char run[24];
    double *zipf_cdf;
    bench_later *later; /* completes an operation whose send failed inside issue() */
    uint64_t rng;
    http_parser_settings settings;
};

static void conn_open(cb_conn *c);
static void conn_send(cb_conn *c, void *token, bench_done_fn *done);

static void round_release(cb_target *t, int partial);

static void conn_finish(cb_conn *c, int err) {
    if (!c->busy)
        return;
    c->busy = 0;
    uv_timer_stop(&c->timer);
    void *token = c->token;
    bench_done_fn *done = c->done;
    c->token = NULL;
    cb_target *t = c->t;
    if (t && t->round) {
        if (t->nlat == t->caplat) {
            t->caplat = t->caplat ? t->caplat * 2 : 65536;
            t->lat = sd_xrealloc(t->lat, t->caplat * sizeof *t->lat);
        }
        t->lat[t->nlat++] = (cb_lat){.round = c->round_no,
                                     .us = (uint32_t)((sd_now_ns() - c->sent_ns) / 1000),
                                     .miss = err == BENCH_OK && c->miss,
                                     .server = c->server};
        t->outstanding--;
    } else if (t && c->up && !c->closing && t->qlen > 0) {
        /* Take the next waiting operation before completing this one, so FIFO order holds. */
        cb_pending p = t->queue[t->qhead];
        t->qhead = (t->qhead + 1) % t->qcap;
        t->qlen--;
        conn_send(c, p.token, p.done);
    }
    done(token, err);
    /* A round that could not be completed (the run is ending, or a connection was down) is
     * sent as it is once the previous one is answered. */
    if (t && t->round)
        round_release(t, 1);
}

static void on_conn_closed(uv_handle_t *h) {
    cb_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    cb_target *t = c->t;
    if (t) {
        /* Reopened in place: the pool keeps its size. */
        c->closing = 0;
        c->up = 0;
        conn_open(c);
    } else {
        free(c);
    }
}

static void conn_close(cb_conn *c, int err) {
    conn_finish(c, err);
    if (c->closing)
        return;
    c->closing = 1;
    c->up = 0;
    c->handles_open = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static int on_status(http_parser *p, const char *at, size_t len) {
    cb_conn *c = p->data;
    c->status = (int)p->status_code;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    cb_conn *c = p->data;
    c->in_xcache = len == 7 && strncasecmp(at, "X-Cache", 7) == 0;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    cb_conn *c = p->data;
    if (c->in_xcache && len >= 4 && strncmp(at, "MISS", 4) == 0)
        c->miss = 1;
    c->in_xcache = 0;
    return 0;
}

static int on_complete(http_parser *p) {
    cb_conn *c = p->data;
    int status = (int)p->status_code;
    conn_finish(c, status == 200 ? BENCH_OK : BENCH_ERR_STATUS);
    (void)c->status;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    static char slab[65536];
    buf->base = slab;
    buf->len = sizeof slab;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    cb_conn *c = s->data;
    if (n < 0) {
        conn_close(c, BENCH_ERR_CONNECT);
        return;
    }
    size_t used = http_parser_execute(&c->parser, &c->t->settings, buf->base, (size_t)n);
    if (c->parser.http_errno != HPE_OK || used != (size_t)n)
        conn_close(c, BENCH_ERR_OTHER);
}

static void on_written(uv_write_t *w, int status) {
    cb_conn *c = w->data;
    if (status < 0 && !c->closing)
        conn_close(c, BENCH_ERR_CONNECT);
}

static void on_timeout(uv_timer_t *tm) {
    conn_close(tm->data, BENCH_ERR_TIMEOUT);
}

static void conn_send(cb_conn *c, void *token, bench_done_fn *done) {
    cb_target *t = c->t;
    char path[128];
    t->path(t, t->seq++, path, sizeof path);
    int n = snprintf(c->req, sizeof c->req, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path);
    c->busy = 1;
    c->sent_ns = sd_now_ns();
    c->miss = c->in_xcache = 0;
    c->round_no = t->round ? (t->seq - 1) / (uint64_t)t->round : 0;
    if (t->round)
        t->outstanding++;
    c->token = token;
    c->done = done;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    bench_op_sent(token);
    uv_buf_t b = uv_buf_init(c->req, (unsigned)n);
    uv_timer_start(&c->timer, on_timeout, OP_TIMEOUT_MS, 0);
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        /* This may be inside issue(): the operation completes from the loop instead. */
        c->busy = 0;
        uv_timer_stop(&c->timer);
        if (t->round)
            t->outstanding--;
        bench_later_done(t->later, token, done, BENCH_ERR_CONNECT);
        conn_close(c, BENCH_ERR_CONNECT);
    }
}

static void on_connected(uv_connect_t *req, int status) {
    cb_conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c, BENCH_ERR_CONNECT);
        return;
    }
    c->up = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    cb_target *t = c->t;
    if (t->round) {
        round_release(t, 1);
    } else if (t->qlen > 0) {
        cb_pending p = t->queue[t->qhead];
        t->qhead = (t->qhead + 1) % t->qcap;
        t->qlen--;
        conn_send(c, p.token, p.done);
    }
}

static void conn_open(cb_conn *c) {
    uv_tcp_init(c->t->loop, &c->tcp);
    uv_timer_init(c->t->loop, &c->timer);
    c->tcp.data = c->timer.data = c->connect.data = c->write.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&c->t->addr[c->server],
                       on_connected) < 0)
        conn_close(c, BENCH_ERR_CONNECT);
}

static void queue_push(cb_target *t, void *token, bench_done_fn *done);

/* A stampede round starts when the previous one is fully answered and a whole round of
 * operations is waiting: all of them are sent at once, one per connection. */
static void round_release(cb_target *t, int partial) {
    if (t->outstanding > 0 || t->qlen == 0 || (!partial && t->qlen < (size_t)t->round))
        return;
    for (int i = 0; i < t->nconns && t->qlen > 0; i++) {
        cb_conn *c = t->conns[i];
        if (!c->up || c->busy || c->closing)
            continue;
        cb_pending p = t->queue[t->qhead];
        t->qhead = (t->qhead + 1) % t->qcap;
        t->qlen--;
        conn_send(c, p.token, p.done);
    }
}

static void target_issue(void *ctx, void *token, bench_done_fn *done) {
    cb_target *t = ctx;
    if (t->round) {
        queue_push(t, token, done);
        round_release(t, 0);
        return;
    }
    for (int i = 0; i < t->nconns; i++) {
        cb_conn *c = t->conns[i];
        if (c->up && !c->busy && !c->closing) {
            conn_send(c, token, done);
            return;
        }
    }
    queue_push(t, token, done);
}

static void queue_push(cb_target *t, void *token, bench_done_fn *done) {
    if (t->qlen == t->qcap) {
        size_t ncap = t->qcap ? t->qcap * 2 : 1024;
        cb_pending *q = sd_xcalloc(ncap, sizeof *q);
        for (size_t i = 0; i < t->qlen; i++)
            q[i] = t->queue[(t->qhead + i) % t->qcap];
        free(t->queue);
        t->queue = q;
        t->qhead = 0;
        t->qcap = ncap;
    }
    t->queue[(t->qhead + t->qlen) % t->qcap] = (cb_pending){token, done};
    t->qlen++;
}

/* Parses "http://127.0.0.1:PORT" into addr. */
static int parse_url(const char *url, struct sockaddr_in *addr) {
    const char *hp = strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    char host[64];
    int port = 0;
    if (sscanf(hp, "%63[^:]:%d", host, &port) != 2 || port <= 0 || port > 65535)
        return -EINVAL;
    return uv_ip4_addr(host, port, addr) == 0 ? 0 : -EINVAL;
}

/* Opens nconns connections, round-robin over the servers, and waits for all of them. */
static int target_start(cb_target *t, uv_loop_t *loop, int nconns) {
    t->loop = loop;
    t->later = bench_later_new(loop);
    t->settings.on_status = on_status;
    t->settings.on_message_complete = on_complete;
    t->settings.on_header_field = on_header_field;
    t->settings.on_header_value = on_header_value;
    t->nconns = nconns;
    t->conns = sd_xcalloc((size_t)nconns, sizeof *t->conns);
    for (int i = 0; i < nconns; i++) {
        cb_conn *c = sd_xcalloc(1, sizeof *c);
        c->t = t;
        c->server = i % t->nservers;
        t->conns[i] = c;
        conn_open(c);
    }
    uint64_t deadline = sd_now_ns() + 10000000000ULL;
    for (;;) {
        int up = 0;
        for (int i = 0; i < nconns; i++)
            up += t->conns[i]->up;
        if (up == nconns)
            return 0;
        if (sd_now_ns() > deadline) {
            fprintf(stderr, "cache bench: only %d of %d connections came up\n", up, nconns);
            return -ETIMEDOUT;
        }
        uv_run(loop, UV_RUN_ONCE);
    }
}

static void target_stop(cb_target *t) {
    for (int i = 0; i < t->nconns; i++) {
        cb_conn *c = t->conns[i];
        c->t = NULL; /* closed for good: freed by on_conn_closed */
        if (c->busy) {
            c->busy = 0;
            c->done(c->token, BENCH_ERR_CONNECT);
        }
        if (!c->closing) {
            c->closing = 1;
            c->handles_open = 2;
            uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
            uv_close((uv_handle_t *)&c->timer, on_conn_closed);
        }
    }
    free(t->conns);
    t->conns = NULL;
    bench_later_free(t->later);
    t->later = NULL;
    free(t->queue);
    t->queue = NULL;
}

/* ---- Paths ---------------------------------------------------------------------------------- */

static uint64_t next_random(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static int path_hot(cb_target *t, uint64_t seq, char *buf, size_t len) {
    return snprintf(buf, len, "/hot/%s", t->run);
}

/* Round robin over SPREAD_KEYS paths: the 50 requests in flight never share a path, so no get
 * joins another's flight, and once the warm-up has loaded every path (a second at 5,000/s is
 * 5,000 requests) each request is a Redis look-up of its own. */
static int path_spread(cb_target *t, uint64_t seq, char *buf, size_t len) {
    return snprintf(buf, len, "/spread/%s/%llu", t->run, (unsigned long long)(seq % SPREAD_KEYS));
}

static int path_stampede(cb_target *t, uint64_t seq, char *buf, size_t len) {
    return snprintf(buf, len, "/stampede/%s/%llu", t->run,
                    (unsigned long long)(seq / (uint64_t)t->round));
}

static int path_zipf(cb_target *t, uint64_t seq, char *buf, size_t len) {
    double u = (double)(next_random(&t->rng) >> 11) / 9007199254740992.0;
    size_t lo = 0, hi = ZIPF_KEYS - 1;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t->zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return snprintf(buf, len, "/zipf/%s/%zu", t->run, lo);
}

/* ---- Scenarios --------------------------------------------------------------------------------
 */

typedef struct cache_bench {
    cb_target t;
    bench_server origin;
    bench_server serve[MAX_SERVERS];
    int nserve;
    char origin_url[80];
    unsigned long long calls_before;
} cache_bench;

/* GET path of the server at url into buf (NUL-terminated), with a blocking socket: the body,
 * or NULL when it does not answer 200. */
static char *http_get_body(const char *url, const char *path, char *buf, size_t len) {
    struct sockaddr_in a;
    if (parse_url(url, &a) < 0)
        return NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n", path);
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, req, (size_t)n) == n) {
        ssize_t r;
        while (got + 1 < len && (r = read(fd, buf + got, len - 1 - got)) > 0)
            got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    return strncmp(buf, "HTTP/1.1 200", 12) == 0 && body ? body + 4 : NULL;
}

/* The value of the metric line starting with name in a /metrics body, or 0. */
static unsigned long long metric_value(const char *body, const char *name) {
    const char *p = body ? strstr(body, name) : NULL;
    return p ? strtoull(p + strlen(name), NULL, 10) : 0;
}

/* GET /_calls of the origin at url, with a blocking socket: -1 when it does not answer. */
static long long origin_calls(const char *url) {
    struct sockaddr_in a;
    if (parse_url(url, &a) < 0)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    long long calls = -1;
    const char req[] = "GET /_calls HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n";
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        char buf[1024];
        size_t got = 0;
        ssize_t n;
        while (got + 1 < sizeof buf && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
            got += (size_t)n;
        buf[got] = '\0';
        char *body = strstr(buf, "\r\n\r\n");
        if (strncmp(buf, "HTTP/1.1 200", 12) == 0 && body)
            calls = strtoll(body + 4, NULL, 10);
    }
    close(fd);
    return calls;
}

static int spawn_origin(const bench_env *env, int delay_ms, bench_server *out) {
    char *path = sd_xasprintf("%s/cache-origin", env->bin_dir);
    char delay[16];
    snprintf(delay, sizeof delay, "%d", delay_ms);
    const char *argv[] = {path, "--listen", "127.0.0.1:0", "--delay-ms", delay, NULL};
    char err[256];
    int rc = bench_server_spawn(argv, NULL, 10000, out, err, sizeof err);
    free(path);
    if (rc < 0)
        fprintf(stderr, "cache bench: cache-origin did not start: %s\n", err);
    return rc;
}

static int spawn_serve(const bench_env *env, const char *origin, const char *local_bytes,
                       bench_server *out) {
    char *path = sd_xasprintf("%s/cache", env->bin_dir);
    const char *argv[] = {path,
                          "serve",
                          "--listen",
                          "127.0.0.1:0",
                          "--origin",
                          origin,
                          "--ttl",
                          "600",
                          "--redis",
                          env->redis_url,
                          local_bytes ? "--local-bytes" : NULL,
                          local_bytes,
                          NULL};
    char err[256];
    /* Up to 10 s: an instance announces itself once its Redis connections are up. */
    int rc = bench_server_spawn(argv, NULL, 15000, out, err, sizeof err);
    free(path);
    if (rc < 0)
        fprintf(stderr, "cache bench: cache serve did not start: %s\n", err);
    return rc;
}

static void cache_bench_free(cache_bench *b) {
    for (int i = 0; i < b->nserve; i++)
        bench_server_stop(&b->serve[i], SIGTERM, 10000);
    bench_server_stop(&b->origin, SIGTERM, 5000);
    free(b->t.zipf_cdf);
    free(b->t.lat);
    free(b);
}

static void issue(void *ctx, void *token, bench_done_fn *done) {
    cache_bench *b = ctx;
    target_issue(&b->t, token, done);
}

/* Sets up nserve instances (or the BENCH_CACHE_URL cache), an origin answering after delay_ms,
 * and conns connections. */
static int setup_common(const bench_env *env, bench_target *target, int nserve, int delay_ms,
                        const char *local_bytes, int conns, cb_path_fn *path) {
    /* The nginx peer that runs after this scenario finds bench and cache-origin here. */
    setenv("BENCH_BIN_DIR", env->bin_dir, 0);
    cache_bench *b = sd_xcalloc(1, sizeof *b);
    uint64_t seed = sd_now_ns() ^ ((uint64_t)getpid() << 32);
    snprintf(b->t.run, sizeof b->t.run, "%016llx", (unsigned long long)next_random(&seed));
    b->t.rng = seed | 1;
    b->t.path = path;
    b->t.round = path == path_stampede ? conns : 0;
    const char *ext = getenv("BENCH_CACHE_URL");
    int rc = 0;
    if (ext && ext[0]) {
        const char *o = getenv("BENCH_CACHE_ORIGIN");
        snprintf(b->origin_url, sizeof b->origin_url, "%s", o ? o : "");
        rc = parse_url(ext, &b->t.addr[0]);
        b->t.nservers = 1;
    } else {
        rc = spawn_origin(env, delay_ms, &b->origin);
        if (rc == 0)
            snprintf(b->origin_url, sizeof b->origin_url, "%s", b->origin.url);
        for (int i = 0; rc == 0 && i < nserve; i++) {
            rc = spawn_serve(env, b->origin.url, local_bytes, &b->serve[i]);
            if (rc == 0) {
                b->nserve++;
                rc = parse_url(b->serve[i].url, &b->t.addr[i]);
            }
        }
        b->t.nservers = nserve;
    }
    if (rc == 0 && path == path_zipf) {
        b->t.zipf_cdf = sd_xcalloc(ZIPF_KEYS, sizeof(double));
        double sum = 0;
        for (int i = 0; i < ZIPF_KEYS; i++)
            sum += 1.0 / pow(i + 1, 0.99);
        double acc = 0;
        for (int i = 0; i < ZIPF_KEYS; i++) {
            acc += 1.0 / pow(i + 1, 0.99) / sum;
            b->t.zipf_cdf[i] = acc;
        }
    }
    long long calls = b->origin_url[0] ? origin_calls(b->origin_url) : 0;
    b->calls_before = calls > 0 ? (unsigned long long)calls : 0;
    if (rc == 0)
        rc = target_start(&b->t, env->loop, conns);
    if (rc < 0) {
        target_stop(&b->t);
        for (int i = 0; i < 20; i++)
            uv_run(env->loop, UV_RUN_NOWAIT);
        cache_bench_free(b);
        return rc;
    }
    target->ctx = b;
    target->issue = issue;
    return 0;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_lat_round(const void *a, const void *b) {
    const cb_lat *x = a, *y = b;
    return x->round < y->round ? -1 : x->round > y->round;
}

static double pct(const int64_t *v, size_t n, double q) {
    return n ? (double)v[(size_t)(q * (double)(n - 1))] : 0;
}

/* The stampede's teardown figures: every request's latency, and the waiters' (every request
 * but the round's MISS) minus their round's MISS latency, which is the origin's latency plus
 * one pass through the cache: what a waiter costs beyond the load it waited for. */
static void stampede_report(cb_target *t, uint64_t ops, unsigned long long calls) {
    uint64_t rounds = (ops + (uint64_t)t->round - 1) / (uint64_t)t->round;
    int64_t *all = sd_xcalloc(t->nlat + 1, sizeof *all);
    int64_t *wait = sd_xcalloc(t->nlat + 1, sizeof *wait);
    int64_t *miss = sd_xcalloc(t->nlat + 1, sizeof *miss);
    int64_t *same = sd_xcalloc(t->nlat + 1, sizeof *same);   /* on the MISS's instance */
    int64_t *other = sd_xcalloc(t->nlat + 1, sizeof *other); /* on the others: woken by a message */
    size_t nw = 0, nm = 0, ns = 0, no = 0;
    for (size_t i = 0; i < t->nlat; i++)
        all[i] = t->lat[i].us;
    qsort(t->lat, t->nlat, sizeof *t->lat, cmp_lat_round);
    for (size_t i = 0; i < t->nlat;) {
        size_t j = i;
        int64_t leader = -1;
        int lserver = -1;
        while (j < t->nlat && t->lat[j].round == t->lat[i].round) {
            if (t->lat[j].miss) {
                leader = t->lat[j].us;
                lserver = t->lat[j].server;
            }
            j++;
        }
        if (leader >= 0) {
            miss[nm++] = leader;
            for (size_t k = i; k < j; k++) {
                if (t->lat[k].miss)
                    continue;
                int64_t d = (int64_t)t->lat[k].us - leader;
                wait[nw++] = d;
                if (t->lat[k].server == lserver)
                    same[ns++] = d;
                else
                    other[no++] = d;
            }
        }
        i = j;
    }
    qsort(all, t->nlat, sizeof *all, cmp_i64);
    qsort(wait, nw, sizeof *wait, cmp_i64);
    qsort(miss, nm, sizeof *miss, cmp_i64);
    qsort(same, ns, sizeof *same, cmp_i64);
    qsort(other, no, sizeof *other, cmp_i64);
    double p50 = pct(all, t->nlat, 0.5), p99 = pct(all, t->nlat, 0.99);
    fprintf(stderr,
            "cache bench: stampede: %llu requests in %llu rounds of %d, %llu origin "
            "calls (%.2f per round); from each request's send: p50 %.1f ms, p99 "
            "%.1f ms (p50_us %.0f p99_us %.0f)\n",
            (unsigned long long)ops, (unsigned long long)rounds, t->round, calls,
            rounds ? (double)calls / (double)rounds : 0.0, p50 / 1000, p99 / 1000, p50, p99);
    fprintf(stderr,
            "cache bench: stampede waiters: %zu rounds with a MISS, MISS latency p50 %.1f ms p99 "
            "%.1f ms; %zu waiters minus their round's MISS: p50 %+.1f ms p99 %+.1f ms max %+.1f "
            "ms (waiter_minus_miss_p99_us %.0f)\n",
            nm, pct(miss, nm, 0.5) / 1000, pct(miss, nm, 0.99) / 1000, nw,
            pct(wait, nw, 0.5) / 1000, pct(wait, nw, 0.99) / 1000,
            nw ? (double)wait[nw - 1] / 1000 : 0.0, pct(wait, nw, 0.99));
    if (t->nservers > 1)
        fprintf(stderr,
                "cache bench: stampede waiters minus their round's MISS, on the MISS's instance: "
                "p50 %+.1f ms p99 %+.1f ms (%zu); on the other instances: p50 %+.1f ms p99 %+.1f "
                "ms (%zu)\n",
                pct(same, ns, 0.5) / 1000, pct(same, ns, 0.99) / 1000, ns,
                pct(other, no, 0.5) / 1000, pct(other, no, 0.99) / 1000, no);
    free(all);
    free(wait);
    free(miss);
    free(same);
    free(other);
}

static void teardown(const bench_env *env, bench_target *target) {
    cache_bench *b = target->ctx;
    long long calls = b->origin_url[0] ? origin_calls(b->origin_url) : -1;
    uint64_t ops = b->t.seq;
    if (calls >= 0) {
        unsigned long long c = (unsigned long long)calls - b->calls_before;
        if (b->t.path == path_stampede) {
            stampede_report(&b->t, ops, c);
            /* What woke the waiting instances (cache_woken_total in their /metrics). */
            unsigned long long by_msg = 0, by_poll = 0, values = 0;
            static char mbuf[16384];
            for (int i = 0; i < b->nserve; i++) {
                const char *m = http_get_body(b->serve[i].url, "/metrics", mbuf, sizeof mbuf);
                by_msg += metric_value(m, "cache_woken_total{by=\"message\"} ");
                by_poll += metric_value(m, "cache_woken_total{by=\"poll\"} ");
                values += metric_value(m, "cache_fill_values_total ");
            }
            if (b->nserve > 1)
                fprintf(stderr,
                        "cache bench: waiting instances woken by the message %llu (answered from "
                        "its value %llu), by the fallback look-up %llu\n",
                        by_msg, values, by_poll);
        } else {
            fprintf(stderr, "cache bench: %llu requests, %llu origin calls\n",
                    (unsigned long long)ops, c);
        }
    }
    target_stop(&b->t);
    for (int i = 0; i < 20; i++)
        uv_run(env->loop, UV_RUN_NOWAIT);
    cache_bench_free(b);
    target->ctx = NULL;
}

static int setup_local_hit(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 1, 0, NULL, 50, path_hot);
}
static int setup_redis_hit(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 1, 0, "0", 50, path_hot);
}
static int setup_redis_spread(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 1, 0, "0", 50, path_spread);
}
static int setup_stampede(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 1, 50, NULL, 1000, path_stampede);
}
static int setup_stampede_fleet(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 4, 50, NULL, 400, path_stampede);
}
static int setup_zipf(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 1, 0, "1048576", 50, path_zipf);
}

static const bench_scenario local_hit = {
    .name = "cache.serve.local-hit",
    .summary = "GET one hot path through `cache serve`, 50 connections: local-tier hits",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_local_hit,
    .teardown = teardown,
};

static const bench_scenario redis_hit = {
    .name = "cache.serve.redis-hit",
    .summary = "the same with --local-bytes 0: Redis-tier hits",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_redis_hit,
    .teardown = teardown,
};

static const bench_scenario redis_hit_open = {
    .name = "cache.serve.redis-open",
    .summary = "Redis-tier hits, open loop at 5,000/s (--rate), 50 connections",
    .default_rate = 5000,
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_redis_hit,
    .teardown = teardown,
};

static const bench_scenario redis_spread = {
    .name = "cache.serve.redis-spread",
    .summary = "--local-bytes 0, 2,000 paths in turn, 50 connections: one Redis look-up per hit",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_redis_spread,
    .teardown = teardown,
};

static const bench_scenario redis_spread_open = {
    .name = "cache.serve.redis-spread-open",
    .summary = "the same, open loop at 5,000/s (--rate), 50 connections",
    .default_rate = 5000,
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_redis_spread,
    .teardown = teardown,
};

static const bench_scenario stampede = {
    .name = "cache.stampede",
    .summary = "rounds of 1,000 concurrent misses for one cold path, 50 ms origin, 1 instance",
    .in_flight = 1000,
    .default_duration_s = 3,
    .setup = setup_stampede,
    .teardown = teardown,
};

static const bench_scenario stampede_fleet = {
    .name = "cache.fleet-stampede",
    .summary = "rounds of 400 concurrent misses, 50 ms origin, 4 instances on one Redis",
    .in_flight = 400,
    .default_duration_s = 3,
    .setup = setup_stampede_fleet,
    .teardown = teardown,
};

static const bench_scenario zipf = {
    .name = "cache.zipf",
    .summary = "Zipf(0.99) over 100,000 paths, 1 MiB local tier, 50 connections",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_zipf,
    .teardown = teardown,
};

const bench_scenario *const bench_scenarios_cache[] = {
    &local_hit, &redis_hit,      &redis_hit_open, &redis_spread, &redis_spread_open,
    &stampede,  &stampede_fleet, &zipf,           NULL,
};
