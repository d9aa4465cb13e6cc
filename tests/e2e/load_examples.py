#!/usr/bin/env python3
"""Loads the HL7 R4 example resources the tests use into a FHIR server: `load_examples.py PORT`
(the compose stack's `examples` service; the tests do the same in stack.Stack)."""
import http.client
import json
import sys

from stack import UPSTREAM_BASE, example_resources


def main() -> int:
    port = int(sys.argv[1])
    loaded = 0
    for t, rid, res in example_resources():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("PUT", f"{UPSTREAM_BASE}/{t}/{rid}", body=json.dumps(res).encode(), headers={"content-type": "application/fhir+json"})
        loaded += conn.getresponse().status in (200, 201)
        conn.close()
    print(f"loaded {loaded} example resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
