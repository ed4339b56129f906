//! Safe-by-construction JSON and text for PostgreSQL storage.
//!
//! One hostile record (a `\u0000` escape, a lone surrogate, `1e999999`, a million nested arrays)
//! used to make a whole COPY batch fail, so storage stopped. Everything the COPY encoder writes to
//! a `jsonb`, `json` or `text` column now passes through here first: the output is always accepted
//! by PostgreSQL (jsonb: no `\u0000` or lone surrogate escapes, numerics within its limits; text:
//! no NUL byte, valid UTF-8) and read back by psycopg's `json.loads`, `orjson.loads` and
//! `orjson.dumps` (which refuses to nest deeper than 254).
//!
//! Normal data is the hot path: one validation pass (UTF-8 check plus a strict RFC 8259 scan that
//! skips string contents eight bytes at a time) proves it needs nothing, and the bytes are copied
//! unchanged. Only input that fails the check is rewritten, and every rewrite names itself in a
//! [`Repairs`] set so the row can say what was changed. Rewrites keep the information visible
//! rather than dropping it: a NUL becomes the six characters `\u0000`, an invalid byte `\xNN`.
//!
//! No recursion: the scanner keeps an explicit stack, so any depth is handled in bounded stack.

use memchr::memchr;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// The deepest container nesting kept as JSON (the root container is depth 1). Deeper subtrees
/// are stored as a string of their text: well under orjson's 254 (dumps) and 1024 (loads), and
/// PostgreSQL's stack, while real API bodies nest a dozen levels at most.
pub const MAX_JSON_DEPTH: usize = 128;

/// Which repairs were applied to a value (or to a whole row): a small bit-set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Repairs(u16);

impl Repairs {
    /// Nothing was changed.
    pub const NONE: Repairs = Repairs(0);
    /// A NUL (`\u0000` escape or raw 0x00) became the visible text `\u0000`.
    pub const NUL_ESCAPED: Repairs = Repairs(1 << 0);
    /// A lone surrogate (escape, or raw `surrogatepass` bytes) became the visible text `\udXXX`.
    pub const SURROGATE_ESCAPED: Repairs = Repairs(1 << 1);
    /// An invalid UTF-8 byte became the visible text `\xNN`.
    pub const INVALID_UTF8: Repairs = Repairs(1 << 2);
    /// A raw control byte inside a JSON string became its `\u00XX` escape (meaning kept).
    pub const CONTROL_ESCAPED: Repairs = Repairs(1 << 3);
    /// A number no reader can hold exactly enough became a string of its exact text.
    pub const NUMBER_AS_TEXT: Repairs = Repairs(1 << 4);
    /// A subtree nested deeper than [`MAX_JSON_DEPTH`] became a string of its text.
    pub const DEPTH_LIMITED: Repairs = Repairs(1 << 5);
    /// The input was not JSON at all and became one string of its text.
    pub const NOT_JSON: Repairs = Repairs(1 << 6);
    /// An integer out of its column's range was clamped to the range.
    pub const INT_CLAMPED: Repairs = Repairs(1 << 7);
    /// PostgreSQL still refused the value, so it was stored as one JSON string (last resort).
    pub const STORED_AS_TEXT: Repairs = Repairs(1 << 8);

    /// The stable names, in bit order: they are stored in the database, so never renamed.
    pub const NAMES: [&'static str; 9] = [
        "nul_escaped",
        "surrogate_escaped",
        "invalid_utf8",
        "control_escaped",
        "number_as_text",
        "depth_limited",
        "not_json",
        "int_clamped",
        "stored_as_text",
    ];

    pub const fn bits(self) -> u16 {
        self.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, other: Repairs) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Repairs) {
        self.0 |= other.0;
    }

    /// The set's flag names in the fixed order of [`Repairs::NAMES`].
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }

    /// The flag with this name (the inverse of [`Repairs::names`]).
    pub fn from_name(name: &str) -> Option<Repairs> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|bit| Repairs(1 << bit))
    }
}

impl BitOr for Repairs {
    type Output = Repairs;
    fn bitor(self, rhs: Repairs) -> Repairs {
        Repairs(self.0 | rhs.0)
    }
}

impl BitOrAssign for Repairs {
    fn bitor_assign(&mut self, rhs: Repairs) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Repairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

// --- text ---------------------------------------------------------------------------------------

/// Make `input` storable in a PostgreSQL `text` column and append it to `out`.
///
/// A NUL byte becomes the visible six characters `\u0000`, a surrogate code point as Python's
/// `surrogatepass` encodes it (`ED A0..BF 80..BF`) becomes `\udXXX`, any other invalid UTF-8 byte
/// becomes `\xNN`. Valid input without NUL is appended unchanged and the result is empty.
pub fn safe_text(input: &[u8], out: &mut Vec<u8>) -> Repairs {
    if memchr(0, input).is_none() && std::str::from_utf8(input).is_ok() {
        out.extend_from_slice(input);
        return Repairs::NONE;
    }
    let mut repairs = Repairs::NONE;
    for_each_piece(input, |piece| match piece {
        Piece::Valid(run) => {
            let mut rest = run;
            while let Some(at) = memchr(0, rest) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(b"\\u0000");
                repairs |= Repairs::NUL_ESCAPED;
                rest = &rest[at + 1..];
            }
            out.extend_from_slice(rest);
        }
        Piece::Surrogate(unit) => {
            push_visible_surrogate(out, unit, b"\\");
            repairs |= Repairs::SURROGATE_ESCAPED;
        }
        Piece::Byte(byte) => {
            push_visible_byte(out, byte, b"\\");
            repairs |= Repairs::INVALID_UTF8;
        }
    });
    repairs
}

/// The last resort for a JSON value PostgreSQL still refused: `input` (whatever it is) as one JSON
/// string of its text, with the visible escapes of [`safe_text`]; always flags `stored_as_text`.
pub fn json_as_text(input: &[u8], out: &mut Vec<u8>) -> Repairs {
    let mut repairs = Repairs::STORED_AS_TEXT;
    push_json_string(input, out, &mut repairs);
    repairs
}

/// One piece of possibly invalid UTF-8.
enum Piece<'a> {
    /// A run of valid UTF-8 (may contain NUL).
    Valid(&'a [u8]),
    /// A surrogate code point encoded as three bytes (`surrogatepass`), which UTF-8 forbids.
    Surrogate(u16),
    /// One byte that is not part of valid UTF-8.
    Byte(u8),
}

/// Split bytes into valid runs and invalid spots, in order. Invalid bytes are reported one by one,
/// which gives the same result whichever way a decoder groups them (Python's does it the same way).
fn for_each_piece(mut input: &[u8], mut visit: impl FnMut(Piece<'_>)) {
    loop {
        match std::str::from_utf8(input) {
            Ok(_) => {
                if !input.is_empty() {
                    visit(Piece::Valid(input));
                }
                return;
            }
            Err(err) => {
                let (good, rest) = input.split_at(err.valid_up_to());
                if !good.is_empty() {
                    visit(Piece::Valid(good));
                }
                if let Some(unit) = raw_surrogate(rest) {
                    visit(Piece::Surrogate(unit));
                    input = &rest[3..];
                } else {
                    visit(Piece::Byte(rest[0]));
                    input = &rest[1..];
                }
            }
        }
    }
}

/// The surrogate code point `bytes` starts with when encoded as `surrogatepass` does.
fn raw_surrogate(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [0xED, b1 @ 0xA0..=0xBF, b2 @ 0x80..=0xBF, ..] => {
            Some(0xD000 | (u16::from(b1 & 0x3F) << 6) | u16::from(b2 & 0x3F))
        }
        _ => None,
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `\udxxx` as text; `backslash` is `\` for text and `\\` inside a JSON string.
fn push_visible_surrogate(out: &mut Vec<u8>, unit: u16, backslash: &[u8]) {
    out.extend_from_slice(backslash);
    out.push(b'u');
    for shift in [12, 8, 4, 0] {
        out.push(HEX_LOWER[usize::from((unit >> shift) & 0xF)]);
    }
}

/// `\xNN` (upper-case hex) as text; `backslash` is `\` for text and `\\` inside a JSON string.
fn push_visible_byte(out: &mut Vec<u8>, byte: u8, backslash: &[u8]) {
    out.extend_from_slice(backslash);
    out.push(b'x');
    out.push(HEX_UPPER[usize::from(byte >> 4)]);
    out.push(HEX_UPPER[usize::from(byte & 0xF)]);
}

/// The JSON escape `\u00xx` of a control byte (meaning preserved).
fn push_control_escape(out: &mut Vec<u8>, byte: u8) {
    out.extend_from_slice(b"\\u00");
    out.push(HEX_LOWER[usize::from(byte >> 4)]);
    out.push(HEX_LOWER[usize::from(byte & 0xF)]);
}

/// Append `text` (any bytes) as one JSON string whose decoded value is the text, with NUL,
/// surrogates and invalid bytes as the visible escapes of [`safe_text`]. Control characters get
/// their `\u00xx` escape: that is ordinary JSON encoding, nothing is lost, so it flags nothing.
fn push_json_string(text: &[u8], out: &mut Vec<u8>, repairs: &mut Repairs) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    for_each_piece(text, |piece| match piece {
        Piece::Valid(run) => {
            let mut start = 0;
            for (i, &b) in run.iter().enumerate() {
                if b != b'"' && b != b'\\' && b >= 0x20 {
                    continue;
                }
                out.extend_from_slice(&run[start..i]);
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0 => {
                        out.extend_from_slice(b"\\\\u0000");
                        *repairs |= Repairs::NUL_ESCAPED;
                    }
                    _ => push_control_escape(out, b),
                }
                start = i + 1;
            }
            out.extend_from_slice(&run[start..]);
        }
        Piece::Surrogate(unit) => {
            push_visible_surrogate(out, unit, b"\\\\");
            *repairs |= Repairs::SURROGATE_ESCAPED;
        }
        Piece::Byte(byte) => {
            push_visible_byte(out, byte, b"\\\\");
            *repairs |= Repairs::INVALID_UTF8;
        }
    });
    out.push(b'"');
}

// --- JSON ---------------------------------------------------------------------------------------

/// Make `input` storable in a PostgreSQL `jsonb`/`json` column and append it to `out`.
///
/// If the input needs no repair, `out` receives exactly the input bytes and the result is empty.
/// Otherwise, keeping everything else byte for byte:
/// - a `\u0000` escape or raw NUL in a string becomes the visible text `\u0000` (`nul_escaped`);
/// - a lone surrogate escape becomes the visible text `\udxxx` (`surrogate_escaped`);
/// - a raw invalid UTF-8 byte in a string becomes the visible text `\xNN` (`invalid_utf8`), except
///   `surrogatepass` bytes `ED A0..BF 80..BF`, which become `\udxxx` (`surrogate_escaped`);
/// - a raw control byte in a string becomes its `\u00xx` escape (`control_escaped`);
/// - a number outside [`number_fits`] becomes a string of its exact text (`number_as_text`);
/// - a container opening deeper than [`MAX_JSON_DEPTH`] becomes, with its whole subtree, a string
///   of the subtree's text (`depth_limited`);
/// - input that is not JSON at all becomes one string of the whole input (`not_json`).
pub fn safe_json(input: &[u8], out: &mut Vec<u8>) -> Repairs {
    let utf8 = std::str::from_utf8(input).is_ok();
    if utf8 && walk(input, &mut Validator).is_ok() {
        out.extend_from_slice(input);
        return Repairs::NONE;
    }
    let mark = out.len();
    let mut rewriter = Rewriter {
        input,
        out,
        flushed: 0,
        repairs: Repairs::NONE,
        capture: None,
        utf8,
    };
    match walk(input, &mut rewriter) {
        Ok(()) => {
            let Rewriter {
                out,
                flushed,
                repairs,
                ..
            } = rewriter;
            out.extend_from_slice(&input[flushed..]);
            repairs
        }
        Err(_) => {
            out.truncate(mark);
            let mut repairs = Repairs::NOT_JSON;
            push_json_string(input, out, &mut repairs);
            repairs
        }
    }
}

/// Whether `input` is JSON that [`safe_json`] passes unchanged: what PostgreSQL and the Python
/// readers accept. The check the fast path makes, exposed for tests and fuzzing.
pub fn is_safe_json(input: &[u8]) -> bool {
    std::str::from_utf8(input).is_ok() && walk(input, &mut Validator).is_ok()
}

/// Whether a number token is kept as a number: every reader holds it exactly enough. PostgreSQL's
/// numeric allows 131072 digits before the point and 16383 after, Python's `json.loads` refuses
/// ints of more than 4300 digits, and orjson/f64 overflow at about 1.8e308 and lose everything
/// below about 1e-340; so: at most 1000 significand digits and a magnitude within 1e-340..1e308
/// (up to f64's maximum for a number just above 1e308). Integer tokens must besides be 64-bit
/// integers ([`integer_fits`]).
pub fn number_fits(int_digits: i64, frac_digits: i64, exponent: i64) -> bool {
    int_digits.saturating_add(frac_digits) <= 1000
        && int_digits.saturating_add(exponent) <= 308
        && frac_digits.saturating_sub(exponent) <= 340
}

/// Why a walk stopped early.
#[derive(Debug)]
enum Stop {
    /// Not JSON.
    Syntax,
    /// Something needs repair (the validator gives up at once; the rewriter never stops so).
    Repair,
}

/// What the walker reports, token by token. Positions index the input.
trait Sink {
    /// A string token `start..end`, quotes included; `issue` says it holds something to repair
    /// (a raw control or NUL byte, a `\u0000` or lone surrogate escape). Invalid UTF-8 is the
    /// sink's to check: the validator has checked the whole input up front.
    fn string(&mut self, start: usize, end: usize, issue: bool) -> Result<(), Stop>;
    /// A number token and whether [`number_fits`] keeps it.
    fn number(&mut self, start: usize, end: usize, fits: bool) -> Result<(), Stop>;
    /// A container opening at `start`, at `depth` (the root container is 1).
    fn open(&mut self, start: usize, depth: usize) -> Result<(), Stop>;
    /// The container at `depth` closing just before `end`.
    fn close(&mut self, end: usize, depth: usize);
}

/// The fast path's check: stops at the first thing that needs repair.
struct Validator;

impl Sink for Validator {
    #[inline]
    fn string(&mut self, _: usize, _: usize, issue: bool) -> Result<(), Stop> {
        if issue {
            Err(Stop::Repair)
        } else {
            Ok(())
        }
    }
    #[inline]
    fn number(&mut self, _: usize, _: usize, fits: bool) -> Result<(), Stop> {
        if fits {
            Ok(())
        } else {
            Err(Stop::Repair)
        }
    }
    #[inline]
    fn open(&mut self, _: usize, depth: usize) -> Result<(), Stop> {
        if depth > MAX_JSON_DEPTH {
            Err(Stop::Repair)
        } else {
            Ok(())
        }
    }
    #[inline]
    fn close(&mut self, _: usize, _: usize) {}
}

/// The slow path: copies the input through, replacing only the tokens that need it. `flushed` is
/// how far the input has been copied; a replacement copies up to its token, then writes itself.
struct Rewriter<'a, 'o> {
    input: &'a [u8],
    out: &'o mut Vec<u8>,
    flushed: usize,
    repairs: Repairs,
    /// The too-deep container being skipped: its start and depth.
    capture: Option<(usize, usize)>,
    /// The whole input is valid UTF-8, so strings need no UTF-8 check of their own.
    utf8: bool,
}

impl Rewriter<'_, '_> {
    fn flush(&mut self, upto: usize) {
        self.out.extend_from_slice(&self.input[self.flushed..upto]);
    }
}

impl Sink for Rewriter<'_, '_> {
    fn string(&mut self, start: usize, end: usize, issue: bool) -> Result<(), Stop> {
        if self.capture.is_some() {
            return Ok(());
        }
        let body = &self.input[start + 1..end - 1];
        if !issue && (self.utf8 || std::str::from_utf8(body).is_ok()) {
            return Ok(());
        }
        self.flush(start);
        repair_string(body, self.out, &mut self.repairs);
        self.flushed = end;
        Ok(())
    }

    fn number(&mut self, start: usize, end: usize, fits: bool) -> Result<(), Stop> {
        if fits || self.capture.is_some() {
            return Ok(());
        }
        self.flush(start);
        self.out.push(b'"');
        self.out.extend_from_slice(&self.input[start..end]);
        self.out.push(b'"');
        self.flushed = end;
        self.repairs |= Repairs::NUMBER_AS_TEXT;
        Ok(())
    }

    fn open(&mut self, start: usize, depth: usize) -> Result<(), Stop> {
        if depth > MAX_JSON_DEPTH && self.capture.is_none() {
            self.capture = Some((start, depth));
        }
        Ok(())
    }

    fn close(&mut self, end: usize, depth: usize) {
        if let Some((start, at)) = self.capture {
            if at == depth {
                self.flush(start);
                push_json_string(&self.input[start..end], self.out, &mut self.repairs);
                self.flushed = end;
                self.repairs |= Repairs::DEPTH_LIMITED;
                self.capture = None;
            }
        }
    }
}

#[inline]
fn skip_ws(input: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = input.get(i) {
        i += 1;
    }
    i
}

/// The open containers, true for an object. The first 128 levels live in a bit-set, so the
/// common case (real bodies nest a dozen levels) never allocates; deeper ones spill to the heap.
#[derive(Default)]
struct Stack {
    bits: u128,
    len: usize,
    spill: Vec<bool>,
}

impl Stack {
    #[inline]
    fn push(&mut self, object: bool) {
        if self.len < 128 {
            self.bits = self.bits & !(1 << self.len) | u128::from(object) << self.len;
        } else {
            self.spill.push(object);
        }
        self.len += 1;
    }

    #[inline]
    fn pop(&mut self) {
        if self.len > 128 {
            self.spill.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    #[inline]
    fn last(&self) -> Option<bool> {
        match self.len {
            0 => None,
            1..=128 => Some(self.bits >> (self.len - 1) & 1 == 1),
            _ => self.spill.last().copied(),
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.len
    }
}

/// Walk one JSON text (RFC 8259, whitespace around the value allowed), reporting tokens to
/// `sink`. Iterative with an explicit stack, so any nesting depth costs heap, not call stack.
fn walk<S: Sink>(input: &[u8], sink: &mut S) -> Result<(), Stop> {
    let mut stack = Stack::default();
    let mut i = skip_ws(input, 0);
    'value: loop {
        // A value starts at `i`.
        match *input.get(i).ok_or(Stop::Syntax)? {
            open @ (b'{' | b'[') => {
                let object = open == b'{';
                stack.push(object);
                sink.open(i, stack.len())?;
                i = skip_ws(input, i + 1);
                if input.get(i) == Some(if object { &b'}' } else { &b']' }) {
                    i += 1;
                    sink.close(i, stack.len());
                    stack.pop();
                } else {
                    if object {
                        i = key(input, i, sink)?;
                    }
                    continue 'value;
                }
            }
            b'"' => {
                let (end, issue) = scan_string(input, i)?;
                sink.string(i, end, issue)?;
                i = end;
            }
            b't' => i = literal(input, i, b"true")?,
            b'f' => i = literal(input, i, b"false")?,
            b'n' => i = literal(input, i, b"null")?,
            b'-' | b'0'..=b'9' => {
                let (end, fits) = scan_number(input, i)?;
                sink.number(i, end, fits)?;
                i = end;
            }
            _ => return Err(Stop::Syntax),
        }
        // After a value: a separator, the end of containers, or the end of the input.
        loop {
            i = skip_ws(input, i);
            let Some(object) = stack.last() else {
                return if i == input.len() {
                    Ok(())
                } else {
                    Err(Stop::Syntax)
                };
            };
            match input.get(i) {
                Some(b',') => {
                    i = skip_ws(input, i + 1);
                    if object {
                        i = key(input, i, sink)?;
                    }
                    continue 'value;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                _ => return Err(Stop::Syntax),
            }
            i += 1;
            sink.close(i, stack.len());
            stack.pop();
        }
    }
}

/// An object key and its colon at `i`; returns where the value starts.
fn key<S: Sink>(input: &[u8], i: usize, sink: &mut S) -> Result<usize, Stop> {
    if input.get(i) != Some(&b'"') {
        return Err(Stop::Syntax);
    }
    let (end, issue) = scan_string(input, i)?;
    sink.string(i, end, issue)?;
    let colon = skip_ws(input, end);
    if input.get(colon) != Some(&b':') {
        return Err(Stop::Syntax);
    }
    Ok(skip_ws(input, colon + 1))
}

fn literal(input: &[u8], i: usize, word: &[u8]) -> Result<usize, Stop> {
    if input[i..].starts_with(word) {
        Ok(i + word.len())
    } else {
        Err(Stop::Syntax)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that is a quote, a backslash or a control (< 0x20). Only
/// the lowest flagged byte is exact (a borrow can flag a byte above a true hit), which is all
/// [`next_special`] uses; the exact form costs more operations per word.
#[inline]
fn specials(word: u64) -> u64 {
    let zero = |t: u64| t.wrapping_sub(ONES) & !t;
    (zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word))
        & HIGHS
}

/// The next quote, backslash or control byte at or after `i`, eight bytes a step (SWAR): in API
/// bodies these come every few dozen bytes (`\n` and `\"` escapes), too often for a `memchr2`
/// call per hit to pay off.
#[inline]
fn next_special(input: &[u8], mut i: usize) -> Option<usize> {
    while let Some(chunk) = input.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let hits = specials(u64::from_le_bytes(word));
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    input[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|at| i + at)
}

/// The four hex digits at `at` as a UTF-16 code unit.
#[inline]
fn hex4(input: &[u8], at: usize) -> Option<u16> {
    let digits = input.get(at..at + 4)?;
    let mut unit = 0u16;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        unit = unit << 4 | u16::from(v);
    }
    Some(unit)
}

fn is_high(unit: u16) -> bool {
    (0xD800..0xDC00).contains(&unit)
}

fn is_low(unit: u16) -> bool {
    (0xDC00..0xE000).contains(&unit)
}

/// The low surrogate escape `\uDC00..\uDFFF` at `at`, if there is one.
#[inline]
fn low_escape_at(input: &[u8], at: usize) -> bool {
    input.get(at..at + 2) == Some(b"\\u") && hex4(input, at + 2).is_some_and(is_low)
}

/// The string token starting with the quote at `start`: its end (after the closing quote) and
/// whether it holds something to repair. Escapes must be valid JSON escapes.
#[inline]
fn scan_string(input: &[u8], start: usize) -> Result<(usize, bool), Stop> {
    let mut i = start + 1;
    let mut issue = false;
    loop {
        let at = next_special(input, i).ok_or(Stop::Syntax)?;
        match input[at] {
            b'"' => return Ok((at + 1, issue)),
            b'\\' => {}
            _ => {
                issue = true;
                i = at + 1;
                continue;
            }
        }
        match input.get(at + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i = at + 2,
            Some(b'u') => {
                let unit = hex4(input, at + 2).ok_or(Stop::Syntax)?;
                i = at + 6;
                if unit == 0 || is_low(unit) {
                    issue = true;
                } else if is_high(unit) {
                    if low_escape_at(input, i) {
                        i += 6;
                    } else {
                        issue = true;
                    }
                }
            }
            _ => return Err(Stop::Syntax),
        }
    }
}

fn digits_end(input: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = input.get(i) {
        i += 1;
    }
    i
}

/// The number token starting at `start`: its end and whether [`number_fits`] keeps it.
fn scan_number(input: &[u8], start: usize) -> Result<(usize, bool), Stop> {
    let mut i = start;
    if input.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    match input.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_end(input, i),
        _ => return Err(Stop::Syntax),
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if input.get(i) == Some(&b'.') {
        let from = i + 1;
        i = digits_end(input, from);
        frac_digits = i - from;
        if frac_digits == 0 {
            return Err(Stop::Syntax);
        }
    }
    let mut exponent: i64 = 0;
    if let Some(b'e' | b'E') = input.get(i) {
        i += 1;
        let negative = match input.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let from = i;
        while let Some(&d @ b'0'..=b'9') = input.get(i) {
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i64::from(d - b'0'));
            i += 1;
        }
        if i == from {
            return Err(Stop::Syntax);
        }
        if negative {
            exponent = -exponent;
        }
    }
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let token = &input[start..i];
    let fits =
        if frac_digits == 0 && exponent == 0 && !token.contains(&b'e') && !token.contains(&b'E') {
            integer_fits(token)
        } else {
            let (ints, fracs) = (count(int_digits), count(frac_digits));
            number_fits(ints, fracs, exponent)
                || (ints.saturating_add(exponent) == 309
                    && number_fits(ints, fracs, exponent - 1)
                    && float_is_finite(token))
        };
    Ok((i, fits))
}

/// An integer token is kept when it is a 64-bit integer (signed, or unsigned when positive): the
/// readers' own range (orjson refuses to write a bigger Python int back, a 500 on the way out).
fn integer_fits(token: &[u8]) -> bool {
    let (negative, digits) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, token),
    };
    if digits.len() > 20 {
        return false;
    }
    let value = digits
        .iter()
        .fold(0u128, |acc, d| acc * 10 + u128::from(d - b'0'));
    if negative {
        value <= 1u128 << 63
    } else {
        value <= u128::from(u64::MAX)
    }
}

/// For a number just above 1e308: whether it is still below f64's maximum (about 1.8e308).
fn float_is_finite(token: &[u8]) -> bool {
    std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// Rewrite the body of a string token (between its quotes, escapes known to be well formed).
fn repair_string(body: &[u8], out: &mut Vec<u8>, repairs: &mut Repairs) {
    out.push(b'"');
    let mut copied = 0;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b'\\' => {
                if body[i + 1] != b'u' {
                    i += 2;
                    continue;
                }
                let unit = hex4(body, i + 2).unwrap_or(0xFFFF);
                if is_high(unit) && low_escape_at(body, i + 6) {
                    i += 12;
                    continue;
                }
                if unit != 0 && !is_high(unit) && !is_low(unit) {
                    i += 6;
                    continue;
                }
                out.extend_from_slice(&body[copied..i]);
                if unit == 0 {
                    out.extend_from_slice(b"\\\\u0000");
                    *repairs |= Repairs::NUL_ESCAPED;
                } else {
                    push_visible_surrogate(out, unit, b"\\\\");
                    *repairs |= Repairs::SURROGATE_ESCAPED;
                }
                i += 6;
                copied = i;
            }
            0 => {
                out.extend_from_slice(&body[copied..i]);
                out.extend_from_slice(b"\\\\u0000");
                *repairs |= Repairs::NUL_ESCAPED;
                i += 1;
                copied = i;
            }
            0x01..=0x1F => {
                out.extend_from_slice(&body[copied..i]);
                push_control_escape(out, b);
                *repairs |= Repairs::CONTROL_ESCAPED;
                i += 1;
                copied = i;
            }
            0x80.. => {
                // One character: valid, or one invalid spot (the same pieces `for_each_piece` finds).
                let width = match b {
                    0xC2..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    0xF0..=0xF4 => 4,
                    _ => 0,
                };
                if width > 0
                    && body
                        .get(i..i + width)
                        .is_some_and(|c| std::str::from_utf8(c).is_ok())
                {
                    i += width;
                    continue;
                }
                out.extend_from_slice(&body[copied..i]);
                if let Some(unit) = raw_surrogate(&body[i..]) {
                    push_visible_surrogate(out, unit, b"\\\\");
                    *repairs |= Repairs::SURROGATE_ESCAPED;
                    i += 3;
                } else {
                    push_visible_byte(out, b, b"\\\\");
                    *repairs |= Repairs::INVALID_UTF8;
                    i += 1;
                }
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.extend_from_slice(&body[copied..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    fn json(input: &[u8]) -> (String, Vec<&'static str>) {
        let mut out = Vec::new();
        let repairs = safe_json(input, &mut out);
        (
            String::from_utf8(out).expect("safe_json output is UTF-8"),
            repairs.names().collect(),
        )
    }

    fn text(input: &[u8]) -> (String, Vec<&'static str>) {
        let mut out = Vec::new();
        let repairs = safe_text(input, &mut out);
        (
            String::from_utf8(out).expect("safe_text output is UTF-8"),
            repairs.names().collect(),
        )
    }

    /// serde_json with no recursion limit (ours is 128 anyway); the decoded value.
    fn parse(out: &[u8]) -> serde_json::Value {
        let mut de = serde_json::Deserializer::from_slice(out);
        de.disable_recursion_limit();
        let value = serde_json::Value::deserialize(&mut de).expect("serde_json parses the output");
        de.end().expect("nothing after the value");
        value
    }

    fn depth(input: &[u8]) -> usize {
        let mut sink = DepthSink(0);
        walk(input, &mut sink).expect("valid JSON");
        sink.0
    }

    struct DepthSink(usize);
    impl Sink for DepthSink {
        fn string(&mut self, _: usize, _: usize, _: bool) -> Result<(), Stop> {
            Ok(())
        }
        fn number(&mut self, _: usize, _: usize, _: bool) -> Result<(), Stop> {
            Ok(())
        }
        fn open(&mut self, _: usize, depth: usize) -> Result<(), Stop> {
            self.0 = self.0.max(depth);
            Ok(())
        }
        fn close(&mut self, _: usize, _: usize) {}
    }

    #[test]
    fn names_are_stable_and_ordered() {
        let all = Repairs::NAMES
            .iter()
            .fold(Repairs::NONE, |acc, n| acc | Repairs::from_name(n).unwrap());
        assert_eq!(all.names().collect::<Vec<_>>(), Repairs::NAMES);
        assert_eq!(
            (Repairs::INT_CLAMPED | Repairs::NUL_ESCAPED)
                .names()
                .collect::<Vec<_>>(),
            ["nul_escaped", "int_clamped"]
        );
        assert!(Repairs::NONE.is_empty());
        assert!(all.contains(Repairs::STORED_AS_TEXT));
        assert_eq!(format!("{:?}", Repairs::NOT_JSON), "{\"not_json\"}");
        assert_eq!(Repairs::from_name("nope"), None);
    }

    #[test]
    fn a_set_of_repairs_is_a_bit_set() {
        // a row's set is the union of its cells': a flag met twice is still one flag
        let row = Repairs::NUL_ESCAPED | Repairs::STORED_AS_TEXT | Repairs::NUL_ESCAPED;
        assert_eq!(row.bits(), 0b1_0000_0001);
        assert_eq!(Repairs::NONE.bits(), 0);
        assert!(
            row.contains(Repairs::NUL_ESCAPED)
                && row.contains(Repairs::NUL_ESCAPED | Repairs::STORED_AS_TEXT)
        );
        assert!(!row.contains(Repairs::INVALID_UTF8));
        assert!(!row.contains(Repairs::NUL_ESCAPED | Repairs::INVALID_UTF8));
        let mut grown = Repairs::NONE;
        grown.insert(Repairs::NOT_JSON);
        grown.insert(Repairs::NOT_JSON);
        grown.insert(Repairs::INT_CLAMPED);
        assert_eq!(
            grown.names().collect::<Vec<_>>(),
            ["not_json", "int_clamped"]
        );
        grown |= Repairs::NOT_JSON;
        assert_eq!(grown, Repairs::NOT_JSON | Repairs::INT_CLAMPED);
    }

    #[test]
    fn is_safe_json_is_the_fast_paths_check() {
        for (input, safe) in [
            (&b"{\"a\": [1, \"\\u00e9\"]}"[..], true),
            (b"[\"\xff\"]", false),  // well-formed JSON, invalid UTF-8
            (b"\"\\u0000\"", false), // UTF-8, but a NUL PostgreSQL refuses
            (b"not json", false),
        ] {
            assert_eq!(
                is_safe_json(input),
                safe,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            let mut out = Vec::new();
            assert_eq!(safe_json(input, &mut out).is_empty(), safe);
        }
    }

    #[test]
    fn normal_json_passes_unchanged() {
        for input in [
            &b"{}"[..],
            b"[]",
            b" {\"a\": [1, -2.5e-3, true, false, null, \"\\u00e9\\ud83d\\ude00\\n\"]}\n",
            b"\"plain\"",
            b"0",
            b"-0.0E+5",
            "{\"é✓\": \"𝄞\"}".as_bytes(),
            b"\"\x7f\"",
            b"1e307",
            b"9.99e307",
        ] {
            let mut out = b"prefix".to_vec();
            assert_eq!(safe_json(input, &mut out), Repairs::NONE, "{input:?}");
            assert_eq!(&out[6..], input);
            assert!(is_safe_json(input));
        }
    }

    #[test]
    fn nul_escape_becomes_visible() {
        assert_eq!(
            json(br#"{"a":"x\u0000y"}"#),
            (r#"{"a":"x\\u0000y"}"#.into(), vec!["nul_escaped"])
        );
        assert_eq!(
            json(b"[\"a\0b\"]"),
            (r#"["a\\u0000b"]"#.into(), vec!["nul_escaped"])
        );
        // Keys too.
        assert_eq!(
            json(br#"{"\u0000":1}"#),
            (r#"{"\\u0000":1}"#.into(), vec!["nul_escaped"])
        );
        let (out, _) = json(br#""x\u0000y""#);
        assert_eq!(parse(out.as_bytes()), "x\\u0000y");
    }

    #[test]
    fn lone_surrogates_become_visible() {
        assert_eq!(
            json(br#""\uD800""#),
            (r#""\\ud800""#.into(), vec!["surrogate_escaped"])
        );
        assert_eq!(
            json(br#""\udc00x\ud83d\ude00\ud83d""#),
            (
                r#""\\udc00x\ud83d\ude00\\ud83d""#.into(),
                vec!["surrogate_escaped"]
            )
        );
        // A high surrogate followed by a non-low escape, and two highs in a row.
        assert_eq!(json(br#""\ud800\u0041""#).0, r#""\\ud800\u0041""#);
        assert_eq!(
            json(br#""\ud800\ud800\udc00""#).0,
            r#""\\ud800\ud800\udc00""#
        );
    }

    #[test]
    fn invalid_utf8_becomes_visible() {
        assert_eq!(
            json(b"[\"a\xffb\xc3\"]"),
            (r#"["a\\xFFb\\xC3"]"#.into(), vec!["invalid_utf8"])
        );
        // surrogatepass bytes are surrogates, not three bad bytes.
        assert_eq!(
            json(b"\"\xed\xa0\xbd\xed\xb8\x80\""),
            (r#""\\ud83d\\ude00""#.into(), vec!["surrogate_escaped"])
        );
        // ED followed by something else is just invalid.
        assert_eq!(json(b"\"\xed\xa0A\"").0, r#""\\xED\\xA0A""#);
        // Valid multi-byte characters next to bad bytes are kept.
        let mut mixed = "\"é\u{1d11e}".as_bytes().to_vec();
        mixed.extend_from_slice(b"\x80\"");
        assert_eq!(json(&mixed).0, "\"é𝄞\\\\x80\"");
        // Bad bytes outside strings: not JSON.
        assert_eq!(
            json(b"[1,\xff]"),
            (r#""[1,\\xFF]""#.into(), vec!["invalid_utf8", "not_json"])
        );
    }

    #[test]
    fn raw_controls_get_escapes() {
        assert_eq!(
            json(b"{\"a\":\"line\nnext\ttab\x1f\"}"),
            (
                r#"{"a":"line\u000anext\u0009tab\u001f"}"#.into(),
                vec!["control_escaped"]
            )
        );
        let (out, _) = json(b"\"a\nb\"");
        assert_eq!(parse(out.as_bytes()), "a\nb");
    }

    #[test]
    fn numbers_outside_the_limits_become_strings() {
        for keep in [
            &b"1e307"[..],
            b"-12.5e306",
            b"1e-339",
            b"0.1e-339",
            b"1e308",
            b"1.7976931348623157e308",
            b"18446744073709551615",
            b"-9223372036854775808",
            b"123456789012345678901234567890.0",
        ] {
            assert_eq!(json(keep).1, Vec::<&str>::new(), "{keep:?}");
        }
        for text in [
            &b"1.8e308"[..],
            b"18446744073709551616",
            b"-9223372036854775809",
            b"123456789012345678901234567890",
            b"1e999999",
            b"-1E+400",
            b"1e-341",
            b"1e-99999999999999999999999999",
            b"1e99999999999999999999999999",
            b"0.00000000000000000000000000000000000000000000000000000000000000001e-300",
        ] {
            let mut expected = b"\"".to_vec();
            expected.extend_from_slice(text);
            expected.push(b'"');
            let mut out = Vec::new();
            assert_eq!(safe_json(text, &mut out), Repairs::NUMBER_AS_TEXT);
            assert_eq!(out, expected);
        }
        let long = format!("[{}]", "7".repeat(1001));
        assert_eq!(
            json(long.as_bytes()).0,
            format!("[\"{}\"]", "7".repeat(1001))
        );
        let ok = format!("[{}.5]", "7".repeat(300));
        assert_eq!(json(ok.as_bytes()).0, ok);
        assert_eq!(
            json(br#"{"a":1e400,"b":[2]}"#).0,
            r#"{"a":"1e400","b":[2]}"#
        );
    }

    #[test]
    fn number_rule() {
        assert!(number_fits(1, 0, 307));
        assert!(!number_fits(1, 0, 308));
        assert!(number_fits(0, 340, 0));
        assert!(!number_fits(0, 341, 0));
        assert!(!number_fits(1001, 0, -700));
        assert!(!number_fits(1, 0, i64::MIN));
        assert!(!number_fits(1, 0, i64::MAX));
        assert!(number_fits(400, 200, -100));
    }

    #[test]
    fn a_container_closed_by_the_other_bracket_is_not_json() {
        // PostgreSQL refuses these: passed through unchanged they would fail the whole COPY batch
        for input in [
            &b"{\"a\": 1]"[..],
            b"[1}",
            b"[{\"a\": [1}]]",
            b"{\"a\": [1]]",
        ] {
            assert!(!is_safe_json(input), "{:?}", String::from_utf8_lossy(input));
            let (out, names) = json(input);
            assert_eq!(names, ["not_json"]);
            assert_eq!(parse(out.as_bytes()), std::str::from_utf8(input).unwrap());
        }
    }

    #[test]
    fn containers_past_the_limit_close_back_into_the_right_kind() {
        // An object past the limit holding arrays, then another member: once the arrays close, the
        // parser must be back in the object (deeper levels are kept apart from the first 128).
        let inner = r#"{"a": [[1]], "b": {"c": [2]}}"#;
        let input = format!(
            "{}{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            inner,
            "]".repeat(MAX_JSON_DEPTH)
        );
        let (out, names) = json(input.as_bytes());
        assert_eq!(names, ["depth_limited"]);
        let mut want = serde_json::Value::String(inner.to_owned());
        for _ in 0..MAX_JSON_DEPTH {
            want = serde_json::Value::Array(vec![want]);
        }
        assert_eq!(parse(out.as_bytes()), want);
        assert!(is_safe_json(
            format!("{}{}", "[".repeat(127), "]".repeat(127)).as_bytes()
        ));
    }

    #[test]
    fn deep_nesting_is_cut_at_the_limit() {
        let at_limit = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(json(at_limit.as_bytes()).0, at_limit);
        let over = format!(
            "{}1{}",
            "[".repeat(MAX_JSON_DEPTH + 2),
            "]".repeat(MAX_JSON_DEPTH + 2)
        );
        let (out, names) = json(over.as_bytes());
        assert_eq!(names, ["depth_limited"]);
        assert_eq!(
            out,
            format!(
                "{}\"[[1]]\"{}",
                "[".repeat(MAX_JSON_DEPTH),
                "]".repeat(MAX_JSON_DEPTH)
            )
        );
        assert_eq!(depth(out.as_bytes()), MAX_JSON_DEPTH);
        parse(out.as_bytes());
        // The captured text is escaped as a string, with visible escapes for NUL and bad bytes.
        let mut over = b"[".repeat(MAX_JSON_DEPTH);
        over.extend_from_slice(b"{\"k\": \"a\\u0000\x00\xff\"}");
        over.extend(b"]".repeat(MAX_JSON_DEPTH));
        let mut out = Vec::new();
        let repairs = safe_json(&over, &mut out);
        assert_eq!(
            repairs.names().collect::<Vec<_>>(),
            ["nul_escaped", "invalid_utf8", "depth_limited"]
        );
        let inner = r#""{\"k\": \"a\\u0000\\u0000\\xFF\"}""#;
        assert!(std::str::from_utf8(&out).unwrap().contains(inner));
        // Two siblings over the limit, and repairs on both sides of the cut.
        let s = format!(
            "{}[[1],[2]],1e999{}",
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        let (out, names) = json(s.as_bytes());
        assert_eq!(names, ["number_as_text", "depth_limited"]);
        assert!(out.contains(r#"["[1]","[2]"],"1e999""#));
    }

    #[test]
    fn a_million_levels_do_not_overflow_the_stack() {
        let n = 1_000_000;
        let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let mut out = Vec::new();
        assert_eq!(safe_json(deep.as_bytes(), &mut out), Repairs::DEPTH_LIMITED);
        assert!(is_safe_json(&out));
        let unclosed = "{\"a\":".repeat(n);
        let mut out = Vec::new();
        assert_eq!(safe_json(unclosed.as_bytes(), &mut out), Repairs::NOT_JSON);
        assert!(is_safe_json(&out));
    }

    #[test]
    fn not_json_becomes_one_string() {
        for (input, expected) in [
            (&b""[..], r#""""#),
            (b"   ", r#""   ""#),
            (b"{", r#""{""#),
            (b"[1,]", r#""[1,]""#),
            (b"{} {}", r#""{} {}""#),
            (b"nul", r#""nul""#),
            (b"truex", r#""truex""#),
            (b"01", r#""01""#),
            (b"1.", r#""1.""#),
            (b"-", r#""-""#),
            (b"1e+", r#""1e+""#),
            (b"\"\\x\"", r#""\"\\x\"""#),
            (b"\"\\u12G4\"", r#""\"\\u12G4\"""#),
            (b"\"open", r#""\"open""#),
            (b"{\"a\" 1}", r#""{\"a\" 1}""#),
            (b"{1:2}", r#""{1:2}""#),
            (b"[1}", r#""[1}""#),
            (b"NaN", r#""NaN""#),
            (b"\xef\xbb\xbf{}", "\"\u{feff}{}\""),
            (b"a\tb\n", r#""a\u0009b\u000a""#),
        ] {
            let mut out = Vec::new();
            let repairs = safe_json(input, &mut out);
            assert!(repairs.contains(Repairs::NOT_JSON), "{input:?}");
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected, "{input:?}");
            assert_eq!(
                parse(&out).as_str().unwrap(),
                std::str::from_utf8(input).unwrap()
            );
        }
        assert_eq!(
            json(b"x\0\xed\xa0\x80"),
            (
                r#""x\\u0000\\ud800""#.into(),
                vec!["nul_escaped", "surrogate_escaped", "not_json"]
            )
        );
    }

    #[test]
    fn text_rules() {
        assert_eq!(text("héllo ✓".as_bytes()), ("héllo ✓".into(), vec![]));
        assert_eq!(text(b"a\0b"), (r"a\u0000b".into(), vec!["nul_escaped"]));
        assert_eq!(
            text(b"\xed\xb0\x80!"),
            (r"\udc00!".into(), vec!["surrogate_escaped"])
        );
        assert_eq!(
            text(b"\xff\xc3(\xe2\x82"),
            (r"\xFF\xC3(\xE2\x82".into(), vec!["invalid_utf8"])
        );
        assert_eq!(text(b""), (String::new(), vec![]));
        // Controls other than NUL are fine in text.
        assert_eq!(text(b"\x01\n"), ("\x01\n".into(), vec![]));
    }

    #[test]
    fn json_as_text_is_a_string_of_anything() {
        let mut out = Vec::new();
        let repairs = json_as_text(b"{\"a\":\"\\u0000\"}\0", &mut out);
        assert_eq!(
            repairs.names().collect::<Vec<_>>(),
            ["nul_escaped", "stored_as_text"]
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#""{\"a\":\"\\u0000\"}\\u0000""#
        );
        assert!(is_safe_json(&out));
    }

    /// Hostile JSON-ish text: valid JSON pieces mixed with every kind of trouble.
    fn hostile() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop_oneof![
            Just(b"\"\\u0000\"".to_vec()),
            Just(b"\"\\ud800\"".to_vec()),
            Just(b"\"\\udc00\\ud83d\\ude00\"".to_vec()),
            Just(b"\"a\x00b\x01\x1f\"".to_vec()),
            Just(b"\"\xff\xed\xa0\x80\xc3\"".to_vec()),
            Just(b"1e999999".to_vec()),
            Just(b"-1e-400".to_vec()),
            Just(b"123.456e7".to_vec()),
            Just(b"true".to_vec()),
            Just(b"null".to_vec()),
            "[a-z\\\\\"\u{e9}]{0,6}".prop_map(|s| format!("\"{s}\"").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ];
        atom.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(|items| {
                    let mut out = b"[".to_vec();
                    out.extend(items.join(&b","[..]));
                    out.push(b']');
                    out
                }),
                proptest::collection::vec(inner, 0..5).prop_map(|items| {
                    let mut out = b"{".to_vec();
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(format!("\"k{i}\\u0000\": ").as_bytes());
                        out.extend_from_slice(item);
                    }
                    out.push(b'}');
                    out
                }),
                (1usize..300).prop_map(|n| {
                    let mut out = b"[".repeat(n);
                    out.extend(b"]".repeat(n));
                    out
                }),
            ]
        })
    }

    /// Plain JSON values: no NUL, numbers serde_json prints within the limits.
    fn plain() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            "[^\u{0}]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(8, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[^\u{0}]{0,6}", inner), 0..6)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn check_output(input: &[u8]) {
        let mut out = Vec::new();
        let repairs = safe_json(input, &mut out);
        assert!(is_safe_json(&out), "{input:?} -> {out:?}");
        assert!(depth(&out) <= MAX_JSON_DEPTH);
        parse(&out);
        if repairs.is_empty() {
            assert_eq!(out, input);
        }
        let mut again = Vec::new();
        assert_eq!(safe_json(&out, &mut again), Repairs::NONE);
        assert_eq!(again, out);
    }

    fn naive_special(input: &[u8], start: usize) -> Option<usize> {
        (start..input.len()).find(|&i| matches!(input[i], b'"' | b'\\' | 0..=0x1F))
    }

    #[test]
    fn next_special_finds_the_first_hit() {
        for filler in [b'a', b' ', b'!', b'[', b']', 0x7F, 0x80, 0xFF] {
            for special in [b'"', b'\\', 0, 0x1F, b'\n'] {
                for at in 0..20 {
                    let mut buf = vec![filler; 24];
                    buf[at] = special;
                    buf[23] = b'"';
                    for start in 0..=at {
                        assert_eq!(next_special(&buf, start), Some(at));
                    }
                }
            }
            assert_eq!(next_special(&[filler; 24], 0), None);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn next_special_matches_a_plain_scan(
            input in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\')], 0..40),
            start in 0usize..40,
        ) {
            let start = start.min(input.len());
            prop_assert_eq!(next_special(&input, start), naive_special(&input, start));
        }

        #[test]
        fn hostile_json_always_comes_out_safe(input in hostile()) {
            check_output(&input);
        }

        #[test]
        fn arbitrary_bytes_always_come_out_safe(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            check_output(&input);
        }

        #[test]
        fn plain_json_passes_unchanged(value in plain(), pretty in any::<bool>()) {
            let input = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            let mut out = Vec::new();
            prop_assert_eq!(safe_json(&input, &mut out), Repairs::NONE);
            prop_assert_eq!(out, input);
        }

        #[test]
        fn text_always_comes_out_valid(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            let repairs = safe_text(&input, &mut out);
            prop_assert!(std::str::from_utf8(&out).is_ok());
            prop_assert!(!out.contains(&0));
            if repairs.is_empty() {
                prop_assert_eq!(&out, &input);
            }
            let mut again = Vec::new();
            prop_assert_eq!(safe_text(&out, &mut again), Repairs::NONE);
        }

        #[test]
        fn json_as_text_decodes_to_the_safe_text(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            json_as_text(&input, &mut out);
            let mut visible = Vec::new();
            safe_text(&input, &mut visible);
            let decoded = parse(&out);
            prop_assert_eq!(decoded.as_str().unwrap().as_bytes(), &visible[..]);
        }
    }
}
