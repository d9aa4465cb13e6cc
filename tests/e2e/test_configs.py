"""Every config shipped in envoy/ is checked by the code that runs it: Envoy validates the
rendered chain (which runs the filters' on_configure), the CLI lints each filter config."""
import base64
import json
import os
import pathlib
import re
import tempfile
import subprocess
import sys

import pytest

from stack import ROOT, WASM_DIR, envoy_validate, render_envoy

ENVOY_DIR = ROOT / "envoy"
CLI = ROOT / "target" / "debug" / "fhirgate"
TEMPLATES = sorted(ENVOY_DIR.glob("*.yaml"))
FILTER_CONFIGS = {"routing.json": "routing", "authz.json": "authz", "ratelimit.json": "ratelimit", "consent.json": "consent",
                  "audit.json": "audit"}

# The audit chain key is a deployment secret, never shipped: configs are checked with one made here.
AUDIT = pathlib.Path(tempfile.mkdtemp()) / "audit.json"
AUDIT.write_text(json.dumps({"chain": {"kid": "test", "key": base64.b64encode(os.urandom(32)).decode()}}))

PLACEHOLDERS = {
    "ADMIN_PORT": 9901, "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": 10000, "ACCESS_LOG": "/dev/null",
    "UPSTREAM_BASE": "/fhir", "WASM_DIR": WASM_DIR, "FHIR_PORT": 8090, "BULK_PORT": 8091, "VALIDATE_PORT": 8092,
    "PRIOR_AUTH_PORT": 8093, "DEVICE_PORT": 8094, "CDS_PORT": 8095, "ISSUER_PORT": 8096, "AUDIT_PORT": 8097,
}


def lint(path, filter_name="routing"):
    return subprocess.run([str(CLI), "config", "lint", "--filter", filter_name, str(path)], capture_output=True, text=True)


def test_every_filter_config_in_envoy_dir_is_known():
    assert {p.name for p in ENVOY_DIR.glob("*.json")} == set(FILTER_CONFIGS)


@pytest.mark.parametrize("name", sorted(FILTER_CONFIGS))
def test_shipped_filter_config_passes_lint(name, tmp_path):
    path = ENVOY_DIR / name
    if name == "audit.json":
        # With the deployment's chain key laid over it, as render.py --audit does.
        path = tmp_path / name
        path.write_text(json.dumps({**json.loads((ENVOY_DIR / name).read_text()), **json.loads(AUDIT.read_text())}))
    result = lint(path, FILTER_CONFIGS[name])
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.name for t in TEMPLATES])
def test_shipped_envoy_config_passes_envoy_validate(template, tmp_path):
    rendered = render_envoy(tmp_path / template.name, PLACEHOLDERS, template, audit=AUDIT)
    result = envoy_validate(rendered)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fhirgate.routing: configuration accepted" in result.stdout + result.stderr


@pytest.mark.parametrize("deployment", ["fused", "five-filter"])
def test_every_forwarding_route_requires_the_mark_of_every_fhirgate_stage_in_the_chain(deployment, tmp_path):
    """Envoy skips a filter whose VM failed to load on a worker; a route that forgot one
    stage's mark (or a stage added without one) would forward what that stage never saw."""
    import yaml
    rendered = render_envoy(tmp_path / "fhirgate.yaml", PLACEHOLDERS, ENVOY_DIR / "fhirgate.yaml", audit=AUDIT, deployment=deployment)
    [listener] = yaml.safe_load(rendered.read_text())["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ours = [f for f in hcm["http_filters"] if f["name"].startswith("fhirgate")]
    assert len(ours) == (1 if deployment == "fused" else 5)
    stages = [s for f in ours for s in json.loads(f["typed_config"]["config"]["configuration"]["value"])]
    assert stages == ["routing", "authz", "ratelimit", "consent", "audit"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    forwarding = [r for r in routes if "route" in r]
    assert forwarding, routes
    for r in forwarding:
        required = dict((m["key"], m["string_match"]) for m in r["match"].get("filter_state", []))
        assert required["wasm.fhirgate.passed"] == {"exact": ",".join(stages)}, r["match"]
        assert set(required) == {"wasm.fhirgate.passed", "wasm.fhirgate.pool"}, r["match"]
        assert "headers" not in r["match"], "routes match filter state, not headers a client could send"
    removed = set(hcm["route_config"]["virtual_hosts"][0]["request_headers_to_remove"])
    assert removed == {"x-fhirgate-rl-class", "x-fhirgate-rl-tenant", "x-fhirgate-rl-principal", "x-fhirgate-rl-weight",
                       "x-fhirgate-jwt-payload"}, "Envoy-only headers never reach the upstream"
    assert [r["direct_response"]["status"] for r in routes if "route" not in r] == [503], "the catch-all refuses"


@pytest.mark.parametrize("config,field", [
    ({"basePath": "fhir"}, "basePath"),
    ({"resourceTypes": ["Patient", "Patinet"]}, "resourceTypes[1]"),
    ({"pools": [{"name": "bulk", "operations": ["export"]}]}, "pools[0].operations[0]"),
    ({"maxBodyBytes": "big"}, "maxBodyBytes"),
    ({"basepath": "/fhir"}, "basepath"),
])
def test_envoy_refuses_a_bad_routing_config_naming_the_field(config, field, tmp_path):
    values = dict(PLACEHOLDERS, ROUTING_CONFIG=json.dumps(config, separators=(",", ":")))
    rendered = render_envoy(tmp_path / "bad.yaml", values, ENVOY_DIR / "fhirgate.yaml", audit=AUDIT)
    result = envoy_validate(rendered)
    assert result.returncode != 0
    # The module names the field from its configuration's root: the routing section's.
    assert f"invalid config at `routing.{field}`" in result.stdout + result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    linted = lint(bad)
    assert linted.returncode == 2 and f"`{field}`" in linted.stderr


@pytest.mark.parametrize("config,field", [
    ({"tiers": {"reads": {"limit": 1, "windowSeconds": 60}}}, "tiers.reads"),
    ({"tenant": {"from": "header"}}, "tenant.header"),
    ({"breakGlass": {"keys": {"k1": "c2hvcnQ="}}}, "breakGlass.keys.k1"),
    ({"enforcement": "redis"}, "enforcement"),
])
def test_envoy_refuses_a_bad_ratelimit_config_naming_the_field(config, field, tmp_path):
    overlay = tmp_path / "ratelimit.json"
    overlay.write_text(json.dumps(config))
    rendered = render_envoy(tmp_path / "bad.yaml", PLACEHOLDERS, ENVOY_DIR / "fhirgate.yaml", ratelimit=overlay, audit=AUDIT)
    result = envoy_validate(rendered)
    assert result.returncode != 0
    assert f"invalid config at `ratelimit.{field}`" in result.stdout + result.stderr


def test_the_global_ratelimit_rendering_passes_envoy_validate(tmp_path):
    rendered = render_envoy(tmp_path / "global.yaml", dict(PLACEHOLDERS, RATELIMIT_SERVICE_PORT=8081), ENVOY_DIR / "fhirgate.yaml",
                            global_ratelimit=True, audit=AUDIT)
    text = rendered.read_text()
    assert "envoy.filters.http.ratelimit" in text and "x-fhirgate-rl-principal" in text
    assert '"enforcement":"envoy"' in text, "the filter only classifies; Envoy's global limiter enforces"
    result = envoy_validate(rendered)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_shipped_descriptor_file_matches_the_shipped_ratelimit_config():
    generated = subprocess.run([str(CLI), "ratelimit", "descriptors"], capture_output=True, text=True, check=True).stdout
    assert (ENVOY_DIR / "ratelimit" / "config" / "fhirgate.yaml").read_text() == generated, \
        "regenerate with: target/debug/fhirgate ratelimit descriptors > envoy/ratelimit/config/fhirgate.yaml"


def test_the_shipped_audit_config_needs_a_chain_key():
    result = lint(ENVOY_DIR / "audit.json", "audit")
    assert result.returncode == 2 and "chain" in result.stderr


def test_render_refuses_a_missing_placeholder(tmp_path):
    values = {k: v for k, v in PLACEHOLDERS.items() if k != "FHIR_PORT"}
    with pytest.raises(subprocess.CalledProcessError):
        render_envoy(tmp_path / "x.yaml", values, ENVOY_DIR / "fhirgate.yaml", audit=AUDIT)


def test_readme_config_example_passes_lint_and_covers_every_documented_field(tmp_path):
    """The routing reference (docs/routing.md) cannot drift: its example is parsed by the filter's
    own config code (unknown fields are refused), and every field in its table is in the example."""
    import re
    readme = (ROOT / "docs" / "routing.md").read_text()
    section = readme.split("## Routing filter configuration", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    (tmp_path / "readme.json").write_text(example)
    result = lint(tmp_path / "readme.json")
    assert result.returncode == 0, result.stderr
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert documented == set(json.loads(example)), "README table and example list different fields"


def test_generated_fhir_tables_match_the_r4_specification():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen-fhir-tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("scope,expected", [
    ("patient/Observation.read", {"valid": True, "context": "patient", "resource": "Observation", "permissions": "rs",
                                  "params": None, "resource_scope": True}),
    ("user/*.cruds", {"valid": True, "context": "user", "resource": "*", "permissions": "cruds", "params": None,
                      "resource_scope": True}),
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
     {"valid": True, "context": "patient", "resource": "Observation", "permissions": "rs",
      "params": {"category": "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"}, "resource_scope": True}),
    ("launch/patient", {"valid": True, "context": None, "resource": None, "permissions": None, "params": None,
                        "resource_scope": False}),
    ("patient/Observation.sr", {"valid": False, "context": None, "resource": None, "permissions": None, "params": None,
                                "resource_scope": False}),
])
def test_cli_scope_parse_prints_the_documented_object(scope, expected):
    out = subprocess.run([str(CLI), "scope", "parse", scope], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == expected


def test_cli_authz_check_answers_each_json_line():
    lines = [
        {"method": "GET", "path": "/Observation", "query": "patient=123", "scopes": "patient/Observation.rs", "patient": "123"},
        {"method": "GET", "path": "/Observation", "query": "", "scopes": "patient/Observation.rs", "patient": "123"},
        {"method": "GET", "path": "/Observation/1", "query": "", "scopes": "patient/Observation.rs", "patient": "123"},
        {"method": "GET", "path": "/Observation/1", "query": "", "scopes": "patient/Observation.rs", "patient": "123",
         "response": {"resourceType": "Observation", "subject": {"reference": "Patient/999"}}},
        {"method": "GET", "path": "/Patient/1", "query": "", "scopes": "user/*.rs", "token": False},
        {"method": "GET", "path": "/metadata", "query": "", "scopes": "", "token": False},
    ]
    stdin = "\n".join(json.dumps(l) for l in lines) + "\nnot json\n"
    out = subprocess.run([str(CLI), "authz", "check"], input=stdin, capture_output=True, text=True, check=True).stdout
    got = [json.loads(l) for l in out.splitlines()]
    assert got == [
        {"decision": "pending", "status": 200, "reason": "confined", "needs": "response-body"},
        {"decision": "pending", "status": 200, "reason": "confined", "needs": "response-body", "query": "patient=Patient/123"},
        {"decision": "pending", "status": 200, "reason": "confined", "needs": "response-body"},
        {"decision": "deny", "status": 403, "reason": "not-in-patient-compartment"},
        {"decision": "deny", "status": 401, "reason": "missing-token"},
        {"decision": "allow", "status": 200, "reason": "public"},
        {"decision": "deny", "status": 400, "reason": "invalid-input-line"},
    ]


def test_the_jwt_authn_fast_path_rendering_passes_envoy_validate(tmp_path):
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"}]}
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([
        {"issuer": "https://idp.example", "audiences": ["https://gw.example/fhir/r4"], "jwks": jwks},
        {"issuer": "https://idp2.example", "audiences": ["x"], "jwksUri": "https://idp2.example/jwks", "jwksCluster": "token_issuer"},
    ]))
    rendered = render_envoy(tmp_path / "jwt-authn.yaml", PLACEHOLDERS, ENVOY_DIR / "fhirgate.yaml", issuers=issuers, jwt_authn=True, audit=AUDIT)
    text = rendered.read_text()
    assert text.index("envoy.filters.http.jwt_authn") < text.index("name: fhirgate.authz") > text.index("name: fhirgate.routing")
    assert "jwt_cache_size" in text, "Envoy caches the tokens it verified"
    result = envoy_validate(rendered)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_cli_ratelimit_classify_answers_each_json_line():
    lines = [
        {"method": "GET", "path": "/Observation", "query": "_include=Observation:patient", "tenant": "hosp-a", "subject": "dr-smith"},
        {"method": "POST", "path": "/Patient", "body": {"resourceType": "Patient"}, "tenant": "hosp-a", "subject": "dr-smith"},
        {"method": "GET", "path": "/$export", "tenant": "hosp-a", "clientId": "etl", "backend": True},
        {"method": "GET", "path": "/metadata", "peer": "10.0.0.9"},
    ]
    stdin = "\n".join(json.dumps(l) for l in lines) + "\n"
    out = [json.loads(l) for l in subprocess.run([str(CLI), "ratelimit", "classify"], input=stdin, capture_output=True,
                                                  text=True, check=True).stdout.splitlines()]
    assert [(o["class"], o["weight"], o["limit"], o["windowSeconds"]) for o in out] == [
        ("search", 2, 600, 60), ("write", 1, 60, 60), ("bulk", 1, 2, 3600), ("metadata", 1, None, None)]
    assert out[0]["key"] == out[1]["key"] and out[0]["key"].startswith("tenant=hosp-a;user=") and "dr-smith" not in out[0]["key"]
    assert out[2]["key"] == "tenant=hosp-a" and out[3]["key"] == "peer=10.0.0.9"


def test_cli_breakglass_sign_makes_a_token_with_the_claims(tmp_path):
    import base64
    key = tmp_path / "key"
    key.write_text("k" * 40)
    token = subprocess.run([str(CLI), "breakglass", "sign", "--key-file", str(key), "--kid", "k1", "--user", "dr-who",
                            "--reason", "ETREAT", "--ttl", "600"], capture_output=True, text=True, check=True).stdout.strip()
    payload, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert (claims["kid"], claims["user"], claims["reason"]) == ("k1", "dr-who", "ETREAT") and len(claims["nonce"]) == 32
    assert len(base64.urlsafe_b64decode(mac + "==")) == 32
    short = tmp_path / "short"
    short.write_text("too-short")
    refused = subprocess.run([str(CLI), "breakglass", "sign", "--key-file", str(short), "--kid", "k", "--user", "u", "--reason", "r"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "32 bytes" in refused.stderr


@pytest.mark.parametrize("filter_name", ["routing", "authz", "ratelimit", "consent", "audit"])
def test_the_readme_documents_every_top_level_config_field(filter_name):
    """The field list comes from the filter's own config type (serde names every field it
    accepts when refusing an unknown one), so a field added in code and not in the reference
    (README.md and docs/) fails."""
    result = subprocess.run([str(CLI), "config", "lint", "--filter", filter_name, "-"], input='{"zzzz": 1}', capture_output=True, text=True)
    assert result.returncode == 2
    fields = re.findall(r"`(\w+)`", result.stderr.split("expected one of", 1)[1])
    assert len(fields) >= 5
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    undocumented = [f for f in fields if f"`{f}`" not in readme and f'"{f}"' not in readme]
    assert not undocumented, f"{filter_name}: document {undocumented} in docs/"
