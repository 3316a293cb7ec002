/*
 * test_redis.c - the sync and async connections against a real redis-server: AUTH and SELECT,
 * scripts loaded on every connect and surviving SCRIPT FLUSH, deadlines against a paused server,
 * and reconnecting after the server is restarted; and Redis Cluster key slots.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sd.h"
#include "support.h"

static test_target *server;

static void start(void) {
    server = test_target_start();
}

static void stop(void) {
    test_target_stop(server);
}

TestSuite(redis, .init = start, .fini = stop);

static sd_redis_url url_of(const char *text) {
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(text, &u, err, sizeof err), 0, "%s", err);
    return u;
}

/* A sync connection to the test's server with opts; asserts that it connected. */
static sd_redis *sync_connect(const sd_redis_opts *opts) {
    sd_redis_url u = url_of(test_target_url(server));
    sd_redis *r = NULL;
    cr_assert_eq(sd_redis_connect(&u, opts, &r), 0);
    sd_redis_url_clear(&u);
    return r;
}

/* Connection options whose reconnect backoff runs from ms to 2 * ms, so tests of a server going
 * away and coming back do not wait for the default backoff. */
static sd_redis_opts quick_reconnect(int ms) {
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.reconnect_min_ms = ms;
    opts.reconnect_max_ms = 2 * ms;
    return opts;
}

/* A script whose result shows it ran: INCR its key and return the new value. */
static sd_script incr_script = {
    .name = "test/incr",
    .body = "return redis.call('INCRBY', KEYS[1], ARGV[1])",
    .len = sizeof "return redis.call('INCRBY', KEYS[1], ARGV[1])" - 1,
};

static void flush_scripts(void) {
    sd_redis *admin = test_redis_connect(test_target_url(server));
    redisReply *reply = sd_redis_command(admin, NULL, "SCRIPT FLUSH");
    cr_assert_not_null(reply);
    freeReplyObject(reply);
    sd_redis_free(admin);
}

/* Sends cmd (a command line without arguments to format) every 10 ms until the connection,
 * reconnecting on its own, answers it (2 s at most). Returns the reply, or NULL with *err the last
 * error. */
static redisReply *command_until_answered(sd_redis *r, const char *cmd, int *err) {
    redisReply *reply = NULL;
    for (int i = 0; i < 200 && reply == NULL; i++) {
        reply = sd_redis_command(r, err, cmd);
        if (!reply) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    return reply;
}

/* The suite runs against what its CTest name says (SD_TEST_REDIS): a cluster run that quietly
 * started a single server would pass without testing the cluster at all. */
Test(redis, runs_against_a_cluster_exactly_when_asked) {
    for (int i = 0; i < test_target_nodes(server); i++) {
        redisReply *info = test_target_node_command(server, i, "INFO cluster");
        cr_assert_eq(info->type, REDIS_REPLY_STRING);
        int enabled = strstr(info->str, "cluster_enabled:1") != NULL;
        freeReplyObject(info);
        cr_assert_eq(enabled, test_target_is_cluster(), "node %d: cluster_enabled:%d", i, enabled);
    }
    cr_assert_eq(test_target_nodes(server), test_target_is_cluster() ? 3 : 1);
}

Test(redis, sync_script_survives_script_flush) {
    sd_redis *r = test_redis_connect(test_target_url(server));
    const char *argv[] = {"k", "2"};
    for (int round = 1; round <= 2; round++) {
        int err = 0;
        redisReply *reply = sd_redis_script(r, &err, 0, &incr_script, 1, 2, argv, NULL);
        cr_assert_not_null(reply, "round %d: %s", round, sd_strerror(err));
        cr_assert_eq(reply->type, REDIS_REPLY_INTEGER, "round %d: %s", round,
                     reply->type == REDIS_REPLY_ERROR ? reply->str : "not an integer");
        cr_assert_eq(reply->integer, 2 * round);
        freeReplyObject(reply);
        flush_scripts();
    }
    sd_redis_free(r);
}

Test(redis, auth_and_select_on_connect) {
    const char *args[] = {"--requirepass", "open-sesame", NULL};
    sd_redis_server_opts opts = {.extra_args = args};
    sd_redis_server *locked = NULL;
    cr_assert_eq(sd_redis_server_start(&opts, &locked), 0);
    char text[128];
    snprintf(text, sizeof text, "redis://:open-sesame@127.0.0.1:%d/3",
             sd_redis_server_port(locked));
    sd_redis_url u = url_of(text);
    sd_redis *r = NULL;
    cr_assert_eq(sd_redis_connect(&u, NULL, &r), 0);
    cr_assert_eq(test_redis_int(r, "INCR in-db-3"), 1);
    redisReply *reply = sd_redis_command(r, NULL, "CLIENT INFO");
    cr_assert_not_null(reply);
    cr_assert(strstr(reply->str, " db=3 ") != NULL, "not on db 3: %s", reply->str);
    freeReplyObject(reply);
    sd_redis_free(r);

    /* A wrong password is refused, and the error does not repeat it. */
    snprintf(text, sizeof text, "redis://:wrong-guess@127.0.0.1:%d", sd_redis_server_port(locked));
    sd_redis_url bad = url_of(text);
    sd_redis *r2 = NULL;
    cr_assert_eq(sd_redis_connect(&bad, NULL, &r2), SD_EREDIS);
    cr_assert_null(r2);
    sd_redis_url_clear(&bad);
    sd_redis_url_clear(&u);
    sd_redis_server_stop(locked);
}

Test(redis, sync_command_times_out_on_a_paused_server_then_recovers) {
    sd_redis *r = test_redis_connect(test_target_url(server));
    sd_redis *admin = test_redis_connect(test_target_url(server));
    sd_redis_set_timeout(r, 100);
    test_target_each(server, "CLIENT PAUSE 600 ALL"); /* every node of a cluster */

    int err = 0;
    cr_assert_null(sd_redis_command(r, &err, "GET x"));
    cr_assert_eq(err, SD_ETIMEDOUT, "got %s", sd_strerror(err));

    sd_redis_set_timeout(r, 3000);
    /* The next command reconnects; it is answered once the pause ends. */
    cr_assert_eq(test_redis_int(r, "INCR after-pause"), 1);
    sd_redis_free(admin);
    sd_redis_free(r);
}

Test(redis, sync_fails_fast_while_down_and_reconnects_after_restart) {
    sd_redis_opts opts = quick_reconnect(20);
    sd_redis *r = sync_connect(&opts);
    cr_assert_eq(test_redis_int(r, "INCR a"), 1);

    test_target_halt(server);
    int err = 0;
    cr_assert_null(sd_redis_command(r, &err, "INCR a"));
    cr_assert_eq(err, SD_EDISCONNECTED);
    /* Within the backoff the call does not even try the network. */
    cr_assert_null(sd_redis_command(r, &err, "INCR a"));
    cr_assert_eq(err, SD_EDISCONNECTED);

    cr_assert_eq(test_target_restart(server), 0);
    redisReply *reply = command_until_answered(r, "INCR a", &err);
    cr_assert_not_null(reply, "never reconnected: %s", sd_strerror(err));
    cr_assert_eq(reply->integer, 1, "a fresh server has no data");
    freeReplyObject(reply);
    sd_redis_free(r);
}

Test(redis, pipeline_replies_in_order) {
    sd_redis *r = test_redis_connect(test_target_url(server));
    for (int i = 0; i < 10; i++)
        cr_assert_eq(sd_redis_append(r, "INCR p"), 0);
    for (int i = 1; i <= 10; i++) {
        redisReply *reply = sd_redis_get_reply(r, NULL);
        cr_assert_not_null(reply);
        cr_assert_eq(reply->integer, i);
        freeReplyObject(reply);
    }
    sd_redis_free(r);
}

/* ---- async ---- */

struct calls {
    int count;
    int status;
    long long integer;
    int type;
};

static void record_cb(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    struct calls *c = privdata;
    c->count++;
    c->status = status;
    if (reply) {
        c->type = reply->type;
        c->integer = reply->integer;
    }
}

static sd_aredis *async_connect(uv_loop_t *loop, int reconnect_ms) {
    sd_redis_url u = url_of(test_target_url(server));
    sd_redis_opts opts = quick_reconnect(reconnect_ms);
    sd_aredis *r = NULL;
    cr_assert_eq(sd_aredis_new(loop, &u, &opts, &r), 0);
    sd_redis_url_clear(&u);
    cr_assert_eq(sd_aredis_wait_connected(r, 5000), 0);
    return r;
}

/* Runs the loop until *count reaches want (or 5 s pass). */
static void run_until(uv_loop_t *loop, int *count, int want) {
    uint64_t until = sd_now_ms() + 5000;
    while (*count < want && sd_now_ms() < until)
        uv_run(loop, UV_RUN_ONCE);
}

static void close_loop(uv_loop_t *loop, sd_aredis *r) {
    sd_aredis_free(r);
    uv_run(loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(loop), 0, "handles left open");
}

Test(redis, async_command_and_script_survive_script_flush) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    struct calls c = {0};
    const char *argv[] = {"ak", "5"};
    cr_assert_eq(sd_aredis_script(r, &incr_script, record_cb, &c, 1000, 1, 2, argv, NULL), 0);
    run_until(&loop, &c.count, 1);
    cr_assert_eq(c.count, 1);
    cr_assert_eq(c.status, 0);
    cr_assert_eq(c.integer, 5);

    flush_scripts();
    cr_assert_eq(sd_aredis_script(r, &incr_script, record_cb, &c, 1000, 1, 2, argv, NULL), 0);
    run_until(&loop, &c.count, 2);
    cr_assert_eq(c.count, 2);
    cr_assert_eq(c.type, REDIS_REPLY_INTEGER, "NOSCRIPT was not recovered");
    cr_assert_eq(c.integer, 10);
    close_loop(&loop, r);
}

/* sd_aredis_flush writes the accepted commands at once: Redis runs them while the loop is not
 * running at all. Without it they would wait in hiredis's buffer for the loop's next poll. */
Test(redis, async_flush_writes_without_running_the_loop) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    struct calls c = {0};
    cr_assert_eq(sd_aredis_command(r, record_cb, &c, 1000, "INCRBY flushed 7"), 0);
    sd_aredis_flush(r);
    long long seen = 0;
    for (uint64_t until = sd_now_ms() + 2000; seen == 0 && sd_now_ms() < until;) {
        redisReply *reply = sd_redis_command(admin, NULL, "GET flushed");
        cr_assert(reply);
        seen = reply->type == REDIS_REPLY_STRING ? atoll(reply->str) : 0;
        freeReplyObject(reply);
    }
    cr_assert_eq(seen, 7, "the command did not reach Redis before the loop ran");
    cr_assert_eq(c.count, 0, "the reply is the loop's to deliver");
    run_until(&loop, &c.count, 1);
    cr_assert_eq(c.integer, 7);
    sd_redis_free(admin);
    close_loop(&loop, r);
}

/*
 * A reply that is in the socket when the command's deadline passes is the answer, not a timeout:
 * the loop is held up (not run) past a 50 ms deadline after Redis has answered, then runs once.
 * libuv runs timers before it polls for input; the deadline timer reads first (sd_aredis_read).
 */
Test(redis, async_a_reply_in_the_socket_at_the_deadline_is_the_answer) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    struct calls c = {0};
    uint64_t sent = sd_now_ms();
    cr_assert_eq(sd_aredis_command(r, record_cb, &c, 50, "INCRBY inhand 3"), 0);
    sd_aredis_flush(r);
    /* Redis has run it (and so written its reply) once another client can read the result. */
    long long seen = 0;
    for (uint64_t until = sd_now_ms() + 10000; seen == 0 && sd_now_ms() < until;) {
        redisReply *reply = sd_redis_command(admin, NULL, "GET inhand");
        cr_assert(reply);
        seen = reply->type == REDIS_REPLY_STRING ? atoll(reply->str) : 0;
        freeReplyObject(reply);
    }
    cr_assert_eq(seen, 3);
    while (sd_now_ms() < sent + 100) { /* the deadline passes while the loop is held up */
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    uv_run(&loop, UV_RUN_NOWAIT); /* timers first, then a poll that does not wait */
    cr_assert_eq(c.count, 1, "no answer");
    cr_assert_eq(c.status, 0, "the reply in the socket was taken for late: %s",
                 sd_strerror(c.status));
    cr_assert_eq(c.integer, 3);
    sd_redis_free(admin);
    close_loop(&loop, r);
}

/* Arguments of any bytes and lengths (CR LF, NUL, empty, 10 and 100,000 bytes) reach Redis
 * intact through the connection's own command encoding, and a script sees them all. */
struct text_reply {
    int count;
    char *str;
    size_t len;
};

static void text_cb(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    struct text_reply *t = privdata;
    t->count++;
    if (status == 0 && reply->type == REDIS_REPLY_STRING) {
        t->str = sd_xmalloc(reply->len + 1);
        memcpy(t->str, reply->str, reply->len);
        t->len = reply->len;
    }
}

static sd_script concat_script = {
    .name = "test/concat",
    .body = "return table.concat(ARGV, '|') .. '#' .. #KEYS",
    .len = sizeof "return table.concat(ARGV, '|') .. '#' .. #KEYS" - 1,
};

Test(redis, async_arguments_are_binary_safe) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    size_t big_len = 100000;
    char *big = sd_xmalloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)(i % 251);
    const char *values[] = {"a\r\nb", "x\0y", "", "0123456789", big};
    const size_t lens[] = {4, 3, 0, 10, big_len};
    for (size_t i = 0; i < 5; i++) {
        const char *set[] = {"SET", "bin", values[i]};
        const size_t set_lens[] = {3, 3, lens[i]};
        struct calls c = {0};
        cr_assert_eq(sd_aredis_commandv(r, record_cb, &c, 1000, 3, set, set_lens), 0);
        run_until(&loop, &c.count, 1);
        cr_assert_eq(c.status, 0);
        const char *get[] = {"GET", "bin"};
        const size_t get_lens[] = {3, 3};
        struct text_reply t = {0};
        cr_assert_eq(sd_aredis_commandv(r, text_cb, &t, 1000, 2, get, get_lens), 0);
        run_until(&loop, &t.count, 1);
        cr_assert_not_null(t.str, "value %zu: no string back", i);
        cr_assert_eq(t.len, lens[i], "value %zu: %zu bytes back", i, t.len);
        cr_assert_eq(memcmp(t.str, values[i], lens[i]), 0, "value %zu changed", i);
        free(t.str);
    }
    /* 120 arguments after the script's SHA, as a batch of rate-limit checks sends. */
    const char *argv[120];
    size_t argv_lens[120];
    char expect[1024] = "";
    for (int i = 0; i < 120; i++) {
        argv[i] = i < 60 ? "k" : (i % 2 ? "y" : "zz");
        argv_lens[i] = strlen(argv[i]);
        if (i >= 60) {
            strcat(expect, argv[i]);
            strcat(expect, i < 119 ? "|" : "#60");
        }
    }
    struct text_reply t = {0};
    cr_assert_eq(sd_aredis_script(r, &concat_script, text_cb, &t, 1000, 60, 120, argv, argv_lens),
                 0);
    run_until(&loop, &t.count, 1);
    cr_assert_not_null(t.str);
    cr_assert_eq(t.len, strlen(expect));
    cr_assert_eq(memcmp(t.str, expect, t.len), 0, "script saw %.*s", (int)t.len, t.str);
    free(t.str);
    free(big);
    close_loop(&loop, r);
}

Test(redis, async_deadline_fires_once_against_a_paused_server) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    test_target_each(server, "CLIENT PAUSE 400 ALL"); /* every node of a cluster */

    struct calls late = {0}, patient = {0};
    cr_assert_eq(sd_aredis_command(r, record_cb, &late, 30, "INCR d"), 0);
    cr_assert_eq(sd_aredis_command(r, record_cb, &patient, 3000, "INCR d"), 0);
    run_until(&loop, &late.count, 1);
    cr_assert_eq(late.count, 1);
    cr_assert_eq(late.status, SD_ETIMEDOUT);
    cr_assert_eq(patient.count, 0, "the patient command expired with the short one");

    /* After the pause both replies arrive; only the patient caller hears its own. */
    run_until(&loop, &patient.count, 1);
    cr_assert_eq(patient.count, 1);
    cr_assert_eq(patient.status, 0);
    cr_assert_eq(patient.integer, 2, "the timed-out INCR still ran on the server");
    cr_assert_eq(late.count, 1, "a timed-out callback ran twice");
    cr_assert_eq(sd_aredis_pending(r), 0);
    sd_redis_free(admin);
    close_loop(&loop, r);
}

struct states {
    int ups, downs;
};

static void state_cb(sd_aredis *r, int connected, void *privdata) {
    struct states *s = privdata;
    if (connected)
        s->ups++;
    else
        s->downs++;
}

Test(redis, async_reconnects_after_restart_and_refuses_while_down) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    struct states st = {0};
    sd_aredis_set_state_cb(r, state_cb, &st);

    struct calls inflight = {0};
    test_target_signal(server, SIGSTOP);
    cr_assert_eq(sd_aredis_command(r, record_cb, &inflight, 5000, "INCR r"), 0);
    test_target_halt(server); /* continues it, then stops it: the connection drops */
    run_until(&loop, &st.downs, 1);
    cr_assert_eq(st.downs, 1);
    cr_assert_eq(inflight.count, 1);
    cr_assert_eq(inflight.status, SD_EDISCONNECTED);

    struct calls refused = {0};
    cr_assert_eq(sd_aredis_command(r, record_cb, &refused, 100, "INCR r"), SD_EDISCONNECTED);

    cr_assert_eq(test_target_restart(server), 0);
    run_until(&loop, &st.ups, 1);
    cr_assert_eq(st.ups, 1, "did not reconnect");
    struct calls after = {0};
    cr_assert_eq(sd_aredis_command(r, record_cb, &after, 1000, "INCR r"), 0);
    run_until(&loop, &after.count, 1);
    cr_assert_eq(after.status, 0);
    cr_assert_eq(after.integer, 1);
    cr_assert_eq(refused.count, 0, "a refused command's callback ran");
    close_loop(&loop, r);
}

Test(redis, async_free_answers_pending_commands_closed) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    test_target_each(server, "CLIENT PAUSE 300 ALL"); /* every node of a cluster */
    struct calls c[3] = {{0}};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sd_aredis_command(r, record_cb, &c[i], 2000, "PING"), 0);
    sd_aredis_free(r);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(c[i].count, 1);
        cr_assert_eq(c[i].status, SD_ECLOSED);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    sd_redis_free(admin);
}

Test(redis, async_gives_up_on_a_frozen_server_and_comes_back) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_redis_url u = url_of(test_target_url(server));
    sd_redis_opts opts = quick_reconnect(20);
    opts.connect_timeout_ms = 150;
    sd_aredis *r = NULL;
    cr_assert_eq(sd_aredis_new(&loop, &u, &opts, &r), 0);
    sd_redis_url_clear(&u);
    cr_assert_eq(sd_aredis_wait_connected(r, 5000), 0);
    struct states st = {0};
    sd_aredis_set_state_cb(r, state_cb, &st);

    test_target_signal(server, SIGSTOP);
    struct calls c[5] = {{0}};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(sd_aredis_command(r, record_cb, &c[i], 30, "INCR frozen"), 0);
    run_until(&loop, &st.downs, 1);
    cr_assert_eq(st.downs, 1, "a silent connection was kept forever");
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(c[i].count, 1);
        cr_assert_eq(c[i].status, SD_ETIMEDOUT);
    }
    cr_assert_eq(sd_aredis_pending(r), 0);
    /* A key of the same node: on a cluster the masters idle meanwhile still look up. */
    struct calls refused = {0};
    cr_assert_eq(sd_aredis_command(r, record_cb, &refused, 30, "INCR frozen"), SD_EDISCONNECTED);

    test_target_signal(server, SIGCONT);
    run_until(&loop, &st.ups, 1);
    cr_assert_eq(st.ups, 1, "did not reconnect after the server woke up");
    close_loop(&loop, r);
}

/* A caller that frees the connection from its own callback, with more commands in flight. */
struct freeing_caller {
    sd_aredis *r;
    int calls;
    int closed;
};

static void free_on_first_reply_cb(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    struct freeing_caller *f = privdata;
    f->calls++;
    if (status == SD_ECLOSED)
        f->closed++;
    if (f->r) {
        sd_aredis *doomed = f->r;
        f->r = NULL;
        sd_aredis_free(doomed);
    }
}

Test(redis, async_free_from_inside_a_reply_callback) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    struct freeing_caller f = {.r = r};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(sd_aredis_command(r, free_on_first_reply_cb, &f, 2000, "PING"), 0);
    run_until(&loop, &f.calls, 4);
    cr_assert_eq(f.calls, 4, "every command is answered exactly once");
    cr_assert_geq(f.closed, 1, "the commands still pending were answered SD_ECLOSED");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static void free_when_down_cb(sd_aredis *r, int connected, void *privdata) {
    if (!connected)
        sd_aredis_free(r);
}

Test(redis, async_free_from_the_state_callback_when_redis_dies) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *r = async_connect(&loop, 20);
    sd_aredis_set_state_cb(r, free_when_down_cb, NULL);
    struct calls c[3] = {{0}};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sd_aredis_command(r, record_cb, &c[i], 5000, "BLPOP nothing 0"), 0);
    test_target_halt(server);
    int total = 0;
    uint64_t until = sd_now_ms() + 5000;
    while (total < 3 && sd_now_ms() < until) {
        uv_run(&loop, UV_RUN_ONCE);
        total = c[0].count + c[1].count + c[2].count;
    }
    /* On a cluster the first master whose connection drops may not be the one holding the
     * BLPOPs: they are then answered by the free (SD_ECLOSED), still exactly once. */
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(c[i].count, 1);
        if (!test_target_is_cluster() || c[i].status != SD_ECLOSED)
            cr_assert_eq(c[i].status, SD_EDISCONNECTED);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "the connection was not freed");
    test_target_restart(server);
}

Test(redis, sync_handle_created_while_redis_is_down_connects_later) {
    sd_redis_url u = url_of(test_target_url(server));
    sd_redis_opts opts = quick_reconnect(10);
    test_target_halt(server);
    sd_redis *r = sd_redis_new(&u, &opts);
    cr_assert_not_null(r);
    int err = 0;
    cr_assert_null(sd_redis_command(r, &err, "PING"));
    cr_assert_eq(err, SD_EDISCONNECTED);

    cr_assert_eq(test_target_restart(server), 0);
    redisReply *reply = command_until_answered(r, "INCR later", &err);
    cr_assert_not_null(reply, "never connected: %s", sd_strerror(err));
    cr_assert_eq(reply->integer, 1);
    freeReplyObject(reply);
    sd_redis_free(r);
    sd_redis_url_clear(&u);
}

/* ---- scripts loaded on connect ---- */

/*
 * How often Redis ran a command since it started, from INFO commandstats ("cmdstat_evalsha:
 * calls=3,..."; a subcommand is named "script|load"), summed over the nodes of a cluster (every
 * master loads each script once). 0 when it never ran. The test then need not
 * watch the connection: Redis's own count says whether a NOSCRIPT round trip happened, since
 * that is the only way an EVAL is sent.
 */
static long long command_calls(const char *command) {
    long long calls = 0;
    for (int i = 0; i < test_target_nodes(server); i++) {
        redisReply *reply = test_target_node_command(server, i, "INFO commandstats");
        cr_assert_eq(reply->type, REDIS_REPLY_STRING);
        char needle[64];
        snprintf(needle, sizeof needle, "\ncmdstat_%s:calls=", command);
        const char *at = strstr(reply->str, needle);
        calls += at ? atoll(at + strlen(needle)) : 0;
        freeReplyObject(reply);
    }
    return calls;
}

static sd_redis_opts with_incr_script(int reconnect_ms) {
    static sd_script *const scripts[] = {&incr_script};
    sd_redis_opts opts = quick_reconnect(reconnect_ms);
    opts.scripts = scripts;
    opts.nscripts = 1;
    return opts;
}

/* Runs incr_script on key k (+2) and asserts the new value. */
static void sync_incr_expect(sd_redis *r, long long want) {
    const char *argv[] = {"k", "2"};
    int err = 0;
    redisReply *reply = sd_redis_script(r, &err, 0, &incr_script, 1, 2, argv, NULL);
    cr_assert_not_null(reply, "%s", sd_strerror(err));
    cr_assert_eq(reply->type, REDIS_REPLY_INTEGER, "%s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "not an integer");
    cr_assert_eq(reply->integer, want);
    freeReplyObject(reply);
}

Test(redis, sync_scripts_are_loaded_on_connect_and_after_a_restart) {
    sd_redis_opts opts = with_incr_script(20);
    sd_redis *r = sync_connect(&opts);
    /* One load per connected node: the sync connection connects a cluster's masters when first
     * used, so only the node it asked for the slot map is connected yet. */
    cr_assert_eq(command_calls("script|load"), 1, "not loaded in the handshake");
    sync_incr_expect(r, 2);
    cr_assert_eq(command_calls("evalsha"), 1);
    cr_assert_eq(command_calls("eval"), 0, "the first call needed a NOSCRIPT round trip");

    /* A restarted server has an empty script cache (and fresh counts). */
    test_target_halt(server);
    cr_assert_eq(test_target_restart(server), 0);
    /* A command on the script's key, so that on a cluster the connection to its master is the
     * one that reconnects. */
    int err = 0;
    redisReply *reply = command_until_answered(r, "GET k", &err);
    cr_assert_not_null(reply, "never reconnected: %s", sd_strerror(err));
    freeReplyObject(reply);
    cr_assert_eq(command_calls("script|load"), 1, "not loaded again on the reconnect");
    sync_incr_expect(r, 2);
    cr_assert_eq(command_calls("eval"), 0, "the first call after a restart needed a NOSCRIPT");
    sd_redis_free(r);
}

static void async_incr_expect(uv_loop_t *loop, sd_aredis *r, long long want) {
    struct calls c = {0};
    const char *argv[] = {"ak", "5"};
    cr_assert_eq(sd_aredis_script(r, &incr_script, record_cb, &c, 1000, 1, 2, argv, NULL), 0);
    run_until(loop, &c.count, 1);
    cr_assert_eq(c.count, 1);
    cr_assert_eq(c.status, 0);
    cr_assert_eq(c.type, REDIS_REPLY_INTEGER);
    cr_assert_eq(c.integer, want);
}

/* Counts the SCRIPT LOADs Redis has run at the moment the state callback says "up": a load sent
 * only then would still sit in the connection's buffer, unwritten until the loop runs again. */
struct loads_when_up {
    struct states states;
    long long loads;
};

static void count_loads_when_up_cb(sd_aredis *r, int connected, void *privdata) {
    struct loads_when_up *s = privdata;
    state_cb(r, connected, &s->states);
    if (connected)
        s->loads = command_calls("script|load");
}

Test(redis, async_scripts_are_loaded_before_the_connection_is_up) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_redis_url u = url_of(test_target_url(server));
    sd_redis_opts opts = with_incr_script(20);
    sd_aredis *r = NULL;
    cr_assert_eq(sd_aredis_new(&loop, &u, &opts, &r), 0);
    sd_redis_url_clear(&u);
    cr_assert_eq(sd_aredis_wait_connected(r, 5000), 0);
    /* Up means loaded: the count is read before any script call. */
    cr_assert_eq(command_calls("script|load"), test_target_nodes(server),
                 "up before the script was loaded");
    async_incr_expect(&loop, r, 5);
    cr_assert_eq(command_calls("evalsha"), 1);
    cr_assert_eq(command_calls("eval"), 0, "the first call needed a NOSCRIPT round trip");

    struct loads_when_up st = {{0}, -1};
    sd_aredis_set_state_cb(r, count_loads_when_up_cb, &st);
    test_target_halt(server);
    run_until(&loop, &st.states.downs, 1);
    cr_assert_eq(test_target_restart(server), 0);
    run_until(&loop, &st.states.ups, 1);
    cr_assert_eq(st.states.ups, 1, "did not reconnect");
    cr_assert_eq(st.loads, test_target_nodes(server),
                 "not loaded again before the reconnect was up");
    async_incr_expect(&loop, r, 5);
    cr_assert_eq(command_calls("eval"), 0, "the first call after a restart needed a NOSCRIPT");
    close_loop(&loop, r);
}

/* A script Redis refuses to load (here, a syntax error) does not keep a connection down: its
 * calls report the error, as they would without the load. */
static sd_script broken_script = {
    .name = "test/broken",
    .body = "return +",
    .len = sizeof "return +" - 1,
};

Test(redis, a_script_that_fails_to_load_does_not_fail_the_connect) {
    static sd_script *const scripts[] = {&broken_script, &incr_script};
    sd_redis_url u = url_of(test_target_url(server));
    sd_redis_opts opts = quick_reconnect(20);
    opts.scripts = scripts;
    opts.nscripts = 2;
    sd_redis *r = NULL;
    cr_assert_eq(sd_redis_connect(&u, &opts, &r), 0, "%s", r ? sd_redis_errstr(r) : "");
    int err = 0;
    redisReply *reply = sd_redis_script(r, &err, 0, &broken_script, 0, 0, NULL, NULL);
    cr_assert_not_null(reply, "%s", sd_strerror(err));
    cr_assert_eq(reply->type, REDIS_REPLY_ERROR);
    freeReplyObject(reply);
    sync_incr_expect(r, 2); /* the script after it was loaded all the same */
    sd_redis_free(r);
    /* Both scripts on each node the sync connection used (a cluster's masters are connected
     * when first used), then on every node for the async connection. */
    long long sync_loads = command_calls("script|load");
    cr_assert(sync_loads >= 2 && sync_loads % 2 == 0, "%lld loads", sync_loads);

    uv_loop_t loop;
    uv_loop_init(&loop);
    sd_aredis *ar = NULL;
    cr_assert_eq(sd_aredis_new(&loop, &u, &opts, &ar), 0);
    cr_assert_eq(sd_aredis_wait_connected(ar, 5000), 0, "a refused SCRIPT LOAD kept it down");
    cr_assert_eq(command_calls("script|load"), sync_loads + 2 * test_target_nodes(server));
    cr_assert_eq(command_calls("eval"), 1, "only the broken script's call fell back to EVAL");
    close_loop(&loop, ar);
    sd_redis_url_clear(&u);
}

/* ---- Redis Cluster key slots ---- */

/* The vectors of the Redis Cluster specification ("Keys distribution model", "Hash tags"). */
Test(redis_slot, matches_the_specification_vectors) {
    /* Its CRC16 test vector: CRC16("123456789") = 0x31C3. */
    cr_assert_eq(sd_redis_key_slot("123456789", 9), 0x31C3 & 16383);
    cr_assert_eq(sd_redis_key_slot("rl:{123456789}:x", 16), 0x31C3 & 16383);
    /* The slots below are what CLUSTER KEYSLOT answers (Redis 7.0). */
    const char *a = "{user1000}.following", *b = "{user1000}.followers";
    cr_assert_eq(sd_redis_key_slot(a, strlen(a)), 3443);
    cr_assert_eq(sd_redis_key_slot(b, strlen(b)), 3443);
    cr_assert_eq(sd_redis_key_slot("user1000", 8), 3443);
    /* An empty tag: the whole key is hashed, not "bar" (5061). */
    cr_assert_eq(sd_redis_key_slot("foo{}{bar}", 10), 8363);
    /* The tag ends at the first '}' after the first '{': "{bar" is hashed. */
    cr_assert_eq(sd_redis_key_slot("foo{{bar}}zap", 13), 4015);
    cr_assert_eq(sd_redis_key_slot("{bar", 4), 4015);
    /* No closing brace: the whole key, not "b" (3300). */
    cr_assert_eq(sd_redis_key_slot("a{b", 3), 13340);
}

/* Redis's own CLUSTER KEYSLOT, on a server started in cluster mode, agrees on keys of every
 * shape: with and without tags, empty tags, nested and unclosed braces, and any bytes. */
Test(redis_slot, agrees_with_cluster_keyslot) {
    const char *args[] = {"--cluster-enabled", "yes", NULL};
    sd_redis_server_opts opts = {.extra_args = args};
    sd_redis_server *cluster = NULL;
    cr_assert_eq(sd_redis_server_start(&opts, &cluster), 0);
    sd_redis *r = test_redis_connect(sd_redis_server_url(cluster));
    const char alphabet[] = "{}ab\0\xff";
    unsigned seed = 12345;
    for (int i = 0; i < 2000; i++) {
        char key[12];
        size_t len = (size_t)(i % 12);
        for (size_t j = 0; j < len; j++) {
            seed = seed * 1103515245u + 12345u;
            key[j] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
        }
        const char *argv[] = {"CLUSTER", "KEYSLOT", key};
        const size_t lens[] = {7, 7, len};
        redisReply *reply = sd_redis_commandv(r, NULL, 3, argv, lens);
        cr_assert(reply && reply->type == REDIS_REPLY_INTEGER, "%s",
                  reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "no reply");
        cr_assert_eq(sd_redis_key_slot(key, len), reply->integer, "key %d (%zu bytes)", i, len);
        freeReplyObject(reply);
    }
    sd_redis_free(r);
    sd_redis_server_stop(cluster);
}
