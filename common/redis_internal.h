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
 *  - redis_slot.c     the Redis Cluster hash slot of a key.
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

#endif
