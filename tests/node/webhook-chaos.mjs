// webhook-chaos.mjs - a faulty network in front of a real webhook receiver, for
// tests/test_webhook_chaos.c. The sender delivers to this process; this process checks every
// attempt with the npm standardwebhooks package and then, at random per attempt, fails it or
// passes it on to the receiver:
//
//   node webhook-chaos.mjs --forward http://127.0.0.1:PORT/hook --seed N
//          [--fail 0.30] [--hang 0.05]
//   (the endpoint's secret, whsec_..., in the environment: CHAOS_SECRET)
//
//   each attempt (POST, any path)
//     |  verify: Webhook(secret).verify(raw body, headers); a failure is counted, the attempt
//     |  goes on (the receiver behind answers it 401)
//     v
//   draw r in [0, 1) from a PRNG seeded with N (mulberry32: one seed, one sequence of draws)
//     r < fail                       answer 500, the receiver never hears of it
//     r < fail + hang / 2            hang BEFORE: never answer, the receiver never hears of it
//     r < fail + hang                hang AFTER: pass it on, wait for the receiver's answer,
//                                    then never answer (the side effect happened, the sender
//                                    sees a timeout and retries: the receiver's dedupe must
//                                    absorb the retry)
//     else                           pass it on and answer with the receiver's status and body
//
// Passing on sends the raw body bytes and the request's headers (without the hop-by-hop ones)
// to the receiver, unchanged. The draws follow the order in which attempts arrive, so a seed
// fixes the sequence of faults, not which message gets which.
//
// Prints "listening on http://127.0.0.1:PORT" on stdout once it listens (the command kit's
// line, which tests/support.h's server spawn waits for), then nothing more on stdout.
// GET /stats answers the counts as JSON:
//   {"seed","attempts","verified","verify_failures","answered_500","hang_before","hang_after",
//    "forwarded","forward_errors","receiver_status":{"200":n,...},"receiver_duplicates",
//    "ids"}  (ids: distinct webhook-ids seen)
// The first verification failure's message goes to stderr. SIGTERM closes every connection
// (the hanging ones too) and exits 0.
import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Webhook } = require("standardwebhooks");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const forward = new URL(arg("--forward", ""));
const seed = Number(arg("--seed", "1")) >>> 0;
const pFail = Number(arg("--fail", "0.30"));
const pHang = Number(arg("--hang", "0.05"));
const secret = process.env.CHAOS_SECRET;
if (!secret || !forward.host) {
  process.stderr.write("webhook-chaos: need --forward URL and CHAOS_SECRET\n");
  process.exit(2);
}
const wh = new Webhook(secret);

// mulberry32 (Tommy Ettinger's 32-bit generator): small, seedable, good enough for fault draws.
let state = seed;
function draw() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const stats = {
  seed,
  attempts: 0,
  verified: 0,
  verify_failures: 0,
  answered_500: 0,
  hang_before: 0,
  hang_after: 0,
  forwarded: 0,
  forward_errors: 0,
  receiver_status: {},
  receiver_duplicates: 0,
  ids: 0,
};
const ids = new Set();
const HOP = new Set(["host", "connection", "keep-alive", "transfer-encoding", "content-length",
  "expect", "te", "trailer", "upgrade", "proxy-connection"]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

// Passes the attempt on; calls done(status, headers, body) with the receiver's answer, or
// done(502, ...) when the receiver could not be reached.
function passOn(req, body, done) {
  const headers = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i];
    if (!HOP.has(name.toLowerCase())) headers[name] = req.rawHeaders[i + 1];
  }
  headers["Content-Length"] = String(body.length);
  stats.forwarded++;
  const out = http.request({
    host: forward.hostname, port: forward.port, path: forward.pathname, method: "POST",
    headers, agent,
  }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => {
      const rb = Buffer.concat(chunks);
      const k = String(res.statusCode);
      stats.receiver_status[k] = (stats.receiver_status[k] || 0) + 1;
      if (rb.includes('"duplicate"')) stats.receiver_duplicates++;
      done(res.statusCode, res.headers["content-type"], rb);
    });
  });
  out.on("error", (e) => {
    stats.forward_errors++;
    done(502, "text/plain", Buffer.from(`forward failed: ${e.message}`));
  });
  out.end(body);
}

function onAttempt(req, res, body) {
  stats.attempts++;
  const id = req.headers["webhook-id"];
  if (id && !ids.has(id)) {
    ids.add(id);
    stats.ids++;
  }
  try {
    wh.verify(body, {
      "webhook-id": req.headers["webhook-id"],
      "webhook-timestamp": req.headers["webhook-timestamp"],
      "webhook-signature": req.headers["webhook-signature"],
    });
    stats.verified++;
  } catch (e) {
    if (stats.verify_failures++ === 0)
      process.stderr.write(`webhook-chaos: ${id}: standardwebhooks refused: ${e.message}\n`);
  }
  const r = draw();
  if (r < pFail) {
    stats.answered_500++;
    res.writeHead(500, { "Content-Type": "text/plain" });
    res.end("chaos: 500");
  } else if (r < pFail + pHang / 2) {
    stats.hang_before++; // never answered; the sender's timeout closes the connection
  } else if (r < pFail + pHang) {
    stats.hang_after++;
    passOn(req, body, () => {}); // the receiver answered; the sender never hears it
  } else {
    passOn(req, body, (status, type, rb) => {
      if (res.destroyed) return; // the sender gave up first: its timeout, a retry follows
      res.writeHead(status, { "Content-Type": type || "text/plain" });
      res.end(rb);
    });
  }
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/stats") {
    const text = Buffer.from(JSON.stringify(stats));
    res.writeHead(200, { "Content-Type": "application/json", "Content-Length": text.length });
    res.end(text);
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => onAttempt(req, res, Buffer.concat(chunks)));
});
server.requestTimeout = 0; // a hanging attempt stays open until the sender closes it
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`listening on http://127.0.0.1:${server.address().port}\n`);
  process.stderr.write(`webhook-chaos: seed ${seed}, 500 on ${pFail}, hang on ${pHang}\n`);
});
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  agent.destroy();
});
