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
 * the enqueue itself is asynchronous (jq_aenqueue). GET and DELETE of a job, the stats and
 * /metrics use the synchronous client on the loop's thread: one round trip each, which holds
 * the loop for that long (the asynchronous client has no calls for them yet).
 *
 * Exit status: 0 ok, 1 runtime failure, 2 usage error.
 */
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "cli.h"
#include "http.h"
#include "idempotency.h"
#include "jobqueue.h"
#include "local_redis.h"
#include "sd.h"

extern char **environ;

/* enqueue -: lines sent and not yet acknowledged, at most. */
#define ENQ_IN_FLIGHT 128
/* work: bytes of a failed command's stderr kept as the job's error text. */
#define ERR_HEAD 200
/* serve: queues /metrics reports, at most (named by --queue, then seen by requests). */
#define MAX_QUEUES 64

/* ---- Options every subcommand shares -------------------------------------------------------- */

typedef struct common {
    const char *redis;
    const char *queue;
    int json;
    jq_config cfg;
    sd_redis_url url;
} common;

static int queue_parse(const char *value, void *udata, char *err, size_t len) {
    if (!jq_queue_name_valid(value)) {
        snprintf(err, len, "wants 1 to %d letters, digits or '-_.:', got '%s'", JQ_QUEUE_MAX,
                 value);
        return -1;
    }
    *(const char **)udata = value;
    return 0;
}

#define REDIS_OPT(c)                                                                               \
    {                                                                                              \
        "--redis", "URL",                                                                          \
            "Redis to use (else REDIS_URL, else the local durable Redis,\n"                        \
            "started on first use; `./run.sh redis-stop` stops it)",                               \
            .parse = sd_cli_redis_parse, .udata = &(c)->redis                                      \
    }
#define QUEUE_OPT(c, req)                                                                          \
    {                                                                                              \
        "--queue", "Q", "the queue (letters, digits, '-_.:')",                                     \
            .parse = queue_parse, .udata = &(c)->queue, .required = (req)                          \
    }

/* Finds the Redis (printing which) and refuses one that may evict keys. Returns 0 or an exit
 * status. */
static int redis_open(const char *name, common *c) {
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

static int client_open(const char *name, common *c, jq_client **out) {
    int rc = redis_open(name, c);
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
static json_t *time_json(int64_t ms) {
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
static void bytes_set(json_t *obj, const char *name, const char *p, size_t len) {
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

static json_t *stats_json(const jq_stats *s) {
    double age = s->oldest_ready_age_ms < 0 ? 0.0 : (double)s->oldest_ready_age_ms / 1000.0;
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "ready", (json_int_t)s->ready,
                     "delayed", (json_int_t)s->delayed, "reserved", (json_int_t)s->reserved, "dead",
                     (json_int_t)s->dead, "done", (json_int_t)s->done, "cancelled",
                     (json_int_t)s->cancelled, "oldest_ready_age_s", age);
}

static json_t *info_json(const char *queue, const jq_info *i) {
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:b}", "id", i->id, "queue", queue, "state",
                  jq_state_name(i->state), "attempts", i->attempts, "max_attempts", i->max_attempts,
                  "priority", i->priority, "cancel_requested", i->cancel_requested);
    bytes_set(j, "payload", i->payload, i->payload_len);
    bytes_set(j, "progress", i->progress, strlen(i->progress));
    bytes_set(j, "result", i->result, strlen(i->result));
    json_object_set_new(j, "last_error", json_string(i->last_error));
    if (i->idempotency_key[0])
        json_object_set_new(j, "idempotency_key", json_string(i->idempotency_key));
    json_object_set_new(j, "created_at", time_json(i->created_ms));
    json_object_set_new(j, "updated_at", time_json(i->updated_ms));
    json_object_set_new(j, "run_at", time_json(i->run_at_ms));
    json_object_set_new(j, "lease_until", time_json(i->lease_until_ms));
    json_object_set_new(j, "failed_at", time_json(i->failed_ms));
    json_object_set_new(j, "finished_at", time_json(i->finished_ms));
    return j;
}

static void json_print(json_t *j) {
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

static void on_line_enqueued(jq_aclient *c, int status, const jq_enqueued *e, void *arg) {
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
    int rc = jq_aenqueue(s->c, s->queue, s->line, s->line_len, &o, on_line_enqueued, arg);
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
        status = redis_open(cmd.name, &c);
        if (status == 0)
            status = enqueue_stream(&c, &o, ikey);
    } else {
        jq_client *jc = NULL;
        status = client_open(cmd.name, &c, &jc);
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

/* ---- work -------------------------------------------------------------------------------------
 */

typedef struct worker_cmd worker_cmd;

typedef struct run {
    worker_cmd *wc;
    jq_task *task;
    uv_process_t proc;
    uv_pipe_t in, out, err;
    uv_timer_t kill;
    char *input;
    char *result;
    size_t result_len;
    int over; /* stdout passed the bound */
    char err_head[ERR_HEAD + 1];
    size_t err_len;
    int handles; /* open handles */
    int out_eof, err_eof, exited;
    int64_t exit_status;
    int term_signal;
    int stopping; /* a stop reason arrived: the group was sent SIGTERM */
    int finished;
    struct run *prev, *next;
} run;

struct worker_cmd {
    uv_loop_t *loop;
    jq_worker *w;
    const char *queue;
    const char *exec;
    char **env; /* environ without JOB_*, with 3 free slots and the NULL */
    size_t env_len;
    size_t max_result;
    long long kill_after_ms, grace_ms;
    uv_signal_t sigterm, sigint;
    run *runs;
};

static void run_unref(run *r) {
    if (--r->handles > 0)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        r->wc->runs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r->input);
    free(r->result);
    free(r);
}

static void on_run_handle_closed(uv_handle_t *h) {
    run_unref(h->data);
}

static void run_close(uv_handle_t *h) {
    if (!uv_is_closing(h))
        uv_close(h, on_run_handle_closed);
}

/* Finishes the job once the command has exited and its output is read. */
static void run_maybe_finish(run *r) {
    if (r->finished || !r->exited || !r->out_eof || !r->err_eof)
        return;
    r->finished = 1;
    run_close((uv_handle_t *)&r->kill);
    int ok = r->exit_status == 0 && r->term_signal == 0;
    jq_task *task = r->task;
    r->task = NULL; /* the runtime's once finished: a later stop must not find it here */
    const jq_job *job = jq_task_job(task);
    if (ok && !r->over) {
        sd_log(SD_LOG_INFO, "jobqueue.job_done", "id=%s attempt=%d bytes=%zu", job->id,
               job->attempts, r->result_len);
        jq_task_finish(task, 1, r->result, r->result_len);
        return;
    }
    char error[256];
    size_t n;
    if (ok)
        n = (size_t)snprintf(error, sizeof error, "output over the bound of %zu bytes",
                             r->wc->max_result);
    else if (r->term_signal)
        n = (size_t)snprintf(error, sizeof error, "killed by signal %d", r->term_signal);
    else
        n = (size_t)snprintf(error, sizeof error, "exit status %lld", (long long)r->exit_status);
    if (r->err_len > 0 && n < sizeof error - 3)
        snprintf(error + n, sizeof error - n, ": %.*s", (int)r->err_len, r->err_head);
    error[strcspn(error, "\n")] = '\0';
    sd_log(SD_LOG_INFO, "jobqueue.job_failed", "id=%s attempt=%d error=\"%s\"", job->id,
           job->attempts, error);
    jq_task_finish(task, 0, error, strlen(error));
}

static void on_run_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
    run *r = p->data;
    r->exited = 1;
    r->exit_status = exit_status;
    r->term_signal = term_signal;
    /* Whatever the command left running in its group goes with it: the job is over. */
    kill(-p->pid, SIGKILL);
    run_close((uv_handle_t *)&r->proc);
    run_maybe_finish(r);
}

static void on_run_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    static char scratch[65536];
    *buf = uv_buf_init(scratch, sizeof scratch);
}

static void on_run_out(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    run *r = st->data;
    if (n > 0) {
        size_t room = r->wc->max_result - r->result_len;
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(r->result + r->result_len, buf->base, take);
        r->result_len += take;
        if ((size_t)n > room)
            r->over = 1;
    } else if (n < 0) {
        r->out_eof = 1;
        run_close((uv_handle_t *)st);
        run_maybe_finish(r);
    }
}

static void on_run_err(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    run *r = st->data;
    if (n > 0) {
        fwrite(buf->base, 1, (size_t)n, stderr);
        size_t room = ERR_HEAD - r->err_len;
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(r->err_head + r->err_len, buf->base, take);
        r->err_len += take;
    } else if (n < 0) {
        r->err_eof = 1;
        run_close((uv_handle_t *)st);
        run_maybe_finish(r);
    }
}

static void on_run_written(uv_write_t *w, int status) {
    run *r = w->data;
    free(w);
    /* A command that does not read its stdin closes it first: EPIPE is no error here. */
    run_close((uv_handle_t *)&r->in);
}

static void on_kill_timer(uv_timer_t *t) {
    run *r = t->data;
    if (!r->exited)
        kill(-r->proc.pid, SIGKILL);
}

static void on_job(jq_task *task, const jq_job *job, void *arg) {
    worker_cmd *wc = arg;
    run *r = sd_xcalloc(1, sizeof *r);
    r->wc = wc;
    r->task = task;
    r->result = sd_xmalloc(wc->max_result + 1);
    r->next = wc->runs;
    if (wc->runs)
        wc->runs->prev = r;
    wc->runs = r;
    char id_env[64], attempt_env[32], queue_env[JQ_QUEUE_MAX + 16];
    snprintf(id_env, sizeof id_env, "JOB_ID=%s", job->id);
    snprintf(attempt_env, sizeof attempt_env, "JOB_ATTEMPT=%d", job->attempts);
    snprintf(queue_env, sizeof queue_env, "JOB_QUEUE=%s", wc->queue);
    wc->env[wc->env_len] = id_env;
    wc->env[wc->env_len + 1] = attempt_env;
    wc->env[wc->env_len + 2] = queue_env;
    wc->env[wc->env_len + 3] = NULL;
    uv_pipe_init(wc->loop, &r->in, 0);
    uv_pipe_init(wc->loop, &r->out, 0);
    uv_pipe_init(wc->loop, &r->err, 0);
    uv_timer_init(wc->loop, &r->kill);
    r->in.data = r->out.data = r->err.data = r->kill.data = r->proc.data = r;
    r->handles = 5;
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&r->in},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->out},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->err}};
    char *args[] = {"/bin/sh", "-c", (char *)wc->exec, NULL};
    /* DETACHED: the child calls setsid(), so it leads a process group of its own that a stop
     * can signal whole (the shell and everything it started). */
    uv_process_options_t po = {.exit_cb = on_run_exit,
                               .file = "/bin/sh",
                               .args = args,
                               .env = wc->env,
                               .flags = UV_PROCESS_DETACHED,
                               .stdio_count = 3,
                               .stdio = stdio};
    int rc = uv_spawn(wc->loop, &r->proc, &po);
    wc->env[wc->env_len] = NULL;
    if (rc != 0) {
        sd_log(SD_LOG_ERROR, "jobqueue.spawn_failed", "id=%s error=\"%s\"", job->id,
               uv_strerror(rc));
        r->finished = 1;
        run_close((uv_handle_t *)&r->proc);
        run_close((uv_handle_t *)&r->in);
        run_close((uv_handle_t *)&r->out);
        run_close((uv_handle_t *)&r->err);
        run_close((uv_handle_t *)&r->kill);
        char error[128];
        snprintf(error, sizeof error, "cannot start /bin/sh: %s", uv_strerror(rc));
        jq_task_finish(task, 0, error, strlen(error));
        return;
    }
    sd_log(SD_LOG_INFO, "jobqueue.job_started", "id=%s attempt=%d pid=%d", job->id, job->attempts,
           r->proc.pid);
    uv_read_start((uv_stream_t *)&r->out, on_run_alloc, on_run_out);
    uv_read_start((uv_stream_t *)&r->err, on_run_alloc, on_run_err);
    if (job->payload_len == 0) {
        run_close((uv_handle_t *)&r->in);
        return;
    }
    r->input = sd_xmalloc(job->payload_len);
    memcpy(r->input, job->payload, job->payload_len);
    uv_write_t *w = sd_xmalloc(sizeof *w);
    w->data = r;
    uv_buf_t buf = uv_buf_init(r->input, (unsigned)job->payload_len);
    if (uv_write(w, (uv_stream_t *)&r->in, &buf, 1, on_run_written) != 0) {
        free(w);
        run_close((uv_handle_t *)&r->in);
    }
}

/* A cancel, the job timeout or the stop's grace: the command's group gets SIGTERM, then
 * SIGKILL; its exit finishes the task as the runtime asks for the reason. */
static void on_job_stop(jq_task *task, int reason, void *arg) {
    worker_cmd *wc = arg;
    run *r = wc->runs;
    while (r && r->task != task)
        r = r->next;
    if (!r || r->exited || r->stopping)
        return;
    r->stopping = 1;
    sd_log(SD_LOG_INFO, "jobqueue.job_stopping", "id=%s reason=\"%s\" pid=%d",
           jq_task_job(task)->id, jq_strerror(reason), r->proc.pid);
    kill(-r->proc.pid, SIGTERM);
    uv_timer_start(&r->kill, on_kill_timer, (uint64_t)wc->kill_after_ms, 0);
}

static void on_worker_stopped(jq_worker *w, void *arg) {
    worker_cmd *wc = arg;
    jq_worker_stats st = jq_worker_get_stats(w);
    sd_log(SD_LOG_INFO, "jobqueue.stopped", "started=%lld acked=%lld failed=%lld released=%lld",
           (long long)st.started, (long long)st.acked, (long long)st.failed,
           (long long)st.released);
    uv_close((uv_handle_t *)&wc->sigterm, NULL);
    uv_close((uv_handle_t *)&wc->sigint, NULL);
    /* Its Redis connections are what keeps the loop running now. */
    jq_worker_free(w);
    wc->w = NULL;
}

static void on_stop_signal(uv_signal_t *h, int signum) {
    worker_cmd *wc = h->data;
    sd_log(SD_LOG_INFO, "jobqueue.stopping", "signal=%d grace_ms=%lld", signum, wc->grace_ms);
    uv_signal_stop(&wc->sigterm);
    uv_signal_stop(&wc->sigint);
    jq_worker_stop(wc->w, wc->grace_ms, on_worker_stopped, wc);
}

static void env_build(worker_cmd *wc) {
    size_t n = 0;
    while (environ[n])
        n++;
    wc->env = sd_xcalloc(n + 4, sizeof *wc->env);
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "JOB_ID=", 7) != 0 && strncmp(environ[i], "JOB_ATTEMPT=", 12) &&
            strncmp(environ[i], "JOB_QUEUE=", 10) != 0)
            wc->env[wc->env_len++] = environ[i];
}

static int run_work(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    worker_cmd wc;
    memset(&wc, 0, sizeof wc);
    long long concurrency = 1, visibility = 30000, job_timeout = 0;
    long long backoff_base = c.cfg.backoff_base_ms, backoff_max = c.cfg.backoff_max_ms;
    wc.grace_ms = 30000;
    wc.kill_after_ms = 2000;
    const sd_cli_opt opts[] = {
        QUEUE_OPT(&c, 1),
        {"--exec", "'CMD'",
         "run by /bin/sh -c per job: payload on stdin, JOB_ID, JOB_ATTEMPT,\n"
         "JOB_QUEUE in its environment; exit 0 acks (stdout is the\n"
         "result), anything else fails the attempt",
         .text = &wc.exec, .required = 1},
        {"--concurrency", "N", "commands at once (default 1)", .integer = &concurrency, .min = 1,
         .max = 10000},
        {"--visibility-timeout", "MS",
         "the lease (default 30000, at least 6000); heartbeats renew it\n"
         "every third of it while the command runs",
         .integer = &visibility, .min = 1, .max = 24.0 * 3600 * 1000},
        {"--job-timeout", "MS",
         "stop a command running this long: a failed attempt (default 0:\nnone)",
         .integer = &job_timeout, .min = 0, .max = 24.0 * 3600 * 1000},
        {"--backoff-base-ms", "MS", "the first retry's backoff cap (default 1000)",
         .integer = &backoff_base, .min = 1, .max = 24.0 * 3600 * 1000},
        {"--backoff-max-ms", "MS", "the backoff's cap (default 300000)", .integer = &backoff_max,
         .min = 1, .max = 24.0 * 3600 * 1000},
        {"--grace-ms", "MS",
         "on SIGTERM/SIGINT, running commands get MS to finish; the rest\n"
         "are stopped and their jobs released (default 30000)",
         .integer = &wc.grace_ms, .min = 0, .max = 24.0 * 3600 * 1000},
        {"--kill-after-ms", "MS",
         "a stopped command's group gets SIGTERM, then SIGKILL after MS\n(default 2000)",
         .integer = &wc.kill_after_ms, .min = 0, .max = 3600000},
        REDIS_OPT(&c),
        {0}};
    const sd_cli_cmd cmd = {
        .name = "jobqueue work",
        .synopsis = "--queue Q --exec 'CMD' [options]",
        .about = "Runs CMD for each job of the queue. A cancel, --job-timeout or the end of the\n"
                 "stop's grace period stops the command's whole process group.",
        .opts = opts,
        .footer = "Exit status: 0 stopped by a signal, 1 runtime failure, 2 usage error."};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    c.cfg.backoff_base_ms = backoff_base;
    c.cfg.backoff_max_ms = backoff_max;
    char err[512];
    if (jq_config_validate(&c.cfg, err, sizeof err) != 0)
        return sd_cli_usage_error(cmd.name, "%s", err);
    if (visibility < 3LL * c.cfg.timeout_ms)
        return sd_cli_usage_error(cmd.name,
                                  "--visibility-timeout %lld is too short: heartbeats run every "
                                  "third of it and each may take the Redis deadline (%d ms), so "
                                  "it must be at least %lld or a running job could be handed to "
                                  "a second worker",
                                  visibility, c.cfg.timeout_ms, 3LL * c.cfg.timeout_ms);
    int status = redis_open(cmd.name, &c);
    if (status != 0) {
        sd_redis_url_clear(&c.url);
        return status;
    }
    wc.loop = uv_default_loop();
    wc.queue = c.queue;
    wc.max_result = c.cfg.max_result;
    env_build(&wc);
    jq_worker_opts wo;
    jq_worker_opts_default(&wo);
    wo.queue = c.queue;
    wo.concurrency = (int)concurrency;
    wo.visibility_ms = visibility;
    wo.job_timeout_ms = job_timeout;
    /* A command is a process: reserving more than the free slots would only hold leases. */
    wo.batch = wo.concurrency < 100 ? wo.concurrency : 100;
    wo.handler = on_job;
    wo.stop = on_job_stop;
    wo.arg = &wc;
    rc = jq_worker_new(wc.loop, &c.url, &c.cfg, &wo, &wc.w, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "jobqueue work: %s\n", err);
        status = rc == JQ_EINVAL ? SD_EXIT_USAGE : SD_EXIT_FAILURE;
    } else {
        uv_signal_init(wc.loop, &wc.sigterm);
        uv_signal_init(wc.loop, &wc.sigint);
        wc.sigterm.data = wc.sigint.data = &wc;
        uv_signal_start(&wc.sigterm, on_stop_signal, SIGTERM);
        uv_signal_start(&wc.sigint, on_stop_signal, SIGINT);
        jq_worker_start(wc.w);
        sd_log(SD_LOG_INFO, "jobqueue.working",
               "queue=%s concurrency=%lld visibility_ms=%lld "
               "job_timeout_ms=%lld",
               c.queue, concurrency, visibility, job_timeout);
        uv_run(wc.loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(wc.loop);
    free(wc.env);
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
    int status = client_open(cmd.name, &c, &jc);
    jq_stats s;
    if (status == 0 && (rc = jq_stats_get(jc, c.queue, &s)) != 0) {
        fprintf(stderr, "jobqueue stats: %s\n", jq_strerror(rc));
        status = SD_EXIT_FAILURE;
    }
    if (status == 0 && c.json) {
        json_print(stats_json(&s));
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
            json_object_set_new(j, "failed_at", time_json(infos[i].failed_ms));
            json_object_set_new(j, "created_at", time_json(infos[i].created_ms));
            bytes_set(j, "payload", infos[i].payload, infos[i].payload_len);
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
        json_print(all);
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
    int status = client_open(cmd.name, &c, &jc);
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
            json_print(json_pack("{s:I}", redrive ? "redriven" : "purged", (json_int_t)n));
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
    int status = client_open(cmd.name, &c, &jc);
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

/* ---- serve -------------------------------------------------------------------------------------
 */

typedef struct server {
    uv_loop_t *loop;
    sd_http_server *http;
    jq_client *sync;   /* GET, DELETE, stats, metrics */
    jq_aclient *async; /* POST: the enqueue */
    sd_aredis *idem_redis;
    sd_idem *idem;
    jq_config cfg;
    char *queues[MAX_QUEUES];
    int nqueues;
    long long posts_in_flight;
} server;

static void queue_seen(server *s, const char *q) {
    for (int i = 0; i < s->nqueues; i++)
        if (strcmp(s->queues[i], q) == 0)
            return;
    if (s->nqueues < MAX_QUEUES)
        s->queues[s->nqueues++] = sd_xstrdup(q);
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

static void on_posted(jq_aclient *c, int status, const jq_enqueued *e, void *arg) {
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
        rc = jq_aenqueue(s->async, p->queue, bytes, nbytes, &o, on_posted, p);
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
    queue_seen(s, q);
    if (jobs) {
        sd_idem_handle(s->idem, req, on_post, s);
        return;
    }
    if (stats) {
        jq_stats st;
        int rc = jq_stats_get(s->sync, q, &st);
        if (rc != 0)
            problem_redis(req, rc);
        else
            sd_http_req_respond_json(req, 200, stats_json(&st));
        return;
    }
    const char *id = rest + 5;
    if (strcmp(method, "GET") == 0) {
        jq_info info;
        int rc = jq_job_get(s->sync, q, id, &info);
        if (rc == JQ_ENOTFOUND) {
            problem(req, 404, "/problems/job-not-found", "Job not found",
                    "no such job (never existed, or past its retention)");
        } else if (rc != 0) {
            problem_redis(req, rc);
        } else {
            sd_http_req_respond_json(req, 200, info_json(q, &info));
            jq_info_clear(&info);
        }
        return;
    }
    jq_state was = JQ_STATE_READY;
    int rc = jq_cancel(s->sync, q, id, &was);
    if (rc == 0 && was == JQ_STATE_RESERVED) {
        sd_http_req_respond_json(
            req, 202,
            json_pack("{s:s, s:s, s:b}", "id", id, "state", "reserved", "cancel_requested", 1));
    } else if (rc == 0) {
        sd_http_req_respond_json(req, 200,
                                 json_pack("{s:s, s:s, s:s}", "id", id, "state", "cancelled", "was",
                                           jq_state_name(was)));
    } else if (rc == JQ_ENOTFOUND) {
        problem(req, 404, "/problems/job-not-found", "Job not found",
                "no such job (never existed, or past its retention)");
    } else if (rc == JQ_ESTATE) {
        char detail[96];
        snprintf(detail, sizeof detail, "the job is %s already", jq_state_name(was));
        problem(req, 409, "/problems/job-finished", "Job already finished", detail);
    } else {
        problem_redis(req, rc);
    }
}

/* Depth per state and the oldest READY job's age, for the queues named by --queue and those
 * requests have named since the start (MAX_QUEUES at most), read from Redis at each scrape. */
static void on_metrics(sd_http_buf *buf, void *udata) {
    server *s = udata;
    sd_http_buf_printf(buf, "# HELP jobqueue_depth Jobs per queue and state.\n"
                            "# TYPE jobqueue_depth gauge\n");
    jq_stats st[MAX_QUEUES];
    int ok[MAX_QUEUES];
    for (int i = 0; i < s->nqueues; i++) {
        ok[i] = jq_stats_get(s->sync, s->queues[i], &st[i]) == 0;
        if (!ok[i])
            continue;
        /* In jq_state's order, which jq_state_name names. */
        long long v[6] = {st[i].ready, st[i].delayed, st[i].reserved,
                          st[i].done,  st[i].dead,    st[i].cancelled};
        for (int k = 0; k < 6; k++)
            sd_http_buf_printf(buf, "jobqueue_depth{queue=\"%s\",state=\"%s\"} %lld\n",
                               s->queues[i], jq_state_name((jq_state)k), v[k]);
    }
    sd_http_buf_printf(buf, "# HELP jobqueue_oldest_ready_age_seconds Age of the oldest READY "
                            "job (0 when none).\n"
                            "# TYPE jobqueue_oldest_ready_age_seconds gauge\n");
    for (int i = 0; i < s->nqueues; i++)
        if (ok[i])
            sd_http_buf_printf(
                buf, "jobqueue_oldest_ready_age_seconds{queue=\"%s\"} %.3f\n", s->queues[i],
                st[i].oldest_ready_age_ms < 0 ? 0.0 : (double)st[i].oldest_ready_age_ms / 1000.0);
}

static void on_http_stopped(sd_http_server *srv, void *udata) {
    server *s = udata;
    jq_aclient_free(s->async);
    s->async = NULL;
    sd_aredis_free(s->idem_redis);
    s->idem_redis = NULL;
}

static int run_serve(int argc, char **argv) {
    common c;
    memset(&c, 0, sizeof c);
    jq_config_default(&c.cfg);
    const char *listen = NULL;
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
    s.cfg = c.cfg;
    for (int i = 0; i < nqueues; i++)
        queue_seen(&s, queues[i]);
    free(queues);
    int status = client_open(cmd.name, &c, &s.sync);
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
        }
    }
    if (status == 0) {
        sd_http_opts ho;
        sd_http_opts_default(&ho);
        ho.server_name = "jobqueue";
        s.http = sd_http_server_new(s.loop, &ho);
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
        }
        uv_run(s.loop, UV_RUN_DEFAULT);
        sd_http_server_free(s.http);
    }
    jq_aclient_free(s.async);
    sd_aredis_free(s.idem_redis);
    uv_run(s.loop, UV_RUN_DEFAULT);
    sd_idem_free(s.idem);
    uv_loop_close(s.loop);
    jq_client_free(s.sync);
    for (int i = 0; i < s.nqueues; i++)
        free(s.queues[i]);
    sd_redis_url_clear(&c.url);
    return status;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {
        {"enqueue", "enqueue a job, or one per stdin line", run_enqueue},
        {"work", "run a command for each job", run_work},
        {"stats", "jobs per state and the oldest ready age", run_stats},
        {"dlq", "list, redrive or purge dead letters", run_dlq},
        {"cancel", "cancel a job", run_cancel},
        {"serve", "the HTTP API", run_serve},
        {0}};
    return sd_cli_dispatch("jobqueue", "An at-least-once job queue over Redis.", subs, argc, argv);
}
