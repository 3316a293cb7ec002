/*
 * load.c - the load generator behind bench_load_run() (see bench.h).
 *
 * Two ways to apply load
 *  - Open loop (rate > 0): operations start on a schedule fixed in advance, one every 1/rate
 *    seconds (or at Poisson arrival times), whether or not earlier ones have finished. This is
 *    how real users behave: they do not wait for each other. Each operation's latency is taken
 *    from the time it was *scheduled* to start, so when the system under test stalls, every
 *    operation that should have started during the stall is charged for the wait. This is the
 *    coordinated-omission correction of wrk2 (Gil Tene, "How NOT to Measure Latency"). The
 *    latency from the actual start is kept beside it as the "uncorrected" histogram.
 *  - Closed loop (rate = 0): a fixed number of operations in flight, each replaced as soon as it
 *    completes. It finds peak throughput, but its latencies hide stalls (a stalled system simply
 *    gets fewer requests), so the harness reports it as throughput first.
 *
 * The schedule. Operation n is due at start + n/rate (fixed spacing, computed from n rather than
 * by adding intervals, so rounding never drifts) or at the previous due time plus an exponential
 * gap (Poisson). The generator sleeps on a timerfd armed for the next due time: unlike uv_timer,
 * whose resolution is one millisecond, a timerfd wakes the loop within microseconds, and waking
 * late is harmless for the rate because every wake-up starts *all* operations already due
 * (catch-up) with their due time as the start of their latency. So the rate holds exactly as
 * long as the machine keeps up, and lateness shows up as latency, where it belongs. Two things
 * keep that lateness small: a uv_check handle starts whatever fell due while the loop was busy
 * with I/O, without waiting for the timer's wake-up, and at low rates the generator wakes a little
 * early and spins to the due time (see spin_lead()).
 *
 * What is measured. The run is a warm-up (operations started but not recorded), then the
 * measured window of duration_s. An operation is recorded when its scheduled start (closed loop:
 * its actual start) lies in the window, after it completes, however late, so the tail is never
 * cut off at the end of the run. The achieved rate counts completions that happened inside the
 * window, which is the throughput the system actually delivered. A run is below target when
 * those completions are fewer than 99% of the operations scheduled in the window.
 *
 * Operation records live in a pool that grows in chunks (so their addresses, handed to targets as
 * tokens, stay valid) and are recycled through a free list: the steady state allocates nothing.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "bench.h"
#include "sd.h"

#define OPS_PER_CHUNK 4096
/* Closed loop: operations started per call to pump() before yielding to the loop, so that a
 * large in_flight cannot keep the loop from its timers and I/O for long. */
#define PUMP_BUDGET 1024
/* Completions a bench_later calls per loop iteration at most, counted in whole rounds. */
#define LATER_BUDGET 1024
#define PROGRESS_INTERVAL_MS 250

typedef struct load_run load_run;

typedef struct load_op {
    load_run *run;
    uint64_t due_ns;  /* scheduled start (closed loop: actual start) */
    uint64_t sent_ns; /* actual start: when issued, or when the target said it sent it */
    struct load_op *next_free;
} load_op;

struct load_run {
    uv_loop_t *loop;
    const bench_target *target;
    bench_load_opts opts;
    bench_result *out;

    uint64_t start_ns;   /* first operation due */
    uint64_t measure_ns; /* start of the measured window (end of warm-up) */
    uint64_t end_ns;     /* end of the measured window: nothing is started after it */

    /* Open-loop schedule. */
    uint64_t next_ns; /* due time of the next operation */
    uint64_t next_n;  /* its number, for fixed spacing */
    uint64_t rng;     /* xorshift state for Poisson gaps */
    uint64_t scheduled_in_window;
    uint64_t armed_ns;     /* when the timerfd was last asked to fire (0: not armed) */
    uint64_t wake_late_ns; /* moving average of how late it fires */
    int periodic;          /* the timerfd ticks every PERIODIC_NS (high rates), armed once */

    /* Accounting. */
    uint64_t outstanding;
    uint64_t completed_in_window;
    uint64_t completed_total; /* for the progress line */
    int issuing_done;         /* the schedule has ended; waiting for outstanding operations */
    int in_issue;             /* inside target->issue(): a done() now breaks bench.h's rule */
    int finished;

    /* Operation pool. */
    load_op **chunks;
    size_t nchunks;
    load_op *free_ops;

    /* Handles, all inside this struct; open_handles counts those not yet closed. */
    int tfd;
    uv_poll_t tick;
    uv_idle_t idle;
    uv_check_t check;
    uv_timer_t progress;
    int progress_on;
    int open_handles;
    uint64_t progress_last_ns, progress_last_count;
};

/* ---- Operation pool ------------------------------------------------------------------------ */

static load_op *op_get(load_run *run) {
    if (run->free_ops == NULL) {
        load_op *chunk = sd_xmalloc(OPS_PER_CHUNK * sizeof *chunk);
        run->chunks = sd_xrealloc(run->chunks, (run->nchunks + 1) * sizeof *run->chunks);
        run->chunks[run->nchunks++] = chunk;
        for (int i = OPS_PER_CHUNK - 1; i >= 0; i--) {
            chunk[i].next_free = run->free_ops;
            run->free_ops = &chunk[i];
        }
    }
    load_op *op = run->free_ops;
    run->free_ops = op->next_free;
    op->run = run;
    return op;
}

static void op_put(load_run *run, load_op *op) {
    op->next_free = run->free_ops;
    run->free_ops = op;
}

/* ---- Finishing ----------------------------------------------------------------------------- */

static void handle_closed_cb(uv_handle_t *handle) {
    load_run *run = handle->data;
    run->open_handles--;
}

static void close_handle(load_run *run, uv_handle_t *h) {
    if (!uv_is_closing(h))
        uv_close(h, handle_closed_cb);
}

/* Called once the schedule has ended and the last outstanding operation completed. */
static void finish(load_run *run) {
    if (run->finished)
        return;
    run->finished = 1;
    close_handle(run, (uv_handle_t *)&run->tick);
    close_handle(run, (uv_handle_t *)&run->idle);
    close_handle(run, (uv_handle_t *)&run->check);
    if (run->progress_on) {
        close_handle(run, (uv_handle_t *)&run->progress);
        fputs("\r\033[K", stderr);
    }
    uv_stop(run->loop);
}

/* ---- Starting operations ------------------------------------------------------------------- */

static void op_done_cb(void *token, int err);

static void start_op(load_run *run, uint64_t due_ns, uint64_t now_ns) {
    load_op *op = op_get(run);
    op->due_ns = due_ns;
    op->sent_ns = now_ns;
    run->outstanding++;
    run->in_issue = 1;
    run->target->issue(run->target->ctx, op, op_done_cb);
    run->in_issue = 0;
}

void bench_op_sent(void *token) {
    load_op *op = token;
    op->sent_ns = sd_now_ns();
}

static double uniform01(load_run *run) {
    /* xorshift64*: plenty for spacing arrivals, and reproducible from the seed. */
    run->rng ^= run->rng >> 12;
    run->rng ^= run->rng << 25;
    run->rng ^= run->rng >> 27;
    uint64_t x = run->rng * 2685821657736338717ULL;
    return ((double)(x >> 11) + 0.5) / 9007199254740992.0; /* in (0, 1) */
}

/* Moves the schedule to the next operation. A due time at or past the end of the run ends the
 * schedule, so it is clamped to end_ns before converting: at tiny rates the offset in
 * nanoseconds does not fit in 64 bits, and converting it would be undefined. */
static void schedule_advance(load_run *run) {
    run->next_n++;
    uint64_t base = run->opts.poisson ? run->next_ns : run->start_ns;
    double gap = run->opts.poisson ? -log(uniform01(run)) / run->opts.rate * 1e9
                                   : (double)run->next_n * 1e9 / run->opts.rate;
    if (base >= run->end_ns || !(gap < (double)(run->end_ns - base)))
        run->next_ns = run->end_ns;
    else
        run->next_ns = base + (uint64_t)gap;
}

/*
 * How far ahead of a due time to wake up and spin. Waking from a sleep is slow on an idle machine
 * (tens of microseconds on this 2-vCPU VM), and every microsecond of it would be charged to an
 * operation's corrected latency. So the generator keeps a moving average of how late its
 * wake-ups run, asks to be woken that much plus SPIN_MARGIN_NS early, and spins the rest of the
 * way. Spinning costs CPU that the system under test may need, so it is done only while the time
 * between operations is at least two leads (the spin is then at most half of the time, and in
 * practice about SPIN_MARGIN_NS per operation: some 7% of a CPU at 1,000/s); at higher rates the
 * schedule runs some tens of microseconds late (`bench selftest` measures it).
 */
#define SPIN_MARGIN_NS 10000

/*
 * At high rates the timerfd ticks on its own. Arming a timerfd is a system call that this VM
 * pays for dearly (at 60,000 operations/s, re-arming it for every wake-up took 30% of the
 * generator's CPU in `perf`, CPU the system under test then lacked). So when operations are due
 * less than PERIODIC_NS apart, the timer is armed once, as a periodic one, and each tick starts
 * everything that fell due since the last: an operation starts at most PERIODIC_NS late (plus
 * the wake-up), and its latency, counted from its due time, shows it.
 */
#define PERIODIC_NS 50000

static int wants_periodic(const load_run *run) {
    return 1e9 / run->opts.rate < (double)PERIODIC_NS;
}

static uint64_t spin_lead(const load_run *run) {
    uint64_t lead = run->wake_late_ns + SPIN_MARGIN_NS;
    return 1e9 / run->opts.rate >= 2.0 * (double)lead ? lead : 0;
}

/* Open loop: start every operation that is due, then sleep until the next one is. */
static void open_loop_tick(load_run *run) {
    if (run->issuing_done)
        return;
    uint64_t now = sd_now_ns();
    int cap = run->opts.in_flight;
    if (run->next_ns > now && run->next_ns - now <= spin_lead(run)) {
        while (now < run->next_ns)
            now = sd_now_ns();
    }
    while (run->next_ns <= now && run->next_ns < run->end_ns) {
        if (cap > 0 && run->outstanding >= (uint64_t)cap)
            return; /* a completion calls us again; the delay counts as latency */
        if (run->next_ns >= run->measure_ns)
            run->scheduled_in_window++;
        start_op(run, run->next_ns, sd_now_ns());
        schedule_advance(run);
    }
    if (run->next_ns >= run->end_ns) {
        run->issuing_done = 1;
        uv_poll_stop(&run->tick);
        uv_check_stop(&run->check);
        if (run->outstanding == 0)
            finish(run);
        return;
    }
    if (run->periodic)
        return;
    if (wants_periodic(run)) {
        struct itimerspec every = {.it_interval = {.tv_nsec = PERIODIC_NS},
                                   .it_value = {.tv_nsec = PERIODIC_NS}};
        timerfd_settime(run->tfd, 0, &every, NULL);
        run->periodic = 1;
        return;
    }
    /* A timer already set to fire earlier may stay: firing early costs one empty tick, while
     * setting the timer again on every tick would cost a system call per operation. */
    uint64_t wake = run->next_ns - spin_lead(run);
    if (run->armed_ns != 0 && run->armed_ns <= wake)
        return;
    struct itimerspec when = {.it_value = {.tv_sec = (time_t)(wake / 1000000000u),
                                           .tv_nsec = (long)(wake % 1000000000u)}};
    timerfd_settime(run->tfd, TFD_TIMER_ABSTIME, &when, NULL);
    run->armed_ns = wake;
}

/* After every round of I/O callbacks: a busy loop starts what fell due meanwhile at once,
 * without waiting for the timer's own wake-up. */
static void check_cb(uv_check_t *handle) {
    open_loop_tick(handle->data);
}

static void tick_cb(uv_poll_t *handle, int status, int events) {
    load_run *run = handle->data;
    uint64_t expirations;
    /* Drain the timerfd so it stops being readable; the count itself is not needed. */
    while (read(run->tfd, &expirations, sizeof expirations) > 0) {
    }
    uint64_t now = sd_now_ns();
    if (run->periodic) {
        open_loop_tick(run);
        return;
    }
    if (run->armed_ns > 0 && now > run->armed_ns) {
        /* A wake-up hundreds of microseconds late is the loop being busy, not the sleep: cap
         * what one sample can teach the average. */
        uint64_t late = now - run->armed_ns;
        if (late > 200000)
            late = 200000;
        run->wake_late_ns = (7 * run->wake_late_ns + late) / 8;
    }
    run->armed_ns = 0;
    open_loop_tick(run);
}

static void idle_cb(uv_idle_t *handle);

/* Closed loop: top up the operations in flight, within a budget per call. When the budget runs
 * out, an idle handle calls again on the next loop iteration, after I/O has been processed. */
static void closed_loop_pump(load_run *run) {
    if (run->issuing_done)
        return;
    uint64_t want = run->opts.in_flight > 0 ? (uint64_t)run->opts.in_flight : 1;
    int budget = PUMP_BUDGET;
    while (run->outstanding < want && budget-- > 0) {
        uint64_t now = sd_now_ns();
        if (now >= run->end_ns) {
            run->issuing_done = 1;
            break;
        }
        start_op(run, now, now);
    }
    if (run->issuing_done) {
        uv_idle_stop(&run->idle);
        if (run->outstanding == 0)
            finish(run);
    } else if (run->outstanding < want) {
        uv_idle_start(&run->idle, idle_cb);
    } else {
        uv_idle_stop(&run->idle);
    }
}

static void idle_cb(uv_idle_t *handle) {
    closed_loop_pump(handle->data);
}

/* ---- Completions --------------------------------------------------------------------------- */

static int64_t ns_to_us(uint64_t ns) {
    return (int64_t)((ns + 500) / 1000);
}

static void op_done_cb(void *token, int err) {
    load_op *op = token;
    load_run *run = op->run;
    if (run->in_issue) {
        /* A target that breaks the rule would recurse through the pump without bound. */
        fprintf(stderr, "bench: a target completed an operation inside issue() (see bench.h)\n");
        abort();
    }
    uint64_t now = sd_now_ns();
    if (op->due_ns >= run->measure_ns && op->due_ns < run->end_ns) {
        bench_result *out = run->out;
        hdr_record(out->latency, ns_to_us(now - op->due_ns));
        hdr_record(out->uncorrected, ns_to_us(now - op->sent_ns));
        out->count++;
        if (err != BENCH_OK) {
            if (err < 0 || err >= BENCH_ERR_KINDS)
                err = BENCH_ERR_OTHER;
            out->errors++;
            out->errors_by_kind[err]++;
        }
    }
    if (now >= run->measure_ns && now < run->end_ns)
        run->completed_in_window++;
    run->completed_total++;
    run->outstanding--;
    op_put(run, op);

    if (run->opts.rate > 0) {
        if (run->issuing_done && run->outstanding == 0)
            finish(run);
        else if (run->opts.in_flight > 0 && run->outstanding + 1 == (uint64_t)run->opts.in_flight)
            open_loop_tick(run); /* a capped schedule may have been waiting for this slot */
    } else {
        if (run->issuing_done && run->outstanding == 0)
            finish(run);
        else
            closed_loop_pump(run);
    }
}

/* ---- Progress line ------------------------------------------------------------------------- */

static void progress_cb(uv_timer_t *handle) {
    load_run *run = handle->data;
    uint64_t now = sd_now_ns();
    double secs = (double)(now - run->progress_last_ns) / 1e9;
    double rate = secs > 0 ? (double)(run->completed_total - run->progress_last_count) / secs : 0;
    run->progress_last_ns = now;
    run->progress_last_count = run->completed_total;
    const char *phase = now < run->measure_ns ? "warm-up" : "measuring";
    double elapsed = now > run->measure_ns ? (double)(now - run->measure_ns) / 1e9
                                           : (double)(now - run->start_ns) / 1e9;
    char p99[32] = "-";
    if (hdr_count(run->out->latency) > 0)
        snprintf(p99, sizeof p99, "%.3f ms",
                 (double)hdr_percentile(run->out->latency, 99) / 1000.0);
    fprintf(stderr, "\r\033[K%s  %s %.1fs/%.1fs  %.0f ops/s  p99 %s  errors %llu",
            run->opts.label ? run->opts.label : "load", phase, elapsed,
            now < run->measure_ns ? run->opts.warmup_s : run->opts.duration_s, rate, p99,
            (unsigned long long)run->out->errors);
    fflush(stderr);
}

/* ---- Completing later ---------------------------------------------------------------------- */

typedef struct later_item {
    void *token;
    bench_done_fn *done;
    int err;
} later_item;

/* Two arrays: completions queue in items while those of spare are being called, then the two
 * swap, so the steady state allocates nothing. */
struct bench_later {
    uv_idle_t idle; /* active while n > 0 */
    later_item *items, *spare;
    size_t n, cap, spare_cap;
    int closing;
};

/* Calls the queued completions in rounds, as in the limiter: those queued by the callbacks of
 * one round wait for the next, and rounds stop after LATER_BUDGET completions (unless closing,
 * when everything must go). */
static void later_run(bench_later *q) {
    size_t called = 0;
    while (q->n > 0 && (q->closing || called < LATER_BUDGET)) {
        later_item *items = q->items;
        size_t n = q->n, cap = q->cap;
        q->items = q->spare;
        q->cap = q->spare_cap;
        q->n = 0;
        q->spare = NULL;
        q->spare_cap = 0;
        for (size_t i = 0; i < n; i++)
            items[i].done(items[i].token, items[i].err);
        called += n;
        if (q->spare == NULL) {
            q->spare = items;
            q->spare_cap = cap;
        } else {
            free(items);
        }
    }
    if (q->n == 0 && !q->closing)
        uv_idle_stop(&q->idle);
}

static void later_idle_cb(uv_idle_t *handle) {
    later_run(handle->data);
}

bench_later *bench_later_new(uv_loop_t *loop) {
    bench_later *q = sd_xcalloc(1, sizeof *q);
    uv_idle_init(loop, &q->idle);
    q->idle.data = q;
    return q;
}

void bench_later_done(bench_later *q, void *token, bench_done_fn *done, int err) {
    if (q->n == q->cap) {
        q->cap = q->cap ? 2 * q->cap : 64;
        q->items = sd_xrealloc(q->items, q->cap * sizeof *q->items);
    }
    q->items[q->n++] = (later_item){token, done, err};
    if (!q->closing)
        uv_idle_start(&q->idle, later_idle_cb);
}

static void later_closed_cb(uv_handle_t *handle) {
    bench_later *q = handle->data;
    later_run(q);
    free(q->items);
    free(q->spare);
    free(q);
}

void bench_later_free(bench_later *q) {
    if (q == NULL || q->closing)
        return;
    q->closing = 1;
    uv_close((uv_handle_t *)&q->idle, later_closed_cb);
}

/* ---- The run ------------------------------------------------------------------------------- */

const char *bench_err_kind_name(int kind) {
    static const char *const names[BENCH_ERR_KINDS] = {"ok",    "timeout", "connect", "status",
                                                       "other", "kind5",   "kind6",   "kind7"};
    return kind >= 0 && kind < BENCH_ERR_KINDS ? names[kind] : "other";
}

void bench_result_clear(bench_result *r) {
    if (r == NULL)
        return;
    hdr_free(r->latency);
    hdr_free(r->uncorrected);
    r->latency = NULL;
    r->uncorrected = NULL;
}

static void release(load_run *run) {
    for (size_t i = 0; i < run->nchunks; i++)
        free(run->chunks[i]);
    free(run->chunks);
    if (run->tfd >= 0)
        close(run->tfd);
}

int bench_load_run(uv_loop_t *loop, const bench_target *target, const bench_load_opts *opts,
                   bench_result *out) {
    if (loop == NULL || target == NULL || target->issue == NULL || opts == NULL || out == NULL ||
        !(opts->rate >= 0) || !(opts->duration_s > 0) || !(opts->warmup_s >= 0) ||
        !isfinite(opts->rate) || !isfinite(opts->duration_s) || !isfinite(opts->warmup_s))
        return -EINVAL;
    /* A rate so small that the interval between operations is not even a finite number of
     * nanoseconds cannot be scheduled. */
    if (opts->rate > 0 && !isfinite(1e9 / opts->rate))
        return -EINVAL;

    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", opts->label ? opts->label : "load");
    out->target_rate = opts->rate;
    out->duration_s = opts->duration_s;
    out->latency = hdr_new_default();
    out->uncorrected = hdr_new_default();

    load_run run = {.loop = loop, .target = target, .opts = *opts, .out = out, .tfd = -1};
    run.rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(opts->rate * 1000);
    run.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (run.tfd < 0) {
        int rc = -errno;
        bench_result_clear(out);
        return rc;
    }
    uv_poll_init(loop, &run.tick, run.tfd);
    uv_idle_init(loop, &run.idle);
    uv_check_init(loop, &run.check);
    run.tick.data = run.idle.data = run.check.data = &run;
    run.open_handles = 3;
    if (opts->progress && isatty(STDERR_FILENO)) {
        uv_timer_init(loop, &run.progress);
        run.progress.data = &run;
        run.progress_on = 1;
        run.open_handles++;
    }

    /* Open loop starts a little in the future so that the first due time is not already late. */
    run.start_ns = sd_now_ns() + (opts->rate > 0 ? 1000000 : 0);
    run.measure_ns = run.start_ns + (uint64_t)(opts->warmup_s * 1e9);
    run.end_ns = run.measure_ns + (uint64_t)(opts->duration_s * 1e9);
    run.next_ns = run.start_ns;
    run.progress_last_ns = run.start_ns;
    if (run.progress_on)
        uv_timer_start(&run.progress, progress_cb, PROGRESS_INTERVAL_MS, PROGRESS_INTERVAL_MS);

    if (opts->rate > 0) {
        uv_poll_start(&run.tick, UV_READABLE, tick_cb);
        uv_check_start(&run.check, check_cb);
        open_loop_tick(&run);
    } else {
        closed_loop_pump(&run);
    }

    while (!run.finished) {
        if (uv_run(loop, UV_RUN_DEFAULT) == 0 && !run.finished) {
            /* Nothing is left that could complete the outstanding operations. */
            fprintf(stderr, "bench: target left %llu operations unfinished\n",
                    (unsigned long long)run.outstanding);
            finish(&run);
            while (run.open_handles > 0)
                uv_run(loop, UV_RUN_NOWAIT);
            release(&run);
            bench_result_clear(out);
            return -EDEADLK;
        }
    }
    while (run.open_handles > 0)
        uv_run(loop, UV_RUN_NOWAIT);
    release(&run);

    out->achieved_rate = (double)run.completed_in_window / opts->duration_s;
    if (opts->rate > 0)
        out->below_target =
            (double)run.completed_in_window < 0.99 * (double)run.scheduled_in_window;
    return 0;
}
