'use strict';
// LockGuard: a held lease, renewed in the background by the rules of
// schedule.js (the clock rule of docs/design.md), with the loss signalled by a
// Promise (`lost`) and an AbortSignal (`signal`). Mirrors
// crates/turnstile-client/src/guard.rs.

const { performance } = require('node:perf_hooks');
const { Status, LeaseLostError, TurnstileError } = require('./errors');
const { validUntil, renewAt, renewRetryDelay } = require('./schedule');

const now = () => performance.now();

class LockGuard {
  /** @internal Made by Client; never construct it yourself. */
  constructor(client, { key, owner, fencingToken, ttlMs, sentMs }) {
    this._client = client;
    /** The key the lease is on. */
    this.key = key;
    /** The owner string sent with the grant (`{clientOwner}/{n}`). */
    this.owner = owner;
    /** The fencing token: a BigInt (tokens are uint64; a Number would lose precision past 2^53). */
    this.fencingToken = fencingToken;
    /** The TTL granted (after the coordinator's clamping), in ms. */
    this.ttlMs = ttlMs;
    this._validUntil = validUntil(sentMs, ttlMs);
    this._lastSent = sentMs;
    this._lostReason = null;
    this._released = false;
    this._releasing = null;
    this._timer = null;
    this._expiry = null;
    this._renewCall = null;
    this._controller = new AbortController();
    /** Aborted the moment the lease is lost; its reason is a LeaseLostError. Pass it to the work. */
    this.signal = this._controller.signal;
    /** Resolves with the reason ('ended' or 'not_renewed') when the lease is lost; never rejects. */
    this.lost = new Promise((resolve) => {
      this._resolveLost = resolve;
    });
    this._armExpiry();
    this._scheduleRenew(renewAt(sentMs, ttlMs));
  }

  /** The fencing token as a decimal string (for SQL parameters, headers, JSON). */
  get fencingTokenString() {
    return this.fencingToken.toString();
  }

  /** True while the lease is held: not lost, not released, and its validity has not passed. */
  get isValid() {
    this._checkValidity();
    return this._lostReason === null && !this._released;
  }

  /** Milliseconds of validity left (0 when lost or released). */
  get validForMs() {
    if (!this.isValid) return 0;
    return Math.max(0, this._validUntil - now());
  }

  /**
   * The instant the lease is valid until unless renewed, on the performance.now()
   * clock: the send time of the last successful grant or renew plus its TTL.
   */
  get validUntilMs() {
    return this._validUntil;
  }

  /** 'ended', 'not_renewed', or null while not lost. */
  get lostReason() {
    this._checkValidity();
    return this._lostReason;
  }

  /** Throws LeaseLostError if the lease is lost: call it before a write that needs the lock. */
  throwIfLost() {
    if (this.lostReason !== null) throw this._lostError();
  }

  /** Ends the lease. Rejects with LeaseLostError when it had already ended. Idempotent. */
  release() {
    return this._finish(undefined);
  }

  /**
   * Ends the lease and hands `result` (Buffer, Uint8Array or string) to every waiter
   * that asked for a shared result (the fetch lock). If the coordinator refuses it
   * (too large: RESOURCE_EXHAUSTED), the lease is released without it and that error is thrown.
   */
  releaseWithResult(result) {
    return this._finish(typeof result === 'string' ? Buffer.from(result) : Buffer.from(result));
  }

  // ---- internals ----

  _lostError() {
    return new LeaseLostError(this.key, this.fencingToken, this._lostReason || 'ended');
  }

  /** The validity passed without a renew: the lease is lost now (sticky). */
  _checkValidity() {
    if (this._lostReason === null && !this._released && now() >= this._validUntil) {
      this._markLost('not_renewed');
    }
  }

  _markLost(reason) {
    if (this._lostReason !== null || this._released) return;
    this._lostReason = reason;
    this._stopTimers();
    this._controller.abort(this._lostError());
    this._resolveLost(reason);
    if (reason === 'not_renewed') {
      // The coordinator may still have it: release so the key frees at once.
      this._client._releaseCall(this.key, this.fencingToken, undefined).catch(() => {});
    }
  }

  _stopTimers() {
    clearTimeout(this._timer);
    clearTimeout(this._expiry);
    if (this._renewCall) this._renewCall.cancel();
    this._timer = null;
    this._expiry = null;
  }

  _armExpiry() {
    clearTimeout(this._expiry);
    // A timer may fire a little early; _checkValidity decides on the clock itself.
    const fire = () => {
      this._checkValidity();
      if (this._lostReason === null && !this._released) {
        this._expiry = setTimeout(fire, Math.max(1, this._validUntil - now()));
        this._expiry.unref();
      }
    };
    this._expiry = setTimeout(fire, Math.max(1, this._validUntil - now()));
    // A held lease alone does not keep the process alive: on exit it expires after its TTL.
    this._expiry.unref();
  }

  _scheduleRenew(at) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._renew(), Math.max(0, at - now()));
    this._timer.unref();
  }

  _renew() {
    this._timer = null;
    this._checkValidity();
    if (this._lostReason !== null || this._released || this._releasing) return;
    const sent = now();
    const timeoutMs = Math.min(this._client.callTimeoutMs, this._validUntil - sent);
    this._renewCall = this._client._renewCall(this.key, this.fencingToken, timeoutMs, (err, resp) => {
      this._renewCall = null;
      if (this._lostReason !== null || this._released || this._releasing) return;
      if (err) {
        if (err.code === Status.NOT_FOUND) {
          this._markLost('ended');
          return;
        }
        // Unreachable, unavailable, anything else: try again until the validity runs out.
        this._scheduleRenew(now() + renewRetryDelay(this.ttlMs));
        return;
      }
      // Answered after the validity passed: too late, the lease stays lost.
      this._checkValidity();
      if (this._lostReason !== null) return;
      const ttlMs = resp.lease && resp.lease.ttl ? durationMs(resp.lease.ttl) : this.ttlMs;
      this.ttlMs = ttlMs;
      this._lastSent = sent;
      this._validUntil = validUntil(sent, ttlMs);
      this._armExpiry();
      this._scheduleRenew(renewAt(sent, ttlMs));
    });
  }

  _finish(result) {
    if (this._releasing) return this._releasing;
    this._releasing = this._doFinish(result);
    return this._releasing;
  }

  async _doFinish(result) {
    this._checkValidity();
    if (this._lostReason !== null) {
      // Past its validity the lease may be someone else's already; a stale token changes nothing.
      await this._client._releaseCall(this.key, this.fencingToken, undefined).catch(() => {});
      throw this._lostError();
    }
    this._released = true;
    this._stopTimers();
    let released;
    try {
      released = await this._client._releaseCall(this.key, this.fencingToken, result);
    } catch (err) {
      if (result !== undefined && err instanceof TurnstileError && err.code === Status.RESOURCE_EXHAUSTED) {
        // The result was refused and the lease kept: release without it.
        await this._client._releaseCall(this.key, this.fencingToken, undefined).catch(() => {});
      }
      throw err;
    }
    if (!released) {
      this._released = false;
      this._markLost('ended');
      throw this._lostError();
    }
  }
}

/** A google.protobuf.Duration (seconds as string or number, nanos) in milliseconds. */
function durationMs(d) {
  if (!d) return undefined;
  return Number(d.seconds || 0) * 1000 + (d.nanos || 0) / 1e6;
}

module.exports = { LockGuard, durationMs };
