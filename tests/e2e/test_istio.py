"""The Istio manifests: regenerated from the filter configs they carry, ordered as the chain
needs, failing closed, every pluginConfig accepted by the filter's own config code once the
operator's secrets are in, and refused (naming the field) while they are not."""
import json
import subprocess
import sys

import pytest
import yaml

from stack import CLI, ROOT

ISTIO = ROOT / "istio"
VARIANTS = {"sidecar.yaml": [], "gateway.yaml": ["--gateway"]}
FILTER_VARIANTS = {"envoyfilter-sidecar.yaml": ["--envoyfilter"], "envoyfilter-gateway.yaml": ["--envoyfilter", "--gateway"],
                   "envoyfilter-global-ratelimit.yaml": ["--envoyfilter", "--global-ratelimit"]}
ORDER = ["routing", "authz", "ratelimit", "consent", "audit"]
PHASES = ["AUTHN", "AUTHZ", "STATS"]
SECRET = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, test only


def test_global_rate_limiting_is_refused_without_the_envoyfilter():
    """WasmPlugins cannot add Envoy's rate-limit filter nor remove its descriptor headers."""
    out = subprocess.run([sys.executable, str(ISTIO / "wasmplugins.py"), "--registry", "r.example/f", "--global-ratelimit"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--global-ratelimit needs --envoyfilter" in out.stderr


def plugins(name):
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


@pytest.mark.parametrize("name", sorted({**VARIANTS, **FILTER_VARIANTS}))
def test_the_shipped_manifests_are_what_the_generator_writes(name):
    out = subprocess.run([sys.executable, str(ISTIO / "wasmplugins.py"), "--registry", "registry.example.org/fhirgate",
                          *{**VARIANTS, **FILTER_VARIANTS}[name]],
                         capture_output=True, text=True, check=True).stdout
    assert (ISTIO / name).read_text() == out, f"regenerate: .venv/bin/python istio/wasmplugins.py ... > istio/{name}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_plugins_run_in_chain_order_and_reload_a_failed_vm(name):
    docs = plugins(name)
    assert all(d["apiVersion"] == "extensions.istio.io/v1alpha1" and d["kind"] == "WasmPlugin" for d in docs)
    assert all(d["spec"]["failStrategy"] == "FAIL_RELOAD" and d["spec"]["url"].startswith("oci://") for d in docs)
    # Istio runs phases in this order and, within a phase, higher priority first.
    ordered = sorted(docs, key=lambda d: (PHASES.index(d["spec"]["phase"]), -d["spec"]["priority"]))
    assert [d["metadata"]["name"].removeprefix("fhirgate-") for d in ordered] == ORDER
    for d in docs:
        attach = d["spec"].get("targetRefs") if name == "gateway.yaml" else d["spec"].get("selector")
        assert attach, d["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_plugin_config_is_accepted_once_the_secrets_are_set(name, tmp_path):
    for d in plugins(name):
        filter_name = d["metadata"]["name"].removeprefix("fhirgate-")
        # Each plugin is the one module configured with its own stage's section.
        assert list(d["spec"]["pluginConfig"]) == [filter_name]
        config = tmp_path / f"{filter_name}.json"
        text = json.dumps(d["spec"]["pluginConfig"])
        config.write_text(text.replace("REPLACE_ME", SECRET))
        result = subprocess.run([str(CLI), "config", "lint", "--filter", "module", str(config)], capture_output=True, text=True)
        assert result.returncode == 0, f"{filter_name}: {result.stderr}"
        if "REPLACE_ME" in text:
            config.write_text(text)
            result = subprocess.run([str(CLI), "config", "lint", "--filter", "module", str(config)], capture_output=True, text=True)
            assert result.returncode == 2 and "is not base64" in result.stderr, f"{filter_name} refuses the placeholder: {result.stderr}"
            assert f"`{filter_name}." in result.stderr, f"the refusal names the field from the module's root: {result.stderr}"


@pytest.mark.parametrize("name", sorted(FILTER_VARIANTS))
def test_the_envoyfilter_chain_is_a_valid_envoy_filter_chain(name, tmp_path):
    """The EnvoyFilter's patch values, in order, are exactly HTTP filters: placed in a real
    Envoy configuration (modules from build/wasm, the operator's secrets set) Envoy accepts
    them and every filter accepts its configuration."""
    from stack import WASM_DIR, envoy_validate, render_envoy
    from test_configs import AUDIT, PLACEHOLDERS
    [doc] = plugins(name)
    assert doc["kind"] == "EnvoyFilter"
    patches = json.loads(json.dumps(doc["spec"]["configPatches"]).replace("REPLACE_ME", SECRET).replace("/var/local/fhirgate", str(WASM_DIR)))
    filters = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    # The fused module: one filter, every stage's section in pipeline order.
    [ours] = [f for f in filters if f["name"].startswith("fhirgate")]
    config = ours["typed_config"]["config"]
    assert config["failure_policy"] == "FAIL_RELOAD" and config["allow_on_headers_stop_iteration"]
    sections = json.loads(config["configuration"]["value"])
    assert list(sections) == ORDER
    # Right after it, the guard Istio's routes cannot hold: only requests marked by every stage.
    names = [f["name"] for f in filters]
    guard = filters[names.index("fhirgate") + 1]
    assert guard["name"] == "envoy.filters.http.rbac"
    [policy] = guard["typed_config"]["rules"]["policies"].values()
    assert guard["typed_config"]["rules"]["action"] == "ALLOW"
    assert policy["principals"] == [{"filter_state": {"key": "wasm.fhirgate.passed", "string_match": {"exact": ",".join(ORDER)}}}]
    assert all(p["patch"]["operation"] == "INSERT_BEFORE" for p in patches if p["applyTo"] == "HTTP_FILTER")
    # Apply the patches as Istio would, to the chain Envoy runs in the tests.
    rendered = yaml.safe_load(render_envoy(tmp_path / "base.yaml", PLACEHOLDERS, ROOT / "envoy" / "fhirgate.yaml", audit=AUDIT).read_text())
    hcm = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [*filters, hcm["http_filters"][-1]]
    for p in patches:
        if p["applyTo"] == "VIRTUAL_HOST":
            hcm["route_config"]["virtual_hosts"][0].update(p["patch"]["value"])
        elif p["applyTo"] == "CLUSTER":
            rendered["static_resources"]["clusters"].append(p["patch"]["value"])
    if "global-ratelimit" in name:
        assert [f["name"] for f in filters][-2:] == ["envoy.filters.http.set_filter_state", "envoy.filters.http.ratelimit"]
        assert sections["ratelimit"]["enforcement"] == "envoy"
    config = tmp_path / "envoyfilter-chain.yaml"
    config.write_text(yaml.safe_dump(rendered))
    result = envoy_validate(config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for n in ORDER:
        assert f"fhirgate.{n}: configuration accepted" in result.stdout + result.stderr, n


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_wasmplugin_follows_the_wasmplugin_schema(name, tmp_path):
    from stack import VENV
    for d in plugins(name):
        doc = tmp_path / f"{d['metadata']['name']}.json"
        doc.write_text(json.dumps(d))
        result = subprocess.run([str(VENV / "bin" / "check-jsonschema"), "--schemafile", str(ISTIO / "wasmplugin.schema.json"), str(doc)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_refuses_what_istio_would(tmp_path):
    from stack import VENV
    good = plugins("sidecar.yaml")[0]
    for broken in ({"phase": "AUTHNZ"}, {"failStrategy": "FAIL_CLOSED"}, {"url": "registry/x:1"}, {"pluginconfig": {}},
                   {"targetRefs": [{"kind": "Gateway", "name": "g"}]}, {"match": [{"ports": [{"number": 70000}]}]}):
        doc = tmp_path / "broken.json"
        doc.write_text(json.dumps({**good, "spec": {**good["spec"], **broken}}))
        result = subprocess.run([str(VENV / "bin" / "check-jsonschema"), "--schemafile", str(ISTIO / "wasmplugin.schema.json"), str(doc)],
                                capture_output=True, text=True)
        assert result.returncode == 1, broken
