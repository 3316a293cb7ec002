/*
 * main.c - the `jobqueue` command, on the library of jobqueue.h.
 *
 *   jobqueue enqueue --queue Q [--delay MS] [--priority P] [--max-attempts N]
 *                    [--idempotency-key K] (PAYLOAD | -)
 *   jobqueue work    --queue Q --exec 'CMD' [--concurrency N] [--visibility-timeout MS]
 *                    [--job-timeout MS] [--backoff-base-ms MS] [--backoff-max-ms MS]
 *                    [--grace-ms MS] [--kill-after-ms MS]
 *   jobqueue stats   --queue Q [--json]
 *   jobqueue dlq     (list | redrive | purge) --queue Q [--json] [--max N]
 *   jobqueue cancel  --queue Q ID
 *   jobqueue drop    QUEUE [--max N] --yes
 *   jobqueue serve   --listen HOST:PORT [--max-ready N] [--queue Q ...]
 *
 * Which Redis. `--redis URL`, else REDIS_URL, else the local durable Redis (local_redis.h):
 * enqueue in one command and work in the next share the queue without any URL, and a crash
 * loses nothing acknowledged. Every subcommand prints which Redis it uses, and refuses one that
 * could evict keys (sd_redis_require_noeviction).
 *
 * enqueue -. One job per stdin line (the line without its newline), sent as lines arrive: up to
 * ENQ_IN_FLIGHT enqueues are pipelined on one connection, reading stops while that many wait,
 * and each id is printed (in input order, flushed) once Redis has acknowledged its line. With
 * --idempotency-key K, line N's key is "K:N", so running the same input again after a failure
 * enqueues only the lines that were missing. The first failure stops reading; the ids of the
 * lines before it are printed, it is named on stderr, and the exit status is 1.
 *
 * work. A job's life in this command (struct run):
 *
 *   handler: spawn /bin/sh -c CMD in its own process group (setsid), payload on stdin,
 *            JOB_ID / JOB_ATTEMPT / JOB_QUEUE in its environment, stdout captured (at most
 *            the result bound, cfg.max_result), stderr passed through and its head kept
 *     |
 *     |  stop (cancel seen by a heartbeat, --job-timeout, the stop's grace over):
 *     |     SIGTERM to the group, SIGKILL --kill-after-ms later
 *     v
 *   the shell exits: SIGKILL to what is left of its group (a job leaves nothing running), then
 *   once stdout and stderr reach EOF: jq_task_finish(ok = exit 0, stdout or the error text);
 *   the runtime acks, fails (retry / DEAD), fails as cancelled, or releases (stop).
 *
 * SIGTERM / SIGINT: jq_worker_stop(--grace-ms): no more reserving, running commands get the
 * grace period, then are stopped as above and their jobs released (not counted as attempts).
 *
 * serve. The HTTP API (jobqueue/README.md, section 2): POST /v1/queues/{q}/jobs through the
 * shared Idempotency-Key handling (idempotency.h), whose key is also the job's idempotency key;
 * the enqueue itself is asynchronous (jq_aenqueue_many). GET and DELETE of a job, the stats and
 * /metrics use the synchronous client on the loop's thread: one round trip each, which holds
 * the loop for that long (the asynchronous client has no calls for them yet).
 *
 * drop. jq_queue_drop, refused without --yes (it cannot be undone), then "removed N".
 *
 * Files: main.c (this one: the shared options and JSON, enqueue, stats, dlq, cancel, drop, the
 * dispatch), work.c, serve.c, and cmd.h between them.
 *
 * Exit status: 0 ok, 1 runtime failure, 2 usage error.
 */
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "cli.h"
#include "cmd.h"
#include "jobqueue.h"
#include "local_redis.h"
#include "sd.h"

/* enqueue -: lines sent and not yet acknowledged, at most. */
#define ENQ_IN_FLIGHT 128

/* ---- Options every subcommand shares (cmd.h) ---------------------------------------------- */

int jq_cmd_queue_parse(const char *value, void *udata, char *err, size_t len) {
    if (!jq_queue_name_valid(value)) {
        snprintf(err, len, "wants 1 to %d letters, digits or '-_.:', got '%s'", JQ_QUEUE_MAX,
                 value);
        return -1;
    }
    *(const char **)udata = value;
    return 0;
}

/* Finds the Redis (printing which) and refuses one that may evict keys. Returns 0 or an exit
 * status. */
int jq_cmd_redis_open(const char *name, common *c) {
    int rc = sd_redis_resolve_durable(c->redis, &c->url);
    if (rc != 0)
        return c->redis || getenv("REDIS_URL") ? SD_EXIT_USAGE : SD_EXIT_FAILURE;
    char err[256];
    if (sd_redis_require_noeviction(&c->url, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", name, err);
        return SD_EXIT_FAILURE;
    }
    return 0;
}

int jq_cmd_client_open(const char *name, common *c, jq_client **out) {
    int rc = jq_cmd_redis_open(name, c);
    if (rc != 0)
        return rc;
    rc = jq_client_new(&c->url, &c->cfg, out);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot connect to Redis: %s\n", name, jq_strerror(rc));
        return SD_EXIT_FAILURE;
    }
    return 0;
}

/* ---- JSON helpers ---------------------------------------------------------------------------- */

/* Redis time in ms as RFC 3339 UTC ("2026-12-04T21:00:00.123Z"), or null for 0 (never). */
json_t *jq_cmd_time_json(int64_t ms) {
    if (ms <= 0)
        return json_null();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[40];
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03dZ", (int)(ms % 1000));
    return json_string(buf);
}

/* Sets name to the bytes as a JSON string when they are UTF-8, else name_base64. */
void jq_cmd_bytes_set(json_t *obj, const char *name, const char *p, size_t len) {
    json_t *s = json_stringn(p, len);
    if (s) {
        json_object_set_new(obj, name, s);
        return;
    }
    char *b64 = sd_xmalloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)p, (int)len);
    char key[64];
    snprintf(key, sizeof key, "%s_base64", name);
    json_object_set_new(obj, key, json_string(b64));
    free(b64);
}

json_t *jq_cmd_stats_json(const jq_stats *s) {
    double age = s->oldest_ready_age_ms < 0 ? 0.0 : (double)s->oldest_ready_age_ms / 1000.0;
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "ready", (json_int_t)s->ready,
                     "delayed", (json_int_t)s->delayed, "reserved", (json_int_t)s->reserved, "dead",
                     (json_int_t)s->dead, "done", (json_int_t)s->done, "cancelled",
                     (json_int_t)s->cancelled, "oldest_ready_age_s", age);
}

json_t *jq_cmd_info_json(const char *queue, const jq_info *i) {
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:b}", "id", i->id, "queue", queue, "state",
                  jq_state_name(i->state), "attempts", i->attempts, "max_attempts", i->max_attempts,
                  "priority", i->priority, "cancel_requested", i->cancel_requested);
    jq_cmd_bytes_set(j, "payload", i->payload, i->payload_len);
    jq_cmd_bytes_set(j, "progress", i->progress, strlen(i->progress));
    jq_cmd_bytes_set(j, "result", i->result, strlen(i->result));
    json_object_set_new(j, "last_error", json_string(i->last_error));
    if (i->idempotency_key[0])
        json_object_set_new(j, "idempotency_key", json_string(i->idempotency_key));
    json_object_set_new(j, "created_at", jq_cmd_time_json(i->created_ms));
    json_object_set_new(j, "updated_at", jq_cmd_time_json(i->updated_ms));
    json_object_set_new(j, "run_at", jq_cmd_time_json(i->run_at_ms));
    json_object_set_new(j, "lease_until", jq_cmd_time_json(i->lease_until_ms));
    json_object_set_new(j, "failed_at", jq_cmd_time_json(i->failed_ms));
    json_object_set_new(j, "finished_at", jq_cmd_time_json(i->finished_ms));
    return j;
}

void jq_cmd_json_print(json_t *j) {
    json_dumpf(j, stdout, JSON_COMPACT | JSON_REAL_PRECISION(10));
    putchar('\n');
    json_decref(j);
}
/* ---- enqueue -----------------------------------------------------------------------------------
 */

typedef struct enq_slot {
    char id[JQ_ID_MAX];
    int state; /* 0 free, 1 sent, 2 acknowledged, 3 failed */
    int rc;
} enq_slot;

typedef struct enq_stream {
    uv_loop_t *loop;
    jq_aclient *c;
    const char *queue;
    jq_enqueue_opts opts;
    const char *ikey;
    size_t max_payload;
    uv_fs_t read_req;
    char chunk[65536];
    size_t pos, len; /* unprocessed bytes of chunk */
    char *line;      /* the line being assembled */
    size_t line_len;
    int line_over; /* the line passed max_payload */
    int reading, eof, stopping;
    long long next_line; /* 1-based number of the next line to send */
    long long printed;   /* lines whose id is printed */
    int in_flight;
    enq_slot slots[ENQ_IN_FLIGHT];
    long long failed_line;
    int failed_rc;
} enq_stream;

static void enq_pump(enq_stream *s);

static void enq_fail(enq_stream *s, long long line, int rc) {
    if (!s->failed_line || line < s->failed_line) {
        s->failed_line = line;
        s->failed_rc = rc;
    }
    s->stopping = 1;
}

/* Prints the ids acknowledged in order, up to the first line not acknowledged yet. */
static void enq_print(enq_stream *s) {
    int any = 0;
    while (s->printed + 1 < s->next_line) {
        enq_slot *sl = &s->slots[s->printed % ENQ_IN_FLIGHT];
        if (sl->state != 2)
            break;
        fputs(sl->id, stdout);
        fputc('\n', stdout);
        sl->state = 0;
        s->printed++;
        any = 1;
    }
    if (any)
        fflush(stdout);
}

static void on_line_enqueued(jq_aclient *c, int status, const jq_enqueued *e, size_t n, void *arg) {
    (void)n; /* one job per call */
    enq_stream *s = ((void **)arg)[0];
    long long line = (long long)(intptr_t)((void **)arg)[1];
    free(arg);
    enq_slot *sl = &s->slots[(line - 1) % ENQ_IN_FLIGHT];
    s->in_flight--;
    if (status == 0) {
        snprintf(sl->id, sizeof sl->id, "%s", e->id);
        sl->state = 2;
    } else {
        sl->state = 3;
        enq_fail(s, line, status);
    }
    if (!s->failed_line || s->printed + 1 < s->failed_line)
        enq_print(s);
    enq_pump(s);
}

static void enq_send_line(enq_stream *s) {
    long long line = s->next_line++;
    if (s->line_over) {
        enq_fail(s, line, JQ_ETOOBIG);
        return;
    }
    char key[300];
    jq_enqueue_opts o = s->opts;
    if (s->ikey) {
        snprintf(key, sizeof key, "%s:%lld", s->ikey, line);
        o.idempotency_key = key;
    }
    void **arg = sd_xmalloc(2 * sizeof *arg);
    arg[0] = s;
    arg[1] = (void *)(intptr_t)line;
    jq_new_job job = {s->line, s->line_len, &o};
    int rc = jq_aenqueue_many(s->c, s->queue, &job, 1, on_line_enqueued, arg);
    if (rc != 0) {
        free(arg);
        enq_fail(s, line, rc);
        return;
    }
    s->slots[(line - 1) % ENQ_IN_FLIGHT].state = 1;
    s->in_flight++;
}

static void on_stdin_read(uv_fs_t *req) {
    enq_stream *s = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    s->reading = 0;
    if (n < 0) {
        fprintf(stderr, "jobqueue enqueue: reading stdin: %s\n", uv_strerror((int)n));
        enq_fail(s, s->next_line, -EIO);
    } else if (n == 0) {
        s->eof = 1;
    } else {
        s->pos = 0;
        s->len = (size_t)n;
    }
    enq_pump(s);
}

/* Sends the complete lines read so far while fewer than ENQ_IN_FLIGHT wait, reads more when
 * all are sent, and ends the loop's work once everything is answered. */
static void enq_pump(enq_stream *s) {
    while (!s->stopping && s->in_flight < ENQ_IN_FLIGHT && s->pos < s->len) {
        char *start = s->chunk + s->pos;
        char *nl = memchr(start, '\n', s->len - s->pos);
        size_t take = nl ? (size_t)(nl - start) : s->len - s->pos;
        if (!s->line_over) {
            if (s->line_len + take > s->max_payload) {
                s->line_over = 1;
            } else {
                memcpy(s->line + s->line_len, start, take);
                s->line_len += take;
            }
        }
        s->pos += take + (nl ? 1 : 0);
        if (nl) {
            enq_send_line(s);
            s->line_len = 0;
            s->line_over = 0;
        }
    }
    if (!s->stopping && s->eof && (s->line_len > 0 || s->line_over)) {
        enq_send_line(s); /* the last line had no newline */
        s->line_len = 0;
        s->line_over = 0;
    }
    if (!s->stopping && !s->eof && !s->reading && s->pos == s->len) {
        s->read_req.data = s;
        uv_buf_t buf = uv_buf_init(s->chunk, sizeof s->chunk);
        if (uv_fs_read(s->loop, &s->read_req, 0, &buf, 1, -1, on_stdin_read) == 0)
            s->reading = 1;
        else
            enq_fail(s, s->next_line, -EIO);
    }
    if (s->in_flight == 0 && !s->reading && (s->eof || s->stopping) && s->c) {
        jq_aclient_free(s->c); /* nothing pending: no callback runs from here */
        s->c = NULL;
    }
}

static int enqueue_stream(common *c, const jq_enqueue_opts *opts, const char *ikey) {
    enq_stream *s = sd_xcalloc(1, sizeof *s);
    s->loop = uv_default_loop();
    s->queue = c->queue;
    s->opts = *opts;
    s->opts.idempotency_key = NULL;
    s->ikey = ikey;
    s->max_payload = c->cfg.max_payload;
    s->line = sd_xmalloc(s->max_payload + 1);
    s->next_line = 1;
    int rc = jq_aclient_new(s->loop, &c->url, &c->cfg, &s->c);
    if (rc == 0 && jq_aclient_wait_connected(s->c, c->cfg.timeout_ms) != 0)
        rc = SD_ETIMEDOUT;
    int status = SD_EXIT_OK;
    if (rc != 0) {
        fprintf(stderr, "jobqueue enqueue: cannot connect to Redis: %s\n", jq_strerror(rc));
        status = SD_EXIT_FAILURE;
    } else {
        enq_pump(s);
        uv_run(s->loop, UV_RUN_DEFAULT);
        if (s->failed_line) {
            fprintf(stderr,
                    "jobqueue enqueue: line %lld: %s; the ids of the %lld lines before it are "
                    "printed%s\n",
                    s->failed_line, jq_strerror(s->failed_rc), s->printed,
                    ikey ? "; run the same input again with the same --idempotency-key to "
                           "enqueue only what is missing"
                         : "");
            status = SD_EXIT_FAILURE;
        }
    }
    jq_aclient_free(s->c);
    uv_run(s->loop, UV_RUN_DEFAULT);
    uv_loop_close(s->loop);
    free(s->line);
    free(s);
    return status;
}

static int run_enqueue(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    long long delay = 0, priority = 0, max_attempts = 5;
    const char *ikey = NULL;
    const sd_cli_opt opts[] = {
        QUEUE_OPT(&c, 1),
        {"--delay", "MS", "DELAYED for MS ms before it is READY (default 0)", .integer = &delay,
         .min = 0, .max = 366.0 * 24 * 3600 * 1000},
        {"--priority", "P", "higher runs first, -1000 to 1000 (default 0)", .integer = &priority,
         .min = JQ_PRIORITY_MIN, .max = JQ_PRIORITY_MAX},
        {"--max-attempts", "N", "deliveries before the job is DEAD (default 5)",
         .integer = &max_attempts, .min = 1, .max = 1000},
        {"--idempotency-key", "K",
         "a second enqueue with K within 24 h returns the first id and\n"
         "creates nothing; with -, line N's key is K:N",
         .text = &ikey},
        REDIS_OPT(&c),
        {0}};
    const sd_cli_cmd cmd = {
        .name = "jobqueue enqueue",
        .synopsis = "--queue Q [options] (PAYLOAD | -)",
        .about = "Enqueues PAYLOAD and prints its id. With -, enqueues one job per stdin line\n"
                 "(the line without its newline) as lines arrive, and prints each id, in input\n"
                 "order, once Redis has acknowledged it.",
        .opts = opts,
        .footer = "Exit status: 0 ok, 1 runtime failure, 2 usage error."};
    const char **pos = sd_xcalloc((size_t)argc, sizeof *pos);
    int npos = 0;
    int rc = sd_cli_parse(&cmd, argc, argv, pos, &npos);
    const char *payload = npos == 1 ? pos[0] : NULL;
    free(pos);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (!payload)
        return sd_cli_usage_error(cmd.name, "wants one PAYLOAD, or - for one job per stdin line");
    if (ikey && (ikey[0] == '\0' || strlen(ikey) > 200))
        return sd_cli_usage_error(cmd.name, "--idempotency-key wants 1 to 200 bytes");
    if (strcmp(payload, "-") != 0 && strlen(payload) > c.cfg.max_payload)
        return sd_cli_usage_error(cmd.name, "PAYLOAD is over the bound of %zu bytes",
                                  c.cfg.max_payload);
    jq_enqueue_opts o;
    jq_enqueue_opts_default(&o);
    o.delay_ms = delay;
    o.priority = (int)priority;
    o.max_attempts = (int)max_attempts;
    o.idempotency_key = ikey;
    int status;
    if (strcmp(payload, "-") == 0) {
        status = jq_cmd_redis_open(cmd.name, &c);
        if (status == 0)
            status = enqueue_stream(&c, &o, ikey);
    } else {
        jq_client *jc = NULL;
        status = jq_cmd_client_open(cmd.name, &c, &jc);
        if (status == 0) {
            jq_enqueued e;
            rc = jq_enqueue(jc, c.queue, payload, strlen(payload), &o, &e);
            if (rc == 0) {
                printf("%s\n", e.id);
                if (!e.created)
                    fprintf(stderr, "jobqueue enqueue: the idempotency key was used before: "
                                    "this is the first job's id, nothing was created\n");
            } else {
                fprintf(stderr, "jobqueue enqueue: %s\n", jq_strerror(rc));
                status = SD_EXIT_FAILURE;
            }
        }
        jq_client_free(jc);
    }
    sd_redis_url_clear(&c.url);
    return status;
}

/* ---- stats, dlq, cancel ------------------------------------------------------------------------
 */

static int run_stats(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    const sd_cli_opt opts[] = {
        QUEUE_OPT(&c, 1), {"--json", NULL, "one JSON object", .flag = &c.json}, REDIS_OPT(&c), {0}};
    const sd_cli_cmd cmd = {.name = "jobqueue stats",
                            .synopsis = "--queue Q [--json]",
                            .about = "Prints the queue's jobs per state and its oldest READY job's "
                                     "age (0 when none).",
                            .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    jq_client *jc = NULL;
    int status = jq_cmd_client_open(cmd.name, &c, &jc);
    jq_stats s;
    if (status == 0 && (rc = jq_stats_get(jc, c.queue, &s)) != 0) {
        fprintf(stderr, "jobqueue stats: %s\n", jq_strerror(rc));
        status = SD_EXIT_FAILURE;
    }
    if (status == 0 && c.json) {
        jq_cmd_json_print(jq_cmd_stats_json(&s));
    } else if (status == 0) {
        printf("ready %lld\ndelayed %lld\nreserved %lld\ndead %lld\ndone %lld\ncancelled %lld\n"
               "oldest_ready_age_s %.3f\n",
               (long long)s.ready, (long long)s.delayed, (long long)s.reserved, (long long)s.dead,
               (long long)s.done, (long long)s.cancelled,
               s.oldest_ready_age_ms < 0 ? 0.0 : (double)s.oldest_ready_age_ms / 1000.0);
    }
    jq_client_free(jc);
    sd_redis_url_clear(&c.url);
    return status;
}

static int dlq_list(jq_client *jc, const common *c, long long max) {
    json_t *all = json_array();
    int offset = 0, rc = 0;
    while (max == 0 || offset < max) {
        int n = max == 0 || max - offset > 1000 ? 1000 : (int)(max - offset);
        jq_info *infos = sd_xcalloc((size_t)n, sizeof *infos);
        size_t got = 0;
        rc = jq_dlq_list(jc, c->queue, offset, n, infos, &got);
        for (size_t i = 0; i < got; i++) {
            json_t *j =
                json_pack("{s:s, s:i, s:i, s:s}", "id", infos[i].id, "attempts", infos[i].attempts,
                          "max_attempts", infos[i].max_attempts, "last_error", infos[i].last_error);
            json_object_set_new(j, "failed_at", jq_cmd_time_json(infos[i].failed_ms));
            json_object_set_new(j, "created_at", jq_cmd_time_json(infos[i].created_ms));
            jq_cmd_bytes_set(j, "payload", infos[i].payload, infos[i].payload_len);
            json_array_append_new(all, j);
            jq_info_clear(&infos[i]);
        }
        free(infos);
        offset += (int)got;
        if (rc != 0 || got < (size_t)n)
            break;
    }
    if (rc != 0) {
        fprintf(stderr, "jobqueue dlq list: %s\n", jq_strerror(rc));
        json_decref(all);
        return SD_EXIT_FAILURE;
    }
    if (c->json) {
        jq_cmd_json_print(all);
        return SD_EXIT_OK;
    }
    size_t i;
    json_t *j;
    json_array_foreach(all, i, j) {
        json_t *failed = json_object_get(j, "failed_at");
        printf("%s attempts=%lld failed_at=%s error=%s\n",
               json_string_value(json_object_get(j, "id")),
               (long long)json_integer_value(json_object_get(j, "attempts")),
               json_is_string(failed) ? json_string_value(failed) : "-",
               json_string_value(json_object_get(j, "last_error")));
    }
    json_decref(all);
    return SD_EXIT_OK;
}

static int run_dlq(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    long long max = 0;
    const sd_cli_opt opts[] = {QUEUE_OPT(&c, 1),
                               {"--max", "N",
                                "at most N dead letters, oldest first (default 0: all)",
                                .integer = &max, .min = 0, .max = 1e12},
                               {"--json", NULL, "JSON output", .flag = &c.json},
                               REDIS_OPT(&c),
                               {0}};
    const sd_cli_cmd cmd = {
        .name = "jobqueue dlq",
        .synopsis = "(list | redrive | purge) --queue Q [options]",
        .about = "Dead letters: list them (id, attempts, last error, failed_at, payload), redrive\n"
                 "them (back to READY with their attempts from 0), or purge them (deleted now).",
        .opts = opts};
    const char **pos = sd_xcalloc((size_t)argc, sizeof *pos);
    int npos = 0;
    int rc = sd_cli_parse(&cmd, argc, argv, pos, &npos);
    const char *action = npos == 1 ? pos[0] : NULL;
    free(pos);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (!action || (strcmp(action, "list") && strcmp(action, "redrive") && strcmp(action, "purge")))
        return sd_cli_usage_error(cmd.name, "wants one of list, redrive, purge");
    jq_client *jc = NULL;
    int status = jq_cmd_client_open(cmd.name, &c, &jc);
    if (status == 0 && strcmp(action, "list") == 0) {
        status = dlq_list(jc, &c, max);
    } else if (status == 0) {
        int64_t n = 0;
        int redrive = strcmp(action, "redrive") == 0;
        rc = redrive ? jq_dlq_redrive(jc, c.queue, max, &n) : jq_dlq_purge(jc, c.queue, max, &n);
        if (rc != 0) {
            fprintf(stderr, "jobqueue dlq %s: %s\n", action, jq_strerror(rc));
            status = SD_EXIT_FAILURE;
        } else if (c.json) {
            jq_cmd_json_print(json_pack("{s:I}", redrive ? "redriven" : "purged", (json_int_t)n));
        } else {
            printf("%s %lld\n", redrive ? "redriven" : "purged", (long long)n);
        }
    }
    jq_client_free(jc);
    sd_redis_url_clear(&c.url);
    return status;
}

static int run_cancel(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    const sd_cli_opt opts[] = {QUEUE_OPT(&c, 1), REDIS_OPT(&c), {0}};
    const sd_cli_cmd cmd = {
        .name = "jobqueue cancel",
        .synopsis = "--queue Q ID",
        .about = "Cancels job ID: a READY or DELAYED job at once; a RESERVED one is flagged, and\n"
                 "its worker stops the command at its next heartbeat. Exit 1 when the job is\n"
                 "not found or already over.",
        .opts = opts};
    const char **pos = sd_xcalloc((size_t)argc, sizeof *pos);
    int npos = 0;
    int rc = sd_cli_parse(&cmd, argc, argv, pos, &npos);
    const char *id = npos == 1 ? pos[0] : NULL;
    free(pos);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (!id)
        return sd_cli_usage_error(cmd.name, "wants one job ID");
    jq_client *jc = NULL;
    int status = jq_cmd_client_open(cmd.name, &c, &jc);
    if (status == 0) {
        jq_state was;
        rc = jq_cancel(jc, c.queue, id, &was);
        if (rc == 0 && was == JQ_STATE_RESERVED)
            printf("%s cancel requested (running: its worker stops it)\n", id);
        else if (rc == 0)
            printf("%s cancelled (was %s)\n", id, jq_state_name(was));
        else if (rc == JQ_ESTATE)
            fprintf(stderr, "jobqueue cancel: %s is %s already\n", id, jq_state_name(was));
        else
            fprintf(stderr, "jobqueue cancel: %s: %s\n", id, jq_strerror(rc));
        status = rc == 0 ? SD_EXIT_OK : SD_EXIT_FAILURE;
    }
    jq_client_free(jc);
    sd_redis_url_clear(&c.url);
    return status;
}

/* ---- drop --------------------------------------------------------------------------------------
 */

static int run_drop(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    long long max = 0;
    int yes = 0;
    const sd_cli_opt opts[] = {
        {"--max", "N", "at most N jobs (default 0: all)", .integer = &max, .min = 0, .max = 1e12},
        {"--yes", NULL, "really delete them (required)", .flag = &yes},
        REDIS_OPT(&c),
        {0}};
    const sd_cli_cmd cmd = {
        .name = "jobqueue drop",
        .synopsis = "QUEUE [--max N] --yes",
        .about = "Deletes the jobs of QUEUE now, in every state (ready, delayed, reserved, done,\n"
                 "cancelled, dead) with their results and failure histories, 1000 per Redis\n"
                 "script, then the queue's indexes, and prints \"removed N\". Its id counter\n"
                 "stays, so a queue made again under the name never reuses an id. A worker\n"
                 "running a dropped job has its ack refused. Jobs enqueued meanwhile may stay:\n"
                 "stop the producers first.",
        .opts = opts,
        .footer = "Exit status: 0 ok, 1 runtime failure, 2 usage error (also without --yes)."};
    const char **pos = sd_xcalloc((size_t)argc, sizeof *pos);
    int npos = 0;
    int rc = sd_cli_parse(&cmd, argc, argv, pos, &npos);
    const char *queue = npos == 1 ? pos[0] : NULL;
    free(pos);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (!queue)
        return sd_cli_usage_error(cmd.name, "wants one QUEUE");
    if (!jq_queue_name_valid(queue))
        return sd_cli_usage_error(cmd.name,
                                  "QUEUE wants 1 to %d letters, digits or '-_.:', got '%s'",
                                  JQ_QUEUE_MAX, queue);
    if (!yes)
        return sd_cli_usage_error(cmd.name,
                                  "this deletes %s jobs of queue %s in every state, running ones "
                                  "too, and cannot be undone: add --yes to do it",
                                  max == 0 ? "all the" : "up to --max", queue);
    c.queue = queue;
    jq_client *jc = NULL;
    int status = jq_cmd_client_open(cmd.name, &c, &jc);
    if (status == 0) {
        int64_t n = 0;
        rc = jq_queue_drop(jc, queue, max, &n);
        if (rc != 0) {
            fprintf(stderr, "jobqueue drop: %s (%lld jobs were removed before it)\n",
                    jq_strerror(rc), (long long)n);
            status = SD_EXIT_FAILURE;
        } else {
            printf("removed %lld\n", (long long)n);
        }
    }
    jq_client_free(jc);
    sd_redis_url_clear(&c.url);
    return status;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {
        {"enqueue", "enqueue a job, or one per stdin line", run_enqueue},
        {"work", "run a command for each job", jq_cmd_work},
        {"stats", "jobs per state and the oldest ready age", run_stats},
        {"dlq", "list, redrive or purge dead letters", run_dlq},
        {"cancel", "cancel a job", run_cancel},
        {"drop", "delete a whole queue's jobs", run_drop},
        {"serve", "the HTTP API", jq_cmd_serve},
        {0}};
    return sd_cli_dispatch("jobqueue", "An at-least-once job queue over Redis.", subs, argc, argv);
}
