"""The docker-compose stack, validated without a Docker engine: the file against the compose
specification, the Envoy configuration it mounts (rendered by the same render.py from the same
filter configs as every test) through `envoy --mode validate`, its ports against the rendered
clusters, and the scripts its services run, run here."""
import http.client
import json
import re
import subprocess
import sys
import time

import yaml

from stack import ROOT, VENV, WASM_DIR, envoy_validate, free_port

COMPOSE = ROOT / "envoy" / "compose" / "compose.yaml"


def test_the_compose_file_follows_the_compose_specification():
    result = subprocess.run([str(VENV / "bin" / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_gateway_configuration_it_mounts_is_valid_and_matches_its_services(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "envoy" / "compose" / "prepare.py"), "--out", str(tmp_path), "--wasm-dir", str(WASM_DIR)],
                   check=True, capture_output=True)
    config = tmp_path / "envoy.yaml"
    result = envoy_validate(config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert all(s.get("network_mode") == "host" for s in services.values()), "host networking: the config's 127.0.0.1 upstreams hold"
    rendered = yaml.safe_load(config.read_text())
    ports = {c["name"]: int(c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"])
             for c in rendered["static_resources"]["clusters"]}
    assert ports["fhir_api"] == int(services["fhir"]["environment"]["SERVER_PORT"])
    assert ports["token_issuer"] == int(services["issuer"]["command"][2])
    assert ports["audit_collector"] == int(services["audit-collector"]["command"][2])
    mounted = [v.split(":")[0] for v in services["gateway"]["volumes"]]
    assert {m.replace("../../", "") for m in mounted} == {"build/compose/envoy.yaml", "build/wasm"}
    for service in ("examples", "issuer", "audit-collector"):
        script = next(arg for arg in services[service]["command"] if arg.startswith("/repo/"))
        assert (ROOT / script.removeprefix("/repo/")).exists(), script


def test_the_services_scripts_work(stack, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "e2e" / "load_examples.py"), str(stack.fhir_port)],
                         capture_output=True, text=True, check=True, cwd=ROOT / "tests" / "e2e").stdout
    assert int(re.search(r"loaded (\d+)", out).group(1)) > 50
    port, log = free_port(), tmp_path / "audit.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "collector.py"), str(port), str(log)], stdout=subprocess.PIPE,
                            cwd=ROOT / "tests" / "e2e")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("POST", "/audit", body=b'{"seq": 1}\n', headers={"content-type": "application/x-ndjson"})
                assert conn.getresponse().status == 204
                break
            except ConnectionRefusedError:
                time.sleep(0.2)
        assert json.loads(log.read_text()) == {"seq": 1}
    finally:
        proc.kill()
