"""The Envoy Gateway manifests for the native module: regenerated from the configs they carry,
valid against Envoy Gateway's published CRD schemas (and the CEL rules on the fields they set),
and, translated as Envoy Gateway translates an EnvoyExtensionPolicy's dynamic module, accepted
by a real Envoy 1.40 with every stage accepting its section once the secrets are set."""
import copy
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from stack import NATIVE_DIR, ROOT, envoy_validate, render_envoy

GATEWAY = ROOT / "envoy-gateway"
SHIPPED = GATEWAY / "fhirgate.yaml"
ORDER = ["routing", "authz", "ratelimit", "consent", "audit"]
SECRET = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, test only


def documents():
    proxy, policy = [d for d in yaml.safe_load_all(SHIPPED.read_text()) if d]
    assert (proxy["kind"], policy["kind"]) == ("EnvoyProxy", "EnvoyExtensionPolicy")
    return proxy, policy


def schema(kind: str) -> dict:
    return json.loads((GATEWAY / "schemas" / f"{kind.lower()}.schema.json").read_text())


def errors(doc: dict) -> list[str]:
    return [e.message for e in jsonschema.Draft7Validator(schema(doc["kind"])).iter_errors(doc)]


def test_the_shipped_manifests_are_what_the_generator_writes():
    out = subprocess.run([sys.executable, str(GATEWAY / "manifests.py"), "--registry", "registry.example.org/fhirgate"],
                         capture_output=True, text=True, check=True).stdout
    assert SHIPPED.read_text() == out, "regenerate: .venv/bin/python envoy-gateway/manifests.py ... > envoy-gateway/fhirgate.yaml"


def test_both_resources_follow_envoy_gateways_published_schemas():
    for doc in documents():
        assert doc["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
        assert errors(doc) == [], doc["kind"]


@pytest.mark.parametrize("path,value", [
    (("spec", "dynamicModules", 0, "name"), "FHIRGate"),
    (("spec", "dynamicModules", 0, "source", "type"), "OCI"),
    (("spec", "dynamicModules", 0, "source", "local"), {}),
    (("spec", "dynamicModules", 0, "source"), {"type": "Remote", "remote": {"url": "https://x.example/libfhirgate.so"}}),
    (("spec", "bootstrap", "type"), "Patch"),
])
def test_the_schema_refuses_what_envoy_gateway_would_in_the_proxy(path, value):
    proxy, _ = documents()
    broken = copy.deepcopy(proxy)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors(broken), path


@pytest.mark.parametrize("change", [
    lambda m: m.pop("name"),
    lambda m: m.update(filterName="f" * 254),
    lambda m: m.update(terminalFilter="yes"),
])
def test_the_schema_refuses_what_envoy_gateway_would_in_the_policy(change):
    _, policy = documents()
    broken = copy.deepcopy(policy)
    change(broken["spec"]["dynamicModule"][0])
    assert errors(broken)


def test_the_cel_rules_on_the_fields_set_hold_and_the_module_is_allow_listed():
    """The CRDs' x-kubernetes-validations a JSON schema cannot express, for what the manifests
    set: a Local source has `local` and no `remote`; a Merge bootstrap has a value; the policy
    has a target; every module the policy loads is in the EnvoyProxy's allow-list."""
    proxy, policy = documents()
    allowed = {}
    for module in proxy["spec"]["dynamicModules"]:
        source = module["source"]
        assert source["type"] == "Local" and "local" in source and "remote" not in source
        allowed[module["name"]] = module
    bootstrap = proxy["spec"]["bootstrap"]
    assert bootstrap["type"] == "Merge" and bootstrap["value"]
    assert policy["spec"]["targetRefs"]
    assert [m["name"] for m in policy["spec"]["dynamicModule"]] == ["fhirgate"]
    assert all(m["name"] in allowed for m in policy["spec"]["dynamicModule"])
    # Envoy 1.40, the ABI the module is built for, and the module from its image volume.
    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    assert container["image"].endswith(":distroless-v1.40.0")
    [mount] = container["volumeMounts"]
    assert allowed["fhirgate"]["source"]["local"]["path"] == f"{mount['mountPath']}/libfhirgate.so"


def translated(module: dict, entry: dict) -> dict:
    """The HTTP filter Envoy Gateway writes for an EnvoyExtensionPolicy's dynamic module (its
    xDS translator: the module by file, the filter name, the config as a JSON string), with the
    module read from build/native instead of the image volume."""
    return {"name": "envoy.filters.http.dynamic_modules/envoyextensionpolicy/fhir/fhirgate/dynamic-module/0",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"module": {"local": {"filename": str(NATIVE_DIR / "libfhirgate.so")}},
                                          "do_not_close": module.get("doNotClose", False)},
                "filter_name": entry.get("filterName", ""),
                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(entry["config"], separators=(",", ":"))}}}


def test_envoy_runs_the_policy_as_envoy_gateway_translates_it(tmp_path):
    from test_configs import AUDIT, PLACEHOLDERS
    proxy, policy = documents()
    [entry] = json.loads(json.dumps(policy["spec"]["dynamicModule"]).replace("REPLACE_ME", SECRET))
    assert list(entry["config"]) == ORDER
    [module] = proxy["spec"]["dynamicModules"]
    rendered = yaml.safe_load(render_envoy(tmp_path / "base.yaml", PLACEHOLDERS, audit=AUDIT, deployment="native").read_text())
    hcm = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    hcm["http_filters"][names.index("fhirgate")] = translated(module, entry)
    # Envoy Gateway merges the EnvoyProxy's bootstrap: the clusters the stages call.
    merged = yaml.safe_load(proxy["spec"]["bootstrap"]["value"])
    rendered["static_resources"]["clusters"] += merged["static_resources"]["clusters"]
    rendered["stats_config"] = merged["stats_config"]
    config = tmp_path / "envoy-gateway.yaml"
    config.write_text(yaml.safe_dump(rendered))
    result = envoy_validate(config)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    for stage in ORDER:
        assert f"fhirgate.{stage}: configuration accepted" in log, stage
    # While the secrets are placeholders, the module refuses its configuration, naming them.
    placeholder = json.loads(json.dumps(policy["spec"]["dynamicModule"]))[0]
    hcm["http_filters"][names.index("fhirgate")] = translated(module, placeholder)
    config.write_text(yaml.safe_dump(rendered))
    result = envoy_validate(config)
    assert result.returncode != 0
    assert "is not base64" in result.stdout + result.stderr
