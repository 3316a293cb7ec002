/*
 * sender.c - the webhook sender: `webhook serve` (the management API and delivery workers) and
 * `webhook deliver` (more delivery workers, as separate processes).
 *
 * What is stored (Redis, all keys under the hash tag {wh1}, see webhook/README.md "Keys"):
 *   endpoints   a hash per endpoint (url, secret, the previous secret and until when it still
 *               signs, event types, state) and a set of their ids;
 *   messages    a hash per message: its event type and its body, the exact bytes every attempt
 *               sends; a list of its attempts (time, endpoint, status, latency, error);
 *   deliveries  one job queue per endpoint, "wh1.ep.<endpoint id>" (jobqueue.h); a job's payload
 *               is the message id. Each HTTP attempt is one delivery of that job;
 *   dead        a hash of dead letters (id -> JSON), replayable.
 *
 * The life of a delivery (one job):
 *
 *     POST /v1/messages ──enqueue──> READY ──reserve──> RESERVED ──2xx──> ack: DONE
 *                                      ^                  │
 *                                      │                  ├─ 410: release, endpoint DISABLED
 *                                      │   fail(retry     ├─ 4xx (not 408/409/425/429), after
 *                                      └── after = the    │  WH_4XX_ATTEMPTS attempts: DEAD
 *                                          schedule or    ├─ schedule used up: DEAD
 *                                          Retry-After)───┘  (a dead letter: replay enqueues a
 *                                                             new job for the same message)
 *
 * Invariants:
 *  1. The webhook-id of every attempt is the message id: retries and replays carry the same id,
 *     so a receiver's dedupe (dedupe.h) applies the message once.
 *  2. The body sent is the stored bytes, never a re-serialisation.
 *  3. A job's visibility timeout is the HTTP timeout plus WH_LEASE_MARGIN_MS, computed here and
 *     not configurable apart: an attempt still waiting for its endpoint can never be handed to a
 *     second worker (the duplicate that a visibility timeout shorter than the HTTP timeout makes).
 *  4. Isolation: every endpoint has its own queue and its own in-flight cap (--endpoint-
 *     concurrency requests at once, and at most WH_PREFETCH times that many jobs held, the rest
 *     read and waiting for a request slot); a worker reserves from an endpoint's queue only as
 *     many jobs as that endpoint has free slots, so jobs of a slow or black-holed endpoint wait
 *     in Redis, not in a worker slot, and never delay another endpoint's. A circuit breaker stops
 * reserving for an endpoint after WH_BREAKER_FAILURES failures in a row for a while;
 * --disable-after failures in a row (across restarts, counted in Redis) disable it: its jobs stay
 * queued.
 *  5. SSRF: an endpoint URL is checked when stored (sd_addr_url_check) and every address is
 *     vetted when a socket is opened (sd_addr_vet_connect as the HTTP client's hook), unless
 *     --allow-private.
 *
 *  6. Once it serves, nothing in the process waits for Redis: every call after the start-up checks
 *     (noeviction, the first connections) goes over the asynchronous connections (the workers':
 *     s->ar, the sender's own keys, and s->aq, the job queue; the API's: s->api_ar and s->api_aq,
 *     which also drop a deleted endpoint's queue), so a slow attempt, a slow reply or a slow
 *     management call (api_call) holds its own slot or request and nothing else. Writes whose
 *     answer nobody needs (attempt records, counters) are not waited for; what one loop iteration
 *     sends leaves in one write per connection (on_write), and acks, "ok" counters and the API's
 *     enqueues are gathered per endpoint queue and sent by on_flush, one script each. A message for
 *     a backlogged endpoint is parked in the message's own script, so that its post does not wait
 *     for it, and moved to the endpoint's queue in batches once the endpoint can take deliveries
 *     again ("Parking").
 *
 * Known limits (README "What is not built yet"): workers poll the endpoint queues every
 * --poll-ms (serve's own workers are also woken by each enqueue); a process crash between a
 * message's store and its fan-out leaves it stored with fewer deliveries, those it was parked
 * for excepted (the client's retry with the same Idempotency-Key replays the recorded answer
 * only if it got recorded).
 */
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#include "addr_vet.h"
#include "admin.h"
#include "cli.h"
#include "http.h"
#include "http_client.h"
#include "idempotency.h"
#include "jobqueue.h"
#include "local_redis.h"
#include "redis.h"
#include "sd.h"
#include "sender.h"
#include "signature.h"
#include "webhook_lua.h"

#define KP "wh1:{wh1}:"                  /* every key's prefix (schema version, hash tag) */
#define WH_LEASE_MARGIN_MS 5000          /* invariant 3 */
#define WH_4XX_ATTEMPTS 3                /* attempts a non-retryable 4xx gets */
#define WH_BREAKER_FAILURES 5            /* failures in a row that open the breaker */
#define WH_RETRY_AFTER_MAX_MS 86400000LL /* the most a Retry-After can defer */
#define WH_ATTEMPTS_KEPT 100             /* attempts kept per message */
#define WH_RETENTION_S (30 * 86400)      /* messages and their attempts */
#define WH_BODY_MAX (256 * 1024)
#define WH_REFRESH_MS 100     /* the endpoint list is read at most this often, or --poll-ms */
#define WH_PARK_MS 20         /* how often parked messages move to their endpoint's queue */
#define WH_PARK_BATCH 100     /* and how many per endpoint at most, in one script */
#define WH_PARK_SWEEP_MS 1000 /* every endpoint's parked zset is looked at this often */
/* An endpoint holds up to this many times --endpoint-concurrency jobs: the others wait, read
 * and signed-to-be, for a request slot, so a slot that frees starts the next request at once
 * instead of after a reserve and a read (two Redis round trips, long on a busy machine). */
#define WH_PREFETCH 2
/* A job that waited for a slot is sent only if its lease is at most this old (the lease is
 * --timeout-ms + WH_LEASE_MARGIN_MS: the request then still ends 2.5 s before it); otherwise it
 * is released, uncounted, to be reserved again. */
#define WH_WAIT_MAX_MS (WH_LEASE_MARGIN_MS / 2)

typedef struct options {
    const char *listen;
    const char *redis;
    const char *schedule_text;
    const char *token_file;
    sd_http_trust trust; /* --trust-proxy: whose X-Forwarded-For names the client */
    long long timeout_ms, concurrency, endpoint_concurrency, poll_ms, disable_after, recheck_ms;
    int allow_private, no_deliver;
} options;

/* An endpoint as a worker sees it. Never freed while the worker runs (attempts point at it). */
typedef struct sender sender;
typedef struct attempt attempt;

typedef struct endpoint {
    sender *s; /* the sender it belongs to (a reserve callback's way back) */
    char id[40];
    char queue[64];
    int inflight;             /* jobs held: attempts reading, waiting or being sent (at most
                                 WH_PREFETCH x --endpoint-concurrency) */
    int sending;              /* HTTP requests in flight (at most --endpoint-concurrency) */
    uint64_t reserve_sent_ms; /* when the reserve in flight was sent: its leases start after */
    attempt **waiting;        /* read, waiting for a request slot, oldest first */
    size_t nwaiting, waiting_cap;
    int reserving;     /* a reserve call is in flight */
    int again;         /* asked to fill while reserving: fill once more when it returns */
    int drained;       /* its last reserve got fewer jobs than it asked for: a freed slot leaves the
                          next reserve to an enqueue here or to the next tick (endpoint_fill) */
    int asked;         /* the jobs the reserve in flight asked for */
    int parked;        /* its parked zset may hold messages: the mover looks (on_park) */
    int moving;        /* a move is in flight */
    unsigned park_gen; /* messages parked here by this process so far */
    int disabled;      /* as last read from Redis (a deleted endpoint counts as one) */
    int failures_row;  /* in this process, for the breaker */
    uint64_t open_until_ms;  /* the breaker: open until then */
    uint64_t pause_until_ms; /* no reserve before then (Redis failed under an attempt) */
    attempt **acks;          /* delivered attempts whose ack waits for the next flush */
    size_t nacks, acks_cap;
    long long ok_pending; /* deliveries not yet added to the endpoint's "ok" counter */
} endpoint;

struct sender {
    uv_loop_t *loop;
    sd_redis_url url;
    jq_aclient *aq; /* asynchronous: enqueue, reserve, ack, fail, release */
    sd_aredis *ar;  /* asynchronous: the attempts' reads and records, the endpoint list */
    /* The API's own asynchronous connections (serve only): a burst of posts queues its scripts
     * there, never in front of a worker's reserve, read or ack (Redis answers each connection
     * in order). */
    jq_aclient *api_aq; /* enqueues, replays */
    sd_aredis *api_ar;  /* messages, Idempotency-Keys, the management calls */
    sd_idem *idem;
    sd_http_server *http;
    sd_http_client *client;
    sd_addr_opts addr;
    long long schedule[WH_SCHEDULE_MAX];
    int nschedule;
    options o;
    int64_t visibility_ms;
    endpoint **eps;
    size_t neps, caps;
    struct enqueue_list *enq; /* the API's enqueues waiting for the next flush, per queue */
    size_t nenq;
    int inflight;  /* attempts not yet freed (their job not yet acked, failed or released) */
    int records;   /* commands on ar in flight whose callbacks touch the sender */
    int api_calls; /* management requests waiting for Redis (api_call) */
    int refreshing;
    int deliver; /* workers run in this process */
    int stopping;
    uint64_t last_refresh_ms;
    uv_timer_t tick;
    uv_timer_t drain;         /* serve: drops the queues of deleted endpoints (endpoints_drain) */
    struct queue_drop *drops; /* serve: the queues dropped after a DELETE, in turn (drop_next) */
    size_t ndrops, drops_cap;
    int dropping;     /* a batch of drops[0] in flight */
    uv_timer_t flush; /* a 0 ms timer: the acks and counters of one loop iteration, together */
    uv_timer_t park;  /* moves parked messages (on_park) */
    int moves;        /* moves in flight */
    uint64_t last_park_sweep_ms;
    uv_prepare_t write; /* before the loop polls: writes what the iteration sent to Redis */
    uv_signal_t sigint, sigterm;
    uv_timer_t finish; /* frees the queue connections once a stop has nothing left running */
    uint64_t delivered, failed, dead;
    sd_admin admin; /* the API's guard: a bearer token, or loopback clients only */
};

/* One HTTP attempt of one job. Its life (attempt_start, attempt_send, attempt_http,
 * on_response, attempt_failed):
 *
 *   READING --both replies--> SENDING --2xx--> ACKING (slot freed; ack batched) --> freed
 *      |        |                ^  |
 *      |        +-- no request   |  +--other--> FAILING (failures_row counted) --> fail, release
 *      |            slot free:   |                                          or disable --> freed
 *      |            WAITING -----+ (a slot frees: endpoint_send_next)
 *      |              +-- waited 2.5 s of its lease, endpoint disabled or breaker open: release
 *      +-- Redis failed or endpoint disabled --> release --> freed
 */
typedef enum attempt_state {
    ATTEMPT_READING,
    ATTEMPT_WAITING,
    ATTEMPT_SENDING,
    ATTEMPT_ACKING,
    ATTEMPT_FAILING
} attempt_state;

struct attempt {
    sender *s;
    endpoint *ep;
    jq_job job;
    attempt_state state;
    int holds_slot;         /* counted in ep->inflight */
    int sending;            /* counted in ep->sending */
    uint64_t lease_from_ms; /* a local time no later than its lease's start */
    int reads;              /* READING: replies still awaited */
    int read_failed;
    uint64_t start_ms;
    char *url, *secret, *old_secret, *ep_state; /* the endpoint's hash, as read */
    int64_t old_until_ms;
    char *body; /* the message's bytes; NULL while unread or when the message is gone */
    size_t body_len;
    int body_gone;
    /* FAILING: what the answer decided, kept for after the failure count is read. */
    int http_status, gone, retry_after_set;
    int64_t retry_after_ms;
    char error[160];
};

/* ---- small helpers ---- */

int wh_schedule_parse(const char *text, long long *out, int *n, char *err, size_t errlen) {
    *n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v <= 0 || *p == '-' || *p == '+') {
            snprintf(err, errlen, "wants durations like 50ms,1s,5m,2h, got '%s'", text);
            return -1;
        }
        long long mult;
        if (strncmp(end, "ms", 2) == 0)
            mult = 1, end += 2;
        else if (*end == 's')
            mult = 1000, end++;
        else if (*end == 'm')
            mult = 60000, end++;
        else if (*end == 'h')
            mult = 3600000, end++;
        else {
            snprintf(err, errlen, "each duration needs a unit (ms, s, m, h), got '%s'", text);
            return -1;
        }
        if (v > 7LL * 86400000 / mult || *n == WH_SCHEDULE_MAX) {
            snprintf(err, errlen, "at most %d durations of at most 7 days each", WH_SCHEDULE_MAX);
            return -1;
        }
        out[(*n)++] = v * mult;
        if (*end == ',')
            end++;
        else if (*end) {
            snprintf(err, errlen, "durations are separated by commas, got '%s'", text);
            return -1;
        }
        p = end;
    }
    if (*n == 0) {
        snprintf(err, errlen, "wants at least one duration");
        return -1;
    }
    return 0;
}

static void random_id(const char *prefix, char *out, size_t len) {
    unsigned char b[12];
    if (RAND_bytes(b, sizeof b) != 1)
        for (size_t i = 0; i < sizeof b; i++)
            b[i] = (unsigned char)rand();
    size_t o = (size_t)snprintf(out, len, "%s", prefix);
    for (size_t i = 0; i < sizeof b && o + 2 < len; i++, o += 2)
        snprintf(out + o, len - o, "%02x", b[i]);
}

/* An id from a path: letters, digits and '_' only, at most 39 bytes. */
static int id_valid(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n > 39)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '_'))
            return 0;
    return 1;
}

/* A field of an HGETALL reply, or NULL. */
static const char *hfield(const redisReply *h, const char *name) {
    if (!h || h->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (strcmp(h->element[i]->str, name) == 0)
            return h->element[i + 1]->str;
    return NULL;
}

static void problem(sd_http_req *req, int status, const char *title, const char *detail) {
    sd_http_req_respond_problem(req, status, "about:blank", title, detail, NULL);
}

static void redis_down(sd_http_req *req) {
    problem(req, 503, "Redis unavailable", "the request could not be completed; retry");
}

/* The API's guard (admin.h): with a bearer token (--api-token-file or WEBHOOK_API_TOKEN) every
 * /v1 request must carry it, else 401 and nothing is done; without one, only loopback clients
 * are answered. Returns 1 when the request may go on. */
static int check_token(sender *s, sd_http_req *req) {
    return sd_admin_check(&s->admin, req);
}

/* ---- the delivery workers ----
 *
 * Nothing here waits for Redis: every read and write of an attempt goes over the asynchronous
 * connections (s->ar for the sender's own keys, s->aq for the job queue), so an attempt that is
 * slow anywhere (its endpoint, Redis) holds its own slot and nothing else. The commands that one
 * loop iteration sends leave together (hiredis writes its buffer once per iteration); acks and
 * the endpoints' "ok" counters are collected and sent by on_flush, one script per endpoint per
 * iteration, as the job queue's worker runtime batches its acks. */

static void sender_maybe_finish(sender *s);
static void endpoint_fill(sender *s, endpoint *ep, uint64_t now);
static void flush_schedule(sender *s);

/* Gives back the attempt's endpoint slot (once) and lets the endpoint reserve again, unless its
 * queue was found empty. */
static void attempt_slot_free(attempt *a) {
    if (!a->holds_slot)
        return;
    a->holds_slot = 0;
    a->ep->inflight--;
    if (!a->ep->drained)
        endpoint_fill(a->s, a->ep, sd_now_ms());
}

static void attempt_free(attempt *a) {
    sender *s = a->s;
    attempt_slot_free(a);
    s->inflight--;
    jq_job_clear(&a->job);
    free(a->url);
    free(a->secret);
    free(a->old_secret);
    free(a->ep_state);
    free(a->body);
    free(a);
    sender_maybe_finish(s);
}

/* Unix time in ms, for what users read (the attempts' times); durations use sd_now_ms. */
static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A record command's reply: nothing to do but count it. */
static void on_record(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    sender *s = privdata;
    if (status == 0 && reply->type == REDIS_REPLY_ERROR)
        sd_log(SD_LOG_WARN, "webhook.redis_error", "error=\"%s\"", reply->str);
    s->records--;
    sender_maybe_finish(s);
}

/* Sends one write whose outcome nobody waits for (a record, a counter) on s->ar. A write
 * refused at once (Redis down) is dropped, as a lost reply would be: records are for reading,
 * never for delivery. */
#define record_send(s, ...)                                                                        \
    do {                                                                                           \
        if (sd_aredis_command((s)->ar, on_record, (s), 0, __VA_ARGS__) == 0)                       \
            (s)->records++;                                                                        \
    } while (0)

/* Appends the attempt's record (time, endpoint, status, latency, error) to its message's list. */
static void record_attempt(sender *s, attempt *a, int status, const char *error) {
    int64_t at = wall_ms() - (int64_t)(sd_now_ms() - a->start_ms);
    json_t *j = json_pack("{s:s, s:i, s:I, s:i, s:I, s:s}", "endpoint_id", a->ep->id, "attempt",
                          a->job.attempts, "at_ms", (json_int_t)at, "status", status, "latency_ms",
                          (json_int_t)(sd_now_ms() - a->start_ms), "error", error);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    record_send(s, "RPUSH " KP "att:%s %s", a->job.payload, text);
    record_send(s, "LTRIM " KP "att:%s -%d -1", a->job.payload, WH_ATTEMPTS_KEPT);
    record_send(s, "EXPIRE " KP "att:%s %d", a->job.payload, WH_RETENTION_S);
    free(text);
}

static void on_jq_done(jq_aclient *c, int status, int64_t value, void *arg) {
    attempt *a = arg;
    if (status != 0)
        sd_log(SD_LOG_WARN, "webhook.queue_error", "endpoint=%s error=\"%s\"", a->ep->id,
               jq_strerror(status));
    attempt_free(a);
}

static void attempt_release(attempt *a) {
    if (jq_arelease(a->s->aq, a->ep->queue, &a->job, on_jq_done, a) != 0)
        attempt_free(a);
}

/* A dead letter being written: what it says, kept until the last attempt's record is read. */
typedef struct dead_letter {
    sender *s;
    char id[48];
    char endpoint_id[40];
    char *message_id;
    int attempts;
} dead_letter;

/* The last attempt's record has been read (on the connection that wrote it, so it is there):
 * the dead letter quotes it. */
static void on_last_attempt(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    dead_letter *d = privdata;
    sender *s = d->s;
    const char *err = status == 0 && reply->type == REDIS_REPLY_STRING ? reply->str : "";
    json_t *le = json_loads(err, 0, NULL);
    json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:O}", "id", d->id, "message_id", d->message_id,
                          "endpoint_id", d->endpoint_id, "attempts", d->attempts, "last_error",
                          le ? le : json_null());
    char *text = json_dumps(j, JSON_COMPACT);
    record_send(s, "HSET " KP "dead %s %s", d->id, text);
    sd_log(SD_LOG_INFO, "webhook.dead_letter", "id=%s message=%s endpoint=%s", d->id, d->message_id,
           d->endpoint_id);
    free(text);
    json_decref(j);
    json_decref(le);
    free(d->message_id);
    free(d);
    s->records--;
    sender_maybe_finish(s);
}

static void on_failed(jq_aclient *c, int status, int64_t state, void *arg) {
    attempt *a = arg;
    sender *s = a->s;
    if (status == 0 && state == JQ_STATE_DEAD) {
        s->dead++;
        dead_letter *d = sd_xcalloc(1, sizeof *d);
        d->s = s;
        random_id("dl_", d->id, sizeof d->id);
        snprintf(d->endpoint_id, sizeof d->endpoint_id, "%s", a->ep->id);
        d->message_id = sd_xstrdup(a->job.payload);
        d->attempts = a->job.attempts;
        if (sd_aredis_command(s->ar, on_last_attempt, d, 0, "LINDEX " KP "att:%s -1",
                              a->job.payload) == 0)
            s->records++;
        else {
            s->records++;
            on_last_attempt(s->ar, NULL, SD_EDISCONNECTED, d);
        }
    }
    on_jq_done(c, status, state, arg);
}

static void endpoint_disable(sender *s, endpoint *ep, const char *reason) {
    record_send(s, "HSET " KP "ep:%s state disabled disabled_reason %s", ep->id, reason);
    ep->disabled = 1;
    sd_log(SD_LOG_WARN, "webhook.endpoint_disabled", "endpoint=%s reason=\"%s\"", ep->id, reason);
}

/* The delay before the next attempt after the attempt-th failed, with +-10% jitter. */
static int64_t schedule_delay(sender *s, int attempt_no) {
    int i = attempt_no - 1;
    if (i >= s->nschedule)
        i = s->nschedule - 1;
    int64_t d = s->schedule[i];
    uint64_t r;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        r = (uint64_t)rand();
    int64_t span = d / 5;
    return span > 0 ? d - d / 10 + (int64_t)(r % (uint64_t)(span + 1)) : d;
}

/* Retry-After as seconds or an HTTP date; -1 when absent or unreadable. */
static int64_t retry_after_ms(const sd_http_response *resp) {
    const char *v = sd_http_response_header(resp, "Retry-After");
    if (!v)
        return -1;
    long long secs;
    if (sd_parse_ll(v, 0, 10LL * 365 * 86400, &secs) == 0)
        return secs * 1000;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end)
        return -1;
    int64_t at = (int64_t)timegm(&tm) - (int64_t)time(NULL);
    return at > 0 ? at * 1000 : 0;
}

/* A failed attempt, once Redis has counted it (in_row: the endpoint's failures in a row, 0 when
 * Redis could not say): disable the endpoint, or fail the job for a retry or a dead letter. */
static void attempt_failed(attempt *a, long long in_row) {
    sender *s = a->s;
    endpoint *ep = a->ep;
    if (a->gone) {
        endpoint_disable(s, ep, "410 Gone");
        attempt_release(a); /* its message is kept, queued, for a re-enabled endpoint */
        return;
    }
    if (in_row >= s->o.disable_after) {
        endpoint_disable(s, ep, "failed too many times in a row");
        attempt_release(a);
        return;
    }
    int status = a->http_status;
    jq_fail_opts fo = {.permanent = 0, .retry_after_ms = -1};
    int stop_4xx = status >= 400 && status <= 499 && status != 408 && status != 409 &&
                   status != 425 && status != 429;
    if ((stop_4xx && a->job.attempts >= WH_4XX_ATTEMPTS) || a->job.attempts > s->nschedule)
        fo.permanent = 1;
    else {
        fo.retry_after_ms = schedule_delay(s, a->job.attempts);
        if (a->retry_after_set)
            fo.retry_after_ms = a->retry_after_ms > WH_RETRY_AFTER_MAX_MS ? WH_RETRY_AFTER_MAX_MS
                                                                          : a->retry_after_ms;
    }
    if (jq_afail(s->aq, ep->queue, &a->job, a->error, &fo, on_failed, a) != 0)
        attempt_free(a);
}

static void on_failure_counted(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    attempt *a = privdata;
    attempt_failed(a, status == 0 && reply->type == REDIS_REPLY_INTEGER ? reply->integer : 0);
}

/* Sends the acks the last loop iteration collected (one script per endpoint) and adds the
 * deliveries to the endpoints' counters. */
typedef struct ack_batch {
    size_t n;
    attempt *a[];
} ack_batch;

static void on_acked(jq_aclient *c, int status, const int *codes, size_t n, void *arg) {
    ack_batch *b = arg;
    for (size_t i = 0; i < b->n; i++) {
        int rc = status != 0 ? status : codes[i];
        if (rc != 0)
            sd_log(SD_LOG_WARN, "webhook.queue_error", "endpoint=%s error=\"%s\"", b->a[i]->ep->id,
                   jq_strerror(rc));
        attempt_free(b->a[i]);
    }
    free(b);
}

static void enqueues_flush(sender *s);

static void on_flush(uv_timer_t *t) {
    sender *s = t->data;
    enqueues_flush(s);
    for (size_t i = 0; i < s->neps; i++) {
        endpoint *ep = s->eps[i];
        if (ep->ok_pending) {
            record_send(s, "HSET " KP "ep:%s failures_row 0", ep->id);
            record_send(s, "HINCRBY " KP "ep:%s ok %lld", ep->id, ep->ok_pending);
            ep->ok_pending = 0;
        }
        while (ep->nacks > 0) {
            size_t n = ep->nacks > 1000 ? 1000 : ep->nacks;
            ack_batch *b = sd_xmalloc(sizeof *b + n * sizeof b->a[0]);
            jq_ack_item *items = sd_xcalloc(n, sizeof *items);
            b->n = n;
            for (size_t k = 0; k < n; k++) {
                b->a[k] = ep->acks[ep->nacks - n + k];
                items[k].job = &b->a[k]->job;
            }
            ep->nacks -= n;
            int rc = jq_aack_many(s->aq, ep->queue, items, n, on_acked, b);
            free(items);
            if (rc != 0) { /* the leases run out and the jobs come back: at least once */
                for (size_t k = 0; k < n; k++)
                    attempt_free(b->a[k]);
                free(b);
            }
        }
    }
    sender_maybe_finish(s);
}

static void flush_schedule(sender *s) {
    if (!uv_is_active((uv_handle_t *)&s->flush) && !uv_is_closing((uv_handle_t *)&s->flush))
        uv_timer_start(&s->flush, on_flush, 0, 0);
}

/* Queues a delivered attempt's ack for the next flush. */
static void attempt_ack_later(attempt *a) {
    endpoint *ep = a->ep;
    a->state = ATTEMPT_ACKING;
    if (ep->nacks == ep->acks_cap) {
        ep->acks_cap = ep->acks_cap ? 2 * ep->acks_cap : 64;
        ep->acks = sd_xrealloc(ep->acks, ep->acks_cap * sizeof *ep->acks);
    }
    ep->acks[ep->nacks++] = a;
    flush_schedule(a->s);
}

static void endpoint_send_next(endpoint *ep);

/* The request of a sent attempt has ended: its request slot goes to the next waiting one. */
static void attempt_http_done(attempt *a) {
    if (!a->sending)
        return;
    a->sending = 0;
    a->ep->sending--;
    endpoint_send_next(a->ep);
}

static void on_response(int err, sd_http_response *resp, void *udata) {
    attempt *a = udata;
    sender *s = a->s;
    endpoint *ep = a->ep;
    int status = resp->status;
    if (err == SD_ECLOSED) { /* stopping: the attempt did not happen */
        a->sending = 0;
        ep->sending--;
        attempt_release(a);
        return;
    }
    if (err == 0 && status >= 200 && status <= 299) {
        s->delivered++;
        ep->failures_row = 0;
        ep->open_until_ms = 0; /* the breaker closes */
        ep->ok_pending++;
        record_attempt(s, a, status, "");
        /* The endpoint has answered: its slot is free now; the job stays RESERVED until the
         * batched ack lands (its lease covers that). */
        attempt_ack_later(a);
        attempt_slot_free(a);
        attempt_http_done(a);
        return;
    }
    s->failed++;
    a->state = ATTEMPT_FAILING;
    a->http_status = err == 0 ? status : 0;
    if (err)
        snprintf(a->error, sizeof a->error, "%s", sd_strerror(err));
    else if (status >= 300 && status <= 399)
        snprintf(a->error, sizeof a->error, "HTTP %d (redirects are not followed)", status);
    else
        snprintf(a->error, sizeof a->error, "HTTP %d", status);
    a->gone = err == 0 && status == 410;
    int64_t ra = err == 0 && (status == 429 || status == 503) ? retry_after_ms(resp) : -1;
    a->retry_after_set = ra >= 0;
    a->retry_after_ms = ra;
    record_attempt(s, a, a->http_status, a->error);
    record_send(s, "HINCRBY " KP "ep:%s failed 1", ep->id);
    if (++ep->failures_row >= WH_BREAKER_FAILURES)
        ep->open_until_ms = sd_now_ms() + (uint64_t)s->schedule[0];
    /* The request slot is free now; the endpoint keeps the job's slot until the job has been
     * failed (the breaker counts on it). */
    attempt_http_done(a);
    if (sd_aredis_command(s->ar, on_failure_counted, a, 0, "HINCRBY " KP "ep:%s failures_row 1",
                          ep->id) != 0)
        attempt_failed(a, 0);
}

static void attempt_http(attempt *a);

/* Starts waiting attempts while the endpoint has request slots free. One that waited too long
 * for its lease, or whose endpoint was disabled or broke its circuit meanwhile, is released. */
static void endpoint_send_next(endpoint *ep) {
    sender *s = ep->s;
    while (ep->nwaiting > 0 && (s->stopping || ep->sending < (int)s->o.endpoint_concurrency)) {
        attempt *a = ep->waiting[0];
        memmove(ep->waiting, ep->waiting + 1, --ep->nwaiting * sizeof *ep->waiting);
        uint64_t now = sd_now_ms();
        if (s->stopping || ep->disabled || ep->open_until_ms > now ||
            now - a->lease_from_ms > WH_WAIT_MAX_MS)
            attempt_release(a);
        else
            attempt_http(a);
    }
}

/* Both reads are in: sign and send (or wait for a request slot), or give the job back. */
static void attempt_send(attempt *a) {
    sender *s = a->s;
    endpoint *ep = a->ep;
    if (s->stopping) { /* a stop came while it was reading: the HTTP client is gone */
        attempt_release(a);
        return;
    }
    if (a->read_failed || !a->ep_state || strcmp(a->ep_state, "enabled") != 0 || !a->url ||
        !a->secret) {
        if (a->ep_state && strcmp(a->ep_state, "enabled") != 0)
            ep->disabled = 1;
        else /* Redis failed: the next try waits for a tick, not for this release */
            ep->pause_until_ms = sd_now_ms() + (uint64_t)s->o.poll_ms;
        attempt_release(a); /* Redis failed, or the endpoint is disabled: try later */
        return;
    }
    if (a->body_gone) { /* the message is past its retention */
        attempt_slot_free(a);
        attempt_ack_later(a);
        return;
    }
    if (ep->sending >= (int)s->o.endpoint_concurrency || ep->nwaiting > 0) {
        if (ep->nwaiting == ep->waiting_cap) {
            ep->waiting_cap = ep->waiting_cap ? 2 * ep->waiting_cap : 16;
            ep->waiting = sd_xrealloc(ep->waiting, ep->waiting_cap * sizeof *ep->waiting);
        }
        a->state = ATTEMPT_WAITING;
        ep->waiting[ep->nwaiting++] = a;
        endpoint_send_next(ep);
        return;
    }
    attempt_http(a);
}

/* Signs and sends a request (a request slot is free). */
static void attempt_http(attempt *a) {
    sender *s = a->s;
    endpoint *ep = a->ep;
    a->state = ATTEMPT_SENDING;
    a->sending = 1;
    ep->sending++;
    wh_secret keys[2];
    size_t nkeys = 0;
    if (wh_secret_parse(a->secret, &keys[0]) == 0)
        nkeys++;
    if (a->old_secret && a->old_until_ms > (int64_t)time(NULL) * 1000 &&
        wh_secret_parse(a->old_secret, &keys[nkeys]) == 0)
        nkeys++;
    char sig[2 * (WH_SIGNATURE_ENTRY_LEN + 1)];
    int64_t ts = (int64_t)time(NULL);
    int rc = nkeys ? wh_signature_sign(keys, nkeys, a->job.payload, ts, a->body, a->body_len, sig,
                                       sizeof sig)
                   : WH_ESECRET;
    for (size_t i = 0; i < nkeys; i++)
        wh_secret_clear(&keys[i]);
    if (rc != 0) {
        sd_log(SD_LOG_ERROR, "webhook.sign_failed", "endpoint=%s error=\"%s\"", ep->id,
               wh_strerror(rc));
        a->sending = 0;
        ep->sending--;
        attempt_release(a);
        return;
    }
    char h_id[300], h_ts[64], h_sig[sizeof sig + 32];
    snprintf(h_id, sizeof h_id, "webhook-id: %s", a->job.payload);
    snprintf(h_ts, sizeof h_ts, "webhook-timestamp: %lld", (long long)ts);
    snprintf(h_sig, sizeof h_sig, "webhook-signature: %s", sig);
    const char *headers[] = {"Content-Type: application/json", h_id, h_ts, h_sig, NULL};
    sd_http_request req = {.method = "POST",
                           .url = a->url,
                           .headers = headers,
                           .body = a->body,
                           .body_len = a->body_len,
                           .timeout_ms = (int)s->o.timeout_ms,
                           .connect_timeout_ms = (int)s->o.timeout_ms,
                           .max_response_bytes = 64 * 1024,
                           .max_redirects = 0};
    /* Invariant 3: the attempt ends (its deadline) well before its lease does. */
    if (s->o.timeout_ms + WH_LEASE_MARGIN_MS > s->visibility_ms)
        abort();
    rc = sd_http_client_request(s->client, &req, on_response, a);
    if (rc != 0) {
        a->sending = 0;
        ep->sending--;
        s->failed++;
        a->state = ATTEMPT_FAILING;
        snprintf(a->error, sizeof a->error, "%s", sd_strerror(rc));
        record_attempt(s, a, 0, a->error);
        jq_fail_opts fo = {.permanent = 0, .retry_after_ms = schedule_delay(s, a->job.attempts)};
        if (jq_afail(s->aq, ep->queue, &a->job, a->error, &fo, on_failed, a) != 0)
            attempt_free(a);
    }
}

/* A field of an HGETALL reply, copied, or NULL. */
static char *hfield_dup(const redisReply *h, const char *name) {
    const char *v = hfield(h, name);
    return v ? sd_xstrdup(v) : NULL;
}

static void attempt_read_done(attempt *a) {
    if (--a->reads == 0)
        attempt_send(a);
}

static void on_endpoint_read(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    attempt *a = privdata;
    if (status != 0 || reply->type != REDIS_REPLY_ARRAY)
        a->read_failed = 1;
    else {
        a->url = hfield_dup(reply, "url");
        a->secret = hfield_dup(reply, "secret");
        a->old_secret = hfield_dup(reply, "old_secret");
        a->ep_state = hfield_dup(reply, "state");
        const char *until = hfield(reply, "old_until_ms");
        a->old_until_ms = until ? atoll(until) : 0;
    }
    attempt_read_done(a);
}

static void on_body_read(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    attempt *a = privdata;
    if (status != 0 || reply->type == REDIS_REPLY_ERROR)
        a->read_failed = 1;
    else if (reply->type != REDIS_REPLY_STRING)
        a->body_gone = 1;
    else {
        a->body = sd_xmalloc(reply->len + 1);
        memcpy(a->body, reply->str, reply->len);
        a->body[reply->len] = '\0';
        a->body_len = reply->len;
    }
    attempt_read_done(a);
}

/* A reserved job becomes an attempt: read its endpoint and its message's bytes (two commands,
 * sent with every other attempt's of this loop iteration), then attempt_send. */
static void attempt_start(sender *s, endpoint *ep, jq_job *job) {
    attempt *a = sd_xcalloc(1, sizeof *a);
    a->s = s;
    a->ep = ep;
    a->job = *job; /* takes the payload */
    a->start_ms = sd_now_ms();
    a->lease_from_ms = ep->reserve_sent_ms;
    a->state = ATTEMPT_READING;
    a->holds_slot = 1;
    ep->inflight++;
    s->inflight++;
    a->reads = 1; /* held until both are sent, so a reply cannot end the reading early */
    if (sd_aredis_command(s->ar, on_endpoint_read, a, 0, "HGETALL " KP "ep:%s", ep->id) == 0)
        a->reads++;
    else
        a->read_failed = 1;
    if (!a->read_failed &&
        sd_aredis_command(s->ar, on_body_read, a, 0, "HGET " KP "msg:%s body", a->job.payload) == 0)
        a->reads++;
    else
        a->read_failed = 1;
    attempt_read_done(a);
}

static void on_reserved(jq_aclient *c, int status, jq_job *jobs, size_t n, int64_t next_ms,
                        void *arg) {
    endpoint *ep = arg;
    sender *s = ep->s;
    ep->reserving = 0;
    ep->drained = status == 0 && n < (size_t)ep->asked;
    if (status != 0) {
        ep->again = 0; /* Redis failed: the next tick tries again, not a loop of failures */
        sd_log(SD_LOG_DEBUG, "webhook.reserve_failed", "endpoint=%s error=\"%s\"", ep->id,
               jq_strerror(status));
    }
    for (size_t i = 0; i < n; i++) {
        if (s->stopping) {
            attempt *a = sd_xcalloc(1, sizeof *a);
            a->s = s;
            a->ep = ep;
            a->job = jobs[i];
            s->inflight++;
            attempt_release(a);
            continue;
        }
        attempt_start(s, ep, &jobs[i]);
    }
    /* A full batch says more may wait, and a fill asked for meanwhile (a kick after an enqueue)
     * may be for a job this reserve came too early to see: ask again now, not at the next tick. */
    if ((size_t)ep->asked == n || ep->again) {
        ep->again = 0;
        endpoint_fill(s, ep, sd_now_ms());
    }
    sender_maybe_finish(s);
}

/* The endpoint's delivery queue: "wh1.ep.<id>". */
static void endpoint_queue_name(const char *id, char *queue, size_t len) {
    snprintf(queue, len, "wh1.ep.%s", id);
}

static endpoint *endpoint_find_or_add(sender *s, const char *id) {
    for (size_t k = 0; k < s->neps; k++)
        if (strcmp(s->eps[k]->id, id) == 0)
            return s->eps[k];
    if (!id_valid(id))
        return NULL;
    if (s->neps == s->caps) {
        s->caps = s->caps ? 2 * s->caps : 16;
        s->eps = sd_xrealloc(s->eps, s->caps * sizeof *s->eps);
    }
    endpoint *ep = sd_xcalloc(1, sizeof *ep);
    ep->s = s;
    snprintf(ep->id, sizeof ep->id, "%s", id);
    endpoint_queue_name(id, ep->queue, sizeof ep->queue);
    s->eps[s->neps++] = ep;
    return ep;
}

static void on_endpoints_read(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    sender *s = privdata;
    s->refreshing = 0;
    if (status == 0 && reply->type == REDIS_REPLY_ARRAY) {
        /* An endpoint no longer listed was deleted: it is not read from again (it stays in the
         * array, as attempts may still point at it). */
        for (size_t i = 0; i < s->neps; i++)
            s->eps[i]->disabled = 1;
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            if (reply->element[i]->type != REDIS_REPLY_STRING ||
                reply->element[i + 1]->type != REDIS_REPLY_STRING)
                continue;
            endpoint *ep = endpoint_find_or_add(s, reply->element[i]->str);
            if (ep)
                ep->disabled = strcmp(reply->element[i + 1]->str, "enabled") != 0;
        }
        uint64_t now = sd_now_ms();
        for (size_t i = 0; i < s->neps; i++)
            endpoint_fill(s, s->eps[i], now);
    }
    sender_maybe_finish(s);
}

static sd_script endpoints_script = {"webhook/endpoints", NULL, 0, ""};
static sd_script message_script = {"webhook/message", NULL, 0, ""};
static sd_script endpoint_delete_script = {"webhook/endpoint-delete", NULL, 0, ""};

/* Reads the endpoint list and states (every --poll-ms but at most every WH_REFRESH_MS, and at
 * once after an endpoint is added or enabled through this process), one call in flight. */
static void endpoints_refresh(sender *s) {
    if (s->refreshing)
        return;
    const char *argv[] = {KP};
    size_t lens[] = {strlen(KP)};
    if (sd_aredis_script(s->ar, &endpoints_script, on_endpoints_read, s, 0, 1, 1, argv, lens) == 0)
        s->refreshing = 1;
}

/* Reserves as many of the endpoint's jobs as it has free slots (invariant 4), unless it is
 * disabled, its breaker is open, or a reserve is already on its way. Runs on every tick, after
 * each of its enqueues here, and whenever one of its slots frees, so a busy endpoint's next job
 * does not wait for a tick; but not on a freed slot when its last reserve found the queue
 * empty (drained): that reserve, one per delivery at a steady rate, found nothing but cost Redis
 * a script. */
static void endpoint_fill(sender *s, endpoint *ep, uint64_t now) {
    int free_ep = WH_PREFETCH * (int)s->o.endpoint_concurrency - ep->inflight;
    int free_all = (int)s->o.concurrency - s->inflight;
    int n = free_ep < free_all ? free_ep : free_all;
    if (ep->reserving) { /* it may have been sent before the job that this fill is for */
        ep->again = 1;
        return;
    }
    if (s->stopping || !s->deliver || ep->disabled || n <= 0)
        return;
    if (ep->open_until_ms > now || ep->pause_until_ms > now)
        return;
    if (ep->open_until_ms) /* half open: one probe at a time until one succeeds */
        n = ep->inflight ? 0 : 1;
    if (n <= 0)
        return;
    if (jq_areserve(s->aq, ep->queue, n, s->visibility_ms, on_reserved, ep) == 0) {
        ep->reserving = 1;
        ep->asked = n;
        ep->reserve_sent_ms = now;
    }
}

/* ---- Parking ----
 *
 * A message for a backlogged endpoint (endpoint_backlogged: a black hole whose request slots
 * are all taken, a breaker open, a disabled endpoint) is parked rather than enqueued: the
 * message's own script (wh-message.lua) adds its id to the endpoint's ep:<id>:parked zset, so
 * the post is answered once the message is stored, in one round trip, without waiting for that
 * endpoint's enqueue. One job-queue script per message for a black hole, run between a healthy
 * endpoint's enqueue and its reserve, and the post answers that came together when those
 * enqueues were held and sent in bulk, were what a healthy endpoint paid for sharing its
 * messages with a black hole (isolation; webhook/README.md).
 *
 * The mover then takes each endpoint's parked ids every WH_PARK_MS, up to WH_PARK_BATCH at a
 * time, once the endpoint could start one of them (endpoint_takes_more), enqueues them in one
 * script (the message id is the job's idempotency key, as for any enqueue of the sender) and
 * removes exactly those ids from the zset once they are jobs. A crash between the two leaves them
 * parked, and moving them again makes no second job; two processes moving the same ids make one job
 * per id between them, and neither removes an id the other has not enqueued. Every process with
 * workers also looks at every endpoint's zset every WH_PARK_SWEEP_MS, which moves what a process
 * that stopped or died had parked.
 *
 * While the endpoint cannot start them, parked ids stay where they are: moved into a queue that
 * no slot can drain, a black hole's messages would cost Redis one job-queue script per batch
 * every WH_PARK_MS, and those scripts, run between a healthy endpoint's enqueues and reserves,
 * were most of what the hole still cost it. A disabled endpoint keeps its messages there until
 * it is enabled; a deleted one (disabled here) is never read again. */

static void on_park(uv_timer_t *t);

/* Whether a job moved to the endpoint's queue now could start soon: enabled, no Retry-After
 * pause, the breaker closed with a request slot free, or half open with no probe out. */
static int endpoint_takes_more(const sender *s, const endpoint *ep, uint64_t now) {
    if (ep->disabled || ep->open_until_ms > now || ep->pause_until_ms > now)
        return 0;
    if (ep->open_until_ms)
        return ep->inflight == 0;
    return ep->sending < (int)s->o.endpoint_concurrency;
}

static void park_schedule(sender *s) {
    if (!s->stopping && !uv_is_active((uv_handle_t *)&s->park) &&
        !uv_is_closing((uv_handle_t *)&s->park))
        uv_timer_start(&s->park, on_park, WH_PARK_MS, 0);
}

typedef struct park_move {
    endpoint *ep;
    unsigned gen; /* ep->park_gen when the ids were read */
    size_t n;
    char **ids;
} park_move;

static void park_move_end(park_move *m) {
    sender *s = m->ep->s;
    m->ep->moving = 0;
    s->moves--;
    for (size_t i = 0; i < m->n; i++)
        free(m->ids[i]);
    free(m->ids);
    free(m);
    sender_maybe_finish(s);
}

static void on_park_enqueued(jq_aclient *c, int status, const jq_enqueued *out, size_t n,
                             void *arg) {
    park_move *m = arg;
    endpoint *ep = m->ep;
    sender *s = ep->s;
    if (status == 0) {
        /* They are jobs now: exactly these ids leave the zset. */
        char key[96];
        snprintf(key, sizeof key, KP "ep:%s:parked", ep->id);
        const char **argv = sd_xcalloc(m->n + 2, sizeof *argv);
        size_t *lens = sd_xcalloc(m->n + 2, sizeof *lens);
        argv[0] = "ZREM";
        argv[1] = key;
        for (size_t i = 0; i < m->n; i++)
            argv[i + 2] = m->ids[i];
        for (size_t i = 0; i < m->n + 2; i++)
            lens[i] = strlen(argv[i]);
        if (sd_aredis_commandv(s->ar, on_record, s, 0, (int)m->n + 2, argv, lens) == 0)
            s->records++;
        free(argv);
        free(lens);
        ep->drained = 0;
        endpoint_fill(s, ep, sd_now_ms());
    }
    park_move_end(m);
}

static void on_parked_read(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    park_move *m = privdata;
    endpoint *ep = m->ep;
    sender *s = ep->s;
    if (status != 0 || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        /* Empty: nothing more to move, unless this process parked one since the read. */
        if (status == 0 && reply->type == REDIS_REPLY_ARRAY && ep->park_gen == m->gen)
            ep->parked = 0;
        park_move_end(m);
        return;
    }
    m->ids = sd_xcalloc(reply->elements, sizeof *m->ids);
    jq_new_job *jobs = sd_xcalloc(reply->elements, sizeof *jobs);
    jq_enqueue_opts *opts = sd_xcalloc(reply->elements, sizeof *opts);
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        char *id = m->ids[m->n] = sd_xstrdup(e->str);
        jq_enqueue_opts_default(&opts[m->n]);
        opts[m->n].max_attempts = s->nschedule + 2; /* as message_enqueue's jobs */
        opts[m->n].idempotency_key = id;
        jobs[m->n] = (jq_new_job){.payload = id, .len = strlen(id), .opts = &opts[m->n]};
        m->n++;
    }
    int rc = m->n > 0 ? jq_aenqueue_many(s->aq, ep->queue, jobs, m->n, on_park_enqueued, m) : -1;
    free(jobs);
    free(opts);
    if (rc != 0)
        park_move_end(m);
}

/* Every WH_PARK_MS while some enabled endpoint may have parked messages: one move per such
 * endpoint that can take them, one at a time each. A deleted or disabled endpoint keeps no timer
 * running: the once-a-second sweep (on_tick) marks it again after it is enabled. */
static void on_park(uv_timer_t *t) {
    sender *s = t->data;
    uint64_t now = sd_now_ms();
    int more = 0;
    for (size_t i = 0; i < s->neps; i++) {
        endpoint *ep = s->eps[i];
        if (!ep->parked || ep->disabled) /* once it is enabled, the next sweep looks */
            continue;
        more = 1;
        if (ep->moving || !endpoint_takes_more(s, ep, now))
            continue;
        park_move *m = sd_xcalloc(1, sizeof *m);
        m->ep = ep;
        m->gen = ep->park_gen;
        if (sd_aredis_command(s->ar, on_parked_read, m, 0, "ZRANGE " KP "ep:%s:parked 0 %d", ep->id,
                              WH_PARK_BATCH - 1) == 0) {
            ep->moving = 1;
            s->moves++;
        } else {
            free(m);
        }
    }
    if (more)
        park_schedule(s);
}

static void on_tick(uv_timer_t *t) {
    sender *s = t->data;
    if (s->stopping)
        return;
    uint64_t now = sd_now_ms();
    uint64_t every = s->o.poll_ms > WH_REFRESH_MS ? (uint64_t)s->o.poll_ms : WH_REFRESH_MS;
    if (now - s->last_refresh_ms >= every) {
        endpoints_refresh(s);
        s->last_refresh_ms = now;
    }
    /* Messages another process parked and did not move (it stopped or died) are moved here. */
    int sweep = now - s->last_park_sweep_ms >= WH_PARK_SWEEP_MS;
    if (sweep)
        s->last_park_sweep_ms = now;
    for (size_t i = 0; i < s->neps; i++) {
        s->eps[i]->drained = 0; /* jobs from other processes, retries come due */
        endpoint_fill(s, s->eps[i], now);
        if (sweep) {
            s->eps[i]->parked = 1;
            park_schedule(s);
        }
    }
}

/* Makes the workers look at the queues now: after an enqueue in this process, and with
 * refresh set after an endpoint was added or enabled here (its state is read first). */
static void workers_kick(sender *s, int refresh) {
    if (!s->deliver || s->stopping)
        return;
    if (refresh)
        s->last_refresh_ms = 0;
    uv_timer_start(&s->tick, on_tick, 0, (uint64_t)s->o.poll_ms);
}

/* ---- the API ----
 *
 * No management handler waits for Redis either: each sends its commands on the API's own
 * asynchronous connections (s->api_ar, s->api_aq) and answers from the last reply, holding its
 * sd_http_req until then (http.h: a request stays valid until it is answered, and the answer
 * to a client that went away, or to a request a stopping server detached, is dropped). What a
 * request needs between its replies is an api_call, counted in s->api_calls until it is freed:
 * a stop frees the connections only once none is left (sender_maybe_finish), so every step of
 * a call runs on a live connection and a live sender, and every request gets its one answer. A
 * step that cannot be sent (Redis down) answers 503 at once, as a failed reply does. */

typedef enum api_kind { API_GET, API_ENABLE, API_ROTATE } api_kind;

typedef struct api_call {
    sender *s;
    sd_http_req *req;
    api_kind kind;
    char id[64];                     /* the endpoint, message or dead letter of the path */
    char key[80];                    /* a create: the new endpoint's hash */
    char secret[WH_SECRET_TEXT_MAX]; /* a create or a rotation: the secret answered */
    json_t *dead;                    /* a replay: the dead letter */
    json_t *out, *att, *eps;         /* a message's read: its parts, as their replies come */
    int pending;                     /* a message's read: replies still due */
    int failed, missing;
} api_call;

static api_call *api_call_new(sender *s, sd_http_req *req) {
    api_call *c = sd_xcalloc(1, sizeof *c);
    c->s = s;
    c->req = req;
    s->api_calls++;
    return c;
}

/* Frees the call; its request has been answered. */
static void api_call_free(api_call *c) {
    sender *s = c->s;
    json_decref(c->dead);
    json_decref(c->out);
    json_decref(c->att);
    json_decref(c->eps);
    OPENSSL_cleanse(c->secret, sizeof c->secret);
    free(c);
    s->api_calls--;
    sender_maybe_finish(s);
}

static void api_call_problem(api_call *c, int status, const char *title, const char *detail) {
    problem(c->req, status, title, detail);
    api_call_free(c);
}

static void api_call_down(api_call *c) {
    redis_down(c->req);
    api_call_free(c);
}

static void api_call_json(api_call *c, int status, json_t *body) {
    sd_http_req_respond_json(c->req, status, body);
    api_call_free(c);
}

/* Whether a reply came and is not an error (which is logged, as a failure). */
static int reply_ok(const redisReply *reply, int status) {
    if (status != 0)
        return 0;
    if (reply->type == REDIS_REPLY_ERROR) {
        sd_log(SD_LOG_WARN, "webhook.redis_error", "error=\"%s\"", reply->str);
        return 0;
    }
    return 1;
}

/* POST /v1/endpoints: HSET of its hash, then SADD to the list (a failed SADD deletes the hash
 * again before the 503). */
static void on_endpoint_undone(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call_down(privdata);
}

static void endpoint_create_fail(api_call *c) {
    if (sd_aredis_command(c->s->api_ar, on_endpoint_undone, c, 0, "DEL %s", c->key) != 0)
        api_call_down(c);
}

static void on_endpoint_listed(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    sender *s = c->s;
    if (!reply_ok(reply, status)) {
        endpoint_create_fail(c);
        return;
    }
    sd_log(SD_LOG_INFO, "webhook.endpoint_created", "endpoint=%s", c->id);
    char loc[80];
    snprintf(loc, sizeof loc, "/v1/endpoints/%s", c->id);
    sd_http_req_add_header(c->req, "Location", loc);
    api_call_json(c, 201, json_pack("{s:s, s:s}", "id", c->id, "secret", c->secret));
    workers_kick(s, 1);
}

static void on_endpoint_stored(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    int ok = reply_ok(reply, status) && reply->type == REDIS_REPLY_INTEGER;
    if (!ok ||
        sd_aredis_command(c->s->api_ar, on_endpoint_listed, c, 0, "SADD " KP "eps %s", c->id) != 0)
        endpoint_create_fail(c);
}

static void on_endpoint_create(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    json_error_t jerr;
    json_t *in = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(in)) {
        problem(req, 400, "Bad request", "the body must be a JSON object");
        json_decref(in);
        return;
    }
    const char *url = json_string_value(json_object_get(in, "url"));
    json_t *secret_j = json_object_get(in, "secret"), *types = json_object_get(in, "event_types");
    sd_addr_url parsed;
    sd_addr_verdict v = url ? sd_addr_url_check(url, &s->addr, &parsed) : SD_ADDR_URL_SCHEME;
    wh_secret tmp;
    const char *bad = NULL;
    if (!url)
        bad = "\"url\" is required (a string)";
    else if (v != SD_ADDR_OK)
        bad = sd_addr_reason(v);
    else if (secret_j &&
             (!json_is_string(secret_j) || wh_secret_parse(json_string_value(secret_j), &tmp) != 0))
        bad = "\"secret\" must be whsec_ and the base64 of 24 to 64 bytes";
    else if (types && !json_is_array(types))
        bad = "\"event_types\" must be an array of strings";
    char *types_text = sd_xstrdup(",");
    size_t i;
    json_t *t;
    json_array_foreach(types, i, t) {
        const char *tv = json_string_value(t);
        if (!tv || !*tv || strlen(tv) > 128 || strchr(tv, ',')) {
            bad = "\"event_types\" must be an array of strings";
            break;
        }
        char *n = sd_xasprintf("%s%s,", types_text, tv);
        free(types_text);
        types_text = n;
    }
    wh_secret_clear(&tmp);
    if (bad) {
        problem(req, 422, "Invalid endpoint", bad);
        json_decref(in);
        free(types_text);
        return;
    }
    api_call *c = api_call_new(s, req);
    if (secret_j)
        snprintf(c->secret, sizeof c->secret, "%s", json_string_value(secret_j));
    else if (wh_secret_generate(32, c->secret, sizeof c->secret) != 0) {
        json_decref(in);
        free(types_text);
        api_call_problem(c, 500, "No randomness", NULL);
        return;
    }
    random_id("ep_", c->id, sizeof c->id);
    snprintf(c->key, sizeof c->key, KP "ep:%s", c->id);
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)wall_ms());
    const char *argv[] = {"HSET",   c->key,    "url",         url,
                          "secret", c->secret, "event_types", types ? types_text : "*",
                          "state",  "enabled", "created_ms",  now};
    size_t lens[12];
    for (int k = 0; k < 12; k++)
        lens[k] = strlen(argv[k]);
    int rc = sd_aredis_commandv(s->api_ar, on_endpoint_stored, c, 0, 12, argv, lens);
    json_decref(in);
    free(types_text);
    if (rc != 0)
        api_call_down(c);
}

/* GET /v1/endpoints/{id}, POST .../enable and POST .../rotate-secret: the hash is read (a
 * deleted endpoint is 404), then the enable or the rotation writes it. */
static void on_endpoint_enabled(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    sender *s = c->s;
    api_call_json(c, 200, json_pack("{s:s, s:s}", "id", c->id, "state", "enabled"));
    workers_kick(s, 1);
}

static void on_endpoint_enable(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(reply, status)) {
        api_call_down(c);
        return;
    }
    if (sd_aredis_command(c->s->api_ar, on_endpoint_enabled, c, 0,
                          "HDEL " KP "ep:%s disabled_reason", c->id) != 0)
        on_endpoint_enabled(r, NULL, SD_EDISCONNECTED, c);
}

static void on_secret_rotated(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(reply, status)) {
        api_call_down(c);
        return;
    }
    api_call_json(c, 200, json_pack("{s:s}", "secret", c->secret));
}

static void endpoint_rotate(api_call *c, const redisReply *e) {
    size_t len;
    const char *body = sd_http_req_body(c->req, &len);
    json_t *in = len ? json_loadb(body, len, 0, NULL) : json_object();
    long long grace = 86400;
    json_t *g = json_object_get(in, "grace_seconds");
    if (!json_is_object(in) || (g && (!json_is_integer(g) || json_integer_value(g) < 0 ||
                                      json_integer_value(g) > 7 * 86400))) {
        json_decref(in);
        api_call_problem(c, 422, "Invalid rotation", "\"grace_seconds\" must be 0 to 604800");
        return;
    }
    if (g)
        grace = json_integer_value(g);
    json_decref(in);
    if (wh_secret_generate(32, c->secret, sizeof c->secret) != 0) {
        api_call_problem(c, 500, "No randomness", NULL);
        return;
    }
    const char *old = hfield(e, "secret");
    if (sd_aredis_command(c->s->api_ar, on_secret_rotated, c, 0,
                          "HSET " KP "ep:%s secret %s old_secret %s old_until_ms %llu", c->id,
                          c->secret, old ? old : "",
                          (unsigned long long)time(NULL) * 1000ULL +
                              (unsigned long long)grace * 1000) != 0)
        api_call_down(c);
}

static void endpoint_describe(api_call *c, const redisReply *e) {
    long long ok = atoll(hfield(e, "ok") ? hfield(e, "ok") : "0");
    long long failed = atoll(hfield(e, "failed") ? hfield(e, "failed") : "0");
    json_t *out =
        json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "id", c->id, "url", hfield(e, "url"), "state",
                  hfield(e, "state"), "delivered", (json_int_t)ok, "failed", (json_int_t)failed,
                  "failures_in_a_row",
                  (json_int_t)atoll(hfield(e, "failures_row") ? hfield(e, "failures_row") : "0"));
    json_object_set_new(out, "success_rate",
                        ok + failed ? json_real((double)ok / (double)(ok + failed)) : json_null());
    if (hfield(e, "disabled_reason"))
        json_object_set_new(out, "disabled_reason", json_string(hfield(e, "disabled_reason")));
    const char *types = hfield(e, "event_types");
    if (types && strcmp(types, "*") != 0) {
        json_t *arr = json_array();
        char *copy = sd_xstrdup(types), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
            json_array_append_new(arr, json_string(t));
        free(copy);
        json_object_set_new(out, "event_types", arr);
    }
    api_call_json(c, 200, out);
}

static void on_endpoint_read_api(sd_aredis *r, redisReply *e, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(e, status)) {
        api_call_down(c);
        return;
    }
    const char *state = hfield(e, "state");
    if (e->elements == 0 || !state || strcmp(state, "deleted") == 0) {
        api_call_problem(c, 404, "Not found", "no such endpoint");
        return;
    }
    if (c->kind == API_ENABLE) { /* its queued messages are delivered again */
        if (sd_aredis_command(c->s->api_ar, on_endpoint_enable, c, 0,
                              "HSET " KP "ep:%s state enabled failures_row 0", c->id) != 0)
            api_call_down(c);
    } else if (c->kind == API_ROTATE)
        endpoint_rotate(c, e);
    else
        endpoint_describe(c, e);
}

static void on_endpoint(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    char id[64];
    const char *rest = sd_http_req_path(req) + strlen("/v1/endpoints/");
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    snprintf(id, sizeof id, "%.*s", (int)(n < 63 ? n : 63), rest);
    int get = strcmp(sd_http_req_method(req), "GET") == 0;
    int rotate = !get && slash && strcmp(slash, "/rotate-secret") == 0;
    int enable = !get && slash && strcmp(slash, "/enable") == 0;
    if (!id_valid(id) || n > 39 || (get && slash) || (!get && !rotate && !enable)) {
        problem(req, 404, "Not found", NULL);
        return;
    }
    api_call *c = api_call_new(s, req);
    c->kind = enable ? API_ENABLE : rotate ? API_ROTATE : API_GET;
    snprintf(c->id, sizeof c->id, "%s", id);
    if (sd_aredis_command(s->api_ar, on_endpoint_read_api, c, 0, "HGETALL " KP "ep:%s", id) != 0)
        api_call_down(c);
}

/* POST /v1/messages, without waiting on the loop: wh-message.lua stores the message and names
 * the endpoints it fans out to (one round trip), then the post's enqueues (one per endpoint)
 * join those of the other posts of this loop iteration, and on_flush sends each queue's in one
 * script (jq_aenqueue_many; each endpoint's queue is its own slot). The answer is sent when the
 * post's last enqueue is back. */
typedef struct message_post {
    sender *s;
    sd_idem_call *call;
    char id[40];
    size_t ntargets;
    size_t pending; /* enqueues not yet answered */
    int failed;
    int kick; /* an enqueue went to a queue whose workers were not told (workers_kick) */
} message_post;

/* One endpoint's enqueue of a post. */
typedef struct message_enqueue {
    message_post *p;
    int retried;
} message_enqueue;

/* The enqueues waiting for the next flush, of one queue. */
typedef struct enqueue_list {
    char queue[64];
    message_enqueue **items;
    size_t n, cap;
    int held; /* held back by one flush: its endpoint is backlogged (enqueues_flush) */
} enqueue_list;

/* A batch in flight. */
typedef struct enqueue_batch {
    size_t n;
    message_enqueue *e[];
} enqueue_batch;

#define WH_ENQUEUE_BATCH 500

static void message_post_end(message_post *p) {
    sender *s = p->s;
    if (p->failed)
        sd_idem_call_respond_problem(p->call, 503, "about:blank", "Redis unavailable",
                                     "the message may be partly fanned out; retry with the same "
                                     "Idempotency-Key",
                                     NULL);
    else {
        sd_idem_call_respond_json(
            p->call, 202,
            json_pack("{s:s, s:I}", "id", p->id, "endpoints", (json_int_t)p->ntargets));
        if (p->kick)
            workers_kick(s, 0);
    }
    free(p);
}

static void enqueue_later(sender *s, const char *queue, message_enqueue *e) {
    enqueue_list *l = NULL;
    for (size_t i = 0; i < s->nenq && !l; i++)
        if (strcmp(s->enq[i].queue, queue) == 0)
            l = &s->enq[i];
    if (!l) {
        s->enq = sd_xrealloc(s->enq, (s->nenq + 1) * sizeof *s->enq);
        l = &s->enq[s->nenq++];
        memset(l, 0, sizeof *l);
        snprintf(l->queue, sizeof l->queue, "%s", queue);
    }
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->items = sd_xrealloc(l->items, l->cap * sizeof *l->items);
    }
    l->items[l->n++] = e;
    flush_schedule(s);
}

/* One enqueue has its answer (status 0 or the batch's error). */
static void enqueue_done(message_enqueue *e, int status) {
    message_post *p = e->p;
    if (status != 0)
        p->failed = 1;
    free(e);
    if (--p->pending == 0)
        message_post_end(p);
}

typedef struct enqueue_ctx {
    sender *s;
    char queue[64];
    enqueue_batch *b;
} enqueue_ctx;

static endpoint *endpoint_by_queue(sender *s, const char *queue) {
    for (size_t i = 0; i < s->neps; i++)
        if (strcmp(s->eps[i]->queue, queue) == 0)
            return s->eps[i];
    return NULL;
}

static void on_enqueued(jq_aclient *c, int status, const jq_enqueued *out, size_t n, void *arg) {
    enqueue_ctx *x = arg;
    sender *s = x->s;
    /* The queue's endpoint, when this process's workers know it, reserves now: the moment its
     * jobs are in, without waiting for the other enqueues of the same messages (a black hole's
     * among them) to be answered, nor for a tick. An endpoint not known here yet is for a kick
     * once the post is answered (it also reads the endpoint list when due). */
    endpoint *ep = status == 0 && s->deliver ? endpoint_by_queue(s, x->queue) : NULL;
    for (size_t i = 0; i < x->b->n; i++) {
        message_enqueue *e = x->b->e[i];
        /* The message id is the job's idempotency key: sending it again makes no second job. */
        if ((status == SD_EDISCONNECTED || status == SD_ETIMEDOUT) && !e->retried) {
            e->retried = 1;
            enqueue_later(s, x->queue, e);
            continue;
        }
        if (!ep)
            e->p->kick = 1;
        enqueue_done(e, status); /* may free e->p */
    }
    if (ep && !s->stopping) {
        ep->drained = 0;
        endpoint_fill(s, ep, sd_now_ms());
    }
    free(x->b);
    free(x);
}

/* An endpoint whose new jobs would wait anyway: every request slot taken (a black hole's are,
 * until its timeouts), its breaker open or half open (one probe at a time), or disabled. */
static int endpoint_backlogged(const sender *s, const endpoint *ep) {
    return ep->disabled || ep->open_until_ms != 0 || ep->sending >= (int)s->o.endpoint_concurrency;
}

/* Sends every waiting enqueue, one script per queue (WH_ENQUEUE_BATCH jobs at most each). The
 * enqueues of a backlogged endpoint wait for the next flush (the next loop iteration): sent in
 * the same write, Redis would run them before it answers the others, and a healthy endpoint's
 * jobs would start that much later because a black hole shares its messages (isolation). */
static void enqueues_flush(sender *s) {
    int held = 0;
    for (size_t i = 0; i < s->nenq; i++) {
        enqueue_list *l = &s->enq[i];
        endpoint *ep = l->n > 0 && !l->held && s->deliver ? endpoint_by_queue(s, l->queue) : NULL;
        if (ep && endpoint_backlogged(s, ep)) {
            l->held = 1;
            held = 1;
            continue;
        }
        l->held = 0;
        while (l->n > 0) {
            size_t k = l->n > WH_ENQUEUE_BATCH ? WH_ENQUEUE_BATCH : l->n;
            enqueue_ctx *x = sd_xcalloc(1, sizeof *x);
            x->s = s;
            snprintf(x->queue, sizeof x->queue, "%s", l->queue);
            x->b = sd_xmalloc(sizeof *x->b + k * sizeof x->b->e[0]);
            x->b->n = k;
            jq_new_job *jobs = sd_xcalloc(k, sizeof *jobs);
            jq_enqueue_opts *opts = sd_xcalloc(k, sizeof *opts);
            for (size_t j = 0; j < k; j++) {
                message_enqueue *e = l->items[j];
                x->b->e[j] = e;
                jq_enqueue_opts_default(&opts[j]);
                opts[j].max_attempts = s->nschedule + 2; /* a spare for a worker that died */
                opts[j].idempotency_key = e->p->id;
                jobs[j] =
                    (jq_new_job){.payload = e->p->id, .len = strlen(e->p->id), .opts = &opts[j]};
            }
            l->n -= k;
            memmove(l->items, l->items + k, l->n * sizeof *l->items);
            int rc = jq_aenqueue_many(s->api_aq, x->queue, jobs, k, on_enqueued, x);
            free(jobs);
            free(opts);
            if (rc != 0) {
                for (size_t j = 0; j < k; j++)
                    enqueue_done(x->b->e[j], rc);
                free(x->b);
                free(x);
            }
        }
    }
    if (held)
        flush_schedule(s);
}

static void on_message_stored(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    message_post *p = privdata;
    if (status != 0 || reply->type != REDIS_REPLY_ARRAY) {
        if (status == 0 && reply->type == REDIS_REPLY_ERROR)
            sd_log(SD_LOG_WARN, "webhook.redis_error", "error=\"%s\"", reply->str);
        p->failed = 1;
        message_post_end(p);
        return;
    }
    /* {endpoints to enqueue it for, endpoints it was parked for} */
    const redisReply *parked = reply->elements == 2 ? reply->element[1] : NULL;
    if (parked && parked->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < parked->elements; i++) {
            const redisReply *t = parked->element[i];
            if (t->type != REDIS_REPLY_STRING || !id_valid(t->str))
                continue;
            p->ntargets++;
            endpoint *ep = endpoint_find_or_add(p->s, t->str);
            if (ep) {
                ep->parked = 1;
                ep->park_gen++;
                park_schedule(p->s);
            }
        }
    reply = reply->elements == 2 && reply->element[0]->type == REDIS_REPLY_ARRAY ? reply->element[0]
                                                                                 : NULL;
    p->pending = 1; /* held while sending, so that no answer ends the post early */
    for (size_t i = 0; reply && i < reply->elements; i++) {
        const redisReply *t = reply->element[i];
        if (t->type != REDIS_REPLY_STRING || !id_valid(t->str))
            continue;
        p->ntargets++;
        message_enqueue *e = sd_xcalloc(1, sizeof *e);
        e->p = p;
        char queue[64];
        endpoint_queue_name(t->str, queue, sizeof queue);
        p->pending++;
        enqueue_later(p->s, queue, e);
    }
    if (--p->pending == 0)
        message_post_end(p);
}

static void message_create(sd_idem_call *call, sd_http_req *req, void *udata) {
    sender *s = udata;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    json_t *in = json_loadb(body, len, 0, NULL);
    const char *type = json_string_value(json_object_get(in, "event_type"));
    json_t *payload = json_object_get(in, "payload");
    const char *bad = NULL;
    if (!json_is_object(in))
        bad = "the body must be a JSON object";
    else if (!type || !*type || strlen(type) > 128 || strchr(type, ','))
        bad = "\"event_type\" must be a string of 1 to 128 bytes without ','";
    else if (!payload)
        bad = "\"payload\" is required (any JSON value)";
    if (bad) {
        json_decref(in);
        sd_idem_call_respond_problem(call, 422, "about:blank", "Invalid message", bad, NULL);
        return;
    }
    /* The body every attempt sends: {"type","timestamp","data"}, serialised once, here. */
    char iso[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *msg = json_pack("{s:s, s:s, s:O}", "type", type, "timestamp", iso, "data", payload);
    char *text = json_dumps(msg, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(msg);
    message_post *p = sd_xcalloc(1, sizeof *p);
    p->s = s;
    p->call = call;
    random_id("msg_", p->id, sizeof p->id);
    char created[24], retention[16];
    snprintf(created, sizeof created, "%lld", (long long)wall_ms());
    snprintf(retention, sizeof retention, "%d", WH_RETENTION_S);
    /* Then the endpoints whose messages are parked rather than enqueued (Parking). */
    const char **argv = sd_xcalloc(6 + s->neps, sizeof *argv);
    size_t *lens = sd_xcalloc(6 + s->neps, sizeof *lens);
    int argc = 0;
    argv[argc++] = KP;
    argv[argc++] = p->id;
    argv[argc++] = type;
    argv[argc++] = text;
    argv[argc++] = created;
    argv[argc++] = retention;
    for (size_t i = 0; s->deliver && !s->stopping && i < s->neps; i++)
        if (endpoint_backlogged(s, s->eps[i]))
            argv[argc++] = s->eps[i]->id;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    int rc =
        sd_aredis_script(s->api_ar, &message_script, on_message_stored, p, 0, 1, argc, argv, lens);
    free(argv);
    free(lens);
    free(text);
    json_decref(in);
    if (rc != 0) {
        p->failed = 1;
        message_post_end(p);
    }
}

static void on_message_create(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    sd_idem_handle(s->idem, req, message_create, s);
}

/* GET /v1/messages/{id}: its hash, its attempts and its endpoints, three reads sent together;
 * the answer is built once the last reply is in. */
static void message_get_part_done(api_call *c) {
    if (--c->pending > 0)
        return;
    if (c->failed) {
        api_call_down(c);
        return;
    }
    if (c->missing) {
        api_call_problem(c, 404, "Not found", "no such message (or past its retention)");
        return;
    }
    json_t *out = c->out;
    c->out = NULL;
    json_object_set_new(out, "endpoints", c->eps);
    json_object_set_new(out, "attempts", c->att);
    c->eps = c->att = NULL;
    api_call_json(c, 200, out);
}

static void on_message_hash(sd_aredis *r, redisReply *m, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(m, status))
        c->failed = 1;
    else if (m->elements == 0)
        c->missing = 1;
    else {
        json_t *body = json_loads(hfield(m, "body"), 0, NULL);
        c->out = json_pack("{s:s, s:s, s:I}", "id", c->id, "event_type", hfield(m, "event_type"),
                           "created_ms", (json_int_t)atoll(hfield(m, "created_ms")));
        json_object_set_new(c->out, "payload", json_incref(json_object_get(body, "data")));
        json_decref(body);
    }
    message_get_part_done(c);
}

static void on_message_attempts(sd_aredis *r, redisReply *att, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(att, status))
        c->failed = 1;
    else {
        c->att = json_array();
        for (size_t i = 0; i < att->elements; i++) {
            json_t *a = json_loads(att->element[i]->str, 0, NULL);
            if (a)
                json_array_append_new(c->att, a);
        }
    }
    message_get_part_done(c);
}

static void on_message_endpoints(sd_aredis *r, redisReply *eps, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(eps, status))
        c->failed = 1;
    else {
        c->eps = json_array();
        for (size_t i = 0; i < eps->elements; i++)
            json_array_append_new(c->eps, json_string(eps->element[i]->str));
    }
    message_get_part_done(c);
}

static void on_message_get(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    const char *id = sd_http_req_path(req) + strlen("/v1/messages/");
    if (!id_valid(id)) {
        problem(req, 404, "Not found", NULL);
        return;
    }
    api_call *c = api_call_new(s, req);
    snprintf(c->id, sizeof c->id, "%s", id);
    c->pending = 1; /* held while sending, so that no reply ends the call early */
    if (sd_aredis_command(s->api_ar, on_message_hash, c, 0, "HGETALL " KP "msg:%s", id) == 0)
        c->pending++;
    else
        c->failed = 1;
    if (!c->failed && sd_aredis_command(s->api_ar, on_message_attempts, c, 0,
                                        "LRANGE " KP "att:%s 0 -1", id) == 0)
        c->pending++;
    else
        c->failed = 1;
    if (!c->failed && sd_aredis_command(s->api_ar, on_message_endpoints, c, 0,
                                        "SMEMBERS " KP "msg:%s:eps", id) == 0)
        c->pending++;
    else
        c->failed = 1;
    message_get_part_done(c);
}

/* ---- Deleting an endpoint ----
 *
 * DELETE /v1/endpoints/{id} takes the endpoint out in one script (wh-endpoint-delete.lua): it
 * leaves the set that the fan-out and the workers read, its hash says "deleted" (and expires in
 * a day), and its id joins KP "eps_deleted" (id -> ms of the deletion); the answer (204) goes
 * then. Its delivery queue is dropped next, up to WH_DROP_NOW jobs, one jq_adrop of WH_DROP_BATCH
 * jobs at a time (the drop keeps the queue's id counter), taking the queues of several deletions
 * in turn (drop_next): each batch is one script on the API's asynchronous job queue client, so
 * nothing in the process waits for it, and Redis serves the other clients between two batches.
 * --recheck-ms later (30 s by default) the drain timer of a `webhook serve` drops it again,
 * WH_DROP_BATCH jobs per endpoint every WH_DRAIN_MS, and the id leaves eps_deleted once the queue
 * is found empty: a fan-out or an attempt under way at the deletion (an enqueue, a release) may
 * still have added a job, and a backlog over WH_DROP_NOW is finished there. The list is in Redis,
 * so a process that dies mid-drop leaves the rest to the drain. Until the recheck is due the drain
 * drops nothing (one HGETALL a second). Workers stop reading the queue at their next endpoint
 * refresh; an attempt in flight ends as it would, and its ack or fail finds no job. */
#define WH_DROP_NOW 100000
#define WH_DROP_BATCH 1000
#define WH_DRAIN_MS 1000

/* A deleted endpoint's queue being dropped after its DELETE was answered. */
typedef struct queue_drop {
    char id[64];
    int64_t dropped; /* jobs so far */
} queue_drop;

static void drop_next(sender *s);

/* Takes the first queue out of the line: back at its end when go_on, else done (logged). */
static void drop_rotate(sender *s, int go_on, int failed) {
    queue_drop d = s->drops[0];
    s->ndrops--;
    memmove(s->drops, s->drops + 1, s->ndrops * sizeof *s->drops);
    if (go_on)
        s->drops[s->ndrops++] = d;
    else
        sd_log(SD_LOG_INFO, "webhook.endpoint_queue_dropped", "endpoint=%s jobs=%lld failed=%d",
               d.id, (long long)d.dropped, failed);
}

/* A queue is done once a batch leaves nothing (empty), once WH_DROP_NOW went, or when a batch
 * fails: the drain finishes what is left (the id stays in eps_deleted). Otherwise it goes back
 * to the end of the line. */
static void on_drop_step(jq_aclient *c, int status, int64_t removed, int more, void *arg) {
    sender *s = arg;
    s->dropping = 0;
    s->drops[0].dropped += removed;
    drop_rotate(s, status == 0 && more && s->drops[0].dropped < WH_DROP_NOW, status != 0);
    drop_next(s);
    sender_maybe_finish(s);
}

/* Sends the next batch of the first queue in line, one batch in flight at a time. A stop sends
 * no more (the drain drops the rest, in this process or another), and a batch that cannot be
 * sent ends that queue's turn like a failed one. */
static void drop_next(sender *s) {
    while (!s->dropping && s->ndrops > 0 && !s->stopping) {
        char queue[80];
        endpoint_queue_name(s->drops[0].id, queue, sizeof queue);
        if (jq_adrop(s->api_aq, queue, WH_DROP_BATCH, on_drop_step, s) == 0)
            s->dropping = 1;
        else
            drop_rotate(s, 0, 1);
    }
}

/* Starts dropping a deleted endpoint's queue (once, when the deletion is answered). */
static void endpoint_drop_start(sender *s, const char *id) {
    for (size_t i = 0; i < s->ndrops; i++)
        if (strcmp(s->drops[i].id, id) == 0)
            return;
    if (s->ndrops == s->drops_cap) {
        s->drops_cap = s->drops_cap ? 2 * s->drops_cap : 8;
        s->drops = sd_xrealloc(s->drops, s->drops_cap * sizeof *s->drops);
    }
    queue_drop *d = &s->drops[s->ndrops++];
    snprintf(d->id, sizeof d->id, "%s", id);
    d->dropped = 0;
    drop_next(s);
}

/* One batch of the drain, for one deleted endpoint. */
typedef struct drain_step {
    sender *s;
    char id[64];
} drain_step;

static void on_drain_step(jq_aclient *c, int status, int64_t removed, int more, void *arg) {
    drain_step *d = arg;
    sender *s = d->s;
    s->records--;
    if (status == 0 && removed == 0 && !s->stopping)
        record_send(s, "HDEL " KP "eps_deleted %s", d->id);
    if (removed > 0)
        sd_log(SD_LOG_INFO, "webhook.endpoint_drained", "endpoint=%s jobs=%lld", d->id,
               (long long)removed);
    free(d);
    sender_maybe_finish(s);
}

/* The list of deleted endpoints is read every second by every serve process (nearly always
 * empty); each entry past its recheck gets one batch. */
static void on_deleted_read(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    sender *s = privdata;
    s->records--;
    if (status == 0 && reply->type == REDIS_REPLY_ARRAY) {
        int64_t now = wall_ms();
        for (size_t i = 0; i + 1 < reply->elements && !s->stopping; i += 2) {
            const char *id = reply->element[i]->str;
            if (reply->element[i]->type != REDIS_REPLY_STRING || !id_valid(id))
                continue;
            if (now - atoll(reply->element[i + 1]->str) < s->o.recheck_ms)
                continue;
            drain_step *d = sd_xcalloc(1, sizeof *d);
            d->s = s;
            snprintf(d->id, sizeof d->id, "%s", id);
            char queue[64];
            endpoint_queue_name(id, queue, sizeof queue);
            if (jq_adrop(s->api_aq, queue, WH_DROP_BATCH, on_drain_step, d) == 0)
                s->records++;
            else
                free(d);
        }
    }
    sender_maybe_finish(s);
}

static void endpoints_drain(uv_timer_t *t) {
    sender *s = t->data;
    if (sd_aredis_command(s->ar, on_deleted_read, s, 0, "HGETALL " KP "eps_deleted") == 0)
        s->records++;
}

static void on_endpoint_deleted(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    sender *s = c->s;
    if (!reply_ok(reply, status) || reply->type != REDIS_REPLY_INTEGER) {
        api_call_down(c);
        return;
    }
    if (!reply->integer) {
        api_call_problem(c, 404, "Not found", "no such endpoint");
        return;
    }
    sd_log(SD_LOG_INFO, "webhook.endpoint_deleted", "endpoint=%s", c->id);
    s->last_refresh_ms = 0; /* this process's workers let go of it at their next tick */
    sd_http_req_respond(c->req, 204, NULL, NULL, 0);
    endpoint_drop_start(s, c->id);
    api_call_free(c);
}

static void on_endpoint_delete(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    const char *id = sd_http_req_path(req) + strlen("/v1/endpoints/");
    if (!id_valid(id) || strlen(id) > 39) {
        problem(req, 404, "Not found", NULL);
        return;
    }
    api_call *c = api_call_new(s, req);
    snprintf(c->id, sizeof c->id, "%s", id);
    const char *argv[] = {KP, id};
    size_t lens[] = {strlen(KP), strlen(id)};
    if (sd_aredis_script(s->api_ar, &endpoint_delete_script, on_endpoint_deleted, c, 0, 1, 2, argv,
                         lens) != 0)
        api_call_down(c);
}

static void on_dead_listed(sd_aredis *r, redisReply *d, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(d, status)) {
        api_call_down(c);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < d->elements; i++) {
        json_t *j = json_loads(d->element[i]->str, 0, NULL);
        if (j)
            json_array_append_new(arr, j);
    }
    api_call_json(c, 200, arr);
}

static void on_dead_list(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    api_call *c = api_call_new(s, req);
    if (sd_aredis_command(s->api_ar, on_dead_listed, c, 0, "HVALS " KP "dead") != 0)
        api_call_down(c);
}

/* POST /v1/dead-letters/{id}/replay: the dead letter is read, its endpoint checked (409 once
 * deleted), a new job enqueued for its message (on s->api_aq), and the dead letter removed. */
static const char *dead_field(const api_call *c, const char *name) {
    return json_string_value(json_object_get(c->dead, name));
}

static void on_dead_replayed(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    api_call *c = privdata;
    sender *s = c->s;
    api_call_json(c, 202,
                  json_pack("{s:s, s:s}", "id", dead_field(c, "message_id"), "endpoint_id",
                            dead_field(c, "endpoint_id")));
    workers_kick(s, 0);
}

static void on_dead_requeued(jq_aclient *q, int status, const jq_enqueued *out, size_t n,
                             void *arg) {
    api_call *c = arg;
    if (status != 0) {
        api_call_down(c);
        return;
    }
    if (sd_aredis_command(c->s->api_ar, on_dead_replayed, c, 0, "HDEL " KP "dead %s", c->id) != 0)
        on_dead_replayed(NULL, NULL, SD_EDISCONNECTED, c);
}

static void on_dead_endpoint_read(sd_aredis *r, redisReply *live, int status, void *privdata) {
    api_call *c = privdata;
    sender *s = c->s;
    if (!reply_ok(live, status)) {
        api_call_down(c);
        return;
    }
    if (live->type == REDIS_REPLY_INTEGER && live->integer == 0) {
        api_call_problem(c, 409, "Endpoint deleted", "the dead letter's endpoint was deleted");
        return;
    }
    const char *msg = dead_field(c, "message_id");
    char queue[64];
    endpoint_queue_name(dead_field(c, "endpoint_id"), queue, sizeof queue);
    jq_enqueue_opts eo;
    jq_enqueue_opts_default(&eo);
    eo.max_attempts = s->nschedule + 2;
    jq_new_job job = {.payload = msg, .len = strlen(msg), .opts = &eo};
    if (jq_aenqueue_many(s->api_aq, queue, &job, 1, on_dead_requeued, c) != 0)
        api_call_down(c);
}

static void on_dead_read(sd_aredis *r, redisReply *d, int status, void *privdata) {
    api_call *c = privdata;
    if (!reply_ok(d, status)) {
        api_call_down(c);
        return;
    }
    c->dead = d->type == REDIS_REPLY_STRING ? json_loads(d->str, 0, NULL) : NULL;
    const char *ep = dead_field(c, "endpoint_id");
    if (!dead_field(c, "message_id") || !ep) {
        api_call_problem(c, 404, "Not found", "no such dead letter");
        return;
    }
    if (sd_aredis_command(c->s->api_ar, on_dead_endpoint_read, c, 0, "SISMEMBER " KP "eps %s",
                          ep) != 0)
        api_call_down(c);
}

static void on_dead_replay(sd_http_req *req, void *udata) {
    sender *s = udata;
    if (!check_token(s, req))
        return;
    char id[64];
    const char *rest = sd_http_req_path(req) + strlen("/v1/dead-letters/");
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : 0;
    if (!slash || strcmp(slash, "/replay") != 0 || n > 39) {
        problem(req, 404, "Not found", NULL);
        return;
    }
    snprintf(id, sizeof id, "%.*s", (int)n, rest);
    if (!id_valid(id)) {
        problem(req, 404, "Not found", NULL);
        return;
    }
    api_call *c = api_call_new(s, req);
    snprintf(c->id, sizeof c->id, "%s", id);
    if (sd_aredis_command(s->api_ar, on_dead_read, c, 0, "HGET " KP "dead %s", id) != 0)
        api_call_down(c);
}

static void on_metrics(sd_http_buf *buf, void *udata) {
    sender *s = udata;
    sd_http_buf_printf(buf,
                       "# HELP webhook_attempts_total Delivery attempts by outcome.\n"
                       "# TYPE webhook_attempts_total counter\n"
                       "webhook_attempts_total{outcome=\"delivered\"} %llu\n"
                       "webhook_attempts_total{outcome=\"failed\"} %llu\n"
                       "webhook_dead_letters_total %llu\n",
                       (unsigned long long)s->delivered, (unsigned long long)s->failed,
                       (unsigned long long)s->dead);
}

/* ---- start and stop ---- */

static void on_closed(uv_handle_t *h) {}

/* The last thing of every loop iteration, before it waits: the commands its callbacks and
 * timers sent leave in one write per connection, instead of each connection asking the loop
 * for a writable event (two epoll_ctl calls and an iteration more) - at a few thousand
 * deliveries a second those system calls were a large part of the sender's CPU. */
static void on_write(uv_prepare_t *h) {
    sender *s = h->data;
    sd_aredis_flush(s->ar);
    jq_aclient_flush(s->aq);
    sd_aredis_flush(s->api_ar);
    jq_aclient_flush(s->api_aq);
}

/* Runs from its own timer, never from inside a queue callback: frees the connections. */
static void on_finish(uv_timer_t *t) {
    sender *s = t->data;
    uv_close((uv_handle_t *)&s->finish, on_closed);
    uv_close((uv_handle_t *)&s->flush, on_closed);
    uv_close((uv_handle_t *)&s->write, on_closed);
    jq_aclient_free(s->aq);
    s->aq = NULL;
    sd_aredis_free(s->ar);
    s->ar = NULL;
    jq_aclient_free(s->api_aq);
    s->api_aq = NULL;
    sd_aredis_free(s->api_ar);
    s->api_ar = NULL;
}

/* A stop ends once nothing is left that a callback could still need: no attempt, no reserve,
 * no refresh, no record or ack unsent or unanswered. */
static void sender_maybe_finish(sender *s) {
    if (!s->stopping || s->inflight > 0 || s->records > 0 || s->api_calls > 0 || s->refreshing ||
        s->moves > 0 || s->dropping || uv_is_active((uv_handle_t *)&s->flush) ||
        uv_is_active((uv_handle_t *)&s->finish) || uv_is_closing((uv_handle_t *)&s->finish))
        return;
    for (size_t i = 0; i < s->neps; i++)
        if (s->eps[i]->reserving || s->eps[i]->ok_pending)
            return;
    uv_timer_start(&s->finish, on_finish, 0, 0);
}

static void sender_stop(sender *s) {
    if (s->stopping)
        return;
    s->stopping = 1;
    for (size_t i = 0; i < s->neps; i++) /* waiting attempts go back to their queues */
        endpoint_send_next(s->eps[i]);
    uv_timer_stop(&s->tick);
    uv_close((uv_handle_t *)&s->tick, on_closed);
    uv_close((uv_handle_t *)&s->park, on_closed);
    uv_close((uv_handle_t *)&s->drain, on_closed);
    uv_close((uv_handle_t *)&s->sigint, on_closed);
    uv_close((uv_handle_t *)&s->sigterm, on_closed);
    /* Attempts in flight end with SD_ECLOSED and release their jobs (not counted). */
    sd_http_client_free(s->client);
    s->client = NULL;
    sender_maybe_finish(s);
}

static void on_http_stopped(sd_http_server *srv, void *udata) {
    sender_stop(udata);
}

static void on_signal(uv_signal_t *sig, int signum) {
    sender *s = sig->data;
    if (s->http)
        sd_http_server_stop(s->http, 2000, on_http_stopped, s);
    else
        sender_stop(s);
}

static int sender_run(options *o, int serve) {
    sender *s = sd_xcalloc(1, sizeof *s);
    s->o = *o;
    s->loop = uv_default_loop();
    s->deliver = !(serve && o->no_deliver);
    char err[256];
    int status = SD_EXIT_FAILURE;
    if (wh_schedule_parse(o->schedule_text, s->schedule, &s->nschedule, err, sizeof err) != 0) {
        free(s);
        return sd_cli_usage_error(serve ? "webhook serve" : "webhook deliver",
                                  "--retry-schedule %s", err);
    }
    if (serve && sd_admin_load(&s->admin, "webhook serve", "--api-token-file", o->token_file,
                               "WEBHOOK_API_TOKEN") != 0) {
        free(s);
        return SD_EXIT_USAGE;
    }
    s->visibility_ms = o->timeout_ms + WH_LEASE_MARGIN_MS;
    sd_addr_opts_default(&s->addr);
    s->addr.allow_private = o->allow_private;
    if (sd_redis_resolve_durable(o->redis, &s->url) != 0) {
        free(s);
        return SD_EXIT_FAILURE;
    }
    if (sd_redis_require_noeviction(&s->url, err, sizeof err) != 0) {
        fprintf(stderr, "webhook: %s\n", err);
        goto out;
    }
    /* The asynchronous connection's scripts: the sender's own, and the Idempotency-Key ones. */
    endpoints_script.body = sd_lua_wh_endpoints;
    endpoints_script.len = sd_lua_wh_endpoints_len;
    message_script.body = sd_lua_wh_message;
    message_script.len = sd_lua_wh_message_len;
    endpoint_delete_script.body = sd_lua_wh_endpoint_delete;
    endpoint_delete_script.len = sd_lua_wh_endpoint_delete_len;
    sd_script *scripts[8] = {&endpoints_script, &message_script, &endpoint_delete_script};
    size_t nscripts = 3;
    for (size_t i = 0; i < sd_idem_nscripts && nscripts < 8; i++)
        scripts[nscripts++] = sd_idem_scripts[i];
    sd_redis_opts aopts;
    sd_redis_opts_default(&aopts);
    aopts.scripts = scripts;
    aopts.nscripts = nscripts;
    if (jq_aclient_new(s->loop, &s->url, NULL, &s->aq) != 0 ||
        sd_aredis_new(s->loop, &s->url, &aopts, &s->ar) != 0 ||
        (serve && (jq_aclient_new(s->loop, &s->url, NULL, &s->api_aq) != 0 ||
                   sd_aredis_new(s->loop, &s->url, &aopts, &s->api_ar) != 0))) {
        fprintf(stderr, "webhook: cannot connect to Redis\n");
        goto out;
    }
    /* Up before the first request or attempt, so that neither is answered 503 or put off at
     * start (all reconnect by themselves later). */
    if (sd_aredis_wait_connected(s->ar, 5000) != 0 || jq_aclient_wait_connected(s->aq, 5000) != 0 ||
        (serve && (sd_aredis_wait_connected(s->api_ar, 5000) != 0 ||
                   jq_aclient_wait_connected(s->api_aq, 5000) != 0)))
        sd_log(SD_LOG_WARN, "webhook.redis_unreachable", "what=start answer=503");
    sd_http_client_opts copts;
    sd_http_client_opts_default(&copts);
    copts.vet = sd_addr_vet_connect;
    copts.vet_udata = &s->addr;
    copts.max_connections_per_host = (int)o->endpoint_concurrency;
    copts.user_agent = "sysdesign-webhook";
    s->client = sd_http_client_new(s->loop, &copts);
    uv_timer_init(s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_init(s->loop, &s->finish);
    s->finish.data = s;
    uv_timer_init(s->loop, &s->drain);
    s->drain.data = s;
    uv_timer_init(s->loop, &s->flush);
    s->flush.data = s;
    uv_timer_init(s->loop, &s->park);
    s->park.data = s;
    uv_prepare_init(s->loop, &s->write);
    s->write.data = s;
    uv_prepare_start(&s->write, on_write);
    uv_unref((uv_handle_t *)&s->write); /* it alone does not keep the loop running */
    uv_signal_init(s->loop, &s->sigint);
    uv_signal_init(s->loop, &s->sigterm);
    s->sigint.data = s->sigterm.data = s;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    if (serve) {
        sd_idem_opts io = {.prefix = "wh1:{wh1}:idem"};
        sd_idem_new(s->api_ar, &io, &s->idem);
        sd_http_opts hopts;
        sd_http_opts_default(&hopts);
        hopts.server_name = "webhook";
        hopts.max_body_bytes = WH_BODY_MAX;
        s->http = sd_http_server_new(s->loop, &hopts);
        sd_http_server_trust(s->http, &o->trust);
        sd_http_server_route(s->http, "POST", "/v1/endpoints", on_endpoint_create, s);
        sd_http_server_route(s->http, "GET", "/v1/endpoints/*", on_endpoint, s);
        sd_http_server_route(s->http, "POST", "/v1/endpoints/*", on_endpoint, s);
        sd_http_server_route(s->http, "DELETE", "/v1/endpoints/*", on_endpoint_delete, s);
        sd_http_server_route(s->http, "POST", "/v1/messages", on_message_create, s);
        sd_http_server_route(s->http, "GET", "/v1/messages/*", on_message_get, s);
        sd_http_server_route(s->http, "GET", "/v1/dead-letters", on_dead_list, s);
        sd_http_server_route(s->http, "POST", "/v1/dead-letters/*", on_dead_replay, s);
        sd_http_server_add_metrics(s->http, on_metrics, s);
        sd_idem_add_metrics(s->idem, s->http);
        int rc = sd_http_server_listen(s->http, o->listen);
        if (rc == 0)
            rc = sd_http_server_print_address(s->http);
        if (rc != 0) {
            fprintf(stderr, "webhook serve: cannot listen on %s: %s\n", o->listen, sd_strerror(rc));
            sd_http_server_stop(s->http, 0, on_http_stopped, s);
            uv_run(s->loop, UV_RUN_DEFAULT);
            goto out;
        }
        sd_admin_announce(&s->admin, "webhook");
    } else {
        printf("delivering\n");
        fflush(stdout);
    }
    if (s->deliver)
        uv_timer_start(&s->tick, on_tick, 0, (uint64_t)o->poll_ms);
    if (serve)
        uv_timer_start(&s->drain, endpoints_drain, WH_DRAIN_MS, WH_DRAIN_MS);
    sd_log(SD_LOG_INFO, "webhook.sending",
           "workers=%d timeout_ms=%lld visibility_ms=%lld allow_private=%d", s->deliver,
           o->timeout_ms, (long long)s->visibility_ms, o->allow_private);
    uv_run(s->loop, UV_RUN_DEFAULT);
    /* Every attempt has released or acked its job once the loop has no more work. */
    status = SD_EXIT_OK;
out:
    if (!s->stopping && s->client)
        sd_http_client_free(s->client);
    sd_http_server_free(s->http);
    if (!s->stopping) { /* a start that failed before the loop ran */
        jq_aclient_free(s->aq);
        sd_aredis_free(s->ar);
        jq_aclient_free(s->api_aq);
        sd_aredis_free(s->api_ar);
    }
    uv_run(s->loop, UV_RUN_DEFAULT);
    sd_idem_free(s->idem);
    for (size_t i = 0; i < s->neps; i++) {
        free(s->eps[i]->acks);
        free(s->eps[i]->waiting);
        free(s->eps[i]);
    }
    free(s->eps);
    for (size_t i = 0; i < s->nenq; i++)
        free(s->enq[i].items);
    free(s->enq);
    free(s->drops);
    sd_redis_url_clear(&s->url);
    uv_loop_close(s->loop);
    free(s);
    return status;
}

static int sender_main(int argc, char **argv, int serve) {
    options o;
    memset(&o, 0, sizeof o);
    o.listen = "127.0.0.1:8090";
    o.schedule_text = "5s,5m,30m,2h,5h,10h,14h,20h,24h";
    o.timeout_ms = 15000;
    o.concurrency = 256;
    o.endpoint_concurrency = 8;
    o.poll_ms = 50;
    o.disable_after = 200;
    o.recheck_ms = 30000;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT", "serve: address to listen on (default 127.0.0.1:8090)",
         .parse = sd_cli_listen_parse, .udata = &o.listen},
        {"--redis", "URL", "Redis to use (else REDIS_URL, else the local durable Redis)",
         .parse = sd_cli_redis_parse, .udata = &o.redis},
        {"--retry-schedule", "LIST",
         "delays between attempts, e.g. 50ms,1s,5m (default the Standard\n"
         "Webhooks schedule 5s,5m,30m,2h,5h,10h,14h,20h,24h), +-10% jitter",
         .text = &o.schedule_text},
        {"--timeout-ms", "MS", "each attempt's HTTP deadline (default 15000)",
         .integer = &o.timeout_ms, .min = 10, .max = 300000},
        {"--concurrency", "N", "attempts at once in this process (default 256)",
         .integer = &o.concurrency, .min = 1, .max = 10000},
        {"--endpoint-concurrency", "N", "attempts at once per endpoint (default 8)",
         .integer = &o.endpoint_concurrency, .min = 1, .max = 1000},
        {"--poll-ms", "MS", "how often the endpoint queues are read (default 50)",
         .integer = &o.poll_ms, .min = 1, .max = 10000},
        {"--disable-after", "N", "failures in a row that disable an endpoint (default 200)",
         .integer = &o.disable_after, .min = 1, .max = 1000000},
        {"--recheck-ms", "MS",
         "serve: a deleted endpoint's queue is dropped again this long\n"
         "after the deletion, for deliveries a fan-out under way then\n"
         "added (default 30000)",
         .integer = &o.recheck_ms, .min = 1, .max = 86400000},
        {"--allow-private", NULL,
         "allow endpoints on loopback and private addresses (local use\n"
         "and tests only: it turns the SSRF guard off)",
         .flag = &o.allow_private},
        {"--no-deliver", NULL, "serve: run no delivery workers here", .flag = &o.no_deliver},
        {"--api-token-file", "FILE",
         "serve: every /v1 request must carry \"Authorization: Bearer\n"
         "<token>\", the token being this file's first line (or\n"
         "WEBHOOK_API_TOKEN's value; 16 characters at least); without\n"
         "one, /v1 answers loopback clients only",
         .text = &o.token_file},
        SD_CLI_TRUST_OPT(&o.trust),
        {0}};
    const sd_cli_cmd cmd = {
        .name = serve ? "webhook serve" : "webhook deliver",
        .synopsis = "[options]",
        .about = serve ? "Runs the sender's API (endpoints, messages, dead letters) and delivery\n"
                         "workers: each attempt is a job on the endpoint's queue."
                       : "Runs delivery workers for the messages `webhook serve` accepted.",
        .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    return sender_run(&o, serve);
}

int wh_run_serve(int argc, char **argv) {
    return sender_main(argc, argv, 1);
}

int wh_run_deliver(int argc, char **argv) {
    return sender_main(argc, argv, 0);
}
