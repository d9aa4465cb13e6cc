#!/usr/bin/env python3
"""`make run`: the fhirgate demo gateway.

Starts a FHIR R4 server loaded with the HL7 example data, and Envoy running the fhirgate
filter chain in front of it, then prints example requests. Ctrl-C stops everything.
`--smoke` runs every example once, checks its status, and exits (the tests do this).
"""
import argparse
import json
import pathlib
import re
import shlex
import signal
import sys
import threading
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stack import BASE, ROOT, Stack  # noqa: E402

# (what it shows, token, method, path, content type, body, expected status); token is the
# name of a shell variable the demo prints, or None.
EXAMPLES = [
    ("capabilities, no token needed", None, "GET", f"{BASE}/metadata", None, None, 200),
    ("no token: 401 with WWW-Authenticate", None, "GET", f"{BASE}/Patient/example", None, None, 401),
    ("a patient app reads its own patient", "PATIENT_TOKEN", "GET", f"{BASE}/Patient/example", None, None, 200),
    ("...searches observations: narrowed to its patient", "PATIENT_TOKEN", "GET", f"{BASE}/Observation?_count=2", None, None, 200),
    ("...reads another patient: 403", "PATIENT_TOKEN", "GET", f"{BASE}/Patient/pat1", None, None, 403),
    ("...reads an observation by id: checked on the response", "PATIENT_TOKEN", "GET", f"{BASE}/Observation/example", None, None, 200),
    ("a system client creates a patient", "SYSTEM_TOKEN", "POST", f"{BASE}/Patient", "application/fhir+json",
     '{"resourceType":"Patient","name":[{"family":"Demo"}]}', 201),
    ("a CDS Hooks service with the EHR's signed JWT, routed to its own cluster (each JWT once)", "CDS_TOKEN", "POST",
     "/cds-services/patient-greeter", "application/json", '{"hook":"patient-view","context":{}}', 200),
    ("a CDS Hooks service without it: 401", None, "POST", "/cds-services/patient-greeter", "application/json",
     '{"hook":"patient-view","context":{}}', 401),
    ("unknown resource type: 404 OperationOutcome", "SYSTEM_TOKEN", "GET", f"{BASE}/Foo/1", None, None, 404),
    ("invalid id: 400 OperationOutcome", "SYSTEM_TOKEN", "GET", f"{BASE}/Patient/not_valid", None, None, 400),
    ("method the path does not allow: 405 with Allow", "SYSTEM_TOKEN", "POST", f"{BASE}/Patient/example", None, None, 405),
    ("body that disagrees with the path: 400", "SYSTEM_TOKEN", "POST", f"{BASE}/Patient", "application/fhir+json",
     '{"resourceType":"Observation"}', 400),
    ("emergency access: a break-glass token (honoured once; again: 403 break-glass-replayed)", "SYSTEM_TOKEN", "GET",
     f"{BASE}/Patient/example", None, None, 200, {"x-break-glass": "$BREAK_GLASS"}),
    ("a forged break-glass token: 403", "SYSTEM_TOKEN", "GET", f"{BASE}/Patient/example", None, None, 403,
     {"x-break-glass": "forged.token"}),
]


def curl(port, token, method, path, content_type, body, headers=None):
    parts = ["curl", "-s", "-i"]
    if method != "GET":
        parts += ["-X", method]
    if token:
        parts += ["-H", f"authorization: Bearer ${token}"]
    for k, v in (headers or {}).items():
        parts += ["-H", f"{k}: {v}"]
    if content_type:
        parts += ["-H", f"content-type: {content_type}"]
    if body:
        parts += ["-d", body]
    parts.append(f"http://127.0.0.1:{port}{path}")
    # The token variable must expand in the shell: quote everything but it.
    # Shell variables must expand: double-quote the headers that name one.
    return " ".join(f'"{p}"' if re.search(r"\$[A-Z_]+$", p) else shlex.quote(p) for p in parts)


def call(port, token, method, path, content_type, body, extra=None):
    headers = {"content-type": content_type} if content_type else {}
    headers.update(extra or {})
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body else None, headers=headers)
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
    with Stack(log_dir, listen_port=args.port, demo=True) as stack:
        print(f"\nfhirgate is serving FHIR R4 at http://127.0.0.1:{args.port}{BASE}"
              f"  ({len(stack.loaded)} example resources loaded)")
        print(f"Envoy admin: http://127.0.0.1:{stack.admin_port}/stats?filter=wasm   access log: {log_dir / 'envoy-access.log'}")
        print(f"audit records: {log_dir / 'audit.log'} (check the chain: target/debug/fhirgate audit verify {log_dir / 'audit.log'} "
              f"--key-file {stack.audit_key} --kid {stack.AUDIT_KID})\n")
        tokens = {
            "PATIENT_TOKEN": stack.token("launch/patient patient/*.rs", patient="example", sub="demo-patient-app"),
            "SYSTEM_TOKEN": stack.token("system/*.cruds", sub="demo-system-client"),
            "BREAK_GLASS": stack.break_glass_token("demo-system-client"),
            "CDS_TOKEN": stack.cds_token("patient-greeter"),
        }
        print("# tokens from the demo's OAuth issuer (valid 5 minutes; the patient app's launch patient is `example`),")
        print(f"# and a break-glass token signed with `fhirgate breakglass sign --key-file {stack.break_glass_key} --kid {stack.BREAK_GLASS_KID} ...`:")
        for name, value in tokens.items():
            print(f"export {name}={value}")
        print()
        failures = 0
        for what, token, method, path, ct, body, expected, *extra in EXAMPLES:
            headers = extra[0] if extra else {}
            print(f"# {what} (expect {expected})")
            print(curl(args.port, token, method, path, ct, body, headers))
            if args.smoke:
                expanded = {k: tokens[v[1:]] if v.startswith("$") else v for k, v in headers.items()}
                status, payload = call(args.port, tokens.get(token), method, path, ct, body, expanded)
                ok = status == expected
                failures += not ok
                print(f"  -> {status} {'ok' if ok else 'UNEXPECTED: ' + payload[:200].decode(errors='replace')}")
                if ok and status >= 400:
                    json.loads(payload)  # every refusal is an OperationOutcome
            print()
        if args.smoke:
            # Every example left an audit record whose chain checks out.
            import subprocess
            import time
            from stack import CLI
            time.sleep(2.5)  # the collector's batches (one a second in the demo)
            verified = subprocess.run([str(CLI), "audit", "verify", str(log_dir / "audit.log"), "--key-file", str(stack.audit_key),
                                       "--kid", stack.AUDIT_KID], capture_output=True, text=True)
            print(f"audit: {verified.stdout.strip() or verified.stderr.strip()}")
            failures += verified.returncode != 0
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
