/*
 * ratelimit.c - policies, the Redis scripts (and the arguments of refunds and recovery charges),
 * and the blocking front end (rl_sync), at the end of this file. The guard that keeps every
 * decision within its deadline is in guard.c; the asynchronous, batching front end
 * (rl_limiter) in limiter.c.
 *
 * Design
 *  1. Every shared decision is made by one Lua script on Redis, with Redis's clock (TIME), over
 *     keys "<prefix>{<key>}:<policy>:<algorithm>": all keys of one check share the hash tag
 *     {<key>}, so a check stays on one Redis Cluster slot ('%', '{' and '}' in the key are
 *     percent-escaped, so that the braces always delimit that one tag). The scripts are
 *     rl-common.lua followed by one algorithm file, concatenated here once and sent with
 *     EVALSHA. A check whose cost exceeds a quota needs no state: it is denied for ever here,
 *     without a call.
 *  2. Everything around a Redis call (deny cache, circuit breaker, what a late or failed check
 *     is answered, the local fallback, counters) is the guard, in guard.c, which both front
 *     ends call: rl_sync below and rl_limiter in limiter.c.
 *     The circuit breaker (Nygard, "Release It!", ch. 5):
 *
 *          success          >= breaker_failures calls in a second, at least half failed
 *       +----------+   CLOSED  ------------------------------------------+
 *       |          |     ^                                                v
 *       +--------> +-----+                                              OPEN  (every check
 *                        |  probe succeeds                                |    falls back at
 *                        +------------------ HALF_OPEN <------------------+    once, no wait)
 *                                               |       cool-down passed
 *                                               +-----> OPEN  probe fails
 */
#include "ratelimit.h"
#include "rl_internal.h"
#include "rl_lua.h" /* the embedded scripts, declared by sd_embed_lua() (CMakeLists.txt) */

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd.h"

/* ---- Names and errors ----------------------------------------------------------------------- */

const char *rl_strerror(int code) {
    switch (code) {
    case RL_EPOLICY:
        return "invalid rate-limit policy";
    case RL_EARG:
        return "invalid argument";
    case RL_EBREAKER:
        return "circuit breaker open: Redis not asked";
    default:
        return sd_strerror(code);
    }
}

#define RL_ALGORITHMS 5
static const char *const algorithm_names[RL_ALGORITHMS] = {
    "token-bucket", "gcra", "sliding-window-log", "sliding-window-counter", "fixed-window"};
/* The short form that ends each Redis key, so two algorithms never read each other's state. It
 * is also the layout's schema version (DESIGN.md, contract 11): a script that changes how it
 * keeps a key's state changes its tag, so that instances of two versions running side by side
 * never read each other's values. The token bucket's "tb" held "<level> <t> <w> <e>"; "tb2"
 * holds the instant the bucket is full again, as gcra.lua keeps it. The sliding-window counter's
 * "swc" held "<i> <c> <p> <e>"; "swc2" holds its counts as one integer that INCRBY can add to. */
static const char *const algorithm_tags[RL_ALGORITHMS] = {"tb2", "gcra", "swl", "swc2", "fw"};

/* The index of text in names[0..n), or -1. */
static int name_index(const char *const *names, int n, const char *text) {
    for (int i = 0; i < n; i++) {
        if (strcmp(text, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

const char *rl_algorithm_name(rl_algorithm a) {
    return (unsigned)a < RL_ALGORITHMS ? algorithm_names[a] : "?";
}

int rl_algorithm_parse(const char *text, rl_algorithm *out) {
    int i = name_index(algorithm_names, RL_ALGORITHMS, text);
    if (i < 0) {
        return RL_EARG;
    }
    *out = (rl_algorithm)i;
    return 0;
}

static const char *const fail_mode_names[] = {"open", "closed", "local"};

const char *rl_fail_mode_name(rl_fail_mode m) {
    return (unsigned)m < 3 ? fail_mode_names[m] : "?";
}

int rl_fail_mode_parse(const char *text, rl_fail_mode *out) {
    int i = name_index(fail_mode_names, 3, text);
    if (i < 0) {
        return RL_EARG;
    }
    *out = (rl_fail_mode)i;
    return 0;
}

const char *rl_source_name(rl_source s) {
    static const char *const names[] = {"redis", "deny-cache", "fail-open", "fail-closed",
                                        "local", "policy",     "late"};
    return (unsigned)s < RL_SOURCE_COUNT ? names[s] : "?";
}

int rl_decision_violated(const rl_decision *d) {
    for (size_t i = 0; i < d->npolicies; i++) {
        if (d->policies[i].violated) {
            return (int)i;
        }
    }
    return -1;
}

/* ---- Policies ------------------------------------------------------------------------------- */

/* q * w * 1e6 must stay below 2^53 for the scripts' exact integer arithmetic (rl-common.lua). */
#define RL_MAX_QUOTA_WINDOW 9000000000LL
/* And instants like now + W: Redis time (~1.8e15 us) plus up to two windows of 1e15 us. */
#define RL_MAX_WINDOW 1000000000LL

static const char *skip_spaces(const char *s) {
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    return s;
}

/* Copies the token up to the next ';' (or the end), trimmed, into buf. Returns the rest. */
static const char *next_part(const char *s, char *buf, size_t len) {
    s = skip_spaces(s);
    const char *end = strchr(s, ';');
    size_t n = end ? (size_t)(end - s) : strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) {
        n--;
    }
    if (n >= len) {
        n = len - 1;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return end ? end + 1 : NULL;
}

int rl_policy_parse(const char *text, rl_policy *out, char *err, size_t errlen) {
    char part[128];
    rl_policy p = {{0}, 0, 0};
    const char *rest = next_part(text, part, sizeof(part));
    size_t n = strlen(part);
    if (n == 0 || n >= RL_POLICY_NAME_MAX) {
        snprintf(err, errlen, "policy '%s': the name must have 1 to %d characters", text,
                 RL_POLICY_NAME_MAX - 1);
        return RL_EPOLICY;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)part[i]) && !strchr("-_.", part[i])) {
            snprintf(err, errlen,
                     "policy '%s': the name may hold only letters, digits, '-', '_' and '.'", text);
            return RL_EPOLICY;
        }
    }
    memcpy(p.name, part, n + 1);
    while (rest) {
        rest = next_part(rest, part, sizeof(part));
        long long v;
        if (part[0] == '\0') {
            continue;
        }
        if ((part[0] != 'q' && part[0] != 'w') || part[1] != '=') {
            snprintf(err, errlen, "policy '%s': unknown part '%s' (expected q=QUOTA or w=SECONDS)",
                     text, part);
            return RL_EPOLICY;
        }
        if (sd_parse_ll(part + 2, 1, RL_MAX_QUOTA_WINDOW, &v) != 0) {
            snprintf(err, errlen, "policy '%s': %s must be a whole number from 1 to %lld", text,
                     part[0] == 'q' ? "the quota q" : "the window w (seconds)",
                     RL_MAX_QUOTA_WINDOW);
            return RL_EPOLICY;
        }
        if (part[0] == 'w' && v > RL_MAX_WINDOW) {
            snprintf(err, errlen,
                     "policy '%s': the window w must not exceed %lld seconds (exact arithmetic)",
                     text, RL_MAX_WINDOW);
            return RL_EPOLICY;
        }
        if (part[0] == 'q') {
            p.quota = v;
        } else {
            p.window_s = v;
        }
    }
    if (p.quota == 0 || p.window_s == 0) {
        snprintf(err, errlen, "policy '%s': both q=QUOTA and w=SECONDS are required", text);
        return RL_EPOLICY;
    }
    if (p.quota > RL_MAX_QUOTA_WINDOW / p.window_s) {
        snprintf(err, errlen, "policy '%s': q * w must not exceed %lld (exact arithmetic)", text,
                 RL_MAX_QUOTA_WINDOW);
        return RL_EPOLICY;
    }
    *out = p;
    return 0;
}

void rl_config_default(rl_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->algorithm = RL_TOKEN_BUCKET;
    snprintf(cfg->prefix, sizeof(cfg->prefix), "rl:");
    cfg->deadline_ms = 5;
    cfg->on_error = RL_FAIL_LOCAL;
    cfg->instances = 0;
    cfg->local_share_pct = 10;
    cfg->breaker_failures = 10;
    cfg->breaker_cooldown_ms = 1000;
    cfg->reply_timeout_ms = 1000;
    cfg->deny_cache_entries = 16384;
    cfg->local_entries = 16384;
    cfg->max_batch = 64;
    cfg->max_calls = 2;
}

int rl_config_add_policy(rl_config *cfg, const char *text, char *err, size_t errlen) {
    if (cfg->npolicies == RL_MAX_POLICIES) {
        snprintf(err, errlen, "at most %d policies", RL_MAX_POLICIES);
        return RL_EPOLICY;
    }
    int rc = rl_policy_parse(text, &cfg->policies[cfg->npolicies], err, errlen);
    if (rc == 0) {
        cfg->npolicies++;
    }
    return rc;
}

int rl_config_validate(const rl_config *cfg, char *err, size_t errlen) {
    if (cfg->npolicies == 0 || cfg->npolicies > RL_MAX_POLICIES) {
        snprintf(err, errlen, "between 1 and %d policies are required", RL_MAX_POLICIES);
        return RL_EPOLICY;
    }
    for (size_t i = 0; i < cfg->npolicies; i++) {
        const rl_policy *p = &cfg->policies[i];
        if (p->quota < 1 || p->window_s < 1 || p->quota > RL_MAX_QUOTA_WINDOW / p->window_s) {
            snprintf(err, errlen, "policy '%s': quota or window out of range", p->name);
            return RL_EPOLICY;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(p->name, cfg->policies[j].name) == 0) {
                snprintf(err, errlen, "policy name '%s' is used twice", p->name);
                return RL_EPOLICY;
            }
        }
    }
    if ((unsigned)cfg->algorithm >= RL_ALGORITHMS || (unsigned)cfg->on_error > 2) {
        snprintf(err, errlen, "unknown algorithm or failure mode");
        return RL_EARG;
    }
    for (size_t i = 0; cfg->algorithm == RL_SLIDING_WINDOW_LOG && i < cfg->npolicies; i++) {
        if (cfg->policies[i].quota > RL_LOG_MAX_QUOTA) {
            snprintf(err, errlen,
                     "policy '%s': the sliding-window log keeps one entry per unit, so its quota "
                     "must not exceed %d; use sliding-window-counter or gcra for larger quotas",
                     cfg->policies[i].name, RL_LOG_MAX_QUOTA);
            return RL_EPOLICY;
        }
    }
    if (strchr(cfg->prefix, '{') || strchr(cfg->prefix, '}')) {
        snprintf(err, errlen, "the key prefix must not contain '{' or '}' (hash tags)");
        return RL_EARG;
    }
    if (cfg->deadline_ms < 1 || cfg->instances < 0 || cfg->local_share_pct < 0 ||
        cfg->local_share_pct > 100 || cfg->breaker_failures < 1 || cfg->breaker_cooldown_ms < 1 ||
        cfg->deny_cache_entries < 0 || cfg->local_entries < 1 || cfg->max_batch < 1 ||
        cfg->max_calls < 1 || cfg->reply_timeout_ms < 1 || cfg->tags < 0 ||
        cfg->tags > RL_MAX_TAGS) {
        snprintf(err, errlen,
                 "deadline, breaker, table sizes and batch limits must be positive, "
                 "instances not negative, the local share from 0 to 100 percent, tags from 0 "
                 "to 16384");
        return RL_EARG;
    }
    return 0;
}

/*
 * Redis Cluster hashes what lies between the first '{' of a key and the first '}' after it. The
 * prefix holds no brace (rl_config_validate), so the tag opens where we put it; a '}' inside the
 * client's key would close it early (the key "}x" would give the empty tag of "rl:{}x}:...", and
 * then each policy's key would hash whole, to its own slot). So '}' is escaped, '{' too so that
 * a tag never looks nested to a reader, and '%' because it is the escape character: the tag of
 * distinct keys stays distinct. Ordinary keys are written as they are.
 */
static int tag_escaped(char c) {
    return c == '%' || c == '{' || c == '}';
}

/*
 * Shared tags (cfg->tags = N): tag t of N is written as a decimal number whose hash slot is
 * floor((2t + 1) * 16384 / 2N), the middle of the t-th of N equal ranges of slots, so that the N
 * tags lie evenly over the slot space and a cluster's default layout (contiguous ranges of
 * slots per master) gives each of M masters N / M of them when M divides N. The number is the
 * smallest that hashes to that slot: slot_names[] holds it for every slot, found once by
 * counting up from 0 (110,000 numbers cover all 16,384 slots).
 */
static int32_t slot_names[16384];
static pthread_once_t slot_names_once = PTHREAD_ONCE_INIT;

static void slot_names_init(void) {
    int left = 16384;
    for (int s = 0; s < 16384; s++) {
        slot_names[s] = -1;
    }
    for (int32_t j = 0; left > 0; j++) {
        char text[16];
        int n = snprintf(text, sizeof(text), "%d", (int)j);
        int s = sd_redis_key_slot(text, (size_t)n);
        if (slot_names[s] < 0) {
            slot_names[s] = j;
            left--;
        }
    }
}

/* The decimal number that names tag t of cfg->tags (see above). */
static int32_t tag_name(const rl_config *cfg, int t) {
    pthread_once(&slot_names_once, slot_names_init);
    return slot_names[(2 * (int64_t)t + 1) * 16384 / (2 * (int64_t)cfg->tags)];
}

int rl_config_tag(const rl_config *cfg, const char *key) {
    if (cfg->tags <= 0) {
        return -1;
    }
    uint64_t h = 14695981039346656037ULL; /* FNV-1a, 64 bits */
    for (const char *k = key; *k; k++) {
        h = (h ^ (unsigned char)*k) * 1099511628211ULL;
    }
    return (int)(h % (uint64_t)cfg->tags);
}

int rl_config_key(const rl_config *cfg, size_t i, const char *key, char *buf, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(cfg->prefix);
    if (n + 10 >= len) {
        return -1;
    }
    memcpy(buf, cfg->prefix, n);
    if (cfg->tags > 0) {
        /* "{<tag>}": at most six digits, written without snprintf (this runs for every check). */
        char digits[12];
        int d = 0;
        for (int32_t t = tag_name(cfg, rl_config_tag(cfg, key)); d == 0 || t > 0; t /= 10) {
            digits[d++] = (char)('0' + t % 10);
        }
        buf[n++] = '{';
        while (d > 0) {
            buf[n++] = digits[--d];
        }
        buf[n++] = '}';
    }
    buf[n++] = '{';
    for (const char *k = key; *k; k++) {
        if (n + 3 >= len) {
            return -1;
        }
        if (tag_escaped(*k)) {
            buf[n++] = '%';
            buf[n++] = hex[(unsigned char)*k >> 4];
            buf[n++] = hex[(unsigned char)*k & 15];
        } else {
            buf[n++] = *k;
        }
    }
    /* "}:<policy>:<algorithm>", copied piece by piece: this runs for every check. */
    const char *name = cfg->policies[i].name, *tag = algorithm_tags[cfg->algorithm];
    size_t name_len = strlen(name), tag_len = strlen(tag);
    if (n + 2 + name_len + 1 + tag_len + 1 > len) {
        return -1;
    }
    buf[n++] = '}';
    buf[n++] = ':';
    memcpy(buf + n, name, name_len);
    n += name_len;
    buf[n++] = ':';
    memcpy(buf + n, tag, tag_len);
    n += tag_len;
    buf[n] = '\0';
    return (int)n;
}

/* ---- Scripts -------------------------------------------------------------------------------- */

static sd_script scripts[RL_ALGORITHMS];
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

/* Each script is rl-common.lua, then the algorithm's file, then a third part where there is one:
 * the token bucket keeps its state as GCRA does (token-bucket.lua says why), so its script is
 * its file's explanation followed by gcra.lua's code. */
static void scripts_build(void) {
    const char *bodies[RL_ALGORITHMS] = {sd_lua_token_bucket, sd_lua_gcra,
                                         sd_lua_sliding_window_log, sd_lua_sliding_window_counter,
                                         sd_lua_fixed_window};
    const char *thirds[RL_ALGORITHMS] = {sd_lua_gcra, "", "", "", ""};
    for (int i = 0; i < RL_ALGORITHMS; i++) {
        char *body = sd_xasprintf("%s\n%s\n%s", sd_lua_rl_common, bodies[i], thirds[i]);
        scripts[i].name = algorithm_names[i];
        scripts[i].body = body; /* lives as long as the process */
        scripts[i].len = strlen(body);
        sd_script_init(&scripts[i]);
    }
}

sd_script *rl_script(rl_algorithm a) {
    pthread_once(&scripts_once, scripts_build);
    return &scripts[a];
}

/* The refund, its own script (rl-refund.lua): it knows each algorithm's key format, and is sent
 * only for a late reply that charged a check the client was refused. */
static sd_script refund_script = {"rl-refund", NULL, 0, ""};
static sd_script presence_script = {"rl-presence", NULL, 0, ""};
static pthread_once_t refund_once = PTHREAD_ONCE_INIT;

static void refund_build(void) {
    refund_script.body = sd_lua_rl_refund;
    refund_script.len = strlen(sd_lua_rl_refund);
    sd_script_init(&refund_script);
    presence_script.body = sd_lua_rl_presence;
    presence_script.len = strlen(sd_lua_rl_presence);
    sd_script_init(&presence_script);
}

sd_script *rl_presence_script(void) {
    pthread_once(&refund_once, refund_build);
    return &presence_script;
}

sd_script *rl_refund_script(void) {
    pthread_once(&refund_once, refund_build);
    return &refund_script;
}

int rl_refund_argv(const rl_config *cfg, long long cost, long long within_ms, char text[][24],
                   const char **argv, size_t *lens) {
    int n = 0;
    argv[n] = algorithm_tags[cfg->algorithm];
    lens[n] = strlen(argv[n]);
    n++;
    lens[n] = rl_cost_format(text[n], cost);
    argv[n] = text[n];
    n++;
    snprintf(text[n], 24, "%zu", cfg->npolicies);
    for (size_t i = 0; i < cfg->npolicies; i++) {
        snprintf(text[n + 1 + 2 * i], 24, "%lld", cfg->policies[i].quota);
        snprintf(text[n + 2 + 2 * i], 24, "%lld", cfg->policies[i].window_s);
    }
    snprintf(text[n + 1 + 2 * cfg->npolicies], 24, "%lld", within_ms);
    for (int k = n + 2 + 2 * (int)cfg->npolicies; n < k; n++) {
        argv[n] = text[n];
        lens[n] = strlen(text[n]);
    }
    return n;
}

/* ---- Checks: arguments and replies ---------------------------------------------------------- */

uint64_t rl_key_hash(const char *key, size_t len) {
    /* FNV-1a (Fowler, Noll, Vo), then the splitmix64 finalizer so that the low bits used as a
     * table index depend on every byte. */
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)key[i]) * 1099511628211ULL;
    }
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

int rl_check_args(const char *key, long long cost) {
    if (!key) {
        return RL_EARG;
    }
    size_t n = strlen(key);
    return n == 0 || n > RL_KEY_MAX || cost < 0 || cost > RL_COST_MAX ? RL_EARG : 0;
}

size_t rl_cost_format(char *buf, long long cost) {
    size_t n = sd_format_uint(buf, (uint64_t)cost);
    buf[n] = '\0';
    return n;
}

int rl_decide_never(const rl_config *cfg, long long cost, rl_decision *d) {
    int never = 0;
    for (size_t i = 0; i < cfg->npolicies; i++) {
        never |= cost > cfg->policies[i].quota;
    }
    if (!never) {
        return 0;
    }
    /* No state can make such a check pass, so Redis is not asked: the answer is the same
     * whether Redis is up, slow or down, and a deny cache entry of the key cannot get in the
     * way. What remains of each quota is unknown without asking, hence -1. */
    memset(d, 0, sizeof(*d));
    d->retry_after_ms = RL_NEVER;
    d->source = RL_SOURCE_POLICY;
    d->npolicies = cfg->npolicies;
    for (size_t i = 0; i < cfg->npolicies; i++) {
        d->policies[i].remaining = -1;
        d->policies[i].reset_ms = -1;
        d->policies[i].violated = cost > cfg->policies[i].quota;
    }
    return 1;
}

void rl_policy_args_init(rl_policy_args *a, const rl_config *cfg) {
    a->count = 1 + 2 * cfg->npolicies;
    snprintf(a->text[0], sizeof(a->text[0]), "%zu", cfg->npolicies);
    for (size_t i = 0; i < cfg->npolicies; i++) {
        snprintf(a->text[1 + 2 * i], sizeof(a->text[0]), "%lld", cfg->policies[i].quota);
        snprintf(a->text[2 + 2 * i], sizeof(a->text[0]), "%lld", cfg->policies[i].window_s);
    }
    for (size_t i = 0; i < a->count; i++) {
        a->argv[i] = a->text[i];
        a->len[i] = strlen(a->text[i]);
    }
}

int rl_decision_from_reply(const rl_config *cfg, const redisReply *reply, size_t check,
                           long long cost, rl_decision *d) {
    size_t P = cfg->npolicies, stride = 2 + 2 * P;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < (check + 1) * stride) {
        return SD_EREDIS;
    }
    redisReply **e = reply->element + check * stride;
    for (size_t i = 0; i < stride; i++) {
        if (e[i]->type != REDIS_REPLY_INTEGER) {
            return SD_EREDIS;
        }
    }
    memset(d, 0, sizeof(*d));
    d->allowed = e[0]->integer == 1;
    d->retry_after_ms = e[1]->integer;
    d->source = RL_SOURCE_REDIS;
    d->npolicies = P;
    for (size_t i = 0; i < P; i++) {
        d->policies[i].remaining = e[2 + 2 * i]->integer;
        d->policies[i].reset_ms = e[3 + 2 * i]->integer;
        /* A policy violated a denial if it could not cover the cost (or never can). */
        d->policies[i].violated =
            !d->allowed && (d->policies[i].remaining < cost || cost > cfg->policies[i].quota);
    }
    return 0;
}

/* ---- Recovery charges ------------------------------------------------------------------------ */

void rl_charge_args_init(rl_charge_args *a, const rl_config *cfg, const rl_policy_args *pa,
                         const char *key, long long units) {
    size_t P = cfg->npolicies;
    size_t n = (size_t)(units < RL_CHARGE_MAX_CHECKS ? units : RL_CHARGE_MAX_CHECKS);
    a->checks = (int)n;
    a->nkeys = (int)(n * P);
    a->argc = (int)(n * P + pa->count + n);
    a->argv = sd_xmalloc((size_t)a->argc * sizeof(*a->argv));
    a->lens = sd_xmalloc((size_t)a->argc * sizeof(*a->lens));
    a->keys = sd_xmalloc(P * RL_REDIS_KEY_MAX);
    size_t lens[RL_MAX_POLICIES];
    for (size_t j = 0; j < P; j++) {
        lens[j] =
            (size_t)rl_config_key(cfg, j, key, a->keys + j * RL_REDIS_KEY_MAX, RL_REDIS_KEY_MAX);
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < P; j++) {
            a->argv[k] = a->keys + j * RL_REDIS_KEY_MAX;
            a->lens[k++] = lens[j];
        }
    }
    for (size_t i = 0; i < pa->count; i++) {
        a->argv[k] = pa->argv[i];
        a->lens[k++] = pa->len[i];
    }
    for (size_t i = 0; i < n; i++) {
        a->argv[k] = "1";
        a->lens[k++] = 1;
    }
}

void rl_charge_args_clear(rl_charge_args *a) {
    free(a->argv);
    free(a->lens);
    free(a->keys);
}

long long rl_charge_counted(const rl_config *cfg, const redisReply *reply) {
    size_t stride = 2 + 2 * cfg->npolicies;
    long long n = 0;
    if (reply->type != REDIS_REPLY_ARRAY) {
        return 0;
    }
    for (size_t i = 0; i + stride <= reply->elements; i += stride) {
        n += reply->element[i]->type == REDIS_REPLY_INTEGER && reply->element[i]->integer == 1;
    }
    return n;
}

/* ---- The synchronous limiter ---------------------------------------------------------------- */

/*
 * One check is one deadline (deadline_ms), shared by its steps: connecting (only while there is
 * no connection object yet), EVALSHA, and EVAL after a NOSCRIPT reply. sd_redis_script gives each
 * step the time that is left as its socket timeout, so a slow reply to the first leaves less for
 * the second.
 *
 * One sd_redis lives as long as the limiter, created even when Redis is down at start
 * (sd_redis_new): it reconnects by itself, with capped exponential backoff, failing at once
 * while the backoff runs, so a Redis that stays down costs one connect attempt (and one log
 * line) per backoff step, not one per check. A reconnect inside sd_redis is bounded by the
 * command timeout too, which is the time left, so it cannot stretch a check past its deadline.
 */
struct rl_sync {
    rl_config cfg;
    sd_redis *redis;
    rl_policy_args args;
    rl_guard guard;
};

int rl_config_check(const rl_config *cfg) {
    char err[256];
    int rc = rl_config_validate(cfg, err, sizeof(err));
    if (rc < 0) {
        sd_log(SD_LOG_ERROR, "ratelimit.config", "error=\"%s\"", err);
    }
    return rc;
}

int rl_sync_new(const sd_redis_url *url, const rl_config *cfg, rl_sync **out) {
    int rc = rl_config_check(cfg);
    if (rc < 0) {
        return rc;
    }
    rl_sync *l = sd_xcalloc(1, sizeof(*l));
    l->cfg = *cfg;
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    /* A connect is part of a check when the connection is down: it gets the check's deadline. */
    opts.connect_timeout_ms = cfg->deadline_ms;
    opts.command_timeout_ms = cfg->deadline_ms;
    /* Loaded on every (re)connect, so a check after a start or a restart needs one round trip. */
    sd_script *script = rl_script(cfg->algorithm);
    opts.scripts = &script;
    opts.nscripts = 1;
    rl_policy_args_init(&l->args, &l->cfg);
    rl_guard_init(&l->guard, &l->cfg);
    l->redis = sd_redis_new(url, &opts);
    *out = l;
    return 0;
}

/* One script call for one check, within timeout_ms. Returns 0 with *d filled, or a negative
 * code. */
static int sync_call(rl_sync *l, const char *key, long long cost, int timeout_ms, rl_decision *d) {
    size_t P = l->cfg.npolicies;
    char keys[RL_MAX_POLICIES][RL_REDIS_KEY_MAX];
    char cost_text[24];
    const char *argv[RL_MAX_POLICIES + RL_POLICY_ARGS + 1];
    size_t lens[RL_MAX_POLICIES + RL_POLICY_ARGS + 1];
    size_t argc = 0;
    for (size_t i = 0; i < P; i++) {
        int n = rl_config_key(&l->cfg, i, key, keys[i], sizeof(keys[i]));
        argv[argc] = keys[i];
        lens[argc++] = (size_t)n;
    }
    for (size_t i = 0; i < l->args.count; i++) {
        argv[argc] = l->args.argv[i];
        lens[argc++] = l->args.len[i];
    }
    lens[argc] = rl_cost_format(cost_text, cost);
    argv[argc++] = cost_text;

    int err = 0;
    l->guard.stats.script_calls++;
    l->guard.stats.batched_checks++;
    /* EVALSHA, and EVAL after a NOSCRIPT, within the one deadline. */
    redisReply *reply = sd_redis_script(l->redis, &err, timeout_ms, rl_script(l->cfg.algorithm),
                                        (int)P, (int)argc, argv, lens);
    if (!reply && err == SD_ETIMEDOUT) {
        /* The command may have reached Redis and run: see rl_stats.in_doubt. */
        l->guard.stats.in_doubt++;
    }
    if (!reply) {
        return err ? err : SD_EDISCONNECTED;
    }
    int rc = rl_decision_from_reply(&l->cfg, reply, 0, cost, d);
    if (rc < 0 && reply->type == REDIS_REPLY_ERROR) {
        sd_log(SD_LOG_WARN, "ratelimit.script_error", "error=\"%.200s\"", reply->str);
    }
    freeReplyObject(reply);
    return rc;
}

/* Redis answered: charge what the local fallback admitted meanwhile (clamped), each call within
 * the deadline. A charge that fails is dropped (the fleet then admits more than q: README). */
static void sync_charge_pending(rl_sync *l) {
    char *key;
    long long units;
    while (rl_guard_pending_pop(&l->guard, &key, &units)) {
        rl_charge_args a;
        rl_charge_args_init(&a, &l->cfg, &l->args, key, units);
        int err = 0;
        redisReply *reply =
            sd_redis_script(l->redis, &err, l->cfg.deadline_ms, rl_script(l->cfg.algorithm),
                            a.nkeys, a.argc, a.argv, a.lens);
        if (reply) {
            l->guard.stats.recovery_charged += (uint64_t)rl_charge_counted(&l->cfg, reply);
            freeReplyObject(reply);
        }
        rl_charge_args_clear(&a);
        free(key);
    }
}

int rl_sync_check(rl_sync *l, const char *key, long long cost, rl_decision *out) {
    if (rl_check_args(key, cost) < 0) {
        return RL_EARG;
    }
    rl_guard *g = &l->guard;
    uint64_t start = sd_now_ns();
    uint64_t hash = rl_key_hash(key, strlen(key));
    /* The guard's steps (guard.c). A blocking call cannot wait for a late reply, so a check
     * that timed out stays in doubt (counted as charged) and is answered as late. */
    if (!rl_guard_before(g, key, hash, cost, 1, 1, start, out)) {
        int rc = sync_call(l, key, cost, l->cfg.deadline_ms, out);
        uint64_t now = sd_now_ns();
        rl_guard_call_done(g, rc, now);
        rl_guard_after(g, key, hash, cost, start, rc, rc == SD_ETIMEDOUT, now, out);
        if (rc == 0) {
            sync_charge_pending(l);
        }
    }
    rl_guard_count(g, out);
    return 0;
}

void rl_sync_stats(const rl_sync *l, rl_stats *out) {
    rl_guard_stats(&l->guard, out);
}

void rl_sync_free(rl_sync *l) {
    if (!l) {
        return;
    }
    sd_redis_free(l->redis);
    rl_guard_clear(&l->guard);
    free(l);
}
