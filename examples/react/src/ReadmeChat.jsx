import KimiClient from '../../../static/kimi-sdk.js';
import { useKimiChat } from '../../../static/kimi-react.js';
import { KIMI_URL } from './config';

const client = new KimiClient({ baseURL: KIMI_URL });

export default function Chat() {
  const { messages, input, setInput, send, stop, status, error, usage } = useKimiChat({ client });
  const busy = status === 'submitted' || status === 'streaming';

  return (
    <div>
      {messages.map((message, index) => (
        <div key={index} className={message.role}>
          {message.reasoning && <details><summary>思考过程</summary>{message.reasoning}</details>}
          <p>{message.content}</p>
        </div>
      ))}
      <form onSubmit={(event) => { event.preventDefault(); send(); }}>
        <textarea value={input} onChange={(event) => setInput(event.target.value)} />
        <button type="submit" disabled={busy}>发送</button>
        <button type="button" onClick={stop} disabled={!busy}>停止</button>
      </form>
      {error && <p role="alert">{error.message}</p>}
      {usage && <p>Tokens: {usage.total_tokens}</p>}
    </div>
  );
}
