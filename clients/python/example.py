"""Problem 3 of docs/design.md in Python: an at-least-once queue delivers the
"order placed" callback twice; each delivery takes the lease `order:{id}`,
bumps the statistics only if the order is still CREATED, and writes with its
fencing token, so a holder whose lease has passed on is refused by SQLite.

    python example.py [--addr 127.0.0.1:7700] [--db orders.db]

The second part shows the loss signal: an operator ends the first worker's
lease while it works; its renew thread gets NOT_FOUND and sets `lease.lost`
(a threading.Event); a second worker takes the lock with a larger token; the
first worker's late write is refused by the fence.
"""

from __future__ import annotations

import argparse
import sqlite3
import threading

from turnstile_lock import Client

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, fence INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO stats VALUES ('orders_placed', 0);
"""


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.executescript(SCHEMA)
    return db


def handle_callback(db, client, order_id):
    """One delivery of the callback. Returns 'counted', 'duplicate' or 'fenced'."""
    with client.lock(f"order:{order_id}", wait=30) as lease:
        return fenced_count(db, order_id, lease.fencing_token)


def fenced_count(db, order_id, token):
    """In one transaction: claim the order with the token (fence < token), then count it once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        cur = db.execute(
            "UPDATE orders SET status = 'COUNTED', fence = ? WHERE id = ? AND status = 'CREATED' AND fence < ?",
            (token, order_id, token),
        )
        if cur.rowcount == 1:
            db.execute("UPDATE stats SET value = value + 1 WHERE name = 'orders_placed'")
            outcome = "counted"
        else:
            (fence,) = db.execute("SELECT fence FROM orders WHERE id = ?", (order_id,)).fetchone()
            outcome = "fenced" if fence > token else "duplicate"  # a newer holder owns it, or it was counted
        db.execute("COMMIT")
        return outcome
    except BaseException:
        db.execute("ROLLBACK")
        raise


def duplicate_callbacks(db, client, order_id, deliveries=2):
    db.execute("INSERT INTO orders (id, status) VALUES (?, 'CREATED')", (order_id,))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(handle_callback(db, client, order_id))) for _ in range(deliveries)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (count,) = db.execute("SELECT value FROM stats WHERE name = 'orders_placed'").fetchone()
    return sorted(results), count


def loss_signal(db, client, admin, order_id, timeout=20.0):
    """The first worker's lease is ended by an operator while it works: it sees `lost`, its late write is refused."""
    db.execute("INSERT INTO orders (id, status) VALUES (?, 'CREATED')", (order_id,))
    key = f"order:{order_id}"
    first = client.lock(key, ttl=3.0)
    admin.release(key, first.fencing_token)  # as if it had stalled past its TTL and the lease passed on
    if not first.lost.wait(timeout):  # set by the renew thread on NOT_FOUND
        raise AssertionError("the loss was not signalled")
    second = client.lock(key, wait=timeout)
    assert second.fencing_token > first.fencing_token
    second_outcome = fenced_count(db, order_id, second.fencing_token)
    second.release()
    late_outcome = fenced_count(db, order_id, first.fencing_token)  # the stale holder writes anyway
    return first.lost_reason, second_outcome, late_outcome


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", default="127.0.0.1:7700")
    p.add_argument("--admin-owner", default="operator")
    p.add_argument("--db", default=":memory:")
    a = p.parse_args(argv)
    db = open_db(a.db)
    with Client(a.addr, ttl=5.0) as client, Client(a.addr, owner=a.admin_owner) as admin:
        results, count = duplicate_callbacks(db, client, 1)
        print(f"two deliveries of order 1: {results}; orders_placed = {count}")
        reason, second, late = loss_signal(db, client, admin, 2)
        print(f"order 2: first lease lost ({reason}); second worker {second}; first worker's late write: {late}")
    return results, count, reason, second, late


if __name__ == "__main__":
    main()
