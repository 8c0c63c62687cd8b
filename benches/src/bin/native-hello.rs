//! The upper-bound baseline: a native hyper server answering every request
//! with a fixed hello body. Same runtime and HTTP stack as `wasm-run serve`,
//! no sandbox.
//!
//! ```text
//! native-hello [ADDR]     # default 127.0.0.1:0; prints "Serving HTTP on http://ADDR/"
//! ```

use bytes::Bytes;
use http_body_util::Full;

#[path = "../baseline.rs"]
mod baseline;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    baseline::serve(&addr, || async {
        hyper::Response::new(Full::new(Bytes::from_static(b"Hello from native hyper!\n")))
    })
    .await
}
