/*
 * test_urlshortener_serve.c - `urlshortener serve` run from build/bin, one or two instances on one
 * Redis (a private redis-server, or a Redis Cluster with SD_TEST_REDIS=cluster).
 *
 * Waits are for events: a response, or a counter in an instance's /metrics where only the other
 * process can tell (its clicks flushed, its cache invalidated). No assert is about speed.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd.h"
#include "support.h"

static test_target *target;
static bench_server inst[2];
static char key_path[64];

static void start(void) {
    target = test_target_start();
    snprintf(key_path, sizeof key_path, "/tmp/us-serve-key.%d", (int)getpid());
    FILE *f = fopen(key_path, "w");
    cr_assert(f);
    fputs("a test secret of more than sixteen bytes\n", f);
    fclose(f);
}

static void stop(void) {
    for (int i = 0; i < 2; i++)
        bench_server_stop(&inst[i], SIGTERM, 10000);
    unlink(key_path);
    test_target_stop(target);
}

TestSuite(us_serve, .init = start, .fini = stop, .timeout = 180);

/* Starts n instances with the extra arguments (NULL-terminated, at most 6). */
static void start_instances(int n, const char *const extra[]) {
    for (int i = 0; i < n; i++) {
        const char *argv[20] = {"urlshortener", "serve",          "--listen",
                                "127.0.0.1:0",  "--redis",        test_target_url(target),
                                "--base-url",   "https://sho.rt", "--key-file",
                                key_path,       "--flush-ms",     "100"};
        int k = 12;
        for (int j = 0; extra && extra[j]; j++)
            argv[k++] = extra[j];
        argv[k] = NULL;
        inst[i] = test_server_start(argv);
    }
}

static const char *const high_limit[] = {"--create-limit", "create;q=100000;w=60", NULL};

/* One request; returns the status, with the whole response in buf and its body in *body. */
static int exchange(int port, const char *method, const char *path, const char *headers,
                    const char *json, char *buf, size_t len, const char **body) {
    char req[4096];
    snprintf(req, sizeof req,
             "%s %s HTTP/1.1\r\nHost: sho.rt\r\n%sContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             method, path, headers ? headers : "", json ? strlen(json) : 0, json ? json : "");
    return test_http_exchange(port, req, buf, len, body);
}

/* The value of a response header (up to the CR) into out; "" when absent. */
static void header(const char *resp, const char *name, char *out, size_t len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\r\n%s: ", name);
    const char *p = strstr(resp, pat);
    if (!p) {
        snprintf(out, len, "%s", "");
        return;
    }
    p += strlen(pat);
    snprintf(out, len, "%.*s", (int)strcspn(p, "\r"), p);
}

/* Creates a link; returns the status and the code (from the 201's JSON) in code. */
static int create(int port, const char *json, const char *headers, char *code, size_t clen) {
    static char buf[8192];
    const char *body = NULL;
    int st = exchange(port, "POST", "/v1/links", headers, json, buf, sizeof buf, &body);
    if (code) {
        const char *c = body ? strstr(body, "\"code\":\"") : NULL;
        snprintf(code, clen, "%.*s", c ? (int)strcspn(c + 8, "\"") : 0, c ? c + 8 : "");
    }
    return st;
}

static int get(int port, const char *path, char *buf, size_t len) {
    const char *body;
    return exchange(port, "GET", path, NULL, NULL, buf, len, &body);
}

static long long metric(int port, const char *name) {
    static char buf[65536];
    const char *body = NULL;
    cr_assert_eq(test_http_exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", buf,
                                    sizeof buf, &body),
                 200);
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(body, pat);
    return p ? atoll(p + strlen(pat)) : -1;
}

/* The "clicks" of GET /v1/links/{code}. */
static long long clicks_of(int port, const char *code) {
    static char buf[8192];
    char path[128];
    const char *body = NULL;
    snprintf(path, sizeof path, "/v1/links/%s", code);
    cr_assert_eq(exchange(port, "GET", path, NULL, NULL, buf, sizeof buf, &body), 200);
    const char *c = strstr(body, "\"clicks\":");
    cr_assert(c, "%s", body);
    return atoll(c + 9);
}

/* ---- Create, redirect, and the refusals ------------------------------------------------------ */

Test(us_serve, create_redirect_and_every_refusal) {
    start_instances(1, high_limit);
    int port = inst[0].port;
    static char buf[8192];
    char code[80], v[256], path[128];

    cr_assert_eq(create(port, "{\"url\":\"https://example.com/a?b=1\"}", NULL, code, sizeof code),
                 201);
    cr_assert_eq(strlen(code), 7);
    snprintf(path, sizeof path, "/%s", code);
    cr_assert_eq(get(port, path, buf, sizeof buf), 302);
    header(buf, "Location", v, sizeof v);
    cr_assert_str_eq(v, "https://example.com/a?b=1");
    header(buf, "Cache-Control", v, sizeof v);
    cr_assert_str_eq(v, "private, max-age=0");

    /* Case-sensitive: the same letters in another case are another (unknown) code. */
    for (char *p = path + 1; *p; p++)
        *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    if (strcmp(path + 1, code) != 0)
        cr_assert_eq(get(port, path, buf, sizeof buf), 404);

    /* Unknown: 404, never cached by a browser. */
    cr_assert_eq(get(port, "/no-such-alias", buf, sizeof buf), 404);
    header(buf, "Cache-Control", v, sizeof v);
    cr_assert_str_eq(v, "no-store");

    /* An alias; taken -> 409; reserved, malformed or a canonical code -> 422. */
    cr_assert_eq(create(port, "{\"url\":\"https://example.com/x\",\"alias\":\"my_link-1\"}", NULL,
                        code, sizeof code),
                 201);
    cr_assert_str_eq(code, "my_link-1");
    cr_assert_eq(get(port, "/my_link-1", buf, sizeof buf), 302);
    cr_assert_eq(
        create(port, "{\"url\":\"https://example.com/y\",\"alias\":\"my_link-1\"}", NULL, NULL, 0),
        409);
    cr_assert_eq(get(port, "/my_link-1", buf, sizeof buf), 302);
    header(buf, "Location", v, sizeof v);
    cr_assert_str_eq(v, "https://example.com/x", "a taken alias was overwritten");
    const char *bad_aliases[] = {"metrics", "v1", "a b", "ab", "x/y", "F4WTI3J"};
    for (size_t i = 0; i < sizeof bad_aliases / sizeof *bad_aliases; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"url\":\"https://example.com/\",\"alias\":\"%s\"}",
                 bad_aliases[i]);
        int st = create(port, json, NULL, NULL, 0);
        cr_assert_eq(st, 422, "alias '%s' got %d", bad_aliases[i], st);
    }

    /* Invalid targets: 422 naming the reason. */
    const char *const bad_targets[] = {"http://127.0.0.1/", "ftp://example.com/",
                                       "http://169.254.169.254/latest", "https://sho.rt/abc",
                                       "http://10.0.0.1/"};
    for (size_t i = 0; i < sizeof bad_targets / sizeof *bad_targets; i++) {
        char json[256];
        const char *body = NULL;
        snprintf(json, sizeof json, "{\"url\":\"%s\"}", bad_targets[i]);
        int st = exchange(port, "POST", "/v1/links", NULL, json, buf, sizeof buf, &body);
        cr_assert_eq(st, 422, "%s got %d", bad_targets[i], st);
        cr_assert(strstr(buf, "application/problem+json"));
        cr_assert(strstr(body, "\"reason\""), "%s", body);
    }

    /* max_clicks 1: one redirect, then 410. Expired: 410. */
    cr_assert_eq(create(port, "{\"url\":\"https://example.com/once\",\"max_clicks\":1}", NULL, code,
                        sizeof code),
                 201);
    snprintf(path, sizeof path, "/%s", code);
    cr_assert_eq(get(port, path, buf, sizeof buf), 302);
    cr_assert_eq(get(port, path, buf, sizeof buf), 410);
    cr_assert_eq(create(port, "{\"url\":\"https://example.com/brief\",\"expires_in\":0.001}", NULL,
                        code, sizeof code),
                 201);
    snprintf(path, sizeof path, "/%s", code);
    int st = 0;
    TEST_EVENTUALLY((st = get(port, path, buf, sizeof buf)) == 410, 10000);
    cr_assert_eq(st, 410);
}

Test(us_serve, impossible_and_non_canonical_codes_are_404_without_redis) {
    start_instances(1, high_limit);
    int port = inst[0].port;
    static char buf[8192];
    long long loads = metric(port, "us_cache_loads_total");
    const char *const impossible[] = {"/a", "/a.b", "/%41bc", "/" /* too short */,
                                      "/0123456789012345678901234567890123456789012345678901234567"
                                      "89012345678"};
    for (size_t i = 0; i < sizeof impossible / sizeof *impossible; i++)
        cr_assert_eq(get(port, impossible[i], buf, sizeof buf), 404, "%s", impossible[i]);
    cr_assert_eq(metric(port, "us_impossible_codes_total"),
                 (long long)(sizeof impossible / sizeof *impossible));
    cr_assert_eq(metric(port, "us_cache_loads_total"), loads, "an impossible code reached Redis");
}

/* ---- The creation limit ------------------------------------------------------------------------
 */

Test(us_serve, over_the_creation_limit_is_429_with_ratelimit_fields) {
    const char *const limit[] = {"--create-limit", "create;q=3;w=60", NULL};
    start_instances(1, limit);
    static char buf[8192];
    const char *body;
    char v[256];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(exchange(inst[0].port, "POST", "/v1/links", NULL,
                              "{\"url\":\"https://example.com/\"}", buf, sizeof buf, &body),
                     201);
    cr_assert_eq(exchange(inst[0].port, "POST", "/v1/links", NULL,
                          "{\"url\":\"https://example.com/\"}", buf, sizeof buf, &body),
                 429);
    header(buf, "RateLimit-Policy", v, sizeof v);
    cr_assert_str_eq(v, "\"create\";q=3;w=60");
    header(buf, "RateLimit", v, sizeof v);
    cr_assert(strncmp(v, "\"create\";r=0;t=", 15) == 0, "%s", v);
    header(buf, "Retry-After", v, sizeof v);
    cr_assert_gt(atoi(v), 0);
}

/* ---- Idempotency-Key --------------------------------------------------------------------------
 */

Test(us_serve, an_idempotency_key_replays_the_first_create) {
    start_instances(1, high_limit);
    static char buf[8192];
    const char *body;
    char first[80], second[80], v[64];
    const char *h = "Idempotency-Key: create-once-42\r\n";
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/i\"}", h, first, sizeof first), 201);
    cr_assert_eq(exchange(inst[0].port, "POST", "/v1/links", h,
                          "{\"url\":\"https://example.com/i\"}", buf, sizeof buf, &body),
                 201);
    header(buf, "Idempotent-Replayed", v, sizeof v);
    cr_assert_str_eq(v, "true");
    const char *c = strstr(body, "\"code\":\"");
    cr_assert(c);
    snprintf(second, sizeof second, "%.*s", (int)strcspn(c + 8, "\""), c + 8);
    cr_assert_str_eq(first, second, "the retry created another link");
    /* Without the key, another link. */
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/i\"}", NULL, second, sizeof second),
        201);
    cr_assert_str_neq(first, second);
}

/* ---- 50 concurrent creates of one alias -------------------------------------------------------
 */

#define RACERS 50

Test(us_serve, fifty_concurrent_creates_of_one_alias_give_one_201) {
    start_instances(2, high_limit);
    static int fds[RACERS];
    static char buf[8192];
    char req[512];
    for (int i = 0; i < RACERS; i++) {
        char json[128];
        int n = snprintf(json, sizeof json,
                         "{\"url\":\"https://example.com/%d\",\"alias\":\"race\"}", i);
        snprintf(req, sizeof req,
                 "POST /v1/links HTTP/1.1\r\nHost: sho.rt\r\nContent-Type: application/json\r\n"
                 "Content-Length: %d\r\n\r\n%s",
                 n, json);
        fds[i] = test_tcp_connect(inst[i % 2].port);
        test_write_all(fds[i], req, strlen(req));
    }
    int created = 0, taken = 0, winner = -1;
    for (int i = 0; i < RACERS; i++) {
        int st = test_http_read_response(fds[i], buf, sizeof buf, NULL);
        if (st == 201) {
            created++;
            winner = i;
        }
        taken += st == 409;
        close(fds[i]);
    }
    cr_assert_eq(created, 1);
    cr_assert_eq(taken, RACERS - 1);
    char want[64], v[256];
    snprintf(want, sizeof want, "https://example.com/%d", winner);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(get(inst[i].port, "/race", buf, sizeof buf), 302);
        header(buf, "Location", v, sizeof v);
        cr_assert_str_eq(v, want);
    }
}

/* ---- Clicks: exact after a flush, across two instances -----------------------------------------
 */

#define CLICKS 300

Test(us_serve, redirects_through_two_instances_are_counted_exactly) {
    start_instances(2, high_limit);
    static char buf[8192];
    char code[80], path[128];
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/c\"}", NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    for (int i = 0; i < CLICKS; i++)
        cr_assert_eq(get(inst[i % 2].port, path, buf, sizeof buf), 302);
    /* The event: both instances have flushed every click they counted. */
    long long flushed = 0;
    TEST_EVENTUALLY((flushed = metric(inst[0].port, "us_clicks_flushed_total") +
                               metric(inst[1].port, "us_clicks_flushed_total")) >= CLICKS,
                    30000);
    cr_assert_eq(flushed, CLICKS);
    cr_assert_eq(metric(inst[0].port, "us_clicks_pending"), 0);
    cr_assert_eq(metric(inst[1].port, "us_clicks_pending"), 0);
    cr_assert_eq(clicks_of(inst[0].port, code), CLICKS);
    cr_assert_eq(clicks_of(inst[1].port, code), CLICKS);
    /* Most were local-tier hits: no Redis round trip on the redirect path. */
    cr_assert_geq(metric(inst[0].port, "us_cache_hits_total{tier=\"local\"}") +
                      metric(inst[1].port, "us_cache_hits_total{tier=\"local\"}"),
                  CLICKS - 4);
}

/* A graceful stop flushes what is left, whatever --flush-ms says. */
Test(us_serve, a_graceful_stop_flushes_the_pending_clicks) {
    const char *const slow[] = {"--create-limit", "create;q=100000;w=60", "--flush-ms", "60000",
                                NULL};
    start_instances(1, slow);
    static char buf[8192];
    char code[80], path[128];
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/g\"}", NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    for (int i = 0; i < 25; i++)
        cr_assert_eq(get(inst[0].port, path, buf, sizeof buf), 302);
    cr_assert_eq(metric(inst[0].port, "us_clicks_pending"), 25);
    cr_assert_eq(bench_server_stop(&inst[0], SIGTERM, 10000), 0);
    start_instances(1, high_limit);
    cr_assert_eq(clicks_of(inst[0].port, code), 25);
}

/* ---- max_clicks, exact across two instances ----------------------------------------------------
 */

#define BUDGET 10
#define TRIES 40

Test(us_serve, a_click_budget_is_exact_across_two_instances) {
    start_instances(2, high_limit);
    static int fds[TRIES];
    static char buf[8192];
    char code[80], req[256], json[128];
    snprintf(json, sizeof json, "{\"url\":\"https://example.com/b\",\"max_clicks\":%d}", BUDGET);
    cr_assert_eq(create(inst[0].port, json, NULL, code, sizeof code), 201);
    snprintf(req, sizeof req, "GET /%s HTTP/1.1\r\nHost: sho.rt\r\n\r\n", code);
    for (int i = 0; i < TRIES; i++) {
        fds[i] = test_tcp_connect(inst[i % 2].port);
        test_write_all(fds[i], req, strlen(req));
    }
    int redirected = 0, gone = 0;
    for (int i = 0; i < TRIES; i++) {
        int st = test_http_read_response(fds[i], buf, sizeof buf, NULL);
        redirected += st == 302;
        gone += st == 410;
        close(fds[i]);
    }
    cr_assert_eq(redirected, BUDGET);
    cr_assert_eq(gone, TRIES - BUDGET);
    /* The clicks spent from leases are reported at the instances' flushes. */
    long long clicks = 0;
    TEST_EVENTUALLY((clicks = clicks_of(inst[1].port, code)) >= BUDGET, 20000);
    cr_assert_eq(clicks, BUDGET);
}

/* ---- Delete: every instance stops redirecting --------------------------------------------------
 */

Test(us_serve, a_deleted_link_stops_redirecting_on_every_instance) {
    start_instances(2, high_limit);
    static char buf[8192];
    char code[80], path[128], req[256];
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/d\"}", NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    /* Both instances hold it in their local tier (the second GET of each is a local hit). */
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(get(inst[i].port, path, buf, sizeof buf), 302);
        long long hits = metric(inst[i].port, "us_cache_hits_total{tier=\"local\"}");
        cr_assert_eq(get(inst[i].port, path, buf, sizeof buf), 302);
        cr_assert_eq(metric(inst[i].port, "us_cache_hits_total{tier=\"local\"}"), hits + 1);
    }
    snprintf(req, sizeof req, "/v1/links/%s", code);
    const char *body;
    cr_assert_eq(exchange(inst[0].port, "DELETE", req, NULL, NULL, buf, sizeof buf, &body), 204);
    /* The event: instance 1 has received the invalidation. */
    long long inv = 0;
    TEST_EVENTUALLY((inv = metric(inst[1].port, "us_cache_invalidations_total")) >= 1, 20000);
    cr_assert_geq(inv, 1);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(get(inst[i].port, path, buf, sizeof buf), 404, "instance %d still redirects",
                     i);
    cr_assert_eq(exchange(inst[1].port, "DELETE", req, NULL, NULL, buf, sizeof buf, &body), 404);
}

/* With --admin-token-file, a DELETE wants the bearer token: 401 without it, and the link keeps
 * redirecting. */
Test(us_serve, with_an_admin_token_a_delete_wants_it) {
    char file[] = "/tmp/us-token-XXXXXX";
    test_temp_file(file, "us-admin-0d5f2c9e81b4\n");
    const char *extra[] = {"--create-limit", "create;q=100000;w=60", "--admin-token-file", file,
                           NULL};
    start_instances(1, extra);
    unlink(file);
    static char buf[8192];
    char code[80], path[128], req[256];
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/t\"}", NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    snprintf(req, sizeof req, "/v1/links/%s", code);
    const char *body;
    cr_assert_eq(exchange(inst[0].port, "DELETE", req, NULL, NULL, buf, sizeof buf, &body), 401);
    cr_assert(strstr(buf, "WWW-Authenticate: Bearer"), "%s", buf);
    cr_assert_eq(get(inst[0].port, path, buf, sizeof buf), 302, "a refused delete deleted");
    cr_assert_eq(exchange(inst[0].port, "DELETE", req,
                          "Authorization: Bearer us-admin-0d5f2c9e81b4\r\n", NULL, buf, sizeof buf,
                          &body),
                 204);
    TEST_EVENTUALLY(get(inst[0].port, path, buf, sizeof buf) == 404, 20000);
    cr_assert_eq(get(inst[0].port, path, buf, sizeof buf), 404);
}

/* ---- The read path: coalesced misses, negative caching, permanent redirects -------------------
 */

#define COLD 30

Test(us_serve, a_cold_code_is_loaded_once_and_an_unknown_one_is_cached_as_such) {
    const char *const perm[] = {"--create-limit", "create;q=100000;w=60", "--redirect", "308",
                                NULL};
    start_instances(1, perm);
    int port = inst[0].port;
    static int fds[COLD];
    static char buf[8192];
    char code[80], req[256], v[128];
    cr_assert_eq(create(port, "{\"url\":\"https://example.com/cold\"}", NULL, code, sizeof code),
                 201);
    long long loads = metric(port, "us_cache_loads_total");
    snprintf(req, sizeof req, "GET /%s HTTP/1.1\r\nHost: sho.rt\r\n\r\n", code);
    for (int i = 0; i < COLD; i++) {
        fds[i] = test_tcp_connect(port);
        test_write_all(fds[i], req, strlen(req));
    }
    for (int i = 0; i < COLD; i++) {
        cr_assert_eq(test_http_read_response(fds[i], buf, sizeof buf, NULL), 308);
        close(fds[i]);
    }
    header(buf, "Cache-Control", v, sizeof v);
    cr_assert_str_eq(v, "max-age=300");
    cr_assert_eq(metric(port, "us_cache_loads_total"), loads + 1, "misses were not coalesced");
    /* Unknown: one load, then the negative entry answers (well within its 5 s). */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(get(port, "/never-made", buf, sizeof buf), 404);
    cr_assert_eq(metric(port, "us_cache_loads_total"), loads + 2, "unknown code not cached");
    /* A later alias of that name is not hidden by the negative entry. */
    cr_assert_eq(
        create(port, "{\"url\":\"https://example.com/n\",\"alias\":\"never-made\"}", NULL, NULL, 0),
        201);
    cr_assert_eq(get(port, "/never-made", buf, sizeof buf), 308);
}

/* Clicks still pending in one instance when another deletes the link do not bring its counter
 * back (us-flush.lua adds only while the link exists). */
Test(us_serve, pending_clicks_of_a_deleted_link_do_not_recreate_its_counter) {
    const char *const slow[] = {"--create-limit", "create;q=100000;w=60", "--flush-ms", "60000",
                                NULL};
    start_instances(1, slow);
    bench_server holder = inst[0];
    inst[0] = (bench_server){0};
    start_instances(1, high_limit);
    static char buf[8192];
    char code[80], path[128];
    const char *body;
    cr_assert_eq(
        create(inst[0].port, "{\"url\":\"https://example.com/p\"}", NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(get(holder.port, path, buf, sizeof buf), 302);
    cr_assert_eq(metric(holder.port, "us_clicks_pending"), 3);
    snprintf(path, sizeof path, "/v1/links/%s", code);
    cr_assert_eq(exchange(inst[0].port, "DELETE", path, NULL, NULL, buf, sizeof buf, &body), 204);
    /* The holder's graceful stop flushes its 3 clicks: refused, the link is gone. */
    cr_assert_eq(bench_server_stop(&holder, SIGTERM, 10000), 0);
    sd_redis *r = test_redis_connect(test_target_url(target));
    cr_assert_eq(test_redis_int(r, "EXISTS us:c:{%s}", code), 0);
    sd_redis_free(r);
}

/* ---- 100k creates from 4 processes over HTTP: 100k distinct codes -------------------------------
 *
 * Four forked clients POST /v1/links 25,000 times each, pipelined in batches over keep-alive
 * connections to two instances (batches alternate between them, so both instances' id blocks
 * serve every client). Each client then follows every code it got and checks that it redirects
 * to its own target. The parent collects the 100,000 codes and asserts they are distinct.
 */

#define BULK_CLIENTS 4
#define BULK_EACH 25000
#define BULK_BATCH 50

/* A keep-alive connection with a read buffer: pipelined responses are parsed from it. */
typedef struct bulk_conn {
    int fd;
    char buf[1 << 16];
    size_t len;
} bulk_conn;

static int bulk_connect(bulk_conn *c, int port) {
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        return -1;
    struct timeval tv = {120, 0}; /* a bound, not a speed assert: a hung server fails the test */
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return 0;
}

static int bulk_write(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The next response: its status, with its header and body copied (NUL-terminated) into out. */
static int bulk_read(bulk_conn *c, char *out, size_t outlen) {
    for (;;) {
        c->buf[c->len] = '\0';
        char *end = strstr(c->buf, "\r\n\r\n");
        if (end) {
            size_t hlen = (size_t)(end + 4 - c->buf);
            const char *cl = strcasestr(c->buf, "\r\nContent-Length: ");
            size_t blen = cl && cl < end ? (size_t)atol(cl + 18) : 0;
            if (c->len >= hlen + blen) {
                size_t n = hlen + blen < outlen ? hlen + blen : outlen - 1;
                memcpy(out, c->buf, n);
                out[n] = '\0';
                memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
                c->len -= hlen + blen;
                int st = -1;
                return sscanf(out, "HTTP/1.%*d %d", &st) == 1 ? st : -1;
            }
        }
        if (c->len + 1 >= sizeof c->buf)
            return -1;
        ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
}

/* A client process: writes "created resolved" then one code a line to out; exits 0. */
static void bulk_client(int id, const int ports[2], const char *out) {
    static char codes[BULK_EACH][16];
    static char req[BULK_BATCH * 256], resp[8192];
    bulk_conn *conn = calloc(2, sizeof(*conn));
    if (!conn || bulk_connect(&conn[0], ports[0]) != 0 || bulk_connect(&conn[1], ports[1]) != 0)
        _exit(2);
    int created = 0, resolved = 0;
    for (int k = 0; k < BULK_EACH; k += BULK_BATCH) {
        bulk_conn *c = &conn[(k / BULK_BATCH) % 2];
        size_t n = 0;
        for (int i = k; i < k + BULK_BATCH; i++) {
            char json[96];
            int jl = snprintf(json, sizeof json, "{\"url\":\"https://example.com/%d/%d\"}", id, i);
            n += (size_t)snprintf(req + n, sizeof req - n,
                                  "POST /v1/links HTTP/1.1\r\nHost: sho.rt\r\nContent-Type: "
                                  "application/json\r\nContent-Length: %d\r\n\r\n%s",
                                  jl, json);
        }
        if (bulk_write(c->fd, req, n) != 0)
            _exit(3);
        for (int i = k; i < k + BULK_BATCH; i++) {
            int st = bulk_read(c, resp, sizeof resp);
            const char *p = strstr(resp, "\"code\":\"");
            codes[i][0] = '\0';
            if (st == 201 && p) {
                snprintf(codes[i], sizeof codes[i], "%.*s", (int)strcspn(p + 8, "\""), p + 8);
                created++;
            } else if (st < 0) {
                _exit(4);
            }
        }
    }
    /* Every code redirects to its own target, through the other instance than its create's. */
    for (int k = 0; k < BULK_EACH; k += BULK_BATCH) {
        bulk_conn *c = &conn[(k / BULK_BATCH + 1) % 2];
        size_t n = 0;
        for (int i = k; i < k + BULK_BATCH; i++)
            n += (size_t)snprintf(req + n, sizeof req - n,
                                  "GET /%s HTTP/1.1\r\nHost: sho.rt\r\n\r\n",
                                  codes[i][0] ? codes[i] : "none");
        if (bulk_write(c->fd, req, n) != 0)
            _exit(5);
        for (int i = k; i < k + BULK_BATCH; i++) {
            char want[96];
            snprintf(want, sizeof want, "\r\nLocation: https://example.com/%d/%d\r\n", id, i);
            int st = bulk_read(c, resp, sizeof resp);
            if (st < 0)
                _exit(6);
            resolved += st == 302 && strstr(resp, want) != NULL;
        }
    }
    FILE *f = fopen(out, "w");
    if (!f)
        _exit(7);
    fprintf(f, "%d %d\n", created, resolved);
    for (int i = 0; i < BULK_EACH; i++)
        fprintf(f, "%s\n", codes[i]);
    fclose(f);
    _exit(0);
}

static int code_cmp(const void *x, const void *y) {
    return strcmp(x, y);
}

Test(us_serve, hundred_thousand_creates_from_four_processes_give_distinct_codes) {
    const char *const limit[] = {"--create-limit", "create;q=100000000;w=60", NULL};
    start_instances(2, limit);
    int ports[2] = {inst[0].port, inst[1].port};
    pid_t pids[BULK_CLIENTS];
    char paths[BULK_CLIENTS][64];
    uint64_t t0 = sd_now_ms();
    for (int i = 0; i < BULK_CLIENTS; i++) {
        snprintf(paths[i], sizeof paths[i], "/tmp/us-bulk.%d.%d", (int)getpid(), i);
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0)
            bulk_client(i, ports, paths[i]);
    }
    for (int i = 0; i < BULK_CLIENTS; i++) {
        int status = 0;
        cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client %d: status %d", i, status);
    }
    uint64_t elapsed = sd_now_ms() - t0;
    static char all[BULK_CLIENTS * BULK_EACH][16];
    size_t n = 0;
    for (int i = 0; i < BULK_CLIENTS; i++) {
        FILE *f = fopen(paths[i], "r");
        unlink(paths[i]); /* gone whatever the asserts below say */
        cr_assert(f);
        int created = 0, resolved = 0;
        cr_assert_eq(fscanf(f, "%d %d\n", &created, &resolved), 2);
        cr_assert_eq(created, BULK_EACH, "client %d: %d of %d creates answered 201", i, created,
                     BULK_EACH);
        cr_assert_eq(resolved, BULK_EACH, "client %d: %d of %d codes redirect to their target", i,
                     resolved, BULK_EACH);
        while (n < sizeof all / sizeof *all && fgets(all[n], sizeof all[n], f))
            all[n][strcspn(all[n], "\n")] = '\0', n++;
        fclose(f);
    }
    cr_assert_eq(n, (size_t)BULK_CLIENTS * BULK_EACH);
    qsort(all, n, sizeof *all, code_cmp);
    size_t distinct = n > 0;
    for (size_t i = 1; i < n; i++)
        distinct += strcmp(all[i], all[i - 1]) != 0;
    cr_assert_eq(distinct, (size_t)BULK_CLIENTS * BULK_EACH, "%zu duplicate codes", n - distinct);
    cr_assert_eq(metric(inst[0].port, "us_links_skipped_total") +
                     metric(inst[1].port, "us_links_skipped_total"),
                 0, "an id was handed out twice");
    fprintf(stderr, "100k creates + 100k redirects from 4 processes over 2 instances: %llu ms\n",
            (unsigned long long)elapsed);
}

/* ---- Click budgets leased to instances in blocks -----------------------------------------------
 */

static bench_server more[3];

/* Sends `count` GETs of path to each of n ports, pipelined in batches; adds up the answers. */
static void hammer(const int *ports, int n, const char *path, int count, int *redirected,
                   int *gone) {
    static bulk_conn conns[3];
    static char req[BULK_BATCH * 64], resp[8192];
    size_t len = 0;
    for (int i = 0; i < BULK_BATCH; i++)
        len += (size_t)snprintf(req + len, sizeof req - len,
                                "GET %s HTTP/1.1\r\nHost: sho.rt\r\n\r\n", path);
    for (int i = 0; i < n; i++)
        cr_assert_eq(bulk_connect(&conns[i], ports[i]), 0);
    for (int k = 0; k < count; k += BULK_BATCH) {
        for (int i = 0; i < n; i++)
            cr_assert_eq(bulk_write(conns[i].fd, req, len), 0);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < BULK_BATCH; j++) {
                int st = bulk_read(&conns[i], resp, sizeof resp);
                cr_assert(st == 302 || st == 410, "status %d", st);
                *redirected += st == 302;
                *gone += st == 410;
            }
    }
    for (int i = 0; i < n; i++)
        close(conns[i].fd);
}

static long long metric_sum(const int *ports, int n, const char *name) {
    long long sum = 0;
    for (int i = 0; i < n; i++)
        sum += metric(ports[i], name);
    return sum;
}

#define LEASED_BUDGET 600
#define LEASED_TRIES 1000

/* Every instance is asked for more clicks than the whole budget, concurrently: exactly
 * max_clicks redirects in all, the rest 410, the count exact after the flushes, and far fewer
 * Redis calls than clicks. */
Test(us_serve, a_leased_click_budget_is_exact_across_three_instances) {
    start_instances(2, high_limit);
    more[0] = inst[0];
    more[1] = inst[1];
    inst[0] = (bench_server){0};
    inst[1] = (bench_server){0};
    start_instances(1, high_limit);
    more[2] = inst[0];
    inst[0] = (bench_server){0};
    int ports[3] = {more[0].port, more[1].port, more[2].port};
    char code[80], path[128], json[128];
    snprintf(json, sizeof json, "{\"url\":\"https://example.com/l\",\"max_clicks\":%d}",
             LEASED_BUDGET);
    cr_assert_eq(create(ports[0], json, NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    int redirected = 0, gone = 0;
    hammer(ports, 3, path, LEASED_TRIES, &redirected, &gone);
    cr_assert_eq(redirected, LEASED_BUDGET);
    cr_assert_eq(gone, 3 * LEASED_TRIES - LEASED_BUDGET);
    long long clicks = 0;
    TEST_EVENTUALLY((clicks = clicks_of(ports[2], code)) >= LEASED_BUDGET, 20000);
    cr_assert_eq(clicks, LEASED_BUDGET);
    long long calls = metric_sum(ports, 3, "us_budget_leases_total");
    fprintf(stderr, "%d clicks over 3 instances: %lld lease calls\n", LEASED_BUDGET, calls);
    cr_assert_lt(calls, LEASED_BUDGET / 2, "%lld lease calls for %d clicks", calls, LEASED_BUDGET);
    cr_assert_eq(metric_sum(ports, 3, "us_budget_leased_clicks_total") -
                     metric_sum(ports, 3, "us_budget_returned_clicks_total"),
                 LEASED_BUDGET);
    for (int i = 0; i < 3; i++)
        bench_server_stop(&more[i], SIGTERM, 10000);
}

#define SMALL_BUDGET 100

/* Instance 0 takes the first lease (100 / 8 = 12 clicks) and spends one. */
static void first_lease_on_instance_0(char *code, size_t clen, char *path, size_t plen) {
    static char buf[8192];
    char json[128];
    snprintf(json, sizeof json, "{\"url\":\"https://example.com/k\",\"max_clicks\":%d}",
             SMALL_BUDGET);
    cr_assert_eq(create(inst[0].port, json, NULL, code, clen), 201);
    snprintf(path, plen, "/%s", code);
    cr_assert_eq(get(inst[0].port, path, buf, sizeof buf), 302);
    cr_assert_eq(metric(inst[0].port, "us_budget_leased_clicks_total"), SMALL_BUDGET / 8);
}

/* Killed holding 11 unspent clicks: those are lost to the budget (under-admitted), never
 * handed out twice. Its one spent click was not reported either. */
Test(us_serve, an_instance_killed_holding_a_lease_under_admits_never_over) {
    start_instances(2, high_limit);
    char code[80], path[128];
    first_lease_on_instance_0(code, sizeof code, path, sizeof path);
    int status = bench_server_stop(&inst[0], SIGKILL, 10000);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status %d", status);
    int redirected = 0, gone = 0;
    hammer(&inst[1].port, 1, path, 2 * SMALL_BUDGET, &redirected, &gone);
    cr_assert_eq(redirected, SMALL_BUDGET - SMALL_BUDGET / 8);
    cr_assert_eq(gone, 2 * SMALL_BUDGET - redirected);
    cr_assert_geq(metric(inst[1].port, "us_budget_given_up_total"), 1);
    long long clicks = 0;
    TEST_EVENTUALLY((clicks = clicks_of(inst[1].port, code)) >= redirected, 20000);
    cr_assert_eq(clicks, redirected);
}

/* A graceful stop gives the unspent rest back: the other instance spends all of it. */
Test(us_serve, a_stopped_instance_returns_its_lease) {
    start_instances(2, high_limit);
    char code[80], path[128];
    first_lease_on_instance_0(code, sizeof code, path, sizeof path);
    cr_assert_eq(bench_server_stop(&inst[0], SIGTERM, 10000), 0);
    int redirected = 0, gone = 0;
    hammer(&inst[1].port, 1, path, 2 * SMALL_BUDGET, &redirected, &gone);
    cr_assert_eq(redirected, SMALL_BUDGET - 1);
    cr_assert_eq(gone, 2 * SMALL_BUDGET - redirected);
    long long clicks = 0;
    TEST_EVENTUALLY((clicks = clicks_of(inst[1].port, code)) >= SMALL_BUDGET, 20000);
    cr_assert_eq(clicks, SMALL_BUDGET);
}

/* An idle lease is given back at a flush: the other instance spends all of it. */
Test(us_serve, an_idle_lease_is_returned_at_a_flush) {
    start_instances(2, high_limit);
    char code[80], path[128];
    first_lease_on_instance_0(code, sizeof code, path, sizeof path);
    long long back = 0;
    TEST_EVENTUALLY((back = metric(inst[0].port, "us_budget_returned_clicks_total")) >=
                        SMALL_BUDGET / 8 - 1,
                    20000);
    cr_assert_eq(back, SMALL_BUDGET / 8 - 1);
    int redirected = 0, gone = 0;
    hammer(&inst[1].port, 1, path, 2 * SMALL_BUDGET, &redirected, &gone);
    cr_assert_eq(redirected, SMALL_BUDGET - 1);
    long long clicks = 0;
    TEST_EVENTUALLY((clicks = clicks_of(inst[1].port, code)) >= SMALL_BUDGET, 20000);
    cr_assert_eq(clicks, SMALL_BUDGET);
}

/* Clicks counted before any lease record existed (by a build that counted budgeted clicks
 * straight into the click counter) are budget spent: the first lease starts from them, and the
 * link is not given its whole budget again. */
Test(us_serve, clicks_counted_before_the_lease_record_are_spent_budget) {
    start_instances(1, high_limit);
    char code[80], path[128], json[128], key[128];
    snprintf(json, sizeof json, "{\"url\":\"https://example.com/u\",\"max_clicks\":20}");
    cr_assert_eq(create(inst[0].port, json, NULL, code, sizeof code), 201);
    snprintf(path, sizeof path, "/%s", code);
    snprintf(key, sizeof key, "us:c:{%s}", code);
    sd_redis *r = test_redis_connect(test_target_url(target));
    redisReply *rep = sd_redis_command(r, NULL, "SET %s 15", key);
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    sd_redis_free(r);
    int redirected = 0, gone = 0;
    hammer(&inst[0].port, 1, path, BULK_BATCH, &redirected, &gone);
    cr_assert_eq(redirected, 5, "%d redirects for the 5 clicks left of 20", redirected);
    cr_assert_eq(gone, BULK_BATCH - 5);
}

/* A lease is of one link, not of its code: instance 1 holds a block of an alias's first budget
 * (1,000 clicks: a block of 125), the alias is deleted and claimed again with max_clicks 3, and
 * instance 1 redirects the new link exactly 3 times, not from the old link's block. */
Test(us_serve, a_lease_of_a_deleted_alias_is_not_spent_on_its_new_link) {
    start_instances(2, high_limit);
    static char buf[8192];
    const char *body;
    char code[80], path[128];
    cr_assert_eq(
        create(inst[0].port,
               "{\"url\":\"https://example.com/old\",\"alias\":\"reborn\",\"max_clicks\":1000}",
               NULL, code, sizeof code),
        201);
    snprintf(path, sizeof path, "/%s", code);
    cr_assert_eq(get(inst[1].port, path, buf, sizeof buf), 302);
    cr_assert_eq(metric(inst[1].port, "us_budget_leased_clicks_total"), 1000 / 8);
    cr_assert_eq(
        exchange(inst[0].port, "DELETE", "/v1/links/reborn", NULL, NULL, buf, sizeof buf, &body),
        204);
    long long inv = 0;
    TEST_EVENTUALLY((inv = metric(inst[1].port, "us_cache_invalidations_total")) >= 1, 20000);
    cr_assert_geq(inv, 1);
    cr_assert_eq(
        create(inst[0].port,
               "{\"url\":\"https://example.com/new\",\"alias\":\"reborn\",\"max_clicks\":3}", NULL,
               code, sizeof code),
        201);
    int redirected = 0, gone = 0;
    hammer(&inst[1].port, 1, path, BULK_BATCH, &redirected, &gone);
    cr_assert_eq(redirected, 3, "%d redirects of a link with max_clicks 3", redirected);
    cr_assert_eq(gone, BULK_BATCH - 3);
}
