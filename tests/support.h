/*
 * support.h - helpers shared by the Criterion suites: a private redis-server per test, child
 * processes of the project's commands, and raw sockets for HTTP tests.
 *
 * Every helper that can fail asserts (cr_assert) with a message, so a test reads as a list of
 * steps and expectations.
 */
#ifndef TEST_SUPPORT_H
#define TEST_SUPPORT_H

#include <stddef.h>
#include <sys/types.h>

#include "redis.h"
#include "redis_cluster_server.h"
#include "redis_server.h"
#include "spawn.h"

/* Starts a private redis-server (no persistence unless appendfsync is given); asserts. */
sd_redis_server *test_redis_start(const char *appendfsync);

/* Starts a private Redis Cluster of 3 masters (and one replica each when replicas is 1),
 * ready (cluster_state:ok on every node); asserts. Stop it with sd_redis_cluster_server_stop. */
sd_redis_cluster_server *test_redis_cluster_start(int replicas);

/* A sync connection to the server at url with a 2 s command timeout; asserts. */
sd_redis *test_redis_connect(const char *url);

/* Runs a command and returns its integer reply; asserts on any failure. */
long long test_redis_int(sd_redis *r, const char *fmt, ...);

/* Path of a program in build/bin (static buffer per call site is not needed: returns a new
 * string the caller frees). */
char *test_bin_path(const char *name);

/*
 * Starts build/bin/<argv[0]> with the given arguments (NULL-terminated) and the extra
 * environment entries env ("NAME=value", NULL-terminated, or NULL). The child's stdout is
 * returned as a pipe in *stdout_fd when stdout_fd is not NULL (else it goes to /dev/null);
 * stderr is inherited. The child dies with the test process (PR_SET_PDEATHSIG). Returns its pid.
 */
pid_t test_spawn(const char *const argv[], const char *const env[], int *stdout_fd);

/*
 * Starts build/bin/<argv[0]>, a server command whose arguments include --listen 127.0.0.1:0,
 * and waits (up to 10 s) for its "listening on http://127.0.0.1:PORT" line (bench_server_spawn,
 * bench/spawn.h); asserts that it came. Stop it with bench_server_stop.
 */
bench_server test_server_start(const char *const argv[]);

/* Reads one line (without the newline) from fd within timeout_ms. Returns its length, or -1 on
 * timeout or EOF. */
int test_read_line(int fd, char *buf, size_t len, int timeout_ms);

/* Sends sig to pid and waits for it. Returns the wait status. */
int test_kill_wait(pid_t pid, int sig);

/* Waits for pid to exit within timeout_ms; returns its wait status, or -1 on timeout. */
int test_wait_exit(pid_t pid, int timeout_ms);

/* Opens a TCP connection to 127.0.0.1:port (blocking socket with a 5 s receive timeout). */
int test_tcp_connect(int port);

/* A listening TCP socket on 127.0.0.1 with a port the kernel picked (stored in *port). */
int test_listen_loopback(int *port);

/* A port on 127.0.0.1 that nothing listens on (bound, then closed). */
int test_closed_port(void);

/* Writes all of buf to fd; asserts. */
void test_write_all(int fd, const void *buf, size_t len);

/*
 * Reads one complete HTTP/1.1 response from fd (headers, then Content-Length bytes of body)
 * into buf (NUL-terminated). Returns the status code, or -1 if the connection closed or timed
 * out first. *body (if not NULL) points at the body inside buf.
 */
int test_http_read_response(int fd, char *buf, size_t len, const char **body);

/* Connects, sends one request (raw bytes), reads the response, closes. Returns the status. */
int test_http_exchange(int port, const char *request, char *buf, size_t len, const char **body);

/* Counts live processes whose command line contains needle (reads /proc). */
int test_count_processes(const char *needle);

#endif
