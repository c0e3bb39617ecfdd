#!/usr/bin/env python3
"""Recording's cost in counted events (issue #17): syscalls, context
switches and CPU time per request for each kind of proxy thread, the
machine's interrupts per 1000 requests, and (with --futex-callers) where
the proxy's `futex` calls come from, plain row against record row.

`bench/record_profile.py` samples functions and `bench/record_threads.py`
reads CPU time per thread; neither says whether recording adds syscalls
on the serving threads, wakes other CPUs, or contends for locks. This
bench counts those, by `perf stat --per-thread` on the proxy while
`wrk -t2 -c32` loads it (after one second of warm-up), `--rounds` times
per row in turn (plain, record, plain, ...), each proxy behind the same
`shadowgate bench-backend` (`record.py`'s configurations), and reads
`/proc/interrupts` before and after each slice (every CPU: rescheduling
IPIs are what one thread waking another on a second CPU costs).

With `--futex-callers` each row is also run once under `perf record -e
syscalls:sys_enter_futex --call-graph dwarf`, and each call is put down
to the first frame of shadowgate, hyper, tokio or bytes above it (glibc's
arena locks, taken when a buffer is freed on another thread than the one
that allocated it, as `arena: <frame>`).

Session 16 took its figures (docs/benchmarks.md, "Recording, session
16") with throwaway scripts of the same method; this bench is them kept.

Usage: bench/record_counts.py [--bin target/release/shadowgate]
           [--scenario json] [--duration 5] [--rounds 2]
           [--futex-callers] [--top 15]
Needs perf (Debian `linux-perf`) with tracepoints (root, or
kernel.perf_event_paranoid <= 1) and wrk, installed with apt when
missing. Every process it starts is stopped on exit; the load is bounded
in time.
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (processes, HTTP, waiting)
import record as record_bench  # noqa: E402  (its configurations)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = ["task-clock", "context-switches", "raw_syscalls:sys_enter", "syscalls:sys_enter_futex",
          "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_writev", "syscalls:sys_enter_write",
          "syscalls:sys_enter_epoll_wait"]
# Printed per request, except task-clock (µs per request).
IRQS = ["LOC", "RES", "CAL", "TLB"]


def interrupts():
    """{name: count over every CPU} of the `IRQS` lines of /proc/interrupts."""
    out = {}
    with open("/proc/interrupts") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            name = fields[0].rstrip(":")
            if name in IRQS:
                out[name] = sum(int(x) for x in fields[1:] if x.isdigit())
    return out


def per_thread(stat_csv):
    """{(thread name, event): value} from `perf stat -x, --per-thread`."""
    out = collections.Counter()
    for line in stat_csv.splitlines():
        f = line.split(",")
        if len(f) < 4:
            continue
        try:
            value = float(f[1])
        except ValueError:
            continue
        out[(f[0].rsplit("-", 1)[0], f[3])] += value
    return out


def futex_callers(data):
    """{caller: calls} from a `perf record -e syscalls:sys_enter_futex` file."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym"],
                         capture_output=True, text=True).stdout
    tally = collections.Counter()
    for block in out.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if len(lines) < 2:
            continue
        frames = [ln.split(" ", 1)[1] if " " in ln else ln for ln in lines[1:]]
        joined = " ".join(frames)
        ours = next((f for f in frames
                     if any(k in f for k in ("shadowgate::", "hyper", "tokio::", "bytes::"))
                     and not f.startswith("alloc::")), "?")
        if "lll_lock" in joined or ("_int_free" in joined and "futex_wait" in joined):
            key = "arena: " + ours[:110]
        elif lines[0].startswith("shadowgate-reco"):
            key = "record writer thread"
        else:
            key = ours[:110]
        tally[key] += 1
    return tally


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--scenario", default="json", choices=record_bench.SCENARIOS)
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--duration", type=int, default=5, help="seconds counted per round and row")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--futex-callers", action="store_true")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args(argv)
    a.bin = os.path.abspath(a.bin)
    driver.need_tools({"perf": "linux-perf", "wrk": "wrk"})
    tmp = tempfile.mkdtemp(prefix="sg-record-counts-")
    procs = driver.Procs(tmp)
    counts = {"plain": collections.Counter(), "record": collections.Counter()}
    irqs = {"plain": collections.Counter(), "record": collections.Counter()}
    served = {"plain": 0, "record": 0}
    callers = {}
    try:
        backend, stats = driver.start_bench_backend(procs, a.bin)
        for n in range(a.rounds):
            for row in ("plain", "record"):
                def stat(pid, seconds):
                    return ["perf", "stat", "-x,", "--per-thread", "-e", ",".join(EVENTS), "-p", str(pid),
                            "--", "sleep", str(seconds)]
                err, requests, irq = record_bench.perf_slice(a, procs, tmp, row, backend, stats, f"{row}-{n}",
                                                             stat, probe=interrupts)
                counts[row].update(per_thread(err))
                irqs[row].update(irq)
                served[row] += requests
                print(f"round {n + 1} {row:6s}: {requests} requests", flush=True)
        if a.futex_callers:
            for row in ("plain", "record"):
                data = os.path.join(tmp, f"futex-{row}.data")

                def record(pid, seconds, data=data):
                    return ["perf", "record", "-q", "-e", "syscalls:sys_enter_futex", "--call-graph",
                            "dwarf,16384", "-o", data, "-p", str(pid), "--", "sleep", str(seconds)]
                _, requests, _ = record_bench.perf_slice(a, procs, tmp, row, backend, stats, f"futex-{row}",
                                                         record)
                callers[row] = (futex_callers(data), requests)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{a.scenario}: per request (task-clock: µs of CPU per request), plain / record")
    for thread, event in sorted(set(counts["plain"]) | set(counts["record"])):
        # task-clock is in milliseconds.
        scale = 1000.0 if event == "task-clock" else 1.0
        v = [counts[r][(thread, event)] * scale / max(served[r], 1) for r in ("plain", "record")]
        if max(v) >= 0.001:
            print(f"  {thread:16s} {event:30s} {v[0]:9.3f} {v[1]:9.3f} {v[1] - v[0]:+9.3f}")
    print("interrupts per 1000 requests, every CPU, plain / record")
    for name in IRQS:
        v = [irqs[r][name] * 1000.0 / max(served[r], 1) for r in ("plain", "record")]
        print(f"  {name:4s} {v[0]:8.1f} {v[1]:8.1f} {v[1] - v[0]:+8.1f}")
    for row, (tally, requests) in callers.items():
        print(f"futex calls by caller, {row} row: {sum(tally.values())} in {requests} requests")
        for key, count in tally.most_common(a.top):
            print(f"  {count:6d}  {key}")


if __name__ == "__main__":
    main(sys.argv[1:])
