/*
 * main.c - the `cache` command.
 *
 *   cache serve --listen ADDR --origin http://HOST:PORT [--ttl S] [--jitter PCT]
 *               [--stale-while-revalidate S] [--stale-if-error S] [--negative-ttl S]
 *               [--local-bytes N] [--redis URL] [--admin-token-file FILE]
 *
 * A caching reverse proxy for GET (and HEAD) on the cache library: every instance on one Redis
 * shares the Redis tier, so a cold path costs the origin one request whatever the number of
 * instances and concurrent clients.
 *
 *  - The cache key is the method GET, the Host header, the path and the query.
 *  - Origin answers: 2xx and 3xx are values; 404 and 410 are cached as not-found for the
 *    negative TTL, with their body; 5xx and transport failures are failures (negative TTL, the
 *    client gets 502 unless a stale value is served).
 *  - Cache-Control of the origin: `no-store` and `private` are stored nowhere; `s-maxage`,
 *    else `max-age`, sets the freshness (0: not stored). A response with `Set-Cookie`, or with
 *    `Vary` (not honoured: such a response is not cached at all), is not stored unless it
 *    says `public` (Vary: never). A request with `Authorization` is never answered from the
 *    cache: it goes to the origin with its header. Its response is shared (stored for the
 *    requests without one) only when it is a 2xx that says `public` or `s-maxage` (RFC 9111
 *    section 3.5) and is storable by the rules above: it is then offered to the cache like a
 *    load of its key (a "prime"), which stores it unless a value is there already, and only if
 *    the key's invalidation count in Redis, read before the request left and again under the
 *    lease, did not move (a purge at any instance moves it: cache_gen_get).
 *  - Every answer carries `X-Cache: HIT|MISS|STALE|COALESCED`, on hits `X-Cache-Tier:
 *    local|redis`, and `Age` (seconds since the origin produced it).
 *  - `PURGE /path` and `POST /v1/purge {"path": "/path"}` invalidate GET of that path for the
 *    request's Host on every instance. With an admin token (--admin-token-file or
 *    CACHE_ADMIN_TOKEN) they want it as a bearer token; without one they are answered only to
 *    loopback clients (admin.h, DESIGN.md contract 10).
 *  - `/metrics`: hits by tier, misses, coalesced, origin calls, stale, takeovers, local bytes.
 *
 * What is stored for a key: "STATUS FETCHED_MS\nCONTENT-TYPE\n" then the body; FETCHED_MS is the
 * origin's answer time (wall clock, ms), for Age.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "admin.h"
#include "cache.h"
#include "cli.h"
#include "http.h"
#include "http_client.h"
#include "redis_server.h"
#include "sd.h"

typedef struct options {
    const char *listen, *origin, *redis, *admin_token_file;
    double ttl, swr, sie, negative_ttl;
    long long jitter, local_bytes;
    sd_admin admin;      /* loaded from admin_token_file or CACHE_ADMIN_TOKEN */
    sd_http_trust trust; /* --trust-proxy: whose X-Forwarded-For names the client */
} options;

/* A public response to a request with Authorization, offered to the cache under its key: the
 * loader takes it instead of asking the origin while its get runs (prime_offer). At most
 * PRIME_MAX at a time (each holds a body); beyond that an answer is simply not shared. */
#define PRIME_MAX 64
typedef struct proxy proxy;
typedef struct prime {
    struct prime *next;
    proxy *p;
    char *key, *value;
    size_t klen, len;
    int ttl_ms;
    long long gen; /* the key's invalidation count before the request left (cache_gen_get) */
} prime;

struct proxy {
    uv_loop_t *loop;
    options *o;
    cache *cache;
    sd_http_client *client;
    sd_http_server *http;
    prime *primes; /* the primes whose get has not answered yet (at most PRIME_MAX) */
    int nprimes;
    sd_admin admin; /* who may purge: a bearer token, or loopback clients only */
    uint64_t misses, bypassed, shared;
    uint64_t overtaken; /* public answers not shared: a purge may have come while they were made */
};

static uint64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* ---- Cache-Control ------------------------------------------------------------------------- */

/* Whether the comma-separated Cache-Control value cc holds the directive name; its "=N" value,
 * if asked and present, goes to *value (seconds). */
static int cc_has(const char *cc, const char *name, long long *value) {
    size_t n = strlen(name);
    for (const char *p = cc; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (strncasecmp(p, name, n) == 0 &&
            (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '=')) {
            if (value && p[n] == '=') {
                char *end;
                long long v = strtoll(p + n + 1, &end, 10);
                *value = v < 0 ? 0 : v;
            }
            return 1;
        }
        p = strchr(p, ',');
    }
    return 0;
}

/* The freshness the origin asks for: > 0 ms, 0 (the configured TTL), or CACHE_TTL_NO_STORE. */
static int origin_ttl(const sd_http_response *resp) {
    const char *cc = sd_http_response_header(resp, "Cache-Control");
    int pub = cc && cc_has(cc, "public", NULL);
    if (sd_http_response_header(resp, "Vary"))
        return CACHE_TTL_NO_STORE;
    if (sd_http_response_header(resp, "Set-Cookie") && !pub)
        return CACHE_TTL_NO_STORE;
    if (!cc)
        return 0;
    if (cc_has(cc, "no-store", NULL) || cc_has(cc, "private", NULL))
        return CACHE_TTL_NO_STORE;
    long long s = -1;
    if (cc_has(cc, "s-maxage", &s) || cc_has(cc, "max-age", &s)) {
        if (s <= 0)
            return CACHE_TTL_NO_STORE;
        return s > 86400 * 24 ? 86400 * 24 * 1000 : (int)(s * 1000); /* capped at 24 days */
    }
    return 0;
}

/* ---- Loading from the origin ------------------------------------------------------------------
 */

static char *encode(int status, const char *ctype, const char *body, size_t len, size_t *out) {
    char head[512];
    int n = snprintf(head, sizeof head, "%d %llu\n%s\n", status, (unsigned long long)wall_ms(),
                     ctype ? ctype : "application/octet-stream");
    if (n < 0 || (size_t)n >= sizeof head)
        n = snprintf(head, sizeof head, "%d %llu\napplication/octet-stream\n", status,
                     (unsigned long long)wall_ms());
    char *v = sd_xmalloc((size_t)n + len);
    memcpy(v, head, (size_t)n);
    if (len)
        memcpy(v + n, body, len);
    *out = (size_t)n + len;
    return v;
}

static void on_origin(int err, sd_http_response *resp, void *udata) {
    cache_load *load = udata;
    if (err || resp->status >= 500 || resp->status < 200) {
        cache_load_done(load, CACHE_ERROR, "", 0);
        return;
    }
    size_t len;
    char *v = encode(resp->status, sd_http_response_header(resp, "Content-Type"), resp->body,
                     resp->body_len, &len);
    int ttl = origin_ttl(resp);
    int st = resp->status == 404 || resp->status == 410 ? CACHE_NOTFOUND : CACHE_OK;
    if (st == CACHE_NOTFOUND && ttl > 0)
        ttl = 0; /* not-found lives for the negative TTL */
    cache_load_done_ttl(load, st, v, len, ttl);
    free(v);
}

/* The prime offered for key, or NULL. */
static prime *prime_find(proxy *p, const char *key, size_t klen) {
    for (prime *pr = p->primes; pr; pr = pr->next)
        if (pr->klen == klen && memcmp(pr->key, key, klen) == 0)
            return pr;
    return NULL;
}

static void origin_fetch(proxy *p, cache_load *load, const char *key, size_t klen);

static void prime_free(prime *pr);

/* A prime's load, while the key's invalidation count is read again under the lease. Holds a
 * copy of the prime: the prime is freed when its get answers, which a closing cache does first. */
typedef struct prime_check {
    cache_load *load;
    prime *copy; /* its own key and value; next unused */
} prime_check;

static void on_prime_gen(cache *c, int err, long long gen, void *udata) {
    (void)c;
    prime_check *k = udata;
    prime *pr = k->copy;
    if (err == SD_ECLOSED) {
        cache_load_done(k->load, CACHE_ERROR, "", 0); /* only frees the handle */
    } else if (err == 0 && gen == pr->gen) {
        pr->p->shared++;
        cache_load_done_ttl(k->load, CACHE_OK, pr->value, pr->len, pr->ttl_ms);
    } else {
        /* Invalidated somewhere since the answer's request left (or it cannot be told): the
         * answer may predate the purge, so this load asks the origin like any other. */
        pr->p->overtaken++;
        origin_fetch(pr->p, k->load, pr->key, pr->klen);
    }
    prime_free(pr);
    free(k);
}

/* The key is "GET HOST PATH[?QUERY]": the loader takes the path back from it, unless a public
 * answer to a request with Authorization was offered for the key (prime_offer), which it takes
 * once the key's invalidation count is seen unchanged under the lease. */
static void origin_loader(cache_load *load, const char *key, size_t klen, void *udata) {
    proxy *p = udata;
    prime *pr = prime_find(p, key, klen);
    if (!pr) {
        origin_fetch(p, load, key, klen);
        return;
    }
    prime *copy = sd_xmalloc(sizeof *copy);
    *copy = *pr;
    copy->next = NULL;
    copy->key = sd_xstrndup(key, klen);
    copy->value = sd_xmalloc(pr->len);
    memcpy(copy->value, pr->value, pr->len);
    prime_check *k = sd_xmalloc(sizeof *k);
    *k = (prime_check){.load = load, .copy = copy};
    int rc = cache_gen_get(p->cache, key, klen, on_prime_gen, k);
    if (rc != 0)
        on_prime_gen(p->cache, rc, -1, k);
}

/* Loads the key from the origin (the path back from the key). */
static void origin_fetch(proxy *p, cache_load *load, const char *key, size_t klen) {
    const char *sp = memchr(key + 4, ' ', klen - 4);
    if (!sp) {
        cache_load_done(load, CACHE_ERROR, "", 0);
        return;
    }
    p->misses++;
    char *url = sd_xasprintf("%s%.*s", p->o->origin, (int)(klen - (size_t)(sp + 1 - key)), sp + 1);
    sd_http_request req = {.url = url, .timeout_ms = 30000};
    if (sd_http_client_request(p->client, &req, on_origin, load) != 0)
        cache_load_done(load, CACHE_ERROR, "", 0);
    free(url);
}

/* ---- Answering ----------------------------------------------------------------------------------
 */

/* Parses the decimal digits at *p up to stop: -1 when there are none or another byte. */
static long long parse_digits(const char **p, const char *end, char stop) {
    long long v = 0;
    const char *s = *p;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9' && v < (1LL << 56))
        v = v * 10 + (*s++ - '0');
    if (s >= end || *s != stop)
        return -1;
    *p = s + 1;
    return v;
}

/* Answers from a stored value ("STATUS FETCHED_MS\nCONTENT-TYPE\n" then the body). No
 * allocation of its own and no printf: the local-hit path runs it once per request. */
static void respond_value(sd_http_req *req, const char *v, size_t len, const char *xcache,
                          const char *tier) {
    const char *p = v, *end = v + len;
    long long status = parse_digits(&p, end, ' ');
    long long fetched = status < 0 ? -1 : parse_digits(&p, end, '\n');
    const char *nl2 = fetched < 0 ? NULL : memchr(p, '\n', (size_t)(end - p));
    if (!nl2 || status < 200 || status > 599 || (size_t)(nl2 - p) >= 256) {
        sd_http_req_respond(req, 502, "text/plain", "bad cached value\n", 17);
        return;
    }
    char ctype[256];
    memcpy(ctype, p, (size_t)(nl2 - p));
    ctype[nl2 - p] = '\0';
    uint64_t now = wall_ms();
    unsigned long long secs = now > (uint64_t)fetched ? (now - (uint64_t)fetched) / 1000 : 0;
    char age[24];
    int i = sizeof age - 1;
    age[i] = '\0';
    do {
        age[--i] = (char)('0' + secs % 10);
        secs /= 10;
    } while (secs && i > 0);
    sd_http_req_add_header(req, "X-Cache", xcache);
    if (tier)
        sd_http_req_add_header(req, "X-Cache-Tier", tier);
    sd_http_req_add_header(req, "Age", age + i);
    const char *body = nl2 + 1;
    sd_http_req_respond(req, (int)status, ctype, body, len - (size_t)(body - v));
}

static void on_cached(cache *c, int err, const cache_result *r, void *udata) {
    sd_http_req *req = udata;
    if (err) {
        sd_http_req_add_header(req, "X-Cache", "MISS");
        sd_http_req_respond_problem(req, 504, NULL, "The origin did not answer in time",
                                    sd_strerror(err), NULL);
        return;
    }
    const char *xcache = r->stale                           ? "STALE"
                         : r->source == CACHE_SRC_ORIGIN    ? "MISS"
                         : r->source == CACHE_SRC_COALESCED ? "COALESCED"
                                                            : "HIT";
    const char *tier = r->source == CACHE_SRC_LOCAL   ? "local"
                       : r->source == CACHE_SRC_REDIS ? "redis"
                                                      : NULL;
    if (r->status == CACHE_ERROR) {
        sd_http_req_add_header(req, "X-Cache", xcache);
        sd_http_req_respond_problem(req, 502, NULL, "The origin failed",
                                    "the origin failed recently; retried after the negative TTL",
                                    NULL);
        return;
    }
    respond_value(req, r->value, r->len, xcache, tier);
}

static void prime_free(prime *pr) {
    free(pr->key);
    free(pr->value);
    free(pr);
}

static void on_primed(cache *c, int err, const cache_result *r, void *udata) {
    (void)c, (void)err, (void)r;
    prime *pr = udata;
    for (prime **pp = &pr->p->primes; *pp; pp = &(*pp)->next) {
        if (*pp == pr) {
            *pp = pr->next;
            pr->p->nprimes--;
            break;
        }
    }
    prime_free(pr);
}

/* Offers a public answer to a request with Authorization to the cache: a get of its key whose
 * load (if this get's flight must load: nothing fresh is stored and no other instance is
 * loading) takes the answer instead of asking the origin. The answer is then stored and given
 * to the waiters like any load, under the lease, so an invalidation from now on fences it. One
 * that came while the request was at the origin moved the key's invalidation count, which the
 * loader compares (on_prime_gen). A load that starts after the get has answered (a background
 * refresh) asks the origin as usual. */
static void prime_offer(proxy *p, const char *key, size_t klen, const sd_http_response *resp,
                        int ttl_ms, long long gen) {
    if (p->nprimes == PRIME_MAX)
        return;
    prime *pr = sd_xcalloc(1, sizeof *pr);
    pr->p = p;
    pr->key = sd_xstrndup(key, klen);
    pr->klen = klen;
    pr->value = encode(resp->status, sd_http_response_header(resp, "Content-Type"), resp->body,
                       resp->body_len, &pr->len);
    pr->ttl_ms = ttl_ms;
    pr->gen = gen;
    pr->next = p->primes;
    p->primes = pr;
    p->nprimes++;
    if (cache_get(p->cache, pr->key, klen, origin_loader, p, on_primed, pr) != 0) {
        p->primes = pr->next;
        p->nprimes--;
        prime_free(pr);
    }
}

/* Whether the origin's answer to a request with Authorization may be shared: a 2xx that says
 * `public` or `s-maxage` (RFC 9111 section 3.5) and is storable (origin_ttl). Its TTL goes to
 * *ttl_ms. */
static int shareable_with_authorization(const sd_http_response *resp, int *ttl_ms) {
    const char *cc = sd_http_response_header(resp, "Cache-Control");
    if (resp->status < 200 || resp->status > 299 || !cc)
        return 0;
    if (!cc_has(cc, "public", NULL) && !cc_has(cc, "s-maxage", NULL))
        return 0;
    *ttl_ms = origin_ttl(resp);
    return *ttl_ms != CACHE_TTL_NO_STORE;
}

/* A request with Authorization, on its way to the origin: its cache key is kept for the
 * answer's prime, with the key's invalidation count in Redis before it left (gen, -1 when it
 * could not be read: then nothing is shared). A purge anywhere, this instance's included, moves
 * the count; the loader compares it under the lease (on_prime_gen). A purge here is sent on
 * the same connection as that later read, so Redis has run it when the read comes. */
typedef struct bypass {
    proxy *p;
    sd_http_req *req;
    char *key;
    size_t klen;
    long long gen;
} bypass;

static void on_bypass(int err, sd_http_response *resp, void *udata) {
    bypass *b = udata;
    if (err) {
        sd_http_req_respond_problem(b->req, 502, NULL, "The origin failed", sd_strerror(err), NULL);
    } else {
        sd_http_req_add_header(b->req, "X-Cache", "MISS");
        const char *ct = sd_http_response_header(resp, "Content-Type");
        sd_http_req_respond(b->req, resp->status, ct ? ct : "application/octet-stream", resp->body,
                            resp->body_len);
        int ttl_ms;
        if (shareable_with_authorization(resp, &ttl_ms)) {
            if (b->gen >= 0 && b->p->cache != NULL) /* NULL: stopping */
                prime_offer(b->p, b->key, b->klen, resp, ttl_ms, b->gen);
            else
                b->p->overtaken++;
        }
    }
    free(b->key);
    free(b);
}

/* Sends a request with Authorization to the origin, with its header. */
static void bypass_send(bypass *b) {
    sd_http_req *req = b->req;
    const char *q = sd_http_req_query(req);
    char *url = sd_xasprintf("%s%s%s%s", b->p->o->origin, sd_http_req_path(req), *q ? "?" : "", q);
    char *auth = sd_xasprintf("Authorization: %s", sd_http_req_header(req, "Authorization"));
    const char *hdrs[] = {auth, NULL};
    sd_http_request r = {.url = url, .headers = hdrs, .timeout_ms = 30000};
    if (sd_http_client_request(b->p->client, &r, on_bypass, b) != 0) {
        sd_http_req_respond_problem(req, 502, NULL, "The origin failed", "bad request URL", NULL);
        free(b->key);
        free(b);
    }
    free(url);
    free(auth);
}

static void on_bypass_gen(cache *c, int err, long long gen, void *udata) {
    (void)c;
    bypass *b = udata;
    if (err == SD_ECLOSED) { /* stopping: the client is about to go too */
        sd_http_req_respond_problem(b->req, 503, NULL, "Stopping", NULL, NULL);
        free(b->key);
        free(b);
        return;
    }
    b->gen = err == 0 ? gen : -1;
    bypass_send(b);
}

/* The cache key "GET HOST PATH[?QUERY]", in buf (of len bytes) when it fits, else allocated
 * (*heap set: the caller frees it). */
static char *request_key(sd_http_req *req, const char *path, char *buf, size_t len, size_t *klen,
                         char **heap) {
    const char *host = sd_http_req_header(req, "Host");
    const char *q = sd_http_req_query(req);
    host = host ? host : "";
    size_t hl = strlen(host), pl = strlen(path), ql = strlen(q);
    size_t n = 4 + hl + 1 + pl + (ql ? 1 + ql : 0);
    char *k = buf;
    *heap = NULL;
    if (n + 1 > len)
        k = *heap = sd_xmalloc(n + 1);
    char *w = k;
    memcpy(w, "GET ", 4);
    w += 4;
    memcpy(w, host, hl);
    w += hl;
    *w++ = ' ';
    memcpy(w, path, pl);
    w += pl;
    if (ql) {
        *w++ = '?';
        memcpy(w, q, ql);
        w += ql;
    }
    *w = '\0';
    *klen = n;
    return k;
}

static void purge(proxy *p, sd_http_req *req, const char *path) {
    if (!sd_admin_check(&p->admin, req))
        return;
    const char *host = sd_http_req_header(req, "Host");
    char *key = sd_xasprintf("GET %s %s", host ? host : "", path);
    int rc = cache_invalidate(p->cache, key, strlen(key), NULL, NULL);
    free(key);
    if (rc != 0 && rc != SD_EDISCONNECTED) {
        sd_http_req_respond_problem(req, 503, NULL, "Purge failed", sd_strerror(rc), NULL);
        return;
    }
    json_t *j = json_pack("{s:s, s:b}", "purged", path, "everywhere", rc == 0);
    sd_http_req_respond_json(req, 200, j);
}

static void on_request(sd_http_req *req, void *udata) {
    proxy *p = udata;
    const char *m = sd_http_req_method(req);
    const char *path = sd_http_req_path(req);
    if (strcmp(m, "PURGE") == 0) {
        purge(p, req, path);
        return;
    }
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
        sd_http_req_respond_problem(req, 405, NULL, "Only GET, HEAD and PURGE are proxied", m,
                                    NULL);
        return;
    }
    char kbuf[512], *heap;
    size_t klen;
    const char *key = request_key(req, path, kbuf, sizeof kbuf, &klen, &heap);
    if (sd_http_req_header(req, "Authorization")) {
        /* To the origin, after one read of the key's invalidation count (for the prime). */
        bypass *b = sd_xcalloc(1, sizeof *b);
        *b = (bypass){.p = p, .req = req, .key = sd_xstrndup(key, klen), .klen = klen, .gen = -1};
        p->bypassed++;
        free(heap);
        if (cache_gen_get(p->cache, b->key, b->klen, on_bypass_gen, b) != 0)
            bypass_send(b);
        return;
    }
    cache_result hit;
    if (cache_get_local(p->cache, key, klen, &hit)) {
        /* The hot path: answered in place, no callback, no Redis, no allocation here. */
        free(heap);
        respond_value(req, hit.value, hit.len, "HIT", "local");
        return;
    }
    int rc = cache_get(p->cache, key, klen, origin_loader, p, on_cached, req);
    free(heap);
    if (rc != 0)
        sd_http_req_respond_problem(req, 503, NULL, "Cache unavailable", sd_strerror(rc), NULL);
}

static void on_purge_api(sd_http_req *req, void *udata) {
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    json_t *j = json_loadb(body ? body : "", len, 0, NULL);
    const char *path = j ? json_string_value(json_object_get(j, "path")) : NULL;
    if (!path || path[0] != '/') {
        sd_http_req_respond_problem(req, 400, NULL, "Bad purge request",
                                    "the body must be {\"path\": \"/...\"}", NULL);
    } else {
        purge(udata, req, path);
    }
    json_decref(j);
}

static void on_metrics(sd_http_buf *buf, void *udata) {
    proxy *p = udata;
    cache_stats s;
    cache_stats_get(p->cache, &s);
    sd_http_buf_printf(buf, "cache_hits_total{tier=\"local\"} %llu\n",
                       (unsigned long long)s.hits_local);
    sd_http_buf_printf(buf, "cache_hits_total{tier=\"redis\"} %llu\n",
                       (unsigned long long)s.hits_redis);
    /* the part of the Redis hits read by one HMGET, without the script (cache.c's fast path) */
    sd_http_buf_printf(buf, "cache_redis_fast_hits_total %llu\n", (unsigned long long)s.hits_fast);
    sd_http_buf_printf(buf, "cache_misses_total %llu\n", (unsigned long long)s.leases);
    sd_http_buf_printf(buf, "cache_coalesced_total %llu\n", (unsigned long long)s.coalesced);
    sd_http_buf_printf(buf, "cache_origin_calls_total %llu\n",
                       (unsigned long long)(s.loads + p->bypassed));
    sd_http_buf_printf(buf, "cache_stale_served_total %llu\n", (unsigned long long)s.stale_served);
    /* public answers to requests with Authorization that were stored for everyone */
    sd_http_buf_printf(buf, "cache_authorized_shared_total %llu\n", (unsigned long long)p->shared);
    sd_http_buf_printf(buf, "cache_authorized_overtaken_total %llu\n",
                       (unsigned long long)p->overtaken);
    sd_http_buf_printf(buf, "cache_takeovers_total %llu\n", (unsigned long long)s.takeovers);
    sd_http_buf_printf(buf, "cache_waits_total %llu\n", (unsigned long long)s.waits);
    sd_http_buf_printf(buf, "cache_woken_total{by=\"message\"} %llu\n",
                       (unsigned long long)s.woken_by_message);
    sd_http_buf_printf(buf, "cache_woken_total{by=\"poll\"} %llu\n",
                       (unsigned long long)s.woken_by_poll);
    sd_http_buf_printf(buf, "cache_fill_values_total %llu\n", (unsigned long long)s.fill_values);
    sd_http_buf_printf(buf, "cache_local_drops_total %llu\n", (unsigned long long)s.local_drops);
    sd_http_buf_printf(buf, "cache_local_bytes %zu\n", s.local_bytes);
    sd_http_buf_printf(buf, "cache_degraded %d\n", cache_is_degraded(p->cache));
}

/* ---- serve ------------------------------------------------------------------------------------
 */

static void on_http_stopped(sd_http_server *srv, void *udata) {
    proxy *p = udata;
    cache_free(p->cache);
    p->cache = NULL;
    sd_http_client_free(p->client);
}

static int serve(options *o, const sd_redis_url *url) {
    uv_loop_t *loop = uv_default_loop();
    proxy p = {.loop = loop, .o = o, .admin = o->admin};

    cache_opts co;
    cache_opts_default(&co);
    co.ttl_ms = (int)(o->ttl * 1000);
    co.jitter_pct = (int)o->jitter;
    co.swr_ms = (int)(o->swr * 1000);
    co.sie_ms = (int)(o->sie * 1000);
    co.negative_ttl_ms = (int)(o->negative_ttl * 1000);
    co.local_bytes = (size_t)o->local_bytes;
    co.wait_timeout_ms = 30000;
    co.lease_ms = 30000;
    int rc = cache_new(loop, url, &co, &p.cache);
    if (rc != 0) {
        fprintf(stderr, "cache serve: %s\n", sd_strerror(rc));
        return SD_EXIT_FAILURE;
    }
    /* Listen only once both Redis connections are up, or after 10 s (then degraded: misses
     * coalesced in this process only): an instance that announced itself and then loads
     * alone would break the fleet's one-origin-call promise for its first requests. */
    if (cache_wait_ready(p.cache, 10000) != 0)
        sd_log(SD_LOG_WARN, "cache.degraded_at_start", "detail=\"Redis not reachable yet\"");
    p.client = sd_http_client_new(loop, NULL);
    p.http = sd_http_server_new(loop, NULL);
    sd_http_server_trust(p.http, &o->trust);
    sd_http_server_route(p.http, "POST", "/v1/purge", on_purge_api, &p);
    sd_http_server_route(p.http, NULL, "*", on_request, &p);
    sd_http_server_add_metrics(p.http, on_metrics, &p);
    rc = sd_http_server_listen(p.http, o->listen);
    if (rc == 0)
        rc = sd_http_server_stop_on_signals(p.http, 5000, on_http_stopped, &p);
    if (rc == 0)
        rc = sd_http_server_print_address(p.http);
    if (rc < 0) {
        fprintf(stderr, "cache serve: cannot listen on %s: %s\n", o->listen, sd_strerror(rc));
        sd_http_server_free(p.http);
        cache_free(p.cache);
        sd_http_client_free(p.client);
        uv_run(loop, UV_RUN_DEFAULT);
        return SD_EXIT_FAILURE;
    }
    sd_log(SD_LOG_INFO, "cache.listening", "port=%d origin=%s", sd_http_server_port(p.http),
           o->origin);
    sd_admin_announce(&p.admin, "cache");
    uv_run(loop, UV_RUN_DEFAULT);
    sd_http_server_free(p.http);
    uv_loop_close(loop);
    return SD_EXIT_OK;
}

static int origin_parse(const char *value, void *udata, char *err, size_t len) {
    if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0) {
        snprintf(err, len, "wants http://HOST:PORT, got '%s'", value);
        return -1;
    }
    size_t n = strlen(value);
    char **out = udata;
    *out = sd_xstrndup(value, value[n - 1] == '/' ? n - 1 : n); /* no trailing slash */
    return 0;
}

static int run_serve(int argc, char **argv) {
    options o = {.listen = "127.0.0.1:8080",
                 .ttl = 60,
                 .jitter = 10,
                 .negative_ttl = 5,
                 .local_bytes = 64LL << 20};
    char *origin = NULL;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT", "address to listen on (default 127.0.0.1:8080)",
         .parse = sd_cli_listen_parse, .udata = &o.listen},
        {"--origin", "URL", "the origin, http://HOST:PORT (required)", .parse = origin_parse,
         .udata = &origin, .required = 1},
        {"--ttl", "S", "freshness when the origin says none (default 60)", .number = &o.ttl,
         .min = 0.001, .max = 31536000, .what = "seconds"},
        {"--jitter", "PCT", "+- percent on every TTL (default 10)", .integer = &o.jitter, .min = 0,
         .max = 50},
        {"--stale-while-revalidate", "S", "serve stale while one reload runs (default 0)",
         .number = &o.swr, .min = 0, .max = 31536000, .what = "seconds"},
        {"--stale-if-error", "S", "serve stale while the origin fails (default 0)",
         .number = &o.sie, .min = 0, .max = 31536000, .what = "seconds"},
        {"--negative-ttl", "S", "failures and not-found (default 5)", .number = &o.negative_ttl,
         .min = 0.001, .max = 86400, .what = "seconds"},
        {"--local-bytes", "N", "in-process tier budget (default 67108864; 0: none)",
         .integer = &o.local_bytes, .min = 0, .max = 1LL << 40},
        {"--redis", "URL", "Redis (default REDIS_URL, else a private redis-server)",
         .parse = sd_cli_redis_parse, .udata = &o.redis},
        {"--admin-token-file", "FILE",
         "bearer token for PURGE and /v1/purge (first line; else\n"
         "CACHE_ADMIN_TOKEN; none: loopback clients only)",
         .text = &o.admin_token_file},
        SD_CLI_TRUST_OPT(&o.trust),
        {0}};
    const sd_cli_cmd cmd = {.name = "cache serve",
                            .synopsis = "--origin URL [options]",
                            .about = "A caching reverse proxy for GET, shared over Redis.",
                            .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK) {
        free(origin);
        return sd_cli_exit_status(rc);
    }
    o.origin = origin;
    if (sd_admin_load(&o.admin, "cache serve", "--admin-token-file", o.admin_token_file,
                      "CACHE_ADMIN_TOKEN") != 0) {
        free(origin);
        return SD_EXIT_USAGE;
    }
    sd_redis_url url;
    memset(&url, 0, sizeof url);
    sd_redis_server *server = NULL;
    if (sd_redis_resolve(o.redis, &url, &server) != 0) {
        rc = o.redis || getenv("REDIS_URL") ? SD_EXIT_USAGE : SD_EXIT_FAILURE;
    } else {
        rc = serve(&o, &url);
    }
    sd_redis_url_clear(&url);
    sd_redis_server_stop(server);
    free(origin);
    return rc;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {{"serve", "run the caching reverse proxy (HTTP)", run_serve},
                                      {0}};
    return sd_cli_dispatch("cache", "A two-tier read-through cache with request coalescing.", subs,
                           argc, argv);
}
