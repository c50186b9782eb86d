// The test page: a chat with the service through the SDK's Conversation, in one of three modes,
// with conversations kept in this browser.
import KimiClient from './kimi-sdk.js';
import { ConversationView } from './chat-view.js';
import { applyLabels, t } from './i18n.js';
import { Notice } from './notice.js';
import { renderRecent } from './recent.js';
import * as store from './store.js';

// The service is wherever this file is served from (one level above /static/), prefix included.
const baseURL = new URL('..', import.meta.url).href.replace(/\/$/, '');
const BUSY = new Set(['submitted', 'streaming']);
const TITLE_LENGTH = 60;

const ui = Object.fromEntries(
  ['upstream', 'model', 'api-key', 'session-note', 'thinking', 'thinking-field', 'recent-list', 'recent-count',
    'conversation', 'empty', 'totals', 'notice', 'composer', 'message', 'send', 'stop', 'clear', 'announcer']
    .map((id) => [id.replace(/-(\w)/g, (_, letter) => letter.toUpperCase()), document.getElementById(id)]),
);
const notice = new Notice(ui.notice);
const view = new ConversationView(ui.conversation, ui.empty, { onRetry: () => ask((options) => conversation.retry(options)) });

// Calls without credentials (info, sessions); on anonymous session tokens when the service offers
// them; with the key typed in, which wins. Each client keeps its own token between calls.
const open = new KimiClient({ baseURL });
let sessions = null;
let keyed = null;
let models = [];
let defaultModel = null;
let conversation = null;
let unsubscribe = () => {};
let record = null; // the stored conversation on screen: {id, title, updatedAt}
let status = 'ready';

/** The client to send with: the key typed in, else session tokens, else none. */
function client() {
  const key = ui.apiKey.value.trim();
  if (!key) return sessions || open;
  if (!keyed || keyed.apiKey !== key) keyed = new KimiClient({ baseURL, apiKey: key });
  return keyed;
}

/** `stream`, `history` or `completion`: how the Conversation sends. */
function selectedMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

/** The model's entry from /api/chat/models: the one picked, or the server's default. */
function selectedModel() {
  const id = ui.model.value || defaultModel;
  return models.find((model) => model.id === id);
}

/** A sentence a person can act on, for any KimiError (429 with Retry-After counts down instead). */
function describe(error) {
  if (error.code === 'missing_api_key') return t('missingKey');
  if (error.code === 'token_expired') return t('tokenExpired');
  if (error.status === 401) return t('invalidKey');
  if (error.status === 429) return t('rateLimited');
  if (error.code === 'network_error') return t('network');
  if (error.code === 'timeout') return t('timeout');
  return t('failed', { message: error.message, code: error.code });
}

/** Says what went wrong in the notice (on behalf of `source`, see Notice.clear), and points
 * at the key field for a 401. */
function showError(error, source = null) {
  if (error.status === 429 && error.retryAfter != null) notice.countdown(Math.ceil(error.retryAfter), source);
  else notice.show(describe(error), source);
  if (error.status === 401 && error.code !== 'token_expired') {
    // The key is what to fix: say so on the field, and go there.
    ui.apiKey.setAttribute('aria-invalid', 'true');
    ui.apiKey.setAttribute('aria-describedby', 'notice');
    ui.apiKey.focus();
  }
}

/** Sends through the conversation with the page's settings; reports how the reply ended. */
async function ask(call) {
  notice.hide();
  const asked = conversation;
  asked.client = client();
  const choice = selectedModel();
  const outcome = await call({
    via: selectedMode(),
    model: ui.model.value || undefined,
    thinking: choice && choice.thinking === 'optional' ? ui.thinking.checked : undefined,
  });
  if (conversation !== asked) return; // another conversation was opened meanwhile
  if (outcome.error) {
    const reply = conversation.messages.at(-1);
    if (!reply.content && !reply.reasoning) {
      // Nothing came back: the turn is undone and its text goes back into the box, to send again.
      const text = conversation.undo();
      if (!ui.message.value) ui.message.value = text;
    }
    showError(outcome.error);
    if (outcome.error.status === 401) return;
  } else {
    ui.announcer.textContent = outcome.aborted ? t('stopped') : t('replied', { text: view.lastReplyText() });
  }
  ui.message.focus();
}

/** The message box's submit: sends its text as the next turn. */
function send(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text || BUSY.has(status)) return;
  ui.message.value = '';
  ask((options) => conversation.send(text, options));
}

/** Follows the conversation: the messages, the buttons, and storage whenever a reply starts or ends. */
function onChange(snapshot) {
  view.render(snapshot.messages);
  if (snapshot.status === status) return;
  status = snapshot.status;
  showStatus();
  showTotals();
  save();
}

/** Send and Stop, as a reply is or is not on its way. */
function showStatus() {
  const busy = BUSY.has(status);
  ui.send.disabled = busy;
  ui.send.textContent = t(busy ? 'sending' : 'send');
  ui.stop.disabled = !busy;
}

/** The tokens of the whole conversation, under the message box. */
function showTotals() {
  const { usage } = conversation;
  ui.totals.hidden = !usage;
  if (usage) ui.totals.textContent = t('totals', { total: usage.total_tokens, prompt: usage.prompt_tokens, completion: usage.completion_tokens });
}

/** Stores the conversation on screen as the newest one (or forgets it, when it has become empty). */
function save() {
  const first = conversation.messages.find((message) => message.role === 'user');
  if (first) {
    record = { ...record, title: first.content.slice(0, TITLE_LENGTH), updatedAt: Date.now() };
    store.saveConversation({ ...record, conversation: conversation.toJSON() });
  } else {
    store.deleteConversation(record.id);
  }
  showRecent();
}

/** The recent conversations list, the one on screen marked. */
function showRecent() {
  renderRecent(ui.recentList, ui.recentCount, store.loadConversations(), record.id, {
    onOpen: (chosen) => show(chosen),
    onDelete: (chosen) => {
      store.deleteConversation(chosen.id);
      if (chosen.id === record.id) show(null);
      else showRecent();
    },
  });
}

/** Puts a stored conversation on screen, or a new one (`null`). */
function show(stored) {
  unsubscribe();
  if (conversation) conversation.stop();
  conversation = open.conversation(stored ? stored.conversation : {});
  record = stored ? { id: stored.id, title: stored.title, updatedAt: stored.updatedAt } : { id: newId() };
  unsubscribe = conversation.subscribe(onChange);
  status = conversation.status;
  showStatus();
  view.reset(conversation.messages);
  showTotals();
  showRecent();
  notice.hide();
  saveSettings({ current: record.id });
}

/** An id for a new conversation (crypto.randomUUID needs HTTPS, and this page may be served without). */
function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Remembers `changes` to the settings: the mode, the thinking switch, the model (once the
 * list is in), and which conversation is on screen. */
function saveSettings(changes) {
  store.saveSettings({ ...store.loadSettings(), ...changes });
}

/** Remembers the choices made in the settings form. */
function saveChoices() {
  saveSettings({ mode: selectedMode(), thinking: ui.thinking.checked, ...(models.length ? { model: ui.model.value } : {}) });
}

/** The thinking switch, only for a model that lets it be turned off. */
function showThinkingSwitch() {
  const model = selectedModel();
  ui.thinkingField.hidden = !(model && model.thinking === 'optional');
}

/** Fills the model picker from /api/chat/models, keeping the current choice. */
async function loadModels() {
  try {
    ({ data: models } = await client().getModels());
    const chosen = ui.model.value || store.loadSettings().model;
    ui.model.replaceChildren(ui.model.options[0], ...models.map((model) => new Option(model.id, model.id)));
    ui.model.value = models.some((model) => model.id === chosen) ? chosen : '';
    // Only the list's own failure is taken back: the key field's change event starts this load
    // as the user moves on to send, and that send's error may already be showing.
    notice.clear('models');
  } catch (error) {
    showError(error, 'models');
  }
  showThinkingSwitch();
}

/** What the service offers: its mode, its default model, and anonymous sessions. */
async function loadInfo() {
  try {
    const { data } = await open.info();
    ui.upstream.textContent = t(data.upstream.mode === 'offline' ? 'offline' : 'live');
    ui.upstream.hidden = false;
    defaultModel = data.defaultModel;
    if (defaultModel) ui.model.options[0].textContent = `${t('serverDefault')} (${defaultModel})`;
    if (data.auth && data.auth.anonymousSessions) {
      sessions = new KimiClient({ baseURL, getToken: async () => (await open.createSession()).data });
      ui.sessionNote.hidden = false;
    }
  } catch {
    // loadModels reports an unreachable server; one notice is enough.
  }
}

/** The settings, the key and the conversation on screen, as they were before the reload. */
function restore() {
  const settings = store.loadSettings();
  const mode = document.querySelector(`input[name="mode"][value="${settings.mode}"]`);
  if (mode) mode.checked = true;
  if (typeof settings.thinking === 'boolean') ui.thinking.checked = settings.thinking;
  ui.apiKey.value = store.loadKey();
  show(store.loadConversations().find((stored) => stored.id === settings.current) || null);
}

applyLabels();
restore();
ui.composer.addEventListener('submit', send);
ui.message.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) ui.composer.requestSubmit();
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && BUSY.has(status)) conversation.stop();
});
ui.stop.addEventListener('click', () => conversation.stop());
ui.clear.addEventListener('click', () => {
  show(null);
  ui.message.focus();
});
ui.apiKey.addEventListener('change', () => {
  ui.apiKey.removeAttribute('aria-invalid');
  ui.apiKey.setAttribute('aria-describedby', 'session-note');
  store.saveKey(ui.apiKey.value.trim());
  loadModels();
});
ui.model.addEventListener('change', showThinkingSwitch);
document.getElementById('settings').addEventListener('change', saveChoices);
document.getElementById('settings').addEventListener('submit', (event) => event.preventDefault());
loadInfo().then(loadModels);
