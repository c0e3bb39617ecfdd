#!/usr/bin/env python3
"""Egress bench (issue #13): does the shadow side slow the live side?

Starts a provider (`shadowgate bench-backend`) and shadowgate with an
`egress:` block on loopback ports, then measures with wrk, in one run:

1. direct: live-style calls straight to the provider (no egress);
2. the same calls through shadowgate's main listener (a route to the
   provider, no mirror): the reference cost of one proxy hop in this build;
3. live: the same calls through the egress live side (forwarded and kept);
4. live + flood: the same again while a second wrk floods the shadow side
   with calls that find no live exchange (each takes a slot, waits
   `wait`, gets the fallback).

Prints p50 / p99 of each and the ratios: live+flood p99 over live p99
(the issue's bound: at most 1.10), and the egress overhead per call
(live p50 minus direct p50). Standard library only; every process it
starts is killed on exit; every load run is bounded in time.

Usage: bench/egress.py [--bin target/debug/shadowgate] [--seconds 8]
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after {timeout}s")


def start(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    PROCS.append(p)
    return p


def stop_all(*_):
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()


def latency_ms(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        sys.exit(f"no {pct}% line in wrk output:\n{text}")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def rate(text):
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    return float(m.group(1)) if m else 0.0


def wrk(url, script, seconds, conns, threads=1):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script, url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "shadowgate"))
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--live-conns", type=int, default=8)
    ap.add_argument("--flood-conns", type=int, default=64)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        provider = free_port()
        start([a.bin, "bench-backend", "--listen", f"127.0.0.1:{provider}", "--body-bytes", "64"])
        wait_port(provider)
        listen, admin, live, shadow = (free_port() for _ in range(4))
        cfg = f"""listen: 127.0.0.1:{listen}
admin: 127.0.0.1:{admin}
access_log: off
store: memory
backends:
  app: {{ endpoints: ["127.0.0.1:{provider}"] }}
  provider: {{ endpoints: ["127.0.0.1:{provider}"] }}
routes:
  - {{ name: app, backend: app }}
egress:
  listen: 127.0.0.1:{live}
  shadow_listen: 127.0.0.1:{shadow}
  services:
    - {{ name: payments, match: {{ host: payments.example }}, backend: provider, wait: 5ms, compare: true }}
"""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(cfg)
        start([a.bin, "run", "--config", f.name])
        wait_port(live)
        wait_port(shadow)
        live_lua = os.path.join(BENCH, "egress_live.lua")
        flood_lua = os.path.join(BENCH, "egress_flood.lua")
        # Warm-up, not measured.
        wrk(f"http://127.0.0.1:{live}", live_lua, 2, a.live_conns).communicate()

        direct = wrk(f"http://127.0.0.1:{provider}", live_lua, a.seconds, a.live_conns).communicate()[0]
        proxied = wrk(f"http://127.0.0.1:{listen}", live_lua, a.seconds, a.live_conns).communicate()[0]
        alone = wrk(f"http://127.0.0.1:{live}", live_lua, a.seconds, a.live_conns).communicate()[0]
        flood = wrk(f"http://127.0.0.1:{shadow}", flood_lua, a.seconds + 2, a.flood_conns)
        time.sleep(1)  # let the flood reach its pace before measuring
        flooded = wrk(f"http://127.0.0.1:{live}", live_lua, a.seconds, a.live_conns).communicate()[0]
        flood_out = flood.communicate()[0]

        rows = [("direct to provider", direct), ("main proxy (reference)", proxied), ("egress live side", alone), ("live side, shadow flooded", flooded)]
        print(f"{'scenario':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for name, out in rows:
            print(f"{name:28} {rate(out):9.0f} {latency_ms(out, 50):8.2f} {latency_ms(out, 99):8.2f}")
        print(f"{'shadow flood (fallbacks)':28} {rate(flood_out):9.0f}")
        ratio = latency_ms(flooded, 99) / latency_ms(alone, 99)
        overhead = latency_ms(alone, 50) - latency_ms(direct, 50)
        print(f"live p99 with the shadow side flooded / alone: {ratio:.2f} (bound 1.10)")
        print(f"egress overhead per call (p50): {overhead:.3f} ms")
        os.unlink(f.name)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
