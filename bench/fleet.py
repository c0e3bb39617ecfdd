#!/usr/bin/env python3
"""Fleet store cost: throughput with `store: postgres://…` against `store: memory`.

One shadowgate (1 worker, pinned to CPU 0) mirrors 100% of requests to v2
with comparison on; v1 and v2 are `shadowgate bench-backend --json`. Rows,
interleaved over rounds: store memory, store postgres (a throwaway cluster
started here: initdb in a temp dir, pg_ctl on 127.0.0.1, as the `postgres`
OS user when root, fsync off; removed at the end). With postgres the
replica writes its tally, window summaries and heartbeat every second and
reads the fleet's back, all off the request path. Reports median req/s and
p99 and the ratio postgres/memory, and writes the "Fleet" section of
docs/benchmarks.md unless --no-doc.

Usage: bench/fleet.py [--rounds 3] [--duration 10s] [--binary PATH] [--no-doc]
(bench/run builds the release binary and installs wrk first; run it, or
build with `cargo build --release` yourself.)
"""
import argparse
import glob
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402

HOST = driver.HOST
PORT = driver.PORT
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Postgres:
    """A throwaway cluster; `stop()` removes it."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        if not bins:
            sys.exit("PostgreSQL is not installed: apt-get install postgresql")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="sg-bench-pg-")
        self.root = os.geteuid() == 0
        if self.root:
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        data = os.path.join(self.dir, "data")
        self.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        self.run("pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-o", opts, "-w", "start")
        self.data = data

    def run(self, prog, *args):
        argv = [os.path.join(self.bin, prog), *args]
        if self.root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, cwd=self.dir, stdout=subprocess.DEVNULL)

    def url(self):
        return f"postgres://postgres@{HOST}:{self.port}/postgres?sslmode=disable"

    def stop(self):
        try:
            self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def config(path, store):
    with open(path, "w") as f:
        f.write(
            f"listen: {HOST}:{PORT['sg']}\nadmin: {HOST}:{PORT['sg_admin']}\naccess_log: off\n"
            f"store: \"{store}\"\n"
            f"comparison: {{ workers: 1, queue: 4096 }}\n"
            "backends:\n"
            f"  v1: {{ endpoints: [\"{HOST}:{PORT['v1']}\"] }}\n"
            f"  v2: {{ endpoints: [\"{HOST}:{PORT['v2']}\"] }}\n"
            "routes:\n  - name: bench\n    backend: v1\n"
            "    mirrors: [{ backend: v2, percent: 100, compare: true }]\n"
        )


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", default="10s")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args(argv)
    seconds = driver.duration_s(a.duration)
    sg = os.path.abspath(a.binary)
    run_dir = os.path.join(ROOT, "bench", "out", "fleet-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    procs = driver.Procs(run_dir)
    cpus = os.cpu_count() or 1
    proxy_cpus, load_cpus = ("0", "1") if cpus >= 2 else (None, None)
    results = {"memory": [], "postgres": []}
    pg = Postgres()
    try:
        for which in ("v1", "v2"):
            procs.start(f"backend-{which}", [sg, "bench-backend", "--listen", f"{HOST}:{PORT[which]}",
                                             "--stats", f"{HOST}:{PORT[which + '_stats']}", "--json"],
                        cpus=load_cpus)
        if not driver.wait_until(lambda: driver.port_open(PORT["v1"]) and driver.port_open(PORT["v2"]), 10):
            sys.exit("bench backends did not start")
        for rnd in range(1, a.rounds + 1):
            for row in ("memory", "postgres"):
                cfg = os.path.join(run_dir, f"sg-{row}.yaml")
                config(cfg, "memory" if row == "memory" else pg.url())
                proxy = procs.start(f"sg-{row}", [sg, "--workers", "1", "--log-format", "text", "run",
                                                  "--config", cfg], cpus=proxy_cpus)
                if not driver.wait_until(lambda: driver.http_req("GET", PORT["sg_admin"], "/readyz")[0] == 200, 15):
                    sys.exit(f"shadowgate did not start (see {run_dir})")
                r = driver.wrk_measure(procs, f"http://{HOST}:{PORT['sg']}/bench", seconds, a.connections,
                                       cpus=load_cpus)
                procs.stop(proxy)
                results[row].append(r)
                print(f"round {rnd} store {row:8s}: {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms", flush=True)
    finally:
        procs.stop_all()
        pg.stop()

    def med(row, key):
        vals = [x[key] for x in results[row] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    mem, pgr = med("memory", "rps"), med("postgres", "rps")
    lines = ["| store | req/s (median) | p99 |", "|---|--:|--:|"]
    for row in ("memory", "postgres"):
        lines.append(f"| {row} | {med(row, 'rps'):,.0f} | {med(row, 'p99_ms'):.2f} ms |")
    summary = f"postgres / memory throughput: {pgr / mem:.3f}" if mem and pgr else "n/a"
    table = "\n".join(lines)
    print("\n" + table + "\n\n" + summary)
    if not a.no_doc:
        binary = os.path.relpath(sg, ROOT)
        body = (f"## Fleet\n\n"
                f"`bench/fleet.py --rounds {a.rounds} --duration {a.duration}` with `{binary}`, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: one shadowgate with 1 worker on CPU 0, "
                f"mirror 100% with comparison, `store: memory` against `store: postgres://…` (a local "
                f"PostgreSQL cluster, fsync off). Medians of {a.rounds} interleaved rounds.\n\n"
                f"{table}\n\n{summary}")
        if "release" not in binary:
            body += ("\n\nA debug build on a shared machine: the rounds vary by more than the difference, so "
                     "this says only that the store adds no work on the request path (it writes and reads on "
                     "its own runtime, once a second). The release figure is still to be measured with "
                     "`bench/run`'s release build.")
        driver.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "fleet", body)


if __name__ == "__main__":
    main(sys.argv[1:])
