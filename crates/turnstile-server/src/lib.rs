//! turnstiled, the turnstile lock coordinator: the gRPC service, its
//! backends, configuration and telemetry.
//!
//! Data flows one way: RPC → [`service`] (authorisation, validation, metrics) →
//! [`backend::Backend`] → the memory backend (the core lock table behind
//! sharded locks) or another backend.
//!
//! # Layout
//! - [`config`]: every flag and `TURNSTILE_*` variable, and their validation.
//! - [`validate`]: request validation shared by all backends (G8).
//! - [`service`]: the `LockService` handlers; [`convert`]: types to protobuf.
//! - [`backend`]: the [`backend::Backend`] contract;
//!   [`backend::memory`] the embedded table; [`backend::durable`] its restart state;
//!   [`backend::etcd`] state in etcd, for any number of stateless sidecars.
//! - [`error`]: error types and their one mapping to `tonic::Status`.
//! - [`server`]: [`server::run`], gRPC + HTTP serving and graceful shutdown.
//! - [`call`]: around every call, its deadline and the take-back of a grant
//!   whose reply never reached the wire.
//! - [`security`]: what guards the gRPC port, re-read on SIGHUP: [`tls`]
//!   (rustls, mutual TLS, the accept loop) and [`auth`] (bearer tokens with
//!   per-prefix grants).
//! - [`telemetry`]: Prometheus metrics and logging; [`clock`]: the one clock.

pub mod auth;
pub mod backend;
pub mod call;
pub mod clock;
pub mod config;
pub mod convert;
pub mod error;
pub mod listen;
pub mod security;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod validate;
