"""In-request failover end to end, with the official SDKs as clients (`max_retries=0`, so every
answer is the filter's doing): the request that meets a provider's failure before anything
reached the client is replayed on the next provider of its plan and the client gets that
provider's answer.

- Every fault class of the primary (500, 529, 429, reset, refused connection, hang, a first
  token after 3 s, an error as the first event), JSON and streams: a burst of concurrent
  requests sent at the very start of the outage all succeed via the fallback, with a breaker
  that never opens (every request meets the failure) and with the demo's fast breaker.
- The every-host config (envoy/demo-hosts.yaml): OpenAI clients fail over openai -> azure,
  Anthropic clients over hosts of other formats (Bedrock's event-stream, OpenAI translated).
- The retry budget bounds replays; a body over `failover.max_replay_bytes` is not replayed;
  what one failover attempt adds to the latency; the first token through the deadline path.

Measurements are printed as `FIGURE ...` lines (`pytest -s` shows them).
"""

from __future__ import annotations

import copy
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anthropic
import openai
import pytest

from conftest import fast_breaker
from stack import MESSAGE_BODY, Stack, sse_events
from test_e2e_metrics import metric, scrape
from test_e2e_providers import CLIENT_KEY, hosts_stack
from test_e2e_providers import filter_config as hosts_filter_config

CLAUDE = "claude-opus-4-6"
GPT = "gpt-4o"
FIRST_TOKEN_S = 1.0  # deadlines.first_token_ms of the demo configs
NOTICE = "Advanced AI features are temporarily offline; please try again shortly."

# ---------------------------------------------------------------------------------------------
# Helpers (also used by test_e2e_streams.py)
# ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What a client got from one call."""
    seconds: float
    provider: str | None = None
    text: str = ""
    degraded: bool = False
    degraded_reason: str | None = None
    attempts: str | None = None
    complete: bool = False  # the SDK saw the end of the answer (stop reason / finish reason)
    error: str | None = None
    exc: BaseException | None = None  # what the SDK raised
    delta_times: list = field(default_factory=list)  # streams: seconds to each text delta

    def served_by(self, name: str) -> bool:
        return (self.error is None and not self.degraded and self.complete
                and self.provider == name and self.text == f"Hello from {name}")


def never_opening_breaker(cfg: dict | None = None) -> dict:
    """`cfg` (default: the demo's with a fast breaker) with a breaker that never opens during a
    test, and a retry budget out of the way: every request meets the failure and is replayed."""
    cfg = copy.deepcopy(cfg) if cfg is not None else fast_breaker()
    cfg["breaker"] = {**cfg.get("breaker", {}), "consecutive_failures": 0, "min_requests": 1000}
    cfg["breaker"].setdefault("window_ms", 10000)
    cfg["breaker"].setdefault("buckets", 10)
    cfg["retry_budget"] = {"ratio": 1.0, "min_per_s": 1000, "window_ms": 10000}
    return cfg


def anthropic_client(stack, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, timeout=15, **kw)


def openai_client(stack, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=15, **kw)


def _from_headers(a: Answer, h) -> Answer:
    a.provider = h.get("x-llm-provider")
    a.degraded = h.get("x-llm-degraded") == "true"
    a.degraded_reason = h.get("x-llm-degraded-reason")
    a.attempts = h.get("x-llm-attempts")
    return a


def claude_json(c: anthropic.Anthropic, content="hi", **kw) -> Answer:
    t0 = time.monotonic()
    try:
        raw = c.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": content}], **kw)
        msg = raw.parse()
        a = _from_headers(Answer(0.0), raw.headers)
        a.text = "".join(b.text for b in msg.content if b.type == "text")
        a.complete = msg.stop_reason == "end_turn"
    except Exception as e:  # noqa: BLE001 - what the client saw is the result
        a = Answer(0.0, error=f"{type(e).__name__}: {e}", exc=e)
    a.seconds = time.monotonic() - t0
    return a


def claude_stream(c: anthropic.Anthropic, content="hi", **kw) -> Answer:
    t0 = time.monotonic()
    a = Answer(0.0)
    try:
        with c.messages.stream(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": content}],
                               **kw) as s:
            _from_headers(a, s.response.headers)
            for piece in s.text_stream:
                a.text += piece
                a.delta_times.append(time.monotonic() - t0)
            a.complete = s.get_final_message().stop_reason == "end_turn"
    except Exception as e:  # noqa: BLE001
        a.error, a.exc = f"{type(e).__name__}: {e}", e
    a.seconds = time.monotonic() - t0
    return a


def gpt_json(c: openai.OpenAI, **kw) -> Answer:
    t0 = time.monotonic()
    try:
        raw = c.chat.completions.with_raw_response.create(model=GPT, messages=[{"role": "user", "content": "hi"}], **kw)
        done = raw.parse()
        a = _from_headers(Answer(0.0), raw.headers)
        a.text = done.choices[0].message.content or ""
        a.complete = done.choices[0].finish_reason == "stop"
    except Exception as e:  # noqa: BLE001
        a = Answer(0.0, error=f"{type(e).__name__}: {e}", exc=e)
    a.seconds = time.monotonic() - t0
    return a


def gpt_stream(c: openai.OpenAI, **kw) -> Answer:
    t0 = time.monotonic()
    a = Answer(0.0)
    try:
        stream = c.chat.completions.create(model=GPT, stream=True, messages=[{"role": "user", "content": "hi"}], **kw)
        _from_headers(a, stream.response.headers)
        finish = []
        for ch in stream:
            if ch.choices:
                if ch.choices[0].delta.content:
                    a.text += ch.choices[0].delta.content
                    a.delta_times.append(time.monotonic() - t0)
                if ch.choices[0].finish_reason:
                    finish.append(ch.choices[0].finish_reason)
        a.complete = finish == ["stop"]
    except Exception as e:  # noqa: BLE001
        a.error, a.exc = f"{type(e).__name__}: {e}", e
    a.seconds = time.monotonic() - t0
    return a


def burst(calls) -> list[Answer]:
    """Runs the calls at once (released together by a barrier); the answers in call order."""
    gate = threading.Barrier(len(calls))

    def run(call):
        gate.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as ex:
        return list(ex.map(run, calls))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def figure(label: str, answers: list[Answer], ok) -> None:
    """One FIGURE line: successes, failure rate, p50 and max latency."""
    good = sum(1 for a in answers if ok(a))
    lat = [a.seconds for a in answers]
    print(f"FIGURE {label}: {good}/{len(answers)} ok, failure rate {100 * (len(answers) - good) / len(answers):.0f}%, "
          f"p50 {ms(statistics.median(lat))}, max {ms(max(lat))}")


def roomy_backlogs(stack):
    """Deepens the mock providers' listen backlogs (socketserver's default is 5): a burst of
    new upstream connections would otherwise overflow the accept queue and some would stall
    ~1 s in TCP retransmits or be reset, which no real provider does. Returns the stack."""
    for server in stack.mocks.values():
        server.socket.listen(128)
    return stack


def access_log(stack, settle: float = 0.5) -> list[dict]:
    """The access log's JSON lines so far (flushed every 200 ms by the test Envoy)."""
    time.sleep(settle)
    return [json.loads(line) for line in stack.envoy.log().splitlines() if line.startswith("{")]


def reset_faults(stack, names=None) -> None:
    for name in names or stack.mocks:
        stack.fault(name, "none")


def wait_served_by(stack, name: str, send, limit_s: float = 5.0) -> None:
    """Sends `send()` until `name` answers (a 429 cooldown has run out, ...)."""
    deadline = time.monotonic() + limit_s
    while True:
        a = send()
        if a.provider == name:
            return
        assert time.monotonic() < deadline, f"{name} does not serve again: {a}"
        time.sleep(0.1)


def describe(answers: list[Answer]) -> str:
    return "\n".join(repr(a) for a in answers if a.error or a.degraded or not a.complete) or repr(answers[:2])


# ---------------------------------------------------------------------------------------------
# Every fault class of the primary, JSON and streams, Anthropic SDK
# ---------------------------------------------------------------------------------------------

# Per class: the primary's fault for a JSON request and for a stream (None: no mock at all).
FAULTS = {
    "500": ({"mode": "500"}, {"mode": "500"}),
    "529": ({"mode": "529"}, {"mode": "529"}),
    "429": ({"mode": "429", "retry_after": 1}, {"mode": "429", "retry_after": 1}),
    "reset": ({"mode": "reset"}, {"mode": "reset"}),
    "refused": (None, None),
    "hang": ({"mode": "hang", "hang_ms": 10000}, {"mode": "hang", "hang_ms": 10000}),
    "slow_first_token": ({"mode": "slow_first_byte", "delay_ms": 3000}, {"mode": "slow_first_token", "delay_ms": 3000}),
    "error_first": ({"mode": "error_first"}, {"mode": "error_first"}),
}
# Classes where the primary is abandoned at the first-token deadline.
DEADLINE_CLASSES = ("hang", "slow_first_token")
BURST = 8


def warm_up(c, calls) -> None:
    """The primary in use before its outage: a burst of healthy traffic (it also opens Envoy's
    upstream connections, so the outage burst does not depend on how fast a mock accepts new
    ones)."""
    answers = burst(calls)
    assert all(a.served_by("primary") for a in answers), describe(answers)


def latency_bound(cls: str) -> float:
    # The deadline, then the fallback's answer; generous slack for a loaded 2-core machine.
    return FIRST_TOKEN_S + 1.5 if cls in DEADLINE_CLASSES else 1.5


@pytest.fixture(scope="module")
def never_open():
    """The demo's shape; the primary's breaker never opens, the retry budget never binds."""
    with Stack(never_opening_breaker()) as s:
        yield roomy_backlogs(s)


def _ask(kind: str):
    return claude_json if kind == "json" else claude_stream


@pytest.mark.parametrize("kind", ["json", "stream"])
@pytest.mark.parametrize("cls", [c for c in FAULTS if c != "refused"])
def test_every_request_of_an_outage_burst_is_answered_by_the_fallback(never_open, cls, kind):
    s = never_open
    c = anthropic_client(s)
    reset_faults(s)
    wait_served_by(s, "primary", lambda: claude_json(c))  # a 429 cooldown of an earlier test is over
    warm_up(c, [lambda: _ask(kind)(c)] * BURST)
    s.fault("primary", **FAULTS[cls][0 if kind == "json" else 1])
    before = len(s.received("primary"))
    answers = burst([lambda: _ask(kind)(c)] * BURST)
    hits = len(s.received("primary")) - before
    figure(f"failover {cls} {kind} (breaker never opens, primary tried {hits}x)", answers,
           lambda a: a.served_by("fallback"))
    assert all(a.served_by("fallback") for a in answers), describe(answers)
    assert all(a.attempts == "2" for a in answers if cls != "429"), [a.attempts for a in answers]
    # Every request met the failure (a 429 starts a cooldown: later requests skip the primary).
    assert hits == BURST if cls != "429" else hits >= 1, hits
    worst = max(a.seconds for a in answers)
    assert worst < latency_bound(cls), f"{cls} {kind}: slowest answer {worst:.2f} s"
    if cls in DEADLINE_CLASSES:
        # They were held until the deadline, not answered by the primary.
        assert min(a.seconds for a in answers) >= FIRST_TOKEN_S * 0.9
    s.fault("primary", "none")


def test_refused_connections_burst_is_answered_by_the_fallback():
    # "primary" has no mock: its cluster points at a port nobody listens on.
    with Stack(never_opening_breaker(), providers=("fallback",)) as s:
        roomy_backlogs(s)
        c = anthropic_client(s)
        for kind in ("json", "stream"):
            answers = burst([lambda: _ask(kind)(c)] * BURST)
            figure(f"failover refused {kind} (breaker never opens)", answers, lambda a: a.served_by("fallback"))
            assert all(a.served_by("fallback") and a.attempts == "2" for a in answers), describe(answers)
            assert max(a.seconds for a in answers) < latency_bound("refused")
        samples = scrape(s)
        assert metric(samples, "llm_failover_outcomes", provider="primary", model=CLAUDE,
                      **{"class": "connect_failure"}) == 2 * BURST


@pytest.mark.parametrize("cls", list(FAULTS))
def test_outage_burst_with_the_demo_breaker_is_answered_by_the_fallback(cls):
    # The demo's fast breaker and retry budget, a fresh stack: after healthy traffic, the burst
    # is the very first traffic of the outage, half JSON, half streams, all sent at once.
    providers = ("fallback",) if cls == "refused" else ("primary", "fallback")
    with Stack(fast_breaker(), providers=providers) as s:
        roomy_backlogs(s)
        c = anthropic_client(s)
        json_fault, stream_fault = FAULTS[cls]
        mixed = [lambda: claude_json(c)] * (BURST // 2) + [lambda: claude_stream(c)] * (BURST // 2)
        if json_fault:
            warm_up(c, mixed)
            # One fault for both kinds of request: pick the stream's (the JSON form of
            # slow_first_token is the same delay before the whole answer).
            s.fault("primary", **stream_fault)
        sent_before = len(s.received("primary")) if json_fault else 0
        answers = burst(mixed)
        hits = len(s.received("primary")) - sent_before if json_fault else None
        tried = f"primary tried {hits}x" if json_fault else "nothing listens at the primary"
        figure(f"failover {cls} mixed json+stream (demo fast breaker, {tried})", answers,
               lambda a: a.served_by("fallback"))
        assert all(a.served_by("fallback") for a in answers), describe(answers)
        if json_fault:
            assert hits >= 1
        worst = max(a.seconds for a in answers)
        assert worst < latency_bound(cls), f"{cls}: slowest answer {worst:.2f} s"
        samples = scrape(s)
        assert metric(samples, "llm_failover_degraded", reason="upstream_failure") == 0
        assert metric(samples, "llm_failover_retry_budget_denied") == 0
        if cls in DEADLINE_CLASSES:
            timeouts = metric(samples, "llm_failover_outcomes", provider="primary", model=CLAUDE,
                              **{"class": "first_token_timeout"})
            assert timeouts == hits, (timeouts, hits)
        assert s.wasm_failures() == []


# ---------------------------------------------------------------------------------------------
# The every-host config: OpenAI clients, and Anthropic clients across formats
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts_never_open():
    with hosts_stack(never_opening_breaker(hosts_filter_config())) as s:
        yield roomy_backlogs(s)


GPT_FAULTS = {
    "500": {"mode": "500"},
    "error_first": {"mode": "error_first"},
    "slow_first_token": {"mode": "slow_first_token", "delay_ms": 3000},
}


@pytest.mark.parametrize("kind", ["json", "stream"])
@pytest.mark.parametrize("cls", list(GPT_FAULTS))
def test_openai_sdk_requests_fail_over_from_openai_to_azure(hosts_never_open, cls, kind):
    s = hosts_never_open
    reset_faults(s)
    c = openai_client(s)
    s.fault("openai", **GPT_FAULTS[cls])
    before = len(s.received("openai"))
    ask = gpt_json if kind == "json" else gpt_stream
    answers = burst([lambda: ask(c)] * BURST)
    hits = len(s.received("openai")) - before
    figure(f"failover gpt chain openai {cls} {kind} -> azure (openai tried {hits}x)", answers,
           lambda a: a.served_by("azure"))
    assert all(a.served_by("azure") and a.attempts == "2" for a in answers), describe(answers)
    assert hits == BURST
    assert max(a.seconds for a in answers) < latency_bound("slow_first_token" if cls == "slow_first_token" else cls)
    s.fault("openai", "none")


# Which hosts fail (and how) before the one that answers, in the claude chain.
CROSS_FORMAT = {
    "bedrock": {"anthropic": {"mode": "529"}, "vertex": {"mode": "500"}},
    "openai": {"anthropic": {"mode": "529"}, "vertex": {"mode": "reset"}, "bedrock": {"mode": "error_first"}},
}


@pytest.mark.parametrize("kind", ["json", "stream"])
@pytest.mark.parametrize("answering", list(CROSS_FORMAT))
def test_anthropic_sdk_requests_fail_over_to_a_host_of_another_format(hosts_never_open, answering, kind):
    s = hosts_never_open
    reset_faults(s)
    c = anthropic_client(s)
    for name, fault in CROSS_FORMAT[answering].items():
        s.fault(name, **fault)
    before = {name: len(s.received(name)) for name in CROSS_FORMAT[answering]}
    answers = burst([lambda: _ask(kind)(c)] * BURST)
    down = "+".join(CROSS_FORMAT[answering])
    figure(f"failover claude chain {down} down {kind} -> {answering}", answers, lambda a: a.served_by(answering))
    assert all(a.served_by(answering) for a in answers), describe(answers)
    assert all(a.attempts == str(len(CROSS_FORMAT[answering]) + 1) for a in answers), [a.attempts for a in answers]
    for name in CROSS_FORMAT[answering]:
        assert len(s.received(name)) - before[name] == BURST, name
    assert max(a.seconds for a in answers) < 2.0
    reset_faults(s)


# ---------------------------------------------------------------------------------------------
# The retry budget
# ---------------------------------------------------------------------------------------------


def test_retry_budget_bounds_replays_at_twenty_percent():
    cfg = never_opening_breaker()
    cfg["retry_budget"] = {"ratio": 0.2, "min_per_s": 0.1, "window_ms": 10000}
    n = 60
    floor = 0.1 * 10
    with Stack(cfg) as s:
        s.fault("primary", "500")
        answers = []
        for _ in range(n):
            r = s.post()
            assert r.status_code == 200, r.text
            answers.append(r)
        replayed = [r for r in answers if r.headers.get("x-llm-provider") == "fallback"]
        denied = [r for r in answers if r.headers.get("x-llm-degraded-reason") == "retry_budget_exhausted"]
        samples = scrape(s)
        replays = metric(samples, "llm_failover_replays", provider="fallback")
        denied_stat = metric(samples, "llm_failover_retry_budget_denied")
        print(f"FIGURE retry budget 20% + floor {floor:.0f}: {n} requests, {len(replayed)} replayed "
              f"({100 * len(replayed) / n:.0f}%, stat {replays:.0f}), {len(denied)} denied (stat {denied_stat:.0f}), "
              f"allowed at most {int(0.2 * n + floor)}")
        # Every request was either replayed on the fallback or denied with the reason.
        assert len(replayed) + len(denied) == n, [dict(r.headers) for r in answers
                                                  if r not in replayed and r not in denied][:3]
        assert all(r.headers["x-llm-attempts"] == "2" and r.json()["content"][0]["text"] == "Hello from fallback"
                   for r in replayed)
        assert all(r.headers["x-llm-degraded"] == "true" and r.json()["content"][0]["text"] == NOTICE for r in denied)
        assert 1 <= len(replayed) <= 0.2 * n + floor
        assert replays == len(replayed)
        assert denied_stat == len(denied)
        assert metric(samples, "llm_failover_degraded", reason="retry_budget_exhausted") == len(denied)
        assert len(s.received("primary")) == n  # the breaker never opened: every request tried it
        assert len(s.received("fallback")) == len(replayed)


# ---------------------------------------------------------------------------------------------
# A body over failover.max_replay_bytes
# ---------------------------------------------------------------------------------------------

REPLAY_LIMIT = 2000


@pytest.fixture(scope="module")
def replay_limited():
    cfg = never_opening_breaker()
    cfg["chains"][0]["failover"]["max_replay_bytes"] = REPLAY_LIMIT
    with Stack(cfg) as s:
        yield s


@pytest.mark.parametrize("mode", ["500", "529", "reset"])
def test_body_over_the_replay_limit_is_not_replayed(replay_limited, mode):
    s = replay_limited
    c = anthropic_client(s)
    reset_faults(s)
    big = "x" * (REPLAY_LIMIT * 2)
    # Healthy: the primary answers a large request as usual.
    ok = claude_json(c, content=big)
    assert ok.served_by("primary"), ok
    skipped0 = metric(scrape(s), "llm_failover_replays_skipped", reason="body_too_large")
    assert skipped0 >= 1

    s.fault("primary", mode)
    fallback_before = len(s.received("fallback"))
    a = claude_json(c, content=big)
    st = claude_stream(c, content=big)
    small = claude_json(c)  # a small body is still replayed
    samples = scrape(s)
    skipped = metric(samples, "llm_failover_replays_skipped", reason="body_too_large")
    print(f"FIGURE replay limit {REPLAY_LIMIT} B, primary {mode}: large json -> degraded={a.degraded} "
          f"({a.degraded_reason}), large stream -> degraded={st.degraded}, small json -> {small.provider}, "
          f"replays_skipped +{skipped - skipped0:.0f}")
    # No replay of the large bodies: the fallback got only the small request.
    assert len(s.received("fallback")) - fallback_before == 1
    assert small.served_by("fallback")
    for got in (a, st):
        # A clean degraded answer in the client's format, not a raw 5xx / 413.
        assert got.error is None, got
        assert got.degraded and got.degraded_reason == "upstream_failure", got
        assert got.text == NOTICE and got.complete, got
    assert skipped - skipped0 == 2
    s.fault("primary", "none")


def test_body_over_the_replay_limit_raw_answer_is_json_in_the_clients_format(replay_limited):
    s = replay_limited
    reset_faults(s)
    s.fault("primary", "500")
    body = {**MESSAGE_BODY, "messages": [{"role": "user", "content": "y" * (REPLAY_LIMIT * 3)}]}
    r = s.post(body)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["type"] == "message" and r.json()["content"][0]["text"] == NOTICE
    r = s.post({**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert [e for e, _ in sse_events(r.text)][-1] == "message_stop"
    s.fault("primary", "none")


def test_body_over_the_replay_limit_gets_a_degraded_answer_in_the_openai_format():
    cfg = never_opening_breaker(hosts_filter_config())
    gpt = next(ch for ch in cfg["chains"] if ch["name"] == "gpt")
    gpt["failover"]["max_replay_bytes"] = REPLAY_LIMIT
    with hosts_stack(cfg) as s:
        c = openai_client(s)
        s.fault("openai", "500")
        big = [{"role": "user", "content": "z" * (REPLAY_LIMIT * 2)}]
        a = gpt_json(c, extra_body={"messages": big})
        st = gpt_stream(c, extra_body={"messages": big})
        small = gpt_json(c)
        samples = scrape(s)
        print(f"FIGURE replay limit {REPLAY_LIMIT} B, openai 500, OpenAI SDK: large json -> degraded={a.degraded} "
              f"({a.degraded_reason}), large stream -> degraded={st.degraded}, small json -> {small.provider}")
        assert small.served_by("azure")
        assert len(s.received("azure")) == 1 and len(s.received("anthropic")) == 0
        for got in (a, st):
            assert got.error is None and got.degraded and got.degraded_reason == "upstream_failure", got
            assert got.text == NOTICE and got.complete, got
        assert metric(samples, "llm_failover_replays_skipped", reason="body_too_large") == 2


# ---------------------------------------------------------------------------------------------
# Latency: one failover attempt, and the first token through the deadline path
# ---------------------------------------------------------------------------------------------


def test_latency_added_by_one_failover_attempt():
    with Stack(never_opening_breaker()) as s:
        c = anthropic_client(s)
        for _ in range(5):  # warm up connections and VMs
            claude_json(c)
        healthy = [claude_json(c) for _ in range(30)]
        assert all(a.served_by("primary") for a in healthy), describe(healthy)
        s.fault("primary", "503")
        for _ in range(3):
            claude_json(c)
        failed_over = [claude_json(c) for _ in range(30)]
        assert all(a.served_by("fallback") and a.attempts == "2" for a in failed_over), describe(failed_over)
        p50_h = statistics.median(a.seconds for a in healthy)
        p50_f = statistics.median(a.seconds for a in failed_over)
        print(f"FIGURE added latency of one failover (503 -> fallback), json sequential 30 each: "
              f"p50 primary {p50_h * 1000:.1f} ms, p50 after failover {p50_f * 1000:.1f} ms, "
              f"difference {(p50_f - p50_h) * 1000:.1f} ms")
        assert p50_f - p50_h < 0.050


def test_time_to_first_token_through_the_deadline_path():
    with Stack(never_opening_breaker()) as s:
        c = anthropic_client(s)
        claude_stream(c)
        s.fault("primary", "slow_first_token", delay_ms=3000)
        ttfts = []
        for _ in range(3):
            t0 = time.monotonic()
            with c.messages.stream(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as st:
                assert st.response.headers["x-llm-provider"] == "fallback"
                pieces = iter(st.text_stream)
                first = next(pieces)
                ttfts.append(time.monotonic() - t0)
                text = first + "".join(pieces)
            assert text == "Hello from fallback"
        print(f"FIGURE ttft through the first-token deadline (primary first token after 3 s, deadline 1000 ms): "
              f"{', '.join(ms(t) for t in ttfts)} (max {ms(max(ttfts))})")
        assert all(FIRST_TOKEN_S * 0.9 <= t < FIRST_TOKEN_S + 0.5 for t in ttfts), ttfts
        samples = scrape(s)
        assert metric(samples, "llm_failover_outcomes", provider="primary", model=CLAUDE,
                      **{"class": "first_token_timeout"}) == 3
        assert metric(samples, "llm_failover_deadlines", provider="primary", kind="first_token") >= 3
