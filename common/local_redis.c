/*
 * local_redis.c - the local durable Redis (see local_redis.h for what it is and why).
 *
 * Life of the server, and which function moves it
 *
 *               sd_local_redis_ensure                    sd_local_redis_stop
 *   [absent] ────(under the lock)────> [running] ───────(SHUTDOWN)──────> [absent]
 *      ^                                   │                                 ^
 *      │                                   │ SIGKILL, OOM killer, reboot     │
 *      │                                   v                                 │
 *      └──────sd_local_redis_ensure──── [dead: stale socket, AOF kept] ──────┘
 *                (AOF replayed)                     sd_local_redis_stop (cleans up)
 *
 * Invariants
 *  1. At most one server per state directory. Every start happens while holding an exclusive
 *     flock() on dir/redis.lock, and the holder asks the socket for PING again before starting,
 *     so a command that waited for the lock finds the server its neighbour started. The lock is
 *     released by the kernel when its holder dies, so a crashed start blocks nobody.
 *  2. A server that holds the socket but does not answer (SIGSTOPped, swapping) is never
 *     replaced: two servers appending to one AOF would corrupt it. ensure refuses with a message
 *     instead, and stop kills it.
 *  3. The server outlives the command: it is a daemon (its own session, re-parented), it
 *     inherits no descriptor of the command but stderr, and Redis points that at /dev/null once
 *     daemonized, so a command's caller reading its stderr to EOF is not held open either.
 *  4. Nothing here trusts a pid file alone: a pid is acted on only when its command line names
 *     redis-server and this directory's socket, since pids are reused.
 */
#include "local_redis.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "redis_internal.h"
#include "sd.h"

#define START_TIMEOUT_MS 30000
#define STOP_TIMEOUT_MS 10000
#define PROBE_TIMEOUT_MS 2000

/* ---- Where it lives ------------------------------------------------------------------------ */

/* The state directory of opts: opts->dir, $XDG_STATE_HOME/sysdesign (only an absolute path
 * counts, as the XDG Base Directory Specification says), else $HOME/.local/state/sysdesign. */
static int state_dir(const sd_local_redis_opts *opts, char *buf, size_t len) {
    int n;
    const char *xdg = getenv("XDG_STATE_HOME");
    if (opts && opts->dir && *opts->dir) {
        n = snprintf(buf, len, "%s", opts->dir);
    } else if (xdg && xdg[0] == '/') {
        n = snprintf(buf, len, "%s/sysdesign", xdg);
    } else {
        const char *home = getenv("HOME");
        if (!home || home[0] != '/') {
            struct passwd *pw = getpwuid(getuid());
            home = pw ? pw->pw_dir : NULL;
        }
        if (!home)
            return -ENOENT;
        n = snprintf(buf, len, "%s/.local/state/sysdesign", home);
    }
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int fill_paths(const sd_local_redis_opts *opts, sd_local_redis_info *out) {
    memset(out, 0, sizeof *out);
    int rc = state_dir(opts, out->dir, sizeof out->dir);
    if (rc == 0) {
        int n = snprintf(out->socket, sizeof out->socket, "%s/redis.sock", out->dir);
        if (n < 0 || (size_t)n >= sizeof out->socket)
            rc = -ENAMETOOLONG;
        else
            snprintf(out->url, sizeof out->url, "unix://%s", out->socket);
    }
    if (rc == -ENAMETOOLONG)
        fprintf(stderr,
                "local redis: the socket path under '%s' would be longer than a unix socket "
                "allows (107 bytes): set XDG_STATE_HOME to a shorter directory\n",
                out->dir);
    else if (rc != 0)
        fprintf(stderr, "local redis: no state directory: neither XDG_STATE_HOME nor HOME is "
                        "set\n");
    return rc;
}

/* mkdir -p with mode 0700 for every directory it makes (XDG: "If ... does not exist, it
 * should be created with permissions set to 0700"). */
static int make_dirs(const char *path) {
    char buf[sizeof(((sd_local_redis_info *)0)->dir)];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                int err = -errno;
                fprintf(stderr, "local redis: cannot create %s: %s\n", buf, strerror(errno));
                return err;
            }
            *p = c;
            if (c == '\0')
                return 0;
        }
    }
}

static void join(char *buf, size_t len, const char *dir, const char *name) {
    snprintf(buf, len, "%s/%s", dir, name);
}

/* ---- Asking the socket ---------------------------------------------------------------------- */

enum { PROBE_DOWN, PROBE_UP, PROBE_STUCK };

/* Connects to the socket and sends PING. PROBE_UP: it answered (and *pid, *fsync are filled);
 * PROBE_DOWN: nobody listens (no socket file, or connection refused); PROBE_STUCK: something
 * accepted the connection but did not answer PONG in time (frozen, or still LOADING). */
static int probe(const char *socket, pid_t *pid, char *fsync, size_t fsync_len) {
    struct timeval tv = {PROBE_TIMEOUT_MS / 1000, (PROBE_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = redisConnectUnixWithTimeout(socket, tv);
    if (c == NULL)
        return PROBE_DOWN;
    if (c->err) {
        redisFree(c);
        return PROBE_DOWN;
    }
    redisSetTimeout(c, tv);
    int state = PROBE_STUCK;
    redisReply *r = redisCommand(c, "PING");
    if (r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0) {
        state = PROBE_UP;
        freeReplyObject(r);
        r = redisCommand(c, "INFO server");
        const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "process_id:") : NULL;
        if (pid)
            *pid = p ? (pid_t)atol(p + strlen("process_id:")) : 0;
        if (r)
            freeReplyObject(r);
        r = redisCommand(c, "CONFIG GET appendfsync");
        if (fsync && r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[1]->type == REDIS_REPLY_STRING)
            snprintf(fsync, fsync_len, "%s", r->element[1]->str);
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return state;
}

/* Whether pid is a live (not zombie) redis-server serving this socket (invariant 4). */
static int is_our_server(pid_t pid, const char *socket) {
    if (pid <= 0)
        return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    if (!paren || paren[1] != ' ' || paren[2] == 'Z' || paren[2] == 'X')
        return 0;
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    buf[n] = '\0';
    return strstr(buf, "redis-server") != NULL && strstr(buf, socket) != NULL;
}

static pid_t read_pidfile(const char *dir) {
    char path[256];
    join(path, sizeof path, dir, "redis.pid");
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (f) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    return (pid_t)pid;
}

/* Waits up to timeout_ms for pid (not our child: a daemon) to end. A pidfd becomes readable
 * when the process exits, so this waits for the event rather than polling kill(pid, 0).
 * Returns 0 when it ended, -ETIMEDOUT otherwise. */
static int wait_gone(pid_t pid, const char *socket, int timeout_ms) {
    int fd = pidfd_open(pid, 0);
    if (fd < 0)
        return errno == ESRCH ? 0 : -errno;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint64_t deadline = sd_now_ms() + (uint64_t)timeout_ms;
    int rc;
    for (;;) {
        uint64_t now = sd_now_ms();
        int left = now >= deadline ? 0 : (int)(deadline - now);
        rc = poll(&p, 1, left);
        if (rc < 0 && errno == EINTR)
            continue;
        break;
    }
    close(fd);
    return rc > 0 || !is_our_server(pid, socket) ? 0 : -ETIMEDOUT;
}

/* Kills a server that does not answer (SIGKILL works on a SIGSTOPped process too) and waits for
 * it to end. Returns 0, -ESRCH when pid is not our server, or -ETIMEDOUT. */
static int kill_server(pid_t pid, const char *socket) {
    if (!is_our_server(pid, socket))
        return -ESRCH;
    kill(pid, SIGKILL);
    return wait_gone(pid, socket, STOP_TIMEOUT_MS);
}

/* ---- Starting ------------------------------------------------------------------------------- */

static const char *fsync_policy(const sd_local_redis_opts *opts) {
    const char *p =
        opts && opts->appendfsync ? opts->appendfsync : getenv("SD_LOCAL_REDIS_APPENDFSYNC");
    if (p && (strcmp(p, "always") == 0 || strcmp(p, "everysec") == 0 || strcmp(p, "no") == 0))
        return p;
    if (p && *p)
        fprintf(stderr,
                "local redis: appendfsync '%s' is not always, everysec or no: using "
                "everysec\n",
                p);
    return "everysec";
}

/* Prints the warning lines ('#') redis.log gained after offset: why a start failed. */
static void report_log(const char *dir, long offset) {
    char path[256], line[512];
    join(path, sizeof path, dir, "redis.log");
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fseek(f, offset, SEEK_SET) == 0)
        while (fgets(line, sizeof line, f))
            if (strstr(line, " # "))
                fprintf(stderr, "redis-server: %s", line);
    fclose(f);
}

static long log_size(const char *dir) {
    char path[256];
    join(path, sizeof path, dir, "redis.log");
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Starts the daemon and waits until it answers. Called with the lock held and the socket
 * known not to answer. */
static int start_server(const sd_local_redis_opts *opts, sd_local_redis_info *info) {
    const char *fsync = fsync_policy(opts);
    char pidfile[256];
    join(pidfile, sizeof pidfile, info->dir, "redis.pid");
    const char *bin = getenv("REDIS_SERVER_BIN");
    /* Everything the child needs is built before fork(): the caller may have threads, and the
     * child may then only make async-signal-safe calls before exec. The order matters: --dir
     * changes Redis's working directory, which the relative --logfile then lives in. */
    const char *argv[] = {bin && *bin ? bin : "redis-server",
                          "--port",
                          "0",
                          "--unixsocket",
                          info->socket,
                          "--unixsocketperm",
                          "700",
                          "--dir",
                          info->dir,
                          "--daemonize",
                          "yes",
                          "--pidfile",
                          pidfile,
                          "--logfile",
                          "redis.log",
                          "--appendonly",
                          "yes",
                          "--appendfsync",
                          fsync,
                          "--save",
                          "",
                          "--maxmemory-policy",
                          "noeviction",
                          NULL};
    long offset = log_size(info->dir);
    /* Stale files of a server that died: nobody answers on the socket (Redis would unlink it
     * too), and the pid file's process is gone, or the wait below would take the old pid for
     * a new server that died at once. */
    unlink(info->socket);
    unlink(pidfile);
    pid_t child = fork();
    if (child < 0)
        return -errno;
    if (child == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        /* stderr stays, for configuration errors Redis prints before it daemonizes; the lock
         * and every other descriptor must not outlive this command in the daemon. */
        close_range(3, ~0U, 0);
        sd_child_restore_sigpipe();
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "local redis: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "local redis: %s did not start (exit status %d)\n", argv[0],
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        report_log(info->dir, offset);
        return -ECHILD;
    }
    /* The daemon is on its own now: wait for it to answer (it may be replaying the AOF). */
    int timeout = opts && opts->start_timeout_ms > 0 ? opts->start_timeout_ms : START_TIMEOUT_MS;
    uint64_t deadline = sd_now_ms() + (uint64_t)timeout;
    for (int delay = 2;; delay = delay < 50 ? delay * 2 : 50) {
        if (probe(info->socket, &info->pid, info->appendfsync, sizeof info->appendfsync) ==
            PROBE_UP)
            return 0;
        pid_t pid = read_pidfile(info->dir);
        if (sd_now_ms() > deadline || (pid > 0 && !is_our_server(pid, info->socket))) {
            fprintf(stderr, "local redis: the server did not answer on %s\n", info->socket);
            report_log(info->dir, offset);
            return SD_ETIMEDOUT;
        }
        sd_redis__sleep_ms(delay);
    }
}

/* Opens and locks dir/redis.lock (blocking: a holder is starting or stopping the server, which
 * is bounded by the start timeout). Returns the descriptor, or -errno with a message. */
static int lock_dir(const char *dir) {
    char path[256];
    join(path, sizeof path, dir, "redis.lock");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int err = -errno;
        fprintf(stderr, "local redis: cannot open %s: %s\n", path, strerror(errno));
        return err;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            int err = -errno;
            fprintf(stderr, "local redis: cannot lock %s: %s\n", path, strerror(errno));
            close(fd);
            return err;
        }
    }
    return fd;
}

int sd_local_redis_ensure(const sd_local_redis_opts *opts, sd_local_redis_info *out) {
    int rc = fill_paths(opts, out);
    if (rc != 0)
        return rc;
    if (probe(out->socket, &out->pid, out->appendfsync, sizeof out->appendfsync) == PROBE_UP)
        return 0;
    if ((rc = make_dirs(out->dir)) != 0)
        return rc;
    int lock = lock_dir(out->dir);
    if (lock < 0)
        return lock;
    /* Invariant 1: someone may have started it while this process waited for the lock. */
    int state = probe(out->socket, &out->pid, out->appendfsync, sizeof out->appendfsync);
    pid_t holder = read_pidfile(out->dir);
    if (state == PROBE_UP) {
        rc = 0;
    } else if (is_our_server(holder, out->socket)) {
        /* Invariant 2: alive but not answering; never start a second one on the same AOF. */
        fprintf(stderr,
                "local redis: redis-server pid %d holds %s but does not answer (stopped, or "
                "still loading its AOF); `./run.sh redis-stop` stops it\n",
                (int)holder, out->socket);
        rc = SD_ETIMEDOUT;
    } else {
        rc = start_server(opts, out);
        out->started = rc == 0;
    }
    close(lock);
    return rc;
}

int sd_local_redis_status(const sd_local_redis_opts *opts, sd_local_redis_info *out) {
    int rc = fill_paths(opts, out);
    if (rc != 0)
        return rc;
    if (probe(out->socket, &out->pid, out->appendfsync, sizeof out->appendfsync) == PROBE_UP)
        return 0;
    out->pid = 0;
    return -ESRCH;
}

/* ---- Stopping ------------------------------------------------------------------------------- */

/* Removes the files of the state directory and the directory itself (purge). */
static void purge_dir(const char *dir) {
    char sub[256];
    join(sub, sizeof sub, dir, "appendonlydir");
    DIR *d = opendir(sub);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", sub, e->d_name);
            unlink(path);
        }
        closedir(d);
        rmdir(sub);
    }
    static const char *const files[] = {"redis.log", "redis.lock", "dump.rdb", NULL};
    for (const char *const *f = files; *f; f++) {
        join(sub, sizeof sub, dir, *f);
        unlink(sub);
    }
    if (rmdir(dir) != 0 && errno != ENOENT)
        fprintf(stderr, "local redis: %s is not empty, left in place: %s\n", dir, strerror(errno));
}

int sd_local_redis_stop(const sd_local_redis_opts *opts, int purge, sd_local_redis_info *out) {
    sd_local_redis_info local;
    if (out == NULL)
        out = &local;
    int rc = fill_paths(opts, out);
    if (rc != 0)
        return rc;
    struct stat st;
    if (stat(out->dir, &st) != 0)
        return -ESRCH;
    int lock = lock_dir(out->dir);
    if (lock < 0)
        return lock;
    pid_t pid = 0;
    int state = probe(out->socket, &pid, NULL, 0);
    if (state == PROBE_UP) {
        struct timeval tv = {PROBE_TIMEOUT_MS / 1000, 0};
        redisContext *c = redisConnectUnixWithTimeout(out->socket, tv);
        if (c && c->err == 0) {
            redisSetTimeout(c, tv);
            /* The reply is the connection closing (NULL), or an error when Redis refuses to
             * stop (it could not write the AOF); the SIGKILL below handles that. */
            redisReply *r = redisCommand(c, "SHUTDOWN");
            if (r)
                freeReplyObject(r);
        }
        if (c)
            redisFree(c);
        rc = wait_gone(pid, out->socket, STOP_TIMEOUT_MS);
        if (rc != 0) {
            fprintf(stderr, "local redis: pid %d did not stop within %d ms: killing it\n", (int)pid,
                    STOP_TIMEOUT_MS);
            rc = kill_server(pid, out->socket);
        }
    } else {
        pid = read_pidfile(out->dir);
        rc = is_our_server(pid, out->socket) ? kill_server(pid, out->socket) : -ESRCH;
        if (rc == 0)
            fprintf(stderr, "local redis: pid %d did not answer: killed\n", (int)pid);
    }
    out->pid = rc == 0 ? pid : 0;
    char path[256];
    join(path, sizeof path, out->dir, "redis.pid");
    unlink(path);
    unlink(out->socket);
    if (purge)
        purge_dir(out->dir);
    close(lock);
    return rc;
}

/* ---- Choosing a Redis ----------------------------------------------------------------------- */

int sd_redis_resolve_durable(const char *flag_url, sd_redis_url *url) {
    const char *text = flag_url && *flag_url ? flag_url : getenv("REDIS_URL");
    const char *source = flag_url && *flag_url ? "--redis" : "REDIS_URL";
    char err[160];
    if (text && *text) {
        if (sd_redis_url_parse(text, url, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", source, err);
            return SD_EPARSE;
        }
        char shown[256];
        fprintf(stderr, "redis: using %s (from %s)\n",
                sd_redis_url_format(url, shown, sizeof shown), source);
        return 0;
    }
    sd_local_redis_info info;
    int rc = sd_local_redis_ensure(NULL, &info);
    if (rc != 0)
        return rc;
    if ((rc = sd_redis_url_parse(info.url, url, err, sizeof err)) != 0) {
        fprintf(stderr, "local redis: %s\n", err);
        return rc;
    }
    fprintf(stderr,
            "redis: using %s (the local durable Redis, pid %d, %s; AOF appendfsync %s; "
            "`./run.sh redis-stop` stops it)\n",
            info.url, (int)info.pid, info.started ? "started now" : "already running",
            info.appendfsync[0] ? info.appendfsync : "unknown");
    return 0;
}

/* ---- The eviction policy -------------------------------------------------------------------- */

/* Checks one node: INFO memory's maxmemory_policy. A plain hiredis connection, not an sd_redis:
 * that one would take a cluster node for the whole cluster and send INFO to any master. */
static int check_node(const sd_redis_url *url, char *err, size_t errlen) {
    char shown[256];
    sd_redis_url_format(url, shown, sizeof shown);
    struct timeval tv = {2, 0};
    redisContext *c = url->path ? redisConnectUnixWithTimeout(url->path, tv)
                                : redisConnectWithTimeout(url->host, url->port, tv);
    if (c == NULL || c->err) {
        snprintf(err, errlen, "cannot check the eviction policy of %s: %s", shown,
                 c ? c->errstr : "out of memory");
        redisFree(c);
        return SD_EDISCONNECTED;
    }
    redisSetTimeout(c, tv);
    redisReply *reply = NULL;
    if (url->password) {
        reply = url->user ? redisCommand(c, "AUTH %s %s", url->user, url->password)
                          : redisCommand(c, "AUTH %s", url->password);
        int ok = reply && reply->type == REDIS_REPLY_STATUS;
        if (reply)
            freeReplyObject(reply);
        reply = NULL;
        if (!ok) {
            snprintf(err, errlen, "cannot check the eviction policy of %s: AUTH failed", shown);
            redisFree(c);
            return SD_EREDIS;
        }
    }
    int rc = 0;
    reply = redisCommand(c, "INFO memory");
    if (!reply || reply->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "cannot check the eviction policy of %s: %s", shown,
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : c->errstr);
        rc = reply ? SD_EREDIS : SD_EDISCONNECTED;
    } else {
        const char *p = strstr(reply->str, "maxmemory_policy:");
        char policy[64] = "";
        if (p)
            sscanf(p + strlen("maxmemory_policy:"), "%63[^\r\n]", policy);
        if (strcmp(policy, "noeviction") != 0) {
            snprintf(err, errlen,
                     "Redis %s has maxmemory-policy %s: it may evict keys (jobs, links, "
                     "endpoints) under memory pressure; set maxmemory-policy noeviction",
                     shown, policy[0] ? policy : "(not reported)");
            rc = SD_EREDIS;
        }
    }
    if (reply)
        freeReplyObject(reply);
    redisFree(c);
    return rc;
}

int sd_redis_require_noeviction(const sd_redis_url *url, char *err, size_t errlen) {
    if (errlen)
        err[0] = '\0';
    /* Which nodes: CLUSTER SLOTS names every master of a cluster; a single Redis refuses it. */
    sd_redis *r = NULL;
    int rc = sd_redis_connect(url, NULL, &r);
    if (rc != 0) {
        char shown[256];
        snprintf(err, errlen, "cannot check the eviction policy of %s: %s",
                 sd_redis_url_format(url, shown, sizeof shown), sd_strerror(rc));
        return rc;
    }
    int cerr = 0;
    redisReply *slots = sd_redis_command(r, &cerr, "CLUSTER SLOTS");
    sd_redis_free(r);
    if (!slots || slots->type != REDIS_REPLY_ARRAY || slots->elements == 0) {
        if (slots)
            freeReplyObject(slots);
        return check_node(url, err, errlen);
    }
    rc = 0;
    for (size_t i = 0; i < slots->elements && rc == 0; i++) {
        redisReply *range = slots->element[i];
        if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
            range->element[2]->type != REDIS_REPLY_ARRAY || range->element[2]->elements < 2 ||
            range->element[2]->element[0]->type != REDIS_REPLY_STRING)
            continue;
        sd_redis_url node;
        sd_redis_url_copy(&node, url);
        free(node.seeds);
        node.seeds = NULL;
        free(node.host);
        node.host = sd_xstrdup(range->element[2]->element[0]->str);
        node.port = (int)range->element[2]->element[1]->integer;
        rc = check_node(&node, err, errlen);
        sd_redis_url_clear(&node);
    }
    freeReplyObject(slots);
    return rc;
}
