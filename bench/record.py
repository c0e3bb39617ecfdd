#!/usr/bin/env python3
"""Recording bench (issue #17): what does `record: {percent: 100}` cost?

Starts a backend (`shadowgate bench-backend`) and two proxies, each with
one route to it, on free loopback ports:

  plain   the route without `record`
  record  the same route with `record: {percent: 100}` to a file in a
          temporary directory (deleted at the end; `--record-dir` puts it
          elsewhere, e.g. /dev/shm to take the disk out)

Both proxies run for the whole scenario; the load alternates between them
in slices of `--duration` (`wrk -t2 -c<connections>`, after one second of
warm-up each), `--rounds` slices each, in ABBA order (plain, record,
record, plain, ...). This machine has phases of 10-20 s in which every
request costs about a third more CPU: slices much shorter than that, taken
alternately, put both rows through the same phases, which runs of one row
after the other (this bench before session 9) did not, and their ratio
wandered between 0.79 and 0.98 for the same build.

Reported per row: req/s (all slices together, and the median slice), p99
(median slice), the proxy's CPU time per request (all its threads, its
slices together), and for `record` the records written and dropped (from
/metrics). The row the issue states: record / plain throughput over all
slices (target: >= 0.90, i.e. at most 10% lost), with the per-round ratios
and their median beside it.

Scenarios: `get` (64-byte answers), `post` (request bodies of
`--body-bytes`, one letter repeated, bench/post.lua) and `json` (a JSON
document of that size: a quote every 7 bytes or so to escape). Both rows
log nothing (`access_log: off`), so the difference is the recording
alone.

Usage: bench/record.py [--bin target/release/shadowgate] [--rounds 10]
                       [--duration 3s] [--scenarios get,post,json]
                       [--record-dir DIR] [--doc]
Writes its table into docs/benchmarks.md (section "Recording") only with
--doc. Standard library only (plus wrk, installed with apt when
missing); every process it starts is stopped on exit; every load run is
bounded in time.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (processes, wrk, metrics parsing)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = driver.HOST
ROWS = ["plain", "record"]


def write_config(d, capture_dir, row, ports, backend):
    record = ""
    if row == "record":
        # Two files of at most 64 MiB: a long run rotates instead of
        # filling the disk.
        record = f"    record: {{ file: {os.path.join(capture_dir, 'captures', 'bench.jsonl')}, percent: 100, max_files: 2 }}\n"
    path = os.path.join(d, row + ".yaml")
    with open(path, "w") as f:
        f.write(
            f"listen: {HOST}:{ports['listen']}\nadmin: {HOST}:{ports['admin']}\n"
            "access_log: off\nstore: memory\n"
            f"backends:\n  v1: {{ endpoints: [\"{HOST}:{backend}\"] }}\n"
            f"routes:\n  - name: bench\n    backend: v1\n{record}"
        )
    return path


def start_row(procs, d, capture_dir, row, backend, binary, name, wrap=(), ready_within=20):
    """The proxy of `row` (`write_config`) on free ports, started (under
    `wrap`, e.g. valgrind) and ready to serve: (process, ports). Exits when
    it does not become ready within `ready_within` seconds."""
    ports = {"listen": driver.free_port(), "admin": driver.free_port()}
    cfg = write_config(d, capture_dir, row, ports, backend)
    proxy = procs.start(name, list(wrap) + [binary, "run", "--config", cfg])
    ok = driver.wait_until(lambda: driver.http_req("GET", ports["admin"], "/readyz")[0] == 200,
                           ready_within)
    if not ok or proxy.poll() is not None:
        sys.exit(f"shadowgate did not become ready (log: {procs.logdir}/{name}.log)")
    return proxy, ports


# The scenarios: `get` (64-byte answers, no body), `post` (bodies of one
# letter repeated: nothing to escape in a record) and `json` (a JSON
# document of small objects, a quote every 7 bytes or so: an API's body).
SCENARIOS = ("get", "post", "json")


def scenario_load(scenario, body_bytes):
    """wrk's Lua script for `scenario` (None for `get`) and the environment
    it reads (bench/post.lua: BENCH_BODY_BYTES, BENCH_BODY_KIND)."""
    if scenario not in SCENARIOS:
        sys.exit(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    script = None if scenario == "get" else os.path.join(ROOT, "bench", "post.lua")
    kind = "json" if scenario == "json" else "bytes"
    return script, {"BENCH_BODY_BYTES": str(body_bytes), "BENCH_BODY_KIND": kind}


def wrk_for(scenario, body_bytes, threads, connections):
    """wrk's arguments up to the duration, and its environment, for
    `scenario` (`scenario_load`)."""
    script, env = scenario_load(scenario, body_bytes)
    argv = ["wrk", f"-t{threads}", f"-c{connections}"] + (["-s", script] if script else [])
    return argv, dict(os.environ, **env)


def perf_slice(a, procs, tmp, row, backend, stats, name, perf, probe=None):
    """One slice of `a.scenario`'s load (`wrk -t2 -c32`, `a.duration`
    seconds after one second of warm-up) on a fresh proxy of `row`, with
    the command `perf(pid, seconds)` attached to it meanwhile: (that
    command's stderr, requests served, and `probe()`'s values after the
    slice less before it, `{}` without one). The proxy is stopped and its
    captures deleted afterwards. For the benches that watch one slice
    with `perf` (`record_profile.py`, `record_counts.py`)."""
    proxy, ports = start_row(procs, tmp, tmp, row, backend, a.bin, name)
    try:
        url = f"http://{HOST}:{ports['listen']}/bench"
        wrk, env = wrk_for(a.scenario, a.body_bytes, 2, 32)
        subprocess.run(wrk + ["-d1s", url], capture_output=True, env=env, timeout=60)
        before, probed = driver.served(stats), probe() if probe else {}
        watcher = subprocess.Popen(perf(proxy.pid, a.duration), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        subprocess.run(wrk + [f"-d{a.duration}s", url], capture_output=True, env=env, timeout=a.duration + 60)
        _, err = watcher.communicate(timeout=a.duration + 60)
        served = driver.served(stats) - before
        after = probe() if probe else {}
        return err, served, {k: v - probed.get(k, 0) for k, v in after.items()}
    finally:
        procs.stop(proxy)
        shutil.rmtree(os.path.join(tmp, "captures"), ignore_errors=True)


def slice_measure(procs, proxy, ports, stats, seconds, connections, script, env):
    """One slice of load on one proxy: wrk's figures plus the proxy's CPU
    time per request served (the backend's count; only this proxy is
    loaded meanwhile)."""
    tree = driver.process_tree(proxy.pid)
    ticks = driver.proc_ticks(tree)
    before = driver.served(stats)
    r = driver.wrk_load(procs, f"http://{HOST}:{ports['listen']}/bench", seconds,
                        connections, script=script, env=env)
    ticks = driver.proc_ticks(tree) - ticks
    r["served"] = driver.served(stats) - before
    if r["served"]:
        r["cpu_us"] = ticks * 1e6 / os.sysconf("SC_CLK_TCK") / r["served"]
    return r


def record_counts(admin):
    status, body = driver.http_req("GET", admin, "/metrics")
    if status != 200:
        return None, None
    fams = driver.prom_families(body.decode("utf-8", "replace"))
    return (driver.prom_sum(fams, "shadowgate_record_written") or 0.0,
            driver.prom_sum(fams, "shadowgate_record_dropped") or 0.0)


def settled_counts(admin, at_least, timeout=10):
    """The record counts once `at_least` records are accounted for
    (written ones are counted when their buffer is flushed, at least every
    second), or as they stand after `timeout` seconds."""
    def accounted():
        written, dropped = record_counts(admin)
        return (written or 0) + (dropped or 0) >= at_least
    driver.wait_until(accounted, timeout, step=0.2)
    return record_counts(admin)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--rounds", type=int, default=10, help="slices per row")
    p.add_argument("--duration", default="3s", help="length of one slice")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--scenarios", default="get,post,json")
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--record-dir", default=None,
                   help="where the record files go (default: a new temporary directory); "
                        "e.g. /dev/shm to take the disk out of the figure")
    p.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    a = p.parse_args(argv)
    a.bin = os.path.abspath(a.bin)
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"{a.bin}: not an executable (build it, or pass --bin)")
    driver.need_tools({"wrk": "wrk"})
    print(f"CPU: {driver.cpu_summary()}", flush=True)
    seconds = driver.duration_s(a.duration)
    scenarios = [s for s in a.scenarios.split(",") if s]
    for scn in scenarios:
        scenario_load(scn, a.body_bytes)  # an unknown one exits before anything starts
    run_dir = os.path.join(ROOT, "bench", "out", "record-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="sg-record-bench-")
    capture_dir = (tempfile.mkdtemp(prefix="sg-record-bench-", dir=a.record_dir)
                   if a.record_dir else data_dir)
    procs = driver.Procs(run_dir)
    results = {s: {r: [] for r in ROWS} for s in scenarios}
    try:
        backend, stats = driver.start_bench_backend(procs, a.bin)
        for scn in scenarios:
            script, env = scenario_load(scn, a.body_bytes)
            # Both proxies run for the whole scenario, idle but for their
            # own slices; the load alternates between them.
            proxies = {}
            for row in ROWS:
                proxies[row] = start_row(procs, data_dir, capture_dir, row, backend, a.bin, f"sg-{row}")
            try:
                for row in ROWS:
                    # Warm-up (connections, pools, the record file opened).
                    driver.wrk_load(procs, f"http://{HOST}:{proxies[row][1]['listen']}/bench", 1,
                                    a.connections, script=script, env=env)
                for rnd in range(1, a.rounds + 1):
                    # ABBA: a drift within a round weighs on both rows alike.
                    order = ROWS if rnd % 2 else ROWS[::-1]
                    for row in order:
                        proxy, ports = proxies[row]
                        r = slice_measure(procs, proxy, ports, stats, seconds, a.connections, script, env)
                        results[scn][row].append(r)
                        print(f"round {rnd} {scn:4s} {row:6s}: {r.get('rps') or 0:8.0f} req/s, "
                              f"p99 {r.get('p99_ms')} ms, errors {r.get('errors')}, "
                              f"CPU {r.get('cpu_us') or 0:.0f} µs/req", flush=True)
                recorded = sum(x.get("served") or 0 for x in results[scn]["record"])
                written, dropped = settled_counts(proxies["record"][1]["admin"], recorded)
                results[scn]["record"][-1]["written"] = written
                results[scn]["record"][-1]["dropped"] = dropped
                print(f"{scn}: records written {written or 0:.0f}, dropped {dropped or 0:.0f}", flush=True)
            finally:
                for proxy, _ in proxies.values():
                    procs.stop(proxy)
                shutil.rmtree(os.path.join(capture_dir, "captures"), ignore_errors=True)
    finally:
        procs.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(capture_dir, ignore_errors=True)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    def med(scn, row, key):
        vals = [x[key] for x in results[scn][row] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    def total_rps(scn, row):
        """Requests answered over the time of all the row's slices."""
        xs = [x for x in results[scn][row] if x.get("rps") and x.get("seconds")]
        secs = sum(x["seconds"] for x in xs)
        return sum(x["rps"] * x["seconds"] for x in xs) / secs if secs else None

    def total_cpu(scn, row):
        """CPU per request over all the row's slices (weighted by requests)."""
        xs = [x for x in results[scn][row] if x.get("cpu_us") and x.get("rps") and x.get("seconds")]
        n = sum(x["rps"] * x["seconds"] for x in xs)
        return sum(x["cpu_us"] * x["rps"] * x["seconds"] for x in xs) / n if n else None

    out = []
    for scn in scenarios:
        title = {
            "get": "GET, 64-byte answers",
            "post": f"POST, {a.body_bytes // 1024} KiB bodies (one letter repeated)",
            "json": f"POST, {a.body_bytes // 1024} KiB JSON bodies (a quote every 7 bytes or so)",
        }[scn]
        out.append(f"**{title}** ({a.rounds} alternating slices of {a.duration} per row)\n")
        out.append("| row | req/s, all slices | req/s, median slice | p99, median slice "
                   "| proxy CPU per request | records written | dropped | errors |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|")
        for row in ROWS:
            rps, mid, p99, cpu = total_rps(scn, row), med(scn, row, "rps"), med(scn, row, "p99_ms"), total_cpu(scn, row)
            errs = sum((x.get("errors") or 0) for x in results[scn][row])
            written = sum((x.get("written") or 0) for x in results[scn][row]) if row == "record" else None
            dropped = sum((x.get("dropped") or 0) for x in results[scn][row]) if row == "record" else None
            out.append(f"| {LABEL[row]} | {rps or 0:,.0f} | {mid or 0:,.0f} | {'n/a' if p99 is None else f'{p99:.2f}'} ms "
                       f"| {'n/a' if cpu is None else f'{cpu:.0f} µs'} "
                       f"| {'' if written is None else f'{written:,.0f}'} "
                       f"| {'' if dropped is None else f'{dropped:,.0f}'} | {errs} |")
        plain, rec = total_rps(scn, "plain"), total_rps(scn, "record")
        lines = []
        if plain and rec:
            lines.append(f"record / plain throughput: {rec / plain:.2f}× "
                         f"(cost {(1 - rec / plain) * 100:.1f}%; target ≤ 10%)")
            per_round = [x["rps"] / y["rps"] for x, y in zip(results[scn]["record"], results[scn]["plain"])
                         if x.get("rps") and y.get("rps")]
            if per_round:
                lines.append(f"per round (median {statistics.median(per_round):.2f}): "
                             + ", ".join(f"{v:.2f}" for v in per_round))
        c_rec, c_plain = total_cpu(scn, "record"), total_cpu(scn, "plain")
        if c_rec and c_plain:
            lines.append(f"proxy CPU per request, record / plain: {c_rec / c_plain:.2f}× "
                         f"(+{c_rec - c_plain:.0f} µs)")
        out.append("\n" + "\n".join(f"- {x}" for x in lines) + "\n")
    report = "\n".join(out)
    print("\n" + report)
    if a.doc:
        body = (f"## Recording\n\n`bench/record.py --rounds {a.rounds} --duration {a.duration}`, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs ({driver.cpu_summary()}) shared by every "
                f"process (proxy, wrk -t2 -c{a.connections}, the backend); `access_log: off` in both rows; "
                f"`record: {{percent: 100}}` to a local file against the same route without it; both "
                f"proxies up throughout, the load alternating between them slice by slice.\n\n{report}")
        driver.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "recording", body)


LABEL = {
    "plain": "shadowgate, no `record`",
    "record": "**shadowgate, `record: {percent: 100}`**",
}

if __name__ == "__main__":
    main(sys.argv[1:])
