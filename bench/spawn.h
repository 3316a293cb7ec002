/*
 * spawn.h - starting a server command as a child process and learning its address: what
 * scenarios that measure a server through HTTP and the tests of every server do.
 *
 * The child is started with `--listen 127.0.0.1:0` among its arguments (the caller's job) and
 * announces itself with the command kit's one line on stdout (http.h,
 * sd_http_server_print_address):
 *
 *   listening on http://127.0.0.1:PORT
 *
 * bench_server_spawn reads that line and returns the child's pid, port and base URL.
 */
#ifndef BENCH_SPAWN_H
#define BENCH_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

typedef struct bench_server {
    pid_t pid;
    int port;
    char url[80]; /* "http://127.0.0.1:PORT", no trailing slash */
} bench_server;

/*
 * Starts argv[0] (a path) with argv (NULL-terminated) and the extra environment entries env
 * ("NAME=value", NULL-terminated, or NULL). The child's stdout is read until its "listening
 * on" line, for up to timeout_ms, then closed; its stderr is inherited. The child gets SIGKILL
 * if the caller dies (PR_SET_PDEATHSIG) and SIGPIPE back at its default. Returns 0 with *out
 * filled, or a negative errno after writing what went wrong into err (-ETIMEDOUT: no line in
 * time; -ECHILD: the child exited or printed something else first), the child then killed and
 * reaped.
 */
int bench_server_spawn(const char *const argv[], const char *const env[], int timeout_ms,
                       bench_server *out, char *err, size_t errlen);

/* Sends sig to the server and waits for it to exit, up to timeout_ms (then SIGKILL). Returns
 * its wait status, or -1 when it had to be killed. pid becomes 0; a pid of 0 is a no-op (0). */
int bench_server_stop(bench_server *s, int sig, int timeout_ms);

#endif
