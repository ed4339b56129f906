//! Incremental observer for Anthropic Messages API server-sent events.
//!
//! The proxy forwards the upstream bytes untouched; this module only *watches* them. Feed it every
//! network chunk as it arrives, split at any byte boundary (mid-line, mid-UTF-8 character, between
//! `\r` and `\n`), and it keeps a compact [`SseSummary`] plus enough state to rebuild the final
//! message (`message_json`). Its result never depends on where the chunks were cut.
//!
//! SSE framing follows the WHATWG spec: LF, CRLF and CR line endings; `field: value` with one
//! optional space after the colon; `:` comment lines; multiple `data:` lines joined by `\n`; a
//! blank line dispatches the event; an event with no `data:` line is not dispatched; a leading
//! UTF-8 BOM is ignored. At most one incomplete line is buffered, and it is bounded by
//! `max_line_bytes`: a longer line (or event data) is dropped together with its event and the
//! observer is marked `overflowed`, instead of growing without bound.
//!
//! Semantics shared with the Python reference (`tests/oracles/sse.py`):
//! - an event's type is its JSON `type` string, or the SSE `event:` name when `type` is missing;
//! - `event_count` counts dispatched events; data that is not a JSON object counts as malformed;
//! - `message_delta.usage` is cumulative: each non-null key replaces the previous value;
//! - every key of `message_delta.delta` (incl. `stop_reason`, `stop_sequence`) is applied to the
//!   rebuilt message.
//!
//! Hostile data is kept, visibly repaired, rather than dropped (see [`SseObserver::repairs`]).
//! Valid event data is parsed once with serde_json, as before; only data serde_json refuses (a lone
//! surrogate escape, invalid UTF-8, a raw control byte in a string, a number with no f64 value,
//! nesting of 128 levels or more) takes the failure path: it is rewritten by
//! [`safe::safe_json`] (visible escapes, numbers as the string of their text, subtrees past
//! [`safe::MAX_JSON_DEPTH`] as the string of their text) and the result parsed instead. An event
//! whose data is still not a JSON object then is counted in `malformed_events` (and its repairs,
//! e.g. `not_json`, reported). Tool inputs (the joined `partial_json`) are parsed the same way.
//!
//! Token counts are JSON numbers `>= 0`: a u64, or a whole number serde_json holds as an f64 (an
//! integer past u64, `1e300`, `12.0`), which saturates at `u64::MAX` (flagged `int_clamped`). A
//! fraction, a negative number or a string is not a count (the count keeps its previous value)
//! but stays in the usage JSON. A usage object holding an f64 would be written back rounded, so
//! such an event is re-read through the failure path: an integer past 64 bits is then kept in the
//! usage JSON (and the message) as the string of its exact digits (`number_as_text`), while its
//! count still saturates.

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::safe::{self, Repairs};

/// Default cap for one SSE line and for one event's joined data (16 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A tool call announced by a `content_block_start` (`tool_use`, `server_tool_use`, `mcp_tool_use`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
}

/// An `error` event (which can arrive after a 200 status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub error_type: String,
    pub message: String,
}

/// Compact facts extracted from the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseSummary {
    pub message_id: Option<String>,
    pub model: Option<String>,
    pub role: Option<String>,
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub tool_uses: Vec<ToolUse>,
    pub error: Option<ApiError>,
    /// Dispatched SSE events (those with at least one `data:` line), malformed ones included.
    pub event_count: u64,
    /// Dispatched events whose data is not a JSON object.
    pub malformed_events: u64,
    pub saw_message_stop: bool,
    /// Number of `content_block_start` events carrying a block object.
    pub content_blocks: u64,
    /// A line or an event's data exceeded `max_line_bytes` and was dropped.
    pub overflowed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Tool,
    Thinking,
    Other,
}

impl BlockKind {
    fn of(block_type: &str) -> Self {
        match block_type {
            "text" => BlockKind::Text,
            "thinking" => BlockKind::Thinking,
            t if t.ends_with("tool_use") => BlockKind::Tool,
            _ => BlockKind::Other,
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    index: Option<u64>,
    kind: BlockKind,
    start: Map<String, Value>,
    text: String,
    citations: Vec<Value>,
    partial_json: String,
    /// Tool input parsed at `content_block_stop`, with its repairs (cleared by any later input
    /// delta).
    parsed_input: Option<(Value, Repairs)>,
    thinking: String,
    signature: String,
}

impl Block {
    fn new(index: Option<u64>, start: Map<String, Value>) -> Self {
        let kind = BlockKind::of(start.get("type").and_then(Value::as_str).unwrap_or(""));
        Block {
            index,
            kind,
            start,
            text: String::new(),
            citations: Vec::new(),
            partial_json: String::new(),
            parsed_input: None,
            thinking: String::new(),
            signature: String::new(),
        }
    }

    fn tool_input(&self) -> Value {
        if self.partial_json.is_empty() {
            return self
                .start
                .get("input")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
        }
        if let Some((v, _)) = &self.parsed_input {
            return v.clone();
        }
        parse_tool_input(&self.partial_json).0
    }

    /// The repairs parsing the tool input takes (none for a block that is not a tool).
    fn input_repairs(&self) -> Repairs {
        if self.kind != BlockKind::Tool || self.partial_json.is_empty() {
            return Repairs::NONE;
        }
        match &self.parsed_input {
            Some((_, repairs)) => *repairs,
            // Not stopped yet (a cut-off stream): parsed now, as `render` does. (serde's
            // `IgnoredAny` would not do: it skips strings without checking their surrogates.)
            None => parse_tool_input(&self.partial_json).1,
        }
    }

    fn render(&self) -> Value {
        let mut out = self.start.clone();
        match self.kind {
            BlockKind::Text => {
                let mut text = out
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                text.push_str(&self.text);
                out.insert("text".into(), Value::String(text));
                if !self.citations.is_empty() {
                    let mut all = match out.get("citations") {
                        Some(Value::Array(a)) => a.clone(),
                        _ => Vec::new(),
                    };
                    all.extend(self.citations.iter().cloned());
                    out.insert("citations".into(), Value::Array(all));
                }
            }
            BlockKind::Tool => {
                out.insert("input".into(), self.tool_input());
            }
            BlockKind::Thinking => {
                for (key, acc) in [("thinking", &self.thinking), ("signature", &self.signature)] {
                    let mut s = out
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    s.push_str(acc);
                    out.insert(key.into(), Value::String(s));
                }
            }
            BlockKind::Other => {}
        }
        Value::Object(out)
    }
}

/// The failure path: `data` (which serde_json refused, or which needs its exact number text) as
/// [`safe::safe_json`] rewrites it, and the repairs made.
fn repair(data: &[u8]) -> (Vec<u8>, Repairs) {
    let mut out = Vec::with_capacity(data.len() + 16);
    let repairs = safe::safe_json(data, &mut out);
    (out, repairs)
}

/// Parse `safe_json` output. It nests at most [`safe::MAX_JSON_DEPTH`] (128) levels, one more than
/// serde_json's default limit allows, so the limit is lifted here (and only here): the recursion
/// stays bounded by the repair.
fn parse_safe(json: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

/// A tool input (the joined `partial_json`) and the repairs it took: parsed as is when serde_json
/// accepts it, else through the failure path (input that is not JSON becomes the string of its
/// text, as before, now flagged `not_json`).
fn parse_tool_input(raw: &str) -> (Value, Repairs) {
    if let Ok(v) = serde_json::from_str(raw) {
        return (v, Repairs::NONE);
    }
    let (json, repairs) = repair(raw.as_bytes());
    let value = parse_safe(&json).unwrap_or_else(|| Value::String(raw.to_owned()));
    (value, repairs)
}

/// The event types the observer acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    MessageStart,
    ContentBlockStart,
    ContentBlockDelta,
    ContentBlockStop,
    MessageDelta,
    MessageStop,
    Error,
    /// `ping` and event types added later: tolerated.
    Other,
}

impl EventKind {
    /// The event's JSON `type` string, or the SSE `event:` name when `type` is missing.
    fn of(ev: &Map<String, Value>, sse_name: &[u8]) -> Self {
        let name = match ev.get("type") {
            Some(Value::String(t)) => t.as_bytes(),
            _ => sse_name,
        };
        match name {
            b"message_start" => Self::MessageStart,
            b"content_block_start" => Self::ContentBlockStart,
            b"content_block_delta" => Self::ContentBlockDelta,
            b"content_block_stop" => Self::ContentBlockStop,
            b"message_delta" => Self::MessageDelta,
            b"message_stop" => Self::MessageStop,
            b"error" => Self::Error,
            _ => Self::Other,
        }
    }
}

/// The usage object of a `message_start` or `message_delta` event.
fn usage_of(kind: EventKind, ev: &Map<String, Value>) -> Option<&Map<String, Value>> {
    match kind {
        EventKind::MessageStart => ev.get("message")?.get("usage")?.as_object(),
        EventKind::MessageDelta => ev.get("usage")?.as_object(),
        _ => None,
    }
}

/// Whether `usage` holds, at any depth, a number serde_json reads only as an f64.
fn holds_float(usage: &Map<String, Value>) -> bool {
    let mut stack: Vec<&Value> = usage.values().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Number(n) if n.is_f64() => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    false
}

/// A token count: a u64, or a whole f64 `>= 0` saturated at `u64::MAX` (true when it saturated).
fn token_count(n: &Number) -> Option<(u64, bool)> {
    if let Some(u) = n.as_u64() {
        return Some((u, false));
    }
    const PAST_U64: f64 = 18_446_744_073_709_551_616.0; // 2^64
    match n.as_f64() {
        Some(f) if f >= PAST_U64 => Some((u64::MAX, true)),
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Some((f as u64, false)),
        _ => None,
    }
}

fn as_index(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn str_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Incremental, bounded SSE observer. See the module docs.
#[derive(Debug, Clone)]
pub struct SseObserver {
    max_line_bytes: usize,
    // --- framing state ---
    /// The incomplete line carried over from the previous chunk (never more than one line).
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a leading `\n` in the next chunk belongs to it.
    pending_cr: bool,
    /// The current line overflowed: drop bytes until its end.
    discarding: bool,
    /// No line has been completed yet (for BOM stripping).
    first_line: bool,
    event_name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The current event lost a line or data to overflow: do not dispatch it.
    event_poisoned: bool,
    // --- extracted state ---
    summary: SseSummary,
    message: Option<Map<String, Value>>,
    usage: Map<String, Value>,
    usage_seen: bool,
    delta_fields: Map<String, Value>,
    blocks: Vec<Block>,
    /// What the failure path repaired in event data, and counts that saturated.
    repairs: Repairs,
}

impl Default for SseObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl SseObserver {
    /// An observer with the default 16 MiB line cap.
    pub fn new() -> Self {
        SseObserver {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            line: Vec::new(),
            pending_cr: false,
            discarding: false,
            first_line: true,
            event_name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event_poisoned: false,
            summary: SseSummary::default(),
            message: None,
            usage: Map::new(),
            usage_seen: false,
            delta_fields: Map::new(),
            blocks: Vec::new(),
            repairs: Repairs::NONE,
        }
    }

    /// An observer whose line (and event data) cap is `max_line_bytes`, which must be at least 1.
    pub fn with_max_line_bytes(max_line_bytes: usize) -> Result<Self, crate::NexusError> {
        if max_line_bytes == 0 {
            return Err(crate::NexusError::InvalidArgument(
                "max_line_bytes must be at least 1".into(),
            ));
        }
        let mut obs = Self::new();
        obs.max_line_bytes = max_line_bytes;
        Ok(obs)
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    pub fn summary(&self) -> &SseSummary {
        &self.summary
    }

    /// What was repaired to keep hostile event data rather than drop it (see the module docs):
    /// event data the failure path rewrote (`not_json` for data that then still was not an object,
    /// counted in `malformed_events`), tool inputs parsed the same way, and `int_clamped` for a
    /// token count that saturated. Empty for a valid stream.
    pub fn repairs(&self) -> Repairs {
        self.blocks
            .iter()
            .fold(self.repairs, |acc, b| acc | b.input_repairs())
    }

    /// Observe one chunk of the stream. Returns the number of events dispatched by this chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let before = self.summary.event_count;
        let mut i = 0;
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            }
        }
        while i < chunk.len() {
            let rest = &chunk[i..];
            match memchr::memchr2(b'\r', b'\n', rest) {
                Some(off) => {
                    self.complete_line(&rest[..off]);
                    let end = i + off;
                    if chunk[end] == b'\r' {
                        match chunk.get(end + 1) {
                            Some(b'\n') => i = end + 2,
                            Some(_) => i = end + 1,
                            None => {
                                self.pending_cr = true;
                                i = end + 1;
                            }
                        }
                    } else {
                        i = end + 1;
                    }
                }
                None => {
                    self.buffer_partial(rest);
                    break;
                }
            }
        }
        (self.summary.event_count - before) as usize
    }

    fn mark_overflow(&mut self) {
        self.summary.overflowed = true;
        self.event_poisoned = true;
    }

    fn buffer_partial(&mut self, part: &[u8]) {
        if self.discarding {
            return;
        }
        if self.line.len() + part.len() > self.max_line_bytes {
            self.line = Vec::new();
            self.discarding = true;
            self.mark_overflow();
            return;
        }
        self.line.extend_from_slice(part);
    }

    /// `tail` ends the current line (the buffered prefix, if any, comes first).
    fn complete_line(&mut self, tail: &[u8]) {
        if self.discarding {
            self.discarding = false;
            self.first_line = false;
            return;
        }
        if self.line.len() + tail.len() > self.max_line_bytes {
            self.line.clear();
            self.first_line = false;
            self.mark_overflow();
            return;
        }
        if self.line.is_empty() {
            self.process_line(tail);
        } else {
            let mut buf = std::mem::take(&mut self.line);
            buf.extend_from_slice(tail);
            self.process_line(&buf);
            buf.clear();
            self.line = buf; // keep the allocation
        }
    }

    fn process_line(&mut self, mut line: &[u8]) {
        if self.first_line {
            self.first_line = false;
            if let Some(rest) = line.strip_prefix(BOM) {
                line = rest;
            }
        }
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(pos) => {
                let v = &line[pos + 1..];
                (&line[..pos], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event_name.clear();
                self.event_name.extend_from_slice(value);
            }
            b"data" => {
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + extra > self.max_line_bytes {
                    self.mark_overflow();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields do not matter here
        }
    }

    fn dispatch(&mut self) {
        if self.has_data && !self.event_poisoned {
            self.summary.event_count += 1;
            match serde_json::from_slice::<Value>(&self.data) {
                Ok(Value::Object(map)) => {
                    let kind = EventKind::of(&map, &self.event_name);
                    match usage_of(kind, &map) {
                        Some(usage) if holds_float(usage) => self.handle_inexact(kind, map),
                        _ => self.handle_event(kind, map),
                    }
                }
                Ok(_) => self.summary.malformed_events += 1,
                Err(_) => self.handle_refused(),
            }
        }
        self.event_name.clear();
        self.data.clear();
        self.has_data = false;
        self.event_poisoned = false;
    }

    /// The failure path for data serde_json refused: repaired, then handled if it is an object.
    #[cold]
    fn handle_refused(&mut self) {
        let (json, repairs) = repair(&self.data);
        self.repairs |= repairs;
        match parse_safe(&json) {
            Some(Value::Object(map)) => {
                let kind = EventKind::of(&map, &self.event_name);
                self.handle_event(kind, map);
            }
            _ => self.summary.malformed_events += 1,
        }
    }

    /// An event whose usage holds an f64 (see the module docs): handled as the failure path
    /// rewrites it, so the usage JSON keeps exact digits; its counts come from the f64 values.
    #[cold]
    fn handle_inexact(&mut self, kind: EventKind, ev: Map<String, Value>) {
        let floats: Vec<(String, Value)> = usage_of(kind, &ev)
            .into_iter()
            .flatten()
            .filter(|(_, v)| matches!(v, Value::Number(n) if n.is_f64()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (json, repairs) = repair(&self.data);
        match parse_safe(&json) {
            Some(Value::Object(exact)) if !repairs.is_empty() => {
                self.repairs |= repairs;
                self.handle_event(kind, exact);
            }
            _ => self.handle_event(kind, ev),
        }
        for (key, value) in floats {
            self.set_token_field(&key, &value);
        }
    }

    fn handle_event(&mut self, kind: EventKind, mut ev: Map<String, Value>) {
        match kind {
            EventKind::MessageStart => {
                if let Some(Value::Object(msg)) = ev.remove("message") {
                    self.on_message_start(msg);
                }
            }
            EventKind::ContentBlockStart => {
                let index = as_index(ev.get("index"));
                if let Some(Value::Object(block)) = ev.remove("content_block") {
                    let b = Block::new(index, block);
                    self.summary.content_blocks += 1;
                    if b.kind == BlockKind::Tool {
                        self.summary.tool_uses.push(ToolUse {
                            id: str_field(&b.start, "id").unwrap_or_default(),
                            name: str_field(&b.start, "name").unwrap_or_default(),
                        });
                    }
                    self.blocks.push(b);
                }
            }
            EventKind::ContentBlockDelta => {
                let Some(block) = self.block_mut(as_index(ev.get("index"))) else {
                    return;
                };
                let Some(Value::Object(delta)) = ev.get("delta") else {
                    return;
                };
                let s = |key: &str| delta.get(key).and_then(Value::as_str);
                match (delta.get("type").and_then(Value::as_str), block.kind) {
                    (Some("text_delta"), BlockKind::Text) => {
                        if let Some(t) = s("text") {
                            block.text.push_str(t);
                        }
                    }
                    (Some("citations_delta"), BlockKind::Text) => {
                        if let Some(c) = delta.get("citation") {
                            block.citations.push(c.clone());
                        }
                    }
                    (Some("input_json_delta"), BlockKind::Tool) => {
                        if let Some(p) = s("partial_json") {
                            block.partial_json.push_str(p);
                            block.parsed_input = None;
                        }
                    }
                    (Some("thinking_delta"), BlockKind::Thinking) => {
                        if let Some(t) = s("thinking") {
                            block.thinking.push_str(t);
                        }
                    }
                    (Some("signature_delta"), BlockKind::Thinking) => {
                        if let Some(t) = s("signature") {
                            block.signature.push_str(t);
                        }
                    }
                    _ => {}
                }
            }
            EventKind::ContentBlockStop => {
                if let Some(block) = self.block_mut(as_index(ev.get("index"))) {
                    if block.kind == BlockKind::Tool && !block.partial_json.is_empty() {
                        block.parsed_input = Some(parse_tool_input(&block.partial_json));
                    }
                }
            }
            EventKind::MessageDelta => {
                if let Some(Value::Object(delta)) = ev.remove("delta") {
                    for (k, v) in delta {
                        match k.as_str() {
                            "stop_reason" => self.summary.stop_reason = v.as_str().map(Into::into),
                            "stop_sequence" => {
                                self.summary.stop_sequence = v.as_str().map(Into::into)
                            }
                            _ => {}
                        }
                        self.delta_fields.insert(k, v);
                    }
                }
                if let Some(Value::Object(usage)) = ev.remove("usage") {
                    self.usage_seen = true;
                    for (k, v) in usage {
                        if v.is_null() {
                            continue; // null means "not reported", it never erases a count
                        }
                        self.set_token_field(&k, &v);
                        self.usage.insert(k, v);
                    }
                }
            }
            EventKind::MessageStop => self.summary.saw_message_stop = true,
            EventKind::Error => {
                let (error_type, message) = match ev.get("error") {
                    Some(Value::Object(e)) => (
                        str_field(e, "type").unwrap_or_default(),
                        str_field(e, "message").unwrap_or_default(),
                    ),
                    _ => (String::new(), String::new()),
                };
                self.summary.error = Some(ApiError {
                    error_type,
                    message,
                });
            }
            EventKind::Other => {} // ping and event types added later are tolerated
        }
    }

    fn on_message_start(&mut self, msg: Map<String, Value>) {
        self.summary.message_id = str_field(&msg, "id");
        self.summary.model = str_field(&msg, "model");
        self.summary.role = str_field(&msg, "role");
        if let Some(Value::Object(usage)) = msg.get("usage") {
            self.usage_seen = true;
            self.usage = usage.clone();
            for (k, v) in usage {
                self.set_token_field(k, v);
            }
        }
        self.message = Some(msg);
    }

    fn set_token_field(&mut self, key: &str, v: &Value) {
        let s = &mut self.summary;
        let slot = match key {
            "input_tokens" => &mut s.input_tokens,
            "cache_creation_input_tokens" => &mut s.cache_creation_input_tokens,
            "cache_read_input_tokens" => &mut s.cache_read_input_tokens,
            "output_tokens" => &mut s.output_tokens,
            _ => return,
        };
        let Value::Number(n) = v else { return };
        if let Some((count, saturated)) = token_count(n) {
            *slot = count;
            if saturated {
                self.repairs |= Repairs::INT_CLAMPED;
            }
        }
    }

    fn block_mut(&mut self, index: Option<u64>) -> Option<&mut Block> {
        let index = index?;
        self.blocks
            .iter_mut()
            .rev()
            .find(|b| b.index == Some(index))
    }

    /// The merged usage object (message_start usage, shallow-merged with every message_delta
    /// usage), or `None` if no usage was seen.
    pub fn usage_value(&self) -> Option<Value> {
        self.usage_seen.then(|| Value::Object(self.usage.clone()))
    }

    /// Compact JSON of [`Self::usage_value`].
    pub fn usage_json(&self) -> Option<Vec<u8>> {
        self.usage_seen
            .then(|| serde_json::to_vec(&self.usage).unwrap_or_default())
    }

    /// The final message rebuilt from the stream, or `None` before a `message_start`.
    pub fn message_value(&self) -> Option<Value> {
        let mut msg = self.message.clone()?;
        let content = self.blocks.iter().map(Block::render).collect();
        msg.insert("content".into(), Value::Array(content));
        for (k, v) in &self.delta_fields {
            msg.insert(k.clone(), v.clone());
        }
        if self.usage_seen {
            msg.insert("usage".into(), Value::Object(self.usage.clone()));
        }
        Some(Value::Object(msg))
    }

    /// Compact JSON of [`Self::message_value`].
    pub fn message_json(&self) -> Option<Vec<u8>> {
        self.message_value()
            .map(|v| serde_json::to_vec(&v).unwrap_or_default())
    }

    /// The reply's facts ([`crate::reply::Reply`]) at the end of the stream, from what the observer
    /// holds: ids, stop reason, its usage and counts as observed, its tool calls, and the
    /// launches and text of the rebuilt message (never serialised and parsed again).
    pub fn reply(&self) -> crate::reply::Reply {
        use crate::reply::Count;
        let s = &self.summary;
        let (launches, joined_text) = match self.message_value() {
            Some(Value::Object(message)) => crate::reply::content_facts(&message),
            _ => (Vec::new(), String::new()),
        };
        crate::reply::Reply {
            message_id: s.message_id.clone(),
            model: s.model.clone(),
            stop_reason: s.stop_reason.clone(),
            usage_json: self.usage_json(),
            input_tokens: Some(Count::Int(s.input_tokens)),
            output_tokens: Some(Count::Int(s.output_tokens)),
            cache_creation_input_tokens: Some(Count::Int(s.cache_creation_input_tokens)),
            cache_read_input_tokens: Some(Count::Int(s.cache_read_input_tokens)),
            usage_not_integer: false,
            tool_call_count: Some(s.tool_uses.len() as u64),
            launches,
            joined_text,
        }
    }
}

#[cfg(test)]
mod tests;
