// webhook-check.mjs - the npm standardwebhooks package as the other side of our signatures.
// Reads one JSON object a line from stdin and prints one line for each:
//
//   {"op":"verify","secret":"whsec_...","id":"...","ts":"...","sig":"...","body":"<base64>"}
//       -> "ok", or "fail <the package's message>"
//   {"op":"sign","secret":"whsec_...","id":"...","ts":1764880000,"body":"<base64>"}
//       -> the webhook-signature value the package computes
//
// Bodies travel as base64 so that any bytes (invalid UTF-8 included) reach the package as the
// raw Buffer a receiver would hand it. verify() runs with jsonParse off: it checks, it does not
// parse. The package checks the timestamp against this process's clock (5 minutes either way).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const { Webhook } = require("standardwebhooks");

const lines = readFileSync(0, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
for (const line of lines) {
  const c = JSON.parse(line);
  const body = Buffer.from(c.body, "base64");
  try {
    const wh = new Webhook(c.secret);
    if (c.op === "sign") {
      out.push(wh.sign(c.id, new Date(c.ts * 1000), body));
    } else {
      wh.verify(body, { "webhook-id": c.id, "webhook-timestamp": c.ts, "webhook-signature": c.sig }, { jsonParse: false });
      out.push("ok");
    }
  } catch (e) {
    out.push(`fail ${String(e.message).replace(/\s+/g, " ")}`);
  }
}
process.stdout.write(out.join("\n") + (out.length ? "\n" : ""));
