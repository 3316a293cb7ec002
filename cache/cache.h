/*
 * cache.h - a two-tier read-through cache: an in-process tier (SIEVE, bounded by bytes) in
 * front of a shared Redis tier, with exactly one origin load per key across every instance.
 *
 *   cache *c;
 *   cache_new(loop, &url, &opts, &c);
 *   cache_get(c, "user:42", 7, my_loader, ctx, got_cb, req);   // got_cb runs later, once
 *   ...in my_loader, when the origin answers:
 *   cache_load_done(load, CACHE_OK, body, len);
 *   cache_invalidate(c, "user:42", 7, NULL, NULL);             // every instance drops it
 *
 * What a get does (the design is drawn in cache.c):
 *  1. Local tier hit: answered from memory (on the next loop iteration).
 *  2. Else the key's flight: every concurrent get of one key in one instance joins one flight
 *     (in-process single-flight), which reads the value with a plain HMGET: a value fresh by
 *     a margin (fast_margin_ms) is a Redis hit; anything else runs cache-get.lua, where a
 *     fresh value is a Redis hit too; otherwise the script gives a lease (SET NX PX with a random
 * token) to exactly one caller across all instances, who calls the loader; the others wait for the
 * leader's "filled" message on the cache's pub/sub channel: it carries the value (up to
 *     CACHE_FILL_INLINE_MAX bytes), so they answer from it with no Redis call; a larger
 *     value or a no-store answer makes them look again (one EVALSHA). A look-up every
 *     wait_poll_ms (1 s) covers a message lost without a subscriber drop (a drop restarts
 *     them at once). A leader that dies leaves a lease that expires: waiters look again at
 *     its expiry and exactly one takes it over (SET NX). A leader that overran its lease is
 *     fenced: its store (cache-store.lua) is refused because the lease no longer holds its
 *     token.
 *  3. TTLs are jittered by +-jitter_pct; a fresh value may be refreshed early by one caller
 *     (XFetch, Vattani et al. 2015: load when now - delta * beta * ln(rand) >= expiry, delta
 *     the measured load time, rand in (0,1]); RFC 5861 stale-while-revalidate (serve the old
 *     value, one caller reloads in the background) and stale-if-error (serve the old value
 *     when the load fails); not-found and failures are cached for negative_ttl_ms, and the
 *     waiters of the failed load get the failure too.
 *  4. cache_invalidate deletes the Redis entry and its lease (fencing the load in progress)
 *     and publishes; every instance drops its local copy. A load that was running when an
 *     invalidation of its key arrived stores nothing, locally or in Redis.
 *  5. When the subscriber connection goes down, the local tier is dropped at once (messages
 *     may have been missed), and until both connections are up again the cache is DEGRADED:
 *     Redis is bypassed, misses are coalesced in process (one load per key per instance) and
 *     kept locally for degraded_ttl_ms only.
 *
 * Errors and callbacks follow the house rule: a call that returns 0 has its callback run
 * exactly once, later, from the loop, never from inside the call; a call that fails returns a
 * negative code and its callback never runs. One cache lives on one loop's thread.
 */
#ifndef CACHE_H
#define CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "redis.h"
#include "redis_sub.h"

/* What a value is. */
enum {
    CACHE_OK = 0,       /* a value */
    CACHE_NOTFOUND = 1, /* the origin says there is none (cached for negative_ttl_ms) */
    CACHE_ERROR = 2,    /* the load failed (cached for negative_ttl_ms) */
};

/* Where an answer came from. */
enum {
    CACHE_SRC_LOCAL = 0,     /* the in-process tier */
    CACHE_SRC_REDIS = 1,     /* the Redis tier */
    CACHE_SRC_ORIGIN = 2,    /* this caller's flight loaded it */
    CACHE_SRC_COALESCED = 3, /* another caller's load (this or another instance) */
};

/* Values up to this size ride on the "filled" message to every instance, so the waiters of
 * other instances answer at once; larger ones cost one look-up per waiting instance. */
#define CACHE_FILL_INLINE_MAX 16384

typedef struct cache cache;
typedef struct cache_load cache_load;

typedef struct cache_opts {
    const char *prefix;   /* key and channel prefix, default "cache:v1:" (copied) */
    size_t local_bytes;   /* the in-process tier's budget, default 64 MiB; 0: no local tier */
    int ttl_ms;           /* freshness of a value, default 60000 */
    int jitter_pct;       /* +- percent applied to ttl_ms, default 10 (0 to 50) */
    int swr_ms;           /* stale-while-revalidate window after ttl, default 0 */
    int sie_ms;           /* stale-if-error window after ttl, default 0 */
    int negative_ttl_ms;  /* not-found and failed loads, default 5000 */
    int lease_ms;         /* how long a leader may load before another takes over, 10000 */
    int wait_timeout_ms;  /* a get's deadline, default 5000 */
    int degraded_ttl_ms;  /* local life of values loaded while degraded, default 1000 */
    int local_ttl_ms;     /* the longest a value stays local, default ttl_ms */
    double xfetch_beta;   /* XFetch's beta, default 1.0; 0 disables early refresh */
    int redis_timeout_ms; /* deadline of each Redis call, default 1000 */
    int reconnect_min_ms, reconnect_max_ms; /* both connections' backoff: 50, 2000 */
    int ping_interval_ms;                   /* the subscriber's liveness PING: 1000 */
    int wait_poll_ms; /* a waiting flight's fallback look-up, for a lost message: 1000 */
    /* The fast path (cache.c): a look-up first reads the value with a plain HMGET and answers a
     * hit from it when it is fresh by at least this many ms on Redis's clock (as estimated from
     * TIME) and XFetch does not pick this caller; anything else runs cache-get.lua. Default
     * 50; negative: every look-up runs the script. */
    int fast_margin_ms;
} cache_opts;

void cache_opts_default(cache_opts *o);

/* An answer. value is NUL-terminated (len bytes before it) and valid only during the
 * callback. For CACHE_NOTFOUND and CACHE_ERROR it is what the loader gave (may be empty). */
typedef struct cache_result {
    int status; /* CACHE_OK, CACHE_NOTFOUND or CACHE_ERROR */
    const char *value;
    size_t len;
    int source; /* CACHE_SRC_* */
    int stale;  /* 1: served past its freshness (stale-while-revalidate or stale-if-error) */
} cache_result;

/* err is 0 with res set, or SD_ETIMEDOUT (wait_timeout_ms passed; nobody else is affected)
 * or SD_ECLOSED (the cache was freed) with res NULL. */
typedef void cache_get_cb(cache *c, int err, const cache_result *res, void *udata);

/*
 * The loader: fetch key from the origin and call cache_load_done(load, ...) exactly once,
 * now or later, on the loop's thread. key is valid until then. It runs from the loop, never
 * from inside cache_get.
 */
typedef void cache_loader_fn(cache_load *load, const char *key, size_t klen, void *udata);

/* Ends a load: status CACHE_OK (value), CACHE_NOTFOUND or CACHE_ERROR. value is copied. The
 * load handle is invalid afterwards. After cache_free, a late call only frees the handle. */
void cache_load_done(cache_load *load, int status, const void *value, size_t len);

/* Like cache_load_done, with this value's own freshness: ttl_ms > 0 replaces the configured
 * ttl (jitter still applies), 0 keeps it, CACHE_TTL_NO_STORE answers the waiters and stores
 * nothing anywhere (the lease is released, so other instances' waiters look again and one of
 * them loads). For a proxy honouring Cache-Control. */
#define CACHE_TTL_NO_STORE (-1)
void cache_load_done_ttl(cache_load *load, int status, const void *value, size_t len, int ttl_ms);

/*
 * Creates a cache on loop. url may be NULL: a local-only cache (never degraded, nothing
 * shared, loads coalesced in this process only). Otherwise it connects a command connection
 * (sd_aredis) and a subscriber (sd_redis_sub) in the background; until both are up the cache is
 * degraded. opts may be NULL (defaults). Returns 0, -EINVAL (bad options or URL). The URL is
 * copied.
 */
int cache_new(uv_loop_t *loop, const sd_redis_url *url, const cache_opts *opts, cache **out);

/*
 * Gets key (klen bytes, binary, not empty). loader is called with loader_udata when this
 * caller's flight must load. cb(c, err, res, udata) runs later, exactly once. Returns 0,
 * -EINVAL (empty key or NULL callbacks) or SD_ECLOSED.
 */
int cache_get(cache *c, const char *key, size_t klen, cache_loader_fn *loader, void *loader_udata,
              cache_get_cb *cb, void *udata);

/*
 * A synchronous peek at the local tier only: returns 1 and fills *out (source
 * CACHE_SRC_LOCAL) on a fresh local hit, else 0 (then use cache_get). No callback, no Redis
 * call, no allocation. out->value is borrowed: valid until the caller returns to the loop or
 * calls another cache_* function. Counts as a get and a local hit. For callers that can
 * answer in place (cache serve's hot path).
 */
int cache_get_local(cache *c, const char *key, size_t klen, cache_result *out);

/* err is 0 once Redis deleted the key and published the invalidation, else a redis.h code. */
typedef void cache_done_cb(cache *c, int err, void *udata);

/*
 * Invalidates key on every instance: drops it locally now, marks a load of it in progress
 * here as not to be stored, deletes it from Redis with its lease and publishes. cb may be
 * NULL. Returns 0 (cb will run), SD_EDISCONNECTED (Redis unreachable: dropped locally only,
 * cb never runs), -EINVAL or SD_ECLOSED.
 */
int cache_invalidate(cache *c, const char *key, size_t klen, cache_done_cb *cb, void *udata);

/* How long Redis keeps a key's invalidation count after its last invalidation: longer than any
 * fetch that cache_gen_get guards may take (cache serve's origin timeout is 30 s). */
#define CACHE_GEN_KEEP_MS 600000

/* gen: how many times key was invalidated (at any instance) within CACHE_GEN_KEEP_MS of each
 * other; 0 when none lately. err: 0, or a redis.h code (SD_ETIMEDOUT after the cache's
 * redis_timeout_ms, SD_EDISCONNECTED, SD_EREDIS, SD_ECLOSED when the cache is freed first);
 * gen is then 0 and means nothing. */
typedef void cache_gen_cb(cache *c, int err, long long gen, void *udata);

/*
 * Reads key's invalidation count from Redis, for a value fetched outside any lease (a proxy's
 * answer to a request it could not serve from the cache): read it before the fetch and again
 * under the lease (in the loader), and offer the value only when both agree. An invalidation in
 * between moved it, even at an instance whose message has not arrived yet; one after the second
 * read deletes the lease and fences the store. Redis may evict the count (an allkeys policy
 * under memory pressure): an invalidation is then missed, as its delete would be by a failover.
 * cb runs later, exactly once. Returns 0, SD_EDISCONNECTED (no Redis, or degraded: nothing can
 * be vouched for), -EINVAL or SD_ECLOSED.
 */
int cache_gen_get(cache *c, const char *key, size_t klen, cache_gen_cb *cb, void *udata);

/* 1 while the cache is degraded (a connection down), 0 when both are up. */
int cache_is_degraded(const cache *c);

/* Runs the loop until both connections are up or timeout_ms passes: 0 or SD_ETIMEDOUT. For
 * start-up code and tests. */
int cache_wait_ready(cache *c, int timeout_ms);

typedef struct cache_stats {
    uint64_t gets;
    uint64_t hits_local, hits_redis;
    uint64_t coalesced;     /* gets answered by another caller's load */
    uint64_t loads;         /* loader calls by this instance */
    uint64_t leases;        /* leases this instance won for a miss (not early refresh) */
    uint64_t takeovers;     /* leases won after waiting out another's */
    uint64_t waits;         /* flights that had to wait for another instance's lease */
    uint64_t stale_served;  /* answers with stale = 1 */
    uint64_t refreshes;     /* background loads (XFetch or stale-while-revalidate) */
    uint64_t stored;        /* loads stored in Redis */
    uint64_t fenced;        /* stores refused: the lease was no longer this load's (it ran
                               out, or an invalidation deleted it) */
    uint64_t not_stored;    /* loads whose value was kept from the tiers by an invalidation */
    uint64_t invalidations; /* invalidation messages received (own included) */
    uint64_t fills;         /* "filled" messages received (own included) */
    uint64_t local_drops;   /* times the local tier was dropped (subscriber down) */
    uint64_t degraded_loads;
    uint64_t timeouts;  /* gets answered SD_ETIMEDOUT */
    uint64_t hits_fast; /* Redis hits answered by the fast path's HMGET, no script */
    /* How each waiting flight was answered: after the leader's message (from the value it
     * carried, or one look-up it triggered), or by the fallback look-up with no message (one
     * was lost: should stay 0). fill_values: answered from the message's value, no Redis call. */
    uint64_t woken_by_message, woken_by_poll, fill_values;
    size_t local_bytes, local_count;
    size_t flights; /* keys with a look-up, load or store in progress */
    uint64_t sub_ups, sub_downs;
} cache_stats;

void cache_stats_get(const cache *c, cache_stats *out);

/* Frees the cache: pending gets get SD_ECLOSED (from inside this call), then pending
 * cache_invalidate and cache_gen_get callbacks (also from inside it); loads in progress are
 * detached (their cache_load_done only frees the handle); the memory goes once libuv has
 * closed the handles (run the loop afterwards). NULL is a no-op. */
void cache_free(cache *c);

#endif
