//! Unary gRPC calls written by hand on a raw HTTP/2 connection (the `h2`
//! crate), for tests that need control tonic's client does not give: frame
//! order on one connection, resets, zero windows. Shared by `delivery.rs`
//! and `bounds.rs` (included with `#[path]`).

use bytes::Bytes;

/// A unary gRPC call's request body: the 5-byte frame header and `msg`.
pub(crate) fn grpc_body(msg: &impl prost::Message) -> Bytes {
    let mut buf = vec![0u8; 5];
    msg.encode(&mut buf).expect("encode");
    let len = u32::try_from(buf.len() - 5).expect("small");
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.into()
}

/// Starts a unary LockService call of `method` on a raw HTTP/2 connection,
/// with `authority` in its URI, and sends `msg` as its whole body.
pub(crate) fn start_call(
    h2: &mut h2::client::SendRequest<Bytes>,
    authority: &str,
    method: &str,
    msg: &impl prost::Message,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let req = tonic::codegen::http::Request::post(format!("http://{authority}/turnstile.v1.LockService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut send) = h2.send_request(req, false).expect("send request");
    send.send_data(grpc_body(msg), true).expect("send body");
    (resp, send)
}
