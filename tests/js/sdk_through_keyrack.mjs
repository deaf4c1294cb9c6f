// The real @google/genai JS SDK pointed at Keyrack (tests/test_js_sdk.py starts Keyrack on the fake upstream and
// runs this): a file uploaded and used in 10 calls, a cache created and used in 10 calls, a batch inline and one
// from an uploaded file run to completion with their results read, and a Live session of several turns over ws://
// (plain calls first, which round robin spreads over every project).
// Prints one JSON document with what each step saw; the Python test asserts on it and on Keyrack's events.
import { readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { GoogleGenAI, Modality, createPartFromUri, createUserContent } from "@google/genai";

const { KEYRACK_URL, KEYRACK_TOKEN, KEYRACK_MODEL, KEYRACK_LIVE_MODEL } = process.env;
const DEADLINE_MS = 60_000; // generous: the test machine is shared
const ai = new GoogleGenAI({ apiKey: KEYRACK_TOKEN, httpOptions: { baseUrl: KEYRACK_URL, apiVersion: "v1beta" } });
const model = KEYRACK_MODEL;

async function tenCalls(contents, config) {
  const texts = [];
  for (let i = 0; i < 10; i++) {
    const r = await ai.models.generateContent({ model, contents, config });
    texts.push(r.text ?? "");
  }
  return texts;
}

async function finished(name) {
  const until = Date.now() + DEADLINE_MS;
  for (;;) {
    const job = await ai.batches.get({ name });
    if (job.state === "JOB_STATE_SUCCEEDED" || job.state === "JOB_STATE_FAILED") return job;
    if (Date.now() > until) throw new Error(`batch ${name} still ${job.state}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function uploadedFile() {
  const body = "keyrack js file body\n".repeat(500);
  const file = await ai.files.upload({ file: new Blob([body], { type: "text/plain" }), config: { mimeType: "text/plain" } });
  const texts = await tenCalls(createUserContent([createPartFromUri(file.uri, file.mimeType), "Summarise the file."]));
  const got = await ai.files.get({ name: file.name });
  return { name: file.name, size: Number(got.sizeBytes), expected: body.length, texts };
}

async function cache() {
  const made = await ai.caches.create({
    model,
    config: { contents: createUserContent("A long shared context. ".repeat(50)), ttl: "300s" },
  });
  const texts = await tenCalls("Question?", { cachedContent: made.name });
  await ai.caches.delete({ name: made.name });
  return { name: made.name, texts };
}

async function inlineBatch() {
  const src = [0, 1, 2].map((i) => ({ contents: [{ role: "user", parts: [{ text: `question ${i}` }] }] }));
  const job = await ai.batches.create({ model, src });
  const done = await finished(job.name);
  const answers = (done.dest?.inlinedResponses ?? []).map(
    (r) => r.response?.candidates?.[0]?.content?.parts?.[0]?.text ?? JSON.stringify(r),
  );
  return { name: job.name, state: done.state, answers };
}

async function fileBatch() {
  const lines = [0, 1, 2, 3].map((i) =>
    JSON.stringify({ key: `r${i}`, request: { contents: [{ parts: [{ text: `q${i}` }] }] } }),
  );
  const src = await ai.files.upload({
    file: new Blob([lines.join("\n")], { type: "application/jsonl" }),
    config: { mimeType: "application/jsonl" },
  });
  const job = await ai.batches.create({ model, src: src.name });
  const done = await finished(job.name);
  const path = join(tmpdir(), `keyrack-js-batch-${process.pid}.jsonl`);
  await ai.files.download({ file: done.dest.fileName, downloadPath: path });
  const rows = (await readFile(path, "utf8")).trim().split("\n").map((line) => JSON.parse(line));
  await rm(path, { force: true });
  return { name: job.name, input: src.name, result: done.dest.fileName, keys: rows.map((r) => r.key).sort() };
}

async function liveSession(prompts) {
  const queue = [];
  let wake = () => {};
  const session = await ai.live.connect({
    model: KEYRACK_LIVE_MODEL,
    config: { responseModalities: [Modality.TEXT] },
    callbacks: {
      onmessage: (m) => {
        queue.push(m);
        wake();
      },
      onerror: (e) => {
        queue.push({ error: String(e?.message ?? e) });
        wake();
      },
      onclose: (e) => {
        process.stderr.write(`live session closed: ${e?.code} ${e?.reason}\n`);
        queue.push({ error: `closed ${e?.code} ${e?.reason}` });
        wake();
      },
    },
  });
  const turns = [];
  for (const text of prompts) {
    session.sendClientContent({ turns: text, turnComplete: true });
    let answer = "";
    let total = 0;
    const until = Date.now() + DEADLINE_MS;
    for (;;) {
      while (!queue.length) {
        if (Date.now() > until) throw new Error("no turnComplete from the Live session");
        await new Promise((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
      const m = queue.shift();
      if (m.error) throw new Error(`live: ${m.error}`);
      for (const part of m.serverContent?.modelTurn?.parts ?? []) answer += part.text ?? "";
      if (m.usageMetadata?.totalTokenCount) total = m.usageMetadata.totalTokenCount;
      if (m.serverContent?.turnComplete) break;
    }
    turns.push({ answer, total });
  }
  session.close();
  return turns;
}

// Each step in turn, named on stderr as it starts (a failure then says where it happened).
const steps = {
  plain: () => tenCalls("hello"), // no resource: these rotate over every project
  file: uploadedFile,
  cache,
  inlineBatch,
  fileBatch,
  live: () => liveSession(["Hello", "And a follow-up", "One more"]),
};
const out = {};
for (const [name, step] of Object.entries(steps)) {
  process.stderr.write(`step ${name}\n`);
  out[name] = await step();
}
process.stdout.write(JSON.stringify(out) + "\n");
