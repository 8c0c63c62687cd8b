//! Where a guest's stdin comes from and where its stdout/stderr go.
//!
//! The CLI inherits the process's stdio; embedders and the HTTP host give
//! byte buffers, readers and writers, or capture output into a buffer capped
//! at [`crate::Limits::max_output`].

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream, IsTerminal, StdoutStream};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::outcome::{CapturedOutput, OutputCapExceeded};

/// Bytes of output buffered between the guest and an async writer.
const WRITE_BUDGET: usize = 64 * 1024;

/// The guest's stdin.
#[derive(Default)]
pub enum Input {
    /// Empty: the guest reads end-of-file at once. The default.
    #[default]
    Null,
    /// The host process's own stdin.
    Inherit,
    /// These bytes, then end-of-file.
    Bytes(Bytes),
    /// Whatever this reader yields (e.g. a streamed request body).
    Reader(Box<dyn AsyncRead + Send + Sync>),
}

/// Where the guest's stdout or stderr goes.
#[derive(Default)]
pub enum Output {
    /// Discarded. The default.
    #[default]
    Null,
    /// The host process's own stdout / stderr.
    Inherit,
    /// Kept in memory up to [`crate::Limits::max_output`] bytes and returned
    /// in the [`crate::Outcome`]; the rest is discarded and marked truncated.
    Capture,
    /// As [`Output::Capture`], but a write past
    /// [`crate::Limits::max_output`] kills the guest there (outcome
    /// `trapped`, "output cap of N bytes exceeded"; the capture keeps the
    /// first N bytes and is marked truncated) instead of being discarded: a
    /// flooding guest stops at once rather than burning the rest of its
    /// fuel or time.
    CaptureOrKill,
    /// Written to this writer (e.g. a response body), with backpressure:
    /// the guest waits while the writer is not ready.
    Writer(Box<dyn AsyncWrite + Send + Sync>),
    /// Handed synchronously to this sink, for destinations that never block
    /// (a log, a counter): cheaper than a writer, which needs a task.
    Sink(Box<dyn OutputSink>),
}

/// A destination for guest output that accepts every write at once.
pub trait OutputSink: Send + 'static {
    /// Takes the next bytes the guest wrote.
    fn write(&mut self, bytes: &[u8]);
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Null => f.write_str("Null"),
            Input::Inherit => f.write_str("Inherit"),
            Input::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Input::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Null => f.write_str("Null"),
            Output::Inherit => f.write_str("Inherit"),
            Output::Capture => f.write_str("Capture"),
            Output::CaptureOrKill => f.write_str("CaptureOrKill"),
            Output::Writer(_) => f.write_str("Writer(..)"),
            Output::Sink(_) => f.write_str("Sink(..)"),
        }
    }
}

pub(crate) fn set_stdin(builder: &mut WasiCtxBuilder, input: Input) {
    match input {
        Input::Null => {}
        Input::Inherit => {
            builder.inherit_stdin();
        }
        Input::Bytes(bytes) => {
            builder.stdin(MemoryInputPipe::new(bytes));
        }
        Input::Reader(reader) => {
            builder.stdin(AsyncStdinStream::new(Box::into_pin(reader)));
        }
    }
}

/// Which of the guest's output streams is being set.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Installs one output stream; returns the capture buffer when capturing.
pub(crate) fn set_output(
    builder: &mut WasiCtxBuilder,
    which: Stream,
    output: Output,
    cap: u64,
) -> Option<CaptureBuffer> {
    match output {
        Output::Null => None,
        Output::Inherit => {
            match which {
                Stream::Stdout => builder.inherit_stdout(),
                Stream::Stderr => builder.inherit_stderr(),
            };
            None
        }
        Output::Capture | Output::CaptureOrKill => {
            let mut buffer = CaptureBuffer::new(usize::try_from(cap).unwrap_or(usize::MAX));
            buffer.kills = matches!(output, Output::CaptureOrKill);
            let mut stream = SinkStream::new(Box::new(buffer.clone()));
            if buffer.kills {
                stream.kill_past = Some(buffer.clone());
            }
            set(builder, which, stream);
            Some(buffer)
        }
        Output::Sink(sink) => {
            set(builder, which, SinkStream::new(sink));
            None
        }
        Output::Writer(w) => {
            set(
                builder,
                which,
                AsyncStdoutStream::new(WRITE_BUDGET, Box::into_pin(w)),
            );
            None
        }
    }
}

fn set(builder: &mut WasiCtxBuilder, which: Stream, stream: impl StdoutStream + 'static) {
    match which {
        Stream::Stdout => builder.stdout(stream),
        Stream::Stderr => builder.stderr(stream),
    };
}

/// Bytes a guest may write to a [`SinkStream`] in one call.
const SINK_WRITE_BUDGET: usize = 1 << 20;

/// A guest output stream that hands every write to an [`OutputSink`] on the
/// spot: no buffer, no worker task.
#[derive(Clone)]
struct SinkStream {
    sink: Arc<Mutex<Box<dyn OutputSink>>>,
    /// For [`Output::CaptureOrKill`]: the capture whose overflow kills.
    kill_past: Option<CaptureBuffer>,
}

impl SinkStream {
    fn new(sink: Box<dyn OutputSink>) -> Self {
        SinkStream {
            sink: Arc::new(Mutex::new(sink)),
            kill_past: None,
        }
    }

    /// Hands `bytes` to the sink; an error when they overflowed a capture
    /// that kills.
    fn write_all(&self, bytes: &[u8]) -> Result<(), OutputCapExceeded> {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(bytes);
        match &self.kill_past {
            Some(capture) => capture.overflowed(),
            None => Ok(()),
        }
    }
}

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_all(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(SINK_WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.write_all(buf) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(e) => Poll::Ready(Err(std::io::Error::other(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An in-memory sink that keeps the first `cap` bytes written to it and
/// quietly discards the rest, so a guest flooding its output cannot grow the
/// host's memory. The guest keeps running; it is its other limits that stop
/// a flood that never ends.
#[derive(Clone, Debug)]
pub(crate) struct CaptureBuffer {
    inner: Arc<Mutex<CaptureState>>,
    /// For [`Output::CaptureOrKill`]: a write past the cap kills.
    kills: bool,
}

#[derive(Debug)]
struct CaptureState {
    bytes: BytesMut,
    cap: usize,
    truncated: bool,
}

impl CaptureBuffer {
    pub(crate) fn new(cap: usize) -> Self {
        CaptureBuffer {
            inner: Arc::new(Mutex::new(CaptureState {
                bytes: BytesMut::new(),
                cap,
                truncated: false,
            })),
            kills: false,
        }
    }

    /// For a capture that kills, the error once a write did not fit. WASI
    /// 0.2 output streams trap at that write; a WASI 0.3 stream only tells
    /// the guest, so the invocation looks here between two polls.
    pub(crate) fn killing_overflow(&self) -> Result<(), OutputCapExceeded> {
        if self.kills {
            self.overflowed()
        } else {
            Ok(())
        }
    }

    /// An error once a write did not fit.
    fn overflowed(&self) -> Result<(), OutputCapExceeded> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.truncated {
            Err(OutputCapExceeded(s.cap))
        } else {
            Ok(())
        }
    }

    pub(crate) fn take(&self) -> CapturedOutput {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        CapturedOutput {
            bytes: std::mem::take(&mut s.bytes).freeze(),
            truncated: s.truncated,
        }
    }
}

impl OutputSink for CaptureBuffer {
    fn write(&mut self, buf: &[u8]) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = s.cap.saturating_sub(s.bytes.len());
        let keep = room.min(buf.len());
        s.bytes.extend_from_slice(&buf[..keep]);
        if keep < buf.len() {
            s.truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_first_cap_bytes() {
        let mut b = CaptureBuffer::new(5);
        b.write(b"hello world");
        b.write(b"more");
        let out = b.take();
        assert_eq!(&out.bytes[..], b"hello");
        assert!(out.truncated);
    }
}
