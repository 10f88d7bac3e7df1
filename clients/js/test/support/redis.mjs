// A real redis-server on a free port (killed after the test) and a minimal RESP client over
// node:net, so the tests publish with the real history script without any npm dependency.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
export const PUBLISH_SCRIPT = readFileSync(`${REPO}/sidecar/src/broker/publish.lua`, "utf8");
export const WAIT = 10_000;

// Ports are handed out below the kernel's ephemeral range (32768-60999 by default), so no
// outgoing connection gets one as its local port: a server stopped and started again on the same
// port (a sidecar restart while the client retries) cannot find it taken meanwhile, e.g. by a
// reconnect the kernel connected to itself. Distinct within this process, spread by pid.
const PORTS = { start: 15000, end: 22768 };
let nextPort = (process.pid * 7919) % (PORTS.end - PORTS.start);

function bindable(port) {
  return new Promise((resolve) => {
    const s = createServer();
    s.on("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

export async function freePort() {
  const span = PORTS.end - PORTS.start;
  for (let i = 0; i < span; i++) {
    const port = PORTS.start + (nextPort++ % span);
    if (await bindable(port)) return port;
  }
  throw new Error(`no free loopback port in ${PORTS.start}..${PORTS.end}`);
}

/** Polls `f` (every 20 ms, bounded) until it returns something other than undefined/false:
 *  for another process's state, which offers no event to await. */
export async function eventually(what, f, ms = WAIT) {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function encode(args) {
  const parts = [`*${args.length}\r\n`];
  for (const a of args) {
    const b = Buffer.from(String(a));
    parts.push(`$${b.length}\r\n`, b, "\r\n");
  }
  return Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : p)));
}

/** Parses one RESP2 reply at `off`; returns [value, next offset] or null if incomplete. */
function parse(buf, off) {
  const nl = buf.indexOf("\r\n", off);
  if (nl < 0) return null;
  const kind = String.fromCharCode(buf[off]);
  const line = buf.toString("utf8", off + 1, nl);
  if (kind === "+") return [line, nl + 2];
  if (kind === "-") return [new Error(line), nl + 2];
  if (kind === ":") return [Number(line), nl + 2];
  if (kind === "$") {
    const n = Number(line);
    if (n < 0) return [null, nl + 2];
    if (buf.length < nl + 2 + n + 2) return null;
    return [buf.toString("utf8", nl + 2, nl + 2 + n), nl + 2 + n + 2];
  }
  if (kind === "*") {
    const n = Number(line);
    const out = [];
    let at = nl + 2;
    for (let i = 0; i < n; i++) {
      const r = parse(buf, at);
      if (!r) return null;
      out.push(r[0]);
      at = r[1];
    }
    return [out, at];
  }
  throw new Error(`unexpected RESP reply ${kind}`);
}

export class RedisClient {
  static async connect(port) {
    const c = new RedisClient();
    c.socket = connect(port, "127.0.0.1");
    c.pending = [];
    c.buf = Buffer.alloc(0);
    c.socket.on("data", (d) => {
      c.buf = Buffer.concat([c.buf, d]);
      for (;;) {
        const r = parse(c.buf, 0);
        if (!r) break;
        c.buf = c.buf.subarray(r[1]);
        const { resolve, reject } = c.pending.shift();
        if (r[0] instanceof Error) reject(r[0]);
        else resolve(r[0]);
      }
    });
    c.socket.on("error", (e) => {
      for (const p of c.pending.splice(0)) p.reject(e);
    });
    await new Promise((resolve, reject) => {
      c.socket.once("connect", resolve);
      c.socket.once("error", reject);
    });
    return c;
  }
  command(...args) {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(encode(args));
    });
  }
  /** Publishes with history (the sidecar's script); resolves with the event id. */
  publish(group, data, { size = 100, ttlMs = 600_000, prefix = "taskstream:" } = {}) {
    const payload = typeof data === "string" ? data : JSON.stringify(data);
    return this.command("EVAL", PUBLISH_SCRIPT, 1, prefix + group, payload, size, ttlMs);
  }
  close() {
    this.socket.destroy();
  }
}

export class RedisServer {
  static async start() {
    const s = new RedisServer();
    s.port = await freePort();
    s.proc = spawn("redis-server", ["--port", String(s.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"], { stdio: ["ignore", "ignore", "inherit"] });
    s.client = await eventually("redis-server to accept connections", () => RedisClient.connect(s.port).catch(() => undefined));
    return s;
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  stop() {
    this.client?.close();
    this.proc.kill("SIGKILL");
  }
}
