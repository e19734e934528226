"""Sample action in Python: writes a CNI network configuration list (a
``.conflist`` with a ``bridge`` plugin, ``host-local`` IPAM for the subnet and
``portmap``) through the ``files`` capability, idempotently.

Built with componentize-py against the world ``files-action``; see README.md
for the params, the outcome and the grant.
"""

import ipaddress
import json
import posixpath
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import files, types

# Permission bits of the configuration directory and of the conflist.
DIR_MODE = 0o755
CONF_MODE = 0o644

# The CNI spec's network names: alphanumerics, `_`, `.`, `-`, starting with an
# alphanumeric.
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CNI_VERSION = re.compile(r"[A-Za-z0-9.]+")

# Every param with its default; `confFile` derives from `name` and `mtu` is
# left out of the conflist, when absent.
DEFAULTS = {
    "name": "hostaction",
    "bridge": "cni0",
    "subnet": "10.88.0.0/16",
    "cniVersion": "1.0.0",
    "confDir": "/etc/cni/net.d",
    "confFile": None,
    "mtu": None,
}

# How a `types.error` case reads in a message (as the Rust SDK prints it).
ERROR_KINDS = {
    types.Error_PermissionDenied: "permission denied",
    types.Error_InvalidArgument: "invalid argument",
    types.Error_NotFound: "not found",
    types.Error_Conflict: "conflict",
    types.Error_Unsupported: "unsupported",
    types.Error_Timeout: "timeout",
    types.Error_Io: "io error",
}


def invalid(field: str, value, why: str) -> Err:
    """The run's error for a bad param, naming the field and its value."""
    return Err(f"invalid params: {field} {json.dumps(value)}: {why}")


def parse_params(text: str) -> dict:
    """Parses and checks the params before anything is touched; every error
    names its field."""
    try:
        given = json.loads(text)
    except ValueError as e:
        raise Err(f"invalid params: not JSON: {e}") from None
    if not isinstance(given, dict):
        raise Err("invalid params: expected a JSON object")
    for field in given:
        if field not in DEFAULTS:
            raise Err(
                f"invalid params: unknown field {json.dumps(field)} "
                f"(expected one of {', '.join(DEFAULTS)})"
            )
    p = {**DEFAULTS, **given}

    for field in ("name", "bridge", "subnet", "cniVersion", "confDir"):
        if not isinstance(p[field], str):
            raise invalid(field, p[field], "must be a string")
    if not NETWORK_NAME.fullmatch(p["name"]):
        raise invalid(
            "name",
            p["name"],
            "a CNI network name holds letters, digits, '_', '.' and '-', "
            "and starts with a letter or digit",
        )
    bridge = p["bridge"]
    if (
        not 1 <= len(bridge.encode()) <= 15
        or bridge in (".", "..")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in bridge)
    ):
        raise invalid(
            "bridge", bridge, "not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
        )
    if "/" not in p["subnet"]:
        raise invalid("subnet", p["subnet"], "expected CIDR notation like 10.88.0.0/16")
    try:
        ipaddress.ip_network(p["subnet"])
    except ValueError as e:
        raise invalid("subnet", p["subnet"], str(e)) from None
    if not CNI_VERSION.fullmatch(p["cniVersion"]):
        raise invalid("cniVersion", p["cniVersion"], 'expected a version like "1.0.0"')
    if not p["confDir"].startswith("/"):
        raise invalid("confDir", p["confDir"], "must be an absolute path")

    if p["confFile"] is None:
        p["confFile"] = f"10-{p['name']}.conflist"
    conf_file = p["confFile"]
    if (
        not isinstance(conf_file, str)
        or conf_file in ("", ".", "..")
        or "/" in conf_file
        or "\0" in conf_file
    ):
        raise invalid("confFile", conf_file, "must be a plain file name (no '/', not '.' or '..')")

    mtu = p["mtu"]
    # JSON true/false are Python ints too: refuse them explicitly.
    if mtu is not None and (
        not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535
    ):
        raise invalid("mtu", mtu, "must be an integer from 68 to 65535")
    return p


def conflist(p: dict) -> bytes:
    """The conflist. Keys are sorted and the layout fixed, so the same params
    give the same bytes and a re-run changes nothing."""
    network = ipaddress.ip_network(p["subnet"])
    bridge = {
        "type": "bridge",
        "bridge": p["bridge"],
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": p["subnet"]}]],
            "routes": [{"dst": "0.0.0.0/0" if network.version == 4 else "::/0"}],
        },
    }
    if p["mtu"] is not None:
        bridge["mtu"] = p["mtu"]
    doc = {
        "cniVersion": p["cniVersion"],
        "name": p["name"],
        "plugins": [
            bridge,
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def capability(what: str, call, *args):
    """Calls a capability function. componentize-py raises its WIT error as
    ``Err(variant)``; it becomes the run's error, saying what was being done."""
    try:
        return call(*args)
    except Err as e:
        raise Err(f"{what}: {ERROR_KINDS[type(e.value)]}: {e.value.value}") from None


class WitWorld(wit_world.WitWorld):
    def run(self, params: str) -> types.Outcome:
        """The world's `run` export. `Err(message)` fails the run with that
        message; any other exception would trap."""
        p = parse_params(params)
        conf_dir = p["confDir"].rstrip("/") or "/"
        path = posixpath.join(conf_dir, p["confFile"])
        contents = conflist(p)

        dir_changed = capability(
            f"creating {conf_dir}", files.ensure_dir, conf_dir, DIR_MODE
        )
        if dir_changed:
            # Created, or its mode put right.
            print(f"ensured {conf_dir} (mode 0755)")
        file_changed = capability(
            f"writing {path}", files.ensure_file, path, contents, CONF_MODE
        )
        print(f"{'wrote' if file_changed else 'up to date:'} {path} ({len(contents)} bytes)")

        changed = dir_changed or file_changed
        return types.Outcome(
            changed=changed,
            message=f"conflist {path} in place ({'changed' if changed else 'nothing changed'})",
            facts=[
                types.Fact("path", path),
                types.Fact("bytes", str(len(contents))),
            ],
        )
