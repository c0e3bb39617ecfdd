#!/usr/bin/env python3
"""Two builds side by side: is a change within noise of before?

Runs the same load against build A and build B, interleaved over rounds
(A, B, A, B, ...), so the shared machine's drift hits both alike, and
reports the median req/s and p99 of each and the ratio B/A. shadowgate (1
worker, pinned to CPU 0 when there are 2 CPUs) mirrors 100% of requests to
v2; v1 and v2 are build A's `bench-backend --json` (4 KiB documents).
`--compare` turns `compare: true` on for the mirror.

Usage: bench/ab.py --a OLD_BINARY --b NEW_BINARY [--rounds 3] [--duration 10s] [--compare]
e.g. keep a copy of target/release/shadowgate before a refactor, rebuild,
and run `bench/ab.py --a /tmp/sg-before --b target/release/shadowgate`.
Prints a table; writes nothing into the repository but bench/out/.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402

HOST = driver.HOST
PORT = driver.PORT
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(path, compare):
    with open(path, "w") as f:
        f.write(
            f"listen: {HOST}:{PORT['sg']}\nadmin: {HOST}:{PORT['sg_admin']}\naccess_log: off\nstore: memory\n"
            "backends:\n"
            f"  v1: {{ endpoints: [\"{HOST}:{PORT['v1']}\"] }}\n"
            f"  v2: {{ endpoints: [\"{HOST}:{PORT['v2']}\"] }}\n"
            "routes:\n  - name: bench\n    backend: v1\n"
            f"    mirrors: [{{ backend: v2, percent: 100, compare: {'true' if compare else 'false'} }}]\n"
        )


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="build A (before)")
    p.add_argument("--b", required=True, help="build B (after)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", default="10s")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--compare", action="store_true")
    a = p.parse_args(argv)
    seconds = driver.duration_s(a.duration)
    builds = {"A": os.path.abspath(a.a), "B": os.path.abspath(a.b)}
    run_dir = os.path.join(ROOT, "bench", "out", "ab-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    procs = driver.Procs(run_dir)
    proxy_cpus, load_cpus = ("0", "1") if (os.cpu_count() or 1) >= 2 else (None, None)
    results = {"A": [], "B": []}
    cfg = os.path.join(run_dir, "sg.yaml")
    config(cfg, a.compare)
    try:
        for which in ("v1", "v2"):
            procs.start(f"backend-{which}", [builds["A"], "bench-backend", "--listen", f"{HOST}:{PORT[which]}",
                                             "--stats", f"{HOST}:{PORT[which + '_stats']}", "--json",
                                             "--body-bytes", "4096"], cpus=load_cpus)
        if not driver.wait_until(lambda: driver.port_open(PORT["v1"]) and driver.port_open(PORT["v2"]), 10):
            sys.exit("bench backends did not start")
        for rnd in range(1, a.rounds + 1):
            for name, binary in builds.items():
                proxy = procs.start(f"sg-{name}", [binary, "--workers", "1", "--log-format", "text", "run",
                                                   "--config", cfg], cpus=proxy_cpus)
                if not driver.wait_until(lambda: driver.http_req("GET", PORT["sg_admin"], "/readyz")[0] == 200, 15):
                    sys.exit(f"shadowgate {name} did not start (see {run_dir})")
                r = driver.wrk_measure(procs, f"http://{HOST}:{PORT['sg']}/bench", seconds, a.connections,
                                       cpus=load_cpus)
                procs.stop(proxy)
                results[name].append(r)
                print(f"round {rnd} {name}: {r.get('rps') or 0:.0f} req/s, p99 {r.get('p99_ms')} ms", flush=True)
    finally:
        procs.stop_all()

    def med(name, key):
        vals = [x[key] for x in results[name] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    print(f"\n| build | req/s (median of {a.rounds}) | p99 (median) |\n|---|--:|--:|")
    for name in ("A", "B"):
        print(f"| {name} `{builds[name]}` | {med(name, 'rps') or 0:,.0f} | {med(name, 'p99_ms')} ms |")
    ra, rb = med("A", "rps"), med("B", "rps")
    if ra and rb:
        print(f"\nB / A throughput: {rb / ra:.3f}x; per-round: "
              + ", ".join(f"{b['rps'] / x['rps']:.3f}" for x, b in zip(results["A"], results["B"])
                          if x.get("rps") and b.get("rps")))


if __name__ == "__main__":
    main(sys.argv[1:])
