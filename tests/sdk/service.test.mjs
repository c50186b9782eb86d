// The SDK against the real service (gunicorn, offline simulator), started by tests/test_sdk.py
// with REQUIRE_API_KEY=true: KIMI_URL is the service, KIMI_KEY a valid client key.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import KimiClient, { KimiError } from '../../static/kimi-sdk.js';

const baseURL = process.env.KIMI_URL;
const apiKey = process.env.KIMI_KEY;
assert.ok(baseURL && apiKey, 'KIMI_URL and KIMI_KEY must be set (tests/test_sdk.py sets them)');

const client = new KimiClient({ baseURL, apiKey });
const OFFLINE = '[offline simulator]';
const RATE_LIMITED = 'sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=7';
const LONG_STREAM = 'sim:chunks=50 sim:interval=0.2';

/** Resolves once `predicate()` holds, polling every few milliseconds, or rejects at the deadline. */
async function until(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('health() and info() describe the service', async () => {
  const health = await client.health();
  assert.equal(health.success, true);
  assert.equal(health.message, 'Kimi API Backend is running');
  assert.equal(health.upstream, 'offline');
  const info = await client.info();
  assert.equal(info.data.auth.required, true);
  assert.ok(info.data.endpoints.some((endpoint) => endpoint.path === '/api/chat/stream'));
});

// Model ids change upstream over time: the tests take whatever the service lists.
const models = (await client.getModels()).data;

test('getModels() lists the models, each with an id and its context length', async () => {
  const response = await client.getModels();
  assert.equal(response.success, true);
  assert.ok(response.data.length >= 2);
  for (const model of response.data) {
    assert.equal(typeof model.id, 'string');
    assert.ok(model.context_length > 0, model.id);
  }
  const info = await client.info();
  assert.ok(response.data.some((model) => model.id === info.data.defaultModel), 'the default model is listed');
});

test('chat() answers with data.message, usage and the chosen model', async () => {
  const chosen = models[1].id;
  const response = await client.chat('你好', { model: chosen, maxTokens: 100 });
  assert.equal(response.data.message, `${OFFLINE} You said: 你好`);
  assert.equal(response.data.model, chosen);
  assert.ok(response.data.usage.total_tokens > 0);
});

test('reasoning arrives with the reply: data.reasoning, and onReasoning before the text in a stream', async () => {
  const response = await client.chat('think sim:reasoning=2');
  assert.match(response.data.reasoning, /Thinking step 2/);
  const order = [];
  const outcome = await client.chatStream('think sim:reasoning=2', {
    onReasoning: () => order.push('reasoning'),
    onMessage: () => order.push('text'),
  });
  assert.equal(order.indexOf('text'), order.lastIndexOf('reasoning') + 1, order.join());
  assert.match(outcome.reasoning, /^Thinking step 1 .*Thinking step 2/);
  assert.equal(outcome.content, `${OFFLINE} You said: think`);
});

test('chatWithHistory() answers the last user message of the conversation', async () => {
  const response = await client.chatWithHistory([
    { role: 'system', content: '你是一个助手' },
    { role: 'user', content: '第一句' },
    { role: 'assistant', content: '好的' },
    { role: 'user', content: '第二句' },
  ]);
  assert.equal(response.data.message, `${OFFLINE} You said: 第二句`);
});

test('chatStream() delivers the reply piece by piece, then usage, then completion', async () => {
  const pieces = [];
  const usages = [];
  let completed = null;
  const outcome = await client.chatStream('写一个故事 sim:chunks=12', {
    onMessage: (content) => pieces.push(content),
    onUsage: (usage) => usages.push(usage),
    onComplete: (result) => { completed = result; },
    onError: (error) => assert.fail(`unexpected error ${error.code}`),
  });
  assert.ok(pieces.length > 5, `expected many pieces, got ${pieces.length}`);
  assert.equal(pieces.join(''), `${OFFLINE} You said: 写一个故事`);
  assert.equal(usages.length, 1);
  assert.ok(usages[0].completion_tokens > 0);
  assert.equal(outcome.content, pieces.join(''));
  assert.equal(outcome.finishReason, 'stop');
  assert.equal(outcome.aborted, false);
  assert.equal(completed, outcome);
});

test('chatStream() accepts a message list and the per-call options', async () => {
  const outcome = await client.chatStream(
    [{ role: 'user', content: 'first' }, { role: 'assistant', content: 'ok' }, { role: 'user', content: 'second' }],
    { model: models.at(-1).id, maxTokens: 50 },
  );
  assert.equal(outcome.content, `${OFFLINE} You said: second`);
});

test('a missing or wrong client key is a 401 KimiError', async () => {
  const anonymous = new KimiClient({ baseURL });
  const missing = await anonymous.chat('hi').catch((error) => error);
  assert.ok(missing instanceof KimiError);
  assert.equal(missing.status, 401);
  assert.equal(missing.code, 'missing_api_key');
  assert.match(missing.message, /x-api-key/);
  assert.ok(missing.requestId);

  const wrong = await new KimiClient({ baseURL, apiKey: 'not-a-key' }).getModels().catch((error) => error);
  assert.equal(wrong.status, 401);
  assert.equal(wrong.code, 'invalid_api_key');

  const errors = [];
  const outcome = await anonymous.chatStream('hi', { onError: (error) => errors.push(error) });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].status, 401);
  assert.equal(outcome.error, errors[0]);
});

test('a stream without onError rejects with the KimiError instead', async () => {
  await assert.rejects(new KimiClient({ baseURL }).chatStream('hi'), { name: 'KimiError', status: 401 });
});

test('invalid input is a 400 naming the field', async () => {
  const error = await client.chat('hi', { temperature: 5 }).catch((failure) => failure);
  assert.equal(error.status, 400);
  assert.match(error.message, /temperature/);
});

test('an upstream 429 keeps its status, code and Retry-After', async () => {
  const error = await client.chat(`hi ${RATE_LIMITED}`).catch((failure) => failure);
  assert.equal(error.status, 429);
  assert.equal(error.code, 'upstream_rate_limited');
  assert.equal(error.retryAfter, 7);

  const errors = [];
  await client.chatStream(`hi ${RATE_LIMITED}`, { onError: (failure) => errors.push(failure) });
  assert.equal(errors[0].status, 429);
  assert.equal(errors[0].retryAfter, 7);
});

test('an error after the stream started arrives through onError, after the text so far', async () => {
  const pieces = [];
  const errors = [];
  let completed = false;
  const outcome = await client.chatStream('hi sim:chunks=10 sim:break_after=3', {
    onMessage: (content) => pieces.push(content),
    onComplete: () => { completed = true; },
    onError: (error) => errors.push(error),
  });
  assert.equal(pieces.length, 3);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof KimiError);
  assert.equal(errors[0].status, 0);
  assert.ok(errors[0].code.startsWith('upstream'), errors[0].code);
  assert.equal(completed, false);
  assert.equal(outcome.content, pieces.join(''));
});

test('abort() stops a long stream part way, without onError or onComplete', async () => {
  const pieces = [];
  let called = null;
  const started = Date.now();
  const stream = client.chatStream(`a long story ${LONG_STREAM}`, {
    onMessage: (content) => pieces.push(content),
    onComplete: () => { called = 'onComplete'; },
    onError: (error) => { called = `onError ${error.code}`; },
  });
  await until(() => pieces.length >= 2, 'two pieces of the stream');
  stream.abort();
  const outcome = await stream;
  assert.equal(outcome.aborted, true);
  assert.equal(outcome.content, pieces.join(''));
  assert.ok(outcome.content.length < 30, 'the stream ran to its end');
  assert.equal(called, null);
  assert.ok(Date.now() - started < 5000, 'abort did not end the stream promptly');
});

test('an AbortSignal aborts a stream and a JSON call', async () => {
  const controller = new AbortController();
  let pieces = 0;
  const stream = client.chatStream(`story ${LONG_STREAM}`, { signal: controller.signal, onMessage: () => { pieces += 1; } });
  await until(() => pieces >= 1, 'the first piece');
  controller.abort();
  assert.equal((await stream).aborted, true);

  const early = new AbortController();
  const call = client.chat('hi sim:delay=3', { signal: early.signal });
  early.abort();
  await assert.rejects(call, { name: 'KimiError', code: 'aborted', status: 0 });
});

test('timeouts: the whole call for JSON, the longest silence for a stream', async () => {
  await assert.rejects(client.chat('hi sim:delay=3', { timeout: 200 }), { code: 'timeout' });
  const errors = [];
  await client.chatStream('hi sim:first_delay=3', { timeout: 300, onError: (error) => errors.push(error) });
  assert.equal(errors[0].code, 'timeout');
  // Pieces every 0.2 s keep a 1 s silence timeout from firing, although the stream lasts longer.
  const outcome = await client.chatStream('hi sim:chunks=8 sim:interval=0.2', { timeout: 1000 });
  assert.equal(outcome.content, `${OFFLINE} You said: hi`);
});

test('unset, the timeout waits out a non-streamed chat as long as the service does, and 120 s for a stream', async (t) => {
  // The SDK's clock is mocked: 250 s pass at once, while the service answers in real time.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const patient = new KimiClient({ baseURL, apiKey });
  const call = patient.chat('hi sim:delay=0.5');
  t.mock.timers.tick(250000);
  assert.equal((await call).data.message, `${OFFLINE} You said: hi`);
  const history = patient.chatWithHistory([{ role: 'user', content: 'hi sim:delay=0.5' }]);
  t.mock.timers.tick(250000);
  assert.equal((await history).data.message, `${OFFLINE} You said: hi`);
  // A stream's silence is still bounded at 120 s.
  const errors = [];
  const stream = patient.chatStream('hi sim:first_delay=3', { onError: (error) => errors.push(error) });
  t.mock.timers.tick(119000);
  assert.deepEqual(errors, []);
  t.mock.timers.tick(1001);
  await stream;
  assert.equal(errors[0].code, 'timeout');
});

test('an unreachable server is a network_error', async () => {
  const nowhere = new KimiClient({ baseURL: 'http://127.0.0.1:9' });
  await assert.rejects(nowhere.health(), { name: 'KimiError', code: 'network_error', status: 0 });
});
