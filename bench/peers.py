"""`make bench-peers`: Envoy with llm-failover against two other LLM gateways, in one run on one
machine, with the same upstream, the same load generator and the same CPU layout as `make bench`.

Rows (each proxy alone on CPU 0; wrk and the two bench upstreams on CPU 1):
  Envoy      plain (no filter), the filter with the breaker closed, the filter rerouting to the
             fallback (primary answering 529, its breaker open); started by run.start_scenario
  LiteLLM    proxy (PyPI `litellm[proxy]`, pinned, installed into .tools/peers-venv), one worker,
             its Anthropic-format /v1/messages; primary and fallback deployments in a config.yaml
  Portkey    gateway (npm `@portkey-ai/gateway`, pinned, installed into .tools/portkey), Node,
             its /v1/messages; fallback targets in the `x-portkey-config` header
Each peer in two cases: common (primary healthy) and failover (primary answers 529, fallback
healthy). Every row is checked with one request (status 200, a complete answer, the expected
provider) before it is measured: JSON always, SSE where the peer streams through correctly.

Phase 1 measures throughput at saturation for every row; phase 2 latency at one fixed rate for
every row: the requested --rate, or a lower common rate when a row cannot sustain it.
Writes the `peers` section of bench/RESULTS.md.

Usage: python bench/peers.py [--seconds N] [--rate R] [--connections C] [--peers litellm,portkey]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
from harness import (  # noqa: E402
    LOAD_CPU, PROXY_CPU, ROOT, WASM, Proc, Upstreams, WrkResult, free_port, machine_info, pinned, post, temp_dir, wrk,
)

LITELLM_VERSION = "1.106.12"
PORTKEY_VERSION = "1.15.2"
PEERS_VENV = ROOT / ".tools" / "peers-venv"
PORTKEY_DIR = ROOT / ".tools" / "portkey"
PORTKEY_PKG = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway"
# LiteLLM refuses to start without a master key; clients send it as a bearer token.
LITELLM_MASTER_KEY = "sk-bench-litellm-master-key-0123456789"
MODEL = "claude-opus-4-6"  # what bench/wrk.lua asks for
FALLBACK_GROUP = "claude-opus-4-6-fallback"

RATE_CONNS = 10  # as run.py
WARMUP_SECONDS = 2
RATE_HEADROOM = 0.5  # a row sustains a fixed rate up to this share of its saturation throughput
INSTALL_TIMEOUT = 1200
START_TIMEOUT = 120

PEER_NAMES = {"envoy": "Envoy", "litellm": "LiteLLM proxy", "portkey": "Portkey gateway"}
CASES = {
    ("envoy", "plain"): "plain Envoy, no filter",
    ("envoy", "closed"): "llm-failover, breaker closed",
    ("envoy", "reroute"): "llm-failover, rerouting to the fallback (primary 529, breaker open)",
    ("litellm", "common"): "common case (primary healthy)",
    ("litellm", "failover"): "failover (primary 529 -> fallback)",
    ("portkey", "common"): "common case (primary healthy)",
    ("portkey", "failover"): "failover (primary 529 -> fallback)",
}

# Node's http server listens on every interface when no host is given, and the Portkey gateway
# gives none: this preload makes its listen() bind 127.0.0.1 only.
LOOPBACK_PRELOAD = r"""
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (typeof args[1] !== 'string') args.splice(1, args[1] === undefined ? 1 : 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
"""


def loopback_env(**extra: str) -> dict:
    """The environment for a peer: no HTTP proxy may take its upstream traffic off the machine."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


def short(text: str, n: int = 300) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def log_hint(log: Path) -> str:
    """The last error-looking line of a peer's log, for the report."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-400:]):
        if re.search(r"error|exception|refused|traceback", line, re.I):
            return short(line, 200)
    return short(lines[-1], 200) if lines else ""


def cmd(argv: list[str], log: Path, timeout: float, cwd: Path | None = None) -> None:
    """Runs an install step with its output in log; raises with the output's tail if it fails."""
    with open(log, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd,
                                env=loopback_env()).returncode
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`{' '.join(argv[:4])} ...` timed out after {timeout:.0f} s")
        except OSError as e:
            raise RuntimeError(f"cannot run {argv[0]}: {e}")
    if rc != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"`{' '.join(argv[:6])}` exited {rc}: {short(' | '.join(tail))}")


def output(argv: list[str], timeout: float = 60) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout.strip()


# --- installs ---------------------------------------------------------------------------------


def install_litellm(log: Path) -> str:
    """litellm[proxy]==LITELLM_VERSION in its own venv (not the test venv); returns the version."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        cmd([base, "-m", "venv", str(PEERS_VENV)], log, 300)

    def installed() -> str:
        try:
            return output([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
        except (OSError, subprocess.TimeoutExpired):
            return ""

    if installed() != LITELLM_VERSION or not (PEERS_VENV / "bin" / "litellm").exists():
        cmd([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"litellm[proxy]=={LITELLM_VERSION}"], log, INSTALL_TIMEOUT)
    version = installed()
    if version != LITELLM_VERSION:
        raise RuntimeError(f"litellm {version or 'missing'} in {PEERS_VENV} after installing {LITELLM_VERSION}")
    return version


def install_portkey(log: Path) -> str:
    """@portkey-ai/gateway@PORTKEY_VERSION under .tools/portkey; returns 'gateway version, node version'."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise RuntimeError("node and npm are needed for the Portkey gateway and are not on PATH")
    node_version = output([node, "--version"])

    def installed() -> str:
        try:
            return json.loads((PORTKEY_PKG / "package.json").read_text()).get("version", "")
        except (OSError, ValueError):
            return ""

    if installed() != PORTKEY_VERSION or not (PORTKEY_PKG / "build" / "start-server.js").exists():
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        cmd([npm, "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund",
             f"@portkey-ai/gateway@{PORTKEY_VERSION}"], log, INSTALL_TIMEOUT)
    if installed() != PORTKEY_VERSION:
        raise RuntimeError(f"@portkey-ai/gateway {installed() or 'missing'} after installing {PORTKEY_VERSION}")
    return node_version


# --- the proxies under test -------------------------------------------------------------------


def wait_ready(proc: Proc, url: str, timeout: float) -> None:
    """Until url answers (any HTTP status), the process dies, or timeout."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if proc.p.poll() is not None:
            raise RuntimeError(f"exited with {proc.p.returncode} at start: {log_hint(proc.log)}")
        if time.time() > deadline:
            raise RuntimeError(f"not answering {url} after {timeout:.0f} s: {log_hint(proc.log)}")
        time.sleep(0.25)


class Subject:
    """A proxy under test, started for one case. url/headers are what wrk sends."""

    url: str
    headers: dict
    log: Path | None = None

    def route(self, h: dict) -> tuple[str, str | None]:
        """(evidence from the response headers, error if not the expected provider)."""
        raise NotImplementedError

    def rss_kb(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class EnvoySubject(Subject):
    def __init__(self, case: str, tmp: Path, ups: Upstreams):
        self.case = case
        self.env = run.start_scenario(case, tmp, ups)  # asserts the scenario itself (JSON and SSE)
        self.url, self.headers, self.log = self.env.url, {}, self.env.proc.log

    def route(self, h: dict) -> tuple[str, str | None]:
        got = h.get("x-llm-provider")
        expect = {"plain": None, "closed": "primary", "reroute": "fallback"}[self.case]
        if expect is None:
            return "no filter: the route's only cluster is the healthy upstream", None
        return f"`x-llm-provider: {got}`", None if got == expect else f"x-llm-provider {got!r}, expected {expect!r}"

    def rss_kb(self) -> int:
        return self.env.proc.rss_kb()

    def stop(self) -> None:
        self.env.stop()


class ProcSubject(Subject):
    proc: Proc

    def rss_kb(self) -> int:
        return self.proc.rss_kb()

    def stop(self) -> None:
        self.proc.stop()


class LiteLLMSubject(ProcSubject):
    """One LiteLLM proxy worker. `claude-opus-4-6` is the primary deployment (healthy upstream in the
    common case, the 529 one in the failover case) with the fallback group on the healthy upstream."""

    def __init__(self, case: str, tmp: Path, ups: Upstreams):
        self.case = case
        primary = ups.failing_port if case == "failover" else ups.healthy_port

        def deployment(name: str, port: int, key: str) -> dict:
            return {"model_name": name, "litellm_params": {
                "model": f"anthropic/{MODEL}", "api_base": f"http://127.0.0.1:{port}", "api_key": key}}

        config = {
            "model_list": [deployment(MODEL, primary, "sk-ant-primary-bench"),
                           deployment(FALLBACK_GROUP, ups.healthy_port, "sk-ant-fallback-bench")],
            "router_settings": {"fallbacks": [{MODEL: [FALLBACK_GROUP]}], "num_retries": 0},
            "litellm_settings": {"callbacks": [], "success_callback": [], "failure_callback": [],
                                 "set_verbose": False, "json_logs": False, "turn_off_message_logging": True,
                                 "telemetry": False},
            "general_settings": {"disable_spend_logs": True},
        }
        path = tmp / f"litellm-{case}.yaml"  # JSON is YAML
        path.write_text(json.dumps(config, indent=2))
        port = free_port()
        env = loopback_env(LITELLM_MASTER_KEY=LITELLM_MASTER_KEY, LITELLM_TELEMETRY="False",
                           LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION")
        argv = [str(PEERS_VENV / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1",
                "--port", str(port), "--num_workers", "1"]
        self.log = tmp / f"litellm-{case}-{port}.log"
        self.proc = Proc(pinned(PROXY_CPU, argv), self.log, env=env)
        try:
            wait_ready(self.proc, f"http://127.0.0.1:{port}/health/liveliness", START_TIMEOUT)
        except BaseException:
            self.proc.stop()
            raise
        self.url = f"http://127.0.0.1:{port}/v1/messages"
        self.headers = {"authorization": f"Bearer {LITELLM_MASTER_KEY}"}

    def route(self, h: dict) -> tuple[str, str | None]:
        group, fallbacks = h.get("x-litellm-model-group"), h.get("x-litellm-attempted-fallbacks")
        evidence = f"`x-litellm-model-group: {group}`, `x-litellm-attempted-fallbacks: {fallbacks}`"
        if self.case == "failover":
            ok = group == FALLBACK_GROUP and fallbacks not in (None, "", "0")
        else:
            ok = group == MODEL and fallbacks in (None, "", "0")
        return evidence, None if ok else f"unexpected route: {evidence}"


class PortkeySubject(ProcSubject):
    """The Portkey gateway (one Node process), fallback strategy over two Anthropic targets."""

    def __init__(self, case: str, tmp: Path, ups: Upstreams):
        self.case = case
        primary = ups.failing_port if case == "failover" else ups.healthy_port

        def target(port: int, key: str) -> dict:
            return {"provider": "anthropic", "custom_host": f"http://127.0.0.1:{port}/v1", "api_key": key}

        config = {"strategy": {"mode": "fallback"},
                  "targets": [target(primary, "sk-ant-primary-bench"), target(ups.healthy_port, "sk-ant-fallback-bench")]}
        preload = tmp / "loopback.cjs"
        preload.write_text(LOOPBACK_PRELOAD)
        port = free_port()
        argv = [shutil.which("node") or "node", "-r", str(preload), str(PORTKEY_PKG / "build" / "start-server.js"),
                f"--port={port}", "--headless"]
        self.log = tmp / f"portkey-{case}-{port}.log"
        self.proc = Proc(pinned(PROXY_CPU, argv), self.log, env=loopback_env())
        try:
            wait_ready(self.proc, f"http://127.0.0.1:{port}/", START_TIMEOUT)
        except BaseException:
            self.proc.stop()
            raise
        self.url = f"http://127.0.0.1:{port}/v1/messages"
        self.headers = {"x-portkey-config": json.dumps(config, separators=(",", ":"))}

    def route(self, h: dict) -> tuple[str, str | None]:
        used = h.get("x-portkey-last-used-option-index")
        expect = "config.targets[1]" if self.case == "failover" else "config.targets[0]"
        evidence = f"`x-portkey-last-used-option-index: {used}`"
        return evidence, None if used == expect else f"unexpected route: {evidence} (expected {expect})"


STARTERS = {"envoy": EnvoySubject, "litellm": LiteLLMSubject, "portkey": PortkeySubject}


def complete_stream(body: bytes) -> bool:
    lines = [ln.strip() for ln in body.decode(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return False
    last = lines[-1]
    return last == "data: [DONE]" or re.fullmatch(r'data:\s*\{\s*"type"\s*:\s*"message_stop"\s*\}', last) is not None


def check(s: Subject, stream: bool) -> tuple[str, str | None]:
    """One request: 200, a complete answer, from the expected provider. (evidence, error)."""
    try:
        status, h, body = post(s.url, stream, s.headers)
    except Exception as e:  # noqa: BLE001 - any failure is a reason not to measure, reported
        return "", f"request failed: {e}"
    if status != 200:
        hint = log_hint(s.log) if s.log else ""
        return "", f"HTTP {status} `{short(body.decode(errors='replace'), 120)}`" + (f"; log: `{hint}`" if hint else "")
    if stream:
        if not complete_stream(body):
            return "", f"streamed body does not end with message_stop or [DONE]: `{short(body[-160:].decode(errors='replace'))}`"
    else:
        try:
            if json.loads(body).get("type") != "message":
                raise ValueError
        except ValueError:
            return "", f"not an Anthropic Messages JSON: `{short(body[:160].decode(errors='replace'))}`"
    return s.route(h)


# --- measurement ------------------------------------------------------------------------------


@dataclass
class Row:
    peer: str
    case: str
    stream: bool
    sat: WrkResult | None = None
    fixed: WrkResult | None = None
    rss_kb: int = 0
    evidence: str = ""
    missing: str | None = None  # why it was not (fully) measured

    @property
    def key(self) -> tuple[str, str, bool]:
        return (self.peer, self.case, self.stream)


@dataclass
class Plan:
    subjects: list[tuple[str, str]]
    rows: dict = field(default_factory=dict)

    def row(self, peer: str, case: str, stream: bool) -> Row:
        return self.rows.setdefault((peer, case, stream), Row(peer, case, stream))


def phase(plan: Plan, tmp: Path, ups: Upstreams, seconds: int, connections: int, rate: float | None) -> None:
    """Starts each subject in turn and measures its rows: saturation (rate None) or the fixed rate."""
    for peer, case in plan.subjects:
        rows = [plan.row(peer, case, stream) for stream in (False, True)]
        if all(r.missing for r in rows):
            continue
        label = f"{peer}/{case}"
        try:
            s = STARTERS[peer](case, tmp, ups)
        except Exception as e:  # noqa: BLE001
            if peer == "envoy":
                raise
            for r in rows:
                r.missing = r.missing or f"did not start: {short(str(e))}"
            print(f"{label:17} not measured: {e}", flush=True)
            continue
        try:
            for r in rows:
                if r.missing:
                    continue
                evidence, err = check(s, r.stream)
                if err:
                    if peer == "envoy":
                        raise RuntimeError(f"{label}: {err}")
                    r.missing = err
                    print(f"{label:17} {'sse ' if r.stream else 'json'}  not measured: {err}", flush=True)
                    continue
                r.evidence = r.evidence or evidence
                try:
                    wrk(s.url, WARMUP_SECONDS, connections, r.stream, headers=s.headers)
                    if rate is None:
                        r.sat = wrk(s.url, seconds, connections, r.stream, headers=s.headers)
                        r.rss_kb = s.rss_kb()
                        print(f"{label:17} {'sse ' if r.stream else 'json'}  saturation {r.sat.rps:9.0f} req/s  "
                              f"errors {r.sat.errors}", flush=True)
                    else:
                        r.fixed = wrk(s.url, seconds, RATE_CONNS, r.stream, delay_ms=RATE_CONNS * 1000 / rate,
                                      headers=s.headers)
                        f = r.fixed
                        print(f"{label:17} {'sse ' if r.stream else 'json'}  fixed {f.rps:7.1f} req/s  p50 {f.p50_ms:.3f}"
                              f"  p90 {f.p90_ms:.3f}  p99 {f.p99_ms:.3f} ms  errors {f.errors}", flush=True)
                except Exception as e:  # noqa: BLE001
                    if peer == "envoy":
                        raise
                    r.missing = f"wrk run failed: {short(str(e))}"
                    print(f"{label:17} {'sse ' if r.stream else 'json'}  {r.missing}", flush=True)
        finally:
            s.stop()


def nice_floor(x: float) -> int:
    """The largest 1, 2, 5 x 10^k at most x (at least 1)."""
    if x < 1:
        return 1
    k = 10 ** math.floor(math.log10(x))
    return max(m * k for m in (1, 2, 5) if m * k <= x)


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.095 else f"{x:.2g}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    ap.add_argument("--rate", type=int, default=1000, help="fixed request rate for the latency runs (lowered for "
                                                            "every row if a row cannot sustain it)")
    ap.add_argument("--connections", type=int, default=32, help="connections for the saturation runs")
    ap.add_argument("--peers", default="litellm,portkey", help="comma-separated peers to include (litellm, portkey)")
    ap.add_argument("--long-seconds", type=int, default=None, help=argparse.SUPPRESS)  # BENCH_ARGS shared with run.py
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in ("litellm", "portkey")]
    if unknown:
        ap.error(f"unknown peer(s): {', '.join(unknown)}")

    tmp = temp_dir()
    print(f"logs in {tmp}", flush=True)
    info = machine_info()
    plan = Plan([("envoy", "plain"), ("envoy", "closed"), ("envoy", "reroute")]
                + [(p, c) for p in peers for c in ("common", "failover")])
    versions: dict[str, str] = {}
    installers = {"litellm": install_litellm, "portkey": install_portkey}
    for p in peers:
        print(f"installing {p} ...", flush=True)
        try:
            extra = installers[p](tmp / f"install-{p}.log")
            versions[p] = LITELLM_VERSION if p == "litellm" else PORTKEY_VERSION
            if p == "portkey":
                versions["node"] = extra
            if p == "litellm":
                versions["python"] = output([str(PEERS_VENV / "bin" / "python"), "-c",
                                             "import platform; print(platform.python_version())"])
        except Exception as e:  # noqa: BLE001
            print(f"{p}: not installed: {e}", flush=True)
            for c in ("common", "failover"):
                for stream in (False, True):
                    plan.row(p, c, stream).missing = f"not installed: {short(str(e))}"

    module_before = (WASM.stat().st_size, WASM.stat().st_mtime_ns)
    ups = Upstreams(tmp).start()
    try:
        status, _, body = post(f"http://127.0.0.1:{ups.failing_port}/v1/messages")
        assert status == 529, ("the failing upstream should answer 529", status, body[:200])
        failing_status = status
        phase(plan, tmp, ups, args.seconds, args.connections, rate=None)
        measured = [r for r in plan.rows.values() if r.sat and not r.missing]
        slowest = min(measured, key=lambda r: r.sat.rps)
        rate = args.rate
        if args.rate > RATE_HEADROOM * slowest.sat.rps:
            rate = min(args.rate, nice_floor(RATE_HEADROOM * slowest.sat.rps))
        print(f"fixed rate for every row: {rate} req/s", flush=True)
        phase(plan, tmp, ups, args.seconds, args.connections, rate=rate)
    finally:
        ups.stop()

    for r in plan.rows.values():
        if r.peer == "envoy" and not (r.sat and r.fixed):
            raise RuntimeError(f"Envoy row {r.key} not measured: {r.missing}")

    module_changed = (WASM.stat().st_size, WASM.stat().st_mtime_ns) != module_before
    if module_changed:
        print(f"warning: {WASM.relative_to(ROOT)} was rebuilt during the run; the Envoy rows may mix two builds",
              file=sys.stderr)

    # --- report ---------------------------------------------------------------------------------
    base = {s: plan.rows[("envoy", "plain", s)] for s in (False, True)}
    cmdline = f"python bench/peers.py --seconds {args.seconds} --rate {args.rate}" + (
        f" --connections {args.connections}" if args.connections != 32 else "") + (
        f" --peers {args.peers}" if peers != ["litellm", "portkey"] else "")
    peer_versions = []
    if "litellm" in peers:
        peer_versions.append(
            f"LiteLLM proxy {versions.get('litellm', f'{LITELLM_VERSION} (not installed)')} (PyPI `litellm[proxy]`"
            + (f", Python {versions['python']}" if "python" in versions else "")
            + ", uvicorn, `--num_workers 1`, in `.tools/peers-venv`)")
    if "portkey" in peers:
        peer_versions.append(
            f"Portkey gateway {versions.get('portkey', f'{PORTKEY_VERSION} (not installed)')} (npm `@portkey-ai/gateway`"
            + (f", Node {versions['node']}" if "node" in versions else "") + ", in `.tools/portkey`)")
    lines = [
        "<!-- section:peers (written by `make bench-peers`; do not edit) -->",
        "## Peers: LiteLLM proxy and Portkey gateway",
        "",
        f"Run {info['date']} with `make bench-peers` (`{cmdline}`).",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}.",
        f"- Versions: Envoy {info['envoy']} (`--concurrency 1`) with this tree's llm-failover module "
        f"({WASM.stat().st_size / 1024:.0f} KB){' (**rebuilt during the run: re-run**)' if module_changed else ''}; "
        + "; ".join(peer_versions) + ".",
        f"- CPU layout (as `make bench`): the proxy under test alone on CPU {PROXY_CPU} (Envoy; the LiteLLM worker "
        f"process; the Portkey Node process), one at a time; wrk ({info['wrk']}, 1 thread) and the two bench "
        f"upstreams (`bench/upstream`: one healthy, one answering 529) share CPU {LOAD_CPU}.",
        "- Same request for every row (`bench/wrk.lua`: an Anthropic Messages request, ~1.1 KB JSON answer or a "
        "50-event SSE stream) to the same path, `/v1/messages`: Envoy's listener, LiteLLM's Anthropic-format "
        "`/v1/messages` endpoint (not `/chat/completions`), Portkey's `/v1/messages` route. Every proxy speaks "
        "Anthropic Messages to the upstream as the client does (no translation to another API format on the wire).",
        f"- Saturation: {args.connections} connections, {args.seconds} s after a {WARMUP_SECONDS} s warm-up. "
        f"Fixed rate: {RATE_CONNS} connections paced to ~{rate} req/s, {args.seconds} s (latency per request as wrk "
        f"measures it; not corrected for coordinated omission; at a low rate the p99 rests on few requests, see the "
        f"count). Each proxy is started afresh for each of the two phases.",
    ]
    if rate != args.rate:
        lines.append(
            f"- **Fixed rate lowered for every row**: {args.rate} req/s was asked for, but the slowest row "
            f"({PEER_NAMES[slowest.peer]}, {CASES[(slowest.peer, slowest.case)]}, "
            f"{'SSE' if slowest.stream else 'JSON'}) reached only {slowest.sat.rps:,.1f} req/s at saturation, so all "
            f"rows use {rate} req/s (the largest 1-2-5 step at most {RATE_HEADROOM:.0%} of that). "
            "The `filter` section above has Envoy at the requested rate; at a rate this low the cores idle between "
            "requests, so the latencies here do not compare with that section's.")
    lines += [
        f"- Before each row is measured, one request must answer 200 with a complete answer (JSON: a Messages "
        f"object; SSE: ends with `message_stop` or `[DONE]`) from the expected provider (column *checked by*). "
        f"The failing upstream itself answered HTTP {failing_status} to the same request.",
        "",
        "| proxy | case | answer | req/s at saturation | vs plain Envoy | fixed-rate req/s (requests) | p50 ms | p90 ms | p99 ms "
        "| p99 vs plain Envoy | RSS after saturation (MB) | errors (socket / status) | checked by |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for peer, case in plan.subjects:
        for stream in (False, True):
            r = plan.rows[(peer, case, stream)]
            head = f"| {PEER_NAMES[peer]} | {CASES[(peer, case)]} | {'SSE' if stream else 'JSON'} |"
            if r.missing and not r.sat:
                lines.append(f"{head} — | | | | | | | | | **not measured**: {r.missing.replace('|', '/')} |")
                continue
            s, b = r.sat, base[stream]
            sat_cells = f" {s.rps:,.0f} | {fmt_ratio(s.rps / b.sat.rps)} |"
            if r.fixed:
                f = r.fixed
                fixed_cells = (f" {f.rps:,.1f} ({f.requests:,}) | {f.p50_ms:.2f} | {f.p90_ms:.2f} | {f.p99_ms:.2f} | "
                               f"{f.p99_ms / b.fixed.p99_ms:,.1f}x |")
                errors = f"{s.socket_errors + f.socket_errors} / {s.status_errors + f.status_errors}"
            else:
                fixed_cells = " — | | | | |"
                errors = f"{s.socket_errors} / {s.status_errors}"
            note = r.evidence + (f"; fixed-rate run missing: {r.missing.replace('|', '/')}" if r.missing else "")
            lines.append(f"{head}{sat_cells}{fixed_cells} {r.rss_kb / 1024:,.1f} | {errors} | {note} |")

    portkey_sse = [plan.rows[("portkey", c, True)] for c in ("common", "failover")] if "portkey" in peers else []
    portkey_sse_missing = [r.missing for r in portkey_sse if r.missing and "not installed" not in r.missing
                           and "did not start" not in r.missing]
    lines += [
        "",
        "What each one does with a request (why the numbers differ):",
        "",
        "- **Envoy + llm-failover**: C++ proxy, one worker; the filter is a Wasm module (V8) that reads the request "
        "headers, picks the provider from its shared-data breaker state and rewrites the route's cluster, "
        "`:authority` and credential. Bodies pass through unchanged: the filter only scans them as they stream "
        "(`model` and `stream` in the request, the SSE event names of the answer, to classify the outcome) and "
        "builds no JSON. "
        "In the rerouting row the primary's breaker is already open, so each request makes one upstream call, "
        "to the fallback (the failures that opened the breaker happen before the measurement).",
    ]
    if "litellm" in peers:
        lines.append(
            "- **LiteLLM proxy**: Python (FastAPI on uvicorn, asyncio), one worker process. Each request is "
            "authenticated (the master key, no database), parsed, routed by its Router (deployment selection, "
            "fallbacks), sent with its own HTTP client, and the answer rebuilt; its logging and cost-tracking "
            "hooks run after each call even with no callbacks configured. Telemetry off, no database, "
            "`LITELLM_LOG=ERROR`, the local model-cost map. Failover is per request: each request tries the primary, "
            "gets the 529 and is sent again to the fallback group (two upstream calls), unless LiteLLM's default "
            "cooldown has set the primary aside (for a one-deployment group it does so only once every request of "
            "the current minute has failed and there were many of them).")
    if "portkey" in peers:
        if portkey_sse_missing:
            sse = "It failed the SSE check here (the error is in the table), so it has no SSE rows."
        elif any(r.sat for r in portkey_sse):
            sse = "It streamed SSE through correctly here."
        else:
            sse = ""
        if any("immutable" in m for m in portkey_sse_missing):
            sse += (" (`TypeError: immutable`: the gateway adds its `x-portkey-*` headers to a streamed upstream "
                    "response whose headers are read-only under Node; a known gateway issue, "
                    "Portkey-AI/gateway#1389 and #1550.)")
        lines.append(
            "- **Portkey gateway**: Node.js (Hono on `@hono/node-server`), one event loop. Each request carries its "
            "routing config in the `x-portkey-config` header (JSON, parsed per request); the Anthropic provider "
            "passes `/v1/messages` through to the target's `custom_host` with the target's key. Failover is per "
            "request and has no breaker: every request goes to the primary first, gets the 529, then to the "
            "fallback target (two upstream calls). The gateway binds every interface by default; here a preload "
            "makes it listen on 127.0.0.1 only. " + sse)
    idle_closes = [r for r in plan.rows.values() if r.peer != "envoy" and r.fixed and r.fixed.socket_errors]
    if idle_closes:
        lines += ["", "Socket errors in the fixed-rate runs: wrk's paced connections sometimes idle for seconds, and "
                  "LiteLLM's uvicorn and Portkey's Node server close a keep-alive connection after a few idle seconds "
                  "(Envoy keeps it), so such an error can be a connection closed while idle rather than a failed "
                  "request. Status errors would be failed requests."]
    lines += [
        "",
        f"Versions are pinned in `bench/peers.py` (LiteLLM {LITELLM_VERSION}, Portkey {PORTKEY_VERSION}).",
        "<!-- end:peers -->",
    ]
    run.write_section(run.RESULTS, "peers", "\n".join(lines))
    print(f"\nwrote {run.RESULTS.relative_to(ROOT)} (section peers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
