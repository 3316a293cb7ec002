/*
 * redis_server.h - start and stop a private redis-server (the "embedded Redis").
 *
 * When no --redis URL / REDIS_URL is given, commands, tests and benchmarks start their own
 * redis-server on a free 127.0.0.1 port in a fresh temporary directory, wait until it answers
 * PING and its log says it listens (so it is this server, not another on the port), and stop
 * it and remove the directory when they are done. A small janitor process, forked beside the
 * server, does the same cleanup if the owner dies without stopping it (even by SIGKILL): it
 * waits for the owner's end of a pipe to close. So no run leaves an orphaned redis-server or
 * its files behind.
 *
 * The directory is $TMPDIR/sd-redis-XXXXXX, or sd-redis-<tag>-XXXXXX when SD_TEST_RUN_ID holds a
 * tag (1 to 16 letters, digits or '_'): `run.sh test` sets one, and counts as its leftovers only
 * the servers whose working directory (the server's --dir) carries it.
 */
#ifndef SD_REDIS_SERVER_H
#define SD_REDIS_SERVER_H

#include <sys/types.h>

typedef struct sd_redis_server sd_redis_server;

typedef struct sd_redis_server_opts {
    /* NULL: no persistence (the default). "always", "everysec" or "no": AOF on, with that
     * appendfsync policy. */
    const char *appendfsync;
    /* Extra "--name value" arguments for redis-server, NULL-terminated list, or NULL. Not
     * --logfile, nor a --loglevel above notice: the start reads the log. */
    const char *const *extra_args;
    /* Milliseconds to wait for PING to answer (default 5000). */
    int start_timeout_ms;
} sd_redis_server_opts;

/*
 * Starts a redis-server (found on PATH, or REDIS_SERVER_BIN) and waits until it answers PING and
 * its log says it listens.
 * opts may be NULL. Returns 0 and the handle in *out, or a negative code with a message on
 * stderr (redis-server missing, did not answer in time).
 */
int sd_redis_server_start(const sd_redis_server_opts *opts, sd_redis_server **out);

/* "redis://127.0.0.1:PORT" of the running server (valid until stop). */
const char *sd_redis_server_url(const sd_redis_server *s);
int sd_redis_server_port(const sd_redis_server *s);
/* Process id of the current redis-server process (changes on restart). */
pid_t sd_redis_server_pid(const sd_redis_server *s);
/* The server's working directory (holds the AOF when persistence is on). */
const char *sd_redis_server_dir(const sd_redis_server *s);

/*
 * Stops the server (SIGTERM, then SIGKILL after 5 s), waits for it, without removing the
 * directory, so that sd_redis_server_restart() can start it again on the same port with the
 * same data. Returns 0 or -errno. Used by fault tests.
 */
int sd_redis_server_halt(sd_redis_server *s);

/* Sends signal `sig` to the server process (e.g. SIGKILL for a crash, SIGSTOP/SIGCONT to freeze
 * it). Returns 0 or -errno. After SIGKILL, call sd_redis_server_halt() to reap it. */
int sd_redis_server_signal(sd_redis_server *s, int sig);

/* Starts the server again on the same port and directory after halt (or a crash). Returns 0 or
 * a negative code. */
int sd_redis_server_restart(sd_redis_server *s);

/* Stops the server, removes its directory, reaps the janitor and frees the handle. NULL is a
 * no-op. Returns 0 or -errno of the first failure (the handle is freed regardless). */
int sd_redis_server_stop(sd_redis_server *s);

#endif
