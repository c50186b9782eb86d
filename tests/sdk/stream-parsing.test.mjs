// The SDK's stream reading against a tiny local server that writes exactly the bytes under
// test: keep-alive comments, a multi-byte character split across writes, CRLF line ends, an
// in-band error event, a truncated stream and an error page that is not JSON.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { after, before, test } from 'node:test';

import KimiClient, { createSSEParser } from '../../static/kimi-sdk.js';

const USAGE = '{"prompt_tokens":9,"completion_tokens":30,"total_tokens":39}';
let server;
let client;
let received = [];

// The fake server's replies, chosen by the message the client sends.
const scenarios = {
  async split(response) {
    startEvents(response);
    const event = Buffer.from('data: {"content":"从前"}\n\n');
    const cut = Buffer.byteLength('data: {"content":"') + 2; // after two of 从's three bytes
    response.write(': keep-alive\n\n');
    response.write(Buffer.concat([Buffer.from('data: {"content":"A"}\n\n'), event.subarray(0, cut)]));
    // Once "A" has arrived, the client has read the first half of 从 too: the rest is a new read.
    await clientHas(1);
    response.write(event.subarray(cut));
    await clientHas(2);
    response.write(': keep-alive\r\n\r\ndata: {"content":"有一个"}\r\n\r\n');
    response.write(`data: {"content":"","finish_reason":"stop","usage":${USAGE}}\n\n`);
    response.end('data: [DONE]\n\n');
  },
  error(response) {
    startEvents(response);
    response.write('data: {"content":"部分"}\n\n: keep-alive\n\n');
    response.write('data: {"error":"The upstream connection broke.","code":"upstream_stream_broken"}\n\n');
    response.end('data: [DONE]\n\n');
  },
  truncated(response) {
    startEvents(response);
    response.end('data: {"content":"only this"}\n\n');
  },
  proxyError(response) {
    response.writeHead(502, { 'Content-Type': 'text/html', 'Retry-After': new Date(Date.now() + 30000).toUTCString() });
    response.end('<html><body>Bad Gateway</body></html>');
  },
};

before(async () => {
  server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => scenarios[JSON.parse(Buffer.concat(chunks)).messages](response));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  client = new KimiClient({ baseURL: `http://127.0.0.1:${server.address().port}` });
});

after(() => server.close());

function startEvents(response) {
  response.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  response.flushHeaders();
}

/** Resolves once the client's onMessage has received `count` pieces. */
async function clientHas(count) {
  const deadline = Date.now() + 5000;
  while (received.length < count) {
    if (Date.now() > deadline) throw new Error(`the client never received piece ${count}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Runs one scenario through chatStream, collecting what the callbacks see. */
async function run(scenario) {
  received = [];
  const seen = { errors: [], usage: [], completed: false };
  const outcome = await client.chatStream(scenario, {
    onMessage: (content) => received.push(content),
    onUsage: (usage) => seen.usage.push(usage),
    onComplete: () => { seen.completed = true; },
    onError: (error) => seen.errors.push(error),
  });
  return { outcome, ...seen };
}

test('comments are ignored and a character split between reads arrives whole', async () => {
  const { outcome, errors, usage, completed } = await run('split');
  assert.deepEqual(errors, []);
  assert.deepEqual(received, ['A', '从前', '有一个']);
  assert.deepEqual(usage, [JSON.parse(USAGE)]);
  assert.equal(outcome.content, 'A从前有一个');
  assert.equal(completed, true);
});

test('an in-band error event reaches onError with its code, after the text before it', async () => {
  const { outcome, errors, completed } = await run('error');
  assert.deepEqual(received, ['部分']);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].name, 'KimiError');
  assert.equal(errors[0].code, 'upstream_stream_broken');
  assert.equal(errors[0].message, 'The upstream connection broke.');
  assert.equal(outcome.content, '部分');
  assert.equal(completed, false);
});

test('a stream that ends without [DONE] is an error, not a silent success', async () => {
  const { errors, completed } = await run('truncated');
  assert.deepEqual(received, ['only this']);
  assert.equal(errors[0].code, 'stream_truncated');
  assert.equal(completed, false);
});

test('an error page that is not JSON keeps its status, and an HTTP-date Retry-After becomes seconds', async () => {
  const { errors } = await run('proxyError');
  assert.equal(errors[0].status, 502);
  assert.equal(errors[0].code, 'http_error');
  assert.ok(errors[0].retryAfter >= 28 && errors[0].retryAfter <= 30, `retryAfter ${errors[0].retryAfter}`);
});

test('the SSE parser handles every line ending, split anywhere, and multi-line data', () => {
  const events = [];
  const feed = createSSEParser((data) => events.push(data));
  const text = ': keep-alive\r\rdata: one\r\n\r\ndata:two\n\ndata: three\ndata: lines\n\nevent: ignored\nid: 7\ndata: four\r\n\r\n';
  for (const piece of text.match(/.{1,3}/gs)) feed(piece);
  assert.deepEqual(events, ['one', 'two', 'three\nlines', 'four']);
});
