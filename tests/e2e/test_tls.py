"""TLS in Envoy (`render.py --tls --fhir-replica`), certificates made here with openssl: TLS on
the public listener; an internal listener that requires a client certificate from the CA, whose
SPIFFE URI SAN selects the authorization filter's trust zone; mutual TLS to the FHIR servers;
two FHIR replicas with health checks, one of which goes down."""
import http.client
import json
import ssl
import subprocess
import sys

import pytest

from stack import BASE, ROOT, Process, Recorder, binary, free_port, http_get, wait_until

SPIFFE = "spiffe://fhirgate.test/ns/clinic/sa/ehr"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d):
    """ca, a server cert (localhost and fhir.fhirgate.test), the gateway's client cert, a
    clinic client with a SPIFFE id, and a client from another CA."""
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{ca}-key.pem",
                "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=fhirgate test {ca}", cwd=d)
    leaves = [("server", "ca", "DNS:localhost,IP:127.0.0.1,DNS:fhir.fhirgate.test", "serverAuth"),
              ("gateway-client", "ca", "DNS:gateway.fhirgate.test", "clientAuth"),
              ("clinic", "ca", f"URI:{SPIFFE}", "clientAuth"),
              ("rogue", "rogue-ca", f"URI:{SPIFFE}", "clientAuth")]
    for name, ca, san, usage in leaves:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem", "-CAcreateserial", "-out", f"{name}.pem",
                "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def client(d, cert=None):
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(d / f"{cert}.pem"), str(d / f"{cert}-key.pem"))
    return ctx


def get(port, path, ctx, headers=None):
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tls_gateway(stack):
    d = stack.log_dir / "tls"
    d.mkdir(exist_ok=True)
    make_certs(d)
    upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream.load_cert_chain(str(d / "server.pem"), str(d / "server-key.pem"))
    upstream.load_verify_locations(str(d / "ca.pem"))
    upstream.verify_mode = ssl.CERT_REQUIRED
    replicas = [Recorder(f"tls-replica{i}", forward_port=stack.fhir_port, tls=upstream).start() for i in range(2)]
    settings = json.loads((stack.log_dir / "issuers.json").read_text())
    settings["zones"] = [{"name": "clinic", "peerUriSanPrefixes": ["spiffe://fhirgate.test/ns/clinic/"], "mode": "report-only"}]
    (d / "authz.json").write_text(json.dumps(settings))
    listen, admin, internal = free_port(), free_port(), free_port()
    values = dict(stack.variant_values("envoy-tls", listen, admin), INTERNAL_PORT=internal,
                  **{k: replicas[0].port for k in ("FHIR_PORT", "BULK_PORT", "VALIDATE_PORT", "PRIOR_AUTH_PORT", "DEVICE_PORT")})
    config = d / "envoy.yaml"
    args = [sys.executable, str(ROOT / "envoy" / "render.py"), str(ROOT / "envoy" / "fhirgate.yaml"), str(config),
            "--issuers", str(d / "authz.json"), "--ratelimit", str(stack.log_dir / "ratelimit.json"), "--consent", str(stack.log_dir / "consent.json"),
            "--audit", str(stack.log_dir / "audit.json"), "--tls", str(d), "--fhir-replica", str(replicas[1].port)]
    for k, v in values.items():
        args += ["--set", f"{k}={v}"]
    subprocess.run(args, check=True)
    proc = Process("envoy-tls", [binary("envoy"), "-c", str(config), "--concurrency", "2", "--disable-hot-restart", "-l", "info"],
                   stack.log_dir / "envoy-tls.log")
    stack.processes.append(proc)
    wait_until("envoy-tls", lambda: http_get(admin, "/ready")[0] == 200, timeout=60, process=proc)
    healthy = lambda: all(f"fhir_api::127.0.0.1:{r.port}::health_flags::healthy".encode() in http_get(admin, "/clusters")[1] for r in replicas)
    wait_until("healthy FHIR replicas", healthy, timeout=20)
    yield {"dir": d, "listen": listen, "internal": internal, "admin": admin, "replicas": replicas}
    for r in replicas:
        r.stop()


def test_the_public_listener_speaks_tls(tls_gateway):
    status, body = get(tls_gateway["listen"], f"{BASE}/metadata", client(tls_gateway["dir"]))
    assert status == 200 and b"CapabilityStatement" in body


@pytest.mark.parametrize("cert", [None, "rogue"])
def test_the_internal_listener_refuses_a_missing_or_foreign_client_certificate(tls_gateway, cert):
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        get(tls_gateway["internal"], f"{BASE}/metadata", client(tls_gateway["dir"], cert))


def test_the_client_certificates_spiffe_id_selects_the_trust_zone_and_upstream_tls_is_mutual(stack, tls_gateway):
    d = tls_gateway["dir"]
    # The clinic zone is report-only: its requests pass, marked; the public listener enforces.
    status, _ = get(tls_gateway["internal"], f"{BASE}/Patient/example", client(d, "clinic"), {"x-test-id": "tls-zone"})
    assert status == 200
    records = [r for rec in tls_gateway["replicas"] for r in rec.find("tls-zone")]
    assert records and records[0]["headers"]["x-fhirgate-authz-decision"] == ["report-only"]
    sans = dict(x for x in records[0]["peer_cert"]["subjectAltName"])
    assert sans.get("DNS") == "gateway.fhirgate.test", "the upstream saw the gateway's client certificate"
    assert get(tls_gateway["listen"], f"{BASE}/Patient/example", client(d))[0] == 401


def test_a_replica_down_and_traffic_continues(stack, tls_gateway):
    token = stack.token("user/Patient.rs", sub="tls-replicas")
    tls_gateway["replicas"][0].stop()
    down = f"fhir_api::127.0.0.1:{tls_gateway['replicas'][0].port}::health_flags::/failed_active_hc".encode()
    wait_until("the health check to notice", lambda: down in http_get(tls_gateway["admin"], "/clusters")[1], timeout=20)
    answers = [get(tls_gateway["listen"], f"{BASE}/Patient/example", client(tls_gateway["dir"]), {"authorization": f"Bearer {token}"})
               for _ in range(20)]
    assert [s for s, _ in answers] == [200] * 20, [b[:300] for s, b in answers if s != 200][:3]
