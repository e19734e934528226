#!/usr/bin/env bash
# Regenerates sdk/c/bindings (world files-action) from wit/ with
# wit-bindgen-cli, and records the wit/ files they were made from in
# bindings/wit.sha256 (scripts/guests/c.sh refuses stale bindings). Run it
# after changing wit/, and commit the result: builds do not need wit-bindgen.
set -euo pipefail

# The wit-bindgen version of the workspace's Rust guests (Cargo.toml).
WIT_BINDGEN_VERSION=0.61.1

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ "$(wit-bindgen --version 2>/dev/null)" != "wit-bindgen-cli $WIT_BINDGEN_VERSION" ]]; then
    echo "needs wit-bindgen-cli $WIT_BINDGEN_VERSION; install it (~7 min) with:" >&2
    echo "  cargo install --locked wit-bindgen-cli@$WIT_BINDGEN_VERSION --no-default-features --features c" >&2
    exit 1
fi
wit-bindgen c wit --world files-action --out-dir sdk/c/bindings
sha256sum wit/*.wit >sdk/c/bindings/wit.sha256
