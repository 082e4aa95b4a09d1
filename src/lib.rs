//! The turnstile protocol: gRPC types and stubs for `turnstile.v1`, generated
//! at build time from `proto/turnstile/v1/lock.proto`.
//!
//! # Layout
//! - [`v1`]: the generated messages, the `LockService` client
//!   ([`v1::lock_service_client`]) and server ([`v1::lock_service_server`]).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! The comments in the proto file are the API reference; `grpcurl describe`
//! shows them through reflection.

/// Generated code for the `turnstile.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("turnstile.v1");
}

/// Encoded `FileDescriptorSet` of every turnstile proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("turnstile_descriptor");
