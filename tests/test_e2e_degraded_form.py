"""The degraded form fits the client: a chain chooses the message form (a 200 carrying the
notice, right for a chat UI that shows it) or the error form (a 503 in the API's error shape
with Retry-After, right for a program: its SDK raises instead of taking the notice for a real,
truncated answer), and a request picks its form over the chain's with `x-llm-degraded-form`.
Both SDKs (`max_retries=0`), JSON and streams, in Envoy."""

from __future__ import annotations

import anthropic
import openai
import pytest

from test_e2e_failover import CLAUDE, GPT, never_opening_breaker
from test_e2e_providers import CLIENT_KEY, hosts_stack
from test_e2e_providers import filter_config as hosts_filter_config

NOTICE = "Advanced AI features are temporarily offline; please try again shortly."


def config() -> dict:
    cfg = hosts_filter_config()
    cfg["chains"] = [
        # Programmatic traffic: the error form.
        {"name": "claude_api", "match": {"path_prefix": "/v1/messages", "header": {"name": "x-app", "value": "pipeline"}},
         "client_api": "anthropic", "providers": ["anthropic"], "degraded": {"mode": "error"}},
        {"name": "gpt_api", "match": {"path_prefix": "/v1/chat/completions", "header": {"name": "x-app", "value": "pipeline"}},
         "client_api": "openai", "providers": ["openai"], "degraded": {"mode": "error"}},
        # A chat UI: the message form.
        {"name": "claude_ui", "match": {"path_prefix": "/v1/messages"}, "client_api": "anthropic",
         "providers": ["anthropic"], "degraded": {"mode": "message"}},
        {"name": "gpt_ui", "match": {"path_prefix": "/v1/chat/completions"}, "client_api": "openai",
         "providers": ["openai"], "degraded": {"mode": "message"}},
    ]
    return never_opening_breaker(cfg)


@pytest.fixture(scope="module")
def forms():
    with hosts_stack(config()) as s:
        for name in ("anthropic", "openai"):
            s.fault(name, "529" if name == "anthropic" else "500")
        yield s


def claude(s, headers, stream):
    c = anthropic.Anthropic(base_url=s.url, api_key=CLIENT_KEY, max_retries=0, timeout=15, default_headers=headers)
    msgs = [{"role": "user", "content": "hi"}]
    if stream:
        with c.messages.stream(model=CLAUDE, max_tokens=32, messages=msgs) as st:
            return "".join(st.text_stream), st.response.headers
    raw = c.messages.with_raw_response.create(model=CLAUDE, max_tokens=32, messages=msgs)
    return raw.parse().content[0].text, raw.headers


def gpt(s, headers, stream):
    c = openai.OpenAI(base_url=s.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=15, default_headers=headers)
    msgs = [{"role": "user", "content": "hi"}]
    if stream:
        st = c.chat.completions.create(model=GPT, messages=msgs, stream=True)
        return "".join(ch.choices[0].delta.content or "" for ch in st if ch.choices), st.response.headers
    raw = c.chat.completions.with_raw_response.create(model=GPT, messages=msgs)
    return raw.parse().choices[0].message.content, raw.headers


CLIENTS = {"anthropic": (claude, anthropic.APIStatusError), "openai": (gpt, openai.APIStatusError)}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_programmatic_chain_gets_the_error_form(forms, client, stream):
    call, error = CLIENTS[client]
    with pytest.raises(error) as e:
        call(forms, {"x-app": "pipeline"}, stream)
    assert e.value.status_code == 503
    assert e.value.response.headers["x-llm-degraded"] == "true"
    assert e.value.response.headers.get("retry-after")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_ui_asks_for_the_message_form_on_a_programmatic_chain(forms, client, stream):
    call, _ = CLIENTS[client]
    text, headers = call(forms, {"x-app": "pipeline", "x-llm-degraded-form": "message"}, stream)
    assert text == NOTICE
    assert headers["x-llm-degraded"] == "true"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_ui_chain_keeps_the_message_form_and_a_program_can_ask_for_the_error(forms, client, stream):
    call, error = CLIENTS[client]
    text, headers = call(forms, {}, stream)
    assert text == NOTICE and headers["x-llm-degraded"] == "true"
    with pytest.raises(error) as e:
        call(forms, {"x-llm-degraded-form": "error"}, stream)
    assert e.value.status_code == 503
