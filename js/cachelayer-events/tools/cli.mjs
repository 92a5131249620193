// The Node side of the cross-language tests (tests/events/test_node.py) and of
// bench/bench_events.py --node: one command per run, JSON in on stdin, JSON out on stdout.
//
//   node tools/cli.mjs keys|read|publish|example|webhook   < request.json
//   node tools/cli.mjs publisher <redis-url> <json options>   (a line per publish on stdin)

import { createInterface } from "node:readline";
import { Redis } from "ioredis";
import {
  PythonValue,
  inspectEntry,
  publishInvalidation,
  render,
  signEvent,
  storeKey,
  tagKey,
  webhookRequest,
} from "../src/index.js";

async function stdinJSON() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const secret = (hex) => Buffer.from(hex, "hex");

/** A decoded value in a JSON form Python can compare (tests/events/test_node.py's twin). */
function tagged(value) {
  if (typeof value === "bigint") return { $int: value.toString() };
  if (typeof value === "number" && !Number.isFinite(value)) return { $float: String(value) };
  if (Buffer.isBuffer(value)) return { $bytes: value.toString("base64") };
  if (value instanceof Set) return { $set: [...value].map(tagged) };
  if (value instanceof Map) return { $map: [...value].map(([k, v]) => [tagged(k), tagged(v)]) };
  if (value instanceof PythonValue) return { $py: [value.type, value.data] };
  if (Array.isArray(value)) return value.map(tagged);
  if (value !== null && typeof value === "object")
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, tagged(v)]));
  return value;
}

function attempt(fn) {
  try {
    return fn();
  } catch (err) {
    return { error: err.name };
  }
}

const commands = {
  async keys(req) {
    const opts = { namespace: req.namespace, version: req.version, maxKeyLength: req.maxKeyLength };
    return {
      store: req.keys.map((key) => attempt(() => storeKey({ ...opts, key }))),
      tags: req.tags.map((tag) => attempt(() => tagKey({ ...opts, tag }))),
      render: req.render.map((value) => attempt(() => render(value))),
    };
  },
  async read(req) {
    const redis = new Redis(req.redisUrl, { lazyConnect: true });
    try {
      const out = {};
      for (const key of req.keys) {
        const found = await inspectEntry(redis, {
          namespace: req.namespace,
          version: req.version,
          key,
          signingKeys: req.signingKeys?.map(secret),
        });
        out[key] = found.hit ? { hit: tagged(found.value) } : { miss: found.reason, error: found.error?.message };
      }
      return out;
    } finally {
      redis.disconnect();
    }
  },
  async publish(req) {
    const redis = new Redis(req.redisUrl, { lazyConnect: true });
    try {
      return await publishInvalidation(redis, { ...req, secret: secret(req.secretHex) });
    } finally {
      redis.disconnect();
    }
  },
  async example(req) {
    const signed = signEvent({ ...req, secret: req.secret });
    return { payload: signed.payload.toString("latin1"), signature: signed.signature };
  },
  async webhook(req) {
    const request = webhookRequest({ ...req, secret: secret(req.secretHex) });
    return { ...request, body: request.body.toString("base64") };
  },
};

// For the latency bench: stay connected; for each line on stdin (a JSON array of keys)
// publish an invalidation and print the CLOCK_MONOTONIC nanoseconds taken just before.
async function publisher(url, options) {
  const redis = new Redis(url);
  const base = JSON.parse(options);
  base.secret = secret(base.secretHex);
  process.stdout.write("ready\n");
  for await (const line of createInterface({ input: process.stdin })) {
    const start = process.hrtime.bigint();
    await publishInvalidation(redis, { ...base, keys: JSON.parse(line) });
    process.stdout.write(`${start}\n`);
  }
  redis.disconnect();
}

const [command, ...args] = process.argv.slice(2);
if (command === "publisher") {
  await publisher(args[0], args[1]);
} else if (command in commands) {
  const result = await commands[command](await stdinJSON());
  process.stdout.write(JSON.stringify(result));
} else {
  process.stderr.write(`unknown command ${command}\n`);
  process.exit(2);
}
