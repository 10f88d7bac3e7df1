// The client against the real sidecar binary and a real redis-server: history replay, resume
// across a sidecar restart mid-stream (every event exactly once, in order), positions at connect
// for a page that names no groups (Redis and the memory broker), resets, history off, the plain
// (pre-v1) mode, and a refused handshake.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, afterEach, before, test } from "node:test";

import { HandshakeError, TaskStream } from "../index.js";
import { RedisServer, WAIT, eventually } from "./support/redis.mjs";
import { Sidecar, sidecarBinary } from "./support/sidecar.mjs";
import { until, waitFor } from "./support/wsserver.mjs";

let redis;
const cleanup = [];
before(async () => {
  sidecarBinary(); // build once, outside any test's time
  redis = await RedisServer.start();
});
after(() => redis?.stop());
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()();
});

async function sidecar(...args) {
  const s = await Sidecar.start(["--auth", "none", "--redis-url", redis.url, ...args]);
  cleanup.push(() => s.stop());
  return s;
}

function client(opts) {
  const c = new TaskStream({ backoff: { min: 50, max: 500 }, ...opts });
  cleanup.push(() => c.close());
  return c;
}

/** Collects the "event"s of `c` and resolves `done` once `n` arrived (bounded). */
function collect(c, n, ms = WAIT * 3) {
  const events = [];
  let resolve;
  const done = new Promise((r, reject) => {
    resolve = r;
    setTimeout(() => reject(new Error(`${events.length} of ${n} events within ${ms} ms`)), ms).unref();
  });
  c.on("event", (e) => {
    events.push(e);
    if (events.length === n) resolve(events);
  });
  return { events, done };
}

test("a page load replays the group's history, then live events follow", async () => {
  const s = await sidecar("--history-size", "100");
  const ids = [];
  for (let n = 0; n < 5; n++) ids.push(await redis.client.publish("replay", { n }));
  const c = client({ url: s.wsUrl("groups=replay"), lastIds: { replay: "0" } });
  const { events, done } = collect(c, 7);
  await until(c, "live");
  assert.equal(c.versioned, true);
  ids.push(await redis.client.publish("replay", { n: 5 }));
  // Live only (no history): delivered, no id.
  await redis.client.command("PUBLISH", "taskstream:replay", '{"live":true}');
  await done;
  assert.deepEqual(events.map((e) => e.id), [...ids, undefined]);
  assert.deepEqual(events.map((e) => e.data), [0, 1, 2, 3, 4, 5].map((n) => ({ n })).concat([{ live: true }]));
  assert.ok(events.every((e) => e.group === "replay"));
  assert.equal(c.lastId("replay"), ids[5]);
});

test("a sidecar restart mid-stream: every event exactly once, in order", async () => {
  const s = await sidecar("--history-size", "1000");
  const total = 300;
  const c = client({ url: s.wsUrl("groups=restart,other") });
  const { events, done } = collect(c, total);
  const resets = [];
  c.on("reset", (r) => resets.push(r));
  await until(c, "live");
  const states = [];
  let published = 0;
  const marks = {};
  c.on("state", (st) => {
    states.push(st);
    marks[st] = published; // how far the publisher was when the client dropped / came back
  });
  // Publish steadily (one event every 2 ms) while the sidecar restarts under the client.
  const publisher = (async () => {
    for (; published < total; published++) {
      await redis.client.publish("restart", { type: "progress", task: "t1", percent: Math.floor((published * 100) / total), state: "running", message: `step ${published}` });
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  await eventually("some events before the restart", () => events.length >= 20);
  await s.restart();
  await publisher;
  await done;
  assert.deepEqual(events.map((e) => e.data.message), Array.from({ length: total }, (_, n) => `step ${n}`));
  assert.equal(new Set(events.map((e) => e.id)).size, total);
  assert.deepEqual(resets, []);
  assert.deepEqual(states, ["reconnecting", "live"]);
  // The restart was mid-stream: events were published while the client was away.
  assert.ok(marks.reconnecting < marks.live && marks.live < total, JSON.stringify(marks));
  assert.equal(c.state, "live");
});

test("a group with no event yet resumes from the position given up front", async () => {
  // Without an id the client could not resume the group: `lastIds: {g: "0"}` gives it one.
  const s = await sidecar("--history-size", "100");
  const c = client({ url: s.wsUrl("groups=quiet"), lastIds: { quiet: "0" } });
  const resets = [];
  c.on("reset", (r) => resets.push(r));
  await until(c, "live");
  const got = waitFor(c, "event");
  let id;
  await s.restart(async () => {
    id = await redis.client.publish("quiet", { n: 1 }); // while no sidecar runs
  });
  assert.deepEqual(await got, { group: "quiet", id, data: { n: 1 } });
  assert.deepEqual(resets, []);
  assert.equal(c.lastId("quiet"), id);
});

/** The app's forward-auth endpoint: every page is "ann", granted `groups` (plus user:ann). */
async function authApp(groups) {
  const server = createServer((req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ user: "ann", groups }));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanup.push(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${server.address().port}`;
}

async function forwardSidecar(upstream, ...args) {
  const s = await Sidecar.start(["--auth", "forward", "--upstream", upstream, "--history-size", "100", ...args]);
  cleanup.push(() => s.stop());
  return s;
}

async function publishAdmin(s, group, data) {
  const r = await fetch(`http://127.0.0.1:${s.admin}/publish/${group}`, { method: "POST", body: JSON.stringify(data) });
  assert.equal(r.status, 200);
  return (await r.json()).id;
}

/** A page with no `groups` option: it learns its groups (and where it stands) from the sidecar. */
async function pageWithPositions(s, expected) {
  const c = client({ url: s.wsUrl() });
  const positions = [];
  c.on("position", (p) => positions.push(p));
  await eventually("a position per granted group", () => positions.length === Object.keys(expected).length);
  assert.deepEqual(Object.fromEntries(positions.map((p) => [p.group, p.id])), expected);
  assert.deepEqual(c.lastIds(), expected);
  return c;
}

test("positions: a page without groups resumes a new group's first event published while the sidecar is down, once", async () => {
  const upstream = await authApp(["pos-old", "pos-new"]);
  const before = await redis.client.publish("pos-old", { n: 0 });
  const s = await forwardSidecar(upstream, "--redis-url", redis.url);
  const c = await pageWithPositions(s, { "pos-old": before, "pos-new": "0", "user:ann": "0" });
  const resets = [];
  c.on("reset", (r) => resets.push(r));
  const { events, done } = collect(c, 2);
  let first;
  await s.restart(async () => {
    first = await redis.client.publish("pos-new", { n: 1 }); // while no sidecar runs
  });
  await eventually("the missed event", () => events.length === 1);
  const marker = await redis.client.publish("pos-new", { marker: true });
  await done;
  // Exactly once: a duplicate would come before the live marker.
  assert.deepEqual(events, [
    { group: "pos-new", id: first, data: { n: 1 } },
    { group: "pos-new", id: marker, data: { marker: true } },
  ]);
  assert.deepEqual(resets, []);
});

test("positions with the memory broker: a new group's first event published while the page is away arrives once", async () => {
  const upstream = await authApp(["mem-old", "mem-new"]);
  const s = await forwardSidecar(upstream, "--broker", "memory");
  const before = await publishAdmin(s, "mem-old", { n: 0 });
  const c = await pageWithPositions(s, { "mem-old": before, "mem-new": "0", "user:ann": "0" });
  // The ring lives in the sidecar: the page goes away instead, and comes back with its positions.
  c.close();
  const first = await publishAdmin(s, "mem-new", { n: 1 });
  const { events, done } = collect(c, 2);
  c.connect();
  await eventually("the missed event", () => events.length === 1);
  const marker = await publishAdmin(s, "mem-new", { marker: true });
  await done;
  assert.deepEqual(events, [
    { group: "mem-new", id: first, data: { n: 1 } },
    { group: "mem-new", id: marker, data: { marker: true } },
  ]);
});

test("a gap history cannot cover is a reset, then live events", async () => {
  const s = await sidecar("--history-size", "3");
  const first = await redis.client.publish("trim", "a", { size: 3 });
  for (const p of ["b", "c", "d", "e"]) await redis.client.publish("trim", p, { size: 3 });
  const c = client({ url: s.wsUrl("groups=trim"), lastIds: { trim: first } });
  const reset = waitFor(c, "reset");
  assert.deepEqual(await reset, { group: "trim", reason: "trimmed" });
  await until(c, "live");
  const next = waitFor(c, "event");
  const id = await redis.client.publish("trim", "f", { size: 3 });
  assert.deepEqual(await next, { group: "trim", id, data: "f" });
});

test("history off: events arrive without resume, and a last_id gets a history_off reset", async () => {
  const s = await sidecar();
  const c = client({ url: s.wsUrl("groups=off"), lastIds: { off: "0" } });
  assert.deepEqual(await waitFor(c, "reset"), { group: "off", reason: "history_off" });
  await until(c, "live");
  const got = waitFor(c, "event");
  await redis.client.command("PUBLISH", "taskstream:off", '{"n":1}');
  assert.deepEqual(await got, { group: "off", id: undefined, data: { n: 1 } });
});

test("without the subprotocol: payloads verbatim, history envelope stripped", async () => {
  const s = await sidecar("--history-size", "10");
  const c = client({ url: s.wsUrl("groups=plain"), protocol: false, lastIds: { plain: "0" } });
  await until(c, "live");
  assert.equal(c.versioned, false);
  const { events, done } = collect(c, 2);
  await redis.client.publish("plain", { n: 1 });
  await redis.client.command("PUBLISH", "taskstream:plain", "text");
  await done;
  assert.deepEqual(events, [
    { group: undefined, id: undefined, data: { n: 1 } },
    { group: undefined, id: undefined, data: "text" },
  ]);
});

test("a refused handshake (401: no token) stops the client", async () => {
  const s = await Sidecar.start(["--auth", "jwt", "--jwt-secret", "0123456789abcdef0123456789abcdef", "--redis-url", redis.url]);
  cleanup.push(() => s.stop());
  // A plain GET of the WebSocket path answers the handshake's refusal: that is how the client
  // sees it (a browser WebSocket cannot).
  const plain = await fetch(`http://127.0.0.1:${s.public}/ws/tasks/`);
  assert.equal(plain.status, 401);
  const c = client({ url: s.wsUrl() });
  const err = await waitFor(c, "error");
  assert.ok(err instanceof HandshakeError);
  assert.equal(err.status, 401);
  assert.equal(c.state, "stopped");
});
