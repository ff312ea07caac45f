// lib.mjs - shared bits of the serve tests: the server address from the
// environment, a tiny test runner that counts failures, small helpers.
import assert from 'node:assert/strict';

export const base = process.env.CELLM_URL;       // http://127.0.0.1:PORT
export const model = process.env.CELLM_MODEL;    // served model id
if (!base || !model) {
  console.error('CELLM_URL and CELLM_MODEL must be set');
  process.exit(2);
}

let failed = 0, passed = 0;
export async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

export function done() {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function stats() {
  const r = await fetch(`${base}/stats`);
  assert.equal(r.status, 200);
  return r.json();
}

// Waits until no request holds a sequence slot (or fails after ms).
export async function waitIdle(ms = 5000) {
  const t0 = Date.now();
  for (;;) {
    const s = await stats();
    if (s.active_sequences === 0 && s.queue_depth === 0) return s;
    if (Date.now() - t0 > ms) throw new Error(`still busy after ${ms} ms: ${JSON.stringify(s)}`);
    await sleep(50);
  }
}

// An OpenAI error body: {"error":{"message","type","param","code"}}.
export function assertErrorShape(body) {
  assert.ok(body && typeof body.error === 'object', `no error object in ${JSON.stringify(body)}`);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
  assert.equal(typeof body.error.type, 'string');
  assert.ok('param' in body.error && 'code' in body.error);
}
