/*
 * test_bench_urlshortener.c - the URL shortener's bench scenarios
 * (bench/scenarios_urlshortener.c) and the nginx `return 302` peer
 * (bench/peers/nginx-urlshortener.sh), run by the real `bench` command for a fraction of a second
 * each against a private redis-server.
 *
 * The assertions are about counts, never about speed: every scenario completed operations and
 * none failed (a redirect answered 302, a create 201), and the nginx peer either ran without
 * errors or was skipped with one line saying why (for sure when nginx is not on PATH).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_server.h"
#include "support.h"

static sd_redis_server *server;

static void start(void) {
    server = test_redis_start(NULL);
}

static void stop(void) {
    sd_redis_server_stop(server);
}

TestSuite(bench_us, .init = start, .fini = stop, .timeout = 240);

static const char *const SCENARIOS[] = {"urlshortener.redirect.hot", "urlshortener.redirect.open",
                                        "urlshortener.redirect.zipf", "urlshortener.create"};

/* Runs `bench run PREFIX` for 0.3 s per scenario with env, into the JSON report *out. */
static void run_bench(const char *prefix, const char *const env[], test_run_out *r, json_t **out) {
    char json[] = "/tmp/test_bench_us_XXXXXX";
    int fd = mkstemp(json);
    cr_assert_geq(fd, 0);
    close(fd);
    test_run_program("bench",
                     (const char *[]){"run", prefix, "--duration", "0.3", "--warmup", "0.1",
                                      "--redis", sd_redis_server_url(server), "--json", json, NULL},
                     NULL, env, r);
    json_error_t jerr;
    *out = json_load_file(json, 0, &jerr);
    unlink(json);
    cr_assert_not_null(*out, "no JSON report (%s); stderr: %s", jerr.text, r->err);
}

static json_t *find(json_t *report, const char *array, const char *name) {
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(report, array), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    return NULL;
}

Test(bench_us, every_scenario_completes_a_short_run_with_zero_errors) {
    static test_run_out r;
    json_t *report;
    run_bench(
        "urlshortener.",
        (const char *[]){"BENCH_PEERS=0", "SD_LOG_LEVEL=error", "BENCH_US_ZIPF_LINKS=20000", NULL},
        &r, &report);
    /* 1 is allowed: the open loop may fall below 35,000/s on a loaded machine, a failed run but
     * not this test's business; a scenario that did not run or had errors is caught below. */
    cr_expect(r.status == 0 || r.status == 1, "status %d: %s", r.status, r.err);
    for (size_t i = 0; i < sizeof SCENARIOS / sizeof SCENARIOS[0]; i++) {
        json_t *s = find(report, "scenarios", SCENARIOS[i]);
        cr_assert_not_null(s, "%s did not run: %s", SCENARIOS[i], r.err);
        cr_expect_gt(json_integer_value(json_object_get(s, "count")), 0, "%s", SCENARIOS[i]);
        cr_expect_eq(json_integer_value(json_object_get(s, "errors")), 0, "%s: %s", SCENARIOS[i],
                     r.err);
    }
    json_decref(report);
}

/* The peer beside each redirect scenario ran with no errors, or was skipped with one line. */
static void expect_peer_ran_or_skipped(json_t *report, const test_run_out *r, int must_skip) {
    size_t i, n = 0;
    json_t *p;
    json_array_foreach(json_object_get(report, "peers"), i, p) {
        if (strcmp(json_string_value(json_object_get(p, "name")), "nginx-return-302") != 0)
            continue;
        n++;
        const char *skipped = json_string_value(json_object_get(p, "skipped"));
        if (must_skip)
            cr_assert_not_null(skipped, "nginx ran with PATH=/usr/bin:/bin: %s", r->err);
        if (skipped) {
            cr_expect_neq(skipped[0], '\0');
            cr_expect_null(strchr(skipped, '\n'));
            cr_expect_not_null(strstr(skipped, "nginx"), "%s", skipped);
            cr_expect_not_null(strstr(r->err, "peer nginx-return-302 skipped: "), "%s", r->err);
        } else {
            cr_expect_eq(json_integer_value(json_object_get(p, "errors")), 0, "%s", r->err);
            cr_expect_gt(json_integer_value(json_object_get(p, "count")), 0, "%s", r->err);
        }
    }
    cr_expect_eq(n, 2, "one nginx peer beside each redirect scenario: %s", r->err);
}

Test(bench_us, the_nginx_peer_runs_or_is_skipped_with_a_line) {
    static test_run_out r;
    json_t *report;
    run_bench("urlshortener.redirect.",
              (const char *[]){"SD_LOG_LEVEL=error", "BENCH_US_ZIPF_LINKS=20000", NULL}, &r,
              &report);
    cr_expect(r.status == 0 || r.status == 1, "status %d: %s", r.status, r.err);
    expect_peer_ran_or_skipped(report, &r, 0);
    json_decref(report);
}

Test(bench_us, the_nginx_peer_is_skipped_with_a_line_when_nginx_is_missing) {
    static test_run_out r;
    json_t *report;
    /* A PATH without /usr/sbin, where Debian puts nginx. */
    run_bench("urlshortener.redirect.",
              (const char *[]){"SD_LOG_LEVEL=error", "PATH=/usr/bin:/bin",
                               "BENCH_US_ZIPF_LINKS=20000", NULL},
              &r, &report);
    cr_expect(r.status == 0 || r.status == 1, "a missing peer does not fail the run: %s", r.err);
    expect_peer_ran_or_skipped(report, &r, 1);
    json_decref(report);
}
