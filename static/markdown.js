// Replies as Markdown, safely: parsed by marked, its HTML shown as text, the result cleaned by
// DOMPurify (nothing in a reply runs or loads anything), rendered incrementally while it streams.
import DOMPurify from './vendor/purify.es.mjs';
import { Marked } from './vendor/marked.esm.js';
import { t } from './i18n.js';

// HTML in a reply is shown as text, except a few tags without attributes (<br> in a table, say).
// It must not even reach a parser: Chromium reports inline handlers (onerror=...) as CSP
// violations while parsing, before DOMPurify could take them out.
const PLAIN_TAG = /^<\/?(br|b|i|em|strong|u|s|sub|sup|kbd|mark|small)\s*\/?>$/i;

const markdown = new Marked({
  gfm: true,
  renderer: {
    html({ text, block }) {
      if (PLAIN_TAG.test(text.trim())) return text;
      return block ? `<p>${escapeText(text)}</p>` : escapeText(text);
    },
    // An image would load from wherever the reply says: show its address as a link instead.
    image({ href, text }) {
      return `<a href="${escapeAttribute(href)}">${escapeText(text || href)}</a>`;
    },
  },
});

const purifier = DOMPurify(window);
purifier.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});
const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  USE_PROFILES: { html: true },
  // Nothing that loads, plays, submits or styles: the page's CSP allows no inline style either.
  FORBID_TAGS: ['img', 'picture', 'video', 'audio', 'source', 'track', 'style', 'form', 'input', 'button', 'textarea', 'select'],
  FORBID_ATTR: ['style', 'class', 'id', 'srcset'],
  ADD_ATTR: ['target'],
};

/** Text safe between tags. */
function escapeText(text) {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Text safe in a double-quoted attribute. */
function escapeAttribute(text) {
  return escapeText(text).replace(/"/g, '&quot;');
}

/** Safe DOM for some Markdown tokens: wide tables scroll on their own, code blocks get a copy button. */
function render(tokens) {
  const fragment = purifier.sanitize(markdown.parser(tokens), PURIFY);
  for (const table of fragment.querySelectorAll('table')) {
    const scroller = document.createElement('div');
    scroller.className = 'table-scroll';
    table.replaceWith(scroller);
    scroller.append(table);
  }
  // The clipboard is there only on HTTPS and localhost; elsewhere code is copied by selecting it.
  for (const pre of navigator.clipboard ? fragment.querySelectorAll('pre') : []) {
    const copy = document.createElement('button');
    copy.type = 'button';
    copy.className = 'copy';
    copy.textContent = t('copy');
    copy.addEventListener('click', async () => {
      await navigator.clipboard.writeText(pre.querySelector('code')?.textContent ?? pre.textContent);
      copy.textContent = t('copied');
    });
    const block = document.createElement('div');
    block.className = 'code-block';
    pre.replaceWith(block);
    block.append(copy, pre);
  }
  return fragment;
}

/**
 * One reply's Markdown in an element. While the reply grows, the blocks that are complete are
 * rendered once and kept; only the last, still open block is rendered again, at most once a
 * frame. So a long reply costs about the same per piece at its end as at its start.
 */
export class MarkdownView {
  constructor(element) {
    this.element = element;
    this.source = '';
    this.done = 0; // length of `source` rendered into kept blocks
    this.tail = document.createElement('div');
    this.tail.className = 'tail';
    this.element.append(this.tail);
    this.frame = null;
  }

  /** Shows `source`, the whole reply so far; `final` when no more will come. */
  show(source, final = false) {
    const text = source.replace(/\r\n?/g, '\n');
    if (!text.startsWith(this.source.slice(0, this.done))) this.reset();
    this.source = text;
    if (final) {
      cancelAnimationFrame(this.frame);
      this.frame = null;
      this.update(true);
    } else if (this.frame === null) {
      this.frame = requestAnimationFrame(() => {
        this.frame = null;
        this.update(false);
      });
    }
  }

  /** Starts over (the text changed other than by growing). */
  reset() {
    this.element.replaceChildren(this.tail);
    this.done = 0;
  }

  /** Renders what is new: complete blocks to keep (all of them when final), the open one as the tail. */
  update(final) {
    const pending = this.source.slice(this.done);
    const tokens = markdown.lexer(pending);
    let keep = final ? tokens.length : lastBlock(tokens);
    // The offsets hold only if the tokens cover the text exactly; if not, keep nothing yet.
    if (!final && tokens.map((token) => token.raw).join('') !== pending) keep = 0;
    if (keep > 0) {
      const kept = tokens.slice(0, keep);
      this.tail.before(render(kept));
      this.done += kept.reduce((length, token) => length + token.raw.length, 0);
    }
    this.tail.replaceChildren(render(tokens.slice(keep)));
  }
}

/** The index of the last block that is not blank space: the one that may still grow. */
function lastBlock(tokens) {
  for (let i = tokens.length - 1; i >= 0; i -= 1) {
    if (tokens[i].type !== 'space') return i;
  }
  return 0;
}
