/*
 * links.h - the URL shortener's links in Redis: create (a generated code or an alias), look up,
 * delete; and the checks a target and an alias pass before anything is written.
 *
 * Creating a link with a generated code:
 *
 *   check target (us_target_check) -- refused --> verdict, nothing written, no id used
 *        |
 *   next id from this instance's block; block empty -> INCRBY <prefix>{ids}:next block
 *        |
 *   code = us_code_encode(id)  (code.h: keyed permutation, base62)
 *        |
 *   us-create.lua: SET <prefix>l:{code} value NX --- key exists ---> skip the id, next id
 *        |  written                                   (counted in us_links_stats.skipped)
 *        v
 *   the link, with created / expires_at from Redis's TIME
 *
 * Invariants
 *  1. No check-then-insert: a link is written only by SET NX, so an existing link is never
 *     overwritten, whatever another instance or a rewound counter does at the same moment.
 *  2. Ids come from one Redis counter, reserved in blocks with INCRBY: two instances never
 *     get the same block while the counter only grows. If it goes back (a write lost to an
 *     `appendfsync everysec` crash, a failover to a replica that had not seen the last
 *     INCRBYs, a hand edit), an id is handed out again: invariant 1 then finds its code taken
 *     and the id is skipped. Ids lost in an unused block (an instance that stops) are gaps,
 *     never reuses.
 *  3. Aliases live in the same key space as codes (`<prefix>l:{<alias>}`) and are claimed by
 *     the same SET NX: of any number of concurrent claims exactly one wins. An alias that is a
 *     canonical code is refused (us_alias_check), so an alias never takes a generated code's
 *     key, and even if it did, invariant 1 would stop the generated code from overwriting it.
 *  4. Expiry is judged by Redis's clock (TIME inside the scripts), never an instance's. An
 *     expired link is kept `retention_ms` more (answered US_LINK_EXPIRED, 410), then its key
 *     expires (PXAT) and the code answers US_LINK_NOT_FOUND (404). A generated code never comes
 *     back after that (invariant 2); an alias may be claimed again.
 *  5. Every command touches one key, whose hash tag is the code itself, so the same calls work
 *     on a single Redis and on Redis Cluster; the counter is one key on one shard.
 *
 * Threading: a us_links is used by one thread at a time, over a sync sd_redis it borrows.
 */
#ifndef US_LINKS_H
#define US_LINKS_H

#include <stdint.h>

#include "addr_vet.h"
#include "code.h"
#include "redis.h"

enum {
    US_EEXHAUSTED = -20001, /* the counter has passed the codec's domain: no ids left */
    US_ESKIPS = -20002,     /* more than max_skips taken codes in a row (see us_links_opts) */
    US_ECORRUPT = -20003,   /* a stored link could not be read */
};

/* A description of a negative code from here or from sd.h. */
const char *us_strerror(int err);

/* Why a create was refused: a result, not an error (the HTTP layer maps it to 409 / 422). */
typedef enum us_verdict {
    US_OK = 0,
    US_TARGET_INVALID,  /* sd_addr_url_check refused it: see the sd_addr_verdict beside it */
    US_TARGET_SELF,     /* it points at our own base URL (a redirect loop) */
    US_ALIAS_INVALID,   /* not 3 to 64 of [A-Za-z0-9_-] */
    US_ALIAS_RESERVED,  /* a word the service's own paths use (v1, healthz, metrics, ...) */
    US_ALIAS_CODE,      /* a canonical generated code (code.h, design 3) */
    US_ALIAS_TAKEN,     /* someone holds it (409) */
    US_EXPIRES_INVALID, /* expires_in_ms < 0 or above US_EXPIRES_MAX_MS */
    US_CLICKS_INVALID,  /* max_clicks < 0 */
} us_verdict;

#define US_EXPIRES_MAX_MS (10LL * 366 * 24 * 3600 * 1000)
#define US_ALIAS_MIN 3
#define US_ALIAS_MAX 64

/* A static description of a verdict, for a problem+json detail. */
const char *us_verdict_reason(us_verdict v);

/* ---- checks (no Redis) ----------------------------------------------------------------------- */

/* Our own origin, from the base URL the short links are served under. */
typedef struct us_origin {
    int https;
    char host[256];
    int port;
} us_origin;

/* Parses base_url (http or https; private hosts allowed, since a test serves on 127.0.0.1).
 * Returns 0, or SD_EPARSE. */
int us_origin_parse(const char *base_url, us_origin *out);

/*
 * Checks a target URL: sd_addr_url_check with addr (NULL: defaults: http/https, 2,048 bytes, no
 * control characters or spaces, no non-public host in any spelling), then that its scheme, host
 * and port are not self's (NULL: no such check). Returns US_OK, US_TARGET_INVALID (with *why
 * set, when why is not NULL) or US_TARGET_SELF.
 */
us_verdict us_target_check(const char *url, const sd_addr_opts *addr, const us_origin *self,
                           sd_addr_verdict *why);

/* Checks an alias (NUL-terminated): US_OK, US_ALIAS_INVALID, US_ALIAS_RESERVED or
 * US_ALIAS_CODE. The reserved words compare without case. */
us_verdict us_alias_check(const us_codec *codec, const char *alias);

/* Whether s could name a link at all (a canonical code, or a string us_alias_check accepts
 * bar its reserved-word rule): the read path answers 404 without asking Redis when not. */
int us_code_possible(const us_codec *codec, const char *s);

/* ---- links in Redis ---------------------------------------------------------------------------
 */

typedef struct us_links us_links;

typedef struct us_links_opts {
    const char *prefix;   /* key prefix, copied; default "us:" */
    int block;            /* ids reserved per INCRBY; default 1000 */
    int64_t retention_ms; /* how long an expired link answers 410; default 7 days */
    int max_skips;        /* taken codes in a row before a create fails; default 100000 */
    const char *base_url; /* our own base URL (targets on it are refused); NULL: no check */
    sd_addr_opts addr;    /* the target rules (sd_addr_opts_default) */
    int timeout_ms;       /* each Redis call's deadline; 0: the connection's */
} us_links_opts;

void us_links_opts_default(us_links_opts *opts);

/* The scripts the Redis connection should load in its handshake (sd_redis_opts.scripts). */
sd_script *const *us_links_scripts(size_t *n);

/*
 * Creates the store over redis and codec (both borrowed: they must outlive it) with opts (NULL:
 * defaults; copied). Returns 0 and *out, or -EINVAL (block < 1, retention_ms < 0, max_skips <
 * 1) or SD_EPARSE (a bad base_url).
 */
int us_links_new(sd_redis *redis, const us_codec *codec, const us_links_opts *opts, us_links **out);

/* Frees it. The unused rest of its id block is lost (a gap, never a reuse). NULL is a no-op. */
void us_links_free(us_links *l);

/* A link as stored. */
typedef struct us_link {
    char code[US_ALIAS_MAX + 1];
    char *url;             /* owned: us_link_clear frees it */
    int64_t created_ms;    /* Redis TIME at creation, Unix ms */
    int64_t expires_at_ms; /* Unix ms by Redis's clock; 0: never */
    int64_t max_clicks;    /* 0: no limit */
} us_link;

void us_link_clear(us_link *link);

/* What to create. */
typedef struct us_create_req {
    const char *url;       /* the target */
    const char *alias;     /* NULL: a generated code */
    int64_t expires_in_ms; /* 0: never */
    int64_t max_clicks;    /* 0: no limit */
} us_create_req;

/*
 * Creates a link. Returns 0 with *verdict US_OK and *out filled (clear it with us_link_clear),
 * or 0 with another verdict (nothing written; *why holds the address verdict for
 * US_TARGET_INVALID, when why is not NULL); or a negative error: SD_ETIMEDOUT /
 * SD_EDISCONNECTED / SD_EREDIS (the link may or may not have been written; an id is then
 * spent), US_EEXHAUSTED, US_ESKIPS.
 */
int us_links_create(us_links *l, const us_create_req *req, us_link *out, us_verdict *verdict,
                    sd_addr_verdict *why);

typedef enum us_link_state {
    US_LINK_FOUND = 1,
    US_LINK_NOT_FOUND, /* no such link, or not a possible code (no Redis call then) */
    US_LINK_EXPIRED,   /* past expires_at, still kept (invariant 4) */
} us_link_state;

/* Looks up code. Returns 0 with *state, and *out filled when FOUND or EXPIRED (clear it); or a
 * negative error (SD_* as above, US_ECORRUPT). */
int us_links_get(us_links *l, const char *code, us_link_state *state, us_link *out);

/* Deletes a link. Returns 1 when it existed, 0 when not, or a negative error. */
int us_links_delete(us_links *l, const char *code);

typedef struct us_links_stats {
    uint64_t created; /* links written by this store */
    uint64_t skipped; /* generated codes found taken (ids handed out twice) */
    uint64_t blocks;  /* INCRBYs sent */
} us_links_stats;

void us_links_stats_get(const us_links *l, us_links_stats *out);

#endif
