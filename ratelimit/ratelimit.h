/*
 * ratelimit.h - a distributed rate limiter whose state lives in Redis, so that any number of
 * instances of a service enforce one limit together.
 *
 * A policy is a quota q per window of w seconds, with a name ("burst;q=100;w=60"). A limiter
 * checks a key (an API key, a client address) against one or more policies with one of five
 * algorithms, each one Lua script run on Redis with Redis's own clock:
 *
 *   token-bucket            q tokens, refilled continuously at q/w per second
 *   gcra                    the same contract, in the terms of cells and arrival times (both keep
 *                           one timestamp per key: the instant the bucket is full again)
 *   sliding-window-log      exact: never more than q in any window of w seconds
 *   sliding-window-counter  two counters per key; approximate (see README for the error)
 *   fixed-window            one counter per key and window of w seconds aligned to the epoch;
 *                           up to 2q across a window's edge
 *
 * A check has a cost (units of quota). Cost 0 is a peek: always allowed, consumes nothing. A
 * cost above a policy's quota is denied with retry_after_ms = RL_NEVER, decided from the policies
 * alone without asking Redis. A denied check consumes nothing, and the policies are
 * all-or-nothing: if one denies, none is charged.
 *
 * When Redis is slow or down, every check still completes within the deadline (default 5 ms).
 * A check Redis is late for is denied (RL_SOURCE_LATE; fail-open and fail-closed keep their own
 * answer), and its late reply is reconciled (a refund when Redis charged it). When Redis is
 * unreachable (disconnected, or the circuit breaker open: a failure rate, see guard.c) the
 * configured fallback answers: fail open, fail closed, or a local in-process grant of
 * min(r, q * local_share_pct / 100) / N per window, r being what Redis last reported left (q if
 * nothing), for N instances; what it admitted is charged to Redis once it is back. The breaker
 * probes Redis again after a cool-down. A deny cache answers a key that Redis denied until its
 * retry-after has passed, without a round trip.
 *
 * Two front ends share all of that: rl_sync (blocking, one check per call) and rl_limiter
 * (asynchronous on a libuv loop, where concurrent checks are coalesced into batches, one script
 * call deciding many checks).
 *
 * The callback rule (the same as libuv's and sd_aredis's): a check's callback runs exactly once,
 * later, from the loop, and never from inside the call that started it, even when the answer was
 * known at once; when the call fails, the callback never runs. So a caller may check again, or
 * free what the callback uses, from inside a callback, and needs no guard against re-entry.
 */
#ifndef RATELIMIT_H
#define RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "redis.h"

/* Error codes of this component (negative; rl_strerror() also names the sd_ and errno ones). */
enum {
    RL_EPOLICY = -20001,  /* a policy string or value is invalid */
    RL_EARG = -20002,     /* an argument is invalid: empty or too long key, negative cost */
    RL_EBREAKER = -20003, /* not sent: the circuit breaker is open (a fallback's error) */
};

/* Returns a static description of any code a rl_ function returns. */
const char *rl_strerror(int code);

/* ---- Policies and configuration --------------------------------------------------------- */

#define RL_MAX_POLICIES 8
#define RL_POLICY_NAME_MAX 32    /* bytes, including the terminating NUL */
#define RL_KEY_MAX 512           /* longest key a check accepts, in bytes */
#define RL_COST_MAX 9000000000LL /* largest cost a check accepts (no quota is larger) */

/* Largest quota the sliding-window log accepts. It logs one entry per admitted unit, so one
 * check of cost q writes q entries inside one script, during which Redis serves nobody else;
 * larger quotas belong to the sliding-window counter or GCRA. */
#define RL_LOG_MAX_QUOTA 10000

/* Longest Redis key rl_config_key() writes, with its NUL: the prefix, the key with every byte
 * possibly escaped to three, the policy name and the algorithm's tag. */
#define RL_REDIS_KEY_MAX (64 + 3 * RL_KEY_MAX + RL_POLICY_NAME_MAX + 24)

/* retry_after_ms of a check that can never be allowed (its cost exceeds a quota). */
#define RL_NEVER (-1LL)

typedef struct rl_policy {
    char name[RL_POLICY_NAME_MAX]; /* letters, digits, '-', '_', '.'; names a Redis key part */
    long long quota;               /* q >= 1 */
    long long window_s; /* w >= 1 whole seconds, as draft-ietf-httpapi-ratelimit-headers */
} rl_policy;

/*
 * Parses "NAME;q=Q;w=W" (the order of q and w is free; spaces around ';' are allowed) into *out.
 * Returns 0, or RL_EPOLICY with a message naming what is wrong in err. Refuses policies where
 * q * w > 9e9, beyond which the scripts' integer arithmetic would leave the 2^53 range.
 */
int rl_policy_parse(const char *text, rl_policy *out, char *err, size_t errlen);

typedef enum rl_algorithm {
    RL_TOKEN_BUCKET,
    RL_GCRA,
    RL_SLIDING_WINDOW_LOG,
    RL_SLIDING_WINDOW_COUNTER,
    RL_FIXED_WINDOW,
} rl_algorithm;

/* "token-bucket", "gcra", "sliding-window-log", "sliding-window-counter", "fixed-window". */
const char *rl_algorithm_name(rl_algorithm a);
/* Parses one of the names above. Returns 0 or RL_EARG. */
int rl_algorithm_parse(const char *text, rl_algorithm *out);

/* What a check answers when Redis cannot (error, deadline passed, breaker open). */
typedef enum rl_fail_mode {
    RL_FAIL_OPEN,   /* allow */
    RL_FAIL_CLOSED, /* deny, retry after the breaker's cool-down */
    RL_FAIL_LOCAL,  /* a grant in this process (see the top of this file and guard.c) */
} rl_fail_mode;

/* "open", "closed", "local" */
const char *rl_fail_mode_name(rl_fail_mode m);
int rl_fail_mode_parse(const char *text, rl_fail_mode *out);

typedef struct rl_config {
    rl_algorithm algorithm; /* default RL_TOKEN_BUCKET */
    rl_policy policies[RL_MAX_POLICIES];
    size_t npolicies;      /* at least one; names must differ */
    char prefix[64];       /* key prefix, default "rl:" */
    int deadline_ms;       /* every check completes within this, default 5 */
    rl_fail_mode on_error; /* default RL_FAIL_LOCAL */
    int instances;       /* N for RL_FAIL_LOCAL; default 0: the live gateways that the async limiter
                            finds through Redis (presence keys, refreshed every second; until it has
                            been in the live set for 3 s, so that the others count it too, and in
                            rl_sync, the local fallback admits nothing) */
    int local_share_pct; /* RL_FAIL_LOCAL: the fleet's local admissions per key and
                            window are at most this percent of q, default 10 (README,
                            "Exact under slowness") */
    int breaker_failures;    /* the breaker opens once this many calls ended in one second
                                and at least half of them failed; default 10 */
    int breaker_cooldown_ms; /* open time before one probe call, default 1000 */
    int reply_timeout_ms;    /* async: how long a late reply is waited for (to reconcile it)
                                before the call counts as failed; default 1000 (the
                                deadline when that is longer) */
    int deny_cache_entries;  /* size of the deny cache, 0 = no deny cache; default 16384 */
    int local_entries;       /* keys the local fallback limiter tracks, default 16384 */
    int max_batch;           /* async: checks per script call, default 64 (1 = no batching) */
    int max_calls;           /* async: script calls in flight on a single Redis, default 2 (on
                                a Redis Cluster: one per hash slot, or max_calls per slot when
                                max_batch is 1; limiter.c) */
    int tags; /* 0 (default): each client key is its own hash tag; N > 0: the keys share N tags,
                 so that on a Redis Cluster a round needs at most N calls (README, "Redis
                 Cluster"). Part of the key names: every process of one fleet uses the same. */
#define RL_MAX_TAGS 16384
} rl_config;

/* Fills *cfg with the defaults above and no policies. */
void rl_config_default(rl_config *cfg);

/* Parses a policy string and appends it. Returns 0 or RL_EPOLICY (message in err). */
int rl_config_add_policy(rl_config *cfg, const char *text, char *err, size_t errlen);

/* Checks a configuration (policies present, names distinct, numbers in range, a quota of at
 * most RL_LOG_MAX_QUOTA for the sliding-window log). Returns 0 or RL_EPOLICY / RL_EARG with a
 * message in err. */
int rl_config_validate(const rl_config *cfg, char *err, size_t errlen);

/*
 * Writes the Redis key that holds `key`'s state for policy index i (for tests and tools):
 * "<prefix>{<key>}:<policy>:<algorithm>". The braces hold the key itself, except that '%', '{'
 * and '}' are written as %25, %7B and %7D: a key may hold any bytes, and the braces must delimit
 * exactly one hash tag, the same for every policy of the key, so that all keys of one check
 * share a Redis Cluster slot. Distinct keys keep distinct names. With cfg->tags = N > 0 the
 * name starts with a shared tag, "<prefix>{<t>}{<key>}:<policy>:<algorithm>", t the key's
 * rl_config_tag(): Redis Cluster hashes only the first braces. A buffer of RL_REDIS_KEY_MAX
 * bytes always suffices. Returns the length, or -1 if it does not fit.
 */
int rl_config_key(const rl_config *cfg, size_t i, const char *key, char *buf, size_t len);

/* The shared tag of a key when cfg->tags = N > 0: 64-bit FNV-1a of the key's bytes, modulo N
 * (a fixed function: it is part of the key names). -1 when cfg->tags is 0. */
int rl_config_tag(const rl_config *cfg, const char *key);

/* ---- Decisions ------------------------------------------------------------------------- */

/* Who answered a check. */
typedef enum rl_source {
    RL_SOURCE_REDIS,       /* the scripts, on Redis */
    RL_SOURCE_DENY_CACHE,  /* a denial remembered from Redis, retry-after not yet passed */
    RL_SOURCE_FAIL_OPEN,   /* Redis failed: allowed by the fail-open policy */
    RL_SOURCE_FAIL_CLOSED, /* Redis failed: denied by the fail-closed policy */
    RL_SOURCE_LOCAL,       /* Redis failed: decided by the local limiter */
    RL_SOURCE_POLICY,      /* the policies alone: the cost exceeds a quota (never allowed) */
    RL_SOURCE_LATE, /* Redis reachable but late: denied (local mode), Redis may still charge it */
    RL_SOURCE_COUNT
} rl_source;

/* "redis", "deny-cache", "fail-open", "fail-closed", "local", "policy", "late" */
const char *rl_source_name(rl_source s);

typedef struct rl_usage {
    long long remaining; /* units left after this check; -1 when unknown (not asked, fallback) */
    long long reset_ms;  /* ms until more quota becomes available, 0 when full; -1 unknown */
    int violated;        /* this policy is one that denied the check */
} rl_usage;

typedef struct rl_decision {
    int allowed;
    long long retry_after_ms; /* 0 when allowed; RL_NEVER; else ms until the same check passes */
    rl_source source;
    int error;        /* for a fallback source: the failure (SD_ETIMEDOUT, ...) */
    size_t npolicies; /* as configured, in the same order */
    rl_usage policies[RL_MAX_POLICIES];
} rl_decision;

/* Index of the first violated policy of a denial, or -1. */
int rl_decision_violated(const rl_decision *d);

/* ---- Counters (for /metrics) --------------------------------------------------------- */

typedef struct rl_stats {
    uint64_t allowed, denied;
    uint64_t by_source[RL_SOURCE_COUNT];
    uint64_t policy_allowed[RL_MAX_POLICIES]; /* every policy counts an allowed check */
    uint64_t policy_denied[RL_MAX_POLICIES];  /* only the violated policies count a denial */
    uint64_t redis_errors;    /* checks Redis did not answer: timeouts, no connection, errors */
    uint64_t deny_cache_hits; /* denials answered by the deny cache */
    uint64_t script_calls;    /* script calls sent */
    uint64_t batched_checks;  /* checks those calls decided */
    /* Checks whose call was sent but never answered (deadline passed, connection lost): the
     * fallback decided them, yet Redis may have run the script and charged them. An upper
     * bound: a call lost before it reached Redis counts too. */
    uint64_t in_doubt;
    /* Late replies reconciled with the answer the client got: Redis charged a check that was
     * refused (a refund was sent), or refused one that was admitted here (cannot be undone). */
    uint64_t refunds, over_admitted;
    /* Units admitted by the local fallback and charged to Redis once it was back (clamped:
     * what did not fit was not charged). */
    uint64_t recovery_charged;
    int live_instances; /* gateways found through Redis (0: not known yet) */
    int breaker_open;   /* the breaker is open or half-open now */
} rl_stats;

/* ---- Synchronous limiter -------------------------------------------------------------- */

typedef struct rl_sync rl_sync;

/*
 * Creates a blocking limiter for Redis at url (copied) with cfg (copied; validated first). It
 * connects at once, but a Redis that is down is not an error: checks then fall back, and later
 * checks try again, no more often than a backoff from 50 ms doubling to 2 s allows. Returns 0
 * and *out, or RL_EPOLICY / RL_EARG for a bad configuration.
 */
int rl_sync_new(const sd_redis_url *url, const rl_config *cfg, rl_sync **out);

/*
 * Checks key with cost against every policy and fills *out. Blocks at most about the deadline:
 * connecting, EVALSHA and a reload after NOSCRIPT share it (a reconnect inside the Redis layer
 * may add its connect timeout, the deadline, once). Returns 0 (a denial is a result, not an
 * error) or RL_EARG (bad key or cost).
 */
int rl_sync_check(rl_sync *l, const char *key, long long cost, rl_decision *out);

void rl_sync_stats(const rl_sync *l, rl_stats *out);

/* Closes the connection and frees the limiter. NULL is a no-op. */
void rl_sync_free(rl_sync *l);

/* ---- Asynchronous limiter (libuv) ----------------------------------------------------- */

typedef struct rl_limiter rl_limiter;

/* A check's result. d is valid only during the call. */
typedef void rl_check_cb(const rl_decision *d, void *udata);

/*
 * Creates a limiter on loop for Redis at url (copied) with cfg (copied; validated first) and
 * starts connecting. Returns 0 and *out, or a negative code. Checks made before the connection
 * is up are answered by the fallback; rl_limiter_wait_connected() waits for it.
 */
int rl_limiter_new(uv_loop_t *loop, const sd_redis_url *url, const rl_config *cfg,
                   rl_limiter **out);

/* Runs the loop until Redis is connected or timeout_ms passes: 0 or SD_ETIMEDOUT. For start-up
 * code and tests. */
int rl_limiter_wait_connected(rl_limiter *l, int timeout_ms);

/*
 * Checks key (copied) with cost. Returns 0 when accepted: cb then runs exactly once, within the
 * deadline, from the loop and never from inside this call. Answers that need no Redis (a cost
 * above a quota, the deny cache, an open breaker, a disconnected Redis) are decided now and
 * delivered on the loop's current or next iteration, without waiting for I/O. Returns RL_EARG
 * (bad key or cost) or SD_ECLOSED (the limiter is being freed) when not accepted: cb never runs.
 */
int rl_limiter_check(rl_limiter *l, const char *key, long long cost, rl_check_cb *cb, void *udata);

void rl_limiter_stats(const rl_limiter *l, rl_stats *out);

/* The configuration in use (after defaults), valid while the limiter lives. */
const rl_config *rl_limiter_config(const rl_limiter *l);

/*
 * Frees the limiter: checks still waiting are decided at once by the fallback (error
 * SD_ECLOSED), no new check is accepted, and the memory is released once libuv has closed the
 * handles (run the loop afterwards). The callbacks of the checks it decided, and of answers not
 * yet delivered, run from the loop before the memory is released, never from inside this call.
 * NULL is a no-op. May be called from inside a check's callback.
 */
void rl_limiter_free(rl_limiter *l);

#endif
