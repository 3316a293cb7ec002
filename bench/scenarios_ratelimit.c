#include "bench.h"
const bench_scenario *const bench_scenarios_ratelimit[] = {NULL};
