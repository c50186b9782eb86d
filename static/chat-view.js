// The conversation on screen: one article per message, kept in step with the SDK's Conversation.
import { MarkdownView } from './markdown.js';
import { t } from './i18n.js';

/** A sentence for a reply's token usage. */
function usageText(usage) {
  return t('usage', { prompt: usage.prompt_tokens, completion: usage.completion_tokens, total: usage.total_tokens });
}

/** One message: the user's as plain text; a reply as Markdown, with its reasoning above it. */
class MessageView {
  constructor(message, onRetry) {
    this.message = null;
    this.item = document.createElement('article');
    this.item.className = `message ${message.role}`;
    const who = document.createElement('h2');
    who.textContent = t(message.role === 'user' ? 'you' : 'kimi');
    this.body = document.createElement('div');
    this.body.className = 'text';
    this.note = document.createElement('p');
    this.note.className = 'note';
    this.item.append(who, this.body, this.note);
    if (message.role === 'assistant') {
      this.markdown = new MarkdownView(this.body);
      this.retry = document.createElement('button');
      this.retry.type = 'button';
      this.retry.className = 'retry';
      this.retry.textContent = t('retry');
      this.retry.hidden = true;
      this.retry.addEventListener('click', onRetry);
      this.item.append(this.retry);
    }
  }

  /** Brings the article up to date with `message` (a new object whenever it changed). */
  update(message, isLast) {
    const before = this.message;
    this.message = message;
    this.isLast = isLast;
    if (message.role !== 'assistant') {
      this.body.textContent = message.content;
      return;
    }
    const streaming = message.state === 'streaming';
    if (message.reasoning) this.showReasoning(message.reasoning, streaming && !message.content);
    if (!before || message.content !== before.content || !streaming) this.markdown.show(message.content, !streaming);
    if (streaming) this.item.setAttribute('aria-busy', 'true');
    else this.item.removeAttribute('aria-busy');
    this.item.classList.toggle('stopped', message.state === 'stopped');
    this.item.classList.toggle('failed', message.state === 'failed');
    // A reply that failed before its first piece is not shown: the notice says why.
    this.item.hidden = message.state === 'failed' && !message.content && !message.reasoning;
    this.note.textContent = message.state === 'stopped' ? t('stopped')
      : message.state === 'failed' ? t('interrupted')
        : message.usage ? usageText(message.usage) : '';
    this.retry.hidden = !isLast || !['stopped', 'failed'].includes(message.state) || this.item.hidden;
  }

  /** The collapsible reasoning block: open while the model thinks, closed once the answer starts
   * (unless the reader opened or closed it), and grown by appending, not by re-rendering. */
  showReasoning(reasoning, thinking) {
    if (!this.reasoning) {
      this.reasoning = document.createElement('details');
      this.reasoning.className = 'reasoning';
      this.summary = document.createElement('summary');
      this.reasoningText = document.createTextNode('');
      const text = document.createElement('div');
      text.className = 'reasoning-text';
      text.append(this.reasoningText);
      this.reasoning.append(this.summary, text);
      this.reasoning.open = thinking;
      this.summary.addEventListener('click', () => { this.reasoningTouched = true; });
      this.body.before(this.reasoning);
    }
    const shown = this.reasoningText.data;
    if (reasoning.startsWith(shown)) this.reasoningText.appendData(reasoning.slice(shown.length));
    else this.reasoningText.data = reasoning;
    this.summary.textContent = t(thinking ? 'thinkingNow' : 'reasoning');
    if (!this.reasoningTouched) this.reasoning.open = thinking;
  }
}

/** The list of messages in `element`, updated from Conversation snapshots. */
export class ConversationView {
  constructor(element, empty, { onRetry }) {
    this.element = element;
    this.empty = empty;
    this.onRetry = onRetry;
    this.views = [];
    this.messages = null;
    this.scroll = null;
  }

  /** Shows `messages`: new ones are added, changed ones updated, removed ones taken away. */
  render(messages) {
    if (messages === this.messages) return;
    this.messages = messages;
    while (this.views.length > messages.length) this.views.pop().item.remove();
    messages.forEach((message, index) => {
      let view = this.views[index];
      if (!view) {
        view = new MessageView(message, this.onRetry);
        this.views.push(view);
        this.element.append(view.item);
      }
      const isLast = index === messages.length - 1;
      if (view.message !== message || view.isLast !== isLast) view.update(message, isLast);
    });
    this.empty.hidden = messages.length > 0;
    this.followEnd();
  }

  /** Keeps the newest text in view, scrolling at most once a frame. */
  followEnd() {
    if (this.scroll !== null || !this.views.length) return;
    this.scroll = requestAnimationFrame(() => {
      this.scroll = null;
      this.views.at(-1)?.item.scrollIntoView({ block: 'end' });
    });
  }

  /** Starts over with another conversation's messages. */
  reset(messages) {
    for (const view of this.views) view.item.remove();
    this.views = [];
    this.messages = null;
    this.render(messages);
  }

  /** The text of the last reply, as a screen reader should hear it. */
  lastReplyText() {
    const view = this.views.at(-1);
    return view && view.message.role === 'assistant' ? view.body.textContent.replace(/\s+/g, ' ').trim() : '';
  }
}
