//! One pass over a `/v1/messages` body: the storage split, the checks the proxy relies on, and the
//! facts the linker needs (prefix hashes, system hash, sub-agent and compaction markers).
//!
//! Messages are filtered (only `user` and `assistant` count; Claude Code's `role: "system"` entries
//! come and go between turns), normalised block by block (see [`super::digest`] for the stream), and a
//! message that repeats a tool id already seen is dropped whole (a client bug duplicates tool turns).
//! A message with nothing left after normalisation is skipped, so a turn that was only a reminder
//! cannot shift the prefixes. Malformed messages never fail the request: they hash as an opaque block.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock, Mutex};

use foldhash::{HashMap, HashSet, HashSetExt};

use serde_json::Value;
use xxhash_rust::xxh3::{xxh3_128, Xxh3Default};

use super::digest::Sink;
use super::lenient::{Content, Fields, LBlock, LMessage};
use super::text::{head, normalize_text, trim_ws};
use crate::body::{split_body_with, FieldVisitor, Key, SplitBody};
use crate::NexusError;

/// Bytes kept of the short texts the linker classifies by (system prompt, first and last user turn).
pub const HEAD_BYTES: usize = 512;
/// The opening of the first user message after a compaction (Claude Code 2.x).
pub const CONTINUATION_MARKER: &str =
    "This session is being continued from a previous conversation";
const BILLING_LINE: &str = "x-anthropic-billing-header:";
const SUBAGENT_FLAG: &str = "cc_is_subagent=true";

/// Facts about one request body, for classification and linking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// Raw length of `messages`, `role: "system"` entries included.
    pub message_count: usize,
    pub system_message_count: usize,
    /// Hash of each prefix of the kept messages: `prefix_hashes[k]` covers kept messages `0..=k`.
    pub prefix_hashes: Vec<Key>,
    /// Role of each kept message (`b'u'` or `b'a'`).
    pub kept_roles: Vec<u8>,
    /// Hash of the system prompt without its billing line and reminders; None when empty.
    pub system_hash: Option<Key>,
    pub system_block_count: usize,
    pub system_head: String,
    /// The billing line says `cc_is_subagent=true`.
    pub is_subagent: bool,
    pub has_tools: bool,
    /// `prompt_key` of the first kept user message's text (what a sub-agent's spawning prompt matches).
    pub first_user_key: Option<Key>,
    pub first_user_head: String,
    pub last_user_head: String,
    /// The whole first user text when it opens a post-compaction continuation.
    pub continuation_text: Option<String>,
    /// When the last kept message is a user message of two blocks or more: the hash of the history
    /// with that message's last block left out. Claude Code 2.1.197 sends `/compact` as the last user
    /// turn with the summary prompt appended as one more block (and without that turn's reply): this
    /// is the history of the request the compaction continues (the linker's rule, `linker.py`).
    pub trimmed_hash: Option<Key>,
    /// The session the envelope's `metadata.user_id` names ([`super::session`]).
    pub envelope_session: Option<String>,
}

/// A body split for storage plus its facts.
#[derive(Debug, Clone)]
pub struct Analysis<'a> {
    pub split: SplitBody<'a>,
    pub facts: RequestFacts,
}

/// Analyse a request body. With `strict`, the fields the proxy relies on are checked (`model` a
/// non-empty string, `messages` a list, `stream` a boolean) and a failure is an `InvalidRequest`.
pub fn analyze_request(body: &[u8], strict: bool) -> Result<Analysis<'_>, NexusError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(NexusError::InvalidRequest(
            "Request body is empty; expected a JSON object.".into(),
        ));
    }
    let mut visitor = Collector::default();
    let split = split_body_with(body, &mut visitor).map_err(|e| match e {
        NexusError::InvalidArgument(msg) => NexusError::InvalidRequest(capitalize(&msg)),
        other => other,
    })?;
    let mut facts = visitor.facts;
    if strict {
        if facts.model.as_deref().is_none_or(str::is_empty) {
            return Err(NexusError::InvalidRequest(
                "model: Field required (a non-empty string).".into(),
            ));
        }
        if split.message_keys.is_none() {
            return Err(NexusError::InvalidRequest(
                "messages: Field required (a list of messages).".into(),
            ));
        }
        if visitor.bad_stream {
            return Err(NexusError::InvalidRequest(
                "stream: Input should be a valid boolean.".into(),
            ));
        }
    }
    facts.message_count = split.message_keys.as_ref().map_or(0, Vec::len);
    facts.envelope_session = super::session::envelope_session(&split.envelope);
    Ok(Analysis { split, facts })
}

fn capitalize(msg: &str) -> String {
    let mut chars = msg.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect::<String>() + ".",
        None => String::new(),
    }
}

#[derive(Default)]
struct Collector {
    facts: RequestFacts,
    bad_stream: bool,
}

impl<'a> FieldVisitor<'a> for Collector {
    fn field(&mut self, name: &str, raw: &'a str) -> Result<(), NexusError> {
        match name {
            "model" => self.facts.model = serde_json::from_str::<String>(raw).ok(),
            // A field given twice is read as its last copy, as the stored body keeps it.
            "stream" => {
                let stream = serde_json::from_str::<bool>(raw).ok();
                self.facts.stream = stream;
                self.bad_stream = stream.is_none();
            }
            "tools" => {
                let t = raw.trim_ascii();
                self.facts.has_tools = t.starts_with('[') && trim_ws(&t[1..]) != "]";
            }
            _ => {}
        }
        Ok(())
    }

    fn system(&mut self, raw: &'a str, key: &Key) -> Result<(), NexusError> {
        self.system_facts(raw, key);
        Ok(())
    }

    fn messages(&mut self, items: &[&'a str], keys: &[Key]) -> Result<(), NexusError> {
        // Only the last `messages` list counts (the split keeps that one): forget an earlier one.
        let facts = &mut self.facts;
        facts.prefix_hashes.clear();
        facts.kept_roles.clear();
        facts.system_message_count = 0;
        facts.first_user_key = None;
        facts.first_user_head.clear();
        facts.last_user_head.clear();
        facts.continuation_text = None;
        facts.trimmed_hash = None;
        let digests = message_digests(items, keys);
        let mut hasher = Xxh3Default::new();
        // The state before the last kept message, kept only when it is a user message of two blocks
        // or more (a clone of the hasher's small state, not a second pass).
        let mut before_last: Option<Xxh3Default> = None;
        let mut seen_uses: HashSet<&str> = HashSet::new();
        let mut seen_results: HashSet<&str> = HashSet::new();
        let mut first_user: Option<&str> = None;
        let mut last_user: Option<&MessageDigest> = None;
        for digest in &digests {
            let role = match digest.role {
                Role::User => b'u',
                Role::Assistant => b'a',
                Role::System => {
                    self.facts.system_message_count += 1;
                    continue;
                }
                Role::Other => continue, // not an object, or another role: nothing a turn could match
            };
            let repeats = digest.uses.iter().any(|id| seen_uses.contains(id.as_str()))
                || digest
                    .results
                    .iter()
                    .any(|id| seen_results.contains(id.as_str()));
            seen_uses.extend(digest.uses.iter().map(String::as_str));
            seen_results.extend(digest.results.iter().map(String::as_str));
            if repeats || digest.block_count == 0 {
                continue;
            }
            before_last = (role == b'u' && digest.block_count > 1).then(|| hasher.clone());
            hasher.tag(b'M');
            hasher.tag(role);
            hasher.put(&digest.stream);
            self.facts
                .prefix_hashes
                .push(hasher.digest128().to_be_bytes());
            self.facts.kept_roles.push(role);
            if role == b'u' {
                first_user = first_user.or(digest.text.as_deref());
                last_user = Some(digest);
            }
        }
        let first_user = first_user.map(str::to_owned);
        if let Some(text) = first_user {
            self.facts.first_user_key = Some(xxh3_128(text.as_bytes()).to_be_bytes());
            self.facts.first_user_head = head(&text, HEAD_BYTES).to_owned();
            if text.contains(CONTINUATION_MARKER) {
                self.facts.continuation_text = Some(text);
            }
        }
        if let Some(last) = last_user {
            let text = last.text.as_deref().unwrap_or_default();
            self.facts.last_user_head = head(text, HEAD_BYTES).to_owned();
            if let Some(mut trimmed) = before_last {
                trimmed.tag(b'M');
                trimmed.tag(b'u');
                trimmed.put(&last.stream[..last.last_block_at]);
                self.facts.trimmed_hash = Some(trimmed.digest128().to_be_bytes());
            }
        }
        Ok(())
    }
}

/// A message's role as linking reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
    /// Claude Code's `role: "system"` entries (counted, never hashed).
    System,
    /// Not an object, or any other role.
    Other,
}

/// What linking reads of one message: a function of its exact bytes.
#[derive(Debug)]
struct MessageDigest {
    role: Role,
    /// The canonical stream of its normalised blocks (`digest.rs`), without the `M` + role prefix.
    stream: Vec<u8>,
    /// Where the last block's stream starts (the trimmed hash leaves that block out).
    last_block_at: usize,
    block_count: usize,
    /// The ids of its tool calls and of the results it carries (a repeated one drops the message).
    uses: Vec<String>,
    results: Vec<String>,
    /// A user message's texts joined by newlines (the first and last user heads, a continuation).
    text: Option<String>,
}

impl MessageDigest {
    fn read(raw: &str) -> MessageDigest {
        let mut digest = MessageDigest {
            role: Role::Other,
            stream: Vec::new(),
            last_block_at: 0,
            block_count: 0,
            uses: Vec::new(),
            results: Vec::new(),
            text: None,
        };
        let Ok(LMessage(Some((role, content)))) = serde_json::from_str::<LMessage<'_>>(raw) else {
            return digest;
        };
        digest.role = match role.as_deref() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("system") => Role::System,
            _ => Role::Other,
        };
        if matches!(digest.role, Role::System | Role::Other) {
            return digest;
        }
        let blocks = content_blocks(content);
        let (uses, results) = tool_ids(&blocks);
        digest.uses = uses.into_iter().map(Cow::into_owned).collect();
        digest.results = results.into_iter().map(Cow::into_owned).collect();
        for block in &blocks {
            digest.last_block_at = digest.stream.len();
            block.feed(&mut digest.stream);
        }
        digest.block_count = blocks.len();
        if digest.role == Role::User {
            digest.text = Some(joined_text(&blocks));
        }
        digest
    }

    /// Bytes it holds, for the memo's bound (with what the map entry, the allocations and the id
    /// strings' headers cost: so a flood of tiny messages is bounded too).
    fn size(&self) -> usize {
        let ids: usize = self
            .uses
            .iter()
            .chain(&self.results)
            .map(|id| id.len() + 32)
            .sum();
        self.stream.len() + self.text.as_ref().map_or(0, String::len) + ids + 256
    }
}

/// The digests of recently seen messages, by the key the split stores them by (the xxh3-128 of
/// their bytes). Claude Code re-sends the whole history every turn: all but the newest messages of a
/// request were read for an earlier one (parsed, unescaped, reminders stripped), which was a fifth of
/// the request analysis. Bounded in bytes (cleared when full); a message bigger than a part of the
/// bound is read each time.
static MESSAGES: LazyLock<Mutex<Memo>> = LazyLock::new(Mutex::default);
const MESSAGES_BYTES: usize = 4 << 20;
const MESSAGE_KEPT_BYTES: usize = 256 << 10;

#[derive(Default)]
struct Memo {
    digests: HashMap<Key, Arc<MessageDigest>>,
    bytes: usize,
}

/// The digest of each message, from the memo or read (and remembered).
fn message_digests(items: &[&str], keys: &[Key]) -> Vec<Arc<MessageDigest>> {
    let memo = || MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
    let mut known: Vec<Option<Arc<MessageDigest>>> = {
        let memo = memo();
        keys.iter().map(|k| memo.digests.get(k).cloned()).collect()
    };
    let mut read = Vec::new();
    for ((slot, raw), key) in known.iter_mut().zip(items).zip(keys) {
        if slot.is_none() {
            let digest = Arc::new(MessageDigest::read(raw));
            read.push((*key, digest.clone()));
            *slot = Some(digest);
        }
    }
    if !read.is_empty() {
        let mut memo = memo();
        for (key, digest) in read {
            let size = digest.size();
            if size > MESSAGE_KEPT_BYTES {
                continue;
            }
            if memo.bytes + size > MESSAGES_BYTES {
                memo.digests.clear();
                memo.bytes = 0;
            }
            if memo.digests.insert(key, digest).is_none() {
                memo.bytes += size;
            }
        }
    }
    known.into_iter().flatten().collect()
}

/// What a `system` value gives the linker: a function of its exact bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SystemFacts {
    block_count: usize,
    is_subagent: bool,
    hash: Option<Key>,
    head: String,
}

/// The facts of the system prompts seen last, by the key the split stores them by (the xxh3-128 of
/// their bytes). Claude Code sends a session's system prompt unchanged with each of its requests,
/// and reading it (~10 KB unescaped, reminders and the billing line taken out, hashed) was a third of
/// the request analysis. Cleared when full: a handful of prompts are in use at a time.
static SYSTEMS: LazyLock<Mutex<HashMap<Key, SystemFacts>>> = LazyLock::new(Mutex::default);
const SYSTEMS_KEPT: usize = 256;

impl Collector {
    fn system_facts(&mut self, raw: &str, key: &Key) {
        // Only the last `system` counts (the split keeps that one): an earlier one's facts are replaced.
        let systems = || SYSTEMS.lock().unwrap_or_else(|e| e.into_inner());
        let known = systems().get(key).cloned();
        let facts = known.unwrap_or_else(|| {
            let facts = read_system(raw);
            let mut systems = systems();
            if systems.len() >= SYSTEMS_KEPT {
                systems.clear();
            }
            systems.insert(*key, facts.clone());
            facts
        });
        self.facts.system_block_count = facts.block_count;
        self.facts.is_subagent = facts.is_subagent;
        self.facts.system_hash = facts.hash;
        self.facts.system_head = facts.head;
    }
}

/// The facts of a `system` value (the text blocks' texts without the billing line, normalised,
/// joined by newlines, hashed; its first bytes kept for classification).
fn read_system(raw: &str) -> SystemFacts {
    let mut facts = SystemFacts::default();
    let texts: Vec<Cow<'_, str>> = match serde_json::from_str::<Content<'_>>(raw) {
        Ok(Content::Text(s)) => vec![s],
        Ok(Content::Blocks(blocks)) => blocks
            .into_iter()
            .filter_map(|b| match b {
                LBlock::Block(fields) => fields.text,
                LBlock::Invalid => None,
            })
            .collect(),
        _ => return facts,
    };
    facts.block_count = texts.len();
    let mut kept: Vec<String> = Vec::new();
    for text in &texts {
        let mut lines = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let start = line.trim_start_matches([' ', '\t']);
            let is_billing = start.len() >= BILLING_LINE.len()
                && start.as_bytes()[..BILLING_LINE.len()]
                    .eq_ignore_ascii_case(BILLING_LINE.as_bytes());
            if is_billing {
                facts.is_subagent |= line.contains(SUBAGENT_FLAG);
                if line.ends_with('\n') {
                    lines.push('\n');
                }
            } else {
                lines.push_str(line);
            }
        }
        let normalized = normalize_text(&lines);
        if !normalized.is_empty() {
            kept.push(normalized.into_owned());
        }
    }
    let joined = kept.join("\n");
    if !joined.is_empty() {
        facts.hash = Some(xxh3_128(joined.as_bytes()).to_be_bytes());
        facts.head = head(&joined, HEAD_BYTES).to_owned();
    }
    facts
}

/// A normalised block.
enum Block<'a> {
    Text(Cow<'a, str>),
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Value,
    },
    ToolResult {
        id: Cow<'a, str>,
        is_error: bool,
        items: Vec<Block<'a>>,
    },
    Media {
        kind: Cow<'a, str>,
        media_type: Cow<'a, str>,
        key: Key,
    },
    Other(Cow<'a, str>),
}

impl Block<'_> {
    fn feed(&self, sink: &mut impl Sink) {
        match self {
            Block::Text(text) => {
                sink.tag(b'T');
                sink.lp(text.as_bytes());
            }
            Block::ToolUse { id, name, input } => {
                sink.tag(b'U');
                sink.lp(id.as_bytes());
                sink.lp(name.as_bytes());
                if id.is_empty() {
                    sink.json(input); // no id to tell two calls apart: the input has to
                }
            }
            Block::ToolResult {
                id,
                is_error,
                items,
            } => {
                sink.tag(b'R');
                sink.lp(id.as_bytes());
                sink.tag(if *is_error { b'E' } else { b'-' });
                for item in items {
                    item.feed(sink);
                }
                sink.tag(b'r');
            }
            Block::Media {
                kind,
                media_type,
                key,
            } => {
                sink.tag(b'I');
                sink.lp(kind.as_bytes());
                sink.lp(media_type.as_bytes());
                sink.lp(key);
            }
            Block::Other(kind) => {
                sink.tag(b'O');
                sink.lp(kind.as_bytes());
            }
        }
    }
}

/// A text block, or None when nothing is left after normalisation. The string the parser gave is
/// kept as it is when normalisation leaves it whole (most texts): no copy per block.
fn text_block(text: Cow<'_, str>) -> Option<Block<'_>> {
    let normalized = match text {
        Cow::Borrowed(s) => normalize_text(s),
        Cow::Owned(s) => match normalize_text(&s) {
            Cow::Borrowed(n) if n.len() == s.len() => Cow::Owned(s),
            other => Cow::Owned(other.into_owned()),
        },
    };
    (!normalized.is_empty()).then_some(Block::Text(normalized))
}

/// Normalised blocks of a message's `content` (a string is one text block).
fn content_blocks(content: Content<'_>) -> Vec<Block<'_>> {
    match content {
        Content::Absent => Vec::new(),
        Content::Text(text) => text_block(text).into_iter().collect(),
        Content::Blocks(blocks) => blocks.into_iter().filter_map(|b| block(b, true)).collect(),
        Content::Invalid => vec![Block::Other(Cow::Borrowed("invalid"))],
    }
}

fn block(raw: LBlock<'_>, top: bool) -> Option<Block<'_>> {
    let LBlock::Block(fields) = raw else {
        return Some(Block::Other(Cow::Borrowed("invalid")));
    };
    let Fields {
        kind,
        text,
        id,
        name,
        input,
        tool_use_id,
        content,
        is_error,
        source,
    } = *fields;
    let kind = kind.unwrap_or(Cow::Borrowed(""));
    match kind.as_ref() {
        "text" => text_block(text.unwrap_or_default()),
        "thinking" | "redacted_thinking" => None,
        "tool_use" | "server_tool_use" | "mcp_tool_use" if top => {
            let id = id.unwrap_or_default();
            // The input only counts for a call without an id (see digest.rs), so it is parsed only then.
            let input = match input {
                Some(raw) if id.is_empty() => {
                    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
                }
                _ => Value::Null,
            };
            Some(Block::ToolUse {
                id,
                name: name.unwrap_or_default(),
                input,
            })
        }
        "tool_result" if top => {
            let items = match content {
                None | Some(Content::Absent) => Vec::new(),
                Some(Content::Text(text)) => text_block(text).into_iter().collect(),
                Some(Content::Blocks(items)) => {
                    items.into_iter().filter_map(|i| block(i, false)).collect()
                }
                Some(Content::Invalid) => vec![Block::Other(Cow::Borrowed("invalid"))],
            };
            Some(Block::ToolResult {
                id: tool_use_id.unwrap_or_default(),
                is_error,
                items,
            })
        }
        "image" | "document" => {
            let (media_type, data) = match source {
                Some(s) => (
                    s.media_type.unwrap_or_default(),
                    s.data.or(s.url).or(s.file_id).unwrap_or_default(),
                ),
                None => (Cow::Borrowed(""), Cow::Borrowed("")),
            };
            Some(Block::Media {
                kind,
                media_type,
                key: xxh3_128(data.as_bytes()).to_be_bytes(),
            })
        }
        _ => Some(Block::Other(kind)),
    }
}

fn tool_ids<'a>(blocks: &[Block<'a>]) -> (Vec<Cow<'a, str>>, Vec<Cow<'a, str>>) {
    let mut uses = Vec::new();
    let mut results = Vec::new();
    for block in blocks {
        match block {
            Block::ToolUse { id, .. } if !id.is_empty() => uses.push(id.clone()),
            Block::ToolResult { id, .. } if !id.is_empty() => results.push(id.clone()),
            _ => {}
        }
    }
    (uses, results)
}

/// The text blocks of a message, joined by newlines (what a sub-agent prompt or a summary is read from).
fn joined_text(blocks: &[Block<'_>]) -> String {
    let texts: Vec<&str> = blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(t) => Some(t.as_ref()),
            _ => None,
        })
        .collect();
    texts.join("\n")
}

#[cfg(test)]
mod tests;
