// ssrf-compare.mjs - what two npm SSRF filters, request-filtering-agent and ssrf-req-filter, do
// with each URL read from stdin (one a line). Prints one line per URL:
//
//   <url> TAB <request-filtering-agent verdict> TAB <ssrf-req-filter verdict>
//
// A verdict is "allowed" (the agent would open the connection), "refused" (the agent refused
// it) or "invalid" (Node's URL parser rejects the URL, so no request starts).
//
// No packet leaves this process: the socket layer under both agents (http.Agent's
// createConnection, which is net.createConnection) is replaced by a stub that only records
// where it would connect, and names resolve through a fixed table instead of DNS. Each URL goes
// the way http.request(url, {agent}) takes it: Node's WHATWG URL parser normalises the host
// (2130706433 becomes 127.0.0.1), the brackets of an IPv6 host are dropped, and the agent's
// createConnection gets {host, port}.
import { EventEmitter } from "node:events";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { urlToHttpOptions } from "node:url";

const require = createRequire(import.meta.url);

// The fixed name table (what a resolver would answer), shared with tests/test_addr_vet.c.
const NAMES = {
  "localhost": "127.0.0.1",
  "foo.localhost": "127.0.0.1",
  "example.com": "93.184.215.14",
};

function fakeLookup(host, options, cb) {
  if (typeof options === "function") cb = options, options = {};
  const address = NAMES[host.toLowerCase().replace(/\.$/, "")];
  setImmediate(() => {
    if (!address) {
      const err = new Error(`getaddrinfo ENOTFOUND ${host}`);
      err.code = "ENOTFOUND";
      return cb(err);
    }
    const family = net.isIP(address);
    if (options && options.all) cb(null, [{ address, family }]);
    else cb(null, address, family);
  });
}

// The stub socket: resolves a name with options.lookup (request-filtering-agent's validating
// wrapper) or the fixed table, emits "lookup" as net.Socket does (ssrf-req-filter listens for
// it), and records the address it would connect to. destroy() records a refusal.
function stubConnection(options, cb) {
  const sock = new EventEmitter();
  sock.verdict = null;
  sock.destroy = (err) => {
    sock.verdict = "refused";
    return sock;
  };
  const host = options.host;
  const done = (address) => {
    if (sock.verdict === null) sock.verdict = address ? "allowed" : "refused";
    sock.emit("stub-done");
  };
  if (net.isIP(host)) {
    setImmediate(() => done(host));
  } else {
    const lookup = options.lookup || fakeLookup;
    lookup(host, { all: false }, (err, address, family) => {
      if (err) return done(null);
      sock.emit("lookup", null, address, family, host);
      setImmediate(() => done(address));
    });
  }
  return sock;
}
http.Agent.prototype.createConnection = stubConnection;
https.Agent.prototype.createConnection = stubConnection;

const { RequestFilteringHttpAgent, RequestFilteringHttpsAgent } = await import(
  "request-filtering-agent"
);
const ssrfFilter = require("ssrf-req-filter");

// Runs one agent's createConnection for url; resolves to allowed / refused / invalid.
function verdict(url, makeAgent) {
  return new Promise((resolve) => {
    let opts;
    try {
      opts = urlToHttpOptions(new URL(url));
    } catch {
      return resolve("invalid");
    }
    const agent = makeAgent(url);
    let sock;
    try {
      sock = agent.createConnection({ host: opts.hostname, port: opts.port, lookup: fakeLookup }, (err) => {
        if (err) resolve("refused");
      });
    } catch {
      return resolve("refused"); // ssrf-req-filter throws for a literal it refuses
    }
    if (!(sock instanceof EventEmitter) || sock.destroyed) return resolve("refused");
    if (sock.verdict !== undefined) {
      // Our stub: wait for it to finish resolving.
      if (sock.verdict !== null) return resolve(sock.verdict);
      sock.once("stub-done", () => resolve(sock.verdict));
    } else {
      resolve("refused"); // a real net.Socket only comes back as request-filtering-agent's error
    }
  });
}

const rfa = (url) =>
  url.toLowerCase().startsWith("https") ? new RequestFilteringHttpsAgent() : new RequestFilteringHttpAgent();
const srf = (url) => ssrfFilter(url.toLowerCase());

const urls = readFileSync(0, "utf8").split("\n").filter((l) => l.length > 0);
for (const url of urls) {
  const a = await verdict(url, rfa);
  const b = await verdict(url, srf);
  process.stdout.write(`${url}\t${a}\t${b}\n`);
}
