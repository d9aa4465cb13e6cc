"""Hot reload: an Envoy whose listeners come from an LDS file (`render.py --lds`) takes a new
filter configuration and a new module while requests keep coming, and loses none; a bad new
configuration is refused, the old one keeps serving and Envoy logs why."""
import json
import shutil
import threading
import time

from stack import BASE, ROOT, WASM_DIR, Counters, http_get, wait_until
from test_authz import call


class Load:
    """Threads sending requests (a new connection each) until stopped; every answer and every
    failure to get one is counted."""

    def __init__(self, stack, port, token, threads=4):
        self.statuses, self.errors, self.stop_flag = [], [], threading.Event()
        self.lock = threading.Lock()
        paths = [f"{BASE}/metadata", f"{BASE}/Patient/example"]

        def run(i):
            n = 0
            while not self.stop_flag.is_set():
                try:
                    _, status, _, _ = call(stack, "GET", paths[n % 2], token, port=port)
                    with self.lock:
                        self.statuses.append(status)
                except Exception as e:  # noqa: BLE001 — a lost request, whatever the cause
                    with self.lock:
                        self.errors.append(repr(e))
                n += 1

        self.threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=30)


def lds_updates(admin) -> tuple[int, int]:
    stats = Counters(admin, "listener_manager.lds")
    return int(stats.get("listener_manager.lds.update_success", 0)), int(stats.get("listener_manager.lds.update_rejected", 0))


def test_config_and_module_changes_under_load_lose_no_request_and_a_bad_config_is_refused(stack, tmp_path):
    lds = stack.log_dir / "hot" / "listeners.json"
    lds.parent.mkdir(exist_ok=True)
    port, admin = stack.start_variant("envoy-hot", lds=lds)
    values = stack.variant_values("envoy-hot", port, admin)
    token = stack.token("user/Patient.rs", sub="hot-reload")
    assert call(stack, "GET", f"{BASE}/Patient/example", token, port=port)[1] == 200
    success, rejected = lds_updates(admin)

    load = Load(stack, port, token)
    try:
        time.sleep(1)
        # A new routing configuration: at most 5 query parameters.
        routing = json.loads((ROOT / "envoy" / "routing.json").read_text())
        routing["maxQueryParams"] = 5
        stack.render_variant("envoy-hot", {**values, "ROUTING_CONFIG": json.dumps(routing, separators=(",", ":"))}, lds=lds,
                             out=tmp_path / "b1.yaml")
        wait_until("the new configuration", lambda: lds_updates(admin)[0] > success, timeout=30)
        time.sleep(1)
        # A new module (the same build under a new path, as a new version would be).
        modules = tmp_path / "wasm-v2"
        shutil.copytree(WASM_DIR, modules)
        stack.render_variant("envoy-hot", {**values, "WASM_DIR": modules, "ROUTING_CONFIG": json.dumps(routing, separators=(",", ":"))},
                             lds=lds, out=tmp_path / "b2.yaml")
        wait_until("the new module", lambda: lds_updates(admin)[0] > success + 1, timeout=30)
        time.sleep(1)
    finally:
        load.stop()
    assert load.errors == [], load.errors[:5]
    assert len(load.statuses) > 100 and set(load.statuses) == {200}, sorted(set(load.statuses))
    six = "&".join(f"p{i}=x" for i in range(6))
    assert call(stack, "GET", f"{BASE}/Patient?{six}", token, port=port)[1] == 414, "the new configuration is in force"

    # A configuration the routing filter refuses: not applied, the running one keeps serving.
    stack.render_variant("envoy-hot", {**values, "ROUTING_CONFIG": '{"basePath":"no-slash"}'}, lds=lds, out=tmp_path / "bad.yaml")
    wait_until("the refusal", lambda: lds_updates(admin)[1] > rejected, timeout=30)
    assert call(stack, "GET", f"{BASE}/Patient/example", token, port=port)[1] == 200
    assert call(stack, "GET", f"{BASE}/Patient?{six}", token, port=port)[1] == 414, "still the last good configuration"
    assert b"invalid config at `routing.basePath`" in (stack.log_dir / "envoy-hot.log").read_bytes()
