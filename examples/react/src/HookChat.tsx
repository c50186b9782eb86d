import { useEffect, useState } from 'react';

import { useKimiChat } from '../../../static/kimi-react.js';
import KimiClient, { type Model } from '../../../static/kimi-sdk.js';
import { KIMI_URL } from './config';

// Created once, outside the component: it keeps its browser token (if any) between renders.
const client = new KimiClient({ baseURL: KIMI_URL });

/** A streamed chat on useKimiChat: the conversation (reasoning included), a model picker, Stop, errors and usage. */
export default function HookChat() {
  const [models, setModels] = useState<Model[]>([]);
  const [model, setModel] = useState('');
  const { messages, input, setInput, send, stop, retry, status, error, usage } = useKimiChat({
    client,
    model: model || undefined,
  });
  const busy = status === 'submitted' || status === 'streaming';

  useEffect(() => {
    client.getModels().then((response) => setModels(response.data), () => setModels([]));
  }, []);

  return (
    <section aria-labelledby="hook-title">
      <h2 id="hook-title">useKimiChat</h2>
      <label>
        Model{' '}
        <select value={model} onChange={(event) => setModel(event.target.value)}>
          <option value="">Server default</option>
          {models.map((item) => <option key={item.id} value={item.id}>{item.id}</option>)}
        </select>
      </label>
      <ol className="messages">
        {messages.map((message, index) => (
          <li key={index} className={message.role}>
            {message.reasoning && (
              <details open={message.state === 'streaming'}>
                <summary>Thinking</summary>
                <p className="reasoning">{message.reasoning}</p>
              </details>
            )}
            <p className="content">{message.content}</p>
            {message.state && <small className="state">{message.state}</small>}
          </li>
        ))}
      </ol>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          send();
        }}
      >
        <textarea aria-label="Message" value={input} onChange={(event) => setInput(event.target.value)} />
        <button type="submit" disabled={busy}>Send</button>
        <button type="button" onClick={stop} disabled={!busy}>Stop</button>
        {status === 'error' && <button type="button" onClick={() => retry()}>Retry</button>}
      </form>
      <p className="status">Status: {status}</p>
      {error && <p role="alert">{error.message} ({error.code}{error.retryAfter != null && `, retry in ${error.retryAfter} s`})</p>}
      {usage && <p className="usage">Tokens: {usage.total_tokens}</p>}
    </section>
  );
}
