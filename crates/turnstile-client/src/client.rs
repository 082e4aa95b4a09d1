//! [`Client`] and [`ClientBuilder`]: the connection to a coordinator, its
//! settings and their validation, and the inspection calls `get`, `list` and
//! `release`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use turnstile_proto::v1;

use crate::error::Error;
use crate::info::{ForceReleased, LockInfo};
use crate::rpc::{Inner, Retry};

/// Longest key, in bytes (the coordinator's rule, checked here too so a bad
/// key fails without a round trip).
const MAX_KEY_BYTES: usize = 512;
/// Longest owner the coordinator accepts, in bytes.
const MAX_OWNER_BYTES: usize = 256;
/// Room kept in the owner for the `/N` suffix each acquisition adds.
const OWNER_SUFFIX_ROOM: usize = 21;
/// Page size asked for when listing.
const LIST_PAGE_SIZE: u32 = 1000;

/// A connection to a turnstile coordinator. Cheap to clone: clones share one
/// HTTP/2 connection, which is re-established on its own after the
/// coordinator restarts or the connection breaks.
///
/// ```no_run
/// # async fn demo() -> Result<(), turnstile_client::Error> {
/// let client = turnstile_client::Client::connect("http://127.0.0.1:7700").await?;
/// let guard = client.lock("payment:42").await?;
/// println!("holding {} with fencing token {}", guard.key(), guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("owner", &self.inner.owner)
            .field("ttl", &self.inner.ttl)
            .field("call_timeout", &self.inner.call_timeout)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Client`]; start with [`Client::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), turnstile_client::Error> {
/// use std::time::Duration;
/// let client = turnstile_client::Client::builder("http://127.0.0.1:7700")
///     .ttl(Duration::from_secs(10))
///     .owner("billing-worker-3")
///     .call_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    addr: String,
    ttl: Duration,
    owner: Option<String>,
    call_timeout: Duration,
    bearer_token: Option<String>,
    #[cfg(feature = "tls")]
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ClientBuilder {
    /// The TTL asked for on every lock (default 15 s). The coordinator clamps
    /// it to its own bounds; the guard follows the TTL actually granted.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The owner prefix (default `host/pid/random`). Each acquisition sends
    /// `{owner}/{n}` with a counter `n`, so that two acquisitions through one
    /// client never share a lease. At most 235 bytes, no control characters.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How long one call may take beyond the time it waits for a lock,
    /// retries after a lost connection included (default 10 s). Also the
    /// connect timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// TLS settings (CA, client identity for mutual TLS, domain name). An
    /// `https://` address without them uses the system's root certificates;
    /// with them, an address that is not `https://` is refused.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Connects now: fails with [`Error::Unavailable`] when the coordinator
    /// cannot be reached. Later disconnections are repaired on their own.
    pub async fn connect(self) -> Result<Client, Error> {
        let (endpoint, inner) = self.parts()?;
        let host_port = endpoint.uri().authority().map_or_else(String::new, |a| a.to_string());
        let channel = endpoint.connect().await.map_err(|e| Error::Unavailable {
            message: format!("cannot reach turnstiled at {host_port}: {}", chain_words(&e)),
        })?;
        let client = inner(channel);
        client.inner.mark_reached();
        Ok(client)
    }

    /// Builds the client without connecting; the connection is made by the
    /// first call (so this works before the coordinator is up). Call it
    /// within a tokio runtime.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let (endpoint, inner) = self.parts()?;
        Ok(inner(endpoint.connect_lazy()))
    }

    /// Validates the settings and prepares the endpoint.
    fn parts(self) -> Result<(Endpoint, impl FnOnce(Channel) -> Client), Error> {
        if self.ttl.is_zero() {
            return Err(invalid("ttl", "must be greater than zero"));
        }
        if self.call_timeout.is_zero() {
            return Err(invalid("call_timeout", "must be greater than zero"));
        }
        let owner = match self.owner {
            Some(o) => {
                check_owner(&o)?;
                o
            }
            None => default_owner(),
        };
        let auth = match &self.bearer_token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| invalid("bearer_token", "must be printable ASCII"))?,
            ),
            None => None,
        };
        let addr = if self.addr.contains("://") { self.addr.clone() } else { format!("http://{}", self.addr) };
        let connect_err = |source| Error::Connect { addr: addr.clone(), source };
        #[allow(unused_mut)]
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .map_err(connect_err)?
            .connect_timeout(self.call_timeout)
            .tcp_nodelay(true);
        #[cfg(feature = "tls")]
        {
            let tls = match self.tls {
                // tonic would talk plaintext to http:// despite them: the
                // caller meant TLS, and its bearer token would travel in clear.
                Some(_) if !addr.starts_with("https://") => {
                    return Err(invalid("addr", "TLS settings need an https:// address"));
                }
                Some(t) => Some(t),
                None if addr.starts_with("https://") => {
                    Some(tonic::transport::ClientTlsConfig::new().with_native_roots())
                }
                None => None,
            };
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls).map_err(connect_err)?;
            }
        }
        #[cfg(not(feature = "tls"))]
        if addr.starts_with("https://") {
            return Err(invalid("addr", "https:// needs the `tls` feature of turnstile-client"));
        }
        let (ttl, call_timeout) = (self.ttl, self.call_timeout);
        let host_port = endpoint.uri().authority().map_or_else(|| addr.clone(), |a| a.to_string());
        let inner =
            move |channel| Client { inner: Arc::new(Inner::new(channel, owner, ttl, call_timeout, auth, host_port)) };
        Ok((endpoint, inner))
    }
}

impl Client {
    /// Connects to the coordinator at `addr` (e.g. `http://127.0.0.1:7700`;
    /// a bare `host:port` means `http://`) with default settings.
    pub async fn connect(addr: impl Into<String>) -> Result<Client, Error> {
        Client::builder(addr).connect().await
    }

    /// Settings for a client of the coordinator at `addr`.
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            ttl: Duration::from_secs(15),
            owner: None,
            call_timeout: Duration::from_secs(10),
            bearer_token: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The owner prefix of this client's acquisitions.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The TTL this client asks for.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Who holds `key`, for how long, and how many wait.
    pub async fn get(&self, key: &str) -> Result<LockInfo, Error> {
        check_key(key)?;
        let msg = v1::GetLockRequest { key: key.to_owned() };
        let deadline = Instant::now() + self.inner.call_timeout;
        let info = self
            .inner
            .call("GetLock", msg, deadline, Retry::Unavailable, |mut c, r| async move { c.get_lock(r).await })
            .await?;
        Ok(info.into())
    }

    /// Whether the coordinator says it is SERVING (gRPC health of the server
    /// as a whole): false while it recovers after a crash or shuts down. One
    /// check, within the call timeout; an unreachable coordinator is an
    /// error, as for any call.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), turnstile_client::Error> {
    /// let client = turnstile_client::Client::connect("http://127.0.0.1:7700").await?;
    /// if !client.serving().await? {
    ///     eprintln!("turnstile is up but not granting (recovering or stopping)");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn serving(&self) -> Result<bool, Error> {
        self.inner.serving().await
    }

    /// Every held or awaited key starting with `prefix` (all pages), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>, Error> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let msg = v1::ListLocksRequest { prefix: prefix.to_owned(), page_size: LIST_PAGE_SIZE, page_token };
            let deadline = Instant::now() + self.inner.call_timeout;
            let page = self
                .inner
                .call("ListLocks", msg, deadline, Retry::Unavailable, |mut c, r| async move { c.list_locks(r).await })
                .await?;
            out.extend(page.locks.into_iter().map(LockInfo::from));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// Ends the lease on `key` with `fencing_token`, whoever holds it: an
    /// operator's tool (the `turnstile release` command). Code holding a
    /// [`LockGuard`](crate::LockGuard) uses [`LockGuard::release`](crate::LockGuard::release).
    /// `Ok(false)` when that lease had already ended.
    pub async fn release(&self, key: &str, fencing_token: u64) -> Result<bool, Error> {
        check_key(key)?;
        if fencing_token == 0 {
            return Err(invalid("fencing_token", "must be set (tokens start at 1)"));
        }
        self.inner.release(key, fencing_token, None).await
    }
}

impl Client {
    /// Ends the lease on `key` whoever holds it, as if it had expired (the
    /// next waiter is granted, no result is handed over): the operator's way
    /// to free a stuck key (`turnstile release --force`). Needs the `admin`
    /// verb when the coordinator demands tokens. With `fencing_token`, only
    /// the lease with that token is ended. `released: false` when there was
    /// no such live lease.
    ///
    /// Without a fencing token the call is sent once, never retried: a
    /// retry after a lost answer could end the lease of the next holder.
    pub async fn force_release(&self, key: &str, fencing_token: Option<u64>) -> Result<ForceReleased, Error> {
        check_key(key)?;
        if fencing_token == Some(0) {
            return Err(invalid("fencing_token", "must not be 0 (tokens start at 1)"));
        }
        let msg = v1::ForceReleaseRequest { key: key.to_owned(), fencing_token };
        let deadline = Instant::now() + self.inner.call_timeout;
        let retry = if fencing_token.is_some() { Retry::Unavailable } else { Retry::Never };
        let resp = self
            .inner
            .call("ForceRelease", msg, deadline, retry, |mut c, r| async move { c.force_release(r).await })
            .await?;
        let previous = resp.previous.ok_or(Error::Protocol { what: "ForceRelease answered without previous" })?;
        Ok(ForceReleased { released: resp.released, previous: previous.into() })
    }
}

/// An [`Error::InvalidArgument`].
pub(crate) fn invalid(field: &str, reason: &str) -> Error {
    Error::InvalidArgument { field: field.to_owned(), reason: reason.to_owned() }
}

/// The coordinator's key rules: 1–512 bytes of UTF-8 without control characters.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(invalid("key", "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid("key", &format!("is {} bytes, more than the maximum of {MAX_KEY_BYTES}", key.len())));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid("key", "must not contain control characters"));
    }
    Ok(())
}

/// An owner prefix: non-empty, short enough for the `/N` suffix, no control characters.
fn check_owner(owner: &str) -> Result<(), Error> {
    let max = MAX_OWNER_BYTES - OWNER_SUFFIX_ROOM;
    if owner.is_empty() {
        return Err(invalid("owner", "must not be empty"));
    }
    if owner.len() > max {
        return Err(invalid("owner", &format!("is {} bytes, more than the maximum of {max}", owner.len())));
    }
    if owner.chars().any(char::is_control) {
        return Err(invalid("owner", "must not contain control characters"));
    }
    Ok(())
}

/// `host/pid/random`: unique to this client, and telling an operator where
/// the holder runs.
fn default_owner() -> String {
    use std::hash::{BuildHasher, RandomState};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().filter(|c| !c.is_control() && *c != '/').take(128).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    // RandomState is seeded randomly per process and per instance.
    let random = RandomState::new().hash_one((std::time::SystemTime::now(), std::process::id()));
    format!("{host}/{}/{:08x}", std::process::id(), random & 0xffff_ffff)
}

/// What a failed connect means, in words (as [`transport_words`] says it).
fn chain_words(e: &tonic::transport::Error) -> String {
    crate::error::error_words(Some(e), "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_owner_is_host_pid_random() {
        let o = default_owner();
        let parts: Vec<&str> = o.split('/').collect();
        assert_eq!(parts.len(), 3, "{o}");
        assert_eq!(parts[1], std::process::id().to_string());
        assert_eq!(parts[2].len(), 8);
        assert_ne!(default_owner(), o, "two clients get two owners");
        assert!(check_owner(&o).is_ok());
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn tls_settings_with_a_plaintext_address_are_refused() {
        let tls = tonic::transport::ClientTlsConfig::new();
        for addr in ["http://127.0.0.1:7700", "127.0.0.1:7700"] {
            let err = Client::builder(addr).tls(tls.clone()).connect_lazy().expect_err("refused");
            assert!(matches!(&err, Error::InvalidArgument { field, .. } if field == "addr"), "{err:?}");
        }
        assert!(Client::builder("https://127.0.0.1:7700").tls(tls).connect_lazy().is_ok());
    }

    #[test]
    fn bad_keys_are_refused_locally_naming_the_field() {
        for k in ["", "a\nb", &"x".repeat(513)] {
            assert!(matches!(check_key(k), Err(Error::InvalidArgument { field, .. }) if field == "key"), "{k:?}");
        }
        assert!(check_key("payment:42").is_ok());
    }

    #[tokio::test]
    async fn each_acquisition_gets_its_own_owner() {
        let c = Client::builder("127.0.0.1:1").owner("w").connect_lazy().expect("lazy client");
        assert_eq!(c.inner.next_owner(), "w/1");
        assert_eq!(c.inner.next_owner(), "w/2");
    }

    #[test]
    fn public_types_can_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Client>();
        send_sync::<crate::LockGuard>();
        send_sync::<Error>();
    }

    #[test]
    fn builder_settings_are_validated() {
        let err = |b: ClientBuilder| match b.connect_lazy() {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert_eq!(err(Client::builder("http://x:1").ttl(Duration::ZERO)), "ttl");
        assert_eq!(err(Client::builder("http://x:1").owner("")), "owner");
        assert_eq!(err(Client::builder("http://x:1").owner("a".repeat(300))), "owner");
        assert_eq!(err(Client::builder("http://x:1").bearer_token("bad\ntoken")), "bearer_token");
        assert!(matches!(Client::builder("http://[bad").connect_lazy(), Err(Error::Connect { .. })));
    }
}
