"""The end-to-end stack: mock providers and a real Envoy (2 workers) running the filter.

The Envoy config is envoy/demo.yaml itself, with its ports moved to free loopback ports, the
module path made absolute, and the filter configuration replaced per test. So the tests prove the
demo's shape as well as the filter.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import yaml

from mock_provider import start_mock

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
DEMO = ROOT / "envoy" / "demo.yaml"
DEMO_HOSTS = ROOT / "envoy" / "demo-hosts.yaml"

MESSAGE_BODY = {"model": "claude-opus-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def envoy_binary() -> str:
    path = os.environ.get("ENVOY") or str(ROOT / ".tools" / "bin" / "envoy")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no Envoy at {path}: run `make tools` or set ENVOY=/path/to/envoy")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_filter_config(base: Path = DEMO) -> dict:
    """The filter configuration of envoy/demo.yaml (or another demo config), as a dict."""
    return json.loads(_wasm_filter(yaml.safe_load(base.read_text()))["typed_config"]["config"]["configuration"]["value"])


def demo_env(base: Path = DEMO) -> dict[str, str]:
    """The Wasm VM's environment variables (demo credentials) of a demo config."""
    vm = _wasm_filter(yaml.safe_load(base.read_text()))["typed_config"]["config"]["vm_config"]
    return dict(vm["environment_variables"]["key_values"])


def _wasm_filter(cfg: dict) -> dict:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "llm-failover")


def _upstream_wasm(cfg: dict) -> dict | None:
    """The upstream (per-attempt) Wasm filter of a demo config, if it has one."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    router = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router")
    for f in router.get("typed_config", {}).get("upstream_http_filters", []):
        if f["name"] == "llm-failover-upstream":
            return f
    return None


def _route(cfg: dict) -> dict:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]


def build_envoy_config(
    filter_config: dict,
    listen_port: int,
    admin_port: int,
    cluster_ports: dict[str, int],
    env: dict[str, str] | None = None,
    route_timeout: str = "5s",
    idle_timeout: str = "3s",
    allow_stop_iteration: bool = True,
    base: Path = DEMO,
    upstream_filter: bool = True,
) -> dict:
    """The demo config with its ports moved and `filter_config` in place. Provider clusters are
    built from the filter config (each endpoint naming its provider in `llm_failover.provider`
    metadata) and every `failover.clusters` entry becomes an aggregate cluster of them.
    `upstream_filter=False` removes the per-attempt filter (what an Istio WasmPlugin install
    gets)."""
    cfg = yaml.safe_load(base.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listen_port
    wasm = _wasm_filter(cfg)["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    wasm["configuration"]["value"] = json.dumps(filter_config)
    # Istio's WasmPlugin cannot set this flag: tests run both ways.
    wasm["allow_on_headers_stop_iteration"] = allow_stop_iteration
    if env is not None:
        wasm["vm_config"]["environment_variables"] = {"key_values": env}
    up = _upstream_wasm(cfg)
    if up is not None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        router = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router")
        if upstream_filter:
            upc = up["typed_config"]["config"]
            upc["vm_config"]["code"]["local"]["filename"] = str(WASM)
            upc["allow_on_headers_stop_iteration"] = allow_stop_iteration
            if env is not None:
                upc["vm_config"]["environment_variables"] = {"key_values": env}
        else:
            del router["typed_config"]["upstream_http_filters"]
    route = _route(cfg)
    route["timeout"] = route_timeout
    route["idle_timeout"] = idle_timeout
    clusters = cfg["static_resources"]["clusters"]
    plain = [c for c in clusters if "load_assignment" in c]
    aggregates = [c for c in clusters if "cluster_type" in c]
    template = plain[0]
    by_name = {c["name"]: c for c in plain}
    provider_of = {}
    for p in filter_config.get("providers", []):
        provider_of.setdefault(p["cluster"], p["name"])
    out = []
    for name, port in cluster_ports.items():
        c = copy.deepcopy(by_name.get(name, template))
        c["name"] = name
        c["load_assignment"]["cluster_name"] = name
        ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        ep["endpoint"]["address"]["socket_address"]["port_value"] = port
        if name in provider_of:
            ep["metadata"] = {"filter_metadata": {"llm_failover": {"provider": provider_of[name]}}}
        else:
            ep.pop("metadata", None)
        out.append(c)
    cluster_of = {p["name"]: p["cluster"] for p in filter_config.get("providers", [])}
    seen = set()
    for chain in filter_config.get("chains", []):
        for fc in (chain.get("failover") or {}).get("clusters", []):
            if fc["cluster"] in seen:
                continue
            seen.add(fc["cluster"])
            agg = copy.deepcopy(aggregates[0]) if aggregates else {
                "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED",
                "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"}},
                "circuit_breakers": {"thresholds": [{"max_retries": 100000}]}}
            agg["name"] = fc["cluster"]
            agg["cluster_type"]["typed_config"]["clusters"] = [cluster_of[n] for n in fc["providers"]]
            out.append(agg)
    cfg["static_resources"]["clusters"] = out
    return cfg


class Envoy:
    """A real Envoy process with `--concurrency 2`."""

    def __init__(self, config: dict, workdir: Path, concurrency: int = 2):
        self.config_path = workdir / "envoy.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = workdir / "envoy.log"
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 30.0) -> "Envoy":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
             "--use-dynamic-base-id", "--log-level", "warn", "--component-log-level", "wasm:debug",
             "--file-flush-interval-msec", "200"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.admin + "/ready", timeout=0.5).text.strip() == "LIVE":
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Envoy not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wasm_log(self, level: str = "info") -> list[str]:
        return [line for line in self.log().splitlines() if f"[{level}][wasm]" in line and "wasm log" in line]

    def stats(self) -> dict[str, int]:
        # The filter hands its counter increments to Envoy on its VMs' tick (every 100 ms).
        time.sleep(0.25)
        text = requests.get(self.admin + "/stats", timeout=5).text
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


class Stack:
    """Mock providers + Envoy running the filter with a given configuration."""

    def __init__(self, filter_config: dict | None = None, providers=("primary", "fallback"),
                 env: dict[str, str] | None = None, mocks: dict[str, tuple[str, dict]] | None = None,
                 **envoy_kwargs):
        """`providers`: the mock providers to start (by name; default API anthropic).
        `mocks`: per name, (api, options) for mocks of another API (see mock_provider.py)."""
        self.filter_config = filter_config if filter_config is not None else demo_filter_config()
        self.mock_apis = mocks or {}
        self.provider_names = tuple(providers) + tuple(n for n in self.mock_apis if n not in providers)
        self.env = env if env is not None else {"FALLBACK_API_KEY": "demo-fallback-key"}
        self.envoy_kwargs = envoy_kwargs
        self.mocks = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="llm-failover-e2e-")

    def __enter__(self) -> "Stack":
        ports = {}
        for name in self.provider_names:
            api, options = self.mock_apis.get(name, ("anthropic", {}))
            server, port = start_mock(name, api=api, **options)
            self.mocks[name] = server
            ports[name] = port
        clusters = {p["cluster"]: ports[p["name"]] for p in self.filter_config["providers"] if p["name"] in ports}
        for p in self.filter_config["providers"]:
            clusters.setdefault(p["cluster"], free_port())  # a provider nobody listens on
        for attempt in range(3):
            cfg = build_envoy_config(self.filter_config, free_port(), free_port(), clusters, self.env,
                                     **self.envoy_kwargs)
            self.envoy = Envoy(cfg, Path(self.tmp.name))
            try:
                self.envoy.start()
                return self
            except RuntimeError as e:
                # A free port taken by another process between the probe and Envoy's bind: retry.
                self.envoy.stop()
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
        return self

    def __exit__(self, *exc) -> None:
        self.envoy.stop()
        for m in self.mocks.values():
            m.shutdown()
        if exc[0] is not None:
            print("---- envoy log (tail) ----\n" + self.envoy.log()[-6000:])
        self.tmp.cleanup()

    @property
    def url(self) -> str:
        return self.envoy.url

    def fault(self, provider: str, mode: str, **params) -> None:
        self.mocks[provider].set_fault({"mode": mode, **params})

    def received(self, provider: str) -> list[dict]:
        return self.mocks[provider].snapshot_requests()

    def post(self, body: dict | None = None, headers: dict | None = None, path: str = "/v1/messages",
             new_connection: bool = True, **kw) -> requests.Response:
        h = {"content-type": "application/json"}
        if new_connection:
            h["connection"] = "close"
        h.update(headers or {})
        return requests.post(self.url + path, data=json.dumps(body or MESSAGE_BODY), headers=h, timeout=kw.pop("timeout", 15), **kw)

    def wasm_failures(self) -> list[str]:
        """Signs that a Wasm VM crashed: reloads, or runtime errors in the log."""
        stats = self.envoy.stats()
        bad = [f"{k}={v}" for k, v in stats.items() if k.startswith("wasm.") and k.endswith(".vm_reload") and v]
        bad += [line for line in self.envoy.log().splitlines()
                if "Function: proxy_on" in line or "RuntimeError" in line or "panicked" in line]
        return bad


def sse_events(text: str) -> list[tuple[str, dict]]:
    """Parses an Anthropic SSE body into (event, data) pairs."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name or "message", json.loads("\n".join(data))))
    return events
