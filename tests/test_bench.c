/*
 * test_bench.c - the load generator, the HTTP load target and the `bench` command.
 *
 * The load generator is tested with in-process targets whose behaviour is known exactly (they
 * complete at once, fail on a pattern, or hold operations back), so the assertions are about
 * counts and flags, not about time. The HTTP target runs against a real local HTTP server: a
 * small poll() server in a forked child, bound to 127.0.0.1 on a free port and killed by its pid
 * at the end. No assertion depends on the machine's speed (the suite must pass next to CPU
 * hogs): rates and latencies are the business of `bench`, the tests check what was scheduled,
 * sent, counted and decided.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "../bench/http_client.h" /* not common/http_client.h, which -I finds first */
#include "report.h"
#include "support.h"

/* ---- A local HTTP server in a child process ------------------------------------------------ */

/* How the server treats connections. */
enum {
    SERVE_NORMAL,      /* answer requests as described at serve_forever() */
    SERVE_ACCEPT_CLOSE /* accept each connection and close it at once, unanswered */
};

/* The number of connections accepted, in memory shared with the test process. */
static volatile uint64_t *server_accepts;

/* Drops up to *skip bytes of request body from the front of buf. */
static void skip_body(char *buf, size_t *len, size_t *skip) {
    size_t drop = *skip < *len ? *skip : *len;
    memmove(buf, buf + drop, *len - drop + 1);
    *len -= drop;
    *skip -= drop;
}

/* The Content-Length of the request whose header ends at end, or 0. */
static size_t content_length(const char *req, const char *end) {
    for (const char *h = strstr(req, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n"))
        if (strncasecmp(h + 2, "Content-Length:", 15) == 0)
            return strtoull(h + 17, NULL, 10);
    return 0;
}

/* Answers by path: /fail -> 503, /close -> 200 and closes the connection, /hang -> never
 * answers, /slow -> 200 after 20 ms (the whole server waits: use one connection), anything
 * else -> 200 "ok"; a request with the header "X-Fail: yes" -> 503; one that does not start
 * with "GET " or "POST " (bytes sent twice, or left over from a body) -> 400. One request at a time
 * per connection, as the client sends them. Every answer is sent as soon as the request's header
 * has arrived, before its body (which is then read and dropped), as RFC 9112 allows. */
static void serve_forever(int lfd, int mode) {
    enum { MAX = 256 };
    struct pollfd fds[MAX];
    static char buf[MAX][4096];
    size_t len[MAX], skip[MAX];
    int n = 1;
    fds[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
    for (;;) {
        if (poll(fds, (nfds_t)n, -1) < 0)
            continue;
        if ((fds[0].revents & POLLIN) && n < MAX) {
            int c = accept(lfd, NULL, NULL);
            if (c >= 0) {
                (*server_accepts)++;
                if (mode == SERVE_ACCEPT_CLOSE) {
                    close(c);
                } else {
                    fds[n] = (struct pollfd){.fd = c, .events = POLLIN};
                    skip[n] = 0;
                    len[n++] = 0;
                }
            }
        }
        for (int i = 1; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t got = read(fds[i].fd, buf[i] + len[i], sizeof buf[i] - len[i] - 1);
            int drop = got <= 0;
            if (got > 0) {
                len[i] += (size_t)got;
                buf[i][len[i]] = '\0';
                skip_body(buf[i], &len[i], &skip[i]);
            }
            char *end;
            while (!drop && (end = strstr(buf[i], "\r\n\r\n")) != NULL) {
                const char *reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                char *fail_header = strstr(buf[i], "\r\nX-Fail: yes\r\n");
                if (strncmp(buf[i], "GET ", 4) != 0 && strncmp(buf[i], "POST ", 5) != 0)
                    reply = "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad";
                else if (strncmp(buf[i], "GET /fail", 9) == 0 || (fail_header && fail_header < end))
                    reply = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nfail";
                else if (strncmp(buf[i], "GET /close", 10) == 0)
                    reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                else if (strncmp(buf[i], "GET /hang", 9) == 0)
                    reply = NULL;
                else if (strncmp(buf[i], "GET /slow", 9) == 0)
                    usleep(20000); /* the service time being simulated, not synchronisation */
                if (reply && write(fds[i].fd, reply, strlen(reply)) < 0)
                    drop = 1;
                if (reply && strstr(reply, "Connection: close"))
                    drop = 1;
                skip[i] = content_length(buf[i], end);
                size_t used = (size_t)(end + 4 - buf[i]);
                memmove(buf[i], buf[i] + used, len[i] - used + 1);
                len[i] -= used;
                skip_body(buf[i], &len[i], &skip[i]);
            }
            if (drop) {
                close(fds[i].fd);
                fds[i] = fds[n - 1];
                len[i] = len[n - 1];
                skip[i] = skip[n - 1];
                memcpy(buf[i], buf[n - 1], len[i] + 1);
                n--;
                i--;
            }
        }
    }
}

/* Starts the server in `mode`; returns its pid and the port it listens on. */
static pid_t server_start_mode(int *port, int mode) {
    if (server_accepts == NULL) {
        void *m = mmap(NULL, sizeof *server_accepts, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(m, MAP_FAILED);
        server_accepts = m;
    }
    *server_accepts = 0;
    int fd = test_listen_loopback(port);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        serve_forever(fd, mode);
        _exit(0);
    }
    close(fd);
    return pid;
}

static pid_t server_start(int *port) {
    return server_start_mode(port, SERVE_NORMAL);
}

/* Runs one load against http://127.0.0.1:port<path> with the request options hopts, on a fresh
 * loop. */
static void http_load_with(int port, const char *path, int conns, const bench_http_opts *hopts,
                           const bench_load_opts *opts, bench_result *out,
                           bench_http_stats *stats) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    bench_target t;
    char err[256];
    cr_assert_eq(bench_http_target_new(&loop, url, conns, hopts, &t, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(bench_load_run(&loop, &t, opts, out), 0);
    if (stats)
        bench_http_target_stats(&t, stats);
    bench_http_target_free(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "the target closed every handle");
}

/* http_load_with a plain GET and a timeout. */
static void http_load(int port, const char *path, int conns, int timeout_ms,
                      const bench_load_opts *opts, bench_result *out, bench_http_stats *stats) {
    bench_http_opts hopts = {.timeout_ms = timeout_ms};
    http_load_with(port, path, conns, &hopts, opts, out, stats);
}

/* ---- In-process targets -------------------------------------------------------------------- */

/* Completes every operation as soon as the loop comes round; ctx is a bench_later. */
static void instant_issue(void *ctx, void *token, bench_done_fn *done) {
    bench_later_done(ctx, token, done, BENCH_OK);
}

/* The instant target on loop; instant_stop() frees it and closes the loop. */
static bench_target instant_start(uv_loop_t *loop) {
    return (bench_target){bench_later_new(loop), instant_issue};
}

static void instant_stop(uv_loop_t *loop, bench_target *t) {
    bench_later_free(t->ctx);
    uv_run(loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(loop), 0, "every handle was closed");
}

typedef struct pattern_target {
    bench_later *later;
    uint64_t issued, status_errors, kind5_errors;
} pattern_target;

/* Fails every 4th operation as a wrong answer and every 10th (not 4th) with its own kind 5. */
static void pattern_issue(void *ctx, void *token, bench_done_fn *done) {
    pattern_target *p = ctx;
    p->issued++;
    int err = BENCH_OK;
    if (p->issued % 4 == 0) {
        p->status_errors++;
        err = BENCH_ERR_STATUS;
    } else if (p->issued % 10 == 0) {
        p->kind5_errors++;
        err = 5;
    }
    bench_later_done(p->later, token, done, err);
}

/* Holds operations until a 1 ms timer completes all of them, recording the most held at once. */
typedef struct held_target {
    uv_timer_t timer;
    void *tokens[1024];
    bench_done_fn *done[1024];
    int n, max_n;
} held_target;

static void held_issue(void *ctx, void *token, bench_done_fn *done) {
    held_target *h = ctx;
    cr_assert_lt(h->n, 1024);
    h->tokens[h->n] = token;
    h->done[h->n++] = done;
    if (h->n > h->max_n)
        h->max_n = h->n;
}

static void held_release_cb(uv_timer_t *timer) {
    held_target *h = timer->data;
    int n = h->n;
    h->n = 0;
    for (int i = 0; i < n; i++)
        h->done[i](h->tokens[i], BENCH_OK);
}

/* A target that holds every operation until its timer, every millisecond, completes them all. */
static bench_target held_start(uv_loop_t *loop, held_target *h) {
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_start(&h->timer, held_release_cb, 1, 1);
    return (bench_target){h, held_issue};
}

/* Closes the timer and the loop. */
static void held_stop(uv_loop_t *loop, held_target *h) {
    uv_close((uv_handle_t *)&h->timer, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
}

/* ---- The load generator -------------------------------------------------------------------- */

/* ---- The callback rule: done() never runs inside the call that started the operation -------- */

typedef struct counted {
    int calls, last_err;
} counted;

static void counted_done(void *token, int err) {
    counted *c = token;
    c->calls++;
    c->last_err = err;
}

Test(load, a_later_completion_runs_from_the_loop_not_inside_the_call) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_later *q = bench_later_new(&loop);
    counted a = {0}, b = {0};
    bench_later_done(q, &a, counted_done, BENCH_ERR_STATUS);
    cr_expect_eq(a.calls, 0, "called inside bench_later_done");
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_expect_eq(a.calls, 1, "one iteration, no waiting for I/O");
    cr_expect_eq(a.last_err, BENCH_ERR_STATUS);
    /* Freed with a completion queued: it still comes, from the loop. */
    bench_later_done(q, &b, counted_done, BENCH_OK);
    bench_later_free(q);
    cr_expect_eq(b.calls, 0, "called inside bench_later_free");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(a.calls, 1);
    cr_expect_eq(b.calls, 1);
    cr_expect_eq(uv_loop_close(&loop), 0);
}

/* A target that breaks the rule is stopped at once: it would recurse through the generator. */
static void rude_issue(void *ctx, void *token, bench_done_fn *done) {
    done(token, BENCH_OK);
}

Test(load, a_target_that_completes_inside_issue_is_stopped, .signal = SIGABRT) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_target t = {NULL, rude_issue};
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 1, .duration_s = 0.1};
    bench_load_run(&loop, &t, &o, &r);
}

Test(load, bad_options_are_refused, .timeout = 30) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_target t = instant_start(&loop);
    bench_result r;
    bench_load_opts o = {.rate = 100, .duration_s = 0};
    cr_expect_eq(bench_load_run(&loop, &t, &o, &r), -EINVAL);
    o = (bench_load_opts){.rate = -1, .duration_s = 1};
    cr_expect_eq(bench_load_run(&loop, &t, &o, &r), -EINVAL);
    /* 1e9 / 1e-300 ns between operations is not a finite number. */
    o = (bench_load_opts){.rate = 1e-300, .duration_s = 1};
    cr_expect_eq(bench_load_run(&loop, &t, &o, &r), -EINVAL);
    instant_stop(&loop, &t);
}

Test(load, a_rate_too_low_for_a_second_operation_runs_one_and_ends, .timeout = 30) {
    /* The next due time, 1e20 ns away, does not fit in 64 bits: the schedule must end. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_target t = instant_start(&loop);
    bench_result r;
    bench_load_opts o = {.rate = 1e-11, .duration_s = 0.05};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    cr_expect_eq(r.count, 1);
    bench_result_clear(&r);
    o.poisson = 1;
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    cr_expect_eq(r.count, 1);
    bench_result_clear(&r);
    instant_stop(&loop, &t);
}

Test(load, open_loop_records_exactly_the_operations_scheduled_after_warmup) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_target t = instant_start(&loop);
    bench_result r;
    bench_load_opts o = {.rate = 2000, .duration_s = 1, .warmup_s = 0.2, .label = "x"};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    /* Operation n is due at n/2000 s: 400..2399 fall in [0.2 s, 1.2 s). */
    cr_expect_eq(r.count, 2000);
    cr_expect_eq(hdr_count(r.latency), 2000);
    cr_expect_eq(hdr_count(r.uncorrected), 2000);
    cr_expect_eq(r.errors, 0);
    cr_expect_eq(r.target_rate, 2000);
    cr_expect_str_eq(r.name, "x");
    bench_result_clear(&r);
    instant_stop(&loop, &t);
}

Test(load, errors_are_counted_by_kind) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    pattern_target p = {.later = bench_later_new(&loop)};
    bench_target t = {&p, pattern_issue};
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 1, .duration_s = 0.1};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    /* No warm-up and a closed loop: every operation issued is recorded. */
    cr_expect_eq(r.count, p.issued);
    cr_expect_geq(p.issued, 20, "enough to see both kinds");
    cr_expect_eq(r.errors_by_kind[BENCH_ERR_STATUS], p.status_errors);
    cr_expect_eq(r.errors_by_kind[5], p.kind5_errors);
    cr_expect_eq(r.errors, p.status_errors + p.kind5_errors);
    cr_expect_str_eq(bench_err_kind_name(BENCH_ERR_STATUS), "status");
    cr_expect_str_eq(bench_err_kind_name(5), "kind5");
    bench_result_clear(&r);
    bench_later_free(p.later);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&loop), 0);
}

Test(load, closed_loop_keeps_exactly_in_flight_operations) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    held_target h = {0};
    bench_target t = held_start(&loop, &h);
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 8, .duration_s = 0.2};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    cr_expect_eq(h.max_n, 8);
    cr_expect_eq(h.n, 0, "the run waited for every operation");
    cr_expect_eq(r.target_rate, 0);
    bench_result_clear(&r);
    held_stop(&loop, &h);
}

Test(load, capped_open_loop_that_falls_behind_says_so) {
    /* At most 8 in flight, each held about 1 ms: at most ~8,000/s, asked for 20,000/s. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    held_target h = {0};
    bench_target t = held_start(&loop, &h);
    bench_result r;
    bench_load_opts o = {.rate = 20000, .in_flight = 8, .duration_s = 0.3};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    cr_expect(r.below_target);
    cr_expect_leq(h.max_n, 8);
    /* Each operation waited at least as long from its due time as from its actual start. */
    for (double p = 0; p <= 100; p += 10)
        cr_expect_leq(hdr_percentile(r.uncorrected, p), hdr_percentile(r.latency, p));
    bench_result_clear(&r);
    held_stop(&loop, &h);
}

/* ---- The HTTP target against a real server ------------------------------------------------- */

/* The schedule, not the machine, decides how many requests a run makes: exactly rate x duration
 * in the measured window, all recorded. How fast they completed (the achieved rate, within 1%
 * of the target on an idle machine) is the machine's business: `bench selftest` reports it. */
Test(http, open_loop_sends_and_records_exactly_the_scheduled_requests) {
    int port;
    pid_t pid = server_start(&port);
    bench_result r;
    bench_load_opts o = {.rate = 2000, .duration_s = 2, .warmup_s = 0.5};
    bench_http_stats st;
    http_load(port, "/hello", 4, 2000, &o, &r, &st);
    cr_expect_eq(r.errors, 0);
    cr_expect_eq(r.count, 4000);
    cr_expect_eq(hdr_count(r.latency), 4000);
    cr_expect_eq(st.responses, 5000, "warm-up and measured requests, each answered once");
    for (double p = 0; p <= 100; p += 10)
        cr_expect_leq(hdr_percentile(r.uncorrected, p), hdr_percentile(r.latency, p));
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

Test(http, non_2xx_responses_are_status_errors) {
    int port;
    pid_t pid = server_start(&port);
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 2, .duration_s = 0.3};
    http_load(port, "/fail", 2, 2000, &o, &r, NULL);
    cr_expect_gt(r.count, 0);
    cr_expect_eq(r.errors, r.count);
    cr_expect_eq(r.errors_by_kind[BENCH_ERR_STATUS], r.count);
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

Test(http, connections_closed_by_the_server_are_reopened) {
    int port;
    pid_t pid = server_start(&port);
    bench_result r;
    bench_http_stats st;
    bench_load_opts o = {.rate = 500, .duration_s = 0.5};
    http_load(port, "/close", 2, 2000, &o, &r, &st);
    cr_expect_eq(r.errors, 0);
    cr_expect_geq(r.count, 240);
    cr_expect_geq(st.closed, r.count, "one close per response");
    cr_expect_geq(st.connects, st.closed);
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

Test(http, unanswered_requests_time_out) {
    int port;
    pid_t pid = server_start(&port);
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 2, .duration_s = 0.3};
    http_load(port, "/hang", 2, 100, &o, &r, NULL);
    cr_expect_gt(r.count, 0);
    cr_expect_eq(r.errors_by_kind[BENCH_ERR_TIMEOUT], r.count);
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

Test(http, a_response_before_the_whole_body_is_written_completes_the_request, .timeout = 30) {
    /* The server answers on the header; the 16 MB body is far more than the socket buffers
     * hold, so the client is still writing it when the response arrives. */
    int port;
    pid_t pid = server_start(&port);
    size_t body_len = 16u << 20;
    char *body = malloc(body_len);
    cr_assert_not_null(body);
    memset(body, 'a', body_len);
    bench_http_opts hopts = {
        .method = "POST", .body = body, .body_len = body_len, .timeout_ms = 5000};
    /* 1,000/s on one connection: the requests queue, so each response finds the next request
     * waiting to be sent at once, while the previous one is still being written. */
    bench_result r;
    bench_load_opts o = {.rate = 1000, .duration_s = 0.005};
    bench_http_stats st;
    http_load_with(port, "/upload", 1, &hopts, &o, &r, &st);
    cr_expect_eq(r.count, 5, "every request scheduled was counted");
    cr_expect_eq(r.errors, 0);
    cr_expect_eq(st.responses, 5);
    bench_result_clear(&r);
    free(body);
    test_kill_wait(pid, SIGKILL);
}

Test(http, uncorrected_latency_leaves_out_the_wait_for_a_connection, .timeout = 30) {
    /* One connection served in 20 ms a request can do 50/s; asked for 200/s, requests queue for
     * the connection. That wait belongs to the corrected latency only. */
    int port;
    pid_t pid = server_start(&port);
    bench_result r;
    bench_load_opts o = {.rate = 200, .duration_s = 0.5};
    http_load(port, "/slow", 1, 20000, &o, &r, NULL);
    cr_expect_eq(r.errors, 0);
    cr_expect_eq(r.count, 100);
    int64_t unc = hdr_percentile(r.uncorrected, 50), cor = hdr_percentile(r.latency, 50);
    cr_expect_lt(unc, cor / 2, "uncorrected p50 %lld us, corrected p50 %lld us", (long long)unc,
                 (long long)cor);
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

Test(http, the_timeout_counts_the_wait_for_a_connection, .timeout = 30) {
    /* One connection, a server that never answers, and a request every 50 ms: requests wait
     * for the connection, then wait for an answer. Both waits share one 200 ms budget, so each
     * request ends about 200 ms after it was issued. Were the budget to start only when a
     * request is sent, each would wait for all those before it (200 ms each, a new one every
     * 50 ms): the 24th would end some 3.6 s after it was issued. The bound sits between the two,
     * far from either, so that a loaded machine's delays do not matter. */
    int port;
    pid_t pid = server_start(&port);
    bench_result r;
    bench_load_opts o = {.rate = 20, .duration_s = 1.2};
    http_load(port, "/hang", 1, 200, &o, &r, NULL);
    cr_expect_eq(r.count, 24);
    cr_expect_eq(r.errors_by_kind[BENCH_ERR_TIMEOUT], r.count);
    cr_expect_lt(hdr_max(r.latency), 1200000, "max %lld us", (long long)hdr_max(r.latency));
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

Test(http, a_server_that_closes_at_once_is_reconnected_to_with_backoff, .timeout = 30) {
    int port;
    pid_t pid = server_start_mode(&port, SERVE_ACCEPT_CLOSE);
    bench_result r;
    bench_load_opts o = {.rate = 100, .duration_s = 1};
    http_load(port, "/", 2, 2000, &o, &r, NULL);
    uint64_t accepts = *server_accepts;
    cr_expect_gt(r.errors_by_kind[BENCH_ERR_CONNECT], 0);
    cr_expect_eq(r.errors, r.count);
    /* A backoff doubling from 10 ms to 1 s allows about 8 connects per connection a second;
     * reconnecting at once made thousands. */
    cr_expect_lt(accepts, 100, "%llu accepts in 1 s", (unsigned long long)accepts);
    cr_expect_gt(accepts, 0);
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

typedef struct extra_count {
    uint64_t calls, fails;
} extra_count;

/* Every third request asks the server to fail, with a header long enough to fill most of the
 * buffer; the others carry a short header of their own. */
static size_t every_third_fails(char *buf, size_t len, void *udata) {
    extra_count *x = udata;
    cr_assert_eq(len, BENCH_HTTP_EXTRA_MAX);
    if (++x->calls % 3 == 0) {
        x->fails++;
        return (size_t)snprintf(buf, len, "X-Pad: %0200d\r\nX-Fail: yes\r\n", 0);
    }
    return (size_t)snprintf(buf, len, "X-Seq: %llu\r\n", (unsigned long long)x->calls);
}

Test(http, extra_headers_are_added_to_each_request) {
    int port;
    pid_t pid = server_start(&port);
    extra_count x = {0};
    const char *fixed[] = {"X-Fixed: 1", NULL};
    bench_http_opts hopts = {.headers = fixed,
                             .timeout_ms = 2000,
                             .extra_headers = every_third_fails,
                             .extra_headers_udata = &x};
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 2, .duration_s = 0.3};
    http_load_with(port, "/hello", 2, &hopts, &o, &r, NULL);
    /* No warm-up, a closed loop: each request issued is recorded, and each called the hook once. */
    cr_expect_gt(r.count, 30);
    cr_expect_eq(x.calls, r.count);
    cr_expect_eq(r.errors_by_kind[BENCH_ERR_STATUS], x.fails, "the server saw %llu of %llu",
                 (unsigned long long)r.errors_by_kind[BENCH_ERR_STATUS],
                 (unsigned long long)x.fails);
    cr_expect_eq(r.errors, x.fails, "a request was malformed");
    bench_result_clear(&r);
    test_kill_wait(pid, SIGKILL);
}

static size_t sequence_header(char *buf, size_t len, void *udata) {
    extra_count *x = udata;
    return (size_t)snprintf(buf, len, "X-Seq: %llu\r\n", (unsigned long long)++x->calls);
}

/* A request with extra headers goes out in three pieces (the head, the extra headers, the rest);
 * with a body of 4 MB the socket takes only part of it at once, and the rest must follow from
 * where the first write stopped. Bytes sent twice would put stray body bytes before the next
 * request, which the server answers with 400. */
Test(http, a_request_with_extra_headers_and_a_large_body_is_sent_once, .timeout = 30) {
    int port;
    pid_t pid = server_start(&port);
    size_t body_len = 4u << 20;
    char *body = malloc(body_len);
    cr_assert_not_null(body);
    memset(body, 'a', body_len);
    extra_count x = {0};
    bench_http_opts hopts = {.method = "POST",
                             .body = body,
                             .body_len = body_len,
                             .timeout_ms = 5000,
                             .extra_headers = sequence_header,
                             .extra_headers_udata = &x};
    bench_result r;
    bench_load_opts o = {.rate = 0, .in_flight = 1, .duration_s = 0.2};
    http_load_with(port, "/upload", 1, &hopts, &o, &r, NULL);
    cr_expect_gt(r.count, 1, "at least two requests, so that a second one follows a body");
    cr_expect_eq(r.errors, 0, "%llu of %llu requests failed (400: bytes sent twice)",
                 (unsigned long long)r.errors, (unsigned long long)r.count);
    bench_result_clear(&r);
    free(body);
    test_kill_wait(pid, SIGKILL);
}

/* A target of two connections to a port nothing listens on; asserts that they were refused. */
static void refused_target(uv_loop_t *loop, bench_target *t) {
    uv_loop_init(loop);
    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", test_closed_port());
    cr_assert_eq(bench_http_target_new(loop, url, 2, NULL, t, err, sizeof err), 0);
    cr_assert_eq(bench_http_target_wait_connected(t, 2000, err, sizeof err), UV_ECONNREFUSED, "%s",
                 err);
}

Test(http, refused_connections_are_connect_errors) {
    uv_loop_t loop;
    bench_target t;
    refused_target(&loop, &t);
    bench_result r;
    bench_load_opts o = {.rate = 1000, .duration_s = 0.2};
    cr_assert_eq(bench_load_run(&loop, &t, &o, &r), 0);
    cr_expect_gt(r.count, 0);
    cr_expect_eq(r.errors_by_kind[BENCH_ERR_CONNECT], r.count);
    bench_result_clear(&r);
    bench_http_target_free(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&loop), 0);
}

/* With every connection refused and backing off, an operation fails at once, but its done()
 * still comes from the loop, never from inside issue(). */
Test(http, an_unreachable_server_fails_an_operation_from_the_loop) {
    uv_loop_t loop;
    bench_target t;
    refused_target(&loop, &t);
    counted c = {0};
    t.issue(t.ctx, &c, counted_done);
    cr_expect_eq(c.calls, 0, "done() ran inside issue()");
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_expect_eq(c.calls, 1);
    cr_expect_eq(c.last_err, BENCH_ERR_CONNECT);
    bench_http_target_free(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(c.calls, 1);
    cr_expect_eq(uv_loop_close(&loop), 0);
}

Test(http, bad_urls_are_refused_with_a_message) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_target t;
    char err[256];
    cr_expect_eq(bench_http_target_new(&loop, "https://127.0.0.1/", 1, NULL, &t, err, sizeof err),
                 -EPROTONOSUPPORT);
    cr_expect_not_null(strstr(err, "only http://"), "%s", err);
    cr_expect_eq(bench_http_target_new(&loop, "not a url", 1, NULL, &t, err, sizeof err), -EINVAL);
    const char *bad_header[] = {"NoColonHere", NULL};
    bench_http_opts o = {.headers = bad_header};
    cr_expect_eq(bench_http_target_new(&loop, "http://127.0.0.1/", 1, &o, &t, err, sizeof err),
                 -EINVAL);
    cr_expect_eq(bench_http_target_new(&loop, "http://127.0.0.1/", 0, NULL, &t, err, sizeof err),
                 -EINVAL);
    cr_expect_eq(uv_loop_close(&loop), 0, "a refused target leaves nothing on the loop");
}

/* ---- The bench command --------------------------------------------------------------------- */

/* Runs build/bin/bench with args (NULL-terminated, without the program) and `input` on stdin. */
static void run_bench(const char *input, const char *const *args, test_run_out *r) {
    test_run_program("bench", args, input, NULL, r);
}

static double jnum(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_number(v), "missing number '%s'", key);
    return json_number_value(v);
}

Test(cli, percentiles_of_one_to_hundred) {
    char input[1024] = "";
    for (int i = 1; i <= 100; i++)
        snprintf(input + strlen(input), sizeof input - strlen(input), "%d\n", i);
    static test_run_out r;
    run_bench(input, (const char *[]){"percentiles", NULL}, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    json_error_t e;
    json_t *o = json_loads(r.out, 0, &e);
    cr_assert_not_null(o, "not JSON: %s", r.out);
    cr_expect_eq(jnum(o, "count"), 100);
    cr_expect_eq(jnum(o, "min"), 1);
    cr_expect_eq(jnum(o, "p50"), 50);
    cr_expect_eq(jnum(o, "p90"), 90);
    cr_expect_eq(jnum(o, "p99"), 99);
    cr_expect_eq(jnum(o, "p99.9"), 100);
    cr_expect_eq(jnum(o, "p99.99"), 100);
    cr_expect_eq(jnum(o, "max"), 100);
    cr_expect_float_eq(jnum(o, "mean"), 50.5, 1e-9);
    json_decref(o);
}

Test(cli, percentiles_keeps_the_inputs_decimals) {
    static test_run_out r;
    run_bench("0.25\n1.5\n2.125\n", (const char *[]){"percentiles", "--unit", "ms", NULL}, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    json_t *o = json_loads(r.out, 0, NULL);
    cr_assert_not_null(o, "%s", r.out);
    cr_expect_float_eq(jnum(o, "min"), 0.25, 1e-12);
    cr_expect_float_eq(jnum(o, "p50"), 1.5, 1e-12);
    cr_expect_float_eq(jnum(o, "max"), 2.125, 1e-12);
    json_decref(o);
}

Test(cli, percentiles_names_the_bad_line) {
    static test_run_out r;
    run_bench("1\n2\nthree\n4\n", (const char *[]){"percentiles", NULL}, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_not_null(strstr(r.err, "line 3"), "stderr: %s", r.err);
    cr_expect_str_eq(r.out, "");
    run_bench("5\n-1\n", (const char *[]){"percentiles", NULL}, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_not_null(strstr(r.err, "line 2: negative"), "stderr: %s", r.err);
}

Test(cli, percentiles_of_nothing_is_count_zero) {
    static test_run_out r;
    run_bench("", (const char *[]){"percentiles", NULL}, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    json_t *o = json_loads(r.out, 0, NULL);
    cr_assert_not_null(o, "%s", r.out);
    cr_expect_eq(jnum(o, "count"), 0);
    json_decref(o);
}

Test(cli, usage_errors_exit_2_and_help_exits_0) {
    static test_run_out r;
    run_bench(NULL, (const char *[]){NULL}, &r);
    cr_expect_eq(r.status, 2);
    run_bench(NULL, (const char *[]){"--help", NULL}, &r);
    cr_expect_eq(r.status, 0);
    cr_expect_not_null(strstr(r.out, "usage: bench"));
    run_bench(NULL, (const char *[]){"frobnicate", NULL}, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_not_null(strstr(r.err, "unknown command"), "%s", r.err);
    const char *helps[] = {"run", "list", "http", "percentiles", "compare", "selftest"};
    for (size_t i = 0; i < sizeof helps / sizeof helps[0]; i++) {
        run_bench(NULL, (const char *[]){helps[i], "--help", NULL}, &r);
        cr_expect_eq(r.status, 0, "bench %s --help", helps[i]);
        cr_expect_not_null(strstr(r.out, "usage: bench"), "bench %s --help", helps[i]);
    }
    run_bench(NULL, (const char *[]){"http", "http://127.0.0.1:1/", NULL}, &r);
    cr_expect_eq(r.status, 2, "--rate is required");
    run_bench(NULL, (const char *[]){"http", "http://127.0.0.1:1/", "--rate", "x", NULL}, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_not_null(strstr(r.err, "--rate"), "%s", r.err);
    run_bench(NULL, (const char *[]){"run", "--duration", NULL}, &r);
    cr_expect_eq(r.status, 2);
    run_bench(NULL,
              (const char *[]){"http", "http://127.0.0.1:1/", "--rate", "1e-300", "--duration", "1",
                               NULL},
              &r);
    cr_expect_eq(r.status, 2, "a rate that schedules nothing: %s", r.err);
    cr_expect_not_null(strstr(r.err, "rate x duration"), "%s", r.err);
    run_bench(NULL, (const char *[]){"run", "--rate", "0.5", "--duration", "1", NULL}, &r);
    cr_expect_eq(r.status, 2, "%s", r.err);
    run_bench(NULL, (const char *[]){"http", "http://127.0.0.1:1/", "--rate", "0x10", NULL}, &r);
    cr_expect_eq(r.status, 2, "hexadecimal --rate: %s", r.err);
    run_bench(NULL,
              (const char *[]){"http", "http://127.0.0.1:1/", "--rate", "10", "--connections",
                               "1.5", NULL},
              &r);
    cr_expect_eq(r.status, 2, "fractional --connections: %s", r.err);
    cr_expect_not_null(strstr(r.err, "--connections"), "%s", r.err);
    run_bench(NULL, (const char *[]){"run", "no-such-scenario-prefix", NULL}, &r);
    cr_expect_eq(r.status, 2);
    const char *bad_in_flight[] = {"0", "2.5", "x", "100001"};
    for (size_t i = 0; i < 4; i++) {
        run_bench(NULL, (const char *[]){"run", "--in-flight", bad_in_flight[i], NULL}, &r);
        cr_expect_eq(r.status, 2, "--in-flight %s", bad_in_flight[i]);
        cr_expect_not_null(strstr(r.err, "--in-flight"), "%s", r.err);
    }
}

/* The rate limiter's scenario reports how many checks went into each script call; with three
 * in flight no call can hold more than three, with its own 50 it holds many more. */
static double checks_per_call(const char *err) {
    const char *p = strstr(err, " per call)");
    cr_assert_not_null(p, "no batching figure in: %s", err);
    while (p > err && p[-1] != '(')
        p--;
    return strtod(p, NULL);
}

Test(cli, run_in_flight_overrides_the_scenarios, .timeout = 60) {
    static test_run_out r;
    setenv("BENCH_PEERS", "0", 1); /* about our scenario only: no peer (node, npm) runs */
    test_target *server = test_target_start();
    const char *url = test_target_url(server);
    run_bench(NULL,
              (const char *[]){"run", "ratelimit.gcra.closed", "--in-flight", "3", "--duration",
                               "0.3", "--warmup", "0.1", "--redis", url, NULL},
              &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    double three = checks_per_call(r.err);
    run_bench(NULL,
              (const char *[]){"run", "ratelimit.gcra.closed", "--duration", "0.3", "--warmup",
                               "0.1", "--redis", url, NULL},
              &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    double fifty = checks_per_call(r.err);
    test_target_stop(server);
    cr_expect_leq(three, 3.0, "%.1f checks per call with 3 in flight", three);
    cr_expect_gt(fifty, 3.0, "%.1f checks per call with 50 in flight", fifty);
}

/* An open loop far above what the machine can do falls below its rate: exit status 1, unless
 * --below-target-ok (the main job's flag) says that is a result to read, not a failure. */
Test(cli, below_target_fails_the_run_unless_below_target_ok) {
    static test_run_out r;
    setenv("BENCH_PEERS", "0", 1);
    test_target *server = test_target_start();
    const char *url = test_target_url(server);
    /* A rate no build of the limiter reaches here, for a bounded number of operations (200k:
     * an open loop that falls behind still sends every planned one). */
    const char *args[] = {"run",        "ratelimit.token-bucket.open",
                          "--rate",     "1000000",
                          "--duration", "0.2",
                          "--warmup",   "0",
                          "--redis",    url,
                          "--json",     "-",
                          NULL,         NULL};
    run_bench(NULL, args, &r);
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "\"below_target\": true"), "%s", r.out);
    args[12] = "--below-target-ok";
    run_bench(NULL, args, &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "\"below_target\": true"), "%s", r.out);
    test_target_stop(server);
}

Test(cli, http_writes_the_documented_json_and_compares_with_itself) {
    int port;
    pid_t pid = server_start(&port);
    char url[64], json_path[] = "/tmp/test_bench_jsonXXXXXX", html_path[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    int fd = mkstemp(json_path);
    close(fd);
    snprintf(html_path, sizeof html_path, "%s.html", json_path);
    static test_run_out r;
    run_bench(NULL,
              (const char *[]){"http", url, "--rate", "500", "--duration", "1", "--connections",
                               "2", "--json", json_path, "--html", html_path, NULL},
              &r);
    test_kill_wait(pid, SIGKILL);
    /* A machine too busy to complete 99% of the schedule inside the window makes the run
     * "below target", and the command exit 1 (bench/README.md): that is the machine, not the
     * report, so either status is right as long as the JSON says which. */
    cr_assert(r.status == 0 || r.status == 1, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "p99.9"), "%s", r.out);

    json_error_t e;
    json_t *root = json_load_file(json_path, 0, &e);
    cr_assert_not_null(root, "%s", e.text);
    json_t *m = json_object_get(root, "machine");
    cr_expect(json_is_integer(json_object_get(m, "cpus")));
    cr_expect(json_is_string(json_object_get(m, "model")));
    cr_expect(json_is_string(json_object_get(m, "kernel")));
    cr_expect(json_is_string(json_object_get(m, "hostname")));
    json_t *s = json_array_get(json_object_get(root, "scenarios"), 0);
    cr_assert_not_null(s);
    cr_expect(json_is_string(json_object_get(s, "name")));
    cr_expect_eq(jnum(s, "target_rate"), 500);
    /* The rate achieved depends on the machine; what was scheduled and recorded does not. */
    cr_expect_gt(jnum(s, "achieved_rate"), 0);
    cr_expect_eq(jnum(s, "duration_s"), 1);
    cr_expect_eq(jnum(s, "count"), 500);
    cr_expect_eq(json_is_true(json_object_get(s, "below_target")), r.status == 1, "exit status %d",
                 r.status);
    cr_expect_eq(jnum(s, "errors"), 0);
    cr_expect(json_is_object(json_object_get(s, "errors_by_kind")));
    const char *pcts[] = {"p50_us", "p95_us", "p99_us", "p999_us", "max_us"};
    json_t *unc = json_object_get(s, "uncorrected");
    for (size_t i = 0; i < 5; i++) {
        cr_expect_geq(jnum(s, pcts[i]), jnum(unc, pcts[i]), "%s", pcts[i]);
    }
    const char *hgrm = json_string_value(json_object_get(s, "hgrm"));
    cr_assert_not_null(hgrm);
    cr_expect_not_null(strstr(hgrm, "1/(1-Percentile)"));
    cr_expect_not_null(strstr(hgrm, "#[Buckets"));
    json_decref(root);

    run_bench(NULL, (const char *[]){"compare", json_path, json_path, NULL}, &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "1.00"), "%s", r.out);
    run_bench(NULL, (const char *[]){"compare", json_path, "/nonexistent.json", NULL}, &r);
    cr_expect_eq(r.status, 1);

    FILE *f = fopen(html_path, "r");
    cr_assert_not_null(f);
    char page[65536];
    size_t n = fread(page, 1, sizeof page - 1, f);
    page[n] = '\0';
    fclose(f);
    cr_expect_not_null(strstr(page, "<svg"));
    cr_expect_null(strstr(page, "<script"), "self-contained, no scripts");
    unlink(json_path);
    unlink(html_path);
}

/* Writes a minimal report with one scenario to a temporary file; returns its path. */
static char *write_report(double target_rate, const char *failed) {
    char *path = strdup("/tmp/test_bench_cmpXXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    char failed_field[128] = "";
    if (failed)
        snprintf(failed_field, sizeof failed_field, ", \"failed\": \"%s\"", failed);
    dprintf(fd,
            "{\"version\": 1, \"scenarios\": [{\"name\": \"x.y\", \"target_rate\": %g, "
            "\"achieved_rate\": %g, \"p50_us\": 100, \"p95_us\": 200, \"p99_us\": 300, "
            "\"p999_us\": 400, \"max_us\": 500, \"errors\": 0%s}]}",
            target_rate, target_rate, failed_field);
    close(fd);
    return path;
}

Test(cli, compare_warns_about_different_target_rates) {
    char *a = write_report(1000, NULL), *b = write_report(2000, NULL);
    static test_run_out r;
    run_bench(NULL, (const char *[]){"compare", a, b, NULL}, &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "target rate 1000/s in A but 2000/s in B"), "%s", r.err);
    run_bench(NULL, (const char *[]){"compare", a, a, NULL}, &r);
    cr_expect_null(strstr(r.err, "warning"), "%s", r.err);
    unlink(a);
    unlink(b);
    free(a);
    free(b);
}

Test(cli, compare_marks_failed_scenarios_instead_of_comparing_zeros) {
    char *a = write_report(1000, NULL), *b = write_report(1000, "setup failed");
    static test_run_out r;
    run_bench(NULL, (const char *[]){"compare", a, b, NULL}, &r);
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "FAILED in B: setup failed"), "%s", r.out);
    cr_expect_null(strstr(r.out, "p50"), "no numbers for a failed scenario: %s", r.out);
    unlink(a);
    unlink(b);
    free(a);
    free(b);
}

Test(cli, http_to_a_closed_port_fails_with_a_message) {
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", test_closed_port());
    static test_run_out r;
    run_bench(NULL, (const char *[]){"http", url, "--rate", "100", "--duration", "0.2", NULL}, &r);
    cr_expect_eq(r.status, 1);
    cr_expect_not_null(strstr(r.err, "refused"), "%s", r.err);
}

/* ---- The job queue's scenarios ----------------------------------------------------------------
 */

/* A short run of every jobqueue.* scenario on the test Redis (a cluster too) completes jobs and
 * none fails: each job is counted once, when its ack (or its handler's start) is seen. Without
 * node on PATH, each scenario's BullMQ peer is skipped with one line and the run still succeeds
 * (or exits 1 only because an open-loop run fell below its rate on a busy machine, which the
 * JSON then says). */
Test(cli, jobqueue_scenarios_run_without_errors_and_skip_bullmq_without_node) {
    test_target *server = test_target_start();
    char json_path[] = "/tmp/test_bench_jqXXXXXX";
    int fd = mkstemp(json_path);
    close(fd);
    static test_run_out r;
    test_run_program(
        "bench",
        (const char *[]){"run", "jobqueue.", "--duration", "0.5", "--warmup", "0.2", "--redis",
                         test_target_url(server), "--json", json_path, NULL},
        NULL, (const char *[]){"PATH=/nonexistent-for-bench-peers", "BENCH_PEERS=1", NULL}, &r);
    test_target_stop(server);
    cr_assert(r.status == 0 || r.status == 1, "stdout: %s\nstderr: %s", r.out, r.err);

    json_error_t e;
    json_t *root = json_load_file(json_path, 0, &e);
    unlink(json_path);
    cr_assert_not_null(root, "%s", e.text);
    json_t *arr = json_object_get(root, "scenarios");
    const char *names[] = {"jobqueue.noop.single", "jobqueue.noop.bulk100", "jobqueue.latency.1000",
                           "jobqueue.latency.5000"};
    cr_assert_eq(json_array_size(arr), 4, "stderr: %s", r.err);
    int below = 0;
    for (size_t i = 0; i < 4; i++) {
        json_t *s = json_array_get(arr, i);
        cr_expect_str_eq(json_string_value(json_object_get(s, "name")), names[i]);
        cr_expect_gt(jnum(s, "count"), 0, "%s", names[i]);
        cr_expect_eq(jnum(s, "errors"), 0, "%s: %s", names[i], r.err);
        below += json_is_true(json_object_get(s, "below_target"));
    }
    cr_expect_eq(below > 0, r.status == 1, "exit status %d", r.status);
    cr_expect_null(strstr(r.err, "unfinished"), "%s", r.err);
    cr_expect_not_null(strstr(r.err, ", 0 enqueue errors"), "%s", r.err);

    /* Each scenario's own line: every job the worker started was acked. */
    int scenarios = 0;
    for (const char *p = r.err; (p = strstr(p, "jobqueue bench: ")) != NULL; p++) {
        long long enq, started, acked;
        const char *q = strchr(p, ':');
        q = strchr(q + 1, ':');
        cr_assert_eq(
            sscanf(q + 1, " %lld jobs enqueued, %lld started, %lld acked", &enq, &started, &acked),
            3, "%s", p);
        cr_expect_geq(enq, started, "%s", p);
        cr_expect_gt(acked, 0, "%s", p);
        scenarios++;
    }
    cr_expect_eq(scenarios, 4, "%s", r.err);

    int skipped = 0;
    for (const char *p = r.err; (p = strstr(p, "peer bullmq skipped: node not found on PATH")); p++)
        skipped++;
    cr_expect_eq(skipped, 4, "one line per BullMQ peer: %s", r.err);
    json_t *peers = json_object_get(root, "peers");
    size_t i;
    json_t *p;
    int bullmq = 0;
    json_array_foreach(peers, i, p) {
        if (strcmp(json_string_value(json_object_get(p, "name")), "bullmq") != 0)
            continue;
        bullmq++;
        const char *why = json_string_value(json_object_get(p, "skipped"));
        cr_expect(why && strstr(why, "node not found"), "peer %zu", i);
    }
    cr_expect_eq(bullmq, 4);
    json_decref(root);
}
