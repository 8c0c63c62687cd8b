//! The accept loop of the baseline servers `cgi-fork` and `native-hello`
//! (included by both with `#[path]`): the same runtime and HTTP stack as
//! `wasm-run serve`, each request answered by a function of the bin.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Binds `addr`, prints the `Serving HTTP on http://ADDR/` line the load
/// harness waits for, and answers every request of every connection with
/// what `respond` makes.
pub async fn serve<F, Fut>(addr: &str, respond: F) -> std::io::Result<()>
where
    F: Fn() -> Fut + Copy + Send + 'static,
    Fut: Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("Serving HTTP on http://{}/", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                service_fn(move |_req| async move { Ok::<_, Infallible>(respond().await) });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
