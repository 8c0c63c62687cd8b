//! A guest's stdout/stderr sent to the host log, line by line, each line
//! tagged with the request id, and capped per request so a guest flooding
//! its output cannot flood the log.

use std::sync::Arc;

use crate::OutputSink;

/// Longest line logged as one event; longer lines are split.
const MAX_LINE: usize = 4096;

/// Most log events (lines) one stream of one request may produce: a guest
/// printing empty lines cannot turn its byte cap into a flood of events.
pub(super) const MAX_EVENTS: usize = 256;

/// An output sink that logs complete lines as `tracing` events.
pub(super) struct GuestLog {
    request_id: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    remaining: usize,
    events_left: usize,
    truncated: bool,
}

impl GuestLog {
    /// Logs up to `cap` bytes and [`MAX_EVENTS`] lines of `stream` ("stdout" or "stderr") for the
    /// request `request_id`; the rest is dropped with one notice.
    pub(super) fn new(request_id: Arc<str>, stream: &'static str, cap: usize) -> Self {
        GuestLog {
            request_id,
            stream,
            line: Vec::new(),
            remaining: cap,
            events_left: MAX_EVENTS,
            truncated: false,
        }
    }

    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if self.events_left == 0 {
            self.line.clear();
            self.remaining = 0;
            return;
        }
        self.events_left -= 1;
        let text = String::from_utf8_lossy(&self.line);
        let text = neutralise(text.trim_end_matches(['\n', '\r']));
        tracing::info!(
            target: "wasm_run::guest",
            request_id = %self.request_id,
            stream = self.stream,
            "{}",
            text
        );
        self.line.clear();
    }

    fn accept(&mut self, buf: &[u8]) {
        for &b in buf {
            if self.remaining == 0 || self.events_left == 0 {
                if !self.truncated {
                    self.truncated = true;
                    self.emit();
                    tracing::warn!(
                        target: "wasm_run::guest",
                        request_id = %self.request_id,
                        stream = self.stream,
                        "guest output over the per-request log cap; the rest is dropped"
                    );
                }
                return;
            }
            self.remaining -= 1;
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
            }
        }
    }
}

/// A guest's line with every character that could start a new line in a
/// text log or a terminal (CR, vertical tab, form feed, NEL, U+2028/2029,
/// other control characters and ESC) written as an escape, so that a guest
/// cannot forge log lines.
fn neutralise(line: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}');
    if !line.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Drop for GuestLog {
    fn drop(&mut self) {
        self.emit();
    }
}

impl OutputSink for GuestLog {
    fn write(&mut self, bytes: &[u8]) {
        self.accept(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_that_break_lines_are_escaped() {
        assert_eq!(neutralise("plain\ttext"), "plain\ttext");
        for forged in [
            "a\rb",
            "a\u{b}b",
            "a\u{c}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{85}b",
            "a\u{1b}[2Jb",
        ] {
            let out = neutralise(forged);
            assert!(
                !out.chars()
                    .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
                "{out:?}"
            );
            assert!(out.starts_with('a') && out.ends_with('b'), "{out:?}");
        }
    }

    #[test]
    fn lines_are_split_and_output_is_capped() {
        let mut log = GuestLog::new("r1".into(), "stdout", 10);
        log.accept(b"abc\nde");
        assert_eq!(log.line, b"de");
        log.accept(b"fghijklmnop");
        assert!(log.truncated);
        assert_eq!(log.remaining, 0);
        assert!(log.line.is_empty());
    }

    #[test]
    fn lines_are_capped_as_well_as_bytes() {
        let mut log = GuestLog::new("r1".into(), "stdout", 1 << 20);
        log.accept(&[b'\n'; 10_000]);
        log.accept(b"x\n");
        assert_eq!(log.events_left, 0);
        assert!(log.truncated);
        assert!(log.line.is_empty());
    }
}
