// The confab chat page. Rooms come from REST; everything live comes over one WebSocket
// (api.js). Each room's messages are kept by seq, contiguous from the oldest loaded to the newest
// received, so the page can show neither a gap nor a duplicate.

import { Session, Connection, ApiError, providers, BANNED } from "./api.js";
import { $, h, toast } from "./dom.js";


const session = new Session();
const conn = new Connection(session);

const rooms = new Map(); // id -> Room (listing fields included for member rooms)
const views = new Map(); // id -> per-room state, see view()
const names = new Map(); // user id -> display name
const previews = new Map(); // attachment id -> object URL
let current = null; // open room id

function view(id) {
  let v = views.get(id);
  if (!v) {
    v = {
      msgs: new Map(), // seq -> Message
      nodes: new Map(), // seq -> <li>
      lo: null, // lowest loaded seq
      hasMore: true,
      loading: false,
      members: new Map(), // user id -> {user, role, online, read, delivered}
      typing: new Map(), // user id -> timer
      pending: new Map(), // client_id -> {body, attachments, acked, failed}
      readSent: 0,
      deliveredSent: 0,
      receiptTimer: null,
    };
    views.set(id, v);
  }
  return v;
}

function displayName(userId, fallback) {
  return names.get(userId) || fallback || "someone";
}

function time(iso) {
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// ---- authentication ------------------------------------------------------------------------

function showAuth() {
  $("auth").hidden = false;
  $("chat").hidden = true;
  $("logout").hidden = true;
  $("admin-link").hidden = true;
  $("me").textContent = "";
  showProviders().catch(() => {});
}

let provider = null;

/** Offers "Sign in with …" when the server has an OpenID provider; hides passwords if it has none. */
async function showProviders() {
  const offered = await providers();
  provider = offered.oidc;
  $("auth-form").hidden = !offered.local;
  $("sso").hidden = !provider;
  $("sso-or").hidden = !offered.local;
  if (provider) $("sso-button").textContent = `Sign in with ${new URL(provider.issuer).host}`;
}

$("sso-button").addEventListener("click", async () => {
  $("auth-error").textContent = "";
  try {
    await session.beginSso(provider);
  } catch (e) {
    $("auth-error").textContent = e.message;
  }
});

$("auth-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const action = ev.submitter ? ev.submitter.value : "login";
  const { username, password, display_name } = Object.fromEntries(new FormData(form));
  $("auth-error").textContent = "";
  try {
    if (action === "register") await session.register(username, password, display_name);
    else await session.login(username, password);
    form.reset();
    await start();
  } catch (e) {
    $("auth-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", async () => {
  conn.stop("idle", "");
  await session.logout();
  location.hash = "";
  location.reload();
});

// ---- connection state ----------------------------------------------------------------------

const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  online: "Connected",
  reconnecting: "Reconnecting",
  banned: "Disconnected",
  "signed-out": "Signed out",
  stopped: "Disconnected",
};

let connectedBefore = false;

conn.addEventListener("state", (ev) => {
  const { state, detail } = ev.detail;
  // While not connected, who is online is not known: the member list stops showing it.
  document.body.dataset.conn = state;
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = STATE_TEXT[state] + (detail ? `: ${detail}` : "");
  // The list was read at start; after a reconnect, read it again for rooms joined meanwhile.
  if (state === "online" && connectedBefore) refreshRooms().catch(() => {});
  if (state === "online") connectedBefore = true;
  if (state === "banned" || state === "signed-out") {
    $("composer").querySelectorAll("textarea, button, input").forEach((c) => { c.disabled = true; });
    toast(detail);
  }
});

// ---- rooms ---------------------------------------------------------------------------------

/** Loads the room list; follows every room the user belongs to from its last seq. */
async function refreshRooms() {
  const { rooms: list } = await session.call("GET", "/api/v1/rooms");
  const seen = new Set();
  for (const r of list) {
    seen.add(r.id);
    const known = rooms.get(r.id);
    const member = r.role !== undefined;
    if (known && known.role !== undefined && member) {
      // Keep the live unread count; take the rest fresh.
      rooms.set(r.id, { ...r, unread: known.unread });
    } else {
      rooms.set(r.id, r);
    }
    if (member && !conn.rooms.has(r.id)) {
      const v = view(r.id);
      const cursor = v.msgs.size ? Math.max(...v.msgs.keys()) : r.last_seq;
      conn.follow(r.id, cursor);
      if (r.kind === "direct") loadMembers(r.id).catch(() => {});
    }
    if (!member && conn.rooms.has(r.id)) conn.unfollow(r.id);
  }
  for (const id of [...rooms.keys()]) if (!seen.has(id)) forgetRoom(id);
  renderRooms();
  if (current && !rooms.has(current)) closeRoom();
}

function forgetRoom(id) {
  rooms.delete(id);
  if (conn.rooms.has(id)) conn.unfollow(id);
  views.delete(id);
}

function roomLabel(r) {
  if (r.kind === "direct") {
    const v = views.get(r.id);
    const other = v && [...v.members.values()].find((m) => m.user.id !== session.user.id);
    return other ? other.user.display_name || other.user.username : "Direct message";
  }
  return `#${r.name}`;
}

function renderRooms() {
  const mine = [...rooms.values()].filter((r) => r.role !== undefined);
  const others = [...rooms.values()].filter((r) => r.role === undefined && !r.archived);
  const item = (r) => {
    const unread = r.unread || 0;
    return h("li", {},
      h("a", {
        href: `#/room/${r.id}`,
        class: r.id === current ? "room current" : "room",
        "aria-current": r.id === current ? "page" : false,
        dataset: { room: r.id, name: r.name },
      },
      h("span", { class: "name" }, roomLabel(r), r.kind === "private" ? h("span", { class: "tag" }, "private") : null,
        r.archived ? h("span", { class: "tag" }, "archived") : null),
      r.mentions ? h("span", { class: "badge mention", "aria-label": `${r.mentions} mentions` }, `@${r.mentions}`) : null,
      unread ? h("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread)) : null));
  };
  $("room-list").replaceChildren(...mine.filter((r) => r.kind !== "direct").map(item));
  $("dm-list").replaceChildren(...mine.filter((r) => r.kind === "direct").map(item));
  $("browse-list").replaceChildren(...others.map((r) =>
    h("li", { class: "browse" }, h("span", { class: "name" }, `#${r.name}`),
      h("button", { onclick: () => join(r.id), "aria-label": `Join #${r.name}` }, "Join"))));
  if (!others.length) $("browse-list").replaceChildren(h("li", { class: "muted" }, "None"));
}

async function join(id) {
  try {
    await session.call("POST", `/api/v1/rooms/${id}/join`);
    await refreshRooms();
    location.hash = `#/room/${id}`;
  } catch (e) { toast(e.message); }
}

$("create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = Object.fromEntries(new FormData(ev.target));
  if (!body.topic) delete body.topic;
  try {
    const r = await session.call("POST", "/api/v1/rooms", body);
    ev.target.reset();
    ev.target.closest("details").open = false;
    await refreshRooms();
    location.hash = `#/room/${r.id}`;
  } catch (e) { toast(e.message); }
});

let suggestTimer = null;
$("dm-user").addEventListener("input", (ev) => {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    const q = ev.target.value.trim();
    if (!q) return;
    const { users } = await session.call("GET", `/api/v1/users?q=${encodeURIComponent(q)}&limit=10`).catch(() => ({ users: [] }));
    $("dm-suggestions").replaceChildren(...users.filter((u) => u.id !== session.user.id)
      .map((u) => h("option", { value: u.username }, u.display_name)));
  }, 200);
});

$("dm-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const username = $("dm-user").value.trim().toLowerCase();
  try {
    const { users } = await session.call("GET", `/api/v1/users?q=${encodeURIComponent(username)}&limit=50`);
    const user = users.find((u) => u.username === username);
    if (!user) throw new Error(`There is no user called ${username}.`);
    if (user.id === session.user.id) throw new Error("That is you.");
    const r = await session.call("POST", "/api/v1/dms", { user_id: user.id });
    ev.target.reset();
    ev.target.closest("details").open = false;
    await refreshRooms();
    await loadMembers(r.id);
    location.hash = `#/room/${r.id}`;
  } catch (e) { toast(e.message); }
});

$("leave").addEventListener("click", async () => {
  const id = current;
  try {
    await session.call("POST", `/api/v1/rooms/${id}/leave`);
    location.hash = "";
    await refreshRooms();
  } catch (e) { toast(e.message); }
});

// ---- opening a room ------------------------------------------------------------------------

function route() {
  const m = /^#\/room\/([0-9a-f-]{36})$/.exec(location.hash);
  if (m && rooms.has(m[1])) openRoom(m[1]);
  else closeRoom();
}
window.addEventListener("hashchange", route);

function closeRoom() {
  current = null;
  $("room-view").hidden = true;
  $("empty").hidden = !$("search-view").hidden;
  renderRooms();
  renderMembers();
}

async function openRoom(id) {
  const r = rooms.get(id);
  if (current !== id) { closeThread(); $("pins").hidden = true; }
  current = id;
  $("search-view").hidden = true;
  $("empty").hidden = true;
  $("room-view").hidden = false;
  $("room-view").dataset.room = id;
  document.body.classList.remove("rooms-open");
  $("toggle-rooms").setAttribute("aria-expanded", "false");
  $("room-title").textContent = roomLabel(r);
  $("room-topic").textContent = r.topic || "";
  $("leave").hidden = r.kind === "direct" || r.role === undefined;
  document.title = `${roomLabel(r)} · confab`;
  const v = view(id);
  $("messages").replaceChildren(...[...v.msgs.keys()].sort((a, b) => a - b).map((s) => node(v, v.msgs.get(s))));
  regroup();
  renderPending(v);
  renderDrafts();
  renderTyping();
  renderRooms();
  renderMembers();
  updateComposer();
  scrollToBottom();
  if (v.lo === null) await loadOlder(id);
  loadMembers(id).catch(() => {});
  markRead(id);
}

function updateComposer() {
  const r = rooms.get(current);
  const disabled = !r || r.archived || r.read_only || ["banned", "signed-out"].includes(conn.state);
  $("composer-input").disabled = disabled;
  $("composer-note").textContent = r && r.archived ? "This room is archived: history only."
    : r && r.read_only ? "This room is read-only." : "";
}

/** Loads the page of history before the oldest loaded message. */
async function loadOlder(id) {
  const v = view(id);
  if (v.loading || !v.hasMore) return;
  v.loading = true;
  $("history-state").textContent = "Loading…";
  try {
    const held = v.msgs.size ? Math.min(...v.msgs.keys()) : null;
    const before = v.lo ?? held ?? (conn.rooms.get(id) ?? rooms.get(id).last_seq) + 1;
    const page = await session.call("GET", `/api/v1/rooms/${id}/messages?before=${before}&limit=50`);
    const scroller = $("scroller");
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    for (const m of page.messages) addMessage(id, m, { history: true });
    v.hasMore = page.has_more;
    if (v.lo === null) v.lo = page.messages.length ? page.messages[0].seq : before;
    if (current === id) scroller.scrollTop = scroller.scrollHeight - fromBottom;
  } catch (e) {
    toast(e.message);
  } finally {
    v.loading = false;
    if (current === id) $("history-state").textContent = v.hasMore ? "" : "This is the beginning of the room.";
  }
}

$("scroller").addEventListener("scroll", () => {
  if (current && $("scroller").scrollTop < 80) loadOlder(current);
});

function nearBottom() {
  const s = $("scroller");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
}

function scrollToBottom() {
  const s = $("scroller");
  s.scrollTop = s.scrollHeight;
}

// ---- messages ------------------------------------------------------------------------------

function addMessage(roomId, m, { history = false } = {}) {
  const v = view(roomId);
  if (m.username) names.set(m.user, names.get(m.user) || m.username);
  const isNew = !v.msgs.has(m.seq);
  v.msgs.set(m.seq, m);
  if (v.lo === null || m.seq < v.lo) { if (history || v.lo !== null) v.lo = m.seq; }
  if (m.client_id && v.pending.has(m.client_id) && m.user === session.user.id) {
    v.pending.delete(m.client_id);
    if (current === roomId) renderPending(v);
  }
  if (current !== roomId) return isNew;
  const stick = nearBottom();
  const li = node(v, m);
  const list = $("messages");
  // Keep the list in seq order: find the first rendered message with a higher seq.
  const after = [...list.children].find((c) => c.classList.contains("message") && Number(c.dataset.seq) > m.seq);
  if (!li.isConnected || li.nextSibling !== after) list.insertBefore(li, after || null);
  scheduleRegroup();
  if (stick && !history) scrollToBottom();
  return isNew;
}

let regroupQueued = false;
function scheduleRegroup() {
  if (regroupQueued) return;
  regroupQueued = true;
  queueMicrotask(() => { regroupQueued = false; regroup(); });
}

/** The <li> of a message, made or brought up to date. */
function node(v, m) {
  let li = v.nodes.get(m.seq);
  if (li && li.dataset.editing) return li;
  if (!li) {
    li = h("li", { class: "message", dataset: { seq: m.seq } });
    v.nodes.set(m.seq, li);
  }
  const own = m.user === session.user.id;
  li.classList.toggle("own", own);
  li.classList.toggle("deleted", m.deleted);
  const mentioned = !own && (m.mentions_room || (m.mentions || []).includes(session.user.id));
  li.classList.toggle("mentioned", mentioned);
  li.classList.toggle("pinned", !!m.pinned);
  const body = m.deleted ? h("p", { class: "body gone" }, "This message was deleted.")
    : h("p", { class: "body" }, ...highlight(m.body));
  const actions = m.deleted ? null : h("span", { class: "actions" },
    own ? h("button", { class: "link", onclick: () => startEdit(v, m), "aria-label": `Edit message ${m.seq}` }, "Edit") : null,
    own ? h("button", { class: "link", onclick: () => remove(m), "aria-label": `Delete message ${m.seq}` }, "Delete") : null,
    m.thread ? null : h("button", { class: "link", onclick: () => openThread(m.room, m.seq), "aria-label": `Reply in thread to message ${m.seq}` }, "Reply"),
    canModerate(m.room) ? h("button", { class: "link", onclick: () => setPinned(m, !m.pinned), "aria-label": `${m.pinned ? "Unpin" : "Pin"} message ${m.seq}` }, m.pinned ? "Unpin" : "Pin") : null);
  const summary = m.thread_summary;
  li.replaceChildren(...[
    h("div", { class: "meta" },
      h("span", { class: "author", dataset: { user: m.user } }, displayName(m.user, m.username)),
      h("time", { datetime: m.created_at, title: m.created_at }, time(m.created_at)),
      m.edited_at && !m.deleted ? h("span", { class: "edited" }, "(edited)") : null,
      m.pinned ? h("span", { class: "tag pin" }, "📌 pinned") : null,
      m.thread ? h("button", { class: "link in-thread", onclick: () => openThread(m.room, m.thread) }, "↳ in a thread") : null,
      own && !m.deleted ? ticks(v, m.seq) : null,
      actions),
    body,
    m.deleted ? null : attachments(m.attachments || []),
    summary ? h("button", { class: "link replies", onclick: () => openThread(m.room, m.seq), "aria-label": `Open the thread of message ${m.seq}` },
      `${summary.reply_count} ${summary.reply_count === 1 ? "reply" : "replies"}`) : null,
    m.deleted ? null : reactionsBar(m),
  ].filter(Boolean));
  return li;
}

/** The body with the caller's own mentions and @room marked, and web addresses as links. */
function highlight(text) {
  const me = `@${session.user.username}`;
  return text.split(/(https?:\/\/[^\s<>"']+)/).flatMap((part, i) => {
    if (i % 2 === 1) {
      // Only http(s), opened apart from this page; a trailing full stop or bracket is prose.
      const [, url, rest] = /^(.*?)([.,;:!?)\]]*)$/.exec(part);
      return [h("a", { href: url, target: "_blank", rel: "noopener noreferrer nofollow" }, url), rest];
    }
    return part.split(/(@[a-z0-9_.-]+)/).map((bit) =>
      bit === me || bit === "@room" ? h("mark", { class: "mention" }, bit) : bit);
  }).filter((x) => x !== "");
}

/** The day a message was sent, as a separator says it. */
function dayLabel(iso) {
  const d = new Date(iso);
  const today = new Date();
  const yesterday = new Date(today.getTime() - 86_400_000);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

/** Day separators, and consecutive messages of one author within 5 minutes drawn as a group. */
function regroup() {
  const list = $("messages");
  list.querySelectorAll("li.day").forEach((li) => li.remove());
  const v = views.get(current);
  if (!v) return;
  let prev = null;
  for (const li of [...list.querySelectorAll("li.message:not(.pending)")]) {
    const m = v.msgs.get(Number(li.dataset.seq));
    if (!m) continue;
    const day = new Date(m.created_at).toDateString();
    if (!prev || new Date(prev.created_at).toDateString() !== day) {
      list.insertBefore(h("li", { class: "day", role: "separator" }, h("span", {}, dayLabel(m.created_at))), li);
    }
    const grouped = !!prev && prev.user === m.user && !prev.deleted && !m.deleted && !m.thread
      && new Date(m.created_at) - new Date(prev.created_at) < 5 * 60_000
      && new Date(prev.created_at).toDateString() === day;
    li.classList.toggle("grouped", grouped);
    prev = m;
  }
}

function canModerate(roomId) {
  const r = rooms.get(roomId);
  return session.user.is_admin || (r && (r.role === "owner" || r.role === "moderator"));
}

const PICKER = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

/** Each emoji with its count (pressed when the caller reacted), and a picker for more. */
function reactionsBar(m) {
  const mine = (r) => r.users.includes(session.user.id);
  const picker = h("span", { class: "picker", hidden: true }, PICKER.map((e) =>
    h("button", { class: "emoji", "aria-label": `React with ${e}`, onclick: () => { picker.hidden = true; react(m, e, true); } }, e)));
  return h("div", { class: "reactions" },
    (m.reactions || []).map((r) => h("button", {
      class: "reaction",
      "aria-pressed": String(mine(r)),
      "aria-label": `${r.emoji} ${r.count}`,
      dataset: { emoji: r.emoji },
      onclick: () => react(m, r.emoji, !mine(r)),
    }, `${r.emoji} ${r.count}`)),
    h("button", { class: "link add-reaction", "aria-label": `Add a reaction to message ${m.seq}`, onclick: () => { picker.hidden = !picker.hidden; } }, "☺+"),
    picker);
}

function react(m, emoji, active) {
  conn.send({ type: "react", room: m.room, seq: m.seq, emoji, active });
}

async function setPinned(m, pinned) {
  try {
    await session.call(pinned ? "PUT" : "DELETE", `/api/v1/rooms/${m.room}/pins/${m.seq}`);
  } catch (e) { toast(e.message); }
}

/** A `reaction` event applied to our copy, if it is newer than what we have. */
function applyReaction(f) {
  const v = views.get(f.room);
  const m = v && v.msgs.get(f.seq);
  if (!m || f.rev <= (m.rev || 0)) return;
  const list = (m.reactions || []).map((r) => ({ ...r, users: [...r.users] }));
  let r = list.find((x) => x.emoji === f.emoji);
  if (f.active) {
    if (!r) { r = { emoji: f.emoji, count: 0, users: [] }; list.push(r); }
    if (!r.users.includes(f.user)) { r.count += 1; if (r.users.length < 50) r.users.push(f.user); }
  } else if (r) {
    r.count -= 1;
    r.users = r.users.filter((u) => u !== f.user);
  }
  addMessage(f.room, { ...m, rev: f.rev, reactions: list.filter((x) => x.count > 0) });
}

// ---- threads and pins ----------------------------------------------------------------------

let thread = null; // {room, root} of the open thread panel

async function openThread(room, root) {
  thread = { room, root };
  $("thread").hidden = false;
  $("thread-list").replaceChildren(h("li", { class: "muted" }, "Loading…"));
  try {
    const page = await session.call("GET", `/api/v1/rooms/${room}/threads/${root}?limit=200`);
    if (!thread || thread.root !== root || thread.room !== room) return;
    $("thread-list").replaceChildren(threadItem(page.root, true), ...page.messages.map((m) => threadItem(m, false)));
    $("thread-input").focus();
  } catch (e) { toast(e.message); closeThread(); }
}

function threadItem(m, root) {
  return h("li", { class: root ? "thread-root" : "thread-reply", dataset: { seq: m.seq } },
    h("div", { class: "meta" }, h("span", { class: "author" }, displayName(m.user, m.username)),
      h("time", { datetime: m.created_at }, time(m.created_at))),
    h("p", { class: "body" }, m.deleted ? "This message was deleted." : m.body));
}

function closeThread() {
  thread = null;
  $("thread").hidden = true;
}

async function showPins() {
  const panel = $("pins");
  if (!panel.hidden) { panel.hidden = true; return; }
  panel.hidden = false;
  try {
    const page = await session.call("GET", `/api/v1/rooms/${current}/pins`);
    $("pin-list").replaceChildren(...(page.messages.length ? page.messages.map((m) => threadItem(m, false))
      : [h("li", { class: "muted" }, "Nothing pinned yet.")]));
  } catch (e) { toast(e.message); }
}

function ticks(v, seq) {
  let state = "sent";
  for (const mem of v.members.values()) {
    if (mem.user.id === session.user.id) continue;
    if (mem.read >= seq) { state = "read"; break; }
    if (mem.delivered >= seq) state = "delivered";
  }
  const label = { sent: "Sent", delivered: "Delivered", read: "Read" }[state];
  return h("span", { class: `ticks ${state}`, title: label, "aria-label": label, dataset: { ticks: state } },
    state === "sent" ? "✓" : "✓✓");
}

function attachments(list) {
  if (!list.length) return null;
  return h("div", { class: "attachments" }, list.map((a) => {
    if (a.content_type.startsWith("image/")) {
      const img = h("img", { alt: a.filename, class: "preview", loading: "lazy" });
      const known = previews.get(a.id);
      if (known) img.src = known;
      else session.blobUrl(a.url).then((u) => { previews.set(a.id, u); img.src = u; }).catch(() => { img.alt = `${a.filename} (unavailable)`; });
      return h("figure", {}, img, h("figcaption", {}, a.filename));
    }
    return h("button", { class: "file", onclick: () => download(a) }, `⬇ ${a.filename} (${size(a.size)})`);
  }));
}

function size(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

async function download(a) {
  try {
    const url = previews.get(a.id) || await session.blobUrl(a.url);
    previews.set(a.id, url);
    const link = h("a", { href: url, download: a.filename });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (e) { toast(e.message); }
}

function startEdit(v, m) {
  const li = v.nodes.get(m.seq);
  li.dataset.editing = "1";
  const input = h("textarea", { class: "edit", "aria-label": "Edit message" });
  input.value = m.body;
  const done = () => { delete li.dataset.editing; node(v, v.msgs.get(m.seq)); };
  const form = h("form", {
    class: "edit-form",
    onsubmit: (ev) => {
      ev.preventDefault();
      const body = input.value.trim();
      if (body && body !== m.body) conn.send({ type: "edit", room: m.room, seq: m.seq, body });
      done();
    },
  }, input, h("button", { type: "submit" }, "Save"), h("button", { type: "button", onclick: done }, "Cancel"));
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
    if (ev.key === "Escape") { ev.preventDefault(); done(); }
  });
  li.querySelector(".body").replaceWith(form);
  input.focus();
}

function remove(m) {
  if (confirm("Delete this message?")) conn.send({ type: "delete", room: m.room, seq: m.seq });
}

function renderPending(v) {
  const list = $("messages");
  list.querySelectorAll("li.pending").forEach((li) => li.remove());
  for (const [cid, p] of v.pending) {
    list.append(h("li", { class: "message own pending", dataset: { clientId: cid } },
      h("div", { class: "meta" }, h("span", { class: "author" }, session.user.display_name),
        h("span", { class: "ticks", "aria-label": p.failed ? "Not sent" : "Sending" }, p.failed ? `⚠ ${p.failed}` : "🕓")),
      h("p", { class: "body" }, p.body)));
  }
}

// ---- composer ------------------------------------------------------------------------------

let typingSent = 0;
let typingStop = null;

/** The message box grows with its lines, up to a third of the screen (then it scrolls). */
function fitComposer() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, Math.round(window.innerHeight / 3))}px`;
}

$("composer-input").addEventListener("input", () => {
  fitComposer();
  if (!current) return;
  const room = current;
  if (Date.now() - typingSent > 3000) {
    conn.send({ type: "typing", room, active: true });
    typingSent = Date.now();
  }
  clearTimeout(typingStop);
  typingStop = setTimeout(() => {
    conn.send({ type: "typing", room, active: false });
    typingSent = 0;
  }, 4000);
});

$("composer-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

/** Files uploaded for the next message: [{room, attachment}], shown above the box until sent. */
let drafts = [];

function renderDrafts() {
  const shown = drafts.filter((d) => d.room === current);
  $("drafts").hidden = shown.length === 0;
  $("drafts").replaceChildren(...shown.map((d) => h("li", { class: "draft" },
    h("span", {}, `📎 ${d.attachment.filename} (${size(d.attachment.size)})`),
    h("button", {
      type: "button", class: "link", "aria-label": `Remove ${d.attachment.filename}`,
      onclick: () => { drafts = drafts.filter((x) => x !== d); renderDrafts(); },
    }, "Remove"))));
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("composer-input");
  const files = drafts.filter((d) => d.room === current);
  const body = input.value.trim() || files.map((d) => d.attachment.filename).join(", ");
  if (!body || !current) return;
  send(current, body, files.map((d) => d.attachment.id));
  drafts = drafts.filter((d) => d.room !== current);
  renderDrafts();
  input.value = "";
  fitComposer();
  clearTimeout(typingStop);
  typingSent = 0;
});

function send(room, body, attachmentIds) {
  const client_id = conn.post(room, body, attachmentIds);
  const v = view(room);
  v.pending.set(client_id, { body, failed: null });
  if (current === room) { renderPending(v); scrollToBottom(); }
}

$("attach").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (!file || !current) return;
  const room = current;
  try {
    $("composer-note").textContent = `Uploading ${file.name}…`;
    const a = await session.call("POST", `/api/v1/rooms/${room}/attachments?filename=${encodeURIComponent(file.name)}`, file);
    // Held with the draft: the person adds a caption (or not) and sends when ready.
    drafts.push({ room, attachment: a });
    renderDrafts();
    $("composer-note").textContent = "";
    $("composer-input").focus();
  } catch (e) {
    $("composer-note").textContent = `${file.name}: ${e.message}`;
  }
});

// ---- receipts ------------------------------------------------------------------------------

/** Sends read (and delivered) for the open room when the page is visible. */
function markRead(id) {
  const v = views.get(id);
  if (!v || id !== current || document.visibilityState !== "visible") return;
  const last = conn.rooms.get(id) ?? 0;
  const r = rooms.get(id);
  if (r && (r.unread || r.mentions)) { r.unread = 0; r.mentions = 0; renderRooms(); }
  if (last > v.readSent && r && r.role !== undefined) {
    v.readSent = last;
    v.deliveredSent = Math.max(v.deliveredSent, last);
    conn.send({ type: "read", room: id, seq: last });
  }
}

/** Acknowledges delivery of what arrived, at most every half second per room. */
function markDelivered(id) {
  const v = view(id);
  if (v.receiptTimer) return;
  v.receiptTimer = setTimeout(() => {
    v.receiptTimer = null;
    const last = conn.rooms.get(id) ?? 0;
    if (last > v.deliveredSent) {
      v.deliveredSent = last;
      conn.send({ type: "delivered", room: id, seq: last });
    }
  }, 500);
}

document.addEventListener("visibilitychange", () => { if (current) markRead(current); });
window.addEventListener("focus", () => { if (current) markRead(current); });

// ---- members, presence, typing ---------------------------------------------------------------

async function loadMembers(id) {
  const { members } = await session.call("GET", `/api/v1/rooms/${id}/members`);
  const v = view(id);
  for (const m of members) {
    const name = m.user.display_name || m.user.username;
    if (names.get(m.user.id) !== name) {
      names.set(m.user.id, name);
      // Messages drawn before the members were known show the username: put the name in.
      for (const el of document.querySelectorAll(`.author[data-user="${m.user.id}"]`)) el.textContent = name;
    }
    const old = v.members.get(m.user.id);
    v.members.set(m.user.id, {
      user: m.user,
      role: m.role,
      online: m.online,
      read: Math.max(m.last_read_seq, old ? old.read : 0),
      delivered: Math.max(m.last_delivered_seq, old ? old.delivered : 0),
    });
  }
  const ids = new Set(members.map((m) => m.user.id));
  for (const uid of [...v.members.keys()]) if (!ids.has(uid)) v.members.delete(uid);
  if (rooms.get(id) && rooms.get(id).kind === "direct") renderRooms();
  if (current === id) {
    $("room-title").textContent = roomLabel(rooms.get(id));
    renderMembers();
    refreshTicks(v);
  }
}

function refreshTicks(v) {
  for (const [seq, m] of v.msgs) {
    if (m.user !== session.user.id || m.deleted) continue;
    const li = v.nodes.get(seq);
    const old = li && li.querySelector(".ticks");
    if (old) old.replaceWith(ticks(v, seq));
  }
}

function renderMembers() {
  const v = current && views.get(current);
  const list = v ? [...v.members.values()] : [];
  list.sort((a, b) => (b.online - a.online) || a.user.username.localeCompare(b.user.username));
  $("member-list").replaceChildren(...list.map((m) =>
    h("li", { class: m.online ? "member online" : "member", dataset: { user: m.user.username } },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "name" }, m.user.display_name || m.user.username),
      h("span", { class: "visually-hidden" }, m.online ? " (online)" : " (offline)"),
      m.role !== "member" ? h("span", { class: "tag" }, m.role) : null)));
}

function renderTyping() {
  const v = current && views.get(current);
  const who = v ? [...v.typing.keys()].map((u) => displayName(u)) : [];
  $("typing").textContent = who.length === 0 ? ""
    : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

function setTyping(room, user, active) {
  const v = view(room);
  clearTimeout(v.typing.get(user));
  if (active) v.typing.set(user, setTimeout(() => setTyping(room, user, false), 8000));
  else v.typing.delete(user);
  if (room === current) renderTyping();
}

// ---- live events ---------------------------------------------------------------------------

conn.addEventListener("ack", (ev) => {
  const f = ev.detail;
  const v = views.get(f.room);
  const p = v && v.pending.get(f.client_id);
  if (p) p.acked = true;
});

conn.addEventListener("frame", (ev) => {
  const f = ev.detail;
  switch (f.type) {
    case "message": {
      const r = rooms.get(f.room);
      const isNew = addMessage(f.room, f);
      if (thread && thread.room === f.room && f.thread === thread.root
        && !$("thread-list").querySelector(`[data-seq="${f.seq}"]`)) {
        $("thread-list").append(threadItem(f, false));
      }
      if (f.user !== session.user.id) {
        setTyping(f.room, f.user, false);
        if (isNew && r) {
          markDelivered(f.room);
          if (f.room === current && document.visibilityState === "visible") markRead(f.room);
          else if (!f.deleted) {
            r.unread = (r.unread || 0) + 1;
            // The page follows every room it is in, so the server sends the message itself
            // rather than a `notification`: a mention elsewhere is noticed here.
            if (f.mentions_room || (f.mentions || []).includes(session.user.id)) {
              r.mentions = (r.mentions || 0) + 1;
              toast(`${displayName(f.user, f.username)} mentioned you in ${roomLabel(r)}`);
            }
            renderRooms();
          }
        }
      }
      // Our own messages need no `read`: sending moves our read marker on the server.
      break;
    }
    case "message_edited":
    case "message_updated": {
      const known = views.get(f.room) && views.get(f.room).msgs.get(f.seq);
      if (known && (f.rev || 0) >= (known.rev || 0)) addMessage(f.room, f);
      break;
    }
    case "reaction":
      applyReaction(f);
      break;
    case "notification": {
      const r = rooms.get(f.room);
      const who = displayName(f.message.user, f.message.username);
      const where = r ? roomLabel(r) : "a room";
      if (f.reason === "mention" && r) { r.mentions = (r.mentions || 0) + 1; }
      if (r && f.room !== current) { r.unread = (r.unread || 0) + 1; }
      renderRooms();
      toast(f.reason === "mention" ? `${who} mentioned you in ${where}`
        : f.reason === "dm" ? `${who} sent you a direct message`
          : `${who} replied in a thread in ${where}`);
      break;
    }
    case "message_deleted": {
      const v = views.get(f.room);
      const m = v && v.msgs.get(f.seq);
      if (m) addMessage(f.room, { ...m, deleted: true, body: "", attachments: [] });
      break;
    }
    case "typing":
      setTyping(f.room, f.user, f.active);
      break;
    case "receipt": {
      const v = views.get(f.room);
      if (!v) break;
      const m = v.members.get(f.user);
      if (!m) { loadMembers(f.room).catch(() => {}); break; }
      if (f.kind === "read") m.read = Math.max(m.read, f.seq);
      else m.delivered = Math.max(m.delivered, f.seq);
      if (f.room === current) refreshTicks(v);
      break;
    }
    case "subscribed": {
      const v = view(f.room);
      const online = new Set(f.presence);
      for (const m of v.members.values()) m.online = online.has(m.user.id);
      if ([...online].some((u) => !v.members.has(u))) loadMembers(f.room).catch(() => {});
      if (f.room === current) renderMembers();
      if (f.recovered === false) $("history-state").textContent = "Catching up…";
      break;
    }
    case "presence": {
      const v = view(f.room);
      const m = v.members.get(f.user);
      if (m) m.online = f.status === "online";
      else loadMembers(f.room).catch(() => {});
      if (f.room === current) renderMembers();
      break;
    }
    case "room_updated": {
      const old = rooms.get(f.id);
      if (old) rooms.set(f.id, { ...old, ...f, unread: old.unread, role: old.role });
      if (f.id === current) {
        $("room-topic").textContent = f.topic || "";
        updateComposer();
      }
      renderRooms();
      break;
    }
    case "room_joined": // invited, a DM opened by someone else, or joined in another tab
      refreshRooms().catch(() => {});
      break;
    case "kicked":
      toast(`You were removed from ${roomLabel(rooms.get(f.room) || { name: "a room" })}.`);
      forgetRoom(f.room);
      if (current === f.room) location.hash = "";
      refreshRooms().catch(() => {});
      break;
    case "error": {
      const v = f.ref && [...views.values()].find((x) => x.pending.has(f.ref));
      if (v && f.code !== "rate_limited") {
        v.pending.get(f.ref).failed = f.message;
        if (views.get(current) === v) renderPending(v);
      }
      toast(f.code === "slow_mode" ? `Slow mode: wait ${Math.ceil(f.retry_after_ms / 1000)} s.` : f.message);
      break;
    }
    default:
  }
});

// ---- search --------------------------------------------------------------------------------

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("search-input").value.trim();
  if (!q) return;
  try {
    const { messages } = await session.call("GET", `/api/v1/search?q=${encodeURIComponent(q)}&limit=50`);
    $("search-title").textContent = `Search: “${q}” (${messages.length})`;
    $("search-results").replaceChildren(...messages.map((m) => {
      const r = rooms.get(m.room);
      return h("li", {},
        h("a", { href: `#/room/${m.room}` },
          h("span", { class: "where" }, r ? roomLabel(r) : "a room"), " · ",
          h("span", { class: "author" }, displayName(m.user, m.username)), " · ",
          h("time", { datetime: m.created_at }, new Date(m.created_at).toLocaleString())),
        h("p", { class: "body" }, m.body));
    }));
    if (!messages.length) $("search-results").replaceChildren(h("li", { class: "muted" }, "No messages match."));
    $("room-view").hidden = true;
    $("empty").hidden = true;
    $("search-view").hidden = false;
    current = null;
    renderRooms();
    if (location.hash) history.replaceState(null, "", location.pathname);
  } catch (e) { toast(e.message); }
});

$("show-pins").addEventListener("click", () => showPins());
$("close-pins").addEventListener("click", () => { $("pins").hidden = true; });
$("close-thread").addEventListener("click", () => closeThread());
$("thread-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("thread-input");
  const body = input.value.trim();
  if (!body || !thread) return;
  conn.post(thread.room, body, [], thread.root);
  input.value = "";
});

$("search-close").addEventListener("click", () => {
  $("search-view").hidden = true;
  closeRoom();
});

// ---- narrow screens ------------------------------------------------------------------------

$("toggle-rooms").addEventListener("click", () => {
  const open = document.body.classList.toggle("rooms-open");
  $("toggle-rooms").setAttribute("aria-expanded", String(open));
});
$("toggle-members").addEventListener("click", () => {
  const open = document.body.classList.toggle("members-open");
  $("toggle-members").setAttribute("aria-expanded", String(open));
});

$("close-members").addEventListener("click", () => {
  document.body.classList.remove("members-open");
  $("toggle-members").setAttribute("aria-expanded", "false");
});

// ---- start ---------------------------------------------------------------------------------

async function start() {
  // Back from the OpenID provider with a code (or an error): finish signing in.
  const params = new URLSearchParams(location.search);
  if (params.has("code") || params.has("error")) {
    history.replaceState(null, "", location.pathname + location.hash);
    try {
      await session.completeSso(params);
    } catch (e) {
      showAuth();
      $("auth-error").textContent = e.message;
      return;
    }
  }
  if (!session.loggedIn) return showAuth();
  try {
    const me = await session.call("GET", "/api/v1/users/me");
    session.save({ ...session.data, user: me });
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      await session.logout();
      return showAuth();
    }
  }
  const me = session.user;
  names.set(me.id, me.display_name || me.username);
  $("auth").hidden = true;
  $("chat").hidden = false;
  $("logout").hidden = false;
  $("admin-link").hidden = !me.is_admin;
  $("me").textContent = me.display_name || me.username;
  await refreshRooms();
  conn.start();
  route();
}

session.onChange((data, ended) => {
  if (data || conn.state === "banned") return;
  if (ended === "banned") conn.stop("banned", BANNED);
  else conn.stop("signed-out", "Log in again.");
});
start();
