// What the test page keeps in the browser: recent conversations (with their reasoning, to send
// back) and the settings in localStorage; the API key only in sessionStorage (this tab, until closed).

const CONVERSATIONS = 'kimi-test-page.conversations';
const SETTINGS = 'kimi-test-page.settings';
const KEY = 'kimi-test-page.api-key';
const KEEP = 20;

/** The JSON stored under `name`, or `fallback`. */
function read(storage, name, fallback) {
  try {
    return JSON.parse(storage.getItem(name)) ?? fallback;
  } catch {
    return fallback; // unreadable or not JSON: start afresh
  }
}

/** The stored conversations, newest first: `[{id, title, updatedAt, conversation}]`. */
export function loadConversations() {
  const records = read(localStorage, CONVERSATIONS, []);
  return Array.isArray(records) ? records.filter((record) => record && record.id && record.conversation) : [];
}

/** Stores `record` as the newest conversation (replacing its older copy), keeping the newest few.
 * When the browser's quota is full, the oldest go first. */
export function saveConversation(record) {
  let records = [record, ...loadConversations().filter((other) => other.id !== record.id)].slice(0, KEEP);
  while (records.length) {
    try {
      localStorage.setItem(CONVERSATIONS, JSON.stringify(records));
      return;
    } catch {
      records = records.slice(0, -1);
    }
  }
}

/** Forgets one conversation. */
export function deleteConversation(id) {
  localStorage.setItem(CONVERSATIONS, JSON.stringify(loadConversations().filter((record) => record.id !== id)));
}

/** `{model, mode, thinking, current}` as last chosen. */
export function loadSettings() {
  return read(localStorage, SETTINGS, {});
}

/** Stores the settings (all of them: merge before). */
export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

/** The API key typed in this tab (kept across reloads, gone with the tab). */
export function loadKey() {
  return sessionStorage.getItem(KEY) || '';
}

/** Keeps `key` for this tab; an empty one is forgotten. */
export function saveKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}
