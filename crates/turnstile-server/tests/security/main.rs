//! Security of the gRPC port (README "Security"): bearer tokens with
//! per-prefix grants, TLS and mutual TLS, the refusal of an open listener,
//! and SIGHUP reloads of certificates and tokens. Real gRPC over real
//! sockets: in-process servers for the rules, `turnstiled` processes for
//! flags and signals. Certificates are made in the tests ([`turnstile_testkit::TestCa`]).
//!
//! # Layout
//! - `common`: the token file, in-process servers, clients with and without TLS.
//! - `tokens`: UNAUTHENTICATED, PERMISSION_DENIED, listing within prefixes.
//! - `tls`: TLS and mutual TLS, a bad client certificate refused at the handshake.
//! - `process`: the open-listener refusal, and reloads on SIGHUP.

mod common;
mod process;
mod tls;
mod tokens;
