'use strict';
// @turnstile/client: the Node.js client of the turnstile lock coordinator.
// See README.md. CommonJS, so that both `require` and ESM `import` load it
// without a build step, on Node 18 and later.

const { Client } = require('./client');
const { LockGuard } = require('./guard');
const errors = require('./errors');

module.exports = {
  Client,
  LockGuard,
  TurnstileError: errors.TurnstileError,
  InvalidArgumentError: errors.InvalidArgumentError,
  ContendedError: errors.ContendedError,
  LeaseLostError: errors.LeaseLostError,
  Status: errors.Status,
};
