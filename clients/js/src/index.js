// confab-client: the TypeScript/JavaScript client of confab's chat protocol.
//
// One socket carries every room. The client keeps, per room, the highest `seq` it handed on and
// the room's `rev` it has converged to; after any reconnect it resubscribes with `since` and
// `since_rev`, pages history when the server could not replay everything, and resends
// unacknowledged messages with their `client_id`, so listeners see every message once and in
// order. No runtime dependencies: it needs `fetch` and a `WebSocket` constructor (the browser's,
// or npm `ws` on Node).

/** Frames over this size are refused by the server (close 1009); send() refuses them first. */
const MAX_FRAME_BYTES = 64 * 1024;

/**
 * @typedef {object} ConfabOptions
 * @property {string} url The server's base URL (`http://localhost:8080`, `https://chat.example.com`).
 * @property {string} [token] An access token or a bot API key.
 * @property {() => Promise<string> | string} [getToken] Called for a token before each
 *   connection and before the current one expires (JWTs are read for `exp`); use it to refresh.
 * @property {any} [WebSocket] A WebSocket constructor (browsers: omit; Node 20: `ws`'s default export).
 * @property {typeof fetch} [fetch] A fetch function (defaults to the global one).
 * @property {number} [maxBackoffMs] The ceiling of the reconnect backoff (default 30000).
 * @property {number} [refreshBeforeMs] Renew a JWT this long before it expires (default 60000,
 *   at most half its lifetime).
 */

/** @typedef {"idle" | "connecting" | "online" | "reconnecting" | "closed" | "banned" | "unauthorized"} ConnectionState */

/** An error answer: a REST error body or an `error` frame, with the protocol's `code`. */
export class ConfabError extends Error {
  /**
   * @param {string} code The protocol's error code (`bad_request`, `forbidden`, `rate_limited`, …).
   * @param {string} message What went wrong, in the server's words.
   * @param {number} [status] The HTTP status, for REST answers.
   */
  constructor(code, message, status) {
    super(message);
    this.name = "ConfabError";
    this.code = code;
    this.status = status;
  }
}

/** A minimal event emitter: `on` returns a function that removes the listener. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
  }

  /**
   * @param {string} event
   * @param {(...args: any[]) => void} fn
   * @returns {() => void} removes the listener
   */
  on(event, fn) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /**
   * @param {string} event
   * @param {(...args: any[]) => void} fn
   */
  off(event, fn) {
    this.listeners.get(event)?.delete(fn);
  }

  /**
   * @param {string} event
   * @param {...any} args
   */
  emit(event, ...args) {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not stop delivery to the others, nor the connection.
        queueMicrotask(() => { throw e; });
      }
    }
  }
}

/** Full jitter over an exponential ceiling: a random wait in [0, min(max, 500 ms × 2^attempt)). */
export function backoff(attempt, maxMs = 30_000) {
  return Math.random() * Math.min(maxMs, 500 * 2 ** attempt);
}

/** The `retry_after_ms=N` hint of a draining server's 1001 close reason, or null. */
export function drainHint(reason) {
  const m = /retry_after_ms=(\d+)/.exec(reason || "");
  return m ? Number(m[1]) : null;
}

/** A JWT's `exp` in milliseconds, or null for a token that is not a JWT (a bot API key). */
function expiryMs(token) {
  try {
    const part = token.split(".")[1];
    if (!part) return null;
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}

function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A connection to a confab server.
 *
 * Events (`chat.on(name, fn)`): `state` (`"connecting"`, `"online"`, `"reconnecting"`,
 * `"closed"`, `"banned"`, `"unauthorized"`), `hello`, `frame` (every server frame, as received),
 * `notification`, `room_joined`, `error` (a ConfabError not tied to a send), `close`
 * (`{code, reason}` of each socket that closed).
 */
export class Confab extends Emitter {
  /** @param {ConfabOptions} options */
  constructor(options) {
    super();
    if (!options || !options.url) throw new TypeError("confab-client: `url` is required");
    if (!options.token && !options.getToken) throw new TypeError("confab-client: `token` or `getToken` is required");
    this.options = { maxBackoffMs: 30_000, refreshBeforeMs: 60_000, ...options };
    this.base = options.url.replace(/\/+$/, "");
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError("confab-client: no WebSocket constructor; pass `WebSocket` (npm `ws` on Node)");
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.token = options.token ?? null;
    /** @type {ConnectionState} */
    this.state = "idle";
    /** @type {any} */
    this.user = null;
    /** @type {Map<string, Room>} */
    this.rooms = new Map();
    /** client_id -> {frame, resolve, reject, room} awaiting its ack, in send order */
    this.pending = new Map();
    this.ws = null;
    this.attempt = 0;
    this.openedAt = 0;
    this.stopped = false;
    this.retryTimer = null;
    this.refreshTimer = null;
    this.firstHello = null;
  }

  /** Opens the connection; resolves with the first `hello` frame. */
  connect() {
    this.stopped = false;
    if (!this.firstHello) {
      this.firstHello = new Promise((resolve, reject) => {
        this.helloWaiter = { resolve, reject };
      });
      this.open();
    }
    return this.firstHello;
  }

  /** Closes the connection for good (pending sends are rejected). */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.refreshTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000);
    for (const [, p] of this.pending) p.reject(new ConfabError("closed", "the client was closed"));
    this.pending.clear();
    this.setState("closed");
  }

  /**
   * A room's handle (the same object for the same id).
   * @param {string} id
   * @returns {Room}
   */
  room(id) {
    let room = this.rooms.get(id);
    if (!room) this.rooms.set(id, (room = new Room(this, id)));
    return room;
  }

  /**
   * One REST call with the current token; resolves with the JSON answer (null for 204).
   * @param {string} method
   * @param {string} path e.g. `/api/v1/rooms`
   * @param {any} [body]
   */
  async api(method, path, body) {
    const token = await this.currentToken();
    return request(this.fetch, this.base, method, path, body, token);
  }

  /**
   * Creates an account; resolves with `{user}` (then sign in with `Confab.login`).
   * @param {string} url @param {string} username @param {string} password
   * @param {{fetch?: typeof fetch, display_name?: string}} [opts]
   */
  static async register(url, username, password, opts = {}) {
    const body = { username, password };
    if (opts.display_name) body.display_name = opts.display_name;
    return request(opts.fetch ?? globalThis.fetch, url.replace(/\/+$/, ""), "POST", "/api/v1/auth/register", body);
  }

  /**
   * Signs in with a password; resolves with `{user, access_token, refresh_token, expires_in}`.
   * @param {string} url @param {string} username @param {string} password
   * @param {{fetch?: typeof fetch}} [opts]
   */
  static async login(url, username, password, opts = {}) {
    return request(opts.fetch ?? globalThis.fetch, url.replace(/\/+$/, ""), "POST", "/api/v1/auth/login", { username, password });
  }

  /** @param {ConnectionState} state @param {string} [detail] */
  setState(state, detail = "") {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state, detail);
  }

  async currentToken() {
    if (this.options.getToken && (!this.token || this.expiresSoon())) {
      this.token = await this.options.getToken();
      this.scheduleRefresh();
    }
    return this.token;
  }

  expiresSoon() {
    const exp = this.token && expiryMs(this.token);
    return exp !== null && exp - Date.now() < 5_000;
  }

  /** Renews a JWT before it expires and hands it to the open socket (`auth` frame). */
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    const exp = this.token && expiryMs(this.token);
    if (!this.options.getToken || exp === null || this.stopped) return;
    const left = exp - Date.now();
    const wait = Math.max(1_000, left - Math.min(this.options.refreshBeforeMs, left / 2));
    this.refreshTimer = setTimeout(async () => {
      try {
        this.token = await this.options.getToken();
        this.sendFrame({ type: "auth", token: this.token });
        this.scheduleRefresh();
      } catch (e) {
        this.emit("error", e);
        this.refreshTimer = setTimeout(() => this.scheduleRefresh(), 5_000);
      }
    }, wait);
  }

  async open() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    this.setState(this.attempt === 0 && !this.user ? "connecting" : "reconnecting");
    let token;
    try {
      token = await this.currentToken();
    } catch (e) {
      this.emit("error", e);
      return this.retry(backoff(this.attempt++, this.options.maxBackoffMs));
    }
    if (this.stopped) return;
    const url = new URL("/ws", this.base + "/");
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new this.WebSocket(url.toString());
    } catch (e) {
      this.emit("error", e);
      return this.retry(backoff(this.attempt++, this.options.maxBackoffMs));
    }
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data));
      } catch {
        return;
      }
      this.receive(frame);
    };
    ws.onerror = () => {}; // a close follows
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.closed(ev.code, ev.reason || "");
    };
  }

  /** @param {number} wait */
  retry(wait) {
    if (this.stopped) return;
    this.setState("reconnecting", `in ${Math.ceil(wait / 1000)} s`);
    this.retryTimer = setTimeout(() => this.open(), wait);
  }

  /** @param {number} code @param {string} reason */
  closed(code, reason) {
    this.emit("close", { code, reason });
    if (this.stopped) return;
    if (code === 4003) {
      this.fail("banned", new ConfabError("banned", reason || "the user is banned"));
      return;
    }
    if (code === 4001 || code === 1008 && /token|auth/i.test(reason)) {
      if (!this.options.getToken) {
        this.fail("unauthorized", new ConfabError("unauthorized", reason || "the token expired"));
        return;
      }
      this.token = null; // ask for a new one
    }
    if (Date.now() - this.openedAt > 60_000) this.attempt = 0;
    const hint = code === 1001 ? drainHint(reason) : null;
    const wait = hint ?? (code === 1001 ? Math.random() * 2_000 : backoff(this.attempt, this.options.maxBackoffMs));
    this.attempt += 1;
    this.retry(wait);
  }

  /**
   * Stops for a reason the client cannot fix by reconnecting.
   * @param {ConnectionState} state @param {ConfabError} error
   */
  fail(state, error) {
    this.stopped = true;
    clearTimeout(this.refreshTimer);
    for (const [, p] of this.pending) p.reject(error);
    this.pending.clear();
    if (this.helloWaiter) this.helloWaiter.reject(error);
    this.helloWaiter = null;
    this.emit("error", error);
    this.setState(state, error.message);
  }

  /** @param {any} frame */
  sendFrame(frame) {
    const ws = this.ws;
    if (ws && ws.readyState === 1 && this.state === "online") {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  /** @param {any} f */
  receive(f) {
    this.emit("frame", f);
    switch (f.type) {
      case "hello": {
        this.user = f.user;
        this.openedAt = Date.now();
        this.setState("online");
        this.emit("hello", f);
        if (this.helloWaiter) {
          this.helloWaiter.resolve(f);
          this.helloWaiter = null;
        }
        this.scheduleRefresh();
        for (const room of this.rooms.values()) room.resume();
        for (const p of this.pending.values()) this.sendFrame(p.frame);
        return;
      }
      case "ack": {
        const p = this.pending.get(f.client_id);
        if (p) {
          this.pending.delete(f.client_id);
          p.resolve(f);
        }
        return;
      }
      case "error": {
        const p = f.ref ? this.pending.get(f.ref) : undefined;
        if (p) {
          if (f.code === "rate_limited" || f.code === "slow_mode" || f.code === "unavailable") {
            // Wait as told, then resend with the same client_id.
            setTimeout(() => { if (this.pending.get(f.ref) === p) this.sendFrame(p.frame); }, f.retry_after_ms ?? 1_000);
          } else {
            this.pending.delete(f.ref);
            p.reject(new ConfabError(f.code, f.message));
          }
          return;
        }
        const room = f.ref ? this.rooms.get(f.ref) : undefined;
        if (room && room.subscribeWaiter) {
          room.subscribeWaiter.reject(new ConfabError(f.code, f.message));
          room.subscribeWaiter = null;
          room.wanted = false;
          return;
        }
        this.emit("error", new ConfabError(f.code, f.message));
        return;
      }
      case "notification":
        this.emit("notification", f);
        return;
      case "room_joined":
        this.emit("room_joined", f);
        return;
      case "pong":
        return;
      default: {
        const id = f.room ?? f.id;
        const room = typeof id === "string" ? this.rooms.get(id) : undefined;
        if (room) room.receive(f);
      }
    }
  }

  /**
   * Sends a `message` frame; resolves with its `ack` (resent after reconnects until acked).
   * @param {Room} room @param {any} frame
   */
  post(room, frame) {
    const text = JSON.stringify(frame);
    if (new TextEncoder().encode(text).length > MAX_FRAME_BYTES) {
      return Promise.reject(new ConfabError("bad_request", "the message is larger than a frame may be (64 KiB)"));
    }
    return new Promise((resolve, reject) => {
      this.pending.set(frame.client_id, { frame, resolve, reject, room });
      this.sendFrame(frame);
    });
  }
}

/**
 * A room of a connection. Events (`room.on(name, fn)`): `message` (each new message once, in
 * `seq` order — replayed, paged from history or live), `message_edited`, `message_deleted`,
 * `message_updated`, `reaction` (apply each only when its `rev` is greater than your copy's),
 * `typing`, `receipt`, `presence`, `room_updated`, `subscribed`, `unsubscribed`, `kicked`.
 */
export class Room extends Emitter {
  /** @param {Confab} chat @param {string} id */
  constructor(chat, id) {
    super();
    this.chat = chat;
    this.id = id;
    /** The highest seq handed to `message` listeners (null: never subscribed). @type {number | null} */
    this.seq = null;
    /** The room's rev this client has converged to (null: unknown). @type {number | null} */
    this.rev = null;
    /** Replayed changes are complete once an event's rev passes this. */
    this.replayUntil = null;
    this.wanted = false;
    this.subscribeWaiter = null;
    this.filling = null;
  }

  /**
   * Starts receiving the room's events; resolves with the `subscribed` reply. With `since`
   * (a seq), the messages after it are delivered first.
   * @param {{since?: number, sinceRev?: number}} [opts]
   */
  subscribe(opts = {}) {
    this.wanted = true;
    if (opts.since !== undefined) this.seq = opts.since;
    if (opts.sinceRev !== undefined) this.rev = opts.sinceRev;
    const promise = new Promise((resolve, reject) => {
      this.subscribeWaiter?.reject(new ConfabError("superseded", "subscribed again"));
      this.subscribeWaiter = { resolve, reject };
    });
    if (this.chat.state === "online") this.resume();
    return promise;
  }

  /** Stops receiving the room's events. */
  unsubscribe() {
    this.wanted = false;
    this.chat.sendFrame({ type: "unsubscribe", room: this.id });
  }

  /** Sends `subscribe` with the client's cursors (after each `hello`). */
  resume() {
    if (!this.wanted) return;
    const frame = { type: "subscribe", room: this.id };
    if (this.seq !== null) frame.since = this.seq;
    if (this.seq !== null && this.rev !== null) frame.since_rev = this.rev;
    this.pendingSinceRev = frame.since_rev !== undefined;
    this.chat.sendFrame(frame);
  }

  /**
   * Sends a message; resolves with the `ack` (`{id, seq, room, client_id, created_at}`).
   * @param {string} body
   * @param {{clientId?: string, replyTo?: number, thread?: number, attachments?: string[]}} [opts]
   */
  send(body, opts = {}) {
    const frame = { type: "message", room: this.id, body, client_id: opts.clientId ?? randomId() };
    if (opts.replyTo !== undefined) frame.reply_to = opts.replyTo;
    if (opts.thread !== undefined) frame.thread = opts.thread;
    if (opts.attachments?.length) frame.attachments = opts.attachments;
    return this.chat.post(this, frame);
  }

  /** @param {boolean} active */
  typing(active) { return this.chat.sendFrame({ type: "typing", room: this.id, active }); }
  /** @param {number} seq */
  read(seq) { return this.chat.sendFrame({ type: "read", room: this.id, seq }); }
  /** @param {number} seq */
  delivered(seq) { return this.chat.sendFrame({ type: "delivered", room: this.id, seq }); }
  /** @param {number} seq @param {string} emoji @param {boolean} [active] */
  react(seq, emoji, active = true) { return this.chat.sendFrame({ type: "react", room: this.id, seq, emoji, active }); }
  /** @param {number} seq @param {string} body */
  edit(seq, body) { return this.chat.api("PATCH", `/api/v1/rooms/${this.id}/messages/${seq}`, { body }); }
  /** @param {number} seq */
  delete(seq) { return this.chat.api("DELETE", `/api/v1/rooms/${this.id}/messages/${seq}`); }

  /**
   * A page of history: `{messages, has_more}` in ascending seq.
   * @param {{before?: number, after?: number, limit?: number}} [opts]
   */
  history(opts = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(opts)) if (v !== undefined) q.set(k, String(v));
    return this.chat.api("GET", `/api/v1/rooms/${this.id}/messages?${q}`);
  }

  /**
   * The room's messages as an async iterator, for a consumer that may be slower than the room.
   * At most `buffer` messages are held; beyond that the oldest held ones are dropped and read
   * back from history when the consumer gets to them, so memory stays bounded and nothing is
   * lost or repeated.
   * @param {{buffer?: number}} [opts]
   * @returns {AsyncIterableIterator<any>}
   */
  messages(opts = {}) {
    const limit = Math.max(1, opts.buffer ?? 1000);
    const room = this;
    /** @type {any[]} */
    let held = [];
    let next = null; // the first seq this iterator has not yet yielded (null: from the first live one)
    let wake = null;
    let done = false;
    const off = this.on("message", (m) => {
      if (next === null) next = m.seq;
      held.push(m);
      if (held.length > limit) held = held.slice(held.length - limit);
      wake?.();
    });
    return {
      [Symbol.asyncIterator]() { return this; },
      async next() {
        for (;;) {
          if (done) return { value: undefined, done: true };
          if (held.length && next !== null) {
            if (held[0].seq === next) {
              const m = held.shift();
              next = m.seq + 1;
              return { value: m, done: false };
            }
            if (held[0].seq < next) { held.shift(); continue; }
            // Dropped while the consumer was busy: read them back from history.
            const page = await room.history({ after: next - 1, limit: Math.min(200, held[0].seq - next) });
            const missing = page.messages.filter((m) => m.seq >= next && m.seq < held[0].seq);
            held = missing.concat(held);
            if (!missing.length) next = held[0].seq; // deleted from history meanwhile: skip on
            continue;
          }
          await new Promise((r) => { wake = r; });
          wake = null;
        }
      },
      async return() {
        done = true;
        off();
        held = [];
        wake?.();
        return { value: undefined, done: true };
      },
    };
  }

  /** @param {number} rev */
  sawRev(rev) {
    if (typeof rev !== "number") return;
    if (this.replayUntil !== null) {
      if (rev <= this.replayUntil) return; // part of a replay that may not be complete yet
      this.replayUntil = null;
    }
    if (this.rev === null || rev > this.rev) this.rev = rev;
  }

  /** @param {any} f */
  receive(f) {
    switch (f.type) {
      case "subscribed": {
        if (this.pendingSinceRev && this.rev !== null && f.rev > this.rev && f.recovered !== false) {
          // Changes up to f.rev are being replayed; take f.rev only once they are through.
          this.replayUntil = f.rev;
        } else if (f.recovered !== false) {
          this.rev = f.rev;
          this.replayUntil = null;
        }
        const firstTime = this.seq === null;
        if (firstTime) this.seq = f.last_seq;
        this.emit("subscribed", f);
        if (this.subscribeWaiter) {
          this.subscribeWaiter.resolve(f);
          this.subscribeWaiter = null;
        }
        if (f.recovered === false) this.fill(f.rev);
        else if (f.last_seq < (this.seq ?? 0)) this.seq = f.last_seq; // a restored backup: follow the room
        return;
      }
      case "message": {
        if (this.seq === null) this.seq = f.seq - 1;
        if (f.seq <= this.seq) return; // already handed on
        if (f.seq > this.seq + 1 || this.filling) {
          this.fill(null);
          return;
        }
        this.seq = f.seq;
        this.sawRev(f.rev);
        this.emit("message", f);
        return;
      }
      case "message_edited":
      case "message_updated":
      case "message_deleted":
      case "reaction":
        this.sawRev(f.rev);
        this.emit(f.type, f);
        return;
      case "kicked":
      case "unsubscribed":
        if (f.type === "kicked") this.wanted = false;
        this.emit(f.type, f);
        return;
      default:
        this.emit(f.type, f);
    }
  }

  /**
   * Pages what could not be replayed: messages after the cursor (as `message` events) and, with
   * `toRev`, changes after the rev cursor (as `message_updated`).
   * @param {number | null} toRev
   */
  fill(toRev) {
    if (this.filling) {
      this.refill = true;
      return this.filling;
    }
    this.filling = (async () => {
      do {
        this.refill = false;
        for (;;) {
          const page = await this.history({ after: this.seq ?? 0, limit: 200 });
          for (const m of page.messages) {
            if (m.seq <= (this.seq ?? 0)) continue;
            this.seq = m.seq;
            this.emit("message", { ...m, type: "message" });
          }
          if (!page.has_more) break;
        }
        if (toRev !== null && this.rev !== null) {
          for (;;) {
            const page = await this.chat.api("GET", `/api/v1/rooms/${this.id}/changes?since_rev=${this.rev}&limit=500`);
            for (const m of page.messages) this.emit("message_updated", { ...m, type: "message_updated" });
            this.rev = Math.max(this.rev, page.rev);
            if (!page.has_more) break;
          }
          toRev = null;
        }
      } while (this.refill);
    })()
      .catch((e) => this.chat.emit("error", e))
      .finally(() => { this.filling = null; });
    return this.filling;
  }
}

/**
 * @param {typeof fetch} fetchFn @param {string} base @param {string} method @param {string} path
 * @param {any} [body] @param {string | null} [token]
 */
async function request(fetchFn, base, method, path, body, token) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  for (let attempt = 0; ; attempt++) {
    const res = await fetchFn(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 503 && attempt < 5) {
      // Busy (a sign-in storm): wait as told, with jitter, and try again.
      const after = Number(res.headers.get("retry-after") ?? "1");
      await sleep((after * 1000) * (0.5 + Math.random()));
      continue;
    }
    if (!res.ok) {
      let code = "error";
      let message = `${res.status} ${res.statusText}`;
      try {
        const e = (await res.json()).error;
        code = e.code;
        message = e.message;
      } catch { /* not JSON */ }
      throw new ConfabError(code, message, res.status);
    }
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }
}
