/*
 * test_redis_server.c - the embedded Redis: it starts and answers, stops without leftovers,
 * survives a halt/restart with AOF (on a port no outgoing connection can take meanwhile), does
 * not take another server on its port for its own, and leaves nothing behind when its owner is
 * SIGKILLed.
 */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"
#include "support.h"

Test(redis_server, starts_answers_and_stops_without_leftovers) {
    sd_redis_server *s = test_redis_start(NULL);
    pid_t pid = sd_redis_server_pid(s);
    char dir[128];
    snprintf(dir, sizeof dir, "%s", sd_redis_server_dir(s));
    cr_assert_gt(sd_redis_server_port(s), 0);
    cr_assert(test_path_exists(dir));

    sd_redis *r = test_redis_connect(sd_redis_server_url(s));
    cr_assert_eq(test_redis_int(r, "INCRBY counter %d", 5), 5);
    sd_redis_free(r);

    cr_assert_eq(sd_redis_server_stop(s), 0);
    cr_assert_not(test_process_alive(pid), "redis-server %d still running", (int)pid);
    cr_assert_not(test_path_exists(dir), "%s not removed", dir);
}

Test(redis_server, two_servers_get_different_ports) {
    sd_redis_server *a = test_redis_start(NULL), *b = test_redis_start(NULL);
    cr_assert_neq(sd_redis_server_port(a), sd_redis_server_port(b));
    sd_redis_server_stop(a);
    sd_redis_server_stop(b);
}

Test(redis_server, aof_data_survives_halt_and_restart_on_the_same_port) {
    sd_redis_server *s = test_redis_start("always");
    int port = sd_redis_server_port(s);
    sd_redis *r = test_redis_connect(sd_redis_server_url(s));
    cr_assert_eq(test_redis_int(r, "RPUSH jobs a b c"), 3);
    sd_redis_free(r);

    cr_assert_eq(sd_redis_server_halt(s), 0);
    cr_assert_eq(sd_redis_server_pid(s), 0);
    cr_assert_eq(sd_redis_server_restart(s), 0);
    cr_assert_eq(sd_redis_server_port(s), port);

    r = test_redis_connect(sd_redis_server_url(s));
    cr_assert_eq(test_redis_int(r, "LLEN jobs"), 3, "the AOF was not replayed");
    sd_redis_free(r);
    sd_redis_server_stop(s);
}

/* A halted server's port must still be free when it restarts, so it is never one the kernel
 * could give an outgoing connection as its source port (sd_free_loopback_port). */
Test(redis_server, its_port_lies_below_the_ephemeral_range) {
    int low = 32768, high = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%d %d", &low, &high), 2);
    fclose(f);
    if (low < 2048)
        cr_skip_test("no room below the ephemeral range (%d-%d)", low, high);
    sd_redis_server *s = test_redis_start(NULL);
    cr_assert_lt(sd_redis_server_port(s), low, "port %d is in the ephemeral range %d-%d",
                 sd_redis_server_port(s), low, high);
    sd_redis_server_stop(s);
}

/* Another redis-server on port, not an embedded one (it dies with the test process). */
static pid_t start_other_server(int port) {
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    const char *bin = getenv("REDIS_SERVER_BIN");
    bin = bin && *bin ? bin : "redis-server";
    pid_t owner = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != owner)
            _exit(127);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execlp(bin, bin, "--port", port_text, "--bind", "127.0.0.1", "--save", "", "--appendonly",
               "no", "--dir", "/tmp", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Whether something on port answers PING. */
static int answers_ping(int port) {
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    int ok = 0;
    if (c && c->err == 0) {
        redisSetTimeout(c, tv);
        redisReply *reply = redisCommand(c, "PING");
        ok = reply && reply->type == REDIS_REPLY_STATUS;
        if (reply)
            freeReplyObject(reply);
    }
    if (c)
        redisFree(c);
    return ok;
}

/* A server answering on its port is not proof that it is ours: when another process took the
 * port while ours was halted, ours fails to bind and exits, and the other answers the PING. The
 * restart must say it failed, not hand out a server it does not own (a SIGSTOP sent to the pid
 * would then freeze nothing: a test once saw its "frozen" Redis answer). */
Test(redis_server, a_restart_whose_port_was_taken_fails) {
    sd_redis_server *s = test_redis_start(NULL);
    cr_assert_eq(sd_redis_server_halt(s), 0);
    pid_t other = start_other_server(sd_redis_server_port(s));
    TEST_EVENTUALLY(answers_ping(sd_redis_server_port(s)), 10000);
    cr_assert(answers_ping(sd_redis_server_port(s)), "the other server did not start");

    cr_assert_neq(sd_redis_server_restart(s), 0, "a restart claimed another process's server");
    cr_assert_eq(sd_redis_server_pid(s), 0);

    test_kill_wait(other, SIGTERM);
    cr_assert_eq(sd_redis_server_restart(s), 0, "the port is free again");
    sd_redis *r = test_redis_connect(sd_redis_server_url(s));
    cr_assert_eq(test_redis_int(r, "DBSIZE"), 0);
    sd_redis_free(r);
    sd_redis_server_stop(s);
}

/* In the owner: starts a redis-server and writes "PID DIR". */
static int start_server(int fd) {
    sd_redis_server *s = NULL;
    if (sd_redis_server_start(NULL, &s) != 0)
        return -1;
    dprintf(fd, "%d %s\n", (int)sd_redis_server_pid(s), sd_redis_server_dir(s));
    return 0;
}

Test(redis_server, nothing_is_left_when_the_owner_is_killed) {
    int lines;
    pid_t owner = test_fork_owner(start_server, &lines);
    char line[256];
    cr_assert_geq(test_read_line(lines, line, sizeof line, 10000), 0, "owner did not start");
    close(lines);
    int pid;
    char dir[200];
    cr_assert_eq(sscanf(line, "%d %199s", &pid, dir), 2);
    cr_assert(test_process_alive(pid));

    test_kill_wait(owner, SIGKILL);

    TEST_EVENTUALLY(!test_process_alive(pid) && !test_path_exists(dir), 10000);
    cr_assert_not(test_process_alive(pid), "redis-server %d outlived its owner", pid);
    cr_assert_not(test_path_exists(dir), "%s outlived its owner", dir);
}

Test(redis_server, signal_and_halt_reap_a_crashed_server) {
    sd_redis_server *s = test_redis_start(NULL);
    pid_t pid = sd_redis_server_pid(s);
    cr_assert_eq(sd_redis_server_signal(s, SIGKILL), 0);
    cr_assert_eq(sd_redis_server_halt(s), 0);
    cr_assert_not(test_process_alive(pid));
    cr_assert_eq(sd_redis_server_signal(s, SIGTERM), -ESRCH);
    cr_assert_eq(sd_redis_server_restart(s), 0);
    sd_redis *r = test_redis_connect(sd_redis_server_url(s));
    cr_assert_eq(test_redis_int(r, "DBSIZE"), 0);
    sd_redis_free(r);
    sd_redis_server_stop(s);
}

Test(redis_server, resolve_prefers_the_flag_then_redis_url) {
    sd_redis_url u;
    sd_redis_server *own = NULL;
    setenv("REDIS_URL", "redis://10.1.2.3:7001", 1);
    cr_assert_eq(sd_redis_resolve("redis://127.0.0.1:7002/1", &u, &own), 0);
    cr_assert_null(own);
    cr_assert_eq(u.port, 7002);
    sd_redis_url_clear(&u);

    cr_assert_eq(sd_redis_resolve(NULL, &u, &own), 0);
    cr_assert_null(own);
    cr_assert_str_eq(u.host, "10.1.2.3");
    sd_redis_url_clear(&u);

    setenv("REDIS_URL", "nonsense", 1);
    cr_assert_eq(sd_redis_resolve(NULL, &u, &own), SD_EPARSE);
}

Test(redis_server, resolve_starts_a_private_server_when_nothing_is_given) {
    unsetenv("REDIS_URL");
    sd_redis_url u;
    sd_redis_server *own = NULL;
    cr_assert_eq(sd_redis_resolve(NULL, &u, &own), 0);
    cr_assert_not_null(own);
    cr_assert_eq(u.port, sd_redis_server_port(own));
    sd_redis_url_clear(&u);
    sd_redis_server_stop(own);
}

/* A test run tags its servers (SD_TEST_RUN_ID) in the name of their directory, which is also
 * their working directory: `run.sh test` counts leftovers by that tag, so that servers started
 * elsewhere on the machine meanwhile are not taken for its own. A tag that is not a plain word
 * is ignored. */
static void expect_cwd_tag(const char *id, int tagged) {
    const char *run = getenv("SD_TEST_RUN_ID");
    char *saved = run ? sd_xstrdup(run) : NULL;
    setenv("SD_TEST_RUN_ID", id, 1);
    sd_redis_server *s = NULL;
    cr_assert_eq(sd_redis_server_start(NULL, &s), 0);
    char want[64], path[64], cwd[256];
    snprintf(want, sizeof want, "/sd-redis-%s-", id);
    snprintf(path, sizeof path, "/proc/%d/cwd", (int)sd_redis_server_pid(s));
    ssize_t n = readlink(path, cwd, sizeof cwd - 1);
    cr_assert_gt(n, 0);
    cwd[n] = '\0';
    cr_expect_str_eq(cwd, sd_redis_server_dir(s));
    cr_expect_eq(strstr(cwd, want) != NULL, tagged, "id %s, directory %s", id, cwd);
    sd_redis_server_stop(s);
    if (saved)
        setenv("SD_TEST_RUN_ID", saved, 1);
    else
        unsetenv("SD_TEST_RUN_ID");
    free(saved);
}

Test(redis_server, a_test_run_id_tags_the_working_directory) {
    expect_cwd_tag("t1234_ab", 1);
    expect_cwd_tag("../x", 0);
    expect_cwd_tag("a_tag_that_is_far_too_long", 0);
}
