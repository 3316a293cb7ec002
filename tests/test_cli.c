/*
 * test_cli.c - the command kit's parser (common/cli.h), called in this process: how values are
 * taken and stored, what --help and --version print, and that every mistake is a usage error
 * with one line on stderr naming the option. tests/test_commands.c runs the programs.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "support.h"

/* ---- Capturing what the parser prints ---------------------------------------------------------
 */

typedef struct captured {
    char out[8192];
    char err[2048];
} captured;

/* Runs sd_cli_parse with stdout and stderr sent to files, then stores what each received. */
static int parse(const sd_cli_cmd *cmd, const char *const *args, const char **pos, int *npos,
                 captured *c) {
    char *argv[32] = {(char *)cmd->name};
    int argc = 1;
    for (; args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    char out_path[] = "/tmp/test_cli_outXXXXXX", err_path[] = "/tmp/test_cli_errXXXXXX";
    int out = mkstemp(out_path), err = mkstemp(err_path);
    cr_assert(out >= 0 && err >= 0);
    unlink(out_path);
    unlink(err_path);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    dup2(out, 1);
    dup2(err, 2);
    int rc = sd_cli_parse(cmd, argc, argv, pos, npos);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    test_slurp_fd(out, c->out, sizeof c->out);
    test_slurp_fd(err, c->err, sizeof c->err);
    return rc;
}

/* Asserts that text is exactly one line ending in a newline, containing each needle. */
static void assert_one_line(const char *text, const char *needle1, const char *needle2) {
    size_t n = strlen(text);
    cr_assert_gt(n, 0, "nothing printed");
    cr_assert_eq(text[n - 1], '\n', "'%s' does not end its line", text);
    cr_assert_eq(strchr(text, '\n'), text + n - 1, "more than one line: '%s'", text);
    cr_assert_not_null(strstr(text, needle1), "'%s' does not name '%s'", text, needle1);
    if (needle2)
        cr_assert_not_null(strstr(text, needle2), "'%s' does not say '%s'", text, needle2);
}

/* ---- A command with one option of each kind ---------------------------------------------------
 */

static int flag;
static const char *text;
static const char *list[32];
static int nlist;
static long long integer;
static double number;
static int parsed_calls;
static const char *required;

static int even_parse(const char *value, void *udata, char *err, size_t len) {
    (*(int *)udata)++;
    if (strlen(value) % 2 != 0) {
        snprintf(err, len, "wants an even number of characters, got '%s'", value);
        return -1;
    }
    return 0;
}

static const sd_cli_opt opts[] = {
    {"--flag", NULL, "a flag", .flag = &flag},
    {"--text", "T", "some text", .text = &text},
    {"--item", "I", "repeatable", .list = list, .count = &nlist},
    {"--count", "N", "a count\nwith a second line", .integer = &integer, .min = 1, .max = 10},
    {"--ratio", "R", "a number", .number = &number, .min = 0, .max = 1,
     .what = "a fraction from 0 to 1"},
    {"--even", "E", "a value with its own parser", .parse = even_parse, .udata = &parsed_calls},
    {0}};
static const sd_cli_opt shared[] = {{"--must", "M", "required", .text = &required, .required = 1},
                                    {0}};
static const sd_cli_cmd cmd = {.name = "demo sub",
                               .synopsis = "[ARG...] [options]",
                               .about = "A command to test with.",
                               .opts = opts,
                               .footer = "Exit status: 0 ok.",
                               .shared = shared};

static void reset(void) {
    flag = 0;
    text = NULL;
    nlist = 99;
    integer = -5;
    number = -5;
    parsed_calls = 0;
    required = NULL;
}

TestSuite(cli, .init = reset);

Test(cli, values_are_stored_in_either_spelling_among_positionals) {
    const char *pos[32];
    int npos = -1;
    captured c;
    int rc = parse(&cmd,
                   (const char *[]){"a", "--flag", "--text", "t1", "b", "--item=x", "--item", "y",
                                    "--count=7", "--ratio", "0.25", "--even", "ab", "--must", "m",
                                    "-", "--", "--text", NULL},
                   pos, &npos, &c);
    cr_assert_eq(rc, SD_CLI_OK, "%s", c.err);
    cr_assert_str_empty(c.err);
    cr_assert_str_empty(c.out);
    cr_assert_eq(flag, 1);
    cr_assert_str_eq(text, "t1");
    cr_assert_eq(nlist, 2);
    cr_assert_str_eq(list[0], "x");
    cr_assert_str_eq(list[1], "y");
    cr_assert_eq(integer, 7);
    cr_assert_float_eq(number, 0.25, 1e-12);
    cr_assert_eq(parsed_calls, 1);
    cr_assert_str_eq(required, "m");
    /* "-" is an argument, and after "--" so is anything that looks like an option. */
    cr_assert_eq(npos, 4);
    cr_assert_str_eq(pos[0], "a");
    cr_assert_str_eq(pos[1], "b");
    cr_assert_str_eq(pos[2], "-");
    cr_assert_str_eq(pos[3], "--text");
}

Test(cli, an_option_not_given_keeps_its_default) {
    captured c;
    cr_assert_eq(parse(&cmd, (const char *[]){"--must", "m", NULL}, NULL, NULL, &c), SD_CLI_OK);
    cr_assert_eq(integer, -5);
    cr_assert_eq(number, -5);
    cr_assert_null(text);
    cr_assert_eq(nlist, 0, "the count of a list starts at zero");
}

Test(cli, help_is_generated_from_the_table) {
    captured c;
    int rc =
        parse(&cmd, (const char *[]){"--text", "t", "--help", "--bogus", NULL}, NULL, NULL, &c);
    cr_assert_eq(rc, SD_CLI_DONE);
    cr_assert_eq(sd_cli_exit_status(rc), SD_EXIT_OK);
    cr_assert_str_empty(c.err);
    cr_assert_eq(strncmp(c.out, "usage: demo sub [ARG...] [options]\n", 35), 0, "%s", c.out);
    cr_assert_not_null(strstr(c.out, "A command to test with."));
    /* Every option of both tables, with its value's name and help, in one aligned column. */
    cr_assert_not_null(strstr(c.out, "\n  --flag      a flag\n"), "%s", c.out);
    cr_assert_not_null(strstr(c.out, "\n  --count N   a count\n              with a second line\n"),
                       "%s", c.out);
    cr_assert_not_null(strstr(c.out, "\n  --must M    required\n"), "%s", c.out);
    cr_assert_not_null(strstr(c.out, "\n  -h, --help  show this help\n"), "%s", c.out);
    cr_assert_not_null(strstr(c.out, "\n  --version   "), "%s", c.out);
    cr_assert_not_null(strstr(c.out, "\nExit status: 0 ok.\n"), "%s", c.out);
    /* -h is the same. */
    cr_assert_eq(parse(&cmd, (const char *[]){"-h", NULL}, NULL, NULL, &c), SD_CLI_DONE);
    cr_assert_eq(strncmp(c.out, "usage: demo sub", 15), 0);
}

Test(cli, version_prints_the_build_description) {
    captured c;
    int rc = parse(&cmd, (const char *[]){"--version", NULL}, NULL, NULL, &c);
    cr_assert_eq(rc, SD_CLI_DONE);
    cr_assert_str_empty(c.err);
    char want[256];
    snprintf(want, sizeof want, "%s\n", sd_version());
    cr_assert_str_eq(c.out, want);
    cr_assert_gt(strlen(sd_version()), 0);
}

/* Each mistake: a usage error (exit 2), nothing on stdout, one line naming the option. */
static void expect_usage(const char *const *args, const char *needle1, const char *needle2) {
    captured c;
    const char *pos[32];
    int npos;
    int rc = parse(&cmd, args, pos, &npos, &c);
    cr_assert_eq(rc, SD_CLI_USAGE, "'%s ...' was accepted", args[0]);
    cr_assert_eq(sd_cli_exit_status(rc), SD_EXIT_USAGE);
    cr_assert_str_empty(c.out);
    assert_one_line(c.err, needle1, needle2);
    cr_assert_eq(strncmp(c.err, "demo sub: ", 10), 0, "'%s' does not start with the command",
                 c.err);
}

Test(cli, mistakes_are_one_line_naming_the_option) {
    expect_usage((const char *[]){"--must", "m", "--bogus", NULL}, "'--bogus'", "unknown option");
    expect_usage((const char *[]){"--must", "m", "--bogus=3", NULL}, "'--bogus'", NULL);
    expect_usage((const char *[]){"--must", "m", "--text", NULL}, "--text", "needs a value");
    expect_usage((const char *[]){"--must", "m", "--flag=1", NULL}, "--flag", "takes no value");
    expect_usage((const char *[]){"--must", "m", "--count", "11", NULL}, "--count",
                 "a whole number from 1 to 10, got '11'");
    expect_usage((const char *[]){"--must", "m", "--count", "1.5", NULL}, "--count", "'1.5'");
    expect_usage((const char *[]){"--must", "m", "--count", "0x5", NULL}, "--count", "'0x5'");
    expect_usage((const char *[]){"--must", "m", "--ratio", "nan", NULL}, "--ratio",
                 "wants a fraction from 0 to 1, got 'nan'");
    expect_usage((const char *[]){"--must", "m", "--even", "abc", NULL}, "--even",
                 "wants an even number of characters, got 'abc'");
    expect_usage((const char *[]){"--flag", NULL}, "--must M", "is required");
}

Test(cli, a_command_without_arguments_refuses_one) {
    captured c;
    int rc = parse(&cmd, (const char *[]){"--must", "m", "stray", NULL}, NULL, NULL, &c);
    cr_assert_eq(rc, SD_CLI_USAGE);
    assert_one_line(c.err, "'stray'", "unexpected argument");
}

Test(cli, usage_error_helper_prints_one_line) {
    captured c;
    fflush(stderr);
    char path[] = "/tmp/test_cli_errXXXXXX";
    int fd = mkstemp(path);
    unlink(path);
    int saved = dup(2);
    dup2(fd, 2);
    int rc = sd_cli_usage_error("demo", "--a %d is below --b %d", 1, 2);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    test_slurp_fd(fd, c.err, sizeof c.err);
    cr_assert_eq(rc, SD_EXIT_USAGE);
    cr_assert_str_eq(c.err, "demo: --a 1 is below --b 2\n");
}

/* ---- The shared value parsers -----------------------------------------------------------------
 */

Test(cli, listen_addresses_are_checked_by_parsing_them) {
    const char *good[] = {"127.0.0.1:0", "127.0.0.1:65535", "0.0.0.0:80", "[::1]:0"};
    const char *bad[] = {"nope",         "127.0.0.1",   "127.0.0.1:65536",
                         "127.0.0.1:-1", "127.0.0.1:x", "localhost:80",
                         "[::1]",        "1.2.3:80",    ""};
    char err[256];
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *v = NULL;
        cr_expect_eq(sd_cli_listen_parse(good[i], &v, err, sizeof err), 0, "%s refused", good[i]);
        cr_expect_eq(v, good[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *v = NULL;
        cr_expect_eq(sd_cli_listen_parse(bad[i], &v, err, sizeof err), -1, "'%s' accepted", bad[i]);
        cr_expect_null(v);
        cr_expect_not_null(strstr(err, "HOST:PORT"), "%s", err);
    }
}

Test(cli, a_password_in_redis_warns_without_showing_it) {
    const char *url = "redis://:s3cret-pw@127.0.0.1:6379";
    const sd_cli_opt ropts[] = {{"--redis", "URL", "", .parse = sd_cli_redis_parse, .udata = &text},
                                {0}};
    const sd_cli_cmd rcmd = {.name = "demo", .opts = ropts};
    captured c;
    cr_assert_eq(parse(&rcmd, (const char *[]){"--redis", url, NULL}, NULL, NULL, &c), SD_CLI_OK);
    cr_assert_str_eq(text, url);
    cr_assert_not_null(strstr(c.err, "REDIS_URL"), "no warning: '%s'", c.err);
    cr_assert_not_null(strstr(c.err, "/cmdline"), "%s", c.err);
    cr_assert_null(strstr(c.err, "s3cret"), "the warning shows the password: %s", c.err);
    /* Without a password: no warning. A malformed URL: a usage error naming --redis. */
    cr_assert_eq(
        parse(&rcmd, (const char *[]){"--redis", "redis://127.0.0.1:1", NULL}, NULL, NULL, &c),
        SD_CLI_OK);
    cr_assert_str_empty(c.err);
    cr_assert_eq(parse(&rcmd, (const char *[]){"--redis", "http://x:pw@y", NULL}, NULL, NULL, &c),
                 SD_CLI_USAGE);
    assert_one_line(c.err, "--redis", NULL);
    cr_assert_null(strstr(c.err, "pw@"), "%s", c.err);
}
