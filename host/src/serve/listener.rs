//! One accept loop for the main and the admin listener: a cap on open
//! connections (at the cap the loop stops accepting, and new clients wait in
//! the kernel's backlog), accept errors logged and retried with a backoff
//! (out of descriptors is the usual one, and retrying at once would spin),
//! and shutdown between accepts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// First wait after a failed accept; it doubles up to [`MAX_BACKOFF`] while
/// accepts keep failing, and starts again after one succeeds.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// Longest wait between two accepts that fail.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listening socket with its connection cap.
pub(crate) struct Listener {
    listener: TcpListener,
    /// Which listener, in log events (`main`, `admin`).
    name: &'static str,
    connections: Arc<Semaphore>,
    backoff: Duration,
}

/// An accepted connection, holding one of its listener's slots until it is
/// dropped.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) remote: SocketAddr,
    pub(crate) slot: OwnedSemaphorePermit,
}

impl Listener {
    pub(crate) fn new(listener: TcpListener, name: &'static str, max_connections: usize) -> Self {
        Listener {
            listener,
            name,
            connections: Arc::new(Semaphore::new(max_connections.max(1))),
            backoff: FIRST_BACKOFF,
        }
    }

    /// The next connection, once one of the cap's slots is free; `None`
    /// once `shutdown` has completed.
    pub(crate) async fn accept(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Accepted> {
        let slot = tokio::select! {
            slot = self.connections.clone().acquire_owned() => slot.ok()?,
            () = shutdown.as_mut() => return None,
        };
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        self.backoff = FIRST_BACKOFF;
                        return Some(Accepted { stream, remote, slot });
                    }
                    Err(e) => {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            retry_in_ms = self.backoff.as_millis() as u64,
                            "accept failed"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(self.backoff) => {}
                            () = shutdown.as_mut() => return None,
                        }
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                },
                () = shutdown.as_mut() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_no_connection_is_accepted_until_one_closes() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut listener = Listener::new(socket, "test", 1);
        let never = std::future::pending::<()>();
        let mut never = std::pin::pin!(never);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = listener.accept(&mut never).await.unwrap();
        // The second waits for the first's slot.
        let mut second = Box::pin(listener.accept(&mut never));
        assert!(futures_poll_once(&mut second).await.is_none());
        drop(first);
        assert!(second.await.is_some());
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = Listener::new(socket, "test", 4);
        let done = std::future::ready(());
        let mut done = std::pin::pin!(done);
        assert!(listener.accept(&mut done).await.is_none());
    }

    /// Polls `fut` once; `Some` if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
