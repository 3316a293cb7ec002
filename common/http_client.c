/*
 * http_client.c - outgoing HTTP on libcurl's multi interface, driven by a libuv loop (see
 * http_client.h for the contract).
 *
 * How libcurl and libuv meet (the shape of curl's docs/examples/multi-uv.c)
 *
 *   libcurl wants to watch socket s     on_socket()    starts or updates a uv_poll_t for s,
 *                                                      stops and closes it on CURL_POLL_REMOVE
 *   libcurl wants a wake-up in N ms     on_timer_set() arms the client's one uv_timer_t
 *   s is ready / the timer fired        on_poll(), on_timeout() call curl_multi_socket_action()
 *                                      and then drain()
 *   a transfer finished                 drain() reads curl_multi_info_read() and calls
 *                                      call_finish(), which runs the caller's callback
 *
 * A request (a `call`) has two states: IN_FLIGHT (its easy handle is in the multi handle and it
 * is on the client's list) and DONE (callback run, memory freed). call_finish() is the only
 * transition, reached from drain() (libcurl's result), from on_deadline() (the call's own total
 * deadline, SD_ETIMEDOUT) or from sd_http_client_free() (SD_ECLOSED).
 *
 * Invariants
 *  1. User callbacks run only from drain(), on_deadline() and sd_http_client_free(), never from
 * inside a libcurl call, and never from sd_http_client_request(): that function only adds the easy
 *     handle; libcurl then asks for a 0 ms timer (on_timer_set), and the transfer starts when
 *     the loop runs it. So no completion can be synchronous and no deferral is needed.
 *  2. A call is removed from the multi handle and from the client's list before its callback
 *     runs, so a callback that frees the client cannot finish it a second time.
 *  3. After a user callback, drain() stops if the client is closing: the multi handle is gone.
 *  4. libuv handles live in the structs that own them (sock_ctx, call, the client) and those
 *     structs are freed only in close callbacks. The client remembers its sockets' contexts so that
 *     freeing it closes every poll handle even if libcurl never said CURL_POLL_REMOVE.
 *  5. Every socket is created by on_open_socket(), with the address libcurl will connect it to,
 *     after the vet hook allowed that address (http_client.h, guarantee 5).
 */
#include "http_client.h"

#include "addr_vet.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct sock_ctx {
    uv_poll_t poll; /* poll.data points back here */
    curl_socket_t fd;
    sd_http_client *client;
    struct sock_ctx *prev, *next;
} sock_ctx;

typedef struct call {
    sd_http_client *client;
    CURL *easy;
    struct curl_slist *headers;
    sd_http_response_cb *cb;
    void *udata;
    struct call *prev, *next;
    size_t max_body;
    int timeout_ms;
    char *body; /* body_len bytes, room for body_cap plus a NUL; body_cap <= max_body */
    size_t body_len, body_cap;
    char *hdr; /* the current response's raw header lines, status line first */
    size_t hdr_len, hdr_cap;
    int too_large;
    unsigned vet_refused;
    uv_timer_t deadline; /* the total deadline; deadline.data is the call */
    char errbuf[CURL_ERROR_SIZE];
} call;

struct sd_http_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer; /* libcurl's one timeout; timer.data is the client */
    sd_http_client_opts opts;
    char *proxy; /* copies of the opts strings */
    char *user_agent;
    call *calls;     /* in flight */
    sock_ctx *socks; /* polled sockets */
    sd_http_client_stats stats;
    int closing;
};

void sd_http_client_opts_default(sd_http_client_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->connect_timeout_ms = 10000;
    opts->timeout_ms = 30000;
    opts->max_response_bytes = 8u << 20;
    opts->max_connections_per_host = 32;
}

/* ---- libcurl's process-wide state ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init(void) {
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- sockets and the timer (libcurl -> libuv) ---- */

static void drain(sd_http_client *c);

static void sock_free_cb(uv_handle_t *h) {
    free(h->data);
}

static void sock_close(sd_http_client *c, sock_ctx *sk) {
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        c->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    uv_poll_stop(&sk->poll);
    uv_close((uv_handle_t *)&sk->poll, sock_free_cb);
}

static void on_poll(uv_poll_t *h, int status, int events) {
    sock_ctx *sk = h->data;
    sd_http_client *c = sk->client;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(c->multi, sk->fd, flags, &running);
    drain(c);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    sd_http_client *c = userp;
    sock_ctx *sk = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            curl_multi_assign(c->multi, s, NULL);
            sock_close(c, sk);
        }
        return 0;
    }
    if (sk == NULL) {
        sk = sd_xcalloc(1, sizeof *sk);
        if (uv_poll_init_socket(c->loop, &sk->poll, s) != 0) {
            free(sk);
            return -1; /* libcurl fails the transfer */
        }
        sk->poll.data = sk;
        sk->fd = s;
        sk->client = c;
        sk->next = c->socks;
        if (c->socks)
            c->socks->prev = sk;
        c->socks = sk;
        curl_multi_assign(c->multi, s, sk);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&sk->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_timeout(uv_timer_t *t) {
    sd_http_client *c = t->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain(c);
}

static int on_timer_set(CURLM *multi, long timeout_ms, void *userp) {
    sd_http_client *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- one transfer's data (libcurl -> call) ---- */

/* Creates each socket libcurl connects, once the hook has allowed its address. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
    call *k = clientp;
    sd_http_client *c = k->client;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    if (c->opts.vet && c->opts.vet(&a->addr, (socklen_t)a->addrlen, c->opts.vet_udata) != 0) {
        k->vet_refused++;
        c->stats.vet_refusals++;
        return CURL_SOCKET_BAD;
    }
    curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (s != CURL_SOCKET_BAD)
        c->stats.connections++;
    return s;
}

static void body_drop(call *k) {
    free(k->body);
    k->body = NULL;
    k->body_len = k->body_cap = 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *userp) {
    call *k = userp;
    size_t len = size * n;
    if (len > k->max_body - k->body_len) {
        /* Over the cap: keep nothing, and stop the transfer (libcurl: CURLE_WRITE_ERROR). */
        k->too_large = 1;
        body_drop(k);
        return 0;
    }
    if (k->body_len + len > k->body_cap) {
        size_t cap = k->body_cap ? k->body_cap : 4096;
        while (cap < k->body_len + len && cap <= SIZE_MAX / 2)
            cap *= 2;
        if (cap < k->body_len + len)
            cap = k->body_len + len;
        if (cap > k->max_body)
            cap = k->max_body;
        k->body = sd_xrealloc(k->body, cap + 1);
        k->body_cap = cap;
        if (cap > k->client->stats.body_bytes_peak)
            k->client->stats.body_bytes_peak = cap;
    }
    memcpy(k->body + k->body_len, data, len);
    k->body_len += len;
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *userp) {
    call *k = userp;
    size_t len = size * n;
    /* A status line starts a new response (after a 1xx, or a redirect followed): keep only the
     * last response's fields. */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
        k->hdr_len = 0;
    if (len > SD_HTTP_CLIENT_MAX_HEADER_BYTES - k->hdr_len) {
        k->too_large = 1;
        return 0;
    }
    if (k->hdr_len + len + 1 > k->hdr_cap) {
        k->hdr_cap = (k->hdr_len + len + 1) * 2;
        k->hdr = sd_xrealloc(k->hdr, k->hdr_cap);
    }
    memcpy(k->hdr + k->hdr_len, data, len);
    k->hdr_len += len;
    return len;
}

/* ---- finishing a call ---- */

/* libcurl's result as one code of http_client.h, guarantee 2. */
static int map_result(call *k, CURLcode rc) {
    if (k->too_large)
        return SD_EHTTP_TOOBIG;
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return SD_ETIMEDOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return SD_EHTTP_DNS;
    case CURLE_COULDNT_CONNECT: {
        /* libcurl reports a socket the hook refused as a plain connect failure. */
        if (k->vet_refused > 0)
            return SD_EHTTP_BLOCKED;
        long os_errno = 0;
        curl_easy_getinfo(k->easy, CURLINFO_OS_ERRNO, &os_errno);
        return os_errno == ECONNREFUSED ? SD_EHTTP_REFUSED : SD_EHTTP_CONNECT;
    }
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
        return SD_EHTTP_TLS;
    case CURLE_FILESIZE_EXCEEDED:
        return SD_EHTTP_TOOBIG;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
        return SD_EHTTP_RESET;
    case CURLE_UNSUPPORTED_PROTOCOL:
        return SD_EHTTP_SCHEME;
    default:
        return SD_EHTTP_PROTOCOL;
    }
}

/* Splits the raw header lines (status line first) into name/value pairs, in place. */
static sd_http_header *headers_parse(call *k, size_t *count) {
    *count = 0;
    if (k->hdr == NULL)
        return NULL;
    k->hdr[k->hdr_len] = '\0';
    size_t max = 0;
    for (size_t i = 0; i < k->hdr_len; i++)
        max += k->hdr[i] == '\n';
    sd_http_header *out = sd_xcalloc(max + 1, sizeof *out);
    char *line = strchr(k->hdr, '\n'); /* skip the status line */
    while (line && *++line) {
        char *end = strchr(line, '\n');
        if (end == NULL)
            break;
        char *stop = end;
        while (stop > line && (stop[-1] == '\r' || stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        *stop = '\0';
        char *colon = strchr(line, ':');
        if (colon && colon != line) {
            *colon = '\0';
            char *value = colon + 1;
            value += strspn(value, " \t");
            out[*count].name = line;
            out[*count].value = value;
            (*count)++;
        }
        line = end;
    }
    return out;
}

/* Frees what the call holds, but not the call itself. */
static void call_release(call *k) {
    curl_easy_cleanup(k->easy);
    curl_slist_free_all(k->headers);
    free(k->body);
    free(k->hdr);
}

static void call_closed(uv_handle_t *h) {
    free(h->data);
}

/* IN_FLIGHT -> DONE: takes the call out of libcurl and the client, runs the callback once, frees
 * the call (invariant 2). */
static void call_finish(call *k, int err) {
    sd_http_client *c = k->client;
    long status = 0, redirects = 0;
    char *url = NULL;
    curl_easy_getinfo(k->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(k->easy, CURLINFO_REDIRECT_COUNT, &redirects);
    curl_easy_getinfo(k->easy, CURLINFO_EFFECTIVE_URL, &url);
    curl_multi_remove_handle(c->multi, k->easy);
    if (k->prev)
        k->prev->next = k->next;
    else
        c->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    c->stats.in_flight--;

    sd_http_response resp = {
        .status = (int)status, .url = url ? url : "", .redirects = (int)redirects};
    sd_http_header *headers = headers_parse(k, &resp.nheaders);
    resp.headers = headers;
    if (err == 0) {
        if (k->body == NULL)
            k->body = sd_xmalloc(1);
        k->body[k->body_len] = '\0';
        resp.body = k->body;
        resp.body_len = k->body_len;
        resp.error = "";
    } else {
        body_drop(k);
        /* libcurl's message, except where it would mislead: our own stops look to it like a
         * write error or a connect failure. */
        int ours = err == SD_ECLOSED || err == SD_EHTTP_TOOBIG || err == SD_EHTTP_BLOCKED;
        resp.error = k->errbuf[0] && !ours ? k->errbuf : sd_strerror(err);
    }
    k->cb(err, &resp, k->udata);
    if (resp.body != k->body) /* taken by the callback */
        k->body = NULL;
    free(headers);
    call_release(k);
    uv_close((uv_handle_t *)&k->deadline, call_closed);
}

/* The call's own deadline timer. libcurl's CURLOPT_TIMEOUT_MS does not run while a transfer
 * waits for a connection (max_connections_per_host reached), so this one, started by the start
 * call, is what keeps the promise of a total deadline. */
static void on_deadline(uv_timer_t *t) {
    call_finish(t->data, SD_ETIMEDOUT);
}

static void drain(sd_http_client *c) {
    CURLMsg *msg;
    int left;
    while (!c->closing && (msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        call *k = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&k);
        /* msg is invalid once the handle leaves the multi handle: read the result first. */
        call_finish(k, map_result(k, msg->data.result));
    }
}

/* ---- the public functions ---- */

sd_http_client *sd_http_client_new(uv_loop_t *loop, const sd_http_client_opts *opts) {
    pthread_once(&curl_once, curl_init);
    if (curl_init_result != CURLE_OK)
        return NULL;
    sd_http_client *c = sd_xcalloc(1, sizeof *c);
    if (opts)
        c->opts = *opts;
    else
        sd_http_client_opts_default(&c->opts);
    c->proxy = c->opts.proxy ? sd_xstrdup(c->opts.proxy) : NULL;
    c->user_agent = sd_xstrdup(c->opts.user_agent ? c->opts.user_agent : "sysdesign");
    c->opts.proxy = c->proxy;
    sd_http_client_opts defaults;
    sd_http_client_opts_default(&defaults);
    if (c->opts.connect_timeout_ms <= 0)
        c->opts.connect_timeout_ms = defaults.connect_timeout_ms;
    if (c->opts.timeout_ms <= 0)
        c->opts.timeout_ms = defaults.timeout_ms;
    if (c->opts.max_response_bytes == 0)
        c->opts.max_response_bytes = defaults.max_response_bytes;
    c->opts.user_agent = c->user_agent;
    c->loop = loop;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        free(c->proxy);
        free(c->user_agent);
        free(c);
        return NULL;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer_set);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    if (c->opts.max_connections_per_host > 0)
        curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          (long)c->opts.max_connections_per_host);
    return c;
}

/* 1 when the "Name: value" lines contain a field called name. */
static int has_header(const char *const *headers, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; headers && headers[i]; i++)
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':')
            return 1;
    return 0;
}

/* Refuses what would let a caller's input inject protocol text or reach another scheme. */
static int request_check(const sd_http_request *req) {
    if (req->url == NULL)
        return SD_EPARSE;
    const char *m = req->method ? req->method : "GET";
    if (*m == '\0' || m[strspn(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_")])
        return SD_EPARSE;
    if (strcmp(m, "HEAD") == 0 && req->body)
        return SD_EPARSE;
    for (size_t i = 0; req->headers && req->headers[i]; i++) {
        const char *h = req->headers[i];
        const char *colon = strchr(h, ':');
        if (colon == NULL || colon == h || strpbrk(h, "\r\n"))
            return SD_EPARSE;
    }
    CURLU *u = curl_url();
    if (u == NULL)
        return -ENOMEM;
    int rc = 0;
    char *scheme = NULL;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, req->url, 0);
    if (uc == CURLUE_UNSUPPORTED_SCHEME)
        rc = SD_EHTTP_SCHEME;
    else if (uc == CURLUE_OUT_OF_MEMORY)
        rc = -ENOMEM;
    else if (uc != CURLUE_OK || curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
        rc = SD_EPARSE;
    else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        rc = SD_EHTTP_SCHEME;
    curl_free(scheme);
    curl_url_cleanup(u);
    return rc;
}

/* Appends line to *list; 0 or -ENOMEM. */
static int slist_add(struct curl_slist **list, const char *line) {
    struct curl_slist *l = curl_slist_append(*list, line);
    if (l == NULL)
        return -ENOMEM;
    *list = l;
    return 0;
}

/* Sets every option of one transfer. Returns 0, or -ENOMEM / SD_EPARSE from libcurl. */
static int call_setup(call *k, const sd_http_request *req) {
    sd_http_client *c = k->client;
    CURL *e = k->easy;
    const char *m = req->method ? req->method : "GET";
    int connect_ms =
        req->connect_timeout_ms > 0 ? req->connect_timeout_ms : c->opts.connect_timeout_ms;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_PRIVATE, (void *)k);
    SET(CURLOPT_NOSIGNAL, 1L);
    /* Removing a transfer whose name is still being resolved (deadline, free) would otherwise
     * join libcurl's resolver thread, blocking the loop until getaddrinfo() returns; with this
     * the thread is detached and frees its own data when the lookup ends. */
    SET(CURLOPT_QUICK_EXIT, 1L);
    SET(CURLOPT_ERRORBUFFER, k->errbuf);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    /* "" rather than unset: libcurl would otherwise read http_proxy and friends. */
    SET(CURLOPT_PROXY, c->proxy ? c->proxy : "");
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_OPENSOCKETDATA, (void *)k);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)k);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)k);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
    SET(CURLOPT_TIMEOUT_MS, (long)k->timeout_ms);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)k->max_body);
    SET(CURLOPT_USERAGENT, c->user_agent);
    if (req->max_redirects > 0) {
        SET(CURLOPT_FOLLOWLOCATION, 1L);
        SET(CURLOPT_MAXREDIRS, (long)req->max_redirects);
    }
    int is_get = strcmp(m, "GET") == 0, is_post = strcmp(m, "POST") == 0;
    if (strcmp(m, "HEAD") == 0)
        SET(CURLOPT_NOBODY, 1L);
    else if (!(is_get && req->body == NULL) && !is_post)
        SET(CURLOPT_CUSTOMREQUEST, m);
    if (req->body || is_post) {
        /* The size first, so that a body holding NUL bytes is copied whole. */
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(req->body ? req->body_len : 0));
        SET(CURLOPT_COPYPOSTFIELDS, req->body ? (const char *)req->body : "");
    }
#undef SET
    if (rc != CURLE_OK)
        return rc == CURLE_OUT_OF_MEMORY ? -ENOMEM : SD_EPARSE;

    for (size_t i = 0; req->headers && req->headers[i]; i++)
        if (slist_add(&k->headers, req->headers[i]) != 0)
            return -ENOMEM;
    /* libcurl would add "Expect: 100-continue" to large bodies (a round trip, or a 1 s wait on
     * servers that ignore it) and a form Content-Type to every body: an empty value removes
     * a header libcurl would add. */
    if (!has_header(req->headers, "Expect") && slist_add(&k->headers, "Expect:") != 0)
        return -ENOMEM;
    if (!has_header(req->headers, "Content-Type") && slist_add(&k->headers, "Content-Type:") != 0)
        return -ENOMEM;
    if (curl_easy_setopt(e, CURLOPT_HTTPHEADER, k->headers) != CURLE_OK)
        return -ENOMEM;
    return 0;
}

int sd_http_client_request(sd_http_client *c, const sd_http_request *req, sd_http_response_cb *cb,
                           void *udata) {
    assert(req != NULL && cb != NULL);
    if (c->closing)
        return SD_ECLOSED;
    int rc = request_check(req);
    if (rc != 0)
        return rc;
    call *k = sd_xcalloc(1, sizeof *k);
    k->client = c;
    k->cb = cb;
    k->udata = udata;
    k->max_body = req->max_response_bytes ? req->max_response_bytes : c->opts.max_response_bytes;
    k->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : c->opts.timeout_ms;
    k->easy = curl_easy_init();
    if (k->easy == NULL) {
        free(k);
        return -ENOMEM;
    }
    rc = call_setup(k, req);
    /* Adding only schedules the transfer (a 0 ms timer): nothing completes in here. */
    if (rc == 0 && curl_multi_add_handle(c->multi, k->easy) != CURLM_OK)
        rc = -ENOMEM;
    if (rc != 0) {
        call_release(k);
        free(k);
        return rc;
    }
    uv_timer_init(c->loop, &k->deadline);
    k->deadline.data = k;
    uv_timer_start(&k->deadline, on_deadline, (uint64_t)k->timeout_ms, 0);
    k->next = c->calls;
    if (c->calls)
        c->calls->prev = k;
    c->calls = k;
    c->stats.requests++;
    c->stats.in_flight++;
    return 0;
}

void sd_http_client_stats_get(const sd_http_client *c, sd_http_client_stats *out) {
    *out = c->stats;
}

const char *sd_http_response_header(const sd_http_response *resp, const char *name) {
    for (size_t i = 0; i < resp->nheaders; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

char *sd_http_response_take_body(sd_http_response *resp, size_t *len) {
    char *body = resp->body;
    if (len)
        *len = body ? resp->body_len : 0;
    resp->body = NULL;
    resp->body_len = 0;
    return body;
}

static void client_closed(uv_handle_t *h) {
    sd_http_client *c = h->data;
    free(c->proxy);
    free(c->user_agent);
    free(c);
}

void sd_http_client_free(sd_http_client *c) {
    if (c == NULL || c->closing)
        return;
    c->closing = 1;
    while (c->calls)
        call_finish(c->calls, SD_ECLOSED);
    /* Closes the pooled connections; libcurl may still call on_socket and on_timer_set here. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (c->socks)
        sock_close(c, c->socks);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, client_closed);
}

/* ---- the usual address policy ---- */

/* The ranges live in addr_vet.c, the one list of them in the tree. */
int sd_http_addr_is_public(const struct sockaddr *addr) {
    return sd_addr_classify(addr) == SD_ADDR_OK;
}
