"""The native module (build/native/libfhirgate.so, `make native`): the same pipeline as the Wasm
module, loaded by Envoy as a dynamic module, in front of the same FHIR server, issuer and audit
collector as the rest of the suite. An Envoy of its own, two workers, the chain as deployed
with `render.py --deployment native`."""
import json
import os
import subprocess

import pytest

from stack import BASE, NATIVE_DIR, ROOT, Process, binary, free_port, http_get, wait_until
from test_authz import call
from test_ratelimit import fresh_user, throttled, user_token
from test_routing import assert_only_identity_upstream, assert_parsed, audit_of, outcome_reason, received


@pytest.fixture(scope="module")
def native(stack):
    if not (NATIVE_DIR / "libfhirgate.so").exists():
        raise RuntimeError(f"{NATIVE_DIR / 'libfhirgate.so'} is missing: run `make native`")
    listen, admin = free_port(), free_port()
    path = stack.render_variant("envoy-native", stack.variant_values("envoy-native", listen, admin), deployment="native")
    stack.run_envoy("envoy-native", path, admin, concurrency=2)
    [process] = [p for p in stack.processes if p.name == "envoy-native"]
    return listen, process


def test_a_read_passes_every_stage_reaches_the_upstream_with_identity_only_and_is_audited(stack, native):
    port, _ = native
    tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", stack.default_token, port=port)
    assert status == 200, body[:300]
    [(cluster, record)] = received(stack, tid)
    assert cluster == "fhir_api"
    assert_only_identity_upstream(record)
    assert record["headers"]["x-fhirgate-authz-decision"] == ["allow"]
    assert_parsed(audit_of(stack, record), {"interaction": "read", "resource-type": "Patient", "id": "example"})


def test_the_module_states_the_abi_it_was_built_for(native):
    _, process = native
    wait_until("the module's load line", lambda: b"for Envoy's dynamic-module ABI v0.2.0" in process.log_path.read_bytes(), timeout=5)


def test_a_request_without_a_token_is_refused_with_an_outcome_and_never_forwarded(stack, native):
    port, _ = native
    tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", port=port)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert outcome_reason(body) == "missing-token"
    assert received(stack, tid) == []


def test_a_scope_that_does_not_grant_the_interaction_is_refused(stack, native):
    port, _ = native
    token = stack.token("user/Observation.rs")
    tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
    assert status == 403, body[:300]
    assert received(stack, tid) == []


def test_one_write_budget_holds_exactly_across_both_workers(stack, native):
    """A new connection per request spreads the writes over both workers; the buckets are the
    process's, so the budget of three admits three and refuses the fourth."""
    port, _ = native
    token = user_token(stack, fresh_user())
    statuses = [call(stack, "POST", f"{BASE}/Patient", token, '{"resourceType":"Patient"}',
                     {"content-type": "application/fhir+json"}, port=port)[1:4] for _ in range(5)]
    assert [s for s, _, _ in statuses] == [201, 201, 201, 429, 429], [s for s, _, _ in statuses]
    assert all(throttled(b) for s, _, b in statuses if s == 429)


def test_a_malformed_path_is_refused_by_the_routing_stage(stack, native):
    port, _ = native
    tid, status, _, body = call(stack, "GET", f"{BASE}/Patient/1%2F..%2F..%2Fadmin", stack.default_token, port=port)
    assert status == 400, body[:300]
    assert outcome_reason(body) == "invalid-path"
    assert received(stack, tid) == []


def test_an_upstream_error_body_is_reduced_to_its_status(stack, native):
    """The FHIR server's own 404 body can quote what the policies withhold: only its status
    passes (Envoy gives dynamic modules no response code details; the module tells an upstream
    answer by its upstream host)."""
    port, _ = native
    missing = f"missing-{fresh_user()}"
    _, status, _, body = call(stack, "GET", f"{BASE}/Observation/{missing}", stack.default_token, port=port)
    assert (status, outcome_reason(body)) == (404, "upstream-error")
    assert missing.encode() not in body


def test_the_gateways_own_refusal_is_not_taken_for_an_upstream_error(stack, native):
    port, _ = native
    token = stack.token("user/Observation.rs")
    _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
    assert status == 403 and outcome_reason(body) != "upstream-error"


# The module built with `--features test-hooks` (`make native-test`).
TEST_BUILD_DIR = ROOT / "build" / "native-test"


def start_test_build(stack, name: str, env: dict | None = None, wait_ready: bool = True):
    """An Envoy of its own on the test build of the module: (port, process)."""
    if not (TEST_BUILD_DIR / "libfhirgate.so").exists():
        raise RuntimeError(f"{TEST_BUILD_DIR / 'libfhirgate.so'} is missing: run `make native-test`")
    listen, admin = free_port(), free_port()
    path = stack.render_variant(name, stack.variant_values(name, listen, admin), deployment="native")
    env = {**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(TEST_BUILD_DIR), **(env or {})}
    process = Process(name, [binary("envoy"), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "info"],
                      stack.log_dir / f"{name}.log", env=env)
    stack.processes.append(process)
    if wait_ready:
        wait_until(name, lambda: http_get(admin, "/ready")[0] == 200, timeout=60, process=process)
    return listen, process


# A callback the module calls (it creates each configuration's scheduler), taken for missing.
HIDDEN = "envoy_dynamic_module_callback_http_filter_config_scheduler_new"


def test_a_module_for_another_abi_refuses_to_load_and_says_why(stack):
    _, process = start_test_build(stack, "envoy-abi-probe", {"FHIRGATE_TEST_ABI_PROBE": HIDDEN}, wait_ready=False)
    try:
        process.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("Envoy started with a module built for another ABI")
    assert process.proc.returncode != 0
    text = process.log_path.read_text(errors="replace")
    assert "built for Envoy's dynamic-module ABI v0.2.0 (Envoy 1.40), but this Envoy does not export " \
           f"{HIDDEN}: refusing to load" in text, text[-2000:]
    # Refused at load: no stage configured, nothing served.
    assert "fhirgate.routing: configuration accepted" not in text


def test_the_module_links_no_envoy_callback_so_a_missing_one_cannot_fail_in_the_loader():
    """Every callback is looked up when Envoy loads the module: a relocation against one would be
    resolved by the dynamic loader first, and an Envoy lacking it would fail there instead."""
    for module in (NATIVE_DIR / "libfhirgate.so", TEST_BUILD_DIR / "libfhirgate.so"):
        relocations = subprocess.run(["readelf", "--relocs", "--wide", str(module)], capture_output=True, text=True, check=True).stdout
        assert "R_X86_64" in relocations, "readelf read the relocations"
        assert "envoy_dynamic_module_callback_" not in relocations, module
        symbols = subprocess.run(["readelf", "--dyn-syms", "--wide", str(module)], capture_output=True, text=True, check=True).stdout
        assert " UND envoy_dynamic_module_callback_" not in symbols, module


def test_a_panic_in_the_pipeline_answers_503_with_an_outcome_logs_only_where_and_the_next_request_is_served(stack):
    port, process = start_test_build(stack, "envoy-native-panic")
    token = stack.default_token
    tid, status, headers, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port,
                                      headers={"x-fhirgate-test-panic": "1"})
    assert status == 503, body[:300]
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "exception"
    assert received(stack, tid) == [], "a request the pipeline failed on reached the upstream"
    text = process.log_path.read_text(errors="replace")
    assert "fhirgate: panic at filters/native/src/module.rs:" in text
    assert "x-fhirgate-test-panic" not in text.split("fhirgate: panic at", 1)[1].splitlines()[0]
    assert token not in text
    # The worker's root is rebuilt: the next request is served.
    _, status, _, body = call(stack, "GET", f"{BASE}/Patient/example", token, port=port)
    assert status == 200, body[:300]
