"""Soak: mixed traffic through the whole chain for SOAK_SECONDS (45 in `make test`, 600 in
`make soak`) — allowed reads and searches, authorization refusals, unauthenticated requests,
rate-limited searches (429), consent-withheld reads and filtered searches, break-glass access —
from concurrent h2load lanes and a break-glass client. Envoy's RSS is sampled throughout.

Passes when no lane sees a 5xx, each lane gets the answers its traffic calls for, Envoy's RSS
after warm-up stays within 5%, and the audit collector holds exactly one record per request.
A report goes to build/soak/report.json."""
import json
import os
import re
import statistics
import subprocess
import threading
import time

from stack import BASE, ROOT, http_get
from test_audit import quiet

SECONDS = int(os.environ.get("SOAK_SECONDS", "45"))
REPORT = ROOT / "build" / "soak"
LABELS = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def lane(stack, name: str, paths: list[str], token: str | None, rps: int, clients: int = 1, headers=()) -> subprocess.Popen:
    uris = REPORT / f"{name}.uris"
    uris.write_text("".join(f"http://127.0.0.1:{stack.listen_port}{p}\n" for p in paths))
    args = ["h2load", "-D", str(SECONDS), "-c", str(clients), "-m", "1", "--rps", str(rps), "-i", str(uris)]
    for h in ([f"authorization: Bearer {token}"] if token else []) + list(headers):
        args += ["-H", h]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def counts(out: str) -> dict:
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert done and codes, out
    return {"done": int(done.group(3)), "errored": int(done.group(6)), "timeout": int(done.group(7)),
            "2xx": int(codes.group(1)), "4xx": int(codes.group(3)), "5xx": int(codes.group(4))}


def soak_markdown(report: dict) -> str:
    lanes = "\n".join(f"| {name} | {r['done']} | {r['2xx']} | {r['4xx']} | {r['5xx']} |" for name, r in report["lanes"].items())
    curve = ", ".join(f"{t:.0f} s: {kib / 1024:.1f}" for t, kib in report["rss_kib"][::15])
    return f"""# Soak results

Written by `make soak` (`tests/e2e/test_soak.py`, SOAK_SECONDS={report['seconds']}), {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.

Method: the end-to-end stack (Envoy 1.40 with the five filters, two workers; the FHIR server
behind recording upstreams; the audit collector; the token issuer) on one 2-core machine.
Five h2load lanes run concurrently for the whole time with fixed request rates, and a
break-glass client mints a fresh break-glass token (operator CLI) and uses it once a second.
Envoy's RSS (`VmRSS`) is sampled every 2 s; growth compares the median of the last quarter
with the median of the second quarter (the first quarter is warm-up). Audit records are
counted at the collector after it has been quiet for a second.

| lane | requests | 2xx | 4xx | 5xx |
|---|---|---|---|---|
{lanes}

- requests: **{report['requests']}**; audit records: **{report['audit_records']}**; records dropped: {report['audit_dropped_total']}
- RSS: {report['rss_baseline_kib'] / 1024:.1f} MiB after warm-up → {report['rss_end_kib'] / 1024:.1f} MiB at the end (**{report['rss_growth']:+.2%}**)
- RSS curve (MiB, every 30 s): {curve}

Lanes: allowed (a clinician's reads, searches and the capability statement), refused-scope (a
patient token reaching for another patient, another type, an unknown type), unauthenticated,
rate-limited (a tenant allowed 5 searches a minute), consent (a restricted Observation read
(403) and a search it is filtered from (200), purpose HPAYMT), break-glass.
"""


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_mixed_traffic_keeps_memory_flat_answers_right_and_audits_every_request(stack):
    REPORT.mkdir(parents=True, exist_ok=True)
    ttl = SECONDS + 300
    envoy = next(p for p in stack.processes if p.name == "envoy")
    pid = envoy.proc.pid
    # Data the consent lane reads: a patient with a restricted (R) Observation and a plain one.
    stack.put_upstream({"resourceType": "Patient", "id": "soak-p"})
    for oid, labels in (("soak-r", [{"system": LABELS, "code": "R"}]), ("soak-plain", [])):
        stack.put_upstream({"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "soak"},
                            "subject": {"reference": "Patient/soak-p"}, "meta": {"security": labels}})
    reader = stack.token("user/Patient.rs user/Observation.rs", sub="soak-reader", expires_in=ttl)
    narrow = stack.token("patient/Observation.rs", patient="example", sub="soak-narrow", expires_in=ttl)
    throttled = stack.token("user/Observation.rs", sub="soak-throttled", tenant="rl-test", expires_in=ttl)
    breaker = stack.token("user/Patient.rs", sub="soak-bg", expires_in=ttl)
    before_records = quiet(stack)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        start = time.monotonic()
        while not stop.is_set():
            samples.append((round(time.monotonic() - start, 1), rss_kib(pid)))
            stop.wait(2)

    glass = {"2xx": 0, "4xx": 0, "5xx": 0, "done": 0}

    def break_glass():
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            status = stack.request("GET", f"{BASE}/Patient/example", headers={
                "authorization": f"Bearer {breaker}", "x-break-glass": stack.break_glass_token("soak-bg")})[0]
            glass["done"] += 1
            glass[f"{status // 100}xx"] = glass.get(f"{status // 100}xx", 0) + 1
            time.sleep(1)

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=break_glass, daemon=True)]
    for t in threads:
        t.start()
    lanes = {
        "allowed": lane(stack, "allowed", [f"{BASE}/Patient/example", f"{BASE}/Observation?patient=example&_count=5",
                                           f"{BASE}/metadata"], reader, rps=15, clients=2),
        "refused-scope": lane(stack, "refused-scope", [f"{BASE}/Patient/example", f"{BASE}/Observation?patient=other",
                                                       f"{BASE}/Foo/1"], narrow, rps=10),
        "unauthenticated": lane(stack, "unauthenticated", [f"{BASE}/Patient/example"], None, rps=5),
        "rate-limited": lane(stack, "rate-limited", [f"{BASE}/Observation?patient=example"], throttled, rps=5),
        "consent": lane(stack, "consent", [f"{BASE}/Observation/soak-r", f"{BASE}/Observation?subject=Patient/soak-p"],
                        reader, rps=6, headers=["x-purpose-of-use: HPAYMT"]),
    }
    results = {name: counts(p.communicate(timeout=SECONDS + 120)[0]) for name, p in lanes.items()}
    threads[1].join(timeout=30)
    stop.set()
    results["break-glass"] = glass
    assert envoy.alive(), "Envoy exited"

    after_records = quiet(stack)
    requests = sum(r["done"] for r in results.values())
    _, stats = http_get(stack.admin_port, "/stats?filter=fhirgate.audit")
    dropped = sum(int(v) for k, v in re.findall(r"(\S*dropped\S*): (\d+)", stats.decode()))
    rss = [kib for _, kib in samples]
    warm = len(rss) // 4
    baseline = statistics.median(rss[warm:2 * warm]) if warm else rss[0]
    end = statistics.median(rss[-warm:]) if warm else rss[-1]
    report = {"seconds": SECONDS, "lanes": results, "requests": requests, "audit_records": after_records - before_records,
              "audit_dropped_total": dropped, "rss_kib": samples, "rss_baseline_kib": baseline, "rss_end_kib": end,
              "rss_growth": round((end - baseline) / baseline, 4)}
    (REPORT / "report.json").write_text(json.dumps(report, indent=2))
    if SECONDS >= 600:  # `make soak`: the figures are written down with the method
        (ROOT / "bench" / "soak.md").write_text(soak_markdown(report))
    print(f"\nsoak {SECONDS}s: {requests} requests, lanes {json.dumps(results)}, audit records {report['audit_records']}, "
          f"RSS {baseline} -> {end} KiB ({report['rss_growth']:+.2%})")

    assert all(r["5xx"] == 0 for r in results.values()), results
    assert all(r.get("errored", 0) == 0 and r.get("timeout", 0) == 0 for r in results.values()), results
    a, s, u, rl, c, g = (results[k] for k in ("allowed", "refused-scope", "unauthenticated", "rate-limited", "consent", "break-glass"))
    # On a failure, say which consent reasons withheld what (counters carry reason codes only).
    _, consent_stats = http_get(stack.admin_port, "/stats?filter=fhirgate.consent.(withheld|consent_cache)")
    withheld = {k: v for k, v in re.findall(r"(\S+): (\d+)", consent_stats.decode()) if v != "0"}
    assert a["done"] > 0 and a["2xx"] == a["done"], (a, withheld)
    assert s["done"] > 0 and s["4xx"] == s["done"], s
    assert u["done"] > 0 and u["4xx"] == u["done"], u
    assert rl["2xx"] > 0 and rl["4xx"] > 0 and rl["2xx"] + rl["4xx"] == rl["done"], rl
    assert c["2xx"] > 0 and c["4xx"] > 0 and c["2xx"] + c["4xx"] == c["done"], c  # withheld read 403, filtered search 200
    assert g["done"] > 0 and g["2xx"] == g["done"], g
    assert report["audit_records"] == requests and dropped == 0, report
    assert abs(report["rss_growth"]) <= 0.05, report
