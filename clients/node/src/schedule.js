'use strict';
// Timing rules of the client as pure functions of explicit instants (numbers of
// milliseconds on the monotonic clock, performance.now()). The same rules as
// crates/turnstile-client/src/schedule.rs; no clock is read here.

/** The longest wait one Acquire call asks for: the server's default maximum. */
const MAX_WAIT_PER_CALL_MS = 300_000;

/** The clock rule of docs/design.md: valid until the request's send time plus the TTL. */
function validUntil(sentMs, ttlMs) {
  return sentMs + ttlMs;
}

/** When to send the next renew after a successful one sent at `sentMs`: a third of the TTL later. */
function renewAt(sentMs, ttlMs) {
  return sentMs + ttlMs / 3;
}

/** Pause between failed renew attempts: a tenth of the TTL, kept within 10..500 ms. */
function renewRetryDelay(ttlMs) {
  return Math.min(500, Math.max(10, ttlMs / 10));
}

/** Pause before retry number `attempt` (0-based): 50 ms doubling up to 1 s. */
function backoff(attempt) {
  return Math.min(1000, 50 * 2 ** Math.min(attempt, 5));
}

/** A grant that used up more than a third of its TTL waiting is confirmed with a fresh call. */
function needsConfirmation(sentMs, receivedMs, ttlMs) {
  return receivedMs - sentMs > ttlMs / 3;
}

/** The wait to ask for in one Acquire call, given the time left (null: no limit). */
function waitForCall(leftMs) {
  return leftMs == null ? MAX_WAIT_PER_CALL_MS : Math.max(0, Math.min(leftMs, MAX_WAIT_PER_CALL_MS));
}

module.exports = {
  MAX_WAIT_PER_CALL_MS,
  validUntil,
  renewAt,
  renewRetryDelay,
  backoff,
  needsConfirmation,
  waitForCall,
};
