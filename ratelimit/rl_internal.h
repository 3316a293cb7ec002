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

/* Breaker, deny cache, local limiter and counters of one limiter (see ratelimit.c). */
typedef struct rl_guard {
    const rl_config *cfg;
    int breaker;
    int failures;       /* consecutive failed calls */
    uint64_t opened_ns; /* when the breaker last opened */
    void *deny;         /* deny-cache entries, deny_stride bytes each */
    size_t deny_mask, deny_stride;
    void *local; /* local-limiter entries */
    size_t local_mask, local_stride;
    uint64_t logged_ns; /* last Redis error logged */
    rl_stats stats;
} rl_guard;

void rl_guard_init(rl_guard *g, const rl_config *cfg);
void rl_guard_clear(rl_guard *g);

/* Whether a call could be sent now (no state change). */
int rl_breaker_may_send(const rl_guard *g, uint64_t now);
/* Whether to send a call now; moves OPEN to HALF_OPEN when the cool-down has passed (that call
 * is the probe). */
int rl_breaker_admit(rl_guard *g, uint64_t now);
/* Records the outcome of a call. */
void rl_breaker_done(rl_guard *g, int ok, uint64_t now);

/* Counts a failed call and logs it (at most once a second). */
void rl_guard_redis_error(rl_guard *g, int code, uint64_t now);

/* Answers from the deny cache: 1 with *d filled (a denial), or 0. */
int rl_deny_lookup(rl_guard *g, uint64_t hash, long long cost, uint64_t now, rl_decision *d);
/* Remembers a denial that Redis made for a check that started at start_ns. */
void rl_deny_remember(rl_guard *g, uint64_t hash, long long cost, uint64_t start_ns,
                      const rl_decision *d);

/* The fallback decision for a check Redis could not answer (error is the cause). The cost is
 * within every quota: rl_decide_never() has answered the others. */
void rl_fallback(rl_guard *g, uint64_t hash, long long cost, int error, uint64_t now,
                 rl_decision *d);

/* Adds a decision to the counters. */
void rl_guard_count(rl_guard *g, const rl_decision *d);
void rl_guard_stats(const rl_guard *g, rl_stats *out);

#endif
