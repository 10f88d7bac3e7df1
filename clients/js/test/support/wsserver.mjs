// A tiny WebSocket server for unit-level tests of the client's logic only (reconnect, backoff,
// state, resume URL, refusal): it answers handshakes as told and sends frames on request.
// End-to-end behaviour is tested against the real sidecar (e2e.test.mjs).
import { createHash } from "node:crypto";
import { createServer } from "node:http";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len]) : Buffer.from([0x80 | opcode, 126, len >> 8, len & 0xff]);
  return Buffer.concat([head, payload]);
}

export class Conn {
  constructor(socket, url, protocols) {
    this.socket = socket;
    this.url = new URL(url, "http://x");
    this.protocols = protocols;
    this.closed = new Promise((resolve) => socket.on("close", resolve));
    let buf = Buffer.alloc(0);
    socket.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2) {
        const opcode = buf[0] & 0x0f;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          len = buf.readUInt16BE(2);
          off = 4;
        }
        if (buf.length < off + 4 + len) return;
        buf = buf.subarray(off + 4 + len);
        if (opcode === 8) {
          socket.end(frame(8, Buffer.from([0x03, 0xe8])));
        }
      }
    });
    socket.on("error", () => {});
  }
  send(text) {
    this.socket.write(frame(1, Buffer.from(text)));
  }
  close(code = 1001) {
    this.socket.end(frame(8, Buffer.from([code >> 8, code & 0xff])));
  }
  drop() {
    this.socket.destroy();
  }
}

export class TinyServer {
  /** protocol: the subprotocol to select when offered (null: none); refuse: HTTP status for
   *  every handshake; plainStatus: status of a plain GET (the client's preflight). */
  constructor({ protocol = "taskstream.v1", refuse = null, plainStatus = 426 } = {}) {
    this.protocol = protocol;
    this.refuse = refuse;
    this.plainStatus = plainStatus;
    this.attempts = 0;
    this.preflights = 0;
    this.waiters = [];
    this.pending = [];
    this.http = createServer((req, res) => {
      this.preflights++;
      res.writeHead(this.plainStatus, { "content-type": "text/plain" });
      res.end(this.plainStatus === 426 ? "websocket only\n" : "refused by test\n");
    });
    this.http.on("upgrade", (req, socket) => {
      this.attempts++;
      socket.on("error", () => {});
      if (this.refuse) {
        socket.end(`HTTP/1.1 ${this.refuse} Refused\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
        return;
      }
      const accept = createHash("sha1").update(req.headers["sec-websocket-key"] + GUID).digest("base64");
      const offered = (req.headers["sec-websocket-protocol"] || "").split(",").map((s) => s.trim()).filter(Boolean);
      const lines = ["HTTP/1.1 101 Switching Protocols", "upgrade: websocket", "connection: Upgrade", `sec-websocket-accept: ${accept}`];
      if (this.protocol && offered.includes(this.protocol)) lines.push(`sec-websocket-protocol: ${this.protocol}`);
      socket.write(lines.join("\r\n") + "\r\n\r\n");
      const conn = new Conn(socket, req.url, offered);
      const w = this.waiters.shift();
      if (w) w(conn);
      else this.pending.push(conn);
    });
  }
  async listen() {
    await new Promise((resolve) => this.http.listen(0, "127.0.0.1", resolve));
    this.url = `ws://127.0.0.1:${this.http.address().port}/ws/tasks/`;
    return this;
  }
  /** The next accepted connection (bounded wait). */
  next(ms = 5000) {
    const c = this.pending.shift();
    if (c) return Promise.resolve(c);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no connection within ${ms} ms`)), ms);
      this.waiters.push((conn) => {
        clearTimeout(t);
        resolve(conn);
      });
    });
  }
  /** Resolves once `n` handshakes were attempted (bounded). */
  attemptsReach(n, ms = 5000) {
    const t0 = Date.now();
    return new Promise((resolve, reject) => {
      const tick = () => {
        if (this.attempts >= n) return resolve();
        if (Date.now() - t0 > ms) return reject(new Error(`${this.attempts} of ${n} attempts within ${ms} ms`));
        setTimeout(tick, 5);
      };
      tick();
    });
  }
  close() {
    this.http.closeAllConnections?.();
    return new Promise((resolve) => this.http.close(resolve));
  }
}

/** Resolves with the first value `emitter.on(type)` gives that satisfies `pred` (bounded). */
export function waitFor(client, type, pred = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`no "${type}" matching within ${ms} ms (state ${client.state})`));
    }, ms);
    const off = client.on(type, (v) => {
      if (pred(v)) {
        clearTimeout(t);
        off();
        resolve(v);
      }
    });
  });
}

/** Resolves when `client.state` is `state` (at once if it is already). */
export function until(client, state, ms = 5000) {
  if (client.state === state) return Promise.resolve(state);
  return waitFor(client, "state", (st) => st === state, ms);
}
