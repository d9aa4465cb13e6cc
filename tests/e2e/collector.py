#!/usr/bin/env python3
"""An audit collector: `collector.py PORT FILE` keeps every record POSTed to it in FILE (JSON
lines, as `fhirgate audit verify` reads them). The compose stack's `audit-collector`; the tests
run the same class in-process (stack.Collector)."""
import pathlib
import sys
import time

from stack import Collector

if __name__ == "__main__":
    collector = Collector(pathlib.Path(sys.argv[2]), port=int(sys.argv[1]))
    print(f"audit collector on {collector.port}, writing {sys.argv[2]}", flush=True)
    while True:
        time.sleep(3600)
