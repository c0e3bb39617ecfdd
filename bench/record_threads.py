#!/usr/bin/env python3
"""Recording's cost per thread (issue #17): microseconds of CPU per
request, user and kernel, for each kind of proxy thread (the runtime's
serving threads, the record writer), plain row against record row, for
one or more builds side by side.

`bench/record.py` gives the throughput ratio and the whole proxy's CPU
per request; `bench/record_profile.py` gives functions. Neither tells
the writer thread's share (its writes go through the kernel's page
cache) from the serving threads' (encoding, copies). This one reads each
thread's `utime` and `stime` from `/proc/PID/task/*/stat` before and
after every slice and groups them by thread name, with each thread's
minor page faults and voluntary and involuntary context switches (kernel
time a profile of functions does not explain).

For each `--bin` two proxies run behind one `shadowgate bench-backend`,
without and with `record: {percent: 100}` (`record.py`'s configurations);
`wrk -t2 -c32` loads one proxy at a time for `--duration` seconds, all
proxies in turn, the order reversed every other round so that a slow
phase of this shared machine weighs on every row alike. Given two builds,
the rows of both alternate in the same run, which is the only fair way to
compare them here (one run's figures move by several µs on this
machine).

Each row also gets the whole machine's CPU time per request
(`/proc/stat`: every process and the kernel's own threads, such as the
page cache's writeback, which no proxy thread is charged for).
`--record-dir DIR` (repeatable) adds a record row per build whose file
goes to DIR (e.g. /dev/shm, to take the disk and its writeback out).

Usage: bench/record_threads.py [--bin BIN]... [--scenario post]
           [--rounds 6] [--duration 4] [--record-dir DIR]...
Standard library only (plus wrk, installed with apt when missing); every
process it starts is stopped on exit; every load run is bounded in time.
"""
import argparse
import collections
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402  (processes, wrk, the backend)
import record as record_bench  # noqa: E402  (its configurations)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What `thread_ticks` counts besides CPU time, printed per 1000 requests:
# minor page faults, voluntary and involuntary context switches.
EVENTS = ("minflt", "vcsw", "ivcsw")
# The context switch counters of /proc/PID/task/TID/status, by event.
SWITCHES = {"voluntary_ctxt_switches": "vcsw", "nonvoluntary_ctxt_switches": "ivcsw"}


def thread_ticks(pid):
    """{(thread name, "user" | "kernel"): clock ticks} of a process, and
    {(thread name, event): count} of each of `EVENTS`."""
    out = collections.Counter()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[(name, "user")] += int(fields[11])
        out[(name, "kernel")] += int(fields[12])
        out[(name, "minflt")] += int(fields[7])
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in SWITCHES:
                        out[(name, SWITCHES[key])] += int(value)
        except OSError:
            pass  # the thread ended meanwhile
    return out


def machine_busy():
    """Ticks every CPU has been busy, interrupts included (the loopback
    traffic's softirq work, which no process is billed for)."""
    return driver.cpu_busy_ticks(interrupts=True)[0]


def row_name(row):
    b, kind, where = row
    return kind if where is None else f"{kind} in {where}"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", action="append", help="a build (repeat to compare; default target/release)")
    p.add_argument("--scenario", default="post", choices=record_bench.SCENARIOS)
    p.add_argument("--body-bytes", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=int, default=4, help="seconds per slice")
    p.add_argument("--record-dir", action="append", default=[],
                   help="a further record row per build, its file in this directory")
    a = p.parse_args(argv)
    bins = [os.path.abspath(b) for b in (a.bin or [os.path.join(ROOT, "target", "release", "shadowgate")])]
    for b in bins:
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not an executable (build it, or pass --bin)")
    driver.need_tools({"wrk": "wrk"})
    tmp = tempfile.mkdtemp(prefix="sg-record-threads-")
    procs = driver.Procs(tmp)
    dirs = []
    rows = []
    for b in bins:
        rows += [(b, row, None) for row in record_bench.ROWS]
        for d in a.record_dir:
            rows.append((b, "record", d))
    ticks = {r: collections.Counter() for r in rows}
    machine = collections.Counter()
    served = collections.Counter()
    try:
        backend, stats = driver.start_bench_backend(procs, bins[0])
        script, env = record_bench.scenario_load(a.scenario, a.body_bytes)
        proxies = {}
        for i, r in enumerate(rows):
            b, row, where = r
            capture = tmp
            if where is not None:
                capture = tempfile.mkdtemp(prefix="sg-record-threads-", dir=where)
                dirs.append(capture)
            proxies[r] = record_bench.start_row(procs, tmp, capture, row, backend, b, f"sg-{i}-{row}")

        def load(r, seconds):
            url = f"http://{driver.HOST}:{proxies[r][1]['listen']}/bench"
            driver.wrk_load(procs, url, seconds, 32, script=script, env=env)

        for r in rows:
            load(r, 1)  # warm-up: connections, pools, the record file
        for n in range(a.rounds):
            for r in (rows if n % 2 == 0 else rows[::-1]):
                pid = proxies[r][0].pid
                before, done, busy = thread_ticks(pid), driver.served(stats), machine_busy()
                load(r, a.duration)
                served[r] += driver.served(stats) - done
                machine[r] += machine_busy() - busy
                ticks[r].update(thread_ticks(pid) - before)
            print(f"round {n + 1} of {a.rounds} done", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    hz = os.sysconf("SC_CLK_TCK")
    for b in bins:
        plain = (b, "plain", None)
        for rec in [r for r in rows if r[0] == b and r[1] == "record"]:
            print(f"\n{b} ({a.scenario}): {served[plain]} plain and {served[rec]} requests "
                  f"({row_name(rec)}); throughput {row_name(rec)} / plain "
                  f"{served[rec] / max(served[plain], 1):.2f}×")
            print("  thread               what     plain   record     diff  (CPU: µs per request; "
                  "minflt, vcsw, ivcsw: per 1000 requests)")
            keys = sorted(set(ticks[plain]) | set(ticks[rec])) + [("whole machine", "busy")]
            for key in keys:
                scale = 1000 if key[1] in EVENTS else 1e6 / hz
                count = (lambda r: machine[r]) if key[1] == "busy" else (lambda r: ticks[r][key])
                v = {r: count(r) * scale / max(served[r], 1) for r in (plain, rec)}
                print(f"  {key[0]:20s} {key[1]:6s} {v[plain]:8.1f} {v[rec]:8.1f} {v[rec] - v[plain]:+8.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
