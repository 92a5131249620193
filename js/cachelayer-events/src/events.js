// Invalidation events, as docs/events.md specifies: the JSON payload, its HMAC-SHA256
// signature, the Redis Streams entry and the HTTP request.

import { createHmac, randomUUID } from "node:crypto";
import { hostname } from "node:os";

export const VERSION = 1;
export const MAX_ITEMS = 1000;
export const MAX_PAYLOAD_BYTES = 64 * 1024;
export const MAX_ORIGIN = 256;
export const MIN_SECRET_BYTES = 32;
export const DEFAULT_MAXLEN = 100_000;
export const HEADER_KID = "Cachelayer-Kid";
export const HEADER_SIGNATURE = "Cachelayer-Signature";

const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const NAME_RE = /^[A-Za-z0-9_.-]+$/;

/** The default stream of a namespace: `{<namespace>:}events`. */
export function streamFor(namespace) {
  return "{" + namespace + ":}events";
}

function names(value, what) {
  if (value === undefined || value === null) return [];
  if (typeof value === "string" || typeof value[Symbol.iterator] !== "function")
    throw new TypeError(`${what} is an array of strings`);
  const list = [...value];
  for (const item of list) {
    if (typeof item !== "string") throw new TypeError(`${what} holds a ${typeof item}; each is a string`);
    if (item === "") throw new RangeError(`${what} holds an empty string`);
  }
  return list;
}

function secretBytes(kid, secret) {
  if (typeof kid !== "string" || !ID_RE.test(kid)) throw new RangeError("kid is 1-64 characters of [A-Za-z0-9_.-]");
  const raw = typeof secret === "string" ? Buffer.from(secret, "utf8") : Buffer.from(secret ?? []);
  if (raw.length < MIN_SECRET_BYTES) throw new RangeError(`event secrets are at least ${MIN_SECRET_BYTES} bytes`);
  return raw;
}

// Non-ASCII as \uXXXX escapes (UTF-16 units, lower-case hex), as the Python writer does:
// the payload is then the same bytes whichever language wrote it.
const asciiJSON = (value) =>
  JSON.stringify(value).replace(/[\u0080-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));

/**
 * The payload of an event: compact JSON, members in the order of the spec's table.
 * @param {{namespace: string, keys?: Iterable<string>, tags?: Iterable<string>,
 *          origin?: string, id?: string, ts?: number}} event
 * @returns {{payload: Buffer, event: {v: number, id: string, ns: string, keys: string[],
 *            tags: string[], origin: string, ts: number}}}
 * @throws {TypeError|RangeError} the event breaks the format's rules or limits.
 */
export function buildEvent({ namespace, keys, tags, origin, id, ts }) {
  const k = names(keys, "keys");
  const t = names(tags, "tags");
  if (k.length + t.length === 0) throw new RangeError("an event names at least one key or tag");
  if (k.length + t.length > MAX_ITEMS)
    throw new RangeError(`an event names at most ${MAX_ITEMS} keys and tags; split this one`);
  if (typeof namespace !== "string" || !NAME_RE.test(namespace)) throw new RangeError("a namespace is [A-Za-z0-9_.-]+");
  const event = {
    v: VERSION,
    id: id ?? randomUUID().replaceAll("-", ""),
    ns: namespace,
    keys: k,
    tags: t,
    origin: origin ?? `${hostname()}:${process.pid}`.slice(0, MAX_ORIGIN),
    ts: ts ?? Date.now(),
  };
  if (typeof event.id !== "string" || !ID_RE.test(event.id)) throw new RangeError("an event id is 1-64 characters of [A-Za-z0-9_.-]");
  if (typeof event.origin !== "string" || [...event.origin].length > MAX_ORIGIN)
    throw new RangeError(`origin is a string of at most ${MAX_ORIGIN} characters`);
  if (!Number.isSafeInteger(event.ts) || event.ts < 0) throw new RangeError("ts is an integer of ms since the epoch");
  const payload = Buffer.from(asciiJSON(event), "utf8");
  if (payload.length > MAX_PAYLOAD_BYTES)
    throw new RangeError(`the payload is ${payload.length} bytes, over ${MAX_PAYLOAD_BYTES}; split the event`);
  return { payload, event };
}

/** HMAC-SHA256 of `payload` in lower-case hex. */
export function sign(secret, payload) {
  return createHmac("sha256", secret).update(payload).digest("hex");
}

/**
 * Build and sign an event.
 * @param {{namespace: string, keys?: Iterable<string>, tags?: Iterable<string>, kid: string,
 *          secret: string|Uint8Array, origin?: string, id?: string, ts?: number}} options
 * @returns {{payload: Buffer, kid: string, signature: string, event: object}}
 */
export function signEvent(options) {
  const secret = secretBytes(options.kid, options.secret);
  const { payload, event } = buildEvent(options);
  return { payload, kid: options.kid, signature: sign(secret, payload), event };
}

/**
 * Publish a signed invalidation event on the namespace's stream (`XADD ... MAXLEN ~`).
 * Nothing is invalidated here: the consumers apply it.
 * @param {import("ioredis").Redis} redis
 * @param {{namespace: string, keys?: Iterable<string>, tags?: Iterable<string>, kid: string,
 *          secret: string|Uint8Array, origin?: string, stream?: string,
 *          maxlen?: number|null}} options
 * @returns {Promise<{entryId: string, id: string}>} the stream entry id and the event id.
 */
export async function publishInvalidation(redis, options) {
  const signed = signEvent(options);
  const stream = options.stream ?? streamFor(options.namespace);
  const maxlen = options.maxlen === undefined ? DEFAULT_MAXLEN : options.maxlen;
  const trim = maxlen === null ? [] : ["MAXLEN", "~", maxlen];
  const entryId = await redis.xadd(stream, ...trim, "*", "p", signed.payload, "k", signed.kid, "s", signed.signature);
  return { entryId, id: signed.event.id };
}

/**
 * The HTTP request that delivers a signed event to a webhook receiver: pass it to
 * `fetch(url, request)` (or any client). The body is the payload, byte for byte.
 * @param {{namespace: string, keys?: Iterable<string>, tags?: Iterable<string>, kid: string,
 *          secret: string|Uint8Array, origin?: string, id?: string, ts?: number}} options
 * @returns {{method: "POST", headers: Record<string, string>, body: Buffer, id: string}}
 */
export function webhookRequest(options) {
  const signed = signEvent(options);
  return {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      [HEADER_KID]: signed.kid,
      [HEADER_SIGNATURE]: signed.signature,
    },
    body: signed.payload,
    id: signed.event.id,
  };
}
