#!/usr/bin/env python3
"""`make compose`: renders the gateway for envoy/compose/compose.yaml into build/compose/ —
envoy/fhirgate.yaml with the same filter configs as every other deployment, the deployment
settings of the compose stack (its issuer, keys made now, ports) laid over them.

    prepare.py [--wasm-dir DIR] [--out DIR]

--wasm-dir is where Envoy finds the modules (in the container: /etc/fhirgate/wasm).
"""
import argparse
import base64
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PORTS = {"LISTEN_PORT": 8080, "ADMIN_PORT": 9901, "FHIR_PORT": 8090, "BULK_PORT": 8090, "VALIDATE_PORT": 8090,
         "PRIOR_AUTH_PORT": 8090, "DEVICE_PORT": 8090, "ISSUER_PORT": 8096, "AUDIT_PORT": 8098, "CDS_PORT": 8099}
ISSUER = "http://localhost:8096"
AUDIENCE = "http://localhost:8080/fhir/r4"


def prepare(out: pathlib.Path, wasm_dir: str) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    def secret(name):
        path = out / name
        if not path.exists():
            path.write_bytes(os.urandom(32))
        return base64.b64encode(path.read_bytes()).decode()
    (out / "issuers.json").write_text(json.dumps({"issuers": [
        {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"], "jwksUri": f"{ISSUER}/jwks",
         "jwksCluster": "token_issuer", "requiredClaims": ["sub"]}]}, indent=2))
    (out / "ratelimit.json").write_text(json.dumps({"breakGlass": {"keys": {"compose": secret("break-glass.key")}}}, indent=2))
    (out / "consent.json").write_text(json.dumps({"consents": {**json.loads((ROOT / "envoy" / "consent.json").read_text())["consents"],
                                                               "path": "/fhir/Consent"}}, indent=2))
    (out / "audit.json").write_text(json.dumps({"chain": {"kid": "compose", "key": secret("audit.key")}}, indent=2))
    config = out / "envoy.yaml"
    values = {**PORTS, "LISTEN_ADDRESS": "0.0.0.0", "ACCESS_LOG": "/dev/stdout", "UPSTREAM_BASE": "/fhir", "WASM_DIR": wasm_dir}
    args = [sys.executable, str(ROOT / "envoy" / "render.py"), str(ROOT / "envoy" / "fhirgate.yaml"), str(config)]
    for k, v in values.items():
        args += ["--set", f"{k}={v}"]
    for flag in ("issuers", "ratelimit", "consent", "audit"):
        args += [f"--{flag}", str(out / f"{flag}.json")]
    subprocess.run(args, check=True)
    return config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm-dir", default="/etc/fhirgate/wasm")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "compose")
    args = ap.parse_args(argv)
    print(prepare(args.out, args.wasm_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
