#!/usr/bin/env python3
"""Writes the Envoy Gateway manifests for the native module (libfhirgate.so): an EnvoyProxy that
runs Envoy 1.40 with the module mounted from its image and allow-listed, and an
EnvoyExtensionPolicy that puts the fused pipeline (every stage's section of envoy/*.json) on a
Gateway. Envoy Gateway 1.8 or later (`dynamicModules`); Kubernetes 1.35 or later for the image
volume. A test regenerates the shipped file, validates it against Envoy Gateway's published
schemas and runs the module's configuration in a real Envoy as Envoy Gateway translates it.

    .venv/bin/python envoy-gateway/manifests.py --registry REGISTRY [--tag TAG] [--namespace NS] > out.yaml

Secrets are never written: the break-glass keys and the audit chain key are left REPLACE_ME,
which the stages refuse (the module then refuses its configuration) until they are set.
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "istio"))
import wasmplugins  # noqa: E402  (the stage sections the Istio manifests use)

# The Envoy image: the module is built for the dynamic-module ABI of Envoy 1.40 only.
ENVOY_IMAGE = "docker.io/envoyproxy/envoy:distroless-v1.40.0"
MODULE_DIR = "/etc/envoy/dynamic-modules"
MODULE = "fhirgate"
# The clusters the stages call (JWKS, Consents and current resources, the audit collector).
# Envoy Gateway names its clusters after routes, so these are added to Envoy's bootstrap.
CLUSTERS = {"issuer": "fhirgate_issuer", "fhir": "fhirgate_fhir_server", "audit": "fhirgate_audit_collector"}
SERVICES = {"issuer": ("issuer.example.org", 443, True),
            "fhir": ("fhir-server.{ns}.svc.cluster.local", 8080, False),
            "audit": ("audit-collector.{ns}.svc.cluster.local", 8080, False)}


def cluster(role: str, namespace: str) -> dict:
    host, port, tls = SERVICES[role]
    host = host.format(ns=namespace)
    c = {"name": CLUSTERS[role], "type": "STRICT_DNS", "connect_timeout": "2s", "dns_lookup_family": "V4_ONLY",
         "load_assignment": {"cluster_name": CLUSTERS[role], "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}}
    if tls:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": host}}
    return c


def bootstrap(namespace: str) -> str:
    """Merged into Envoy Gateway's bootstrap: the clusters the stages call, and the tag rules
    that make each counter's detail a Prometheus label (as envoy/fhirgate.yaml has them)."""
    import yaml
    template = (ROOT / "envoy" / "fhirgate.yaml").read_text()
    stats = yaml.safe_load(template[template.index("stats_config:"):template.index("overload_manager:")])
    merged = {"static_resources": {"clusters": [cluster(role, namespace) for role in CLUSTERS]}, **stats}
    return yaml.safe_dump(merged, sort_keys=False, width=120)


def envoy_proxy(args) -> dict:
    return {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyProxy",
            "metadata": {"name": "fhirgate-native", "namespace": args.namespace},
            "spec": {
                "provider": {"type": "Kubernetes", "kubernetes": {"envoyDeployment": {
                    "container": {"image": ENVOY_IMAGE,
                                  "volumeMounts": [{"name": "fhirgate-module", "mountPath": MODULE_DIR, "readOnly": True}]},
                    # `make images` writes the image: one layer holding libfhirgate.so.
                    "pod": {"volumes": [{"name": "fhirgate-module", "image": {
                        "reference": f"{args.registry}/fhirgate-native:{args.tag}", "pullPolicy": "IfNotPresent"}}]}}}},
                "dynamicModules": [{"name": MODULE, "source": {"type": "Local", "local": {"path": f"{MODULE_DIR}/libfhirgate.so"}},
                                    # Unloading a module whose threads still run is unsafe.
                                    "doNotClose": True}],
                "bootstrap": {"type": "Merge", "value": bootstrap(args.namespace)}}}


def extension_policy(args) -> dict:
    return {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
            "metadata": {"name": "fhirgate", "namespace": args.namespace},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "fhir-gateway"}],
                     "dynamicModule": [{"name": MODULE, "filterName": MODULE, "config": wasmplugins.fused_sections(CLUSTERS)}]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", required=True, help="where the fhirgate-native image is (make images)")
    ap.add_argument("--tag", default="0.1.0")
    ap.add_argument("--namespace", default="fhir")
    args = ap.parse_args(argv)
    import yaml  # PyYAML, in the project's virtualenv (tools/requirements.txt)

    def text(dumper, data):
        # The merged bootstrap is YAML in a string: kept readable as a block.
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)
    yaml.add_representer(str, text, Dumper=yaml.SafeDumper)
    docs = [yaml.safe_dump(d, sort_keys=False, width=120) for d in (envoy_proxy(args), extension_policy(args))]
    sys.stdout.write("# fhirgate's native module on Envoy Gateway; generated by envoy-gateway/manifests.py — do not edit.\n"
                     "# The Gateway `fhir-gateway` uses the EnvoyProxy: spec.infrastructure.parametersRef\n"
                     "# {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: fhirgate-native}.\n---\n" + "---\n".join(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
