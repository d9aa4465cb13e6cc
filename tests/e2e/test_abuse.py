"""Abuse through Envoy, every case over HTTP/1.1 (raw bytes, exactly as written) and HTTP/2 (curl,
nghttp): request smuggling, duplicated credentials, forged internal
headers, path tricks, method overrides, oversized and slow requests. Each is refused or
normalised, none gets past authorization (checked on what the upstream received, never on what a
filter meant to do), and afterwards every VM still serves."""
import re
import select
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from stack import BASE, http_get
from test_routing import audit_of, internal, parsed, received

NARROW_SCOPE = "patient/Observation.rs"  # may read the Observations of patient `example`, nothing else
PATIENT = "example"


def raw(stack, request: bytes, port=None) -> bytes:
    """Sends bytes as they are; returns the status line. Like a real client it watches for an
    early answer while it uploads: Envoy may answer (413, 400) and close before the body ends,
    and a client that only writes would see the reset instead of the answer."""
    conn = socket.create_connection(("127.0.0.1", port or stack.listen_port), timeout=20)
    try:
        data, sent, deadline = b"", 0, time.monotonic() + 20
        conn.setblocking(False)
        while b"\r\n" not in data and time.monotonic() < deadline:
            readable, writable, _ = select.select([conn], [conn] if sent < len(request) else [], [], 1)
            if readable:
                try:
                    chunk = conn.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            elif writable:
                try:
                    sent += conn.send(request[sent:sent + 65536])
                except (BlockingIOError, InterruptedError):
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    sent = len(request)  # the answer, if any, is still to be read
        return data.split(b"\r\n")[0]
    finally:
        conn.close()


def status_of(line: bytes) -> int:
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def h1(stack, method, target, headers, body=None) -> int:
    head = f"{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n".encode()
    for name, value in headers:
        head += name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return status_of(raw(stack, head + b"\r\n" + (body or b"")))


def h2(stack, method, target, headers, body=None) -> int:
    """Over HTTP/2 with nghttp, which sends the path as written and, unlike curl 7.88, reads an
    answer Envoy gives before the upload ends. 0: the stream was reset without an answer."""
    args = ["nghttp", "-v", "-H", f":method: {method}"]
    for name, value in headers:
        args += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile() as upload:
        if body is not None:
            upload.write(body)
            upload.flush()
            args += ["-d", upload.name]
        out = subprocess.run(args + [f"http://127.0.0.1:{stack.listen_port}{target}"], capture_output=True, timeout=60).stdout
    status = re.search(rb"recv \(stream_id=\d+\) :status: (\d+)", out)
    return int(status.group(1)) if status else 0


PROTOCOLS = {"http1": h1, "http2": h2}


def send(stack, protocol, method, target, headers=(), body=None, token=None):
    """One request with a fresh test id; returns (status, what the upstream received)."""
    tid = uuid.uuid4().hex
    headers = [("x-test-id", tid), *(([("authorization", f"Bearer {token}")]) if token else []), *headers]
    status = PROTOCOLS[protocol](stack, method, target, headers, body)
    return status, received(stack, tid)


@pytest.fixture(scope="module")
def narrow(stack):
    return stack.token(NARROW_SCOPE, patient=PATIENT, sub="abuse-narrow")


# (case, method, target, extra headers, body, statuses allowed). The token may read patient
# example's Observations only; none of these may reach the upstream.
REFUSED = [
    ("encoded-slash-dot-dot", "GET", f"{BASE}/Observation/..%2FPatient%2Fother", (), None, {400}),
    ("dot-segments", "GET", f"{BASE}/Observation/../Patient/other", (), None, {403}),
    ("encoded-dot-segments", "GET", f"{BASE}/Observation/%2e%2e/Patient/other", (), None, {403}),
    ("double-encoded-dots", "GET", f"{BASE}/Observation/%252e%252e/Patient/other", (), None, {400}),
    ("overlong-utf8-dots", "GET", f"{BASE}/Observation/%C0%AE%C0%AE/Patient/other", (), None, {400}),
    ("overlong-utf8-slash", "GET", f"{BASE}/Observation%C0%AFPatient%C0%AFother", (), None, {400}),
    ("encoded-letter-in-type", "GET", f"{BASE}/%50atient/other", (), None, {403}),
    ("matrix-parameter-on-type", "GET", f"{BASE}/Observation;patient=other", (), None, {400, 404}),
    ("matrix-parameter-on-id", "GET", f"{BASE}/Observation/x;/../../Patient/other", (), None, {400, 403}),
    ("double-slash", "GET", f"{BASE}//Observation", (), None, {400}),
    ("encoded-nul", "GET", f"{BASE}/Observation/%00", (), None, {400}),
    ("encoded-crlf-in-query", "GET", f"{BASE}/Observation?patient=example%0D%0Ax-fhirgate-patient:%20other", (), None, {400}),
    ("lowercase-type", "GET", f"{BASE}/patient/other", (), None, {404}),
    ("other-patient-by-query", "GET", f"{BASE}/Observation?patient=other", (), None, {403}),
    ("own-and-other-patient", "GET", f"{BASE}/Observation?patient=example&patient=other", (), None, {400, 403}),
    ("other-patient-by-subject", "GET", f"{BASE}/Observation?subject=Patient/other", (), None, {403}),
    ("encoded-equals-in-name", "GET", f"{BASE}/Observation?patient%3Dother", (), None, {400, 403}),
    ("another-type", "GET", f"{BASE}/Condition?patient=example", (), None, {403}),
    ("write-with-read-scope", "POST", f"{BASE}/Observation", (("content-type", "application/fhir+json"),),
     b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/example"}}', {403}),
    ("x-http-method-override", "POST", f"{BASE}/Observation/_search", (("x-http-method-override", "DELETE"),
     ("content-type", "application/x-www-form-urlencoded")), b"patient=example", {400}),
    ("x-http-method", "GET", f"{BASE}/Observation?patient=example", (("X-HTTP-Method", "DELETE"),), None, {400}),
    ("x-method-override", "GET", f"{BASE}/Observation?patient=example", (("X-Method-Override", "PUT"),), None, {400}),
    ("forged-break-glass", "GET", f"{BASE}/Patient/other", (("x-fhirgate-break-glass", "ETREAT"), ("x-break-glass", "forged")), None, {403}),
    ("forged-patient-header", "GET", f"{BASE}/Observation?patient=other", (("X-FhirGate-Patient", PATIENT),), None, {403}),
    ("underscore-header", "GET", f"{BASE}/Observation?patient=example", (("x_fhirgate_patient", "other"),), None, {400, 0}),
    ("query-over-limit", "GET", f"{BASE}/Observation?patient=example&code={'a' * 9000}", (), None, {414}),
    # Over HTTP/2 Envoy resets the stream (0) instead of answering 431.
    ("headers-over-60k", "GET", f"{BASE}/Observation?patient=example", tuple((f"x-f{i}", "f" * 9000) for i in range(8)), None, {431, 0}),
    ("too-many-headers", "GET", f"{BASE}/Observation?patient=example", tuple((f"x-h{i}", "1") for i in range(120)), None, {431, 0}),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case,method,target,headers,body,allowed", REFUSED, ids=[r[0] for r in REFUSED])
def test_abuse_is_refused_and_reaches_no_upstream(stack, narrow, protocol, case, method, target, headers, body, allowed):
    status, seen = send(stack, protocol, method, target, headers, body, token=narrow)
    assert status in allowed, (case, protocol, status)
    assert seen == [], (case, protocol, seen)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_narrow_token_is_honoured_for_what_it_may_do(stack, narrow, protocol):
    """The control for the table above: the same token reads its patient's Observations, and the
    upstream sees only the gateway's own internal headers, whatever the client sent."""
    forged = (("X-FHIRGATE-PATIENT", "other"), ("x-FhirGate-Subject", "admin"), ("x-fhirgate-scopes", "system/*.cruds"),
              ("x-fhirgate-break-glass", "ETREAT"), ("x-fhirgate-tenant", "other-tenant"))
    status, seen = send(stack, protocol, "GET", f"{BASE}/Observation?patient=example", forged, token=narrow)
    assert status == 200
    [(_, record)] = seen
    marks = internal(record)
    assert marks["subject"] == ["abuse-narrow"] and "patient" not in marks, marks
    assert parsed(audit_of(stack, record))["patient"] == PATIENT
    assert "break-glass" not in marks and marks.get("tenant") != ["other-tenant"], marks
    assert all(len(v) == 1 for v in marks.values()), marks


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_body_over_the_limit_is_refused_413(stack, protocol):
    body = b'{"resourceType":"Basic","code":{"text":"' + b"x" * (9 * 1024 * 1024) + b'"}}'
    status, seen = send(stack, protocol, "POST", f"{BASE}/Basic", (("content-type", "application/fhir+json"),), body,
                        token=stack.default_token)
    assert status == 413 and seen == []


# -- HTTP/1.1 framing: only raw bytes can say these ------------------------------------------
# Each carries a test id (TID) and a forged internal header, smuggled where a lenient parser
# might see a header of its own.
FRAMING = [
    ("bare-cr-in-header-value", b"GET %s/metadata HTTP/1.1\r\nHost: gw\r\nTID\r\nx-a: a\rx-fhirgate-patient: other\r\nConnection: close\r\n\r\n"),
    ("obsolete-line-folding", b"GET %s/metadata HTTP/1.1\r\nHost: gw\r\nTID\r\nx-a: a\r\n x-fhirgate-patient: other\r\nConnection: close\r\n\r\n"),
    ("bare-lf-line-ends", b"GET %s/metadata HTTP/1.1\nHost: gw\nTID\nx-fhirgate-patient: other\nConnection: close\n\n"),
    ("space-before-colon", b"GET %s/metadata HTTP/1.1\r\nHost: gw\r\nTID\r\nx-fhirgate-patient : other\r\nConnection: close\r\n\r\n"),
    ("two-content-lengths", b"POST %s/Basic HTTP/1.1\r\nHost: gw\r\nTID\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}"),
    ("content-length-list", b"POST %s/Basic HTTP/1.1\r\nHost: gw\r\nTID\r\nContent-Type: application/fhir+json\r\nContent-Length: 2, 3\r\nConnection: close\r\n\r\n{}"),
    ("chunked-and-length", b"POST %s/Basic HTTP/1.1\r\nHost: gw\r\nTID\r\nContent-Type: application/fhir+json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"),
    ("transfer-encoding-list", b"POST %s/Basic HTTP/1.1\r\nHost: gw\r\nTID\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n"),
    ("bad-chunk-size", b"POST %s/Basic HTTP/1.1\r\nHost: gw\r\nTID\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("nul-in-request-line", b"GET %s/Patient/\x00 HTTP/1.1\r\nHost: gw\r\nTID\r\nConnection: close\r\n\r\n"),
    ("absolute-form-other-host", b"GET http://internal.example%s/Patient/other HTTP/1.1\r\nHost: gw\r\nTID\r\nConnection: close\r\n\r\n"),
]


@pytest.mark.parametrize("case,request_bytes", FRAMING, ids=[f[0] for f in FRAMING])
def test_malformed_http1_framing_is_refused_or_smuggles_nothing(stack, case, request_bytes):
    """Envoy's codec refuses most (400, 501 for an unknown coding, or a closed connection); the
    lenient ones (a bare CR, a folded line) reach /metadata, which needs no token, with the
    forged header left inside another header's value, never a header of its own."""
    tid = uuid.uuid4().hex
    request = request_bytes.replace(b"%s", BASE.encode(), 1).replace(b"TID", f"x-test-id: {tid}".encode(), 1)
    status = status_of(raw(stack, request))
    seen = received(stack, tid)
    if status == 200:
        [(_, record)] = seen
        assert "/metadata" in record["path"], (case, record["path"])
        assert internal(record).get("patient") is None and "x-fhirgate-patient " not in record["headers"], (case, record["headers"])
    else:
        assert status in {0, 400, 401, 501}, (case, status)
        assert seen == [], (case, seen)


def test_a_duplicate_authorization_over_http2_is_refused(stack, narrow):
    status, seen = send(stack, "http2", "GET", f"{BASE}/Observation?patient=example",
                        (("authorization", f"Bearer {stack.default_token}"),), token=narrow)
    assert status == 401 and seen == []


# -- slow and abandoned bodies ---------------------------------------------------------------
def test_a_slow_body_is_decided_whole_and_arrives_intact(stack):
    """Sent a few bytes at a time over three seconds: decided once complete, forwarded whole."""
    tid = uuid.uuid4().hex
    body = b'{"resourceType":"Basic","id":"abuse-slow","code":{"text":"' + b"s" * 2000 + b'"}}'
    conn = socket.create_connection(("127.0.0.1", stack.listen_port), timeout=30)
    try:
        conn.sendall((f"PUT {BASE}/Basic/abuse-slow HTTP/1.1\r\nHost: gw\r\nx-test-id: {tid}\r\n"
                      f"Authorization: Bearer {stack.default_token}\r\nContent-Type: application/fhir+json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
        pieces = [body[i:i + 200] for i in range(0, len(body), 200)]
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(3 / len(pieces))
        status = status_of(conn.recv(4096).split(b"\r\n")[0])
    finally:
        conn.close()
    assert status in (200, 201)
    [(_, record)] = received(stack, tid)
    assert record["body"] == body


def test_an_abandoned_body_reaches_no_upstream(stack):
    """Headers and half a body, then the client goes away: nothing is forwarded."""
    tid = uuid.uuid4().hex
    conn = socket.create_connection(("127.0.0.1", stack.listen_port), timeout=10)
    conn.sendall((f"POST {BASE}/Basic HTTP/1.1\r\nHost: gw\r\nx-test-id: {tid}\r\nAuthorization: Bearer {stack.default_token}\r\n"
                  "Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n" + '{"resourceType":"Basic",' + " " * 300).encode())
    time.sleep(1)
    conn.close()
    time.sleep(1)
    assert received(stack, tid) == []


def test_a_request_head_sent_slowly_is_cut_off_with_408(stack):
    """Slowloris: a head that never ends holds no stream beyond request_headers_timeout (10 s)."""
    tid = uuid.uuid4().hex
    conn = socket.create_connection(("127.0.0.1", stack.listen_port), timeout=30)
    try:
        conn.sendall(f"GET {BASE}/metadata HTTP/1.1\r\nHost: gw\r\nx-test-id: {tid}\r\n".encode())
        started = time.monotonic()
        answer = b""
        for _ in range(14):  # one header line a second, never the blank line that ends the head
            time.sleep(1)
            try:
                conn.sendall(b"x-slow: 1\r\n")
            except OSError:
                break
        conn.settimeout(10)
        try:
            answer = conn.recv(4096)
        except OSError:
            pass
        waited = time.monotonic() - started
    finally:
        conn.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert waited < 25 and received(stack, tid) == []


# -- afterwards ------------------------------------------------------------------------------
def test_after_all_of_it_every_vm_still_serves(stack):
    """Runs last in this module: the gateway answers over both protocols on new connections (so
    on both workers), and Envoy neither reloaded nor created a VM (a trapped filter in a
    FAIL_CLOSED chain would answer 503; one in FAIL_RELOAD would be reloaded)."""
    for _ in range(4):
        assert raw(stack, f"GET {BASE}/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()) == b"HTTP/1.1 200 OK"
        assert h2(stack, "GET", f"{BASE}/metadata", ()) == 200
    after = wasm_runtime_stats(stack)
    assert after == BEFORE, {k: (BEFORE.get(k), v) for k, v in after.items() if BEFORE.get(k) != v}
    assert all(v == 0 for k, v in after.items() if ".vm_reload" in k), after


BEFORE: dict = {}


def wasm_runtime_stats(stack) -> dict:
    _, text = http_get(stack.admin_port, "/stats?filter=^wasm\\.")
    return {k: int(v) for k, _, v in (line.partition(": ") for line in text.decode().splitlines()) if v.strip().isdigit()}


@pytest.fixture(scope="module", autouse=True)
def vm_stats_before(stack):
    BEFORE.update(wasm_runtime_stats(stack))
