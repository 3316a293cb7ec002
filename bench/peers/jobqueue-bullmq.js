#!/usr/bin/env node
// jobqueue-bullmq.js - the peer measurement for jobqueue/: BullMQ (a Queue and a Worker over
// ioredis, at BullMQ's defaults except the worker's concurrency) on a given Redis, under the
// load of bench's jobqueue.* scenarios.
//
//   node jobqueue-bullmq.js --redis URL [--mode throughput|latency|drain] [--concurrency 50]
//                           [--duration 5] [--warmup 1] [--in-flight N]
//                           [--bulk 100] [--rate 1000] [--drain 20] [--jobs 20000]
//
// --mode throughput (default): no-op jobs, enqueue -> complete, in jobs/s. A producer in this
//   process adds jobs with Queue.addBulk, --bulk at a time (--bulk 1: Queue.add, --concurrency
//   calls in flight at once), keeping at most
//   10 x --concurrency jobs enqueued and not completed, while a Worker with --concurrency and a
//   no-op processor completes them. achieved_rate is the jobs completed within the measured
//   --duration (after --warmup) per second; p50/p99 are enqueue -> complete of those jobs.
// --mode latency: open loop. Jobs are added one by one (Queue.add) at --rate per second, each
//   at a planned time start + i/rate, whatever happened to the jobs before it (no coordinated
//   omission: a stall delays the planned times of nothing). Latency is from the planned add
//   time to the moment the Worker's processor starts the job (enqueue -> start), measured with
//   process.hrtime.bigint() in this one process, so both ends read one clock; the figures
//   from the actual add call (uncorrected) and to completion are reported beside. Jobs planned
//   in the warm-up are not counted. After --duration, no more jobs are added and the run waits
//   up to --drain seconds for the rest to start; one that never starts counts as an error.
//   achieved_rate is the rate of jobs added in the measured window.
// --mode drain: BullMQ at its best, the worker alone: --jobs no-op jobs are enqueued first
//   (addBulk, 1,000 a call, not timed), then a Worker with --concurrency starts and the time
//   from its start to the last completion is measured. achieved_rate is jobs/s; no latency.
//   The other modes pay for their producer in this process, as a job queue's users do.
// --in-flight is a synonym of --concurrency (bench's {in_flight} placeholder).
//
// Every run uses its own queue name (bench-PID-TIME) and removes its keys afterwards
// (Queue.obliterate), so runs do not see each other's jobs. BullMQ keeps completed jobs by
// default (removeOnComplete unset): that is part of the default cost measured.
//
// Prints one human line and one JSON line, the result line bench run reads (bench/peers.h):
// achieved_rate, p50_us, p99_us (required), max_us, count, errors, and p95_us, p999_us, mode,
// concurrency, rate, the uncorrected and enqueue -> complete percentiles.
//
// Registered in bench/scenarios_peers.c beside each jobqueue.* scenario (throughput --bulk 1 and
// 100, latency --rate 1000 and 5000, --concurrency 50 as ours): `bench run` runs it right after
// ours on the same Redis. By hand: bench/README.md.
'use strict';

const IORedis = require('ioredis');
const { Queue, Worker } = require('bullmq');

function usage(msg) {
  const text = 'usage: node jobqueue-bullmq.js --redis URL [--mode throughput|latency|drain] ' +
    '[--concurrency N] [--duration S] [--warmup S] [--bulk N] [--rate R] [--drain S] ' +
    '[--jobs N]\n';
  if (msg) {
    process.stderr.write(`jobqueue-bullmq: ${msg}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

function parseArgs(argv) {
  const o = {
    redis: process.env.REDIS_URL || 'redis://127.0.0.1:6379', mode: 'throughput',
    concurrency: 50, duration: 5, warmup: 1, bulk: 100, rate: 1000, drain: 20, jobs: 20000,
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--redis') o.redis = next();
    else if (a === '--mode') o.mode = next();
    else if (a === '--concurrency' || a === '--in-flight') o.concurrency = Number(next());
    else if (a === '--duration') o.duration = Number(next());
    else if (a === '--warmup') o.warmup = Number(next());
    else if (a === '--bulk') o.bulk = Number(next());
    else if (a === '--rate') o.rate = Number(next());
    else if (a === '--drain') o.drain = Number(next());
    else if (a === '--jobs') o.jobs = Number(next());
    else if (a === '-h' || a === '--help') usage(null);
    else usage(`unknown argument '${a}'`);
  }
  if (!['throughput', 'latency', 'drain'].includes(o.mode)) {
    usage('--mode is throughput, latency or drain');
  }
  for (const k of ['concurrency', 'duration', 'bulk', 'rate', 'jobs']) {
    if (!Number.isFinite(o[k]) || o[k] <= 0) usage(`--${k} must be a number > 0`);
  }
  for (const k of ['warmup', 'drain']) {
    if (!Number.isFinite(o[k]) || o[k] < 0) usage(`--${k} must be a number >= 0`);
  }
  o.concurrency = Math.floor(o.concurrency);
  o.bulk = Math.floor(o.bulk);
  o.jobs = Math.floor(o.jobs);
  return o;
}

// Exact percentiles over every sample (microseconds), sorted.
function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return Math.round(sorted[Math.max(0, i)]);
}

function summary(samples) {
  const s = Float64Array.from(samples).sort();
  return {
    p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99),
    p999: percentile(s, 99.9), max: Math.round(s.length ? s[s.length - 1] : 0),
  };
}

function connection(url) {
  // A unix:///path URL (as bench takes) is a Unix socket, which ioredis names by its path.
  // BullMQ's workers need maxRetriesPerRequest: null (their blocking commands must not fail).
  const target = url.startsWith('unix://') ? url.slice('unix://'.length) : url;
  return new IORedis(target, { maxRetriesPerRequest: null });
}

const now = () => process.hrtime.bigint();
const usSince = (t0, t1) => Number(t1 - t0) / 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function throughput(o, queue, name, conn) {
  const t0 = now();
  const warmEnd = t0 + BigInt(Math.round(o.warmup * 1e9));
  const end = warmEnd + BigInt(Math.round(o.duration * 1e9));
  const backlog = 10 * o.concurrency;
  const added = new Map(); // job id -> add time
  let enqueued = 0, completed = 0, counted = 0, errors = 0;
  const lat = [];
  let wake = null;

  const worker = new Worker(name, async () => {}, { connection: conn, concurrency: o.concurrency });
  worker.on('completed', (job) => {
    const t = now();
    completed++;
    const a = added.get(job.id);
    added.delete(job.id);
    if (t >= warmEnd && t <= end) {
      counted++;
      if (a !== undefined) lat.push(usSince(a, t));
    }
    if (wake) { const w = wake; wake = null; w(); }
  });
  worker.on('failed', () => { errors++; });
  await worker.waitUntilReady();

  for (let batch = 0; now() < end; batch++) {
    if (enqueued - completed >= backlog) {
      await new Promise((r) => { wake = r; });
      continue;
    }
    const t = now();
    if (o.bulk === 1) {
      // One job per Queue.add, --concurrency of them in flight at once (pipelined on the
      // connection), so the producer is not one round trip per job.
      const res = await Promise.all(Array.from({ length: o.concurrency },
        (_, k) => queue.add('noop', { i: enqueued + k })));
      for (const job of res) added.set(job.id, t);
      enqueued += o.concurrency;
      continue;
    } else {
      const jobs = [];
      for (let i = 0; i < o.bulk; i++) jobs.push({ name: 'noop', data: { i: enqueued + i } });
      const res = await queue.addBulk(jobs);
      for (const job of res) added.set(job.id, t);
    }
    enqueued += o.bulk;
  }
  await worker.close(true);
  return { counted, errors, lat, enqueued, completed };
}

async function latency(o, queue, name, conn) {
  const t0 = now();
  const warmEnd = t0 + BigInt(Math.round(o.warmup * 1e9));
  const end = warmEnd + BigInt(Math.round(o.duration * 1e9));
  const periodNs = 1e9 / o.rate;
  const planned = new Map(); // job index -> {planned, added}
  const startLat = [], rawLat = [], doneLat = [];
  let started = 0, addErrors = 0, expected = 0;

  const worker = new Worker(name, async (job) => {
    const t = now();
    const p = planned.get(job.data.i);
    if (p && p.measured) {
      startLat.push(usSince(p.planned, t));
      rawLat.push(usSince(p.added, t));
      started++;
    }
  }, { connection: conn, concurrency: o.concurrency });
  worker.on('completed', (job) => {
    const p = planned.get(job.data.i);
    if (p) {
      if (p.measured) doneLat.push(usSince(p.planned, now()));
      planned.delete(job.data.i);
    }
  });
  await worker.waitUntilReady();

  // The planned time of job i is t0 + i * period; every turn adds every job now due.
  let i = 0;
  const adds = [];
  for (;;) {
    const t = now();
    if (t >= end) break;
    const due = Math.floor(Number(t - t0) / periodNs);
    for (; i <= due; i++) {
      const plannedAt = t0 + BigInt(Math.round(i * periodNs));
      if (plannedAt >= end) break;
      const measured = plannedAt >= warmEnd;
      if (measured) expected++;
      planned.set(i, { planned: plannedAt, added: now(), measured });
      adds.push(queue.add('noop', { i }).catch(() => { addErrors++; }));
    }
    await sleep(1);
  }
  await Promise.all(adds);
  const drainEnd = now() + BigInt(Math.round(o.drain * 1e9));
  while (started < expected - addErrors && now() < drainEnd) await sleep(10);
  await worker.close(true);
  return { expected, started, addErrors, startLat, rawLat, doneLat };
}

async function drain(o, queue, name, conn) {
  // Fill the queue first (not measured), then time the worker alone.
  for (let i = 0; i < o.jobs; i += 1000) {
    const n = Math.min(1000, o.jobs - i);
    await queue.addBulk(Array.from({ length: n }, (_, k) => ({ name: 'noop', data: { i: i + k } })));
  }
  let completed = 0, errors = 0, first = null, last = null;
  let done;
  const finished = new Promise((r) => { done = r; });
  const worker = new Worker(name, async () => {}, { connection: conn, concurrency: o.concurrency,
                                                   autorun: false });
  worker.on('completed', () => {
    last = now();
    if (first === null) first = last;
    if (++completed + errors === o.jobs) done();
  });
  worker.on('failed', () => { if (completed + ++errors === o.jobs) done(); });
  const t0 = now();
  worker.run();
  const limit = sleep(o.drain * 1000 + o.jobs).then(() => 'timeout');
  await Promise.race([finished, limit]);
  await worker.close(true);
  return { completed, errors, seconds: Number((last || t0) - t0) / 1e9 };
}

async function main() {
  const o = parseArgs(process.argv);
  const name = `bench-${process.pid}-${Date.now()}`;
  const qconn = connection(o.redis);
  const wconn = connection(o.redis);
  const queue = new Queue(name, { connection: qconn });
  await queue.waitUntilReady();
  const version = require('bullmq/package.json').version;
  let result;
  try {
    if (o.mode === 'drain') {
      const r = await drain(o, queue, name, wconn);
      const rate = r.seconds > 0 ? r.completed / r.seconds : 0;
      result = {
        peer: 'bullmq', version, mode: 'drain', concurrency: o.concurrency, jobs: o.jobs,
        in_flight: o.concurrency, duration_s: Math.round(r.seconds * 1000) / 1000,
        achieved_rate: Math.round(rate * 10) / 10, count: r.completed,
        errors: r.errors + (o.jobs - r.completed - r.errors), p50_us: 0, p99_us: 0,
      };
      process.stdout.write(
        `bullmq ${version} drain: ${r.completed} of ${o.jobs} queued no-op jobs completed in ` +
        `${r.seconds.toFixed(2)} s, ${Math.round(rate)} jobs/s (concurrency ${o.concurrency})\n`);
    } else if (o.mode === 'throughput') {
      const r = await throughput(o, queue, name, wconn);
      const s = summary(r.lat);
      result = {
        peer: 'bullmq', version, mode: 'throughput', concurrency: o.concurrency, bulk: o.bulk,
        in_flight: o.concurrency, duration_s: o.duration,
        achieved_rate: Math.round((r.counted / o.duration) * 10) / 10,
        count: r.counted, errors: r.errors,
        p50_us: s.p50, p95_us: s.p95, p99_us: s.p99, p999_us: s.p999, max_us: s.max,
      };
      process.stdout.write(
        `bullmq ${version} throughput: ${Math.round(result.achieved_rate)} jobs/s completed ` +
        `(concurrency ${o.concurrency}, ${o.bulk === 1 ? 'Queue.add' : 'addBulk ' + o.bulk}), ` +
        'enqueue->complete ' +
        `p50 ${(s.p50 / 1000).toFixed(2)} ms p99 ${(s.p99 / 1000).toFixed(2)} ms, ` +
        `${r.errors} failed\n`);
    } else {
      const r = await latency(o, queue, name, wconn);
      const s = summary(r.startLat), raw = summary(r.rawLat), done = summary(r.doneLat);
      const errors = r.expected - r.started;
      result = {
        peer: 'bullmq', version, mode: 'latency', concurrency: o.concurrency, rate: o.rate,
        in_flight: o.concurrency, duration_s: o.duration,
        achieved_rate: Math.round((r.expected / o.duration) * 10) / 10,
        count: r.started, errors,
        p50_us: s.p50, p95_us: s.p95, p99_us: s.p99, p999_us: s.p999, max_us: s.max,
        uncorrected_p50_us: raw.p50, uncorrected_p99_us: raw.p99,
        complete_p50_us: done.p50, complete_p99_us: done.p99, complete_p999_us: done.p999,
      };
      process.stdout.write(
        `bullmq ${version} latency at ${o.rate} jobs/s (concurrency ${o.concurrency}): ` +
        `enqueue->start p50 ${(s.p50 / 1000).toFixed(2)} ms p95 ${(s.p95 / 1000).toFixed(2)} ms ` +
        `p99 ${(s.p99 / 1000).toFixed(2)} ms p99.9 ${(s.p999 / 1000).toFixed(2)} ms ` +
        `max ${(s.max / 1000).toFixed(2)} ms; enqueue->complete p99 ` +
        `${(done.p99 / 1000).toFixed(2)} ms; ${r.started} of ${r.expected} started\n`);
    }
  } finally {
    await queue.obliterate({ force: true }).catch(() => {});
    await queue.close();
    qconn.disconnect();
    wconn.disconnect();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`jobqueue-bullmq: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
});
