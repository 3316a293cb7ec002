/*
 * spawn.c - a server command as a child process (see spawn.h).
 */
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"

#define PREFIX "listening on http://127.0.0.1:"

/* Reads one line from fd until deadline_ms (sd_now_ms). Returns its length, -ETIMEDOUT, or
 * -ECHILD on EOF. */
static int read_line(int fd, char *buf, size_t len, uint64_t deadline_ms) {
    size_t n = 0;
    while (n + 1 < len) {
        buf[n] = '\0'; /* what was read so far stays a string on every return */
        uint64_t now = sd_now_ms();
        if (now >= deadline_ms)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(deadline_ms - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return -ETIMEDOUT;
        char c;
        ssize_t r = pr > 0 ? read(fd, &c, 1) : -1;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -ECHILD;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return (int)n;
}

int bench_server_spawn(const char *const argv[], const char *const env[], int timeout_ms,
                       bench_server *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
        int e = errno;
        snprintf(err, errlen, "pipe: %s", strerror(e));
        return -e;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        snprintf(err, errlen, "fork: %s", strerror(e));
        return -e;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], 1);
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        sd_child_restore_sigpipe();
        execv(argv[0], (char *const *)argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    char line[160];
    int rc = read_line(fds[0], line, sizeof line, sd_now_ms() + (uint64_t)timeout_ms);
    close(fds[0]);
    int port = 0;
    if (rc >= 0 && (strncmp(line, PREFIX, strlen(PREFIX)) != 0 ||
                    sd_parse_ll(line + strlen(PREFIX), 1, 65535, &(long long){0}) != 0))
        rc = -ECHILD;
    if (rc >= 0)
        port = atoi(line + strlen(PREFIX));
    if (rc < 0) {
        if (rc == -ETIMEDOUT)
            snprintf(err, errlen, "%s printed no address within %d ms", argv[0], timeout_ms);
        else if (rc == -ECHILD && line[0])
            snprintf(err, errlen, "%s printed '%s' instead of '" PREFIX "PORT'", argv[0], line);
        else
            snprintf(err, errlen, "%s exited before it printed its address", argv[0]);
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        return rc;
    }
    out->pid = pid;
    out->port = port;
    snprintf(out->url, sizeof out->url, "http://127.0.0.1:%d", port);
    return 0;
}

int bench_server_stop(bench_server *s, int sig, int timeout_ms) {
    if (s->pid <= 0)
        return 0;
    kill(s->pid, sig);
    uint64_t deadline = sd_now_ms() + (uint64_t)timeout_ms;
    int status = -1;
    for (;;) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid)
            break;
        if (r < 0 && errno != EINTR) {
            status = -1;
            break;
        }
        if (sd_now_ms() >= deadline) {
            kill(s->pid, SIGKILL);
            while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {
            }
            status = -1;
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    s->pid = 0;
    return status;
}
