/*
 * test_redis_cluster.c - Redis Cluster: the private cluster launcher (redis_cluster_server.h)
 * and the cluster-aware connections behind redis.h.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"
#include "support.h"

static int dir_exists(const char *dir) {
    struct stat st;
    return stat(dir, &st) == 0;
}

static int process_alive(pid_t pid) {
    /* A zombie still "exists" for kill(); look at its state instead. */
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' && close_paren[2] != 'Z';
}

/* Polls cond up to 20 s: cleanup after a crash happens in other processes, with no event this
 * process can wait on. The limit is generous; the condition usually holds within milliseconds. */
#define EVENTUALLY(cond)                                                                           \
    do {                                                                                           \
        uint64_t until_ = sd_now_ms() + 20000;                                                     \
        while (!(cond) && sd_now_ms() < until_) {                                                  \
            struct timespec ts_ = {0, 10000000};                                                   \
            nanosleep(&ts_, NULL);                                                                 \
        }                                                                                          \
    } while (0)

/* The text of a bulk-string reply to a command on one node (a plain connection); asserts. */
static char *node_text(sd_redis_server *node, const char *cmd) {
    sd_redis *r = test_redis_connect(sd_redis_server_url(node));
    int err = 0;
    redisReply *reply = sd_redis_command(r, &err, cmd);
    cr_assert_not_null(reply, "%s: %s", cmd, sd_strerror(err));
    cr_assert_eq(reply->type, REDIS_REPLY_STRING, "%s: type %d %s", cmd, reply->type,
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    char *text = sd_xstrdup(reply->str);
    freeReplyObject(reply);
    sd_redis_free(r);
    return text;
}

/* ---- The launcher ---------------------------------------------------------------------------- */

Test(redis_cluster_server, three_masters_are_up_and_ok_and_stop_leaves_nothing) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    cr_assert_eq(sd_redis_cluster_server_count(c), 3);
    pid_t pids[3];
    char dirs[3][128];
    for (int i = 0; i < 3; i++) {
        sd_redis_server *node = sd_redis_cluster_server_node(c, i);
        pids[i] = sd_redis_server_pid(node);
        snprintf(dirs[i], sizeof dirs[i], "%s", sd_redis_server_dir(node));
        char *info = node_text(node, "CLUSTER INFO");
        cr_assert(strstr(info, "cluster_state:ok\r") != NULL, "node %d: %s", i, info);
        cr_assert(strstr(info, "cluster_known_nodes:3\r") != NULL, "node %d: %s", i, info);
        cr_assert(strstr(info, "cluster_slots_assigned:16384\r") != NULL, "node %d: %s", i, info);
        free(info);
        char port[32];
        snprintf(port, sizeof port, "127.0.0.1:%d,", sd_redis_server_port(node));
        char url[256];
        snprintf(url, sizeof url, "%s,", sd_redis_cluster_server_url(c));
        cr_assert(strstr(url, port) != NULL, "%s not in %s", port, url);
    }
    cr_assert_eq(sd_redis_cluster_server_stop(c), 0);
    for (int i = 0; i < 3; i++) {
        cr_assert_not(process_alive(pids[i]), "node %d (pid %d) still running", i, (int)pids[i]);
        cr_assert_not(dir_exists(dirs[i]), "%s not removed", dirs[i]);
    }
}

Test(redis_cluster_server, replicas_follow_their_masters) {
    sd_redis_cluster_server *c = test_redis_cluster_start(1);
    cr_assert_eq(sd_redis_cluster_server_count(c), 6);
    for (int i = 3; i < 6; i++) {
        char *info = node_text(sd_redis_cluster_server_node(c, i), "INFO replication");
        cr_assert(strstr(info, "role:slave") != NULL, "node %d: %s", i, info);
        char port[32];
        snprintf(port, sizeof port, "master_port:%d\r",
                 sd_redis_server_port(sd_redis_cluster_server_node(c, i - 3)));
        cr_assert(strstr(info, port) != NULL, "node %d does not follow master %d: %s", i, i - 3,
                  info);
        free(info);
    }
    sd_redis_cluster_server_stop(c);
}

Test(redis_cluster_server, nothing_is_left_when_the_owner_is_killed) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t owner = fork();
    cr_assert_geq(owner, 0);
    if (owner == 0) {
        close(fds[0]);
        sd_redis_cluster_server *c = NULL;
        if (sd_redis_cluster_server_start(NULL, &c) != 0)
            _exit(1);
        for (int i = 0; i < 3; i++) {
            sd_redis_server *node = sd_redis_cluster_server_node(c, i);
            dprintf(fds[1], "%d %s\n", (int)sd_redis_server_pid(node), sd_redis_server_dir(node));
        }
        for (;;)
            pause();
    }
    close(fds[1]);
    int pids[3];
    char dirs[3][200];
    for (int i = 0; i < 3; i++) {
        char line[256];
        cr_assert_geq(test_read_line(fds[0], line, sizeof line, 60000), 0, "owner did not start");
        cr_assert_eq(sscanf(line, "%d %199s", &pids[i], dirs[i]), 2);
        cr_assert(process_alive(pids[i]));
    }
    close(fds[0]);

    test_kill_wait(owner, SIGKILL);

    for (int i = 0; i < 3; i++) {
        EVENTUALLY(!process_alive(pids[i]) && !dir_exists(dirs[i]));
        cr_assert_not(process_alive(pids[i]), "node %d outlived its owner", pids[i]);
        cr_assert_not(dir_exists(dirs[i]), "%s outlived its owner", dirs[i]);
    }
}
