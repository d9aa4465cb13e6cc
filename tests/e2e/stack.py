"""The gateway stack the end-to-end tests and `make run` start: a real FHIR server (sekmet),
upstream recorders in front of it, a CDS Hooks service, and Envoy running the shipped config
with the built .wasm modules.

Every process and server it starts is stopped by `Stack.stop()`; ports are picked free at run
time; logs and the rendered Envoy config stay in the log directory.
"""
from __future__ import annotations

import base64
import http.client
import json
import uuid
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
WASM_DIR = ROOT / "build" / "wasm"
# The native module (libfhirgate_native.so, `make native`): Envoy finds it on this path.
NATIVE_DIR = ROOT / "build" / "native"
os.environ.setdefault("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(NATIVE_DIR))
NODE_MODULES = ROOT / ".tools" / "node_modules"
EXAMPLES = NODE_MODULES / "hl7.fhir.r4.examples"
ISSUER_SCRIPT = ROOT / "tests" / "e2e" / "issuer.mjs"
ENVOY_TEMPLATE = ROOT / "envoy" / "fhirgate.yaml"
RENDER = ROOT / "envoy" / "render.py"
# How the stack deploys the module: `fused` (the shipped default) or `five-filter`
# (FHIRGATE_DEPLOYMENT=five-filter runs the whole suite against the separate filters,
# FHIRGATE_DEPLOYMENT=native against the native module).
DEPLOYMENT = os.environ.get("FHIRGATE_DEPLOYMENT", "fused")
CLI = ROOT / "target" / "debug" / "fhirgate"

# The public FHIR base (routing.json basePath) and the upstream server's own base.
BASE = "/fhir/r4"
UPSTREAM_BASE = "/fhir"

# Upstream clusters of envoy/fhirgate.yaml, each fronted by its own recorder.
FHIR_CLUSTERS = ["fhir_api", "fhir_bulk", "fhir_validate", "fhir_prior_auth", "fhir_device"]
PORT_KEYS = {
    "fhir_api": "FHIR_PORT",
    "fhir_bulk": "BULK_PORT",
    "fhir_validate": "VALIDATE_PORT",
    "fhir_prior_auth": "PRIOR_AUTH_PORT",
    "fhir_device": "DEVICE_PORT",
    "cds_hooks": "CDS_PORT",
}

# Example resources loaded into the FHIR server: every example of these types.
EXAMPLE_TYPES = ["Patient", "Practitioner", "Organization", "Observation", "Condition", "Encounter",
                 "AllergyIntolerance", "MedicationRequest", "Consent", "Device", "Claim", "Group"]

# Least seconds between JWKS fetches caused by unknown kids (the tests' setting; default 30).
UNKNOWN_KID_INTERVAL = 1

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization"}


_PORTS_GIVEN: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: servers that bind port 0 (the
    recorders) take ephemeral ports, so they can never take a port picked here before its
    owner binds it. Never the same port twice in one process."""
    low, _ = _ephemeral_range()
    rng = random.Random()
    for _ in range(500):
        port = rng.randint(10000, max(10001, low - 1))
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def binary(name: str) -> str:
    path = VENV / "bin" / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make tools`")
    return str(path)


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


class QuietServer(ThreadingHTTPServer):
    """A client that hung up (Envoy after a route timeout) is expected, not an error."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class Recorder:
    """An upstream that records every request it receives, then answers it: by forwarding to
    the FHIR server (`forward_port`) or with `respond(method, path, body)`.

    This is what proves what the upstream actually saw, not what a filter meant to send."""

    def __init__(self, name: str, forward_port: int | None = None, respond=None, tls=None):
        """`tls`: an ssl.SSLContext (server side) to serve HTTPS with, e.g. requiring client certificates."""
        self.name = name
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.stopped = False
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def handle_any(self):
                if recorder.stopped:
                    # A stopped upstream: connections kept alive from before die unanswered.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = read_body(self)
                headers: dict[str, list[str]] = {}
                for k, v in self.headers.items():
                    headers.setdefault(k.lower(), []).append(v)
                peer = self.connection.getpeercert() if tls is not None else None
                with recorder.lock:
                    recorder.records.append({"method": self.command, "path": self.path,
                                             "headers": headers, "body": body, "peer_cert": peer})
                if respond is not None:
                    status, rheaders, rbody = respond(self.command, self.path, body)
                else:
                    status, rheaders, rbody = forward(forward_port, self.command, self.path, self.headers, body)
                self.send_response(status)
                for k, v in rheaders:
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("content-length", str(len(rbody)))
                self.end_headers()
                self.wfile.write(rbody)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            # The handshake happens in the handler thread, on first read: a slow client must not
            # hold up the accept loop.
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"recorder-{name}", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()

    def find(self, test_id: str) -> list[dict]:
        with self.lock:
            return [r for r in self.records if r["headers"].get("x-test-id") == [test_id]]


class Collector:
    """The audit collector: takes POSTed batches (JSON lines), keeps every record and appends
    it to `log` (a file `fhirgate audit verify` can check); `down` makes it answer 503, as a
    collector that is failing would."""

    def __init__(self, log: pathlib.Path, port: int = 0):
        self.log = log
        self.records: list[dict] = []
        self.batches = 0
        self.down = False
        self.stopped = False
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if collector.stopped:
                    # A stopped collector: connections kept alive from before die unanswered.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status = 503 if collector.down else 204
                if not collector.down:
                    with collector.lock:
                        collector.batches += 1
                        lines = [line for line in body.splitlines() if line.strip()]
                        collector.records.extend(json.loads(line) for line in lines)
                        with open(log, "ab") as f:
                            f.writelines(line + b"\n" for line in lines)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def restart(self):
        """Starts listening again on the same port after stop()."""
        self.stopped = False
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.records)

    def stop(self):
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()


def forward(port: int, method: str, path: str, headers, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        fwd = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
        if body or method in ("POST", "PUT", "PATCH"):
            fwd["content-length"] = str(len(body))
        conn.request(method, path, body=body or None, headers=fwd)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def cds_service(method: str, path: str, body: bytes):
    """A CDS Hooks 2.0 service: discovery, one prompt hook, and one that never answers in time."""
    if path.rstrip("/") == "/cds-services":
        services = {"services": [
            {"hook": "patient-view", "id": "patient-greeter", "title": "Greeter", "description": "says hello"},
            {"hook": "patient-view", "id": "slow-hook", "title": "Slow", "description": "answers after 7 s"},
        ]}
        return 200, [("content-type", "application/json")], json.dumps(services).encode()
    if path.startswith("/cds-services/slow-hook"):
        time.sleep(7)
    cards = {"cards": [{"summary": "hello from the CDS service", "indicator": "info", "source": {"label": "test"}}]}
    return 200, [("content-type", "application/json")], json.dumps(cards).encode()


class Process:
    def __init__(self, name: str, argv: list[str], log: pathlib.Path, env=None, cwd=None):
        self.name = name
        self.log_path = log
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.log.close()


def wait_until(what: str, check, timeout: float = 60, process: Process | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited while waiting for {what}; see {process.log_path}")
        try:
            if check():
                return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what} ({last})")


def http_get(port: int, path: str, timeout: float = 5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def render_envoy(out: pathlib.Path, values: dict, template: pathlib.Path = ENVOY_TEMPLATE,
                 issuers: pathlib.Path | None = None, jwt_authn: bool = False,
                 ratelimit: pathlib.Path | None = None, global_ratelimit: bool = False,
                 consent: pathlib.Path | None = None, audit: pathlib.Path | None = None,
                 lds: pathlib.Path | None = None, deployment: str | None = None) -> pathlib.Path:
    args = [sys.executable, str(RENDER), str(template), str(out), "--deployment", deployment or DEPLOYMENT]
    for k, v in values.items():
        args += ["--set", f"{k}={v}"]
    if issuers is not None:
        args += ["--issuers", str(issuers)]
    if jwt_authn:
        args.append("--jwt-authn")
    if ratelimit is not None:
        args += ["--ratelimit", str(ratelimit)]
    if global_ratelimit:
        args.append("--global-ratelimit")
    if consent is not None:
        args += ["--consent", str(consent)]
    if audit is not None:
        args += ["--audit", str(audit)]
    if lds is not None:
        args += ["--lds", str(lds)]
    subprocess.run(args, check=True)
    return out


# A labelled counter's name as Envoy's text stats spell it: the family, the label, its value
# (the native module's `fhirgate.authz.denied.reason.token-expired`).
LABELLED = re.compile(r"\.(?:reason|interaction|class|outcome|detail)\.([^.]+)$")


class Counters(dict):
    """Envoy's counters whose names match a filter (name → value as text). A labelled
    counter is named as the Wasm module's are, the detail last: `fhirgate.authz.denied.<reason>`
    (both builds scrape as fhirgate_authz_denied{reason=...})."""

    def __init__(self, admin_port: int, name_filter: str = "fhirgate"):
        _, text = http_get(admin_port, f"/stats?filter={name_filter}")
        pairs = (line.split(": ", 1) for line in text.decode().splitlines() if ": " in line)
        super().__init__((LABELLED.sub(r".\1", k), v) for k, v in pairs)

    def total(self, suffix: str) -> int:
        """The sum of every counter whose name ends with `suffix` (over the filter's plugin
        scopes, which prefix the names)."""
        return sum(int(v) for k, v in self.items() if k.endswith(suffix) and v.strip().isdigit())


def envoy_validate(config: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary("envoy"), "--mode", "validate", "-c", str(config), "-l", "info",
                           "--disable-hot-restart"], capture_output=True, text=True, timeout=120)


def example_resources(types=EXAMPLE_TYPES):
    """(type, id, resource) for every example of the given types in hl7.fhir.r4.examples."""
    if not EXAMPLES.is_dir():
        raise RuntimeError(f"{EXAMPLES} is missing: run `make tools`")
    for t in types:
        for path in sorted(EXAMPLES.glob(f"{t}-*.json")):
            res = json.loads(path.read_text())
            if res.get("resourceType") == t and res.get("id"):
                yield t, res["id"], res


class Replicas:
    """Envoy replicas sharing one rate-limit service (Stack.start_replicas)."""

    def __init__(self, service: Process):
        self.service = service
        self.ports: list[int] = []
        self.admin_ports: list[int] = []


class Stack:
    def __init__(self, log_dir: pathlib.Path, listen_port: int | None = None, demo: bool = False):
        self.log_dir = log_dir
        self.listen_port = listen_port or free_port()
        self.admin_port = free_port()
        # A second Envoy with the same chain in jwt_authn mode (Envoy verifies tokens natively).
        self.jwt_authn_port = free_port()
        self.jwt_authn_admin_port = free_port()
        # A third in report-only mode: decisions made and marked, never enforced.
        self.report_only_port = free_port()
        self.report_only_admin_port = free_port()
        self.fhir_port = free_port()
        self.demo = demo
        self.issuer_port = free_port()
        self.control_port = free_port()
        self.issuer = f"http://localhost:{self.issuer_port}"
        self.audience = f"http://127.0.0.1:{self.listen_port}{BASE}"
        self.failing_issuer = "https://issuer-that-is-down.example"
        self.break_glass_key = log_dir / "break-glass.key"
        self.audit_key = log_dir / "audit.key"
        self.collector: Collector | None = None
        self.default_token = ""
        self.recorders: dict[str, Recorder] = {}
        self.processes: list[Process] = []
        self.loaded: list[tuple[str, str]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self):
        if self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        self.log_dir.mkdir(parents=True)
        try:
            self._start_fhir_server()
            self._load_examples()
            for cluster in FHIR_CLUSTERS:
                self.recorders[cluster] = Recorder(cluster, forward_port=self.fhir_port).start()
            self.recorders["cds_hooks"] = Recorder("cds_hooks", respond=cds_service).start()
            self._start_issuer()
            self._start_envoy()
            self.default_token = self.token("system/*.cruds", sub="e2e-system-client")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()
        for r in self.recorders.values():
            r.stop()
        self.recorders.clear()
        if self.collector is not None:
            self.collector.stop()
            self.collector = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- parts -----------------------------------------------------------------------------
    def _start_fhir_server(self):
        data = self.log_dir / "sekmet"
        data.mkdir()
        settings = data / "settings.yaml"
        settings.write_text("\n".join([
            f"base_url: http://127.0.0.1:{self.listen_port}{BASE}",
            "host: 127.0.0.1",
            f"port: {self.fhir_port}",
            f"data_dir: {data}",
            "simulator: {enabled: false}",
            "validation: {inbound: warn}",
            "log_inbound: false",
            "",
        ]))
        env = dict(os.environ, SEKMET_CONFIG=str(settings))
        proc = Process("sekmet", [binary("sekmet"), "serve", "-c", str(settings)], self.log_dir / "sekmet.log",
                       env=env, cwd=data)
        self.processes.append(proc)
        wait_until("the FHIR server", lambda: http_get(self.fhir_port, f"{UPSTREAM_BASE}/metadata")[0] == 200,
                   timeout=90, process=proc)

    def put_upstream(self, resource: dict) -> int:
        """Writes a resource straight into the FHIR server (not through the gateway): test data."""
        return self._send_upstream("PUT", f"{UPSTREAM_BASE}/{resource['resourceType']}/{resource['id']}", resource)

    def transaction_upstream(self, resources: list) -> int:
        """Writes resources straight into the FHIR server in one transaction (PUT each)."""
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
        return self._send_upstream("POST", UPSTREAM_BASE, bundle, timeout=120)

    def _send_upstream(self, method: str, path: str, body: dict, timeout: int = 30) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.fhir_port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body).encode(), headers={"content-type": "application/fhir+json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def _load_examples(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.fhir_port, timeout=30)
        try:
            for t, rid, res in example_resources():
                conn.request("PUT", f"{UPSTREAM_BASE}/{t}/{rid}", body=json.dumps(res).encode(),
                             headers={"content-type": "application/fhir+json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status in (200, 201):
                    self.loaded.append((t, rid))
        finally:
            conn.close()

    def _start_issuer(self):
        proc = Process("issuer", ["node", str(ISSUER_SCRIPT), str(self.issuer_port), str(self.control_port), str(NODE_MODULES)],
                       self.log_dir / "issuer.log")
        self.processes.append(proc)
        wait_until("the token issuer", lambda: http_get(self.issuer_port, "/jwks")[0] == 200, timeout=30, process=proc)
        wait_until("the issuer's control port", lambda: self._control("/mint", {}) is not None, timeout=30, process=proc)

    def issuers_file(self) -> pathlib.Path:
        """The trusted-issuer list rendered into the authz filter's config: the issuer's JWKS
        as published right now."""
        path = self.log_dir / "issuers.json"
        path.write_text(json.dumps({"issuers": [
            {"issuer": self.issuer, "audiences": [self.audience], "algorithms": ["RS256", "ES256"],
             "jwksUri": f"{self.issuer}/jwks", "jwksCluster": "token_issuer", "requiredClaims": ["sub"],
             "jwksUnknownKidIntervalSeconds": UNKNOWN_KID_INTERVAL},
            # An issuer whose JWKS endpoint fails (404), as one that is down would.
            {"issuer": self.failing_issuer, "audiences": [self.audience], "algorithms": ["RS256"],
             "jwksUri": f"{self.issuer}/no-jwks-here", "jwksCluster": "token_issuer"},
        ], "introspection": {"endpoint": f"{self.issuer}/oauth/introspect", "cluster": "token_issuer",
                             "audiences": [self.audience], "cacheSeconds": 60},
            # The same issuer stands in for the EHR whose CDS client signs CDS Hooks calls.
            "cdsHooks": {"serviceBaseUrl": self.cds_base_url, "issuers": [self.issuer]},
            # Its revocation list, fetched every second (stale only after ten minutes, so the
            # tests that take the issuer away see JWKS behaviour, not this).
            "revocation": {"cluster": "token_issuer", "path": "/revocations", "authority": "localhost",
                           "refreshSeconds": 1, "maxStaleSeconds": 600}}, indent=2))
        return path

    @property
    def cds_base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/cds-services"

    def cds_token(self, service: str, **claims) -> str:
        """A CDS client's JWT for one call to `service` (CDS Hooks 2.0: aud the service URL,
        a fresh jti, five minutes at most)."""
        return self.token(None, aud=f"{self.cds_base_url}/{service}", jti=uuid.uuid4().hex, sub="ehr-cds-client", **claims)

    def opaque_token(self, scope: str, patient: str | None = None, expires_in: int = 300, **claims) -> str:
        """An opaque token the issuer's introspection endpoint vouches for."""
        payload = {"scope": scope, "aud": self.audience, "sub": "e2e-user", **claims}
        if patient is not None:
            payload["patient"] = patient
        minted = self._control("/mint-opaque", {"claims": payload, "expiresIn": expires_in})
        if minted is None:
            raise RuntimeError("the issuer did not mint an opaque token")
        return minted["token"]

    def revoke_opaque(self, token: str):
        self._control("/revoke-opaque", {"token": token})

    def revoke_jti(self, jti: str):
        """Puts a jti on the issuer's revocation list, which the gateway fetches every second."""
        self._control("/revoke-jti", {"jti": jti})

    def rotate_key(self, alg: str = "RS256") -> str:
        """Adds a new signing key at the issuer; tokens minted afterwards use it. Waits out the
        gateway's unknown-kid fetch interval, so an earlier unknown kid cannot hide the new key."""
        rotated = self._control("/rotate", {"alg": alg})
        if rotated is None:
            raise RuntimeError("the issuer did not rotate")
        time.sleep(UNKNOWN_KID_INTERVAL + 0.1)
        return rotated["kid"]

    def _control(self, path: str, body: dict):
        conn = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=10)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            return json.loads(data) if resp.status == 200 else None
        finally:
            conn.close()

    def token(self, scope: str, patient: str | None = None, alg: str = "RS256", expires_in: int = 300, **claims) -> str:
        """A token from the real issuer, for this gateway's audience unless `aud` is given."""
        payload = {"scope": scope, "aud": self.audience, "sub": "e2e-user", **claims}
        if patient is not None:
            payload["patient"] = patient
        payload = {k: v for k, v in payload.items() if v is not None}
        minted = self._control("/mint", {"alg": alg, "claims": payload, "expiresIn": expires_in})
        if minted is None:
            raise RuntimeError("the issuer did not mint a token")
        return minted["token"]

    # Rate limits: the shipped tiers are per minute and hour, far above what one test needs
    # and below what the whole suite sends as one user, so the tests raise the defaults and
    # give small tiers to tenants of their own.
    TEST_TIERS = {"tiers": {c: {"limit": 100000, "windowSeconds": 60}
                            for c in ("read", "search", "write", "delete", "bulk", "validate", "operation", "cds-hooks")},
                  "tenants": {"rl-test": {"write": {"limit": 3, "windowSeconds": 60}, "search": {"limit": 5, "windowSeconds": 60}},
                              "rl-bulk": {"bulk": {"limit": 2, "windowSeconds": 3600}}},
                  "ietfHeaders": True}
    BREAK_GLASS_KID = "e2e-2026"

    def ratelimit_file(self) -> pathlib.Path:
        """Rate-limit settings laid over envoy/ratelimit.json: a break-glass key made now (the
        demo shows break-glass too) and, for the tests, their tiers."""
        self.break_glass_key.write_bytes(os.urandom(32).hex().encode())
        settings = {} if self.demo else dict(self.TEST_TIERS)
        settings["breakGlass"] = {"header": "x-break-glass",
                                  "keys": {self.BREAK_GLASS_KID: base64.b64encode(self.break_glass_key.read_bytes()).decode()}}
        path = self.log_dir / "ratelimit.json"
        path.write_text(json.dumps(settings, indent=2))
        return path

    # Consents are cached for a short time in the tests, so a change on the server shows soon.
    CONSENT_TTL = 2

    def consent_file(self) -> pathlib.Path:
        """Consent settings laid over envoy/consent.json: the FHIR server's Consent path and,
        for the tests, a short cache."""
        settings = json.loads((ROOT / "envoy" / "consent.json").read_text())["consents"]
        settings["path"] = f"{UPSTREAM_BASE}/Consent"
        if not self.demo:
            settings["cacheSeconds"] = self.CONSENT_TTL
        path = self.log_dir / "consent.json"
        # Earlier versions pass the consent filter here (judged by their own labels), so the
        # routing and authorization tests see history and vread reach the FHIR server; the
        # shipped `versions: refuse` is tested on an Envoy of its own (test_consent.py).
        # Bulk exports likewise pass (test_bulk_jobs.py binds their URLs); the shipped refusal of
        # unfiltered exports is tested there too.
        # Conditional writes likewise reach the FHIR server for the routing tests.
        path.write_text(json.dumps({"consents": settings, "versions": "allow", "bulkExport": "unfiltered",
                                    "conditionalWrites": "allow"}, indent=2))
        return path

    def start_replicas(self, settings: dict, count: int = 2) -> "Replicas":
        """`count` more Envoys with the chain in its global rate-limit variant
        (`render.py --global-ratelimit`) and the rate-limit service they share, whose
        descriptor file `fhirgate ratelimit descriptors` makes from the same settings.
        Stopped with the stack."""
        work = self.log_dir / "replicas"
        work.mkdir(exist_ok=True)
        overlay = work / "ratelimit.json"
        overlay.write_text(json.dumps(settings))
        merged = work / "ratelimit-merged.json"
        merged.write_text(json.dumps({**json.loads((ROOT / "envoy" / "ratelimit.json").read_text()), **settings}))
        descriptors = work / "descriptors.yaml"
        descriptors.write_text(subprocess.run([str(CLI), "ratelimit", "descriptors", "--config", str(merged)],
                                              capture_output=True, text=True, check=True).stdout)
        rls_port = free_port()
        rls = Process("ratelimit-service", ["node", str(ROOT / "tests" / "e2e" / "ratelimit_service.mjs"), str(rls_port), str(descriptors),
                                            str(NODE_MODULES)], work / "ratelimit-service.log")
        self.processes.append(rls)
        wait_until("the rate-limit service", lambda: b"rate-limit service on" in rls.log_path.read_bytes(), timeout=30, process=rls)
        replicas = Replicas(rls)
        for i in range(count):
            listen, admin = free_port(), free_port()
            values = dict(self.envoy_values(), LISTEN_PORT=listen, ADMIN_PORT=admin, ACCESS_LOG=work / f"replica{i}-access.log",
                          RATELIMIT_SERVICE_PORT=rls_port)
            config = render_envoy(work / f"replica{i}.yaml", values, issuers=self.log_dir / "issuers.json", ratelimit=overlay,
                                  consent=self.log_dir / "consent.json", audit=self.log_dir / "audit.json", global_ratelimit=True)
            proc = Process(f"replica{i}", [binary("envoy"), "-c", str(config), "--concurrency", "2", "--disable-hot-restart", "-l", "info"],
                           work / f"replica{i}.log")
            self.processes.append(proc)
            wait_until(f"replica {i}", lambda: http_get(admin, "/ready")[0] == 200, timeout=60, process=proc)
            replicas.ports.append(listen)
            replicas.admin_ports.append(admin)
        return replicas

    AUDIT_KID = "e2e-audit"
    AUDIT_FLUSH_MS = 200

    def audit_file(self, **settings) -> pathlib.Path:
        """Audit settings laid over envoy/audit.json: this run's chain key and, for the tests,
        a short flush interval."""
        if not self.audit_key.exists():
            self.audit_key.write_bytes(os.urandom(32))
        collector = json.loads((ROOT / "envoy" / "audit.json").read_text())["collector"]
        if not self.demo:
            collector["flushIntervalMs"] = self.AUDIT_FLUSH_MS
        overlay = {"chain": {"kid": self.AUDIT_KID, "key": base64.b64encode(self.audit_key.read_bytes()).decode()},
                   "collector": collector, **settings}
        name = "audit-" + "-".join(sorted(settings)) if settings else "audit"
        path = self.log_dir / f"{name}.json"
        path.write_text(json.dumps(overlay, indent=2))
        return path

    def variant_values(self, name: str, listen: int, admin: int) -> dict:
        return dict(self.envoy_values(), LISTEN_PORT=listen, ADMIN_PORT=admin, ACCESS_LOG=self.log_dir / f"{name}-access.log")

    def render_variant(self, name: str, values: dict, audit: pathlib.Path | None = None, lds: pathlib.Path | None = None,
                       out: pathlib.Path | None = None, consent: pathlib.Path | None = None,
                       deployment: str | None = None) -> pathlib.Path:
        """The chain with this stack's deployment settings, for another Envoy."""
        return render_envoy(out or self.log_dir / f"{name}.yaml", values, issuers=self.log_dir / "issuers.json",
                            ratelimit=self.log_dir / "ratelimit.json", consent=consent or self.log_dir / "consent.json",
                            audit=audit or self.log_dir / "audit.json", lds=lds, deployment=deployment)

    def start_variant(self, name: str, audit: pathlib.Path | None = None, lds: pathlib.Path | None = None,
                      consent: pathlib.Path | None = None, concurrency: int = 2, **values) -> tuple[int, int]:
        """One more Envoy with the chain and these settings (`values` override the rendered
        template's): (listen port, admin port)."""
        listen, admin = free_port(), free_port()
        config = self.render_variant(name, {**self.variant_values(name, listen, admin), **values}, audit=audit, lds=lds, consent=consent)
        self.run_envoy(name, config, admin, concurrency)
        return listen, admin

    def run_envoy(self, name: str, config: pathlib.Path, admin: int, concurrency: int = 2) -> Process:
        """Starts Envoy on a rendered config, stopped with the stack; returns once it is ready."""
        proc = Process(name, [binary("envoy"), "-c", str(config), "--concurrency", str(concurrency), "--disable-hot-restart", "-l", "info"],
                       self.log_dir / f"{name}.log")
        self.processes.append(proc)
        wait_until(name, lambda: http_get(admin, "/ready")[0] == 200, timeout=60, process=proc)
        return proc

    def break_glass_token(self, user: str, reason: str = "ETREAT", ttl: int = 600) -> str:
        """A break-glass token signed by the operator CLI with this gateway's key."""
        out = subprocess.run([str(CLI), "breakglass", "sign", "--key-file", str(self.break_glass_key), "--kid", self.BREAK_GLASS_KID,
                              "--user", user, "--reason", reason, "--ttl", str(ttl)], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def envoy_values(self) -> dict:
        values = {
            "ADMIN_PORT": self.admin_port,
            "LISTEN_ADDRESS": "127.0.0.1",
            "LISTEN_PORT": self.listen_port,
            "ACCESS_LOG": self.log_dir / "access.log",
            "UPSTREAM_BASE": UPSTREAM_BASE,
            "WASM_DIR": WASM_DIR,
            "ISSUER_PORT": self.issuer_port,
            "AUDIT_PORT": self.collector.port if self.collector else 9,
        }
        for cluster, key in PORT_KEYS.items():
            values[key] = self.recorders[cluster].port
        return values

    def _start_envoy(self):
        if not (WASM_DIR / "fhirgate.wasm").exists():
            raise RuntimeError(f"{WASM_DIR / 'fhirgate.wasm'} is missing: run `make wasm`")
        issuers = self.issuers_file()
        ratelimit = self.ratelimit_file()
        consent = self.consent_file()
        self.collector = Collector(self.log_dir / "audit.log")
        audit = self.audit_file()
        report_only = self.log_dir / "report-only.json"
        report_only.write_text(json.dumps({**json.loads(issuers.read_text()), "mode": "report-only"}))
        for name, listen, admin, settings, jwt_authn in (
                ("envoy", self.listen_port, self.admin_port, issuers, False),
                ("envoy-jwt-authn", self.jwt_authn_port, self.jwt_authn_admin_port, issuers, True),
                ("envoy-report-only", self.report_only_port, self.report_only_admin_port, report_only, False)):
            values = dict(self.envoy_values(), LISTEN_PORT=listen, ADMIN_PORT=admin, ACCESS_LOG=self.log_dir / f"{name}-access.log")
            config = render_envoy(self.log_dir / f"{name}.yaml", values, issuers=settings, jwt_authn=jwt_authn, ratelimit=ratelimit,
                                  consent=consent, audit=audit)
            proc = Process(name, [binary("envoy"), "-c", str(config), "--concurrency", "2",
                                  "--disable-hot-restart", "-l", "info"], self.log_dir / f"{name}.log")
            self.processes.append(proc)
            wait_until(name, lambda: http_get(admin, "/ready")[0] == 200, timeout=60, process=proc)

    # -- client ----------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
                chunked: bool = False, port: int | None = None):
        """Sends one request to the gateway exactly as given (no path normalisation).
        Returns (status, headers as a lowercased dict, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.listen_port, timeout=30)
        try:
            if isinstance(body, str):
                body = body.encode()
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if chunked:
                conn.putheader("transfer-encoding", "chunked")
                conn.endheaders()
                step = 64 * 1024
                try:
                    for i in range(0, len(body or b""), step):
                        part = body[i:i + step]
                        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                    conn.send(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway answered and closed before the upload ended; read its answer
            else:
                if body is not None:
                    conn.putheader("content-length", str(len(body)))
                conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()
