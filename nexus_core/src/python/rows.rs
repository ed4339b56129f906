//! Binding for the storage row builder: a batch of `ExchangeRecord`s in, its two COPY payloads out,
//! in one call.
//!
//! With the GIL held, each record's attributes are read once and turned into an [`Exchange`] that
//! borrows the bodies (no copy); the few steps that are Python's own are called back, each kept
//! behind one function (`nexus.storage.records`): reading usage from a JSON reply the request path
//! did not read (`reply`), the rare values that need client-key redaction (`redact`) or the Python
//! header path (`headers`), and the minimal row of a record that cannot be built (`minimal`). Then
//! the GIL is released for the heavy part: encoding every row and every new content part
//! (`rows::encode_batch`).

use std::borrow::Cow;
use std::collections::VecDeque;

use foldhash::HashMap;
use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::conversation::PyRequestAnalysis;
use super::reply::PyReply;
use crate::body;
use crate::reply::Count;
use crate::rows::{self, BatchEncoder, Blob, Cell, Exchange, Row, REQUEST_COLUMNS};
use crate::safe;

/// Request headers kept with a stored request: an allow-list, so no credential can ever be stored.
pub const STORED_REQUEST_HEADERS: &[&str] = &[
    "user-agent",
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "x-app",
    "x-claude-code-session-id",
    "x-claude-code-agent-id",
    "x-forwarded-for",
    "x-real-ip",
    "train-id",
    "msl-project-id",
    "x-train-account",
    "msl-account",
];
const SESSION_HEADER: &str = "x-claude-code-session-id";
const AGENT_HEADER: &str = "x-claude-code-agent-id";
use crate::conversation::session::MAX_SESSION;

/// The Python steps of the row builder (see the module doc).
struct Hooks<'py> {
    reply: Bound<'py, PyAny>,
    redact: Bound<'py, PyAny>,
    headers: Bound<'py, PyAny>,
    json: Bound<'py, PyAny>,
    minimal: Bound<'py, PyAny>,
}

/// Why a record gave no full row: a Python exception while building it (it gets the minimal row),
/// or a value no column can take (it is left out, as the encoder would leave it).
enum Failure {
    Build(PyErr),
    Lost(String),
}

impl From<PyErr> for Failure {
    fn from(err: PyErr) -> Self {
        Failure::Build(err)
    }
}

/// A cell borrowing from `obj` where it can. A str with lone surrogates has no UTF-8 form: it is
/// kept as its `surrogatepass` bytes, which the encoder turns into visible `\udXXX`.
fn cell<'a>(obj: &'a Bound<'_, PyAny>) -> Result<Cell<'a>, Failure> {
    if obj.is_none() {
        return Ok(Cell::Null);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cell::Bytes(Cow::Borrowed(b.as_bytes())));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(match s.to_str() {
            Ok(text) => Cell::Text(Cow::Borrowed(text)),
            Err(_) => Cell::Bytes(Cow::Owned(surrogatepass(obj)?)),
        });
    }
    owned_scalar(obj)
}

/// A cell owning its data (for values Python made just now).
fn owned(obj: &Bound<'_, PyAny>) -> Result<Cell<'static>, Failure> {
    if obj.is_none() {
        return Ok(Cell::Null);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cell::Bytes(Cow::Owned(b.as_bytes().to_vec())));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(match s.to_str() {
            Ok(text) => Cell::Text(Cow::Owned(text.to_owned())),
            Err(_) => Cell::Bytes(Cow::Owned(surrogatepass(obj)?)),
        });
    }
    owned_scalar(obj)
}

fn surrogatepass(obj: &Bound<'_, PyAny>) -> Result<Vec<u8>, Failure> {
    let py = obj.py();
    let bytes = obj.call_method1(intern!(py, "encode"), ("utf-8", "surrogatepass"))?;
    Ok(bytes
        .cast::<PyBytes>()
        .map_err(PyErr::from)?
        .as_bytes()
        .to_vec())
}

fn owned_scalar(obj: &Bound<'_, PyAny>) -> Result<Cell<'static>, Failure> {
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Cell::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        return Ok(match obj.extract::<i64>() {
            Ok(v) => Cell::Int(v),
            Err(_) => Cell::BigInt {
                negative: obj.lt(0)?,
            },
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Cell::Float(f.value()));
    }
    if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let items = obj
            .try_iter()?
            .map(|item| owned(&item?))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Cell::Array(items));
    }
    let kind = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(Failure::Lost(format!("unsupported value of type {kind}")))
}

/// A token count as the Python int `Reply` gives for it would be stored: past i64, only its sign.
fn count_cell(count: Option<Count>) -> Cell<'static> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2**63
    match count {
        None => Cell::Null,
        Some(Count::Int(u)) => i64::try_from(u).map_or(Cell::BigInt { negative: false }, Cell::Int),
        // whole, so exact wherever it is within i64
        Some(Count::Whole(f)) if (-LIMIT..LIMIT).contains(&f) => Cell::Int(f as i64),
        Some(Count::Whole(f)) => Cell::BigInt { negative: f < 0.0 },
    }
}

/// Whether `redact_client_keys` could change `text`: it holds a `%` (judged decoded) or `cnp_` in
/// any case (no non-ASCII character lowercases to `c`, `n`, `p` or `_`).
fn may_hold_client_key(text: &str) -> bool {
    text.contains('%')
        || text
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"cnp_"))
}

/// `value` with client keys redacted: Python's `redact_client_keys` only when it could change it.
fn redacted<'a>(value: &'a Bound<'_, PyAny>, hooks: &Hooks<'_>) -> Result<Cell<'a>, Failure> {
    if let Ok(s) = value.cast::<PyString>() {
        if let Ok(text) = s.to_str() {
            if !may_hold_client_key(text) {
                return Ok(Cell::Text(Cow::Borrowed(text)));
            }
        }
    }
    owned(&hooks.redact.call1((value,))?)
}

/// The pairs of `pairs` (a list of 2-tuples of str, all UTF-8), or None for anything else.
fn str_pairs<'a>(
    pairs: &'a [(Bound<'_, PyAny>, Bound<'_, PyAny>)],
) -> Option<Vec<(&'a str, &'a str)>> {
    pairs
        .iter()
        .map(|(k, v)| {
            Some((
                k.cast::<PyString>().ok()?.to_str().ok()?,
                v.cast::<PyString>().ok()?.to_str().ok()?,
            ))
        })
        .collect()
}

fn pairs_of<'py>(obj: &Bound<'py, PyAny>) -> Option<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let list = obj.cast::<PyList>().ok()?;
    list.iter()
        .map(|item| {
            let pair = item.cast::<PyTuple>().ok()?;
            if pair.len() != 2 {
                return None;
            }
            Some((pair.get_item(0).ok()?, pair.get_item(1).ok()?))
        })
        .collect()
}

/// The stored request headers (allow-listed, client keys redacted) as JSON, the session header's
/// value (cut to `MAX_SESSION` characters) and the agent id. Rust does the common case; headers that
/// are not plain str pairs, or a kept value that may hold a client key, go to Python's `headers`.
fn request_headers(
    obj: &Bound<'_, PyAny>,
    hooks: &Hooks<'_>,
) -> Result<(Cell<'static>, Cell<'static>, Cell<'static>), Failure> {
    let fetched = pairs_of(obj);
    let fast = fetched.as_deref().and_then(str_pairs).and_then(|pairs| {
        let kept: Vec<(&str, &str)> = pairs
            .into_iter()
            .filter(|(k, _)| STORED_REQUEST_HEADERS.contains(k))
            .collect();
        (!kept.iter().any(|(_, v)| may_hold_client_key(v))).then_some(kept)
    });
    let Some(kept) = fast else {
        let result = hooks.headers.call1((obj,))?;
        let (json, session, agent): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) =
            result.extract()?;
        return Ok((owned(&json)?, owned(&session)?, owned(&agent)?));
    };
    let last = |name: &str| kept.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let session = match last(SESSION_HEADER) {
        Some(v) if !v.is_empty() => Cell::Text(Cow::Owned(v.chars().take(MAX_SESSION).collect())),
        _ => Cell::Null,
    };
    let agent = last(AGENT_HEADER).map_or(Cell::Null, |v| Cell::Text(Cow::Owned(v.to_owned())));
    Ok((
        Cell::Bytes(Cow::Owned(crate::rows::json_object(&kept))),
        session,
        agent,
    ))
}

/// `dict(pairs)` as JSON; pairs that are not plain str go to Python's `headers_json`.
fn response_headers(
    obj: &Bound<'_, PyAny>,
    json: &Bound<'_, PyAny>,
) -> Result<Cell<'static>, Failure> {
    if obj.is_none() {
        return Ok(Cell::Null);
    }
    if let Some(pairs) = pairs_of(obj).as_deref().and_then(str_pairs) {
        return Ok(Cell::Bytes(Cow::Owned(crate::rows::json_object(&pairs))));
    }
    owned(&json.call1((obj,))?)
}

/// The `model` of a split body's envelope, when it is a string.
fn envelope_model(envelope: &[u8]) -> Cell<'static> {
    let parsed = serde_json::from_slice::<serde_json::Value>(envelope)
        .ok()
        .or_else(|| {
            let mut repaired = Vec::with_capacity(envelope.len());
            safe::safe_json(envelope, &mut repaired);
            serde_json::from_slice(&repaired).ok()
        });
    match parsed
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(|m| m.as_str())
    {
        Some(model) => Cell::Text(Cow::Owned(model.to_owned())),
        None => Cell::Null,
    }
}

/// Everything read from one record, kept alive while its cells borrow from it.
struct Fetched<'py> {
    record: Bound<'py, PyAny>,
    /// The attributes in `ATTRS` order, or the error reading one gave.
    attrs: PyResult<Vec<Bound<'py, PyAny>>>,
}

/// The record attributes read, in this order (`A::*` index them).
const ATTRS: &[&str] = &[
    "request_id",
    "started_at_us",
    "project_id",
    "account_id",
    "method",
    "path",
    "request_headers",
    "request_body",
    "response_status",
    "response_headers",
    "response_body",
    "streamed",
    "usage_json",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "tool_call_count",
    "duration_ms",
    "first_byte_ms",
    "outcome",
    "error",
    "analysis",
    "link",
    "request_type",
    "task_prompt_keys",
    "attempts",
    "repairs",
];

#[allow(non_snake_case)]
mod A {
    pub const REQUEST_ID: usize = 0;
    pub const STARTED_AT_US: usize = 1;
    pub const PROJECT_ID: usize = 2;
    pub const ACCOUNT_ID: usize = 3;
    pub const METHOD: usize = 4;
    pub const PATH: usize = 5;
    pub const REQUEST_HEADERS: usize = 6;
    pub const REQUEST_BODY: usize = 7;
    pub const RESPONSE_STATUS: usize = 8;
    pub const RESPONSE_HEADERS: usize = 9;
    pub const RESPONSE_BODY: usize = 10;
    pub const STREAMED: usize = 11;
    pub const USAGE_JSON: usize = 12;
    pub const INPUT_TOKENS: usize = 13;
    pub const OUTPUT_TOKENS: usize = 14;
    pub const CACHE_CREATION: usize = 15;
    pub const CACHE_READ: usize = 16;
    pub const TOOL_CALL_COUNT: usize = 17;
    pub const DURATION_MS: usize = 18;
    pub const FIRST_BYTE_MS: usize = 19;
    pub const OUTCOME: usize = 20;
    pub const ERROR: usize = 21;
    pub const ANALYSIS: usize = 22;
    pub const LINK: usize = 23;
    pub const REQUEST_TYPE: usize = 24;
    pub const TASK_PROMPT_KEYS: usize = 25;
    pub const ATTEMPTS: usize = 26;
    pub const REPAIRS: usize = 27;
}

/// The link columns, read from a `Link` (`None`: not linked).
const LINK_ATTRS: &[&str] = &[
    "conversation_id",
    "branch_id",
    "parent_request_id",
    "is_subtask",
    "parent_task_request_id",
    "current_hash",
    "parent_hash",
];

/// The content keys known to be in the database, as the builder is given them: the writer's own
/// `KnownKeys` (checked with the GIL released) or any Python container (checked with it held).
enum Known<'py> {
    Rust(Bound<'py, KnownKeys>),
    Py(Bound<'py, PyAny>),
}

/// One record's exchange, and the parts it adds (committed only when the whole row is built).
fn build<'a>(
    fetched: &'a Fetched<'_>,
    a: &'a [Bound<'_, PyAny>],
    known: &Known<'_>,
    hooks: &Hooks<'_>,
) -> Result<(Exchange<'a>, Vec<Blob<'a>>), Failure> {
    let py = fetched.record.py();
    // the record's parts: those a Python container of known keys holds are left out here, the rest
    // after the GIL is released (`KnownKeys`, and each part once in the batch)
    let mut blobs: Vec<Blob<'a>> = Vec::new();
    let is_new = |key: &[u8]| -> PyResult<bool> {
        match known {
            Known::Rust(_) => Ok(true),
            Known::Py(container) => Ok(!container.contains(PyBytes::new(py, key))?),
        }
    };
    let (request_headers, session_header, agent_id) =
        request_headers(&a[A::REQUEST_HEADERS], hooks)?;
    let mut flags: Vec<Cell<'a>> = Vec::new();
    if a[A::REPAIRS].is_truthy()? {
        for item in a[A::REPAIRS].try_iter()? {
            flags.push(owned(&item?)?);
        }
    }
    let mut ex = Exchange::default();
    // first: whether the row opens a conversation (no parent) decides if its title is read
    link_cells(&mut ex, &a[A::LINK])?;
    let opens = ex.parent_request_id.is_null();
    let analysis = a[A::ANALYSIS].cast::<PyRequestAnalysis>().ok();
    if !a[A::ANALYSIS].is_none() && analysis.is_none() {
        return Err(Failure::Build(pyo3::exceptions::PyTypeError::new_err(
            "analysis is not a RequestAnalysis",
        )));
    }
    let body = &a[A::REQUEST_BODY];
    if let (Some(analysis), false) = (analysis, body.is_none()) {
        let an = analysis.get();
        let data = body.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes();
        ex.envelope = Cell::Bytes(Cow::Borrowed(an.envelope.bind(py).as_bytes()));
        ex.system_key = an
            .system_key
            .as_ref()
            .map_or(Cell::Null, |k| Cell::Bytes(Cow::Borrowed(k.as_slice())));
        ex.tools_key = an
            .tools_key
            .as_ref()
            .map_or(Cell::Null, |k| Cell::Bytes(Cow::Borrowed(k.as_slice())));
        ex.message_keys = match &an.message_key_list {
            Some(keys) => Cell::Array(
                keys.iter()
                    .map(|k| Cell::Bytes(Cow::Borrowed(k.as_slice())))
                    .collect(),
            ),
            None => Cell::Null,
        };
        ex.model = an
            .model
            .as_deref()
            .map_or(Cell::Null, |m| Cell::Text(Cow::Borrowed(m)));
        // as Python slices: a span past the body is cut to it (never from the request path)
        let span = |start: usize, end: usize| {
            let end = end.min(data.len());
            &data[start.min(end)..end]
        };
        for (key, kind, start, end) in &an.spans {
            if is_new(key)? {
                blobs.push(Blob {
                    key: Cow::Borrowed(key.as_slice()),
                    kind: *kind,
                    body: span(*start, *end),
                });
            }
        }
        if let Some(keys) = &an.message_key_list {
            let part = |key: &body::Key| {
                an.spans
                    .iter()
                    .find(|(k, ..)| k.as_slice() == key.as_slice())
                    .map(|(_, _, start, end)| span(*start, *end))
            };
            ex.search_messages = last_messages(keys, part);
            if opens {
                ex.title_messages = first_messages(keys, part);
            }
        }
    } else if body.is_truthy()? {
        let data = body.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes();
        match body::split_body(data) {
            Err(_) => {
                // not JSON: shown as text, and kept exactly as it came
                let text = String::from_utf8_lossy(data);
                let mut envelope = serde_json::Map::with_capacity(1);
                envelope.insert(
                    "unparsed_body".into(),
                    serde_json::Value::from(text.as_ref()),
                );
                ex.envelope = Cell::Bytes(Cow::Owned(
                    serde_json::to_vec(&envelope).unwrap_or_default(),
                ));
                ex.envelope_raw = Cell::Bytes(Cow::Borrowed(data));
                flags.push(Cell::Text(Cow::Borrowed("request_not_json")));
            }
            Ok(split) => {
                ex.model = envelope_model(&split.envelope);
                ex.envelope = Cell::Bytes(Cow::Owned(split.envelope));
                let key_cell = |k: &body::Key| Cell::Bytes(Cow::Owned(k.to_vec()));
                ex.system_key = split.system_key.as_ref().map_or(Cell::Null, key_cell);
                ex.tools_key = split.tools_key.as_ref().map_or(Cell::Null, key_cell);
                ex.message_keys = split.message_keys.as_ref().map_or(Cell::Null, |keys| {
                    Cell::Array(keys.iter().map(key_cell).collect())
                });
                if let Some(keys) = &split.message_keys {
                    let part = |key: &body::Key| {
                        split
                            .parts
                            .iter()
                            .find(|(k, ..)| k == key)
                            .map(|(.., part)| *part)
                    };
                    ex.search_messages = last_messages(keys, part);
                    if opens {
                        ex.title_messages = first_messages(keys, part);
                    }
                }
                for (key, kind, part) in split.parts {
                    if is_new(&key)? {
                        blobs.push(Blob {
                            key: Cow::Owned(key.to_vec()),
                            kind: kind as u8,
                            body: part,
                        });
                    }
                }
            }
        }
    }
    ex.usage = cell(&a[A::USAGE_JSON])?;
    ex.input_tokens = cell(&a[A::INPUT_TOKENS])?;
    ex.output_tokens = cell(&a[A::OUTPUT_TOKENS])?;
    ex.cache_creation_input_tokens = cell(&a[A::CACHE_CREATION])?;
    ex.cache_read_input_tokens = cell(&a[A::CACHE_READ])?;
    ex.tool_call_count = cell(&a[A::TOOL_CALL_COUNT])?;
    let response_body = &a[A::RESPONSE_BODY];
    let reply = if !a[A::STREAMED].is_truthy()? && response_body.is_truthy()? {
        fetched.record.getattr(intern!(py, "reply")).ok()
    } else {
        None
    };
    if let Some(read) = reply.as_ref().and_then(|r| r.cast::<PyReply>().ok()) {
        // the reply the request path read (in Rust): its facts as `records.reply_facts` gives them
        let read = &read.get().inner;
        if let Some(usage) = &read.usage_json {
            ex.usage = Cell::Bytes(Cow::Owned(usage.clone()));
            ex.input_tokens = count_cell(read.input_tokens);
            ex.output_tokens = count_cell(read.output_tokens);
            ex.cache_creation_input_tokens = count_cell(read.cache_creation_input_tokens);
            ex.cache_read_input_tokens = count_cell(read.cache_read_input_tokens);
            ex.tool_call_count = read
                .tool_call_count
                .map_or(Cell::Null, |n| count_cell(Some(Count::Int(n))));
            let flag = Cell::Text(Cow::Borrowed("usage_not_integer"));
            if read.usage_not_integer && !flags.contains(&flag) {
                flags.push(flag);
            }
        }
    } else if reply.is_some() {
        // the reply's own facts (usage, tool calls): one separate step, `records.reply_facts`
        let facts = hooks.reply.call1((&fetched.record,))?;
        if !facts.is_none() {
            let facts = facts.cast::<PyTuple>().map_err(PyErr::from)?;
            let cells = facts
                .iter()
                .map(|c| owned(&c))
                .collect::<Result<Vec<_>, _>>()?;
            let Ok::<[Cell<'static>; 7], _>([usage, input, output, creation, read, tools, more]) =
                cells.try_into()
            else {
                return Err(Failure::Build(pyo3::exceptions::PyValueError::new_err(
                    "reply_facts gives 7 values",
                )));
            };
            (ex.usage, ex.input_tokens, ex.output_tokens) = (usage, input, output);
            (ex.cache_creation_input_tokens, ex.cache_read_input_tokens) = (creation, read);
            ex.tool_call_count = tools;
            if let Cell::Array(more) = more {
                for flag in more {
                    if !flags.contains(&flag) {
                        flags.push(flag);
                    }
                }
            }
        }
    }
    ex.request_id = cell(&a[A::REQUEST_ID])?;
    ex.timestamp = cell(&a[A::STARTED_AT_US])?;
    ex.project_id = cell(&a[A::PROJECT_ID])?;
    ex.account_id = cell(&a[A::ACCOUNT_ID])?;
    ex.method = cell(&a[A::METHOD])?;
    ex.path = redacted(&a[A::PATH], hooks)?;
    ex.request_type = cell(&a[A::REQUEST_TYPE])?;
    ex.request_headers = request_headers;
    ex.response_status = cell(&a[A::RESPONSE_STATUS])?;
    ex.response_headers = response_headers(&a[A::RESPONSE_HEADERS], &hooks.json)?;
    ex.response_body = if response_body.is_truthy()? {
        cell(response_body)?
    } else {
        Cell::Null
    };
    ex.response_streaming = cell(&a[A::STREAMED])?;
    ex.duration_ms = cell(&a[A::DURATION_MS])?;
    ex.first_byte_ms = cell(&a[A::FIRST_BYTE_MS])?;
    ex.outcome = cell(&a[A::OUTCOME])?;
    ex.error = if a[A::ERROR].is_truthy()? {
        redacted(&a[A::ERROR], hooks)? // may quote a path or a header
    } else {
        Cell::Null
    };
    ex.system_hash = match analysis {
        Some(an) => an.get().system_hash.as_ref().map_or(Cell::Null, |h| {
            Cell::Bytes(Cow::Borrowed(h.bind(py).as_bytes()))
        }),
        None => Cell::Null,
    };
    ex.session_id = match (&session_header, analysis) {
        // the session the analysis read in the envelope's metadata (no header was sent)
        (Cell::Null, Some(an)) => an
            .get()
            .envelope_session
            .as_deref()
            .map_or(Cell::Null, |s| Cell::Text(Cow::Borrowed(s))),
        _ => session_header,
    };
    ex.agent_id = agent_id;
    ex.task_prompt_keys = if a[A::TASK_PROMPT_KEYS].is_truthy()? {
        cell(&a[A::TASK_PROMPT_KEYS])?
    } else {
        Cell::Null
    };
    ex.attempts = cell(&a[A::ATTEMPTS])?;
    ex.storage_repairs = if flags.is_empty() {
        Cell::Null
    } else {
        Cell::Array(flags)
    };
    Ok((ex, blobs))
}

/// The link's cells (conversation, branch, parent, sub-task, hashes) into `ex`; none for no link.
fn link_cells(ex: &mut Exchange<'_>, link: &Bound<'_, PyAny>) -> Result<(), Failure> {
    if link.is_none() {
        ex.is_subtask = Cell::Bool(false);
        return Ok(());
    }
    let py = link.py();
    let mut cells = Vec::with_capacity(LINK_ATTRS.len());
    for name in LINK_ATTRS {
        // interned: the type's attribute cache is keyed by the name object (a new str each time
        // missed it and walked the class hierarchy for every attribute of every row)
        cells.push(owned(&link.getattr(PyString::intern(py, name))?)?);
    }
    let [conversation, branch, parent, subtask, task, current, parent_hash]: [Cell<'static>; 7] =
        cells.try_into().unwrap_or_default();
    ex.conversation_id = conversation;
    ex.branch_id = branch;
    ex.parent_request_id = parent;
    ex.is_subtask = subtask;
    ex.parent_task_request_id = task;
    ex.current_message_hash = current;
    ex.parent_message_hash = parent_hash;
    Ok(())
}

/// Records read and encoded per GIL hold (see `build_request_batch`).
const CHUNK: usize = 16;

/// The minimal row of a record whose row could not be built (Python's `minimal`), or why not even
/// that.
fn minimal_row(
    f: &Fetched<'_>,
    err: &PyErr,
    hooks: &Hooks<'_>,
) -> Result<Vec<Cell<'static>>, String> {
    let py = f.record.py();
    let cells = hooks
        .minimal
        .call1((&f.record, err.value(py)))
        .map_err(Failure::Build)
        .and_then(|row| {
            row.try_iter()?
                .map(|c| owned(&c?))
                .collect::<Result<Vec<_>, _>>()
        });
    match cells {
        Ok(cells) if cells.len() == REQUEST_COLUMNS.len() => Ok(cells),
        Ok(cells) => Err(format!("a minimal row of {} cells", cells.len())),
        Err(Failure::Lost(msg)) => Err(msg),
        Err(Failure::Build(e)) => Err(format!("the minimal row failed: {e}")),
    }
}

/// The bytes of the last (up to four) messages, newest first, as the search text reads them (a key
/// without its part is skipped, as PostgreSQL's join skips it).
fn last_messages<'b>(
    keys: &[body::Key],
    part: impl Fn(&body::Key) -> Option<&'b [u8]>,
) -> Vec<&'b [u8]> {
    keys.iter().rev().take(4).filter_map(part).collect()
}

/// The bytes of the first (up to twelve) messages, in order, as the title reads them (a key without
/// its part is skipped, as PostgreSQL's join skips it).
fn first_messages<'b>(
    keys: &[body::Key],
    part: impl Fn(&body::Key) -> Option<&'b [u8]>,
) -> Vec<&'b [u8]> {
    keys.iter().take(12).filter_map(part).collect()
}

/// Build and encode the rows of `records` (see `nexus._core.build_request_batch`).
#[pyfunction]
#[pyo3(signature = (records, known, /, *, reply, redact, headers, json, minimal, conversations = None, pending = None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn build_request_batch<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyAny>,
    known: &Bound<'py, PyAny>,
    reply: Bound<'py, PyAny>,
    redact: Bound<'py, PyAny>,
    headers: Bound<'py, PyAny>,
    json: Bound<'py, PyAny>,
    minimal: Bound<'py, PyAny>,
    conversations: Option<Vec<Option<String>>>,
    pending: Option<Bound<'py, KnownKeys>>,
) -> PyResult<(
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Vec<Bound<'py, PyBytes>>,
    Vec<(usize, String)>,
)> {
    let hooks = Hooks {
        reply,
        redact,
        headers,
        json,
        minimal,
    };
    let known = match known.cast::<KnownKeys>() {
        Ok(keys) => Known::Rust(keys.clone()),
        Err(_) => Known::Py(known.clone()),
    };
    let rust_known = match &known {
        Known::Rust(keys) => Some(keys.get()),
        Known::Py(_) => None,
    };
    // parts another batch still in memory carries (the writer's batches encoded early): left out too
    let pending_keys = pending.as_ref().map(|p| p.get());
    let records = records.try_iter()?.collect::<PyResult<Vec<_>>>()?;
    let mut encoder = BatchEncoder::new()?;
    let mut lost: Vec<(usize, String)> = Vec::new();
    // interned once: Python's attribute cache is keyed by the name object, so a new str per read
    // missed it and walked the record's class hierarchy for each of ~30 attributes of every row
    let names: Vec<Bound<'py, PyString>> = ATTRS.iter().map(|n| PyString::intern(py, n)).collect();
    // A few records at a time: the GIL is held only while they are read, then released while they
    // are encoded, so a thread waiting for it (the event loop serving requests) gets it within one
    // chunk's reading rather than the whole batch's.
    for (c, chunk) in records.chunks(CHUNK).enumerate() {
        let fetched: Vec<Fetched<'_>> = chunk
            .iter()
            .map(|record| Fetched {
                record: record.clone(),
                attrs: names.iter().map(|name| record.getattr(name)).collect(),
            })
            .collect();
        let mut rows: Vec<(usize, Row<'_>)> = Vec::with_capacity(fetched.len());
        let mut parts: Vec<Blob<'_>> = Vec::new();
        for (j, f) in fetched.iter().enumerate() {
            let i = c * CHUNK + j;
            let outcome = match &f.attrs {
                Ok(attrs) => build(f, attrs, &known, &hooks),
                Err(err) => Err(Failure::Build(err.clone_ref(py))),
            };
            match outcome {
                Ok((mut exchange, blobs)) => {
                    if let Some(Some(conversation)) = conversations.as_ref().and_then(|c| c.get(i))
                    {
                        if exchange.conversation_id.is_null() {
                            exchange.conversation_id = Cell::Text(Cow::Owned(conversation.clone()));
                        }
                    }
                    parts.extend(blobs);
                    rows.push((i, Row::Built(Box::new(exchange))));
                }
                Err(Failure::Lost(msg)) => lost.push((i, msg)),
                Err(Failure::Build(err)) => match minimal_row(f, &err, &hooks) {
                    Ok(cells) => rows.push((i, Row::Cells(cells))),
                    Err(msg) => lost.push((i, msg)),
                },
            }
        }
        py.detach(|| {
            for (_, row) in rows.iter_mut() {
                if let Row::Built(exchange) = row {
                    exchange.fill_search_text();
                }
            }
            let rows: Vec<(usize, &Row<'_>)> = rows.iter().map(|(i, r)| (*i, r)).collect();
            encoder.push(&rows, &parts, |key| {
                rust_known.is_some_and(|known| known.contains(key))
                    || pending_keys.is_some_and(|pending| pending.contains(key))
            })
        })?;
    }
    let keys = encoder
        .new_keys
        .iter()
        .map(|k| PyBytes::new(py, k))
        .collect();
    let encoded = encoder.finish();
    lost.extend(encoded.lost);
    lost.sort_by_key(|(i, _)| *i);
    Ok((
        PyBytes::new(py, &encoded.requests),
        PyBytes::new(py, &encoded.blobs),
        keys,
        lost,
    ))
}

/// The `api_requests` columns written now, as (name, type) in their COPY order.
#[pyfunction]
pub fn request_columns() -> Vec<(&'static str, &'static str)> {
    REQUEST_COLUMNS
        .iter()
        .map(|c| (c.name, c.ty.name()))
        .collect()
}

/// The `content_blobs` columns, as (name, type) in their COPY order.
#[pyfunction]
pub fn blob_columns() -> Vec<(&'static str, &'static str)> {
    rows::BLOB_COLUMNS
        .iter()
        .map(|(n, t)| (*n, t.name()))
        .collect()
}

/// A bounded set of content keys known to be in the database, oldest forgotten first (the writer's
/// recent keys). Kept in Rust so the row builder checks a batch's parts with the GIL released.
#[pyclass(module = "nexus._core", name = "KnownKeys", frozen)]
pub struct KnownKeys {
    capacity: usize,
    inner: Mutex<KnownInner>,
}

#[derive(Default)]
struct KnownInner {
    /// Each key and when it was last added.
    stamps: HashMap<Vec<u8>, u64>,
    /// Keys in the order they were added (an entry is stale when the key was added again since).
    order: VecDeque<(Vec<u8>, u64)>,
    next: u64,
}

impl KnownKeys {
    pub fn contains(&self, key: &[u8]) -> bool {
        self.lock().stamps.contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KnownInner> {
        // a panic while holding it cannot leave the set inconsistent in a harmful way: a key too many
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl KnownKeys {
    #[new]
    #[pyo3(signature = (capacity, /))]
    fn new(capacity: usize) -> Self {
        KnownKeys {
            capacity,
            inner: Mutex::new(KnownInner::default()),
        }
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn __len__(&self) -> usize {
        self.lock().stamps.len()
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key.cast::<PyBytes>()
            .is_ok_and(|k| self.contains(k.as_bytes()))
    }

    /// The content parts of a COPY payload (`content_blobs` rows) still to send: without the rows
    /// whose key this set holds and without a key's repeats (`pgcopy::unsent_parts`), and the keys
    /// kept (to remember once the batch is committed). The payload itself when every row stays.
    #[pyo3(signature = (payload, /))]
    fn unsent<'py>(
        &self,
        payload: &Bound<'py, PyBytes>,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<Bound<'py, PyBytes>>)> {
        let py = payload.py();
        let data = payload.as_bytes();
        let (out, keys) = py.detach(|| {
            let inner = self.lock();
            crate::pgcopy::unsent_parts(data, |key| inner.stamps.contains_key(key))
        })?;
        let keys = keys.into_iter().map(|k| PyBytes::new(py, k)).collect();
        let out = match out {
            Some(bytes) => PyBytes::new(py, &bytes),
            None => payload.clone(),
        };
        Ok((out, keys))
    }

    /// Forget every key.
    fn clear(&self) {
        let mut inner = self.lock();
        inner.stamps.clear();
        inner.order.clear();
    }

    /// Remember `keys` as stored (the newest), forgetting the oldest past the capacity.
    #[pyo3(signature = (keys, /))]
    fn add_all(&self, keys: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut inner = self.lock();
        for key in keys.try_iter()? {
            let key = key?;
            let key = key
                .cast::<PyBytes>()
                .map_err(PyErr::from)?
                .as_bytes()
                .to_vec();
            inner.next += 1;
            let stamp = inner.next;
            inner.stamps.insert(key.clone(), stamp);
            inner.order.push_back((key, stamp));
        }
        while inner.stamps.len() > self.capacity {
            let Some((key, stamp)) = inner.order.pop_front() else {
                break;
            };
            if inner.stamps.get(&key) == Some(&stamp) {
                inner.stamps.remove(&key);
            }
        }
        // stale entries (keys added again) are dropped once they outnumber the live ones
        if inner.order.len() > 2 * inner.stamps.len() + 64 {
            let KnownInner { stamps, order, .. } = &mut *inner;
            order.retain(|(key, stamp)| stamps.get(key) == Some(stamp));
        }
        Ok(())
    }
}
