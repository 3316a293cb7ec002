/*
 * test_jobqueue_command.c - the `jobqueue` command (jobqueue/main.c) as a user runs it: real
 * processes against a real Redis (single, and a 3-master cluster in the @cluster run):
 * enqueue from stdin streamed and in order, work running a shell command per job, retries to
 * DEAD and the dead-letter commands, drop, cancel and the job timeout killing the command's
 * process group, the graceful stop releasing what did not finish, stats, the local durable Redis
 * shared by two commands, and the HTTP API's statuses.
 *
 * Nothing here waits on time passing: tests wait for events (a line on a pipe, a file a
 * command writes, a job's state in Redis), polled with generous limits that only bound a
 * failure.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobqueue.h"
#include "sd.h"
#include "support.h"

static test_target *target;
static char dir[64];

static void setup(void) {
    target = test_target_start();
    snprintf(dir, sizeof dir, "/tmp/jqcmd.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

/* Safe to call twice: a skipped test calls it itself (Criterion skips .fini then). */
static void teardown(void) {
    if (!target)
        return;
    test_target_stop(target);
    target = NULL;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(jobqueue_command, .init = setup, .fini = teardown, .timeout = 120);

/* A running jobqueue command: its pid, its stdin (-1 when closed) and stdout pipes. */
typedef struct proc {
    pid_t pid;
    int in, out;
} proc;

/* Starts build/bin/jobqueue with args (NULL-terminated), REDIS_URL set to the target's unless
 * env says otherwise (env entries replace or add variables; "REDIS_URL=" removes it), stderr
 * appended to dir/stderr. */
static proc start(const char *const *args, const char *const *env) {
    int in[2], out[2];
    cr_assert_eq(pipe(in), 0);
    cr_assert_eq(pipe(out), 0);
    char *bin = test_bin_path("jobqueue");
    char errpath[128];
    snprintf(errpath, sizeof errpath, "%s/stderr", dir);
    char url_env[512];
    snprintf(url_env, sizeof url_env, "REDIS_URL=%s", test_target_url(target));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        int e = open(errpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(e, 2);
        close(in[1]);
        close(out[0]);
        setenv("REDIS_URL", test_target_url(target), 1);
        for (; env && *env; env++) {
            char *eq = strchr(*env, '=');
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(eq - *env), *env);
            if (eq[1])
                setenv(name, eq + 1, 1);
            else
                unsetenv(name);
        }
        const char *argv[32] = {"jobqueue"};
        int n = 1;
        for (; *args && n < 31; args++)
            argv[n++] = *args;
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    free(bin);
    close(in[0]);
    close(out[1]);
    return (proc){pid, in[1], out[0]};
}

static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        cr_assert_gt(n, 0);
        buf += n;
        len -= (size_t)n;
    }
}

/* Reads fd to its end (a pipe: until every writer closed it) into buf, NUL-terminated. */
static void read_all(int fd, char *buf, size_t len) {
    size_t n = 0;
    ssize_t got;
    while (n + 1 < len && (got = read(fd, buf + n, len - 1 - n)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
}

static void proc_close_stdin(proc *p) {
    if (p->in >= 0)
        close(p->in);
    p->in = -1;
}

/* Waits for p to exit (60 s at most) and returns its exit status. */
static int proc_wait(proc *p) {
    proc_close_stdin(p);
    int st = test_wait_exit(p->pid, 60000);
    cr_assert_neq(st, -1, "jobqueue did not exit");
    close(p->out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Runs jobqueue with args to its end: stdout into out (NUL-terminated), the exit status. */
static int jq_run(const char *const *args, const char *const *env, char *out, size_t len) {
    proc p = start(args, env);
    proc_close_stdin(&p);
    read_all(p.out, out, len);
    return proc_wait(&p);
}

static jq_client *client(void) {
    sd_redis_url url;
    char err[128];
    cr_assert_eq(sd_redis_url_parse(test_target_url(target), &url, err, sizeof err), 0);
    jq_client *c;
    cr_assert_eq(jq_client_new(&url, NULL, &c), 0);
    sd_redis_url_clear(&url);
    return c;
}

static jq_state job_state(jq_client *c, const char *q, const char *id) {
    jq_info info;
    if (jq_job_get(c, q, id, &info) != 0)
        return (jq_state)-1;
    jq_state s = info.state;
    jq_info_clear(&info);
    return s;
}

static jq_stats stats(jq_client *c, const char *q) {
    jq_stats s;
    cr_assert_eq(jq_stats_get(c, q, &s), 0);
    return s;
}

/* The number in dir/name, written by a job's command, or 0 while it is not there. */
static long file_number(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    long v = 0;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v;
}

/* ---- enqueue and work ------------------------------------------------------------------------ */

Test(jobqueue_command, enqueue_from_stdin_streams_ids_in_order_and_work_runs_each) {
    proc e = start((const char *[]){"enqueue", "--queue", "q", "-", NULL}, NULL);
    /* One line, and its id comes back before any more input: the lines are sent as they
     * arrive, not at EOF. */
    write_all(e.in, "line-1\n", 7);
    char ids[100][32];
    cr_assert_gt(test_read_line(e.out, ids[0], sizeof ids[0], 20000), 0);
    char buf[2048] = "";
    size_t n = 0;
    for (int i = 2; i <= 100; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "line-%d\n", i);
    write_all(e.in, buf, n);
    proc_close_stdin(&e);
    for (int i = 1; i < 100; i++)
        cr_assert_gt(test_read_line(e.out, ids[i], sizeof ids[i], 20000), 0, "id %d", i + 1);
    cr_assert_eq(proc_wait(&e), 0);
    jq_client *c = client();
    for (int i = 0; i < 100; i++) {
        if (i > 0)
            cr_assert_gt(atoll(ids[i]), atoll(ids[i - 1]), "ids in input order");
        jq_info info;
        cr_assert_eq(jq_job_get(c, "q", ids[i], &info), 0);
        char want[32];
        snprintf(want, sizeof want, "line-%d", i + 1);
        cr_assert_str_eq(info.payload, want);
        jq_info_clear(&info);
    }
    char *cmd = sd_xstrdup("printf '%s %s %s ' \"$JOB_ID\" \"$JOB_ATTEMPT\" \"$JOB_QUEUE\"; cat");
    proc w = start(
        (const char *[]){"work", "--queue", "q", "--concurrency", "4", "--exec", cmd, NULL}, NULL);
    TEST_EVENTUALLY(stats(c, "q").done == 100, 60000);
    cr_assert_eq(stats(c, "q").done, 100);
    for (int i = 0; i < 100; i++) {
        jq_info info;
        cr_assert_eq(jq_job_get(c, "q", ids[i], &info), 0);
        char want[64];
        snprintf(want, sizeof want, "%s 1 q line-%d", ids[i], i + 1);
        cr_assert_str_eq(info.result, want, "the command's stdout is the result");
        jq_info_clear(&info);
    }
    kill(w.pid, SIGTERM);
    cr_assert_eq(proc_wait(&w), 0);
    free(cmd);
    jq_client_free(c);
}

Test(jobqueue_command, enqueue_with_an_idempotency_key_twice_makes_one_job) {
    char out1[256], out2[256];
    const char *args[] = {"enqueue", "--queue", "q", "--idempotency-key", "k", "x", NULL};
    cr_assert_eq(jq_run(args, NULL, out1, sizeof out1), 0);
    cr_assert_eq(jq_run(args, NULL, out2, sizeof out2), 0);
    cr_assert_str_eq(out1, out2);
    jq_client *c = client();
    cr_assert_eq(stats(c, "q").ready, 1);
    jq_client_free(c);
}

Test(jobqueue_command, a_failing_command_is_retried_then_dead_listed_and_redriven) {
    char out[4096];
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "--max-attempts", "3", "p", NULL}, NULL,
               out, sizeof out),
        0);
    char id[32];
    snprintf(id, sizeof id, "%.*s", (int)strcspn(out, "\n"), out);
    char *cmd = sd_xasprintf("echo $JOB_ATTEMPT >> %s/attempts; echo boom >&2; exit 3", dir);
    proc w = start((const char *[]){"work", "--queue", "q", "--backoff-base-ms", "1",
                                    "--backoff-max-ms", "1", "--exec", cmd, NULL},
                   NULL);
    jq_client *c = client();
    TEST_EVENTUALLY(job_state(c, "q", id) == JQ_STATE_DEAD, 60000);
    cr_assert_eq(job_state(c, "q", id), JQ_STATE_DEAD);
    kill(w.pid, SIGTERM);
    cr_assert_eq(proc_wait(&w), 0);
    cr_assert_eq(jq_run((const char *[]){"dlq", "list", "--queue", "q", "--json", NULL}, NULL, out,
                        sizeof out),
                 0);
    json_error_t jerr;
    json_t *list = json_loads(out, 0, &jerr);
    cr_assert(json_is_array(list), "%s", out);
    cr_assert_eq(json_array_size(list), 1);
    json_t *d = json_array_get(list, 0);
    cr_assert_str_eq(json_string_value(json_object_get(d, "id")), id);
    cr_assert_eq(json_integer_value(json_object_get(d, "attempts")), 3);
    cr_assert_str_eq(json_string_value(json_object_get(d, "last_error")), "exit status 3: boom");
    cr_assert(json_is_string(json_object_get(d, "failed_at")));
    cr_assert_str_eq(json_string_value(json_object_get(d, "payload")), "p");
    json_decref(list);
    cr_assert_eq(jq_run((const char *[]){"dlq", "redrive", "--queue", "q", "--json", NULL}, NULL,
                        out, sizeof out),
                 0);
    cr_assert_str_eq(out, "{\"redriven\":1}\n");
    cr_assert_eq(job_state(c, "q", id), JQ_STATE_READY);
    jq_stats s = stats(c, "q");
    cr_assert_eq(s.dead, 0);
    cr_assert_eq(s.ready, 1);
    free(cmd);
    jq_client_free(c);
}

Test(jobqueue_command, drop_refuses_without_yes_then_deletes_the_queue) {
    jq_client *c = client();
    for (int i = 0; i < 3; i++) {
        jq_enqueued e;
        cr_assert_eq(jq_enqueue(c, "q", "x", 1, NULL, &e), 0);
    }
    char url_env[512];
    snprintf(url_env, sizeof url_env, "REDIS_URL=%s", test_target_url(target));
    const char *const env[] = {url_env, NULL};
    static test_run_out r;
    test_run_program("jobqueue", (const char *[]){"drop", "q", NULL}, NULL, env, &r);
    cr_assert_eq(r.status, 2, "without --yes: exit %d", r.status);
    cr_assert_not_null(strstr(r.err, "--yes"), "%s", r.err);
    cr_assert_str_empty(r.out);
    cr_assert_eq(stats(c, "q").ready, 3, "nothing was deleted");
    test_run_program("jobqueue", (const char *[]){"drop", "q", "--max", "1", "--yes", NULL}, NULL,
                     env, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "removed 1\n");
    cr_assert_eq(stats(c, "q").ready, 2);
    test_run_program("jobqueue", (const char *[]){"drop", "--yes", "q", NULL}, NULL, env, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "removed 2\n");
    jq_stats s = stats(c, "q");
    cr_assert_eq(s.ready + s.delayed + s.reserved + s.done + s.dead + s.cancelled, 0);
    test_run_program("jobqueue", (const char *[]){"drop", "bad/name", "--yes", NULL}, NULL, env,
                     &r);
    cr_assert_eq(r.status, 2);
    jq_client_free(c);
}

/* ---- stopping a command -------------------------------------------------------------------- */

/* The command of the stop tests: a grandchild (sleep) whose pid it writes to dir/<payload>,
 * then waits; it never ends by itself. */
#define SLEEPER "sleep 1000 & echo $! > %s/$(cat); wait"

Test(jobqueue_command, cancel_of_a_running_job_kills_its_command_group) {
    char out[256];
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "s1", NULL}, NULL, out, sizeof out), 0);
    char id[32];
    snprintf(id, sizeof id, "%.*s", (int)strcspn(out, "\n"), out);
    char *cmd = sd_xasprintf(SLEEPER, dir);
    proc w = start((const char *[]){"work", "--queue", "q", "--visibility-timeout", "6000",
                                    "--exec", cmd, NULL},
                   NULL);
    TEST_EVENTUALLY(file_number("s1") > 0, 30000);
    pid_t sleeper = (pid_t)file_number("s1");
    cr_assert_gt(sleeper, 0);
    cr_assert(test_process_alive(sleeper));
    cr_assert_eq(
        jq_run((const char *[]){"cancel", "--queue", "q", id, NULL}, NULL, out, sizeof out), 0);
    cr_assert(strstr(out, "cancel requested"), "%s", out);
    jq_client *c = client();
    TEST_EVENTUALLY(job_state(c, "q", id) == JQ_STATE_CANCELLED, 30000);
    cr_assert_eq(job_state(c, "q", id), JQ_STATE_CANCELLED);
    TEST_EVENTUALLY(!test_process_alive(sleeper), 10000);
    cr_assert(!test_process_alive(sleeper), "the command's grandchild was killed");
    /* A cancel of a finished job is refused. */
    cr_assert_eq(
        jq_run((const char *[]){"cancel", "--queue", "q", id, NULL}, NULL, out, sizeof out), 1);
    kill(w.pid, SIGTERM);
    cr_assert_eq(proc_wait(&w), 0);
    free(cmd);
    jq_client_free(c);
}

Test(jobqueue_command, job_timeout_kills_the_command_and_fails_the_attempt) {
    char out[256];
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "--max-attempts", "1", "t1", NULL}, NULL,
               out, sizeof out),
        0);
    char id[32];
    snprintf(id, sizeof id, "%.*s", (int)strcspn(out, "\n"), out);
    char *cmd = sd_xasprintf(SLEEPER, dir);
    /* 2 s, so that the command has written its grandchild's pid before it is killed: with 300 ms,
     * a sanitizer build beside two CPU hogs once killed the shell before it started the sleeper. */
    proc w = start(
        (const char *[]){"work", "--queue", "q", "--job-timeout", "2000", "--exec", cmd, NULL},
        NULL);
    jq_client *c = client();
    TEST_EVENTUALLY(job_state(c, "q", id) == JQ_STATE_DEAD, 30000);
    cr_assert_eq(job_state(c, "q", id), JQ_STATE_DEAD);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "q", id, &info), 0);
    cr_assert_str_eq(info.last_error, "job timeout after 2000 ms");
    jq_info_clear(&info);
    pid_t sleeper = (pid_t)file_number("t1");
    cr_assert_gt(sleeper, 0);
    TEST_EVENTUALLY(!test_process_alive(sleeper), 10000);
    cr_assert(!test_process_alive(sleeper));
    kill(w.pid, SIGTERM);
    cr_assert_eq(proc_wait(&w), 0);
    free(cmd);
    jq_client_free(c);
}

Test(jobqueue_command, sigterm_lets_running_commands_finish_then_releases_the_rest) {
    char out[256];
    /* "finisher" ends once dir/go exists; "stuck" never does. */
    cr_assert_eq(jq_run((const char *[]){"enqueue", "--queue", "q", "finisher", NULL}, NULL, out,
                        sizeof out),
                 0);
    char fin[32], stuck[32], late[32];
    snprintf(fin, sizeof fin, "%.*s", (int)strcspn(out, "\n"), out);
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "stuck", NULL}, NULL, out, sizeof out),
        0);
    snprintf(stuck, sizeof stuck, "%.*s", (int)strcspn(out, "\n"), out);
    char *cmd = sd_xasprintf("p=$(cat); echo $$ > %s/$p; if [ $p = finisher ]; then "
                             "while [ ! -e %s/go ]; do sleep 0.01; done; echo ok; "
                             "else sleep 1000 & echo $! > %s/stuck; wait; fi",
                             dir, dir, dir);
    proc w = start((const char *[]){"work", "--queue", "q", "--concurrency", "3", "--grace-ms",
                                    "10000", "--exec", cmd, NULL},
                   NULL);
    TEST_EVENTUALLY(file_number("finisher") > 0 && file_number("stuck") > 0, 30000);
    pid_t sleeper = (pid_t)file_number("stuck");
    cr_assert_gt(sleeper, 0);
    jq_client *c = client();
    cr_assert_eq(job_state(c, "q", fin), JQ_STATE_RESERVED);
    kill(w.pid, SIGTERM);
    /* Once stopping, nothing new is reserved: a job enqueued now stays READY. */
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "late", NULL}, NULL, out, sizeof out),
        0);
    snprintf(late, sizeof late, "%.*s", (int)strcspn(out, "\n"), out);
    char go[128];
    snprintf(go, sizeof go, "%s/go", dir);
    fclose(fopen(go, "w"));
    cr_assert_eq(proc_wait(&w), 0);
    cr_assert_eq(job_state(c, "q", fin), JQ_STATE_DONE, "finished within the grace period");
    cr_assert_eq(job_state(c, "q", stuck), JQ_STATE_READY, "released after the grace period");
    jq_info info;
    cr_assert_eq(jq_job_get(c, "q", stuck, &info), 0);
    cr_assert_eq(info.attempts, 0, "a release does not count the delivery");
    jq_info_clear(&info);
    cr_assert_eq(job_state(c, "q", late), JQ_STATE_READY);
    cr_assert(!test_process_alive(sleeper));
    free(cmd);
    jq_client_free(c);
}

/* ---- stats and the local durable Redis ---------------------------------------------------- */

Test(jobqueue_command, stats_json_counts_every_state) {
    char out[512];
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "a", NULL}, NULL, out, sizeof out), 0);
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "--delay", "3600000", "b", NULL}, NULL,
               out, sizeof out),
        0);
    cr_assert_eq(
        jq_run((const char *[]){"stats", "--queue", "q", "--json", NULL}, NULL, out, sizeof out),
        0);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    cr_assert(json_is_object(j), "%s", out);
    cr_assert_eq(json_object_size(j), 7);
    cr_assert_eq(json_integer_value(json_object_get(j, "ready")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "delayed")), 1);
    const char *zero[] = {"reserved", "dead", "done", "cancelled"};
    for (int i = 0; i < 4; i++)
        cr_assert(json_is_integer(json_object_get(j, zero[i])) &&
                      json_integer_value(json_object_get(j, zero[i])) == 0,
                  "%s", zero[i]);
    cr_assert(json_is_number(json_object_get(j, "oldest_ready_age_s")));
    json_decref(j);
}

Test(jobqueue_command, two_commands_share_the_local_durable_redis_without_a_url) {
    if (test_target_is_cluster()) {
        teardown();
        cr_skip_test("the local durable Redis is one single server whatever the target");
    }
    char state[128], xdg[160];
    snprintf(state, sizeof state, "%s/st", dir);
    snprintf(xdg, sizeof xdg, "XDG_STATE_HOME=%s", state);
    const char *env[] = {xdg, "REDIS_URL=", NULL};
    char out[512];
    cr_assert_eq(
        jq_run((const char *[]){"enqueue", "--queue", "q", "hello", NULL}, env, out, sizeof out),
        0);
    cr_assert_eq(
        jq_run((const char *[]){"stats", "--queue", "q", "--json", NULL}, env, out, sizeof out), 0);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    cr_assert_eq(json_integer_value(json_object_get(j, "ready")), 1, "%s", out);
    json_decref(j);
    char errpath[128], err[16384];
    snprintf(errpath, sizeof errpath, "%s/stderr", dir);
    test_slurp_fd(open(errpath, O_RDONLY), err, sizeof err);
    cr_assert(strstr(err, "the local durable Redis"), "%s", err);
    cr_assert(strstr(err, "already running"), "the second command found the first's server");
    static test_run_out r;
    char sdstate[200];
    snprintf(sdstate, sizeof sdstate, "XDG_STATE_HOME=%s", state);
    test_run_program("sd-redis", (const char *[]){"stop", NULL}, NULL,
                     (const char *[]){sdstate, NULL}, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
}

/* ---- serve ---------------------------------------------------------------------------------- */

typedef struct http {
    proc p;
    int port;
} http;

static http serve_start(const char *max_ready) {
    http h;
    h.p = start((const char *[]){"serve", "--listen", "127.0.0.1:0", "--max-ready", max_ready,
                                 "--queue", "q", NULL},
                NULL);
    char line[128];
    cr_assert_gt(test_read_line(h.p.out, line, sizeof line, 20000), 0);
    cr_assert_eq(sscanf(line, "listening on http://127.0.0.1:%d", &h.port), 1, "%s", line);
    return h;
}

static int req(http *h, const char *method, const char *path, const char *headers, const char *body,
               char *buf, size_t len, const char **out_body) {
    char raw[4096];
    snprintf(raw, sizeof raw,
             "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n%s",
             method, path, headers ? headers : "", body ? strlen(body) : 0, body ? body : "");
    return test_http_exchange(h->port, raw, buf, len, out_body);
}

static void assert_problem(const char *buf, int status) {
    cr_assert(strstr(buf, "application/problem+json"), "%s", buf);
    char want[32];
    snprintf(want, sizeof want, "\"status\":%d", status);
    cr_assert(strstr(buf, want), "%s", buf);
}

Test(jobqueue_command, serve_answers_every_status) {
    http h = serve_start("2");
    char buf[8192];
    const char *body;
    int st = req(&h, "POST", "/v1/queues/q/jobs", NULL, "{\"payload\":\"hi\",\"priority\":3}", buf,
                 sizeof buf, &body);
    cr_assert_eq(st, 202, "%s", buf);
    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    char id[32];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    char loc[200], path[128];
    snprintf(path, sizeof path, "/v1/queues/q/jobs/%s", id);
    snprintf(loc, sizeof loc, "Location: %s\r\n", path);
    cr_assert(strstr(buf, loc), "%s", buf);

    cr_assert_eq(req(&h, "GET", path, NULL, NULL, buf, sizeof buf, &body), 200);
    j = json_loads(body, 0, &jerr);
    cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "ready");
    cr_assert_str_eq(json_string_value(json_object_get(j, "payload")), "hi");
    cr_assert_eq(json_integer_value(json_object_get(j, "priority")), 3);
    cr_assert(json_is_string(json_object_get(j, "created_at")));
    json_decref(j);

    /* Bad input: 400 with a problem, and nothing stored. */
    const char *bad[] = {"not json",
                         "[1]",
                         "{}",
                         "{\"payload\":1}",
                         "{\"payload\":\"a\",\"payload_base64\":\"YQ==\"}",
                         "{\"payload_base64\":\"***\"}",
                         "{\"payload\":\"a\",\"delay_ms\":-1}",
                         "{\"payload\":\"a\",\"max_attempts\":0}",
                         "{\"payload\":\"a\",\"x\":1}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(req(&h, "POST", "/v1/queues/q/jobs", NULL, bad[i], buf, sizeof buf, NULL), 400,
                     "%s", bad[i]);
        assert_problem(buf, 400);
    }
    cr_assert_eq(req(&h, "POST", "/v1/queues/bad%20name/jobs", NULL, "{\"payload\":\"a\"}", buf,
                     sizeof buf, NULL),
                 400);
    jq_client *c = client();
    cr_assert_eq(stats(c, "q").ready, 1, "bad requests stored nothing");

    /* Unknown job: 404; DELETE: 200 then 409. */
    cr_assert_eq(req(&h, "GET", "/v1/queues/q/jobs/999999", NULL, NULL, buf, sizeof buf, NULL),
                 404);
    assert_problem(buf, 404);
    cr_assert_eq(req(&h, "DELETE", "/v1/queues/q/jobs/999999", NULL, NULL, buf, sizeof buf, NULL),
                 404);
    cr_assert_eq(req(&h, "DELETE", path, NULL, NULL, buf, sizeof buf, NULL), 200, "%s", buf);
    cr_assert_eq(job_state(c, "q", id), JQ_STATE_CANCELLED);
    cr_assert_eq(req(&h, "DELETE", path, NULL, NULL, buf, sizeof buf, NULL), 409);
    assert_problem(buf, 409);

    /* Idempotency-Key: the same request replayed, another body 422. */
    const char *key = "Idempotency-Key: abc\r\n";
    cr_assert_eq(req(&h, "POST", "/v1/queues/q/jobs", key, "{\"payload_base64\":\"AAEC\"}", buf,
                     sizeof buf, &body),
                 202);
    char first[256];
    snprintf(first, sizeof first, "%s", body);
    cr_assert_eq(req(&h, "POST", "/v1/queues/q/jobs", key, "{\"payload_base64\":\"AAEC\"}", buf,
                     sizeof buf, &body),
                 202);
    cr_assert_str_eq(body, first);
    cr_assert(strstr(buf, "Idempotent-Replayed: true"), "%s", buf);
    cr_assert_eq(
        req(&h, "POST", "/v1/queues/q/jobs", key, "{\"payload\":\"other\"}", buf, sizeof buf, NULL),
        422);
    assert_problem(buf, 422);
    j = json_loads(first, 0, &jerr);
    jq_info info;
    cr_assert_eq(jq_job_get(c, "q", json_string_value(json_object_get(j, "id")), &info), 0);
    cr_assert_eq(info.payload_len, 3);
    cr_assert_eq(memcmp(info.payload, "\0\1\2", 3), 0);
    cr_assert_str_eq(info.idempotency_key, "abc", "the header is the job's idempotency key");
    jq_info_clear(&info);
    json_decref(j);

    /* Back-pressure: the bound is 2 READY jobs. */
    cr_assert_eq(
        req(&h, "POST", "/v1/queues/q/jobs", NULL, "{\"payload\":\"b\"}", buf, sizeof buf, NULL),
        202);
    cr_assert_eq(
        req(&h, "POST", "/v1/queues/q/jobs", NULL, "{\"payload\":\"c\"}", buf, sizeof buf, NULL),
        429);
    assert_problem(buf, 429);
    cr_assert(strstr(buf, "Retry-After: "), "%s", buf);
    cr_assert_eq(stats(c, "q").ready, 2);

    cr_assert_eq(req(&h, "GET", "/v1/queues/q/stats", NULL, NULL, buf, sizeof buf, &body), 200);
    j = json_loads(body, 0, &jerr);
    cr_assert_eq(json_integer_value(json_object_get(j, "ready")), 2);
    cr_assert_eq(json_integer_value(json_object_get(j, "cancelled")), 1);
    json_decref(j);
    /* /metrics prints figures read every second (never waiting for Redis in the scrape): they
     * show the two READY jobs and the cancelled one within a few seconds. */
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(req(&h, "GET", "/metrics", NULL, NULL, buf, sizeof buf, &body), 200);
        if (strstr(body, "jobqueue_depth{queue=\"q\",state=\"ready\"} 2\n") &&
            strstr(body, "jobqueue_depth{queue=\"q\",state=\"cancelled\"} 1\n"))
            break;
        usleep(50000);
    }
    cr_assert(strstr(body, "jobqueue_depth{queue=\"q\",state=\"ready\"} 2\n"), "%s", body);
    cr_assert(strstr(body, "jobqueue_depth{queue=\"q\",state=\"cancelled\"} 1\n"), "%s", body);
    cr_assert(strstr(body, "jobqueue_oldest_ready_age_seconds{queue=\"q\"} "), "%s", body);
    cr_assert(strstr(body, "jobqueue_figures_age_seconds{queue=\"q\"} "), "%s", body);

    kill(h.p.pid, SIGTERM);
    cr_assert_eq(proc_wait(&h.p), 0);
    jq_client_free(c);
}

/* With an admin token (here from JOBQUEUE_ADMIN_TOKEN), a cancel (DELETE) wants it: 401
 * without it, and the job stays READY; POST and GET do not. */
Test(jobqueue_command, with_an_admin_token_a_cancel_wants_it) {
    http h;
    const char *env[] = {"JOBQUEUE_ADMIN_TOKEN=jq-admin-51c9e07b3a2d", NULL};
    h.p = start((const char *[]){"serve", "--listen", "127.0.0.1:0", NULL}, env);
    char line[128], buf[8192];
    const char *body;
    cr_assert_gt(test_read_line(h.p.out, line, sizeof line, 20000), 0);
    cr_assert_eq(sscanf(line, "listening on http://127.0.0.1:%d", &h.port), 1, "%s", line);
    cr_assert_eq(
        req(&h, "POST", "/v1/queues/tq/jobs", NULL, "{\"payload\":\"x\"}", buf, sizeof buf, &body),
        202);
    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    char path[128];
    snprintf(path, sizeof path, "/v1/queues/tq/jobs/%s",
             json_string_value(json_object_get(j, "id")));
    cr_assert_eq(req(&h, "DELETE", path, NULL, NULL, buf, sizeof buf, NULL), 401);
    assert_problem(buf, 401);
    cr_assert_eq(req(&h, "DELETE", path, "Authorization: Bearer jq-admin-51c9e07b3a2\r\n", NULL,
                     buf, sizeof buf, NULL),
                 401);
    jq_client *c = client();
    cr_assert_eq(job_state(c, "tq", json_string_value(json_object_get(j, "id"))), JQ_STATE_READY,
                 "a refused cancel cancelled");
    cr_assert_eq(req(&h, "GET", path, NULL, NULL, buf, sizeof buf, NULL), 200);
    cr_assert_eq(req(&h, "DELETE", path, "Authorization: Bearer jq-admin-51c9e07b3a2d\r\n", NULL,
                     buf, sizeof buf, NULL),
                 200, "%s", buf);
    cr_assert_eq(job_state(c, "tq", json_string_value(json_object_get(j, "id"))),
                 JQ_STATE_CANCELLED);
    json_decref(j);
    jq_client_free(c);
    kill(h.p.pid, SIGTERM);
    cr_assert_eq(proc_wait(&h.p), 0);
}

/* A GET waiting for a frozen Redis holds that one request: the server answers others meanwhile,
 * /metrics among them (from the figures it last read). The stats request goes first and gets
 * 200 ms to be read (if the machine is too slow for that, the test passes without proving
 * anything, but never fails for it); a server that waited on Redis in its handler, or in its
 * /metrics, would have answered it (503, after its 2 s timeout) before reading the others. */
Test(jobqueue_command, serve_answers_other_requests_while_redis_is_frozen) {
    http h = serve_start("0");
    cr_assert_eq(test_target_signal(target, SIGSTOP), 0);
    int a = test_tcp_connect(h.port);
    const char *get = "GET /v1/queues/q/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    cr_assert_eq(write(a, get, strlen(get)), (ssize_t)strlen(get));
    usleep(200000);
    char buf[8192];
    int st = req(&h, "GET", "/healthz", NULL, NULL, buf, sizeof buf, NULL);
    int mst = req(&h, "GET", "/metrics", NULL, NULL, buf, sizeof buf, NULL);
    char early[64];
    ssize_t got = recv(a, early, sizeof early, MSG_DONTWAIT);
    cr_assert_eq(test_target_signal(target, SIGCONT), 0);
    cr_assert_eq(st, 200);
    cr_assert_eq(mst, 200, "%s", buf);
    cr_assert_lt(got, 1,
                 "the stats request was answered before /healthz and /metrics: the server "
                 "waited on Redis");
    char answer[4096];
    ssize_t n = recv(a, answer, sizeof answer - 1, 0);
    cr_assert_gt(n, 0, "the stats request got no answer");
    answer[n] = '\0';
    cr_assert(strncmp(answer, "HTTP/1.1 200", 12) == 0 || strncmp(answer, "HTTP/1.1 503", 12) == 0,
              "%s", answer);
    close(a);
    kill(h.p.pid, SIGTERM);
    cr_assert_eq(proc_wait(&h.p), 0);
}

Test(jobqueue_command, enqueue_stops_at_a_bad_line_and_a_rerun_with_the_key_fills_the_gap) {
    /* Line 3 is over the 64 KiB payload bound: lines 1 and 2 are printed, the command fails
     * naming line 3, and line 4 is not enqueued. */
    size_t big = 70000;
    char *input = sd_xmalloc(big + 64);
    size_t n = (size_t)snprintf(input, 64, "a\nb\n");
    memset(input + n, 'x', big);
    n += big;
    n += (size_t)snprintf(input + n, 64, "\nd\n");
    const char *args[] = {"enqueue", "--queue", "q", "--idempotency-key", "batch", "-", NULL};
    proc e = start(args, NULL);
    write_all(e.in, input, n);
    proc_close_stdin(&e);
    char out[256];
    read_all(e.out, out, sizeof out);
    cr_assert_eq(proc_wait(&e), 1);
    char a[32], b[32];
    cr_assert_eq(sscanf(out, "%31s %31s", a, b), 2, "%s", out);
    cr_assert_eq(strchr(strchr(out, '\n') + 1, '\n')[1], '\0', "two ids only: %s", out);
    char errpath[128], err[16384];
    snprintf(errpath, sizeof errpath, "%s/stderr", dir);
    test_slurp_fd(open(errpath, O_RDONLY), err, sizeof err);
    cr_assert(strstr(err, "line 3:"), "%s", err);
    jq_client *c = client();
    cr_assert_eq(stats(c, "q").ready, 2);
    /* The same input without the bad line, with the same key: lines 1 and 2 are found again
     * (the same ids), only the new lines are created. */
    e = start(args, NULL);
    write_all(e.in, "a\nb\nc\nd\n", 8);
    proc_close_stdin(&e);
    char out2[256];
    read_all(e.out, out2, sizeof out2);
    cr_assert_eq(proc_wait(&e), 0);
    char a2[32], b2[32], c2[32], d2[32];
    cr_assert_eq(sscanf(out2, "%31s %31s %31s %31s", a2, b2, c2, d2), 4, "%s", out2);
    cr_assert_str_eq(a2, a);
    cr_assert_str_eq(b2, b);
    cr_assert_eq(stats(c, "q").ready, 4);
    jq_client_free(c);
    free(input);
}

Test(jobqueue_command, work_refuses_a_lease_too_short_for_heartbeats) {
    char out[256];
    cr_assert_eq(jq_run((const char *[]){"work", "--queue", "q", "--visibility-timeout", "1000",
                                         "--exec", "true", NULL},
                        NULL, out, sizeof out),
                 2);
    char errpath[128], err[16384];
    snprintf(errpath, sizeof errpath, "%s/stderr", dir);
    test_slurp_fd(open(errpath, O_RDONLY), err, sizeof err);
    cr_assert(strstr(err, "--visibility-timeout 1000 is too short"), "%s", err);
}

/* The long-running export's contract end to end: POST, a worker runs it, GET the Location
 * until the job is done, and its result is the command's stdout. */
Test(jobqueue_command, serve_shows_a_job_done_with_its_result) {
    http h = serve_start("0");
    char buf[8192];
    const char *body;
    cr_assert_eq(req(&h, "POST", "/v1/queues/q/jobs", "Idempotency-Key: export-42\r\n",
                     "{\"payload\":\"42\"}", buf, sizeof buf, &body),
                 202);
    char *loc = strstr(buf, "Location: ");
    cr_assert_not_null(loc);
    char path[128];
    snprintf(path, sizeof path, "%.*s", (int)strcspn(loc + 10, "\r"), loc + 10);
    proc w = start(
        (const char *[]){"work", "--queue", "q", "--exec", "echo \"s3://bucket/$(cat).csv\"", NULL},
        NULL);
    json_t *j = NULL;
    uint64_t until = sd_now_ms() + 30000;
    for (;;) {
        cr_assert_eq(req(&h, "GET", path, NULL, NULL, buf, sizeof buf, &body), 200);
        json_error_t jerr;
        j = json_loads(body, 0, &jerr);
        if (strcmp(json_string_value(json_object_get(j, "state")), "done") == 0 ||
            sd_now_ms() > until)
            break;
        json_decref(j);
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "done");
    cr_assert_str_eq(json_string_value(json_object_get(j, "result")), "s3://bucket/42.csv\n");
    cr_assert_eq(json_integer_value(json_object_get(j, "attempts")), 1);
    cr_assert(json_is_string(json_object_get(j, "finished_at")));
    json_decref(j);
    kill(w.pid, SIGTERM);
    cr_assert_eq(proc_wait(&w), 0);
    kill(h.p.pid, SIGTERM);
    cr_assert_eq(proc_wait(&h.p), 0);
}
