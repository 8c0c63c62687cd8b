//! Stream plumbing shared by the WASI 0.3 guests (included with `#[path]`,
//! as `query.rs` is).

use wasip3::wit_bindgen::rt::async_support::{StreamReader, StreamResult, StreamWriter};

/// Copies `from` to `to` chunk by chunk, each chunk written before the next
/// is read, so that the host's backpressure reaches the sender. `true` once
/// `from` ended; `false` if `to`'s reader went away first.
pub async fn pump(from: &mut StreamReader<u8>, to: &mut StreamWriter<u8>) -> bool {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (result, chunk) = from.read(buf).await;
        match result {
            StreamResult::Complete(_) => {
                if !to.write_all(chunk).await.is_empty() {
                    return false;
                }
                buf = Vec::with_capacity(16 * 1024);
            }
            StreamResult::Dropped | StreamResult::Cancelled => return true,
        }
    }
}
