// abuse.mjs - clients that misbehave: slow senders, dropped connections
// mid-stream and mid-wait, garbage on the socket, chunked bodies over the
// limit, a burst of bad requests. Each must get its documented answer (or
// lose only its own connection) and leave the server serving others, with
// every sequence slot freed.
import assert from 'node:assert/strict';
import net from 'node:net';
import { base, model, test, done, sleep, stats, waitIdle } from './lib.mjs';

const url = new URL(base);
const maxBody = Number(process.env.CELLM_MAX_BODY || 65536);

function connect() {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: url.hostname, port: Number(url.port) }, () => resolve(s));
    s.on('error', reject);
  });
}

// Sends raw bytes (optionally in pieces with pauses) and reads until close
// or until `until` matches; returns the text received.
async function rawExchange(pieces, { pause = 0, until = null, timeout = 20000 } = {}) {
  const s = await connect();
  let got = '';
  const closed = new Promise((resolve) => {
    s.on('data', (d) => { got += d.toString('latin1'); if (until && until.test(got)) resolve(); });
    s.on('close', resolve);
    s.on('error', resolve);
  });
  for (const p of pieces) {
    s.write(p);
    if (pause) await sleep(pause);
  }
  await Promise.race([closed, sleep(timeout)]);
  s.destroy();
  return got;
}

function request(path, body, extra = '') {
  return `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`;
}

async function quickChat() {
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  return r.json();
}

await test('a slow client does not hold up others', async () => {
  const body = JSON.stringify({ model, prompt: 'slow', max_tokens: 3, temperature: 0 });
  const msg = request('/v1/completions', body);
  // Trickle the request over ~2 s in 8 pieces while other requests go through.
  const step = Math.ceil(msg.length / 8);
  const pieces = [];
  for (let i = 0; i < msg.length; i += step) pieces.push(msg.slice(i, i + step));
  const slow = rawExchange(pieces, { pause: 250, until: /"usage"[^}]*}\s*}?\s*$/ });
  const t0 = Date.now();
  await quickChat();
  await quickChat();
  assert.ok(Date.now() - t0 < 1900, 'other requests finished while the slow one was still sending');
  const got = await slow;
  assert.match(got, /^HTTP\/1\.1 200/);
  assert.match(got, /"text_completion"/);
});

// Long generations (LONG tokens) cut short by the client: the slot must be
// freed and generation must stop well before LONG tokens.
const LONG = Number(process.env.CELLM_LONG || 4000);

async function generated() {
  return (await stats()).generated_tokens_total;
}

await test('a stream dropped mid-way frees its slot', async () => {
  const g0 = await generated();
  const ac = new AbortController();
  const r = await fetch(`${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
    body: JSON.stringify({ model, prompt: 'drop me', max_tokens: LONG, temperature: 0, stream: true }),
  });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  const first = await reader.read();
  assert.ok(!first.done);
  ac.abort();
  await reader.cancel().catch(() => {});
  await waitIdle(3000);
  const n = (await generated()) - g0;
  assert.ok(n < LONG, `generated ${n} tokens`);
  await quickChat();
});

await test('a non-streaming client that leaves frees its slot', async () => {
  const g0 = await generated();
  const body = JSON.stringify({ model, prompt: 'leave', max_tokens: LONG, temperature: 0 });
  const s = await connect();
  s.write(request('/v1/completions', body));
  let seen = false;
  for (let i = 0; i < 100 && !seen; i++) {
    seen = (await stats()).active_sequences === 1;
    if (!seen) await sleep(10);
  }
  assert.ok(seen, 'it was running');
  s.destroy();
  await waitIdle(3000);
  const n = (await generated()) - g0;
  assert.ok(n < LONG, `generated ${n} tokens`);
});

await test('garbage and broken HTTP get an error, not a crash', async () => {
  for (const junk of ['GARBAGE\r\n\r\n', 'POST /v1/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n',
    '\x00\x01\x02\xff\xfe\r\n\r\n', 'GET / HTTP/9.9\r\n\r\n',
    'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"pro']) {
    const got = await rawExchange([junk], { timeout: 1500 });
    assert.ok(got === '' || /^HTTP\/1\.[01] [45]\d\d/.test(got), `answer to ${JSON.stringify(junk)}: ${got.slice(0, 80)}`);
  }
  await quickChat();
});

await test('a chunked body over the limit is 413', async () => {
  const chunk = 'x'.repeat(16384);
  const pieces = ['POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'];
  for (let n = 0; n <= maxBody + 16384; n += chunk.length) pieces.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
  pieces.push('0\r\n\r\n');
  const got = await rawExchange(pieces, { until: /\r\n\r\n.*}}/s });
  assert.match(got, /^HTTP\/1\.1 413/);
});

await test('a huge announced body is refused at once', async () => {
  const got = await rawExchange([`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${1 << 30}\r\nExpect: 100-continue\r\n\r\n`],
    { until: /}}/ });
  assert.match(got, /^HTTP\/1\.1 413/);
});

await test('a burst of bad requests', async () => {
  const bodies = ['{', '{"messages":5}', '{"prompt":"x","max_tokens":"many"}', '{"prompt":"x","stop":[1,2]}', '[]'];
  const rs = await Promise.all(Array.from({ length: 60 }, (_, i) => fetch(`${base}/v1/${i % 2 ? 'completions' : 'chat/completions'}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: bodies[i % bodies.length],
  })));
  for (const r of rs) {
    assert.equal(r.status, 400);
    const j = await r.json();
    assert.equal(j.error.type, 'invalid_request_error');
  }
  await quickChat();
});

await test('still healthy', async () => {
  const h = await fetch(`${base}/health`);
  assert.equal(h.status, 200);
  await waitIdle();
});

done();
