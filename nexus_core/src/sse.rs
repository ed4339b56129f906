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
//! Semantics shared with the Python reference (`nexus/reference/sse.py`):
//! - an event's type is its JSON `type` string, or the SSE `event:` name when `type` is missing;
//! - `event_count` counts dispatched events; data that is not a JSON object counts as malformed;
//! - `message_delta.usage` is cumulative: each non-null key replaces the previous value;
//! - every key of `message_delta.delta` (incl. `stop_reason`, `stop_sequence`) is applied to the
//!   rebuilt message.

use serde_json::{Map, Value};

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
    /// Tool input parsed at `content_block_stop` (cleared by any later input delta).
    parsed_input: Option<Value>,
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
        if let Some(v) = &self.parsed_input {
            return v.clone();
        }
        parse_or_raw(&self.partial_json)
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

fn parse_or_raw(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
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
                    let name = std::mem::take(&mut self.event_name);
                    self.handle_event(map, &name);
                    self.event_name = name;
                }
                _ => self.summary.malformed_events += 1,
            }
        }
        self.event_name.clear();
        self.data.clear();
        self.has_data = false;
        self.event_poisoned = false;
    }

    fn handle_event(&mut self, mut ev: Map<String, Value>, sse_name: &[u8]) {
        let ev_type = match ev.get("type").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => String::from_utf8_lossy(sse_name).into_owned(),
        };
        match ev_type.as_str() {
            "message_start" => {
                if let Some(Value::Object(msg)) = ev.remove("message") {
                    self.on_message_start(msg);
                }
            }
            "content_block_start" => {
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
            "content_block_delta" => {
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
            "content_block_stop" => {
                if let Some(block) = self.block_mut(as_index(ev.get("index"))) {
                    if block.kind == BlockKind::Tool && !block.partial_json.is_empty() {
                        block.parsed_input = Some(parse_or_raw(&block.partial_json));
                    }
                }
            }
            "message_delta" => {
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
            "message_stop" => self.summary.saw_message_stop = true,
            "error" => {
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
            _ => {} // ping and event types added later are tolerated
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
        let Some(n) = v.as_u64() else { return };
        let s = &mut self.summary;
        match key {
            "input_tokens" => s.input_tokens = n,
            "cache_creation_input_tokens" => s.cache_creation_input_tokens = n,
            "cache_read_input_tokens" => s.cache_read_input_tokens = n,
            "output_tokens" => s.output_tokens = n,
            _ => {}
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
}

#[cfg(test)]
mod tests;
