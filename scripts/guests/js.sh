# shellcheck shell=bash
# JavaScript guests: sourced by scripts/build-guests.sh (set -euo pipefail, cwd
# the repository root, `say` and `$out_dir` defined there).
#
# The toolchain is componentize-js, pinned with its lock file in
# scripts/guests/js/ and installed there with `npm ci`. It embeds the
# SpiderMonkey-based StarlingMonkey runtime, so a component is ~12 MB and
# imports every interface of its WIT world whether the code calls it or not.
# `-d http fetch-event` leaves out wasi:http; stdio stays (console.log and
# console.error reach the run's log), as do clocks and random.

# The directory holding package.json and package-lock.json.
JS_TOOLCHAIN_DIR=scripts/guests/js
# Oldest Node.js the pinned toolchain runs on (its preview2-shim dependency
# needs 20; Debian 12's own nodejs is 18).
JS_MIN_NODE_MAJOR=20
# The JavaScript guests: "source world output-name".
JS_GUESTS=(
    "sample-actions/netns-bridge/app.js network-action netns-bridge"
    "tests/actions/js-probe/app.js files-action js-probe"
)

# Checks Node.js (installing Debian's when there is none), then installs the
# pinned toolchain (`npm ci`) when the lock file is newer than what is installed.
ensure_js_toolchain() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        say "installing nodejs and npm (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq nodejs npm
    fi
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    if ((major < JS_MIN_NODE_MAJOR)); then
        say "node $(node --version) is too old: componentize-js 0.23 needs Node.js $JS_MIN_NODE_MAJOR or later"
        return 1
    fi
    # npm ci writes node_modules/.package-lock.json last.
    local stamp="$JS_TOOLCHAIN_DIR/node_modules/.package-lock.json"
    if [[ ! -f "$stamp" || "$JS_TOOLCHAIN_DIR/package-lock.json" -nt "$stamp" ]]; then
        say "npm ci in $JS_TOOLCHAIN_DIR (componentize-js, ~1 min)"
        npm ci --prefix "$JS_TOOLCHAIN_DIR" --no-audit --no-fund --loglevel=error >&2
    fi
}

# Builds each JavaScript guest to $out_dir/<name>.wasm unless it is newer than
# its source, the WIT files and the toolchain's lock file.
build_js_guests() {
    ensure_js_toolchain
    local componentize="$JS_TOOLCHAIN_DIR/node_modules/.bin/componentize-js"
    local work=target/guest-build/js
    mkdir -p "$out_dir" "$work"
    local guest src world name dst newer start
    for guest in "${JS_GUESTS[@]}"; do
        read -r src world name <<<"$guest"
        dst="$out_dir/$name.wasm"
        newer=$(find "$src" wit "$JS_TOOLCHAIN_DIR/package-lock.json" -newer "$dst" -print -quit 2>/dev/null || true)
        if [[ -f "$dst" && -z "$newer" ]]; then
            say "up to date: $dst ($(stat -c %s "$dst") bytes)"
            continue
        fi
        say "componentize-js $src (world $world)"
        start=$SECONDS
        # Written beside and renamed, so a failed build leaves no half file.
        "$componentize" "$src" --wit wit --world-name "$world" \
            --disable http fetch-event --out "$work/$name.wasm"
        mv "$work/$name.wasm" "$dst"
        say "wrote $dst ($(stat -c %s "$dst") bytes, $((SECONDS - start)) s)"
    done
}
