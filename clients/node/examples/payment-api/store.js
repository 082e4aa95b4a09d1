'use strict';
// SQLite storage (sql.js: the SQLite engine compiled to WebAssembly, so no
// native addon to build): payments with the fence column of
// crates/payment-service, and the fake provider's ledger of charges.
//
// sql.js keeps the database in memory. With a file path, Store.open loads the
// file if it exists and every write is saved back to it (written to a
// temporary file, then renamed over it), so the payments survive a restart.
// One process owns the file: two servers on the same file would overwrite
// each other's writes. The tests use ':memory:' (one process, nothing saved).

const fs = require('node:fs');
const initSqlJs = require('sql.js');

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

// Fences are fencing tokens: uint64, bound as BigInt (sql.js binds a BigInt as
// a 64-bit INTEGER) and read back as BigInt.
const BIGINT = { useBigInt: true };

let sqlJs;
const loadSqlJs = () => (sqlJs ||= initSqlJs()); // one WebAssembly instance per process

class Store {
  /** Opens ':memory:' or a file (created on the first write if missing). */
  static async open(path = ':memory:') {
    const SQL = await loadSqlJs();
    const file = path === ':memory:' ? null : path;
    const data = file && fs.existsSync(file) ? fs.readFileSync(file) : undefined;
    return new Store(new SQL.Database(data), file);
  }

  /** Use Store.open. */
  constructor(db, file) {
    this.db = db;
    this.file = file;
    this.db.exec(SCHEMA);
    this._save();
    const q = (sql) => this.db.prepare(sql);
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
    const r = this._one(this._create, [amountCents, currency]);
    this._save();
    return row(r);
  }

  get(id) {
    return row(this._one(this._get, [id]));
  }

  /**
   * Claims the row for the holder of `token` before charging: it takes the token
   * only if its fence is smaller and it is still EMPTY.
   * Returns {claimed}, {alreadyPaid}, {superseded: currentFence} or {missing}.
   */
  claim(id, token) {
    if (this._run(this._claim, { ':id': id, ':token': token }) === 1) return { claimed: this.get(id) };
    const p = this.get(id);
    if (!p) return { missing: true };
    if (p.state === 'PAID') return { alreadyPaid: p };
    return { superseded: p.fence };
  }

  /** The fenced write: PAID only while the row still carries our token. */
  markPaidFenced(id, chargeId, token) {
    if (this._run(this._paidFenced, { ':id': id, ':charge': chargeId, ':token': token }) === 1) {
      return { applied: this.get(id) };
    }
    const p = this.get(id);
    return p ? { fencedOut: p.fence } : { missing: true };
  }

  markPaidUnfenced(id, chargeId) {
    return this._run(this._paidUnfenced, { ':id': id, ':charge': chargeId }) === 1;
  }

  recordCharge(p) {
    const r = this._one(this._charge, [p.id, p.amount_cents, p.currency]);
    this._save();
    return `ch_${r.id}`;
  }

  chargeCount(id) {
    return Number(this._one(this._charges, [id]).n);
  }

  close() {
    this.db.close(); // also frees the prepared statements
  }

  /** The first row of `stmt` with `params` (INTEGERs as BigInt), or undefined. */
  _one(stmt, params) {
    try {
      stmt.bind(params);
      return stmt.step() ? stmt.getAsObject(null, BIGINT) : undefined;
    } finally {
      stmt.reset();
    }
  }

  /** Runs a write; returns the number of rows it changed, saving when it changed any. */
  _run(stmt, params) {
    stmt.run(params);
    const changes = this.db.getRowsModified();
    if (changes > 0) this._save();
    return changes;
  }

  _save() {
    if (!this.file) return;
    const tmp = `${this.file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, this.db.export());
    fs.renameSync(tmp, this.file);
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
