/*
 * support.c - helpers shared by the Criterion suites (see support.h).
 */
#include "support.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

sd_redis_server *test_redis_start(const char *appendfsync) {
    sd_redis_server_opts opts = {.appendfsync = appendfsync};
    sd_redis_server *s = NULL;
    int rc = sd_redis_server_start(&opts, &s);
    cr_assert_eq(rc, 0, "cannot start redis-server: %s", sd_strerror(rc));
    return s;
}

sd_redis_cluster_server *test_redis_cluster_start(int replicas) {
    sd_redis_cluster_server_opts opts = {.masters = 3, .replicas = replicas};
    sd_redis_cluster_server *c = NULL;
    int rc = sd_redis_cluster_server_start(&opts, &c);
    cr_assert_eq(rc, 0, "cannot start a Redis Cluster: %s", sd_strerror(rc));
    return c;
}

struct test_target {
    sd_redis_server *server;          /* a single Redis, or NULL */
    sd_redis_cluster_server *cluster; /* a cluster, or NULL */
};

int test_target_is_cluster(void) {
    const char *mode = getenv("SD_TEST_REDIS");
    return mode != NULL && strcmp(mode, "cluster") == 0;
}

test_target *test_target_start(void) {
    test_target *t = sd_xcalloc(1, sizeof *t);
    if (test_target_is_cluster())
        t->cluster = test_redis_cluster_start(0);
    else
        t->server = test_redis_start(NULL);
    return t;
}

const char *test_target_url(const test_target *t) {
    return t->cluster ? sd_redis_cluster_server_url(t->cluster) : sd_redis_server_url(t->server);
}

/* Node i of t (the server when single), or NULL past the last. */
static sd_redis_server *target_node(const test_target *t, int i) {
    if (t->cluster)
        return sd_redis_cluster_server_node(t->cluster, i);
    return i == 0 ? t->server : NULL;
}

int test_target_port(const test_target *t) {
    return sd_redis_server_port(target_node(t, 0));
}

int test_target_nodes(const test_target *t) {
    int n = 0;
    while (target_node(t, n))
        n++;
    return n;
}

static redisReply *node_vcommand(const test_target *t, int i, const char *fmt, va_list ap) {
    sd_redis_server *node = target_node(t, i);
    cr_assert_not_null(node, "no node %d", i);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", sd_redis_server_port(node), tv);
    cr_assert(c && !c->err, "node %d: cannot connect: %s", i, c ? c->errstr : "out of memory");
    redisSetTimeout(c, tv);
    redisReply *reply = redisvCommand(c, fmt, ap);
    cr_assert_not_null(reply, "node %d: no reply to %s: %s", i, fmt, c->errstr);
    redisFree(c);
    return reply;
}

redisReply *test_target_node_command(const test_target *t, int i, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = node_vcommand(t, i, fmt, ap);
    va_end(ap);
    return reply;
}

void test_target_each(const test_target *t, const char *fmt, ...) {
    for (int i = 0; target_node(t, i); i++) {
        va_list ap;
        va_start(ap, fmt);
        redisReply *reply = node_vcommand(t, i, fmt, ap);
        va_end(ap);
        cr_assert_neq(reply->type, REDIS_REPLY_ERROR, "node %d refused %s: %s", i, fmt, reply->str);
        freeReplyObject(reply);
    }
}

int test_target_halt(test_target *t) {
    int err = 0;
    for (int i = 0; target_node(t, i); i++) {
        int rc = sd_redis_server_halt(target_node(t, i));
        err = err ? err : rc;
    }
    return err;
}

int test_target_signal(test_target *t, int sig) {
    int err = 0;
    for (int i = 0; target_node(t, i); i++) {
        int rc = sd_redis_server_signal(target_node(t, i), sig);
        err = err ? err : rc;
    }
    return err;
}

int test_target_restart(test_target *t) {
    int err = 0;
    for (int i = 0; target_node(t, i); i++) {
        int rc = sd_redis_server_restart(target_node(t, i));
        err = err ? err : rc;
    }
    if (err == 0 && t->cluster)
        err = sd_redis_cluster_server_wait_ready(t->cluster, 30000);
    return err;
}

void test_target_stop(test_target *t) {
    if (t == NULL)
        return;
    sd_redis_server_stop(t->server);
    sd_redis_cluster_server_stop(t->cluster);
    free(t);
}

sd_redis *test_redis_connect_opts(const char *url, const sd_redis_opts *opts) {
    sd_redis_url u;
    char err[160];
    cr_assert_eq(sd_redis_url_parse(url, &u, err, sizeof err), 0, "%s", err);
    sd_redis *r = NULL;
    int rc = sd_redis_connect(&u, opts, &r);
    sd_redis_url_clear(&u);
    cr_assert_eq(rc, 0, "cannot connect to %s: %s", url, sd_strerror(rc));
    return r;
}

sd_redis *test_redis_connect(const char *url) {
    sd_redis_opts opts;
    sd_redis_opts_default(&opts);
    opts.command_timeout_ms = 2000;
    return test_redis_connect_opts(url, &opts);
}

pid_t test_fork_owner(int (*start)(int fd), int *lines) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t owner = fork();
    cr_assert_geq(owner, 0);
    if (owner == 0) {
        close(fds[0]);
        if (start(fds[1]) != 0)
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    *lines = fds[0];
    return owner;
}

void test_temp_file(char *path, const char *text) {
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp %s: %s", path, strerror(errno));
    size_t n = strlen(text);
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
}

int test_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int test_process_alive(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' && close_paren[2] != 'Z';
}

long long test_redis_int(sd_redis *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int err = 0;
    redisReply *reply = sd_redis_vcommand(r, &err, fmt, ap);
    va_end(ap);
    cr_assert_not_null(reply, "redis: %s (%s)", sd_strerror(err), sd_redis_errstr(r));
    cr_assert_eq(reply->type, REDIS_REPLY_INTEGER,
                 "expected an integer reply to %s, got type %d%s%s", fmt, reply->type,
                 reply->type == REDIS_REPLY_ERROR ? ": " : "",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    long long v = reply->integer;
    freeReplyObject(reply);
    return v;
}

char *test_bin_path(const char *name) {
    return sd_xasprintf("%s/%s", SD_BIN_DIR, name);
}

pid_t test_spawn(const char *const argv[], const char *const env[], int *stdout_fd) {
    int fds[2] = {-1, -1};
    if (stdout_fd)
        cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    char *path = test_bin_path(argv[0]);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (stdout_fd) {
            dup2(fds[1], 1);
        } else {
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 1);
        }
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        sd_child_restore_sigpipe();
        execv(path, (char *const *)argv);
        dprintf(2, "test_spawn: cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    free(path);
    if (stdout_fd) {
        close(fds[1]);
        *stdout_fd = fds[0];
    }
    return pid;
}

bench_server test_server_start(const char *const argv[]) {
    const char *full[64];
    size_t n = 0;
    char *path = test_bin_path(argv[0]);
    full[n++] = path;
    for (const char *const *a = argv + 1; *a; a++) {
        cr_assert_lt(n, 63, "too many arguments");
        full[n++] = *a;
    }
    full[n] = NULL;
    bench_server s;
    char err[256];
    int rc = bench_server_spawn(full, NULL, 10000, &s, err, sizeof err);
    free(path);
    cr_assert_eq(rc, 0, "%s", err);
    return s;
}

pid_t test_fork_server(void (*child_main)(int fd, void *arg), void *arg, int *port, int *lines) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        close(fds[0]);
        child_main(fds[1], arg);
        _exit(127); /* not reached */
    }
    close(fds[1]);
    char line[32];
    cr_assert_gt(test_read_line(fds[0], line, sizeof line, 5000), 0, "the server did not start");
    *port = atoi(line);
    if (lines)
        *lines = fds[0];
    else
        close(fds[0]);
    return pid;
}

void test_serve_and_exit(uv_loop_t *loop, sd_http_server *srv, int out) {
    dprintf(out, "%d\n", sd_http_server_port(srv));
    uv_run(loop, UV_RUN_DEFAULT);
    sd_http_server_free(srv);
    int status = uv_loop_close(loop) == 0 ? 0 : 3;
#ifdef __SANITIZE_ADDRESS__
    if (__lsan_do_recoverable_leak_check() != 0)
        status = 4;
#endif
    _exit(status);
}

int test_read_line(int fd, char *buf, size_t len, int timeout_ms) {
    size_t n = 0;
    uint64_t deadline = sd_now_ms() + (uint64_t)timeout_ms;
    while (n + 1 < len) {
        uint64_t now = sd_now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return -1;
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return (int)n;
}

int test_kill_wait(pid_t pid, int sig) {
    kill(pid, sig);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

void test_slurp_fd(int fd, char *buf, size_t len) {
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, len - 1);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
}

/* An unlinked temporary file, open for reading and writing. */
static int temp_fd(void) {
    char path[] = "/tmp/test_run_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    unlink(path);
    return fd;
}

void test_run_program(const char *prog, const char *const args[], const char *input,
                      const char *const env[], test_run_out *r) {
    char *bin = test_bin_path(prog);
    const char *argv[64] = {prog};
    int n = 1;
    for (; args[n - 1]; n++) {
        cr_assert_lt(n, 63, "too many arguments");
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    int in = temp_fd(), out = temp_fd(), err = temp_fd();
    if (input)
        cr_assert_eq(write(in, input, strlen(input)), (ssize_t)strlen(input));
    lseek(in, 0, SEEK_SET);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        sd_child_restore_sigpipe();
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(in);
    int status = test_wait_exit(pid, 120000);
    if (status == -1)
        test_kill_wait(pid, SIGKILL);
    cr_assert_neq(status, -1, "%s did not exit", prog);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    test_slurp_fd(out, r->out, sizeof r->out);
    test_slurp_fd(err, r->err, sizeof r->err);
    free(bin);
}

int test_wait_exit(pid_t pid, int timeout_ms) {
    uint64_t deadline = sd_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 || sd_now_ms() >= deadline)
            return -1;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

int test_tcp_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect to port %d: %s", port,
                 strerror(errno));
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Binds a loopback socket to a port of the kernel's choosing; returns the fd. */
static int bind_loopback(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s", strerror(errno));
    socklen_t len = sizeof sa;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

int test_listen_loopback(int *port) {
    int fd = bind_loopback(port);
    cr_assert_eq(listen(fd, 128), 0, "listen: %s", strerror(errno));
    return fd;
}

int test_closed_port(void) {
    int port = sd_free_loopback_port();
    cr_assert_gt(port, 0, "no free port: %s", strerror(-port));
    return port;
}

void test_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "write: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly one byte; returns 1, or 0 on EOF / error / timeout. */
static int read_byte(int fd, char *c) {
    for (;;) {
        ssize_t r = recv(fd, c, 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        return r == 1;
    }
}

int test_http_read_response(int fd, char *buf, size_t len, const char **body) {
    /* The header is read a byte at a time so that nothing past this response is consumed:
     * tests read pipelined responses one call each. */
    size_t n = 0;
    while (n < 4 || memcmp(buf + n - 4, "\r\n\r\n", 4) != 0) {
        if (n + 1 >= len || !read_byte(fd, buf + n))
            return -1;
        n++;
    }
    buf[n] = '\0';
    long content_length = 0;
    for (const char *p = buf; *p; p++) {
        if ((p == buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
            content_length = strtol(p + 15, NULL, 10);
            break;
        }
    }
    size_t hlen = n;
    if (content_length < 0 || hlen + (size_t)content_length + 1 > len)
        return -1;
    while (n < hlen + (size_t)content_length) {
        ssize_t r = recv(fd, buf + n, hlen + (size_t)content_length - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        n += (size_t)r;
    }
    buf[n] = '\0';
    if (body)
        *body = buf + hlen;
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    return status;
}

int test_http_exchange(int port, const char *request, char *buf, size_t len, const char **body) {
    int fd = test_tcp_connect(port);
    test_write_all(fd, request, strlen(request));
    int status = test_http_read_response(fd, buf, len, body);
    close(fd);
    return status;
}

int test_count_processes(const char *needle) {
    DIR *d = opendir("/proc");
    cr_assert_not_null(d);
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], cmd[512];
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, cmd, sizeof cmd - 1);
        close(fd);
        if (n <= 0)
            continue;
        for (ssize_t i = 0; i < n; i++)
            if (cmd[i] == '\0')
                cmd[i] = ' ';
        cmd[n] = '\0';
        /* A zombie has an empty cmdline and is skipped above. */
        if (strstr(cmd, needle))
            count++;
    }
    closedir(d);
    return count;
}

int test_count_processes_until_none(const char *needle, int timeout_ms) {
    uint64_t end = sd_now_ms() + (uint64_t)timeout_ms;
    int n;
    while ((n = test_count_processes(needle)) > 0 && sd_now_ms() < end)
        usleep(10 * 1000);
    return n;
}
