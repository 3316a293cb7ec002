/*
 * report.h - what `bench` prints and writes about finished runs: the table, the JSON file, the
 * HTML page, and the side-by-side comparison of two JSON files.
 *
 * The JSON schema (version 1) is the contract other tools read; bench/README.md documents every
 * field. Fields are only ever added, never renamed or removed, without raising "version".
 */
#ifndef BENCH_REPORT_H
#define BENCH_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "bench.h"
#include "peers.h"

/* One line of a report: a finished run, or a scenario that could not run (failure != ""). A
 * failed row has no histograms (NULL) and zero counts. peers (npeers of them, owned by the row's
 * owner, NULL when none) are the peers measured right after this scenario and compared with it:
 * each is printed under the row with the ratio of our throughput to theirs. */
typedef struct bench_row {
    bench_result r;
    char failure[160];
    bench_peer_result *peers;
    size_t npeers;
} bench_row;

/* Prints the table (scenario, target and achieved rate, p50, p95, p99, p99.9, max, errors) and
 * the footnotes it needs. An empty table says that there was nothing to run. When a row has
 * peers, each gets a line under it and the table a `vs peer` column: bench_peer_ratio, then
 * both p99s; a skipped peer's line says why. */
void bench_report_table(FILE *f, const bench_row *rows, size_t n);

/* Writes the JSON report to path ("-" is stdout): the scenarios and, when any row has peers, a
 * "peers" array with each peer's figures beside ours and "vs_peer" (bench_peer_ratio). Returns 0
 * or -errno (message on stderr). */
int bench_report_json(const char *path, const bench_row *rows, size_t n);

/* Writes a self-contained HTML page with the table, one throughput bar chart per component with
 * peers (ours and each peer's bars side by side), and one percentile chart per scenario (inline
 * SVG, well-formed XML; no scripts, nothing fetched). Returns 0 or -errno (message on stderr). */
int bench_report_html(const char *path, const bench_row *rows, size_t n);

/* Prints each scenario of two JSON reports side by side with the ratio B/A. Returns 0, or
 * SD_EPARSE / -errno with a message naming the file in err. */
int bench_report_compare(FILE *f, const char *path_a, const char *path_b, char *err, size_t errlen);

/* Our throughput over the peer's, counting successful operations only on both sides (the
 * achieved rate times the share of operations without error: a scenario whose Redis calls time
 * out answers fast with fallbacks, which are not throughput). 0 when the peer was skipped or
 * succeeded at nothing. */
double bench_peer_ratio(const bench_result *ours, const bench_peer_result *peer);

/* Formats a latency in microseconds for people ("812us", "1.23ms", "2.05s") into buf. */
const char *bench_format_us(double us, char *buf, size_t len);

#endif
