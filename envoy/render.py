#!/usr/bin/env python3
"""Render an fhirgate Envoy template: replace {{NAME}} placeholders.

Filter configs are inlined from their JSON files in envoy/, compacted to one line, so the
JSON files are the single source of truth: {{ROUTING_CONFIG}} is routing.json;
{{AUTHZ_CONFIG}} is authz.json with routing.json under `routing` (both filters parse requests
alike) and, with --issuers FILE, that file's JSON list as `issuers` (the trusted token
issuers and their JWKS, known only where the gateway is deployed).
Every placeholder must be given; an unknown or missing one is an error, never left in place.

    render.py TEMPLATE OUT --set LISTEN_PORT=10000 --set FHIR_PORT=8090 ... [--issuers FILE]
"""
import argparse
import json
import pathlib
import re
import sys

FILTER_CONFIGS = {"ROUTING_CONFIG": "routing.json", "AUTHZ_CONFIG": "authz.json"}
CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def filter_config(key: str, issuers: pathlib.Path | None) -> dict:
    config = json.loads((CONFIG_DIR / FILTER_CONFIGS[key]).read_text())
    if key == "AUTHZ_CONFIG":
        config.setdefault("routing", json.loads((CONFIG_DIR / FILTER_CONFIGS["ROUTING_CONFIG"]).read_text()))
        if issuers is not None:
            config["issuers"] = json.loads(issuers.read_text())
    return config


def render(template: pathlib.Path, values: dict, issuers: pathlib.Path | None = None) -> str:
    text = template.read_text()
    for key in FILTER_CONFIGS:
        if "{{%s}}" % key in text and key not in values:
            compact = json.dumps(filter_config(key, issuers), separators=(",", ":"))
            if "'" in compact:
                raise SystemExit(f"{FILTER_CONFIGS[key]}: single quotes cannot be inlined into YAML")
            values[key] = compact
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
    args = ap.parse_args(argv)
    values = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"render.py: --set {item!r} is not NAME=VALUE")
        values[name] = value
    args.out.write_text(render(args.template, values, args.issuers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
