"""OCI images without Docker: a module written by tools/oci-image.py is pushed with skopeo to a
real registry (Debian's docker-registry) and pulled back byte-identical, with the Wasm layer
media type Istio looks for; the native module as a plain image whose one tar layer holds
libfhirgate.so (what a Kubernetes image volume mounts)."""
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

from stack import NATIVE_DIR, ROOT, WASM_DIR, Process, free_port, http_get, wait_until

LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
NATIVE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def registry(tmp_path):
    port = free_port()
    (tmp_path / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    process = Process("registry", ["docker-registry", "serve", str(tmp_path / "registry.yml")], tmp_path / "registry.log")
    wait_until("the registry", lambda: http_get(port, "/v2/")[0] == 200, timeout=30, process=process)
    return port, process


def test_the_native_module_image_pulls_back_with_the_module_in_its_one_layer(tmp_path):
    module = NATIVE_DIR / "libfhirgate.so"
    image = tmp_path / "image"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "oci-image.py"), str(module), str(image), "--tag", "0.1.0",
                          "--title", "fhirgate-native"], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("module sha256:" + hashlib.sha256(module.read_bytes()).hexdigest())
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(ROOT / "tools" / "oci-image.py"), str(module), str(again), "--tag", "0.1.0", "--title", "fhirgate-native"],
                   capture_output=True, text=True, check=True)
    assert (again / "index.json").read_text() == (image / "index.json").read_text(), "the image is deterministic"
    port, process = registry(tmp_path)
    try:
        remote = f"docker://127.0.0.1:{port}/fhirgate/fhirgate-native:0.1.0"
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{image}:0.1.0", remote], check=True, capture_output=True)
        manifest = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", remote],
                                             check=True, capture_output=True).stdout)
        [layer] = manifest["layers"]
        assert layer["mediaType"] == NATIVE_LAYER
        pulled = tmp_path / "pulled"
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", remote, f"oci:{pulled}:0.1.0"], check=True, capture_output=True)
        tar_bytes = gzip.decompress((pulled / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            [member] = tar.getmembers()
            assert member.name == "libfhirgate.so" and member.mode == 0o755
            assert tar.extractfile(member).read() == module.read_bytes()
        config = json.loads((pulled / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    finally:
        process.stop()


def test_an_image_pushed_to_a_registry_pulls_back_byte_identical(tmp_path):
    module = WASM_DIR / "fhirgate.wasm"
    image = tmp_path / "image"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "oci-image.py"), str(module), str(image), "--tag", "0.1.0",
                          "--title", "fhirgate"], capture_output=True, text=True, check=True).stdout
    manifest_digest = out.split(" manifest ")[1].split()[0]
    module_digest = "sha256:" + hashlib.sha256(module.read_bytes()).hexdigest()
    assert out.strip().endswith(f"module {module_digest}")

    port = free_port()
    (tmp_path / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    registry = Process("registry", ["docker-registry", "serve", str(tmp_path / "registry.yml")], tmp_path / "registry.log")
    try:
        wait_until("the registry", lambda: http_get(port, "/v2/")[0] == 200, timeout=30, process=registry)
        remote = f"docker://127.0.0.1:{port}/fhirgate/fhirgate:0.1.0"
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{image}:0.1.0", remote], check=True, capture_output=True)
        raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", remote], check=True, capture_output=True).stdout
        manifest = json.loads(raw)
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == manifest_digest, "the registry keeps the manifest as written"
        assert [(l["mediaType"], l["digest"]) for l in manifest["layers"]] == [(LAYER, module_digest)]
        pulled = tmp_path / "pulled"
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", remote, f"oci:{pulled}:0.1.0"], check=True, capture_output=True)
        assert (pulled / "blobs" / "sha256" / module_digest.split(":")[1]).read_bytes() == module.read_bytes()
    finally:
        registry.stop()
