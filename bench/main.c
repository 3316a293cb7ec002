/*
 * main.c - the `bench` command: runs the registered scenarios (`bench run`, the project's main
 * benchmark job), lists them, loads any HTTP server (`bench http`) and compares two reports.
 * The tools that check the harness itself (`bench percentiles`, `bench selftest`) live in
 * selftest.c.
 *
 * Every subcommand prints the same table (report.c) and writes the same JSON and HTML, so a
 * scenario run and an ad-hoc `bench http` read alike and `bench compare` takes either.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "http_client.h"
#include "peers.h"
#include "redis.h"
#include "redis_server.h"
#include "report.h"
#include "sd.h"

int bench_cmd_percentiles(int argc, char **argv);
int bench_cmd_selftest(int argc, char **argv);

static const char USAGE[] =
    "usage: bench <command> [options]\n"
    "\n"
    "Measures the project's components the same honest way: open-loop load at a target rate,\n"
    "latency taken from when each operation should have started (coordinated omission\n"
    "corrected), HDR histograms, p50/p95/p99/p99.9/max.\n"
    "\n"
    "commands:\n"
    "  run [PREFIX...]        run the scenarios (all, or those whose name starts with a PREFIX)\n"
    "  list                   list the scenarios\n"
    "  http URL               load an HTTP/1.1 server at a fixed rate (wrk2-style)\n"
    "  percentiles            percentiles of the numbers on stdin, as one JSON object\n"
    "  compare A.json B.json  two JSON reports side by side, with the ratio B/A\n"
    "  selftest               measure the harness: recording cost, accuracy, schedule\n"
    "\n"
    "`bench <command> --help` shows a command's options.\n"
    "Exit status: 0 ok, 1 failure (including a run below 99% of its target rate), 2 usage "
    "error.\n";

/* Default warm-up: one second, or a fifth of a short run. */
static double default_warmup(double duration_s) {
    return duration_s < 5 ? duration_s / 5 : 1.0;
}

/* Writes the requested report files. Returns 0 or -1 (messages already printed). */
/* True, after saying so on stderr, when `rate`/s for `duration` s schedules not one operation:
 * such a run measures nothing (and below about 1e-10/s it cannot be scheduled at all). A rate of
 * 0 is a closed loop, which always runs. */
static int schedules_nothing(const char *cmd, const char *what, double rate, double duration) {
    if (!(rate > 0 && rate * duration < 1))
        return 0;
    fprintf(stderr,
            "%s: %s: rate %g/s for %g s schedules no operation (rate x duration must be >= 1)\n",
            cmd, what, rate, duration);
    return 1;
}

/* The rate and measured duration a scenario runs with: the command line's (r >= 0, d > 0), else
 * its own, and 5 s when it names no duration. */
static void scenario_rate_duration(const bench_scenario *sc, double r, double d, double *rate,
                                   double *duration) {
    *rate = r >= 0 ? r : sc->default_rate;
    *duration = d > 0 ? d : sc->default_duration_s;
    if (!(*duration > 0))
        *duration = 5;
}

static int write_reports(const char *json, const char *html, const bench_row *rows, size_t n) {
    int bad = 0;
    if (json && bench_report_json(json, rows, n) < 0)
        bad = -1;
    if (html && bench_report_html(html, rows, n) < 0)
        bad = -1;
    /* Where the files are, last, beside the table (which is on stderr when JSON is on stdout). */
    FILE *tf = json && strcmp(json, "-") == 0 ? stderr : stdout;
    if (!bad && html)
        fprintf(tf, "report: %s\n", html);
    if (!bad && json && strcmp(json, "-") != 0)
        fprintf(tf, "report: %s\n", json);
    return bad;
}

/* ---- bench run ----------------------------------------------------------------------------- */

static const char RUN_USAGE[] =
    "usage: bench run [SCENARIO-PREFIX...] [options]\n"
    "\n"
    "Runs the registered scenarios (all of them, or those whose name starts with one of the\n"
    "prefixes) one after the other against one Redis, and prints one table. Right after a\n"
    "scenario, its peers (bench/peers: the systems a user would pick instead) run under the\n"
    "same load on the same Redis, or are skipped with one line saying why (BENCH_PEERS=0 in\n"
    "the environment runs none).\n"
    "\n"
    "options:\n"
    "  --duration S   measured seconds per scenario (default: each scenario's own, ~5 s)\n"
    "  --warmup S     seconds run before measuring (default 1, or duration/5 when shorter)\n"
    "  --rate R       operations per second for every scenario; 0 = closed loop\n"
    "                 (default: each scenario's own)\n"
    "  --poisson      open loop with Poisson arrivals instead of fixed spacing\n"
    "  --in-flight N  operations kept in flight (closed loop), or the cap on outstanding ones\n"
    "                 (open loop), for every scenario (default: each scenario's own)\n"
    "  --redis URL    use this Redis (default: REDIS_URL, else a private redis-server)\n"
    "  --json FILE    write the JSON report (\"-\" for stdout)\n"
    "  --html FILE    write a self-contained HTML page: the table, a throughput chart of\n"
    "                 ours beside the peers, a percentile chart per scenario\n";

/* The directory holding this executable (build/bin), for scenarios that start other commands. */
static char *bin_dir(void) {
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return sd_xstrdup(".");
    path[n] = '\0';
    return sd_xstrdup(dirname(path));
}

/* Closes whatever handles a scenario left open on the loop, so the next one starts clean. */
static void close_walk_cb(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void run_one(const bench_scenario *sc, const bench_env *env, double warmup, int poisson,
                    int in_flight, bench_row *row) {
    snprintf(row->r.name, sizeof row->r.name, "%s", sc->name);
    bench_target target = {0};
    int rc = sc->setup(env, &target);
    if (rc < 0) {
        snprintf(row->failure, sizeof row->failure, "setup failed: %s", sd_strerror(rc));
        fprintf(stderr, "bench run: %s: %s\n", sc->name, row->failure);
        return;
    }
    bench_load_opts opts = {.rate = env->rate,
                            .in_flight = in_flight > 0 ? in_flight : sc->in_flight,
                            .duration_s = env->duration_s,
                            .warmup_s = warmup,
                            .poisson = poisson,
                            .progress = 1,
                            .label = sc->name};
    rc = bench_load_run(env->loop, &target, &opts, &row->r);
    if (rc < 0) {
        snprintf(row->failure, sizeof row->failure, "load failed: %s", sd_strerror(rc));
        snprintf(row->r.name, sizeof row->r.name, "%s", sc->name);
        fprintf(stderr, "bench run: %s: %s\n", sc->name, row->failure);
    }
    if (sc->teardown)
        sc->teardown(env, &target);
    /* Let close callbacks of the scenario's handles run before the next scenario. */
    for (int i = 0; i < 10; i++)
        uv_run(env->loop, UV_RUN_NOWAIT);
}

static int cmd_run(int argc, char **argv) {
    const char *cmd = "bench run";
    const char *duration = NULL, *warmup = NULL, *rate = NULL, *redis = NULL, *json = NULL,
               *html = NULL, *in_flight = NULL;
    int poisson = 0;
    bench_cli_opt opts[] = {{"--duration", &duration, NULL, NULL, NULL},
                            {"--warmup", &warmup, NULL, NULL, NULL},
                            {"--rate", &rate, NULL, NULL, NULL},
                            {"--redis", &redis, NULL, NULL, NULL},
                            {"--json", &json, NULL, NULL, NULL},
                            {"--html", &html, NULL, NULL, NULL},
                            {"--poisson", NULL, &poisson, NULL, NULL},
                            {"--in-flight", &in_flight, NULL, NULL, NULL},
                            {NULL, NULL, NULL, NULL, NULL}};
    const char **prefixes = sd_xcalloc((size_t)argc + 1, sizeof *prefixes);
    int nprefixes = 0, status = BENCH_EXIT_OK;
    int rc = bench_cli_parse(cmd, argc, argv, opts, prefixes, &nprefixes);
    if (rc != BENCH_CLI_OK) {
        if (rc == BENCH_CLI_HELP)
            fputs(RUN_USAGE, stdout);
        free(prefixes);
        return rc == BENCH_CLI_HELP ? BENCH_EXIT_OK : BENCH_EXIT_USAGE;
    }
    double d = 0, w = -1, r = -1;
    long long f = 0;
    if ((duration &&
         bench_cli_number(cmd, "--duration", duration, 0.001, 86400, "seconds (> 0)", &d) < 0) ||
        (warmup && bench_cli_number(cmd, "--warmup", warmup, 0, 3600, "seconds (>= 0)", &w) < 0) ||
        (rate && bench_cli_number(cmd, "--rate", rate, 0, 1e8, "operations/s (>= 0)", &r) < 0) ||
        (in_flight && bench_cli_count(cmd, "--in-flight", in_flight, 1, 100000,
                                      "a whole number of operations, 1 to 100000", &f) < 0)) {
        free(prefixes);
        return BENCH_EXIT_USAGE;
    }

    /* Select the scenarios; a prefix that matches nothing is almost always a typo. */
    const bench_scenario *const *all = bench_scenarios_all();
    size_t nall = 0;
    while (all[nall])
        nall++;
    const bench_scenario **chosen = sd_xcalloc(nall + 1, sizeof *chosen);
    size_t nchosen = 0;
    for (int p = 0; p < nprefixes; p++) {
        int matched = 0;
        for (size_t i = 0; i < nall; i++)
            if (strncmp(all[i]->name, prefixes[p], strlen(prefixes[p])) == 0)
                matched = 1;
        if (!matched) {
            fprintf(stderr, "%s: no scenario name starts with '%s' (bench list shows them)\n", cmd,
                    prefixes[p]);
            free(prefixes);
            free(chosen);
            return BENCH_EXIT_USAGE;
        }
    }
    for (size_t i = 0; i < nall; i++) {
        int want = nprefixes == 0;
        for (int p = 0; p < nprefixes && !want; p++)
            want = strncmp(all[i]->name, prefixes[p], strlen(prefixes[p])) == 0;
        if (want)
            chosen[nchosen++] = all[i];
    }
    free(prefixes);

    for (size_t i = 0; i < nchosen; i++) {
        double sr, sd;
        scenario_rate_duration(chosen[i], r, d, &sr, &sd);
        if (schedules_nothing(cmd, chosen[i]->name, sr, sd)) {
            free(chosen);
            return BENCH_EXIT_USAGE;
        }
    }

    if (nchosen == 0) {
        fprintf(stderr,
                "%s: no scenarios are registered yet (components add them in "
                "bench/scenarios_<component>.c)\n",
                cmd);
        bench_report_table(json && strcmp(json, "-") == 0 ? stderr : stdout, NULL, 0);
        free(chosen);
        return write_reports(json, html, NULL, 0) < 0 ? BENCH_EXIT_FAIL : BENCH_EXIT_OK;
    }

    sd_redis_url url = {0};
    struct sd_redis_server *server = NULL;
    rc = sd_redis_resolve(redis, &url, &server);
    if (rc < 0) {
        fprintf(stderr, "%s: no Redis to run against: %s\n", cmd, sd_strerror(rc));
        free(chosen);
        return rc == SD_EPARSE ? BENCH_EXIT_USAGE : BENCH_EXIT_FAIL;
    }
    /* Scenarios get the URL as text, password included, so it is taken from where it came. */
    const char *redis_url = server  ? sd_redis_server_url(server)
                            : redis ? redis
                                    : getenv("REDIS_URL");

    uv_loop_t loop;
    uv_loop_init(&loop);
    char *dir = bin_dir();
    bench_row *rows = sd_xcalloc(nchosen, sizeof *rows);
    for (size_t i = 0; i < nchosen; i++) {
        const bench_scenario *sc = chosen[i];
        bench_env env = {.loop = &loop, .redis_url = redis_url, .bin_dir = dir};
        scenario_rate_duration(sc, r, d, &env.rate, &env.duration_s);
        run_one(sc, &env, w >= 0 ? w : default_warmup(env.duration_s), poisson, (int)f, &rows[i]);
        bench_peers_run_after(sc->name, &env, w >= 0 ? w : default_warmup(env.duration_s),
                              f > 0 ? (int)f : sc->in_flight, &rows[i]);
        if (rows[i].failure[0] || rows[i].r.below_target)
            status = BENCH_EXIT_FAIL;
    }

    /* With the JSON on stdout, the table goes to stderr so that stdout stays parseable. */
    bench_report_table(json && strcmp(json, "-") == 0 ? stderr : stdout, rows, nchosen);
    if (write_reports(json, html, rows, nchosen) < 0)
        status = BENCH_EXIT_FAIL;

    for (size_t i = 0; i < nchosen; i++) {
        bench_result_clear(&rows[i].r);
        free(rows[i].peers);
    }
    free(rows);
    free(dir);
    free(chosen);
    uv_walk(&loop, close_walk_cb, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    sd_redis_server_stop(server);
    sd_redis_url_clear(&url);
    return status;
}

/* ---- bench list ---------------------------------------------------------------------------- */

static int cmd_list(int argc, char **argv) {
    const char **pos = sd_xcalloc((size_t)argc + 1, sizeof *pos);
    int npos = 0;
    bench_cli_opt opts[] = {{NULL, NULL, NULL, NULL, NULL}};
    int rc = bench_cli_parse("bench list", argc, argv, opts, pos, &npos);
    free(pos);
    if (rc == BENCH_CLI_HELP) {
        fputs("usage: bench list\n\nLists the registered scenarios: name, default load and "
              "duration, summary.\n",
              stdout);
        return BENCH_EXIT_OK;
    }
    if (rc != BENCH_CLI_OK)
        return BENCH_EXIT_USAGE;
    if (npos > 0) {
        fprintf(stderr, "bench list: takes no arguments\n");
        return BENCH_EXIT_USAGE;
    }
    const bench_scenario *const *all = bench_scenarios_all();
    if (all[0] == NULL) {
        printf("no scenarios are registered yet\n");
        return BENCH_EXIT_OK;
    }
    int w = 8;
    for (const bench_scenario *const *s = all; *s; s++)
        if ((int)strlen((*s)->name) > w)
            w = (int)strlen((*s)->name);
    for (const bench_scenario *const *s = all; *s; s++) {
        char load[48];
        if ((*s)->default_rate > 0)
            snprintf(load, sizeof load, "%.0f/s", (*s)->default_rate);
        else
            snprintf(load, sizeof load, "closed x%d", (*s)->in_flight > 0 ? (*s)->in_flight : 1);
        printf("%-*s  %-12s %4.0fs  %s\n", w, (*s)->name, load, (*s)->default_duration_s,
               (*s)->summary ? (*s)->summary : "");
    }
    return BENCH_EXIT_OK;
}

/* ---- bench http ---------------------------------------------------------------------------- */

static const char HTTP_USAGE[] =
    "usage: bench http URL --rate R [options]\n"
    "\n"
    "Loads an HTTP/1.1 server the way wrk2 does: keep-alive connections, one request at a time\n"
    "on each, requests started on a fixed schedule (open loop) and latency measured from when\n"
    "each should have started. Responses other than 2xx/3xx, timeouts and connection errors are\n"
    "counted as errors, by kind. Exits 1 when the rate falls below 99% of the target or when\n"
    "no request succeeded.\n"
    "\n"
    "options:\n"
    "  --rate R          requests per second (required); 0 = closed loop, as fast as possible\n"
    "  --duration S      measured seconds (default 10)\n"
    "  --warmup S        seconds run before measuring (default 1, or duration/5 when shorter)\n"
    "  --connections C   keep-alive connections (default 10); closed loop keeps one request\n"
    "                    in flight on each\n"
    "  --method M        request method (default GET)\n"
    "  --header H        an extra request header 'Name: value' (repeatable)\n"
    "  --body FILE       send the file's content as the request body\n"
    "  --timeout MS      per-request timeout in milliseconds (default 5000)\n"
    "  --poisson         Poisson arrivals instead of fixed spacing\n"
    "  --json FILE       write the JSON report (\"-\" for stdout)\n"
    "  --html FILE       write a self-contained HTML page with the percentile chart\n";

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = sd_xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int cmd_http(int argc, char **argv) {
    const char *cmd = "bench http";
    const char *rate = NULL, *duration = "10", *warmup = NULL, *connections = "10", *method = NULL,
               *body_file = NULL, *timeout = "5000", *json = NULL, *html = NULL;
    int poisson = 0, nheaders = 0, npos = 0;
    const char **headers = sd_xcalloc((size_t)argc + 1, sizeof *headers);
    const char **pos = sd_xcalloc((size_t)argc + 1, sizeof *pos);
    bench_cli_opt opts[] = {{"--rate", &rate, NULL, NULL, NULL},
                            {"--duration", &duration, NULL, NULL, NULL},
                            {"--warmup", &warmup, NULL, NULL, NULL},
                            {"--connections", &connections, NULL, NULL, NULL},
                            {"--method", &method, NULL, NULL, NULL},
                            {"--header", NULL, NULL, headers, &nheaders},
                            {"--body", &body_file, NULL, NULL, NULL},
                            {"--timeout", &timeout, NULL, NULL, NULL},
                            {"--poisson", NULL, &poisson, NULL, NULL},
                            {"--json", &json, NULL, NULL, NULL},
                            {"--html", &html, NULL, NULL, NULL},
                            {NULL, NULL, NULL, NULL, NULL}};
    int status = BENCH_EXIT_USAGE;
    char *body = NULL;
    int rc = bench_cli_parse(cmd, argc, argv, opts, pos, &npos);
    if (rc == BENCH_CLI_HELP) {
        fputs(HTTP_USAGE, stdout);
        status = BENCH_EXIT_OK;
        goto out;
    }
    if (rc != BENCH_CLI_OK)
        goto out;
    if (npos != 1) {
        fprintf(stderr, "%s: want exactly one URL, got %d arguments (see --help)\n", cmd, npos);
        goto out;
    }
    if (rate == NULL) {
        fprintf(stderr, "%s: --rate is required (requests per second; 0 = closed loop)\n", cmd);
        goto out;
    }
    double r, d, w, t;
    long long c;
    if (bench_cli_number(cmd, "--rate", rate, 0, 1e8, "requests/s (>= 0)", &r) < 0 ||
        bench_cli_number(cmd, "--duration", duration, 0.001, 86400, "seconds (> 0)", &d) < 0 ||
        bench_cli_count(cmd, "--connections", connections, 1, 10000, "a count 1..10000", &c) < 0 ||
        bench_cli_number(cmd, "--timeout", timeout, 1, 3600000, "milliseconds (>= 1)", &t) < 0)
        goto out;
    if (schedules_nothing(cmd, "--rate x --duration", r, d))
        goto out;
    w = default_warmup(d);
    if (warmup && bench_cli_number(cmd, "--warmup", warmup, 0, 3600, "seconds (>= 0)", &w) < 0)
        goto out;
    size_t body_len = 0;
    if (body_file) {
        body = read_file(body_file, &body_len);
        if (body == NULL) {
            fprintf(stderr, "%s: cannot read --body %s: %s\n", cmd, body_file, strerror(errno));
            status = BENCH_EXIT_FAIL;
            goto out;
        }
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_http_opts hopts = {.method = method,
                             .headers = headers,
                             .body = body,
                             .body_len = body_len,
                             .timeout_ms = (int)t};
    bench_target target;
    char err[256];
    rc = bench_http_target_new(&loop, pos[0], (int)c, &hopts, &target, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        uv_loop_close(&loop);
        status = rc == -EHOSTUNREACH ? BENCH_EXIT_FAIL : BENCH_EXIT_USAGE;
        goto out;
    }
    bench_row row = {0};
    rc = bench_http_target_wait_connected(&target, 5000, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "%s: %s: %s\n", cmd, pos[0], err);
        status = BENCH_EXIT_FAIL;
    } else {
        char label[96];
        snprintf(label, sizeof label, "http %s %s", method ? method : "GET", pos[0]);
        bench_load_opts lopts = {.rate = r,
                                 .in_flight = r > 0 ? 0 : (int)c,
                                 .duration_s = d,
                                 .warmup_s = w,
                                 .poisson = poisson,
                                 .progress = 1,
                                 .label = label};
        rc = bench_load_run(&loop, &target, &lopts, &row.r);
        if (rc < 0) {
            fprintf(stderr, "%s: load failed: %s\n", cmd, sd_strerror(rc));
            status = BENCH_EXIT_FAIL;
        } else {
            bench_http_stats st;
            bench_http_target_stats(&target, &st);
            FILE *tf = json && strcmp(json, "-") == 0 ? stderr : stdout;
            bench_report_table(tf, &row, 1);
            fprintf(tf,
                    "http: %llu responses, %llu connects (%llu failed), %llu connections closed "
                    "by the server or after errors\n",
                    (unsigned long long)st.responses, (unsigned long long)st.connects,
                    (unsigned long long)st.connect_errors, (unsigned long long)st.closed);
            status = BENCH_EXIT_OK;
            if (row.r.below_target || row.r.count == 0 || row.r.errors == row.r.count)
                status = BENCH_EXIT_FAIL;
            if (write_reports(json, html, &row, 1) < 0)
                status = BENCH_EXIT_FAIL;
        }
    }
    bench_http_target_free(&target);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    bench_result_clear(&row.r);
out:
    free(body);
    free(headers);
    free(pos);
    return status;
}

/* ---- bench compare ------------------------------------------------------------------------- */

static int cmd_compare(int argc, char **argv) {
    const char **pos = sd_xcalloc((size_t)argc + 1, sizeof *pos);
    int npos = 0;
    bench_cli_opt opts[] = {{NULL, NULL, NULL, NULL, NULL}};
    int rc = bench_cli_parse("bench compare", argc, argv, opts, pos, &npos);
    if (rc == BENCH_CLI_HELP) {
        fputs("usage: bench compare A.json B.json\n\nPrints each scenario of two reports "
              "(from --json) side by side: achieved rate, p50, p95, p99, p99.9, max and errors,\n"
              "with the ratio B/A. Scenarios are matched by name. A scenario that failed in\n"
              "either report is marked FAILED instead; a scenario run at different target rates\n"
              "in A and B is still compared, with a warning on stderr.\n",
              stdout);
        free(pos);
        return BENCH_EXIT_OK;
    }
    if (rc != BENCH_CLI_OK || npos != 2) {
        if (rc == BENCH_CLI_OK)
            fprintf(stderr, "bench compare: want two JSON files (see --help)\n");
        free(pos);
        return BENCH_EXIT_USAGE;
    }
    const char *a = pos[0], *b = pos[1];
    free(pos);
    char err[512];
    if (bench_report_compare(stdout, a, b, err, sizeof err) < 0) {
        fprintf(stderr, "bench compare: %s\n", err);
        return BENCH_EXIT_FAIL;
    }
    return BENCH_EXIT_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(USAGE, stderr);
        return BENCH_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        fputs(USAGE, stdout);
        return BENCH_EXIT_OK;
    }
    /* Each subcommand sees argv[0] = its own name, as if it were a program. */
    if (strcmp(sub, "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(sub, "list") == 0)
        return cmd_list(argc - 1, argv + 1);
    if (strcmp(sub, "http") == 0)
        return cmd_http(argc - 1, argv + 1);
    if (strcmp(sub, "percentiles") == 0)
        return bench_cmd_percentiles(argc - 1, argv + 1);
    if (strcmp(sub, "compare") == 0)
        return cmd_compare(argc - 1, argv + 1);
    if (strcmp(sub, "selftest") == 0)
        return bench_cmd_selftest(argc - 1, argv + 1);
    fprintf(stderr, "bench: unknown command '%s' (bench --help lists them)\n", sub);
    return BENCH_EXIT_USAGE;
}
