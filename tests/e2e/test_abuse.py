"""Abuse through Envoy, over HTTP/1.1 (raw bytes) and HTTP/2 (curl, prior knowledge): request
smuggling, duplicated credentials, forged internal headers, path tricks and method overrides are
refused or normalised, none gets past authorization, and the gateway keeps serving."""
import socket
import subprocess

import pytest

from stack import BASE
from test_routing import internal, received


def raw(stack, request: bytes) -> bytes:
    """Sends bytes as they are; returns the status line."""
    conn = socket.create_connection(("127.0.0.1", stack.listen_port), timeout=10)
    try:
        conn.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n")[0]
    finally:
        conn.close()


def h2(stack, path, *headers, method="GET"):
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge", "-X", method,
            f"http://127.0.0.1:{stack.listen_port}{path}"]
    for h in headers:
        args += ["-H", h]
    return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.split()


def test_content_length_with_transfer_encoding_is_refused(stack):
    req = f"POST {BASE}/Patient HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    assert raw(stack, req.encode()) == b"HTTP/1.1 400 Bad Request"


def test_two_authorization_headers_are_refused_and_never_forwarded(stack):
    token = stack.token("user/Patient.rs", sub="abuse-dup")
    req = (f"GET {BASE}/Patient/example HTTP/1.1\r\nHost: x\r\nx-test-id: abuse-dup\r\nAuthorization: Bearer {token}\r\n"
           f"Authorization: Bearer {stack.token('system/*.cruds', sub='someone-else')}\r\nConnection: close\r\n\r\n")
    assert raw(stack, req.encode()).startswith(b"HTTP/1.1 401")
    assert received(stack, "abuse-dup") == []


def test_over_http2_forged_internal_headers_never_reach_the_upstream(stack):
    token = stack.token("user/Patient.rs", sub="abuse-h2")
    status, version = h2(stack, f"{BASE}/Patient/example", f"authorization: Bearer {token}", "x-test-id: abuse-h2",
                         "X-FhirGate-Patient: other", "x-fhirgate-subject: admin", "x-fhirgate-break-glass: ETREAT")
    assert (status, version) == ("200", "2")
    [(_, record)] = received(stack, "abuse-h2")
    seen = internal(record)
    assert seen["subject"] == ["abuse-h2"] and seen["patient"] == ["example"] and "break-glass" not in seen


@pytest.mark.parametrize("path,headers", [
    (f"{BASE}/Patient/..%2F..%2Fadmin", ()),
    (f"{BASE}//Patient/example", ()),
    (f"{BASE}/Patient/%252e%252e/example", ()),
    (f"{BASE}/Patient/example", ("x-http-method-override: DELETE",)),
])
def test_over_http2_path_tricks_and_method_overrides_are_refused(stack, path, headers):
    token = stack.token("system/*.cruds", sub="abuse-h2-paths")
    status, version = h2(stack, path, f"authorization: Bearer {token}", *headers)
    assert version == "2" and status == "400", (path, status)


def test_after_all_of_it_the_gateway_still_serves(stack):
    assert raw(stack, f"GET {BASE}/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()) == b"HTTP/1.1 200 OK"
    assert h2(stack, f"{BASE}/metadata") == ["200", "2"]
