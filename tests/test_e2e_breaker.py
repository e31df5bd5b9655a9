"""Breaker behaviour in a real Envoy with 2 workers: opening, staying shut on client errors,
half-open probes, re-opening with backoff, and agreement between workers. With in-request
failover (the demo's shape) every request that meets the outage is answered by the fallback;
the breaker decides whether the primary is tried first."""

import re
import time

from conftest import fast_breaker
from stack import Stack


def provider_of(resp) -> str:
    if resp.headers.get("x-llm-degraded") == "true":
        return "degraded"
    return resp.headers.get("x-llm-provider", "?")


def open_primary(stack, mode="529", limit=20) -> int:
    """Puts the primary in an outage and sends requests until one is served without trying the
    primary (its breaker is open). Every one of them is answered by the fallback. Returns how
    many requests that took."""
    stack.fault("primary", mode)
    for n in range(1, limit + 1):
        before = len(stack.received("primary"))
        r = stack.post()
        assert r.status_code == 200, r.text
        assert provider_of(r) == "fallback", r.headers
        if len(stack.received("primary")) == before:
            assert r.headers["x-llm-attempts"] == "1"
            return n
        assert r.headers["x-llm-attempts"] == "2"
    raise AssertionError(f"breaker did not open within {limit} requests")


def test_healthy_primary_serves_and_is_named(stack):
    r = stack.post()
    assert r.status_code == 200
    assert r.headers["x-llm-provider"] == "primary"
    assert r.json()["content"][0]["text"] == "Hello from primary"
    assert len(stack.received("fallback")) == 0


def test_breaker_opens_after_consecutive_failures_and_fails_over(stack):
    n = open_primary(stack)
    # 3 consecutive failures open it (each failed over in the request), the 4th request goes
    # straight to the fallback.
    assert n == 4
    assert len(stack.received("primary")) == 3
    log = "\n".join(stack.envoy.wasm_log())
    assert re.search(r"provider primary breaker closed -> open \(3 consecutive failures\); open for 1000 ms", log), log
    # While open, the primary is not called at all.
    for _ in range(5):
        assert provider_of(stack.post()) == "fallback"
    assert len(stack.received("primary")) == 3
    # Transitions are logged once, not once per worker or request.
    assert log.count("closed -> open") == 1


def test_failure_ratio_opens_the_breaker():
    cfg = fast_breaker(consecutive_failures=0, min_requests=6, failure_ratio=0.5)
    with Stack(cfg) as s:
        for _ in range(3):
            assert provider_of(s.post()) == "primary"
        # Each worker batches closed-state successes and writes them within 100 ms (its tick).
        time.sleep(0.3)
        s.fault("primary", "500")
        seen = [provider_of(s.post()) for _ in range(4)]
        # 3 failures of 6 requests reach the 0.5 threshold; every request is answered.
        assert seen == ["fallback"] * 4, seen
        assert len(s.received("primary")) == 6
        assert any("3 of 6 requests failed in the window" in line for line in s.envoy.wasm_log())


def test_client_error_storm_does_not_open_the_breaker(stack):
    for mode in ("400", "401", "403", "404", "413"):
        stack.fault("primary", mode)
        for _ in range(6):
            r = stack.post()
            # Client errors are passed through untouched, named with the provider.
            assert r.status_code == int(mode)
            assert r.headers["x-llm-provider"] == "primary"
            assert r.headers.get("x-llm-degraded") is None
    stack.fault("primary", "none")
    assert provider_of(stack.post()) == "primary"
    assert len(stack.received("fallback")) == 0
    assert not any("breaker" in line for line in stack.envoy.wasm_log())


def test_half_open_probes_close_the_breaker_after_recovery(stack):
    open_primary(stack)
    stack.fault("primary", "none")
    time.sleep(1.1)
    # Probes go to the primary one at a time; two successes close the breaker.
    assert provider_of(stack.post()) == "primary"
    assert provider_of(stack.post()) == "primary"
    for _ in range(5):
        assert provider_of(stack.post()) == "primary"
    log = "\n".join(stack.envoy.wasm_log())
    assert "provider primary breaker open -> half_open" in log
    assert "provider primary breaker half_open -> closed (2 half-open probes succeeded)" in log


def test_failed_probe_reopens_with_a_longer_open_period(stack):
    open_primary(stack)
    time.sleep(1.1)
    # The primary still fails: the probe fails (and is itself failed over: the client gets the
    # fallback's answer), the breaker re-opens for 2 s (backoff x2).
    r = stack.post()
    assert provider_of(r) == "fallback" and r.headers["x-llm-attempts"] == "2"
    log = "\n".join(stack.envoy.wasm_log())
    assert re.search(r"half_open -> open \(a half-open probe failed\); open for 2000 ms", log), log
    time.sleep(1.1)
    assert provider_of(stack.post()) == "fallback"  # still open after 1.1 s
    time.sleep(1.0)
    stack.fault("primary", "none")
    assert provider_of(stack.post()) == "primary"  # probe after 2 s


def test_only_one_probe_at_a_time_while_half_open(stack):
    open_primary(stack)
    stack.fault("primary", "slow_first_byte", delay_ms=1500)
    time.sleep(1.1)
    import concurrent.futures as cf

    before = len(stack.received("primary"))
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: stack.post(), range(8)))
    # Exactly one request probed the primary (slower than the 1 s first-token deadline, so it
    # moved on to the fallback too); the others went to the fallback meanwhile.
    assert len(stack.received("primary")) - before == 1
    assert [provider_of(r) for r in results] == ["fallback"] * 8
    assert sorted(r.headers["x-llm-attempts"] for r in results) == ["1"] * 7 + ["2"]


def test_both_workers_share_one_breaker():
    with Stack(fast_breaker(open_ms=30000, max_open_ms=60000)) as stack:
        check_workers_agree(stack)


def check_workers_agree(stack):
    n = open_primary(stack)
    assert n == 4
    before = stack.envoy.stats()
    served = [provider_of(stack.post(new_connection=True)) for _ in range(40)]
    after = stack.envoy.stats()
    assert served == ["fallback"] * 40, served
    # Both workers took new connections during those 40 requests: a per-worker breaker would
    # have sent the other worker's share to the primary.
    per_worker = {k: after[k] - before.get(k, 0) for k in after
                  if re.match(r"listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total", k)}
    assert len(per_worker) == 2, per_worker
    assert all(v > 0 for v in per_worker.values()), per_worker
    assert len(stack.received("primary")) == 3
