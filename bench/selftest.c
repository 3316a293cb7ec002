/*
 * selftest.c - the tools that check the harness itself.
 *
 *  - `bench percentiles` reads numbers on stdin and prints their percentiles from a histogram,
 *    so anyone can check the histogram from outside against an exact computation of their own.
 *  - `bench selftest` measures what the harness costs and how accurate it is: nanoseconds per
 *    recorded sample, the worst relative error of the percentiles on generated lognormal,
 *    bimodal and Pareto samples against exact nearest-rank, the per-operation overhead of the
 *    load generator, and how late its open-loop schedule runs when the target costs nothing.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "report.h"
#include "sd.h"

int bench_cmd_percentiles(int argc, char **argv);
int bench_cmd_selftest(int argc, char **argv);

/* ---- bench percentiles --------------------------------------------------------------------- */

static const char PERCENTILES_ABOUT[] =
    "Reads one non-negative number per line on stdin and prints one JSON object with count,\n"
    "min, mean, p50, p90, p95, p99, p99.9, p99.99 and max, in the input's unit (--unit names\n"
    "it, default us). Percentiles are nearest-rank, from the same HDR histogram as every\n"
    "benchmark (3 significant digits: within 0.1% of the exact value, never below it); min,\n"
    "max and mean are exact. Decimals are kept to the finest the input uses (up to 9).\n"
    "A line that is not a non-negative number is an error naming its line number (exit 2).";

#define MAX_DECIMALS 9

/* Digits after the decimal point that `text` needs, exponent included ("1.5e-3" needs 4). */
static int decimals_of(const char *text) {
    int frac = 0;
    const char *dot = strchr(text, '.');
    if (dot)
        for (const char *c = dot + 1; *c >= '0' && *c <= '9'; c++)
            frac++;
    const char *e = strpbrk(text, "eE");
    if (e)
        frac -= atoi(e + 1);
    return frac < 0 ? 0 : frac > MAX_DECIMALS ? MAX_DECIMALS : frac;
}

/* Checks one line (already trimmed). Returns NULL when it is a non-negative decimal number, or
 * what is wrong with it. */
static const char *line_problem(const char *s, double *v) {
    if (*s == '\0')
        return "empty line";
    if (sd_parse_double(s, -1e308, 1e308, v) != 0)
        return "not a number";
    if (*v < 0 || (*v == 0 && s[0] == '-'))
        return "negative number";
    return NULL;
}

/* Prints x / 10^scale_decimals with at most `decimals` decimals, trailing zeros dropped. */
static void print_scaled(double x, int scale_decimals, int decimals) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.*f", decimals, x / pow(10, scale_decimals));
    if (strchr(buf, '.')) {
        size_t n = strlen(buf);
        while (buf[n - 1] == '0')
            buf[--n] = '\0';
        if (buf[n - 1] == '.')
            buf[--n] = '\0';
    }
    fputs(buf, stdout);
}

int bench_cmd_percentiles(int argc, char **argv) {
    const char *cmd = "bench percentiles";
    const char *unit = "us";
    const sd_cli_opt opts[] = {
        {"--unit", "ns|us|ms", "the input's unit, named in the output (default us)", .text = &unit},
        {0}};
    const sd_cli_cmd cli = {
        .name = cmd, .synopsis = "[--unit ns|us|ms]", .about = PERCENTILES_ABOUT, .opts = opts};
    const char **pos = sd_xcalloc((size_t)argc + 1, sizeof *pos);
    int npos = 0;
    int rc = sd_cli_parse(&cli, argc, argv, pos, &npos);
    free(pos);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    if (npos > 0)
        return sd_cli_usage_error(cmd, "takes no arguments; the numbers come on stdin");
    if (strcmp(unit, "ns") != 0 && strcmp(unit, "us") != 0 && strcmp(unit, "ms") != 0) {
        return sd_cli_usage_error(cmd, "--unit wants ns, us or ms, got '%s'", unit);
    }

    /* Read everything first: the finest decimal any line uses decides the histogram's unit. */
    double *vals = NULL, vmax = 0;
    size_t n = 0, cap = 0;
    int decimals = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    unsigned long long lineno = 0;
    while ((len = getline(&line, &line_cap, stdin)) >= 0) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        char *end = s + strlen(s);
        while (end > s && strchr(" \t\r\n", end[-1]))
            *--end = '\0';
        double v;
        const char *why = line_problem(s, &v);
        if (why) {
            fprintf(stderr, "%s: line %llu: %s: '%.40s' (want one non-negative number per line)\n",
                    cmd, lineno, why, s);
            free(line);
            free(vals);
            return SD_EXIT_USAGE;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            vals = sd_xrealloc(vals, cap * sizeof *vals);
        }
        vals[n++] = v;
        if (v > vmax)
            vmax = v;
        int d = decimals_of(s);
        if (d > decimals)
            decimals = d;
    }
    free(line);

    /* Scale to integers; give up decimals rather than exceed the histogram's range. */
    const double limit = 4e18;
    while (decimals > 0 && vmax * pow(10, decimals) > limit)
        decimals--;
    if (vmax > limit) {
        fprintf(stderr, "%s: a value is too large (above %.0e)\n", cmd, limit);
        free(vals);
        return SD_EXIT_USAGE;
    }
    double scale = pow(10, decimals);
    int64_t highest = (int64_t)llround(vmax * scale);
    hdr_histogram *h = NULL;
    hdr_new(1, highest < 2 ? 2 : highest, 3, &h);
    for (size_t i = 0; i < n; i++)
        hdr_record(h, (int64_t)llround(vals[i] * scale));
    free(vals);

    static const struct {
        const char *key;
        double p;
    } keys[] = {{"p50", 50}, {"p90", 90},     {"p95", 95},
                {"p99", 99}, {"p99.9", 99.9}, {"p99.99", 99.99}};
    printf("{\"count\":%llu,\"min\":", (unsigned long long)hdr_count(h));
    print_scaled((double)hdr_min(h), decimals, decimals);
    printf(",\"mean\":");
    print_scaled(hdr_mean(h), decimals, decimals + 3);
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        printf(",\"%s\":", keys[k].key);
        print_scaled((double)hdr_percentile(h, keys[k].p), decimals, decimals);
    }
    printf(",\"max\":");
    print_scaled((double)hdr_max(h), decimals, decimals);
    printf(",\"unit\":\"%s\"}\n", unit);
    hdr_free(h);
    return SD_EXIT_OK;
}

/* ---- bench selftest ------------------------------------------------------------------------ */

static const char SELFTEST_ABOUT[] =
    "Measures the harness on this machine and prints:\n"
    "  - the cost of recording one sample (hdr_record, hdr_record_corrected), over N samples\n"
    "    (default 50,000,000);\n"
    "  - the worst relative error of p0..p100 against exact nearest-rank on 1,000,000 lognormal,\n"
    "    bimodal and Pareto samples (the bound is 0.1% at 3 significant digits);\n"
    "  - the load generator's overhead per operation (closed loop, a target that completes at\n"
    "    once) and how late its open-loop schedule runs at 1,000 to 100,000/s against\n"
    "    such a target (that lateness is part of every corrected latency).\n"
    "Exits 1 when an accuracy check fails or the schedule falls below 99% of its rate.";

typedef struct rng {
    uint64_t s;
} rng;

static double rng_uniform(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return ((double)((r->s * 2685821657736338717ULL) >> 11) + 0.5) / 9007199254740992.0;
}

static double rng_normal(rng *r) {
    return sqrt(-2 * log(rng_uniform(r))) * cos(2 * M_PI * rng_uniform(r));
}

/* Latency-like samples in microseconds. */
static int64_t sample(rng *r, int dist) {
    double v;
    switch (dist) {
    case 0: /* lognormal around 500 us */
        v = exp(log(500) + rng_normal(r));
        break;
    case 1: /* bimodal: a fast path and a slow one (a cache hit and a miss) */
        v = rng_uniform(r) < 0.9 ? 200 + 20 * rng_normal(r) : 20000 + 2000 * rng_normal(r);
        break;
    default: /* Pareto, alpha 1.5: a heavy tail */
        v = 100 / pow(rng_uniform(r), 1 / 1.5);
        break;
    }
    if (v < 0)
        v = 0;
    if (v > 1e9)
        v = 1e9;
    return (int64_t)v;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Exact nearest rank over sorted values. */
static int64_t exact_percentile(const int64_t *sorted, size_t n, double p) {
    double x = p / 100.0 * (double)n;
    double r = ceil(x - x * 1e-14);
    size_t rank = r < 1 ? 1 : r > (double)n ? n : (size_t)r;
    return sorted[rank - 1];
}

static double accuracy(int dist, size_t n) {
    rng r = {0x853c49e6748fea9bULL + (uint64_t)dist};
    int64_t *v = sd_xmalloc(n * sizeof *v);
    hdr_histogram *h = hdr_new_default();
    for (size_t i = 0; i < n; i++) {
        v[i] = sample(&r, dist);
        hdr_record(h, v[i]);
    }
    qsort(v, n, sizeof *v, cmp_i64);
    static const double ps[] = {0, 1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 99.999, 100};
    double worst = 0;
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        double e = (double)exact_percentile(v, n, ps[k]);
        double got = (double)hdr_percentile(h, ps[k]);
        double err = e > 0 ? fabs(got - e) / e : fabs(got - e);
        if (err > worst)
            worst = err;
    }
    free(v);
    hdr_free(h);
    return worst;
}

static double ns_per_record(uint64_t n, int corrected) {
    enum { NVALS = 1 << 16 };
    int64_t *vals = sd_xmalloc(NVALS * sizeof *vals);
    rng r = {42};
    for (int i = 0; i < NVALS; i++)
        vals[i] = sample(&r, 0);
    hdr_histogram *h = hdr_new_default();
    uint64_t t0 = sd_now_ns();
    if (corrected) {
        /* An interval longer than any sample: the correction checks, and has nothing to add. */
        for (uint64_t i = 0; i < n; i++)
            hdr_record_corrected(h, vals[i & (NVALS - 1)], 1000000000);
    } else {
        for (uint64_t i = 0; i < n; i++)
            hdr_record(h, vals[i & (NVALS - 1)]);
    }
    uint64_t t1 = sd_now_ns();
    if (hdr_count(h) != n)
        fprintf(stderr, "bench selftest: recorded %llu of %llu\n", (unsigned long long)hdr_count(h),
                (unsigned long long)n);
    hdr_free(h);
    free(vals);
    return (double)(t1 - t0) / (double)n;
}

/* CPU time (user + system) this process has used, in seconds. */
static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* A target that completes every operation as soon as the loop comes round (a bench_later):
 * what is left is the harness's own cost. */
static void instant_issue(void *ctx, void *token, bench_done_fn *done) {
    bench_later_done(ctx, token, done, BENCH_OK);
}

int bench_cmd_selftest(int argc, char **argv) {
    const char *cmd = "bench selftest";
    double ns = 50000000;
    const sd_cli_opt opts[] = {{"--samples", "N",
                                "samples recorded per cost figure (default 50,000,000)",
                                .number = &ns, .min = 1000, .max = 1e11, .what = "a count >= 1000"},
                               {0}};
    const sd_cli_cmd cli = {
        .name = cmd, .synopsis = "[--samples N]", .about = SELFTEST_ABOUT, .opts = opts};
    int rc = sd_cli_parse(&cli, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    uint64_t n = (uint64_t)ns;
    int status = SD_EXIT_OK;
    char buf[4][32];

    hdr_histogram *h = hdr_new_default();
    printf("bench selftest on %ld CPUs\n", sysconf(_SC_NPROCESSORS_ONLN));
    printf("histogram: %.1f KiB each (1 us .. 1 h, 3 significant digits)\n",
           (double)hdr_memory_size(h) / 1024);
    hdr_free(h);
    printf("record:            %.2f ns per sample (%llu samples)\n", ns_per_record(n, 0),
           (unsigned long long)n);
    printf("record_corrected:  %.2f ns per sample (no back-fill needed)\n", ns_per_record(n, 1));

    const char *names[] = {"lognormal", "bimodal", "pareto"};
    printf("accuracy, worst relative error of p0..p100 vs exact nearest-rank, 1,000,000 "
           "samples:\n");
    for (int d = 0; d < 3; d++) {
        double err = accuracy(d, 1000000);
        int ok = err <= 0.001;
        printf("  %-10s %.4f%%  %s\n", names[d], err * 100, ok ? "ok" : "FAIL (bound 0.1%)");
        if (!ok)
            status = SD_EXIT_FAILURE;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_target instant = {bench_later_new(&loop), instant_issue};
    bench_result res;
    bench_load_opts closed = {.rate = 0, .in_flight = 1, .duration_s = 1, .warmup_s = 0.2};
    if (bench_load_run(&loop, &instant, &closed, &res) == 0) {
        printf("load, closed loop, instant target: %.0f ops/s = %.0f ns of harness per "
               "operation\n",
               res.achieved_rate, res.achieved_rate > 0 ? 1e9 / res.achieved_rate : 0.0);
        bench_result_clear(&res);
    }
    static const double rates[] = {1000, 3000, 10000, 100000};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        bench_load_opts open = {.rate = rates[i], .duration_s = 2, .warmup_s = 0.2};
        double cpu0 = cpu_seconds();
        if (bench_load_run(&loop, &instant, &open, &res) != 0)
            continue;
        double cpu = (cpu_seconds() - cpu0) / 2.2;
        printf("load, open loop at %6.0f/s, instant target: achieved %.0f/s%s, %.0f%% of a CPU; "
               "lateness p50 %s p99 %s p99.9 %s max %s\n",
               rates[i], res.achieved_rate, res.below_target ? " (BELOW TARGET)" : "", cpu * 100,
               bench_format_us((double)hdr_percentile(res.latency, 50), buf[0], 32),
               bench_format_us((double)hdr_percentile(res.latency, 99), buf[1], 32),
               bench_format_us((double)hdr_percentile(res.latency, 99.9), buf[2], 32),
               bench_format_us((double)hdr_max(res.latency), buf[3], 32));
        if (res.below_target)
            status = SD_EXIT_FAILURE;
        bench_result_clear(&res);
    }
    bench_later_free(instant.ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return status;
}
