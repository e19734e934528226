#!/usr/bin/env bash
# Quick start: builds hostaction and the cni-install sample action (nothing
# else), then runs it on this host against a scratch host root, twice: the
# first run installs a CNI conflist and a file under /opt/cni/bin; the second
# changes nothing.
# Pass a directory to use it as the host root instead (`/` means this host).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

host_root=${1:-$(mktemp -d -t hostaction-demo.XXXXXX)}

# Only what the demo runs: the one Rust guest, and the `hostaction` binary
# (not the other guests, languages, tests or benchmarks).
GUEST_LANGS=rust GUEST_CRATES=cni-install scripts/build-guests.sh
cargo build --locked --release -p hostaction-cli --bin hostaction
hostaction=${CARGO_TARGET_DIR:-target}/release/hostaction

for run in first second; do
    printf '\n== %s run: hostaction run cni-install --host-root %s\n' "$run" "$host_root"
    "$hostaction" run target/guests/cni-install.wasm \
        --grants sample-actions/cni-install/grants.yaml \
        --params @sample-actions/cni-install/params.json \
        --host-root "$host_root"
done

printf '\n== what is now under %s\n' "$host_root"
find "$host_root" -path "$host_root/proc" -prune -o -print | sed "s|^$host_root||" | sort | head -50
