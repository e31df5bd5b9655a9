#!/usr/bin/env python3
"""Chaos run: a scripted provider outage under steady load, seen through Envoy's stats.

Starts the local stack of the end-to-end tests (tests/stack.py: the two mock providers in this
process, the pinned Envoy with envoy/demo.yaml on free loopback ports, the filter with a breaker
tuned for short phases), puts a fixed-rate load on it with wrk for the whole run, walks through

    baseline -> primary answers 529 -> primary recovers -> every provider fails -> recovery

and samples Envoy's /stats/prometheus every second. It writes to --out (default chaos/):

    timeline.png   requests per provider, client-visible 5xx, degraded answers, breaker states,
                   with the phases shaded and labelled
    summary.md     client success rate per phase, time to open the breaker, time for traffic to
                   return to the primary, counts (also printed to stdout)
    summary.json   the same figures, for tests
    timeline.csv   the per-second series behind the picture
    breaker.log    the breaker transitions Envoy logged

    make chaos                              # ~3 minutes
    make chaos CHAOS_ARGS="--short"         # under a minute (what the tests run)
    .tools/venv/bin/python scripts/chaos.py --short --out /tmp/chaos --rate 40

Everything listens on 127.0.0.1 only, every wait is bounded, and Envoy, wrk and the mocks are
stopped on the way out whatever happens.
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
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402

from stack import WASM, Stack, demo_filter_config  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The scenario


@dataclass
class Phase:
    key: str
    label: str
    seconds: int
    faults: dict[str, str]  # provider -> mock fault mode, applied when the phase starts
    start: float = 0.0  # seconds since the run started (planned)
    applied_at: float | None = None  # when the faults were actually applied

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def describe_faults(self) -> str:
        if not self.faults:
            return "all healthy"
        return ", ".join(f"{p} {'healthy' if m == 'none' else m}" for p, m in self.faults.items())


# seconds per phase: (short, long)
SCENARIO = [
    ("baseline", "baseline", (8, 30), {}),
    ("primary_outage", "primary answers 529", (12, 45), {"primary": "529"}),
    ("primary_recovered", "primary recovered", (8, 30), {"primary": "none"}),
    ("all_down", "all providers down", (10, 30), {"primary": "529", "fallback": "500"}),
    ("recovery", "recovery", (12, 40), {"primary": "none", "fallback": "none"}),
]
# What the picture says under each phase's name.
PHASE_NOTES = {
    "baseline": "all healthy", "primary_outage": "fallback healthy", "primary_recovered": "primary healthy again",
    "all_down": "primary 529, fallback 500", "recovery": "all healthy",
}


def phases(short: bool) -> list[Phase]:
    out, t = [], 0
    for key, label, secs, faults in SCENARIO:
        s = secs[0] if short else secs[1]
        out.append(Phase(key, label, s, dict(faults), start=t))
        t += s
    return out


def chaos_filter_config(open_ms: int, max_open_ms: int) -> dict:
    """The demo's filter config with a breaker tuned so that phases can be short: 3 consecutive
    failures open it, open for `open_ms` (doubling per failed probe up to `max_open_ms`, no
    jitter so runs are comparable), one probe at a time, two successful probes close it."""
    cfg = demo_filter_config()
    cfg["breaker"] = {
        "window_ms": 10000, "buckets": 10, "min_requests": 20, "failure_ratio": 0.5,
        "consecutive_failures": 3, "open_ms": open_ms, "backoff_multiplier": 2.0,
        "max_open_ms": max_open_ms, "jitter": 0.0, "half_open_probes": 1, "close_after_successes": 2,
    }
    return cfg


# ---------------------------------------------------------------------------------------------
# Load: wrk at a fixed rate, one line per response

WRK_LUA = r"""
-- Written by scripts/chaos.py. Fixed-rate load: delay() hands each request the next slot of a
-- global schedule (one slot every 1000/rate ms, shared by all connections of this thread), so the
-- rate holds whatever the latency, as long as there are enough connections. Every response is
-- logged as one line: time (ms since the epoch), status, x-llm-provider, x-llm-degraded,
-- x-llm-degraded-reason.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } chaos_timeval;
int gettimeofday(chaos_timeval *tv, void *tz);
]]
local tv = ffi.new("chaos_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local log_path = os.getenv("CHAOS_LOG")
local rate = tonumber(os.getenv("CHAOS_RATE") or "50")
local stream_every = tonumber(os.getenv("CHAOS_STREAM_EVERY") or "4")
local period_ms = 1000 / rate
local models = {"claude-opus-4-6", "claude-haiku-4-5"}
local headers = {
  ["content-type"] = "application/json",
  ["anthropic-version"] = "2023-06-01",
  ["x-api-key"] = "sk-ant-chaos-client",
}
local n = 0
local next_slot = nil
local out = nil

function init(args)
  out = assert(io.open(log_path, "a"))
  out:setvbuf("line")
end

function request()
  n = n + 1
  local stream = stream_every > 0 and n % stream_every == 0
  local model = models[(n % 3 == 0) and 2 or 1]
  local body = string.format(
    '{"model":"%s","max_tokens":256,%s"messages":[{"role":"user","content":"Where is my order #%d?"}]}',
    model, stream and '"stream":true,' or '', n)
  return wrk.format("POST", "/v1/messages", headers, body)
end

function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now - 1000 then
    next_slot = now  -- start, or fell more than a second behind: do not burst to catch up
  end
  next_slot = next_slot + period_ms
  local d = next_slot - now
  if d < 0 then return 0 end
  return math.floor(d)
end

function response(status, hdrs, body)
  out:write(string.format("%.1f %d %s %s %s\n", now_ms(), status,
    hdrs["x-llm-provider"] or "-", hdrs["x-llm-degraded"] or "-", hdrs["x-llm-degraded-reason"] or "-"))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'CHAOS_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"timeouts":%d,"status_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Response:
    t: float  # seconds since the run started
    status: int
    provider: str  # "-" when none
    degraded: bool
    reason: str  # "-" when not degraded

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.degraded


def read_responses(path: Path, t0: float) -> list[Response]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        try:
            t_ms, status = float(parts[0]), int(parts[1])
        except ValueError:
            continue
        out.append(Response(t_ms / 1000 - t0, status, parts[2], parts[3] == "true", parts[4]))
    out.sort(key=lambda r: r.t)
    return out


# ---------------------------------------------------------------------------------------------
# Envoy stats: /stats/prometheus every second

# The Envoy stat names (before the Prometheus conversion) worth keeping: the filter's own and the
# cluster / listener counters they are compared with.
STATS_FILTER = r"llm_failover|gen_ai|upstream_rq_total|downstream_rq_[0-9x]xx"
KEEP = re.compile(r"^(llm_failover_|gen_ai_.*_(sum|count)$|envoy_cluster_upstream_rq_total$|envoy_http_downstream_rq_xx$)")
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple  # (name, ((label, value), ...)) with labels sorted


def parse_prometheus(text: str, keep: re.Pattern | None = KEEP) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m or (keep is not None and not keep.match(m.group(1))):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = value
    return out


@dataclass
class Sample:
    t: float
    values: dict[Key, float]

    def total(self, name: str, **match: str) -> float | None:
        """Sum of the series `name` whose labels include `match`; None if there is none."""
        found, s = False, 0.0
        for (n, labels), v in self.values.items():
            if n != name:
                continue
            d = dict(labels)
            if all(d.get(k) == want for k, want in match.items()):
                found, s = True, s + v
        return s if found else None

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for (n, labels) in self.values if n == name and label in dict(labels)}


class Sampler(threading.Thread):
    def __init__(self, admin: str, t0: float, interval: float):
        super().__init__(name="stats-sampler", daemon=True)
        self.url = admin + "/stats/prometheus"
        self.t0 = t0
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0
        self.stop_event = threading.Event()
        self.session = requests.Session()

    def scrape(self) -> None:
        t = time.time() - self.t0
        try:
            text = self.session.get(self.url, params={"filter": STATS_FILTER}, timeout=2).text
        except requests.RequestException:
            self.errors += 1
            return
        self.samples.append(Sample(t, parse_prometheus(text)))

    def run(self) -> None:
        k = 0
        while not self.stop_event.is_set():
            self.scrape()
            k += 1
            # Keep to the schedule t0 + k * interval (a slow scrape does not shift later ones).
            wait = self.t0 + k * self.interval - time.time()
            if wait > 0 and self.stop_event.wait(wait):
                break

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.session.close()


# ---------------------------------------------------------------------------------------------
# Breaker transitions from Envoy's log (millisecond timestamps)

TRANSITION = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\].*provider (\S+) breaker (\S+) -> ([A-Za-z_-]+)")


def parse_transitions(lines: list[str], t0: float) -> list[dict]:
    out = []
    for line in lines:
        m = TRANSITION.match(line)
        if not m:
            continue
        # Envoy writes local time.
        ts = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        to = m.group(5)
        out.append({"t": round(ts - t0, 3), "provider": m.group(3), "from": m.group(4), "to": to,
                    "line": line[line.find("provider "):]})
    out.sort(key=lambda x: x["t"])
    return out


# ---------------------------------------------------------------------------------------------
# Analysis


@dataclass
class Series:
    """Per-interval series derived from consecutive samples: value i covers [t[i], t[i+1])."""
    t: list[float] = field(default_factory=list)
    rates: dict[str, list[float | None]] = field(default_factory=dict)
    levels: dict[str, list[float | None]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)


def rate_series(samples: list[Sample], getter) -> list[float | None]:
    out = []
    for a, b in zip(samples, samples[1:]):
        va, vb = getter(a), getter(b)
        dt = b.t - a.t
        out.append(None if va is None or vb is None or dt <= 0 else max(0.0, vb - va) / dt)
    return out


def derive_series(samples: list[Sample], providers: list[dict], responses: list[Response]) -> Series:
    s = Series(t=[x.t for x in samples])
    have_filter_metrics = any(x.total("llm_failover_requests") is not None for x in samples)
    for p in providers:
        name, cluster = p["name"], p["cluster"]
        if have_filter_metrics:
            s.rates[f"requests:{name}"] = rate_series(samples, lambda x, n=name: x.total("llm_failover_requests", provider=n) or 0.0)
            s.source["requests"] = "llm_failover_requests"
        else:
            s.rates[f"requests:{name}"] = rate_series(
                samples, lambda x, c=cluster: x.total("envoy_cluster_upstream_rq_total", envoy_cluster_name=c))
            s.source["requests"] = "envoy_cluster_upstream_rq_total (filter metrics missing)"
        s.levels[f"breaker:{name}"] = [x.total("llm_failover_breaker_state", provider=name) for x in samples[:-1]]
    s.rates["5xx"] = rate_series(samples, lambda x: x.total(
        "envoy_http_downstream_rq_xx", envoy_http_conn_manager_prefix="llm_ingress", envoy_response_code_class="5"))
    reasons = {"no_provider_available", "upstream_failure"}
    for x in samples:
        reasons |= x.label_values("llm_failover_degraded", "reason")
    if any(x.total("llm_failover_degraded") is not None for x in samples):
        for r in sorted(reasons):
            s.rates[f"degraded:{r}"] = rate_series(samples, lambda x, r=r: x.total("llm_failover_degraded", reason=r) or 0.0)
        s.source["degraded"] = "llm_failover_degraded"
    else:  # the client's view, binned on the same intervals
        for r in sorted(reasons):
            s.rates[f"degraded:{r}"] = client_rate(samples, responses, lambda x, r=r: x.degraded and x.reason == r)
        s.source["degraded"] = "x-llm-degraded-reason seen by wrk (filter metrics missing)"
    s.rates["client"] = client_rate(samples, responses, lambda x: True)
    return s


def client_rate(samples: list[Sample], responses: list[Response], pred) -> list[float | None]:
    out = []
    for a, b in zip(samples, samples[1:]):
        n = sum(1 for r in responses if a.t <= r.t < b.t and pred(r))
        out.append(n / (b.t - a.t) if b.t > a.t else None)
    return out


def phase_stats(phase: Phase, responses: list[Response], start: float | None = None) -> dict:
    lo = phase.start if start is None else start
    rs = [r for r in responses if lo <= r.t < phase.end]
    ok = sum(1 for r in rs if r.ok)
    degraded = sum(1 for r in rs if r.degraded)
    s5 = sum(1 for r in rs if r.status >= 500)
    by_provider: dict[str, int] = {}
    for r in rs:
        if not r.degraded and r.provider != "-":
            by_provider[r.provider] = by_provider.get(r.provider, 0) + 1
    return {
        "phase": phase.key, "label": phase.label, "from_s": round(lo, 2), "to_s": round(phase.end, 2),
        "faults": phase.describe_faults(), "responses": len(rs), "ok": ok, "degraded": degraded,
        "client_5xx": s5, "other_non_2xx": sum(1 for r in rs if not 200 <= r.status < 300 and r.status < 500),
        "served_by": by_provider, "success_rate": round(ok / len(rs), 4) if rs else None,
    }


def first_after(items, t: float, pred):
    for x in items:
        if x.t >= t and pred(x):
            return x
    return None


def stats_first_state(samples: list[Sample], t: float, provider: str, state: str) -> float | None:
    """First sample at or after t where the breaker gauge shows `state`, or its transitions
    counter to `state` has grown since the last sample before t."""
    code = {"closed": 0, "open": 1, "half_open": 2}[state]
    before = [x for x in samples if x.t < t]
    base = before[-1].total("llm_failover_breaker_transitions", provider=provider, state=state) if before else None
    for x in samples:
        if x.t < t:
            continue
        g = x.total("llm_failover_breaker_state", provider=provider)
        c = x.total("llm_failover_breaker_transitions", provider=provider, state=state)
        if (g is not None and round(g) == code) or (c is not None and c > (base or 0)):
            return x.t
    return None


def stats_primary_majority(samples: list[Sample], series: Series, t: float, provider: str) -> float | None:
    """End of the first sample interval after t in which `provider` carried most of the traffic."""
    mine = series.rates.get(f"requests:{provider}", [])
    all_keys = [k for k in series.rates if k.startswith("requests:")]
    for i, (a, b) in enumerate(zip(samples, samples[1:])):
        if a.t < t or i >= len(mine) or mine[i] is None:
            continue
        total = sum(series.rates[k][i] or 0 for k in all_keys)
        if total > 0 and mine[i] / total >= 0.5:
            return b.t
    return None


def rounded(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def analyze(ph: list[Phase], responses: list[Response], samples: list[Sample], transitions: list[dict],
            wrk_stats: dict, providers: list[dict], cfg: dict, opts) -> tuple[dict, Series]:
    series = derive_series(samples, providers, responses)
    by_key = {p.key: p for p in ph}

    def start_of(key: str) -> float:
        p = by_key[key]
        return p.applied_at if p.applied_at is not None else p.start

    def log_first(t: float, provider: str, to: str) -> float | None:
        for tr in transitions:
            if tr["t"] >= t - 0.05 and tr["provider"] == provider and tr["to"].replace("-", "_") == to:
                return tr["t"]
        return None

    def since(t_event: float | None, t_start: float) -> float | None:
        return None if t_event is None else max(0.0, t_event - t_start)

    outage, recovered, all_down, recovery = (start_of(k) for k in ("primary_outage", "primary_recovered", "all_down", "recovery"))
    served_by = lambda name: (lambda r: r.ok and r.provider == name)  # noqa: E731

    timings = {
        "outage_to_primary_open_s": since(log_first(outage, "primary", "open"), outage),
        "outage_to_primary_open_stats_s": since(stats_first_state(samples, outage, "primary", "open"), outage),
        "outage_to_first_fallback_answer_s": since(getattr(first_after(responses, outage, served_by("fallback")), "t", None), outage),
        "recovered_to_primary_closed_s": since(log_first(recovered, "primary", "closed"), recovered),
        "recovered_to_traffic_on_primary_s": since(getattr(first_after(responses, recovered, served_by("primary")), "t", None), recovered),
        "recovered_to_primary_majority_stats_s": since(stats_primary_majority(samples, series, recovered, "primary"), recovered),
        "all_down_to_fallback_open_s": since(log_first(all_down, "fallback", "open"), all_down),
        "all_down_to_fallback_open_stats_s": since(stats_first_state(samples, all_down, "fallback", "open"), all_down),
        "all_down_to_first_no_provider_answer_s": since(getattr(first_after(
            responses, all_down, lambda r: r.degraded and r.reason == "no_provider_available"), "t", None), all_down),
        "recovery_to_first_ok_answer_s": since(getattr(first_after(responses, recovery, lambda r: r.ok), "t", None), recovery),
        "recovery_to_traffic_on_primary_s": since(getattr(first_after(responses, recovery, served_by("primary")), "t", None), recovery),
        "recovery_to_primary_closed_s": since(log_first(recovery, "primary", "closed"), recovery),
    }
    timings = {k: rounded(v) for k, v in timings.items()}
    # The breaker-open figure: Envoy's log (ms) when it has the line, else the 1-s samples.
    timings["outage_to_breaker_open_s"] = (timings["outage_to_primary_open_s"]
                                           if timings["outage_to_primary_open_s"] is not None
                                           else timings["outage_to_primary_open_stats_s"])

    phase_rows = [phase_stats(p, responses) for p in ph]
    restored = first_after(responses, recovery, lambda r: r.ok)
    settled = phase_stats(by_key["recovery"], responses, start=restored.t) if restored else None
    if settled:
        settled["phase"], settled["label"] = "recovery_settled", "recovery, once answers flow again"

    last = samples[-1] if samples else Sample(0, {})
    first = samples[0] if samples else Sample(0, {})

    def delta(name: str, **match) -> float | None:
        a, b = first.total(name, **match), last.total(name, **match)
        return None if b is None else b - (a or 0)

    counters = {
        "requests": {p["name"]: delta("llm_failover_requests", provider=p["name"]) for p in providers},
        "cluster_upstream_rq": {p["cluster"]: delta("envoy_cluster_upstream_rq_total", envoy_cluster_name=p["cluster"]) for p in providers},
        "outcomes": {}, "degraded": {}, "failovers": {}, "breaker_transitions": {},
        "envoy_downstream_5xx": delta("envoy_http_downstream_rq_xx", envoy_http_conn_manager_prefix="llm_ingress",
                                      envoy_response_code_class="5"),
    }
    for (name, labels), _ in last.values.items():
        d = dict(labels)
        if name == "llm_failover_outcomes":
            k = f"{d.get('provider')}/{d.get('class')}"
            counters["outcomes"][k] = (counters["outcomes"].get(k) or 0) + (delta(name, **d) or 0)
        elif name == "llm_failover_degraded":
            counters["degraded"][d.get("reason", "?")] = delta(name, **d)
        elif name == "llm_failover_failovers":
            counters["failovers"][f"{d.get('from')}->{d.get('to')}"] = delta(name, **d)
        elif name == "llm_failover_breaker_transitions":
            counters["breaker_transitions"][f"{d.get('provider')}->{d.get('state')}"] = delta(name, **d)
    counters["outcomes"] = {k: v for k, v in sorted(counters["outcomes"].items()) if v}

    client = {
        "responses": len(responses),
        "ok": sum(1 for r in responses if r.ok),
        "degraded": sum(1 for r in responses if r.degraded),
        "degraded_by_reason": {},
        "client_5xx": sum(1 for r in responses if r.status >= 500),
        "served_by": {},
        "socket_errors": sum(wrk_stats.get(k, 0) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
        "latency_p50_ms": rounded(wrk_stats.get("p50_us", 0) / 1000, 2) if wrk_stats else None,
        "latency_p99_ms": rounded(wrk_stats.get("p99_us", 0) / 1000, 2) if wrk_stats else None,
        "latency_max_ms": rounded(wrk_stats.get("max_us", 0) / 1000, 2) if wrk_stats else None,
    }
    for r in responses:
        if r.degraded:
            client["degraded_by_reason"][r.reason] = client["degraded_by_reason"].get(r.reason, 0) + 1
        elif r.provider != "-":
            client["served_by"][r.provider] = client["served_by"].get(r.provider, 0) + 1
    duration = ph[-1].end
    client["rate_per_s"] = round(len(responses) / duration, 1) if duration else None

    b = cfg["breaker"]
    summary = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mode": "short" if opts.short else "long",
        "duration_s": duration,
        "load": {"tool": "wrk", "rate_per_s": opts.rate, "connections": opts.connections,
                 "stream_every": opts.stream_every, "sample_interval_s": opts.interval},
        "breaker": {k: b[k] for k in ("consecutive_failures", "open_ms", "backoff_multiplier", "max_open_ms",
                                      "jitter", "half_open_probes", "close_after_successes")},
        "phases": phase_rows,
        "recovery_settled": settled,
        "timings": timings,
        "client": client,
        "envoy": counters,
        "sources": series.source,
        "filter_metrics": any(x.total("llm_failover_requests") is not None for x in samples),
        "samples": len(samples),
        "sample_errors": opts._sample_errors,
        "transitions": [{k: v for k, v in tr.items() if k != "line"} for tr in transitions],
    }
    return summary, series


# ---------------------------------------------------------------------------------------------
# Report


def fmt(x, unit: str = "", nd: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        x = f"{x:.{nd}f}"
    return f"{x}{unit}"


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def summary_markdown(s: dict) -> str:
    b, load, t, c, e = s["breaker"], s["load"], s["timings"], s["client"], s["envoy"]
    L = []
    L.append("# llm-failover chaos run\n")
    L.append(f"{s['generated']} · {s['mode']} run of {s['duration_s']} s · {load['rate_per_s']} req/s from wrk "
             f"({load['connections']} connections, 1 request in {load['stream_every']} streamed, two models) · "
             f"Envoy with 2 workers, mock providers · stats sampled every {load['sample_interval_s']} s\n")
    L.append(f"Breaker: opens after {b['consecutive_failures']} consecutive failures, open {b['open_ms']} ms "
             f"(×{b['backoff_multiplier']} per failed probe, at most {b['max_open_ms']} ms, jitter {b['jitter']}), "
             f"{b['half_open_probes']} probe at a time, {b['close_after_successes']} successful probes close it. "
             "Degraded mode `message` (a 200 flagged `x-llm-degraded: true`).\n")
    if not s["filter_metrics"]:
        L.append("**The filter's metrics were not in Envoy's stats**: requests per provider come from the "
                 "cluster counters and degraded answers from the client's view.\n")
    L.append("## Client success rate per phase\n")
    L.append("Success = a 2xx that is not a degraded answer, over all responses wrk received in the phase.\n")
    L.append("| phase | seconds | providers | responses | ok | degraded | 5xx | served by | success rate |")
    L.append("|---|---|---|---:|---:|---:|---:|---|---:|")
    rows = list(s["phases"]) + ([s["recovery_settled"]] if s["recovery_settled"] else [])
    for p in rows:
        served = ", ".join(f"{k} {v}" for k, v in sorted(p["served_by"].items())) or "-"
        L.append(f"| {p['label']} | {p['from_s']:.1f}–{p['to_s']:.1f} | {p['faults'] if p['phase'] != 'recovery_settled' else 'all healthy'} "
                 f"| {p['responses']} | {p['ok']} | {p['degraded']} | {p['client_5xx']} | {served} | {pct(p['success_rate'])} |")
    L.append("")
    L.append("## Timings\n")
    L.append("From the moment the faults were switched. Breaker transitions come from Envoy's log "
             f"(ms precision); \"stats\" figures from the {load['sample_interval_s']} s samples of `/stats/prometheus` "
             "(an upper bound, within one sample interval); answers from wrk's per-response log.\n")
    L.append("| what | seconds |")
    L.append("|---|---:|")
    rows_t = [
        ("primary outage → primary breaker open", t["outage_to_primary_open_s"]),
        ("primary outage → breaker open seen in stats", t["outage_to_primary_open_stats_s"]),
        ("primary outage → first answer from the fallback", t["outage_to_first_fallback_answer_s"]),
        ("primary recovered → first answer from the primary (traffic back)", t["recovered_to_traffic_on_primary_s"]),
        ("primary recovered → primary breaker closed", t["recovered_to_primary_closed_s"]),
        ("primary recovered → primary carries most traffic in stats", t["recovered_to_primary_majority_stats_s"]),
        ("all down → fallback breaker open", t["all_down_to_fallback_open_s"]),
        ("all down → fallback breaker open seen in stats", t["all_down_to_fallback_open_stats_s"]),
        ("all down → first `no_provider_available` answer", t["all_down_to_first_no_provider_answer_s"]),
        ("recovery → first non-degraded answer", t["recovery_to_first_ok_answer_s"]),
        ("recovery → first answer from the primary (traffic back)", t["recovery_to_traffic_on_primary_s"]),
        ("recovery → primary breaker closed", t["recovery_to_primary_closed_s"]),
    ]
    for label, v in rows_t:
        L.append(f"| {label} | {fmt(v)} |")
    L.append("")
    L.append("## Counts\n")
    L.append(f"- client: {c['responses']} responses ({c['rate_per_s']} /s), {c['ok']} ok, {c['degraded']} degraded "
             f"({', '.join(f'{k} {v}' for k, v in sorted(c['degraded_by_reason'].items())) or 'none'}), "
             f"**{c['client_5xx']} 5xx**, {c['socket_errors']} socket errors or timeouts; latency p50 "
             f"{fmt(c['latency_p50_ms'], ' ms')}, p99 {fmt(c['latency_p99_ms'], ' ms')}, max {fmt(c['latency_max_ms'], ' ms')}")
    L.append("- answered by: " + (", ".join(f"{k} {v}" for k, v in sorted(c["served_by"].items())) or "-"))
    L.append("- requests sent to providers (`llm_failover_requests`): "
             + ", ".join(f"{k} {fmt(v, nd=0)}" for k, v in e["requests"].items())
             + " · cluster upstream requests: " + ", ".join(f"{k} {fmt(v, nd=0)}" for k, v in e["cluster_upstream_rq"].items()))
    L.append("- outcomes (`llm_failover_outcomes`, provider/class): "
             + (", ".join(f"{k} {v:.0f}" for k, v in e["outcomes"].items()) or "n/a"))
    L.append("- degraded answers (`llm_failover_degraded`): "
             + (", ".join(f"{k} {fmt(v, nd=0)}" for k, v in sorted(e["degraded"].items())) or "n/a"))
    L.append("- failovers (`llm_failover_failovers`): "
             + (", ".join(f"{k} {fmt(v, nd=0)}" for k, v in sorted(e["failovers"].items())) or "n/a"))
    L.append("- breaker transitions (`llm_failover_breaker_transitions`, provider→state): "
             + (", ".join(f"{k} {fmt(v, nd=0)}" for k, v in sorted(e["breaker_transitions"].items())) or "n/a"))
    L.append(f"- Envoy downstream 5xx (`envoy_http_downstream_rq_xx`, class 5): {fmt(e['envoy_downstream_5xx'], nd=0)}")
    L.append(f"- breaker transitions in Envoy's log: {len(s['transitions'])}; stats samples: {s['samples']} "
             f"({s['sample_errors']} failed)")
    L.append("")
    L.append("![timeline](timeline.png)\n")
    return "\n".join(L)


PHASE_COLORS = {
    "baseline": "#f4f4f4", "primary_outage": "#fde0c5", "primary_recovered": "#e3f2e1",
    "all_down": "#f9c6c6", "recovery": "#e3f2e1",
}
PROVIDER_COLORS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b"]
STATE_COLORS = {0: "#59a14f", 1: "#e15759", 2: "#edc948"}
STATE_NAMES = {0: "closed", 1: "open", 2: "half-open"}


def steps(t: list[float], values: list[float | None]):
    """x, y for a step plot of interval values (value i over [t[i], t[i+1]))."""
    xs, ys = [], []
    for i, v in enumerate(values):
        if i + 1 >= len(t):
            break
        xs += [t[i], t[i + 1]]
        ys += [math.nan if v is None else v] * 2
    return xs, ys


def state_spans(t: list[float], levels: list[float | None]) -> list[tuple[float, float, int]]:
    spans = []
    for i, v in enumerate(levels):
        if v is None or i + 1 >= len(t):
            continue
        code = int(round(v))
        if spans and spans[-1][2] == code and abs(spans[-1][0] + spans[-1][1] - t[i]) < 1e-6:
            a, w, c = spans[-1]
            spans[-1] = (a, w + t[i + 1] - t[i], c)
        else:
            spans.append((t[i], t[i + 1] - t[i], code))
    return spans


def spans_from_log(transitions: list[dict], provider: str, end: float) -> list[tuple[float, float, int]]:
    code = {"closed": 0, "open": 1, "half-open": 2, "half_open": 2}
    spans, t, state = [], 0.0, 0
    for tr in transitions:
        if tr["provider"] != provider or tr["t"] < 0:
            continue
        spans.append((t, tr["t"] - t, state))
        t, state = tr["t"], code.get(tr["to"], 0)
    spans.append((t, max(0.0, end - t), state))
    return [s for s in spans if s[1] > 0]


def plot(path: Path, summary: dict, series: Series, ph: list[Phase], providers: list[dict],
         transitions: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    names = [p["name"] for p in providers]
    end = ph[-1].end
    keep = sum(1 for x in series.t if x < end - 1e-6) + 1  # sample times up to the first one past the end
    series = Series(t=series.t[:keep], rates={k: v[:keep - 1] for k, v in series.rates.items()},
                    levels={k: v[:keep - 1] for k, v in series.levels.items()}, source=series.source)
    fig, all_axes = plt.subplots(5, 1, figsize=(14, 11.5), sharex=True,
                                 gridspec_kw={"height_ratios": [0.32, 3, 1.1, 2, 0.4 + 0.55 * len(names)]})
    ax_head, ax_req, ax_5xx, ax_deg, ax_brk = all_axes
    axes = all_axes[1:]
    t = series.t

    # The phases: a band of names above the plots, the same shading in every plot.
    ax_head.set_axis_off()
    ax_head.set_ylim(0, 1)
    for i, p in enumerate(ph):
        ax_head.axvspan(p.start, p.end, ymin=0.0, ymax=1.0, color=PHASE_COLORS.get(p.key, "#eeeeee"), lw=0)
        ax_head.text((p.start + p.end) / 2, 0.5, f"{i + 1}. {p.label}\n{PHASE_NOTES.get(p.key, p.describe_faults())}",
                     ha="center", va="center", fontsize=10, color="#222222", fontweight="bold")

    for ax in axes:
        for p in ph:
            ax.axvspan(p.start, p.end, color=PHASE_COLORS.get(p.key, "#eeeeee"), zorder=0, lw=0)
            if p.start > 0:
                ax.axvline(p.start, color="#555555", lw=0.8, ls="--", zorder=1)
        ax.grid(axis="y", color="#dddddd", lw=0.6)
        ax.set_xlim(0, end)
        ax.spines[["top", "right"]].set_visible(False)

    # 1. requests per provider
    for i, n in enumerate(names):
        xs, ys = steps(t, series.rates.get(f"requests:{n}", []))
        ax_req.plot(xs, ys, color=PROVIDER_COLORS[i % len(PROVIDER_COLORS)], lw=2, label=f"sent to {n}")
    xs, ys = steps(t, series.rates.get("client", []))
    ax_req.plot(xs, ys, color="#777777", lw=1.2, ls=":", label="answers received by the client")
    ax_req.set_ylabel("requests / s")
    ax_req.set_ylim(bottom=0)
    ax_req.set_title("Requests sent to each provider", loc="left", fontsize=11)
    ax_req.legend(loc="center left", fontsize=9, framealpha=0.9)

    # 2. client-visible 5xx
    xs, ys = steps(t, series.rates.get("5xx", []))
    ax_5xx.plot(xs, ys, color="#d62728", lw=2)
    total5 = summary["envoy"]["envoy_downstream_5xx"]
    ax_5xx.set_ylim(0, max(1.0, max((y for y in ys if not math.isnan(y)), default=0) * 1.2))
    ax_5xx.set_ylabel("5xx / s")
    ax_5xx.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    ax_5xx.set_title(f"Client-visible errors (5xx answered by Envoy): {fmt(total5, nd=0)} in total",
                     loc="left", fontsize=11)

    # 3. degraded answers by reason, stacked
    reason_keys = [k for k in series.rates if k.startswith("degraded:")]
    bottoms = [0.0] * max(0, len(t) - 1)
    deg_colors = {"upstream_failure": "#f28e2b", "no_provider_available": "#b07aa1"}
    for k in reason_keys:
        vals = [v or 0.0 for v in series.rates[k]]
        if not any(vals):
            continue
        reason = k.split(":", 1)[1]
        xs_l, lo = steps(t, bottoms)
        top = [b + v for b, v in zip(bottoms, vals)]
        _, hi = steps(t, top)
        ax_deg.fill_between(xs_l, lo, hi, color=deg_colors.get(reason, "#bab0ac"), alpha=0.85, lw=0, label=reason)
        bottoms = top
    ax_deg.set_ylabel("answers / s")
    ax_deg.set_ylim(bottom=0, top=max(1.0, max(bottoms, default=0) * 1.15))
    n_deg = summary["client"]["degraded"]
    ax_deg.set_title(f"Degraded answers (200 with x-llm-degraded: true), by reason: {n_deg} in total", loc="left", fontsize=11)
    if any(bottoms):
        ax_deg.legend(loc="upper left", fontsize=9, framealpha=0.9)

    # 4. breaker state per provider: one band per provider
    from_stats = any(v is not None for n in names for v in series.levels.get(f"breaker:{n}", []))
    for i, n in enumerate(names):
        if from_stats:
            spans = state_spans(t, series.levels.get(f"breaker:{n}", []))
        else:
            spans = spans_from_log(transitions, n, end)
        y = len(names) - 1 - i
        for code in (0, 1, 2):
            bars = [(a, w) for a, w, c in spans if c == code]
            if bars:
                ax_brk.broken_barh(bars, (y - 0.35, 0.7), facecolors=STATE_COLORS[code], zorder=2)
    ax_brk.set_yticks(range(len(names)), list(reversed(names)))
    ax_brk.set_ylim(-0.6, len(names) - 0.4)
    ax_brk.grid(False)
    src = "llm_failover_breaker_state, sampled" if from_stats else "Envoy log transitions (gauge missing)"
    ax_brk.set_title(f"Breaker state ({src}; a breaker moves on when a request consults it)", loc="left", fontsize=11)
    ax_brk.legend(handles=[Patch(color=STATE_COLORS[c], label=STATE_NAMES[c]) for c in (0, 1, 2)],
                  loc="lower right", fontsize=9, ncol=3, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax_brk.set_xlabel("seconds since the start of the run")

    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.975), h_pad=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, series: Series, ph: list[Phase]) -> None:
    keys = sorted(series.rates) + sorted(series.levels)
    lines = ["t_s,phase," + ",".join(keys)]
    for i in range(max(0, len(series.t) - 1)):
        t = series.t[i]
        phase = next((p.key for p in ph if p.start <= t < p.end), "")
        vals = []
        for k in keys:
            arr = series.rates.get(k) or series.levels.get(k) or []
            v = arr[i] if i < len(arr) else None
            vals.append("" if v is None else f"{v:.3f}")
        lines.append(f"{t:.3f},{phase}," + ",".join(vals))
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# The run


def stop_process(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)


def sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))


def run(opts) -> dict:
    if not WASM.exists():
        raise SystemExit(f"{WASM} is missing: run `make build`")
    wrk_bin = shutil.which("wrk")
    if not wrk_bin:
        raise SystemExit("wrk is not installed: run `make wrk` (Debian/Ubuntu: apt-get install wrk)")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    ph = phases(opts.short)
    total = int(ph[-1].end)
    max_open_ms = opts.max_open_ms or (4000 if opts.short else 8000)
    cfg = chaos_filter_config(opts.open_ms, max_open_ms)
    providers = cfg["providers"]

    tmp = Path(tempfile.mkdtemp(prefix="llm-failover-chaos-"))
    log_path = tmp / "responses.log"
    lua_path = tmp / "chaos.lua"
    lua_path.write_text(WRK_LUA)
    wrk_proc = None
    sampler = None
    wrk_out = ""
    wasm_lines: list[str] = []
    print(f"chaos: {'short' if opts.short else 'long'} run, {total} s at {opts.rate} req/s; report in {out}", flush=True)
    try:
        with Stack(cfg) as stack:
            try:
                # The stack answers before the clock starts.
                r = stack.post(timeout=10)
                if r.status_code != 200 or r.headers.get("x-llm-provider") != "primary":
                    raise RuntimeError(f"the stack is not healthy before the run: {r.status_code} {dict(r.headers)}")
                time.sleep(1.2)  # one stats flush, so the first sample has the histograms too
                t0 = time.time()
                sampler = Sampler(stack.envoy.admin, t0, opts.interval)
                sampler.scrape()  # the baseline sample at t=0
                sampler.start()
                env = dict(os.environ, CHAOS_LOG=str(log_path), CHAOS_RATE=str(opts.rate),
                           CHAOS_STREAM_EVERY=str(opts.stream_every))
                wrk_proc = subprocess.Popen(
                    [wrk_bin, "-t1", f"-c{opts.connections}", f"-d{total}s", "--timeout", "10s", "-s", str(lua_path),
                     stack.url + "/v1/messages"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                for p in ph:
                    sleep_until(t0 + p.start)
                    if wrk_proc.poll() is not None:
                        raise RuntimeError(f"wrk exited early:\n{wrk_proc.stdout.read() if wrk_proc.stdout else ''}")
                    for provider, mode in p.faults.items():
                        stack.fault(provider, mode)
                    p.applied_at = time.time() - t0
                    print(f"  [{p.applied_at:6.1f} s] {p.label}: {p.describe_faults()}", flush=True)
                sleep_until(t0 + total)
                try:
                    wrk_out, _ = wrk_proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    stop_process(wrk_proc)
                    wrk_out = ""
                time.sleep(max(0.0, t0 + total + 1.1 - time.time()))  # a last sample after wrk's last answer
                sampler.stop()
                sampler.scrape()
            finally:
                stop_process(wrk_proc)
                if sampler is not None:
                    sampler.stop()
                wasm_lines = stack.envoy.wasm_log("info")
        # Stack.__exit__ stopped Envoy and the mocks here.
        m = re.search(r"CHAOS_JSON (\{.*\})", wrk_out or "")
        wrk_stats = json.loads(m.group(1)) if m else {}
        responses = read_responses(log_path, t0)
        transitions = parse_transitions(wasm_lines, t0)
        opts._sample_errors = sampler.errors
        summary, series = analyze(ph, responses, sampler.samples, transitions, wrk_stats, providers, cfg, opts)
        if not wrk_stats:
            summary["wrk_output"] = (wrk_out or "")[-2000:]
        title = (f"llm-failover chaos run: {opts.rate} req/s, breaker opens after "
                 f"{cfg['breaker']['consecutive_failures']} failures for {opts.open_ms / 1000:g} s (max {max_open_ms / 1000:g} s)")
        plot(out / "timeline.png", summary, series, ph, providers, transitions, title)
        write_csv(out / "timeline.csv", series, ph)
        (out / "breaker.log").write_text("".join(f"{tr['t']:8.3f} s  {tr['line']}\n" for tr in transitions))
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        md = summary_markdown(summary)
        (out / "summary.md").write_text(md)
        print()
        print(md)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="CI-length run (50 s of load) instead of ~3 minutes")
    ap.add_argument("--out", default=str(ROOT / "chaos"), help="report directory (default: chaos/)")
    ap.add_argument("--rate", type=int, default=50, help="requests per second (default 50)")
    ap.add_argument("--connections", type=int, default=5, help="wrk connections (default 5)")
    ap.add_argument("--stream-every", type=int, default=4, help="one request in N asks for a stream (default 4)")
    ap.add_argument("--interval", type=float, default=1.0, help="stats sampling interval in seconds (default 1)")
    ap.add_argument("--open-ms", type=int, default=2000, help="breaker open period (default 2000)")
    ap.add_argument("--max-open-ms", type=int, default=0, help="cap of the open period (default 4000 short, 8000 long)")
    opts = ap.parse_args(argv)
    if opts.rate < 1 or opts.rate > 500:
        ap.error("--rate must be within 1..500 (the mock providers are Python)")
    if opts.connections < 1 or opts.connections > 64:
        ap.error("--connections must be within 1..64")
    if opts.interval < 0.2 or opts.interval > 5:
        ap.error("--interval must be within 0.2..5 s")
    return opts


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
