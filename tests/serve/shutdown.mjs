// shutdown.mjs - a stream that is running when the server gets SIGTERM must
// still end properly (finish_reason, then [DONE]) within the grace period.
// The shell script sends the signal once this prints "streaming".
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { base, model, test, done } from './lib.mjs';

const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0, timeout: 60000 });

await test('a running stream finishes during shutdown', async () => {
  const stream = await client.completions.create({ model, prompt: 'to the end', max_tokens: 60, temperature: 0, stream: true });
  let finish = null, n = 0;
  for await (const ch of stream) {
    if (n++ === 1) console.log('streaming');
    if (ch.choices.length && ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
  }
  assert.ok(['stop', 'length'].includes(finish));
});

done();
