//! TLS and mutual TLS on the gRPC port: in-process servers, real handshakes.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_testkit::{InProcess, TempDir, TestCa, TestCert};

use crate::common::{acquire, call, client_tls, in_process, tls_channel, token_file, PAYMENTS};

/// A TLS server with certificates from `ca`; mutual TLS with `client_ca`.
fn tls_server(dir: &TempDir, ca: &TestCa, client_ca: Option<&TestCa>, tokens: bool) -> InProcess {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]).write(dir.path(), "server");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let mut args = vec!["--tls-cert".to_owned(), path(&cert), "--tls-key".into(), path(&key)];
    if let Some(client_ca) = client_ca {
        args.extend(["--tls-client-ca".into(), path(&client_ca.write(&dir.path().join("client-ca.pem")))]);
    }
    if tokens {
        args.extend(["--auth-token-file".into(), path(&token_file(dir.path()))]);
    }
    in_process(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A raw TLS handshake (no gRPC) with `addr`, trusting `ca`, presenting
/// `identity`; then a read, where a server that refuses the client's
/// certificate sends its alert (TLS 1.3 finishes the client's side of the
/// handshake before the server has checked the client's certificate).
/// `Ok(peer certificate)` when the server accepted the connection.
pub(crate) async fn handshake(addr: SocketAddr, ca: &str, identity: Option<&TestCert>) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA pem")).expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("cert pem")],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key pem"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("TCP connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("server certificate").to_vec();
    // The HTTP/2 preface: a server that accepted us answers with its SETTINGS.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tls.read(&mut buf).await {
        Ok(0) => Err("closed without a word".into()),
        Ok(_) => Ok(peer),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn grpc_over_tls_with_a_token_works_and_plaintext_is_not_served() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new("turnstile test CA");
    let node = tls_server(&dir, &ca, None, true);
    let ch = tls_channel(node.grpc, client_tls(ca.pem(), None)).await.expect("TLS connect");
    let mut c = LockServiceClient::new(ch);
    let r = c.acquire(call(acquire("payments/1", "w"), Some(PAYMENTS))).await.expect("Acquire over TLS");
    assert!(r.into_inner().acquired);
    let e = c.acquire(call(acquire("payments/2", "w"), None)).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);

    // A plaintext HTTP/2 client gets no gRPC answer from a TLS port.
    let plain = tonic::transport::Endpoint::from_shared(node.url()).expect("url").connect().await;
    if let Ok(plain) = plain {
        let res = LockServiceClient::new(plain)
            .get_lock(call(v1::GetLockRequest { key: "payments/1".into() }, Some(PAYMENTS)))
            .await;
        assert!(res.is_err(), "plaintext answered: {res:?}");
    }
    // A client that does not trust the server's CA refuses it.
    let other = TestCa::new("another CA");
    assert!(tls_channel(node.grpc, client_tls(other.pem(), None)).await.is_err());
}

#[tokio::test]
async fn mutual_tls_refuses_a_bad_client_certificate_at_the_handshake() {
    let dir = TempDir::new("mtls");
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let node = tls_server(&dir, &ca, Some(&clients), false);

    // A certificate of the client CA: handshake and gRPC both work.
    let good = clients.issue(&["payments-worker"]);
    handshake(node.grpc, ca.pem(), Some(&good)).await.expect("a client CA certificate is accepted");
    let ch = tls_channel(node.grpc, client_tls(ca.pem(), Some(&good))).await.expect("mTLS connect");
    let r = LockServiceClient::new(ch).acquire(call(acquire("k", "w"), None)).await.expect("Acquire over mTLS");
    assert!(r.into_inner().acquired);

    // Signed by another CA (here the server's own), or none at all: the
    // server's alert ends the connection before any HTTP/2 byte.
    let stranger = ca.issue(&["payments-worker"]);
    let e = handshake(node.grpc, ca.pem(), Some(&stranger)).await.expect_err("a foreign certificate is refused");
    assert!(e.contains("alert"), "refused by a TLS alert: {e}");
    let e = handshake(node.grpc, ca.pem(), None).await.expect_err("no certificate is refused");
    assert!(e.contains("alert"), "refused by a TLS alert: {e}");
    // And through gRPC the call fails in the transport, not in the service.
    let res = match tls_channel(node.grpc, client_tls(ca.pem(), Some(&stranger))).await {
        Ok(ch) => LockServiceClient::new(ch).acquire(call(acquire("k2", "w"), None)).await.map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e)),
    };
    let e = res.expect_err("refused");
    // A status the service sent has no source; one the transport made has.
    assert!(std::error::Error::source(&e).is_some(), "a transport error: {e:?}");
}
