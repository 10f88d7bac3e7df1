// Unit-level tests of the client's logic against a tiny in-test WebSocket server
// (support/wsserver.mjs): URL, state, resume ids, resets, backoff, refusal, wake-up.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { HandshakeError, PROTOCOL, TaskStream, asProgress, backoffDelay, compareIds } from "../index.js";
import { TinyServer, until, waitFor } from "./support/wsserver.mjs";

const cleanup = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()();
});

async function server(opts) {
  const s = await new TinyServer(opts).listen();
  cleanup.push(() => s.close());
  return s;
}

function client(opts) {
  const c = new TaskStream({ backoff: { min: 20, max: 100 }, ...opts });
  cleanup.push(() => c.close());
  return c;
}

test("backoff is capped exponential with equal jitter", () => {
  const b = { min: 250, max: 5000 };
  assert.equal(backoffDelay(0, b, () => 0), 125);
  assert.equal(backoffDelay(0, b, () => 1), 250);
  assert.equal(backoffDelay(3, b, () => 1), 2000);
  assert.equal(backoffDelay(10, b, () => 1), 5000);
  assert.equal(backoffDelay(10, b, () => 0), 2500);
  assert.equal(backoffDelay(1000, b, () => 0.5), 3750);
});

test("ids compare as <ms>-<seq>", () => {
  assert.equal(compareIds("1-0", "1-0"), 0);
  assert.equal(compareIds("9-5", "10-0"), -1);
  assert.equal(compareIds("10-10", "10-9"), 1);
  assert.equal(compareIds("18446744073709551615-1", "18446744073709551615-0"), 1);
  assert.ok(Number.isNaN(compareIds("a", "b")));
});

test("progress events are recognised", () => {
  assert.deepEqual(asProgress({ type: "progress", task: "t", percent: 140, state: "done", message: null }), {
    task: "t", percent: 100, state: "done", message: null,
  });
  assert.equal(asProgress({ task: "t", progress: 5 }), null);
  assert.equal(asProgress("text"), null);
});

test("url carries groups, params and one last_id per group", () => {
  const c = new TaskStream({
    url: "http://h:1/ws/tasks/", autoConnect: false, groups: ["a", "b"],
    params: () => ({ token: "t k" }), lastIds: { "user:1": "5-0", "a:b:c": "0" },
  });
  const u = new URL(c.url());
  assert.equal(u.protocol, "ws:");
  assert.equal(u.searchParams.get("groups"), "a,b");
  assert.equal(u.searchParams.get("token"), "t k");
  assert.deepEqual(u.searchParams.getAll("last_id"), ["user:1:5-0", "a:b:c:0"]);
  assert.equal(new TaskStream({ url: "https://h/x", autoConnect: false }).url(), "wss://h/x");
  assert.deepEqual(new URL(new TaskStream({ url: "ws://h/x", autoConnect: false, protocol: false, lastIds: { g: "1-1" } }).url()).searchParams.getAll("last_id"), []);
});

test("states, ids and resume across reconnects", async () => {
  const s = await server();
  const c = client({ url: s.url, lastIds: { g1: "0" } });
  const states = [];
  c.on("state", (st) => states.push(st));
  const events = [];
  c.on("event", (e) => events.push(e));
  let conn = await s.next();
  assert.deepEqual(conn.protocols, [PROTOCOL]);
  assert.deepEqual(conn.url.searchParams.getAll("last_id"), ["g1:0"]);
  await until(c, "live");
  assert.equal(c.versioned, true);
  conn.send(JSON.stringify({ type: "event", group: "g1", id: "5-0", data: { n: 1 } }));
  conn.send(JSON.stringify({ type: "event", group: "g2", id: "7-3", data: "text" }));
  conn.send(JSON.stringify({ type: "event", group: "g2", data: "live only" }));
  conn.send(JSON.stringify({ type: "event", group: "g1", id: "5-0", data: { n: "duplicate" } }));
  conn.send(JSON.stringify({ type: "future-frame" }));
  conn.send(JSON.stringify({ type: "event", group: "g1", id: "6-0", data: { n: 2 } }));
  await waitFor(c, "event", (e) => e.id === "6-0");
  assert.deepEqual(events, [
    { group: "g1", id: "5-0", data: { n: 1 } },
    { group: "g2", id: "7-3", data: "text" },
    { group: "g2", id: undefined, data: "live only" },
    { group: "g1", id: "6-0", data: { n: 2 } },
  ]);
  assert.deepEqual(c.lastIds(), { g1: "6-0", g2: "7-3" });

  conn.close(1001); // a sidecar restart
  await until(c, "reconnecting");
  conn = await s.next();
  assert.deepEqual(conn.url.searchParams.getAll("last_id").sort(), ["g1:6-0", "g2:7-3"]);
  await until(c, "live");
  conn.drop(); // no close frame at all
  conn = await s.next();
  await until(c, "live");
  assert.deepEqual(states, ["live", "reconnecting", "live", "reconnecting", "live"]);
});

test("reset and progress events reach their listeners", async () => {
  const s = await server();
  const c = client({ url: s.url });
  const conn = await s.next();
  const reset = waitFor(c, "reset");
  conn.send(JSON.stringify({ type: "reset", group: "user:1", reason: "trimmed" }));
  assert.deepEqual(await reset, { group: "user:1", reason: "trimmed" });
  const progress = waitFor(c, "progress");
  conn.send(JSON.stringify({ type: "event", group: "user:1", id: "1-0", data: { type: "progress", task: "abc", percent: 40, state: "running", message: "half" } }));
  assert.deepEqual(await progress, { group: "user:1", id: "1-0", task: "abc", percent: 40, state: "running", message: "half" });
});

test("positions are kept like event ids and resumed from; unknown frame types are ignored", async () => {
  const s = await server();
  const c = client({ url: s.url, lastIds: { had: "3-0" } });
  const positions = [];
  c.on("position", (p) => positions.push(p));
  let conn = await s.next();
  await until(c, "live");
  conn.send(JSON.stringify({ type: "position", group: "new", id: "0" }));
  conn.send(JSON.stringify({ type: "position", group: "old", id: "9-1" }));
  conn.send(JSON.stringify({ type: "position", group: "had", id: "2-0" })); // older: kept 3-0
  conn.send(JSON.stringify({ type: "position", group: 7 })); // malformed: ignored
  conn.send(JSON.stringify({ type: "snapshot", group: "new", id: "99-0", data: {} })); // a later type
  conn.send(JSON.stringify({ type: "event", group: "old", id: "9-1", data: "at the position" }));
  conn.send(JSON.stringify({ type: "event", group: "new", id: "10-0", data: "first" }));
  const first = await waitFor(c, "event");
  assert.deepEqual(first, { group: "new", id: "10-0", data: "first" }, "the copy at the position is dropped");
  assert.deepEqual(positions, [{ group: "new", id: "0" }, { group: "old", id: "9-1" }, { group: "had", id: "2-0" }]);
  assert.deepEqual(c.lastIds(), { had: "3-0", new: "10-0", old: "9-1" });
  conn.send(JSON.stringify({ type: "position", group: "zero", id: "0" }));
  await waitFor(c, "position", (p) => p.group === "zero");
  conn.close(1001);
  conn = await s.next();
  assert.deepEqual(conn.url.searchParams.getAll("last_id").sort(), ["had:3-0", "new:10-0", "old:9-1", "zero:0"]);
});

test("a listener that throws does not stop the others", async () => {
  const s = await server();
  const c = client({ url: s.url });
  const conn = await s.next();
  const logged = [];
  const consoleError = console.error;
  console.error = (e) => logged.push(e);
  cleanup.push(() => {
    console.error = consoleError;
  });
  c.on("event", () => {
    throw new Error("page bug");
  });
  const got = waitFor(c, "event");
  conn.send(JSON.stringify({ type: "event", group: "g", id: "1-0", data: 1 }));
  assert.equal((await got).data, 1);
  assert.equal(logged[0].message, "page bug");
  const next = waitFor(c, "event");
  conn.send(JSON.stringify({ type: "event", group: "g", id: "2-0", data: 2 }));
  assert.equal((await next).data, 2);
  assert.equal(c.state, "live");
});

test("without the subprotocol, frames are payloads verbatim and nothing is resumed", async () => {
  const s = await server({ protocol: null });
  const c = client({ url: s.url, protocol: false, lastIds: { g: "1-0" } });
  let conn = await s.next();
  assert.deepEqual(conn.protocols, []);
  await until(c, "live");
  assert.equal(c.versioned, false);
  const got = waitFor(c, "event");
  conn.send('{"task":1,"progress":5}');
  assert.deepEqual(await got, { group: undefined, id: undefined, data: { task: 1, progress: 5 } });
  const text = waitFor(c, "event");
  conn.send("not json");
  assert.equal((await text).data, "not json");
  conn.close();
  conn = await s.next();
  assert.deepEqual(conn.url.searchParams.getAll("last_id"), []);
});

test("a refused handshake (401/403/400) stops retrying with a clear error", async () => {
  for (const status of [401, 403, 400]) {
    const s = await server({ refuse: status, plainStatus: status });
    const c = client({ url: s.url });
    const err = await waitFor(c, "error");
    assert.ok(err instanceof HandshakeError);
    assert.equal(err.status, status);
    assert.match(err.message, new RegExp(`HTTP ${status}: refused by test`));
    assert.equal(c.state, "stopped");
    // Give a retry every chance to happen (the backoff is 10-100 ms): none does.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(s.attempts, 1);
    assert.equal(s.preflights, 1);
  }
});

test("other failures before open keep retrying with backoff", async () => {
  const s = await server({ refuse: 503, plainStatus: 426 });
  const c = client({ url: s.url });
  const states = [];
  c.on("state", (st) => states.push(st));
  await s.attemptsReach(4);
  assert.equal(c.state, "reconnecting");
  s.refuse = null;
  await until(c, "live");
});

test("online / visible reconnects at once instead of waiting out the backoff", async () => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  cleanup.push(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  const s = await server();
  // A one-minute backoff: only the wake-up can bring the client back within the test.
  const c = client({ url: s.url, backoff: { min: 60_000, max: 60_000 } });
  const conn = await s.next();
  conn.close(1001);
  await until(c, "reconnecting");
  const t0 = Date.now();
  target.dispatchEvent(new Event("online"));
  await s.next(2000);
  await until(c, "live");
  assert.ok(Date.now() - t0 < 2000);
});

test("close() stops for good; connect() starts again", async () => {
  const s = await server();
  const c = client({ url: s.url });
  const conn = await s.next();
  await until(c, "live");
  c.close();
  assert.equal(c.state, "stopped");
  await conn.closed;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(s.attempts, 1);
  c.connect();
  await s.next();
  await until(c, "live");
});

test("npm pack makes the package: the module, its types and the README", async () => {
  const { execFileSync } = await import("node:child_process");
  const out = execFileSync("npm", ["pack", "--dry-run", "--json"], { cwd: new URL("..", import.meta.url), encoding: "utf8" });
  const [pack] = JSON.parse(out);
  assert.equal(pack.name, "@taskstream/client");
  assert.equal(pack.version, "0.1.0");
  assert.deepEqual(pack.files.map((f) => f.path).sort(), ["README.md", "index.d.ts", "index.js", "package.json"]);
});
