/*
 * scenarios.c - the scenario registry: every component's list, in the order `bench run` runs
 * them.
 *
 * A component adds its scenarios in bench/scenarios_<component>.c as a NULL-terminated array
 * (declared in bench.h) and lists that array here. The registry is built once, on first use.
 */
#include <stddef.h>

#include "bench.h"
#include "sd.h"

static const bench_scenario *const *const component_lists[] = {
    bench_scenarios_ratelimit, bench_scenarios_jobqueue,     bench_scenarios_cache,
    bench_scenarios_webhook,   bench_scenarios_urlshortener,
};

const bench_scenario *const *bench_scenarios_all(void) {
    static const bench_scenario **all = NULL;
    if (all)
        return all;
    size_t n = 0;
    for (size_t i = 0; i < sizeof component_lists / sizeof component_lists[0]; i++)
        for (const bench_scenario *const *s = component_lists[i]; *s; s++)
            n++;
    all = sd_xcalloc(n + 1, sizeof *all);
    n = 0;
    for (size_t i = 0; i < sizeof component_lists / sizeof component_lists[0]; i++)
        for (const bench_scenario *const *s = component_lists[i]; *s; s++)
            all[n++] = *s;
    all[n] = NULL;
    return all;
}
