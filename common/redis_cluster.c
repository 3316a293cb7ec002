/*
 * redis_cluster.c - Redis Cluster routing behind the connections of redis.h, so that a
 * component does not know whether it talks to one Redis or to a cluster.
 *
 * Why it is written here: hiredis 0.14 (Debian 12) has no cluster support, and the C cluster
 * client built on hiredis (hiredis-cluster) needs hiredis >= 1.0, which Debian 12 does not ship.
 * The behaviour follows the Redis Cluster specification ("Redirection and resharding") and what
 * hiredis-cluster does; no code is taken from either.
 *
 * Design
 *  1. Detection. A connection whose URL lists several seeds is a cluster connection. A URL
 *     naming one node is probed once, on its first successful connect, with INFO cluster
 *     (cluster_enabled:1).
 *  2. The slot map. `CLUSTER SLOTS`, asked of any known node (the seeds first time), gives the
 *     master of every slot; one connection per master is opened when first needed, each with
 *     the handshake, scripts, timeouts and backoff of an ordinary connection (redis_sync.c), so
 *     every node has the scripts loaded before its first call.
 *  3. The key of a command (command_key below): the first key, found with a small table:
 *     EVAL/EVALSHA (and _RO, FCALL) take argv[3] when numkeys > 0; keyless commands (PING,
 *     INFO, SCRIPT, CLUSTER, PUBLISH...) go to any node, and SCRIPT LOAD/FLUSH, FLUSHALL and
 *     FLUSHDB go to every master (the first master's reply is returned). A command whose keys
 *     are in several slots (MGET, DEL, MSET, EXISTS, a script's keys) is refused before it is
 *     sent, with an error reply that names two of the keys and their slots: that is a
 *     programming error, not a runtime condition (Redis would answer CROSSSLOT).
 *  4. Redirections, all within the command's one deadline:
 *     - MOVED slot host:port: the slot's owner changed. The slot is pointed at the named node
 *       and the command is sent there at once; the whole map is refreshed too, at most once
 *       per second (on the next call after the second has passed: a synchronous connection has
 *       no background).
 *     - ASK slot host:port: the slot is being migrated and this key has already moved. ASKING
 *       and the command are sent to the named node, pipelined; the map is not changed.
 *     - TRYAGAIN (a multi-key command during a migration) and CLUSTERDOWN: sent again after
 *       10 ms, to the node that answered (with ASKING again when it was sent with it), until
 *       the deadline; then the error reply is returned.
 *     At most 16 MOVED / ASK per command, so a map that never settles cannot loop forever;
 *     TRYAGAIN retries are bounded by the deadline only.
 *  5. A node that goes away: its commands fail as on any connection (SD_EDISCONNECTED or
 *     SD_ETIMEDOUT) and the map is marked for a refresh; the other masters keep answering.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "redis_internal.h"
#include "sd.h"

#define SLOTS 16384
#define MAX_REDIRECTS 16
#define REFRESH_MIN_MS 1000

/* ---- The key of a command ------------------------------------------------------------------ */

static int name_is(const char *arg, size_t len, const char *name) {
    return strlen(name) == len && strncasecmp(arg, name, len) == 0;
}

/* Commands without a key. */
static const char *const keyless[] = {
    "PING",      "INFO",    "ECHO",   "TIME",    "DBSIZE",    "CONFIG",   "CLIENT",   "COMMAND",
    "CLUSTER",   "SCRIPT",  "AUTH",   "SELECT",  "PUBLISH",   "SPUBLISH", "HELLO",    "MULTI",
    "EXEC",      "DISCARD", "KEYS",   "SCAN",    "RANDOMKEY", "WAIT",     "FLUSHALL", "FLUSHDB",
    "LASTSAVE",  "SLOWLOG", "MEMORY", "LATENCY", "FUNCTION",  "DEBUG",    "ROLE",     "READONLY",
    "READWRITE", "ASKING",  "QUIT",   NULL};

int sd_redis__command_route(int argc, const char **argv, const size_t *lens,
                            struct sd_redis__route *route) {
    memset(route, 0, sizeof *route);
    route->slot = -1;
    route->first_key = -1;
    if (argc < 1)
        return 0;
    const char *cmd = argv[0];
    size_t clen = lens[0];
    if (name_is(cmd, clen, "FLUSHALL") || name_is(cmd, clen, "FLUSHDB") ||
        (name_is(cmd, clen, "SCRIPT") && argc > 1 &&
         (name_is(argv[1], lens[1], "LOAD") || name_is(argv[1], lens[1], "FLUSH"))))
        route->all = 1;
    for (const char *const *k = keyless; *k; k++)
        if (name_is(cmd, clen, *k))
            return 0;
    int first = 1, last = argc > 1 ? 1 : 0, step = 1;
    if (name_is(cmd, clen, "EVAL") || name_is(cmd, clen, "EVALSHA") ||
        name_is(cmd, clen, "EVAL_RO") || name_is(cmd, clen, "EVALSHA_RO") ||
        name_is(cmd, clen, "FCALL") || name_is(cmd, clen, "FCALL_RO")) {
        long nkeys = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
        if (nkeys <= 0 || 3 + nkeys > argc)
            return 0;
        first = 3;
        last = 2 + (int)nkeys;
    } else if (name_is(cmd, clen, "MGET") || name_is(cmd, clen, "DEL") ||
               name_is(cmd, clen, "UNLINK") || name_is(cmd, clen, "EXISTS") ||
               name_is(cmd, clen, "TOUCH") || name_is(cmd, clen, "WATCH")) {
        last = argc - 1;
    } else if (name_is(cmd, clen, "MSET") || name_is(cmd, clen, "MSETNX")) {
        last = argc - 1;
        step = 2;
    }
    if (last < first)
        return 0;
    route->first_key = first;
    route->slot = sd_redis_key_slot(argv[first], lens[first]);
    for (int i = first + step; i <= last; i += step) {
        int slot = sd_redis_key_slot(argv[i], lens[i]);
        if (slot != route->slot) {
            route->cross_key = i;
            route->cross_slot = slot;
            return SD_EPARSE;
        }
    }
    return 0;
}

void sd_redis__crossslot_text(char *buf, size_t len, const char **argv, const size_t *lens,
                              const struct sd_redis__route *route) {
    snprintf(buf, len,
             "CROSSSLOT (refused before sending) %.*s: keys '%.*s' (slot %d) and '%.*s' (slot %d) "
             "are in different slots of the Redis Cluster; keys used together need one hash tag",
             (int)lens[0], argv[0],
             (int)(lens[route->first_key] > 64 ? 64 : lens[route->first_key]),
             argv[route->first_key], route->slot,
             (int)(lens[route->cross_key] > 64 ? 64 : lens[route->cross_key]),
             argv[route->cross_key], route->cross_slot);
    sd_log(SD_LOG_ERROR, "redis.cluster_crossslot", "error=\"%s\"", buf);
}

/* ---- Replies --------------------------------------------------------------------------------- */

int sd_redis__redirect_parse(const redisReply *reply, int *slot, char *host, size_t hostlen,
                             int *port) {
    if (reply == NULL || reply->type != REDIS_REPLY_ERROR)
        return SD_REDIRECT_NONE;
    int kind;
    const char *rest;
    if (strncmp(reply->str, "MOVED ", 6) == 0) {
        kind = SD_REDIRECT_MOVED;
        rest = reply->str + 6;
    } else if (strncmp(reply->str, "ASK ", 4) == 0) {
        kind = SD_REDIRECT_ASK;
        rest = reply->str + 4;
    } else if (strncmp(reply->str, "TRYAGAIN", 8) == 0 ||
               strncmp(reply->str, "CLUSTERDOWN", 11) == 0) {
        return SD_REDIRECT_RETRY;
    } else {
        return SD_REDIRECT_NONE;
    }
    /* "<slot> <host>:<port>"; the host may be an IPv6 address, so the port follows the last
     * colon. */
    char *end;
    long s = strtol(rest, &end, 10);
    if (end == rest || *end != ' ' || s < 0 || s >= SLOTS)
        return SD_REDIRECT_NONE;
    const char *addr = end + 1, *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= hostlen)
        return SD_REDIRECT_NONE;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    *port = atoi(colon + 1);
    *slot = (int)s;
    return kind;
}

redisReply *sd_redis__error_reply(const char *text) {
    /* hiredis frees a reply with free() (freeReplyObject), so one made here with malloc is
     * freed the same way as one read from the socket. */
    redisReply *r = sd_xcalloc(1, sizeof *r);
    r->type = REDIS_REPLY_ERROR;
    r->len = strlen(text);
    r->str = sd_xstrdup(text);
    return r;
}

int sd_redis__resp_argv(const char *cmd, size_t len, int max, const char **argv, size_t *lens) {
    const char *p = cmd, *end = cmd + len;
    if (p >= end || *p != '*')
        return -1;
    int n = atoi(p + 1);
    p = memchr(p, '\n', (size_t)(end - p));
    if (n < 0 || n > max || p == NULL)
        return -1;
    p++;
    for (int i = 0; i < n; i++) {
        if (p >= end || *p != '$')
            return -1;
        size_t l = (size_t)strtoull(p + 1, NULL, 10);
        p = memchr(p, '\n', (size_t)(end - p));
        if (p == NULL || (size_t)(end - p - 1) < l + 2)
            return -1;
        argv[i] = p + 1;
        lens[i] = l;
        p += 1 + l + 2;
    }
    return n;
}

int sd_redis__cluster_probe(redisContext *c) {
    redisReply *reply = redisCommand(c, "INFO cluster");
    int on = reply && reply->type == REDIS_REPLY_STRING &&
             strstr(reply->str, "cluster_enabled:1") != NULL;
    if (reply)
        freeReplyObject(reply);
    return reply == NULL ? -1 : on;
}

int sd_redis__seed_url(const sd_redis_url *url, int i, sd_redis_url *out) {
    if (i == 0) {
        sd_redis_url_copy(out, url);
        free(out->seeds);
        out->seeds = NULL;
        return 0;
    }
    const char *s = url->seeds;
    for (int k = 1; s && k < i; k++) {
        s = strchr(s, ',');
        if (s)
            s++;
    }
    if (s == NULL || *s == '\0')
        return -1;
    size_t n = strcspn(s, ",");
    char *text = sd_xasprintf("redis://%.*s", (int)n, s);
    sd_redis_url one;
    char err[160];
    int rc = sd_redis_url_parse(text, &one, err, sizeof err);
    free(text);
    if (rc != 0)
        return -1;
    sd_redis__url_at(url, one.host, one.port, out);
    sd_redis_url_clear(&one);
    return 0;
}

void sd_redis__url_at(const sd_redis_url *url, const char *host, int port, sd_redis_url *out) {
    sd_redis_url_copy(out, url);
    free(out->seeds);
    out->seeds = NULL;
    free(out->host);
    out->host = sd_xstrdup(host);
    out->port = port;
}

void sd_redis__slot_map_apply(struct sd_redis__slot_map *m, const redisReply *slots,
                              const char *asked_host) {
    if (slots == NULL || slots->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < slots->elements; i++) {
        const redisReply *range = slots->element[i];
        if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
            range->element[0]->type != REDIS_REPLY_INTEGER ||
            range->element[1]->type != REDIS_REPLY_INTEGER ||
            range->element[2]->type != REDIS_REPLY_ARRAY || range->element[2]->elements < 2)
            continue;
        const redisReply *master = range->element[2];
        /* An empty host means "the address you reached me at" (the specification's
         * "unknown endpoint"): use the node we asked. */
        const char *host =
            master->element[0]->type == REDIS_REPLY_STRING && master->element[0]->len > 0
                ? master->element[0]->str
                : asked_host;
        int node = sd_redis__slot_map_node(m, host, (int)master->element[1]->integer);
        long long first = range->element[0]->integer, last = range->element[1]->integer;
        for (long long s = first; s <= last && s < SLOTS; s++)
            if (s >= 0)
                m->slot[s] = (short)node;
    }
}

int sd_redis__slot_map_node(struct sd_redis__slot_map *m, const char *host, int port) {
    for (int i = 0; i < m->nnodes; i++)
        if (m->node[i].port == port && strcmp(m->node[i].host, host) == 0)
            return i;
    if (m->nnodes == SD_CLUSTER_MAX_NODES)
        return 0; /* more nodes than we track: Redis will redirect */
    int i = m->nnodes++;
    snprintf(m->node[i].host, sizeof m->node[i].host, "%s", host);
    m->node[i].port = port;
    return i;
}

/* ---- The synchronous router ------------------------------------------------------------------ */

struct sd_redis__cluster {
    sd_redis_url url; /* the connection's URL: AUTH, the seeds */
    sd_redis_opts opts;
    int timeout_ms;
    struct sd_redis__slot_map map;
    sd_redis *conn[SD_CLUSTER_MAX_NODES]; /* NULL until first used */
    uint64_t refreshed_ms;                /* when the map was last read */
    int refresh_wanted;
    /* The queue of sd_redis_append (see sd_redis__cluster_append). */
    struct pipe_cmd {
        int node;
        char *cmd;
        size_t len;
    } * pipe;
    size_t pipe_head, pipe_tail, pipe_cap;
    char err[200];
};

static sd_redis *node_conn(struct sd_redis__cluster *cl, int node) {
    if (cl->conn[node] == NULL) {
        sd_redis_url u;
        sd_redis__url_at(&cl->url, cl->map.node[node].host, cl->map.node[node].port, &u);
        cl->conn[node] = sd_redis__new_node(&u, &cl->opts);
        sd_redis_url_clear(&u);
    }
    sd_redis_set_timeout(cl->conn[node], cl->timeout_ms);
    return cl->conn[node];
}

/* Reads CLUSTER SLOTS from the first node (known ones, then the seeds) that answers. */
static int refresh(struct sd_redis__cluster *cl) {
    cl->refreshed_ms = sd_now_ms();
    cl->refresh_wanted = 0;
    for (int i = 0; i < cl->map.nnodes + 16; i++) {
        int node;
        if (i < cl->map.nnodes) {
            node = i;
        } else {
            sd_redis_url seed;
            if (sd_redis__seed_url(&cl->url, i - cl->map.nnodes, &seed) != 0)
                break;
            node = sd_redis__slot_map_node(&cl->map, seed.host, seed.port);
            sd_redis_url_clear(&seed);
        }
        int err = 0;
        redisReply *reply = sd_redis_command(node_conn(cl, node), &err, "CLUSTER SLOTS");
        if (reply && reply->type == REDIS_REPLY_ARRAY) {
            sd_redis__slot_map_apply(&cl->map, reply, cl->map.node[node].host);
            freeReplyObject(reply);
            return 0;
        }
        if (reply)
            freeReplyObject(reply);
    }
    snprintf(cl->err, sizeof cl->err, "no node of the Redis Cluster answered CLUSTER SLOTS");
    return SD_EDISCONNECTED;
}

static void maybe_refresh(struct sd_redis__cluster *cl) {
    if (cl->refresh_wanted && sd_now_ms() >= cl->refreshed_ms + REFRESH_MIN_MS)
        refresh(cl);
}

static void sleep_ms(int ms) {
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* Sends one command to `node` and follows redirections (design, 4). */
static redisReply *run_at(struct sd_redis__cluster *cl, int *err, int node, int argc,
                          const char **argv, const size_t *lens) {
    uint64_t deadline = sd_now_ms() + (uint64_t)cl->timeout_ms;
    int asking = 0, hops = 0;
    for (;;) {
        sd_redis *conn = node_conn(cl, node);
        redisReply *reply;
        if (asking) {
            static const char *const ask[1] = {"ASKING"};
            static const size_t asklen[1] = {6};
            int rc = sd_redis_appendv(conn, 1, (const char **)ask, asklen);
            if (rc == 0)
                rc = sd_redis_appendv(conn, argc, argv, lens);
            reply = rc == 0 ? sd_redis_get_reply(conn, err) : NULL;
            if (rc != 0 && err)
                *err = rc;
            if (reply) {
                freeReplyObject(reply);
                reply = sd_redis_get_reply(conn, err);
            }
        } else {
            reply = sd_redis_commandv(conn, err, argc, argv, lens);
        }
        if (reply == NULL) {
            snprintf(cl->err, sizeof cl->err, "%s:%d: %s", cl->map.node[node].host,
                     cl->map.node[node].port, sd_redis_errstr(conn));
            cl->refresh_wanted = 1;
            return NULL;
        }
        char host[64];
        int slot, port;
        int kind = sd_redis__redirect_parse(reply, &slot, host, sizeof host, &port);
        if (kind == SD_REDIRECT_NONE || (kind != SD_REDIRECT_RETRY && hops++ == MAX_REDIRECTS))
            return reply;
        if (kind == SD_REDIRECT_RETRY) {
            /* Retried where it was answered, with ASKING again if it was sent with it: a
             * TRYAGAIN after ASKING comes from the importing node (redis_acluster.c). */
            if (sd_now_ms() + 10 >= deadline)
                return reply;
            freeReplyObject(reply);
            sleep_ms(10);
            continue;
        }
        freeReplyObject(reply);
        node = sd_redis__slot_map_node(&cl->map, host, port);
        asking = kind == SD_REDIRECT_ASK;
        if (kind == SD_REDIRECT_MOVED) {
            cl->map.slot[slot] = (short)node;
            cl->refresh_wanted = 1;
        }
    }
}

struct sd_redis__cluster *sd_redis__cluster_new(const sd_redis_url *url, const sd_redis_opts *opts,
                                                int timeout_ms) {
    struct sd_redis__cluster *cl = sd_xcalloc(1, sizeof *cl);
    sd_redis_url_copy(&cl->url, url);
    cl->opts = sd_redis__opts_resolve(opts);
    cl->timeout_ms = timeout_ms;
    for (int s = 0; s < SLOTS; s++)
        cl->map.slot[s] = -1;
    return cl;
}

int sd_redis__cluster_start(struct sd_redis__cluster *cl) {
    return refresh(cl);
}

void sd_redis__cluster_free(struct sd_redis__cluster *cl) {
    if (cl == NULL)
        return;
    for (int i = 0; i < SD_CLUSTER_MAX_NODES; i++)
        sd_redis_free(cl->conn[i]);
    for (size_t i = cl->pipe_head; i < cl->pipe_tail; i++)
        free(cl->pipe[i].cmd);
    free(cl->pipe);
    sd_redis_url_clear(&cl->url);
    sd_redis__opts_clear(&cl->opts);
    free(cl);
}

void sd_redis__cluster_set_timeout(struct sd_redis__cluster *cl, int timeout_ms) {
    cl->timeout_ms = timeout_ms;
}

const char *sd_redis__cluster_errstr(const struct sd_redis__cluster *cl) {
    return cl->err;
}

/* The node for a routed command: its slot's master, else any node (Redis redirects). */
static int route_node(struct sd_redis__cluster *cl, const struct sd_redis__route *route) {
    if (route->slot >= 0 && cl->map.slot[route->slot] >= 0)
        return cl->map.slot[route->slot];
    if (cl->map.nnodes == 0 && refresh(cl) != 0)
        return -1;
    return cl->map.slot[route->slot >= 0 ? route->slot : 0] >= 0
               ? cl->map.slot[route->slot >= 0 ? route->slot : 0]
               : 0;
}

redisReply *sd_redis__cluster_commandv(struct sd_redis__cluster *cl, int *err, int argc,
                                       const char **argv, const size_t *lens) {
    maybe_refresh(cl);
    struct sd_redis__route route;
    if (sd_redis__command_route(argc, argv, lens, &route) != 0) {
        char text[400];
        sd_redis__crossslot_text(text, sizeof text, argv, lens, &route);
        return sd_redis__error_reply(text);
    }
    int node = route_node(cl, &route);
    if (node < 0) {
        if (err)
            *err = SD_EDISCONNECTED;
        return NULL;
    }
    if (!route.all)
        return run_at(cl, err, node, argc, argv, lens);
    /* Every master: the first one's reply is returned, the others' checked for failure. */
    redisReply *first = NULL;
    int seen[SD_CLUSTER_MAX_NODES] = {0};
    for (int s = 0; s < SLOTS; s++) {
        int n = cl->map.slot[s];
        if (n < 0 || seen[n])
            continue;
        seen[n] = 1;
        int e = 0;
        redisReply *reply = run_at(cl, &e, n, argc, argv, lens);
        if (first == NULL && reply == NULL) {
            if (err)
                *err = e;
            return NULL;
        }
        if (first == NULL)
            first = reply;
        else if (reply)
            freeReplyObject(reply);
    }
    if (first == NULL && err)
        *err = SD_EDISCONNECTED; /* no master known: the map could not be read */
    return first;
}

/* Runs a formatted command (RESP, as redisFormatCommand makes it; cmd stays the caller's) with
 * its redirections: split into arguments, then sd_redis__cluster_commandv. */
static redisReply *run_formatted(struct sd_redis__cluster *cl, int *err, const char *cmd,
                                 size_t len) {
    int max = len > 1 ? atoi(cmd + 1) : 0; /* the argument count of "*N\r\n..." */
    max = max > 0 ? max : 1;
    const char **argv = sd_xmalloc((size_t)max * sizeof *argv);
    size_t *lens = sd_xmalloc((size_t)max * sizeof *lens);
    int argc = sd_redis__resp_argv(cmd, len, max, argv, lens);
    redisReply *reply = NULL;
    if (argc < 0) {
        if (err)
            *err = SD_EPARSE;
    } else {
        reply = sd_redis__cluster_commandv(cl, err, argc, argv, lens);
    }
    free(argv);
    free(lens);
    return reply;
}

redisReply *sd_redis__cluster_vcommand(struct sd_redis__cluster *cl, int *err, const char *fmt,
                                       va_list ap) {
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    if (len < 0) {
        if (err)
            *err = SD_EPARSE;
        return NULL;
    }
    redisReply *reply = run_formatted(cl, err, cmd, (size_t)len);
    free(cmd);
    return reply;
}

/* On a cluster, sd_redis_append only queues the command (formatted) and sd_redis_get_reply
 * runs the oldest queued one with its redirections: one round trip per command instead of a
 * pipeline, but in order and with the same answers. */
int sd_redis__cluster_append(struct sd_redis__cluster *cl, char *cmd, size_t len) {
    if (cl->pipe_tail == cl->pipe_cap) {
        if (cl->pipe_head > 0) {
            memmove(cl->pipe, cl->pipe + cl->pipe_head,
                    (cl->pipe_tail - cl->pipe_head) * sizeof *cl->pipe);
            cl->pipe_tail -= cl->pipe_head;
            cl->pipe_head = 0;
        }
        if (cl->pipe_tail == cl->pipe_cap) {
            cl->pipe_cap = cl->pipe_cap ? 2 * cl->pipe_cap : 16;
            cl->pipe = sd_xrealloc(cl->pipe, cl->pipe_cap * sizeof *cl->pipe);
        }
    }
    cl->pipe[cl->pipe_tail++] = (struct pipe_cmd){.node = -1, .cmd = cmd, .len = len};
    return 0;
}

redisReply *sd_redis__cluster_get_reply(struct sd_redis__cluster *cl, int *err) {
    if (cl->pipe_head == cl->pipe_tail) {
        if (err)
            *err = SD_EPARSE;
        return NULL;
    }
    struct pipe_cmd c = cl->pipe[cl->pipe_head++];
    redisReply *reply = run_formatted(cl, err, c.cmd, c.len);
    free(c.cmd);
    return reply;
}
