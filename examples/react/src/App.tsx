import ChatComponent from './ChatComponent.jsx';
import HookChat from './HookChat';

/** The hook version, then the original README's component as it was written. */
export default function App() {
  return (
    <main>
      <h1>Kimi + React</h1>
      <HookChat />
      <section aria-labelledby="original-title">
        <h2 id="original-title">The original example</h2>
        <ChatComponent />
      </section>
    </main>
  );
}
