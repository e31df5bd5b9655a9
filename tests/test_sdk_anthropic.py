"""Client compatibility with the official `anthropic` Python SDK pointed at Envoy: plain and
streaming calls through failover, and degraded answers that parse."""

import anthropic
import pytest

from test_e2e_degraded import NOTICE, take_everything_down

MODEL = "claude-opus-4-6"


def client(stack, **kw):
    return anthropic.Anthropic(base_url=stack.url, api_key="sk-ant-client", max_retries=0, timeout=15, **kw)


def ask(c):
    return c.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])


def ask_stream(c) -> tuple[str, object]:
    with c.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        return text, s.get_final_message()


def test_sdk_plain_and_streaming_through_failover(stack):
    c = client(stack)
    assert ask(c).content[0].text == "Hello from primary"
    text, final = ask_stream(c)
    assert text == "Hello from primary" and final.stop_reason == "end_turn"

    stack.fault("primary", "529")
    answers = [ask(c).content[0].text for _ in range(4)]
    # The requests that meet the outage are replayed on the fallback: the SDK sees no error.
    assert answers == ["Hello from fallback"] * 4, answers
    text, final = ask_stream(c)
    assert text == "Hello from fallback"
    assert final.usage.output_tokens == 5


def test_sdk_parses_degraded_answers_when_everything_is_down(stack):
    take_everything_down(stack)
    c = client(stack)
    msg = ask(c)
    assert msg.content[0].text == NOTICE and msg.stop_reason == "end_turn"
    text, final = ask_stream(c)
    assert text == NOTICE and final.role == "assistant"
    raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-llm-degraded"] == "true"


def test_sdk_sees_a_retryable_overloaded_error_in_error_mode():
    from conftest import fast_breaker
    from stack import Stack

    cfg = fast_breaker()
    cfg["degraded"] = {"mode": "error"}
    with Stack(cfg) as s:
        s.fault("primary", "529")
        s.fault("fallback", "500")
        with pytest.raises(anthropic.APIStatusError) as e:
            ask(client(s))
        assert e.value.status_code == 503
        assert e.value.body["error"]["type"] == "overloaded_error"
