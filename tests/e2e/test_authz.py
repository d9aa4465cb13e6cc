"""The SMART authorization filter in a real Envoy, with tokens from a real OAuth issuer
(oauth2-mock-server, RS256 and ES256 keys from its JWKS). What the upstream received is read
from the recorders."""
import base64
import json
import time
import uuid

import pytest

from stack import BASE, Counters
from test_routing import FHIR_JSON, internal, outcome_reason, received


def call(stack, method, path, token=None, body=None, headers=None, port=None):
    tid = uuid.uuid4().hex
    h = {"x-test-id": tid, **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    status, rheaders, rbody = stack.request(method, path, body, h, port=port)
    return tid, status, rheaders, rbody


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


class TestTokenAttacks:
    """Every one is refused with 401, an RFC 6750 challenge and an OperationOutcome, and
    nothing reaches the upstream."""

    def cases(self, stack):
        good = stack.token("system/*.rs")
        head, payload, sig = good.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        forged = dict(claims, scope="system/*.cruds")
        return [
            ("no token", None, "missing-token"),
            ("alg none", f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.", "token-algorithm-not-allowed"),
            ("HS256 header", f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{sig}", "token-algorithm-not-allowed"),
            ("payload swapped", f"{head}.{b64(forged)}.{sig}", "token-bad-signature"),
            ("signature stripped", f"{head}.{payload}.", "token-bad-signature"),
            ("unknown kid", f"{b64({'alg': 'RS256', 'kid': 'nope'})}.{payload}.{sig}", "token-unknown-key"),
            ("kid path junk", f"{b64({'alg': 'RS256', 'kid': '../../../etc/passwd'})}.{payload}.{sig}", "token-unknown-key"),
            ("kid sql junk", f"{b64({'alg': 'RS256', 'kid': chr(39) + ' OR 1=1 --'})}.{payload}.{sig}", "token-unknown-key"),
            ("expired", stack.token("system/*.rs", expires_in=-120), "token-expired"),
            ("nbf in the future", stack.token("system/*.rs", nbf=4102444800), "token-not-yet-valid"),
            ("wrong aud", stack.token("system/*.rs", aud="https://other.example/fhir"), "token-wrong-audience"),
            ("no sub", stack.token("system/*.rs", sub=None), "token-missing-claim"),
            ("wrong iss", f"{head}.{b64(dict(claims, iss='https://evil.example'))}.{sig}", "token-unknown-issuer"),
            ("oversize", stack.token("system/*.rs", pad="x" * 9000), "token-too-large"),
            ("bad base64", "eyJhbGciOiJSUzI1NiJ9.***.abc", "token-malformed"),
            ("opaque, unknown to introspection", "not-a-jwt", "token-inactive"),
        ]

    def test_every_attack_is_refused_with_401(self, stack):
        for name, token, reason in self.cases(stack):
            tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", token)
            assert status == 401, f"{name}: {status} {body[:200]!r}"
            assert outcome_reason(body) == reason, name
            assert headers["www-authenticate"].startswith('Bearer realm="fhir"'), name
            if token and len(token) > 20:
                assert token[:40] not in headers["www-authenticate"] and token[:40].encode() not in body, f"{name}: token echoed"
            assert received(stack, tid) == [], name

    def test_a_token_of_an_issuer_whose_jwks_is_unreachable_is_refused_as_a_retryable_gateway_fault(self, stack):
        token = stack.token("system/*.rs", iss=stack.failing_issuer)
        tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", token)
        assert (status, outcome_reason(body)) == (503, "keys-unavailable")
        assert headers["retry-after"] == "5"
        assert received(stack, tid) == []

    def test_basic_auth_is_not_a_bearer_token(self, stack):
        tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", headers={"authorization": "Basic dXNlcjpwYXNz"})
        assert (status, outcome_reason(body)) == (401, "token-not-bearer")


class TestValidTokens:
    def test_rs256_and_es256_tokens_are_accepted(self, stack):
        for alg in ("RS256", "ES256"):
            tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", stack.token("user/Patient.rs", alg=alg))
            assert status == 200, f"{alg}: {body[:200]!r}"

    def test_identity_reaches_the_upstream_as_internal_headers(self, stack):
        token = stack.token("patient/*.rs", patient="example", sub="user-42", client_id="app-7", tenant="hospital-a")
        tid, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token)
        assert status == 200
        [(_, record)] = received(stack, tid)
        seen = internal(record)
        assert seen["authz-decision"] == ["allow"]
        assert (seen["subject"], seen["client-id"], seen["tenant"], seen["launch-patient"]) == (["user-42"], ["app-7"], ["hospital-a"], ["example"])
        assert "authorization" in record["headers"], "the FHIR server still gets the token"

    def test_metadata_needs_no_token(self, stack):
        _, status, _, _ = call(stack, "GET", f"{BASE}/metadata")
        assert status == 200


class TestJwtAuthnMode:
    """The RSA fast path: Envoy's jwt_authn verifies, fhirgate.authz decides on its payload."""

    def test_valid_tokens_are_decided_as_usual(self, stack):
        port = stack.jwt_authn_port
        for alg in ("RS256", "ES256"):
            _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", stack.token("user/Patient.rs", alg=alg), port=port)
            assert status == 200, f"{alg}: {body[:200]!r}"
        token = stack.token("patient/*.rs", patient="example", sub="fast-path-user")
        tid, status, _, _ = call(stack, "GET", f"{BASE}/Observation", token, port=port)
        assert status == 200
        [(_, record)] = received(stack, tid)
        assert record["path"] == "/fhir/Observation?patient=Patient/example"
        assert internal(record)["subject"] == ["fast-path-user"]
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient/pat1", token, port=port)
        assert (status, outcome_reason(body)) == (403, "patient-mismatch")

    def test_tokens_envoy_refuses_are_401_with_an_operation_outcome(self, stack):
        port = stack.jwt_authn_port
        good = stack.token("system/*.rs")
        head, payload, sig = good.split(".")
        forged = b64(dict(json.loads(base64.urlsafe_b64decode(payload + "==")), scope="system/*.cruds"))
        for name, token, reason in [
            ("payload swapped", f"{head}.{forged}.{sig}", "token-invalid"),
            ("expired", stack.token("system/*.rs", expires_in=-120), "token-invalid"),
            ("wrong aud", stack.token("system/*.rs", aud="https://other.example"), "token-invalid"),
            ("alg none", f"{b64({'alg': 'none'})}.{payload}.", "token-invalid"),
            ("no token", None, "missing-token"),
        ]:
            tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
            assert (status, outcome_reason(body)) == (401, reason), name
            assert received(stack, tid) == [], name

    def test_a_client_cannot_forge_the_forwarded_payload(self, stack):
        claims = {"iss": stack.issuer, "sub": "attacker", "scope": "system/*.cruds", "exp": 4102444800}
        forged = {"x-fhirgate-jwt-payload": b64(claims)}
        for token in (None, "not.a.token"):
            tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token, headers=forged, port=stack.jwt_authn_port)
            assert status == 401, body[:200]
            assert received(stack, tid) == []


class TestOpaqueTokens:
    """RFC 7662: opaque tokens are introspected through an Envoy cluster, then decided as JWTs are."""

    def test_an_active_opaque_token_is_decided_like_a_jwt(self, stack):
        token = stack.opaque_token("patient/*.rs", patient="example", sub="opaque-user", client_id="opaque-app")
        tid, status, _, body = call(stack, "GET", f"{BASE}/Observation", token)
        assert status == 200, body[:300]
        [(_, record)] = received(stack, tid)
        assert record["path"] == "/fhir/Observation?patient=Patient/example"
        assert (internal(record)["subject"], internal(record)["client-id"]) == (["opaque-user"], ["opaque-app"])
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient/pat1", token)
        assert (status, outcome_reason(body)) == (403, "patient-mismatch")

    def test_unknown_and_revoked_opaque_tokens_are_refused(self, stack):
        revoked = stack.opaque_token("system/*.rs")
        stack.revoke_opaque(revoked)
        for name, token in (("unknown", "0123456789abcdef0123456789abcdef"), ("revoked", revoked)):
            tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", token)
            assert (status, outcome_reason(body)) == (401, "token-inactive"), name
            assert 'error="invalid_token"' in headers["www-authenticate"], name
            assert received(stack, tid) == [], name

    def test_an_opaque_token_for_another_audience_is_refused(self, stack):
        token = stack.opaque_token("system/*.rs", aud="https://other.example/fhir")
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token)
        assert (status, outcome_reason(body)) == (401, "token-wrong-audience")


class TestReportOnlyMode:
    """Shadow rollout: the decision is made, marked for the filters after and counted, but
    nothing is refused or narrowed."""

    def test_what_enforcement_would_refuse_passes_marked(self, stack):
        port = stack.report_only_port
        for token, reason in ((stack.token("user/Observation.rs"), "insufficient-scope"), (None, "missing-token"),
                              (stack.token("system/*.rs", expires_in=-120), "token-expired")):
            tid, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
            assert status == 200, reason
            [(_, record)] = received(stack, tid)
            assert internal(record)["authz-decision"] == ["report-only"] and internal(record)["authz-reason"] == [reason]

    def test_a_search_is_not_narrowed(self, stack):
        token = stack.token("patient/*.rs", patient="example")
        tid, status, _, _ = call(stack, "GET", f"{BASE}/Observation?code=x", token, port=stack.report_only_port)
        [(_, record)] = received(stack, tid)
        assert record["path"] == "/fhir/Observation?code=x"
        assert internal(record)["authz-reason"] == ["narrowed"]

    def test_report_only_decisions_are_counted(self, stack):
        call(stack, "GET", f"{BASE}/Patient/example", None, port=stack.report_only_port)
        assert Counters(stack.report_only_admin_port, "report_only").total("fhirgate.authz.report_only.missing-token") >= 1

    def test_the_routing_filter_still_refuses_malformed_requests(self, stack):
        _, status, _, body = call(stack, "GET", f"{BASE}/Foo/1", None, port=stack.report_only_port)
        assert (status, outcome_reason(body)) == (404, "unknown-resource-type")


class TestKeyRotation:
    def test_a_key_rotated_while_envoy_runs_is_fetched_on_first_sight(self, stack):
        old = stack.token("user/Patient.rs")
        kid = stack.rotate_key("RS256")
        new = stack.token("user/Patient.rs")
        assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == kid
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", new)
        assert status == 200, body[:300]
        _, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", old)
        assert status == 200, "tokens signed with the previous key still verify"

    def test_es256_key_rotation_too(self, stack):
        stack.rotate_key("ES256")
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", stack.token("user/Patient.rs", alg="ES256"))
        assert status == 200, body[:300]


class TestPatientCompartment:
    @pytest.fixture(scope="class")
    def patient_token(self, stack):
        return stack.token("launch/patient patient/*.rs", patient="example")

    def test_reads_its_own_patient(self, stack, patient_token):
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", patient_token)
        assert status == 200 and json.loads(body)["id"] == "example"

    def test_another_patient_is_refused_before_the_upstream(self, stack, patient_token):
        tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/pat1", patient_token)
        assert (status, outcome_reason(body)) == (403, "patient-mismatch")
        assert received(stack, tid) == []

    def test_a_search_is_narrowed_to_the_patient_at_the_upstream(self, stack, patient_token):
        tid, status, _, body = call(stack, "GET", f"{BASE}/Observation?code=http://loinc.org%7C29463-7", patient_token)
        assert status == 200
        [(_, record)] = received(stack, tid)
        assert record["path"] == "/fhir/Observation?code=http://loinc.org%7C29463-7&patient=Patient/example"
        for entry in json.loads(body).get("entry", []):
            assert entry["resource"]["subject"]["reference"].endswith("Patient/example")

    def test_a_search_naming_another_patient_is_refused(self, stack, patient_token):
        tid, status, _, body = call(stack, "GET", f"{BASE}/Observation?patient=pat1", patient_token)
        assert (status, outcome_reason(body)) == (403, "patient-mismatch")
        assert received(stack, tid) == []

    def test_an_or_list_smuggling_another_patient_is_refused(self, stack, patient_token):
        _, status, _, body = call(stack, "GET", f"{BASE}/Observation?subject=Patient/example,Patient/pat1", patient_token)
        assert (status, outcome_reason(body)) == (403, "patient-mismatch")

    def test_a_read_by_id_is_checked_on_the_response(self, stack, patient_token):
        # Observation/example is Patient/example's; a resource of another patient is replaced
        # by 403 after the upstream answered, before any of it reaches the client.
        other = json.dumps({"resourceType": "Observation", "id": "e2e-other", "status": "final", "code": {"text": "x"},
                            "subject": {"reference": "Patient/pat1"}})
        assert stack.request("PUT", f"{BASE}/Observation/e2e-other", other,
                             {"authorization": f"Bearer {stack.default_token}", **FHIR_JSON})[0] in (200, 201)
        _, status, _, body = call(stack, "GET", f"{BASE}/Observation/example", patient_token)
        assert status == 200 and json.loads(body)["subject"]["reference"] == "Patient/example"
        tid, status, headers, body = call(stack, "GET", f"{BASE}/Observation/e2e-other", patient_token)
        assert (status, outcome_reason(body)) == (403, "not-in-patient-compartment")
        assert b"pat1" not in body and headers["content-type"] == "application/fhir+json"
        assert len(received(stack, tid)) == 1, "the upstream was asked; its answer was withheld"

    def test_a_create_for_another_patient_is_refused_on_the_request_body(self, stack):
        token = stack.token("patient/Observation.c", patient="example")
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
        mine = json.dumps(dict(obs, subject={"reference": "Patient/example"}))
        theirs = json.dumps(dict(obs, subject={"reference": "Patient/pat1"}))
        _, status, _, body = call(stack, "POST", f"{BASE}/Observation", token, mine, FHIR_JSON)
        assert status == 201, body[:300]
        tid, status, _, body = call(stack, "POST", f"{BASE}/Observation", token, theirs, FHIR_JSON)
        assert (status, outcome_reason(body)) == (403, "not-in-patient-compartment")
        assert received(stack, tid) == []

    def test_patient_scopes_without_a_launch_patient_grant_nothing(self, stack):
        tid, status, _, body = call(stack, "GET", f"{BASE}/Observation", stack.token("patient/*.rs"))
        assert (status, outcome_reason(body)) == (403, "patient-context-missing")


class TestScopesAndShapes:
    def test_insufficient_scope_is_403_with_insufficient_scope_challenge(self, stack):
        tid, status, headers, body = call(stack, "DELETE", f"{BASE}/Patient/example", stack.token("user/Patient.rs"))
        assert (status, outcome_reason(body)) == (403, "insufficient-scope")
        assert 'error="insufficient_scope"' in headers["www-authenticate"]
        assert received(stack, tid) == []

    def test_a_reverse_include_needs_read_on_what_it_returns(self, stack):
        _, status, _, body = call(stack, "GET", f"{BASE}/Patient?_revinclude=Observation:subject", stack.token("user/Patient.rs"))
        assert (status, outcome_reason(body)) == (403, "query-shape-not-permitted")
        _, status, _, _ = call(stack, "GET", f"{BASE}/Patient?_revinclude=Observation:subject&_count=1",
                               stack.token("user/Patient.rs user/Observation.r"))
        assert status == 200

    def test_bulk_export_needs_system_scopes(self, stack):
        for scope, expected in (("user/*.rs", 403), ("patient/*.rs", 403), ("system/Patient.rs", 403), ("system/*.rs", None)):
            tid, status, _, body = call(stack, "GET", f"{BASE}/$export", stack.token(scope, patient="example"))
            if expected:
                assert (status, outcome_reason(body)) == (403, "bulk-requires-system-scope"), scope
                assert received(stack, tid) == []
            else:
                assert [c for c, _ in received(stack, tid)] == ["fhir_bulk"], scope

    def test_us_core_medication_include_under_patient_scopes(self, stack):
        token = stack.token("patient/MedicationRequest.rs patient/Medication.rs", patient="example")
        tid, status, _, body = call(stack, "GET", f"{BASE}/MedicationRequest?_include=MedicationRequest:medication", token)
        assert status == 200, body[:300]
        [(_, record)] = received(stack, tid)
        assert record["path"] == "/fhir/MedicationRequest?_include=MedicationRequest:medication&patient=Patient/example"
        without = stack.token("patient/MedicationRequest.rs", patient="example")
        _, status, _, body = call(stack, "GET", f"{BASE}/MedicationRequest?_include=MedicationRequest:medication", without)
        assert (status, outcome_reason(body)) == (403, "query-shape-not-permitted")

    def test_a_transaction_is_authorized_entry_by_entry(self, stack):
        token = stack.token("patient/Observation.c patient/Patient.r", patient="example")
        entry = lambda ref: {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                          "subject": {"reference": ref}}, "request": {"method": "POST", "url": "Observation"}}
        bad = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry("Patient/example"), entry("Patient/pat1")]})
        tid, status, _, body = call(stack, "POST", f"{BASE}", token, bad, FHIR_JSON)
        assert (status, outcome_reason(body)) == (403, "not-in-patient-compartment")
        assert received(stack, tid) == []
        good = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry("Patient/example")]})
        tid, status, _, body = call(stack, "POST", f"{BASE}", token, good, FHIR_JSON)
        assert len(received(stack, tid)) == 1, body[:300]


def test_decisions_token_cache_and_jwks_are_counted_without_ids(stack):
    token = stack.token("user/Patient.rs", sub="metrics-user")
    for _ in range(3):
        call(stack, "GET", f"{BASE}/Patient/example", token)
    call(stack, "GET", f"{BASE}/Patient/example", stack.token("user/Patient.rs", expires_in=-120))
    call(stack, "GET", f"{BASE}/Foo/1", token)
    stats = Counters(stack.admin_port)
    value = stats.total
    assert value("fhirgate.authz.allowed") >= 3
    assert value("fhirgate.authz.denied.token-expired") >= 1
    assert value("fhirgate.routing.denied.unknown-resource-type") >= 1
    assert value("fhirgate.routing.routed.read") >= 3
    assert value("fhirgate.authz.token_cache.hit") >= 2
    assert value("fhirgate.authz.token_cache.miss") >= 1
    assert value("fhirgate.authz.jwks.refreshed") >= 1
    for name in stats:
        assert "metrics-user" not in name and "example" not in name and "eyJ" not in name


class TestRevocationList:
    """Issue 14, class 11: a revocation fetched from the issuer takes effect within seconds in
    every worker, for tokens already verified and cached."""

    def test_a_revoked_jti_is_refused_even_when_its_token_is_cached(self, stack):
        jti = uuid.uuid4().hex
        token = stack.token("user/Patient.rs", jti=jti)
        for _ in range(4):  # verified once, then served from each worker's cache
            _, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", token)
            assert status == 200
        other = stack.token("user/Patient.rs", jti=uuid.uuid4().hex)
        stack.revoke_jti(jti)
        time.sleep(2.5)  # refreshSeconds is 1
        for _ in range(4):
            tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", token)
            assert (status, outcome_reason(body)) == (401, "token-revoked")
            assert received(stack, tid) == []
        _, status, _, _ = call(stack, "GET", f"{BASE}/Patient/example", other)
        assert status == 200
        assert Counters(stack.admin_port).total("fhirgate.authz.revocation_list.refreshed") >= 2
