#!/usr/bin/env python3
"""`make bench`: what the fhirgate filters cost, measured side by side in one run.

One Envoy process (`--concurrency 1`, V8) serves three proxies to the same in-process origin:
`baseline` (router only), `floor` (a Wasm filter doing the least a routing filter can) and
`routing` (fhirgate.routing + router). h2load sends the same fixed number of requests (a mix
of FHIR reads and searches, HTTP/1.1, loopback) to each, in alternating rounds; CPU per
request is Envoy's CPU time (every thread's schedstat) over the round / requests, medians over
the rounds. Then the same configuration runs under callgrind, whose per-request instruction counts do
not depend on what else the machine is doing, and callgrind counts the core's `route()`
natively. Writes bench/results.md.
"""
import base64
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from stack import WASM_DIR, Process, binary, free_port, http_get, render_envoy, wait_until  # noqa: E402

BENCH = ROOT / "tools" / "bench"
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "30000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONNECTIONS = 8
CALLGRIND_ITERATIONS = 2000
CALLGRIND_REQUESTS = 1000
TARGETS = ("baseline", "floor", "routing", "chain")
# First-sight verification: the chain with the token cache off, one token per algorithm.
NOCACHE_ALGS = ("RS256", "ES256", "EdDSA")
NOCACHE_REQUESTS = 100


def ensure(tool: str, package: str):
    if shutil.which(tool):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-q"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", package], check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def cpu_ns(pid: int) -> int:
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def h2load(port: int, uris: pathlib.Path, n: int, connections: int = CONNECTIONS, token: str | None = None) -> dict:
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    out = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(connections), "-m", "1", "-i", str(uris), *auth],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
    if int(done.group(3)) != n or int(codes.group(1)) != n:
        raise RuntimeError(f"h2load: not every request succeeded with 2xx:\n{out}")
    return {"rps": rps, "mean_latency_us": to_us(mean)}


def to_us(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def all_vms_created(log: pathlib.Path):
    """Valgrind gives a process less address space than V8 reserves for ten Wasm VMs: past that
    Envoy cannot create a worker's VM and skips that filter, so counts would silently leave a
    filter out. Refuse them instead."""
    if "Failed to create new Wasm instance" in log.read_text(errors="replace"):
        raise RuntimeError(f"{log}: a Wasm VM could not be created under valgrind; measure fewer modules at once")


def listeners_only(config: pathlib.Path, keep: set, out: pathlib.Path) -> pathlib.Path:
    """The benchmark config with only these listeners (and so only their modules' VMs)."""
    import yaml  # PyYAML, in the project's virtualenv
    data = yaml.safe_load(config.read_text())
    data["static_resources"]["listeners"] = [l for l in data["static_resources"]["listeners"] if l["name"] in keep]
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def envoy_callgrind(config: pathlib.Path, ports: dict, runs: list, work: pathlib.Path, name: str) -> dict:
    """Instructions per request for each run (name, port, uris, token, requests), Envoy under
    callgrind, counters zeroed before and dumped after each run's requests (after a warm-up
    that lets V8 tier up)."""
    # valgrind must run the Envoy binary itself, not the wheel's Python launcher.
    [envoy_bin] = (ROOT / ".venv").glob("lib/python*/site-packages/envoy/_bin/envoy")
    out = work / f"{name}.out"
    log = work / f"{name}.log"
    proc = Process(name, ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", f"--callgrind-out-file={out}",
                          envoy_bin, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"], log)
    counts = {}
    try:
        wait_until("Envoy under callgrind", lambda: http_get(ports["ADMIN_PORT"], "/ready", timeout=10)[0] == 200,
                   timeout=300, process=proc)
        for _, port, uris, token, _ in runs:
            h2load(port, uris, 300, connections=1, token=token)
        all_vms_created(log)
        pid = str(proc.proc.pid)
        for i, (run, port, uris, token, n) in enumerate(runs, 1):
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)
            h2load(port, uris, n, connections=1, token=token)
            subprocess.run(["callgrind_control", "-d", run, pid], capture_output=True, check=True)
            dump = pathlib.Path(f"{out}.{i}")
            total = int(re.search(r"^summary:\s+(\d+)", dump.read_text(), re.M).group(1))
            counts[run] = total / n
            print(f"{run:14} {counts[run]:11.0f} instructions/request", flush=True)
    finally:
        proc.stop()
    return counts


def callgrind_instructions() -> tuple[float, int]:
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "fhirgate-core", "--example", "route_bench"], cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "route_bench"
    uris = [l for l in (BENCH / "uris.txt").read_text().splitlines() if l]
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for iterations in (0, CALLGRIND_ITERATIONS):
            out = pathlib.Path(tmp) / f"cg.{iterations}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(exe),
                            str(ROOT / "envoy" / "routing.json"), str(BENCH / "uris.txt"), str(iterations)],
                           capture_output=True, check=True)
            totals.append(int(re.search(r"^summary:\s+(\d+)", out.read_text(), re.M).group(1)))
    calls = CALLGRIND_ITERATIONS * len(uris)
    return (totals[1] - totals[0]) / calls, calls


def consent_inputs(work: pathlib.Path) -> dict:
    """A realistic search answer: the HL7 R4 example Observations as a searchset, every eighth
    labelled restricted (R); a cached privacy Consent for each patient they name (one that
    does not apply to the bench's purpose); and one small Patient with nothing to withhold."""
    examples = ROOT / ".tools" / "node_modules" / "hl7.fhir.r4.examples"
    observations = [json.loads(p.read_text()) for p in sorted(examples.glob("Observation-*.json"))]
    observations = [o for o in observations if o.get("resourceType") == "Observation"]
    for i, o in enumerate(observations):
        if i % 8 == 0:
            o.setdefault("meta", {})["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(observations),
              "link": [{"relation": "self", "url": "http://bench/fhir/r4/Observation"}],
              "entry": [{"fullUrl": f"http://bench/fhir/r4/Observation/{o['id']}", "resource": o, "search": {"mode": "match"}} for o in observations]}
    patients = {r.split("Patient/")[1] for o in observations for r in [o.get("subject", {}).get("reference", "")] if "Patient/" in r}
    consents = {p: [{"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
                     "patient": {"reference": f"Patient/{p}"},
                     "provision": {"type": "permit", "provision": [{"type": "deny", "purpose": [{"code": "HMARKT"}]}]}}] for p in patients}
    patient = json.loads((examples / "Patient-example.json").read_text())
    files = {"bundle": work / "consent-bundle.json", "plain": work / "consent-plain.json", "single": work / "consent-patient.json",
             "consents": work / "consents.json"}
    files["bundle"].write_text(json.dumps(bundle))
    # The same search with no labels (and without the one contained Patient, whose id the
    # byte scan cannot place), no patient with a privacy Consent: what most answers look like.
    for e in bundle["entry"]:
        e["resource"].get("meta", {}).pop("security", None)
        e["resource"].pop("contained", None)
    files["plain"].write_text(json.dumps(bundle, ensure_ascii=False))
    files["single"].write_text(json.dumps(patient))
    files["consents"].write_text(json.dumps(consents))
    return files


def consent_instructions(work: pathlib.Path) -> dict:
    """Native instructions per response of the consent filter's core (parse, decide, write
    back), setup subtracted: {"bundle": (instructions, bytes), "single": (instructions, bytes)}."""
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "fhirgate-core", "--example", "consent_bench"], cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "consent_bench"
    files = consent_inputs(work)
    result = {}
    no_consents = work / "no-consents.json"
    no_consents.write_text("{}")
    for kind in ("bundle", "plain", "single"):
        totals = []
        n = 20 if kind == "bundle" else 200
        for count in (0, n):
            out = work / f"cg.consent.{kind}.{count}"
            consents = files["consents"] if kind == "bundle" else no_consents
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(exe), str(ROOT / "envoy" / "consent.json"),
                            str(files[kind]), str(consents), str(count)], capture_output=True, check=True)
            totals.append(int(re.search(r"^summary:\s+(\d+)", out.read_text(), re.M).group(1)))
        result[kind] = ((totals[1] - totals[0]) / n, files[kind].stat().st_size)
    result["entries"] = len(json.loads(files["bundle"].read_text())["entry"])
    return result


def confine_instructions(work: pathlib.Path, entries: int = 50, n: int = 50) -> dict:
    """Native instructions per response of the authorization filter's check under patient/
    scopes (issue 14: parse the held body, verify it resource by resource), setup subtracted:
    a searchset of `entries` HL7 example Observations, all the launch patient's. Returns
    {"verify": instructions, "parse": instructions of the parse alone, "bytes", "entries"}."""
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "fhirgate-core", "--example", "confine_bench"], cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "confine_bench"
    examples = ROOT / ".tools" / "node_modules" / "hl7.fhir.r4.examples"
    observations = [json.loads(p.read_text()) for p in sorted(examples.glob("Observation-*.json"))]
    observations = [o for o in observations if o.get("resourceType") == "Observation"]
    chosen = []
    while len(chosen) < entries:  # repeat the examples until there are enough
        for o in observations[: entries - len(chosen)]:
            o = json.loads(json.dumps(o))
            o.pop("contained", None)
            o["id"] = f"{o['id']}-{len(chosen)}"
            o["subject"] = {"reference": "Patient/example"}
            # The examples' performers and authors include patients of their own: keep the
            # practitioners and organisations only, so the whole page is releasable.
            o["performer"] = [r for r in o.get("performer", []) if "Patient/" not in r.get("reference", "")]
            o.pop("focus", None)
            o.pop("hasMember", None)
            o.pop("derivedFrom", None)
            chosen.append(o)
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(chosen),
              "link": [{"relation": "self", "url": "http://bench/fhir/r4/Observation?patient=example"}],
              "entry": [{"fullUrl": f"http://bench/fhir/r4/Observation/{o['id']}", "resource": o, "search": {"mode": "match"}} for o in chosen]}
    path = work / "confine-bundle.json"
    path.write_text(json.dumps(bundle))
    result = {"bytes": path.stat().st_size, "entries": len(chosen)}
    for mode in ("verify", "parse"):
        totals = []
        for count in (0, n):
            out = work / f"cg.confine.{mode}.{count}"
            args = [str(exe), str(path), "example", str(count)] + (["parse"] if mode == "parse" else [])
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args], capture_output=True, check=True)
            totals.append(int(re.search(r"^summary:\s+(\d+)", out.read_text(), re.M).group(1)))
        result[mode] = (totals[1] - totals[0]) / n
    return result


def write_summary(figures: dict):
    """bench/summary.jsonl: one JSON line per figure, replaced by name, for other tools."""
    out = ROOT / "bench" / "summary.jsonl"
    lines = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                lines[record.get("name") or "deployment:" + record["deployment"]] = record
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}"
    for name, (value, unit, what) in figures.items():
        lines[name] = {"name": name, "value": round(value, 3), "unit": unit, "what": what, "measured": stamp}
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines.values()))


def write_deployments(rows: dict):
    """bench/summary.jsonl's deployment lines: one per deployment measured in this run,
    `{"deployment": "none"|"fused"|"five-filter"|"native", "added_cpu_us", "throughput_ratio",
    "rss_one_worker_mib", "date", "commit"}` (RSS added over Envoy alone; Envoy alone's own),
    replacing the previous run's."""
    out = ROOT / "bench" / "summary.jsonl"
    kept = [l for l in out.read_text().splitlines() if l.strip() and "deployment" not in json.loads(l)] if out.exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}"
    lines = [json.dumps({"deployment": "none" if name == "baseline" else name, **figures, "date": stamp, "commit": commit})
             for name, figures in rows.items()]
    out.write_text("".join(l + "\n" for l in kept + lines))


def audit_instructions(n: int = 1000) -> float:
    """Native instructions per record of the audit core (build, seal into the HMAC chain,
    serialise), setup subtracted."""
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "fhirgate-core", "--example", "audit_bench"], cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "audit_bench"
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (0, n):
            out = pathlib.Path(tmp) / f"cg.{count}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(exe), str(count)], capture_output=True, check=True)
            totals.append(int(re.search(r"^summary:\s+(\d+)", out.read_text(), re.M).group(1)))
    return (totals[1] - totals[0]) / n


def verify_instructions(exe: pathlib.Path, tokens_dir: pathlib.Path, alg: str, n: int = 20) -> float:
    """Native instructions of one first-sight verification (callgrind, setup subtracted)."""
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (0, n):
            out = pathlib.Path(tmp) / f"cg.{count}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(exe), "verify", str(tokens_dir), alg, str(count)],
                           capture_output=True, check=True)
            totals.append(int(re.search(r"^summary:\s+(\d+)", out.read_text(), re.M).group(1)))
    return (totals[1] - totals[0]) / n


def machine() -> str:
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    envoy = subprocess.run([binary("envoy"), "--version"], capture_output=True, text=True).stdout.strip().split()[-1]
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}, Envoy {envoy}"


def main() -> int:
    ensure("h2load", "nghttp2-client")
    ensure("valgrind", "valgrind")
    subprocess.run([str(ROOT / "tools" / "build-wasm.sh")], check=True,
                   env=dict(os.environ, FHIRGATE_EXTRA_FILTERS="fhirgate-bench-floor"))
    work = ROOT / "build" / "bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ports = {k: free_port() for k in ("ADMIN_PORT", "BASELINE_PORT", "FLOOR_PORT", "ROUTING_PORT", "CHAIN_PORT", "NOCACHE_PORT",
                                      "FASTPATH_PORT", "ORIGIN_PORT", "RATELIMITED_PORT",
                                      "AUDITED_PORT", "FAILCLOSED_PORT")}
    tokens_dir = work / "tokens"
    tokens_dir.mkdir()
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "fhirgate-core", "--example", "verify_bench"], cwd=ROOT, check=True)
    verify_bench = ROOT / "target" / "release" / "examples" / "verify_bench"
    subprocess.run([str(verify_bench), "prepare", str(tokens_dir)], check=True, capture_output=True)
    tokens = {alg: (tokens_dir / f"token-{alg}").read_text() for alg in NOCACHE_ALGS}
    authz = json.loads((ROOT / "envoy" / "authz.json").read_text())
    authz["routing"] = json.loads((ROOT / "envoy" / "routing.json").read_text())
    authz["issuers"] = [{"issuer": "https://bench.fhirgate.invalid", "audiences": ["bench"], "algorithms": list(NOCACHE_ALGS),
                         "jwks": json.loads((tokens_dir / "jwks.json").read_text())}]
    sys.path.insert(0, str(ROOT / "envoy"))
    import render  # noqa: E402  the same jwt_authn block `render.py --jwt-authn` ships
    configs = {"AUTHZ_CONFIG": json.dumps(authz, separators=(",", ":")),
               "AUTHZ_NOCACHE_CONFIG": json.dumps({**authz, "tokenCacheSize": 0}, separators=(",", ":")),
               "AUTHZ_FASTPATH_CONFIG": json.dumps({**authz, "jwtAuthn": {"payloadHeader": render.JWT_PAYLOAD_HEADER}}, separators=(",", ":")),
               "JWT_AUTHN_FILTER": json.dumps(render.jwt_authn_filter(authz["issuers"])),
               # Every request takes from a bucket (the shipped config with tiers no run exhausts).
               "RATELIMIT_CONFIG": json.dumps({**json.loads((ROOT / "envoy" / "ratelimit.json").read_text()),
                                               "tiers": {c: {"limit": 1000000000, "windowSeconds": 60} for c in ("read", "search", "bulk")}},
                                              separators=(",", ":"))}
    # The audit filter with its collector in this same Envoy (the origin answers 200 to the batches).
    audit = {**json.loads((ROOT / "envoy" / "audit.json").read_text()), "log": False,
             "chain": {"kid": "bench", "key": base64.b64encode(os.urandom(32)).decode()}}
    audit["collector"] = {**audit["collector"], "cluster": "origin"}
    configs["AUDIT_CONFIG"] = json.dumps(audit, separators=(",", ":"))
    configs["AUDIT_FC_CONFIG"] = json.dumps({**audit, "failClosed": {"timeoutMs": 2000}}, separators=(",", ":"))
    config = render_envoy(work / "envoy.yaml", {**ports, **configs, "WASM_DIR": WASM_DIR}, BENCH / "envoy.yaml", deployment="five-filter")
    paths = [l for l in (BENCH / "uris.txt").read_text().splitlines() if l]
    uri_files = {}
    for target in (*TARGETS, "nocache", "fastpath", "ratelimited", "audited", "failclosed"):
        port = ports[f"{target.upper()}_PORT"]
        uri_files[target] = work / f"uris-{target}.txt"
        uri_files[target].write_text("".join(f"http://127.0.0.1:{port}{p}\n" for p in paths))

    envoy = Process("envoy", [binary("envoy"), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
                    work / "envoy.log")
    results = {t: [] for t in TARGETS}
    try:
        wait_until("Envoy", lambda: http_get(ports["ADMIN_PORT"], "/ready")[0] == 200, timeout=60, process=envoy)
        token_of = lambda t: tokens["RS256"] if t == "chain" else None
        for target in results:  # warm-up: connections, V8 tiers, caches
            h2load(ports[f"{target.upper()}_PORT"], uri_files[target], 5000, token=token_of(target))
        for _ in range(ROUNDS):
            for target in results:
                before = cpu_ns(envoy.proc.pid)
                run = h2load(ports[f"{target.upper()}_PORT"], uri_files[target], REQUESTS, token=token_of(target))
                run["cpu_us_per_request"] = (cpu_ns(envoy.proc.pid) - before) / 1000 / REQUESTS
                results[target].append(run)
                print(f"{target:9} {run['rps']:9.0f} req/s  {run['cpu_us_per_request']:6.2f} µs CPU/req  "
                      f"{run['mean_latency_us']:7.1f} µs mean latency", flush=True)
        # The audit filter's fail-closed mode: each request waits for the collector's ack.
        audit_latency = {"audited": [], "failclosed": []}
        for t in audit_latency:
            h2load(ports[f"{t.upper()}_PORT"], uri_files[t], 1000, connections=1, token=tokens["RS256"])
        for _ in range(ROUNDS):
            for t in audit_latency:
                audit_latency[t].append(h2load(ports[f"{t.upper()}_PORT"], uri_files[t], 2000, connections=1, token=tokens["RS256"])["mean_latency_us"])
        print(f"audit mean latency, one connection: {audit_latency}", flush=True)
    finally:
        envoy.stop()

    med = {t: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for t, runs in results.items()}
    cpu = {t: med[t]["cpu_us_per_request"] for t in TARGETS}
    added_cpu = cpu["routing"] - cpu["baseline"]
    ratio = med["routing"]["rps"] / med["baseline"]["rps"]
    added_latency = med["routing"]["mean_latency_us"] - med["baseline"]["mean_latency_us"]
    print("Envoy under callgrind ...", flush=True)
    runs = [(t, ports[f"{t.upper()}_PORT"], uri_files[t], tokens.get("RS256") if t == "chain" else None, CALLGRIND_REQUESTS) for t in TARGETS]
    runs += [(f"nocache-{alg}", ports["NOCACHE_PORT"], uri_files["nocache"], tokens[alg], NOCACHE_REQUESTS) for alg in NOCACHE_ALGS]
    runs += [(f"fastpath-{alg}", ports["FASTPATH_PORT"], uri_files["fastpath"], tokens[alg], NOCACHE_REQUESTS) for alg in ("RS256", "ES256")]
    runs += [("ratelimited", ports["RATELIMITED_PORT"], uri_files["ratelimited"], tokens["RS256"], CALLGRIND_REQUESTS)]
    # Two Envoys: all of the modules' VMs do not fit in valgrind's address space at once.
    without_audit = listeners_only(config, {"baseline", "routing", "floor", "chain", "ratelimited", "chain_nocache", "fastpath", "origin"}, work / "envoy-callgrind-1.yaml")
    ir = envoy_callgrind(without_audit, ports, runs, work, "envoy-callgrind-1")
    audit_runs = [(t, ports[f"{t.upper()}_PORT"], uri_files[t], tokens["RS256"], CALLGRIND_REQUESTS) for t in ("chain", "audited")]
    audit_only = listeners_only(config, {"chain", "audited", "origin"}, work / "envoy-callgrind-2.yaml")
    ir_audit = envoy_callgrind(audit_only, ports, audit_runs, work, "envoy-callgrind-2")
    # Time of one instruction on this machine, from the baseline proxy's own figures.
    us_per_ir = cpu["baseline"] / ir["baseline"]
    added_ir = ir["routing"] - ir["baseline"]
    floor_ir = ir["floor"] - ir["baseline"]
    instructions, calls = callgrind_instructions()
    native_verify = {alg: verify_instructions(verify_bench, tokens_dir, alg) for alg in NOCACHE_ALGS}
    authz_cached_ir = ir["chain"] - ir["routing"]
    first_sight_ir = {alg: ir[f"nocache-{alg}"] - ir["chain"] for alg in NOCACHE_ALGS}
    fastpath_ir = {alg: ir[f"fastpath-{alg}"] - ir["chain"] for alg in ("RS256", "ES256")}
    verdict = "meets" if added_cpu <= 3.0 else "misses"
    ratelimit_ir = ir["ratelimited"] - ir["chain"]
    audit_ir = ir_audit["audited"] - ir_audit["chain"]
    audit_core_ir = audit_instructions()
    audit_async_us = statistics.median(audit_latency["audited"])
    audit_fc_us = statistics.median(audit_latency["failclosed"])
    consent = consent_instructions(work)
    confine = confine_instructions(work)
    bundle_ir, bundle_bytes = consent["bundle"]
    single_ir, single_bytes = consent["single"]
    plain_ir, plain_bytes = consent["plain"]
    plain_per_kb_us = plain_ir / (plain_bytes / 1024) * us_per_ir
    per_kb_us = bundle_ir / (bundle_bytes / 1024) * us_per_ir

    report = f"""# fhirgate benchmark results

Written by `make bench` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC).

Machine: {machine()}.

## Method

One Envoy process (`--concurrency 1`, V8 Wasm runtime) with three proxies to the same
in-process origin (a direct response of a small FHIR JSON body), `tools/bench/envoy.yaml`:
`baseline` has the router only; `floor` has `filters/bench-floor`, a Wasm filter that only sets
one header and clears the route cache; `routing` has `fhirgate.routing` (config
`envoy/routing.json`) in front of the router. h2load (HTTP/1.1, {CONNECTIONS} connections, loopback) sends
{REQUESTS} requests per round, cycling through the {len(paths)} FHIR requests of
`tools/bench/uris.txt` (reads, searches with encoded parameters, compartment search, vread,
`$export`), to each proxy in turn, {ROUNDS} rounds after a warm-up. Envoy's CPU time per round
is the sum over its threads of `/proc/<pid>/task/*/schedstat`. Figures are medians over the
rounds; the origin's cost is in every proxy and cancels out of the differences.
Then the same configuration runs under `valgrind --tool=callgrind`, split over two Envoys (the
audit filter's listeners in the second: valgrind's address space does not hold every module's
V8 instances at once); after a warm-up of 300 requests per
proxy, counters are zeroed, {CALLGRIND_REQUESTS} requests sent to one proxy (one connection), and
counters dumped: instructions per request, independent of machine load.
Last, callgrind counts one native `RoutingPolicy::route()` call plus its header list over the
same mix ({calls} calls, setup subtracted).

## Results

| | baseline (router only) | floor (least Wasm filter) | fhirgate.routing | routing − baseline |
|---|---|---|---|---|
| Envoy instructions per request (callgrind) | {ir['baseline']:.0f} | {ir['floor']:.0f} | {ir['routing']:.0f} | **+{added_ir:.0f}** (≈ {added_ir * us_per_ir:.1f} µs) |
| Envoy CPU per request (schedstat) | {cpu['baseline']:.2f} µs | {cpu['floor']:.2f} µs | {cpu['routing']:.2f} µs | **+{added_cpu:.2f} µs** |
| throughput | {med['baseline']['rps']:.0f} req/s | {med['floor']['rps']:.0f} req/s | {med['routing']['rps']:.0f} req/s | ratio **{ratio:.3f}** |
| mean latency (h2load, {CONNECTIONS} connections) | {med['baseline']['mean_latency_us']:.0f} µs | {med['floor']['mean_latency_us']:.0f} µs | {med['routing']['mean_latency_us']:.0f} µs | +{added_latency:.0f} µs |

Where the routing filter's instructions go: **{floor_ir:.0f}** (≈ {floor_ir * us_per_ir:.1f} µs) are the
floor, what Envoy and V8 spend on any Wasm filter that sets one header and re-selects the route
(context creation, one VM call per filter callback, the header write, the route match);
**{added_ir - floor_ir:.0f}** (≈ {(added_ir - floor_ir) * us_per_ir:.1f} µs) are fhirgate's own work
(reading the headers, parsing, writing 3-6 headers). The core's parsing itself is
**{instructions:.0f} instructions** per `route()` call natively (callgrind).
Instructions are turned into time with the baseline's own ratio ({us_per_ir * 1000:.3f} ns per instruction).

Target: ≤ 3 µs added CPU per request for the routing filter — this run **{verdict}** it.

### SMART authorization filter

| | instructions per request | ≈ time |
|---|---|---|
| authz added to the chain, cached token (chain − routing, Envoy) | {authz_cached_ir:.0f} | {authz_cached_ir * us_per_ir:.1f} µs |
| of which the floor of any Wasm filter (floor − baseline) | {floor_ir:.0f} | {floor_ir * us_per_ir:.1f} µs |
{chr(10).join(f"| first-sight {alg} verification in Wasm (no cache − cached, Envoy) | {first_sight_ir[alg]:.0f} | {first_sight_ir[alg] * us_per_ir:.1f} µs |" for alg in NOCACHE_ALGS)}
{chr(10).join(f"| first-sight {alg} verification, native core (callgrind) | {native_verify[alg]:.0f} | {native_verify[alg] * us_per_ir:.1f} µs |" for alg in NOCACHE_ALGS)}
{chr(10).join(f"| jwt_authn fast path, {alg} verified natively by Envoy on every request (fastpath − cached chain) | {fastpath_ir[alg]:.0f} | {fastpath_ir[alg] * us_per_ir:.1f} µs |" for alg in ("RS256", "ES256"))}

Targets: ≤ 3 µs added per request with a cached token; first-sight RS256 ≤ 150 µs in Wasm
(this run: {first_sight_ir['RS256'] * us_per_ir:.0f} µs, **{"meets" if first_sight_ir['RS256'] * us_per_ir <= 150 else "misses"}**; through the jwt_authn fast
path {fastpath_ir['RS256'] * us_per_ir:.0f} µs, **{"meets" if fastpath_ir['RS256'] * us_per_ir <= 150 else "misses"}**). Times convert instructions with the loaded proxy's own
ratio, which includes its syscalls and cache misses: pure arithmetic such as a signature
check runs faster than that, so these times are upper estimates.
The cached-token figure includes the Wasm floor above, which no proxy-wasm filter avoids.
jwt-compact's RSA (the `rsa` crate's big-integer arithmetic) is slow natively too; Envoy's
jwt_authn (BoringSSL) is the documented fast path for RS256 (`render.py --jwt-authn`).
The CPU-time figures move by several µs between rounds on this shared machine (see below);
the callgrind counts repeat to within a fraction of a percent.

### Rate-limit filter

| | instructions per request | ≈ time |
|---|---|---|
| ratelimit added to the chain, every request taking from a shared-data bucket (ratelimited − chain, Envoy) | {ratelimit_ir:.0f} | {ratelimit_ir * us_per_ir:.1f} µs |
| of which the floor of any Wasm filter (floor − baseline) | {floor_ir:.0f} | {floor_ir * us_per_ir:.1f} µs |

Target: ≤ 3 µs added per request — this run **{"meets" if ratelimit_ir * us_per_ir <= 3 else "misses"}** it; the floor alone is
above it. Correctness across workers is shown by tests, not timed: `ratelimit/bucket.rs`
(interleaved compare-and-swap) and `tests/e2e/test_ratelimit.py` (Envoy with two workers).

### Audit filter

| | figure |
|---|---|
| the audit core per record, natively (build, seal into the HMAC-SHA256 chain, serialise; `audit_bench`, callgrind) | {audit_core_ir:.0f} instructions ≈ {audit_core_ir * us_per_ir:.1f} µs |
| audited − chain in Envoy (callgrind) | {audit_ir:.0f} instructions ≈ {audit_ir * us_per_ir:.1f} µs |
| mean latency, one connection: async mode | {audit_async_us:.0f} µs |
| mean latency, one connection: fail-closed mode (each request waits for the collector's ack) | {audit_fc_us:.0f} µs (**+{audit_fc_us - audit_async_us:.0f} µs**) |

The Envoy figure comes from a second Envoy under callgrind holding only the routing, authz
and audit modules: with every module loaded, valgrind's address space cannot hold all the V8
instances, Envoy could not create the audit filter's VM on its worker and skipped the filter,
and earlier runs of this benchmark reported the audit filter as costing nothing (the runs now
refuse to count when a VM is missing). Natively more than half of the core's work is SHA-256
(the chain's HMAC over each serialised record, ~700 bytes, and the User-Agent hash); the
record is also serialised more than once. Target: ≤ 3 µs added CPU per request in async mode
— **{"met" if audit_ir * us_per_ir <= 3 else "missed"}** in Envoy (the Wasm floor alone is above it). The collector here is an in-process
direct response: a real collector's round trip adds to the fail-closed figure.

### Consent filter

Natively under callgrind (`filters/core/examples/consent_bench.rs`): parse the response,
decide every resource against the shipped `envoy/consent.json` with each patient's Consent
cached, write the filtered response back (setup subtracted).

| response | size | instructions | ≈ time | per KB |
|---|---|---|---|---|
| search Bundle: the {consent['entries']} HL7 example Observations, every eighth labelled R (withheld for the bench's purpose) | {bundle_bytes / 1024:.0f} KB | {bundle_ir:.0f} | {bundle_ir * us_per_ir:.0f} µs | **{per_kb_us:.2f} µs/KB** |
| the same search without labels or contained resources, no patient with a privacy Consent (released by the byte scan, unparsed) | {plain_bytes / 1024:.0f} KB | {plain_ir:.0f} | {plain_ir * us_per_ir:.1f} µs | **{plain_per_kb_us:.2f} µs/KB** |
| one Patient resource (parsed: a Patient names its compartment by its id) | {single_bytes / 1024:.1f} KB | {single_ir:.0f} | {single_ir * us_per_ir:.1f} µs | |

Targets: ≤ 2 µs per KB added — responses that need no filtering (the byte scan) **{"meet" if plain_per_kb_us <= 2 else "miss"}** it;
responses that must be decided resource by resource **{"meet" if per_kb_us <= 2 else "miss"}** it (serde_json's parse into a
document and the write-back dominate: about {bundle_ir / (bundle_bytes / 1024):.0f} instructions per KB). The byte scan
(`consent/scan.rs`) costs {plain_ir / (plain_bytes / 1024):.0f} instructions per KB natively; it is written for
the Wasm build, which has no SIMD for the substring searches it replaced (natively those were
cheaper, in V8 it is about a third faster than they were). Responses the filter does not read
(metadata, CDS Hooks, passthrough paths, errors) cost only the Wasm floor. In Envoy the filter
also copies the body into the VM (not counted here).

### Response verification under `patient/` scopes

Natively under callgrind (`filters/core/examples/confine_bench.rs`): the authorization filter
holds a confined request's response, parses it and verifies it resource by resource for the
launch patient (setup subtracted). Requests under `user/` or `system/` scopes, and everything
the filter refuses, are not held and pay none of this.

| response | size | parse | verify | together | ≈ time |
|---|---|---|---|---|---|
| search Bundle of {confine['entries']} of the patient's Observations | {confine['bytes'] / 1024:.0f} KB | {confine['parse']:.0f} | {confine['verify'] - confine['parse']:.0f} | {confine['verify']:.0f} | {confine['verify'] * us_per_ir:.0f} µs |

Every round (CPU per request / throughput):
{chr(10).join('- ' + t + ': ' + ', '.join(f"{r['cpu_us_per_request']:.2f} µs / {r['rps']:.0f} rps" for r in runs) for t, runs in results.items())}
"""
    out = ROOT / "bench" / "results.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    write_summary({
        "authz.confined_response.instructions": (confine["verify"], "instructions", f"parse + verify a {confine['entries']}-entry search Bundle under patient/ scopes, native"),
        "authz.confined_response.verify_only.instructions": (confine["verify"] - confine["parse"], "instructions", "the verification alone, after the parse, native"),
        "authz.cached_token.instructions": (authz_cached_ir, "instructions", "authz filter with a cached token, in Envoy (callgrind)"),
        "routing.instructions": (added_ir, "instructions", "routing filter per request, in Envoy (callgrind)"),
    })
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
