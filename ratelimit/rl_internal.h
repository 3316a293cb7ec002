/*
 * rl_internal.h - what ratelimit.c shares with limiter.c (the asynchronous limiter): the
 * scripts, argument and reply handling, and the guard (breaker, deny cache, fallback, counters).
 * Not part of the public interface.
 */
#ifndef RL_INTERNAL_H
#define RL_INTERNAL_H

#include <stdint.h>

#include "ratelimit.h"

/* The script of an algorithm (rl-common.lua + the algorithm's file), SHA1 computed. */
sd_script *rl_script(rl_algorithm a);

/* rl_config_validate for the limiters' constructors, which log the reason: 0 or RL_E*. */
int rl_config_check(const rl_config *cfg);

/* Validates a check's key and cost: 0 or RL_EARG. */
int rl_check_args(const char *key, long long cost);

/* Writes a valid cost (0 to RL_COST_MAX) in decimal and a NUL into buf, which holds at least 24
 * bytes; returns the number of digits. Called for every check, so without printf. */
size_t rl_cost_format(char *buf, long long cost);

/* Decides a check whose cost exceeds a quota: 1 with *d filled (denied, RL_NEVER, source
 * RL_SOURCE_POLICY), or 0 when every quota covers the cost and Redis must decide. */
int rl_decide_never(const rl_config *cfg, long long cost, rl_decision *d);

uint64_t rl_key_hash(const char *key, size_t len);

/* The script arguments that follow the keys and precede the costs: P, then q and w of each
 * policy, formatted once. */
#define RL_POLICY_ARGS (1 + 2 * RL_MAX_POLICIES)
typedef struct rl_policy_args {
    size_t count;
    char text[RL_POLICY_ARGS][24];
    const char *argv[RL_POLICY_ARGS];
    size_t len[RL_POLICY_ARGS];
} rl_policy_args;

void rl_policy_args_init(rl_policy_args *a, const rl_config *cfg);

/* Reads check number `check` of a script reply into *d. Returns 0 or SD_EREDIS (an error reply
 * or a malformed one). */
int rl_decision_from_reply(const rl_config *cfg, const redisReply *reply, size_t check,
                           long long cost, rl_decision *d);

enum { RL_BREAKER_CLOSED, RL_BREAKER_OPEN, RL_BREAKER_HALF_OPEN };

/* The breaker counts calls and failures in windows of this length (guard.c). */
#define RL_BREAKER_WINDOW_MS 1000
/* retry_after_ms of a check denied because Redis was late (RL_SOURCE_LATE). */
#define RL_LATE_RETRY_MS 1000

/* Breaker, deny cache, local limiter and counters of one limiter (guard.c). */
typedef struct rl_guard {
    const rl_config *cfg;
    int breaker;
    int calls, failures; /* calls ended and failed in the current breaker window */
    uint64_t window_ns;  /* when that window started */
    uint64_t opened_ns;  /* when the breaker last opened */
    uint64_t episode;    /* bumped when Redis comes back: the local share restarts at r/N */
    void *deny;          /* deny-cache entries, deny_stride bytes each */
    size_t deny_mask, deny_stride;
    void *local; /* local-limiter entries */
    size_t local_mask, local_stride;
    uint64_t logged_ns; /* last Redis error logged */
    int live;           /* gateways found through Redis, 0 until known (limiter.c, "Presence") */
    /* Local admissions not yet charged to Redis, by key (guard.c, "recovery"). */
    char **pending_keys;
    long long *pending_units;
    size_t npending, pending_cap;
    rl_stats stats;
} rl_guard;

void rl_guard_init(rl_guard *g, const rl_config *cfg);
void rl_guard_clear(rl_guard *g);

/*
 * Step 1, before a call. Decides the check without Redis when it can: a cost above a quota, the
 * deny cache, a connection that is down (connected = 0) or a breaker that is open (the
 * fallback). Returns 1 with *d filled, or 0: send the check to Redis. With probe set, an open
 * breaker whose cool-down has passed lets this call through as its probe (rl_breaker_admit);
 * without, only rl_breaker_may_send is asked (the async front end admits when it sends).
 */
int rl_guard_before(rl_guard *g, const char *key, uint64_t hash, long long cost, int connected,
                    int probe, uint64_t now, rl_decision *d);

/* Takes the next local admission to charge to Redis now that it is back: 1 with *key (the
 * caller's to free) and *units, or 0. */
int rl_guard_pending_pop(rl_guard *g, char **key, long long *units);

/* The arguments of a recovery charge: `n` checks of cost 1 for key, run by the algorithm's own
 * script, so that each unit is charged only if it fits (the charge is clamped at the quota). */
typedef struct rl_charge_args {
    int argc, nkeys, checks;
    const char **argv;
    size_t *lens;
    char *keys; /* the Redis keys, owned */
} rl_charge_args;
#define RL_CHARGE_MAX_CHECKS 1000
void rl_charge_args_init(rl_charge_args *a, const rl_config *cfg, const rl_policy_args *pa,
                         const char *key, long long units);
void rl_charge_args_clear(rl_charge_args *a);
/* The units a recovery charge's reply says were charged. */
long long rl_charge_counted(const rl_config *cfg, const redisReply *reply);

/* Step 2, once per call sent: its outcome for the breaker (0, SD_EREDIS for an error reply,
 * SD_ETIMEDOUT, SD_EDISCONNECTED, ...). */
void rl_guard_call_done(rl_guard *g, int rc, uint64_t now);

/*
 * Step 3, once per check: rc = 0 when *d holds Redis's decision (remembered: deny cache, last
 * remaining); else in_doubt when the check was sent (or queued, and its deadline passed) and
 * Redis may still charge it (denied as RL_SOURCE_LATE, or the fail-open / fail-closed answer);
 * else Redis could not be asked, and the fallback decides. Counts errors; does not count the
 * decision (rl_guard_count, when it is delivered).
 */
void rl_guard_after(rl_guard *g, const char *key, uint64_t hash, long long cost, uint64_t start_ns,
                    int rc, int in_doubt, uint64_t now, rl_decision *d);

/* A reply that came after its check was answered (given). Returns 1 when Redis charged a check
 * the client was refused: the caller sends a refund (rl_refund_script). Counts refunds and
 * over-admissions. */
int rl_guard_reconcile(rl_guard *g, const rl_decision *given, const rl_decision *redis,
                       long long cost);

/* A refund for the key has run on Redis: drop the key's deny-cache entry, whose denial may
 * predate it (guard.c, "The deny cache"). */
void rl_guard_deny_forget(rl_guard *g, uint64_t hash);

/* The connection came back: probe at once, and restart the local shares. */
void rl_guard_reconnected(rl_guard *g);

/* The breaker's parts (guard.c), for the front ends' send paths. */
int rl_breaker_may_send(const rl_guard *g, uint64_t now);
int rl_breaker_admit(rl_guard *g, uint64_t now);
void rl_breaker_done(rl_guard *g, int ok, uint64_t now);

/* Counts a failed call and logs it (at most once a second). */
void rl_guard_redis_error(rl_guard *g, int code, uint64_t now);

/* Adds a decision to the counters. */
void rl_guard_count(rl_guard *g, const rl_decision *d);
void rl_guard_stats(const rl_guard *g, rl_stats *out);

/* The presence script (rl-presence.lua): registers a gateway, returns the live count. */
sd_script *rl_presence_script(void);
/* A gateway that has not refreshed its presence for this long is no longer counted. */
#define RL_PRESENCE_TTL_MS 3000
#define RL_PRESENCE_EVERY_MS 1000

/* The refund script (rl-refund.lua): gives cost units back to one check's keys. */
sd_script *rl_refund_script(void);

/* Writes the refund's arguments that follow the check's P keys (the algorithm's tag, cost, P,
 * q and w of each policy, then within_ms: Redis made the charge at most that long ago, since it
 * was made after the check started) into text, argv and lens; returns how many (at most
 * RL_REFUND_ARGS). */
#define RL_REFUND_ARGS (4 + 2 * RL_MAX_POLICIES)
int rl_refund_argv(const rl_config *cfg, long long cost, long long within_ms, char text[][24],
                   const char **argv, size_t *lens);

#endif
