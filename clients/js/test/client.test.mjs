// confab-client against the real server: the README's example as written, restarts and crashes
// in the middle of a stream, token renewal, a slow consumer, and every frame checked against the
// AsyncAPI document.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import WebSocket from "ws";

import { Confab, ConfabError } from "confab-client";
import { Server, newUser, sleep } from "./server.mjs";
import { loadFrameSchemas, watch } from "./frames.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const server = new Server({ CONFAB_ACCESS_TOKEN_TTL: "6" });
let schemas;

before(async () => {
  await server.start();
  schemas = await loadFrameSchemas(server.url);
});
after(() => server.remove());

async function eventually(what, check, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** A connected client of a new user, its frames checked against the AsyncAPI document. */
async function client(prefix) {
  const user = await newUser(server.url, prefix);
  const chat = new Confab({ url: server.url, getToken: user.getToken, WebSocket });
  const frames = watch(chat, schemas);
  await chat.connect();
  return { chat, user, frames };
}

test("the AsyncAPI document parses and names every frame", () => {
  assert.deepEqual(schemas.diagnostics, []);
  for (const name of ["client.subscribe", "client.message", "server.hello", "server.message", "server.ack", "server.error"]) {
    assert.ok(schemas.messages.includes(name), `${name} in ${schemas.messages}`);
  }
  // The check is not vacuous: a frame missing a required field or of an unknown type fails.
  assert.match(schemas.check("server", { type: "ack", seq: 1 }), /required/);
  assert.match(schemas.check("server", { type: "dance" }), /no server frame/);
  assert.match(schemas.check("client", { type: "subscribe", room: "r", since: "one" }), /since/);
});

test("the README's example runs as written", async () => {
  const readme = readFileSync(join(HERE, "..", "README.md"), "utf8");
  const code = /## Try it[\s\S]*?```js\n([\s\S]*?)```/.exec(readme)[1];
  const file = join(HERE, "readme-example.tmp.mjs");
  writeFileSync(file, code);
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [file], {
      env: { ...process.env, CONFAB_URL: server.url },
      timeout: 30_000,
    });
    assert.match(stdout, /^acked 1$/m, stdout);
  } finally {
    rmSync(file, { force: true });
  }
});

test("every kind of server frame matches its schema", async () => {
  const a = await client("fa");
  const b = await client("fb");
  const { id } = await a.chat.api("POST", "/api/v1/rooms", { name: `frames${process.pid}`, kind: "public" });
  await b.chat.api("POST", `/api/v1/rooms/${id}/join`);
  const ra = a.chat.room(id);
  const rb = b.chat.room(id);
  const typing = new Promise((r) => rb.on("typing", r));
  await ra.subscribe();
  await rb.subscribe();
  ra.typing(true);
  await typing;
  const first = await ra.send("hello @" + b.user.username);
  await ra.send("a reply", { thread: first.seq });
  ra.react(first.seq, "👍");
  await ra.edit(first.seq, "hello again");
  rb.read(first.seq);
  rb.delivered(first.seq);
  await a.chat.api("PATCH", `/api/v1/rooms/${id}`, { topic: "frames" });
  // A mention in a room B is not subscribed to on this socket: a notification.
  rb.unsubscribe();
  await eventually("unsubscribed", () => b.frames.seen.has("server.unsubscribed"));
  await ra.send("ping @" + b.user.username);
  await ra.delete(first.seq);
  a.chat.sendFrame({ type: "ping" });
  // An error frame: a message to a room that does not exist, answered with its client_id.
  await assert.rejects(a.chat.room("00000000-0000-7000-8000-000000000000").send("nowhere"), (e) => {
    assert.ok(e instanceof ConfabError);
    assert.ok(["not_found", "forbidden"].includes(e.code), e.code);
    return true;
  });
  // A DM opened by A reaches B as room_joined; B is kicked from a private room.
  await a.chat.api("POST", "/api/v1/dms", { user_id: b.chat.user.id });
  const priv = await a.chat.api("POST", "/api/v1/rooms", { name: `kick${process.pid}`, kind: "private" });
  await a.chat.api("POST", `/api/v1/rooms/${priv.id}/members`, { user_id: b.chat.user.id });
  await b.chat.room(priv.id).subscribe();
  await a.chat.api("DELETE", `/api/v1/rooms/${priv.id}/members/${b.chat.user.id}`);
  const want = [
    "server.hello", "server.subscribed", "server.unsubscribed", "server.message", "server.ack",
    "server.message_edited", "server.message_deleted", "server.message_updated", "server.reaction",
    "server.notification", "server.typing", "server.receipt", "server.presence",
    "server.room_updated", "server.room_joined", "server.kicked", "server.error", "server.pong",
  ];
  await eventually("every frame type", () => want.every((t) => a.frames.seen.has(t) || b.frames.seen.has(t)), 10_000)
    .catch(() => assert.fail(`not seen: ${want.filter((t) => !a.frames.seen.has(t) && !b.frames.seen.has(t))}`));
  assert.deepEqual([...a.frames.problems, ...b.frames.problems], []);
  a.chat.close();
  b.chat.close();
});

for (const signal of ["SIGKILL", "SIGTERM"]) {
  test(`a ${signal === "SIGKILL" ? "crash (kill -9)" : "drain (SIGTERM)"} and restart mid-stream lose and repeat nothing`, async () => {
    const a = await client("sa");
    const b = await client("sb");
    const { id } = await a.chat.api("POST", "/api/v1/rooms", { name: `stream${signal.toLowerCase()}${process.pid}`, kind: "public" });
    const ra = a.chat.room(id);
    const rb = b.chat.room(id);
    const got = [];
    rb.on("message", (m) => got.push(m.seq));
    await rb.subscribe();
    const states = [];
    b.chat.on("state", (s) => states.push(s));
    const total = 300;
    const acks = [];
    let restarted;
    for (let i = 0; i < total; i++) {
      acks.push(ra.send(`m${i}`, { clientId: `c${signal}${i}` }));
      if (i === 100) {
        restarted = (async () => {
          await server.stop(signal);
          await sleep(300);
          await server.start();
        })();
      }
      await sleep(i > 100 && i < 140 ? 20 : 2);
    }
    await restarted;
    const acked = await Promise.all(acks);
    const seqs = acked.map((x) => x.seq).sort((x, y) => x - y);
    assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1), "each send acked once, seqs 1..N");
    await eventually("every message at the receiver", () => got.length >= total);
    assert.deepEqual(got, Array.from({ length: total }, (_, i) => i + 1), "received once each, in order");
    assert.ok(states.includes("reconnecting"), `the receiver noticed: ${states}`);
    // The store holds each once.
    const page = await a.chat.api("GET", `/api/v1/rooms/${id}/messages?before=${total + 1}&limit=200`);
    const bodies = page.messages.map((m) => m.body);
    assert.equal(new Set(bodies).size, bodies.length);
    assert.deepEqual([...a.frames.problems, ...b.frames.problems], []);
    a.chat.close();
    b.chat.close();
  });
}

test("a token is renewed before it expires: the socket outlives several token lifetimes", async () => {
  const a = await client("ta");
  const closes = [];
  a.chat.on("close", (c) => closes.push(c.code));
  const { id } = await a.chat.api("POST", "/api/v1/rooms", { name: `tokens${process.pid}`, kind: "public" });
  const room = a.chat.room(id);
  await room.subscribe();
  // The server's tokens live 6 s; keep sending for 14 s on one socket.
  for (let i = 0; i < 14; i++) {
    await room.send(`t${i}`);
    await sleep(1000);
  }
  assert.deepEqual(closes, [], "no socket closed (4001 would mean the token ran out)");
  assert.ok(a.frames.seen.has("client.auth"), "the new token went over the open socket");
  a.chat.close();
});

test("a slow consumer of room.messages() holds a bounded buffer and still gets every message in order", async () => {
  const a = await client("wa");
  const b = await client("wb");
  const { id } = await a.chat.api("POST", "/api/v1/rooms", { name: `slow${process.pid}`, kind: "public" });
  const rb = b.chat.room(id);
  await rb.subscribe();
  const iterator = rb.messages({ buffer: 10 });
  const sends = [];
  for (let i = 0; i < 60; i++) sends.push(a.chat.room(id).send(`s${i}`));
  await Promise.all(sends);
  const seen = [];
  for await (const m of iterator) {
    seen.push(m.seq);
    await sleep(5); // slower than the room
    if (seen.length === 60) break;
  }
  assert.deepEqual(seen, Array.from({ length: 60 }, (_, i) => i + 1));
  a.chat.close();
  b.chat.close();
});

test("bad input: a send too large for a frame is refused before it is sent, and the socket stays", async () => {
  const a = await client("ba");
  const { id } = await a.chat.api("POST", "/api/v1/rooms", { name: `big${process.pid}`, kind: "public" });
  const room = a.chat.room(id);
  await room.subscribe();
  await assert.rejects(room.send("x".repeat(70_000)), /64 KiB/);
  const ack = await room.send("still here");
  assert.equal(ack.seq, 1);
  assert.throws(() => new Confab({ url: server.url }), /token/);
  a.chat.close();
});
