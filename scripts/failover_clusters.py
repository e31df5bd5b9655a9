#!/usr/bin/env python3
"""The Envoy clusters in-request failover needs, generated from the filter's configuration.

In-request failover sends a request to an aggregate cluster of the providers the filter plans
for it (those whose breakers admit it, in chain order); Envoy's router retries move through its
sub-clusters. A plan skips the providers whose breaker is open, so every ordered subset of a
chain that a plan can be needs its aggregate cluster, or the filter falls back to the longest one
that exists (at worst: one attempt at the first provider). This prints, for each chain:

  1. the `failover` block for the chain in the filter configuration (JSON), and
  2. the aggregate clusters for the Envoy config (YAML),

for every ordered subset of two or more of the chain's providers (`--suffixes`: only the chain's
suffixes, for an open first provider; fewer clusters, no failover around an open provider in the
middle).

    .tools/venv/bin/python scripts/failover_clusters.py envoy/demo-hosts.yaml   # after make tools
    python3 scripts/failover_clusters.py my-filter-config.json --suffixes       # JSON: no PyYAML needed

Each provider's own cluster must name its provider in its endpoints' metadata:
    metadata: { filter_metadata: { llm_failover: { provider: <name> } } }
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path


def filter_config(path: Path) -> dict:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    try:
        import yaml
    except ImportError:
        sys.exit("reading an Envoy YAML needs PyYAML: run `make tools` and use .tools/venv/bin/python, "
                 "or pass the filter configuration as a .json file")

    def find(node):
        if isinstance(node, dict):
            if node.get("name") in ("llm-failover",) and "typed_config" in node:
                return json.loads(node["typed_config"]["config"]["configuration"]["value"])
            for v in node.values():
                r = find(v)
                if r:
                    return r
        if isinstance(node, list):
            for v in node:
                r = find(v)
                if r:
                    return r
        return None

    cfg = find(yaml.safe_load(text))
    if cfg is None:
        sys.exit(f"{path}: no llm-failover filter configuration found")
    return cfg


def subsets(names: list[str], suffixes: bool) -> list[list[str]]:
    if suffixes:
        return [names[i:] for i in range(len(names) - 1)]
    out = []
    for k in range(len(names), 1, -1):
        out += [list(c) for c in itertools.combinations(names, k)]
    return out


def cluster_name(chain: str, providers: list[str]) -> str:
    return f"llm_{chain}__" + "__".join(providers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="an Envoy YAML with the llm-failover filter, or the filter's JSON")
    ap.add_argument("--suffixes", action="store_true", help="only the chain's suffixes")
    args = ap.parse_args(argv)
    cfg = filter_config(args.config)
    cluster_of = {p["name"]: p["cluster"] for p in cfg["providers"]}
    yaml_out = []
    for i, chain in enumerate(cfg["chains"]):
        name = chain.get("name", f"chain{i}")
        names = [e if isinstance(e, str) else e["provider"] for e in chain["providers"]]
        sets = subsets(names, args.suffixes)
        lines = [json.dumps({"cluster": cluster_name(name, s), "providers": s}) for s in sets]
        print(f"# chains[{i}] ({name}):")
        print('"failover": {"clusters": [\n  ' + ",\n  ".join(lines) + "]}")
        for s in sets:
            yaml_out.append(
                f"  - name: {cluster_name(name, s)}\n"
                f"    connect_timeout: 5s\n"
                f"    lb_policy: CLUSTER_PROVIDED\n"
                f"    cluster_type:\n"
                f"      name: envoy.clusters.aggregate\n"
                f"      typed_config:\n"
                f"        \"@type\": type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig\n"
                f"        clusters: [{', '.join(cluster_of[n] for n in s)}]\n"
                f"    circuit_breakers: {{ thresholds: [{{ max_retries: 100000, max_requests: 100000, max_pending_requests: 100000 }}] }}"
            )
    print("\n# Envoy clusters (static_resources.clusters):")
    print("\n".join(yaml_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
