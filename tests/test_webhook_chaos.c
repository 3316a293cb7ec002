/*
 * test_webhook_chaos.c - issue 14's first "done when", run for real: 1,000 messages to a
 * receiver that answers 500 to 30% of attempts and hangs on 5%; every side effect happens
 * exactly once, every delivery verifies with the npm `standardwebhooks` package, nothing is
 * dead-lettered. On a single Redis and on a cluster (test_webhook_chaos@cluster).
 *
 * Four processes over real sockets, all on loopback:
 *
 *   test --POST /v1/messages--> webhook serve --attempts--> webhook-chaos.mjs --> webhook receive
 *        (1,000 times)          (sender, its                (Node: verifies,     --exec 'echo
 *                                workers inside)             500 / hang / pass)   $WEBHOOK_ID >>
 *                                                                                 effects'
 *
 * tests/node/webhook-chaos.mjs checks every attempt with standardwebhooks over the raw body,
 * then per attempt (a seeded PRNG; the seed is printed, SD_CHAOS_SEED repeats it): 30% answer
 * 500; 2.5% hang before passing the attempt on; 2.5% pass it on, get the receiver's answer and
 * then hang, so the command ran but the sender sees a timeout and retries: only the receiver's
 * dedupe on webhook-id keeps that retry from running the command twice. The rest are passed on
 * and answered with the receiver's status.
 *
 * The sender runs with a short schedule (20 ms to 500 ms, 20 attempts) and a 500 ms timeout, so
 * a hang costs half a second and a message would need 20 failures in a row to die (35%^20).
 * The test waits for events it can observe - the side-effect file reaching 1,000 lines and the
 * endpoint's queue holding nothing READY, DELAYED or RESERVED - polling them with a generous
 * bound, then asserts: each id in the file exactly once and nothing else there; no attempt the
 * package refused; faults of every kind really happened (500s, both hangs, duplicates the
 * receiver absorbed); no dead letter, neither in the API nor in the queue.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobqueue.h"
#include "node.h"
#include "sd.h"
#include "signature.h"
#include "spawn.h"
#include "support.h"

#define CHAOS_MESSAGES 1000
#define CHAOS_WAIT_MS 240000 /* the bound on the wait; a quiet machine needs a few seconds */

TestSuite(webhook_chaos, .timeout = 290);

/* The path of node on PATH, or NULL. */
static char *node_path(void) {
    FILE *p = popen("command -v node", "r");
    if (!p)
        return NULL;
    char line[512] = "";
    char *ok = fgets(line, sizeof line, p);
    pclose(p);
    line[strcspn(line, "\n")] = '\0';
    return ok && line[0] == '/' ? sd_xstrdup(line) : NULL;
}

/* One API call to the sender; returns the status and the parsed body in *out (NULL: not JSON). */
static int api(int port, const char *method, const char *path, const char *body, json_t **out) {
    char *req = sd_xasprintf("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             "Content-Length: %zu\r\n\r\n%s",
                             method, path, body ? strlen(body) : 0, body ? body : "");
    static char buf[1 << 20];
    const char *rb = NULL;
    int st = test_http_exchange(port, req, buf, sizeof buf, &rb);
    free(req);
    if (out)
        *out = st > 0 && rb ? json_loads(rb, 0, NULL) : NULL;
    return st;
}

/* The side-effect file: one webhook-id a line. Returns the lines (sorted, the caller frees the
 * array and text) and their number in *n. */
static char **effects_read(const char *path, char **text, size_t *n) {
    *n = 0;
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, used = 0, got;
    char *buf = sd_xmalloc(cap);
    while ((got = fread(buf + used, 1, cap - used - 1, f)) > 0)
        if ((used += got) + 1 >= cap)
            buf = sd_xrealloc(buf, cap *= 2);
    fclose(f);
    buf[used] = '\0';
    size_t lines = 0;
    for (size_t i = 0; i < used; i++)
        lines += buf[i] == '\n';
    char **out = sd_xcalloc(lines + 1, sizeof *out);
    char *save = NULL;
    for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        out[(*n)++] = l;
    *text = buf;
    return out;
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t effects_count(const char *path) {
    char *text;
    size_t n;
    char **lines = effects_read(path, &text, &n);
    free(lines);
    free(text);
    return n;
}

static long long jint(json_t *o, const char *k) {
    return (long long)json_integer_value(json_object_get(o, k));
}

Test(webhook_chaos, a_thousand_messages_through_500s_and_hangs_take_effect_exactly_once) {
    char why[512];
    if (!node_ready(why, sizeof why))
        cr_skip_test("skipped: %s", why);
    char *node = node_path();
    cr_assert(node, "node is ready but not on PATH");
    unsigned seed = getenv("SD_CHAOS_SEED") ? (unsigned)strtoul(getenv("SD_CHAOS_SEED"), NULL, 10)
                                            : (unsigned)(sd_now_ns() ^ (uint64_t)getpid());
    fprintf(stderr, "webhook_chaos: seed %u (SD_CHAOS_SEED=%u repeats the fault draws)\n", seed,
            seed);
    uint64_t t0 = sd_now_ms();

    test_target *redis = test_target_start();
    const char *url = test_target_url(redis);
    char dir[] = "/tmp/sd-whchaos-XXXXXX";
    cr_assert(mkdtemp(dir));
    char secret[WH_SECRET_TEXT_MAX];
    cr_assert_eq(wh_secret_generate(32, secret, sizeof secret), 0);
    char *secret_file = sd_xasprintf("%s/secrets", dir);
    FILE *f = fopen(secret_file, "w");
    cr_assert(f);
    fprintf(f, "%s\n", secret);
    fclose(f);
    char *effects = sd_xasprintf("%s/effects", dir);

    /* The receiver: the side effect is one line per run of the command. */
    char *bin = test_bin_path("webhook");
    char *exec = sd_xasprintf("echo \"$WEBHOOK_ID\" >> '%s'", effects);
    const char *rx_argv[] = {bin, "receive",       "--listen",  "127.0.0.1:0", "--redis",
                             url, "--secret-file", secret_file, "--exec",      exec,
                             NULL};
    bench_server rx, chaos, tx;
    char err[256];
    cr_assert_eq(bench_server_spawn(rx_argv, NULL, 20000, &rx, err, sizeof err), 0, "%s", err);

    /* The chaos front, forwarding to it. */
    char *script = sd_xasprintf("%s/webhook-chaos.mjs", NODE_DIR);
    char *forward = sd_xasprintf("%s/hook", rx.url);
    char seed_text[16];
    snprintf(seed_text, sizeof seed_text, "%u", seed);
    char *secret_env = sd_xasprintf("CHAOS_SECRET=%s", secret);
    const char *chaos_argv[] = {node,     script, "--forward", forward, "--seed", seed_text,
                                "--fail", "0.30", "--hang",    "0.05",  NULL};
    const char *chaos_env[] = {secret_env, NULL};
    cr_assert_eq(bench_server_spawn(chaos_argv, chaos_env, 20000, &chaos, err, sizeof err), 0, "%s",
                 err);

    /* The sender: 20 attempts 20 ms to 500 ms apart, a hang times out after 500 ms. */
    const char *tx_argv[] = {bin,
                             "serve",
                             "--listen",
                             "127.0.0.1:0",
                             "--redis",
                             url,
                             "--allow-private",
                             "--timeout-ms",
                             "500",
                             "--retry-schedule",
                             "20ms,50ms,100ms,200ms,300ms,500ms,500ms,500ms,500ms,500ms,500ms,"
                             "500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms",
                             "--endpoint-concurrency",
                             "32",
                             "--poll-ms",
                             "10",
                             NULL};
    cr_assert_eq(bench_server_spawn(tx_argv, NULL, 20000, &tx, err, sizeof err), 0, "%s", err);

    char *body = sd_xasprintf("{\"url\":\"%s/hook\",\"secret\":\"%s\"}", chaos.url, secret);
    json_t *j;
    cr_assert_eq(api(tx.port, "POST", "/v1/endpoints", body, &j), 201);
    char queue[96], ep_path[96];
    snprintf(queue, sizeof queue, "wh1.ep.%s", json_string_value(json_object_get(j, "id")));
    snprintf(ep_path, sizeof ep_path, "/v1/endpoints/%s",
             json_string_value(json_object_get(j, "id")));
    json_decref(j);
    free(body);

    uint64_t t_ready = sd_now_ms();
    /* 1,000 messages; their ids are what the side-effect file must hold, once each. */
    char **ids = sd_xcalloc(CHAOS_MESSAGES, sizeof *ids);
    for (int i = 0; i < CHAOS_MESSAGES; i++) {
        body = sd_xasprintf("{\"event_type\":\"order.paid\",\"payload\":{\"n\":%d,\"s\":\"\\u00e9"
                            "\\u6f22\"}}",
                            i);
        cr_assert_eq(api(tx.port, "POST", "/v1/messages", body, &j), 202, "message %d", i);
        ids[i] = sd_xstrdup(json_string_value(json_object_get(j, "id")));
        json_decref(j);
        free(body);
    }
    uint64_t t_posted = sd_now_ms();

    /* Wait for every side effect and for the queue to be drained (the last attempt of a
     * message whose command already ran may still be on its way: a hang after the receiver
     * answered). A dead job, or the endpoint disabled (--disable-after failures in a row: every
     * attempt refused), ends the wait at once: neither undoes itself. */
    sd_redis_url qurl;
    cr_assert_eq(sd_redis_url_parse(url, &qurl, err, sizeof err), 0, "%s", err);
    jq_client *jq;
    cr_assert_eq(jq_client_new(&qurl, NULL, &jq), 0);
    jq_stats st;
    memset(&st, 0, sizeof st);
    size_t seen = 0;
    int drained = 0;
    char ep_state[32] = "enabled";
    for (uint64_t until = sd_now_ms() + CHAOS_WAIT_MS, i = 0; sd_now_ms() < until; i++) {
        seen = effects_count(effects);
        if (i % 10 == 9) {
            json_t *e = NULL;
            if (api(tx.port, "GET", ep_path, NULL, &e) == 200)
                snprintf(ep_state, sizeof ep_state, "%s",
                         json_string_value(json_object_get(e, "state")));
            json_decref(e);
            if (strcmp(ep_state, "enabled") != 0)
                break;
        }
        if (jq_stats_get(jq, queue, &st) == 0) {
            if (st.dead > 0)
                break;
            if (seen >= CHAOS_MESSAGES && st.ready + st.delayed + st.reserved == 0) {
                drained = 1;
                break;
            }
        }
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    uint64_t t_done = sd_now_ms();
    jq_client_free(jq);
    sd_redis_url_clear(&qurl);

    json_t *stats = NULL;
    cr_expect_eq(api(chaos.port, "GET", "/stats", NULL, &stats), 200);
    char *stats_text = json_dumps(stats, JSON_COMPACT);
    fprintf(stderr,
            "webhook_chaos: setup %llu ms, %d messages posted in %llu ms, drained %llu ms "
            "later; queue ready %lld delayed %lld reserved %lld done %lld dead %lld; "
            "front %s\n",
            (unsigned long long)(t_ready - t0), CHAOS_MESSAGES,
            (unsigned long long)(t_posted - t_ready), (unsigned long long)(t_done - t_posted),
            (long long)st.ready, (long long)st.delayed, (long long)st.reserved, (long long)st.done,
            (long long)st.dead, stats_text);
    cr_expect(drained,
              "not drained: %zu side effects; queue ready %lld delayed %lld reserved %lld "
              "dead %lld; endpoint %s (seed %u)",
              seen, (long long)st.ready, (long long)st.delayed, (long long)st.reserved,
              (long long)st.dead, ep_state, seed);

    /* Every side effect exactly once, and no effect of anything else. */
    char *text;
    size_t n;
    char **lines = effects_read(effects, &text, &n);
    if (n)
        qsort(lines, n, sizeof *lines, str_cmp);
    qsort(ids, CHAOS_MESSAGES, sizeof *ids, str_cmp);
    int dups = 0, missing = 0, strangers = 0;
    size_t li = 0;
    for (int i = 0; i < CHAOS_MESSAGES; i++) {
        while (li < n && strcmp(lines[li], ids[i]) < 0) {
            strangers++;
            li++;
        }
        int k = 0;
        while (li < n && strcmp(lines[li], ids[i]) == 0) {
            k++;
            li++;
        }
        if (k == 0)
            missing++;
        if (k > 1)
            dups += k - 1;
        if (k != 1 && dups + missing <= 3)
            fprintf(stderr, "webhook_chaos: %s took effect %d times\n", ids[i], k);
    }
    strangers += (int)(n - li);
    cr_expect_eq(dups, 0, "%d side effects ran a second time (seed %u)", dups, seed);
    cr_expect_eq(missing, 0, "%d messages never took effect (seed %u)", missing, seed);
    cr_expect_eq(strangers, 0, "%d side effects of ids never posted", strangers);
    cr_expect_eq(n, CHAOS_MESSAGES, "%zu side effects for %d messages", n, CHAOS_MESSAGES);

    /* Every attempt verified by the package; and the faults really happened. */
    cr_expect_eq(jint(stats, "verify_failures"), 0, "standardwebhooks refused %lld attempts",
                 jint(stats, "verify_failures"));
    cr_expect_eq(jint(stats, "verified"), jint(stats, "attempts"));
    cr_expect_eq(jint(stats, "ids"), CHAOS_MESSAGES, "the front saw %lld distinct webhook-ids",
                 jint(stats, "ids"));
    cr_expect_gt(jint(stats, "attempts"), CHAOS_MESSAGES, "no retries");
    cr_expect_gt(jint(stats, "answered_500"), 0);
    cr_expect_gt(jint(stats, "hang_before"), 0);
    cr_expect_gt(jint(stats, "hang_after"), 0);
    cr_expect_gt(jint(stats, "receiver_duplicates"), 0,
                 "no retry reached the receiver after its command ran: dedupe never exercised");

    /* Nothing dead. */
    json_t *dead = NULL;
    cr_expect_eq(api(tx.port, "GET", "/v1/dead-letters", NULL, &dead), 200);
    char *dead_text = json_dumps(dead, JSON_COMPACT);
    cr_expect(json_is_array(dead) && json_array_size(dead) == 0, "dead letters: %s",
              dead_text ? dead_text : "(none)");
    free(dead_text);
    cr_expect_eq(st.dead, 0);
    json_decref(dead);

    int s1 = bench_server_stop(&tx, SIGTERM, 20000);
    int s2 = bench_server_stop(&chaos, SIGTERM, 20000);
    int s3 = bench_server_stop(&rx, SIGTERM, 20000);
    cr_expect(WIFEXITED(s1) && WEXITSTATUS(s1) == 0, "webhook serve did not stop cleanly: %d", s1);
    cr_expect(WIFEXITED(s2) && WEXITSTATUS(s2) == 0, "the chaos front did not stop cleanly: %d",
              s2);
    cr_expect(WIFEXITED(s3) && WEXITSTATUS(s3) == 0, "webhook receive did not stop cleanly: %d",
              s3);
    test_target_stop(redis);

    for (int i = 0; i < CHAOS_MESSAGES; i++)
        free(ids[i]);
    free(ids);
    free(lines);
    free(text);
    free(stats_text);
    json_decref(stats);
    char *rm = sd_xasprintf("rm -rf '%s'", dir);
    cr_expect_eq(system(rm), 0);
    free(rm);
    free(secret_env);
    free(forward);
    free(script);
    free(exec);
    free(bin);
    free(effects);
    free(secret_file);
    free(node);
}
