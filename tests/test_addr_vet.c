/*
 * test_addr_vet.c - common/addr_vet.h, the SSRF guard: every spelling of a non-public host in
 * a URL refused with its reason, the syntax rules, public URLs allowed, and through the HTTP
 * client: a loopback listener that never sees a connection while the guard is on and sees one
 * with allow_private. Then the same address list through two npm filters (request-filtering-agent
 * and ssrf-req-filter, tests/node/ssrf-compare.mjs), listing what each side lets through.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "addr_vet.h"
#include "http_client.h"
#include "node.h"
#include "sd.h"
#include "support.h"

typedef struct url_case {
    const char *url;
    sd_addr_verdict want;
} url_case;

/* Non-public hosts, in every spelling the guard knows. */
static const url_case refused_hosts[] = {
    {"http://127.0.0.1/", SD_ADDR_LOOPBACK},
    {"http://127.255.255.254:8080/x", SD_ADDR_LOOPBACK},
    {"http://127.0.0.1./", SD_ADDR_LOOPBACK},
    {"http://0.0.0.0/", SD_ADDR_UNSPECIFIED},
    {"http://0/", SD_ADDR_UNSPECIFIED},
    {"http://[::]/", SD_ADDR_UNSPECIFIED},
    {"http://[::1]/", SD_ADDR_LOOPBACK},
    {"http://[0:0:0:0:0:0:0:1]:80/", SD_ADDR_LOOPBACK},
    {"http://0.1.2.3/", SD_ADDR_THIS_NETWORK},
    {"http://10.0.0.1/", SD_ADDR_PRIVATE},
    {"http://172.16.0.1/", SD_ADDR_PRIVATE},
    {"http://172.31.255.255/", SD_ADDR_PRIVATE},
    {"http://192.168.1.1/", SD_ADDR_PRIVATE},
    {"http://169.254.169.254/latest/meta-data/", SD_ADDR_METADATA},
    {"http://169.254.1.1/", SD_ADDR_LINK_LOCAL},
    {"http://[fe80::1]/", SD_ADDR_LINK_LOCAL},
    {"http://[febf::1]/", SD_ADDR_LINK_LOCAL},
    {"http://[fd00:ec2::254]/", SD_ADDR_METADATA},
    {"http://100.64.0.1/", SD_ADDR_SHARED},
    {"http://100.127.255.255/", SD_ADDR_SHARED},
    {"http://[fc00::1]/", SD_ADDR_ULA},
    {"http://[fd12:3456::1]/", SD_ADDR_ULA},
    {"http://224.0.0.1/", SD_ADDR_MULTICAST},
    {"http://239.255.255.250/", SD_ADDR_MULTICAST},
    {"http://[ff02::1]/", SD_ADDR_MULTICAST},
    {"http://255.255.255.255/", SD_ADDR_BROADCAST},
    {"http://240.0.0.1/", SD_ADDR_RESERVED},
    {"http://192.0.0.8/", SD_ADDR_RESERVED},
    {"http://192.0.2.1/", SD_ADDR_DOCUMENTATION},
    {"http://198.51.100.1/", SD_ADDR_DOCUMENTATION},
    {"http://203.0.113.1/", SD_ADDR_DOCUMENTATION},
    {"http://[2001:db8::1]/", SD_ADDR_DOCUMENTATION},
    {"http://198.18.0.1/", SD_ADDR_BENCHMARK},
    {"http://[2001::1]/", SD_ADDR_RESERVED},
    {"http://[fec0::1]/", SD_ADDR_RESERVED},
    /* IPv4 inside IPv6: mapped, IPv4-compatible, 6to4, NAT64. */
    {"http://[::ffff:127.0.0.1]/", SD_ADDR_LOOPBACK},
    {"http://[::ffff:7f00:1]/", SD_ADDR_LOOPBACK},
    {"http://[0:0:0:0:0:ffff:169.254.169.254]/", SD_ADDR_METADATA},
    {"http://[::ffff:10.0.0.1]/", SD_ADDR_PRIVATE},
    {"http://[::127.0.0.1]/", SD_ADDR_RESERVED},
    {"http://[::7f00:1]/", SD_ADDR_RESERVED},
    {"http://[::8.8.8.8]/", SD_ADDR_RESERVED},
    {"http://[2002:7f00:1::]/", SD_ADDR_LOOPBACK},
    {"http://[2002:a9fe:a9fe::1]/", SD_ADDR_METADATA},
    {"http://[2002:c0a8:101::]/", SD_ADDR_PRIVATE},
    {"http://[64:ff9b::7f00:1]/", SD_ADDR_LOOPBACK},
    {"http://[64:ff9b::169.254.169.254]/", SD_ADDR_METADATA},
    /* IPv4 spelled as one number, in hex, octal, short or mixed forms. */
    {"http://2130706433/", SD_ADDR_LOOPBACK},
    {"http://0x7f000001/", SD_ADDR_LOOPBACK},
    {"http://0X7F000001/", SD_ADDR_LOOPBACK},
    {"http://017700000001/", SD_ADDR_LOOPBACK},
    {"http://0x7f.1/", SD_ADDR_LOOPBACK},
    {"http://0177.0.0.1/", SD_ADDR_LOOPBACK},
    {"http://0177.1/", SD_ADDR_LOOPBACK},
    {"http://127.1/", SD_ADDR_LOOPBACK},
    {"http://127.0.1/", SD_ADDR_LOOPBACK},
    {"http://0x7f.0.0.0x1/", SD_ADDR_LOOPBACK},
    {"http://0177.0x0.0.01/", SD_ADDR_LOOPBACK},
    {"http://127.000.000.001/", SD_ADDR_LOOPBACK},
    {"http://10.1/", SD_ADDR_PRIVATE},
    {"http://3232235777/", SD_ADDR_PRIVATE},
    {"http://0xa9fea9fe/", SD_ADDR_METADATA},
    {"http://0xA9.0376.43518/", SD_ADDR_METADATA},
    {"http://2852039166/", SD_ADDR_METADATA},
    {"http://0x/", SD_ADDR_UNSPECIFIED},
    {"http://0x0.0/", SD_ADDR_UNSPECIFIED},
    /* Names. */
    {"http://localhost/", SD_ADDR_LOCALHOST},
    {"http://LOCALHOST:8080/", SD_ADDR_LOCALHOST},
    {"http://localhost./", SD_ADDR_LOCALHOST},
    {"http://foo.localhost/", SD_ADDR_LOCALHOST},
    {"http://a.b.LocalHost/", SD_ADDR_LOCALHOST},
    {"http://localhost.localdomain/", SD_ADDR_LOCALHOST},
    {"http://ip6-localhost/", SD_ADDR_LOCALHOST},
};

/* URLs broken by the syntax rules (addr_vet.h, rules 1 to 6). */
static const url_case bad_syntax[] = {
    {"ftp://8.8.8.8/", SD_ADDR_URL_SCHEME},
    {"file:///etc/passwd", SD_ADDR_URL_SCHEME},
    {"gopher://example.com/", SD_ADDR_URL_SCHEME},
    {"javascript:alert(1)", SD_ADDR_URL_SCHEME},
    {"http:/example.com/", SD_ADDR_URL_SCHEME},
    {"//example.com/", SD_ADDR_URL_SCHEME},
    {"", SD_ADDR_URL_SCHEME},
    {"http://user:pw@example.com/", SD_ADDR_URL_USERINFO},
    {"http://example.com@127.0.0.1/", SD_ADDR_URL_USERINFO},
    {"http://@example.com/", SD_ADDR_URL_USERINFO},
    {"http://127.0.0.1\\@example.com/", SD_ADDR_URL_CHAR},
    {"http://example.com\\@127.0.0.1/", SD_ADDR_URL_CHAR},
    {"http://exa mple.com/", SD_ADDR_URL_CHAR},
    {"http://example.com/a b", SD_ADDR_URL_CHAR},
    {"http://example.com/\t", SD_ADDR_URL_CHAR},
    {"http://example.com/\r\nHost: x", SD_ADDR_URL_CHAR},
    {"http://example.com/\x7f", SD_ADDR_URL_CHAR},
    {"http://\xc3\xa9xample.com/", SD_ADDR_URL_CHAR},
    {"http://ex%61mple.com/", SD_ADDR_URL_HOST},
    {"http://%31%32%37.0.0.1/", SD_ADDR_URL_HOST},
    {"http://[::1%25lo]/", SD_ADDR_URL_HOST},
    {"http://[fe80::1%eth0]/", SD_ADDR_URL_HOST},
    {"http://[v1.abc]/", SD_ADDR_URL_IPV6},
    {"http://[::1/", SD_ADDR_URL_IPV6},
    {"http://[::1]x/", SD_ADDR_URL_IPV6},
    {"http://[127.0.0.1]/", SD_ADDR_URL_IPV6},
    {"http://[]/", SD_ADDR_URL_IPV6},
    {"http://[::ffff:127.1]/", SD_ADDR_URL_IPV6},
    {"http:///", SD_ADDR_URL_HOST},
    {"http://", SD_ADDR_URL_HOST},
    {"http://:80/", SD_ADDR_URL_HOST},
    {"http://.example.com/", SD_ADDR_URL_HOST},
    {"http://example..com/", SD_ADDR_URL_HOST},
    {"http://example.com../", SD_ADDR_URL_HOST},
    {"http://exa$mple.com/", SD_ADDR_URL_HOST},
    {"http://exa*mple.com/", SD_ADDR_URL_HOST},
    {"http://1.2.3.4.5/", SD_ADDR_URL_IPV4},
    {"http://256.0.0.1/", SD_ADDR_URL_IPV4},
    {"http://08.0.0.1/", SD_ADDR_URL_IPV4},
    {"http://1.2.3.0x100/", SD_ADDR_URL_IPV4},
    {"http://1.2.65536/", SD_ADDR_URL_IPV4},
    {"http://4294967296/", SD_ADDR_URL_IPV4},
    {"http://0x100000000/", SD_ADDR_URL_IPV4},
    {"http://134744072/", SD_ADDR_URL_IPV4_FORM},
    {"http://0x08080808/", SD_ADDR_URL_IPV4_FORM},
    {"http://8.8.2056/", SD_ADDR_URL_IPV4_FORM},
    {"http://010.8.8.8/", SD_ADDR_URL_IPV4_FORM},
    {"http://example.com:0/", SD_ADDR_URL_PORT},
    {"http://example.com:65536/", SD_ADDR_URL_PORT},
    {"http://example.com:/", SD_ADDR_URL_PORT},
    {"http://example.com:8o/", SD_ADDR_URL_PORT},
    {"http://example.com:-80/", SD_ADDR_URL_PORT},
    {"http://example.com:000080/", SD_ADDR_URL_PORT},
    {"http://example.com:80:80/", SD_ADDR_URL_PORT},
    {"http://[2606:4700::1111]:99999/", SD_ADDR_URL_PORT},
};

/* Public targets, allowed. */
static const char *const public_urls[] = {
    "http://8.8.8.8/",
    "https://1.1.1.1:8443/x?y=1#z",
    "HTTP://Example.COM/",
    "https://example.com",
    "http://example.com./",
    "http://example.com?q=1",
    "http://example.com#frag",
    "http://172.32.0.1/",
    "http://172.15.255.255/",
    "http://100.128.0.1/",
    "http://100.63.255.255/",
    "http://192.169.0.1/",
    "http://169.255.0.1/",
    "http://223.255.255.255/",
    "http://[2606:4700::1111]/",
    "http://[2A00:1450:4001::1]:8080/",
    "http://[::ffff:8.8.8.8]/",
    "http://[2002:808:808::1]/",
    "http://[64:ff9b::808:808]/",
    "http://under_score.example.com/",
    "http://a-b.example/",
    "http://xn--bcher-kva.example/",
    "http://localhost.example.com/",
    "http://mylocalhost/",
    "http://127.0.0.1.nip.io/",
    "http://example.com:65535/%2e%2e/?a=%00",
};

Test(addr_vet, every_spelling_of_a_non_public_host_is_refused_with_its_reason) {
    for (size_t i = 0; i < sizeof refused_hosts / sizeof refused_hosts[0]; i++) {
        sd_addr_verdict v = sd_addr_url_check(refused_hosts[i].url, NULL, NULL);
        cr_expect_eq(v, refused_hosts[i].want, "%s: got '%s', want '%s'", refused_hosts[i].url,
                     sd_addr_reason(v), sd_addr_reason(refused_hosts[i].want));
    }
}

Test(addr_vet, urls_breaking_the_syntax_rules_are_refused) {
    for (size_t i = 0; i < sizeof bad_syntax / sizeof bad_syntax[0]; i++) {
        sd_addr_verdict v = sd_addr_url_check(bad_syntax[i].url, NULL, NULL);
        cr_expect_eq(v, bad_syntax[i].want, "%s: got '%s', want '%s'", bad_syntax[i].url,
                     sd_addr_reason(v), sd_addr_reason(bad_syntax[i].want));
    }
}

Test(addr_vet, public_urls_are_allowed) {
    for (size_t i = 0; i < sizeof public_urls / sizeof public_urls[0]; i++) {
        sd_addr_verdict v = sd_addr_url_check(public_urls[i], NULL, NULL);
        cr_expect_eq(v, SD_ADDR_OK, "%s: %s", public_urls[i], sd_addr_reason(v));
    }
}

Test(addr_vet, an_accepted_url_reports_its_host_and_port) {
    sd_addr_url u;
    cr_assert_eq(sd_addr_url_check("HTTPS://Example.COM./x", NULL, &u), SD_ADDR_OK);
    cr_assert_str_eq(u.host, "example.com");
    cr_assert_eq(u.https, 1);
    cr_assert_eq(u.port, 443);
    cr_assert_eq(u.host_is_ip, 0);
    cr_assert_eq(sd_addr_url_check("http://[2A00:1450::1]:8080", NULL, &u), SD_ADDR_OK);
    cr_assert_str_eq(u.host, "2a00:1450::1");
    cr_assert_eq(u.host_is_ip, 6);
    cr_assert_eq(u.port, 8080);
    cr_assert_eq(sd_addr_url_check("http://8.8.8.8?x", NULL, &u), SD_ADDR_OK);
    cr_assert_str_eq(u.host, "8.8.8.8");
    cr_assert_eq(u.host_is_ip, 4);
    cr_assert_eq(u.port, 80);
    cr_assert_eq(u.https, 0);
}

/* Rule 1: 2,048 bytes pass, 2,049 do not; a caller's own bound replaces it. */
Test(addr_vet, the_length_bound_is_exact) {
    char url[4096];
    const char *head = "http://example.com/";
    size_t hl = strlen(head);
    memcpy(url, head, hl);
    memset(url + hl, 'a', 2048 - hl);
    url[2048] = '\0';
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_OK);
    url[2048] = 'a';
    url[2049] = '\0';
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_URL_LENGTH);
    sd_addr_opts o;
    sd_addr_opts_default(&o);
    o.max_url_len = 30;
    cr_assert_eq(sd_addr_url_check("http://example.com/0123456789ab", &o, NULL),
                 SD_ADDR_URL_LENGTH);
    cr_assert_eq(sd_addr_url_check("http://example.com/0123456789a", &o, NULL), SD_ADDR_OK);
}

/* Rule 4: labels of 63 bytes pass and 64 do not; names of 253 bytes pass and 254 do not. */
Test(addr_vet, host_and_label_lengths_are_bounded) {
    char url[600];
    snprintf(url, sizeof url, "http://%.63s.com/",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_OK);
    snprintf(url, sizeof url, "http://%.64s.com/",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_URL_HOST);
    /* 63 x "abc." = 252 bytes, then "d": 253. */
    char host[300] = "";
    for (int i = 0; i < 63; i++)
        strcat(host, "abc.");
    snprintf(url, sizeof url, "http://%sd/", host);
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_OK);
    snprintf(url, sizeof url, "http://%sde/", host);
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_URL_HOST);
}

/* allow_private lets literal private hosts and localhost through; the syntax rules stay. */
Test(addr_vet, allow_private_turns_off_the_address_rules_only) {
    sd_addr_opts o;
    sd_addr_opts_default(&o);
    o.allow_private = 1;
    const char *now_allowed[] = {"http://127.0.0.1:8080/", "http://[::1]/", "http://localhost/",
                                 "http://169.254.169.254/", "http://[::ffff:10.0.0.1]/"};
    for (size_t i = 0; i < sizeof now_allowed / sizeof now_allowed[0]; i++)
        cr_expect_eq(sd_addr_url_check(now_allowed[i], &o, NULL), SD_ADDR_OK, "%s", now_allowed[i]);
    cr_expect_eq(sd_addr_url_check("http://127.1/", &o, NULL), SD_ADDR_URL_IPV4_FORM);
    cr_expect_eq(sd_addr_url_check("http://u@127.0.0.1/", &o, NULL), SD_ADDR_URL_USERINFO);
    cr_expect_eq(sd_addr_url_check("ftp://127.0.0.1/", &o, NULL), SD_ADDR_URL_SCHEME);
}

Test(addr_vet, every_verdict_has_a_reason) {
    for (int v = SD_ADDR_OK; v <= SD_ADDR_FAMILY; v++) {
        const char *r = sd_addr_reason((sd_addr_verdict)v);
        cr_assert(r && r[0]);
        cr_assert_str_neq(r, "refused", "verdict %d has no reason of its own", v);
    }
}

/* ---- resolved addresses (the connect-time hook) ---- */

static int vet_text(const char *text, const sd_addr_opts *opts) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (strchr(text, ':')) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        cr_assert_eq(inet_pton(AF_INET6, text, &in6->sin6_addr), 1, "%s", text);
        len = sizeof *in6;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        cr_assert_eq(inet_pton(AF_INET, text, &in->sin_addr), 1, "%s", text);
        len = sizeof *in;
    }
    return sd_addr_vet_connect((const struct sockaddr *)&ss, len, (void *)opts);
}

Test(addr_vet, the_connect_hook_refuses_resolved_non_public_addresses) {
    const char *refused[] = {"127.0.0.1",
                             "127.9.9.9",
                             "0.0.0.0",
                             "10.9.8.7",
                             "172.20.0.1",
                             "192.168.0.10",
                             "169.254.169.254",
                             "100.100.1.1",
                             "224.1.1.1",
                             "255.255.255.255",
                             "240.1.2.3",
                             "::",
                             "::1",
                             "fe80::1",
                             "fd00::1",
                             "ff05::2",
                             "::ffff:127.0.0.1",
                             "64:ff9b::a00:1",
                             "2002:7f00:1::",
                             "::7f00:1"};
    const char *allowed[] = {"8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:1.1.1.1"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        cr_expect_eq(vet_text(refused[i], NULL), -1, "%s", refused[i]);
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        cr_expect_eq(vet_text(allowed[i], NULL), 0, "%s", allowed[i]);
    sd_addr_opts o;
    sd_addr_opts_default(&o);
    o.allow_private = 1;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        cr_expect_eq(vet_text(refused[i], &o), 0, "%s with allow_private", refused[i]);
    struct sockaddr_un_like {
        sa_family_t family;
        char path[100];
    } other = {.family = AF_UNIX};
    cr_expect_eq(sd_addr_vet_connect((const struct sockaddr *)&other, sizeof other, NULL), -1);
}

/* ---- through the HTTP client, against a loopback listener that counts accepts ---- */

typedef struct listener {
    int fd, port;
    int wake[2];
    atomic_int accepts;
    pthread_t thread;
} listener;

/* Accepts, reads one request head, answers 200 "ok" and closes; until woken. */
static void *listener_main(void *arg) {
    listener *l = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = l->fd, .events = POLLIN},
                              {.fd = l->wake[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 || p[1].revents)
            return NULL;
        int c = accept(l->fd, NULL, NULL);
        if (c < 0)
            continue;
        atomic_fetch_add(&l->accepts, 1);
        char buf[4096];
        size_t got = 0;
        while (got < sizeof buf - 1) {
            ssize_t n = read(c, buf + got, sizeof buf - 1 - got);
            if (n <= 0)
                break;
            got += (size_t)n;
            buf[got] = '\0';
            if (strstr(buf, "\r\n\r\n"))
                break;
        }
        const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        if (write(c, resp, strlen(resp)) < 0) {
            /* the client went away: nothing to do */
        }
        close(c);
    }
}

static listener *listener_start(void) {
    listener *l = sd_xcalloc(1, sizeof *l);
    l->fd = test_listen_loopback(&l->port);
    cr_assert_eq(pipe(l->wake), 0);
    cr_assert_eq(pthread_create(&l->thread, NULL, listener_main, l), 0);
    return l;
}

static int listener_stop(listener *l) {
    cr_assert_eq(write(l->wake[1], "x", 1), 1);
    pthread_join(l->thread, NULL);
    close(l->fd);
    close(l->wake[0]);
    close(l->wake[1]);
    int n = atomic_load(&l->accepts);
    free(l);
    return n;
}

typedef struct outcome {
    int calls, err, status;
} outcome;

static void on_done(int err, sd_http_response *resp, void *udata) {
    outcome *o = udata;
    o->calls++;
    o->err = err;
    o->status = resp->status;
}

/* The whole path a component takes: the URL check first, then the request through a client
 * whose vet hook is sd_addr_vet_connect. The request is sent whatever the URL check would
 * say, to test the hook alone. Returns how it ended; *vet_refusals gets the hook's refusals. */
static outcome guarded_get(const char *url, const sd_addr_opts *opts, uint64_t *vet_refusals) {
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    sd_http_client_opts co;
    sd_http_client_opts_default(&co);
    co.vet = sd_addr_vet_connect;
    co.vet_udata = (void *)opts;
    co.timeout_ms = 20000;
    sd_http_client *c = sd_http_client_new(&loop, &co);
    cr_assert(c);
    outcome o = {0};
    sd_http_request req = {.url = url};
    cr_assert_eq(sd_http_client_request(c, &req, on_done, &o), 0);
    while (o.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    sd_http_client_stats st;
    sd_http_client_stats_get(c, &st);
    *vet_refusals = st.vet_refusals;
    sd_http_client_free(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    cr_assert_eq(o.calls, 1);
    return o;
}

static void suite_fini(void) {
    curl_global_cleanup(); /* for a clean leak report */
}

TestSuite(addr_vet_client, .fini = suite_fini, .timeout = 120);

Test(addr_vet_client, a_loopback_listener_gets_no_connection_while_the_guard_is_on) {
    listener *l = listener_start();
    char *url = sd_xasprintf("http://127.0.0.1:%d/hook", l->port);
    cr_assert_eq(sd_addr_url_check(url, NULL, NULL), SD_ADDR_LOOPBACK);
    uint64_t refusals = 0;
    outcome o = guarded_get(url, NULL, &refusals);
    cr_assert_eq(o.err, SD_EHTTP_BLOCKED, "%s", sd_strerror(o.err));
    cr_assert_geq(refusals, 1);
    free(url);
    cr_assert_eq(listener_stop(l), 0, "the guard let a connection reach the loopback listener");
}

/* A name that passes the URL check (no literal) and resolves to loopback is stopped when the
 * socket is opened: the check that DNS rebinding cannot pass. */
Test(addr_vet_client, a_name_resolving_to_loopback_is_refused_at_connect) {
    listener *l = listener_start();
    char *url = sd_xasprintf("http://localhost:%d/hook", l->port);
    uint64_t refusals = 0;
    outcome o = guarded_get(url, NULL, &refusals);
    cr_assert_eq(o.err, SD_EHTTP_BLOCKED, "%s", sd_strerror(o.err));
    cr_assert_geq(refusals, 1);
    free(url);
    cr_assert_eq(listener_stop(l), 0);
}

Test(addr_vet_client, allow_private_lets_the_connection_through) {
    listener *l = listener_start();
    sd_addr_opts opts;
    sd_addr_opts_default(&opts);
    opts.allow_private = 1;
    char *url = sd_xasprintf("http://127.0.0.1:%d/hook", l->port);
    cr_assert_eq(sd_addr_url_check(url, &opts, NULL), SD_ADDR_OK);
    uint64_t refusals = 0;
    outcome o = guarded_get(url, &opts, &refusals);
    cr_assert_eq(o.err, 0, "%s", sd_strerror(o.err));
    cr_assert_eq(o.status, 200);
    cr_assert_eq(refusals, 0);
    free(url);
    cr_assert_eq(listener_stop(l), 1);
}

/* ---- the same list through two npm filters ---- */

/* The names tests/node/ssrf-compare.mjs resolves (its fixed table), and what to. */
static const char *fixed_name(const char *host) {
    static const char *const names[][2] = {{"localhost", "127.0.0.1"},
                                           {"foo.localhost", "127.0.0.1"},
                                           {"example.com", "93.184.215.14"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(host, names[i][0]) == 0)
            return names[i][1];
    return NULL;
}

/* What our guard does with url end to end: "allowed" or "refused". *comparable is 0 for a name
 * the fixed table does not hold (every side would refuse it for failing to resolve). */
static const char *ours(const char *url, int *comparable) {
    sd_addr_url u;
    sd_addr_verdict v = sd_addr_url_check(url, NULL, &u);
    *comparable = 1;
    if (u.host[0] && !u.host_is_ip && !fixed_name(u.host))
        *comparable = 0;
    if (v != SD_ADDR_OK)
        return "refused";
    if (u.host_is_ip)
        return "allowed";
    const char *addr = fixed_name(u.host);
    return addr && vet_text(addr, NULL) == 0 ? "allowed" : "refused";
}

/* Forms the npm filters let through, as measured with request-filtering-agent 3.2.1 and
 * ssrf-req-filter 1.1.1 (common/README.md lists them). A change here means the packages
 * changed: update the README. */
static const char *const npm_known_misses[] = {
    "http://[::127.0.0.1]/",
    "http://[::7f00:1]/",
    "http://[::8.8.8.8]/",
};

Test(addr_vet_npm, the_npm_filters_see_the_same_list) {
    char why[512];
    if (!node_ready(why, sizeof why))
        cr_skip_test("skipped: %s", why);
    /* The list: every refused host and public URL whose host is a literal or a fixed name. */
    size_t cap = 1 << 16, len = 0;
    char *input = sd_xmalloc(cap);
    const char *urls[256];
    int want_refused[256];
    size_t n = 0;
    for (size_t i = 0; i < sizeof refused_hosts / sizeof refused_hosts[0]; i++) {
        int comparable;
        ours(refused_hosts[i].url, &comparable);
        if (comparable)
            urls[n] = refused_hosts[i].url, want_refused[n++] = 1;
    }
    /* Hosts our syntax rules refuse that Node's URL parser decodes into a loopback host. */
    static const char *const decoded[] = {"http://example.com@127.0.0.1/",
                                          "http://%31%32%37.0.0.1/",
                                          "http://127.0.0.1\\@example.com/", "http://[::1%25lo]/"};
    for (size_t i = 0; i < sizeof decoded / sizeof decoded[0]; i++)
        urls[n] = decoded[i], want_refused[n++] = 1;
    for (size_t i = 0; i < sizeof public_urls / sizeof public_urls[0]; i++) {
        int comparable;
        ours(public_urls[i], &comparable);
        if (comparable)
            urls[n] = public_urls[i], want_refused[n++] = 0;
    }
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(input + len, cap - len, "%s\n", urls[i]);
    int status;
    char *out = node_run("ssrf-compare.mjs", NULL, input, len, &status);
    cr_assert_eq(status, 0, "ssrf-compare.mjs failed");

    int npm_misses = 0, npm_over = 0, our_misses = 0, lines = 0;
    int known_seen[sizeof npm_known_misses / sizeof npm_known_misses[0]] = {0};
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *t1 = strchr(line, '\t');
        cr_assert(t1, "a line without a tab: %s", line);
        *t1 = '\0';
        char *rfa = t1 + 1, *t2 = strchr(rfa, '\t');
        cr_assert(t2);
        *t2 = '\0';
        char *srf = t2 + 1;
        cr_assert_lt((size_t)lines, n);
        cr_assert_str_eq(line, urls[lines], "the script answered out of order");
        int comparable;
        const char *our = ours(line, &comparable);
        int refused = want_refused[lines];
        int rfa_allows = strcmp(rfa, "allowed") == 0, srf_allows = strcmp(srf, "allowed") == 0;
        if (refused && (rfa_allows || srf_allows)) {
            npm_misses++;
            int known = 0;
            for (size_t k = 0; k < sizeof npm_known_misses / sizeof npm_known_misses[0]; k++)
                if (strcmp(line, npm_known_misses[k]) == 0)
                    known = 1, known_seen[k] = 1;
            cr_log_info("npm lets a non-public host through: %-40s request-filtering-agent=%s "
                        "ssrf-req-filter=%s ours=%s",
                        line, rfa, srf, our);
            cr_expect(known, "%s: a miss common/README.md does not list", line);
        }
        if (!refused && (!rfa_allows || !srf_allows)) {
            npm_over++;
            cr_log_info("npm refuses a public host: %-40s request-filtering-agent=%s "
                        "ssrf-req-filter=%s ours=%s",
                        line, rfa, srf, our);
        }
        if ((refused && strcmp(our, "refused") != 0) || (!refused && strcmp(our, "allowed") != 0))
            our_misses++;
        lines++;
    }
    cr_assert_eq((size_t)lines, n, "one line per URL");
    cr_assert_eq(our_misses, 0);
    for (size_t k = 0; k < sizeof npm_known_misses / sizeof npm_known_misses[0]; k++)
        cr_expect(known_seen[k], "%s: listed as an npm miss but now refused: update the README",
                  npm_known_misses[k]);
    cr_log_info("%zu URLs: the npm filters let %d non-public hosts through and refused %d "
                "public ones; ours: %d wrong",
                n, npm_misses, npm_over, our_misses);
    free(out);
    free(input);
}
