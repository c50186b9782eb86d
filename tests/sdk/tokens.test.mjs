// Browser tokens in the SDK (`token`, `getToken`, `createSession`) against a small Node HTTP
// server in this file that speaks exactly the contract of ../shared/API.md: `POST /api/session`
// answers {success, data: {token, expires_at, subject}}; chat calls take the token as
// `Authorization: Bearer`; an expired token is a 401 with code `token_expired`. The same renewal
// against the service itself, in Chromium, is tests/test_sdk_tokens_browser.py.
// Time is node:test's mocked Date (an injectable clock), shared by this server and the SDK.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { after, before, beforeEach, mock, test } from 'node:test';

import KimiClient, { KimiError } from '../../static/kimi-sdk.js';

const TTL_S = 600;
let ttlS;     // the lifetime of the tokens the server mints now
let server;
let baseURL;
let minted;   // token -> expiry in ms
let revoked;  // tokens the server now calls expired, as if their expiry had passed
let requests; // [{path, authorization}] of every request
let inBandExpiry; // the next stream fails after its first piece with an in-band token_expired

function json(response, status, body) {
  response.writeHead(status, { 'Content-Type': 'application/json' });
  response.end(JSON.stringify(body));
}

function mint() {
  const token = `token-${minted.size + 1}`;
  const expiresAt = Date.now() + ttlS * 1000;
  minted.set(token, expiresAt);
  return { token, expires_at: new Date(expiresAt).toISOString(), subject: `anon:${minted.size}` };
}

/** The contract's 401s, or null when the bearer token may call. */
function refusal(authorization) {
  const token = (authorization || '').replace(/^Bearer /, '');
  if (!minted.has(token)) return { error: 'The API key is not valid.', code: 'invalid_api_key' };
  if (revoked.has(token) || Date.now() >= minted.get(token)) return { error: 'The token has expired.', code: 'token_expired' };
  return null;
}

function handle(request, response) {
  const { url: path, headers } = request;
  requests.push({ path, authorization: headers.authorization });
  if (path === '/api/session') return json(response, 200, { success: true, data: mint() });
  const denied = refusal(headers.authorization);
  if (denied) return json(response, 401, { success: false, ...denied, request_id: 'r-401' });
  if (path === '/api/chat/completion') {
    return json(response, 200, { success: true, data: { message: `hello, ${headers.authorization}`, usage: null, model: 'm', finish_reason: 'stop' } });
  }
  response.writeHead(200, { 'Content-Type': 'text/event-stream' });
  response.write('data: {"content":"piece"}\n\n');
  if (inBandExpiry) {
    inBandExpiry = false;
    response.write('data: {"error":"The token has expired.","code":"token_expired"}\n\n');
  } else {
    response.write('data: {"content":"","finish_reason":"stop","usage":null}\n\n');
  }
  return response.end('data: [DONE]\n\n');
}

before(async () => {
  server = http.createServer(handle);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  baseURL = `http://127.0.0.1:${server.address().port}`;
});

after(() => server.close());

beforeEach(() => {
  ttlS = TTL_S;
  minted = new Map();
  revoked = new Set();
  requests = [];
  inBandExpiry = false;
  mock.timers.reset();
  mock.timers.enable({ apis: ['Date'], now: Date.parse('2026-11-24T10:00:00Z') });
});

/** A client whose getToken mints an anonymous session token, counting its calls. */
function sessionClient() {
  const sessions = new KimiClient({ baseURL });
  const asked = { count: 0 };
  const client = new KimiClient({
    baseURL,
    getToken: async () => {
      asked.count += 1;
      return (await sessions.createSession()).data;
    },
  });
  return { client, asked };
}

const chatCalls = () => requests.filter((request) => request.path.startsWith('/api/chat/'));

test('getToken is asked once before the first call; its token goes as Authorization: Bearer', async () => {
  const { client, asked } = sessionClient();
  const first = await client.chat('hi');
  const second = await client.chat('hi again');
  assert.equal(asked.count, 1);
  assert.equal(first.data.message, 'hello, Bearer token-1');
  assert.equal(second.data.message, 'hello, Bearer token-1');
  const session = requests.find((request) => request.path === '/api/session');
  assert.equal(session.authorization, undefined, 'createSession() must not send credentials');
});

test('calls that start together share one getToken', async () => {
  const { client, asked } = sessionClient();
  const replies = await Promise.all([client.chat('a'), client.chat('b'), client.chatStream('c')]);
  assert.equal(asked.count, 1);
  assert.equal(replies[2].content, 'piece');
  assert.deepEqual(new Set(chatCalls().map((call) => call.authorization)), new Set(['Bearer token-1']));
});

test('a token is renewed shortly before its expires_at, not long before', async () => {
  const { client, asked } = sessionClient();
  await client.chat('hi');
  mock.timers.tick((TTL_S - 40) * 1000); // 40 s left: still in use
  await client.chat('hi');
  assert.equal(asked.count, 1);
  mock.timers.tick(15 * 1000); // 25 s left: renewed before the call
  const reply = await client.chat('hi');
  assert.equal(asked.count, 2);
  assert.equal(reply.data.message, 'hello, Bearer token-2');
  assert.equal(chatCalls().length, 3, 'no call was refused on the way');
});

test('a 401 token_expired is answered by one renewal and one retry', async () => {
  const { client, asked } = sessionClient();
  await client.chat('hi');
  revoked.add('token-1');
  const reply = await client.chat('hi');
  assert.equal(reply.data.message, 'hello, Bearer token-2');
  assert.equal(asked.count, 2);
  assert.deepEqual(chatCalls().map((call) => call.authorization), ['Bearer token-1', 'Bearer token-1', 'Bearer token-2']);
});

test('a token refused again after renewal is the error, not a loop', async () => {
  const { client, asked } = sessionClient();
  await client.chat('hi');
  revoked.add('token-1');
  ttlS = 0; // and every token it mints from now on is expired at once
  const error = await client.chat('hi').catch((failure) => failure);
  assert.ok(error instanceof KimiError);
  assert.equal(error.status, 401);
  assert.equal(error.code, 'token_expired');
  assert.equal(asked.count, 2);
  assert.equal(chatCalls().length, 3, 'the first call, then the refused one and its single retry');
});

test('a stream is retried when refused before its first byte, but not after it started', async () => {
  const { client, asked } = sessionClient();
  await client.chat('hi');
  revoked.add('token-1');
  const renewed = await client.chatStream('story');
  assert.equal(renewed.content, 'piece');
  assert.equal(asked.count, 2);

  inBandExpiry = true;
  const before = chatCalls().length;
  const errors = [];
  const outcome = await client.chatStream('story', { onError: (error) => errors.push(error) });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'token_expired');
  assert.equal(outcome.content, 'piece', 'the text before the error is kept');
  assert.equal(chatCalls().length, before + 1, 'a started stream is never sent again');
  assert.equal(asked.count, 2);
});

test('a fixed token is sent as it is, and a 401 for it is the caller\'s to handle', async () => {
  const { token } = mint();
  const client = new KimiClient({ baseURL, token });
  assert.equal((await client.chat('hi')).data.message, `hello, Bearer ${token}`);
  revoked.add(token);
  await assert.rejects(client.chat('hi'), { name: 'KimiError', status: 401, code: 'token_expired' });
  assert.equal(chatCalls().length, 2);
});

test('getToken failing, or returning no token, is a KimiError token_error', async () => {
  const failing = new KimiClient({ baseURL, getToken: async () => { throw new Error('backend down'); } });
  await assert.rejects(failing.chat('hi'), (error) => error instanceof KimiError && error.code === 'token_error' && /backend down/.test(error.message));
  const empty = new KimiClient({ baseURL, getToken: async () => ({ expires_at: new Date().toISOString() }) });
  await assert.rejects(empty.chat('hi'), { name: 'KimiError', code: 'token_error' });
  assert.equal(chatCalls().length, 0);
});

test('a plain string from getToken is used until the server says it expired', async () => {
  let count = 0;
  const client = new KimiClient({ baseURL, getToken: () => { count += 1; return mint().token; } });
  await client.chat('hi');
  mock.timers.tick(TTL_S * 1000 - 1000); // no expires_at known: no renewal ahead of time
  await client.chat('hi');
  assert.equal(count, 1);
  mock.timers.tick(2000);
  assert.equal((await client.chat('hi')).data.message, 'hello, Bearer token-2');
  assert.equal(count, 2);
});
