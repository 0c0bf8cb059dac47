// The server's AsyncAPI document, read with the AsyncAPI parser, and a check of frames against
// the payload schema of the message their `type` names.

import { Parser } from "@asyncapi/parser";
import Ajv from "ajv";

/** Parses `/api/v1/asyncapi.json`; returns `{diagnostics, check}`. */
export async function loadFrameSchemas(url) {
  const text = await (await fetch(`${url}/api/v1/asyncapi.json`)).text();
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text);
  const errors = diagnostics.filter((d) => d.severity === 0);
  if (!document) throw new Error(`the AsyncAPI document does not parse: ${JSON.stringify(errors, null, 1)}`);
  const ajv = new Ajv({ strict: false, allErrors: true });
  ajv.addFormat("int64", true);
  ajv.addFormat("uint64", true);
  ajv.addFormat("uint32", true);
  ajv.addFormat("uint", true);
  ajv.addFormat("uuid", /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
  const validators = new Map();
  for (const message of document.allMessages()) {
    const id = message.id();
    validators.set(id, ajv.compile(message.payload().json()));
  }
  /** The schema errors of `frame` sent by `side` ("client" or "server"), or null. */
  function check(side, frame) {
    const validate = validators.get(`${side}.${frame.type}`);
    if (!validate) return `no ${side} frame of type ${JSON.stringify(frame.type)} in the document`;
    if (validate(frame)) return null;
    return `${side}.${frame.type}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(frame)}`;
  }
  return { diagnostics: errors, messages: [...validators.keys()], check };
}

/** Records every frame a client receives and sends, checked against the document. */
export function watch(chat, schemas) {
  const seen = new Set();
  const problems = [];
  chat.on("frame", (f) => {
    seen.add(`server.${f.type}`);
    const p = schemas.check("server", f);
    if (p) problems.push(p);
  });
  const original = chat.sendFrame.bind(chat);
  chat.sendFrame = (frame) => {
    seen.add(`client.${frame.type}`);
    const p = schemas.check("client", frame);
    if (p) problems.push(p);
    return original(frame);
  };
  return { seen, problems };
}
