/*
 * cluster_kill.c - what callers see when a master of a Redis Cluster is killed with SIGKILL, and
 * for how long (the figures in common/README.md, "A master killed with SIGKILL").
 *
 * Starts a private cluster of 3 masters (with --replicas 1, one replica each), then runs two
 * callers against it at once, both through the project's own connections (redis.h):
 *
 *  - async: an sd_aredis on a libuv loop sends INCR every --interval-ms to a key of each master
 *    in turn, each with a --deadline-ms deadline;
 *  - sync: a thread with an sd_redis does the same, one call after the other, with the same
 *    timeout as its command timeout.
 *
 * After --warmup-ms, master 1 gets SIGKILL. Without replicas it is started again (same port,
 * same nodes.conf) --down-ms later; with replicas nothing is restarted: the replica is promoted
 * once the other masters have taken the master for failed (cluster-node-timeout, set with
 * --node-timeout-ms) and won the election. The probe runs until --run-ms after the kill.
 *
 * For each caller it prints, for master 1's keys: when (ms after the kill) the first call failed,
 * when the last one failed, when calls succeeded again for good, and how many failed of each
 * kind; and how many calls to the two other masters failed meanwhile. Each run prints the load
 * average (the machine is shared), before and after.
 *
 * Usage: build/bin/probe-cluster-kill [--replicas 0|1] [--node-timeout-ms N] [--down-ms N]
 *        [--run-ms N] [--interval-ms N] [--deadline-ms N]
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "cli.h"
#include "redis.h"
#include "redis_cluster_server.h"
#include "sd.h"

/* Kinds of failure a caller can see. */
enum { F_DISCONNECTED, F_TIMEDOUT, F_CLUSTERDOWN, F_OTHER_REPLY, F_OTHER, F_KINDS };
static const char *const kind_names[F_KINDS] = {"disconnected", "timed out", "CLUSTERDOWN reply",
                                                "other error reply", "other"};

/* What one caller saw for the killed master's keys, and for the others. */
struct seen {
    long long calls, ok, failed[F_KINDS];
    long long others_calls, others_failed;
    long long before_calls, before_failed;          /* every master, before the kill */
    double first_fail_ms, last_fail_ms, last_ok_ms; /* after the kill; -1: none */
    double kind_first_ms[F_KINDS], kind_last_ms[F_KINDS];
};

static uint64_t kill_ns; /* 0 until the kill */
static volatile int stop;
static long long interval_ms = 2, deadline_ms = 100;
static char keys[3][32];

static void sleep_ms(long long ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static double since_kill_ms(void) {
    return kill_ns ? (double)(sd_now_ns() - kill_ns) / 1e6 : -1;
}

static void seen_init(struct seen *s) {
    memset(s, 0, sizeof *s);
    s->first_fail_ms = s->last_fail_ms = s->last_ok_ms = -1;
}

/* Records one call's outcome: kind < 0 for a success. */
static void record(struct seen *s, int master, int kind) {
    if (!kill_ns) {
        s->before_calls++;
        s->before_failed += kind >= 0;
        return;
    }
    double t = since_kill_ms();
    if (master != 1) {
        s->others_calls++;
        s->others_failed += kind >= 0;
        return;
    }
    s->calls++;
    if (kind < 0) {
        s->ok++;
        s->last_ok_ms = t;
        return;
    }
    if (s->failed[kind]++ == 0)
        s->kind_first_ms[kind] = t;
    s->kind_last_ms[kind] = t;
    if (s->first_fail_ms < 0)
        s->first_fail_ms = t;
    s->last_fail_ms = t;
}

static int kind_of(const redisReply *reply, int status) {
    if (status == SD_EDISCONNECTED)
        return F_DISCONNECTED;
    if (status == SD_ETIMEDOUT)
        return F_TIMEDOUT;
    if (status != 0 || reply == NULL)
        return F_OTHER;
    if (reply->type == REDIS_REPLY_ERROR)
        return strncmp(reply->str, "CLUSTERDOWN", 11) == 0 ? F_CLUSTERDOWN : F_OTHER_REPLY;
    return -1;
}

/* ---- The async caller ---- */

static struct seen async_seen;
static sd_aredis *async_conn;
static int next_master;

static void on_async_reply(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    (void)r;
    record(&async_seen, (int)(intptr_t)privdata, kind_of(reply, status));
}

static void on_tick(uv_timer_t *t) {
    if (stop) {
        uv_timer_stop(t);
        return;
    }
    int m = next_master;
    next_master = (next_master + 1) % 3;
    int rc = sd_aredis_command(async_conn, on_async_reply, (void *)(intptr_t)m, (int)deadline_ms,
                               "INCR %s", keys[m]);
    if (rc != 0) /* refused at the call: the callback never runs */
        record(&async_seen, m, rc == SD_EDISCONNECTED ? F_DISCONNECTED : F_OTHER);
}

/* ---- The sync caller ---- */

static struct seen sync_seen;

static void *sync_main(void *arg) {
    sd_redis *r = arg;
    for (int m = 0; !stop; m = (m + 1) % 3) {
        int err = 0;
        redisReply *reply = sd_redis_command(r, &err, "INCR %s", keys[m]);
        record(&sync_seen, m, kind_of(reply, reply ? 0 : err));
        if (reply)
            freeReplyObject(reply);
        sleep_ms(interval_ms);
    }
    return NULL;
}

/* ---- The fault ---- */

struct fault {
    sd_redis_cluster_server *cluster;
    long long replicas, warmup_ms, down_ms, run_ms;
};

static void *fault_main(void *arg) {
    struct fault *f = arg;
    sleep_ms(f->warmup_ms);
    sd_redis_server *victim = sd_redis_cluster_server_node(f->cluster, 1);
    kill_ns = sd_now_ns();
    sd_redis_server_signal(victim, SIGKILL);
    sd_redis_server_halt(victim); /* reaps it */
    if (f->replicas == 0) {
        sleep_ms(f->down_ms);
        fprintf(stderr, "restarting master 1 at %.0f ms\n", since_kill_ms());
        if (sd_redis_server_restart(victim) != 0)
            fprintf(stderr, "master 1 did not restart\n");
        f->run_ms -= f->down_ms;
    }
    sleep_ms(f->run_ms);
    stop = 1;
    return NULL;
}

static void print_seen(const char *who, const struct seen *s) {
    printf("%-5s master 1: %lld calls, %lld ok; first failure %.0f ms, last failure %.0f ms after "
           "the kill;",
           who, s->calls, s->ok, s->first_fail_ms, s->last_fail_ms);
    for (int k = 0; k < F_KINDS; k++)
        if (s->failed[k])
            printf(" %s %lld (%.0f to %.0f ms)", kind_names[k], s->failed[k], s->kind_first_ms[k],
                   s->kind_last_ms[k]);
    printf("\n      other masters: %lld calls, %lld failed; before the kill: %lld calls, %lld "
           "failed\n",
           s->others_calls, s->others_failed, s->before_calls, s->before_failed);
}

static void print_load(const char *when) {
    double load[3] = {0};
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(f);
    }
    printf("load average %s: %.2f %.2f %.2f\n", when, load[0], load[1], load[2]);
}

int main(int argc, char **argv) {
    long long replicas = 0, node_timeout_ms = 5000, down_ms = 3000, run_ms = 0;
    const sd_cli_opt opts[] = {
        {"--replicas", "N", "replicas per master, 0 or 1 (default 0)", .integer = &replicas,
         .min = 0, .max = 1},
        {"--node-timeout-ms", "MS", "cluster-node-timeout (default 5000)",
         .integer = &node_timeout_ms, .min = 100, .max = 60000},
        {"--down-ms", "MS", "without replicas: restart the master this long after (default 3000)",
         .integer = &down_ms, .min = 0, .max = 60000},
        {"--run-ms", "MS",
         "how long to watch after the kill (default: down-ms + 5000, or\n"
         "3 x node-timeout + 5000 with replicas)",
         .integer = &run_ms, .min = 100, .max = 600000},
        {"--interval-ms", "MS", "time between calls of each caller (default 2)",
         .integer = &interval_ms, .min = 1, .max = 1000},
        {"--deadline-ms", "MS", "each call's deadline (default 100)", .integer = &deadline_ms,
         .min = 1, .max = 60000},
        {0}};
    const sd_cli_cmd cmd = {.name = "probe-cluster-kill",
                            .synopsis = "[options]",
                            .about = "Kills master 1 of a private Redis Cluster with SIGKILL and "
                                     "reports what\nsync and async callers see, and for how long.",
                            .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (run_ms == 0)
        run_ms = replicas ? 3 * node_timeout_ms + 5000 : down_ms + 5000;

    sd_redis_cluster_server_opts copts = {
        .masters = 3, .replicas = (int)replicas, .node_timeout_ms = (int)node_timeout_ms};
    sd_redis_cluster_server *cluster = NULL;
    if (sd_redis_cluster_server_start(&copts, &cluster) != 0)
        return SD_EXIT_FAILURE;
    /* A key on each master: master m holds the m-th third of the slots. */
    for (int m = 0; m < 3; m++)
        for (int n = 0;; n++) {
            snprintf(keys[m], sizeof keys[m], "probe%d", n);
            if (sd_redis_key_slot(keys[m], strlen(keys[m])) * 3 / 16384 == m)
                break;
        }
    print_load("before");
    printf("3 masters, %lld replica(s) each, cluster-node-timeout %lld ms, a call every %lld ms "
           "per caller, deadline %lld ms\n",
           replicas, node_timeout_ms, interval_ms, deadline_ms);

    sd_redis_url url;
    char err[160];
    sd_redis_url_parse(sd_redis_cluster_server_url(cluster), &url, err, sizeof err);
    sd_redis_opts ropts;
    sd_redis_opts_default(&ropts);
    ropts.command_timeout_ms = (int)deadline_ms;
    sd_redis *sync_conn = NULL;
    uv_loop_t loop;
    uv_loop_init(&loop);
    if (sd_redis_connect(&url, &ropts, &sync_conn) != 0 ||
        sd_aredis_new(&loop, &url, &ropts, &async_conn) != 0 ||
        sd_aredis_wait_connected(async_conn, 10000) != 0) {
        fprintf(stderr, "cannot connect to the cluster\n");
        sd_redis_cluster_server_stop(cluster);
        return SD_EXIT_FAILURE;
    }
    seen_init(&async_seen);
    seen_init(&sync_seen);

    struct fault f = {cluster, replicas, 1000, down_ms, run_ms};
    pthread_t sync_thread, fault_thread;
    pthread_create(&sync_thread, NULL, sync_main, sync_conn);
    pthread_create(&fault_thread, NULL, fault_main, &f);
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, (uint64_t)interval_ms, (uint64_t)interval_ms);
    while (!stop)
        uv_run(&loop, UV_RUN_ONCE);
    pthread_join(fault_thread, NULL);
    pthread_join(sync_thread, NULL);
    uv_close((uv_handle_t *)&tick, NULL);
    sd_aredis_free(async_conn);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    sd_redis_free(sync_conn);
    sd_redis_url_clear(&url);

    print_seen("async", &async_seen);
    print_seen("sync", &sync_seen);
    print_load("after");
    sd_redis_cluster_server_stop(cluster);
    return SD_EXIT_OK;
}
