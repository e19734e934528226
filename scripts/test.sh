#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it is
# missing (scripts/install-test-deps.sh), builds the guest components from
# source, checks formatting, lints and dependencies, then runs every test (unit
# tests, the end-to-end tests in tests/ — one binary, tests/tests/all/ — and the
# CLI tests) in release mode, so that wasmtime compiles components at full
# speed and is built once for tests,
# the CLI and the benchmarks (one `--workspace --all-targets` build: building
# one package alone would unify other features and build the dependencies
# again).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "what the tests need (scripts/install-test-deps.sh)"
scripts/install-test-deps.sh

# etcd, kube-apiserver, kubectl and kube-controller-manager (its garbage
# collector) from source into a cache outside the clone
# (~6-11 min the first time on 2 cores, a moment after): the tests that need a
# real Kubernetes control plane use them (tests/src/kube_control_plane.rs).
step "a Kubernetes control plane (scripts/build-control-plane.sh)"
HOSTACTION_CONTROL_PLANE_BIN=$(scripts/build-control-plane.sh --with-controller-manager | tail -n 1)
export HOSTACTION_CONTROL_PLANE_BIN

step "cosign for the signature interop tests (scripts/build-cosign.sh, cached like the control plane)"
HOSTACTION_COSIGN=$(scripts/build-cosign.sh | tail -n 1)
export HOSTACTION_COSIGN

step "guest components (scripts/build-guests.sh)"
scripts/build-guests.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --locked --workspace --all-targets -- -D warnings

# Advisories need the advisory database from the network, which this machine
# cannot reach; licences, bans and sources are checked offline.
step "cargo deny check bans licenses sources"
# Every platform's crates, so that the licence check sees them all.
cargo fetch --locked >/dev/null
cargo deny --offline check bans licenses sources

# Offline: the schemas ship with the tool. The CRDs' own rules (CEL) are
# checked by the crds tests.
step "kubernetes-validate manifests/*.yaml (Kubernetes 1.33)"
kubernetes-validate --quiet --strict -k 1.33.0 manifests/*.yaml

# The kustomize base and the example overlay, rendered by the control plane's
# kubectl (kustomize is built in); the real API server checks them too
# (tests/tests/all/real_kustomize.rs).
step "kubectl kustomize manifests/ and deploy/overlays/example/, kubernetes-validate"
rendered=$(mktemp -d)
"$HOSTACTION_CONTROL_PLANE_BIN/kubectl" kustomize manifests >"$rendered/base.yaml"
"$HOSTACTION_CONTROL_PLANE_BIN/kubectl" kustomize deploy/overlays/example >"$rendered/example.yaml"
kubernetes-validate --quiet --strict -k 1.33.0 "$rendered/base.yaml" "$rendered/example.yaml"
rm -rf "$rendered"

step "cargo build --release --workspace --all-targets (tests, the CLI, the benchmarks)"
cargo build --locked --release --workspace --all-targets

# Every parser of untrusted input, fuzzed from its committed corpus for a
# bounded time (README "Fuzzing"); a crash fails the suite.
step "fuzzing (scripts/fuzz.sh ${FUZZ_SECONDS:-15}: seconds per target)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

step "cargo test --release"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --release --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
