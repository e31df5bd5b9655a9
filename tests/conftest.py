"""Shared fixtures for the end-to-end tests (see stack.py)."""

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import WASM, Stack, demo_filter_config  # noqa: E402


def pytest_sessionstart(session):
    if not WASM.exists():
        raise pytest.UsageError(f"{WASM} is missing: run `make build` (or `make test`, which builds it)")


def fast_breaker(**overrides) -> dict:
    """The demo config with a breaker tuned for quick tests: opens after 3 consecutive failures,
    stays open 1 s (no jitter), 1 probe at a time, 2 successful probes close it."""
    cfg = copy.deepcopy(demo_filter_config())
    cfg["breaker"] = {
        "window_ms": 10000, "buckets": 10, "min_requests": 20, "failure_ratio": 0.5,
        "consecutive_failures": 3, "open_ms": 1000, "max_open_ms": 8000, "jitter": 0.0,
        "backoff_multiplier": 2.0, "half_open_probes": 1, "close_after_successes": 2,
    }
    cfg["breaker"].update(overrides)
    return cfg


def single_attempt(cfg: dict) -> dict:
    """`cfg` without in-request failover or deadlines: one attempt per request, as an Istio
    WasmPlugin install (no upstream filter) gets."""
    cfg = copy.deepcopy(cfg)
    for chain in cfg["chains"]:
        chain.pop("failover", None)
        chain.pop("deadlines", None)
    return cfg


@pytest.fixture
def stack():
    """The demo's shape (in-request failover, 1 s first-token deadline) with a fast breaker."""
    with Stack(fast_breaker()) as s:
        yield s


@pytest.fixture
def single():
    """One attempt per request (no upstream filter), with a fast breaker."""
    with Stack(single_attempt(fast_breaker()), upstream_filter=False) as s:
        yield s
