// Reading cachelayer's stored values: the envelope of docs/format.md (header, tag
// section, zstd, HMAC) and its JSON codec with the tag objects. msgpack (codec 2) and
// pickle (codec 3) are refused: JSON is the Cache's default codec.

import { createHmac, timingSafeEqual } from "node:crypto";
import { decompress } from "fzstd";
import { parseJSON } from "./json.js";
import { utf8SurrogatePass } from "./keys.js";

export const HEADER_SIZE = 26;
export const MAC_SIZE = 32;
export const DEFAULT_MAX_VALUE_SIZE = 8 * 1024 * 1024;
export const MIN_SIGNING_KEY_BYTES = 16;

const FLAG_ZSTD = 0x01;
const FLAG_SIGNED = 0x02;
const FLAG_NEGATIVE = 0x04;
const FLAG_TAGGED = 0x08;
const FLAG_TAGS = 0x10;
const KNOWN_FLAGS = 0x1f;
const CODEC_JSON = 1;
const CODEC_NAMES = { 2: "msgpack", 3: "pickle" };

/** An envelope a reader must reject (docs/format.md, "What a reader MUST reject"). */
export class DecodeError extends Error {
  constructor(message) {
    super(message);
    this.name = "DecodeError";
  }
}

/** Secrets as Buffers (a string is its UTF-8), each at least 16 bytes. */
export function signingSecrets(keys) {
  if (keys === undefined || keys === null) return [];
  const list = Array.isArray(keys) ? keys : [keys];
  return list.map((k) => {
    const raw = typeof k === "string" ? Buffer.from(k, "utf8") : Buffer.from(k);
    if (raw.length < MIN_SIGNING_KEY_BYTES)
      throw new RangeError(`signing keys are at least ${MIN_SIGNING_KEY_BYTES} bytes`);
    return raw;
  });
}

function entryMac(secret, storeKeyBytes, body) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(storeKeyBytes.length);
  return createHmac("sha256", secret).update(length).update(storeKeyBytes).update(body).digest();
}

function parseTags(body) {
  let at = HEADER_SIZE;
  const need = (n) => {
    if (at + n > body.length) throw new DecodeError("tag section runs past the body");
  };
  need(1);
  const count = body[at++];
  const tags = [];
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  for (let n = 0; n < count; n++) {
    need(2);
    const keyLength = body.readUInt16BE(at);
    at += 2;
    need(keyLength);
    let key;
    try {
      key = utf8.decode(body.subarray(at, at + keyLength));
    } catch {
      throw new DecodeError("tag key is not UTF-8");
    }
    at += keyLength;
    need(1);
    const tokenLength = body[at++];
    need(tokenLength);
    tags.push({ key, token: Buffer.from(body.subarray(at, at + tokenLength)) });
    at += tokenLength;
  }
  return { tags, end: at };
}

/**
 * The content size a zstd frame declares, after checking that `payload` is exactly one
 * frame (no skippable frames, nothing after it). Walks the block headers only.
 */
function zstdFrameSize(payload) {
  const fail = (why) => {
    throw new DecodeError(`compressed payload: ${why}`);
  };
  if (payload.length < 6 || payload.readUInt32LE(0) !== 0xfd2fb528) fail("not a zstd frame");
  const fhd = payload[4];
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  if (fhd & 0x08) fail("reserved bit set");
  let at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd & 3];
  const fcsSize = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
  if (fcsSize === 0) fail("the frame does not declare its content size");
  if (at + fcsSize > payload.length) fail("truncated frame header");
  let size;
  if (fcsSize === 1) size = payload[at];
  else if (fcsSize === 2) size = payload.readUInt16LE(at) + 256;
  else if (fcsSize === 4) size = payload.readUInt32LE(at);
  else {
    const big = payload.readBigUInt64LE(at);
    size = big > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(big);
  }
  at += fcsSize;
  for (;;) {
    if (at + 3 > payload.length) fail("truncated block");
    const header = payload[at] | (payload[at + 1] << 8) | (payload[at + 2] << 16);
    at += 3;
    const type = (header >> 1) & 3;
    if (type === 3) fail("reserved block type");
    at += type === 1 ? 1 : header >>> 3;
    if (at > payload.length) fail("truncated block");
    if (header & 1) break;
  }
  at += checksum ? 4 : 0;
  if (at !== payload.length) fail("bytes after the frame");
  return size;
}

// -- JSON tag objects ---------------------------------------------------------------------

/** A Python value with no JavaScript counterpart: `{type, data}` as stored. */
export class PythonValue {
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
}

const isTag = (v) =>
  v !== null && typeof v === "object" && !Array.isArray(v) &&
  Object.keys(v).length === 1 && Object.hasOwn(v, "$cl");

function untag(node, types, depth = 0) {
  if (depth > 1000) throw new DecodeError("nested too deep");
  if (Array.isArray(node)) return node.map((v) => untag(v, types, depth + 1));
  if (node === null || typeof node !== "object") return node;
  if (!isTag(node)) {
    const out = {};
    for (const [k, v] of Object.entries(node))
      Object.defineProperty(out, k, { value: untag(v, types, depth + 1), enumerable: true, writable: true, configurable: true });
    return out;
  }
  const spec = node.$cl;
  if (!Array.isArray(spec) || spec.length < 2 || typeof spec[0] !== "string")
    throw new DecodeError("malformed tag object");
  const [tag, data] = spec;
  const items = () => {
    if (!Array.isArray(data) || spec.length !== 2) throw new DecodeError(`malformed ${tag}`);
    return data.map((v) => untag(v, types, depth + 1));
  };
  const str = (re) => {
    if (spec.length !== 2 || typeof data !== "string" || (re && !re.test(data)))
      throw new DecodeError(`malformed ${tag}`);
    return data;
  };
  switch (tag) {
    case "int":
      return BigInt(str(/^-?\d+$/));
    case "float":
      return { nan: NaN, inf: Infinity, "-inf": -Infinity }[str(/^(nan|inf|-inf)$/)];
    case "tuple":
      return items();
    case "set":
    case "frozenset":
      return new Set(items());
    case "map": {
      const pairs = items();
      if (!pairs.every((p) => Array.isArray(p) && p.length === 2)) throw new DecodeError("malformed map");
      return new Map(pairs);
    }
    case "bytes":
      return Buffer.from(str(/^[A-Za-z0-9+/]*={0,2}$/), "base64");
    case "uuid": {
      const h = str(/^[0-9a-f]{32}$/);
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    }
    case "date":
      return new PythonValue("date", str(/^\d{4}-\d{2}-\d{2}$/));
    case "dec":
      return new PythonValue("decimal", str());
    case "dt":
    case "time":
    case "td":
      if (spec.length !== 2 || !Array.isArray(data) || data.length !== 3) throw new DecodeError(`malformed ${tag}`);
      return new PythonValue({ dt: "datetime", time: "time", td: "timedelta" }[tag], data);
    case "x": {
      if (spec.length !== 3 || typeof data !== "string") throw new DecodeError("malformed x");
      const load = types && Object.hasOwn(types, data) ? types[data] : undefined;
      if (typeof load !== "function") throw new DecodeError(`unregistered type ${JSON.stringify(data)}`);
      return load(untag(spec[2], types, depth + 1));
    }
    default:
      throw new DecodeError(`unknown JSON tag ${JSON.stringify(tag)}`);
  }
}

/**
 * Decode the envelope bytes stored under `storeKey`.
 *
 * Values: JSON objects are plain objects, integers are numbers (BigInt beyond 2^53),
 * tuples arrays, sets `Set`, maps with non-string keys `Map`, bytes `Buffer`, UUIDs
 * strings, non-finite floats `NaN`/`Infinity`; dates, times, timedeltas and decimals are
 * `PythonValue`s; a registered user type ("x" tag) is rebuilt by `types[name](data)`.
 *
 * @param {Uint8Array} raw
 * @param {{storeKey?: string, signingKeys?: (string|Uint8Array)[]|string|Uint8Array,
 *          maxValueSize?: number, types?: Record<string, (data: unknown) => unknown>}} [options]
 * @returns {{value: unknown, negative: boolean, durationMs: number, writtenMs: number,
 *            freshUntilMs: number, tags: {key: string, token: Buffer}[]}}
 * @throws {DecodeError} whatever the spec says a reader must reject.
 */
export function decodeEnvelope(raw, options = {}) {
  const { storeKey = null, maxValueSize = DEFAULT_MAX_VALUE_SIZE, types } = options;
  const secrets = signingSecrets(options.signingKeys);
  const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (buf.length < HEADER_SIZE) throw new DecodeError(`${buf.length} bytes are too short for an envelope`);
  if (buf[0] !== 0x63 || buf[1] !== 0x4c) throw new DecodeError("not a cachelayer envelope (bad magic)");
  const version = buf[2];
  const codec = buf[3];
  const flags = buf[4];
  if (version !== 1 && version !== 2) throw new DecodeError(`envelope format version ${version} is not supported`);
  if (flags & ~KNOWN_FLAGS) throw new DecodeError(`unknown flags 0x${flags.toString(16)}`);
  if (buf[5] !== 0) throw new DecodeError("reserved byte is not 0");
  const signed = (flags & FLAG_SIGNED) !== 0;
  if (signed !== (version === 2)) throw new DecodeError("signed envelopes are version 2, unsigned version 1");
  let body = buf;
  if (signed) {
    if (!secrets.length) throw new DecodeError("signed envelope, but no signingKeys were given");
    if (typeof storeKey !== "string") throw new TypeError("a signed entry verifies only with its storeKey");
    if (buf.length < HEADER_SIZE + MAC_SIZE) throw new DecodeError("signed envelope too short");
    body = buf.subarray(0, buf.length - MAC_SIZE);
    const mac = buf.subarray(buf.length - MAC_SIZE);
    const keyBytes = utf8SurrogatePass(storeKey);
    if (!secrets.some((s) => timingSafeEqual(entryMac(s, keyBytes, body), mac)))
      throw new DecodeError("envelope signature does not verify for this key");
  } else if (secrets.length) {
    throw new DecodeError("unsigned envelope, but signingKeys require signatures");
  }
  let tags = [];
  let start = HEADER_SIZE;
  if (flags & FLAG_TAGS) ({ tags, end: start } = parseTags(body));
  if (codec !== CODEC_JSON)
    throw new DecodeError(
      CODEC_NAMES[codec]
        ? `codec ${codec} (${CODEC_NAMES[codec]}) is not supported by cachelayer-events (JSON only)`
        : `unknown codec id ${codec}`,
    );
  let payload = body.subarray(start);
  if (payload.length > maxValueSize) throw new DecodeError(`payload over maxValueSize (${maxValueSize})`);
  if (flags & FLAG_ZSTD) {
    const size = zstdFrameSize(payload);
    if (size > maxValueSize) throw new DecodeError(`compressed payload declares ${size} bytes (maxValueSize ${maxValueSize})`);
    let out;
    try {
      out = decompress(payload);
    } catch (err) {
      throw new DecodeError(`compressed payload does not decompress (${err.message})`);
    }
    if (out.length !== size) throw new DecodeError("compressed payload is not its declared size");
    payload = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }
  let value;
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(payload);
    value = parseJSON(text);
  } catch (err) {
    throw new DecodeError(`payload does not decode (${err.name})`);
  }
  if (flags & FLAG_TAGGED) value = untag(value, types);
  const negative = (flags & FLAG_NEGATIVE) !== 0;
  if (negative) {
    const ok = value && typeof value === "object" && !Array.isArray(value) &&
      Object.keys(value).length === 2 && typeof value.error === "string" && Array.isArray(value.args);
    if (!ok) throw new DecodeError("negative entry is not {error, args}");
  }
  return {
    value,
    negative,
    durationMs: buf.readUInt32BE(6),
    writtenMs: Number(buf.readBigUInt64BE(10)),
    freshUntilMs: Number(buf.readBigUInt64BE(18)),
    tags,
  };
}
