#!/usr/bin/env python3
"""Writes a .wasm module as an OCI image (image layout directory) in the Wasm OCI format Istio
pulls for WasmPlugin `url: oci://…`: one layer of media type
application/vnd.module.wasm.content.layer.v1+wasm holding the module as is, a config of media
type application/vnd.module.wasm.config.v1+json. No Docker needed; `skopeo copy oci:DIR:TAG
docker://REGISTRY/NAME:TAG` pushes it.

Deterministic: no timestamps, so the same module always gives the same manifest digest.

    oci-image.py MODULE.wasm OUT_DIR --tag 0.1.0 [--title fhirgate-routing]

Prints `<tag> manifest sha256:<digest> module sha256:<digest>` (the module digest is what a
WasmPlugin's `sha256` pins).
"""
import argparse
import hashlib
import json
import pathlib
import sys

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


def write_image(module: pathlib.Path, out: pathlib.Path, tag: str, title: str) -> tuple[str, str]:
    wasm = module.read_bytes()
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"{module}: not a WebAssembly module")
    out.mkdir(parents=True, exist_ok=True)
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layer = {"mediaType": LAYER, **blob(out, wasm), "annotations": {"org.opencontainers.image.title": f"{title}.wasm"}}
    config = {"mediaType": CONFIG, **blob(out, canonical({"type": "envoy_proxy", "abiVersions": ["v0.2.1"], "abiVersion": "v0.2.1"}))}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer],
                "annotations": {"org.opencontainers.image.title": title, "org.opencontainers.image.version": tag}}
    manifest_blob = blob(out, canonical(manifest))
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({"mediaType": MANIFEST, **manifest_blob, "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index, indent=2))
    return manifest_blob["digest"], layer["digest"]


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
