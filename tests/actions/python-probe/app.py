"""A Python test action that runs the operations its params list and reports
the result of each one, so that the end-to-end tests (tests/tests/all/languages.rs)
can check how a componentize-py component behaves under hostaction: capability
errors, print to the run's log, the locked-down WASI, exceptions.

Params: ``{"ops": [{"op": "ensure-file", "path": "...", "contents": "...",
"mode": 420}, ...]}``. Ops run in order; a capability error does not stop the
run. Fact ``"<index>"`` holds ``{"ok": value}`` or
``{"err": {"kind": "...", "message": "..."}}`` for the op at that index.
"""

import json
import os
import sys

import wit_world
from componentize_py_types import Err
from wit_world.imports import files, payload, types

# The WIT case name of each `types.error` variant.
ERROR_KINDS = {
    types.Error_PermissionDenied: "permission-denied",
    types.Error_InvalidArgument: "invalid-argument",
    types.Error_NotFound: "not-found",
    types.Error_Conflict: "conflict",
    types.Error_Unsupported: "unsupported",
    types.Error_Timeout: "timeout",
    types.Error_Io: "io",
}


class OpError(Exception):
    """An op's failure, reported as a fact: a capability error, or an
    ``io`` error for WASI's own file API."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def capability(call, *args):
    """Calls a capability function; its WIT error (raised by componentize-py
    as ``Err(variant)``) becomes an OpError."""
    try:
        return call(*args)
    except Err as e:
        raise OpError(ERROR_KINDS[type(e.value)], e.value.value) from None


def run_op(op: dict):
    """Runs one op and returns its JSON value; raises OpError."""
    name = op.get("op")
    if name == "ensure-file":
        return capability(
            files.ensure_file, op["path"], op["contents"].encode(), op["mode"]
        )
    if name == "payload-read":
        # `payload` is in every world: no grant needed.
        return capability(payload.read, op["name"]).decode(errors="replace")
    if name == "print":
        print(op["message"])
        return None
    if name == "eprint":
        print(op["message"], file=sys.stderr)
        return None
    if name == "env":
        return {"vars": len(os.environ), "args": len(sys.argv)}
    if name == "wasi-read":
        # Python's own file API goes through WASI's filesystem, not the
        # `files` capability: with no preopened directory it must fail.
        try:
            with open(op["path"], encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise OpError("io", str(e)) from None
    if name == "throw":
        raise RuntimeError(op["message"])
    raise Err(f"invalid params: unknown op {name!r}")


class WitWorld(wit_world.WitWorld):
    def run(self, params: str) -> types.Outcome:
        try:
            ops = json.loads(params)["ops"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"invalid params: expected {{\"ops\": [...]}}: {e}") from None
        changed = False
        facts = []
        for index, op in enumerate(ops):
            if op.get("op") == "fail":
                raise Err(op["message"])
            try:
                value = run_op(op)
                # Only ensure-file reports a bool.
                changed = changed or value is True
                fact = {"ok": value}
            except OpError as e:
                fact = {"err": {"kind": e.kind, "message": e.message}}
            facts.append(types.Fact(str(index), json.dumps(fact)))
        return types.Outcome(changed, f"ran {len(facts)} ops", facts)
