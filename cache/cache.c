/*
 * cache.c - the two-tier read-through cache (cache.h).
 *
 * A get that misses the local tier joins the key's FLIGHT: one per key per instance, so
 * concurrent gets in one process cost one Redis look-up and at most one load. A flight's
 * life:
 *
 *            cache_get (new key)
 *                  |
 *                  v
 *   +-------->  QUEUED ----(degraded: no Redis)-----------------+
 *   |              | flight_start, from the loop                 |
 *   |              v                                             v
 *   |   +----->  LOOKUP --(hit / stale / err: answer)--> DONE   LOADING --(loader done:
 *   |   |          |  \                                            ^     answer waiters)
 *   |   |          |   +--(miss, lease won)------------------------+         |
 *   |   |          |   +--(hit + XFetch lease, stale + lease: answer,        v
 *   |   |          |       refresh in the background)------------->  STORING (cache-store.lua)
 *   |   |          v                                                         |
 *   |   +------ WAITING (another instance holds the lease)                   v
 *   |   "filled"/"invalidated" message, or the lease's expiry              DONE
 *   +--- subscriber down while WAITING
 *
 * LOOKUP is a plain HMGET first when the value may be a fresh hit (the fast path, below), then
 * cache-get.lua for anything else.
 *
 * Functions: flight_start (QUEUED -> LOOKUP or LOADING), on_lookup (LOOKUP -> DONE, LOADING,
 * WAITING), on_message / on_flight_timer (WAITING -> LOOKUP), cache_load_done (LOADING ->
 * STORING or DONE), on_store (STORING -> DONE), flight_finish (-> DONE: out of the table).
 *
 * Invariants
 *  1. At most one flight per key in the table; every get of a key whose flight is in the
 *     table joins it (or, while the flight holds a value to serve, gets that value at once).
 *  2. Only a flight whose lookup won the lease (cache-get.lua) calls the loader, except when
 *     degraded (no Redis) or local-only, where the flight itself is the only coalescing.
 *  3. A flight marked TAINTED (an invalidation of its key arrived, or the subscriber went down
 *     while it ran) never writes the local tier. Its Redis store is fenced by the lease, which
 *     an invalidation deletes.
 *  4. The local tier is written only by an untainted flight: from a Redis answer, or from a
 *     load (removed again if its store is fenced). A load made without Redis (degraded) stays
 *     local for degraded_ttl_ms only, since no invalidation could reach it.
 *  5. Every callback to the user runs from the ready queue (an idle handle), never from inside
 *     a cache_* call: answers, timeouts and closings all go through it, except at cache_free.
 *
 * Messages on <prefix>events: one byte ('f' filled, 'i' invalidated), the sender's 16-hex
 * instance id, then for 'i' the key; for 'f' the key's length (8 hex), the key, a flag ('0' a
 * value follows, '1' a not-found follows, '-' nothing follows: look again), the value's
 * freshness in ms (10 digits), then the value itself (cache-store.lua appends it, up to
 * CACHE_FILL_INLINE_MAX bytes). A WAITING flight answers its waiters from that value with no
 * Redis call (the store that published it held the lease, so no invalidation came between:
 * an invalidation deletes the lease and fences the store). An instance ignores its own 'f' for
 * its local tier (it just stored that value) but never its own 'i'.
 *
 * Waiting flights also look again every wait_poll_ms (a bounded fallback for a message lost
 * without a subscriber drop) and at the lease's expiry; stats say which woke each one.
 */
#include "cache.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cache_lua.h"
#include "local.h"
#include "sd.h"

#define ID_LEN 16
/* 'f', id, klen in 8 hex, key, flag, fresh ms in 10 digits, value */
#define FILL_HEAD_LEN(klen) (1 + ID_LEN + 8 + (klen) + 1 + 10)

/* Filled by scripts_init (bodies are embedded at build time: cache_lua.h). */
static sd_script script_get = {"cache/get", NULL, 0, ""};
static sd_script script_store = {"cache/store", NULL, 0, ""};
static sd_script script_inval = {"cache/invalidate", NULL, 0, ""};
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void scripts_init(void) {
    script_get.body = sd_lua_cache_get;
    script_get.len = sd_lua_cache_get_len;
    script_store.body = sd_lua_cache_store;
    script_store.len = sd_lua_cache_store_len;
    script_inval.body = sd_lua_cache_invalidate;
    script_inval.len = sd_lua_cache_invalidate_len;
    sd_script_init(&script_get);
    sd_script_init(&script_store);
    sd_script_init(&script_inval);
}

typedef enum flight_state {
    FLIGHT_QUEUED,
    FLIGHT_LOOKUP,
    FLIGHT_WAITING,
    FLIGHT_LOADING,
    FLIGHT_STORING,
    FLIGHT_DONE,
} flight_state;

typedef struct waiter {
    struct waiter *next;
    cache_get_cb *cb;
    void *udata;
    uint64_t deadline_ms;
    int joined; /* joined a flight another get created */
} waiter;

typedef struct flight flight;

struct cache_load {
    flight *f; /* NULL once detached by cache_free */
    uint64_t started_ns;
};

struct flight {
    flight *hnext;
    flight *qnext; /* on the start queue */
    uint64_t hash;
    cache *c;
    flight_state state;
    waiter *whead, *wtail;
    cache_loader_fn *loader;
    void *loader_udata;
    char token[ID_LEN + 18];
    int recheck;    /* a message for the key came while the look-up was out */
    int tainted;    /* invariant 3 */
    int degraded;   /* loading without Redis */
    int has_lease;  /* this flight's lookup won the lease */
    int waited;     /* it waited for another instance's lease at least once */
    int woken;      /* a message for its key came while it waited */
    int background; /* its waiters were answered; it refreshes for the tiers */
    int redis_pending;
    double xrand;         /* XFetch's rand for the script, when the fast path drew it; 0: none */
    cache_blob *fallback; /* stale-if-error value from the lookup */
    cache_blob *serve;    /* value given at once to gets that join now */
    cache_blob *loaded;   /* what the loader gave, for the local tier once stored */
    int serve_stale, serve_source;
    cache_load *load;
    int ttl_ms; /* jittered freshness of what this flight stores */
    uint64_t lease_wake_ms;
    uv_timer_t timer;
    size_t klen;
    char key[];
};

typedef struct ready {
    struct ready *next;
    cache_get_cb *cb;
    void *udata;
    int err;
    cache_blob *blob;
    int source, stale;
} ready;

typedef struct inval_req {
    cache *c;
    cache_done_cb *cb;
    void *udata;
} inval_req;

struct cache {
    uv_loop_t *loop;
    cache_opts o;
    char *prefix;
    char *channel;
    char id[ID_LEN + 1];
    local_tier *local;
    sd_aredis *r;
    sd_redis_sub *sub;
    int has_redis, redis_up, sub_up;
    flight **buckets;
    size_t nbuckets, nflights;
    flight *qhead, *qtail;
    ready *rhead, *rtail;
    uv_idle_t idle;
    int idle_on;
    int flush_pending; /* commands sent since the last sd_aredis_flush (on_idle flushes) */
    int closing;
    int handles; /* open libuv handles (idle + flight timers); freed at 0 when closing */
    uint64_t rng;
    /* Redis's clock, for the fast path: server ms = (local monotonic us + clock_off_us) / 1000
     * at most (an upper bound: the offset is taken from the TIME reply against the time the
     * command was sent). clock_at_ms: when it was learned, 0 none; clock_pending: a TIME is out. */
    int64_t clock_off_us;
    uint64_t clock_at_ms, clock_sent_us;
    int clock_pending;
    cache_stats st;
};

/* ---- Small helpers ----------------------------------------------------------------------- */

static uint64_t rng_next(cache *c) {
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 2685821657736338717ULL;
}

/* A uniform double in [0, 1). */
static double rng_unit(cache *c) {
    return (double)(rng_next(c) >> 11) * (1.0 / 9007199254740992.0);
}

static int degraded(const cache *c) {
    return c->has_redis && !(c->redis_up && c->sub_up);
}

static int jittered_ttl(cache *c, int ttl) {
    double j = c->o.jitter_pct / 100.0;
    double t = ttl * (1.0 + j * (2.0 * rng_unit(c) - 1.0));
    return t < 1 ? 1 : (int)t;
}

static char *make_key(cache *c, const char *key, size_t klen, const char *suffix, size_t *len) {
    size_t pl = strlen(c->prefix), sl = strlen(suffix);
    char *k = sd_xmalloc(pl + klen + sl + 3);
    memcpy(k, c->prefix, pl);
    k[pl] = '{';
    memcpy(k + pl + 1, key, klen);
    k[pl + 1 + klen] = '}';
    memcpy(k + pl + 2 + klen, suffix, sl + 1);
    *len = pl + klen + sl + 2;
    return k;
}

/* The head of a "filled" message (the store script appends the value when flag is '0'/'1'). */
static char *make_fill_message(cache *c, const char *key, size_t klen, char flag, int fresh_ms,
                               size_t *len) {
    size_t n = FILL_HEAD_LEN(klen);
    char *m = sd_xmalloc(n + 1);
    m[0] = 'f';
    memcpy(m + 1, c->id, ID_LEN);
    snprintf(m + 1 + ID_LEN, 9, "%08zx", klen);
    memcpy(m + 1 + ID_LEN + 8, key, klen);
    m[1 + ID_LEN + 8 + klen] = flag;
    snprintf(m + 1 + ID_LEN + 8 + klen + 1, 11, "%010d", fresh_ms < 0 ? 0 : fresh_ms);
    *len = n;
    return m;
}

static char *make_message(cache *c, char type, const char *key, size_t klen, size_t *len) {
    char *m = sd_xmalloc(1 + ID_LEN + klen);
    m[0] = type;
    memcpy(m + 1, c->id, ID_LEN);
    memcpy(m + 1 + ID_LEN, key, klen);
    *len = 1 + ID_LEN + klen;
    return m;
}

/* ---- The ready queue: every user callback runs from here (invariant 5) -------------------- */

static void on_idle(uv_idle_t *h);

/* The commands just sent are written by on_idle, in this loop iteration or the next, before
 * any answer is written to a client: a leader's store (whose message wakes the other
 * instances) goes out before its own waiters' responses, and a batch of look-ups costs one
 * write instead of a loop iteration and two epoll_ctl calls (sd_aredis_flush, redis.h). Never
 * flushed in place: a command may be sent from inside a reply callback of the same connection,
 * where a flush is not allowed. */
static void flush_soon(cache *c) {
    c->flush_pending = 1;
    if (!c->idle_on) {
        uv_idle_start(&c->idle, on_idle);
        c->idle_on = 1;
    }
}

static void ready_push(cache *c, cache_get_cb *cb, void *udata, int err, cache_blob *b, int source,
                       int stale) {
    ready *r = sd_xcalloc(1, sizeof *r);
    r->cb = cb;
    r->udata = udata;
    r->err = err;
    r->blob = b ? cache_blob_ref(b) : NULL;
    r->source = source;
    r->stale = stale;
    if (c->rtail)
        c->rtail->next = r;
    else
        c->rhead = r;
    c->rtail = r;
    if (!c->idle_on) {
        uv_idle_start(&c->idle, on_idle);
        c->idle_on = 1;
    }
    if (err == 0) {
        if (source == CACHE_SRC_LOCAL)
            c->st.hits_local++;
        else if (source == CACHE_SRC_REDIS)
            c->st.hits_redis++;
        else if (source == CACHE_SRC_COALESCED)
            c->st.coalesced++;
        if (stale)
            c->st.stale_served++;
    } else if (err == SD_ETIMEDOUT) {
        c->st.timeouts++;
    }
}

static void ready_run(cache *c, ready *r) {
    if (r->err) {
        r->cb(c, r->err, NULL, r->udata);
    } else {
        cache_result res = {.status = r->blob->status,
                            .value = r->blob->data,
                            .len = r->blob->len,
                            .source = r->source,
                            .stale = r->stale};
        r->cb(c, 0, &res, r->udata);
    }
    cache_blob_unref(r->blob);
    free(r);
}

/* ---- The flight table -------------------------------------------------------------------- */

static flight *flight_find(cache *c, const char *key, size_t klen) {
    uint64_t h = cache_hash(key, klen);
    for (flight *f = c->buckets[h & (c->nbuckets - 1)]; f; f = f->hnext)
        if (f->hash == h && f->klen == klen && memcmp(f->key, key, klen) == 0)
            return f;
    return NULL;
}

static void table_grow(cache *c) {
    size_t n = c->nbuckets * 2;
    flight **b = sd_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < c->nbuckets; i++) {
        flight *f = c->buckets[i];
        while (f) {
            flight *next = f->hnext;
            f->hnext = b[f->hash & (n - 1)];
            b[f->hash & (n - 1)] = f;
            f = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
}

static void table_remove(cache *c, flight *f) {
    flight **pp = &c->buckets[f->hash & (c->nbuckets - 1)];
    while (*pp && *pp != f)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = f->hnext;
        c->nflights--;
    }
}

static void maybe_free_cache(cache *c);

static void on_flight_timer_closed(uv_handle_t *h) {
    flight *f = h->data;
    cache *c = f->c;
    free(f);
    c->handles--;
    maybe_free_cache(c);
}

static void flight_timer_arm(flight *f);

static void flight_reset(flight *f);

/* Out of the table and, once nothing refers to it, freed (through the timer's close). Gets
 * that joined after the flight answered and found no value to take (an invalidation dropped
 * it) are not left behind: the flight starts over for them. */
static void flight_finish(flight *f) {
    cache *c = f->c;
    if (f->whead && !c->closing && f->state != FLIGHT_DONE) {
        flight_reset(f);
        return;
    }
    if (f->state != FLIGHT_DONE) {
        table_remove(c, f);
        f->state = FLIGHT_DONE;
    }
    if (f->whead || f->redis_pending || f->load)
        return;
    cache_blob_unref(f->fallback);
    cache_blob_unref(f->serve);
    cache_blob_unref(f->loaded);
    f->fallback = f->serve = f->loaded = NULL;
    uv_close((uv_handle_t *)&f->timer, on_flight_timer_closed);
}

/* Answers every waiter of f with b. The get that created the flight gets `source`, the gets
 * that joined it get CACHE_SRC_COALESCED. */
static void flight_answer(flight *f, cache_blob *b, int source, int stale) {
    waiter *w = f->whead;
    f->whead = f->wtail = NULL;
    while (w) {
        waiter *next = w->next;
        ready_push(f->c, w->cb, w->udata, 0, b, w->joined ? CACHE_SRC_COALESCED : source, stale);
        free(w);
        w = next;
    }
    flight_timer_arm(f);
}

/* Starts f over as a new flight for the waiters it still has. */
static void flight_reset(flight *f) {
    cache *c = f->c;
    cache_blob_unref(f->fallback);
    cache_blob_unref(f->serve);
    cache_blob_unref(f->loaded);
    f->fallback = f->serve = f->loaded = NULL;
    f->tainted = f->has_lease = f->waited = f->background = f->degraded = f->recheck = 0;
    f->woken = 0;
    f->state = FLIGHT_QUEUED;
    f->whead->joined = 0; /* the oldest waiter is now the get this flight is for */
    f->qnext = NULL;
    if (c->qtail)
        c->qtail->qnext = f;
    else
        c->qhead = f;
    c->qtail = f;
    if (!c->idle_on) {
        uv_idle_start(&c->idle, on_idle);
        c->idle_on = 1;
    }
}

/* ---- Loads --------------------------------------------------------------------------------- */

static void flight_lookup(flight *f);

static void flight_load(flight *f) {
    cache *c = f->c;
    f->state = FLIGHT_LOADING;
    f->load = sd_xcalloc(1, sizeof *f->load);
    f->load->f = f;
    f->load->started_ns = sd_now_ns();
    c->st.loads++;
    if (f->degraded)
        c->st.degraded_loads++;
    if (f->background)
        c->st.refreshes++;
    flight_timer_arm(f);
    f->loader(f->load, f->key, f->klen, f->loader_udata);
}

static void on_store(sd_aredis *r, redisReply *reply, int status, void *privdata);

static void flight_store(flight *f, cache_blob *b, int status, uint64_t delta_ms) {
    cache *c = f->c;
    size_t k1len, k2len;
    char *k1 = make_key(c, f->key, f->klen, "", &k1len);
    char *k2 = make_key(c, f->key, f->klen, ":lease", &k2len);
    size_t mlen;
    int fresh = status == CACHE_OK ? f->ttl_ms : c->o.negative_ttl_ms;
    /* Waiters elsewhere answer from the message's value; failures are not carried (their
     * waiters look again, for a stale-if-error value), nor no-store answers (one loads). */
    int inline_value =
        (status == CACHE_OK || status == CACHE_NOTFOUND) && b->len <= CACHE_FILL_INLINE_MAX;
    char flag = !inline_value ? '-' : status == CACHE_OK ? '0' : '1';
    char *msg = make_fill_message(c, f->key, f->klen, flag, fresh, &mlen);
    char ttl[24], swr[24], sie[24], delta[24];
    snprintf(ttl, sizeof ttl, "%d", fresh);
    snprintf(swr, sizeof swr, "%d", status == CACHE_OK ? c->o.swr_ms : 0);
    snprintf(sie, sizeof sie, "%d", status == CACHE_OK ? c->o.sie_ms : 0);
    snprintf(delta, sizeof delta, "%llu", (unsigned long long)delta_ms);
    const char *kind = status == CACHE_OK         ? "ok"
                       : status == CACHE_NOTFOUND ? "notfound"
                       : status == CACHE_ERROR    ? "err"
                                                  : "none"; /* -1: store nothing, free the lease */
    const char *argv[] = {k1,  k2,  f->token, kind,       b->data, ttl,
                          swr, sie, delta,    c->channel, msg,     inline_value ? "1" : "0"};
    size_t lens[] = {
        k1len,       k2len,       strlen(f->token), strlen(kind),       b->len, strlen(ttl),
        strlen(swr), strlen(sie), strlen(delta),    strlen(c->channel), mlen,   1};
    f->state = FLIGHT_STORING;
    if (sd_aredis_script(c->r, &script_store, on_store, f, c->o.redis_timeout_ms, 2, 12, argv,
                         lens) == 0) {
        f->redis_pending++;
        flush_soon(c);
    } else {
        flight_finish(f);
    }
    free(k1);
    free(k2);
    free(msg);
}

static void local_store(cache *c, flight *f, cache_blob *b, int ttl_ms) {
    if (!c->local || f->tainted || b->status == CACHE_ERROR)
        return;
    if (c->o.local_ttl_ms < ttl_ms)
        ttl_ms = c->o.local_ttl_ms;
    local_put(c->local, f->key, f->klen, b, sd_now_ms() + (uint64_t)ttl_ms);
}

void cache_load_done(cache_load *load, int status, const void *value, size_t len) {
    cache_load_done_ttl(load, status, value, len, 0);
}

void cache_load_done_ttl(cache_load *load, int status, const void *value, size_t len, int ttl_ms) {
    flight *f = load->f;
    if (!f) {
        free(load);
        return;
    }
    cache *c = f->c;
    uint64_t delta_ms = (sd_now_ns() - load->started_ns) / 1000000;
    free(load);
    f->load = NULL;
    if (status != CACHE_OK && status != CACHE_NOTFOUND)
        status = CACHE_ERROR;
    int no_store = ttl_ms < 0;
    if (ttl_ms > 0 && status == CACHE_OK)
        f->ttl_ms = jittered_ttl(c, ttl_ms);
    cache_blob *b = cache_blob_new(status, value, len);
    int use_fallback = status == CACHE_ERROR && f->fallback != NULL; /* RFC 5861 stale-if-error */
    cache_blob *answer = use_fallback ? f->fallback : b;
    flight_answer(f, answer, CACHE_SRC_ORIGIN, use_fallback);
    /* Gets that join while the store runs get this answer at once, unless an invalidation
     * came or the value is not to be stored: they then wait and the flight starts over for them
     * (flight_finish). */
    cache_blob_unref(f->serve);
    f->serve = f->tainted || no_store ? NULL : cache_blob_ref(answer);
    f->serve_stale = use_fallback;
    f->serve_source = CACHE_SRC_COALESCED;
    cache_blob_unref(f->loaded);
    f->loaded = b;
    if (f->tainted)
        c->st.not_stored++;
    /* The local tier takes the value now, unless an invalidation already came (tainted); one
     * that comes later deletes it like any local copy. */
    int ttl = status == CACHE_OK ? f->ttl_ms : c->o.negative_ttl_ms;
    if (!f->has_lease || c->closing) {
        /* Degraded or local-only: this instance's flight was the only coalescing. */
        if (!no_store)
            local_store(c, f, b, c->has_redis ? c->o.degraded_ttl_ms : ttl);
        flight_finish(f);
        return;
    }
    if (!no_store)
        local_store(c, f, b, ttl);
    flight_store(f, b, no_store ? -1 : status, delta_ms);
}

static void on_store(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    flight *f = privdata;
    cache *c = f->c;
    f->redis_pending--;
    if (status == 0 && reply->type == REDIS_REPLY_INTEGER) {
        if (reply->integer == 1) {
            c->st.stored++;
        } else {
            /* Another instance's value is the one in Redis: ours must not outlive it here. */
            c->st.fenced++;
            if (c->local)
                local_del(c->local, f->key, f->klen);
        }
    } else if (status == 0) {
        sd_log(SD_LOG_WARN, "cache.store_failed", "error=\"%s\"",
               reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    }
    flight_finish(f);
}

/* ---- Look-ups ------------------------------------------------------------------------------ */

static void on_lookup(sd_aredis *r, redisReply *reply, int status, void *privdata);
static void flight_fast_lookup(flight *f);

/* QUEUED or WAITING -> LOOKUP, or straight to LOADING when Redis is not to be used. */
static void flight_start(flight *f) {
    cache *c = f->c;
    if (!c->has_redis || degraded(c)) {
        f->degraded = c->has_redis;
        flight_load(f);
        return;
    }
    flight_fast_lookup(f);
}

static void flight_lookup(flight *f) {
    cache *c = f->c;
    size_t k1len, k2len;
    char *k1 = make_key(c, f->key, f->klen, "", &k1len);
    char *k2 = make_key(c, f->key, f->klen, ":lease", &k2len);
    char lease[24], rnd[40], beta[40];
    snprintf(lease, sizeof lease, "%d", c->o.lease_ms);
    /* (0, 1]; the fast path's draw when it sent this flight here for XFetch to decide */
    snprintf(rnd, sizeof rnd, "%.17g", f->xrand > 0 ? f->xrand : 1.0 - rng_unit(c));
    f->xrand = 0;
    snprintf(beta, sizeof beta, "%.17g", c->o.xfetch_beta);
    const char *argv[] = {k1, k2, f->token, lease, rnd, beta};
    size_t lens[] = {k1len, k2len, strlen(f->token), strlen(lease), strlen(rnd), strlen(beta)};
    f->state = FLIGHT_LOOKUP;
    f->recheck = 0;
    f->lease_wake_ms = 0;
    int rc =
        sd_aredis_script(c->r, &script_get, on_lookup, f, c->o.redis_timeout_ms, 2, 6, argv, lens);
    free(k1);
    free(k2);
    if (rc == 0) {
        f->redis_pending++;
        flush_soon(c);
        flight_timer_arm(f);
        return;
    }
    /* Redis refused at once: coalesce in process, never a stampede on the origin. */
    f->degraded = 1;
    flight_load(f);
}

/* A flight that waited is being answered by a look-up: say what woke it. */
static void count_wake(flight *f) {
    if (!f->waited)
        return;
    if (f->woken)
        f->c->st.woken_by_message++;
    else
        f->c->st.woken_by_poll++;
}

static cache_blob *reply_blob(const redisReply *a) {
    int st = (int)a->element[2]->integer;
    const redisReply *v = a->element[3];
    if (v->type == REDIS_REPLY_STRING)
        return cache_blob_new(st, v->str, v->len);
    return NULL;
}

static void on_lookup(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    flight *f = privdata;
    cache *c = f->c;
    f->redis_pending--;
    if (c->closing || f->state == FLIGHT_DONE) {
        flight_finish(f);
        return;
    }
    if (status != 0 || reply->type != REDIS_REPLY_ARRAY || reply->elements != 6) {
        if (status == 0)
            sd_log(SD_LOG_WARN, "cache.lookup_failed", "error=\"%s\"",
                   reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        f->degraded = 1;
        flight_load(f);
        return;
    }
    const char *kind = reply->element[0]->str;
    int lead = (int)reply->element[1]->integer;
    long long fresh_left = reply->element[4]->integer;
    long long pttl = reply->element[5]->integer;
    cache_blob *b = reply_blob(reply);
    if (strcmp(kind, "hit") == 0 || strcmp(kind, "stale") == 0) {
        int stale = kind[0] == 's';
        int source = f->waited ? CACHE_SRC_COALESCED : CACHE_SRC_REDIS;
        count_wake(f);
        flight_answer(f, b, source, stale);
        if (!stale && !f->recheck)
            local_store(c, f, b, (int)fresh_left);
        if (lead) {
            /* XFetch or stale-while-revalidate: this instance refreshes in the background
             * and serves the value it has meanwhile. */
            f->has_lease = 1;
            f->background = 1;
            f->serve = b;
            f->serve_stale = stale;
            f->serve_source = CACHE_SRC_REDIS;
            f->ttl_ms = jittered_ttl(c, c->o.ttl_ms);
            flight_load(f);
            return;
        }
        cache_blob_unref(b);
        flight_finish(f);
        return;
    }
    if (strcmp(kind, "err") == 0) {
        count_wake(f);
        cache_blob_unref(b);
        b = cache_blob_new(CACHE_ERROR, "", 0);
        flight_answer(f, b, f->waited ? CACHE_SRC_COALESCED : CACHE_SRC_REDIS, 0);
        cache_blob_unref(b);
        flight_finish(f);
        return;
    }
    /* A miss. */
    if (lead) {
        f->has_lease = 1;
        c->st.leases++;
        if (f->waited)
            c->st.takeovers++;
        cache_blob_unref(f->fallback);
        f->fallback = b;
        f->ttl_ms = jittered_ttl(c, c->o.ttl_ms);
        flight_load(f);
        return;
    }
    cache_blob_unref(b);
    if (!f->whead) { /* every waiter timed out: nobody here needs the value any more */
        flight_finish(f);
        return;
    }
    if (f->recheck || pttl < 0) { /* a fill or an invalidation crossed the look-up */
        flight_lookup(f);
        return;
    }
    if (degraded(c)) {
        flight_start(f);
        return;
    }
    f->state = FLIGHT_WAITING;
    if (!f->waited)
        c->st.waits++;
    f->waited = 1;
    f->woken = 0;
    /* Woken by the leader's message; if it died, at its lease's expiry; and every
     * wait_poll_ms in case the message was lost (a look-up that finds the lease still held
     * waits again). */
    f->lease_wake_ms = sd_now_ms() + (pttl + 2 < c->o.wait_poll_ms ? (uint64_t)pttl + 2
                                                                   : (uint64_t)c->o.wait_poll_ms);
    flight_timer_arm(f);
}

/* ---- The fast path: a fresh hit read with one HMGET ---------------------------------------------
 *
 * cache-get.lua costs Redis a script call per look-up (TIME, HMGET, the rules, the lease), and
 * at tens of thousands of hits/s that CPU is what a hit waits behind. A fresh hit needs none of
 * the script's atomicity (it writes nothing), so a flight's first look-up reads the fields with
 * a plain HMGET and answers a hit from it when
 *   - the value is there and fresh by fast_margin_ms against an UPPER bound of Redis's clock
 *     when the HMGET ran: the local monotonic clock plus an offset learned from TIME, taken
 *     against the moment the TIME was sent, read when the HMGET's reply arrives (so the
 *     script, run at the same moment, would also have found it fresh), and
 *   - XFetch, evaluated here with the script's formula at that upper bound, does not elect
 *     this caller (a later clock only elects more often, so the script would not have either).
 * Anything else (no value, not fresh by the margin, negative-cached, XFetch elects, no clock
 * yet, an error) runs the script as before, with the same XFetch rand, so leases, fencing,
 * stale-while-revalidate, stale-if-error and negative caching keep their exact rules. The
 * margin covers a Redis wall clock that steps forward between two TIME readings (every
 * CLOCK_REFRESH_MS) and, on a cluster, the skew between the node TIME was read from and the
 * key's node (nodes are assumed to agree within it). */

#define CLOCK_REFRESH_MS 2000  /* TIME again after this */
#define CLOCK_MAX_AGE_MS 10000 /* an older estimate is not used */

static void on_time(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    cache *c = privdata;
    c->clock_pending = 0;
    if (c->closing || status != 0 || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    int64_t server_us = strtoll(reply->element[0]->str, NULL, 10) * 1000000 +
                        strtoll(reply->element[1]->str, NULL, 10);
    c->clock_off_us = server_us - (int64_t)c->clock_sent_us;
    c->clock_at_ms = sd_now_ms();
}

/* Asks Redis for its clock when the estimate is missing or due for a refresh. */
static void clock_refresh(cache *c) {
    if (c->clock_pending || !c->redis_up || c->o.fast_margin_ms < 0)
        return;
    if (c->clock_at_ms && sd_now_ms() - c->clock_at_ms < CLOCK_REFRESH_MS)
        return;
    c->clock_sent_us = sd_now_ns() / 1000;
    if (sd_aredis_command(c->r, on_time, c, c->o.redis_timeout_ms, "TIME") == 0) {
        c->clock_pending = 1;
        flush_soon(c);
    }
}

static int clock_known(const cache *c) {
    return c->clock_at_ms && sd_now_ms() - c->clock_at_ms < CLOCK_MAX_AGE_MS;
}

static void on_fast_lookup(sd_aredis *r, redisReply *reply, int status, void *privdata);

/* QUEUED -> LOOKUP by an HMGET, or by the script when the fast path cannot be used. */
static void flight_fast_lookup(flight *f) {
    cache *c = f->c;
    clock_refresh(c);
    if (c->o.fast_margin_ms < 0 || !clock_known(c)) {
        flight_lookup(f);
        return;
    }
    size_t klen;
    char *k = make_key(c, f->key, f->klen, "", &klen);
    const char *argv[] = {"HMGET", k, "v", "st", "fu", "d"};
    size_t lens[] = {5, klen, 1, 2, 2, 1};
    f->state = FLIGHT_LOOKUP;
    f->recheck = 0;
    f->lease_wake_ms = 0;
    int rc = sd_aredis_commandv(c->r, on_fast_lookup, f, c->o.redis_timeout_ms, 6, argv, lens);
    free(k);
    if (rc != 0) {
        flight_lookup(f); /* it handles a refusal */
        return;
    }
    f->redis_pending++;
    flush_soon(c);
    flight_timer_arm(f);
}

static void on_fast_lookup(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    flight *f = privdata;
    cache *c = f->c;
    f->redis_pending--;
    if (c->closing || f->state == FLIGHT_DONE) {
        flight_finish(f);
        return;
    }
    if (status != 0 || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_STRING || !clock_known(c)) {
        flight_lookup(f);
        return;
    }
    const redisReply *v = reply->element[0];
    const redisReply *e_st = reply->element[1], *e_fu = reply->element[2], *e_d = reply->element[3];
    int st = e_st->type == REDIS_REPLY_STRING ? (int)strtol(e_st->str, NULL, 10) : 0;
    int64_t fu = e_fu->type == REDIS_REPLY_STRING ? strtoll(e_fu->str, NULL, 10) : 0;
    double d = e_d->type == REDIS_REPLY_STRING ? strtod(e_d->str, NULL) : 0;
    /* Redis's clock now, rounded up: at least what TIME would say in the script. */
    int64_t now_us = (int64_t)(sd_now_ns() / 1000) + c->clock_off_us;
    int64_t now = (now_us + 999) / 1000;
    if (fu <= now + c->o.fast_margin_ms) {
        flight_lookup(f);
        return;
    }
    double beta = c->o.xfetch_beta;
    double rnd = 1.0 - rng_unit(c); /* (0, 1] */
    if (beta > 0 && (double)now - d * beta * log(rnd) >= (double)fu) {
        f->xrand = rnd; /* the script decides, with this draw, and takes the lease */
        flight_lookup(f);
        return;
    }
    c->st.hits_fast++;
    cache_blob *b = cache_blob_new(st, v->str, v->len);
    count_wake(f);
    flight_answer(f, b, f->waited ? CACHE_SRC_COALESCED : CACHE_SRC_REDIS, 0);
    if (!f->recheck)
        local_store(c, f, b, (int)(fu - now));
    cache_blob_unref(b);
    flight_finish(f);
}

/* ---- Timers: waiters' deadlines and the lease's expiry -------------------------------------- */

static void on_flight_timer(uv_timer_t *t) {
    flight *f = t->data;
    cache *c = f->c;
    uint64_t now = sd_now_ms();
    while (f->whead && f->whead->deadline_ms <= now) {
        waiter *w = f->whead;
        f->whead = w->next;
        if (!f->whead)
            f->wtail = NULL;
        ready_push(c, w->cb, w->udata, SD_ETIMEDOUT, NULL, 0, 0);
        free(w);
    }
    if (f->state == FLIGHT_WAITING) {
        if (!f->whead) {
            flight_finish(f);
            return;
        }
        if (f->lease_wake_ms && f->lease_wake_ms <= now) {
            flight_lookup(f);
            return;
        }
    }
    flight_timer_arm(f);
}

static void flight_timer_arm(flight *f) {
    if (f->state == FLIGHT_DONE)
        return;
    uint64_t next = UINT64_MAX;
    if (f->whead)
        next = f->whead->deadline_ms;
    if (f->state == FLIGHT_WAITING && f->lease_wake_ms && f->lease_wake_ms < next)
        next = f->lease_wake_ms;
    if (next == UINT64_MAX) {
        uv_timer_stop(&f->timer);
        return;
    }
    uint64_t now = sd_now_ms();
    uv_timer_start(&f->timer, on_flight_timer, next > now ? next - now : 0, 0);
}

/* ---- Pub/sub --------------------------------------------------------------------------------- */

/* Parses a "filled" message: 0 with the key, the flag, the freshness and the value, else -1. */
static int parse_fill(const char *payload, size_t len, const char **key, size_t *klen, char *flag,
                      int *fresh_ms, const char **value, size_t *vlen) {
    if (len < FILL_HEAD_LEN(0))
        return -1;
    char hex[9], digits[11];
    memcpy(hex, payload + 1 + ID_LEN, 8);
    hex[8] = '\0';
    char *end;
    unsigned long long k = strtoull(hex, &end, 16);
    if (*end || k == 0 || k > len - FILL_HEAD_LEN(0))
        return -1;
    *klen = (size_t)k;
    *key = payload + 1 + ID_LEN + 8;
    *flag = (*key)[k];
    memcpy(digits, *key + k + 1, 10);
    digits[10] = '\0';
    *fresh_ms = (int)strtol(digits, &end, 10);
    if (*end || (*flag != '0' && *flag != '1' && *flag != '-'))
        return -1;
    *value = *key + k + 11;
    *vlen = len - FILL_HEAD_LEN(k);
    return 0;
}

static void on_message(sd_redis_sub *sub, const char *channel, const char *pattern,
                       const char *payload, size_t len, void *udata) {
    cache *c = udata;
    if (len <= 1 + ID_LEN || (payload[0] != 'f' && payload[0] != 'i'))
        return;
    int own = memcmp(payload + 1, c->id, ID_LEN) == 0;
    const char *key = payload + 1 + ID_LEN;
    size_t klen = len - 1 - ID_LEN;
    char flag = '-';
    int fresh_ms = 0;
    const char *value = NULL;
    size_t vlen = 0;
    if (payload[0] == 'i') {
        c->st.invalidations++;
    } else {
        if (parse_fill(payload, len, &key, &klen, &flag, &fresh_ms, &value, &vlen) != 0)
            return;
        c->st.fills++;
    }
    if (c->local && (payload[0] == 'i' || !own))
        local_del(c->local, key, klen);
    flight *f = flight_find(c, key, klen);
    if (!f)
        return;
    if (payload[0] == 'i') {
        f->tainted = 1;
        if (f->serve) { /* no more answers from a value older than the invalidation */
            cache_blob_unref(f->serve);
            f->serve = NULL;
        }
    }
    if (f->waited)
        f->woken = 1;
    if (f->state == FLIGHT_WAITING && payload[0] == 'f' && flag != '-' && !own) {
        /* The leader's value, as a look-up would have read it right after its store. */
        cache_blob *b = cache_blob_new(flag == '0' ? CACHE_OK : CACHE_NOTFOUND, value, vlen);
        c->st.woken_by_message++;
        c->st.fill_values++;
        flight_answer(f, b, CACHE_SRC_COALESCED, 0);
        local_store(c, f, b, fresh_ms);
        cache_blob_unref(b);
        flight_finish(f);
        return;
    }
    if (f->state == FLIGHT_LOOKUP)
        f->recheck = 1;
    else if (f->state == FLIGHT_WAITING)
        flight_lookup(f);
}

static void drop_local(cache *c) {
    if (c->local)
        local_clear(c->local);
    c->st.local_drops++;
    for (size_t i = 0; i < c->nbuckets; i++)
        for (flight *f = c->buckets[i]; f; f = f->hnext)
            f->tainted = 1;
}

/* Restarts the flights that wait for a message that may never come. */
static void restart_waiting(cache *c) {
    for (size_t i = 0; i < c->nbuckets; i++) {
        flight *f = c->buckets[i];
        while (f) {
            flight *next = f->hnext;
            if (f->state == FLIGHT_WAITING)
                flight_start(f);
            f = next;
        }
    }
}

static void on_sub_state(sd_redis_sub *sub, int connected, void *udata) {
    cache *c = udata;
    if (c->closing)
        return;
    c->sub_up = connected;
    if (connected) {
        c->st.sub_ups++;
        sd_log(SD_LOG_INFO, "cache.subscriber_up", NULL);
        return;
    }
    c->st.sub_downs++;
    /* Messages may have been missed: nothing cached before this moment is served from the
     * local tier after it (redis/redis#11767 is what happens otherwise). */
    drop_local(c);
    sd_log(SD_LOG_WARN, "cache.subscriber_down", "local_tier=dropped");
    restart_waiting(c);
}

static void on_redis_state(sd_aredis *r, int connected, void *udata) {
    cache *c = udata;
    if (c->closing) /* sd_aredis_free, from cache_free, may report the connection down */
        return;
    c->redis_up = connected;
    c->clock_at_ms = 0; /* a new connection may be another server: learn its clock again */
    if (connected)
        clock_refresh(c);
    else
        restart_waiting(c);
}

/* ---- The idle handle: starts queued flights, then runs the ready callbacks ------------------- */

static void on_idle(uv_idle_t *h) {
    cache *c = h->data;
    flight *q = c->qhead;
    c->qhead = c->qtail = NULL;
    while (q) {
        flight *next = q->qnext;
        q->qnext = NULL;
        if (q->state == FLIGHT_QUEUED)
            flight_start(q);
        q = next;
    }
    if (c->flush_pending) {
        /* May run reply callbacks with an error (a failed write closes the connection): they
         * only queue work, which runs below or on the next turn. */
        c->flush_pending = 0;
        sd_aredis_flush(c->r);
    }
    ready *r = c->rhead;
    c->rhead = c->rtail = NULL;
    while (r) {
        ready *next = r->next;
        ready_run(c, r);
        r = next;
    }
    if (!c->rhead && !c->qhead && !c->flush_pending && c->idle_on) {
        uv_idle_stop(&c->idle);
        c->idle_on = 0;
    }
}

/* ---- Public functions ------------------------------------------------------------------------ */

void cache_opts_default(cache_opts *o) {
    memset(o, 0, sizeof *o);
    o->prefix = "cache:v1:";
    o->local_bytes = 64u << 20;
    o->ttl_ms = 60000;
    o->jitter_pct = 10;
    o->negative_ttl_ms = 5000;
    o->lease_ms = 10000;
    o->wait_timeout_ms = 5000;
    o->degraded_ttl_ms = 1000;
    o->xfetch_beta = 1.0;
    o->redis_timeout_ms = 1000;
    o->reconnect_min_ms = 50;
    o->reconnect_max_ms = 2000;
    o->ping_interval_ms = 1000;
    o->wait_poll_ms = 1000;
    o->fast_margin_ms = 50;
}

int cache_new(uv_loop_t *loop, const sd_redis_url *url, const cache_opts *opts, cache **out) {
    cache_opts o;
    if (opts)
        o = *opts;
    else
        cache_opts_default(&o);
    if (!o.prefix || o.ttl_ms <= 0 || o.jitter_pct < 0 || o.jitter_pct > 50 ||
        o.negative_ttl_ms <= 0 || o.lease_ms <= 0 || o.wait_timeout_ms <= 0 ||
        o.degraded_ttl_ms <= 0 || o.swr_ms < 0 || o.sie_ms < 0 || o.xfetch_beta < 0 ||
        o.redis_timeout_ms <= 0 || o.wait_poll_ms <= 0)
        return -EINVAL;
    if (o.local_ttl_ms <= 0)
        o.local_ttl_ms = o.ttl_ms;
    cache *c = sd_xcalloc(1, sizeof *c);
    c->loop = loop;
    c->o = o;
    c->prefix = sd_xstrdup(o.prefix);
    c->o.prefix = c->prefix;
    c->channel = sd_xasprintf("%sevents", o.prefix);
    if (getrandom(&c->rng, sizeof c->rng, 0) != sizeof c->rng)
        c->rng = sd_now_ns() ^ ((uint64_t)getpid() << 32);
    c->rng |= 1;
    snprintf(c->id, sizeof c->id, "%016llx", (unsigned long long)rng_next(c));
    c->nbuckets = 64;
    c->buckets = sd_xcalloc(c->nbuckets, sizeof *c->buckets);
    if (o.local_bytes)
        c->local = local_new(o.local_bytes, LOCAL_SIEVE);
    uv_idle_init(loop, &c->idle);
    c->idle.data = c;
    c->handles = 1;
    if (url) {
        pthread_once(&scripts_once, scripts_init);
        static sd_script *const scripts[] = {&script_get, &script_store, &script_inval};
        sd_redis_opts ro;
        sd_redis_opts_default(&ro);
        ro.command_timeout_ms = o.redis_timeout_ms;
        ro.reconnect_min_ms = o.reconnect_min_ms;
        ro.reconnect_max_ms = o.reconnect_max_ms;
        ro.scripts = scripts;
        ro.nscripts = 3;
        sd_redis_sub_opts so;
        sd_redis_sub_opts_default(&so);
        so.redis.reconnect_min_ms = o.reconnect_min_ms;
        so.redis.reconnect_max_ms = o.reconnect_max_ms;
        so.ping_interval_ms = o.ping_interval_ms;
        if (sd_aredis_new(loop, url, &ro, &c->r) != 0 ||
            sd_redis_sub_new(loop, url, &so, &c->sub) != 0) {
            c->closing = 1;
            sd_aredis_free(c->r);
            c->r = NULL;
            cache_free(c);
            return -EINVAL;
        }
        c->has_redis = 1;
        sd_aredis_set_state_cb(c->r, on_redis_state, c);
        sd_redis_sub_set_callbacks(c->sub, on_message, on_sub_state, c);
        sd_redis_sub_subscribe(c->sub, c->channel);
    }
    *out = c;
    return 0;
}

int cache_get(cache *c, const char *key, size_t klen, cache_loader_fn *loader, void *loader_udata,
              cache_get_cb *cb, void *udata) {
    if (!key || klen == 0 || !loader || !cb)
        return -EINVAL;
    if (c->closing)
        return SD_ECLOSED;
    c->st.gets++;
    if (c->local) {
        cache_blob *b = local_get(c->local, key, klen, sd_now_ms());
        if (b) {
            ready_push(c, cb, udata, 0, b, CACHE_SRC_LOCAL, 0);
            return 0;
        }
    }
    flight *f = flight_find(c, key, klen);
    if (f && f->serve) {
        ready_push(c, cb, udata, 0, f->serve, f->serve_source, f->serve_stale);
        return 0;
    }
    waiter *w = sd_xcalloc(1, sizeof *w);
    w->cb = cb;
    w->udata = udata;
    w->deadline_ms = sd_now_ms() + (uint64_t)c->o.wait_timeout_ms;
    if (f) {
        w->joined = 1;
        if (f->wtail)
            f->wtail->next = w;
        else
            f->whead = w;
        f->wtail = w;
        if (f->whead == w)
            flight_timer_arm(f);
        return 0;
    }
    f = sd_xcalloc(1, sizeof *f + klen + 1);
    memcpy(f->key, key, klen);
    f->klen = klen;
    f->hash = cache_hash(key, klen);
    f->c = c;
    f->state = FLIGHT_QUEUED;
    f->loader = loader;
    f->loader_udata = loader_udata;
    snprintf(f->token, sizeof f->token, "%s-%016llx", c->id, (unsigned long long)rng_next(c));
    f->whead = f->wtail = w;
    f->ttl_ms = jittered_ttl(c, c->o.ttl_ms);
    uv_timer_init(c->loop, &f->timer);
    f->timer.data = f;
    c->handles++;
    flight **pp = &c->buckets[f->hash & (c->nbuckets - 1)];
    f->hnext = *pp;
    *pp = f;
    if (++c->nflights > c->nbuckets)
        table_grow(c);
    if (c->qtail)
        c->qtail->qnext = f;
    else
        c->qhead = f;
    c->qtail = f;
    if (!c->idle_on) {
        uv_idle_start(&c->idle, on_idle);
        c->idle_on = 1;
    }
    flight_timer_arm(f);
    return 0;
}

int cache_get_local(cache *c, const char *key, size_t klen, cache_result *out) {
    if (!c->local || !key || klen == 0 || c->closing)
        return 0;
    cache_blob *b = local_get(c->local, key, klen, sd_now_ms());
    if (!b)
        return 0;
    c->st.gets++;
    c->st.hits_local++;
    *out = (cache_result){.status = b->status,
                          .value = b->data,
                          .len = b->len,
                          .source = CACHE_SRC_LOCAL,
                          .stale = 0};
    return 1;
}

static void on_invalidated(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    inval_req *q = privdata;
    int err = status;
    if (err == 0 && reply->type != REDIS_REPLY_INTEGER)
        err = SD_EREDIS;
    if (q->cb)
        q->cb(q->c, err, q->udata);
    free(q);
}

int cache_invalidate(cache *c, const char *key, size_t klen, cache_done_cb *cb, void *udata) {
    if (!key || klen == 0)
        return -EINVAL;
    if (c->closing)
        return SD_ECLOSED;
    if (c->local)
        local_del(c->local, key, klen);
    flight *f = flight_find(c, key, klen);
    if (f) {
        f->tainted = 1;
        if (f->serve) { /* as on_message: no answers from a value older than this */
            cache_blob_unref(f->serve);
            f->serve = NULL;
        }
        if (f->state == FLIGHT_LOOKUP)
            f->recheck = 1;
    }
    if (!c->has_redis)
        return SD_EDISCONNECTED;
    size_t k1len, k2len, k3len, mlen;
    char *k1 = make_key(c, key, klen, "", &k1len);
    char *k2 = make_key(c, key, klen, ":lease", &k2len);
    char *k3 = make_key(c, key, klen, ":gen", &k3len);
    char *msg = make_message(c, 'i', key, klen, &mlen);
    char keep[24];
    snprintf(keep, sizeof keep, "%d", CACHE_GEN_KEEP_MS);
    const char *argv[] = {k1, k2, k3, c->channel, msg, keep};
    size_t lens[] = {k1len, k2len, k3len, strlen(c->channel), mlen, strlen(keep)};
    inval_req *q = sd_xcalloc(1, sizeof *q);
    q->c = c;
    q->cb = cb;
    q->udata = udata;
    int rc = sd_aredis_script(c->r, &script_inval, on_invalidated, q, c->o.redis_timeout_ms, 3, 6,
                              argv, lens);
    free(k1);
    free(k2);
    free(k3);
    free(msg);
    if (rc != 0) {
        free(q);
        return rc;
    }
    flush_soon(c);
    return 0;
}

typedef struct gen_req {
    cache *c;
    cache_gen_cb *cb;
    void *udata;
} gen_req;

static void on_generation(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    gen_req *q = privdata;
    int err = status;
    long long gen = 0;
    if (err == 0 && reply->type == REDIS_REPLY_STRING)
        err = sd_parse_ll(reply->str, 0, LLONG_MAX, &gen) == 0 ? 0 : SD_EREDIS;
    else if (err == 0 && reply->type != REDIS_REPLY_NIL)
        err = SD_EREDIS;
    q->cb(q->c, err, gen, q->udata);
    free(q);
}

int cache_gen_get(cache *c, const char *key, size_t klen, cache_gen_cb *cb, void *udata) {
    if (!key || klen == 0 || !cb)
        return -EINVAL;
    if (c->closing)
        return SD_ECLOSED;
    if (!c->has_redis || degraded(c))
        return SD_EDISCONNECTED;
    size_t k3len;
    char *k3 = make_key(c, key, klen, ":gen", &k3len);
    const char *argv[] = {"GET", k3};
    size_t lens[] = {3, k3len};
    gen_req *q = sd_xcalloc(1, sizeof *q);
    *q = (gen_req){.c = c, .cb = cb, .udata = udata};
    int rc = sd_aredis_commandv(c->r, on_generation, q, c->o.redis_timeout_ms, 2, argv, lens);
    free(k3);
    if (rc != 0) {
        free(q);
        return rc;
    }
    flush_soon(c);
    return 0;
}

int cache_is_degraded(const cache *c) {
    return degraded(c);
}

static void on_wait_timer(uv_timer_t *t) {
    *(int *)t->data = 1;
}

int cache_wait_ready(cache *c, int timeout_ms) {
    if (!c->has_redis)
        return 0;
    int fired = 0;
    uv_timer_t t;
    uv_timer_init(c->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_wait_timer, (uint64_t)timeout_ms, 0);
    while (degraded(c) && !fired)
        uv_run(c->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(c->loop, UV_RUN_NOWAIT);
    return degraded(c) ? SD_ETIMEDOUT : 0;
}

void cache_stats_get(const cache *c, cache_stats *out) {
    *out = c->st;
    out->local_bytes = c->local ? local_bytes(c->local) : 0;
    out->local_count = c->local ? local_count(c->local) : 0;
    out->flights = c->nflights;
}

static void maybe_free_cache(cache *c) {
    if (!c->closing || c->handles > 0)
        return;
    local_free(c->local);
    free(c->buckets);
    free(c->prefix);
    free(c->channel);
    free(c);
}

static void on_idle_closed(uv_handle_t *h) {
    cache *c = h->data;
    c->handles--;
    maybe_free_cache(c);
}

void cache_free(cache *c) {
    if (!c)
        return;
    c->closing = 1;
    /* Answers queued for the loop, then every waiter: SD_ECLOSED, from inside this call. */
    ready *r = c->rhead;
    c->rhead = c->rtail = NULL;
    while (r) {
        ready *next = r->next;
        r->err = SD_ECLOSED;
        ready_run(c, r);
        r = next;
    }
    c->qhead = c->qtail = NULL;
    for (size_t i = 0; i < c->nbuckets; i++) {
        flight *f = c->buckets[i];
        while (f) {
            flight *next = f->hnext;
            waiter *w = f->whead;
            f->whead = f->wtail = NULL;
            while (w) {
                waiter *wn = w->next;
                w->cb(c, SD_ECLOSED, NULL, w->udata);
                free(w);
                w = wn;
            }
            if (f->load) { /* detached: the loader's cache_load_done only frees it */
                f->load->f = NULL;
                f->load = NULL;
            }
            f = next;
        }
    }
    sd_aredis_free(c->r); /* pending look-ups and stores see SD_ECLOSED and finish */
    c->r = NULL;
    sd_redis_sub_free(c->sub);
    c->sub = NULL;
    for (size_t i = 0; i < c->nbuckets; i++) {
        flight *f = c->buckets[i];
        while (f) {
            flight *next = f->hnext;
            f->redis_pending = 0;
            flight_finish(f);
            f = next;
        }
    }
    uv_close((uv_handle_t *)&c->idle, on_idle_closed);
}
