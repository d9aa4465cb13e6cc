#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs to fuzz/seeds/<target>/ from the shipped configs,
HL7's R4 examples (.tools, `make tools`) and hand-picked requests. Run again after a format
change; the fuzzers grow their own corpora from these."""
import base64, glob, hashlib, hmac, json, pathlib, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
EXAMPLES = ROOT / ".tools" / "node_modules" / "hl7.fhir.r4.examples"
NOW = 1_800_000_000
KEY = b"fuzzing-key-0123456789abcdef0123"  # fuzz/src/lib.rs HMAC_KEY


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def nul(*fields):
    return b"\0".join(f if isinstance(f, bytes) else f.encode() for f in fields)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def example(name):
    return (EXAMPLES / name).read_bytes()


requests = [
    ("GET", "/fhir/r4/Patient/example", "", b""),
    ("GET", "/fhir/r4/Observation?patient=Patient/p1&_count=50&_include=Observation:subject&code=http://loinc.org|1234-5", "", b""),
    ("GET", "/fhir/r4/Patient/p1/$everything?_since=2020-01-01", "", b""),
    ("GET", "/fhir/r4/Patient/p1/_history/3", "", b""),
    ("GET", "/fhir/r4/metadata", "", b""),
    ("GET", "/fhir/r4/.well-known/smart-configuration", "", b""),
    ("POST", "/fhir/r4/Observation/_search", "application/x-www-form-urlencoded", b"patient=p1&category=laboratory"),
    ("POST", "/fhir/r4/Patient", "application/fhir+json", b'{"resourceType":"Patient","id":"p2","name":[{"family":"X"}]}'),
    ("PUT", "/fhir/r4/Patient/p2", "application/fhir+json", b'{"resourceType":"Patient","id":"p2"}'),
    ("PATCH", "/fhir/r4/Patient/p2", "application/json-patch+json", b'[{"op":"replace","path":"/active","value":false}]'),
    ("DELETE", "/fhir/r4/Observation?patient=p1", "", b""),
    ("POST", "/fhir/r4", "application/fhir+json", b'{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Patient/p1"}}]}'),
    ("GET", "/fhir/r4/$export?_type=Patient,Observation", "", b""),
    ("GET", "/fhir/r4/Patient/%2E%2E/x;jsessionid=1?name=%C0%AE", "", b""),
    ("POST", "/cds-services/patient-view", "application/json", b'{"hook":"patient-view","context":{"patientId":"p1"}}'),
]
for i, (m, p, ct, body) in enumerate(requests):
    write("route", f"r{i:02}", nul(m, p, ct, body))

payload = json.dumps({"iss": "https://idp.example", "sub": "u1", "aud": "https://gw.example/fhir/r4", "exp": NOW + 600,
                      "scope": "patient/*.rs user/Observation.cruds?category=laboratory launch/patient", "patient": "p1"})
for i, (m, p, ct, body) in enumerate(requests):
    write("authz_request", f"r{i:02}", nul(m, p, payload, body))
write("authz_request", "response", nul("GET", "/fhir/r4/Observation/o1", payload,
      b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}'))

for i, s in enumerate(["patient/*.read user/Observation.write", "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                       "system/*.cruds launch/patient openid fhirUser offline_access", "user/*.* patient/Patient.c", "patient/Observation.rs?code:in=x&_security=R"]):
    write("scope", f"s{i}", s)

jwks = json.loads((ROOT / "fuzz" / "data" / "jwks.json").read_text())
write("jwks", "keys", json.dumps(jwks))
write("jwks", "one", json.dumps({"keys": jwks["keys"][:1]}))

for name in ["routing", "authz", "ratelimit", "consent", "audit"]:
    write(f"config_{name}", "shipped", (ROOT / "envoy" / f"{name}.json").read_bytes())
write("config_authz", "issuer", json.dumps({"issuers": [{"issuer": "https://i", "audiences": ["a"], "jwksUri": "https://i/jwks", "jwksCluster": "c"}],
                                             "zones": [{"name": "z", "peerUriSanPrefixes": ["spiffe://x/"], "mode": "report-only"}]}))
write("config_audit", "chain", json.dumps({"basePath": "/fhir/r4", "log": True, "chain": {"kid": "k1", "key": base64.b64encode(KEY).decode()}}))

def bg(user, reason, exp, nonce, key=KEY, kid="k1"):
    p = b64(json.dumps({"kid": kid, "user": user, "reason": reason, "exp": exp, "nonce": nonce}).encode())
    return p + "." + b64(hmac.new(key, p.encode(), hashlib.sha256).digest())
write("breakglass", "valid", bg("Practitioner/1", "ETREAT", NOW + 600, "n-1"))
write("breakglass", "expired", bg("Practitioner/1", "ETREAT", NOW - 1, "n-2"))
write("breakglass", "wrong-key", bg("u", "ETREAT", NOW + 60, "n-3", key=b"x" * 32))

write("audit_chain", "facts", b"\x01" + nul("GET", "read", "Patient", "p1", "u1", "patient/*.rs", "curl/8", "\xc8", "\x05A"))
write("audit_chain", "search", b"\x01" + nul("GET", "search-type", "Observation", "", "u2", "user/Observation.rs", "", "\x01", "\x40z"))
log = ROOT / "build" / "e2e" / "stack" / "audit.log"
if log.exists():
    write("audit_chain", "log", b"\x00" + b"\n".join(log.read_bytes().splitlines()[:3]))

if not EXAMPLES.exists():
    sys.exit("fuzz-seeds: HL7 examples missing; run `make tools` first")
consents = [json.loads(example(f)) for f in sorted(p.name for p in EXAMPLES.glob("Consent-*.json"))]
deny = {"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
        "patient": {"reference": "Patient/example"}, "provision": {"type": "deny", "class": [{"code": "Observation"}]}}
labelled = {"resourceType": "Observation", "id": "o1", "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]},
            "subject": {"reference": "Patient/example"}, "status": "final", "code": {"text": "x"}}
searchset = {"resourceType": "Bundle", "type": "searchset", "total": 2, "link": [{"relation": "self", "url": "https://gw/fhir/r4/Observation?patient=example"}],
             "entry": [{"resource": labelled, "search": {"mode": "match"}},
                       {"resource": json.loads(example("Observation-example.json")), "search": {"mode": "match"}},
                       {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}]}
write("consent", "searchset", nul(json.dumps(searchset), json.dumps([deny]), b"\x00"))
write("consent", "searchset-treat", nul(json.dumps(searchset), json.dumps(consents[:3]), b"\x01"))
write("consent", "read", nul(json.dumps(labelled), b"[]", b"\x04"))
write("consent", "patient", nul(example("Patient-example.json"), json.dumps(consents), b"\x02"))
import gzip
write("consent", "gzip", nul(gzip.compress(json.dumps(searchset).encode(), mtime=0), json.dumps([deny]), b"\x08"))
for f in ["Bundle-bundle-response.json", "Bundle-bundle-transaction.json", "Bundle-10bbc87c-e1a9-4ab2-9e5d-6d7b0f27b1a4.json"]:
    if (EXAMPLES / f).exists():
        write("consent", f.removesuffix(".json"), nul(example(f), json.dumps([deny]), b"\x00"))
for i, c in enumerate(consents[:6]):
    write("consent", f"consent{i}", nul(json.dumps(searchset), json.dumps([c]), b"\x00"))
print("fuzz-seeds: written to", SEEDS)
