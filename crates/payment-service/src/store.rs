//! SQLite storage: the `payments` table with its fenced PAID write, and the
//! simulated provider's own ledger of charges (`provider_charges`).
//!
//! Every row of `payments` keeps `fence`: the fencing token of its last
//! writer. [`mark_paid_fenced`] applies only when the writer's token is
//! greater, so a holder whose lease has passed to someone else cannot
//! overwrite what the newer holder wrote.
//!
//! The SQL lives in plain functions over a `&Connection` (unit-tested below
//! on an in-memory database); [`Store`] runs them on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    currency     TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('EMPTY', 'PAID')),
    charge_id    TEXT,
    fence        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS provider_charges (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id   INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency     TEXT    NOT NULL
);
";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// SQLite refused or failed a statement.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task running the statement panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum PaymentState {
    /// Created, not charged.
    Empty,
    /// Charged at the provider and recorded.
    Paid,
}

impl PaymentState {
    fn from_sql(s: &str) -> rusqlite::Result<PaymentState> {
        match s {
            "EMPTY" => Ok(PaymentState::Empty),
            "PAID" => Ok(PaymentState::Paid),
            other => {
                Err(rusqlite::Error::InvalidColumnType(3, format!("state {other:?}"), rusqlite::types::Type::Text))
            }
        }
    }
}

/// One row of `payments`, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Payment {
    /// Row id, the `{id}` of `/payments/{id}`.
    pub(crate) id: i64,
    /// Amount in the currency's minor unit.
    pub(crate) amount_cents: i64,
    /// ISO 4217 code.
    pub(crate) currency: String,
    /// EMPTY or PAID.
    pub(crate) state: PaymentState,
    /// The provider's charge id, once PAID.
    pub(crate) charge_id: Option<String>,
    /// Fencing token of the last fenced writer (0: none yet).
    #[serde(rename = "fencing_token")]
    pub(crate) fence: u64,
}

/// One charge as the simulated provider recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ProviderCharge {
    /// The provider's charge id.
    pub(crate) charge_id: String,
    /// The payment it charged.
    pub(crate) payment_id: i64,
    /// Amount charged, minor unit.
    pub(crate) amount_cents: i64,
    /// ISO 4217 code.
    pub(crate) currency: String,
}

/// Outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// The row now carries the writer's token.
    Applied,
    /// The row already carries `current` ≥ the writer's token: nothing written.
    FencedOut {
        /// The token of the newer writer.
        current: u64,
    },
    /// No such row.
    Missing,
}

/// A fencing token as SQLite stores it (INTEGER is signed 64-bit). Tokens
/// above `i64::MAX` saturate, which keeps the order of every token up to it.
fn token_to_sql(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

/// Opens (creating if needed) the database file and its schema, in WAL mode
/// with a busy timeout, so several processes can share the file.
pub(crate) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    prepare(&conn)?;
    Ok(conn)
}

fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // `journal_mode` answers with the mode it set, so it is a query.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(SCHEMA)
}

fn payment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Payment> {
    let state: String = r.get(3)?;
    let fence: i64 = r.get(5)?;
    Ok(Payment {
        id: r.get(0)?,
        amount_cents: r.get(1)?,
        currency: r.get(2)?,
        state: PaymentState::from_sql(&state)?,
        charge_id: r.get(4)?,
        fence: u64::try_from(fence).unwrap_or(0),
    })
}

/// Inserts a payment in state EMPTY.
pub(crate) fn create_payment(conn: &Connection, amount_cents: i64, currency: &str) -> rusqlite::Result<Payment> {
    conn.query_row(
        "INSERT INTO payments (amount_cents, currency, state) VALUES (?1, ?2, 'EMPTY')
         RETURNING id, amount_cents, currency, state, charge_id, fence",
        params![amount_cents, currency],
        payment_from_row,
    )
}

/// Reads one payment.
pub(crate) fn get_payment(conn: &Connection, id: i64) -> rusqlite::Result<Option<Payment>> {
    conn.query_row(
        "SELECT id, amount_cents, currency, state, charge_id, fence FROM payments WHERE id = ?1",
        [id],
        payment_from_row,
    )
    .optional()
}

/// Marks a payment PAID with `charge_id` if, and only if, `token` is greater
/// than the token of the row's last writer. The comparison and the write are
/// one statement, so no other writer can come between them.
pub(crate) fn mark_paid_fenced(
    conn: &Connection,
    id: i64,
    charge_id: &str,
    token: u64,
) -> rusqlite::Result<WriteOutcome> {
    let token = token_to_sql(token);
    let changed = conn.execute(
        "UPDATE payments SET state = 'PAID', charge_id = ?2, fence = ?3 WHERE id = ?1 AND fence < ?3",
        params![id, charge_id, token],
    )?;
    if changed == 1 {
        return Ok(WriteOutcome::Applied);
    }
    Ok(match get_payment(conn, id)? {
        Some(p) => WriteOutcome::FencedOut { current: p.fence },
        None => WriteOutcome::Missing,
    })
}

/// The broken write of `--no-lock`: last writer wins, whoever it is.
pub(crate) fn mark_paid_unfenced(conn: &Connection, id: i64, charge_id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("UPDATE payments SET state = 'PAID', charge_id = ?2 WHERE id = ?1", params![id, charge_id])? == 1)
}

/// The provider's side: records one charge and returns its id.
pub(crate) fn record_charge(
    conn: &Connection,
    payment_id: i64,
    amount_cents: i64,
    currency: &str,
) -> rusqlite::Result<String> {
    let n: i64 = conn.query_row(
        "INSERT INTO provider_charges (payment_id, amount_cents, currency) VALUES (?1, ?2, ?3) RETURNING id",
        params![payment_id, amount_cents, currency],
        |r| r.get(0),
    )?;
    Ok(format!("ch_{n:06}"))
}

/// Every charge the provider has recorded, oldest first, optionally only
/// those of one payment.
pub(crate) fn charges(conn: &Connection, payment_id: Option<i64>) -> rusqlite::Result<Vec<ProviderCharge>> {
    let mut stmt = conn.prepare(
        "SELECT id, payment_id, amount_cents, currency FROM provider_charges
         WHERE ?1 IS NULL OR payment_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([payment_id], |r| {
        let n: i64 = r.get(0)?;
        Ok(ProviderCharge {
            charge_id: format!("ch_{n:06}"),
            payment_id: r.get(1)?,
            amount_cents: r.get(2)?,
            currency: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// The database behind one process: a single connection.
///
/// Why one connection behind a `std::sync::Mutex`: rusqlite's `Connection`
/// is `Send` but not `Sync`, SQLite allows one writer at a time anyway, and
/// every statement here takes microseconds. The mutex is taken only inside
/// `spawn_blocking`, never held across an `.await`.
#[derive(Clone)]
pub(crate) struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens the database file at `path`.
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store { conn: Arc::new(Mutex::new(open(path)?)) })
    }

    /// Runs `f` on the connection, on the blocking pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            // A panic inside `f` cannot leave a half-done statement behind
            // (SQLite statements are atomic), so a poisoned lock is usable.
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await??;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory db");
        prepare(&conn).expect("schema");
        conn
    }

    #[test]
    fn a_new_payment_is_empty_and_unfenced() {
        let conn = mem();
        let p = create_payment(&conn, 1999, "EUR").expect("create");
        assert_eq!((p.state, p.fence, p.charge_id.as_deref()), (PaymentState::Empty, 0, None));
        assert_eq!(get_payment(&conn, p.id).expect("get"), Some(p));
    }

    #[test]
    fn fenced_write_applies_only_with_a_greater_token() {
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        assert_eq!(mark_paid_fenced(&conn, p.id, "ch_new", 7).expect("write"), WriteOutcome::Applied);
        // The holder whose lease passed to token 7 comes back with token 5.
        assert_eq!(mark_paid_fenced(&conn, p.id, "ch_old", 5).expect("write"), WriteOutcome::FencedOut { current: 7 });
        // The same token again is refused too: tokens are never reused.
        assert_eq!(mark_paid_fenced(&conn, p.id, "ch_old", 7).expect("write"), WriteOutcome::FencedOut { current: 7 });
        let after = get_payment(&conn, p.id).expect("get").expect("row");
        assert_eq!((after.state, after.charge_id.as_deref(), after.fence), (PaymentState::Paid, Some("ch_new"), 7));
    }

    #[test]
    fn fenced_write_on_a_missing_row_says_so() {
        let conn = mem();
        assert_eq!(mark_paid_fenced(&conn, 42, "ch", 1).expect("write"), WriteOutcome::Missing);
    }

    #[test]
    fn huge_tokens_keep_their_order() {
        let conn = mem();
        let p = create_payment(&conn, 1, "EUR").expect("create");
        assert_eq!(mark_paid_fenced(&conn, p.id, "a", u64::MAX - 1).expect("write"), WriteOutcome::Applied);
        assert!(matches!(mark_paid_fenced(&conn, p.id, "b", 3).expect("write"), WriteOutcome::FencedOut { .. }));
    }

    #[test]
    fn charges_are_counted_per_payment() {
        let conn = mem();
        let a = record_charge(&conn, 1, 100, "EUR").expect("charge");
        let _ = record_charge(&conn, 2, 200, "EUR").expect("charge");
        let b = record_charge(&conn, 1, 100, "EUR").expect("charge");
        let ids: Vec<_> = charges(&conn, Some(1)).expect("list").into_iter().map(|c| c.charge_id).collect();
        assert_eq!(ids, vec![a, b]);
        assert_eq!(charges(&conn, None).expect("list").len(), 3);
    }
}
