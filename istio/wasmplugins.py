#!/usr/bin/env python3
"""Writes the Istio manifests for fhirgate.wasm, the one module, with each stage's
configuration (envoy/*.json) as its section, so manifests and Envoy configs cannot drift (a
test regenerates the shipped files and lints every configuration with the module's own config
code).

WasmPlugins: one per stage (Istio orders plugins by phase), each the same image configured
with its stage's section. --envoyfilter: the fused module, every stage in one filter.

    .venv/bin/python istio/wasmplugins.py --registry REGISTRY [--tag TAG] [--namespace NS] [--gateway] [--wasm-dir DIR] > out.yaml

Order in the chain: routing and authz in phase AUTHN (routing first: higher priority runs
first), rate limits and consent in AUTHZ, audit in STATS (after every decision). Every plugin
fails closed. With --wasm-dir the modules' sha256 pins each image. Secrets are never written:
the authz issuers, break-glass keys and the audit chain key are left as REPLACE_ME values the
filters refuse (fail closed) until the operator sets them.
"""
import argparse
import hashlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENVOY = ROOT / "envoy"

# (filter, phase, priority)
PLUGINS = [("routing", "AUTHN", 200), ("authz", "AUTHN", 100), ("ratelimit", "AUTHZ", 200), ("consent", "AUTHZ", 100), ("audit", "STATS", 100)]
SECRET = "REPLACE_ME"
GLOBAL_RATELIMIT = False


# The Envoy clusters the stages call, by role: Istio's names for the services.
ISTIO_CLUSTERS = {"issuer": "outbound|443||issuer.example.org",
                  "fhir": "outbound|8080||fhir-server.fhir.svc.cluster.local",
                  "audit": "outbound|8080||audit-collector.fhir.svc.cluster.local"}


def plugin_config(name: str, clusters: dict = ISTIO_CLUSTERS) -> dict:
    """A stage's section of envoy/*.json for a cluster deployment: the example issuer, the
    clusters by role (`clusters`), the secrets left REPLACE_ME."""
    config = json.loads((ENVOY / f"{name}.json").read_text())
    if name == "authz":
        config["routing"] = json.loads((ENVOY / "routing.json").read_text())
        config["issuers"] = [{"issuer": "https://issuer.example.org", "audiences": ["https://fhir.example.org/fhir/r4"],
                              "jwksUri": "https://issuer.example.org/jwks", "jwksCluster": clusters["issuer"]}]
        config["currentResource"]["cluster"] = clusters["fhir"]
    if name == "ratelimit":
        config["breakGlass"] = {"header": "x-break-glass", "keys": {"2026-q4": SECRET}}
        if GLOBAL_RATELIMIT:
            config["enforcement"] = "envoy"
    if name == "consent":
        config["consents"]["cluster"] = clusters["fhir"]
    if name == "audit":
        config["chain"] = {"kid": "2026-q4", "key": SECRET}
        config["collector"]["cluster"] = clusters["audit"]
    return config


def fused_sections(clusters: dict = ISTIO_CLUSTERS) -> dict:
    """Every stage's section, as the fused module reads its configuration."""
    sections = {name: plugin_config(name, clusters) for name, _, _ in PLUGINS}
    del sections["authz"]["routing"]  # the module gives the authz stage the routing section
    return sections


def manifest(name, phase, priority, args) -> dict:
    spec = {
        "url": f"oci://{args.registry}/fhirgate:{args.tag}",
        "imagePullPolicy": "IfNotPresent",
        "phase": phase,
        "priority": priority,
        # The request a trapped or panicked VM was serving fails closed; the VM is reloaded for
        # the next one (FAIL_CLOSE would leave the worker refusing everything until a restart).
        "failStrategy": "FAIL_RELOAD",
        "pluginName": f"fhirgate.{name}",
        "type": "HTTP",
        "pluginConfig": {name: plugin_config(name)},
    }
    if args.wasm_dir:
        spec["sha256"] = hashlib.sha256((args.wasm_dir / "fhirgate.wasm").read_bytes()).hexdigest()
    if args.gateway:
        spec["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "fhir-gateway"}]
    else:
        spec["selector"] = {"matchLabels": {"app": "fhir-server"}}
        spec["match"] = [{"mode": "SERVER", "ports": [{"number": 8080}]}]
    return {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": f"fhirgate-{name}", "namespace": args.namespace}, "spec": spec}


def global_ratelimit_patches(context: str, args) -> list:
    """Envoy's global rate limiting around the chain, as envoy/render.py --global-ratelimit does
    it: the weight as hits_addend, the ratelimit filter before the router, the descriptor
    actions on the route configuration, and the rate-limit service's cluster."""
    sys.path.insert(0, str(ENVOY))
    import render  # the same pieces the Envoy configs use
    router = {"context": context, "listener": {"filterChain": {"filter": {
        "name": "envoy.filters.network.http_connection_manager", "subFilter": {"name": "envoy.filters.http.router"}}}}}
    cluster = render.ratelimit_service_cluster()
    cluster.update({"type": "STRICT_DNS", "load_assignment": {"cluster_name": "ratelimit_service", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": args.ratelimit_service, "port_value": 8081}}}}]}]}})
    return [
        {"applyTo": "HTTP_FILTER", "match": router, "patch": {"operation": "INSERT_BEFORE", "value": render.hits_addend_filter()}},
        {"applyTo": "HTTP_FILTER", "match": router, "patch": {"operation": "INSERT_BEFORE", "value": render.global_ratelimit_filter()}},
        {"applyTo": "VIRTUAL_HOST", "match": {"context": context}, "patch": {"operation": "MERGE",
                                                                             "value": {"rate_limits": render.global_ratelimit_actions(),
                                                                                       "request_headers_to_remove": render.ENVOY_ONLY_HEADERS}}},
        {"applyTo": "CLUSTER", "match": {"context": context}, "patch": {"operation": "ADD", "value": cluster}},
    ]


def envoy_filter(args) -> dict:
    """The fused module as one EnvoyFilter (one filter running every stage, inserted before the
    router), for where the WasmPlugin API falls short: it cannot set Envoy's
    `allow_on_headers_stop_iteration`, without which a filter that holds a request or response
    head while it reads the body stalls. The module is read from `--wasm-path` in the proxy
    (mounted with the sidecar.istio.io/userVolume and userVolumeMount annotations). An RBAC
    filter after it requires the pass mark, the guard Istio's routes cannot hold."""
    context = "GATEWAY" if args.gateway else "SIDECAR_INBOUND"
    sections = fused_sections()
    config = {"name": "fhirgate", "root_id": "fhirgate", "failure_policy": "FAIL_RELOAD",
              "reload_config": {"backoff": {"base_interval": "0.2s", "max_interval": "10s"}},
              "allow_on_headers_stop_iteration": True,
              "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": json.dumps(sections, separators=(",", ":"))},
              "vm_config": {"vm_id": "fhirgate", "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": f"{args.wasm_path}/fhirgate.wasm"}}}}
    match = {"context": context, "listener": {"filterChain": {"filter": {
        "name": "envoy.filters.network.http_connection_manager", "subFilter": {"name": "envoy.filters.http.router"}}}}}
    if not args.gateway:
        match["listener"]["portNumber"] = 8080
    sys.path.insert(0, str(ENVOY))
    import render  # the guard the Envoy configs would use where routes cannot require the mark
    patches = [{"applyTo": "HTTP_FILTER", "match": match, "patch": {"operation": "INSERT_BEFORE", "value": {
        "name": "fhirgate",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}}}},
        # Istio's routes cannot match filter state: the pass mark is required here instead,
        # so a request the module never saw (its VM did not load) is refused, not forwarded.
        {"applyTo": "HTTP_FILTER", "match": match, "patch": {"operation": "INSERT_BEFORE", "value": render.pass_guard_filter()}}]
    if args.global_ratelimit:
        patches += global_ratelimit_patches(context, args)
    spec = {"configPatches": patches}
    if args.gateway:
        spec["workloadSelector"] = {"labels": {"istio": "ingressgateway"}}
    else:
        spec["workloadSelector"] = {"labels": {"app": "fhir-server"}}
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": "fhirgate-chain", "namespace": args.namespace}, "spec": spec}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--tag", default="0.1.0")
    ap.add_argument("--namespace", default="fhir")
    ap.add_argument("--gateway", action="store_true", help="attach to the Gateway `fhir-gateway` instead of sidecars of app=fhir-server")
    ap.add_argument("--wasm-dir", type=pathlib.Path, help="pin each image with its module's sha256")
    ap.add_argument("--envoyfilter", action="store_true", help="write the chain as one EnvoyFilter instead of WasmPlugins")
    ap.add_argument("--wasm-path", default="/var/local/fhirgate", help="with --envoyfilter: where the proxy finds the modules")
    ap.add_argument("--global-ratelimit", action="store_true", help="with --envoyfilter: Envoy's global rate limiting (one budget across replicas)")
    ap.add_argument("--ratelimit-service", default="ratelimit.ratelimit.svc.cluster.local", help="the rate-limit service's host (port 8081)")
    args = ap.parse_args(argv)
    if args.global_ratelimit and not args.envoyfilter:
        # WasmPlugins cannot add Envoy's rate-limit filter or remove its descriptor headers:
        # the limit would go unenforced and the descriptors would reach the upstream.
        ap.error("--global-ratelimit needs --envoyfilter")
    global GLOBAL_RATELIMIT
    GLOBAL_RATELIMIT = args.global_ratelimit
    import yaml  # PyYAML, in the project's virtualenv (tools/requirements.txt)
    kind = "gateway" if args.gateway else "sidecar"
    if args.envoyfilter:
        doc = yaml.safe_dump(envoy_filter(args), sort_keys=False, width=120)
        sys.stdout.write(f"# fhirgate as an EnvoyFilter ({kind}); generated by istio/wasmplugins.py --envoyfilter — do not edit.\n---\n" + doc)
        return 0
    docs = [yaml.safe_dump(manifest(n, ph, pr, args), sort_keys=False, width=120) for n, ph, pr in PLUGINS]
    sys.stdout.write(f"# fhirgate WasmPlugins ({kind}); generated by istio/wasmplugins.py — do not edit.\n---\n" + "---\n".join(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
