/*
 * redis_cluster_server.c - a private Redis Cluster (see redis_cluster_server.h).
 *
 * Every node is an embedded Redis (redis_server.c) started with cluster mode on, so each one
 * has the embedded Redis's guarantees: PR_SET_PDEATHSIG on the server and a janitor that kills
 * it and removes its directory when the owner dies, even by SIGKILL. This file only adds the
 * cluster around them:
 *
 *     start nodes ──> ADDSLOTSRANGE (masters) ──> MEET (all, to node 0)
 *         ──> every node knows every other ──> REPLICATE (replicas)
 *         ──> every node says cluster_state:ok ──> ready
 *
 * Built with plain commands rather than `redis-cli --cluster create` (which ships with the
 * redis-tools package, not with redis-server) so that the layout is exact: master m holds the
 * m-th equal range of slots, which tests use to aim keys at a given master.
 *
 * Two settings differ from redis-server's defaults, both for a private test and bench cluster:
 * cluster-require-full-coverage is off, so when one master dies the others go on serving their
 * own slots (the behaviour the fault tests look at), cluster-allow-replica-migration is off so
 * that each replica stays with the master it was given, and cluster-node-timeout is 5 s rather
 * than 15 (opts.node_timeout_ms). A replica counts as ready once its link to its master is up; the
 * masters start the first sync at once (repl-diskless-sync-delay 0, not 5 s).
 */
#include "redis_cluster_server.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "redis_internal.h"
#include "sd.h"

#define MAX_NODES 32
#define SLOTS 16384

struct sd_redis_cluster_server {
    int count;   /* nodes started */
    int masters; /* the first `masters` nodes are masters */
    sd_redis_server *nodes[MAX_NODES];
    int bus[MAX_NODES]; /* each node's cluster bus port */
    char *url;
};

/* Starts a node with a free loopback port for its cluster bus; another process may take that
 * port meanwhile, in which case the node fails to start and this tries again with another. */
static int start_node(sd_redis_server **out, int *bus_out, int node_timeout_ms) {
    int err = -EADDRINUSE;
    for (int attempt = 0; attempt < 3 && err != 0; attempt++) {
        int bus = sd_free_loopback_port();
        if (bus < 0)
            return bus;
        char bus_text[16], timeout_text[16];
        snprintf(bus_text, sizeof bus_text, "%d", bus);
        snprintf(timeout_text, sizeof timeout_text, "%d", node_timeout_ms);
        const char *extra[] = {"--cluster-enabled",
                               "yes",
                               "--cluster-config-file",
                               "nodes.conf",
                               "--cluster-port",
                               bus_text,
                               "--cluster-node-timeout",
                               timeout_text,
                               "--cluster-require-full-coverage",
                               "no",
                               "--cluster-allow-replica-migration",
                               "no",
                               "--repl-diskless-sync-delay",
                               "0",
                               NULL};
        sd_redis_server_opts opts = {.extra_args = extra};
        err = sd_redis_server_start(&opts, out);
        *bus_out = bus;
    }
    return err;
}

/* A short-lived sync connection to node i (1 s timeouts), or NULL. */
static redisContext *node_connect(const sd_redis_cluster_server *c, int i) {
    struct timeval tv = {1, 0};
    redisContext *ctx = redisConnectWithTimeout("127.0.0.1", sd_redis_server_port(c->nodes[i]), tv);
    if (ctx == NULL || ctx->err) {
        if (ctx)
            redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, tv);
    return ctx;
}

/* Runs one command on node i; returns 0 when it answered with anything but an error. The reply
 * is stored in *out when out is not NULL (free it), else dropped. */
static int node_command(const sd_redis_cluster_server *c, int i, redisReply **out, const char *fmt,
                        ...) {
    redisContext *ctx = node_connect(c, i);
    if (ctx == NULL)
        return SD_EDISCONNECTED;
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    redisFree(ctx);
    if (reply == NULL)
        return SD_EDISCONNECTED;
    if (reply->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "redis_cluster_server: node %d refused %s: %s\n", i, fmt, reply->str);
        freeReplyObject(reply);
        return SD_EREDIS;
    }
    if (out)
        *out = reply;
    else
        freeReplyObject(reply);
    return 0;
}

/* Whether node i knows every node of the cluster and (need_ok) reports cluster_state:ok with
 * every slot assigned (with cluster-require-full-coverage off, "ok" alone does not mean the
 * node has heard of every master's slots yet), and, for a replica, has its link to its master
 * up. */
static int node_ready(const sd_redis_cluster_server *c, int i, int need_ok) {
    redisReply *reply = NULL;
    if (need_ok && i >= c->masters) {
        if (node_command(c, i, &reply, "INFO replication") != 0)
            return 0;
        int up = reply->type == REDIS_REPLY_STRING &&
                 strstr(reply->str, "master_link_status:up\r") != NULL;
        freeReplyObject(reply);
        if (!up)
            return 0;
    }
    if (node_command(c, i, &reply, "CLUSTER INFO") != 0)
        return 0;
    char known[48];
    snprintf(known, sizeof known, "cluster_known_nodes:%d\r", c->count);
    int ready = reply->type == REDIS_REPLY_STRING && strstr(reply->str, known) != NULL &&
                (!need_ok || (strstr(reply->str, "cluster_state:ok\r") != NULL &&
                              strstr(reply->str, "cluster_slots_assigned:16384\r") != NULL));
    freeReplyObject(reply);
    return ready;
}

/* Polls until every node is ready (need_ok: and in state ok) or the deadline passes. */
static int wait_all(const sd_redis_cluster_server *c, int need_ok, uint64_t deadline_ms) {
    for (int delay = 5;; delay = delay < 50 ? delay * 2 : 50) {
        int ready = 0;
        while (ready < c->count && node_ready(c, ready, need_ok))
            ready++;
        if (ready == c->count)
            return 0;
        if (sd_now_ms() > deadline_ms)
            return SD_ETIMEDOUT;
        sd_redis__sleep_ms(delay);
    }
}

static int build_cluster(sd_redis_cluster_server *c, uint64_t deadline_ms) {
    int rc = 0;
    for (int m = 0; m < c->masters && rc == 0; m++) {
        int first = m * SLOTS / c->masters, last = (m + 1) * SLOTS / c->masters - 1;
        rc = node_command(c, m, NULL, "CLUSTER ADDSLOTSRANGE %d %d", first, last);
    }
    for (int i = 1; i < c->count && rc == 0; i++)
        /* MEET must name the bus port: without it Redis assumes port + 10000. */
        rc = node_command(c, i, NULL, "CLUSTER MEET 127.0.0.1 %d %d",
                          sd_redis_server_port(c->nodes[0]), c->bus[0]);
    if (rc == 0)
        rc = wait_all(c, 0, deadline_ms);
    for (int i = c->masters; i < c->count && rc == 0; i++) {
        redisReply *id = NULL;
        rc = node_command(c, i - c->masters, &id, "CLUSTER MYID");
        if (rc == 0) {
            rc = node_command(c, i, NULL, "CLUSTER REPLICATE %s", id->str);
            freeReplyObject(id);
        }
    }
    if (rc == 0)
        rc = wait_all(c, 1, deadline_ms);
    return rc;
}

int sd_redis_cluster_server_start(const sd_redis_cluster_server_opts *opts,
                                  sd_redis_cluster_server **out) {
    sd_redis_cluster_server_opts o = opts ? *opts : (sd_redis_cluster_server_opts){0};
    if (o.masters == 0)
        o.masters = 3;
    if (o.masters < 1 || o.masters > 16 || o.replicas < 0 || o.replicas > 1)
        return -EINVAL;
    uint64_t deadline_ms =
        sd_now_ms() + (uint64_t)(o.start_timeout_ms > 0 ? o.start_timeout_ms : 30000);
    sd_redis_cluster_server *c = sd_xcalloc(1, sizeof *c);
    c->masters = o.masters;
    int want = o.masters * (1 + o.replicas), rc = 0;
    while (c->count < want && rc == 0)
        if ((rc = start_node(&c->nodes[c->count], &c->bus[c->count],
                             o.node_timeout_ms > 0 ? o.node_timeout_ms : 5000)) == 0)
            c->count++;
    if (rc == 0 && (rc = build_cluster(c, deadline_ms)) != 0)
        fprintf(stderr, "redis_cluster_server: the cluster did not become ready: %s\n",
                sd_strerror(rc));
    if (rc != 0) {
        sd_redis_cluster_server_stop(c);
        return rc;
    }
    size_t cap = 16 + (size_t)c->masters * 24;
    c->url = sd_xmalloc(cap);
    size_t n = (size_t)snprintf(c->url, cap, "redis://");
    for (int m = 0; m < c->masters; m++)
        n += (size_t)snprintf(c->url + n, cap - n, "%s127.0.0.1:%d", m ? "," : "",
                              sd_redis_server_port(c->nodes[m]));
    *out = c;
    return 0;
}

const char *sd_redis_cluster_server_url(const sd_redis_cluster_server *c) {
    return c->url;
}

int sd_redis_cluster_server_count(const sd_redis_cluster_server *c) {
    return c->count;
}

sd_redis_server *sd_redis_cluster_server_node(const sd_redis_cluster_server *c, int i) {
    return i >= 0 && i < c->count ? c->nodes[i] : NULL;
}

int sd_redis_cluster_server_wait_ready(const sd_redis_cluster_server *c, int timeout_ms) {
    return wait_all(c, 1, sd_now_ms() + (uint64_t)timeout_ms);
}

int sd_redis_cluster_server_stop(sd_redis_cluster_server *c) {
    if (c == NULL)
        return 0;
    int err = 0;
    for (int i = 0; i < c->count; i++) {
        int rc = sd_redis_server_stop(c->nodes[i]);
        if (err == 0)
            err = rc;
    }
    free(c->url);
    free(c);
    return err;
}
