"""scripts/oci.py: the Wasm OCI artifact (image layout + tarball) that Istio's fetcher accepts.

Structure is checked against the OCI image layout spec and against what Istio's fetcher
(istio pkg/wasm/imagefetcher.go, the "oci" variant) requires: an OCI manifest with exactly two
layers, one of them of media type application/vnd.module.wasm.content.layer.v1+wasm holding the
raw module; and the WasmPlugin sha256 for an oci:// URL is the manifest digest.

When a registry (Debian's docker-registry) and skopeo are installed, the artifact is also pushed
to a throwaway local registry and read back over the registry API.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from stack import WASM, free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "oci.py"

MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MT = "application/vnd.module.wasm.config.v1+json"
WASM_MT = "application/vnd.module.wasm.content.layer.v1+wasm"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run_oci(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("oci")
    p = run_oci("--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    return out, result


def blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    assert algo == "sha256"
    data = (layout / "blobs" / "sha256" / hexd).read_bytes()
    assert sha256(data) == digest, f"blob {digest} does not hash to its name"
    return data


def istio_extract(manifest: dict, read_blob) -> bytes:
    """What Istio's fetcher does with an OCI manifest (the "oci" artifact variant): exactly two
    layers, take the one of the Wasm content type, its blob is the module."""
    layers = manifest["layers"]
    assert len(layers) == 2, "Istio: number of layers must be 2"
    wasm = [layer for layer in layers if layer["mediaType"] == WASM_MT]
    assert wasm, f"Istio: could not find the layer of type {WASM_MT}"
    module = read_blob(wasm[0]["digest"])
    assert module[:4] == b"\0asm", "Istio: fetched Wasm binary is invalid"
    return module


def test_layout_is_an_oci_image_layout_of_the_wasm_artifact(built):
    out, result = built
    layout = out / "llm-failover"
    module = WASM.read_bytes()

    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (desc,) = index["manifests"]
    assert desc["mediaType"] == MANIFEST_MT
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == result["tag"]
    manifest_bytes = blob(layout, desc["digest"])
    assert desc["size"] == len(manifest_bytes)
    assert desc["digest"] == result["manifest_digest"]

    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MANIFEST_MT
    assert manifest["config"]["mediaType"] == CONFIG_MT
    config = blob(layout, manifest["config"]["digest"])
    assert manifest["config"]["size"] == len(config)
    runtime = json.loads(config)
    assert runtime["type"] == "envoy_proxy"
    assert runtime["config"]["rootIds"] == ["llm-failover"]
    assert runtime["abiVersions"] and all(v.startswith("proxy_abi_version_") for v in runtime["abiVersions"])

    wasm_layers = [layer for layer in manifest["layers"] if layer["mediaType"] == WASM_MT]
    assert len(wasm_layers) == 1
    (wl,) = wasm_layers
    assert wl["digest"] == sha256(module)
    assert wl["size"] == len(module)
    assert blob(layout, wl["digest"]) == module
    assert wl["annotations"]["org.opencontainers.image.title"] == WASM.name
    for layer in manifest["layers"]:
        data = blob(layout, layer["digest"])
        assert layer["size"] == len(data)
        assert layer["mediaType"] in (CONFIG_MT, WASM_MT)

    ann = manifest["annotations"]
    assert ann["org.opencontainers.image.title"] == "llm-failover"
    assert ann["org.opencontainers.image.version"]
    # Nothing in the layout but what the manifest and index reference.
    names = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    referenced = {desc["digest"][7:], manifest["config"]["digest"][7:]} | {x["digest"][7:] for x in manifest["layers"]}
    assert names == referenced

    assert istio_extract(manifest, lambda d: blob(layout, d)) == module
    assert result["module_sha256"] == hashlib.sha256(module).hexdigest()


def test_tarball_holds_the_same_layout(built):
    out, _ = built
    layout = out / "llm-failover"
    with tarfile.open(out / "llm-failover.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    on_disk = {p.relative_to(layout).as_posix(): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert files == on_disk
    assert {"oci-layout", "index.json"} <= set(files)


def test_output_is_deterministic_and_prints_both_digests(tmp_path, built):
    _, first = built
    p = run_oci("--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    # Same module, same commit: same manifest digest (no timestamps in the artifact).
    assert f"manifest digest: {first['manifest_digest']}" in p.stdout
    assert f"module sha256:   {first['module_sha256']}" in p.stdout
    assert f"sha256: {first['manifest_digest'][7:]}" in p.stdout
    assert (tmp_path / "llm-failover.tar").is_file()


def test_push_without_a_client_says_what_to_install(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = str(empty)
    p = run_oci("--out", str(tmp_path / "o"), "--push", "registry.example.com/llm-failover:0.1.0", env=env)
    assert p.returncode == 2
    for tool in ("oras", "crane", "skopeo"):
        assert tool in p.stderr
    assert (tmp_path / "o" / "llm-failover" / "index.json").is_file()


def test_rejects_a_file_that_is_not_wasm(tmp_path):
    bogus = tmp_path / "x.wasm"
    bogus.write_bytes(b"not a module")
    p = run_oci("--module", str(bogus), "--out", str(tmp_path / "o"))
    assert p.returncode != 0
    assert "not a Wasm module" in p.stderr + p.stdout


REGISTRY = shutil.which("docker-registry") or shutil.which("registry")


@pytest.mark.skipif(not (REGISTRY and shutil.which("skopeo")),
                    reason="needs a local registry binary and skopeo (Debian: apt-get install docker-registry skopeo)")
def test_push_to_a_local_registry_keeps_the_manifest_digest(tmp_path):
    port = free_port()
    (tmp_path / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    reg = subprocess.Popen([REGISTRY, "serve", str(tmp_path / "config.yml")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if requests.get(base + "/v2/", timeout=0.5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        ref = f"127.0.0.1:{port}/platform/llm-failover:0.1.0"
        env = {k: v for k, v in os.environ.items() if k != "PATH"}
        env["PATH"] = os.pathsep.join(d for d in (str(Path(shutil.which("skopeo")).parent), "/usr/bin", "/bin"))
        p = run_oci("--out", str(tmp_path / "o"), "--push", ref, "--plain-http", "--json", env=env)
        assert p.returncode == 0, p.stdout + p.stderr
        result = json.loads(p.stdout.splitlines()[0])
        r = requests.get(f"{base}/v2/platform/llm-failover/manifests/0.1.0", headers={"Accept": MANIFEST_MT}, timeout=5)
        assert r.status_code == 200
        assert r.headers["Docker-Content-Digest"] == result["manifest_digest"] == sha256(r.content)
        assert f"sha256: {result['manifest_digest'][7:]}" in p.stdout
        manifest = r.json()

        def read_blob(digest: str) -> bytes:
            b = requests.get(f"{base}/v2/platform/llm-failover/blobs/{digest}", timeout=10)
            assert b.status_code == 200 and sha256(b.content) == digest
            return b.content

        assert istio_extract(manifest, read_blob) == WASM.read_bytes()
    finally:
        os.killpg(reg.pid, signal.SIGTERM)
        reg.wait(timeout=10)
