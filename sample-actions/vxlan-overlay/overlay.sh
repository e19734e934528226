#!/bin/sh
# The vxlan-overlay action's topology made with `ip`, the way a node start
# script (or a privileged DaemonSet's) does it today: a bridge, a vxlan
# enslaved to it, and a veth pair whose host end is enslaved to it and whose
# other end is in a workload namespace with an address. Idempotent-ish, as
# such scripts are: a link is added when `ip link show` does not find it, and
# settings and addresses are (re)applied on every run.
#
# The benchmark (bench/, network suite) runs it side by side with the action.
#
# Environment (defaults as in params.json):
#   NETNS             namespace standing in for the host (`ip -n`); unset: this one
#   BRIDGE            br-ovl
#   MTU               1450
#   VXLAN             vx-ovl
#   VNI               42
#   LOCAL             local tunnel address (optional)
#   REMOTE | GROUP    unicast remote or multicast group (one is required)
#   PORT              4789
#   DEVICE            underlying device (optional)
#   BRIDGE_ADDRESS    address (CIDR) for the bridge (optional)
#   WORKLOAD_NETNS    ovl-work (made with `ip netns add` when missing)
#   HOST_END          ve-ovl
#   WORKLOAD_IF       ve-ovl-w
#   WORKLOAD_ADDRESS  address (CIDR) of the workload's end (required)
set -eu

BRIDGE=${BRIDGE:-br-ovl}
MTU=${MTU:-1450}
VXLAN=${VXLAN:-vx-ovl}
VNI=${VNI:-42}
PORT=${PORT:-4789}
WORKLOAD_NETNS=${WORKLOAD_NETNS:-ovl-work}
HOST_END=${HOST_END:-ve-ovl}
WORKLOAD_IF=${WORKLOAD_IF:-ve-ovl-w}
: "${WORKLOAD_ADDRESS:?set WORKLOAD_ADDRESS, e.g. 10.244.0.1/24}"

# `ip` in the host's namespace, or in $NETNS when set.
hip() {
    if [ -n "${NETNS:-}" ]; then ip -n "$NETNS" "$@"; else ip "$@"; fi
}

# The bridge.
hip link show "$BRIDGE" >/dev/null 2>&1 || hip link add "$BRIDGE" type bridge
hip link set "$BRIDGE" mtu "$MTU" up

# The vxlan, enslaved to the bridge.
if ! hip link show "$VXLAN" >/dev/null 2>&1; then
    set -- id "$VNI" dstport "$PORT"
    if [ -n "${LOCAL:-}" ]; then set -- "$@" local "$LOCAL"; fi
    if [ -n "${REMOTE:-}" ]; then
        set -- "$@" remote "$REMOTE"
    elif [ -n "${GROUP:-}" ]; then
        set -- "$@" group "$GROUP"
    else
        echo "overlay.sh: set REMOTE or GROUP" >&2
        exit 2
    fi
    if [ -n "${DEVICE:-}" ]; then set -- "$@" dev "$DEVICE"; fi
    hip link add "$VXLAN" type vxlan "$@"
fi
hip link set "$VXLAN" master "$BRIDGE" mtu "$MTU" up

if [ -n "${BRIDGE_ADDRESS:-}" ]; then
    hip address replace "$BRIDGE_ADDRESS" dev "$BRIDGE"
fi

# The workload namespace and the veth pair into it.
[ -e "/var/run/netns/$WORKLOAD_NETNS" ] || ip netns add "$WORKLOAD_NETNS"
hip link show "$HOST_END" >/dev/null 2>&1 ||
    hip link add "$HOST_END" type veth peer name "$WORKLOAD_IF" netns "$WORKLOAD_NETNS"
hip link set "$HOST_END" master "$BRIDGE" mtu "$MTU" up
ip -n "$WORKLOAD_NETNS" link set "$WORKLOAD_IF" mtu "$MTU" up
ip -n "$WORKLOAD_NETNS" address replace "$WORKLOAD_ADDRESS" dev "$WORKLOAD_IF"
