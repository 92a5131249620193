// cachelayer-events: publish cachelayer invalidation events from Node.js and read the
// entries a Python cachelayer Cache wrote. The specifications are the repository's
// docs/events.md, docs/format.md and docs/keys.md.

export {
  DEFAULT_MAXLEN,
  HEADER_KID,
  HEADER_SIGNATURE,
  MAX_ITEMS,
  MAX_PAYLOAD_BYTES,
  MIN_SECRET_BYTES,
  buildEvent,
  publishInvalidation,
  sign,
  signEvent,
  streamFor,
  webhookRequest,
} from "./events.js";
export { DecodeError, PythonValue, decodeEnvelope } from "./envelope.js";
export { escape, hasHashTag, keyPrefix, render, storeKey, tagKey } from "./keys.js";
export { inspectEntry, readEntry } from "./read.js";
export { blake2b } from "./blake2b.js";
export { parseJSON } from "./json.js";
