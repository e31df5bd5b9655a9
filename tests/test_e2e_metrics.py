"""AI-specific observability in a real Envoy with 2 workers: Prometheus counters with provider /
model labels, exact token counts per format, TTFT samples for streams, the breaker gauge during
and after an outage, failovers and degraded answers, and the access-log fields."""

import json
import re
import time

import requests

from stack import MESSAGE_BODY
from test_e2e_breaker import open_primary, provider_of

MODEL = MESSAGE_BODY["model"]
# What the mock provider reports per answer (tests/mock_provider.py).
IN, OUT = 12, 5


# The filter hands its counter increments to Envoy on its VMs' tick (every 100 ms).
COUNTER_FLUSH_S = 0.25


def scrape(stack) -> dict[str, float]:
    """`/stats/prometheus` as {'name{labels sorted}': value}, once the filter's counters of the
    requests made so far are flushed."""
    time.sleep(COUNTER_FLUSH_S)
    out = {}
    for line in requests.get(stack.envoy.admin + "/stats/prometheus", timeout=5).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        key = m.group(1) + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
        out[key] = float(m.group(4))
    return out


def metric(samples, name, **labels) -> float:
    key = name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return samples.get(key, 0.0)


def wait_flush():
    time.sleep(1.3)  # envoy/demo.yaml flushes histograms every second


def test_prometheus_counters_tokens_and_ttft(stack):
    for _ in range(2):
        stack.post()
    s = scrape(stack)
    assert metric(s, "llm_failover_requests", provider="primary", model=MODEL) == 2
    assert metric(s, "llm_failover_outcomes", provider="primary", model=MODEL, **{"class": "success"}) == 2
    # JSON answers: usage from the body.
    assert metric(s, "llm_failover_tokens", provider="primary", model=MODEL, token_type="input") == 2 * IN
    assert metric(s, "llm_failover_tokens", provider="primary", model=MODEL, token_type="output") == 2 * OUT

    stack.post({**MESSAGE_BODY, "stream": True})
    wait_flush()
    s = scrape(stack)
    # SSE answers: input from message_start, output from message_delta.
    assert metric(s, "llm_failover_tokens", provider="primary", model=MODEL, token_type="input") == 3 * IN
    assert metric(s, "llm_failover_tokens", provider="primary", model=MODEL, token_type="output") == 3 * OUT
    assert metric(s, "gen_ai_server_time_to_first_token_count", provider="primary", model=MODEL) == 1
    assert metric(s, "gen_ai_server_request_duration_count", provider="primary", model=MODEL) == 3
    assert metric(s, "gen_ai_client_token_usage_count", provider="primary", model=MODEL, token_type="output") == 3
    assert metric(s, "gen_ai_server_time_per_output_token_count", provider="primary", model=MODEL) == 1


def test_outage_metrics_and_breaker_gauge_with_two_workers(stack):
    s = scrape(stack)
    assert metric(s, "llm_failover_breaker_state", provider="primary") == 0
    n = open_primary(stack)
    for _ in range(3):
        assert provider_of(stack.post()) == "fallback"
    wait_flush()
    s = scrape(stack)
    assert metric(s, "llm_failover_breaker_state", provider="primary") == 1  # open
    assert metric(s, "llm_failover_breaker_state", provider="fallback") == 0
    assert metric(s, "llm_failover_breaker_transitions", provider="primary", state="open") == 1
    assert metric(s, "llm_failover_outcomes", provider="primary", model=MODEL, **{"class": "overloaded"}) == n - 1
    # Every request was answered: the n - 1 that met the outage were replayed on the fallback.
    assert metric(s, "llm_failover_degraded", reason="upstream_failure") == 0
    assert metric(s, "llm_failover_replays", provider="fallback") == n - 1
    assert metric(s, "llm_failover_failovers", **{"from": "primary", "to": "fallback"}) == n + 3
    assert metric(s, "llm_failover_requests", provider="fallback", model=MODEL) == n + 3
    assert metric(s, "llm_failover_tokens", provider="fallback", model=MODEL, token_type="output") == (n + 3) * OUT
    assert metric(s, "llm_failover_request_attempts_count") == n + 3

    # Recovery: probes close the breaker; the gauge reads closed again, whichever worker did it.
    stack.fault("primary", "none")
    time.sleep(1.1)
    for _ in range(4):
        stack.post()
    s = scrape(stack)
    assert metric(s, "llm_failover_breaker_state", provider="primary") == 0
    assert metric(s, "llm_failover_breaker_transitions", provider="primary", state="half_open") == 1
    assert metric(s, "llm_failover_breaker_transitions", provider="primary", state="closed") == 1

    # Everything down: degraded answers with no provider available.
    stack.fault("primary", "529")
    stack.fault("fallback", "529")
    for _ in range(10):
        stack.post()
    s = scrape(stack)
    assert metric(s, "llm_failover_degraded", reason="no_provider_available") >= 1
    assert metric(s, "llm_failover_breaker_state", provider="fallback") == 1


def test_access_log_fields(stack):
    stack.post({**MESSAGE_BODY, "stream": True})
    open_primary(stack)
    time.sleep(1.5)  # the stdout access log is flushed periodically
    lines = [json.loads(line) for line in stack.envoy.log().splitlines() if line.startswith("{")]
    assert lines, stack.envoy.log()[-2000:]
    first = lines[0]
    assert first["llm_provider"] == "primary" and first["llm_model"] == MODEL
    assert first["llm_outcome"] == "success" and first["llm_attempts"] == "1"
    assert first["llm_input_tokens"] == str(IN) and first["llm_output_tokens"] == str(OUT)
    assert first["llm_ttft_ms"].isdigit(), first
    assert first["llm_tried"] == "primary:success"
    # The three that met the outage: tried the primary, answered by the fallback.
    replayed = [entry for entry in lines if entry["llm_attempts"] == "2"]
    assert len(replayed) == 3, lines
    for entry in replayed:
        assert entry["llm_tried"] == "primary:overloaded,fallback:success"
        assert entry["llm_provider"] == "fallback" and entry["llm_outcome"] == "success"
        assert entry["llm_degraded_reason"] == "" and entry["upstream_cluster"] == "llm_messages"
    # Breaker open: straight to the fallback's own cluster.
    rerouted = lines[-1]
    assert rerouted["llm_provider"] == "fallback" and rerouted["llm_attempts"] == "1"
    assert rerouted["llm_tried"] == "fallback:success"
    assert rerouted["upstream_cluster"] == "anthropic_fallback"


def test_access_log_of_a_degraded_answer_without_any_provider(stack):
    stack.fault("primary", "529")
    stack.fault("fallback", "529")
    for _ in range(12):
        stack.post()
    time.sleep(0.5)
    lines = [json.loads(line) for line in stack.envoy.log().splitlines() if line.startswith("{")]
    last = lines[-1]
    assert last["llm_degraded_reason"] == "no_provider_available"
    # No provider was tried.
    assert last["llm_provider"] == "" and last["llm_attempts"] == "" and last["llm_model"] == MODEL


def test_client_chosen_model_names_cannot_blow_up_the_stats(stack):
    for i in range(40):
        stack.post({**MESSAGE_BODY, "model": f"model-{i}.x"}, new_connection=False)
    s = scrape(stack)
    models = {k for k in s if k.startswith("llm_failover_requests{")}
    # 32 names per VM at most (2 workers may hand out different ones), the rest become "other".
    assert len(models) <= 2 * 32 + 1
    assert any("model=model-0_x" in k for k in models)
