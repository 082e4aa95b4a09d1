"""Tests of turnstile_lock.py and example.py against a real turnstiled
($TURNSTILED, default ../../target/debug/turnstiled). Run: python -m unittest -v"""

import os
import re
import subprocess
import time
import unittest

import grpc

import example
from turnstile_lock import Client, Contended, LeaseLost, TurnstileError

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("TURNSTILED", os.path.join(HERE, "..", "..", "target", "debug", "turnstiled"))


def start_server():
    proc = subprocess.Popen(
        [BIN, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"turnstiled listening grpc=(\S+) http=(\S+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"unexpected first line from turnstiled: {line!r}")
    return proc, m.group(1).split("://")[-1]


def eventually(check, what, timeout=20.0):
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


class TurnstileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.addr = start_server()
        cls.client = Client(cls.addr, ttl=2.0)
        cls.admin = Client(cls.addr, owner="admin")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.admin.close()
        cls.proc.kill()
        cls.proc.wait()

    def test_exclusive_with_increasing_tokens(self):
        a = self.client.lock("py:excl")
        with self.assertRaises(Contended) as cm:
            self.client.try_lock("py:excl")
        self.assertEqual(cm.exception.holder, a.owner)
        a.release()
        with self.client.try_lock("py:excl") as b:
            self.assertGreater(b.fencing_token, a.fencing_token)
        self.assertFalse(self.admin.get("py:excl").held)

    def test_renewals_keep_the_lease_past_its_ttl(self):
        lease = self.client.lock("py:renew", ttl=1.0)
        start = time.monotonic()
        while time.monotonic() - start < 2.5:  # 2.5 TTLs: time passing is the scenario
            time.sleep(0.05)
            self.assertTrue(lease.is_valid)
        info = self.admin.get("py:renew")
        self.assertTrue(info.held)
        self.assertEqual(info.fencing_token, lease.fencing_token)
        lease.release()

    def test_validity_counts_from_the_send_time(self):
        delay = 0.4

        class SlowReplies(grpc.UnaryUnaryClientInterceptor):
            """Holds every reply back for `delay` seconds before the client sees it."""

            def intercept_unary_unary(self, continuation, details, request):
                outcome = continuation(details, request)  # the call has completed here
                time.sleep(delay)
                return outcome

        with Client(self.addr, ttl=3.0, interceptors=[SlowReplies()]) as slow:
            before = time.monotonic()
            lease = slow.lock("py:clock")
            after = time.monotonic()
            # Sent at or after `before`; its reply took at least `delay`, so sent at or before after - delay.
            self.assertGreaterEqual(lease.valid_until, before + lease.ttl)
            self.assertLessEqual(lease.valid_until, after - delay + lease.ttl, "the reply delay counted as validity")
            lease.release()

    def test_loss_sets_the_event(self):
        lease = self.client.lock("py:lost", ttl=1.5)
        self.assertFalse(lease.lost.is_set())
        self.assertTrue(self.admin.release("py:lost", lease.fencing_token))
        self.assertTrue(lease.lost.wait(20), "lost not set")
        self.assertEqual(lease.lost_reason, "ended")
        self.assertFalse(lease.is_valid)
        with self.assertRaises(LeaseLost):
            lease.release()

    def test_bad_key_names_the_field(self):
        with self.assertRaises(TurnstileError) as cm:
            self.client.lock("")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(cm.exception.field, "key")

    def test_example_counts_a_duplicate_callback_once_and_fences_a_stale_holder(self):
        db = example.open_db(":memory:")
        results, count = example.duplicate_callbacks(db, self.client, 101)
        self.assertEqual(results, ["counted", "duplicate"])
        self.assertEqual(count, 1)
        reason, second, late = example.loss_signal(db, self.client, self.admin, 102)
        self.assertEqual((reason, second, late), ("ended", "counted", "fenced"))
        (count,) = db.execute("SELECT value FROM stats").fetchone()
        self.assertEqual(count, 2)


if __name__ == "__main__":
    unittest.main()
