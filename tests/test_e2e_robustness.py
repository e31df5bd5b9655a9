"""Bad input never crashes the Wasm VM, and a bad configuration is refused at load."""

import json
import subprocess
from pathlib import Path

import pytest
import requests

from stack import MESSAGE_BODY, Stack, build_envoy_config, envoy_binary, free_port, demo_filter_config
from test_e2e_breaker import provider_of


def test_garbage_responses_and_requests_do_not_crash_the_vm(stack):
    stack.fault("primary", "garbage")
    for body in (MESSAGE_BODY, {**MESSAGE_BODY, "stream": True}):
        stack.post(body)
    stack.fault("primary", "none")
    # Garbage request bodies: not JSON, binary, truncated JSON, deep nesting, huge model names.
    for raw in (b"not json at all", bytes(range(256)) * 40, b'{"model": "x", "messages": [',
                b"[" * 5000, json.dumps({**MESSAGE_BODY, "model": "m" * 100000}).encode(),
                b'{"stream": tru', b""):
        requests.post(stack.url + "/v1/messages", data=raw, headers={"content-type": "application/json"}, timeout=10)
    # Odd headers.
    requests.post(stack.url + "/v1/messages", data=json.dumps(MESSAGE_BODY),
                  headers={"x-llm-failover-cluster": "\u00e9\u00e9", "x-api-key": ""}, timeout=10)
    assert provider_of(stack.post()) == "primary"
    assert stack.wasm_failures() == []


def test_garbage_stream_counts_as_broken_not_as_success(stack):
    stack.fault("primary", "garbage")
    seen = [provider_of(stack.post({**MESSAGE_BODY, "stream": True})) for _ in range(4)]
    assert seen == ["primary"] * 3 + ["fallback"], seen
    assert stack.wasm_failures() == []


def validate(filter_config: dict, tmp_path: Path):
    cfg = build_envoy_config(filter_config, free_port(), free_port(), {"anthropic_primary": 1, "anthropic_fallback": 2},
                             {"FALLBACK_API_KEY": "k"})
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
                          capture_output=True, text=True, timeout=60)


def test_demo_config_validates(tmp_path):
    p = validate(demo_filter_config(), tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c["providers"][0].update(clustr="x"), "providers[0].clustr"),
    (lambda c: c["breaker"].update(failure_ratio=2), "breaker.failure_ratio"),
    (lambda c: c["chains"][0]["providers"].append("nobody"), "chains[0].providers[2]"),
    (lambda c: c["providers"][1]["credential"].update(env="MISSING_KEY"), "providers[1].credential.env"),
    (lambda c: c["degraded"].update(mode="sorry"), "degraded.mode"),
])
def test_invalid_config_is_refused_naming_the_field(tmp_path, mutate, field):
    cfg = demo_filter_config()
    mutate(cfg)
    p = validate(cfg, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    lines = [line for line in out.splitlines() if "invalid llm-failover config" in line]
    assert lines and f"field `{field}`" in lines[0], out[-2000:]
    assert "demo-fallback-key" not in out
