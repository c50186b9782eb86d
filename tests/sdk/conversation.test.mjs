// client.conversation() against the real service (gunicorn, offline simulator), started by
// tests/test_sdk.py with REQUIRE_API_KEY=true. What the SDK sends is recorded by a pass-through
// wrapper around fetch: every request still goes to the service as it is.
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';

import KimiClient, { Conversation, KimiError } from '../../static/kimi-sdk.js';

const baseURL = process.env.KIMI_URL;
const apiKey = process.env.KIMI_KEY;
assert.ok(baseURL && apiKey, 'KIMI_URL and KIMI_KEY must be set (tests/test_sdk.py sets them)');

const OFFLINE = '[offline simulator]';
const client = new KimiClient({ baseURL, apiKey });
// Thinking can be turned off only on a model whose thinking is optional (when the service says which).
const optional = (await client.getModels()).data.find((model) => model.thinking === 'optional');

let sent = [];
const serviceFetch = globalThis.fetch;
globalThis.fetch = (url, init = {}) => {
  if (init.body) sent.push({ path: new URL(url).pathname, body: JSON.parse(init.body) });
  return serviceFetch(url, init);
};
beforeEach(() => { sent = []; });

/** Resolves once `predicate()` holds, polling every few milliseconds, or rejects at the deadline. */
async function until(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('a streamed turn keeps the reply, its reasoning and its usage, through submitted, streaming, ready', async () => {
  const conversation = client.conversation();
  assert.ok(conversation instanceof Conversation);
  const statuses = [];
  conversation.subscribe(({ status }) => { if (statuses.at(-1) !== status) statuses.push(status); });
  const reasoning = [];
  const outcome = await conversation.send('hi sim:reasoning=3 sim:chunks=6', { onReasoning: (piece) => reasoning.push(piece) });

  assert.deepEqual(statuses, ['submitted', 'streaming', 'ready']);
  assert.equal(outcome.content, `${OFFLINE} You said: hi`);
  assert.ok(reasoning.length >= 3);
  const [user, reply] = conversation.messages;
  assert.deepEqual(user, { role: 'user', content: 'hi sim:reasoning=3 sim:chunks=6' });
  assert.equal(reply.role, 'assistant');
  assert.equal(reply.content, outcome.content);
  assert.equal(reply.reasoning, reasoning.join(''));
  assert.equal(reply.state, undefined);
  assert.ok(reply.usage.total_tokens > 0);
  assert.deepEqual(conversation.usage, reply.usage);
  assert.equal(conversation.status, 'ready');
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].body.messages, [user]);
});

test('the next turn sends the earlier reply back with its reasoning, and the usage adds up', async () => {
  const conversation = client.conversation({ system: '你是一个助手', thinking: false, model: optional && optional.id });
  await conversation.send('first sim:reasoning=2');
  const first = conversation.messages[1];
  await conversation.send('second');

  assert.equal(sent.length, 2);
  assert.equal(sent[1].path, '/api/chat/stream');
  assert.equal(sent[1].body.thinking, false);
  assert.deepEqual(sent[1].body.messages, [
    { role: 'system', content: '你是一个助手' },
    { role: 'user', content: 'first sim:reasoning=2' },
    { role: 'assistant', content: first.content, reasoning: first.reasoning },
    { role: 'user', content: 'second' },
  ]);
  assert.ok(first.reasoning.length > 0);
  assert.equal(conversation.messages[3].content, `${OFFLINE} You said: second`);
  const [a, b] = [conversation.messages[1].usage, conversation.messages[3].usage];
  assert.equal(conversation.usage.total_tokens, a.total_tokens + b.total_tokens);
  assert.equal(conversation.usage.prompt_tokens, a.prompt_tokens + b.prompt_tokens);
});

test('send options left undefined keep the conversation\'s model and thinking', async () => {
  assert.ok(optional, 'the service lists a model whose thinking is optional');
  const conversation = client.conversation({ model: optional.id, thinking: false });
  // As the hook passes them for an app that picks nothing: `useKimiChat({ client, model: picked || undefined })`.
  await conversation.send('hi', { model: undefined, thinking: undefined });
  await conversation.send('again', { model: undefined, thinking: true });
  assert.equal(sent[0].body.model, optional.id);
  assert.equal(sent[0].body.thinking, false);
  assert.equal(sent[1].body.model, optional.id);
  assert.equal(sent[1].body.thinking, true);
});

test('via history and via completion fill the reply at once, reasoning included', async () => {
  const conversation = client.conversation();
  await conversation.send('one sim:reasoning=2', { via: 'history' });
  await conversation.send('two', { via: 'completion' });
  assert.equal(sent[0].path, '/api/chat/history');
  assert.equal(sent[1].path, '/api/chat/completion');
  assert.equal(sent[1].body.message, 'two');
  const replies = conversation.messages.filter((message) => message.role === 'assistant');
  assert.equal(replies[0].content, `${OFFLINE} You said: one`);
  assert.match(replies[0].reasoning, /Thinking step 1/);
  assert.ok(replies[0].model);
  assert.equal(replies[1].content, `${OFFLINE} You said: two`);
  assert.equal(conversation.usage.total_tokens, replies[0].usage.total_tokens + replies[1].usage.total_tokens);
});

test('stop() keeps the text so far as a stopped reply, which is not sent as context', async () => {
  const conversation = client.conversation();
  const pending = conversation.send('long story sim:chunks=50 sim:interval=0.2');
  await until(() => conversation.messages[1].content.length > 0, 'the first piece');
  assert.equal(conversation.status, 'streaming');
  await assert.rejects(conversation.send('too soon'), { name: 'KimiError', code: 'busy' });
  conversation.stop();
  const outcome = await pending;
  assert.equal(outcome.aborted, true);
  const reply = conversation.messages[1];
  assert.equal(reply.state, 'stopped');
  assert.ok(reply.content.length > 0 && reply.content.length < 30, reply.content);
  assert.equal(conversation.status, 'ready');
  assert.equal(conversation.usage, null);

  await conversation.send('next');
  assert.deepEqual(sent.at(-1).body.messages, [{ role: 'user', content: 'next' }]);
  assert.equal(conversation.messages.length, 4, 'the stopped turn stays on display');
});

test('an error during the stream keeps the text so far; retry() sends the turn again in its place', async () => {
  const conversation = client.conversation();
  const errors = [];
  const outcome = await conversation.send('hi sim:chunks=10 sim:break_after=3', { onError: (error) => errors.push(error) });
  assert.ok(outcome.error instanceof KimiError);
  assert.equal(errors[0], outcome.error);
  assert.equal(conversation.status, 'error');
  assert.equal(conversation.error, outcome.error);
  const reply = conversation.messages[1];
  assert.equal(reply.state, 'failed');
  assert.ok(reply.content.length > 0);
  assert.equal(reply.error.code, outcome.error.code);

  await conversation.retry();
  assert.equal(sent.length, 2);
  assert.deepEqual(sent[1].body.messages, [{ role: 'user', content: 'hi sim:chunks=10 sim:break_after=3' }]);
  assert.equal(conversation.messages.length, 2, 'the retried turn replaced the failed one');
});

test('a refusal before the stream (429) fails the turn with its Retry-After; undo() gives the text back', async () => {
  const conversation = client.conversation();
  const text = 'hi sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=7';
  const outcome = await conversation.send(text);
  assert.equal(outcome.error.status, 429);
  assert.equal(outcome.error.retryAfter, 7);
  assert.equal(conversation.messages[1].state, 'failed');
  assert.equal(conversation.messages[1].content, '');
  assert.equal(conversation.undo(), text);
  assert.deepEqual(conversation.messages, []);
  assert.equal(conversation.status, 'ready');
  assert.equal(conversation.error, null);
});

test('toJSON() round-trips through JSON, and the restored conversation goes on where it was', async () => {
  const conversation = client.conversation({ system: 'be brief' });
  await conversation.send('remember me sim:reasoning=1');
  const saved = JSON.parse(JSON.stringify(conversation));
  assert.equal(saved.system, 'be brief');
  const restored = client.conversation(saved);
  assert.deepEqual(restored.messages, conversation.messages);
  assert.deepEqual(restored.usage, conversation.usage);
  await restored.send('again');
  const context = sent.at(-1).body.messages;
  assert.equal(context.length, 4);
  assert.equal(context[2].reasoning, conversation.messages[1].reasoning);
});

test('a reply still arriving when saved comes back as stopped', () => {
  const restored = client.conversation({ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'part', state: 'streaming' }] });
  assert.equal(restored.messages[1].state, 'stopped');
  assert.equal(restored.status, 'ready');
});

test('clear() during a reply drops it, and the conversation is ready for a new one at once', async () => {
  const conversation = client.conversation();
  const pending = conversation.send('long sim:chunks=50 sim:interval=0.2');
  await until(() => conversation.status === 'streaming', 'the stream');
  conversation.clear();
  assert.deepEqual(conversation.messages, []);
  const fresh = conversation.send('fresh');
  assert.equal((await pending).aborted, true);
  await fresh;
  assert.deepEqual(conversation.messages.map((message) => message.content), ['fresh', `${OFFLINE} You said: fresh`],
    'the dropped reply did not come back');
});

test('a callback that throws ends the reply as stopped and surfaces its own error', async () => {
  const conversation = client.conversation();
  const bug = new Error('a bug in onMessage');
  await assert.rejects(conversation.send('hi sim:chunks=5', { onMessage: () => { throw bug; } }), (error) => error === bug);
  assert.equal(conversation.messages[1].state, 'stopped');
  assert.equal(conversation.status, 'ready');
  await conversation.send('again');
  assert.equal(conversation.messages[3].content, `${OFFLINE} You said: again`);
});
