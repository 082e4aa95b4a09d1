//! SQLite storage: the `payments` table with its fenced PAID write, and the
//! simulated provider's own ledger of charges (`provider_charges`).
//!
//! Every row of `payments` keeps `fence`: the fencing token of the lease
//! holder that owns the row. A PUT under a lease writes the row twice:
//!
//! 1. [`claim`], before charging: `fence = token` where `fence < token` and
//!    the payment is still EMPTY. A PUT that cannot claim the row charges
//!    nothing: either the payment is PAID already or a newer holder owns it.
//! 2. [`mark_paid_fenced`], after charging: PAID only where `fence = token`,
//!    i.e. nobody has claimed the row since. A holder whose lease passed to
//!    a newer one (which claimed the row) is refused, whichever of the two
//!    reaches its final write first.
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
    /// Fencing token of the lease holder that last claimed the row (0: none yet).
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

/// Outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The row was EMPTY with an older fence and now carries the claimer's
    /// token: the claimer may charge.
    Claimed(Payment),
    /// The payment is PAID already: nothing to charge.
    AlreadyPaid(Payment),
    /// The row is EMPTY but carries `current` ≥ the claimer's token: a newer
    /// lease holder owns it, so the claimer's lease has ended.
    Superseded {
        /// The token of the newer holder.
        current: u64,
    },
    /// No such row.
    Missing,
}

/// Outcome of [`mark_paid_fenced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// The row is PAID with the writer's charge id; the payment as written.
    Applied(Payment),
    /// The row no longer carries the writer's token: a newer holder (token
    /// `current`) claimed it after the writer did. Nothing written.
    FencedOut {
        /// The row's token now.
        current: u64,
    },
    /// No such row.
    Missing,
}

/// A fencing token as SQLite stores it (INTEGER is signed 64-bit). Tokens
/// above `i64::MAX` saturate, which keeps the order of every token up to it;
/// past it a newer token cannot claim a row an older one holds (refused, not
/// let in twice).
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

const PAYMENT_COLUMNS: &str = "id, amount_cents, currency, state, charge_id, fence";

/// Inserts a payment in state EMPTY.
pub(crate) fn create_payment(conn: &Connection, amount_cents: i64, currency: &str) -> rusqlite::Result<Payment> {
    conn.query_row(
        &format!(
            "INSERT INTO payments (amount_cents, currency, state) VALUES (?1, ?2, 'EMPTY') RETURNING {PAYMENT_COLUMNS}"
        ),
        params![amount_cents, currency],
        payment_from_row,
    )
}

/// Reads one payment.
pub(crate) fn get_payment(conn: &Connection, id: i64) -> rusqlite::Result<Option<Payment>> {
    conn.query_row(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1"), [id], payment_from_row).optional()
}

/// Claims an EMPTY payment for the lease holder with `token`, before it
/// charges: the row takes the token only if its fence is smaller and it is
/// still EMPTY. Check and write are one statement, so no other writer can
/// come between them.
pub(crate) fn claim(conn: &Connection, id: i64, token: u64) -> rusqlite::Result<Claim> {
    let claimed = conn
        .query_row(
            &format!(
                "UPDATE payments SET fence = ?2 WHERE id = ?1 AND fence < ?2 AND state = 'EMPTY'
                 RETURNING {PAYMENT_COLUMNS}"
            ),
            params![id, token_to_sql(token)],
            payment_from_row,
        )
        .optional()?;
    if let Some(p) = claimed {
        return Ok(Claim::Claimed(p));
    }
    Ok(match get_payment(conn, id)? {
        None => Claim::Missing,
        Some(p) if p.state == PaymentState::Paid => Claim::AlreadyPaid(p),
        Some(p) => Claim::Superseded { current: p.fence },
    })
}

/// Marks a payment PAID with `charge_id` if, and only if, the row still
/// carries `token` from this holder's [`claim`] (and is still EMPTY): a
/// newer holder that claimed the row since makes this write a no-op. The
/// comparison and the write are one statement.
pub(crate) fn mark_paid_fenced(
    conn: &Connection,
    id: i64,
    charge_id: &str,
    token: u64,
) -> rusqlite::Result<WriteOutcome> {
    let written = conn
        .query_row(
            &format!(
                "UPDATE payments SET state = 'PAID', charge_id = ?2 WHERE id = ?1 AND fence = ?3 AND state = 'EMPTY'
                 RETURNING {PAYMENT_COLUMNS}"
            ),
            params![id, charge_id, token_to_sql(token)],
            payment_from_row,
        )
        .optional()?;
    if let Some(p) = written {
        return Ok(WriteOutcome::Applied(p));
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

    /// A private in-memory database, for unit tests.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        prepare(&conn)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)) })
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

    fn paid(conn: &Connection, id: i64, charge_id: &str, token: u64) -> WriteOutcome {
        mark_paid_fenced(conn, id, charge_id, token).expect("write")
    }

    #[test]
    fn claim_then_write_pays_once() {
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        let Claim::Claimed(claimed) = claim(&conn, p.id, 7).expect("claim") else { panic!("not claimed") };
        assert_eq!((claimed.state, claimed.fence), (PaymentState::Empty, 7));
        let WriteOutcome::Applied(after) = paid(&conn, p.id, "ch_1", 7) else { panic!("not applied") };
        assert_eq!((after.state, after.charge_id.as_deref(), after.fence), (PaymentState::Paid, Some("ch_1"), 7));
        assert_eq!(get_payment(&conn, p.id).expect("get"), Some(after.clone()));
        // A later PUT, even with a newer token, finds it PAID and may not charge.
        assert_eq!(claim(&conn, p.id, 9).expect("claim"), Claim::AlreadyPaid(after.clone()));
        // Nor may the same holder write twice.
        assert_eq!(paid(&conn, p.id, "ch_2", 7), WriteOutcome::FencedOut { current: 7 });
        assert_eq!(get_payment(&conn, p.id).expect("get"), Some(after));
    }

    #[test]
    fn a_write_without_a_claim_is_refused() {
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        assert_eq!(paid(&conn, p.id, "ch_1", 3), WriteOutcome::FencedOut { current: 0 });
        assert_eq!(get_payment(&conn, p.id).expect("get").expect("row").state, PaymentState::Empty);
    }

    #[test]
    fn a_stale_holder_writing_first_after_the_newer_claim_is_refused() {
        // A (token 5) claimed and charged, then stalled past its ttl; B
        // (token 7) claimed and is charging. A wakes first and writes.
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        assert!(matches!(claim(&conn, p.id, 5).expect("claim"), Claim::Claimed(_)));
        assert!(matches!(claim(&conn, p.id, 7).expect("claim"), Claim::Claimed(_)));
        assert_eq!(paid(&conn, p.id, "ch_a", 5), WriteOutcome::FencedOut { current: 7 });
        assert_eq!(get_payment(&conn, p.id).expect("get").expect("row").state, PaymentState::Empty);
        // B's write, after A's, stands.
        let WriteOutcome::Applied(after) = paid(&conn, p.id, "ch_b", 7) else { panic!("not applied") };
        assert_eq!((after.charge_id.as_deref(), after.fence), (Some("ch_b"), 7));
    }

    #[test]
    fn a_stale_holder_writing_after_the_newer_write_is_refused() {
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        assert!(matches!(claim(&conn, p.id, 5).expect("claim"), Claim::Claimed(_)));
        assert!(matches!(claim(&conn, p.id, 7).expect("claim"), Claim::Claimed(_)));
        assert!(matches!(paid(&conn, p.id, "ch_b", 7), WriteOutcome::Applied(_)));
        assert_eq!(paid(&conn, p.id, "ch_a", 5), WriteOutcome::FencedOut { current: 7 });
        let after = get_payment(&conn, p.id).expect("get").expect("row");
        assert_eq!((after.state, after.charge_id.as_deref()), (PaymentState::Paid, Some("ch_b")));
    }

    #[test]
    fn a_stale_holder_writing_before_the_newer_claim_pays_and_the_newer_charges_nothing() {
        // A's lease ended but nobody had claimed the row yet: A's charge is
        // the only one, recording it is right, and B finds the payment PAID.
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        assert!(matches!(claim(&conn, p.id, 5).expect("claim"), Claim::Claimed(_)));
        let WriteOutcome::Applied(after) = paid(&conn, p.id, "ch_a", 5) else { panic!("not applied") };
        assert_eq!(claim(&conn, p.id, 7).expect("claim"), Claim::AlreadyPaid(after));
    }

    #[test]
    fn an_older_token_cannot_claim_a_row_a_newer_one_holds() {
        let conn = mem();
        let p = create_payment(&conn, 500, "EUR").expect("create");
        assert!(matches!(claim(&conn, p.id, 7).expect("claim"), Claim::Claimed(_)));
        assert_eq!(claim(&conn, p.id, 5).expect("claim"), Claim::Superseded { current: 7 });
        // The same token again is refused too: tokens are never reused.
        assert_eq!(claim(&conn, p.id, 7).expect("claim"), Claim::Superseded { current: 7 });
    }

    #[test]
    fn claims_and_writes_on_a_missing_row_say_so() {
        let conn = mem();
        assert_eq!(claim(&conn, 42, 1).expect("claim"), Claim::Missing);
        assert_eq!(paid(&conn, 42, "ch", 1), WriteOutcome::Missing);
    }

    #[test]
    fn huge_tokens_never_let_an_older_holder_in() {
        let conn = mem();
        let p = create_payment(&conn, 1, "EUR").expect("create");
        assert!(matches!(claim(&conn, p.id, u64::MAX - 1).expect("claim"), Claim::Claimed(_)));
        assert!(matches!(claim(&conn, p.id, 3).expect("claim"), Claim::Superseded { .. }));
        assert!(matches!(paid(&conn, p.id, "b", 3), WriteOutcome::FencedOut { .. }));
        assert!(matches!(paid(&conn, p.id, "a", u64::MAX - 1), WriteOutcome::Applied(_)));
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
