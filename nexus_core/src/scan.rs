//! A validating skip over JSON values: where a value ends, accepting exactly what serde_json's
//! `ignore_value` accepts (the grammar of RFC 8259; a `\u` escape is four hex digits, whatever code
//! unit they name, as serde_json reads a value it skips) or saying nothing.
//!
//! The body split reads each top-level value of a request as raw bytes. serde_json finds a string's
//! end 8 bytes at a time; Claude Code's bodies are mostly strings (tool descriptions, prompts, code),
//! so that scan was two fifths of the whole request analysis. Here 16 bytes are compared at once
//! (SSE2 on x86-64; a plain loop elsewhere). Only acceptance has to agree with
//! serde_json: a caller that gets `None` reads the body with serde_json again, which then reports the
//! error in its own words (`body::split_body_with`).

/// The byte after the JSON value that starts at `at`, or None when it is not a valid value.
pub fn skip_value(b: &[u8], mut at: usize) -> Option<usize> {
    // the open arrays and objects, innermost last (no recursion: nesting depth is the client's)
    let mut open: Vec<u8> = Vec::new();
    loop {
        at = match *b.get(at)? {
            b'"' => skip_string(b, at + 1)?,
            b't' => literal(b, at, b"true")?,
            b'f' => literal(b, at, b"false")?,
            b'n' => literal(b, at, b"null")?,
            b'-' | b'0'..=b'9' => skip_number(b, at)?,
            b'[' => {
                let next = skip_ws(b, at + 1);
                if b.get(next) == Some(&b']') {
                    next + 1
                } else {
                    open.push(b'[');
                    at = next;
                    continue;
                }
            }
            b'{' => {
                let next = skip_ws(b, at + 1);
                if b.get(next) == Some(&b'}') {
                    next + 1
                } else {
                    open.push(b'{');
                    at = member_value(b, next)?;
                    continue;
                }
            }
            _ => return None,
        };
        // a value ended: close what it ends, or go on to the next element or member
        loop {
            let Some(&frame) = open.last() else {
                return Some(at);
            };
            at = skip_ws(b, at);
            match (*b.get(at)?, frame) {
                (b',', b'[') => {
                    at = skip_ws(b, at + 1);
                    break;
                }
                (b',', _) => {
                    at = member_value(b, skip_ws(b, at + 1))?;
                    break;
                }
                (b']', b'[') | (b'}', b'{') => {
                    open.pop();
                    at += 1;
                }
                _ => return None,
            }
        }
    }
}

/// After an array's element or an object's member: `(where the next one starts, false)` past a comma
/// (and the whitespace after it), `(the byte after it, true)` past `close`, None for anything else.
pub fn after_item(b: &[u8], at: usize, close: u8) -> Option<(usize, bool)> {
    let at = skip_ws(b, at);
    match *b.get(at)? {
        b',' => Some((skip_ws(b, at + 1), false)),
        c if c == close => Some((at + 1, true)),
        _ => None,
    }
}

/// After `{` or `,` in an object (whitespace skipped): the key, the colon, and where the value starts.
fn member_value(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let at = skip_ws(b, skip_string(b, at + 1)?);
    if b.get(at) != Some(&b':') {
        return None;
    }
    Some(skip_ws(b, at + 1))
}

/// The first byte at or after `at` that is not JSON whitespace.
pub fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(at) {
        at += 1;
    }
    at
}

fn literal(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at + word.len();
    (b.get(at..end)? == word).then_some(end)
}

/// serde_json's number grammar: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?
fn skip_number(b: &[u8], mut at: usize) -> Option<usize> {
    if b[at] == b'-' {
        at += 1;
    }
    match *b.get(at)? {
        b'0' => {
            at += 1;
            if b.get(at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
        b'1'..=b'9' => at = digits(b, at + 1),
        _ => return None,
    }
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = digits(b, start);
        if at == start {
            return None;
        }
    }
    if let Some(b'e' | b'E') = b.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = b.get(at) {
            at += 1;
        }
        let start = at;
        at = digits(b, start);
        if at == start {
            return None;
        }
    }
    Some(at)
}

fn digits(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// The byte after the closing quote of the string whose content starts at `at`.
pub fn skip_string(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = find_special(b, at)?;
        match b[at] {
            b'"' => return Some(at + 1),
            b'\\' => {
                at = match *b.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at + 2,
                    b'u' if b.get(at + 2..at + 6)?.iter().all(u8::is_ascii_hexdigit) => at + 6,
                    _ => return None,
                }
            }
            _ => return None, // a control character: JSON strings may not hold one unescaped
        }
    }
}

fn is_special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The first quote, backslash or control character at or after `at`.
fn find_special(b: &[u8], mut at: usize) -> Option<usize> {
    while let Some(chunk) = b.get(at..at + LANES) {
        let chunk: &[u8; LANES] = chunk.try_into().ok()?;
        let mask = special_mask(chunk);
        if mask != 0 {
            return Some(at + mask.trailing_zeros() as usize);
        }
        at += LANES;
    }
    b[at.min(b.len())..]
        .iter()
        .position(|&c| is_special(c))
        .map(|k| at + k)
}

const LANES: usize = 16;

/// Bit k set when byte k of `chunk` is special: three byte compares of 16 lanes (SSE2, which every
/// x86-64 processor has).
#[cfg(target_arch = "x86_64")]
fn special_mask(chunk: &[u8; LANES]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of x86-64; the load reads the 16 bytes of `chunk` (unaligned loads allowed).
    unsafe {
        let x = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
        // max(x, 0x1f) == 0x1f exactly when x <= 0x1f (unsigned)
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(x, low), low);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn special_mask(chunk: &[u8; LANES]) -> u32 {
    chunk
        .iter()
        .enumerate()
        .fold(0, |mask, (k, &c)| mask | u32::from(is_special(c)) << k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    /// serde_json's verdict on `text` as one value (surrounding whitespace allowed).
    fn serde_accepts(text: &[u8]) -> bool {
        serde_json::from_slice::<IgnoredAny>(text).is_ok()
    }

    fn ours(text: &[u8]) -> bool {
        let start = skip_ws(text, 0);
        skip_value(text, start).is_some_and(|end| skip_ws(text, end) == text.len())
    }

    #[test]
    fn agrees_with_serde_on_edges() {
        let cases: &[&[u8]] = &[
            b"0",
            b"-0",
            b"01",
            b"-",
            b"1.",
            b"1.5",
            b"1e5",
            b"1E+5",
            b"1e",
            b"1e-",
            b".5",
            b"-01",
            b"true",
            b"tru",
            b"truee",
            b"nul",
            b"null",
            b"false",
            b"[]",
            b"[ ]",
            b"[1,]",
            b"[,1]",
            b"[1 2]",
            b"{}",
            b"{ }",
            b"{\"a\":1}",
            b"{\"a\" : 1 , \"b\":[1,{}]}",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{1:1}",
            b"[[[[]]]]",
            b"[[[[]]]",
            b"\"\"",
            b"\"a\\\"b\"",
            b"\"\\u00e9\"",
            b"\"\\ud800\"",
            b"\"\\u12\"",
            b"\"\\u12G4\"",
            b"\"\\x\"",
            b"\"a\nb\"",
            b"\"a\tb\"",
            b"\"abc",
            b"\"abcdefghijklmnopqrstuvwxyz0123456789\"",
            b"\"abcdefghijklmnop\\\"qrstuvwxyz\"",
            b"\"\x7f\"",
            b"[1]x",
            b"{\"a\":1}}",
            b"",
            b" ",
            b"[\"a\",\"b\" ,  \"c\"]",
            b"{\"k\":{\"k\":{\"k\":[true,false,null,-1.5e3]}}}",
        ];
        for case in cases {
            assert_eq!(
                ours(case),
                serde_accepts(case),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn deep_nesting_is_not_recursion() {
        let mut text = vec![b'['; 100_000];
        text.extend(vec![b']'; 100_000]);
        assert_eq!(skip_value(&text, 0), Some(text.len()));
        text.pop();
        assert_eq!(skip_value(&text, 0), None);
    }

    proptest::proptest! {
        /// Random JSON-ish bytes (the pieces a body is made of, in any order): accepted exactly when
        /// serde_json accepts them, and the end found is the value's end.
        #[test]
        fn acceptance_matches_serde(pieces in proptest::collection::vec(proptest::sample::select(vec![
            "{", "}", "[", "]", ",", ":", " ", "\n", "\"", "\\", "\\\"", "\\n", "\\u00e9", "\\u12",
            "a", "key", "\"k\":", "0", "1", "-", ".", "e", "+", "12", "true", "false", "null",
            "\t", "\u{1}", "é", "\"text with some length to cross a chunk\"",
        ]), 0..24)) {
            let text = pieces.concat();
            proptest::prop_assert_eq!(ours(text.as_bytes()), serde_accepts(text.as_bytes()), "{:?}", text);
        }
    }
}
