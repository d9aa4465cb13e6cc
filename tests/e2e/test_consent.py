"""The consent filter in a real Envoy in front of the FHIR server: labelled resources and real
Consent resources seeded into the server, decisions read from what the client receives.
Consents are cached for Stack.CONSENT_TTL seconds."""
import json
import time
import uuid

import pytest

from stack import BASE, Counters
from test_authz import call
from test_routing import outcome_reason, received

LABEL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def observation(oid, patient, labels=(), system=LABEL_SYSTEM):
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"}, "valueString": "e2e",
            "meta": {"security": [{"system": system, "code": c} for c in labels]}}


def privacy_consent(cid, patient, provision, status="active"):
    return {"resourceType": "Consent", "id": cid, "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"}, "policyRule": {"coding": [{"code": "OPTIN"}]},
            "provision": provision}


@pytest.fixture(scope="module")
def seeded(stack):
    """Three synthetic patients: cp1 with an R-labelled and a plain Observation, cp2 whose
    Consent denies Observations, cp3 with a substance-use (SUD) Observation."""
    run = uuid.uuid4().hex[:6]
    ids = {k: f"{k}-{run}" for k in ("cp1", "cp2", "cp3")}
    for p in ids.values():
        assert stack.put_upstream({"resourceType": "Patient", "id": p, "name": [{"family": "Consent"}]}) in (200, 201)
    resources = [
        observation(f"{ids['cp1']}-r", ids["cp1"], ["R"], CONFIDENTIALITY),
        observation(f"{ids['cp1']}-plain", ids["cp1"]),
        observation(f"{ids['cp2']}-o", ids["cp2"]),
        observation(f"{ids['cp3']}-sud", ids["cp3"], ["SUD"]),
        privacy_consent(f"{ids['cp2']}-consent", ids["cp2"],
                        {"type": "permit", "provision": [{"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]}),
    ]
    for r in resources:
        assert stack.put_upstream(r) in (200, 201), r["id"]
    return ids


class Minted(str):
    """A token that remembers how it was made, so a request can assert a purpose of use the
    only way that counts: in the token (a client's header is ignored)."""

    def __new__(cls, stack, scope, **claims):
        token = super().__new__(cls, stack.token(scope, **claims))
        token.stack, token.scope, token.claims = stack, scope, claims
        return token

    def with_purpose(self, purpose):
        return self.stack.token(self.scope, **self.claims, purpose_of_use=purpose)


def reader(stack):
    return Minted(stack, "user/Patient.rs user/Observation.rs", sub="dr-consent")


def get(stack, path, token, purpose=None, headers=None):
    if purpose:
        token = token.with_purpose(purpose)
    tid, status, rheaders, body = call(stack, "GET", f"{BASE}/{path}", token, headers=dict(headers or {}))
    return status, rheaders, json.loads(body) if body else None


def entry_ids(bundle):
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] != "OperationOutcome")


class TestSecurityLabels:
    def test_a_restricted_read_needs_a_treatment_purpose(self, stack, seeded):
        token = reader(stack)
        status, _, body = get(stack, f"Observation/{seeded['cp1']}-r", token)
        assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (403, "consent-withheld")
        status, _, body = get(stack, f"Observation/{seeded['cp1']}-r", token, purpose="TREAT")
        assert status == 200 and body["id"] == f"{seeded['cp1']}-r"

    def test_a_purpose_of_use_header_from_the_client_is_ignored(self, stack, seeded):
        # Issue 14, class 9: any client could send it; only the token's claim counts.
        for value in ("TREAT", "ETREAT"):
            status, _, body = get(stack, f"Observation/{seeded['cp1']}-r", reader(stack), headers={"x-purpose-of-use": value})
            assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (403, "consent-withheld"), value
        status, _, body = get(stack, f"Observation/{seeded['cp1']}-r", reader(stack), purpose="TREAT")
        assert status == 200

    def test_a_search_loses_the_restricted_entry_and_total_follows(self, stack, seeded):
        token = reader(stack)
        status, _, bundle = get(stack, f"Observation?subject=Patient/{seeded['cp1']}", token, purpose="HPAYMT")
        assert status == 200
        assert entry_ids(bundle) == [f"{seeded['cp1']}-plain"]
        if "total" in bundle:
            assert bundle["total"] == 1
        status, _, bundle = get(stack, f"Observation?subject=Patient/{seeded['cp1']}", token, purpose="TREAT")
        assert entry_ids(bundle) == sorted([f"{seeded['cp1']}-plain", f"{seeded['cp1']}-r"])

    def test_included_resources_are_filtered_too(self, stack, seeded):
        token = reader(stack)
        status, _, bundle = get(stack, f"Patient?_id={seeded['cp1']}&_revinclude=Observation:subject", token)
        assert status == 200, bundle
        ids = entry_ids(bundle)
        assert seeded["cp1"] in ids and f"{seeded['cp1']}-plain" in ids
        assert f"{seeded['cp1']}-r" not in ids

    def test_everything_returns_exactly_what_policy_allows(self, stack, seeded):
        token = Minted(stack, "user/*.rs", sub="dr-consent")
        status, _, bundle = get(stack, f"Patient/{seeded['cp1']}/$everything", token, purpose="HPAYMT")
        assert status == 200, bundle
        ids = entry_ids(bundle)
        assert seeded["cp1"] in ids and f"{seeded['cp1']}-plain" in ids and f"{seeded['cp1']}-r" not in ids
        status, _, bundle = get(stack, f"Patient/{seeded['cp1']}/$everything", token, purpose="TREAT")
        assert f"{seeded['cp1']}-r" in entry_ids(bundle)

    def test_released_substance_use_data_carries_the_part2_label(self, stack, seeded):
        status, _, body = get(stack, f"Observation/{seeded['cp3']}-sud", reader(stack), purpose="TREAT")
        assert status == 200
        assert any(c["code"] == "NORDSCLCD" for c in body["meta"]["security"])


class TestConsents:
    def test_a_denying_consent_withholds_the_patients_observations(self, stack, seeded):
        token = reader(stack)
        status, _, _ = get(stack, f"Observation/{seeded['cp2']}-o", token, purpose="TREAT")
        assert status == 403
        status, _, bundle = get(stack, f"Observation?subject=Patient/{seeded['cp2']}", token, purpose="TREAT")
        assert status == 200 and entry_ids(bundle) == []
        status, _, body = get(stack, f"Patient/{seeded['cp2']}", token, purpose="TREAT")
        assert status == 200, "the Consent denies Observations only"

    def test_break_glass_shows_what_consent_withholds(self, stack, seeded):
        user = f"dr-emergency-{uuid.uuid4().hex[:6]}"
        token = stack.token("user/Patient.rs user/Observation.rs", sub=user)
        status, _, body = get(stack, f"Observation/{seeded['cp2']}-o", token, headers={"x-break-glass": stack.break_glass_token(user)})
        assert status == 200 and body["id"] == f"{seeded['cp2']}-o"
        assert Counters(stack.admin_port, "fhirgate.consent").total("fhirgate.consent.break_glass_released") >= 1

    def test_a_consent_change_on_the_server_takes_effect_within_the_ttl(self, stack, seeded):
        token = reader(stack)
        patient = f"cp4-{uuid.uuid4().hex[:6]}"
        stack.put_upstream({"resourceType": "Patient", "id": patient})
        stack.put_upstream(observation(f"{patient}-o", patient))
        assert get(stack, f"Observation/{patient}-o", token, purpose="TREAT")[0] == 200
        stack.put_upstream(privacy_consent(f"{patient}-consent", patient, {"type": "deny"}))
        time.sleep(stack.CONSENT_TTL + 0.5)
        assert get(stack, f"Observation/{patient}-o", token, purpose="TREAT")[0] == 403, "the new Consent applies"
        stack.put_upstream(privacy_consent(f"{patient}-consent", patient, {"type": "deny"}, status="inactive"))
        time.sleep(stack.CONSENT_TTL + 0.5)
        assert get(stack, f"Observation/{patient}-o", token, purpose="TREAT")[0] == 200, "an inactive Consent no longer applies"


def test_consent_decisions_are_counted_without_ids(stack, seeded):
    get(stack, f"Observation/{seeded['cp1']}-r", reader(stack))
    stats = Counters(stack.admin_port, "fhirgate.consent")
    assert stats.total("fhirgate.consent.withheld.label-withheld") >= 1
    assert stats.total("fhirgate.consent.consent_cache.miss") >= 1
    assert stats.total("fhirgate.consent.consent_cache.hit") >= 1
    for name in stats:
        assert "cp1" not in name and "dr-consent" not in name


def test_the_cli_filters_a_response_as_the_gateway_does(stack, seeded, tmp_path):
    """`fhirgate consent apply` on the upstream's own answer gives what the gateway sent."""
    import http.client
    import subprocess
    from stack import CLI, UPSTREAM_BASE
    conn = http.client.HTTPConnection("127.0.0.1", stack.fhir_port, timeout=30)
    conn.request("GET", f"{UPSTREAM_BASE}/Observation?subject=Patient/{seeded['cp1']}")
    raw = conn.getresponse().read()
    conn.close()
    context = tmp_path / "ctx.json"
    context.write_text(json.dumps({"subject": "dr-consent", "purpose": "HPAYMT", "consents": {seeded["cp1"]: []}}))
    out = subprocess.run([str(CLI), "consent", "apply", "--context", str(context)], input=raw, capture_output=True, check=True)
    result = json.loads(out.stdout)
    assert result["report"]["withheld"] == {"label-withheld": 1}
    _, _, gateway = get(stack, f"Observation?subject=Patient/{seeded['cp1']}", reader(stack), purpose="HPAYMT")
    assert entry_ids(result["body"]) == entry_ids(gateway) == [f"{seeded['cp1']}-plain"]


def test_a_consent_change_takes_effect_at_the_next_changes_poll_not_the_cache_ttl(stack, tmp_path):
    """Issue 14, class 11: with `changesPollSeconds`, each worker asks the FHIR server which
    Consents changed and forgets those patients' cached Consents (here the TTL is 5 minutes)."""
    settings = json.loads((stack.log_dir / "consent.json").read_text())
    settings["consents"].update(cacheSeconds=300, changesPollSeconds=1)
    overlay = tmp_path / "consent-poll.json"
    overlay.write_text(json.dumps(settings))
    port, admin = stack.start_variant("consent-poll", consent=overlay)
    patient = f"cp5-{uuid.uuid4().hex[:6]}"
    stack.put_upstream({"resourceType": "Patient", "id": patient})
    stack.put_upstream(observation(f"{patient}-o", patient))
    token = reader(stack).with_purpose("TREAT")
    path = f"{BASE}/Observation/{patient}-o"
    for _ in range(4):  # fetched once per worker, then cached
        assert call(stack, "GET", path, token, port=port)[1] == 200
    stack.put_upstream(privacy_consent(f"{patient}-consent", patient, {"type": "deny"}))
    time.sleep(3.5)
    for _ in range(4):
        _, status, _, body = call(stack, "GET", path, token, port=port)
        assert status == 403, "the new Consent applies in every worker well before the TTL"
    assert Counters(admin, "fhirgate.consent").total("fhirgate.consent.consent_cache.invalidated") >= 1


class TestWithheldStaysWithheld:
    """Issue 15: no count, version, error body, conditional answer or write status tells what
    the policies withhold."""

    def test_a_count_only_search_is_refused(self, stack, seeded):
        for query in ("_summary=count", "_count=0"):
            status, _, body = get(stack, f"Observation?subject=Patient/{seeded['cp1']}&{query}", reader(stack))
            assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (403, "count-not-permitted"), query

    def test_searching_on_a_label_the_caller_may_not_see_is_refused(self, stack, seeded):
        path = f"Observation?subject=Patient/{seeded['cp1']}&_security=R"
        status, _, body = get(stack, path, reader(stack))
        assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (403, "label-search-not-permitted")
        status, _, bundle = get(stack, path, reader(stack), purpose="TREAT")
        assert status == 200 and entry_ids(bundle) == [f"{seeded['cp1']}-r"]

    def test_earlier_versions_and_unfiltered_exports_are_refused_under_the_shipped_policy(self, stack, seeded, tmp_path):
        settings = json.loads((stack.log_dir / "consent.json").read_text())
        settings.pop("versions")  # the shipped defaults: refuse
        settings.pop("bulkExport")
        settings.pop("conditionalWrites")
        overlay = tmp_path / "consent-versions.json"
        overlay.write_text(json.dumps(settings))
        port, _ = stack.start_variant("consent-versions", consent=overlay)
        token = reader(stack).with_purpose("TREAT")
        for path in (f"Observation/{seeded['cp1']}-plain/_history/1", f"Observation/{seeded['cp1']}-plain/_history"):
            tid, status, _, body = call(stack, "GET", f"{BASE}/{path}", token, port=port)
            assert (status, outcome_reason(body)) == (403, "version-withheld"), path
            assert received(stack, tid) == []
        # Issue 15, class 1: export files are not filtered, so a kick-off is refused.
        system = stack.token("system/*.rs", client_id="etl-consent")
        tid, status, _, body = call(stack, "GET", f"{BASE}/$export", system, headers={"prefer": "respond-async"}, port=port)
        assert (status, outcome_reason(body)) == (403, "export-not-filtered")
        assert received(stack, tid) == []
        # Issue 15, class 5: a conditional write's search answers for resources never checked.
        writer = stack.token("user/Observation.cruds", sub="writer-conditional", purpose_of_use="TREAT")
        tid, status, _, body = call(stack, "DELETE", f"{BASE}/Observation?code=8867-4", writer, port=port)
        assert (status, outcome_reason(body)) == (403, "conditional-write-not-checkable")
        assert received(stack, tid) == []

    def test_an_upstream_error_body_is_reduced_to_its_status(self, stack, seeded):
        missing = f"missing-{uuid.uuid4().hex[:8]}"
        status, headers, body = get(stack, f"Observation/{missing}", reader(stack))
        assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (404, "upstream-error")
        assert missing not in json.dumps(body)

    def test_a_conditional_read_of_a_withheld_resource_is_not_a_304(self, stack, seeded):
        status, headers, body = get(stack, f"Observation/{seeded['cp1']}-r", reader(stack), headers={"if-none-match": 'W/"1"'})
        assert status == 403 and "etag" not in headers and "last-modified" not in headers

    def test_a_committed_write_whose_echo_is_withheld_is_reported_as_committed(self, stack, seeded):
        writer = Minted(stack, "user/Observation.cruds", sub=f"writer-{uuid.uuid4().hex[:6]}")
        oid = f"{seeded['cp1']}-w-{uuid.uuid4().hex[:6]}"
        resource = json.dumps(observation(oid, seeded["cp1"], ["R"], CONFIDENTIALITY))
        _, status, headers, body = call(stack, "PUT", f"{BASE}/Observation/{oid}", writer, resource, {"content-type": "application/fhir+json"})
        assert status in (200, 201), body[:300]
        outcome = json.loads(body)
        assert outcome["issue"][0]["severity"] == "information"
        assert outcome["issue"][0]["details"]["coding"][0]["code"] == "committed-echo-withheld"
        assert b"e2e" not in body, "the stored resource is not echoed"
        status, _, stored = get(stack, f"Observation/{oid}", writer, purpose="TREAT")
        assert status == 200 and stored["id"] == oid, "it was written"

    def test_one_patients_many_consents_withhold_only_that_patients_resources(self, stack):
        # Issue 15: 1,001 Consents for one patient made the shared lookup page, and every
        # patient of the same response was withheld. Now each is asked for alone, and only
        # the patient whose Consents fill more than a page is undecided (withheld).
        run = uuid.uuid4().hex[:6]
        crowded, plain = f"crowded-{run}", f"plain-{run}"
        for p in (crowded, plain):
            assert stack.put_upstream({"resourceType": "Patient", "id": p}) in (200, 201)
            assert stack.put_upstream(observation(f"{p}-o", p)) in (200, 201)
        junk = [privacy_consent(f"{crowded}-c{i}", crowded, {"type": "permit"}) for i in range(1001)]
        assert stack.transaction_upstream(junk) == 200
        status, _, bundle = get(stack, f"Observation?subject=Patient/{crowded},Patient/{plain}", reader(stack), purpose="TREAT")
        assert status == 200
        assert entry_ids(bundle) == [f"{plain}-o"]
        assert Counters(stack.admin_port, "fhirgate.consent").total("fhirgate.consent.consent_cache.fetch_split") >= 1


class TestWritesNeedAFullRead:
    """Issue 15, class 5: a caller may change only what it may read whole; labels and the
    patient change only with the relabelling privilege; no write status tells a withheld
    value; conditional writes and bundle entries are decided like the requests they are."""

    @pytest.fixture
    def labelled(self, stack, seeded):
        oid = f"{seeded['cp1']}-guard-{uuid.uuid4().hex[:6]}"
        assert stack.put_upstream(observation(oid, seeded["cp1"], ["R"], CONFIDENTIALITY)) in (200, 201)
        return oid

    def writer(self, stack):
        return Minted(stack, "user/Observation.cruds", sub=f"writer-{uuid.uuid4().hex[:6]}")

    def upstream(self, stack, oid):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", stack.fhir_port, timeout=30)
        try:
            conn.request("GET", f"/fhir/Observation/{oid}", headers={"accept": "application/fhir+json"})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def send(self, stack, method, path, token, body=None, content_type="application/fhir+json"):
        tid, status, headers, rbody = call(stack, method, f"{BASE}/{path}", token,
                                           json.dumps(body) if body is not None else None,
                                           {"content-type": content_type} if body is not None else {})
        return tid, status, json.loads(rbody) if rbody else None

    def test_removing_the_labels_of_a_resource_the_caller_may_not_read_is_refused(self, stack, labelled):
        patch = [{"op": "remove", "path": "/meta/security"}]
        tid, status, body = self.send(stack, "PATCH", f"Observation/{labelled}", self.writer(stack), patch, "application/json-patch+json")
        assert (status, outcome_reason(json.dumps(body).encode())) == (403, "consent-withheld")
        assert received(stack, tid) == [], "the write never reached the FHIR server"
        assert self.upstream(stack, labelled)["meta"]["security"], "still labelled"

    def test_a_patch_test_op_is_no_oracle_for_a_withheld_value(self, stack, labelled):
        answers = set()
        for guess in ("e2e", "wrong"):
            patch = [{"op": "test", "path": "/valueString", "value": guess}]
            _, status, body = self.send(stack, "PATCH", f"Observation/{labelled}", self.writer(stack), patch, "application/json-patch+json")
            answers.add((status, outcome_reason(json.dumps(body).encode())))
        assert answers == {(403, "consent-withheld")}

    def test_deleting_or_operating_on_a_withheld_resource_is_refused(self, stack, labelled):
        # An operation on a resource is at least a read of it: `$validate` (the operation
        # this gateway lets a writer call) would answer about the stored resource.
        for method, path, body in (("DELETE", f"Observation/{labelled}", None),
                                   ("POST", f"Observation/{labelled}/$validate", {"resourceType": "Parameters"})):
            tid, status, body = self.send(stack, method, path, self.writer(stack), body)
            assert (status, outcome_reason(json.dumps(body).encode())) == (403, "consent-withheld"), path
            assert received(stack, tid) == []

    def test_a_caller_who_may_read_it_may_change_it_but_not_its_labels(self, stack, labelled):
        writer = self.writer(stack).with_purpose("TREAT")
        patch = [{"op": "replace", "path": "/status", "value": "amended"}]
        _, status, _ = self.send(stack, "PATCH", f"Observation/{labelled}", writer, patch, "application/json-patch+json")
        assert status == 200
        assert self.upstream(stack, labelled)["status"] == "amended"
        for patch in ([{"op": "remove", "path": "/meta/security"}],
                      [{"op": "replace", "path": "/subject/reference", "value": "Patient/someone-else"}]):
            tid, status, body = self.send(stack, "PATCH", f"Observation/{labelled}", writer, patch, "application/json-patch+json")
            assert (status, outcome_reason(json.dumps(body).encode())) == (403, "relabel-not-permitted"), patch
            assert received(stack, tid) == []

    def test_bundle_entries_are_decided_like_the_requests_they_stand_for(self, stack, seeded, labelled):
        writer = self.writer(stack).with_purpose("TREAT")
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Observation/{labelled}/_history/1"}}]}
        reader_token = Minted(stack, "user/Observation.rs", sub="dr-batch")
        tid, status, body = self.send(stack, "POST", "", reader_token, batch)
        # Earlier versions pass this stack's consent filter (versions: allow); a count does not.
        assert status == 200, body
        batch["entry"] = [{"request": {"method": "GET", "url": f"Observation?subject=Patient/{seeded['cp1']}&_summary=count"}}]
        tid, status, body = self.send(stack, "POST", "", reader_token, batch)
        assert (status, outcome_reason(json.dumps(body).encode())) == (403, "count-not-permitted")
        assert received(stack, tid) == []
        batch["entry"] = [{"request": {"method": "DELETE", "url": f"Observation/{labelled}"}}]
        tid, status, body = self.send(stack, "POST", "", writer, batch)
        assert (status, outcome_reason(json.dumps(body).encode())) == (403, "bundle-entry-not-checkable")
        assert self.upstream(stack, labelled)["id"] == labelled


class TestBinariesFollowTheirSecurityContext:
    """Issue 15, class 6: a Binary is judged by the labels and patient of the resource its
    securityContext names, read from the FHIR server."""

    def test_a_binary_of_a_restricted_document_needs_the_documents_permission(self, stack, seeded):
        run = uuid.uuid4().hex[:6]
        restricted, plain = f"doc-r-{run}", f"doc-{run}"
        for did, labels in ((restricted, [{"system": CONFIDENTIALITY, "code": "R"}]), (plain, [])):
            assert stack.put_upstream({"resourceType": "DocumentReference", "id": did, "status": "current",
                                       "meta": {"security": labels}, "subject": {"reference": f"Patient/{seeded['cp1']}"},
                                       "content": [{"attachment": {"url": f"Binary/{did}-bin"}}]}) in (200, 201)
            assert stack.put_upstream({"resourceType": "Binary", "id": f"{did}-bin", "contentType": "text/plain",
                                       "data": "ZTJl", "securityContext": {"reference": f"DocumentReference/{did}"}}) in (200, 201)
        token = Minted(stack, "user/Binary.rs", sub="dr-binary")
        status, _, body = get(stack, f"Binary/{restricted}-bin", token, headers={"accept": "application/fhir+json"})
        assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (403, "consent-withheld")
        status, _, body = get(stack, f"Binary/{restricted}-bin", token, purpose="TREAT", headers={"accept": "application/fhir+json"})
        assert status == 200 and body["id"] == f"{restricted}-bin"
        status, _, body = get(stack, f"Binary/{plain}-bin", token, headers={"accept": "application/fhir+json"})
        assert status == 200 and body["id"] == f"{plain}-bin"
        # The denying Consent of the context's patient withholds it too.
        assert stack.put_upstream({"resourceType": "DocumentReference", "id": f"doc-cp2-{run}", "status": "current",
                                   "subject": {"reference": f"Patient/{seeded['cp2']}"}, "content": [{"attachment": {"url": "x"}}]}) in (200, 201)
        assert stack.put_upstream({"resourceType": "Binary", "id": f"doc-cp2-{run}-bin", "contentType": "text/plain",
                                   "data": "ZTJl", "securityContext": {"reference": f"DocumentReference/doc-cp2-{run}"}}) in (200, 201)
        stack.put_upstream(privacy_consent(f"{seeded['cp2']}-deny-docs", seeded["cp2"], {"type": "deny"}))
        time.sleep(stack.CONSENT_TTL + 0.5)
        status, _, _ = get(stack, f"Binary/doc-cp2-{run}-bin", token, purpose="TREAT", headers={"accept": "application/fhir+json"})
        assert status == 403
        assert Counters(stack.admin_port, "fhirgate.consent").total("fhirgate.consent.security_context.read") >= 1
