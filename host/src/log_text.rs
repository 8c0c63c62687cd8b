//! Text that a guest or a client chose, made safe for the host's log and
//! for messages: escaped so that it cannot end a log line or start a field
//! of its own (control characters, and the Unicode line breaks U+0085,
//! U+2028 and U+2029 that some log tools split on), and cut to a bounded
//! length so that one value cannot make a log line, an error body or a
//! report of megabytes.

use std::fmt;

/// Longest guest- or client-chosen value written into a log field: 1 KiB
/// of its text (escapes count as the characters they stand for).
pub const MAX_LOGGED_BYTES: usize = 1024;

/// Longest name taken from a module (a function's name from its name
/// section) into a trap message.
pub const MAX_NAME_BYTES: usize = 256;

/// A value for one log field: displays `text` escaped and cut to `max`
/// bytes, saying how much was left out.
#[derive(Debug, Clone, Copy)]
pub struct LogText<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> LogText<'a> {
    /// `text` cut to [`MAX_LOGGED_BYTES`].
    pub fn new(text: &'a str) -> LogText<'a> {
        LogText {
            text,
            max: MAX_LOGGED_BYTES,
        }
    }

    /// `text` cut to `max` bytes.
    pub fn with_max(text: &'a str, max: usize) -> LogText<'a> {
        LogText { text, max }
    }
}

impl fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = cut(self.text, self.max);
        for c in kept.chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        if kept.len() < self.text.len() {
            write!(f, "…(+{} bytes)", self.text.len() - kept.len())?;
        }
        Ok(())
    }
}

/// `text` as an owned string, escaped and cut to `max` bytes (see
/// [`LogText`]).
pub fn safe(text: &str, max: usize) -> String {
    LogText::with_max(text, max).to_string()
}

/// Whether `c` could end a line or otherwise not print as itself: control
/// characters (C0, DEL, C1 — U+0085 among them) and the Unicode line and
/// paragraph separators.
fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_value_can_end_the_line_or_forge_a_field() {
        for text in [
            "/a\nlevel=ERROR forged=1",
            "/a\r\nforged",
            "/a\u{2028}forged",
            "/a\u{2029}forged",
            "/a\u{85}forged",
            "/a\u{1b}[31mred",
        ] {
            let shown = LogText::new(text).to_string();
            assert!(
                !shown
                    .chars()
                    .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
                "{shown:?}"
            );
            assert!(shown.starts_with("/a\\u{"), "{shown:?}");
        }
        assert_eq!(
            LogText::new("/plain/path?q=é").to_string(),
            "/plain/path?q=é"
        );
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(4096);
        let shown = safe(&long, 11);
        assert_eq!(
            shown,
            format!("{}…(+{} bytes)", "é".repeat(5), long.len() - 10)
        );
        assert_eq!(safe("short", 11), "short");
    }
}
