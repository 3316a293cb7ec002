/*
 * peers.h - the systems a user would pick instead of ours, measured by `bench run` in the same
 * run, on the same Redis, under the same load as the scenario each one is compared with.
 *
 * A peer is an outside program (a Node script over an npm package, nginx, ...) that applies the
 * load itself and prints its result as one JSON line. The harness cannot drive it through
 * bench_target, so it runs the peer as a child process, right after our scenario, with that
 * scenario's closed-loop concurrency, warm-up and duration and the same Redis, and reads the line.
 * A peer that cannot run here (its program is missing, npm cannot install its packages, it
 * fails or hangs) is skipped with one line saying why; it never fails the run.
 *
 * The registry is one array, bench_peers[] in bench/scenarios_peers.c: a component adds its
 * peers there, each naming the scenario of ours it is compared with.
 *
 * What a peer's command must print on stdout, as its last line starting with '{':
 *
 *   {"peer": "rate-limiter-flexible", "version": "7.1.1", "achieved_rate": 30123.5,
 *    "p50_us": 1200, "p99_us": 5200, "max_us": 9800, "count": 120494, "errors": 0}
 *
 * achieved_rate (operations completed in the measured time, errors included, per second, as
 * ours counts them), p50_us and p99_us are required; the rest is optional. Other lines (a human
 * summary) are ignored; stderr is kept only to explain a failure.
 */
#ifndef BENCH_PEERS_H
#define BENCH_PEERS_H

#include <stddef.h>
#include <stdint.h>

/* One peer. Every string is static. */
typedef struct bench_peer {
    const char *name;          /* "rate-limiter-flexible" */
    const char *compared_with; /* the scenario of ours it runs after: "ratelimit.gcra.closed" */
    const char *summary;       /* what runs and under which load, one line */
    /* The command, NULL-terminated; argv[0] is looked up on PATH. Each argument may hold the
     * placeholders {peers_dir} (bench/peers, where node_modules lives), {redis} (the Redis URL),
     * {duration} and {warmup} (seconds) and {in_flight} (the closed loop's concurrency). */
    const char *const *argv;
    const char *const *programs; /* programs it needs on PATH, NULL-terminated (NULL: none) */
    const char *const *npm; /* npm packages it needs in {peers_dir}/node_modules (NULL: none) */
    const char *hint;       /* how to get what is missing, added to a skip line */
} bench_peer;

/* The registry (bench/scenarios_peers.c), NULL-terminated. */
extern const bench_peer *const bench_peers[];

/* How one peer runs: the load of the scenario it is compared with. */
typedef struct bench_peer_params {
    const char *peers_dir;    /* the directory with package.json and node_modules */
    const char *redis_url;    /* passed to the peer, never printed or stored */
    double duration_s;        /* measured seconds */
    double warmup_s;          /* seconds run before measuring */
    int in_flight;            /* closed-loop concurrency */
    double grace_s;           /* seconds beyond warm-up + duration before the peer is killed
                                 (0: 30 s, enough for node's start-up on a loaded machine) */
    double install_timeout_s; /* bound on `npm ci` (0: 120 s) */
} bench_peer_params;

/* What one peer measured, or why it did not run (skipped != ""). */
typedef struct bench_peer_result {
    char name[64];
    char compared_with[96];
    char version[32];
    char skipped[256]; /* one line, no newline: why the peer did not run */
    char command[320]; /* the command as run, with the Redis URL shown as URL */
    double achieved_rate;
    double duration_s;
    int in_flight;
    uint64_t count, errors;
    int64_t p50_us, p99_us, max_us;
} bench_peer_result;

/*
 * Runs one peer with params: checks its programs, installs its npm packages on first use (`npm
 * ci --no-audit --no-fund` in peers_dir when package-lock.json is there, else `npm install`, at
 * most install_timeout_s; when that fails, later peers of the same peers_dir in this process are
 * skipped with the same line without a second attempt), runs its command (killing its process group
 * after warm-up + duration
 * + grace) and reads its result line into *out. Returns 0 when the peer was measured, or a
 * negative code (-ENOENT missing program or package, -ETIMEDOUT, -ECHILD the command failed,
 * SD_EPARSE no usable result line) with out->skipped saying why in one line. Blocks; runs no
 * loop.
 */
int bench_peer_run(const bench_peer *peer, const bench_peer_params *params, bench_peer_result *out);

struct bench_env;
struct bench_row;

/*
 * `bench run`'s hook, called right after the scenario named `scenario` ran into *row: runs every
 * registered peer compared with it (none when the environment has BENCH_PEERS=0), with env's
 * Redis and duration, warmup_s and in_flight, prints one line per peer on stderr (its figures,
 * or why it was skipped) and stores the results in row->peers (allocated; the caller frees it).
 * A peer of a scenario that failed is skipped without running.
 */
void bench_peers_run_after(const char *scenario, const struct bench_env *env, double warmup_s,
                           int in_flight, struct bench_row *row);

#endif
