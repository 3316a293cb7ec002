/*
 * test_http_trust.c - who the client is (sd_http_req_client): the peer, unless the peer is a
 * proxy named by --trust-proxy; then X-Forwarded-For read from the right, never believing an
 * entry that an untrusted hop could have written.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "sd.h"
#include "support.h"

Test(http_trust, blocks_are_parsed_and_bad_ones_refused) {
    sd_http_trust t = {0};
    char err[160];
    const char *good[] = {"10.0.0.0/8", "127.0.0.1", "::1/128", "fd00::/8", "0.0.0.0/0"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_assert_eq(sd_http_trust_add(&t, good[i], err, sizeof err), 0, "%s: %s", good[i], err);
    const char *bad[] = {"10.0.0.0/33", "abc", "10.0.0.0/", "10.0.0.0/-1", "::1/129",
                         "10.0.0.0/8x", "",    "/8",        "10.0.0/8"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(sd_http_trust_add(&t, bad[i], err, sizeof err), -1, "%s was taken", bad[i]);
        cr_assert_neq(err[0], '\0');
    }
    cr_assert_eq(t.n, 5, "a refused block was kept");
    sd_http_trust full = {0};
    for (int i = 0; i < SD_HTTP_TRUST_MAX; i++)
        cr_assert_eq(sd_http_trust_add(&full, "10.0.0.1", err, sizeof err), 0);
    cr_assert_eq(sd_http_trust_add(&full, "10.0.0.1", err, sizeof err), -1, "no bound");
}

Test(http_trust, membership_follows_the_prefix) {
    sd_http_trust t = {0};
    char err[160];
    cr_assert_eq(sd_http_trust_add(&t, "10.1.0.0/16", err, sizeof err), 0);
    cr_assert_eq(sd_http_trust_add(&t, "192.168.7.0/25", err, sizeof err), 0);
    cr_assert_eq(sd_http_trust_add(&t, "2001:db8::/32", err, sizeof err), 0);
    const char *in[] = {"10.1.0.0", "10.1.255.255", "192.168.7.127", "2001:db8::5",
                        "2001:db8:ffff::1"};
    const char *out[] = {"10.2.0.0", "10.0.255.255", "192.168.7.128", "2001:db9::1", "garbage", ""};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++)
        cr_assert(sd_http_trust_has(&t, in[i]), "%s", in[i]);
    for (size_t i = 0; i < sizeof out / sizeof *out; i++)
        cr_assert_not(sd_http_trust_has(&t, out[i]), "%s", out[i]);
    /* how a dual-stack listener writes an IPv4 peer */
    cr_assert(sd_http_trust_has(&t, "::ffff:10.1.0.1"));
    cr_assert_not(sd_http_trust_has(&t, "::ffff:10.2.0.1"));
    sd_http_trust none = {0};
    cr_assert_not(sd_http_trust_has(&none, "10.1.0.1"));
}

/* A block written in its IPv4-mapped form counts its prefix in IPv6 bits (96 of them before the
 * IPv4 part) and matches IPv4 peers in both spellings. */
Test(http_trust, a_mapped_block_counts_ipv6_bits) {
    sd_http_trust t = {0};
    char err[160];
    cr_assert_eq(sd_http_trust_add(&t, "::ffff:10.1.0.0/112", err, sizeof err), 0, "%s", err);
    cr_assert_eq(sd_http_trust_add(&t, "::ffff:192.168.7.9", err, sizeof err), 0, "%s", err);
    cr_assert(sd_http_trust_has(&t, "10.1.200.3"));
    cr_assert(sd_http_trust_has(&t, "::ffff:10.1.0.1"));
    cr_assert(sd_http_trust_has(&t, "192.168.7.9"));
    cr_assert_not(sd_http_trust_has(&t, "10.2.0.1"), "the prefix was read as IPv4 bits");
    cr_assert_not(sd_http_trust_has(&t, "192.168.7.10"));
    const char *bad[] = {"::ffff:10.0.0.0/95", "::ffff:10.0.0.0/129", "::ffff:10.0.0.0/16"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(sd_http_trust_add(&t, bad[i], err, sizeof err), -1, "%s was taken", bad[i]);
        cr_assert_not_null(strstr(err, "96 to 128"), "%s", err);
    }
}

/* ---- Over HTTP: a forked server that answers each request with sd_http_req_client ---------- */

static void echo_client(sd_http_req *req, void *udata) {
    (void)udata;
    const char *c = sd_http_req_client(req);
    sd_http_req_respond(req, 200, "text/plain", c, strlen(c));
}

static void echo_main(int out, void *arg) {
    uv_loop_t l;
    uv_loop_init(&l);
    sd_http_server *srv = sd_http_server_new(&l, NULL);
    sd_http_server_trust(srv, arg);
    sd_http_server_route(srv, NULL, "*", echo_client, NULL);
    if (sd_http_server_listen(srv, "127.0.0.1:0") != 0)
        _exit(1);
    test_serve_and_exit(&l, srv, out);
}

/* The client the server sees for a request with these extra header lines ("" for none). */
static void client_for(int port, const char *headers, char *out, size_t len) {
    char req[512], buf[4096];
    const char *body = NULL;
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: x\r\n%s\r\n", headers);
    cr_assert_eq(test_http_exchange(port, req, buf, sizeof buf, &body), 200);
    snprintf(out, len, "%s", body ? body : "");
}

static pid_t start_echo(const char *const blocks[], int *port, int *lines) {
    static sd_http_trust t;
    memset(&t, 0, sizeof t);
    char err[160];
    for (int i = 0; blocks[i]; i++)
        cr_assert_eq(sd_http_trust_add(&t, blocks[i], err, sizeof err), 0, "%s", err);
    return test_fork_server(echo_main, &t, port, lines);
}

Test(http_trust, an_untrusted_peer_is_the_client_whatever_it_says) {
    int port, lines;
    pid_t pid = start_echo((const char *[]){"10.0.0.0/8", NULL}, &port, &lines);
    char c[64];
    client_for(port, "X-Forwarded-For: 203.0.113.9\r\n", c, sizeof c);
    cr_assert_str_eq(c, "127.0.0.1", "a client off the trusted blocks named itself");
    client_for(port, "", c, sizeof c);
    cr_assert_str_eq(c, "127.0.0.1");
    close(lines);
    test_kill_wait(pid, SIGKILL);
}

Test(http_trust, behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client) {
    int port, lines;
    pid_t pid = start_echo((const char *[]){"127.0.0.0/8", "10.9.0.0/16", NULL}, &port, &lines);
    struct {
        const char *headers, *client;
    } cases[] = {
        {"", "127.0.0.1"}, /* no header: the proxy itself */
        {"X-Forwarded-For: 203.0.113.9\r\n", "203.0.113.9"},
        /* the client wrote the first entry itself: only the proxy's own is believed */
        {"X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n", "203.0.113.9"},
        /* a chain of trusted proxies is walked through */
        {"X-Forwarded-For: 198.51.100.1,203.0.113.9 , 10.9.4.4,127.0.0.7\r\n", "203.0.113.9"},
        {"X-Forwarded-For: 2001:db8::7\r\n", "2001:db8::7"},
        /* all trusted: the left-most */
        {"X-Forwarded-For: 10.9.1.1, 127.0.0.9\r\n", "10.9.1.1"},
        /* an entry that is not an address: the client is unknown, never the trusted hop */
        {"X-Forwarded-For: 203.0.113.9, unknown\r\n", "unknown"},
        {"X-Forwarded-For: 203.0.113.9, garbage, 10.9.0.1\r\n", "unknown"},
        {"X-Forwarded-For: 203.0.113.9, 1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19\r\n",
         "unknown"},
        {"X-Forwarded-For: \r\n", "127.0.0.1"},
        {"X-Forwarded-For: 203.0.113.9,, 127.0.0.3,\r\n", "203.0.113.9"},
        /* ports and zones, as some proxies write them */
        {"X-Forwarded-For: 203.0.113.9:5678\r\n", "203.0.113.9"},
        {"X-Forwarded-For: [2001:db8::7]:443, 127.0.0.1:80\r\n", "2001:db8::7"},
        {"X-Forwarded-For: fe80::1%eth0\r\n", "fe80::1"},
        {"X-Forwarded-For: [2001:db8::7\r\n", "unknown"},
        /* a mapped IPv4 hop is matched as IPv4 */
        {"X-Forwarded-For: 203.0.113.9, ::ffff:10.9.0.1\r\n", "203.0.113.9"},
        /* several lines are one list: each proxy may add its own */
        {"X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.9\r\n", "203.0.113.9"},
        {"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.9.0.4\r\n", "203.0.113.9"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char c[64];
        client_for(port, cases[i].headers, c, sizeof c);
        cr_expect_str_eq(c, cases[i].client, "case %zu: %s", i, cases[i].headers);
    }
    close(lines);
    test_kill_wait(pid, SIGKILL);
}
