//! [`Security`]: what guards the gRPC port, loaded from the config at start
//! and re-read by [`Security::reload`] (on SIGHUP): TLS ([`crate::tls`]) and
//! the bearer tokens ([`crate::auth`]).

use std::sync::Arc;

use crate::auth::{Access, TokenFile, TokenFileError};
use crate::config::Config;
use crate::telemetry::Metrics;
use crate::tls::{ServerTls, TlsError, TlsFiles};

/// TLS and tokens of the gRPC port. Cheap to clone: clones share the files'
/// current contents, so a reload through one is seen by all.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS, when `--tls-cert` is given; plain TCP otherwise.
    pub tls: Option<Arc<ServerTls>>,
    /// Who may call LockService.
    pub access: Access,
}

/// Why the security files could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// TLS files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The token file.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
}

impl Security {
    /// Loads what the config names; an error names the file at fault.
    pub fn load(config: &Config) -> Result<Security, SecurityError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })?)),
            _ => None,
        };
        let access = match &config.auth_token_file {
            Some(path) => Access::Tokens(Arc::new(TokenFile::load(path)?)),
            None => Access::Open,
        };
        Ok(Security { tls, access })
    }

    /// Re-reads every file; one that fails to load is logged as an error and
    /// the previous contents stay in force. Counted in `turnstile_reloads`.
    pub fn reload(&self, metrics: &Metrics) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert = %tls.files().cert.display(), "TLS certificate and key re-read");
                    metrics.reload("tls", true);
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS files not re-read; still serving the previous certificate");
                    metrics.reload("tls", false);
                }
            }
        }
        if let Access::Tokens(file) = &self.access {
            match file.reload() {
                Ok(n) => {
                    tracing::info!(file = %file.path().display(), tokens = n, "token file re-read");
                    metrics.reload("tokens", true);
                }
                Err(e) => {
                    tracing::error!(error = %e, "token file not re-read; the previous tokens stay in force");
                    metrics.reload("tokens", false);
                }
            }
        }
    }
}
