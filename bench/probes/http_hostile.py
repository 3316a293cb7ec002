#!/usr/bin/env python3
"""http_hostile.py - measures the HTTP server of common/http.h against two hostile loads.

  1. Output amplification: CONNS connections pipeline `GET /metrics` and never read. Reports
     the server's RSS before, during and after (and its peak, VmHWM), and the latency of
     `GET /healthz` on a fresh connection from a normal client meanwhile.
  2. Slow bodies: TRICKLERS connections announce a body (--body-bytes, 8,000 by default) and
     send one byte a second.
     Reports when the server cut each one off (408 or close), counted from its first byte, and
     /healthz latency meanwhile.

It starts the server itself (a private redis-server comes with `ratelimit serve`) and stops it
with SIGTERM by PID. Usage, from the repository root:

  python3 bench/probes/http_hostile.py [build/bin/ratelimit] [--conns 100] [--tricklers 1000]

This is a measurement, not a test: its figures depend on the machine.
"""
import argparse
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def exchange(port, request, timeout=10.0):
    """One request on a fresh connection; returns (status, seconds, body)."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else -1
    return status, time.monotonic() - t0, body


def healthz_ms(port, n):
    out = []
    for _ in range(n):
        status, secs, _ = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")
        assert status == 200, status
        out.append(secs * 1000)
        time.sleep(0.05)
    return out


def fmt_ms(samples):
    return (f"median {statistics.median(samples):.2f} ms, max {max(samples):.2f} ms "
            f"({len(samples)} samples)")


def metric(port, name):
    _, _, body = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: p\r\n\r\n")
    m = re.search(rb"\n" + re.escape(name.encode()) + rb" (\d+)", body)
    return int(m.group(1)) if m else None


def amplification(pid, port, conns, seconds):
    print(f"== {conns} connections pipelining GET /metrics without reading, {seconds} s")
    exchange(port, b"GET /metrics HTTP/1.1\r\nHost: p\r\n\r\n")
    print(f"RSS before: {rss_kb(pid)} kB; /healthz before: {fmt_ms(healthz_ms(port, 10))}")
    req = b"GET /metrics HTTP/1.1\r\nHost: p\r\n\r\n" * 2000
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    sent = 0
    end = time.monotonic() + seconds
    lat = []
    while time.monotonic() < end:
        for s in socks:
            try:
                sent += s.send(req)
            except (BlockingIOError, ConnectionError):
                pass
        status, secs, _ = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")
        lat.append(secs * 1000)
        time.sleep(0.05)
    print(f"bytes of requests the server took in: {sent}")
    print(f"RSS during: {rss_kb(pid)} kB (peak VmHWM {rss_kb(pid, 'VmHWM')} kB)")
    print(f"/healthz during: {fmt_ms(lat)}")
    print("  samples (ms): " + " ".join(f"{x:.1f}" for x in lat))
    print(f"unsent output: {metric(port, 'http_output_unsent_bytes')} bytes; "
          f"blocked connections: {metric(port, 'http_connections_output_blocked')}")
    for s in socks:
        s.close()
    time.sleep(1)
    print(f"RSS after closing them: {rss_kb(pid)} kB")


def trickle(pid, port, n, limit_s, body_bytes):
    print(f"== {n} connections trickling a {body_bytes}-byte body, one byte a second")
    sel = selectors.DefaultSelector()
    t0 = {}
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/check HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % body_bytes)
        t0[s] = time.monotonic()
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    cut = {}
    got408 = 0
    lat = []
    start = time.monotonic()
    next_byte = start
    while len(cut) < n and time.monotonic() - start < limit_s:
        now = time.monotonic()
        if now >= next_byte:
            for s in socks:
                if s not in cut:
                    try:
                        s.send(b"a")
                    except (BlockingIOError, ConnectionError):
                        pass
            next_byte = now + 1.0
            status, secs, _ = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")
            lat.append(secs * 1000)
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                got408 += 1
            if s not in cut:
                cut[s] = time.monotonic() - t0[s]
            if not data:
                sel.unregister(s)
    times = sorted(cut.values())
    print(f"cut off: {len(cut)} of {n}; answered 408: {got408}")
    if times:
        print(f"time to cut off: min {times[0]:.2f} s, median {statistics.median(times):.2f} s, "
              f"max {times[-1]:.2f} s")
    print(f"/healthz meanwhile: {fmt_ms(lat)}")
    timeouts = metric(port, 'http_connection_timeouts_total{phase="request"}')
    print(f"RSS: {rss_kb(pid)} kB; request timeouts counted: {timeouts}")
    for s in socks:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?", default="build/bin/ratelimit")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--tricklers", type=int, default=1000)
    ap.add_argument("--trickle-limit", type=float, default=60)
    # Under `ratelimit serve`'s 8 KiB body limit, so the body is accepted and must trickle.
    ap.add_argument("--body-bytes", type=int, default=8000)
    args = ap.parse_args()
    proc = subprocess.Popen([args.binary, "serve", "--listen", "127.0.0.1:0", "--policy",
                             "p;q=100;w=60"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode().strip()
        port = int(line.rsplit(":", 1)[1])
        print(f"server pid {proc.pid} on port {port}")
        amplification(proc.pid, port, args.conns, args.seconds)
        if args.tricklers:
            trickle(proc.pid, port, args.tricklers, args.trickle_limit, args.body_bytes)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
