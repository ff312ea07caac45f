// openai.mjs - cellm serve through the official OpenAI SDK: chat and
// completions, streaming and not, logprobs, stop strings, seeds, usage and
// the errors the SDK surfaces. Greedy decoding (temperature 0) makes the
// output of the synthetic model deterministic, so streamed and non-streamed
// answers must agree byte for byte.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { base, model, test, done, waitIdle, assertErrorShape } from './lib.mjs';

const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.CELLM_API_KEY || 'none', maxRetries: 0, timeout: 120000 });
const msgs = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colours.' },
];

async function collectChat(params) {
  const stream = await client.chat.completions.create({ ...params, stream: true });
  let text = '', finish = null, role = null, usage = null, chunks = 0, ids = new Set(), logprobs = [];
  for await (const ch of stream) {
    chunks++;
    ids.add(ch.id);
    assert.equal(ch.object, 'chat.completion.chunk');
    assert.equal(ch.model, model);
    if (ch.usage) usage = ch.usage;
    if (!ch.choices.length) continue;
    const c = ch.choices[0];
    assert.equal(c.index, 0);
    if (c.delta.role) role = c.delta.role;
    if (c.delta.content) text += c.delta.content;
    if (c.logprobs && c.logprobs.content) logprobs.push(...c.logprobs.content);
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(ids.size, 1, 'one id for the whole stream');
  return { text, finish, role, usage, chunks, logprobs };
}

async function collectCompletion(params) {
  const stream = await client.completions.create({ ...params, stream: true });
  let text = '', finish = null, usage = null;
  for await (const ch of stream) {
    assert.equal(ch.object, 'text_completion');
    if (ch.usage) usage = ch.usage;
    if (!ch.choices.length) continue;
    text += ch.choices[0].text;
    if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
  }
  return { text, finish, usage };
}

await test('models list', async () => {
  const list = await client.models.list();
  const ids = list.data.map((m) => m.id);
  assert.deepEqual(ids, [model]);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
  assert.equal(one.object, 'model');
});

let greedyChat;
await test('chat, not streamed', async () => {
  const r = await client.chat.completions.create({ model, messages: msgs, max_tokens: 12, temperature: 0 });
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, model);
  assert.ok(Number.isInteger(r.created) && r.created > 1.6e9);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.ok(['stop', 'length'].includes(c.finish_reason));
  assert.equal(c.logprobs, null);
  assert.ok(r.usage.prompt_tokens > 5, 'the chat template adds tokens around the messages');
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  greedyChat = r;
});

await test('chat, streamed, equals the non-streamed answer', async () => {
  const s = await collectChat({ model, messages: msgs, max_tokens: 12, temperature: 0, stream_options: { include_usage: true } });
  assert.equal(s.role, 'assistant');
  assert.equal(s.text, greedyChat.choices[0].message.content);
  assert.equal(s.finish, greedyChat.choices[0].finish_reason);
  assert.ok(s.usage, 'include_usage gives a usage chunk');
  assert.deepEqual(s.usage, greedyChat.usage);
  assert.ok(s.chunks >= 3);
});

await test('max_completion_tokens', async () => {
  const r = await client.chat.completions.create({ model, messages: msgs, max_completion_tokens: 3, temperature: 0 });
  assert.ok(r.usage.completion_tokens <= 3);
  if (r.choices[0].finish_reason === 'length') assert.equal(r.usage.completion_tokens, 3);
});

let greedyText;
await test('completions, streamed and not', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  const s = await collectCompletion({ model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0, stream_options: { include_usage: true } });
  assert.equal(s.text, r.choices[0].text);
  assert.equal(s.finish, r.choices[0].finish_reason);
  assert.deepEqual(s.usage, r.usage);
  greedyText = r.choices[0].text;
});

await test('completions from token ids; no model field', async () => {
  const r = await fetch(`${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: [1, 2, 3, 4], max_tokens: 4, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  const j = await r.json();
  assert.equal(j.usage.prompt_tokens, 4);
  assert.equal(j.model, model);
});

await test('seed makes sampling reproducible', async () => {
  const ask = (seed) => client.completions.create({ model, prompt: 'The weather', max_tokens: 24, temperature: 1.0, seed })
    .then((r) => r.choices[0].text);
  const a = await ask(1234), b = await ask(1234);
  assert.equal(a, b);
  const others = await Promise.all([ask(1), ask(2), ask(3)]);
  assert.ok(others.some((t) => t !== a), 'different seeds give different samples');
  // Streamed with the same seed: the same text.
  const s = await collectCompletion({ model, prompt: 'The weather', max_tokens: 24, temperature: 1.0, seed: 1234 });
  assert.equal(s.text, a);
});

await test('chat logprobs with top_logprobs', async () => {
  const r = await client.chat.completions.create({ model, messages: msgs, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
  const lp = r.choices[0].logprobs;
  assert.ok(lp && Array.isArray(lp.content));
  const n = r.usage.completion_tokens;
  // The end-of-generation token, if any, has no entry.
  assert.ok(lp.content.length === n || (r.choices[0].finish_reason === 'stop' && lp.content.length === n - 1));
  let joined = '';
  for (const e of lp.content) {
    assert.equal(typeof e.token, 'string');
    assert.ok(e.logprob <= 0);
    assert.ok(Array.isArray(e.bytes));
    assert.equal(e.top_logprobs.length, 3);
    for (let k = 1; k < 3; k++) assert.ok(e.top_logprobs[k - 1].logprob >= e.top_logprobs[k].logprob);
    // Greedy: the chosen token is the most likely one.
    assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-5);
    assert.ok(e.top_logprobs.reduce((s, t) => s + Math.exp(t.logprob), 0) <= 1 + 1e-5);
    joined += Buffer.from(e.bytes).toString('latin1');
  }
  // Streamed logprobs agree with the non-streamed ones.
  const s = await collectChat({ model, messages: msgs, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
  assert.deepEqual(s.logprobs.map((e) => e.token), lp.content.map((e) => e.token));
  assert.ok(joined.length >= 0);
});

await test('completions logprobs', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.ok(lp);
  const n = lp.tokens.length;
  assert.ok(n >= 1);
  assert.equal(lp.token_logprobs.length, n);
  assert.equal(lp.top_logprobs.length, n);
  assert.equal(lp.text_offset.length, n);
  for (let i = 0; i < n; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    assert.ok(Object.keys(lp.top_logprobs[i]).length >= 1);
    if (i) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  }
});

await test('stop strings, streamed and not', async () => {
  // Find a printable ASCII token in the greedy continuation to use as a stop string.
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 48, temperature: 0, logprobs: 0 });
  const full = r.choices[0].text;
  const toks = r.choices[0].logprobs.tokens;
  let stop = null;
  for (let i = 1; i < toks.length && !stop; i++) if (/^[\x21-\x7e]+$/.test(toks[i])) stop = toks[i];
  assert.ok(stop, `no ASCII token to stop on in ${JSON.stringify(toks)}`);
  const want = full.slice(0, full.indexOf(stop));
  const a = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 48, temperature: 0, stop: [stop, 'never-appears'] });
  assert.equal(a.choices[0].text, want);
  assert.equal(a.choices[0].finish_reason, 'stop');
  const b = await collectCompletion({ model, prompt: 'Once upon a time', max_tokens: 48, temperature: 0, stop });
  assert.equal(b.text, want);
  assert.equal(b.finish, 'stop');
  assert.ok(!b.text.includes(stop));
});

await test('presence and frequency penalties change greedy output or keep it valid', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0, presence_penalty: 2, frequency_penalty: 2 });
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(r.usage.completion_tokens >= 1);
});

// ---- errors the SDK surfaces ----

async function expectApiError(promise, status, code) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `not an APIError: ${e}`);
    assert.equal(e.status, status, e.message);
    if (code !== undefined) assert.equal(e.code, code);
    assert.ok(e.error && typeof e.error.message === 'string');
    return e;
  }
  assert.fail(`expected HTTP ${status}`);
}

await test('unknown model is 404', async () => {
  await expectApiError(client.chat.completions.create({ model: 'no-such-model', messages: msgs }), 404, 'model_not_found');
  await expectApiError(client.models.retrieve('no-such-model'), 404, 'model_not_found');
});

await test('wrong types are 400 naming the parameter', async () => {
  const e = await expectApiError(client.chat.completions.create({ model, messages: msgs, temperature: 'hot' }), 400);
  assert.equal(e.param, 'temperature');
  const e2 = await expectApiError(client.completions.create({ model, prompt: { a: 1 } }), 400);
  assert.equal(e2.param, 'prompt');
  await expectApiError(client.chat.completions.create({ model, messages: 'hello' }), 400);
  await expectApiError(client.chat.completions.create({ model, messages: msgs, max_tokens: -1 }), 400);
});

await test('context overflow is 400 context_length_exceeded', async () => {
  await expectApiError(client.chat.completions.create({ model, messages: msgs, max_tokens: 1000000 }), 400, 'context_length_exceeded');
  await expectApiError(client.completions.create({ model, prompt: 'word '.repeat(12000), max_tokens: 4 }), 400, 'context_length_exceeded');
});

await test('streaming errors arrive before the stream', async () => {
  await expectApiError(client.chat.completions.create({ model: 'nope', messages: msgs, stream: true }), 404);
});

// ---- raw HTTP ----

async function raw(path, init) {
  const r = await fetch(`${base}${path}`, init);
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, text, body };
}
const post = (path, body, headers = {}) => raw(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });

await test('malformed JSON is 400 in the error shape', async () => {
  for (const body of ['{', '{"messages": [}', 'null', '[]', '"text"', '', '{"messages":[{"role":"user","content":"hi"}],}']) {
    const r = await post('/v1/chat/completions', body);
    assert.equal(r.status, 400, `body ${JSON.stringify(body)}: ${r.text}`);
    assertErrorShape(r.body);
    assert.equal(r.body.error.type, 'invalid_request_error');
  }
});

await test('oversized body is 413', async () => {
  const big = JSON.stringify({ model, prompt: 'x'.repeat(Number(process.env.CELLM_MAX_BODY || 65536) + 10) });
  const r = await post('/v1/completions', big);
  assert.equal(r.status, 413);
  assertErrorShape(r.body);
});

await test('unknown path 404, wrong method 405', async () => {
  const a = await raw('/v1/nothing');
  assert.equal(a.status, 404);
  assertErrorShape(a.body);
  const b = await post('/v1/embeddings', '{}');
  assert.equal(b.status, 404);
  const c = await raw('/v1/chat/completions', { method: 'PUT', body: '{}' });
  assert.equal(c.status, 405);
  assertErrorShape(c.body);
});

await test('health, metrics, stats, dashboard', async () => {
  const h = await raw('/health');
  assert.equal(h.status, 200);
  assert.equal(h.body.status, 'ok');
  const m = await raw('/metrics');
  assert.equal(m.status, 200);
  assert.match(m.headers.get('content-type'), /^text\/plain/);
  for (const name of ['cellm_requests_total{code="200"}', 'cellm_requests_total{code="400"}', 'cellm_generated_tokens_total',
    'cellm_prompt_tokens_total', 'cellm_time_to_first_token_seconds_bucket', 'cellm_inter_token_latency_seconds_bucket',
    'cellm_queue_depth', 'cellm_active_sequences', 'cellm_kv_cache_used_tokens'])
    assert.ok(m.text.includes(name), `metrics lack ${name}`);
  const ok = Number(/cellm_requests_total\{code="200"\} (\d+)/.exec(m.text)[1]);
  assert.ok(ok >= 10, `200s counted: ${ok}`);
  const s = await raw('/stats');
  assert.equal(s.body.model, model);
  assert.ok(s.body.generated_tokens_total > 0);
  const d = await raw('/');
  assert.equal(d.status, 200);
  assert.match(d.headers.get('content-type'), /^text\/html/);
  assert.ok(d.text.includes('/stats'));
  assert.ok(!/(src|href)\s*=\s*["']?(https?:)?\/\//i.test(d.text), 'the dashboard loads nothing from elsewhere');
});

await test('nothing left running', async () => {
  await waitIdle();
});

done();
