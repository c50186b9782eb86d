// Types for kimi-sdk.js, the Kimi Backend JavaScript SDK.

/** What a getToken function returns: the token alone, or with its expiry (as `POST /api/tokens` answers). */
export type TokenGrant = string | { token: string; expires_at?: string };

export interface ClientOptions {
  /** The service's origin, e.g. 'http://localhost:3000'; '' (the default) is the page's own origin. */
  baseURL?: string;
  /** A client key, sent as `x-api-key`, for a service run with REQUIRE_API_KEY=true. */
  apiKey?: string;
  /** A browser token (from `POST /api/tokens` or `/api/session`), sent as `Authorization: Bearer`. */
  token?: string;
  /**
   * Fetches a browser token: called before the first call, again shortly before `expires_at`,
   * and once more when the service answers 401 `token_expired` (the call is then retried once).
   */
  getToken?: () => TokenGrant | Promise<TokenGrant>;
  /**
   * Milliseconds per call (0 = none); for streams, the longest silence allowed. Unset: 930000 for
   * a non-streamed chat call (longer than the service's 910 s for one), 120000 for anything else.
   */
  timeout?: number;
}

export interface CallOptions {
  /** Aborts the call: a JSON call then throws KimiError `aborted`, a stream resolves with `aborted: true`. */
  signal?: AbortSignal;
  /** Overrides the client's timeout for this call. */
  timeout?: number;
}

export interface ChatOptions extends CallOptions {
  /** A model id from getModels(); the server's DEFAULT_MODEL when omitted. */
  model?: string;
  /** 0 to 1 (Moonshot's range). */
  temperature?: number;
  /** 0 to 1. */
  topP?: number;
  /** Output token budget. */
  maxTokens?: number;
  /** Output token budget under its newer name (reasoning included). */
  maxCompletionTokens?: number;
  /** Thinking on or off, for models that allow both; omitted, the server's default. */
  thinking?: boolean;
}

export interface CompletionOptions extends ChatOptions {
  /** A system prompt for this single-turn call. */
  system?: string;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
  /** An assistant message's reasoning, sent back as thinking models require. */
  reasoning?: string;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cached_tokens?: number;
}

export interface ChatResponse {
  success: true;
  data: {
    message: string;
    usage: Usage | null;
    model: string;
    finish_reason: string | null;
    reasoning?: string;
  };
}

export interface Model {
  id: string;
  context_length?: number;
  supports_reasoning?: boolean;
  supports_image_in?: boolean;
  supports_video_in?: boolean;
  /** `always` thinks, `optional` thinks by default and can be turned off, `none` never thinks. */
  thinking?: 'always' | 'optional' | 'none';
  /** The model refuses sampling values but its own: the server drops them (header `X-Kimi-Dropped-Params`). */
  fixed_sampling?: boolean;
  /** `retired` ids are answered by their replacement. */
  status?: 'current' | 'retired';
  [field: string]: unknown;
}

export interface ModelsResponse {
  success: true;
  data: Model[];
  source: 'upstream' | 'fallback';
}

export interface HealthResponse {
  success: true;
  message: string;
  timestamp: string;
  version: string;
  upstream: 'live' | 'offline';
}

export interface InfoResponse {
  success: true;
  data: {
    name: string;
    version: string;
    description: string;
    endpoints: { method: string; path: string; description: string }[];
    models: string[];
    defaultModel: string;
    /** The server's DEFAULT_THINKING: `model` (each model's own default), `on` or `off`. */
    defaultThinking: 'model' | 'on' | 'off';
    auth: { required: boolean; headers: string[]; tokens?: boolean; anonymousSessions?: boolean };
    rateLimit: { windowMs: number; maxRequests: number };
    upstream: { mode: 'live' | 'offline' };
    budgets: { enabled: boolean; perClientPerDay: number | null; totalPerDay: number | null };
  };
}

export interface SessionResponse {
  success: true;
  data: { token: string; expires_at: string; subject: string };
}

export interface StreamOutcome {
  content: string;
  /** The reasoning of a thinking model ('' when there was none). */
  reasoning: string;
  usage: Usage | null;
  finishReason: string | null;
  aborted: boolean;
  /** Set when the stream failed and onError received the error. */
  error?: KimiError;
}

export interface StreamOptions extends ChatOptions {
  /** Each piece of reply text, as it arrives. */
  onMessage?: (content: string) => void;
  /** Each piece of a thinking model's reasoning. */
  onReasoning?: (text: string) => void;
  /** Token usage, once, at the end of the reply. */
  onUsage?: (usage: Usage) => void;
  /** The reply finished normally. */
  onComplete?: (outcome: StreamOutcome) => void;
  /** The call failed, before or during the stream. Without it, the returned promise rejects. */
  onError?: (error: KimiError) => void;
}

export interface StreamHandle extends Promise<StreamOutcome> {
  /** Stops the stream; the server closes its upstream request at once. */
  abort(): void;
}

export class KimiError extends Error {
  name: 'KimiError';
  /** The HTTP status, or 0 when there was none (network, timeout, abort, an error inside a started stream). */
  status: number;
  /** The service's machine code (`missing_api_key`, `token_expired`, `upstream_rate_limited`, ...) or the SDK's own:
   *  `network_error`, `timeout`, `aborted`, `stream_truncated`, `bad_event`, `bad_response`, `http_error`,
   *  `token_error` (getToken failed), `busy` and `nothing_to_retry` (Conversation). */
  code: string;
  /** Seconds to wait before retrying, from Retry-After, or null. */
  retryAfter: number | null;
  /** The service's request id, to quote when reporting a problem. */
  requestId: string | null;
}

/** Parses server-sent events from decoded text given in any pieces; calls onData with each event's data. */
export function createSSEParser(onData: (data: string) => void): (text: string) => void;

/** A message of a Conversation. `state` marks a reply that is not complete; only complete turns are sent as context. */
export interface ConversationMessage extends ChatMessage {
  /** The reply's token usage, once complete. */
  usage?: Usage;
  /** The model that answered (non-streamed replies). */
  model?: string;
  state?: 'streaming' | 'stopped' | 'failed';
  /** Why a `failed` reply failed. */
  error?: { message: string; code: string; status: number };
}

export type ConversationStatus = 'ready' | 'submitted' | 'streaming' | 'error';

export interface ConversationSnapshot {
  messages: readonly ConversationMessage[];
  status: ConversationStatus;
  error: KimiError | null;
  usage: Usage | null;
}

export interface ConversationOptions {
  model?: string;
  /** A system prompt, sent first with every request. */
  system?: string;
  thinking?: boolean;
  /** Messages to start from (a saved conversation's `messages`). */
  messages?: ConversationMessage[];
  /** The saved conversation's usage so far. */
  usage?: Usage | null;
}

/** What `toJSON()` returns and `client.conversation()` restores. */
export interface SavedConversation extends ConversationOptions {
  messages: ConversationMessage[];
}

/** The options of one send; `model`, `thinking` and the other chat options default to the
 *  conversation's (an option given as `undefined` too). */
export interface SendOptions extends Omit<StreamOptions, 'onComplete'> {
  /** `stream` (the default), `history`, or `completion` (the text alone, without the conversation). */
  via?: 'stream' | 'history' | 'completion';
  onComplete?: (outcome: StreamOutcome) => void;
}

export class Conversation {
  constructor(client: KimiClient, options?: ConversationOptions);
  /** The client it sends with; may be replaced (a new key, say). */
  client: KimiClient;
  model?: string;
  system?: string;
  thinking?: boolean;
  readonly messages: readonly ConversationMessage[];
  readonly status: ConversationStatus;
  readonly error: KimiError | null;
  readonly usage: Usage | null;
  /** Calls `listener` after every change; returns the function that unsubscribes it. */
  subscribe(listener: (snapshot: ConversationSnapshot) => void): () => void;
  /** A new object after every change, the same one until then (for useSyncExternalStore). */
  getSnapshot(): ConversationSnapshot;
  /** Sends the next user message; a failure is in the outcome's `error`, not thrown. Rejects with `busy` while a reply is in progress. */
  send(text: string, options?: SendOptions): Promise<StreamOutcome>;
  /** Sends the last user message again, in place of its reply. */
  retry(options?: SendOptions): Promise<StreamOutcome>;
  /** Removes the last user message and what followed; returns its text, or null. */
  undo(): string | null;
  /** Stops the reply in progress; its text so far stays, marked `stopped`. */
  stop(): void;
  /** Empties the conversation. */
  clear(): void;
  toJSON(): SavedConversation;
}

export default class KimiClient {
  constructor(options?: ClientOptions);
  baseURL: string;
  apiKey?: string;
  token?: string;
  getToken?: () => TokenGrant | Promise<TokenGrant>;
  timeout?: number;
  chat(message: string, options?: CompletionOptions): Promise<ChatResponse>;
  chatWithHistory(messages: ChatMessage[], options?: ChatOptions): Promise<ChatResponse>;
  chatStream(input: string | ChatMessage[], options?: StreamOptions): StreamHandle;
  getModels(options?: CallOptions): Promise<ModelsResponse>;
  health(options?: CallOptions): Promise<HealthResponse>;
  info(options?: CallOptions): Promise<InfoResponse>;
  /** A short-lived anonymous token, where the service offers them (`info()`: `auth.anonymousSessions`). */
  createSession(options?: CallOptions): Promise<SessionResponse>;
  /** A conversation that keeps its messages (reasoning included): new, or restored from `toJSON()`. */
  conversation(options?: ConversationOptions): Conversation;
}
