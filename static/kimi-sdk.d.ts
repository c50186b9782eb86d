// Types for kimi-sdk.js, the Kimi Backend JavaScript SDK.

export interface ClientOptions {
  /** The service's origin, e.g. 'http://localhost:3000'; '' (the default) is the page's own origin. */
  baseURL?: string;
  /** A client key, sent as `x-api-key`, for a service run with REQUIRE_API_KEY=true. */
  apiKey?: string;
  /** Milliseconds per call (0 = none); for streams, the longest silence allowed. Default 120000. */
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
}

export interface CompletionOptions extends ChatOptions {
  /** A system prompt for this single-turn call. */
  system?: string;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
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
    auth: { required: boolean; headers: string[] };
    rateLimit: { windowMs: number; maxRequests: number };
    upstream: { mode: 'live' | 'offline' };
  };
}

export interface StreamOutcome {
  content: string;
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
  /** The service's machine code (`missing_api_key`, `upstream_rate_limited`, ...) or the SDK's own:
   *  `network_error`, `timeout`, `aborted`, `stream_truncated`, `bad_event`, `bad_response`, `http_error`. */
  code: string;
  /** Seconds to wait before retrying, from Retry-After, or null. */
  retryAfter: number | null;
  /** The service's request id, to quote when reporting a problem. */
  requestId: string | null;
}

/** Parses server-sent events from decoded text given in any pieces; calls onData with each event's data. */
export function createSSEParser(onData: (data: string) => void): (text: string) => void;

export default class KimiClient {
  constructor(options?: ClientOptions);
  baseURL: string;
  apiKey?: string;
  timeout: number;
  chat(message: string, options?: CompletionOptions): Promise<ChatResponse>;
  chatWithHistory(messages: ChatMessage[], options?: ChatOptions): Promise<ChatResponse>;
  chatStream(input: string | ChatMessage[], options?: StreamOptions): StreamHandle;
  getModels(options?: CallOptions): Promise<ModelsResponse>;
  health(options?: CallOptions): Promise<HealthResponse>;
  info(options?: CallOptions): Promise<InfoResponse>;
}
