/*
 * evict_sim.c - `cache-evict-sim`: replays one Zipf trace through the local tier twice, with
 * SIEVE and with plain LRU at the same byte budget, and prints both hit ratios.
 *
 *   cache-evict-sim [--keys N] [--requests M] [--alpha A] [--seed S]
 *
 * Keys are "k<rank>" with 32-byte values; rank r is drawn with probability proportional to
 * 1 / r^alpha (inverse CDF, binary search). Budgets: 0.1%, 1%, 5% and 10% of the key space's
 * bytes. The same seed gives the same trace, so the comparison is exact and repeatable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "local.h"
#include "sd.h"

static uint64_t rng = 88172645463325252ULL;

static double unit(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}

static double run(const uint32_t *trace, long long m, size_t budget, int policy) {
    local_tier *t = local_new(budget, policy);
    cache_blob *v = cache_blob_new(0, "................................", 32);
    long long hits = 0;
    char key[24];
    for (long long i = 0; i < m; i++) {
        int n = snprintf(key, sizeof key, "k%u", trace[i]);
        if (local_get(t, key, (size_t)n, 1))
            hits++;
        else
            local_put(t, key, (size_t)n, v, UINT64_MAX);
    }
    cache_blob_unref(v);
    local_free(t);
    return (double)hits / (double)m;
}

int main(int argc, char **argv) {
    long long keys = 100000, requests = 2000000, seed = 1;
    double alpha = 0.99;
    const sd_cli_opt opts[] = {
        {"--keys", "N", "distinct keys (default 100000)", .integer = &keys, .min = 10,
         .max = 10000000},
        {"--requests", "M", "requests in the trace (default 2000000)", .integer = &requests,
         .min = 1, .max = 100000000},
        {"--alpha", "A", "Zipf exponent (default 0.99)", .number = &alpha, .min = 0.1, .max = 3,
         .what = "an exponent, 0.1 to 3"},
        {"--seed", "S", "trace seed (default 1)", .integer = &seed, .min = 1, .max = 1LL << 62},
        {0}};
    const sd_cli_cmd cmd = {.name = "cache-evict-sim",
                            .synopsis = "[options]",
                            .about = "SIEVE against LRU at the same byte budget on a Zipf trace.",
                            .opts = opts};
    int rc = sd_cli_parse(&cmd, argc, argv, NULL, NULL);
    if (rc != SD_CLI_OK)
        return sd_cli_exit_status(rc);
    rng ^= (uint64_t)seed * 0x9E3779B97F4A7C15ULL;

    double *cdf = sd_xmalloc(sizeof *cdf * (size_t)keys);
    double sum = 0;
    for (long long r = 0; r < keys; r++) {
        sum += 1.0 / pow((double)(r + 1), alpha);
        cdf[r] = sum;
    }
    uint32_t *trace = sd_xmalloc(sizeof *trace * (size_t)requests);
    for (long long i = 0; i < requests; i++) {
        double u = unit() * sum;
        long long lo = 0, hi = keys - 1;
        while (lo < hi) {
            long long mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        trace[i] = (uint32_t)lo;
    }
    /* Bytes of one entry as the tier counts them: key, value and its fixed overhead. */
    size_t per_key = local_entry_cost(8, 32);
    const double fractions[] = {0.001, 0.01, 0.05, 0.10};
    printf("zipf alpha=%.2f keys=%lld requests=%lld seed=%lld\n", alpha, keys, requests, seed);
    printf("%-11s %-12s %-10s %-10s %s\n", "budget %", "bytes", "sieve", "lru", "sieve-lru");
    for (size_t i = 0; i < sizeof fractions / sizeof *fractions; i++) {
        size_t budget = (size_t)(fractions[i] * (double)keys * (double)per_key);
        double s = run(trace, requests, budget, LOCAL_SIEVE);
        double l = run(trace, requests, budget, LOCAL_LRU);
        printf("%-11.1f %-12zu %-10.4f %-10.4f %+.4f\n", fractions[i] * 100, budget, s, l, s - l);
    }
    free(trace);
    free(cdf);
    return 0;
}
