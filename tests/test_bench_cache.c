/*
 * test_bench_cache.c - the cache's bench scenarios (bench/scenarios_cache.c) and the nginx
 * proxy_cache peer (bench/peers/nginx-cache.sh), run by the real `bench` command for a fraction
 * of a second each against a private redis-server.
 *
 * The assertions are about counts, never about speed: every scenario answered every request
 * with a 200, each stampede round cost the origin exactly one call (the cache's promise, counted
 * by the origin itself), and the nginx peer either ran without errors or was skipped with one
 * line saying why (it is skipped for sure when nginx is not on PATH).
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

TestSuite(bench_cache, .init = start, .fini = stop, .timeout = 240);

static const char *const SCENARIOS[] = {"cache.serve.local-hit",         "cache.serve.redis-hit",
                                        "cache.serve.redis-open",        "cache.serve.redis-spread",
                                        "cache.serve.redis-spread-open", "cache.stampede",
                                        "cache.fleet-stampede",          "cache.zipf"};

/* Runs `bench run PREFIX` for 0.3 s per scenario with env, into the JSON report *out. */
static void run_cache_bench(const char *prefix, const char *const env[], test_run_out *r,
                            json_t **out) {
    char json[] = "/tmp/test_bench_cache_XXXXXX";
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

static json_t *scenario(json_t *report, const char *name) {
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(report, "scenarios"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    return NULL;
}

Test(bench_cache, every_cache_scenario_answers_every_request_and_a_stampede_round_costs_one_call) {
    static test_run_out r;
    json_t *report;
    /* Quiet children, so that the teardown lines fit in the stderr kept; no peer runs. */
    run_cache_bench("cache.", (const char *[]){"BENCH_PEERS=0", "SD_LOG_LEVEL=error", NULL}, &r,
                    &report);
    /* 1 is allowed: the open-loop scenario may fall below its rate on a loaded machine, which
     * is a failed run but not this test's business; a scenario that failed is caught below. */
    cr_expect(r.status == 0 || r.status == 1, "status %d: %s", r.status, r.err);
    for (size_t i = 0; i < sizeof SCENARIOS / sizeof SCENARIOS[0]; i++) {
        json_t *s = scenario(report, SCENARIOS[i]);
        cr_assert_not_null(s, "%s did not run: %s", SCENARIOS[i], r.err);
        cr_expect_gt(json_integer_value(json_object_get(s, "count")), 0, "%s", SCENARIOS[i]);
        cr_expect_eq(json_integer_value(json_object_get(s, "errors")), 0, "%s: %s", SCENARIOS[i],
                     r.err);
    }
    json_decref(report);
    /* Both stampede scenarios print "... in R rounds of N, C origin calls ...": C == R. */
    int lines = 0;
    for (const char *p = r.err; (p = strstr(p, "cache bench: stampede: ")) != NULL; p++) {
        unsigned long long reqs, rounds, calls;
        int per;
        cr_assert_eq(sscanf(p, "cache bench: stampede: %llu requests in %llu rounds of %d, %llu",
                            &reqs, &rounds, &per, &calls),
                     4, "%.200s", p);
        cr_expect_gt(rounds, 0);
        cr_expect_eq(calls, rounds, "origin calls per round: %.200s", p);
        lines++;
    }
    cr_expect_eq(lines, 2, "one line per stampede scenario: %s", r.err);
}

Test(bench_cache, the_fleet_stampede_costs_one_call_per_round_on_a_cluster) {
    static test_run_out r;
    /* bench's own private 3-master cluster: the 4 instances' leases and messages cross it. */
    test_run_program("bench",
                     (const char *[]){"run", "cache.fleet-stampede", "--cluster", "--duration",
                                      "0.3", "--warmup", "0.1", NULL},
                     NULL, (const char *[]){"BENCH_PEERS=0", "SD_LOG_LEVEL=error", NULL}, &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    const char *p = strstr(r.err, "cache bench: stampede: ");
    cr_assert_not_null(p, "%s", r.err);
    unsigned long long reqs, rounds, calls;
    int per;
    cr_assert_eq(sscanf(p, "cache bench: stampede: %llu requests in %llu rounds of %d, %llu", &reqs,
                        &rounds, &per, &calls),
                 4, "%.200s", p);
    cr_expect_gt(rounds, 0);
    cr_expect_eq(calls, rounds, "%.200s", p);
}

/* The peer entry named name in the report's "peers" array, or NULL. */
static json_t *peer(json_t *report, const char *name) {
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(report, "peers"), i, p) {
        if (strcmp(json_string_value(json_object_get(p, "name")), name) == 0)
            return p;
    }
    return NULL;
}

Test(bench_cache, the_nginx_peer_runs_or_is_skipped_with_a_line) {
    static test_run_out r;
    json_t *report;
    run_cache_bench("cache.serve.local-hit", (const char *[]){"SD_LOG_LEVEL=error", NULL}, &r,
                    &report);
    cr_expect_eq(r.status, 0, "%s", r.err);
    json_t *p = peer(report, "nginx-proxy_cache");
    cr_assert_not_null(p, "no nginx peer in the report: %s", r.err);
    const char *skipped = json_string_value(json_object_get(p, "skipped"));
    if (skipped) {
        cr_expect_neq(skipped[0], '\0');
        cr_expect_null(strchr(skipped, '\n'));
        cr_expect_not_null(strstr(r.err, "peer nginx-proxy_cache skipped: "), "%s", r.err);
    } else {
        cr_expect_eq(json_integer_value(json_object_get(p, "errors")), 0, "%s", r.err);
        cr_expect_gt(json_integer_value(json_object_get(p, "count")), 0, "%s", r.err);
    }
    json_decref(report);
}

Test(bench_cache, the_nginx_peer_is_skipped_with_a_line_when_nginx_is_missing) {
    static test_run_out r;
    json_t *report;
    /* A PATH without /usr/sbin, where Debian puts nginx. */
    run_cache_bench("cache.serve.local-hit",
                    (const char *[]){"SD_LOG_LEVEL=error", "PATH=/usr/bin:/bin", NULL}, &r,
                    &report);
    cr_expect_eq(r.status, 0, "a missing peer does not fail the run: %s", r.err);
    json_t *p = peer(report, "nginx-proxy_cache");
    cr_assert_not_null(p, "%s", r.err);
    const char *skipped = json_string_value(json_object_get(p, "skipped"));
    cr_assert_not_null(skipped, "nginx ran with PATH=/usr/bin:/bin: %s", r.err);
    cr_expect_not_null(strstr(skipped, "nginx"), "%s", skipped);
    cr_expect_not_null(strstr(r.err, "peer nginx-proxy_cache skipped: "), "%s", r.err);
    json_decref(report);
}
