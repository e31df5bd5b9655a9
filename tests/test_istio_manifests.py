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
- routing: the VirtualServices are evaluated for each route-header value the filter can set.
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
import yaml

from stack import WASM, _wasm_filter, build_envoy_config, envoy_binary, free_port

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
