/*
 * test_redis_sub.c - the pub/sub subscriber (common/redis_sub.h) against a real redis-server:
 * delivery (binary payloads, order, exact counts), patterns, unsubscribe, and the down/up
 * notifications with resubscription after CLIENT KILL, a restart and a frozen server.
 *
 * Every wait is for an event (a callback count reaching a value) with a generous limit; nothing
 * sleeps to synchronise. Exact counts are asserted after a "barrier": a last message published
 * after everything else, whose arrival proves every earlier one had its chance to arrive.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "redis_sub.h"
#include "sd.h"
#include "support.h"

/* ---- Recording what the callbacks see ------------------------------------------------------- */

#define MAX_MSGS 2100

struct msg {
    char channel[64];
    char pattern[64];
    int has_pattern;
    char payload[64];
    size_t len;
};

struct rec {
    int ups, downs;
    int states[16]; /* the state words in the order they came */
    int nstates;
    size_t unconfirmed_at_up[8]; /* sd_redis_sub_unconfirmed() inside each up callback */
    int msgs;
    int barriers; /* messages whose payload is "barrier" */
    struct msg m[MAX_MSGS];
    int in_api;       /* set around calls into the subscriber */
    int sync_calls;   /* callbacks that ran from inside such a call: must stay 0 */
    int free_on_msg;  /* free the subscriber from the message callback */
    int free_on_down; /* free it from the state callback when it goes down */
    int freed;
};

/* Each test gets a redis-server, a loop (which the test closes) and an empty record. */
static test_target *server;
static uv_loop_t loop;
static struct rec *seen; /* what each test's callbacks saw */

static void start(void) {
    server = test_target_start();
    cr_assert_eq(uv_loop_init(&loop), 0);
    seen = sd_xcalloc(1, sizeof *seen);
}

static void stop(void) {
    free(seen);
    test_target_stop(server);
}

TestSuite(redis_sub, .init = start, .fini = stop, .timeout = 120);

static void on_message(sd_redis_sub *sub, const char *channel, const char *pattern,
                       const char *payload, size_t len, void *udata) {
    struct rec *r = udata;
    r->sync_calls += r->in_api;
    cr_assert_lt(r->msgs, MAX_MSGS);
    struct msg *m = &r->m[r->msgs++];
    cr_assert_lt(strlen(channel), sizeof m->channel);
    cr_assert_leq(len, sizeof m->payload);
    strcpy(m->channel, channel);
    if (pattern) {
        m->has_pattern = 1;
        snprintf(m->pattern, sizeof m->pattern, "%s", pattern);
    }
    memcpy(m->payload, payload, len);
    m->len = len;
    if (len == 7 && memcmp(payload, "barrier", 7) == 0)
        r->barriers++;
    if (r->free_on_msg) {
        sd_redis_sub_free(sub);
        r->freed = 1;
    }
}

static void on_state(sd_redis_sub *sub, int connected, void *udata) {
    struct rec *r = udata;
    r->sync_calls += r->in_api;
    cr_assert_lt(r->nstates, 16);
    r->states[r->nstates++] = connected;
    if (connected) {
        if (r->ups < 8)
            r->unconfirmed_at_up[r->ups] = sd_redis_sub_unconfirmed(sub);
        r->ups++;
    } else {
        r->downs++;
        if (r->free_on_down) {
            sd_redis_sub_free(sub);
            r->freed = 1;
        }
    }
}

/* ---- Helpers -------------------------------------------------------------------------------- */

static sd_redis_sub_opts quick_opts(void) {
    sd_redis_sub_opts o;
    sd_redis_sub_opts_default(&o);
    o.redis.reconnect_min_ms = 20;
    o.redis.reconnect_max_ms = 40;
    return o;
}

static sd_redis_sub *sub_new_url(uv_loop_t *loop, const char *text, const sd_redis_sub_opts *opts,
                                 struct rec *r) {
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(text, &u, err, sizeof err), 0, "%s", err);
    sd_redis_sub *sub = NULL;
    r->in_api = 1;
    cr_assert_eq(sd_redis_sub_new(loop, &u, opts, &sub), 0);
    r->in_api = 0;
    sd_redis_url_clear(&u);
    sd_redis_sub_set_callbacks(sub, on_message, on_state, r);
    return sub;
}

static sd_redis_sub *sub_new(uv_loop_t *loop, const sd_redis_sub_opts *opts, struct rec *r) {
    return sub_new_url(loop, test_target_url(server), opts, r);
}

static void on_tick(uv_timer_t *t) {
    (void)t;
}

/* Runs one loop iteration, but wakes up within 50 ms even when no event comes (a frozen server
 * sends nothing), so the caller's time limit holds. */
static void run_once(uv_loop_t *loop) {
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_tick, 50, 0);
    uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* finish closing it before it goes out of scope */
}

/* Runs the loop until *count reaches want, for 20 s at most (a limit, not a measurement). */
static void run_until(uv_loop_t *loop, const int *count, int want) {
    uint64_t until = sd_now_ms() + 20000;
    while (*count < want && sd_now_ms() < until)
        run_once(loop);
}

/* run_until, then asserts that *count reached want; `what` says what did not happen. */
static void wait_for(uv_loop_t *loop, const int *count, int want, const char *what) {
    run_until(loop, count, want);
    cr_assert_eq(*count, want, "%s", what);
}

/* A subscriber to the channel "a" (and to the pattern "p:*" when with_pattern), once it is up. */
static sd_redis_sub *sub_up_on_a(uv_loop_t *loop, const sd_redis_sub_opts *opts, struct rec *r,
                                 int with_pattern) {
    sd_redis_sub *sub = sub_new(loop, opts, r);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "a"), 0);
    if (with_pattern)
        cr_assert_eq(sd_redis_sub_psubscribe(sub, "p:*"), 0);
    wait_for(loop, &r->ups, 1, "did not come up");
    return sub;
}

static void run_until_pongs(uv_loop_t *loop, sd_redis_sub *sub, uint64_t want) {
    uint64_t until = sd_now_ms() + 20000;
    sd_redis_sub_stats st;
    sd_redis_sub_stats_get(sub, &st);
    while (st.pongs < want && sd_now_ms() < until) {
        run_once(loop);
        sd_redis_sub_stats_get(sub, &st);
    }
    cr_assert_geq(st.pongs, want, "PINGs were not answered");
}

static void run_until_confirmed(uv_loop_t *loop, sd_redis_sub *sub) {
    uint64_t until = sd_now_ms() + 20000;
    while (sd_redis_sub_unconfirmed(sub) > 0 && sd_now_ms() < until)
        run_once(loop);
    cr_assert_eq(sd_redis_sub_unconfirmed(sub), 0);
}

static void close_loop(uv_loop_t *loop, sd_redis_sub *sub) {
    sd_redis_sub_free(sub);
    uv_run(loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(loop), 0, "handles left open");
}

/* Frees the subscriber (close_loop) and the admin connection (NULL: none). */
static void sub_finish(uv_loop_t *loop, sd_redis_sub *sub, sd_redis *admin) {
    close_loop(loop, sub);
    sd_redis_free(admin);
}

/* PUBLISH from a separate (sync) connection; returns the number of receivers Redis counted. */
static long long publish(sd_redis *admin, const char *channel, const void *payload, size_t len) {
    return test_redis_int(admin, "PUBLISH %s %b", channel, payload, len);
}

/* Publishes a barrier on `channel` and waits until it is delivered: every message published
 * before it on this server has then been delivered or dropped for good. */
static void barrier(uv_loop_t *loop, sd_redis *admin, struct rec *r, const char *channel) {
    int want = r->barriers + 1;
    cr_assert_geq(publish(admin, channel, "barrier", 7), 1);
    run_until(loop, &r->barriers, want);
    cr_assert_eq(r->barriers, want, "the barrier did not arrive");
    cr_assert_str_eq(r->m[r->msgs - 1].channel, channel, "the barrier is not the last message");
}

static void assert_states(const struct rec *r, int n, const int *want) {
    cr_assert_eq(r->nstates, n, "%d state callbacks, expected %d", r->nstates, n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(r->states[i], want[i], "state callback %d said %d", i, r->states[i]);
    cr_assert_eq(r->sync_calls, 0, "a callback ran from inside an sd_redis_sub call");
}

/* ---- Delivery ------------------------------------------------------------------------------- */

Test(redis_sub, delivers_binary_payloads_in_order_with_exact_counts) {
    sd_redis_sub_opts o = quick_opts();
    sd_redis_sub *sub = sub_new(&loop, &o, seen);
    seen->in_api = 1;
    cr_assert_eq(sd_redis_sub_subscribe(sub, "news"), 0);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "news"), 0, "a second subscribe is a no-op");
    cr_assert_eq(sd_redis_sub_subscribe(sub, "barrier"), 0);
    seen->in_api = 0;
    cr_assert_eq(sd_redis_sub_unconfirmed(sub), 2);
    wait_for(&loop, &seen->ups, 1, "did not come up");
    cr_assert(sd_redis_sub_is_up(sub));
    cr_assert_eq(seen->unconfirmed_at_up[0], 0);

    sd_redis *admin = test_redis_connect(test_target_url(server));
    static const char binary[] = "a\0b\r\nc\r\n\0"; /* NUL and CR LF inside, NUL last */
    cr_assert_eq(publish(admin, "news", binary, sizeof binary - 1), 1, "one subscriber");
    cr_assert_eq(publish(admin, "news", "", 0), 1);
    for (int i = 0; i < 200; i++) {
        char text[16];
        int n = snprintf(text, sizeof text, "m%d", i);
        cr_assert_eq(publish(admin, "news", text, (size_t)n), 1);
    }
    cr_assert_eq(publish(admin, "elsewhere", "x", 1), 0);
    barrier(&loop, admin, seen, "barrier");

    cr_assert_eq(seen->msgs, 203);
    cr_assert_str_eq(seen->m[0].channel, "news");
    cr_assert_eq(seen->m[0].has_pattern, 0);
    cr_assert_eq(seen->m[0].len, sizeof binary - 1);
    cr_assert_eq(memcmp(seen->m[0].payload, binary, sizeof binary - 1), 0);
    cr_assert_eq(seen->m[1].len, 0);
    for (int i = 0; i < 200; i++) {
        char text[16];
        int n = snprintf(text, sizeof text, "m%d", i);
        cr_assert_eq(seen->m[2 + i].len, (size_t)n);
        cr_assert_eq(memcmp(seen->m[2 + i].payload, text, (size_t)n), 0, "out of order at %d", i);
    }
    sd_redis_sub_stats st;
    sd_redis_sub_stats_get(sub, &st);
    cr_assert_eq(st.messages, 203);
    cr_assert_eq(st.ups, 1);
    cr_assert_eq(st.downs, 0);
    assert_states(seen, 1, (int[]){1});
    close_loop(&loop, sub);
    cr_assert_eq(seen->nstates, 1, "a callback ran after free");
    sd_redis_free(admin);
}

Test(redis_sub, pattern_messages_name_their_pattern) {
    sd_redis_sub *sub = sub_new(&loop, NULL, seen);
    cr_assert_eq(sd_redis_sub_psubscribe(sub, "user:*"), 0);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "user:1"), 0);
    cr_assert_eq(sd_redis_sub_psubscribe(sub, SD_REDIS_SUB_PING_PATTERN), -EINVAL);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "barrier"), 0);
    wait_for(&loop, &seen->ups, 1, "did not come up");

    sd_redis *admin = test_redis_connect(test_target_url(server));
    /* "user:1" matches both the channel and the pattern: Redis sends it twice. */
    cr_assert_eq(publish(admin, "user:1", "one", 3), 2);
    cr_assert_eq(publish(admin, "user:2", "two", 3), 1);
    cr_assert_eq(publish(admin, "group:1", "no", 2), 0);
    barrier(&loop, admin, seen, "barrier");
    cr_assert_eq(seen->msgs, 4);
    int channel_hits = 0, pattern_hits = 0;
    for (int i = 0; i < 2; i++) {
        cr_assert_str_eq(seen->m[i].channel, "user:1");
        cr_assert_eq(memcmp(seen->m[i].payload, "one", 3), 0);
        if (seen->m[i].has_pattern) {
            cr_assert_str_eq(seen->m[i].pattern, "user:*");
            pattern_hits++;
        } else {
            channel_hits++;
        }
    }
    cr_assert_eq(channel_hits, 1);
    cr_assert_eq(pattern_hits, 1);
    cr_assert_str_eq(seen->m[2].channel, "user:2");
    cr_assert_eq(seen->m[2].has_pattern, 1);
    cr_assert_str_eq(seen->m[2].pattern, "user:*");

    /* Our own ping pattern's channel never reaches the owner. */
    cr_assert_eq(publish(admin, SD_REDIS_SUB_PING_PATTERN, "x", 1), 1);
    barrier(&loop, admin, seen, "barrier");
    cr_assert_eq(seen->msgs, 5);
    assert_states(seen, 1, (int[]){1});
    sub_finish(&loop, sub, admin);
}

Test(redis_sub, unsubscribe_stops_delivery_at_once) {
    sd_redis_sub_opts o = quick_opts();
    o.ping_interval_ms = 10;
    o.ping_timeout_ms = 5000;
    sd_redis_sub *sub = sub_new(&loop, &o, seen);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "a"), 0);
    cr_assert_eq(sd_redis_sub_psubscribe(sub, "p:*"), 0);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "barrier"), 0);
    wait_for(&loop, &seen->ups, 1, "did not come up");

    sd_redis *admin = test_redis_connect(test_target_url(server));
    seen->in_api = 1;
    cr_assert_eq(sd_redis_sub_unsubscribe(sub, "a"), 0);
    cr_assert_eq(sd_redis_sub_punsubscribe(sub, "p:*"), 0);
    cr_assert_eq(sd_redis_sub_unsubscribe(sub, "a"), -ENOENT);
    cr_assert_eq(sd_redis_sub_punsubscribe(sub, "nothing:*"), -ENOENT);
    seen->in_api = 0;
    /* The UNSUBSCRIBEs are written when the loop next runs, so Redis still counts us here and
     * sends these two: they must be dropped on arrival. */
    cr_assert_eq(publish(admin, "a", "late", 4), 1);
    cr_assert_eq(publish(admin, "p:1", "late", 4), 1);
    barrier(&loop, admin, seen, "barrier");
    /* Two more PING answers: the second PING was sent after the UNSUBSCRIBEs, so Redis has
     * processed them. */
    sd_redis_sub_stats st;
    sd_redis_sub_stats_get(sub, &st);
    run_until_pongs(&loop, sub, st.pongs + 2);
    cr_assert_eq(publish(admin, "a", "after", 5), 0, "Redis still has the subscription");
    cr_assert_eq(publish(admin, "p:1", "after", 5), 0);
    barrier(&loop, admin, seen, "barrier");
    cr_assert_eq(seen->msgs, 2, "only the two barriers");
    assert_states(seen, 1, (int[]){1});
    sub_finish(&loop, sub, admin);
}

Test(redis_sub, subscribe_while_up_is_quiet_and_takes_effect_once_confirmed) {
    sd_redis_sub *sub = sub_up_on_a(&loop, NULL, seen, 0);
    seen->in_api = 1;
    cr_assert_eq(sd_redis_sub_subscribe(sub, "b"), 0);
    seen->in_api = 0;
    cr_assert_eq(sd_redis_sub_unconfirmed(sub), 1);
    cr_assert(sd_redis_sub_is_up(sub), "a new subscription does not take the others down");
    run_until_confirmed(&loop, sub);
    sd_redis *admin = test_redis_connect(test_target_url(server));
    barrier(&loop, admin, seen, "b");
    cr_assert_eq(seen->msgs, 1);
    assert_states(seen, 1, (int[]){1});
    sub_finish(&loop, sub, admin);
}

Test(redis_sub, up_waits_for_every_confirmation) {
    sd_redis_sub *sub = sub_new(&loop, NULL, seen);
    /* Enough confirmations to arrive in several reads. */
    for (int i = 0; i < 2000; i++) {
        char name[32];
        snprintf(name, sizeof name, "channel:%d", i);
        cr_assert_eq(sd_redis_sub_subscribe(sub, name), 0);
    }
    cr_assert_eq(sd_redis_sub_unconfirmed(sub), 2000);
    wait_for(&loop, &seen->ups, 1, "did not come up");
    cr_assert_eq(seen->unconfirmed_at_up[0], 0, "up was reported before every confirmation");
    sd_redis *admin = test_redis_connect(test_target_url(server));
    barrier(&loop, admin, seen, "channel:1999");
    assert_states(seen, 1, (int[]){1});
    sub_finish(&loop, sub, admin);
}

Test(redis_sub, auth_from_the_url) {
    test_target_each(server, "CONFIG SET requirepass s3cret"); /* every node of a cluster */
    char url[128];
    snprintf(url, sizeof url, "redis://:s3cret@127.0.0.1:%d", test_target_port(server));
    sd_redis *admin = test_redis_connect(url);

    snprintf(url, sizeof url, "redis://:s3cret@127.0.0.1:%d/5", test_target_port(server));
    sd_redis_sub *sub = sub_new_url(&loop, url, NULL, seen);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "secured"), 0);
    wait_for(&loop, &seen->ups, 1, "did not come up");
    /* Databases do not matter to pub/sub: the subscriber's URL says 5 (and it sends no SELECT),
     * the publisher is on 3 (a cluster has database 0 only). */
    if (!test_target_is_cluster()) {
        redisReply *reply = sd_redis_command(admin, NULL, "SELECT 3");
        cr_assert_not_null(reply);
        cr_assert_eq(reply->type, REDIS_REPLY_STATUS);
        freeReplyObject(reply);
    }
    barrier(&loop, admin, seen, "secured");
    assert_states(seen, 1, (int[]){1});
    sub_finish(&loop, sub, admin);
}

/* ---- Going down and coming back ------------------------------------------------------------- */

/* After an up that follows a down, messages on every channel and pattern arrive again. */
static void assert_resubscribed(uv_loop_t *loop, sd_redis *admin, struct rec *seen) {
    int before = seen->msgs;
    cr_assert_eq(publish(admin, "a", "again", 5), 1, "not resubscribed to the channel");
    cr_assert_eq(publish(admin, "p:1", "again", 5), 1, "not resubscribed to the pattern");
    wait_for(loop, &seen->msgs, before + 2, "a message did not arrive");
    cr_assert_str_eq(seen->m[before].channel, "a");
    cr_assert_str_eq(seen->m[before + 1].channel, "p:1");
    cr_assert_str_eq(seen->m[before + 1].pattern, "p:*");
}

Test(redis_sub, client_kill_goes_down_then_up_and_resubscribes) {
    sd_redis_sub_opts o = quick_opts();
    sd_redis_sub *sub = sub_up_on_a(&loop, &o, seen, 1);

    sd_redis *admin = test_redis_connect(test_target_url(server));
    for (int round = 1; round <= 2; round++) {
        cr_assert_eq(test_redis_int(admin, "CLIENT KILL TYPE pubsub"), 1);
        wait_for(&loop, &seen->downs, round, "the kill was not noticed");
        wait_for(&loop, &seen->ups, round + 1, "did not come back");
        cr_assert_eq(seen->unconfirmed_at_up[round], 0);
        assert_resubscribed(&loop, admin, seen);
    }
    assert_states(seen, 5, (int[]){1, 0, 1, 0, 1});
    sd_redis_sub_stats st;
    sd_redis_sub_stats_get(sub, &st);
    cr_assert_eq(st.ups, 3);
    cr_assert_eq(st.downs, 2);
    sub_finish(&loop, sub, admin);
}

Test(redis_sub, restart_on_the_same_port_goes_down_then_up_and_resubscribes) {
    sd_redis_sub_opts o = quick_opts();
    sd_redis_sub *sub = sub_up_on_a(&loop, &o, seen, 1);

    cr_assert_eq(test_target_halt(server), 0);
    wait_for(&loop, &seen->downs, 1, "the loss was not noticed");
    cr_assert(!sd_redis_sub_is_up(sub));
    cr_assert_eq(sd_redis_sub_unconfirmed(sub), 2);
    cr_assert_eq(test_target_restart(server), 0);
    wait_for(&loop, &seen->ups, 2, "did not come back after the restart");
    cr_assert_eq(seen->unconfirmed_at_up[1], 0);

    sd_redis *admin = test_redis_connect(test_target_url(server));
    assert_resubscribed(&loop, admin, seen);
    assert_states(seen, 3, (int[]){1, 0, 1});
    sub_finish(&loop, sub, admin);
}

Test(redis_sub, pings_are_answered_and_keep_an_idle_connection_up) {
    sd_redis_sub_opts o = quick_opts();
    o.ping_interval_ms = 10;
    o.ping_timeout_ms = 5000; /* generous: this test is about answers, not speed */
    sd_redis_sub *sub = sub_up_on_a(&loop, &o, seen, 0);
    run_until_pongs(&loop, sub, 20);
    assert_states(seen, 1, (int[]){1});
    sub_finish(&loop, sub, NULL);
}

Test(redis_sub, frozen_server_is_noticed_by_the_ping_deadline) {
    sd_redis_sub_opts o = quick_opts();
    o.ping_interval_ms = 20;
    o.ping_timeout_ms = 1000; /* long enough for a loaded machine, short enough for a test */
    o.redis.connect_timeout_ms = 1000;
    sd_redis_sub *sub = sub_up_on_a(&loop, &o, seen, 1);
    run_until_pongs(&loop, sub, 2);

    /* A stopped process keeps its sockets open: only the missing PING answer can tell. */
    cr_assert_eq(test_target_signal(server, SIGSTOP), 0);
    wait_for(&loop, &seen->downs, 1, "a frozen server was not noticed");
    cr_assert_eq(seen->ups, 1);
    cr_assert_eq(test_target_signal(server, SIGCONT), 0);
    wait_for(&loop, &seen->ups, 2, "did not come back after the server woke up");

    sd_redis *admin = test_redis_connect(test_target_url(server));
    assert_resubscribed(&loop, admin, seen);
    assert_states(seen, 3, (int[]){1, 0, 1});
    sub_finish(&loop, sub, admin);
}

/* ---- Freeing -------------------------------------------------------------------------------- */

Test(redis_sub, free_of_null_is_a_no_op) {
    sd_redis_sub_free(NULL);
}

Test(redis_sub, free_while_connecting_to_nothing) {
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", test_closed_port());
    sd_redis_sub_opts o = quick_opts();
    sd_redis_sub *sub = sub_new_url(&loop, url, &o, seen);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "a"), 0);
    /* A few refused attempts, then free while the next one is in progress or waiting. */
    for (int i = 0; i < 20; i++)
        run_once(&loop);
    cr_assert(!sd_redis_sub_is_up(sub));
    close_loop(&loop, sub);
    cr_assert_eq(seen->nstates, 0, "never up, so never down either");
}

Test(redis_sub, free_while_subscribing_to_a_frozen_server) {
    cr_assert_eq(test_target_signal(server, SIGSTOP), 0);
    sd_redis_sub_opts o = quick_opts();
    o.redis.connect_timeout_ms = 60000; /* stays in the handshake */
    sd_redis_sub *sub = sub_new(&loop, &o, seen);
    cr_assert_eq(sd_redis_sub_subscribe(sub, "a"), 0);
    cr_assert_eq(sd_redis_sub_psubscribe(sub, "p:*"), 0);
    /* The kernel accepts the connection for the stopped server; the subscribe commands then
     * wait in hiredis for replies that never come. */
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    close_loop(&loop, sub);
    cr_assert_eq(seen->nstates, 0);
    cr_assert_eq(test_target_signal(server, SIGCONT), 0);
}

Test(redis_sub, free_while_down) {
    sd_redis_sub_opts o = quick_opts();
    sd_redis_sub *sub = sub_up_on_a(&loop, &o, seen, 0);
    cr_assert_eq(test_target_halt(server), 0);
    wait_for(&loop, &seen->downs, 1, "the loss was not noticed");
    close_loop(&loop, sub);
    assert_states(seen, 2, (int[]){1, 0});
    cr_assert_eq(test_target_restart(server), 0);
}

Test(redis_sub, free_from_inside_the_message_callback) {
    sub_up_on_a(&loop, NULL, seen, 0); /* freed from its own callback */
    sd_redis *admin = test_redis_connect(test_target_url(server));
    /* Three messages, likely read in one go: the first frees, the others must not arrive. */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(publish(admin, "a", "x", 1), 1);
    seen->free_on_msg = 1;
    wait_for(&loop, &seen->freed, 1, "the subscriber was not freed");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    cr_assert_eq(seen->msgs, 1);
    assert_states(seen, 1, (int[]){1});
    sd_redis_free(admin);
}

Test(redis_sub, free_from_inside_the_down_callback) {
    sd_redis_sub_opts o = quick_opts();
    sub_up_on_a(&loop, &o, seen, 0); /* freed from its own callback */
    seen->free_on_down = 1;
    sd_redis *admin = test_redis_connect(test_target_url(server));
    cr_assert_eq(test_redis_int(admin, "CLIENT KILL TYPE pubsub"), 1);
    wait_for(&loop, &seen->freed, 1, "the subscriber was not freed");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    assert_states(seen, 2, (int[]){1, 0});
    sd_redis_free(admin);
}
