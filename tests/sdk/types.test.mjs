// kimi-sdk.d.ts and kimi-react.d.ts declare every public method and export of their modules, so
// typed callers see all of it. (tests/test_react_example.py compiles a typed app against both.)
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import KimiClient, * as sdk from '../../static/kimi-sdk.js';

const types = await readFile(new URL('../../static/kimi-sdk.d.ts', import.meta.url), 'utf8');
const reactTypes = await readFile(new URL('../../static/kimi-react.d.ts', import.meta.url), 'utf8');
const reactSource = await readFile(new URL('../../static/kimi-react.js', import.meta.url), 'utf8');

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

test('every public Conversation method and property is declared', () => {
  const conversation = new sdk.Conversation(new KimiClient());
  const members = [
    ...Object.getOwnPropertyNames(sdk.Conversation.prototype).filter((name) => name !== 'constructor'),
    ...Object.keys(conversation),
  ];
  assert.ok(members.includes('send') && members.includes('subscribe'));
  for (const name of members) assert.match(types, new RegExp(`\\n  (readonly )?${name}[(?:]`), `Conversation.${name} is missing from kimi-sdk.d.ts`);
});

test('the hook module\'s exports are declared', () => {
  const exported = [...reactSource.matchAll(/^export function (\w+)/gm)].map((match) => match[1]);
  assert.deepEqual(exported, ['useKimiChat']);
  for (const name of exported) assert.match(reactTypes, new RegExp(`export function ${name}\\(`));
});

