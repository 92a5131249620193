// Store keys, as docs/keys.md specifies: <namespace>:v<version>:<key>, long keys cut to
// a readable head and a BLAKE2b-128 of the whole key, and the renderings of argument
// values (escaping) that auto keys and key templates use.

import { blake2b } from "./blake2b.js";

const NAME_RE = /^[A-Za-z0-9_.-]+$/;
const UNRESERVED = /[A-Za-z0-9_.~-]/;

/** The smallest `maxKeyLength` a Cache accepts, and its default. */
export const MIN_KEY_LENGTH = 64;
export const DEFAULT_MAX_KEY_LENGTH = 250;

/**
 * UTF-8 bytes of a JS string, lone surrogates as their 3-byte sequences (what Python's
 * `surrogatepass` writes), so every string has bytes and distinct strings stay distinct.
 * @param {string} text
 * @returns {Buffer}
 */
export function utf8SurrogatePass(text) {
  const bytes = [];
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) bytes.push(cp);
    else if (cp < 0x800) bytes.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000)
      bytes.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else
      bytes.push(
        0xf0 | (cp >> 18),
        0x80 | ((cp >> 12) & 0x3f),
        0x80 | ((cp >> 6) & 0x3f),
        0x80 | (cp & 0x3f),
      );
  }
  return Buffer.from(bytes);
}

function hasLoneSurrogate(text) {
  return /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text);
}

/** Number of code points (what Python's `len` counts). */
function codePoints(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/**
 * Percent-encode everything but `[A-Za-z0-9_.~-]` (UTF-8, upper-case hex), as Python's
 * `urllib.parse.quote(text, safe="_.-", errors="surrogatepass")`.
 * @param {string} text
 */
export function escape(text) {
  let out = "";
  for (const ch of text) {
    if (ch.length === 1 && UNRESERVED.test(ch)) out += ch;
    else for (const b of utf8SurrogatePass(ch)) out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

/**
 * The rendering of an argument value in an auto key or a key template (docs/keys.md,
 * "Rendering arguments"), for the values JavaScript shares with Python: strings, integers
 * (`number` that is an integer, or `bigint`), booleans, `null`, arrays (Python lists) and
 * plain objects with string keys (Python dicts). Anything else throws `TypeError`: a JS
 * number with a fraction is ambiguous (Python renders `1.0` and `1` apart), so pass a
 * string or an integer.
 * @param {unknown} value
 * @returns {string}
 */
export function render(value) {
  if (typeof value === "string") {
    if (value === "") return "!s";
    const first = value[0];
    if ((first >= "0" && first <= "9") || first === "-")
      return "%" + first.charCodeAt(0).toString(16).toUpperCase() + escape(value.slice(1));
    return escape(value);
  }
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") {
    if (Number.isSafeInteger(value)) return String(value);
    throw new TypeError(`cannot render ${value}: only integers (or strings) render as in Python`);
  }
  if (typeof value === "boolean") return value ? "!T" : "!F";
  if (value === null) return "!N";
  if (Array.isArray(value)) return "![" + value.map(render).join(",") + "]";
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const items = Object.entries(value).map(([k, v]) => `${render(k)}=${render(v)}`);
    return "!m(" + items.sort(comparePython).join(",") + ")";
  }
  throw new TypeError(`cannot render a ${typeof value} as a cachelayer key part`);
}

// Python sorts str by code point; JS's default sort is by UTF-16 unit. Renderings are
// ASCII (escaped), so the two agree, but compare by code point anyway.
function comparePython(a, b) {
  const x = [...a].map((c) => c.codePointAt(0));
  const y = [...b].map((c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** Does Redis Cluster hash only part of `key` (a `{`, a later `}`, something between)? */
export function hasHashTag(key) {
  const start = key.indexOf("{");
  if (start === -1) return false;
  const end = key.indexOf("}", start + 1);
  return end > start + 1;
}

function checkName(what, value) {
  if (typeof value !== "string" || !NAME_RE.test(value))
    throw new TypeError(`${what} ${JSON.stringify(value)} must be non-empty [A-Za-z0-9_.-]`);
}

function shorten(full, maxKeyLength) {
  if (codePoints(full) < maxKeyLength) return full;
  const digest = blake2b(utf8SurrogatePass(full), 16).toString("hex");
  let head = [...full].slice(0, maxKeyLength - 33).join("");
  if (head.includes("}") && !hasHashTag(head)) head = head.replaceAll("}", "_");
  return head + "#" + digest;
}

/**
 * `<namespace>:v<version>:` -- the prefix of every store key of a Cache.
 * @param {string} namespace
 * @param {string|number} version
 */
export function keyPrefix(namespace, version = 1) {
  checkName("namespace", namespace);
  checkName("version", String(version));
  return `${namespace}:v${version}:`;
}

/**
 * The store key of a logical key, as `KeyBuilder.full` builds it.
 * @param {{namespace: string, version?: string|number, key: string, maxKeyLength?: number}} options
 * @returns {string}
 * @throws {TypeError|RangeError} a bad namespace or version, an empty key, a key with a
 *   lone surrogate, or a `}` outside a hash tag (the Cache refuses those keys too).
 */
export function storeKey({ namespace, version = 1, key, maxKeyLength = DEFAULT_MAX_KEY_LENGTH }) {
  if (typeof key !== "string") throw new TypeError("cache keys are strings");
  if (key === "") throw new RangeError("cache key is empty");
  if (!(maxKeyLength >= MIN_KEY_LENGTH)) throw new RangeError(`maxKeyLength is at least ${MIN_KEY_LENGTH}`);
  if (hasLoneSurrogate(key)) throw new RangeError("cache key holds a lone surrogate (no UTF-8 form)");
  const full = keyPrefix(namespace, version) + key;
  if (full.includes("}") && !hasHashTag(full))
    throw new RangeError("cache key holds '}' outside a {hash tag}");
  return shorten(full, maxKeyLength);
}

/**
 * The store key holding a tag's token: `{<namespace>:v<version>:}tags:<tag>`.
 * @param {{namespace: string, version?: string|number, tag: string, maxKeyLength?: number}} options
 */
export function tagKey({ namespace, version = 1, tag, maxKeyLength = DEFAULT_MAX_KEY_LENGTH }) {
  if (typeof tag !== "string" || tag === "") throw new TypeError("a tag is a non-empty string");
  if (hasLoneSurrogate(tag)) throw new RangeError("tag holds a lone surrogate (no UTF-8 form)");
  return shorten("{" + keyPrefix(namespace, version) + "}tags:" + tag, maxKeyLength);
}
