#!/usr/bin/env node
// ratelimit-flexible.js - the peer measurement for ratelimit/: Node's rate-limiter-flexible
// (RateLimiterRedis over ioredis) under the load of bench's ratelimit.*.closed scenarios:
// 50 checks in flight (closed loop), keys drawn uniformly from 10,000, a quota of 10 per 1 s.
//
//   node ratelimit-flexible.js --redis redis://127.0.0.1:6379 [--duration 4] [--warmup 1]
//                              [--in-flight 50] [--keys 10000] [--points 10] [--window 1]
//                              [--block-in-memory]
//
// --block-in-memory turns on rate-limiter-flexible's inMemoryBlockOnConsumed, its counterpart
// of our deny cache (a key over its quota is refused in process until its window ends).
//
// Prints one human line and one JSON line: decisions/s (completed checks over the measured
// time, allowed and denied alike), p50/p99/max in microseconds (exact: every latency is kept and
// sorted), and the counts. A check that fails (Redis error) is counted as an error, not a
// decision. Latency runs from the call to consume() to the settling of its promise, measured with
// process.hrtime.bigint().
'use strict';

const Redis = require('ioredis');
const { RateLimiterRedis, RateLimiterRes } = require('rate-limiter-flexible');

function parseArgs(argv) {
  const o = {
    redis: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
    duration: 4, warmup: 1, inFlight: 50, keys: 10000, points: 10, window: 1, block: false,
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--redis') o.redis = next();
    else if (a === '--duration') o.duration = Number(next());
    else if (a === '--warmup') o.warmup = Number(next());
    else if (a === '--in-flight') o.inFlight = Number(next());
    else if (a === '--keys') o.keys = Number(next());
    else if (a === '--points') o.points = Number(next());
    else if (a === '--window') o.window = Number(next());
    else if (a === '--block-in-memory') o.block = true;
    else if (a === '-h' || a === '--help') usage(null);
    else usage(`unknown argument '${a}'`);
  }
  for (const k of ['duration', 'warmup', 'inFlight', 'keys', 'points', 'window']) {
    if (!Number.isFinite(o[k]) || o[k] < 0) usage(`--${k} must be a number >= 0`);
  }
  return o;
}

function usage(msg) {
  const text = 'usage: node ratelimit-flexible.js --redis URL [--duration S] [--warmup S] ' +
    '[--in-flight N] [--keys N] [--points Q] [--window W] [--block-in-memory]\n';
  if (msg) {
    process.stderr.write(`ratelimit-flexible: ${msg}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)];
}

async function main() {
  const o = parseArgs(process.argv);
  // A unix:///path URL (as bench takes) is a Unix socket, which ioredis names by its path.
  const target = o.redis.startsWith('unix://') ? o.redis.slice('unix://'.length) : o.redis;
  const redis = new Redis(target, { enableOfflineQueue: true, maxRetriesPerRequest: 1 });
  await redis.ping();
  const limiter = new RateLimiterRedis({
    storeClient: redis,
    keyPrefix: 'rlfbench',
    points: o.points,
    duration: o.window,
    inMemoryBlockOnConsumed: o.block ? o.points + 1 : 0,
    inMemoryBlockDuration: o.block ? o.window : 0,
  });

  const start = process.hrtime.bigint();
  const warmEnd = start + BigInt(Math.round(o.warmup * 1e9));
  const end = warmEnd + BigInt(Math.round(o.duration * 1e9));
  const latencies = [];
  let allowed = 0, denied = 0, errors = 0;

  // One worker per slot in flight: each starts its next check as soon as the last settles.
  async function worker() {
    for (;;) {
      const t0 = process.hrtime.bigint();
      if (t0 >= end) return;
      const key = 'user' + Math.floor(Math.random() * o.keys);
      let outcome;
      try {
        await limiter.consume(key, 1);
        outcome = 'allowed';
      } catch (e) {
        outcome = e instanceof RateLimiterRes ? 'denied' : 'error';
      }
      const t1 = process.hrtime.bigint();
      if (t0 >= warmEnd && t1 <= end) {
        if (outcome === 'allowed') allowed++;
        else if (outcome === 'denied') denied++;
        else errors++;
        if (outcome !== 'error') latencies.push(Number(t1 - t0) / 1000);
      }
    }
  }
  await Promise.all(Array.from({ length: o.inFlight }, worker));
  redis.disconnect();

  latencies.sort((a, b) => a - b);
  const decisions = allowed + denied;
  const result = {
    peer: 'rate-limiter-flexible',
    version: require('rate-limiter-flexible/package.json').version,
    block_in_memory: o.block,
    in_flight: o.inFlight,
    keys: o.keys,
    points: o.points,
    window_s: o.window,
    duration_s: o.duration,
    decisions_per_s: Math.round(decisions / o.duration),
    // What bench run reads (bench/peers.h): completions per second, errors included, as
    // bench counts its own, and their count.
    achieved_rate: Math.round(((decisions + errors) / o.duration) * 10) / 10,
    count: decisions + errors,
    allowed,
    denied,
    errors,
    p50_us: Math.round(percentile(latencies, 50)),
    p99_us: Math.round(percentile(latencies, 99)),
    max_us: Math.round(latencies.length ? latencies[latencies.length - 1] : 0),
  };
  process.stdout.write(
    `rate-limiter-flexible ${result.version}${o.block ? ' (inMemoryBlockOnConsumed)' : ''}: ` +
    `${result.decisions_per_s} decisions/s, p50 ${(result.p50_us / 1000).toFixed(2)} ms, ` +
    `p99 ${(result.p99_us / 1000).toFixed(2)} ms, max ${(result.max_us / 1000).toFixed(2)} ms, ` +
    `${allowed} allowed, ${denied} denied, ${errors} errors\n`);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`ratelimit-flexible: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
});
