//! SQLite storage: orders with their callback status and fence, and the
//! statistics the callback bumps, changed together in one transaction.
//!
//! [`apply_callback`] is the whole write of one delivery: in one
//! `BEGIN IMMEDIATE` transaction it checks that the order is committed,
//! claims the order row with the lease's fencing token (refused when a newer
//! lease holder has written it), and, if the callback is not DONE yet, bumps
//! the statistics and marks it DONE. Either all of it happens or none.
//!
//! What keeps the count at one is that the status check and the bump share
//! that transaction (it holds SQLite's write lock from its first statement),
//! whatever the leases do: of two deliveries, whichever commits second finds
//! DONE. The fence adds that a holder whose lease has passed on is refused
//! once the newer holder has written; a stale holder that writes *before*
//! the newer one is let in, counts, and the newer one is then a duplicate.
//! That is safe here because the whole effect is this one transaction; work
//! with effects outside the database would need a claim before the work, as
//! payment-service does before it charges.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id        INTEGER PRIMARY KEY,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents >= 0),
    callback_status TEXT    NOT NULL DEFAULT 'CREATED' CHECK (callback_status IN ('CREATED', 'DONE')),
    times_counted   INTEGER NOT NULL DEFAULT 0,
    fence           INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS stats (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    orders_counted INTEGER NOT NULL DEFAULT 0,
    revenue_cents  INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO stats (id) VALUES (1);
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

/// One order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Order {
    /// The order's id.
    pub(crate) order_id: i64,
    /// Its amount, minor unit.
    pub(crate) amount_cents: i64,
    /// `CREATED` until its "order placed" callback has been counted, then `DONE`.
    pub(crate) callback_status: String,
    /// How many times the statistics were bumped for it: 0 or 1, never more.
    pub(crate) times_counted: i64,
    /// Fencing token of the last lease holder that wrote the row (0: none).
    #[serde(rename = "fencing_token")]
    pub(crate) fence: u64,
}

/// The statistics the callbacks feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Stats {
    /// Orders counted.
    pub(crate) orders_counted: i64,
    /// Sum of their amounts, minor unit.
    pub(crate) revenue_cents: i64,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// First delivery: statistics bumped, callback marked DONE.
    Counted,
    /// The callback was DONE already: nothing counted.
    Duplicate,
    /// No such order yet (its transaction has not committed): nothing
    /// counted, the delivery should be retried later.
    NotCommitted,
    /// A newer lease holder (token `current`) has written the order: this
    /// holder's lease ended while it worked. Nothing written.
    FencedOut {
        /// The row's token.
        current: u64,
    },
}

/// Whether `POST /orders` created the order or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// Inserted now.
    New,
    /// It was there already (same id): left as it was.
    Existing,
}

/// `callback_status` once the callback has been counted.
pub(crate) const DONE: &str = "DONE";

/// A fencing token as SQLite stores it (INTEGER is signed 64-bit). Tokens
/// above `i64::MAX` saturate, which keeps the order of every token up to it.
fn token_to_sql(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

/// Opens (creating if needed) the database file and its schema, in WAL mode
/// with a busy timeout, so several worker processes can share the file.
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

fn order_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Order> {
    let fence: i64 = r.get(4)?;
    Ok(Order {
        order_id: r.get(0)?,
        amount_cents: r.get(1)?,
        callback_status: r.get(2)?,
        times_counted: r.get(3)?,
        fence: u64::try_from(fence).unwrap_or(0),
    })
}

const ORDER_COLUMNS: &str = "order_id, amount_cents, callback_status, times_counted, fence";

/// Commits an order (what the order service does before the queue delivers
/// its callback). Creating an existing id changes nothing.
pub(crate) fn create_order(conn: &Connection, order_id: i64, amount_cents: i64) -> rusqlite::Result<(Created, Order)> {
    let n = conn.execute(
        "INSERT INTO orders (order_id, amount_cents) VALUES (?1, ?2) ON CONFLICT (order_id) DO NOTHING",
        params![order_id, amount_cents],
    )?;
    let order = get_order(conn, order_id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok((if n == 1 { Created::New } else { Created::Existing }, order))
}

/// Reads one order.
pub(crate) fn get_order(conn: &Connection, order_id: i64) -> rusqlite::Result<Option<Order>> {
    conn.query_row(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?1"), [order_id], order_from_row)
        .optional()
}

/// Every order, by id.
pub(crate) fn list_orders(conn: &Connection) -> rusqlite::Result<Vec<Order>> {
    let mut stmt = conn.prepare(&format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY order_id"))?;
    let rows = stmt.query_map([], order_from_row)?;
    rows.collect()
}

/// The statistics.
pub(crate) fn stats(conn: &Connection) -> rusqlite::Result<Stats> {
    conn.query_row("SELECT orders_counted, revenue_cents FROM stats WHERE id = 1", [], |r| {
        Ok(Stats { orders_counted: r.get(0)?, revenue_cents: r.get(1)? })
    })
}

/// Applies one "order placed" delivery under the lease with `token`, in one
/// transaction (see the module doc).
pub(crate) fn apply_callback(conn: &mut Connection, order_id: i64, token: u64) -> rusqlite::Result<Applied> {
    // IMMEDIATE: take SQLite's write lock first, so that no other process can
    // write between our reads and our writes.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<(String, i64, i64)> = tx
        .query_row("SELECT callback_status, amount_cents, fence FROM orders WHERE order_id = ?1", [order_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((status, amount_cents, fence)) = row else {
        return Ok(Applied::NotCommitted);
    };
    // The fenced write: the row takes our token only if it is greater than
    // the token of whoever wrote it last.
    let token = token_to_sql(token);
    let claimed =
        tx.execute("UPDATE orders SET fence = ?2 WHERE order_id = ?1 AND fence < ?2", params![order_id, token])?;
    if claimed == 0 {
        return Ok(Applied::FencedOut { current: u64::try_from(fence).unwrap_or(0) });
    }
    if status == DONE {
        tx.commit()?;
        return Ok(Applied::Duplicate);
    }
    tx.execute(
        "UPDATE stats SET orders_counted = orders_counted + 1, revenue_cents = revenue_cents + ?1 WHERE id = 1",
        [amount_cents],
    )?;
    tx.execute(
        "UPDATE orders SET callback_status = 'DONE', times_counted = times_counted + 1 WHERE order_id = ?1",
        [order_id],
    )?;
    tx.commit()?;
    Ok(Applied::Counted)
}

/// The database behind one process: a single connection.
///
/// Why one connection behind a `std::sync::Mutex`: rusqlite's `Connection`
/// is `Send` but not `Sync`, SQLite allows one writer at a time anyway, and
/// every transaction here takes microseconds. The mutex is taken only inside
/// `spawn_blocking`, never held across an `.await`. Other processes sharing
/// the file wait on SQLite's own lock (busy timeout).
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
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            // A panic inside `f` rolls its transaction back (rusqlite's
            // `Transaction` does so on drop), so a poisoned lock is usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
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
    fn a_callback_before_the_order_is_committed_counts_nothing() {
        let mut conn = mem();
        assert_eq!(apply_callback(&mut conn, 7, 1).expect("apply"), Applied::NotCommitted);
        assert_eq!(stats(&conn).expect("stats"), Stats { orders_counted: 0, revenue_cents: 0 });
        // Once committed, the redelivery counts it.
        create_order(&conn, 7, 1250).expect("create");
        assert_eq!(apply_callback(&mut conn, 7, 2).expect("apply"), Applied::Counted);
        assert_eq!(stats(&conn).expect("stats"), Stats { orders_counted: 1, revenue_cents: 1250 });
    }

    #[test]
    fn a_second_delivery_is_a_duplicate() {
        let mut conn = mem();
        create_order(&conn, 1, 100).expect("create");
        assert_eq!(apply_callback(&mut conn, 1, 3).expect("apply"), Applied::Counted);
        assert_eq!(apply_callback(&mut conn, 1, 4).expect("apply"), Applied::Duplicate);
        let o = get_order(&conn, 1).expect("get").expect("row");
        assert_eq!((o.callback_status.as_str(), o.times_counted, o.fence), ("DONE", 1, 4));
        assert_eq!(stats(&conn).expect("stats").orders_counted, 1);
    }

    #[test]
    fn a_stale_token_is_fenced_out_and_writes_nothing() {
        let mut conn = mem();
        create_order(&conn, 1, 100).expect("create");
        create_order(&conn, 2, 100).expect("create");
        // The newer holder (token 9) wrote order 1; the old one (token 5) comes back.
        assert_eq!(apply_callback(&mut conn, 1, 9).expect("apply"), Applied::Counted);
        assert_eq!(apply_callback(&mut conn, 1, 5).expect("apply"), Applied::FencedOut { current: 9 });
        // A stale token is refused even when the callback is not done: the
        // newer holder may be about to write it.
        conn.execute("UPDATE orders SET fence = 9 WHERE order_id = 2", []).expect("set fence");
        assert_eq!(apply_callback(&mut conn, 2, 5).expect("apply"), Applied::FencedOut { current: 9 });
        assert_eq!(get_order(&conn, 2).expect("get").expect("row").callback_status, "CREATED");
        assert_eq!(stats(&conn).expect("stats"), Stats { orders_counted: 1, revenue_cents: 100 });
    }

    #[test]
    fn a_stale_holder_writing_before_the_newer_one_counts_once() {
        // A (token 5) lost its lease mid-work; B (token 9) holds it now but
        // has not written yet. A's transaction comes first: nothing newer has
        // written the row, so the fence lets A in and A counts. B's
        // transaction then finds the callback DONE: a duplicate. The fence
        // did not stop A; the status check in the same transaction is what
        // keeps the count at one.
        let mut conn = mem();
        create_order(&conn, 1, 100).expect("create");
        assert_eq!(apply_callback(&mut conn, 1, 5).expect("apply"), Applied::Counted);
        assert_eq!(apply_callback(&mut conn, 1, 9).expect("apply"), Applied::Duplicate);
        let o = get_order(&conn, 1).expect("get").expect("row");
        assert_eq!((o.callback_status.as_str(), o.times_counted, o.fence), ("DONE", 1, 9));
        assert_eq!(stats(&conn).expect("stats"), Stats { orders_counted: 1, revenue_cents: 100 });
    }

    #[test]
    fn creating_an_order_twice_keeps_the_first() {
        let conn = mem();
        assert_eq!(create_order(&conn, 3, 10).expect("create").0, Created::New);
        let (created, order) = create_order(&conn, 3, 99).expect("create");
        assert_eq!((created, order.amount_cents), (Created::Existing, 10));
        assert_eq!(list_orders(&conn).expect("list").len(), 1);
    }
}
