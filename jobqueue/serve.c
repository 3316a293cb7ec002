/*
 * serve.c - `jobqueue serve`: the HTTP API of the job queue (jobqueue/README.md, section 2) on
 * common/http.h, with POST under the shared Idempotency-Key handling (common/idempotency.h).
 */
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "admin.h"
#include "cli.h"
#include "cmd.h"
#include "http.h"
#include "idempotency.h"
#include "jobqueue.h"
#include "sd.h"

/* Queues /metrics reports, at most (named by --queue, then seen by requests). */
#define MAX_QUEUES 64
/* How often the figures /metrics reports are read from Redis (metrics_refresh). */
#define METRICS_EVERY_MS 1000

/* ---- serve -------------------------------------------------------------------------------------
 */

typedef struct server server;

/* What /metrics reports of one queue: the last figures read (metrics_refresh). */
typedef struct queue_figures {
    int asking;  /* a read is in flight */
    uint64_t at; /* when the figures were read (sd_now_ms), 0: never */
    jq_stats st;
} queue_figures;

struct server {
    uv_loop_t *loop;
    sd_http_server *http;
    jq_aclient *async; /* every Redis call of the API, and the figures of /metrics */
    sd_aredis *idem_redis;
    sd_idem *idem;
    jq_config cfg;
    char *queues[MAX_QUEUES];
    queue_figures figures[MAX_QUEUES];
    int nqueues;
    uv_timer_t metrics; /* every METRICS_EVERY_MS: metrics_refresh */
    long long posts_in_flight;
    sd_admin admin; /* who may cancel (DELETE): a bearer token, or loopback clients only */
};

static void metrics_refresh(server *s);

static void queue_seen(server *s, const char *q) {
    for (int i = 0; i < s->nqueues; i++)
        if (strcmp(s->queues[i], q) == 0)
            return;
    if (s->nqueues < MAX_QUEUES) {
        s->figures[s->nqueues] = (queue_figures){0};
        s->queues[s->nqueues++] = sd_xstrdup(q);
        if (s->async) /* a new queue's figures are read now, not at the next tick */
            metrics_refresh(s);
    }
}

static void problem(sd_http_req *req, int status, const char *type, const char *title,
                    const char *detail) {
    sd_http_req_respond_problem(req, status, type, title, detail, NULL);
}

/* The answer to a library error that is not the caller's fault. */
static void problem_redis(sd_http_req *req, int rc) {
    sd_http_req_add_header(req, "Retry-After", "1");
    problem(req, 503, "/problems/redis-unavailable", "Redis unavailable", jq_strerror(rc));
}

/* Splits /v1/queues/{q}/{rest}: the queue into q, what follows into *rest. 0 or -1. */
static int path_split(const char *path, char *q, size_t qlen, const char **rest) {
    const char *p = path + strlen("/v1/queues/");
    const char *slash = strchr(p, '/');
    if (!slash || (size_t)(slash - p) >= qlen || slash == p)
        return -1;
    memcpy(q, p, (size_t)(slash - p));
    q[slash - p] = '\0';
    *rest = slash + 1;
    return 0;
}

typedef struct post {
    server *s;
    sd_idem_call *call;
    char queue[JQ_QUEUE_MAX + 1];
} post;

static void on_posted(jq_aclient *c, int status, const jq_enqueued *e, size_t n, void *arg) {
    (void)n; /* one job per call */
    post *p = arg;
    p->s->posts_in_flight--;
    if (status == 0) {
        char loc[JQ_QUEUE_MAX + JQ_ID_MAX + 32];
        snprintf(loc, sizeof loc, "/v1/queues/%s/jobs/%s", p->queue, e->id);
        sd_idem_call_add_header(p->call, "Location", loc);
        sd_idem_call_respond_json(p->call, 202,
                                  json_pack("{s:s, s:b}", "id", e->id, "created", e->created));
    } else if (status == JQ_EFULL) {
        char detail[128];
        snprintf(detail, sizeof detail, "the queue holds %lld READY jobs, its bound (--max-ready)",
                 (long long)p->s->cfg.max_ready);
        sd_idem_call_add_header(p->call, "Retry-After", "1");
        sd_idem_call_respond_problem(p->call, 429, "/problems/queue-full", "Queue full", detail,
                                     NULL);
    } else {
        sd_idem_call_add_header(p->call, "Retry-After", "1");
        sd_idem_call_respond_problem(p->call, 503, "/problems/redis-unavailable",
                                     "Redis unavailable", jq_strerror(status), NULL);
    }
    free(p);
}

static int b64_decode(const char *in, size_t len, char **out, size_t *out_len) {
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        int pad_ok = ch == '=' && i + 2 >= len && (i + 1 == len || in[len - 1] == '=');
        if (!(ch >= 'A' && ch <= 'Z') && !(ch >= 'a' && ch <= 'z') && !(ch >= '0' && ch <= '9') &&
            ch != '+' && ch != '/' && !pad_ok)
            return -1;
    }
    *out = sd_xmalloc(len / 4 * 3 + 1);
    int n = len ? EVP_DecodeBlock((unsigned char *)*out, (const unsigned char *)in, (int)len) : 0;
    if (n < 0) {
        free(*out);
        return -1;
    }
    if (len >= 1 && in[len - 1] == '=')
        n--;
    if (len >= 2 && in[len - 2] == '=')
        n--;
    *out_len = (size_t)n;
    return 0;
}

/* POST /v1/queues/{q}/jobs, under the Idempotency-Key rules: each way a body can be wrong is a
 * 4xx with its own message, and nothing is stored. */
static void on_post(sd_idem_call *call, sd_http_req *req, void *udata) {
    server *s = udata;
    post *p = sd_xcalloc(1, sizeof *p);
    p->s = s;
    p->call = call;
    const char *rest;
    path_split(sd_http_req_path(req), p->queue, sizeof p->queue, &rest);
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    json_error_t jerr;
    json_t *j = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    char problem_text[256] = "";
    int status = 400;
    char *bytes = NULL;
    size_t nbytes = 0;
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    json_t *payload = json_object_get(j, "payload"), *b64 = json_object_get(j, "payload_base64");
    const char *key;
    json_t *v;
    if (!j) {
        snprintf(problem_text, sizeof problem_text, "the body is not JSON (%s at character %d)",
                 jerr.text, jerr.position);
    } else if (!json_is_object(j)) {
        snprintf(problem_text, sizeof problem_text,
                 "the body must be a JSON object {\"payload\": \"...\", ...}");
    } else if (!payload == !b64) {
        snprintf(problem_text, sizeof problem_text,
                 "exactly one of \"payload\" (a string) and \"payload_base64\" is required");
    } else if (payload && !json_is_string(payload)) {
        snprintf(problem_text, sizeof problem_text, "\"payload\" must be a JSON string");
    } else if (b64 &&
               (!json_is_string(b64) || b64_decode(json_string_value(b64), json_string_length(b64),
                                                   &bytes, &nbytes) != 0)) {
        snprintf(problem_text, sizeof problem_text, "\"payload_base64\" must be base64 (RFC 4648)");
    }
    if (!problem_text[0]) {
        json_object_foreach(j, key, v) {
            json_int_t x = json_is_integer(v) ? json_integer_value(v) : 0;
            if (strcmp(key, "payload") == 0 || strcmp(key, "payload_base64") == 0)
                continue;
            else if (strcmp(key, "delay_ms") == 0 && json_is_integer(v) && x >= 0 &&
                     x <= 366LL * 24 * 3600 * 1000)
                o.delay_ms = x;
            else if (strcmp(key, "priority") == 0 && json_is_integer(v) && x >= JQ_PRIORITY_MIN &&
                     x <= JQ_PRIORITY_MAX)
                o.priority = (int)x;
            else if (strcmp(key, "max_attempts") == 0 && json_is_integer(v) && x >= 1 && x <= 1000)
                o.max_attempts = (int)x;
            else if (strcmp(key, "delay_ms") == 0 || strcmp(key, "priority") == 0 ||
                     strcmp(key, "max_attempts") == 0)
                snprintf(problem_text, sizeof problem_text,
                         "\"%s\" is out of range (delay_ms 0 to a year, priority -1000 to 1000, "
                         "max_attempts 1 to 1000)",
                         key);
            else
                snprintf(problem_text, sizeof problem_text, "unknown member \"%.64s\"", key);
            if (problem_text[0])
                break;
        }
    }
    if (!problem_text[0] && payload) {
        nbytes = json_string_length(payload);
        bytes = sd_xmalloc(nbytes + 1);
        memcpy(bytes, json_string_value(payload), nbytes);
    }
    if (!problem_text[0] && nbytes > s->cfg.max_payload) {
        status = 413;
        snprintf(problem_text, sizeof problem_text,
                 "the payload has %zu bytes, over the bound of %zu", nbytes, s->cfg.max_payload);
    }
    o.idempotency_key = sd_http_req_header(req, "Idempotency-Key");
    int rc = 0;
    if (!problem_text[0]) {
        jq_new_job job = {bytes, nbytes, &o};
        rc = jq_aenqueue_many(s->async, p->queue, &job, 1, on_posted, p);
        if (rc == JQ_EINVAL || rc == JQ_ETOOBIG)
            snprintf(problem_text, sizeof problem_text, "%s", jq_strerror(rc));
    }
    free(bytes);
    json_decref(j);
    if (problem_text[0]) {
        sd_idem_call_respond_problem(call, status, "about:blank",
                                     status == 413 ? "Content Too Large" : "Bad Request",
                                     problem_text, NULL);
        free(p);
    } else if (rc != 0) {
        sd_idem_call_add_header(call, "Retry-After", "1");
        sd_idem_call_respond_problem(call, 503, "/problems/redis-unavailable", "Redis unavailable",
                                     jq_strerror(rc), NULL);
        free(p);
    } else {
        s->posts_in_flight++;
    }
}

/* A GET of a job or of the stats, or a DELETE, waiting for its reply. */
typedef struct inspect {
    sd_http_req *req;
    char queue[JQ_QUEUE_MAX + 1];
    char id[JQ_ID_MAX];
} inspect;

static void job_not_found(sd_http_req *req) {
    problem(req, 404, "/problems/job-not-found", "Job not found",
            "no such job (never existed, or past its retention)");
}

static jq_stats_cb on_stats;
static jq_info_cb on_job;
static jq_value_cb on_cancelled;

static void on_queues(sd_http_req *req, void *udata) {
    server *s = udata;
    const char *method = sd_http_req_method(req);
    char q[JQ_QUEUE_MAX + 1];
    const char *rest;
    if (path_split(sd_http_req_path(req), q, sizeof q, &rest) != 0) {
        problem(req, 404, "about:blank", "Not Found", "no such resource");
        return;
    }
    if (!jq_queue_name_valid(q)) {
        problem(req, 400, "about:blank", "Bad Request",
                "a queue name is 1 to 128 letters, digits or '-_.:'");
        return;
    }
    int jobs = strcmp(rest, "jobs") == 0;
    int stats = strcmp(rest, "stats") == 0;
    int job = strncmp(rest, "jobs/", 5) == 0 && rest[5] && !strchr(rest + 5, '/');
    if (!jobs && !stats && !job) {
        problem(req, 404, "about:blank", "Not Found", "no such resource");
        return;
    }
    const char *allowed = jobs ? "POST" : stats ? "GET" : "GET, DELETE";
    if (!strstr(allowed, method) ||
        (strcmp(method, "GET") && strcmp(method, "POST") && strcmp(method, "DELETE"))) {
        sd_http_req_add_header(req, "Allow", allowed);
        problem(req, 405, "about:blank", "Method Not Allowed", NULL);
        return;
    }
    if (strcmp(method, "DELETE") == 0 && !sd_admin_check(&s->admin, req))
        return;
    queue_seen(s, q);
    if (jobs) {
        sd_idem_handle(s->idem, req, on_post, s);
        return;
    }
    /* The rest answer from their reply's callback: the loop goes on meanwhile (a slow Redis
     * holds these requests, not the server). */
    inspect *in = sd_xcalloc(1, sizeof *in);
    in->req = req;
    snprintf(in->queue, sizeof in->queue, "%s", q);
    const char *id = rest + 5;
    snprintf(in->id, sizeof in->id, "%.*s", (int)sizeof in->id - 1, id);
    int rc = stats                        ? jq_astats(s->async, q, on_stats, in)
             : strcmp(method, "GET") == 0 ? jq_ajob_get(s->async, q, id, on_job, in)
                                          : jq_acancel(s->async, q, id, on_cancelled, in);
    if (rc != 0) { /* refused at once: no callback comes */
        if (rc == JQ_ENOTFOUND)
            job_not_found(req);
        else
            problem_redis(req, rc);
        free(in);
    }
}

static void on_stats(jq_aclient *c, int status, const jq_stats *st, void *arg) {
    inspect *in = arg;
    if (status != 0)
        problem_redis(in->req, status);
    else
        sd_http_req_respond_json(in->req, 200, jq_cmd_stats_json(st));
    free(in);
}

static void on_job(jq_aclient *c, int status, const jq_info *info, void *arg) {
    inspect *in = arg;
    if (status == JQ_ENOTFOUND)
        job_not_found(in->req);
    else if (status != 0)
        problem_redis(in->req, status);
    else
        sd_http_req_respond_json(in->req, 200, jq_cmd_info_json(in->queue, info));
    free(in);
}

static void on_cancelled(jq_aclient *c, int rc, int64_t state, void *arg) {
    inspect *in = arg;
    sd_http_req *req = in->req;
    const char *id = in->id;
    jq_state was = (jq_state)state;
    if (rc == 0 && was == JQ_STATE_RESERVED) {
        sd_http_req_respond_json(
            req, 202,
            json_pack("{s:s, s:s, s:b}", "id", id, "state", "reserved", "cancel_requested", 1));
    } else if (rc == 0) {
        sd_http_req_respond_json(req, 200,
                                 json_pack("{s:s, s:s, s:s}", "id", id, "state", "cancelled", "was",
                                           jq_state_name(was)));
    } else if (rc == JQ_ENOTFOUND) {
        job_not_found(req);
    } else if (rc == JQ_ESTATE) {
        char detail[96];
        snprintf(detail, sizeof detail, "the job is %s already", jq_state_name(was));
        problem(req, 409, "/problems/job-finished", "Job already finished", detail);
    } else {
        problem_redis(req, rc);
    }
    free(in);
}

/* ---- /metrics ----
 *
 * A scrape never waits for Redis: the callback of sd_http_server_add_metrics answers at once,
 * so it prints the figures that a timer reads every METRICS_EVERY_MS (and at once for a queue
 * seen for the first time) over the asynchronous connection. A frozen or unreachable Redis
 * leaves the last figures in place, and jobqueue_figures_age_seconds says how old they are. */

static void on_figures(jq_aclient *c, int status, const jq_stats *st, void *arg) {
    queue_figures *f = arg;
    f->asking = 0;
    if (status == 0) {
        f->st = *st;
        f->at = sd_now_ms();
    }
}

static void metrics_refresh(server *s) {
    for (int i = 0; i < s->nqueues; i++) {
        queue_figures *f = &s->figures[i];
        if (!f->asking && jq_astats(s->async, s->queues[i], on_figures, f) == 0)
            f->asking = 1;
    }
}

static void on_metrics_tick(uv_timer_t *t) {
    metrics_refresh(t->data);
}

/* Depth per state and the oldest READY job's age, for the queues named by --queue and those
 * requests have named since the start (MAX_QUEUES at most); a queue whose figures were never
 * read yet is left out. */
static void on_metrics(sd_http_buf *buf, void *udata) {
    server *s = udata;
    uint64_t now = sd_now_ms();
    sd_http_buf_printf(buf, "# HELP jobqueue_depth Jobs per queue and state.\n"
                            "# TYPE jobqueue_depth gauge\n");
    for (int i = 0; i < s->nqueues; i++) {
        const queue_figures *f = &s->figures[i];
        if (!f->at)
            continue;
        /* In jq_state's order, which jq_state_name names. */
        long long v[6] = {f->st.ready, f->st.delayed, f->st.reserved,
                          f->st.done,  f->st.dead,    f->st.cancelled};
        for (int k = 0; k < 6; k++)
            sd_http_buf_printf(buf, "jobqueue_depth{queue=\"%s\",state=\"%s\"} %lld\n",
                               s->queues[i], jq_state_name((jq_state)k), v[k]);
    }
    sd_http_buf_printf(buf, "# HELP jobqueue_oldest_ready_age_seconds Age of the oldest READY "
                            "job (0 when none).\n"
                            "# TYPE jobqueue_oldest_ready_age_seconds gauge\n");
    for (int i = 0; i < s->nqueues; i++) {
        const queue_figures *f = &s->figures[i];
        if (f->at)
            sd_http_buf_printf(
                buf, "jobqueue_oldest_ready_age_seconds{queue=\"%s\"} %.3f\n", s->queues[i],
                f->st.oldest_ready_age_ms < 0 ? 0.0 : (double)f->st.oldest_ready_age_ms / 1000.0);
    }
    sd_http_buf_printf(buf,
                       "# HELP jobqueue_figures_age_seconds Time since the figures above "
                       "were read from Redis (every %d ms while it answers).\n"
                       "# TYPE jobqueue_figures_age_seconds gauge\n",
                       METRICS_EVERY_MS);
    for (int i = 0; i < s->nqueues; i++) {
        const queue_figures *f = &s->figures[i];
        if (f->at)
            sd_http_buf_printf(buf, "jobqueue_figures_age_seconds{queue=\"%s\"} %.3f\n",
                               s->queues[i], (double)(now - f->at) / 1000.0);
    }
}

static void on_http_stopped(sd_http_server *srv, void *udata) {
    server *s = udata;
    uv_close((uv_handle_t *)&s->metrics, NULL);
    jq_aclient_free(s->async);
    s->async = NULL;
    sd_aredis_free(s->idem_redis);
    s->idem_redis = NULL;
}

int jq_cmd_serve(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    const char *listen = NULL, *admin_token_file = NULL;
    sd_http_trust trust = {0}; /* --trust-proxy: whose X-Forwarded-For names the client */
    long long max_ready = 0, grace_ms = 5000;
    const char **queues = sd_xcalloc((size_t)argc, sizeof *queues);
    int nqueues = 0;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT",
         "address to listen on (required); port 0 picks a free port\n"
         "(printed as \"listening on http://HOST:PORT\")",
         .parse = sd_cli_listen_parse, .udata = &listen, .required = 1},
        {"--max-ready", "N",
         "refuse a POST (429, Retry-After) while a queue holds N READY\njobs (default 0: no bound)",
         .integer = &max_ready, .min = 0, .max = 1e12},
        {"--queue", "Q",
         "a queue /metrics always reports (repeatable); queues named by\n"
         "requests are added as they come (64 in all at most)",
         .list = queues, .count = &nqueues},
        {"--grace-ms", "MS", "on SIGTERM/SIGINT, time for requests in flight (default 5000)",
         .integer = &grace_ms, .min = 0, .max = 600000},
        {"--admin-token-file", "FILE",
         "bearer token for DELETE (cancel), the file's first line (else\n"
         "JOBQUEUE_ADMIN_TOKEN; none: DELETE answers loopback clients only)",
         .text = &admin_token_file},
        SD_CLI_TRUST_OPT(&trust),
        REDIS_OPT(&c),
        {0}};
    const sd_cli_cmd cmd = {
        .name = "jobqueue serve",
        .synopsis = "--listen HOST:PORT [options]",
        .about =
            "The HTTP API: POST /v1/queues/{q}/jobs, GET and DELETE /v1/queues/{q}/jobs/{id},\n"
            "GET /v1/queues/{q}/stats, /metrics and /healthz.",
        .opts = opts,
        .footer = "Exit status: 0 stopped by a signal, 1 runtime failure, 2 usage error."};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK) {
        free(queues);
        return sd_cli_exit_status(rc);
    }
    for (int i = 0; i < nqueues; i++)
        if (!jq_queue_name_valid(queues[i])) {
            free(queues);
            return sd_cli_usage_error(cmd.name, "--queue wants 1 to %d letters, digits or '-_.:'",
                                      JQ_QUEUE_MAX);
        }
    c.cfg.max_ready = max_ready;
    server s;
    memset(&s, 0, sizeof s);
    if (sd_admin_load(&s.admin, cmd.name, "--admin-token-file", admin_token_file,
                      "JOBQUEUE_ADMIN_TOKEN") != 0) {
        free(queues);
        return SD_EXIT_USAGE;
    }
    s.cfg = c.cfg;
    for (int i = 0; i < nqueues; i++)
        queue_seen(&s, queues[i]);
    free(queues);
    /* The synchronous client only checks the Redis at the start (which one, its eviction
     * policy: jq_cmd_client_open); serving never waits for Redis. */
    jq_client *check = NULL;
    int status = jq_cmd_client_open(cmd.name, &c, &check);
    jq_client_free(check);
    s.loop = uv_default_loop();
    if (status == 0) {
        sd_redis_opts ro;
        sd_redis_opts_default(&ro);
        ro.scripts = sd_idem_scripts;
        ro.nscripts = sd_idem_nscripts;
        sd_idem_opts io = {.prefix = "jq1:idem"};
        if (jq_aclient_new(s.loop, &c.url, &c.cfg, &s.async) != 0 ||
            sd_aredis_new(s.loop, &c.url, &ro, &s.idem_redis) != 0 ||
            sd_idem_new(s.idem_redis, &io, &s.idem) != 0) {
            fprintf(stderr, "jobqueue serve: cannot set up the Redis connections\n");
            status = SD_EXIT_FAILURE;
        } else {
            jq_aclient_wait_connected(s.async, 2000);
            sd_aredis_wait_connected(s.idem_redis, 2000);
            uv_timer_init(s.loop, &s.metrics);
            s.metrics.data = &s;
            uv_timer_start(&s.metrics, on_metrics_tick, 0, METRICS_EVERY_MS);
        }
    }
    if (status == 0) {
        sd_http_opts ho;
        sd_http_opts_default(&ho);
        ho.server_name = "jobqueue";
        s.http = sd_http_server_new(s.loop, &ho);
        sd_http_server_trust(s.http, &trust);
        /* A payload's JSON escapes can take six bytes for one. */
        sd_http_route_opts post_opts = {.max_body_bytes = 6 * c.cfg.max_payload + 4096};
        sd_http_server_route_opts(s.http, NULL, "/v1/queues/*", on_queues, &s, &post_opts);
        sd_http_server_add_metrics(s.http, on_metrics, &s);
        sd_idem_add_metrics(s.idem, s.http);
        rc = sd_http_server_listen(s.http, listen);
        if (rc == 0)
            rc = sd_http_server_stop_on_signals(s.http, (int)grace_ms, on_http_stopped, &s);
        if (rc == 0)
            rc = sd_http_server_print_address(s.http);
        if (rc != 0) {
            fprintf(stderr, "jobqueue serve: cannot listen on %s: %s\n", listen, sd_strerror(rc));
            sd_http_server_stop(s.http, 0, on_http_stopped, &s);
            status = SD_EXIT_FAILURE;
        } else {
            sd_log(SD_LOG_INFO, "jobqueue.listening", "port=%d max_ready=%lld",
                   sd_http_server_port(s.http), max_ready);
            sd_admin_announce(&s.admin, "jobqueue");
        }
        uv_run(s.loop, UV_RUN_DEFAULT);
        sd_http_server_free(s.http);
    }
    jq_aclient_free(s.async);
    sd_aredis_free(s.idem_redis);
    uv_run(s.loop, UV_RUN_DEFAULT);
    sd_idem_free(s.idem);
    uv_loop_close(s.loop);
    for (int i = 0; i < s.nqueues; i++)
        free(s.queues[i]);
    sd_redis_url_clear(&c.url);
    return status;
}
