"""Tests for the mock Anthropic provider (tests/mock_provider.py)."""

import os
import socket
import sys
import time

import anthropic
import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mock_provider import start_mock  # noqa: E402

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
