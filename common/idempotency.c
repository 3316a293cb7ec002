/*
 * idempotency.c - Idempotency-Key handling for POST APIs (see idempotency.h for the contract).
 *
 * Life of a keyed request (the call object), and which function makes each step
 *
 *   sd_idem_handle_scoped ──begin script──> on_begin ─┬─ record found, same fp ──> REPLAYED
 *     (no key: the handler runs at once,              ├─ record or mark, other fp ─> 422
 *      nothing recorded)                              ├─ mark, same fp ──────────> 409
 *                                                     ├─ Redis failed ───────────> 503
 *                                                     └─ key free, mark set: HANDLING
 *                                                               │ the handler answers:
 *                                                               │ sd_idem_call_respond
 *                        recordable status ──finish script──────┼──release script── 5xx, 408,
 *                                │                              │                   409, 425, 429
 *                                v                              v
 *                  on_finish: RECORDED (or LOST)      on_release: RELEASED
 *                                └──────────> the response is sent, the call freed <──┘
 *
 * Invariants
 *  1. Every request gets exactly one response, and the call object is freed exactly once, right
 *     after it (deliver()).
 *  2. The handler runs at most once per call, and never for a replay, a 409, a 422 or a 503.
 *  3. A recorded response is sent only after Redis confirmed the record; a released key only
 *     after Redis confirmed the release (see "Ordering" in idempotency.h).
 *  4. Only the attempt that set a mark may turn it into a record or delete it: the mark's value
 *     carries the attempt's random token, and the scripts compare it.
 */
#include "idempotency.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "sd.h"
#include "sd_common_lua.h" /* the embedded scripts (sd_embed_lua in CMakeLists.txt) */

#define KEY_MAX 255

static sd_script begin_script = {"idem-begin", sd_lua_idem_begin, sizeof sd_lua_idem_begin - 1, ""};
static sd_script finish_script = {"idem-finish", sd_lua_idem_finish, sizeof sd_lua_idem_finish - 1,
                                  ""};
static sd_script release_script = {"idem-release", sd_lua_idem_release,
                                   sizeof sd_lua_idem_release - 1, ""};
sd_script *const sd_idem_scripts[] = {&begin_script, &finish_script, &release_script};
const size_t sd_idem_nscripts = 3;

static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void scripts_init(void) {
    for (size_t i = 0; i < sd_idem_nscripts; i++)
        sd_script_init(sd_idem_scripts[i]);
}

struct sd_idem {
    sd_aredis *redis; /* borrowed */
    char *prefix;
    char *scope_header;
    int ttl_s, mark_ms, timeout_ms;
    uint64_t counts[SD_IDEM_OUTCOMES];
};

/* A growing byte buffer: the recorded headers, "name\0value\0" pairs. */
typedef struct bytes {
    char *p;
    size_t len, cap;
} bytes;

static void bytes_add(bytes *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = sd_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

struct sd_idem_call {
    sd_idem *idem;
    sd_http_req *req;
    sd_idem_handler_cb *cb;
    void *udata;
    int keyed;          /* 1 when the request carries a key and this attempt holds its mark */
    char *rec_key;      /* <prefix>{H}:rec */
    char *mark_key;     /* <prefix>{H}:mark */
    char fp[65];        /* hex SHA-256 of method, path and body */
    char mark[65 + 32]; /* fp followed by this attempt's random token */
    bytes headers;      /* what the handler added, recorded with the response */
    /* The response, held while it is recorded or the key released. */
    int status;
    char *content_type;
    char *body;
    size_t len;
};

int sd_idem_new(sd_aredis *redis, const sd_idem_opts *opts, sd_idem **out) {
    if (!redis || !opts || !opts->prefix || !*opts->prefix)
        return -EINVAL;
    pthread_once(&scripts_once, scripts_init);
    sd_idem *idem = sd_xcalloc(1, sizeof *idem);
    idem->redis = redis;
    idem->prefix = sd_xstrdup(opts->prefix);
    idem->scope_header = opts->scope_header ? sd_xstrdup(opts->scope_header) : NULL;
    idem->ttl_s = opts->ttl_s > 0 ? opts->ttl_s : 86400;
    idem->mark_ms = opts->mark_ms > 0 ? opts->mark_ms : 60000;
    idem->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 1000;
    *out = idem;
    return 0;
}

void sd_idem_free(sd_idem *idem) {
    if (!idem)
        return;
    free(idem->prefix);
    free(idem->scope_header);
    free(idem);
}

uint64_t sd_idem_count(const sd_idem *idem, int outcome) {
    return outcome >= 0 && outcome < SD_IDEM_OUTCOMES ? idem->counts[outcome] : 0;
}

static const char *const outcome_names[SD_IDEM_OUTCOMES] = {
    "no_key",   "new",      "recorded",  "released", "lost",
    "replayed", "mismatch", "in_flight", "invalid",  "unavailable"};

static void metrics_cb(sd_http_buf *buf, void *udata) {
    const sd_idem *idem = udata;
    sd_http_buf_printf(buf, "# TYPE http_idempotency_requests_total counter\n");
    for (int i = 0; i < SD_IDEM_OUTCOMES; i++)
        sd_http_buf_printf(buf, "http_idempotency_requests_total{outcome=\"%s\"} %llu\n",
                           outcome_names[i], (unsigned long long)idem->counts[i]);
}

void sd_idem_add_metrics(sd_idem *idem, sd_http_server *srv) {
    sd_http_server_add_metrics(srv, metrics_cb, idem);
}

/* ---- Hashing ------------------------------------------------------------------------------- */

static void sha256_hex(const void *parts[], const size_t lens[], int n, char hex[65]) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        fprintf(stderr, "fatal: SHA-256 is not available\n");
        abort();
    }
    for (int i = 0; i < n; i++)
        EVP_DigestUpdate(ctx, parts[i], lens[i]);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
}

/* ---- Answering ------------------------------------------------------------------------------ */

static void call_free(sd_idem_call *call) {
    free(call->rec_key);
    free(call->mark_key);
    free(call->headers.p);
    free(call->content_type);
    free(call->body);
    free(call);
}

/* Adds "name\0value\0" pairs to req's response. */
static void add_headers(sd_http_req *req, const char *p, size_t len) {
    const char *end = p + len;
    while (p < end) {
        const char *name = p;
        const char *value = memchr(name, '\0', (size_t)(end - name));
        if (!value || value + 1 >= end)
            return;
        value++;
        const char *next = memchr(value, '\0', (size_t)(end - value));
        if (!next)
            return;
        sd_http_req_add_header(req, name, value);
        p = next + 1;
    }
}

/* Sends the held response and frees the call (invariant 1). */
static void deliver(sd_idem_call *call) {
    add_headers(call->req, call->headers.p, call->headers.len);
    sd_http_req_respond(call->req, call->status, call->content_type, call->body, call->len);
    call_free(call);
}

/* Answers with a problem from here (not the handler's) and frees the call. */
static void refuse(sd_idem_call *call, int outcome, int status, const char *type, const char *title,
                   const char *detail, int retry_after_s) {
    call->idem->counts[outcome]++;
    if (retry_after_s > 0) {
        char v[24];
        snprintf(v, sizeof v, "%d", retry_after_s);
        sd_http_req_add_header(call->req, "Retry-After", v);
    }
    sd_http_req_respond_problem(call->req, status, type, title, detail, NULL);
    call_free(call);
}

static void on_finish(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    sd_idem_call *call = privdata;
    if (status != 0 || !reply || reply->type != REDIS_REPLY_INTEGER) {
        call->idem->counts[SD_IDEM_UNAVAILABLE]++;
        sd_log(SD_LOG_WARN, "idempotency.record_failed", "error=\"%s\"",
               status                ? sd_strerror(status)
               : reply && reply->str ? reply->str
                                     : "bad reply");
    } else {
        call->idem->counts[reply->integer == 1 ? SD_IDEM_RECORDED : SD_IDEM_LOST]++;
    }
    deliver(call);
}

static void on_release(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    sd_idem_call *call = privdata;
    call->idem->counts[status == 0 && reply && reply->type == REDIS_REPLY_INTEGER
                           ? (reply->integer == 1 ? SD_IDEM_RELEASED : SD_IDEM_LOST)
                           : SD_IDEM_UNAVAILABLE]++;
    deliver(call);
}

/* Transient statuses are answered but not recorded: the key is released for the retry. */
static int recordable(int status) {
    return status < 500 && status != 408 && status != 409 && status != 425 && status != 429;
}

void sd_idem_call_add_header(sd_idem_call *call, const char *name, const char *value) {
    bytes_add(&call->headers, name, strlen(name) + 1);
    bytes_add(&call->headers, value, strlen(value) + 1);
}

void sd_idem_call_respond(sd_idem_call *call, int status, const char *content_type,
                          const char *body, size_t len) {
    call->status = status;
    call->content_type = content_type ? sd_xstrdup(content_type) : NULL;
    call->body = NULL;
    if (len) { /* bodies are bytes: NULs included */
        call->body = sd_xmalloc(len);
        memcpy(call->body, body, len);
    }
    call->len = len;
    if (!call->keyed) {
        deliver(call);
        return;
    }
    sd_idem *idem = call->idem;
    int rc;
    if (recordable(status)) {
        /* The content type travels with the headers, first, so a replay restores it. */
        bytes h = {0};
        const char *ct = content_type ? content_type : "";
        bytes_add(&h, ct, strlen(ct) + 1);
        if (call->headers.len)
            bytes_add(&h, call->headers.p, call->headers.len);
        char st[16], ttl[16];
        snprintf(st, sizeof st, "%d", status);
        snprintf(ttl, sizeof ttl, "%d", idem->ttl_s);
        const char *argv[] = {call->rec_key,
                              call->mark_key,
                              call->mark,
                              call->fp,
                              st,
                              h.p,
                              call->body ? call->body : "",
                              ttl};
        const size_t lens[] = {strlen(call->rec_key),
                               strlen(call->mark_key),
                               strlen(call->mark),
                               64,
                               strlen(st),
                               h.len,
                               len,
                               strlen(ttl)};
        rc = sd_aredis_script(idem->redis, &finish_script, on_finish, call, idem->timeout_ms, 2, 8,
                              argv, lens);
        free(h.p);
    } else {
        const char *argv[] = {call->mark_key, call->mark};
        const size_t lens[] = {strlen(call->mark_key), strlen(call->mark)};
        rc = sd_aredis_script(idem->redis, &release_script, on_release, call, idem->timeout_ms, 1,
                              2, argv, lens);
    }
    if (rc != 0) {
        /* Redis went away while the handler ran: the work is done, so its answer goes out; the
         * mark expires by itself within mark_ms. */
        idem->counts[SD_IDEM_UNAVAILABLE]++;
        sd_log(SD_LOG_WARN, "idempotency.record_failed", "error=\"%s\"", sd_strerror(rc));
        deliver(call);
    }
}

void sd_idem_call_respond_json(sd_idem_call *call, int status, json_t *json) {
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    if (!text) {
        sd_idem_call_respond(call, 500, NULL, NULL, 0);
        return;
    }
    sd_idem_call_respond(call, status, "application/json", text, strlen(text));
    free(text);
}

void sd_idem_call_respond_problem(sd_idem_call *call, int status, const char *type,
                                  const char *title, const char *detail, json_t *extra) {
    json_t *p = json_pack("{s:s, s:s, s:i}", "type", type ? type : "about:blank", "title",
                          title ? title : "Error", "status", status);
    if (detail)
        json_object_set_new(p, "detail", json_string(detail));
    if (extra) {
        json_object_update_missing(p, extra);
        json_decref(extra);
    }
    char *text = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    sd_idem_call_respond(call, status, "application/problem+json", text, text ? strlen(text) : 0);
    free(text);
}

/* ---- Starting ------------------------------------------------------------------------------- */

/* Replays a record: {'replay', status, headers, body}. */
static void replay(sd_idem_call *call, const redisReply *reply) {
    const redisReply *st = reply->element[1], *h = reply->element[2], *b = reply->element[3];
    long long code = 0;
    if (st->type != REDIS_REPLY_STRING || sd_parse_ll(st->str, 100, 599, &code) != 0 ||
        h->type != REDIS_REPLY_STRING || b->type != REDIS_REPLY_STRING) {
        refuse(call, SD_IDEM_UNAVAILABLE, 500, "about:blank", "Internal Server Error",
               "the recorded response is unreadable", 0);
        return;
    }
    call->idem->counts[SD_IDEM_REPLAYED]++;
    /* The first pair-less string is the content type. */
    const char *ct = h->str;
    size_t ctlen = strnlen(ct, h->len);
    sd_http_req_add_header(call->req, "Idempotent-Replayed", "true");
    if (ctlen + 1 <= h->len)
        add_headers(call->req, h->str + ctlen + 1, h->len - ctlen - 1);
    sd_http_req_respond(call->req, (int)code, ctlen ? ct : NULL, b->str, b->len);
    call_free(call);
}

static void on_begin(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    sd_idem_call *call = privdata;
    sd_idem *idem = call->idem;
    const char *what = status == 0 && reply && reply->type == REDIS_REPLY_ARRAY &&
                               reply->elements >= 1 && reply->element[0]->type == REDIS_REPLY_STRING
                           ? reply->element[0]->str
                           : NULL;
    if (!what) {
        sd_log(SD_LOG_WARN, "idempotency.unavailable", "error=\"%s\"",
               status                ? sd_strerror(status)
               : reply && reply->str ? reply->str
                                     : "bad reply");
        refuse(call, SD_IDEM_UNAVAILABLE, 503, "/problems/idempotency-unavailable",
               "Idempotency keys are unavailable",
               "the store of idempotency keys did not answer; the request was not processed", 1);
    } else if (strcmp(what, "new") == 0) {
        idem->counts[SD_IDEM_NEW]++;
        call->keyed = 1;
        call->cb(call, call->req, call->udata);
    } else if (strcmp(what, "replay") == 0 && reply->elements == 4) {
        replay(call, reply);
    } else if (strcmp(what, "mismatch") == 0) {
        refuse(call, SD_IDEM_MISMATCH, 422, "/problems/idempotency-key-reused",
               "Idempotency key reused",
               "this Idempotency-Key was used for a different request (method, path or body)", 0);
    } else if (strcmp(what, "in_flight") == 0 && reply->elements == 2) {
        long long pttl = reply->element[1]->type == REDIS_REPLY_STRING
                             ? strtoll(reply->element[1]->str, NULL, 10)
                             : 1000;
        int retry = pttl > 1000 ? (int)((pttl + 999) / 1000) : 1;
        refuse(call, SD_IDEM_IN_FLIGHT, 409, "/problems/idempotency-key-in-use",
               "Idempotency key in use",
               "a request with this Idempotency-Key is still being processed; retry later", retry);
    } else {
        refuse(call, SD_IDEM_UNAVAILABLE, 503, "/problems/idempotency-unavailable",
               "Idempotency keys are unavailable", "unexpected reply from the store", 1);
    }
}

/* The key's value: a raw token, or an RFC 8941 sf-string ("...") as the IETF draft writes it.
 * Returns its length (the quotes removed) and where it starts, or -1 when it is not acceptable. */
static int key_parse(const char *v, const char **start) {
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    if (n == 0 || n > KEY_MAX)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e)
            return -1;
    *start = v;
    return (int)n;
}

void sd_idem_handle_scoped(sd_idem *idem, sd_http_req *req, const char *scope,
                           sd_idem_handler_cb *cb, void *udata) {
    sd_idem_call *call = sd_xcalloc(1, sizeof *call);
    call->idem = idem;
    call->req = req;
    call->cb = cb;
    call->udata = udata;
    const char *header = sd_http_req_header(req, "Idempotency-Key");
    if (!header) {
        idem->counts[SD_IDEM_NO_KEY]++;
        cb(call, req, udata);
        return;
    }
    const char *key;
    int keylen = key_parse(header, &key);
    if (keylen < 0) {
        refuse(call, SD_IDEM_INVALID, 400, "/problems/idempotency-key-invalid",
               "Invalid Idempotency-Key",
               "an Idempotency-Key has 1 to 255 printable ASCII characters", 0);
        return;
    }
    char tag[65];
    const void *tparts[] = {scope, "\n", key};
    const size_t tlens[] = {strlen(scope), 1, (size_t)keylen};
    sha256_hex(tparts, tlens, 3, tag);
    tag[32] = '\0';
    call->rec_key = sd_xasprintf("%s{%s}:rec", idem->prefix, tag);
    call->mark_key = sd_xasprintf("%s{%s}:mark", idem->prefix, tag);

    size_t blen;
    const char *body = sd_http_req_body(req, &blen);
    const char *method = sd_http_req_method(req), *path = sd_http_req_path(req);
    const void *fparts[] = {method, "\n", path, "\n", body};
    const size_t flens[] = {strlen(method), 1, strlen(path), 1, blen};
    sha256_hex(fparts, flens, 5, call->fp);
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        for (size_t i = 0; i < sizeof rnd; i++) /* never expected: getrandom on Linux >= 3.17 */
            rnd[i] = (unsigned char)(sd_now_ns() >> (i % 8));
    }
    memcpy(call->mark, call->fp, 64);
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(call->mark + 64 + 2 * i, 3, "%02x", rnd[i]);

    char ms[16];
    snprintf(ms, sizeof ms, "%d", idem->mark_ms);
    const char *argv[] = {call->rec_key, call->mark_key, call->fp, call->mark, ms};
    const size_t lens[] = {strlen(call->rec_key), strlen(call->mark_key), 64, strlen(call->mark),
                           strlen(ms)};
    int rc = sd_aredis_script(idem->redis, &begin_script, on_begin, call, idem->timeout_ms, 2, 5,
                              argv, lens);
    if (rc != 0) {
        sd_log(SD_LOG_WARN, "idempotency.unavailable", "error=\"%s\"", sd_strerror(rc));
        refuse(call, SD_IDEM_UNAVAILABLE, 503, "/problems/idempotency-unavailable",
               "Idempotency keys are unavailable",
               "the store of idempotency keys is unreachable; the request was not processed", 1);
    }
}

void sd_idem_handle(sd_idem *idem, sd_http_req *req, sd_idem_handler_cb *cb, void *udata) {
    const char *token = idem->scope_header ? sd_http_req_header(req, idem->scope_header) : NULL;
    if (token && *token) {
        /* The scope names the token by its hash: the token itself is never stored. */
        char hex[65], scope[72];
        const void *parts[] = {token};
        const size_t lens[] = {strlen(token)};
        sha256_hex(parts, lens, 1, hex);
        snprintf(scope, sizeof scope, "t:%s", hex);
        sd_idem_handle_scoped(idem, req, scope, cb, udata);
    } else {
        char scope[80];
        snprintf(scope, sizeof scope, "a:%s", sd_http_req_client(req));
        sd_idem_handle_scoped(idem, req, scope, cb, udata);
    }
}
