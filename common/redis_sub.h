/*
 * redis_sub.h - a Redis pub/sub subscriber: one connection in subscribe mode that delivers
 * messages to a callback, resubscribes by itself after every reconnect, and tells its owner each
 * time it goes down and comes back up.
 *
 * Why a connection of its own. hiredis 0.14 speaks RESP2, where a connection that has sent
 * SUBSCRIBE accepts only (P)SUBSCRIBE, (P)UNSUBSCRIBE, PING and QUIT until it unsubscribes from
 * everything. Commands therefore go over an sd_aredis (redis.h) and messages come in here.
 *
 * Why the down/up notifications matter. A subscriber misses every message published while its
 * connection is down, and Redis keeps no backlog for it. An owner that derives local state from
 * messages (a cache dropping entries on invalidation messages) must treat "down" as "I may have
 * missed something": a cache drops its whole local tier on down, and refills from Redis after
 * up. A client that does not do this serves stale values forever, the known failure of
 * client-side caching (redis/redis#11767).
 *
 * What "up" promises. The state callback reports up (1) only once the connection is
 * established, AUTH (if any) accepted and EVERY subscription the owner asked for confirmed by
 * Redis. So every message published after the owner saw up, on a channel it had subscribed to
 * before, is delivered unless the connection goes down again first, which the owner then hears
 * about. Up and down alternate strictly, starting with up: 1, 0, 1, 0, ...
 *
 * SUBSCRIBE, not SSUBSCRIBE. On Redis 7 Cluster a connection that SUBSCRIBEd on any node receives
 * every PUBLISH of the whole cluster (PUBLISH is broadcast over the cluster bus), while
 * SSUBSCRIBE / SPUBLISH (sharded pub/sub) deliver only within the shard that owns the channel's
 * slot, so a sharded subscriber needs one connection per shard and must follow slot migrations.
 * For invalidation fan-out, plain SUBSCRIBE on one node is what this project uses today; cluster
 * routing comes later.
 *
 * AUTH and SELECT. The URL's user and password are sent with AUTH on every connect. The URL's
 * database is ignored: pub/sub channels are global to the server and do not belong to a
 * database (a PUBLISH from a client on db 3 reaches a subscriber on db 0), so SELECT would change
 * nothing. (Keyspace notifications carry the database in the channel name instead:
 * `__keyspace@3__:key`.)
 *
 * Detecting a silent connection. A subscriber sends no commands, so nothing would time out when
 * Redis is frozen or the network drops without a reset. The subscriber therefore sends PING
 * every ping_interval_ms while up; in subscribe mode RESP2 answers it with the array
 * ["pong", <argument>]. If no answer comes within ping_timeout_ms (and nothing else arrived
 * meanwhile either), the connection is given up and reconnected.
 */
#ifndef SD_REDIS_SUB_H
#define SD_REDIS_SUB_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "redis.h"

typedef struct sd_redis_sub sd_redis_sub;

typedef struct sd_redis_sub_opts {
    /* connect_timeout_ms bounds a connect together with its AUTH and subscribe confirmations;
     * reconnect_min_ms / reconnect_max_ms are the backoff; command_timeout_ms is not used. */
    sd_redis_opts redis;
    int ping_interval_ms; /* time between PINGs while up, default 1000 */
    int ping_timeout_ms;  /* how long a PING may go unanswered, default 1000 */
} sd_redis_sub_opts;

/* Fills *opts with the defaults (those of sd_redis_opts_default plus the ping defaults above).
 * A NULL opts argument means these defaults; a field <= 0 means its default. */
void sd_redis_sub_opts_default(sd_redis_sub_opts *opts);

/*
 * One message. `channel` is the channel it was published on; `pattern` is the pattern that
 * matched it for a PSUBSCRIBE, NULL for a SUBSCRIBE. Both are NUL-terminated. The payload is
 * binary-safe (it may hold NUL bytes, CR LF, anything): use len, not strlen. Everything is valid
 * only during the callback: copy what you keep. Messages arrive in the order Redis sent them.
 */
typedef void sd_redis_sub_message_cb(sd_redis_sub *sub, const char *channel, const char *pattern,
                                     const char *payload, size_t len, void *udata);

/* The connection came up (connected = 1: every subscription is confirmed) or went down
 * (connected = 0). Runs on every transition, from the loop, never from inside an sd_redis_sub
 * call. The owner may call any sd_redis_sub function from it, including sd_redis_sub_free. */
typedef void sd_redis_sub_state_cb(sd_redis_sub *sub, int connected, void *udata);

/*
 * Creates a subscriber on `loop` and starts connecting in the background. Returns 0 and the
 * subscriber in *out, or -EINVAL when the URL has neither or both of a host and a path (*out is
 * untouched). The URL and options are copied. Sets SIGPIPE to ignored as redis.h describes.
 */
int sd_redis_sub_new(uv_loop_t *loop, const sd_redis_url *url, const sd_redis_sub_opts *opts,
                     sd_redis_sub **out);

/* Sets the callbacks and the udata both receive. Call it before running the loop; either may
 * be NULL (messages or state changes are then not reported). */
void sd_redis_sub_set_callbacks(sd_redis_sub *sub, sd_redis_sub_message_cb *on_message,
                                sd_redis_sub_state_cb *on_state, void *udata);

/*
 * Adds a channel (SUBSCRIBE) or a glob pattern (PSUBSCRIBE) to the subscriber's set. The set is
 * subscribed again on every reconnect. Returns 0 (also when it is already in the set: nothing
 * changes), -EINVAL for a NULL name or the reserved pattern below, or SD_ECLOSED when called
 * after sd_redis_sub_free (from inside a callback). Never runs a callback.
 *
 * While down, the subscription is sent on the next connect and the next up covers it. While
 * up, SUBSCRIBE is sent now and the state stays up (nothing was missed on the other channels);
 * the new channel is in force once Redis confirms it, which sd_redis_sub_unconfirmed() shows.
 */
int sd_redis_sub_subscribe(sd_redis_sub *sub, const char *channel);
int sd_redis_sub_psubscribe(sd_redis_sub *sub, const char *pattern);

/*
 * Removes a channel (or a pattern) from the set; UNSUBSCRIBE (PUNSUBSCRIBE) is sent if
 * connected. No message for it is delivered after this call, even one already on its way.
 * Returns 0, -ENOENT when it was not in the set, -EINVAL for a NULL name, or SD_ECLOSED after
 * sd_redis_sub_free. Never runs a callback.
 */
int sd_redis_sub_unsubscribe(sd_redis_sub *sub, const char *channel);
int sd_redis_sub_punsubscribe(sd_redis_sub *sub, const char *pattern);

/* Non-zero while up (the state callback's last word was 1). */
int sd_redis_sub_is_up(const sd_redis_sub *sub);

/* How many subscriptions in the set Redis has not confirmed on the current connection (all of
 * them while down). */
size_t sd_redis_sub_unconfirmed(const sd_redis_sub *sub);

/* Counters since sd_redis_sub_new, for metrics and tests. */
typedef struct sd_redis_sub_stats {
    uint64_t messages; /* delivered to the message callback */
    uint64_t pongs;    /* PINGs answered */
    uint64_t ups, downs;
} sd_redis_sub_stats;
void sd_redis_sub_stats_get(const sd_redis_sub *sub, sd_redis_sub_stats *out);

/*
 * Closes the connection and frees the subscriber once libuv has closed its handles (run the
 * loop afterwards). No callback runs after this call, not even a final down. May be called from
 * inside the subscriber's own callbacks. NULL is a no-op.
 */
void sd_redis_sub_free(sd_redis_sub *sub);

/* The pattern the subscriber uses internally to receive PING answers (see redis_sub.c); it
 * cannot be PSUBSCRIBEd by the owner. */
#define SD_REDIS_SUB_PING_PATTERN "__sd_redis_sub:ping"

#endif
