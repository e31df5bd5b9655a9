#!/usr/bin/env python3
"""Packages the filter module as a Wasm OCI artifact, without a Docker engine.

    python3 scripts/oci.py                       # build target/oci/llm-failover/ and .tar
    python3 scripts/oci.py --out DIR --tag 0.1.0 # elsewhere, with another tag
    python3 scripts/oci.py --push REGISTRY/llm-failover:TAG   # build, then push it

Output: an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`) and a
tarball of it (the `oci-archive` form), for target/wasm32-wasip1/release/llm_failover.wasm.

The format is the Wasm artifact variant ("oci" variant of the solo-io Wasm image spec) that
Istio's Wasm fetcher (istio pkg/wasm/imagefetcher.go) accepts:

  manifest  application/vnd.oci.image.manifest.v1+json
  config    application/vnd.module.wasm.config.v1+json        (runtime metadata, JSON)
  layers    application/vnd.module.wasm.config.v1+json        (the same runtime metadata)
            application/vnd.module.wasm.content.layer.v1+wasm (the module bytes, uncompressed)

Istio requires exactly two layers for this variant ("number of layers must be 2") and takes the
one whose media type is the Wasm content type, reading its blob as the raw module. A manifest
with the Wasm layer alone is rejected by Istio, which is why the runtime metadata is also a layer.

Which sha256 Istio checks: for an `oci://` URL, the WasmPlugin's `sha256` is compared with the
image *manifest* digest (istio pkg/wasm/cache.go compares it with the digest PrepareFetch returns,
which is the manifest's); for `http(s)://` URLs it is the sha256 of the module file itself.
Both are printed.

Pushing uses a standard client if one is installed, first found of: oras, crane, skopeo. All
three copy the layout as it is, so the pushed manifest digest is the one printed here.

Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULE = ROOT / "target" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
DEFAULT_OUT = ROOT / "target" / "oci"
NAME = "llm-failover"
ROOT_ID = "llm-failover"  # the filter's root_id, the WasmPlugin's pluginName

MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
INDEX_MT = "application/vnd.oci.image.index.v1+json"
WASM_CONFIG_MT = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_MT = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_MAGIC = b"\x00asm"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    """Deterministic JSON: the same inputs always give the same digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def cargo_package() -> dict[str, str]:
    """name, version, license and description from Cargo.toml's [package] (no TOML parser needed)."""
    out: dict[str, str] = {}
    try:
        text = (ROOT / "Cargo.toml").read_text()
    except OSError:
        return out
    section = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
            continue
        m = re.match(r'^(name|version|license|description)\s*=\s*"([^"]*)"', line)
        if section == "[package]" and m:
            out[m.group(1)] = m.group(2)
    return out


def git_revision() -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = p.stdout.strip()
    return rev if p.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", rev) else None


def abi_versions(module: bytes) -> list[str]:
    """The proxy-wasm ABI versions the module exports (`proxy_abi_version_0_2_1` and the like)."""
    found = sorted({m.decode() for m in re.findall(rb"proxy_abi_version_[0-9_]+", module)})
    return found


def build(module_path: Path, out: Path, tag: str, revision: str | None) -> dict:
    """Writes the layout directory and its tarball; returns what was built."""
    module = module_path.read_bytes()
    if len(module) < 8 or module[:4] != WASM_MAGIC:
        raise SystemExit(f"{module_path} is not a Wasm module (no \\0asm magic number)")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag):
        raise SystemExit(f"--tag {tag!r} is not a valid OCI tag")

    pkg = cargo_package()
    runtime_config = canonical_json({
        "type": "envoy_proxy",
        "abiVersions": abi_versions(module),
        "config": {"rootIds": [ROOT_ID]},
    })
    module_digest = "sha256:" + sha256_hex(module)
    config_digest = "sha256:" + sha256_hex(runtime_config)

    annotations = {
        "org.opencontainers.image.title": NAME,
        "org.opencontainers.image.description": pkg.get(
            "description", "proxy-wasm HTTP filter: LLM provider failover and degraded mode"),
        "org.opencontainers.image.version": pkg.get("version", tag),
    }
    if pkg.get("license"):
        annotations["org.opencontainers.image.licenses"] = pkg["license"]
    if revision:
        annotations["org.opencontainers.image.revision"] = revision
    # No creation time by default, so that the same module gives the same digest; a reproducible
    # build can still pin one.
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        import datetime

        ts = datetime.datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), tz=datetime.timezone.utc)
        annotations["org.opencontainers.image.created"] = ts.strftime("%Y-%m-%dT%H:%M:%SZ")

    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MT,
        "config": {"mediaType": WASM_CONFIG_MT, "digest": config_digest, "size": len(runtime_config)},
        "layers": [
            {"mediaType": WASM_CONFIG_MT, "digest": config_digest, "size": len(runtime_config),
             "annotations": {"org.opencontainers.image.title": "runtime-config.json"}},
            {"mediaType": WASM_LAYER_MT, "digest": module_digest, "size": len(module),
             "annotations": {"org.opencontainers.image.title": module_path.name}},
        ],
        "annotations": annotations,
    })
    manifest_digest = "sha256:" + sha256_hex(manifest)
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": INDEX_MT,
        "manifests": [{
            "mediaType": MANIFEST_MT, "digest": manifest_digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    })
    files = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        f"blobs/sha256/{config_digest[7:]}": runtime_config,
        f"blobs/sha256/{module_digest[7:]}": module,
        f"blobs/sha256/{manifest_digest[7:]}": manifest,
    }

    out.mkdir(parents=True, exist_ok=True)
    layout = out / NAME
    if layout.exists():
        shutil.rmtree(layout)  # stale blobs of an older module must not linger
    for rel, data in files.items():
        path = layout / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    tar_path = out / f"{NAME}.tar"
    mtime = int(os.environ["SOURCE_DATE_EPOCH"]) if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit() else 0
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(files[rel]), 0o644, mtime
            tar.addfile(info, io.BytesIO(files[rel]))

    return {
        "layout": layout,
        "tarball": tar_path,
        "tag": tag,
        "manifest_digest": manifest_digest,
        "module_sha256": module_digest[7:],
        "module_size": len(module),
        "module": module_path,
    }


def report(r: dict) -> None:
    print(f"module:          {r['module']} ({r['module_size']} bytes)")
    print(f"OCI layout:      {r['layout']}  (tag {r['tag']})")
    print(f"OCI tarball:     {r['tarball']}")
    print(f"manifest digest: {r['manifest_digest']}")
    print(f"module sha256:   {r['module_sha256']}")
    print("WasmPlugin sha256 to use:")
    print(f"  url: oci://...        -> sha256: {r['manifest_digest'][7:]}   (Istio compares the manifest digest)")
    print(f"  url: https://...wasm  -> sha256: {r['module_sha256']}   (the module file itself)")


def push(r: dict, ref: str, plain_http: bool) -> int:
    layout, tag = r["layout"], r["tag"]
    if shutil.which("oras"):
        cmd = ["oras", "cp", "--from-oci-layout", f"{layout}:{tag}", ref]
        if plain_http:
            cmd.insert(2, "--to-plain-http")
    elif shutil.which("crane"):
        cmd = ["crane", "push", str(layout), ref]
        if plain_http:
            cmd.append("--insecure")
    elif shutil.which("skopeo"):
        # --preserve-digests: fail rather than let skopeo rewrite the manifest.
        cmd = ["skopeo", "copy", "--preserve-digests", f"oci:{layout}:{tag}", f"docker://{ref}"]
        if plain_http:
            cmd.insert(2, "--dest-tls-verify=false")
    else:
        print(
            "no OCI client found to push with. Install one of:\n"
            "  oras    https://oras.land (then: oras cp --from-oci-layout LAYOUT:TAG REF)\n"
            "  crane   go install github.com/google/go-containerregistry/cmd/crane@latest\n"
            "  skopeo  apt-get install skopeo / brew install skopeo\n"
            f"or push {r['tarball']} (an oci-archive) with any tool that takes one.",
            file=sys.stderr,
        )
        return 2
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        print(f"push failed (exit {rc})", file=sys.stderr)
        return rc
    print(f"pushed {ref}")
    print("WasmPlugin:")
    print(f"  url: oci://{ref}")
    print(f"  sha256: {r['manifest_digest'][7:]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", type=Path, default=DEFAULT_MODULE, help="the Wasm module (default: the release build)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output directory; the layout goes to OUT/{NAME}/ and the tarball to OUT/{NAME}.tar")
    ap.add_argument("--tag", default=None, help="tag recorded in the layout's index.json (default: the crate version)")
    ap.add_argument("--push", metavar="REF", help="after building, push to REF, e.g. ghcr.io/acme/llm-failover:0.1.0")
    ap.add_argument("--plain-http", action="store_true", help="push over plain HTTP (a local test registry)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON (for scripts and tests)")
    args = ap.parse_args(argv)

    if not args.module.is_file():
        print(f"{args.module} is missing: run `make build` first", file=sys.stderr)
        return 1
    tag = args.tag
    if tag is None:
        last = args.push.rsplit("/", 1)[-1] if args.push else ""
        tag = last.rsplit(":", 1)[1] if ":" in last and "@" not in last else None
    tag = tag or cargo_package().get("version") or "latest"
    r = build(args.module, args.out, tag, git_revision())
    if args.json:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in r.items()}))
    else:
        report(r)
    if args.push:
        return push(r, args.push, args.plain_http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
