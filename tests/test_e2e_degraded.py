"""Degraded mode: when nothing healthy is left, the client gets a well-formed answer in its own
API format at once, flagged with x-llm-degraded, instead of a raw 5xx."""

import time

from conftest import fast_breaker, single_attempt
from stack import MESSAGE_BODY, Stack, sse_events
from test_e2e_breaker import provider_of

NOTICE = "Advanced AI features are temporarily offline; please try again shortly."


def take_everything_down(stack):
    stack.fault("primary", "529")
    stack.fault("fallback", "500")
    for _ in range(12):
        stack.post()
    # Both breakers are open now.
    r = stack.post()
    assert r.headers.get("x-llm-degraded-reason") == "no_provider_available", r.headers


def test_upstream_failure_is_replaced_by_a_degraded_message(stack):
    stack.fault("primary", "529")
    stack.fault("fallback", "500")
    r = stack.post()
    assert r.status_code == 200
    assert r.headers["x-llm-degraded"] == "true"
    assert r.headers["x-llm-degraded-reason"] == "upstream_failure"
    assert "x-llm-provider" not in r.headers
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == MESSAGE_BODY["model"]
    assert body["content"] == [{"type": "text", "text": NOTICE}]


def test_all_providers_down_answers_at_once_without_calling_upstream(stack):
    take_everything_down(stack)
    calls = len(stack.received("primary")) + len(stack.received("fallback"))
    t0 = time.monotonic()
    r = stack.post()
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.headers["x-llm-degraded"] == "true"
    assert r.json()["content"][0]["text"] == NOTICE
    assert len(stack.received("primary")) + len(stack.received("fallback")) == calls
    assert elapsed < 1.0


def test_degraded_stream_is_a_valid_anthropic_sse_stream(stack):
    take_everything_down(stack)
    r = stack.post({**MESSAGE_BODY, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [e for e, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["message"]["model"] == MESSAGE_BODY["model"]
    assert events[2][1]["delta"]["text"] == NOTICE


def test_streaming_request_failing_upstream_gets_a_degraded_stream(stack):
    stack.fault("primary", "500")
    stack.fault("fallback", "529")
    r = stack.post({**MESSAGE_BODY, "stream": True})
    assert r.headers["x-llm-degraded"] == "true"
    assert [e for e, _ in sse_events(r.text)][-1] == "message_stop"


def test_error_mode_answers_503_with_retry_after():
    cfg = fast_breaker()
    cfg["degraded"] = {"mode": "error", "notice": "LLM features paused", "retry_after_s": 42}
    with Stack(cfg) as s:
        s.fault("primary", "529")
        s.fault("fallback", "reset")
        r = s.post()
        assert r.status_code == 503
        assert r.headers["retry-after"] == "42"
        assert r.headers["x-llm-degraded"] == "true"
        assert r.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "LLM features paused"}}


def test_degraded_payload_never_carries_upstream_text_or_secrets(stack):
    stack.fault("primary", "503")  # a plain-text proxy page
    stack.fault("fallback", "html_error", status=502)
    r = stack.post(headers={"x-api-key": "sk-secret-zzz"})
    assert r.headers["x-llm-degraded"] == "true"
    assert "<html" not in r.text.lower()
    assert "upstream unavailable" not in r.text
    assert "sk-secret-zzz" not in r.text and "demo-fallback-key" not in r.text


def test_without_allow_on_headers_stop_iteration_as_under_istio_wasmplugin():
    # Istio's WasmPlugin and TrafficExtension cannot set allow_on_headers_stop_iteration. Envoy
    # then passes a held request's body to the filter only if it came with the headers; if not,
    # the filter's tick answers with the error form (503 + Retry-After + overloaded_error), which
    # is right for streams and non-streams alike. Either way: at once, well-formed, no hang.
    cfg = single_attempt(fast_breaker(open_ms=20000, max_open_ms=40000))
    with Stack(cfg, allow_stop_iteration=False, upstream_filter=False) as s:
        s.fault("primary", "529")
        assert [provider_of(s.post()) for _ in range(4)] == ["degraded"] * 3 + ["fallback"]
        s.fault("fallback", "500")
        for _ in range(3):
            s.post()
        for body in (MESSAGE_BODY, {**MESSAGE_BODY, "stream": True}):
            t0 = time.monotonic()
            r = s.post(body)
            assert time.monotonic() - t0 < 1.0
            assert r.headers["x-llm-degraded"] == "true"
            assert r.headers["x-llm-degraded-reason"] == "no_provider_available"
            if r.status_code == 503:
                assert r.headers["retry-after"] == "30"
                assert r.json()["error"]["type"] == "overloaded_error"
            elif body.get("stream"):
                assert [e for e, _ in sse_events(r.text)][-1] == "message_stop"
            else:
                assert r.status_code == 200 and r.json()["type"] == "message"
        assert s.wasm_failures() == []
