/*
 * main.c - the `urlshortener` command.
 *
 *   urlshortener serve --listen ADDR --base-url URL [--redis URL] [--redirect 302|301|307|308]
 *                      [--create-limit 'NAME;q=Q;w=W'] [--flush-ms MS] [--key-file PATH]
 *
 *   POST   /v1/links          create (rate limited per client, Idempotency-Key) -> 201
 *   GET    /v1/links/{code}   the link with its click count
 *   DELETE /v1/links/{code}   delete: 204, every instance stops redirecting (cache invalidation)
 *   GET    /{code}            the redirect
 *
 * Design
 *  1. The redirect path goes through cache/ (two tiers, one origin load per code across the
 *     fleet, not-found cached for the negative TTL, invalidation by pub/sub): a hot code is
 *     answered from this process's memory with no Redis round trip. A string that is neither a
 *     canonical code nor a possible alias is 404 before the cache is asked.
 *  2. The redirect path's loads use the async look-up (us_links_get_async, us-get.lua over
 *     the loop's sd_aredis): many codes' misses are in flight at once. The rest of the link
 *     library is synchronous: create, and the API's get and delete, run on libuv's thread pool
 *     (uv_queue_work) over one sync connection, one job at a time from a queue kept on the loop
 *     (so no pool thread ever waits for another's Redis call). The loop never blocks on Redis;
 *     a create costs a pool thread for its one or two round trips, which is cheap next to the
 *     redirect volume, and keeps links.c the one place that writes links (its id blocks, skips
 *     and SET NX). The price: one instance's creates are serialised, a round trip each.
 *  3. Clicks of links without a budget are counted in this process (a table code -> count)
 *     and flushed every --flush-ms with one us-flush.lua per code: INCRBY <prefix>c:{code}
 *     while the link exists (a deleted link's counter is not brought back), the counter's TTL
 *     set to the link's; both keys share the code's hash tag. A flush that Redis refused before
 *     sending (the call not accepted) stays for the next flush; one that was sent and got no
 *     reply (timed out, or the connection dropped: it may have been written) may or may not
 *     have been applied and is dropped (counted in us_clicks_uncertain_total) rather than risk
 *     counting twice. A graceful stop flushes what is left synchronously. A crash (SIGKILL, power)
 * loses the clicks of at most the last --flush-ms of that instance.
 *  4. Links with max_clicks are exact across instances, and a hot one costs no Redis round trip
 *     per click: an instance leases a block of the budget (us-lease.lua: an eighth of what is
 *     left, 1 to LEASE_BLOCK_MAX clicks, added to the link's "leased" total atomically, never
 *     past max_clicks) and spends it from memory. Redirects that find no lease here wait for
 *     the one lease call in flight for their code. Every flush reports the clicks spent
 *     (us-settle.lua adds them to the click counter) and gives the unspent rest back when the
 *     lease was idle for the whole period or another instance is waiting for budget (us-lease
 *     leaves a "want" mark that us-settle reports); a graceful stop gives everything back. So
 *     the redirects answered across every instance never pass max_clicks: each one spends a
 *     click leased to its instance alone. When nothing is left to lease but other instances
 *     still hold some, a request waits up to LEASE_RETRIES retries, one every min(--flush-ms,
 *     1 s), then gets 410 and the instance answers 410 at once while the code stays busy.
 *     What a crash loses: the unspent rest of the dead instance's leases (at most one block
 *     per link: under-admitted, never over-admitted) and its spent clicks not yet reported
 *     (the count is low by at most --flush-ms of them, as in 3).
 *
 * Cached value of a code: "F EXPIRES_AT_MS MAX_CLICKS CREATED_MS URL" (found) or "E" (expired:
 * 410); CREATED_MS tells a link from an earlier one of the same code (an alias deleted and
 * claimed again), whose lease must not be spent on it;
 * unknown codes are cached as CACHE_NOTFOUND.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "admin.h"
#include "cache.h"
#include "cli.h"
#include "code.h"
#include "http.h"
#include "idempotency.h"
#include "links.h"
#include "local_redis.h"
#include "ratelimit.h"
#include "rl_http.h"
#include "redis.h"
#include "sd.h"

/* The scripts main.c runs itself, embedded into the us library (CMakeLists.txt). */
extern const char sd_lua_us_lease[];
extern const size_t sd_lua_us_lease_len;
extern const char sd_lua_us_settle[];
extern const size_t sd_lua_us_settle_len;
extern const char sd_lua_us_flush[];
extern const size_t sd_lua_us_flush_len;

#define PREFIX "us:"

typedef struct options {
    const char *listen, *base_url, *redis, *key_file, *admin_token_file;
    long long redirect, flush_ms;
    rl_config rl;
    int nlimits;
    sd_admin admin;      /* who may DELETE a link: a bearer token, or loopback clients only */
    sd_http_trust trust; /* --trust-proxy: whose X-Forwarded-For names the client */
} options;

struct job;

/* A sync connection and its link store. Its jobs run one at a time, in order: the loop keeps
 * the queue and hands the pool the next one when the last is done, so no pool thread ever waits
 * for another's Redis call (the mutex is for the final flush at a stop, which may meet a job
 * still running). */
typedef struct store {
    pthread_mutex_t mu;
    sd_redis *redis;
    us_links *links;
    struct job *head, *tail; /* waiting, owned */
    int busy;                /* one job in the pool */
    size_t queued;
} store;

/* One code's clicks not yet flushed. */
typedef struct click {
    struct click *next;
    long long n;
    char code[];
} click;

#define CLICK_BUCKETS 4096

/* A request waiting for click budget. */
typedef struct waiter {
    struct waiter *next;
    sd_http_req *req;
} waiter;

/* This instance's share of one budgeted link's clicks (design 4). */
typedef struct lease {
    struct lease *next;
    long long left;     /* leased to this instance, unspent */
    long long spent;    /* spent since the last report */
    long long max;      /* the link's max_clicks */
    int64_t created;    /* the link's created_ms: a lease is of one link, not of its code */
    int64_t expires_at; /* the link's, for the redirect's Cache-Control */
    int used;           /* spent or asked for since the last flush (not idle) */
    int asking;         /* a us-lease.lua call in flight */
    int retry;          /* waiting for the retry timer (the rest is held by other instances) */
    int tries;          /* "held elsewhere" answers in a row */
    int give_back;      /* another instance waits: return the unspent rest at the next flush */
    int final;          /* answer 410 without asking (spent, or given up on the holders) */
    waiter *head, *tail;
    char *url; /* owned */
    char code[];
} lease;

/* Retries of a request that found the rest of the budget held by other instances, one every
 * min(--flush-ms, 1 s), before it gets 410. */
#define LEASE_RETRIES 6
/* The largest block of a budget one lease hands out. */
#define LEASE_BLOCK_MAX 1000

typedef struct app {
    uv_loop_t *loop;
    options *o;
    char *base; /* base URL without a trailing slash */
    us_codec *codec;
    store api;
    cache *cache;
    sd_aredis *ar;
    sd_idem *idem;
    rl_limiter *limiter;
    const rl_config *rl;
    sd_http_server *http;
    uv_timer_t flush_timer;
    click *clicks[CLICK_BUCKETS];
    lease *leases[CLICK_BUCKETS];
    uv_timer_t lease_timer; /* retries leases held elsewhere */
    long long pending;
    uint64_t clicks_flushed, clicks_uncertain, clicks_dropped, clicks_budgeted, budget_spent;
    uint64_t lease_calls, lease_granted, lease_returned, lease_lost, lease_given_up;
    uint64_t redirects, not_found, gone, impossible;
    us_links_stats links;         /* the store's, as of the last create (read on the loop) */
    struct redirect_op *free_ops; /* owned: freed at the end of serve() */
    size_t nfree_ops;
} app;

static sd_script lease_script = {"urlshortener/lease", NULL, 0, ""};
static sd_script settle_script = {"urlshortener/settle", NULL, 0, ""};
static sd_script flush_script = {"urlshortener/flush", NULL, 0, ""};

static int64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- Clicks ------------------------------------------------------------------------------------
 */

static uint64_t hash_code(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void clicks_add(app *a, const char *code, long long n) {
    click **slot = &a->clicks[hash_code(code) % CLICK_BUCKETS];
    for (click *c = *slot; c; c = c->next) {
        if (strcmp(c->code, code) == 0) {
            c->n += n;
            a->pending += n;
            return;
        }
    }
    size_t len = strlen(code);
    click *c = sd_xmalloc(sizeof(*c) + len + 1);
    memcpy(c->code, code, len + 1);
    c->n = n;
    c->next = *slot;
    *slot = c;
    a->pending += n;
}

/* Forgets a code's unflushed clicks (its link was deleted). */
static void clicks_forget(app *a, const char *code) {
    for (click **p = &a->clicks[hash_code(code) % CLICK_BUCKETS]; *p; p = &(*p)->next) {
        if (strcmp((*p)->code, code) == 0) {
            click *c = *p;
            a->pending -= c->n;
            *p = c->next;
            free(c);
            return;
        }
    }
}

typedef struct flush_op {
    app *a;
    long long n;
    char code[];
} flush_op;

static void on_flushed(sd_aredis *r, redisReply *reply, int status, void *udata) {
    (void)r;
    flush_op *f = udata;
    app *a = f->a;
    if (status == 0 && reply->type == REDIS_REPLY_INTEGER && reply->integer < 0) {
        a->clicks_dropped += (uint64_t)f->n; /* the link is gone */
    } else if (status == 0 && reply->type == REDIS_REPLY_INTEGER) {
        a->clicks_flushed += (uint64_t)f->n;
    } else {
        a->clicks_uncertain += (uint64_t)f->n; /* may have been applied: never counted twice */
        sd_log(SD_LOG_WARN, "urlshortener.flush_uncertain", "code=%s clicks=%lld error=\"%s\"",
               f->code, f->n, status ? sd_strerror(status) : "reply");
    }
    free(f);
}

static void clicks_flush(app *a) {
    for (size_t i = 0; i < CLICK_BUCKETS; i++) {
        click *c = a->clicks[i];
        a->clicks[i] = NULL;
        while (c) {
            click *next = c->next;
            a->pending -= c->n;
            size_t len = strlen(c->code);
            flush_op *f = sd_xmalloc(sizeof(*f) + len + 1);
            f->a = a;
            f->n = c->n;
            memcpy(f->code, c->code, len + 1);
            char key[US_ALIAS_MAX + 16], link[US_ALIAS_MAX + 16], n[24];
            snprintf(key, sizeof key, PREFIX "c:{%s}", c->code);
            snprintf(link, sizeof link, PREFIX "l:{%s}", c->code);
            snprintf(n, sizeof n, "%lld", c->n);
            const char *argv[] = {key, link, n};
            if (sd_aredis_script(a->ar, &flush_script, on_flushed, f, 0, 2, 3, argv, NULL) != 0) {
                clicks_add(a, f->code, f->n); /* Redis down: kept for the next flush */
                free(f);
            }
            free(c);
            c = next;
        }
    }
    sd_aredis_flush(a->ar);
}

static void leases_flush(app *a);

static void on_flush_timer(uv_timer_t *t) {
    leases_flush(t->data);
    clicks_flush(t->data);
}

/* At a graceful stop: what is left goes over the sync connection (the loop is ending). */
static void clicks_flush_sync(app *a) {
    for (size_t i = 0; i < CLICK_BUCKETS; i++) {
        for (click *c = a->clicks[i]; c;) {
            click *next = c->next;
            int err = 0;
            char key[US_ALIAS_MAX + 16], link[US_ALIAS_MAX + 16], n[24];
            snprintf(key, sizeof key, PREFIX "c:{%s}", c->code);
            snprintf(link, sizeof link, PREFIX "l:{%s}", c->code);
            snprintf(n, sizeof n, "%lld", c->n);
            const char *argv[] = {key, link, n};
            pthread_mutex_lock(&a->api.mu);
            redisReply *r = sd_redis_script(a->api.redis, &err, 0, &flush_script, 2, 3, argv, NULL);
            pthread_mutex_unlock(&a->api.mu);
            if (r && r->type == REDIS_REPLY_INTEGER)
                a->clicks_flushed += (uint64_t)c->n;
            else
                sd_log(SD_LOG_WARN, "urlshortener.flush_lost", "code=%s clicks=%lld", c->code,
                       c->n);
            if (r)
                freeReplyObject(r);
            a->pending -= c->n;
            free(c);
            c = next;
        }
        a->clicks[i] = NULL;
    }
}

/* ---- Work on the pool -------------------------------------------------------------------------
 */

enum { JOB_CREATE, JOB_GET, JOB_DELETE };

typedef struct job {
    uv_work_t work;
    app *a;
    int kind;
    /* in */
    char code[US_ALIAS_MAX + 1];
    char *url, *alias;
    us_create_req req;
    /* out */
    int rc;
    us_verdict verdict;
    sd_addr_verdict why;
    us_link_state state;
    us_link link;
    long long clicks;
    us_links_stats stats; /* the store's, after a create */
    /* who waits */
    sd_idem_call *call;
    sd_http_req *hreq;
    cache_load *load;
    /* the store's queue */
    store *store;
    uv_after_work_cb done;
    struct job *next;
} job;

static void job_free(job *j) {
    us_link_clear(&j->link);
    free(j->url);
    free(j->alias);
    free(j);
}

static long long read_clicks(store *s, const char *code) {
    int err = 0;
    redisReply *r = sd_redis_command(s->redis, &err, "GET " PREFIX "c:{%s}", code);
    long long n = -1;
    if (r && r->type == REDIS_REPLY_STRING)
        n = strtoll(r->str, NULL, 10);
    else if (r && r->type == REDIS_REPLY_NIL)
        n = 0;
    if (r)
        freeReplyObject(r);
    return n;
}

static void job_run(uv_work_t *w) {
    job *j = w->data;
    store *s = j->store;
    pthread_mutex_lock(&s->mu);
    switch (j->kind) {
    case JOB_CREATE:
        j->rc = us_links_create(s->links, &j->req, &j->link, &j->verdict, &j->why);
        us_links_stats_get(s->links, &j->stats);
        break;
    case JOB_GET:
        j->rc = us_links_get(s->links, j->code, &j->state, &j->link);
        if (j->rc == 0 && j->kind == JOB_GET && j->state != US_LINK_NOT_FOUND) {
            j->clicks = read_clicks(s, j->code);
            if (j->clicks < 0)
                j->rc = SD_EREDIS;
        }
        break;
    case JOB_DELETE:
        j->rc = us_links_delete(s->links, j->code);
        if (j->rc >= 0) {
            int err = 0;
            redisReply *r = sd_redis_command(
                s->redis, &err, "DEL " PREFIX "c:{%s} " PREFIX "b:{%s}", j->code, j->code);
            if (r)
                freeReplyObject(r);
        }
        break;
    }
    pthread_mutex_unlock(&s->mu);
}

static void job_after(uv_work_t *w, int status);

static void store_next(app *a, store *s) {
    job *j = s->head;
    if (s->busy || !j)
        return;
    s->head = j->next;
    if (!s->head)
        s->tail = NULL;
    s->queued--;
    s->busy = 1;
    int rc = uv_queue_work(a->loop, &j->work, job_run, job_after);
    if (rc != 0) { /* only for a NULL callback: cannot happen */
        sd_log(SD_LOG_ERROR, "urlshortener.queue", "error=\"%s\"", uv_strerror(rc));
        abort();
    }
}

static void job_after(uv_work_t *w, int status) {
    job *j = w->data;
    store *s = j->store;
    s->busy = 0;
    store_next(j->a, s);
    j->done(w, status);
}

/* Queues j on its store (loads on `load`, the rest on `api`); done runs on the loop. */
static void job_queue(app *a, job *j, uv_after_work_cb done) {
    j->a = a;
    j->work.data = j;
    j->done = done;
    j->store = &a->api;
    j->next = NULL;
    store *s = j->store;
    if (s->tail)
        s->tail->next = j;
    else
        s->head = j;
    s->tail = j;
    s->queued++;
    store_next(a, s);
}

/* ---- The redirect path ------------------------------------------------------------------------
 */

static void on_loaded(int rc, us_link_state state, const us_link *link, void *udata) {
    cache_load *load = udata;
    if (rc < 0) {
        cache_load_done(load, CACHE_ERROR, "", 0);
    } else if (state == US_LINK_NOT_FOUND) {
        cache_load_done(load, CACHE_NOTFOUND, "", 0);
    } else if (state == US_LINK_EXPIRED) {
        cache_load_done(load, CACHE_OK, "E", 1);
    } else {
        char *v = sd_xasprintf("F %lld %lld %lld %s", (long long)link->expires_at_ms,
                               (long long)link->max_clicks, (long long)link->created_ms, link->url);
        int ttl = 0; /* the configured one */
        if (link->expires_at_ms > 0) {
            int64_t left = link->expires_at_ms - wall_ms();
            ttl = left < 1 ? 1 : left < 60000 ? (int)left : 0;
        }
        cache_load_done_ttl(load, CACHE_OK, v, strlen(v), ttl);
        free(v);
    }
}

static void code_loader(cache_load *load, const char *key, size_t klen, void *udata) {
    app *a = udata;
    char code[US_ALIAS_MAX + 1];
    snprintf(code, sizeof code, "%.*s", (int)klen, key);
    int rc = us_links_get_async(a->api.links, a->ar, code, on_loaded, load);
    if (rc == -EINVAL)
        cache_load_done(load, CACHE_NOTFOUND, "", 0);
    else if (rc != 0)
        cache_load_done(load, CACHE_ERROR, "", 0);
}

static void respond_gone(sd_http_req *req, const char *detail) {
    sd_http_req_add_header(req, "Cache-Control", "no-store");
    sd_http_req_respond_problem(req, 410, NULL, "Link gone", detail, NULL);
}

static void respond_redirect(app *a, sd_http_req *req, const char *url, int64_t expires_at) {
    int st = (int)a->o->redirect;
    if (st == 301 || st == 308) {
        long long max_age = 300;
        if (expires_at > 0) {
            long long left = (expires_at - wall_ms()) / 1000;
            max_age = left < max_age ? (left < 0 ? 0 : left) : max_age;
        }
        char cc[48];
        snprintf(cc, sizeof cc, "max-age=%lld", max_age);
        sd_http_req_add_header(req, "Cache-Control", cc);
    } else {
        sd_http_req_add_header(req, "Cache-Control", "private, max-age=0");
    }
    sd_http_req_add_header(req, "Location", url);
    a->redirects++;
    sd_http_req_respond(req, st, NULL, NULL, 0);
}

/* ---- Click budgets leased in blocks (design 4) -------------------------------------------------
 */

static lease *lease_find(app *a, const char *code) {
    for (lease *l = a->leases[hash_code(code) % CLICK_BUCKETS]; l; l = l->next)
        if (strcmp(l->code, code) == 0)
            return l;
    return NULL;
}

static lease *lease_get(app *a, const char *code, long long max, int64_t expires_at,
                        int64_t created, const char *url) {
    lease *l = lease_find(a, code);
    if (!l) {
        size_t len = strlen(code);
        l = sd_xcalloc(1, sizeof(*l) + len + 1);
        memcpy(l->code, code, len + 1);
        lease **slot = &a->leases[hash_code(code) % CLICK_BUCKETS];
        l->next = *slot;
        *slot = l;
        l->created = created;
    } else if (l->created != created) {
        /* The code now names another link (deleted elsewhere and claimed again): what this
         * instance held of the old one's budget went with it (its calls still out are ignored:
         * the scripts answer "gone" for another link, and on_leased checks created). */
        a->lease_lost += (uint64_t)l->left;
        a->clicks_dropped += (uint64_t)l->spent;
        a->pending -= l->spent;
        l->left = l->spent = 0;
        l->asking = l->retry = l->tries = l->give_back = l->final = 0;
        l->created = created;
    }
    if (!l->url || strcmp(l->url, url) != 0) {
        free(l->url);
        l->url = sd_xstrdup(url);
    }
    l->max = max;
    l->expires_at = expires_at;
    return l;
}

static void lease_unlink_free(app *a, lease *l) {
    for (lease **p = &a->leases[hash_code(l->code) % CLICK_BUCKETS]; *p; p = &(*p)->next) {
        if (*p == l) {
            *p = l->next;
            break;
        }
    }
    free(l->url);
    free(l);
}

/* Answers every waiter of l the same way (kind: 404, 410 or 503). */
static void lease_refuse_waiters(app *a, lease *l, int kind, const char *detail) {
    while (l->head) {
        waiter *w = l->head;
        l->head = w->next;
        if (kind == 410) {
            a->budget_spent++;
            respond_gone(w->req, detail);
        } else if (kind == 404) {
            a->not_found++;
            sd_http_req_add_header(w->req, "Cache-Control", "no-store");
            sd_http_req_respond_problem(w->req, 404, NULL, "No such link", NULL, NULL);
        } else {
            sd_http_req_respond_problem(w->req, 503, NULL, "Click budget unavailable", detail,
                                        NULL);
        }
        free(w);
    }
    l->tail = NULL;
}

/* Spends one click of l's lease on req. */
static void lease_spend(app *a, lease *l, sd_http_req *req) {
    l->left--;
    l->spent++;
    l->used = 1;
    a->clicks_budgeted++;
    a->pending++;
    respond_redirect(a, req, l->url, l->expires_at);
}

static void lease_ask(app *a, lease *l);

typedef struct lease_op {
    app *a;
    int64_t created; /* the link the lease was asked for */
    char code[];
} lease_op;

static void on_leased(sd_aredis *r, redisReply *reply, int status, void *udata) {
    (void)r;
    lease_op *op = udata;
    app *a = op->a;
    lease *l = lease_find(a, op->code);
    if (l && l->created != op->created)
        l = NULL; /* asked for a link since replaced: its lease is not this one's */
    free(op);
    long long n = status == 0 && reply->type == REDIS_REPLY_INTEGER ? reply->integer : LLONG_MIN;
    if (!l) { /* forgotten: the link was deleted (or replaced) meanwhile */
        if (n > 0)
            a->lease_lost += (uint64_t)n;
        return;
    }
    l->asking = 0;
    if (n == LLONG_MIN) {
        lease_refuse_waiters(a, l, 503, status ? sd_strerror(status) : "unexpected reply");
    } else if (n > 0) {
        a->lease_granted += (uint64_t)n;
        l->left += n;
        l->tries = 0;
        while (l->head && l->left > 0) {
            waiter *w = l->head;
            l->head = w->next;
            if (!l->head)
                l->tail = NULL;
            lease_spend(a, l, w->req);
            free(w);
        }
        if (l->head)
            lease_ask(a, l);
    } else if (n == 0) {
        l->final = 1;
        lease_refuse_waiters(a, l, 410, "the link has used all its clicks");
    } else if (n == -1) {
        lease_refuse_waiters(a, l, 404, NULL);
    } else if (++l->tries > LEASE_RETRIES) {
        /* The rest stays with other instances (or died with one): under-admitted, never over. */
        a->lease_given_up++;
        l->final = 1;
        l->tries = 0;
        lease_refuse_waiters(a, l, 410, "the rest of the link's clicks is held elsewhere");
    } else {
        l->retry = 1;
    }
}

/* The 6 arguments of us-lease.lua and us-settle.lua for l: its code's lease record, click
 * counter and link key, two numbers (lease: max_clicks and the largest block; settle: the clicks
 * spent and the clicks given back), and the link's created_ms. */
typedef struct lease_argv {
    char text[6][US_ALIAS_MAX + 16];
    const char *argv[6];
} lease_argv;

static void lease_argv_fill(lease_argv *v, const lease *l, long long x, long long y) {
    snprintf(v->text[0], sizeof v->text[0], PREFIX "b:{%s}", l->code);
    snprintf(v->text[1], sizeof v->text[1], PREFIX "c:{%s}", l->code);
    snprintf(v->text[2], sizeof v->text[2], PREFIX "l:{%s}", l->code);
    snprintf(v->text[3], sizeof v->text[3], "%lld", x);
    snprintf(v->text[4], sizeof v->text[4], "%lld", y);
    snprintf(v->text[5], sizeof v->text[5], "%lld", (long long)l->created);
    for (int i = 0; i < 6; i++)
        v->argv[i] = v->text[i];
}

static void lease_ask(app *a, lease *l) {
    lease_argv v;
    lease_argv_fill(&v, l, l->max, LEASE_BLOCK_MAX);
    size_t len = strlen(l->code);
    lease_op *op = sd_xmalloc(sizeof(*op) + len + 1);
    op->a = a;
    op->created = l->created;
    memcpy(op->code, l->code, len + 1);
    l->used = 1;
    a->lease_calls++;
    if (sd_aredis_script(a->ar, &lease_script, on_leased, op, 0, 3, 6, v.argv, NULL) != 0) {
        free(op);
        lease_refuse_waiters(a, l, 503, "Redis is not connected");
        return;
    }
    l->asking = 1;
}

/* A redirect of a link with max_clicks: from this instance's lease when it holds some, else it
 * waits for the next lease. */
static void lease_redirect(app *a, sd_http_req *req, const char *code, long long max,
                           int64_t expires_at, int64_t created, const char *url) {
    lease *l = lease_get(a, code, max, expires_at, created, url);
    if (l->left > 0) {
        lease_spend(a, l, req);
        return;
    }
    l->used = 1;
    if (l->final) {
        a->budget_spent++;
        respond_gone(req, "the link has used all its clicks");
        return;
    }
    waiter *w = sd_xmalloc(sizeof(*w));
    w->req = req;
    w->next = NULL;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
    if (!l->asking && !l->retry)
        lease_ask(a, l);
}

static void on_lease_timer(uv_timer_t *t) {
    app *a = t->data;
    for (size_t i = 0; i < CLICK_BUCKETS; i++)
        for (lease *l = a->leases[i]; l; l = l->next)
            if (l->retry && !l->asking) {
                l->retry = 0;
                if (l->head)
                    lease_ask(a, l);
            }
}

typedef struct settle_op {
    app *a;
    long long spent, back;
    int64_t created; /* the link reported on */
    char code[];
} settle_op;

static void on_settled(sd_aredis *r, redisReply *reply, int status, void *udata) {
    (void)r;
    settle_op *op = udata;
    app *a = op->a;
    lease *l = lease_find(a, op->code);
    if (l && l->created != op->created)
        l = NULL; /* a report on a link since replaced */
    if (status == 0 && reply->type == REDIS_REPLY_INTEGER && reply->integer < 0) {
        a->clicks_dropped += (uint64_t)op->spent; /* the link is gone */
    } else if (status == 0 && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        a->clicks_flushed += (uint64_t)op->spent;
        a->lease_returned += (uint64_t)op->back;
        if (l && reply->element[1]->type == REDIS_REPLY_INTEGER && reply->element[1]->integer)
            l->give_back = 1;
    } else {
        /* May have been applied: never counted twice. Clicks returned that way are lost to
         * the budget (under-admitted). */
        a->clicks_uncertain += (uint64_t)op->spent;
        a->lease_lost += (uint64_t)op->back;
        sd_log(SD_LOG_WARN, "urlshortener.settle_uncertain", "code=%s clicks=%lld returned=%lld",
               op->code, op->spent, op->back);
    }
    free(op);
}

/* Every --flush-ms: each lease reports its spent clicks, and gives its unspent rest back when
 * it was idle for the whole period or another instance waits for it; an empty idle lease is
 * forgotten. */
static void leases_flush(app *a) {
    for (size_t i = 0; i < CLICK_BUCKETS; i++) {
        for (lease *l = a->leases[i], *next; l; l = next) {
            next = l->next;
            long long back = l->left > 0 && (!l->used || l->give_back) ? l->left : 0;
            if (l->spent > 0 || back > 0) {
                size_t len = strlen(l->code);
                settle_op *op = sd_xmalloc(sizeof(*op) + len + 1);
                op->a = a;
                op->spent = l->spent;
                op->back = back;
                op->created = l->created;
                memcpy(op->code, l->code, len + 1);
                lease_argv v;
                lease_argv_fill(&v, l, l->spent, back);
                if (sd_aredis_script(a->ar, &settle_script, on_settled, op, 0, 3, 6, v.argv,
                                     NULL) != 0) {
                    free(op); /* Redis down: kept for the next flush */
                    continue;
                }
                a->pending -= l->spent;
                l->spent = 0;
                l->left -= back;
                l->give_back = 0;
            }
            if (!l->used && l->left == 0 && l->spent == 0 && !l->head && !l->asking && !l->retry)
                lease_unlink_free(a, l);
            else
                l->used = 0;
        }
    }
}

/* At a graceful stop: every lease reports and gives back all it holds, over the sync
 * connection. */
static void leases_flush_sync(app *a) {
    for (size_t i = 0; i < CLICK_BUCKETS; i++) {
        while (a->leases[i]) {
            lease *l = a->leases[i];
            if (l->spent > 0 || l->left > 0) {
                int err = 0;
                lease_argv v;
                lease_argv_fill(&v, l, l->spent, l->left);
                pthread_mutex_lock(&a->api.mu);
                redisReply *r =
                    sd_redis_script(a->api.redis, &err, 0, &settle_script, 3, 6, v.argv, NULL);
                pthread_mutex_unlock(&a->api.mu);
                if (r && (r->type == REDIS_REPLY_ARRAY || r->type == REDIS_REPLY_INTEGER))
                    a->clicks_flushed += (uint64_t)l->spent;
                else
                    sd_log(SD_LOG_WARN, "urlshortener.settle_lost",
                           "code=%s clicks=%lld returned=%lld", l->code, l->spent, l->left);
                if (r)
                    freeReplyObject(r);
                a->pending -= l->spent;
            }
            while (l->head) { /* the server is stopped: nobody reads their answer */
                waiter *w = l->head;
                l->head = w->next;
                free(w);
            }
            a->leases[i] = l->next;
            free(l->url);
            free(l);
        }
    }
}

/* A deleted link: its lease and waiters go (the waiters get 404). */
static void lease_forget(app *a, const char *code) {
    lease *l = lease_find(a, code);
    if (!l)
        return;
    a->pending -= l->spent;
    lease_refuse_waiters(a, l, 404, NULL);
    lease_unlink_free(a, l);
}

/* A redirect waiting for its cache answer. Kept on a free list (at most REDIRECT_OPS_KEPT), so a
 * hit allocates nothing of ours. */
typedef struct redirect_op {
    app *a;
    sd_http_req *req;
    struct redirect_op *next_free;
    char code[US_ALIAS_MAX + 1];
} redirect_op;

#define REDIRECT_OPS_KEPT 4096

static void redirect_op_put(app *a, redirect_op *op) {
    if (a->nfree_ops >= REDIRECT_OPS_KEPT) {
        free(op);
        return;
    }
    op->next_free = a->free_ops;
    a->free_ops = op;
    a->nfree_ops++;
}

static void on_cached(cache *c, int err, const cache_result *res, void *udata) {
    (void)c;
    redirect_op *op = udata;
    app *a = op->a;
    sd_http_req *req = op->req;
    if (err || res->status == CACHE_ERROR) {
        sd_http_req_respond_problem(req, 503, NULL, "Link store unavailable",
                                    err ? sd_strerror(err) : "a recent look-up failed", NULL);
    } else if (res->status == CACHE_NOTFOUND) {
        a->not_found++;
        sd_http_req_add_header(req, "Cache-Control", "no-store");
        sd_http_req_respond_problem(req, 404, NULL, "No such link", NULL, NULL);
    } else if (res->len < 1 || res->value[0] == 'E') {
        a->gone++;
        respond_gone(req, "the link has expired");
    } else {
        /* "F EXPIRES_AT MAX CREATED URL", parsed by hand: this runs on every hit. */
        char *end = NULL;
        long long exp = 0, max = 0, created = 0;
        int used = 0;
        if (res->value[0] == 'F' && res->value[1] == ' ') {
            exp = strtoll(res->value + 2, &end, 10);
            if (end && *end == ' ')
                max = strtoll(end + 1, &end, 10);
            if (end && *end == ' ')
                created = strtoll(end + 1, &end, 10);
            if (end && *end == ' ')
                used = (int)(end + 1 - res->value);
        }
        if (used <= 0) {
            sd_http_req_respond_problem(req, 500, NULL, "Bad cached link", NULL, NULL);
        } else if (exp > 0 && wall_ms() >= exp) {
            a->gone++;
            respond_gone(req, "the link has expired");
        } else if (max > 0) {
            lease_redirect(a, req, op->code, max, exp, created, res->value + used);
        } else {
            clicks_add(a, op->code, 1);
            respond_redirect(a, req, res->value + used, exp);
        }
    }
    redirect_op_put(a, op);
}

static void on_redirect(sd_http_req *req, void *udata) {
    app *a = udata;
    const char *code = sd_http_req_path(req) + 1;
    size_t len = strlen(code);
    if (len > US_ALIAS_MAX || !us_code_possible(a->codec, code)) {
        a->impossible++;
        sd_http_req_add_header(req, "Cache-Control", "no-store");
        sd_http_req_respond_problem(req, 404, NULL, "No such link", "not a possible code", NULL);
        return;
    }
    redirect_op *op = a->free_ops;
    if (op) {
        a->free_ops = op->next_free;
        a->nfree_ops--;
    } else {
        op = sd_xmalloc(sizeof(*op));
    }
    op->a = a;
    op->req = req;
    memcpy(op->code, code, len + 1);
    int rc = cache_get(a->cache, code, len, code_loader, a, on_cached, op);
    if (rc != 0) {
        redirect_op_put(a, op);
        sd_http_req_respond_problem(req, 503, NULL, "Cache unavailable", sd_strerror(rc), NULL);
    }
}

/* ---- /v1/links/{code} -------------------------------------------------------------------------
 */

static json_t *link_json(app *a, const us_link *l) {
    json_t *j = json_pack("{s:s, s:s, s:s}", "code", l->code, "url", l->url, "short_url", "");
    char *short_url = sd_xasprintf("%s/%s", a->base, l->code);
    json_object_set_new(j, "short_url", json_string(short_url));
    free(short_url);
    json_object_set_new(j, "created_at", json_integer(l->created_ms));
    if (l->expires_at_ms > 0)
        json_object_set_new(j, "expires_at", json_integer(l->expires_at_ms));
    if (l->max_clicks > 0)
        json_object_set_new(j, "max_clicks", json_integer(l->max_clicks));
    return j;
}

static void get_done(uv_work_t *w, int status) {
    (void)status;
    job *j = w->data;
    if (j->rc < 0) {
        sd_http_req_respond_problem(j->hreq, 503, NULL, "Link store unavailable",
                                    us_strerror(j->rc), NULL);
    } else if (j->state == US_LINK_NOT_FOUND) {
        sd_http_req_add_header(j->hreq, "Cache-Control", "no-store");
        sd_http_req_respond_problem(j->hreq, 404, NULL, "No such link", NULL, NULL);
    } else {
        json_t *body = link_json(j->a, &j->link);
        json_object_set_new(body, "clicks", json_integer(j->clicks));
        json_object_set_new(body, "expired", json_boolean(j->state == US_LINK_EXPIRED));
        sd_http_req_respond_json(j->hreq, 200, body);
    }
    job_free(j);
}

typedef struct delete_op {
    sd_http_req *req;
} delete_op;

static void on_invalidated(cache *c, int err, void *udata) {
    (void)c;
    sd_http_req *req = udata;
    if (err)
        sd_http_req_respond_problem(req, 503, NULL, "Invalidation failed",
                                    "the link is deleted; other instances may serve it until "
                                    "their cached copy expires",
                                    NULL);
    else
        sd_http_req_respond(req, 204, NULL, NULL, 0);
}

static void delete_done(uv_work_t *w, int status) {
    (void)status;
    job *j = w->data;
    app *a = j->a;
    if (j->rc < 0) {
        sd_http_req_respond_problem(j->hreq, 503, NULL, "Link store unavailable",
                                    us_strerror(j->rc), NULL);
    } else if (j->rc == 0) {
        sd_http_req_respond_problem(j->hreq, 404, NULL, "No such link", NULL, NULL);
    } else {
        clicks_forget(a, j->code);
        lease_forget(a, j->code);
        /* 204 once every instance has been told (the message is published). */
        int rc = cache_invalidate(a->cache, j->code, strlen(j->code), on_invalidated, j->hreq);
        if (rc != 0)
            on_invalidated(a->cache, rc, j->hreq);
    }
    job_free(j);
}

static void on_link_api(sd_http_req *req, void *udata) {
    app *a = udata;
    const char *code = sd_http_req_path(req) + strlen("/v1/links/");
    if (strlen(code) > US_ALIAS_MAX || !us_code_possible(a->codec, code)) {
        sd_http_req_respond_problem(req, 404, NULL, "No such link", "not a possible code", NULL);
        return;
    }
    job *j = sd_xcalloc(1, sizeof(*j));
    j->hreq = req;
    snprintf(j->code, sizeof j->code, "%s", code);
    if (strcmp(sd_http_req_method(req), "DELETE") == 0) {
        if (!sd_admin_check(&a->o->admin, req)) {
            free(j);
            return;
        }
        j->kind = JOB_DELETE;
        job_queue(a, j, delete_done);
    } else {
        j->kind = JOB_GET;
        job_queue(a, j, get_done);
    }
}

/* ---- POST /v1/links ---------------------------------------------------------------------------
 */

static void create_done(uv_work_t *w, int status) {
    (void)status;
    job *j = w->data;
    app *a = j->a;
    a->links = j->stats;
    if (j->rc < 0) {
        sd_idem_call_respond_problem(j->call, 503, NULL, "Link store unavailable",
                                     us_strerror(j->rc), NULL);
    } else if (j->verdict == US_ALIAS_TAKEN) {
        sd_idem_call_respond_problem(j->call, 409, "/problems/alias-taken", "Alias taken",
                                     us_verdict_reason(j->verdict), NULL);
    } else if (j->verdict != US_OK) {
        const char *detail = j->verdict == US_TARGET_INVALID ? sd_addr_reason(j->why)
                                                             : us_verdict_reason(j->verdict);
        json_t *extra = json_pack("{s:s}", "reason", us_verdict_reason(j->verdict));
        sd_idem_call_respond_problem(j->call, 422, "/problems/link-refused", "Link refused", detail,
                                     extra);
    } else {
        /* An alias may sit in the negative cache from a look-up before it existed. */
        if (j->alias)
            cache_invalidate(a->cache, j->link.code, strlen(j->link.code), NULL, NULL);
        char *loc = sd_xasprintf("/v1/links/%s", j->link.code);
        sd_idem_call_add_header(j->call, "Location", loc);
        free(loc);
        sd_idem_call_respond_json(j->call, 201, link_json(a, &j->link));
    }
    job_free(j);
}

static void create_handler(sd_idem_call *call, sd_http_req *req, void *udata) {
    app *a = udata;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    json_error_t jerr;
    json_t *in = json_loadb(body, len, 0, &jerr);
    const char *url = in ? json_string_value(json_object_get(in, "url")) : NULL;
    json_t *alias = in ? json_object_get(in, "alias") : NULL;
    json_t *exp = in ? json_object_get(in, "expires_in") : NULL;
    json_t *max = in ? json_object_get(in, "max_clicks") : NULL;
    if (!json_is_object(in) || !url || (alias && !json_is_string(alias)) ||
        (exp && !json_is_number(exp)) || (max && !json_is_integer(max))) {
        sd_idem_call_respond_problem(call, 400, NULL, "Bad request",
                                     "the body must be {\"url\": string, \"alias\"?: string, "
                                     "\"expires_in\"?: seconds, \"max_clicks\"?: integer}",
                                     NULL);
        json_decref(in);
        return;
    }
    job *j = sd_xcalloc(1, sizeof(*j));
    j->kind = JOB_CREATE;
    j->call = call;
    j->url = sd_xstrdup(url);
    j->alias = alias ? sd_xstrdup(json_string_value(alias)) : NULL;
    j->req.url = j->url;
    j->req.alias = j->alias;
    double e = exp ? json_number_value(exp) : 0;
    j->req.expires_in_ms = e > 1e15 ? -1 : e < 0 ? -1 : (int64_t)(e * 1000);
    if (exp && e > 0 && j->req.expires_in_ms == 0)
        j->req.expires_in_ms = 1;
    j->req.max_clicks = max ? json_integer_value(max) : 0;
    json_decref(in);
    job_queue(a, j, create_done);
}

/* The creation limit, then the idempotency rules, then the create. */
typedef struct create_op {
    app *a;
    sd_http_req *req;
} create_op;

static void on_create_decision(const rl_decision *d, void *udata) {
    create_op *op = udata;
    app *a = op->a;
    rl_http_add_fields(op->req, a->rl, d);
    if (!d->allowed) {
        if (d->retry_after_ms != RL_NEVER) {
            char retry[32];
            snprintf(retry, sizeof retry, "%lld", rl_seconds_up(d->retry_after_ms));
            sd_http_req_add_header(op->req, "Retry-After", retry);
        }
        sd_http_req_respond_problem(op->req, 429, "/problems/quota-exceeded", "Quota exceeded",
                                    "too many links created; see the RateLimit header", NULL);
    } else {
        sd_idem_handle(a->idem, op->req, create_handler, a);
    }
    free(op);
}

static void on_create(sd_http_req *req, void *udata) {
    app *a = udata;
    create_op *op = sd_xmalloc(sizeof(*op));
    op->a = a;
    op->req = req;
    const char *peer = sd_http_req_client(req);
    int rc = rl_limiter_check(a->limiter, peer ? peer : "-", 1, on_create_decision, op);
    if (rc != 0) {
        free(op);
        sd_http_req_respond_problem(req, 503, NULL, "Rate limiter unavailable", rl_strerror(rc),
                                    NULL);
    }
}

/* ---- Metrics and serve ------------------------------------------------------------------------
 */

static void on_metrics(sd_http_buf *buf, void *udata) {
    app *a = udata;
    cache_stats s;
    cache_stats_get(a->cache, &s);
    sd_http_buf_printf(buf, "us_redirects_total %llu\n", (unsigned long long)a->redirects);
    sd_http_buf_printf(buf, "us_not_found_total %llu\n", (unsigned long long)a->not_found);
    sd_http_buf_printf(buf, "us_impossible_codes_total %llu\n", (unsigned long long)a->impossible);
    sd_http_buf_printf(buf, "us_gone_total %llu\n",
                       (unsigned long long)(a->gone + a->budget_spent));
    sd_http_buf_printf(buf, "us_clicks_pending %lld\n", a->pending);
    sd_http_buf_printf(buf, "us_clicks_flushed_total %llu\n",
                       (unsigned long long)a->clicks_flushed);
    sd_http_buf_printf(buf, "us_clicks_dropped_total %llu\n",
                       (unsigned long long)a->clicks_dropped);
    sd_http_buf_printf(buf, "us_clicks_uncertain_total %llu\n",
                       (unsigned long long)a->clicks_uncertain);
    sd_http_buf_printf(buf, "us_clicks_budgeted_total %llu\n",
                       (unsigned long long)a->clicks_budgeted);
    sd_http_buf_printf(buf, "us_budget_leases_total %llu\n", (unsigned long long)a->lease_calls);
    sd_http_buf_printf(buf, "us_budget_leased_clicks_total %llu\n",
                       (unsigned long long)a->lease_granted);
    sd_http_buf_printf(buf, "us_budget_returned_clicks_total %llu\n",
                       (unsigned long long)a->lease_returned);
    sd_http_buf_printf(buf, "us_budget_lost_clicks_total %llu\n",
                       (unsigned long long)a->lease_lost);
    sd_http_buf_printf(buf, "us_budget_given_up_total %llu\n",
                       (unsigned long long)a->lease_given_up);
    sd_http_buf_printf(buf, "us_links_created_total %llu\n", (unsigned long long)a->links.created);
    sd_http_buf_printf(buf, "us_links_skipped_total %llu\n", (unsigned long long)a->links.skipped);
    sd_http_buf_printf(buf, "us_id_blocks_total %llu\n", (unsigned long long)a->links.blocks);
    sd_http_buf_printf(buf, "us_cache_hits_total{tier=\"local\"} %llu\n",
                       (unsigned long long)s.hits_local);
    sd_http_buf_printf(buf, "us_cache_hits_total{tier=\"redis\"} %llu\n",
                       (unsigned long long)s.hits_redis);
    sd_http_buf_printf(buf, "us_cache_loads_total %llu\n", (unsigned long long)s.loads);
    sd_http_buf_printf(buf, "us_cache_coalesced_total %llu\n", (unsigned long long)s.coalesced);
    sd_http_buf_printf(buf, "us_cache_invalidations_total %llu\n",
                       (unsigned long long)s.invalidations);
    sd_http_buf_printf(buf, "us_cache_degraded %d\n", cache_is_degraded(a->cache));
    sd_http_buf_printf(buf, "us_api_queued %zu\n", a->api.queued);
}

static int store_open(store *s, const sd_redis_url *url, const us_codec *codec,
                      const char *base_url) {
    sd_redis_opts ro;
    sd_redis_opts_default(&ro);
    ro.scripts = us_links_scripts(&ro.nscripts);
    pthread_mutex_init(&s->mu, NULL);
    s->redis = sd_redis_new(url, &ro);
    us_links_opts lo;
    us_links_opts_default(&lo);
    lo.prefix = PREFIX;
    lo.base_url = base_url;
    return us_links_new(s->redis, codec, &lo, &s->links);
}

static void store_close(store *s) {
    us_links_free(s->links);
    sd_redis_free(s->redis);
    pthread_mutex_destroy(&s->mu);
}

static void on_http_stopped(sd_http_server *srv, void *udata) {
    (void)srv;
    app *a = udata;
    uv_timer_stop(&a->flush_timer);
    uv_close((uv_handle_t *)&a->flush_timer, NULL);
    uv_timer_stop(&a->lease_timer);
    uv_close((uv_handle_t *)&a->lease_timer, NULL);
    leases_flush_sync(a);
    clicks_flush_sync(a);
    sd_aredis *ar = a->ar;
    a->ar = NULL;
    sd_aredis_free(ar);
    sd_idem_free(a->idem);
    a->idem = NULL;
    rl_limiter_free(a->limiter);
    cache_free(a->cache);
}

static int serve(options *o, const sd_redis_url *url, const unsigned char key[US_KEY_LEN]) {
    uv_loop_t *loop = uv_default_loop();
    static app a;
    a.loop = loop;
    a.o = o;
    size_t bl = strlen(o->base_url);
    a.base = sd_xstrndup(o->base_url, bl && o->base_url[bl - 1] == '/' ? bl - 1 : bl);
    int rc = us_codec_new(key, US_DOMAIN_DEFAULT, &a.codec);
    if (rc == 0)
        rc = store_open(&a.api, url, a.codec, a.base);
    if (rc != 0) {
        fprintf(stderr, "urlshortener serve: %s\n", us_strerror(rc));
        return SD_EXIT_FAILURE;
    }

    lease_script.body = sd_lua_us_lease;
    lease_script.len = sd_lua_us_lease_len;
    sd_script_init(&lease_script);
    settle_script.body = sd_lua_us_settle;
    settle_script.len = sd_lua_us_settle_len;
    sd_script_init(&settle_script);
    flush_script.body = sd_lua_us_flush;
    flush_script.len = sd_lua_us_flush_len;
    sd_script_init(&flush_script);
    sd_script *scripts[12];
    size_t ns = 0;
    size_t nlinks = 0;
    sd_script *const *links_scripts = us_links_scripts(&nlinks);
    for (size_t i = 0; i < sd_idem_nscripts && ns < 5; i++)
        scripts[ns++] = sd_idem_scripts[i];
    for (size_t i = 0; i < nlinks && ns < 7; i++)
        scripts[ns++] = links_scripts[i];
    scripts[ns++] = &lease_script;
    scripts[ns++] = &settle_script;
    scripts[ns++] = &flush_script;
    sd_redis_opts ro;
    sd_redis_opts_default(&ro);
    ro.scripts = scripts;
    ro.nscripts = ns;
    rc = sd_aredis_new(loop, url, &ro, &a.ar);
    sd_idem_opts io = {.prefix = PREFIX "idem"};
    if (rc == 0)
        rc = sd_idem_new(a.ar, &io, &a.idem);
    if (rc == 0)
        rc = rl_limiter_new(loop, url, &o->rl, &a.limiter);
    cache_opts co;
    cache_opts_default(&co);
    co.prefix = PREFIX "cache2:"; /* 2: the cached value carries the link's creation time */
    co.ttl_ms = 60000;
    co.negative_ttl_ms = 5000;
    if (rc == 0)
        rc = cache_new(loop, url, &co, &a.cache);
    if (rc != 0) {
        fprintf(stderr, "urlshortener serve: %s\n", sd_strerror(rc));
        return SD_EXIT_FAILURE;
    }
    a.rl = rl_limiter_config(a.limiter);
    if (sd_aredis_wait_connected(a.ar, 10000) != 0 || cache_wait_ready(a.cache, 10000) != 0 ||
        rl_limiter_wait_connected(a.limiter, 10000) != 0)
        sd_log(SD_LOG_WARN, "urlshortener.redis_not_ready", "detail=\"Redis not reachable yet\"");

    uv_timer_init(loop, &a.flush_timer);
    a.flush_timer.data = &a;
    uv_timer_start(&a.flush_timer, on_flush_timer, (uint64_t)o->flush_ms, (uint64_t)o->flush_ms);
    uint64_t retry_ms = o->flush_ms < 1000 ? (uint64_t)o->flush_ms : 1000;
    uv_timer_init(loop, &a.lease_timer);
    a.lease_timer.data = &a;
    uv_timer_start(&a.lease_timer, on_lease_timer, retry_ms, retry_ms);

    a.http = sd_http_server_new(loop, NULL);
    sd_http_server_trust(a.http, &o->trust);
    sd_http_route_opts small = {.max_body_bytes = 8192};
    sd_http_server_route_opts(a.http, "POST", "/v1/links", on_create, &a, &small);
    sd_http_server_route(a.http, "GET", "/v1/links/*", on_link_api, &a);
    sd_http_server_route(a.http, "DELETE", "/v1/links/*", on_link_api, &a);
    sd_http_server_route(a.http, "GET", "*", on_redirect, &a);
    sd_http_server_add_metrics(a.http, on_metrics, &a);
    sd_idem_add_metrics(a.idem, a.http);
    rc = sd_http_server_listen(a.http, o->listen);
    if (rc == 0)
        rc = sd_http_server_stop_on_signals(a.http, 5000, on_http_stopped, &a);
    if (rc == 0)
        rc = sd_http_server_print_address(a.http);
    if (rc < 0) {
        fprintf(stderr, "urlshortener serve: cannot listen on %s: %s\n", o->listen,
                sd_strerror(rc));
        sd_http_server_free(a.http);
        on_http_stopped(NULL, &a);
        uv_run(loop, UV_RUN_DEFAULT);
        rc = SD_EXIT_FAILURE;
    } else {
        sd_log(SD_LOG_INFO, "urlshortener.listening", "port=%d base_url=%s redirect=%lld",
               sd_http_server_port(a.http), a.base, o->redirect);
        sd_admin_announce(&o->admin, "urlshortener");
        uv_run(loop, UV_RUN_DEFAULT);
        sd_http_server_free(a.http);
        rc = SD_EXIT_OK;
    }
    uv_loop_close(loop);
    store_close(&a.api);
    us_codec_free(a.codec);
    free(a.base);
    while (a.free_ops) {
        struct redirect_op *op = a.free_ops;
        a.free_ops = op->next_free;
        free(op);
    }
    for (size_t i = 0; i < CLICK_BUCKETS; i++)
        while (a.clicks[i]) {
            click *c = a.clicks[i];
            a.clicks[i] = c->next;
            free(c);
        }
    return rc;
}

static int base_url_parse(const char *value, void *udata, char *err, size_t len) {
    us_origin origin;
    if (us_origin_parse(value, &origin) != 0) {
        snprintf(err, len, "wants http(s)://HOST[:PORT], got '%s'", value);
        return -1;
    }
    *(const char **)udata = value;
    return 0;
}

static int redirect_parse(const char *value, void *udata, char *err, size_t len) {
    long long v;
    if (sd_parse_ll(value, 301, 308, &v) != 0 || (v != 301 && v != 302 && v != 307 && v != 308)) {
        snprintf(err, len, "wants 301, 302, 307 or 308, got '%s'", value);
        return -1;
    }
    *(long long *)udata = v;
    return 0;
}

static int limit_parse(const char *value, void *udata, char *err, size_t len) {
    options *o = udata;
    char why[200];
    if (rl_config_add_policy(&o->rl, value, why, sizeof why) != 0) {
        snprintf(err, len, "'%s': %s", value, why);
        return -1;
    }
    o->nlimits++;
    return 0;
}

static int run_serve(int argc, char **argv) {
    static options o;
    o.listen = "127.0.0.1:8080";
    o.redirect = 302;
    o.flush_ms = 1000;
    rl_config_default(&o.rl);
    snprintf(o.rl.prefix, sizeof o.rl.prefix, "%s", PREFIX "rl:");
    /* A create waits on Redis anyway, so the limiter may too (its 5 ms default is for a
     * gateway in front of every request), and when Redis fails the create fails: open. */
    o.rl.deadline_ms = 1000;
    o.rl.on_error = RL_FAIL_OPEN;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT", "address to listen on (default 127.0.0.1:8080)",
         .parse = sd_cli_listen_parse, .udata = &o.listen},
        {"--base-url", "URL", "where the short links are served, http(s)://HOST[:PORT] (required)",
         .parse = base_url_parse, .udata = &o.base_url, .required = 1},
        {"--redis", "URL", "Redis (default REDIS_URL, else the local durable Redis)",
         .parse = sd_cli_redis_parse, .udata = &o.redis},
        {"--redirect", "STATUS", "302 (default), 301, 307 or 308", .parse = redirect_parse,
         .udata = &o.redirect},
        {"--create-limit", "POLICY",
         "creations per client, 'NAME;q=Q;w=W' (repeatable; default 'create;q=100;w=60')",
         .parse = limit_parse, .udata = &o},
        {"--flush-ms", "MS", "click counters are flushed at least this often (default 1000)",
         .integer = &o.flush_ms, .min = 1, .max = 60000},
        {"--key-file", "PATH",
         "the code key's secret (16+ bytes); without it a fixed development key is used",
         .text = &o.key_file},
        {"--admin-token-file", "FILE",
         "bearer token for DELETE, the file's first line (else\n"
         "URLSHORTENER_ADMIN_TOKEN; none: DELETE answers loopback clients only)",
         .text = &o.admin_token_file},
        SD_CLI_TRUST_OPT(&o.trust),
        {0}};
    const sd_cli_cmd cmd = {.name = "urlshortener serve",
                            .synopsis = "--base-url URL [options]",
                            .about = "The URL shortener's HTTP server.",
                            .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (sd_admin_load(&o.admin, cmd.name, "--admin-token-file", o.admin_token_file,
                      "URLSHORTENER_ADMIN_TOKEN") != 0)
        return SD_EXIT_USAGE;
    if (o.nlimits == 0) {
        char why[200];
        rl_config_add_policy(&o.rl, "create;q=100;w=60", why, sizeof why);
    }
    unsigned char key[US_KEY_LEN];
    if (o.key_file) {
        rc = us_key_load(o.key_file, key);
        if (rc != 0) {
            fprintf(stderr, "urlshortener serve: --key-file %s: %s\n", o.key_file,
                    rc == -EINVAL ? "holds fewer than 16 bytes or more than 4 KiB" : strerror(-rc));
            return SD_EXIT_USAGE;
        }
    } else {
        static const char dev[] = "urlshortener development key: not secret";
        us_key_derive(dev, sizeof dev - 1, key);
        sd_log(SD_LOG_WARN, "urlshortener.development_key",
               "detail=\"no --key-file: codes are guessable by anyone with the source\"");
    }
    sd_redis_url url;
    memset(&url, 0, sizeof url);
    if (sd_redis_resolve_durable(o.redis, &url) != 0) {
        rc = SD_EXIT_USAGE;
    } else {
        char err[512];
        if (sd_redis_require_noeviction(&url, err, sizeof err) != 0) {
            fprintf(stderr, "urlshortener serve: %s\n", err);
            rc = SD_EXIT_FAILURE;
        } else {
            rc = serve(&o, &url, key);
        }
    }
    memset(key, 0, sizeof key);
    sd_redis_url_clear(&url);
    return rc;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {{"serve", "run the URL shortener (HTTP)", run_serve}, {0}};
    return sd_cli_dispatch("urlshortener", "A URL shortener over Redis.", subs, argc, argv);
}
