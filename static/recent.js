// The list of recent conversations: open one, or delete it.
import { t } from './i18n.js';

/** Fills `list` with `records` (newest first); `current` is the id on screen. */
export function renderRecent(list, count, records, current, { onOpen, onDelete }) {
  count.textContent = String(records.length);
  list.replaceChildren(...records.map((record) => {
    const item = document.createElement('li');
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'open';
    open.textContent = record.title;
    open.title = new Date(record.updatedAt).toLocaleString();
    if (record.id === current) open.setAttribute('aria-current', 'true');
    open.addEventListener('click', () => onOpen(record));
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'delete';
    remove.textContent = '×';
    remove.setAttribute('aria-label', t('delete', { title: record.title }));
    remove.addEventListener('click', () => onDelete(record));
    item.append(open, remove);
    return item;
  }));
}
