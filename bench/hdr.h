/*
 * hdr.h - a log-linear latency histogram in the style of Gil Tene's HdrHistogram.
 *
 * Why it is written here: Debian packages no HdrHistogram library for C, and the harness needs
 * only a small part of one, so this is a fresh implementation of the published idea (see
 * http://hdrhistogram.org), not a copy of any of its code.
 *
 * The idea. A histogram keeps a count per bucket. Buckets are exact (one value wide) for small
 * values and grow with the value so that each bucket is at most 10^-digits of the values it
 * holds: with 3 significant digits, values 0..2047 have a bucket each, and the bucket holding
 * 1,000,000 is 512 wide (0.05%). Recording a value is a few shifts and one increment, so it
 * costs the same at 10 us as at 10 minutes, never allocates and never takes a lock. The price is
 * memory: the default range (1 us to 1 hour at 3 digits) takes about 182 KiB per histogram.
 *
 * Layout (this is the whole trick; hdr.c derives it):
 *   M = the smallest power of two >= 2 * 10^digits (2048 for 3 digits), m = log2(M).
 *   A value v is first divided by the unit (the largest power of two <= lowest), giving x.
 *   x <  M: bucket index x (exact).
 *   x >= M: let k = floor(log2(x)) - (m - 1), so that x >> k lies in [M/2, M);
 *           bucket index k * M/2 + (x >> k), bucket width 2^k units.
 *   The width over the smallest value in a bucket is at most 2/M <= 10^-digits.
 *
 * Rules every function follows:
 *  1. Values are non-negative integers in the caller's unit (the harness uses microseconds).
 *  2. A value above the highest trackable value is not clamped: it is counted as overflow,
 *     reported by hdr_overflow(), and left out of the count, the percentiles, min, max and mean.
 *  3. Percentiles are nearest-rank: the value at rank ceil(p/100 * count) in sorted order. The
 *     histogram returns the highest value of that rank's bucket (so it never under-reports a
 *     latency), limited to [min, max]; p0 is the exact minimum and p100 the exact maximum.
 *  4. A histogram is thread-compatible: no globals, no locks. Give each thread its own and merge.
 *
 * The names use the prefix hdr_ (part of the bench component; the type name is fixed by bench.h).
 */
#ifndef BENCH_HDR_H
#define BENCH_HDR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct hdr_histogram hdr_histogram;

/* The defaults the harness uses: 1 us .. 1 hour in microseconds, 3 significant digits. */
#define HDR_DEFAULT_LOWEST 1
#define HDR_DEFAULT_HIGHEST 3600000000LL
#define HDR_DEFAULT_DIGITS 3

/*
 * Creates an empty histogram that tells apart values from `lowest` (>= 1) up to `highest`
 * (>= 2 * lowest, < 2^62) at `digits` (1..5) significant decimal digits. Returns 0 and the
 * histogram in *out, or -EINVAL for settings outside those ranges (*out untouched).
 */
int hdr_new(int64_t lowest, int64_t highest, int digits, hdr_histogram **out);

/* hdr_new with the defaults above. Never returns NULL (aborts on out-of-memory). */
hdr_histogram *hdr_new_default(void);

/* Frees the histogram. NULL is a no-op. */
void hdr_free(hdr_histogram *h);

/* Empties the histogram, keeping its settings. */
void hdr_reset(hdr_histogram *h);

/* Bytes the histogram occupies (its struct and its counts). */
size_t hdr_memory_size(const hdr_histogram *h);

/*
 * Records one value. O(1), allocation-free. Returns 0; -ERANGE when the value is above the
 * highest trackable value (it is then counted as overflow only); -EINVAL for a negative value
 * (nothing is counted).
 */
int hdr_record(hdr_histogram *h, int64_t value);

/* Records `n` occurrences of one value; same returns as hdr_record. */
int hdr_record_n(hdr_histogram *h, int64_t value, uint64_t n);

/*
 * Records a value measured by a sender that should have sent one request every
 * `expected_interval` but was stalled while waiting for this one (coordinated omission). Besides
 * `value`, it records the samples the stalled sender would have taken: value - interval,
 * value - 2*interval, ... down to and including the last one >= interval. This is the same
 * correction as HdrHistogram's recordValueWithExpectedInterval. An interval <= 0 records the
 * value alone. The back-fill costs O(min(value/interval, buckets)), not one step per sample.
 * Returns 0, or the first failure as hdr_record does (back-filled values above the range count
 * as overflow).
 */
int hdr_record_corrected(hdr_histogram *h, int64_t value, int64_t expected_interval);

/*
 * Adds every count of src into dst, losslessly. Both must have the same lowest, highest and
 * digits; returns 0 or -EINVAL (dst unchanged).
 */
int hdr_merge(hdr_histogram *dst, const hdr_histogram *src);

/* Values recorded within the range (overflow excluded). */
uint64_t hdr_count(const hdr_histogram *h);
/* Values that were above the highest trackable value. */
uint64_t hdr_overflow(const hdr_histogram *h);
/* Exact smallest and largest recorded value; 0 when empty. */
int64_t hdr_min(const hdr_histogram *h);
int64_t hdr_max(const hdr_histogram *h);
/* Exact mean of the recorded values; 0 when empty. */
double hdr_mean(const hdr_histogram *h);
/* Standard deviation, computed from bucket midpoints (so within the bucket precision). */
double hdr_stddev(const hdr_histogram *h);

/* The nearest-rank percentile p (0..100, clamped) as described at the top; 0 when empty. */
int64_t hdr_percentile(const hdr_histogram *h, double p);

/* Settings, as given to hdr_new. */
int64_t hdr_lowest(const hdr_histogram *h);
int64_t hdr_highest(const hdr_histogram *h);
int hdr_digits(const hdr_histogram *h);

/* The smallest and the largest value that share a bucket with `value` (value within range). */
int64_t hdr_lowest_equivalent(const hdr_histogram *h, int64_t value);
int64_t hdr_highest_equivalent(const hdr_histogram *h, int64_t value);

/*
 * Walks the distribution the way percentile plots want it: percentile levels get denser as they
 * approach 100 (ticks_per_half steps between 0% and 50%, as many between 50% and 75%, and so
 * on), ending with one call at percentile 100 and the maximum. For each level `cb` receives the
 * level (0..100), the value at it (as hdr_percentile) and how many values are <= that value's
 * bucket. Nothing is called for an empty histogram. ticks_per_half <= 0 means 5.
 */
typedef void hdr_walk_cb(double percentile, int64_t value, uint64_t cumulative, void *udata);
void hdr_percentiles_walk(const hdr_histogram *h, int ticks_per_half, hdr_walk_cb *cb, void *udata);

/*
 * Writes the distribution in HdrHistogram's .hgrm text format (columns Value, Percentile,
 * TotalCount, 1/(1-Percentile), then the #[Mean ...], #[Max ...] and #[Buckets ...] footer) so
 * that HdrHistogram's plotters read it. Values are divided by `value_scale` on output (1000
 * turns microseconds into the milliseconds the plotters label their axis with). An overflow
 * count, when there is one, is added as one more comment line. Returns 0 or -EIO.
 */
int hdr_hgrm_write(const hdr_histogram *h, FILE *f, double value_scale);

/* The same text as a new string (the caller frees it). Never returns NULL. */
char *hdr_hgrm_string(const hdr_histogram *h, double value_scale);

#endif
