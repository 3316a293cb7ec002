/*
 * test_ratelimit_cluster.c - the rate limiter on a Redis Cluster: four `ratelimit serve`
 * gateways pointed at one node of a private 3-master cluster (they find the others themselves),
 * hammered over 1,000 keys spread over every master, admit exactly q per key, for every
 * algorithm, with one tag per key and with shared tags (--tags); and they still do, with no
 * error reaching a client, while `redis-cli --cluster reshard` moves slots between masters
 * under the load.
 *
 * What fails without the per-slot batching (limiter.c, "Redis Cluster"): a call mixing keys of
 * several slots is refused before it is sent, every check of it falls back, and the fallback
 * admits nothing (its N is unknown) or its own share: the counts come out wrong.
 *
 * The gateways get --deadline-ms 5000: the assertions are exact counts, and a check late on a
 * loaded machine (or kept waiting by a slot being moved, TRYAGAIN) would be refused and then
 * refunded, which the fleet suite covers; here every check is decided by Redis. The assertions
 * are about counts, never about speed: they hold beside two `yes >/dev/null`.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ratelimit.h"
#include "sd.h"
#include "support.h"

static sd_redis_cluster_server *cluster;

static void start(void) {
    cluster = test_redis_cluster_start(0);
}

static void stop(void) {
    sd_redis_cluster_server_stop(cluster);
}

TestSuite(ratelimit_cluster, .init = start, .fini = stop, .timeout = 240);

enum { GATEWAYS = 4, CLIENTS = 32, KEYS = 1000, Q = 3, PER_KEY = 2 * Q + 1, WALK_MAX = 1 << 20 };

/* The URL of master 0 alone: the gateways are pointed at one node. */
static const char *one_node_url(void) {
    static char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d",
             sd_redis_server_port(sd_redis_cluster_server_node(cluster, 0)));
    return url;
}

typedef struct fleet {
    bench_server g[GATEWAYS];
} fleet;

/* Starts the gateways on master 0, with the policy "hour;q=Q;w=3600", the algorithm and the
 * number of shared tags (0: one tag per key, the default). */
static fleet fleet_start(const char *algorithm, int tags) {
    fleet f;
    char policy[32], tags_text[16];
    snprintf(policy, sizeof policy, "hour;q=%d;w=3600", Q);
    snprintf(tags_text, sizeof tags_text, "%d", tags);
    for (int i = 0; i < GATEWAYS; i++) {
        const char *argv[] = {"ratelimit",     "serve",    "--listen", "127.0.0.1:0", "--redis",
                              one_node_url(),  "--policy", policy,     "--algorithm", algorithm,
                              "--deadline-ms", "5000",     "--tags",   tags_text,     NULL};
        f.g[i] = test_server_start(argv);
    }
    return f;
}

static void fleet_stop(fleet *f) {
    for (int i = 0; i < GATEWAYS; i++) {
        int status = test_kill_wait(f->g[i].pid, SIGTERM);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "gateway %d: no clean exit", i);
    }
}

/* The load: CLIENTS threads, each with a keep-alive connection to a gateway, send requests
 * n = 0, 1, 2, ... from a shared count, until `limit` have been sent and `hold` is 0. Request n
 * is for key n % KEYS (the keys in turn), or, when the load walks, for key n / PER_KEY: each key
 * gets its PER_KEY requests at about the same time, and fresh keys keep coming, so that
 * admissions (writes) go on for as long as the load runs. Each key's requests answered and
 * admissions are counted. */
typedef struct load {
    atomic_int next, ok, denied, other;
    atomic_int limit, hold;
    int walk;
    atomic_int *answered, *admitted; /* per key: KEYS, or WALK_MAX when the load walks */
    int fds[CLIENTS];
    pthread_t threads[CLIENTS];
} load;

typedef struct client {
    load *ld;
    int fd;
} client;

static client clients[CLIENTS];

static void key_name(int i, char *buf, size_t len) {
    snprintf(buf, len, "user%d", i);
}

static void *client_run(void *arg) {
    client *c = arg;
    load *ld = c->ld;
    char req[256], key[32], resp[4096];
    for (;;) {
        int n = atomic_fetch_add(&ld->next, 1);
        int k = ld->walk ? n / PER_KEY : n % KEYS;
        if ((n >= atomic_load(&ld->limit) && !atomic_load(&ld->hold)) || k >= WALK_MAX) {
            return NULL;
        }
        key_name(k, key, sizeof key);
        int len = snprintf(req, sizeof req,
                           "GET /v1/things HTTP/1.1\r\nHost: x\r\nX-Api-Key: %s\r\n\r\n", key);
        size_t off = 0;
        while (off < (size_t)len) {
            ssize_t w = write(c->fd, req + off, (size_t)len - off);
            if (w <= 0) {
                atomic_fetch_add(&ld->other, 1);
                return NULL;
            }
            off += (size_t)w;
        }
        int status = test_http_read_response(c->fd, resp, sizeof resp, NULL);
        if (status == 200) {
            atomic_fetch_add(&ld->ok, 1);
            atomic_fetch_add(&ld->admitted[k], 1);
        } else if (status == 429) {
            atomic_fetch_add(&ld->denied, 1);
        } else {
            atomic_fetch_add(&ld->other, 1);
            return NULL;
        }
        atomic_fetch_add(&ld->answered[k], 1);
    }
}

static load *load_start(fleet *f, int limit, int walk) {
    load *ld = sd_xcalloc(1, sizeof(*ld));
    atomic_init(&ld->limit, limit);
    atomic_init(&ld->hold, walk);
    ld->walk = walk;
    size_t keys = walk ? WALK_MAX : KEYS;
    ld->answered = sd_xcalloc(keys, sizeof(*ld->answered));
    ld->admitted = sd_xcalloc(keys, sizeof(*ld->admitted));
    for (int i = 0; i < CLIENTS; i++) {
        ld->fds[i] = test_tcp_connect(f->g[i % GATEWAYS].port);
        clients[i] = (client){ld, ld->fds[i]};
        cr_assert_eq(pthread_create(&ld->threads[i], NULL, client_run, &clients[i]), 0);
    }
    return ld;
}

/* Requests answered so far. */
static int load_answered(load *ld) {
    return atomic_load(&ld->ok) + atomic_load(&ld->denied);
}

/* Keys the load has used (requested at least once). */
static int load_keys(load *ld) {
    if (!ld->walk) {
        return KEYS;
    }
    int n = atomic_load(&ld->next);
    return n / PER_KEY + 1 < WALK_MAX ? n / PER_KEY + 1 : WALK_MAX;
}

static void load_free(load *ld) {
    free(ld->answered);
    free(ld->admitted);
    free(ld);
}

/* Waits for the clients, then asserts that every request got 200 or 429 and that every key
 * that got all its requests answered (each more than Q) was admitted exactly Q times, and none
 * more than Q. Returns the number of keys used. */
static int load_join_and_check(load *ld, const char *what) {
    atomic_store(&ld->hold, 0);
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(ld->threads[i], NULL);
        close(ld->fds[i]);
    }
    int ok = atomic_load(&ld->ok), denied = atomic_load(&ld->denied), keys = load_keys(ld);
    fprintf(stderr, "ratelimit cluster %s: %d requests over %d keys, %d admitted, %d denied\n",
            what, ok + denied, keys, ok, denied);
    cr_assert_eq(atomic_load(&ld->other), 0, "%s: a request got neither 200 nor 429", what);
    cr_assert_geq(ok + denied, atomic_load(&ld->limit), "%s", what);
    int wrong = 0, first = -1, complete = 0;
    for (int k = 0; k < keys; k++) {
        int answered = atomic_load(&ld->answered[k]), admitted = atomic_load(&ld->admitted[k]);
        int full = ld->walk ? answered == PER_KEY : 1;
        complete += full;
        if (full ? admitted != Q : admitted > Q) {
            wrong++;
            first = first < 0 ? k : first;
        }
    }
    cr_assert_eq(wrong, 0, "%s: %d keys were not admitted exactly %d times (user%d: %d of %d)",
                 what, wrong, Q, first, first < 0 ? 0 : atomic_load(&ld->admitted[first]),
                 first < 0 ? 0 : atomic_load(&ld->answered[first]));
    cr_assert_geq(complete, KEYS, "%s: only %d keys got all their requests", what, complete);
    return keys;
}

/* The master (0, 1, 2) that holds a slot in the launcher's initial layout: equal ranges. */
static int initial_master(int slot) {
    return slot < 5461 ? 0 : slot < 10923 ? 1 : 2;
}

/* The hash slot of a key's Redis key (policy 0) for the algorithm and tags of the fleet. */
static int key_slot(int k, const char *algorithm, int tags) {
    rl_config cfg;
    rl_config_default(&cfg);
    char err[128], key[32], rkey[RL_REDIS_KEY_MAX];
    snprintf(key, sizeof key, "user%d", k);
    cr_assert_eq(rl_config_add_policy(&cfg, "hour;q=3;w=3600", err, sizeof err), 0);
    cr_assert_eq(rl_algorithm_parse(algorithm, &cfg.algorithm), 0);
    cfg.tags = tags;
    int n = rl_config_key(&cfg, 0, key, rkey, sizeof rkey);
    cr_assert_gt(n, 0);
    return sd_redis_key_slot(rkey, (size_t)n);
}

/* The keys lie on every master, and (one tag per key) on hundreds of slots. */
static void assert_spread(const char *algorithm, int tags) {
    int per_master[3] = {0, 0, 0};
    static unsigned char seen[16384];
    memset(seen, 0, sizeof seen);
    int slots = 0;
    for (int k = 0; k < KEYS; k++) {
        int s = key_slot(k, algorithm, tags);
        per_master[initial_master(s)]++;
        slots += !seen[s];
        seen[s] = 1;
    }
    for (int m = 0; m < 3; m++) {
        cr_assert_gt(per_master[m], 0, "no key on master %d", m);
    }
    cr_assert_geq(slots, tags > 0 ? tags : 900, "the keys use only %d slots", slots);
}

/*
 * Every key gets 2Q + 1 requests, spread over the four gateways, all sent at once by 32 clients:
 * each gateway's batches mix keys of many slots (one tag per key) or of a few (shared tags).
 */
static void exact(const char *algorithm, int tags) {
    assert_spread(algorithm, tags);
    fleet f = fleet_start(algorithm, tags);
    load *ld = load_start(&f, KEYS * PER_KEY, 0);
    char what[64];
    snprintf(what, sizeof what, "%s, %d tags", algorithm, tags);
    load_join_and_check(ld, what);
    load_free(ld);
    fleet_stop(&f);
}

static const char *const algorithms[] = {"token-bucket", "gcra", "sliding-window-log",
                                         "sliding-window-counter", "fixed-window"};

#define FOR_EACH_ALGORITHM(name, run, tags)                                                        \
    Test(ratelimit_cluster, name##_token_bucket) {                                                 \
        run(algorithms[0], tags);                                                                  \
    }                                                                                              \
    Test(ratelimit_cluster, name##_gcra) {                                                         \
        run(algorithms[1], tags);                                                                  \
    }                                                                                              \
    Test(ratelimit_cluster, name##_sliding_window_log) {                                           \
        run(algorithms[2], tags);                                                                  \
    }                                                                                              \
    Test(ratelimit_cluster, name##_sliding_window_counter) {                                       \
        run(algorithms[3], tags);                                                                  \
    }                                                                                              \
    Test(ratelimit_cluster, name##_fixed_window) {                                                 \
        run(algorithms[4], tags);                                                                  \
    }

/* In the fixed-window tests the hour is aligned to the epoch: a run across the turn of an hour
 * would see a second quota (odds: the run's few seconds in an hour). */
FOR_EACH_ALGORITHM(one_tag_per_key_admits_exactly_q_per_key, exact, 0)
FOR_EACH_ALGORITHM(shared_tags_admit_exactly_q_per_key, exact, 6)

/* ---- Resharding under load ------------------------------------------------------------------ */

/* A node's cluster id (CLUSTER MYID), over a bare hiredis connection. */
static void node_id(int i, char *buf, size_t len) {
    struct timeval tv = {5, 0};
    sd_redis_server *node = sd_redis_cluster_server_node(cluster, i);
    redisContext *c = redisConnectWithTimeout("127.0.0.1", sd_redis_server_port(node), tv);
    cr_assert(c != NULL && c->err == 0, "cannot connect to node %d", i);
    redisReply *r = redisCommand(c, "CLUSTER MYID");
    cr_assert(r != NULL && r->type == REDIS_REPLY_STRING, "CLUSTER MYID on node %d", i);
    snprintf(buf, len, "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
}

/* A command's integer reply on node i, over a bare connection. */
static long long node_int(int i, const char *fmt, int arg) {
    struct timeval tv = {5, 0};
    sd_redis_server *node = sd_redis_cluster_server_node(cluster, i);
    redisContext *c = redisConnectWithTimeout("127.0.0.1", sd_redis_server_port(node), tv);
    cr_assert(c != NULL && c->err == 0, "cannot connect to node %d", i);
    redisReply *r = redisCommand(c, fmt, arg);
    cr_assert(r != NULL && r->type == REDIS_REPLY_INTEGER, "%s on node %d", fmt, i);
    long long v = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* Runs `redis-cli --cluster reshard` to move `slots` slots from master `from` to master `to`
 * (redis-cli takes the source's lowest slots); asserts that it succeeded. */
static void reshard(int from, int to, int slots) {
    char from_id[64], to_id[64], host[32], count[16];
    node_id(from, from_id, sizeof from_id);
    node_id(to, to_id, sizeof to_id);
    snprintf(host, sizeof host, "127.0.0.1:%d",
             sd_redis_server_port(sd_redis_cluster_server_node(cluster, 0)));
    snprintf(count, sizeof count, "%d", slots);
    char *argv[] = {"redis-cli",       "--cluster", "reshard",       host,
                    "--cluster-from",  from_id,     "--cluster-to",  to_id,
                    "--cluster-slots", count,       "--cluster-yes", NULL};
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork");
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDOUT_FILENO);
        execvp("redis-cli", argv);
        _exit(127);
    }
    int status = test_wait_exit(pid, 180000);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "redis-cli --cluster reshard %d -> %d failed (status %d)", from, to, status);
}

/*
 * The gateways run a load that walks over fresh keys (PER_KEY requests each, at about the same
 * time) until two reshards are done: MOVED slots from master 0 to master 1, then MOVED from
 * master 2 to master 0, each while requests are being answered and new keys written. No
 * request gets anything but 200 or 429, every key is admitted exactly Q times, and the moved
 * slots' keys are found on their new master. MOVED slots hold, with 6 shared tags, the slots of
 * two tags (1365 and 12288): every call of those lanes meets the move.
 */
static void resharding(const char *algorithm, int tags) {
    enum { MOVED = 1400 };
    fleet f = fleet_start(algorithm, tags);
    load *ld = load_start(&f, KEYS * PER_KEY, 1);
    int steps[2][2] = {{0, 1}, {2, 0}};
    for (int i = 0; i < 2; i++) {
        int answered = load_answered(ld), keys = load_keys(ld);
        reshard(steps[i][0], steps[i][1], MOVED);
        cr_assert_gt(load_answered(ld), answered, "no request was answered during reshard %d", i);
        cr_assert_gt(load_keys(ld), keys, "no new key was written during reshard %d", i);
    }
    char what[64];
    snprintf(what, sizeof what, "%s, %d tags, resharded", algorithm, tags);
    int keys = load_join_and_check(ld, what);
    /* Master 0's lowest MOVED slots went to master 1, master 2's lowest to master 0: the keys
     * there (one Redis key per client key that got an answer, each admitted at least once) are
     * on their new master now. */
    int expect1 = 0, expect0 = 0;
    for (int k = 0; k < keys; k++) {
        if (atomic_load(&ld->answered[k]) > 0) {
            int s = key_slot(k, algorithm, tags);
            expect1 += s < MOVED;
            expect0 += s >= 10923 && s < 10923 + MOVED;
        }
    }
    long long found1 = 0, found0 = 0;
    for (int s = 0; s < MOVED; s++) {
        found1 += node_int(1, "CLUSTER COUNTKEYSINSLOT %d", s);
        found0 += node_int(0, "CLUSTER COUNTKEYSINSLOT %d", 10923 + s);
    }
    cr_assert_eq(found1, expect1, "master 1 holds %lld keys of the moved slots, not %d", found1,
                 expect1);
    cr_assert_eq(found0, expect0, "master 0 holds %lld keys of the moved slots, not %d", found0,
                 expect0);
    cr_assert_gt(expect1 + expect0, 0, "no key was in the moved slots");
    load_free(ld);
    fleet_stop(&f);
}

Test(ratelimit_cluster, resharding_under_load_keeps_exact_admission_one_tag_per_key) {
    resharding("gcra", 0);
}

Test(ratelimit_cluster, resharding_under_load_keeps_exact_admission_shared_tags) {
    resharding("sliding-window-log", 6);
}
