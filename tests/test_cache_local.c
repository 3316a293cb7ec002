/*
 * test_cache_local.c - the cache's in-process tier (cache/local.h): the byte bound, expiry,
 * SIEVE's eviction order, and SIEVE's hit ratio against plain LRU at the same budget on a
 * seeded Zipf trace (the comparison cache-evict-sim prints, at a smaller scale).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "local.h"

static cache_blob *blob(const char *s) {
    return cache_blob_new(0, s, strlen(s));
}

static void put(local_tier *t, const char *k, cache_blob *b) {
    local_put(t, k, strlen(k), b, UINT64_MAX);
}

static int has(local_tier *t, const char *k) {
    return local_get(t, k, strlen(k), 1) != NULL;
}

Test(cache_local, never_holds_more_than_its_budget) {
    size_t one = local_entry_cost(2, 10);
    local_tier *t = local_new(one * 5, LOCAL_SIEVE);
    cache_blob *b = blob("0123456789");
    char k[8];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "%02d", i);
        put(t, k, b);
        cr_assert_leq(local_bytes(t), one * 5);
    }
    cr_assert_eq(local_count(t), 5);
    cr_assert_eq(local_evictions(t), 95);
    /* An entry larger than the whole budget is not stored. */
    char huge[2000];
    memset(huge, 'x', sizeof huge);
    cache_blob *hb = cache_blob_new(0, huge, sizeof huge);
    put(t, "hg", hb);
    cr_assert(!has(t, "hg"));
    cache_blob_unref(hb);
    cache_blob_unref(b);
    local_free(t);
}

Test(cache_local, an_expired_entry_is_not_served) {
    local_tier *t = local_new(1 << 20, LOCAL_SIEVE);
    cache_blob *b = blob("v");
    local_put(t, "k", 1, b, 100);
    cr_assert_not_null(local_get(t, "k", 1, 99));
    cr_assert_null(local_get(t, "k", 1, 100));
    cr_assert_eq(local_count(t), 0);
    cache_blob_unref(b);
    local_free(t);
}

/* SIEVE keeps an entry that was hit and evicts the oldest one that was not; LRU, by contrast,
 * would evict by recency alone. */
Test(cache_local, sieve_evicts_the_oldest_unvisited_entry) {
    size_t one = local_entry_cost(1, 1);
    local_tier *t = local_new(one * 3, LOCAL_SIEVE);
    cache_blob *b = blob("v");
    put(t, "a", b);
    put(t, "b", b);
    put(t, "c", b);
    cr_assert(has(t, "a")); /* a is visited */
    put(t, "d", b);         /* the hand passes a (clearing its bit) and evicts b */
    cr_assert(has(t, "a"));
    cr_assert(!has(t, "b"));
    cr_assert(has(t, "c"));
    cr_assert(has(t, "d"));
    cache_blob_unref(b);
    local_free(t);
}

Test(cache_local, delete_and_clear_remove_entries) {
    local_tier *t = local_new(1 << 20, LOCAL_SIEVE);
    cache_blob *b = blob("v");
    put(t, "a", b);
    put(t, "b", b);
    cr_assert_eq(local_del(t, "a", 1), 1);
    cr_assert_eq(local_del(t, "a", 1), 0);
    cr_assert(!has(t, "a"));
    local_clear(t);
    cr_assert_eq(local_count(t), 0);
    cr_assert_eq(local_bytes(t), 0);
    cr_assert_eq(b->refs, 1, "the tier kept a reference");
    cache_blob_unref(b);
    local_free(t);
}

static double hit_ratio(const int *trace, int n, size_t budget, int policy) {
    local_tier *t = local_new(budget, policy);
    cache_blob *b = blob("0123456789abcdef");
    int hits = 0;
    char k[16];
    for (int i = 0; i < n; i++) {
        int len = snprintf(k, sizeof k, "%07d", trace[i]);
        if (local_get(t, k, (size_t)len, 1))
            hits++;
        else
            local_put(t, k, (size_t)len, b, UINT64_MAX);
    }
    cache_blob_unref(b);
    local_free(t);
    return (double)hits / n;
}

Test(cache_local, sieve_beats_lru_on_a_zipf_trace) {
    enum { KEYS = 20000, N = 200000 };
    static double cdf[KEYS];
    static int trace[N];
    double sum = 0;
    for (int r = 0; r < KEYS; r++) {
        sum += 1.0 / pow(r + 1, 0.99);
        cdf[r] = sum;
    }
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double u = (double)(x >> 11) / 9007199254740992.0 * sum;
        int lo = 0, hi = KEYS - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        trace[i] = lo;
    }
    size_t budget = local_entry_cost(7, 16) * (KEYS / 100); /* 1% of the keys */
    double s = hit_ratio(trace, N, budget, LOCAL_SIEVE);
    double l = hit_ratio(trace, N, budget, LOCAL_LRU);
    cr_log_info("zipf 0.99, 1%% budget: sieve %.4f, lru %.4f", s, l);
    cr_assert_gt(s, l + 0.02, "sieve %.4f is not clearly above lru %.4f", s, l);
}
