/*
 * test_local_redis.c - the local durable Redis (common/local_redis.h): started on first use,
 * found by the next user, started once by concurrent first users, outliving the command that
 * started it, keeping its data through a SIGKILL (AOF), stopped by its own command; and the
 * eviction-policy check, on a single Redis and on a cluster.
 *
 * Each test points XDG_STATE_HOME at a fresh directory named like the embedded Redis's
 * (sd-redis-<SD_TEST_RUN_ID>-...), so that `run.sh test` counts a server a test forgot as a
 * leftover, and stops and purges the server in its teardown.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "local_redis.h"
#include "sd.h"
#include "support.h"

static char state_home[128];

/* A fresh XDG_STATE_HOME for this test (each Criterion test runs in its own process). */
static void fresh_state_home(void) {
    const char *tag = getenv("SD_TEST_RUN_ID");
    snprintf(state_home, sizeof state_home, "/tmp/sd-redis-%s%slocal-XXXXXX", tag ? tag : "",
             tag ? "-" : "");
    cr_assert_not_null(mkdtemp(state_home));
    setenv("XDG_STATE_HOME", state_home, 1);
    unsetenv("REDIS_URL");
    unsetenv("SD_LOCAL_REDIS_APPENDFSYNC");
}

static void stop_and_purge(void) {
    if (!state_home[0])
        return;
    sd_local_redis_stop(NULL, 1, NULL);
    rmdir(state_home);
}

TestSuite(local_redis, .init = fresh_state_home, .fini = stop_and_purge);

static sd_redis *connect_local(const sd_local_redis_info *info) {
    return test_redis_connect(info->url);
}

Test(local_redis, first_use_starts_it_and_the_next_use_finds_it) {
    sd_local_redis_info a, b;
    cr_assert_eq(sd_local_redis_status(NULL, &a), -ESRCH);
    cr_assert_eq(sd_local_redis_ensure(NULL, &a), 0);
    cr_assert_eq(a.started, 1);
    cr_assert_gt(a.pid, 0);
    cr_assert_str_eq(a.appendfsync, "everysec");
    char want[256];
    snprintf(want, sizeof want, "unix://%s/sysdesign/redis.sock", state_home);
    cr_assert_str_eq(a.url, want);
    struct stat st;
    cr_assert_eq(stat(a.dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700, "the state directory is %o", st.st_mode & 0777);

    sd_redis *r = connect_local(&a);
    cr_assert_eq(test_redis_int(r, "INCR k"), 1);
    sd_redis_free(r);

    cr_assert_eq(sd_local_redis_ensure(NULL, &b), 0);
    cr_assert_eq(b.started, 0, "a second server was started");
    cr_assert_eq(b.pid, a.pid);
    cr_assert_eq(sd_local_redis_status(NULL, &b), 0);
    cr_assert_eq(b.pid, a.pid);
    cr_assert_eq(test_count_processes(a.socket), 1);
}

Test(local_redis, outlives_the_command_that_started_it) {
    /* sd-redis start exits at once; test_run_program reads its stdout and stderr to EOF, so a
     * daemon that kept either open would hang this call (invariant 3 of local_redis.c). */
    char env_entry[160];
    snprintf(env_entry, sizeof env_entry, "XDG_STATE_HOME=%s", state_home);
    const char *const env[] = {env_entry, NULL};
    static test_run_out out;
    const char *const args[] = {"start", NULL};
    test_run_program("sd-redis", args, NULL, env, &out);
    cr_assert_eq(out.status, 0, "stderr: %s", out.err);
    cr_assert(strstr(out.out, "started") != NULL, "stdout: %s", out.out);

    sd_local_redis_info info;
    cr_assert_eq(sd_local_redis_status(NULL, &info), 0, "the server died with its command");
    cr_assert_gt(info.pid, 0);
    /* Its own session: a Ctrl-C to the command's process group does not reach it. */
    cr_assert_eq(getsid(info.pid), info.pid);

    const char *const stop[] = {"stop", NULL};
    test_run_program("sd-redis", stop, NULL, env, &out);
    cr_assert_eq(out.status, 0, "stderr: %s", out.err);
    cr_assert_eq(sd_local_redis_status(NULL, &info), -ESRCH);
}

/* A child of the concurrency test: waits on the barrier, then makes sure the server runs and
 * reports whether it started it and which pid it found. */
static void racer(int barrier, int out) {
    char c;
    (void)!read(barrier, &c, 1); /* EOF when the parent closes the write end: all go at once */
    sd_local_redis_info info;
    int rc = sd_local_redis_ensure(NULL, &info);
    dprintf(out, "%d %d %d\n", rc, info.started, (int)info.pid);
    _exit(0);
}

Test(local_redis, concurrent_first_users_start_exactly_one_server) {
    enum { N = 6 };
    int barrier[2], results[2];
    cr_assert_eq(pipe(barrier), 0);
    cr_assert_eq(pipe(results), 0);
    pid_t kids[N];
    for (int i = 0; i < N; i++) {
        kids[i] = fork();
        cr_assert_geq(kids[i], 0);
        if (kids[i] == 0) {
            close(barrier[1]);
            close(results[0]);
            racer(barrier[0], results[1]);
        }
    }
    close(barrier[0]);
    close(results[1]);
    close(barrier[1]); /* go */
    int started = 0, first_pid = 0;
    FILE *f = fdopen(results[0], "r");
    for (int i = 0; i < N; i++) {
        int rc, s, pid;
        cr_assert_eq(fscanf(f, "%d %d %d", &rc, &s, &pid), 3, "a racer reported nothing");
        cr_assert_eq(rc, 0);
        started += s;
        if (i == 0)
            first_pid = pid;
        cr_assert_eq(pid, first_pid, "racers found different servers: %d and %d", first_pid, pid);
    }
    fclose(f);
    for (int i = 0; i < N; i++)
        cr_assert_eq(test_wait_exit(kids[i], 30000), 0);
    cr_assert_eq(started, 1, "%d racers started a server", started);
    char sock[200];
    snprintf(sock, sizeof sock, "%s/sysdesign/redis.sock", state_home);
    cr_assert_eq(test_count_processes(sock), 1);
}

Test(local_redis, data_survives_a_sigkill_and_a_restart_by_the_next_user) {
    sd_local_redis_info a, b;
    cr_assert_eq(sd_local_redis_ensure(NULL, &a), 0);
    sd_redis *r = connect_local(&a);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(test_redis_int(r, "RPUSH jobs %d", i), i + 1);
    sd_redis_free(r);

    cr_assert_eq(kill(a.pid, SIGKILL), 0);
    TEST_EVENTUALLY(!test_process_alive(a.pid), 10000);
    cr_assert_not(test_process_alive(a.pid));
    cr_assert_eq(sd_local_redis_status(NULL, &b), -ESRCH);

    cr_assert_eq(sd_local_redis_ensure(NULL, &b), 0);
    cr_assert_eq(b.started, 1);
    cr_assert_neq(b.pid, a.pid);
    r = connect_local(&b);
    cr_assert_eq(test_redis_int(r, "LLEN jobs"), 1000, "acknowledged writes were lost");
    redisReply *last = sd_redis_command(r, NULL, "LINDEX jobs -1");
    cr_assert(last && last->type == REDIS_REPLY_STRING && strcmp(last->str, "999") == 0);
    freeReplyObject(last);
    sd_redis_free(r);
}

Test(local_redis, stop_ends_it_and_keeps_the_data_unless_purged) {
    sd_local_redis_info a, b, c;
    cr_assert_eq(sd_local_redis_ensure(NULL, &a), 0);
    sd_redis *r = connect_local(&a);
    cr_assert_eq(test_redis_int(r, "INCR kept"), 1);
    sd_redis_free(r);

    cr_assert_eq(sd_local_redis_stop(NULL, 0, &b), 0);
    cr_assert_eq(b.pid, a.pid);
    cr_assert_not(test_process_alive(a.pid), "redis-server %d still runs", (int)a.pid);
    cr_assert_not(test_path_exists(a.socket), "the socket is still there");
    cr_assert_eq(sd_local_redis_status(NULL, &b), -ESRCH);
    cr_assert_eq(sd_local_redis_stop(NULL, 0, &b), -ESRCH, "stopped twice");

    cr_assert_eq(sd_local_redis_ensure(NULL, &c), 0);
    cr_assert_eq(c.started, 1);
    r = connect_local(&c);
    cr_assert_eq(test_redis_int(r, "INCR kept"), 2, "stop lost the data");
    sd_redis_free(r);

    cr_assert_eq(sd_local_redis_stop(NULL, 1, NULL), 0);
    cr_assert_not(test_process_alive(c.pid));
    cr_assert_not(test_path_exists(c.dir), "purge left %s", c.dir);
}

Test(local_redis, a_frozen_server_is_never_doubled_and_stop_kills_it) {
    sd_local_redis_info a, b;
    cr_assert_eq(sd_local_redis_ensure(NULL, &a), 0);
    cr_assert_eq(kill(a.pid, SIGSTOP), 0);
    cr_assert_eq(sd_local_redis_ensure(NULL, &b), SD_ETIMEDOUT);
    cr_assert_eq(test_count_processes(a.socket), 1, "a second server shares the AOF");
    cr_assert_eq(sd_local_redis_stop(NULL, 0, &b), 0);
    cr_assert_eq(b.pid, a.pid);
    TEST_EVENTUALLY(!test_process_alive(a.pid), 10000);
    cr_assert_not(test_process_alive(a.pid));
}

Test(local_redis, appendfsync_comes_from_the_environment) {
    setenv("SD_LOCAL_REDIS_APPENDFSYNC", "always", 1);
    sd_local_redis_info a;
    cr_assert_eq(sd_local_redis_ensure(NULL, &a), 0);
    cr_assert_str_eq(a.appendfsync, "always");
}

Test(local_redis, a_socket_path_too_long_is_refused) {
    char dir[200];
    memset(dir, 'x', sizeof dir - 1);
    dir[0] = '/';
    dir[sizeof dir - 1] = '\0';
    dir[120] = '\0';
    sd_local_redis_opts opts = {.dir = dir};
    sd_local_redis_info info;
    cr_assert_eq(sd_local_redis_ensure(&opts, &info), -ENAMETOOLONG);
}

Test(local_redis, resolve_durable_takes_the_flag_then_redis_url_then_the_local_redis) {
    sd_redis_url url = {0};
    sd_local_redis_info info;
    cr_assert_eq(sd_redis_resolve_durable("redis://127.0.0.1:7", &url), 0);
    cr_assert_eq(url.port, 7);
    sd_redis_url_clear(&url);
    setenv("REDIS_URL", "redis://127.0.0.1:8", 1);
    cr_assert_eq(sd_redis_resolve_durable(NULL, &url), 0);
    cr_assert_eq(url.port, 8);
    sd_redis_url_clear(&url);
    cr_assert_eq(sd_local_redis_status(NULL, &info), -ESRCH, "a URL was given: nothing starts");

    unsetenv("REDIS_URL");
    cr_assert_eq(sd_redis_resolve_durable(NULL, &url), 0);
    cr_assert_eq(sd_local_redis_status(NULL, &info), 0);
    cr_assert_not_null(url.path);
    cr_assert_str_eq(url.path, info.socket);
    sd_redis_url_clear(&url);
    cr_assert_eq(sd_redis_resolve_durable("bogus://x", &url), SD_EPARSE);
}

/* ---- maxmemory-policy ----------------------------------------------------------------------- */

Test(noeviction, a_single_redis_is_refused_unless_noeviction) {
    const char *const args[] = {"--requirepass", "s3cret-pw", NULL};
    sd_redis_server_opts opts = {.extra_args = args};
    sd_redis_server *s = NULL;
    cr_assert_eq(sd_redis_server_start(&opts, &s), 0);
    char text[128], err[256];
    snprintf(text, sizeof text, "redis://:s3cret-pw@127.0.0.1:%d", sd_redis_server_port(s));
    sd_redis_url url = {0};
    cr_assert_eq(sd_redis_url_parse(text, &url, err, sizeof err), 0);
    cr_assert_eq(sd_redis_require_noeviction(&url, err, sizeof err), 0, "%s", err);

    sd_redis *r = test_redis_connect(text);
    redisReply *rep = sd_redis_command(r, NULL, "CONFIG SET maxmemory-policy allkeys-lru");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    cr_assert_eq(sd_redis_require_noeviction(&url, err, sizeof err), SD_EREDIS);
    cr_assert(strstr(err, "allkeys-lru") && strstr(err, "noeviction"), "%s", err);
    cr_assert_null(strstr(err, "s3cret-pw"), "the password is in the message: %s", err);
    sd_redis_free(r);
    sd_redis_url_clear(&url);

    /* A Redis that is down is not taken for a good one. */
    snprintf(text, sizeof text, "redis://127.0.0.1:%d", test_closed_port());
    cr_assert_eq(sd_redis_url_parse(text, &url, err, sizeof err), 0);
    cr_assert_neq(sd_redis_require_noeviction(&url, err, sizeof err), 0);
    sd_redis_url_clear(&url);
    sd_redis_server_stop(s);
}

Test(noeviction, every_master_of_a_cluster_is_checked) {
    sd_redis_cluster_server *cl = test_redis_cluster_start(0);
    const char *seeds = sd_redis_cluster_server_url(cl);
    sd_redis_url url = {0};
    char err[256];
    cr_assert_eq(sd_redis_url_parse(seeds, &url, err, sizeof err), 0);
    cr_assert_eq(sd_redis_require_noeviction(&url, err, sizeof err), 0, "%s", err);

    /* Only the last master evicts: the check must still find it. */
    int port = sd_redis_server_port(sd_redis_cluster_server_node(cl, 2));
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "CONFIG SET maxmemory-policy volatile-ttl");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    redisFree(c);
    cr_assert_eq(sd_redis_require_noeviction(&url, err, sizeof err), SD_EREDIS);
    char want[32];
    snprintf(want, sizeof want, ":%d", port);
    cr_assert(strstr(err, "volatile-ttl") && strstr(err, want), "%s", err);
    sd_redis_url_clear(&url);
    sd_redis_cluster_server_stop(cl);
}
