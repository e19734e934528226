#!/usr/bin/env bash
# Installs what the test suite needs besides Rust, when it is missing (root on
# a fresh Debian 12 machine; a machine that has everything is left as it is):
# the real peers the tests run (docker-registry, skopeo, systemd-nspawn, dbus,
# iproute2, the CNI plugins, openssl/htpasswd for the TLS registry), the image
# tools (buildah, umoci, jq, binutils, the CA bundle: scripts/build-images.sh), runc and
# containers-common's seccomp profile (the agent's container, tests/tests/all/container.rs), and the
# checking tools (cargo-deny, kubernetes-validate). The guest toolchains are
# installed by scripts/build-guests.sh itself.
set -euo pipefail

say() { printf '[install-test-deps] %s\n' "$*" >&2; }

APT_PACKAGES=(iproute2 util-linux iputils-ping systemd-container dbus docker-registry skopeo
    containernetworking-plugins openssl apache2-utils buildah umoci jq binutils ca-certificates
    runc golang-github-containers-common)
CARGO_DENY_VERSION=0.20.2
KUBERNETES_VALIDATE_VERSION=1.37.0

missing=()
for package in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]]; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo deny --version 2>/dev/null | grep -qF "$CARGO_DENY_VERSION"; then
    say "installing cargo-deny $CARGO_DENY_VERSION (cargo install)"
    cargo install --locked "cargo-deny@$CARGO_DENY_VERSION"
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip)"
    pip install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
