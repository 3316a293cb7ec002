/*
 * test_ratelimit_serve.c - the `ratelimit` command as a user runs it: `ratelimit serve` started
 * as a real process and spoken to over real sockets (the RateLimit header syntax, 429 problems,
 * Retry-After, POST /v1/check, /metrics, several instances sharing one Redis, a graceful stop),
 * and `ratelimit check` and the usage errors.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <netinet/in.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"
#include "support.h"

static test_target *server;

static void start(void) {
    server = test_target_start();
}

static void stop(void) {
    test_target_stop(server);
}

TestSuite(ratelimit_serve, .init = start, .fini = stop, .timeout = 60);

typedef struct gateway {
    pid_t pid;
    int port;
} gateway;

/* Starts `ratelimit serve` on a free port with the extra arguments (NULL-terminated). */
static gateway serve(const char *arg, ...) {
    /* A generous deadline: these tests are about answers, and sanitizer builds are slow. */
    const char *argv[32] = {"ratelimit",     "serve", "--listen", "127.0.0.1:0",
                            "--deadline-ms", "2000",  "--redis",  test_target_url(server)};
    int argc = 8;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && argc < 31; a = va_arg(ap, const char *)) {
        argv[argc++] = a;
    }
    va_end(ap);
    argv[argc] = NULL;
    bench_server s = test_server_start(argv);
    gateway g = {.pid = s.pid, .port = s.port};
    return g;
}

static void shutdown_gateway(gateway g) {
    int status = test_kill_wait(g.pid, SIGTERM);
    cr_assert(WIFEXITED(status), "not a clean exit on SIGTERM");
    cr_assert_eq(WEXITSTATUS(status), 0);
}

/* GET path with an X-Api-Key; returns the status, the response in buf. */
static int get(gateway g, const char *key, char *buf, size_t len) {
    char req[512];
    snprintf(req, sizeof req, "GET /v1/things HTTP/1.1\r\nHost: x\r\nX-Api-Key: %s\r\n\r\n", key);
    return test_http_exchange(g.port, req, buf, len, NULL);
}

/* The value of header name in a response, copied into out ("" when absent). */
static const char *header(const char *resp, const char *name, char *out, size_t len) {
    size_t n = strlen(name);
    out[0] = '\0';
    for (const char *p = strstr(resp, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':') {
            const char *v = p + 3 + n;
            while (*v == ' ') {
                v++;
            }
            size_t m = strcspn(v, "\r");
            snprintf(out, len, "%.*s", (int)(m < len ? m : len - 1), v);
            break;
        }
    }
    return out;
}

static void assert_matches(const char *text, const char *pattern) {
    regex_t re;
    cr_assert_eq(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    cr_assert_eq(rc, 0, "'%s' does not match %s", text, pattern);
}

Test(ratelimit_serve, headers_follow_the_draft) {
    gateway g = serve("--policy", "burst;q=2;w=60", "--policy", "daily;q=1000;w=86400", NULL);
    char resp[4096], v[512];
    cr_assert_eq(get(g, "alice", resp, sizeof resp), 200);
    cr_assert_str_eq(header(resp, "RateLimit-Policy", v, sizeof v),
                     "\"burst\";q=2;w=60, \"daily\";q=1000;w=86400");
    cr_assert_str_eq(header(resp, "RateLimit", v, sizeof v),
                     "\"burst\";r=1;t=30, \"daily\";r=999;t=87");
    cr_assert_str_eq(header(resp, "Retry-After", v, sizeof v), "");
    cr_assert_eq(get(g, "alice", resp, sizeof resp), 200);
    cr_assert_eq(get(g, "alice", resp, sizeof resp), 429);
    assert_matches(header(resp, "RateLimit", v, sizeof v),
                   "^\"burst\";r=0;t=[0-9]+, \"daily\";r=998;t=[0-9]+$");
    assert_matches(header(resp, "Retry-After", v, sizeof v), "^[1-9][0-9]*$");
    long retry = strtol(v, NULL, 10);
    cr_assert_leq(retry, 30);
    /* The reset of the violated policy is never later than Retry-After (draft section 6). */
    long t;
    cr_assert_eq(sscanf(strstr(resp, "RateLimit: ") + 11, "\"burst\";r=0;t=%ld", &t), 1);
    cr_assert_leq(t, retry);
    assert_matches(header(resp, "Content-Type", v, sizeof v), "^application/problem\\+json");
    const char *body = strstr(resp, "\r\n\r\n") + 4;
    cr_assert_not_null(strstr(body, "http-problem-types#quota-exceeded"), "%s", body);
    cr_assert_not_null(strstr(body, "\"violated-policies\":[\"burst\"]"), "%s", body);
    shutdown_gateway(g);
}

Test(ratelimit_serve, waiting_retry_after_seconds_is_admitted) {
    gateway g = serve("--policy", "tight;q=1;w=1", "--algorithm", "sliding-window-log", NULL);
    char resp[4096], v[64];
    cr_assert_eq(get(g, "bob", resp, sizeof resp), 200);
    cr_assert_eq(get(g, "bob", resp, sizeof resp), 429);
    long retry = strtol(header(resp, "Retry-After", v, sizeof v), NULL, 10);
    cr_assert_eq(retry, 1);
    struct timespec ts = {retry, 0};
    nanosleep(&ts, NULL);
    cr_assert_eq(get(g, "bob", resp, sizeof resp), 200, "still denied after Retry-After");
    shutdown_gateway(g);
}

Test(ratelimit_serve, keys_come_from_the_header_or_the_address) {
    gateway g = serve("--policy", "one;q=1;w=3600", "--key-header", "X-Tenant", NULL);
    char resp[4096];
    const char *a = "GET / HTTP/1.1\r\nHost: x\r\nX-Tenant: a\r\n\r\n";
    const char *b = "GET / HTTP/1.1\r\nHost: x\r\nX-Tenant: b\r\n\r\n";
    const char *none = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(test_http_exchange(g.port, a, resp, sizeof resp, NULL), 200);
    cr_assert_eq(test_http_exchange(g.port, b, resp, sizeof resp, NULL), 200);
    cr_assert_eq(test_http_exchange(g.port, a, resp, sizeof resp, NULL), 429);
    cr_assert_eq(test_http_exchange(g.port, none, resp, sizeof resp, NULL), 200);
    cr_assert_eq(test_http_exchange(g.port, none, resp, sizeof resp, NULL), 429);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    cr_assert_eq(test_redis_int(admin, "EXISTS rl:{127.0.0.1}:one:tb2"), 1);
    sd_redis_free(admin);
    shutdown_gateway(g);
}

static int run(const char *const argv[]);

/* Behind a proxy named by --trust-proxy, the client is the address the proxy put in
 * X-Forwarded-For: two clients behind it have a quota each. Without it the proxy's address is
 * the key, whatever the header says. */
Test(ratelimit_serve, behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota) {
    const char *a = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n";
    const char *b = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.2\r\n\r\n";
    char resp[4096];
    gateway g = serve("--policy", "xff;q=1;w=3600", "--trust-proxy", "127.0.0.1/32", NULL);
    cr_assert_eq(test_http_exchange(g.port, a, resp, sizeof resp, NULL), 200);
    cr_assert_eq(test_http_exchange(g.port, b, resp, sizeof resp, NULL), 200);
    cr_assert_eq(test_http_exchange(g.port, a, resp, sizeof resp, NULL), 429);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    cr_assert_eq(test_redis_int(admin, "EXISTS rl:{203.0.113.2}:xff:tb2"), 1);
    shutdown_gateway(g);
    g = serve("--policy", "xff2;q=1;w=3600", NULL);
    cr_assert_eq(test_http_exchange(g.port, a, resp, sizeof resp, NULL), 200);
    cr_assert_eq(test_http_exchange(g.port, b, resp, sizeof resp, NULL), 429,
                 "an untrusted X-Forwarded-For named the client");
    cr_assert_eq(test_redis_int(admin, "EXISTS rl:{127.0.0.1}:xff2:tb2"), 1);
    sd_redis_free(admin);
    shutdown_gateway(g);
    /* A malformed block is a usage error. */
    cr_assert_eq(run((const char *const[]){"ratelimit", "serve", "--listen", "127.0.0.1:0",
                                           "--redis", test_target_url(server), "--policy",
                                           "p;q=1;w=1", "--trust-proxy", "10.0.0.0/40", NULL}),
                 2);
}

/* Three gateways share one Redis: between them they admit exactly the quota. */
Test(ratelimit_serve, instances_sharing_redis_admit_exactly_the_quota) {
    gateway g[3];
    for (int i = 0; i < 3; i++) {
        g[i] = serve("--policy", "shared;q=25;w=3600", "--algorithm", "gcra", NULL);
    }
    char resp[4096];
    int ok = 0, denied = 0;
    for (int i = 0; i < 90; i++) {
        int status = get(g[i % 3], "tenant", resp, sizeof resp);
        ok += status == 200;
        denied += status == 429;
    }
    cr_assert_eq(ok, 25, "admitted %d", ok);
    cr_assert_eq(denied, 65);
    for (int i = 0; i < 3; i++) {
        shutdown_gateway(g[i]);
    }
}

Test(ratelimit_serve, check_endpoint_answers_json) {
    gateway g = serve("--policy", "api;q=5;w=3600", NULL);
    char resp[4096], req[512];
    const char *body;
    const char *payload = "{\"key\":\"svc\",\"cost\":3}";
    snprintf(req, sizeof req,
             "POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(payload), payload);
    cr_assert_eq(test_http_exchange(g.port, req, resp, sizeof resp, &body), 200);
    assert_matches(body, "^\\{\"allowed\":true,\"remaining\":2,\"reset_ms\":[0-9]+,"
                         "\"retry_after_ms\":0,\"policy\":\"api\"");
    cr_assert_eq(test_http_exchange(g.port, req, resp, sizeof resp, &body), 200);
    assert_matches(body, "\"allowed\":false,\"remaining\":2,\"reset_ms\":[0-9]+,"
                         "\"retry_after_ms\":[1-9][0-9]*,\"policy\":\"api\"");
    const char *bad = "POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"key\":1}";
    cr_assert_eq(test_http_exchange(g.port, bad, resp, sizeof resp, &body), 400);
    cr_assert_not_null(strstr(resp, "application/problem+json"));
    shutdown_gateway(g);
}

/* POSTs payload to /v1/check; returns the status, *body the response body inside resp. */
static int post_check(gateway g, const char *payload, char *resp, size_t len, const char **body) {
    size_t n = strlen(payload);
    char *req = sd_xasprintf("POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                             n, payload);
    int status = test_http_exchange(g.port, req, resp, len, body);
    free(req);
    return status;
}

/* Asserts a 400 problem+json response whose detail contains want. */
static void assert_bad_request(int status, const char *resp, const char *body, const char *want,
                               const char *sent) {
    cr_assert_eq(status, 400, "'%s' got %d", sent, status);
    cr_assert_not_null(strstr(resp, "application/problem+json"), "%s", resp);
    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    cr_assert_not_null(j, "not JSON: %s", body);
    const char *detail = json_string_value(json_object_get(j, "detail"));
    cr_assert_not_null(detail, "no detail in %s", body);
    cr_assert_not_null(strstr(detail, want), "'%s': detail '%s' does not say '%s'", sent, detail,
                       want);
    cr_assert_eq(json_integer_value(json_object_get(j, "status")), 400);
    json_decref(j);
}

/* Each way a body can be wrong gets a 400 that names it (a cost of 99999999999 was once told
 * that "the key must have 1 to 512 bytes"). */
Test(ratelimit_serve, a_body_over_8_kib_is_refused_before_it_is_read) {
    gateway g = serve("--policy", "api;q=5;w=3600", NULL);
    char resp[4096];
    const char *body;
    /* Only the header is sent: the answer must come from the announced length alone. */
    const char *req = "POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 8193\r\n\r\n";
    cr_assert_eq(test_http_exchange(g.port, req, resp, sizeof resp, &body), 413, "%s", resp);
    shutdown_gateway(g);
}

Test(ratelimit_serve, malformed_check_bodies_get_a_fitting_400) {
    gateway g = serve("--policy", "api;q=5;w=3600", NULL);
    static char huge[700], longest[700];
    snprintf(huge, sizeof huge, "{\"key\":\"%0513d\"}", 0);
    snprintf(longest, sizeof longest, "{\"key\":\"%0512d\",\"cost\":0}", 0);
    const char *key_rule = "\"key\" must be a string of 1 to 512 bytes";
    const char *cost_rule = "\"cost\" must be a whole number from 0 to 9000000000";
    const struct {
        const char *body, *detail;
    } cases[] = {
        {"not json", "the body is not JSON"},
        {"", "the body is not JSON"},
        {"{\"key\":\"a\\u0000b\"}", "the body is not JSON"},
        {"[\"k\", 1]", "must be a JSON object"},
        {"\"k\"", "must be a JSON object"},
        {"{\"cost\":1}", "\"key\" is required"},
        {"{\"key\":1}", key_rule},
        {"{\"key\":\"\"}", key_rule},
        {"{\"key\":null}", key_rule},
        {huge, key_rule},
        {"{\"key\":\"k\",\"cost\":-1}", cost_rule},
        {"{\"key\":\"k\",\"cost\":1.5}", cost_rule},
        {"{\"key\":\"k\",\"cost\":\"3\"}", cost_rule},
        {"{\"key\":\"k\",\"cost\":99999999999}", cost_rule},
    };
    char resp[4096];
    const char *body;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int status = post_check(g, cases[i].body, resp, sizeof resp, &body);
        assert_bad_request(status, resp, body, cases[i].detail, cases[i].body);
    }
    /* The limits themselves are fine: a key of 512 bytes, the largest cost (never allowed). */
    cr_assert_eq(post_check(g, longest, resp, sizeof resp, &body), 200, "%s", body);
    cr_assert_eq(post_check(g, "{\"key\":\"k\",\"cost\":9000000000}", resp, sizeof resp, &body),
                 200, "%s", body);
    assert_matches(body, "\"allowed\":false,.*\"retry_after_ms\":-1,");
    /* A key header beyond 512 bytes gets the key's rule too, with its length. */
    char req[1024];
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: %0600d\r\n\r\n", 0);
    int status = test_http_exchange(g.port, req, resp, sizeof resp, &body);
    assert_bad_request(status, resp, body, "the key must have 1 to 512 bytes, not 600", "header");
    shutdown_gateway(g);
}

/* With Redis unreachable and fail-closed, requests get 503, but a cost above the quota is still
 * the final "never" (it once came out as a fail-closed decision). */
Test(ratelimit_serve, never_is_final_even_when_redis_is_down) {
    char dead[64];
    snprintf(dead, sizeof dead, "redis://127.0.0.1:%d", test_closed_port());
    gateway g =
        serve("--policy", "api;q=10;w=3600", "--on-redis-error", "closed", "--redis", dead, NULL);
    char resp[4096];
    const char *body;
    cr_assert_eq(get(g, "k", resp, sizeof resp), 503);
    cr_assert_eq(post_check(g, "{\"key\":\"k\",\"cost\":11}", resp, sizeof resp, &body), 200);
    assert_matches(body, "^\\{\"allowed\":false,.*\"retry_after_ms\":-1,.*\"source\":\"policy\"");
    shutdown_gateway(g);
}

Test(ratelimit_serve, metrics_count_decisions) {
    gateway g = serve("--policy", "m;q=1;w=3600", NULL);
    char resp[8192];
    get(g, "k", resp, sizeof resp);
    get(g, "k", resp, sizeof resp);
    get(g, "k", resp, sizeof resp);
    const char *body;
    cr_assert_eq(test_http_exchange(g.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", resp,
                                    sizeof resp, &body),
                 200);
    cr_assert_not_null(
        strstr(body, "ratelimit_decisions_total{policy=\"m\",outcome=\"allowed\"} 1\n"), "%s",
        body);
    cr_assert_not_null(
        strstr(body, "ratelimit_decisions_total{policy=\"m\",outcome=\"denied\"} 2\n"));
    cr_assert_not_null(strstr(body, "ratelimit_deny_cache_hits_total 1\n"));
    cr_assert_not_null(strstr(body, "ratelimit_redis_errors_total 0\n"));
    cr_assert_not_null(strstr(body, "ratelimit_fallback_decisions_total 0\n"));
    cr_assert_not_null(strstr(body, "ratelimit_in_doubt_checks_total 0\n"));
    shutdown_gateway(g);
}

/* ---- The command line ----------------------------------------------------------------------- */

static int run(const char *const argv[]) {
    pid_t pid = test_spawn(argv, NULL, NULL);
    int status = test_wait_exit(pid, 10000);
    cr_assert_neq(status, -1, "did not exit");
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(ratelimit_serve, usage_errors_exit_2_and_help_exits_0) {
    const char *url = test_target_url(server);
    const char *help[] = {"ratelimit", "serve", "--help", NULL};
    const char *top[] = {"ratelimit", "--help", NULL};
    const char *bad_policy[] = {"ratelimit",   "check", "--redis", url, "--policy",
                                "x;q=ten;w=1", "--key", "k",       NULL};
    const char *no_policy[] = {"ratelimit", "check", "--redis", url, "--key", "k", NULL};
    const char *no_listen[] = {"ratelimit", "serve", "--redis", url, "--policy", "x;q=1;w=1", NULL};
    const char *bad_alg[] = {"ratelimit", "serve",       "--listen", "127.0.0.1:0", "--policy",
                             "x;q=1;w=1", "--algorithm", "leaky",    NULL};
    const char *unknown[] = {"ratelimit", "frobnicate", NULL};
    const char *big_log[] = {
        "ratelimit", "check",          "--redis", url, "--algorithm", "sliding-window-log",
        "--policy",  "x;q=20000;w=60", "--key",   "k", NULL};
    cr_assert_eq(run(help), 0);
    cr_assert_eq(run(top), 0);
    cr_assert_eq(run(bad_policy), 2);
    cr_assert_eq(run(no_policy), 2);
    cr_assert_eq(run(no_listen), 2);
    cr_assert_eq(run(bad_alg), 2);
    cr_assert_eq(run(unknown), 2);
    cr_assert_eq(run(big_log), 2, "a log of 20,000 entries per key was accepted");
}

/* Runs `ratelimit check` (argv), reads the one line it prints into line (asserts that it came
 * within 5 s) and returns its wait status. */
static int run_check(const char *const argv[], char *line, size_t len) {
    int out;
    pid_t pid = test_spawn(argv, NULL, &out);
    cr_assert_gt(test_read_line(out, line, len, 5000), 0);
    close(out);
    return test_wait_exit(pid, 5000);
}

Test(ratelimit_serve, check_command_prints_one_decision) {
    const char *argv[] = {"ratelimit", "check",
                          "--redis",   test_target_url(server),
                          "--policy",  "c;q=2;w=3600",
                          "--key",     "cli",
                          "--cost",    "2",
                          NULL};
    for (int round = 0; round < 2; round++) {
        char line[1024];
        int status = run_check(argv, line, sizeof line);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_matches(line, round == 0 ? "^\\{\"allowed\":true,\"remaining\":0,"
                                        : "^\\{\"allowed\":false,\"remaining\":0,");
    }
    /* A cost above the quota is decided by the policies alone: a final answer, not a failure. */
    argv[9] = "3";
    char line[1024];
    int status = run_check(argv, line, sizeof line);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a never-decision exited %d",
              WEXITSTATUS(status));
    assert_matches(line, "^\\{\"allowed\":false,");
}

/* ---- Stopping ------------------------------------------------------------------------------- */

/* The value of a metric line "name VALUE" in GET /metrics, or -1. */
static long metric(gateway g, const char *name) {
    static char resp[65536];
    const char *body;
    cr_assert_eq(test_http_exchange(g.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", resp,
                                    sizeof resp, &body),
                 200);
    char line[128];
    snprintf(line, sizeof line, "\n%s ", name);
    const char *p = strstr(body, line);
    return p ? strtol(p + strlen(line), NULL, 10) : -1;
}

/*
 * A stop lets every request in flight finish, however long its decision may take: with a
 * frozen Redis and a 3 s deadline, requests wait 3 s for the fallback, longer than the fixed
 * 2 s grace a stop once had. SIGTERM arrives while all of them wait; each still gets its
 * answer (fail-open's 200), none a closed connection.
 */
Test(ratelimit_serve, sigterm_waits_for_requests_held_by_a_frozen_redis) {
    enum { N = 20 };
    /* Fail open: a frozen Redis is only late, and a late check is otherwise refused. */
    gateway g = serve("--policy", "f;q=1000;w=60", "--deadline-ms", "3000", "--on-redis-error",
                      "open", NULL);
    char resp[4096];
    cr_assert_eq(get(g, "warm", resp, sizeof resp), 200, "Redis answers before it is frozen");
    cr_assert_eq(test_target_signal(server, SIGSTOP), 0);
    int fds[N];
    for (int i = 0; i < N; i++) {
        char req[256];
        snprintf(req, sizeof req, "GET /v1/things HTTP/1.1\r\nHost: x\r\nX-Api-Key: k%d\r\n\r\n",
                 i);
        fds[i] = test_tcp_connect(g.port);
        /* The fallback answers after 3 s: allow for it on a slow machine. */
        struct timeval tv = {30, 0};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        test_write_all(fds[i], req, strlen(req));
    }
    /* Wait until the gateway holds all of them (an event, polled), then stop it. */
    uint64_t give_up = sd_now_ms() + 20000;
    long held;
    while ((held = metric(g, "ratelimit_checks_in_flight")) < N && sd_now_ms() < give_up) {
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    if (held != N) {
        test_target_signal(server, SIGCONT);
    }
    cr_assert_eq(held, N, "the gateway holds %ld checks, not %d", held, N);
    kill(g.pid, SIGTERM);
    int answered = 0;
    for (int i = 0; i < N; i++) {
        int status = test_http_read_response(fds[i], resp, sizeof resp, NULL);
        cr_expect_eq(status, 200, "request %d: %s", i,
                     status < 0 ? "the connection closed without a response" : resp);
        answered += status == 200;
        close(fds[i]);
    }
    cr_assert_eq(test_target_signal(server, SIGCONT), 0);
    int status = test_wait_exit(g.pid, 30000);
    cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "no clean exit after the stop");
    cr_assert_eq(answered, N);
}

/* The password can come from a file, so it never shows in argv; it replaces one in the URL. */
Test(ratelimit_serve, redis_password_from_a_file) {
    const char *args[] = {"--requirepass", "open-sesame", NULL};
    sd_redis_server_opts opts = {.extra_args = args};
    sd_redis_server *locked = NULL;
    cr_assert_eq(sd_redis_server_start(&opts, &locked), 0);
    char url[128], wrong[128], path[] = "/tmp/test_rl_passwordXXXXXX";
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", sd_redis_server_port(locked));
    snprintf(wrong, sizeof wrong, "redis://:wrong@127.0.0.1:%d", sd_redis_server_port(locked));
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "open-sesame\n", 12), 12);
    close(fd);
    const char *with_file[] = {
        "ratelimit",  "check", "--redis", wrong, "--redis-password-file", path, "--policy",
        "p;q=5;w=60", "--key", "k",       NULL};
    const char *without[] = {"ratelimit",  "check", "--redis", url, "--policy",
                             "p;q=5;w=60", "--key", "k",       NULL};
    const char *no_redis[] = {"ratelimit", "check",    "--redis-password-file",
                              path,        "--policy", "p;q=5;w=60",
                              "--key",     "k",        NULL};
    /* Without the password Redis refuses, and the fallback's decision is exit 1; with it, Redis
     * decides. A file without --redis or REDIS_URL (a private server) is a usage error. */
    cr_expect_eq(run(without), 1);
    cr_expect_eq(run(with_file), 0);
    unsetenv("REDIS_URL");
    cr_expect_eq(run(no_redis), 2);
    unlink(path);
    sd_redis_server_stop(locked);
}
