/*
 * test_hdr.c - the histogram (bench/hdr.h): nearest-rank percentiles against an exact sort on
 * generated latency-like samples, the edge cases (empty, zero, overflow), lossless merge, the
 * coordinated-omission back-fill and the .hgrm text format.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdr.h"

/* ---- Helpers ------------------------------------------------------------------------------- */

/* xorshift64*: reproducible samples from a seed. */
static double uniform(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return ((double)((*s * 2685821657736338717ULL) >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(uint64_t *s) {
    return sqrt(-2 * log(uniform(s))) * cos(2 * M_PI * uniform(s));
}

enum { LOGNORMAL, BIMODAL, PARETO };

static int64_t draw(uint64_t *s, int dist) {
    double v;
    if (dist == LOGNORMAL)
        v = exp(log(800) + 1.2 * normal(s));
    else if (dist == BIMODAL)
        v = uniform(s) < 0.85 ? 150 + 15 * normal(s) : 45000 + 5000 * normal(s);
    else
        v = 50 / pow(uniform(s), 1 / 1.2);
    if (v < 0)
        v = 0;
    if (v > 3e9)
        v = 3e9;
    return (int64_t)v;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank by the textbook definition: the smallest value with at least p% of the values
 * at or below it, i.e. sorted[ceil(p/100 * n) - 1] (p = 0 gives the minimum). */
static int64_t exact(const int64_t *sorted, size_t n, double p) {
    double x = p / 100.0 * (double)n;
    double r = ceil(x - x * 1e-14);
    size_t rank = r < 1 ? 1 : r > (double)n ? n : (size_t)r;
    return sorted[rank - 1];
}

static const double PS[] = {0,  0.1, 1,    10,   25,    50,    75,     90,
                            95, 99,  99.5, 99.9, 99.95, 99.99, 99.999, 100};

/* Records n samples of dist and checks every percentile in PS against the exact value: the
 * histogram reports a value of the same bucket, never below the exact one, at most 0.1% above. */
static void check_distribution(int dist, size_t n, uint64_t seed) {
    int64_t *v = malloc(n * sizeof *v);
    hdr_histogram *h = hdr_new_default();
    for (size_t i = 0; i < n; i++) {
        v[i] = draw(&seed, dist);
        cr_assert_eq(hdr_record(h, v[i]), 0);
    }
    qsort(v, n, sizeof *v, cmp_i64);
    cr_assert_eq(hdr_count(h), n);
    cr_assert_eq(hdr_min(h), v[0]);
    cr_assert_eq(hdr_max(h), v[n - 1]);
    for (size_t k = 0; k < sizeof PS / sizeof PS[0]; k++) {
        int64_t want = exact(v, n, PS[k]), got = hdr_percentile(h, PS[k]);
        cr_expect_geq(got, want, "p%g: got %lld, exact %lld", PS[k], (long long)got,
                      (long long)want);
        cr_expect_leq((double)(got - want), (double)want * 0.001, "p%g: got %lld, exact %lld",
                      PS[k], (long long)got, (long long)want);
        cr_expect_eq(hdr_lowest_equivalent(h, got), hdr_lowest_equivalent(h, want),
                     "p%g: %lld and %lld are in different buckets", PS[k], (long long)got,
                     (long long)want);
    }
    free(v);
    hdr_free(h);
}

/* ---- Settings ------------------------------------------------------------------------------ */

Test(hdr, bad_settings_are_refused) {
    hdr_histogram *h = NULL;
    cr_expect_eq(hdr_new(0, 1000, 3, &h), -EINVAL);
    cr_expect_eq(hdr_new(1, 1, 3, &h), -EINVAL);
    cr_expect_eq(hdr_new(1, 1000, 0, &h), -EINVAL);
    cr_expect_eq(hdr_new(1, 1000, 6, &h), -EINVAL);
    cr_expect_eq(hdr_new(1, (int64_t)1 << 62, 3, &h), -EINVAL);
    cr_expect_null(h);
}

Test(hdr, default_range_fits_in_200_kib) {
    hdr_histogram *h = hdr_new_default();
    cr_expect_leq(hdr_memory_size(h), 200 * 1024);
    cr_expect_eq(hdr_lowest(h), 1);
    cr_expect_eq(hdr_highest(h), 3600000000LL);
    cr_expect_eq(hdr_digits(h), 3);
    cr_expect_eq(hdr_record(h, 3600000000LL), 0, "the highest value itself is in range");
    hdr_free(h);
}

/* ---- Percentiles --------------------------------------------------------------------------- */

Test(hdr, one_to_hundred_gives_textbook_nearest_ranks) {
    hdr_histogram *h = hdr_new_default();
    for (int v = 1; v <= 100; v++)
        hdr_record(h, v);
    cr_expect_eq(hdr_count(h), 100);
    cr_expect_eq(hdr_percentile(h, 0), 1);
    cr_expect_eq(hdr_percentile(h, 1), 1);
    cr_expect_eq(hdr_percentile(h, 50), 50);
    cr_expect_eq(hdr_percentile(h, 50.5), 51);
    cr_expect_eq(hdr_percentile(h, 90), 90);
    cr_expect_eq(hdr_percentile(h, 99), 99);
    cr_expect_eq(hdr_percentile(h, 99.9), 100);
    cr_expect_eq(hdr_percentile(h, 100), 100);
    cr_expect_float_eq(hdr_mean(h), 50.5, 1e-9);
    cr_expect_eq(hdr_min(h), 1);
    cr_expect_eq(hdr_max(h), 100);
    hdr_free(h);
}

Test(hdr, lognormal_percentiles_are_within_one_bucket) {
    check_distribution(LOGNORMAL, 200000, 1);
}

Test(hdr, bimodal_percentiles_are_within_one_bucket) {
    check_distribution(BIMODAL, 200000, 2);
}

Test(hdr, pareto_percentiles_are_within_one_bucket) {
    check_distribution(PARETO, 200000, 3);
}

Test(hdr, coarser_settings_keep_their_precision) {
    /* 2 digits from 1000 up: every bucket is at most 1% of the values it holds. */
    hdr_histogram *h = NULL;
    cr_assert_eq(hdr_new(1000, 1000000000, 2, &h), 0);
    uint64_t seed = 9;
    for (int i = 0; i < 1000; i++) {
        int64_t v = 1000 + (int64_t)(uniform(&seed) * 1e8);
        int64_t got = hdr_highest_equivalent(h, v);
        cr_assert_leq(hdr_lowest_equivalent(h, v), v);
        cr_assert_geq(got, v);
        cr_assert_leq((double)(got - v), (double)v * 0.01, "%lld -> %lld", (long long)v,
                      (long long)got);
    }
    hdr_free(h);
}

/* ---- Edge cases ---------------------------------------------------------------------------- */

Test(hdr, empty_histogram_reports_zeros) {
    hdr_histogram *h = hdr_new_default();
    cr_expect_eq(hdr_count(h), 0);
    cr_expect_eq(hdr_percentile(h, 50), 0);
    cr_expect_eq(hdr_percentile(h, 100), 0);
    cr_expect_eq(hdr_min(h), 0);
    cr_expect_eq(hdr_max(h), 0);
    cr_expect_float_eq(hdr_mean(h), 0.0, 1e-12);
    char *text = hdr_hgrm_string(h, 1);
    cr_expect_not_null(strstr(text, "Total count    =            0"));
    free(text);
    hdr_free(h);
}

Test(hdr, zero_is_an_ordinary_value) {
    hdr_histogram *h = hdr_new_default();
    cr_expect_eq(hdr_record(h, 0), 0);
    cr_expect_eq(hdr_count(h), 1);
    cr_expect_eq(hdr_min(h), 0);
    cr_expect_eq(hdr_max(h), 0);
    cr_expect_eq(hdr_percentile(h, 50), 0);
    cr_expect_eq(hdr_percentile(h, 100), 0);
    hdr_free(h);
}

Test(hdr, negative_values_are_refused) {
    hdr_histogram *h = hdr_new_default();
    cr_expect_eq(hdr_record(h, -1), -EINVAL);
    cr_expect_eq(hdr_count(h), 0);
    cr_expect_eq(hdr_overflow(h), 0);
    hdr_free(h);
}

Test(hdr, overflow_is_counted_and_never_clamped) {
    hdr_histogram *h = NULL;
    cr_assert_eq(hdr_new(1, 1000, 3, &h), 0);
    cr_expect_eq(hdr_record(h, 10), 0);
    cr_expect_eq(hdr_record(h, 1001), -ERANGE);
    cr_expect_eq(hdr_record_n(h, 5000, 3), -ERANGE);
    cr_expect_eq(hdr_overflow(h), 4);
    cr_expect_eq(hdr_count(h), 1, "overflow stays out of the count");
    cr_expect_eq(hdr_max(h), 10, "and out of the maximum");
    cr_expect_eq(hdr_percentile(h, 100), 10);
    char *text = hdr_hgrm_string(h, 1);
    cr_expect_not_null(strstr(text, "#[Overflow = 4 "), "the .hgrm reports it:\n%s", text);
    free(text);
    hdr_free(h);
}

Test(hdr, record_n_equals_n_records) {
    hdr_histogram *a = hdr_new_default(), *b = hdr_new_default();
    hdr_record_n(a, 12345, 7);
    for (int i = 0; i < 7; i++)
        hdr_record(b, 12345);
    char *ta = hdr_hgrm_string(a, 1), *tb = hdr_hgrm_string(b, 1);
    cr_expect_str_eq(ta, tb);
    free(ta);
    free(tb);
    hdr_free(a);
    hdr_free(b);
}

/* ---- Merge --------------------------------------------------------------------------------- */

Test(hdr, merge_equals_the_histogram_of_the_union) {
    hdr_histogram *a = hdr_new_default(), *b = hdr_new_default(), *all = hdr_new_default();
    uint64_t seed = 4;
    for (int i = 0; i < 100000; i++) {
        int64_t v = draw(&seed, i % 3);
        hdr_record(uniform(&seed) < 0.3 ? a : b, v);
        hdr_record(all, v);
    }
    hdr_record(a, 4000000000LL); /* overflow merges too */
    hdr_record(all, 4000000000LL);
    cr_assert_eq(hdr_merge(a, b), 0);
    cr_expect_eq(hdr_count(a), hdr_count(all));
    cr_expect_eq(hdr_overflow(a), hdr_overflow(all));
    cr_expect_eq(hdr_min(a), hdr_min(all));
    cr_expect_eq(hdr_max(a), hdr_max(all));
    cr_expect_float_eq(hdr_mean(a), hdr_mean(all), 1e-6);
    for (double p = 0; p <= 100; p += 0.25)
        cr_expect_eq(hdr_percentile(a, p), hdr_percentile(all, p), "p%g", p);
    char *ta = hdr_hgrm_string(a, 1000), *tall = hdr_hgrm_string(all, 1000);
    cr_expect_str_eq(ta, tall);
    free(ta);
    free(tall);
    hdr_free(a);
    hdr_free(b);
    hdr_free(all);
}

Test(hdr, merge_into_empty_and_from_empty) {
    hdr_histogram *a = hdr_new_default(), *empty = hdr_new_default();
    hdr_record(a, 5);
    cr_assert_eq(hdr_merge(a, empty), 0);
    cr_expect_eq(hdr_min(a), 5, "an empty source leaves min alone");
    cr_assert_eq(hdr_merge(empty, a), 0);
    cr_expect_eq(hdr_min(empty), 5);
    cr_expect_eq(hdr_max(empty), 5);
    hdr_free(a);
    hdr_free(empty);
}

Test(hdr, merge_refuses_other_settings) {
    hdr_histogram *a = hdr_new_default(), *b = NULL;
    cr_assert_eq(hdr_new(1, 3600000000LL, 2, &b), 0);
    hdr_record(b, 7);
    cr_expect_eq(hdr_merge(a, b), -EINVAL);
    cr_expect_eq(hdr_count(a), 0, "dst unchanged");
    hdr_free(a);
    hdr_free(b);
}

/* ---- Coordinated omission ------------------------------------------------------------------ */

Test(hdr, coordinated_omission_vector) {
    /* 10,000 requests of 1 ms, then one stalled for 100 s, from a sender meant to send every
     * 10 ms: the stall hid 9,999 requests, which the correction puts back. */
    hdr_histogram *h = hdr_new_default();
    for (int i = 0; i < 10000; i++)
        cr_assert_eq(hdr_record_corrected(h, 1000, 10000), 0);
    cr_assert_eq(hdr_record_corrected(h, 100000000, 10000), 0);
    cr_expect_eq(hdr_count(h), 20000);
    cr_expect_eq(hdr_percentile(h, 50), 1000);
    double p99 = (double)hdr_percentile(h, 99);
    cr_expect(fabs(p99 - 98000000) <= 98000000 * 0.001, "p99 %.0f, want ~98,000,000", p99);
    cr_expect_eq(hdr_max(h), 100000000);
    cr_expect_eq(hdr_min(h), 1000);
    hdr_free(h);
}

/* The bucket-at-a-time back-fill must equal recording the missing samples one by one. */
Test(hdr, corrected_backfill_equals_one_by_one) {
    uint64_t seed = 77;
    for (int round = 0; round < 200; round++) {
        hdr_histogram *fast = NULL, *slow = NULL;
        cr_assert_eq(hdr_new(1, 50000000, 3, &fast), 0);
        cr_assert_eq(hdr_new(1, 50000000, 3, &slow), 0);
        int64_t interval = 1 + (int64_t)(uniform(&seed) * 5000);
        int64_t value = (int64_t)(uniform(&seed) * 60000000); /* sometimes past the range */
        int rc = hdr_record_corrected(fast, value, interval);
        int want_rc = hdr_record(slow, value);
        for (int64_t v = value - interval; v >= interval; v -= interval)
            if (hdr_record(slow, v) == -ERANGE && want_rc == 0)
                want_rc = -ERANGE;
        cr_assert_eq(rc, want_rc, "value %lld interval %lld", (long long)value,
                     (long long)interval);
        cr_assert_eq(hdr_count(fast), hdr_count(slow));
        cr_assert_eq(hdr_overflow(fast), hdr_overflow(slow));
        char *a = hdr_hgrm_string(fast, 1), *b = hdr_hgrm_string(slow, 1);
        cr_assert_str_eq(a, b, "value %lld interval %lld", (long long)value, (long long)interval);
        free(a);
        free(b);
        hdr_free(fast);
        hdr_free(slow);
    }
}

Test(hdr, no_interval_means_no_correction) {
    hdr_histogram *h = hdr_new_default();
    hdr_record_corrected(h, 1000000, 0);
    hdr_record_corrected(h, 1000000, 2000000);
    cr_expect_eq(hdr_count(h), 2);
    hdr_free(h);
}

/* ---- Output -------------------------------------------------------------------------------- */

Test(hdr, hgrm_has_the_columns_and_footer_plotters_read) {
    hdr_histogram *h = hdr_new_default();
    for (int v = 1; v <= 1000; v++)
        hdr_record(h, v * 1000); /* 1..1000 ms in microseconds */
    char *text = hdr_hgrm_string(h, 1000);
    char *save = NULL, *line = strtok_r(text, "\n", &save);
    char c1[32], c2[32], c3[32], c4[32];
    cr_assert_eq(sscanf(line, "%31s %31s %31s %31s", c1, c2, c3, c4), 4);
    cr_expect_str_eq(c1, "Value");
    cr_expect_str_eq(c2, "Percentile");
    cr_expect_str_eq(c3, "TotalCount");
    cr_expect_str_eq(c4, "1/(1-Percentile)");
    double last_value = -1, last_p = -1, value, p, inv;
    unsigned long long cum, last_cum = 0;
    int rows = 0, footer = 0;
    while ((line = strtok_r(NULL, "\n", &save))) {
        if (line[0] == '#') {
            footer++;
            continue;
        }
        int n = sscanf(line, "%lf %lf %llu %lf", &value, &p, &cum, &inv);
        cr_assert(n == 4 || n == 3, "bad row '%s'", line);
        cr_expect_geq(value, last_value);
        cr_expect_geq(p, last_p);
        cr_expect_geq(cum, last_cum);
        if (n == 4)
            cr_expect_float_eq(inv, 1 / (1 - p), 0.01 + 1e-6 / (1 - p));
        last_value = value;
        last_p = p;
        last_cum = cum;
        rows++;
    }
    cr_expect_gt(rows, 20);
    cr_expect_float_eq(last_p, 1.0, 1e-12, "the last row is the 100th percentile");
    cr_expect_float_eq(last_value, 1000.0, 1e-9, "at the maximum, in ms");
    cr_expect_eq(last_cum, 1000);
    cr_expect_eq(footer, 3);
    free(text);

    text = hdr_hgrm_string(h, 1000);
    cr_expect_not_null(strstr(text, "#[Mean    =      500.500, StdDeviation   = "));
    cr_expect_not_null(strstr(text, "#[Max     =     1000.000, Total count    =         1000]"));
    cr_expect_not_null(strstr(text, "#[Buckets =           "));
    cr_expect_not_null(strstr(text, "SubBuckets     =         2048]"));
    free(text);
    hdr_free(h);
}

static void count_walk(double p, int64_t value, uint64_t cumulative, void *udata) {
    double *last = udata;
    cr_expect_geq(p, last[0]);
    cr_expect_geq((double)value, last[1]);
    last[0] = p;
    last[1] = (double)value;
    last[2] += 1;
}

Test(hdr, walk_rises_to_the_maximum_at_100) {
    hdr_histogram *h = hdr_new_default();
    uint64_t seed = 5;
    for (int i = 0; i < 10000; i++)
        hdr_record(h, draw(&seed, PARETO));
    double last[3] = {-1, -1, 0};
    hdr_percentiles_walk(h, 5, count_walk, last);
    cr_expect_float_eq(last[0], 100.0, 1e-12);
    cr_expect_float_eq(last[1], (double)hdr_max(h), 1e-9);
    cr_expect_gt(last[2], 50);
    hdr_free(h);
}
