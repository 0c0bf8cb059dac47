// Starts the real confab binary (CONFAB_BIN) for the client's tests: SQLite in a temporary
// directory, a free port, and a fixed signing secret so tokens outlive a restart.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const PASSWORD = "correct horse battery";

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
    s.on("error", reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A confab process that can be killed and started again on the same port and data. */
export class Server {
  constructor(env = {}) {
    if (!process.env.CONFAB_BIN) throw new Error("set CONFAB_BIN to the confab binary (cargo build)");
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), "confab-js-"));
    this.proc = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port ??= await freePort();
    this.metrics ??= await freePort();
    this.proc = spawn(process.env.CONFAB_BIN, ["serve"], {
      env: {
        PATH: process.env.PATH,
        CONFAB_LISTEN: `127.0.0.1:${this.port}`,
        CONFAB_METRICS_LISTEN: `127.0.0.1:${this.metrics}`,
        CONFAB_DATA_DIR: this.dir,
        CONFAB_JWT_SECRET: "js-client-tests-secret-0123456789abcdef",
        CONFAB_DRAIN_DELAY_SECS: "0",
        CONFAB_MESSAGES_PER_SECOND: "1000",
        CONFAB_MESSAGE_BURST: "1000",
        CONFAB_AUTH_BURST: "1000",
        CONFAB_LOG_FORMAT: "json",
        RUST_LOG: "warn",
        ...this.env,
      },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.exited = exited;
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const res = await fetch(`${this.url}/readyz`);
        if (res.ok) return this;
      } catch { /* not up yet */ }
      if (Date.now() > deadline) throw new Error("confab did not become ready in 20 s");
      await sleep(50);
    }
  }

  /** Stops the process with `signal` (SIGKILL: a crash; SIGTERM: a drain) and waits for it. */
  async stop(signal = "SIGTERM") {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }

  async remove() {
    await this.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let counter = 0;
/** A new user: `{username, token, getToken}` (getToken signs in again, as a refresh would). */
export async function newUser(url, prefix = "u") {
  const username = `${prefix}${process.pid}x${++counter}`;
  const post = (path, body) => fetch(`${url}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const r = await post("/api/v1/auth/register", { username, password: PASSWORD });
  if (r.status !== 201) throw new Error(`register ${username}: ${r.status} ${await r.text()}`);
  const getToken = async () => {
    const res = await post("/api/v1/auth/login", { username, password: PASSWORD });
    if (!res.ok) throw new Error(`login: ${res.status}`);
    return (await res.json()).access_token;
  };
  return { username, getToken, token: await getToken() };
}
