"""Failure behaviour through a real Envoy: a filter that traps or panics mid-request, and the
services the chain depends on (JWKS, introspection, Consent, audit collector) out of reach. Each
follows its documented setting: fail closed, with a FHIR OperationOutcome, nothing forwarded;
and the gateway recovers when the fault goes away."""
import json
import sys
import socket
import threading
import time
import uuid

import pytest
import yaml

from stack import BASE, ROOT, WASM_DIR, free_port, http_get, wait_until
from test_routing import received


def http_filters(config: dict) -> list:
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    return hcm["typed_config"]["http_filters"]


def start_with_fault(stack, name: str, deployment: str) -> tuple[int, int, dict]:
    """The chain as deployed, with the fault instrument under the failure policy the shipped
    filters have: between authorization and rate limiting (five filters) or after the fused
    filter. Returns (listen, admin, that entry)."""
    listen, admin = free_port(), free_port()
    path = stack.render_variant(name, stack.variant_values(name, listen, admin), deployment=deployment)
    config = yaml.safe_load(path.read_text())
    filters = http_filters(config)
    names = [f["name"] for f in filters]
    after = "fhirgate.ratelimit" if deployment == "five-filter" else "envoy.filters.http.router"
    shipped = filters[names.index("fhirgate.ratelimit" if deployment == "five-filter" else "fhirgate")]["typed_config"]["config"]
    fault = {"name": "test.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {k: v for k, v in shipped.items() if k not in ("name", "root_id", "configuration", "vm_config")}
        | {"name": "test.fault", "root_id": "test.fault",
           "vm_config": {"vm_id": "test.fault", "runtime": "envoy.wasm.runtime.v8",
                         "code": {"local": {"filename": str(WASM_DIR / "fhirgate_fault.wasm")}}}}}}
    filters.insert(names.index(after), fault)
    path.write_text(yaml.safe_dump(config))
    stack.run_envoy(name, path, admin, concurrency=1)
    return listen, admin, fault["typed_config"]["config"]


@pytest.fixture(scope="module", params=["fused", "five-filter"])
def faulty(stack, request):
    return start_with_fault(stack, f"envoy-fault-{request.param}", request.param)


def get(stack, port, fault=None, token=None, path=f"{BASE}/Patient/example"):
    tid = uuid.uuid4().hex
    headers = {"x-test-id": tid, "authorization": f"Bearer {token or stack.default_token}", **({"x-test-fault": fault} if fault else {})}
    status, rheaders, body = stack.request("GET", path, headers=headers, port=port)
    return status, rheaders, body, received(stack, tid)


def reason(body: bytes) -> str:
    oo = json.loads(body)
    assert oo["resourceType"] == "OperationOutcome"
    return oo["issue"][0]["details"]["coding"][0]["code"]


def reloads(admin: int) -> int:
    _, text = http_get(admin, "/stats?filter=^wasm\\.test\\.fault\\.vm_reload_success$")
    return int(text.decode().split(":")[1])


# -- a filter that traps or panics ------------------------------------------------------------
@pytest.mark.parametrize("fault", ["trap", "panic"])
def test_a_filter_failing_mid_request_fails_that_request_closed_and_the_vm_is_reloaded(stack, faulty, fault):
    """Shipped policy FAIL_RELOAD: the request a failed VM was serving gets a 503
    OperationOutcome and reaches no upstream; the VM is reloaded (0.2 s backoff) and the worker
    serves again. (FAIL_CLOSED, shipped before, left the worker answering 503 to everything
    until Envoy restarted: one trap was a denial of service.)"""
    listen, admin, entry = faulty
    assert entry["failure_policy"] == "FAIL_RELOAD"
    assert get(stack, listen)[0] == 200
    before = reloads(admin)
    status, headers, body, seen = get(stack, listen, fault)
    assert (status, reason(body), seen) == (503, "filter-failed", [])
    assert headers.get("retry-after") == "1"
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and statuses[-3:] != [200] * 3:
        statuses.append(get(stack, listen)[0])
        time.sleep(0.1)
    assert statuses[-3:] == [200] * 3 and set(statuses) <= {200, 503}, statuses
    assert reloads(admin) == before + 1


# -- a filter whose VM cannot be loaded on a worker -------------------------------------------
def start_with_stand_in(stack, name: str, filter_name: str, fail_on_workers: bool, require_marks: bool = True,
                        guard: bool = False) -> int:
    """The chain as shipped, one worker, with `filter_name`'s module replaced by the fault
    instrument standing in for it (marking what it passes as that filter does; `fhirgate` is
    the fused filter, every stage, and the others the five-filter deployment's); with
    `fail_on_workers` its configuration fails on the worker, as a VM that cannot be created
    there (memory exhausted) does. `require_marks` False takes the routes' pass-mark matchers
    out, to show what Envoy does without them. Returns the listen port."""
    listen, admin = free_port(), free_port()
    deployment = "fused" if filter_name == "fhirgate" else "five-filter"
    path = stack.render_variant(name, stack.variant_values(name, listen, admin), deployment=deployment)
    config = yaml.safe_load(path.read_text())
    filters = http_filters(config)
    [entry] = [f["typed_config"]["config"] for f in filters if f["name"] == filter_name]
    entry["configuration"]["value"] = json.dumps({"standIn": filter_name, "failOnWorkers": fail_on_workers})
    entry["vm_config"] = {"vm_id": f"test.stand-in.{name}", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(WASM_DIR / "fhirgate_fault.wasm")}}}
    if not require_marks:
        [listener] = config["static_resources"]["listeners"]
        for route in listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
            # Only the pass mark goes: the pool the routing stage chose still picks the cluster.
            kept = [m for m in route["match"].get("filter_state", []) if m["key"] != "wasm.fhirgate.passed"]
            route["match"]["filter_state"] = kept
            if not kept:
                del route["match"]["filter_state"]
    if guard:
        # The Istio EnvoyFilter's guard: Envoy's RBAC filter right after the fhirgate filter.
        sys.path.insert(0, str(ROOT / "envoy"))
        import render
        filters.insert([f["name"] for f in filters].index(filter_name) + 1, render.pass_guard_filter())
    path.write_text(yaml.safe_dump(config))
    stack.run_envoy(name, path, admin, concurrency=1)
    return listen


STAND_INS = ["fhirgate", "fhirgate.authz", "fhirgate.consent", "fhirgate.audit"]


@pytest.mark.parametrize("filter_name", STAND_INS)
def test_a_filter_that_cannot_load_on_a_worker_stops_every_request_there(stack, filter_name):
    """Envoy skips a Wasm filter whose VM failed to load on a worker, whatever its
    failure_policy. The shipped routes need every filter's mark, so the request is answered 503
    filter-unavailable and reaches no upstream; the same stand-in loading everywhere passes."""
    short = filter_name.removeprefix("fhirgate.").replace("fhirgate", "fused")
    failing = start_with_stand_in(stack, f"envoy-unloaded-{short}", filter_name, fail_on_workers=True)
    status, headers, body, seen = get(stack, failing)
    assert (status, reason(body), seen) == (503, "filter-unavailable", [])
    assert headers.get("retry-after") == "1" and headers.get("content-type") == "application/fhir+json"
    loading = start_with_stand_in(stack, f"envoy-loaded-{short}", filter_name, fail_on_workers=False)
    status, _, _, seen = get(stack, loading)
    assert status == 200 and len(seen) == 1, "the stand-in passes requests when it loads"


def test_under_istio_the_rbac_guard_refuses_what_an_unloaded_module_never_saw(stack):
    """Istio's routes cannot require the pass mark, so the EnvoyFilter delivery puts Envoy's
    RBAC filter after the module: the same routes without their matchers, the fused module
    not loading on the worker, and the request is refused (403) without reaching the server;
    the module loading, it passes."""
    failing = start_with_stand_in(stack, "envoy-istio-unloaded", "fhirgate", fail_on_workers=True, require_marks=False, guard=True)
    status, _, body, seen = get(stack, failing)
    assert (status, seen) == (403, []), body[:300]
    loading = start_with_stand_in(stack, "envoy-istio-loaded", "fhirgate", fail_on_workers=False, require_marks=False, guard=True)
    status, _, _, seen = get(stack, loading)
    assert status == 200 and len(seen) == 1


def test_without_the_marks_envoy_forwards_what_an_unloaded_filter_never_saw(stack):
    """Why the marks are there: the same unloaded authorization filter without the routes'
    filter-state matchers, and a request with no token at all reaches the FHIR server."""
    listen = start_with_stand_in(stack, "envoy-unloaded-unmarked", "fhirgate.authz", fail_on_workers=True, require_marks=False)
    tid = uuid.uuid4().hex
    status, _, _ = stack.request("GET", f"{BASE}/Patient/example", headers={"x-test-id": tid}, port=listen)
    assert status == 200 and len(received(stack, tid)) == 1


# -- services the chain depends on, out of reach ----------------------------------------------
class Forwarder:
    """A TCP relay from a port to another, started late: a service coming back."""

    def __init__(self, listen: int, to: int):
        self.server = socket.create_server(("127.0.0.1", listen))
        self.to = to
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.to))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


def start_variant_with(stack, name: str, consent: dict | None = None, **values) -> tuple[int, int]:
    """The chain in one more Envoy (one worker), with these consent settings laid over the
    stack's and these template values."""
    consent_path = None
    if consent is not None:
        settings = json.loads((stack.log_dir / "consent.json").read_text())
        settings["consents"].update(consent)
        consent_path = stack.log_dir / f"{name}-consent.json"
        consent_path.write_text(json.dumps(settings))
    return stack.start_variant(name, consent=consent_path, concurrency=1, **values)


def test_with_the_token_issuer_out_of_reach_tokens_are_refused_503_and_it_recovers(stack):
    """JWKS and introspection unreachable (nothing listens where the issuer should be): a JWT
    and an opaque token both get a retryable 503, nothing is forwarded, what needs no token is
    still served; once the issuer is back, the same JWT passes."""
    dead = free_port()
    listen, _ = start_variant_with(stack, "envoy-issuer-down", ISSUER_PORT=dead)
    jwt = stack.token("user/Patient.rs", sub="failure-jwt")
    status, headers, body, seen = get(stack, listen, token=jwt)
    assert (status, reason(body), seen) == (503, "keys-unavailable", [])
    assert headers.get("retry-after")
    opaque = stack.opaque_token("user/Patient.rs", sub="failure-opaque")
    status, _, body, seen = get(stack, listen, token=opaque)
    assert (status, reason(body), seen) == (503, "introspection-unavailable", [])
    assert stack.request("GET", f"{BASE}/metadata", port=listen)[0] == 200
    relay = Forwarder(dead, stack.issuer_port)
    try:
        wait_until("the JWT to pass once the issuer is back", lambda: get(stack, listen, token=jwt)[0] == 200, timeout=30)
        assert get(stack, listen, token=opaque)[0] == 200
    finally:
        relay.close()


@pytest.mark.parametrize("fail_open", [False, True])
def test_with_the_consent_source_out_of_reach_resources_follow_fail_open(stack, fail_open):
    """Consents fetched from a cluster nobody answers on: by default (failOpen false) every
    resource about a patient is withheld and the count says why; with failOpen true they pass."""
    name = f"envoy-consent-down-{'open' if fail_open else 'closed'}"
    listen, admin = start_variant_with(stack, name, consent={"cluster": "audit_collector", "failOpen": fail_open}, AUDIT_PORT=free_port())
    token = stack.token("user/Patient.rs user/Observation.rs", sub="failure-consent")
    status, _, body, seen = get(stack, listen, token=token, path=f"{BASE}/Observation?patient=example&_count=5")
    assert status == 200 and len(seen) == 1
    bundle = json.loads(body)
    returned = [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "outcome"]
    if fail_open:
        assert returned, "with failOpen the patient's Observations pass"
    else:
        assert returned == [], bundle
        _, text = http_get(admin, "/stats?filter=consent")
        assert "consent-unavailable" in text.decode(), text.decode()
