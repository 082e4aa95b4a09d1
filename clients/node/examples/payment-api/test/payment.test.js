'use strict';
// 20 concurrent PUT /payments/:id against the Express app with a real SQLite (sql.js)
// and a real turnstiled: exactly one provider charge with the lock; without it,
// every PUT charges (the fake provider holds each charge until all 20 are in
// flight, so the race is shown without depending on timing).

// describe with before/after rather than top-level test.before/test.after:
// Node's runner ran hooks on its root test only from 20.1 (nodejs/node#47518,
// #47944), and Debian's Node 18 may lack that fix; suite hooks work since 18.8.
const test = require('node:test');
const { describe, it, before, after } = test;
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { Client } = require('@turnstile/client');
const { startServer } = require('../../../support/turnstiled');
const { createApp } = require('../app');
const { Store } = require('../store');
const { Provider } = require('../provider');

/**
 * One HTTP request with a JSON body and answer. node:http rather than the
 * global fetch, which Node 18 marks experimental (a warning on every run).
 */
function request(method, url, body) {
  const data = body === undefined ? undefined : JSON.stringify(body);
  const headers = data === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) };
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (text += chunk));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

describe('the payment API with a real turnstiled', () => {
  const PUTS = 20;
  let turnstiled;
  let client;

  before(async () => {
    turnstiled = await startServer();
    client = new Client(turnstiled.grpc);
  });
  after(async () => {
    client.close();
    await turnstiled.stop();
  });

  async function withApp({ provider: providerOpts, ...opts }, fn) {
    const store = await Store.open(':memory:');
    const provider = new Provider(store, providerOpts);
    const app = createApp({ store, provider, client, ...opts });
    const server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    const base = `http://127.0.0.1:${server.address().port}`;
    try {
      return await fn({ base, store });
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      store.close();
    }
  }

  async function createPayment(base) {
    const r = await request('POST', `${base}/payments`, { amount_cents: 4200, currency: 'EUR' });
    assert.equal(r.status, 201);
    return r.body.id;
  }

  const putAll = (base, id) =>
    Promise.all(
      Array.from({ length: PUTS }, async () => {
        const r = await request('PUT', `${base}/payments/${id}`);
        return { status: r.status, body: r.body, retryAfter: r.headers['retry-after'] };
      }),
    );

  it('with the lock (try mode): 20 concurrent PUTs charge once; the others get 409 or the PAID payment', async () => {
    await withApp({ lockMode: 'try', provider: { delayMs: 300 } }, async ({ base, store }) => {
      const id = await createPayment(base);
      const responses = await putAll(base, id);
      assert.equal(store.chargeCount(id), 1, 'exactly one provider charge');
      const paid = store.get(id);
      assert.equal(paid.state, 'PAID');
      assert.notEqual(paid.fence, '0', 'the PAID write carries the holder fencing token');
      for (const r of responses) {
        assert.ok(r.status === 200 || r.status === 409, `status ${r.status}: ${JSON.stringify(r.body)}`);
        if (r.status === 409) {
          assert.equal(r.body.error, 'Resource is locked');
          assert.ok(Number(r.retryAfter) >= 1);
        } else {
          assert.equal(r.body.state, 'PAID');
          assert.equal(r.body.charge_id, paid.charge_id);
        }
      }
      assert.ok(responses.some((r) => r.status === 200));
    });
  });

  it('with the lock (wait mode): 20 concurrent PUTs queue in FIFO, charge once, and all answer PAID', async () => {
    await withApp({ lockMode: 'wait', provider: { delayMs: 100 } }, async ({ base, store }) => {
      const id = await createPayment(base);
      const responses = await putAll(base, id);
      assert.equal(store.chargeCount(id), 1, 'exactly one provider charge');
      for (const r of responses) {
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal(r.body.state, 'PAID');
      }
    });
  });

  it('without the lock: the same 20 PUTs all read EMPTY and charge the card 20 times (the bug)', async () => {
    await withApp({ lockMode: 'off', provider: { delayMs: 0, barrier: PUTS } }, async ({ base, store }) => {
      const id = await createPayment(base);
      await putAll(base, id);
      assert.equal(store.chargeCount(id), PUTS);
    });
  });
});

test('a stale token is fenced out: claim and PAID write refuse a holder whose lease passed on', async () => {
  const store = await Store.open(':memory:');
  const p = store.create(100, 'EUR');
  assert.ok(store.claim(p.id, 7n).claimed);
  assert.equal(store.claim(p.id, 6n).superseded, '7', 'an older token cannot claim');
  assert.equal(store.markPaidFenced(p.id, 'ch_old', 6n).fencedOut, '7', 'an older token cannot mark PAID');
  assert.equal(store.markPaidFenced(p.id, 'ch_new', 7n).applied.state, 'PAID');
  assert.ok(store.claim(p.id, 8n).alreadyPaid, 'a PAID payment is not claimed again');
  store.close();
});

test('a file store survives a reopen, with 64-bit fences exact', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payment-api-'));
  const file = path.join(dir, 'payments.db');
  const big = 2n ** 62n + 1n; // not exact as a JavaScript number
  try {
    let store = await Store.open(file);
    const p = store.create(100, 'EUR');
    assert.ok(store.claim(p.id, big).claimed);
    store.close();

    store = await Store.open(file);
    assert.equal(store.get(p.id).fence, big.toString());
    assert.equal(store.claim(p.id, big - 1n).superseded, big.toString(), 'an older token cannot claim');
    assert.equal(store.markPaidFenced(p.id, 'ch_1', big).applied.state, 'PAID');
    store.close();

    store = await Store.open(file);
    assert.equal(store.get(p.id).state, 'PAID');
    assert.equal(store.get(p.id).charge_id, 'ch_1');
    store.close();
    assert.deepEqual(fs.readdirSync(dir), ['payments.db'], 'no temporary file left behind');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
