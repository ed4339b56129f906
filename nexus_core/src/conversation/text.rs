//! Text normalisation shared by message hashing and sub-agent prompt matching.
//!
//! Whitespace here is ASCII whitespace (space, tab, LF, FF, CR) on purpose: it is what the Python
//! reference (`tests/oracles/linking.py`) uses too, so both agree on every input.

use std::borrow::Cow;

use memchr::memchr_iter;
use xxhash_rust::xxh3::xxh3_128;

use crate::body::Key;

const OPEN: &[u8] = b"<system-reminder>";
const CLOSE: &[u8] = b"</system-reminder>";

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')
}

/// First index `>= from` where `needle` (ASCII, lower-case) occurs in `hay`, ignoring ASCII case.
fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let rest = hay.get(from..)?;
    memchr_iter(b'<', rest).map(|i| from + i).find(|&i| {
        hay.len() - i >= needle.len() && hay[i..i + needle.len()].eq_ignore_ascii_case(needle)
    })
}

/// Remove each `<system-reminder>…</system-reminder>` block (tags in any case, shortest match, content
/// may span lines) together with all whitespace right before it. An unclosed tag is left as it is.
pub fn strip_reminders(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let Some(mut open) = find_ci(bytes, OPEN, 0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    while let Some(close) = find_ci(bytes, CLOSE, open + OPEN.len()) {
        let mut start = open;
        while start > copied && is_ws(bytes[start - 1]) {
            start -= 1;
        }
        out.push_str(&text[copied..start]);
        copied = close + CLOSE.len();
        match find_ci(bytes, OPEN, copied) {
            Some(next) => open = next,
            None => break,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Trim ASCII whitespace at both ends.
pub fn trim_ws(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii() && is_ws(c as u8))
}

/// Reminders removed, CRLF turned into LF, surrounding whitespace trimmed.
pub fn normalize_text(text: &str) -> Cow<'_, str> {
    let stripped = strip_reminders(text);
    if stripped.contains("\r\n") {
        return Cow::Owned(trim_ws(&stripped.replace("\r\n", "\n")).to_owned());
    }
    match stripped {
        Cow::Borrowed(s) => Cow::Borrowed(trim_ws(s)),
        Cow::Owned(s) => Cow::Owned(trim_ws(&s).to_owned()),
    }
}

/// The key under which a sub-agent prompt is matched: xxh3-128 of the normalised text, big-endian.
/// The spawning `Agent` tool_use's `input.prompt` and the sub-agent's first user text give the same key.
pub fn prompt_key(text: &str) -> Key {
    xxh3_128(normalize_text(text).as_bytes()).to_be_bytes()
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn head(text: &str, max: usize) -> &str {
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
    fn strips_reminders_with_the_whitespace_before_them() {
        assert_eq!(
            strip_reminders("hi \n<system-reminder>x\ny</system-reminder> there"),
            "hi there"
        );
        assert_eq!(
            strip_reminders(
                "<SYSTEM-REMINDER>a</System-Reminder>b<system-reminder>c</system-reminder>"
            ),
            "b"
        );
        assert_eq!(
            strip_reminders("keep <system-reminder>open"),
            "keep <system-reminder>open"
        );
        assert!(matches!(strip_reminders("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_text("  a\r\nb \t"), "a\nb");
        assert_eq!(
            normalize_text("<system-reminder>only</system-reminder>\n"),
            ""
        );
        assert_eq!(prompt_key(" task \r\n"), prompt_key("task"));
        assert_ne!(prompt_key("task a"), prompt_key("task b"));
    }

    #[test]
    fn head_respects_char_boundaries() {
        assert_eq!(head("héllo", 2), "h");
        assert_eq!(head("héllo", 3), "hé");
        assert_eq!(head("abc", 10), "abc");
    }
}
