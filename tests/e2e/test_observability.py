"""Metrics as Prometheus scrapes them: every family docs/metrics.md lists and the Grafana dashboard
queries exists on a freshly started gateway, details become labels (reason, interaction, class,
outcome) holding fixed codes only, and the counters move with traffic."""
import json
import re

import yaml

from stack import BASE, ROOT, http_get
from test_authz import call

DASHBOARD = ROOT / "envoy" / "observability" / "grafana-dashboard.json"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$")


SCRAPE_JOB = ROOT / "envoy" / "observability" / "prometheus-scrape.yaml"


def renames() -> list[tuple[re.Pattern, str]]:
    """The shipped scrape job's metric renames (`metric_relabel_configs` on `__name__`), as
    Prometheus applies them: the regex anchored, `$1` for its group."""
    job = yaml.safe_load(SCRAPE_JOB.read_text())["scrape_configs"][0]
    rules = []
    for rule in job["metric_relabel_configs"]:
        assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__", rule
        rules.append((re.compile(f"^(?:{rule['regex']})$"), rule["replacement"].replace("$1", r"\1")))
    return rules


def scrape(stack) -> list[tuple[str, dict, float]]:
    _, text = http_get(stack.admin_port, "/stats/prometheus")
    rules = renames()
    samples = []
    for line in text.decode().splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            name = m.group(1)
            for regex, replacement in rules:
                if regex.match(name):
                    name = regex.sub(replacement, name)
            samples.append((name, labels, float(m.group(4))))
    return samples


def value(samples, name, **labels) -> float:
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))


def test_every_dashboard_query_names_metrics_the_gateway_exports(stack):
    call(stack, "GET", f"{BASE}/Patient/example", stack.token("user/Patient.rs"))
    families = {n for n, _, _ in scrape(stack)}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    referenced = {m for e in exprs for m in re.findall(r"\b((?:fhirgate|envoy)_[a-z0-9_]+)\b(?!\s*=)", e)}
    assert len(referenced) >= 15
    missing = sorted(referenced - families)
    assert not missing, missing


def test_every_metric_in_the_readme_table_exists(stack):
    families = {n for n, _, _ in scrape(stack)}
    table = (ROOT / "docs" / "metrics.md").read_text()
    names = re.findall(r"^\| `(fhirgate\.[a-z0-9_.]+[a-z0-9_])", table, re.M)
    assert len(names) >= 15
    for name in names:
        prom = name.replace(".", "_")
        parent = prom.rsplit("_", 1)[0] if "." in name else prom
        assert prom in families or name.rsplit(".", 1)[0].replace(".", "_") in families or parent in families, name


def test_counters_move_and_details_are_labels_with_codes_only(stack):
    before = scrape(stack)
    call(stack, "GET", f"{BASE}/Patient/example", stack.token("user/Patient.rs", sub="obs-user"))
    call(stack, "GET", f"{BASE}/Patient/example")
    call(stack, "GET", f"{BASE}/Foo/1", stack.token("user/Patient.rs", sub="obs-user"))
    after = scrape(stack)
    assert value(after, "fhirgate_routing_routed", interaction="read") >= value(before, "fhirgate_routing_routed", interaction="read") + 2
    assert value(after, "fhirgate_authz_denied", reason="missing-token") > value(before, "fhirgate_authz_denied", reason="missing-token")
    assert value(after, "fhirgate_routing_denied", reason="unknown-resource-type") > value(before, "fhirgate_routing_denied", reason="unknown-resource-type")
    assert value(after, "fhirgate_ratelimit_requests", **{"class": "read"}) > value(before, "fhirgate_ratelimit_requests", **{"class": "read"})
    for name, labels, _ in after:
        if name.startswith("fhirgate_"):
            for k, v in labels.items():
                assert re.fullmatch(r"[a-z0-9_-]*", v), (name, k, v)
                assert "obs-user" not in v and "example" not in v


STAGES = ["routing", "authz", "ratelimit", "consent", "audit"]
COUNT = re.compile(r'count\(\s*FILTER,\s*"([a-z0-9_]+)",\s*([^;]*?)\s*,?\s*\)\s*[;,}]', re.S)
DECLARED = re.compile(r'\(\s*"([a-z0-9_]+)",\s*"([a-z0-9_-]*)"\s*\)')


def test_every_counter_a_stage_counts_is_declared_at_configuration():
    """The native module can define metrics only while Envoy creates its configuration: a
    counter counted but never declared (as itself, or as its family with a variable detail)
    would exist in the Wasm build and silently not in the native one."""
    filters = ROOT / "filters"
    for stage in STAGES:
        root = (filters / stage / "src" / "root.rs").read_text()
        declare = root[root.index("declare("):]
        declared = set(DECLARED.findall(declare[:declare.index("]")]))
        counted = set()
        for source in sorted((filters / stage / "src").glob("*.rs")):
            for event, detail in COUNT.findall(source.read_text()):
                counted.add((event, detail.strip()))
        assert counted, stage
        for event, detail in sorted(counted):
            # A literal, or a choice between literals (`if … { "read" } else { "missing" }`):
            # each declared; any other expression: its family.
            choice = re.fullmatch(r'"[a-z0-9_-]*"', detail) or detail.startswith("if ")
            literals = re.findall(r'"([a-z0-9_-]*)"', detail) if choice else []
            ok = bool(literals) and all((event, d) in declared for d in literals)
            assert ok or (event, "") in declared, f"{stage}: count({event}, {detail}) is not declared"
        # Every stage refuses through fhirgate_proxy::reject, which counts `denied`.
        assert ("denied", "") in declared, stage
