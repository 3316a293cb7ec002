/*
 * local_redis.h - the local durable Redis: one redis-server per user, shared by every command
 * whose state must outlive one process (a queue filled by `jobqueue enqueue` and drained by
 * `jobqueue work`, webhook endpoints, short links), used when no --redis URL / REDIS_URL is
 * given.
 *
 * The private redis-server of redis_server.h dies with its owner and takes its data along; that
 * is right for tests and benchmarks and wrong for a queue: `enqueue` in one command and `work`
 * in the next must see the same jobs, and a crash must not lose them. So this one is
 *
 *  - started on first use by whichever command needs it, as a daemon (redis-server
 *    --daemonize yes: it forks, calls setsid() and is re-parented away from the command, so
 *    neither the command's exit nor a Ctrl-C to its process group stops it);
 *  - durable: AOF on (appendonly yes), appendfsync everysec by default (SD_LOCAL_REDIS_APPENDFSYNC
 *    =always|everysec|no, or the options, choose another); no RDB snapshots. Redis write(2)s
 *    the AOF before it answers a write, so a SIGKILL of redis-server alone loses nothing it
 *    acknowledged; everysec fsyncs once a second, so a crash of the whole machine can lose about
 *    the last second (two at worst, when a slow disk makes Redis postpone a write);
 *    maxmemory-policy noeviction, so it never drops a key to make room;
 *  - reachable only by its user: a unix socket (no TCP port, --port 0) in the user's state
 *    directory, $XDG_STATE_HOME/sysdesign/ (default ~/.local/state/sysdesign/), which is
 *    created with mode 0700, the socket itself 0700; no password is needed or set;
 *  - found again by the next command: the socket answers PING;
 *  - started once even when several commands start at the same moment: the start is done under
 *    an exclusive flock() on redis.lock in the same directory, and whoever gets the lock asks
 *    PING again before starting anything;
 *  - stopped only by its own command (`./run.sh redis-stop`, `build/bin/sd-redis stop`), which
 *    sends SHUTDOWN (Redis fsyncs the AOF and exits) and waits for the process to end.
 *
 * Files in the state directory: redis.sock (the socket), redis.pid, redis.log, redis.lock and
 * appendonlydir/ (the AOF: a base file, incremental files and a manifest, Redis 7's layout).
 *
 * Every function here is synchronous and blocks (connects, waits for a start); call them from a
 * command's start-up, before its loop runs.
 */
#ifndef SD_LOCAL_REDIS_H
#define SD_LOCAL_REDIS_H

#include <stddef.h>
#include <sys/types.h>

#include "redis.h"

/* Options; a zero field keeps its default. NULL options mean all defaults. */
typedef struct sd_local_redis_opts {
    /* The state directory. NULL: $XDG_STATE_HOME/sysdesign when XDG_STATE_HOME is an absolute
     * path, else $HOME/.local/state/sysdesign. */
    const char *dir;
    /* "always", "everysec" or "no". NULL: SD_LOCAL_REDIS_APPENDFSYNC if set, else "everysec".
     * Applies when this call starts the server; a running server keeps what it started with. */
    const char *appendfsync;
    /* How long to wait for a server just started to answer PING (replaying a large AOF takes
     * time: LOADING counts as not yet). Default 30000. */
    int start_timeout_ms;
} sd_local_redis_opts;

/* Where the local durable Redis lives and whether it runs. */
typedef struct sd_local_redis_info {
    char dir[200];        /* the state directory */
    char socket[108];     /* dir/redis.sock (a unix socket path is at most 107 bytes) */
    char url[128];        /* unix:///.../redis.sock, for sd_redis_url_parse */
    pid_t pid;            /* the server's process id, 0 when it does not run */
    int started;          /* sd_local_redis_ensure: 1 when this call started it, 0 when it ran */
    char appendfsync[16]; /* the running server's policy ("" when it does not run) */
} sd_local_redis_info;

/*
 * Makes sure the local durable Redis runs and fills *out. Creates the state directory (0700)
 * when missing. Returns 0, or a negative code with one line on stderr saying why:
 * -ENAMETOOLONG (the socket path would pass 107 bytes: set XDG_STATE_HOME to a shorter path),
 * -errno (the directory or lock file cannot be made), SD_ETIMEDOUT (started but not answering
 * within start_timeout_ms: the tail of redis.log is printed), -ECHILD (redis-server refused its
 * configuration or is missing). Never stops a running server.
 */
int sd_local_redis_ensure(const sd_local_redis_opts *opts, sd_local_redis_info *out);

/* Fills *out without starting anything. Returns 0 when the server answers, -ESRCH when it does
 * not (out->pid is then 0), or -ENAMETOOLONG. */
int sd_local_redis_status(const sd_local_redis_opts *opts, sd_local_redis_info *out);

/*
 * Stops the local durable Redis: SHUTDOWN (which fsyncs the AOF), then waits for the process to
 * end (SIGKILL if it has not ended 10 s later, or at once if it holds the socket but does not
 * answer), then removes the socket and pid file. The data stays for the next start unless purge
 * is non-zero, in which case the AOF, the log, the lock file and the directory itself are
 * removed too. Takes the start lock, so it never races a start. Returns 0 when a server was
 * stopped, -ESRCH when none ran (purge still purges), or a negative code with a line on stderr.
 * out may be NULL; otherwise it tells the directory and the pid that was stopped.
 */
int sd_local_redis_stop(const sd_local_redis_opts *opts, int purge, sd_local_redis_info *out);

/*
 * The rule for every command whose state must outlive it: `flag_url` (from --redis) if given,
 * else REDIS_URL, else the local durable Redis (started when it does not run). Writes the URL
 * into *url (release it with sd_redis_url_clear) and prints one line on stderr naming the Redis
 * used, without a password:
 *   redis: using unix:///root/.local/state/sysdesign/redis.sock (the local durable Redis, pid
 *   123, already running; AOF appendfsync everysec; `./run.sh redis-stop` stops it)
 * Returns 0, SD_EPARSE (a bad URL, message printed) or sd_local_redis_ensure's error.
 * (sd_redis_resolve in redis.h is the rule for tests, benchmarks and one-shot commands: a
 * private throwaway server instead.)
 */
int sd_redis_resolve_durable(const char *flag_url, sd_redis_url *url);

/*
 * Refuses a Redis that may evict keys: reads maxmemory_policy from INFO memory (which works
 * where CONFIG is renamed or disabled) of the Redis at url, and of every master when it is a
 * cluster (CLUSTER SLOTS), each with a fresh connection (options: defaults). A job queue or a
 * link table on an evicting Redis loses data silently under memory pressure, so components that
 * keep durable state call this at start and exit with the message. Returns 0 when every node
 * says noeviction; SD_EREDIS with a message in err like
 *   "Redis 127.0.0.1:7001 has maxmemory-policy allkeys-lru: it may evict keys (jobs, links)
 *    under memory pressure; set maxmemory-policy noeviction"
 * or the connection's error (SD_ETIMEDOUT, SD_EDISCONNECTED, ...) with a message. err never
 * holds a password.
 */
int sd_redis_require_noeviction(const sd_redis_url *url, char *err, size_t errlen);

#endif
