'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { decodeDetails } = require('../src/errors');

// Hand-encoded protobuf, to check the decoder without a server.
const ld = (field, buf) => Buffer.concat([Buffer.from([(field << 3) | 2, buf.length]), buf]);
const s = (x) => Buffer.from(x);

test('google.rpc.BadRequest and ErrorInfo details are decoded', () => {
  const violation = Buffer.concat([ld(1, s('key')), ld(2, s('must not be empty'))]);
  const badRequest = ld(1, violation);
  const anyBad = Buffer.concat([ld(1, s('type.googleapis.com/google.rpc.BadRequest')), ld(2, badRequest)]);
  const info = Buffer.concat([ld(1, s('TOO_MANY_WAITERS')), ld(2, s('turnstile.v1')), ld(3, Buffer.concat([ld(1, s('limit')), ld(2, s('10'))]))]);
  const anyInfo = Buffer.concat([ld(1, s('type.googleapis.com/google.rpc.ErrorInfo')), ld(2, info)]);
  const status = Buffer.concat([Buffer.from([0x08, 3]), ld(2, s('key: must not be empty')), ld(3, anyBad), ld(3, anyInfo)]);
  const d = decodeDetails(status);
  assert.deepEqual(d.badRequest.fieldViolations, [{ field: 'key', description: 'must not be empty' }]);
  assert.equal(d.errorInfo.reason, 'TOO_MANY_WAITERS');
  assert.equal(d.errorInfo.metadata.limit, '10');
});
