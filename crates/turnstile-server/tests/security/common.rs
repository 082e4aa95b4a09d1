//! What the security tests share: the token file, servers and clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Request;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_testkit::{InProcess, TestCert};

#[path = "../support/memory.rs"]
mod memory;

/// May lock and inspect `payments/` only.
pub(crate) const PAYMENTS: &str = "payments-7f3c9a1e5b2d4c6f";
/// May inspect every key, and nothing else.
pub(crate) const INSPECTOR: &str = "inspector-2b8e6d4a0c1f3e5d";
/// May do everything.
pub(crate) const ADMIN: &str = "admin-9d1f5b3e7a2c4e6b";

/// The token file of these tests, written into `dir`.
pub(crate) fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.jsonl");
    std::fs::write(
        &path,
        format!(
            "# the tokens of the security tests\n\
             {{\"name\": \"payments-api\", \"token\": \"{PAYMENTS}\", \"prefixes\": [\"payments/\"], \"verbs\": [\"lock\", \"inspect\"]}}\n\
             {{\"name\": \"dashboard\", \"token\": \"{INSPECTOR}\", \"prefixes\": [\"\"], \"verbs\": [\"inspect\"]}}\n\
             {{\"name\": \"oncall\", \"token\": \"{ADMIN}\", \"prefixes\": [\"\"], \"verbs\": [\"admin\"]}}\n"
        ),
    )
    .expect("write the token file");
    path
}

/// The memory backend served in this process with `turnstiled`'s flags
/// `args`, without state.
pub(crate) fn in_process(args: &[&str]) -> InProcess {
    let argv: Vec<&str> = ["--data-dir", ""].into_iter().chain(args.iter().copied()).collect();
    memory::memory_in_process(&argv)
}

/// A plaintext channel to `url`.
pub(crate) async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned()).expect("url").connect().await.expect("connect")
}

/// TLS settings that trust `ca_pem`, with `identity` for mutual TLS.
pub(crate) fn client_tls(ca_pem: &str, identity: Option<&TestCert>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    match identity {
        Some(c) => tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem)),
        None => tls,
    }
}

/// A TLS channel to `addr`.
pub(crate) async fn tls_channel(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// `msg` with `authorization: Bearer <token>` when `token` is given.
pub(crate) fn call<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
    }
    r
}

/// A 30 s try-lock of `key` by `owner`.
pub(crate) fn acquire(key: &str, owner: &str) -> v1::AcquireRequest {
    v1::AcquireRequest {
        key: key.into(),
        owner: owner.into(),
        ttl: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        ..Default::default()
    }
}

/// Who holds `key`, asked with the admin token.
pub(crate) async fn holder(c: &mut LockServiceClient<Channel>, key: &str) -> v1::LockInfo {
    c.get_lock(call(v1::GetLockRequest { key: key.into() }, Some(ADMIN))).await.expect("GetLock as admin").into_inner()
}
