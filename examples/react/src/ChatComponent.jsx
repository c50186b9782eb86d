import { useState } from 'react';
import KimiClient from '../../../static/kimi-sdk.js';
import { KIMI_URL } from './config';

const client = new KimiClient({ baseURL: KIMI_URL });

export default function ChatComponent() {
  const [message, setMessage] = useState('');
  const [response, setResponse] = useState('');
  const [loading, setLoading] = useState(false);

  const handleSubmit = async (event) => {
    event.preventDefault();
    setLoading(true);
    try {
      const result = await client.chat(message);
      setResponse(result.data.message);
    } catch (error) {
      console.error('Error:', error);
    } finally {
      setLoading(false);
    }
  };

  return (
    <div>
      <form onSubmit={handleSubmit}>
        <textarea
          value={message}
          onChange={(event) => setMessage(event.target.value)}
          placeholder="输入你的消息…"
        />
        <button type="submit" disabled={loading}>
          {loading ? '发送中…' : '发送'}
        </button>
      </form>
      {response && (
        <div>
          <h3>回复</h3>
          <p>{response}</p>
        </div>
      )}
    </div>
  );
}
