// Sign-in with the team's OpenID provider, end to end: a real, certified provider (npm
// `oidc-provider`, run here in node), the real confab binary configured for it, and Debian's
// chromium running the web client's authorization-code flow with PKCE, then living through the
// ID token's expiry by refreshing it without dropping its socket.
//
// CONFAB_BIN names the binary to test; CONFAB_CHROMIUM another Chromium than /usr/bin/chromium.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Provider from "oidc-provider";
import { chromium } from "playwright-core";

const BIN = process.env.CONFAB_BIN;
const CLIENT_ID = "confab-web";
const ID_TOKEN_TTL = 15; // seconds: the page refreshes a fifth of it before expiry

let confab, idp, browser, dataDir, port, idpPort;
const pageErrors = [];

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
const issuer = () => `http://127.0.0.1:${idpPort}`;

/** The provider: one public client (PKCE, refresh tokens), any login accepted as its account. */
async function startProvider() {
  const key = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });
  const provider = new Provider(issuer(), {
    clients: [{
      client_id: CLIENT_ID,
      token_endpoint_auth_method: "none",
      redirect_uris: [`${base()}/`],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
    }],
    jwks: { keys: [{ ...key, kid: randomUUID(), alg: "RS256", use: "sig" }] },
    cookies: { keys: [randomUUID()] },
    claims: { openid: ["sub"], profile: ["name", "preferred_username", "groups"] },
    // Profile claims in the ID token itself: that is the token the web client hands confab.
    conformIdTokenClaims: false,
    ttl: { IdToken: ID_TOKEN_TTL, AccessToken: ID_TOKEN_TTL },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: id,
            name: `${id[0].toUpperCase()}${id.slice(1)} Example`,
            groups: id === "olivia" ? ["chat-admins"] : ["staff"],
          };
        },
      };
    },
  });
  await new Promise((resolve) => { idp = provider.listen(idpPort, "127.0.0.1", resolve); });
}

async function startConfab() {
  const metrics = await freePort();
  confab = spawn(BIN, ["serve"], {
    env: {
      PATH: process.env.PATH,
      CONFAB_LISTEN: `127.0.0.1:${port}`,
      CONFAB_METRICS_LISTEN: `127.0.0.1:${metrics}`,
      CONFAB_DATA_DIR: dataDir,
      CONFAB_OIDC_ISSUER: issuer(),
      CONFAB_OIDC_AUDIENCE: CLIENT_ID,
      CONFAB_OIDC_CLIENT_ID: CLIENT_ID,
      CONFAB_OIDC_ADMIN_GROUP: "chat-admins",
      CONFAB_LOG_FORMAT: "json",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await fetch(`${base()}/readyz`)).ok) return;
    } catch (_) { /* not up yet */ }
    if (Date.now() > deadline) throw new Error("confab did not become ready in 20 s");
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  assert.ok(BIN, "CONFAB_BIN must name the confab binary");
  dataDir = mkdtempSync(join(tmpdir(), "confab-sso-"));
  [port, idpPort] = [await freePort(), await freePort()];
  await startProvider();
  await startConfab();
  browser = await chromium.launch({
    executablePath: process.env.CONFAB_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  assert.deepEqual(pageErrors, [], "no page threw an uncaught error");
  if (browser) await browser.close();
  if (confab && confab.exitCode === null) {
    const exited = new Promise((resolve) => confab.once("exit", resolve));
    confab.kill("SIGTERM");
    await exited;
  }
  if (idp) await new Promise((resolve) => idp.close(resolve));
  rmSync(dataDir, { recursive: true, force: true });
});

/** Signs `login` in through the provider's pages; returns the page, connected. */
async function signIn(login) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${login}'s page: ${e.message}`));
  await page.goto(base());
  const button = page.getByRole("button", { name: `Sign in with 127.0.0.1:${idpPort}` });
  await button.click();
  // The provider's own login and consent pages.
  await page.waitForURL(new RegExp(`^${issuer()}/interaction/`));
  await page.fill("input[name=login]", login);
  await page.fill("input[name=password]", "any password");
  await page.click("button[type=submit]");
  const consent = page.getByRole("button", { name: "Continue" });
  await Promise.race([
    consent.click({ timeout: 10_000 }).catch(() => {}),
    page.waitForURL(`${base()}/`, { timeout: 10_000 }),
  ]);
  await page.waitForURL(`${base()}/`);
  await page.locator("#conn[data-state=online]").waitFor({ timeout: 15_000 });
  return page;
}

const stored = (page) => page.evaluate(() => JSON.parse(localStorage.getItem("confab.session")));

test("the sign-in page offers the provider beside confab accounts", async () => {
  const res = await fetch(`${base()}/api/v1/auth/providers`);
  assert.deepEqual(await res.json(), { local: true, oidc: { issuer: issuer(), client_id: CLIENT_ID } });
  const csp = (await fetch(`${base()}/`)).headers.get("content-security-policy");
  assert.match(csp, new RegExp(`connect-src 'self' ${issuer().replace(/\./g, "\\.")}[ ;]`),
    "the page may read the provider's discovery document and token endpoint, nothing else");
});

test("a person signs in with the provider (code + PKCE) and chats as an external account", async () => {
  const page = await signIn("olivia");
  // The code and state are gone from the address bar.
  assert.equal(new URL(page.url()).search, "");
  await page.locator("#me", { hasText: "Olivia Example" }).waitFor();
  // The admin group of the provider made an admin: the admin link shows.
  await page.locator("#admin-link:not([hidden])").waitFor();
  const session = await stored(page);
  assert.equal(session.user.username, "olivia");
  assert.equal(session.user.external, true);
  assert.equal(session.sso.client_id, CLIENT_ID);
  // confab is handed the provider's ID token, never a confab password.
  const claims = JSON.parse(Buffer.from(session.access_token.split(".")[1], "base64url"));
  assert.equal(claims.iss, issuer());
  assert.equal(claims.aud, CLIENT_ID);

  // Chat works: a room made through the page, a message sent and shown.
  await page.getByText("Create a room").click();
  const create = page.locator("#create-form");
  await create.getByLabel("Name").fill("sso-room");
  await create.getByRole("button", { name: "Create", exact: true }).click();
  await page.locator("#room-title", { hasText: "#sso-room" }).waitFor();
  await page.locator("#composer textarea").fill("signed in from the provider");
  await page.locator("#composer textarea").press("Enter");
  await page.locator("#messages li.message:not(.pending)", { hasText: "signed in from the provider" }).waitFor();
  await page.context().close();
});

test("the ID token is refreshed before it expires and the socket lives on", async () => {
  const page = await signIn("peter");
  // Every change of the connection's state from now on.
  await page.evaluate(() => {
    window.connStates = [];
    const el = document.getElementById("conn");
    new MutationObserver(() => window.connStates.push(el.dataset.state))
      .observe(el, { attributes: true, attributeFilter: ["data-state"] });
  });
  const first = await stored(page);
  const firstExp = first.expires_at;
  // Past the first token's expiry: the server would close a socket still holding it (4001).
  await page.waitForFunction((exp) => {
    const s = JSON.parse(localStorage.getItem("confab.session"));
    return s && s.expires_at > exp;
  }, firstExp, { timeout: ID_TOKEN_TTL * 1000 + 10_000 });
  const wait = firstExp - Date.now() + 3_000;
  if (wait > 0) await page.waitForTimeout(wait);
  const now = await stored(page);
  assert.notEqual(now.access_token, first.access_token, "a new ID token");
  assert.equal(now.user.id, first.user.id);
  assert.deepEqual(await page.evaluate(() => window.connStates), [],
    "the socket never dropped: it was handed the new token in an auth frame");
  assert.equal(await page.locator("#conn").getAttribute("data-state"), "online");
  // And the session still works for REST.
  const me = await fetch(`${base()}/api/v1/users/me`, { headers: { Authorization: `Bearer ${now.access_token}` } });
  assert.equal(me.status, 200);
  assert.equal((await me.json()).username, "peter");

  // Logging out returns to the sign-in page with the provider's button.
  await page.locator("#logout").click();
  await page.getByRole("button", { name: `Sign in with 127.0.0.1:${idpPort}` }).waitFor();
  assert.equal(await stored(page), null);
  await page.context().close();
});
