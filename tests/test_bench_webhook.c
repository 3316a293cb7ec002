/*
 * test_bench_webhook.c - the webhook sender's bench scenarios (bench/scenarios_webhook.c), run by
 * the real `bench` command for a fraction of a second each against a private redis-server, with
 * a real `webhook serve` child.
 *
 * The assertions are about counts, never about speed: every scenario had messages delivered and
 * none failed, no post was refused, and each black-hole scenario's second endpoint really was
 * delivered to (its listener accepted the sender's connections) while the others had none.
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

TestSuite(bench_webhook, .init = start, .fini = stop, .timeout = 240);

/* In the order bench runs them; HOLE[i] says whether SCENARIOS[i] has the black hole. */
static const char *const SCENARIOS[] = {
    "webhook.deliveries.closed", "webhook.latency.1000",      "webhook.blackhole.1000",
    "webhook.isolation.1.alone", "webhook.isolation.1.hole",  "webhook.isolation.1.twin",
    "webhook.isolation.1.pair",  "webhook.isolation.2.alone", "webhook.isolation.2.hole",
    "webhook.isolation.2.twin",  "webhook.isolation.2.pair",  "webhook.isolation.3.alone",
    "webhook.isolation.3.hole",  "webhook.isolation.3.twin",  "webhook.isolation.3.pair",
    "webhook.isolation.4.alone", "webhook.isolation.4.hole",  "webhook.isolation.4.twin",
    "webhook.isolation.4.pair",  "webhook.isolation.5.alone", "webhook.isolation.5.hole",
    "webhook.isolation.5.twin",  "webhook.isolation.5.pair"};
static const int HOLE[] = {0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0};
#define ROUNDS 5 /* of webhook.isolation, each pooled into webhook.isolation.pooled.KIND */
#define NSCENARIOS (sizeof SCENARIOS / sizeof SCENARIOS[0])

static json_t *scenario(json_t *report, const char *name) {
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(report, "scenarios"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    return NULL;
}

Test(bench_webhook, every_webhook_scenario_delivers_with_no_errors) {
    static test_run_out r;
    char json[] = "/tmp/test_bench_webhook_XXXXXX";
    int fd = mkstemp(json);
    cr_assert_geq(fd, 0);
    close(fd);
    test_run_program("bench",
                     (const char *[]){"run", "webhook.", "--duration", "0.3", "--warmup", "0.1",
                                      "--redis", sd_redis_server_url(server), "--json", json, NULL},
                     NULL, (const char *[]){"BENCH_PEERS=0", "SD_LOG_LEVEL=error", NULL}, &r);
    json_error_t jerr;
    json_t *report = json_load_file(json, 0, &jerr);
    unlink(json);
    cr_assert_not_null(report, "no JSON report (%s); stderr: %s", jerr.text, r.err);
    /* 1 is allowed: an open-loop scenario may fall below its rate on a loaded machine, which is
     * a failed run but not this test's business; a scenario that failed is caught below. */
    cr_expect(r.status == 0 || r.status == 1, "status %d: %s", r.status, r.err);
    for (size_t i = 0; i < NSCENARIOS; i++) {
        json_t *s = scenario(report, SCENARIOS[i]);
        cr_assert_not_null(s, "%s did not run: %s", SCENARIOS[i], r.err);
        cr_expect_gt(json_integer_value(json_object_get(s, "count")), 0, "%s", SCENARIOS[i]);
        cr_expect_eq(json_integer_value(json_object_get(s, "errors")), 0, "%s: %s", SCENARIOS[i],
                     r.err);
    }
    /* Each pooled row holds exactly the operations of its five rounds. */
    const char *const kinds[] = {"alone", "hole", "twin", "pair"};
    for (size_t k = 0; k < 4; k++) {
        char name[64];
        snprintf(name, sizeof name, "webhook.isolation.pooled.%s", kinds[k]);
        json_t *p = scenario(report, name);
        cr_assert_not_null(p, "no row %s", name);
        json_int_t sum = 0;
        for (int r = 1; r <= ROUNDS; r++) {
            char round[64];
            snprintf(round, sizeof round, "webhook.isolation.%d.%s", r, kinds[k]);
            sum += json_integer_value(json_object_get(scenario(report, round), "count"));
        }
        cr_expect_eq(json_integer_value(json_object_get(p, "count")), sum, "%s", name);
    }
    json_decref(report);
    /* Each scenario prints "webhook bench: EVENT: P messages posted, R deliveries received (D
     * duplicates), E post errors, H black-hole connections". */
    int lines = 0;
    for (const char *p = r.err; (p = strstr(p, "webhook bench: bench.")) != NULL; p++) {
        unsigned long long posted, received, dups, post_errors;
        int holes;
        const char *q = strchr(p + 15, ':');
        cr_assert_not_null(q);
        cr_assert_eq(sscanf(q,
                            ": %llu messages posted, %llu deliveries received (%llu duplicates), "
                            "%llu post errors, %d black-hole",
                            &posted, &received, &dups, &post_errors, &holes),
                     5, "%.200s", p);
        cr_expect_gt(received, 0, "%.200s", p);
        cr_expect_leq(received, posted + dups, "%.200s", p);
        cr_expect_eq(post_errors, 0, "%.200s", p);
        /* In the black-hole scenarios the sender connected to the hole. */
        cr_assert_lt((size_t)lines, NSCENARIOS, "more lines than scenarios: %s", r.err);
        if (HOLE[lines])
            cr_expect_gt(holes, 0, "the black-holed endpoint got no attempt: %.200s", p);
        else
            cr_expect_eq(holes, 0, "%.200s", p);
        lines++;
    }
    cr_expect_eq(lines, (int)NSCENARIOS, "one line per scenario: %s", r.err);
}
