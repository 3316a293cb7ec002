/*
 * hdr.c - the log-linear histogram described in hdr.h.
 *
 * Deriving the layout. Let M = 2^m be the number of sub-buckets and x a value in units of the
 * lowest discernible value (rounded down to a power of two so that the division is a shift).
 *
 *   - Values x < M are stored exactly: bucket x. That is the "linear" part; with 3 digits it
 *     covers 0..2047 units one by one.
 *   - Above that, the histogram is a series of half-ranges [M/2 * 2^k, M * 2^k) for k = 1, 2, ...,
 *     each cut into M/2 buckets of width 2^k. Within a half-range the top m bits of x pick the
 *     bucket, which is x >> k, a number in [M/2, M). Stacking the half-ranges after the linear
 *     part gives index = k * M/2 + (x >> k), and k itself is the position of x's top bit minus
 *     (m - 1). OR-ing x with M - 1 before finding the top bit makes k come out 0 for x < M, so one
 *     formula with no branch serves both parts.
 *
 * A bucket of half-range k starts at sub * 2^k with sub >= M/2 and is 2^k wide, so its width over
 * its smallest value is at most 2/M; M >= 2 * 10^digits makes that <= 10^-digits.
 */
#include "hdr.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd.h"

struct hdr_histogram {
    int64_t lowest;  /* as given */
    int64_t highest; /* as given: larger values are overflow */
    int digits;
    int unit_shift;    /* log2 of the unit (largest power of two <= lowest) */
    int sub_shift;     /* m: M = 2^m sub-buckets */
    uint64_t sub_mask; /* M - 1 */
    size_t len;        /* number of buckets: index of highest + 1 */
    uint64_t total;    /* values counted in buckets */
    uint64_t overflow; /* values above highest */
    int64_t min, max;  /* exact, over the counted values */
    double sum;        /* for the exact mean */
    uint64_t counts[];
};

/* Position of the highest set bit of x (x != 0). */
static inline int top_bit(uint64_t x) {
    return 63 - __builtin_clzll(x);
}

static inline size_t bucket_of(const hdr_histogram *h, int64_t value) {
    uint64_t x = (uint64_t)value >> h->unit_shift;
    int k = top_bit(x | h->sub_mask) - (h->sub_shift - 1);
    return ((size_t)k << (h->sub_shift - 1)) + (size_t)(x >> k);
}

/* Half-range number of bucket i (0 for the linear part). */
static inline int bucket_half_range(const hdr_histogram *h, size_t i) {
    int k = (int)(i >> (h->sub_shift - 1)) - 1;
    return k > 0 ? k : 0;
}

static int64_t bucket_low(const hdr_histogram *h, size_t i) {
    int k = bucket_half_range(h, i);
    uint64_t sub = i - ((size_t)k << (h->sub_shift - 1));
    return (int64_t)((sub << k) << h->unit_shift);
}

static int64_t bucket_width(const hdr_histogram *h, size_t i) {
    return (int64_t)1 << (bucket_half_range(h, i) + h->unit_shift);
}

static int64_t bucket_high(const hdr_histogram *h, size_t i) {
    return bucket_low(h, i) + bucket_width(h, i) - 1;
}

int hdr_new(int64_t lowest, int64_t highest, int digits, hdr_histogram **out) {
    if (lowest < 1 || digits < 1 || digits > 5 || highest < 2 * lowest ||
        highest >= ((int64_t)1 << 62))
        return -EINVAL;
    int sub_shift = 1;
    int64_t needed = 2;
    for (int i = 0; i < digits; i++)
        needed *= 10;
    while (((int64_t)1 << sub_shift) < needed)
        sub_shift++;
    int unit_shift = top_bit((uint64_t)lowest);

    /* Fill in enough of a header to ask bucket_of() where `highest` lands. */
    hdr_histogram probe = {.unit_shift = unit_shift,
                           .sub_shift = sub_shift,
                           .sub_mask = ((uint64_t)1 << sub_shift) - 1};
    size_t len = bucket_of(&probe, highest) + 1;

    hdr_histogram *h = sd_xcalloc(1, sizeof *h + len * sizeof h->counts[0]);
    *h = probe;
    h->lowest = lowest;
    h->highest = highest;
    h->digits = digits;
    h->len = len;
    hdr_reset(h);
    *out = h;
    return 0;
}

hdr_histogram *hdr_new_default(void) {
    hdr_histogram *h = NULL;
    int rc = hdr_new(HDR_DEFAULT_LOWEST, HDR_DEFAULT_HIGHEST, HDR_DEFAULT_DIGITS, &h);
    (void)rc;
    return h;
}

void hdr_free(hdr_histogram *h) {
    free(h);
}

void hdr_reset(hdr_histogram *h) {
    memset(h->counts, 0, h->len * sizeof h->counts[0]);
    h->total = 0;
    h->overflow = 0;
    h->min = INT64_MAX;
    h->max = 0;
    h->sum = 0;
}

size_t hdr_memory_size(const hdr_histogram *h) {
    return sizeof *h + h->len * sizeof h->counts[0];
}

int hdr_record_n(hdr_histogram *h, int64_t value, uint64_t n) {
    if (value < 0)
        return -EINVAL;
    if (value > h->highest) {
        h->overflow += n;
        return -ERANGE;
    }
    h->counts[bucket_of(h, value)] += n;
    h->total += n;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
    h->sum += (double)value * (double)n;
    return 0;
}

int hdr_record(hdr_histogram *h, int64_t value) {
    return hdr_record_n(h, value, 1);
}

/* Below this many back-filled samples a plain loop is cheaper than walking buckets. */
#define BACKFILL_LOOP_MAX 32

int hdr_record_corrected(hdr_histogram *h, int64_t value, int64_t interval) {
    int rc = hdr_record(h, value);
    if (rc == -EINVAL || interval <= 0 || value < 2 * interval)
        return rc;

    /* The missing samples are value - j*interval for j = 1..n, all >= interval. In ascending
     * order they are first, first + interval, ..., last. */
    int64_t n = value / interval - 1;
    int64_t first = value - n * interval;
    int64_t last = value - interval;
    if (last > h->highest) {
        int64_t in_range = h->highest < first ? 0 : (h->highest - first) / interval + 1;
        h->overflow += (uint64_t)(n - in_range);
        if (rc == 0)
            rc = -ERANGE;
        if (in_range == 0)
            return rc;
        n = in_range;
        last = first + (n - 1) * interval;
    }
    if (n <= BACKFILL_LOOP_MAX) {
        for (int64_t v = first; v <= last; v += interval)
            hdr_record(h, v);
        return rc;
    }

    /* Many samples: count how many of them fall in each bucket they touch, so the cost is
     * bounded by the number of buckets, not by value / interval. */
    int64_t v = first;
    while (v <= last) {
        size_t b = bucket_of(h, v);
        int64_t high = bucket_high(h, b);
        if (high > last)
            high = last;
        int64_t c = (high - v) / interval + 1;
        h->counts[b] += (uint64_t)c;
        v += c * interval;
    }
    h->total += (uint64_t)n;
    if (first < h->min)
        h->min = first;
    if (last > h->max)
        h->max = last;
    h->sum += (double)n * ((double)first + (double)last) / 2.0;
    return rc;
}

int hdr_merge(hdr_histogram *dst, const hdr_histogram *src) {
    if (dst->lowest != src->lowest || dst->highest != src->highest || dst->digits != src->digits)
        return -EINVAL;
    for (size_t i = 0; i < dst->len; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->overflow += src->overflow;
    if (src->total > 0) {
        if (src->min < dst->min)
            dst->min = src->min;
        if (src->max > dst->max)
            dst->max = src->max;
    }
    dst->sum += src->sum;
    return 0;
}

uint64_t hdr_count(const hdr_histogram *h) {
    return h->total;
}

uint64_t hdr_overflow(const hdr_histogram *h) {
    return h->overflow;
}

int64_t hdr_min(const hdr_histogram *h) {
    return h->total ? h->min : 0;
}

int64_t hdr_max(const hdr_histogram *h) {
    return h->total ? h->max : 0;
}

double hdr_mean(const hdr_histogram *h) {
    return h->total ? h->sum / (double)h->total : 0.0;
}

double hdr_stddev(const hdr_histogram *h) {
    if (h->total == 0)
        return 0.0;
    double mean = hdr_mean(h), acc = 0;
    for (size_t i = 0; i < h->len; i++) {
        if (h->counts[i] == 0)
            continue;
        double mid = (double)bucket_low(h, i) + (double)(bucket_width(h, i) / 2);
        acc += (double)h->counts[i] * (mid - mean) * (mid - mean);
    }
    return sqrt(acc / (double)h->total);
}

int64_t hdr_lowest(const hdr_histogram *h) {
    return h->lowest;
}

int64_t hdr_highest(const hdr_histogram *h) {
    return h->highest;
}

int hdr_digits(const hdr_histogram *h) {
    return h->digits;
}

int64_t hdr_lowest_equivalent(const hdr_histogram *h, int64_t value) {
    return bucket_low(h, bucket_of(h, value));
}

int64_t hdr_highest_equivalent(const hdr_histogram *h, int64_t value) {
    return bucket_high(h, bucket_of(h, value));
}

/*
 * The nearest rank of percentile p among n values: ceil(p/100 * n), at least 1. The product is
 * computed in floating point, where 99.9/100 * 1000 may come out a hair above 999; the small
 * relative allowance keeps such a product on the integer it means.
 */
static uint64_t rank_of(double p, uint64_t n) {
    double x = p / 100.0 * (double)n;
    double r = ceil(x - x * 1e-14);
    if (r < 1)
        return 1;
    if (r > (double)n)
        return n;
    return (uint64_t)r;
}

/* The value reported for a rank found in bucket i: the bucket's top, kept within [min, max]. */
static int64_t reported_value(const hdr_histogram *h, size_t i) {
    int64_t v = bucket_high(h, i);
    if (v > h->max)
        v = h->max;
    if (v < h->min)
        v = h->min;
    return v;
}

int64_t hdr_percentile(const hdr_histogram *h, double p) {
    if (h->total == 0)
        return 0;
    if (!(p > 0))
        return h->min;
    if (p >= 100)
        return h->max;
    uint64_t rank = rank_of(p, h->total), seen = 0;
    for (size_t i = 0; i < h->len; i++) {
        seen += h->counts[i];
        if (seen >= rank)
            return reported_value(h, i);
    }
    return h->max;
}

void hdr_percentiles_walk(const hdr_histogram *h, int ticks_per_half, hdr_walk_cb *cb,
                          void *udata) {
    if (h->total == 0)
        return;
    if (ticks_per_half <= 0)
        ticks_per_half = 5;
    size_t i = 0;
    uint64_t seen = h->counts[0];
    /* Half-distance number `half` covers [100 - 100/2^half, 100 - 100/2^(half+1)). */
    for (int half = 0;; half++) {
        double from = 100.0 - 100.0 * ldexp(1.0, -half);
        double step = 100.0 * ldexp(1.0, -(half + 1)) / ticks_per_half;
        for (int t = 0; t < ticks_per_half; t++) {
            double p = from + t * step;
            uint64_t rank = rank_of(p, h->total);
            if (rank >= h->total || p >= 100.0) {
                cb(100.0, h->max, h->total, udata);
                return;
            }
            while (seen < rank)
                seen += h->counts[++i];
            cb(p, p > 0 ? reported_value(h, i) : h->min, seen, udata);
        }
    }
}

typedef struct hgrm_writer {
    FILE *f;
    double scale;
    int failed;
} hgrm_writer;

static void hgrm_line(double p, int64_t value, uint64_t cumulative, void *udata) {
    hgrm_writer *w = udata;
    double v = (double)value / w->scale, q = p / 100.0;
    int n;
    if (p >= 100.0)
        n = fprintf(w->f, "%12.3f %14.12f %10llu\n", v, 1.0, (unsigned long long)cumulative);
    else
        n = fprintf(w->f, "%12.3f %14.12f %10llu %14.2f\n", v, q, (unsigned long long)cumulative,
                    1.0 / (1.0 - q));
    if (n < 0)
        w->failed = 1;
}

int hdr_hgrm_write(const hdr_histogram *h, FILE *f, double value_scale) {
    hgrm_writer w = {f, value_scale > 0 ? value_scale : 1.0, 0};
    fprintf(f, "%12s %14s %10s %14s\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    hdr_percentiles_walk(h, 5, hgrm_line, &w);
    fprintf(f, "#[Mean    = %12.3f, StdDeviation   = %12.3f]\n", hdr_mean(h) / w.scale,
            hdr_stddev(h) / w.scale);
    fprintf(f, "#[Max     = %12.3f, Total count    = %12llu]\n", (double)hdr_max(h) / w.scale,
            (unsigned long long)h->total);
    fprintf(f, "#[Buckets = %12d, SubBuckets     = %12d]\n", bucket_half_range(h, h->len - 1) + 1,
            1 << h->sub_shift);
    if (h->overflow > 0)
        fprintf(f, "#[Overflow = %llu values above the highest trackable value %.3f]\n",
                (unsigned long long)h->overflow, (double)h->highest / w.scale);
    return w.failed || ferror(f) ? -EIO : 0;
}

char *hdr_hgrm_string(const hdr_histogram *h, double value_scale) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) {
        fprintf(stderr, "fatal: out of memory writing a histogram\n");
        abort();
    }
    hdr_hgrm_write(h, f, value_scale);
    fclose(f);
    return buf;
}
