//! Compiles the etcd v3 protos the etcd backend speaks (vendored and trimmed
//! under `proto/etcd/`) with protox, pure Rust, so no system `protoc` is
//! needed, and generates tonic clients for them (no servers).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
