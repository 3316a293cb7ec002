/*
 * test_http_client.c - common/http_client.h against local servers that misbehave on purpose:
 * answer slowly or never, reset or cut a body, send 100 MB, take 1,000 requests at once, speak
 * something other than TLS. Every test counts its callbacks: each request's must run exactly
 * once.
 *
 * The server (tserver below) is a poll() loop on its own thread, bound on 127.0.0.1 with a port
 * the kernel picks. It answers by path, counts the connections it accepted and the requests it
 * read, and keeps connections alive. Timeouts are tested against a server that never answers (or
 * would take minutes), so no test depends on the machine's speed.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "http_client.h"
#include "sd.h"
#include "support.h"

/* ---- The test server ------------------------------------------------------------------------ */

#define HUGE_BYTES (100ull << 20)
#define CAP_BYTES (1u << 20)
#define MAX_CONNS 2048

typedef struct tconn {
    int fd;
    char *in; /* bytes read and not yet handled */
    size_t in_len, in_cap;
    char *out; /* bytes to send, from out_off */
    size_t out_len, out_off;
    uint64_t gen_left; /* generated body bytes still to send (/huge, /huge-chunked) */
    int chunked;
    int trickle_left; /* /slow: body bytes sent one per tick */
    int hold;         /* /never: read and ignore everything */
    int end;          /* once the output is sent: 1 close, 2 reset */
} tconn;

typedef struct tserver {
    int lfd, port;
    int wake[2];
    int garbage; /* answer every connection with plain text and close (not TLS) */
    pthread_t thread;
    atomic_int accepts;
    atomic_int requests;
    tconn *conns[MAX_CONNS];
    int nconns;
    struct pollfd fds[MAX_CONNS + 2];
    char block[64 * 1024]; /* one piece of a generated body */
} tserver;

static void out_add(tconn *t, const char *data, size_t len) {
    t->out = sd_xrealloc(t->out, t->out_len + len);
    memcpy(t->out + t->out_len, data, len);
    t->out_len += len;
}

static void out_printf(tconn *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(tconn *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    cr_assert_geq(n, 0);
    out_add(t, s, (size_t)n);
    free(s);
}

static void respond(tconn *t, int status, const char *extra, const char *body) {
    out_printf(t, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s\r\n%s", status, strlen(body), extra,
               body);
}

/* Value of header name in the header block hdr (NUL-terminated), copied into buf, or "-". */
static const char *req_header(const char *hdr, const char *name, char *buf, size_t len) {
    size_t n = strlen(name);
    for (const char *l = strstr(hdr, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, name, n) == 0 && l[2 + n] == ':') {
            const char *v = l + 3 + n;
            v += strspn(v, " ");
            size_t vl = strcspn(v, "\r\n");
            snprintf(buf, len, "%.*s", (int)vl, v);
            return buf;
        }
    }
    return "-";
}

/* Handles every complete request in t->in. Returns 0, or -1 when the request was malformed. */
static int serve_requests(tserver *s, tconn *t) {
    for (;;) {
        if (t->hold)
            return 0;
        char *end = memmem(t->in, t->in_len, "\r\n\r\n", 4);
        if (end == NULL)
            return 0;
        size_t hlen = (size_t)(end - t->in) + 4;
        char *hdr = sd_xstrndup(t->in, hlen);
        char v[256];
        long long clen = 0;
        if (strcmp(req_header(hdr, "Content-Length", v, sizeof v), "-") != 0)
            clen = atoll(v);
        if (t->in_len < hlen + (size_t)clen) {
            free(hdr);
            return 0;
        }
        char method[16], target[512];
        if (sscanf(hdr, "%15s %511s", method, target) != 2) {
            free(hdr);
            return -1;
        }
        /* A proxy request names the whole URL: keep its path. */
        const char *path = target;
        if (strncmp(path, "http://", 7) == 0)
            path = strchr(path + 7, '/') ? strchr(path + 7, '/') : "/";
        const unsigned char *body = (const unsigned char *)t->in + hlen;
        atomic_fetch_add(&s->requests, 1);

        if (strcmp(path, "/hello") == 0) {
            respond(t, 200, "X-Reply:   spaced value  \r\n", "hello");
        } else if (strcmp(path, "/echo") == 0) {
            unsigned long sum = 0;
            for (long long i = 0; i < clen; i++)
                sum = sum * 31 + body[i];
            char xt[64], ct[64], ex[64], ua[64];
            char *text =
                sd_xasprintf("method=%s len=%lld sum=%lu x-test=%s ctype=%s expect=%s ua=%s",
                             method, clen, sum, req_header(hdr, "X-Test", xt, sizeof xt),
                             req_header(hdr, "Content-Type", ct, sizeof ct),
                             req_header(hdr, "Expect", ex, sizeof ex),
                             req_header(hdr, "User-Agent", ua, sizeof ua));
            respond(t, 200, "", text);
            free(text);
        } else if (strcmp(path, "/big-headers") == 0) {
            char pad[1001];
            memset(pad, 'h', 1000);
            pad[1000] = '\0';
            out_printf(t, "HTTP/1.1 200 X\r\n");
            for (int i = 0; i < 100; i++) /* 100 KB of header fields */
                out_printf(t, "X-Pad-%d: %s\r\n", i, pad);
            out_printf(t, "Content-Length: 2\r\n\r\nok");
        } else if (strcmp(path, "/redirect") == 0) {
            respond(t, 302, "Location: /hello\r\n", "moved");
        } else if (strcmp(path, "/redirect-ftp") == 0) {
            respond(t, 302, "Location: ftp://127.0.0.1:1/file\r\n", "moved");
        } else if (strcmp(path, "/never") == 0) {
            t->hold = 1;
        } else if (strcmp(path, "/slow") == 0) {
            out_printf(t, "HTTP/1.1 200 X\r\nContent-Length: 100000\r\n\r\n");
            t->trickle_left = 100000;
        } else if (strcmp(path, "/reset") == 0 || strcmp(path, "/cut") == 0) {
            out_printf(t, "HTTP/1.1 200 X\r\nContent-Length: 100000\r\n\r\n");
            char part[1000];
            memset(part, 'x', sizeof part);
            out_add(t, part, sizeof part);
            t->end = strcmp(path, "/reset") == 0 ? 2 : 1;
            t->hold = 1;
        } else if (strcmp(path, "/huge") == 0) {
            out_printf(t, "HTTP/1.1 200 X\r\nContent-Length: %llu\r\n\r\n", HUGE_BYTES);
            t->gen_left = HUGE_BYTES;
            t->hold = 1;
        } else if (strcmp(path, "/huge-chunked") == 0) {
            out_printf(t, "HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n");
            t->gen_left = HUGE_BYTES;
            t->chunked = 1;
            t->hold = 1;
        } else {
            respond(t, 404, "", "no such path");
        }
        free(hdr);
        size_t used = hlen + (size_t)clen;
        memmove(t->in, t->in + used, t->in_len - used);
        t->in_len -= used;
    }
}

static void conn_close(tserver *s, int i) {
    tconn *t = s->conns[i];
    if (t->end == 2) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close with RST */
        setsockopt(t->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(t->fd);
    free(t->in);
    free(t->out);
    free(t);
    s->conns[i] = s->conns[--s->nconns];
}

/* Refills the output of a generated body. */
static void generate(tserver *s, tconn *t) {
    char *block = s->block;
    size_t block_len = sizeof s->block;
    if (t->gen_left == 0 || t->out_off < t->out_len)
        return;
    t->out_len = t->out_off = 0;
    size_t n = t->gen_left < block_len ? (size_t)t->gen_left : block_len;
    if (t->chunked)
        out_printf(t, "%zx\r\n", n);
    memset(block, 'z', n);
    out_add(t, block, n);
    t->gen_left -= n;
    if (t->chunked)
        out_printf(t, t->gen_left ? "\r\n" : "\r\n0\r\n\r\n");
}

/* Sends what it can; returns -1 when the connection is to be closed. */
static int conn_write(tserver *s, tconn *t) {
    for (;;) {
        generate(s, t);
        if (t->out_off == t->out_len)
            return t->end ? -1 : 0;
        ssize_t n = send(t->fd, t->out + t->out_off, t->out_len - t->out_off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        t->out_off += (size_t)n;
        if (t->out_off == t->out_len && t->gen_left == 0) {
            t->out_len = t->out_off = 0;
        }
    }
}

static void *tserver_run(void *arg) {
    tserver *s = arg;
    struct pollfd *fds = s->fds;
    for (;;) {
        int trickling = 0;
        fds[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        fds[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        for (int i = 0; i < s->nconns; i++) {
            tconn *t = s->conns[i];
            int pending = t->out_off < t->out_len || t->gen_left > 0;
            fds[i + 2] = (struct pollfd){.fd = t->fd, .events = POLLIN | (pending ? POLLOUT : 0)};
            trickling |= t->trickle_left > 0;
        }
        int n = s->nconns;
        poll(fds, (nfds_t)n + 2, trickling ? 50 : -1);
        if (fds[0].revents)
            break;
        /* Back to front, so conn_close()'s swap with the last entry skips nothing unseen. */
        for (int i = n - 1; i >= 0; i--) {
            tconn *t = s->conns[i];
            short re = fds[i + 2].revents;
            int dead = 0;
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                if (t->in_cap - t->in_len < 65536) {
                    t->in_cap = t->in_cap * 2 + 65536;
                    t->in = sd_xrealloc(t->in, t->in_cap);
                }
                ssize_t r = recv(t->fd, t->in + t->in_len, t->in_cap - t->in_len, 0);
                if (r <= 0 && !(r < 0 && errno == EAGAIN))
                    dead = 1;
                else if (r > 0)
                    t->in_len += (size_t)r;
                if (!dead && t->hold)
                    t->in_len = 0;
                else if (!dead && serve_requests(s, t) != 0)
                    dead = 1;
            }
            if (!dead && t->trickle_left > 0) {
                out_add(t, "y", 1);
                t->trickle_left--;
            }
            if (!dead && conn_write(s, t) != 0)
                dead = 1;
            if (dead)
                conn_close(s, i);
        }
        if (fds[1].revents & POLLIN) {
            int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                atomic_fetch_add(&s->accepts, 1);
                if (s->garbage || s->nconns == MAX_CONNS) {
                    const char text[] = "this is not TLS\r\n\r\n";
                    send(fd, text, sizeof text - 1, MSG_NOSIGNAL);
                    close(fd);
                } else {
                    tconn *t = sd_xcalloc(1, sizeof *t);
                    t->fd = fd;
                    s->conns[s->nconns++] = t;
                }
            }
        }
    }
    while (s->nconns > 0)
        conn_close(s, s->nconns - 1);
    return NULL;
}

static tserver *tserver_start(int garbage) {
    tserver *s = sd_xcalloc(1, sizeof *s);
    s->garbage = garbage;
    s->lfd = test_listen_loopback(&s->port);
    cr_assert_eq(listen(s->lfd, 1024), 0);
    fcntl(s->lfd, F_SETFL, O_NONBLOCK);
    cr_assert_eq(pipe(s->wake), 0);
    cr_assert_eq(pthread_create(&s->thread, NULL, tserver_run, s), 0);
    return s;
}

static void tserver_stop(tserver *s) {
    cr_assert_eq(write(s->wake[1], "x", 1), 1);
    pthread_join(s->thread, NULL);
    close(s->wake[0]);
    close(s->wake[1]);
    close(s->lfd);
    free(s);
}

/* ---- The client side ------------------------------------------------------------------------ */

typedef struct result {
    int calls;
    int err;
    int status;
    int redirects;
    char body[512];
    size_t body_len;
    int body_null;
    char reply_header[64];
    int during_start; /* the callback ran while the start call was still running */
    char error[128];
} result;

static int starting;
static int done;

static void on_response(int err, sd_http_response *resp, void *udata) {
    result *r = udata;
    r->calls++;
    r->during_start |= starting;
    r->err = err;
    r->status = resp->status;
    r->redirects = resp->redirects;
    r->body_null = resp->body == NULL;
    r->body_len = resp->body_len;
    snprintf(r->error, sizeof r->error, "%s", resp->error);
    if (resp->body)
        snprintf(r->body, sizeof r->body, "%s", resp->body);
    const char *h = sd_http_response_header(resp, "x-reply");
    snprintf(r->reply_header, sizeof r->reply_header, "%s", h ? h : "");
    done++;
}

static char *url_of(const tserver *s, const char *path) {
    return sd_xasprintf("http://127.0.0.1:%d%s", s->port, path);
}

/* Starts one request; asserts that the start call succeeded without running the callback. */
static void start(sd_http_client *c, const sd_http_request *req, result *r) {
    starting = 1;
    int rc = sd_http_client_request(c, req, on_response, r);
    starting = 0;
    cr_assert_eq(rc, 0, "start: %s", sd_strerror(rc));
    cr_assert_eq(r->calls, 0, "the callback ran inside the start call");
}

/* Runs the loop until `done` reaches n; fails if the loop runs out of work first. */
static void run_until(uv_loop_t *loop, int n) {
    while (done < n)
        cr_assert(uv_run(loop, UV_RUN_ONCE) != 0 || done >= n,
                  "the loop ran dry with %d of %d callbacks run", done, n);
}

static uv_loop_t loop;

static void setup(void) {
    done = 0;
    cr_assert_eq(uv_loop_init(&loop), 0);
}

/* Frees the client, lets its close callbacks run and checks that nothing is left on the loop. */
static void client_free(sd_http_client *c) {
    sd_http_client_free(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open on the loop");
}

static void teardown(void) {
    curl_global_cleanup(); /* for a clean leak report */
}

TestSuite(http_client, .init = setup, .fini = teardown, .timeout = 120);

/* One GET of path with the given options; returns its result. */
static result fetch(sd_http_client *c, const char *url, int timeout_ms, int max_redirects) {
    result r = {0};
    sd_http_request req = {.url = url, .timeout_ms = timeout_ms, .max_redirects = max_redirects};
    int before = done;
    start(c, &req, &r);
    run_until(&loop, before + 1);
    cr_assert_eq(r.calls, 1);
    return r;
}

/* One test's server, a client on the loop and the URL of a path on that server. */
typedef struct rig {
    tserver *s;
    sd_http_client *c;
    char *url;
} rig;

/* Starts a test server and a client made with opts (NULL: the defaults). */
static rig rig_open(const char *path, const sd_http_client_opts *opts) {
    rig g;
    g.s = tserver_start(0);
    g.c = sd_http_client_new(&loop, opts);
    g.url = url_of(g.s, path);
    return g;
}

/* Frees the URL and the client (client_free checks the loop is left empty), stops the server. */
static void rig_close(rig *g) {
    free(g->url);
    client_free(g->c);
    tserver_stop(g->s);
}

/* One GET of path from a server and client of its own, both gone when it returns. */
static result get_once(const char *path, const sd_http_client_opts *opts, int timeout_ms,
                       int max_redirects) {
    rig g = rig_open(path, opts);
    result r = fetch(g.c, g.url, timeout_ms, max_redirects);
    rig_close(&g);
    return r;
}

/* ---- Tests ---------------------------------------------------------------------------------- */

Test(http_client, get_returns_status_headers_and_body) {
    result r = get_once("/hello", NULL, 0, 0);
    cr_assert_eq(r.err, 0, "%s", sd_strerror(r.err));
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "hello");
    cr_assert_eq(r.body_len, 5);
    cr_assert_str_eq(r.reply_header, "spaced value");
}

Test(http_client, post_sends_method_headers_and_binary_body_once) {
    rig g = rig_open("/echo", NULL);
    size_t len = 2u << 20; /* over libcurl's 1 MB threshold for "Expect: 100-continue" */
    unsigned char *body = sd_xmalloc(len);
    unsigned long sum = 0;
    for (size_t i = 0; i < len; i++) {
        body[i] = (unsigned char)(i % 251); /* holds NUL bytes */
        sum = sum * 31 + body[i];
    }
    const char *headers[] = {"X-Test: abc", NULL};
    sd_http_request req = {
        .method = "PUT", .url = g.url, .headers = headers, .body = body, .body_len = len};
    result r = {0};
    start(g.c, &req, &r);
    free(body); /* the client copied it */
    run_until(&loop, 1);
    cr_assert_eq(r.err, 0, "%s", sd_strerror(r.err));
    char want[256];
    snprintf(want, sizeof want,
             "method=PUT len=%zu sum=%lu x-test=abc ctype=- expect=- ua=sysdesign", len, sum);
    cr_assert_str_eq(r.body, want);
    cr_assert_eq(atomic_load(&g.s->requests), 1);
    rig_close(&g);
}

Test(http_client, never_answering_server_times_out) {
    result r = get_once("/never", NULL, 300, 0);
    cr_assert_eq(r.err, SD_ETIMEDOUT, "%s", sd_strerror(r.err));
    cr_assert(r.body_null);
}

Test(http_client, connect_timeout_applies_to_a_connect_that_hangs) {
    /* A listener whose accept queue is full and never drained: the kernel drops further SYNs,
     * so a connect hangs. The total deadline is a minute; the connect timeout must end it. */
    int port;
    int lfd = test_listen_loopback(&port);
    cr_assert_eq(listen(lfd, 0), 0);
    int fillers[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        connect(fillers[i], (struct sockaddr *)&sa, sizeof sa);
    }
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    char *url = sd_xasprintf("http://127.0.0.1:%d/", port);
    result r = {0};
    sd_http_request req = {.url = url, .connect_timeout_ms = 300, .timeout_ms = 60000};
    uint64_t t0 = sd_now_ms();
    start(c, &req, &r);
    run_until(&loop, 1);
    cr_assert_eq(r.err, SD_ETIMEDOUT, "%s", sd_strerror(r.err));
    cr_assert_eq(r.status, 0);
    cr_assert_lt(sd_now_ms() - t0, 30000, "ended by the connect timeout, not the deadline");
    free(url);
    client_free(c);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(lfd);
}

Test(http_client, slow_body_hits_the_deadline) {
    /* 100,000 bytes at one per 50 ms would take over an hour; the deadline is 500 ms. */
    result r = get_once("/slow", NULL, 500, 0);
    cr_assert_eq(r.err, SD_ETIMEDOUT, "%s", sd_strerror(r.err));
    cr_assert_eq(r.status, 200, "the headers had arrived");
    cr_assert(r.body_null);
}

Test(http_client, reset_mid_body_is_reset) {
    rig g = rig_open("/reset", NULL);
    result r = fetch(g.c, g.url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_RESET, "%s", sd_strerror(r.err));
    cr_assert(r.body_null);
    free(g.url);
    g.url = url_of(g.s, "/cut"); /* closed (FIN) rather than reset: the body is as incomplete */
    r = fetch(g.c, g.url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_RESET, "%s", sd_strerror(r.err));
    rig_close(&g);
}

/* Gets path from a server that sends 100 MB; the client's cap is 1 MB. peak_max: the most body
 * bytes the client may have held (0 when the Content-Length alone must refuse it). */
static void huge(const char *path, size_t peak_max) {
    sd_http_client_opts opts;
    sd_http_client_opts_default(&opts);
    opts.max_response_bytes = CAP_BYTES;
    rig g = rig_open(path, &opts);
    result r = fetch(g.c, g.url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_TOOBIG, "%s", sd_strerror(r.err));
    cr_assert(r.body_null, "the body is not kept");
    cr_assert_str_eq(r.error, "response too large");
    sd_http_client_stats st;
    sd_http_client_stats_get(g.c, &st);
    cr_assert_leq(st.body_bytes_peak, peak_max, "held %zu bytes", st.body_bytes_peak);
    rig_close(&g);
}

Test(http_client, body_over_the_cap_with_content_length_is_too_large) {
    huge("/huge", 0);
}

Test(http_client, chunked_body_over_the_cap_is_too_large_and_not_kept) {
    huge("/huge-chunked", CAP_BYTES);
}

Test(http_client, body_under_the_cap_is_kept) {
    sd_http_client_opts opts;
    sd_http_client_opts_default(&opts);
    opts.max_response_bytes = 5; /* "hello" exactly */
    result r = get_once("/hello", &opts, 0, 0);
    cr_assert_eq(r.err, 0, "%s", sd_strerror(r.err));
    cr_assert_str_eq(r.body, "hello");
}

Test(http_client, deadline_covers_waiting_for_a_connection) {
    /* One connection per host, held by a request the server never answers: the second request
     * waits for it, and its deadline runs while it waits. */
    tserver *s = tserver_start(0);
    sd_http_client_opts opts;
    sd_http_client_opts_default(&opts);
    opts.max_connections_per_host = 1;
    sd_http_client *c = sd_http_client_new(&loop, &opts);
    char *never = url_of(s, "/never"), *hello = url_of(s, "/hello");
    result held = {0}, waiting = {0};
    sd_http_request req = {.url = never, .timeout_ms = 60000};
    start(c, &req, &held);
    req = (sd_http_request){.url = hello, .timeout_ms = 300};
    start(c, &req, &waiting);
    run_until(&loop, 1);
    cr_assert_eq(waiting.calls, 1, "the waiting request ended first");
    cr_assert_eq(waiting.err, SD_ETIMEDOUT, "%s", sd_strerror(waiting.err));
    cr_assert_eq(held.calls, 0);
    cr_assert_eq(atomic_load(&s->accepts), 1);
    free(never);
    free(hello);
    client_free(c);
    cr_assert_eq(held.calls, 1);
    cr_assert_eq(held.err, SD_ECLOSED);
    tserver_stop(s);
}

Test(http_client, headers_over_their_cap_are_too_large) {
    result r = get_once("/big-headers", NULL, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_TOOBIG, "%s", sd_strerror(r.err));
    cr_assert(r.body_null);
}

typedef struct many {
    int counts[1000];
} many;

static void on_count(int err, sd_http_response *resp, void *udata) {
    int *count = udata;
    (*count)++;
    cr_assert_eq(err, 0, "%s (%s)", sd_strerror(err), resp->error);
    cr_assert_eq(resp->status, 200);
    cr_assert_str_eq(resp->body, "hello");
    done++;
}

Test(http_client, thousand_concurrent_requests_each_complete_once) {
    rig g = rig_open("/hello", NULL);
    many *m = sd_xcalloc(1, sizeof *m);
    sd_http_request req = {.url = g.url, .timeout_ms = 60000};
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(sd_http_client_request(g.c, &req, on_count, &m->counts[i]), 0);
    sd_http_client_stats st;
    sd_http_client_stats_get(g.c, &st);
    cr_assert_eq(st.in_flight, 1000);
    run_until(&loop, 1000);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(m->counts[i], 1, "request %d: %d callbacks", i, m->counts[i]);
    sd_http_client_stats_get(g.c, &st);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_eq(atomic_load(&g.s->requests), 1000);
    cr_assert_leq(atomic_load(&g.s->accepts), 32, "connections per host are capped and reused");
    free(m);
    rig_close(&g);
}

/* Sequential requests: each callback starts the next. */
typedef struct chain {
    sd_http_client *c;
    sd_http_request req;
    int left;
    int calls;
} chain;

static void on_chain(int err, sd_http_response *resp, void *udata) {
    chain *ch = udata;
    ch->calls++;
    cr_assert_eq(err, 0, "%s", sd_strerror(err));
    if (--ch->left > 0)
        cr_assert_eq(sd_http_client_request(ch->c, &ch->req, on_chain, ch), 0);
    done++;
}

Test(http_client, sequential_requests_reuse_one_connection) {
    rig g = rig_open("/hello", NULL);
    chain ch = {.c = g.c, .req = {.url = g.url}, .left = 20};
    cr_assert_eq(sd_http_client_request(g.c, &ch.req, on_chain, &ch), 0);
    run_until(&loop, 20);
    cr_assert_eq(ch.calls, 20);
    cr_assert_eq(atomic_load(&g.s->requests), 20);
    cr_assert_eq(atomic_load(&g.s->accepts), 1, "one keep-alive connection for all 20");
    sd_http_client_stats st;
    sd_http_client_stats_get(g.c, &st);
    cr_assert_eq(st.connections, 1);
    rig_close(&g);
}

Test(http_client, redirect_is_returned_unless_asked_to_follow) {
    rig g = rig_open("/redirect", NULL);
    result r = fetch(g.c, g.url, 0, 0);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(r.status, 302);
    cr_assert_str_eq(r.body, "moved");
    cr_assert_eq(r.redirects, 0);
    r = fetch(g.c, g.url, 0, 3);
    cr_assert_eq(r.err, 0, "%s", sd_strerror(r.err));
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "hello");
    cr_assert_eq(r.redirects, 1);
    cr_assert_eq(atomic_load(&g.s->requests), 3);
    rig_close(&g);
}

Test(http_client, redirect_to_another_scheme_is_refused) {
    result r = get_once("/redirect-ftp", NULL, 0, 3);
    cr_assert_eq(r.err, SD_EHTTP_SCHEME, "%s", sd_strerror(r.err));
}

Test(http_client, refused_port_is_refused) {
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    char *url = sd_xasprintf("http://127.0.0.1:%d/", test_closed_port());
    result r = fetch(c, url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_REFUSED, "%s", sd_strerror(r.err));
    cr_assert_not(r.during_start);
    free(url);
    client_free(c);
}

Test(http_client, unknown_name_is_a_dns_failure) {
    /* RFC 6761: names under .invalid never resolve. */
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    result r = fetch(c, "http://nothing-here.invalid/", 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_DNS, "%s", sd_strerror(r.err));
    cr_assert_not(r.during_start);
    client_free(c);
}

Test(http_client, tls_to_a_server_that_does_not_speak_it_is_a_tls_failure) {
    tserver *s = tserver_start(1);
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    char *url = sd_xasprintf("https://127.0.0.1:%d/", s->port);
    result r = fetch(c, url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_TLS, "%s", sd_strerror(r.err));
    free(url);
    client_free(c);
    tserver_stop(s);
}

Test(http_client, failed_start_calls_never_run_the_callback) {
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    result r = {0};
    struct {
        sd_http_request req;
        int want;
    } cases[] = {
        {{.url = "ftp://127.0.0.1/file"}, SD_EHTTP_SCHEME},
        {{.url = "file:///etc/passwd"}, SD_EHTTP_SCHEME},
        {{.url = "gopher://127.0.0.1/"}, SD_EHTTP_SCHEME},
        {{.url = "nonsense://x/"}, SD_EHTTP_SCHEME},
        {{.url = NULL}, SD_EPARSE},
        {{.url = "http://"}, SD_EPARSE},
        {{.url = "http://127.0.0.1/", .headers = (const char *const[]){"X: a\r\nY: b", NULL}},
         SD_EPARSE},
        {{.url = "http://127.0.0.1/", .headers = (const char *const[]){"no colon", NULL}},
         SD_EPARSE},
        {{.url = "http://127.0.0.1/", .method = "GET /x HTTP/1.1\r\n"}, SD_EPARSE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert_eq(sd_http_client_request(c, &cases[i].req, on_response, &r), cases[i].want,
                     "case %zu", i);
    uv_run(&loop, UV_RUN_NOWAIT);
    client_free(c);
    cr_assert_eq(r.calls, 0);
}

/* A hook that counts what it is shown and allows only public addresses. */
typedef struct vet_log {
    int calls;
    int saw_loopback;
} vet_log;

static int vet_public(const struct sockaddr *addr, socklen_t len, void *udata) {
    vet_log *v = udata;
    v->calls++;
    if (addr->sa_family == AF_INET &&
        ((const struct sockaddr_in *)addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK))
        v->saw_loopback = 1;
    if (addr->sa_family == AF_INET6 &&
        IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)addr)->sin6_addr))
        v->saw_loopback = 1;
    return sd_http_addr_is_public(addr) ? 0 : -1;
}

Test(http_client, vet_hook_refusal_is_blocked_and_never_connects) {
    vet_log v = {0};
    sd_http_client_opts opts;
    sd_http_client_opts_default(&opts);
    opts.vet = vet_public;
    opts.vet_udata = &v;
    rig g = rig_open("/hello", &opts);
    result r = fetch(g.c, g.url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_BLOCKED, "%s", sd_strerror(r.err));
    cr_assert_eq(v.calls, 1);
    cr_assert(v.saw_loopback);
    /* The same server, through a client without the hook: its connection is the first one the
     * server ever accepts. */
    sd_http_client *open = sd_http_client_new(&loop, NULL);
    r = fetch(open, g.url, 0, 0);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(atomic_load(&g.s->accepts), 1, "the refused connection never reached the server");
    sd_http_client_free(open);
    rig_close(&g);
}

Test(http_client, vet_hook_sees_the_address_a_name_resolved_to) {
    /* "localhost" passes any check on the name; what it resolves to does not. */
    tserver *s = tserver_start(0);
    vet_log v = {0};
    sd_http_client_opts opts;
    sd_http_client_opts_default(&opts);
    opts.vet = vet_public;
    opts.vet_udata = &v;
    sd_http_client *c = sd_http_client_new(&loop, &opts);
    char *url = sd_xasprintf("http://localhost:%d/hello", s->port);
    result r = fetch(c, url, 0, 0);
    cr_assert_eq(r.err, SD_EHTTP_BLOCKED, "%s", sd_strerror(r.err));
    cr_assert_geq(v.calls, 1);
    cr_assert(v.saw_loopback);
    cr_assert_eq(atomic_load(&s->accepts), 0);
    free(url);
    client_free(c);
    tserver_stop(s);
}

Test(http_client, proxy_environment_is_ignored) {
    char *proxy = sd_xasprintf("http://127.0.0.1:%d", test_closed_port());
    setenv("http_proxy", proxy, 1);
    setenv("HTTPS_PROXY", proxy, 1);
    setenv("all_proxy", proxy, 1);
    free(proxy); /* setenv copied it */
    result r = get_once("/hello", NULL, 0, 0);
    cr_assert_eq(r.err, 0, "%s", sd_strerror(r.err));
    cr_assert_eq(r.status, 200);
}

Test(http_client, configured_proxy_is_used) {
    /* The test server answers proxy requests too: the target's name is never resolved here. */
    tserver *s = tserver_start(0);
    char *proxy = sd_xasprintf("http://127.0.0.1:%d", s->port);
    sd_http_client_opts opts;
    sd_http_client_opts_default(&opts);
    opts.proxy = proxy;
    sd_http_client *c = sd_http_client_new(&loop, &opts);
    free(proxy); /* copied */
    result r = fetch(c, "http://origin.invalid/hello", 0, 0);
    cr_assert_eq(r.err, 0, "%s", sd_strerror(r.err));
    cr_assert_str_eq(r.body, "hello");
    client_free(c);
    tserver_stop(s);
}

/* Each of the n requests ended once, closed by the client's free. */
static void assert_closed_once(const result *r, int n) {
    for (int i = 0; i < n; i++) {
        cr_assert_eq(r[i].calls, 1, "request %d", i);
        cr_assert_eq(r[i].err, SD_ECLOSED, "request %d: %s", i, sd_strerror(r[i].err));
    }
}

/* A result and the client its callback frees. */
typedef struct freeing {
    result r;
    sd_http_client *c;
} freeing;

static void on_free_client(int err, sd_http_response *resp, void *udata) {
    freeing *f = udata;
    on_response(err, resp, &f->r);
    sd_http_client_free(f->c);
}

Test(http_client, free_from_a_callback_closes_the_others_once) {
    tserver *s = tserver_start(0);
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    char *hello = url_of(s, "/hello"), *never = url_of(s, "/never");
    freeing first = {.c = c};
    result others[3] = {{0}};
    sd_http_request req = {.url = hello};
    cr_assert_eq(sd_http_client_request(c, &req, on_free_client, &first), 0);
    req.url = never;
    for (int i = 0; i < 3; i++)
        start(c, &req, &others[i]);
    run_until(&loop, 4);
    cr_assert_eq(first.r.calls, 1);
    cr_assert_eq(first.r.err, 0);
    assert_closed_once(others, 3);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    free(hello);
    free(never);
    tserver_stop(s);
}

/* Polls the server's request count from the loop, then frees the client. */
typedef struct free_when {
    tserver *s;
    sd_http_client *c;
    int requests;
} free_when;

static void on_check(uv_timer_t *t) {
    free_when *fw = t->data;
    if (atomic_load(&fw->s->requests) < fw->requests)
        return;
    sd_http_client_free(fw->c);
    uv_close((uv_handle_t *)t, NULL);
}

Test(http_client, free_with_requests_in_flight_closes_each_once) {
    tserver *s = tserver_start(0);
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    char *url = url_of(s, "/never");
    result r[5] = {{0}};
    sd_http_request req = {.url = url};
    for (int i = 0; i < 5; i++)
        start(c, &req, &r[i]);
    /* Free once all five are on open connections, so closing covers polled sockets. */
    free_when fw = {.s = s, .c = c, .requests = 5};
    uv_timer_t check;
    uv_timer_init(&loop, &check);
    check.data = &fw;
    uv_timer_start(&check, on_check, 10, 10);
    run_until(&loop, 5);
    assert_closed_once(r, 5);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    free(url);
    tserver_stop(s);
}

Test(http_client, free_before_the_loop_runs_closes_each_once) {
    sd_http_client *c = sd_http_client_new(&loop, NULL);
    result r[3] = {{0}};
    sd_http_request req = {.url = "http://127.0.0.1:9/"};
    for (int i = 0; i < 3; i++)
        start(c, &req, &r[i]);
    sd_http_client_free(c);
    assert_closed_once(r, 3);
    cr_assert_eq(sd_http_client_request(c, &req, on_response, &r[0]), SD_ECLOSED);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    cr_assert_eq(r[0].calls, 1);
}

static void on_take(int err, sd_http_response *resp, void *udata) {
    char **out = udata;
    size_t len;
    *out = sd_http_response_take_body(resp, &len);
    cr_assert_eq(len, 5);
    cr_assert_null(resp->body);
    done++;
}

Test(http_client, taken_body_belongs_to_the_caller) {
    rig g = rig_open("/hello", NULL);
    char *body = NULL;
    sd_http_request req = {.url = g.url};
    cr_assert_eq(sd_http_client_request(g.c, &req, on_take, &body), 0);
    run_until(&loop, 1);
    cr_assert_str_eq(body, "hello");
    free(body);
    rig_close(&g);
}

static int is_public(const char *text) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':')) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        cr_assert_eq(inet_pton(AF_INET6, text, &in6->sin6_addr), 1, "%s", text);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        cr_assert_eq(inet_pton(AF_INET, text, &in->sin_addr), 1, "%s", text);
    }
    return sd_http_addr_is_public((const struct sockaddr *)&ss);
}

Test(http_client, addr_is_public_refuses_internal_ranges) {
    const char *internal[] = {
        "127.0.0.1",
        "127.255.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2001:db8::1",
        "2001::1",
    };
    const char *public[] = {"8.8.8.8",        "1.1.1.1",         "172.32.0.1",   "100.128.0.1",
                            "::ffff:8.8.8.8", "2606:4700::1111", "2a00:1450::1", "2002:808:808::"};
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++)
        cr_assert_eq(is_public(internal[i]), 0, "%s", internal[i]);
    for (size_t i = 0; i < sizeof public / sizeof public[0]; i++)
        cr_assert_eq(is_public(public[i]), 1, "%s", public[i]);
}
