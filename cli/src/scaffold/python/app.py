"""{{name}}: a hostaction action. It ensures one file (and its directory)
holds the given contents, through the `files` capability, and says whether it
changed anything.

componentize-py builds this module into a component of the world
`files-action` (see README.md); `WitWorld.run` is the world's `run` export.
"""

import json
import posixpath

import wit_world
from componentize_py_types import Err
from wit_world.imports import files, types

# The params and their types. Unknown fields are errors, so a typo never goes
# unnoticed.
FIELDS = {"path": str, "contents": str}

# How each `types.error` case reads in a message.
ERROR_KINDS = {
    types.Error_PermissionDenied: "permission denied",
    types.Error_InvalidArgument: "invalid argument",
    types.Error_NotFound: "not found",
    types.Error_Conflict: "conflict",
    types.Error_Unsupported: "unsupported",
    types.Error_Timeout: "timeout",
    types.Error_Io: "io error",
}


def parse_params(text: str) -> dict:
    """The params, checked before anything is touched; errors name the field."""
    try:
        params = json.loads(text)
    except ValueError as e:
        raise Err(f"invalid params: not JSON: {e}") from None
    if not isinstance(params, dict):
        raise Err("invalid params: expected a JSON object")
    for field in params:
        if field not in FIELDS:
            raise Err(f"invalid params: unknown field {field!r} (expected path, contents)")
    for field, kind in FIELDS.items():
        if field not in params:
            raise Err(f"invalid params: missing field {field!r}")
        if not isinstance(params[field], kind):
            raise Err(f"invalid params: {field} must be a string")
    if not params["path"].startswith("/"):
        raise Err(f"invalid params: path {params['path']!r} is not absolute")
    return params


def capability(what: str, call, *args):
    """Calls a capability function. A capability error comes back from
    componentize-py as the exception `Err(variant)`; it becomes the run's
    error, saying what was being done."""
    try:
        return call(*args)
    except Err as e:
        raise Err(f"{what}: {ERROR_KINDS[type(e.value)]}: {e.value.value}") from None


class WitWorld(wit_world.WitWorld):
    def run(self, params: str) -> types.Outcome:
        """Returns the outcome; raising `Err(message)` fails the run with that
        message. Any other exception traps: the run fails with its traceback
        in the log."""
        p = parse_params(params)
        path = p["path"]
        # print() lands in the run's log.
        print(f"ensuring {path}")
        # The file's directory first (a no-op when it exists).
        directory = posixpath.dirname(path)
        dir_changed = capability(f"creating {directory}", files.ensure_dir, directory, 0o755)
        file_changed = capability(
            f"writing {path}", files.ensure_file, path, p["contents"].encode(), 0o644
        )
        return types.Outcome(
            changed=dir_changed or file_changed,
            message=f"wrote {path}" if file_changed else f"{path} already up to date",
            facts=[types.Fact("path", path)],
        )
