"""Tests for the mock providers (tests/mock_provider.py): one per provider API, strict like the real host."""

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib

import anthropic
import openai
import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mock_provider import make_server, start_mock  # noqa: E402

MODEL = "claude-test-1"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def mock():
    server, port = start_mock("primary", port=0)
    base = f"http://127.0.0.1:{port}"
    yield server, base
    server.shutdown()


def client(base):
    return anthropic.Anthropic(base_url=base, api_key="k", max_retries=0, timeout=5)


def set_fault(base, **fault):
    r = requests.post(f"{base}/_control/fault", json=fault, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_invalid_fault(mock):
    _, base = mock
    assert requests.get(f"{base}/_control/health", timeout=5).json() == {"ok": True, "name": "primary"}
    assert requests.post(f"{base}/_control/fault", json={"mode": "bogus"}, timeout=5).status_code == 400


def test_non_stream_sdk_and_recording(mock):
    _, base = mock
    msg = client(base).messages.create(model=MODEL, max_tokens=10, messages=MSGS)
    assert msg.content[0].text == "Hello from primary"
    assert msg.model == MODEL and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 12 and msg.usage.output_tokens == 5
    assert msg.id.startswith("msg_")

    recs = requests.get(f"{base}/_control/requests", timeout=5).json()
    assert len(recs) == 1
    rec = recs[0]
    assert rec["path"] == "/v1/messages" and rec["method"] == "POST"
    # Older SDKs send `x-api-key: k`; anthropic 2.x sends `authorization: Bearer k`.
    hdrs = rec["headers"]
    assert hdrs.get("x-api-key") == "k" or hdrs.get("authorization") == "Bearer k", hdrs
    assert "anthropic-version" in hdrs
    assert rec["model"] == MODEL and rec["stream"] is False
    assert rec["body"]["max_tokens"] == 10

    r = requests.post(f"{base}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": MSGS},
                      headers={"x-api-key": "secret-1", "anthropic-version": "2023-06-01"}, timeout=5)
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")
    rec = requests.get(f"{base}/_control/requests", timeout=5).json()[-1]
    assert rec["headers"]["x-api-key"] == "secret-1"

    requests.post(f"{base}/_control/reset", timeout=5)
    assert requests.get(f"{base}/_control/requests", timeout=5).json() == []


def test_stream_sdk(mock):
    _, base = mock
    c = client(base)
    with c.messages.stream(model=MODEL, max_tokens=10, messages=MSGS) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from primary"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5

    types = [ev.type for ev in c.messages.create(model=MODEL, max_tokens=10, messages=MSGS, stream=True)]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "content_block_delta" in types

    r = requests.post(f"{base}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": MSGS, "stream": True},
                      timeout=5)
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "event: ping" in r.text


def test_529_and_stream_error(mock):
    _, base = mock
    c = client(base)
    set_fault(base, mode="529")
    with pytest.raises(anthropic.APIStatusError) as ei:
        c.messages.create(model=MODEL, max_tokens=10, messages=MSGS)
    assert ei.value.status_code == 529
    assert ei.value.body["error"]["type"] == "overloaded_error"

    set_fault(base, mode="stream_error")
    with pytest.raises(anthropic.APIStatusError):
        with c.messages.stream(model=MODEL, max_tokens=10, messages=MSGS) as s:
            for _ in s.text_stream:
                pass


def test_429_retry_after(mock):
    _, base = mock
    set_fault(base, mode="429", retry_after=7)
    r = requests.post(f"{base}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": MSGS}, timeout=5)
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "rate_limit_error"

    set_fault(base, mode="429", retry_after=None)
    r = requests.post(f"{base}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": MSGS}, timeout=5)
    assert r.status_code == 429 and "retry-after" not in r.headers


def test_chunked_request_body(mock):
    _, base = mock
    parts = [b'{"model": "', MODEL.encode(), b'", "max_tokens": 5, ', b'"messages": [{"role": "user", "content": "hi"}]}']
    r = requests.post(f"{base}/v1/messages", data=iter(parts), headers={"content-type": "application/json"}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "Hello from primary"
    rec = requests.get(f"{base}/_control/requests", timeout=5).json()[-1]
    assert rec["headers"]["transfer-encoding"] == "chunked" and rec["model"] == MODEL


def test_bad_request(mock):
    _, base = mock
    r = requests.post(f"{base}/v1/messages", data=b"{nope", timeout=5)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(f"{base}/v1/messages", json={"model": MODEL}, timeout=5)
    assert r.status_code == 400


def test_count_reverts(mock):
    _, base = mock
    assert set_fault(base, mode="500", count=2)["count"] == 2
    body = {"model": MODEL, "max_tokens": 5, "messages": MSGS}
    codes = [requests.post(f"{base}/v1/messages", json=body, timeout=5).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    assert requests.get(f"{base}/_control/fault", timeout=5).json()["mode"] == "none"


def test_reset_truncate_and_hang(mock):
    server, base = mock
    body = {"model": MODEL, "max_tokens": 5, "messages": MSGS}
    set_fault(base, mode="reset", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{base}/v1/messages", json=body, timeout=5)

    set_fault(base, mode="truncate", count=1)
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(f"{base}/v1/messages", json=body, timeout=5)

    set_fault(base, mode="truncate", count=1)
    r = requests.post(f"{base}/v1/messages", json={**body, "stream": True}, timeout=5)
    assert r.status_code == 200 and "message_start" in r.text and "message_stop" not in r.text

    set_fault(base, mode="hang", hang_ms=300, count=1)
    t0 = time.time()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{base}/v1/messages", json=body, timeout=5)
    assert 0.25 < time.time() - t0 < 3

    # A long hang is cut short by shutdown.
    set_fault(base, mode="hang")
    host, port = server.server_address[:2]
    s = socket.create_connection((host, port), timeout=5)
    raw = b'{"model":"m","max_tokens":1,"messages":[]}'
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
    time.sleep(0.2)
    t0 = time.time()
    server.shutdown()
    assert s.recv(100) == b""
    assert time.time() - t0 < 2
    s.close()


# ======================================================================================
# One mock per provider API (api=...): strict checks, credentials, tools, fault shapes.
# ======================================================================================

VERTEX_MODEL = "claude-opus-4-6"
VERTEX_PREFIX = "/v1/projects/demo-project/locations/us-east5/publishers/anthropic/models"
BEDROCK_MODEL = "us.anthropic.claude-opus-4-6-v1:0"
BEDROCK_PATH = "/model/us.anthropic.claude-opus-4-6-v1%3A0"
AZURE_PATH = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"

ANTH_BODY = {"model": MODEL, "max_tokens": 5, "messages": MSGS}
VERTEX_BODY = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 5, "messages": MSGS}
BEDROCK_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": MSGS}
OA_BODY = {"model": "gpt-4o", "messages": MSGS}

HEADERS = {
    "anthropic": {"x-api-key": "ak"},
    "vertex": {"authorization": "Bearer tok"},
    "bedrock": {"authorization": "Bearer bedrock-key"},
    "openai": {"authorization": "Bearer sk-test"},
    "azure": {"api-key": "az-key"},
}
ANTH_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
              {"name": "other", "input_schema": {"type": "object"}}]
OA_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]


@pytest.fixture
def mocks():
    started = []

    def start(api="anthropic", name="primary", **options):
        server, port = start_mock(name, api=api, **options)
        started.append(server)
        return server, f"http://127.0.0.1:{port}"

    yield start
    for s in started:
        s.shutdown()


def request_for(api, stream=False):
    """(path, body) of a valid request to the `api` mock."""
    if api == "anthropic":
        return "/v1/messages", {**ANTH_BODY, **({"stream": True} if stream else {})}
    if api == "vertex":
        verb = "streamRawPredict" if stream else "rawPredict"
        return f"{VERTEX_PREFIX}/{VERTEX_MODEL}:{verb}", {**VERTEX_BODY, **({"stream": True} if stream else {})}
    if api == "bedrock":
        return BEDROCK_PATH + ("/invoke-with-response-stream" if stream else "/invoke"), dict(BEDROCK_BODY)
    if api == "openai":
        return "/v1/chat/completions", {**OA_BODY, **({"stream": True} if stream else {})}
    return AZURE_PATH, {"messages": MSGS, **({"stream": True} if stream else {})}


def post(base, path, body, api=None, headers=None, **kw):
    h = dict(HEADERS[api]) if api else {}
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(base + path, data=data, headers={"content-type": "application/json", **h},
                         timeout=kw.pop("timeout", 5), **kw)


def recorded(base):
    return requests.get(f"{base}/_control/requests", timeout=5).json()


def sse_blocks(text):
    """[(event or None, data string)] of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        ev, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((ev, "\n".join(data)))
    return out


def openai_stream(text):
    """(chunk objects, saw [DONE]) of an OpenAI SSE body."""
    datas = [d for _, d in sse_blocks(text)]
    done = bool(datas) and datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas if d != "[DONE]"], done


# ---- an independent AWS event-stream decoder (checks both CRCs) ---------------------------

def es_decode(buf: bytes):
    """Decodes complete frames from `buf`: ([(headers, payload)], leftover bytes)."""
    frames, pos = [], 0
    while len(buf) - pos >= 12:
        total, hlen = struct.unpack_from(">II", buf, pos)
        (pcrc,) = struct.unpack_from(">I", buf, pos + 8)
        assert zlib.crc32(buf[pos:pos + 8]) == pcrc, "prelude CRC mismatch"
        if len(buf) - pos < total:
            break
        (mcrc,) = struct.unpack_from(">I", buf, pos + total - 4)
        assert zlib.crc32(buf[pos:pos + total - 4]) == mcrc, "message CRC mismatch"
        headers, h, hend = {}, pos + 12, pos + 12 + hlen
        while h < hend:
            nlen = buf[h]
            name = buf[h + 1:h + 1 + nlen].decode()
            h += 1 + nlen
            assert buf[h] == 7, "only string headers expected"
            (vlen,) = struct.unpack_from(">H", buf, h + 1)
            headers[name] = buf[h + 3:h + 3 + vlen].decode()
            h += 3 + vlen
        frames.append((headers, buf[hend:pos + total - 4]))
        pos += total
    return frames, buf[pos:]


def bedrock_events(frames):
    out = []
    for headers, payload in frames:
        assert headers[":message-type"] == "event" and headers[":event-type"] == "chunk"
        assert headers[":content-type"] == "application/json"
        p = json.loads(payload)
        assert set(p) == {"bytes", "p"} and p["p"].isalnum()
        out.append(json.loads(base64.b64decode(p["bytes"])))
    return out


def http_chunks(base, path, body, api="bedrock", headers=None):
    """The HTTP chunks of a streamed answer, as sent, and the response."""
    r = post(base, path, body, api, headers=headers, stream=True)
    chunks = list(r.raw.read_chunked(decode_content=False))
    return r, chunks


# ---- anthropic -------------------------------------------------------------------------------

def test_anthropic_strict_rejections_are_recorded(mocks):
    _, base = mocks("anthropic")
    cases = [
        ({**ANTH_BODY, "foo": 1}, "foo: Extra inputs are not permitted"),
        ({**ANTH_BODY, "anthropic_version": "2023-06-01"}, "anthropic_version: Extra inputs are not permitted"),
        ({**ANTH_BODY, "messages": [{"role": "system", "content": "x"}]},
         "messages.0.role: Input should be 'user' or 'assistant'"),
        ({**ANTH_BODY, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0.type: Field required"),
        ({**ANTH_BODY, "messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
        ({**ANTH_BODY, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "x"}]}]},
         "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_2"),
        ({**ANTH_BODY, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]},
         "unexpected `tool_use_id`"),
    ]
    for body, message in cases:
        r = post(base, "/v1/messages?beta=true", body, "anthropic")
        assert r.status_code == 400, body
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert message in err["error"]["message"], (message, err)
    recs = recorded(base)
    assert len(recs) == len(cases)
    assert all(rec["api"] == "anthropic" and rec["credential"] == {"x-api-key": "ak"} for rec in recs)
    assert recs[0]["query"] == {"beta": "true"} and recs[0]["body"]["foo"] == 1
    # Permissive mode accepts what strict refuses.
    _, loose = mocks("anthropic", name="loose", strict=False)
    assert post(loose, "/v1/messages", {**ANTH_BODY, "foo": 1, "anthropic_version": "x"}).status_code == 200


def test_anthropic_tool_use_and_tool_result(mocks):
    _, base = mocks("anthropic")
    c = client(base)
    ask = [{"role": "user", "content": "weather in Paris?"}]
    msg = c.messages.create(model=MODEL, max_tokens=50, messages=ask, tools=ANTH_TOOLS)
    assert msg.stop_reason == "tool_use"
    (block,) = msg.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"location": "Paris"}
    assert block.id.startswith("toolu_")
    with c.messages.stream(model=MODEL, max_tokens=50, messages=ask, tools=ANTH_TOOLS) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"location": "Paris"}
    raw = post(base, "/v1/messages", {**ANTH_BODY, "stream": True, "tools": ANTH_TOOLS}).text
    assert raw.count("input_json_delta") == 3
    # tool_choice names the tool / none.
    picked = c.messages.create(model=MODEL, max_tokens=50, messages=ask, tools=ANTH_TOOLS,
                               tool_choice={"type": "tool", "name": "other"})
    assert picked.content[0].name == "other"
    none = c.messages.create(model=MODEL, max_tokens=50, messages=ask, tools=ANTH_TOOLS, tool_choice={"type": "none"})
    assert none.content[0].text == "Hello from primary"
    # The tool result comes back.
    use = {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    turn = ask + [{"role": "assistant", "content": [use]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "15 degrees"}]}]
    reply = c.messages.create(model=MODEL, max_tokens=50, messages=turn, tools=ANTH_TOOLS)
    assert reply.content[0].text == "Tool said: 15 degrees" and reply.stop_reason == "end_turn"
    with c.messages.stream(model=MODEL, max_tokens=50, messages=turn, tools=ANTH_TOOLS) as s:
        assert "".join(s.text_stream) == "Tool said: 15 degrees"


# ---- vertex ----------------------------------------------------------------------------------

def vertex_client(base, **kw):
    return anthropic.AnthropicVertex(region="us-east5", project_id="demo-project", access_token="tok",
                                     base_url=base + "/v1", max_retries=0, timeout=5, **kw)


VX = {"anthropic_version": "vertex-2023-10-16"}  # anthropic 2.14 sends its own version string by default


def test_vertex_sdk_plain_stream_and_tools(mocks):
    _, base = mocks("vertex")
    c = vertex_client(base)
    msg = c.messages.create(model="claude-opus-4-6@20250514", max_tokens=10, messages=MSGS, extra_body=VX)
    assert msg.content[0].text == "Hello from primary" and msg.model == "claude-opus-4-6@20250514"
    assert msg.id.startswith("msg_vrtx_") and msg.usage.input_tokens == 12 and msg.usage.output_tokens == 5
    with c.messages.stream(model=VERTEX_MODEL, max_tokens=10, messages=MSGS, extra_body=VX) as s:
        assert "".join(s.text_stream) == "Hello from primary"
        assert s.get_final_message().model == VERTEX_MODEL
    tool = c.messages.create(model=VERTEX_MODEL, max_tokens=10, messages=MSGS, tools=ANTH_TOOLS, extra_body=VX)
    assert tool.stop_reason == "tool_use" and tool.content[0].input == {"location": "Paris"}
    recs = recorded(base)
    assert [r["route"]["verb"] for r in recs] == ["rawPredict", "streamRawPredict", "rawPredict"]
    assert recs[0]["path"].endswith("/models/claude-opus-4-6@20250514:rawPredict")
    assert recs[1]["model"] == VERTEX_MODEL and recs[1]["stream"] is True
    assert all(r["api"] == "vertex" and r["credential"] == {"authorization": "Bearer tok"} for r in recs)
    assert "model" not in recs[0]["body"] and recs[0]["body"]["anthropic_version"] == "vertex-2023-10-16"
    # Without the override the SDK's own default version is refused, as strict Vertex would.
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model=VERTEX_MODEL, max_tokens=10, messages=MSGS)


def test_vertex_strict_rejections(mocks):
    _, base = mocks("vertex", project="p1", region="europe-west1")
    prefix = "/v1/projects/p1/locations/europe-west1/publishers/anthropic/models"
    ok = f"{prefix}/{VERTEX_MODEL}:rawPredict"
    assert post(base, ok, VERTEX_BODY, "vertex").status_code == 200
    for path in (f"/v1/projects/demo-project/locations/europe-west1/publishers/anthropic/models/{VERTEX_MODEL}:rawPredict",
                 f"/v1/projects/p1/locations/us-east5/publishers/anthropic/models/{VERTEX_MODEL}:rawPredict",
                 f"/v1/projects/p1/locations/europe-west1/publishers/google/models/{VERTEX_MODEL}:rawPredict",
                 f"{prefix}/{VERTEX_MODEL}:predict", f"{prefix}/gemini-2.0:rawPredict", "/v1/messages"):
        r = post(base, path, VERTEX_BODY, "vertex")
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    for headers in ({"authorization": ""}, {"authorization": "Basic x"}):
        r = post(base, ok, VERTEX_BODY, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    stream_path = ok.replace(":rawPredict", ":streamRawPredict")
    cases = [
        (ok, {**VERTEX_BODY, "model": VERTEX_MODEL}, "model"),
        (ok, {k: v for k, v in VERTEX_BODY.items() if k != "anthropic_version"}, "anthropic_version: Field required"),
        (ok, {**VERTEX_BODY, "anthropic_version": "2023-06-01"}, "vertex-2023-10-16"),
        (ok, {**VERTEX_BODY, "stream": True}, "streamRawPredict"),
        (stream_path, VERTEX_BODY, "stream"),
        (ok, {**VERTEX_BODY, "foo": 1}, "foo: Extra inputs are not permitted"),
        (ok, {**VERTEX_BODY, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
    ]
    for path, body, message in cases:
        r = post(base, path, body, "vertex")
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error" and message in r.json()["error"]["message"]
    r = post(base, stream_path, {**VERTEX_BODY, "stream": True}, "vertex")
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    assert [e for e, _ in sse_blocks(r.text)][-1] == "message_stop"
    assert len(recorded(base)) == 1 + 6 + 2 + len(cases) + 1


def test_vertex_faults(mocks):
    _, base = mocks("vertex")
    path, body = request_for("vertex")
    set_fault(base, mode="429", retry_after=3)
    r = post(base, path, body, "vertex")
    assert r.status_code == 429 and r.headers["retry-after"] == "3" and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    set_fault(base, mode="500", count=1)
    r = post(base, path, body, "vertex")
    assert r.status_code == 500 and r.json()["error"]["status"] == "INTERNAL"
    set_fault(base, mode="503", count=1)
    assert post(base, path, body, "vertex").json()["error"]["status"] == "UNAVAILABLE"
    set_fault(base, mode="529", count=1)
    r = post(base, path, body, "vertex")
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    spath, sbody = request_for("vertex", stream=True)
    set_fault(base, mode="stream_error", count=1)
    events = sse_blocks(post(base, spath, sbody, "vertex").text)
    assert events[-1][0] == "error" and json.loads(events[-1][1])["error"]["type"] == "overloaded_error"
    set_fault(base, mode="truncate", count=1)
    names = [e for e, _ in sse_blocks(post(base, spath, sbody, "vertex").text)]
    assert names[0] == "message_start" and "message_stop" not in names
    with pytest.raises(anthropic.APIStatusError):  # the SDK sees the error event
        set_fault(base, mode="stream_error", count=1)
        with vertex_client(base).messages.stream(model=VERTEX_MODEL, max_tokens=5, messages=MSGS, extra_body=VX) as s:
            list(s.text_stream)


# ---- bedrock ---------------------------------------------------------------------------------

def test_bedrock_invoke_json_and_sdk(mocks):
    _, base = mocks("bedrock")
    r = post(base, BEDROCK_PATH + "/invoke", BEDROCK_BODY, "bedrock")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-amzn-bedrock-input-token-count"] == "12" and r.headers["x-amzn-bedrock-output-token-count"] == "5"
    assert r.headers["x-amzn-requestid"]
    msg = r.json()
    assert msg["type"] == "message" and msg["content"] == [{"type": "text", "text": "Hello from primary"}]
    assert msg["model"] == BEDROCK_MODEL and msg["id"].startswith("msg_bdrk_") and msg["stop_reason"] == "end_turn"
    rec = recorded(base)[-1]
    assert rec["api"] == "bedrock" and rec["model"] == BEDROCK_MODEL and rec["stream"] is False
    assert rec["credential"] == {"authorization": "Bearer bedrock-key"} and rec["route"]["operation"] == "invoke"
    # The anthropic SDK's Bedrock client (API key auth; its stream decoder needs botocore, absent here).
    c = anthropic.AnthropicBedrock(api_key="bedrock-key", base_url=base, aws_region="us-east-1", max_retries=0, timeout=5)
    m = c.messages.create(model=BEDROCK_MODEL, max_tokens=10, messages=MSGS, tools=ANTH_TOOLS,
                          extra_body={"anthropic_version": "bedrock-2023-05-31"})
    assert m.stop_reason == "tool_use" and m.content[0].name == "get_weather" and m.content[0].input == {"location": "Paris"}
    assert recorded(base)[-1]["path"] == "/model/us.anthropic.claude-opus-4-6-v1:0/invoke"


def test_bedrock_stream_frames_and_chunking(mocks):
    _, base = mocks("bedrock")
    r, chunks = http_chunks(base, BEDROCK_PATH + "/invoke-with-response-stream", BEDROCK_BODY)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert r.headers["transfer-encoding"] == "chunked"
    data = b"".join(chunks)
    frames, rest = es_decode(data)
    assert rest == b""
    events = bedrock_events(frames)
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "Hello from primary"
    assert events[0]["message"]["model"] == BEDROCK_MODEL
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == 12 and metrics["outputTokenCount"] == 5
    assert set(metrics) == {"inputTokenCount", "outputTokenCount", "invocationLatency", "firstByteLatency"}
    # Chunk boundaries do not follow frames: some frame spans two chunks, some chunk holds 2+ frames.
    ends, pos = set(), 0
    for headers, payload in frames:
        pos += 16 + len(payload) + sum(1 + len(k) + 3 + len(v) for k, v in headers.items())
        ends.add(pos)
    cut, cuts = 0, []
    for c in chunks:
        cut += len(c)
        cuts.append(cut)
    assert any(c not in ends for c in cuts), "some chunk should end mid-frame"
    assert any(sum(1 for e in ends if a < e < b) >= 1 and b in ends for a, b in zip([0] + cuts, cuts)), \
        "some chunk should hold a whole frame plus more"
    # Feeding the decoder chunk by chunk gives the same events.
    buf, seen = b"", []
    for c in chunks:
        got, buf = es_decode(buf + c)
        seen += bedrock_events(got)
    assert seen == events
    # frame_split: aligned (one frame per chunk) and tiny (5-byte chunks).
    set_fault(base, mode="none", frame_split="aligned")
    _, aligned = http_chunks(base, BEDROCK_PATH + "/invoke-with-response-stream", BEDROCK_BODY)
    assert len(aligned) == len(frames) and all(len(es_decode(c)[0]) == 1 for c in aligned)
    set_fault(base, mode="none", frame_split="tiny")
    _, tiny = http_chunks(base, BEDROCK_PATH + "/invoke-with-response-stream", BEDROCK_BODY)
    assert max(len(c) for c in tiny) == 5 and len(bedrock_events(es_decode(b"".join(tiny))[0])) == len(events)


def test_bedrock_stream_tool_use(mocks):
    _, base = mocks("bedrock", frame_split="aligned")
    _, chunks = http_chunks(base, BEDROCK_PATH + "/invoke-with-response-stream", {**BEDROCK_BODY, "tools": ANTH_TOOLS})
    events = bedrock_events(es_decode(b"".join(chunks))[0])
    assert events[1]["content_block"]["type"] == "tool_use" and events[1]["content_block"]["id"].startswith("toolu_")
    args = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
    assert json.loads(args) == {"location": "Paris"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_bedrock_strict_rejections(mocks):
    _, base = mocks("bedrock")
    inv = BEDROCK_PATH + "/invoke"
    cases = [
        ({**BEDROCK_BODY, "model": BEDROCK_MODEL}, "extraneous key [model]"),
        ({**BEDROCK_BODY, "stream": True}, "extraneous key [stream]"),
        ({k: v for k, v in BEDROCK_BODY.items() if k != "anthropic_version"}, "required key [anthropic_version]"),
        ({**BEDROCK_BODY, "anthropic_version": "vertex-2023-10-16"}, "Invalid API version"),
        ({**BEDROCK_BODY, "foo": 1}, "extraneous key [foo]"),
        ({**BEDROCK_BODY, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]},
         "unexpected `tool_use_id`"),
    ]
    for body, message in cases:
        r = post(base, inv, body, "bedrock")
        assert r.status_code == 400, body
        assert r.headers["x-amzn-ErrorType"] == "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        assert message in r.json()["message"]
    for headers in ({"authorization": ""}, {"authorization": "AWS4-HMAC-SHA256 Credential=x"}):
        r = post(base, inv, BEDROCK_BODY, headers=headers)
        assert r.status_code == 403 and r.headers["x-amzn-ErrorType"].startswith("AccessDeniedException:")
        assert "message" in r.json()
    r = post(base, "/model/meta.llama3-70b-instruct-v1%3A0/invoke", BEDROCK_BODY, "bedrock")
    assert r.status_code == 404 and r.headers["x-amzn-ErrorType"].startswith("ResourceNotFoundException:")
    _, only = mocks("bedrock", name="only", models=["anthropic.claude-3-haiku-20240307-v1:0"], keys=["k1"])
    assert post(only, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke", BEDROCK_BODY,
                headers={"authorization": "Bearer k1"}).status_code == 200
    assert post(only, inv, BEDROCK_BODY, headers={"authorization": "Bearer k1"}).status_code == 404
    assert post(only, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke", BEDROCK_BODY,
                headers={"authorization": "Bearer k2"}).status_code == 403
    assert recorded(only)[0]["model"] == "anthropic.claude-3-haiku-20240307-v1:0"
    assert len(recorded(base)) == len(cases) + 3


def test_bedrock_faults(mocks):
    _, base = mocks("bedrock")
    inv, stream = BEDROCK_PATH + "/invoke", BEDROCK_PATH + "/invoke-with-response-stream"
    for mode, status, exc in (("429", 429, "ThrottlingException"), ("500", 500, "InternalServerException"),
                              ("503", 503, "ServiceUnavailableException"), ("529", 503, "ServiceUnavailableException")):
        set_fault(base, mode=mode, count=1, retry_after=4)
        r = post(base, inv, BEDROCK_BODY, "bedrock")
        assert r.status_code == status and r.headers["x-amzn-ErrorType"].split(":")[0] == exc, mode
        assert list(r.json()) == ["message"]
        assert (r.headers.get("retry-after") == "4") == (mode == "429")
    # stream_error: an exception frame after a few events.
    set_fault(base, mode="stream_error", count=1)
    _, chunks = http_chunks(base, stream, BEDROCK_BODY)
    frames, rest = es_decode(b"".join(chunks))
    assert rest == b""
    headers, payload = frames[-1]
    assert headers[":message-type"] == "exception" and headers[":exception-type"] == "throttlingException"
    assert headers[":content-type"] == "application/json" and "message" in json.loads(payload)
    assert [e["type"] for e in bedrock_events(frames[:-1])][0] == "message_start"
    set_fault(base, mode="stream_error", count=1, exception="modelStreamErrorException")
    _, chunks = http_chunks(base, stream, BEDROCK_BODY)
    assert es_decode(b"".join(chunks))[0][-1][0][":exception-type"] == "modelStreamErrorException"
    # truncate: the stream stops in the middle of a frame, without message_stop.
    set_fault(base, mode="truncate", count=1)
    _, chunks = http_chunks(base, stream, BEDROCK_BODY)
    frames, rest = es_decode(b"".join(chunks))
    assert rest and len(frames) == 3 and "message_stop" not in [e["type"] for e in bedrock_events(frames)]
    # garbage: the decoder must see a CRC failure.
    set_fault(base, mode="garbage", count=1)
    _, chunks = http_chunks(base, stream, BEDROCK_BODY)
    with pytest.raises(AssertionError, match="CRC"):
        es_decode(b"".join(chunks))


# ---- openai ----------------------------------------------------------------------------------

def oa_client(base, key="sk-test"):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=5)


def test_openai_sdk_plain_stream_and_tools(mocks):
    _, base = mocks("openai")
    c = oa_client(base)
    r = c.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert r.choices[0].message.content == "Hello from primary" and r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o" and r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 5, 17)
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello from primary"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 17
    ask = [{"role": "user", "content": "weather?"}]
    t = c.chat.completions.create(model="gpt-4o", messages=ask, tools=OA_TOOLS)
    (call,) = t.choices[0].message.tool_calls
    assert t.choices[0].finish_reason == "tool_calls" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"location": "Paris"}
    with c.chat.completions.stream(model="gpt-4o", messages=ask, tools=OA_TOOLS) as s:
        final = s.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"location": "Paris"}
    plain = c.chat.completions.create(model="gpt-4o", messages=ask, tools=OA_TOOLS, tool_choice="none")
    assert plain.choices[0].message.content == "Hello from primary"
    forced = c.chat.completions.create(model="gpt-4o", messages=ask, tools=OA_TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "other"}})
    assert forced.choices[0].message.tool_calls[0].function.name == "other"
    turn = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                  {"role": "tool", "tool_call_id": call.id, "content": "15 degrees"}]
    answer = c.chat.completions.create(model="gpt-4o", messages=turn, tools=OA_TOOLS)
    assert answer.choices[0].message.content == "Tool said: 15 degrees"
    recs = recorded(base)
    assert all(r["api"] == "openai" and r["credential"] == {"authorization": "Bearer sk-test"} for r in recs)
    assert recs[1]["stream"] is True and recs[0]["model"] == "gpt-4o"


def test_openai_raw_shapes(mocks):
    _, base = mocks("openai")
    body = post(base, "/v1/chat/completions", OA_BODY, "openai").json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello from primary", "refusal": None},
                                "logprobs": None, "finish_reason": "stop"}]
    r = post(base, "/v1/chat/completions", {**OA_BODY, "stream": True}, "openai")
    assert r.headers["content-type"].startswith("text/event-stream") and r.headers["transfer-encoding"] == "chunked"
    chunks, done = openai_stream(r.text)
    assert done and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hello", " from", " primary"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-1]
    chunks, done = openai_stream(post(base, "/v1/chat/completions", {**OA_BODY, "stream": True,
                                                                    "stream_options": {"include_usage": True}}, "openai").text)
    assert done and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    chunks, _ = openai_stream(post(base, "/v1/chat/completions", {**OA_BODY, "stream": True, "tools": OA_TOOLS}, "openai").text)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"location": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


OA_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize("patch, message, param", [
    ({"foo": 1}, "Unrecognized request argument supplied: foo", None),
    ({"model": None}, "you must provide a model parameter", None),
    ({"messages": []}, "empty array", "messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "Invalid value: 'bot'", "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "Missing required parameter", "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]},
     "Invalid value: 'video'", "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "Missing required parameter", "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_1", "content": "r"}]},
     "must be a response to a preceeding message with 'tool_calls'", "messages.[1].role"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [OA_CALL]},
                   {"role": "tool", "tool_call_id": "call_2", "content": "r"}]}, "preceeding message", "messages.[2].role"),
    ({"messages": [{"role": "assistant", "tool_calls": [{**OA_CALL, "function": {"name": "f", "arguments": {}}}]}]},
     "expected a string", "messages[0].tool_calls[0].function.arguments"),
    ({"temperature": 2.5}, "decimal above maximum value", "temperature"),
    ({"temperature": -1}, "decimal below minimum value", "temperature"),
    ({"stream_options": {"include_usage": True}}, "only allowed when 'stream' is enabled", "stream_options"),
])
def test_openai_strict_rejections(mocks, patch, message, param):
    _, base = mocks("openai")
    body = {**OA_BODY, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    r = post(base, "/v1/chat/completions", body, "openai")
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert message in err["message"] and err["param"] == param
    assert recorded(base)[0]["body"] == body


def test_openai_auth_and_valid_tool_turn(mocks):
    _, base = mocks("openai")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "sk-test"}):
        r = post(base, "/v1/chat/completions", OA_BODY, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
    with pytest.raises(openai.AuthenticationError):
        oa_client(base, key="nope").chat.completions.create(model="gpt-4o", messages=MSGS)
    assert [r["credential"] for r in recorded(base)] == [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "sk-test"},
                                                        {"authorization": "Bearer nope"}]
    turn = [{"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
            {"role": "assistant", "content": None, "tool_calls": [OA_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]}]
    r = post(base, "/v1/chat/completions", {**OA_BODY, "messages": turn, "temperature": 2}, "openai")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Tool said: sunny"


def test_openai_faults(mocks):
    _, base = mocks("openai")
    path, body = request_for("openai")
    spath, sbody = request_for("openai", stream=True)
    set_fault(base, mode="429", count=1, retry_after=5)
    r = post(base, path, body, "openai")
    assert r.status_code == 429 and r.headers["retry-after"] == "5" and r.json()["error"]["code"] == "rate_limit_exceeded"
    for mode, status in (("500", 500), ("503", 503), ("529", 503)):
        set_fault(base, mode=mode, count=1)
        r = post(base, path, body, "openai")
        assert r.status_code == status and r.json()["error"]["type"] == "server_error", mode
    set_fault(base, mode="stream_error", count=1)
    r = post(base, spath, sbody, "openai")
    blocks = [d for _, d in sse_blocks(r.text)]
    assert "[DONE]" not in blocks and json.loads(blocks[-1])["error"]["message"] == "The server is overloaded"
    assert json.loads(blocks[0])["choices"][0]["delta"]["role"] == "assistant"
    set_fault(base, mode="stream_error", count=1)
    with pytest.raises(openai.APIError):
        list(oa_client(base).chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
    set_fault(base, mode="truncate", count=1)
    chunks, done = openai_stream(post(base, spath, sbody, "openai").text)
    assert not done and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    set_fault(base, mode="stream_error", count=1)
    assert post(base, path, body, "openai").status_code == 503
    set_fault(base, mode="reset", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        post(base, path, body, "openai")
    set_fault(base, mode="garbage", count=1)
    with pytest.raises(ValueError):
        post(base, path, body, "openai").json()


# ---- azure -----------------------------------------------------------------------------------

def az_client(base, **kw):
    return openai.AzureOpenAI(azure_endpoint=base, api_key=kw.pop("api_key", "az-key"), api_version="2024-10-21",
                              max_retries=0, timeout=5, **kw)


def test_azure_sdk_plain_stream_and_tools(mocks):
    _, base = mocks("azure", deployments={"gpt-4o": "gpt-4o-2024-11-20", "mini": "gpt-4o-mini-2024-07-18"})
    c = az_client(base)
    r = c.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert r.choices[0].message.content == "Hello from primary" and r.model == "gpt-4o-2024-11-20"
    chunks = list(c.chat.completions.create(model="mini", messages=MSGS, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello from primary"
    assert {ch.model for ch in chunks} == {"gpt-4o-mini-2024-07-18"}
    t = c.chat.completions.create(model="gpt-4o", messages=MSGS, tools=OA_TOOLS)
    assert t.choices[0].message.tool_calls[0].function.name == "get_weather"
    recs = recorded(base)
    assert recs[0]["path"] == AZURE_PATH and recs[0]["query"] == {"api-version": "2024-10-21"}
    assert recs[0]["route"] == {"deployment": "gpt-4o", "api_version": "2024-10-21"}
    assert all(r["api"] == "azure" and r["credential"] == {"api-key": "az-key"} for r in recs)
    # `model` in the body is optional on Azure.
    assert post(base, AZURE_PATH, {"messages": MSGS}, "azure").json()["model"] == "gpt-4o-2024-11-20"


def test_azure_strict_rejections(mocks):
    _, base = mocks("azure")
    r = post(base, "/openai/deployments/gpt-4o/chat/completions", OA_BODY, "azure")
    assert r.status_code == 404 and r.json() == {"error": {"code": "404", "message": "Resource not found"}}
    for version in ("2024-10", "latest", "2019-01-01"):
        r = post(base, f"/openai/deployments/gpt-4o/chat/completions?api-version={version}", OA_BODY, "azure")
        assert r.status_code == 400 and r.json()["error"]["code"] == "BadRequest", version
    preview = "/openai/deployments/gpt-4o/chat/completions?api-version=2025-04-01-preview"
    assert post(base, preview, OA_BODY, "azure").status_code == 200
    r = post(base, AZURE_PATH.replace("gpt-4o", "gpt-5"), OA_BODY, "azure")
    assert r.status_code == 404 and r.json()["error"]["code"] == "DeploymentNotFound"
    for headers in ({}, {"authorization": "Bearer entra-token"}, {"api-key": ""}):
        r = post(base, AZURE_PATH, OA_BODY, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "401", headers
    with pytest.raises(openai.AuthenticationError):
        az_client(base, api_key=None, azure_ad_token="entra").chat.completions.create(model="gpt-4o", messages=MSGS)
    r = post(base, AZURE_PATH, {**OA_BODY, "foo": 1}, "azure")
    assert r.status_code == 400 and r.json()["error"]["message"] == "Unrecognized request argument supplied: foo"
    assert post(base, AZURE_PATH, {**OA_BODY, "data_sources": []}, "azure").status_code == 200
    _, loose = mocks("azure", name="loose", strict=False)
    assert post(loose, AZURE_PATH, {**OA_BODY, "foo": 1}, headers={"authorization": "Bearer entra"}).status_code == 200
    _, keyed = mocks("azure", name="keyed", keys=["good"])
    assert post(keyed, AZURE_PATH, OA_BODY, headers={"api-key": "good"}).status_code == 200
    assert post(keyed, AZURE_PATH, OA_BODY, headers={"api-key": "bad"}).status_code == 401


def test_azure_faults(mocks):
    _, base = mocks("azure")
    set_fault(base, mode="429", count=1, retry_after=6)
    r = post(base, AZURE_PATH, OA_BODY, "azure")
    assert r.status_code == 429 and r.headers["retry-after"] == "6"
    assert r.json()["error"]["code"] == "429" and "retry after 6 seconds" in r.json()["error"]["message"]
    set_fault(base, mode="529", count=1)
    assert post(base, AZURE_PATH, OA_BODY, "azure").status_code == 503
    set_fault(base, mode="stream_error", count=1)
    blocks = [d for _, d in sse_blocks(post(base, AZURE_PATH, {**OA_BODY, "stream": True}, "azure").text)]
    assert json.loads(blocks[-1])["error"]["type"] == "server_error" and "[DONE]" not in blocks


# ---- common ----------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["anthropic", "vertex", "bedrock", "openai", "azure"])
def test_chunk_delay_streams_unbuffered_and_slow_first_byte(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    set_fault(base, mode="none", chunk_delay_ms=60)
    t0 = time.monotonic()
    r = post(base, path, body, api, stream=True)
    stamps = [time.monotonic() - t0 for _ in r.raw.read_chunked(decode_content=False)]
    assert len(stamps) >= 4
    assert stamps[0] < 0.2 and stamps[-1] - stamps[0] >= 0.06 * (len(stamps) - 1) * 0.8, stamps
    set_fault(base, mode="slow_first_byte", delay_ms=150, count=1)
    path, body = request_for(api)
    t0 = time.monotonic()
    assert post(base, path, body, api).status_code == 200
    assert time.monotonic() - t0 >= 0.14
    set_fault(base, mode="hang", hang_ms=100, count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        post(base, path, body, api)


def test_fault_params_and_options_are_validated(mocks):
    _, base = mocks("bedrock")
    for bad in ({"mode": "stream_error", "exception": "nope"}, {"mode": "none", "frame_split": "odd"}):
        assert requests.post(f"{base}/_control/fault", json=bad, timeout=5).status_code == 400
    assert requests.get(f"{base}/_control/info", timeout=5).json()["api"] == "bedrock"
    with pytest.raises(ValueError):
        make_server("x", api="gemini")
    with pytest.raises(TypeError):
        make_server("x", api="openai", project="p")
    with pytest.raises(ValueError):
        make_server("x", api="bedrock", frame_split="odd")


def test_cli_api_option():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mock_provider.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, script, "--port", str(port), "--name", "cli", "--api", "vertex",
                             "--option", "project=cli-proj", "--option", 'models=["claude-x"]', "--quiet"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"mock provider cli listening on http://127.0.0.1:{port}"
        base = f"http://127.0.0.1:{port}"
        info = requests.get(f"{base}/_control/info", timeout=5).json()
        assert info["api"] == "vertex" and info["options"]["project"] == "cli-proj"
        path = "/v1/projects/cli-proj/locations/us-east5/publishers/anthropic/models/claude-x:rawPredict"
        assert post(base, path, VERTEX_BODY, "vertex").json()["content"][0]["text"] == "Hello from cli"
    finally:
        proc.terminate()
        proc.wait(5)


# ---- stream fault modes (slow_first_token, stall, late_end, no_done, error_first, html_error,
# truncate_after), every API in its own wire format -------------------------------------------

APIS = ["anthropic", "vertex", "bedrock", "openai", "azure"]
OAI = ("openai", "azure")


def timed_stream(base, path, body, api):
    """The streamed answer as (response, [(seconds, HTTP chunk)], seconds until the body ended,
    the error that ended it or None when it ended cleanly with the chunked terminator)."""
    t0 = time.monotonic()
    r = post(base, path, body, api, stream=True)
    chunks, err = [], None
    try:
        for c in r.raw.read_chunked(decode_content=False):
            chunks.append((time.monotonic() - t0, c))
    except Exception as e:  # noqa: BLE001 (urllib3 ProtocolError: the body was not terminated)
        err = e
    total = time.monotonic() - t0
    r.close()
    return r, chunks, total, err


def stream_items(api, chunks):
    """[(seconds, name, obj)] of the events of a stream, each timed by the chunk completing it, and
    the bytes left over (an incomplete event). Names: the SSE event (anthropic, vertex); the event
    type or "exception:<type>" (bedrock); "chunk", "error" or "[DONE]" (openai, azure)."""
    items, buf = [], b""
    for t, c in chunks:
        buf += c
        if api == "bedrock":
            frames, buf = es_decode(buf)
            for headers, payload in frames:
                if headers[":message-type"] == "exception":
                    items.append((t, "exception:" + headers[":exception-type"], json.loads(payload)))
                else:
                    (ev,) = bedrock_events([(headers, payload)])
                    items.append((t, ev["type"], ev))
            continue
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            ((ev, data),) = sse_blocks(block.decode() + "\n\n")
            if api in OAI:
                if data == "[DONE]":
                    items.append((t, "[DONE]", None))
                else:
                    obj = json.loads(data)
                    items.append((t, "error" if "error" in obj else "chunk", obj))
            else:
                items.append((t, ev, json.loads(data)))
    return items, buf


def is_delta(api, name, obj):
    """A content delta: content_block_delta, or an OpenAI chunk between the role chunk and the finish."""
    if api not in OAI:
        return name == "content_block_delta"
    if name != "chunk" or not obj["choices"]:
        return False
    choice = obj["choices"][0]
    return choice["finish_reason"] is None and "role" not in choice["delta"]


def delta_piece(api, obj):
    if api not in OAI:
        d = obj["delta"]
        return d.get("text", d.get("partial_json"))
    d = obj["choices"][0]["delta"]
    if "tool_calls" in d:
        return d["tool_calls"][0]["function"]["arguments"]
    return d["content"]


def is_terminal(api, name, obj):
    return name == "[DONE]" if api in OAI else name == "message_stop"


def tools_body(api, body):
    return {**body, "tools": OA_TOOLS if api in OAI else ANTH_TOOLS}


def fault_reverted(base):
    return requests.get(f"{base}/_control/fault", timeout=5).json() == {"mode": "none"}


@pytest.mark.parametrize("api", APIS)
def test_slow_first_token(mocks, api):
    server, base = mocks(api)
    path, body = request_for(api, stream=True)
    set_fault(base, mode="slow_first_token", delay_ms=300, count=1)
    r, chunks, total, err = timed_stream(base, path, body, api)
    assert r.status_code == 200 and err is None and fault_reverted(base)
    items, rest = stream_items(api, chunks)
    assert rest == b""
    first = next(i for i, (_, n, o) in enumerate(items) if is_delta(api, n, o))
    pre = items[:first]
    if api in OAI:
        assert [n for _, n, _ in pre] == ["chunk"]
        assert pre[0][2]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    else:
        assert [n for _, n, _ in pre] == ["message_start", "content_block_start", "ping"]
    assert max(t for t, _, _ in pre) < 0.5, pre
    assert items[first][0] >= 0.29 and items[first][0] - max(t for t, _, _ in pre) >= 0.25, items[first]
    assert "".join(delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)) == "Hello from primary"
    assert is_terminal(api, *items[-1][1:]) and total < 2
    if api == "bedrock":
        assert items[-1][2]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 5
    # The next request (count used up) is not delayed.
    _, chunks, total, err = timed_stream(base, path, body, api)
    assert err is None and chunks[-1][0] < 0.2
    # Non-stream: the delay, then the normal JSON answer.
    npath, nbody = request_for(api)
    set_fault(base, mode="slow_first_token", delay_ms=200, count=1)
    t0 = time.monotonic()
    r = post(base, npath, nbody, api)
    assert r.status_code == 200 and 0.19 <= time.monotonic() - t0 < 2
    assert "Hello from primary" in r.text and fault_reverted(base)
    # A client leaving during the wait ends the handler at once (not after delay_ms).
    set_fault(base, mode="slow_first_token", delay_ms=5000, count=1)
    host, port = server.server_address[:2]
    before = set(server._conns)
    s = socket.create_connection((host, port), timeout=5)
    raw = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS[api].items())
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n{head}\r\n".encode() + raw)
    time.sleep(0.2)  # the whole preamble comes (the handler then waits), then the client leaves
    assert s.recv(1 << 16).startswith(b"HTTP/1.1 200 ")
    (mine,) = set(server._conns) - before  # the server's side of this connection, open while served
    s.close()
    deadline = time.monotonic() + 1.5
    while mine in server._conns and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mine not in server._conns
    assert post(base, path, body, api).status_code == 200


@pytest.mark.parametrize("api", APIS)
def test_stall(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    set_fault(base, mode="stall", after_deltas=2, hang_ms=300, count=1)
    r, chunks, total, err = timed_stream(base, path, body, api)
    assert r.status_code == 200 and err is not None  # closed without the chunked terminator
    assert fault_reverted(base)
    items, rest = stream_items(api, chunks)
    assert rest == b""
    assert [delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)] == ["Hello", " from"]
    assert is_delta(api, *items[-1][1:]), "nothing after the 2nd delta"
    assert chunks[-1][0] < 0.5 and total - chunks[-1][0] >= 0.25 and 0.29 <= total < 3, (chunks[-1][0], total)
    # Default after_deltas (3): the longer answer, cut after " primary"; a tool answer: any delta kind.
    set_fault(base, mode="stall", hang_ms=200, count=2)
    for req, want in ((body, ["Hello", " from", " primary"]), (tools_body(api, body), None)):
        _, chunks, total, err = timed_stream(base, path, req, api)
        items, _ = stream_items(api, chunks)
        deltas = [delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)]
        assert err is not None and total >= 0.19 and len(deltas) == 3 and is_delta(api, *items[-1][1:])
        assert not any(is_terminal(api, n, o) for _, n, o in items)
        if want:
            assert deltas == want
        elif api in OAI:
            assert items[1][2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
        else:
            assert items[1][2]["content_block"]["type"] == "tool_use"
    assert fault_reverted(base)
    # Non-stream: like hang.
    npath, nbody = request_for(api)
    set_fault(base, mode="stall", hang_ms=200, count=1)
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError):
        post(base, npath, nbody, api)
    assert 0.19 <= time.monotonic() - t0 < 3


@pytest.mark.parametrize("api", APIS)
def test_late_end(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    set_fault(base, mode="late_end", delay_ms=300, count=1)
    r, chunks, total, err = timed_stream(base, path, body, api)
    assert r.status_code == 200 and err is None and fault_reverted(base)
    items, rest = stream_items(api, chunks)
    assert rest == b"" and is_terminal(api, *items[-1][1:])
    assert "".join(delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)) == "Hello from primary"
    if api == "bedrock":
        assert set(items[-1][2]["amazon-bedrock-invocationMetrics"]) >= {"inputTokenCount", "outputTokenCount"}
    assert items[-1][0] < 0.5 and total - items[-1][0] >= 0.25 and total >= 0.29, (items[-1][0], total)
    # Non-stream: the whole JSON at once, in a chunked body that ends delay_ms later.
    npath, nbody = request_for(api)
    set_fault(base, mode="late_end", delay_ms=200, count=1)
    t0 = time.monotonic()
    r = post(base, npath, nbody, api, stream=True)
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    assert r.headers["content-type"] == "application/json" and "content-length" not in r.headers
    (first, *more) = [(time.monotonic() - t0, c) for c in r.raw.read_chunked(decode_content=False)]
    ended = time.monotonic() - t0
    assert more == [] and first[0] < 0.5 and ended - first[0] >= 0.15 and ended >= 0.19, (first[0], ended)
    doc = json.loads(first[1])
    text = doc["choices"][0]["message"]["content"] if api in OAI else doc["content"][0]["text"]
    assert text == "Hello from primary" and fault_reverted(base)


@pytest.mark.parametrize("api", APIS)
def test_no_done(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    bodies = [body, {**body, "stream_options": {"include_usage": True}}] if api in OAI else [body]
    for req in bodies:
        set_fault(base, mode="no_done", count=1)
        r, chunks, _, err = timed_stream(base, path, req, api)
        assert r.status_code == 200 and err is None and fault_reverted(base)
        items, rest = stream_items(api, chunks)
        assert rest == b""
        assert "".join(delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)) == "Hello from primary"
        names = [n for _, n, _ in items]
        if api in OAI:
            assert "[DONE]" not in names and set(names) == {"chunk"}
            objs = [o for _, _, o in items]
            if "stream_options" in req:
                assert objs[-1]["choices"] == [] and objs[-1]["usage"]["total_tokens"] == 17
                objs = objs[:-1]
            assert objs[-1]["choices"][0]["finish_reason"] == "stop"
        else:  # like none
            assert names[0] == "message_start" and names[-1] == "message_stop"
    npath, nbody = request_for(api)
    set_fault(base, mode="no_done", count=1)
    r = post(base, npath, nbody, api)
    assert r.status_code == 200 and "Hello from primary" in r.text and fault_reverted(base)


@pytest.mark.parametrize("api", APIS)
def test_error_first(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    set_fault(base, mode="error_first", count=1)
    r, chunks, _, err = timed_stream(base, path, body, api)
    assert r.status_code == 200 and err is None and fault_reverted(base)
    items, rest = stream_items(api, chunks)
    assert rest == b"" and len(items) == 1
    (_, name, obj), = items
    if api in OAI:
        assert name == "error" and obj == {"error": {"message": "The server is overloaded", "type": "server_error",
                                                     "param": None, "code": None}}
    elif api == "bedrock":
        assert name == "exception:throttlingException" and "message" in obj
        set_fault(base, mode="error_first", count=1, exception="modelStreamErrorException")
        items, _ = stream_items(api, timed_stream(base, path, body, api)[1])
        assert [n for _, n, _ in items] == ["exception:modelStreamErrorException"]
        assert items[0][2]["originalStatusCode"] == 500
    else:
        assert name == "error" and obj == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    npath, nbody = request_for(api)
    set_fault(base, mode="error_first", count=1)
    r = post(base, npath, nbody, api)
    assert r.status_code == (529 if api in ("anthropic", "vertex") else 503) and fault_reverted(base)


def test_error_first_sdks(mocks):
    _, base = mocks("anthropic")
    set_fault(base, mode="error_first", count=1)
    with pytest.raises(anthropic.APIStatusError):
        with client(base).messages.stream(model=MODEL, max_tokens=10, messages=MSGS) as s:
            list(s.text_stream)
    _, obase = mocks("openai", name="oa")
    set_fault(obase, mode="error_first", count=1)
    with pytest.raises(openai.APIError):
        list(oa_client(obase).chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))


@pytest.mark.parametrize("api", APIS)
def test_html_error(mocks, api):
    _, base = mocks(api)
    for stream in (True, False):
        path, body = request_for(api, stream=stream)
        set_fault(base, mode="html_error", count=1)
        r = post(base, path, body, api)
        assert r.status_code == 502 and r.headers["content-type"] == "text/html"
        assert r.text.startswith("<html>") and "<title>502 Bad Gateway</title>" in r.text
        assert int(r.headers["content-length"]) == len(r.content) and fault_reverted(base)
    set_fault(base, mode="html_error", status=504, count=1)
    r = post(base, path, body, api)
    assert r.status_code == 504 and "504 Gateway Timeout" in r.text
    assert post(base, path, body, api).status_code == 200
    for bad in (200, 600, 502.5, "502", None, True):
        assert requests.post(f"{base}/_control/fault", json={"mode": "html_error", "status": bad},
                             timeout=5).status_code == 400, bad
    for bad in (-1, 1.5, None):
        assert requests.post(f"{base}/_control/fault", json={"mode": "stall", "after_deltas": bad},
                             timeout=5).status_code == 400, bad


@pytest.mark.parametrize("api", APIS)
def test_truncate_after(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    for params, want in (({}, ["Hello", " from"]), ({"after_deltas": 4}, ["Hello", " from", " primary", ","]),
                         ({"after_deltas": 0}, [])):
        set_fault(base, mode="truncate_after", count=1, **params)
        r, chunks, _, err = timed_stream(base, path, body, api)
        assert r.status_code == 200 and err is None, params  # a clean end (chunked terminator)
        assert fault_reverted(base)
        items, rest = stream_items(api, chunks)
        assert rest == b"", "whole frames/events only"
        assert [delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)] == want
        assert not any(is_terminal(api, n, o) for _, n, o in items)
        if want:
            assert is_delta(api, *items[-1][1:])
        else:
            assert [n for _, n, _ in items] == (["chunk"] if api in OAI else ["message_start", "content_block_start", "ping"])
    # A tool answer: any delta kind counts.
    set_fault(base, mode="truncate_after", count=1, after_deltas=3)
    items, rest = stream_items(api, timed_stream(base, path, tools_body(api, body), api)[1])
    assert rest == b"" and sum(1 for _, n, o in items if is_delta(api, n, o)) == 3
    # Non-stream: like truncate (half the JSON, then the connection closes).
    npath, nbody = request_for(api)
    set_fault(base, mode="truncate_after", count=1)
    with pytest.raises(requests.exceptions.RequestException):
        post(base, npath, nbody, api)
    assert fault_reverted(base)


def test_new_stream_modes_honor_frame_split_and_chunk_delay(mocks):
    _, base = mocks("bedrock")
    path, body = request_for("bedrock", stream=True)
    for split in ("aligned", "tiny"):
        set_fault(base, mode="truncate_after", frame_split=split, count=1)
        _, chunks, _, err = timed_stream(base, path, body, "bedrock")
        sizes = [len(c) for _, c in chunks]
        items, rest = stream_items("bedrock", chunks)
        assert err is None and rest == b"" and len(items) == 5
        assert len(sizes) == 5 if split == "aligned" else max(sizes) == 5
    set_fault(base, mode="late_end", delay_ms=0, chunk_delay_ms=40, count=1)
    _, chunks, total, err = timed_stream(base, path, body, "bedrock")
    assert err is None and chunks[-1][0] - chunks[0][0] >= 0.04 * (len(chunks) - 1) * 0.8


# ---- the answer setting: a configured text, continuation requests, context overflow ----------

TEXT = "The quick brown fox jumps over the lazy dog."
TEXT_PIECES = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]
ANTH_PREFILL_ERROR = {"type": "error", "error": {
    "type": "invalid_request_error",
    "message": "This model does not support assistant message prefill. The conversation must end with a user message."}}
ANTH_OVERFLOW = {"type": "error", "error": {"type": "invalid_request_error",
                                            "message": "prompt is too long: 215000 tokens > 200000 maximum"}}
OAI_OVERFLOW = {"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages "
                                     "resulted in 215000 tokens. Please reduce the length of the messages.",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
ANSWER_DEFAULTS = {"text": None, "continuation": "exact", "reject_prefill": False, "max_prompt_chars": None}


def set_answer(base, **fields):
    r = requests.post(f"{base}/_control/answer", json=fields, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def get_answer(base):
    return requests.get(f"{base}/_control/answer", timeout=5).json()


def with_messages(api, msgs, stream=False, **extra):
    """(path, body) of a valid request to the `api` mock with these messages (a stream asks the
    OpenAI-shaped APIs for the usage chunk)."""
    path, body = request_for(api, stream=stream)
    if stream and api in OAI:
        extra = {"stream_options": {"include_usage": True}, **extra}
    return path, {**body, "messages": msgs, **extra}


def json_answer(api, doc):
    """(text, output tokens) of a JSON answer."""
    if api in OAI:
        assert doc["usage"]["total_tokens"] == 12 + doc["usage"]["completion_tokens"]
        return doc["choices"][0]["message"]["content"], doc["usage"]["completion_tokens"]
    assert doc["usage"]["input_tokens"] == 12
    return doc["content"][0]["text"], doc["usage"]["output_tokens"]


def stream_answer(base, path, body, api):
    """(content delta pieces, output tokens) of a complete streamed answer."""
    r, chunks, _, err = timed_stream(base, path, body, api)
    assert r.status_code == 200 and err is None
    items, rest = stream_items(api, chunks)
    assert rest == b"" and is_terminal(api, *items[-1][1:])
    pieces = [delta_piece(api, o) for _, n, o in items if is_delta(api, n, o)]
    if api in OAI:
        (usage,) = [o["usage"] for _, n, o in items if n == "chunk" and o.get("usage")]
        assert usage["prompt_tokens"] == 12 and usage["total_tokens"] == 12 + usage["completion_tokens"]
        return pieces, usage["completion_tokens"]
    (delta,) = [o for _, n, o in items if n == "message_delta"]
    tokens = delta["usage"]["output_tokens"]
    if api == "bedrock":
        metrics = items[-1][2]["amazon-bedrock-invocationMetrics"]
        assert metrics["inputTokenCount"] == 12 and metrics["outputTokenCount"] == tokens
    return pieces, tokens


def ask(api, base, msgs, stream=False, **extra):
    """The answer to these messages: (pieces or text, output tokens, continuation recorded)."""
    path, body = with_messages(api, msgs, stream, **extra)
    if stream:
        got = stream_answer(base, path, body, api)
    else:
        r = post(base, path, body, api)
        assert r.status_code == 200, r.text
        got = json_answer(api, r.json())
        if api == "bedrock":
            assert r.headers["x-amzn-bedrock-output-token-count"] == str(got[1])
    return (*got, recorded(base)[-1]["continuation"])


def prefill(said, blocks=False):
    content = [{"type": "text", "text": said}] if blocks else said
    return [{"role": "user", "content": "Tell me about the fox."}, {"role": "assistant", "content": content}]


def instruction(quoted):
    return [{"role": "user", "content": "Tell me about the fox."},
            {"role": "user", "content": f"Your answer was cut off. You had written: <<{quoted}>>. Continue it."}]


@pytest.mark.parametrize("api", APIS)
def test_answer_text(mocks, api):
    _, base = mocks(api)
    assert get_answer(base) == ANSWER_DEFAULTS
    assert set_answer(base, text=TEXT) == {**ANSWER_DEFAULTS, "text": TEXT}
    assert ask(api, base, MSGS) == (TEXT, 9, None)
    assert ask(api, base, MSGS, stream=True) == (TEXT_PIECES, 9, None)
    # Tool answers stay as they were.
    path, body = request_for(api)
    doc = post(base, path, tools_body(api, body), api).json()
    if api in OAI:
        assert doc["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert doc["usage"]["completion_tokens"] == 5
    else:
        assert doc["content"][0]["type"] == "tool_use" and doc["usage"]["output_tokens"] == 5
    # A server option gives the same; reset goes back to the server's options.
    _, opt = mocks(api, name="opt", answer_text="Just  two words ")
    assert ask(api, opt, MSGS, stream=True) == (["Just", "  two", " words "], 3, None)
    set_answer(opt, text="Other")
    requests.post(f"{opt}/_control/reset", timeout=5)
    assert get_answer(opt)["text"] == "Just  two words "
    requests.post(f"{base}/_control/reset", timeout=5)
    assert get_answer(base) == ANSWER_DEFAULTS
    assert ask(api, base, MSGS) == ("Hello from primary", 5, None)


def test_answer_control_is_validated(mocks):
    server, base = mocks("anthropic")
    assert set_answer(base, text=TEXT, max_prompt_chars=100) == {**ANSWER_DEFAULTS, "text": TEXT, "max_prompt_chars": 100}
    # Fields not given keep their value.
    assert set_answer(base, continuation="start_over") == {**ANSWER_DEFAULTS, "text": TEXT, "max_prompt_chars": 100,
                                                           "continuation": "start_over"}
    before = get_answer(base)
    for bad in ({"text": 5}, {"text": ""}, {"text": " \n"}, {"continuation": "resume"}, {"reject_prefill": "yes"},
                {"reject_prefill": None}, {"max_prompt_chars": -1}, {"max_prompt_chars": 1.5},
                {"max_prompt_chars": True}, {"colour": "red"}, [], None):
        r = requests.post(f"{base}/_control/answer", json=bad, timeout=5)
        assert r.status_code == 400 and r.json()["ok"] is False and r.json()["error"], bad
    assert get_answer(base) == before
    assert set_answer(base, text=None, max_prompt_chars=None)["text"] is None
    server.set_answer({"reject_prefill": True})
    assert get_answer(base)["reject_prefill"] is True
    with pytest.raises(ValueError):
        server.set_answer({"continuation": 1})
    requests.post(f"{base}/_control/reset", timeout=5)
    assert get_answer(base) == ANSWER_DEFAULTS
    # Server options.
    _, opt = mocks("openai", name="opt", answer_text="A b", continuation="start_over", reject_prefill=True,
                   max_prompt_chars=10)
    want = {"text": "A b", "continuation": "start_over", "reject_prefill": True, "max_prompt_chars": 10}
    assert get_answer(opt) == want
    assert requests.get(f"{opt}/_control/info", timeout=5).json()["options"]["answer_text"] == "A b"
    for bad in ({"answer_text": ""}, {"continuation": "again"}, {"reject_prefill": 1}, {"max_prompt_chars": "10"}):
        with pytest.raises(ValueError):
            make_server("x", **bad)


def test_cli_answer_options():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mock_provider.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, script, "--port", str(port), "--name", "cli", "--quiet",
                             "--option", "answer_text=Answer from the CLI", "--option", "reject_prefill=true",
                             "--option", "max_prompt_chars=40"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("mock provider cli listening")
        base = f"http://127.0.0.1:{port}"
        assert get_answer(base) == {**ANSWER_DEFAULTS, "text": "Answer from the CLI", "reject_prefill": True,
                                    "max_prompt_chars": 40}
        assert post(base, "/v1/messages", ANTH_BODY).json()["content"][0]["text"] == "Answer from the CLI"
        assert post(base, "/v1/messages", {**ANTH_BODY, "messages": prefill("Answer")}).json() == ANTH_PREFILL_ERROR
        assert post(base, "/v1/messages", {**ANTH_BODY, "system": "x" * 40}).json() == ANTH_OVERFLOW
    finally:
        proc.terminate()
        proc.wait(5)


def words(text):
    """A JSON answer's text cut at word boundaries, as the mock streams it."""
    return re.findall(r"\s*\S+", text)


@pytest.mark.parametrize("api", APIS)
def test_continuation_requests(mocks, api):
    _, base = mocks(api, answer_text=TEXT)
    rest = [" fox", " jumps", " over", " the", " lazy", " dog."]
    for stream in (False, True):
        def got(msgs, **extra):
            pieces, tokens, cont = ask(api, base, msgs, stream, **extra)
            return pieces if stream else words(pieces), tokens, cont

        # Prefill: the rest after the assistant's text (its trailing whitespace ignored).
        assert got(prefill("The quick brown")) == (rest, 6, "prefill")
        assert got(prefill("The quick brown ", blocks=True)) == (rest, 6, "prefill")
        # A prefill that is not the start of the text: the whole text.
        assert got(prefill("Foxes are")) == (TEXT_PIECES, 9, "prefill")
        # The whole text prefilled: nothing left.
        assert got(prefill(TEXT)) == ([], 0, "prefill")
        # Instruction turn: the rest after the longest quoted prefix, even mid-word.
        assert got(instruction("The quick brown fo")) == (["x", *rest[1:]], 6, "instruction")
        assert got(instruction("The q")) == (["uick", " brown", *rest], 8, "instruction")
        assert got(instruction(TEXT)) == ([], 0, "instruction")
        # Less than 5 characters of the start quoted: a plain request.
        assert got(instruction("The ")) == (TEXT_PIECES, 9, None)
        assert got(MSGS) == (TEXT_PIECES, 9, None)
        # A continuation declaring tools still continues the text.
        assert got(instruction("The quick brown"), tools=OA_TOOLS if api in OAI else ANTH_TOOLS) == \
            (rest, 6, "instruction")
    # start_over: a continuation request gets the whole text again (and is still recorded as one).
    set_answer(base, continuation="start_over")
    for stream in (False, True):
        for msgs, kind in ((prefill("The quick brown"), "prefill"), (instruction("The quick brown fo"), "instruction")):
            pieces, tokens, cont = ask(api, base, msgs, stream)
            assert (pieces if stream else words(pieces), tokens, cont) == (TEXT_PIECES, 9, kind)
    # Without a configured text nothing is a continuation.
    set_answer(base, text=None, continuation="exact")
    assert ask(api, base, prefill("The quick brown")) == ("Hello from primary", 5, None)
    assert ask(api, base, instruction("The quick brown")) == ("Hello from primary", 5, None)


@pytest.mark.parametrize("api", APIS)
def test_reject_prefill(mocks, api):
    _, base = mocks(api, answer_text=TEXT, reject_prefill=True)
    if api not in OAI:
        set_fault(base, mode="500", count=1)
    for stream in (False, True):
        path, body = with_messages(api, prefill("The quick brown"), stream)
        r = post(base, path, body, api)
        assert recorded(base)[-1]["continuation"] == "prefill"
        if api in OAI:  # not an Anthropic model: the prefill is continued
            assert r.status_code == 200 and " fox" in r.text
            continue
        assert r.status_code == 400 and r.headers["content-type"] == "application/json"
        if api == "bedrock":
            assert r.headers["x-amzn-ErrorType"].split(":")[0] == "ValidationException"
            assert r.json() == {"message": ANTH_PREFILL_ERROR["error"]["message"]}
        else:
            assert r.json() == ANTH_PREFILL_ERROR
    if api not in OAI:
        # A rejected request uses no fault `count`; the fault then applies to the next one.
        assert post(base, *with_messages(api, MSGS), api).status_code == 500
        # Any conversation ending with an assistant turn is refused, with or without a text.
        set_answer(base, text=None)
        assert post(base, *with_messages(api, prefill("Hi")), api).status_code == 400
        assert recorded(base)[-1]["continuation"] is None
        set_answer(base, reject_prefill=False)
        assert post(base, *with_messages(api, prefill("Hi")), api).status_code == 200
    # An instruction turn is never refused.
    set_answer(base, text=TEXT, reject_prefill=True)
    assert ask(api, base, instruction("The quick brown"))[1:] == (6, "instruction")


@pytest.mark.parametrize("api", APIS)
def test_stream_error_after_deltas(mocks, api):
    _, base = mocks(api)
    path, body = request_for(api, stream=True)
    error_name = "exception:throttlingException" if api == "bedrock" else "error"
    pre_names = ["chunk"] if api in OAI else ["message_start", "content_block_start", "ping"]
    cases = ((2, ["Hello", " from"]), (0, []), (3, ["Hello", " from", " primary"]),
             (5, ["Hello", " from", " primary", ",", " streaming"]))
    for n, want in cases:
        set_fault(base, mode="stream_error", after_deltas=n, count=1)
        r, chunks, _, err = timed_stream(base, path, body, api)
        assert r.status_code == 200 and err is None and fault_reverted(base), n  # a clean end
        items, rest = stream_items(api, chunks)
        assert rest == b""
        names = [name for _, name, _ in items]
        assert names[:len(pre_names)] == pre_names and names[-1] == error_name
        assert [delta_piece(api, o) for _, nm, o in items if is_delta(api, nm, o)] == want
        assert len(items) == len(pre_names) + len(want) + 1 and not any(is_terminal(api, nm, o) for _, nm, o in items)
    # A configured text is cut where asked, lengthened only when too short.
    set_answer(base, text=TEXT)
    for n, want in ((4, TEXT_PIECES[:4]), (9, TEXT_PIECES), (10, TEXT_PIECES + [" Still"])):
        set_fault(base, mode="stream_error", after_deltas=n, count=1)
        items, _ = stream_items(api, timed_stream(base, path, body, api)[1])
        assert [delta_piece(api, o) for _, nm, o in items if is_delta(api, nm, o)] == want and items[-1][1] == error_name
    # Without after_deltas: as before (the start and one delta, then the error).
    set_fault(base, mode="stream_error", count=1)
    items, _ = stream_items(api, timed_stream(base, path, body, api)[1])
    start = ["chunk"] if api in OAI else ["message_start", "content_block_start"]
    assert [nm for _, nm, _ in items] == [*start, "content_block_delta" if api not in OAI else "chunk", error_name]
    assert delta_piece(api, items[-2][2]) == "The"
    if api == "bedrock":
        set_fault(base, mode="stream_error", after_deltas=1, exception="modelStreamErrorException", frame_split="tiny",
                  count=1)
        _, chunks, _, err = timed_stream(base, path, body, api)
        items, rest = stream_items(api, chunks)
        assert err is None and rest == b"" and max(len(c) for _, c in chunks) == 5
        assert items[-1][1] == "exception:modelStreamErrorException" and items[-1][2]["originalStatusCode"] == 500


def test_stream_error_after_deltas_sdks(mocks):
    _, base = mocks("anthropic", answer_text=TEXT)
    set_fault(base, mode="stream_error", after_deltas=3, count=1)
    seen = []
    with pytest.raises(anthropic.APIStatusError):
        with client(base).messages.stream(model=MODEL, max_tokens=10, messages=MSGS) as s:
            for t in s.text_stream:
                seen.append(t)
    assert seen == TEXT_PIECES[:3]
    _, obase = mocks("openai", name="oa", answer_text=TEXT)
    set_fault(obase, mode="stream_error", after_deltas=2, count=1)
    seen = []
    with pytest.raises(openai.APIError):
        for ch in oa_client(obase).chat.completions.create(model="gpt-4o", messages=MSGS, stream=True):
            seen.append(ch.choices[0].delta.content)
    assert seen == ["", "The", " quick"]


def test_continuation_sdks(mocks):
    _, base = mocks("anthropic", answer_text=TEXT)
    with client(base).messages.stream(model=MODEL, max_tokens=10, messages=prefill("The quick brown ")) as s:
        assert "".join(s.text_stream) == " fox jumps over the lazy dog."
        assert s.get_final_message().usage.output_tokens == 6
    _, obase = mocks("openai", name="oa", answer_text=TEXT)
    chunks = list(oa_client(obase).chat.completions.create(model="gpt-4o", messages=instruction("The quick"),
                                                           stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == " brown fox jumps over the lazy dog."
    assert chunks[-1].usage.completion_tokens == 7


def overflow_check(api, r):
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    if api == "bedrock":
        assert r.headers["x-amzn-ErrorType"].split(":")[0] == "ValidationException"
        assert r.json() == {"message": "Input is too long for requested model."}
    else:
        assert r.json() == (OAI_OVERFLOW if api in OAI else ANTH_OVERFLOW)


@pytest.mark.parametrize("api", APIS)
def test_context_overflow(mocks, api):
    _, base = mocks(api)
    for stream in (False, True):
        set_fault(base, mode="context_overflow", count=1)
        overflow_check(api, post(base, *request_for(api, stream), api))
        assert fault_reverted(base)
    assert post(base, *request_for(api), api).status_code == 200
    # max_prompt_chars: a small-context and a large-context provider.
    _, small = mocks(api, name="small", max_prompt_chars=50)
    long_msgs = [{"role": "user", "content": "x" * 30}, {"role": "assistant", "content": [{"type": "text", "text": "y" * 10}]},
                 {"role": "user", "content": [{"type": "text", "text": "z" * 11}]}]  # 51 characters
    for stream in (False, True):
        overflow_check(api, post(small, *with_messages(api, long_msgs, stream), api))
        assert post(base, *with_messages(api, long_msgs, stream), api).status_code == 200
    fits = [{"role": "user", "content": "x" * 50}]
    assert post(small, *with_messages(api, fits), api).status_code == 200
    # The system prompt counts too.
    if api in OAI:
        sys_msgs = [{"role": "system", "content": "s" * 49}, {"role": "user", "content": "hi"}]
        overflow_check(api, post(small, *with_messages(api, sys_msgs), api))
    else:
        overflow_check(api, post(small, *with_messages(api, MSGS, system="s" * 49), api))
        assert post(small, *with_messages(api, MSGS, system=[{"type": "text", "text": "s" * 48}]), api).status_code == 200
    # Whatever the fault mode, and without using its count.
    set_fault(small, mode="529", count=1)
    overflow_check(api, post(small, *with_messages(api, long_msgs), api))
    assert post(small, *with_messages(api, fits), api).status_code in (503, 529)
    # Set at run time, cleared by reset (back to the server's option).
    set_answer(base, max_prompt_chars=1)
    overflow_check(api, post(base, *request_for(api), api))
    requests.post(f"{base}/_control/reset", timeout=5)
    assert post(base, *request_for(api), api).status_code == 200
    set_answer(small, max_prompt_chars=None)
    assert post(small, *with_messages(api, long_msgs), api).status_code == 200
    requests.post(f"{small}/_control/reset", timeout=5)
    assert get_answer(small)["max_prompt_chars"] == 50


def test_context_overflow_sdks(mocks):
    _, base = mocks("anthropic")
    set_fault(base, mode="context_overflow", count=1)
    with pytest.raises(anthropic.BadRequestError) as ei:
        client(base).messages.create(model=MODEL, max_tokens=10, messages=MSGS)
    assert ei.value.body == ANTH_OVERFLOW
    _, obase = mocks("openai", name="oa", max_prompt_chars=1)
    with pytest.raises(openai.BadRequestError) as ei:
        oa_client(obase).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert ei.value.code == "context_length_exceeded"
