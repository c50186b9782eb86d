// Kimi Backend JavaScript SDK: a dependency-free ES module for browsers and Node 18+.
//
//   import KimiClient from './kimi-sdk.js';
//   const client = new KimiClient({ baseURL: 'http://localhost:3000', apiKey: 'optional' });
//   const response = await client.chat('你好');   // response.data.message
//
// Every failure is thrown (or, for streams, passed to onError) as a KimiError.
// `client.conversation()` keeps a whole conversation (reasoning included) for you.

const DEFAULT_TIMEOUT_MS = 120000;
// A non-streamed chat call's default: longer than the service waits for one
// (UPSTREAM_COMPLETION_TIMEOUT_S, 910 s by default; a thinking model's long answer takes minutes),
// so the SDK does not give up on an answer the service is still waiting for and Moonshot bills.
const DEFAULT_CHAT_TIMEOUT_MS = 930000;
// A browser token is renewed this long before it expires (or at half its life, if shorter).
const TOKEN_REFRESH_MARGIN_MS = 30000;

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
function chatOptions({ model, temperature, topP, maxTokens, maxCompletionTokens, thinking } = {}) {
  return { model, temperature, top_p: topP, max_tokens: maxTokens, max_completion_tokens: maxCompletionTokens, thinking };
}

/** `{token, expiresAt}` from what a getToken function returned: a string or `{token, expires_at}`. */
function credentialFrom(value) {
  const token = typeof value === 'string' ? value : value && value.token;
  if (typeof token !== 'string' || !token) {
    throw new KimiError('getToken() must return a token string or {token, expires_at}.', { code: 'token_error' });
  }
  const expiresAt = value.expires_at ? Date.parse(value.expires_at) : NaN;
  return { token, obtainedAt: Date.now(), expiresAt: Number.isNaN(expiresAt) ? null : expiresAt };
}

/** Whether a token should be renewed before the next call: close to its expiry, or past it. */
function isStale({ obtainedAt, expiresAt }) {
  if (expiresAt === null) return false;
  const margin = Math.min(TOKEN_REFRESH_MARGIN_MS, (expiresAt - obtainedAt) / 2);
  return Date.now() >= expiresAt - margin;
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

  /** `promise`, unless this call is aborted or times out first. */
  race(promise) {
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(this.errorFor(new Error(this.reason)));
      if (this.signal.aborted) onAbort();
      this.signal.addEventListener('abort', onAbort, { once: true });
      promise.then(resolve, reject).finally(() => this.signal.removeEventListener('abort', onAbort));
    });
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
  #credential = null;
  #pendingCredential = null;

  /**
   * @param {{baseURL?: string, apiKey?: string, token?: string,
   *          getToken?: () => Promise<string | {token: string, expires_at?: string}>, timeout?: number}} options
   *   baseURL: the service's origin ('' = the page's own origin); apiKey: a client key, sent as
   *   `x-api-key`; token: a browser token, or getToken: a function that fetches one (from your site's
   *   backend, or `createSession()`), sent as `Authorization: Bearer`; timeout: milliseconds per
   *   call (0 = none), for streams the longest silence allowed; unset, 930000 for a non-streamed
   *   chat call and 120000 for anything else.
   */
  constructor({ baseURL = '', apiKey, token, getToken, timeout } = {}) {
    this.baseURL = baseURL.replace(/\/+$/, '');
    this.apiKey = apiKey;
    this.token = token;
    this.getToken = getToken;
    this.timeout = timeout;
  }

  /** Single-turn chat: resolves to `{success, data: {message, usage, model, finish_reason, reasoning?}}`. */
  chat(message, options = {}) {
    return this.#request('POST', '/api/chat/completion', { message, system: options.system, ...chatOptions(options) },
      options, true, DEFAULT_CHAT_TIMEOUT_MS);
  }

  /** Multi-turn chat with a `[{role, content, reasoning?}]` list: same shape as `chat`. */
  chatWithHistory(messages, options = {}) {
    return this.#request('POST', '/api/chat/history', { messages, ...chatOptions(options) }, options, true,
      DEFAULT_CHAT_TIMEOUT_MS);
  }

  /** `{success, data: [{id, context_length, thinking, ...}]}`: the models the service can use. */
  getModels(options = {}) {
    return this.#request('GET', '/api/chat/models', undefined, options);
  }

  /** `{success, message, timestamp, version}`: the service is up. */
  health(options = {}) {
    return this.#request('GET', '/health', undefined, options, false);
  }

  /** `{success, data: {endpoints, models, defaultModel, auth, rateLimit, upstream}}`: what the service offers. */
  info(options = {}) {
    return this.#request('GET', '/api/info', undefined, options, false);
  }

  /**
   * `{success, data: {token, expires_at, subject}}`: a short-lived anonymous browser token, from a
   * service that offers them (`info()` says `auth.anonymousSessions`). Sent without credentials.
   */
  createSession(options = {}) {
    return this.#request('POST', '/api/session', undefined, options, false);
  }

  /** A Conversation on this client: `{model, system, thinking}`, or a saved conversation's `toJSON()`. */
  conversation(options = {}) {
    return new Conversation(this, options);
  }

  /**
   * Streamed chat. `input` is a message text or a `[{role, content, reasoning?}]` list. Callbacks:
   * onMessage(content) per piece of text, onReasoning(text) per piece of a thinking model's
   * reasoning, onUsage(usage), onComplete(outcome), onError(KimiError).
   * Returns a promise of `{content, reasoning, usage, finishReason, aborted, error?}` with an
   * `abort()` method. Errors go to onError; without onError the promise rejects instead. Aborting
   * (by `abort()` or `signal`) is not an error: the promise resolves with `aborted: true`.
   */
  chatStream(input, options = {}) {
    const control = new CallControl(options.signal, options.timeout ?? this.timeout ?? DEFAULT_TIMEOUT_MS);
    const outcome = { content: '', reasoning: '', usage: null, finishReason: null, aborted: false };
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
    const response = await this.#send('POST', '/api/chat/stream', { messages: input, ...chatOptions(options) }, control, 'text/event-stream', true);
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
        failure = new KimiError(event.error, { code: event.code || 'stream_error', requestId: event.request_id || requestId });
      } else if (event.reasoning) {
        outcome.reasoning += event.reasoning;
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

  /**
   * A JSON call: resolves to the response body, throws a KimiError for any failure. Its timeout:
   * the call's, else the client's, else `defaultTimeout`.
   */
  async #request(method, path, body, options, authenticated = true, defaultTimeout = DEFAULT_TIMEOUT_MS) {
    const control = new CallControl(options.signal, options.timeout ?? this.timeout ?? defaultTimeout);
    try {
      const response = await this.#send(method, path, body, control, 'application/json', authenticated);
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

  /**
   * Sends one request; resolves to a 2xx response, throws a KimiError for any other. A 401
   * `token_expired` with a getToken function is retried once with a fresh token (for a stream
   * that is always before its first byte: the status comes before the body).
   */
  async #send(method, path, body, control, accept, authenticated) {
    let credential = null;
    for (let attempt = 1; ; attempt += 1) {
      const headers = { Accept: accept };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (authenticated) {
        if (this.getToken) credential = await this.#usableCredential(control, credential);
        if (this.apiKey) headers['x-api-key'] = this.apiKey;
        const token = credential ? credential.token : this.token;
        if (token) headers.Authorization = `Bearer ${token}`;
      }
      let response;
      try {
        response = await fetch(this.baseURL + path, {
          method, headers, signal: control.signal, body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (error) {
        throw control.errorFor(error);
      }
      if (response.ok) return response;
      const error = await errorFromResponse(response);
      if (attempt > 1 || error.code !== 'token_expired' || !this.getToken) throw error;
    }
  }

  /** The token to send: the current one, unless it is due for renewal or the server just refused it. */
  async #usableCredential(control, refused) {
    const current = this.#credential;
    if (current && current !== refused && !isStale(current)) return current;
    await control.race(this.#renewToken());
    return this.#credential;
  }

  /** Asks getToken for a new token, once for all the calls that need one at the same time. */
  #renewToken() {
    if (!this.#pendingCredential) {
      this.#pendingCredential = Promise.resolve()
        .then(() => this.getToken())
        .then((value) => { this.#credential = credentialFrom(value); })
        .catch((error) => {
          if (error instanceof KimiError) throw error;
          throw new KimiError(`getToken() failed: ${error && error.message}`, { code: 'token_error', cause: error });
        })
        .finally(() => { this.#pendingCredential = null; });
    }
    return this.#pendingCredential;
  }
}

/** An assistant message as sent back to the service: its reasoning goes with it (thinking models need it). */
function wireMessage({ role, content, reasoning }) {
  return reasoning ? { role, content, reasoning } : { role, content };
}

/** A saved message as restored: a reply that was still arriving when it was saved counts as stopped. */
function restoredMessage(message) {
  return message.state === 'streaming' ? { ...message, state: 'stopped' } : { ...message };
}

/** `options` without those left undefined, which would hide the conversation's own when spread over them. */
function given(options) {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
}

/** Token counts added up, field by field. */
function addUsage(total, usage) {
  if (!usage) return total;
  const sum = { ...(total || {}) };
  for (const [name, value] of Object.entries(usage)) {
    if (typeof value === 'number') sum[name] = (sum[name] || 0) + value;
  }
  return sum;
}

/**
 * A conversation the SDK keeps for you: the message list (each reply with its reasoning, which
 * is sent back with the next request, as thinking models require), its status and the tokens it
 * used. Messages are `{role, content, reasoning?, usage?, model?, state?, error?}`, where `state`
 * is `streaming`, `stopped` or `failed` for a reply that is not complete; only complete turns are
 * sent as context. Every change replaces `messages` and the snapshot, so UIs (React's
 * useSyncExternalStore among them) can subscribe and compare by identity. `toJSON()` is what to
 * store; `client.conversation(saved)` restores it.
 */
export class Conversation {
  #listeners = new Set();
  #turn = null; // the reply in progress: {controller}
  #snapshot;

  constructor(client, { model, system, thinking, messages = [], usage = null } = {}) {
    this.client = client;
    this.model = model;
    this.system = system;
    this.thinking = thinking;
    this.#snapshot = { messages: messages.map(restoredMessage), status: 'ready', error: null, usage };
  }

  /** The messages, oldest first. */
  get messages() { return this.#snapshot.messages; }

  /** `ready`, `submitted` (waiting for the first piece), `streaming` or `error`. */
  get status() { return this.#snapshot.status; }

  /** The KimiError of the last reply, or null. */
  get error() { return this.#snapshot.error; }

  /** The tokens of every reply so far, added up, or null. */
  get usage() { return this.#snapshot.usage; }

  /** Calls `listener` after every change; returns the function that unsubscribes it. */
  subscribe = (listener) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  /** `{messages, status, error, usage}`: a new object after every change, the same one until then. */
  getSnapshot = () => this.#snapshot;

  /**
   * Sends `text` as the next user message with the conversation so far and adds the reply.
   * Options: `via` (`stream`, the default; `history`; or `completion`, which sends the text
   * alone), `model`, `thinking` and the other chat options (defaulting to the conversation's,
   * also when given as undefined), `signal`, `timeout`, and the chatStream callbacks. Resolves
   * to `{content, reasoning, usage, finishReason, aborted, error?}`; a failed call is in `error`
   * (and `this.error`), not thrown (an exception from one of the callbacks is: it stops the reply).
   */
  send(text, options = {}) {
    if (this.#turn) return Promise.reject(new KimiError('A reply is still in progress: wait for it or stop() it.', { code: 'busy' }));
    const context = this.#context();
    const user = { role: 'user', content: text };
    this.#update({ messages: [...this.messages, user, { role: 'assistant', content: '', state: 'streaming' }], status: 'submitted', error: null });
    return this.#reply([...context, user], options);
  }

  /** Sends the last user message again, in place of the reply it got (stopped, failed or complete). */
  retry(options = {}) {
    const index = this.messages.findLastIndex((message) => message.role === 'user');
    if (this.#turn) return Promise.reject(new KimiError('A reply is still in progress: wait for it or stop() it.', { code: 'busy' }));
    if (index < 0) return Promise.reject(new KimiError('There is no message to send again.', { code: 'nothing_to_retry' }));
    const { content } = this.messages[index];
    this.#update({ messages: this.messages.slice(0, index) });
    return this.send(content, options);
  }

  /** Removes the last user message and what came after it; returns its text (null if none). */
  undo() {
    const index = this.messages.findLastIndex((message) => message.role === 'user');
    if (this.#turn || index < 0) return null;
    const { content } = this.messages[index];
    this.#update({ messages: this.messages.slice(0, index), status: 'ready', error: null });
    return content;
  }

  /** Stops the reply in progress; what arrived so far stays, marked `stopped`. */
  stop() {
    if (this.#turn) this.#turn.controller.abort();
  }

  /** Empties the conversation (its model, system prompt and thinking setting stay); a reply in progress is dropped. */
  clear() {
    this.stop();
    this.#turn = null;
    this.#update({ messages: [], status: 'ready', error: null, usage: null });
  }

  /** What to store: `client.conversation(JSON.parse(JSON.stringify(conversation)))` restores it. */
  toJSON() {
    return { model: this.model, system: this.system, thinking: this.thinking, messages: this.messages, usage: this.usage };
  }

  /** The complete turns, as the service takes them: system prompt first, unfinished turns left out. */
  #context() {
    const turns = this.system ? [{ role: 'system', content: this.system }] : [];
    const list = this.messages;
    for (let i = 0; i < list.length; i += 1) {
      const message = list[i];
      const next = list[i + 1];
      if (message.role === 'user') {
        if (next && next.role === 'assistant' && !next.state) {
          turns.push(wireMessage(message), wireMessage(next));
          i += 1;
        }
      } else if (!message.state) {
        turns.push(wireMessage(message));
      }
    }
    return turns;
  }

  /** Asks for the reply to `messages` and keeps the last message (the reply) up to date. */
  async #reply(messages, options) {
    const { via = 'stream', onMessage, onReasoning, onUsage, onComplete, onError, signal, ...rest } = options;
    const controller = new AbortController();
    const turn = { controller };
    const stopOnCallerAbort = () => controller.abort();
    if (signal) signal.addEventListener('abort', stopOnCallerAbort, { once: true });
    this.#turn = turn;
    const current = () => this.#turn === turn; // false once clear() dropped this reply
    const callOptions = { model: this.model, thinking: this.thinking, ...given(rest), signal: controller.signal };
    let outcome;
    try {
      if (via === 'stream') {
        outcome = await this.client.chatStream(messages, {
          ...callOptions,
          onReasoning: (piece) => {
            if (current()) this.#patchReply({ reasoning: (lastMessage(this).reasoning || '') + piece }, 'streaming');
            if (onReasoning) onReasoning(piece);
          },
          onMessage: (piece) => {
            if (current()) this.#patchReply({ content: lastMessage(this).content + piece }, 'streaming');
            if (onMessage) onMessage(piece);
          },
          onUsage,
          onError: () => {},
        });
      } else {
        const { data } = via === 'completion'
          ? await this.client.chat(messages[messages.length - 1].content, { ...callOptions, system: this.system })
          : await this.client.chatWithHistory(messages, callOptions);
        outcome = { content: data.message, reasoning: data.reasoning || '', usage: data.usage, finishReason: data.finish_reason, aborted: false, model: data.model };
        if (data.usage && onUsage) onUsage(data.usage);
      }
    } catch (error) {
      if (!(error instanceof KimiError)) {
        // One of the caller's callbacks threw: the reply ends as stopped, and the error surfaces as is.
        controller.abort();
        if (current()) {
          this.#turn = null;
          this.#settle({ aborted: true });
        }
        throw error;
      }
      outcome = { content: '', reasoning: '', usage: null, finishReason: null, aborted: error.code === 'aborted', error: error.code === 'aborted' ? undefined : error };
    } finally {
      if (signal) signal.removeEventListener('abort', stopOnCallerAbort);
    }
    if (!current()) return outcome;
    this.#turn = null;
    this.#settle(outcome);
    if (outcome.error) {
      if (onError) onError(outcome.error);
    } else if (!outcome.aborted && onComplete) {
      onComplete(outcome);
    }
    return outcome;
  }

  /** Records how the reply ended: complete (with its usage and model), stopped, or failed. */
  #settle({ content, reasoning, usage, model, aborted, error }) {
    const { state, ...reply } = lastMessage(this);
    // A streamed reply is already in place; a JSON one arrives here whole.
    if (content && !reply.content) reply.content = content;
    if (reasoning && !reply.reasoning) reply.reasoning = reasoning;
    if (model) reply.model = model;
    if (error) {
      reply.state = 'failed';
      reply.error = { message: error.message, code: error.code, status: error.status };
    } else if (aborted) {
      reply.state = 'stopped';
    } else if (usage) {
      reply.usage = usage;
    }
    this.#update({
      messages: [...this.messages.slice(0, -1), reply],
      status: error ? 'error' : 'ready',
      error: error || null,
      usage: error || aborted ? this.usage : addUsage(this.usage, usage),
    });
  }

  /** Replaces the last message (the reply in progress) with `changes` applied. */
  #patchReply(changes, status) {
    this.#update({ messages: [...this.messages.slice(0, -1), { ...lastMessage(this), ...changes }], status });
  }

  /** Replaces the snapshot with `changes` applied, and tells the subscribers. */
  #update(changes) {
    this.#snapshot = { ...this.#snapshot, ...changes };
    for (const listener of this.#listeners) listener(this.#snapshot);
  }
}

/** The last message of a conversation. */
function lastMessage(conversation) {
  return conversation.messages[conversation.messages.length - 1];
}
