#!/usr/bin/env bash
# Builds the container images the manifests run, with no container engine
# and no base image from the internet: images/<name>.Containerfile, FROM
# scratch, built by Debian's buildah (vfs storage, chroot isolation, a
# storage root of its own, removed afterwards).
#
#   scripts/build-images.sh [--out DIR] [--no-build]
#                           [--only hostaction|hostaction-controller]
#                           [--registry HOST:PORT/PREFIX [--plain-http]]
#
#   hostaction             the node agent (manifests/agent-daemonset.yaml)
#   hostaction-controller  the controller (manifests/controller-deployment.yaml);
#                          refused if the binary carries wasmtime
#
# Each image holds its release binary (stripped: release builds keep their
# symbol table), exactly the shared libraries `ldd` names for it, at the
# paths the dynamic loader looks them up, and the build host's CA bundle.
# Writes OCI image layouts DIR/<name> (default target/images) tagged with the
# workspace version, pushes them to REGISTRY/<name>:<version> with skopeo
# when --registry is given (--plain-http: a registry without TLS), prints
# each image's size and writes DIR/sizes.json:
#   unpacked    bytes of its layers uncompressed (what a node unpacks)
#   compressed  bytes a registry stores: gzip layer blobs + config + manifest
# Budgets (the build fails over them), checked against the unpacked size,
# which bounds the compressed one too: hostaction 40 MiB, controller 25 MiB.
# Needs root (buildah's chroot isolation), buildah, skopeo, binutils, jq.
set -euo pipefail

say() { printf '[build-images] %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET_DIR/images"
BUILD=1
ONLY=""
REGISTRY=""
PLAIN_HTTP=0

usage() {
    sed -n '/^#   scripts/,/^#$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while (($#)); do
    case "$1" in
    --out)
        (($# >= 2)) || usage
        OUT="$2"
        shift 2
        ;;
    --no-build)
        BUILD=0
        shift
        ;;
    --only)
        (($# >= 2)) || usage
        ONLY="$2"
        shift 2
        ;;
    --registry)
        (($# >= 2)) || usage
        REGISTRY="${2%/}"
        shift 2
        ;;
    --plain-http)
        PLAIN_HTTP=1
        shift
        ;;
    -h | --help) usage ;;
    *)
        say "unknown argument: $1"
        usage
        ;;
    esac
done

IMAGES=(hostaction hostaction-controller)
case "$ONLY" in
"") ;;
hostaction | hostaction-controller) IMAGES=("$ONLY") ;;
*) die "--only takes hostaction or hostaction-controller, not '$ONLY'" ;;
esac
if ((PLAIN_HTTP)) && [[ -z "$REGISTRY" ]]; then
    die "--plain-http needs --registry"
fi

MIB=$((1024 * 1024))
budget_of() {
    case "$1" in
    hostaction) echo $((40 * MIB)) ;;
    hostaction-controller) echo $((25 * MIB)) ;;
    esac
}

for tool in buildah skopeo objcopy readelf ldd jq gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-test-deps.sh installs it)"
done
(($(id -u) == 0)) || die "needs root (buildah's chroot isolation)"

# The workspace version: [workspace.package] version in Cargo.toml.
VERSION="$(awk '/^\[workspace.package\]/{p=1;next} /^\[/{p=0} p && /^version *=/{gsub(/[" ]/,"",$0); sub(/^version=/,"",$0); print; exit}' "$ROOT/Cargo.toml")"
[[ -n "$VERSION" ]] || die "no [workspace.package] version in $ROOT/Cargo.toml"

# --all-targets, as the test suite builds: the features of the dependencies
# are unified with the tests' (dev-dependencies), so the images hold the
# binaries the tests ran, and no dependency is built a second time with
# other features (`--bins` alone would).
if ((BUILD)); then
    say "cargo build --release --workspace --all-targets"
    (cd "$ROOT" && cargo build --release --workspace --all-targets)
fi

CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[[ -f "$CA_BUNDLE" ]] || die "no CA bundle at $CA_BUNDLE (Debian's ca-certificates)"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# buildah's storage and the build contexts: private to this run, removed at exit.
WORK="$(mktemp -d "$TARGET_DIR/build-images.XXXXXX")"
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
cleanup() {
    "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Copies FILE (following symlinks) to the same path under ROOTFS.
stage() {
    local rootfs="$1" file="$2"
    mkdir -p "$rootfs$(dirname "$file")"
    cp -L "$file" "$rootfs$file"
}

# The shared libraries BINARY links, one path a line, as the loader finds
# them (ldd's `name => /path` and the loader's own absolute path).
libraries() {
    ldd "$1" | awk '
        /=> not found/ { print "MISSING " $1; next }
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }'
}

# A release binary must not carry wasmtime into the controller's image.
check_no_wasmtime() {
    local binary="$1"
    if grep -aq wasmtime "$binary"; then
        die "$binary carries wasmtime (its symbols or strings name it): the controller must not link it"
    fi
    # The tree is read whole before grep looks at it: `cargo tree | grep -q`
    # under pipefail fails open when grep's early exit breaks cargo's pipe.
    local tree=""
    if command -v cargo >/dev/null; then
        tree="$(cargo tree --manifest-path "$ROOT/Cargo.toml" --offline \
            -p hostaction-controller -e normal --prefix none 2>/dev/null || true)"
    fi
    if grep -q '^wasmtime ' <<<"$tree"; then
        die "hostaction-controller depends on wasmtime (cargo tree -p hostaction-controller -e normal)"
    fi
}

# Sizes of the image in the OCI layout DIR: "unpacked compressed".
sizes_of() {
    local dir="$1" manifest config unpacked=0 compressed layer
    manifest="$(jq -r --arg tag "$VERSION" \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $tag) | .digest' \
        "$dir/index.json" | head -n 1)"
    [[ -n "$manifest" ]] || die "$dir has no manifest tagged $VERSION"
    manifest="$dir/blobs/${manifest/://}"
    config="$dir/blobs/$(jq -r '.config.digest | sub(":"; "/")' "$manifest")"
    compressed=$(($(stat -c %s "$manifest") + $(stat -c %s "$config")))
    while read -r layer media; do
        local blob="$dir/blobs/${layer/://}"
        compressed=$((compressed + $(stat -c %s "$blob")))
        case "$media" in
        *gzip) unpacked=$((unpacked + $(gzip -dc "$blob" | wc -c))) ;;
        *zstd) unpacked=$((unpacked + $(zstd -dc "$blob" | wc -c))) ;;
        *) unpacked=$((unpacked + $(stat -c %s "$blob"))) ;;
        esac
    done < <(jq -r '.layers[] | "\(.digest) \(.mediaType)"' "$manifest")
    echo "$unpacked $compressed"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

SIZES="{}"
failed=0
for name in "${IMAGES[@]}"; do
    binary="$TARGET_DIR/release/$name"
    [[ -x "$binary" ]] || die "$binary is missing: build it (cargo build --release --workspace --all-targets) or drop --no-build"
    containerfile="$ROOT/images/$name.Containerfile"
    [[ -f "$containerfile" ]] || die "$containerfile is missing"
    if [[ "$name" == hostaction-controller ]]; then
        check_no_wasmtime "$binary"
    fi

    context="$WORK/context-$name"
    rootfs="$context/rootfs"
    mkdir -p "$rootfs"
    cp "$containerfile" "$context/Containerfile"
    objcopy --strip-all "$binary" "$rootfs/$name"
    while read -r lib; do
        [[ "$lib" != MISSING* ]] || die "$binary links a library ldd cannot find: ${lib#MISSING }"
        stage "$rootfs" "$lib"
    done < <(libraries "$binary")
    # The loader the binary names (PT_INTERP) must be one of them.
    interp="$(readelf -p .interp "$binary" 2>/dev/null | awk '/\[/ { print $NF }')"
    [[ -z "$interp" || -f "$rootfs$interp" ]] || die "$name's loader $interp is not among ldd's libraries"
    stage "$rootfs" "$CA_BUNDLE"

    tag="localhost/hostaction/$name:$VERSION"
    say "building $name $VERSION ($(find "$rootfs" -type f | sed "s|^$rootfs||" | sort | tr '\n' ' '))"
    "${BUILDAH[@]}" bud --quiet --isolation chroot --layers=false --timestamp 0 \
        --build-arg "VERSION=$VERSION" -f "$context/Containerfile" -t "$tag" "$context" >/dev/null
    rm -rf "${OUT:?}/$name"
    "${BUILDAH[@]}" push --quiet "$tag" "oci:$OUT/$name:$VERSION"
    "${BUILDAH[@]}" rmi --force "$tag" >/dev/null

    read -r unpacked compressed < <(sizes_of "$OUT/$name")
    budget="$(budget_of "$name")"
    verdict=ok
    if ((unpacked > budget)); then
        verdict="OVER BUDGET"
        failed=1
    fi
    printf '%-28s %s unpacked, %s compressed (budget %s unpacked): %s\n' "$name:$VERSION" \
        "$(mib "$unpacked")" "$(mib "$compressed")" "$(mib "$budget")" "$verdict"
    SIZES="$(jq --arg name "$name" --arg version "$VERSION" --argjson unpacked "$unpacked" \
        --argjson compressed "$compressed" --argjson budget "$budget" \
        '.[$name] = {version: $version, unpacked: $unpacked, compressed: $compressed, budget: $budget}' \
        <<<"$SIZES")"

done

# Pushed only when every image built is within its budget: an image over it
# never reaches the registry.
if [[ -n "$REGISTRY" ]] && ((failed == 0)); then
    for name in "${IMAGES[@]}"; do
        tls=()
        ((PLAIN_HTTP)) && tls=(--dest-tls-verify=false)
        say "pushing $REGISTRY/$name:$VERSION"
        skopeo copy --quiet "${tls[@]}" "oci:$OUT/$name:$VERSION" "docker://$REGISTRY/$name:$VERSION"
    done
fi

# Merge with the sizes of an image --only left alone.
if [[ -f "$OUT/sizes.json" ]] && [[ -n "$ONLY" ]]; then
    SIZES="$(jq -s '.[0] * .[1]' "$OUT/sizes.json" <(echo "$SIZES"))"
fi
echo "$SIZES" >"$OUT/sizes.json"
((failed == 0)) || die "an image is over its budget (see above; $OUT/sizes.json)"
