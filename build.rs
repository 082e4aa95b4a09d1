//! Compiles `proto/turnstile/v1/*.proto` with protox (pure Rust: no system
//! `protoc` needed) and generates the tonic client and server code. The encoded
//! descriptor set is also written to `OUT_DIR` for gRPC server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/turnstile/v1/lock.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("turnstile_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Shared results as `bytes::Bytes`: one result handed to many waiters
        // is shared by reference, not copied once per waiter.
        .bytes(".turnstile.v1.AcquireResponse.shared_result")
        .bytes(".turnstile.v1.ReleaseRequest.result")
        .compile_fds(fds)?;
    Ok(())
}
