// The notice above the message box: what went wrong and what to do, with a live countdown
// for a rate limit's Retry-After.
import { around, t } from './i18n.js';

export class Notice {
  constructor(element) {
    this.element = element;
    this.timer = null;
    this.source = null;
  }

  /** Shows `text` (announced: the notice is an alert), put up by `source` (see clear). */
  show(text, source = null) {
    this.stopCountdown();
    this.element.textContent = text;
    this.element.hidden = false;
    this.source = source;
  }

  /** "Try again in N s", counting down to "You can send again". Only the first and last texts
   * are announced: the ticking number is in a part that is not live. */
  countdown(seconds, source = null) {
    this.stopCountdown();
    this.source = source;
    const deadline = Date.now() + seconds * 1000;
    const [before, after] = around('rateLimitedRetry', 'seconds');
    const number = document.createElement('span');
    number.setAttribute('aria-live', 'off');
    const tick = () => {
      const left = Math.ceil((deadline - Date.now()) / 1000);
      if (left > 0) number.textContent = String(left);
      else this.show(t('rateLimitOver'), this.source);
    };
    this.element.replaceChildren(before, number, after);
    this.element.hidden = false;
    this.timer = setInterval(tick, 1000);
    tick();
  }

  /** Empties and hides the notice. */
  hide() {
    this.stopCountdown();
    this.element.hidden = true;
    this.element.textContent = '';
    this.source = null;
  }

  /** Hides the notice only if `source` put it up: a background task that succeeds takes back
   * its own failure, never a newer notice about something else. */
  clear(source) {
    if (this.source === source) this.hide();
  }

  /** Ends a countdown in progress, if any. */
  stopCountdown() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
