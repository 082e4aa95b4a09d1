'use strict';
// @turnstile/client: the Node.js client of the turnstile lock coordinator.
// See README.md. CommonJS, so that both `require` and ESM `import` load it
// without a build step, on Node 18 and later. The exports are written in the
// shorthand form that Node's CommonJS lexer sees, so that
// `import { Client } from '@turnstile/client'` works.

const { Client } = require('./client');
const { LockGuard } = require('./guard');
const { TurnstileError, InvalidArgumentError, ContendedError, LeaseLostError, Status } = require('./errors');

module.exports = {
  Client,
  LockGuard,
  TurnstileError,
  InvalidArgumentError,
  ContendedError,
  LeaseLostError,
  Status,
};
