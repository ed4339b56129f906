//! The storage rows: the column layout of `api_requests` and `content_blobs`, declared once, and the
//! encoding of a whole batch of exchanges into their two COPY BINARY payloads.
//!
//! [`REQUEST_COLUMNS`] is the single table of the `api_requests` columns: each entry has the column's
//! name, its type for the encoder and how its cell is read from an [`Exchange`]. The COPY column list,
//! the encoder's types (both given to Python by `nexus._core.request_columns`) and the row itself all
//! come from it, so no positional list is kept by hand anywhere else.
//!
//! The binding (`python/rows.rs`) reads each record's attributes once with the GIL held, filling an
//! [`Exchange`] that borrows the bodies, then calls [`encode_batch`] with the GIL released: the
//! encoding (every JSON cell made storable, every byte copied into the payload) is the heavy part.

use std::borrow::Cow;

use foldhash::{HashSet, HashSetExt};

use crate::pgcopy::{ColumnType, CopyEncoder, Value};
use crate::NexusError;

/// One cell, owned or borrowed from the record (a Python object kept alive by the binding).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Cell<'a> {
    #[default]
    Null,
    Bytes(Cow<'a, [u8]>),
    Text(Cow<'a, str>),
    Int(i64),
    /// An integer beyond the i64 range: only its sign matters, for clamping.
    BigInt {
        negative: bool,
    },
    Float(f64),
    Bool(bool),
    Array(Vec<Cell<'a>>),
}

impl Cell<'_> {
    /// The encoder's view of the cell.
    pub fn value(&self) -> Value<'_> {
        match self {
            Cell::Null => Value::Null,
            Cell::Bytes(b) => Value::Bytes(b),
            Cell::Text(s) => Value::Str(s),
            Cell::Int(v) => Value::Int(*v),
            Cell::BigInt { negative } => Value::BigInt {
                negative: *negative,
            },
            Cell::Float(v) => Value::Float(*v),
            Cell::Bool(v) => Value::Bool(*v),
            Cell::Array(items) => Value::Array(items.iter().map(Cell::value).collect()),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }
}

/// What one exchange stores, each fact already in its stored form (redacted, allow-listed, split).
/// Every field is NULL by default; `is_subtask` is false unless the linker said otherwise.
#[derive(Debug, Clone, Default)]
pub struct Exchange<'a> {
    pub request_id: Cell<'a>,
    pub timestamp: Cell<'a>,
    pub project_id: Cell<'a>,
    pub account_id: Cell<'a>,
    pub method: Cell<'a>,
    pub path: Cell<'a>,
    pub model: Cell<'a>,
    pub request_type: Cell<'a>,
    pub request_headers: Cell<'a>,
    pub envelope: Cell<'a>,
    pub envelope_raw: Cell<'a>,
    pub system_key: Cell<'a>,
    pub tools_key: Cell<'a>,
    /// An array of keys, or NULL (no messages): `message_count` is its length.
    pub message_keys: Cell<'a>,
    pub response_status: Cell<'a>,
    pub response_headers: Cell<'a>,
    pub response_body: Cell<'a>,
    pub response_streaming: Cell<'a>,
    pub input_tokens: Cell<'a>,
    pub output_tokens: Cell<'a>,
    pub cache_creation_input_tokens: Cell<'a>,
    pub cache_read_input_tokens: Cell<'a>,
    pub usage: Cell<'a>,
    pub duration_ms: Cell<'a>,
    pub first_byte_ms: Cell<'a>,
    pub tool_call_count: Cell<'a>,
    pub outcome: Cell<'a>,
    pub error: Cell<'a>,
    pub conversation_id: Cell<'a>,
    pub branch_id: Cell<'a>,
    pub parent_request_id: Cell<'a>,
    pub is_subtask: Cell<'a>,
    pub parent_task_request_id: Cell<'a>,
    pub current_message_hash: Cell<'a>,
    pub parent_message_hash: Cell<'a>,
    pub system_hash: Cell<'a>,
    pub session_id: Cell<'a>,
    pub agent_id: Cell<'a>,
    pub task_prompt_keys: Cell<'a>,
    pub attempts: Cell<'a>,
    /// Names of what was repaired before encoding (an array, or NULL); the encoder adds its own.
    pub storage_repairs: Cell<'a>,
    /// The text the row is found by (`search::search_text`), staged for PostgreSQL's `to_tsvector`
    /// and never stored as a column; NULL lets PostgreSQL extract it itself. Filled by
    /// [`Exchange::fill_search_text`] from the fields below.
    pub search_text: Cell<'a>,
    /// The request's last (up to four) message parts, newest first: what `search_text` reads.
    pub search_messages: Vec<&'a [u8]>,
    /// The title its conversation gets from it (`search::title`), staged for the conversation
    /// summary (read only while the conversation has none) and never stored as a column: NULL lets
    /// PostgreSQL's `nexus_title` decide, an empty text means no title. Filled with `search_text`,
    /// for a conversation's first request only (no parent).
    pub conversation_title: Cell<'a>,
    /// The request's first (up to twelve) message parts, in order: what `conversation_title` reads.
    pub title_messages: Vec<&'a [u8]>,
}

impl Exchange<'_> {
    /// Compute `search_text` from the last messages, the request type and the reply (called with
    /// the GIL released, just before encoding).
    pub fn fill_search_text(&mut self) {
        let request_type = match &self.request_type {
            Cell::Text(t) => Some(t.as_ref()),
            _ => None,
        };
        let reply = match &self.response_body {
            Cell::Bytes(b) => Some(b.as_ref()),
            Cell::Text(t) => Some(t.as_bytes()),
            _ => None,
        };
        self.search_text = crate::search::search_text(&self.search_messages, request_type, reply)
            .map_or(Cell::Null, |text| Cell::Text(text.into()));
        // only a conversation's first request gives it its title (13 us a Claude Code body, the first
        // message often carrying the client's context): any other row is staged without, and the
        // summary of a conversation still untitled then asks `nexus_title`, as before
        let opens = !self.conversation_id.is_null() && self.parent_request_id.is_null();
        self.conversation_title = match opens.then(|| crate::search::title(&self.title_messages)) {
            Some(Some(title)) => Cell::Text(title.unwrap_or_default().into()),
            _ => Cell::Null,
        };
    }
}

/// How a column's cell is read from an exchange.
pub type CellOf = for<'r> fn(&'r Exchange<'r>) -> Value<'r>;

/// One column of a table: its name, its type for the encoder, and how its cell is obtained.
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub cell: CellOf,
}

macro_rules! column {
    ($name:ident, $ty:ident) => {
        Column {
            name: stringify!($name),
            ty: ColumnType::$ty,
            cell: |e| e.$name.value(),
        }
    };
}

/// The `api_requests` columns written now, in their COPY order. `envelope_raw` and `response_raw`
/// keep the original bytes of the JSON cell just before them when it had to be repaired (or the
/// exact bytes of a body stored as text); `search_text` is staged only (PostgreSQL builds the row's
/// search vector from it); `storage_repairs` (last) names what was repaired in the row.
pub const REQUEST_COLUMNS: &[Column] = &[
    column!(request_id, Uuid),
    column!(timestamp, Timestamptz),
    column!(project_id, Text),
    column!(account_id, Text),
    column!(method, Text),
    column!(path, Text),
    column!(model, Text),
    column!(request_type, Text),
    column!(request_headers, Jsonb),
    column!(envelope, Jsonb),
    column!(envelope_raw, Raw),
    column!(system_key, Bytea),
    column!(tools_key, Bytea),
    column!(message_keys, ByteaArray),
    Column {
        name: "message_count",
        ty: ColumnType::Int4,
        cell: |e| match &e.message_keys {
            Cell::Array(keys) => Value::Int(keys.len() as i64),
            _ => Value::Null,
        },
    },
    column!(response_status, Int4),
    column!(response_headers, Jsonb),
    column!(response_body, Jsonb),
    Column {
        name: "response_raw",
        ty: ColumnType::Raw,
        cell: |_| Value::Null, // the encoder fills it when the body had to be repaired
    },
    column!(response_streaming, Bool),
    column!(input_tokens, Int8),
    column!(output_tokens, Int8),
    column!(cache_creation_input_tokens, Int8),
    column!(cache_read_input_tokens, Int8),
    column!(usage, Jsonb),
    column!(duration_ms, Int4),
    column!(first_byte_ms, Int4),
    column!(tool_call_count, Int4),
    column!(outcome, Text),
    column!(error, Text),
    column!(conversation_id, Uuid),
    column!(branch_id, Text),
    column!(parent_request_id, Uuid),
    column!(is_subtask, Bool),
    column!(parent_task_request_id, Uuid),
    column!(current_message_hash, Bytea),
    column!(parent_message_hash, Bytea),
    column!(system_hash, Bytea),
    column!(session_id, Text),
    column!(agent_id, Text),
    column!(task_prompt_keys, ByteaArray),
    column!(attempts, Int4),
    column!(search_text, Text),
    column!(conversation_title, Text),
    column!(storage_repairs, Repairs),
];

/// One content part new to the database: its key, its kind and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob<'a> {
    pub key: Cow<'a, [u8]>,
    pub kind: u8,
    pub body: &'a [u8],
}

/// The `content_blobs` columns (name, type), in their COPY order; `raw` is filled by the encoder.
pub const BLOB_COLUMNS: &[(&str, ColumnType)] = &[
    ("key", ColumnType::Bytea),
    ("kind", ColumnType::Int2),
    ("body", ColumnType::Jsonb),
    ("raw", ColumnType::Raw),
];

/// A row of a batch: built from an exchange, or given cell by cell in `REQUEST_COLUMNS` order (the
/// minimal row of a record that could not be built).
#[derive(Debug, Clone)]
pub enum Row<'a> {
    Built(Box<Exchange<'a>>),
    Cells(Vec<Cell<'a>>),
}

/// The two payloads of a batch, and the rows left out (their index and why).
pub struct Encoded {
    pub requests: Vec<u8>,
    pub blobs: Vec<u8>,
    pub lost: Vec<(usize, String)>,
}

/// The encoder's types of `REQUEST_COLUMNS`.
pub fn request_types() -> Vec<ColumnType> {
    REQUEST_COLUMNS.iter().map(|c| c.ty).collect()
}

/// Encode `rows` and `blobs` into their COPY payloads (`blobs` empty: no blob payload). A row the
/// encoder refuses (a value of the wrong type for its column: a programming error, never content)
/// is left out and reported, so one bad row never stops the batch.
pub fn encode_batch(rows: &mut [Row<'_>], blobs: &[Blob<'_>]) -> Result<Encoded, NexusError> {
    let mut encoder = BatchEncoder::new()?;
    for row in rows.iter_mut() {
        if let Row::Built(exchange) = row {
            exchange.fill_search_text();
        }
    }
    let rows: Vec<(usize, &Row<'_>)> = rows.iter().enumerate().collect();
    encoder.push(&rows, blobs, |_| false)?;
    Ok(encoder.finish())
}

/// A batch encoded a few rows at a time (the binding releases the GIL for each push), each new
/// content part once.
pub struct BatchEncoder {
    requests: CopyEncoder,
    blobs: CopyEncoder,
    blob_count: usize,
    seen: HashSet<Vec<u8>>,
    /// The keys of the parts encoded, in their order.
    pub new_keys: Vec<Vec<u8>>,
    lost: Vec<(usize, String)>,
}

impl BatchEncoder {
    pub fn new() -> Result<Self, NexusError> {
        Ok(BatchEncoder {
            requests: CopyEncoder::new(request_types())?,
            blobs: CopyEncoder::new(BLOB_COLUMNS.iter().map(|(_, t)| *t).collect())?,
            blob_count: 0,
            seen: HashSet::new(),
            new_keys: Vec::new(),
            lost: Vec::new(),
        })
    }

    /// Encode `rows` (each with its index in the batch, for the report of a row left out) and the
    /// parts of `parts` that are not `known` and not encoded before.
    pub fn push(
        &mut self,
        rows: &[(usize, &Row<'_>)],
        parts: &[Blob<'_>],
        known: impl Fn(&[u8]) -> bool,
    ) -> Result<(), NexusError> {
        let mut values: Vec<Value<'_>> = Vec::with_capacity(REQUEST_COLUMNS.len());
        for (i, row) in rows {
            values.clear();
            match row {
                Row::Built(exchange) => {
                    values.extend(REQUEST_COLUMNS.iter().map(|c| (c.cell)(exchange)))
                }
                Row::Cells(cells) => values.extend(cells.iter().map(Cell::value)),
            }
            if let Err(err) = self.requests.push_row(&values) {
                self.lost.push((*i, err.to_string()));
            }
        }
        for blob in parts {
            if known(&blob.key) || self.seen.contains(blob.key.as_ref()) {
                continue;
            }
            self.blobs.push_row(&[
                Value::Bytes(&blob.key),
                Value::Int(i64::from(blob.kind)),
                Value::Bytes(blob.body),
                Value::Null,
            ])?;
            self.seen.insert(blob.key.to_vec());
            self.new_keys.push(blob.key.to_vec());
            self.blob_count += 1;
        }
        Ok(())
    }

    pub fn finish(self) -> Encoded {
        Encoded {
            requests: self.requests.finish(),
            blobs: if self.blob_count == 0 {
                Vec::new()
            } else {
                self.blobs.finish()
            },
            lost: self.lost,
        }
    }
}

/// A JSON object of string pairs (the stored request and response headers), the later value of a
/// repeated name winning in the first one's place (as a Python dict built from them).
pub fn json_object(pairs: &[(&str, &str)]) -> Vec<u8> {
    if pairs.len() > DIRECT_PAIRS {
        return json_object_map(pairs);
    }
    // written as it goes (no map of owned strings per header): a name given again keeps its first
    // place and takes its last value, as `dict(pairs)` and the map below do
    let mut out = Vec::with_capacity(
        pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>()
            + 2,
    );
    out.push(b'{');
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(n, _)| n == name) {
            continue;
        }
        let value = pairs[i..]
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v);
        if out.len() > 1 {
            out.push(b',');
        }
        // writing a str into a Vec cannot fail
        let _ = serde_json::to_writer(&mut out, name);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value);
    }
    out.push(b'}');
    out
}

/// Up to this many pairs, `json_object` looks for a repeated name by scanning the pairs before it;
/// past it (a hostile upstream's thousands of headers), through a map.
const DIRECT_PAIRS: usize = 64;

fn json_object_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut map = serde_json::Map::with_capacity(pairs.len());
    for (name, value) in pairs {
        map.insert((*name).to_owned(), serde_json::Value::from(*value));
    }
    serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgcopy::{copy_row_field, copy_rows};

    fn exchange() -> Exchange<'static> {
        Exchange {
            request_id: Cell::Text("01a20ff9-a7fd-799f-8b74-7e2b1304e5de".into()),
            timestamp: Cell::Int(1_700_000_000_000_000),
            project_id: Cell::Text("p".into()),
            method: Cell::Text("POST".into()),
            path: Cell::Text("/v1/messages".into()),
            message_keys: Cell::Array(vec![Cell::Bytes(vec![1u8; 16].into())]),
            response_body: Cell::Bytes(b"{\"a\":\"\\u0000\"}".as_slice().into()),
            response_streaming: Cell::Bool(false),
            is_subtask: Cell::Bool(false),
            outcome: Cell::Text("completed".into()),
            ..Exchange::default()
        }
    }

    fn index(name: &str) -> usize {
        REQUEST_COLUMNS.iter().position(|c| c.name == name).unwrap()
    }

    #[test]
    fn the_layout_is_valid_and_its_names_unique() {
        crate::pgcopy::check_layout(&request_types()).unwrap();
        let mut names: Vec<_> = REQUEST_COLUMNS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REQUEST_COLUMNS.len());
        assert_eq!(REQUEST_COLUMNS.len(), 45);
    }

    #[test]
    fn a_built_row_has_its_derived_cells() {
        let out = encode_batch(&mut [Row::Built(Box::new(exchange()))], &[]).unwrap();
        assert!(out.lost.is_empty() && out.blobs.is_empty());
        let rows = copy_rows(&out.requests).unwrap();
        assert_eq!(rows.len(), 1);
        let count = copy_row_field(rows[0], index("message_count")).unwrap();
        assert_eq!(count, Some(1i32.to_be_bytes().as_slice()));
        // the repaired body keeps its original bytes beside it, and the repair is named
        let raw = copy_row_field(rows[0], index("response_raw")).unwrap();
        assert_eq!(raw, Some(b"{\"a\":\"\\u0000\"}".as_slice()));
        assert!(copy_row_field(rows[0], index("storage_repairs"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_row_the_encoder_refuses_is_left_out_and_the_rest_kept() {
        let mut bad = exchange();
        bad.request_id = Cell::Text("not a uuid".into());
        let mut rows = [
            Row::Built(Box::new(exchange())),
            Row::Built(Box::new(bad)),
            Row::Built(Box::new(exchange())),
        ];
        let blobs = [Blob {
            key: vec![2u8; 16].into(),
            kind: 1,
            body: b"{}",
        }];
        let out = encode_batch(&mut rows, &blobs).unwrap();
        assert_eq!(out.lost.len(), 1);
        assert_eq!(out.lost[0].0, 1);
        assert_eq!(copy_rows(&out.requests).unwrap().len(), 2);
        assert_eq!(copy_rows(&out.blobs).unwrap().len(), 1);
    }

    proptest::proptest! {
        /// Headers written as they go are the object a map of them gives (a repeated name keeps its
        /// first place and its last value), escapes and all.
        #[test]
        fn json_object_is_the_map_s(pairs in proptest::collection::vec(
            (proptest::sample::select(vec!["a", "b", "x-api-key", "é\"\n", ""]), ".{0,6}"), 0..80)) {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            proptest::prop_assert_eq!(json_object(&pairs), json_object_map(&pairs));
        }
    }
}
