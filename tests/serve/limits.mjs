// limits.mjs - a server started with --api-key, --parallel 1, --max-queue 1
// and a short --timeout: 401 without the key, 429 with Retry-After when the
// queue is full, 504 (or a stream error event) when a request runs out of
// time.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { base, model, test, done, waitIdle, assertErrorShape } from './lib.mjs';

const key = process.env.CELLM_API_KEY;
const good = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 60000 });
const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong', maxRetries: 0, timeout: 60000 });

await test('api key: 401 without, 200 with', async () => {
  await assert.rejects(bad.models.list(), (e) => e.status === 401);
  await assert.rejects(bad.completions.create({ model, prompt: 'x', max_tokens: 2 }), (e) => e.status === 401);
  const r = await fetch(`${base}/v1/completions`, { method: 'POST', body: '{"prompt":"x"}' });
  assert.equal(r.status, 401);
  assertErrorShape(await r.json());
  const ok = await good.completions.create({ model, prompt: 'x', max_tokens: 2, temperature: 0 });
  assert.ok(ok.choices[0].finish_reason);
  // Health and metrics stay open.
  assert.equal((await fetch(`${base}/health`)).status, 200);
  assert.equal((await fetch(`${base}/metrics`)).status, 200);
});

await test('a full queue answers 429 with Retry-After', async () => {
  const body = JSON.stringify({ model, prompt: 'busy', max_tokens: 3000, temperature: 0 });
  const rs = await Promise.all(Array.from({ length: 5 }, () => fetch(`${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body,
  })));
  const codes = rs.map((r) => r.status).sort();
  const n429 = codes.filter((c) => c === 429).length;
  assert.ok(n429 >= 1, `codes ${codes}`);
  assert.ok(codes.filter((c) => c === 200 || c === 504).length >= 2, `codes ${codes}`);
  for (const r of rs) {
    const j = await r.json();
    if (r.status === 429) {
      assert.ok(Number(r.headers.get('retry-after')) >= 1);
      assertErrorShape(j);
    }
  }
  await waitIdle(20000);
});

await test('a request that runs out of time is 504; a stream gets an error event', async () => {
  await assert.rejects(good.completions.create({ model, prompt: 'long', max_tokens: 16000, temperature: 0, ignore_eos: true }),
    (e) => e.status === 504 && e.error && e.error.code === 'timeout');
  const stream = await good.completions.create({ model, prompt: 'long', max_tokens: 16000, temperature: 0, stream: true, ignore_eos: true });
  await assert.rejects((async () => { for await (const ch of stream) void ch; })(), (e) => /timed out/.test(e.message));
  await waitIdle(5000);
});

done();
