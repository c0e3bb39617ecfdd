#!/usr/bin/env python3
"""What recording costs in instructions (issue #17), counted by callgrind.

`bench/record.py` measures throughput, which on this shared 2-core VM
moves by 10-30% from one 3-second slice to the next: a change of a few
percent in what recording costs is lost in it. Instructions executed are
nearly free of that noise, so this bench counts them: the proxy runs
under `valgrind --tool=callgrind`, first without `record`, then with
`record: {percent: 100}` to a file in a temporary directory, each behind
the same `shadowgate bench-backend`; after a warm-up the counters are
zeroed (`callgrind_control -z`), `wrk -t1 -c2` runs for `--duration`, and
the counters are dumped (`callgrind_control -d`), for the record row once
every request's line is in the files (counted on disk: polling the proxy's
/metrics would add its own instructions, 3k a request in one try).
Instructions per request = the dump's total over the requests the backend
served meanwhile.

Printed: instructions per request for each row and the difference, and
(with --top N) the record functions' inclusive counts per request, from
`callgrind_annotate`. Scenarios: `get` (64-byte answers) and `post`
(request bodies of `--body-bytes`, bench/post.lua).

Two caveats, measured: the plain row's count varies by about 10% from run
to run (tokio's idle polling depends on timing; compare rows of one run,
and the record functions' own counts), and under valgrind the rate is low,
so the writer's runs of lines are small and go through `BufWriter`'s
buffer (about 1.5k instructions a 4 KiB record that a loaded proxy does
not spend: its runs are written straight to the file).

Usage: bench/record_instructions.py [--bin target/release/shadowgate]
           [--duration 20] [--scenarios get,post] [--top 12]
Needs valgrind (Debian `valgrind`) and wrk. Every process it starts is
stopped on exit; the load is bounded in time.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (processes, HTTP, waiting)
import record as record_bench  # noqa: E402  (its configurations and record counts)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines_written(capture_dir):
    """Lines in the record files under `capture_dir` (`write_config`'s
    `captures/bench.jsonl` and its rotated predecessors)."""
    d = os.path.join(capture_dir, "captures")
    n = 0
    for name in os.listdir(d) if os.path.isdir(d) else []:
        with open(os.path.join(d, name), "rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
    return n


def total_instructions(dump):
    out = subprocess.run(["callgrind_annotate", dump], capture_output=True, text=True).stdout
    m = re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", out, re.M)
    return int(m.group(1).replace(",", "")) if m else None


def top_functions(dump, requests, n):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+):(shadowgate::(record|diff::redact)::\S.*?)(\s+\[.*\])?$", line)
        if m and m.group(2).startswith("src/"):
            rows.append((int(m.group(1).replace(",", "")) / requests, m.group(3)))
    return rows[:n]


def measure(a, procs, tmp, scenario, row, backend, stats):
    dump = os.path.join(tmp, f"callgrind.{scenario}.{row}.out")
    # The same two configurations as the throughput bench.
    proxy, ports = record_bench.start_row(
        procs, tmp, tmp, row, backend, a.bin, f"callgrind-{row}",
        wrap=["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"], ready_within=120)
    try:
        url = f"http://{driver.HOST}:{ports['listen']}/bench"
        wrk, env = record_bench.wrk_for(scenario, a.body_bytes, 1, 2)
        # Everything the backend serves from here on came through this proxy.
        start = driver.served(stats)
        subprocess.run(wrk + ["-d3s", url], capture_output=True, env=env, timeout=60)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], capture_output=True, timeout=60)
        before = driver.served(stats)
        subprocess.run(wrk + [f"-d{a.duration}s", url], capture_output=True, env=env, timeout=a.duration + 60)
        requests = driver.served(stats) - before
        if row == "record":
            # The writer's share of the last records is in the count: wait
            # until every request's line is in the files (read from disk:
            # asking the proxy's /metrics would be counted too).
            recorded = driver.served(stats) - start
            driver.wait_until(lambda: lines_written(tmp) >= recorded, 30, step=0.2)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], capture_output=True, timeout=60)
    finally:
        procs.stop(proxy, grace=20)
    # The zeroed-then-dumped part is the first numbered dump.
    part = dump + ".1"
    total = total_instructions(part) if os.path.exists(part) else None
    shutil.rmtree(os.path.join(tmp, "captures"), ignore_errors=True)
    return total, requests, part


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--duration", type=int, default=20, help="seconds of load per row")
    p.add_argument("--scenarios", default="get,post")
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--top", type=int, default=12, help="record functions listed (0: none)")
    a = p.parse_args(argv)
    a.bin = os.path.abspath(a.bin)
    driver.need_tools({"valgrind": "valgrind", "callgrind_control": "valgrind",
                       "callgrind_annotate": "valgrind", "wrk": "wrk"})
    tmp = tempfile.mkdtemp(prefix="sg-record-instr-")
    procs = driver.Procs(tmp)
    try:
        backend, stats = driver.start_bench_backend(procs, a.bin)
        for scenario in [s for s in a.scenarios.split(",") if s]:
            per = {}
            for row in ("plain", "record"):
                total, requests, dump = measure(a, procs, tmp, scenario, row, backend, stats)
                if not total or not requests:
                    sys.exit(f"{scenario} {row}: no count (requests {requests}, dump {dump})")
                per[row] = total / requests
                print(f"{scenario} {row:6s}: {requests} requests, {per[row]:,.0f} instructions per request",
                      flush=True)
                if row == "record" and a.top:
                    for n, name in top_functions(dump, requests, a.top):
                        print(f"    {n:8,.0f}  {name}")
            print(f"{scenario}: recording adds {per['record'] - per['plain']:,.0f} instructions per request "
                  f"({(per['record'] / per['plain'] - 1) * 100:.0f}% of a plain one)\n", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
