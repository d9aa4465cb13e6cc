# fhirgate — `make run` starts the gateway demo, `make test` runs every test.
# Every target installs what it needs and is missing; running it twice does no work twice.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
TOOLS     := .tools
WASM_DIR  := build/wasm
CLI       := target/debug/fhirgate
PORT      ?= 8080

.PHONY: help tools wasm cli native native-test images compose test test-native lint test-e2e fuzz fuzz-smoke soak run bench bench-chain clean

help:
	@echo "make run     start the demo gateway (Envoy + fhirgate + a FHIR server with example data)"
	@echo "make test    build everything and run every test (native, clippy, end-to-end)"
	@echo "make wasm    build the module into $(WASM_DIR)/fhirgate.wasm"
	@echo "make native build the native Envoy module into build/native/libfhirgate.so"
	@echo "make soak    ten minutes of mixed traffic through the chain (SOAK_SECONDS)"
	@echo "make fuzz    fuzz the core, FUZZ_SECONDS per target (default 600)"
	@echo "make bench   measure the filters' cost against Envoy without them"
	@echo "make images  write the module as an OCI image for Istio (build/images/)"
	@echo "make compose render the gateway for docker compose (envoy/compose/compose.yaml)"

# -- toolchain ------------------------------------------------------------------------------
tools: $(VENV)/.installed $(TOOLS)/.installed $(TOOLS)/.debian

$(VENV)/.installed: tools/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tools/requirements.txt
	touch $@

# HL7 R4 example data and the OAuth issuer the tests run (tools/package.json pins both).
$(TOOLS)/.installed: tools/package.json
	mkdir -p $(TOOLS) && cp tools/package.json $(TOOLS)/package.json
	cd $(TOOLS) && npm install --silent --no-audit --no-fund --no-package-lock
	touch $@

# From Debian: h2load (nghttp2-client) drives the audit load test and the benchmarks; skopeo
# and docker-registry carry the OCI image test; curl speaks HTTP/2 in the abuse tests.
DEBIAN_TOOLS := h2load:nghttp2-client skopeo:skopeo docker-registry:docker-registry curl:curl
$(TOOLS)/.debian:
	@missing=""; for t in $(DEBIAN_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  echo "installing$$missing from Debian"; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; fi
	mkdir -p $(TOOLS) && touch $@

# -- build ----------------------------------------------------------------------------------
wasm:
	tools/build-wasm.sh

cli:
	cargo build -q -p fhirgate-cli

# The same pipeline as an Envoy dynamic module (filters/native): build/native/libfhirgate.so,
# which Envoy 1.40 finds through ENVOY_DYNAMIC_MODULES_SEARCH_PATH=build/native.
native:
	cargo build -q --profile native -p fhirgate-native
	mkdir -p build/native
	cp target/native/libfhirgate_native.so build/native/libfhirgate.so.tmp
	mv build/native/libfhirgate.so.tmp build/native/libfhirgate.so

# The module with test hooks (a panic on request, an ABI it cannot find), for test_native.py.
native-test:
	cargo build -q -p fhirgate-native --features test-hooks
	mkdir -p build/native-test
	cp target/debug/libfhirgate_native.so build/native-test/libfhirgate.so

# The module as an OCI image (Wasm OCI layout, no Docker) in build/images/fhirgate, tag
# $(IMAGE_TAG); prints the manifest and module digests (the module's is a WasmPlugin's sha256).
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# The native module too, as a plain image (one tar layer holding libfhirgate.so) in
# build/images/fhirgate-native, for a Kubernetes image volume (envoy-gateway/).
images: wasm native
	python3 tools/oci-image.py $(WASM_DIR)/fhirgate.wasm build/images/fhirgate --tag $(IMAGE_TAG) --title fhirgate
	python3 tools/oci-image.py build/native/libfhirgate.so build/images/fhirgate-native --tag $(IMAGE_TAG) --title fhirgate-native

# The docker-compose stack's gateway configuration (envoy/compose/compose.yaml mounts it).
compose: tools
	$(PY) envoy/compose/prepare.py

# -- tests ----------------------------------------------------------------------------------
test: test-native lint fuzz-smoke test-e2e

test-native:
	cargo test -q --workspace

lint:
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	cargo fmt --all --check
	cargo clippy -q --workspace --all-targets -- -D warnings

# The end-to-end tests also load the fault instrument (filters/fault), built with the filters.
# Then the whole suite once more against the native module (every test passes on either).
test-e2e: tools cli native native-test
	FHIRGATE_EXTRA_FILTERS=fhirgate-fault tools/build-wasm.sh
	$(PY) -m pytest tests/e2e -q -p no:cacheprovider
	FHIRGATE_DEPLOYMENT=native $(PY) -m pytest tests/e2e -q -p no:cacheprovider

# Coverage-guided fuzzing of the core (fuzz/, libFuzzer + AddressSanitizer): every target for
# FUZZ_SECONDS each, starting from the committed corpora; a crash stops with its input kept.
FUZZ_SECONDS ?= 600
fuzz:
	tools/fuzz.sh run $(FUZZ_SECONDS)

# The short run `make test` includes: each target replays its corpus and fuzzes 10 seconds.
fuzz-smoke:
	tools/fuzz.sh run 10

# Ten minutes of mixed traffic through the whole chain (tests/e2e/test_soak.py; `make test` runs
# it for 45 s): no 5xx, RSS flat within 5%, one audit record per request. Report: build/soak/.
SOAK_SECONDS ?= 600
soak: tools cli
	FHIRGATE_EXTRA_FILTERS=fhirgate-fault tools/build-wasm.sh
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/e2e/test_soak.py -q -p no:cacheprovider -s

# -- demo and benchmarks --------------------------------------------------------------------
# NATIVE=1: the same demo on the native module (build/native/libfhirgate.so) instead of Wasm.
run: tools wasm cli $(if $(NATIVE),native)
	$(if $(NATIVE),FHIRGATE_DEPLOYMENT=native) $(PY) tests/e2e/demo.py --port $(PORT)

bench: tools wasm native
	$(PY) tools/bench.py
	$(PY) tools/bench_chain.py

# The whole-chain part alone (bench/chain.md).
bench-chain: tools wasm native
	$(PY) tools/bench_chain.py

clean:
	rm -rf build target $(VENV) $(TOOLS)
