// load.mjs - 32 concurrent streaming clients, several requests each, through
// the OpenAI SDK. Every request must stream to a finish_reason with text
// and usage; zero failures allowed. Prints aggregate numbers.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { base, model, test, done, waitIdle } from './lib.mjs';

const clients = Number(process.env.LOAD_CLIENTS || 32);
const perClient = Number(process.env.LOAD_REQUESTS || 4);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0, timeout: 240000 });

await test(`${clients} streaming clients x ${perClient} requests`, async () => {
  let ok = 0, tokens = 0;
  const failures = [];
  const t0 = Date.now();
  async function one(c, i) {
    const chat = (c + i) % 2 === 0;
    const maxTokens = 8 + ((c * 7 + i * 3) % 25);
    const common = { model, max_tokens: maxTokens, temperature: 0.7, seed: c * 100 + i, stream: true, stream_options: { include_usage: true } };
    const stream = chat
      ? await client.chat.completions.create({ ...common, messages: [{ role: 'user', content: `client ${c} request ${i}: tell me something` }] })
      : await client.completions.create({ ...common, prompt: `client ${c} request ${i}:` });
    let finish = null, usage = null, chunks = 0;
    for await (const ch of stream) {
      chunks++;
      if (ch.usage) usage = ch.usage;
      if (ch.choices.length && ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
    }
    assert.ok(['stop', 'length'].includes(finish), `finish_reason ${finish}`);
    assert.ok(usage && usage.completion_tokens >= 1 && usage.completion_tokens <= maxTokens, JSON.stringify(usage));
    if (finish === 'length') assert.equal(usage.completion_tokens, maxTokens);
    tokens += usage.completion_tokens;
    ok++;
  }
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = 0; i < perClient; i++) {
      try { await one(c, i); } catch (e) { failures.push(`client ${c} request ${i}: ${e && e.message}`); }
    }
  }));
  const s = (Date.now() - t0) / 1000;
  console.log(`  ${ok} requests, ${tokens} tokens in ${s.toFixed(1)} s: ${(tokens / s).toFixed(1)} tokens/s aggregate`);
  assert.deepEqual(failures, []);
  assert.equal(ok, clients * perClient);
});

await test('all slots free afterwards', async () => {
  await waitIdle();
});

done();
