#!/usr/bin/env bash
# Builds a real Kubernetes control plane from source for the tests: etcd 3.6
# (tools/etcd) and kube-apiserver and kubectl v1.36.3 (tools/kube), plus
# kube-controller-manager when asked (`--with-controller-manager` or
# HOSTACTION_KCM=1), from the Go module proxy.
#
# The binaries go to a cache directory outside the clone, keyed by the wrapper
# modules' go.mod/go.sum and this script's build recipe:
#   ${HOSTACTION_CI_CACHE:-/var/cache/hostaction-ci}/control-plane/<key>/bin/
# A binary already there is not built again (a warm run takes a second). Each
# build writes to a temporary directory and renames the finished binary into
# bin/, so an interrupted build never leaves a half binary that counts as
# built; a lock lets two runs at once build once.
#
# The last line on stdout is the bin directory; everything else goes to stderr.
# Usage: scripts/build-control-plane.sh [--with-controller-manager]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

K8S_VERSION=v1.36.3
K8S_BUILD_DATE=2026-07-22T18:07:38Z # the tag's date, so the build is reproducible
# The Go release the wrapper modules need (their go line), and the toolchain
# fetched from the module proxy when the machine's Go is older than 1.21.
GO_MIN_MINOR=26
GO_TOOLCHAIN=go1.26.8

want=(etcd kube-apiserver kubectl)
if [[ "${1:-}" == --with-controller-manager || "${HOSTACTION_KCM:-0}" == 1 ]]; then
  want+=(kube-controller-manager)
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--with-controller-manager]" >&2
  exit 2
fi

say() { printf 'build-control-plane: %s\n' "$*" >&2; }

# Version ldflags (as kubernetes' hack/lib/version.sh), or /version says v0.0.0-master.
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$K8S_BUILD_DATE"
done
etcd_ldflags="-s -w"
recipe="CGO_ENABLED=0 -trimpath kube:[$kube_ldflags] etcd:[$etcd_ldflags]"

key="$(
  cd "$ROOT/tools"
  { cat kube/go.mod kube/go.sum etcd/go.mod etcd/go.sum; echo "$recipe"; } | sha256sum | cut -c1-16
)"
dir="${HOSTACTION_CI_CACHE:-/var/cache/hostaction-ci}/control-plane/$key"
bin="$dir/bin"
mkdir -p "$bin"

missing() {
  local b
  for b in "${want[@]}"; do [[ -x "$bin/$b" ]] || printf '%s\n' "$b"; done
}

if [[ -z "$(missing)" ]]; then
  say "up to date: ${want[*]}"
  echo "$bin"
  exit 0
fi

exec 9>"$dir/.lock"
flock 9
todo=$(missing) # again: another run may have built them while we waited
rm -rf "$dir"/tmp.* # what an interrupted build left (none runs now: we hold the lock)

# Go: the machine's (this kind of machine has /usr/local/go), else Debian's.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if [[ -n "$todo" ]] && ! command -v go >/dev/null; then
  say "no Go: apt-get install golang-go"
  apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >&2
fi
if [[ -n "$todo" ]]; then
  gover="$(go env GOVERSION)"
  gominor="${gover#go1.}"
  gominor="${gominor%%[!0-9]*}"
  if ((gominor < 21)); then
    # Too old to switch toolchains itself (Debian 12 has 1.19): fetch the one the
    # modules need as the module golang.org/toolchain, as newer Go does.
    tc="$dir/../$GO_TOOLCHAIN"
    if [[ ! -x "$tc/bin/go" ]]; then
      say "$gover is too old: fetching $GO_TOOLCHAIN from the module proxy"
      m="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$(go env GOARCH)"
      src="$(cd "$dir" && GO111MODULE=on go mod download -json "$m" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
      rm -rf "$tc.tmp"
      cp -r "$src" "$tc.tmp"
      chmod -R u+w "$tc.tmp" && chmod -R a+x "$tc.tmp/bin" "$tc.tmp/pkg/tool"
      mv "$tc.tmp" "$tc"
    fi
    export PATH="$tc/bin:$PATH"
  elif ((gominor < GO_MIN_MINOR)); then
    export GOTOOLCHAIN=auto # the go command fetches the go line's toolchain itself
  fi
  say "using $(go version)"
fi

export CGO_ENABLED=0 GOFLAGS="-mod=readonly ${GOFLAGS:-}"
tmp="$dir/tmp.$$"
trap 'rm -rf "$tmp"' EXIT

# One `go build` per module, so kube-apiserver, kubectl and
# kube-controller-manager share one build of their common packages.
build() { # module-dir ldflags output package...
  local mod="$1" ldflags="$2" out="$3" start
  shift 3
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$SECONDS
  say "building $* (tools/$mod)"
  (cd "$ROOT/tools/$mod" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out" "$@") >&2
  say "built in $((SECONDS - start)) s"
}

kube_pkgs=()
for b in $todo; do
  case "$b" in
    etcd)
      build etcd "$etcd_ldflags" "$tmp/etcd" go.etcd.io/etcd/server/v3
      mv -f "$tmp/etcd" "$bin/etcd"
      ;;
    *) kube_pkgs+=("k8s.io/kubernetes/cmd/$b") ;;
  esac
done
if ((${#kube_pkgs[@]})); then
  build kube "$kube_ldflags" "$tmp/" "${kube_pkgs[@]}"
  for p in "${kube_pkgs[@]}"; do mv -f "$tmp/${p##*/}" "$bin/${p##*/}"; done
fi

say "ready: ${want[*]}"
echo "$bin"
