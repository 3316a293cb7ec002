/*
 * jobqueue.c - the job queue of jobqueue.h: the client side of the Lua scripts that move jobs
 * between states. The scripts (jq-*.lua, each sent after jq-common.lua) hold all the logic that
 * must be atomic; this file checks arguments, builds their argument lists and reads their
 * replies for the synchronous client's hot path (enqueue, reserve, ack, fail, extend, release,
 * progress). jq_admin.c has the other calls (cancel, inspect, stats, dead letters, drop),
 * jq_async.c the asynchronous client and worker.c the worker runtime; jq_internal.h is what they
 * share.
 *
 * A job's life (the state in its record, jq-common.lua; the script that makes each move, and
 * the call that runs it)
 *
 *            enqueue (jq-enqueue)                 enqueue with a delay (jq-enqueue)
 *                 |                                          |
 *                 v           due (housekeep)                v
 *   +-------->  READY  <------------------------------  DELAYED  <---------------+
 *   |             |  ^                                     |                     |
 *   |  reserve    |  | lease expired, attempts left        | cancel              |
 *   |  (jq-reserve)  | (housekeep); release (jq-release,   v                     |
 *   |             |  |  the delivery not counted)      CANCELLED <--+            |
 *   |             v  |                                     ^         |            |
 *   |          RESERVED -- fail, attempts left, delay (jq-fail) -----|------------+
 *   |           | |  |                                                |
 *   |           | |  +-- cancel flagged (jq-cancel), then the worker's next call or the
 *   |           | |      lease's expiry (jq-ack, jq-fail, jq-release, housekeep) -+
 *   |           | |
 *   |           | +-- fail permanent, or attempts used up (jq-fail);
 *   |           |     lease expired at the delivery limit (housekeep) --> DEAD
 *   |           |                                                           |
 *   |           +-- ack, ack with effect (jq-ack, jq-ack-effect) --> DONE   |
 *   |                                                                       |
 *   +---- redrive (jq-dlq), attempts from 0 ---------------------------------+
 *
 *   READY -- cancel (jq-cancel) --> CANCELLED;  fail with no delay: RESERVED -> READY.
 *   DONE, CANCELLED and DEAD jobs are deleted by housekeep once their retention ends (a record
 *   past it reads as gone until then); jq-dlq purge deletes dead letters at once, and
 *   jq-drop (jq_queue_drop) deletes jobs of every state at once, then the queue's indexes; a
 *   dropped RESERVED job's worker finds no record, and its calls answer JQ_ENOTFOUND.
 *
 * housekeep is the function of jq-common.lua that jq-reserve and jq-reap run first, at most
 * housekeep_batch jobs of each kind per call, so a pile of 10,000 leases expiring at once is
 * worked off in many short scripts, never one long one.
 *
 * Invariants
 *  1. A job's id is in exactly one index, the one its record's state names: its priority's
 *     READY line (a list), the zset delayed, cancelled or dead, the lease set of its lease
 *     deadline (RESERVED), or the DONE list of its end of retention. Lease sets and DONE lists
 *     group the jobs of one batch (one reserve, one ack) under one entry of the zset reserved
 *     or done, so a batch costs one sorted insert, not one a job. housekeep deletes the record
 *     and payload when it trims a terminal entry. Every script that changes the state moves the
 *     id in the same script.
 *  2. A call about a RESERVED job (ack, fail, extend, release, progress) changes something
 *     only when its token is the job's current one and its lease has not passed (lease_code
 *     in jq-common.lua). Tokens come from a per-queue counter, so a token is never reused.
 *  3. Every delivery counts as an attempt when the job is reserved, not when it fails, so a
 *     job whose worker dies (kill -9) still uses up its attempts: a poison job ends DEAD.
 *     Only release gives the delivery back.
 *  4. A script either refuses and writes nothing, or does all its writes: every check comes
 *     before the first write (Redis does not roll a script back).
 *  5. Time is Redis TIME, read once per script; nothing here uses the client's clock for a
 *     shared decision. The client computes only the backoff's jitter (it knows the attempt).
 *
 * Keys (all "<prefix>{jq:<queue>}" + suffix; the README lists types and TTLs): :meta and :data
 * (every job's record and payload, one field each), :job:<id> and :log:<id> (a job's rarely
 * set fields and its failures, only when it has some), :lines and :ready:<priority>, :delayed,
 * :reserved and :lease:<deadline>, :done, :done:<end> and :ndone, :cancelled, :dead, :seq,
 * :wake, :idem:<key>, :fx:<name>. A drop deletes all but
 * :seq (never: invariant 2), :idem:<key> (expires) and :fx:<name> (the caller's).
 */
#include "jobqueue.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "jq_internal.h"
#include "jq_lua.h"
#include "sd.h"

/* ---- Errors, states, config ---------------------------------------------------------------- */

const char *jq_strerror(int code) {
    switch (code) {
    case JQ_ESTALE:
        return "stale lease: the token is not the job's current one, or the lease expired";
    case JQ_ENOTFOUND:
        return "no such job";
    case JQ_EFULL:
        return "queue full: too many ready jobs";
    case JQ_ECANCELLED:
        return "the job was cancelled";
    case JQ_ESTATE:
        return "the job's state does not allow this";
    case JQ_EINVAL:
        return "invalid argument";
    case JQ_ETOOBIG:
        return "payload, result, progress or error text too big";
    case JQ_EEVICTION:
        return "Redis may evict keys (maxmemory-policy is not noeviction)";
    default:
        return sd_strerror(code);
    }
}

static const char *const state_names[] = {"ready", "delayed", "reserved",
                                          "done",  "dead",    "cancelled"};

const char *jq_state_name(jq_state s) {
    return (unsigned)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "?";
}

int jq_state_parse(const char *name, jq_state *out) {
    for (size_t i = 0; i < sizeof state_names / sizeof state_names[0]; i++) {
        if (strcmp(name, state_names[i]) == 0) {
            *out = (jq_state)i;
            return 0;
        }
    }
    return JQ_EINVAL;
}

void jq_config_default(jq_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->prefix, sizeof cfg->prefix, "jq3:");
    cfg->max_payload = 65536;
    cfg->max_result = 4096;
    cfg->done_retention_ms = 24LL * 3600 * 1000;
    cfg->cancelled_retention_ms = 24LL * 3600 * 1000;
    cfg->dead_retention_ms = 7LL * 24 * 3600 * 1000;
    cfg->idempotency_ttl_ms = 24LL * 3600 * 1000;
    cfg->max_ready = 0;
    cfg->backoff_base_ms = 1000;
    cfg->backoff_max_ms = 300000;
    cfg->housekeep_batch = 100;
    cfg->timeout_ms = 2000;
}

#define YEAR_MS (366LL * 24 * 3600 * 1000)

int jq_config_validate(const jq_config *cfg, char *err, size_t errlen) {
    const char *bad = NULL;
    if (strchr(cfg->prefix, '{') || strchr(cfg->prefix, '}') ||
        strnlen(cfg->prefix, sizeof cfg->prefix) == sizeof cfg->prefix)
        bad = "prefix must be under 32 bytes without '{' or '}'";
    else if (cfg->max_payload < 1 || cfg->max_payload > 64u * 1024 * 1024)
        bad = "max_payload must be 1 byte to 64 MiB";
    else if (cfg->max_result < 1 || cfg->max_result > 1024u * 1024)
        bad = "max_result must be 1 byte to 1 MiB";
    else if (cfg->done_retention_ms < 1 || cfg->done_retention_ms > YEAR_MS ||
             cfg->cancelled_retention_ms < 1 || cfg->cancelled_retention_ms > YEAR_MS ||
             cfg->dead_retention_ms < 1 || cfg->dead_retention_ms > YEAR_MS ||
             cfg->idempotency_ttl_ms < 1 || cfg->idempotency_ttl_ms > YEAR_MS)
        bad = "retention times and the idempotency window must be 1 ms to a year";
    else if (cfg->max_ready < 0)
        bad = "max_ready must be 0 (no bound) or positive";
    else if (cfg->backoff_base_ms < 0 || cfg->backoff_max_ms < cfg->backoff_base_ms ||
             cfg->backoff_max_ms > YEAR_MS)
        bad = "backoff: 0 <= base <= max <= a year";
    else if (cfg->housekeep_batch < 1 || cfg->housekeep_batch > 1000)
        bad = "housekeep_batch must be 1 to 1000";
    else if (cfg->timeout_ms < 1)
        bad = "timeout_ms must be positive";
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        return JQ_EINVAL;
    }
    return 0;
}

int jq_queue_name_valid(const char *name) {
    size_t n = strnlen(name, JQ_QUEUE_MAX + 1);
    if (n == 0 || n > JQ_QUEUE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return 0;
    }
    return 1;
}

int64_t jq_backoff_ms(int64_t base_ms, int64_t max_ms, int attempt, uint64_t rnd) {
    if (base_ms <= 0 || max_ms <= 0)
        return 0;
    int64_t cap = base_ms < max_ms ? base_ms : max_ms;
    /* Double while under max: at most 63 doublings, and the test before each one keeps the
     * product below max_ms, so nothing overflows however large attempt is. */
    for (int i = 1; i < attempt && cap < max_ms; i++)
        cap = cap > max_ms / 2 ? max_ms : cap * 2;
    return (int64_t)(rnd % ((uint64_t)cap + 1));
}

/* ---- Scripts ------------------------------------------------------------------------------- */

static sd_script scripts[JQ_S_COUNT];
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

/* Each script is jq-common.lua followed by the script's own file. */
static void scripts_build(void) {
    static const char *const names[JQ_S_COUNT] = {
        "jobqueue/enqueue", "jobqueue/reserve", "jobqueue/ack",     "jobqueue/ack-effect",
        "jobqueue/fail",    "jobqueue/extend",  "jobqueue/release", "jobqueue/progress",
        "jobqueue/cancel",  "jobqueue/reap",    "jobqueue/stats",   "jobqueue/dlq",
        "jobqueue/drop",    "jobqueue/get"};
    const char *bodies[JQ_S_COUNT] = {sd_lua_jq_enqueue,    sd_lua_jq_reserve,  sd_lua_jq_ack,
                                      sd_lua_jq_ack_effect, sd_lua_jq_fail,     sd_lua_jq_extend,
                                      sd_lua_jq_release,    sd_lua_jq_progress, sd_lua_jq_cancel,
                                      sd_lua_jq_reap,       sd_lua_jq_stats,    sd_lua_jq_dlq,
                                      sd_lua_jq_drop,       sd_lua_jq_get};
    for (int i = 0; i < JQ_S_COUNT; i++) {
        char *body = sd_xasprintf("%s\n%s", sd_lua_jq_common, bodies[i]);
        scripts[i].name = names[i];
        scripts[i].body = body; /* lives as long as the process */
        scripts[i].len = strlen(body);
        sd_script_init(&scripts[i]);
    }
}

sd_script *jq__script(int which) {
    pthread_once(&scripts_once, scripts_build);
    return &scripts[which];
}

/* ---- The client ---------------------------------------------------------------------------- */

int jq__connect_opts(const jq_config **cfg, jq_config *def, sd_redis_opts *opts,
                     sd_script *list[JQ_S_COUNT]) {
    if (!*cfg) {
        jq_config_default(def);
        *cfg = def;
    }
    char err[128];
    if (jq_config_validate(*cfg, err, sizeof err) != 0)
        return JQ_EINVAL;
    sd_redis_opts_default(opts);
    opts->command_timeout_ms = (*cfg)->timeout_ms;
    for (int i = 0; i < JQ_S_COUNT; i++)
        list[i] = jq__script(i);
    opts->scripts = list;
    opts->nscripts = JQ_S_COUNT;
    return 0;
}

sd_redis *jq_client_redis(jq_client *c) {
    return c->redis;
}

int jq_client_new(const sd_redis_url *url, const jq_config *cfg, jq_client **out) {
    jq_config def;
    sd_redis_opts opts;
    sd_script *list[JQ_S_COUNT];
    if (jq__connect_opts(&cfg, &def, &opts, list) != 0)
        return JQ_EINVAL;
    sd_redis *r = NULL;
    int rc = sd_redis_connect(url, &opts, &r);
    if (rc != 0)
        return rc;
    jq_client *c = sd_xcalloc(1, sizeof *c);
    c->redis = r;
    c->cfg = *cfg;
    *out = c;
    return 0;
}

void jq_client_free(jq_client *c) {
    if (!c)
        return;
    sd_redis_free(c->redis);
    free(c);
}

int jq_client_check_redis(jq_client *c, char *err, size_t errlen) {
    int rc = 0;
    redisReply *reply = sd_redis_command(c->redis, &rc, "CONFIG GET maxmemory-policy");
    if (!reply) {
        snprintf(err, errlen, "cannot read maxmemory-policy: %s", sd_strerror(rc));
        return rc ? rc : SD_EDISCONNECTED;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "cannot read maxmemory-policy: %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        freeReplyObject(reply);
        return SD_EREDIS;
    }
    rc = 0;
    if (strcmp(reply->element[1]->str, "noeviction") != 0) {
        snprintf(err, errlen,
                 "Redis has maxmemory-policy %.40s: it may evict jobs under memory pressure; a "
                 "job queue needs noeviction (CONFIG SET maxmemory-policy noeviction)",
                 reply->element[1]->str);
        rc = JQ_EEVICTION;
    }
    freeReplyObject(reply);
    return rc;
}

int jq_key_cfg(const jq_config *cfg, const char *queue, const char *suffix, char *buf, size_t len) {
    if (!jq_queue_name_valid(queue))
        return JQ_EINVAL;
    int n = snprintf(buf, len, "%s{jq:%s}%s", cfg->prefix, queue, suffix);
    return n < 0 || (size_t)n >= len ? JQ_EINVAL : n;
}

int jq_key(const jq_client *c, const char *queue, const char *suffix, char *buf, size_t len) {
    return jq_key_cfg(&c->cfg, queue, suffix, buf, len);
}

int jq_effect_key(const jq_client *c, const char *queue, const char *name, char *buf, size_t len) {
    size_t n = strnlen(name, 129);
    if (n == 0 || n > 128)
        return JQ_EINVAL;
    char suffix[140];
    snprintf(suffix, sizeof suffix, ":fx:%s", name);
    return jq_key(c, queue, suffix, buf, len);
}

/* ---- Argument lists (jq_internal.h) ------------------------------------------------------ */

void jq__args_push(jq__args *a, const void *p, size_t len) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 32;
        a->v = sd_xrealloc(a->v, sizeof *a->v * (size_t)a->cap);
        a->l = sd_xrealloc(a->l, sizeof *a->l * (size_t)a->cap);
        a->owned = sd_xrealloc(a->owned, sizeof *a->owned * (size_t)a->cap);
    }
    a->v[a->n] = p ? p : "";
    a->l[a->n] = p ? len : 0;
    a->n++;
}

void jq__args_str(jq__args *a, const char *s) {
    jq__args_push(a, s, strlen(s));
}

void jq__args_own(jq__args *a, char *s) {
    jq__args_str(a, s);
    a->owned[a->nowned++] = s; /* nowned <= n <= cap */
}

void jq__args_num(jq__args *a, long long v) {
    jq__args_own(a, sd_xasprintf("%lld", v));
}

void jq__args_free(jq__args *a) {
    for (int i = 0; i < a->nowned; i++)
        free(a->owned[i]);
    free(a->v);
    free(a->l);
    free(a->owned);
    a->v = NULL;
    a->l = NULL;
    a->owned = NULL;
    a->n = a->cap = a->nowned = 0;
}

int jq__args_begin(jq__args *a, const jq_config *cfg, const char *queue) {
    memset(a, 0, sizeof *a);
    if (jq_key_cfg(cfg, queue, "", a->base, sizeof a->base) < 0)
        return JQ_EINVAL;
    jq__args_str(a, a->base);
    jq__args_num(a, cfg->done_retention_ms);
    jq__args_num(a, cfg->cancelled_retention_ms);
    jq__args_num(a, cfg->dead_retention_ms);
    jq__args_num(a, cfg->housekeep_batch);
    return 0;
}

/* ---- Replies ------------------------------------------------------------------------------- */

/* The JQ_E* code of a script's status element (jq-common.lua's E_* values). */
int jq__lua_code(long long v) {
    switch (v) {
    case 0:
        return 0;
    case -1:
        return JQ_ESTALE;
    case -2:
        return JQ_ENOTFOUND;
    case -3:
        return JQ_EFULL;
    case -4:
        return JQ_ECANCELLED;
    case -5:
        return JQ_ESTATE;
    default:
        return SD_EREDIS;
    }
}

long long jq__elem_ll(const redisReply *e) {
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

void jq__elem_text(const redisReply *e, char *buf, size_t len) {
    if (e->type == REDIS_REPLY_STRING)
        snprintf(buf, len, "%.*s", (int)e->len, e->str);
    else if (e->type == REDIS_REPLY_INTEGER)
        snprintf(buf, len, "%lld", e->integer);
    else
        buf[0] = '\0';
}

char *jq__elem_dup(const redisReply *e, size_t *len) {
    if (e->type != REDIS_REPLY_STRING) {
        if (len)
            *len = 0;
        return sd_xstrdup("");
    }
    if (len)
        *len = e->len;
    char *s = sd_xmalloc(e->len + 1);
    memcpy(s, e->str, e->len);
    s[e->len] = '\0';
    return s;
}

/* Runs script `which` with the arguments of a (nkeys of them keys) and returns its reply, an
 * array of at least min elements, in *out; or an error code (the reply is freed). */
int jq__run(jq_client *c, int which, jq__args *a, int nkeys, size_t min, redisReply **out) {
    int err = 0;
    redisReply *reply = sd_redis_script(c->redis, &err, c->cfg.timeout_ms, jq__script(which), nkeys,
                                        a->n, a->v, a->l);
    if (!reply)
        return err ? err : SD_EDISCONNECTED;
    if (reply->type == REDIS_REPLY_ERROR) {
        sd_log(SD_LOG_ERROR, "jobqueue.script_error", "script=%s error=\"%.200s\"",
               jq__script(which)->name, reply->str);
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < min) {
        freeReplyObject(reply);
        return SD_EREDIS;
    }
    *out = reply;
    return 0;
}

/* Runs a script whose reply is {code, ...} and returns the code (freeing the reply when out is
 * NULL). */
int jq__run_code(jq_client *c, int which, jq__args *a, int nkeys, redisReply **out) {
    redisReply *reply = NULL;
    int rc = jq__run(c, which, a, nkeys, 1, &reply);
    jq__args_free(a);
    if (rc != 0)
        return rc;
    rc = jq__lua_code(jq__elem_ll(reply->element[0]));
    if (out)
        *out = reply;
    else
        freeReplyObject(reply);
    return rc;
}

/* ---- Enqueue ------------------------------------------------------------------------------- */

void jq_enqueue_opts_default(jq_enqueue_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->max_attempts = 5;
}

static int opts_check(const jq_config *cfg, const jq_new_job *j) {
    if (j->len > cfg->max_payload)
        return JQ_ETOOBIG;
    if (j->len > 0 && !j->payload)
        return JQ_EINVAL;
    const jq_enqueue_opts *o = j->opts;
    if (!o)
        return 0;
    if (o->delay_ms < 0 || o->delay_ms > YEAR_MS || o->priority < JQ_PRIORITY_MIN ||
        o->priority > JQ_PRIORITY_MAX || o->max_attempts < 1 || o->max_attempts > 1000)
        return JQ_EINVAL;
    if (o->idempotency_key && (o->idempotency_key[0] == '\0' || strlen(o->idempotency_key) > 256))
        return JQ_EINVAL;
    return 0;
}

int jq__enqueue_args(const jq_config *cfg, jq__args *a, const jq_new_job *jobs, size_t n) {
    if (n == 0 || n > 10000)
        return JQ_EINVAL;
    for (size_t i = 0; i < n; i++) {
        int rc = opts_check(cfg, &jobs[i]);
        if (rc != 0)
            return rc;
    }
    jq_enqueue_opts def;
    jq_enqueue_opts_default(&def);
    jq__args_num(a, cfg->max_ready);
    jq__args_num(a, cfg->idempotency_ttl_ms);
    jq__args_num(a, (long long)n);
    jq__args_num(a, def.max_attempts);
    for (size_t i = 0; i < n; i++) {
        const jq_enqueue_opts *o = jobs[i].opts ? jobs[i].opts : &def;
        jq__args_push(a, jobs[i].payload, jobs[i].len);
        /* Options: '' for the defaults, the common case, so it costs one argument, not five. */
        if (o->delay_ms == 0 && o->priority == 0 && o->max_attempts == def.max_attempts &&
            !o->idempotency_key) {
            jq__args_str(a, "");
            continue;
        }
        jq__args_own(a, sd_xasprintf("%lld %d %d%s%s", (long long)o->delay_ms, o->priority,
                                     o->max_attempts, o->idempotency_key ? " " : "",
                                     o->idempotency_key ? o->idempotency_key : ""));
    }
    return 0;
}

int jq__enqueue_parse(const redisReply *reply, size_t n, jq_enqueued *out) {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 || reply->elements % 2 != 0)
        return SD_EREDIS;
    /* {0, last, i, id, ...}: the jobs not named by a pair got last + 1, last + 2, ... */
    long long last = jq__elem_ll(reply->element[1]);
    size_t k = 2;
    for (size_t i = 0; i < n; i++) {
        if (k < reply->elements && jq__elem_ll(reply->element[k]) == (long long)i + 1) {
            jq__elem_text(reply->element[k + 1], out[i].id, sizeof out[i].id);
            out[i].created = 0;
            k += 2;
        } else {
            snprintf(out[i].id, sizeof out[i].id, "%lld", ++last);
            out[i].created = 1;
        }
    }
    return k == reply->elements ? 0 : SD_EREDIS;
}

int jq_enqueue_many(jq_client *c, const char *queue, const jq_new_job *jobs, size_t n,
                    jq_enqueued *out) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__enqueue_args(&c->cfg, &a, jobs, n);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    redisReply *reply = NULL;
    rc = jq__run_code(c, JQ_S_ENQUEUE, &a, 1, &reply);
    if (rc == 0)
        rc = jq__enqueue_parse(reply, n, out);
    if (reply)
        freeReplyObject(reply);
    return rc;
}

int jq_enqueue(jq_client *c, const char *queue, const void *payload, size_t len,
               const jq_enqueue_opts *opts, jq_enqueued *out) {
    jq_new_job j = {payload, len, opts};
    return jq_enqueue_many(c, queue, &j, 1, out);
}

/* ---- Reserve ------------------------------------------------------------------------------- */

void jq_job_clear(jq_job *job) {
    if (!job)
        return;
    free(job->payload);
    memset(job, 0, sizeof *job);
}

/* A reserved job comes as three values: its id, its record and its payload. The record is what
 * jq-common.lua saves (RECORD there, struct's '<BHHhsddddBB': little-endian), read here without
 * a table: state (1 byte), attempts and max attempts (2 bytes each), priority (2, signed), the
 * lease token (text ending in a 0 byte), lease until, created, updated and end of retention
 * (8-byte doubles, ms), cancel and cold flags (1 byte each). */
#define JOB_VALUES 3
#define RECORD_TAIL (4 * 8 + 2) /* what follows the token */

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int64_t le_ms(const unsigned char *p) {
    uint64_t bits = le64(p);
    double ms;
    memcpy(&ms, &bits, sizeof ms);
    return (int64_t)ms;
}

/* Fills job from e[0..3); returns 0, or SD_EREDIS when the record is not one. */
static int job_from(const redisReply *const *e, jq_job *job) {
    memset(job, 0, sizeof *job);
    if (e[1]->type != REDIS_REPLY_STRING)
        return SD_EREDIS;
    const unsigned char *r = (const unsigned char *)e[1]->str;
    size_t len = e[1]->len;
    const unsigned char *end = len > 7 ? memchr(r + 7, '\0', len - 7) : NULL;
    size_t token_len = end ? (size_t)(end - (r + 7)) : 0;
    if (!end || token_len == 0 || token_len >= sizeof job->token ||
        len != 7 + token_len + 1 + RECORD_TAIL)
        return SD_EREDIS;
    jq__elem_text(e[0], job->id, sizeof job->id);
    job->attempts = r[1] | r[2] << 8;
    job->max_attempts = r[3] | r[4] << 8;
    job->priority = (int16_t)(uint16_t)(r[5] | r[6] << 8);
    memcpy(job->token, r + 7, token_len);
    job->lease_until_ms = le_ms(end + 1);
    job->created_ms = le_ms(end + 1 + 8);
    job->payload = jq__elem_dup(e[2], &job->payload_len);
    return 0;
}

int jq__reserve_args(jq__args *a, int n, int64_t visibility_ms) {
    if (n < 1 || n > 1000 || visibility_ms < 1 || visibility_ms > 24LL * 3600 * 1000)
        return JQ_EINVAL;
    jq__args_num(a, n);
    jq__args_num(a, visibility_ms);
    return 0;
}

int jq__reserve_parse(const redisReply *reply, int n, jq_job *jobs, size_t *got, int64_t *next_ms) {
    *got = 0;
    size_t count = reply->elements >= 3 ? (size_t)jq__elem_ll(reply->element[2]) : 0;
    if (reply->elements != 3 + JOB_VALUES * count || count > (size_t)n)
        return SD_EREDIS;
    *next_ms = jq__elem_ll(reply->element[1]);
    for (size_t i = 0; i < count; i++) {
        int rc = job_from((const redisReply *const *)reply->element + 3 + JOB_VALUES * i, &jobs[i]);
        if (rc != 0) {
            while (i > 0)
                jq_job_clear(&jobs[--i]);
            return rc;
        }
    }
    *got = count;
    return 0;
}

/* One reserve; *next_ms gets the script's "next" (see jq-reserve.lua). */
static int reserve_once(jq_client *c, const char *queue, int n, int64_t visibility_ms, jq_job *jobs,
                        size_t *got, int64_t *next_ms) {
    *got = 0;
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__reserve_args(&a, n, visibility_ms);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    redisReply *reply = NULL;
    rc = jq__run_code(c, JQ_S_RESERVE, &a, 1, &reply);
    if (rc == 0)
        rc = jq__reserve_parse(reply, n, jobs, got, next_ms);
    if (reply)
        freeReplyObject(reply);
    return rc;
}

int jq_reserve(jq_client *c, const char *queue, int n, int64_t visibility_ms, jq_job *jobs,
               size_t *got) {
    int64_t next;
    return reserve_once(c, queue, n, visibility_ms, jobs, got, &next);
}

int jq_reserve_wait(jq_client *c, const char *queue, int n, int64_t visibility_ms, int64_t wait_ms,
                    jq_job *jobs, size_t *got) {
    uint64_t until = sd_now_ms() + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    char wake[JQ_QUEUE_MAX + 64];
    if (jq_key(c, queue, ":wake", wake, sizeof wake) < 0)
        return JQ_EINVAL;
    for (;;) {
        int64_t next = -1;
        int rc = reserve_once(c, queue, n, visibility_ms, jobs, got, &next);
        if (rc != 0 || *got > 0)
            return rc;
        uint64_t now = sd_now_ms();
        if (now >= until)
            return 0;
        int64_t wait = (int64_t)(until - now);
        if (next >= 0 && next + 1 < wait)
            wait = next + 1; /* wake when housekeeping has work: a job falls due, a lease ends */
        /* BLPOP takes seconds (a decimal since Redis 6); 0 would block for ever. */
        char secs[32];
        snprintf(secs, sizeof secs, "%.3f", (double)(wait < 1 ? 1 : wait) / 1000.0);
        int err = 0;
        sd_redis_set_timeout(c->redis, (int)wait + c->cfg.timeout_ms);
        redisReply *reply = sd_redis_command(c->redis, &err, "BLPOP %s %s", wake, secs);
        sd_redis_set_timeout(c->redis, c->cfg.timeout_ms);
        if (!reply)
            return err ? err : SD_EDISCONNECTED;
        int bad = reply->type == REDIS_REPLY_ERROR;
        freeReplyObject(reply);
        if (bad)
            return SD_EREDIS;
    }
}

/* ---- Calls about a reserved job ------------------------------------------------------------ */

int jq__lease_args(jq__args *a, const jq_job *job) {
    if (!job || !job->id[0] || !job->token[0])
        return JQ_EINVAL;
    jq__args_str(a, job->id);
    jq__args_str(a, job->token);
    return 0;
}

/* Starts a's list for a call about job: the queue, then the job's id and token. */
static int lease_args(jq__args *a, const jq_client *c, const char *queue, const jq_job *job) {
    if (jq__args_begin(a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__lease_args(a, job);
    if (rc != 0)
        jq__args_free(a);
    return rc;
}

int jq__ack_args(const jq_config *cfg, jq__args *a, const jq_ack_item *items, size_t n) {
    if (n == 0 || n > 1000)
        return JQ_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!items[i].job || !items[i].job->id[0] || !items[i].job->token[0] ||
            (items[i].len > 0 && !items[i].result))
            return JQ_EINVAL;
        if (items[i].len > cfg->max_result)
            return JQ_ETOOBIG;
    }
    size_t with_result = 0;
    for (size_t i = 0; i < n; i++)
        with_result += items[i].len > 0;
    jq__args_num(a, (long long)n);
    jq__args_num(a, (long long)with_result);
    for (size_t i = 0; i < n; i++) {
        jq__args_str(a, items[i].job->id);
        jq__args_str(a, items[i].job->token);
    }
    for (size_t i = 0; i < n; i++) {
        if (items[i].len > 0) {
            jq__args_num(a, (long long)i + 1);
            jq__args_push(a, items[i].result, items[i].len);
        }
    }
    return 0;
}

int jq__ack_parse(const redisReply *reply, size_t n, int *codes) {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 0)
        return SD_EREDIS;
    /* {i, code, ...} for the refused jobs: the others were acked. */
    memset(codes, 0, n * sizeof *codes);
    for (size_t k = 0; k < reply->elements; k += 2) {
        long long i = jq__elem_ll(reply->element[k]);
        if (i < 1 || (size_t)i > n)
            return SD_EREDIS;
        codes[i - 1] = jq__lua_code(jq__elem_ll(reply->element[k + 1]));
    }
    return 0;
}

int jq_ack_many(jq_client *c, const char *queue, const jq_ack_item *items, size_t n, int *codes) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__ack_args(&c->cfg, &a, items, n);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    redisReply *reply = NULL;
    rc = jq__run(c, JQ_S_ACK, &a, 1, 0, &reply);
    jq__args_free(&a);
    if (rc != 0)
        return rc;
    rc = jq__ack_parse(reply, n, codes);
    freeReplyObject(reply);
    return rc;
}

int jq_ack(jq_client *c, const char *queue, const jq_job *job, const void *result, size_t len) {
    jq_ack_item item = {job, result, len};
    int code = 0;
    int rc = jq_ack_many(c, queue, &item, 1, &code);
    return rc != 0 ? rc : code;
}

int jq__ack_effect_args(const jq_config *cfg, jq__args *a, const char *queue, const jq_job *job,
                        const void *result, size_t len, const jq_effect *fx) {
    static const char *const ops[] = {"incrby", "set", "hset"};
    if (!fx || (unsigned)fx->op > JQ_EFFECT_HSET || (fx->op != JQ_EFFECT_INCRBY && !fx->value) ||
        (len > 0 && !result) || !fx->name)
        return JQ_EINVAL;
    if (len > cfg->max_result || (fx->value && strlen(fx->value) > cfg->max_result))
        return JQ_ETOOBIG;
    size_t n = strnlen(fx->name, 129);
    if (n == 0 || n > 128)
        return JQ_EINVAL;
    char suffix[140], fxkey[JQ_QUEUE_MAX + 256];
    snprintf(suffix, sizeof suffix, ":fx:%s", fx->name);
    if (jq_key_cfg(cfg, queue, suffix, fxkey, sizeof fxkey) < 0)
        return JQ_EINVAL;
    int rc = jq__lease_args(a, job);
    if (rc != 0)
        return rc;
    /* KEYS[2], the effect's key, goes after KEYS[1]: push a copy the list owns, then move it
     * from the end to index 1. */
    char *k = sd_xasprintf("%s", fxkey);
    jq__args_str(a, k);
    a->owned[a->nowned++] = k; /* nowned <= n <= cap */
    const char *v = a->v[a->n - 1];
    size_t l = a->l[a->n - 1];
    memmove(a->v + 2, a->v + 1, sizeof *a->v * (size_t)(a->n - 2));
    memmove(a->l + 2, a->l + 1, sizeof *a->l * (size_t)(a->n - 2));
    a->v[1] = v;
    a->l[1] = l;
    jq__args_push(a, result, len);
    jq__args_str(a, ops[fx->op]);
    if (fx->op == JQ_EFFECT_INCRBY)
        jq__args_num(a, fx->delta);
    else
        jq__args_str(a, fx->value);
    return 0;
}

int jq_ack_effect(jq_client *c, const char *queue, const jq_job *job, const void *result,
                  size_t len, const jq_effect *fx) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc = jq__ack_effect_args(&c->cfg, &a, queue, job, result, len, fx);
    if (rc != 0) {
        jq__args_free(&a);
        return rc;
    }
    return jq__run_code(c, JQ_S_ACK_EFFECT, &a, 2, NULL);
}

int jq__fail_args(const jq_config *cfg, jq__args *a, const jq_job *job, const char *error,
                  const jq_fail_opts *opts) {
    jq_fail_opts def = {0, -1};
    if (!opts)
        opts = &def;
    if (!error)
        error = "";
    if (strlen(error) > cfg->max_result)
        return JQ_ETOOBIG;
    if (opts->retry_after_ms > YEAR_MS)
        return JQ_EINVAL;
    int64_t delay = opts->retry_after_ms;
    if (delay < 0) {
        uint64_t rnd = 0;
        if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
            rnd = sd_now_ns();
        delay =
            jq_backoff_ms(cfg->backoff_base_ms, cfg->backoff_max_ms, job ? job->attempts : 1, rnd);
    }
    int rc = jq__lease_args(a, job);
    if (rc != 0)
        return rc;
    jq__args_str(a, error);
    jq__args_str(a, opts->permanent ? "dead" : "retry");
    jq__args_num(a, delay);
    return 0;
}

int jq_fail(jq_client *c, const char *queue, const jq_job *job, const char *error,
            const jq_fail_opts *opts, jq_state *state) {
    jq__args a;
    if (jq__args_begin(&a, &c->cfg, queue) != 0)
        return JQ_EINVAL;
    int rc0 = jq__fail_args(&c->cfg, &a, job, error, opts);
    if (rc0 != 0) {
        jq__args_free(&a);
        return rc0;
    }
    redisReply *reply = NULL;
    int rc = jq__run_code(c, JQ_S_FAIL, &a, 1, &reply);
    if (reply) {
        char name[16] = "";
        if (reply->elements >= 2)
            jq__elem_text(reply->element[1], name, sizeof name);
        jq_state s;
        if (state && jq_state_parse(name, &s) == 0)
            *state = s;
        freeReplyObject(reply);
    }
    return rc;
}

int jq_extend(jq_client *c, const char *queue, jq_job *job, int64_t ms) {
    if (ms < 1 || ms > 24LL * 3600 * 1000)
        return JQ_EINVAL;
    jq__args a;
    if (lease_args(&a, c, queue, job) != 0)
        return JQ_EINVAL;
    jq__args_num(&a, ms);
    redisReply *reply = NULL;
    int rc = jq__run_code(c, JQ_S_EXTEND, &a, 1, &reply);
    if (reply) {
        if (rc == 0 && reply->elements >= 2)
            job->lease_until_ms = jq__elem_ll(reply->element[1]);
        freeReplyObject(reply);
    }
    return rc;
}

int jq_release(jq_client *c, const char *queue, const jq_job *job) {
    jq__args a;
    if (lease_args(&a, c, queue, job) != 0)
        return JQ_EINVAL;
    return jq__run_code(c, JQ_S_RELEASE, &a, 1, NULL);
}

int jq_progress(jq_client *c, const char *queue, const jq_job *job, const void *value, size_t len) {
    if (len > c->cfg.max_result)
        return JQ_ETOOBIG;
    if (len > 0 && !value)
        return JQ_EINVAL;
    jq__args a;
    if (lease_args(&a, c, queue, job) != 0)
        return JQ_EINVAL;
    jq__args_push(&a, value, len);
    return jq__run_code(c, JQ_S_PROGRESS, &a, 1, NULL);
}
