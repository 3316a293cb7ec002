/*
 * scenarios_urlshortener.c - the URL shortener's benchmarks, through `urlshortener serve` on
 * the run's Redis, loaded by the harness's HTTP target (bench/http_client.h).
 *
 *   urlshortener.redirect.hot   closed loop, 50 connections, GET of one hot code: redirects/s
 *                               answered from the instance's local cache tier
 *   urlshortener.redirect.open  open loop at 35,000/s (about 3x the 11.6k/s average of 1B
 *                               reads/day), 100 connections, the same hot code: latency with
 *                               coordinated omission corrected
 *   urlshortener.redirect.zipf  closed loop, 50 connections, codes drawn from Zipf(0.99) over
 *                               1,000,000 links: the mix of local-tier hits, Redis-tier hits and
 *                               loads that a skewed read load gives (printed at teardown)
 *   urlshortener.create         closed loop, 4 connections, POST /v1/links of a new link each
 *                               (the creation limit raised out of the way): create latency
 *
 * Setup starts one instance (--base-url https://sho.rt, --create-limit 'create;q=100000000;w=60')
 * and creates the hot link with one blocking request. A request counts as successful when its
 * status is 2xx or 3xx (a 302 for a redirect, a 201 for a create).
 *
 * BENCH_US_URL=http://HOST:PORT points the two redirect scenarios at another server, which is
 * asked for /bench: that is how bench/peers/nginx-urlshortener.sh measures nginx `return 302`
 * with the same client.
 *
 * The Zipf scenario writes its 1,000,000 links straight into the run's Redis before it starts
 * (pipelined SETs of the stored format of links.c, `1 CREATED 0 0 URL` under us:l:{ALIAS}, one
 * key per command so that it works on a cluster too): through the API it would take minutes.
 * They are aliases (`z-0000000` ...), which the read path serves exactly as generated codes.
 * BENCH_US_ZIPF_LINKS=N writes and draws from N links instead (tests: a short run).
 * Its load comes from a small HTTP client of this file, because the path changes per request
 * (bench/http_client.c sends one fixed request): one keep-alive connection per operation in
 * flight, one request at a time on each, the code drawn when the request is sent.
 */
#include <errno.h>
#include <http_parser.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "bench.h"
#include "http_client.h"
#include "redis.h"
#include "sd.h"
#include "spawn.h"

static const char LINK_JSON[] = "{\"url\":\"https://example.com/landing\"}";

typedef struct us_bench {
    bench_target http; /* owned: freed in teardown */
    bench_server serve;
} us_bench;

/* POST /v1/links of LINK_JSON to the server at port, with a blocking socket; the code of the
 * 201 goes into code. Returns 0 or -1. */
static int create_link(int port, char *code, size_t len) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /v1/links HTTP/1.1\r\nHost: sho.rt\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     sizeof LINK_JSON - 1, LINK_JSON);
    int rc = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, req, (size_t)n) == n) {
        char buf[4096];
        size_t got = 0;
        ssize_t r;
        while (got + 1 < sizeof buf && (r = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
            got += (size_t)r;
        buf[got] = '\0';
        const char *c = strstr(buf, "\"code\":\"");
        if (strncmp(buf, "HTTP/1.1 201", 12) == 0 && c) {
            c += 8;
            snprintf(code, len, "%.*s", (int)strcspn(c, "\""), c);
            rc = code[0] ? 0 : -1;
        }
    }
    close(fd);
    return rc;
}

static void us_bench_free(us_bench *b) {
    bench_server_stop(&b->serve, SIGTERM, 10000);
    free(b);
}

static void drain(uv_loop_t *loop) {
    for (int i = 0; i < 20; i++)
        uv_run(loop, UV_RUN_NOWAIT);
}

static void us_issue(void *ctx, void *token, bench_done_fn *done) {
    us_bench *b = ctx;
    b->http.issue(b->http.ctx, token, done);
}

/* create: POST a new link per request; otherwise GET the hot code. */
static int setup_common(const bench_env *env, bench_target *target, int conns, int create) {
    /* The nginx peer that runs after this scenario finds bench here. */
    setenv("BENCH_BIN_DIR", env->bin_dir, 0);
    us_bench *b = sd_xcalloc(1, sizeof *b);
    char url[160];
    const char *ext = getenv("BENCH_US_URL");
    if (ext && ext[0] && !create) {
        snprintf(url, sizeof url, "%s/bench", ext);
    } else {
        char *path = sd_xasprintf("%s/urlshortener", env->bin_dir);
        const char *argv[] = {path,
                              "serve",
                              "--listen",
                              "127.0.0.1:0",
                              "--base-url",
                              "https://sho.rt",
                              "--redis",
                              env->redis_url,
                              "--create-limit",
                              "create;q=100000000;w=60",
                              NULL};
        char err[256];
        int rc = bench_server_spawn(argv, NULL, 15000, &b->serve, err, sizeof err);
        free(path);
        if (rc < 0) {
            fprintf(stderr, "urlshortener bench: urlshortener serve did not start: %s\n", err);
            free(b);
            return rc;
        }
        char code[80];
        if (create) {
            snprintf(url, sizeof url, "%s/v1/links", b->serve.url);
        } else if (create_link(b->serve.port, code, sizeof code) == 0) {
            snprintf(url, sizeof url, "%s/%s", b->serve.url, code);
        } else {
            fprintf(stderr, "urlshortener bench: could not create the hot link\n");
            us_bench_free(b);
            return -EIO;
        }
    }
    static const char *const json_headers[] = {"Content-Type: application/json", NULL};
    bench_http_opts opts = {.timeout_ms = 10000};
    if (create) {
        opts.method = "POST";
        opts.headers = json_headers;
        opts.body = LINK_JSON;
        opts.body_len = sizeof LINK_JSON - 1;
    }
    char err[256];
    int rc = bench_http_target_new(env->loop, url, conns, &opts, &b->http, err, sizeof err);
    if (rc == 0)
        rc = bench_http_target_wait_connected(&b->http, 10000, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "urlshortener bench: %s: %s\n", url, err);
        bench_http_target_free(&b->http);
        drain(env->loop);
        us_bench_free(b);
        return rc;
    }
    fprintf(stderr, "urlshortener bench: %s %s, %d connections\n", create ? "POST" : "GET", url,
            conns);
    target->ctx = b;
    target->issue = us_issue;
    return 0;
}

static void teardown(const bench_env *env, bench_target *target) {
    us_bench *b = target->ctx;
    bench_http_stats st;
    bench_http_target_stats(&b->http, &st);
    fprintf(stderr,
            "urlshortener bench: %llu responses, %llu connects (%llu failed), %llu closed\n",
            (unsigned long long)st.responses, (unsigned long long)st.connects,
            (unsigned long long)st.connect_errors, (unsigned long long)st.closed);
    bench_http_target_free(&b->http);
    drain(env->loop);
    us_bench_free(b);
    target->ctx = NULL;
}

static int setup_hot(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 50, 0);
}
static int setup_open(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 100, 0);
}
static int setup_create(const bench_env *env, bench_target *t) {
    return setup_common(env, t, 4, 1);
}

/* ---- Zipf over 1M codes ------------------------------------------------------------------------
 */

#define ZIPF_LINKS 1000000 /* BENCH_US_ZIPF_LINKS may lower it (the tests' short runs) */
#define ZIPF_S 0.99
#define ZIPF_TIMEOUT_MS 10000

typedef struct zipf_load zipf_load;

/* One keep-alive connection: at most one request in flight. */
typedef struct zconn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timer;
    http_parser parser;
    zipf_load *z; /* NULL once the load is stopped: the connection then frees itself */
    int up, busy, closing, open_handles;
    void *token;
    bench_done_fn *done;
    char req[128];
} zconn;

typedef struct zwait {
    void *token;
    bench_done_fn *done;
} zwait;

struct zipf_load {
    uv_loop_t *loop;
    struct sockaddr_in addr;
    zconn **conns;
    int nconns;
    zwait *queue; /* ring: operations waiting for a free connection */
    size_t qhead, qlen, qcap;
    double *cdf; /* owned: cdf[i] = P(rank <= i) */
    uint64_t rng;
    bench_later *later;
    http_parser_settings settings;
    bench_server serve;
    uint64_t sent;
    size_t links; /* codes z-0000000 ... z-(links - 1) */
};

static void zconn_open(zconn *c);
static void zconn_send(zconn *c, void *token, bench_done_fn *done);

/* Completes c's operation with err, then gives c the next waiting one. */
static void zconn_complete(zconn *c, int err) {
    if (!c->busy)
        return;
    c->busy = 0;
    uv_timer_stop(&c->timer);
    void *token = c->token;
    bench_done_fn *done = c->done;
    zipf_load *z = c->z;
    if (z && c->up && !c->closing && z->qlen > 0) {
        zwait w = z->queue[z->qhead];
        z->qhead = (z->qhead + 1) % z->qcap;
        z->qlen--;
        zconn_send(c, w.token, w.done);
    }
    done(token, err);
}

static void zconn_on_closed(uv_handle_t *h) {
    zconn *c = h->data;
    if (--c->open_handles > 0)
        return;
    if (c->z) { /* reopened in place */
        c->closing = 0;
        zconn_open(c);
    } else {
        free(c);
    }
}

static void zconn_close(zconn *c, int err) {
    zconn_complete(c, err);
    if (c->closing)
        return;
    c->closing = 1;
    c->up = 0;
    c->open_handles = 2;
    uv_close((uv_handle_t *)&c->tcp, zconn_on_closed);
    uv_close((uv_handle_t *)&c->timer, zconn_on_closed);
}

static int zconn_on_complete(http_parser *p) {
    zconn *c = p->data;
    unsigned st = p->status_code;
    zconn_complete(c, st >= 200 && st < 400 ? BENCH_OK : BENCH_ERR_STATUS);
    return 0;
}

static void zconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    (void)suggested;
    static char slab[65536]; /* one loop thread: consumed before the next read */
    *buf = uv_buf_init(slab, sizeof slab);
}

static void zconn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    zconn *c = s->data;
    if (n < 0) {
        zconn_close(c, BENCH_ERR_CONNECT);
        return;
    }
    size_t used = http_parser_execute(&c->parser, &c->z->settings, buf->base, (size_t)n);
    if (c->parser.http_errno != HPE_OK || used != (size_t)n)
        zconn_close(c, BENCH_ERR_OTHER);
}

static void zconn_on_written(uv_write_t *w, int status) {
    zconn *c = w->data;
    if (status < 0 && !c->closing)
        zconn_close(c, BENCH_ERR_CONNECT);
}

static void zconn_on_timeout(uv_timer_t *t) {
    zconn_close(t->data, BENCH_ERR_TIMEOUT);
}

static uint64_t zipf_random(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* A rank drawn from the Zipf distribution: the first i with cdf[i] >= u. */
static size_t zipf_rank(zipf_load *z) {
    double u = (double)(zipf_random(&z->rng) >> 11) / 9007199254740992.0;
    size_t lo = 0, hi = z->links - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void zconn_send(zconn *c, void *token, bench_done_fn *done) {
    zipf_load *z = c->z;
    int n = snprintf(c->req, sizeof c->req, "GET /z-%07zu HTTP/1.1\r\nHost: sho.rt\r\n\r\n",
                     zipf_rank(z));
    c->busy = 1;
    c->token = token;
    c->done = done;
    z->sent++;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    bench_op_sent(token);
    uv_timer_start(&c->timer, zconn_on_timeout, ZIPF_TIMEOUT_MS, 0);
    uv_buf_t b = uv_buf_init(c->req, (unsigned)n);
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, zconn_on_written) < 0) {
        /* Maybe inside issue(): completed from the loop instead. */
        c->busy = 0;
        uv_timer_stop(&c->timer);
        bench_later_done(z->later, token, done, BENCH_ERR_CONNECT);
        zconn_close(c, BENCH_ERR_CONNECT);
    }
}

static void zconn_on_connected(uv_connect_t *req, int status) {
    zconn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        zconn_close(c, BENCH_ERR_CONNECT);
        return;
    }
    c->up = 1;
    uv_read_start((uv_stream_t *)&c->tcp, zconn_alloc, zconn_on_read);
    zipf_load *z = c->z;
    if (z->qlen > 0) {
        zwait w = z->queue[z->qhead];
        z->qhead = (z->qhead + 1) % z->qcap;
        z->qlen--;
        zconn_send(c, w.token, w.done);
    }
}

static void zconn_open(zconn *c) {
    uv_tcp_init(c->z->loop, &c->tcp);
    uv_timer_init(c->z->loop, &c->timer);
    c->tcp.data = c->timer.data = c->connect.data = c->write.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&c->z->addr,
                       zconn_on_connected) < 0)
        zconn_close(c, BENCH_ERR_CONNECT);
}

static void zipf_issue(void *ctx, void *token, bench_done_fn *done) {
    zipf_load *z = ctx;
    for (int i = 0; i < z->nconns; i++) {
        zconn *c = z->conns[i];
        if (c->up && !c->busy && !c->closing) {
            zconn_send(c, token, done);
            return;
        }
    }
    if (z->qlen == z->qcap) {
        size_t ncap = z->qcap ? z->qcap * 2 : 1024;
        zwait *q = sd_xcalloc(ncap, sizeof *q);
        for (size_t i = 0; i < z->qlen; i++)
            q[i] = z->queue[(z->qhead + i) % z->qcap];
        free(z->queue);
        z->queue = q;
        z->qhead = 0;
        z->qcap = ncap;
    }
    z->queue[(z->qhead + z->qlen) % z->qcap] = (zwait){token, done};
    z->qlen++;
}

typedef struct zseed {
    uint64_t left, failed;
} zseed;

static void on_seeded(sd_aredis *r, redisReply *reply, int status, void *udata) {
    (void)r;
    zseed *s = udata;
    s->left--;
    if (status != 0 || reply->type == REDIS_REPLY_ERROR)
        s->failed++;
}

/* Writes the n links, at most 10,000 commands in flight. Returns 0 or -EIO. */
static int zipf_seed(const bench_env *env, size_t n) {
    sd_redis_url url;
    memset(&url, 0, sizeof url);
    char err[256];
    if (sd_redis_url_parse(env->redis_url, &url, err, sizeof err) != 0) {
        fprintf(stderr, "urlshortener bench: --redis: %s\n", err);
        return -EINVAL;
    }
    sd_redis_opts ro;
    sd_redis_opts_default(&ro);
    sd_aredis *ar = NULL;
    int rc = sd_aredis_new(env->loop, &url, &ro, &ar);
    sd_redis_url_clear(&url);
    if (rc != 0 || sd_aredis_wait_connected(ar, 10000) != 0) {
        sd_aredis_free(ar);
        drain(env->loop);
        return -EIO;
    }
    uint64_t t0 = sd_now_ms();
    zseed s = {0, 0};
    for (size_t i = 0; i < n && s.failed == 0; i++) {
        char key[48], value[96];
        snprintf(key, sizeof key, "us:l:{z-%07zu}", i);
        snprintf(value, sizeof value, "1 %llu 0 0 https://example.com/z/%zu",
                 (unsigned long long)t0, i);
        const char *argv[] = {"SET", key, value};
        if (sd_aredis_commandv(ar, on_seeded, &s, 60000, 3, argv, NULL) != 0) {
            s.failed++;
            break;
        }
        s.left++;
        if (s.left >= 10000) {
            sd_aredis_flush(ar);
            while (s.left > 5000)
                uv_run(env->loop, UV_RUN_ONCE);
        }
    }
    sd_aredis_flush(ar);
    while (s.left > 0)
        uv_run(env->loop, UV_RUN_ONCE);
    sd_aredis_free(ar);
    drain(env->loop);
    fprintf(stderr, "urlshortener bench: %zu links written in %llu ms (%llu failed)\n", n,
            (unsigned long long)(sd_now_ms() - t0), (unsigned long long)s.failed);
    return s.failed ? -EIO : 0;
}

static int setup_zipf(const bench_env *env, bench_target *target) {
    setenv("BENCH_BIN_DIR", env->bin_dir, 0);
    size_t links = ZIPF_LINKS;
    const char *lim = getenv("BENCH_US_ZIPF_LINKS");
    long long v;
    if (lim && sd_parse_ll(lim, 1, ZIPF_LINKS, &v) == 0)
        links = (size_t)v;
    int rc = zipf_seed(env, links);
    if (rc != 0)
        return rc;
    zipf_load *z = sd_xcalloc(1, sizeof *z);
    z->links = links;
    z->loop = env->loop;
    z->rng = 0x9e3779b97f4a7c15ULL;
    z->cdf = sd_xmalloc(links * sizeof *z->cdf);
    double sum = 0;
    for (size_t i = 0; i < links; i++)
        z->cdf[i] = sum += 1.0 / pow((double)(i + 1), ZIPF_S);
    for (size_t i = 0; i < links; i++)
        z->cdf[i] /= sum;
    char *path = sd_xasprintf("%s/urlshortener", env->bin_dir);
    const char *argv[] = {path,          "serve",        "--listen",
                          "127.0.0.1:0", "--base-url",   "https://sho.rt",
                          "--redis",     env->redis_url, NULL};
    char err[256];
    rc = bench_server_spawn(argv, NULL, 15000, &z->serve, err, sizeof err);
    free(path);
    if (rc < 0) {
        fprintf(stderr, "urlshortener bench: urlshortener serve did not start: %s\n", err);
        free(z->cdf);
        free(z);
        return rc;
    }
    uv_ip4_addr("127.0.0.1", z->serve.port, &z->addr);
    z->later = bench_later_new(env->loop);
    z->settings.on_message_complete = zconn_on_complete;
    z->nconns = 50;
    z->conns = sd_xcalloc((size_t)z->nconns, sizeof *z->conns);
    for (int i = 0; i < z->nconns; i++) {
        zconn *c = sd_xcalloc(1, sizeof *c);
        c->z = z;
        z->conns[i] = c;
        zconn_open(c);
    }
    uint64_t deadline = sd_now_ms() + 10000;
    int up = 0;
    while (up < z->nconns && sd_now_ms() < deadline) {
        uv_run(env->loop, UV_RUN_ONCE);
        up = 0;
        for (int i = 0; i < z->nconns; i++)
            up += z->conns[i]->up;
    }
    fprintf(stderr,
            "urlshortener bench: GET /z-NNNNNNN, Zipf(%.2f) over %zu links, %d of %d "
            "connections up\n",
            ZIPF_S, links, up, z->nconns);
    target->ctx = z;
    target->issue = zipf_issue;
    return 0;
}

/* The instance's /metrics value of name, or -1. */
static long long serve_metric(int port, const char *name) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    static char buf[1 << 16];
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        ssize_t r;
        while (got + 1 < sizeof buf && (r = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
            got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(buf, pat);
    return p ? atoll(p + strlen(pat)) : -1;
}

static void teardown_zipf(const bench_env *env, bench_target *target) {
    zipf_load *z = target->ctx;
    long long local = serve_metric(z->serve.port, "us_cache_hits_total{tier=\"local\"}");
    long long shared = serve_metric(z->serve.port, "us_cache_hits_total{tier=\"redis\"}");
    long long loads = serve_metric(z->serve.port, "us_cache_loads_total");
    long long all = local + shared + loads;
    fprintf(stderr,
            "urlshortener bench: %llu requests; local-tier hits %lld (%.1f%%), Redis-tier hits "
            "%lld (%.1f%%), loads %lld (%.1f%%)\n",
            (unsigned long long)z->sent, local, all > 0 ? 100.0 * (double)local / (double)all : 0,
            shared, all > 0 ? 100.0 * (double)shared / (double)all : 0, loads,
            all > 0 ? 100.0 * (double)loads / (double)all : 0);
    for (int i = 0; i < z->nconns; i++) {
        zconn *c = z->conns[i];
        c->z = NULL; /* freed by its close callback */
        if (c->busy) {
            c->busy = 0;
            uv_timer_stop(&c->timer);
            c->done(c->token, BENCH_ERR_CONNECT);
        }
        if (!c->closing) {
            c->closing = 1;
            c->open_handles = 2;
            uv_close((uv_handle_t *)&c->tcp, zconn_on_closed);
            uv_close((uv_handle_t *)&c->timer, zconn_on_closed);
        }
    }
    free(z->conns);
    bench_later_free(z->later);
    while (z->qlen > 0) {
        zwait w = z->queue[z->qhead];
        z->qhead = (z->qhead + 1) % z->qcap;
        z->qlen--;
        w.done(w.token, BENCH_ERR_CONNECT);
    }
    free(z->queue);
    drain(env->loop);
    bench_server_stop(&z->serve, SIGTERM, 10000);
    free(z->cdf);
    free(z);
    target->ctx = NULL;
}

static const bench_scenario redirect_hot = {
    .name = "urlshortener.redirect.hot",
    .summary = "GET one hot code, 50 connections, closed loop: local-tier redirects/s",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_hot,
    .teardown = teardown,
};

static const bench_scenario redirect_open = {
    .name = "urlshortener.redirect.open",
    .summary = "GET one hot code, open loop at 35,000/s (--rate), 100 connections",
    .default_rate = 35000,
    .in_flight = 100,
    .default_duration_s = 4,
    .setup = setup_open,
    .teardown = teardown,
};

static const bench_scenario redirect_zipf = {
    .name = "urlshortener.redirect.zipf",
    .summary = "GET codes drawn from Zipf(0.99) over 1M links, 50 connections, closed loop",
    .in_flight = 50,
    .default_duration_s = 4,
    .setup = setup_zipf,
    .teardown = teardown_zipf,
};

static const bench_scenario create = {
    .name = "urlshortener.create",
    .summary = "POST /v1/links, a new link each, 4 connections, closed loop: create latency",
    .in_flight = 4,
    .default_duration_s = 4,
    .setup = setup_create,
    .teardown = teardown,
};

const bench_scenario *const bench_scenarios_urlshortener[] = {
    &redirect_hot, &redirect_open, &redirect_zipf, &create, NULL,
};
