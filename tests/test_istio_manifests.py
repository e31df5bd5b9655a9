"""The Istio manifests under istio/: valid against Istio's own CRD schemas, their filter configs
accepted by the filter's parser inside a real Envoy, and their routing consistent with the filter
config (every provider label the filter sets leads to that provider).

No Kubernetes cluster runs here. What is checked, and how:
- schema: each document against the `openAPIV3Schema` of its CRD version, read from
  ../shared/istio-crds/customresourcedefinitions.gen.yaml (skipped when that file is absent),
  with jsonschema; plus what the API server adds on top: unknown fields are errors (as with
  `kubectl apply`'s strict field validation), and the CRDs' CEL rules (x-kubernetes-validations)
  that apply to the documents are evaluated by hand-written equivalents (a rule without one fails
  the test, so none is silently skipped);
- filter config: every pluginConfig (WasmPlugin, TrafficExtension) and the JSON of every
  EnvoyFilter goes through `envoy --mode validate`, which runs the filter's on_configure;
- routing: the VirtualServices are evaluated for each route-header value the filter can set;
- the EnvoyFilter install (in-request failover): its clusters and route checked against its own
  filter config; its patches applied, with istiod's semantics restated here, to a skeleton of what
  istiod generates for the proxy; the resulting bootstrap through `envoy --mode validate` on the
  suite's Envoy and 1.36.4 (when installed), and run for real with the module delivered by ECDS
  and the provider clusters pointed at mock providers (plain text): one request failing over
  within itself.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from stack import WASM, _wasm_filter, build_envoy_config, envoy_binary, free_port, sse_events

ROOT = Path(__file__).resolve().parent.parent
ISTIO = ROOT / "istio"
CRD_FILE = ROOT.parent / "shared" / "istio-crds" / "customresourcedefinitions.gen.yaml"

# Files under istio/ that are not Kubernetes objects (a `kubectl patch --patch-file` body).
PATCH_FILES = {"sidecar/proxy-env-patch.yaml"}
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def _documents() -> list[tuple[str, int, dict]]:
    out = []
    for path in sorted(ISTIO.rglob("*.yaml")):
        rel = path.relative_to(ISTIO).as_posix()
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((rel, i, doc))
    return out


DOCS = _documents()
OBJECTS = [(rel, i, d) for rel, i, d in DOCS if rel not in PATCH_FILES]


def _id(rel: str, doc: dict) -> str:
    return f"{rel}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def test_the_manifests_exist():
    kinds = {(rel.split("/")[0], d["kind"]) for rel, _, d in OBJECTS}
    for mode in ("sidecar", "egress-gateway"):
        for kind in ("WasmPlugin", "TrafficExtension", "EnvoyFilter", "ServiceEntry", "DestinationRule",
                     "VirtualService"):
            assert (mode, kind) in kinds, f"no {kind} under istio/{mode}/"
    assert ("egress-gateway", "Gateway") in kinds
    assert (ISTIO / "README.md").is_file()


def test_every_document_is_a_kubernetes_object_with_a_name_and_namespace():
    for rel, i, doc in OBJECTS:
        where = f"{rel} document {i}"
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{where}: top-level keys {sorted(doc)}"
        assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str), where
        meta = doc.get("metadata", {})
        assert set(meta) <= {"name", "namespace", "labels", "annotations"}, f"{where}: metadata {sorted(meta)}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", meta.get("name", "")), where
        assert len(meta["name"]) <= 253, where
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("namespace", "")), f"{where}: namespace"
        assert doc["apiVersion"].split("/")[0].endswith(".istio.io"), f"{where}: not an Istio kind"
    # Within a mode (the files applied together) no object is defined twice; the install files
    # (WasmPlugin, TrafficExtension, EnvoyFilter) are alternatives and may share a name.
    for mode in {r.split("/")[0] for r, _, _ in OBJECTS}:
        mine = [(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
                for r, _, d in OBJECTS if r.startswith(mode + "/")]
        assert len(mine) == len(set(mine)), f"istio/{mode}/: an object is defined twice"


# ---------------------------------------------------------------------------------------------
# Schema validation against Istio's CRDs.
# ---------------------------------------------------------------------------------------------

def _crd_schemas() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema, for served versions."""
    out = {}
    for crd in yaml.safe_load_all(CRD_FILE.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for v in spec["versions"]:
            if v.get("served"):
                out[(spec["group"], v["name"], spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


@pytest.fixture(scope="module")
def crd_schemas():
    if not CRD_FILE.is_file():
        pytest.skip(f"Istio's CRD schemas are not available ({CRD_FILE} is missing): they come from "
                    "shared/istio-crds/ beside the repository; the manifests are not schema-checked")
    return _crd_schemas()


def _duration_ms(s: str) -> float:
    """A Go/Kubernetes CEL duration string ("120s", "1h30m", "500ms") in milliseconds."""
    units = {"h": 3.6e6, "m": 6e4, "s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", s)
    if not parts or "".join(n + u for n, u in parts) != s.lstrip("+"):
        raise ValueError(f"invalid duration {s!r}")
    return sum(float(n) * units[u] for n, u in parts)


def _url_scheme(s: str) -> str | None:
    """CEL isURL(self) ? url(self).getScheme() : ..., as the Wasm url rules use it."""
    def parse(u: str) -> str | None:
        try:
            parts = urlsplit(u)
        except ValueError:
            return None
        return parts.scheme if parts.scheme and parts.netloc + parts.path else None
    scheme = parse(s)
    if scheme is not None:
        return scheme
    return "" if parse("http://" + s) is not None else None


def _has(obj: dict, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


_WASM_SCHEMES = {"", "http", "https", "file", "oci"}

# Every CEL rule of the CRDs that a document here reaches, by its exact text, as Python.
CEL_RULES = {
    "(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: _has(s, "selector") + _has(s, "targetRefs") <= 1,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: _has(s, "selector") + _has(s, "targetRef") + _has(s, "targetRefs") <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: _has(s, "workloadSelector") + _has(s, "targetRefs") <= 1,
    "has(self.wasm) != has(self.lua)": lambda s: _has(s, "wasm") != _has(s, "lua"),
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    "self.all(key, key.size() != 0)": lambda s: all(len(k) != 0 for k in s),
    '!self.contains("*")': lambda s: "*" not in s,
    "self.size() == 0": lambda s: len(s) == 0,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: s.get("valueFrom", "") != "HOST" or "value" not in s,
    "duration(self) >= duration('1ms')": lambda s: _duration_ms(s) >= 1.0,
    "0 < self && self <= 65535": lambda s: 0 < s <= 65535,
    'self != "*"': lambda s: s != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda s: all(sum(1 for b in s if b.get("number") == a.get("number")) == 1 for a in s),
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && !((has(self.resolution) ? '
    'self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda s: not (any("/" in a for a in s.get("addresses", []))
                       and s.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? ((has(self.endpoints) ? '
    'self.endpoints : []).size() <= 1) : true':
        lambda s: len(s.get("endpoints", [])) <= 1 if s.get("resolution", "") == "DNS_ROUND_ROBIN" else True,
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda s: "endpoints" not in s if s.get("resolution", "NONE") == "NONE" else True,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda s: _has(s, "workloadSelector") + _has(s, "endpoints") <= 1,
    '(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1':
        lambda s: _has(s, "credentialName") + _has(s, "credentialNames") <= 1,
    '(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1':
        lambda s: _has(s, "credentialNames") + _has(s, "tlsCertificates") <= 1,
    '(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1':
        lambda s: _has(s, "tlsCertificates") + _has(s, "credentialNames") <= 1,
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : '
    '!has(self.waypoint)':
        lambda s: (("waypoint" in s) if s.get("context") == "WAYPOINT" else ("waypoint" not in s)),
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) &&\n'
    'url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        lambda s: _url_scheme(s) in _WASM_SCHEMES,
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "file", "oci"]) : (isURL("http://" + self) &&\n'
    'url("http://" + self).getScheme() in ["", "http", "https", "file", "oci"])':
        lambda s: _url_scheme(s) in _WASM_SCHEMES,
}


def _structural_errors(schema: dict, value, path: str, errors: list[str]) -> None:
    """What the API server adds to the JSON schema: unknown fields (strict field validation) and
    the CEL rules of every schema node the value reaches."""
    for v in schema.get("x-kubernetes-validations", []):
        rule = v["rule"]
        check = CEL_RULES.get(rule)
        if check is None:
            errors.append(f"{path}: CEL rule without a Python equivalent in this test: {rule!r}")
        elif not check(value):
            errors.append(f"{path}: {v.get('message', rule)}")
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key, sub in value.items():
            if props is not None and key in props:
                _structural_errors(props[key], sub, f"{path}.{key}", errors)
            elif isinstance(extra, dict):
                _structural_errors(extra, sub, f"{path}.{key}", errors)
            elif not preserve:
                errors.append(f"{path}: unknown field {key!r}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _structural_errors(schema["items"], item, f"{path}[{i}]", errors)


def _schema_errors(crd_schemas: dict, doc: dict) -> list[str]:
    import jsonschema

    group, _, version = doc["apiVersion"].partition("/")
    schema = crd_schemas.get((group, version, doc["kind"]))
    assert schema is not None, f"no served CRD version for {doc['apiVersion']} {doc['kind']}"
    full = copy.deepcopy(schema)
    full.setdefault("properties", {}).update({
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    })
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
              for e in jsonschema.Draft7Validator(full).iter_errors(doc)]
    _structural_errors(full, doc, "", errors)
    return errors


@pytest.mark.parametrize("rel,index,doc", OBJECTS, ids=[_id(r, d) for r, _, d in OBJECTS])
def test_manifest_matches_istio_crd_schema(crd_schemas, rel, index, doc):
    errors = _schema_errors(crd_schemas, doc)
    assert not errors, f"{rel} document {index} ({doc['kind']}):\n  " + "\n  ".join(errors)


def _mutated(kind: str, edit) -> dict:
    doc = copy.deepcopy(next(d for _, _, d in OBJECTS if d["kind"] == kind))
    edit(doc["spec"])
    return doc


@pytest.mark.parametrize("kind,edit,expected", [
    ("WasmPlugin", lambda s: s.update(failStrategy="FAIL_SOMETIMES"), "is not one of"),
    ("WasmPlugin", lambda s: s.update(pluginname=s.pop("pluginName")), "unknown field 'pluginname'"),
    ("WasmPlugin", lambda s: s["vmConfig"]["env"][0].update(value="x"), "value may only be set when valueFrom is INLINE"),
    ("WasmPlugin", lambda s: s.update(url="ftp://example.com/x.wasm"), "url must have schema one of"),
    ("WasmPlugin", lambda s: s.update(sha256="sha256:abc"), "does not match"),
    ("WasmPlugin", lambda s: s.update(targetRefs=[{"kind": "Service", "name": "x"}]), "only one of targetRefs or selector"),
    ("TrafficExtension", lambda s: s.update(lua={"inlineCode": "x"}), "exactly one of wasm or lua"),
    ("VirtualService", lambda s: s["http"][0].update(timeout="0s"), "valid duration greater than 1ms"),
    ("ServiceEntry", lambda s: s["ports"].append(dict(s["ports"][0])), "port number"),
    ("DestinationRule", lambda s: s["subsets"][0]["trafficPolicy"]["portLevelSettings"][0]["tls"].update(mode="TLS"),
     "is not one of"),
], ids=["enum", "typo", "cel-env", "cel-url", "pattern", "cel-selector", "cel-oneof", "cel-duration", "cel-ports",
        "dr-enum"])
def test_the_schema_check_catches_mistakes(crd_schemas, kind, edit, expected):
    """The checker itself: each mistake is reported, for the expected reason."""
    errors = _schema_errors(crd_schemas, _mutated(kind, edit))
    assert any(expected in e for e in errors), errors


# ---------------------------------------------------------------------------------------------
# The filter configs: the parser (in a real Envoy) accepts each, and they agree with each other.
# ---------------------------------------------------------------------------------------------

def _plugin_configs() -> list[tuple[str, dict, list[str], dict]]:
    """(id, filter config, env names the VM gets from the host, source object) for every
    WasmPlugin, TrafficExtension and EnvoyFilter."""
    out = []
    for rel, _, doc in OBJECTS:
        spec = doc["spec"]
        if doc["kind"] == "WasmPlugin":
            host_env = [e["name"] for e in spec.get("vmConfig", {}).get("env", []) if e.get("valueFrom") == "HOST"]
            out.append((_id(rel, doc), spec["pluginConfig"], host_env, doc))
        elif doc["kind"] == "TrafficExtension":
            wasm = spec["wasm"]
            host_env = [e["name"] for e in wasm.get("vmConfig", {}).get("env", []) if e.get("valueFrom") == "HOST"]
            out.append((_id(rel, doc), wasm["pluginConfig"], host_env, doc))
        elif doc["kind"] == "EnvoyFilter":
            tc = _envoyfilter_wasm(doc)
            host_env = tc["config"]["vm_config"].get("environment_variables", {}).get("host_env_keys", [])
            out.append((_id(rel, doc), json.loads(tc["config"]["configuration"]["value"]), host_env, doc))
    return out


def _envoyfilter_extensions(doc: dict) -> dict[str, dict]:
    """The EnvoyFilter's ECDS resources (EXTENSION_CONFIG, ADD): name -> typed_config."""
    out = {}
    for p in doc["spec"]["configPatches"]:
        if p["applyTo"] == "EXTENSION_CONFIG":
            assert p["patch"]["operation"] == "ADD"
            value = p["patch"]["value"]
            assert value["name"] not in out
            assert value["typed_config"]["@type"] == WASM_TYPE
            out[value["name"]] = value["typed_config"]
    return out


def _envoyfilter_wasm(doc: dict, upstream: bool = False) -> dict:
    """The EnvoyFilter's downstream Wasm filter config (or its upstream, per-attempt one: the
    root_id ending in "upstream", which is how the module tells the two apart)."""
    found = [tc for tc in _envoyfilter_extensions(doc).values()
             if tc["config"]["root_id"].endswith("upstream") == upstream]
    assert len(found) == 1, f"{doc['metadata']['name']}: {len(found)} {'upstream' if upstream else 'downstream'} Wasm configs"
    return found[0]


PLUGIN_CONFIGS = _plugin_configs()


def _protojson(value) -> str:
    """JSON as Istio hands a pluginConfig to the filter: the YAML becomes a protobuf Struct (every
    number a double) and istiod marshals it with protojson, which writes integral doubles below
    1e21 without a fraction ("10000", never "10000.0")."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _protojson(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_protojson(v) for v in value) + "]"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError("protojson cannot carry NaN or infinities in a Struct")
    if f.is_integer() and abs(f) < 1e21:
        return str(int(f))
    return repr(f)


def _credential_envs(cfg: dict) -> set[str]:
    return {p["credential"]["env"] for p in cfg["providers"] if "env" in p.get("credential", {})}


def _validate_in_envoy(tmp_path: Path, typed_config: dict, host_env: dict[str, str]):
    cfg = build_envoy_config({"providers": [], "chains": []}, free_port(), free_port(),
                             {"anthropic_primary": 1, "anthropic_fallback": 2})
    _wasm_filter(cfg)["typed_config"] = typed_config
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k not in host_env}
    env.update({k: v for k, v in host_env.items() if v is not None})
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
                          capture_output=True, text=True, timeout=60, env=env)


def _istio_like_typed_config(filter_json: str, host_env_keys: list[str], fail_reload: bool = True) -> dict:
    """The Wasm filter Istio generates for a WasmPlugin/TrafficExtension (pilot/pkg/model), with
    the module as the local file istio-agent would have fetched: no allow_on_headers_stop_iteration,
    no vm_id, the environment from host_env_keys."""
    config = {
        "name": "llm-apps.llm-failover",
        "root_id": "llm-failover",
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(WASM)}},
            "environment_variables": {"host_env_keys": host_env_keys},
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter_json},
    }
    if fail_reload:
        config["failure_policy"] = "FAIL_RELOAD"
    return {"@type": WASM_TYPE, "config": config}


@pytest.mark.parametrize("name,cfg,host_env,doc", PLUGIN_CONFIGS, ids=[p[0] for p in PLUGIN_CONFIGS])
def test_filter_config_loads_in_envoy(tmp_path, name, cfg, host_env, doc):
    # Every credential the filter reads from the environment is one the VM gets from the proxy.
    missing = _credential_envs(cfg) - set(host_env)
    assert not missing, f"{name}: credential env {sorted(missing)} not passed to the Wasm VM"
    keys = {k: f"test-{k.lower()}" for k in host_env}
    if doc["kind"] == "EnvoyFilter":
        # The EnvoyFilter's own Wasm config, as Envoy gets it once istio-agent has fetched the module.
        typed = copy.deepcopy(_envoyfilter_wasm(doc))
        remote = typed["config"]["vm_config"]["code"].pop("remote")
        assert remote["http_uri"]["uri"].startswith(("oci://", "https://", "http://"))
        assert re.fullmatch(r"[0-9a-f]{64}", remote["sha256"])
        typed["config"]["vm_config"]["code"]["local"] = {"filename": str(WASM)}
        assert typed["config"]["allow_on_headers_stop_iteration"] is True
    else:
        assert doc["spec"].get("failStrategy", doc["spec"].get("wasm", {}).get("failStrategy")) == "FAIL_RELOAD"
        typed = _istio_like_typed_config(_protojson(cfg), host_env)
    p = _validate_in_envoy(tmp_path, typed, keys)
    assert p.returncode == 0, f"{name}: Envoy refused the config:\n{(p.stdout + p.stderr)[-3000:]}"
    assert "invalid llm-failover config" not in p.stdout + p.stderr


def test_a_missing_key_in_the_proxy_environment_is_refused(tmp_path):
    """The check above can fail: without FALLBACK_API_KEY in the proxy's environment, the filter
    refuses the config and Envoy names the field."""
    name, cfg, host_env, _ = next(p for p in PLUGIN_CONFIGS if p[3]["kind"] == "WasmPlugin")
    keys = {k: "k" for k in host_env}
    keys["FALLBACK_API_KEY"] = None
    p = _validate_in_envoy(tmp_path, _istio_like_typed_config(_protojson(cfg), host_env), keys)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "field `providers[1].credential.env`" in out, out[-2000:]


# What only the EnvoyFilter install's config has: in-request failover needs the upstream filter,
# which a WasmPlugin or TrafficExtension cannot install (without it the filter would make one
# attempt per request anyway, but the config would promise what the install does not do).
IN_REQUEST_CHAIN_KEYS = ("failover", "deadlines")
IN_REQUEST_TOP_KEYS = ("retry_budget",)


def _without_in_request_failover(cfg: dict) -> dict:
    out = copy.deepcopy(cfg)
    for key in IN_REQUEST_TOP_KEYS:
        out.pop(key, None)
    for chain in out["chains"]:
        for key in IN_REQUEST_CHAIN_KEYS:
            chain.pop(key, None)
    return out


def test_every_copy_of_the_filter_config_is_the_same():
    """The config is written out once per install method and mode; they must not drift apart.
    The one intended difference: the EnvoyFilter copy is the others plus in-request failover
    (each chain's `failover` and `deadlines`, the top-level `retry_budget`)."""
    single = [(n, c) for n, c, _, d in PLUGIN_CONFIGS if d["kind"] != "EnvoyFilter"]
    envoyfilter = [(n, c) for n, c, _, d in PLUGIN_CONFIGS if d["kind"] == "EnvoyFilter"]
    assert len(single) == 4 and len(envoyfilter) == 2
    first_name, first = single[0]
    for name, cfg in single[1:]:
        assert cfg == first, f"{name} differs from {first_name}"
    for name, cfg in single:
        assert not any(k in cfg for k in IN_REQUEST_TOP_KEYS), name
        assert not any(k in chain for chain in cfg["chains"] for k in IN_REQUEST_CHAIN_KEYS), name
    for name, cfg in envoyfilter:
        assert _without_in_request_failover(cfg) == first, f"{name} differs from {first_name} beyond failover"
        assert all(k in cfg for k in IN_REQUEST_TOP_KEYS), name
        for chain in cfg["chains"]:
            assert all(k in chain for k in IN_REQUEST_CHAIN_KEYS), (name, chain["name"])
    assert envoyfilter[0][1] == envoyfilter[1][1], "the two EnvoyFilter copies differ"


def _patches(doc: dict, apply_to: str, operation: str | None = None) -> list[dict]:
    return [p for p in doc["spec"]["configPatches"]
            if p["applyTo"] == apply_to and (operation is None or p["patch"]["operation"] == operation)]


def test_wasm_settings_agree_across_install_methods():
    for rel, _, doc in OBJECTS:
        spec = doc["spec"]
        if doc["kind"] == "WasmPlugin":
            w, phase = spec, spec.get("phase")
            assert phase == "UNSPECIFIED_PHASE"
        elif doc["kind"] == "TrafficExtension":
            w, phase = spec["wasm"], spec.get("phase")
            assert phase == "UNSPECIFIED"
        else:
            continue
        assert w["pluginName"] == "llm-failover"
        assert w["failStrategy"] == "FAIL_RELOAD"
        assert w.get("type") == "HTTP"
        assert w["url"].startswith("oci://")
        assert spec["priority"] < 0
        assert all(m.get("mode") == "CLIENT" for m in spec["match"]), rel
    for rel, _, doc in OBJECTS:
        if doc["kind"] != "EnvoyFilter":
            continue
        down, up = _envoyfilter_wasm(doc), _envoyfilter_wasm(doc, upstream=True)
        ext_name = {id(tc): name for name, tc in _envoyfilter_extensions(doc).items()}
        # The downstream filter, by ECDS, right before the router.
        (insert,) = _patches(doc, "HTTP_FILTER", "INSERT_BEFORE")
        assert insert["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
        assert insert["patch"]["value"]["name"] == ext_name[id(down)]
        assert insert["patch"]["value"]["config_discovery"]["type_urls"] == [WASM_TYPE]
        # The upstream filter, by ECDS, merged into the router, before the codec.
        (merge,) = _patches(doc, "HTTP_FILTER", "MERGE")
        assert merge["match"]["listener"] == insert["match"]["listener"]
        assert merge["match"].get("context") == insert["match"].get("context")
        router = merge["patch"]["value"]["typed_config"]
        assert set(merge["patch"]["value"]) == {"typed_config"}, "a MERGE with a name would rename the router"
        assert router["@type"] == "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        first, codec = router["upstream_http_filters"]
        assert first["name"] == ext_name[id(up)]
        assert first["config_discovery"]["type_urls"] == [WASM_TYPE]
        assert codec["name"] == "envoy.filters.http.upstream_codec"
        # Both share one VM: same vm_id, runtime, code and environment; both may hold a stream.
        assert down["config"]["vm_config"] == up["config"]["vm_config"], rel
        assert down["config"]["vm_config"]["vm_id"] == "llm-failover"
        assert down["config"]["root_id"] == "llm-failover" and up["config"]["root_id"] == "llm-failover-upstream"
        for c in (down, up):
            assert c["config"]["allow_on_headers_stop_iteration"] is True
            assert c["config"]["failure_policy"] == "FAIL_RELOAD"
        assert "configuration" not in up["config"], "the upstream filter uses the downstream filter's config"


def test_proxy_env_patch_provides_every_key_the_sidecar_plugin_reads():
    patch = next(d for r, _, d in DOCS if r == "sidecar/proxy-env-patch.yaml")
    containers = patch["spec"]["template"]["spec"]["containers"]
    proxy = [c for c in containers if c["name"] == "istio-proxy"]
    assert len(proxy) == 1 and proxy[0]["image"] == "auto"
    provided = {e["name"] for e in proxy[0]["env"] if e["valueFrom"]["secretKeyRef"]["name"] == "llm-provider-keys"}
    for name, _, host_env, doc in PLUGIN_CONFIGS:
        if doc["metadata"]["namespace"] == "llm-apps":
            assert set(host_env) <= provided, f"{name}: {sorted(set(host_env) - provided)} not in the patch"


# ---------------------------------------------------------------------------------------------
# Routing: the header value the filter sets leads to the provider it chose.
# ---------------------------------------------------------------------------------------------

def _header_matches(spec: dict, value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in spec:
        return value == spec["exact"]
    if "prefix" in spec:
        return value.startswith(spec["prefix"])
    if "regex" in spec:
        return re.fullmatch(spec["regex"], value) is not None
    return True


def _route(vs: dict, gateway: str, port: int, headers: dict[str, str], path: str = "/v1/messages") -> dict:
    """The destination Istio picks for a request in this VirtualService (first matching route)."""
    spec = vs["spec"]
    vs_gateways = spec.get("gateways", ["mesh"])
    assert gateway in vs_gateways, f"{vs['metadata']['name']} is not bound to {gateway}"
    for route in spec["http"]:
        matches = route.get("match") or [{}]
        for m in matches:
            if gateway not in m.get("gateways", vs_gateways):
                continue
            if "port" in m and m["port"] != port:
                continue
            if "uri" in m and not _header_matches(m["uri"], path):
                continue
            if any(not _header_matches(s, headers.get(h)) for h, s in m.get("headers", {}).items()):
                continue
            dests = route["route"]
            assert len(dests) == 1, "one destination per route"
            return dests[0]["destination"]
    raise AssertionError(f"no route in {vs['metadata']['name']} for {gateway} port {port} {headers}")


def _mode(mode: str):
    objs = [d for r, _, d in OBJECTS if r.startswith(mode + "/")]
    cfg = next(c for n, c, _, d in PLUGIN_CONFIGS if n.startswith(mode + "/"))
    by_kind: dict[str, list[dict]] = {}
    for d in objs:
        by_kind.setdefault(d["kind"], []).append(d)
    return cfg, by_kind


def _tls_subset(drs: list[dict], host: str, subset: str, port: int) -> dict:
    dr = [d for d in drs if d["spec"]["host"] == host]
    assert len(dr) == 1, f"one DestinationRule for {host}"
    sub = [s for s in dr[0]["spec"]["subsets"] if s["name"] == subset]
    assert len(sub) == 1, f"subset {subset} of {host}"
    pls = [p for p in sub[0]["trafficPolicy"]["portLevelSettings"] if p["port"]["number"] == port]
    assert len(pls) == 1
    return pls[0]["tls"]


@pytest.mark.parametrize("mode,gateway", [("sidecar", "mesh"), ("egress-gateway", "istio-system/llm-egressgateway")])
def test_each_route_header_value_reaches_its_provider(mode, gateway):
    cfg, k = _mode(mode)
    header = cfg.get("route_header", "x-llm-failover-cluster")
    providers = cfg["providers"]
    hosts = {p["authority"] for p in providers}
    assert all(p.get("authority") for p in providers), "each provider names its host"
    assert len({p["cluster"] for p in providers}) == len(providers), "one label per provider"
    vs_by_host = {}
    for vs in k["VirtualService"]:
        for h in vs["spec"]["hosts"]:
            assert h not in vs_by_host, f"two VirtualServices for {h}"
            vs_by_host[h] = vs
    for host in hosts:
        # The filter sets :authority to the chosen provider's host, so the route is looked up in
        # that host's virtual host; every provider host must route every label the same way.
        vs = vs_by_host[host]
        for p in providers:
            dest = _route(vs, gateway, 80, {header: p["cluster"]})
            assert dest["host"] == p["authority"], (host, p["name"], dest)
            assert dest["port"]["number"] == 443
            tls = _tls_subset(k["DestinationRule"], dest["host"], dest["subset"], 443)
            assert tls == {"mode": "SIMPLE", "sni": p["authority"]}, (host, p["name"], tls)
        # Outside a chain (no header), a request goes to the host it addressed.
        assert _route(vs, gateway, 80, {})["host"] == host
        # A header value the filter never sets (a client cannot set it anyway) picks no provider route.
        assert _route(vs, gateway, 80, {header: "somebody-else"})["host"] == host
    for se in k["ServiceEntry"]:
        assert se["spec"]["location"] == "MESH_EXTERNAL" and se["spec"]["resolution"] == "DNS"
        ports = {(p["number"], p["protocol"]) for p in se["spec"]["ports"]}
        assert {(80, "HTTP"), (443, "HTTPS")} <= ports
    assert {h for se in k["ServiceEntry"] for h in se["spec"]["hosts"]} == hosts


def test_egress_gateway_carries_every_provider_host():
    cfg, k = _mode("egress-gateway")
    hosts = {p["authority"] for p in cfg["providers"]}
    (gw,) = k["Gateway"]
    (server,) = gw["spec"]["servers"]
    assert set(server["hosts"]) == hosts
    assert server["port"]["number"] == 80 and server["tls"]["mode"] == "ISTIO_MUTUAL"
    gw_name = f"{gw['metadata']['namespace']}/{gw['metadata']['name']}"
    egw = "istio-egressgateway.istio-system.svc.cluster.local"
    for vs in k["VirtualService"]:
        (host,) = vs["spec"]["hosts"]
        assert gw_name in vs["spec"]["gateways"] and "mesh" in vs["spec"]["gateways"]
        # Sidecars send the app's request to the gateway, whatever the header says.
        for h in ({}, {"x-llm-failover-cluster": "fallback"}):
            dest = _route(vs, "mesh", 80, h)
            assert dest["host"] == egw and dest["port"]["number"] == 80
            tls = _tls_subset(k["DestinationRule"], egw, dest["subset"], 80)
            assert tls == {"mode": "ISTIO_MUTUAL", "sni": host}
    for wp in k["WasmPlugin"] + k["TrafficExtension"]:
        assert wp["spec"]["selector"]["matchLabels"] == gw["spec"]["selector"]
        assert wp["metadata"]["namespace"] == gw["metadata"]["namespace"]


# ---------------------------------------------------------------------------------------------
# The EnvoyFilter install in a real Envoy: its patches applied, as istiod applies them, to a
# skeleton of what istiod generates for the proxy; the module delivered by ECDS, as istio-agent
# hands it over; the result validated and run.
# ---------------------------------------------------------------------------------------------

HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ECDS_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
AGGREGATE = "envoy.clusters.aggregate"

# Per mode: the patch context, the listener the apps' requests reach (name and port as istiod
# generates them) and the name of its route configuration (sidecar: the port; gateway:
# https.<port>.<port name>.<Gateway name>.<namespace> for an HTTPS server it terminates).
ISTIO_PROXY = {
    "sidecar": {"context": "SIDECAR_OUTBOUND", "gateway": "mesh", "listener": ("0.0.0.0_80", 80),
                "route_config": "80"},
    "egress-gateway": {"context": "GATEWAY", "gateway": "istio-system/llm-egressgateway",
                       "listener": ("0.0.0.0_8080", 8080),
                       "route_config": "https.80.https-llm-egress.llm-egressgateway.istio-system"},
}


def _envoyfilter(mode: str) -> dict:
    (doc,) = [d for r, _, d in OBJECTS if r == f"{mode}/envoyfilter.yaml"]
    return doc


def _istio_cluster_name(dest: dict) -> str:
    return f"outbound|{dest['port']['number']}|{dest.get('subset', '')}|{dest['host']}"


def _istio_skeleton(mode: str) -> dict:
    """What istiod generates for the proxy, reduced to what the patches touch: the HTTP listener
    the apps' requests reach, its HCM ending in Istio's router (no upstream filters of its own),
    the route configuration translated from egress.yaml's VirtualServices (a virtual host
    `<host>:80` per host, routes to `outbound|<port>|<subset>|<host>`; on a sidecar also the
    `allow_any` virtual host), and those clusters (static, on a closed local port)."""
    ctx = ISTIO_PROXY[mode]
    _, k = _mode(mode)
    dead = free_port()
    vhosts, clusters = [], {}
    for vs in k["VirtualService"]:
        routes = []
        for r in vs["spec"]["http"]:
            for m in r.get("match") or [{}]:
                if ctx["gateway"] not in m.get("gateways", vs["spec"].get("gateways", ["mesh"])):
                    continue
                (dest,) = [d["destination"] for d in r["route"]]
                cname = _istio_cluster_name(dest)
                clusters[cname] = dead
                match = {"prefix": "/"}
                if m.get("headers"):
                    match["headers"] = [{"name": h, "string_match": {"exact": s["exact"]}}
                                        for h, s in m["headers"].items()]
                routes.append({"name": r.get("name", ""), "match": match,
                               "route": {"cluster": cname, "timeout": r.get("timeout", "0s")}})
        for host in vs["spec"]["hosts"]:
            vhosts.append({"name": f"{host}:80", "domains": [host, f"{host}:80"], "routes": copy.deepcopy(routes)})
    if mode == "sidecar":
        clusters["PassthroughCluster"] = dead
        vhosts.append({"name": "allow_any", "domains": ["*"],
                       "routes": [{"name": "allow_any", "match": {"prefix": "/"},
                                   "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]})
    name, port = ctx["listener"]
    hcm = {"@type": HCM_TYPE, "stat_prefix": f"outbound_{name}", "codec_type": "AUTO",
           "route_config": {"name": ctx["route_config"], "virtual_hosts": vhosts},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {
        "listeners": [{"name": name, "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
                       "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": hcm}]}]}],
        "clusters": [{"name": n, "type": "STATIC", "connect_timeout": "1s",
                      "load_assignment": {"cluster_name": n, "endpoints": [{"lb_endpoints": [
                          {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}]}]}}
                     for n, p in clusters.items()],
    }


def _proto_merge(dst: dict, src: dict) -> None:
    """proto.Merge on the JSON form, as Istio's MERGE does: scalars replaced, messages merged,
    repeated fields appended; an Any merges only into an Any of the same type
    (util.MergeAnyWithAny; on a type mismatch Istio keeps the original)."""
    if "@type" in src and dst.get("@type", src["@type"]) != src["@type"]:
        return
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _proto_merge(dst[key], value)
        elif isinstance(value, list) and isinstance(dst.get(key), list):
            dst[key].extend(copy.deepcopy(value))
        else:
            dst[key] = copy.deepcopy(value)


def _rds_match(ctx: dict, rc_name: str, m: dict) -> bool:
    """routeConfigurationMatch of istiod (pilot/pkg/networking/core/envoyfilter/rc_patch.go)."""
    if m.get("name") and m["name"] != rc_name:
        return False
    if ctx["context"] != "GATEWAY":
        return not m.get("portNumber") or str(m["portNumber"]) == rc_name
    parts = rc_name.split(".")
    port, port_name, gateway = ((int(parts[1]), parts[2], f"{parts[4]}/{parts[3]}") if parts[0] == "https"
                                else (int(parts[1]), "", ""))
    return ((not m.get("portNumber") or m["portNumber"] == port)
            and (not m.get("portName") or m["portName"] == port_name)
            and (not m.get("gateway") or m["gateway"] == gateway))


def _apply_envoyfilter(mode: str, doc: dict) -> tuple[dict, dict[str, dict]]:
    """The skeleton with the EnvoyFilter's patches applied, with istiod's semantics for each
    (applyTo, operation) used here; any other combination fails the test rather than being
    skipped, and so does a patch that matches nothing (istiod would ignore it silently).
    Returns (static_resources, ECDS resources by name)."""
    ctx = ISTIO_PROXY[mode]
    res = _istio_skeleton(mode)
    ecds: dict[str, dict] = {}
    for i, cp in enumerate(doc["spec"]["configPatches"]):
        where = f"{mode}/envoyfilter.yaml configPatches[{i}] ({cp['applyTo']} {cp['patch']['operation']})"
        match, op, value = cp.get("match", {}), cp["patch"]["operation"], cp["patch"]["value"]
        assert match.get("context", "ANY") in ("ANY", ctx["context"]), f"{where}: context {match.get('context')}"
        hits = 0
        lmatch = match.get("listener", {})
        listeners = [x for x in res["listeners"]
                     if not lmatch.get("portNumber") or lmatch["portNumber"] == x["address"]["socket_address"]["port_value"]]
        if cp["applyTo"] == "EXTENSION_CONFIG" and op == "ADD":
            ecds[value["name"]] = copy.deepcopy(value["typed_config"])
            hits = 1
        elif cp["applyTo"] == "CLUSTER" and op == "ADD":
            assert value["name"] not in {c["name"] for c in res["clusters"]}, f"{where}: cluster name taken"
            res["clusters"].append(copy.deepcopy(value))
            hits = 1
        elif cp["applyTo"] == "LISTENER" and op == "MERGE":
            for listener in listeners:
                _proto_merge(listener, value)
                hits += 1
        elif cp["applyTo"] == "HTTP_FILTER" and op in ("INSERT_BEFORE", "MERGE"):
            fmatch = lmatch.get("filterChain", {}).get("filter", {})
            assert fmatch.get("name") == HCM_NAME and fmatch.get("subFilter", {}).get("name"), where
            sub = fmatch["subFilter"]["name"]
            for listener in listeners:
                for chain in listener["filter_chains"]:
                    for f in chain["filters"]:
                        if f["name"] != HCM_NAME:
                            continue
                        filters = f["typed_config"]["http_filters"]
                        idx = [j for j, h in enumerate(filters) if h["name"] == sub]
                        for j in idx:
                            if op == "INSERT_BEFORE":
                                filters.insert(j, copy.deepcopy(value))
                            else:
                                assert "name" not in value, f"{where}: a MERGE with a name renames the filter"
                                _proto_merge(filters[j], value)
                            hits += 1
        elif cp["applyTo"] == "HTTP_ROUTE" and op == "INSERT_FIRST":
            rmatch = match.get("routeConfiguration", {})
            assert "route" not in rmatch.get("vhost", {}), f"{where}: a route match is not modelled"
            for listener in res["listeners"]:
                for chain in listener["filter_chains"]:
                    for f in chain["filters"]:
                        rc = f["typed_config"].get("route_config") if f["name"] == HCM_NAME else None
                        if rc is None or not _rds_match(ctx, rc["name"], rmatch):
                            continue
                        for vh in rc["virtual_hosts"]:
                            if rmatch.get("vhost", {}).get("name") in (None, vh["name"]):
                                vh["routes"].insert(0, copy.deepcopy(value))
                                hits += 1
        else:
            raise AssertionError(f"{where}: not modelled by this test")
        assert hits, f"{where}: matches nothing in what istiod generates"
    return res, ecds


def _agent_fetched(typed: dict) -> dict:
    """What istio-agent hands Envoy for a Wasm ECDS resource: the remote module (oci:// or
    https://, with its sha256) replaced by the local file it fetched (pkg/wasm/convert.go)."""
    t = copy.deepcopy(typed)
    code = t["config"]["vm_config"]["code"]
    remote = code.pop("remote")
    assert remote["http_uri"]["uri"].startswith(("oci://", "https://"))
    assert re.fullmatch(r"[0-9a-f]{64}", remote["sha256"])
    code["local"] = {"filename": str(WASM)}
    return t


def _http_filter_lists(res: dict):
    """Every list of HTTP filters: each HCM's, and each router's upstream_http_filters."""
    for listener in res["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] == HCM_NAME:
                    filters = f["typed_config"]["http_filters"]
                    yield filters
                    for h in filters:
                        if h.get("typed_config", {}).get("@type") == ROUTER_TYPE:
                            yield h["typed_config"].get("upstream_http_filters", [])


def _bootstrap(mode: str, workdir: Path, ecds_by_file: bool, listen_port: int, admin_port: int) -> dict:
    """A complete Envoy bootstrap from the EnvoyFilter. The ECDS resources come from files
    (`ecds_by_file`: path_config_source in place of the ADS stream, the real ECDS code path) or are
    put inline (typed_config in place of config_discovery)."""
    res, ecds = _apply_envoyfilter(mode, _envoyfilter(mode))
    for filters in _http_filter_lists(res):
        for j, h in enumerate(filters):
            cd = h.get("config_discovery")
            if cd is None:
                continue
            assert h["name"] in ecds, f"{h['name']}: no EXTENSION_CONFIG of that name"
            resource = _agent_fetched(ecds[h["name"]])
            assert resource["@type"] in cd["type_urls"]
            assert "ads" in cd["config_source"]
            if ecds_by_file:
                path = workdir / f"ecds-{h['name']}.json"
                path.write_text(json.dumps({"version_info": "1", "resources": [
                    {"@type": ECDS_TYPE, "name": h["name"], "typed_config": resource}]}))
                source = {k: v for k, v in cd["config_source"].items() if k != "ads"}
                source.update({"path_config_source": {"path": str(path)}, "resource_api_version": "V3"})
                cd["config_source"] = source
            else:
                filters[j] = {"name": h["name"], "typed_config": resource}
    (listener,) = res["listeners"]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    # A node identity as istio-agent gives Envoy (ECDS subscriptions need one).
    node = {"id": f"{'router' if mode == 'egress-gateway' else 'sidecar'}~10.0.0.1~test.{mode}~cluster.local",
            "cluster": f"test.{mode}"}
    return {"node": node,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": res}


def _envoy_binaries() -> list[tuple[str, str]]:
    """(version, path): the Envoy the suite runs (ENVOY, default the pinned 1.40), and the pinned
    1.40 and 1.36.4 (the oldest supported) when present."""
    out, seen = [], set()
    try:
        candidates = [envoy_binary()]
    except RuntimeError:
        candidates = []
    candidates += [str(ROOT / ".tools" / "bin" / "envoy"), str(ROOT / ".tools" / "envoy-1.36.4" / "envoy" / "_bin" / "envoy")]
    for path in candidates:
        if not os.access(path, os.X_OK) or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        v = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"/(\d+\.\d+\.\d+)/", v)
        out.append((f"envoy-{m.group(1) if m else 'unknown'}", path))
    return out


ENVOYS = _envoy_binaries()
EF_KEYS = {"ANTHROPIC_API_KEY": "sk-ant-test-primary", "FALLBACK_API_KEY": "test-fallback-key"}


def _run_env() -> dict[str, str]:
    return {**os.environ, **EF_KEYS}


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _added_clusters(doc: dict) -> dict[str, dict]:
    return {p["patch"]["value"]["name"]: p["patch"]["value"] for p in _patches(doc, "CLUSTER", "ADD")}


def _failover_route(doc: dict) -> dict:
    (route,) = _patches(doc, "HTTP_ROUTE")
    return route["patch"]["value"]


@pytest.mark.parametrize("mode", ["sidecar", "egress-gateway"])
def test_envoyfilter_clusters_and_route_fit_the_filter_config(mode):
    """What in-request failover needs of the Envoy config, checked against the EnvoyFilter's own
    filter config: a cluster per provider whose endpoints name that provider, TLS to its host; an
    aggregate per failover cluster, its sub-clusters in chain order, for every ordered subset of
    a chain's providers (as scripts/failover_clusters.py generates them); the route that reads the
    cluster from the filter's header and retries as the filter expects."""
    doc = _envoyfilter(mode)
    cfg = json.loads(_envoyfilter_wasm(doc)["config"]["configuration"]["value"])
    clusters = _added_clusters(doc)
    cluster_of = {p["name"]: p["cluster"] for p in cfg["providers"]}
    for p in cfg["providers"]:
        c = clusters[p["cluster"]]
        assert c["type"] == "LOGICAL_DNS"
        (ep,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert c["load_assignment"]["cluster_name"] == c["name"]
        assert ep["metadata"] == {"filter_metadata": {"llm_failover": {"provider": p["name"]}}}, p["name"]
        addr = ep["endpoint"]["address"]["socket_address"]
        assert (addr["address"], addr["port_value"]) == (p["authority"], 443)
        tls = c["transport_socket"]["typed_config"]
        assert tls["@type"].endswith("UpstreamTlsContext")
        assert tls["sni"] == p["authority"]
        vc = tls["common_tls_context"]["validation_context"]
        assert vc["trusted_ca"]["filename"]
        assert vc["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": p["authority"]}}]
    script = _load_script("failover_clusters")
    aggregates = {n: c for n, c in clusters.items() if c.get("cluster_type", {}).get("name") == AGGREGATE}
    expected = set()
    for chain in cfg["chains"]:
        names = [e if isinstance(e, str) else e["provider"] for e in chain["providers"]]
        wanted = {script.cluster_name(chain["name"], s): s for s in script.subsets(names, False)}
        got = {fc["cluster"]: fc["providers"] for fc in chain["failover"]["clusters"]}
        assert got == wanted, f"{chain['name']}: failover clusters are not every ordered subset"
        for name, providers in got.items():
            agg = aggregates[name]
            assert agg["cluster_type"]["typed_config"]["clusters"] == [cluster_of[n] for n in providers]
            assert agg["lb_policy"] == "CLUSTER_PROVIDED"
            assert agg["circuit_breakers"]["thresholds"][0]["max_retries"] >= 10000
            expected.add(name)
    assert set(aggregates) == expected, "an aggregate cluster no chain uses"
    assert set(clusters) == expected | set(cluster_of.values())
    # The route: cluster from the filter's header, the retry policy in-request failover relies on.
    route = _failover_route(doc)
    header = cfg.get("route_header", "x-llm-failover-cluster")
    assert route["match"] == {"prefix": "/", "headers": [{"name": header, "present_match": True}]}
    assert route["route"]["cluster_header"] == header
    rp = route["route"]["retry_policy"]
    assert set(rp["retry_on"].split(",")) == {"reset", "connect-failure", "refused-stream", "retriable-headers"}
    assert rp["num_retries"] == 1
    assert rp["retriable_headers"] == [{"name": "x-llm-failover-retry", "present_match": True}]
    assert rp["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    for chain in cfg["chains"]:
        same = chain["failover"].get("same_provider_retries", 0)
        assert rp["retry_priority"]["typed_config"]["update_frequency"] == same + 1
    assert rp["retry_back_off"] == {"base_interval": "0.001s", "max_interval": "0.01s"}
    # Timeouts: the route's bounds the whole answer, as egress.yaml's routes do; every deadline
    # of the filter fits under it, and a breaker probe outlives it.
    route_ms = _duration_ms(route["route"]["timeout"])
    _, k = _mode(mode)
    assert {r.get("timeout") for vs in k["VirtualService"] for r in vs["spec"]["http"]
            if r["route"][0]["destination"]["port"]["number"] == 443} == {route["route"]["timeout"]}
    for chain in cfg["chains"]:
        assert all(0 < v < route_ms for v in chain["deadlines"].values()), chain["deadlines"]
    assert cfg["breaker"]["probe_timeout_ms"] > route_ms


@pytest.mark.parametrize("mode", ["sidecar", "egress-gateway"])
def test_the_envoyfilter_patches_apply_to_what_istiod_generates(tmp_path, mode):
    """Every patch lands (_apply_envoyfilter fails on one that matches nothing), and the result
    has the shape of envoy/demo.yaml: the downstream filter right before the router, the router's
    upstream filters = [the upstream Wasm filter, the codec], the failover route first in each
    virtual host with the VirtualService routes after it, room for held bodies."""
    res, ecds = _apply_envoyfilter(mode, _envoyfilter(mode))
    (listener,) = res["listeners"]
    assert listener["per_connection_buffer_limit_bytes"] >= 32 * 1024 * 1024
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    down = next(n for n, tc in ecds.items() if not tc["config"]["root_id"].endswith("upstream"))
    up = next(n for n, tc in ecds.items() if tc["config"]["root_id"].endswith("upstream"))
    assert names[-2:] == [down, "envoy.filters.http.router"]
    router = hcm["http_filters"][-1]["typed_config"]
    assert router["@type"] == ROUTER_TYPE
    assert [f["name"] for f in router["upstream_http_filters"]] == [up, "envoy.filters.http.upstream_codec"]
    skeleton = _istio_skeleton(mode)
    istio_routes = {vh["name"]: [r["name"] for r in vh["routes"]]
                    for vh in skeleton["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]}
    for vh in hcm["route_config"]["virtual_hosts"]:
        assert vh["routes"][0]["route"].get("cluster_header"), vh["name"]
        assert [r["name"] for r in vh["routes"][1:]] == istio_routes[vh["name"]]


def test_the_patch_model_refuses_a_patch_that_matches_nothing():
    """The check above can fail: a route patch for a port (or a gateway server) that istiod does
    not generate is reported, not skipped."""
    for mode, edit in [("sidecar", {"portNumber": 8080}), ("egress-gateway", {"portName": "http"})]:
        doc = copy.deepcopy(_envoyfilter(mode))
        (route,) = _patches(doc, "HTTP_ROUTE")
        route["match"]["routeConfiguration"].update(edit)
        with pytest.raises(AssertionError, match="matches nothing"):
            _apply_envoyfilter(mode, doc)


@pytest.mark.parametrize("envoy", [p for _, p in ENVOYS], ids=[v for v, _ in ENVOYS])
@pytest.mark.parametrize("mode", ["sidecar", "egress-gateway"])
def test_envoyfilter_install_validates_in_envoy(tmp_path, mode, envoy):
    """The assembled bootstrap in `envoy --mode validate`: with the ECDS resources inline, Envoy
    builds both Wasm filters (the module's on_configure runs for the downstream config, and the
    upstream filter starts in the same VM); with them delivered by ECDS (from files, as the ADS
    stream would), Envoy accepts config_discovery inside the router's upstream_http_filters."""
    for by_file in (False, True):
        workdir = tmp_path / ("ecds" if by_file else "inline")
        workdir.mkdir()
        path = workdir / "envoy.json"
        path.write_text(json.dumps(_bootstrap(mode, workdir, by_file, free_port(), free_port()), indent=1))
        p = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
                           capture_output=True, text=True, timeout=60, env=_run_env())
        out = p.stdout + p.stderr
        assert p.returncode == 0, f"{mode} ({'ECDS' if by_file else 'inline'}): Envoy refused it:\n{out[-3000:]}"
        if not by_file:
            assert "configured 2 providers, 1 chains" in out, out[-3000:]
            assert "upstream filter llm-failover-upstream ready" in out, out[-3000:]
        assert "invalid llm-failover config" not in out
        for secret in EF_KEYS.values():
            assert secret not in out


def _plaintext_to(res: dict, ports: dict[str, int]) -> None:
    """The ADDed provider clusters pointed at local mock providers, in plain text (the mocks speak
    no TLS): static endpoints, no transport socket, HTTP/1.1. Endpoint metadata kept."""
    for c in res["clusters"]:
        for ep in c.get("load_assignment", {}).get("endpoints", [{}])[0].get("lb_endpoints", []):
            provider = ep.get("metadata", {}).get("filter_metadata", {}).get("llm_failover", {}).get("provider")
            if provider is None:
                continue
            c["type"] = "STATIC"
            c.pop("dns_lookup_family", None)
            c.pop("transport_socket")
            c.pop("typed_extension_protocol_options")
            ep["endpoint"]["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[provider])


@pytest.mark.parametrize("envoy", [p for _, p in ENVOYS], ids=[v for v, _ in ENVOYS])
@pytest.mark.parametrize("mode", ["sidecar", "egress-gateway"])
def test_envoyfilter_install_fails_over_within_the_request(tmp_path, monkeypatch, mode, envoy):
    """The assembled install running for real, the module delivered by ECDS: with the primary
    answering 529, the request the app sent to api.anthropic.com gets the fallback's answer, in
    the same request (x-llm-attempts: 2), each attempt with its own provider's key; a stream too.
    A request outside the filter's chains keeps the VirtualService's route."""
    from mock_provider import start_mock
    from stack import MESSAGE_BODY, Envoy

    mocks, ports = {}, {}
    try:
        for name in ("primary", "fallback"):
            mocks[name], ports[name] = start_mock(name)
        monkeypatch.setenv("ENVOY", envoy)
        for k, v in EF_KEYS.items():
            monkeypatch.setenv(k, v)
        for attempt in range(3):
            cfg = _bootstrap(mode, tmp_path, True, free_port(), free_port())
            _plaintext_to(cfg["static_resources"], ports)
            proxy = Envoy(cfg, tmp_path)
            try:
                proxy.start()
                break
            except RuntimeError as e:
                proxy.stop()
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
        try:
            mocks["primary"].set_fault({"mode": "529"})
            headers = {"host": "api.anthropic.com", "content-type": "application/json", "x-api-key": "the-apps-own"}
            r = requests.post(proxy.url + "/v1/messages", data=json.dumps(MESSAGE_BODY), headers=headers, timeout=15)
            got = (r.status_code, r.headers.get("x-llm-provider"), r.headers.get("x-llm-attempts"))
            assert got == (200, "fallback", "2"), (got, dict(r.headers), r.text[:500])
            assert r.json()["content"][0]["text"] == "Hello from fallback"
            stream = requests.post(proxy.url + "/v1/messages", data=json.dumps({**MESSAGE_BODY, "stream": True}),
                                   headers=headers, timeout=15)
            got = (stream.status_code, stream.headers.get("x-llm-provider"), stream.headers.get("x-llm-attempts"))
            assert got == (200, "fallback", "2"), (got, dict(stream.headers), stream.text[:500])
            assert "Hello from fallback" in "".join(
                d.get("delta", {}).get("text", "") for _, d in sse_events(stream.text))
            keys = {n: [q["credential"] for q in m.snapshot_requests()] for n, m in mocks.items()}
            assert keys == {"primary": [{"x-api-key": EF_KEYS["ANTHROPIC_API_KEY"]}] * 2,
                            "fallback": [{"x-api-key": EF_KEYS["FALLBACK_API_KEY"]}] * 2}, keys
            # Outside the chains: no header, so the VirtualService route (here: its cluster on a
            # closed port), untouched by either filter.
            other = requests.get(proxy.url + "/v1/models", headers={"host": "api.anthropic.com"}, timeout=15)
            assert other.status_code == 503 and "x-llm-degraded" not in other.headers, other.text
            assert sum(len(m.snapshot_requests()) for m in mocks.values()) == 4
            assert not [line for line in proxy.log().splitlines() if "panicked" in line or "Function: proxy_on" in line]
        except BaseException:
            print("---- envoy log (tail) ----\n" + proxy.log()[-6000:])
            raise
        finally:
            proxy.stop()
    finally:
        for m in mocks.values():
            m.shutdown()


def test_the_readme_breaks_the_primary_cluster_of_the_envoyfilter():
    """istio/README.md's step 5 patches the EnvoyFilter by index: that JSON pointer must lead to
    the primary's endpoint address in both EnvoyFilters."""
    text = (ISTIO / "README.md").read_text()
    (pointer,) = re.findall(r'"path": "(/spec/configPatches/[^"]+)"', text)
    for mode in ("sidecar", "egress-gateway"):
        node = _envoyfilter(mode)
        for part in pointer.strip("/").split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert node == "api.anthropic.com", (mode, node)
