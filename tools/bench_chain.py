#!/usr/bin/env python3
"""`make bench`, second part: the whole pipeline, fused and as five filters, against Envoy
without filters.

Four Envoy processes, each `--concurrency 1`: an origin (a real HTTP upstream over loopback,
answering FHIR JSON from direct responses: the HL7 example Patient, a searchset of example
Observations, an empty Consent search, the audit collector's 204), the `baseline` gateway (the
shipped `envoy/fhirgate.yaml` with the fhirgate filters taken out and one route to the FHIR
cluster), the `fused` gateway (the shipped chain as rendered for deployment: fhirgate.wasm
running every stage in one filter — routing, SMART authorization with an inline JWKS and a
cached RS256 token, rate limiting with every request taking from a bucket, consent filtering
with Consents fetched from the origin and cached, audit to the origin's collector) and the
`five-filter` gateway (the same stages as five filters of the one module) and the `native`
gateway (the fused pipeline as the Envoy dynamic module, build/native/libfhirgate.so). h2load (HTTP/1.1,
8 connections, loopback) sends the same request mix to each in alternating rounds; CPU per
request is the gateway's CPU time (schedstat) over the round / requests; p50 latency from
h2load's per-request log; RSS after the rounds, and for a fused gateway with two workers. Then
one Envoy carries the five-filter chain built up filter by filter (where the time goes, CPU
per request), and one Envoy under callgrind the same, the fused chain, the fused chain with
tokens of 4, 16 and 64 scopes, and with 1 and 1,000 patients' Consents cached. Writes
bench/chain.md and the deployments' lines of bench/summary.jsonl.
"""
import base64
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tools"))
from stack import PORT_KEYS, WASM_DIR, Process, binary, free_port, http_get, render_envoy, wait_until  # noqa: E402
from bench import all_vms_created, cpu_ns, ensure, machine  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_CHAIN_REQUESTS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONNECTIONS = 8
CALLGRIND_REQUESTS = 500
CACHED_PATIENTS = 1000
EXAMPLES = ROOT / ".tools" / "node_modules" / "hl7.fhir.r4.examples"
FILTERS = ["fhirgate.routing", "fhirgate.authz", "fhirgate.ratelimit", "fhirgate.consent", "fhirgate.audit"]
# A clinician's session: reads, searches, a compartment search, the capability statement.
MIX = ["/fhir/r4/Patient/example", "/fhir/r4/Observation?patient=example&_count=10",
       "/fhir/r4/Observation?patient=example&code=http%3A%2F%2Floinc.org%7C29463-7&_sort=-date",
       "/fhir/r4/Encounter?subject=Patient/example&date=ge2024-01-01", "/fhir/r4/metadata"]
# Issue 16's targets for the fused pipeline and the five-filter deployment.
TARGETS = {"min": 0.65, "fused_cpu_us": 40, "five_cpu_us": 120, "rss_mib": 30,
           # Issue 17's, for the native module.
           "native_cpu_us": 15, "native_min": 0.85, "native_rss_mib": 10}


def fhir_answers() -> dict:
    patient = json.loads((EXAMPLES / "Patient-example.json").read_text())
    observations = [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("Observation-*.json"))][:40]
    observations = [o for o in observations if o.get("resourceType") == "Observation"][:10]
    for o in observations:
        o["subject"] = {"reference": "Patient/example"}
        o.pop("contained", None)
        o.get("meta", {}).pop("security", None)
    searchset = lambda entries: {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                 "entry": [{"fullUrl": f"http://origin/fhir/{e['resourceType']}/{e['id']}", "resource": e,
                                            "search": {"mode": "match"}} for e in entries]}
    return {"/fhir/Patient/": patient, "/fhir/Observation": searchset(observations), "/fhir/Encounter": searchset([]),
            "/fhir/Consent": searchset([]), "/fhir/metadata": {"resourceType": "CapabilityStatement", "status": "active",
                                                               "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"]}}


def origin_config(port: int, admin: int) -> str:
    """The upstream: direct responses, one route per answer (and one per cached-Consent patient)."""
    answers = fhir_answers()
    routes = [{"match": {"prefix": "/audit"}, "direct_response": {"status": 204}}]
    for i in range(CACHED_PATIENTS):
        routes.append({"match": {"path": f"/fhir/Patient/p{i}"},
                       "direct_response": {"status": 200, "body": {"inline_string": json.dumps({"resourceType": "Patient", "id": f"p{i}", "active": True})}}})
    for prefix, body in answers.items():
        routes.append({"match": {"prefix": prefix}, "direct_response": {"status": 200, "body": {"inline_string": json.dumps(body)}}})
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "origin",
           "route_config": {"max_direct_response_body_size_bytes": 1048576,
                            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/fhir+json"}}],
                            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
              "static_resources": {"listeners": [{"name": "origin", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                                                  "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                                                  "typed_config": hcm}]}]}]}}
    return yaml.safe_dump(config)


def render_chain(work: pathlib.Path, ports: dict, tokens_dir: pathlib.Path, deployment: str) -> dict:
    """The shipped chain, rendered as for a deployment whose every upstream is the origin."""
    issuers = work / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"issuer": "https://bench.fhirgate.invalid", "audiences": ["bench"], "algorithms": ["RS256"],
                                                "jwks": json.loads((tokens_dir / "jwks.json").read_text()), "requiredClaims": ["sub"]}]}))
    ratelimit = work / "ratelimit.json"  # tiers no run exhausts: every request takes from a bucket
    ratelimit.write_text(json.dumps({"tiers": {c: {"limit": 1_000_000_000, "windowSeconds": 60} for c in ("read", "search", "write", "delete", "validate", "operation", "cds-hooks")}}))
    consent = work / "consent.json"  # an hour's cache: callgrind's slow runs must not see entries expire
    consent.write_text(json.dumps({"consents": {**json.loads((ROOT / "envoy" / "consent.json").read_text())["consents"], "cacheSeconds": 3600}}))
    audit = work / "audit.json"
    audit.write_text(json.dumps({"chain": {"kid": "bench", "key": base64.b64encode(os.urandom(32)).decode()}}))
    values = {"ADMIN_PORT": ports["CHAIN_ADMIN"], "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": ports["CHAIN"],
              "ACCESS_LOG": work / "access.log", "UPSTREAM_BASE": "/fhir", "WASM_DIR": WASM_DIR,
              "ISSUER_PORT": ports["ORIGIN"], "AUDIT_PORT": ports["ORIGIN"], **{key: ports["ORIGIN"] for key in PORT_KEYS.values()}}
    path = render_envoy(work / f"chain-rendered-{deployment}.yaml", values, issuers=issuers, ratelimit=ratelimit, consent=consent,
                        audit=audit, deployment=deployment)
    return yaml.safe_load(path.read_text())


def hcm_of(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def variant(chain: dict, name: str, port: int, filters: list[str]) -> dict:
    """A copy of the chain's listener keeping only `filters` (in chain order; `fhirgate` is the
    fused filter); with none, one route straight to the FHIR cluster, as an Envoy without
    fhirgate would have."""
    listener = json.loads(json.dumps(chain["static_resources"]["listeners"][0]))
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    hcm = hcm_of(listener)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if not f["name"].startswith("fhirgate") or f["name"] in filters]
    stages = FILTERS if "fhirgate" in filters else filters
    mark = ",".join(f.removeprefix("fhirgate.") for f in stages)
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:  # the mark of the stages left
        require_mark(route, mark)
    if not filters:
        hcm["route_config"]["virtual_hosts"][0]["routes"] = [
            {"match": {"prefix": "/fhir/r4"}, "route": {"cluster": "fhir_api", "prefix_rewrite": "/fhir", "timeout": "30s"}}]
    return listener


def require_mark(route: dict, mark: str):
    """The route's pass-mark matcher asks for `mark`; its other matchers (the pool) stay."""
    for matcher in route["match"].get("filter_state", []):
        if matcher["key"] == "wasm.fhirgate.passed":
            matcher["string_match"] = {"exact": mark}


def without_audit(listener: dict) -> dict:
    """The fused filter of this listener without its audit section (and the routes' mark
    without audit)."""
    hcm = hcm_of(listener)
    for f in hcm["http_filters"]:
        if f["name"] == "fhirgate":
            config = f["typed_config"]["config"]["configuration"]
            sections = json.loads(config["value"])
            sections.pop("audit")
            config["value"] = json.dumps(sections, separators=(",", ":"))
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        require_mark(route, "routing,authz,ratelimit,consent")
    return listener


def native_up_to(listener: dict, stage: str) -> dict:
    """The native module's listener running the stages up to `stage` only (its configuration's
    sections up to it, the routes' mark of those stages): the native per-stage figures."""
    stages = [f.removeprefix("fhirgate.") for f in FILTERS]
    kept = stages[:stages.index(stage) + 1]
    hcm = hcm_of(listener)
    for f in hcm["http_filters"]:
        if f["name"] == "fhirgate":
            config = f["typed_config"]["filter_config"]
            sections = json.loads(config["value"])
            config["value"] = json.dumps({k: v for k, v in sections.items() if k in kept}, separators=(",", ":"))
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        require_mark(route, ",".join(kept))
    return listener


def gateway(chain: dict, listeners: list[dict], admin: int) -> str:
    config = json.loads(json.dumps(chain))
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    config["static_resources"]["listeners"] = listeners
    return yaml.safe_dump(config)


def h2load(port: int, paths: list[str], n: int, token: str | None, log: pathlib.Path | None = None, connections: int = CONNECTIONS) -> dict:
    uris = log.with_suffix(".uris") if log else pathlib.Path(f"/tmp/fhirgate-bench-{port}.uris")
    uris.write_text("".join(f"http://127.0.0.1:{port}{p}\n" for p in paths))
    args = ["h2load", "--h1", "-n", str(n), "-c", str(connections), "-m", "1", "-i", str(uris)]
    if token:
        args += ["-H", f"authorization: Bearer {token}"]
    if log:
        args += ["--log-file", str(log)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=900, check=True).stdout
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if int(codes.group(1)) != n:
        raise RuntimeError(f"h2load to {port}: not every request got a 2xx:\n{out}")
    result = {"rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))}
    if log:
        result["p50_us"] = statistics.median(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line)
    return result


def rss_mib(pid: int) -> float:
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")) / 1024


def start(name: str, config_text: str, work: pathlib.Path, admin: int, concurrency: int = 1, under_callgrind: bool = False) -> Process:
    path = work / f"{name}.yaml"
    path.write_text(config_text)
    argv = [binary("envoy"), "-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart", "-l", "warning"]
    if under_callgrind:
        [envoy_bin] = (ROOT / ".venv").glob("lib/python*/site-packages/envoy/_bin/envoy")
        argv = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", f"--callgrind-out-file={work / 'callgrind.out'}", str(envoy_bin), *argv[1:]]
    proc = Process(name, argv, work / f"{name}.log")
    wait_until(name, lambda: http_get(admin, "/ready", timeout=10)[0] == 200, timeout=300, process=proc)
    return proc


STEPS = [("baseline", [])] + [(f.removeprefix("fhirgate."), FILTERS[:i + 1]) for i, f in enumerate(FILTERS)]
STEP_REQUESTS = 4000


def cpu_by_step(chain: dict, work: pathlib.Path, token: str) -> dict:
    """CPU per request as the chain is built up one filter at a time: one Envoy with a
    listener per step, the steps in turn, 3 rounds, the least of each (the other work on the
    machine only ever adds). Independent of callgrind, which does not see all of Envoy's work
    (the log callback's, see bench/results.md)."""
    ports = {name: free_port() for name, _ in STEPS}
    admin = free_port()
    proc = start("chain-steps", gateway(chain, [variant(chain, name, ports[name], filters) for name, filters in STEPS], admin), work, admin)
    try:
        for name, filters in STEPS:
            h2load(ports[name], MIX, 1000, token if filters else None)
        cpu = {name: [] for name, _ in STEPS}
        for _ in range(3):
            for name, filters in STEPS:
                before = cpu_ns(proc.proc.pid)
                h2load(ports[name], MIX, STEP_REQUESTS, token if filters else None)
                cpu[name].append((cpu_ns(proc.proc.pid) - before) / 1000 / STEP_REQUESTS)
    finally:
        proc.stop()
    least = {name: min(v) for name, v in cpu.items()}
    for name, _ in STEPS:
        print(f"{name:10} {least[name]:7.1f} µs CPU/request (least of 3)", flush=True)
    return least


def callgrind(chain: dict, fused: dict, native: dict, work: pathlib.Path, tokens: dict) -> dict:
    """Instructions per request: the five-filter chain built up one filter at a time, the fused
    chain, then the fused chain with 16 and 64 scopes, then with CACHED_PATIENTS patients'
    Consents cached. Every filter is the one module, so valgrind's address space holds its VMs
    (one per thread) where ten different modules' did not fit."""
    ports = {name: free_port() for name, _ in STEPS}
    ports["fused"] = free_port()
    admin = free_port()
    listeners = [variant(chain, name, ports[name], filters) for name, filters in STEPS]
    listeners.append(variant(fused, "fused", ports["fused"], ["fhirgate"]))
    ports["native"] = free_port()  # the same pipeline as the native module, in the same Envoy
    listeners.append(variant(native, "native", ports["native"], ["fhirgate"]))
    # The native module built up a stage at a time (its last step is `native`).
    native_steps = [f"native-{f.removeprefix('fhirgate.')}" for f in FILTERS[:-1]]
    for name in native_steps:
        ports[name] = free_port()
        listeners.append(native_up_to(variant(native, name, ports[name], ["fhirgate"]), name.removeprefix("native-")))
    # The fused module without its audit stage: comparable with the five-filter chain's
    # routing-to-consent figure (and with earlier runs, which could not load the audit VM).
    ports["fused-to-consent"] = free_port()
    listeners.append(without_audit(variant(fused, "fused-to-consent", ports["fused-to-consent"], ["fhirgate"])))
    proc = start("chain-callgrind", gateway(chain, listeners, admin), work, admin, under_callgrind=True)
    pid = str(proc.proc.pid)
    counts = {}
    runs = [(name, ports[name], MIX, tokens[4] if filters else None) for name, filters in STEPS]
    runs += [("fused", ports["fused"], MIX, tokens[4]), ("fused-to-consent", ports["fused-to-consent"], MIX, tokens[4]),
             ("native", ports["native"], MIX, tokens[4])]
    runs += [(name, ports[name], MIX, tokens[4]) for name in native_steps]
    runs += [(f"scopes-{n}", ports["fused"], MIX, tokens[n]) for n in (16, 64)]
    runs += [("patient-1-cached", ports["fused"], ["/fhir/r4/Patient/p0"], tokens[4])]
    try:
        for _, port, paths, token in runs:  # warm-up: V8 tiers, token and Consent caches
            h2load(port, paths, 300, token, connections=1)
        all_vms_created(work / "chain-callgrind.log")
        dumps = 0

        def measure(name, port, paths, token):
            nonlocal dumps
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)
            h2load(port, paths, CALLGRIND_REQUESTS, token, connections=1)
            subprocess.run(["callgrind_control", "-d", name, pid], capture_output=True, check=True)
            dumps += 1
            dump = pathlib.Path(f"{work / 'callgrind.out'}.{dumps}")
            counts[name] = int(re.search(r"^summary:\s+(\d+)", dump.read_text(), re.M).group(1)) / CALLGRIND_REQUESTS
            print(f"{name:18} {counts[name]:10.0f} instructions/request", flush=True)

        for run in runs:
            measure(*run)
        # Fill the Consent cache with CACHED_PATIENTS patients, then read the first one again.
        h2load(ports["fused"], [f"/fhir/r4/Patient/p{i}" for i in range(CACHED_PATIENTS)], CACHED_PATIENTS, tokens[4], connections=1)
        measure(f"patient-{CACHED_PATIENTS}-cached", ports["fused"], ["/fhir/r4/Patient/p0"], tokens[4])
    finally:
        proc.stop()
    return counts


DEPLOYMENTS = {"baseline": [], "fused": ["fhirgate"], "five-filter": FILTERS, "native": ["fhirgate"]}


def host_calls() -> list[dict]:
    """Host calls per request (each a crossing of the VM boundary, log lines included), counted
    exactly on the mock host the gateway's native tests use: it sees the calls the Wasm build
    makes, stage by stage (each stage alone as its own filter) and fused."""
    out = subprocess.run(["cargo", "test", "-q", "--release", "-p", "fhirgate-gateway", "--lib", "--",
                          "--ignored", "--nocapture", "prints_host_calls_per_request_by_stage"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("HOST_CALLS ")]


def main() -> int:
    ensure("h2load", "nghttp2-client")
    ensure("valgrind", "valgrind")
    work = ROOT / "build" / "bench-chain"
    work.mkdir(parents=True, exist_ok=True)
    tokens_dir = work / "tokens"
    tokens_dir.mkdir(exist_ok=True)
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "fhirgate-core", "--example", "verify_bench"], cwd=ROOT, check=True)
    subprocess.run([str(ROOT / "target" / "release" / "examples" / "verify_bench"), "prepare", str(tokens_dir)], check=True, capture_output=True)
    tokens = {n: (tokens_dir / f"token-scopes-{n}").read_text() for n in (4, 16, 64)}
    calls = host_calls()
    ports = {k: free_port() for k in ("ORIGIN", "ORIGIN_ADMIN", "CHAIN", "CHAIN_ADMIN")}
    chain = render_chain(work, ports, tokens_dir, "five-filter")
    fused = render_chain(work, ports, tokens_dir, "fused")
    native = render_chain(work, ports, tokens_dir, "native")
    processes = []
    try:
        processes.append(start("origin", origin_config(ports["ORIGIN"], ports["ORIGIN_ADMIN"]), work, ports["ORIGIN_ADMIN"], concurrency=2))
        gateways = {}
        for g, filters in DEPLOYMENTS.items():
            port, admin = free_port(), free_port()
            source = {"fused": fused, "native": native}.get(g, chain)
            proc = start(g, gateway(source, [variant(source, g, port, filters)], admin), work, admin)
            processes.append(proc)
            gateways[g] = (proc, port, tokens[4] if filters else None)
        for _, port, token in gateways.values():  # warm-up
            h2load(port, MIX, 5000, token)
        results = {g: [] for g in gateways}
        for r in range(ROUNDS):
            for g, (proc, port, token) in gateways.items():
                before = cpu_ns(proc.proc.pid)
                run = h2load(port, MIX, REQUESTS, token, log=work / f"{g}-{r}.log")
                run["cpu_us"] = (cpu_ns(proc.proc.pid) - before) / 1000 / REQUESTS
                results[g].append(run)
                print(f"{g:11} {run['rps']:8.0f} req/s  {run['cpu_us']:6.1f} µs CPU/req  p50 {run['p50_us']:6.0f} µs", flush=True)
        rss = {g: rss_mib(proc.proc.pid) for g, (proc, _, _) in gateways.items()}
        port, admin = free_port(), free_port()
        two = start("fused-2-workers", gateway(fused, [variant(fused, "fused2", port, ["fhirgate"])], admin), work, admin, concurrency=2)
        processes.append(two)
        h2load(port, MIX, 5000, tokens[4])
        rss["fused-2-workers"] = rss_mib(two.proc.pid)
        for p in reversed(processes[1:]):  # the gateways make way for the steps' Envoy
            p.stop()
        del processes[1:]
        step_cpu = cpu_by_step(chain, work, tokens[4])
    finally:
        for p in reversed(processes[1:]):
            p.stop()
    try:
        print("Envoy under callgrind ...", flush=True)
        ir = callgrind(chain, fused, native, work, tokens)
    finally:
        processes[0].stop()

    med = {g: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for g, runs in results.items()}
    measured = ("fused", "five-filter", "native")
    added = {g: med[g]["cpu_us"] - med["baseline"]["cpu_us"] for g in measured}
    ratio = {g: med[g]["rps"] / med["baseline"]["rps"] for g in measured}
    added_p50 = {g: med[g]["p50_us"] - med["baseline"]["p50_us"] for g in measured}
    added_rss = {g: rss[g] - rss["baseline"] for g in measured}
    per_worker = rss["fused-2-workers"] - rss["fused"]
    us_per_ir = med["baseline"]["cpu_us"] / ir["baseline"]
    ir_added = {"fused": ir["fused"] - ir["baseline"], "five-filter": ir["audit"] - ir["baseline"], "native": ir["native"] - ir["baseline"]}
    steps = ["routing", "authz", "ratelimit", "consent", "audit"]
    previous = ["baseline", *steps[:-1]]
    verdict = lambda ok: "**meets**" if ok else "**misses**"
    native_ir = {s: ir["native" if s == "audit" else f"native-{s}"] for s in steps}
    native_ir["baseline"] = ir["baseline"]
    rows = "\n".join(f"| {s} | {ir[s] - ir[p]:.0f} | {(ir[s] - ir[p]) * us_per_ir:.1f} µs | {step_cpu[s] - step_cpu[p]:+.1f} µs "
                     f"| {native_ir[s] - native_ir[p]:.0f} ({(native_ir[s] - native_ir[p]) * us_per_ir:.1f} µs) |"
                     for s, p in zip(steps, previous))
    scopes64 = ir["scopes-64"] / ir["fused"] - 1
    report = f"""# Whole-chain benchmark

Written by `make bench` (`tools/bench_chain.py`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC).

Machine: {machine()}.

## Method

{__doc__.split(chr(10), 3)[3].strip()}

Each gateway and the origin are separate processes; the gateways' CPU figures exclude the
origin and h2load, which share the machine's two cores with them (so throughput and latency
are those of a loaded 2-core machine; the CPU-time and instruction figures are per request).
Request mix ({len(MIX)} requests, cycled): {", ".join(f"`{p}`" for p in MIX)}. {REQUESTS} requests per
round, {ROUNDS} rounds after a warm-up, medians. Tokens are verified once and then cached.

## Results

| | Envoy, no filters | fused (one filter) | five filters (one module) | native module (fused) | target |
|---|---|---|---|---|---|
| CPU per request (schedstat) | {med['baseline']['cpu_us']:.1f} µs | {med['fused']['cpu_us']:.1f} µs (**+{added['fused']:.1f}**) | {med['five-filter']['cpu_us']:.1f} µs (**+{added['five-filter']:.1f}**) | {med['native']['cpu_us']:.1f} µs (**+{added['native']:.1f}**) | fused ≤ +{TARGETS['fused_cpu_us']} µs: {verdict(added['fused'] <= TARGETS['fused_cpu_us'])}; five ≤ +{TARGETS['five_cpu_us']} µs: {verdict(added['five-filter'] <= TARGETS['five_cpu_us'])}; native ≤ +{TARGETS['native_cpu_us']} µs: {verdict(added['native'] <= TARGETS['native_cpu_us'])} |
| instructions per request (callgrind) | {ir['baseline']:.0f} | {ir['fused']:.0f} (**+{ir_added['fused']:.0f}**, ≈ {ir_added['fused'] * us_per_ir:.1f} µs) | {ir['audit']:.0f} (**+{ir_added['five-filter']:.0f}**, ≈ {ir_added['five-filter'] * us_per_ir:.1f} µs) | {ir['native']:.0f} (**+{ir_added['native']:.0f}**, ≈ {ir_added['native'] * us_per_ir:.1f} µs) | |
| throughput | {med['baseline']['rps']:.0f} req/s | {med['fused']['rps']:.0f} req/s (ratio **{ratio['fused']:.2f}**) | {med['five-filter']['rps']:.0f} req/s (ratio **{ratio['five-filter']:.2f}**) | {med['native']['rps']:.0f} req/s (ratio **{ratio['native']:.2f}**) | fused ≥ {TARGETS['min']}: {verdict(ratio['fused'] >= TARGETS['min'])}; native ≥ {TARGETS['native_min']}: {verdict(ratio['native'] >= TARGETS['native_min'])} |
| p50 latency (h2load, {CONNECTIONS} connections) | {med['baseline']['p50_us']:.0f} µs | {med['fused']['p50_us']:.0f} µs (+{added_p50['fused']:.0f}) | {med['five-filter']['p50_us']:.0f} µs (+{added_p50['five-filter']:.0f}) | {med['native']['p50_us']:.0f} µs (+{added_p50['native']:.0f}) | |
| RSS, one worker | {rss['baseline']:.1f} MiB | {rss['fused']:.1f} MiB (**+{added_rss['fused']:.1f}**) | {rss['five-filter']:.1f} MiB (+{added_rss['five-filter']:.1f}) | {rss['native']:.1f} MiB (**+{added_rss['native']:.1f}**) | fused ≤ +{TARGETS['rss_mib']} MiB: {verdict(added_rss['fused'] <= TARGETS['rss_mib'])}; native ≤ +{TARGETS['native_rss_mib']} MiB: {verdict(added_rss['native'] <= TARGETS['native_rss_mib'])} |
| RSS, each further worker (2 workers − 1) | | {rss['fused-2-workers']:.1f} MiB (2 workers): **+{per_worker:.1f} MiB** | | | |

### Where the time goes, stage by stage (Wasm: the five-filter chain built up one filter at a time; native: the native module built up one stage at a time)

| stage added | Wasm: instructions per request (callgrind) | ≈ time | CPU per request (schedstat) | native: instructions per request (≈ time) |
|---|---|---|---|---|
{rows}
| **all five** | **{ir_added['five-filter']:.0f}** | **{ir_added['five-filter'] * us_per_ir:.1f} µs** | **{step_cpu['audit'] - step_cpu['baseline']:+.1f} µs** | **{ir_added['native']:.0f} ({ir_added['native'] * us_per_ir:.1f} µs)** |
| **fused, all five** | **{ir_added['fused']:.0f}** | **{ir_added['fused'] * us_per_ir:.1f} µs** | | |
| routing to consent: five filters / fused | {ir['consent'] - ir['baseline']:.0f} / {ir['fused-to-consent'] - ir['baseline']:.0f} | {(ir['consent'] - ir['baseline']) * us_per_ir:.1f} / {(ir['fused-to-consent'] - ir['baseline']) * us_per_ir:.1f} µs | |

The last column comes from one Envoy (one worker) with a listener per step, {STEP_REQUESTS} requests of
the mix per step and round, 3 rounds, the least CPU per request of each step: it sees all of
Envoy's work, the log callback's included, but moves by several µs with the machine's load.
Instructions are turned into time with the baseline gateway's own ratio ({us_per_ir * 1000:.3f} ns per
instruction). Every filter is the one module, so all of them run in one VM per worker (five
different modules used to need ten VMs, which did not fit under valgrind).

### Host calls per request (exact, counted on the mock host)

| request | routing | authz | ratelimit | consent | audit | five filters | fused |
|---|---|---|---|---|---|---|---|
{chr(10).join(f"| {c['request']} | " + " | ".join(str(c['by_stage'][s]) for s in steps) + f" | {c['five_filter']} | **{c['fused']}** |" for c in calls)}

Each is a call into Envoy from the VM (headers, properties, bodies, metrics, log lines, calls
dispatched) for a whole cached-token request: head, answer, log. Envoy's own callbacks into the
VM are not counted.

### Flat in the number of scopes and cached Consents (callgrind, fused)

| | instructions per request |
|---|---|
| token with 4 scopes | {ir['fused']:.0f} |
| token with 16 scopes | {ir['scopes-16']:.0f} ({(ir['scopes-16'] / ir['fused'] - 1):+.1%}) |
| token with 64 scopes (the granting ones last) | {ir['scopes-64']:.0f} ({scopes64:+.1%}; target ≤ +5%: {verdict(scopes64 <= 0.05)}) |
| Patient read, 1 patient's Consents cached | {ir['patient-1-cached']:.0f} |
| Patient read, {CACHED_PATIENTS} patients' Consents cached | {ir[f'patient-{CACHED_PATIENTS}-cached']:.0f} ({(ir[f'patient-{CACHED_PATIENTS}-cached'] / ir['patient-1-cached'] - 1):+.1%}) |

Every round (fused / five filters / native / baseline): {"; ".join(f"{f['cpu_us']:.1f}/{c['cpu_us']:.1f}/{n['cpu_us']:.1f}/{b['cpu_us']:.1f} µs, {f['rps']:.0f}/{c['rps']:.0f}/{n['rps']:.0f}/{b['rps']:.0f} rps" for f, c, n, b in zip(results['fused'], results['five-filter'], results['native'], results['baseline']))}
"""
    out = ROOT / "bench" / "chain.md"
    out.write_text(report)
    # The figures other tools read (bench.py's writer: one line per figure, replaced by name).
    sys.path.insert(0, str(ROOT / "tools"))
    from bench import write_deployments, write_summary
    write_summary({
        "chain.added_instructions": (ir_added["fused"], "instructions", "fused pipeline per request, cached token, user/ scopes (callgrind)"),
        "chain.five_filter.added_instructions": (ir_added["five-filter"], "instructions", "five filters of the one module per request (callgrind)"),
        "chain.fused_to_consent.added_instructions": (ir["fused-to-consent"] - ir["baseline"], "instructions",
                                                      "fused routing to consent (no audit) per request, cached token (callgrind)"),
        "chain.added_cpu_us": (added["fused"], "µs", "fused pipeline minus Envoy alone, CPU per request (schedstat, median of rounds)"),
        "chain.throughput_ratio": (ratio["fused"], "ratio", "fused / Envoy alone, requests per second"),
        "chain.p50_added_us": (added_p50["fused"], "µs", "p50 latency, fused minus Envoy alone, 8 connections"),
        **{f"chain.host_calls.{c['request']}.fused": (c["fused"], "calls", "host calls per cached-token request, fused (mock host)")
           for c in calls},
        **{f"chain.host_calls.{c['request']}.five_filter": (c["five_filter"], "calls", "host calls per cached-token request, five filters (mock host)")
           for c in calls},
    })
    write_deployments({g: {"added_cpu_us": round(added.get(g, 0.0), 1), "throughput_ratio": round(ratio.get(g, 1.0), 3),
                           "rss_one_worker_mib": round(rss[g] - (rss["baseline"] if g != "baseline" else 0), 1)}
                       for g in ("baseline", "fused", "five-filter", "native")})
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
