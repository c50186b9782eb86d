// The test page: chats with the service through the SDK, in one of three modes.
import KimiClient from './kimi-sdk.js';
import { applyLabels, t } from './i18n.js';

// The service is wherever this file is served from (one level above /static/), prefix included.
const baseURL = new URL('..', import.meta.url).href.replace(/\/$/, '');

const ui = Object.fromEntries(
  ['upstream', 'model', 'api-key', 'conversation', 'empty', 'notice', 'composer', 'message', 'send', 'stop', 'clear']
    .map((id) => [id.replace(/-(\w)/g, (_, letter) => letter.toUpperCase()), document.getElementById(id)]),
);

// Completed turns, sent as context in the multi-turn and streaming modes.
const history = [];
let running = null;

function client() {
  return new KimiClient({ baseURL, apiKey: ui.apiKey.value.trim() || undefined });
}

function selectedMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

/** A sentence a person can act on, for any KimiError. */
function describe(error) {
  if (error.code === 'missing_api_key') return t('missingKey');
  if (error.status === 401) return t('invalidKey');
  if (error.status === 429) {
    return error.retryAfter == null ? t('rateLimited') : t('rateLimitedRetry', { seconds: Math.ceil(error.retryAfter) });
  }
  if (error.code === 'network_error') return t('network');
  if (error.code === 'timeout') return t('timeout');
  return t('failed', { message: error.message, code: error.code });
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = '';
}

function setRunning(controller) {
  running = controller;
  ui.send.disabled = Boolean(controller);
  ui.send.textContent = t(controller ? 'sending' : 'send');
  ui.stop.disabled = !controller;
}

/** Appends a message to the conversation view; returns its text and note elements. */
function addMessage(role, text) {
  ui.empty.hidden = true;
  const item = document.createElement('article');
  item.className = `message ${role}`;
  const who = document.createElement('h2');
  who.textContent = t(role === 'user' ? 'you' : 'kimi');
  const body = document.createElement('p');
  body.className = 'text';
  body.textContent = text;
  const note = document.createElement('p');
  note.className = 'note';
  item.append(who, body, note);
  ui.conversation.append(item);
  item.scrollIntoView({ block: 'end' });
  return { item, body, note };
}

/** Asks the service for a reply to `user` in the chosen mode; streamed text goes into `reply` as it arrives. */
async function ask(mode, user, reply, options) {
  const api = client();
  if (mode === 'single') {
    const { data } = await api.chat(user.content, options);
    reply.body.textContent = data.message;
    return { content: data.message, usage: data.usage };
  }
  if (mode === 'multi') {
    const { data } = await api.chatWithHistory([...history, user], options);
    reply.body.textContent = data.message;
    return { content: data.message, usage: data.usage };
  }
  // No onError: a failure rejects, so every mode's errors are handled in one place.
  return api.chatStream([...history, user], {
    ...options,
    onMessage: (piece) => {
      reply.body.append(piece);
      reply.item.scrollIntoView({ block: 'end' });
    },
  });
}

async function send(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text || running) return;
  hideNotice();
  const user = { role: 'user', content: text };
  addMessage('user', text);
  ui.message.value = '';
  const reply = addMessage('assistant', '');
  reply.item.setAttribute('aria-busy', 'true');
  const controller = new AbortController();
  setRunning(controller);
  try {
    const outcome = await ask(selectedMode(), user, reply, { model: ui.model.value || undefined, signal: controller.signal });
    if (outcome.aborted) {
      reply.note.textContent = t('stopped');
      reply.item.classList.add('stopped');
    } else {
      history.push(user, { role: 'assistant', content: outcome.content });
      if (outcome.usage) reply.note.textContent = t('usage', { prompt: outcome.usage.prompt_tokens, completion: outcome.usage.completion_tokens, total: outcome.usage.total_tokens });
    }
  } catch (error) {
    if (!error.code) throw error;
    if (error.code === 'aborted') {
      reply.note.textContent = t('stopped');
      reply.item.classList.add('stopped');
    } else {
      if (reply.body.textContent) {
        reply.note.textContent = t('interrupted');
        reply.item.classList.add('failed');
      } else {
        reply.item.remove();
      }
      showNotice(describe(error));
    }
  } finally {
    reply.item.removeAttribute('aria-busy');
    setRunning(null);
    ui.message.focus();
  }
}

function newConversation() {
  if (running) running.abort();
  history.length = 0;
  for (const message of ui.conversation.querySelectorAll('.message')) message.remove();
  ui.empty.hidden = false;
  hideNotice();
}

/** Fills the model picker from /api/chat/models, keeping the current choice. */
async function loadModels() {
  try {
    const { data } = await client().getModels();
    const chosen = ui.model.value;
    ui.model.replaceChildren(ui.model.options[0], ...data.map((model) => new Option(model.id, model.id)));
    ui.model.value = data.some((model) => model.id === chosen) ? chosen : '';
    hideNotice();
  } catch (error) {
    showNotice(describe(error));
  }
}

/** Shows whether the service talks to Moonshot or to its offline simulator. */
async function showUpstream() {
  try {
    const health = await client().health();
    ui.upstream.textContent = t(health.upstream === 'offline' ? 'offline' : 'live');
    ui.upstream.hidden = false;
  } catch {
    // loadModels reports an unreachable server; one notice is enough.
  }
}

applyLabels();
ui.composer.addEventListener('submit', send);
ui.message.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) ui.composer.requestSubmit();
});
ui.stop.addEventListener('click', () => running && running.abort());
ui.clear.addEventListener('click', newConversation);
ui.apiKey.addEventListener('change', loadModels);
document.getElementById('settings').addEventListener('submit', (event) => event.preventDefault());
showUpstream();
loadModels();
