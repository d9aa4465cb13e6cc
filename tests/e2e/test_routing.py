"""The FHIR routing filter in a real Envoy, in front of a real FHIR server.

Every assertion about routing is made on what an upstream recorder received (which cluster,
path and body, and that none of the routing stage's parse travelled with it) and on the audit
record the gateway wrote for that request, never on what the filter meant to do."""
import json
import subprocess
import time
import uuid

import pytest

from stack import BASE, ROOT, wait_until

FHIR_JSON = {"content-type": "application/fhir+json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def send(stack, method, path, body=None, headers=None, chunked=False, token="default"):
    """One request through the gateway; by default with a system/*.cruds token, so these
    tests see routing, not authorization."""
    tid = uuid.uuid4().hex
    auth = {"authorization": f"Bearer {stack.default_token if token == 'default' else token}"} if token else {}
    status, rheaders, rbody = stack.request(method, path, body, {"x-test-id": tid, **auth, **(headers or {})}, chunked=chunked)
    return tid, status, rheaders, rbody


def received(stack, tid):
    """[(cluster, record)] for every upstream request carrying this test id."""
    return [(name, r) for name, rec in stack.recorders.items() for r in rec.find(tid)]


def internal(record) -> dict:
    return {k[len("x-fhirgate-"):]: v for k, v in record["headers"].items() if k.startswith("x-fhirgate-")}


# What the routing stage parses: facts the later stages read, never sent upstream.
ROUTING_FACTS = {"interaction", "pool", "resource-type", "id", "version-id", "operation", "compartment", "patient", "bundle-type", "bundle-entries"}
# The only fhirgate headers an upstream may receive (docs/routing.md, "What the upstream sees").
UPSTREAM_HEADERS = {"subject", "client-id", "tenant", "fhir-user", "launch-patient", "scopes", "purpose-of-use",
                    "authz-decision", "authz-reason", "break-glass"}


def assert_only_identity_upstream(record):
    leaked = set(internal(record)) - UPSTREAM_HEADERS
    assert not leaked, f"reached the upstream: {leaked}"


def audit_of(stack, record) -> dict:
    """The audit record (outcome phase) of the request the upstream received as `record`,
    found by its x-request-id."""
    rid = record["headers"]["x-request-id"][0]
    found = []

    def arrived():
        found[:] = [r for r in stack.collector.snapshot() if r.get("request_id") == rid and r.get("phase") == "outcome"]
        return found
    wait_until("the request's audit record", arrived, timeout=10)
    return found[-1]


def parsed(audit: dict) -> dict:
    """The routing stage's parse as the audit record carries it, in the facts' names."""
    view = {"interaction": audit["fhir_interaction"], "resource-type": audit["fhir_resource_type"],
            "id": audit["fhir_resource_id"], "patient": audit["patient_id"]}
    return {k: v for k, v in view.items() if v is not None}


def assert_parsed(audit: dict, expected: dict):
    """Each expected fact, read from the audit record (version ids, operations and compartments
    through its route template; the pool through the cluster, checked by the caller)."""
    route = audit["gateway_route"]
    for name, value in expected.items():
        if name in ("interaction", "resource-type", "id", "patient"):
            assert parsed(audit).get(name) == value, f"{name}: {audit}"
        elif name == "operation":
            assert route.endswith(value), route
        elif name == "compartment":
            assert route.startswith(f"{BASE}/{value.split('/')[0]}/{{id}}/"), route
            assert audit["patient_id"] == value.split("/")[1], audit
        elif name == "version-id":
            assert route.endswith("/_history/{vid}"), route
        elif name == "bundle-type":
            assert audit["fhir_interaction"] == value, audit
        elif name != "pool":
            raise AssertionError(f"unexpected fact {name}")


def outcome_reason(body: bytes) -> str:
    oo = json.loads(body)
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["severity"] == "error"
    return oo["issue"][0]["details"]["coding"][0]["code"]


def bundle(kind):
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": {"resourceType": "Basic", "code": {"text": "e2e"}}, "request": {"method": "POST", "url": "Basic"}}]})


PATIENT = json.dumps({"resourceType": "Patient", "name": [{"family": "Routing"}]})

# (method, path, headers, body, cluster, upstream path, expected x-fhirgate-* headers)
INTERACTIONS = [
    ("GET", f"{BASE}/metadata", {}, None, "fhir_api", "/fhir/metadata", {"interaction": "capabilities", "pool": "fhir"}),
    ("GET", f"{BASE}/.well-known/smart-configuration", {}, None, "fhir_api", "/fhir/.well-known/smart-configuration", {"interaction": "smart-configuration"}),
    ("GET", f"{BASE}/Patient/example", {}, None, "fhir_api", "/fhir/Patient/example",
     {"interaction": "read", "resource-type": "Patient", "id": "example", "patient": "example", "pool": "fhir"}),
    ("GET", f"{BASE}/Patient/example/_history/1", {}, None, "fhir_api", "/fhir/Patient/example/_history/1",
     {"interaction": "vread", "resource-type": "Patient", "id": "example", "version-id": "1"}),
    ("GET", f"{BASE}/Patient/example/_history", {}, None, "fhir_api", "/fhir/Patient/example/_history", {"interaction": "history-instance", "id": "example"}),
    ("GET", f"{BASE}/Patient/_history", {}, None, "fhir_api", "/fhir/Patient/_history", {"interaction": "history-type", "resource-type": "Patient"}),
    ("GET", f"{BASE}/_history", {}, None, "fhir_api", "/fhir/_history", {"interaction": "history-system"}),
    ("GET", f"{BASE}/Observation?patient=example&_count=5", {}, None, "fhir_api", "/fhir/Observation?patient=example&_count=5",
     {"interaction": "search-type", "resource-type": "Observation", "patient": "example"}),
    ("POST", f"{BASE}/Observation/_search", FORM, "subject=Patient%2Fexample", "fhir_api", "/fhir/Observation/_search",
     {"interaction": "search-type", "resource-type": "Observation", "patient": "example"}),
    ("GET", f"{BASE}?_type=Patient", {}, None, "fhir_api", "/fhir?_type=Patient", {"interaction": "search-system"}),
    ("POST", f"{BASE}/_search", FORM, "_type=Patient", "fhir_api", "/fhir/_search", {"interaction": "search-system"}),
    ("GET", f"{BASE}/Patient/example/Observation", {}, None, "fhir_api", "/fhir/Patient/example/Observation",
     {"interaction": "search-compartment", "resource-type": "Observation", "compartment": "Patient/example", "patient": "example"}),
    ("POST", f"{BASE}/Patient", FHIR_JSON, PATIENT, "fhir_api", "/fhir/Patient", {"interaction": "create", "resource-type": "Patient"}),
    ("POST", f"{BASE}/Patient", {**FHIR_JSON, "if-none-exist": "identifier=urn:e2e|1"}, PATIENT, "fhir_api", "/fhir/Patient",
     {"interaction": "conditional-create"}),
    ("PUT", f"{BASE}/Patient/e2e-update", FHIR_JSON, json.dumps({"resourceType": "Patient", "id": "e2e-update"}), "fhir_api",
     "/fhir/Patient/e2e-update", {"interaction": "update", "id": "e2e-update", "patient": "e2e-update"}),
    ("PUT", f"{BASE}/Patient?identifier=urn:e2e%7C2", FHIR_JSON, PATIENT, "fhir_api", "/fhir/Patient?identifier=urn:e2e%7C2",
     {"interaction": "conditional-update"}),
    ("PATCH", f"{BASE}/Patient/example", {"content-type": "application/json-patch+json"},
     '[{"op": "replace", "path": "/active", "value": true}]', "fhir_api", "/fhir/Patient/example", {"interaction": "patch"}),
    ("PATCH", f"{BASE}/Patient?identifier=urn:e2e%7C3", {"content-type": "application/json-patch+json"}, "[]", "fhir_api",
     "/fhir/Patient?identifier=urn:e2e%7C3", {"interaction": "conditional-patch"}),
    ("DELETE", f"{BASE}/Basic/e2e-gone", {}, None, "fhir_api", "/fhir/Basic/e2e-gone", {"interaction": "delete", "resource-type": "Basic"}),
    ("DELETE", f"{BASE}/Basic?code=nothing-matches", {}, None, "fhir_api", "/fhir/Basic?code=nothing-matches", {"interaction": "conditional-delete"}),
    ("POST", f"{BASE}", FHIR_JSON, bundle("batch"), "fhir_api", "/fhir", {"interaction": "batch", "bundle-type": "batch"}),
    ("POST", f"{BASE}/", FHIR_JSON, bundle("transaction"), "fhir_api", "/fhir/", {"interaction": "transaction", "bundle-type": "transaction"}),
    ("GET", f"{BASE}/$export", {}, None, "fhir_bulk", "/fhir/$export", {"interaction": "operation-system", "operation": "$export", "pool": "bulk"}),
    ("GET", f"{BASE}/Patient/$export?_type=Observation", {}, None, "fhir_bulk", "/fhir/Patient/$export?_type=Observation",
     {"interaction": "operation-type", "operation": "$export", "pool": "bulk"}),
    ("GET", f"{BASE}/Group/101/$export", {}, None, "fhir_bulk", "/fhir/Group/101/$export",
     {"interaction": "operation-instance", "resource-type": "Group", "id": "101", "pool": "bulk"}),
    # Bulk job URLs (passthrough, pool bulk) are bound to their client: test_bulk_jobs.py.
    ("POST", f"{BASE}/Patient/$validate", FHIR_JSON, PATIENT, "fhir_validate", "/fhir/Patient/$validate",
     {"interaction": "operation-type", "operation": "$validate", "pool": "validate"}),
    ("GET", f"{BASE}/Patient/example/$everything", {}, None, "fhir_api", "/fhir/Patient/example/$everything",
     {"interaction": "operation-instance", "operation": "$everything", "patient": "example", "pool": "fhir"}),
    ("POST", f"{BASE}/Claim/$submit", FHIR_JSON, json.dumps({"resourceType": "Bundle", "type": "collection"}), "fhir_prior_auth",
     "/fhir/Claim/$submit", {"interaction": "operation-type", "operation": "$submit", "pool": "prior-auth"}),
    ("GET", f"{BASE}/Device/example", {}, None, "fhir_device", "/fhir/Device/example", {"interaction": "read", "pool": "device"}),
    ("GET", "/cds-services", {}, None, "cds_hooks", "/cds-services", {"interaction": "cds-discovery", "pool": "cds-hooks"}),
    ("POST", "/cds-services/patient-greeter", {"content-type": "application/json"}, json.dumps({"hook": "patient-view", "context": {}}),
     "cds_hooks", "/cds-services/patient-greeter", {"interaction": "cds-service", "id": "patient-greeter", "pool": "cds-hooks"}),
]


@pytest.mark.parametrize("method,path,headers,body,cluster,upstream_path,expected", INTERACTIONS,
                         ids=[f"{r[0]} {r[1]}" for r in INTERACTIONS])
def test_upstream_receives_the_parsed_interaction(stack, method, path, headers, body, cluster, upstream_path, expected):
    # A CDS Hooks service takes its CDS client's JWT, not a FHIR access token.
    token = stack.cds_token(path.rsplit("/", 1)[1]) if method == "POST" and path.startswith("/cds-services/") else "default"
    tid, status, _, rbody = send(stack, method, path, body, headers, token=token)
    hits = received(stack, tid)
    assert len(hits) == 1, f"status {status}: {rbody[:300]!r}"
    got_cluster, record = hits[0]
    assert got_cluster == cluster
    assert record["method"] == method
    assert record["path"] == upstream_path
    assert_only_identity_upstream(record)
    assert_parsed(audit_of(stack, record), expected)
    if body is not None:
        assert record["body"] == body.encode(), "the body reached the upstream unchanged"


def test_every_interaction_class_is_covered():
    names = {row[6]["interaction"] for row in INTERACTIONS}
    assert names >= {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "history-system",
                     "create", "conditional-create", "conditional-update", "conditional-patch", "conditional-delete",
                     "search-type", "search-system", "search-compartment", "capabilities", "batch", "transaction",
                     "operation-system", "operation-type", "operation-instance"}


class TestRealFhirServer:
    def test_reads_an_example_patient(self, stack):
        assert ("Patient", "example") in stack.loaded
        _, status, headers, body = send(stack, "GET", f"{BASE}/Patient/example")
        assert status == 200
        patient = json.loads(body)
        assert (patient["resourceType"], patient["id"]) == ("Patient", "example")

    def test_searches_example_observations_of_a_patient(self, stack):
        _, status, _, body = send(stack, "GET", f"{BASE}/Observation?subject=Patient/example")
        assert status == 200
        result = json.loads(body)
        assert result["resourceType"] == "Bundle" and result["type"] == "searchset"
        assert result["entry"], "the example data has observations of Patient/example"
        assert all(e["resource"]["subject"]["reference"].endswith("Patient/example") for e in result["entry"])

    def test_creates_reads_updates_and_deletes_through_the_gateway(self, stack):
        _, status, headers, body = send(stack, "POST", f"{BASE}/Patient", PATIENT, FHIR_JSON)
        assert status == 201, body
        pid = json.loads(body)["id"]
        _, status, _, body = send(stack, "GET", f"{BASE}/Patient/{pid}")
        assert status == 200 and json.loads(body)["name"][0]["family"] == "Routing"
        update = json.dumps({"resourceType": "Patient", "id": pid, "name": [{"family": "Updated"}]})
        _, status, _, body = send(stack, "PUT", f"{BASE}/Patient/{pid}", update, FHIR_JSON)
        assert status == 200, body
        _, status, _, _ = send(stack, "DELETE", f"{BASE}/Patient/{pid}")
        assert status in (200, 204)
        _, status, _, _ = send(stack, "GET", f"{BASE}/Patient/{pid}")
        assert status == 410


class TestInternalHeadersCannotBeForged:
    FORGED = {
        "x-fhirgate-pool": "bulk",
        "X-FHIRGATE-PATIENT": "someone-else",
        "x-fhirgate-interaction": "delete",
        "X-FhirGate-Decision": "allow",
        "x-fhirgate-break-glass": "1",
    }

    def test_forged_headers_never_reach_the_upstream(self, stack):
        tid, status, _, _ = send(stack, "GET", f"{BASE}/Patient/example", headers=self.FORGED)
        assert status == 200
        [(cluster, record)] = received(stack, tid)
        assert cluster == "fhir_api"
        seen = internal(record)
        assert seen == {"authz-decision": ["allow"], "subject": ["e2e-system-client"], "scopes": ["system/*.cruds"]}
        assert parsed(audit_of(stack, record)) == {"interaction": "read", "resource-type": "Patient", "id": "example",
                                                   "patient": "example"}

    def test_forged_headers_on_a_request_naming_no_patient_leave_no_patient(self, stack):
        tid, status, _, _ = send(stack, "GET", f"{BASE}/Observation?code=x", headers=self.FORGED)
        [(_, record)] = received(stack, tid)
        assert "x-fhirgate-patient" not in record["headers"]
        assert "x-fhirgate-decision" not in record["headers"]
        assert "patient" not in parsed(audit_of(stack, record))

    def test_forged_headers_on_a_buffered_request_are_stripped_too(self, stack):
        tid, status, _, _ = send(stack, "POST", f"{BASE}/Patient", PATIENT, {**FHIR_JSON, **self.FORGED})
        [(cluster, record)] = received(stack, tid)
        assert cluster == "fhir_api"
        assert_only_identity_upstream(record)
        assert parsed(audit_of(stack, record)) == {"interaction": "create", "resource-type": "Patient"}


LONG = "a" * 2100
# (method, path, headers, body, status, reason)
MALFORMED = [
    ("GET", f"{BASE}/Foo/1", {}, None, 404, "unknown-resource-type"),
    ("GET", f"{BASE}/patient/1", {}, None, 404, "unknown-resource-type"),
    ("GET", "/admin/config", {}, None, 404, "not-fhir-endpoint"),
    ("GET", f"{BASE}/Patient/bad_id", {}, None, 400, "invalid-id"),
    ("GET", f"{BASE}/Patient/{'x' * 65}", {}, None, 400, "invalid-id"),
    ("GET", f"{BASE}/Patient/1/_history/v_1", {}, None, 400, "invalid-version-id"),
    ("GET", f"{BASE}/Patient/%zz", {}, None, 400, "bad-percent-encoding"),
    ("GET", f"{BASE}/Patient?name=%G1", {}, None, 400, "bad-percent-encoding"),
    ("GET", f"{BASE}/Patient?name=%C0%AF", {}, None, 400, "bad-percent-encoding"),
    ("GET", f"{BASE}/Patient?name=a%0D%0Ax-fhirgate-pool:%20bulk", {}, None, 400, "bad-percent-encoding"),
    ("GET", f"{BASE}/Patient/1%2F..%2F..%2Fadmin", {}, None, 400, "invalid-path"),
    ("GET", f"{BASE}//Patient", {}, None, 400, "invalid-path"),
    ("GET", f"{BASE}/Patient?na%20me=x", {}, None, 400, "invalid-query"),
    ("GET", f"{BASE}/Patient/{LONG}", {}, None, 414, "path-too-long"),
    ("GET", f"{BASE}/Patient?name={'b' * 8200}", {}, None, 414, "query-too-long"),
    ("POST", f"{BASE}/Patient/1", {}, None, 405, "method-not-allowed"),
    ("DELETE", f"{BASE}/metadata", {}, None, 405, "method-not-allowed"),
    ("OPTIONS", f"{BASE}/Patient", {}, None, 405, "method-not-allowed"),
    ("DELETE", f"{BASE}/Patient", {}, None, 400, "conditional-criteria-required"),
    ("POST", f"{BASE}/Patient/_search", {"x-http-method-override": "DELETE", **FORM}, "name=x", 400, "method-override-refused"),
    ("POST", f"{BASE}/Patient", FHIR_JSON, "{not json", 400, "invalid-json"),
    ("POST", f"{BASE}/Patient", FHIR_JSON, '{"resourceType":"Observation"}', 400, "resource-type-mismatch"),
    ("PUT", f"{BASE}/Patient/1", FHIR_JSON, '{"resourceType":"Patient","id":"2"}', 400, "id-mismatch"),
    ("POST", f"{BASE}", FHIR_JSON, '{"resourceType":"Bundle","type":"collection"}', 400, "invalid-bundle-type"),
    ("POST", f"{BASE}/Patient", {"content-type": "application/fhir+xml"}, "<Patient/>", 415, "unsupported-media-type"),
    ("POST", f"{BASE}/Patient", FHIR_JSON, None, 400, "body-required"),
    ("GET", f"{BASE}/Patient/1", FHIR_JSON, "{}", 400, "body-not-allowed"),
]


@pytest.mark.parametrize("method,path,headers,body,status,reason", MALFORMED, ids=[f"{r[5]}-{i}" for i, r in enumerate(MALFORMED)])
def test_malformed_requests_get_an_operation_outcome_and_reach_no_upstream(stack, method, path, headers, body, status, reason):
    tid, got_status, rheaders, rbody = send(stack, method, path, body, headers)
    assert (got_status, rheaders.get("content-type")) == (status, "application/fhir+json"), rbody[:300]
    assert outcome_reason(rbody) == reason
    assert received(stack, tid) == []


def test_method_not_allowed_carries_allow(stack):
    _, status, headers, _ = send(stack, "POST", f"{BASE}/Patient/example")
    assert status == 405
    assert headers["allow"] == "GET, PUT, PATCH, DELETE"


class TestBodyLimits:
    BIG = json.dumps({"resourceType": "Patient", "text": {"div": "x" * (9 * 1024 * 1024)}})

    def test_refuses_a_declared_oversized_body_with_413_before_the_body(self, stack):
        # The gateway answers on the head alone, as an Expect-style client would see it.
        declared = {**FHIR_JSON, "content-length": str(len(self.BIG))}
        tid, status, headers, body = send(stack, "POST", f"{BASE}/Patient", None, declared)
        assert status == 413 and outcome_reason(body) == "body-too-large"
        assert received(stack, tid) == []

    def test_refuses_a_chunked_oversized_body_with_413(self, stack):
        tid, status, headers, body = send(stack, "POST", f"{BASE}/Patient", self.BIG, FHIR_JSON, chunked=True)
        assert status == 413 and outcome_reason(body) == "body-too-large"
        assert received(stack, tid) == []

    def test_accepts_a_chunked_body_within_the_limit(self, stack):
        tid, status, _, body = send(stack, "POST", f"{BASE}/Patient", PATIENT, FHIR_JSON, chunked=True)
        assert status == 201, body
        [(_, record)] = received(stack, tid)
        assert record["body"] == PATIENT.encode()


class TestCdsHooks:
    def test_a_prompt_service_returns_its_cards(self, stack):
        _, status, _, body = send(stack, "POST", "/cds-services/patient-greeter", json.dumps({"hook": "patient-view"}),
                                  {"content-type": "application/json"}, token=stack.cds_token("patient-greeter"))
        assert status == 200 and json.loads(body)["cards"][0]["summary"] == "hello from the CDS service"

    def test_a_service_call_needs_the_cds_clients_jwt_for_that_service_once(self, stack):
        # Issue 14, class 10: CDS Hooks 2.0 "Trusting CDS Clients".
        hook = json.dumps({"hook": "patient-view"})
        token = stack.cds_token("patient-greeter")
        cases = [
            (None, "missing-token"),
            (stack.default_token, "token-wrong-audience"),  # a FHIR access token
            (stack.cds_token("other-service"), "token-wrong-audience"),
            (stack.cds_token("patient-greeter", iss="https://not-trusted.example"), "token-unknown-issuer"),
        ]
        for bad, reason in cases:
            tid, status, headers, body = send(stack, "POST", "/cds-services/patient-greeter", hook, {"content-type": "application/json"}, token=bad)
            assert (status, outcome_reason(body)) == (401, reason), reason
            assert received(stack, tid) == []
        _, status, _, _ = send(stack, "POST", "/cds-services/patient-greeter", hook, {"content-type": "application/json"}, token=token)
        assert status == 200
        tid, status, _, body = send(stack, "POST", "/cds-services/patient-greeter", hook, {"content-type": "application/json"}, token=token)
        assert (status, outcome_reason(body)) == (401, "token-replayed")
        assert received(stack, tid) == []
        _, status, _, _ = send(stack, "GET", "/cds-services", token=None)
        assert status == 200, "discovery stays public"

    def test_a_service_timeout_returns_empty_cards(self, stack):
        tid, status, headers, body = send(stack, "POST", "/cds-services/slow-hook", json.dumps({"hook": "patient-view"}),
                                          {"content-type": "application/json"}, token=stack.cds_token("slow-hook"))
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body) == {"cards": []}
        assert [c for c, _ in received(stack, tid)] == ["cds_hooks"], "the hook did reach the CDS service"


@pytest.mark.parametrize("method,path,headers,body,cluster,upstream_path,expected", INTERACTIONS,
                         ids=[f"{r[0]} {r[1]}" for r in INTERACTIONS])
def test_cli_route_agrees_with_the_filter_in_envoy(stack, tmp_path, method, path, headers, body, cluster, upstream_path, expected):
    """`fhirgate route` runs the same core code as the filter: same facts, same request."""
    token = stack.cds_token(path.rsplit("/", 1)[1]) if method == "POST" and path.startswith("/cds-services/") else "default"
    tid, _, _, _ = send(stack, method, path, body, headers, token=token)
    [(got_cluster, record)] = received(stack, tid)
    argv = [str(ROOT / "target" / "debug" / "fhirgate"), "route", method, path, "--config", str(ROOT / "envoy" / "routing.json")]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    if body is not None:
        (tmp_path / "body").write_text(body)
        argv += ["--body", str(tmp_path / "body")]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert out["decision"] == "allow"
    cli_facts = {k[len("x-fhirgate-"):]: v for k, v in out["request"]["facts"].items()}
    assert {k: v for k, v in cli_facts.items() if k in ("interaction", "resource-type", "id", "patient")} == \
        parsed(audit_of(stack, record))
    for name, value in expected.items():
        assert cli_facts.get(name) == value, f"{name}: {cli_facts}"
    clusters = {"fhir": "fhir_api", "bulk": "fhir_bulk", "validate": "fhir_validate", "prior-auth": "fhir_prior_auth",
                "device": "fhir_device", "cds-hooks": "cds_hooks"}
    assert clusters[cli_facts["pool"]] == got_cluster


class TestHttp2:
    """The same parsing and stripping over HTTP/2 (h2c, prior knowledge), via curl."""

    def curl(self, stack, *args):
        tid = uuid.uuid4().hex
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                              "-H", f"x-test-id: {tid}", "-H", f"authorization: Bearer {stack.default_token}", *args], capture_output=True, text=True, timeout=30, check=True).stdout
        version, status = out.split()
        return tid, version, int(status)

    def test_reads_over_http2_with_forged_headers_stripped(self, stack):
        tid, version, status = self.curl(stack, "-H", "x-fhirgate-pool: bulk", "-H", "X-FHIRGATE-PATIENT: other",
                                         f"http://127.0.0.1:{stack.listen_port}{BASE}/Patient/example")
        assert (version, status) == ("2", 200)
        [(cluster, record)] = received(stack, tid)
        assert cluster == "fhir_api"
        assert_only_identity_upstream(record)
        assert parsed(audit_of(stack, record))["patient"] == "example"

    def test_refuses_malformed_requests_over_http2(self, stack):
        tid, version, status = self.curl(stack, "-X", "POST", f"http://127.0.0.1:{stack.listen_port}{BASE}/Patient/example")
        assert (version, status) == ("2", 405)
        assert received(stack, tid) == []

    def test_checks_bodies_over_http2(self, stack):
        tid, version, status = self.curl(stack, "-X", "POST", "-H", "content-type: application/fhir+json",
                                         "--data-binary", '{"resourceType":"Observation"}',
                                         f"http://127.0.0.1:{stack.listen_port}{BASE}/Patient")
        assert (version, status) == ("2", 400)
        assert received(stack, tid) == []


def test_access_log_has_no_paths_queries_or_ids(stack):
    send(stack, "GET", f"{BASE}/Observation?patient=example&name=SECRETNAME")
    send(stack, "GET", f"{BASE}/Patient/example")
    log = stack.log_dir / "envoy-access.log"
    deadline = time.monotonic() + 15  # Envoy flushes file access logs every 10 s by default

    def flushed():
        text = log.read_text() if log.exists() else ""
        return "search-type" in text and '"read"' in text
    while time.monotonic() < deadline and not flushed():
        time.sleep(0.2)
    text = log.read_text()
    assert "search-type" in text and '"read"' in text, "the access log records interactions"
    for secret in ("SECRETNAME", "patient=", "/fhir/r4", "Patient/example", '"example"'):
        assert secret not in text
