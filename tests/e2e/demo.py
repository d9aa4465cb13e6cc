#!/usr/bin/env python3
"""`make run`: the fhirgate demo gateway.

Starts a FHIR R4 server loaded with the HL7 example data, and Envoy running the fhirgate
filter chain in front of it, then prints example requests. Ctrl-C stops everything.
`--smoke` runs every example once, checks its status, and exits (the tests do this).
"""
import argparse
import json
import pathlib
import shlex
import signal
import sys
import threading
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stack import BASE, ROOT, Stack  # noqa: E402

# (what it shows, method, path, content type, body, expected status)
EXAMPLES = [
    ("capabilities of the FHIR server behind the gateway", "GET", f"{BASE}/metadata", None, None, 200),
    ("read an example patient", "GET", f"{BASE}/Patient/example", None, None, 200),
    ("search that patient's observations", "GET", f"{BASE}/Observation?patient=example&_count=2", None, None, 200),
    ("compartment search", "GET", f"{BASE}/Patient/example/Condition", None, None, 200),
    ("create a patient", "POST", f"{BASE}/Patient", "application/fhir+json",
     '{"resourceType":"Patient","name":[{"family":"Demo"}]}', 201),
    ("a CDS Hooks service, routed to its own cluster", "POST", "/cds-services/patient-greeter", "application/json",
     '{"hook":"patient-view","context":{}}', 200),
    ("unknown resource type: 404 OperationOutcome", "GET", f"{BASE}/Foo/1", None, None, 404),
    ("invalid id: 400 OperationOutcome", "GET", f"{BASE}/Patient/not_valid", None, None, 400),
    ("method the path does not allow: 405 with Allow", "POST", f"{BASE}/Patient/example", None, None, 405),
    ("body that disagrees with the path: 400", "POST", f"{BASE}/Patient", "application/fhir+json",
     '{"resourceType":"Observation"}', 400),
]


def curl(port, method, path, content_type, body):
    parts = ["curl", "-s", "-i"]
    if method != "GET":
        parts += ["-X", method]
    if content_type:
        parts += ["-H", f"content-type: {content_type}"]
    if body:
        parts += ["-d", body]
    parts.append(f"http://127.0.0.1:{port}{path}")
    return " ".join(shlex.quote(p) for p in parts)


def call(port, method, path, content_type, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body else None,
                                 headers={"content-type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--smoke", action="store_true", help="run every example once and exit")
    args = ap.parse_args()

    log_dir = ROOT / "build" / ("demo-smoke" if args.smoke else "demo")
    print(f"starting the FHIR server, loading example data and Envoy (logs: {log_dir}) ...", flush=True)
    with Stack(log_dir, listen_port=args.port) as stack:
        print(f"\nfhirgate is serving FHIR R4 at http://127.0.0.1:{args.port}{BASE}"
              f"  ({len(stack.loaded)} example resources loaded)")
        print(f"Envoy admin: http://127.0.0.1:{stack.admin_port}/stats?filter=wasm   access log: {log_dir / 'access.log'}\n")
        failures = 0
        for what, method, path, ct, body, expected in EXAMPLES:
            print(f"# {what} (expect {expected})")
            print(curl(args.port, method, path, ct, body))
            if args.smoke:
                status, payload = call(args.port, method, path, ct, body)
                ok = status == expected
                failures += not ok
                print(f"  -> {status} {'ok' if ok else 'UNEXPECTED: ' + payload[:200].decode(errors='replace')}")
                if ok and status >= 400:
                    json.loads(payload)  # every refusal is an OperationOutcome
            print()
        if args.smoke:
            return 1 if failures else 0
        print("Press Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(1):
            if not all(p.alive() for p in stack.processes):
                print("a gateway process exited; see the logs", file=sys.stderr)
                return 1
        print("stopping ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
