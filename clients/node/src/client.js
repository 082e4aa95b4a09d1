'use strict';
// Client: the connection to a coordinator, the acquire loop behind lock /
// tryLock / withLock / fetch, and the inspection calls. Mirrors
// crates/turnstile-client/src/{client.rs,acquire.rs,fetch.rs}.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { performance } = require('node:perf_hooks');
const { setTimeout: sleep } = require('node:timers/promises');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { LockGuard, durationMs } = require('./guard');
const {
  Status,
  TurnstileError,
  InvalidArgumentError,
  ContendedError,
  LeaseLostError,
  fromGrpc,
  isTransient,
} = require('./errors');
const { backoff, needsConfirmation, waitForCall } = require('./schedule');

const now = () => performance.now();
const MAX_KEY_BYTES = 512;
const MAX_OWNER_BYTES = 256;
const OWNER_SUFFIX_ROOM = 21;
const LIST_PAGE_SIZE = 1000;

/**
 * The proto: the package's own copy (put there by `npm pack`), else the
 * repository's proto/ (a checkout: tests, `file:` installs).
 */
function protoRoot() {
  const candidates = [path.join(__dirname, '..', 'proto'), path.join(__dirname, '..', '..', '..', 'proto')];
  for (const dir of candidates) {
    if (fs.existsSync(path.join(dir, 'turnstile', 'v1', 'lock.proto'))) return dir;
  }
  throw new Error(`turnstile: lock.proto not found in ${candidates.join(' or ')}`);
}

let service;
function lockService() {
  if (!service) {
    const def = protoLoader.loadSync('turnstile/v1/lock.proto', {
      includeDirs: [protoRoot()],
      keepCase: true,
      longs: String, // uint64 tokens as decimal strings, turned into BigInt here
      enums: String,
      bytes: Buffer,
      defaults: false,
      oneofs: true,
    });
    service = grpc.loadPackageDefinition(def).turnstile.v1.LockService;
  }
  return service;
}

function msDuration(ms) {
  const whole = Math.floor(ms);
  return { seconds: String(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1e6 };
}

function defaultOwner() {
  const host = (os.hostname() || 'localhost').replace(/[\u0000-\u001f\u007f/]/g, '').slice(0, 128) || 'localhost';
  return `${host}/${process.pid}/${crypto.randomBytes(4).toString('hex')}`;
}

function checkText(field, value, maxBytes) {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidArgumentError(field, 'must not be empty');
  if (Buffer.byteLength(value) > maxBytes) throw new InvalidArgumentError(field, `longer than ${maxBytes} bytes`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(value)) throw new InvalidArgumentError(field, 'contains a control character');
}

function lockInfo(info) {
  if (!info) return undefined;
  return {
    key: info.key,
    held: Boolean(info.held),
    owner: info.owner || '',
    fencingToken: BigInt(info.fencing_token || 0),
    expiresInMs: durationMs(info.expires_in),
    waiters: info.waiters || 0,
  };
}

function toBuffer(v) {
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === 'string') return Buffer.from(v);
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError('fetch: compute must return a Buffer, Uint8Array or string');
}

class Client {
  /**
   * @param {string} address host:port, or http://host:port, or https://host:port (TLS)
   * @param {object} [options]
   * @param {string} [options.owner] owner prefix (default host/pid/random); each acquisition sends `{owner}/{n}`
   * @param {number} [options.ttlMs] TTL asked for on every lock (default 15000)
   * @param {number} [options.callTimeoutMs] how long one call may take beyond its wait (default 10000)
   * @param {grpc.ChannelCredentials} [options.credentials] default: insecure, or TLS with system roots for https://
   * @param {string} [options.token] bearer token sent as `authorization: Bearer …`
   * @param {object} [options.channelOptions] passed to @grpc/grpc-js
   */
  constructor(address, options = {}) {
    const { owner, ttlMs = 15_000, callTimeoutMs = 10_000, credentials, token, channelOptions } = options;
    if (typeof address !== 'string' || address === '') throw new InvalidArgumentError('addr', 'must not be empty');
    if (!(ttlMs > 0)) throw new InvalidArgumentError('ttl', 'must be greater than zero');
    if (!(callTimeoutMs > 0)) throw new InvalidArgumentError('call_timeout', 'must be greater than zero');
    let target = address;
    let tls = false;
    const m = /^(https?):\/\/(.*)$/.exec(address);
    if (m) {
      tls = m[1] === 'https';
      target = m[2].replace(/\/$/, '');
    }
    this.owner = owner === undefined ? defaultOwner() : owner;
    checkText('owner', this.owner, MAX_OWNER_BYTES - OWNER_SUFFIX_ROOM);
    this.ttlMs = ttlMs;
    this.callTimeoutMs = callTimeoutMs;
    this._seq = 0;
    this._metadata = new grpc.Metadata();
    if (token !== undefined) this._metadata.set('authorization', `Bearer ${token}`);
    const creds = credentials || (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
    const Service = lockService();
    this._stub = new Service(target, creds, channelOptions);
  }

  /** Closes the connection. Guards still held stop renewing. */
  close() {
    this._stub.close();
  }

  // ---- taking a lock ----

  /**
   * Waits in the key's FIFO queue until the lock is granted and resolves to a LockGuard.
   * `waitMs` bounds the wait (ContendedError when it runs out; 0 is a try-lock);
   * without it the wait lasts as long as it takes. `signal` (AbortSignal) cancels the
   * wait: the coordinator then removes the waiter.
   * @param {string} key
   * @param {{ttlMs?: number, waitMs?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<LockGuard>}
   */
  async lock(key, options = {}) {
    const res = await this._acquire(key, { ...options, shareResult: false });
    if (res.shared !== undefined) {
      throw new TurnstileError('protocol: shared_result without share_result', { code: Status.INTERNAL });
    }
    return res.guard;
  }

  /** Takes the lock if it is free, else rejects at once with ContendedError naming the holder. */
  tryLock(key, options = {}) {
    return this.lock(key, { ...options, waitMs: 0 });
  }

  /**
   * Runs `work(signal, fencingToken, guard)` under the lock on `key`, then releases it.
   * If the lease is lost first, `signal` is aborted and withLock rejects with
   * LeaseLostError at that moment (JavaScript cannot stop the work: let it honour
   * the signal); so it does when the release finds the lease had already ended.
   * If `work` throws, the lock is released and the error passed on.
   */
  async withLock(key, work, options = {}) {
    const guard = await this.lock(key, options);
    let value;
    try {
      const lost = guard.lost.then(() => {
        throw guard._lostError();
      });
      lost.catch(() => {}); // read by the race below; never left unhandled
      value = await Promise.race([Promise.resolve().then(() => work(guard.signal, guard.fencingToken, guard)), lost]);
    } catch (err) {
      await guard.release().catch(() => {});
      throw err;
    }
    try {
      await guard.release();
    } catch (err) {
      // The lease had ended before the release: the value was made without
      // the lock's protection for part of the time.
      if (err instanceof LeaseLostError) throw err;
      // Unanswered: the value stands; the lease expires after its TTL.
    }
    return value;
  }

  /**
   * The fetch lock (problem 2): of many concurrent callers of `fetch(key, compute)`,
   * one runs `compute` and the others receive its bytes (a Buffer). If compute
   * throws, its caller gets the error and the next waiter computes. Results are
   * handed over, never stored: check your cache first, fill it from compute.
   * @param {string} key
   * @param {() => Promise<Buffer|Uint8Array|string>} compute
   * @param {{ttlMs?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<Buffer>}
   */
  async fetch(key, compute, options = {}) {
    const res = await this._acquire(key, { ...options, waitMs: undefined, shareResult: true });
    if (res.shared !== undefined) return res.shared;
    const guard = res.guard;
    let bytes;
    try {
      bytes = toBuffer(await compute(guard.signal, guard.fencingToken));
    } catch (err) {
      await guard.release().catch(() => {});
      throw err;
    }
    // Waiters that do not get the result are granted the lock and compute themselves.
    await guard.releaseWithResult(bytes).catch(() => {});
    return bytes;
  }

  /** fetch() for JSON values. */
  async fetchJson(key, compute, options = {}) {
    const bytes = await this.fetch(key, async () => Buffer.from(JSON.stringify(await compute())), options);
    return JSON.parse(bytes.toString('utf8'));
  }

  /**
   * The acquire loop: one owner for the whole loop (a retry after a lost answer
   * gets the same lease back), waits split into calls the coordinator accepts,
   * transient failures retried with backoff.
   */
  async _acquire(key, { ttlMs, waitMs, signal, shareResult }) {
    checkText('key', key, MAX_KEY_BYTES);
    const ttl = ttlMs === undefined ? this.ttlMs : ttlMs;
    if (!(ttl > 0)) throw new InvalidArgumentError('ttl', 'must be greater than zero');
    if (waitMs !== undefined && !(waitMs >= 0)) throw new InvalidArgumentError('wait_timeout', 'must not be negative');
    const until = waitMs === undefined ? null : now() + waitMs;
    const owner = `${this.owner}/${++this._seq}`;
    let confirmed = false;
    let failures = 0;
    let failingSince = null;
    for (;;) {
      if (signal && signal.aborted) throw signal.reason;
      const sent = now();
      const waitNow = waitMs === 0 ? 0 : waitForCall(until === null ? null : until - sent);
      const req = { key, owner, ttl: msDuration(ttl), share_result: Boolean(shareResult) };
      if (waitNow > 0) req.wait_timeout = msDuration(waitNow);
      let resp;
      try {
        resp = await this._unary('Acquire', req, waitNow + this.callTimeoutMs, signal);
        failures = 0;
        failingSince = null;
      } catch (err) {
        if (!isTransient(err)) throw err;
        // Restarting, recovering or unreachable: ask again.
        if (failingSince === null) failingSince = now();
        const pause = backoff(failures++);
        const outOfTime =
          waitMs === 0 ||
          (until !== null && now() + pause >= until) ||
          now() - failingSince + pause >= this.callTimeoutMs;
        if (outOfTime) throw err;
        await sleep(pause, undefined, signal ? { signal } : undefined);
        continue;
      }
      if (resp.shared_result != null) return { shared: Buffer.from(resp.shared_result) };
      if (resp.acquired) {
        const lease = resp.lease;
        const granted = durationMs(lease && lease.ttl);
        if (!lease || granted === undefined) {
          throw new TurnstileError('protocol: acquired without a lease or ttl', { code: Status.INTERNAL });
        }
        if (!confirmed && needsConfirmation(sent, now(), granted)) {
          // Granted after a long wait: send time + TTL leaves little validity.
          // Ask again as the same owner: the same lease comes back refreshed (G5).
          confirmed = true;
          continue;
        }
        const guard = new LockGuard(this, {
          key,
          owner,
          fencingToken: BigInt(lease.fencing_token),
          ttlMs: granted,
          sentMs: sent,
        });
        return { guard };
      }
      if (waitMs === 0 || (until !== null && now() >= until)) {
        throw new ContendedError(key, lockInfo(resp.current));
      }
    }
  }

  // ---- inspection and operator calls ----

  /** Who holds `key`, for how long, and how many wait. */
  async get(key) {
    checkText('key', key, MAX_KEY_BYTES);
    return lockInfo(await this._unary('GetLock', { key }, this.callTimeoutMs));
  }

  /** Every held or awaited key under `prefix`, in key order (all pages). */
  async list(prefix = '') {
    const out = [];
    let pageToken = '';
    do {
      const resp = await this._unary(
        'ListLocks',
        { prefix, page_size: LIST_PAGE_SIZE, page_token: pageToken },
        this.callTimeoutMs,
      );
      for (const info of resp.locks || []) out.push(lockInfo(info));
      pageToken = resp.next_page_token || '';
    } while (pageToken !== '');
    return out;
  }

  /** Operator call: ends the lease with `fencingToken` on `key`; false when it had already ended. */
  async release(key, fencingToken) {
    checkText('key', key, MAX_KEY_BYTES);
    return this._releaseCall(key, BigInt(fencingToken), undefined);
  }

  // ---- plumbing ----

  _unary(method, req, timeoutMs, signal) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + Math.max(1, timeoutMs));
      let onAbort;
      const call = this._stub[method](req, this._metadata, { deadline }, (err, resp) => {
        if (signal) signal.removeEventListener('abort', onAbort);
        if (err) {
          if (signal && signal.aborted && err.code === Status.CANCELLED) reject(signal.reason);
          else reject(fromGrpc(err));
        } else resolve(resp);
      });
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /** @internal One Renew; `done(err, resp)`; returns the call (cancellable). */
  _renewCall(key, fencingToken, timeoutMs, done) {
    const deadline = new Date(Date.now() + Math.max(1, timeoutMs));
    return this._stub.Renew(
      { key, fencing_token: fencingToken.toString() },
      this._metadata,
      { deadline },
      (err, resp) => done(err ? fromGrpc(err) : null, resp),
    );
  }

  /** @internal One Release (retried while the coordinator is briefly unreachable); resolves to `released`. */
  async _releaseCall(key, fencingToken, result) {
    const req = { key, fencing_token: fencingToken.toString() };
    if (result !== undefined) req.result = result;
    const start = now();
    for (let attempt = 0; ; attempt++) {
      try {
        const resp = await this._unary('Release', req, this.callTimeoutMs - (now() - start));
        return Boolean(resp.released);
      } catch (err) {
        const pause = backoff(attempt);
        if (!isTransient(err) || now() - start + pause >= this.callTimeoutMs) throw err;
        await sleep(pause);
      }
    }
  }
}

module.exports = { Client };
