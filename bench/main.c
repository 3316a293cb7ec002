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
#include "redis_cluster_server.h"
#include "redis_server.h"
#include "report.h"
#include "sd.h"

int bench_cmd_percentiles(int argc, char **argv);
int bench_cmd_selftest(int argc, char **argv);

static const char ABOUT[] =
    "Measures the project's components the same honest way: open-loop load at a target rate,\n"
    "latency taken from when each operation should have started (coordinated omission\n"
    "corrected), HDR histograms, p50/p95/p99/p99.9/max. A run below 99% of its target rate\n"
    "is a failure (exit 1).";

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

/* Adds src's operations to pooled (a row made by pool_rows; a failed src adds nothing). */
static void pool_add(bench_row *pooled, const bench_row *src) {
    if (src->failure[0] || !src->r.latency)
        return;
    bench_result *d = &pooled->r;
    const bench_result *r = &src->r;
    d->target_rate = r->target_rate;
    d->duration_s += r->duration_s;
    d->count += r->count;
    d->errors += r->errors;
    for (int k = 0; k < BENCH_ERR_KINDS; k++)
        d->errors_by_kind[k] += r->errors_by_kind[k];
    hdr_merge(d->latency, r->latency);
    hdr_merge(d->uncorrected, r->uncorrected);
    d->below_target |= r->below_target;
    d->achieved_rate = d->duration_s > 0 ? (double)d->count / d->duration_s : 0;
}

/* Fills rows[n..] with one row per pool named by the chosen scenarios (bench_scenario.pool), in
 * the order the pools first appear, and returns how many it added. rows has room for nchosen
 * more. */
static size_t pool_rows(const bench_scenario *const *chosen, size_t nchosen, bench_row *rows,
                        size_t n) {
    size_t added = 0;
    for (size_t i = 0; i < nchosen; i++) {
        const char *pool = chosen[i]->pool;
        int seen = 0;
        for (size_t j = 0; j < i && pool && !seen; j++)
            seen = chosen[j]->pool && strcmp(chosen[j]->pool, pool) == 0;
        if (!pool || seen)
            continue;
        bench_row *p = &rows[n + added++];
        snprintf(p->r.name, sizeof p->r.name, "%s", pool);
        p->r.latency = hdr_new_default();
        p->r.uncorrected = hdr_new_default();
        for (size_t j = i; j < nchosen; j++)
            if (chosen[j]->pool && strcmp(chosen[j]->pool, pool) == 0)
                pool_add(p, &rows[j]);
        if (p->r.count == 0)
            snprintf(p->failure, sizeof p->failure, "no round of the pool ran");
    }
    return added;
}

static int cmd_run(int argc, char **argv) {
    const char *redis = NULL, *json = NULL, *html = NULL;
    int poisson = 0, cluster = 0, below_ok = 0, status = SD_EXIT_OK;
    double d = 0, w = -1, r = -1;
    long long f = 0;
    const sd_cli_opt opts[] = {
        {"--duration", "S", "measured seconds per scenario (default: each scenario's own, ~5 s)",
         .number = &d, .min = 0.001, .max = 86400, .what = "seconds (> 0)"},
        {"--warmup", "S", "seconds run before measuring (default 1, or duration/5 when shorter)",
         .number = &w, .min = 0, .max = 3600, .what = "seconds (>= 0)"},
        {"--rate", "R",
         "operations per second for every scenario; 0 = closed loop\n(default: each scenario's "
         "own)",
         .number = &r, .min = 0, .max = 1e8, .what = "operations/s (>= 0)"},
        {"--poisson", NULL, "open loop with Poisson arrivals instead of fixed spacing",
         .flag = &poisson},
        {"--in-flight", "N",
         "operations kept in flight (closed loop), or the cap on outstanding ones\n(open loop), "
         "for every scenario (default: each scenario's own)",
         .integer = &f, .min = 1, .max = 100000,
         .what = "a whole number of operations, 1 to 100000"},
        {"--redis", "URL", "use this Redis (default: REDIS_URL, else a private redis-server)",
         .parse = sd_cli_redis_parse, .udata = &redis},
        {"--cluster", NULL,
         "start a private Redis Cluster (3 masters) instead of a private\nredis-server",
         .flag = &cluster},
        {"--below-target-ok", NULL,
         "an open loop that fell below its rate is marked '!' in the table and\nthe JSON, but "
         "does not make the exit status 1 (./run.sh bench sets it)",
         .flag = &below_ok},
        {"--json", "FILE", "write the JSON report (\"-\" for stdout)", .text = &json},
        {"--html", "FILE",
         "write a self-contained HTML page: the table, a throughput chart of\nours beside the "
         "peers, a percentile chart per scenario",
         .text = &html},
        {0}};
    const sd_cli_cmd cmd = {.name = "bench run",
                            .synopsis = "[SCENARIO-PREFIX...] [options]",
                            .about = "Runs the registered scenarios (all of them, or those whose "
                                     "name starts with one of the\nprefixes) one after the other "
                                     "against one Redis, and prints one table. Right after a\n"
                                     "scenario, its peers (bench/peers: the systems a user would "
                                     "pick instead) run under the\nsame load on the same Redis, or "
                                     "are skipped with one line saying why (BENCH_PEERS=0 in\nthe "
                                     "environment runs none).",
                            .opts = opts};
    const char **prefixes = sd_xcalloc((size_t)argc + 1, sizeof *prefixes);
    int nprefixes = 0;
    int rc = sd_cli_parse(&cmd, argc, argv, prefixes, &nprefixes);
    if (rc != SD_CLI_OK) {
        free(prefixes);
        return sd_cli_exit_status(rc);
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
            sd_cli_usage_error(
                cmd.name, "no scenario name starts with '%s' (bench list shows them)", prefixes[p]);
            free(prefixes);
            free(chosen);
            return SD_EXIT_USAGE;
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
        if (schedules_nothing(cmd.name, chosen[i]->name, sr, sd)) {
            free(chosen);
            return SD_EXIT_USAGE;
        }
    }

    if (nchosen == 0) {
        fprintf(stderr,
                "%s: no scenarios are registered yet (components add them in "
                "bench/scenarios_<component>.c)\n",
                cmd.name);
        bench_report_table(json && strcmp(json, "-") == 0 ? stderr : stdout, NULL, 0);
        free(chosen);
        return write_reports(json, html, NULL, 0) < 0 ? SD_EXIT_FAILURE : SD_EXIT_OK;
    }

    if (cluster && redis) {
        sd_cli_usage_error(cmd.name,
                           "--cluster starts a private cluster: it cannot go with --redis");
        free(chosen);
        return SD_EXIT_USAGE;
    }
    sd_redis_url url = {0};
    struct sd_redis_server *server = NULL;
    sd_redis_cluster_server *cluster_server = NULL;
    if (cluster) {
        uint64_t t0 = sd_now_ms();
        rc = sd_redis_cluster_server_start(NULL, &cluster_server);
        if (rc == 0)
            fprintf(stderr,
                    "redis: using %s (a private Redis Cluster, ready in %llu ms, stopped "
                    "at exit)\n",
                    sd_redis_cluster_server_url(cluster_server),
                    (unsigned long long)(sd_now_ms() - t0));
    } else {
        rc = sd_redis_resolve(redis, &url, &server);
    }
    if (rc < 0) {
        fprintf(stderr, "%s: no Redis to run against: %s\n", cmd.name, sd_strerror(rc));
        free(chosen);
        return rc == SD_EPARSE ? SD_EXIT_USAGE : SD_EXIT_FAILURE;
    }
    /* Scenarios get the URL as text, password included, so it is taken from where it came. */
    const char *redis_url = cluster_server ? sd_redis_cluster_server_url(cluster_server)
                            : server       ? sd_redis_server_url(server)
                            : redis        ? redis
                                           : getenv("REDIS_URL");

    uv_loop_t loop;
    uv_loop_init(&loop);
    char *dir = bin_dir();
    bench_row *rows = sd_xcalloc(2 * nchosen, sizeof *rows); /* room for the pooled rows */
    for (size_t i = 0; i < nchosen; i++) {
        const bench_scenario *sc = chosen[i];
        bench_env env = {.loop = &loop, .redis_url = redis_url, .bin_dir = dir};
        scenario_rate_duration(sc, r, d, &env.rate, &env.duration_s);
        run_one(sc, &env, w >= 0 ? w : default_warmup(env.duration_s), poisson, (int)f, &rows[i]);
        bench_peers_run_after(sc->name, &env, w >= 0 ? w : default_warmup(env.duration_s),
                              f > 0 ? (int)f : sc->in_flight, &rows[i]);
        if (rows[i].failure[0] || (rows[i].r.below_target && !below_ok))
            status = SD_EXIT_FAILURE;
    }

    size_t nrows = nchosen + pool_rows(chosen, nchosen, rows, nchosen);

    /* With the JSON on stdout, the table goes to stderr so that stdout stays parseable. */
    bench_report_table(json && strcmp(json, "-") == 0 ? stderr : stdout, rows, nrows);
    if (write_reports(json, html, rows, nrows) < 0)
        status = SD_EXIT_FAILURE;

    for (size_t i = 0; i < nrows; i++) {
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
    sd_redis_cluster_server_stop(cluster_server);
    sd_redis_url_clear(&url);
    return status;
}

/* ---- bench list ---------------------------------------------------------------------------- */

static int cmd_list(int argc, char **argv) {
    const sd_cli_cmd cmd = {
        .name = "bench list",
        .about = "Lists the registered scenarios: name, default load and duration, summary."};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    const bench_scenario *const *all = bench_scenarios_all();
    if (all[0] == NULL) {
        printf("no scenarios are registered yet\n");
        return SD_EXIT_OK;
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
    return SD_EXIT_OK;
}

/* ---- bench http ---------------------------------------------------------------------------- */

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
    const char *method = NULL, *body_file = NULL, *json = NULL, *html = NULL;
    int poisson = 0, nheaders = 0, npos = 0;
    double r = 0, d = 10, w = -1, t = 5000;
    long long c = 10;
    const char **headers = sd_xcalloc((size_t)argc + 1, sizeof *headers);
    const char **pos = sd_xcalloc((size_t)argc + 1, sizeof *pos);
    const sd_cli_opt opts[] = {
        {"--rate", "R", "requests per second (required); 0 = closed loop, as fast as possible",
         .number = &r, .min = 0, .max = 1e8, .what = "requests/s (>= 0)", .required = 1},
        {"--duration", "S", "measured seconds (default 10)", .number = &d, .min = 0.001,
         .max = 86400, .what = "seconds (> 0)"},
        {"--warmup", "S", "seconds run before measuring (default 1, or duration/5 when shorter)",
         .number = &w, .min = 0, .max = 3600, .what = "seconds (>= 0)"},
        {"--connections", "C",
         "keep-alive connections (default 10); closed loop keeps one request\nin flight on each",
         .integer = &c, .min = 1, .max = 10000, .what = "a count 1..10000"},
        {"--method", "M", "request method (default GET)", .text = &method},
        {"--header", "H", "an extra request header 'Name: value' (repeatable)", .list = headers,
         .count = &nheaders},
        {"--body", "FILE", "send the file's content as the request body", .text = &body_file},
        {"--timeout", "MS", "per-request timeout in milliseconds (default 5000)", .number = &t,
         .min = 1, .max = 3600000, .what = "milliseconds (>= 1)"},
        {"--poisson", NULL, "Poisson arrivals instead of fixed spacing", .flag = &poisson},
        {"--json", "FILE", "write the JSON report (\"-\" for stdout)", .text = &json},
        {"--html", "FILE", "write a self-contained HTML page with the percentile chart",
         .text = &html},
        {0}};
    const sd_cli_cmd cmd = {
        .name = "bench http",
        .synopsis = "URL --rate R [options]",
        .about =
            "Loads an HTTP/1.1 server the way wrk2 does: keep-alive connections, one request at a "
            "time\non each, requests started on a fixed schedule (open loop) and latency measured "
            "from when\neach should have started. Responses other than 2xx/3xx, timeouts and "
            "connection errors are\ncounted as errors, by kind. Exits 1 when the rate falls below "
            "99% of the target or when\nno request succeeded.",
        .opts = opts};
    int status = SD_EXIT_USAGE;
    char *body = NULL;
    int rc = sd_cli_parse(&cmd, argc, argv, pos, &npos);
    if (rc != SD_CLI_OK) {
        status = sd_cli_exit_status(rc);
        goto out;
    }
    if (npos != 1) {
        sd_cli_usage_error(cmd.name, "want exactly one URL, got %d arguments (see --help)", npos);
        goto out;
    }
    if (schedules_nothing(cmd.name, "--rate x --duration", r, d))
        goto out;
    if (w < 0)
        w = default_warmup(d);
    size_t body_len = 0;
    if (body_file) {
        body = read_file(body_file, &body_len);
        if (body == NULL) {
            fprintf(stderr, "%s: cannot read --body %s: %s\n", cmd.name, body_file,
                    strerror(errno));
            status = SD_EXIT_FAILURE;
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
        fprintf(stderr, "%s: %s\n", cmd.name, err);
        uv_loop_close(&loop);
        status = rc == -EHOSTUNREACH ? SD_EXIT_FAILURE : SD_EXIT_USAGE;
        goto out;
    }
    bench_row row = {0};
    rc = bench_http_target_wait_connected(&target, 5000, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "%s: %s: %s\n", cmd.name, pos[0], err);
        status = SD_EXIT_FAILURE;
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
            fprintf(stderr, "%s: load failed: %s\n", cmd.name, sd_strerror(rc));
            status = SD_EXIT_FAILURE;
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
            status = SD_EXIT_OK;
            if (row.r.below_target || row.r.count == 0 || row.r.errors == row.r.count)
                status = SD_EXIT_FAILURE;
            if (write_reports(json, html, &row, 1) < 0)
                status = SD_EXIT_FAILURE;
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
    const sd_cli_cmd cmd = {
        .name = "bench compare",
        .synopsis = "A.json B.json",
        .about =
            "Prints each scenario of two reports (from --json) side by side: achieved rate, p50, "
            "p95,\np99, p99.9, max and errors, with the ratio B/A. Scenarios are matched by name. "
            "A "
            "scenario\nthat failed in either report is marked FAILED instead; a scenario run at "
            "different target\nrates in A and B is still compared, with a warning on stderr."};
    int rc = sd_cli_parse(&cmd, argc, argv, pos, &npos);
    if (rc != SD_CLI_OK || npos != 2) {
        if (rc == SD_CLI_OK)
            sd_cli_usage_error(cmd.name, "want two JSON files, got %d arguments (see --help)",
                               npos);
        free(pos);
        return rc == SD_CLI_OK ? SD_EXIT_USAGE : sd_cli_exit_status(rc);
    }
    const char *a = pos[0], *b = pos[1];
    free(pos);
    char err[512];
    if (bench_report_compare(stdout, a, b, err, sizeof err) < 0) {
        fprintf(stderr, "bench compare: %s\n", err);
        return SD_EXIT_FAILURE;
    }
    return SD_EXIT_OK;
}

int main(int argc, char **argv) {
    static const sd_cli_sub subs[] = {
        {"run", "run the scenarios (all, or those whose name starts with a PREFIX)", cmd_run},
        {"list", "list the scenarios", cmd_list},
        {"http", "load an HTTP/1.1 server at a fixed rate (wrk2-style)", cmd_http},
        {"percentiles", "percentiles of the numbers on stdin, as one JSON object",
         bench_cmd_percentiles},
        {"compare", "two JSON reports side by side, with the ratio B/A", cmd_compare},
        {"selftest", "measure the harness: recording cost, accuracy, schedule", bench_cmd_selftest},
        {0}};
    return sd_cli_dispatch("bench", ABOUT, subs, argc, argv);
}
