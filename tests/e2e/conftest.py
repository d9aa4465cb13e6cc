"""Starts one gateway stack for the whole end-to-end session and stops it at the end.
Logs and the rendered Envoy config stay in build/e2e/ for a failed run to be read."""
import pytest

from stack import ROOT, Stack

LOG_DIR = ROOT / "build" / "e2e"


@pytest.fixture(scope="session")
def stack():
    with Stack(LOG_DIR / "stack") as s:
        yield s


def pytest_sessionfinish(session, exitstatus):
    if exitstatus != 0:
        print(f"\nend-to-end logs: {LOG_DIR}")


