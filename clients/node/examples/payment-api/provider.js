'use strict';
// The slow third-party payment provider, faked: every call is booked in the
// provider_charges table (that is what the tests count), after `delayMs`.
// `barrier` (tests only) holds each call until that many calls are in flight,
// so a race without the lock is shown without depending on timing.

const { setTimeout: sleep } = require('node:timers/promises');

class Provider {
  constructor(store, { delayMs = 3000, barrier = 0, barrierTimeoutMs = 10_000 } = {}) {
    this.store = store;
    this.delayMs = delayMs;
    this.barrier = barrier;
    this.barrierTimeoutMs = barrierTimeoutMs;
    this.inFlight = 0;
    this._waiting = [];
  }

  async charge(payment) {
    this.inFlight += 1;
    const chargeId = this.store.recordCharge(payment); // booked the moment the request arrives
    if (this.barrier > 0) await this._meet();
    await sleep(this.delayMs);
    this.inFlight -= 1;
    return chargeId;
  }

  _meet() {
    if (this.inFlight >= this.barrier) {
      for (const w of this._waiting.splice(0)) w();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this._waiting.push(resolve);
      setTimeout(resolve, this.barrierTimeoutMs).unref();
    });
  }
}

module.exports = { Provider };
