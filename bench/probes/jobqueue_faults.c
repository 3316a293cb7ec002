/*
 * jobqueue_faults.c - probe-jobqueue: the job queue's kill -9 figures, measured on a private
 * redis-server (or --redis URL, a cluster too), and what a job costs in Redis memory.
 *
 *   probe-jobqueue soak [--jobs 20000] [--workers 4] [--work-ms 2] [--kill-ms 250]
 *                       [--redis URL|cluster]
 *
 *     Two queues of --jobs no-op jobs each. On "soak", --workers processes run the worker
 *     runtime (jq_worker, concurrency 10, visibility 1 s, Redis deadline 300 ms) with a
 *     handler that writes the job id to an execution log (one write(2) per run, so a SIGKILL
 *     loses no line) and finishes after a random 0 to 2 x --work-ms (a timer; 0: at once), so
 *     that kills find jobs in flight. On "once", as many processes reserve 10 jobs at a
 *     time with the synchronous client and finish each, after the same work time, with
 * jq_ack_effect (INCRBY of a counter by 1), logging each run the same way. Every --kill-ms one of
 * these processes, picked at random, is SIGKILLed and a new one started, until both queues have
 * every job DONE (or 300 s pass). Prints the kills, the jobs completed at least once, lost (not
 * DONE at the end), dead, the runs beyond one per job (duplicates) beside their bound (the jobs the
 *     killed workers could hold: kills x concurrency), and the effect counter (must equal
 *     --jobs). Exit 0 when none is lost or dead and the counter is exact.
 *
 *   probe-jobqueue durability [--jobs 5000] [--fsync always|everysec] [--kill-after 0.5]
 *
 *     A private redis-server with AOF at that appendfsync policy. A child enqueues --jobs jobs
 *     one call each and writes the id of every acknowledged one to a log; once kill-after x
 *     --jobs are acknowledged, redis-server is SIGKILLed (the child is mid-call), restarted from
 *     its AOF, and every acknowledged id is looked up. Prints acknowledged and lost; exit 0 when
 *     none is lost.
 *
 *   probe-jobqueue memory [--jobs 100000] [--payload-bytes 10]
 *
 *     A private redis-server without persistence. --jobs jobs of --payload-bytes each are
 *     enqueued (1,000 a call), then reserved and acked (100 a call) with the default retention,
 *     and Redis's used_memory is read before, after the enqueues and after the acks. Prints the
 *     bytes per READY job and per DONE job (kept for the DONE retention).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "jobqueue.h"
#include "redis_cluster_server.h"
#include "redis_server.h"
#include "sd.h"

#define WORKER_CONCURRENCY 10
#define ONCE_BATCH 10

static sd_redis_url url;
static jq_config cfg;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void log_id(int fd, const char *id) {
    char line[JQ_ID_MAX + 2];
    int n = snprintf(line, sizeof line, "%s\n", id);
    if (write(fd, line, (size_t)n) != n)
        _exit(3);
}

/* ---- Soak: the two kinds of worker ---------------------------------------------------------- */

static int runtime_log_fd;
static int work_ms; /* each job takes a random 0 to 2 x work_ms */

typedef struct work {
    uv_timer_t timer;
    jq_task *task;
} work;

static void on_work_closed(uv_handle_t *h) {
    free(h->data);
}

static void on_worked(uv_timer_t *h) {
    work *wk = h->data;
    jq_task_finish(wk->task, 1, NULL, 0);
    uv_close((uv_handle_t *)h, on_work_closed);
}

/* Logs the run, then finishes after the job's work time (at once when it is 0). */
static void noop_handler(jq_task *task, const jq_job *job, void *arg) {
    log_id(runtime_log_fd, job->id);
    int ms = work_ms > 0 ? rand() % (2 * work_ms + 1) : 0;
    if (ms == 0) {
        jq_task_finish(task, 1, NULL, 0);
        return;
    }
    work *wk = malloc(sizeof *wk);
    wk->task = task;
    uv_timer_init(arg, &wk->timer);
    wk->timer.data = wk;
    uv_timer_start(&wk->timer, on_worked, (uint64_t)ms, 0);
}

static void runtime_worker(int fd) {
    runtime_log_fd = fd;
    uv_loop_t loop;
    uv_loop_init(&loop);
    jq_worker_opts o;
    jq_worker_opts_default(&o);
    o.queue = "soak";
    o.concurrency = WORKER_CONCURRENCY;
    o.visibility_ms = 1000;
    o.handler = noop_handler;
    o.arg = &loop;
    srand((unsigned)getpid());
    jq_worker *w = NULL;
    char err[256];
    if (jq_worker_new(&loop, &url, &cfg, &o, &w, err, sizeof err) != 0 || jq_worker_start(w) != 0) {
        fprintf(stderr, "probe-jobqueue: worker: %s\n", err);
        _exit(2);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(0);
}

static void effect_worker(int fd) {
    jq_client *c = NULL;
    if (jq_client_new(&url, &cfg, &c) != 0)
        _exit(2);
    jq_effect fx = {JQ_EFFECT_INCRBY, "count", 1, NULL};
    srand((unsigned)getpid());
    for (;;) {
        jq_job jobs[ONCE_BATCH];
        size_t got = 0;
        if (jq_reserve_wait(c, "once", ONCE_BATCH, 1000, 1000, jobs, &got) != 0)
            continue;
        for (size_t i = 0; i < got; i++) {
            log_id(fd, jobs[i].id);
            if (work_ms > 0)
                sleep_ms(rand() % (2 * work_ms + 1));
            jq_ack_effect(c, "once", &jobs[i], "", 0, &fx); /* JQ_ESTALE when late: fine */
            jq_job_clear(&jobs[i]);
        }
    }
}

typedef struct child {
    pid_t pid;
    int effect; /* 1: an effect worker */
} child;

static pid_t spawn(int effect, int fd) {
    pid_t pid = fork();
    if (pid == 0) {
        if (effect)
            effect_worker(fd);
        runtime_worker(fd);
    }
    return pid;
}

/* Unique ids and total lines of an execution log. */
static void count_log(const char *path, int jobs, long *runs, long *unique) {
    char *seen = calloc((size_t)jobs * 2 + 2, 1);
    FILE *f = fopen(path, "r");
    char line[64];
    *runs = *unique = 0;
    while (f && fgets(line, sizeof line, f)) {
        long id = strtol(line, NULL, 10);
        (*runs)++;
        if (id >= 0 && id < jobs * 2 + 2 && !seen[id]) {
            seen[id] = 1;
            (*unique)++;
        }
    }
    if (f)
        fclose(f);
    free(seen);
}

static int enqueue_all(jq_client *c, const char *queue, int n) {
    jq_new_job jobs[1000];
    jq_enqueued out[1000];
    for (int k = 0; k < 1000; k++)
        jobs[k] = (jq_new_job){"x", 1, NULL};
    for (int done = 0; done < n;) {
        int m = n - done < 1000 ? n - done : 1000;
        int rc = jq_enqueue_many(c, queue, jobs, (size_t)m, out);
        if (rc != 0) {
            fprintf(stderr, "probe-jobqueue: enqueue: %s\n", jq_strerror(rc));
            return rc;
        }
        done += m;
    }
    return 0;
}

/* The probe's own client: a deadline long enough for a loaded machine (the workers keep 300 ms,
 * so that a 1 s lease is three deadlines). */
static int probe_client(jq_client **out) {
    jq_config slow = cfg;
    slow.timeout_ms = 10000;
    return jq_client_new(&url, &slow, out);
}

/* Redis's used_memory (INFO memory), or -1. */
static long long used_memory(jq_client *c) {
    redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "INFO memory");
    const char *at = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_memory:") : NULL;
    long long n = at ? atoll(at + strlen("used_memory:")) : -1;
    if (r)
        freeReplyObject(r);
    return n;
}

static int cmd_memory(int jobs, int payload_bytes) {
    sd_redis_server *s = NULL;
    if (sd_redis_server_start(NULL, &s) != 0)
        return 2;
    char err[256];
    jq_client *c = NULL;
    int rc = sd_redis_url_parse(sd_redis_server_url(s), &url, err, sizeof err);
    if (rc == 0)
        rc = probe_client(&c);
    char *payload = sd_xmalloc((size_t)payload_bytes + 1);
    memset(payload, 'p', (size_t)payload_bytes);
    jq_new_job batch[1000];
    jq_enqueued ids[1000];
    for (int k = 0; k < 1000; k++)
        batch[k] = (jq_new_job){payload, (size_t)payload_bytes, NULL};
    long long before = rc == 0 ? used_memory(c) : -1;
    for (int done = 0; rc == 0 && done < jobs; done += 1000)
        rc = jq_enqueue_many(c, "mem", batch, (size_t)(jobs - done < 1000 ? jobs - done : 1000),
                             ids);
    long long ready = rc == 0 ? used_memory(c) : -1;
    jq_job held[100];
    jq_ack_item items[100];
    int codes[100];
    for (int acked = 0; rc == 0 && acked < jobs;) {
        size_t got = 0;
        rc = jq_reserve(c, "mem", 100, 600000, held, &got);
        for (size_t k = 0; k < got; k++)
            items[k] = (jq_ack_item){&held[k], NULL, 0};
        if (rc == 0 && got > 0)
            rc = jq_ack_many(c, "mem", items, got, codes);
        for (size_t k = 0; k < got; k++)
            jq_job_clear(&held[k]);
        if (rc == 0 && got == 0)
            rc = JQ_ENOTFOUND; /* a job went missing */
        acked += (int)got;
    }
    long long done = rc == 0 ? used_memory(c) : -1;
    if (rc == 0 && before >= 0 && ready >= 0 && done >= 0)
        printf("memory: %d jobs of %d bytes: %.0f bytes of Redis memory per READY job, %.0f per "
               "DONE job\n",
               jobs, payload_bytes, (double)(ready - before) / jobs,
               (double)(done - before) / jobs);
    else
        fprintf(stderr, "probe-jobqueue: memory: %s\n", rc ? jq_strerror(rc) : "INFO failed");
    free(payload);
    jq_client_free(c);
    sd_redis_url_clear(&url);
    sd_redis_server_stop(s);
    return rc == 0 && done >= 0 ? 0 : 1;
}

static int cmd_soak(int jobs, int workers, int kill_ms) {
    jq_client *c = NULL;
    int rc = probe_client(&c);
    if (rc != 0) {
        fprintf(stderr, "probe-jobqueue: %s\n", jq_strerror(rc));
        return 2;
    }
    char dir[] = "/tmp/probe-jobqueue-XXXXXX";
    if (!mkdtemp(dir))
        return 2;
    char soak_log[64], once_log[64];
    snprintf(soak_log, sizeof soak_log, "%s/soak.log", dir);
    snprintf(once_log, sizeof once_log, "%s/once.log", dir);
    int soak_fd = open(soak_log, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0600);
    int once_fd = open(once_log, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0600);
    if (enqueue_all(c, "soak", jobs) != 0 || enqueue_all(c, "once", jobs) != 0)
        return 2;
    child *kids = calloc((size_t)workers * 2, sizeof *kids);
    int nkids = workers * 2;
    for (int i = 0; i < nkids; i++) {
        kids[i].effect = i % 2;
        kids[i].pid = spawn(kids[i].effect, kids[i].effect ? once_fd : soak_fd);
    }
    srand((unsigned)time(NULL));
    uint64_t t0 = sd_now_ms();
    int kills = 0, kills_runtime = 0, kills_effect = 0;
    jq_stats s1 = {0}, s2 = {0};
    for (;;) {
        sleep_ms(kill_ms);
        if (jq_stats_get(c, "soak", &s1) == 0 && jq_stats_get(c, "once", &s2) == 0 &&
            s1.done + s1.dead >= jobs && s2.done + s2.dead >= jobs)
            break;
        if (sd_now_ms() - t0 > 300000) {
            fprintf(stderr, "probe-jobqueue: 300 s passed, stopping\n");
            break;
        }
        int k = rand() % nkids;
        kill(kids[k].pid, SIGKILL);
        waitpid(kids[k].pid, NULL, 0);
        kills++;
        kids[k].effect ? kills_effect++ : kills_runtime++;
        kids[k].pid = spawn(kids[k].effect, kids[k].effect ? once_fd : soak_fd);
    }
    double secs = (double)(sd_now_ms() - t0) / 1000.0;
    for (int i = 0; i < nkids; i++) {
        kill(kids[i].pid, SIGKILL);
        waitpid(kids[i].pid, NULL, 0);
    }
    free(kids);
    close(soak_fd);
    close(once_fd);
    jq_stats_get(c, "soak", &s1);
    jq_stats_get(c, "once", &s2);
    long runs1, uniq1, runs2, uniq2;
    count_log(soak_log, jobs, &runs1, &uniq1);
    count_log(once_log, jobs, &runs2, &uniq2);
    char key[256];
    jq_effect_key(c, "once", "count", key, sizeof key);
    redisReply *r = sd_redis_command(jq_client_redis(c), NULL, "GET %s", key);
    long long counter = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    if (r)
        freeReplyObject(r);
    long lost1 = jobs - s1.done - s1.dead, lost2 = jobs - s2.done - s2.dead;
    printf("soak: %d jobs a queue, %d + %d worker processes, jobs of 0-%d ms, one SIGKILL every "
           "%d ms: %d kills in %.1f s (%d worker runtime, %d effect)\n",
           jobs, workers, workers, 2 * work_ms, kill_ms, kills, secs, kills_runtime, kills_effect);
    printf("worker runtime (queue soak): done %lld, completed at least once %ld, lost %ld, dead "
           "%lld, runs %ld, duplicates %ld (bound: %d kills x %d in flight = %d)\n",
           (long long)s1.done, uniq1, lost1, (long long)s1.dead, runs1, runs1 - uniq1,
           kills_runtime, WORKER_CONCURRENCY, kills_runtime * WORKER_CONCURRENCY);
    printf("ack with effect (queue once): done %lld, completed at least once %ld, lost %ld, dead "
           "%lld, runs %ld, duplicates %ld (bound: %d kills x %d in flight = %d), effect counter "
           "%lld (%s)\n",
           (long long)s2.done, uniq2, lost2, (long long)s2.dead, runs2, runs2 - uniq2, kills_effect,
           ONCE_BATCH, kills_effect * ONCE_BATCH, counter, counter == jobs ? "exact" : "NOT EXACT");
    unlink(soak_log);
    unlink(once_log);
    rmdir(dir);
    jq_client_free(c);
    int ok = lost1 == 0 && lost2 == 0 && s1.dead == 0 && s2.dead == 0 && counter == jobs &&
             uniq1 == jobs && uniq2 == jobs &&
             runs1 - uniq1 <= kills_runtime * WORKER_CONCURRENCY &&
             runs2 - uniq2 <= kills_effect * ONCE_BATCH;
    return ok ? 0 : 1;
}

/* ---- Durability ----------------------------------------------------------------------------- */

static void enqueuer(int fd, int jobs) {
    jq_client *c = NULL;
    if (probe_client(&c) != 0)
        _exit(2);
    for (int i = 0; i < jobs; i++) {
        jq_enqueued out;
        if (jq_enqueue(c, "durable", "x", 1, NULL, &out) != 0)
            _exit(0); /* Redis went away: what was acknowledged is in the log */
        log_id(fd, out.id);
    }
    _exit(0);
}

static long lines_of(const char *path) {
    FILE *f = fopen(path, "r");
    long n = 0;
    int ch;
    while (f && (ch = fgetc(f)) != EOF)
        n += ch == '\n';
    if (f)
        fclose(f);
    return n;
}

static int cmd_durability(int jobs, const char *fsync, double kill_after) {
    sd_redis_server_opts so = {.appendfsync = fsync};
    sd_redis_server *s = NULL;
    if (sd_redis_server_start(&so, &s) != 0)
        return 2;
    char err[256];
    if (sd_redis_url_parse(sd_redis_server_url(s), &url, err, sizeof err) != 0)
        return 2;
    char path[] = "/tmp/probe-jobqueue-acked-XXXXXX";
    int fd = mkstemp(path);
    pid_t pid = fork();
    if (pid == 0)
        enqueuer(fd, jobs);
    long want = (long)(kill_after * jobs);
    int early = 0;
    while (lines_of(path) < want) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            early = 1; /* the enqueuer stopped on an error before the kill */
            break;
        }
        sleep_ms(1);
    }
    sd_redis_server_signal(s, SIGKILL);
    if (!early)
        waitpid(pid, NULL, 0);
    if (early)
        fprintf(stderr, "probe-jobqueue: the enqueuer stopped before the kill\n");
    close(fd);
    long acked = lines_of(path);
    sd_redis_server_halt(s); /* reaps the killed process */
    int rc = sd_redis_server_restart(s);
    if (rc != 0) {
        fprintf(stderr, "probe-jobqueue: restart: %s\n", sd_strerror(rc));
        return 2;
    }
    jq_client *c = NULL;
    if (probe_client(&c) != 0)
        return 2;
    FILE *f = fopen(path, "r");
    char line[64];
    long lost = 0, n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        jq_info info;
        int g = jq_job_get(c, "durable", line, &info);
        if (g == 0)
            jq_info_clear(&info);
        else
            lost++;
        n++;
    }
    fclose(f);
    unlink(path);
    printf("durability: appendfsync %s, redis-server SIGKILLed after %ld of %d enqueues were "
           "acknowledged (%ld by the time the enqueuer saw the error), restarted from its AOF: "
           "%ld acknowledged enqueues lost\n",
           fsync, want, jobs, acked, lost);
    jq_client_free(c);
    sd_redis_server_stop(s);
    return lost == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2 || (strcmp(argv[1], "soak") != 0 && strcmp(argv[1], "durability") != 0 &&
                     strcmp(argv[1], "memory") != 0)) {
        fprintf(stderr, "usage: probe-jobqueue soak [--jobs N] [--workers N] [--work-ms MS] "
                        "[--kill-ms MS] "
                        "[--redis URL]\n       probe-jobqueue durability [--jobs N] [--fsync "
                        "always|everysec] [--kill-after FRACTION]\n       probe-jobqueue memory "
                        "[--jobs N] [--payload-bytes N]\n");
        return 2;
    }
    int soak = strcmp(argv[1], "soak") == 0, memory = strcmp(argv[1], "memory") == 0;
    int jobs = soak ? 20000 : memory ? 100000 : 5000, workers = 4, kill_ms = 250;
    int payload_bytes = 10;
    work_ms = 2;
    double kill_after = 0.5;
    const char *redis = NULL, *fsync = "always";
    int cluster = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--jobs") == 0)
            jobs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--workers") == 0)
            workers = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--work-ms") == 0)
            work_ms = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--kill-ms") == 0)
            kill_ms = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--redis") == 0 && strcmp(argv[i + 1], "cluster") == 0)
            cluster = 1;
        else if (strcmp(argv[i], "--redis") == 0)
            redis = argv[i + 1];
        else if (strcmp(argv[i], "--fsync") == 0)
            fsync = argv[i + 1];
        else if (strcmp(argv[i], "--kill-after") == 0)
            kill_after = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--payload-bytes") == 0)
            payload_bytes = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "probe-jobqueue: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (jobs < 1 || workers < 1 || kill_ms < 1 || kill_after <= 0 || kill_after >= 1 ||
        payload_bytes < 0 || payload_bytes > 65536) {
        fprintf(stderr, "probe-jobqueue: bad numbers\n");
        return 2;
    }
    jq_config_default(&cfg);
    cfg.timeout_ms = 300;
    snprintf(cfg.prefix, sizeof cfg.prefix, "jqprobe%d:", (int)getpid());
    if (memory)
        return cmd_memory(jobs, payload_bytes);
    if (!soak)
        return cmd_durability(jobs, fsync, kill_after);
    sd_redis_server *s = NULL;
    sd_redis_cluster_server *cs = NULL;
    if (cluster) {
        if (sd_redis_cluster_server_start(NULL, &cs) != 0)
            return 2;
        redis = sd_redis_cluster_server_url(cs);
    } else if (!redis) {
        if (sd_redis_server_start(NULL, &s) != 0)
            return 2;
        redis = sd_redis_server_url(s);
    }
    char err[256];
    if (sd_redis_url_parse(redis, &url, err, sizeof err) != 0) {
        fprintf(stderr, "probe-jobqueue: %s\n", err);
        return 2;
    }
    int rc = cmd_soak(jobs, workers, kill_ms);
    sd_redis_url_clear(&url);
    sd_redis_server_stop(s);
    sd_redis_cluster_server_stop(cs);
    return rc;
}
