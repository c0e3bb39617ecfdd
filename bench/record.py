#!/usr/bin/env python3
"""Recording bench (issue #17): what does `record: {percent: 100}` cost?

Starts a backend (`shadowgate bench-backend`) and, row after row, the
proxy with one route to it, on free loopback ports:

  plain   the route without `record`
  record  the same route with `record: {percent: 100}` to a file in a
          temporary directory (deleted at the end)

Rows are interleaved over rounds (plain, record, plain, record, ...) so
the machine's drift hits both alike. Each row gets one second of warm-up
and `wrk -t2 -c<connections>` for `--duration`. Reported per row (medians):
req/s, p99, the proxy's CPU time per request (all its threads, warm-up
included; steadier than req/s on a shared machine), and for `record` the
records written and dropped (from /metrics). The row the issue states:
record / plain throughput (target: ≥ 0.90, i.e. at most 10% lost).

Scenarios: `get` (64-byte answers) and `post` (request bodies of
`--body-bytes`, bench/post.lua). Both rows log nothing (`access_log:
off`), so the difference is the recording alone.

Usage: bench/record.py [--bin target/release/shadowgate] [--rounds 3]
                       [--duration 10s] [--scenarios get,post] [--doc]
Writes its table into docs/benchmarks.md (section "Recording") only with
--doc. Standard library only (plus wrk); every process it starts is
stopped on exit; every load run is bounded in time.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (processes, wrk, metrics parsing)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = driver.HOST
ROWS = ["plain", "record"]


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def write_config(d, row, ports, backend):
    record = ""
    if row == "record":
        # Two files of at most 64 MiB: a long run rotates instead of
        # filling the disk.
        record = f"    record: {{ file: {os.path.join(d, 'captures', 'bench.jsonl')}, percent: 100, max_files: 2 }}\n"
    path = os.path.join(d, row + ".yaml")
    with open(path, "w") as f:
        f.write(
            f"listen: {HOST}:{ports['listen']}\nadmin: {HOST}:{ports['admin']}\n"
            "access_log: off\nstore: memory\n"
            f"backends:\n  v1: {{ endpoints: [\"{HOST}:{backend}\"] }}\n"
            f"routes:\n  - name: bench\n    backend: v1\n{record}"
        )
    return path


def record_counts(admin):
    status, body = driver.http_req("GET", admin, "/metrics")
    if status != 200:
        return None, None
    fams = driver.prom_families(body.decode("utf-8", "replace"))
    return (driver.prom_sum(fams, "shadowgate_record_written") or 0.0,
            driver.prom_sum(fams, "shadowgate_record_dropped") or 0.0)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", default="10s")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--scenarios", default="get,post")
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    a = p.parse_args(argv)
    a.bin = os.path.abspath(a.bin)
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"{a.bin}: not an executable (build it, or pass --bin)")
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (bench/run installs it)")
    seconds = driver.duration_s(a.duration)
    scenarios = [s for s in a.scenarios.split(",") if s]
    run_dir = os.path.join(ROOT, "bench", "out", "record-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="sg-record-bench-")
    procs = driver.Procs(run_dir)
    results = {s: {r: [] for r in ROWS} for s in scenarios}
    try:
        backend, stats = free_port(), free_port()
        procs.start("backend", [a.bin, "bench-backend", "--listen", f"{HOST}:{backend}",
                                "--stats", f"{HOST}:{stats}"])
        if not driver.wait_until(lambda: driver.port_open(backend), 10):
            sys.exit("the bench backend did not start")
        for rnd in range(1, a.rounds + 1):
            for scn in scenarios:
                for row in ROWS:
                    ports = {"listen": free_port(), "admin": free_port()}
                    cfg = write_config(data_dir, row, ports, backend)
                    proxy = procs.start(f"sg-{row}", [a.bin, "run", "--config", cfg])
                    ok = driver.wait_until(
                        lambda: driver.http_req("GET", ports["admin"], "/readyz")[0] == 200, 20)
                    if not ok or proxy.poll() is not None:
                        procs.stop(proxy)
                        sys.exit(f"shadowgate did not become ready (log: {run_dir}/sg-{row}.log)")
                    try:
                        env = {"BENCH_BODY_BYTES": str(a.body_bytes)}
                        script = os.path.join(ROOT, "bench", "post.lua") if scn == "post" else None
                        tree = driver.process_tree(proxy.pid)
                        ticks = driver.proc_ticks(tree)
                        before = driver.http_req("GET", stats, "/stats")
                        served0 = json.loads(before[1]).get("requests", 0) if before[0] == 200 else 0
                        r = driver.wrk_measure(procs, f"http://{HOST}:{ports['listen']}/bench", seconds,
                                               a.connections, script=script, env=env)
                        ticks = driver.proc_ticks(tree) - ticks
                        after = driver.http_req("GET", stats, "/stats")
                        served = (json.loads(after[1]).get("requests", 0) if after[0] == 200 else 0) - served0
                        if served:
                            r["cpu_us"] = ticks * 1e6 / os.sysconf("SC_CLK_TCK") / served
                        if row == "record":
                            # Written records are counted when their buffer
                            # is flushed, at least every second.
                            time.sleep(1.5)
                            r["written"], r["dropped"] = record_counts(ports["admin"])
                    finally:
                        procs.stop(proxy)
                    shutil.rmtree(os.path.join(data_dir, "captures"), ignore_errors=True)
                    results[scn][row].append(r)
                    extra = (f", written {r.get('written') or 0:.0f}, dropped {r.get('dropped') or 0:.0f}"
                             if row == "record" else "")
                    print(f"round {rnd} {scn:4s} {row:6s}: {r.get('rps') or 0:8.0f} req/s, p99 {r.get('p99_ms')} ms, "
                          f"errors {r.get('errors')}, CPU {r.get('cpu_us') or 0:.0f} µs/req{extra}", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    def med(scn, row, key):
        vals = [x[key] for x in results[scn][row] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    out = []
    for scn in scenarios:
        title = "GET, 64-byte answers" if scn == "get" else f"POST, {a.body_bytes // 1024} KiB bodies"
        out.append(f"**{title}** (medians of {a.rounds} interleaved rounds)\n")
        out.append("| row | req/s | p99 | proxy CPU per request | records written | dropped | errors |")
        out.append("|---|--:|--:|--:|--:|--:|--:|")
        for row in ROWS:
            rps, p99, cpu = med(scn, row, "rps"), med(scn, row, "p99_ms"), med(scn, row, "cpu_us")
            errs = sum((x.get("errors") or 0) for x in results[scn][row])
            written = sum((x.get("written") or 0) for x in results[scn][row]) if row == "record" else None
            dropped = sum((x.get("dropped") or 0) for x in results[scn][row]) if row == "record" else None
            out.append(f"| {LABEL[row]} | {rps or 0:,.0f} | {p99 if p99 is not None else 'n/a'} ms "
                       f"| {'n/a' if cpu is None else f'{cpu:.0f} µs'} "
                       f"| {'' if written is None else f'{written:,.0f}'} "
                       f"| {'' if dropped is None else f'{dropped:,.0f}'} | {errs} |")
        plain, rec = med(scn, "plain", "rps"), med(scn, "record", "rps")
        lines = []
        if plain and rec:
            lines.append(f"record / plain throughput: {rec / plain:.2f}× "
                         f"(cost {(1 - rec / plain) * 100:.1f}%; target ≤ 10%)")
            per_round = [x["rps"] / y["rps"] for x, y in zip(results[scn]["record"], results[scn]["plain"])
                         if x.get("rps") and y.get("rps")]
            lines.append("per round: " + ", ".join(f"{v:.2f}" for v in per_round))
        c_rec, c_plain = med(scn, "record", "cpu_us"), med(scn, "plain", "cpu_us")
        if c_rec and c_plain:
            lines.append(f"proxy CPU per request, record / plain: {c_rec / c_plain:.2f}× "
                         f"(+{c_rec - c_plain:.0f} µs)")
        out.append("\n" + "\n".join(f"- {x}" for x in lines) + "\n")
    report = "\n".join(out)
    print("\n" + report)
    if a.doc:
        body = (f"## Recording\n\n`bench/record.py --rounds {a.rounds} --duration {a.duration}`, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs shared by every "
                f"process (proxy, wrk -t2 -c{a.connections}, the backend); `access_log: off` in both rows; "
                f"`record: {{percent: 100}}` to a local file against the same route without it.\n\n{report}")
        driver.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "recording", body)


LABEL = {
    "plain": "shadowgate, no `record`",
    "record": "**shadowgate, `record: {percent: 100}`**",
}

if __name__ == "__main__":
    main(sys.argv[1:])
