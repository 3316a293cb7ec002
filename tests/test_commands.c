/*
 * test_commands.c - every program in build/bin as a user runs it, through the command kit
 * (common/cli.h): for each program and subcommand, --help exits 0 with the usage generated from
 * its option table, an unknown option and a bad value exit 2 with one line naming the option,
 * --version prints the build's version; servers print exactly "listening on
 * http://127.0.0.1:PORT"; a bad --listen is a usage error before anything starts (no
 * redis-server), and a port already taken is a runtime failure (exit 1) that leaks nothing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "sd.h"
#include "support.h"

TestSuite(commands, .timeout = 60);

/* Runs build/bin/<args[0]> with args and the extra environment env (NULL-terminated or NULL),
 * stdin empty, and collects its exit status, stdout and stderr. */
static void run(const char *const *args, const char *const *env, test_run_out *r) {
    test_run_program(args[0], args + 1, NULL, env, r);
}

static int lines(const char *text) {
    int n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

/* The name a program's messages start with: "bench run", "hello-server". */
static void command_name(const char *prog, const char *sub, char *buf, size_t len) {
    snprintf(buf, len, "%s%s%s", prog, sub ? " " : "", sub ? sub : "");
}

/* Every program and subcommand, with one bad value of one of its options (NULL when it takes
 * no option with a value) and the option that value belongs to. */
static const struct {
    const char *prog, *sub;
    const char *bad[8];
    const char *option;
} commands[] = {
    {"bench", "run", {"--rate", "x"}, "--rate"},
    {"bench", "list", {NULL}, NULL},
    {"bench",
     "http",
     {"http://127.0.0.1:1/", "--rate", "10", "--connections", "1.5"},
     "--connections"},
    {"bench", "percentiles", {"--unit", "parsecs"}, "--unit"},
    {"bench", "compare", {NULL}, NULL},
    {"bench", "selftest", {"--samples", "5"}, "--samples"},
    {"ratelimit", "serve", {"--deadline-ms", "0"}, "--deadline-ms"},
    {"ratelimit", "check", {"--cost", "-1"}, "--cost"},
    {"hello-server", NULL, {"--max-body-bytes", "0"}, "--max-body-bytes"},
    {"webhook", "receive", {"--tolerance", "0"}, "--tolerance"},
    {"jobqueue", "enqueue", {"--priority", "5000"}, "--priority"},
    {"jobqueue", "work", {"--concurrency", "0"}, "--concurrency"},
    {"jobqueue", "stats", {"--queue", "a b"}, "--queue"},
    {"jobqueue", "dlq", {"--max", "-1"}, "--max"},
    {"jobqueue", "cancel", {"--queue", "a/b"}, "--queue"},
    {"jobqueue", "drop", {"q", "--max", "-1"}, "--max"},
    {"jobqueue", "serve", {"--max-ready", "-1"}, "--max-ready"},
    {"webhook", "serve", {"--timeout-ms", "x"}, "--timeout-ms"},
    {"webhook", "deliver", {"--poll-ms", "0"}, "--poll-ms"},
    {"sd-redis", "start", {NULL}, NULL},
    {"sd-redis", "status", {NULL}, NULL},
    {"sd-redis", "stop", {NULL}, NULL},
    {"cache", "serve", {"--jitter", "90"}, "--jitter"},
    {"cache-evict-sim", NULL, {"--alpha", "9"}, "--alpha"},
    {"urlshortener", "serve", {"--redirect", "303"}, "--redirect"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

/* Runs commands[i] (prog [sub]) with the arguments extra and the extra environment env, into
 * *r; name gets its name (command_name), for messages. */
static void run_command(size_t i, const char *const *extra, const char *const *env, char *name,
                        size_t len, test_run_out *r) {
    command_name(commands[i].prog, commands[i].sub, name, len);
    const char *argv[16];
    int n = 0;
    if (commands[i].sub)
        argv[n++] = commands[i].sub;
    for (; extra && *extra; extra++)
        argv[n++] = *extra;
    argv[n] = NULL;
    test_run_program(commands[i].prog, argv, NULL, env, r);
}

Test(commands, help_exits_0_with_the_usage_from_the_table) {
    static test_run_out r;
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char name[64], usage[96];
        run_command(i, (const char *[]){"--help", NULL}, NULL, name, sizeof name, &r);
        cr_expect_eq(r.status, 0, "%s --help: exit %d", name, r.status);
        snprintf(usage, sizeof usage, "usage: %s", name);
        cr_expect_eq(strncmp(r.out, usage, strlen(usage)), 0, "%s --help printed: %s", name, r.out);
        /* The lines the kit adds to every table. */
        cr_expect_not_null(strstr(r.out, "\n  -h, --help "), "%s --help: %s", name, r.out);
        cr_expect_not_null(strstr(r.out, "\n  --version "), "%s --help: %s", name, r.out);
        cr_expect_str_empty(r.err, "%s --help wrote to stderr: %s", name, r.err);
        if (commands[i].option) {
            char line[64];
            snprintf(line, sizeof line, "\n  %s ", commands[i].option);
            cr_expect_not_null(strstr(r.out, line), "%s --help does not list %s", name,
                               commands[i].option);
        }
    }
    /* The programs with subcommands list them. */
    const char *const progs[] = {"bench", "ratelimit", "webhook"};
    for (size_t i = 0; i < 3; i++) {
        run((const char *[]){progs[i], "--help", NULL}, NULL, &r);
        cr_expect_eq(r.status, 0);
        cr_expect_not_null(strstr(r.out, "\ncommands:\n"), "%s --help: %s", progs[i], r.out);
        run((const char *[]){progs[i], NULL}, NULL, &r);
        cr_expect_eq(r.status, 2, "%s without a command", progs[i]);
        cr_expect_not_null(strstr(r.err, "usage: "), "%s", r.err);
    }
}

Test(commands, an_unknown_option_exits_2_with_one_line_naming_it) {
    static test_run_out r;
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char name[64], start[80];
        run_command(i, (const char *[]){"--no-such-option", NULL}, NULL, name, sizeof name, &r);
        cr_expect_eq(r.status, 2, "%s --no-such-option: exit %d", name, r.status);
        cr_expect_eq(lines(r.err), 1, "%s --no-such-option: '%s'", name, r.err);
        snprintf(start, sizeof start, "%s: ", name);
        cr_expect_eq(strncmp(r.err, start, strlen(start)), 0, "%s", r.err);
        cr_expect_not_null(strstr(r.err, "'--no-such-option'"), "%s", r.err);
        cr_expect_str_empty(r.out);
    }
    const char *const progs[] = {"bench", "ratelimit", "webhook"};
    for (size_t i = 0; i < 3; i++) {
        run((const char *[]){progs[i], "--no-such-option", NULL}, NULL, &r);
        cr_expect_eq(r.status, 2);
        cr_expect_eq(lines(r.err), 1, "%s", r.err);
        cr_expect_not_null(strstr(r.err, "'--no-such-option'"), "%s", r.err);
        run((const char *[]){progs[i], "frobnicate", NULL}, NULL, &r);
        cr_expect_eq(r.status, 2);
        cr_expect_eq(lines(r.err), 1, "%s", r.err);
        cr_expect_not_null(strstr(r.err, "unknown command 'frobnicate'"), "%s", r.err);
    }
}

Test(commands, a_bad_value_exits_2_with_one_line_naming_the_option_and_the_value) {
    static test_run_out r;
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (!commands[i].option)
            continue;
        char name[64];
        run_command(i, commands[i].bad, (const char *[]){"REDIS_URL=redis://127.0.0.1:1", NULL},
                    name, sizeof name, &r);
        cr_expect_eq(r.status, 2, "%s: exit %d", name, r.status);
        cr_expect_eq(lines(r.err), 1, "%s: '%s'", name, r.err);
        cr_expect_not_null(strstr(r.err, commands[i].option), "%s: %s", name, r.err);
        /* The value shown is the one given (the last argument). */
        const char *value = NULL;
        for (int k = 0; commands[i].bad[k]; k++)
            value = commands[i].bad[k];
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", value);
        cr_expect_not_null(strstr(r.err, quoted), "%s: %s", name, r.err);
        cr_expect_str_empty(r.out);
    }
    /* The commands without options refuse an argument too many in the same way. */
    run((const char *[]){"bench", "list", "extra", NULL}, NULL, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "'extra'"), "%s", r.err);
    run((const char *[]){"bench", "compare", "a.json", NULL}, NULL, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
}

Test(commands, version_prints_the_builds_git_describe) {
    static test_run_out r;
    regex_t re;
    /* A commit (abbreviated), or TAG-N-gCOMMIT, maybe -dirty; "unknown" outside git. */
    cr_assert_eq(regcomp(&re, "^(([0-9a-f]{4,40}|.+-g[0-9a-f]{4,40})(-dirty)?|unknown)\n$",
                         REG_EXTENDED | REG_NOSUB),
                 0);
    char want[256];
    snprintf(want, sizeof want, "%s\n", sd_version());
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char name[64];
        run_command(i, (const char *[]){"--version", NULL}, NULL, name, sizeof name, &r);
        cr_expect_eq(r.status, 0, "%s --version", name);
        /* The programs and this test were built together: the same description. */
        cr_expect_str_eq(r.out, want, "%s --version", name);
        cr_expect_eq(regexec(&re, r.out, 0, NULL, 0), 0, "%s --version: '%s'", name, r.out);
        cr_expect_str_empty(r.err);
    }
    run((const char *[]){"bench", "--version", NULL}, NULL, &r);
    cr_expect_str_eq(r.out, want);
    run((const char *[]){"ratelimit", "--version", NULL}, NULL, &r);
    cr_expect_str_eq(r.out, want);
    regfree(&re);
}

/* Reads the first line a server prints; asserts it is exactly the kit's "listening on" line and
 * that the server answers at that address. */
static void expect_listening_line(const char *const argv[]) {
    int out;
    pid_t pid = test_spawn(argv, NULL, &out);
    char line[128];
    cr_assert_gt(test_read_line(out, line, sizeof line, 10000), 0, "%s printed nothing", argv[0]);
    close(out);
    regex_t re;
    cr_assert_eq(regcomp(&re, "^listening on http://127\\.0\\.0\\.1:[1-9][0-9]{0,4}$",
                         REG_EXTENDED | REG_NOSUB),
                 0);
    cr_expect_eq(regexec(&re, line, 0, NULL, 0), 0, "%s printed '%s'", argv[0], line);
    regfree(&re);
    int port = atoi(line + strlen("listening on http://127.0.0.1:"));
    char buf[1024];
    cr_expect_eq(
        test_http_exchange(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", buf, sizeof buf, NULL),
        200);
    int status = test_kill_wait(pid, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: no clean exit", argv[0]);
}

Test(commands, servers_print_exactly_the_listening_line) {
    expect_listening_line((const char *[]){"hello-server", "--listen", "127.0.0.1:0", NULL});
    test_target *server = test_target_start();
    expect_listening_line((const char *[]){"ratelimit", "serve", "--listen", "127.0.0.1:0",
                                           "--policy", "p;q=1;w=1", "--redis",
                                           test_target_url(server), NULL});
    expect_listening_line((const char *[]){"webhook", "serve", "--listen", "127.0.0.1:0", "--redis",
                                           test_target_url(server), NULL});
    test_target_stop(server);
}

/*
 * A fake redis-server (REDIS_SERVER_BIN) that appends a line to a file each time it is started,
 * then runs the real one: how a test sees whether a command started a private Redis.
 */
typedef struct fake_redis {
    char dir[64], script[128], marker[128], env[160];
} fake_redis;

static void fake_redis_make(fake_redis *f) {
    snprintf(f->dir, sizeof f->dir, "/tmp/test_commands_XXXXXX");
    cr_assert_not_null(mkdtemp(f->dir));
    snprintf(f->script, sizeof f->script, "%s/redis-server", f->dir);
    snprintf(f->marker, sizeof f->marker, "%s/started", f->dir);
    snprintf(f->env, sizeof f->env, "REDIS_SERVER_BIN=%s", f->script);
    FILE *s = fopen(f->script, "w");
    cr_assert_not_null(s);
    fprintf(s, "#!/bin/sh\necho started >> '%s'\nexec redis-server \"$@\"\n", f->marker);
    fclose(s);
    cr_assert_eq(chmod(f->script, 0755), 0);
}

static int fake_redis_starts(const fake_redis *f) {
    FILE *m = fopen(f->marker, "r");
    if (m == NULL)
        return 0;
    int n = 0;
    for (int c; (c = fgetc(m)) != EOF;)
        n += c == '\n';
    fclose(m);
    return n;
}

static void fake_redis_remove(fake_redis *f) {
    unlink(f->marker);
    unlink(f->script);
    rmdir(f->dir);
}

Test(commands, a_bad_listen_address_exits_2_before_anything_starts) {
    static test_run_out r;
    fake_redis f;
    fake_redis_make(&f);
    const char *env[] = {f.env, "REDIS_URL=", NULL};
    /* The detector works: a command that needs a private Redis starts one through it. */
    run((const char *[]){"ratelimit", "check", "--policy", "p;q=1;w=1", "--key", "k", NULL}, env,
        &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    int started = fake_redis_starts(&f);
    cr_assert_geq(started, 1, "the fake redis-server was not used");

    const char *bad[] = {"nope", "127.0.0.1", "127.0.0.1:99999", "localhost:0", "[::1]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        run((const char *[]){"ratelimit", "serve", "--policy", "p;q=1;w=1", "--listen", bad[i],
                             NULL},
            env, &r);
        cr_expect_eq(r.status, 2, "ratelimit serve --listen %s: exit %d", bad[i], r.status);
        cr_expect_eq(lines(r.err), 1, "%s", r.err);
        cr_expect_not_null(strstr(r.err, "--listen"), "%s", r.err);
        run((const char *[]){"hello-server", "--listen", bad[i], NULL}, NULL, &r);
        cr_expect_eq(r.status, 2, "hello-server --listen %s: exit %d", bad[i], r.status);
        cr_expect_eq(lines(r.err), 1, "%s", r.err);
        cr_expect_not_null(strstr(r.err, "--listen"), "%s", r.err);
    }
    /* Other usage errors of serve come before Redis too. */
    run((const char *[]){"ratelimit", "serve", "--policy", "p;q=1;w=1", "--listen", "127.0.0.1:0",
                         "--deadline-ms", "3000", "--grace-ms", "2000", NULL},
        env, &r);
    cr_expect_eq(r.status, 2, "a grace period below the deadline: exit %d", r.status);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "--grace-ms"), "%s", r.err);
    cr_expect_eq(fake_redis_starts(&f), started, "a usage error started a redis-server");
    fake_redis_remove(&f);
}

Test(commands, a_port_in_use_is_a_runtime_failure_that_leaks_nothing) {
    static test_run_out r;
    int port;
    int fd = test_listen_loopback(&port);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    /* In the sanitizer build, LeakSanitizer reports what the failure path did not free (told
     * not to count what is still on the stack, so a server left in main's frame counts). */
    run((const char *[]){"hello-server", "--listen", addr, NULL},
        (const char *[]){"LSAN_OPTIONS=use_stacks=0:use_registers=0", NULL}, &r);
    cr_expect_eq(r.status, 1, "exit %d: %s", r.status, r.err);
    cr_expect_not_null(strstr(r.err, addr), "%s", r.err);
    cr_expect_null(strstr(r.err, "LeakSanitizer"), "%s", r.err);
    cr_expect_str_empty(r.out);
    close(fd);
}

Test(commands, a_password_in_redis_is_warned_about_never_shown) {
    static test_run_out r;
    run((const char *[]){"ratelimit", "check", "--redis", "redis://:hunter2-secret@127.0.0.1:1",
                         "--policy", "p;q=1;w=1", "--key", "k", "--cost", "x", NULL},
        NULL, &r);
    cr_expect_eq(r.status, 2);
    cr_expect_not_null(strstr(r.err, "REDIS_URL"), "no warning: %s", r.err);
    cr_expect_null(strstr(r.err, "hunter2"), "the password was printed: %s", r.err);
}
