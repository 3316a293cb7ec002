/*
 * test_admin.c - the guard on management endpoints (common/admin.h): the token's loading and
 * its errors (which never print it), the bearer check over a real HTTP server, and which peer
 * addresses count as loopback when no token is set.
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "sd.h"
#include "support.h"

#define TOKEN "adm-7c1e9a40b2d35f68"

/* Writes text to a new temporary file; returns its path (static buffer). */
static const char *token_file(const char *text) {
    static char path[32];
    strcpy(path, "/tmp/sd-admin-XXXXXX");
    test_temp_file(path, text);
    return path;
}

Test(admin, no_file_and_no_variable_sets_no_token) {
    sd_admin a;
    unsetenv("SD_TEST_ADMIN_TOKEN");
    cr_assert_eq(sd_admin_load(&a, "prog", "--admin-token-file", NULL, "SD_TEST_ADMIN_TOKEN"), 0);
    cr_assert_not(a.has_token);
}

Test(admin, the_token_is_the_files_first_line_else_the_variable) {
    sd_admin from_file, from_env, other;
    const char *path = token_file(TOKEN " \t\nsecond line\n");
    cr_assert_eq(sd_admin_load(&from_file, "prog", "--admin-token-file", path, NULL), 0);
    unlink(path);
    setenv("SD_TEST_ADMIN_TOKEN", TOKEN, 1);
    cr_assert_eq(
        sd_admin_load(&from_env, "prog", "--admin-token-file", NULL, "SD_TEST_ADMIN_TOKEN"), 0);
    cr_assert_null(getenv("SD_TEST_ADMIN_TOKEN"), "the token stays in the environment");
    setenv("SD_TEST_ADMIN_TOKEN", TOKEN "x", 1);
    cr_assert_eq(sd_admin_load(&other, "prog", "--admin-token-file", NULL, "SD_TEST_ADMIN_TOKEN"),
                 0);
    unsetenv("SD_TEST_ADMIN_TOKEN");
    cr_assert(from_file.has_token && from_env.has_token);
    cr_assert_eq(memcmp(from_file.token_sha, from_env.token_sha, 32), 0,
                 "the file's first line and the variable's value differ");
    cr_assert_neq(memcmp(from_env.token_sha, other.token_sha, 32), 0);
}

Test(admin, a_bad_token_is_refused_without_printing_it, .init = cr_redirect_stderr) {
    sd_admin a;
    const char *path = token_file("short-secret\n");
    cr_assert_eq(sd_admin_load(&a, "prog", "--admin-token-file", path, NULL), -1);
    unlink(path);
    cr_assert_eq(sd_admin_load(&a, "prog", "--admin-token-file", "/nonexistent/token", NULL), -1);
    fflush(stderr);
    char err[1024] = "";
    size_t n = fread(err, 1, sizeof err - 1, cr_get_redirected_stderr());
    err[n] = '\0';
    cr_assert(strstr(err, "prog: the token (--admin-token-file) must be 16 to 510 characters"),
              "%s", err);
    cr_assert(strstr(err, "cannot read --admin-token-file /nonexistent/token"), "%s", err);
    cr_assert_null(strstr(err, "short-secret"), "the token was printed: %s", err);
}

Test(admin, loopback_peers_are_told_from_the_others) {
    const char *loopback[] = {"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"};
    const char *others[] = {"10.0.0.1",    "192.168.1.5", "8.8.8.8", "::ffff:10.0.0.1",
                            "2001:db8::1", "0.0.0.0",     "",        "localhost"};
    for (size_t i = 0; i < sizeof loopback / sizeof *loopback; i++)
        cr_assert(sd_admin_peer_is_loopback(loopback[i]), "%s", loopback[i]);
    for (size_t i = 0; i < sizeof others / sizeof *others; i++)
        cr_assert_not(sd_admin_peer_is_loopback(others[i]), "%s", others[i]);
    cr_assert_not(sd_admin_peer_is_loopback(NULL));
}

/* Without a token: the peer and the client a trusted proxy names must both be local. A trusted
 * proxy off this host naming 127.0.0.1 is refused (no test socket can come from off loopback,
 * hence this unit test). */
Test(admin, the_peer_and_the_named_client_must_both_be_local) {
    cr_assert(sd_admin_is_local("127.0.0.1", "127.0.0.1"));
    cr_assert(sd_admin_is_local("::ffff:127.0.0.1", "::1"));
    cr_assert_not(sd_admin_is_local("10.0.0.5", "127.0.0.1"), "a remote proxy named loopback");
    cr_assert_not(sd_admin_is_local("127.0.0.1", "203.0.113.9"));
    cr_assert_not(sd_admin_is_local("127.0.0.1", "unknown"));
}

/* ---- The check, over HTTP: a forked server whose every request goes through it ---------------
 */

/* The forked server's guard, and the proxies it trusts. */
typedef struct guard {
    sd_admin admin;
    sd_http_trust trust;
} guard;

static void guarded(sd_http_req *req, void *udata) {
    guard *g = udata;
    if (sd_admin_check(&g->admin, req))
        sd_http_req_respond(req, 200, "text/plain", "managed", 7);
}

static void guard_main(int out, void *arg) {
    uv_loop_t l;
    uv_loop_init(&l);
    sd_http_server *srv = sd_http_server_new(&l, NULL);
    sd_http_server_trust(srv, &((guard *)arg)->trust);
    sd_http_server_route(srv, NULL, "*", guarded, arg);
    if (sd_http_server_listen(srv, "127.0.0.1:0") != 0)
        _exit(1);
    test_serve_and_exit(&l, srv, out);
}

/* One request with the given Authorization value (NULL: none) and X-Forwarded-For (NULL:
 * none); returns the status. */
static int managed_from(int port, const char *auth, const char *xff, char *buf, size_t len) {
    char req[256];
    snprintf(req, sizeof req, "DELETE /thing HTTP/1.1\r\nHost: x\r\n%s%s%s%s%s%s\r\n",
             auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "",
             xff ? "X-Forwarded-For: " : "", xff ? xff : "", xff ? "\r\n" : "");
    return test_http_exchange(port, req, buf, len, NULL);
}

static int managed(int port, const char *auth, char *buf, size_t len) {
    return managed_from(port, auth, NULL, buf, len);
}

Test(admin, with_a_token_only_the_right_bearer_passes) {
    static guard g;
    const char *path = token_file(TOKEN "\n");
    cr_assert_eq(sd_admin_load(&g.admin, "prog", "--admin-token-file", path, NULL), 0);
    unlink(path);
    int port, lines;
    pid_t pid = test_fork_server(guard_main, &g, &port, &lines);
    char buf[4096];
    cr_expect_eq(managed(port, NULL, buf, sizeof buf), 401);
    cr_expect(strstr(buf, "WWW-Authenticate: Bearer"), "%s", buf);
    cr_expect(strstr(buf, "application/problem+json"), "%s", buf);
    cr_expect_eq(managed(port, "Bearer adm-7c1e9a40b2d35f6", buf, sizeof buf), 401, "a prefix");
    cr_expect_eq(managed(port, "Bearer " TOKEN "8", buf, sizeof buf), 401, "a longer one");
    cr_expect_eq(managed(port, "Basic " TOKEN, buf, sizeof buf), 401, "another scheme");
    cr_expect_eq(managed(port, "Bearer " TOKEN, buf, sizeof buf), 200);
    cr_expect_eq(managed(port, "bearer " TOKEN, buf, sizeof buf), 200, "the scheme's case");
    close(lines);
    test_kill_wait(pid, SIGKILL);
}

Test(admin, without_a_token_a_loopback_client_passes) {
    static guard g; /* no token, no trusted proxy */
    int port, lines;
    pid_t pid = test_fork_server(guard_main, &g, &port, &lines);
    char buf[4096];
    cr_expect_eq(managed(port, NULL, buf, sizeof buf), 200);
    cr_expect_eq(managed(port, "Bearer anything-at-all-here", buf, sizeof buf), 200);
    cr_expect_eq(managed_from(port, NULL, "203.0.113.9", buf, sizeof buf), 200,
                 "an untrusted X-Forwarded-For was believed");
    close(lines);
    test_kill_wait(pid, SIGKILL);
}

/* Behind a proxy on the same host (trusted with --trust-proxy), every request arrives from
 * loopback: the guard then looks at the client the proxy names, and refuses one off loopback. */
Test(admin, without_a_token_a_client_behind_a_trusted_proxy_is_refused_off_loopback) {
    static guard g;
    char err[160];
    cr_assert_eq(sd_http_trust_add(&g.trust, "127.0.0.1", err, sizeof err), 0);
    int port, lines;
    pid_t pid = test_fork_server(guard_main, &g, &port, &lines);
    char buf[4096];
    cr_expect_eq(managed_from(port, NULL, "203.0.113.9", buf, sizeof buf), 403);
    cr_expect(strstr(buf, "application/problem+json"), "%s", buf);
    cr_expect(strstr(buf, "loopback clients only"), "%s", buf);
    cr_expect_eq(managed_from(port, NULL, "127.0.0.8", buf, sizeof buf), 200);
    cr_expect_eq(managed(port, NULL, buf, sizeof buf), 200, "the proxy itself");
    close(lines);
    test_kill_wait(pid, SIGKILL);
}
