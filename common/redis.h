/*
 * redis.h - the Redis layer every component uses: URL parsing, a synchronous connection, an
 * asynchronous (libuv) connection with per-command deadlines, and a registry of Lua scripts.
 *
 * Design
 *  1. Every call has a deadline. The sync connection sets a socket timeout on each command. The
 *     async connection keeps its pending commands in send order and one uv_timer armed for the
 *     earliest deadline; a command whose deadline passes is answered SD_ETIMEDOUT at once, and its
 *     late reply, if one ever arrives, is dropped. hiredis 0.14 has no async timeouts of its own.
 *     Every function here takes its time limit as relative milliseconds (timeout_ms, where 0
 *     means the connection's default); inside, a command keeps an absolute sd_now_ns() deadline.
 *  2. Both connections reconnect by themselves with capped exponential backoff. While a
 *     connection is down, a command fails at once with SD_EDISCONNECTED instead of waiting, so a
 *     caller's decision time stays bounded when Redis is down.
 *  3. AUTH, SELECT and the SCRIPT LOADs are sent on every (re)connect, before any user command.
 *  4. Scripts are embedded into the binary at build time (sd_embed_lua() in CMake) and called with
 *     EVALSHA. The scripts a connection is given (sd_redis_opts.scripts) are loaded on every
 *     (re)connect, before it counts as up; a NOSCRIPT reply all the same (SCRIPT FLUSH while
 *     connected, or a script not given) is answered by sending the call once more with EVAL,
 *     which both runs the script and loads it back into the script cache.
 *
 * Redis Cluster: both connections also work on a cluster, behind the same functions. A URL
 * with several seeds (redis://h:p,h:p) is a cluster; a single-node URL is asked on connect (the
 * sync connection: INFO cluster; the async one: CLUSTER SLOTS, inside its connect handshake).
 * Commands go to the master of their first key's slot (EVAL/EVALSHA: argv[3] when numkeys > 0),
 * MOVED / ASK / TRYAGAIN are followed within the command's deadline, every master's connection
 * loads the scripts. Keys of several slots in one command are refused before sending: the sync
 * call returns an error reply naming two of the keys, the async call returns SD_EPARSE (its
 * callback never runs). See common/README.md ("Redis Cluster behind the same connections").
 *
 * Secrets: the password in a URL is kept for AUTH and never appears in a log line or an error
 * message; sd_redis_url_format() leaves it out.
 */
#ifndef SD_REDIS_H
#define SD_REDIS_H

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stddef.h>
#include <uv.h>

/* ---- URLs ---------------------------------------------------------------------------------- */

/* A parsed redis:// or unix:// URL. */
typedef struct sd_redis_url {
    char *host;     /* NULL for a unix socket */
    int port;       /* 6379 when the URL has none */
    char *seeds;    /* Redis Cluster seeds after the first, "host:port,..." (checked), or NULL */
    char *path;     /* unix socket path, or NULL */
    char *user;     /* NULL when absent */
    char *password; /* NULL when absent; never log it */
    int db;         /* 0 when absent */
} sd_redis_url;

/*
 * Parses `redis://[[user]:password@]host[:port][/db]` or `unix:///path/to.sock[?db=N]`.
 * A Redis Cluster may be named by several seeds, `redis://host:port,host:port,...`: the first
 * goes to host and port, the others to seeds (a connection tries them in turn).
 * IPv6 hosts are written in brackets (`redis://[::1]:6379`). Percent-escapes in the user and
 * password are decoded. On success returns 0 and fills *out (release it with sd_redis_url_clear).
 * On a bad form returns SD_EPARSE and writes a message naming what is wrong into err (which never
 * contains the password).
 */
int sd_redis_url_parse(const char *text, sd_redis_url *out, char *err, size_t errlen);

/* Frees the strings inside *url and zeroes it. Safe on a zeroed struct. */
void sd_redis_url_clear(sd_redis_url *url);

/* Deep copy: *dst must not own strings yet. */
void sd_redis_url_copy(sd_redis_url *dst, const sd_redis_url *src);

/* Writes the URL without its password (`redis://user:***@host:port/db`) into buf.
 * Returns buf. Use this wherever a URL is printed. */
const char *sd_redis_url_format(const sd_redis_url *url, char *buf, size_t buflen);

/* ---- Scripts -------------------------------------------------------------------------------- */

/* One Lua script. Define it statically from the embedded source; the SHA1 is computed on
 * first use. Scripts are immutable after that and may be shared by any number of connections
 * and threads once sd_script_init() has run. */
typedef struct sd_script {
    const char *name; /* for logs and errors, e.g. "ratelimit/token-bucket" */
    const char *body; /* the Lua source (NUL-terminated) */
    size_t len;
    char sha[41]; /* hex SHA1 of body, filled by sd_script_init() */
} sd_script;

/* Computes script->sha. Idempotent. Call before sharing a script across threads. */
void sd_script_init(sd_script *script);

/* ---- Options shared by both connection kinds ------------------------------------------------ */

typedef struct sd_redis_opts {
    int connect_timeout_ms; /* default 1000 */
    int command_timeout_ms; /* default 1000; the default deadline for commands */
    int reconnect_min_ms;   /* first backoff step, default 50 */
    int reconnect_max_ms;   /* backoff cap, default 2000 */
    /* Scripts loaded (SCRIPT LOAD) in every connect handshake, after AUTH and SELECT and before
     * the connection counts as up, so that the first call after a start or a Redis restart is
     * answered by EVALSHA, without a NOSCRIPT round trip. Default none. The connection copies
     * the array; the scripts themselves are borrowed and must outlive it (they are usually
     * static). A SCRIPT LOAD that Redis refuses is logged and does not fail the connect: the
     * call then fails as EVAL would. */
    sd_script *const *scripts;
    size_t nscripts;
} sd_redis_opts;

/* Fills *opts with the defaults above. A NULL opts argument anywhere means these defaults. */
void sd_redis_opts_default(sd_redis_opts *opts);

/* ---- Synchronous connection ---------------------------------------------------------------- */

/* Both kinds of connection set SIGPIPE to ignored when they are created, unless the program has
 * set a disposition of its own: a write to a connection Redis has closed must fail with EPIPE,
 * not kill the process. */

typedef struct sd_redis sd_redis;

/*
 * Connects (with the connect timeout), sends AUTH and SELECT as the URL asks, loads the scripts
 * of opts, and returns the connection in *out. Returns 0, SD_ETIMEDOUT, SD_EDISCONNECTED (refused /
 * unreachable) or SD_EREDIS (AUTH or SELECT failed); *out is untouched on failure. The URL is
 * copied.
 */
int sd_redis_connect(const sd_redis_url *url, const sd_redis_opts *opts, sd_redis **out);

/*
 * Like sd_redis_connect, but a Redis that is down is not an error: the handle is returned anyway
 * and reconnects inside later calls, after the same backoff. For long-lived users that must come
 * up before Redis does. Never returns NULL.
 */
sd_redis *sd_redis_new(const sd_redis_url *url, const sd_redis_opts *opts);

/* Closes the connection and frees it. NULL is a no-op. */
void sd_redis_free(sd_redis *r);

/*
 * Runs one command (printf-style as redisCommand, or argv form) within the command timeout.
 * Returns the reply (free it with freeReplyObject) or NULL; on NULL, *err (if not NULL) holds
 * SD_ETIMEDOUT or SD_EDISCONNECTED. An error *reply* from Redis is returned as a reply of type
 * REDIS_REPLY_ERROR, not as NULL. If the connection is broken, the call first reconnects (with
 * the smaller of the connect and the command timeout), unless the backoff since the last failed
 * attempt has not passed yet, in which case it fails at once with SD_EDISCONNECTED.
 */
redisReply *sd_redis_command(sd_redis *r, int *err, const char *fmt, ...);
redisReply *sd_redis_vcommand(sd_redis *r, int *err, const char *fmt, va_list ap);
redisReply *sd_redis_commandv(sd_redis *r, int *err, int argc, const char **argv,
                              const size_t *argvlen);

/*
 * Runs a script: EVALSHA, and on NOSCRIPT once more with EVAL. argv holds the keys first
 * (nkeys of them), then the arguments. Same return contract as sd_redis_command.
 *
 * timeout_ms (0 = the connection's command timeout) bounds both steps together: the call keeps
 * an absolute deadline, each step gets the whole milliseconds left as its timeout, so a slow
 * EVALSHA leaves less for the EVAL, and with less than one left the step is not sent
 * (*err = SD_ETIMEDOUT). The connection's own timeout is restored after.
 */
redisReply *sd_redis_script(sd_redis *r, int *err, int timeout_ms, sd_script *script, int nkeys,
                            int argc, const char **argv, const size_t *argvlen);

/* Pipelining: append commands, then read their replies in order with sd_redis_get_reply.
 * Returns 0 or a negative code; a failed append leaves the pipeline unusable until the next
 * sd_redis_command (which reconnects). */
int sd_redis_append(sd_redis *r, const char *fmt, ...);
int sd_redis_appendv(sd_redis *r, int argc, const char **argv, const size_t *argvlen);
redisReply *sd_redis_get_reply(sd_redis *r, int *err);

/* Changes the command timeout of this connection (milliseconds, > 0). */
void sd_redis_set_timeout(sd_redis *r, int timeout_ms);

/* The last error text of the connection (never contains the password). */
const char *sd_redis_errstr(const sd_redis *r);

/* ---- Asynchronous connection (libuv) ------------------------------------------------------- */

typedef struct sd_aredis sd_aredis;

/*
 * Called exactly once per accepted command. status is 0 with a reply (which may be of type
 * REDIS_REPLY_ERROR), or SD_ETIMEDOUT / SD_EDISCONNECTED / SD_ECLOSED with reply == NULL.
 * The reply is valid only during the callback: copy what you keep.
 */
typedef void sd_aredis_cb(sd_aredis *r, redisReply *reply, int status, void *privdata);

/* Called when the connection state changes: connected != 0 after a successful (re)connect and
 * its handshake (AUTH, SELECT, SCRIPT LOAD), 0 when it goes down. */
typedef void sd_aredis_state_cb(sd_aredis *r, int connected, void *privdata);

/*
 * Creates an async connection on `loop` and starts connecting. Returns 0 and the connection in
 * *out, or a negative code (bad URL fields). Connecting happens in the background: commands sent
 * before the connection is up fail with SD_EDISCONNECTED, so callers that need it wait for the
 * state callback or use sd_aredis_wait_connected(). The URL is copied.
 */
int sd_aredis_new(uv_loop_t *loop, const sd_redis_url *url, const sd_redis_opts *opts,
                  sd_aredis **out);

/* Sets the state callback (may be NULL). */
void sd_aredis_set_state_cb(sd_aredis *r, sd_aredis_state_cb *cb, void *privdata);

/* Runs the loop until the connection is up or timeout_ms passes. Returns 0 or SD_ETIMEDOUT.
 * For start-up code and tests only: it runs the whole loop. */
int sd_aredis_wait_connected(sd_aredis *r, int timeout_ms);

/* Non-zero while the connection is up (connected and authenticated). */
int sd_aredis_is_connected(const sd_aredis *r);

/* Non-zero when the connection routes to a Redis Cluster (decided in sd_aredis_new, before it
 * returns, and fixed for the connection's life): a caller that sends commands of several keys
 * then groups them by sd_redis_key_slot(). */
int sd_aredis_is_cluster(const sd_aredis *r);

/*
 * Sends one command with a deadline of timeout_ms (0 = the connection's default). Returns 0 when
 * accepted: the callback then runs exactly once, later, never from inside this call. Returns
 * SD_EDISCONNECTED or SD_ECLOSED when not accepted: the callback never runs.
 */
int sd_aredis_command(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms,
                      const char *fmt, ...);
int sd_aredis_commandv(sd_aredis *r, sd_aredis_cb *cb, void *privdata, int timeout_ms, int argc,
                       const char **argv, const size_t *argvlen);

/* Runs a script asynchronously: EVALSHA, and on NOSCRIPT once more with EVAL (within the same
 * deadline). Same contract as sd_aredis_command. */
int sd_aredis_script(sd_aredis *r, sd_script *script, sd_aredis_cb *cb, void *privdata,
                     int timeout_ms, int nkeys, int argc, const char **argv, const size_t *argvlen);

/*
 * Writes the commands accepted so far to the socket now. Without it they are written when the
 * loop next polls: hiredis's libuv adapter asks for a writable event and writes from its
 * callback, which costs a loop iteration and two epoll_ctl calls per send. A caller that sends
 * its commands from a loop callback (a batcher at the end of an iteration) calls this once after
 * the last one. A failed write closes the connection as it would from the loop, so callbacks may
 * run inside this call: call it last, touching nothing they may have freed afterwards, and never
 * from inside one of this connection's reply callbacks (hiredis frees a failed connection at
 * once unless it is inside its own callback). NULL is a no-op.
 */
void sd_aredis_flush(sd_aredis *r);

/*
 * Reads the replies that have already arrived and runs their callbacks, without waiting. libuv
 * runs a loop iteration's timers before it polls for input, so after the loop was held up (a
 * slow callback, a loaded machine) a timer that gives up on a reply would run while the reply
 * sits unread in the socket: call this first, and a reply that came in time is not taken for a
 * late one. Callbacks run inside this call (the same rules as sd_aredis_flush); a closed
 * connection is found as from the loop. The connection's own deadlines do this already. NULL
 * is a no-op.
 */
void sd_aredis_read(sd_aredis *r);

/* Number of commands sent and not yet answered or expired. */
size_t sd_aredis_pending(const sd_aredis *r);

/*
 * Closes the connection: every pending command's callback runs with SD_ECLOSED (from inside
 * this call), no new command is accepted, and the memory is freed once libuv has closed the
 * handles (run the loop afterwards). NULL is a no-op.
 */
void sd_aredis_free(sd_aredis *r);

/* ---- Redis Cluster ----------------------------------------------------------------------------
 */

/*
 * The Redis Cluster hash slot of a key (0 to 16383): CRC16 (XMODEM) of the key modulo 16384, or
 * of its hash tag when it has one, the bytes between its first '{' and the first '}' after it if
 * there are any ("{user1000}.following" and "{user1000}.followers" share a slot; "foo{}{bar}"
 * hashes whole). Keys are binary: len bytes of key.
 */
int sd_redis_key_slot(const char *key, size_t len);

/* ---- Choosing a Redis ----------------------------------------------------------------------- */

struct sd_redis_server;

/*
 * The rule every command, test and benchmark follows: use `flag_url` (from --redis) if given,
 * else the REDIS_URL environment variable, else start a private redis-server (see
 * redis_server.h) whose handle is stored in *server_out (stop it with sd_redis_server_stop at
 * exit). Writes the chosen URL into *url and prints one line naming it to stderr (password
 * hidden). Returns 0, SD_EPARSE (bad URL, message printed) or the launcher's error.
 */
int sd_redis_resolve(const char *flag_url, sd_redis_url *url, struct sd_redis_server **server_out);

#endif
