/*
 * guard.c - the steps around a Redis call, written once for both front ends (rl_sync in
 * ratelimit.c, rl_limiter in limiter.c): what may be answered without Redis, when a call may be
 * sent, what a call's outcome means for the circuit breaker, and what a check is answered when
 * Redis did not answer it in time.
 *
 * The steps, in order (rl_internal.h names the functions):
 *
 *   rl_guard_before   never (cost above a quota) -> deny cache -> Redis unreachable
 *                     (disconnected, or breaker open) -> fallback; else: send
 *   rl_guard_call_done   one call's outcome -> breaker. Only a lost or unanswered call is a
 *                     failure: an error *reply* proves Redis is up and must not open it
 *   rl_guard_after    one check's outcome -> Redis's decision (deny cache, last remaining
 *                     reported), or "late" (sent, no reply in time: in doubt), or fallback
 *   rl_guard_reconcile   a reply that came after its check was answered late: refund or
 *                     count an over-admission
 *
 * Exact under slowness. A check that misses its deadline was usually still run by Redis (the
 * reply comes late, or Redis runs the queued command after a stall), so admitting it locally
 * could admit it twice across the fleet. So a late check is never admitted by the local
 * fallback: it is denied with a short retry-after (RL_SOURCE_LATE), and when its reply does come
 * and says Redis charged it, the front end sends a refund (rl-refund.lua). The local fallback
 * only answers when Redis is unreachable: the connection is down or the breaker is open.
 *
 * The breaker opens on a failure *rate*, not on a run of failures: in the current window of
 * RL_BREAKER_WINDOW_MS, once at least breaker_failures calls have ended and at least half of them
 * failed. A cold start, a script reload or one slow second gives a few late replies (which the
 * asynchronous limiter does not even count as failures: it waits reply_timeout_ms for them), not
 * a majority of at least breaker_failures calls, so it cannot turn one quota into N quotas.
 *
 * The local fallback spends a grant per key and policy in this process: floor(min(r, p% of q)
 * / N), r being the remaining quota Redis last reported for the key (q when never reported), p
 * local_share_pct (10) and N the configured or live instances (found through Redis by the async
 * limiter, and known only once the others count this one too: limiter.c; unknown N grants
 * nothing). A grant is renewed only once a whole window has passed
 * since the last local admission, so no window holds two grants: the fleet's local admissions
 * per key and window are at most p% of q, on top of what Redis admitted (README, "Exact under
 * slowness"). Local admissions are remembered by key and charged to Redis when it is back.
 *
 * The deny cache remembers, per key, a denial Redis gave and until when (the check's start time
 * plus the retry-after Redis computed). Until then a check of that key with at least the same
 * cost is denied locally. Quota only comes back with time, or with a refund: once a refund this
 * limiter sent has run, it forgets its denial of the key (rl_guard_deny_forget), which Redis
 * may have computed before the refund (a late reply's refund is sent after the calls already in
 * flight, whose denials would otherwise hide the units given back until their retry-after, an
 * hour for the fixed window). Other gateways' caches still hide them (README). The start time
 * precedes Redis's clock reading, so the cache never denies past the retry-after Redis gave and
 * never admits anything.
 *
 * Both tables are direct-mapped on a 64-bit hash of the key: a new key evicts the old one.
 */
#include "ratelimit.h"
#include "rl_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd.h"

/* A deny-cache entry; `usage` holds npolicies records. */
typedef struct deny_entry {
    uint64_t hash;
    uint64_t at_ns;    /* the denied check's start */
    uint64_t until_ns; /* at_ns + retry_after */
    long long cost;
    rl_usage usage[];
} deny_entry;

/* A local-limiter entry: tokens per policy as of last_ns (valid in outage `episode` only), then
 * the remaining Redis last reported per policy (-1: never). */
typedef struct local_entry {
    uint64_t hash;
    uint64_t last_ns;
    uint64_t episode;
    size_t pending; /* 1 + its index in the pending charges of this episode, or 0 */
    double v[];     /* tokens[0..P), reported[P..2P) */
} local_entry;

void rl_guard_init(rl_guard *g, const rl_config *cfg) {
    memset(g, 0, sizeof(*g));
    g->cfg = cfg;
    g->episode = 1;
    size_t P = cfg->npolicies;
    if (cfg->deny_cache_entries > 0) {
        g->deny_mask = 1;
        while (g->deny_mask < (size_t)cfg->deny_cache_entries) {
            g->deny_mask <<= 1;
        }
        g->deny_stride = sizeof(deny_entry) + P * sizeof(rl_usage);
        g->deny = sd_xcalloc(g->deny_mask, g->deny_stride);
        g->deny_mask--;
    }
    g->local_mask = 1;
    while (g->local_mask < (size_t)cfg->local_entries) {
        g->local_mask <<= 1;
    }
    g->local_stride = sizeof(local_entry) + 2 * P * sizeof(double);
    g->local = sd_xcalloc(g->local_mask, g->local_stride);
    g->local_mask--;
}

void rl_guard_clear(rl_guard *g) {
    free(g->deny);
    free(g->local);
    g->deny = g->local = NULL;
    for (size_t i = 0; i < g->npending; i++) {
        free(g->pending_keys[i]);
    }
    free(g->pending_keys);
    free(g->pending_units);
    g->pending_keys = NULL;
    g->pending_units = NULL;
    g->npending = g->pending_cap = 0;
}

/* ---- The breaker ---------------------------------------------------------------------------- */

int rl_breaker_may_send(const rl_guard *g, uint64_t now) {
    if (g->breaker == RL_BREAKER_CLOSED) {
        return 1;
    }
    return g->breaker == RL_BREAKER_OPEN &&
           now - g->opened_ns >= (uint64_t)g->cfg->breaker_cooldown_ms * 1000000;
}

int rl_breaker_admit(rl_guard *g, uint64_t now) {
    if (!rl_breaker_may_send(g, now)) {
        return 0;
    }
    if (g->breaker == RL_BREAKER_OPEN) {
        g->breaker = RL_BREAKER_HALF_OPEN; /* this call is the probe */
        sd_log(SD_LOG_INFO, "ratelimit.breaker_probe", NULL);
    }
    return 1;
}

void rl_breaker_done(rl_guard *g, int ok, uint64_t now) {
    if (now - g->window_ns >= (uint64_t)RL_BREAKER_WINDOW_MS * 1000000) {
        g->window_ns = now;
        g->calls = g->failures = 0;
    }
    g->calls++;
    if (ok) {
        if (g->breaker != RL_BREAKER_CLOSED) {
            sd_log(SD_LOG_INFO, "ratelimit.breaker_closed", NULL);
            g->episode++; /* the next outage starts from fresh reports */
            g->calls = g->failures = 0;
        }
        g->breaker = RL_BREAKER_CLOSED;
        return;
    }
    g->failures++;
    if (g->breaker == RL_BREAKER_HALF_OPEN ||
        (g->breaker == RL_BREAKER_CLOSED && g->failures >= g->cfg->breaker_failures &&
         2 * g->failures >= g->calls)) {
        if (g->breaker == RL_BREAKER_CLOSED) {
            sd_log(SD_LOG_WARN, "ratelimit.breaker_open", "failures=%d calls=%d cooldown_ms=%d",
                   g->failures, g->calls, g->cfg->breaker_cooldown_ms);
        }
        g->breaker = RL_BREAKER_OPEN;
        g->opened_ns = now;
    }
}

void rl_guard_reconnected(rl_guard *g) {
    g->episode++;
    if (g->breaker == RL_BREAKER_OPEN) {
        /* Redis is back: probe now rather than after the rest of the cool-down. */
        g->opened_ns = 0;
    }
}

void rl_guard_redis_error(rl_guard *g, int code, uint64_t now) {
    g->stats.redis_errors++;
    /* Errors come in storms when Redis is down: log at most one line per second. */
    if (now - g->logged_ns >= 1000000000ULL || g->logged_ns == 0) {
        sd_log(SD_LOG_WARN, "ratelimit.redis_error", "error=\"%s\" total=%llu", rl_strerror(code),
               (unsigned long long)g->stats.redis_errors);
        g->logged_ns = now;
    }
}

/* ---- The deny cache ------------------------------------------------------------------------- */

static deny_entry *deny_slot(rl_guard *g, uint64_t hash) {
    return (deny_entry *)((char *)g->deny + (hash & g->deny_mask) * g->deny_stride);
}

static int deny_lookup(rl_guard *g, uint64_t hash, long long cost, uint64_t now, rl_decision *d) {
    if (!g->deny || cost == 0) {
        return 0;
    }
    deny_entry *e = deny_slot(g, hash);
    /* A check of a smaller cost may pass sooner than the one that was denied: ask Redis. */
    if (e->hash != hash || now >= e->until_ns || cost < e->cost) {
        return 0;
    }
    long long elapsed_ms = (long long)((now - e->at_ns) / 1000000);
    memset(d, 0, sizeof(*d));
    d->allowed = 0;
    d->retry_after_ms = (long long)((e->until_ns - now + 999999) / 1000000);
    d->source = RL_SOURCE_DENY_CACHE;
    d->npolicies = g->cfg->npolicies;
    for (size_t i = 0; i < d->npolicies; i++) {
        d->policies[i] = e->usage[i];
        d->policies[i].reset_ms =
            e->usage[i].reset_ms > elapsed_ms ? e->usage[i].reset_ms - elapsed_ms : 0;
    }
    g->stats.deny_cache_hits++;
    return 1;
}

static void deny_remember(rl_guard *g, uint64_t hash, long long cost, uint64_t start_ns,
                          const rl_decision *d) {
    if (!g->deny || d->allowed || d->retry_after_ms <= 0) {
        return;
    }
    deny_entry *e = deny_slot(g, hash);
    e->hash = hash;
    e->at_ns = start_ns;
    e->until_ns = start_ns + (uint64_t)d->retry_after_ms * 1000000;
    e->cost = cost;
    memcpy(e->usage, d->policies, d->npolicies * sizeof(rl_usage));
}

void rl_guard_deny_forget(rl_guard *g, uint64_t hash) {
    if (g->deny) {
        deny_entry *e = deny_slot(g, hash);
        if (e->hash == hash) {
            e->until_ns = 0;
        }
    }
}

/* ---- The local limiter ---------------------------------------------------------------------- */

/* The entry of hash; a new key (or an evicted one) starts with nothing reported. */
static local_entry *local_slot(rl_guard *g, uint64_t hash) {
    local_entry *e = (local_entry *)((char *)g->local + (hash & g->local_mask) * g->local_stride);
    if (e->hash != hash) {
        e->hash = hash;
        e->episode = 0;
        e->pending = 0;
        for (size_t i = 0; i < g->cfg->npolicies; i++) {
            e->v[i] = -1;                     /* no grant yet */
            e->v[g->cfg->npolicies + i] = -1; /* nothing reported */
        }
    }
    return e;
}

/* Remembers what Redis said is left for the key: the local share of the next outage. */
static void local_report(rl_guard *g, uint64_t hash, const rl_decision *d) {
    local_entry *e = local_slot(g, hash);
    for (size_t i = 0; i < d->npolicies; i++) {
        e->v[d->npolicies + i] = (double)d->policies[i].remaining;
    }
}

/* The local token bucket: capacity and refill q/N per window, starting each outage at r/N. */
/* Remembers units admitted locally for key, to charge to Redis when it is back. At most
 * local_entries keys are remembered per outage; more are admitted but never charged. */
static void pending_add(rl_guard *g, local_entry *e, const char *key, long long units) {
    if (e->pending > 0 && e->pending <= g->npending) {
        g->pending_units[e->pending - 1] += units;
        return;
    }
    if (g->npending >= (size_t)g->cfg->local_entries) {
        return;
    }
    if (g->npending == g->pending_cap) {
        g->pending_cap = g->pending_cap ? 2 * g->pending_cap : 64;
        g->pending_keys = sd_xrealloc(g->pending_keys, g->pending_cap * sizeof(char *));
        g->pending_units = sd_xrealloc(g->pending_units, g->pending_cap * sizeof(long long));
    }
    g->pending_keys[g->npending] = sd_xstrdup(key);
    g->pending_units[g->npending] = units;
    e->pending = ++g->npending;
}

int rl_guard_pending_pop(rl_guard *g, char **key, long long *units) {
    if (g->npending == 0) {
        return 0;
    }
    g->npending--;
    *key = g->pending_keys[g->npending];
    *units = g->pending_units[g->npending];
    if (g->npending == 0) {
        g->episode++; /* the local entries' indexes into the list are stale now */
    }
    return 1;
}

static void local_decide(rl_guard *g, const char *key, uint64_t hash, long long cost, uint64_t now,
                         rl_decision *d) {
    const rl_config *cfg = g->cfg;
    size_t P = cfg->npolicies;
    /* N: as configured, else the live gateways Redis knows of; unknown means nothing is known
     * to be free, and the fallback admits nothing. */
    long long N = cfg->instances > 0 ? cfg->instances : g->live;
    local_entry *e = local_slot(g, hash);
    double *tokens = e->v, *reported = e->v + P;
    if (e->episode != g->episode) {
        e->episode = g->episode;
        e->pending = 0; /* the pending list was charged and emptied since */
    }
    double wait_ms = 0;
    int allowed = 1;
    for (size_t i = 0; i < P; i++) {
        const rl_policy *p = &cfg->policies[i];
        double window_ms = (double)p->window_s * 1000.0;
        double since_ms = (double)(now - e->last_ns) / 1e6;
        /* A grant: what is known to be free (r, or q when Redis never reported the key), at
         * most the fleet's local allowance, shared by N. Renewed only once a whole window has
         * passed since the last local admission, so that no window holds two grants. */
        if (tokens[i] < 0 || since_ms >= window_ms) {
            long long allowance = p->quota * cfg->local_share_pct / 100;
            long long r = reported[i] >= 0 ? (long long)reported[i] : p->quota;
            tokens[i] = N > 0 ? (double)((r < allowance ? r : allowance) / N) : 0;
            e->last_ns = now;
            since_ms = 0;
        }
        d->policies[i].violated = 0;
        d->policies[i].remaining = (long long)tokens[i];
        d->policies[i].reset_ms = (long long)ceil(window_ms - since_ms);
        if ((double)cost > tokens[i]) {
            allowed = 0;
            d->policies[i].violated = 1;
            wait_ms = fmax(wait_ms, window_ms - since_ms);
        }
    }
    if (allowed && cost > 0) {
        e->last_ns = now;
        for (size_t i = 0; i < P; i++) {
            tokens[i] -= (double)cost;
            d->policies[i].remaining = (long long)tokens[i];
            d->policies[i].reset_ms = (long long)cfg->policies[i].window_s * 1000;
        }
        pending_add(g, e, key, cost);
    }
    d->allowed = allowed;
    d->retry_after_ms = allowed ? 0 : (long long)ceil(wait_ms);
}

/* A decision with nothing known about the policies. */
static void decision_blank(const rl_config *cfg, rl_source source, int error, rl_decision *d) {
    memset(d, 0, sizeof(*d));
    d->npolicies = cfg->npolicies;
    d->source = source;
    d->error = error;
    for (size_t i = 0; i < cfg->npolicies; i++) {
        d->policies[i].remaining = -1;
        d->policies[i].reset_ms = -1;
    }
}

/* Redis is unreachable: the configured fallback. */
static void fallback(rl_guard *g, const char *key, uint64_t hash, long long cost, int error,
                     uint64_t now, rl_decision *d) {
    const rl_config *cfg = g->cfg;
    switch (cfg->on_error) {
    case RL_FAIL_OPEN:
        decision_blank(cfg, RL_SOURCE_FAIL_OPEN, error, d);
        d->allowed = 1;
        break;
    case RL_FAIL_CLOSED:
        decision_blank(cfg, RL_SOURCE_FAIL_CLOSED, error, d);
        d->retry_after_ms = cfg->breaker_cooldown_ms;
        for (size_t i = 0; i < cfg->npolicies; i++) {
            d->policies[i].violated = 1;
        }
        break;
    case RL_FAIL_LOCAL:
        decision_blank(cfg, RL_SOURCE_LOCAL, error, d);
        local_decide(g, key, hash, cost, now, d);
        break;
    }
}

/* Redis is reachable but did not answer in time, and may still charge the check: fail-open and
 * fail-closed keep their answer, the local fallback denies (its budget is for outages). */
static void late(rl_guard *g, const char *key, uint64_t hash, long long cost, int error,
                 uint64_t now, rl_decision *d) {
    if (g->cfg->on_error != RL_FAIL_LOCAL) {
        fallback(g, key, hash, cost, error, now, d);
        return;
    }
    decision_blank(g->cfg, RL_SOURCE_LATE, error, d);
    if (cost == 0) {
        d->allowed = 1; /* a peek is always allowed: it consumes nothing */
        return;
    }
    d->retry_after_ms = RL_LATE_RETRY_MS;
    for (size_t i = 0; i < g->cfg->npolicies; i++) {
        d->policies[i].violated = 1;
    }
}

/* ---- The steps ------------------------------------------------------------------------------ */

int rl_guard_before(rl_guard *g, const char *key, uint64_t hash, long long cost, int connected,
                    int probe, uint64_t now, rl_decision *d) {
    if (rl_decide_never(g->cfg, cost, d) || deny_lookup(g, hash, cost, now, d)) {
        return 1;
    }
    if (!connected) {
        rl_guard_redis_error(g, SD_EDISCONNECTED, now);
        fallback(g, key, hash, cost, SD_EDISCONNECTED, now, d);
        return 1;
    }
    if (!(probe ? rl_breaker_admit(g, now) : rl_breaker_may_send(g, now))) {
        fallback(g, key, hash, cost, RL_EBREAKER, now, d);
        return 1;
    }
    return 0;
}

void rl_guard_call_done(rl_guard *g, int rc, uint64_t now) {
    /* An error reply means Redis is up: only lost and unanswered calls count as failures. */
    rl_breaker_done(g, rc == 0 || rc == SD_EREDIS, now);
}

void rl_guard_after(rl_guard *g, const char *key, uint64_t hash, long long cost, uint64_t start_ns,
                    int rc, int in_doubt, uint64_t now, rl_decision *d) {
    if (rc == 0) {
        deny_remember(g, hash, cost, start_ns, d);
        local_report(g, hash, d);
        return;
    }
    if (rc != RL_EBREAKER && rc != SD_ECLOSED) {
        rl_guard_redis_error(g, rc, now);
    }
    if (in_doubt) {
        late(g, key, hash, cost, rc, now, d);
    } else {
        fallback(g, key, hash, cost, rc, now, d);
    }
}

int rl_guard_reconcile(rl_guard *g, const rl_decision *given, const rl_decision *redis,
                       long long cost) {
    if (cost == 0 || given->allowed == redis->allowed) {
        return 0;
    }
    if (redis->allowed) {
        g->stats.refunds++; /* charged by Redis, refused to the client: give it back */
        return 1;
    }
    g->stats.over_admitted++; /* admitted here, refused by Redis: cannot be undone */
    return 0;
}

void rl_guard_count(rl_guard *g, const rl_decision *d) {
    rl_stats *s = &g->stats;
    s->by_source[d->source]++;
    if (d->allowed) {
        s->allowed++;
    } else {
        s->denied++;
    }
    for (size_t i = 0; i < d->npolicies; i++) {
        if (d->allowed) {
            s->policy_allowed[i]++;
        } else if (d->policies[i].violated) {
            s->policy_denied[i]++;
        }
    }
}

void rl_guard_stats(const rl_guard *g, rl_stats *out) {
    *out = g->stats;
    out->breaker_open = g->breaker != RL_BREAKER_CLOSED;
    out->live_instances = g->live;
}
