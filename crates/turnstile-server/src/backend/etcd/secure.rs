//! TLS and credentials towards etcd: the client TLS configuration from
//! `--etcd-ca`, `--etcd-cert` and `--etcd-key` (rustls with ring, through
//! tonic's `tls-ring`; the PEM files are read by the server's own loaders in
//! [`crate::tls`], so a bad file is named by its flag at start), the user and
//! password of `--etcd-user`, and etcd's failures put in words.
//!
//! Only `--etcd-ca` is trusted for etcd's certificate: no system roots (an
//! etcd cluster's CA is almost always private, and a public root would let
//! anyone with a certificate from a public CA pose as etcd).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{ClientTlsConfig, Identity, Uri};

use super::ConnectError;
use crate::config::Config;

/// The user and password turnstiled authenticates to etcd with.
#[derive(Clone)]
pub(super) struct Credentials {
    /// The etcd user.
    pub(super) user: String,
    /// Its password (never logged: [`Credentials`]'s Debug leaves it out).
    pub(super) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials of `config`: `--etcd-user` with `--etcd-password`
    /// (or `TURNSTILE_ETCD_PASSWORD`) or the content of
    /// `--etcd-password-file` less one trailing newline; `None` without a user.
    pub(super) fn of(config: &Config) -> Result<Option<Credentials>, ConnectError> {
        let Some(user) = config.etcd_user.clone() else { return Ok(None) };
        let password = match (&config.etcd_password, &config.etcd_password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => read_password(path)?,
            (None, None) => {
                return Err(ConnectError::new(format!(
                    "--etcd-user {user}: no password (--etcd-password-file or TURNSTILE_ETCD_PASSWORD)"
                )))
            }
        };
        Ok(Some(Credentials { user, password }))
    }
}

fn read_password(path: &Path) -> Result<String, ConnectError> {
    let err = |reason: String| ConnectError::new(format!("--etcd-password-file {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let password = text.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&text);
    if password.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(password.to_owned())
}

/// TLS towards etcd, built once from the files: tonic's configuration for
/// the connection, and the same settings as a rustls configuration for the
/// start-up handshake check ([`check_handshake`]).
#[derive(Debug, Clone)]
pub(super) struct EtcdTls {
    /// What the etcd channel connects with.
    pub(super) tonic: ClientTlsConfig,
    rustls: Arc<ClientConfig>,
    /// Whether a client certificate is shown (`--etcd-cert`).
    identity: bool,
}

/// The TLS configuration of `config`'s `https://` endpoints, or `None` for
/// `http://` ones (`Config::validate` has made sure they are not mixed and
/// that `--etcd-ca` is given).
pub(super) fn client_tls(config: &Config) -> Result<Option<EtcdTls>, ConnectError> {
    let Some(ca) = &config.etcd_ca else { return Ok(None) };
    let mut roots = RootCertStore::empty();
    for cert in read_certs("--etcd-ca", ca)? {
        roots.add(cert).map_err(|e| ConnectError::new(format!("--etcd-ca {}: {e}", ca.display())))?;
    }
    let mut tls = ClientTlsConfig::new().trust_anchors(roots.roots.clone());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::new(format!("TLS to etcd: {e}")))?
        .with_root_certificates(roots);
    let mut rustls = match (&config.etcd_cert, &config.etcd_key) {
        (Some(cert), Some(key)) => {
            // Parsed here for an error that names the file; tonic takes the PEM.
            let chain = read_certs("--etcd-cert", cert)?;
            let der = crate::tls::read_key("--etcd-key", key).map_err(|e| ConnectError::new(e.to_string()))?;
            let read = |what: &str, path: &Path| {
                std::fs::read(path).map_err(|e| ConnectError::new(format!("{what} {}: {e}", path.display())))
            };
            tls = tls.identity(Identity::from_pem(read("--etcd-cert", cert)?, read("--etcd-key", key)?));
            builder.with_client_auth_cert(chain, der).map_err(|e| {
                ConnectError::new(format!("--etcd-cert {} with --etcd-key {}: {e}", cert.display(), key.display()))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    rustls.alpn_protocols = vec![b"h2".to_vec()];
    let identity = config.etcd_cert.is_some();
    Ok(Some(EtcdTls { tonic: tls, rustls: Arc::new(rustls), identity }))
}

/// HTTP/2's connection preface and an empty SETTINGS frame: what a gRPC
/// client sends first, so that etcd answers (or refuses) at once.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Handshakes with the `https://` endpoint `url` and waits for etcd's first
/// bytes, within `timeout`: `Ok` when etcd took the connection, `Err(Some)`
/// with the words when TLS failed (etcd's certificate is not trusted, or
/// etcd refused ours; the settings are wrong and will stay wrong), and
/// `Err(None)` when it could not be reached.
///
/// With TLS 1.3, etcd judges the client's certificate after the client
/// considers the handshake done, so a refusal can surface in a gRPC call as
/// a bare "connection closed"; reading etcd's first bytes here makes it
/// surface as the alert it is.
pub(super) async fn check_handshake(url: &str, tls: &EtcdTls, timeout: Duration) -> Result<(), Option<String>> {
    let uri: Uri = url.parse().map_err(|_| Some("not a URL".to_owned()))?;
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone()).map_err(|_| Some(format!("{host:?} is not a host name")))?;
    let probe = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|_| None)?;
        let mut conn = TlsConnector::from(tls.rustls.clone()).connect(name, tcp).await.map_err(|e| io_words(&e))?;
        conn.write_all(H2_PREFACE).await.map_err(|e| io_words(&e))?;
        conn.flush().await.map_err(|e| io_words(&e))?;
        let mut first = [0u8; 1];
        match conn.read(&mut first).await {
            Ok(0) => Err(Some("etcd closed the connection right after the TLS handshake".to_owned())),
            Ok(_) => Ok(()),
            Err(e) => Err(io_words(&e)),
        }
    };
    match tokio::time::timeout(timeout, probe).await.unwrap_or(Err(None)) {
        // etcd's alert does not say whether a certificate came at all; we know.
        Err(Some(words)) if !tls.identity && words.contains("client certificate") => {
            Err(Some("TLS: etcd requires a client certificate (give --etcd-cert and --etcd-key)".into()))
        }
        res => res,
    }
}

/// A TLS failure as an I/O error in words; `None` when it is not one.
fn io_words(e: &std::io::Error) -> Option<String> {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => Some(tls_words(tls)),
        None => text_words(&e.to_string()),
    }
}

/// rustls's message, where only its text got through (hyper passes TLS
/// errors on as text), in words; `None` when it is not a TLS failure.
fn text_words(text: &str) -> Option<String> {
    use AlertDescription as A;
    let alerts = [A::CertificateRequired, A::BadCertificate, A::UnknownCA, A::CertificateUnknown];
    if let Some(alert) = alerts.into_iter().find(|a| text.contains(&format!("received fatal alert: {a:?}"))) {
        return Some(tls_words(&rustls::Error::AlertReceived(alert)));
    }
    let certs = [
        ("UnknownIssuer", CertificateError::UnknownIssuer),
        ("NotValidForName", CertificateError::NotValidForName),
        ("Expired", CertificateError::Expired),
    ];
    if let Some((_, e)) =
        certs.into_iter().find(|(name, _)| text.contains(&format!("invalid peer certificate: {name}")))
    {
        return Some(tls_words(&rustls::Error::InvalidCertificate(e)));
    }
    (text.contains("peer certificate") || text.contains("fatal alert")).then(|| format!("TLS: {text}"))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    crate::tls::read_certs(what, path).map_err(|e| ConnectError::new(e.to_string()))
}

/// The TLS failure behind a failed call, in words, if it is one: a
/// certificate that does not fit (the settings are wrong and will stay wrong,
/// unlike an etcd that is down).
pub(super) fn tls_failure(status: &tonic::Status) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_words(tls));
        }
        // An io::Error's source() skips the error it wraps: look inside.
        if let Some(words) = e.downcast_ref::<std::io::Error>().and_then(io_words) {
            return Some(words);
        }
        source = e.source();
    }
    None
}

/// A failed etcd call in words: what went wrong with the connection (TLS,
/// refused, reset) when the status comes from the transport, else etcd's
/// own message. Never a Rust Debug dump.
pub(super) fn explain(status: &tonic::Status) -> String {
    if let Some(words) = tls_failure(status) {
        return words;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut io_kind = None;
    let mut last = None;
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return "no answer in time".into();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        last = Some(e.to_string());
        source = e.source();
    }
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => return "connection refused (is etcd running there?)".into(),
        Some(std::io::ErrorKind::ConnectionReset) => {
            return "connection reset (a TLS endpoint reached with http://, or etcd went away?)".into()
        }
        Some(std::io::ErrorKind::TimedOut) => return "connection timed out".into(),
        _ => {}
    }
    let message = status.message().strip_prefix("etcdserver: ").unwrap_or(status.message());
    match last {
        Some(cause) if !message.contains(&cause) => format!("{message}: {cause}"),
        _ => message.to_owned(),
    }
}

/// A rustls error as an operator would say it.
fn tls_words(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: etcd's certificate is not trusted by --etcd-ca (signed by another CA)".into()
        }
        E::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "TLS: etcd's certificate is not issued for this endpoint's host name or address".into()
        }
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "TLS: etcd's certificate has expired".into()
        }
        E::InvalidCertificate(other) => format!("TLS: etcd's certificate was refused ({other:?})"),
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "TLS: etcd requires a client certificate (give --etcd-cert and --etcd-key)".into()
        }
        E::AlertReceived(
            AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::CertificateUnknown,
        ) => "TLS: etcd refused the client certificate: it is not signed by a CA etcd trusts \
             (its --trusted-ca-file), or none was given (--etcd-cert)"
            .into(),
        E::InvalidMessage(_) => "TLS: the endpoint does not speak TLS (should it be http://?)".into(),
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_loses_one_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("turnstile-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("pw");
        for (text, want) in
            [("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("s3cret\r\n", "s3cret"), (" a b \n\n", " a b \n")]
        {
            std::fs::write(&file, text).expect("write");
            assert_eq!(read_password(&file).expect("read"), want, "{text:?}");
        }
        std::fs::write(&file, "\n").expect("write");
        assert!(read_password(&file).unwrap_err().to_string().contains("is empty"));
        let missing = read_password(&dir.join("missing")).unwrap_err().to_string();
        assert!(missing.starts_with("--etcd-password-file "), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials { user: "turnstile".into(), password: "hunter2".into() };
        let shown = format!("{c:?}");
        assert!(shown.contains("turnstile") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn tls_failures_that_reach_us_as_text_are_put_in_words() {
        let words = |t: &str| text_words(t).unwrap_or_default();
        assert!(words("received fatal alert: CertificateRequired").contains("requires a client certificate"));
        assert!(words("io: received fatal alert: BadCertificate").contains("refused the client certificate"));
        assert!(words("invalid peer certificate: UnknownIssuer").contains("not trusted by --etcd-ca"));
        assert!(words("invalid peer certificate: NotValidForName").contains("host name"));
        assert_eq!(text_words("connection refused"), None);
    }

    #[test]
    fn an_etcd_message_loses_its_prefix() {
        let s = tonic::Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password");
        assert_eq!(explain(&s), "authentication failed, invalid user ID or password");
    }
}
