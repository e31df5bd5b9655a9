"""Every kind of upstream failure is seen and counted: statuses, Envoy's own replies after
timeouts, resets and refused connections, 429 cooldowns, and errors inside a 200 SSE stream.
With in-request failover (`stack`) the request that meets the failure is answered by the
fallback; with one attempt per request (`single`, an Istio WasmPlugin install) it is answered
degraded. Either way the failure counts against the primary."""

import time

import pytest

from conftest import fast_breaker, single_attempt
from stack import MESSAGE_BODY, Stack, sse_events
from test_e2e_breaker import provider_of


@pytest.mark.parametrize("mode", ["500", "503", "529", "reset"])
def test_failures_before_the_answer_open_the_breaker(stack, mode):
    stack.fault("primary", mode)
    seen = [provider_of(stack.post()) for _ in range(4)]
    assert seen == ["fallback"] * 4, seen
    # Three failures open the primary's breaker: the fourth request does not try it.
    assert len(stack.received("primary")) == 3


@pytest.mark.parametrize("mode", ["500", "529", "reset"])
def test_with_one_attempt_per_request_the_failures_are_answered_degraded(single, mode):
    single.fault("primary", mode)
    seen = [provider_of(single.post()) for _ in range(4)]
    assert seen == ["degraded"] * 3 + ["fallback"], seen


def test_hanging_provider_times_out_and_counts():
    # One attempt per request, route idle timeout 1 s: a hang becomes Envoy's own 504,
    # classified as a timeout.
    with Stack(single_attempt(fast_breaker()), upstream_filter=False, idle_timeout="1s", route_timeout="3s") as s:
        s.fault("primary", "hang", hang_ms=10000)
        seen = [provider_of(s.post()) for _ in range(4)]
        assert seen == ["degraded"] * 3 + ["fallback"], seen
        assert "3 consecutive failures" in "\n".join(s.envoy.wasm_log())


def test_refused_connections_count():
    cfg = fast_breaker()
    # "primary" has no mock: its cluster points at a port nobody listens on.
    with Stack(cfg, providers=("fallback",)) as s:
        seen = [provider_of(s.post()) for _ in range(4)]
        assert seen == ["fallback"] * 4, seen
        assert "3 consecutive failures" in "\n".join(s.envoy.wasm_log())


def test_rate_limit_is_a_cooldown_not_a_breaker_trip(stack):
    stack.fault("primary", "429", retry_after=2, count=1)
    r = stack.post()
    # The request that met the 429 is answered by the fallback at once.
    assert provider_of(r) == "fallback" and r.headers["x-llm-attempts"] == "2"
    # For the Retry-After period the primary is skipped...
    assert provider_of(stack.post()) == "fallback"
    assert provider_of(stack.post()) == "fallback"
    log = "\n".join(stack.envoy.wasm_log())
    assert "provider primary answered 429; skipped for 2000 ms" in log
    assert "breaker" not in log
    # ...and afterwards it serves again, without any half-open probing.
    time.sleep(2.1)
    assert provider_of(stack.post()) == "primary"


def test_error_event_inside_a_200_stream_counts_as_a_failure(stack):
    stack.fault("primary", "stream_error")
    for _ in range(3):
        r = stack.post({**MESSAGE_BODY, "stream": True})
        # The stream had already started: the primary's part reached the client, the fallback
        # finished it (a continuation), and the primary's failure counts.
        assert r.status_code == 200 and r.headers["x-llm-provider"] == "primary"
        names = [e for e, _ in sse_events(r.text)]
        assert "error" not in names and names[-1] == "message_stop", r.text
    assert provider_of(stack.post({**MESSAGE_BODY, "stream": True})) == "fallback"


def test_stream_without_message_stop_counts_as_a_failure(stack):
    stack.fault("primary", "truncate")
    for _ in range(3):
        r = stack.post({**MESSAGE_BODY, "stream": True})
        assert r.status_code == 200 and r.headers["x-llm-provider"] == "primary"
        # Continued by the fallback: one complete stream.
        assert [e for e, _ in sse_events(r.text)].count("message_stop") == 1, r.text
    r = stack.post({**MESSAGE_BODY, "stream": True})
    assert provider_of(r) == "fallback"
    assert [e for e, _ in sse_events(r.text)][-1] == "message_stop"


def test_slow_first_byte_within_the_timeout_is_a_success(stack):
    stack.fault("primary", "slow_first_byte", delay_ms=500)
    for _ in range(4):
        assert provider_of(stack.post()) == "primary"
