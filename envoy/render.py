#!/usr/bin/env python3
"""Render an fhirgate Envoy template: replace {{NAME}} placeholders.

Filter configs are inlined from their JSON files in envoy/, compacted to one line, so the
JSON files are the single source of truth: {{ROUTING_CONFIG}} is routing.json;
{{AUTHZ_CONFIG}} is authz.json with routing.json under `routing` (both filters parse requests
alike) and, with --issuers FILE, the settings known only where the gateway is deployed: the
file is a JSON list of trusted issuers, or an object with `issuers` and `introspection`.
Every placeholder must be given; an unknown or missing one is an error, never left in place.

    render.py TEMPLATE OUT --set LISTEN_PORT=10000 --set FHIR_PORT=8090 ... [--issuers FILE] [--jwt-authn]

--jwt-authn renders the fast path for RSA tokens: Envoy's own jwt_authn filter, after routing
and before fhirgate.authz, verifies tokens natively (providers made from the issuers file) and
forwards the verified payload in x-fhirgate-jwt-payload; fhirgate.authz trusts that instead of
verifying again. jwt_authn runs with allow_missing_or_failed, so every refusal stays
fhirgate.authz's, with an OperationOutcome.
"""
import argparse
import json
import pathlib
import re
import sys

FILTER_CONFIGS = {"ROUTING_CONFIG": "routing.json", "AUTHZ_CONFIG": "authz.json"}
CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def filter_config(key: str, issuers: pathlib.Path | None, jwt_authn: bool = False) -> dict:
    config = json.loads((CONFIG_DIR / FILTER_CONFIGS[key]).read_text())
    if key == "AUTHZ_CONFIG":
        config.setdefault("routing", json.loads((CONFIG_DIR / FILTER_CONFIGS["ROUTING_CONFIG"]).read_text()))
        if issuers is not None:
            config.update(deployment_settings(issuers))
        if jwt_authn:
            config["jwtAuthn"] = {"payloadHeader": JWT_PAYLOAD_HEADER}
    return config


JWT_PAYLOAD_HEADER = "x-fhirgate-jwt-payload"


def deployment_settings(path: pathlib.Path) -> dict:
    """The --issuers file: a JSON list of issuers, or an object of authz settings known only
    where the gateway runs (`issuers`, `introspection`)."""
    settings = json.loads(path.read_text())
    return {"issuers": settings} if isinstance(settings, list) else settings


def jwt_authn_filter(issuers: list) -> dict:
    """Envoy's jwt_authn filter for these issuers: keys from jwksUri (through jwksCluster) or inline jwks."""
    providers = {}
    for i, issuer in enumerate(issuers):
        provider = {"issuer": issuer["issuer"], "audiences": issuer["audiences"], "forward": True,
                    "forward_payload_header": JWT_PAYLOAD_HEADER, "clock_skew_seconds": issuer.get("clockSkewSeconds", 60)}
        if "jwksUri" in issuer:
            provider["remote_jwks"] = {"http_uri": {"uri": issuer["jwksUri"], "cluster": issuer["jwksCluster"], "timeout": "5s"},
                                       "cache_duration": f"{issuer.get('jwksRefreshSeconds', 300)}s",
                                       "async_fetch": {"fast_listener": False}}
        else:
            provider["local_jwks"] = {"inline_string": json.dumps(issuer["jwks"])}
        providers[f"issuer{i}"] = provider
    requirements = [{"provider_name": name} for name in providers] + [{"allow_missing_or_failed": {}}]
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": requirements}}}]}}


def with_jwt_authn(text: str, issuers: list) -> str:
    """Inserts jwt_authn before fhirgate.authz (one flow-style line: JSON is YAML)."""
    anchor = "          - name: fhirgate.authz\n"
    if anchor not in text:
        raise SystemExit("render.py: --jwt-authn needs a template with the fhirgate.authz filter")
    return text.replace(anchor, f"          - {json.dumps(jwt_authn_filter(issuers))}\n{anchor}", 1)


def render(template: pathlib.Path, values: dict, issuers: pathlib.Path | None = None, jwt_authn: bool = False) -> str:
    text = template.read_text()
    for key in FILTER_CONFIGS:
        if "{{%s}}" % key in text and key not in values:
            compact = json.dumps(filter_config(key, issuers, jwt_authn), separators=(",", ":"))
            if "'" in compact:
                raise SystemExit(f"{FILTER_CONFIGS[key]}: single quotes cannot be inlined into YAML")
            values[key] = compact
    if jwt_authn:
        if issuers is None:
            raise SystemExit("render.py: --jwt-authn needs --issuers")
        text = with_jwt_authn(text, deployment_settings(issuers).get("issuers", []))
    missing = sorted(set(re.findall(r"\{\{([A-Z_]+)\}\}", text)) - set(values))
    if missing:
        raise SystemExit(f"render.py: no value for {', '.join(missing)}")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: str(values[m.group(1)]), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("template", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--issuers", type=pathlib.Path, help="JSON list of trusted issuers for the authz filter")
    ap.add_argument("--jwt-authn", action="store_true", help="verify tokens with Envoy's jwt_authn (the RSA fast path)")
    args = ap.parse_args(argv)
    values = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"render.py: --set {item!r} is not NAME=VALUE")
        values[name] = value
    args.out.write_text(render(args.template, values, args.issuers, args.jwt_authn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
