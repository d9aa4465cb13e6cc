#!/usr/bin/env python3
"""Writes a module as an OCI image (image layout directory). No Docker needed; `skopeo copy
oci:DIR:TAG docker://REGISTRY/NAME:TAG` pushes it.

- A .wasm module: in the Wasm OCI format Istio pulls for WasmPlugin `url: oci://…`: one layer of
  media type application/vnd.module.wasm.content.layer.v1+wasm holding the module as is, a
  config of media type application/vnd.module.wasm.config.v1+json.
- The native module (an ELF shared object, libfhirgate.so): a plain image whose one layer (a
  gzipped tar) holds `libfhirgate.so` at its root, for a Kubernetes image volume (Envoy Gateway's
  EnvoyProxy mounts it where its `dynamicModules` entry points).

Deterministic: no timestamps, so the same module always gives the same manifest digest.

    oci-image.py MODULE.wasm OUT_DIR --tag 0.1.0 [--title fhirgate-routing]

Prints `<tag> manifest sha256:<digest> module sha256:<digest>` (the module digest is what a
WasmPlugin's `sha256` pins).
"""
import argparse
import gzip
import hashlib
import io
import json
import pathlib
import sys
import tarfile

LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
CONFIG = "application/vnd.module.wasm.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def blob(out: pathlib.Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = out / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


NATIVE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NATIVE_CONFIG = "application/vnd.oci.image.config.v1+json"
NATIVE_FILE = "libfhirgate.so"


def native_layer(module: bytes) -> bytes:
    """A tar holding the module at its root, deterministic (no times, no owners)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(NATIVE_FILE)
        info.size, info.mode, info.mtime = len(module), 0o755, 0
        tar.addfile(info, io.BytesIO(module))
    return buffer.getvalue()


def write_image(module: pathlib.Path, out: pathlib.Path, tag: str, title: str) -> tuple[str, str]:
    data = module.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    if data[:4] == b"\x7fELF":
        tar = native_layer(data)
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        # Compressed as registries keep layers (a plain tar is compressed on push), without a
        # timestamp, so the digests stay the same.
        compressed = gzip.compress(tar, compresslevel=9, mtime=0)
        layer = {"mediaType": NATIVE_LAYER, **blob(out, compressed), "annotations": {"org.opencontainers.image.title": NATIVE_FILE}}
        config = {"mediaType": NATIVE_CONFIG, **blob(out, canonical(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "config": {}}))}
    elif data[:4] == b"\0asm":
        layer = {"mediaType": LAYER, **blob(out, data), "annotations": {"org.opencontainers.image.title": f"{title}.wasm"}}
        config = {"mediaType": CONFIG, **blob(out, canonical({"type": "envoy_proxy", "abiVersions": ["v0.2.1"], "abiVersion": "v0.2.1"}))}
    else:
        raise SystemExit(f"{module}: neither a WebAssembly module nor a shared object")
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer],
                "annotations": {"org.opencontainers.image.title": title, "org.opencontainers.image.version": tag}}
    manifest_blob = blob(out, canonical(manifest))
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({"mediaType": MANIFEST, **manifest_blob, "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index, indent=2))
    return manifest_blob["digest"], "sha256:" + hashlib.sha256(data).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--title")
    args = ap.parse_args(argv)
    manifest, module = write_image(args.module, args.out, args.tag, args.title or args.module.stem.replace("_", "-"))
    print(f"{args.out}:{args.tag} manifest {manifest} module {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
