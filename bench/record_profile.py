#!/usr/bin/env python3
"""Where recording's time goes (issue #17), by sampling: per function,
microseconds of proxy CPU per request, plain row against record row.

`bench/record_instructions.py` counts user-space instructions, which are
not all alike: a vectorised scan retires ten instructions a nanosecond, a
copy of memory that is no longer in the cache one. And it sees nothing
of the kernel. This bench samples instead: the proxy runs under
`perf record -e cpu-clock` (the only clock this VM's perf offers) while
`wrk -t2 -c32` loads it, first without `record`, then with
`record: {percent: 100}` to a file in a temporary directory, each behind
the same `shadowgate bench-backend`, `--rounds` times in turn (plain,
record, plain, record, ...). Each function's samples become microseconds
per request (samples / frequency / requests the backend served), summed
over the rounds of a row. Printed: user and kernel time per request per
row, and the functions whose time per request grew most from plain to
record, with both rows' figures.

Session 10 read from it that a recorded 4 KiB POST spent most of its
added user time in `memmove` and in escaping a copy that was no longer
in the cache; it also shows the kernel's share (page-cache copies,
wake-ups).

Usage: bench/record_profile.py [--bin target/release/shadowgate]
           [--scenario post] [--duration 8] [--rounds 2] [--top 30]
Needs perf (Debian `linux-perf`) and wrk, installed with apt when
missing; run as root or with kernel.perf_event_paranoid <= 1. Every process it starts is stopped on
exit; the load is bounded in time.
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
import record as record_bench  # noqa: E402  (its configurations)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREQUENCY = 2999


def samples_by_function(data):
    """{(space, function): samples} from a `perf record` file; space is
    `.` for user code, `k` for the kernel."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "sym", "-F", "sample,sym"],
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+\[(.)\]\s+(.*)", line)
        if m:
            key = (m.group(2), m.group(3).strip()[:100])
            found[key] = found.get(key, 0) + int(m.group(1))
    return found


def profile_row(a, procs, tmp, row, backend, stats, rounds_done):
    data = os.path.join(tmp, f"{row}-{rounds_done}.data")

    def perf(pid, seconds):
        return ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY), "-o", data,
                "-p", str(pid), "--", "sleep", str(seconds)]
    _, requests, _ = record_bench.perf_slice(a, procs, tmp, row, backend, stats, f"{row}-{rounds_done}", perf)
    return samples_by_function(data), requests


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--scenario", default="post", choices=record_bench.SCENARIOS)
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--duration", type=int, default=8, help="seconds sampled per round and row")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args(argv)
    a.bin = os.path.abspath(a.bin)
    driver.need_tools({"perf": "linux-perf", "wrk": "wrk"})
    tmp = tempfile.mkdtemp(prefix="sg-record-profile-")
    procs = driver.Procs(tmp)
    per_request = {"plain": {}, "record": {}}
    served = {"plain": 0, "record": 0}
    try:
        backend, stats = driver.start_bench_backend(procs, a.bin)
        for n in range(a.rounds):
            for row in ("plain", "record"):
                samples, requests = profile_row(a, procs, tmp, row, backend, stats, n)
                served[row] += requests
                for key, count in samples.items():
                    per_request[row][key] = per_request[row].get(key, 0) + count
                print(f"round {n + 1} {row:6s}: {requests} requests", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    # Samples to microseconds per request.
    for row in per_request:
        scale = 1e6 / FREQUENCY / max(served[row], 1)
        per_request[row] = {k: v * scale for k, v in per_request[row].items()}

    def space(row, s):
        return sum(v for k, v in per_request[row].items() if k[0] == s)

    print(f"\n{a.scenario}: proxy CPU per request, user / kernel: plain {space('plain', '.'):.1f} / "
          f"{space('plain', 'k'):.1f} µs, record {space('record', '.'):.1f} / {space('record', 'k'):.1f} µs")
    keys = set(per_request["plain"]) | set(per_request["record"])
    grown = sorted(((per_request["record"].get(k, 0) - per_request["plain"].get(k, 0), k) for k in keys),
                   reverse=True)
    print(f"  µs per request, record - plain (record, plain), top {a.top}:")
    for d, k in grown[:a.top]:
        print(f"    {d:+6.2f} ({per_request['record'].get(k, 0):6.2f}, {per_request['plain'].get(k, 0):6.2f})"
              f"  {'kernel' if k[0] == 'k' else 'user  '}  {k[1]}")


if __name__ == "__main__":
    main(sys.argv[1:])
