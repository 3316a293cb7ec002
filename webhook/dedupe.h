/*
 * dedupe.h - the receiver's side of idempotent webhooks: apply each webhook-id once, over
 * at-least-once delivery.
 *
 * A sender retries until it sees a 2xx, so a receiver gets the same message more than once:
 * after a timeout that hid a success, after a crash, on a replay. The receiver makes the side
 * effect happen once by keeping one Redis key per webhook-id:
 *
 *                 begin: SET NX GET PX lease
 *   (no key) ----------------------------------> RUNNING  "run:<token>", PX lease_ms,
 *      ^  ^                                        |  |    renewed every renew_ms while the
 *      |  |     finish(failed): DEL if ours        |  |    command runs (wh-renew.lua)
 *      |  +----------------------------------------+  |
 *      |  |     lease ran out (the receiver died       | finish(succeeded): wh-finish.lua
 *      |  +---- or stalled past it): PX expiry         v
 *      +--------------------------------------------- DONE  "done", PX retention_ms
 *                 retention ran out: PX expiry
 *
 * What a delivery gets from wh_dedupe_begin(), and what a receiver answers:
 *   WH_DEDUPE_CLAIMED    first delivery: run the command, then wh_claim_finish()
 *                        (200 when it succeeded, 500 when not: the sender retries)
 *   WH_DEDUPE_IN_FLIGHT  another delivery of the same id is running it now: 409, retry later
 *   WH_DEDUPE_DONE       already applied: 200 without running anything
 *
 * Invariants
 *  1. Only the run holding the mark (its random token in the value) renews, finishes or
 *     releases it: every change is a script that compares the value first. A run whose lease
 *     ran out and was claimed by a retry cannot release or overwrite the retry's mark.
 *  2. A failed command releases the mark at once, so the sender's next retry runs it again;
 *     a receiver that dies leaves a mark that expires after lease_ms, with the same effect.
 *  3. A succeeded command writes "done" even when its mark has vanished (lease ran out,
 *     Redis restarted without persistence): the effect happened, so a retry must not repeat
 *     it. Only a mark that another run holds now is left alone (wh_claim_finish reports it).
 *  4. "done" is kept retention_ms: set it to the sender's whole retry horizon plus the replay
 *     window you allow (the Standard Webhooks schedule retries for about 3 days; the default is
 *     7 days). A replay of an id older than that runs the command again: nothing remembers it.
 *     The spec's 5 minute timestamp tolerance is no substitute: a retry after 2 hours carries a
 *     fresh timestamp and the same id.
 *  5. Each key is one Redis key with the webhook-id as its hash tag (`<prefix>{<id>}`), and
 *     every command and script touches that key alone, so the same code runs on a single Redis
 *     and on Redis Cluster (common/ routes by the key's slot).
 *
 * Limits: if Redis answers a claim too late (SD_ETIMEDOUT) the SET may still have happened, and
 * nobody would renew or finish that mark: retries would get 409 for a whole lease (longer than a
 * short retry schedule lasts). So the claim is taken back at once: a release of its own token,
 * sent after it on the same connection, drops the mark if it was written. If that release is
 * lost too (the connection dropped), the mark expires after lease_ms. A command that outlives a
 * lease it could not renew (Redis down for longer than lease_ms) may run twice: the renewal
 * reports that (wh_claim_lost) and the finish says so. Exactly-once needs the side effect and
 * the done record in one transaction, which a shell command cannot give.
 *
 * Threading: one uv_loop, the sd_aredis's. Callbacks run later, never from inside the call that
 * started the operation; a call that fails returns a negative code and its callback never runs.
 */
#ifndef WH_DEDUPE_H
#define WH_DEDUPE_H

#include <stdint.h>
#include <uv.h>

#include "redis.h"

typedef struct wh_dedupe wh_dedupe;
typedef struct wh_claim wh_claim;

typedef struct wh_dedupe_opts {
    const char *prefix;   /* key prefix, copied; default "whrx:" (keys "whrx:{<id>}") */
    int lease_ms;         /* the in-flight mark's life without renewal; default 30000 */
    int renew_ms;         /* renewal period, < lease_ms; default lease_ms / 3 */
    int64_t retention_ms; /* how long "done" is kept; default 7 days */
    int timeout_ms;       /* each Redis call's deadline; 0: the connection's */
} wh_dedupe_opts;

void wh_dedupe_opts_default(wh_dedupe_opts *opts);

/* The scripts a Redis connection used by a dedupe should load in its handshake
 * (sd_redis_opts.scripts); *n gets their count. */
sd_script *const *wh_dedupe_scripts(size_t *n);

/*
 * Creates a dedupe on loop over redis (borrowed: it must outlive the dedupe's operations) with
 * opts (NULL: defaults; copied). Returns NULL for invalid opts (renew_ms >= lease_ms, a value
 * <= 0).
 */
wh_dedupe *wh_dedupe_new(uv_loop_t *loop, sd_aredis *redis, const wh_dedupe_opts *opts);

/*
 * Frees the dedupe. Claims still held are abandoned: their renewals stop, their marks expire
 * after lease_ms, and the wh_claim pointers become invalid. Free the Redis connection first
 * (its pending callbacks then run with SD_ECLOSED), then the dedupe, then run the loop so the
 * timers close. NULL is a no-op.
 */
void wh_dedupe_free(wh_dedupe *d);

typedef enum wh_dedupe_state {
    WH_DEDUPE_CLAIMED = 1, /* this delivery runs the command */
    WH_DEDUPE_IN_FLIGHT,   /* another delivery of this id is running it */
    WH_DEDUPE_DONE,        /* it has been applied */
} wh_dedupe_state;

/* err 0 and state; claim is non-NULL exactly when state is WH_DEDUPE_CLAIMED (the caller must
 * end it with wh_claim_finish). err < 0 (SD_ETIMEDOUT, SD_EDISCONNECTED, SD_EREDIS, SD_ECLOSED):
 * state 0, no claim. */
typedef void wh_dedupe_begin_cb(int err, wh_dedupe_state state, wh_claim *claim, void *udata);

/*
 * Looks up webhook-id id (borrowed) and claims it when nobody has. Returns 0, and cb runs once,
 * later; or SD_EDISCONNECTED / SD_ECLOSED / -EINVAL (empty id), and cb never runs.
 */
int wh_dedupe_begin(wh_dedupe *d, const char *id, wh_dedupe_begin_cb *cb, void *udata);

/* What finishing a claim did (see the scripts). */
typedef enum wh_claim_result {
    WH_CLAIM_RECORDED = 1, /* done recorded (succeeded) or mark released (failed) */
    WH_CLAIM_VANISHED,     /* succeeded; the mark had vanished, done recorded all the same */
    WH_CLAIM_TAKEN,        /* another run holds the mark or recorded done: nothing changed */
} wh_claim_result;

typedef void wh_claim_finish_cb(int err, wh_claim_result result, void *udata);

/*
 * Ends a claim: succeeded != 0 records done, 0 releases the mark. Renewals stop now. Returns 0
 * and cb runs once, later (err < 0 when Redis could not be reached: a done record may then be
 * missing, and the mark expires after lease_ms); or SD_EDISCONNECTED / SD_ECLOSED with cb never
 * run. The claim is freed by this call either way: do not use it afterwards.
 */
int wh_claim_finish(wh_claim *c, int succeeded, wh_claim_finish_cb *cb, void *udata);

/* Whether a renewal found the mark gone or someone else's (the command may run twice). */
int wh_claim_lost(const wh_claim *c);

/* How many renewals the claim has sent and Redis confirmed. */
uint64_t wh_claim_renewals(const wh_claim *c);

#endif
