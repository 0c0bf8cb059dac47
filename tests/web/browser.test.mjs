// Browser tests of the web client and the admin panel: the real confab binary (embedded shape),
// Debian's chromium driven by playwright-core, real sockets. Screenshots of the main views go to
// target/screenshots/ at the repository root.
//
// CONFAB_BIN names the binary to test (scripts/test passes the one it just built);
// CONFAB_CHROMIUM another Chromium than Debian's /usr/bin/chromium.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const SHOTS = join(ROOT, "target", "screenshots");
const BIN = process.env.CONFAB_BIN;
const PASSWORD = "correct horse battery";
const TOKEN_TTL = 8; // seconds
// A 2×2 PNG, red and blue.
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP4z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
  "base64",
);

let server; // the running confab process
let port;
let dataDir;
let browser;
const pages = {}; // username -> page
const pageErrors = []; // uncaught errors in any page: each one fails the run
const consoleLines = []; // what the pages logged, printed at the end

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
    s.on("error", reject);
  });
}

const base = () => `http://127.0.0.1:${port}`;

async function startServer() {
  const metrics = await freePort();
  server = spawn(BIN, ["serve"], {
    env: {
      PATH: process.env.PATH,
      CONFAB_LISTEN: `127.0.0.1:${port}`,
      CONFAB_METRICS_LISTEN: `127.0.0.1:${metrics}`,
      CONFAB_DATA_DIR: dataDir,
      CONFAB_JWT_SECRET: "browser-tests-secret-0123456789abcdef",
      CONFAB_ADMINS: "root",
      CONFAB_CONFIG_DIR: join(dataDir, "config"),
      CONFAB_DRAIN_DELAY_SECS: "0",
      // Short-lived access tokens, so every page renews its session many times during the run.
      CONFAB_ACCESS_TOKEN_TTL: String(TOKEN_TTL),
      CONFAB_LOG_FORMAT: "json",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const res = await fetch(`${base()}/readyz`);
      if (res.ok) return;
    } catch (_) { /* not up yet */ }
    if (Date.now() > deadline) throw new Error("confab did not become ready in 20 s");
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopServer(signal = "SIGTERM") {
  const exited = new Promise((resolve) => server.once("exit", resolve));
  server.kill(signal);
  await exited;
}

async function rest(method, path, token, body) {
  const res = await fetch(base() + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${await res.clone().text()}`);
  return res.status === 204 ? null : res.json();
}

async function login(username) {
  const res = await fetch(`${base()}/api/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password: PASSWORD }),
  });
  assert.equal(res.status, 200);
  return (await res.json()).access_token;
}

async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

/** A fresh browser context (its own storage: a different person) with the page open. */
async function person(username, displayName, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("console", (m) => consoleLines.push(`${new Date().toISOString()} ${username} ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => pageErrors.push(`${username}'s page: ${e.message}`));
  page.on("dialog", (d) => d.accept(page.dialogAnswers ? page.dialogAnswers.shift() : undefined));
  page.renewals = { inFlight: 0, lastDone: 0 };
  page.on("request", (r) => { if (isRenewal(r)) page.renewals.inFlight += 1; });
  for (const event of ["requestfinished", "requestfailed"]) {
    page.on(event, (r) => {
      if (!isRenewal(r)) return;
      page.renewals.inFlight -= 1;
      page.renewals.lastDone = Date.now();
    });
  }
  await page.goto(base());
  const form = page.locator("#auth-form");
  await form.getByLabel("Username").fill(username);
  await form.getByLabel("Password").fill(PASSWORD);
  await form.getByLabel(/Display name/).fill(displayName);
  await form.getByRole("button", { name: "Create account" }).click();
  await connected(page);
  pages[username] = page;
  return page;
}

const connected = (page) => page.locator("#conn[data-state=online]").waitFor({ timeout: 15_000 });

const isRenewal = (r) => r.url().endsWith("/api/v1/auth/refresh");

/**
 * Reloads a page between two renewals of its token. A reload while a renewal is in flight
 * loses the new refresh token with the page: the old one is spent, and presenting it again
 * revokes the session, as the protocol requires. With this suite's 8-second tokens a page
 * renews every 6.4 s, so a reload waits, if it must, until just after a renewal (a person's
 * page with real lifetimes renews for a few milliseconds every 14 minutes).
 */
async function reload(page) {
  const r = page.renewals;
  const since = () => Date.now() - r.lastDone;
  if (r.inFlight > 0 || r.lastDone === 0 || since() > (TOKEN_TTL * 1000) / 2) {
    await page.waitForResponse(isRenewal, { timeout: TOKEN_TTL * 2_000 });
  }
  // The renewed tokens are stored when the answer has been read.
  await page.waitForTimeout(300);
  await page.reload();
}

/** The seqs the page shows for the open room, in screen order. */
const shownSeqs = (page) => page.$$eval("#messages li.message:not(.pending)", (lis) => lis.map((li) => Number(li.dataset.seq)));

const messageItem = (page, text) => page.locator("#messages li.message:not(.pending)", { hasText: text });

async function openRoom(page, label) {
  await page.locator(`a.room:has-text("${label}")`).first().click();
  await page.locator("#room-title", { hasText: label }).waitFor();
}

/** Asserts the open room shows exactly seqs from..to, in order, once each. */
async function assertContiguous(page, from, to) {
  await page.waitForFunction(
    ([lo, hi]) => {
      const seqs = [...document.querySelectorAll("#messages li.message:not(.pending)")].map((li) => Number(li.dataset.seq));
      return seqs.length === hi - lo + 1 && seqs[0] === lo && seqs[seqs.length - 1] === hi;
    },
    [from, to],
    { timeout: 15_000 },
  ).catch(() => {});
  const text = await page.locator("#messages").innerText();
  assert.doesNotMatch(text, /\bnull\b|\bundefined\b|\[object /, "no placeholder leaks into the page");
  const seqs = await shownSeqs(page);
  const expected = Array.from({ length: to - from + 1 }, (_, i) => from + i);
  assert.deepEqual(seqs, expected, "the room shows every message once, in seq order");
}

before(async () => {
  assert.ok(BIN, "CONFAB_BIN must name the confab binary");
  dataDir = mkdtempSync(join(tmpdir(), "confab-web-"));
  // One ChatRoom resource, so the admin panel has applied configuration to show.
  mkdirSync(join(dataDir, "config"));
  writeFileSync(join(dataDir, "config", "rooms.yaml"), [
    "apiVersion: confab.dev/v1alpha1",
    "kind: ChatRoom",
    "metadata: {name: announcements, namespace: chat}",
    "spec: {name: announcements, kind: public, topic: News from the team, readOnly: true}",
    "",
  ].join("\n"));
  port = await freePort();
  await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CONFAB_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  // What each page showed at the end, for reading a failure.
  for (const [name, page] of Object.entries(pages)) {
    const state = await page.locator("#conn").textContent().catch(() => "?");
    const toast = await page.locator("#toast").textContent().catch(() => "?");
    console.log(`${name}: connection "${state}", last notice "${toast}"`);
  }
  for (const line of consoleLines.slice(-40)) console.log(line);
  mkdirSync(SHOTS, { recursive: true });
  writeFileSync(join(SHOTS, "console.log"), consoleLines.join("\n") + "\n");
  assert.deepEqual(pageErrors, [], "no page threw an uncaught error");
  if (browser) await browser.close();
  if (server && server.exitCode === null) await stopServer();
  rmSync(dataDir, { recursive: true, force: true });
});

test("pages are served from the binary with their own strict CSP", async () => {
  for (const path of ["/", "/admin", "/assets/app.js", "/assets/style.css"]) {
    const res = await fetch(base() + path);
    assert.equal(res.status, 200, path);
    const csp = res.headers.get("content-security-policy");
    assert.match(csp, /script-src 'self'/, path);
    assert.doesNotMatch(csp, /unsafe-inline|https?:/, path);
    const again = await fetch(base() + path, { headers: { "If-None-Match": res.headers.get("etag") } });
    assert.equal(again.status, 304, `${path} revalidates`);
  }
  assert.equal((await fetch(`${base()}/assets/nope.js`)).status, 404);
  // The page's live connection is the protocol client itself, the file the npm package ships.
  const served = await (await fetch(`${base()}/assets/confab-client.js`)).text();
  const shipped = readFileSync(join(ROOT, "clients", "js", "src", "index.js"), "utf8");
  assert.equal(served, shipped);
  assert.match(await (await fetch(`${base()}/assets/api.js`)).text(), /from "\.\/confab-client\.js"/);
});

test("two people chat in a room and a DM, with typing, presence, read ticks, edits, search and images", async () => {
  const alice = await person("alice", "Alice");
  const bob = await person("bob", "Bob");

  // Alice creates a public room; Bob finds it in the list and joins.
  await alice.getByText("Create a room").click();
  const create = alice.locator("#create-form");
  await create.getByLabel("Name").fill("general");
  await create.getByLabel("Topic").fill("Anything goes");
  await create.getByRole("button", { name: "Create", exact: true }).click();
  await alice.locator("#room-title", { hasText: "#general" }).waitFor();
  await bob.getByRole("button", { name: "Join #general" }).click({ timeout: 10_000 }).catch(async () => {
    await reload(bob); // the list is read when the page connects
    await connected(bob);
    await bob.getByRole("button", { name: "Join #general" }).click();
  });
  await bob.locator("#room-title", { hasText: "#general" }).waitFor();

  // Presence: each sees the other online in the member list.
  await alice.locator('#member-list li.online[data-user="bob"]').waitFor({ timeout: 10_000 });
  await bob.locator('#member-list li.online[data-user="alice"]').waitFor();

  // Typing.
  await bob.locator("#composer-input").pressSequentially("hel");
  await alice.locator("#typing", { hasText: "Bob is typing" }).waitFor();

  // Bob sends; Alice sees it; Alice has the room open, so Bob's tick turns to read.
  await bob.locator("#composer-input").fill("hello alice");
  await bob.locator("#composer-input").press("Enter");
  await messageItem(alice, "hello alice").waitFor();
  await alice.locator("#typing").filter({ hasText: /^$/ }).waitFor();
  await messageItem(bob, "hello alice").locator('[data-ticks="read"]').waitFor({ timeout: 10_000 });

  await alice.locator("#composer-input").fill("hi bob, welcome");
  await alice.locator("#composer-input").press("Enter");
  await messageItem(bob, "hi bob, welcome").waitFor();
  await assertContiguous(bob, 1, 2);

  // Edit and delete reach the other page.
  await messageItem(alice, "hi bob, welcome").getByRole("button", { name: /^Edit/ }).click();
  await alice.getByRole("textbox", { name: "Edit message" }).fill("hi bob, welcome aboard");
  // Enter saves the edit (Shift+Enter would be a new line), as in the message box.
  await alice.getByRole("textbox", { name: "Edit message" }).press("Enter");
  await messageItem(bob, "hi bob, welcome aboard").locator(".edited").waitFor();
  await alice.locator("#composer-input").fill("oops, wrong room");
  await alice.locator("#composer-input").press("Enter");
  await messageItem(bob, "oops, wrong room").waitFor();
  await messageItem(alice, "oops, wrong room").getByRole("button", { name: /^Delete/ }).click();
  await bob.locator('#messages li[data-seq="3"]', { hasText: "This message was deleted." }).waitFor();

  // An image: uploaded by Alice, previewed on Bob's page.
  // Attaching holds the file beside the draft; nothing is sent until Send.
  await alice.locator("#composer-input").fill("the smallest picture");
  await alice.locator("#attach").setInputFiles({ name: "dot.png", mimeType: "image/png", buffer: PNG });
  await alice.locator("#drafts li", { hasText: "dot.png" }).waitFor();
  await bob.waitForTimeout(300);
  assert.equal(await messageItem(bob, "the smallest picture").count(), 0, "not sent before Send");
  assert.equal(await alice.locator("#composer-input").inputValue(), "the smallest picture", "the draft is kept");
  await alice.getByRole("button", { name: "Send", exact: true }).click();
  await alice.locator("#drafts").waitFor({ state: "hidden" });
  const preview = bob.locator('#messages img.preview[alt="dot.png"]');
  await preview.waitFor();
  assert.equal(await messageItem(bob, "the smallest picture").locator("img.preview").count(), 1, "the draft is its caption");
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => {
      const img = document.querySelector('#messages img.preview[alt="dot.png"]');
      return img && img.complete && img.naturalWidth === 2;
    });
  }
  await shot(alice, "chat-room");

  // A DM: Alice starts it by username; Bob, looking at #general, gets an unread badge.
  await alice.getByText("New direct message").click();
  await alice.locator("#dm-user").fill("bob");
  await alice.getByRole("button", { name: "Start" }).click();
  await alice.locator("#room-title", { hasText: "Bob" }).waitFor();
  await alice.locator("#composer-input").fill("psst, a secret");
  await alice.locator("#composer-input").press("Enter");
  await messageItem(alice, "psst, a secret").locator('[data-ticks="delivered"], [data-ticks="read"]').waitFor({ timeout: 10_000 });
  const dm = bob.locator("#dm-list a.room", { hasText: "Alice" });
  await dm.locator(".badge", { hasText: "1" }).waitFor({ timeout: 10_000 });
  await dm.click();
  await messageItem(bob, "psst, a secret").waitFor();
  await messageItem(alice, "psst, a secret").locator('[data-ticks="read"]').waitFor({ timeout: 10_000 });
  await assert.equal(await dm.locator(".badge").count(), 0, "the badge goes once the DM is read");

  // Search across rooms.
  await bob.locator("#search-input").fill("hello");
  await bob.locator("#search-input").press("Enter");
  await bob.locator("#search-results li", { hasText: "hello alice" }).waitFor();
  await shot(bob, "search");

  // A reload keeps the session and shows the history, in order.
  await reload(bob);
  await connected(bob);
  await openRoom(bob, "#general");
  await assertContiguous(bob, 1, 4);
  await messageItem(bob, "hello alice").locator('[data-ticks="read"]').waitFor();

  // Older history loads on scroll, with no gap and no duplicate.
  const token = await login("alice");
  const general = (await rest("GET", "/api/v1/rooms", token)).rooms.find((r) => r.name === "general");
  for (let i = 1; i <= 120; i++) {
    await rest("POST", `/api/v1/rooms/${general.id}/messages`, token, { body: `filler ${i}`, client_id: `filler-${i}` });
  }
  await messageItem(bob, "filler 120").waitFor();
  await reload(bob);
  await connected(bob);
  await openRoom(bob, "#general");
  await messageItem(bob, "filler 120").waitFor();
  assert.ok((await shownSeqs(bob)).length <= 60, "the first page is the newest messages only");
  for (let i = 0; i < 10 && (await shownSeqs(bob))[0] !== 1; i++) {
    await bob.locator("#scroller").evaluate((el) => { el.scrollTop = 0; });
    await bob.waitForTimeout(300);
  }
  await bob.locator("#history-state", { hasText: "beginning of the room" }).waitFor();
  await assertContiguous(bob, 1, 124);

  // A phone-sized screen: the room list opens from a button and a room fills the screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  await small.goto(base());
  const form = small.locator("#auth-form");
  await form.getByLabel("Username").fill("bob");
  await form.getByLabel("Password").fill(PASSWORD);
  await form.getByRole("button", { name: "Log in" }).click();
  await connected(small);
  await small.getByRole("button", { name: "Rooms" }).click();
  await small.locator('a.room:has-text("#general")').click();
  await messageItem(small, "filler 120").waitFor();
  assert.ok(await small.locator("#composer-input").isVisible(), "the composer fits on a phone");
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling on a phone (${overflow}px too wide)`);
  // Every control in the header and the composer is fully on the screen.
  for (const name of ["Rooms", "Log out", "Members", "Leave", "Send"]) {
    const box = await small.getByRole("button", { name, exact: true }).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 390, `${name} fits on a phone: ${JSON.stringify(box)}`);
  }
  await shot(small, "phone");
  await phone.close();
});

test("two people react, pin, reply in a thread and mention each other", async () => {
  const dora = await person("dora", "Dora");
  const eric = await person("eric", "Eric");
  await dora.getByText("Create a room").click();
  await dora.locator("#create-form").getByLabel("Name").fill("crew");
  await dora.locator("#create-form").getByRole("button", { name: "Create", exact: true }).click();
  await dora.locator("#room-title", { hasText: "#crew" }).waitFor();
  await reload(eric);
  await connected(eric);
  await eric.getByRole("button", { name: "Join #crew" }).click();
  await eric.locator("#room-title", { hasText: "#crew" }).waitFor();
  // Eric moves to a room of his own; a mention in #crew reaches him there.
  await eric.getByText("Create a room").click();
  await eric.locator("#create-form").getByLabel("Name").fill("quiet");
  await eric.locator("#create-form").getByRole("button", { name: "Create", exact: true }).click();
  await eric.locator("#room-title", { hasText: "#quiet" }).waitFor();
  await dora.locator("#composer-input").fill("standup in 5, @eric");
  await dora.locator("#composer-input").press("Enter");
  await eric.locator("#toast", { hasText: "Dora mentioned you in #crew" }).waitFor();
  await eric.locator('a.room[data-name="crew"] .badge.mention', { hasText: "@1" }).waitFor();
  await openRoom(eric, "#crew");
  await messageItem(eric, "standup in 5").locator("mark.mention", { hasText: "@eric" }).waitFor();
  await eric.locator('a.room[data-name="crew"] .badge.mention').waitFor({ state: "detached" });

  // Reactions: Eric picks one, Dora adds hers by pressing it; both see the count.
  await eric.getByRole("button", { name: "Add a reaction to message 1" }).click();
  await eric.getByRole("button", { name: "React with 👍" }).click();
  await dora.getByRole("button", { name: "👍 1" }).click();
  await eric.getByRole("button", { name: "👍 2" }).waitFor();
  assert.equal(await dora.getByRole("button", { name: "👍 2" }).getAttribute("aria-pressed"), "true");

  // Pins: the owner pins, the member sees it and the list, and cannot pin himself.
  await dora.getByRole("button", { name: "Pin message 1" }).click();
  await messageItem(eric, "standup in 5").locator(".tag.pin").waitFor();
  assert.equal(await eric.getByRole("button", { name: "Pin message 1" }).count(), 0);
  await eric.getByRole("button", { name: "Pinned" }).click();
  await eric.locator("#pin-list", { hasText: "standup in 5" }).waitFor();

  // A thread: Eric replies; Dora sees the count and opens the thread.
  await eric.getByRole("button", { name: "Reply in thread to message 1" }).click();
  await eric.locator("#thread-input").fill("on my way");
  await eric.locator("#thread-form button[type=submit]").click();
  await eric.locator("#thread-list", { hasText: "on my way" }).waitFor();
  await dora.getByRole("button", { name: "Open the thread of message 1" }).filter({ hasText: "1 reply" }).waitFor();
  await dora.getByRole("button", { name: "Open the thread of message 1" }).click();
  await dora.locator("#thread-list .thread-reply", { hasText: "on my way" }).waitFor();
  await dora.screenshot({ path: join(SHOTS, "threads-and-reactions.png") });
  // Their pages close: the admin test counts the sockets that stay open.
  for (const page of [dora, eric]) await page.context().close();
  delete pages.dora;
  delete pages.eric;
});

test("a page renews its token before it expires, and its socket stays open", async () => {
  const alice = pages.alice;
  await openRoom(alice, "#general");
  await openRoom(pages.bob, "#general");
  const token = () => alice.evaluate(() => JSON.parse(localStorage.getItem("confab.session")).access_token);
  const first = await token();
  await alice.evaluate(() => {
    window.connStates = [];
    new MutationObserver(() => window.connStates.push(document.getElementById("conn").dataset.state))
      .observe(document.getElementById("conn"), { attributes: true, childList: true, subtree: true });
  });
  await alice.waitForTimeout(TOKEN_TTL * 1000 * 1.6);
  assert.notEqual(await token(), first, "the access token was renewed");
  assert.deepEqual(await alice.evaluate(() => window.connStates.filter((s) => s !== "online")), [],
    "the socket was never dropped for an expired token");
  // REST calls work with the renewed token.
  await alice.locator("#composer-input").fill("still here");
  await alice.locator("#composer-input").press("Enter");
  await messageItem(pages.bob, "still here").waitFor();
});

test("a new person's first minutes: names, links, groups, days, the message box and the actions", async () => {
  // Before signing in only the sign-in card shows, not an empty chat under it.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const visitor = await context.newPage();
  await visitor.goto(base());
  await visitor.locator("#auth-form").waitFor();
  assert.equal(await visitor.locator("#chat").isVisible(), false, "the chat layout is hidden under the sign-in card");
  await context.close();

  const erin = await person("erin", "Erin Example");
  const finn = await person("finn", "Finn Friendly");
  await erin.getByText("Create a room").click();
  const create = erin.locator("#create-form");
  await create.getByLabel("Name").fill("firstdays");
  await create.getByRole("button", { name: "Create", exact: true }).click();
  await erin.locator("#room-title", { hasText: "#firstdays" }).waitFor();
  await reload(finn);
  await connected(finn);
  await finn.getByRole("button", { name: "Join #firstdays" }).click();
  await finn.locator("#room-title", { hasText: "#firstdays" }).waitFor();

  // The message box grows with Shift+Enter lines, and Enter sends.
  const box = finn.locator("#composer-input");
  const oneLine = await box.evaluate((e) => e.clientHeight);
  await box.fill("line one");
  for (const line of ["line two", "line three", "line four"]) {
    await box.press("Shift+Enter");
    await box.pressSequentially(line);
  }
  const fourLines = await box.evaluate((e) => e.clientHeight);
  assert.ok(fourLines > oneLine * 2, `the box grew with its lines (${oneLine}px -> ${fourLines}px)`);
  await box.press("Enter");
  await messageItem(erin, "line four").waitFor();
  assert.ok((await box.evaluate((e) => e.clientHeight)) < fourLines, "and shrinks back once sent");

  // Consecutive messages by one person are grouped; a day separator starts the day.
  await box.fill("and a link: https://example.com/docs?page=2, and javascript:alert(1)");
  await box.press("Enter");
  const linked = messageItem(erin, "and a link");
  await linked.waitFor();
  const link = linked.locator("a");
  assert.equal(await link.count(), 1, "only the http(s) address becomes a link");
  assert.equal(await link.getAttribute("href"), "https://example.com/docs?page=2");
  assert.match(await link.getAttribute("rel"), /noopener/);
  assert.equal(await link.getAttribute("target"), "_blank");
  assert.equal(await erin.locator("#messages li.day", { hasText: "Today" }).count(), 1, "one separator for today");
  assert.equal(await linked.evaluate((li) => li.classList.contains("grouped")), true, "a second message in a row is grouped");
  assert.equal(await messageItem(erin, "line four").evaluate((li) => li.classList.contains("grouped")), false);

  // Names are display names, also after a reload (history is drawn before the member list).
  await reload(erin);
  await connected(erin);
  await openRoom(erin, "#firstdays");
  await messageItem(erin, "line four").locator(".author", { hasText: "Finn Friendly" }).waitFor();
  assert.equal(await erin.locator("#messages .author", { hasText: /^finn$/ }).count(), 0, "no username where a name belongs");

  // Others' messages take the width they need, like one's own, not the whole column.
  const widths = await erin.$$eval("#messages li.message", (lis) => lis.map((li) => li.getBoundingClientRect().width));
  const column = await erin.$eval("#messages", (ol) => ol.getBoundingClientRect().width);
  assert.ok(widths.every((w) => w < column * 0.9), `messages narrower than the column: ${widths} of ${column}`);

  // Edit and Delete show on hover and on keyboard focus only.
  await finn.mouse.move(0, 0);
  const own = messageItem(finn, "line four");
  const actions = own.locator(".actions");
  assert.equal(await actions.evaluate((e) => getComputedStyle(e).opacity), "0", "hidden at rest");
  await own.hover();
  await finn.waitForFunction(() => getComputedStyle(document.querySelector("#messages li.message:not(.grouped) .actions")).opacity === "1");
  await finn.mouse.move(0, 0);
  await own.getByRole("button", { name: /^Edit/ }).focus();
  await finn.waitForFunction(() => getComputedStyle(document.activeElement.closest(".actions")).opacity === "1");
  // In the edit box, Shift+Enter is a new line and Enter saves.
  await own.getByRole("button", { name: /^Edit/ }).press("Enter");
  const edit = finn.getByRole("textbox", { name: "Edit message" });
  await edit.press("End");
  await edit.press("Shift+Enter");
  await edit.pressSequentially("line five");
  assert.match(await edit.inputValue(), /line four\nline five$/);
  await edit.press("Enter");
  await messageItem(erin, "line five").locator(".edited").waitFor();
  await shot(erin, "first-minutes");
  for (const name of ["erin", "finn"]) {
    await pages[name].context().close();
    delete pages[name];
  }
});

test("the page recovers from a server restart without losing or repeating a message", async () => {
  const alice = pages.alice;
  const bob = pages.bob;
  await openRoom(alice, "#general");
  await openRoom(bob, "#general");
  const token = await login("alice");
  const general = (await rest("GET", "/api/v1/rooms", token)).rooms.find((r) => r.name === "general");
  const lastBefore = general.last_seq;

  await stopServer("SIGTERM");
  await alice.locator("#conn[data-state=reconnecting]").waitFor();
  await bob.locator("#conn[data-state=reconnecting]").waitFor();
  // Nobody is shown online while the page cannot know it.
  const dots = await bob.$$eval("#member-list .member.online .dot", (els) => els.map((e) => getComputedStyle(e).backgroundColor));
  assert.ok(dots.length > 0 && dots.every((c) => c === "rgba(0, 0, 0, 0)"), `no green dot while reconnecting: ${dots}`);
  // A request while the server is down says so in words, not the browser's "Failed to fetch".
  await bob.locator("#search-input").fill("anything");
  await bob.locator("#search-input").press("Enter");
  await bob.locator("#toast", { hasText: "cannot be reached" }).waitFor();
  assert.doesNotMatch(await bob.locator("body").innerText(), /Failed to fetch|NetworkError/);
  await shot(bob, "reconnecting");
  // Written while the server is down: held by the page and sent once it is back.
  await alice.locator("#composer-input").fill("sent while offline");
  await alice.locator("#composer-input").press("Enter");
  await alice.locator("#messages li.pending", { hasText: "sent while offline" }).waitFor();

  await startServer();
  // Messages committed before the pages are back are replayed by `since`.
  for (let i = 1; i <= 20; i++) {
    await rest("POST", `/api/v1/rooms/${general.id}/messages`, token, { body: `after restart ${i}`, client_id: `restart-${i}` });
  }
  await connected(alice);
  await connected(bob);
  await messageItem(bob, "sent while offline").waitFor({ timeout: 15_000 });
  await messageItem(bob, "after restart 20").waitFor();
  await alice.locator("#messages li.pending").waitFor({ state: "detached" });

  const history = await rest("GET", `/api/v1/rooms/${general.id}/messages?after=${lastBefore}&limit=200`, token);
  assert.equal(history.messages.length, 21, "each message was stored once (the resend was idempotent)");
  assert.equal(history.messages.filter((m) => m.body === "sent while offline").length, 1);
  const last = history.messages.at(-1).seq;
  for (const page of [alice, bob]) {
    const seqs = await shownSeqs(page);
    assert.equal(new Set(seqs).size, seqs.length, "no duplicate on screen");
    assert.equal(seqs.at(-1), last);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => seqs[0] + i), "no gap on screen");
  }
});

test("an admin bans a user from the panel and the user's page shows it was disconnected", async () => {
  const root = await person("root", "Root");
  await root.getByRole("link", { name: "Admin" }).click();
  await root.locator("#users-title").waitFor();
  const bobRow = root.locator('#user-rows tr[data-user="bob"]');
  await bobRow.waitFor();
  await root.locator("#pod-rows tr").first().waitFor();
  const connections = Number(await root.locator("#pod-rows tr td:nth-child(2)").first().textContent());
  // Alice's and Bob's pages hold a socket each (this page left the chat for the panel).
  assert.equal(connections, 2, "the pod reports the open sockets");
  // The applied ChatRoom resource, Ready, and the room it manages.
  await root.locator("#config-source", { hasText: "From" }).waitFor();
  await root.locator("#resource-rows tr", { hasText: "chat/announcements" }).locator("td.ok", { hasText: "yes" }).waitFor();
  await root.locator('#room-rows tr[data-room="announcements"]', { hasText: "chat/announcements" }).waitFor();
  await shot(root, "admin");

  // A ban revokes Bob's refresh tokens and closes his socket with 4003. His page renews its
  // token every few seconds, so a refresh refused with 401 can come before the close; the page
  // must still say he was banned, not that he signed out. The close is held back here until
  // his page has had a refresh refused, which makes that order certain.
  const bob = pages.bob;
  let refused;
  const refreshRefused = new Promise((resolve) => { refused = resolve; });
  bob.on("response", (res) => {
    if (res.url().endsWith("/api/v1/auth/refresh") && res.status() === 401) refused();
  });
  const closes = [];
  await bob.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    server.onClose(async (code, reason) => {
      if (code === 4003) await refreshRefused;
      closes.push(code);
      ws.close({ code, reason });
    });
  });
  await reload(bob);
  await connected(bob);

  root.dialogAnswers = ["spamming", "30"];
  await bobRow.getByRole("button", { name: "Ban" }).click();
  await bobRow.locator(".state", { hasText: "banned" }).waitFor();
  await bob.locator("#conn[data-state=banned]", { hasText: "banned" }).waitFor({ timeout: TOKEN_TTL * 2_000 });
  assert.deepEqual(closes, [4003], "the socket was closed once, for the ban, after the refused refresh");
  assert.ok(await bob.locator("#composer-input").isDisabled(), "a banned user's composer is disabled");
  await bob.locator("#scroller").evaluate((el) => { el.scrollTop = el.scrollHeight; });
  await shot(bob, "banned");

  // A non-admin is turned away from the panel.
  const alice = pages.alice;
  await alice.goto(`${base()}/admin`);
  await alice.locator("#gate", { hasText: "not an administrator" }).waitFor();
  writeFileSync(join(SHOTS, "README.txt"), "Screenshots of confab's web client, written by tests/web/browser.test.mjs.\n");
});
