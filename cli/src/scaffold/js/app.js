/**
 * {{name}}: a hostaction action in JavaScript. It ensures one file (and its
 * directory) holds the given contents, through the `files` capability (world
 * `files-action`);
 * hostaction runs it only with a grant that covers the file's directory.
 *
 * Params (JSON): {"path": "/var/lib/{{name}}/hello.txt", "contents": "hello\n"}
 */
import { ensureDir, ensureFile } from 'hostaction:host/files@0.1.0';

/** A failure the run returns as its WIT `err` (bad params, a refused call). */
class Failure extends Error {}

/**
 * The exported `run`. Returning `{tag: 'ok' | 'err', val}` picks the WIT
 * result's case. Any other exception fails the run too, its message
 * carried in the failure and its stack written to the log.
 */
export function run(paramsJson) {
  try {
    return { tag: 'ok', val: apply(parseParams(paramsJson)) };
  } catch (e) {
    if (e instanceof Failure) {
      return { tag: 'err', val: e.message };
    }
    return { tag: 'err', val: reportUncaught(e) };
  }
}

function apply({ path, contents }) {
  // The file's directory first (a no-op when it exists).
  const dir = path.slice(0, path.lastIndexOf('/'));
  const dirChanged = dir !== '' && call(`create ${dir}`, () => ensureDir(dir, 0o755));
  const bytes = new TextEncoder().encode(contents);
  const fileChanged = call(`ensure ${path}`, () => ensureFile(path, bytes, 0o644));
  // console.log and console.error lines go to the run's log.
  console.log(`${path}: ${fileChanged ? 'written' : 'already in place'}`);
  return {
    changed: dirChanged || fileChanged,
    message: fileChanged ? `wrote ${path}` : `${path} already in place`,
    facts: [{ key: 'path', value: path }],
  };
}

/**
 * Runs one capability call. A WIT error from the host arrives as an exception
 * whose `payload` is `{tag, val}`; it fails the run saying what was being done.
 */
function call(what, f) {
  try {
    return f();
  } catch (e) {
    const error = e?.payload;
    if (typeof error?.tag !== 'string') {
      throw e;
    }
    throw new Failure(`${what}: ${error.tag}: ${error.val}`);
  }
}

/** Parses the params; each error names its field. */
function parseParams(json) {
  let p;
  try {
    p = JSON.parse(json);
  } catch (e) {
    throw new Failure(`invalid params: not JSON: ${e.message}`);
  }
  if (p === null || typeof p !== 'object' || Array.isArray(p)) {
    throw new Failure('invalid params: expected a JSON object with "path" and "contents"');
  }
  for (const field of Object.keys(p)) {
    if (field !== 'path' && field !== 'contents') {
      throw new Failure(`invalid params: unknown field ${JSON.stringify(field)}`);
    }
  }
  if (typeof p.path !== 'string' || !p.path.startsWith('/')) {
    throw new Failure(`invalid params: path ${JSON.stringify(p.path) ?? '(missing)'}: expected an absolute path`);
  }
  if (typeof p.contents !== 'string') {
    throw new Failure(`invalid params: contents ${JSON.stringify(p.contents) ?? '(missing)'}: expected a string`);
  }
  return p;
}

/**
 * The failure message of an exception nobody expected; its stack goes to
 * stderr (the run's log). Returned rather than rethrown: componentize-js
 * 0.23's export glue recognises only Errors of its own realm, so an Error of
 * ours escaping `run` traps with "expected a string, received [object]" and
 * its message is lost.
 */
function reportUncaught(e) {
  if (typeof e?.stack === 'string' && e.stack !== '') {
    console.error(e.stack.trimEnd());
  }
  return `uncaught exception: ${e}`;
}
