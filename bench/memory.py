#!/usr/bin/env python3
"""Shadow-side memory under load: RSS stays under the budget + baseline, and
comes back down after.

Two rows, each on a fresh shadowgate (release build):

  compare   GET, mirror 100% with `compare: true`; v1 and v2 are
            `shadowgate bench-backend --json` answering JSON documents of
            about 1 MB that differ (v2's has one item more), so every pair
            holds two 1 MB captures until it is judged.
  post      POST with 1 MiB bodies, mirrored to a black-hole v2 (accepts,
            never answers): every copy's body is held until its timeout.

and, for comparison, the same loads with no mirror (`get-plain`,
`post-plain`: what the primary path alone holds) or a mirror that does not
compare (`get-mirror`). The budget holds when a row's peak RSS stays under
its idle RSS plus `--shadow-memory` (buffers take three quarters of it, the
comparison workers' trees the rest).

For each row: RSS of the proxy when idle (baseline), the peak RSS and the
peak of `shadowgate_shadow_memory_bytes` during `--duration` of
`wrk -c<connections>`, and RSS at 5 s and 20 s after the load; copies
dropped for memory and comparisons refused for memory (from /metrics).
Appends a section to docs/benchmarks.md unless --no-doc.

Usage: bench/memory.py [--duration 25s] [--connections 64] [--shadow-memory 128MiB]
                       [--port-base 28000] [--binary target/release/shadowgate] [--no-doc]
(bench/run builds the release binary and installs wrk first; run it, or
build with `cargo build --release` yourself.)
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (shared helpers: processes, wrk parsing, metrics parsing)

HOST = driver.HOST
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024


NOTES = """What holds the bytes (heaptrack on the `compare` row, issue #19.3): the
captures and queued pairs (in the budget's buffers, three quarters of it); the
comparison workers' JSON trees (a 1 MB document of small objects is ~5 MB of
tree; counted as built and bounded by the last quarter, past which a pair is
compared by digest); and, outside the budget, the primary path's own buffers
(`get-plain`, `post-plain`). hyper's HTTP/1.1 client read buffer grew to ~400
KiB per upstream connection: 68 MiB at the peak with 64 connections, until it
was capped at 64 KiB. **Allocator**: with glibc's defaults RSS stays at its peak
after the load although the gauge is back at 0 (after a large block is freed
glibc raises its mmap threshold and later 1 MiB blocks come from arenas that
keep their pages); a fixed `MALLOC_MMAP_THRESHOLD_=131072` gives each block of
128 KiB or more its own mapping, unmapped when freed. The image sets it
(`deploy/Dockerfile`); run this bench with `--proxy-env
MALLOC_MMAP_THRESHOLD_=131072` to measure the proxy as shipped."""


def parse_mib(size):
    """'128MiB' -> 128.0 (MiB, KiB and GiB as the config reads them)."""
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    for unit, factor in units.items():
        if size.endswith(unit):
            return float(size[: -len(unit)]) * factor
    return float(size) / MIB


def ports(base):
    return {"sg": base, "sg_admin": base + 1, "v1": base + 2, "v2": base + 3}


def config(path, port, row, shadow_memory):
    if row.endswith("-plain"):
        mirrors = ""
    elif row == "get-mirror":
        mirrors = "    mirrors: [{ backend: v2, percent: 100, timeout: 5s }]\n"
    elif row == "compare":
        mirrors = "    mirrors: [{ backend: v2, percent: 100, compare: true, timeout: 5s }]\n"
    else:
        mirrors = "    mirrors: [{ backend: v2, percent: 100, timeout: 5s, max_body_bytes: 2MiB }]\n"
    with open(path, "w") as f:
        f.write(
            f"listen: {HOST}:{port['sg']}\nadmin: {HOST}:{port['sg_admin']}\naccess_log: off\nstore: memory\n"
            f"limits: {{ shadow_memory: {shadow_memory} }}\n"
            "backends:\n"
            f"  v1: {{ endpoints: [\"{HOST}:{port['v1']}\"] }}\n"
            f"  v2: {{ endpoints: [\"{HOST}:{port['v2']}\"] }}\n"
            "routes:\n  - name: bench\n    backend: v1\n"
            + mirrors
        )


class GaugeSampler(threading.Thread):
    """Polls /metrics for the peak of the shadow memory gauge."""

    def __init__(self, admin_port, every=0.25):
        super().__init__(daemon=True)
        self.port, self.every = admin_port, every
        self.peak = 0.0
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            try:
                status, body = driver.http_req("GET", self.port, "/metrics", timeout=1.0)
                if status == 200:
                    fams = driver.prom_families(body.decode("utf-8", "replace"))
                    self.peak = max(self.peak, driver.prom_sum(fams, "shadowgate_shadow_memory_bytes") or 0.0)
            except Exception:  # noqa: BLE001 - a slow scrape under load is skipped
                pass
            self.stop_ev.wait(self.every)


def rss_mib(pid):
    return driver.mem_kb(pid)[0] / 1024.0


def run_row(procs, sg, run_dir, port, row, a):
    seconds = driver.duration_s(a.duration)
    post = row.startswith("post")
    v2_mode = ["--mode", "blackhole"] if post else ["--json", "--body-bytes", "1000200"]
    v1 = procs.start(f"{row}-v1", [sg, "bench-backend", "--listen", f"{HOST}:{port['v1']}",
                                   "--json", "--body-bytes", "1000000"])
    v2 = procs.start(f"{row}-v2", [sg, "bench-backend", "--listen", f"{HOST}:{port['v2']}"] + v2_mode)
    if not driver.wait_until(lambda: driver.port_open(port["v1"]) and driver.port_open(port["v2"]), 10):
        sys.exit("bench backends did not start")
    cfg = os.path.join(run_dir, f"sg-{row}.yaml")
    config(cfg, port, row, a.shadow_memory)
    proxy_env = dict(kv.split("=", 1) for kv in a.proxy_env)
    proxy = procs.start(f"sg-{row}", [sg, "--log-format", "text", "run", "--config", cfg], env=proxy_env)
    if not driver.wait_until(lambda: driver.http_req("GET", port["sg_admin"], "/readyz")[0] == 200, 15):
        sys.exit(f"shadowgate did not start (see {run_dir})")
    # A few requests so pools and workers exist, then the idle baseline.
    for _ in range(3):
        driver.http_req("GET", port["sg"], "/bench", timeout=5.0)
    time.sleep(1.0)
    r = {"baseline": rss_mib(proxy.pid)}
    argv = ["wrk", "-t2", f"-c{a.connections}", f"-d{int(seconds)}s", "--latency"]
    env = None
    if post:
        argv += ["-s", os.path.join(ROOT, "bench", "post.lua")]
        env = {"BENCH_BODY_BYTES": str(MIB)}
    argv.append(f"http://{HOST}:{port['sg']}/bench")
    rss = driver.RssSampler(proxy.pid)
    gauge = GaugeSampler(port["sg_admin"])
    rss.start()
    gauge.start()
    w = procs.start(f"wrk-{row}", argv, env=env, capture=True)
    out, err = w.communicate(timeout=seconds + 60)
    procs.live.pop(w.pid, None)
    rss.stop_ev.set()
    gauge.stop_ev.set()
    rss.join()
    gauge.join()
    end = time.monotonic()
    parsed = driver.parse_wrk(out.decode() + err.decode())
    r["rps"] = parsed.get("rps")
    r["non2xx"] = parsed.get("non2xx", 0)
    r["peak"] = rss.peak_kb / 1024.0
    r["gauge_peak"] = gauge.peak / MIB
    for after in (5, 20):
        time.sleep(max(0.0, end + after - time.monotonic()))
        r[f"after{after}"] = rss_mib(proxy.pid)
    status, body = driver.http_req("GET", port["sg_admin"], "/metrics")
    fams = driver.prom_families(body.decode("utf-8", "replace")) if status == 200 else {}
    r["gauge_after"] = (driver.prom_sum(fams, "shadowgate_shadow_memory_bytes") or 0.0) / MIB
    r["dropped_memory"] = driver.prom_sum(fams, "shadowgate_mirror_dropped", {"reason": "memory"}) or 0.0
    r["compare_memory"] = driver.prom_sum(fams, "shadowgate_compare", {"result": "memory"}) or 0.0
    r["compared"] = driver.prom_sum(fams, "shadowgate_compare", {"result": "compared"}) or 0.0
    r["mirrored"] = driver.prom_sum(fams, "shadowgate_requests", {"role": "mirror"}) or 0.0
    r["mirror_errors"] = driver.prom_sum(fams, "shadowgate_mirror_errors") or 0.0
    for p in (proxy, v1, v2):
        procs.stop(p)
    return r


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", default="25s")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--shadow-memory", default="128MiB")
    p.add_argument("--rows", default="compare,post,get-plain,post-plain")
    p.add_argument("--port-base", type=int, default=28000)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--proxy-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the proxy, e.g. an allocator setting")
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args(argv)
    sg = os.path.abspath(a.binary)
    run_dir = os.path.join(ROOT, "bench", "out", "memory-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    procs = driver.Procs(run_dir)
    port = ports(a.port_base)
    results = {}
    try:
        for row in a.rows.split(","):
            r = run_row(procs, sg, run_dir, port, row, a)
            results[row] = r
            print(f"{row}: {r}", flush=True)
    finally:
        procs.stop_all()

    lines = [
        "| row | RSS idle | RSS peak | idle + budget | gauge peak | RSS +5 s | RSS +20 s | gauge after | req/s | non-2xx "
        "| copies dropped (memory) | comparisons refused (memory) | compared |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    budget_mib = parse_mib(a.shadow_memory)
    for row, r in results.items():
        lines.append(
            f"| {row} | {r['baseline']:.0f} MiB | {r['peak']:.0f} MiB "
            f"| {r['baseline'] + budget_mib:.0f} MiB | {r['gauge_peak']:.0f} MiB "
            f"| {r['after5']:.0f} MiB | {r['after20']:.0f} MiB | {r['gauge_after']:.0f} MiB "
            f"| {r['rps'] or 0:,.0f} | {r['non2xx']:.0f} | {r['dropped_memory']:,.0f} | {r['compare_memory']:,.0f} "
            f"| {r['compared']:,.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if not a.no_doc:
        body = (f"## Shadow-side memory (limits.shadow_memory)\n\n"
                f"`bench/memory.py --duration {a.duration} --connections {a.connections} "
                f"--shadow-memory {a.shadow_memory}"
                + "".join(f" --proxy-env {kv}" for kv in a.proxy_env)
                + f"`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, release build: "
                "`compare`: GET, mirror 100% with `compare: true`, ~1 MB JSON answers that differ; "
                "`post`: 1 MiB POST bodies mirrored to a black-hole v2 (copy timeout 5 s); "
                "`get-plain`, `post-plain`: the same loads with no mirror. "
                "The budget holds when the peak stays under idle + budget. "
                "RSS of the proxy process; the gauge is `shadowgate_shadow_memory_bytes`.\n\n"
                f"{table}\n\n{NOTES}")
        driver.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "shadow-memory", body)


if __name__ == "__main__":
    main(sys.argv[1:])
