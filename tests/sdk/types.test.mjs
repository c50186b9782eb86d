// kimi-sdk.d.ts declares every public method and export of kimi-sdk.js, so typed callers see all of it.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import KimiClient, * as sdk from '../../static/kimi-sdk.js';

const types = await readFile(new URL('../../static/kimi-sdk.d.ts', import.meta.url), 'utf8');

test('every public KimiClient method is declared', () => {
  const methods = Object.getOwnPropertyNames(KimiClient.prototype).filter((name) => name !== 'constructor');
  assert.ok(methods.length >= 6);
  for (const name of methods) assert.match(types, new RegExp(`\\n  ${name}\\(`), `${name} is missing from kimi-sdk.d.ts`);
});

test('every export is declared', () => {
  for (const name of Object.keys(sdk)) {
    const declared = name === 'default' ? /export default class KimiClient/ : new RegExp(`export (class|function) ${name}\\b`);
    assert.match(types, declared, `${name} is missing from kimi-sdk.d.ts`);
  }
});
