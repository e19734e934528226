#!/usr/bin/env bash
# Builds the cosign CLI (tools/cosign: github.com/sigstore/cosign/v2, pinned by
# its go.sum) from the Go module proxy, for the signature interop tests.
#
# Cached outside the clone, keyed by the wrapper module and this recipe:
#   ${HOSTACTION_CI_CACHE:-/var/cache/hostaction-ci}/cosign/<key>/cosign
# A binary already there is not built again. The build writes to a temporary
# file renamed into place, under a lock, as scripts/build-control-plane.sh does.
#
# The last line on stdout is the binary's path; everything else goes to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf 'build-cosign: %s\n' "$*" >&2; }

recipe="CGO_ENABLED=0 -trimpath -ldflags=-s -w"
key="$({ cat "$ROOT/tools/cosign/go.mod" "$ROOT/tools/cosign/go.sum"; echo "$recipe"; } | sha256sum | cut -c1-16)"
dir="${HOSTACTION_CI_CACHE:-/var/cache/hostaction-ci}/cosign/$key"
out="$dir/cosign"
mkdir -p "$dir"
if [[ -x "$out" ]]; then
  say "up to date"
  echo "$out"
  exit 0
fi
exec 9>"$dir/.lock"
flock 9
if [[ ! -x "$out" ]]; then
  if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  if ! command -v go >/dev/null; then
    say "no Go: apt-get install golang-go"
    apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >&2
  fi
  # The go line of tools/cosign: an older go command fetches that toolchain.
  export GOTOOLCHAIN=auto CGO_ENABLED=0 GOFLAGS="-mod=readonly ${GOFLAGS:-}"
  start=$SECONDS
  say "building github.com/sigstore/cosign/v2/cmd/cosign ($(go version))"
  (cd "$ROOT/tools/cosign" &&
    nice -n 10 go build -trimpath -ldflags "-s -w" -o "$out.tmp" github.com/sigstore/cosign/v2/cmd/cosign) >&2
  mv -f "$out.tmp" "$out"
  say "built in $((SECONDS - start)) s"
fi
echo "$out"
