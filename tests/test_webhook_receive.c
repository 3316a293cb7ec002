/*
 * test_webhook_receive.c - `webhook receive` as a real process against a real redis-server (and
 * a cluster): deliveries signed here (webhook/signature.h) go over real sockets, and the command
 * it runs writes to files in a temporary directory, so the tests count side effects. A command
 * that must stay running reads a FIFO: the test decides when it ends, no sleeps.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "local_redis.h"
#include "redis_cluster_server.h"
#include "redis_server.h"
#include "sd.h"
#include "signature.h"
#include "spawn.h"
#include "support.h"

typedef struct rx_rig {
    sd_redis_server *redis;
    sd_redis_cluster_server *cluster;
    char dir[64];
    char secret_text[2][WH_SECRET_TEXT_MAX];
    wh_secret secret[2];
    bench_server srv;
} rx_rig;

/* Where rx_start's receiver keeps its ids: a private redis-server, a private cluster, or no
 * --redis at all (the local durable Redis, under the XDG_STATE_HOME the test set). */
enum { RX_SINGLE, RX_CLUSTER, RX_LOCAL };

/* Starts `webhook receive --exec exec` (with {dir} replaced by the rig's directory) on the rig's
 * Redis, its two secrets given in a --secret-file, extra_env added to its environment. */
static void rx_spawn(rx_rig *g, const char *url, const char *exec, const char *const *extra_env) {
    char *file = sd_xasprintf("%s/secrets", g->dir);
    /* {dir} in the command: the rig's directory. */
    char *cmd = sd_xstrdup(exec), *at;
    while ((at = strstr(cmd, "{dir}")) != NULL) {
        char *next = sd_xasprintf("%.*s%s%s", (int)(at - cmd), cmd, g->dir, at + 5);
        free(cmd);
        cmd = next;
    }
    char *bin = test_bin_path("webhook");
    const char *argv[] = {
        bin,    "receive",       "--listen", "127.0.0.1:0",          "--exec", cmd, "--lease-ms",
        "2000", "--secret-file", file,       url ? "--redis" : NULL, url,      NULL};
    char err[256];
    cr_assert_eq(bench_server_spawn(argv, extra_env, 20000, &g->srv, err, sizeof err), 0, "%s",
                 err);
    free(bin);
    free(cmd);
    free(file);
}

/* A rig: its directory, its Redis (where), its secrets, and a receiver started on them. */
static rx_rig *rx_start_on(int where, const char *exec, const char *const *extra_env) {
    rx_rig *g = sd_xcalloc(1, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "/tmp/sd-whrx-XXXXXX");
    cr_assert(mkdtemp(g->dir));
    const char *url = NULL;
    if (where == RX_CLUSTER) {
        g->cluster = test_redis_cluster_start(0);
        url = sd_redis_cluster_server_url(g->cluster);
    } else if (where == RX_SINGLE) {
        g->redis = test_redis_start(NULL);
        url = sd_redis_server_url(g->redis);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(wh_secret_generate(32, g->secret_text[i], WH_SECRET_TEXT_MAX), 0);
        cr_assert_eq(wh_secret_parse(g->secret_text[i], &g->secret[i]), 0);
    }
    char *file = sd_xasprintf("%s/secrets", g->dir);
    FILE *f = fopen(file, "w");
    cr_assert(f);
    fprintf(f, "%s\n%s\n", g->secret_text[0], g->secret_text[1]);
    fclose(f);
    free(file);
    rx_spawn(g, url, exec, extra_env);
    return g;
}

static rx_rig *rx_start(int cluster, const char *exec, const char *const *extra_env) {
    return rx_start_on(cluster ? RX_CLUSTER : RX_SINGLE, exec, extra_env);
}

/* Stops the receiver alone (SIGTERM), expecting a clean exit. */
static void rx_stop_receiver(rx_rig *g) {
    int st = bench_server_stop(&g->srv, SIGTERM, 20000);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "webhook receive did not stop cleanly: %d",
              st);
}

static void rx_stop(rx_rig *g) {
    rx_stop_receiver(g);
    if (g->cluster)
        sd_redis_cluster_server_stop(g->cluster);
    else if (g->redis)
        sd_redis_server_stop(g->redis);
    char *rm = sd_xasprintf("rm -rf '%s'", g->dir);
    cr_assert_eq(system(rm), 0);
    free(rm);
    wh_secret_clear(&g->secret[0]);
    wh_secret_clear(&g->secret[1]);
    free(g);
}

/* A delivery: the request bytes of a signed POST. which: 0 or 1, the secret that signs it;
 * 2 signs with both (mid-rotation); -1 a secret the receiver does not know. */
static char *delivery_request(rx_rig *g, const char *id, const void *body, size_t len, int which,
                              size_t *out_len) {
    char sig[2 * (WH_SIGNATURE_ENTRY_LEN + 1)];
    int64_t now = (int64_t)time(NULL);
    if (which == -1) {
        char text[WH_SECRET_TEXT_MAX];
        wh_secret other;
        cr_assert_eq(wh_secret_generate(32, text, sizeof text), 0);
        cr_assert_eq(wh_secret_parse(text, &other), 0);
        cr_assert_eq(wh_signature_sign(&other, 1, id, now, body, len, sig, sizeof sig), 0);
    } else if (which == 2) {
        cr_assert_eq(wh_signature_sign(g->secret, 2, id, now, body, len, sig, sizeof sig), 0);
    } else {
        cr_assert_eq(wh_signature_sign(&g->secret[which], 1, id, now, body, len, sig, sizeof sig),
                     0);
    }
    char *head = sd_xasprintf("POST /hooks/in HTTP/1.1\r\nHost: x\r\nContent-Type: "
                              "application/json\r\nwebhook-id: %s\r\nwebhook-timestamp: %lld\r\n"
                              "webhook-signature: %s\r\nContent-Length: %zu\r\n\r\n",
                              id, (long long)now, sig, len);
    size_t hl = strlen(head);
    char *req = sd_xmalloc(hl + len);
    memcpy(req, head, hl);
    memcpy(req + hl, body, len);
    free(head);
    *out_len = hl + len;
    return req;
}

/* Sends request bytes on a new connection; returns the connection (the response not read). */
static int send_request(rx_rig *g, const char *req, size_t len) {
    int fd = test_tcp_connect(g->srv.port);
    test_write_all(fd, req, len);
    return fd;
}

static int read_status(int fd, char *body_out, size_t cap) {
    static char buf[65536];
    const char *body;
    int status = test_http_read_response(fd, buf, sizeof buf, &body);
    if (body_out)
        snprintf(body_out, cap, "%s", status > 0 ? body : "");
    close(fd);
    return status;
}

static int deliver(rx_rig *g, const char *id, const char *body, int which, char *resp, size_t cap) {
    size_t len;
    char *req = delivery_request(g, id, body, strlen(body), which, &len);
    int fd = send_request(g, req, len);
    free(req);
    return read_status(fd, resp, cap);
}

static char *slurp(rx_rig *g, const char *name, size_t *len) {
    char *path = sd_xasprintf("%s/%s", g->dir, name);
    FILE *f = fopen(path, "rb");
    free(path);
    char *out = sd_xcalloc(1, 1 << 20);
    *len = f ? fread(out, 1, (1 << 20) - 1, f) : 0;
    if (f)
        fclose(f);
    return out;
}

static int count_lines(rx_rig *g, const char *name) {
    size_t len;
    char *s = slurp(g, name, &len);
    int n = 0;
    for (size_t i = 0; i < len; i++)
        n += s[i] == '\n';
    free(s);
    return n;
}

TestSuite(webhook_receive, .timeout = 180);

Test(webhook_receive, a_delivery_runs_the_command_once_and_a_duplicate_does_not) {
    rx_rig *g = rx_start(0, "cat >> {dir}/out && echo \"$WEBHOOK_ID\" >> {dir}/runs", NULL);
    char resp[512];
    const char *body = "{\"type\":\"invoice.paid\",\"amount\":\"12.30\"}";
    cr_assert_eq(deliver(g, "msg_once", body, 0, resp, sizeof resp), 200, "%s", resp);
    cr_assert(strstr(resp, "\"processed\""), "%s", resp);
    size_t len;
    char *out = slurp(g, "out", &len);
    cr_assert_eq(len, strlen(body));
    cr_assert_eq(memcmp(out, body, len), 0, "the command got the body as sent");
    free(out);
    out = slurp(g, "runs", &len);
    cr_assert_str_eq(out, "msg_once\n", "WEBHOOK_ID is the delivery's id");
    free(out);
    /* The same delivery again, signed with the other secret: a duplicate, not run. */
    cr_assert_eq(deliver(g, "msg_once", body, 1, resp, sizeof resp), 200, "%s", resp);
    cr_assert(strstr(resp, "\"duplicate\""), "%s", resp);
    cr_assert_eq(count_lines(g, "runs"), 1);
    rx_stop(g);
}

Test(webhook_receive, an_unauthentic_delivery_gets_401_and_runs_nothing) {
    rx_rig *g = rx_start(0, "echo run >> {dir}/runs", NULL);
    char resp[512];
    cr_assert_eq(deliver(g, "msg_forged", "{}", -1, resp, sizeof resp), 401, "%s", resp);
    cr_assert(strstr(resp, "no webhook-signature entry matches"), "%s", resp);
    cr_assert_null(strstr(resp, "whsec_"));
    /* No signature headers at all. */
    char *req = sd_xasprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    int fd = send_request(g, req, strlen(req));
    free(req);
    cr_assert_eq(read_status(fd, NULL, 0), 401);
    /* A body changed after signing. */
    size_t len;
    req = delivery_request(g, "msg_changed", "{\"a\":1}", 7, 0, &len);
    req[len - 2] = '2';
    fd = send_request(g, req, len);
    free(req);
    cr_assert_eq(read_status(fd, NULL, 0), 401);
    cr_assert_eq(count_lines(g, "runs"), 0);
    /* Signed with both secrets (mid-rotation): accepted. */
    cr_assert_eq(deliver(g, "msg_both", "{}", 2, resp, sizeof resp), 200, "%s", resp);
    cr_assert_eq(count_lines(g, "runs"), 1);
    rx_stop(g);
}

Test(webhook_receive, a_failed_command_gets_500_and_the_retry_runs_it_again) {
    rx_rig *g = rx_start(0, "echo run >> {dir}/runs; exit 3", NULL);
    char resp[512];
    cr_assert_eq(deliver(g, "msg_fails", "{}", 0, resp, sizeof resp), 500, "%s", resp);
    cr_assert(strstr(resp, "exited with status 3"), "%s", resp);
    cr_assert_eq(deliver(g, "msg_fails", "{}", 0, resp, sizeof resp), 500, "%s", resp);
    cr_assert_eq(count_lines(g, "runs"), 2, "the retry ran the command again");
    rx_stop(g);
}

/* While the command runs, a second delivery of the id gets 409; once it finished, 200. */
Test(webhook_receive, a_duplicate_while_running_gets_409) {
    rx_rig *g = rx_start(0, "read x < {dir}/fifo; echo run >> {dir}/runs", NULL);
    char *fifo = sd_xasprintf("%s/fifo", g->dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    size_t len;
    char *req = delivery_request(g, "msg_slow", "{}", 2, 0, &len);
    int first = send_request(g, req, len);
    /* Opening the FIFO for writing waits until the command opened it: it is running. */
    int w = open(fifo, O_WRONLY);
    cr_assert_geq(w, 0);
    char resp[512];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(deliver(g, "msg_slow", "{}", 0, resp, sizeof resp), 409, "%s", resp);
    /* Let the command end. */
    cr_assert_eq(write(w, "go\n", 3), 3);
    close(w);
    cr_assert_eq(read_status(first, resp, sizeof resp), 200, "%s", resp);
    cr_assert_eq(deliver(g, "msg_slow", "{}", 0, resp, sizeof resp), 200, "%s", resp);
    cr_assert(strstr(resp, "\"duplicate\""), "%s", resp);
    cr_assert_eq(count_lines(g, "runs"), 1);
    free(req);
    free(fifo);
    rx_stop(g);
}

/* 30 copies of one delivery sent at once: one side effect. */
static void duplicate_storm(int cluster) {
    rx_rig *g = rx_start(cluster, "echo run >> {dir}/runs", NULL);
    enum { N = 30 };
    int fds[N];
    size_t len;
    char *req = delivery_request(g, "msg_storm", "{\"n\":1}", 7, 0, &len);
    for (int i = 0; i < N; i++)
        fds[i] = send_request(g, req, len);
    int ok = 0, busy = 0, other = 0;
    for (int i = 0; i < N; i++) {
        int st = read_status(fds[i], NULL, 0);
        ok += st == 200;
        busy += st == 409;
        other += st != 200 && st != 409;
    }
    cr_assert_eq(other, 0);
    cr_assert_eq(count_lines(g, "runs"), 1, "%d deliveries ran the command more than once", N);
    /* The sender retries the 409s: every one is now a duplicate. */
    for (int i = 0; i < busy; i++) {
        char resp[512];
        cr_assert_eq(deliver(g, "msg_storm", "{\"n\":1}", 0, resp, sizeof resp), 200);
        cr_assert(strstr(resp, "\"duplicate\""), "%s", resp);
    }
    cr_assert_eq(count_lines(g, "runs"), 1);
    cr_log_info("%d copies at once: %d answered 200, %d 409, one run", N, ok, busy);
    free(req);
    rx_stop(g);
}

Test(webhook_receive, a_duplicate_storm_has_one_side_effect) {
    duplicate_storm(0);
}

Test(webhook_receive, a_duplicate_storm_has_one_side_effect_on_a_cluster) {
    duplicate_storm(1);
}

/* Bytes that are not text reach the command exactly; the command's environment has
 * WEBHOOK_ID but not the secrets. */
Test(webhook_receive, raw_bytes_in_and_no_secret_in_the_commands_environment) {
    char text[WH_SECRET_TEXT_MAX];
    cr_assert_eq(wh_secret_generate(40, text, sizeof text), 0);
    char *env_secret = sd_xasprintf("WEBHOOK_SECRETS=%s", text);
    const char *env[] = {env_secret, NULL};
    rx_rig *g = rx_start(0, "cat > {dir}/out; env > {dir}/env", env);
    unsigned char body[256];
    for (int i = 0; i < 256; i++)
        body[i] = (unsigned char)(255 - i);
    size_t len;
    char *req = delivery_request(g, "msg_raw", body, sizeof body, 0, &len);
    int fd = send_request(g, req, len);
    free(req);
    cr_assert_eq(read_status(fd, NULL, 0), 200);
    size_t got;
    char *out = slurp(g, "out", &got);
    cr_assert_eq(got, sizeof body);
    cr_assert_eq(memcmp(out, body, sizeof body), 0);
    free(out);
    char *envout = slurp(g, "env", &got);
    cr_assert(strstr(envout, "WEBHOOK_ID=msg_raw\n"), "%s", envout);
    cr_assert_null(strstr(envout, "WEBHOOK_SECRETS"));
    cr_assert_null(strstr(envout, "whsec_"));
    free(envout);
    /* The secret from the environment is accepted too. */
    wh_secret s;
    cr_assert_eq(wh_secret_parse(text, &s), 0);
    g->secret[0] = s;
    char resp[256];
    cr_assert_eq(deliver(g, "msg_env", "{}", 0, resp, sizeof resp), 200, "%s", resp);
    free(env_secret);
    rx_stop(g);
}

Test(webhook_receive, bad_secrets_are_a_usage_error_that_never_prints_them) {
    static test_run_out r;
    const char *args[] = {"receive", "--listen", "127.0.0.1:0",    "--exec",
                          "true",    "--secret", "whsec_c2hvcnQ=", NULL};
    test_run_program("webhook", args, NULL, NULL, &r);
    cr_assert_eq(r.status, 2, "%s", r.err);
    cr_assert(strstr(r.err, "secret 1 (--secret)"), "%s", r.err);
    cr_assert_null(strstr(r.err, "c2hvcnQ"), "the secret was printed: %s", r.err);
    const char *none[] = {"receive", "--listen", "127.0.0.1:0", "--exec", "true", NULL};
    test_run_program("webhook", none, NULL, NULL, &r);
    cr_assert_eq(r.status, 2, "%s", r.err);
    cr_assert(strstr(r.err, "no secret"), "%s", r.err);
}

/* A command that exits without reading a large body: the answer comes from its exit status,
 * the unread input is dropped (EPIPE is no error), nothing is touched after it is freed. */
Test(webhook_receive, a_command_that_ignores_its_stdin_still_counts) {
    rx_rig *g = rx_start(0, "echo run >> {dir}/runs", NULL);
    size_t n = 512 * 1024, len;
    char *body = sd_xmalloc(n);
    memset(body, 'x', n);
    char *req = delivery_request(g, "msg_big", body, n, 0, &len);
    int fd = send_request(g, req, len);
    char resp[256];
    cr_assert_eq(read_status(fd, resp, sizeof resp), 200, "%s", resp);
    cr_assert_eq(count_lines(g, "runs"), 1);
    free(req);
    free(body);
    rx_stop(g);
}

/*
 * Without --redis (nor REDIS_URL) the processed ids go to the local durable Redis, so a receiver
 * restarted after applying an id answers the sender's retry as a duplicate and does not run the
 * command again (a throwaway Redis that died with the first receiver would have run it twice).
 * XDG_STATE_HOME points at a fresh directory named like the test servers' (a server left behind
 * is a leftover for `run.sh test`); the test stops and purges it.
 */
Test(webhook_receive, a_restarted_receiver_remembers_the_ids_it_applied) {
    const char *tag = getenv("SD_TEST_RUN_ID");
    char home[128], env_home[160];
    snprintf(home, sizeof home, "/tmp/sd-redis-%s%swhrx-XXXXXX", tag ? tag : "", tag ? "-" : "");
    cr_assert_not_null(mkdtemp(home));
    setenv("XDG_STATE_HOME", home, 1); /* for sd_local_redis_stop below */
    unsetenv("REDIS_URL");
    snprintf(env_home, sizeof env_home, "XDG_STATE_HOME=%s", home);
    const char *env[] = {env_home, "REDIS_URL=", NULL};
    const char *exec = "echo \"$WEBHOOK_ID\" >> {dir}/runs";
    rx_rig *g = rx_start_on(RX_LOCAL, exec, env);
    char resp[512];
    cr_assert_eq(deliver(g, "msg_kept", "{}", 0, resp, sizeof resp), 200, "%s", resp);
    cr_assert(strstr(resp, "\"processed\""), "%s", resp);
    rx_stop_receiver(g);
    rx_spawn(g, NULL, exec, env);
    cr_assert_eq(deliver(g, "msg_kept", "{}", 0, resp, sizeof resp), 200, "%s", resp);
    cr_assert(strstr(resp, "\"duplicate\""), "the restarted receiver forgot the id: %s", resp);
    cr_assert_eq(count_lines(g, "runs"), 1);
    rx_stop(g);
    sd_local_redis_info info;
    cr_assert_eq(sd_local_redis_stop(NULL, 1, &info), 0, "the local durable Redis was not used");
    rmdir(home);
}

/* A Redis that may evict keys could drop a processed id and run its command again: refused. */
Test(webhook_receive, an_evicting_redis_is_refused_at_start) {
    static test_run_out r;
    sd_redis_server *s = test_redis_start(NULL);
    sd_redis *admin = test_redis_connect(sd_redis_server_url(s));
    redisReply *rep = sd_redis_command(admin, NULL, "CONFIG SET maxmemory-policy allkeys-lru");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    sd_redis_free(admin);
    const char *args[] = {"receive",
                          "--listen",
                          "127.0.0.1:0",
                          "--exec",
                          "true",
                          "--secret",
                          "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                          "--redis",
                          sd_redis_server_url(s),
                          NULL};
    test_run_program("webhook", args, NULL, NULL, &r);
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_assert(strstr(r.err, "noeviction"), "%s", r.err);
    cr_assert_null(strstr(r.err, "MDEyMzQ1"), "the secret was printed: %s", r.err);
    sd_redis_server_stop(s);
}
