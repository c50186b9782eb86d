import ChatComponent from './ChatComponent.jsx';
import HookChat from './HookChat';
import ReadmeChat from './ReadmeChat.jsx';

/** The hook in full, the README's hook example, and the original README's component as it was written. */
export default function App() {
  return (
    <main>
      <h1>Kimi + React</h1>
      <HookChat />
      <section aria-labelledby="readme-title">
        <h2 id="readme-title">The README's hook example</h2>
        <ReadmeChat />
      </section>
      <section aria-labelledby="original-title">
        <h2 id="original-title">The original example</h2>
        <ChatComponent />
      </section>
    </main>
  );
}
