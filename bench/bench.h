/*
 * bench.h - the benchmark harness's public interface: the load generator and the scenario
 * registry that every component adds its benchmarks to.
 *
 * A scenario describes one kind of operation (a rate-limit decision, a job enqueue, an HTTP
 * request). The harness drives it with the load generator, open loop at a target rate (latency
 * measured from the time each operation *should* have started, wrk2's coordinated-omission
 * correction) or closed loop (a fixed number in flight, as fast as possible), records latencies
 * in HDR histograms (hdr.h) and prints one table row per scenario.
 *
 * Operations are asynchronous on one uv_loop: the harness calls target->issue() and the scenario
 * calls done() exactly once when the operation completes, later, from the loop, and never from
 * inside issue() (the rule of libuv, sd_aredis and rl_limiter: a callback never runs inside the
 * call that started the operation). A target that knows the result at once (a local decision,
 * an error found before sending) hands the completion to a bench_later, which calls done() from
 * the loop without waiting for I/O.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "hdr.h"

/* Error kinds an operation can report through done(). 0 is success. Scenarios may use their
 * own positive kinds below BENCH_ERR_KINDS; the table prints the total, the JSON each kind. */
enum {
    BENCH_OK = 0,
    BENCH_ERR_TIMEOUT = 1, /* no answer within the operation's deadline */
    BENCH_ERR_CONNECT = 2, /* could not connect / connection lost */
    BENCH_ERR_STATUS = 3,  /* a wrong answer (HTTP status not 2xx/3xx, Redis error reply) */
    BENCH_ERR_OTHER = 4,
    BENCH_ERR_KINDS = 8
};

/* The name of an error kind in tables and JSON: "timeout", "connect", "status", "other", and
 * "kind5".."kind7" for a scenario's own kinds ("ok" for BENCH_OK). */
const char *bench_err_kind_name(int kind);

/* Completion of one operation: token is the value issue() received; err is BENCH_OK or a kind. */
typedef void bench_done_fn(void *token, int err);

/* What the load generator drives. */
typedef struct bench_target {
    void *ctx;
    /* Starts one operation. Must call done(token, err) exactly once, later, on the loop's
     * thread, never from inside this call (bench_later is for results known at once). */
    void (*issue)(void *ctx, void *token, bench_done_fn *done);
} bench_target;

typedef struct bench_load_opts {
    double rate;       /* operations per second; 0 = closed loop */
    int in_flight;     /* closed loop: operations kept in flight; open loop: cap on outstanding
                          operations (0 = unlimited) - a capped run falls behind and says so */
    double duration_s; /* measured time, after warm-up */
    double warmup_s;   /* run but not recorded */
    int poisson;       /* open loop: exponential inter-arrival times instead of fixed spacing */
    int progress;      /* print a live progress line to stderr (only when it is a terminal) */
    const char *label; /* name shown on the progress line */
} bench_load_opts;

/* What one run measured. Histograms are in microseconds. */
typedef struct bench_result {
    char name[96];
    double target_rate;   /* 0 for closed loop */
    double achieved_rate; /* completed operations per second over the measured time */
    double duration_s;
    uint64_t count;  /* completed operations in the measured time (success + error) */
    uint64_t errors; /* of count, how many failed */
    uint64_t errors_by_kind[BENCH_ERR_KINDS];
    hdr_histogram *latency;     /* corrected: from intended start (= actual start, closed loop) */
    hdr_histogram *uncorrected; /* from actual start (see bench_op_sent) */
    int below_target;           /* open loop reached < 99% of the target rate */
} bench_result;

/* Marks the operation `token` (as received by issue()) as actually sent now. A target that
 * cannot send at once, for instance because it queues requests until one of its connections is
 * free, calls this when it really sends, so that the uncorrected latency measures the system
 * under test and not the target's own queue. Without a call, an operation counts as sent when
 * issue() was called. Only valid between issue() and done() for that token, on the loop's
 * thread; the corrected latency (from the scheduled start) is not affected. */
void bench_op_sent(void *token);

/* Runs a load on loop (which must have nothing else keeping it alive past the run, or the run
 * still ends: the generator stops its own handles and returns once in-flight operations have
 * completed). Fills *out (allocating its histograms; release with bench_result_clear).
 * Returns 0 or a negative code. */
int bench_load_run(uv_loop_t *loop, const bench_target *target, const bench_load_opts *opts,
                   bench_result *out);

/* Frees the histograms inside *r. */
void bench_result_clear(bench_result *r);

/* ---- Completing later ---------------------------------------------------------------------- */

/* Completions queued to run from the loop: for targets whose result is known inside issue().
 * One uv_idle handle serves any number of them; it is active only while some are queued, and
 * keeps the loop from waiting for I/O meanwhile. */
typedef struct bench_later bench_later;

/* Creates a queue on loop (aborts if out of memory). */
bench_later *bench_later_new(uv_loop_t *loop);

/* Queues done(token, err), to be called from the loop on this or the next iteration: after the
 * caller has returned, and never from inside this call. */
void bench_later_done(bench_later *q, void *token, bench_done_fn *done, int err);

/* Frees q. Completions still queued are called from the loop before the memory is released
 * (run the loop afterwards), never from inside this call. NULL is a no-op. */
void bench_later_free(bench_later *q);

/* ---- Scenarios ----------------------------------------------------------------------------- */

/* What a scenario's setup gets from `bench run`. */
typedef struct bench_env {
    uv_loop_t *loop;
    const char *redis_url; /* the Redis to use (private one, --redis, or REDIS_URL) */
    const char *bin_dir;   /* directory of the bench binary (build/bin), to find other commands */
    double duration_s;     /* --duration, or the scenario's default */
    double rate;           /* --rate, or the scenario's default (0 = closed loop) */
} bench_env;

typedef struct bench_scenario {
    const char *name;    /* "ratelimit.token-bucket.closed": component.what.how */
    const char *summary; /* one line for `bench list` */
    double default_rate; /* 0 = closed loop */
    int in_flight;       /* closed loop concurrency (or open-loop cap) */
    double default_duration_s;
    /* Prepares the target (connections, keys, child processes). Returns 0 or negative; on
     * failure the scenario is reported as failed and teardown is not called. */
    int (*setup)(const bench_env *env, bench_target *target);
    /* Releases what setup made. Runs on the loop's thread; may run the loop. */
    void (*teardown)(const bench_env *env, bench_target *target);
    /* NULL, or the name of a row that `bench run` adds after all others, holding every
     * operation of the scenarios that name it (histograms merged, counts and durations summed):
     * the rounds of an alternated comparison read as one long run each, so that a burst of
     * machine noise in one round moves the comparison less. */
    const char *pool;
} bench_scenario;

/* The registry: each component defines a NULL-terminated array of pointers in
 * bench/scenarios_<component>.c and bench/scenarios.c lists the arrays. */
extern const bench_scenario *const bench_scenarios_ratelimit[];
extern const bench_scenario *const bench_scenarios_jobqueue[];
extern const bench_scenario *const bench_scenarios_cache[];
extern const bench_scenario *const bench_scenarios_webhook[];
extern const bench_scenario *const bench_scenarios_urlshortener[];

/* All scenarios, NULL-terminated, in the order `bench run` runs them. */
const bench_scenario *const *bench_scenarios_all(void);

#endif
