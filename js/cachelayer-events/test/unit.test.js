// Pure tests of the Node package against the worked examples of the docs (no Redis).
// Run with `npm test`; tests/events/test_node.py runs them from pytest.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import {
  DecodeError,
  blake2b,
  buildEvent,
  decodeEnvelope,
  parseJSON,
  render,
  signEvent,
  storeKey,
  webhookRequest,
} from "../src/index.js";

const hex = (s) => Buffer.from(s.replace(/\s+/g, ""), "hex");
const HEADER = "634c 01 01 08 00 0000000c 0000018bcfe56800 0000018bcfe9fbe0";

test("the worked event of docs/events.md: same bytes, same signature", () => {
  const signed = signEvent({
    namespace: "shop", keys: ["user:42"], tags: ["team:7"], origin: "billing-api",
    id: "6f1c0a5e2b3d4c8f9a7e1d2c3b4a5f60", ts: 1700000000000,
    kid: "k1", secret: "0123456789abcdef0123456789abcdef",
  });
  assert.equal(signed.payload.length, 138);
  assert.equal(signed.signature, "f42cfe0d315afff48522d22a36e8f2be49af7f7f7e47499a4c15cfb767a7f037");
  const request = webhookRequest({ namespace: "shop", keys: ["k"], kid: "k1", secret: "x".repeat(32) });
  assert.equal(request.headers["Cachelayer-Kid"], "k1");
  assert.match(request.headers["Cachelayer-Signature"], /^[0-9a-f]{64}$/);
});

test("events refuse what the format refuses", () => {
  const base = { namespace: "shop", kid: "k1", secret: "x".repeat(32) };
  assert.throws(() => signEvent({ ...base }), RangeError); // no key, no tag
  assert.throws(() => signEvent({ ...base, keys: "user:1" }), TypeError);
  assert.throws(() => signEvent({ ...base, keys: [""] }), RangeError);
  assert.throws(() => signEvent({ ...base, keys: Array(1001).fill("k") }), RangeError);
  assert.throws(() => signEvent({ ...base, keys: ["k"], secret: "short" }), RangeError);
  assert.throws(() => signEvent({ ...base, keys: ["k"], ts: 1.5 }), RangeError);
  assert.throws(() => signEvent({ ...base, keys: ["x".repeat(70000)] }), RangeError);
  // Non-ASCII is escaped as the Python writer escapes it.
  assert.equal(buildEvent({ namespace: "s", keys: ["é😀"], id: "a", ts: 1, origin: "" }).payload.toString(),
    '{"v":1,"id":"a","ns":"s","keys":["\\u00e9\\ud83d\\ude00"],"tags":[],"origin":"","ts":1}');
});

test("BLAKE2b matches Node's BLAKE2b-512 and the long-key example of docs/keys.md", () => {
  for (const n of [0, 1, 127, 128, 129, 256, 1000]) {
    const data = Buffer.alloc(n, n % 251);
    assert.equal(blake2b(data, 64).toString("hex"), createHash("blake2b512").update(data).digest("hex"));
  }
  assert.equal(blake2b(Buffer.from("abc"), 16).toString("hex"), "cf4ab791c62b8d2b2109c90275287816");
  assert.equal(storeKey({ namespace: "shop", key: "report:" + "x".repeat(100), maxKeyLength: 64 }),
    "shop:v1:report:xxxxxxxxxxxxxxxx#fdf74524ceca0082effef882e2340bfa");
});

test("renderings of docs/keys.md", () => {
  assert.equal(render("ada"), "ada");
  assert.equal(render("a b"), "a%20b");
  assert.equal(render("1:*"), "%31%3A%2A");
  assert.equal(render(""), "!s");
  assert.equal(render("42"), "%342");
  assert.equal(render("-7"), "%2D7");
  assert.equal(render("\ud800"), "%ED%A0%80");
  assert.equal(render({ b: 2, a: 1 }), "!m(a=1,b=2)");
  assert.equal(render([1, "a"]), "![1,a]");
  assert.throws(() => render(1.5), TypeError);
  assert.throws(() => storeKey({ namespace: "shop", key: "a}b" }), RangeError);
  assert.throws(() => storeKey({ namespace: "sh op", key: "a" }), TypeError);
});

test("the JSON envelope of docs/format.md decodes", () => {
  const raw = hex(HEADER + Buffer.from('{"id":42,"pos":{"$cl":["tuple",[1,2]]}}').toString("hex"));
  assert.equal(raw.length, 65);
  const entry = decodeEnvelope(raw);
  assert.deepEqual(entry.value, { id: 42, pos: [1, 2] });
  assert.equal(entry.durationMs, 12);
  assert.equal(entry.writtenMs, 1700000000000);
  assert.equal(entry.freshUntilMs, 1700000300000);
});

test("the signed envelope of docs/format.md verifies under its key only", () => {
  const raw = hex(`634c 02 01 02 00 00000000 0000018bcfe56800 0000000000000000 5b315d
    510a8ce00cd2bc3266aa45f96695061ae92eaff9d1947f20de8606ee2371d22b`);
  const key = "0123456789abcdef";
  assert.deepEqual(decodeEnvelope(raw, { storeKey: "shop:v1:user:42", signingKeys: [key] }).value, [1]);
  assert.throws(() => decodeEnvelope(raw, { storeKey: "shop:v1:user:43", signingKeys: [key] }), DecodeError);
  assert.throws(() => decodeEnvelope(raw, { storeKey: "shop:v1:user:42" }), DecodeError);
  assert.throws(() => decodeEnvelope(hex(HEADER + "5b315d"), { storeKey: "k", signingKeys: [key] }), DecodeError);
});

test("the tag section of docs/format.md parses", () => {
  const raw = hex(`634c 01 01 10 00 00000000 0000018bcfe56800 0000018bcfe9fbe0 01 0016
    ${Buffer.from("{shop:v1:tags}:user:42").toString("hex")} 08 8f3a01c2d4e5f607 22686922`);
  assert.equal(raw.length, 64);
  const entry = decodeEnvelope(raw);
  assert.equal(entry.value, "hi");
  assert.equal(entry.tags[0].key, "{shop:v1:tags}:user:42");
  assert.equal(entry.tags[0].token.toString("hex"), "8f3a01c2d4e5f607");
  assert.throws(() => decodeEnvelope(raw.subarray(0, 40)), DecodeError);
});

test("what a reader must reject is rejected", () => {
  const ok = hex(HEADER.replace(" 08 ", " 00 ") + "5b315d");
  assert.deepEqual(decodeEnvelope(ok).value, [1]);
  const bad = (patch) => {
    const b = Buffer.from(ok);
    patch(b);
    return b;
  };
  for (const raw of [
    ok.subarray(0, 25),
    bad((b) => (b[0] = 0x64)),          // magic
    bad((b) => (b[2] = 3)),             // version
    bad((b) => (b[4] = 0x20)),          // unknown flag
    bad((b) => (b[5] = 1)),             // reserved byte
    bad((b) => (b[3] = 2)),             // msgpack: not supported here
    bad((b) => (b[3] = 9)),             // unknown codec
    Buffer.concat([ok, Buffer.from(" x")]), // trailing bytes
  ]) assert.throws(() => decodeEnvelope(raw), DecodeError);
  const tagged = (json) => hex(HEADER + Buffer.from(json).toString("hex"));
  assert.throws(() => decodeEnvelope(tagged('{"$cl":["nope",1]}')), DecodeError);
  assert.throws(() => decodeEnvelope(tagged('{"$cl":["x","app.User",{}]}')), DecodeError);
  assert.deepEqual(
    decodeEnvelope(tagged('{"$cl":["x","app.User",{"id":1}]}'), { types: { "app.User": (d) => ({ user: d.id }) } }).value,
    { user: 1 },
  );
  assert.throws(() => decodeEnvelope(bad((b) => (b[4] = 0x04))), DecodeError); // negative, not {error,args}
});

test("zstd payloads: one frame that declares its size, nothing after it", () => {
  const head = HEADER.replace(" 08 ", " 01 ");
  const body = Buffer.from("[1,2,3]");
  const block = Buffer.from([(body.length << 3) | 1, 0, 0]); // last raw block
  const frame = Buffer.concat([hex("28b52ffd 20"), Buffer.from([body.length]), block, body]);
  assert.deepEqual(decodeEnvelope(Buffer.concat([hex(head), frame])).value, [1, 2, 3]);
  const undeclared = Buffer.concat([hex("28b52ffd 00 58"), block, body]);
  assert.throws(() => decodeEnvelope(Buffer.concat([hex(head), undeclared])), /content size/);
  assert.throws(() => decodeEnvelope(Buffer.concat([hex(head), frame, frame])), /after the frame/);
  const liar = Buffer.from(frame);
  liar[5] = body.length + 1;
  assert.throws(() => decodeEnvelope(Buffer.concat([hex(head), liar])), DecodeError);
  assert.throws(() => decodeEnvelope(Buffer.concat([hex(head), frame]), { maxValueSize: 4 }), DecodeError);
});

test("the JSON parser keeps 64-bit integers exact and refuses what JSON refuses", () => {
  assert.equal(parseJSON("9223372036854775807"), 9223372036854775807n);
  assert.equal(parseJSON("-1.5e3"), -1500);
  const obj = parseJSON('{"__proto__":{"polluted":1}}');
  assert.equal(Object.getPrototypeOf(obj), Object.prototype);
  assert.deepEqual(Object.keys(obj), ["__proto__"]);
  for (const text of ["NaN", "[1,]", "01", '"\\x"', "{'a':1}", "[1] 2", '"\u0001"', ""])
    assert.throws(() => parseJSON(text), SyntaxError, text);
});
