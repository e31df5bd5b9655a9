"""The Envoy configs shipped in envoy/ load in a real Envoy with the module (`--mode validate`
instantiates the Wasm VM and runs the filter's configuration)."""

import os
import subprocess
from pathlib import Path

import yaml

from stack import ROOT, WASM, envoy_binary

PRODUCTION = ROOT / "envoy" / "production.yaml"
PRODUCTION_ENV = {"ANTHROPIC_API_KEY": "sk-ant-x", "VERTEX_ACCESS_TOKEN": "ya29.x",
                  "BEDROCK_API_KEY": "bedrock-x", "OPENAI_API_KEY": "sk-x"}


def validate(path: Path, env: dict) -> subprocess.CompletedProcess:
    # The configs name the module relative to the repository root, as users run them.
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **env})


def test_production_config_validates_with_credentials_from_the_environment():
    assert WASM.exists()
    p = validate(PRODUCTION, PRODUCTION_ENV)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "configured 4 providers, 2 chains" in out
    for secret in PRODUCTION_ENV.values():
        assert secret not in out


def test_production_config_refuses_to_load_without_a_credential():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "BEDROCK_API_KEY"}
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    p = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(PRODUCTION), "--use-dynamic-base-id"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **env})
    assert p.returncode != 0
    assert "field `providers[2].credential.env`" in p.stdout + p.stderr


def test_production_upstreams_are_tls_with_verified_names():
    cfg = yaml.safe_load(PRODUCTION.read_text())
    all_clusters = cfg["static_resources"]["clusters"]
    clusters = [c for c in all_clusters if "load_assignment" in c]
    assert {c["name"] for c in clusters} == {"anthropic", "vertex", "bedrock", "openai"}
    # Every other cluster is an aggregate of those (in-request failover).
    for c in all_clusters:
        if "load_assignment" not in c:
            assert c["cluster_type"]["name"] == "envoy.clusters.aggregate"
            assert set(c["cluster_type"]["typed_config"]["clusters"]) <= {x["name"] for x in clusters}
    for c in clusters:
        ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        assert ep["metadata"]["filter_metadata"]["llm_failover"]["provider"] == c["name"]
        host = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        tls = c["transport_socket"]["typed_config"]
        assert host["port_value"] == 443
        assert tls["sni"] == host["address"]
        sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        assert sans == [{"san_type": "DNS", "matcher": {"exact": host["address"]}}]
