// The package imports from ESM with named exports (Node's CommonJS lexer must see them).
import test from 'node:test';
import assert from 'node:assert/strict';
import { Client, LockGuard, TurnstileError, InvalidArgumentError, ContendedError, LeaseLostError, Status } from '../src/index.js';

test('named ESM imports', () => {
  for (const v of [Client, LockGuard, TurnstileError, InvalidArgumentError, ContendedError, LeaseLostError]) {
    assert.equal(typeof v, 'function');
  }
  assert.equal(Status.NOT_FOUND, 5);
});
