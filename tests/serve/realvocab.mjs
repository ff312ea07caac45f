// realvocab.mjs - a synthetic model carrying a real vocabulary and chat
// template (Qwen3's, imported from ../shared/testdata): multi-byte text
// assembled from byte-level tokens, streamed and not; special tokens in a
// completion prompt; logprob bytes that add up to the text.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { base, model, test, done } from './lib.mjs';

const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0, timeout: 120000 });
const msgs = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'héllo 世界 👋' }];

await test('chat with the model template: streamed equals not streamed', async () => {
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({ model, messages: msgs, max_tokens: 24, temperature: 0.9, seed });
    const s = await client.chat.completions.create({ model, messages: msgs, max_tokens: 24, temperature: 0.9, seed, stream: true });
    let text = '';
    for await (const ch of s) if (ch.choices.length && ch.choices[0].delta.content) text += ch.choices[0].delta.content;
    assert.equal(text, r.choices[0].message.content);
    assert.ok(r.usage.prompt_tokens > 10);
  }
});

await test('special tokens in a completion prompt are single tokens', async () => {
  const want = Number(process.env.SPECIAL_PROMPT_TOKENS);
  const r = await client.completions.create({ model, prompt: '<|im_start|>user\nhi<|im_end|>', max_tokens: 2, temperature: 0 });
  assert.equal(r.usage.prompt_tokens, want);
});

await test('logprob bytes add up to the text', async () => {
  let checked = 0;
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    // The chat shape carries each token's raw bytes: they must rebuild the
    // text exactly whenever the whole is valid UTF-8.
    const ch = await client.chat.completions.create({ model, messages: msgs, max_tokens: 12, temperature: 1, seed, logprobs: true });
    if (ch.choices[0].finish_reason !== 'length') continue;
    const raw = Buffer.concat(ch.choices[0].logprobs.content.map((e) => Buffer.from(e.bytes)));
    let valid = true;
    try { new TextDecoder('utf-8', { fatal: true }).decode(raw); } catch { valid = false; }
    if (valid) {
      assert.equal(raw.toString(), ch.choices[0].message.content);
      checked++;
    }
  }
  assert.ok(checked >= 1, 'at least one sample had valid UTF-8 throughout');
});

done();
