"""Issue 14, class 5: a Bulk Data job's status, file and cancel URLs belong to the client that
kicked it off, with scopes that still cover what it exported (Bulk Data IG 2.0, Privacy and
Security) — through a real Envoy in front of the FHIR server's own $export."""
import json
import time
import urllib.parse
import uuid

import pytest

from stack import BASE
from test_authz import call
from test_routing import audit_of, outcome_reason, parsed, received

ASYNC = {"prefer": "respond-async", "accept": "application/fhir+json"}


def path_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture(scope="module")
def job(stack):
    client = f"etl-{uuid.uuid4().hex[:6]}"
    owner = stack.token("system/Patient.rs system/Observation.rs", client_id=client, sub=client)
    _, status, headers, body = call(stack, "GET", f"{BASE}/$export?_type=Patient", owner, headers=ASYNC)
    assert status == 202, body[:300]
    status_path = path_of(headers["content-location"])
    assert status_path.startswith(f"{BASE}/bulk-status/"), status_path
    deadline = time.time() + 60
    while True:
        _, status, _, manifest = call(stack, "GET", status_path, owner)
        if status == 200:
            break
        assert status == 202 and time.time() < deadline, (status, manifest[:300])
        time.sleep(0.5)
    files = [path_of(o["url"]) for o in json.loads(manifest)["output"]]
    assert files, manifest[:300]
    return {"client": client, "owner": owner, "status": status_path, "files": files}


def test_another_client_cannot_poll_download_or_cancel(stack, job):
    thief = stack.token("system/*.rs", client_id="thief-app", sub="thief-app")
    for method, path in [("GET", job["status"]), ("GET", job["files"][0]), ("DELETE", job["status"])]:
        tid, status, _, body = call(stack, method, path, thief)
        assert (status, outcome_reason(body)) == (403, "bulk-job-forbidden"), (method, path)
        assert received(stack, tid) == [], "never forwarded"


def test_any_valid_token_of_the_same_client_without_covering_scopes_is_refused(stack, job):
    weak = stack.token("openid", client_id=job["client"], sub=job["client"])
    _, status, _, body = call(stack, "GET", job["files"][0], weak)
    assert (status, outcome_reason(body)) == (403, "bulk-job-forbidden")


def test_the_kicking_client_downloads_its_files(stack, job):
    tid, status, _, body = call(stack, "GET", job["files"][0], job["owner"])
    assert status == 200, body[:300]
    [(cluster, record)] = received(stack, tid)
    assert cluster == "fhir_bulk" and record["path"] == job["files"][0].replace(BASE, "/fhir", 1)
    assert parsed(audit_of(stack, record))["interaction"] == "passthrough"
    assert all(json.loads(line)["resourceType"] == "Patient" for line in body.decode().splitlines() if line.strip())


def test_a_url_never_issued_is_refused_and_dot_matrix_tricks_are_malformed(stack, job):
    _, status, _, body = call(stack, "GET", f"{BASE}/bulk-status/{uuid.uuid4().hex}", job["owner"])
    assert (status, outcome_reason(body)) == (403, "bulk-job-forbidden")
    for trick in (f"{BASE}/bulk-files/..;/..;/Patient", f"{BASE}/bulk-status/x;jsessionid=1", f"{BASE}/bulk-files/%2E%2E%3B/Patient"):
        tid, status, _, body = call(stack, "GET", trick, job["owner"])
        # Refused as malformed by the routing filter (400), or outside every route once Envoy
        # normalised the path (404): never forwarded.
        assert (status, outcome_reason(body)) in ((400, "invalid-path"), (404, "not-fhir-endpoint")), (trick, status, body[:200])
        assert received(stack, tid) == [], trick
