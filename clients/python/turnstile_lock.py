"""A small Python client of the turnstile lock coordinator (grpcio).

The stubs are generated from the repository's proto/ at first use, with
grpcio-tools, into a cache directory keyed by the proto's hash: the proto stays
the one source of truth and nothing generated is committed.

    client = Client("127.0.0.1:7700", ttl=10)
    with client.lock("report:daily", wait=30) as lease:
        write(token=lease.fencing_token)      # an int: Python ints hold any uint64
        if lease.lost.is_set(): ...           # threading.Event, set when the lease is lost

Semantics as in crates/turnstile-client: a background thread renews about
every third of the TTL; the lease counts as valid until the *send* time of the
last successful grant or renew plus the TTL (time.monotonic); `lost` is set the
moment a renew is answered NOT_FOUND or that validity passes without a renew.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import socket
import sys
import tempfile
import threading
import time
import uuid

import grpc

PROTO_DIR = os.environ.get(
    "TURNSTILE_PROTO_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"),
)
PROTO_FILE = os.path.join("turnstile", "v1", "lock.proto")
MAX_WAIT_PER_CALL = 300.0

_stubs = None
_stubs_lock = threading.Lock()


def load_stubs():
    """Generates (once per proto version) and imports lock_pb2 and lock_pb2_grpc."""
    global _stubs
    with _stubs_lock:
        if _stubs is not None:
            return _stubs
        from grpc_tools import protoc
        import grpc_tools

        src = os.path.join(PROTO_DIR, PROTO_FILE)
        with open(src, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        out = os.path.join(tempfile.gettempdir(), f"turnstile-py-stubs-{digest}")
        if not os.path.exists(os.path.join(out, "turnstile", "v1", "lock_pb2_grpc.py")):
            tmp = tempfile.mkdtemp(prefix="turnstile-py-stubs-")
            well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
            rc = protoc.main(
                ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", src]
            )
            if rc != 0:
                raise RuntimeError(f"protoc failed ({rc}) on {src}")
            try:
                os.rename(tmp, out)  # atomic: a concurrent generator's copy is as good
            except OSError:
                pass
        if out not in sys.path:
            sys.path.insert(0, out)
        pb2 = importlib.import_module("turnstile.v1.lock_pb2")
        pb2_grpc = importlib.import_module("turnstile.v1.lock_pb2_grpc")
        _stubs = (pb2, pb2_grpc)
        return _stubs


class TurnstileError(Exception):
    """A refused or failed call. `code` is the grpc.StatusCode; `field` names the bad field of INVALID_ARGUMENT."""

    def __init__(self, message, code=None, field=None):
        super().__init__(message)
        self.code = code
        self.field = field


class Contended(TurnstileError):
    """The lock is held (a try-lock, or a wait that ran out)."""

    def __init__(self, key, holder=None, waiters=0):
        super().__init__(f"lock {key!r} is held by {holder!r}" if holder else f"lock {key!r} was not granted in time")
        self.key, self.holder, self.waiters = key, holder, waiters


class LeaseLost(TurnstileError):
    """The lease ended before its holder released it."""

    def __init__(self, key, token, reason):
        super().__init__(f"lease on {key!r} (token {token}) lost: {reason}")
        self.key, self.fencing_token, self.reason = key, token, reason


def _error(e: grpc.RpcError) -> TurnstileError:
    code, message = e.code(), e.details() or str(e)
    field = None
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The message names the field ("invalid key: must not be empty"); the
        # google.rpc.BadRequest detail says the same (decoding it would need googleapis-common-protos).
        m = re.match(r"(?:invalid )?([A-Za-z_][\w.]*): ", message)
        field = m.group(1) if m else None
    return TurnstileError(f"{code.name}: {message}", code=code, field=field)


def _duration(pb2, seconds):
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class Client:
    def __init__(self, address, owner=None, ttl=15.0, call_timeout=10.0, token=None, credentials=None, interceptors=()):
        self._pb2, pb2_grpc = load_stubs()
        target = address.split("://", 1)[-1]
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        if interceptors:
            self._channel = grpc.intercept_channel(self._channel, *interceptors)
        self._stub = pb2_grpc.LockServiceStub(self._channel)
        self.owner = owner or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.ttl = ttl
        self.call_timeout = call_timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._seq = 0
        self._seq_lock = threading.Lock()

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout):
        try:
            return getattr(self._stub, method)(request, timeout=max(timeout, 0.001), metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e) from None

    def lock(self, key, ttl=None, wait=None):
        """Waits for the lock (at most `wait` seconds; None: as long as it takes; 0: try once). Returns a Lease."""
        pb2 = self._pb2
        ttl = self.ttl if ttl is None else ttl
        with self._seq_lock:
            self._seq += 1
            owner = f"{self.owner}/{self._seq}"
        until = None if wait is None else time.monotonic() + wait
        confirmed = False
        while True:
            sent = time.monotonic()
            wait_now = 0.0 if wait == 0 else min(MAX_WAIT_PER_CALL, MAX_WAIT_PER_CALL if until is None else max(0.0, until - sent))
            req = pb2.AcquireRequest(key=key, owner=owner, ttl=_duration(pb2, ttl))
            if wait_now > 0:
                req.wait_timeout.CopyFrom(_duration(pb2, wait_now))
            resp = self._call("Acquire", req, wait_now + self.call_timeout)
            if resp.acquired:
                granted = resp.lease.ttl.ToNanoseconds() / 1e9
                if not confirmed and time.monotonic() - sent > granted / 3:
                    confirmed = True  # granted after a long wait: confirm as the same owner (G5)
                    continue
                return Lease(self, key, owner, resp.lease.fencing_token, granted, sent)
            if wait == 0 or (until is not None and time.monotonic() >= until):
                cur = resp.current
                raise Contended(key, cur.owner if cur.held else None, cur.waiters)

    def try_lock(self, key, ttl=None):
        return self.lock(key, ttl=ttl, wait=0)

    def get(self, key):
        return self._call("GetLock", self._pb2.GetLockRequest(key=key), self.call_timeout)

    def release(self, key, fencing_token):
        """Operator call: ends the lease with that token; False when it had already ended."""
        req = self._pb2.ReleaseRequest(key=key, fencing_token=fencing_token)
        return self._call("Release", req, self.call_timeout).released


class Lease:
    """A held lease, renewed by a background thread. `lost` is a threading.Event."""

    def __init__(self, client, key, owner, fencing_token, ttl, sent):
        self._client = client
        self.key, self.owner, self.fencing_token, self.ttl = key, owner, fencing_token, ttl
        self.valid_until = sent + ttl  # the clock rule: from the send time, on time.monotonic()
        self.lost = threading.Event()
        self.lost_reason = None
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._released = False
        self._thread = threading.Thread(target=self._renew_loop, args=(sent,), daemon=True, name=f"turnstile-renew-{key}")
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.release()
        except LeaseLost:
            if exc[0] is None:
                raise

    @property
    def is_valid(self):
        self._check()
        return not self.lost.is_set() and not self._released

    def _check(self, now=None):
        with self._state:
            if not self._released and not self.lost.is_set() and (now or time.monotonic()) >= self.valid_until:
                self._mark_lost_locked("not_renewed")

    def _mark_lost_locked(self, reason):
        if self.lost.is_set() or self._released:
            return
        self.lost_reason = reason
        self.lost.set()

    def _renew_loop(self, last_sent):
        pb2 = self._client._pb2
        next_at = last_sent + self.ttl / 3
        while True:
            # Sleep until the next renew, waking at the validity's end or a release.
            if self._stop.wait(max(0.0, min(next_at, self.valid_until) - time.monotonic())):
                return
            now = time.monotonic()
            self._check(now)
            if self.lost.is_set():
                break
            if now < next_at:
                continue
            sent = time.monotonic()
            try:
                resp = self._client._call(
                    "Renew",
                    pb2.RenewRequest(key=self.key, fencing_token=self.fencing_token),
                    min(self._client.call_timeout, self.valid_until - sent),
                )
            except TurnstileError as e:
                if e.code == grpc.StatusCode.NOT_FOUND:
                    with self._state:
                        self._mark_lost_locked("ended")
                    return
                next_at = time.monotonic() + min(0.5, max(0.01, self.ttl / 10))  # retry until validity runs out
                continue
            with self._state:
                if self._released or self.lost.is_set():
                    return
                if time.monotonic() >= self.valid_until:  # answered too late: stays lost
                    self._mark_lost_locked("not_renewed")
                    break
                self.ttl = resp.lease.ttl.ToNanoseconds() / 1e9
                self.valid_until = sent + self.ttl
            next_at = sent + self.ttl / 3
        # Lost by validity: release in case the coordinator still has it, so the key frees at once.
        try:
            self._client.release(self.key, self.fencing_token)
        except TurnstileError:
            pass

    def release(self):
        """Ends the lease. Raises LeaseLost when it had already ended."""
        self._check()
        with self._state:
            already = self._released
            lost = self.lost.is_set()
            self._released = True
        self._stop.set()
        if already:
            return
        if lost:
            raise LeaseLost(self.key, self.fencing_token, self.lost_reason)
        if not self._client.release(self.key, self.fencing_token):
            with self._state:
                self._released = False
                self._mark_lost_locked("ended")
            raise LeaseLost(self.key, self.fencing_token, "ended")
