"""PHI canaries: one marker planted in every channel a request or response has (path, query,
headers, body, token claims, a malformed token, purpose and break-glass headers, a resource read
back, a response the consent filter withholds from) and in invalid input the gateway refuses.
Then everything the gateway writes or answers on its own is scanned: every Envoy log and access
log, the audit records, every metric of every Envoy in the stack (both stat formats), and each
error body the gateway made. The marker appears in none of them."""
import json
import time
import uuid

from stack import BASE, http_get
from test_audit import quiet, settle
from test_authz import call
from test_routing import FHIR_JSON

LABELS = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def test_no_planted_marker_reaches_a_log_a_metric_an_audit_record_or_an_error_body(stack):
    marker = f"PHICANARY{uuid.uuid4().hex[:10].upper()}"
    rid = f"canary-{uuid.uuid4().hex[:8]}"  # ids are not PHI (records carry them); the marker never is one
    writer = stack.token("user/Patient.cruds user/Observation.cruds", sub=f"canary-writer-{rid}", purpose_of_use="TREAT",
                         name=f"Dr {marker}", email=f"{marker}@hospital.example", fhirUser=f"Practitioner/{rid}")
    reader = stack.token("user/Patient.rs user/Observation.rs", sub=f"canary-reader-{rid}", name=marker)
    patient = {"resourceType": "Patient", "id": rid, "name": [{"family": marker, "given": ["John"]}], "birthDate": "1970-01-01",
               "identifier": [{"system": "urn:mrn", "value": f"MRN-{marker}"}], "telecom": [{"system": "email", "value": f"{marker}@mail.example"}]}
    restricted = {"resourceType": "Observation", "id": f"{rid}-r", "status": "final", "code": {"text": marker},
                  "meta": {"security": [{"system": LABELS, "code": "R"}]}, "subject": {"reference": f"Patient/{rid}"},
                  "note": [{"text": f"HIV result for {marker}"}]}
    noisy = {"user-agent": f"agent/{marker}", "referer": f"https://portal.example/{marker}", "cookie": f"session={marker}",
             "x-note": marker, "x-forwarded-for": "10.9.9.9", "x-purpose-of-use": marker}
    sent = [
        # (method, path, token, body, headers, expected status)
        ("PUT", f"{BASE}/Patient/{rid}", writer, json.dumps(patient), FHIR_JSON, {200, 201}),
        ("PUT", f"{BASE}/Observation/{rid}-r", writer, json.dumps(restricted), {**FHIR_JSON, "x-purpose-of-use": "TREAT"}, {200, 201}),
        ("GET", f"{BASE}/Patient/{rid}", reader, None, noisy, {200}),  # the resource comes back with the marker
        ("GET", f"{BASE}/Patient?name={marker}&birthdate=1970-01-01", reader, None, noisy, {200}),
        ("GET", f"{BASE}/Patient?identifier=urn:mrn|MRN-{marker}", None, None, {}, {401}),
        ("GET", f"{BASE}/Observation?subject=Patient/{rid}", reader, None, {"x-purpose-of-use": "HPAYMT"}, {200}),  # withheld
        ("GET", f"{BASE}/Observation/{rid}-r", reader, None, {}, {403}),  # withheld, single read
        ("GET", f"{BASE}/Patient/{marker}!", reader, None, {}, {400}),  # invalid id
        ("GET", f"{BASE}/Patient?na%20me={marker}", reader, None, {}, {400}),  # invalid parameter name
        ("GET", f"{BASE}/Patient?name=%C0{marker}", reader, None, {}, {400}),  # invalid encoding
        ("GET", f"{BASE}/{marker}/1", reader, None, {}, {404}),  # unknown resource type
        ("POST", f"{BASE}/Patient", writer, '{"resourceType":"Patient","name":[{"family":"' + marker, FHIR_JSON, {400}),  # invalid JSON
        ("POST", f"{BASE}/Observation", writer, json.dumps(patient), FHIR_JSON, {400}),  # type mismatch
        ("GET", f"{BASE}/Patient/{rid}", f"{marker}.{marker}.{marker}", None, {}, {401}),  # malformed JWT
        ("GET", f"{BASE}/Patient/{rid}", marker, None, {}, {401, 503}),  # opaque, introspected
        ("GET", f"{BASE}/Patient/{rid}", reader, None, {"x-break-glass": f"{marker}.{marker}"}, {403}),  # forged break-glass
    ]
    canaries = [marker, marker.lower(), writer, reader]
    before = quiet(stack)
    error_bodies = []
    for method, path, token, body, headers, expected in sent:
        _, status, _, rbody = call(stack, method, path, token, body, headers)
        assert status in expected, (method, path, status, rbody[:300])
        if status >= 400:
            error_bodies.append(rbody.decode(errors="replace"))
    assert marker in (call(stack, "GET", f"{BASE}/Patient/{rid}", reader)[3]).decode(), "the canary is really in the data"

    def clean(text: str, where: str):
        lowered = text.lower()
        for c in canaries:
            at = lowered.find(c.lower())
            assert at < 0, f"a canary reached {where}: …{text[max(0, at - 80):at + len(c) + 20]}…"

    for body in error_bodies:
        clean(body, f"an error body: {body[:200]}")
    records = settle(stack, before, len(sent) + 1)
    for record in records:
        clean(json.dumps(record), "an audit record")
    for admin in (stack.admin_port, stack.jwt_authn_admin_port, stack.report_only_admin_port):
        for path in ("/stats", "/stats/prometheus"):
            clean(http_get(admin, path)[1].decode(errors="replace"), f"metrics {path}")
    time.sleep(11)  # Envoy's file access logs flush every 10 s
    logs = [p for p in stack.log_dir.glob("*.log") if p.name.startswith(("envoy", "replica")) or p.name.endswith("access.log")]
    assert any(p.name == "envoy.log" for p in logs) and any(p.name == "envoy-access.log" for p in logs)
    for log in logs:
        clean(log.read_bytes().decode(errors="replace"), log.name)
