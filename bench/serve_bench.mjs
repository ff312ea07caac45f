// serve_bench.mjs - aggregate decode throughput of one `cellm serve` at
// several concurrency levels. For each level C, C streaming completions run
// at once (max_tokens each, distinct prompts, greedy); prints one JSON line
// per level:
//   decode_tok_s: tokens after each request's first / (last token of any -
//                 first token of any), i.e. the steady batched decode rate;
//   wall_tok_s:   all completion tokens / wall time including prompts.
// Usage: node serve_bench.mjs URL [levels=1,4,8,16] [max_tokens=64] [rounds=1]
const [url, levelsArg = '1,4,8,16', maxArg = '64', roundsArg = '1'] = process.argv.slice(2);
if (!url) {
  console.error('usage: node serve_bench.mjs http://127.0.0.1:PORT [levels] [max_tokens] [rounds]');
  process.exit(2);
}
const levels = levelsArg.split(',').map(Number);
const maxTokens = Number(maxArg), rounds = Number(roundsArg);

async function one(i) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: `Benchmark request ${i}: a story about`, max_tokens: maxTokens, temperature: 0,
      stream: true, stream_options: { include_usage: true } }),
  });
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const dec = new TextDecoder();
  let buf = '', first = null, last = null, n = 0;
  for await (const chunk of r.body) {
    buf += dec.decode(chunk, { stream: true });
    let k;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6));
      if (j.usage) n = j.usage.completion_tokens;
      else if (j.choices.length && j.choices[0].logprobs === null) {
        const now = performance.now();
        if (first === null) first = now;
        last = now;
      }
    }
  }
  return { t0, first, last, n };
}

for (const c of levels) {
  for (let round = 0; round < rounds; round++) {
    const t0 = performance.now();
    const rs = await Promise.all(Array.from({ length: c }, (_, i) => one(i + c * 1000 + round * 100)));
    const t1 = performance.now();
    const total = rs.reduce((s, r) => s + r.n, 0);
    const firsts = Math.min(...rs.map((r) => r.first)), lasts = Math.max(...rs.map((r) => r.last));
    const decodeTok = rs.reduce((s, r) => s + Math.max(0, r.n - 1), 0);
    console.log(JSON.stringify({
      bench: 'serve', concurrency: c, round, max_tokens: maxTokens, completion_tokens: total,
      decode_tok_s: +(decodeTok / ((lasts - firsts) / 1000)).toFixed(2),
      wall_tok_s: +(total / ((t1 - t0) / 1000)).toFixed(2),
      ttft_ms_mean: +(rs.reduce((s, r) => s + (r.first - r.t0), 0) / c).toFixed(1),
    }));
  }
}
