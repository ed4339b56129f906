//! One reader of an upstream reply: the facts every consumer needs, read once.
//!
//! A `/v1/messages` reply is read by storage (usage, token counts, tool calls), the per-worker
//! token counters, tracing (id, model, stop reason) and conversation linking (the sub-agents it
//! launched, the text a later continuation quotes). Each used to parse the body again in Python;
//! [`read_reply`] reads a JSON body once and [`crate::SseObserver::reply`] gives the same
//! [`Reply`] at the end of a stream, from what it already holds (the rebuilt message is never
//! serialised and parsed again).
//!
//! The semantics are those of the Python code they replace (kept as test oracles in
//! `tests/oracles/reply.py`), so stored rows do not change:
//! - the body is parsed as is, else through [`safe::safe_json`] (storage's `_parse`: orjson, else
//!   the repaired value), so a reply with a lone surrogate, a number past a double or deep nesting
//!   still gives its usage. Nesting from 129 to 1,024 levels, which orjson reads and serde_json
//!   refuses by default, is read without serde_json's limit on a thread of its own (its stack
//!   sized for it); deeper is repaired, as orjson refuses it too;
//! - `usage_json` is the `usage` object written as `orjson.dumps` writes it (compact, key order
//!   kept, floats in orjson's notation, the literal `-0` as `0`), `None` when the reply has no
//!   `usage` object. One difference is kept: a usage nested past 254 levels, which orjson cannot
//!   write, was stored in `json.dumps`'s spaced, ASCII-escaped form (or not at all past Python's
//!   recursion limit); it is written compact here;
//! - a token count is what its bigint column stores (`nexus.usage.counts.stored_count`): a whole
//!   number >= 0 (an integer past 64 bits is read as a double, as orjson reads it); a value that is
//!   present, not null and not such a number is no count and sets `usage_not_integer`;
//! - `tool_call_count`: content blocks whose `type` ends with `tool_use` (only with a usage);
//! - `launches`: `(id, prompt_key(input.prompt))` of each `tool_use` block named `Agent` or `Task`
//!   with a string prompt (`linker.spawned_prompts`; the id as Python's `str(id or "")`);
//! - `text`: the string `text` of every content block, joined by `\n`, whitespace runs collapsed
//!   (Python's `\s`), trimmed, lower-cased with Python 3.11's Unicode 14 case tables
//!   (`compaction.reply_text`), computed only when asked.

use std::io;

use serde::Deserialize;
use serde::Deserializer as _;
use serde_json::ser::Formatter;
use serde_json::{Map, Number, Value};

use crate::conversation::prompt_key;
use crate::safe;

/// The tool names that launch a sub-agent (`nexus.conversations.linker.SUBAGENT_TOOLS`).
pub const SUBAGENT_TOOLS: [&str; 2] = ["Agent", "Task"];

/// A token count as stored: a u64, or a whole double at or past 2**64 (the column clamps it and
/// flags `int_clamped`; the count itself is kept exact, as Python's `int(float)` would).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Count {
    Int(u64),
    Whole(f64),
}

/// What a reply says, read once (see the module documentation for each field's rule).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    pub message_id: Option<String>,
    pub model: Option<String>,
    pub stop_reason: Option<String>,
    pub usage_json: Option<Vec<u8>>,
    pub input_tokens: Option<Count>,
    pub output_tokens: Option<Count>,
    pub cache_creation_input_tokens: Option<Count>,
    pub cache_read_input_tokens: Option<Count>,
    pub usage_not_integer: bool,
    pub tool_call_count: Option<u64>,
    pub launches: Vec<(String, [u8; 16])>,
    /// The string `text` of every content block joined by `\n`; [`Reply::text`] canonicalises it
    /// on demand (only a compaction's reply is asked).
    pub joined_text: String,
}

impl Reply {
    /// `compaction.reply_text`: the joined text, whitespace runs as one space, trimmed, lower-cased.
    pub fn text(&self) -> String {
        canonical(&self.joined_text)
    }
}

/// Read a JSON reply body. Never fails: what cannot be read is absent from the result.
pub fn read_reply(body: &[u8]) -> Reply {
    match parse(body) {
        Parsed::Value(value, fixed) => facts_of(&value, fixed.as_deref().unwrap_or(body)),
        Parsed::Deep => on_deep_stack(|| match parse_unbounded(body) {
            Some(value) => facts_of(&value, body),
            None => match repaired(body) {
                Some((value, fixed)) => facts_of(&value, &fixed),
                None => Reply::default(),
            },
        }),
        Parsed::Nothing => Reply::default(),
    }
}

/// Run `read` (parse, read, drop: each recursive) on a thread whose stack holds the 1,024 levels
/// orjson reads, whatever the caller's thread allows. Only a body nested past 128 levels pays.
fn on_deep_stack(read: impl FnOnce() -> Reply + Send) -> Reply {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new().stack_size(DEEP_STACK_BYTES);
        match thread.spawn_scoped(scope, read) {
            Ok(handle) => handle.join().unwrap_or_default(),
            Err(_) => Reply::default(), // no thread to be had: nothing read, never a failure
        }
    })
}

/// Room for 1,024 levels of serde_json's recursion, even unoptimised (reserved, not committed).
const DEEP_STACK_BYTES: usize = 32 * 1024 * 1024;

/// The facts of `value`, parsed from `source` (the body, or its repair).
fn facts_of(value: &Value, source: &[u8]) -> Reply {
    let Value::Object(message) = value else {
        return Reply::default();
    };
    let mut reply = Reply {
        message_id: string(message.get("id")),
        model: string(message.get("model")),
        stop_reason: string(message.get("stop_reason")),
        ..Reply::default()
    };
    if let Some(Value::Object(usage)) = message.get("usage") {
        reply.usage_json = Some(orjson_dumps(usage, source));
        let mut flag = false;
        reply.input_tokens = stored_count(usage.get("input_tokens"), &mut flag);
        reply.output_tokens = stored_count(usage.get("output_tokens"), &mut flag);
        reply.cache_creation_input_tokens =
            stored_count(usage.get("cache_creation_input_tokens"), &mut flag);
        reply.cache_read_input_tokens =
            stored_count(usage.get("cache_read_input_tokens"), &mut flag);
        reply.usage_not_integer = flag;
        reply.tool_call_count = Some(tool_calls(message));
    }
    reply.launches = launches(message);
    reply.joined_text = joined_text(message);
    reply
}

/// The launches and text of a message already parsed (the stream observer's rebuilt message).
pub(crate) fn content_facts(message: &Map<String, Value>) -> (Vec<(String, [u8; 16])>, String) {
    (launches(message), joined_text(message))
}

/// What storage's `_parse` gets of a body.
enum Parsed {
    /// The value, and the repaired bytes it was read from when the body needed a repair.
    Value(Value, Option<Vec<u8>>),
    /// Valid JSON nested past serde_json's 128 levels but within orjson's 1,024.
    Deep,
    Nothing,
}

/// Storage's `_parse`: the value as is, else as `safe_json` repairs it; nothing for no bytes.
fn parse(body: &[u8]) -> Parsed {
    if body.is_empty() {
        return Parsed::Nothing;
    }
    match serde_json::from_slice(body) {
        Ok(v) => return Parsed::Value(v, None),
        // orjson reads 1,024 levels, serde_json 128 unless told: read what orjson reads
        Err(e) if e.to_string().starts_with("recursion limit") && depth(body) <= ORJSON_DEPTH => {
            return Parsed::Deep;
        }
        Err(_) => {}
    }
    repaired(body).map_or(Parsed::Nothing, |(v, fixed)| Parsed::Value(v, Some(fixed)))
}

/// The value `safe_json` repairs `body` into (what storage's `_parse` reads when orjson refuses).
fn repaired(body: &[u8]) -> Option<(Value, Vec<u8>)> {
    let mut out = Vec::with_capacity(body.len() + 16);
    safe::safe_json(body, &mut out);
    // safe_json output nests at most MAX_JSON_DEPTH (128) levels: the recursion stays bounded
    parse_unbounded(&out).map(|v| (v, out))
}

/// The deepest nesting orjson reads (and so storage's `_parse` without a repair).
const ORJSON_DEPTH: usize = 1024;

/// serde_json without its recursion limit: only for input whose depth is known to be bounded.
fn parse_unbounded(json: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

/// The deepest container nesting in `json` (brackets inside strings not counted); only computed
/// for a body serde_json refused as too deep.
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// `nexus.usage.counts.stored_count`, flagging a present, non-null value that is not a count.
fn stored_count(v: Option<&Value>, flag: &mut bool) -> Option<Count> {
    let count = match v? {
        Value::Null => return None,
        Value::Number(n) => number_count(n),
        _ => None,
    };
    if count.is_none() {
        *flag = true;
    }
    count
}

fn number_count(n: &Number) -> Option<Count> {
    if let Some(u) = n.as_u64() {
        return Some(Count::Int(u));
    }
    if n.is_i64() {
        return None; // negative
    }
    let f = n.as_f64()?;
    if !(f.is_finite() && f.fract() == 0.0 && f >= 0.0) {
        return None;
    }
    // below 2**64 a whole double converts exactly
    if f < 18_446_744_073_709_551_616.0 {
        Some(Count::Int(f as u64))
    } else {
        Some(Count::Whole(f))
    }
}

fn blocks(message: &Map<String, Value>) -> &[Value] {
    match message.get("content") {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

fn tool_calls(message: &Map<String, Value>) -> u64 {
    let is_call = |b: &&Value| {
        b.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("tool_use"))
    };
    blocks(message).iter().filter(is_call).count() as u64
}

fn launches(message: &Map<String, Value>) -> Vec<(String, [u8; 16])> {
    let mut out = Vec::new();
    for block in blocks(message) {
        let Value::Object(block) = block else {
            continue;
        };
        if block.get("type").and_then(Value::as_str) != Some("tool_use") {
            continue;
        }
        let named = block.get("name").and_then(Value::as_str);
        if !named.is_some_and(|n| SUBAGENT_TOOLS.contains(&n)) {
            continue;
        }
        let prompt = block
            .get("input")
            .and_then(|i| i.get("prompt"))
            .and_then(Value::as_str);
        if let Some(prompt) = prompt {
            let id = block.get("id").map(py_str).unwrap_or_default();
            out.push((id, prompt_key(prompt)));
        }
    }
    out
}

fn joined_text(message: &Map<String, Value>) -> String {
    let mut joined = String::new();
    let mut first = true;
    for block in blocks(message) {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            if !first {
                joined.push('\n');
            }
            joined.push_str(text);
            first = false;
        }
    }
    joined
}

/// What Python's `str.isspace` (and so `re`'s `\s` and `str.strip`) calls whitespace: Unicode's
/// White_Space plus the four ASCII separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Letters given a lower case after Unicode 14.0, the tables of Python 3.11's `str.lower`: kept as
/// they are, so a reply's text is lower-cased as the continuation that quotes it (canonicalised in
/// Python) is. `tests/test_reply_core.py` compares every code point with Python's.
const NEWER_CASED: [(char, char); 9] = [
    ('\u{1c89}', '\u{1c89}'),
    ('\u{a7cb}', '\u{a7cc}'),
    ('\u{a7ce}', '\u{a7ce}'),
    ('\u{a7d2}', '\u{a7d2}'),
    ('\u{a7d4}', '\u{a7d4}'),
    ('\u{a7da}', '\u{a7da}'),
    ('\u{a7dc}', '\u{a7dc}'),
    ('\u{10d50}', '\u{10d65}'),
    ('\u{16ea0}', '\u{16eb8}'),
];

fn newer_cased(c: char) -> bool {
    NEWER_CASED.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

/// Python's `str.lower` (Unicode 14): Rust's, except for the letters cased since (unassigned for
/// Python, so they also end a word for the final sigma rule, as a split here does).
fn py_lower(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if newer_cased(c) {
            out.push_str(&text[start..i].to_lowercase());
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    out.push_str(&text[start..].to_lowercase());
    out
}

/// `compaction.canonical`: whitespace runs as one space, trimmed, lower-cased.
pub fn canonical(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if is_py_space(c) {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    py_lower(&out)
}

/// Python's `str(value)` for a JSON value, as `str(block.get("id") or "")` gives it (a falsy value
/// is ""). Containers follow `repr`; their strings are quoted as Python does for printable text
/// (a control character is escaped; other non-printable non-ASCII characters are not detected).
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null | Value::Bool(false) => String::new(),
        Value::Number(n) if n.as_f64() == Some(0.0) => String::new(),
        Value::Array(a) if a.is_empty() => String::new(),
        Value::Object(o) if o.is_empty() => String::new(),
        other => {
            let mut out = String::new();
            py_repr(other, &mut out);
            out
        }
    }
}

fn py_repr(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => out.push_str(&u.to_string()),
            (None, Some(i)) => out.push_str(&i.to_string()),
            _ => out.push_str(&float_text(n.as_f64().unwrap_or(0.0), -4, 2)),
        },
        Value::String(s) => py_repr_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr_str(k, out);
                out.push_str(": ");
                py_repr(item, out);
            }
            out.push('}');
        }
    }
}

fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// A double as shortest round-trip digits: fixed notation for decimal exponents in
/// `[min_fixed, 16)`, else scientific with a signed exponent of at least `exp_width` digits.
/// Python's `repr` is `(-4, 2)`, orjson's `dumps` `(-5, 1)`.
fn float_text(f: f64, min_fixed: i32, exp_width: usize) -> String {
    let sci = format!("{f:e}"); // shortest round-trip digits: "-1.25e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::from(sign);
    if (min_fixed..16).contains(&exp) {
        if exp >= 0 {
            let point = exp as usize + 1;
            if digits.len() <= point {
                out.push_str(&digits);
                out.push_str(&"0".repeat(point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!(
            "{:0width$}",
            exp.unsigned_abs(),
            width = exp_width
        ));
    }
    out
}

/// serde_json's compact writer (its string escapes are orjson's) with orjson's float notation.
struct OrjsonFormatter;

impl Formatter for OrjsonFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(float_text(value, -5, 1).as_bytes())
    }
}

/// `orjson.dumps(usage)`: what storage has always kept in the `usage` column. `source` holds the
/// JSON `usage` was read from: serde_json reads the literal `-0` as the double -0.0 where orjson
/// reads the integer 0, so a usage holding a -0.0 is read again from its text with each `-0`
/// literal as `0` (only such a usage pays).
fn orjson_dumps(usage: &Map<String, Value>, source: &[u8]) -> Vec<u8> {
    let fixed = if usage.values().any(has_minus_zero) {
        int_zeros_usage(source)
    } else {
        None
    };
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, OrjsonFormatter);
    // writing to a Vec cannot fail
    let _ = serde::Serialize::serialize(fixed.as_ref().unwrap_or(usage), &mut ser);
    out
}

fn has_minus_zero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()),
        Value::Array(items) => items.iter().any(has_minus_zero),
        Value::Object(map) => map.values().any(has_minus_zero),
        _ => false,
    }
}

/// The top-level `usage` of `source` (the last one, as a JSON reader keeps), every integer `-0`
/// in it read as `0`.
fn int_zeros_usage(source: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(source);
    de.disable_recursion_limit(); // the source was read already: its depth is known to be bounded
    let raw = de.deserialize_map(LastUsage).ok()??;
    let mut text = raw.get().as_bytes().to_vec();
    let mut in_string = false;
    let mut escaped = false;
    for i in 0..text.len() {
        let b = text[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-'
            && text.get(i + 1) == Some(&b'0')
            && !matches!(text.get(i + 2), Some(b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            text[i] = b' '; // the same length: `-0` as ` 0`
        }
    }
    match parse_unbounded(&text)? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Visits the top-level object and keeps the raw text of its last `usage` member.
struct LastUsage;

impl<'de> serde::de::Visitor<'de> for LastUsage {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut usage = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "usage" {
                usage = Some(map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_python_and_orjson_write_them() {
        let cases = [
            (1e16, "1e+16", "1e+16"),
            (1.5e-7, "1.5e-07", "1.5e-7"),
            (1e-5, "1e-05", "0.00001"),
            (1e-4, "0.0001", "0.0001"),
            (100.0, "100.0", "100.0"),
            (0.1, "0.1", "0.1"),
            (-0.0, "-0.0", "-0.0"),
            (
                1234567890123456.8,
                "1234567890123456.8",
                "1234567890123456.8",
            ),
            (
                18446744073709551616.0,
                "1.8446744073709552e+19",
                "1.8446744073709552e+19",
            ),
            (1e300, "1e+300", "1e+300"),
        ];
        for (f, py, orjson) in cases {
            assert_eq!(float_text(f, -4, 2), py, "{f}");
            assert_eq!(float_text(f, -5, 1), orjson, "{f}");
        }
    }

    #[test]
    fn a_json_reply_gives_every_fact() {
        let body = br#"{"id":"msg_1","model":"m","stop_reason":"tool_use","content":[
            {"type":"text","text":"  Hello\n\tWORLD "},
            {"type":"tool_use","id":"toolu_1","name":"Agent","input":{"prompt":"do it"}},
            {"type":"server_tool_use","id":"s","name":"web_search","input":{}}],
            "usage":{"input_tokens":3,"output_tokens":-1,"cache_read_input_tokens":null,"x":1.5e-7}}"#;
        let r = read_reply(body);
        assert_eq!(r.message_id.as_deref(), Some("msg_1"));
        assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(
            r.usage_json.as_deref(),
            Some(&br#"{"input_tokens":3,"output_tokens":-1,"cache_read_input_tokens":null,"x":1.5e-7}"#[..])
        );
        assert_eq!(r.input_tokens, Some(Count::Int(3)));
        assert_eq!(r.output_tokens, None);
        assert!(r.usage_not_integer);
        assert_eq!(r.tool_call_count, Some(2));
        assert_eq!(r.launches, vec![("toolu_1".into(), prompt_key("do it"))]);
        assert_eq!(r.text(), "hello world");
    }

    #[test]
    fn hostile_bodies_never_fail() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            br#"{"usage":{"input_tokens":1e400},"id":"\ud800"}"#,
            br#"{"usage":{"input_tokens":18446744073709551616}}"#,
        ] {
            let _ = read_reply(body);
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(read_reply(deep.as_bytes()), Reply::default());
        // as deep as orjson reads: read as is (usage and all)
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let body = format!(r#"{{"usage":{{"input_tokens":2,"x":{}}}}}"#, nested(1021));
        let r = read_reply(body.as_bytes());
        assert_eq!(
            r.usage_json.as_deref(),
            Some(&body.as_bytes()[9..body.len() - 1])
        );
        // one level more: orjson refuses it, so it is read repaired
        let body = format!(r#"{{"usage":{{"input_tokens":2,"x":{}}}}}"#, nested(1023));
        let r = read_reply(body.as_bytes());
        assert_eq!(r.input_tokens, Some(Count::Int(2)));
        assert!(r.usage_json.unwrap().len() < body.len());
        // one number past a double: the whole body takes the repair path, every number past 64
        // bits becomes the string of its digits, as storage's `_parse` reads it
        let r =
            read_reply(br#"{"usage":{"input_tokens":1e400,"output_tokens":18446744073709551616}}"#);
        assert!(r.usage_not_integer);
        assert_eq!((r.input_tokens, r.output_tokens), (None, None));
        let r = read_reply(br#"{"usage":{"output_tokens":18446744073709551616}}"#);
        assert!(!r.usage_not_integer);
        assert_eq!(r.output_tokens, Some(Count::Whole(18446744073709551616.0)));
    }

    #[test]
    fn ids_as_python_str_gives_them() {
        let id = |v: &str| py_str(&serde_json::from_str(v).unwrap());
        assert_eq!(id("0"), "");
        assert_eq!(id("7"), "7");
        assert_eq!(id("true"), "True");
        assert_eq!(id("1e16"), "1e+16");
        assert_eq!(id(r#"[1,"a'b",{"k":null}]"#), r#"[1, "a'b", {'k': None}]"#);
    }
}
