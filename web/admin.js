// The admin panel: users (ban, mute), rooms (archive), live pods and the applied configuration.
// It uses the admin REST API with the session of the chat page; non-admins are turned away.

import { Session } from "./api.js";
import { $, h, toast } from "./dom.js";

const session = new Session();

async function act(what, fn) {
  try {
    await fn();
    toast(what);
    await Promise.all([loadUsers(), loadRooms()]);
  } catch (e) { toast(e.message); }
}

/** Asks for a duration in minutes; empty means until lifted. Null when cancelled. */
function askDuration(what) {
  const answer = prompt(`${what}: for how many minutes? (empty: until lifted)`, "");
  if (answer === null) return null;
  const minutes = Number(answer.trim() || "0");
  if (!Number.isFinite(minutes) || minutes < 0) { toast("The duration must be a number of minutes."); return null; }
  return minutes ? { duration_seconds: Math.round(minutes * 60) } : {};
}

async function loadUsers() {
  const q = encodeURIComponent($("user-q").value.trim());
  const { users } = await session.call("GET", `/api/v1/admin/users?q=${q}&limit=200`);
  $("user-rows").replaceChildren(...users.map((u) => {
    const state = [u.banned ? "banned" : null, u.muted ? "muted" : null, u.is_admin ? "admin" : null].filter(Boolean);
    const ban = u.banned
      ? h("button", { onclick: () => act(`${u.username} unbanned`, () => session.call("DELETE", `/api/v1/admin/users/${u.id}/ban`)) }, "Unban")
      : h("button", {
        class: "danger",
        disabled: u.id === session.user.id,
        onclick: () => {
          const reason = prompt(`Ban ${u.username}: reason?`, "");
          if (reason === null) return;
          const body = askDuration(`Ban ${u.username}`);
          if (body === null) return;
          if (reason.trim()) body.reason = reason.trim();
          act(`${u.username} banned`, () => session.call("POST", `/api/v1/admin/users/${u.id}/ban`, body));
        },
      }, "Ban");
    const mute = u.muted
      ? h("button", { onclick: () => act(`${u.username} unmuted`, () => session.call("DELETE", `/api/v1/admin/users/${u.id}/mute`)) }, "Unmute")
      : h("button", {
        onclick: () => {
          const body = askDuration(`Mute ${u.username}`);
          if (body !== null) act(`${u.username} muted`, () => session.call("POST", `/api/v1/admin/users/${u.id}/mute`, body));
        },
      }, "Mute");
    return h("tr", { dataset: { user: u.username } },
      h("td", {}, h("strong", {}, u.username), u.display_name !== u.username ? ` (${u.display_name})` : ""),
      h("td", {}, new Date(u.created_at).toLocaleDateString()),
      h("td", { class: "state" }, state.join(", ") || "active", u.ban_reason ? ` — ${u.ban_reason}` : ""),
      h("td", { class: "actions" }, ban, " ", mute));
  }));
}

async function loadRooms() {
  const { rooms } = await session.call("GET", "/api/v1/admin/rooms");
  $("room-rows").replaceChildren(...rooms.map((r) => h("tr", { dataset: { room: r.name } },
    h("td", {}, r.kind === "direct" ? "direct message" : `#${r.name}`, r.topic ? h("div", { class: "muted" }, r.topic) : null),
    h("td", {}, r.kind),
    h("td", {}, String(r.member_count)),
    h("td", {}, String(r.last_seq)),
    h("td", {}, [r.archived ? "archived" : "open", r.read_only ? "read-only" : null,
      r.slow_mode_seconds ? `slow mode ${r.slow_mode_seconds} s` : null].filter(Boolean).join(", ")),
    h("td", {}, r.managed_by || "—"),
    h("td", {}, r.archived || r.managed_by || r.kind === "direct" ? "" : h("button", {
      onclick: () => confirm(`Archive #${r.name}? It becomes read-only; history is kept.`)
        && act(`#${r.name} archived`, () => session.call("DELETE", `/api/v1/rooms/${r.id}`)),
    }, "Archive")))));
}

function duration(s) {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

async function loadStats() {
  const stats = await session.call("GET", "/api/v1/admin/stats");
  $("totals").textContent = `${stats.users} users · ${stats.rooms} rooms · ${stats.messages} messages · ${stats.pods.length} pod(s)`;
  $("pod-rows").replaceChildren(...stats.pods.map((p) => h("tr", {},
    h("td", {}, h("code", {}, p.id)), h("td", {}, String(p.connections)), h("td", {}, duration(p.uptime_seconds)))));
}

async function loadConfig() {
  const c = await session.call("GET", "/api/v1/admin/config");
  $("config-source").textContent = c.source
    ? `From ${c.source}, loaded ${new Date(c.loaded_at).toLocaleString()}.`
    : "No configuration resources are applied; built-in defaults and command-line settings are in force.";
  const p = c.policy_in_force || {};
  $("policy").replaceChildren(...Object.entries(p).flatMap(([k, v]) => [
    h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, v === null ? "—" : String(v))]));
  $("resource-rows").replaceChildren(...(c.resources || []).map((r) => h("tr", {},
    h("td", {}, r.kind), h("td", {}, `${r.namespace}/${r.name}`), h("td", {}, r.file || "—"),
    h("td", { class: r.ready ? "ok" : "bad" }, r.ready ? "yes" : `no (${r.reason})`), h("td", {}, r.message))));
  if (!(c.resources || []).length) $("resource-rows").replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "None")));
  $("config-errors").replaceChildren(...(c.errors || []).map((e) => h("li", { class: "error" }, `${e.file}: ${e.message}`)));
}

$("user-search").addEventListener("submit", (ev) => { ev.preventDefault(); loadUsers().catch((e) => toast(e.message)); });

async function start() {
  const gate = $("gate");
  if (!session.loggedIn) {
    gate.hidden = false;
    gate.replaceChildren("Log in on the ", h("a", { href: "/" }, "chat page"), " first, as an administrator.");
    return;
  }
  try {
    const me = await session.call("GET", "/api/v1/users/me");
    $("me").textContent = me.username;
    if (!me.is_admin) {
      gate.hidden = false;
      gate.textContent = `${me.username} is not an administrator. Administrators are named by CONFAB_ADMINS.`;
      return;
    }
    $("panel").hidden = false;
    await Promise.all([loadUsers(), loadRooms(), loadStats(), loadConfig()]);
    setInterval(() => { loadStats().catch(() => {}); loadConfig().catch(() => {}); }, 5000);
  } catch (e) {
    gate.hidden = false;
    gate.textContent = e.message;
  }
}

start();
