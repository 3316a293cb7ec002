/*
 * test_webhook_dedupe.c - webhook/dedupe.h, the receiver's per-webhook-id marks, against a real
 * redis-server and a real 3-master Redis Cluster: the first delivery claims, duplicates see
 * IN_FLIGHT then DONE, a failed command releases, the mark is renewed while the command runs and
 * expires when its runner is gone, a stale runner cannot release or overwrite a newer one, a
 * storm of duplicates claims once. Every callback is counted.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "dedupe.h"
#include "redis_cluster_server.h"
#include "redis_server.h"
#include "sd.h"
#include "support.h"

/* One test's Redis (single or cluster), a loop, an async connection with the scripts, and a
 * sync connection to look at the keys. */
typedef struct rig {
    sd_redis_server *single;
    sd_redis_cluster_server *cluster;
    const char *url;
    uv_loop_t loop;
    sd_aredis *ar;
    sd_redis *sync;
} rig;

static rig *rig_open(int cluster) {
    rig *g = sd_xcalloc(1, sizeof *g);
    if (cluster) {
        g->cluster = test_redis_cluster_start(0);
        g->url = sd_redis_cluster_server_url(g->cluster);
    } else {
        g->single = test_redis_start(NULL);
        g->url = sd_redis_server_url(g->single);
    }
    cr_assert_eq(uv_loop_init(&g->loop), 0);
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(g->url, &u, err, sizeof err), 0, "%s", err);
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = 5000;
    opts.scripts = wh_dedupe_scripts(&opts.nscripts);
    cr_assert_eq(sd_aredis_new(&g->loop, &u, &opts, &g->ar), 0);
    sd_redis_url_clear(&u);
    cr_assert_eq(sd_aredis_wait_connected(g->ar, 10000), 0);
    g->sync = test_redis_connect(g->url);
    return g;
}

static void rig_close(rig *g) {
    sd_aredis_free(g->ar);
    uv_run(&g->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&g->loop), 0, "a handle was left on the loop");
    sd_redis_free(g->sync);
    if (g->cluster)
        sd_redis_cluster_server_stop(g->cluster);
    else
        sd_redis_server_stop(g->single);
    free(g);
}

static wh_dedupe *dedupe_new(rig *g, int lease_ms, int renew_ms) {
    wh_dedupe_opts o;
    wh_dedupe_opts_default(&o);
    o.lease_ms = lease_ms;
    o.renew_ms = renew_ms;
    o.retention_ms = 3600 * 1000;
    wh_dedupe *d = wh_dedupe_new(&g->loop, g->ar, &o);
    cr_assert(d);
    return d;
}

/* ---- begin and finish, waited for ---- */

typedef struct began {
    int calls, err, in_call;
    wh_dedupe_state state;
    wh_claim *claim;
} began;

static void on_began(int err, wh_dedupe_state state, wh_claim *claim, void *udata) {
    began *b = udata;
    cr_assert_eq(b->in_call, 0, "a callback ran inside the call that started it");
    b->calls++;
    b->err = err;
    b->state = state;
    b->claim = claim;
    cr_assert_eq(claim != NULL, err == 0 && state == WH_DEDUPE_CLAIMED);
}

static void run_until(rig *g, const int *calls, int n) {
    uint64_t until = sd_now_ms() + 20000;
    while (*calls < n && sd_now_ms() < until)
        uv_run(&g->loop, UV_RUN_ONCE);
    cr_assert_eq(*calls, n, "%d of %d callbacks ran", *calls, n);
}

static began begin(rig *g, wh_dedupe *d, const char *id) {
    began b = {0};
    b.in_call = 1;
    cr_assert_eq(wh_dedupe_begin(d, id, on_began, &b), 0);
    b.in_call = 0;
    run_until(g, &b.calls, 1);
    cr_assert_eq(b.err, 0, "%s", sd_strerror(b.err));
    return b;
}

typedef struct finished {
    int calls, err, in_call;
    wh_claim_result result;
} finished;

static void on_finished(int err, wh_claim_result result, void *udata) {
    finished *f = udata;
    cr_assert_eq(f->in_call, 0, "a callback ran inside the call that started it");
    f->calls++;
    f->err = err;
    f->result = result;
}

static wh_claim_result finish(rig *g, wh_claim *c, int succeeded) {
    finished f = {0};
    f.in_call = 1;
    cr_assert_eq(wh_claim_finish(c, succeeded, on_finished, &f), 0);
    f.in_call = 0;
    run_until(g, &f.calls, 1);
    cr_assert_eq(f.err, 0, "%s", sd_strerror(f.err));
    return f.result;
}

static long long key_pttl(rig *g, const char *id) {
    return test_redis_int(g->sync, "PTTL whrx:{%s}", id);
}

/* ---- the behaviours, each run on a single Redis and on a cluster ---- */

static void first_claims_duplicates_wait_then_see_done(int cluster) {
    rig *g = rig_open(cluster);
    wh_dedupe *d = dedupe_new(g, 30000, 10000);
    /* Ids whose keys land on different slots (and so, on a cluster, different masters). */
    const char *ids[] = {"msg_a", "msg_b", "msg_c", "msg_d", "msg_e", "msg_f"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        began first = begin(g, d, ids[i]);
        cr_assert_eq(first.state, WH_DEDUPE_CLAIMED);
        long long ttl = key_pttl(g, ids[i]);
        cr_assert(ttl > 0 && ttl <= 30000, "the in-flight mark has the lease as its TTL: %lld",
                  ttl);
        began dup = begin(g, d, ids[i]);
        cr_assert_eq(dup.state, WH_DEDUPE_IN_FLIGHT);
        cr_assert_eq(finish(g, first.claim, 1), WH_CLAIM_RECORDED);
        began after = begin(g, d, ids[i]);
        cr_assert_eq(after.state, WH_DEDUPE_DONE);
        ttl = key_pttl(g, ids[i]);
        cr_assert(ttl > 30000 && ttl <= 3600 * 1000,
                  "the done record is kept for the retention: %lld", ttl);
    }
    wh_dedupe_free(d);
    rig_close(g);
}

static void a_failed_command_releases_the_mark(int cluster) {
    rig *g = rig_open(cluster);
    wh_dedupe *d = dedupe_new(g, 30000, 10000);
    began first = begin(g, d, "msg_fail");
    cr_assert_eq(first.state, WH_DEDUPE_CLAIMED);
    cr_assert_eq(finish(g, first.claim, 0), WH_CLAIM_RECORDED);
    cr_assert_eq(test_redis_int(g->sync, "EXISTS whrx:{msg_fail}"), 0);
    began retry = begin(g, d, "msg_fail");
    cr_assert_eq(retry.state, WH_DEDUPE_CLAIMED, "the retry runs the command again");
    cr_assert_eq(finish(g, retry.claim, 1), WH_CLAIM_RECORDED);
    cr_assert_eq(begin(g, d, "msg_fail").state, WH_DEDUPE_DONE);
    wh_dedupe_free(d);
    rig_close(g);
}

/* A run whose lease ran out (the key deleted here, as expiry would) and was claimed again can
 * neither release nor overwrite the newer run's mark. */
static void a_stale_run_cannot_touch_a_newer_mark(int cluster) {
    rig *g = rig_open(cluster);
    wh_dedupe *d = dedupe_new(g, 30000, 10000);
    began old1 = begin(g, d, "msg_s1");
    cr_assert_eq(old1.state, WH_DEDUPE_CLAIMED);
    cr_assert_eq(test_redis_int(g->sync, "DEL whrx:{msg_s1}"), 1);
    began newer = begin(g, d, "msg_s1");
    cr_assert_eq(newer.state, WH_DEDUPE_CLAIMED);
    cr_assert_eq(finish(g, old1.claim, 0), WH_CLAIM_TAKEN, "a stale run released a newer mark");
    cr_assert_eq(begin(g, d, "msg_s1").state, WH_DEDUPE_IN_FLIGHT);

    began old2 = begin(g, d, "msg_s2");
    cr_assert_eq(test_redis_int(g->sync, "DEL whrx:{msg_s2}"), 1);
    began newer2 = begin(g, d, "msg_s2");
    cr_assert_eq(finish(g, old2.claim, 1), WH_CLAIM_TAKEN, "a stale run overwrote a newer mark");
    cr_assert_eq(begin(g, d, "msg_s2").state, WH_DEDUPE_IN_FLIGHT);
    cr_assert_eq(finish(g, newer2.claim, 1), WH_CLAIM_RECORDED);
    cr_assert_eq(finish(g, newer.claim, 1), WH_CLAIM_RECORDED);
    cr_assert_eq(begin(g, d, "msg_s1").state, WH_DEDUPE_DONE);

    /* A succeeded run whose mark vanished still records done. */
    began lone = begin(g, d, "msg_s3");
    cr_assert_eq(test_redis_int(g->sync, "DEL whrx:{msg_s3}"), 1);
    cr_assert_eq(finish(g, lone.claim, 1), WH_CLAIM_VANISHED);
    cr_assert_eq(begin(g, d, "msg_s3").state, WH_DEDUPE_DONE);
    wh_dedupe_free(d);
    rig_close(g);
}

/* 50 deliveries of one id at once: exactly one claims. */
typedef struct storm {
    int calls, claimed, in_flight, done, errors;
    wh_claim *claim;
} storm;

static void on_storm(int err, wh_dedupe_state state, wh_claim *claim, void *udata) {
    storm *s = udata;
    s->calls++;
    if (err)
        s->errors++;
    else if (state == WH_DEDUPE_CLAIMED)
        s->claimed++, s->claim = claim;
    else if (state == WH_DEDUPE_IN_FLIGHT)
        s->in_flight++;
    else if (state == WH_DEDUPE_DONE)
        s->done++;
}

static void a_duplicate_storm_claims_once(int cluster) {
    rig *g = rig_open(cluster);
    wh_dedupe *d = dedupe_new(g, 30000, 10000);
    storm s = {0};
    for (int i = 0; i < 50; i++)
        cr_assert_eq(wh_dedupe_begin(d, "msg_storm", on_storm, &s), 0);
    run_until(g, &s.calls, 50);
    cr_assert_eq(s.errors, 0);
    cr_assert_eq(s.claimed, 1);
    cr_assert_eq(s.in_flight, 49);
    cr_assert_eq(finish(g, s.claim, 1), WH_CLAIM_RECORDED);
    storm after = {0};
    for (int i = 0; i < 50; i++)
        cr_assert_eq(wh_dedupe_begin(d, "msg_storm", on_storm, &after), 0);
    run_until(g, &after.calls, 50);
    cr_assert_eq(after.done, 50);
    wh_dedupe_free(d);
    rig_close(g);
}

TestSuite(wh_dedupe, .timeout = 120);

Test(wh_dedupe, first_claims_duplicates_wait_then_see_done) {
    first_claims_duplicates_wait_then_see_done(0);
}
Test(wh_dedupe, a_failed_command_releases_the_mark) {
    a_failed_command_releases_the_mark(0);
}
Test(wh_dedupe, a_stale_run_cannot_touch_a_newer_mark) {
    a_stale_run_cannot_touch_a_newer_mark(0);
}
Test(wh_dedupe, a_duplicate_storm_claims_once) {
    a_duplicate_storm_claims_once(0);
}

TestSuite(wh_dedupe_cluster, .timeout = 180);

Test(wh_dedupe_cluster, first_claims_duplicates_wait_then_see_done) {
    first_claims_duplicates_wait_then_see_done(1);
}
Test(wh_dedupe_cluster, a_failed_command_releases_the_mark) {
    a_failed_command_releases_the_mark(1);
}
Test(wh_dedupe_cluster, a_stale_run_cannot_touch_a_newer_mark) {
    a_stale_run_cannot_touch_a_newer_mark(1);
}
Test(wh_dedupe_cluster, a_duplicate_storm_claims_once) {
    a_duplicate_storm_claims_once(1);
}

/* ---- time: renewal and expiry (single Redis; the cluster runs the same scripts) ---- */

/* The mark outlives its lease while the command runs: renewed every 50 ms against a lease of
 * 1 s, it is still there after 30 renewals (1.5 s at least), and a duplicate still waits. */
Test(wh_dedupe, the_mark_is_renewed_while_the_command_runs) {
    rig *g = rig_open(0);
    wh_dedupe *d = dedupe_new(g, 1000, 50);
    began first = begin(g, d, "msg_long");
    cr_assert_eq(first.state, WH_DEDUPE_CLAIMED);
    uint64_t t0 = sd_now_ms(), until = t0 + 30000;
    while (wh_claim_renewals(first.claim) < 30 && !wh_claim_lost(first.claim) &&
           sd_now_ms() < until)
        uv_run(&g->loop, UV_RUN_ONCE);
    cr_assert_geq(wh_claim_renewals(first.claim), 30);
    cr_assert_geq(sd_now_ms() - t0, 1000, "30 renewals take longer than the lease");
    cr_assert_eq(wh_claim_lost(first.claim), 0);
    cr_assert_eq(begin(g, d, "msg_long").state, WH_DEDUPE_IN_FLIGHT);
    cr_assert_eq(finish(g, first.claim, 1), WH_CLAIM_RECORDED);
    wh_dedupe_free(d);
    rig_close(g);
}

/* A mark that vanished while its command runs is noticed at the next renewal. */
Test(wh_dedupe, a_vanished_mark_is_reported_lost) {
    rig *g = rig_open(0);
    wh_dedupe *d = dedupe_new(g, 5000, 50);
    began first = begin(g, d, "msg_gone");
    cr_assert_eq(test_redis_int(g->sync, "DEL whrx:{msg_gone}"), 1);
    uint64_t until = sd_now_ms() + 20000;
    while (!wh_claim_lost(first.claim) && sd_now_ms() < until)
        uv_run(&g->loop, UV_RUN_ONCE);
    cr_assert(wh_claim_lost(first.claim));
    cr_assert_eq(test_redis_int(g->sync, "EXISTS whrx:{msg_gone}"), 0,
                 "a lost mark is not brought back by a renewal");
    cr_assert_eq(finish(g, first.claim, 1), WH_CLAIM_VANISHED);
    wh_dedupe_free(d);
    rig_close(g);
}

/* A receiver that died mid-command leaves a mark that expires after its lease; the next
 * delivery then claims. (The dead runner's mark is written here as it would have been.) */
Test(wh_dedupe, a_dead_runners_mark_expires_and_the_retry_claims) {
    rig *g = rig_open(0);
    wh_dedupe *d = dedupe_new(g, 30000, 10000);
    redisReply *r = sd_redis_command(g->sync, NULL, "SET whrx:{msg_dead} run:0123 PX 300");
    cr_assert(r);
    freeReplyObject(r);
    cr_assert_eq(begin(g, d, "msg_dead").state, WH_DEDUPE_IN_FLIGHT);
    TEST_EVENTUALLY(test_redis_int(g->sync, "EXISTS whrx:{msg_dead}") == 0, 10000);
    began retry = begin(g, d, "msg_dead");
    cr_assert_eq(retry.state, WH_DEDUPE_CLAIMED);
    cr_assert_eq(finish(g, retry.claim, 1), WH_CLAIM_RECORDED);
    wh_dedupe_free(d);
    rig_close(g);
}

Test(wh_dedupe, bad_calls_never_run_their_callback) {
    rig *g = rig_open(0);
    wh_dedupe *d = dedupe_new(g, 30000, 10000);
    began b = {0};
    cr_assert_eq(wh_dedupe_begin(d, "", on_began, &b), -EINVAL);
    wh_dedupe_opts o;
    wh_dedupe_opts_default(&o);
    o.renew_ms = o.lease_ms;
    cr_assert_null(wh_dedupe_new(&g->loop, g->ar, &o));
    began held = begin(g, d, "msg_twice");
    cr_assert_eq(finish(g, held.claim, 1), WH_CLAIM_RECORDED);
    uv_run(&g->loop, UV_RUN_NOWAIT);
    cr_assert_eq(b.calls, 0);
    wh_dedupe_free(d);
    rig_close(g);
}

/* Freeing the dedupe with a claim held abandons it: its timer closes, nothing leaks, and the
 * mark stays until its lease runs out. */
Test(wh_dedupe, freeing_with_a_claim_held_abandons_it) {
    rig *g = rig_open(0);
    wh_dedupe *d = dedupe_new(g, 30000, 100);
    began held = begin(g, d, "msg_abandon");
    cr_assert_eq(held.state, WH_DEDUPE_CLAIMED);
    wh_dedupe_free(d);
    cr_assert_eq(test_redis_int(g->sync, "EXISTS whrx:{msg_abandon}"), 1);
    rig_close(g); /* asserts the loop closes with no handle left */
}

/* A claim whose reply timed out may still be written when Redis gets to it, and nobody would
 * renew or finish that mark: every retry would get 409 for a whole lease (30 s here). It is
 * taken back: the release of its own token, sent after it, drops it as soon as Redis runs. */
Test(wh_dedupe, a_claim_whose_reply_timed_out_is_taken_back) {
    rig *g = rig_open(0);
    wh_dedupe_opts o;
    wh_dedupe_opts_default(&o);
    o.retention_ms = 3600 * 1000;
    o.timeout_ms = 200;
    wh_dedupe *d = wh_dedupe_new(&g->loop, g->ar, &o);
    cr_assert(d);
    cr_assert_eq(sd_redis_server_signal(g->single, SIGSTOP), 0);
    began b = {0};
    b.in_call = 1;
    cr_assert_eq(wh_dedupe_begin(d, "msg_late", on_began, &b), 0);
    b.in_call = 0;
    run_until(g, &b.calls, 1);
    cr_assert_eq(sd_redis_server_signal(g->single, SIGCONT), 0);
    cr_assert_eq(b.err, SD_ETIMEDOUT, "%s", sd_strerror(b.err));
    /* Redis now runs the claim's SET, then the release: the mark goes, long before its lease. */
    uint64_t until = sd_now_ms() + 10000;
    long long exists = 1;
    while (exists && sd_now_ms() < until) {
        uv_run(&g->loop, UV_RUN_NOWAIT);
        exists = test_redis_int(g->sync, "EXISTS whrx:{msg_late}");
        if (exists) {
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    cr_assert_eq(exists, 0, "the timed-out claim's mark stayed (PTTL %lld ms)",
                 key_pttl(g, "msg_late"));
    began retry = begin(g, d, "msg_late");
    cr_assert_eq(retry.state, WH_DEDUPE_CLAIMED);
    cr_assert_eq(finish(g, retry.claim, 1), WH_CLAIM_RECORDED);
    wh_dedupe_free(d);
    rig_close(g);
}
