'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const s = require('../src/schedule');

test('validity counts from the send time, not the reply', () => {
  assert.equal(s.validUntil(1000, 3000), 4000);
});

test('renewal comes at a third of the TTL, before the validity ends', () => {
  assert.equal(s.renewAt(1000, 3000), 2000);
  assert.ok(s.renewAt(1000, 3000) < s.validUntil(1000, 3000));
});

test('retry delays are bounded', () => {
  assert.equal(s.renewRetryDelay(50), 10);
  assert.equal(s.renewRetryDelay(3000), 300);
  assert.equal(s.renewRetryDelay(3_600_000), 500);
  assert.equal(s.backoff(0), 50);
  assert.equal(s.backoff(1), 100);
  assert.equal(s.backoff(40), 1000);
});

test('a grant after a long wait is confirmed', () => {
  assert.equal(s.needsConfirmation(0, 10, 3000), false);
  assert.equal(s.needsConfirmation(0, 2000, 3000), true);
});

test('long waits are split into calls', () => {
  assert.equal(s.waitForCall(null), s.MAX_WAIT_PER_CALL_MS);
  assert.equal(s.waitForCall(1000), 1000);
  assert.equal(s.waitForCall(3_600_000), s.MAX_WAIT_PER_CALL_MS);
});
