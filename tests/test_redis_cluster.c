/*
 * test_redis_cluster.c - Redis Cluster: the private cluster launcher (redis_cluster_server.h)
 * and the cluster-aware connections behind redis.h.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
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
#include "redis_sub.h"
#include "support.h"

/* A command on one node over a bare hiredis connection (no routing, no probing); asserts that
 * it answered. Free the reply. */
static redisReply *raw(sd_redis_server *node, const char *fmt, ...) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", sd_redis_server_port(node), tv);
    cr_assert(c != NULL && c->err == 0, "cannot connect to node %d", sd_redis_server_port(node));
    redisSetTimeout(c, tv);
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    cr_assert_not_null(reply, "no reply to %s", fmt);
    return reply;
}

/* The text of reply, a bulk string (asserts, naming the command what), as a new string the
 * caller frees; frees reply. */
static char *reply_text(redisReply *reply, const char *what) {
    cr_assert_eq(reply->type, REDIS_REPLY_STRING, "%s: type %d %s", what, reply->type,
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    char *text = sd_xstrdup(reply->str);
    freeReplyObject(reply);
    return text;
}

/* The text of a bulk-string reply to a command on one node (a bare connection: a routed one
 * would send a keyless command to any node); asserts. */
static char *node_text(sd_redis_server *node, const char *cmd) {
    return reply_text(raw(node, cmd), cmd);
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
        cr_assert_not(test_process_alive(pids[i]), "node %d (pid %d) still running", i,
                      (int)pids[i]);
        cr_assert_not(test_path_exists(dirs[i]), "%s not removed", dirs[i]);
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

/* In the owner: starts a cluster and writes "PID DIR" for each master. */
static int start_cluster(int fd) {
    sd_redis_cluster_server *c = NULL;
    if (sd_redis_cluster_server_start(NULL, &c) != 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        sd_redis_server *node = sd_redis_cluster_server_node(c, i);
        dprintf(fd, "%d %s\n", (int)sd_redis_server_pid(node), sd_redis_server_dir(node));
    }
    return 0;
}

Test(redis_cluster_server, nothing_is_left_when_the_owner_is_killed) {
    int lines;
    pid_t owner = test_fork_owner(start_cluster, &lines);
    int pids[3];
    char dirs[3][200];
    for (int i = 0; i < 3; i++) {
        char line[256];
        cr_assert_geq(test_read_line(lines, line, sizeof line, 60000), 0, "owner did not start");
        cr_assert_eq(sscanf(line, "%d %199s", &pids[i], dirs[i]), 2);
        cr_assert(test_process_alive(pids[i]));
    }
    close(lines);

    test_kill_wait(owner, SIGKILL);

    for (int i = 0; i < 3; i++) {
        TEST_EVENTUALLY(!test_process_alive(pids[i]) && !test_path_exists(dirs[i]), 20000);
        cr_assert_not(test_process_alive(pids[i]), "node %d outlived its owner", pids[i]);
        cr_assert_not(test_path_exists(dirs[i]), "%s outlived its owner", dirs[i]);
    }
}

/* ---- Helpers for the routing tests ------------------------------------------------------------
 */

static void raw_ok(sd_redis_server *node, const char *fmt, const char *a, const char *b) {
    redisReply *reply = raw(node, fmt, a, b);
    cr_assert_neq(reply->type, REDIS_REPLY_ERROR, "%s: %s", fmt, reply->str);
    freeReplyObject(reply);
}

static char *node_id(sd_redis_server *node) {
    redisReply *reply = raw(node, "CLUSTER MYID");
    char *id = sd_xstrdup(reply->str);
    freeReplyObject(reply);
    return id;
}

/* Master m of the test cluster holds the m-th third of the slots (redis_cluster_server.c). */
static int master_of_slot(int slot) {
    return slot < 16384 / 3 ? 0 : slot < 2 * 16384 / 3 ? 1 : 2;
}

/* Writes into buf a key "<prefix><n>" whose slot is on master m. */
static void key_on(int m, const char *prefix, char *buf, size_t len) {
    for (int n = 0;; n++) {
        snprintf(buf, len, "%s%d", prefix, n);
        if (master_of_slot(sd_redis_key_slot(buf, strlen(buf))) == m)
            return;
    }
}

/* A sync connection to the cluster through the given URL (one seed or several). */
static sd_redis *cluster_connect(const char *url, sd_script *const *scripts, size_t nscripts) {
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = 3000;
    opts.scripts = scripts;
    opts.nscripts = nscripts;
    return test_redis_connect_opts(url, &opts);
}

static char *get_text(sd_redis *r, const char *key) {
    int err = 0;
    redisReply *reply = sd_redis_command(r, &err, "GET %s", key);
    cr_assert_not_null(reply, "GET %s: %s (%s)", key, sd_strerror(err), sd_redis_errstr(r));
    char what[160];
    snprintf(what, sizeof what, "GET %s", key);
    return reply_text(reply, what);
}

/* ---- Seeds and detection --------------------------------------------------------------------- */

Test(redis_cluster, a_url_may_list_several_seeds) {
    sd_redis_url u;
    char err[160], shown[256];
    cr_assert_eq(sd_redis_url_parse("redis://:pw@127.0.0.1:7000,127.0.0.1:7001,[::1]:7002/0", &u,
                                    err, sizeof err),
                 0, "%s", err);
    cr_assert_str_eq(u.host, "127.0.0.1");
    cr_assert_eq(u.port, 7000);
    cr_assert_str_eq(u.seeds, "127.0.0.1:7001,[::1]:7002");
    cr_assert_str_eq(u.password, "pw");
    sd_redis_url_format(&u, shown, sizeof shown);
    cr_assert(strstr(shown, "7001,[::1]:7002") != NULL && strstr(shown, "pw") == NULL, "%s", shown);
    sd_redis_url copy;
    sd_redis_url_copy(&copy, &u);
    cr_assert_str_eq(copy.seeds, u.seeds);
    sd_redis_url_clear(&copy);
    sd_redis_url_clear(&u);

    cr_assert_eq(sd_redis_url_parse("redis://127.0.0.1:7000", &u, err, sizeof err), 0);
    cr_assert_null(u.seeds);
    sd_redis_url_clear(&u);
    cr_assert_eq(sd_redis_url_parse("redis://127.0.0.1:7000,", &u, err, sizeof err), SD_EPARSE);
    cr_assert_eq(sd_redis_url_parse("redis://a:1,b:99999", &u, err, sizeof err), SD_EPARSE);
    cr_assert(strstr(err, "port") != NULL, "%s", err);
}

/* A single server is not taken for a cluster: keys of different slots go together. */
Test(redis_cluster, a_single_server_is_not_cluster_mode) {
    sd_redis_server *s = test_redis_start(NULL);
    sd_redis *r = test_redis_connect(sd_redis_server_url(s));
    int err = 0;
    redisReply *reply = sd_redis_command(r, &err, "MSET alpha-key 1 beta-key 2");
    cr_assert_not_null(reply);
    cr_assert_eq(reply->type, REDIS_REPLY_STATUS, "%s", reply->str);
    freeReplyObject(reply);
    sd_redis_free(r);
    sd_redis_server_stop(s);
}

/* ---- Synchronous routing ----------------------------------------------------------------------
 */

Test(redis_cluster, sync_commands_reach_all_three_masters_from_one_seed) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    /* One node's URL: cluster mode is detected, the other masters found from CLUSTER SLOTS. */
    sd_redis *r = cluster_connect(sd_redis_server_url(sd_redis_cluster_server_node(c, 1)), NULL, 0);
    for (int m = 0; m < 3; m++) {
        char key[32];
        key_on(m, "sync", key, sizeof key);
        cr_assert_eq(test_redis_int(r, "INCRBY %s %d", key, 10 + m), 10 + m);
        redisReply *there = raw(sd_redis_cluster_server_node(c, m), "GET %s", key);
        cr_assert_eq(there->type, REDIS_REPLY_STRING, "%s is not on master %d: %s", key, m,
                     there->type == REDIS_REPLY_ERROR ? there->str : "");
        freeReplyObject(there);
    }
    /* Pipelined commands come back in order across nodes. */
    char keys[3][32];
    for (int m = 0; m < 3; m++) {
        key_on(m, "sync", keys[m], sizeof keys[m]);
        cr_assert_eq(sd_redis_append(r, "INCRBY %s 1", keys[m]), 0);
    }
    for (int m = 0; m < 3; m++) {
        int err = 0;
        redisReply *reply = sd_redis_get_reply(r, &err);
        cr_assert_not_null(reply, "%s", sd_strerror(err));
        cr_assert_eq(reply->integer, 11 + m);
        freeReplyObject(reply);
    }
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

Test(redis_cluster, crossslot_is_refused_naming_the_keys) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    cr_assert_neq(sd_redis_key_slot("alpha-key", 9), sd_redis_key_slot("beta-key", 8));
    int err = 0;
    redisReply *reply = sd_redis_command(r, &err, "MGET alpha-key beta-key");
    cr_assert_not_null(reply);
    cr_assert_eq(reply->type, REDIS_REPLY_ERROR);
    cr_assert(strstr(reply->str, "CROSSSLOT") && strstr(reply->str, "'alpha-key'") &&
                  strstr(reply->str, "'beta-key'"),
              "%s", reply->str);
    freeReplyObject(reply);
    /* With one hash tag they share a slot and go together. */
    reply = sd_redis_command(r, &err, "MSET {t}alpha 1 {t}beta 2");
    cr_assert_not_null(reply);
    cr_assert_eq(reply->type, REDIS_REPLY_STATUS, "%s", reply->str);
    freeReplyObject(reply);
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

/* The target claims the slot again, with a configuration epoch above every other node's when
 * its own is not already the greatest. Once in a CI run (sanitizer build, two suites at once)
 * the target did not answer for the slot within 5 s of the SETSLOTs; what it answered was not
 * recorded, so the cause is not known. A slot's owner is settled by the greater epoch, and the
 * masters here start without epochs (ADDSLOTSRANGE, then MEET): a claim that lost to an older
 * one is the likely case, and a second claim with a greater epoch settles it. */
static void reclaim(sd_redis_server *dst, const char *slot, const char *dst_id) {
    freeReplyObject(raw(dst, "CLUSTER BUMPEPOCH"));
    raw_ok(dst, "CLUSTER SETSLOT %s NODE %s", slot, dst_id);
}

/* Moves slot `slot` (holding `key`) from master `from` to master `to`; with finish == 0 it stops
 * in the middle: the slot MIGRATING / IMPORTING, and only `key` moved. */
static void migrate(sd_redis_cluster_server *c, int slot, const char *key, int from, int to,
                    int finish) {
    sd_redis_server *src = sd_redis_cluster_server_node(c, from);
    sd_redis_server *dst = sd_redis_cluster_server_node(c, to);
    char *src_id = node_id(src), *dst_id = node_id(dst);
    char s[16];
    snprintf(s, sizeof s, "%d", slot);
    raw_ok(dst, "CLUSTER SETSLOT %s IMPORTING %s", s, src_id);
    raw_ok(src, "CLUSTER SETSLOT %s MIGRATING %s", s, dst_id);
    char port[16];
    snprintf(port, sizeof port, "%d", sd_redis_server_port(dst));
    redisReply *reply = raw(src, "MIGRATE 127.0.0.1 %s %s 0 5000", port, key);
    cr_assert_eq(reply->type, REDIS_REPLY_STATUS, "MIGRATE: %s", reply->str);
    freeReplyObject(reply);
    if (finish) {
        /* The target first, then the source, then the third master (the order Redis's manual
         * gives: a source that let go first would send the key back and forth with a target
         * still importing), and then until each of them names the target for the key: a MOVED
         * from the two others, an answer from the target. */
        raw_ok(dst, "CLUSTER SETSLOT %s NODE %s", s, dst_id);
        raw_ok(src, "CLUSTER SETSLOT %s NODE %s", s, dst_id);
        int other = 3 - from - to;
        raw_ok(sd_redis_cluster_server_node(c, other), "CLUSTER SETSLOT %s NODE %s", s, dst_id);
        char moved[64];
        snprintf(moved, sizeof moved, "MOVED %d 127.0.0.1:%s", slot, port);
        for (int i = 0; i < 3; i++) {
            int agreed = 0;
            char last[128] = "";
            for (int tries = 1; tries <= 1000 && !agreed; tries++) {
                redisReply *r = raw(sd_redis_cluster_server_node(c, i), "EXISTS %s", key);
                agreed = i == to ? r->type == REDIS_REPLY_INTEGER
                                 : r->type == REDIS_REPLY_ERROR && strcmp(r->str, moved) == 0;
                snprintf(last, sizeof last, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "-");
                freeReplyObject(r);
                if (!agreed && tries % 100 == 0)
                    reclaim(dst, s, dst_id);
                if (!agreed)
                    usleep(10000);
            }
            cr_assert(agreed, "master %d does not name master %d for slot %d (last: %s)", i, to,
                      slot, last);
        }
    }
    free(src_id);
    free(dst_id);
}

Test(redis_cluster, moved_is_followed_without_an_error) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    char key[32];
    key_on(0, "moving", key, sizeof key);
    cr_assert_eq(test_redis_int(r, "INCRBY %s 5", key), 5);
    migrate(c, sd_redis_key_slot(key, strlen(key)), key, 0, 1, 1);
    /* The connection's map still names master 0: the MOVED reply must not reach us. */
    cr_assert_eq(test_redis_int(r, "INCRBY %s 1", key), 6);
    cr_assert_eq(test_redis_int(r, "INCRBY %s 1", key), 7);
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

Test(redis_cluster, ask_during_a_migration_is_answered) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    const char *moved = "{ask}moved", *stays = "{ask}stays";
    int slot = sd_redis_key_slot(moved, strlen(moved));
    cr_assert_eq(slot, sd_redis_key_slot(stays, strlen(stays)));
    int from = master_of_slot(slot), to = (from + 1) % 3;
    test_redis_int(r, "INCRBY %s 3", moved);
    test_redis_int(r, "INCRBY %s 4", stays);
    migrate(c, slot, moved, from, to, 0);
    /* The source answers ASK for the moved key, and still serves the one it holds. */
    char *v = get_text(r, moved);
    cr_assert_str_eq(v, "3");
    free(v);
    v = get_text(r, stays);
    cr_assert_str_eq(v, "4");
    free(v);
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

static sd_script counter_script = {
    .name = "test/cluster-counter",
    .body = "return redis.call('INCRBY', KEYS[1], ARGV[1])",
};

Test(redis_cluster, a_script_works_on_first_call_on_every_node) {
    counter_script.len = strlen(counter_script.body);
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_script *scripts[1] = {&counter_script};
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), scripts, 1);
    for (int m = 0; m < 3; m++) {
        char key[32];
        key_on(m, "script", key, sizeof key);
        const char *argv[2] = {key, "7"};
        int err = 0;
        redisReply *reply = sd_redis_script(r, &err, 0, &counter_script, 1, 2, argv, NULL);
        cr_assert_not_null(reply, "%s", sd_strerror(err));
        cr_assert_eq(reply->type, REDIS_REPLY_INTEGER, "%s", reply->str);
        cr_assert_eq(reply->integer, 7);
        freeReplyObject(reply);
    }
    /* Loaded in each node's handshake: no node had to fall back to EVAL after NOSCRIPT. */
    for (int m = 0; m < 3; m++) {
        redisReply *stats = raw(sd_redis_cluster_server_node(c, m), "INFO commandstats");
        cr_assert(strstr(stats->str, "cmdstat_evalsha:calls=1,") != NULL, "master %d: %s", m,
                  stats->str);
        cr_assert(strstr(stats->str, "cmdstat_eval:") == NULL, "master %d: %s", m, stats->str);
        freeReplyObject(stats);
    }
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

Test(redis_cluster, a_killed_master_fails_its_commands_and_the_others_keep_working) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    char keys[3][32];
    for (int m = 0; m < 3; m++) {
        key_on(m, "kill", keys[m], sizeof keys[m]);
        cr_assert_eq(test_redis_int(r, "INCRBY %s 1", keys[m]), 1);
    }
    sd_redis_server *victim = sd_redis_cluster_server_node(c, 2);
    cr_assert_eq(sd_redis_server_signal(victim, SIGKILL), 0);
    sd_redis_server_halt(victim);
    int err = 0;
    redisReply *reply = sd_redis_command(r, &err, "INCRBY %s 1", keys[2]);
    cr_assert_null(reply, "a dead master answered");
    cr_assert(err == SD_EDISCONNECTED || err == SD_ETIMEDOUT, "%s", sd_strerror(err));
    for (int m = 0; m < 2; m++)
        cr_assert_eq(test_redis_int(r, "INCRBY %s 1", keys[m]), 2);
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

/* ---- Asynchronous routing ---------------------------------------------------------------------
 */

struct answers {
    int calls, ok;
    long long last;
    int status;
    char error[300];
};

static void count_cb(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    (void)r;
    struct answers *a = privdata;
    a->calls++;
    a->status = status;
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        a->ok++;
        a->last = reply->integer;
    } else if (reply && reply->type == REDIS_REPLY_STRING) {
        a->ok++;
        a->last = atoll(reply->str);
    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        snprintf(a->error, sizeof a->error, "%s", reply->str);
    }
}

/* Runs the loop until *calls reaches n; the 20 s guard only stops a broken test. */
static void run_until(uv_loop_t *loop, const int *calls, int n) {
    uint64_t until = sd_now_ms() + 20000;
    while (*calls < n && sd_now_ms() < until)
        uv_run(loop, UV_RUN_ONCE);
    cr_assert_eq(*calls, n, "%d of %d callbacks ran", *calls, n);
}

static sd_aredis *acluster_connect(uv_loop_t *loop, const char *url, sd_script *const *scripts,
                                   size_t nscripts) {
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(url, &u, err, sizeof err), 0, "%s", err);
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = 3000;
    opts.scripts = scripts;
    opts.nscripts = nscripts;
    sd_aredis *r = NULL;
    cr_assert_eq(sd_aredis_new(loop, &u, &opts, &r), 0);
    sd_redis_url_clear(&u);
    cr_assert_eq(sd_aredis_wait_connected(r, 10000), 0, "not connected to %s", url);
    return r;
}

static void aclose(uv_loop_t *loop, sd_aredis *r) {
    sd_aredis_free(r);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
}

Test(redis_cluster, async_commands_reach_all_three_masters_from_one_seed) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r =
        acluster_connect(&loop, sd_redis_server_url(sd_redis_cluster_server_node(c, 2)), NULL, 0);
    struct answers a = {0};
    for (int round = 0; round < 10; round++)
        for (int m = 0; m < 3; m++) {
            char key[32];
            key_on(m, "async", key, sizeof key);
            cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "INCRBY %s 1", key), 0);
        }
    run_until(&loop, &a.calls, 30);
    cr_assert_eq(a.ok, 30, "%s", a.error);
    for (int m = 0; m < 3; m++) {
        char key[32];
        key_on(m, "async", key, sizeof key);
        redisReply *there = raw(sd_redis_cluster_server_node(c, m), "GET %s", key);
        cr_assert_eq(there->type, REDIS_REPLY_STRING);
        cr_assert_str_eq(there->str, "10");
        freeReplyObject(there);
    }
    /* Keys of different slots together are refused at the call, the callback never runs. */
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "MGET alpha-key beta-key"), SD_EPARSE);
    aclose(&loop, r);
    cr_assert_eq(a.calls, 30);
    sd_redis_cluster_server_stop(c);
}

Test(redis_cluster, async_moved_and_ask_are_followed) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = acluster_connect(&loop, sd_redis_cluster_server_url(c), NULL, 0);
    struct answers a = {0};
    char key[32];
    key_on(0, "amoving", key, sizeof key);
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "INCRBY %s 5", key), 0);
    run_until(&loop, &a.calls, 1);
    migrate(c, sd_redis_key_slot(key, strlen(key)), key, 0, 1, 1);
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "INCRBY %s 1", key), 0);
    run_until(&loop, &a.calls, 2);
    cr_assert_eq(a.ok, 2, "MOVED reached the caller: %s", a.error);
    cr_assert_eq(a.last, 6);

    const char *moved = "{aask}moved", *stays = "{aask}stays";
    int slot = sd_redis_key_slot(moved, strlen(moved));
    int from = master_of_slot(slot), to = (from + 1) % 3;
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "INCRBY %s 3", moved), 0);
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "INCRBY %s 4", stays), 0);
    run_until(&loop, &a.calls, 4);
    migrate(c, slot, moved, from, to, 0);
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "GET %s", moved), 0);
    run_until(&loop, &a.calls, 5);
    cr_assert_eq(a.ok, 5, "ASK reached the caller: %s", a.error);
    cr_assert_eq(a.last, 3);
    aclose(&loop, r);
    sd_redis_cluster_server_stop(c);
}

Test(redis_cluster, async_script_works_on_first_call_on_every_node) {
    counter_script.len = strlen(counter_script.body);
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_script *scripts[1] = {&counter_script};
    sd_aredis *r = acluster_connect(&loop, sd_redis_cluster_server_url(c), scripts, 1);
    struct answers a = {0};
    for (int m = 0; m < 3; m++) {
        char key[32];
        key_on(m, "ascript", key, sizeof key);
        const char *argv[2] = {key, "7"};
        cr_assert_eq(sd_aredis_script(r, &counter_script, count_cb, &a, 0, 1, 2, argv, NULL), 0);
    }
    run_until(&loop, &a.calls, 3);
    cr_assert_eq(a.ok, 3, "%s", a.error);
    for (int m = 0; m < 3; m++) {
        redisReply *stats = raw(sd_redis_cluster_server_node(c, m), "INFO commandstats");
        cr_assert(strstr(stats->str, "cmdstat_evalsha:calls=1,") != NULL, "master %d: %s", m,
                  stats->str);
        cr_assert(strstr(stats->str, "cmdstat_eval:") == NULL, "master %d: %s", m, stats->str);
        freeReplyObject(stats);
    }
    aclose(&loop, r);
    sd_redis_cluster_server_stop(c);
}

static void on_tick(uv_timer_t *t) {
    (void)t;
}

Test(redis_cluster, async_killed_master_fails_its_commands_and_the_others_keep_working) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = acluster_connect(&loop, sd_redis_cluster_server_url(c), NULL, 0);
    sd_redis_server *victim = sd_redis_cluster_server_node(c, 2);
    cr_assert_eq(sd_redis_server_signal(victim, SIGKILL), 0);
    sd_redis_server_halt(victim);
    char keys[3][32];
    for (int m = 0; m < 3; m++)
        key_on(m, "akill", keys[m], sizeof keys[m]);
    /* The dead master's command is refused at the call once its connection has noticed, or
     * answered with an error; either way no reply. */
    struct answers dead = {0};
    int rc = sd_aredis_command(r, count_cb, &dead, 0, "INCRBY %s 1", keys[2]);
    if (rc == 0) {
        run_until(&loop, &dead.calls, 1);
        rc = dead.status;
    }
    cr_assert(rc == SD_EDISCONNECTED || rc == SD_ETIMEDOUT, "%s", sd_strerror(rc));
    cr_assert_eq(dead.ok, 0);
    struct answers live = {0};
    for (int m = 0; m < 2; m++)
        cr_assert_eq(sd_aredis_command(r, count_cb, &live, 0, "INCRBY %s 1", keys[m]), 0);
    run_until(&loop, &live.calls, 2);
    cr_assert_eq(live.ok, 2, "%s", live.error);
    /* The connection's up state follows its masters' (it is kept, not worked out per call). */
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10); /* so that UV_RUN_ONCE returns */
    uint64_t until = sd_now_ms() + 20000;
    while (sd_aredis_is_connected(r) && sd_now_ms() < until)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    cr_assert_not(sd_aredis_is_connected(r), "up although a master is dead");
    aclose(&loop, r);
    sd_redis_cluster_server_stop(c);
}

/* ---- Pub/sub ------------------------------------------------------------------------------------
 */

struct received {
    int up, messages;
    char payload[64];
};

static void sub_state_cb(sd_redis_sub *sub, int connected, void *udata) {
    (void)sub;
    ((struct received *)udata)->up += connected;
}

static void sub_message_cb(sd_redis_sub *sub, const char *channel, const char *pattern,
                           const char *payload, size_t len, void *udata) {
    (void)sub;
    (void)channel;
    (void)pattern;
    struct received *rcv = udata;
    rcv->messages++;
    snprintf(rcv->payload, sizeof rcv->payload, "%.*s", (int)len, payload);
}

/* SUBSCRIBE on the first seed receives a PUBLISH made on another master (Redis 7 broadcasts
 * PUBLISH over the cluster bus). */
Test(redis_cluster, the_subscriber_receives_a_publish_made_on_another_node) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(sd_redis_cluster_server_url(c), &u, err, sizeof err), 0);
    sd_redis_sub *sub = NULL;
    cr_assert_eq(sd_redis_sub_new(&loop, &u, NULL, &sub), 0);
    sd_redis_url_clear(&u);
    struct received rcv = {0};
    sd_redis_sub_set_callbacks(sub, sub_message_cb, sub_state_cb, &rcv);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "news"), 0);
    run_until(&loop, &rcv.up, 1);
    redisReply *reply = raw(sd_redis_cluster_server_node(c, 2), "PUBLISH news hello-from-2");
    freeReplyObject(reply);
    run_until(&loop, &rcv.messages, 1);
    cr_assert_str_eq(rcv.payload, "hello-from-2");
    sd_redis_sub_free(sub);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    sd_redis_cluster_server_stop(c);
}

/* A multi-key command during a migration, with its keys split between the two nodes, is
 * answered TRYAGAIN: it is sent again until the deadline, then the error is returned. */
Test(redis_cluster, tryagain_is_retried_until_the_deadline) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    const char *moved = "{try}moved", *stays = "{try}stays";
    int slot = sd_redis_key_slot(moved, strlen(moved));
    int from = master_of_slot(slot), to = (from + 1) % 3;
    test_redis_int(r, "INCRBY %s 1", moved);
    test_redis_int(r, "INCRBY %s 2", stays);
    migrate(c, slot, moved, from, to, 0);
    sd_redis_set_timeout(r, 300);
    int err = 0;
    redisReply *reply = sd_redis_command(r, &err, "MGET %s %s", moved, stays);
    cr_assert_not_null(reply, "%s", sd_strerror(err));
    cr_assert_eq(reply->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(reply->str, "TRYAGAIN", 8) == 0, "%s", reply->str);
    freeReplyObject(reply);
    /* Sent more than once (every 10 ms for 300 ms: the count is not a speed test, only > 1). */
    redisReply *stats = raw(sd_redis_cluster_server_node(c, from), "INFO commandstats");
    const char *mget = strstr(stats->str, "cmdstat_mget:");
    cr_assert_not_null(mget, "%s", stats->str);
    /* TRYAGAIN answers count as rejected calls. */
    const char *rejected = strstr(mget, "rejected_calls=");
    cr_assert_not_null(rejected);
    cr_assert_gt(atoi(rejected + strlen("rejected_calls=")), 1, "%s", stats->str);
    freeReplyObject(stats);
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

/* Both keys of a script, one already migrated and one not there yet: during the migration the
 * source answers ASK (it holds neither key) and the importing node, asked with ASKING, answers
 * TRYAGAIN (it holds one); once the migration is finished, the script runs. */
#define PAIR_BODY                                                                                  \
    "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])"
static sd_script pair_script = {
    .name = "test/cluster-pair",
    .body = PAIR_BODY,
    .len = sizeof PAIR_BODY - 1,
};

/* The number of calls of cmd the node refused (TRYAGAIN, ASK, ...), from INFO commandstats. */
static int rejected_calls(sd_redis_server *node, const char *cmd) {
    redisReply *stats = raw(node, "INFO commandstats");
    char name[64];
    snprintf(name, sizeof name, "cmdstat_%s:", cmd);
    const char *line = strstr(stats->str, name);
    const char *rejected = line ? strstr(line, "rejected_calls=") : NULL;
    int n = rejected ? atoi(rejected + strlen("rejected_calls=")) : 0;
    freeReplyObject(stats);
    return n;
}

/* A migration of slot from master `from` to master `to`, left unfinished by migrate(). */
struct slow_migration {
    sd_redis_cluster_server *c;
    int slot, from, to, finished;
    const int *calls; /* the script's callbacks: stop watching once it has answered */
};

/* Finishes the migration once the importing node has refused the script 20 times: more than
 * the hop limit (16 MOVED / ASK) would let through if retries counted as hops or went back to
 * the source. Waits for the count, not for time, so a slow machine changes nothing. */
static void finish_when_refused(uv_timer_t *t) {
    struct slow_migration *m = t->data;
    if (*m->calls > 0 || m->finished) {
        uv_timer_stop(t);
        return;
    }
    if (rejected_calls(sd_redis_cluster_server_node(m->c, m->to), "evalsha") < 20)
        return;
    char *dst_id = node_id(sd_redis_cluster_server_node(m->c, m->to));
    char s[16];
    snprintf(s, sizeof s, "%d", m->slot);
    /* The target first, then the source, then the third master, as in migrate(). In the order
     * 0, 1, 2 a source that let go before the target took the slot answered MOVED to the target,
     * which still answered MOVED back: once in a loaded run the script used up its 16 hops
     * between two of these commands, and the MOVED reached the caller. */
    int order[3] = {m->to, m->from, 3 - m->from - m->to};
    for (int i = 0; i < 3; i++)
        raw_ok(sd_redis_cluster_server_node(m->c, order[i]), "CLUSTER SETSLOT %s NODE %s", s,
               dst_id);
    free(dst_id);
    m->finished = 1;
}

Test(redis_cluster, async_tryagain_after_ask_waits_for_a_slow_migration) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_script *scripts[] = {&pair_script};
    sd_aredis *r = acluster_connect(&loop, sd_redis_cluster_server_url(c), scripts, 1);
    const char *keys[2] = {"{mig}a", "{mig}b"};
    struct slow_migration m = {.c = c, .slot = sd_redis_key_slot(keys[0], strlen(keys[0]))};
    m.from = master_of_slot(m.slot);
    m.to = (m.from + 1) % 3;
    struct answers a = {0};
    m.calls = &a.calls;
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "SET %s 10", keys[0]), 0);
    run_until(&loop, &a.calls, 1);
    migrate(c, m.slot, keys[0], m.from, m.to, 0);
    a.calls = 0;
    const char *argv[3] = {keys[0], keys[1], "1"};
    cr_assert_eq(sd_aredis_script(r, &pair_script, count_cb, &a, 20000, 2, 3, argv, NULL), 0);
    uv_timer_t watch;
    uv_timer_init(&loop, &watch);
    watch.data = &m;
    uv_timer_start(&watch, finish_when_refused, 5, 5);
    run_until(&loop, &a.calls, 1);
    uv_close((uv_handle_t *)&watch, NULL);
    cr_assert_eq(a.ok, 1, "the migration's redirection reached the caller: %s (status %s)", a.error,
                 sd_strerror(a.status));
    cr_assert(m.finished);
    cr_assert_eq(a.last, 11 + 1);
    aclose(&loop, r);
    sd_redis_cluster_server_stop(c);
}

/* finish_when_refused for a child process, which may not use Criterion's asserts: polls the
 * importing node's count every 5 ms (another process's counter: there is no event to wait
 * for), then moves the slot for good. Returns the child's exit status, 0 when finished. */
static int finish_after_refusals(const int ports[3], int from, int to, int slot,
                                 const char *dst_id) {
    struct timeval tv = {5, 0};
    uint64_t until = sd_now_ms() + 20000;
    while (sd_now_ms() < until) {
        redisContext *ctx = redisConnectWithTimeout("127.0.0.1", ports[to], tv);
        redisReply *stats = ctx && !ctx->err ? redisCommand(ctx, "INFO commandstats") : NULL;
        const char *line = stats ? strstr(stats->str, "cmdstat_evalsha:") : NULL;
        const char *rejected = line ? strstr(line, "rejected_calls=") : NULL;
        int n = rejected ? atoi(rejected + strlen("rejected_calls=")) : 0;
        freeReplyObject(stats);
        redisFree(ctx);
        if (n >= 20) {
            int order[3] = {to, from, 3 - from - to}; /* as in finish_when_refused */
            for (int i = 0; i < 3; i++) {
                redisContext *node = redisConnectWithTimeout("127.0.0.1", ports[order[i]], tv);
                redisReply *ok =
                    node && !node->err
                        ? redisCommand(node, "CLUSTER SETSLOT %d NODE %s", slot, dst_id)
                        : NULL;
                int failed = ok == NULL || ok->type == REDIS_REPLY_ERROR;
                freeReplyObject(ok);
                redisFree(node);
                if (failed)
                    return 2;
            }
            return 0;
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

/* The same through the synchronous router: a child process finishes the migration. */
Test(redis_cluster, tryagain_after_ask_waits_for_a_slow_migration) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_script *scripts[] = {&pair_script};
    sd_redis *r = cluster_connect(sd_redis_cluster_server_url(c), scripts, 1);
    const char *keys[2] = {"{smig}a", "{smig}b"};
    int slot = sd_redis_key_slot(keys[0], strlen(keys[0]));
    int from = master_of_slot(slot), to = (from + 1) % 3;
    test_redis_int(r, "INCRBY %s 10", keys[0]);
    migrate(c, slot, keys[0], from, to, 0);
    int ports[3];
    for (int i = 0; i < 3; i++)
        ports[i] = sd_redis_server_port(sd_redis_cluster_server_node(c, i));
    char *dst_id = node_id(sd_redis_cluster_server_node(c, to));
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0)
        _exit(finish_after_refusals(ports, from, to, slot, dst_id));
    free(dst_id);
    sd_redis_set_timeout(r, 20000);
    int err = 0;
    const char *argv[3] = {keys[0], keys[1], "1"};
    redisReply *reply = sd_redis_script(r, &err, 20000, &pair_script, 2, 3, argv, NULL);
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert_not_null(reply, "%s", sd_strerror(err));
    cr_assert_eq(reply->type, REDIS_REPLY_INTEGER, "a redirection reached the caller: %d %s",
                 reply->type, reply->str);
    cr_assert_eq(reply->integer, 11 + 1);
    freeReplyObject(reply);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    sd_redis_free(r);
    sd_redis_cluster_server_stop(c);
}

/* ---- Async detection in the handshake -------------------------------------------------------- */

struct states {
    int ups, downs;
};

static void state_cb(sd_aredis *r, int connected, void *privdata) {
    (void)r;
    struct states *s = privdata;
    if (connected)
        s->ups++;
    else
        s->downs++;
}

/* An async connection to url with a quick reconnect; not waited for. */
static sd_aredis *anew(uv_loop_t *loop, const char *url, int connect_timeout_ms) {
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(url, &u, err, sizeof err), 0, "%s", err);
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = 3000;
    opts.connect_timeout_ms = connect_timeout_ms;
    opts.reconnect_min_ms = 20;
    opts.reconnect_max_ms = 40;
    sd_aredis *r = NULL;
    cr_assert_eq(sd_aredis_new(loop, &u, &opts, &r), 0);
    sd_redis_url_clear(&u);
    return r;
}

static void on_wake(uv_timer_t *t) {
    (void)t;
}

/* Runs the loop until r accepts INCRBY on key (the command is then in flight, answered into a),
 * 20 s at most. */
static void wait_accepted(uv_loop_t *loop, sd_aredis *r, const char *key, struct answers *a) {
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_wake, 10, 10); /* so that UV_RUN_ONCE returns */
    uint64_t until = sd_now_ms() + 20000;
    int rc;
    while ((rc = sd_aredis_command(r, count_cb, a, 0, "INCRBY %s 1", key)) != 0 &&
           sd_now_ms() < until)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    cr_assert_eq(rc, 0, "%s never accepted a command: %s", key, sd_strerror(rc));
}

/* sd_aredis_new asks nothing itself: against a "server" that accepts connections and never
 * answers, it returns at once although the connect timeout is 30 s (the old detection asked
 * INFO cluster synchronously, within that timeout). */
Test(redis_cluster, async_detection_never_blocks_the_call) {
    int port;
    int fd = test_listen_loopback(&port);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    uv_loop_t loop;
    uv_loop_init(&loop);
    uint64_t t0 = sd_now_ms();
    sd_aredis *r = anew(&loop, url, 30000);
    uint64_t took = sd_now_ms() - t0;
    cr_assert_lt(took, 5000, "sd_aredis_new blocked for %llu ms", (unsigned long long)took);
    cr_assert_not(sd_aredis_is_connected(r));
    aclose(&loop, r);
    close(fd);
}

/* A Redis that is down when the connection is made is detected once it comes up: a single-node
 * URL becomes a cluster connection (no MOVED error reaches the caller), and a seeds URL whose
 * first seed is down finds the map through the next one meanwhile. */
Test(redis_cluster, async_detection_happens_when_the_node_comes_up) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    sd_redis_server *down = sd_redis_cluster_server_node(c, 1);
    char seeds[128];
    snprintf(seeds, sizeof seeds, "redis://127.0.0.1:%d,127.0.0.1:%d", sd_redis_server_port(down),
             sd_redis_server_port(sd_redis_cluster_server_node(c, 2)));
    cr_assert_eq(sd_redis_server_halt(down), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *single = anew(&loop, sd_redis_server_url(down), 1000);
    sd_aredis *several = anew(&loop, seeds, 1000);
    struct states st = {0};
    sd_aredis_set_state_cb(single, state_cb, &st);

    /* Through the second seed: master 2 answers while master 1 is still down. */
    char key[3][32];
    for (int m = 0; m < 3; m++)
        key_on(m, "detect", key[m], sizeof key[m]);
    struct answers early = {0};
    wait_accepted(&loop, several, key[2], &early);
    run_until(&loop, &early.calls, 1);
    cr_assert_eq(early.ok, 1, "%s", early.error);
    cr_assert_eq(sd_aredis_command(several, count_cb, &early, 0, "INCRBY %s 1", key[1]),
                 SD_EDISCONNECTED, "a master that is down accepted a command");
    cr_assert_eq(st.ups, 0);

    cr_assert_eq(sd_redis_server_restart(down), 0);
    cr_assert_eq(sd_redis_cluster_server_wait_ready(c, 30000), 0);
    cr_assert_eq(sd_aredis_wait_connected(single, 20000), 0, "never came up");
    cr_assert_eq(sd_aredis_wait_connected(several, 20000), 0, "never came up");
    cr_assert_eq(st.ups, 1);
    struct answers a = {0};
    for (int m = 0; m < 3; m++) {
        cr_assert_eq(sd_aredis_command(single, count_cb, &a, 0, "INCRBY %s 1", key[m]), 0);
        cr_assert_eq(sd_aredis_command(several, count_cb, &a, 0, "INCRBY %s 1", key[m]), 0);
    }
    run_until(&loop, &a.calls, 6);
    cr_assert_eq(a.ok, 6, "%s", a.error);
    sd_aredis_free(single);
    aclose(&loop, several);
    sd_redis_cluster_server_stop(c);
}

/* Commands and script calls with thousands of arguments (a batch of checks) are routed whole. */
Test(redis_cluster, thousands_of_arguments_are_routed_whole) {
    sd_redis_cluster_server *c = test_redis_cluster_start(0);
    enum { PAIRS = 3000 };
    const char **argv = sd_xmalloc((1 + 2 * PAIRS) * sizeof *argv);
    char(*keys)[24] = sd_xmalloc(PAIRS * sizeof *keys);
    argv[0] = "MSET";
    for (int i = 0; i < PAIRS; i++) {
        snprintf(keys[i], sizeof keys[i], "{big}:%d", i);
        argv[1 + 2 * i] = keys[i];
        argv[2 + 2 * i] = "7";
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = acluster_connect(&loop, sd_redis_cluster_server_url(c), NULL, 0);
    struct answers a = {0};
    cr_assert_eq(sd_aredis_commandv(r, count_cb, &a, 0, 1 + 2 * PAIRS, argv, NULL), 0);
    run_until(&loop, &a.calls, 1);
    cr_assert_eq(a.status, 0);
    cr_assert_str_empty(a.error);
    aclose(&loop, r);

    /* The sync pipeline (formatted commands split again for routing). */
    sd_redis *s = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    argv[0] = "MGET";
    for (int i = 0; i < PAIRS; i++)
        argv[1 + i] = keys[i];
    cr_assert_eq(sd_redis_appendv(s, 1 + PAIRS, argv, NULL), 0);
    int err = 0;
    redisReply *reply = sd_redis_get_reply(s, &err);
    cr_assert_not_null(reply, "%s", sd_strerror(err));
    cr_assert_eq(reply->type, REDIS_REPLY_ARRAY, "%s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    cr_assert_eq(reply->elements, PAIRS);
    cr_assert_str_eq(reply->element[PAIRS - 1]->str, "7");
    freeReplyObject(reply);
    sd_redis_free(s);
    free(argv);
    free(keys);
    sd_redis_cluster_server_stop(c);
}

/* A master killed with SIGKILL, with a replica: once the replica has taken over, both kinds of
 * connection find it (the async one asks for the map again when a master's connection is down,
 * at most once per second) and its slots answer again; the other masters never stopped. A short
 * cluster-node-timeout (1 s) keeps the test short. */
Test(redis_cluster, a_failover_is_followed_by_both_connections, .timeout = 120) {
    sd_redis_cluster_server_opts o = {.masters = 3, .replicas = 1, .node_timeout_ms = 1000};
    sd_redis_cluster_server *c = NULL;
    cr_assert_eq(sd_redis_cluster_server_start(&o, &c), 0);
    char key[3][32];
    for (int m = 0; m < 3; m++)
        key_on(m, "failover", key[m], sizeof key[m]);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *ar = acluster_connect(&loop, sd_redis_cluster_server_url(c), NULL, 0);
    sd_redis *s = cluster_connect(sd_redis_cluster_server_url(c), NULL, 0);
    cr_assert_eq(test_redis_int(s, "INCR %s", key[1]), 1);

    sd_redis_server *victim = sd_redis_cluster_server_node(c, 1);
    cr_assert_eq(sd_redis_server_signal(victim, SIGKILL), 0);
    sd_redis_server_halt(victim);

    /* The async connection: INCR on the killed master's key until one is answered. */
    struct answers a = {0};
    uint64_t until = sd_now_ms() + 60000;
    while (a.ok == 0 && sd_now_ms() < until) {
        struct answers one = {0};
        wait_accepted(&loop, ar, key[1], &one);
        run_until(&loop, &one.calls, 1);
        a.ok += one.ok;
    }
    cr_assert_eq(a.ok, 1, "the async connection never reached the promoted replica");
    /* The sync one. */
    redisReply *reply = NULL;
    while (reply == NULL && sd_now_ms() < until) {
        reply = sd_redis_command(s, NULL, "INCR %s", key[1]);
        if (reply && reply->type != REDIS_REPLY_INTEGER) {
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    cr_assert_not_null(reply, "the sync connection never reached the promoted replica");
    freeReplyObject(reply);
    /* The replica (node 4) is now a master and holds the key. */
    char *role = node_text(sd_redis_cluster_server_node(c, 4), "INFO replication");
    cr_assert(strstr(role, "role:master") != NULL, "%s", role);
    free(role);
    for (int m = 0; m < 3; m += 2)
        cr_assert_eq(test_redis_int(s, "INCR %s", key[m]), 1);
    sd_redis_free(s);
    aclose(&loop, ar);
    sd_redis_cluster_server_stop(c);
}

/* A single server whose ACL user may not run CLUSTER commands (NOPERM for the probe) is taken for
 * a single server: the async connection comes up and serves the user. */
Test(redis_cluster, async_probe_refused_by_the_acl_means_a_single_server) {
    sd_redis_server *s = test_redis_start(NULL);
    redisReply *reply = raw(s, "ACL SETUSER app on >app-secret ~* +@all -cluster");
    cr_assert_neq(reply->type, REDIS_REPLY_ERROR, "%s", reply->str);
    freeReplyObject(reply);
    char url[96];
    snprintf(url, sizeof url, "redis://app:app-secret@127.0.0.1:%d", sd_redis_server_port(s));
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = acluster_connect(&loop, url, NULL, 0);
    struct answers a = {0};
    cr_assert_eq(sd_aredis_command(r, count_cb, &a, 0, "INCR acl-key"), 0);
    run_until(&loop, &a.calls, 1);
    cr_assert_eq(a.ok, 1, "%s", a.error);
    aclose(&loop, r);
    sd_redis_server_stop(s);
}
