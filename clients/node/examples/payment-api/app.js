'use strict';
// Problem 1 of docs/design.md (the double payment), fixed in Express the way
// crates/payment-service fixes it: a turnstile lease on `payment:{id}` around
// read -> charge -> write, a claim of the row before charging, and a fenced
// PAID write (`... WHERE fence = :token`), so a holder whose lease passed to
// someone else can never mark the payment.

const express = require('express');
const { ContendedError } = require('@turnstile/client');

class ApiError extends Error {
  constructor(status, message, headers = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

/**
 * @param {object} deps
 * @param {import('./store').Store} deps.store
 * @param {import('./provider').Provider} deps.provider
 * @param {import('@turnstile/client').Client} [deps.client] absent with lockMode 'off'
 * @param {'try'|'wait'|'off'} [deps.lockMode] try: 409 at once; wait: queue in FIFO; off: the bug
 * @param {number} [deps.lockTtlMs]
 * @param {number} [deps.lockWaitMs]
 */
function createApp({ store, provider, client, lockMode = 'try', lockTtlMs = 10_000, lockWaitMs = 30_000 }) {
  const app = express();
  app.use(express.json());

  app.post('/payments', (req, res) => {
    const { amount_cents: amount, currency = 'EUR' } = req.body || {};
    if (!Number.isInteger(amount) || amount <= 0) {
      return res.status(400).json({ error: 'amount_cents must be a positive integer' });
    }
    res.status(201).json(store.create(amount, String(currency)));
  });

  app.get('/payments/:id', (req, res) => {
    const p = store.get(Number(req.params.id));
    if (!p) return res.status(404).json({ error: 'not found' });
    res.json(p);
  });

  app.put('/payments/:id', async (req, res) => {
    const id = Number(req.params.id);
    try {
      const payment = lockMode === 'off' ? await conductUnlocked(id) : await conductLocked(id);
      res.json(payment);
    } catch (err) {
      if (!(err instanceof ApiError)) {
        console.error(err);
        return res.status(500).json({ error: String(err.message || err) });
      }
      res.set(err.headers).status(err.status).json({ error: err.message });
    }
  });

  async function conductLocked(id) {
    let guard;
    try {
      guard = await client.lock(`payment:${id}`, { ttlMs: lockTtlMs, waitMs: lockMode === 'try' ? 0 : lockWaitMs });
    } catch (err) {
      if (err instanceof ContendedError) {
        const retry = err.expiresInMs === undefined ? 1 : Math.max(1, Math.ceil(err.expiresInMs / 1000));
        throw new ApiError(409, 'Resource is locked', { 'Retry-After': String(retry) });
      }
      throw new ApiError(503, `lock service unavailable: ${err.message}`);
    }
    try {
      return await conductFenced(id, guard);
    } finally {
      await guard.release().catch(() => {}); // a lost lease was already handled by the fence
    }
  }

  async function conductFenced(id, guard) {
    const token = guard.fencingToken;
    // 1. Claim the row before charging.
    const claim = store.claim(id, token);
    if (claim.missing) throw new ApiError(404, 'not found');
    if (claim.alreadyPaid) return claim.alreadyPaid; // nothing to charge
    if (claim.superseded !== undefined) {
      throw new ApiError(409, `lease lost: payment ${id} is owned by token ${claim.superseded}; charged nothing`);
    }
    // 2. The guard already knows the lease is lost: stop before charging.
    if (guard.lostReason !== null) {
      throw new ApiError(409, `lease lost before charging (${guard.lostReason}); charged nothing`);
    }
    // 3. Charge. Not cancelled on loss: the charge is booked once the request reaches the provider.
    const chargeId = await provider.charge(claim.claimed);
    // 4. The fenced write.
    const written = store.markPaidFenced(id, chargeId, token);
    if (written.applied) return written.applied;
    if (written.missing) throw new ApiError(404, 'not found');
    throw new ApiError(
      409,
      `fenced out: token ${token} lost payment ${id} to token ${written.fencedOut}; charge ${chargeId} needs a refund`,
    );
  }

  // The bug of problem 1, kept to show it: read, slow charge, write.
  async function conductUnlocked(id) {
    const p = store.get(id);
    if (!p) throw new ApiError(404, 'not found');
    if (p.state === 'PAID') return p;
    const chargeId = await provider.charge(p);
    store.markPaidUnfenced(id, chargeId);
    return store.get(id);
  }

  return app;
}

module.exports = { createApp };
