#!/usr/bin/env python3
"""Render an fhirgate Envoy template: replace {{NAME}} placeholders.

Filter configs are inlined from their JSON files in envoy/, compacted to one line, so the
JSON files are the single source of truth: {{ROUTING_CONFIG}} is routing.json;
{{AUTHZ_CONFIG}} is authz.json with routing.json under `routing` (both filters parse requests
alike) and, with --issuers FILE, the settings known only where the gateway is deployed: the
file is a JSON list of trusted issuers, or an object with `issuers` and `introspection`.
Every placeholder must be given; an unknown or missing one is an error, never left in place.

    render.py TEMPLATE OUT --set LISTEN_PORT=10000 --set FHIR_PORT=8090 ... [--issuers FILE] [--jwt-authn]

--jwt-authn renders the fast path for RSA tokens: Envoy's own jwt_authn filter, after routing
and before fhirgate.authz, verifies tokens natively (providers made from the issuers file) and
forwards the verified payload in x-fhirgate-jwt-payload; fhirgate.authz trusts that instead of
verifying again. jwt_authn runs with allow_missing_or_failed, so every refusal stays
fhirgate.authz's, with an OperationOutcome.

{{RATELIMIT_CONFIG}} is ratelimit.json, with --ratelimit FILE's keys laid over it (test tiers,
break-glass keys: settings known only where the gateway runs). --global-ratelimit adds Envoy's
global rate-limit filter after fhirgate.ratelimit, the descriptor actions and the
ratelimit_service cluster ({{RATELIMIT_SERVICE_PORT}}), and sets `enforcement: envoy` unless
the --ratelimit file says otherwise: the budget is then one across every replica.
--lds FILE moves the listeners into FILE, an LDS file Envoy watches: render again into it
(renames are atomic) and the running Envoy takes the new filter configs and modules.
--deployment fused (the default) merges neighbouring fhirgate.* filters into one `fhirgate`
filter whose configuration has each stage's section (one HTTP context per request);
--deployment five-filter keeps the template's separate filters. Both load the one module.
{{CONSENT_CONFIG}} is consent.json, with --consent FILE's keys laid over it. {{AUDIT_CONFIG}} is
audit.json with --audit FILE's keys laid over it: the chain key (`chain: {kid, key}`) is a
deployment secret and must come from there.
"""
import argparse
import json
import pathlib
import re
import sys

FILTER_CONFIGS = {"ROUTING_CONFIG": "routing.json", "AUTHZ_CONFIG": "authz.json", "RATELIMIT_CONFIG": "ratelimit.json",
                  "CONSENT_CONFIG": "consent.json", "AUDIT_CONFIG": "audit.json"}
CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def filter_config(key: str, issuers: pathlib.Path | None, jwt_authn: bool = False,
                  ratelimit: pathlib.Path | None = None, global_ratelimit: bool = False,
                  consent: pathlib.Path | None = None, audit: pathlib.Path | None = None,
                  routing: dict | None = None) -> dict:
    config = json.loads((CONFIG_DIR / FILTER_CONFIGS[key]).read_text())
    if key == "AUDIT_CONFIG" and audit is not None:
        config.update(json.loads(audit.read_text()))
    if key == "CONSENT_CONFIG" and consent is not None:
        config.update(json.loads(consent.read_text()))
    if key == "RATELIMIT_CONFIG":
        if global_ratelimit:
            config["enforcement"] = "envoy"
        if ratelimit is not None:
            config.update(json.loads(ratelimit.read_text()))
    if key == "AUTHZ_CONFIG":
        # The authz stage parses requests as the routing stage does: the same routing config
        # (a ROUTING_CONFIG given on the command line, else routing.json).
        config.setdefault("routing", routing if routing is not None else
                          json.loads((CONFIG_DIR / FILTER_CONFIGS["ROUTING_CONFIG"]).read_text()))
        if issuers is not None:
            config.update(deployment_settings(issuers))
        if jwt_authn:
            config["jwtAuthn"] = {"payloadHeader": JWT_PAYLOAD_HEADER}
    return config


JWT_PAYLOAD_HEADER = "x-fhirgate-jwt-payload"


def deployment_settings(path: pathlib.Path) -> dict:
    """The --issuers file: a JSON list of issuers, or an object of authz settings known only
    where the gateway runs (`issuers`, `introspection`)."""
    settings = json.loads(path.read_text())
    return {"issuers": settings} if isinstance(settings, list) else settings


def jwt_authn_filter(issuers: list) -> dict:
    """Envoy's jwt_authn filter for these issuers: keys from jwksUri (through jwksCluster) or inline jwks."""
    providers = {}
    for i, issuer in enumerate(issuers):
        # jwt_cache_config: a token verified once is not verified again (RS256 is the costly
        # part of jwt_authn), as fhirgate's own cache does on the Wasm path.
        provider = {"issuer": issuer["issuer"], "audiences": issuer["audiences"], "forward": True,
                    "forward_payload_header": JWT_PAYLOAD_HEADER, "clock_skew_seconds": issuer.get("clockSkewSeconds", 60),
                    "jwt_cache_config": {"jwt_cache_size": 1000}}
        if "jwksUri" in issuer:
            provider["remote_jwks"] = {"http_uri": {"uri": issuer["jwksUri"], "cluster": issuer["jwksCluster"], "timeout": "5s"},
                                       "cache_duration": f"{issuer.get('jwksRefreshSeconds', 300)}s",
                                       "async_fetch": {"fast_listener": False}}
        else:
            provider["local_jwks"] = {"inline_string": json.dumps(issuer["jwks"])}
        providers[f"issuer{i}"] = provider
    requirements = [{"provider_name": name} for name in providers] + [{"allow_missing_or_failed": {}}]
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": requirements}}}]}}


def with_jwt_authn(text: str, issuers: list) -> str:
    """Inserts jwt_authn before fhirgate.authz (one flow-style line: JSON is YAML)."""
    anchor = "          - name: fhirgate.authz\n"
    if anchor not in text:
        raise SystemExit("render.py: --jwt-authn needs a template with the fhirgate.authz filter")
    return text.replace(anchor, f"          - {json.dumps(jwt_authn_filter(issuers))}\n{anchor}", 1)


RATELIMIT_DOMAIN = "fhirgate"


def global_ratelimit_filter() -> dict:
    """Envoy's global rate-limit filter, asking the rate-limit service (envoyproxy/ratelimit
    with envoy/ratelimit/config/fhirgate.yaml) about fhirgate.ratelimit's descriptors. Fails closed:
    when the service cannot answer, 503."""
    return {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": RATELIMIT_DOMAIN, "timeout": "0.25s", "failure_mode_deny": True,
        "status_on_error": {"code": "ServiceUnavailable"},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {"transport_api_version": "V3", "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit_service"}}}}}


# fhirgate's headers only Envoy reads (its rate limiters' descriptors, jwt_authn's payload for
# the authz stage): routes remove them before the upstream (envoy/fhirgate.yaml does the same).
ENVOY_ONLY_HEADERS = ["x-fhirgate-rl-class", "x-fhirgate-rl-tenant", "x-fhirgate-rl-principal", "x-fhirgate-rl-weight",
                      JWT_PAYLOAD_HEADER]


def global_ratelimit_actions() -> list:
    """The virtual host's descriptor: class, tenant, principal (absent for bulk). The request's
    FHIR cost goes as hits_addend (hits_addend_filter)."""
    return [{"actions": [
        {"request_headers": {"header_name": "x-fhirgate-rl-class", "descriptor_key": "class"}},
        {"request_headers": {"header_name": "x-fhirgate-rl-tenant", "descriptor_key": "tenant"}},
        {"request_headers": {"header_name": "x-fhirgate-rl-principal", "descriptor_key": "principal", "skip_if_absent": True}}]}]


STAGES = ["routing", "authz", "ratelimit", "consent", "audit"]


def pass_guard_filter() -> dict:
    """Envoy's RBAC filter, after the fhirgate filter(s), allowing only requests whose pass
    mark names every stage: where routes cannot require the mark (Istio builds them from
    VirtualServices), a request the module never saw (its VM did not load on that worker) is
    refused here instead of forwarded."""
    return {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"fhirgate-passed": {
            "permissions": [{"any": True}],
            "principals": [{"filter_state": {"key": "wasm.fhirgate.passed",
                                             "string_match": {"exact": ",".join(STAGES)}}}]}}}}}


def hits_addend_filter() -> dict:
    """Envoy's set_filter_state filter: the request's FHIR cost (x-fhirgate-rl-weight) becomes
    `envoy.ratelimit.hits_addend`, which the global rate-limit filter sends as the request's
    hits_addend. (Envoy 1.40 validates a route-level `hits_addend` format but sent no hits_addend
    to the service with it in our tests; the filter-state object is what it sends.)"""
    return {"name": "envoy.filters.http.set_filter_state", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
        "on_request_headers": [{"object_key": "envoy.ratelimit.hits_addend",
                                "format_string": {"text_format_source": {"inline_string": "%REQ(x-fhirgate-rl-weight)%"}}}]}}


def ratelimit_service_cluster() -> dict:
    return {"name": "ratelimit_service", "connect_timeout": "1s", "type": "STATIC",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "ratelimit_service", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": "{{RATELIMIT_SERVICE_PORT}}"}}}}]}]}}


def with_global_ratelimit(text: str) -> str:
    """Adds the global rate-limit filter after fhirgate.ratelimit, the descriptor actions on
    the virtual host and the rate-limit service's cluster (flow-style lines: JSON is YAML)."""
    anchors = {"filter": "          - name: envoy.filters.http.router\n",
               "vhost": "              domains: [\"*\"]\n",
               "clusters": "  clusters:\n"}
    for what, anchor in anchors.items():
        if anchor not in text:
            raise SystemExit(f"render.py: --global-ratelimit found no {what} anchor in the template")
    text = text.replace(anchors["filter"], f"          - {json.dumps(hits_addend_filter())}\n          - {json.dumps(global_ratelimit_filter())}\n{anchors['filter']}", 1)
    text = text.replace(anchors["vhost"], f"{anchors['vhost']}              rate_limits: {json.dumps(global_ratelimit_actions())}\n", 1)
    cluster = json.dumps(ratelimit_service_cluster()).replace('"{{RATELIMIT_SERVICE_PORT}}"', "{{RATELIMIT_SERVICE_PORT}}")
    return text.replace(anchors["clusters"], f"{anchors['clusters']}  - {cluster}\n", 1)


def render(template: pathlib.Path, values: dict, issuers: pathlib.Path | None = None, jwt_authn: bool = False,
           ratelimit: pathlib.Path | None = None, global_ratelimit: bool = False, consent: pathlib.Path | None = None,
           audit: pathlib.Path | None = None) -> str:
    text = template.read_text()
    for key in FILTER_CONFIGS:
        if "{{%s}}" % key in text and key not in values:
            given = values.get("ROUTING_CONFIG")
            routing = json.loads(given) if isinstance(given, str) else None
            compact = json.dumps(filter_config(key, issuers, jwt_authn, ratelimit, global_ratelimit, consent, audit, routing),
                                 separators=(",", ":"))
            if "'" in compact:
                raise SystemExit(f"{FILTER_CONFIGS[key]}: single quotes cannot be inlined into YAML")
            values[key] = compact
    if jwt_authn:
        if issuers is None:
            raise SystemExit("render.py: --jwt-authn needs --issuers")
        text = with_jwt_authn(text, deployment_settings(issuers).get("issuers", []))
    if global_ratelimit:
        text = with_global_ratelimit(text)
    missing = sorted(set(re.findall(r"\{\{([A-Z_]+)\}\}", text)) - set(values))
    if missing:
        raise SystemExit(f"render.py: no value for {', '.join(missing)}")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: str(values[m.group(1)]), text)


def with_lds(text: str, lds_path: pathlib.Path) -> str:
    """Moves the listeners into an LDS file Envoy watches (`lds_path`) and points the
    bootstrap at it: replacing that file (atomically, with a rename) reconfigures the running
    Envoy — filter configs and modules — without a restart or a lost request. A listener
    Envoy refuses (a filter refusing its new config) is not applied; the old one keeps serving."""
    import yaml  # PyYAML, in the project's virtualenv
    bootstrap = yaml.safe_load(text)
    listeners = bootstrap["static_resources"].pop("listeners")
    write_lds(lds_path, listeners)
    # Dynamic resources need a node identity.
    bootstrap.setdefault("node", {"id": "fhirgate", "cluster": "fhirgate"})
    bootstrap["dynamic_resources"] = {"lds_config": {"resource_api_version": "V3", "path_config_source": {
        "path": str(lds_path), "watched_directory": {"path": str(lds_path.parent)}}}}
    return yaml.safe_dump(bootstrap, sort_keys=False)


FHIR_CLUSTERS = ("fhir_api", "fhir_bulk", "fhir_validate", "fhir_prior_auth", "fhir_device")


def tls_context(certs: pathlib.Path, kind: str, require_client: bool = False) -> dict:
    """A transport socket from the certificates in `certs` (ca.pem, server.pem/-key.pem,
    gateway-client.pem/-key.pem)."""
    if kind == "downstream":
        ctx = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
               "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": str(certs / "server.pem")},
                                                            "private_key": {"filename": str(certs / "server-key.pem")}}],
                                      "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"}}}
        if require_client:
            ctx["require_client_certificate"] = True
            ctx["common_tls_context"]["validation_context"] = {"trusted_ca": {"filename": str(certs / "ca.pem")}}
    else:
        ctx = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
               "sni": "fhir.fhirgate.test",
               "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": str(certs / "gateway-client.pem")},
                                                            "private_key": {"filename": str(certs / "gateway-client-key.pem")}}],
                                      "validation_context": {"trusted_ca": {"filename": str(certs / "ca.pem")},
                                                             "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "fhir.fhirgate.test"}}]}}}
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def with_tls(text: str, certs: pathlib.Path, internal_port: int, replica_port: int | None, health_path: str = "/fhir/metadata") -> str:
    """TLS on the public listener; a second, internal listener on `internal_port` that requires
    a client certificate from the CA (its URI SAN selects the authorization filter's trust
    zone); mutual TLS to the FHIR clusters; with `replica_port`, a second FHIR server endpoint,
    active health checks and round-robin balancing."""
    import copy
    import yaml  # PyYAML, in the project's virtualenv
    bootstrap = yaml.safe_load(text)
    listeners = bootstrap["static_resources"]["listeners"]
    public = listeners[0]
    internal = copy.deepcopy(public)
    public["filter_chains"][0]["transport_socket"] = tls_context(certs, "downstream")
    internal["name"] = "fhir_internal"
    internal["address"]["socket_address"]["port_value"] = internal_port
    internal["filter_chains"][0]["transport_socket"] = tls_context(certs, "downstream", require_client=True)
    internal["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "fhir_internal"
    listeners.append(internal)
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] not in FHIR_CLUSTERS:
            continue
        cluster["transport_socket"] = tls_context(certs, "upstream")
        if replica_port is not None:
            endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            replica = copy.deepcopy(endpoints[0])
            replica["endpoint"]["address"]["socket_address"]["port_value"] = replica_port
            endpoints.append(replica)
            # Round robin, not least-request: until a worker hears that a replica went down, a
            # dead endpoint has no requests in flight, so least-request sends every side call
            # (a Consent search while the request itself waits on the live replica) to it, retry
            # after retry; round robin alternates.
            cluster["lb_policy"] = "ROUND_ROBIN"
            # With two replicas one down is half the cluster: without this Envoy's panic mode
            # would spread requests over the dead one too.
            cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
            cluster["health_checks"] = [{"timeout": "3s", "interval": "2s", "no_traffic_interval": "2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                                         "http_health_check": {"path": health_path}}]
            cluster["outlier_detection"] = {"consecutive_5xx": 3, "consecutive_local_origin_failure": 1,
                                            "split_external_local_origin_errors": True, "base_ejection_time": "5s"}
    return yaml.safe_dump(bootstrap, sort_keys=False)


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def is_fhirgate_filter(entry: dict) -> bool:
    return entry.get("name", "").startswith("fhirgate.") and entry.get("typed_config", {}).get("@type") == WASM_TYPE


def fuse_filters(filters: list) -> list:
    """Merges each run of neighbouring fhirgate.* filters (one stage each) into one filter of
    the same module whose configuration holds every stage's section: the stages then run in
    one HTTP context. A run of one stays as it is."""
    fused, run = [], []

    def flush():
        if len(run) == 1:
            fused.append(run[0])
        elif run:
            first = run[0]["typed_config"]["config"]
            sections = {}
            for entry in run:
                sections.update(json.loads(entry["typed_config"]["config"]["configuration"]["value"]))
            # The module gives the authz stage the routing section: one copy, not two.
            if "routing" in sections and sections.get("authz", {}).get("routing") == sections["routing"]:
                del sections["authz"]["routing"]
            config = {k: v for k, v in first.items() if k not in ("name", "root_id", "configuration", "allow_on_headers_stop_iteration")}
            name = "fhirgate" if len(run) == 5 else "fhirgate." + "+".join(sections)
            config = {"name": name, "root_id": name, **config,
                      "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                        "value": json.dumps(sections, separators=(",", ":"))}}
            if any(e["typed_config"]["config"].get("allow_on_headers_stop_iteration") for e in run):
                config["allow_on_headers_stop_iteration"] = True
            fused.append({"name": name, "typed_config": {"@type": WASM_TYPE, "config": config}})
        run.clear()

    for entry in filters:
        if is_fhirgate_filter(entry):
            run.append(entry)
        else:
            flush()
            fused.append(entry)
    flush()
    return fused


NATIVE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
# libfhirgate.so (`make native`), found in ENVOY_DYNAMIC_MODULES_SEARCH_PATH (build/native).
NATIVE_MODULE = "fhirgate"


def native_filter(entry: dict) -> dict:
    """A fused fhirgate Wasm filter as the same pipeline in the native module: the same
    configuration, the same filter name."""
    if not is_fhirgate_filter(entry) and entry.get("name") != "fhirgate":
        return entry
    config = entry["typed_config"]["config"]
    return {"name": entry["name"], "typed_config": {
        "@type": NATIVE_TYPE,
        "dynamic_module_config": {"name": NATIVE_MODULE, "do_not_close": True},
        "filter_name": entry["name"],
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config["configuration"]["value"]}}}


def with_deployment(text: str, deployment: str) -> str:
    """`fused`: neighbouring fhirgate filters become one (see fuse_filters); `five-filter`: as
    the template has them; `native`: fused, in the native module instead of Wasm."""
    if deployment == "five-filter":
        return text
    import yaml  # PyYAML, in the project's virtualenv
    bootstrap = yaml.safe_load(text)
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typed_config", {})
                if "http_filters" in hcm:
                    hcm["http_filters"] = fuse_filters(hcm["http_filters"])
                    if deployment == "native":
                        hcm["http_filters"] = [native_filter(f) for f in hcm["http_filters"]]
    return yaml.safe_dump(bootstrap, sort_keys=False, width=1 << 20)


def write_lds(lds_path: pathlib.Path, listeners: list):
    """Writes an LDS resource file atomically (write aside, then rename over)."""
    resources = [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **l} for l in listeners]
    tmp = lds_path.with_name(f".{lds_path.name}.tmp")
    tmp.write_text(json.dumps({"resources": resources}, indent=1))
    tmp.replace(lds_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("template", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--issuers", type=pathlib.Path, help="JSON list of trusted issuers for the authz filter")
    ap.add_argument("--jwt-authn", action="store_true", help="verify tokens with Envoy's jwt_authn (the RSA fast path)")
    ap.add_argument("--ratelimit", type=pathlib.Path, help="JSON object of rate-limit settings laid over ratelimit.json (tiers, breakGlass keys)")
    ap.add_argument("--consent", type=pathlib.Path, help="JSON object of consent settings laid over consent.json")
    ap.add_argument("--audit", type=pathlib.Path, help="JSON object of audit settings laid over audit.json (the chain key)")
    ap.add_argument("--tls", type=pathlib.Path, metavar="CERTS", help="TLS, an internal mTLS listener (INTERNAL_PORT) and upstream mTLS, certificates from CERTS")
    ap.add_argument("--fhir-replica", type=int, metavar="PORT", help="with --tls: a second FHIR endpoint, health checks, round-robin balancing")
    ap.add_argument("--lds", type=pathlib.Path, help="put the listeners in this LDS file Envoy watches (hot reload)")
    ap.add_argument("--global-ratelimit", action="store_true", help="add Envoy's global rate-limit filter and its service cluster")
    ap.add_argument("--deployment", choices=["fused", "five-filter", "native"], default="fused",
                    help="fused: one fhirgate filter running every stage (default); five-filter: one filter per stage; "
                         "native: fused, as the Envoy dynamic module (libfhirgate.so) instead of Wasm")
    args = ap.parse_args(argv)
    values = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"render.py: --set {item!r} is not NAME=VALUE")
        values[name] = value
    text = render(args.template, values, args.issuers, args.jwt_authn, args.ratelimit, args.global_ratelimit, args.consent, args.audit)
    text = with_deployment(text, args.deployment)
    if args.tls is not None:
        text = with_tls(text, args.tls.resolve(), int(values["INTERNAL_PORT"]), args.fhir_replica, f"{values['UPSTREAM_BASE']}/metadata")
    if args.lds is not None:
        text = with_lds(text, args.lds.resolve())
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
