#!/usr/bin/env bash
# Builds every guest (sample actions and test components) to a WebAssembly
# component at target/guests/<name>.wasm: the Rust crates below, then the
# Python, JavaScript and C guests (scripts/guests/<lang>.sh, each installing
# its pinned toolchain when missing).
#
# Route A (a normal machine): `rustup target add wasm32-wasip2` once, then a
# plain `cargo build --target wasm32-wasip2`; the output is already a component.
#
# Route B (the fallback this script picks when the rustup target is missing,
# e.g. on the CI machine, which cannot download rustup targets): Debian's
# rustc, which ships the wasm targets' std sources, with -Zbuild-std, wasi-libc,
# and wasm-component-ld as the linker. Missing pieces are installed (apt, cargo
# install), which needs root on a fresh Debian 12 machine.
#
# Guests are built in their own target dir (target/guest-build) so that the
# host build in target/ is never invalidated by other flags or another rustc.
# Re-running with nothing changed is a no-op build plus a copy.
#
# Environment:
#   GUEST_PROFILE   cargo profile to build with (default: release)
#   GUEST_ROUTE     force "a" or "b" instead of detecting
#   GUEST_DEBUG=1   keep DWARF line tables in the components (default: stripped)
#   GUEST_LANGS     the languages to build (default: "rust python js c")
#   GUEST_CRATES    the Rust guest crates to build (default: all below), e.g.
#                   "cni-install" (scripts/demo.sh builds only the one it runs)
set -euo pipefail
# A failing step inside $(...) fails the script too.
shopt -s inherit_errexit
# The other languages' toolchains are found on the caller's PATH, not on the
# one route B puts Debian's tools first on.
caller_path=$PATH
langs=" ${GUEST_LANGS:-rust python js c} "

# The guest crates: cargo package names. Each builds <name>.wasm.
ALL_GUEST_CRATES=(
    cni-install
    vxlan-overlay
    probe
    netprobe
    txprobe
    svcprobe
    restart-on-change
    wrong-export
)
if [[ -n "${GUEST_CRATES:-}" ]]; then
    read -r -a GUEST_CRATES <<<"$GUEST_CRATES"
    for crate in "${GUEST_CRATES[@]}"; do
        if [[ " ${ALL_GUEST_CRATES[*]} " != *" $crate "* ]]; then
            printf '[build-guests] GUEST_CRATES: unknown crate %s (one of: %s)\n' \
                "$crate" "${ALL_GUEST_CRATES[*]}" >&2
            exit 2
        fi
    done
else
    GUEST_CRATES=("${ALL_GUEST_CRATES[@]}")
fi

WASM_COMPONENT_LD_VERSION=0.5.31
APT_PACKAGES=(rustc-web cargo-web rust-web-src lld-19 wasi-libc)
WASI_LIBC_DIR=/usr/lib/wasm32-wasi
TARGET=wasm32-wasip2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

profile=${GUEST_PROFILE:-release}
build_dir="$root/target/guest-build"
out_dir="$root/target/guests"

say() { printf '[build-guests] %s\n' "$*" >&2; }

pick_route() {
    if [[ -n "${GUEST_ROUTE:-}" ]]; then
        echo "$GUEST_ROUTE"
    elif command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        echo a
    else
        echo b
    fi
}

# Route B prerequisites: Debian's rustc with the wasm std sources, wasi-libc,
# and the component linker.
ensure_route_b_tools() {
    if [[ ! -x /usr/bin/rustc || ! -x /usr/bin/cargo || ! -d "$WASI_LIBC_DIR" ||
        ! -x /usr/lib/llvm-19/bin/wasm-ld ||
        ! -d /usr/lib/rustlib/src/rust/library ]]; then
        say "installing ${APT_PACKAGES[*]} (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${APT_PACKAGES[@]}"
    fi
    linker=$(command -v wasm-component-ld || true)
    if [[ -z "$linker" && -x "${CARGO_HOME:-$HOME/.cargo}/bin/wasm-component-ld" ]]; then
        linker="${CARGO_HOME:-$HOME/.cargo}/bin/wasm-component-ld"
    fi
    if [[ -z "$linker" ]]; then
        say "installing wasm-component-ld $WASM_COMPONENT_LD_VERSION (cargo install, ~2 min)"
        cargo install --locked "wasm-component-ld@$WASM_COMPONENT_LD_VERSION"
        linker="${CARGO_HOME:-$HOME/.cargo}/bin/wasm-component-ld"
    fi
}

# The Rust guest crates, by route A or B.
build_rust_guests() {
    package_args=()
    # The guests share the workspace's Cargo.lock; never let a build rewrite it.
    [[ -f Cargo.lock ]] && package_args+=(--locked)
    for crate in "${GUEST_CRATES[@]}"; do
        package_args+=(-p "$crate")
    done

    route=$(pick_route)
    export CARGO_TARGET_DIR="$build_dir"
    # Guests ship without DWARF (1.9 MB -> ~20 KB for a small action, and less for
    # the host to compile); the name section stays, so traps still name functions.
    # GUEST_DEBUG=1 keeps line tables. Size-optimized with LTO: about 35% smaller
    # components (cni-install 262 KB -> 166 KB) for no longer a clean build, since
    # std is rebuilt either way. Changing any of this rebuilds std (~1.5 min).
    profile_env=${profile^^}
    profile_env=${profile_env//-/_}
    export "CARGO_PROFILE_${profile_env}_OPT_LEVEL=s"
    export "CARGO_PROFILE_${profile_env}_LTO=true"
    export "CARGO_PROFILE_${profile_env}_CODEGEN_UNITS=1"
    if [[ "${GUEST_DEBUG:-0}" == 1 ]]; then
        export "CARGO_PROFILE_${profile_env}_DEBUG=line-tables-only"
        export "CARGO_PROFILE_${profile_env}_STRIP=none"
    else
        export "CARGO_PROFILE_${profile_env}_DEBUG=false"
        export "CARGO_PROFILE_${profile_env}_STRIP=debuginfo"
    fi
    case "$route" in
    a)
        say "route A: rustup target $TARGET is installed"
        say "cargo build --profile $profile --target $TARGET ${package_args[*]}"
        cargo build --profile "$profile" --target "$TARGET" "${package_args[@]}"
        ;;
    b)
        say "route B: no rustup $TARGET target; using Debian's rustc with -Zbuild-std"
        ensure_route_b_tools
        # wasm-component-ld runs `wasm-ld`, which lld-19 installs under llvm-19.
        export PATH="/usr/bin:/usr/lib/llvm-19/bin:$PATH"
        # Debian's rustc is a stable build; -Zbuild-std needs the nightly gate.
        export RUSTC_BOOTSTRAP=1
        # rustup's proxies would otherwise pick rustup's toolchain through these.
        unset RUSTUP_TOOLCHAIN RUSTC RUSTDOC
        export CARGO_TARGET_WASM32_WASIP2_LINKER="$linker"
        # RUSTFLAGS would override the target's flags, so fold it into them.
        export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-L$WASI_LIBC_DIR -Clink-self-contained=no${RUSTFLAGS:+ $RUSTFLAGS}"
        unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
        say "$(/usr/bin/rustc --version), linker $linker"
        say "cargo build --profile $profile --target $TARGET -Zbuild-std=std,panic_abort ${package_args[*]}"
        /usr/bin/cargo build --profile "$profile" --target "$TARGET" \
            -Zbuild-std=std,panic_abort "${package_args[@]}"
        ;;
    *)
        say "unknown GUEST_ROUTE '$route' (want a or b)"
        exit 2
        ;;
    esac

    # cargo names the dev profile's directory "debug".
    profile_dir=$profile
    [[ "$profile" == dev ]] && profile_dir=debug

    mkdir -p "$out_dir"
    for crate in "${GUEST_CRATES[@]}"; do
        # cdylib artifacts use the crate name with '-' replaced by '_'.
        src="$build_dir/$TARGET/$profile_dir/${crate//-/_}.wasm"
        dst="$out_dir/$crate.wasm"
        if [[ ! -f "$src" ]]; then
            say "missing $src after the build"
            exit 1
        fi
        # A component starts with \0asm and the component-model version 0x0d 0x00 0x01 0x00.
        if [[ "$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')" != 0061736d0d000100 ]]; then
            say "$src is not a component (a core module?)"
            exit 1
        fi
        if ! cmp -s "$src" "$dst"; then
            cp "$src" "$dst"
            say "wrote $dst ($(stat -c %s "$dst") bytes)"
        else
            say "up to date: $dst ($(stat -c %s "$dst") bytes)"
        fi
    done
}

mkdir -p "$out_dir"
# Each language in a subshell: route B's exports stay in its own.
if [[ "$langs" == *" rust "* ]]; then
    (build_rust_guests)
fi
for lang in python js c; do
    [[ "$langs" == *" $lang "* ]] || continue
    (
        export PATH="$caller_path"
        # shellcheck source=/dev/null
        source "$root/scripts/guests/$lang.sh"
        "build_${lang}_guests"
    )
done
