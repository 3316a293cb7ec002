/*
 * test_http_hardening.c - the HTTP server of common/http.h against hostile clients: a client
 * that pipelines requests and never reads the answers, one that trickles a body, routes with
 * their own body limits, requests that could be read two ways (whitespace before a header's
 * colon, an unknown HTTP version or expectation), and bench's HTTP client facing an interim
 * 100 Continue it did not ask for.
 *
 * Every test forks a small app server built here on http.h, with a low max_output_bytes and
 * the timeouts the test needs:
 *
 *   GET  /big      answers at once with BIG_BODY bytes
 *   POST /echo     answers with the request body (the server's body limit)
 *   POST /small    the same, with a route body limit of SMALL_BODY bytes
 *
 * The tests read the server's state from GET /metrics on a second connection and wait for
 * events (a gauge reaching a value, a response arriving), never for a fixed time: they assert
 * what the server did (paused, answered 408, closed, kept its output bounded), not how fast.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "http.h"
#include "../bench/http_client.h" /* not common/http_client.h, which -I finds first */
#include "sd.h"
#include "support.h"

enum {
    BIG_BODY = 4096,
    SMALL_BODY = 16,
    MAX_OUTPUT = 16 * 1024, /* the app's max_output_bytes */
};

/* ---- The app server -------------------------------------------------------------------------- */

typedef struct app_opts {
    int request_timeout_ms; /* 0: the default */
    int send_timeout_ms;    /* 0: the default */
} app_opts;

typedef struct app {
    sd_http_server *srv;
    uv_signal_t term;
} app;

static void big_cb(sd_http_req *req, void *udata) {
    static char body[BIG_BODY];
    memset(body, 'x', sizeof body);
    sd_http_req_respond(req, 200, "text/plain", body, sizeof body);
}

static void echo_cb(sd_http_req *req, void *udata) {
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    sd_http_req_respond(req, 200, "text/plain", body, len);
}

static void on_done(sd_http_server *srv, void *udata) {
    app *a = udata;
    uv_close((uv_handle_t *)&a->term, NULL);
}

static void on_term(uv_signal_t *h, int signum) {
    app *a = h->data;
    sd_http_server_stop(a->srv, 0, on_done, a);
}

/* The child's whole life: print the port on out, serve until SIGTERM, then exit 0. */
static void app_main(int out, const app_opts *o) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    app a = {0};
    sd_http_opts opts;
    sd_http_opts_default(&opts);
    opts.max_output_bytes = MAX_OUTPUT;
    if (o->request_timeout_ms)
        opts.request_timeout_ms = o->request_timeout_ms;
    if (o->send_timeout_ms)
        opts.send_timeout_ms = o->send_timeout_ms;
    a.srv = sd_http_server_new(&loop, &opts);
    sd_http_server_route(a.srv, "GET", "/big", big_cb, &a);
    sd_http_server_route(a.srv, "POST", "/echo", echo_cb, &a);
    const sd_http_route_opts small = {.max_body_bytes = SMALL_BODY};
    sd_http_server_route_opts(a.srv, "POST", "/small", echo_cb, &a, &small);
    if (sd_http_server_listen(a.srv, "127.0.0.1:0") != 0)
        _exit(1);
    uv_signal_init(&loop, &a.term);
    a.term.data = &a;
    uv_signal_start(&a.term, on_term, SIGTERM);
    test_serve_and_exit(&loop, a.srv, out);
}

static pid_t app_pid;
static int port;
static char buf[65536];
static const char *body;

static void app_child(int out, void *arg) {
    app_main(out, arg);
}

static void start_app(app_opts o) {
    app_pid = test_fork_server(app_child, &o, &port, NULL);
}

static void stop_app(void) {
    int status = test_kill_wait(app_pid, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the app did not exit 0 (%d)", status);
}

/* ---- Helpers --------------------------------------------------------------------------------- */

/* Sends request (raw bytes) on a new connection to the app; returns the response's status. The
 * response is in buf, its body at body. */
static int exchange(const char *request) {
    return test_http_exchange(port, request, buf, sizeof buf, &body);
}

static void send_text(int fd, const char *text) {
    test_write_all(fd, text, strlen(text));
}

/* The value of one sample of the app's /metrics ("name" or "name{labels}"); asserts it is
 * there. */
static long long metric(const char *sample) {
    static char mbuf[16384];
    const char *mbody;
    cr_assert_eq(
        test_http_exchange(port, "GET /metrics HTTP/1.1\r\n\r\n", mbuf, sizeof mbuf, &mbody), 200);
    char needle[256];
    snprintf(needle, sizeof needle, "\n%s ", sample);
    const char *at = strstr(mbody, needle);
    cr_assert_not_null(at, "no sample %s in:\n%s", sample, mbody);
    return atoll(at + strlen(needle));
}

/* Waits until a sample of /metrics reaches want, asking again whenever fd (if >= 0) can take
 * more bytes (then *more is called to write them) or after a short pause. Gives up after 10 s:
 * long enough for any machine, and never reached when the server does its job. */
static bool wait_metric(const char *sample, long long want, int fd, void (*more)(int fd)) {
    uint64_t end = sd_now_ns() + 10000000000ull;
    while (sd_now_ns() < end) {
        if (metric(sample) == want)
            return true;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, fd >= 0 ? 1 : 0, 20) == 1 && more)
            more(fd);
    }
    return false;
}

/* Pipelined GET /big requests, written until the socket takes no more. A send may take part
 * of a request: the stream goes on from there, and nsent counts the complete ones. */
static const char big_req[] = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n";
static size_t big_pos;
static long long nsent;

static void send_bigs(int fd) {
    enum { N = 256 };
    const size_t one = sizeof big_req - 1;
    static char chunk[sizeof big_req * (N + 1)];
    for (size_t i = 0; i <= N; i++)
        memcpy(chunk + i * one, big_req, one);
    for (;;) {
        size_t off = big_pos % one;
        ssize_t n = send(fd, chunk + off, one * N, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0)
            return;
        big_pos += (size_t)n;
        nsent = (long long)(big_pos / one);
        if ((size_t)n < one * N)
            return;
    }
}

/* A connection whose buffers are small, so that the server's output to it and its requests
 * back up quickly. */
static int connect_small_buffers(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int rcv = 4096, snd = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* A client with small buffers that pipelines GET /big as far as the kernel takes and reads
 * nothing (yet). */
static int connect_unread_client(void) {
    int fd = connect_small_buffers();
    big_pos = 0;
    nsent = 0;
    send_bigs(fd);
    return fd;
}

TestSuite(http_hardening, .timeout = 60);

/* ---- Output that the client does not read ---------------------------------------------------- */

/* A client pipelines requests answered at once and reads nothing. The server must stop
 * parsing once its unsent output passes max_output_bytes (so it holds at most that plus one
 * response), and answer every request, in order, once the client reads. */
Test(http_hardening, unread_output_pauses_the_connection_and_resumes_when_drained) {
    start_app((app_opts){0});
    int fd = connect_unread_client();
    cr_assert(wait_metric("http_connections_output_blocked", 1, fd, send_bigs),
              "the connection never paused for its output");
    /* Blocked now: the server neither parses nor reads this connection. */
    long long unsent = metric("http_output_unsent_bytes");
    cr_assert_leq(unsent, MAX_OUTPUT + BIG_BODY + 256,
                  "%lld bytes wait on a client that does not read", unsent);
    cr_assert_geq(metric("http_output_pauses_total"), 1);

    /* Reading everything lets the server go on until every request is answered. */
    for (long long i = 0; i < nsent; i++) {
        int status = test_http_read_response(fd, buf, sizeof buf, &body);
        cr_assert_eq(status, 200, "response %lld of %lld: %d", i + 1, nsent, status);
        cr_assert_eq(strlen(body), BIG_BODY);
    }
    cr_assert_eq(metric("http_connections_output_blocked"), 0);
    close(fd);
    stop_app();
}

/* The same client, left alone: its connection is closed at the send deadline. */
Test(http_hardening, output_that_never_drains_is_closed_at_the_send_deadline) {
    start_app((app_opts){.send_timeout_ms = 300});
    int fd = connect_unread_client();
    cr_assert(wait_metric("http_connection_timeouts_total{phase=\"send\"}", 1, fd, send_bigs),
              "the connection that does not read was not closed");
    cr_assert_eq(metric("http_connections_output_blocked"), 0);
    cr_assert_eq(metric("http_output_unsent_bytes"), 0);
    close(fd);
    stop_app();
}

/* ---- Request deadline ------------------------------------------------------------------------ */

/* Each byte of a trickled body renews the idle deadline, but not the request's: the client
 * gets 408 and the connection is closed. The body takes at least 10 s to trickle (it is paced
 * by 50 ms waits for the server's answer), far past the 500 ms deadline. */
Test(http_hardening, a_trickled_body_gets_408_at_the_request_deadline) {
    start_app((app_opts){.request_timeout_ms = 500});
    int fd = test_tcp_connect(port);
    send_text(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 200\r\n\r\n");
    bool answered = false;
    for (int i = 0; i < 200 && !answered; i++) {
        if (send(fd, "a", 1, MSG_NOSIGNAL) != 1)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        answered = poll(&p, 1, 50) == 1;
    }
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 408, "%s", buf);
    cr_assert_not_null(strcasestr(buf, "\r\nConnection: close\r\n"), "%s", buf);
    char c;
    cr_assert_leq(recv(fd, &c, 1, 0), 0, "the connection was not closed after the 408");
    close(fd);
    cr_assert_eq(metric("http_connection_timeouts_total{phase=\"request\"}"), 1);
    cr_assert_eq(metric("http_requests_total{route=\"unmatched\",status=\"408\"}"), 1);
    stop_app();
}

/* ---- Body limits per route ------------------------------------------------------------------- */

Test(http_hardening, a_route_body_limit_is_checked_before_the_body_is_read) {
    start_app((app_opts){0});
    /* 413 on the header alone: the body is never sent. */
    cr_assert_eq(exchange("POST /small HTTP/1.1\r\nContent-Length: 17\r\n\r\n"), 413);
    cr_assert_eq(exchange("POST /small HTTP/1.1\r\nContent-Length: 16\r\n\r\n"
                          "0123456789abcdef"),
                 200);
    cr_assert_str_eq(body, "0123456789abcdef");
    /* Another route keeps the server's limit. */
    cr_assert_eq(exchange("POST /echo HTTP/1.1\r\nContent-Length: 17\r\n\r\n"
                          "0123456789abcdefg"),
                 200);
    stop_app();
}

Test(http_hardening, the_built_in_routes_take_no_body) {
    start_app((app_opts){0});
    cr_assert_eq(exchange("GET /healthz HTTP/1.1\r\nContent-Length: 1\r\n\r\n"), 413);
    cr_assert_eq(exchange("GET /metrics HTTP/1.1\r\nContent-Length: 1\r\n\r\n"), 413);
    cr_assert_eq(exchange("GET /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 200);
    stop_app();
}

/* ---- Strictness ------------------------------------------------------------------------------ */

/* Refused with status, as an RFC 9457 problem, and the connection closed after it. */
static void expect_refused(const char *request, int status) {
    int fd = test_tcp_connect(port);
    send_text(fd, request);
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), status, "%s", buf);
    cr_assert_not_null(strcasestr(buf, "\r\nContent-Type: application/problem+json\r\n"));
    char c;
    cr_assert_leq(recv(fd, &c, 1, 0), 0, "the connection was not closed after %d", status);
    close(fd);
}

Test(http_hardening, whitespace_in_a_header_name_gets_400) {
    start_app((app_opts){0});
    expect_refused("GET /big HTTP/1.1\r\nHost : t\r\n\r\n", 400);
    expect_refused("GET /big HTTP/1.1\r\nX-A b: t\r\n\r\n", 400);
    stop_app();
}

Test(http_hardening, an_http_major_version_other_than_1_gets_505) {
    start_app((app_opts){0});
    expect_refused("GET /big HTTP/9.9\r\nHost: t\r\n\r\n", 505);
    expect_refused("GET /big HTTP/2.0\r\nHost: t\r\n\r\n", 505);
    /* A later 1.x minor version is read as 1.1 (RFC 9112 section 2.3). */
    cr_assert_eq(test_http_exchange(port, "GET /big HTTP/1.9\r\n\r\n", buf, sizeof buf, NULL), 200);
    stop_app();
}

Test(http_hardening, an_unknown_expectation_gets_417) {
    start_app((app_opts){0});
    expect_refused("GET /big HTTP/1.1\r\nExpect: teapot\r\n\r\n", 417);
    expect_refused("POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue, x=1\r\n\r\n",
                   417);
    stop_app();
}

/* Expect: 100-continue is met: the interim response comes before the body is sent, the final
 * one after it. */
Test(http_hardening, expect_100_continue_gets_the_interim_response_before_the_body) {
    start_app((app_opts){0});
    int fd = test_tcp_connect(port);
    send_text(fd, "POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n");
    static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n";
    char got[sizeof interim] = "";
    size_t n = 0;
    while (n < sizeof interim - 1) {
        ssize_t r = recv(fd, got + n, sizeof interim - 1 - n, 0);
        cr_assert_gt(r, 0, "no 100 Continue");
        n += (size_t)r;
    }
    cr_assert_str_eq(got, interim);
    send_text(fd, "hello");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert_str_eq(body, "hello");
    close(fd);
    stop_app();
}

/* ---- bench's HTTP client and interim responses ----------------------------------------------- */

/* A server that answers every request with "100 Continue" and then "200 ok", in one write. */
static void serve_with_interim(int lfd) {
    static const char reply[] = "HTTP/1.1 100 Continue\r\n\r\n"
                                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            continue;
        char in[4096];
        size_t len = 0;
        ssize_t r;
        while ((r = read(c, in + len, sizeof in - 1 - len)) > 0) {
            len += (size_t)r;
            in[len] = '\0';
            char *end;
            while ((end = strstr(in, "\r\n\r\n")) != NULL) {
                if (write(c, reply, sizeof reply - 1) < 0)
                    break;
                size_t used = (size_t)(end + 4 - in);
                memmove(in, in + used, len - used + 1);
                len -= used;
            }
        }
        close(c);
    }
}

Test(http_hardening, bench_http_skips_an_interim_100_continue) {
    int lport;
    int lfd = test_listen_loopback(&lport);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        serve_with_interim(lfd);
        _exit(0);
    }
    close(lfd);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", lport);
    bench_target t;
    cr_assert_eq(bench_http_target_new(&loop, url, 1, NULL, &t, err, sizeof err), 0, "%s", err);
    cr_assert_eq(bench_http_target_wait_connected(&t, 5000, err, sizeof err), 0, "%s", err);
    bench_result r;
    bench_load_opts o = {.rate = 200, .duration_s = 0.2};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    cr_expect_gt(r.count, 0);
    cr_expect_eq(r.errors, 0, "%llu of %llu requests failed", (unsigned long long)r.errors,
                 (unsigned long long)r.count);
    bench_result_clear(&r);
    bench_http_target_free(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&loop), 0);
    test_kill_wait(pid, SIGKILL);
}
