/**
 * Sample action in JavaScript: a bridge in the host's network namespace and a
 * veth pair from it into a named namespace, idempotently. The host end is
 * enslaved to the bridge; the peer end sits in the named namespace, up, with
 * an address. What `ip link add ... type veth peer ... netns ...` scripts in a
 * privileged DaemonSet do today, as a component that imports only `log` and
 * `network`. Built with componentize-js (world `network-action`); see
 * README.md.
 */
import { ensureAddress, ensureLink, ensureNetns } from 'hostaction:host/network@0.1.0';

/** Every param with its default (JSON, camelCase; unknown fields are errors). */
const DEFAULTS = Object.freeze({
  hostNetns: null,
  netns: 'js-demo',
  bridge: 'br-js',
  hostEnd: 've-js-h',
  peerEnd: 've-js-p',
  address: null,
  mtu: null,
});

/** A failure the run returns as its WIT `err`: bad params or a refused call. */
class Failure extends Error {}

/**
 * The exported `run`. Returning `{tag: 'ok' | 'err', val}` picks the WIT
 * result's case; anything else escaping is a bug, reported and rethrown so
 * that the run traps, as a panic does in Rust.
 */
export function run(paramsJson) {
  try {
    return { tag: 'ok', val: converge(parseParams(paramsJson)) };
  } catch (e) {
    if (e instanceof Failure) {
      return { tag: 'err', val: e.message };
    }
    return { tag: 'err', val: reportUncaught(e) };
  }
}

/** Ensures each piece in order and describes the result. */
function converge(p) {
  const here = p.hostNetns === null ? 'host' : `netns ${p.hostNetns}`;
  // `null` is `none` to the bindings: the host's own namespace, the MTU as it is.
  const hostNs = p.hostNetns;
  const mtu = p.mtu;
  const steps = new Steps();

  steps.ensure(`netns ${p.netns}`, () => ensureNetns(p.netns));
  steps.ensure(`bridge ${p.bridge} (${here})`, () =>
    ensureLink(hostNs, p.bridge, { tag: 'bridge' }, { mtu, up: true }),
  );
  // Made here with its peer moved straight into `netns`.
  steps.ensure(`veth ${p.hostEnd} (${here})`, () =>
    ensureLink(
      hostNs,
      p.hostEnd,
      { tag: 'veth', val: { peerName: p.peerEnd, peerNetns: p.netns } },
      { mtu, up: true, master: p.bridge },
    ),
  );
  // The far end, ensured as the veth whose own peer is the host end.
  steps.ensure(`veth ${p.peerEnd} (netns ${p.netns})`, () =>
    ensureLink(
      p.netns,
      p.peerEnd,
      { tag: 'veth', val: { peerName: p.hostEnd, peerNetns: p.hostNetns ?? 'host' } },
      { mtu, up: true },
    ),
  );
  if (p.address !== null) {
    steps.ensure(`address ${p.address} on ${p.peerEnd} (netns ${p.netns})`, () =>
      ensureAddress(p.netns, p.peerEnd, p.address),
    );
  }

  const changed = steps.changed.length > 0;
  const detail = changed ? `changed: ${steps.changed.join(', ')}` : 'nothing changed';
  const address = p.address === null ? '' : ` ${p.address}`;
  return {
    changed,
    message:
      `bridge ${p.bridge} (${here}) with ${p.hostEnd}, its peer ${p.peerEnd}${address} ` +
      `in netns ${p.netns} (${detail})`,
    facts: [
      { key: 'hostNetns', value: p.hostNetns ?? 'host' },
      { key: 'netns', value: p.netns },
      { key: 'bridge', value: p.bridge },
      { key: 'hostEnd', value: p.hostEnd },
      { key: 'peerEnd', value: p.peerEnd },
      { key: 'address', value: p.address ?? '' },
      { key: 'changed', value: steps.changed.join(',') },
    ],
  };
}

/** The steps that changed something, in order. */
class Steps {
  changed = [];

  /**
   * Runs one capability call. A WIT error (thrown by the bindings as an
   * object whose `payload` is `{tag, val}`) ends the run as
   * `<what>: <kind>: <message>`.
   */
  ensure(what, call) {
    let changed;
    try {
      changed = call();
    } catch (e) {
      const error = e?.payload;
      if (typeof error?.tag !== 'string') {
        throw e;
      }
      throw new Failure(`${what}: ${error.tag}: ${error.val}`);
    }
    console.log(`${what}: ${changed ? 'changed' : 'in shape'}`);
    if (changed) {
      this.changed.push(what);
    }
  }
}

/** Parses and checks the params; each error names its field. */
function parseParams(json) {
  let given;
  try {
    given = JSON.parse(json);
  } catch (e) {
    throw new Failure(`invalid params: not JSON: ${e.message}`);
  }
  if (given === null || typeof given !== 'object' || Array.isArray(given)) {
    throw new Failure('invalid params: expected a JSON object');
  }
  for (const field of Object.keys(given)) {
    if (!Object.hasOwn(DEFAULTS, field)) {
      throw new Failure(
        `invalid params: unknown field ${JSON.stringify(field)} ` +
          `(expected one of ${Object.keys(DEFAULTS).join(', ')})`,
      );
    }
  }
  const p = { ...DEFAULTS, ...given };
  if (p.hostNetns !== null) {
    checkNetns('hostNetns', p.hostNetns);
  }
  checkNetns('netns', p.netns);
  if (p.netns === p.hostNetns) {
    fail('netns', p.netns, 'must differ from hostNetns, or the peer would not leave it');
  }
  for (const field of ['bridge', 'hostEnd', 'peerEnd']) {
    checkIfname(field, p[field]);
  }
  if (p.hostEnd === p.bridge) {
    fail('hostEnd', p.hostEnd, 'the same name as bridge');
  }
  if (p.address !== null) {
    checkCidr('address', p.address);
  }
  if (p.mtu !== null && !(Number.isInteger(p.mtu) && p.mtu >= 68 && p.mtu <= 65535)) {
    fail('mtu', p.mtu, 'must be an integer within 68..=65535, or null');
  }
  return p;
}

/** Ends the run with `invalid params: <field> <value>: <why>`. */
function fail(field, value, why) {
  throw new Failure(`invalid params: ${field} ${JSON.stringify(value)}: ${why}`);
}

/** Printable ASCII without a space. */
const PRINTABLE = /^[\x21-\x7e]+$/;

/** What the kernel takes as an interface name (and the host checks again). */
function checkIfname(field, name) {
  if (
    typeof name !== 'string' ||
    name.length < 1 ||
    name.length > 15 ||
    !PRINTABLE.test(name) ||
    /[/%:]/.test(name) ||
    name === '.' ||
    name === '..'
  ) {
    fail(field, name, 'an interface name is 1-15 printable ASCII characters without "/", "%", ":" or spaces');
  }
}

/** A named namespace: one file name; `host` is what grants call the host's own. */
function checkNetns(field, name) {
  if (
    typeof name !== 'string' ||
    name.length < 1 ||
    name.length > 255 ||
    !PRINTABLE.test(name) ||
    name.includes('/') ||
    name === '.' ||
    name === '..'
  ) {
    fail(field, name, 'a namespace name is 1-255 printable ASCII characters without "/" or spaces');
  }
  if (name === 'host') {
    fail(field, name, 'grants use "host" for the host\'s own namespace; pick another name');
  }
}

/** An IPv4 or IPv6 address with a prefix length: `10.99.0.2/24`, `fd00::2/64`. */
function checkCidr(field, cidr) {
  const [addr, len, ...rest] = typeof cidr === 'string' ? cidr.split('/') : [];
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(addr ?? '');
  const max = v4 ? 32 : 128;
  const addrOk = v4 ? v4.slice(1).every((o) => Number(o) <= 255) : isIpv6(addr ?? '');
  if (rest.length > 0 || !addrOk || !/^\d{1,3}$/.test(len ?? '') || Number(len) > max) {
    fail(field, cidr, 'expected an IPv4 or IPv6 address with a prefix length (10.99.0.2/24)');
  }
}

/** Whether `addr` is an IPv6 address, by the URL parser's own rules. */
function isIpv6(addr) {
  if (!addr.includes(':')) {
    return false;
  }
  try {
    new URL(`http://[${addr}]/`);
    return true;
  } catch {
    return false;
  }
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
