/*
 * test_report.c - the main job's report and its peers: the HTML page is one self-contained file
 * whose SVG charts are well-formed XML, the JSON and the table put each peer beside the scenario
 * it is compared with (ratio = ours / theirs), and a peer that cannot run is skipped with one
 * line while the run still succeeds.
 *
 * Nothing here depends on speed: reports are written from rows built by hand, peers are small
 * shell commands (or a fake npm on PATH), and the real `bench run`s check only what they print
 * and write, not how fast they went.
 *
 * No test sets Criterion's .timeout: with several such tests running at once (--jobs=2),
 * Criterion 2.4's runner leaks 48 bytes that LeakSanitizer reports. Every wait here is bounded
 * by the code under test (a peer's deadline) and CTest's TIMEOUT bounds the whole suite.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "peers.h"
#include "report.h"
#include "sd.h"
#include "support.h"

/* ---- A small XML well-formedness check ------------------------------------------------------ */

/*
 * Checks that s[0..len) is one well-formed XML element (XML 1.0, section 2.1): tags nest and
 * match, attribute values are quoted and unique per element, '<' never appears in text or
 * values, every '&' starts a predefined or numeric entity, comments hold no "--", and nothing
 * but blanks follows the root. Returns NULL or a message naming the offset.
 */
static const char *xml_check(const char *s, size_t len) {
    static char msg[160];
    enum { DEPTH = 64, NAME = 64 };
    char stack[DEPTH][NAME];
    int depth = 0, roots = 0;
    size_t i = 0;
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        int n_ = snprintf(msg, sizeof msg, "offset %zu: ", i);                                     \
        snprintf(msg + n_, sizeof msg - (size_t)n_, __VA_ARGS__);                                  \
        return msg;                                                                                \
    } while (0)
#define NAME_START(c) (isalpha((unsigned char)(c)) || (c) == '_' || (c) == ':')
#define NAME_CHAR(c) (NAME_START(c) || isdigit((unsigned char)(c)) || (c) == '-' || (c) == '.')
    while (i < len) {
        char c = s[i];
        if (c != '<') {
            if (depth == 0 && !isspace((unsigned char)c))
                FAIL("text outside the root element");
            if (c == '&') {
                size_t semi = i + 1;
                while (semi < len && semi - i < 12 && s[semi] != ';')
                    semi++;
                if (semi >= len || s[semi] != ';')
                    FAIL("a bare '&'");
                size_t n = semi - i - 1;
                const char *e = s + i + 1;
                int ok = (n == 2 && (!strncmp(e, "lt", 2) || !strncmp(e, "gt", 2))) ||
                         (n == 3 && !strncmp(e, "amp", 3)) ||
                         (n == 4 && (!strncmp(e, "quot", 4) || !strncmp(e, "apos", 4)));
                if (!ok && n >= 2 && e[0] == '#') {
                    ok = 1;
                    int hex = e[1] == 'x';
                    for (size_t k = 1 + (size_t)hex; k < n; k++)
                        ok &=
                            !!(hex ? isxdigit((unsigned char)e[k]) : isdigit((unsigned char)e[k]));
                    ok &= n > 1 + (size_t)hex;
                }
                if (!ok)
                    FAIL("unknown entity '&%.*s;'", (int)n, e);
                i = semi + 1;
                continue;
            }
            i++;
            continue;
        }
        if (len - i >= 4 && !strncmp(s + i, "<!--", 4)) {
            const char *end = NULL;
            for (size_t k = i + 4; k + 1 < len; k++)
                if (s[k] == '-' && s[k + 1] == '-') {
                    end = s + k;
                    break;
                }
            if (end == NULL || end + 2 >= s + len || end[2] != '>')
                FAIL("a comment with '--' inside or unterminated");
            i = (size_t)(end - s) + 3;
            continue;
        }
        if (i + 1 < len && s[i + 1] == '/') {
            size_t k = i + 2, start = k;
            while (k < len && NAME_CHAR(s[k]))
                k++;
            if (depth == 0)
                FAIL("an end tag without a start tag");
            if (k - start != strlen(stack[depth - 1]) ||
                strncmp(s + start, stack[depth - 1], k - start))
                FAIL("</%.*s> closes <%s>", (int)(k - start), s + start, stack[depth - 1]);
            while (k < len && isspace((unsigned char)s[k]))
                k++;
            if (k >= len || s[k] != '>')
                FAIL("an unterminated end tag");
            depth--;
            i = k + 1;
            continue;
        }
        size_t k = i + 1, start = k;
        if (k >= len || !NAME_START(s[k]))
            FAIL("'<' that starts no tag");
        while (k < len && NAME_CHAR(s[k]))
            k++;
        size_t name_end = k;
        if (depth == 0 && ++roots > 1)
            FAIL("a second root element");
        if (depth == DEPTH || name_end - start >= NAME)
            FAIL("too deep, or a name too long for this check");
        char attrs[32][NAME];
        int nattrs = 0;
        for (;;) {
            size_t blanks = k;
            while (k < len && isspace((unsigned char)s[k]))
                k++;
            if (k >= len)
                FAIL("an unterminated start tag");
            if (s[k] == '>' || (s[k] == '/' && k + 1 < len && s[k + 1] == '>'))
                break;
            if (k == blanks)
                FAIL("attributes not separated by blanks");
            size_t an = k;
            if (!NAME_START(s[k]))
                FAIL("a bad attribute name");
            while (k < len && NAME_CHAR(s[k]))
                k++;
            if (k - an >= NAME || nattrs == 32)
                FAIL("an attribute name too long, or too many, for this check");
            for (int a = 0; a < nattrs; a++)
                if (strlen(attrs[a]) == k - an && !strncmp(attrs[a], s + an, k - an))
                    FAIL("attribute '%.*s' twice", (int)(k - an), s + an);
            snprintf(attrs[nattrs++], NAME, "%.*s", (int)(k - an), s + an);
            while (k < len && isspace((unsigned char)s[k]))
                k++;
            if (k >= len || s[k] != '=')
                FAIL("an attribute without '='");
            k++;
            while (k < len && isspace((unsigned char)s[k]))
                k++;
            if (k >= len || (s[k] != '"' && s[k] != '\''))
                FAIL("an unquoted attribute value");
            char q = s[k++];
            while (k < len && s[k] != q) {
                if (s[k] == '<')
                    FAIL("'<' in an attribute value");
                if (s[k] == '&') {
                    size_t semi = k + 1;
                    while (semi < len && NAME_CHAR(s[semi]))
                        semi++;
                    if (semi >= len || s[semi] != ';')
                        FAIL("a bare '&' in an attribute value");
                }
                k++;
            }
            if (k >= len)
                FAIL("an unterminated attribute value");
            k++;
        }
        if (s[k] == '/') {
            i = k + 2;
        } else {
            snprintf(stack[depth++], NAME, "%.*s", (int)(name_end - start), s + start);
            i = k + 1;
        }
    }
    if (depth != 0)
        FAIL("<%s> is never closed", stack[depth - 1]);
    if (roots != 1)
        FAIL("no root element");
    return NULL;
#undef FAIL
#undef NAME_START
#undef NAME_CHAR
}

static int xml_ok(const char *s) {
    return xml_check(s, strlen(s)) == NULL;
}

Test(xml, the_check_accepts_well_formed_and_refuses_the_rest) {
    const char *good[] = {"<svg a=\"1\" b='x &amp; y'><g><text>a &lt; b &#38; c</text></g>"
                          "<rect x=\"1\"/><!-- note --></svg>",
                          "<svg>\n<line x1=\"0\" />\n</svg>\n"};
    for (size_t i = 0; i < 2; i++) {
        const char *why = xml_check(good[i], strlen(good[i]));
        cr_expect_null(why, "refused %s: %s", good[i], why ? why : "");
    }
    const char *bad[] = {
        "<svg><g></svg>",                 /* wrong nesting */
        "<svg><text>a & b</text></svg>",  /* bare & */
        "<svg><text>&nbsp;</text></svg>", /* not an XML entity */
        "<svg x=1></svg>",                /* unquoted value */
        "<svg x=\"1\" x=\"2\"></svg>",    /* repeated attribute */
        "<svg x=\"1\"y=\"2\"></svg>",     /* no blank between attributes */
        "<svg x=\"a<b\"></svg>",          /* < in a value */
        "<svg><text>a</text>",            /* never closed */
        "<svg></svg><svg></svg>",         /* two roots */
        "<svg><!-- a -- b --></svg>",     /* -- in a comment */
        "<svg><text>1 < 2</text></svg>",  /* < in text */
        "<svg><rect/></svg> trailing",    /* text after the root */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect(!xml_ok(bad[i]), "accepted: %s", bad[i]);
}

/* ---- Reports written from rows built by hand ------------------------------------------------ */

/* A finished closed-loop row: name, rate, and latencies 100..(100 + n - 1) us. */
static void row_make(bench_row *row, const char *name, double rate, int n) {
    memset(row, 0, sizeof *row);
    snprintf(row->r.name, sizeof row->r.name, "%s", name);
    row->r.achieved_rate = rate;
    row->r.duration_s = 2;
    row->r.latency = hdr_new_default();
    row->r.uncorrected = hdr_new_default();
    for (int i = 0; i < n; i++) {
        hdr_record(row->r.latency, 100 + i);
        hdr_record(row->r.uncorrected, 100 + i);
    }
    row->r.count = (uint64_t)n;
}

static void peer_make(bench_peer_result *p, const char *name, const char *compared_with,
                      double rate, int64_t p99_us) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->compared_with, sizeof p->compared_with, "%s", compared_with);
    snprintf(p->version, sizeof p->version, "1.2.3");
    snprintf(p->command, sizeof p->command, "node peer.js --redis URL");
    p->achieved_rate = rate;
    p->p50_us = p99_us / 2;
    p->p99_us = p99_us;
    p->max_us = p99_us * 2;
    p->count = 1000;
    p->in_flight = 50;
    p->duration_s = 2;
}

/* Two rate-limiter rows, the first with a measured peer (whose name needs escaping) and a
 * skipped one, and a row of another component without peers. */
typedef struct fixture {
    bench_row rows[3];
    bench_peer_result peers[2];
} fixture;

static void fixture_make(fixture *fx) {
    row_make(&fx->rows[0], "ratelimit.gcra.closed", 300000, 1000);
    row_make(&fx->rows[1], "ratelimit.token-bucket.open", 20000, 500);
    row_make(&fx->rows[2], "other.thing.closed", 1000, 10);
    peer_make(&fx->peers[0], "peer <&> \"quoted\"", "ratelimit.gcra.closed", 120000, 5200);
    peer_make(&fx->peers[1], "skipped-peer", "ratelimit.gcra.closed", 0, 0);
    snprintf(fx->peers[1].skipped, sizeof fx->peers[1].skipped,
             "npm ci failed (a <b>): FetchError: request to https://registry.example/x failed");
    fx->rows[0].peers = fx->peers;
    fx->rows[0].npeers = 2;
}

static void fixture_free(fixture *fx) {
    for (int i = 0; i < 3; i++)
        bench_result_clear(&fx->rows[i].r);
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* A temporary file name (the file exists, empty); the caller unlinks it. */
static void temp_path(char *buf, size_t len, const char *what) {
    snprintf(buf, len, "/tmp/test_report_%s_XXXXXX", what);
    int fd = mkstemp(buf);
    cr_assert_geq(fd, 0);
    close(fd);
}

/* Writes the report of rows through write (bench_report_html or _json) into a temporary file
 * and returns what it holds (the caller frees it); asserts that the write succeeded. */
static char *report_text(int (*write)(const char *, const bench_row *, size_t),
                         const bench_row *rows, size_t n) {
    char path[64];
    temp_path(path, sizeof path, "report");
    cr_assert_eq(write(path, rows, n), 0);
    char *text = read_all(path);
    unlink(path);
    return text;
}

/* The JSON report of rows, parsed. */
static json_t *report_json(const bench_row *rows, size_t n) {
    char *text = report_text(bench_report_json, rows, n);
    json_error_t e;
    json_t *root = json_loads(text, 0, &e);
    cr_assert_not_null(root, "%s", e.text);
    free(text);
    return root;
}

/*
 * Checks a page as the main job must write it: no script, nothing fetched (the only URL is the
 * SVG namespace), and every <svg> element well-formed XML. Returns the number of SVGs.
 */
static int check_page(const char *html) {
    cr_expect_null(strcasestr(html, "<script"), "a script in the page");
    cr_expect_null(strcasestr(html, "<link"), "a linked file in the page");
    cr_expect_null(strcasestr(html, "<img"), "an image file in the page");
    cr_expect_null(strcasestr(html, "url("), "a fetched file in the page's style");
    cr_expect_null(strcasestr(html, "@import"), "an imported style sheet");
    static const char ns[] = "http://www.w3.org/2000/svg";
    for (const char *p = html; (p = strcasestr(p, "http")) != NULL; p++) {
        int url = !strncasecmp(p, "http://", 7) || !strncasecmp(p, "https://", 8);
        if (url)
            cr_expect(!strncmp(p, ns, strlen(ns)), "a reference to %.40s", p);
    }
    int svgs = 0;
    for (const char *p = html; (p = strstr(p, "<svg")) != NULL;) {
        const char *end = strstr(p, "</svg>");
        cr_assert_not_null(end, "an <svg> without </svg>");
        end += strlen("</svg>");
        const char *why = xml_check(p, (size_t)(end - p));
        cr_expect_null(why, "SVG %d is not well-formed XML: %s", svgs + 1, why ? why : "");
        svgs++;
        p = end;
    }
    return svgs;
}

Test(report, html_is_one_file_without_scripts_and_its_svgs_are_well_formed) {
    static fixture fx;
    fixture_make(&fx);
    char *html = report_text(bench_report_html, fx.rows, 3);
    /* One throughput chart (the rate limiter has a measured peer; "other" has none) and one
     * percentile chart per scenario. */
    cr_expect_eq(check_page(html), 1 + 3, "%s", html);
    cr_expect_not_null(strstr(html, "ratelimit: throughput beside the peers"));
    cr_expect_null(strstr(html, "other: throughput"), "a chart for a component without peers");
    cr_expect_not_null(strstr(html, "peer &lt;&amp;&gt; &quot;quoted&quot; 1.2.3"),
                       "the peer's bar is labelled, escaped");
    cr_expect_not_null(strstr(html, "skipped-peer vs ratelimit.gcra.closed: skipped: npm ci "
                                    "failed (a &lt;b&gt;): FetchError: request to https&#58;//"
                                    "registry.example/x failed"),
                       "the skipped peer is listed with its reason, its URL as text");
    cr_expect_not_null(strstr(html, "(ours/peer 2.50x)"), "the ratio beside the peer's bar");
    free(html);
    fixture_free(&fx);
}

Test(report, json_has_each_peer_with_both_throughputs_and_p99s) {
    static fixture fx;
    fixture_make(&fx);
    json_t *root = report_json(fx.rows, 3);
    json_t *peers = json_object_get(root, "peers");
    cr_assert(json_is_array(peers));
    cr_assert_eq(json_array_size(peers), 2);
    json_t *p = json_array_get(peers, 0);
    cr_expect_str_eq(json_string_value(json_object_get(p, "name")), "peer <&> \"quoted\"");
    cr_expect_str_eq(json_string_value(json_object_get(p, "compared_with")),
                     "ratelimit.gcra.closed");
    cr_expect_eq(json_number_value(json_object_get(p, "achieved_rate")), 120000);
    cr_expect_eq(json_integer_value(json_object_get(p, "p99_us")), 5200);
    json_t *ours = json_object_get(p, "ours");
    cr_expect_eq(json_number_value(json_object_get(ours, "achieved_rate")), 300000);
    cr_expect_eq(json_integer_value(json_object_get(ours, "p99_us")),
                 hdr_percentile(fx.rows[0].r.latency, 99));
    cr_expect_gt(json_integer_value(json_object_get(ours, "p99_us")), 0);
    cr_expect_float_eq(json_number_value(json_object_get(p, "vs_peer")), 2.5, 1e-9,
                       "ours / theirs");
    json_t *s = json_array_get(peers, 1);
    cr_expect_str_eq(json_string_value(json_object_get(s, "skipped")),
                     "npm ci failed (a <b>): FetchError: request to https://registry.example/x "
                     "failed");
    cr_expect_null(json_object_get(s, "achieved_rate"), "a skipped peer has no figures");
    cr_expect_null(json_object_get(s, "vs_peer"));
    json_decref(root);

    /* Without peers there is no "peers" key: reports of `bench http` stay as they were. */
    fx.rows[0].npeers = 0;
    root = report_json(fx.rows, 3);
    cr_expect_null(json_object_get(root, "peers"));
    json_decref(root);
    fixture_free(&fx);
}

Test(report, vs_peer_is_ours_over_theirs_in_the_table) {
    static fixture fx;
    fixture_make(&fx);
    cr_expect_float_eq(bench_peer_ratio(&fx.rows[0].r, &fx.peers[0]), 2.5, 1e-12);
    cr_expect_eq(bench_peer_ratio(&fx.rows[0].r, &fx.peers[1]), 0, "skipped: no ratio");
    /* Errors are not throughput, on either side: half of ours failed (150,000 good/s), a fifth
     * of theirs (96,000 good/s). */
    bench_result half = fx.rows[0].r;
    half.errors = half.count / 2;
    cr_expect_float_eq(bench_peer_ratio(&half, &fx.peers[0]), 1.25, 1e-12);
    bench_peer_result fifth = fx.peers[0];
    fifth.errors = fifth.count / 5;
    cr_expect_float_eq(bench_peer_ratio(&half, &fifth), 150000.0 / 96000.0, 1e-12);
    fifth.errors = fifth.count;
    cr_expect_eq(bench_peer_ratio(&half, &fifth), 0, "a peer that only failed: no ratio");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    bench_report_table(f, fx.rows, 3);
    fclose(f);
    const char *head = strstr(text, "vs peer\n");
    cr_expect_not_null(head, "the header has the column: %s", text);
    char ours[32], theirs[32], want[96];
    snprintf(want, sizeof want, "2.50x, p99 %s vs %s",
             bench_format_us((double)hdr_percentile(fx.rows[0].r.latency, 99), ours, sizeof ours),
             bench_format_us(5200, theirs, sizeof theirs));
    const char *line = strstr(text, "  peer peer <&>");
    cr_assert_not_null(line, "%s", text);
    cr_expect_not_null(strstr(line, want), "want '%s' in: %s", want, text);
    cr_expect(strstr(text, "ratelimit.gcra.closed") < line, "the peer comes under ours");
    cr_expect(line < strstr(text, "ratelimit.token-bucket.open"), "right under ours");
    const char *skip = strstr(text, "  peer skipped-peer");
    cr_assert_not_null(skip, "%s", text);
    const char *eol = strchr(skip, '\n');
    cr_expect_not_null(strstr(skip, "skipped: npm ci failed (a <b>): FetchError: request to "
                                    "https://registry.example/x failed\n"),
                       "%s", text);
    cr_expect(strstr(skip, "skipped:") < eol, "one line");
    free(text);

    /* Without peers, the table is the one `bench http` has always printed. */
    fx.rows[0].npeers = 0;
    f = open_memstream(&text, &len);
    bench_report_table(f, fx.rows, 3);
    fclose(f);
    cr_expect_null(strstr(text, "vs peer"), "%s", text);
    free(text);
    fixture_free(&fx);
}

/* ---- Running peers -------------------------------------------------------------------------- */

static const bench_peer_params PARAMS = {.peers_dir = "/nonexistent-peers",
                                         .redis_url = "redis://:secret@127.0.0.1:1/0",
                                         .duration_s = 0.5,
                                         .warmup_s = 0.25,
                                         .in_flight = 7,
                                         .grace_s = 20};

static void expect_one_line(const bench_peer_result *r) {
    cr_expect_neq(r->skipped[0], '\0', "skipped, with a reason");
    cr_expect_null(strchr(r->skipped, '\n'), "one line: %s", r->skipped);
}

Test(peers, a_missing_program_is_skipped_with_one_line) {
    static const char *const argv[] = {"no-such-program-4711", "x", NULL};
    static const char *const progs[] = {"sh", "no-such-program-4711", NULL};
    bench_peer peer = {.name = "p",
                       .compared_with = "a.b.closed",
                       .argv = argv,
                       .programs = progs,
                       .hint = "install it"};
    bench_peer_result r;
    cr_expect_eq(bench_peer_run(&peer, &PARAMS, &r), -ENOENT);
    expect_one_line(&r);
    cr_expect_str_eq(r.skipped, "no-such-program-4711 not found on PATH (install it)");
}

Test(peers, a_command_that_does_not_exist_is_skipped_with_one_line) {
    static const char *const argv[] = {"/nonexistent/peer-command", NULL};
    bench_peer peer = {.name = "p", .compared_with = "a.b.closed", .argv = argv};
    bench_peer_result r;
    cr_expect_lt(bench_peer_run(&peer, &PARAMS, &r), 0);
    expect_one_line(&r);
    cr_expect_not_null(strstr(r.skipped, "cannot run /nonexistent/peer-command"), "%s", r.skipped);
}

Test(peers, its_result_line_is_read_with_the_scenarios_load_and_the_url_kept_private) {
    /* The result line is printed only when every placeholder arrived as expected. */
    static const char *const argv[] = {
        "sh",
        "-c",
        "[ \"$1 $2 $3 $4\" = 'redis://:sec''ret@127.0.0.1:1/0 0.5 0.25 7' ] || exit 9;"
        " echo 'a human line {not json';"
        " echo '{\"version\": \"4.5\", \"achieved_rate\": 1234.5, \"p50_us\": 80,"
        " \"p99_us\": 900, \"max_us\": 1500, \"count\": 617, \"errors\": 2}'",
        "peer",
        "{redis}",
        "{duration}",
        "{warmup}",
        "{in_flight}",
        NULL};
    bench_peer peer = {.name = "fake", .compared_with = "a.b.closed", .argv = argv};
    bench_peer_result r;
    cr_assert_eq(bench_peer_run(&peer, &PARAMS, &r), 0, "%s", r.skipped);
    cr_expect_str_eq(r.skipped, "");
    cr_expect_str_eq(r.name, "fake");
    cr_expect_str_eq(r.compared_with, "a.b.closed");
    cr_expect_str_eq(r.version, "4.5");
    cr_expect_float_eq(r.achieved_rate, 1234.5, 1e-9);
    cr_expect_eq(r.p50_us, 80);
    cr_expect_eq(r.p99_us, 900);
    cr_expect_eq(r.max_us, 1500);
    cr_expect_eq(r.count, 617);
    cr_expect_eq(r.errors, 2);
    cr_expect_eq(r.in_flight, 7);
    cr_expect_null(strstr(r.command, "secret"), "the URL stays out of the report: %s", r.command);
    cr_expect_not_null(strstr(r.command, "peer URL 0.5 0.25 7"), "%s", r.command);
}

Test(peers, a_failing_or_silent_peer_is_skipped_with_its_reason) {
    static const char *const fails[] = {"sh", "-c",
                                        "echo partial; echo 'ERR: no Redis' >&2; exit 3", NULL};
    bench_peer peer = {.name = "p", .compared_with = "a.b.closed", .argv = fails};
    bench_peer_result r;
    cr_expect_eq(bench_peer_run(&peer, &PARAMS, &r), -ECHILD);
    expect_one_line(&r);
    cr_expect_str_eq(r.skipped, "sh exited with status 3: ERR: no Redis");

    static const char *const silent[] = {"sh", "-c", "echo no result here", NULL};
    peer.argv = silent;
    cr_expect_eq(bench_peer_run(&peer, &PARAMS, &r), SD_EPARSE);
    expect_one_line(&r);
    cr_expect_not_null(strstr(r.skipped, "no result line"), "%s", r.skipped);

    static const char *const partial[] = {"sh", "-c", "echo '{\"achieved_rate\": 5}'", NULL};
    peer.argv = partial;
    cr_expect_eq(bench_peer_run(&peer, &PARAMS, &r), SD_EPARSE);
    cr_expect_not_null(strstr(r.skipped, "p50_us"), "%s", r.skipped);
}

Test(peers, a_peer_that_hangs_is_killed_with_its_children) {
    /* The shell's child sleeps far beyond the deadline (warm-up + duration + grace = 0.5 s),
     * for a time that names this test process. */
    char marker[32], script[64];
    snprintf(marker, sizeof marker, "sleep 30.%07d", (int)getpid());
    snprintf(script, sizeof script, "%s; echo never", marker);
    const char *const argv[] = {"sh", "-c", script, NULL};
    bench_peer peer = {.name = "p", .compared_with = "a.b.closed", .argv = argv};
    bench_peer_params p = PARAMS;
    p.warmup_s = 0;
    p.duration_s = 0.25;
    p.grace_s = 0.25;
    bench_peer_result r;
    cr_expect_eq(bench_peer_run(&peer, &p, &r), -ETIMEDOUT);
    expect_one_line(&r);
    cr_expect_not_null(strstr(r.skipped, "killed"), "%s", r.skipped);
    cr_expect_eq(test_count_processes_until_none(marker, 5000), 0,
                 "the peer's child was left running");
}

/* ---- npm on first use, with a fake npm on PATH ---------------------------------------------- */

typedef struct npm_dirs {
    char root[64];
    char peers[96], bin[96], log[128];
} npm_dirs;

/* A peers directory with package.json and package-lock.json (lock = 1), and a bin directory
 * holding a fake `npm` that logs its arguments and working directory, then runs `body`. PATH
 * becomes that directory, then /usr/bin:/bin. Returns PARAMS with that peers directory. */
static bench_peer_params npm_setup(npm_dirs *d, int lock, const char *body) {
    snprintf(d->root, sizeof d->root, "/tmp/test_report_npmXXXXXX");
    cr_assert_not_null(mkdtemp(d->root));
    snprintf(d->peers, sizeof d->peers, "%s/peers", d->root);
    snprintf(d->bin, sizeof d->bin, "%s/bin", d->root);
    snprintf(d->log, sizeof d->log, "%s/npm.log", d->root);
    cr_assert_eq(mkdir(d->peers, 0700), 0);
    cr_assert_eq(mkdir(d->bin, 0700), 0);
    char path[192];
    snprintf(path, sizeof path, "%s/package.json", d->peers);
    FILE *f = fopen(path, "w");
    fputs("{\"dependencies\": {\"fakepkg\": \"1.0.0\"}}\n", f);
    fclose(f);
    if (lock) {
        snprintf(path, sizeof path, "%s/package-lock.json", d->peers);
        f = fopen(path, "w");
        fputs("{\"lockfileVersion\": 3}\n", f);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/npm", d->bin);
    f = fopen(path, "w");
    fprintf(f, "#!/bin/sh\necho \"$* in $(pwd)\" >> %s\n%s\n", d->log, body);
    fclose(f);
    cr_assert_eq(chmod(path, 0700), 0);
    char *env = NULL;
    cr_assert_gt(asprintf(&env, "%s:/usr/bin:/bin", d->bin), 0);
    setenv("PATH", env, 1);
    free(env);
    bench_peer_params p = PARAMS;
    p.peers_dir = d->peers;
    return p;
}

static void npm_cleanup(npm_dirs *d) {
    char *cmd = NULL;
    cr_assert_gt(asprintf(&cmd, "rm -rf '%s'", d->root), 0);
    cr_expect_eq(system(cmd), 0);
    free(cmd);
}

static const char *const NPM_PEER_ARGV[] = {
    "sh",
    "-c",
    "test -f \"$1/node_modules/fakepkg/package.json\" &&"
    " echo '{\"achieved_rate\": 10, \"p50_us\": 1, \"p99_us\": 2}'",
    "peer",
    "{peers_dir}",
    NULL};
static const char *const NPM_PEER_PACKAGES[] = {"fakepkg", NULL};
/* What a working `npm` does for NPM_PEER. */
static const char NPM_INSTALLS_FAKEPKG[] =
    "mkdir -p node_modules/fakepkg && echo '{}' > node_modules/fakepkg/package.json";
static const bench_peer NPM_PEER = {
    .name = "p", .compared_with = "a.b.closed", .argv = NPM_PEER_ARGV, .npm = NPM_PEER_PACKAGES};

Test(peers, missing_npm_packages_are_installed_once_with_npm_ci) {
    static npm_dirs d;
    bench_peer_params p = npm_setup(&d, 1, NPM_INSTALLS_FAKEPKG);
    bench_peer_result r;
    cr_expect_eq(bench_peer_run(&NPM_PEER, &p, &r), 0, "%s", r.skipped);
    cr_expect_eq(bench_peer_run(&NPM_PEER, &p, &r), 0, "%s", r.skipped);
    char *log = read_all(d.log);
    char want[160];
    snprintf(want, sizeof want, "ci --no-audit --no-fund in %s\n", d.peers);
    cr_expect_str_eq(log, want, "npm ran once, from the lock file, in the peers' directory");
    free(log);
    npm_cleanup(&d);
}

Test(peers, without_a_lock_file_npm_install_runs_instead) {
    static npm_dirs d;
    bench_peer_params p = npm_setup(&d, 0, NPM_INSTALLS_FAKEPKG);
    bench_peer_result r;
    cr_expect_eq(bench_peer_run(&NPM_PEER, &p, &r), 0, "%s", r.skipped);
    char *log = read_all(d.log);
    cr_expect_eq(strncmp(log, "install --no-audit --no-fund in ", 32), 0, "%s", log);
    free(log);
    npm_cleanup(&d);
}

Test(peers, a_failing_or_hanging_npm_skips_the_peer_with_one_line) {
    static npm_dirs d;
    /* The shape of npm 10's output without a network: the reason is the FetchError line. */
    bench_peer_params p = npm_setup(
        &d, 1,
        "echo 'fetching...'; exec >&2; echo 'npm error code ECONNREFUSED';"
        " echo 'npm error FetchError: request to http://127.0.0.1:9/x failed, reason: refused';"
        " echo 'npm error     at ClientRequest.<anonymous> (index.js:130:14)';"
        " echo 'npm error A complete log of this run can be found in: /tmp/x.log'; exit 1");
    bench_peer_result r;
    cr_expect_eq(bench_peer_run(&NPM_PEER, &p, &r), -ECHILD);
    expect_one_line(&r);
    cr_expect_str_eq(r.skipped, "npm ci exited with status 1: npm error FetchError: request to "
                                "http://127.0.0.1:9/x failed, reason: refused");
    /* The next peer of the same run is skipped for the same reason, without a second wait. */
    cr_expect_eq(bench_peer_run(&NPM_PEER, &p, &r), -ECHILD);
    cr_expect_str_eq(r.skipped, "npm ci exited with status 1: npm error FetchError: request to "
                                "http://127.0.0.1:9/x failed, reason: refused");
    char *log = read_all(d.log);
    cr_expect_eq(strchr(log, '\n'), log + strlen(log) - 1, "npm ran once: %s", log);
    free(log);
    npm_cleanup(&d);

    char marker[32];
    snprintf(marker, sizeof marker, "sleep 30.%07d", (int)getpid());
    p = npm_setup(&d, 1, marker);
    p.install_timeout_s = 0.5;
    cr_expect_eq(bench_peer_run(&NPM_PEER, &p, &r), -ETIMEDOUT);
    expect_one_line(&r);
    cr_expect_not_null(strstr(r.skipped, "npm ci gave no result"), "%s", r.skipped);
    cr_expect_eq(test_count_processes_until_none(marker, 5000), 0, "npm's child was left running");
    npm_cleanup(&d);
}

/* ---- The main job without node --------------------------------------------------------------- */

Test(cli, the_main_job_without_node_skips_the_peers_and_succeeds) {
    test_target *server = test_target_start();
    char json[64], html[64];
    temp_path(json, sizeof json, "json");
    temp_path(html, sizeof html, "html");
    static test_run_out ran;
    test_run_program(
        "bench",
        (const char *[]){"run", "ratelimit.gcra.closed", "--duration", "0.3", "--warmup", "0.1",
                         "--redis", test_target_url(server), "--json", json, "--html", html, NULL},
        NULL, (const char *[]){"PATH=/nonexistent-for-bench-peers", "BENCH_PEERS=1", NULL}, &ran);
    test_target_stop(server);
    const char *out = ran.out, *err = ran.err;
    cr_expect_eq(ran.status, 0, "stdout: %s\nstderr: %s", out, err);

    /* One line per skipped peer on stderr, saying why. */
    int peers = 0;
    for (const bench_peer *const *p = bench_peers; *p; p++)
        peers += strcmp((*p)->compared_with, "ratelimit.gcra.closed") == 0;
    cr_assert_gt(peers, 0, "the rate limiter has a peer");
    int lines = 0;
    for (const char *p = err; (p = strstr(p, "skipped: node not found on PATH")) != NULL; p++)
        lines++;
    cr_expect_eq(lines, peers, "stderr: %s", err);
    cr_expect_null(strstr(err, "npm ci"), "nothing is installed for a peer that cannot run: %s",
                   err);

    /* The table, then the two report paths, last. */
    char tail[256];
    snprintf(tail, sizeof tail, "report: %s\nreport: %s\n", html, json);
    size_t olen = strlen(out), tlen = strlen(tail);
    cr_expect(olen >= tlen && strcmp(out + olen - tlen, tail) == 0, "stdout: %s", out);
    cr_expect_not_null(strstr(out, "  peer rate-limiter-flexible"), "%s", out);

    json_error_t e;
    json_t *root = json_load_file(json, 0, &e);
    cr_assert_not_null(root, "%s", e.text);
    json_t *arr = json_object_get(root, "peers");
    cr_expect_eq(json_array_size(arr), (size_t)peers);
    size_t i;
    json_t *p;
    json_array_foreach(arr, i, p) {
        const char *why = json_string_value(json_object_get(p, "skipped"));
        cr_expect(why && strstr(why, "node not found"), "peer %zu", i);
    }
    json_decref(root);
    char *page = read_all(html);
    /* No throughput chart (no peer was measured), only the scenario's percentile chart, unless
     * a very loaded machine let the 0.3 s run measure nothing (the page then says so). */
    int svgs = check_page(page);
    cr_expect(svgs == 1 || (svgs == 0 && strstr(page, "no measurements")), "%d charts: %s", svgs,
              out);
    cr_expect_not_null(strstr(page, "skipped: node not found"));
    free(page);
    unlink(json);
    unlink(html);
}

/*
 * The real registry with a stand-in `node` on PATH (and the peers' packages present, empty):
 * each peer sleeps longer than a scenario's connect deadline (2 s) before it prints its result.
 * The next scenario must still connect (the loop's clock is brought up to date after the peers),
 * and the JSON puts the stand-in's figures beside ours, with ours / theirs.
 */
Test(cli, the_main_job_reads_the_peers_results_and_goes_on) {
    static npm_dirs d;
    npm_setup(&d, 1, "exit 1");
    const char *pkgs[] = {"rate-limiter-flexible", "ioredis"};
    for (int i = 0; i < 2; i++) {
        char *cmd = NULL;
        cr_assert_gt(
            asprintf(
                &cmd,
                "mkdir -p '%s/node_modules/%s' && echo '{}' > '%s/node_modules/%s/package.json'",
                d.peers, pkgs[i], d.peers, pkgs[i]),
            0);
        cr_assert_eq(system(cmd), 0);
        free(cmd);
    }
    char node[160];
    snprintf(node, sizeof node, "%s/node", d.bin);
    FILE *f = fopen(node, "w");
    fputs("#!/bin/sh\nsleep 2.5\necho '{\"version\": \"0-stand-in\", \"achieved_rate\": 1000,"
          " \"p50_us\": 100, \"p99_us\": 200, \"max_us\": 300}'\n",
          f);
    fclose(f);
    cr_assert_eq(chmod(node, 0700), 0);

    test_target *server = test_target_start();
    char json[64], path_env[160], dir_env[160];
    temp_path(json, sizeof json, "json");
    snprintf(path_env, sizeof path_env, "PATH=%s", getenv("PATH"));
    snprintf(dir_env, sizeof dir_env, "BENCH_PEERS_DIR=%s", d.peers);
    static test_run_out ran;
    test_run_program("bench",
                     (const char *[]){"run", "ratelimit.gcra.closed",
                                      "ratelimit.sliding-window-log.closed", "--duration", "0.3",
                                      "--warmup", "0.1", "--redis", test_target_url(server),
                                      "--json", json, NULL},
                     NULL, (const char *[]){path_env, dir_env, "BENCH_PEERS=1", NULL}, &ran);
    test_target_stop(server);
    const char *out = ran.out;
    cr_expect_eq(ran.status, 0, "stdout: %s\nstderr: %s", out, ran.err);
    cr_expect_null(strstr(out, "FAILED"), "%s", out);
    cr_expect_not_null(strstr(out, "  peer rate-limiter-flexible "), "%s", out);

    json_error_t e;
    json_t *root = json_load_file(json, 0, &e);
    unlink(json);
    cr_assert_not_null(root, "%s", e.text);
    json_t *p = json_array_get(json_object_get(root, "peers"), 0);
    cr_assert_not_null(p, "no peer in the JSON");
    cr_expect_str_eq(json_string_value(json_object_get(p, "version")), "0-stand-in");
    cr_expect_eq(json_number_value(json_object_get(p, "achieved_rate")), 1000);
    cr_expect_eq(json_integer_value(json_object_get(p, "p99_us")), 200);
    cr_expect_eq(json_integer_value(json_object_get(p, "in_flight")), 50, "the scenario's");
    json_t *ours = json_object_get(p, "ours");
    double rate = json_number_value(json_object_get(ours, "achieved_rate"));
    cr_expect_gt(rate, 0);
    cr_expect_gt(json_integer_value(json_object_get(ours, "p99_us")), 0);
    /* Ours / theirs, of successful operations (a loaded machine may time a few out). */
    json_t *first = json_array_get(json_object_get(root, "scenarios"), 0);
    double count = json_number_value(json_object_get(first, "count"));
    double errors = json_number_value(json_object_get(first, "errors"));
    cr_assert_gt(count, 0);
    cr_expect_float_eq(json_number_value(json_object_get(p, "vs_peer")),
                       rate * (count - errors) / count / 1000, 2e-3);
    json_t *s = json_array_get(json_object_get(root, "scenarios"), 1);
    cr_expect_str_eq(json_string_value(json_object_get(s, "name")),
                     "ratelimit.sliding-window-log.closed");
    cr_expect_null(json_object_get(s, "failed"), "the scenario after the peers ran");
    json_decref(root);
    npm_cleanup(&d);
}
