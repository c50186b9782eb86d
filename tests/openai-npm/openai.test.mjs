// The official openai npm package against the service's /v1 surface (started by
// tests/test_openai_npm.py: gunicorn in front of the simulator, client key required).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const baseURL = `${process.env.KIMI_URL}/v1`;
const client = new OpenAI({ baseURL, apiKey: process.env.KIMI_KEY, maxRetries: 0 });
const model = process.env.KIMI_MODEL;
const weather = {
  type: 'function',
  function: { name: 'get_weather', parameters: { type: 'object', properties: { query: { type: 'string' } } } },
};

test('chat answers with the model that answered', async () => {
  const completion = await client.chat.completions.create({ model: 'moonshot-v1-8k', messages: [{ role: 'user', content: '你好' }] });
  assert.equal(completion.choices[0].message.content, '[offline simulator] You said: 你好');
  assert.equal(completion.model, model);
  assert.ok(completion.usage.total_tokens > 0);
});

test('a stream is reassembled, usage last', async () => {
  const stream = await client.chat.completions.create({
    model, stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: '讲个故事 sim:chunks=10' }],
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    usage = chunk.usage ?? usage;
  }
  assert.equal(text, '[offline simulator] You said: 讲个故事');
  assert.ok(usage.total_tokens > 0);
});

test('models lists the current models', async () => {
  const ids = [];
  for await (const item of client.models.list()) ids.push(item.id);
  assert.ok(ids.includes(model));
});

test('a tool call round trip', async () => {
  const messages = [{ role: 'user', content: 'weather?' }];
  const first = await client.chat.completions.create({ model: 'kimi-k3', messages, tools: [weather] });
  const call = first.choices[0].message.tool_calls[0];
  assert.equal(first.choices[0].finish_reason, 'tool_calls');
  assert.equal(call.id, 'functions.get_weather:0');
  messages.push(first.choices[0].message, { role: 'tool', tool_call_id: call.id, content: 'sunny' });
  const second = await client.chat.completions.create({ model: 'kimi-k3', messages, tools: [weather] });
  assert.equal(second.choices[0].message.content, '[offline simulator] The tool said: sunny');
});

test('json mode', async () => {
  const completion = await client.chat.completions.create({
    model, response_format: { type: 'json_object' }, messages: [{ role: 'user', content: 'JSON please' }],
  });
  assert.equal(JSON.parse(completion.choices[0].message.content).offline, true);
});

test('a fixed sampling parameter is dropped and named', async () => {
  const { response } = await client.chat.completions
    .create({ model: 'kimi-k2.6', temperature: 0.2, messages: [{ role: 'user', content: 'hi' }] })
    .withResponse();
  assert.equal(response.headers.get('x-kimi-dropped-params'), 'temperature');
});

test('errors are the SDK\'s own classes', async () => {
  const wrong = new OpenAI({ baseURL, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(wrong.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }] }),
    (error) => error instanceof OpenAI.AuthenticationError && error.status === 401);
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    (error) => error instanceof OpenAI.NotFoundError && error.code === 'model_not_found');
  await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi sim:status=429 sim:retry_after=2' }] }),
    (error) => error instanceof OpenAI.RateLimitError && error.headers.get('retry-after') === '2');
});
