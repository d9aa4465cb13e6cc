"""`make run` works: the demo starts and every example it prints answers as it says."""
import subprocess
import sys

from demo import EXAMPLES
from stack import ROOT, free_port


def test_demo_examples_answer_as_printed():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "e2e" / "demo.py"), "--smoke", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count("-> ") == len(EXAMPLES) >= 14
    assert "UNEXPECTED" not in result.stdout
