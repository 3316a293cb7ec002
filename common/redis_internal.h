/*
 * redis_internal.h - what the files of the Redis layer share; private to common/redis*.c.
 *
 * The layer of redis.h is split by concern:
 *  - redis_url.c      URLs, the connection options and their defaults, the reconnect backoff;
 *  - redis_script.c   the script registry and the EVALSHA / EVAL argument list of a script call;
 *  - redis_sync.c     the synchronous connection;
 *  - redis_async.c    the asynchronous (libuv) connection, with its state machine and deadlines,
 *                     and the start of a hiredis async connection, which redis_sub.c uses too;
 *  - redis_resolve.c  which Redis to use (--redis, REDIS_URL or a private redis-server);
 *  - redis_slot.c     the Redis Cluster hash slot of a key;
 *  - redis_cluster.c  Redis Cluster: detection, the slot map, the key of a command, redirections,
 *                     and the router behind a synchronous connection in cluster mode.
 *
 * The functions one file calls in another carry the prefix sd_redis__ (two underscores), as
 * http_internal.h does: they are not part of redis.h and may change with the implementation.
 */
#ifndef SD_REDIS_INTERNAL_H
#define SD_REDIS_INTERNAL_H

#include <hiredis/async.h>

#include "redis.h"

/* The options with every unset (<= 0) field replaced by its default; opts may be NULL. The
 * result owns a copy of the scripts array (each script's SHA1 computed): release it with
 * sd_redis__opts_clear. */
sd_redis_opts sd_redis__opts_resolve(const sd_redis_opts *opts);
void sd_redis__opts_clear(sd_redis_opts *opts);

/* Next backoff step: doubles from min up to max. */
int sd_redis__backoff_next(int current, const sd_redis_opts *o);

/*
 * Starts a hiredis async connection to url (TCP or Unix socket) on loop, with ac->data = data
 * and the two callbacks set. Returns the context, or NULL with the reason in err (nothing is
 * left to free); the connect callback tells whether the connection came up.
 */
redisAsyncContext *sd_redis__async_open(uv_loop_t *loop, const sd_redis_url *url, void *data,
                                        redisConnectCallback *on_connect,
                                        redisDisconnectCallback *on_disconnect, char *err,
                                        size_t errlen);

/*
 * Gives up the context *ac (NULL: nothing to do): sets *ac to NULL, then frees the context, so
 * that the callbacks hiredis runs for it during the free (or, inside one of its callbacks, once
 * that returns) find the owner no longer holding it (redis_sub.c's invariant 3).
 */
void sd_redis__async_give_up(redisAsyncContext **ac);

/* Sets SIGPIPE to ignored unless the program chose a disposition of its own (see redis_sync.c). */
void sd_redis__ignore_sigpipe(void);

/* Whether a reply is Redis's NOSCRIPT error (the script is not in the server's cache). */
int sd_redis__is_noscript(const redisReply *reply);

/* The argv of "EVALSHA sha nkeys args..." (or "EVAL body nkeys args..."): small calls use the
 * arrays inside the struct, larger ones allocate (sd_redis__script_call_release frees them). */
struct sd_redis__script_call {
    const char *small[32];
    size_t smalllen[32];
    const char **argv;
    size_t *lens;
    int argc;
    char nkeys[16];
};

/* Fills *c with "EVALSHA sha nkeys argv..." (computing the script's SHA1 on first use). */
void sd_redis__script_call_init(struct sd_redis__script_call *c, sd_script *script, int nkeys,
                                int argc, const char **argv, const size_t *argvlen);

/* Turns the call into "EVAL body ...", for the retry after NOSCRIPT. */
void sd_redis__script_call_use_eval(struct sd_redis__script_call *c, const sd_script *script);

void sd_redis__script_call_release(struct sd_redis__script_call *c);

/* ---- Redis Cluster (redis_cluster.c) ----------------------------------------------------------
 */

/* A plain connection to one node of a cluster: never probed for cluster mode (redis_sync.c). */
sd_redis *sd_redis__new_node(const sd_redis_url *url, const sd_redis_opts *opts);

/* Where a command goes: the slot of its first key (-1: keyless, any node), whether it goes to
 * every master (SCRIPT LOAD), and, when its keys span slots, one key of another slot. */
struct sd_redis__route {
    int slot;
    int all;
    int first_key; /* index in argv, -1 when keyless */
    int cross_key; /* when the return is SD_EPARSE: a key in another slot, and that slot */
    int cross_slot;
};

/* Fills *route for argv. Returns 0, or SD_EPARSE when the keys are in several slots. */
int sd_redis__command_route(int argc, const char **argv, const size_t *lens,
                            struct sd_redis__route *route);

/* The text of the error for a cross-slot command (names two keys and their slots); logs it. */
void sd_redis__crossslot_text(char *buf, size_t len, const char **argv, const size_t *lens,
                              const struct sd_redis__route *route);

/* An error reply made here (freeReplyObject frees it). */
redisReply *sd_redis__error_reply(const char *text);

enum { SD_REDIRECT_NONE, SD_REDIRECT_MOVED, SD_REDIRECT_ASK, SD_REDIRECT_RETRY };

/* Classifies a reply: MOVED / ASK (with the slot and the node's host and port), TRYAGAIN or
 * CLUSTERDOWN (SD_REDIRECT_RETRY), or anything else (SD_REDIRECT_NONE). */
int sd_redis__redirect_parse(const redisReply *reply, int *slot, char *host, size_t hostlen,
                             int *port);

/* Formats argv as a RESP array of bulk strings into a new buffer (free()), NUL-terminated;
 * returns its length. lens may be NULL for NUL-terminated arguments (redis_async.c). */
size_t sd_redis__resp_format(char **out, int argc, const char **argv, const size_t *lens);

/* Splits a formatted command ("*N\r\n$L\r\n...") into at most max arguments pointing into
 * cmd. Returns the count or -1. */
int sd_redis__resp_argv(const char *cmd, size_t len, int max, const char **argv, size_t *lens);

/* INFO cluster on a connected context: 1 when cluster_enabled:1, 0 when not, -1 on failure. */
int sd_redis__cluster_probe(redisContext *c);

/* Seed i of a URL (0: host and port, then the seeds list) as a URL of its own with the same
 * credentials. Returns 0, or -1 when there is no seed i. */
int sd_redis__seed_url(const sd_redis_url *url, int i, sd_redis_url *out);

/* url (credentials, database, options) pointed at host:port, without its seeds list: a URL of
 * one node. out is owned by the caller (sd_redis_url_clear). */
void sd_redis__url_at(const sd_redis_url *url, const char *host, int port, sd_redis_url *out);

#define SD_CLUSTER_MAX_NODES 64

/* The slot map: the master of each slot, as an index into node[] (-1: unknown). */
struct sd_redis__slot_map {
    short slot[16384];
    int nnodes;
    struct {
        char host[64];
        int port;
    } node[SD_CLUSTER_MAX_NODES];
};

/* The index of host:port in the map, added when new. */
int sd_redis__slot_map_node(struct sd_redis__slot_map *m, const char *host, int port);

/* Applies a CLUSTER SLOTS reply (asked of a node at asked_host) to the map. */
void sd_redis__slot_map_apply(struct sd_redis__slot_map *m, const redisReply *slots,
                              const char *asked_host);

/* The router behind a synchronous connection in cluster mode (see redis_cluster.c). */
struct sd_redis__cluster;
struct sd_redis__cluster *sd_redis__cluster_new(const sd_redis_url *url, const sd_redis_opts *opts,
                                                int timeout_ms);
int sd_redis__cluster_start(struct sd_redis__cluster *cl); /* reads the map; 0 or an error */
void sd_redis__cluster_free(struct sd_redis__cluster *cl);
void sd_redis__cluster_set_timeout(struct sd_redis__cluster *cl, int timeout_ms);
const char *sd_redis__cluster_errstr(const struct sd_redis__cluster *cl);
redisReply *sd_redis__cluster_commandv(struct sd_redis__cluster *cl, int *err, int argc,
                                       const char **argv, const size_t *lens);
redisReply *sd_redis__cluster_vcommand(struct sd_redis__cluster *cl, int *err, const char *fmt,
                                       va_list ap);
/* Takes ownership of cmd (a formatted command, freed with free()). */
int sd_redis__cluster_append(struct sd_redis__cluster *cl, char *cmd, size_t len);
redisReply *sd_redis__cluster_get_reply(struct sd_redis__cluster *cl, int *err);

/* The router behind an asynchronous connection in cluster mode (redis_acluster.c). */
struct sd_redis__acluster;
/* A router for owner, from the CLUSTER SLOTS reply `slots` given by a node at asked_host (the
 * owner's probe, redis_async.c); opens a connection to every master. */
struct sd_redis__acluster *sd_redis__acluster_new(sd_aredis *owner, uv_loop_t *loop,
                                                  const sd_redis_url *url,
                                                  const sd_redis_opts *opts,
                                                  const redisReply *slots, const char *asked_host);
int sd_redis__acluster_up(const struct sd_redis__acluster *cl);
size_t sd_redis__acluster_pending(const struct sd_redis__acluster *cl);
void sd_redis__acluster_flush(struct sd_redis__acluster *cl);
void sd_redis__acluster_read(struct sd_redis__acluster *cl);
/* Whether r was closed (sd_aredis_free): its struct lives on until its timers are closed. */
int sd_redis__aredis_closed(const sd_aredis *r);
/* The slot a command goes to (-1: keyless), or SD_EPARSE when its keys span slots (the error
 * naming them is logged). */
int sd_redis__acluster_slot(int argc, const char **argv, const size_t *lens);
/* Sends a command formatted by the caller (for a script: the EVALSHA call) to the master of
 * slot (-1: any); takes ownership of cmd, whatever it returns. */
int sd_redis__acluster_send_formatted(struct sd_redis__acluster *cl, sd_aredis_cb *cb,
                                      void *privdata, int timeout_ms, sd_script *script, char *cmd,
                                      size_t len, int slot);
/* script == NULL: a command (argv); else a script call (argv: keys, then arguments). */
int sd_redis__acluster_send(struct sd_redis__acluster *cl, sd_aredis_cb *cb, void *privdata,
                            int timeout_ms, sd_script *script, int nkeys, int argc,
                            const char **argv, const size_t *lens);
void sd_redis__acluster_free(struct sd_redis__acluster *cl);

/* An async connection to one node of a cluster: never probed (redis_async.c). */
sd_aredis *sd_aredis__new_node(uv_loop_t *loop, const sd_redis_url *url, const sd_redis_opts *opts);
/* Sends a formatted command on a node's connection (send_formatted), borrowing cmd: for a
 * script, cmd must stay valid until the callback runs (it is re-sent as EVAL after NOSCRIPT). */
int sd_aredis__send_formatted(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms,
                              const char *cmd, size_t len, sd_script *script);
/* Runs the owner's state callback. */
void sd_aredis__report_state(sd_aredis *r, int connected);

/* Shared by the private launchers (redis_server.c, redis_cluster_server.c). */
/* Sleeps ms milliseconds, resuming after a signal. */
void sd_redis__sleep_ms(int ms);

#endif
