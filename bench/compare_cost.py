#!/usr/bin/env python3
"""Compare on vs. off: what judging every shadow answer costs.

shadowgate (1 worker, pinned to CPU 0) mirrors 100% of requests to v2;
v1 and v2 are `shadowgate bench-backend --json` answering the same JSON
document of a few KiB (they differ in nothing, so every pair is fully
parsed and walked). Rows, interleaved over rounds: compare off, compare on.
Reports median req/s and p99 and the ratio on/off, plus how many pairs were
compared and dropped (from /metrics), and appends a section to
docs/benchmarks.md unless --no-doc.

Usage: bench/compare_cost.py [--rounds 3] [--duration 10s] [--body-bytes 4096] [--no-doc]
(bench/run builds the release binary and installs wrk first; run it, or
build with `cargo build --release` yourself.)
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (shared helpers: processes, wrk parsing, metrics parsing)

HOST = driver.HOST
PORT = driver.PORT
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(path, compare):
    flag = "true" if compare else "false"
    with open(path, "w") as f:
        f.write(
            f"listen: {HOST}:{PORT['sg']}\nadmin: {HOST}:{PORT['sg_admin']}\naccess_log: off\nstore: memory\n"
            f"comparison: {{ workers: 1, queue: 4096 }}\n"
            "backends:\n"
            f"  v1: {{ endpoints: [\"{HOST}:{PORT['v1']}\"] }}\n"
            f"  v2: {{ endpoints: [\"{HOST}:{PORT['v2']}\"] }}\n"
            "routes:\n  - name: bench\n    backend: v1\n"
            f"    mirrors: [{{ backend: v2, percent: 100, compare: {flag} }}]\n"
        )


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", default="10s")
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args(argv)
    seconds = driver.duration_s(a.duration)
    sg = os.path.join(ROOT, "target", "release", "shadowgate")
    run_dir = os.path.join(ROOT, "bench", "out", "compare-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    procs = driver.Procs(run_dir)
    cpus = os.cpu_count() or 1
    proxy_cpus, load_cpus = ("0", "1") if cpus >= 2 else (None, None)
    results = {"off": [], "on": []}
    try:
        for which in ("v1", "v2"):
            procs.start(f"backend-{which}", [sg, "bench-backend", "--listen", f"{HOST}:{PORT[which]}",
                                             "--stats", f"{HOST}:{PORT[which + '_stats']}", "--json",
                                             "--body-bytes", str(a.body_bytes)], cpus=load_cpus)
        if not driver.wait_until(lambda: driver.port_open(PORT["v1"]) and driver.port_open(PORT["v2"]), 10):
            sys.exit("bench backends did not start")
        for rnd in range(1, a.rounds + 1):
            for row in ("off", "on"):
                cfg = os.path.join(run_dir, f"sg-compare-{row}.yaml")
                config(cfg, row == "on")
                proxy = procs.start(f"sg-{row}", [sg, "--workers", "1", "--log-format", "text", "run",
                                                  "--config", cfg], cpus=proxy_cpus)
                if not driver.wait_until(lambda: driver.http_req("GET", PORT["sg_admin"], "/readyz")[0] == 200, 15):
                    sys.exit(f"shadowgate did not start (see {run_dir})")
                r = driver.wrk_measure(procs, f"http://{HOST}:{PORT['sg']}/bench", seconds, a.connections,
                                       cpus=load_cpus)
                time.sleep(1.0)
                status, body = driver.http_req("GET", PORT["sg_admin"], "/metrics")
                fams = driver.prom_families(body.decode("utf-8", "replace")) if status == 200 else {}
                r["compared"] = driver.prom_sum(fams, "shadowgate_compare", {"result": "compared"}) or 0.0
                r["dropped"] = driver.prom_sum(fams, "shadowgate_compare", {"result": "dropped"}) or 0.0
                r["mirrored"] = driver.prom_sum(fams, "shadowgate_requests", {"role": "mirror"}) or 0.0
                procs.stop(proxy)
                results[row].append(r)
                print(f"round {rnd} compare {row:3s}: {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms, "
                      f"mirrored {r['mirrored']:.0f}, compared {r['compared']:.0f}, dropped {r['dropped']:.0f}",
                      flush=True)
    finally:
        procs.stop_all()

    def med(row, key):
        vals = [x[key] for x in results[row] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    off, on = med("off", "rps"), med("on", "rps")
    cost = (1 - on / off) * 100 if off and on else None
    lines = [
        "| compare | req/s (median) | p99 | mirrored | compared | dropped (queue full) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in ("off", "on"):
        lines.append(f"| {row} | {med(row, 'rps'):,.0f} | {med(row, 'p99_ms'):.2f} ms | {med(row, 'mirrored'):,.0f} "
                     f"| {med(row, 'compared'):,.0f} | {med(row, 'dropped'):,.0f} |")
    summary = f"compare on / off throughput: {on / off:.2f}x (cost {cost:.1f}% of throughput)" if cost is not None else "n/a"
    table = "\n".join(lines)
    print("\n" + table + "\n\n" + summary)
    if not a.no_doc:
        body = (f"## Comparison cost (compare on vs. off)\n\n"
                f"`bench/compare_cost.py --rounds {a.rounds} --duration {a.duration} --body-bytes {a.body_bytes}`, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: shadowgate with 1 worker on CPU 0, "
                f"mirror 100%, JSON answers of {a.body_bytes} bytes, one comparison worker thread "
                f"(it runs on the other CPU, shared with wrk and the backends). Medians of {a.rounds} interleaved rounds.\n\n"
                f"{table}\n\n{summary}")
        driver.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "compare-cost", body)


if __name__ == "__main__":
    main(sys.argv[1:])
