"""The audit filter in the full chain: one record per request (refusals by earlier filters
included) at the collector, PHI-free, chained so `fhirgate audit verify` can check the log;
fail-closed mode in a second Envoy."""
import json
import subprocess
import time
import uuid

import pytest

from stack import BASE, CLI, Counters, wait_until
from test_authz import call
from test_routing import FHIR_JSON, received

FLUSH = 2.0  # seconds to wait for the collector to have every record (flush interval 0.2 s)


def quiet(stack) -> int:
    """Waits until no record has arrived for a second (earlier tests' and other Envoys' late
    batches), returns the count."""
    last = -1
    while (now := len(stack.collector.snapshot())) != last:
        last = now
        time.sleep(1)
    return last


def settle(stack, count_before, expected):
    wait_until("the audit records", lambda: len(stack.collector.snapshot()) >= count_before + expected, timeout=FLUSH * 5)
    time.sleep(0.5)  # nothing more should come
    return stack.collector.snapshot()[count_before:]


def mixed_requests(stack):
    """(method, path, token, body, headers, expected status) — allowed, refused by each filter."""
    reader = stack.token("user/Patient.rs user/Observation.rs", sub="audit-reader", tenant="rl-test")
    writer = stack.token("user/Patient.cruds", sub=f"audit-writer-{uuid.uuid4().hex[:6]}", tenant="rl-test")
    patient = json.dumps({"resourceType": "Patient", "name": [{"family": "Audit"}]})
    return [
        ("GET", f"{BASE}/Patient/example", reader, None, {}, 200),
        ("GET", f"{BASE}/Observation?patient=example&_count=2", reader, None, {}, 200),
        ("GET", f"{BASE}/Foo/1", reader, None, {}, 404),  # routing
        ("GET", f"{BASE}/Patient/example", None, None, {}, 401),  # authz
        ("GET", f"{BASE}/Observation/example", stack.token("user/Patient.rs", sub="audit-reader"), None, {}, 403),  # authz
        ("POST", f"{BASE}/Patient", writer, patient, FHIR_JSON, 201),
        ("POST", f"{BASE}/Patient", writer, patient, FHIR_JSON, 201),
        ("POST", f"{BASE}/Patient", writer, patient, FHIR_JSON, 201),
        ("POST", f"{BASE}/Patient", writer, patient, FHIR_JSON, 429),  # ratelimit
        ("GET", f"{BASE}/metadata", None, None, {}, 200),
    ]


def test_every_request_yields_one_record_refusals_included(stack):
    before = quiet(stack)
    requests = mixed_requests(stack)
    for method, path, token, body, headers, expected in requests:
        _, status, _, _ = call(stack, method, path, token, body, headers)
        assert status == expected, (method, path)
    records = settle(stack, before, len(requests))
    assert len(records) == len(requests)
    by_status = sorted(r["http_status"] for r in records)
    assert by_status == sorted(e for *_, e in requests)
    reasons = {r["reason"] for r in records if r["reason"]}
    assert {"unknown-resource-type", "missing-token", "insufficient-scope", "rate-limited"} <= reasons, reasons
    read = next(r for r in records if r["http_status"] == 200 and r["fhir_interaction"] == "read")
    assert read["gateway_route"] == "/fhir/r4/Patient/{id}" and read["fhir_resource_id"] == "example"
    assert read["principal_id"] == "audit-reader" and read["smart_scopes_used"] == ["user/Patient.rs"]
    assert read["decision"] == "allow" and read["phase"] == "outcome" and read["tenant_id"] == "rl-test"
    assert all(r["event_type"] == "fhir.api.access" and r["mac"] for r in records)


def test_the_collected_log_verifies_and_names_an_edited_line(stack, tmp_path):
    for _ in range(3):
        call(stack, "GET", f"{BASE}/metadata")
    time.sleep(FLUSH)
    lines = [json.dumps(r, separators=(",", ":")) for r in stack.collector.snapshot()]
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + "\n")
    verify = lambda f: subprocess.run([str(CLI), "audit", "verify", str(f), "--key-file", str(stack.audit_key), "--kid", stack.AUDIT_KID],
                                      capture_output=True, text=True)
    ok = verify(log)
    assert ok.returncode == 0, ok.stderr
    edited = list(lines)
    edited[1] = edited[1].replace('"http_status":', '"http_status":1', 1)
    bad = tmp_path / "edited.log"
    bad.write_text("\n".join(edited) + "\n")
    result = verify(bad)
    assert result.returncode == 2 and "line 2" in result.stderr and "edited" in result.stderr, result.stderr
    deleted = tmp_path / "deleted.log"
    deleted.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    result = verify(deleted)
    assert result.returncode == 2 and ("deleted" in result.stderr or "edited" in result.stderr), result.stderr


def test_break_glass_is_elevated_and_alerted(stack):
    user = f"dr-audit-{uuid.uuid4().hex[:6]}"
    token = stack.token("user/Patient.rs", sub=user)
    before = quiet(stack)
    _, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token, headers={"x-break-glass": stack.break_glass_token(user)})
    assert status == 200
    [r] = settle(stack, before, 1)
    assert (r["break_glass"], r["severity"], r["purpose_of_use"]) == (True, "elevated", "ETREAT")
    assert Counters(stack.admin_port, "fhirgate.audit").total("fhirgate.audit.break_glass") >= 1
    assert b"ALERT break-glass access" in (stack.log_dir / "envoy.log").read_bytes()


class TestFailClosed:
    @pytest.fixture(scope="class")
    def fail_closed(self, stack):
        return stack.start_variant("envoy-fail-closed", stack.audit_file(failClosed={"timeoutMs": 1000}))

    def test_with_the_collector_up_requests_pass_with_an_access_and_an_outcome_record(self, stack, fail_closed):
        port, _ = fail_closed
        before = quiet(stack)
        _, status, _, _ = call(stack, "GET", f"{BASE}/metadata", port=port)
        assert status == 200
        records = settle(stack, before, 2)
        assert sorted(r["phase"] for r in records) == ["access", "outcome"]

    def test_with_the_collector_down_nothing_is_forwarded_and_the_client_gets_503(self, stack, fail_closed):
        port, _ = fail_closed
        token = stack.token("user/Patient.rs", sub="audit-fail-closed")
        stack.collector.down = True
        try:
            tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
            assert status == 503 and b"audit-unavailable" in body
            assert received(stack, tid) == [], "nothing reached the upstream"
        finally:
            stack.collector.down = False
        tid, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
        assert status == 200 and len(received(stack, tid)) == 1, "traffic resumes with the collector"

    def test_with_the_collector_stopped_the_same_and_traffic_resumes_when_it_restarts(self, stack, fail_closed):
        port, _ = fail_closed
        token = stack.token("user/Patient.rs", sub="audit-fail-closed")
        stack.collector.stop()
        try:
            tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
            assert status == 503 and b"audit-unavailable" in body
            assert received(stack, tid) == []
        finally:
            stack.collector.restart()
        wait_until("traffic to resume", lambda: call(stack, "GET", f"{BASE}/metadata", port=port)[1] == 200, timeout=10)


def test_under_load_the_records_equal_the_requests(stack, tmp_path):
    """h2load sends thousands of mixed requests (reads allowed, unknown types refused by
    routing, searches over the tenant's limit refused with 429); every one has its record."""
    import re
    import shutil
    token = stack.token("user/Patient.rs user/Observation.rs", sub=f"audit-load-{uuid.uuid4().hex[:6]}", tenant="rl-test")
    base = f"http://127.0.0.1:{stack.listen_port}{BASE}"
    uris = tmp_path / "uris.txt"
    uris.write_text("".join(f"{base}/{p}\n" for p in ("Patient/example", "Foo/1", "Observation?code=x", "metadata")))
    n = 3000
    before = quiet(stack)
    out = subprocess.run([shutil.which("h2load") or "h2load", "--h1", "-n", str(n), "-c", "8", "-i", str(uris),
                          "-H", f"authorization: Bearer {token}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out.stdout)
    ok, _, client_errors, server_errors = (int(g) for g in codes.groups())
    assert ok + client_errors + server_errors == n and server_errors == 0, out.stdout
    wait_until("every record", lambda: len(stack.collector.snapshot()) >= before + n, timeout=60)
    time.sleep(1)
    records = stack.collector.snapshot()[before:]
    assert len(records) == n, "exactly one record per request"
    statuses = [r["http_status"] for r in records]
    assert sum(200 <= s < 300 for s in statuses) == ok and sum(400 <= s < 500 for s in statuses) == client_errors
    assert {404, 429} <= set(statuses)
    assert Counters(stack.admin_port, "fhirgate.audit").total("fhirgate.audit.dropped.queue_full") == 0


def test_audit_events_can_go_to_a_fhir_server(stack):
    """A second Envoy whose collector is the FHIR server: records arrive as AuditEvents
    through batch Bundles."""
    import http.client
    from stack import UPSTREAM_BASE
    collector = {"cluster": "fhir_api", "path": UPSTREAM_BASE, "authority": "fhir", "format": "fhir", "flushIntervalMs": 200}
    port, admin = stack.start_variant("envoy-audit-fhir", stack.audit_file(collector=collector))

    def audit_events() -> list:
        conn = http.client.HTTPConnection("127.0.0.1", stack.fhir_port, timeout=30)
        conn.request("GET", f"{UPSTREAM_BASE}/AuditEvent?_count=1000")
        bundle = json.loads(conn.getresponse().read())
        conn.close()
        return [e["resource"] for e in bundle.get("entry", [])]

    before = len(audit_events())
    for path in ("metadata", "Foo/1", "Patient/example"):
        call(stack, "GET", f"{BASE}/{path}", port=port)
    wait_until("AuditEvents at the FHIR server", lambda: len(audit_events()) >= before + 3, timeout=15)
    events = audit_events()
    assert all(e["type"]["code"] == "rest" for e in events)
    assert {"0", "4"} <= {e["outcome"] for e in events}, "successes and refusals"
    assert any(e.get("outcomeDesc") == "unknown-resource-type" for e in events)
    stats = Counters(admin, "fhirgate.audit")
    assert stats.total("fhirgate.audit.events") >= 3 and stats.total("fhirgate.audit.sink_errors") == 0
    assert any(k.endswith("fhirgate.audit.queue_depth") for k in stats), "the queue depth gauge exists"


def test_an_upstream_operation_outcome_names_the_records_outcome(stack):
    token = stack.token("user/Observation.rs", sub="audit-outcome")
    before = quiet(stack)
    _, status, _, body = call(stack, "GET", f"{BASE}/Observation?date=notadate", token)
    assert status == 400 and json.loads(body)["issue"][0]["code"] == "value"
    [r] = settle(stack, before, 1)
    assert (r["http_status"], r["fhir_outcome"], r["reason"]) == (400, "value", None), "the server's issue code, not the status class"
    assert "notadate" not in json.dumps(r), "never the diagnostics or the query"


def test_an_emergency_purpose_from_the_token_is_elevated_and_a_client_header_is_not_a_purpose(stack):
    # Issue 14, class 9: the purpose of use comes from a verified source only.
    before = quiet(stack)
    run = uuid.uuid4().hex[:6]
    token = stack.token("user/Patient.rs", sub=f"purpose-claimed-{run}", purpose_of_use="ETREAT")
    _, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token)
    assert status == 200
    token = stack.token("user/Patient.rs", sub=f"purpose-header-{run}")
    _, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token, headers={"x-purpose-of-use": "ETREAT"})
    assert status == 200
    # Each worker sends its own batches: find the records by their principal.
    records = {r["principal_id"]: r for r in settle(stack, before, 2)}
    claimed, asserted = records[f"purpose-claimed-{run}"], records[f"purpose-header-{run}"]
    assert (claimed["purpose_of_use"], claimed["severity"], claimed["break_glass"]) == ("ETREAT", "elevated", False)
    assert (asserted["purpose_of_use"], asserted["severity"]) == (None, "normal")


def test_a_refused_request_with_a_verified_token_names_its_principal(stack):
    # Issue 15: probing with a valid token is attributable.
    before = quiet(stack)
    sub = f"prober-{uuid.uuid4().hex[:6]}"
    _, status, _, _ = call(stack, "DELETE", f"{BASE}/Patient/example", stack.token("user/Patient.rs", sub=sub, client_id="probe-app"))
    assert status == 403
    [r] = settle(stack, before, 1)
    assert (r["decision"], r["reason"], r["principal_id"]) == ("deny", "insufficient-scope", sub)
    assert r["principal_role"] != "anonymous"
