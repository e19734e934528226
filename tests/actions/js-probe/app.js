/**
 * A test action in JavaScript (componentize-js, world `files-action`) that
 * runs the operations its params list and reports the result of each one, so
 * that tests/tests/all/languages.rs can check what a JavaScript component sees and how
 * its errors, exceptions and output surface.
 *
 * Params: `{"ops": [{"op": "ensure-file", "path": "...", "contents": "...",
 * "mode": 420}, ...]}`. Ops run in order; a capability error does not stop
 * the run. Fact `"<index>"` holds `{"ok": value}` or
 * `{"err": {"kind": "...", "message": "..."}}` for the op at that index.
 */
import { ensureFile } from 'hostaction:host/files@0.1.0';
import { read as readPayload } from 'hostaction:host/payload@0.1.0';

/** The ops, by name: each takes the op's fields and returns its `ok` value. */
const OPS = {
  'ensure-file': ({ path, contents, mode }) =>
    ensureFile(path, new TextEncoder().encode(contents), mode),
  // `payload` is in every world: no grant needed.
  'payload-read': ({ name }) => new TextDecoder().decode(readPayload(name)),
  print: ({ message }) => {
    console.log(message);
    return null;
  },
  eprint: ({ message }) => {
    console.error(message);
    return null;
  },
  // StarlingMonkey gives JavaScript neither environment variables nor
  // arguments (no `process`), and the component does not import
  // wasi:cli/environment: there is nothing to count.
  env: () => ({ vars: 0, args: 0 }),
  // JavaScript here has no file API of its own (no `fs`; `fetch` of a file:
  // URL needs wasi:http, which this build leaves out), so a read through
  // WASI's filesystem cannot even be attempted.
  'wasi-read': ({ path }) => {
    throw new IoError(`cannot read ${path}: this JavaScript runtime has no file API`);
  },
  throw: ({ message }) => {
    throw new Error(message);
  },
};

/** An op's failure that is no capability's: reported as kind `io`. */
class IoError extends Error {}

/** `fail`: ends the run with the WIT `err(message)`. */
class Fail {
  constructor(message) {
    this.message = message;
  }
}

export function run(paramsJson) {
  try {
    return runOps(JSON.parse(paramsJson).ops ?? []);
  } catch (e) {
    if (e instanceof Fail) {
      return { tag: 'err', val: e.message };
    }
    throw reportUncaught(e);
  }
}

function runOps(ops) {
  let changed = false;
  const facts = ops.map((op, index) => {
    if (op.op === 'fail') {
      throw new Fail(op.message);
    }
    const call = OPS[op.op];
    if (call === undefined) {
      throw new Fail(`op ${index}: unknown op ${JSON.stringify(op.op)}`);
    }
    let result;
    try {
      const value = call(op);
      // Only the mutating calls report a bool.
      changed ||= value === true;
      result = { ok: value };
    } catch (e) {
      result = { err: errorOf(e) };
    }
    return { key: String(index), value: JSON.stringify(result) };
  });
  return { tag: 'ok', val: { changed, message: `ran ${ops.length} ops`, facts } };
}

/**
 * `{kind, message}` of an op's expected failure: a WIT error (the bindings
 * throw an object whose `payload` is `{tag, val}`) or an IoError. Anything
 * else is rethrown.
 */
function errorOf(e) {
  if (e instanceof IoError) {
    return { kind: 'io', message: e.message };
  }
  const error = e?.payload;
  if (typeof error?.tag === 'string') {
    return { kind: error.tag, message: error.val };
  }
  throw e;
}

/**
 * Writes an uncaught exception to stderr (the run's log) and returns it for
 * rethrowing, so that the run still traps. componentize-js 0.23's export glue
 * would otherwise lose it: it only recognises Errors of its own realm, so it
 * tries to pass ours as the WIT error string and traps with "expected a
 * string, received [object]", without the Error's message.
 */
function reportUncaught(e) {
  console.error(`uncaught exception: ${e}`);
  if (typeof e?.stack === 'string' && e.stack !== '') {
    console.error(e.stack.trimEnd());
  }
  return e;
}
