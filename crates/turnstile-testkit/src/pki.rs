//! [`TestCa`]: certificates made in the test that needs them, so that no
//! private key is ever committed. Each CA is fresh (a new key per run), and
//! its leaf certificates carry the names they are issued for as subject
//! alternative names (`127.0.0.1` becomes an IP address name).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER: what a peer sees on the wire.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { issuer: Issuer::new(params, key), pem: cert.pem() }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("write the CA certificate");
        path.to_owned()
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by this
    /// CA; good for a server or a client.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        let key = KeyPair::generate().expect("generate a key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        let cert = params.signed_by(&key, &self.issuer).expect("sign the certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl TestCert {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir` (replacing them
    /// atomically, as a certificate rotation would) and returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let put = |name: String, text: &str| {
            let path = dir.join(&name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write a PEM file");
            std::fs::rename(&tmp, &path).expect("move a PEM file into place");
            path
        };
        (put(format!("{stem}.pem"), &self.cert_pem), put(format!("{stem}.key"), &self.key_pem))
    }
}
