'use strict';
// SQLite storage (better-sqlite3): payments with the fence column of
// crates/payment-service, and the fake provider's ledger of charges.

const Database = require('better-sqlite3');

const SCHEMA = `
CREATE TABLE IF NOT EXISTS payments (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  amount_cents INTEGER NOT NULL,
  currency     TEXT NOT NULL,
  state        TEXT NOT NULL DEFAULT 'EMPTY',
  charge_id    TEXT,
  fence        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS provider_charges (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  payment_id   INTEGER NOT NULL,
  amount_cents INTEGER NOT NULL,
  currency     TEXT NOT NULL
);`;

class Store {
  constructor(path = ':memory:') {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.exec(SCHEMA);
    // Fences are fencing tokens: uint64, read and bound as BigInt.
    const q = (sql) => this.db.prepare(sql).safeIntegers(true);
    this._create = q('INSERT INTO payments (amount_cents, currency) VALUES (?, ?) RETURNING *');
    this._get = q('SELECT * FROM payments WHERE id = ?');
    this._claim = q(`UPDATE payments SET fence = :token WHERE id = :id AND fence < :token AND state = 'EMPTY'`);
    this._paidFenced = q(
      `UPDATE payments SET state = 'PAID', charge_id = :charge WHERE id = :id AND fence = :token AND state = 'EMPTY'`,
    );
    this._paidUnfenced = q(`UPDATE payments SET state = 'PAID', charge_id = :charge WHERE id = :id`);
    this._charge = q('INSERT INTO provider_charges (payment_id, amount_cents, currency) VALUES (?, ?, ?) RETURNING id');
    this._charges = q('SELECT COUNT(*) AS n FROM provider_charges WHERE payment_id = ?');
  }

  create(amountCents, currency) {
    return row(this._create.get(amountCents, currency));
  }

  get(id) {
    return row(this._get.get(id));
  }

  /**
   * Claims the row for the holder of `token` before charging: it takes the token
   * only if its fence is smaller and it is still EMPTY.
   * Returns {claimed}, {alreadyPaid}, {superseded: currentFence} or {missing}.
   */
  claim(id, token) {
    if (this._claim.run({ id, token }).changes === 1) return { claimed: this.get(id) };
    const p = this.get(id);
    if (!p) return { missing: true };
    if (p.state === 'PAID') return { alreadyPaid: p };
    return { superseded: p.fence };
  }

  /** The fenced write: PAID only while the row still carries our token. */
  markPaidFenced(id, chargeId, token) {
    if (this._paidFenced.run({ id, charge: chargeId, token }).changes === 1) return { applied: this.get(id) };
    const p = this.get(id);
    return p ? { fencedOut: p.fence } : { missing: true };
  }

  markPaidUnfenced(id, chargeId) {
    return this._paidUnfenced.run({ id, charge: chargeId }).changes === 1;
  }

  recordCharge(p) {
    return `ch_${this._charge.get(p.id, p.amount_cents, p.currency).id}`;
  }

  chargeCount(id) {
    return Number(this._charges.get(id).n);
  }

  close() {
    this.db.close();
  }
}

/** A row as JSON-friendly values: ids and amounts as numbers, the fence as a decimal string. */
function row(r) {
  if (!r) return undefined;
  return {
    id: Number(r.id),
    amount_cents: Number(r.amount_cents),
    currency: r.currency,
    state: r.state,
    charge_id: r.charge_id,
    fence: r.fence.toString(),
  };
}

module.exports = { Store };
