/*
 * main.c - the `webhook` command. So far one subcommand, the receiver:
 *
 *   webhook receive --listen ADDR --exec 'CMD' [--secret whsec_... ...] [--secret-file FILE]
 *                   [--redis URL] [--tolerance S] [--lease-ms MS] [--retention-hours H]
 *
 * It accepts Standard Webhooks deliveries on any path and applies each webhook-id once: the
 * command runs with the body on stdin and WEBHOOK_ID in its environment, once per id, however
 * often the sender delivers it (webhook/README.md). A delivery goes through these steps, and
 * the first that ends it decides the answer:
 *
 *   verify the signature (signature.h)       401 problem+json, nothing run, nothing stored
 *   wh_dedupe_begin (dedupe.h)               503 when Redis cannot answer
 *     DONE                                   200 {"status":"duplicate"}, nothing run
 *     IN_FLIGHT                              409 (the sender retries later)
 *     CLAIMED: run CMD (/bin/sh -c)
 *       CMD exits 0: record done             200 {"status":"processed"}
 *       CMD fails: release the mark          500 (the sender's retry runs it again)
 *
 * Secrets come from --secret, --secret-file (one a line) and WEBHOOK_SECRETS (separated by
 * blanks or commas), all of them accepted at once (rotation). The command's environment is the
 * receiver's without WEBHOOK_SECRETS. No secret is ever printed.
 *
 * A delivery's memory (struct delivery) is freed once three things are over: its response was
 * given, its process handle closed, its stdin pipe closed (delivery_maybe_free). On SIGINT or
 * SIGTERM the server stops taking requests; commands still running finish, record their
 * outcome, and only then is Redis closed (receiver_maybe_close).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "cli.h"
#include "dedupe.h"
#include "http.h"
#include "redis.h"
#include "local_redis.h"
#include "sd.h"
#include "sender.h"
#include "signature.h"

extern char **environ;

#define MAX_SECRETS 16

typedef struct options {
    const char *listen;
    const char *redis;
    const char *exec;
    const char **secret_args; /* argc entries (the parser's list capacity) */
    int nsecret_args;
    const char *secret_file;
    long long tolerance_s;
    long long lease_ms;
    long long retention_hours;
    long long grace_ms;
} options;

typedef struct receiver {
    uv_loop_t *loop;
    sd_http_server *http;
    sd_aredis *redis;
    wh_dedupe *dedupe;
    wh_secret secrets[MAX_SECRETS];
    size_t nsecrets;
    const char *exec;
    char **child_env; /* environ without WEBHOOK_SECRETS and WEBHOOK_ID, NULL-terminated */
    size_t child_env_len;
    int64_t tolerance_s;
    int active;  /* deliveries not yet freed */
    int stopped; /* the HTTP server has stopped */
    uint64_t processed, duplicates, in_flight, failed, unauthorized;
} receiver;

typedef struct delivery {
    receiver *rx;
    sd_http_req *req;
    wh_claim *claim;
    char *id;
    uv_process_t proc;
    uv_pipe_t in;
    uv_write_t write;
    char *input; /* the body's copy being written to the command's stdin: the request's own
                    bytes go away once it is answered, which may come first */
    int proc_open, in_open, finishing, responded;
    int ok;              /* the command exited 0 */
    int64_t exit_status; /* else how it ended */
    int term_signal;
} delivery;

/* ---- one delivery ---- */

static void receiver_maybe_close(receiver *rx);

static void delivery_maybe_free(delivery *d) {
    if (!d->responded || d->proc_open || d->in_open || d->finishing)
        return;
    receiver *rx = d->rx;
    free(d->input);
    free(d->id);
    free(d);
    rx->active--;
    receiver_maybe_close(rx);
}

static void respond_status(delivery *d, int status, const char *what) {
    json_t *j = json_pack("{s:s, s:s}", "status", what, "webhook_id", d->id);
    sd_http_req_respond_json(d->req, status, j);
    d->responded = 1;
}

static void respond_problem(delivery *d, int status, const char *title, const char *detail) {
    sd_http_req_respond_problem(d->req, status, "about:blank", title, detail, NULL);
    d->responded = 1;
}

static void on_proc_closed(uv_handle_t *h) {
    delivery *d = h->data;
    d->proc_open = 0;
    delivery_maybe_free(d);
}

static void on_in_closed(uv_handle_t *h) {
    delivery *d = h->data;
    d->in_open = 0;
    delivery_maybe_free(d);
}

/* Answers once the outcome is recorded, so that a 200 means a duplicate will be told "done". */
static void respond_outcome(delivery *d) {
    if (d->ok) {
        d->rx->processed++;
        respond_status(d, 200, "processed");
        return;
    }
    d->rx->failed++;
    char detail[96];
    if (d->term_signal)
        snprintf(detail, sizeof detail, "the command was killed by signal %d", d->term_signal);
    else
        snprintf(detail, sizeof detail, "the command exited with status %lld",
                 (long long)d->exit_status);
    respond_problem(d, 500, "Command failed", detail);
}

static void on_finished(int err, wh_claim_result result, void *udata) {
    delivery *d = udata;
    d->finishing = 0;
    /* A succeeded command whose done record could not be written is still a success: answering
     * 500 would make the sender's retry, and a second run, certain. */
    if (err)
        sd_log(SD_LOG_WARN, "webhook.record_failed", "error=\"%s\"", sd_strerror(err));
    else if (result == WH_CLAIM_TAKEN || result == WH_CLAIM_VANISHED)
        sd_log(SD_LOG_WARN, "webhook.mark_lost", "result=%s",
               result == WH_CLAIM_TAKEN ? "taken" : "vanished");
    respond_outcome(d);
    delivery_maybe_free(d);
}

/* Records the outcome (done, or the mark released), then answers. */
static void finish(delivery *d) {
    wh_claim *c = d->claim;
    d->claim = NULL;
    if (wh_claim_finish(c, d->ok, on_finished, d) == 0) {
        d->finishing = 1;
        return;
    }
    sd_log(SD_LOG_WARN, "webhook.record_failed", "error=\"Redis unreachable\"");
    respond_outcome(d);
    delivery_maybe_free(d);
}

static void on_command_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
    delivery *d = p->data;
    d->ok = exit_status == 0 && term_signal == 0;
    d->exit_status = exit_status;
    d->term_signal = term_signal;
    uv_close((uv_handle_t *)&d->proc, on_proc_closed);
    finish(d);
}

static void on_written(uv_write_t *w, int status) {
    delivery *d = w->data;
    /* A command that does not read its stdin closes the pipe first: EPIPE is no error here. */
    uv_close((uv_handle_t *)&d->in, on_in_closed);
}

static void run_command(delivery *d) {
    receiver *rx = d->rx;
    size_t len;
    const char *body = sd_http_req_body(d->req, &len);
    char *id_env = sd_xasprintf("WEBHOOK_ID=%s", d->id);
    rx->child_env[rx->child_env_len] = id_env;
    rx->child_env[rx->child_env_len + 1] = NULL;
    uv_pipe_init(rx->loop, &d->in, 0);
    d->in.data = d;
    d->in_open = 1;
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&d->in},
        /* The command's output goes to our stderr: stdout carries the listening line. */
        {.flags = UV_INHERIT_FD, .data.fd = 2},
        {.flags = UV_INHERIT_FD, .data.fd = 2}};
    char *args[] = {"/bin/sh", "-c", (char *)rx->exec, NULL};
    uv_process_options_t po = {.exit_cb = on_command_exit,
                               .file = "/bin/sh",
                               .args = args,
                               .env = rx->child_env,
                               .stdio_count = 3,
                               .stdio = stdio};
    d->proc.data = d;
    int rc = uv_spawn(rx->loop, &d->proc, &po);
    rx->child_env[rx->child_env_len] = NULL;
    free(id_env);
    if (rc != 0) {
        /* uv_spawn leaves the handle to be closed even when it fails. */
        d->proc_open = 1;
        uv_close((uv_handle_t *)&d->proc, on_proc_closed);
        uv_close((uv_handle_t *)&d->in, on_in_closed);
        sd_log(SD_LOG_ERROR, "webhook.spawn_failed", "error=\"%s\"", uv_strerror(rc));
        d->ok = 0;
        d->exit_status = 127;
        finish(d);
        return;
    }
    d->proc_open = 1;
    if (len == 0) {
        uv_close((uv_handle_t *)&d->in, on_in_closed);
        return;
    }
    d->input = sd_xmalloc(len);
    memcpy(d->input, body, len);
    uv_buf_t buf = uv_buf_init(d->input, (unsigned)len);
    d->write.data = d;
    if (uv_write(&d->write, (uv_stream_t *)&d->in, &buf, 1, on_written) != 0)
        uv_close((uv_handle_t *)&d->in, on_in_closed);
}

static void on_began(int err, wh_dedupe_state state, wh_claim *claim, void *udata) {
    delivery *d = udata;
    receiver *rx = d->rx;
    if (err) {
        respond_problem(d, 503, "Redis unavailable", "the delivery could not be deduplicated");
    } else if (state == WH_DEDUPE_DONE) {
        rx->duplicates++;
        respond_status(d, 200, "duplicate");
    } else if (state == WH_DEDUPE_IN_FLIGHT) {
        rx->in_flight++;
        respond_problem(d, 409, "In flight", "this webhook-id is being processed; retry later");
    } else {
        d->claim = claim;
        run_command(d);
        return;
    }
    delivery_maybe_free(d);
}

static void on_delivery(sd_http_req *req, void *udata) {
    receiver *rx = udata;
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    const char *id = sd_http_req_header(req, "webhook-id");
    int rc = wh_signature_verify(rx->secrets, rx->nsecrets, id,
                                 sd_http_req_header(req, "webhook-timestamp"),
                                 sd_http_req_header(req, "webhook-signature"), body, len,
                                 (int64_t)time(NULL), rx->tolerance_s);
    if (rc != 0) {
        rx->unauthorized++;
        sd_http_req_respond_problem(req, 401, "about:blank", "Unauthorized", wh_strerror(rc), NULL);
        return;
    }
    delivery *d = sd_xcalloc(1, sizeof *d);
    d->rx = rx;
    d->req = req;
    d->id = sd_xstrdup(id);
    rx->active++;
    rc = wh_dedupe_begin(rx->dedupe, id, on_began, d);
    if (rc != 0) {
        respond_problem(d, 503, "Redis unavailable", "the delivery could not be deduplicated");
        delivery_maybe_free(d);
    }
}

static void on_metrics(sd_http_buf *buf, void *udata) {
    receiver *rx = udata;
    sd_http_buf_printf(buf,
                       "# HELP webhook_receiver_deliveries_total Deliveries by outcome.\n"
                       "# TYPE webhook_receiver_deliveries_total counter\n"
                       "webhook_receiver_deliveries_total{outcome=\"processed\"} %llu\n"
                       "webhook_receiver_deliveries_total{outcome=\"duplicate\"} %llu\n"
                       "webhook_receiver_deliveries_total{outcome=\"in_flight\"} %llu\n"
                       "webhook_receiver_deliveries_total{outcome=\"failed\"} %llu\n"
                       "webhook_receiver_deliveries_total{outcome=\"unauthorized\"} %llu\n",
                       (unsigned long long)rx->processed, (unsigned long long)rx->duplicates,
                       (unsigned long long)rx->in_flight, (unsigned long long)rx->failed,
                       (unsigned long long)rx->unauthorized);
}

/* ---- the receiver ---- */

/* Closes Redis once the server has stopped and no delivery is left. */
static void receiver_maybe_close(receiver *rx) {
    if (!rx->stopped || rx->active > 0 || rx->redis == NULL)
        return;
    sd_aredis_free(rx->redis);
    rx->redis = NULL;
    wh_dedupe_free(rx->dedupe);
    rx->dedupe = NULL;
}

static void on_http_stopped(sd_http_server *srv, void *udata) {
    receiver *rx = udata;
    rx->stopped = 1;
    receiver_maybe_close(rx);
}

/* Adds one secret's text; returns 0 or -1 after printing which one is wrong (not its text). */
static int secret_add(receiver *rx, const char *text, const char *from) {
    if (rx->nsecrets == MAX_SECRETS) {
        fprintf(stderr, "webhook receive: more than %d secrets\n", MAX_SECRETS);
        return -1;
    }
    if (wh_secret_parse(text, &rx->secrets[rx->nsecrets]) != 0) {
        fprintf(stderr, "webhook receive: secret %zu (%s): %s\n", rx->nsecrets + 1, from,
                wh_strerror(WH_ESECRET));
        return -1;
    }
    rx->nsecrets++;
    return 0;
}

/* Splits text on blanks, commas and newlines and adds each secret. */
static int secrets_add_all(receiver *rx, const char *text, const char *from) {
    char *copy = sd_xstrdup(text), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, " \t\r\n,", &save); t && rc == 0;
         t = strtok_r(NULL, " \t\r\n,", &save))
        rc = secret_add(rx, t, from);
    memset(copy, 0, strlen(text));
    free(copy);
    return rc;
}

static int secrets_load(receiver *rx, const options *o) {
    for (int i = 0; i < o->nsecret_args; i++)
        if (secret_add(rx, o->secret_args[i], "--secret") != 0)
            return -1;
    if (o->secret_file) {
        FILE *f = fopen(o->secret_file, "r");
        if (!f) {
            fprintf(stderr, "webhook receive: cannot read --secret-file %s: %s\n", o->secret_file,
                    strerror(errno));
            return -1;
        }
        char line[512];
        int rc = 0;
        while (rc == 0 && fgets(line, sizeof line, f))
            rc = secrets_add_all(rx, line, "--secret-file");
        memset(line, 0, sizeof line);
        fclose(f);
        if (rc != 0)
            return -1;
    }
    const char *env = getenv("WEBHOOK_SECRETS");
    if (env && secrets_add_all(rx, env, "WEBHOOK_SECRETS") != 0)
        return -1;
    if (rx->nsecrets == 0) {
        fprintf(stderr, "webhook receive: no secret: give --secret, --secret-file or "
                        "WEBHOOK_SECRETS\n");
        return -1;
    }
    return 0;
}

/* The command's environment: ours without WEBHOOK_SECRETS and WEBHOOK_ID, with room for
 * WEBHOOK_ID and the terminating NULL. */
static void child_env_build(receiver *rx) {
    size_t n = 0;
    while (environ[n])
        n++;
    rx->child_env = sd_xcalloc(n + 2, sizeof *rx->child_env);
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "WEBHOOK_SECRETS=", 16) != 0 &&
            strncmp(environ[i], "WEBHOOK_ID=", 11) != 0)
            rx->child_env[rx->child_env_len++] = environ[i];
}

/* Runs the receiver with its secrets already loaded into *rxp. */
static int cmd_receive(receiver *rxp, options *o, const sd_redis_url *url) {
    receiver rx = *rxp;
    rx.loop = uv_default_loop();
    rx.exec = o->exec;
    rx.tolerance_s = o->tolerance_s;
    int status = SD_EXIT_FAILURE;
    child_env_build(&rx);
    sd_redis_opts ropts;
    sd_redis_opts_default(&ropts);
    ropts.scripts = wh_dedupe_scripts(&ropts.nscripts);
    /* Patient with Redis: a claim or a done record given up on is worse than a late one (a
     * mark left to answer 409 for a lease, a command that runs again), and the sender waits for
     * us anyway (15 s by default). The loop itself stalls while commands start: uv_spawn waits
     * for each child's exec, hundreds of ms apiece on a loaded machine. */
    ropts.command_timeout_ms = 5000;
    if (sd_aredis_new(rx.loop, url, &ropts, &rx.redis) != 0) {
        fprintf(stderr, "webhook receive: bad Redis URL\n");
        goto out;
    }
    if (sd_aredis_wait_connected(rx.redis, 2000) != 0)
        sd_log(SD_LOG_WARN, "webhook.redis_unreachable", "answer=503");
    wh_dedupe_opts dopts;
    wh_dedupe_opts_default(&dopts);
    dopts.lease_ms = (int)o->lease_ms;
    dopts.retention_ms = o->retention_hours * 3600 * 1000;
    rx.dedupe = wh_dedupe_new(rx.loop, rx.redis, &dopts);
    if (rx.dedupe == NULL) {
        fprintf(stderr, "webhook receive: bad dedupe options\n");
        goto out;
    }
    sd_http_opts hopts;
    sd_http_opts_default(&hopts);
    hopts.server_name = "webhook";
    rx.http = sd_http_server_new(rx.loop, &hopts);
    sd_http_server_route(rx.http, "POST", "*", on_delivery, &rx);
    sd_http_server_add_metrics(rx.http, on_metrics, &rx);
    int rc = sd_http_server_listen(rx.http, o->listen);
    if (rc == 0)
        rc = sd_http_server_stop_on_signals(rx.http, (int)o->grace_ms, on_http_stopped, &rx);
    if (rc == 0)
        rc = sd_http_server_print_address(rx.http);
    if (rc != 0) {
        fprintf(stderr, "webhook receive: cannot listen on %s: %s\n", o->listen, sd_strerror(rc));
        sd_http_server_stop(rx.http, 0, on_http_stopped, &rx);
        uv_run(rx.loop, UV_RUN_DEFAULT);
        goto out;
    }
    sd_log(SD_LOG_INFO, "webhook.receiving", "port=%d secrets=%zu tolerance_s=%lld",
           sd_http_server_port(rx.http), rx.nsecrets, o->tolerance_s);
    uv_run(rx.loop, UV_RUN_DEFAULT);
    status = SD_EXIT_OK;
out:
    sd_http_server_free(rx.http);
    if (rx.redis) {
        rx.stopped = 1;
        receiver_maybe_close(&rx);
        uv_run(rx.loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(rx.loop);
    for (size_t i = 0; i < rx.nsecrets; i++)
        wh_secret_clear(&rx.secrets[i]);
    free(rx.child_env);
    return status;
}

static int run_receive(int argc, char **argv) {
    options o;
    memset(&o, 0, sizeof o);
    o.secret_args = sd_xcalloc((size_t)argc, sizeof *o.secret_args);
    o.listen = "127.0.0.1:8080";
    o.tolerance_s = 300;
    o.lease_ms = 30000;
    o.retention_hours = 7 * 24;
    o.grace_ms = 10000;
    const sd_cli_opt opts[] = {
        {"--listen", "HOST:PORT", "address to listen on (default 127.0.0.1:8080)",
         .parse = sd_cli_listen_parse, .udata = &o.listen},
        {"--exec", "'CMD'",
         "run by /bin/sh -c once per webhook-id, the body on stdin,\n"
         "WEBHOOK_ID in the environment; exit 0 means processed",
         .text = &o.exec, .required = 1},
        {"--secret", "whsec_...",
         "a signing secret (repeatable); prefer --secret-file or\n"
         "WEBHOOK_SECRETS: argv is readable by every local user",
         .list = o.secret_args, .count = &o.nsecret_args},
        {"--secret-file", "FILE", "secrets, one a line", .text = &o.secret_file},
        {"--redis", "URL",
         "Redis for the processed ids (else REDIS_URL, else the local durable\n"
         "Redis: they must outlive this process, or a restart runs CMD again)",
         .parse = sd_cli_redis_parse, .udata = &o.redis},
        {"--tolerance", "S", "accepted timestamp skew in seconds (default 300)",
         .integer = &o.tolerance_s, .min = 1, .max = 86400},
        {"--lease-ms", "MS", "in-flight mark life without renewal (default 30000)",
         .integer = &o.lease_ms, .min = 300, .max = 3600000},
        {"--retention-hours", "H",
         "how long a processed id is remembered (default 168: the\n"
         "sender's retry horizon plus a replay window)",
         .integer = &o.retention_hours, .min = 1, .max = 24 * 365},
        {"--grace-ms", "MS", "on SIGTERM, time for requests in flight (default 10000)",
         .integer = &o.grace_ms, .min = 0, .max = 600000},
        {0}};
    const sd_cli_cmd cmd = {
        .name = "webhook receive",
        .synopsis = "--exec 'CMD' [options]",
        .about = "Receives Standard Webhooks deliveries on any path and runs CMD once per\n"
                 "webhook-id: 401 for a bad signature, 409 while the id is being processed,\n"
                 "200 once it was (again 200 for duplicates), 500 when CMD failed.\n"
                 "Secrets are also read from WEBHOOK_SECRETS (blank- or comma-separated).",
        .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    sd_redis_url url;
    memset(&url, 0, sizeof url);
    /* Secrets first: a bad one is a usage error before any redis-server starts. The processed
     * ids must outlive this process (a restarted receiver that forgot them would run CMD again
     * for every retry and replay), so the Redis is a durable one that never evicts. */
    receiver rx;
    memset(&rx, 0, sizeof rx);
    char err[512];
    if (rc != SD_CLI_OK)
        rc = sd_cli_exit_status(rc);
    else if (secrets_load(&rx, &o) != 0)
        rc = SD_EXIT_USAGE;
    else if (sd_redis_resolve_durable(o.redis, &url) != 0)
        rc = o.redis || getenv("REDIS_URL") ? SD_EXIT_USAGE : SD_EXIT_FAILURE;
    else if (sd_redis_require_noeviction(&url, err, sizeof err) != 0) {
        fprintf(stderr, "webhook receive: %s\n", err);
        rc = SD_EXIT_FAILURE;
    } else
        rc = cmd_receive(&rx, &o, &url);
    for (size_t i = 0; i < rx.nsecrets; i++)
        wh_secret_clear(&rx.secrets[i]);
    sd_redis_url_clear(&url);
    free(o.secret_args);
    return rc;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {
        {"serve", "the sender: endpoints, messages, dead letters, and delivery workers",
         wh_run_serve},
        {"deliver", "more delivery workers for the sender, as a separate process", wh_run_deliver},
        {"receive", "receive webhooks and run a command once per webhook-id", run_receive},
        {0}};
    return sd_cli_dispatch("webhook", "Signed, idempotent webhooks (Standard Webhooks).", subs,
                           argc, argv);
}
