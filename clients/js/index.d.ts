// Types of @taskstream/client (hand-written; the module is plain JavaScript, no build step).

/** The WebSocket subprotocol of taskstream v1. */
export declare const PROTOCOL: "taskstream.v1";

/** Connection state, for a "live / reconnecting" badge. */
export type ConnectionState = "connecting" | "live" | "reconnecting" | "stopped";
export declare const STATES: readonly ConnectionState[];

/** Why history could not cover a gap (docs/protocol.md). */
export type ResetReason =
  | "trimmed"
  | "expired"
  | "unknown"
  | "too_far"
  | "history_off"
  | "unavailable"
  | (string & {});

/** One event. `group` and `id` are undefined on a connection without the subprotocol; `id` is
 *  undefined for events published without history. */
export interface TaskEvent<T = unknown> {
  group: string | undefined;
  id: string | undefined;
  /** The payload, parsed as JSON when it is JSON, else the payload string. */
  data: T;
}

/** `{"type":"progress","task","percent","state","message"}` as published by the Python
 *  package's Celery helper (`taskstream.celery.Progress`). */
export interface Progress {
  task: string | number;
  /** 0 to 100. */
  percent: number;
  state: "running" | "done" | "failed" | (string & {});
  message: string | null;
}

export interface ProgressEvent extends Progress {
  group: string | undefined;
  id: string | undefined;
}

export interface ResetEvent {
  group: string;
  reason: ResetReason | undefined;
}

export interface Backoff {
  /** First retry delay ceiling in ms (default 250). */
  min: number;
  /** Largest delay in ms (default 5000). */
  max: number;
}

export interface TaskStreamOptions {
  /** The sidecar's WebSocket path or URL (default "/ws/tasks/", relative to the page);
   *  http(s) URLs are turned into ws(s). */
  url?: string;
  /** Narrow to these groups (`?groups=a,b`); by default the server's grant decides. */
  groups?: string[];
  /** Extra query parameters (e.g. `{token}` for `--auth jwt`); a function is called per attempt. */
  params?: Record<string, string | number> | (() => Record<string, string | number>);
  /** Where to resume each group from: `{group: id}`; `"0"` means everything still in history
   *  (a page load that wants the steps it missed). */
  lastIds?: Record<string, string>;
  /** Offer the `taskstream.v1` subprotocol (default true). Set false only for sidecars that
   *  predate it: then frames are the payloads verbatim and there is no resume. */
  protocol?: boolean;
  /** Reconnect delays: capped exponential with equal jitter. */
  backoff?: Partial<Backoff>;
  /** A connection open this long (ms, default 5000) resets the backoff. */
  stableAfter?: number;
  /** After a connection fails before opening, GET the same URL over HTTP to see a refusal
   *  (401/403/400 stop retrying). Default true. */
  preflight?: boolean;
  /** Connect in the constructor (default true). */
  autoConnect?: boolean;
  /** WebSocket implementation (default the global one). */
  WebSocket?: typeof WebSocket;
  /** fetch implementation for the preflight (default the global one). */
  fetch?: typeof fetch;
}

/** Where the connection stands in a group it had no id for (`{"type":"position"}`): the newest
 *  stored event's id, `"0"` when there is none. Stored like an event id and resumed from. */
export interface PositionEvent {
  group: string;
  id: string;
}

export interface TaskStreamEvents {
  event: TaskEvent;
  progress: ProgressEvent;
  reset: ResetEvent;
  position: PositionEvent;
  state: ConnectionState;
  error: Error;
}

/** The handshake was refused (HTTP 401/403, or 400): the client stopped retrying. */
export declare class HandshakeError extends Error {
  readonly status: number;
  constructor(status: number, body?: string);
}

/** A reconnecting, resuming connection to a taskstream sidecar. */
export declare class TaskStream {
  constructor(options?: TaskStreamOptions);
  readonly options: Required<Omit<TaskStreamOptions, "WebSocket" | "fetch" | "groups" | "params" | "lastIds">> &
    TaskStreamOptions & { backoff: Backoff };
  /** "connecting", "live", "reconnecting" or "stopped". */
  readonly state: ConnectionState;
  /** Whether the open connection speaks taskstream.v1 (ids, resume, resets). */
  readonly versioned: boolean;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof TaskStreamEvents>(type: K, listener: (value: TaskStreamEvents[K]) => void): () => void;
  /** Opens the connection (done by the constructor unless `autoConnect: false`). */
  connect(): void;
  /** Closes for good (state "stopped"); `connect()` starts again. */
  close(): void;
  /** The last event id seen for `group`, or the position the sidecar gave for it. */
  lastId(group: string): string | undefined;
  /** Every group's last event id (or position). */
  lastIds(): Record<string, string>;
  /** The URL of the next attempt (groups, params and one `last_id` per group). */
  url(): string;
}

/** Delay in ms before reconnect attempt `attempt` (0-based): uniform in [base/2, base],
 *  base = min(max, min * 2^attempt). */
export declare function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;

/** Orders two `<ms>-<seq>` ids: negative, 0 or positive (NaN if either is not of that form and
 *  they differ). */
export declare function compareIds(a: string, b: string): number;

/** The progress fields of `data` if it is a progress event, else null. */
export declare function asProgress(data: unknown): Progress | null;
