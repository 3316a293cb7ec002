/*
 * main.c - the `ratelimit` command.
 *
 *   ratelimit serve --listen 127.0.0.1:PORT --policy 'NAME;q=Q;w=W' [...]
 *       A gateway: every request except /healthz, /metrics and POST /v1/check is checked (cost 1)
 *       against all policies, keyed by a header (default X-Api-Key) or else the client address,
 *       and answered 200 (allowed) or 429 (denied, application/problem+json). Both carry the
 *       RateLimit-Policy and RateLimit fields of draft-ietf-httpapi-ratelimit-headers-10; a 429
 *       carries Retry-After in whole seconds, rounded up. POST /v1/check {"key": K, "cost": N}
 *       answers the decision as JSON, for services written in other languages.
 *   ratelimit check --policy ... --key K [--cost N]
 *       One decision, printed as JSON.
 *
 * Options are parsed by the command kit (cli.h), from one table per command plus the table both
 * share, and all checked before Redis is resolved, so a usage error starts nothing. A stop
 * (SIGINT/SIGTERM) lets requests in flight finish for --grace-ms, by default the decision deadline
 * plus 2 s, and frees the limiter once the server has closed (on_http_stopped).
 *
 * Exit status: 0 ok, 1 runtime failure, 2 usage error.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "http.h"
#include "ratelimit.h"
#include "rl_http.h"
#include "redis_server.h"
#include "sd.h"

/* The largest request body `serve` accepts (413 above it). */
#define RL_SERVE_MAX_BODY 8192

/* The problem type of draft-ietf-httpapi-ratelimit-headers-10, section 5.1. */
#define QUOTA_EXCEEDED "https://iana.org/assignments/http-problem-types#quota-exceeded"
#define REDUCED_CAPACITY                                                                           \
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"

/* ---- Options -------------------------------------------------------------------------------- */

typedef struct options {
    rl_config cfg;
    const char *redis;
    char *password; /* from --redis-password-file; owned, wiped and freed by run() */
    const char *listen;
    const char *key_header;
    sd_http_trust trust; /* --trust-proxy: whose X-Forwarded-For names the client */
    const char *key;
    long long cost;
    long long deadline_ms, instances, breaker_failures, breaker_cooldown_ms, max_batch;
    long long reply_timeout_ms, local_share_pct, tags;
    long long grace_ms; /* -1: derived from the deadline */
    int no_deny_cache, json;
} options;

static int policy_parse(const char *value, void *udata, char *err, size_t len) {
    char why[200];
    if (rl_config_add_policy(udata, value, why, sizeof(why)) != 0) {
        snprintf(err, len, "'%s': %s", value, why);
        return -1;
    }
    return 0;
}

static int algorithm_parse(const char *value, void *udata, char *err, size_t len) {
    if (rl_algorithm_parse(value, &((rl_config *)udata)->algorithm) != 0) {
        snprintf(err, len,
                 "wants token-bucket, gcra, sliding-window-log, sliding-window-counter or "
                 "fixed-window, got '%s'",
                 value);
        return -1;
    }
    return 0;
}

static int prefix_parse(const char *value, void *udata, char *err, size_t len) {
    rl_config *cfg = udata;
    if (strlen(value) >= sizeof(cfg->prefix)) {
        snprintf(err, len, "is too long (at most %zu bytes)", sizeof(cfg->prefix) - 1);
        return -1;
    }
    snprintf(cfg->prefix, sizeof(cfg->prefix), "%s", value);
    return 0;
}

static int fail_mode_parse(const char *value, void *udata, char *err, size_t len) {
    if (rl_fail_mode_parse(value, &((rl_config *)udata)->on_error) != 0) {
        snprintf(err, len, "wants open, closed or local, got '%s'", value);
        return -1;
    }
    return 0;
}

/* --redis-password-file: the file's first line, so that the password never appears in argv
 * (DESIGN.md, "Secrets"). */
static int password_file_parse(const char *value, void *udata, char *err, size_t len) {
    options *o = udata;
    FILE *f = fopen(value, "r");
    if (!f) {
        snprintf(err, len, "cannot read '%s': %s", value, strerror(errno));
        return -1;
    }
    char line[1024] = "";
    int ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    if (!ok || line[0] == '\0') {
        snprintf(err, len, "'%s' holds no password on its first line", value);
        return -1;
    }
    if (o->password) {
        memset(o->password, 0, strlen(o->password));
        free(o->password);
    }
    o->password = sd_xstrdup(line);
    memset(line, 0, sizeof(line));
    return 0;
}

/* The grace period of a stop when --grace-ms is not given: the longest a request in flight can
 * take (its decision's deadline; the limiter answers every check within it) and the 2 s the
 * stop always had on top, to write the responses. */
static long long default_grace_ms(long long deadline_ms) {
    return deadline_ms + 2000;
}

/* Parses argv after the command name. Returns SD_CLI_OK, or a result for sd_cli_exit_status. */
static int parse_options(const char *cmd, int argc, char **argv, options *o) {
    int serve = strcmp(cmd, "serve") == 0;
    rl_config_default(&o->cfg);
    o->key_header = "X-Api-Key";
    o->cost = 1;
    o->deadline_ms = o->cfg.deadline_ms;
    o->instances = o->cfg.instances;
    o->breaker_failures = o->cfg.breaker_failures;
    o->breaker_cooldown_ms = o->cfg.breaker_cooldown_ms;
    o->max_batch = o->cfg.max_batch;
    o->reply_timeout_ms = o->cfg.reply_timeout_ms;
    o->local_share_pct = o->cfg.local_share_pct;
    o->grace_ms = -1;
    const sd_cli_opt common_opts[] = {
        {"--policy", "'NAME;q=Q;w=W'",
         "a quota of Q per W seconds (repeatable, at least one; all are\n"
         "checked together and charged only if all allow)",
         .parse = policy_parse, .udata = &o->cfg, .required = 1},
        {"--algorithm", "NAME",
         "token-bucket (default), gcra, sliding-window-log,\n"
         "sliding-window-counter, fixed-window",
         .parse = algorithm_parse, .udata = &o->cfg},
        {"--redis", "URL",
         "Redis to use (else REDIS_URL, else a private redis-server);\n"
         "a password belongs in REDIS_URL, where other users cannot read it",
         .parse = sd_cli_redis_parse, .udata = &o->redis},
        {"--redis-password-file", "FILE",
         "the Redis password, from the first line of FILE (replaces one\n"
         "in the URL); needs --redis or REDIS_URL",
         .parse = password_file_parse, .udata = o},
        {"--prefix", "TEXT", "key prefix (default rl:)", .parse = prefix_parse, .udata = &o->cfg},
        {"--tags", "N",
         "spread the keys over N shared hash tags, so that on a Redis\n"
         "Cluster a batch needs at most N calls (default 0: one tag per\n"
         "key); part of the key names, the same for every gateway",
         .integer = &o->tags, .min = 0, .max = RL_MAX_TAGS},
        {"--deadline-ms", "N", "every decision within N ms (default 5)", .integer = &o->deadline_ms,
         .min = 1, .max = 60000},
        {"--on-redis-error", "MODE",
         "open, closed or local (default local: a share r/N in this\n"
         "process, r what Redis last reported left)",
         .parse = fail_mode_parse, .udata = &o->cfg},
        {"--instances", "N",
         "N for the local fallback's share r/N (default: the live\n"
         "gateways found through Redis)",
         .integer = &o->instances, .min = 1, .max = 100000},
        {"--local-share-pct", "P",
         "while Redis is unreachable, the gateways admit at most P% of q\n"
         "per key and window between them (default 10; 0 admits none)",
         .integer = &o->local_share_pct, .min = 0, .max = 100},
        {"--breaker-failures", "N",
         "the breaker opens once N calls ended within a second and at\n"
         "least half failed (default 10)",
         .integer = &o->breaker_failures, .min = 1, .max = 1000000},
        {"--breaker-cooldown-ms", "N", "time before probing Redis again (default 1000)",
         .integer = &o->breaker_cooldown_ms, .min = 1, .max = 3600000},
        {"--no-deny-cache", NULL, "always ask Redis, even for a key already denied",
         .flag = &o->no_deny_cache},
        {0}};
    const sd_cli_opt serve_opts[] = {
        {"--listen", "HOST:PORT",
         "address to listen on (required); port 0 picks a free port\n"
         "(the address is printed as \"listening on http://HOST:PORT\")",
         .parse = sd_cli_listen_parse, .udata = &o->listen, .required = 1},
        {"--key-header", "NAME",
         "header that names the client (default X-Api-Key); without it\n"
         "the client address is the key",
         .text = &o->key_header},
        SD_CLI_TRUST_OPT(&o->trust),
        {"--max-batch", "N", "checks decided per Redis script call (default 64)",
         .integer = &o->max_batch, .min = 1, .max = 4096},
        {"--reply-timeout-ms", "N",
         "wait up to N ms for a reply that missed its deadline, to\n"
         "reconcile it (refund a refused check Redis charged); a call\n"
         "unanswered by then counts as failed (default 1000)",
         .integer = &o->reply_timeout_ms, .min = 1, .max = 600000},
        {"--grace-ms", "N",
         "on SIGINT/SIGTERM, let requests in flight finish for up to N ms\n"
         "(default: --deadline-ms + 2000; never below --deadline-ms)",
         .integer = &o->grace_ms, .min = 1, .max = 3600000},
        {0}};
    const sd_cli_opt check_opts[] = {
        {"--key", "KEY", "the client to check (required, 1 to 512 bytes)", .text = &o->key,
         .required = 1},
        {"--cost", "N", "units to take (default 1; 0 only looks)", .integer = &o->cost, .min = 0,
         .max = (double)RL_COST_MAX},
        {"--json", NULL, "JSON output (the default and only format)", .flag = &o->json},
        {0}};
    const sd_cli_cmd serve_cmd = {
        .name = "ratelimit serve",
        .synopsis = "--listen HOST:PORT --policy 'NAME;q=Q;w=W' [options]",
        .about = "Runs the gateway: every request except /healthz, /metrics and POST /v1/check is "
                 "checked\n"
                 "(cost 1) against all policies and answered 200 or 429. Port 0 picks a free port.",
        .opts = serve_opts,
        .shared = common_opts,
        .footer = "Exit status: 0 stopped by a signal, 1 runtime failure, 2 usage error."};
    const sd_cli_cmd check_cmd = {
        .name = "ratelimit check",
        .synopsis = "--policy 'NAME;q=Q;w=W' --key KEY [--cost N] [options]",
        .about =
            "Makes one decision and prints it as JSON. Exit status 0 whether allowed or denied; 1 "
            "if\n"
            "Redis could not be asked (the fallback's decision is still printed); 2 usage error.",
        .opts = check_opts,
        .shared = common_opts};
    const sd_cli_cmd *c = serve ? &serve_cmd : &check_cmd;
    int rc = sd_cli_parse(c, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK) {
        return rc;
    }
    o->cfg.deadline_ms = (int)o->deadline_ms;
    o->cfg.instances = (int)o->instances;
    o->cfg.breaker_failures = (int)o->breaker_failures;
    o->cfg.breaker_cooldown_ms = (int)o->breaker_cooldown_ms;
    o->cfg.max_batch = (int)o->max_batch;
    o->cfg.reply_timeout_ms = (int)o->reply_timeout_ms;
    o->cfg.local_share_pct = (int)o->local_share_pct;
    o->cfg.tags = (int)o->tags;
    if (o->no_deny_cache) {
        o->cfg.deny_cache_entries = 0;
    }
    char err[256];
    if (rl_config_validate(&o->cfg, err, sizeof(err)) != 0) {
        sd_cli_usage_error(c->name, "%s", err);
        return SD_CLI_USAGE;
    }
    const char *env_url = getenv("REDIS_URL");
    if (o->password && !o->redis && !(env_url && *env_url)) {
        sd_cli_usage_error(c->name, "--redis-password-file needs --redis URL or REDIS_URL (a "
                                    "private redis-server has no password)");
        return SD_CLI_USAGE;
    }
    if (serve && o->grace_ms >= 0 && o->grace_ms < o->deadline_ms) {
        sd_cli_usage_error(c->name,
                           "--grace-ms %lld is below --deadline-ms %lld: a stop would cut off "
                           "requests still within their deadline",
                           o->grace_ms, o->deadline_ms);
        return SD_CLI_USAGE;
    }
    if (o->grace_ms < 0) {
        o->grace_ms = default_grace_ms(o->deadline_ms);
    }
    if (!serve && (strlen(o->key) == 0 || strlen(o->key) > RL_KEY_MAX)) {
        sd_cli_usage_error(c->name, "--key wants 1 to %d bytes, got %zu", RL_KEY_MAX,
                           strlen(o->key));
        return SD_CLI_USAGE;
    }
    return SD_CLI_OK;
}

/* ---- Decisions as JSON and as header fields -------------------------------------------------- */

/* The policy a decision is reported for: the violated one, else the one with least left. */
static int binding_policy(const rl_decision *d) {
    int v = rl_decision_violated(d);
    if (v >= 0) {
        return v;
    }
    int best = 0;
    for (size_t i = 1; i < d->npolicies; i++) {
        if (d->policies[i].remaining < d->policies[best].remaining) {
            best = (int)i;
        }
    }
    return best;
}

static json_t *decision_json(const rl_config *cfg, const rl_decision *d) {
    int b = binding_policy(d);
    json_t *policies = json_array();
    for (size_t i = 0; i < d->npolicies; i++) {
        json_array_append_new(policies, json_pack("{s:s, s:I, s:I, s:I, s:I, s:b}", "name",
                                                  cfg->policies[i].name, "quota",
                                                  (json_int_t)cfg->policies[i].quota, "window_s",
                                                  (json_int_t)cfg->policies[i].window_s,
                                                  "remaining", (json_int_t)d->policies[i].remaining,
                                                  "reset_ms", (json_int_t)d->policies[i].reset_ms,
                                                  "violated", d->policies[i].violated));
    }
    return json_pack("{s:b, s:I, s:I, s:I, s:s, s:s, s:o}", "allowed", d->allowed, "remaining",
                     (json_int_t)d->policies[b].remaining, "reset_ms",
                     (json_int_t)d->policies[b].reset_ms, "retry_after_ms",
                     (json_int_t)d->retry_after_ms, "policy", cfg->policies[b].name, "source",
                     rl_source_name(d->source), "policies", policies);
}

/* ---- serve ---------------------------------------------------------------------------------- */

typedef struct gateway {
    rl_limiter *limiter;
    const rl_config *cfg;
    const char *key_header;
    sd_http_server *http;
    long in_flight; /* checks waiting for their decision: what a graceful stop waits for */
} gateway;

typedef struct pending {
    gateway *gw;
    sd_http_req *req;
    int api; /* POST /v1/check: answer with the decision as JSON */
} pending;

static void respond_denied(sd_http_req *req, const rl_config *cfg, const rl_decision *d) {
    char retry[32], detail[256];
    if (d->retry_after_ms != RL_NEVER) {
        snprintf(retry, sizeof(retry), "%lld", rl_seconds_up(d->retry_after_ms));
        sd_http_req_add_header(req, "Retry-After", retry);
    }
    /* A request that can never pass is a 429 whatever Redis is doing: no store is needed to
     * know it, so "temporarily unavailable" would send the client back in vain. */
    if (d->source == RL_SOURCE_FAIL_CLOSED && d->retry_after_ms != RL_NEVER) {
        sd_http_req_respond_problem(req, 503, REDUCED_CAPACITY, "Rate limiter unavailable",
                                    "the rate limiter cannot reach its store and fails closed",
                                    NULL);
        return;
    }
    json_t *violated = json_array();
    for (size_t i = 0; i < d->npolicies; i++) {
        if (d->policies[i].violated) {
            json_array_append_new(violated, json_string(cfg->policies[i].name));
        }
    }
    const rl_policy *p = &cfg->policies[binding_policy(d)];
    if (d->source == RL_SOURCE_LATE) {
        snprintf(detail, sizeof(detail),
                 "the rate limiter's store answered late, so this request was not counted; "
                 "retry in %lld ms",
                 d->retry_after_ms);
    } else if (d->retry_after_ms == RL_NEVER) {
        snprintf(detail, sizeof(detail),
                 "policy '%s' allows %lld per %lld s: this request "
                 "costs more and can never be allowed",
                 p->name, p->quota, p->window_s);
    } else {
        snprintf(detail, sizeof(detail), "policy '%s' allows %lld per %lld s; retry in %lld ms",
                 p->name, p->quota, p->window_s, d->retry_after_ms);
    }
    json_t *extra = json_pack("{s:o, s:s, s:I}", "violated-policies", violated, "policy", p->name,
                              "retry_after_ms", (json_int_t)d->retry_after_ms);
    sd_http_req_respond_problem(req, 429, QUOTA_EXCEEDED, "Quota exceeded", detail, extra);
}

static void on_decision(const rl_decision *d, void *udata) {
    pending *p = udata;
    const rl_config *cfg = p->gw->cfg;
    p->gw->in_flight--;
    rl_http_add_fields(p->req, cfg, d);
    if (p->api) {
        sd_http_req_respond_json(p->req, 200, decision_json(cfg, d));
    } else if (d->allowed) {
        sd_http_req_respond_json(p->req, 200, json_pack("{s:b}", "allowed", 1));
    } else {
        respond_denied(p->req, cfg, d);
    }
    free(p);
}

static void check_async(gateway *gw, sd_http_req *req, const char *key, long long cost, int api) {
    pending *p = sd_xmalloc(sizeof(*p));
    p->gw = gw;
    p->req = req;
    p->api = api;
    int rc = rl_limiter_check(gw->limiter, key, cost, on_decision, p);
    if (rc == 0) {
        gw->in_flight++;
    } else {
        free(p);
        if (rc == RL_EARG) {
            /* Callers validate the cost; what is left to refuse is the key (a header too long,
             * or empty and no peer address). Name whichever it is. */
            char detail[128];
            size_t n = strlen(key);
            if (n == 0 || n > RL_KEY_MAX) {
                snprintf(detail, sizeof(detail), "the key must have 1 to %d bytes, not %zu",
                         RL_KEY_MAX, n);
            } else {
                snprintf(detail, sizeof(detail), "the cost must be a whole number from 0 to %lld",
                         RL_COST_MAX);
            }
            sd_http_req_respond_problem(req, 400, "about:blank", "Bad Request", detail, NULL);
        } else {
            sd_http_req_respond_problem(req, 503, "about:blank", "Service Unavailable",
                                        "the server is stopping", NULL);
        }
    }
}

static void on_gateway(sd_http_req *req, void *udata) {
    gateway *gw = udata;
    const char *key = sd_http_req_header(req, gw->key_header);
    if (!key || !*key) {
        key = sd_http_req_client(req);
    }
    check_async(gw, req, key, 1, 0);
}

/* POST /v1/check {"key": K, "cost": N}: each way a body can be wrong gets its own message. */
static void on_api_check(sd_http_req *req, void *udata) {
    gateway *gw = udata;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    json_error_t jerr;
    /* Any JSON value, so that a scalar is told it is not an object; without JSON_ALLOW_NUL
     * jansson refuses "\u0000", so a key is a whole C string. */
    json_t *j = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    json_t *key = json_is_object(j) ? json_object_get(j, "key") : NULL;
    json_t *cost = json_is_object(j) ? json_object_get(j, "cost") : NULL;
    char problem[256] = "";
    if (!j) {
        snprintf(problem, sizeof(problem), "the body is not JSON (%s at character %d)", jerr.text,
                 jerr.position);
    } else if (!json_is_object(j)) {
        snprintf(problem, sizeof(problem),
                 "the body must be a JSON object {\"key\": \"...\", \"cost\": N}");
    } else if (!key) {
        snprintf(problem, sizeof(problem), "\"key\" is required");
    } else if (!json_is_string(key) || json_string_length(key) == 0 ||
               json_string_length(key) > RL_KEY_MAX) {
        snprintf(problem, sizeof(problem), "\"key\" must be a string of 1 to %d bytes", RL_KEY_MAX);
    } else if (cost && (!json_is_integer(cost) || json_integer_value(cost) < 0 ||
                        json_integer_value(cost) > RL_COST_MAX)) {
        snprintf(problem, sizeof(problem),
                 "\"cost\" must be a whole number from 0 to %lld (default 1)", RL_COST_MAX);
    }
    if (problem[0]) {
        sd_http_req_respond_problem(req, 400, "about:blank", "Bad Request", problem, NULL);
    } else {
        long long c = cost ? (long long)json_integer_value(cost) : 1;
        check_async(gw, req, json_string_value(key), c, 1);
    }
    json_decref(j);
}

static void on_metrics(sd_http_buf *buf, void *udata) {
    gateway *gw = udata;
    rl_stats s;
    rl_limiter_stats(gw->limiter, &s);
    const rl_config *cfg = gw->cfg;
    sd_http_buf_printf(buf, "# HELP ratelimit_decisions_total Decisions by policy and outcome "
                            "(a denial counts for the policies it violated).\n"
                            "# TYPE ratelimit_decisions_total counter\n");
    for (size_t i = 0; i < cfg->npolicies; i++) {
        sd_http_buf_printf(buf,
                           "ratelimit_decisions_total{policy=\"%s\",outcome=\"allowed\"} %llu\n"
                           "ratelimit_decisions_total{policy=\"%s\",outcome=\"denied\"} %llu\n",
                           cfg->policies[i].name, (unsigned long long)s.policy_allowed[i],
                           cfg->policies[i].name, (unsigned long long)s.policy_denied[i]);
    }
    sd_http_buf_printf(buf, "# HELP ratelimit_decisions_by_source_total Decisions by who made "
                            "them.\n# TYPE ratelimit_decisions_by_source_total counter\n");
    for (int i = 0; i < RL_SOURCE_COUNT; i++) {
        sd_http_buf_printf(buf, "ratelimit_decisions_by_source_total{source=\"%s\"} %llu\n",
                           rl_source_name((rl_source)i), (unsigned long long)s.by_source[i]);
    }
    unsigned long long fallback = s.by_source[RL_SOURCE_FAIL_OPEN] +
                                  s.by_source[RL_SOURCE_FAIL_CLOSED] + s.by_source[RL_SOURCE_LOCAL];
    sd_http_buf_printf(
        buf,
        "# HELP ratelimit_redis_errors_total Checks Redis did not answer (timeout, no connection, "
        "error).\n"
        "# TYPE ratelimit_redis_errors_total counter\n"
        "ratelimit_redis_errors_total %llu\n"
        "# HELP ratelimit_fallback_decisions_total Decisions made without Redis.\n"
        "# TYPE ratelimit_fallback_decisions_total counter\n"
        "ratelimit_fallback_decisions_total %llu\n"
        "# HELP ratelimit_deny_cache_hits_total Denials answered by the local deny cache.\n"
        "# TYPE ratelimit_deny_cache_hits_total counter\n"
        "ratelimit_deny_cache_hits_total %llu\n"
        "# HELP ratelimit_script_calls_total Script calls sent to Redis.\n"
        "# TYPE ratelimit_script_calls_total counter\n"
        "ratelimit_script_calls_total %llu\n"
        "# HELP ratelimit_batched_checks_total Checks decided by those calls.\n"
        "# TYPE ratelimit_batched_checks_total counter\n"
        "ratelimit_batched_checks_total %llu\n"
        "# HELP ratelimit_in_doubt_checks_total Checks sent to Redis and never answered: the "
        "fallback decided them, Redis may have charged them.\n"
        "# TYPE ratelimit_in_doubt_checks_total counter\n"
        "ratelimit_in_doubt_checks_total %llu\n"
        "# HELP ratelimit_refunds_total Late replies that charged a check the client was refused: "
        "refunded.\n"
        "# TYPE ratelimit_refunds_total counter\n"
        "ratelimit_refunds_total %llu\n"
        "# HELP ratelimit_over_admitted_total Checks admitted here that Redis refused when its "
        "late "
        "reply came.\n"
        "# TYPE ratelimit_over_admitted_total counter\n"
        "ratelimit_over_admitted_total %llu\n"
        "# HELP ratelimit_recovery_charged_total Units the local fallback admitted, charged to "
        "Redis "
        "once it was back.\n"
        "# TYPE ratelimit_recovery_charged_total counter\n"
        "ratelimit_recovery_charged_total %llu\n"
        "# HELP ratelimit_live_instances Gateways found through Redis (N of the local share).\n"
        "# TYPE ratelimit_live_instances gauge\n"
        "ratelimit_live_instances %d\n"
        "# HELP ratelimit_breaker_open 1 while the circuit breaker is open or probing.\n"
        "# TYPE ratelimit_breaker_open gauge\n"
        "ratelimit_breaker_open %d\n"
        "# HELP ratelimit_checks_in_flight Checks waiting for their decision.\n"
        "# TYPE ratelimit_checks_in_flight gauge\n"
        "ratelimit_checks_in_flight %ld\n",
        (unsigned long long)s.redis_errors, fallback, (unsigned long long)s.deny_cache_hits,
        (unsigned long long)s.script_calls, (unsigned long long)s.batched_checks,
        (unsigned long long)s.in_doubt, (unsigned long long)s.refunds,
        (unsigned long long)s.over_admitted, (unsigned long long)s.recovery_charged,
        s.live_instances, s.breaker_open, gw->in_flight);
}

/* The limiter goes last: requests finishing during the grace period still need it. */
static void on_http_stopped(sd_http_server *srv, void *udata) {
    gateway *gw = udata;
    rl_limiter_free(gw->limiter);
    gw->limiter = NULL;
}

static int cmd_serve(options *o, const sd_redis_url *url) {
    uv_loop_t *loop = uv_default_loop();
    gateway gw;
    memset(&gw, 0, sizeof(gw));
    gw.key_header = o->key_header;
    int rc = rl_limiter_new(loop, url, &o->cfg, &gw.limiter);
    if (rc < 0) {
        fprintf(stderr, "ratelimit serve: %s\n", rl_strerror(rc));
        return SD_EXIT_FAILURE;
    }
    gw.cfg = rl_limiter_config(gw.limiter);
    if (rl_limiter_wait_connected(gw.limiter, 2000) != 0) {
        /* Not fatal: the fallback answers until Redis is reachable. */
        sd_log(SD_LOG_WARN, "ratelimit.redis_unreachable", "fallback=%s",
               rl_fail_mode_name(o->cfg.on_error));
    }
    sd_http_opts hopts;
    sd_http_opts_default(&hopts);
    hopts.server_name = "ratelimit";
    /* A check is a key, a cost and a few policy names: no request here needs the server's
     * 1 MiB default, and a small limit keeps a slow or large body from holding memory. */
    hopts.max_body_bytes = RL_SERVE_MAX_BODY;
    gw.http = sd_http_server_new(loop, &hopts);
    sd_http_server_trust(gw.http, &o->trust);
    sd_http_server_route(gw.http, "POST", "/v1/check", on_api_check, &gw);
    sd_http_server_route(gw.http, NULL, "*", on_gateway, &gw);
    sd_http_server_add_metrics(gw.http, on_metrics, &gw);
    rc = sd_http_server_listen(gw.http, o->listen);
    if (rc < 0) {
        fprintf(stderr, "ratelimit serve: cannot listen on %s: %s\n", o->listen, rl_strerror(rc));
        sd_http_server_free(gw.http);
        rl_limiter_free(gw.limiter);
        uv_run(loop, UV_RUN_DEFAULT);
        return SD_EXIT_FAILURE;
    }
    /* SIGINT or SIGTERM: stop accepting, let requests in flight finish, then close Redis. */
    rc = sd_http_server_stop_on_signals(gw.http, (int)o->grace_ms, on_http_stopped, &gw);
    if (rc == 0) {
        /* The bound address, on one flushed line: with port 0 this is how callers learn it. */
        rc = sd_http_server_print_address(gw.http);
    }
    if (rc < 0) {
        fprintf(stderr, "ratelimit serve: %s\n", sd_strerror(rc));
        sd_http_server_stop(gw.http, 0, on_http_stopped, &gw);
        uv_run(loop, UV_RUN_DEFAULT);
        sd_http_server_free(gw.http);
        return SD_EXIT_FAILURE;
    }
    sd_log(SD_LOG_INFO, "ratelimit.listening", "port=%d algorithm=%s policies=%zu grace_ms=%lld",
           sd_http_server_port(gw.http), rl_algorithm_name(o->cfg.algorithm), o->cfg.npolicies,
           o->grace_ms);
    uv_run(loop, UV_RUN_DEFAULT);
    sd_http_server_free(gw.http);
    uv_loop_close(loop);
    sd_log(SD_LOG_INFO, "ratelimit.stopped", NULL);
    return SD_EXIT_OK;
}

/* ---- check ---------------------------------------------------------------------------------- */

static int cmd_check(options *o, const sd_redis_url *url) {
    rl_sync *l;
    /* A one-shot command can afford to wait for Redis longer than a gateway's hot path. */
    if (o->cfg.deadline_ms < 1000) {
        o->cfg.deadline_ms = 1000;
    }
    int rc = rl_sync_new(url, &o->cfg, &l);
    if (rc < 0) {
        fprintf(stderr, "ratelimit check: %s\n", rl_strerror(rc));
        return SD_EXIT_FAILURE;
    }
    rl_decision d;
    rc = rl_sync_check(l, o->key, o->cost, &d);
    if (rc == 0) {
        json_t *j = decision_json(&o->cfg, &d);
        json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
        if (d.source != RL_SOURCE_REDIS && d.source != RL_SOURCE_DENY_CACHE &&
            d.source != RL_SOURCE_POLICY) {
            /* A decision no other instance shares is not what the caller asked for. */
            fprintf(stderr, "ratelimit check: Redis failed (%s): fallback '%s' decided\n",
                    rl_strerror(d.error), rl_source_name(d.source));
            rc = 1;
        }
    } else {
        fprintf(stderr, "ratelimit check: %s\n", rl_strerror(rc));
    }
    rl_sync_free(l);
    return rc == 0 ? SD_EXIT_OK : SD_EXIT_FAILURE;
}

/* Both commands parse their options, then find their Redis, then run. */
static int run(int argc, char **argv) {
    const char *cmd = argv[0];
    options o;
    memset(&o, 0, sizeof(o));
    int rc = parse_options(cmd, argc, argv, &o);
    sd_redis_url url;
    memset(&url, 0, sizeof(url));
    sd_redis_server *server = NULL;
    if (rc != SD_CLI_OK) {
        rc = sd_cli_exit_status(rc);
    } else if (sd_redis_resolve(o.redis, &url, &server) != 0) {
        rc = o.redis || getenv("REDIS_URL") ? SD_EXIT_USAGE : SD_EXIT_FAILURE;
    } else {
        if (o.password) {
            /* The URL's own password, if any, gives way to the file's; the URL owns it now. */
            if (url.password) {
                memset(url.password, 0, strlen(url.password));
                free(url.password);
            }
            url.password = o.password;
            o.password = NULL;
        }
        rc = strcmp(cmd, "serve") == 0 ? cmd_serve(&o, &url) : cmd_check(&o, &url);
    }
    sd_redis_url_clear(&url); /* wipes the password */
    sd_redis_server_stop(server);
    if (o.password) {
        memset(o.password, 0, strlen(o.password));
        free(o.password);
    }
    return rc;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {{"serve", "run the rate-limiting gateway (HTTP)", run},
                                      {"check", "make one decision and print it as JSON", run},
                                      {0}};
    return sd_cli_dispatch("ratelimit",
                           "A distributed rate limiter over Redis (token bucket, GCRA, sliding "
                           "windows).",
                           subs, argc, argv);
}
