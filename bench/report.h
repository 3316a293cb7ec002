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

/* One line of a report: a finished run, or a scenario that could not run (failure != ""). A
 * failed row has no histograms (NULL) and zero counts. */
typedef struct bench_row {
    bench_result r;
    char failure[160];
} bench_row;

/* Prints the table (scenario, target and achieved rate, p50, p95, p99, p99.9, max, errors) and
 * the footnotes it needs. An empty table says that there was nothing to run. */
void bench_report_table(FILE *f, const bench_row *rows, size_t n);

/* Writes the JSON report to path ("-" is stdout). Returns 0 or -errno (message on stderr). */
int bench_report_json(const char *path, const bench_row *rows, size_t n);

/* Writes a self-contained HTML page with one percentile chart per scenario (inline SVG, no
 * scripts, nothing fetched). Returns 0 or -errno (message on stderr). */
int bench_report_html(const char *path, const bench_row *rows, size_t n);

/* Prints each scenario of two JSON reports side by side with the ratio B/A. Returns 0, or
 * SD_EPARSE / -errno with a message naming the file in err. */
int bench_report_compare(FILE *f, const char *path_a, const char *path_b, char *err, size_t errlen);

/* Formats a latency in microseconds for people ("812us", "1.23ms", "2.05s") into buf. */
const char *bench_format_us(double us, char *buf, size_t len);

#endif
