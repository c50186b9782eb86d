// useKimiChat: a React hook over the SDK's Conversation, in the shape of the Vercel AI SDK's
// useChat. React comes from the app (a peer dependency, not bundled):
//
//   import { useKimiChat } from './kimi-react.js';
//   const { messages, input, setInput, send, stop, status, error, usage } = useKimiChat({ client });
import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';

// The statuses in which a reply is still arriving.
const BUSY = new Set(['submitted', 'streaming']);

/**
 * The state of one conversation with the service, and the functions that move it on.
 * Options: `client` (a KimiClient, created once, outside the component), `model`, `thinking`,
 * `via` (`stream`, `history` or `completion`) and the other send options, read at each send;
 * `system` and `initial` (a saved `conversation.toJSON()`), read once; `onFinish(outcome)` and
 * `onError(error)`. Returns `{messages, input, setInput, send, stop, retry, clear, status,
 * error, usage, conversation}`.
 */
export function useKimiChat({ client, system, initial, onFinish, onError, ...sendOptions } = {}) {
  const conversationRef = useRef(null);
  if (conversationRef.current === null) conversationRef.current = client.conversation({ system, ...initial });
  const conversation = conversationRef.current;
  conversation.client = client; // a new client (another key, say) takes over from the next send
  const { messages, status, error, usage } = useSyncExternalStore(conversation.subscribe, conversation.getSnapshot, conversation.getSnapshot);
  const [input, setInput] = useState('');

  // The latest options and input, so that send() stays one function across renders.
  const latest = useRef();
  latest.current = { input, sendOptions, onFinish, onError };

  /** Runs `call(options)` with the send options and callbacks of the latest render. */
  const start = useCallback((call) => {
    const { sendOptions: options, onFinish: finished, onError: failed } = latest.current;
    return call({
      ...options,
      onComplete: (outcome) => finished && finished(outcome),
      onError: (failure) => failed && failed(failure),
    // Nothing to retry is not an error to surface: the click just does nothing.
    }).catch((error) => (error.code === 'nothing_to_retry' ? null : Promise.reject(error)));
  }, []);

  /** Sends `text`, or else the input (which is then cleared). Resolves when the reply has ended;
   * to null, sending nothing, for empty text or while a reply is still arriving. */
  const send = useCallback((text) => {
    const content = typeof text === 'string' ? text : latest.current.input;
    if (!content.trim() || BUSY.has(conversation.status)) return Promise.resolve(null);
    if (typeof text !== 'string') setInput('');
    return start((options) => conversation.send(content, options));
  }, [conversation, start]);

  const retry = useCallback(() => (BUSY.has(conversation.status) ? Promise.resolve(null)
    : start((options) => conversation.retry(options))), [conversation, start]);
  const stop = useCallback(() => conversation.stop(), [conversation]);
  const clear = useCallback(() => conversation.clear(), [conversation]);

  // A reply still arriving when the component goes away is stopped: nobody would see it.
  useEffect(() => () => conversation.stop(), [conversation]);

  return { messages, input, setInput, send, stop, retry, clear, status, error, usage, conversation };
}
