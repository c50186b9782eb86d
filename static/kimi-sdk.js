// Kimi Backend JavaScript SDK: a dependency-free ES module for browsers and Node 18+.
//
//   import KimiClient from './kimi-sdk.js';
//   const client = new KimiClient({ baseURL: 'http://localhost:3000', apiKey: 'optional' });
//   const response = await client.chat('你好');   // response.data.message
//
// Every failure is thrown (or, for streams, passed to onError) as a KimiError.

const DEFAULT_TIMEOUT_MS = 120000;

/** A failed call: HTTP status (0 when there was none), machine code, message, Retry-After in seconds. */
export class KimiError extends Error {
  constructor(message, { status = 0, code = 'error', retryAfter = null, requestId = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'KimiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

/** Retry-After as seconds: the header is either a number of seconds or an HTTP date. */
function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** The KimiError for a non-2xx response, from our JSON error body when there is one. */
async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not our JSON (a proxy's HTML page, say): the status alone has to do.
  }
  const message = (body && typeof body.error === 'string' && body.error) || `HTTP ${response.status} ${response.statusText}`.trim();
  return new KimiError(message, {
    status: response.status,
    code: (body && body.code) || 'http_error',
    retryAfter: parseRetryAfter(response.headers.get('Retry-After')),
    requestId: (body && body.request_id) || response.headers.get('X-Request-ID'),
  });
}

/** The options the API names differently from the SDK (camelCase here, as in JavaScript). */
function chatOptions({ model, temperature, topP, maxTokens } = {}) {
  return { model, temperature, top_p: topP, max_tokens: maxTokens };
}

/**
 * Links the caller's signal and a timeout to one AbortController, and remembers which fired.
 * For streams the timeout is the longest silence allowed, so `touch()` restarts it on every read.
 */
class CallControl {
  constructor(signal, timeoutMs) {
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.reason = null;
    this.timeoutMs = timeoutMs;
    this.timer = null;
    this.onCallerAbort = () => this.abort('aborted');
    this.callerSignal = signal;
    if (signal) {
      if (signal.aborted) this.abort('aborted');
      else signal.addEventListener('abort', this.onCallerAbort, { once: true });
    }
    this.touch();
  }

  touch() {
    if (!this.timeoutMs) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.abort('timeout'), this.timeoutMs);
  }

  abort(reason) {
    if (this.reason) return;
    this.reason = reason;
    this.controller.abort();
  }

  /** The KimiError for an exception thrown while this call was in flight. */
  errorFor(error) {
    if (error instanceof KimiError) return error;
    if (this.reason === 'timeout') return new KimiError(`No answer from the server within ${this.timeoutMs} ms.`, { code: 'timeout', cause: error });
    if (this.reason === 'aborted') return new KimiError('The request was aborted.', { code: 'aborted', cause: error });
    return new KimiError('Could not reach the server (network error).', { code: 'network_error', cause: error });
  }

  done() {
    clearTimeout(this.timer);
    if (this.callerSignal) this.callerSignal.removeEventListener('abort', this.onCallerAbort);
  }
}

/**
 * Server-sent events parser: feed it decoded text in any pieces, it calls `onData` with the
 * `data` of each complete event. Comment lines (`: keep-alive`) and other fields are ignored.
 */
export function createSSEParser(onData) {
  let buffer = '';
  let data = [];
  const line = (text) => {
    if (text === '') {
      if (data.length) onData(data.join('\n'));
      data = [];
    } else if (text.startsWith('data:')) {
      data.push(text.slice(text[5] === ' ' ? 6 : 5));
    }
  };
  return (text) => {
    buffer += text;
    // A line ends in LF, CRLF or CR; a CR at the very end may be half of a CRLF still on its way.
    const pattern = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    let match;
    while ((match = pattern.exec(buffer)) !== null) {
      line(buffer.slice(start, match.index));
      start = match.index + match[0].length;
    }
    buffer = buffer.slice(start);
  };
}

export default class KimiClient {
  /**
   * @param {{baseURL?: string, apiKey?: string, timeout?: number}} options
   *   baseURL: the service's origin ('' = the page's own origin); apiKey: sent as `x-api-key`;
   *   timeout: milliseconds per call (0 = none), for streams the longest silence allowed.
   */
  constructor({ baseURL = '', apiKey, timeout = DEFAULT_TIMEOUT_MS } = {}) {
    this.baseURL = baseURL.replace(/\/+$/, '');
    this.apiKey = apiKey;
    this.timeout = timeout;
  }

  /** Single-turn chat: resolves to `{success, data: {message, usage, model, finish_reason}}`. */
  chat(message, options = {}) {
    return this.#request('POST', '/api/chat/completion', { message, system: options.system, ...chatOptions(options) }, options);
  }

  /** Multi-turn chat with a `[{role, content}]` list: same shape as `chat`. */
  chatWithHistory(messages, options = {}) {
    return this.#request('POST', '/api/chat/history', { messages, ...chatOptions(options) }, options);
  }

  /** `{success, data: [{id, ...}]}`: the models the service can use. */
  getModels(options = {}) {
    return this.#request('GET', '/api/chat/models', undefined, options);
  }

  /** `{success, message, timestamp, version}`: the service is up. */
  health(options = {}) {
    return this.#request('GET', '/health', undefined, options);
  }

  /** `{success, data: {endpoints, models, auth, rateLimit, upstream}}`: what the service offers. */
  info(options = {}) {
    return this.#request('GET', '/api/info', undefined, options);
  }

  /**
   * Streamed chat. `input` is a message text or a `[{role, content}]` list. Callbacks:
   * onMessage(content) per piece of text, onReasoning(text) for thinking models,
   * onUsage(usage), onComplete({content, usage, finishReason}), onError(KimiError).
   * Returns a promise of `{content, usage, finishReason, aborted, error?}` with an `abort()`
   * method. Errors go to onError; without onError the promise rejects instead. Aborting
   * (by `abort()` or `signal`) is not an error: the promise resolves with `aborted: true`.
   */
  chatStream(input, options = {}) {
    const control = new CallControl(options.signal, options.timeout ?? this.timeout);
    const outcome = { content: '', usage: null, finishReason: null, aborted: false };
    const result = this.#readStream(input, options, control, outcome).then(
      () => {
        if (options.onComplete) options.onComplete(outcome);
        return outcome;
      },
      (error) => {
        // Anything but a KimiError was thrown by one of the caller's callbacks: let it surface as is.
        if (!(error instanceof KimiError)) throw error;
        if (error.code === 'aborted') return { ...outcome, aborted: true };
        if (!options.onError) throw error;
        options.onError(error);
        return { ...outcome, error };
      },
    ).finally(() => control.done());
    result.abort = () => control.abort('aborted');
    return result;
  }

  /** Sends a stream request and feeds its events to the callbacks until `[DONE]`. */
  async #readStream(input, options, control, outcome) {
    const response = await this.#send('POST', '/api/chat/stream', { messages: input, ...chatOptions(options) }, control, 'text/event-stream');
    const requestId = response.headers.get('X-Request-ID');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let finished = false;
    let failure = null;
    const parse = createSSEParser((data) => {
      if (data === '[DONE]') {
        finished = true;
        return;
      }
      let event;
      try {
        event = JSON.parse(data);
      } catch (error) {
        throw new KimiError('The server sent an event that is not JSON.', { code: 'bad_event', requestId, cause: error });
      }
      if (event.error) {
        failure = new KimiError(event.error, { code: event.code || 'stream_error', requestId });
      } else if (event.reasoning) {
        if (options.onReasoning) options.onReasoning(event.reasoning);
      } else if (event.content) {
        outcome.content += event.content;
        if (options.onMessage) options.onMessage(event.content);
      }
      if (event.finish_reason) outcome.finishReason = event.finish_reason;
      if (event.usage) {
        outcome.usage = event.usage;
        if (options.onUsage) options.onUsage(event.usage);
      }
    });
    try {
      while (!finished) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          throw control.errorFor(error);
        }
        if (chunk.done) break;
        control.touch();
        // stream: true holds back a multi-byte character split across chunks until its last byte arrives.
        parse(decoder.decode(chunk.value, { stream: true }));
      }
      parse(decoder.decode());
    } finally {
      if (!finished) reader.cancel().catch(() => {});
    }
    if (failure) throw failure;
    if (!finished) throw new KimiError('The stream ended before it was complete.', { code: 'stream_truncated', requestId });
  }

  /** A JSON call: resolves to the response body, throws a KimiError for any failure. */
  async #request(method, path, body, options) {
    const control = new CallControl(options.signal, options.timeout ?? this.timeout);
    try {
      const response = await this.#send(method, path, body, control, 'application/json');
      try {
        return await response.json();
      } catch (error) {
        if (control.reason) throw control.errorFor(error);
        throw new KimiError('The server answered with something that is not JSON.', { status: response.status, code: 'bad_response', cause: error });
      }
    } finally {
      control.done();
    }
  }

  /** Sends one request; resolves to a 2xx response, throws a KimiError for any other. */
  async #send(method, path, body, control, accept) {
    const headers = { Accept: accept };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.apiKey) headers['x-api-key'] = this.apiKey;
    let response;
    try {
      response = await fetch(this.baseURL + path, {
        method, headers, signal: control.signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw control.errorFor(error);
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }
}
