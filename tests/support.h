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
#include <time.h>

#include "http.h"
#include "redis.h"
#include "redis_cluster_server.h"
#include "redis_server.h"
#include "sd.h"
#include "spawn.h"

/* Starts a private redis-server (no persistence unless appendfsync is given); asserts. */
sd_redis_server *test_redis_start(const char *appendfsync);

/* Starts a private Redis Cluster of 3 masters (and one replica each when replicas is 1),
 * ready (cluster_state:ok on every node); asserts. Stop it with sd_redis_cluster_server_stop. */
sd_redis_cluster_server *test_redis_cluster_start(int replicas);

/*
 * The Redis a suite runs against. tests/CMakeLists.txt registers every suite that uses Redis
 * twice: `test_x` against a private redis-server, and `test_x@cluster`, with SD_TEST_REDIS=cluster,
 * against a private Redis Cluster of 3 masters (test_redis_cluster_start). A suite that takes its
 * Redis from test_target_start runs unchanged on both. The fault helpers act on every node of a
 * cluster at once (all halted, restarted or frozen together): "Redis is down" as a component sees
 * it. A test about one server on purpose (SELECT, a password set on one node) checks
 * test_target_is_cluster() and skips itself with cr_skip_test, saying why.
 */
typedef struct test_target test_target;

/* 1 when this run is against a cluster (SD_TEST_REDIS=cluster), else 0. */
int test_target_is_cluster(void);

/* Starts the suite's Redis (a server or a cluster, above); asserts. */
test_target *test_target_start(void);

/* Its URL: redis://127.0.0.1:PORT, or the cluster's seeds (every master). Valid until stop. */
const char *test_target_url(const test_target *t);

/* The port of its first node (the server itself for a single Redis). */
int test_target_port(const test_target *t);

/* Its nodes: 1 for a single Redis, the masters of a cluster. */
int test_target_nodes(const test_target *t);

/* Runs a command on node i alone, over a plain hiredis connection (no cluster routing): for what
 * a test asks of each server (INFO, CLIENT KILL, CONFIG SET). Returns the reply, which the caller
 * frees; asserts that the node answered. */
redisReply *test_target_node_command(const test_target *t, int i, const char *fmt, ...);

/* Runs a command on every node (CLIENT PAUSE, CONFIG SET); asserts that each one accepted it. */
void test_target_each(const test_target *t, const char *fmt, ...);

/* sd_redis_server_halt / _signal on every node. Return 0 or the first error. */
int test_target_halt(test_target *t);
int test_target_signal(test_target *t, int sig);

/* sd_redis_server_restart on every node; a cluster is then waited for until it serves every slot
 * again (at least 2 s: sd_redis_cluster_server_wait_ready). Returns 0 or the first error. */
int test_target_restart(test_target *t);

/* Stops everything and frees t. NULL is a no-op. */
void test_target_stop(test_target *t);

/* A sync connection to the server at url with a 2 s command timeout; asserts. */
sd_redis *test_redis_connect(const char *url);

/* A sync connection to the server (or cluster) at url with the options opts; asserts. */
sd_redis *test_redis_connect_opts(const char *url, const sd_redis_opts *opts);

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

/*
 * Forks a child that runs child_main(fd, arg), fd the write end of a pipe; child_main writes the
 * port it listens on as its first line and never returns. The child dies with the test process
 * (PR_SET_PDEATHSIG). Waits (5 s at most) for that line and asserts that it came. Returns the
 * child's pid and its port in *port; *lines gets the read end of the pipe, for the lines the
 * child writes next (when lines is NULL, it is closed).
 */
pid_t test_fork_server(void (*child_main)(int fd, void *arg), void *arg, int *port, int *lines);

/*
 * The rest of a forked HTTP server's life (see test_fork_server): writes srv's port to out, runs
 * loop until the server stops, frees srv and closes loop, then exits: 0, 3 when handles were
 * left on the loop, 4 when LeakSanitizer finds a leak (_exit skips its exit-time check, so it
 * runs here: a request or connection lost on a detached path shows up as a non-zero exit).
 */
void test_serve_and_exit(uv_loop_t *loop, sd_http_server *srv, int out) __attribute__((noreturn));

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

/* A port on 127.0.0.1 that nothing listens on (sd_free_loopback_port). */
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

/* What test_run_program saw: the exit status (-1 when a signal ended the program) and the first
 * bytes of its stdout and stderr, NUL-terminated. Large: make it static. */
typedef struct test_run_out {
    int status;
    char out[65536];
    char err[16384];
} test_run_out;

/*
 * Runs build/bin/<prog> with the arguments args (NULL-terminated, at most 62), `input` on stdin
 * (NULL: empty), and the extra environment entries env ("NAME=value", NULL-terminated, or NULL);
 * waits for it to exit (120 s at most: asserts that it did) and fills *r.
 */
void test_run_program(const char *prog, const char *const args[], const char *input,
                      const char *const env[], test_run_out *r);

/* Reads fd from its start into buf (NUL-terminated, cut at len - 1 bytes), then closes fd. */
void test_slurp_fd(int fd, char *buf, size_t len);

/* Counts live processes whose command line contains needle (reads /proc). */
int test_count_processes(const char *needle);

/* Waits up to timeout_ms for no live process's command line to contain needle (a process that
 * was just sent SIGKILL may still be listed for a moment on a busy machine). Returns how many
 * are left then: 0 unless something really is still running. */
int test_count_processes_until_none(const char *needle, int timeout_ms);

/* Forks an owner: a child that runs start(fd), fd the write end of a pipe, on which start
 * starts what the test is about and writes a line about each process it owns; then the child
 * waits to be killed (it exits 1 at once when start returns non-zero). Returns the child's pid;
 * *lines gets the read end of the pipe. */
pid_t test_fork_owner(int (*start)(int fd), int *lines);

/* Whether path exists (a file or a directory). */
int test_path_exists(const char *path);

/* Writes text to a new file made from the template path ("/tmp/name-XXXXXX", rewritten in
 * place with the file's name); the caller unlinks it. For token and key files. */
void test_temp_file(char *path, const char *text);

/* Whether process pid is alive: it exists and is not a zombie (which kill() still finds). */
int test_process_alive(pid_t pid);

/* Polls cond every 10 ms until it holds or timeout_ms have passed: for cleanup that happens in
 * other processes, with no event this process can wait on. The caller then asserts cond. */
#define TEST_EVENTUALLY(cond, timeout_ms)                                                          \
    do {                                                                                           \
        uint64_t until_ = sd_now_ms() + (timeout_ms);                                              \
        while (!(cond) && sd_now_ms() < until_) {                                                  \
            struct timespec ts_ = {0, 10000000};                                                   \
            nanosleep(&ts_, NULL);                                                                 \
        }                                                                                          \
    } while (0)

#endif
