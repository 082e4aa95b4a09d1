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

use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tonic::transport::{ClientTlsConfig, Identity};

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

/// The TLS configuration of `config`'s `https://` endpoints, or `None` for
/// `http://` ones (`Config::validate` has made sure they are not mixed and
/// that `--etcd-ca` is given).
pub(super) fn client_tls(config: &Config) -> Result<Option<ClientTlsConfig>, ConnectError> {
    let Some(ca) = &config.etcd_ca else { return Ok(None) };
    let mut roots = RootCertStore::empty();
    for cert in read_certs("--etcd-ca", ca)? {
        roots.add(cert).map_err(|e| ConnectError::new(format!("--etcd-ca {}: {e}", ca.display())))?;
    }
    let mut tls = ClientTlsConfig::new().trust_anchors(roots.roots);
    if let (Some(cert), Some(key)) = (&config.etcd_cert, &config.etcd_key) {
        // Parsed here for an error that names the file; tonic takes the PEM.
        read_certs("--etcd-cert", cert)?;
        crate::tls::read_key("--etcd-key", key).map_err(|e| ConnectError::new(e.to_string()))?;
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| ConnectError::new(format!("{what} {}: {e}", path.display())))
        };
        tls = tls.identity(Identity::from_pem(read("--etcd-cert", cert)?, read("--etcd-key", key)?));
    }
    Ok(Some(tls))
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
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            // An io::Error's source() skips the error it wraps: look inside.
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return Some(tls_words(tls));
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
        E::AlertReceived(AlertDescription::BadCertificate | AlertDescription::UnknownCA) => {
            "TLS: etcd refused the client certificate: it is not signed by a CA etcd trusts \
             (its --trusted-ca-file), or none was given (--etcd-cert)"
                .into()
        }
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
    fn an_etcd_message_loses_its_prefix() {
        let s = tonic::Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password");
        assert_eq!(explain(&s), "authentication failed, invalid user ID or password");
    }
}
