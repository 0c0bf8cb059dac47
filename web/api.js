// confab's browser client library: the session (tokens, refresh, REST calls) and the live
// connection (WebSocket with reconnects that resume every room with `since`). The chat page and
// the admin panel both use it; nothing here touches the page.

const STORAGE_KEY = "confab.session";
// A sign-in with the OpenID provider under way (PKCE verifier, state, nonce), for this tab only.
const SSO_KEY = "confab.sso";

function b64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString() {
  return b64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** The claims of a JWT, unverified (the server verifies; the page only reads `exp`, `nonce`). */
function jwtClaims(token) {
  const part = (token || "").split(".")[1] || "";
  const text = atob(part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4));
  return JSON.parse(text);
}

/** How this server signs people in: `{local, oidc: null | {issuer, client_id}}`. */
export async function providers() {
  const res = await fetch("/api/v1/auth/providers");
  if (!res.ok) return { local: true, oidc: null };
  return res.json();
}

/** A form-encoded POST to the provider's token endpoint; its JSON answer or an error. */
async function tokenRequest(endpoint, fields) {
  const res = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(fields),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new ApiError(res.status === 400 ? 401 : res.status, body.error || "sso",
      body.error_description || body.error || `the identity provider answered ${res.status}`);
  }
  return body;
}

/** An error answer from the REST API, with its `code` and `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Tokens kept in localStorage so a reload stays logged in; refreshed before they expire. */
export class Session {
  constructor() {
    this.data = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    this.listeners = new Set();
    this.refreshing = null;
    this.timer = null;
    if (this.data) this.schedule();
  }

  get user() { return this.data && this.data.user; }
  get token() { return this.data && this.data.access_token; }
  get loggedIn() { return !!this.data; }

  onChange(fn) { this.listeners.add(fn); }

  save(data) {
    this.data = data;
    if (data) localStorage.setItem(STORAGE_KEY, JSON.stringify(data));
    else localStorage.removeItem(STORAGE_KEY);
    this.schedule();
    for (const fn of this.listeners) fn(data);
  }

  async register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    await this.call("POST", "/api/v1/auth/register", body, { anonymous: true });
    return this.login(username, password);
  }

  async login(username, password) {
    const tokens = await this.call("POST", "/api/v1/auth/login", { username, password }, { anonymous: true });
    this.data = this.withExpiry(tokens);
    const user = await this.call("GET", "/api/v1/users/me");
    this.save({ ...this.data, user });
    return user;
  }

  /**
   * Starts signing in with the OpenID provider: authorization code with PKCE (S256). The page
   * leaves for the provider and comes back to `redirectUri` with a code for `completeSso`.
   */
  async beginSso(provider, redirectUri = `${location.origin}/`) {
    const res = await fetch(`${provider.issuer.replace(/\/$/, "")}/.well-known/openid-configuration`);
    if (!res.ok) throw new Error(`the identity provider cannot be reached (${res.status})`);
    const doc = await res.json();
    const verifier = randomString();
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const pending = {
      verifier, state: randomString(), nonce: randomString(),
      token_endpoint: doc.token_endpoint, client_id: provider.client_id, redirect_uri: redirectUri,
    };
    sessionStorage.setItem(SSO_KEY, JSON.stringify(pending));
    const query = new URLSearchParams({
      response_type: "code",
      client_id: provider.client_id,
      redirect_uri: redirectUri,
      scope: "openid profile offline_access",
      state: pending.state,
      nonce: pending.nonce,
      code_challenge: challenge,
      code_challenge_method: "S256",
    });
    location.assign(`${doc.authorization_endpoint}?${query}`);
  }

  /** Finishes a sign-in the provider sent back here (`?code=…&state=…`): returns the user. */
  async completeSso(params) {
    const pending = JSON.parse(sessionStorage.getItem(SSO_KEY) || "null");
    sessionStorage.removeItem(SSO_KEY);
    if (params.get("error")) throw new Error(params.get("error_description") || params.get("error"));
    if (!pending || params.get("state") !== pending.state) {
      throw new Error("this sign-in answer does not match a sign-in started here; try again");
    }
    const tokens = await tokenRequest(pending.token_endpoint, {
      grant_type: "authorization_code",
      code: params.get("code"),
      redirect_uri: pending.redirect_uri,
      client_id: pending.client_id,
      code_verifier: pending.verifier,
    });
    if (!tokens.id_token || jwtClaims(tokens.id_token).nonce !== pending.nonce) {
      throw new Error("the identity provider's answer does not belong to this sign-in");
    }
    this.data = this.fromProvider(tokens, { token_endpoint: pending.token_endpoint, client_id: pending.client_id });
    const user = await this.call("GET", "/api/v1/users/me");
    this.save({ ...this.data, user });
    return user;
  }

  /** A session from the provider's tokens: confab is sent the ID token (its audience is the client). */
  fromProvider(tokens, sso, previousRefresh) {
    const exp = jwtClaims(tokens.id_token).exp;
    return {
      access_token: tokens.id_token,
      refresh_token: tokens.refresh_token || previousRefresh || null,
      expires_in: Math.max(1, exp - Math.floor(Date.now() / 1000)),
      expires_at: exp * 1000,
      sso,
    };
  }

  async logout() {
    const refresh = this.data && !this.data.sso && this.data.refresh_token;
    this.save(null);
    if (refresh) {
      await this.call("POST", "/api/v1/auth/logout", { refresh_token: refresh }, { anonymous: true }).catch(() => {});
    }
  }

  withExpiry(tokens) {
    return { ...tokens, expires_at: Date.now() + tokens.expires_in * 1000 };
  }

  /** Refreshes a minute (or a fifth of the lifetime) before the access token expires. */
  schedule() {
    clearTimeout(this.timer);
    if (!this.data) return;
    const lifetime = this.data.expires_in * 1000;
    const lead = Math.min(60_000, lifetime / 5);
    const wait = Math.max(1_000, this.data.expires_at - Date.now() - lead);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  /**
   * Spends the refresh token for new tokens. Tabs of one browser share the tokens, and a spent
   * refresh token presented twice revokes the whole family, so only one tab refreshes at a time
   * (a Web Lock) and a tab that finds the stored token already renewed just adopts it.
   */
  refresh() {
    if (this.refreshing) return this.refreshing;
    const run = async () => {
      const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
      if (stored && this.data && stored.refresh_token !== this.data.refresh_token) {
        this.save(stored);
        return;
      }
      if (!this.data) throw new ApiError(401, "unauthorized", "not logged in");
      try {
        if (this.data.sso) {
          // The provider's session: its refresh token buys a new ID token.
          const { sso, refresh_token: refresh, user } = this.data;
          if (!refresh) throw new ApiError(401, "unauthorized", "the sign-in expired; sign in again");
          const tokens = await tokenRequest(sso.token_endpoint, {
            grant_type: "refresh_token", refresh_token: refresh, client_id: sso.client_id,
          });
          if (!tokens.id_token) throw new ApiError(401, "unauthorized", "the identity provider sent no new ID token");
          this.save({ ...this.fromProvider(tokens, sso, refresh), user });
          return;
        }
        const tokens = await this.call("POST", "/api/v1/auth/refresh", { refresh_token: this.data.refresh_token }, { anonymous: true });
        this.save({ ...this.withExpiry(tokens), user: this.data.user });
      } catch (e) {
        console.warn(`confab: token refresh failed (${e.status || "network"}: ${e.message})`);
        if (e.status === 401 || e.status === 403) this.save(null);
        throw e;
      }
    };
    const locked = navigator.locks ? navigator.locks.request("confab-refresh", run) : run();
    this.refreshing = locked.finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  /** One REST call; a 401 on a logged-in call refreshes once and retries. */
  async call(method, path, body, opts = {}) {
    const headers = {};
    let payload;
    if (body instanceof Blob) {
      payload = body;
      headers["Content-Type"] = body.type || "application/octet-stream";
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    if (!opts.anonymous && this.token) headers.Authorization = `Bearer ${this.token}`;
    const res = await fetch(path, { method, headers, body: payload });
    if (res.status === 401 && !opts.anonymous && !opts.retried && this.data) {
      await this.refresh();
      return this.call(method, path, body, { ...opts, retried: true });
    }
    if (!res.ok) {
      let code = "error", message = `${res.status} ${res.statusText}`;
      try {
        const e = (await res.json()).error;
        code = e.code; message = e.message;
      } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, code, message);
    }
    if (opts.raw) return res;
    if (res.status === 204) return null;
    return res.json();
  }

  /** The bytes of an attachment as an object URL (images cannot send the token themselves). */
  async blobUrl(path) {
    const res = await this.call("GET", path, undefined, { raw: true });
    return URL.createObjectURL(await res.blob());
  }
}

/** Reconnect delays: full jitter over an exponential ceiling, as docs/protocol.md advises. */
export function backoff(attempt) {
  const ceiling = Math.min(30_000, 500 * 2 ** attempt);
  return Math.random() * ceiling;
}

/** The `retry_after_ms=N` hint a draining server puts in its 1001 close reason. */
export function drainHint(reason) {
  const m = /retry_after_ms=(\d+)/.exec(reason || "");
  return m ? Number(m[1]) : null;
}

/**
 * The live connection. Keeps, per room, the highest seq handed on (`cursor`), resubscribes every
 * room with `since` after a reconnect, and resends unacknowledged messages with the same
 * `client_id`, so the page sees every message once and in order across drops.
 *
 * Events for the page: "state" ({state, detail}), "frame" (every server frame), "ack".
 */
export class Connection extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.rooms = new Map(); // room id -> cursor (highest seq handed to the page)
    this.pending = new Map(); // client_id -> message frame awaiting its ack
    this.stopped = false;
    this.openedAt = 0;
    session.onChange((data) => {
      if (data && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.send({ type: "auth", token: data.access_token });
      }
    });
  }

  setState(state, detail = "") {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail } }));
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop(state = "stopped", detail = "") {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
    this.setState(state, detail);
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.setState("connecting");
    const url = new URL("/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.session.token }));
    ws.onmessage = (ev) => this.receive(JSON.parse(ev.data));
    ws.onclose = (ev) => this.closed(ev);
  }

  receive(f) {
    if (f.type === "hello") {
      this.openedAt = Date.now();
      this.setState("online");
      for (const [room, cursor] of this.rooms) this.send({ type: "subscribe", room, since: cursor });
      for (const frame of this.pending.values()) this.send(frame);
    } else if (f.type === "ack") {
      this.pending.delete(f.client_id);
      this.dispatchEvent(new CustomEvent("ack", { detail: f }));
    } else if (f.type === "message") {
      const cursor = this.rooms.get(f.room);
      if (cursor === undefined) return;
      if (f.seq <= cursor) return; // already handed on (a replay overlapping live delivery)
      if (f.seq > cursor + 1) { // never expected; close the gap from history before going on
        this.fill(f.room, cursor);
        return;
      }
      this.rooms.set(f.room, f.seq);
    } else if (f.type === "subscribed" && f.recovered === false) {
      // More was missed than the server replays: page the gap from history.
      this.fill(f.room, this.rooms.get(f.room) ?? 0);
    } else if (f.type === "error" && f.code === "rate_limited" && f.ref && this.pending.has(f.ref)) {
      const frame = this.pending.get(f.ref);
      setTimeout(() => { if (this.pending.has(f.ref)) this.send(frame); }, f.retry_after_ms || 1000);
    } else if (f.type === "error" && f.ref && this.pending.has(f.ref)) {
      this.pending.delete(f.ref);
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: f }));
  }

  /** Pages history after `cursor` and hands it on as message frames, in order. */
  async fill(room, cursor) {
    if (this.filling) return this.filling.then(() => this.fill(room, this.rooms.get(room) ?? cursor));
    this.filling = (async () => {
      let after = cursor;
      for (;;) {
        const page = await this.session.call("GET", `/api/v1/rooms/${room}/messages?after=${after}&limit=200`);
        for (const m of page.messages) {
          if (m.seq <= (this.rooms.get(room) ?? 0)) continue;
          this.rooms.set(room, m.seq);
          this.dispatchEvent(new CustomEvent("frame", { detail: { ...m, type: "message" } }));
          after = m.seq;
        }
        if (!page.has_more) break;
      }
    })().catch(() => {}).finally(() => { this.filling = null; });
    return this.filling;
  }

  closed(ev) {
    this.ws = null;
    if (this.stopped) return;
    console.info(`confab: socket closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`);
    if (ev.code === 4003) return this.stop("banned", "You have been banned and disconnected.");
    let wait;
    if (ev.code === 4001) {
      wait = 0;
      this.session.refresh().then(() => this.schedule(0), () => this.stop("signed-out", "Your session ended; log in again."));
      this.setState("reconnecting", "renewing the session");
      return;
    }
    if (Date.now() - this.openedAt > 60_000) this.attempt = 0;
    const hint = ev.code === 1001 ? drainHint(ev.reason) : null;
    wait = hint ?? backoff(this.attempt);
    this.attempt += 1;
    this.schedule(wait);
  }

  schedule(wait) {
    this.retryUntil = Date.now() + wait;
    this.setState("reconnecting", `in ${Math.ceil(wait / 1000)} s`);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  /** Follows a room from `cursor` on (messages after it are replayed, then live ones). */
  follow(room, cursor) {
    this.rooms.set(room, cursor);
    this.send({ type: "subscribe", room, since: cursor });
  }

  unfollow(room) {
    this.rooms.delete(room);
    this.send({ type: "unsubscribe", room });
  }

  /** Sends a message; it is resent with the same client_id after a reconnect until acked. */
  post(room, body, attachments = [], thread = null) {
    const client_id = crypto.randomUUID();
    const frame = { type: "message", room, body, client_id };
    if (attachments.length) frame.attachments = attachments;
    if (thread) frame.thread = thread;
    this.pending.set(client_id, frame);
    this.send(frame);
    return client_id;
  }
}
