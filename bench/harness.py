"""Building blocks of `make bench`: the mock upstream, Envoy configs with and without the
filter, wrk runs (saturation and fixed rate) with the Envoy process's CPU time over each, CPU
pinning, stats, and the Markdown report."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
NOOP_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "noop_filter.wasm"
# The floor probe (bench/floor-filter): only the host calls of the routing decision.
FLOOR_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "floor_filter.wasm"
UPSTREAM = ROOT / "target" / "release" / "bench-upstream"
WRK_LUA = ROOT / "bench" / "wrk.lua"

# CPU layout on a 2-core machine: the proxy under test on core 0, the load generator and the
# upstream share core 1. On a bigger machine the same two cores are used.
PROXY_CPU = "0"
LOAD_CPU = "1"


def envoy_binary() -> str:
    return os.environ.get("ENVOY") or str(ROOT / ".tools" / "bin" / "envoy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpu, *argv]
    return argv


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Proc:
    """A background process with its output in a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._fh = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._fh.close()

    def cpu_ns(self) -> int:
        """CPU time the process has used so far, in ns: the sum of its threads' on-CPU time
        (first field of /proc/<pid>/task/*/schedstat), or utime + stime of /proc/<pid>/stat
        (clock ticks, coarser) where schedstat is missing. The pid is the program's own:
        `taskset` (`pinned`) execs it."""
        tasks = Path(f"/proc/{self.p.pid}/task")
        total, found = 0, False
        for task in tasks.iterdir() if tasks.is_dir() else ():
            try:
                total += int((task / "schedstat").read_text().split()[0])
                found = True
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended, or no schedstat
        if found:
            return total
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command: state is field 3; utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def comm(self) -> str:
        try:
            return Path(f"/proc/{self.p.pid}/comm").read_text().strip()
        except OSError:
            return ""

    def rss_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


@dataclass
class Upstreams:
    """Bench upstreams: one healthy, one answering 529 (both Anthropic Messages), and with
    `translated`, healthy ones speaking OpenAI Chat Completions and Bedrock (event-stream)."""

    tmp: Path
    healthy_port: int = 0
    failing_port: int = 0
    translated: bool = False
    api_ports: dict = field(default_factory=dict)  # api -> port of a healthy upstream of that api
    procs: list = field(default_factory=list)

    def start(self) -> "Upstreams":
        self.healthy_port, self.failing_port = free_port(), free_port()
        runs = [(self.healthy_port, 200, "anthropic"), (self.failing_port, 529, "anthropic")]
        self.api_ports = {"anthropic": self.healthy_port, "vertex": self.healthy_port}
        if self.translated:
            for api in ("openai", "bedrock"):
                self.api_ports[api] = free_port()
                runs.append((self.api_ports[api], 200, api))
        for port, status, api in runs:
            argv = [str(UPSTREAM), "--port", str(port), "--status", str(status)]
            if api != "anthropic":
                argv += ["--api", api]
            self.procs.append(Proc(pinned(LOAD_CPU, argv), self.tmp / f"upstream-{port}.log"))
            wait_port(port)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


# The fallback provider of the translation scenarios, per API (`make bench`'s vertex, bedrock and
# openai rows): the model each host is asked for, and its settings.
TRANSLATED_FALLBACKS = {
    "vertex": {"api": "vertex", "vertex": {"project": "bench-project", "region": "us-east5"},
               "models": {"claude-opus-4-6": "claude-opus-4-6@20260201"},
               "credential": {"header": "authorization", "prefix": "Bearer ", "value": "ya29.bench-vertex-token"}},
    "bedrock": {"api": "bedrock", "models": {"claude-opus-4-6": "us.anthropic.claude-opus-4-6-v1:0"},
                "credential": {"header": "authorization", "prefix": "Bearer ", "value": "ABSKbench-bedrock-key"}},
    "openai": {"api": "openai", "models": {"claude-opus-4-6": "gpt-4o"},
               "credential": {"header": "authorization", "prefix": "Bearer ", "value": "sk-proj-bench-openai"}},
}


def bench_filter_config(with_filter_creds: bool = True, fallback_api: str | None = None) -> dict:
    """The filter's config; `fallback_api` (a TRANSLATED_FALLBACKS key) makes the fallback a host
    of that API, to which requests are rewritten."""
    fallback = {"name": "fallback", "cluster": "fallback", "api": "anthropic", "authority": "fallback.example.com",
                "credential": {"header": "x-api-key", "value": "sk-ant-fallback-bench"}}
    if fallback_api:
        fallback.update(TRANSLATED_FALLBACKS[fallback_api])
    return {
        "providers": [
            {"name": "primary", "cluster": "primary", "api": "anthropic", "authority": "api.anthropic.com",
             "credential": {"header": "x-api-key", "value": "sk-ant-primary-bench"}},
            fallback,
        ],
        "chains": [{"name": "messages", "match": {"path_prefix": "/v1/messages"}, "providers": ["primary", "fallback"]}],
        # Opens after 3 failures and stays open for the whole run (no probes in the measurement).
        "breaker": {"consecutive_failures": 3, "open_ms": 3600000, "max_open_ms": 3600000},
        "degraded": {"mode": "message"},
    }


def envoy_config(listen: int, admin: int, primary_port: int, fallback_port: int, with_filter: bool,
                 module: Path = WASM, fallback_api: str | None = None) -> dict:
    """A listener with one route to the upstream. Without the filter (or with the empty noop
    module) the route names the cluster; with llm-failover (or the floor probe, which sets the
    same header) it reads the filter's routing header.
    With `fallback_api` (the translation scenarios) the fallback is a host of that API and the
    route matches on the routing header's presence, whatever path the filter rewrote to (as
    envoy/demo.yaml's first route)."""
    def cluster(name: str, port: int) -> dict:
        return {
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        }

    route = {"timeout": "30s"}
    match = {"prefix": "/v1/messages"}
    if fallback_api:
        match = {"prefix": "/", "headers": [{"name": "x-llm-failover-cluster", "present_match": True}]}
    http_filters = []
    if with_filter and module != NOOP_WASM:
        route["cluster_header"] = "x-llm-failover-cluster"
    else:
        route["cluster"] = "primary"
    if with_filter:
        http_filters.append({
            "name": "llm-failover",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "llm-failover", "root_id": "llm-failover",
                    "allow_on_headers_stop_iteration": True, "failure_policy": "FAIL_RELOAD",
                    "vm_config": {"vm_id": "llm-failover", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": str(module)}}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": json.dumps(bench_filter_config(fallback_api=fallback_api))},
                },
            },
        })
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "bench", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench", "codec_type": "AUTO",
                        "route_config": {"name": "r", "virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": [
                            {"match": match, "route": route}]}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [cluster("primary", primary_port), cluster("fallback", fallback_port)],
        },
    }


class EnvoyUnderTest:
    def __init__(self, tmp: Path, config: dict, concurrency: int = 1, pin: bool = True):
        self.tmp = tmp
        self.config = config
        self.port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        path = tmp / f"envoy-{self.port}.json"
        path.write_text(json.dumps(config))
        argv = [envoy_binary(), "-c", str(path), "--concurrency", str(concurrency), "--use-dynamic-base-id",
                "--log-level", "warn"]
        self.proc = Proc(pinned(PROXY_CPU, argv) if pin else argv, tmp / f"envoy-{self.port}.log")
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).read().strip() == b"LIVE":
                    break
            except OSError:
                pass
            if self.proc.p.poll() is not None or time.time() > deadline:
                raise RuntimeError("Envoy did not start:\n" + self.proc.log.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        # The CPU time read per run must be Envoy's, not a wrapper's (taskset execs Envoy).
        if not self.proc.comm().startswith("envoy"):
            raise RuntimeError(f"pid {self.proc.p.pid} is {self.proc.comm()!r}, not Envoy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/messages"

    def stats(self) -> dict[str, int]:
        time.sleep(0.25)  # the filter hands its counter increments to Envoy on its tick (100 ms)
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def stop(self) -> None:
        self.proc.stop()


def post(url: str, stream: bool = False, headers: dict | None = None,
         body: dict | None = None) -> tuple[int, dict, bytes]:
    body = dict(body or {"model": "claude-opus-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    if stream:
        body["stream"] = True
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    socket_errors: int = 0  # connect, read, write, timeout
    status_errors: int = 0  # answers with a status >= 400
    cpu_ns: int = 0  # CPU time of the measured process over the run (`wrk(..., cpu_of=)`)
    wall_s: float = 0.0  # wall time over which cpu_ns was taken

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_ns / 1000 / self.requests if self.requests else 0.0

    @property
    def busy_pct(self) -> float:
        """The measured process's CPU time over the run's wall time (100 = one core saturated)."""
        return 100.0 * self.cpu_ns / 1e9 / self.wall_s if self.wall_s else 0.0


def wrk(url: str, seconds: int, connections: int, stream: bool, delay_ms: float = 0,
        headers: dict | None = None, method_path_note: str = "", cpu_of: Proc | None = None) -> WrkResult:
    """One wrk run. With `cpu_of`, that process's CPU time is read just before and after it."""
    env = dict(os.environ, BENCH_STREAM="1" if stream else "0", BENCH_DELAY_MS=str(delay_ms))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_LUA)]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    cpu0, t0 = (cpu_of.cpu_ns(), time.monotonic()) if cpu_of else (0, 0.0)
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    cpu1, t1 = (cpu_of.cpu_ns(), time.monotonic()) if cpu_of else (0, 0.0)
    m = re.search(r"BENCH_JSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    d = json.loads(m.group(1))
    return WrkResult(
        rps=d["requests"] / (d["duration_us"] / 1e6),
        requests=d["requests"],
        p50_ms=d["p50_us"] / 1000, p90_ms=d["p90_us"] / 1000, p99_ms=d["p99_us"] / 1000,
        errors=d["socket_errors"] + d["status_errors"],
        socket_errors=d["socket_errors"], status_errors=d["status_errors"],
        cpu_ns=cpu1 - cpu0, wall_s=t1 - t0,
    )


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    envoy = version([envoy_binary(), "--version"])
    m = re.search(r"/(\d+\.\d+\.\d+)/", envoy)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "envoy": m.group(1) if m else envoy,
        "wrk": version(["wrk", "--version"]).split(" [")[0],
        "rustc": version(["rustc", "--version"]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="llm-failover-bench-"))
