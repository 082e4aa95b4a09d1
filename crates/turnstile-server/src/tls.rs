//! TLS on the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`),
//! through rustls with the ring provider, re-read without a restart.
//!
//! tonic's own TLS takes its configuration once, so the server accepts TCP
//! itself ([`incoming`], through [`crate::listen`]): each connection is handshaken with the
//! configuration current at its accept, and handed to tonic as a stream of
//! [`TlsConn`]s. [`ServerTls::reload`] (on SIGHUP) builds a new configuration
//! from the files and swaps it in; connections already open keep theirs. A
//! file that does not load leaves the previous configuration serving.
//!
//! With `--tls-client-ca`, a client must present a certificate signed by one
//! of those CAs, or the handshake fails and the connection never reaches
//! gRPC (mutual TLS).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::listen::{Conn, ConnTimeouts};

/// The files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM of the expected kind.
    #[error("{what} {path}: {reason}", path = path.display())]
    File {
        /// Which file: `--tls-cert`, `--tls-key` or `--tls-client-ca`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The TLS configuration currently served, and the files it came from.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    // Read at every accept, written at a reload; never held across an await.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the files.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = server_config(&files)?;
        Ok(ServerTls { files, current: RwLock::new(Arc::new(config)) })
    }

    /// Loads the files again and serves the result to new connections; on an
    /// error the previous configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The files it loads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn file_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> TlsError + 'a {
    move |reason| TlsError::File { what, path: path.to_owned(), reason }
}

/// Every PEM certificate in `path` (at least one); an error names the file
/// and `what` it is (its flag). Also the etcd backend's, for `--etcd-ca` and
/// `--etcd-cert`.
pub(crate) fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = file_err(what, path);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The first PEM private key in `path` (PKCS#8, PKCS#1 or SEC1); an error
/// names the file and `what` it is.
pub(crate) fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(what, path)(e.to_string()))
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("--tls-cert", &files.cert)?;
    let key = read_key("--tls-key", &files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("--tls-client-ca", ca)? {
                roots.add(cert).map_err(|e| file_err("--tls-client-ca", ca)(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_err("--tls-client-ca", ca)(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Config(e.to_string()))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS connection handed to tonic.
#[derive(Debug)]
pub struct TlsConn(TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` ([`crate::listen::incoming`]),
/// handshakes each (concurrently, within the handshake timeout) with the
/// configuration current at its accept, and yields those that succeed.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    timeouts: ConnTimeouts,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn<TlsConn>>> {
    crate::listen::incoming(listener, timeouts, move |tcp, peer| {
        let acceptor = tls.acceptor();
        async move {
            match acceptor.accept(tcp).await {
                Ok(conn) => Some(TlsConn(conn)),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
            }
        }
    })
}
