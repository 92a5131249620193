// Reading an entry the Python Cache wrote: store key, GET, envelope, freshness, tags.

import { DecodeError, decodeEnvelope } from "./envelope.js";
import { storeKey as buildStoreKey } from "./keys.js";

/**
 * What reading a key found, with the reason of a miss.
 * @param {import("ioredis").Redis} redis
 * @param {{namespace: string, version?: string|number, key: string, maxKeyLength?: number,
 *          signingKeys?: (string|Uint8Array)[]|string|Uint8Array, maxValueSize?: number,
 *          types?: Record<string, (data: unknown) => unknown>, now?: number}} options
 * @returns {Promise<{hit: boolean, value: unknown, storeKey: string,
 *   reason: "hit"|"absent"|"stale"|"negative"|"tags"|"rejected", error?: DecodeError}>}
 */
export async function inspectEntry(redis, options) {
  const key = buildStoreKey(options);
  const raw = await redis.getBuffer(key);
  const miss = (reason, error) => ({ hit: false, value: null, storeKey: key, reason, ...(error ? { error } : {}) });
  if (raw === null) return miss("absent");
  let entry;
  try {
    entry = decodeEnvelope(raw, { ...options, storeKey: key });
  } catch (err) {
    if (err instanceof DecodeError) return miss("rejected", err);
    throw err;
  }
  const now = options.now ?? Date.now();
  if (entry.freshUntilMs !== 0 && now >= entry.freshUntilMs) return miss("stale");
  if (entry.negative) return miss("negative");
  if (entry.tags.length) {
    // The entry holds while every tag key still holds the token it was computed under
    // (an empty token: the tag key did not exist). cache.invalidate_tags replaces them.
    const current = await redis.mgetBuffer(...entry.tags.map((t) => t.key));
    const holds = entry.tags.every((t, i) => (current[i] ?? Buffer.alloc(0)).equals(t.token));
    if (!holds) return miss("tags");
  }
  return { hit: true, value: entry.value, storeKey: key, reason: "hit" };
}

/**
 * The value a Python Cache holds for `key`, or null (absent, stale, a cached error,
 * invalidated by a tag, or an envelope this reader must reject -- as `cache.get`).
 * @param {import("ioredis").Redis} redis
 * @param {Parameters<typeof inspectEntry>[1]} options
 * @returns {Promise<unknown>}
 */
export async function readEntry(redis, options) {
  return (await inspectEntry(redis, options)).value;
}
