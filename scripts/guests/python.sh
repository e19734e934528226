# Python guests, built with componentize-py. Sourced by scripts/build-guests.sh
# (bash, `set -euo pipefail`, cwd = the repository root, `say` and `$out_dir`
# defined); it defines build_python_guests.
#
# componentize-py is pinned and installed into a virtualenv under
# target/guest-build/python (python3 and python3-venv come from apt when
# missing, which needs root on a fresh Debian 12 machine). Each guest is a
# directory whose module `app` defines the world's `WitWorld` class; its
# sources are staged under target/guest-build/python/src so that the build
# leaves no __pycache__ in the source tree.

PYTHON_COMPONENTIZE_PY_VERSION=0.25.1

# The Python guests: output name, source directory, WIT world.
PYTHON_GUESTS=(
    "cni-conflist sample-actions/cni-conflist files-action"
    "python-probe tests/actions/python-probe files-action"
)

# Prints the path of a componentize-py of the pinned version, installing it
# into the build's virtualenv first when missing.
ensure_componentize_py() {
    local venv=$1
    local tool="$venv/bin/componentize-py"
    if [[ -x "$tool" ]] &&
        [[ "$("$tool" --version 2>/dev/null)" == "componentize-py $PYTHON_COMPONENTIZE_PY_VERSION" ]]; then
        echo "$tool"
        return
    fi
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        say "installing python3 python3-venv (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq python3 python3-venv >&2
    fi
    say "installing componentize-py $PYTHON_COMPONENTIZE_PY_VERSION (pip, into $venv)"
    rm -rf "$venv"
    # Only the tool's path goes to stdout: the caller captures it.
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "componentize-py==$PYTHON_COMPONENTIZE_PY_VERSION" >&2
    echo "$tool"
}

build_python_guests() {
    local build_dir=target/guest-build/python
    local guest tool name src world out stage newest
    tool=$(ensure_componentize_py "$build_dir/venv")
    for guest in "${PYTHON_GUESTS[@]}"; do
        read -r name src world <<<"$guest"
        out="$out_dir/$name.wasm"
        # Up to date when newer than its sources, the WIT files and the tool.
        newest=$(find "$src" wit "$tool" -type f \( -name '*.py' -o -name '*.wit' -o -path "$tool" \) \
            -newer "$out" -print -quit 2>/dev/null || true)
        if [[ -f "$out" && -z "$newest" ]]; then
            say "up to date: $out ($(stat -c %s "$out") bytes)"
            continue
        fi
        stage="$build_dir/src/$name"
        rm -rf "$stage"
        mkdir -p "$stage"
        cp "$src"/*.py "$stage/"
        say "componentize-py -w $world componentize app ($src)"
        # The component replaces the old one only once it is complete.
        "$tool" --quiet -d wit -w "$world" componentize app -p "$stage" -o "$out.tmp"
        mv "$out.tmp" "$out"
        say "wrote $out ($(stat -c %s "$out") bytes)"
    done
}
