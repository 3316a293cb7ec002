/*
 * redis_acluster.c - Redis Cluster routing behind the asynchronous connection (sd_aredis): the
 * asynchronous counterpart of the router in redis_cluster.c, whose design (detection, slot map,
 * command keys, redirections) it follows. What differs:
 *
 *  - Detection is part of the owner's first handshake (redis_async.c): its connection asks
 *    CLUSTER SLOTS, and a cluster node's answer, the slot map, creates this router. Nothing
 *    blocks the loop, and a Redis that is down at start is detected when it comes up.
 *  - One sd_aredis per master, each with its own handshake (scripts loaded), deadlines,
 *    pipelining and reconnect. The owner's connection counts as up when every master's is;
 *    that answer is kept (`up`), worked out again only when a master's connection changes state
 *    or the map changes, since callers ask before every command and the map has 16,384 slots.
 *  - Each routed command is a small request (struct acmd) holding the caller's callback, the
 *    command's absolute deadline, its slot and its bytes, formatted once (a script call as
 *    EVALSHA), so that a MOVED or ASK reply can send it again with the time that is left; the
 *    node's connection borrows the bytes (hiredis copies them into its output buffer). ASKING
 *    is a separate, constant command. The caller's callback runs exactly once, with the final
 *    reply.
 *  - MOVED also asks for a refresh of the map (CLUSTER SLOTS on a connected master), at most
 *    once per second, in the background: the command does not wait for it.
 *  - TRYAGAIN / CLUSTERDOWN: sent again after 10 ms (a uv_timer), until the deadline; these
 *    retries do not count as hops (MAX_REDIRECTS bounds MOVED / ASK loops only). A TRYAGAIN
 *    that answers a command sent with ASKING comes from the importing node, in the middle of
 *    a migration (some of the keys are there, some not yet): the retry goes to that node, with
 *    ASKING again. Sent to the slot's master instead, it would answer ASK, and a migration
 *    slower than the hop limit (~80 ms) would reach the caller as an ASK error.
 *  - A command whose keys span slots is refused: the call returns SD_EPARSE (the callback never
 *    runs) and the error naming the keys is logged.
 *  - A redirection to a master this connection has no ready connection to yet fails with
 *    SD_EDISCONNECTED (the connection to it is being opened; the next command gets through).
 *  - A command refused because its master's connection is down also asks for a refresh of the
 *    map (at most once per second): after a failover the slots move to the promoted replica,
 *    and nothing else would tell this connection (bench/probes/cluster_kill.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"
#include "sd.h"

#define SLOTS 16384
#define MAX_REDIRECTS 16
#define REFRESH_MIN_MS 1000
#define RETRY_MS 10

struct sd_redis__acluster {
    sd_aredis *owner;
    uv_loop_t *loop;
    sd_redis_url url;
    sd_redis_opts opts;
    struct sd_redis__slot_map map;
    sd_aredis *conn[SD_CLUSTER_MAX_NODES];
    int up;         /* every master's connection is ready: what the owner was last told */
    int closing;    /* sd_redis__acluster_free is running */
    int refreshing; /* a CLUSTER SLOTS is in flight, asked of node refresh_node */
    int refresh_node;
    uint64_t refreshed_ms;
    struct acmd *retrying; /* commands waiting on their retry timer */
};

/* One routed command (see the top of the file). */
struct acmd {
    struct sd_redis__acluster *cl;
    sd_aredis_cb *cb;
    void *privdata;
    uint64_t deadline_ns;
    sd_script *script; /* a script call: argv holds keys then arguments */
    char *cmd;         /* the command, formatted (RESP; a script call as EVALSHA), owned */
    size_t len;
    int hops;         /* MOVED and ASK followed */
    int slot;         /* of the first key, -1 when keyless */
    int node;         /* where it was last sent */
    int asking;       /* and whether with ASKING */
    uv_timer_t timer; /* the TRYAGAIN retry, initialised on first use and closed only when a
                       * is released: a reply may come (and ask for another retry, or end the
                       * command) in the same loop iteration as the retry was sent */
    int timer_used;
    struct acmd *next_retry, *prev_retry;
};

static void acmd_free(struct acmd *a) {
    free(a->cmd);
    free(a);
}

static void on_retry_closed(uv_handle_t *h) {
    acmd_free(h->data);
}

/* Frees a once its caller's callback has run: at once, or when its timer has closed. */
static void acmd_release(struct acmd *a) {
    if (a->timer_used)
        uv_close((uv_handle_t *)&a->timer, on_retry_closed);
    else
        acmd_free(a);
}

static int node_ready(struct sd_redis__acluster *cl, int node) {
    return cl->conn[node] && sd_aredis_is_connected(cl->conn[node]);
}

/* Every master of the map has a ready connection. */
static int all_up(struct sd_redis__acluster *cl) {
    int seen[SD_CLUSTER_MAX_NODES] = {0}, any = 0;
    for (int s = 0; s < SLOTS; s++) {
        int n = cl->map.slot[s];
        if (n < 0 || seen[n])
            continue;
        seen[n] = any = 1;
        if (!node_ready(cl, n))
            return 0;
    }
    return any;
}

/* Works out `up` again: on a master's state change and after the map changed. */
static void update_state(struct sd_redis__acluster *cl) {
    int up = all_up(cl);
    if (up != cl->up && !cl->closing) {
        cl->up = up;
        sd_aredis__report_state(cl->owner, up);
    }
}

static void on_node_state(sd_aredis *r, int connected, void *privdata) {
    (void)r;
    (void)connected;
    update_state(privdata);
}

static void open_node(struct sd_redis__acluster *cl, int node) {
    if (cl->conn[node])
        return;
    sd_redis_url u;
    sd_redis__url_at(&cl->url, cl->map.node[node].host, cl->map.node[node].port, &u);
    cl->conn[node] = sd_aredis__new_node(cl->loop, &u, &cl->opts);
    sd_redis_url_clear(&u);
    sd_aredis_set_state_cb(cl->conn[node], on_node_state, cl);
}

static void open_masters(struct sd_redis__acluster *cl) {
    for (int s = 0; s < SLOTS; s++)
        if (cl->map.slot[s] >= 0)
            open_node(cl, cl->map.slot[s]);
}

static void on_slots(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    (void)r;
    struct sd_redis__acluster *cl = privdata;
    cl->refreshing = 0;
    if (status != 0 || cl->closing)
        return;
    sd_redis__slot_map_apply(&cl->map, reply, cl->map.node[cl->refresh_node].host);
    open_masters(cl);
    update_state(cl);
}

/* Asks a ready master for CLUSTER SLOTS, at most once per second. */
static void refresh_soon(struct sd_redis__acluster *cl) {
    if (cl->refreshing || cl->closing || sd_now_ms() < cl->refreshed_ms + REFRESH_MIN_MS)
        return;
    for (int n = 0; n < cl->map.nnodes; n++)
        if (node_ready(cl, n) &&
            sd_aredis_command(cl->conn[n], on_slots, cl, 0, "CLUSTER SLOTS") == 0) {
            cl->refreshing = 1;
            cl->refresh_node = n;
            cl->refreshed_ms = sd_now_ms();
            return;
        }
}

static void on_reply(sd_aredis *r, redisReply *reply, int status, void *privdata);

/* ASKING's own reply (OK) says nothing: the command after it carries the answer. */
static void on_asking(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    (void)r;
    (void)reply;
    (void)status;
    (void)privdata;
}

/* Sends a to node; returns 0 or the error of the node's connection. */
static int send_to(struct acmd *a, int node, int asking) {
    struct sd_redis__acluster *cl = a->cl;
    if (!node_ready(cl, node)) {
        /* The map may be stale (the master died and a replica took over): ask again, at most
         * once per second, or its slots would stay on a dead node for good. */
        open_node(cl, node);
        refresh_soon(cl);
        return SD_EDISCONNECTED;
    }
    uint64_t now = sd_now_ns();
    int left = a->deadline_ns > now ? (int)((a->deadline_ns - now + 999999) / 1000000) : 0;
    if (left < 1)
        return SD_ETIMEDOUT;
    static const char asking_cmd[] = "*1\r\n$6\r\nASKING\r\n";
    sd_aredis *conn = cl->conn[node];
    if (asking)
        sd_aredis__send_formatted(conn, on_asking, NULL, left, asking_cmd, sizeof asking_cmd - 1,
                                  NULL);
    int rc = sd_aredis__send_formatted(conn, on_reply, a, left, a->cmd, a->len, a->script);
    if (rc == 0) {
        a->node = node;
        a->asking = asking;
    }
    return rc;
}

static void finish(struct acmd *a, redisReply *reply, int status) {
    if (a->cb)
        a->cb(a->cl->owner, reply, status, a->privdata);
    acmd_release(a);
}

static void on_retry_timer(uv_timer_t *t) {
    struct acmd *a = t->data;
    struct sd_redis__acluster *cl = a->cl;
    if (a->prev_retry)
        a->prev_retry->next_retry = a->next_retry;
    else
        cl->retrying = a->next_retry;
    if (a->next_retry)
        a->next_retry->prev_retry = a->prev_retry;
    /* After ASKING, the node that answered is the one importing the slot (top of file). */
    int node = a->asking                                    ? a->node
               : a->slot >= 0 && cl->map.slot[a->slot] >= 0 ? cl->map.slot[a->slot]
                                                            : 0;
    int rc = send_to(a, node, a->asking);
    if (rc == 0)
        return; /* the node connection now holds a */
    finish(a, NULL, rc);
}

static void on_reply(sd_aredis *r, redisReply *reply, int status, void *privdata) {
    (void)r;
    struct acmd *a = privdata;
    struct sd_redis__acluster *cl = a->cl;
    if (status != 0) {
        if (status == SD_EDISCONNECTED && !cl->closing)
            refresh_soon(cl);
        finish(a, NULL, status);
        return;
    }
    char host[64];
    int slot, port;
    int kind = sd_redis__redirect_parse(reply, &slot, host, sizeof host, &port);
    if (kind == SD_REDIRECT_NONE || cl->closing ||
        (kind != SD_REDIRECT_RETRY && a->hops++ == MAX_REDIRECTS)) {
        finish(a, reply, 0);
        return;
    }
    if (kind == SD_REDIRECT_RETRY) {
        if (sd_now_ns() + RETRY_MS * 1000000ull >= a->deadline_ns) {
            finish(a, reply, 0);
            return;
        }
        if (!a->timer_used) {
            uv_timer_init(cl->loop, &a->timer);
            a->timer.data = a;
            a->timer_used = 1;
        }
        uv_timer_start(&a->timer, on_retry_timer, RETRY_MS, 0);
        a->prev_retry = NULL;
        a->next_retry = cl->retrying;
        if (cl->retrying)
            cl->retrying->prev_retry = a;
        cl->retrying = a;
        return;
    }
    int node = sd_redis__slot_map_node(&cl->map, host, port);
    if (kind == SD_REDIRECT_MOVED) {
        cl->map.slot[slot] = (short)node;
        refresh_soon(cl);
    }
    int rc = send_to(a, node, kind == SD_REDIRECT_ASK);
    if (rc != 0) {
        finish(a, NULL, rc); /* the caller's callback may free the connection, and cl */
        return;
    }
    if (kind == SD_REDIRECT_MOVED)
        update_state(cl); /* the slot may name a master with no connection yet */
}

/* ---- Entry points (called from redis_async.c) ----------------------------------------------- */

struct sd_redis__acluster *sd_redis__acluster_new(sd_aredis *owner, uv_loop_t *loop,
                                                  const sd_redis_url *url,
                                                  const sd_redis_opts *opts,
                                                  const redisReply *slots, const char *asked_host) {
    struct sd_redis__acluster *cl = sd_xcalloc(1, sizeof *cl);
    cl->owner = owner;
    cl->loop = loop;
    sd_redis_url_copy(&cl->url, url);
    cl->opts = sd_redis__opts_resolve(opts);
    for (int s = 0; s < SLOTS; s++)
        cl->map.slot[s] = -1;
    sd_redis__slot_map_apply(&cl->map, slots, asked_host);
    cl->refreshed_ms = sd_now_ms();
    open_masters(cl);
    return cl;
}

int sd_redis__acluster_up(const struct sd_redis__acluster *cl) {
    return cl->up;
}

size_t sd_redis__acluster_pending(const struct sd_redis__acluster *cl) {
    size_t n = 0;
    for (int i = 0; i < SD_CLUSTER_MAX_NODES; i++)
        if (cl->conn[i])
            n += sd_aredis_pending(cl->conn[i]);
    return n;
}

void sd_redis__acluster_flush(struct sd_redis__acluster *cl) {
    for (int i = 0; i < SD_CLUSTER_MAX_NODES; i++)
        sd_aredis_flush(cl->conn[i]);
}

void sd_redis__acluster_read(struct sd_redis__acluster *cl) {
    sd_aredis *owner = cl->owner;
    for (int i = 0; i < SD_CLUSTER_MAX_NODES; i++) {
        sd_aredis_read(cl->conn[i]);
        /* A callback may have closed the owner, and with it this router. */
        if (sd_redis__aredis_closed(owner))
            return;
    }
}

int sd_redis__acluster_slot(int argc, const char **argv, const size_t *lens) {
    struct sd_redis__route route;
    if (sd_redis__command_route(argc, argv, lens, &route) != 0) {
        char text[400];
        sd_redis__crossslot_text(text, sizeof text, argv, lens, &route); /* logs it */
        return SD_EPARSE;
    }
    return route.slot;
}

int sd_redis__acluster_send_formatted(struct sd_redis__acluster *cl, sd_aredis_cb *cb,
                                      void *privdata, int timeout_ms, sd_script *script, char *cmd,
                                      size_t len, int slot) {
    struct acmd *a = sd_xcalloc(1, sizeof *a);
    a->cl = cl;
    a->cb = cb;
    a->privdata = privdata;
    a->script = script;
    a->slot = slot;
    a->cmd = cmd;
    a->len = len;
    int ms = timeout_ms > 0 ? timeout_ms : cl->opts.command_timeout_ms;
    a->deadline_ns = sd_now_ns() + (uint64_t)ms * 1000000u;
    int node = slot >= 0 && cl->map.slot[slot] >= 0 ? cl->map.slot[slot] : -1;
    for (int n = 0; node < 0 && n < cl->map.nnodes; n++)
        if (node_ready(cl, n))
            node = n;
    int rc = node < 0 ? SD_EDISCONNECTED : send_to(a, node, 0);
    if (rc != 0)
        acmd_free(a);
    return rc;
}

int sd_redis__acluster_send(struct sd_redis__acluster *cl, sd_aredis_cb *cb, void *privdata,
                            int timeout_ms, sd_script *script, int nkeys, int argc,
                            const char **argv, const size_t *lens) {
    int slot;
    char *cmd = NULL;
    size_t len = 0;
    if (script) {
        /* A script's keys are one slot by the caller's design (hash tags); Redis refuses
         * them otherwise with CROSSSLOT. */
        slot = nkeys > 0 ? sd_redis_key_slot(argv[0], lens ? lens[0] : strlen(argv[0])) : -1;
        struct sd_redis__script_call call;
        sd_redis__script_call_init(&call, script, nkeys, argc, argv, lens);
        len = sd_redis__resp_format(&cmd, call.argc, call.argv, call.lens);
        sd_redis__script_call_release(&call);
    } else {
        size_t small[16] = {0}, *own = NULL; /* the lengths of NUL-terminated arguments */
        if (lens == NULL) {
            own = argc <= 16 ? small : sd_xmalloc((size_t)argc * sizeof *own);
            for (int i = 0; i < argc; i++)
                own[i] = strlen(argv[i]);
            lens = own;
        }
        slot = sd_redis__acluster_slot(argc, argv, lens);
        if (slot >= -1)
            len = sd_redis__resp_format(&cmd, argc, argv, lens);
        if (own != small)
            free(own);
        if (slot < -1)
            return SD_EPARSE;
    }
    return sd_redis__acluster_send_formatted(cl, cb, privdata, timeout_ms, script, cmd, len, slot);
}

void sd_redis__acluster_free(struct sd_redis__acluster *cl) {
    if (cl == NULL)
        return;
    cl->closing = 1;
    while (cl->retrying) {
        struct acmd *a = cl->retrying;
        cl->retrying = a->next_retry;
        uv_timer_stop(&a->timer);
        if (a->cb)
            a->cb(cl->owner, NULL, SD_ECLOSED, a->privdata);
        acmd_release(a);
    }
    for (int i = 0; i < SD_CLUSTER_MAX_NODES; i++)
        sd_aredis_free(cl->conn[i]);
    sd_redis_url_clear(&cl->url);
    sd_redis__opts_clear(&cl->opts);
    free(cl);
}
