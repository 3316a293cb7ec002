/*
 * jobqueue.h - an at-least-once job queue over Redis: visibility timeouts with fenced leases,
 * retries with capped exponential backoff and full jitter, dead letters, idempotency keys,
 * cancellation, and an "ack with effect" for effectively-once processing.
 *
 * A job is a record in Redis with an explicit state (jq_state); every transition is one Lua
 * script on Redis TIME (jobqueue.c draws the lifecycle and names the script of each arrow).
 * All keys of a queue share the hash tag {jq:<queue>}, so a queue lives in one slot of a
 * Redis Cluster and every script touches one slot.
 *
 * This header has three parts: the synchronous client (jq_client, over sd_redis: each call is
 * one round trip, a blocking reserve a few, within the configured deadline), for tools and
 * tests; the asynchronous client (jq_aclient, libuv over sd_aredis), for servers; and the
 * worker runtime (jq_worker) built on it.
 *
 * Errors: functions return 0 or a negative code: a JQ_E* code below, or a code of common/
 * (SD_ETIMEDOUT, SD_EDISCONNECTED, SD_EREDIS: redis.h). jq_strerror names either. An empty
 * queue is a result (zero jobs), not an error.
 *
 * Leases: a reserved job carries a lease token. Every call about a reserved job (ack, fail,
 * extend, release, progress) passes it, and a call whose token is not the job's current one,
 * or whose lease deadline has passed, is refused with JQ_ESTALE and changes nothing: a worker
 * whose lease expired cannot ack over the worker that holds the job now.
 */
#ifndef JQ_JOBQUEUE_H
#define JQ_JOBQUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "redis.h"

/* Error codes (negative, beside common/'s). */
enum {
    JQ_ESTALE = -20001,     /* the lease token is not the job's current one, or it expired */
    JQ_ENOTFOUND = -20002,  /* no such job (never existed, or past its retention) */
    JQ_EFULL = -20003,      /* the queue holds max_ready READY jobs: back-pressure */
    JQ_ECANCELLED = -20004, /* the job's cancel was requested: stop working on it */
    JQ_ESTATE = -20005,     /* the job is in a state that does not allow the call */
    JQ_EINVAL = -20006,     /* a bad argument (queue name, option out of range) */
    JQ_ETOOBIG = -20007,    /* a payload, result, progress or error text over its bound */
    JQ_EEVICTION = -20008,  /* Redis may evict keys: its maxmemory-policy is not noeviction */
};

/* Returns a static description of a JQ_E* code or of any code sd_strerror knows. */
const char *jq_strerror(int code);

/* A job's state. READY and DELAYED wait; RESERVED is leased to a worker; DONE, DEAD and
 * CANCELLED are terminal and kept for their retention time. */
typedef enum jq_state {
    JQ_STATE_READY,
    JQ_STATE_DELAYED,
    JQ_STATE_RESERVED,
    JQ_STATE_DONE,
    JQ_STATE_DEAD,
    JQ_STATE_CANCELLED,
} jq_state;

/* "ready", "delayed", ...; jq_state_parse returns 0 and the state, or JQ_EINVAL. */
const char *jq_state_name(jq_state s);
int jq_state_parse(const char *name, jq_state *out);

/* Ids and lease tokens are decimal numbers from one per-queue counter, kept as text. */
#define JQ_ID_MAX 24
/* The longest queue name. Names are 1 to JQ_QUEUE_MAX bytes of letters, digits and "-_.:". */
#define JQ_QUEUE_MAX 128
/* Priorities run from JQ_PRIORITY_MIN to JQ_PRIORITY_MAX; higher runs first, ties FIFO. */
#define JQ_PRIORITY_MIN (-1000)
#define JQ_PRIORITY_MAX 1000

typedef struct jq_config {
    char prefix[32];                /* key prefix (a schema version), default "jq3:" */
    size_t max_payload;             /* bytes, default 65536 */
    size_t max_result;              /* bytes of a result, progress or error text, default 4096 */
    int64_t done_retention_ms;      /* DONE jobs are kept this long, default 24 h */
    int64_t cancelled_retention_ms; /* CANCELLED jobs, default 24 h */
    int64_t dead_retention_ms;      /* dead letters, default 7 days */
    int64_t idempotency_ttl_ms;     /* an idempotency key's window, default 24 h */
    int64_t max_ready;              /* back-pressure bound on READY jobs, 0 (default): none */
    int64_t backoff_base_ms;        /* first retry's backoff cap, default 1000 */
    int64_t backoff_max_ms;         /* the backoff's cap, default 300000 (5 min) */
    int housekeep_batch;            /* jobs per kind one housekeeping round moves, default 100 */
    int timeout_ms;                 /* deadline of each Redis call, default 2000 */
} jq_config;

/* Fills *cfg with the defaults above. */
void jq_config_default(jq_config *cfg);

/* Checks *cfg; returns 0, or JQ_EINVAL with a message in err. */
int jq_config_validate(const jq_config *cfg, char *err, size_t errlen);

/* Whether name is a valid queue name (1). */
int jq_queue_name_valid(const char *name);

/*
 * The capped exponential backoff with full jitter of a job's attempt-th failure (attempt >= 1):
 * a delay drawn uniformly from [0, min(max_ms, base_ms * 2^(attempt-1))] with rnd (any 64
 * random bits). Never overflows, whatever attempt is. ("Exponential Backoff And Jitter", AWS
 * Architecture Blog, 2015.)
 */
int64_t jq_backoff_ms(int64_t base_ms, int64_t max_ms, int attempt, uint64_t rnd);

/* ---- The synchronous client -------------------------------------------------------------- */

typedef struct jq_client jq_client;

/* Connects to url (a single Redis or a cluster) and returns the client in *out. cfg NULL means
 * the defaults. Returns 0, JQ_EINVAL (bad config), or a connect error of sd_redis_connect. */
int jq_client_new(const sd_redis_url *url, const jq_config *cfg, jq_client **out);

/* Closes the connection and frees the client. NULL is a no-op. */
void jq_client_free(jq_client *c);

/* Checks that Redis will not evict the queue's keys (an evicted job is a lost job): returns 0
 * when its maxmemory-policy is noeviction, JQ_EEVICTION with a message naming the policy in err
 * otherwise, or a Redis error. A command starts with this and refuses to run on JQ_EEVICTION.
 * On a cluster it asks the node CONFIG GET reaches: check every master when they may differ. */
int jq_client_check_redis(jq_client *c, char *err, size_t errlen);

/* Options of one new job. */
typedef struct jq_enqueue_opts {
    int64_t delay_ms;            /* 0: READY now; else DELAYED until then */
    int priority;                /* default 0 */
    int max_attempts;            /* deliveries before DEAD, default 5 (1 to 1000) */
    const char *idempotency_key; /* NULL: none; else at most 256 bytes */
} jq_enqueue_opts;

void jq_enqueue_opts_default(jq_enqueue_opts *opts);

/* A new job for jq_enqueue_many: its payload (borrowed) and its options (NULL: defaults). */
typedef struct jq_new_job {
    const void *payload;
    size_t len;
    const jq_enqueue_opts *opts;
} jq_new_job;

/* What an enqueue returns per job: the id, and whether this call created it (0: an earlier
 * job with the same idempotency key, within its window, whose id this is). */
typedef struct jq_enqueued {
    char id[JQ_ID_MAX];
    int created;
} jq_enqueued;

/*
 * Enqueues one job. Returns 0 and fills *out, JQ_EFULL when the queue already holds
 * cfg.max_ready READY jobs (nothing is written, the idempotency key stays free), JQ_EINVAL,
 * JQ_ETOOBIG, or a Redis error (then the job may or may not exist: enqueue again with the same
 * idempotency key to find out without making a second).
 */
int jq_enqueue(jq_client *c, const char *queue, const void *payload, size_t len,
               const jq_enqueue_opts *opts, jq_enqueued *out);

/* Enqueues n jobs in one round trip, all or none: out[i] is the result of jobs[i]. The bound
 * counts all the jobs the call would create. Same returns as jq_enqueue. */
int jq_enqueue_many(jq_client *c, const char *queue, const jq_new_job *jobs, size_t n,
                    jq_enqueued *out);

/* A reserved job. The strings are owned: release them with jq_job_clear. */
typedef struct jq_job {
    char id[JQ_ID_MAX];
    char token[JQ_ID_MAX]; /* the lease token */
    int attempts;          /* deliveries so far, this one included */
    int max_attempts;
    int priority;
    int64_t lease_until_ms; /* Redis time the lease ends (extend moves it) */
    int64_t created_ms;     /* Redis time of the enqueue */
    char *payload;          /* NUL-terminated for convenience; payload_len bytes */
    size_t payload_len;
} jq_job;

/* Frees job's payload and zeroes it. NULL is a no-op. */
void jq_job_clear(jq_job *job);

/*
 * Reserves up to n jobs (1 to 1000) for visibility_ms (the lease, 1 ms to 24 h), highest
 * priority first, FIFO within a priority. Housekeeps first (due delayed jobs become READY,
 * expired leases go back to READY or to DEAD), bounded per call. Fills jobs[0..*got) (the caller
 * clears each). Returns 0 (also when *got is 0) or an error.
 */
int jq_reserve(jq_client *c, const char *queue, int n, int64_t visibility_ms, jq_job *jobs,
               size_t *got);

/*
 * Like jq_reserve, but when no job is ready waits up to wait_ms for one: blocked on the
 * queue's wake list (BLPOP), which every enqueue or retry pushes to, so it returns within a
 * round trip of an enqueue, and it wakes by itself when a delayed job falls due or a lease
 * expires. Returns 0 with *got 0 when wait_ms passed with nothing.
 */
int jq_reserve_wait(jq_client *c, const char *queue, int n, int64_t visibility_ms, int64_t wait_ms,
                    jq_job *jobs, size_t *got);

/* RESERVED -> DONE, storing result (len bytes, may be 0). Returns 0, JQ_ESTALE,
 * JQ_ENOTFOUND, JQ_ECANCELLED (a cancel was requested: the job is now CANCELLED, not DONE),
 * JQ_ETOOBIG or a Redis error. */
int jq_ack(jq_client *c, const char *queue, const jq_job *job, const void *result, size_t len);

/* One ack of a batch. */
typedef struct jq_ack_item {
    const jq_job *job;
    const void *result; /* may be NULL when len is 0 */
    size_t len;
} jq_ack_item;

/* Acks n jobs (1 to 1000) in one round trip. Returns 0 when the call ran, codes[i] then holding
 * jq_ack's result for items[i]; or an error for the whole call (codes untouched). */
int jq_ack_many(jq_client *c, const char *queue, const jq_ack_item *items, size_t n, int *codes);

/* The write an ack with effect makes, on the key <prefix>{jq:<queue>}:fx:<name> (in the
 * queue's slot, so one script can make both). */
typedef enum jq_effect_op {
    JQ_EFFECT_INCRBY, /* INCRBY key delta */
    JQ_EFFECT_SET,    /* SET key value */
    JQ_EFFECT_HSET,   /* HSET key <job id> value: one entry per job */
} jq_effect_op;

typedef struct jq_effect {
    jq_effect_op op;
    const char *name;  /* 1 to 128 bytes */
    int64_t delta;     /* INCRBY */
    const char *value; /* SET, HSET (NUL-terminated, at most max_result bytes) */
} jq_effect;

/* The full key of an effect's name (for reading it back); returns its length, or JQ_EINVAL. */
int jq_effect_key(const jq_client *c, const char *queue, const char *name, char *buf, size_t len);

/* RESERVED -> DONE and the effect, both or neither, in one script: the effect happens once
 * per job however often the job was delivered. Returns as jq_ack (no effect unless 0). */
int jq_ack_effect(jq_client *c, const char *queue, const jq_job *job, const void *result,
                  size_t len, const jq_effect *fx);

/* How a failure is handled. */
typedef struct jq_fail_opts {
    int permanent;          /* non-zero: DEAD now, whatever attempts remain */
    int64_t retry_after_ms; /* < 0 (default): the configured backoff; 0: READY now */
} jq_fail_opts;

/*
 * RESERVED -> DELAYED (or READY) for a retry, or DEAD when permanent or the job has used all
 * its attempts; error (NUL-terminated, may be NULL) is kept as the job's last error. opts NULL
 * means the backoff. *state (may be NULL) gets the state reached. Returns 0, JQ_ESTALE,
 * JQ_ENOTFOUND, JQ_ECANCELLED (now CANCELLED), JQ_ETOOBIG or a Redis error.
 */
int jq_fail(jq_client *c, const char *queue, const jq_job *job, const char *error,
            const jq_fail_opts *opts, jq_state *state);

/* Moves the lease deadline to ms (1 ms to 24 h) from now and updates job->lease_until_ms.
 * Returns 0, JQ_ESTALE (too late: the lease is gone), JQ_ENOTFOUND, or JQ_ECANCELLED (a cancel
 * was requested: the lease is left as it was; stop, then fail or release the job). */
int jq_extend(jq_client *c, const char *queue, jq_job *job, int64_t ms);

/* RESERVED -> READY at the front of its line, the delivery not counted (a graceful stop).
 * Releasing several jobs of one reserve, release the last first to keep their order.
 * Returns 0, JQ_ESTALE, JQ_ENOTFOUND or JQ_ECANCELLED (now CANCELLED). */
int jq_release(jq_client *c, const char *queue, const jq_job *job);

/* Records progress (len bytes) on a RESERVED job. Returns 0, JQ_ESTALE, JQ_ENOTFOUND,
 * JQ_ETOOBIG, or JQ_ECANCELLED (recorded, and a cancel was requested). */
int jq_progress(jq_client *c, const char *queue, const jq_job *job, const void *value, size_t len);

/* READY or DELAYED -> CANCELLED now; RESERVED: flagged, the worker learns it from its next
 * extend or progress and the job ends CANCELLED. *was (may be NULL) gets the state the job was
 * in. Returns 0, JQ_ENOTFOUND, or JQ_ESTATE (DONE, DEAD or CANCELLED already). */
int jq_cancel(jq_client *c, const char *queue, const char *id, jq_state *was);

/* Everything known about a job. Strings are owned (jq_info_clear); absent ones are "". */
typedef struct jq_info {
    char id[JQ_ID_MAX];
    jq_state state;
    int attempts, max_attempts, priority;
    int cancel_requested;
    int64_t created_ms, updated_ms, run_at_ms, lease_until_ms, failed_ms, finished_ms;
    char *payload;
    size_t payload_len;
    char *result, *progress, *last_error, *idempotency_key;
} jq_info;

void jq_info_clear(jq_info *info);

/* Reads job id. Returns 0 and fills *out (clear it), JQ_ENOTFOUND, or a Redis error. */
int jq_job_get(jq_client *c, const char *queue, const char *id, jq_info *out);

/* One failed attempt of a job's history. */
typedef struct jq_attempt {
    int64_t at_ms; /* Redis time of the failure */
    int attempt;   /* the delivery that failed */
    char error[256];
} jq_attempt;

/* A job's failed attempts, newest first (at most 20 are kept; failures only: a failed
 * handler's error, or "lease expired" for a delivery whose worker vanished): up to max into
 * out[0..*got). The history expires with its job. Returns 0 (also with none) or a Redis
 * error. */
int jq_job_history(jq_client *c, const char *queue, const char *id, jq_attempt *out, size_t max,
                   size_t *got);

typedef struct jq_stats {
    /* Jobs per state. A call first deletes up to housekeep_batch DONE jobs past retention, so
     * done also counts the rest of them when more passed it since the last housekeeping round
     * (jq-stats.lua); the other counts are exact. */
    int64_t ready, delayed, reserved, dead, done, cancelled;
    /* How long the longest-waiting job at the front of a priority's line has been READY; -1
     * when nothing is READY (jq-stats.lua). */
    int64_t oldest_ready_age_ms;
} jq_stats;

int jq_stats_get(jq_client *c, const char *queue, jq_stats *out);

/* One round of housekeeping (reserve does it too): due DELAYED -> READY, expired leases ->
 * READY / DEAD / CANCELLED, retention trims; at most cfg.housekeep_batch of each. */
typedef struct jq_reap_result {
    int promoted, reclaimed, buried;
    int64_t next_ms; /* ms until there is work again, -1: none scheduled */
} jq_reap_result;

int jq_reap(jq_client *c, const char *queue, jq_reap_result *out);

/* Dead letters, oldest first: up to n (1 to 1000) from offset, into out[0..*got) (clear each;
 * state, id, attempts, max_attempts, last_error, failed_ms, created_ms and payload are set). */
int jq_dlq_list(jq_client *c, const char *queue, int offset, int n, jq_info *out, size_t *got);

/* DEAD -> READY with attempts from 0, oldest first, at most max jobs (0: all). *moved gets the
 * count. */
int jq_dlq_redrive(jq_client *c, const char *queue, int64_t max, int64_t *moved);

/* Deletes dead letters now, oldest first, at most max (0: all). *removed gets the count. */
int jq_dlq_purge(jq_client *c, const char *queue, int64_t max, int64_t *removed);

/*
 * Deletes the queue's jobs now, in every state (READY, DELAYED, RESERVED, DONE, CANCELLED,
 * DEAD: the ones that would run next first), each with its record, payload and failure history, at
 * most max (0: all); once none is left, the queue's indexes and wake list too. *removed gets the
 * count of jobs deleted. Works in scripts of at most 1000 jobs each, so no call holds Redis long
 * whatever the queue's size; a Redis error part way returns the error, the jobs deleted so far
 * staying deleted (*removed counts them): call again to finish. Returns 0, JQ_EINVAL or a Redis
 * error.
 *
 * What stays: the counter :seq, so a queue made again under the same name never reuses an id or
 * a lease token (a stale worker's ack could otherwise land on a new job); the :idem:<key>
 * records until their window ends (an enqueue with such a key still returns the dropped job's
 * id and creates nothing); the :fx:<name> keys, which are the caller's data. A worker holding a
 * lease on a dropped job gets JQ_ENOTFOUND from its ack, fail, extend, release or progress, which
 * change nothing. Dropping is not a barrier: a job enqueued while a drop runs is just a job of
 * the queue, deleted by a later script of the same drop if max allows, else left; stop the
 * enqueues first to empty a queue for good.
 */
int jq_queue_drop(jq_client *c, const char *queue, int64_t max, int64_t *removed);

/* The underlying connection (for tests and tools that read keys directly). */
sd_redis *jq_client_redis(jq_client *c);

/* Writes the key <prefix>{jq:<queue>}<suffix> into buf; returns its length or JQ_EINVAL. */
int jq_key(const jq_client *c, const char *queue, const char *suffix, char *buf, size_t len);
int jq_key_cfg(const jq_config *cfg, const char *queue, const char *suffix, char *buf, size_t len);

/* ---- The asynchronous client (libuv) ------------------------------------------------------
 * The same scripts over sd_aredis, for a worker runtime or a server. Every call returns 0 and
 * then runs its callback exactly once, later, never from inside the call; or returns an error
 * (JQ_EINVAL, JQ_ETOOBIG, SD_EDISCONNECTED, SD_ECLOSED) and never runs it. A callback's status
 * is 0, a JQ_E* code or a Redis transport code (SD_ETIMEDOUT, SD_EDISCONNECTED, SD_ECLOSED,
 * SD_EREDIS). Its pointers are valid only during the callback, except as stated. */

typedef struct jq_aclient jq_aclient;

/* Creates a client on loop with two connections (scripts, and one only for the blocking wait)
 * that connect in the background. Returns 0 or a negative code. */
int jq_aclient_new(uv_loop_t *loop, const sd_redis_url *url, const jq_config *cfg,
                   jq_aclient **out);

/* Runs the loop until both connections are up or timeout_ms passes: 0 or SD_ETIMEDOUT. For
 * start-up code and tests. */
int jq_aclient_wait_connected(jq_aclient *c, int timeout_ms);

/* Closes the waiting connection: a jq_await in flight is answered SD_ECLOSED (from inside this
 * call), later ones fail with SD_ECLOSED. */
void jq_aclient_close_waiter(jq_aclient *c);

/* Writes the calls accepted so far to Redis now, as sd_aredis_flush does for one connection
 * (redis.h: call it once per loop iteration after the last call, e.g. from a uv_prepare_t,
 * never from inside one of this client's callbacks). NULL is a no-op. */
void jq_aclient_flush(jq_aclient *c);

/* Closes both connections (pending callbacks run with SD_ECLOSED, from inside this call) and
 * frees the client; run the loop afterwards so libuv can release the handles. NULL: no-op. */
void jq_aclient_free(jq_aclient *c);

/* Reserve's result: jobs[0..n) are the callee's to keep (clear each with jq_job_clear); the
 * array itself is valid only during the callback. next_ms as in jq_reap_result. */
typedef void jq_reserve_cb(jq_aclient *c, int status, jq_job *jobs, size_t n, int64_t next_ms,
                           void *arg);
/* A single value: extend's new lease deadline, fail's jq_state, await's 1 (woken) or 0. */
typedef void jq_value_cb(jq_aclient *c, int status, int64_t value, void *arg);
/* ack_many's per-item codes (as jq_ack_many). */
typedef void jq_codes_cb(jq_aclient *c, int status, const int *codes, size_t n, void *arg);

/* Enqueue's result: out[0..n) as jq_enqueue_many fills it, valid only during the callback. */
typedef void jq_enqueued_cb(jq_aclient *c, int status, const jq_enqueued *out, size_t n, void *arg);

/* jq_enqueue_many over the loop: n jobs (1 to 10,000) in one script, all or none. The
 * payloads are copied before the call returns. */
int jq_aenqueue_many(jq_aclient *c, const char *queue, const jq_new_job *jobs, size_t n,
                     jq_enqueued_cb *cb, void *arg);
int jq_areserve(jq_aclient *c, const char *queue, int n, int64_t visibility_ms, jq_reserve_cb *cb,
                void *arg);
/* Blocks (on the waiting connection) until something is pushed to the queue's wake list or
 * wait_ms (1 ms to 1 h) passes. */
int jq_await(jq_aclient *c, const char *queue, int64_t wait_ms, jq_value_cb *cb, void *arg);
/* jq_await and then jq_areserve, both on the waiting connection, sent together: Redis runs
 * the reserve as soon as the wait ends (something was pushed to the wake list, or wait_ms
 * passed), without a round trip to this process in between, so a blocked worker gets a new
 * job one round trip after its enqueue instead of two. cb as jq_areserve's; the jobs are
 * reserved even when nothing woke the wait (then usually none, or the delayed jobs that fell
 * due). A jq_aclient_close_waiter while the pair is in flight answers cb SD_ECLOSED; if Redis
 * had already run the reserve, its jobs come back when their leases expire (the delivery
 * counts). */
int jq_await_reserve(jq_aclient *c, const char *queue, int64_t wait_ms, int n,
                     int64_t visibility_ms, jq_reserve_cb *cb, void *arg);
int jq_aack_many(jq_aclient *c, const char *queue, const jq_ack_item *items, size_t n,
                 jq_codes_cb *cb, void *arg);
int jq_afail(jq_aclient *c, const char *queue, const jq_job *job, const char *error,
             const jq_fail_opts *opts, jq_value_cb *cb, void *arg);
int jq_aextend(jq_aclient *c, const char *queue, const jq_job *job, int64_t ms, jq_value_cb *cb,
               void *arg);
int jq_arelease(jq_aclient *c, const char *queue, const jq_job *job, jq_value_cb *cb, void *arg);
/* jq_ack_effect over the loop: the ack and fx in one script; cb's status is jq_ack_effect's
 * result (value 0). fx, result and the key are copied before the call returns. */
int jq_aack_effect(jq_aclient *c, const char *queue, const jq_job *job, const void *result,
                   size_t len, const jq_effect *fx, jq_value_cb *cb, void *arg);

/* The inspect calls over the loop, for a server that must not wait on Redis (`jobqueue serve`):
 * the same answers as jq_job_get, jq_cancel and jq_stats_get. *info and *stats are valid only
 * during the callback (info's strings are freed after it). jq_acancel's value is the jq_state
 * the job was in. A malformed id is refused at once: JQ_ENOTFOUND, no callback. */
typedef void jq_info_cb(jq_aclient *c, int status, const jq_info *info, void *arg);
typedef void jq_stats_cb(jq_aclient *c, int status, const jq_stats *stats, void *arg);
int jq_ajob_get(jq_aclient *c, const char *queue, const char *id, jq_info_cb *cb, void *arg);
int jq_acancel(jq_aclient *c, const char *queue, const char *id, jq_value_cb *cb, void *arg);
int jq_astats(jq_aclient *c, const char *queue, jq_stats_cb *cb, void *arg);

/* One step of jq_queue_drop over the loop: one script that deletes up to count jobs (1 to 1000)
 * of the queue, in jq_queue_drop's order, and the queue's indexes once none is left. cb gets the
 * jobs deleted and more = 1 while some are left: call again to go on (between the calls the
 * loop and Redis serve everything else). The same guarantees as jq_queue_drop. */
typedef void jq_dropped_cb(jq_aclient *c, int status, int64_t removed, int more, void *arg);
int jq_adrop(jq_aclient *c, const char *queue, int count, jq_dropped_cb *cb, void *arg);

/* ---- The worker runtime (libuv) -------------------------------------------------------------
 * Runs up to `concurrency` handlers at once; heartbeats extend each lease every third of the
 * visibility timeout; a handler running past job_timeout_ms is told to stop and its attempt
 * counts as failed; jq_worker_stop stops reserving, lets running handlers finish within a grace
 * period, then tells the rest to stop and releases their jobs. worker.c draws the life of a
 * task. Everything runs on the loop's thread. */

typedef struct jq_worker jq_worker;
typedef struct jq_task jq_task;

/* Starts a job's work. job (and its payload) stays valid until the task is finished. The
 * handler must call jq_task_finish exactly once, from the loop's thread, now or later. */
typedef void jq_handler_fn(jq_task *task, const jq_job *job, void *arg);

/* Asks a running handler to stop early (it still calls jq_task_finish). reason: JQ_ECANCELLED
 * (a cancel was requested: the job ends CANCELLED), SD_ETIMEDOUT (job_timeout_ms passed: the
 * attempt fails), SD_ECLOSED (the stop's grace ended: the job is released), JQ_ESTALE (the lease
 * was lost: whatever the handler reports is dropped). */
typedef void jq_stop_fn(jq_task *task, int reason, void *arg);

typedef struct jq_worker_opts {
    const char *queue;      /* copied */
    int concurrency;        /* handlers at once, default 1 */
    int64_t visibility_ms;  /* the lease, default 30000; at least 3 x cfg.timeout_ms */
    int64_t job_timeout_ms; /* 0 (default): none */
    int batch;              /* jobs per reserve call at most, default 100 */
    jq_handler_fn *handler;
    jq_stop_fn *stop; /* may be NULL: the handler then never hears of a stop */
    void *arg;
} jq_worker_opts;

void jq_worker_opts_default(jq_worker_opts *opts);

/* Creates a worker (not yet reserving). Returns 0, JQ_EINVAL with a message in err (bad
 * options, or a visibility timeout too short for heartbeats), or a connection error. */
int jq_worker_new(uv_loop_t *loop, const sd_redis_url *url, const jq_config *cfg,
                  const jq_worker_opts *opts, jq_worker **out, char *err, size_t errlen);

/* Starts reserving (from the loop: no handler runs inside this call). Returns 0 or
 * SD_ECLOSED after a stop. */
int jq_worker_start(jq_worker *w);

/* Ends a task: ok non-zero acks with data as the result (copied; over cfg.max_result bytes the
 * job fails instead); zero fails with data as the error text (cut at 255 bytes and at
 * cfg.max_result). Acks of the handlers that finish in one loop iteration go to Redis together, in
 * one script. What is sent depends on a stop reason, if any (jq_stop_fn). */
void jq_task_finish(jq_task *task, int ok, const void *data, size_t len);
/* Ends a task with an ack that makes fx too (jq_ack_effect: both or neither, once per job
 * however often it was delivered), sent at once, not batched. A task told to stop (jq_stop_fn)
 * finishes as jq_task_finish(task, 1, ...) would, without the effect; so does a result over the
 * bound (the job fails); an invalid fx fails the job. */
void jq_task_finish_effect(jq_task *task, const void *data, size_t len, const jq_effect *fx);

const jq_job *jq_task_job(const jq_task *task);

typedef void jq_worker_stop_cb(jq_worker *w, void *arg);

/* Stops: no more reserving; running handlers get grace_ms to finish, then are told to stop
 * (SD_ECLOSED) and their jobs are released as they finish. cb runs once, later, when nothing is
 * left running and every release has been answered; then free the worker. A second call does
 * nothing. */
void jq_worker_stop(jq_worker *w, int64_t grace_ms, jq_worker_stop_cb *cb, void *arg);

/* Frees a stopped worker (after its stop callback); run the loop afterwards. NULL: no-op. */
void jq_worker_free(jq_worker *w);

typedef struct jq_worker_stats {
    int64_t started, acked, failed, released, heartbeats;
    int64_t ack_calls;     /* scripts that sent acks: handlers finishing in one loop iteration
                              share one */
    int64_t reserve_calls; /* reserve scripts sent */
    int running;
    int reserving; /* reserves in flight now: up to two while slots are free */
} jq_worker_stats;

jq_worker_stats jq_worker_get_stats(const jq_worker *w);

#endif
