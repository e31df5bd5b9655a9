"""Context-overflow failover, end to end in Envoy with the official SDKs (`max_retries=0`): a
400 saying the prompt is too long for the model (Anthropic's `prompt is too long`, OpenAI's
`context_length_exceeded`) is answered by a later provider of the chain configured with a larger
`context_window` and serving another model; a host of the same model is never tried, and
without such a provider the client gets the original 400.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from test_e2e_failover import CLAUDE, GPT, access_log, never_opening_breaker
from test_e2e_providers import CLIENT_KEY, hosts_stack
from test_e2e_providers import filter_config as hosts_filter_config

LONG = "word " * 400  # 2000 characters: too long for the small-context mocks


def config(windows: dict[str, int]) -> dict:
    cfg = hosts_filter_config()
    for p in cfg["providers"]:
        if p["name"] in windows:
            p["context_window"] = windows[p["name"]]
    cfg["chains"] = [
        {"name": "claude", "match": {"path_prefix": "/v1/messages"}, "client_api": "anthropic",
         "providers": ["anthropic", "vertex", {"provider": "openai", "models": {CLAUDE: "gpt-4.1"}}],
         "deadlines": {"first_token_ms": 2000},
         "failover": {"clusters": [{"cluster": "llm_claude", "providers": ["anthropic", "vertex", "openai"]}]}},
        {"name": "gpt", "match": {"path_prefix": "/v1/chat/completions"}, "client_api": "openai",
         "providers": ["openai", {"provider": "anthropic", "models": {GPT: CLAUDE}}],
         "deadlines": {"first_token_ms": 2000},
         "failover": {"clusters": [{"cluster": "llm_gpt", "providers": ["openai", "anthropic"]}]}},
    ]
    return never_opening_breaker(cfg)


@pytest.fixture(scope="module")
def overflow():
    with hosts_stack(config({"anthropic": 200000, "vertex": 1000000, "openai": 1000000})) as s:
        yield s


def small_context(s, *names):
    for name, m in s.mocks.items():
        m.set_fault({"mode": "none"})
        m.set_answer({"max_prompt_chars": 1000 if name in names else None})


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_prompt_too_long_for_claude_is_answered_by_a_larger_context_of_another_model(overflow, stream):
    s = overflow
    small_context(s, "anthropic", "vertex")
    vertex_before = len(s.received("vertex"))
    c = anthropic.Anthropic(base_url=s.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": LONG}]
    if stream:
        with c.messages.stream(model=CLAUDE, max_tokens=64, messages=msgs) as st:
            headers = st.response.headers
            text = "".join(st.text_stream)
            final = st.get_final_message()
    else:
        raw = c.messages.with_raw_response.create(model=CLAUDE, max_tokens=64, messages=msgs)
        headers, final = raw.headers, raw.parse()
        text = "".join(b.text for b in final.content if b.type == "text")
    assert text == "Hello from openai", text
    assert final.stop_reason == "end_turn"
    assert headers["x-llm-provider"] == "openai"
    assert headers.get("x-llm-context-overflow") == "true"
    # The same model on another host (Vertex) is never tried, whatever its window.
    assert len(s.received("vertex")) == vertex_before
    log = access_log(s)[-1]
    assert log["llm_provider"] == "openai", log
    assert "openai:success" in log["llm_tried"], log


def test_an_openai_client_moves_to_claudes_larger_window():
    with hosts_stack(config({"openai": 128000, "anthropic": 200000})) as s:
        small_context(s, "openai")
        c = openai.OpenAI(base_url=s.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
        raw = c.chat.completions.with_raw_response.create(model=GPT, messages=[{"role": "user", "content": LONG}])
        done = raw.parse()
        assert done.choices[0].message.content == "Hello from anthropic"
        assert raw.headers["x-llm-provider"] == "anthropic"
        stream = c.chat.completions.create(model=GPT, stream=True, messages=[{"role": "user", "content": LONG}])
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text == "Hello from anthropic"


def test_without_a_larger_window_the_client_gets_the_400(overflow):
    with hosts_stack(config({})) as s:
        small_context(s, "anthropic")
        c = anthropic.Anthropic(base_url=s.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": LONG}])
        assert "prompt is too long" in str(e.value)
        assert s.received("openai") == []
    # A 400 that is not about the prompt's length is the client's own, and stays its own.
    s = overflow
    small_context(s)
    c = anthropic.Anthropic(base_url=s.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    s.fault("anthropic", "400")
    openai_before = len(s.received("openai"))
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert len(s.received("openai")) == openai_before
