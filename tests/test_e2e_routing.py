"""Cluster selection and credentials: the client never picks the cluster, and no provider ever
sees a credential meant for another."""

import copy

from conftest import fast_breaker
from stack import Stack
from test_e2e_breaker import open_primary

CLIENT_SECRET = "sk-ant-client-secret-123"


def test_client_sent_routing_header_is_ignored(stack):
    r = stack.post(headers={"x-llm-failover-cluster": "anthropic_fallback"})
    assert r.headers["x-llm-provider"] == "primary"
    assert len(stack.received("fallback")) == 0
    # The routing header is the filter's own: it never reaches a provider.
    assert "x-llm-failover-cluster" not in stack.received("primary")[0]["headers"]


def test_routing_header_is_stripped_outside_chains(stack):
    # /v1/complete matches no chain; a client cannot route it by naming a cluster.
    r = stack.post(path="/v1/complete", headers={"x-llm-failover-cluster": "anthropic_fallback"})
    assert r.status_code == 404
    assert len(stack.received("fallback")) == 0 and len(stack.received("primary")) == 0


def test_authority_is_rewritten_per_provider(stack):
    stack.post()
    assert stack.received("primary")[0]["headers"]["host"] == "api.anthropic.com"
    open_primary(stack)
    assert stack.received("fallback")[-1]["headers"]["host"] == "fallback.example.com"


def test_client_credentials_reach_only_the_addressed_provider(stack):
    creds = {"x-api-key": CLIENT_SECRET, "authorization": f"Bearer {CLIENT_SECRET}"}
    # The demo chain passes client credentials to the primary (which has none configured).
    stack.post(headers=creds)
    primary_seen = stack.received("primary")[0]["headers"]
    assert primary_seen["x-api-key"] == CLIENT_SECRET
    # Outage: requests are rerouted to the fallback.
    stack.fault("primary", "529")
    for _ in range(8):
        stack.post(headers=creds)
    fallback_seen = stack.received("fallback")
    assert len(fallback_seen) >= 4
    for req in fallback_seen:
        h = req["headers"]
        assert h["x-api-key"] == "demo-fallback-key"  # its own credential, from the VM's env
        assert "authorization" not in h
        assert CLIENT_SECRET not in repr(h)
    # And no credential leaks into Envoy's log.
    log = stack.envoy.log()
    assert CLIENT_SECRET not in log and "demo-fallback-key" not in log


def test_client_credentials_are_stripped_when_the_chain_does_not_allow_them():
    cfg = fast_breaker()
    cfg["chains"][0]["pass_client_credentials"] = False
    with Stack(cfg) as s:
        s.post(headers={"x-api-key": CLIENT_SECRET, "authorization": "Bearer x", "api-key": "y"})
        h = s.received("primary")[0]["headers"]
        assert "x-api-key" not in h and "authorization" not in h and "api-key" not in h


def test_configured_credential_replaces_the_clients_even_for_the_first_provider():
    cfg = fast_breaker()
    cfg["providers"][0]["credential"] = {"header": "x-api-key", "env": "PRIMARY_API_KEY"}
    env = {"PRIMARY_API_KEY": "primary-from-env", "FALLBACK_API_KEY": "demo-fallback-key"}
    with Stack(cfg, env=env) as s:
        s.post(headers={"x-api-key": CLIENT_SECRET, "authorization": f"Bearer {CLIENT_SECRET}"})
        h = s.received("primary")[0]["headers"]
        assert h["x-api-key"] == "primary-from-env"
        assert "authorization" not in h


def test_chain_with_header_match():
    cfg = fast_breaker()
    gold = copy.deepcopy(cfg["chains"][0])
    gold["name"] = "gold"
    gold["match"] = {"path_prefix": "/v1/messages", "header": {"name": "x-tenant", "value": "gold"}}
    gold["providers"] = ["fallback"]
    gold.pop("failover")
    cfg["chains"].insert(0, gold)
    with Stack(cfg) as s:
        assert s.post(headers={"x-tenant": "gold"}).headers["x-llm-provider"] == "fallback"
        assert s.post(headers={"x-tenant": "silver"}).headers["x-llm-provider"] == "primary"
        assert s.post().headers["x-llm-provider"] == "primary"
