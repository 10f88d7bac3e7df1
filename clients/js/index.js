// @taskstream/client: the browser side of the taskstream protocol (docs/protocol.md).
//
//   page --new TaskStream({url})--> [connect] --ws, subprotocol taskstream.v1, ?last_id=g:id...--> sidecar
//   sidecar --{"type":"event",group,id,data}--> [frame] --> lastIds[group] = id --> on("event"), on("progress")
//   sidecar --{"type":"reset",group,reason}---> [frame] --> on("reset"): refetch that group's state
//   sidecar --{"type":"position",group,id}----> [frame] --> lastIds[group] = id (resume from there)
//   sidecar --{"type":<anything else>}---------> ignored (a later frame type never breaks a page)
//   close  --> state "reconnecting" --> capped jittered backoff (at once on online / page visible) --> [connect]
//   close before open --> HTTP preflight of the same URL: 401/403 --> state "stopped", on("error")
//
// Zero dependencies; an ES module for browsers and Node 20+ (global WebSocket, or pass one).

/** The WebSocket subprotocol of taskstream v1. */
export const PROTOCOL = "taskstream.v1";

/** Connection states, for a "live / reconnecting" badge. */
export const STATES = Object.freeze(["connecting", "live", "reconnecting", "stopped"]);

const DEFAULTS = Object.freeze({
  url: "/ws/tasks/",
  protocol: true,
  backoff: Object.freeze({ min: 250, max: 5000 }),
  // A connection open this long counts as healthy: the next drop starts again at `min`.
  stableAfter: 5000,
  preflight: true,
});

/** The handshake was refused (HTTP 401/403, or 400 for a malformed request): retrying won't help. */
export class HandshakeError extends Error {
  constructor(status, body) {
    super(`taskstream: handshake refused with HTTP ${status}${body ? `: ${body.trim()}` : ""}`);
    this.name = "HandshakeError";
    this.status = status;
  }
}

/**
 * Delay before reconnect attempt `attempt` (0-based): "equal jitter" over a capped exponential,
 * i.e. uniform in [base/2, base] with base = min(max, min * 2^attempt).
 */
export function backoffDelay(attempt, { min, max } = DEFAULTS.backoff, random = Math.random) {
  const base = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return base / 2 + random() * (base / 2);
}

/** Orders two event ids of one group; ids of the form `<ms>-<seq>` (Redis Stream ids). */
export function compareIds(a, b) {
  const pa = /^(\d+)-(\d+)$/.exec(a);
  const pb = /^(\d+)-(\d+)$/.exec(b);
  if (!pa || !pb) return a === b ? 0 : NaN;
  const [ma, sa, mb, sb] = [pa[1], pa[2], pb[1], pb[2]].map(BigInt);
  return ma !== mb ? (ma < mb ? -1 : 1) : sa === sb ? 0 : sa < sb ? -1 : 1;
}

/**
 * The progress event the Python publisher's Celery helper sends
 * (`{"type":"progress","task","percent","state","message"}`), or null for any other data.
 */
export function asProgress(data) {
  if (typeof data !== "object" || data === null || data.type !== "progress" || data.task == null) {
    return null;
  }
  const percent = Math.max(0, Math.min(100, Number(data.percent) || 0));
  return { task: data.task, percent, state: data.state ?? "running", message: data.message ?? null };
}

function parseMaybeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * A reconnecting, resuming connection to a taskstream sidecar.
 *
 * Events: "event" ({group, id, data}), "progress" ({group, id, task, percent, state, message}),
 * "reset" ({group, reason}), "position" ({group, id}), "state" (state string), "error" (Error).
 */
export class TaskStream {
  constructor(options = {}) {
    this.options = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
    };
    this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new Error(
        "taskstream: no WebSocket implementation (Node 20 needs --experimental-websocket, or pass options.WebSocket)",
      );
    }
    this._fetch = this.options.fetch || globalThis.fetch;
    this._listeners = new Map();
    this._lastIds = new Map(Object.entries(this.options.lastIds || {}));
    this._state = "stopped";
    this._ws = null;
    this._timer = null;
    this._attempt = 0;
    this._wanted = false;
    this._versioned = false;
    this._openedAt = 0;
    this._onWake = () => this._wake();
    this._onVisibility = () => {
      if (globalThis.document?.visibilityState === "visible") this._wake();
    };
    if (this.options.autoConnect !== false) this.connect();
  }

  /** The connection state: "connecting", "live", "reconnecting" or "stopped". */
  get state() {
    return this._state;
  }

  /** Whether the open connection speaks taskstream.v1 (ids, resume, resets). */
  get versioned() {
    return this._versioned;
  }

  /** The last event id seen for `group`, or its position from the sidecar (undefined before
   *  either). */
  lastId(group) {
    return this._lastIds.get(group);
  }

  /** Every group's last event id, e.g. to keep across a page reload. */
  lastIds() {
    return Object.fromEntries(this._lastIds);
  }

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this._listeners.get(type)?.delete(listener);
  }

  /** Opens the connection (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    this._attempt = 0;
    globalThis.addEventListener?.("online", this._onWake);
    globalThis.document?.addEventListener?.("visibilitychange", this._onVisibility);
    this._setState("connecting");
    this._open();
  }

  /** Closes the connection for good (state "stopped"); `connect()` starts again. */
  close() {
    this._stop();
    this._setState("stopped");
  }

  /** The URL of the next attempt: options.url with groups, params and one last_id per group. */
  url() {
    const { url, groups, params } = this.options;
    const base = globalThis.location?.href;
    const u = new URL(url, base);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    if (groups && groups.length) u.searchParams.set("groups", groups.join(","));
    const extra = typeof params === "function" ? params() : params;
    for (const [k, v] of Object.entries(extra || {})) u.searchParams.set(k, String(v));
    if (this.options.protocol) {
      for (const [group, id] of this._lastIds) u.searchParams.append("last_id", `${group}:${id}`);
    }
    return u.toString();
  }

  _emit(type, value) {
    for (const listener of [...(this._listeners.get(type) || [])]) {
      try {
        listener(value);
      } catch (e) {
        // A throwing listener must not break the connection or the other listeners.
        if (typeof globalThis.reportError === "function") globalThis.reportError(e);
        else console.error(e);
      }
    }
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    this._emit("state", state);
  }

  _stop() {
    this._wanted = false;
    clearTimeout(this._timer);
    this._timer = null;
    globalThis.removeEventListener?.("online", this._onWake);
    globalThis.document?.removeEventListener?.("visibilitychange", this._onVisibility);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }

  _open() {
    this._timer = null;
    const url = this.url();
    let ws;
    try {
      ws = this.options.protocol ? new this._WebSocket(url, PROTOCOL) : new this._WebSocket(url);
    } catch (e) {
      this._emit("error", e);
      this._scheduleRetry(false, url);
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._openedAt = Date.now();
      this._versioned = ws.protocol === PROTOCOL;
      this._setState("live");
    };
    ws.onmessage = (m) => {
      if (typeof m.data === "string") this._frame(m.data);
    };
    const ended = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      this._scheduleRetry(opened, url);
    };
    // Browsers follow an error with close; some implementations (Node 20's) never close a
    // socket whose handshake failed, so an error before open ends the attempt by itself.
    ws.onerror = () => {
      if (!opened) ended();
    };
    ws.onclose = ended;
  }

  _frame(text) {
    if (!this._versioned) {
      this._deliver({ group: undefined, id: undefined, data: parseMaybeJson(text) });
      return;
    }
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "event") {
      const { group, id, data } = frame;
      if (id != null) {
        const last = this._lastIds.get(group);
        // The sidecar resumes without duplicates; this guard keeps it so whatever happens.
        if (last !== undefined && compareIds(id, last) <= 0) return;
        this._lastIds.set(group, id);
      }
      this._deliver({ group, id, data });
    } else if (frame.type === "reset") {
      this._emit("reset", { group: frame.group, reason: frame.reason });
    } else if (frame.type === "position") {
      // Where the connection stands in a group it named no id for: stored like an event's id,
      // so a reconnect resumes the group from there (its first event is not missed).
      const { group, id } = frame;
      if (typeof group !== "string" || typeof id !== "string") return;
      const last = this._lastIds.get(group);
      if (last === undefined || last === "0" || compareIds(id, last) > 0) this._lastIds.set(group, id);
      this._emit("position", { group, id });
    }
    // Any other type is from a later protocol version: ignored.
  }

  _deliver(event) {
    this._emit("event", event);
    const progress = asProgress(event.data);
    if (progress) this._emit("progress", { group: event.group, id: event.id, ...progress });
  }

  async _scheduleRetry(opened, url) {
    if (!this._wanted) return;
    if (opened && Date.now() - this._openedAt >= this.options.stableAfter) this._attempt = 0;
    if (!opened && this.options.preflight && this._fetch) {
      // A browser WebSocket hides the handshake's status: ask the same URL over plain HTTP.
      const refused = await this._preflight(url);
      if (!this._wanted) return;
      if (refused) {
        this._stop();
        this._setState("stopped");
        this._emit("error", refused);
        return;
      }
    }
    this._setState("reconnecting");
    const delay = backoffDelay(this._attempt++, this.options.backoff);
    this._timer = setTimeout(() => this._open(), delay);
  }

  async _preflight(wsUrl) {
    const u = new URL(wsUrl);
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    try {
      const r = await this._fetch(u.toString(), { credentials: "include", cache: "no-store" });
      if (r.status === 400 || r.status === 401 || r.status === 403) {
        return new HandshakeError(r.status, await r.text().catch(() => ""));
      }
    } catch {
      // Unreachable (a restart, offline): keep retrying.
    }
    return null;
  }

  _wake() {
    // Back online, or the page is visible again: don't sit out the rest of a long backoff.
    if (this._wanted && this._timer !== null) {
      clearTimeout(this._timer);
      this._attempt = 0;
      this._open();
    }
  }
}
