#!/usr/bin/env bash
# Fuzzes every parser of untrusted input for a bounded time, each target from
# its committed corpus (fuzz/corpus/TARGET) plus what earlier runs on this
# machine found: the Rust targets of fuzz/ (cargo fuzz, libFuzzer) and the C
# SDK's JSON parser (libFuzzer via clang, with ASan and UBSan). Fails on a
# crash, a timeout or running out of memory, printing the input (base64) and
# keeping it in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60, all)
#
# Targets: grant static_manifest static_state oci_manifest oci_reference
# network_args files_path files_ops unit_name (runtime/, distribution/ and
# agent/src/fuzzing.rs) and
# c_json (fuzz/c/json_fuzz.c).
#
# Installs what it needs: cargo-fuzz (pinned) and clang with libFuzzer (apt).
# Environment: FUZZ_JOBS (targets run at once; default: the number of CPUs),
# FUZZ_CODEGEN_UNITS (16 by default: a faster build; 1 fuzzes faster),
# FUZZ_SANITIZER (`none` for the Rust targets by default; `address` needs
# nightly, or RUSTC_BOOTSTRAP=1 on stable, which this script sets),
# HOSTACTION_CI_CACHE (where builds and found inputs are kept).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
shift || true
CARGO_FUZZ_VERSION=0.13.2
LLVM=19
CLANG=clang-$LLVM
TRIPLE=x86_64-unknown-linux-gnu
ALL_TARGETS=(grant static_manifest static_state oci_manifest oci_reference network_args
    files_path files_ops unit_name c_json)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${ALL_TARGETS[@]}"); fi

# Instrumented for libFuzzer, every dependency (wasmtime included) is a build
# of its own, ~1 GB: kept outside the clone, so that the next run on this
# machine (CI's included) rebuilds only what changed. Without a writable
# cache directory, under fuzz/target.
cache=${HOSTACTION_CI_CACHE:-/var/cache/hostaction-ci}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
    cache=$PWD/fuzz/target
fi
target_dir=$cache/fuzz-target
found=$cache/fuzz-corpus
mkdir -p "$target_dir" "$found"

step() { printf '\n-- %s\n' "$*" >&2; }

if ! cargo fuzz --version 2>/dev/null | grep -qF " $CARGO_FUZZ_VERSION"; then
    step "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
if ! command -v "$CLANG" >/dev/null ||
    ! compgen -G "/usr/lib/llvm-$LLVM/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null; then
    step "installing $CLANG and libclang-rt-$LLVM-dev (apt)"
    apt-get install -y -qq "$CLANG" "libclang-rt-$LLVM-dev" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "$CLANG" "libclang-rt-$LLVM-dev" >/dev/null; }
fi

# The Rust targets: release (-O) without debug assertions in the
# dependencies (fuzz/Cargo.toml turns them and overflow checks on for the
# project's crates), and no sanitizer by default: the project's crates have no
# unsafe code, so AddressSanitizer would mostly instrument wasmtime and the
# other dependencies, lengthening the build and slowing every run for memory
# errors the parsers cannot make. A panic is what these targets find.
sanitizer=${FUZZ_SANITIZER:-none}
rust_targets=()
for t in "${targets[@]}"; do [ "$t" = c_json ] || rust_targets+=("$t"); done
started=$SECONDS
if [ ${#rust_targets[@]} -gt 0 ]; then
    step "building ${rust_targets[*]} (cargo fuzz, sanitizer $sanitizer, in $target_dir)"
    toolchain=()
    if [ "$sanitizer" != none ]; then
        if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
            toolchain=(+nightly)
        else
            export RUSTC_BOOTSTRAP=1
        fi
    fi
    build() {
        cargo "${toolchain[@]}" fuzz build --fuzz-dir fuzz -O --sanitizer "$sanitizer" \
            --codegen-units "${FUZZ_CODEGEN_UNITS:-16}" \
            --target-dir "$target_dir" "$@"
    }
    if [ ${#rust_targets[@]} = $((${#ALL_TARGETS[@]} - 1)) ]; then
        build # all of them, in one cargo build
    else
        for t in "${rust_targets[@]}"; do build "$t"; done
    fi
fi
if printf '%s\n' "${targets[@]}" | grep -qx c_json; then
    step "building c_json ($CLANG -fsanitize=fuzzer,address,undefined)"
    mkdir -p "$target_dir/$TRIPLE/release"
    "$CLANG" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -Isdk/c fuzz/c/json_fuzz.c sdk/c/hostaction_json.c -o "$target_dir/$TRIPLE/release/c_json"
fi
built=$((SECONDS - started))
# files_ops runs file operations through the test probe component.
export HOSTACTION_FUZZ_PROBE=$PWD/target/guests/probe.wasm
if printf '%s\n' "${targets[@]}" | grep -qx files_ops && [ ! -e "$HOSTACTION_FUZZ_PROBE" ]; then
    step "building the Rust guests for files_ops (scripts/build-guests.sh)"
    GUEST_LANGS=rust scripts/build-guests.sh
fi

# One target: its binary on the new-inputs directory (written) and the
# committed corpus (read), for `seconds`; prints one line, and the input and
# the fuzzer's report on a failure.
run_one() {
    local t=$1 log
    log=$(mktemp)
    mkdir -p "$found/$t" "fuzz/artifacts/$t"
    # -use_value_profile: comparisons' operands guide the search too, which
    # finds boundaries (a timestamp an hour before the last one, say) soon.
    if "$target_dir/$TRIPLE/release/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -timeout=20 -use_value_profile=1 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" \
        "$found/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
        local runs corpus
        runs=$(grep -o '^stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        corpus=$(find "$found/$t" "fuzz/corpus/$t" -type f | wc -l)
        printf '%-16s ok: %s runs in %s s, %s inputs in its corpus\n' "$t" "$runs" "$seconds" "$corpus"
        rm -f "$log"
        return 0
    fi
    printf '%-16s FAILED; the fuzzer said:\n' "$t"
    grep -v '^#[0-9]' "$log" | tail -n 60
    for input in $(sed -n 's/.*Test unit written to \(fuzz\/artifacts\/[^ ]*\).*/\1/p' "$log" | sort -u); do
        printf '%s (base64): %s\n' "$input" "$(base64 -w0 "$input")"
    done
    printf 'Replay: %s %s\n' "$target_dir/$TRIPLE/release/$t" "fuzz/artifacts/$t/..."
    rm -f "$log"
    return 1
}
export -f run_one
export seconds target_dir found TRIPLE

jobs=${FUZZ_JOBS:-$(nproc)}
step "running ${#targets[@]} targets, $seconds s each, $jobs at a time"
started=$SECONDS
status=0
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "$1"' _ {} || status=1
ran=$((SECONDS - started))
printf 'fuzzing: built in %d s, ran in %d s; %s\n' "$built" "$ran" \
    "$([ $status = 0 ] && echo 'no crash' || echo 'a target FAILED (inputs in fuzz/artifacts/)')" >&2
exit $status
