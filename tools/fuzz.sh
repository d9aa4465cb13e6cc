#!/usr/bin/env bash
# Coverage-guided fuzzing of the core with libFuzzer (fuzz/, cargo-fuzz's layout), using the
# machine's stable toolchain: RUSTC_BOOTSTRAP lets it take the same sanitizer and coverage
# flags cargo-fuzz passes on nightly, so no nightly and no cargo-fuzz are needed.
#
#   tools/fuzz.sh build                 build every target (AddressSanitizer + coverage)
#   tools/fuzz.sh run SECONDS [TARGET…] fuzz each target for SECONDS (default: all targets)
#   tools/fuzz.sh merge [TARGET…]       fold build/fuzz/corpus/<t> into fuzz/corpus/<t>, minimised
#   tools/fuzz.sh list                  the targets
#   FUZZ_NO_BUILD=1 tools/fuzz.sh run … run what was built (parallel lanes share one build)
#
# Each run starts from the committed corpus (fuzz/corpus/<target>) and the seeds
# (fuzz/seeds/<target>), works in build/fuzz/corpus/<target>, and stops at the first crash,
# panic, leak, timeout (5 s per input) or allocation over 512 MiB, leaving the input in
# build/fuzz/artifacts/<target>/. A summary line per target goes to build/fuzz/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=target/fuzz/$TRIPLE/release
targets() { sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^fhirgate-fuzz$'; }

build() {
  # The flags cargo-fuzz uses: sancov instrumentation for libFuzzer, ASan, debug assertions.
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Zsanitizer=address -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers" \
    cargo build -q --release --manifest-path fuzz/Cargo.toml --target "$TRIPLE" --target-dir target/fuzz --bins
}

run() {
  local seconds=$1; shift
  local list=("$@")
  [ ${#list[@]} -eq 0 ] && mapfile -t list < <(targets)
  mkdir -p build/fuzz
  for t in "${list[@]}"; do
    local work=build/fuzz/corpus/$t artifacts=build/fuzz/artifacts/$t
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
    local seeds=(); [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    local dict=(); [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    local log=build/fuzz/$t.log
    echo "fuzz: $t for ${seconds}s" >&2
    if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 "$BIN/$t" "$work" "fuzz/corpus/$t" "${seeds[@]}" \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" >"$log" 2>&1; then
      echo "fuzz: $t FAILED — see $log and $artifacts/" >&2
      tail -40 "$log" >&2
      exit 1
    fi
    local runs cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    echo "$(date -u +%FT%TZ) $t seconds=$seconds executions=${runs:-?} coverage=${cov:-?} corpus=$(find "$work" -type f | wc -l)" | tee -a build/fuzz/summary.txt >&2
  done
}

# Folds what runs found into the committed corpus, keeping only inputs that add coverage.
merge() {
  local list=("$@")
  [ ${#list[@]} -eq 0 ] && mapfile -t list < <(targets)
  for t in "${list[@]}"; do
    [ -d "build/fuzz/corpus/$t" ] || continue
    mkdir -p "fuzz/corpus/$t"
    ASAN_OPTIONS=detect_leaks=0 "$BIN/$t" -merge=1 -timeout=5 -rss_limit_mb=2048 -max_len=65536 \
      "fuzz/corpus/$t" "build/fuzz/corpus/$t" >"build/fuzz/$t.merge.log" 2>&1
    echo "fuzz: $t corpus $(find "fuzz/corpus/$t" -type f | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)" >&2
  done
}

case "${1:-}" in
  build) build ;;
  run) shift; [ -n "${FUZZ_NO_BUILD:-}" ] || build; run "$@" ;;
  merge) shift; merge "$@" ;;
  list) targets ;;
  *) echo "usage: tools/fuzz.sh build | run SECONDS [TARGET…] | merge [TARGET…] | list" >&2; exit 2 ;;
esac
