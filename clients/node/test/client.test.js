'use strict';
// The client against a real turnstiled (support/turnstiled.js starts one per file).
// No sleep waits for a state: states are polled with a deadline (eventually);
// the sleeps that remain let time pass on purpose (a lease outliving its TTL).

// describe with before/after rather than top-level test.before/test.after:
// Node's runner ran hooks on its root test only from 20.1 (nodejs/node#47518,
// #47944), and Debian's Node 18 may lack that fix; suite hooks work since 18.8.
// The it() callbacks take no test context (early Node 18 releases pass none to it()).
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { performance } = require('node:perf_hooks');
const { setTimeout: sleep } = require('node:timers/promises');
const { startServer, eventually } = require('../support/turnstiled');
const { Client, ContendedError, LeaseLostError, InvalidArgumentError, TurnstileError, Status } = require('../src');

describe('the client against a real turnstiled', () => {
  let server;
  let client;
  let admin;
  let n = 0;
  const key = (what) => `node-test:${what}:${++n}`;

  before(async () => {
    server = await startServer();
    client = new Client(server.grpc, { ttlMs: 2000 });
    admin = new Client(server.grpc, { owner: 'admin' });
  });
  after(async () => {
    client.close();
    admin.close();
    await server.stop();
  });

  /** Resolves with the promise's value, or fails the test after `ms` (a deadline, not a timing claim). */
  function within(promise, what, ms = 20_000) {
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for: ${what}`)), ms);
    });
    return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
  }

  it('a lock is exclusive and every grant has a larger fencing token', async () => {
    const k = key('exclusive');
    const a = await client.lock(k);
    assert.equal(typeof a.fencingToken, 'bigint');
    await assert.rejects(client.tryLock(k), (e) => {
      assert.ok(e instanceof ContendedError);
      assert.equal(e.holder, a.owner);
      assert.ok(e.expiresInMs > 0);
      return true;
    });
    await a.release();
    const b = await client.tryLock(k);
    assert.ok(b.fencingToken > a.fencingToken, `${b.fencingToken} > ${a.fencingToken}`);
    await b.release();
    const c = await client.lock(k, { waitMs: 1000 });
    assert.ok(c.fencingToken > b.fencingToken);
    await c.release();
    await c.release(); // idempotent: the same outcome again
    assert.equal(c.isValid, false);
    assert.equal((await admin.get(k)).held, false);
  });

  it('waiters are granted in FIFO order', async () => {
    const k = key('fifo');
    const holder = await client.lock(k);
    const order = [];
    const waiters = [];
    for (let i = 1; i <= 4; i++) {
      waiters.push(
        client.lock(k).then(async (g) => {
          order.push(i);
          await g.release();
        }),
      );
      // Park waiter i before asking for i+1, so the arrival order is known.
      await eventually(async () => (await admin.get(k)).waiters === i, `waiter ${i} parked`);
    }
    await holder.release();
    await within(Promise.all(waiters), 'all waiters granted');
    assert.deepEqual(order, [1, 2, 3, 4]);
  });

  it('a wait that runs out is ContendedError, and the waiter leaves the queue', async () => {
    const k = key('wait-timeout');
    const holder = await client.lock(k);
    await assert.rejects(client.lock(k, { waitMs: 200 }), ContendedError);
    assert.equal((await admin.get(k)).waiters, 0);
    await holder.release();
  });

  it('an aborted wait leaves the queue and is never granted', async () => {
    const k = key('abort-wait');
    const holder = await client.lock(k);
    const ac = new AbortController();
    const waiting = client.lock(k, { signal: ac.signal });
    await eventually(async () => (await admin.get(k)).waiters === 1, 'waiter parked');
    ac.abort(new Error('gave up'));
    await assert.rejects(waiting, /gave up/);
    await eventually(async () => (await admin.get(k)).waiters === 0, 'waiter removed');
    await holder.release();
    assert.equal((await admin.get(k)).held, false);
  });

  it('renewals keep a lease past its TTL', async () => {
    const k = key('renew');
    const ttlMs = 1000; // long enough that a stalled machine does not lose it between renews
    const g = await client.lock(k, { ttlMs });
    const start = performance.now();
    while (performance.now() - start < 2.5 * ttlMs) {
      await sleep(50); // time passing is the scenario here
      assert.equal(g.isValid, true, 'still held');
    }
    const info = await admin.get(k);
    assert.equal(info.held, true);
    assert.equal(info.fencingToken, g.fencingToken);
    assert.equal(info.owner, g.owner);
    await assert.rejects(client.tryLock(k), ContendedError);
    await g.release();
  });

  it('loss is signalled when the coordinator says the lease ended (Renew NOT_FOUND)', async () => {
    const k = key('lost-ended');
    const g = await client.lock(k, { ttlMs: 1500 }); // renewed (and refused) at 500 ms
    assert.equal(g.signal.aborted, false);
    assert.equal(await admin.release(k, g.fencingToken), true); // an operator ends it
    assert.equal(await within(g.lost, 'guard.lost'), 'ended');
    assert.equal(g.signal.aborted, true);
    assert.ok(g.signal.reason instanceof LeaseLostError);
    assert.equal(g.isValid, false);
    assert.throws(() => g.throwIfLost(), LeaseLostError);
    await assert.rejects(g.release(), (e) => e instanceof LeaseLostError && e.reason === 'ended');
  });

  it('withLock aborts the work signal on loss and rejects with LeaseLostError', async () => {
    const k = key('with-lock');
    let seen;
    const running = client.withLock(
      k,
      (signal, token) =>
        new Promise((resolve, reject) => {
          seen = { signal, token };
          signal.addEventListener('abort', () => reject(signal.reason));
        }),
      { ttlMs: 1500 },
    );
    await eventually(() => seen, 'work started');
    assert.equal(await admin.release(k, seen.token), true);
    await assert.rejects(within(running, 'withLock'), LeaseLostError);
    assert.equal(seen.signal.aborted, true);

    // Without a loss, withLock returns the work's value and releases.
    const value = await client.withLock(k, async (signal, token) => `token ${token}`);
    assert.match(value, /^token \d+$/);
    assert.equal((await admin.get(k)).held, false);
    // A throwing work releases too.
    await assert.rejects(client.withLock(k, async () => { throw new Error('boom'); }), /boom/);
    assert.equal((await admin.get(k)).held, false);
  });

  it('fetch: of 10 concurrent callers one computes, the others receive its bytes', async () => {
    const k = key('fetch');
    let computed = 0;
    const compute = async () => {
      computed += 1;
      // Hold on until the 9 others are parked, so all of them take part.
      await eventually(async () => (await admin.get(k)).waiters === 9, '9 fetch waiters parked');
      return Buffer.from(`value #${computed}`);
    };
    const results = await within(Promise.all(Array.from({ length: 10 }, () => client.fetch(k, compute))), 'fetches');
    assert.equal(computed, 1);
    for (const r of results) assert.deepEqual(r, Buffer.from('value #1'));
    assert.equal((await admin.get(k)).held, false);
  });

  it('fetch: when the computing caller fails, the next one computes', async () => {
    const k = key('fetch-fail');
    let calls = 0;
    const compute = async () => {
      calls += 1;
      if (calls === 1) {
        await eventually(async () => (await admin.get(k)).waiters === 1, 'second fetch parked');
        throw new Error('backend down');
      }
      return 'second';
    };
    const first = client.fetch(k, compute);
    await eventually(async () => (await admin.get(k)).held, 'first fetch holds the lock');
    const [a, b] = await Promise.allSettled([first, client.fetch(k, compute)]);
    assert.equal(a.status, 'rejected');
    assert.equal(b.value.toString(), 'second');
    assert.equal(calls, 2);
  });

  it('the coordinator refusing a field is InvalidArgumentError naming it', async () => {
    await assert.rejects(client.lock('bad\u200bkey'), (e) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.ok(e instanceof TurnstileError);
      assert.equal(e.code, Status.INVALID_ARGUMENT);
      assert.equal(e.codeName, 'INVALID_ARGUMENT');
      assert.equal(e.field, 'key');
      return true;
    });
    await assert.rejects(client.lock(''), (e) => e instanceof InvalidArgumentError && e.field === 'key');
  });

  it('tokens above 2^53 keep their precision', async () => {
    const big = 2n ** 63n + 5n;
    // A stale (unknown) token: the coordinator answers released=false, and the token round-trips as text.
    assert.equal(await admin.release(key('big'), big), false);
    assert.equal(big.toString(), '9223372036854775813');
  });

  // ---- the clock rule, through a proxy that delays every reply ----

  /** A TCP proxy to `target` that holds back each chunk from the server for `delayMs`. */
  function delayingProxy(target, delayMs) {
    const [host, port] = target.split(':');
    const sockets = new Set();
    const srv = net.createServer((down) => {
      const up = net.connect(Number(port), host);
      sockets.add(down).add(up);
      down.on('data', (d) => up.write(d));
      up.on('data', (d) => setTimeout(() => down.destroyed || down.write(d), delayMs));
      const close = () => {
        down.destroy();
        up.destroy();
      };
      down.on('error', close).on('close', close);
      up.on('error', close).on('close', close);
    });
    return new Promise((resolve) =>
      srv.listen(0, '127.0.0.1', () =>
        resolve({
          address: `127.0.0.1:${srv.address().port}`,
          close: () => {
            for (const s of sockets) s.destroy();
            srv.close();
          },
        }),
      ),
    );
  }

  it('clock rule: validity counts from the send time, not from the reply', async () => {
    const delayMs = 400;
    const ttlMs = 3000;
    const proxy = await delayingProxy(server.grpc, delayMs);
    const slow = new Client(proxy.address, { ttlMs });
    try {
      await slow.get('warm-up'); // the connection itself is set up through the delay too
      const before = performance.now();
      const g = await slow.lock(key('clock'));
      const after = performance.now();
      // The request was sent at or after `before`, and its reply took at least
      // delayMs, so it was sent at or before after - delayMs.
      assert.ok(g.validUntilMs >= before + ttlMs, 'not shorter than send time + TTL');
      assert.ok(g.validUntilMs <= after - delayMs + ttlMs, 'the reply delay is not counted as validity');
      await g.release();
    } finally {
      slow.close();
      proxy.close();
    }
  });

  it('clock rule: the lease is lost when its validity passes while renewals go unanswered', async () => {
    // Its own coordinator, frozen with SIGSTOP: renewals get no answer at all.
    const frozen = await startServer();
    const c = new Client(frozen.grpc, { ttlMs: 600, callTimeoutMs: 2000 });
    try {
      const k = key('frozen');
      const g = await c.lock(k);
      const validUntil = g.validUntilMs;
      frozen.child.kill('SIGSTOP');
      const reason = await within(g.lost, 'guard.lost after SIGSTOP');
      assert.equal(reason, 'not_renewed');
      assert.ok(performance.now() >= validUntil, 'not reported lost before its validity passed');
      assert.equal(g.signal.aborted, true);
      frozen.child.kill('SIGCONT');
      // The guard releases what may be left of it, so the key frees without waiting for the TTL.
      await eventually(async () => !(await c.get(k)).held, 'key freed after SIGCONT');
      await assert.rejects(g.release(), (e) => e instanceof LeaseLostError && e.reason === 'not_renewed');
    } finally {
      c.close();
      await frozen.stop();
    }
  });
});
