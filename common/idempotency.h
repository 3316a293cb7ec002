/*
 * idempotency.h - the HTTP Idempotency-Key handling every POST API here shares (the job queue's
 * POST /v1/queues/{q}/jobs, the webhook sender's and the URL shortener's create endpoints).
 *
 * A client that sends a POST and loses the response (a timeout, a reset) cannot know whether
 * the server acted. With an `Idempotency-Key: <unique string>` header it can simply send the
 * same request again: the server acts at most once per key and answers every retry with the
 * first answer. This follows the IETF draft "The Idempotency-Key HTTP Header Field"
 * (draft-ietf-httpapi-idempotency-key-header) and what Stripe's API does:
 *
 *   same key, same request, first one finished   -> the first response replayed (status, the
 *                                                   headers the handler added, body), with
 *                                                   `Idempotent-Replayed: true`; the handler
 *                                                   does not run
 *   same key, another request (method, path or    -> 422, problem type
 *   body differ; bodies compared by SHA-256)         /problems/idempotency-key-reused
 *   same key, same request, first still running   -> 409, problem type
 *                                                   /problems/idempotency-key-in-use, with
 *                                                   Retry-After
 *   no key                                        -> the handler runs, nothing is recorded
 *   a malformed key (empty, over 255 bytes, not   -> 400, /problems/idempotency-key-invalid
 *   printable ASCII)
 *   Redis unreachable or too slow                 -> 503, /problems/idempotency-unavailable,
 *                                                   Retry-After: 1; the handler does not run
 *                                                   (running it unchecked could act twice)
 *
 * Which responses are recorded. 2xx and 4xx responses are recorded and replayed for ttl_s
 * (default 24 h): they are the answer to that request, and the same request will get the same
 * answer. 5xx responses, and 408, 409, 425 and 429 (a timeout, a conflict, too early, too many
 * requests: transient by definition), are *not* recorded: the key is released, so a retry runs
 * the handler again. The handlers here answer 5xx only when they could not do the work (Redis
 * down, stopping), so running the retry is what the client needs, while replaying a 500 for a
 * day would make the key useless. (Stripe records 500s instead; its handlers can fail half-way,
 * ours are one atomic Redis script each.) A 429 from the job queue's back-pressure must likewise
 * let the retry through once there is room.
 *
 * Scope. Keys are per client: two clients that pick the same key never see each other's
 * responses. The scope is the value of a configured header (scope_header, e.g. "Authorization"
 * carrying an API token; its SHA-256 is used, never the token itself) when the request has it,
 * else the client's address (sd_http_req_client: the peer, or behind a proxy named by
 * --trust-proxy the address X-Forwarded-For gives); a component that knows its client better
 * (a client id after authentication) passes its own scope to sd_idem_handle_scoped.
 *
 * Storage (one hash tag per record, so a record's keys share a slot on Redis Cluster):
 *   <prefix>{<H>}:rec    hash  fp, status, headers, body       TTL ttl_s (24 h) from completion
 *   <prefix>{<H>}:mark   string fingerprint + random token     TTL mark_ms (60 s)
 * where H is the first 32 hex digits of SHA-256(scope "\n" key). The in-flight mark has its own
 * expiry, so a server that crashes (or a handler that never answers) blocks its key for mark_ms
 * at most, after which a retry runs the handler again. Completion writes the record only while
 * the mark is still its own: a handler that outlived its mark answers its client but records
 * nothing (the request that took the key over owns it now). Each step is one Lua script (begin,
 * finish, release), so a check and its write are atomic.
 *
 * Ordering. A response that is recorded is sent only after Redis confirmed the record, and a
 * released key is released before its response is sent, so a retry that follows a response (at
 * this instance or any other) always finds the record or a free key, never a stale mark.
 *
 * Callbacks follow the repository's rule. The handler given to sd_idem_handle runs at most once:
 * inside sd_idem_handle when the request has no key, else later from the Redis reply. It must
 * answer through exactly one sd_idem_call_respond* call (not sd_http_req_respond: the record
 * would never be written and the key would stay in flight until its mark expires).
 */
#ifndef SD_IDEMPOTENCY_H
#define SD_IDEMPOTENCY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "redis.h"

typedef struct sd_idem sd_idem;
typedef struct sd_idem_call sd_idem_call;

/* Options; a zero field keeps its default. */
typedef struct sd_idem_opts {
    const char *prefix;       /* key prefix with its schema version, e.g. "jq:v1:idem"; required */
    int ttl_s;                /* how long a response is kept and replayed, default 86400 (24 h) */
    int mark_ms;              /* the in-flight mark's expiry, default 60000 */
    int timeout_ms;           /* deadline of each Redis call, default 1000 */
    const char *scope_header; /* the header naming the client (its SHA-256 is the scope), or
                                 NULL: the client's address */
} sd_idem_opts;

/* What happened to requests, for metrics (sd_idem_add_metrics) and tests. */
enum {
    SD_IDEM_NO_KEY,     /* no Idempotency-Key: the handler ran unrecorded */
    SD_IDEM_NEW,        /* the key was free: the handler ran */
    SD_IDEM_RECORDED,   /* its response was recorded */
    SD_IDEM_RELEASED,   /* its response was not recordable (5xx, 408, 409, 425, 429): released */
    SD_IDEM_LOST,       /* its mark had expired at completion: answered, not recorded */
    SD_IDEM_REPLAYED,   /* a recorded response was replayed */
    SD_IDEM_MISMATCH,   /* 422 */
    SD_IDEM_IN_FLIGHT,  /* 409 */
    SD_IDEM_INVALID,    /* 400 */
    SD_IDEM_UNAVAILABLE /* 503: Redis failed at the start (or at completion: then the handler's
                           answer went out unrecorded) */
};
#define SD_IDEM_OUTCOMES 10

/*
 * Creates the handling for one server on the connection redis (borrowed: it must outlive the
 * sd_idem, and be freed first, so that its pending callbacks have run before sd_idem_free).
 * Returns 0 and *out, or -EINVAL (no prefix). The scripts are sd_idem_scripts[]: put them in the
 * connection's sd_redis_opts.scripts to have them loaded at connect (otherwise the first call
 * loads each one through the NOSCRIPT fallback).
 */
int sd_idem_new(sd_aredis *redis, const sd_idem_opts *opts, sd_idem **out);

/* Frees it. Requests still in flight must have been answered (the server's done_cb ran) and the
 * connection freed. NULL is a no-op. */
void sd_idem_free(sd_idem *idem);

/* The scripts this module runs, for sd_redis_opts.scripts. */
extern sd_script *const sd_idem_scripts[];
extern const size_t sd_idem_nscripts;

/* A route's handler under the idempotency rules: it reads the request from req as usual and
 * answers through call. */
typedef void sd_idem_handler_cb(sd_idem_call *call, sd_http_req *req, void *udata);

/*
 * Applies the rules above to req, with the default scope (scope_header's value, else the peer
 * address), and runs cb when the request is to be handled. Call it from the route's HTTP
 * handler. Every request gets exactly one response: from cb through the call, or from here.
 */
void sd_idem_handle(sd_idem *idem, sd_http_req *req, sd_idem_handler_cb *cb, void *udata);

/* The same with the scope given by the component (any bytes, NUL-terminated, copied). */
void sd_idem_handle_scoped(sd_idem *idem, sd_http_req *req, const char *scope,
                           sd_idem_handler_cb *cb, void *udata);

/* Adds a response header (copied). Headers added here are recorded and replayed with the
 * response (Location, Retry-After, ...). Call before responding. */
void sd_idem_call_add_header(sd_idem_call *call, const char *name, const char *value);

/* Answers the request (records the response when it is recordable, see above). body is
 * copied. After this call the call object is no longer the handler's. */
void sd_idem_call_respond(sd_idem_call *call, int status, const char *content_type,
                          const char *body, size_t len);

/* The same with a JSON body (application/json); steals json. */
void sd_idem_call_respond_json(sd_idem_call *call, int status, json_t *json);

/* The same with an RFC 9457 problem, as sd_http_req_respond_problem renders it; steals extra. */
void sd_idem_call_respond_problem(sd_idem_call *call, int status, const char *type,
                                  const char *title, const char *detail, json_t *extra);

/* How many requests had each outcome (SD_IDEM_NO_KEY ... SD_IDEM_UNAVAILABLE). */
uint64_t sd_idem_count(const sd_idem *idem, int outcome);

/* Appends http_idempotency_requests_total{outcome="..."} to the server's /metrics. */
void sd_idem_add_metrics(sd_idem *idem, sd_http_server *srv);

#endif
