/*
 * scenarios_urlshortener.c - the URL shortener's benchmarks, through `urlshortener serve` on
 * the run's Redis, loaded by the harness's HTTP target (bench/http_client.h).
 *
 *   urlshortener.redirect.hot   closed loop, 50 connections, GET of one hot code: redirects/s
 *                               answered from the instance's local cache tier
 *   urlshortener.redirect.open  open loop at 35,000/s (about 3x the 11.6k/s average of 1B
 *                               reads/day), 100 connections, the same hot code: latency with
 *                               coordinated omission corrected
 *   urlshortener.create         closed loop, 4 connections, POST /v1/links of a new link each
 *                               (the creation limit raised out of the way): create latency
 *
 * Setup starts one instance (--base-url https://sho.rt, --create-limit 'create;q=100000000;w=60')
 * and creates the hot link with one blocking request. A request counts as successful when its
 * status is 2xx or 3xx (a 302 for a redirect, a 201 for a create).
 *
 * BENCH_US_URL=http://HOST:PORT points the two redirect scenarios at another server, which is
 * asked for /bench: that is how bench/peers/nginx-urlshortener.sh measures nginx `return 302`
 * with the same client. Zipf over 1M codes is not built here.
 */
#include <errno.h>
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

static const bench_scenario create = {
    .name = "urlshortener.create",
    .summary = "POST /v1/links, a new link each, 4 connections, closed loop: create latency",
    .in_flight = 4,
    .default_duration_s = 4,
    .setup = setup_create,
    .teardown = teardown,
};

const bench_scenario *const bench_scenarios_urlshortener[] = {
    &redirect_hot,
    &redirect_open,
    &create,
    NULL,
};
