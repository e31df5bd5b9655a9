"""Building blocks of `make bench`: the mock upstream, Envoy configs with and without the
filter, wrk runs (saturation and fixed rate), CPU pinning, stats, and the Markdown report."""

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
    """Two bench upstreams: one healthy, one answering 529."""

    tmp: Path
    healthy_port: int = 0
    failing_port: int = 0
    procs: list = field(default_factory=list)

    def start(self) -> "Upstreams":
        self.healthy_port, self.failing_port = free_port(), free_port()
        for port, status in ((self.healthy_port, 200), (self.failing_port, 529)):
            self.procs.append(Proc(pinned(LOAD_CPU, [str(UPSTREAM), "--port", str(port), "--status", str(status)]),
                                   self.tmp / f"upstream-{port}.log"))
            wait_port(port)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def bench_filter_config(with_filter_creds: bool = True) -> dict:
    return {
        "providers": [
            {"name": "primary", "cluster": "primary", "api": "anthropic", "authority": "api.anthropic.com",
             "credential": {"header": "x-api-key", "value": "sk-ant-primary-bench"}},
            {"name": "fallback", "cluster": "fallback", "api": "anthropic", "authority": "fallback.example.com",
             "credential": {"header": "x-api-key", "value": "sk-ant-fallback-bench"}},
        ],
        "chains": [{"name": "messages", "match": {"path_prefix": "/v1/messages"}, "providers": ["primary", "fallback"]}],
        # Opens after 3 failures and stays open for the whole run (no probes in the measurement).
        "breaker": {"consecutive_failures": 3, "open_ms": 3600000, "max_open_ms": 3600000},
        "degraded": {"mode": "message"},
    }


def envoy_config(listen: int, admin: int, primary_port: int, fallback_port: int, with_filter: bool,
                 module: Path = WASM) -> dict:
    """A listener with one route to the upstream. Without the filter (or with the empty noop
    module) the route names the cluster; with llm-failover it reads the filter's routing header."""
    def cluster(name: str, port: int) -> dict:
        return {
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        }

    route = {"timeout": "30s"}
    http_filters = []
    if with_filter and module == WASM:
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
                                      "value": json.dumps(bench_filter_config())},
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
                            {"match": {"prefix": "/v1/messages"}, "route": route}]}]},
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/messages"

    def stats(self) -> dict[str, int]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def stop(self) -> None:
        self.proc.stop()


def post(url: str, stream: bool = False, headers: dict | None = None) -> tuple[int, dict, bytes]:
    body = {"model": "claude-opus-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
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


def wrk(url: str, seconds: int, connections: int, stream: bool, delay_ms: float = 0,
        headers: dict | None = None, method_path_note: str = "") -> WrkResult:
    env = dict(os.environ, BENCH_STREAM="1" if stream else "0", BENCH_DELAY_MS=str(delay_ms))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_LUA)]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
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
