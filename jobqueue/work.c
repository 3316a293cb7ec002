/*
 * work.c - `jobqueue work`: the worker runtime of jobqueue.h with a handler that runs a shell
 * command per job (main.c's top comment draws a job's life here).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cli.h"
#include "cmd.h"
#include "jobqueue.h"
#include "sd.h"

extern char **environ;

/* Bytes of a failed command's stderr kept as the job's error text. */
#define ERR_HEAD 200

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

int jq_cmd_work(int argc, char **argv) {
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
    int status = jq_cmd_redis_open(cmd.name, &c);
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
