/*
 * test_http.c - the HTTP server of common/http.h over real sockets.
 *
 * Two kinds of server are used. Most tests start build/bin/hello-server with short limits and
 * timeouts. Tests about asynchronous handlers and graceful stop fork a small app server built
 * here on http.h, whose handlers report on a pipe when they run and can be held until the test
 * releases them with SIGUSR1, so the tests wait on events instead of sleeping:
 *
 *   GET /now        answers at once: "now #N"
 *   GET /hold       answers when the process gets SIGUSR1: "released #N"
 *   POST /echo      answers with the request body
 *
 * N counts answers in the order handlers gave them, so a test can see that a response was
 * delivered in request order although its handler answered later than the next one's. Every
 * handler writes one line ("now", "held", "echo") on the pipe when it runs, and "released" when
 * a held request is answered; SIGTERM makes the app stop with a grace period and print
 * "stopping".
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "http.h"
#include "sd.h"
#include "support.h"

/* ---- Helpers --------------------------------------------------------------------------------- */

/* Starts hello-server on a free port with the given extra arguments (NULL-terminated). */
static pid_t start_hello(int *port, const char *const *extra) {
    const char *argv[32] = {"hello-server", "--listen", "127.0.0.1:0"};
    int argc = 3;
    for (; extra && *extra; extra++)
        argv[argc++] = *extra;
    argv[argc] = NULL;
    bench_server s = test_server_start(argv);
    *port = s.port;
    return s.pid;
}

/* The limits most tests run against: small, so each one is quick to hit. */
static const char *const short_limits[] = {
    "--header-timeout-ms", "300", "--max-header-bytes", "1024", "--max-body-bytes", "1024", NULL};

/* True when the response header block has a line starting with prefix (case-insensitive). */
static bool has_header(const char *response, const char *prefix) {
    size_t n = strlen(prefix);
    for (const char *p = strstr(response, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, prefix, n) == 0)
            return true;
    return false;
}

/* True when the server closed fd: EOF or a reset before the 5 s receive timeout. */
static bool closed_by_server(int fd) {
    char c;
    ssize_t r = recv(fd, &c, 1, 0);
    return r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE));
}

static void send_text(int fd, const char *text) {
    test_write_all(fd, text, strlen(text));
}

static bool still_running(pid_t pid) {
    int status;
    return waitpid(pid, &status, WNOHANG) == 0;
}

static void expect_exit_0(pid_t pid) {
    int status = test_wait_exit(pid, 10000);
    cr_assert_neq(status, -1, "the server did not exit");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the server did not exit with 0");
}

/* Checks an RFC 9457 body: type, title and status members. */
static void expect_problem(const char *response, const char *body, int status) {
    cr_assert(has_header(response, "Content-Type: application/problem+json"),
              "not problem+json:\n%s", response);
    json_error_t err;
    json_t *j = json_loads(body, 0, &err);
    cr_assert_not_null(j, "the body is not JSON: %s", body);
    cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "about:blank");
    cr_assert_not_null(json_string_value(json_object_get(j, "title")));
    cr_assert_eq(json_integer_value(json_object_get(j, "status")), status);
    json_decref(j);
}

/* ---- The app server -------------------------------------------------------------------------- */

typedef struct app {
    int out; /* the pipe the handlers report on */
    int answered;
    sd_http_req *held[16];
    int nheld;
    int grace_ms;
    sd_http_server *srv;
    uv_signal_t usr1, term;
} app;

static void app_say(app *a, const char *line) {
    dprintf(a->out, "%s\n", line);
}

static void app_respond(app *a, sd_http_req *req, const char *what) {
    char body[64];
    int n = snprintf(body, sizeof body, "%s #%d", what, ++a->answered);
    sd_http_req_respond(req, 200, "text/plain", body, (size_t)n);
}

static void now_cb(sd_http_req *req, void *udata) {
    app_say(udata, "now");
    app_respond(udata, req, "now");
}

static void hold_cb(sd_http_req *req, void *udata) {
    app *a = udata;
    if (a->nheld == (int)(sizeof a->held / sizeof a->held[0])) {
        sd_http_req_respond(req, 503, NULL, NULL, 0);
        return;
    }
    a->held[a->nheld++] = req;
    app_say(a, "held");
}

static void echo_cb(sd_http_req *req, void *udata) {
    app_say(udata, "echo");
    size_t len;
    const char *body = sd_http_req_body(req, &len);
    sd_http_req_respond(req, 200, "text/plain", body, len);
}

static void app_release(app *a) {
    for (int i = 0; i < a->nheld; i++) {
        app_respond(a, a->held[i], "released");
        a->held[i] = NULL;
        app_say(a, "released");
    }
    a->nheld = 0;
}

static void on_usr1(uv_signal_t *h, int signum) {
    app_release(h->data);
}

/* Requests still held when the server is done belong to closed connections: answering them
 * exercises the detached path (the answers are dropped). */
static void on_done(sd_http_server *srv, void *udata) {
    app *a = udata;
    app_release(a);
    uv_close((uv_handle_t *)&a->usr1, NULL);
    uv_close((uv_handle_t *)&a->term, NULL);
}

static void on_term(uv_signal_t *h, int signum) {
    app *a = h->data;
    sd_http_server_stop(a->srv, a->grace_ms, on_done, a);
    app_say(a, "stopping");
}

/* The child's whole life: print the port on out, serve until stopped, then exit 0. */
static void app_main(int out, int grace_ms, int max_pipelined) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    app a = {.out = out, .grace_ms = grace_ms};
    sd_http_opts opts;
    sd_http_opts_default(&opts);
    opts.max_pipelined = max_pipelined;
    a.srv = sd_http_server_new(&loop, &opts);
    sd_http_server_route(a.srv, "GET", "/now", now_cb, &a);
    sd_http_server_route(a.srv, "GET", "/hold", hold_cb, &a);
    sd_http_server_route(a.srv, "POST", "/echo", echo_cb, &a);
    if (sd_http_server_listen(a.srv, "127.0.0.1:0") != 0)
        _exit(1);
    uv_signal_init(&loop, &a.usr1);
    uv_signal_init(&loop, &a.term);
    a.usr1.data = a.term.data = &a;
    uv_signal_start(&a.usr1, on_usr1, SIGUSR1);
    uv_signal_start(&a.term, on_term, SIGTERM);
    test_serve_and_exit(&loop, a.srv, out);
}

typedef struct app_proc {
    pid_t pid;
    int port;
    int lines; /* the pipe of handler reports */
} app_proc;

/* The arguments of app_main, for test_fork_server. */
typedef struct app_args {
    int grace_ms;
    int max_pipelined;
} app_args;

static void app_child(int out, void *arg) {
    const app_args *a = arg;
    app_main(out, a->grace_ms, a->max_pipelined);
}

static app_proc start_app(int grace_ms, int max_pipelined) {
    app_args args = {.grace_ms = grace_ms, .max_pipelined = max_pipelined};
    app_proc p;
    p.pid = test_fork_server(app_child, &args, &p.port, &p.lines);
    return p;
}

/* Waits for the app to report that a handler ran. */
static void expect_line(app_proc *p, const char *want) {
    char line[32];
    cr_assert_geq(test_read_line(p->lines, line, sizeof line, 5000), 0, "no '%s' from the app",
                  want);
    cr_assert_str_eq(line, want);
}

/* The N of a "what #N" body. */
static int answer_number(const char *body, const char *what) {
    size_t n = strlen(what);
    cr_assert_eq(strncmp(body, what, n), 0, "expected a '%s' answer, got '%s'", what, body);
    cr_assert_eq(strncmp(body + n, " #", 2), 0);
    return atoi(body + n + 2);
}

/* ---- Suites ---------------------------------------------------------------------------------- */

/* Suite http runs each test against a hello-server with short_limits; suite http_app tests
 * start the server they need themselves. */
static pid_t hello;
static int port;
static char buf[16384];
static const char *body;

static void stop_hello(pid_t pid) {
    int status = test_kill_wait(pid, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "hello-server did not exit 0 on SIGTERM");
}

static void hello_start(void) {
    hello = start_hello(&port, short_limits);
}

static void hello_stop(void) {
    stop_hello(hello);
}

TestSuite(http, .init = hello_start, .fini = hello_stop, .timeout = 30);
TestSuite(http_app, .timeout = 30);

/* ---- Keep-alive and pipelining --------------------------------------------------------------- */

Test(http, keep_alive_serves_two_requests_on_one_connection) {
    int fd = test_tcp_connect(port);
    for (int i = 0; i < 2; i++) {
        send_text(fd, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
        cr_assert_str_eq(body, "ok");
        cr_assert(!has_header(buf, "Connection: close"));
    }
    close(fd);
}

Test(http, pipelined_requests_are_answered_in_order) {
    int fd = test_tcp_connect(port);
    const char *req = "GET /hello HTTP/1.1\r\n\r\n"
                      "GET /healthz HTTP/1.1\r\n\r\n"
                      "GET /nope HTTP/1.1\r\n\r\n";
    send_text(fd, req);
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert_str_eq(body, "ok");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert_str_eq(body, "{\"status\":\"ok\"}");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 404);
    close(fd);
}

Test(http, http10_without_keep_alive_is_closed_after_the_response) {
    int fd = test_tcp_connect(port);
    send_text(fd, "GET /hello HTTP/1.0\r\n\r\n");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert(has_header(buf, "Connection: close"));
    cr_assert(closed_by_server(fd));
    close(fd);
}

Test(http, http10_keep_alive_is_confirmed_and_kept) {
    int fd = test_tcp_connect(port);
    for (int i = 0; i < 2; i++) {
        const char *req = "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        send_text(fd, req);
        cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
        cr_assert(has_header(buf, "Connection: keep-alive"));
    }
    close(fd);
}

/* The first handler answers last, yet its response is delivered first. */
Test(http_app, slow_first_request_is_still_answered_first) {
    app_proc app = start_app(2000, 64);
    int fd = test_tcp_connect(app.port);
    const char *req = "GET /hold HTTP/1.1\r\n\r\n"
                      "GET /now HTTP/1.1\r\n\r\n"
                      "GET /now HTTP/1.1\r\n\r\n";
    send_text(fd, req);
    expect_line(&app, "held");
    expect_line(&app, "now");
    expect_line(&app, "now");
    kill(app.pid, SIGUSR1);
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    int first = answer_number(body, "released");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    int second = answer_number(body, "now");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    int third = answer_number(body, "now");
    cr_assert(second < third && third < first, "answers %d %d %d", first, second, third);
    close(fd);
    kill(app.pid, SIGTERM);
    expect_exit_0(app.pid);
}

/* With at most 2 requests queued, the parser pauses behind the held one and resumes when it
 * is answered; bodies split across that pause still arrive whole. */
Test(http_app, pipelining_limit_pauses_and_resumes_in_order) {
    app_proc app = start_app(2000, 2);
    int fd = test_tcp_connect(app.port);
    const char *req = "GET /hold HTTP/1.1\r\n\r\n"
                      "GET /now HTTP/1.1\r\n\r\n"
                      "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nfirst"
                      "POST /echo HTTP/1.1\r\nContent-Length: 6\r\n\r\nsecond"
                      "GET /now HTTP/1.1\r\n\r\n";
    send_text(fd, req);
    expect_line(&app, "held");
    expect_line(&app, "now");
    kill(app.pid, SIGUSR1);
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    answer_number(body, "released");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    answer_number(body, "now");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert_str_eq(body, "first");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert_str_eq(body, "second");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    answer_number(body, "now");
    close(fd);
    kill(app.pid, SIGTERM);
    expect_exit_0(app.pid);
}

/* A client that resets its connection while the handler runs: the request stays valid, the
 * late answer is dropped, and nothing leaks (the app checks for leaks under ASan). */
Test(http_app, answer_after_client_reset_is_dropped) {
    app_proc app = start_app(2000, 64);
    int fd = test_tcp_connect(app.port);
    send_text(fd, "GET /hold HTTP/1.1\r\n\r\n");
    expect_line(&app, "held");
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    close(fd);
    cr_assert_eq(test_http_exchange(app.port, "GET /now HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    cr_assert_eq(answer_number(body, "now"), 1);
    expect_line(&app, "now");
    kill(app.pid, SIGUSR1);
    expect_line(&app, "released");
    cr_assert_eq(test_http_exchange(app.port, "GET /now HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    cr_assert_eq(answer_number(body, "now"), 3, "the held request was not answered");
    kill(app.pid, SIGTERM);
    expect_exit_0(app.pid);
}

/* ---- Limits and bad input -------------------------------------------------------------------- */

/* Sends req on a new connection: the answer is status with a problem+json body, and the server
 * closes the connection. */
static void expect_refused_and_closed(const char *req, int status) {
    int fd = test_tcp_connect(port);
    test_write_all(fd, req, strlen(req));
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), status);
    expect_problem(buf, body, status);
    cr_assert(closed_by_server(fd));
    close(fd);
}

Test(http, oversized_header_gets_431) {
    char req[4096];
    snprintf(req, sizeof req, "GET /hello HTTP/1.1\r\nX-Big: %02000d\r\n\r\n", 0);
    expect_refused_and_closed(req, 431);
}

Test(http, oversized_target_gets_414) {
    char req[4096];
    snprintf(req, sizeof req, "GET /hello?q=%02000d HTTP/1.1\r\n\r\n", 0);
    expect_refused_and_closed(req, 414);
}

/* http_parser counts the header as it reads it but hands over the target only at its end or at
 * the end of a read. With a limit close to http_parser's own ceiling, a target longer than a
 * read must still trip ours (414) before the parser's (which would answer 431). */
Test(http_app, target_longer_than_a_read_gets_414_under_a_large_header_limit) {
    const char *const args[] = {"--max-header-bytes", "70000", NULL};
    hello = start_hello(&port, args);
    enum { TARGET = 200000 };
    static char req[TARGET + 64];
    memcpy(req, "GET /", 5);
    memset(req + 5, 'a', TARGET);
    int n = 5 + TARGET + snprintf(req + 5 + TARGET, 64, " HTTP/1.1\r\n\r\n");
    int fd = test_tcp_connect(port);
    test_write_all(fd, req, (size_t)n);
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 414);
    expect_problem(buf, body, 414);
    close(fd);
    stop_hello(hello);
}

Test(http, oversized_body_gets_413) {
    const char *req = "POST /hello HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
    int fd = test_tcp_connect(port);
    send_text(fd, req);
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 413);
    expect_problem(buf, body, 413);
    cr_assert(has_header(buf, "Connection: close"));
    close(fd);
}

Test(http, chunked_body_gets_411) {
    const char *req = "POST /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n0\r\n\r\n";
    cr_assert_eq(test_http_exchange(port, req, buf, sizeof buf, &body), 411);
    expect_problem(buf, body, 411);
}

Test(http, malformed_request_line_gets_400_problem_and_close) {
    expect_refused_and_closed("HELLO THERE\r\n\r\n", 400);
}

Test(http, unknown_path_gets_404_and_wrong_method_405) {
    cr_assert_eq(test_http_exchange(port, "GET /nope HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 404);
    expect_problem(buf, body, 404);
    cr_assert_eq(test_http_exchange(port, "DELETE /hello HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 405);
    expect_problem(buf, body, 405);
    cr_assert(has_header(buf, "Allow: GET, HEAD"), "no Allow header:\n%s", buf);
}

Test(http, head_gets_the_headers_without_the_body) {
    int fd = test_tcp_connect(port);
    send_text(fd, "HEAD /hello HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
    /* The HEAD response announces 2 bytes but carries none, so it is read as headers only. */
    char head[1024];
    size_t n = 0;
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
        cr_assert_eq(recv(fd, head + n, 1, 0), 1);
        n++;
    }
    head[n] = '\0';
    cr_assert_eq(strncmp(head, "HTTP/1.1 200 ", 13), 0);
    cr_assert(has_header(head, "Content-Length: 2"));
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert_str_eq(body, "{\"status\":\"ok\"}");
    close(fd);
}

Test(http, garbage_bytes_do_not_stop_the_server) {
    static const char junk[] = "\x00\x01\xff\xfe GET \r\n\r\n\x7f\x80 HTTP/9.9\r\n";
    for (int i = 0; i < 20; i++) {
        int fd = test_tcp_connect(port);
        test_write_all(fd, junk + i % 8, sizeof junk - 1 - i % 8);
        close(fd);
    }
    /* A request cut off in the middle of a header, then the client vanishes. */
    int fd = test_tcp_connect(port);
    send_text(fd, "GET /hello HTTP/1.1\r\nHost: ex");
    close(fd);
    cr_assert_eq(test_http_exchange(port, "GET /hello HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    cr_assert(still_running(hello));
}

/* ---- Timeouts -------------------------------------------------------------------------------- */

Test(http, slow_loris_is_cut_off_while_others_are_served) {
    int slow = test_tcp_connect(port);
    send_text(slow, "GET /hello HTTP/1.1\r\n");
    /* Trickle a header one byte at a time; each poll both paces the bytes and notices the
     * server closing the connection. The header timeout (300 ms) must end it long before the
     * header does. */
    const char *header = "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    bool cut_off = false;
    for (size_t i = 0; header[i] && !cut_off; i++) {
        if (send(slow, header + i, 1, MSG_NOSIGNAL) != 1) {
            cut_off = true;
            break;
        }
        struct pollfd p = {.fd = slow, .events = POLLIN};
        if (poll(&p, 1, 50) == 1)
            cut_off = closed_by_server(slow);
        /* Meanwhile another client is served normally. */
        if (i == 2)
            cr_assert_eq(
                test_http_exchange(port, "GET /hello HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                200);
    }
    cr_assert(cut_off, "the slow client was never cut off");
    close(slow);
    cr_assert_eq(test_http_exchange(port, "GET /metrics HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    cr_assert_not_null(strstr(body, "http_connection_timeouts_total{phase=\"header\"} 1\n"));
}

Test(http_app, idle_keep_alive_connection_is_closed) {
    const char *const args[] = {"--idle-timeout-ms", "200", NULL};
    hello = start_hello(&port, args);
    int fd = test_tcp_connect(port);
    send_text(fd, "GET /hello HTTP/1.1\r\n\r\n");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    cr_assert(closed_by_server(fd), "the idle connection was not closed");
    close(fd);
    stop_hello(hello);
}

Test(http_app, many_idle_connections_do_not_block_a_new_request) {
    hello = start_hello(&port, NULL);
    enum { N = 500 };
    static int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = test_tcp_connect(port);
    /* Half of them even started a request. */
    for (int i = 0; i < N; i += 2)
        send_text(fds[i], "GET /hel");
    cr_assert_eq(test_http_exchange(port, "GET /hello HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    /* The idle ones are still there and still served. */
    send_text(fds[N - 1], "GET /hello HTTP/1.1\r\n\r\n");
    cr_assert_eq(test_http_read_response(fds[N - 1], buf, sizeof buf, &body), 200);
    send_text(fds[0], "lo HTTP/1.1\r\n\r\n");
    cr_assert_eq(test_http_read_response(fds[0], buf, sizeof buf, &body), 200);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    stop_hello(hello);
}

Test(http_app, connections_over_the_limit_are_closed_at_once) {
    const char *const args[] = {"--max-connections", "2", NULL};
    hello = start_hello(&port, args);
    int a = test_tcp_connect(port), b = test_tcp_connect(port);
    /* Answered requests prove both were accepted before the third arrives. */
    for (int i = 0; i < 2; i++) {
        send_text(i ? b : a, "GET /hello HTTP/1.1\r\n\r\n");
        cr_assert_eq(test_http_read_response(i ? b : a, buf, sizeof buf, &body), 200);
    }
    int c = test_tcp_connect(port);
    cr_assert(closed_by_server(c), "a third connection was kept");
    send_text(a, "GET /hello HTTP/1.1\r\n\r\n");
    cr_assert_eq(test_http_read_response(a, buf, sizeof buf, &body), 200);
    close(a);
    close(b);
    close(c);
    stop_hello(hello);
}

/* ---- Built-in routes ------------------------------------------------------------------------- */

Test(http, healthz_reports_ok) {
    cr_assert_eq(test_http_exchange(port, "GET /healthz HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    cr_assert(has_header(buf, "Content-Type: application/json"));
    cr_assert_str_eq(body, "{\"status\":\"ok\"}");
}

Test(http, metrics_count_requests_by_route_and_status) {
    for (int i = 0; i < 2; i++)
        cr_assert_eq(test_http_exchange(port, "GET /hello HTTP/1.1\r\n\r\n", buf, sizeof buf, NULL),
                     200);
    cr_assert_eq(test_http_exchange(port, "GET /x HTTP/1.1\r\n\r\n", buf, sizeof buf, NULL), 404);
    cr_assert_eq(test_http_exchange(port, "GET /metrics HTTP/1.1\r\n\r\n", buf, sizeof buf, &body),
                 200);
    cr_assert(has_header(buf, "Content-Type: text/plain; version=0.0.4"));
    cr_assert_not_null(strstr(body, "\nhttp_requests_total{route=\"/hello\",status=\"200\"} 2\n"),
                       "%s", body);
    cr_assert_not_null(
        strstr(body, "\nhttp_requests_total{route=\"unmatched\",status=\"404\"} 1\n"));
    cr_assert_not_null(strstr(body, "# TYPE http_request_duration_seconds histogram\n"));
    cr_assert_not_null(
        strstr(body, "\nhttp_request_duration_seconds_bucket{route=\"/hello\",le=\"+Inf\"} 2\n"));
    cr_assert_not_null(strstr(body, "\nhttp_request_duration_seconds_count{route=\"/hello\"} 2\n"));
}

/* ---- Graceful stop --------------------------------------------------------------------------- */

static bool connect_refused(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    return r != 0 && e == ECONNREFUSED;
}

Test(http_app, graceful_stop_finishes_the_request_in_flight) {
    app_proc app = start_app(5000, 64);
    int busy = test_tcp_connect(app.port);
    send_text(busy, "GET /hold HTTP/1.1\r\n\r\n");
    expect_line(&app, "held");
    int idle = test_tcp_connect(app.port);
    kill(app.pid, SIGTERM);
    expect_line(&app, "stopping");
    cr_assert(connect_refused(app.port), "still accepting after the stop");
    cr_assert(closed_by_server(idle), "the idle connection was kept open");
    kill(app.pid, SIGUSR1);
    cr_assert_eq(test_http_read_response(busy, buf, sizeof buf, &body), 200);
    answer_number(body, "released");
    cr_assert(has_header(buf, "Connection: close"));
    cr_assert(closed_by_server(busy));
    close(busy);
    close(idle);
    expect_exit_0(app.pid);
}

Test(http_app, grace_period_end_closes_unanswered_requests) {
    app_proc app = start_app(100, 64);
    int fd = test_tcp_connect(app.port);
    send_text(fd, "GET /hold HTTP/1.1\r\n\r\n");
    expect_line(&app, "held");
    kill(app.pid, SIGTERM);
    expect_line(&app, "stopping");
    /* No response ever comes: the connection closes when the grace period ends, and the
     * handler's late answer (given in the done callback) is dropped. */
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), -1);
    close(fd);
    expect_exit_0(app.pid);
}

Test(http_app, sigterm_stops_with_status_0_with_connections_open) {
    hello = start_hello(&port, NULL);
    int fd = test_tcp_connect(port);
    send_text(fd, "GET /hello HTTP/1.1\r\n\r\n");
    cr_assert_eq(test_http_read_response(fd, buf, sizeof buf, &body), 200);
    kill(hello, SIGTERM);
    cr_assert(closed_by_server(fd));
    close(fd);
    expect_exit_0(hello);
}
