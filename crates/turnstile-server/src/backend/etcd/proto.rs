//! etcd's v3 gRPC API, generated at build time (see `build.rs`) from the
//! trimmed protos under `crates/turnstile-server/proto/etcd/`: tonic clients
//! only. Public so that the etcd tests and the benchmark can talk to etcd
//! directly; the backend itself goes through its typed layer (`client`).

/// Keys and events (`mvccpb`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// KV, Watch, Lease and Auth's Authenticate (`etcdserverpb`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's own lock service (`v3lockpb`), which the benchmark compares against.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
