"""The rate-limit filter in a real Envoy (two worker threads, a new connection per request, so
requests land on both workers and share one budget through shared data). Tenants `rl-test`
and `rl-bulk` have small tiers (stack.TEST_TIERS); tokens name the tenant in a claim."""
import json
import time
import uuid

import pytest

from stack import BASE, Counters
from test_authz import call
from test_routing import FHIR_JSON, internal, outcome_reason, received

PATIENT = json.dumps({"resourceType": "Patient", "name": [{"family": "Ratelimit"}]})
QUOTA_HEADERS = ("retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit", "ratelimit-policy")


def user_token(stack, user, scope="user/Patient.cruds", tenant="rl-test"):
    return stack.token(scope, sub=user, tenant=tenant)


def create(stack, token, headers=None):
    return call(stack, "POST", f"{BASE}/Patient", token, PATIENT, {**FHIR_JSON, **(headers or {})})


def throttled(body) -> bool:
    oo = json.loads(body)
    return oo["issue"][0]["code"] == "throttled" and outcome_reason(body) == "rate-limited"


def fresh_user():
    return f"rl-user-{uuid.uuid4().hex[:8]}"


class TestLimits:
    def test_the_write_after_the_limit_gets_429_with_every_header_and_an_outcome(self, stack):
        token = user_token(stack, fresh_user())
        remaining = []
        for _ in range(3):
            _, status, headers, body = create(stack, token)
            assert status == 201, body[:300]
            remaining.append(headers.get("x-ratelimit-remaining"))
        assert remaining == ["2", "1", "0"], "admitted responses carry the remaining quota"
        tid, status, headers, body = create(stack, token)
        assert status == 429
        for h in QUOTA_HEADERS:
            assert h in headers, h
        assert int(headers["retry-after"]) in range(1, 21), "one write refills every 20 s"
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("3", "0")
        assert headers["ratelimit-policy"] == "3;w=60"
        assert throttled(body)
        assert received(stack, tid) == [], "a limited request never reaches the upstream"

    def test_another_user_of_the_tenant_is_unaffected(self, stack):
        first, second = user_token(stack, fresh_user()), user_token(stack, fresh_user())
        for _ in range(3):
            create(stack, first)
        assert create(stack, first)[1] == 429
        assert create(stack, second)[1] == 201

    def test_reads_have_their_own_budget(self, stack):
        token = user_token(stack, fresh_user())
        for _ in range(4):
            create(stack, token)
        assert call(stack, "GET", f"{BASE}/Patient/example", token)[1] == 200

    def test_a_tenants_third_bulk_kickoff_within_the_hour_is_refused(self, stack):
        tenant_clients = [stack.token("system/*.rs", sub=f"etl-{i}-{uuid.uuid4().hex[:6]}", tenant="rl-bulk") for i in range(3)]
        statuses = []
        for token in tenant_clients:
            tid, status, headers, body = call(stack, "GET", f"{BASE}/$export", token, headers={"prefer": "respond-async"})
            statuses.append(status)
        assert statuses[0] != 429 and statuses[1] != 429, statuses
        assert status == 429 and throttled(body), "bulk is counted per tenant, whichever client asks"
        assert 1700 <= int(headers["retry-after"]) <= 1800, "the next slot opens in half an hour (2 per hour)"
        assert received(stack, tid) == []
        # Status polling is not a kick-off.
        poll = call(stack, "GET", f"{BASE}/bulk-status/job-1", tenant_clients[0])
        assert poll[1] != 429

    def test_a_weighted_search_spends_its_weight(self, stack):
        token = user_token(stack, fresh_user(), scope="user/Patient.rs")
        _, status, headers, _ = call(stack, "GET", f"{BASE}/Patient?_count=500", token)
        assert status == 200
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("5", "2"), "weight 3: one plus two for a large _count"
        _, status, headers, body = call(stack, "GET", f"{BASE}/Patient?_count=500", token)
        assert status == 429 and throttled(body)
        _, status, headers, _ = call(stack, "GET", f"{BASE}/Patient?_count=10", token)
        assert (status, headers["x-ratelimit-remaining"]) == (200, "1"), "a plain search still fits"


class TestBreakGlass:
    def limited(self, stack, user):
        token = user_token(stack, user)
        for _ in range(3):
            create(stack, token)
        assert create(stack, token)[1] == 429
        return token

    def test_a_valid_token_passes_a_limited_user_and_marks_the_request(self, stack):
        user = fresh_user()
        token = self.limited(stack, user)
        tid, status, _, body = create(stack, token, {"x-break-glass": stack.break_glass_token(user)})
        assert status == 201, body[:300]
        [(cluster, record)] = received(stack, tid)
        marks = internal(record)
        assert marks.get("break-glass") == ["ETREAT"] and marks.get("subject") == [user]
        assert "break-glass-user" not in marks, "the break-glass user is the subject: not sent twice"
        assert "x-break-glass" not in record["headers"], "the token itself never travels upstream"

    def test_forged_expired_replayed_and_borrowed_tokens_are_refused(self, stack):
        user = fresh_user()
        token = self.limited(stack, user)
        good = stack.break_glass_token(user)
        payload, mac = good.split(".")
        forged = f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
        short = stack.break_glass_token(user, ttl=1)
        time.sleep(2.1)
        used = stack.break_glass_token(user)
        assert create(stack, token, {"x-break-glass": used})[1] == 201
        cases = [
            (forged, "break-glass-bad-signature"),
            (short, "break-glass-expired"),
            (used, "break-glass-replayed"),
            (stack.break_glass_token("someone-else"), "break-glass-user-mismatch"),
            ("not-a-token", "break-glass-malformed"),
        ]
        for bg, reason in cases:
            tid, status, _, body = create(stack, token, {"x-break-glass": bg})
            assert (status, outcome_reason(body)) == (403, reason), reason
            assert received(stack, tid) == []
        # Issue 15, class 7: an access token naming no user never carries anyone's break-glass
        # (this gateway's issuer config already requires `sub`; the rate-limit filter refuses
        # the pair on its own too, natively tested).
        anonymous = stack.token("system/Patient.cruds", sub=None, client_id="etl-no-user")
        tid, status, _, body = create(stack, anonymous, {"x-break-glass": stack.break_glass_token(user)})
        assert (status, outcome_reason(body)) in ((401, "token-missing-claim"), (403, "break-glass-user-mismatch"))
        assert received(stack, tid) == []

    def test_a_client_cannot_forge_the_emergency_mark(self, stack):
        token = user_token(stack, fresh_user())
        tid, status, _, _ = create(stack, token, {"x-fhirgate-break-glass": "ETREAT", "X-FhirGate-Break-Glass-User": "x"})
        assert status == 201
        [(_, record)] = received(stack, tid)
        assert "break-glass" not in internal(record) and "break-glass-user" not in internal(record)


def test_requests_limits_and_break_glass_are_counted_without_ids(stack):
    user = fresh_user()
    token = user_token(stack, user)
    for _ in range(4):
        create(stack, token)
    create(stack, token, {"x-break-glass": stack.break_glass_token(user)})
    create(stack, token, {"x-break-glass": "bad"})
    stats = Counters(stack.admin_port, "fhirgate.ratelimit")
    value = stats.total
    assert value("fhirgate.ratelimit.requests.write") >= 4
    assert value("fhirgate.ratelimit.limited.write") >= 1
    assert value("fhirgate.ratelimit.break_glass.used") >= 1
    assert value("fhirgate.ratelimit.break_glass.refused") >= 1
    assert value("fhirgate.ratelimit.denied.rate-limited") >= 1
    for name in stats:
        assert user not in name and "rl-test" not in name


class TestGlobalLimitAcrossReplicas:
    """Two Envoy replicas in the global variant share one budget through the rate-limit
    service; the filter only classifies (`enforcement: envoy`)."""

    @pytest.fixture(scope="class")
    def replicas(self, stack):
        from stack import Stack
        settings = dict(Stack.TEST_TIERS, enforcement="envoy",
                        tenants={"rl-global": {"write": {"limit": 3, "windowSeconds": 60}, "search": {"limit": 5, "windowSeconds": 60}}})
        return stack.start_replicas(settings)

    def test_the_budget_is_one_across_replicas_and_the_429_is_shaped_alike(self, stack, replicas):
        token = user_token(stack, fresh_user(), tenant="rl-global")
        statuses = []
        for i in range(3):
            _, status, headers, body = call(stack, "POST", f"{BASE}/Patient", token, PATIENT, FHIR_JSON, port=replicas.ports[i % 2])
            statuses.append(status)
        assert statuses == [201, 201, 201]
        tid, status, headers, body = call(stack, "POST", f"{BASE}/Patient", token, PATIENT, FHIR_JSON, port=replicas.ports[1])
        assert status == 429, body[:300]
        assert throttled(body), "Envoy's own 429 answers with the same OperationOutcome"
        assert headers.get("x-ratelimit-limit", "").startswith("3") and headers.get("x-ratelimit-remaining") == "0"
        assert 1 <= int(headers["retry-after"]) <= 60, "fhirgate.ratelimit adds Retry-After from X-RateLimit-Reset"
        assert received(stack, tid) == []
        other = user_token(stack, fresh_user(), tenant="rl-global")
        assert call(stack, "POST", f"{BASE}/Patient", other, PATIENT, FHIR_JSON, port=replicas.ports[0])[1] == 201

    def test_a_weighted_search_spends_its_weight_at_the_service(self, stack, replicas):
        token = user_token(stack, fresh_user(), scope="user/Patient.rs", tenant="rl-global")
        assert call(stack, "GET", f"{BASE}/Patient?_count=500", token, port=replicas.ports[0])[1] == 200
        _, status, _, _ = call(stack, "GET", f"{BASE}/Patient?_count=500", token, port=replicas.ports[1])
        assert status == 429, "5 per minute, 3 per search with a large _count"

    def test_without_the_service_requests_fail_closed(self, stack, replicas):
        replicas.service.stop()
        token = user_token(stack, fresh_user(), tenant="rl-global")
        _, status, _, body = call(stack, "POST", f"{BASE}/Patient", token, PATIENT, FHIR_JSON, port=replicas.ports[0])
        assert status == 503
