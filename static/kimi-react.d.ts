// Types for kimi-react.js, the React hook of the Kimi Backend JavaScript SDK.
import type { Dispatch, SetStateAction } from 'react';

import type KimiClient from './kimi-sdk.js';
import type {
  Conversation, ConversationMessage, ConversationStatus, KimiError, SavedConversation, SendOptions, StreamOutcome, Usage,
} from './kimi-sdk.js';

export interface UseKimiChatOptions extends Omit<SendOptions, 'onComplete' | 'onError'> {
  /** The client to send with: create it once, outside the component. */
  client: KimiClient;
  /** A system prompt for the whole conversation (read once). */
  system?: string;
  /** A conversation to start from: what `conversation.toJSON()` returned (read once). */
  initial?: Partial<SavedConversation>;
  /** A reply ended normally. */
  onFinish?: (outcome: StreamOutcome) => void;
  /** A reply failed (the error is also in `error`). */
  onError?: (error: KimiError) => void;
}

export interface UseKimiChatResult {
  /** The conversation, oldest first; the last reply grows as it streams. */
  messages: readonly ConversationMessage[];
  /** The text field's value, for a controlled input. */
  input: string;
  setInput: Dispatch<SetStateAction<string>>;
  /** Sends `text`, or else the input (which is then cleared). Resolves when the reply has ended;
   *  to null, sending nothing, for empty text or while a reply is still arriving. */
  send: (text?: string) => Promise<StreamOutcome | null>;
  /** Stops the reply in progress; its text so far stays. */
  stop: () => void;
  /** Sends the last user message again, in place of its reply (null: nothing to send, or a reply still arriving). */
  retry: () => Promise<StreamOutcome | null>;
  /** Empties the conversation. */
  clear: () => void;
  /** `ready`, `submitted` (waiting for the first piece), `streaming` or `error`. */
  status: ConversationStatus;
  /** The last reply's error, or null. */
  error: KimiError | null;
  /** The tokens of every reply so far, added up. */
  usage: Usage | null;
  /** The Conversation underneath, e.g. to save `conversation.toJSON()`. */
  conversation: Conversation;
}

export function useKimiChat(options: UseKimiChatOptions): UseKimiChatResult;
