// Run by tests/clients.rs against pods behind nginx: two clients stream messages while the
// test drains the pods one after the other. Prints "streaming" when the stream starts, then
// "result {json}" with what was acked and received, in order.

import WebSocket from "ws";
import { Confab } from "confab-client";

const url = process.env.CONFAB_URL;
const password = "correct horse battery";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function client(name) {
  await Confab.register(url, name, password);
  const chat = new Confab({
    url,
    WebSocket,
    getToken: async () => (await Confab.login(url, name, password)).access_token,
  });
  const closes = [];
  chat.on("close", (c) => closes.push(c.code));
  await chat.connect();
  return { chat, closes };
}

const a = await client(`jsa${process.pid}`);
const b = await client(`jsb${process.pid}`);
const { id } = await a.chat.api("POST", "/api/v1/rooms", { name: `js${process.pid}`, kind: "public" });
const received = [];
b.chat.room(id).on("message", (m) => received.push(m.seq));
await b.chat.room(id).subscribe();

const total = 400;
const acks = [];
console.log("streaming");
for (let i = 0; i < total; i++) {
  acks.push(a.chat.room(id).send(`m${i}`));
  await sleep(8);
}
const acked = (await Promise.all(acks)).map((x) => x.seq);
const deadline = Date.now() + 30_000;
while (received.length < total && Date.now() < deadline) await sleep(20);
console.log(`result ${JSON.stringify({ total, acked, received, closes: [...a.closes, ...b.closes] })}`);
a.chat.close();
b.chat.close();
