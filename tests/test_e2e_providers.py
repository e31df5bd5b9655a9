"""Failover to the same model on another host and across vendors, in a real Envoy, with the
official SDKs as clients and strict mock hosts (tests/mock_provider.py) that reject what the
real ones would reject and record the credential they received.

- An `anthropic` SDK client fails over Anthropic -> Vertex -> Bedrock (event-stream decoded)
  -> OpenAI (translated both ways), plain and streaming, and gets valid Anthropic answers.
- An `openai` SDK client fails over OpenAI -> Azure OpenAI -> Anthropic (translated).
- No host ever sees another host's credential or the client's.
- Streams stay streams: the first translated event reaches the client before the host's
  stream ends.
"""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
import requests

from conftest import single_attempt
from stack import DEMO_HOSTS, Stack, demo_env, demo_filter_config, sse_events

CLAUDE = "claude-opus-4-6"
GPT = "gpt-4o"

# The demo's credentials (envoy/demo-hosts.yaml), one per host.
KEYS = demo_env(DEMO_HOSTS)
CLIENT_KEY = "sk-client-own-key-9999"

# Which env var each host's credential comes from, and the header it travels in.
CREDENTIALS = {
    "anthropic": ("x-api-key", "", "ANTHROPIC_API_KEY"),
    "vertex": ("authorization", "Bearer ", "VERTEX_ACCESS_TOKEN"),
    "bedrock": ("authorization", "Bearer ", "BEDROCK_API_KEY"),
    "openai": ("authorization", "Bearer ", "OPENAI_API_KEY"),
    "azure": ("api-key", "", "AZURE_OPENAI_KEY"),
}

# The mock hosts as scripts/demo.sh starts them for `make run-hosts`.
MOCKS = {
    "anthropic": ("anthropic", {}),
    "vertex": ("vertex", {"project": "demo-project", "region": "us-east5"}),
    "bedrock": ("bedrock", {}),
    "openai": ("openai", {}),
    "azure": ("azure", {"deployments": {"gpt4o-prod": "gpt-4o-2024-11-20"}}),
}


def filter_config(**chain_overrides) -> dict:
    """envoy/demo-hosts.yaml's filter config, with a breaker that opens at the first failure
    and stays open for a minute: each test walks the chain by failing one host after another."""
    cfg = demo_filter_config(DEMO_HOSTS)
    cfg["chains"][0].update(chain_overrides)
    cfg["breaker"] = {"window_ms": 10000, "buckets": 10, "min_requests": 100, "consecutive_failures": 1,
                      "open_ms": 60000, "max_open_ms": 60000, "jitter": 0.0}
    return cfg


def hosts_stack(cfg: dict, **kw) -> Stack:
    return Stack(cfg, providers=(), env=KEYS, mocks=MOCKS, base=DEMO_HOSTS, **kw)


@pytest.fixture
def hosts():
    with hosts_stack(filter_config()) as s:
        yield s


def anthropic_client(stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, timeout=15)


def openai_client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=15)


def take_down(stack, name: str, send) -> None:
    """Fails host `name` until its breaker opens (one failure with this breaker); `send` makes
    one client call, which gets the degraded answer."""
    stack.fault(name, "503")
    send()
    # The breaker is open: the host gets no more requests.
    before = len(stack.received(name))
    send()
    assert len(stack.received(name)) == before, f"{name} still receives requests"


def claude_ask(c):
    return c.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}])


def claude_stream(c):
    with c.messages.stream(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        return text, s.get_final_message()


def assert_credentials_stay_home(stack):
    """Every request a host received carried its own credential and nobody else's."""
    for name in MOCKS:
        header, prefix, env = CREDENTIALS[name]
        own = prefix + KEYS[env]
        others = [v for k, v in KEYS.items() if k != env] + [CLIENT_KEY]
        for req in stack.received(name):
            seen = json.dumps(req["headers"])
            assert req["headers"].get(header) == own, (name, req["headers"])
            for secret in others:
                assert secret not in seen, (name, "saw a foreign credential")
                assert secret not in json.dumps(req.get("body"))


def test_anthropic_sdk_fails_over_vertex_bedrock_openai(hosts):
    c = anthropic_client(hosts)

    raw = claude_ask(c)
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert raw.headers["x-llm-model"] == CLAUDE
    assert raw.parse().content[0].text == "Hello from anthropic"

    # 1. Anthropic API down: the same model on Vertex AI.
    take_down(hosts, "anthropic", lambda: claude_ask(c))
    raw = claude_ask(c)
    assert raw.headers["x-llm-provider"] == "vertex"
    assert raw.headers["x-llm-model"] == "claude-opus-4-6@20260201"
    msg = raw.parse()
    assert msg.content[0].text == "Hello from vertex" and msg.stop_reason == "end_turn"
    text, final = claude_stream(c)
    assert text == "Hello from vertex" and final.usage.output_tokens == 5
    seen = hosts.received("vertex")[-1]
    assert seen["path"].endswith("/publishers/anthropic/models/claude-opus-4-6@20260201:streamRawPredict")

    # 2. Vertex down too: Bedrock, whose event-stream is decoded into Anthropic SSE.
    take_down(hosts, "vertex", lambda: claude_ask(c))
    raw = claude_ask(c)
    assert raw.headers["x-llm-provider"] == "bedrock"
    assert raw.headers["x-llm-model"] == "us.anthropic.claude-opus-4-6-v1:0"
    assert raw.parse().content[0].text == "Hello from bedrock"
    text, final = claude_stream(c)
    assert text == "Hello from bedrock"
    assert final.stop_reason == "end_turn" and final.usage.input_tokens == 12 and final.usage.output_tokens == 5
    paths = [r["path"] for r in hosts.received("bedrock")]
    assert "/model/us.anthropic.claude-opus-4-6-v1%3A0/invoke-with-response-stream" in paths
    # Beta flags travel in Bedrock's body, not in a header.
    c.messages.create(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                      extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    assert hosts.received("bedrock")[-1]["body"]["anthropic_beta"] == ["context-1m-2025-08-07"]

    # 3. Bedrock down: another vendor, translated both ways.
    take_down(hosts, "bedrock", lambda: claude_ask(c))
    raw = claude_ask(c)
    assert raw.headers["x-llm-provider"] == "openai"
    assert raw.headers["x-llm-model"] == GPT
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].text == "Hello from openai" and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 12 and msg.usage.output_tokens == 5
    text, final = claude_stream(c)
    assert text == "Hello from openai" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5
    body = hosts.received("openai")[-1]["body"]
    assert body["model"] == GPT and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}

    assert_credentials_stay_home(hosts)


def test_openai_sdk_fails_over_azure_then_anthropic(hosts):
    c = openai_client(hosts)

    def ask():
        return c.chat.completions.with_raw_response.create(
            model=GPT, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])

    def stream():
        chunks = list(c.chat.completions.create(
            model=GPT, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}]))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        usage = [ch.usage for ch in chunks if ch.usage]
        return text, finish, usage

    raw = ask()
    assert raw.headers["x-llm-provider"] == "openai"
    assert raw.parse().choices[0].message.content == "Hello from openai"

    take_down(hosts, "openai", ask)
    raw = ask()
    assert raw.headers["x-llm-provider"] == "azure"
    assert raw.headers["x-llm-model"] == "gpt4o-prod"
    assert raw.parse().choices[0].message.content == "Hello from azure"
    text, finish, _ = stream()
    assert text == "Hello from azure" and finish == ["stop"]
    seen = hosts.received("azure")[-1]
    assert seen["path"] == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"

    take_down(hosts, "azure", ask)
    raw = ask()
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert raw.headers["x-llm-model"] == CLAUDE
    done = raw.parse()
    assert done.object == "chat.completion"
    assert done.choices[0].message.content == "Hello from anthropic"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == 12 and done.usage.completion_tokens == 5
    sent = hosts.received("anthropic")[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["body"]["system"] == "be brief" and sent["body"]["model"] == CLAUDE
    text, finish, usage = stream()
    assert text == "Hello from anthropic" and finish == ["stop"]
    assert usage and usage[-1].completion_tokens == 5

    assert_credentials_stay_home(hosts)


def test_tool_calls_round_trip_through_translation(hosts):
    c = anthropic_client(hosts)
    take_down(hosts, "anthropic", lambda: claude_ask(c))
    take_down(hosts, "vertex", lambda: claude_ask(c))
    take_down(hosts, "bedrock", lambda: claude_ask(c))
    tools = [{"name": "get_weather", "description": "Weather in a city",
              "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                               "required": ["location"]}}]
    first = c.messages.create(model=CLAUDE, max_tokens=64, tools=tools,
                              messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"location": "Paris"}
    second = c.messages.create(model=CLAUDE, max_tokens=64, tools=tools, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ])
    assert second.content[0].text == "Tool said: sunny"
    sent = hosts.received("openai")[-1]["body"]
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    # Streaming tool calls arrive as input_json_delta events the SDK accumulates.
    with c.messages.stream(model=CLAUDE, max_tokens=64, tools=tools,
                           messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert next(b for b in final.content if b.type == "tool_use").input == {"location": "Paris"}


def test_untranslatable_request_is_refused_in_the_clients_format(hosts):
    c = anthropic_client(hosts)
    for name in ("anthropic", "vertex", "bedrock"):
        take_down(hosts, name, lambda: claude_ask(c))
    before = len(hosts.received("openai"))
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model=CLAUDE, max_tokens=64, extra_body={"top_k": 5}, messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["x-llm-failover-refused"] == "openai"
    assert "top_k" in e.value.message
    assert len(hosts.received("openai")) == before  # nothing was sent


def test_untranslatable_request_skips_the_provider_when_configured():
    with hosts_stack(filter_config(on_untranslatable="skip")) as s:
        c = anthropic_client(s)
        for name in ("anthropic", "vertex", "bedrock"):
            take_down(s, name, lambda: claude_ask(c))
        before = len(s.received("openai"))
        raw = c.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=64, extra_body={"top_k": 5}, messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-llm-degraded-reason"] == "no_provider_available"
        assert len(s.received("openai")) == before


def test_same_model_only_requests_never_reach_another_vendor(hosts):
    c = anthropic_client(hosts)
    for name in ("anthropic", "vertex", "bedrock"):
        take_down(hosts, name, lambda: claude_ask(c))
    before = len(hosts.received("openai"))
    raw = c.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-llm-failover-same-model": "required"})
    assert raw.headers["x-llm-degraded"] == "true"
    assert len(hosts.received("openai")) == before
    # Without the header, OpenAI serves.
    assert claude_ask(c).headers["x-llm-provider"] == "openai"


def test_unmapped_model_skips_hosts_that_need_a_mapping(hosts):
    c = anthropic_client(hosts)
    take_down(hosts, "anthropic", lambda: claude_ask(c))
    take_down(hosts, "vertex", lambda: claude_ask(c))
    # Bedrock knows only claude-opus-4-6, OpenAI's entry maps only it too: nothing is left.
    before = len(hosts.received("bedrock")) + len(hosts.received("openai"))
    raw = c.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-llm-degraded-reason"] == "no_provider_available"
    assert len(hosts.received("bedrock")) + len(hosts.received("openai")) == before


@pytest.mark.parametrize("host", ["bedrock", "openai"])
def test_translated_streams_are_not_buffered(hosts, host):
    c = anthropic_client(hosts)
    order = ["anthropic", "vertex", "bedrock", "openai"]
    for name in order[: order.index(host)]:
        take_down(hosts, name, lambda: claude_ask(c))
    hosts.fault(host, "none", chunk_delay_ms=300)
    body = {"model": CLAUDE, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    t0 = time.monotonic()
    with requests.post(hosts.url + "/v1/messages", json=body, stream=True, timeout=20,
                       headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}) as r:
        assert r.headers["x-llm-provider"] == host
        assert r.headers["content-type"].startswith("text/event-stream")
        first_at = None
        text = b""
        for piece in r.iter_content(chunk_size=None):
            if first_at is None and b"event: content_block_delta" in text + piece:
                first_at = time.monotonic() - t0
            text += piece
        total = time.monotonic() - t0
    # The host spreads its events over >= 1.5 s; the first token reaches the client long
    # before the end (the filter holds only what comes before the first token).
    assert total >= 1.5, total
    assert first_at is not None and first_at < total - 0.6, (first_at, total)
    events = sse_events(text.decode())
    assert events[-1][0] == "message_stop"


@pytest.mark.parametrize("host,mode", [("bedrock", "stream_error"), ("bedrock", "truncate"),
                                        ("openai", "stream_error"), ("openai", "truncate")])
def test_errors_inside_translated_streams_count_as_failures(hosts, host, mode):
    c = anthropic_client(hosts)
    order = ["anthropic", "vertex", "bedrock", "openai"]
    for name in order[: order.index(host)]:
        take_down(hosts, name, lambda: claude_ask(c))
    hosts.fault(host, mode)
    body = {"model": CLAUDE, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(hosts.url + "/v1/messages", json=body, timeout=20,
                      headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    names = [e for e, _ in sse_events(r.text)] if r.text.strip() else []
    if r.headers.get("x-llm-provider") == host and host == order[-1]:
        # The failure came after the first token and no provider is left to continue: the
        # client sees no successful end, but an error event in its format.
        assert "message_stop" not in names, r.text
        assert names[-1] == "error", r.text
    elif r.headers.get("x-llm-provider") == host:
        # After the first token: the next host continued the answer, one complete stream.
        assert "error" not in names and names.count("message_stop") == 1, r.text
    else:
        # The failure came before the first token (Bedrock's truncation cuts inside the
        # preamble): the request moved on to the next host and got its whole answer.
        assert r.headers["x-llm-provider"] == order[order.index(host) + 1], r.headers
        assert names[-1] == "message_stop", r.text
    # The host's breaker opened on that failure: the next request skips it.
    before = len(hosts.received(host))
    claude_ask(c)
    assert len(hosts.received(host)) == before
    # An overload reported inside the stream is classed `overloaded`, other errors `stream_error`.
    classes = ("stream_error", "overloaded") if mode == "stream_error" else ("stream_truncated",)
    stats = hosts.envoy.stats()
    assert any(k.startswith(f"wasmcustom.llm_failover.outcomes.class.{cls}.provider.{host}") and v > 0
               for k, v in stats.items() for cls in classes), {k: v for k, v in stats.items() if "outcomes" in k}


def test_host_errors_reach_the_client_in_its_own_format(hosts):
    c = openai_client(hosts)
    ask = lambda: c.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}])  # noqa: E731
    take_down(hosts, "openai", ask)
    take_down(hosts, "azure", ask)
    # Anthropic rejects the request (a 400 in its format): the OpenAI client gets an OpenAI error.
    hosts.fault("anthropic", "400")
    with pytest.raises(openai.BadRequestError) as e:
        ask()
    assert e.value.response.headers["x-llm-provider"] == "anthropic"
    err = e.value.response.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def raw_post(url: str, body: bytes, split_after_headers: float | None) -> tuple[int, dict, bytes]:
    """POSTs /v1/messages over a raw socket; with `split_after_headers`, the body follows the
    headers after that many seconds (so Envoy sees them apart)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    head = (f"POST /v1/messages HTTP/1.1\r\nhost: {u.hostname}\r\ncontent-type: application/json\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        if split_after_headers is None:
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            import select
            # Send the body late, unless the answer came first (then Envoy closes the connection).
            if not select.select([sock], [], [], split_after_headers)[0]:
                sock.sendall(body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head_raw, _, rest = data.partition(b"\r\n\r\n")
    lines = head_raw.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def test_rewritten_failover_without_allow_on_headers_stop_iteration_never_hangs():
    # Istio's WasmPlugin cannot set the flag; Envoy then keeps a held request's body from the
    # filter, so a request that must be rewritten for its host cannot be. It is answered with
    # the degraded 503 error form (retryable, Retry-After) within ~250 ms: never a hang.
    with hosts_stack(single_attempt(filter_config()), allow_stop_iteration=False, upstream_filter=False) as s:
        body = json.dumps({"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}).encode()
        s.fault("anthropic", "503")
        status, headers, _ = raw_post(s.url, body, None)
        assert headers["x-llm-degraded-reason"] == "upstream_failure"
        for split in (None, 0.5):
            t0 = time.monotonic()
            status, headers, answer = raw_post(s.url, body, split)
            if status == 200:  # the body reached the filter with the headers: served
                assert headers["x-llm-provider"] == "vertex", (status, headers, answer)
            else:
                assert status == 503, (status, headers, answer)
                assert headers["x-llm-degraded"] == "true" and headers["retry-after"]
                assert json.loads(answer)["error"]["type"] == "overloaded_error"
            assert time.monotonic() - t0 < 1.0 + (split or 0)
        assert len(s.received("anthropic")) == 1
        assert s.wasm_failures() == []


@pytest.mark.parametrize("host", ["bedrock", "vertex"])
def test_openai_client_on_claude_hosts_composes_translation_and_envelope(host):
    # An OpenAI client whose fallback is Claude on Bedrock or Vertex: the request is translated
    # to Anthropic Messages and put in the host's envelope; the answer (Bedrock: event-stream)
    # comes back as OpenAI chunks.
    cfg = filter_config()
    cfg["chains"][1]["providers"] = ["openai", {"provider": host, "models": {GPT: {
        "bedrock": "us.anthropic.claude-opus-4-6-v1:0", "vertex": "claude-opus-4-6@20260201"}[host]}}]
    cfg["chains"][1]["failover"] = {"clusters": [{"cluster": "openai_then_host", "providers": ["openai", host]}]}
    with hosts_stack(cfg) as s:
        c = openai_client(s)
        ask = lambda: c.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}])  # noqa: E731
        take_down(s, "openai", ask)
        done = ask()
        assert done.choices[0].message.content == f"Hello from {host}"
        assert done.usage.completion_tokens == 5
        chunks = list(c.chat.completions.create(model=GPT, stream=True, stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "hi"}]))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == f"Hello from {host}"
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].usage.prompt_tokens == 12
        assert_credentials_stay_home(s)


def test_large_requests_are_rewritten_for_fallback_hosts(hosts):
    # A rewritten request is buffered whole; the demo configs raise Envoy's 1 MiB default
    # buffer to 32 MiB (the Anthropic API's own limit), so large prompts and images fail over.
    c = anthropic_client(hosts)
    take_down(hosts, "anthropic", lambda: claude_ask(c))
    image = "A" * (6 * 1024 * 1024)  # a 6 MiB base64 "image"
    msg = c.messages.create(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "text", "text": "what is this?"}]}])
    assert msg.content[0].text == "Hello from vertex"
    sent = hosts.received("vertex")[-1]["body"]
    assert sent["messages"][0]["content"][0]["source"]["data"] == image
    assert "model" not in sent


def test_garbage_on_rewritten_paths_never_crashes_the_vm(hosts):
    # Bad request bodies that must be rewritten, and garbage answers that must be decoded or
    # translated, end as client errors or degraded answers; no Wasm VM ever crashes.
    c = anthropic_client(hosts)
    take_down(hosts, "anthropic", lambda: claude_ask(c))
    for raw in (b"not json", b"[1,2]", b'{"model": 5}', b'{"model": "claude-opus-4-6", "messages": [',
                b"[" * 5000, bytes(range(256)) * 20, b'{"model": "claude-opus-4-6", "max_tokens": "x"}'):
        r = requests.post(hosts.url + "/v1/messages", data=raw, timeout=10,
                          headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
        assert r.status_code in (200, 400, 503), (raw[:20], r.status_code, r.text[:200])
    stream = {"model": CLAUDE, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    take_down(hosts, "vertex", lambda: claude_ask(c))
    hosts.fault("bedrock", "garbage")
    for body in (stream, {**stream, "stream": False}):
        requests.post(hosts.url + "/v1/messages", json=body, timeout=10)
    take_down(hosts, "bedrock", lambda: claude_ask(c))
    hosts.fault("openai", "garbage")
    for body in (stream, {**stream, "stream": False}):
        requests.post(hosts.url + "/v1/messages", json=body, timeout=10)
    o = openai_client(hosts)
    ask = lambda: o.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}])  # noqa: E731
    take_down(hosts, "azure", ask)
    for raw in (b'{"model": "gpt-4o", "messages": "hi"}', b'{"model": "gpt-4o", "messages": [{"role": "tool"}]}'):
        r = requests.post(hosts.url + "/v1/chat/completions", data=raw, timeout=10,
                          headers={"content-type": "application/json"})
        assert r.status_code in (200, 400, 503), r.text[:200]
    assert hosts.wasm_failures() == []
