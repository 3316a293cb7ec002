/*
 * report.c - the table, the JSON report, the HTML page and the comparison (see report.h).
 *
 * Every output is built from the same numbers: the nearest-rank percentiles of the corrected
 * histogram (latency from the intended start) and, beside them, of the uncorrected one. Latencies
 * are kept in microseconds everywhere except in the .hgrm text and on the chart, which use
 * milliseconds as HdrHistogram's own tools do.
 */
#include "report.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "sd.h"

#define SCHEMA_VERSION 1

/* The percentiles every output shows, with their JSON names. */
static const struct {
    double p;
    const char *key;
    const char *label;
} PCTS[] = {{50, "p50_us", "p50"},
            {95, "p95_us", "p95"},
            {99, "p99_us", "p99"},
            {99.9, "p999_us", "p99.9"}};
#define NPCTS (sizeof PCTS / sizeof PCTS[0])

const char *bench_format_us(double us, char *buf, size_t len) {
    if (us < 1000)
        snprintf(buf, len, "%.0fus", us);
    else if (us < 10000)
        snprintf(buf, len, "%.2fms", us / 1000);
    else if (us < 100000)
        snprintf(buf, len, "%.1fms", us / 1000);
    else if (us < 1000000)
        snprintf(buf, len, "%.0fms", us / 1000);
    else
        snprintf(buf, len, "%.2fs", us / 1e6);
    return buf;
}

/* A count or rate with thousands separators: 71234.4 -> "71,234". */
static const char *format_count(double v, char *buf, size_t len) {
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", v);
    size_t n = strlen(digits), o = 0;
    for (size_t i = 0; i < n && o + 2 < len; i++) {
        if (i > 0 && (n - i) % 3 == 0 && digits[i - 1] != '-')
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

/* ---- The table ----------------------------------------------------------------------------- */

/* Successful operations per second: the achieved rate less its share of errors. */
static double success_rate(double achieved, uint64_t count, uint64_t errors) {
    if (count == 0 || errors > count)
        return errors > 0 ? 0 : achieved;
    return achieved * (double)(count - errors) / (double)count;
}

double bench_peer_ratio(const bench_result *ours, const bench_peer_result *peer) {
    double theirs = success_rate(peer->achieved_rate, peer->count, peer->errors);
    if (peer->skipped[0] || !(theirs > 0))
        return 0;
    return success_rate(ours->achieved_rate, ours->count, ours->errors) / theirs;
}

/* A peer's label in the table's first column. */
#define PEER_LABEL "  peer "

/* The `vs peer` cell: "2.62x, p99 2.16ms vs 5.20ms" (ours first). */
static void vs_peer_cell(const bench_row *row, const bench_peer_result *p, char *buf, size_t len) {
    char ours[32], theirs[32];
    double p99 = row->r.latency ? (double)hdr_percentile(row->r.latency, 99) : 0;
    snprintf(buf, len, "%.2fx, p99 %s vs %s", bench_peer_ratio(&row->r, p),
             bench_format_us(p99, ours, sizeof ours),
             bench_format_us((double)p->p99_us, theirs, sizeof theirs));
}

/* The lines of the peers compared with row, under it. */
static void table_peers(FILE *f, int w, const bench_row *row) {
    for (size_t k = 0; k < row->npeers; k++) {
        const bench_peer_result *p = &row->peers[k];
        char label[128];
        snprintf(label, sizeof label, PEER_LABEL "%s", p->name);
        if (p->skipped[0]) {
            fprintf(f, "%-*s skipped: %s\n", w, label, p->skipped);
            continue;
        }
        char achieved[32], p50[32], p99[32], mx[32], errs[32], vs[96];
        format_count(p->achieved_rate, achieved, sizeof achieved);
        bench_format_us((double)p->p50_us, p50, sizeof p50);
        bench_format_us((double)p->p99_us, p99, sizeof p99);
        bench_format_us((double)p->max_us, mx, sizeof mx);
        format_count((double)p->errors, errs, sizeof errs);
        if (row->failure[0])
            snprintf(vs, sizeof vs, "-");
        else
            vs_peer_cell(row, p, vs, sizeof vs);
        fprintf(f, "%-*s %10s %11s %8s %8s %8s %8s %8s %8s  %s\n", w, label, "closed", achieved,
                p50, "-", p99, "-", mx, errs, vs);
    }
}

void bench_report_table(FILE *f, const bench_row *rows, size_t n) {
    int w = 8, any_peer = 0, measured_peer = 0;
    for (size_t i = 0; i < n; i++) {
        int len = (int)strlen(rows[i].r.name);
        if (len > w)
            w = len;
        for (size_t k = 0; k < rows[i].npeers; k++) {
            any_peer = 1;
            measured_peer |= rows[i].peers[k].skipped[0] == '\0';
            len = (int)(strlen(PEER_LABEL) + strlen(rows[i].peers[k].name));
            if (len > w)
                w = len;
        }
    }
    fprintf(f, "%-*s %10s %11s %8s %8s %8s %8s %8s %8s%s\n", w, "scenario", "target/s",
            "achieved/s", "p50", "p95", "p99", "p99.9", "max", "errors",
            any_peer ? "  vs peer" : "");
    int below = 0, overflow = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        const bench_row *row = &rows[i];
        const bench_result *r = &row->r;
        char target[32], achieved[32];
        if (row->failure[0]) {
            fprintf(f, "%-*s FAILED: %s\n", w, r->name, row->failure);
            table_peers(f, w, row);
            failed++;
            continue;
        }
        if (r->target_rate > 0)
            format_count(r->target_rate, target, sizeof target);
        else
            snprintf(target, sizeof target, "closed");
        format_count(r->achieved_rate, achieved, sizeof achieved);
        if (r->below_target) {
            strncat(achieved, "!", sizeof achieved - strlen(achieved) - 1);
            below = 1;
        }
        fprintf(f, "%-*s %10s %11s", w, r->name, target, achieved);
        for (size_t k = 0; k < NPCTS; k++) {
            char buf[32];
            fprintf(
                f, " %8s",
                bench_format_us((double)hdr_percentile(r->latency, PCTS[k].p), buf, sizeof buf));
        }
        char mx[32], errs[32];
        bench_format_us((double)hdr_max(r->latency), mx, sizeof mx);
        format_count((double)r->errors, errs, sizeof errs);
        fprintf(f, " %8s %8s\n", mx, errs);
        if (hdr_overflow(r->latency) > 0)
            overflow = 1;
        table_peers(f, w, row);
    }
    if (n == 0)
        fprintf(f, "(no scenarios ran)\n");
    if (below)
        fprintf(f, "! achieved less than 99%% of the target rate: the latencies are not "
                   "those of that rate\n");
    if (overflow)
        fprintf(f, "some latencies were above the histogram's range (1 hour) and are not in the "
                   "percentiles\n");
    if (n > 0)
        fprintf(f, "latency from the intended start (coordinated omission corrected); "
                   "closed loop: from the actual start\n");
    if (measured_peer)
        fprintf(f, "vs peer: our successful operations/s over the peer's (above 1: ours did "
                   "more; errors, such as fallback decisions, do not count), then our p99 vs the "
                   "peer's; each peer ran right after the scenario above it, on the same Redis, "
                   "with the same concurrency, warm-up and duration\n");
    (void)failed;
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static char *cpu_model(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    char *model = NULL;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon++;
                while (*colon == ' ' || *colon == '\t')
                    colon++;
                colon[strcspn(colon, "\n")] = '\0';
                model = sd_xstrdup(colon);
                break;
            }
        }
    }
    if (f)
        fclose(f);
    return model ? model : sd_xstrdup("unknown");
}

static char *os_name(void) {
    FILE *f = fopen("/etc/os-release", "r");
    char line[512];
    char *name = NULL;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "PRETTY_NAME=", 12) == 0) {
            char *v = line + 12;
            v[strcspn(v, "\n")] = '\0';
            size_t len = strlen(v);
            if (len >= 2 && v[0] == '"' && v[len - 1] == '"')
                name = sd_xstrndup(v + 1, len - 2);
            else
                name = sd_xstrdup(v);
            break;
        }
    }
    if (f)
        fclose(f);
    return name ? name : sd_xstrdup("unknown");
}

static json_t *machine_json(void) {
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    struct utsname u;
    char kernel[300] = "unknown";
    if (uname(&u) == 0)
        snprintf(kernel, sizeof kernel, "%s %s", u.sysname, u.release);
    char *model = cpu_model(), *os = os_name();
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    json_t *m =
        json_pack("{s:s, s:i, s:s, s:s, s:s, s:I}", "hostname", host, "cpus",
                  (int)sysconf(_SC_NPROCESSORS_ONLN), "model", model, "kernel", kernel, "os", os,
                  "memory_mb", (json_int_t)(pages > 0 && page > 0 ? pages / (1048576 / page) : 0));
    free(model);
    free(os);
    return m;
}

static void put_percentiles(json_t *obj, const hdr_histogram *h) {
    for (size_t k = 0; k < NPCTS; k++)
        json_object_set_new(obj, PCTS[k].key,
                            json_integer(h ? (json_int_t)hdr_percentile(h, PCTS[k].p) : 0));
    json_object_set_new(obj, "max_us", json_integer(h ? (json_int_t)hdr_max(h) : 0));
    json_object_set_new(obj, "min_us", json_integer(h ? (json_int_t)hdr_min(h) : 0));
    json_object_set_new(obj, "mean_us", json_real(h ? round(hdr_mean(h) * 10) / 10 : 0));
}

static json_t *row_json(const bench_row *row) {
    const bench_result *r = &row->r;
    json_t *s = json_object();
    json_object_set_new(s, "name", json_string(r->name));
    json_object_set_new(s, "target_rate", json_real(r->target_rate));
    json_object_set_new(s, "achieved_rate", json_real(round(r->achieved_rate * 10) / 10));
    json_object_set_new(s, "duration_s", json_real(r->duration_s));
    json_object_set_new(s, "count", json_integer((json_int_t)r->count));
    json_object_set_new(s, "errors", json_integer((json_int_t)r->errors));
    json_t *kinds = json_object();
    for (int k = 1; k < BENCH_ERR_KINDS; k++)
        if (k <= BENCH_ERR_OTHER || r->errors_by_kind[k] > 0)
            json_object_set_new(kinds, bench_err_kind_name(k),
                                json_integer((json_int_t)r->errors_by_kind[k]));
    json_object_set_new(s, "errors_by_kind", kinds);
    put_percentiles(s, r->latency);
    json_t *unc = json_object();
    put_percentiles(unc, r->uncorrected);
    json_object_set_new(s, "uncorrected", unc);
    json_object_set_new(s, "below_target", json_boolean(r->below_target));
    json_object_set_new(s, "overflow",
                        json_integer(r->latency ? (json_int_t)hdr_overflow(r->latency) : 0));
    if (r->latency) {
        char *hgrm = hdr_hgrm_string(r->latency, 1000.0);
        json_object_set_new(s, "hgrm", json_string(hgrm));
        free(hgrm);
    } else {
        json_object_set_new(s, "hgrm", json_string(""));
    }
    if (row->failure[0])
        json_object_set_new(s, "failed", json_string(row->failure));
    return s;
}

/* The "peers" array: each peer beside the scenario of ours it ran after; NULL when none ran. */
static json_t *peers_json(const bench_row *rows, size_t n) {
    json_t *arr = NULL;
    for (size_t i = 0; i < n; i++) {
        const bench_row *row = &rows[i];
        for (size_t k = 0; k < row->npeers; k++) {
            const bench_peer_result *p = &row->peers[k];
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(p->name));
            json_object_set_new(o, "compared_with", json_string(p->compared_with));
            json_object_set_new(o, "command", json_string(p->command));
            json_object_set_new(o, "in_flight", json_integer(p->in_flight));
            json_object_set_new(o, "duration_s", json_real(p->duration_s));
            if (p->skipped[0]) {
                json_object_set_new(o, "skipped", json_string(p->skipped));
            } else {
                json_object_set_new(o, "version", json_string(p->version));
                json_object_set_new(o, "achieved_rate",
                                    json_real(round(p->achieved_rate * 10) / 10));
                json_object_set_new(o, "p50_us", json_integer(p->p50_us));
                json_object_set_new(o, "p99_us", json_integer(p->p99_us));
                json_object_set_new(o, "max_us", json_integer(p->max_us));
                json_object_set_new(o, "count", json_integer((json_int_t)p->count));
                json_object_set_new(o, "errors", json_integer((json_int_t)p->errors));
                const hdr_histogram *h = row->failure[0] ? NULL : row->r.latency;
                json_t *ours = json_object();
                json_object_set_new(ours, "name", json_string(row->r.name));
                json_object_set_new(ours, "achieved_rate",
                                    json_real(round(row->r.achieved_rate * 10) / 10));
                json_object_set_new(ours, "p50_us",
                                    json_integer(h ? (json_int_t)hdr_percentile(h, 50) : 0));
                json_object_set_new(ours, "p99_us",
                                    json_integer(h ? (json_int_t)hdr_percentile(h, 99) : 0));
                json_object_set_new(o, "ours", ours);
                double ratio = row->failure[0] ? 0 : bench_peer_ratio(&row->r, p);
                json_object_set_new(o, "vs_peer", json_real(round(ratio * 1000) / 1000));
            }
            if (arr == NULL)
                arr = json_array();
            json_array_append_new(arr, o);
        }
    }
    return arr;
}

int bench_report_json(const char *path, const bench_row *rows, size_t n) {
    json_t *root = json_object();
    json_object_set_new(root, "version", json_integer(SCHEMA_VERSION));
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(root, "created", json_string(when));
    json_object_set_new(root, "machine", machine_json());
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, row_json(&rows[i]));
    json_object_set_new(root, "scenarios", arr);
    json_t *peers = peers_json(rows, n);
    if (peers)
        json_object_set_new(root, "peers", peers);

    size_t flags = JSON_INDENT(2) | JSON_REAL_PRECISION(12) | JSON_PRESERVE_ORDER;
    int rc = 0;
    if (strcmp(path, "-") == 0) {
        rc = json_dumpf(root, stdout, flags);
        fputc('\n', stdout);
    } else {
        FILE *f = fopen(path, "w");
        if (f == NULL) {
            rc = -errno;
            fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
        } else {
            rc = json_dumpf(root, f, flags);
            fputc('\n', f);
            if (fclose(f) != 0 || rc != 0) {
                rc = -EIO;
                fprintf(stderr, "bench: cannot write %s\n", path);
            }
        }
    }
    json_decref(root);
    return rc < 0 ? rc : 0;
}

/* ---- HTML ---------------------------------------------------------------------------------- */

/* Writes s as HTML text. Besides the markup characters, the colon of "://" is written as a
 * character reference: a URL in a message (an npm error names its registry) is then text in the
 * page's source as well as on screen, and the page holds no URL but the SVG namespace. */
static void html_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        if (strncmp(s, "://", 3) == 0) {
            fputs("&#58;", f);
            continue;
        }
        switch (*s) {
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '&':
            fputs("&amp;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

typedef struct curve {
    double *x, *y; /* x: log10(1/(1-p)), y: milliseconds */
    size_t n, cap;
    double xmax;
} curve;

static void curve_point(double p, int64_t value, uint64_t cumulative, void *udata) {
    curve *c = udata;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->x = sd_xrealloc(c->x, c->cap * sizeof *c->x);
        c->y = sd_xrealloc(c->y, c->cap * sizeof *c->y);
    }
    double x = p >= 100 ? c->xmax : log10(1.0 / (1.0 - p / 100.0));
    c->x[c->n] = x > c->xmax ? c->xmax : x;
    c->y[c->n] = (double)value / 1000.0;
    c->n++;
}

/* The smallest of 1, 2, 5 times a power of ten that is >= v. */
static double nice_ceil(double v) {
    if (v <= 0)
        return 1;
    double p = pow(10, floor(log10(v)));
    for (int i = 0; i < 4; i++) {
        double steps[] = {1, 2, 5, 10};
        if (steps[i] * p >= v * (1 - 1e-9))
            return steps[i] * p;
    }
    return 10 * p;
}

/*
 * One chart in the style of HdrHistogram's plots: latency (ms, linear) against the percentile on
 * a log scale of 1/(1-percentile), so that 90%, 99%, 99.9% ... sit at equal distances and the
 * tail, where coordinated omission hides, gets as much room as the median.
 */
static void html_chart(FILE *f, const bench_result *r) {
    const double W = 780, H = 320, L = 70, R = 45, T = 20, B = 45;
    uint64_t count = hdr_count(r->latency);
    double decades = count > 1 ? ceil(log10((double)count)) : 2;
    if (decades < 2)
        decades = 2;
    if (decades > 7)
        decades = 7;
    curve cor = {.xmax = decades}, unc = {.xmax = decades};
    hdr_percentiles_walk(r->latency, 5, curve_point, &cor);
    hdr_percentiles_walk(r->uncorrected, 5, curve_point, &unc);
    double top = 0;
    for (size_t i = 0; i < cor.n; i++)
        top = fmax(top, cor.y[i]);
    for (size_t i = 0; i < unc.n; i++)
        top = fmax(top, unc.y[i]);
    double ymax = nice_ceil(top > 0 ? top : 1);
    double pw = W - L - R, ph = H - T - B;

    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n",
            W, H, W, H);
    fprintf(f,
            "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"#fafafa\" "
            "stroke=\"#999\"/>\n",
            L, T, pw, ph);
    for (int d = 0; d <= (int)decades; d++) {
        double x = L + pw * d / decades;
        char label[32];
        if (d == 0)
            snprintf(label, sizeof label, "0%%");
        else
            snprintf(label, sizeof label, "%.*f%%", d > 2 ? d - 2 : 0, 100.0 - 100.0 / pow(10, d));
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>\n", x,
                T, x, T + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", x, T + ph + 15,
                label);
    }
    for (int i = 0; i <= 5; i++) {
        double y = T + ph - ph * i / 5;
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L,
                y, L + pw, y);
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 5, y + 4,
                ymax * i / 5);
    }
    fprintf(f,
            "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">percentile "
            "(log scale of 1/(1-percentile))</text>\n",
            L + pw / 2, H - 8);
    fprintf(f,
            "<text transform=\"translate(14,%.0f) rotate(-90)\" text-anchor=\"middle\">"
            "latency (ms)</text>\n",
            T + ph / 2);
    const curve *curves[2] = {&unc, &cor};
    const char *colors[2] = {"#e08000", "#1f5fbf"};
    const char *dashes[2] = {"5,4", "none"};
    for (int k = 0; k < 2; k++) {
        fprintf(f,
                "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                "stroke-dasharray=\"%s\" points=\"",
                colors[k], dashes[k]);
        for (size_t i = 0; i < curves[k]->n; i++)
            fprintf(f, "%.1f,%.1f ", L + pw * curves[k]->x[i] / decades,
                    T + ph - ph * fmin(curves[k]->y[i] / ymax, 1.0));
        fputs("\"/>\n", f);
    }
    fprintf(f,
            "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
            "stroke-width=\"2\"/><text x=\"%.0f\" y=\"%.0f\">corrected (from intended "
            "start)</text>\n",
            L + 10, T + 12, L + 30, T + 12, colors[1], L + 35, T + 16);
    fprintf(f,
            "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
            "stroke-width=\"2\" stroke-dasharray=\"5,4\"/><text x=\"%.0f\" y=\"%.0f\">"
            "uncorrected (from actual start)</text>\n",
            L + 10, T + 28, L + 30, T + 28, colors[0], L + 35, T + 32);
    fputs("</svg>\n", f);
    free(cor.x);
    free(cor.y);
    free(unc.x);
    free(unc.y);
}

/* The component of a scenario name: what comes before its first dot. */
static size_t component_len(const char *name) {
    return strcspn(name, ".");
}

/* Whether row's scenario is in the component comp (clen bytes, from component_len). */
static int in_component(const bench_row *row, const char *comp, size_t clen) {
    return component_len(row->r.name) == clen && strncmp(row->r.name, comp, clen) == 0;
}

/* Whether a row has its group in a peer chart: it ran, and at least one of its peers did. */
static int row_charted(const bench_row *row) {
    if (row->failure[0])
        return 0;
    for (size_t k = 0; k < row->npeers; k++)
        if (!row->peers[k].skipped[0])
            return 1;
    return 0;
}

/* One bar of a throughput chart with its label on the left and its figures on the right. */
static void html_bar(FILE *f, double y, double h, double L, double pw, double vmax,
                     const char *color, const char *label, double rate, double p99_us,
                     const char *extra) {
    double len = vmax > 0 ? pw * fmin(rate / vmax, 1.0) : 0;
    char r[32], p99[32];
    fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">", L - 6, y + h - 5);
    html_escape(f, label);
    fputs("</text>\n", f);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"%.0f\" fill=\"%s\"/>\n", L, y,
            len, h, color);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s/s, p99 %s", L + len + 6, y + h - 5,
            format_count(rate, r, sizeof r), bench_format_us(p99_us, p99, sizeof p99));
    html_escape(f, extra);
    fputs("</text>\n", f);
}

/*
 * One chart per component that has measured peers: for each scenario with peers, our throughput
 * and each peer's as horizontal bars next to each other, on one scale, with the p99 beside each
 * bar and the ratio beside each peer's. Skipped peers are listed under the chart.
 */
static void html_peer_charts(FILE *f, const bench_row *rows, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *comp = rows[i].r.name;
        size_t clen = component_len(comp);
        int first = 1, measured = 0, any = 0;
        for (size_t j = 0; j < n; j++) {
            if (!in_component(&rows[j], comp, clen))
                continue;
            if (j < i && rows[j].npeers > 0)
                first = 0;
            for (size_t k = 0; k < rows[j].npeers; k++) {
                any = 1;
                if (!rows[j].peers[k].skipped[0] && !rows[j].failure[0])
                    measured++;
            }
        }
        if (!first || !any || rows[i].npeers == 0)
            continue;
        fputs("<h2>", f);
        fwrite(comp, 1, clen, f);
        fputs(": throughput beside the peers</h2>\n", f);
        double vmax = 0;
        int groups = 0;
        for (size_t j = 0; j < n; j++) {
            const bench_row *row = &rows[j];
            if (!in_component(row, comp, clen) || !row_charted(row))
                continue;
            vmax = fmax(vmax, row->r.achieved_rate);
            for (size_t k = 0; k < row->npeers; k++)
                if (!row->peers[k].skipped[0])
                    vmax = fmax(vmax, row->peers[k].achieved_rate);
            groups++;
        }
        if (measured > 0) {
            const double W = 900, L = 290, R = 250, T = 10, BAR = 20, GAP = 4, GROUP = 16, B = 40;
            double pw = W - L - R,
                   H = T + B + (double)(measured + groups) * (BAR + GAP) + (double)groups * GROUP;
            double scale = nice_ceil(vmax);
            fprintf(f,
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                    "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n",
                    W, H, W, H);
            double bottom = H - B;
            for (int t = 0; t <= 5; t++) {
                double x = L + pw * t / 5;
                char v[32];
                fprintf(f,
                        "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.1f\" "
                        "stroke=\"#ddd\"/>\n",
                        x, T, x, bottom);
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x,
                        bottom + 14, format_count(scale * t / 5, v, sizeof v));
            }
            fprintf(f,
                    "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">operations/s, closed "
                    "loop (longer is more); p99 beside each bar</text>\n",
                    L + pw / 2, H - 8);
            double y = T + GROUP / 2;
            for (size_t j = 0; j < n; j++) {
                const bench_row *row = &rows[j];
                if (!in_component(row, comp, clen) || !row_charted(row))
                    continue;
                html_bar(f, y, BAR, L, pw, scale, "#1f5fbf", row->r.name, row->r.achieved_rate,
                         (double)hdr_percentile(row->r.latency, 99), " (ours)");
                y += BAR + GAP;
                for (size_t k = 0; k < row->npeers; k++) {
                    const bench_peer_result *p = &row->peers[k];
                    if (p->skipped[0])
                        continue;
                    char label[128], extra[64];
                    snprintf(label, sizeof label, "%s %s", p->name, p->version);
                    snprintf(extra, sizeof extra, " (ours/peer %.2fx)",
                             bench_peer_ratio(&row->r, p));
                    html_bar(f, y, BAR, L, pw, scale, "#e08000", label, p->achieved_rate,
                             (double)p->p99_us, extra);
                    y += BAR + GAP;
                }
                y += GROUP;
            }
            fputs("</svg>\n", f);
        }
        fputs("<p>Each peer ran right after the scenario of ours it is compared with, on the same "
              "Redis, with the same closed-loop concurrency, keys, policy, warm-up and duration "
              "(one round, ours first).</p>\n<ul>\n",
              f);
        for (size_t j = 0; j < n; j++) {
            const bench_row *row = &rows[j];
            if (!in_component(row, comp, clen))
                continue;
            for (size_t k = 0; k < row->npeers; k++) {
                const bench_peer_result *p = &row->peers[k];
                fputs("<li>", f);
                html_escape(f, p->name);
                fputs(" vs ", f);
                html_escape(f, row->r.name);
                if (p->skipped[0]) {
                    fputs(": skipped: ", f);
                    html_escape(f, p->skipped);
                } else {
                    fputs(": <code>", f);
                    html_escape(f, p->command);
                    fputs("</code>", f);
                }
                fputs("</li>\n", f);
            }
        }
        fputs("</ul>\n", f);
    }
}

int bench_report_html(const char *path, const bench_row *rows, size_t n) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        int rc = -errno;
        fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
        return rc;
    }
    json_t *m = machine_json();
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>bench results</title>\n"
          "<style>body{font-family:sans-serif;margin:2em;color:#222}"
          "table{border-collapse:collapse}td,th{padding:3px 10px;text-align:right;"
          "border-bottom:1px solid #ddd}td:first-child,th:first-child{text-align:left}"
          "h2{margin-top:2em;font-size:1.1em}</style></head><body>\n<h1>bench results</h1>\n<p>",
          f);
    html_escape(f, json_string_value(json_object_get(m, "hostname")));
    fprintf(f, ", %d CPUs, ", (int)json_integer_value(json_object_get(m, "cpus")));
    html_escape(f, json_string_value(json_object_get(m, "model")));
    fputs(", ", f);
    html_escape(f, json_string_value(json_object_get(m, "kernel")));
    fputs("</p>\n<pre>", f);
    json_decref(m);

    /* The same table as on the terminal, escaped. */
    char *table = NULL;
    size_t table_len = 0;
    FILE *tf = open_memstream(&table, &table_len);
    if (tf) {
        bench_report_table(tf, rows, n);
        fclose(tf);
        html_escape(f, table);
        free(table);
    }
    fputs("</pre>\n", f);
    html_peer_charts(f, rows, n);
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &rows[i].r;
        fputs("<h2>", f);
        html_escape(f, r->name);
        fputs("</h2>\n", f);
        if (rows[i].failure[0] || r->latency == NULL || hdr_count(r->latency) == 0) {
            fputs("<p>no measurements</p>\n", f);
            continue;
        }
        html_chart(f, r);
    }
    fputs("</body></html>\n", f);
    if (fclose(f) != 0) {
        fprintf(stderr, "bench: cannot write %s\n", path);
        return -EIO;
    }
    return 0;
}

/* ---- Comparing two reports ----------------------------------------------------------------- */

static json_t *load_report(const char *path, char *err, size_t errlen, int *rc) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (root == NULL) {
        snprintf(err, errlen, "%s: %s (line %d)", path, jerr.text, jerr.line);
        *rc = SD_EPARSE;
        return NULL;
    }
    if (!json_is_array(json_object_get(root, "scenarios"))) {
        snprintf(err, errlen, "%s: not a bench report (no \"scenarios\" array)", path);
        json_decref(root);
        *rc = SD_EPARSE;
        return NULL;
    }
    return root;
}

static json_t *find_scenario(json_t *report, const char *name) {
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(report, "scenarios"), i, s) {
        const char *n = json_string_value(json_object_get(s, "name"));
        if (n && strcmp(n, name) == 0)
            return s;
    }
    return NULL;
}

static double num(json_t *obj, const char *key) {
    return json_number_value(json_object_get(obj, key));
}

static void compare_line(FILE *f, int w, const char *name, const char *metric, double a, double b,
                         int latency) {
    char sa[32], sb[32], ratio[16];
    if (latency) {
        bench_format_us(a, sa, sizeof sa);
        bench_format_us(b, sb, sizeof sb);
    } else {
        format_count(a, sa, sizeof sa);
        format_count(b, sb, sizeof sb);
    }
    if (a > 0)
        snprintf(ratio, sizeof ratio, "%.2f", b / a);
    else
        snprintf(ratio, sizeof ratio, "-");
    fprintf(f, "%-*s %-11s %10s %10s %7s\n", w, name, metric, sa, sb, ratio);
}

int bench_report_compare(FILE *f, const char *path_a, const char *path_b, char *err,
                         size_t errlen) {
    int rc = 0;
    json_t *a = load_report(path_a, err, errlen, &rc);
    if (a == NULL)
        return rc;
    json_t *b = load_report(path_b, err, errlen, &rc);
    if (b == NULL) {
        json_decref(a);
        return rc;
    }
    int w = 8;
    size_t i;
    json_t *s;
    json_t *both[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        json_array_foreach(json_object_get(both[k], "scenarios"), i, s) {
            const char *n = json_string_value(json_object_get(s, "name"));
            if (n && (int)strlen(n) > w)
                w = (int)strlen(n);
        }
    }
    fprintf(f, "%-*s %-11s %10s %10s %7s\n", w, "scenario", "metric", "A", "B", "B/A");
    json_array_foreach(json_object_get(a, "scenarios"), i, s) {
        const char *name = json_string_value(json_object_get(s, "name"));
        if (name == NULL)
            continue;
        json_t *t = find_scenario(b, name);
        if (t == NULL) {
            fprintf(f, "%-*s only in A\n", w, name);
            continue;
        }
        /* A failed scenario has no numbers worth a ratio: its zeros would read as a 0.00x. */
        const char *fail_a = json_string_value(json_object_get(s, "failed"));
        const char *fail_b = json_string_value(json_object_get(t, "failed"));
        if (fail_a || fail_b) {
            if (fail_a)
                fprintf(f, "%-*s FAILED in A: %s\n", w, name, fail_a);
            if (fail_b)
                fprintf(f, "%-*s FAILED in B: %s\n", w, name, fail_b);
            continue;
        }
        /* Latencies at different offered loads are different experiments, not a regression or
         * an improvement: still printed, but said so. */
        double rate_a = num(s, "target_rate"), rate_b = num(t, "target_rate");
        if (rate_a != rate_b)
            fprintf(stderr,
                    "bench compare: warning: %s ran at target rate %g/s in A but %g/s in B; "
                    "its numbers are not comparable\n",
                    name, rate_a, rate_b);
        compare_line(f, w, name, "achieved/s", num(s, "achieved_rate"), num(t, "achieved_rate"), 0);
        for (size_t k = 0; k < NPCTS; k++)
            compare_line(f, w, "", PCTS[k].label, num(s, PCTS[k].key), num(t, PCTS[k].key), 1);
        compare_line(f, w, "", "max", num(s, "max_us"), num(t, "max_us"), 1);
        compare_line(f, w, "", "errors", num(s, "errors"), num(t, "errors"), 0);
    }
    json_array_foreach(json_object_get(b, "scenarios"), i, s) {
        const char *name = json_string_value(json_object_get(s, "name"));
        if (name && find_scenario(a, name) == NULL)
            fprintf(f, "%-*s only in B\n", w, name);
    }
    json_decref(a);
    json_decref(b);
    return 0;
}
