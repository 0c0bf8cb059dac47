// The pages' session (tokens in localStorage, refresh shared across tabs, sign-in with the
// OpenID provider, REST calls) and their live connection, which is the protocol client
// (confab-client.js) adapted to the page. The chat page and the admin panel both use it; nothing
// here touches the page.

import { Confab } from "./confab-client.js";

const STORAGE_KEY = "confab.session";
export const BANNED = "You have been banned and disconnected.";
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

  /** Stores the tokens (or forgets them: `ended` then says why, "banned" or "signed-out"). */
  save(data, ended = "signed-out") {
    this.data = data;
    if (data) localStorage.setItem(STORAGE_KEY, JSON.stringify(data));
    else localStorage.removeItem(STORAGE_KEY);
    this.schedule();
    for (const fn of this.listeners) fn(data, ended);
  }

  /**
   * Whether the account is banned, asked with the access token still held. A ban revokes the
   * refresh tokens, so a refresh refused with 401 may be a ban the socket has not yet been
   * closed for (4003); the access token keeps working until it expires, and is then answered
   * 403 for a banned user.
   */
  async bannedNow(accessToken) {
    if (!accessToken) return false;
    try {
      const res = await fetch("/api/v1/users/me", { headers: { Authorization: `Bearer ${accessToken}` } });
      return res.status === 403;
    } catch (_) {
      return false;
    }
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
        if (e.status === 401 || e.status === 403) {
          // (Another tab may have signed out meanwhile: then there is nothing to ask with.)
          if (this.data && !this.data.sso && await this.bannedNow(this.data.access_token)) {
            this.save(null, "banned");
            throw new ApiError(403, "banned", BANNED);
          }
          this.save(null);
        }
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
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload });
    } catch (_) {
      // The browser's own words ("Failed to fetch", "NetworkError…") say nothing to a person.
      throw new ApiError(0, "offline", "The server cannot be reached right now. Check your connection; confab keeps trying.");
    }
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

/**
 * The live connection, on the protocol client (`confab-client.js`, the same file as the npm
 * package): it resumes every room with `since`/`since_rev` after a reconnect, pages what the
 * server could not replay, resends unacknowledged messages with the same `client_id`, honours a
 * draining pod's hint and renews the token. This class only adapts it to the page.
 *
 * Events for the page: "state" ({state, detail}), "frame" (server frames; messages once each,
 * in order per room), "ack".
 */
export class Connection extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.state = "idle";
    this.chat = null;
    this.followed = new Map(); // room id -> the cursor the page asked to follow from
    // The page reads `rooms.has(id)` (followed?) and `rooms.get(id)` (the last seq handed on).
    this.rooms = {
      has: (id) => this.followed.has(id),
      get: (id) => (!this.followed.has(id) ? undefined : this.chat ? this.chat.room(id).seq ?? undefined : this.followed.get(id)),
    };
  }

  setState(state, detail = "") {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail } }));
  }

  /** A token for the socket: the session's, renewed first when it is about to expire. */
  async token() {
    const data = this.session.data;
    if (!data) throw new ApiError(401, "unauthorized", "not logged in");
    if (data.expires_at && data.expires_at - Date.now() < 30_000) {
      try {
        await this.session.refresh();
      } catch (e) {
        // The session's listeners may have stopped the connection already.
        const ended = this.state === "banned" || this.state === "signed-out";
        if (!ended && e.code === "banned") this.stop("banned", e.message);
        else if (!ended && (e.status === 401 || e.status === 403)) this.stop("signed-out", "Your session ended; log in again.");
        throw e;
      }
    }
    return this.session.token;
  }

  start() {
    if (this.chat) return;
    const chat = new Confab({ url: location.origin, getToken: () => this.token() });
    this.chat = chat;
    chat.on("state", (state, detail) => {
      if (state === "connecting" || state === "online" || state === "reconnecting") this.setState(state, detail);
      else if (state === "banned") this.setState("banned", BANNED);
      else if (state === "unauthorized") this.setState("signed-out", "Your session ended; log in again.");
    });
    chat.on("frame", (f) => {
      // Messages come through each room (deduplicated, gaps paged); the rest as received.
      if (f.type !== "message") this.dispatchEvent(new CustomEvent("frame", { detail: f }));
    });
    chat.on("close", (c) => console.info(`confab: socket closed (${c.code}${c.reason ? `: ${c.reason}` : ""})`));
    chat.connect().catch(() => {});
    for (const [id, cursor] of this.followed) this.subscribe(id, cursor);
  }

  stop(state = "stopped", detail = "") {
    if (this.chat) this.chat.close();
    this.chat = null;
    this.setState(state, detail);
  }

  /** Sends a frame that needs no answer (typing, receipts, reactions, edits, deletes). */
  send(frame) {
    return this.chat ? this.chat.sendFrame(frame) : false;
  }

  subscribe(id, cursor) {
    const room = this.chat.room(id);
    if (!room.followedByPage) {
      room.followedByPage = true;
      room.on("message", (m) => {
        if (this.followed.has(id)) this.dispatchEvent(new CustomEvent("frame", { detail: m }));
      });
    }
    room.subscribe(cursor === undefined ? {} : { since: cursor }).catch(() => {});
  }

  /** Follows a room from `cursor` on (messages after it are replayed, then live ones). */
  follow(id, cursor) {
    this.followed.set(id, cursor);
    if (this.chat) this.subscribe(id, cursor);
  }

  unfollow(id) {
    this.followed.delete(id);
    if (this.chat) this.chat.room(id).unsubscribe();
  }

  /** Sends a message; resent with the same client_id after reconnects until acked. */
  post(room, body, attachments = [], thread = null) {
    const clientId = crypto.randomUUID();
    const opts = { clientId, attachments };
    if (thread) opts.thread = thread;
    this.chat.room(room).send(body, opts).then(
      (ack) => this.dispatchEvent(new CustomEvent("ack", { detail: ack })),
      () => {}, // refused for good: the error frame reached the page already
    );
    return clientId;
  }
}
