/*
 * test_redis_url.c - parsing Redis URLs: the accepted forms, the rejected ones, and that a
 * password never shows in an error or in the printed form.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "redis.h"
#include "sd.h"

static sd_redis_url parse_ok(const char *text) {
    sd_redis_url u;
    char err[160] = "";
    int rc = sd_redis_url_parse(text, &u, err, sizeof err);
    cr_assert_eq(rc, 0, "%s: %s", text, err);
    return u;
}

static void parse_bad(const char *text, const char *expect_in_message) {
    sd_redis_url u = {0};
    char err[160] = "";
    int rc = sd_redis_url_parse(text, &u, err, sizeof err);
    cr_assert_eq(rc, SD_EPARSE, "%s was accepted", text);
    cr_assert(strstr(err, expect_in_message) != NULL, "message for %s: '%s' lacks '%s'", text, err,
              expect_in_message);
    cr_assert_null(u.host);
}

Test(redis_url, host_port_and_db) {
    sd_redis_url u = parse_ok("redis://cache.internal:6380/4");
    cr_assert_str_eq(u.host, "cache.internal");
    cr_assert_eq(u.port, 6380);
    cr_assert_eq(u.db, 4);
    cr_assert_null(u.password);
    cr_assert_null(u.path);
    sd_redis_url_clear(&u);
}

Test(redis_url, defaults_are_port_6379_and_db_0) {
    sd_redis_url u = parse_ok("redis://localhost");
    cr_assert_eq(u.port, 6379);
    cr_assert_eq(u.db, 0);
    sd_redis_url_clear(&u);
    u = parse_ok("redis://localhost/");
    cr_assert_eq(u.db, 0);
    sd_redis_url_clear(&u);
}

Test(redis_url, user_and_password_are_percent_decoded) {
    sd_redis_url u = parse_ok("redis://app%40eu:p%3Ass%40word@10.0.0.1:7000/2");
    cr_assert_str_eq(u.user, "app@eu");
    cr_assert_str_eq(u.password, "p:ss@word");
    cr_assert_str_eq(u.host, "10.0.0.1");
    cr_assert_eq(u.port, 7000);
    sd_redis_url_clear(&u);
}

Test(redis_url, password_without_user) {
    sd_redis_url u = parse_ok("redis://:hunter2@127.0.0.1");
    cr_assert_null(u.user);
    cr_assert_str_eq(u.password, "hunter2");
    sd_redis_url_clear(&u);
}

Test(redis_url, ipv6_host_in_brackets) {
    sd_redis_url u = parse_ok("redis://[::1]:6390");
    cr_assert_str_eq(u.host, "::1");
    cr_assert_eq(u.port, 6390);
    sd_redis_url_clear(&u);
}

Test(redis_url, unix_socket_with_db) {
    sd_redis_url u = parse_ok("unix:///run/redis/redis.sock?db=3");
    cr_assert_null(u.host);
    cr_assert_str_eq(u.path, "/run/redis/redis.sock");
    cr_assert_eq(u.db, 3);
    sd_redis_url_clear(&u);
}

Test(redis_url, bad_forms_are_rejected_with_a_reason) {
    parse_bad("", "empty");
    parse_bad("localhost:6379", "must start with redis://");
    parse_bad("http://localhost", "must start with redis://");
    parse_bad("rediss://localhost", "TLS");
    parse_bad("redis://", "host is empty");
    parse_bad("redis://:6379", "host is empty");
    parse_bad("redis://localhost:0", "port");
    parse_bad("redis://localhost:70000", "port");
    parse_bad("redis://localhost:abc", "port");
    parse_bad("redis://localhost:", "port");
    parse_bad("redis://localhost/x", "database number");
    parse_bad("redis://localhost/1/2", "database number");
    parse_bad("redis://localhost/0?timeout=1", "query");
    parse_bad("redis://[::1", "unclosed");
    parse_bad("redis://u:%zz@localhost", "escape");
    parse_bad("unix://relative.sock", "absolute path");
    parse_bad("unix:///tmp/r.sock?password=x", "db=N");
}

Test(redis_url, password_never_appears_in_errors_or_printed_form) {
    sd_redis_url u = {0};
    char err[160] = "";
    cr_assert_eq(sd_redis_url_parse("redis://user:s3cret-pw@host:99999", &u, err, sizeof err),
                 SD_EPARSE);
    cr_assert_null(strstr(err, "s3cret-pw"), "error leaks the password: %s", err);

    u = parse_ok("redis://user:s3cret-pw@host:7000/1");
    char shown[256];
    sd_redis_url_format(&u, shown, sizeof shown);
    cr_assert_null(strstr(shown, "s3cret-pw"));
    cr_assert_str_eq(shown, "redis://user:***@host:7000/1");
    sd_redis_url_clear(&u);
}

Test(redis_url, copy_is_deep) {
    sd_redis_url u = parse_ok("redis://a:b@h:1/2"), c;
    sd_redis_url_copy(&c, &u);
    sd_redis_url_clear(&u);
    cr_assert_str_eq(c.host, "h");
    cr_assert_str_eq(c.user, "a");
    cr_assert_str_eq(c.password, "b");
    cr_assert_eq(c.db, 2);
    sd_redis_url_clear(&c);
}
