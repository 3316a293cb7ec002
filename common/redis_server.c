/*
 * redis_server.c - the embedded Redis: a private redis-server per owner (see redis_server.h).
 *
 * Life of a server
 *
 *     start ──> [running] ──halt──> [halted] ──restart──> [running]
 *                   │                  │
 *                   └──────stop────────┴──> (directory removed, handle freed)
 *
 * Cleanup when the owner dies. Two mechanisms, so that neither a SIGKILLed test nor a crashed
 * command leaves a server or its files behind:
 *  1. The server child sets PR_SET_PDEATHSIG(SIGKILL): the kernel kills it when the thread that
 *     forked it exits.
 *  2. A janitor, `/bin/sh` running a five-line script, reads the server's pid from a pipe whose
 *     write end only the owner holds (it is close-on-exec, so programs the owner runs do not
 *     keep it open). When the owner goes away the pipe reaches EOF; the janitor then kills the
 *     server if it is still the same process (its title names our port) and removes the
 *     directory. The janitor ignores SIGINT/SIGTERM/SIGHUP so that a Ctrl-C sent to the whole
 *     process group does not stop it before it has cleaned up.
 * The janitor is a shell script rather than forked C code because code run after fork() in a
 * possibly multi-threaded owner may only call async-signal-safe functions; exec'ing a shell
 * sidesteps that.
 */
#include "redis_server.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_internal.h"
#include "sd.h"

#define MAX_ARGS 64

struct sd_redis_server {
    pid_t pid;      /* the redis-server process, or 0 when halted */
    pid_t janitor;  /* the cleanup shell */
    int janitor_fd; /* write end of the janitor's pipe */
    int port;
    int start_timeout_ms;
    char dir[96]; /* mkdtemp() result */
    char url[64];
    char *argv[MAX_ARGS]; /* the redis-server command line, reused by restart */
};

static const char janitor_script[] =
    "trap '' INT TERM HUP PIPE\n"
    "pid=''\n"
    "while read -r line; do pid=$line; done\n"
    "if [ -n \"$pid\" ] && grep -qa \"127.0.0.1:$2\" /proc/$pid/cmdline 2>/dev/null; then\n"
    "  kill -9 \"$pid\" 2>/dev/null\n"
    "fi\n"
    "rm -rf -- \"$1\"\n";

void sd_redis__sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static const char *server_binary(void) {
    const char *bin = getenv("REDIS_SERVER_BIN");
    return bin && *bin ? bin : "redis-server";
}

/* Forks and execs redis-server with s->argv. */
static int spawn_server(sd_redis_server *s) {
    pid_t owner = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != owner)
            _exit(127); /* the owner died between fork() and prctl() */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        /* Keep stderr (redis-server prints start-up errors there) but no other inherited fd. */
        close_range(3, ~0U, 0);
        sd_child_restore_sigpipe();
        execvp(s->argv[0], s->argv);
        dprintf(2, "redis_server: cannot run %s: %s\n", s->argv[0], strerror(errno));
        _exit(127);
    }
    s->pid = pid;
    return 0;
}

/*
 * Whether this server (s->pid) wrote "Ready to accept connections" to its log: its proof that the
 * port is its own. A PING alone cannot tell: when another process took the port between
 * sd_free_loopback_port() and the bind (another test's Redis drawing the same port, or anyone
 * after a halt), that process answers the PING, while this server fails to bind and exits. Every
 * log line starts with the pid of the process that wrote it.
 */
static int log_says_ready(const sd_redis_server *s) {
    char path[128], prefix[24], line[512];
    snprintf(path, sizeof path, "%s/redis.log", s->dir);
    int plen = snprintf(prefix, sizeof prefix, "%d:", (int)s->pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ready = 0;
    while (!ready && fgets(line, sizeof line, f))
        ready = strncmp(line, prefix, (size_t)plen) == 0 &&
                strstr(line, "Ready to accept connections") != NULL;
    fclose(f);
    return ready;
}

/* Waits until the server answers PING and its log says the port is its own, or it exits, or the
 * start timeout passes. */
static int wait_ready(sd_redis_server *s) {
    uint64_t deadline = sd_now_ms() + (uint64_t)s->start_timeout_ms;
    for (int delay = 2;; delay = delay < 50 ? delay * 2 : 50) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            return -ECHILD;
        }
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
        if (c != NULL && c->err == 0) {
            redisSetTimeout(c, tv);
            redisReply *reply = redisCommand(c, "PING");
            /* PONG, or NOAUTH when a password is set, means it is serving; LOADING (replaying
             * the AOF after a restart) means not yet. */
            int ok = reply != NULL &&
                     (reply->type == REDIS_REPLY_STATUS ||
                      (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOAUTH", 6) == 0));
            if (reply)
                freeReplyObject(reply);
            redisFree(c);
            if (ok && log_says_ready(s))
                return 0;
        } else if (c) {
            redisFree(c);
        }
        if (sd_now_ms() > deadline)
            return -ETIMEDOUT;
        sd_redis__sleep_ms(delay);
    }
}

/* Tells the janitor the pid it must clean up after. */
static void janitor_tell(sd_redis_server *s) {
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", (int)s->pid);
    if (write(s->janitor_fd, line, (size_t)n) != n)
        sd_log(SD_LOG_WARN, "redis_server.janitor_write_failed", "errno=%d", errno);
}

static int spawn_janitor(sd_redis_server *s) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -errno;
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        close(fds[0]);
        close(fds[1]);
        return err;
    }
    if (pid == 0) {
        dup2(fds[0], 0); /* dup2 clears close-on-exec on the new descriptor */
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1);
        close_range(3, ~0U, 0);
        sd_child_restore_sigpipe();
        execl("/bin/sh", "sh", "-c", janitor_script, "sd-redis-janitor", s->dir, port,
              (char *)NULL);
        _exit(127);
    }
    close(fds[0]);
    s->janitor = pid;
    s->janitor_fd = fds[1];
    return 0;
}

static void build_argv(sd_redis_server *s, const sd_redis_server_opts *opts) {
    int n = 0;
    s->argv[n++] = sd_xstrdup(server_binary());
#define ARG(x) s->argv[n++] = sd_xstrdup(x)
    ARG("--port");
    s->argv[n++] = sd_xasprintf("%d", s->port);
    ARG("--bind");
    ARG("127.0.0.1");
    ARG("--dir");
    ARG(s->dir);
    ARG("--daemonize");
    ARG("no");
    ARG("--save");
    ARG("");
    ARG("--logfile");
    ARG("redis.log");
    ARG("--appendonly");
    ARG(opts->appendfsync ? "yes" : "no");
    if (opts->appendfsync) {
        ARG("--appendfsync");
        ARG(opts->appendfsync);
    }
#undef ARG
    for (const char *const *a = opts->extra_args; a && *a && n < MAX_ARGS - 1; a++)
        s->argv[n++] = sd_xstrdup(*a);
    s->argv[n] = NULL;
}

static void free_argv(sd_redis_server *s) {
    for (int i = 0; i < MAX_ARGS && s->argv[i]; i++) {
        free(s->argv[i]);
        s->argv[i] = NULL;
    }
}

/* Prints the tail of the server's log: the reason it failed to start. */
static void report_log(const sd_redis_server *s) {
    char path[128];
    snprintf(path, sizeof path, "%s/redis.log", s->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (strstr(line, "#"))
            fprintf(stderr, "redis-server: %s", line);
    fclose(f);
}

/* The tag of the test run this server belongs to: SD_TEST_RUN_ID when it is 1 to 16 letters,
 * digits or '_', else "". It goes into the directory's name, which is also the server's working
 * directory (/proc/PID/cwd), so that `run.sh test` can tell its own servers from anyone else's. */
static const char *run_tag(void) {
    const char *id = getenv("SD_TEST_RUN_ID");
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 16)
        return "";
    for (size_t i = 0; i < n; i++)
        if (!(id[i] == '_' || (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
              (id[i] >= 'A' && id[i] <= 'Z')))
            return "";
    return id;
}

int sd_redis_server_start(const sd_redis_server_opts *opts, sd_redis_server **out) {
    sd_redis_server_opts defaults = {0};
    if (opts == NULL)
        opts = &defaults;
    sd_redis_server *s = sd_xcalloc(1, sizeof *s);
    s->start_timeout_ms = opts->start_timeout_ms > 0 ? opts->start_timeout_ms : 5000;
    s->janitor_fd = -1;
    const char *tmp = getenv("TMPDIR");
    const char *tag = run_tag();
    snprintf(s->dir, sizeof s->dir, "%s/sd-redis-%s%sXXXXXX",
             tmp && strlen(tmp) < 40 ? tmp : "/tmp", tag, *tag ? "-" : "");
    if (mkdtemp(s->dir) == NULL) {
        int err = -errno;
        fprintf(stderr, "redis_server: cannot create a temporary directory: %s\n", strerror(errno));
        free(s);
        return err;
    }
    int err = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = sd_free_loopback_port();
        if (s->port < 0) {
            err = s->port;
            break;
        }
        free_argv(s);
        build_argv(s, opts);
        if (s->janitor == 0 && (err = spawn_janitor(s)) != 0)
            break;
        /* The janitor was told the old port; a retry on a new port restarts it. */
        if ((err = spawn_server(s)) != 0)
            break;
        janitor_tell(s);
        err = wait_ready(s);
        if (err == 0) {
            snprintf(s->url, sizeof s->url, "redis://127.0.0.1:%d", s->port);
            *out = s;
            return 0;
        }
        if (err != -ECHILD)
            break; /* running but not answering: do not retry */
        /* It exited (most likely the port was taken meanwhile): new port, new janitor. */
        close(s->janitor_fd);
        waitpid(s->janitor, NULL, 0);
        s->janitor = 0;
        if (mkdir(s->dir, 0700) != 0 && errno != EEXIST) {
            err = -errno;
            break;
        }
    }
    fprintf(stderr, "redis_server: could not start %s: %s\n", server_binary(), sd_strerror(err));
    report_log(s);
    sd_redis_server_stop(s);
    return err;
}

const char *sd_redis_server_url(const sd_redis_server *s) {
    return s->url;
}

int sd_redis_server_port(const sd_redis_server *s) {
    return s->port;
}

pid_t sd_redis_server_pid(const sd_redis_server *s) {
    return s->pid;
}

const char *sd_redis_server_dir(const sd_redis_server *s) {
    return s->dir;
}

int sd_redis_server_signal(sd_redis_server *s, int sig) {
    if (s->pid <= 0)
        return -ESRCH;
    return kill(s->pid, sig) == 0 ? 0 : -errno;
}

int sd_redis_server_halt(sd_redis_server *s) {
    if (s->pid <= 0)
        return 0;
    /* A stopped (SIGSTOP) server must be continued to act on SIGTERM. */
    kill(s->pid, SIGCONT);
    kill(s->pid, SIGTERM);
    for (int waited = 0;; waited += 5) {
        int status;
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid || (r < 0 && errno == ECHILD))
            break;
        if (waited == 5000)
            kill(s->pid, SIGKILL);
        sd_redis__sleep_ms(5);
    }
    s->pid = 0;
    return 0;
}

int sd_redis_server_restart(sd_redis_server *s) {
    if (s->pid > 0)
        return -EBUSY;
    int err = spawn_server(s);
    if (err == 0) {
        janitor_tell(s);
        err = wait_ready(s);
    }
    if (err != 0) {
        fprintf(stderr, "redis_server: could not restart on port %d: %s\n", s->port,
                sd_strerror(err));
        report_log(s);
    }
    return err;
}

int sd_redis_server_stop(sd_redis_server *s) {
    if (s == NULL)
        return 0;
    int err = sd_redis_server_halt(s);
    if (s->janitor > 0) {
        /* EOF tells the janitor to remove the directory; wait so it is gone when we return. */
        close(s->janitor_fd);
        waitpid(s->janitor, NULL, 0);
    } else {
        rmdir(s->dir);
    }
    free_argv(s);
    free(s);
    return err;
}
