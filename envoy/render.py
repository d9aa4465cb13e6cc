#!/usr/bin/env python3
"""Render an fhirgate Envoy template: replace {{NAME}} placeholders.

Filter configs are inlined from their JSON files in envoy/ ({{ROUTING_CONFIG}} from
routing.json), compacted to one line, so the JSON files are the single source of truth.
Every placeholder must be given; an unknown or missing one is an error, never left in place.

    render.py TEMPLATE OUT --set LISTEN_PORT=10000 --set FHIR_PORT=8090 ...
"""
import argparse
import json
import pathlib
import re
import sys

FILTER_CONFIGS = {"ROUTING_CONFIG": "routing.json"}
CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def render(template: pathlib.Path, values: dict) -> str:
    text = template.read_text()
    for key, name in FILTER_CONFIGS.items():
        if "{{%s}}" % key in text and key not in values:
            config = json.loads((CONFIG_DIR / name).read_text())
            compact = json.dumps(config, separators=(",", ":"))
            if "'" in compact:
                raise SystemExit(f"{name}: single quotes cannot be inlined into YAML")
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
    args = ap.parse_args(argv)
    values = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"render.py: --set {item!r} is not NAME=VALUE")
        values[name] = value
    args.out.write_text(render(args.template, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
