//! PostgreSQL `COPY ... FROM STDIN (FORMAT binary)` encoding of a whole batch of rows.
//!
//! The writer sends one payload per batch, so the Python/Rust boundary is crossed once per batch
//! and the server parses no text. Format: the 11-byte signature, flags and header-extension
//! length, then per row an `i16` field count and per field an `i32` length (`-1` for NULL) and the
//! value in the type's binary send format, then the `-1` trailer.
//!
//! The encoder is safe by construction: one bad record must not stop all storage, so content
//! never fails a row. Every `jsonb`/`json` cell goes through [`safe::safe_json`], every `text`
//! cell through [`safe::safe_text`], integers out of their column's range are clamped, and each
//! row can report what was repaired (a `repairs` column) and keep the original bytes of a repaired
//! cell (a `raw` column, which also takes bytes from Python, written as they are). Only
//! programming errors raise: a Python value of the wrong type for its column, a row of the wrong
//! length. For whatever PostgreSQL still refuses, the writer bisects a failed batch with
//! [`copy_rows`] and [`copy_payload`] and stores the culprit through [`copy_row_last_resort`].

use crate::safe::{self, Repairs};
use crate::NexusError;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// The signature, no flags, no header extension: the only header the encoder writes.
const HEADER_LEN: usize = 19;
/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01 (UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const TEXT_OID: i32 = 25;

/// The column types the encoder knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Jsonb,
    Json,
    Text,
    Uuid,
    Timestamptz,
    Int2,
    Int4,
    Int8,
    Float8,
    Bool,
    Bytea,
    TextArray,
    ByteaArray,
    UuidArray,
    Int8Array,
    /// A `text[]` the encoder fills: the names Python passes (a list of str, or None), then the
    /// names of the row's repairs; NULL when both are empty. Must be the last column, because it
    /// reports the repairs of every cell before it.
    Repairs,
    /// A `bytea` beside the cell just before it (a jsonb, json or text column). Given None, the
    /// encoder fills it: that cell's original bytes when it was repaired, else NULL. Given bytes,
    /// they are written as they are (so the writer keeps the exact bytes of a body it stores
    /// as text in the cell before).
    Raw,
}

impl ColumnType {
    pub fn parse(name: &str) -> Result<Self, NexusError> {
        Ok(match name {
            "jsonb" => Self::Jsonb,
            "json" => Self::Json,
            "text" | "varchar" => Self::Text,
            "uuid" => Self::Uuid,
            "timestamptz" => Self::Timestamptz,
            "int2" | "smallint" => Self::Int2,
            "int4" | "int" | "integer" => Self::Int4,
            "int8" | "bigint" => Self::Int8,
            "float8" => Self::Float8,
            "bool" | "boolean" => Self::Bool,
            "bytea" => Self::Bytea,
            "text[]" | "varchar[]" => Self::TextArray,
            "bytea[]" => Self::ByteaArray,
            "uuid[]" => Self::UuidArray,
            "int8[]" | "bigint[]" => Self::Int8Array,
            "repairs" => Self::Repairs,
            "raw" => Self::Raw,
            other => {
                return Err(NexusError::InvalidArgument(format!(
                    "unsupported COPY column type {other:?}"
                )))
            }
        })
    }

    /// Parse a list of type names and check where the pseudo columns stand.
    pub fn parse_all<S: AsRef<str>>(names: &[S]) -> Result<Vec<Self>, NexusError> {
        let types = names
            .iter()
            .map(|n| Self::parse(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        check_layout(&types)?;
        Ok(types)
    }

    /// The element type of an array column (`repairs` is a `text[]` on the wire).
    pub fn element(self) -> Option<ColumnType> {
        match self {
            Self::TextArray | Self::Repairs => Some(Self::Text),
            Self::ByteaArray => Some(Self::Bytea),
            Self::UuidArray => Some(Self::Uuid),
            Self::Int8Array => Some(Self::Int8),
            _ => None,
        }
    }

    fn oid(self) -> i32 {
        match self {
            Self::Text => TEXT_OID,
            Self::Bytea => 17,
            Self::Uuid => 2950,
            Self::Int8 => 20,
            _ => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonb => "jsonb",
            Self::Json => "json",
            Self::Text => "text",
            Self::Uuid => "uuid",
            Self::Timestamptz => "timestamptz",
            Self::Int2 => "int2",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
            Self::Float8 => "float8",
            Self::Bool => "bool",
            Self::Bytea => "bytea",
            Self::TextArray => "text[]",
            Self::ByteaArray => "bytea[]",
            Self::UuidArray => "uuid[]",
            Self::Int8Array => "int8[]",
            Self::Repairs => "repairs",
            Self::Raw => "raw",
        }
    }
}

/// The pseudo columns' places: `repairs` last (so at most one), `raw` right after a column it can
/// keep the original of.
pub fn check_layout(types: &[ColumnType]) -> Result<(), NexusError> {
    for (i, ty) in types.iter().enumerate() {
        match ty {
            ColumnType::Repairs if i + 1 != types.len() => {
                return Err(NexusError::InvalidArgument(
                    "a repairs column must be the last column (and there is at most one)".into(),
                ))
            }
            ColumnType::Raw
                if !matches!(
                    i.checked_sub(1).map(|p| types[p]),
                    Some(ColumnType::Jsonb | ColumnType::Json | ColumnType::Text)
                ) =>
            {
                return Err(NexusError::InvalidArgument(
                    "a raw column must follow a jsonb, json or text column".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// One cell, borrowing from its source where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bytes(&'a [u8]),
    Str(&'a str),
    Int(i64),
    /// An integer beyond the i64 range (a Python int); only its sign matters, for clamping.
    BigInt {
        negative: bool,
    },
    Float(f64),
    Bool(bool),
    Array(Vec<Value<'a>>),
}

impl<'a> Value<'a> {
    /// The bytes a jsonb/json/text cell was given, as a `raw` column keeps them.
    fn original(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bytes(b) => Some(b),
            Value::Str(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// Parse a canonical 36-character UUID (or 32 hex digits) into its 16 bytes.
pub fn parse_uuid(text: &str) -> Result<[u8; 16], NexusError> {
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for c in text.bytes() {
        if c == b'-' {
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => {
                return Err(NexusError::InvalidArgument(format!(
                    "invalid uuid {text:?}"
                )))
            }
        };
        if nibbles >= 32 {
            return Err(NexusError::InvalidArgument(format!(
                "invalid uuid {text:?}"
            )));
        }
        out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
        nibbles += 1;
    }
    if nibbles != 32 {
        return Err(NexusError::InvalidArgument(format!(
            "invalid uuid {text:?}"
        )));
    }
    Ok(out)
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..11].copy_from_slice(SIGNATURE);
    h // flags and header extension length: 0
}

/// Builds one COPY BINARY payload.
pub struct CopyEncoder {
    types: Vec<ColumnType>,
    buf: Vec<u8>,
    rows: usize,
}

impl CopyEncoder {
    /// An encoder for columns of `types`; refuses a misplaced `repairs` or `raw` column.
    pub fn new(types: Vec<ColumnType>) -> Result<Self, NexusError> {
        check_layout(&types)?;
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&header());
        Ok(CopyEncoder {
            types,
            buf,
            rows: 0,
        })
    }

    pub fn types(&self) -> &[ColumnType] {
        &self.types
    }

    /// Append one row and return what was repaired in it. Content never fails: an error is a
    /// programming error (a value of the wrong type, a row of the wrong length), and the row is
    /// then left out, so the payload stays well formed.
    pub fn push_row(&mut self, row: &[Value<'_>]) -> Result<Repairs, NexusError> {
        if row.len() != self.types.len() {
            return Err(NexusError::InvalidArgument(format!(
                "row {} has {} values for {} columns",
                self.rows,
                row.len(),
                self.types.len()
            )));
        }
        let start = self.buf.len();
        self.buf
            .extend_from_slice(&(self.types.len() as i16).to_be_bytes());
        let mut repairs = Repairs::NONE;
        // The original bytes of the previous cell when it was repaired, for a `raw` column.
        let mut changed: Option<&[u8]> = None;
        for (col, value) in row.iter().enumerate() {
            let ty = self.types[col];
            let result = match ty {
                ColumnType::Repairs => write_repairs(&mut self.buf, value, repairs),
                ColumnType::Raw => write_raw(&mut self.buf, value, changed.take()),
                _ => write_field(&mut self.buf, ty, value).map(|cell| {
                    changed = if cell.is_empty() {
                        None
                    } else {
                        value.original()
                    };
                    repairs |= cell;
                }),
            };
            if let Err(msg) = result {
                self.buf.truncate(start);
                return Err(NexusError::InvalidArgument(format!(
                    "row {}, column {} ({}): {msg}",
                    self.rows,
                    col,
                    ty.name()
                )));
            }
        }
        self.rows += 1;
        Ok(repairs)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Write a length-prefixed field whose body `body` writes.
fn with_length<T>(
    buf: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<T, String>,
) -> Result<T, String> {
    let at = buf.len();
    buf.extend_from_slice(&0i32.to_be_bytes());
    let result = body(buf)?;
    let len = buf.len() - at - 4;
    let len = i32::try_from(len).map_err(|_| "value larger than 2 GiB".to_string())?;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(result)
}

fn write_null(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(-1i32).to_be_bytes());
}

fn write_bytes(buf: &mut Vec<u8>, data: &[u8]) -> Result<(), String> {
    with_length(buf, |buf| {
        buf.extend_from_slice(data);
        Ok(())
    })
}

fn write_field(buf: &mut Vec<u8>, ty: ColumnType, value: &Value<'_>) -> Result<Repairs, String> {
    if matches!(value, Value::Null) {
        write_null(buf);
        return Ok(Repairs::NONE);
    }
    with_length(buf, |buf| write_value(buf, ty, value))
}

/// Write `value` clamped to the range of an integer column; `beyond` says it was already clamped
/// to the i64 range (a Python int past it).
fn write_int(buf: &mut Vec<u8>, ty: ColumnType, value: i64, beyond: bool) -> Repairs {
    let (min, max) = match ty {
        ColumnType::Int2 => (i16::MIN.into(), i16::MAX.into()),
        ColumnType::Int4 => (i32::MIN.into(), i32::MAX.into()),
        _ => (i64::MIN, i64::MAX),
    };
    let v = value.clamp(min, max);
    match ty {
        ColumnType::Int2 => buf.extend_from_slice(&(v as i16).to_be_bytes()),
        ColumnType::Int4 => buf.extend_from_slice(&(v as i32).to_be_bytes()),
        _ => buf.extend_from_slice(&v.to_be_bytes()),
    }
    if beyond || v != value {
        Repairs::INT_CLAMPED
    } else {
        Repairs::NONE
    }
}

fn wrong(ty: ColumnType, value: &Value<'_>) -> String {
    let got = match value {
        Value::Null => "null",
        Value::Bytes(_) => "bytes",
        Value::Str(_) => "str",
        Value::Int(_) | Value::BigInt { .. } => "int",
        Value::Float(_) => "float",
        Value::Bool(_) => "bool",
        Value::Array(_) => "list",
    };
    format!("a {got} value does not fit a {} column", ty.name())
}

fn write_value(buf: &mut Vec<u8>, ty: ColumnType, value: &Value<'_>) -> Result<Repairs, String> {
    let repairs = match (ty, value) {
        (ColumnType::Jsonb, Value::Bytes(_) | Value::Str(_)) => {
            buf.push(1); // jsonb binary format version
            safe::safe_json(value.original().unwrap_or_default(), buf)
        }
        (ColumnType::Json, Value::Bytes(_) | Value::Str(_)) => {
            safe::safe_json(value.original().unwrap_or_default(), buf)
        }
        // A str is valid UTF-8 already: only a NUL needs `safe_text`.
        (ColumnType::Text, Value::Str(s)) if memchr::memchr(0, s.as_bytes()).is_none() => {
            buf.extend_from_slice(s.as_bytes());
            Repairs::NONE
        }
        (ColumnType::Text, Value::Bytes(_) | Value::Str(_)) => {
            safe::safe_text(value.original().unwrap_or_default(), buf)
        }
        (ColumnType::Bytea, Value::Bytes(b)) => {
            buf.extend_from_slice(b);
            Repairs::NONE
        }
        (ColumnType::Uuid, Value::Str(s)) => {
            buf.extend_from_slice(&parse_uuid(s).map_err(|e| e.to_string())?);
            Repairs::NONE
        }
        (ColumnType::Uuid, Value::Bytes(b)) if b.len() == 16 => {
            buf.extend_from_slice(b);
            Repairs::NONE
        }
        (ColumnType::Timestamptz, Value::Int(us)) => {
            let pg = us
                .checked_sub(PG_EPOCH_OFFSET_US)
                .ok_or_else(|| format!("timestamp {us} out of range"))?;
            buf.extend_from_slice(&pg.to_be_bytes());
            Repairs::NONE
        }
        (ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8, Value::Int(v)) => {
            write_int(buf, ty, *v, false)
        }
        (ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8, Value::BigInt { negative }) => {
            write_int(buf, ty, if *negative { i64::MIN } else { i64::MAX }, true)
        }
        // Elsewhere an int past i64 is refused, as it always was.
        (_, Value::BigInt { .. }) => return Err("integer out of the int8 range".into()),
        (ColumnType::Float8, Value::Float(v)) => {
            buf.extend_from_slice(&v.to_be_bytes());
            Repairs::NONE
        }
        (ColumnType::Float8, Value::Int(v)) => {
            buf.extend_from_slice(&(*v as f64).to_be_bytes());
            Repairs::NONE
        }
        (ColumnType::Bool, Value::Bool(v)) => {
            buf.push(u8::from(*v));
            Repairs::NONE
        }
        (_, Value::Array(items)) if ty.element().is_some() => {
            let elem = ty.element().unwrap_or(ColumnType::Text);
            let has_null = items.iter().any(|v| matches!(v, Value::Null));
            write_array_header(buf, elem, items.len(), has_null)?;
            let mut repairs = Repairs::NONE;
            for (i, item) in items.iter().enumerate() {
                repairs |= write_field(buf, elem, item).map_err(|e| format!("element {i}: {e}"))?;
            }
            repairs
        }
        _ => return Err(wrong(ty, value)),
    };
    Ok(repairs)
}

/// A one-dimensional array's header (or an empty array's), before its `len` elements.
fn write_array_header(
    buf: &mut Vec<u8>,
    elem: ColumnType,
    len: usize,
    has_null: bool,
) -> Result<(), String> {
    if len == 0 {
        buf.extend_from_slice(&0i32.to_be_bytes()); // no dimensions
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&elem.oid().to_be_bytes());
        return Ok(());
    }
    let len = i32::try_from(len).map_err(|_| "array too long".to_string())?;
    buf.extend_from_slice(&1i32.to_be_bytes());
    buf.extend_from_slice(&i32::from(has_null).to_be_bytes());
    buf.extend_from_slice(&elem.oid().to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    Ok(())
}

/// A whole `text[]` field of non-NULL names, or NULL when there are none.
fn write_names(buf: &mut Vec<u8>, names: &[&[u8]]) -> Result<(), String> {
    if names.is_empty() {
        write_null(buf);
        return Ok(());
    }
    with_length(buf, |buf| {
        write_array_header(buf, ColumnType::Text, names.len(), false)?;
        names.iter().try_for_each(|name| write_bytes(buf, name))
    })
}

/// The `repairs` column: the names Python gave, then the row's repair names, each once.
fn write_repairs(buf: &mut Vec<u8>, value: &Value<'_>, repairs: Repairs) -> Result<(), String> {
    let given: &[Value<'_>] = match value {
        Value::Null => &[],
        Value::Array(items) => items,
        _ => return Err(wrong(ColumnType::Repairs, value)),
    };
    if given.is_empty() && repairs.is_empty() {
        write_null(buf);
        return Ok(());
    }
    let mut texts = Vec::with_capacity(given.len());
    for item in given {
        let bytes = match item {
            Value::Str(_) | Value::Bytes(_) => item.original().unwrap_or_default(),
            _ => {
                return Err(format!(
                    "repair names must be str, not {}",
                    wrong(ColumnType::Text, item)
                ))
            }
        };
        let mut text = Vec::with_capacity(bytes.len());
        safe::safe_text(bytes, &mut text);
        texts.push(text);
    }
    let mut names: Vec<&[u8]> = Vec::with_capacity(texts.len() + 2);
    for name in texts
        .iter()
        .map(Vec::as_slice)
        .chain(repairs.names().map(|n| -> &[u8] { n.as_bytes() }))
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    write_names(buf, &names)
}

/// The `raw` column: the bytes Python gave, as they are; for None, the previous cell's original
/// bytes when it was repaired, else NULL.
fn write_raw(buf: &mut Vec<u8>, value: &Value<'_>, changed: Option<&[u8]>) -> Result<(), String> {
    match (value, changed) {
        (Value::Bytes(given), _) => write_bytes(buf, given),
        (Value::Null, Some(original)) => write_bytes(buf, original),
        (Value::Null, None) => {
            write_null(buf);
            Ok(())
        }
        _ => Err("a raw column takes bytes or None (None: the encoder fills it)".into()),
    }
}

// --- the writer's error path ---------------------------------------------------------------------

/// A bounds-checked reader over COPY BINARY data: malformed input is an error, never a panic.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NexusError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| malformed(format!("truncated at byte {}", self.pos)))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, NexusError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, NexusError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One field: `None` for NULL.
    fn field(&mut self) -> Result<Option<&'a [u8]>, NexusError> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len)
                    .map_err(|_| malformed(format!("negative field length {len}")))?;
                self.take(len).map(Some)
            }
        }
    }

    fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }
}

fn malformed(what: String) -> NexusError {
    NexusError::InvalidArgument(format!("malformed COPY data: {what}"))
}

/// Split a COPY BINARY payload (as the encoder writes it: 19-byte header with no flags and no
/// extension, tuples, the `-1` trailer, nothing after) into its tuples, each with its field count.
pub fn copy_rows(payload: &[u8]) -> Result<Vec<&[u8]>, NexusError> {
    if payload.get(..HEADER_LEN) != Some(&header()[..]) {
        return Err(malformed("not a COPY BINARY header without flags".into()));
    }
    let mut reader = Reader {
        data: payload,
        pos: HEADER_LEN,
    };
    let mut rows = Vec::new();
    loop {
        let start = reader.pos;
        let count = reader.i16()?;
        if count == -1 {
            if !reader.at_end() {
                return Err(malformed("bytes after the trailer".into()));
            }
            return Ok(rows);
        }
        if count < 0 {
            return Err(malformed(format!("field count {count}")));
        }
        for _ in 0..count {
            reader.field()?;
        }
        rows.push(&payload[start..reader.pos]);
    }
}

/// A payload of the header, `rows` (tuples as [`copy_rows`] returns them) and the trailer.
pub fn copy_payload<'a>(rows: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = header().to_vec();
    for row in rows {
        out.extend_from_slice(row);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// One payload holding the rows of every payload of `payloads` (empty ones hold none), in order:
/// batches encoded apart leave in one COPY without their rows becoming objects of their own.
pub fn merge_payloads<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, NexusError> {
    let mut rows = Vec::new();
    for payload in payloads {
        if !payload.is_empty() {
            rows.extend(copy_rows(payload)?);
        }
    }
    Ok(copy_payload(rows))
}

/// `unsent_parts`'s answer: the payload to send (`None`: the one given, unchanged) and its keys.
pub type UnsentParts<'a> = (Option<Vec<u8>>, Vec<&'a [u8]>);

/// What a batch of content parts still has to send: the rows of a COPY BINARY payload whose first
/// field (the part's key) `known` does not hold, each key once (its first row), and those keys.
///
/// The writer's batches are encoded before they are sent (ahead of a writer that fell behind, or
/// spooled while the database was away), so by the time one is sent the database may hold many of
/// its parts (sent by the batches before it), and batches merged into one transaction carry the
/// same parts again. PostgreSQL parses every staged part as jsonb before `ON CONFLICT` skips it: at
/// saturation four fifths of the parts sent were such repeats. `None` when every row stays (the
/// payload is sent as it is).
pub fn unsent_parts(
    payload: &[u8],
    mut known: impl FnMut(&[u8]) -> bool,
) -> Result<UnsentParts<'_>, NexusError> {
    let rows = copy_rows(payload)?;
    let mut seen: foldhash::HashSet<&[u8]> = foldhash::HashSetExt::with_capacity(rows.len());
    let mut kept: Vec<&[u8]> = Vec::with_capacity(rows.len());
    let mut keys: Vec<&[u8]> = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut reader = Reader { data: row, pos: 0 };
        let count = reader.i16()?;
        let key = if count > 0 { reader.field()? } else { None };
        match key {
            // a row without a key is not ours to judge: PostgreSQL refuses it as before
            None => kept.push(row),
            Some(key) => {
                if seen.insert(key) && !known(key) {
                    kept.push(row);
                    keys.push(key);
                }
            }
        }
    }
    if kept.len() == rows.len() {
        return Ok((None, keys));
    }
    Ok((Some(copy_payload(kept)), keys))
}

/// The fields of one tuple (`None` for NULL); the tuple must be exactly its fields.
pub fn copy_row_fields(row: &[u8]) -> Result<Vec<Option<&[u8]>>, NexusError> {
    let mut reader = Reader { data: row, pos: 0 };
    let count = reader.i16()?;
    let count = usize::try_from(count).map_err(|_| malformed(format!("field count {count}")))?;
    let fields = (0..count)
        .map(|_| reader.field())
        .collect::<Result<Vec<_>, _>>()?;
    if !reader.at_end() {
        return Err(malformed("bytes after the last field".into()));
    }
    Ok(fields)
}

/// One field of a tuple: its bytes, or `None` for NULL.
pub fn copy_row_field(row: &[u8], index: usize) -> Result<Option<&[u8]>, NexusError> {
    let fields = copy_row_fields(row)?;
    let count = fields.len();
    fields.get(index).copied().ok_or_else(|| {
        NexusError::InvalidArgument(format!("field {index} of a row of {count} fields"))
    })
}

/// The elements of a one-dimensional `text[]` field, as the encoder writes them.
fn read_names(data: &[u8]) -> Result<Vec<Option<&[u8]>>, NexusError> {
    let mut reader = Reader { data, pos: 0 };
    let dims = reader.i32()?;
    let _has_null = reader.i32()?;
    let oid = reader.i32()?;
    if oid != TEXT_OID {
        return Err(malformed(format!("repairs array of type oid {oid}")));
    }
    let names = match dims {
        0 => Vec::new(),
        1 => {
            let len = reader.i32()?;
            let _lower_bound = reader.i32()?;
            let len = usize::try_from(len).map_err(|_| malformed(format!("array length {len}")))?;
            // Each element needs at least its 4-byte length: bounds the loop by the input size.
            if len > data.len() / 4 {
                return Err(malformed(format!("array length {len}")));
            }
            (0..len)
                .map(|_| reader.field())
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => return Err(malformed(format!("repairs array of {dims} dimensions"))),
    };
    if !reader.at_end() {
        return Err(malformed("bytes after the repairs array".into()));
    }
    Ok(names)
}

/// The last resort for a tuple PostgreSQL refused even after the encoder's repairs: every
/// jsonb/json field becomes one JSON string of its text ([`safe::json_as_text`]), every text field
/// goes through [`safe::safe_text`] again, other fields are copied; a `repairs` field gains
/// `stored_as_text`, and a `raw` field that was NULL keeps the original of the cell now changed.
/// `types` are the encoder's types for the tuple (pseudo columns included).
pub fn copy_row_last_resort(types: &[ColumnType], row: &[u8]) -> Result<Vec<u8>, NexusError> {
    check_layout(types)?;
    let fields = copy_row_fields(row)?;
    if fields.len() != types.len() {
        return Err(NexusError::InvalidArgument(format!(
            "a row of {} fields for {} columns",
            fields.len(),
            types.len()
        )));
    }
    let mut out = Vec::with_capacity(row.len() + row.len() / 4 + 32);
    out.extend_from_slice(&row[..2]);
    let mut changed: Option<&[u8]> = None;
    for (&ty, &field) in types.iter().zip(&fields) {
        let written = match (ty, field) {
            (ColumnType::Repairs, field) => {
                let mut names: Vec<&[u8]> = match field {
                    Some(data) => read_names(data)?.into_iter().flatten().collect(),
                    None => Vec::new(),
                };
                let stored = "stored_as_text".as_bytes();
                if !names.contains(&stored) {
                    names.push(stored);
                }
                write_names(&mut out, &names)
            }
            (ColumnType::Raw, None) => match changed.take() {
                Some(original) => write_bytes(&mut out, original),
                None => {
                    write_null(&mut out);
                    Ok(())
                }
            },
            (_, None) => {
                changed = None;
                write_null(&mut out);
                Ok(())
            }
            (ColumnType::Jsonb, Some(data)) => {
                let json = match data.split_first() {
                    Some((1, json)) => json,
                    _ => return Err(malformed("a jsonb field without version 1".into())),
                };
                changed = Some(json);
                with_length(&mut out, |buf| {
                    buf.push(1);
                    Ok(safe::json_as_text(json, buf))
                })
                .map(drop)
            }
            (ColumnType::Json, Some(data)) => {
                changed = Some(data);
                with_length(&mut out, |buf| Ok(safe::json_as_text(data, buf))).map(drop)
            }
            (ColumnType::Text, Some(data)) => {
                with_length(&mut out, |buf| Ok(safe::safe_text(data, buf))).map(|repairs| {
                    changed = (!repairs.is_empty()).then_some(data);
                })
            }
            (_, Some(data)) => {
                changed = None;
                write_bytes(&mut out, data)
            }
        };
        written.map_err(NexusError::InvalidArgument)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(types: &[ColumnType], rows: &[Vec<Value<'_>>]) -> Vec<u8> {
        let mut enc = CopyEncoder::new(types.to_vec()).unwrap();
        for row in rows {
            enc.push_row(row).unwrap();
        }
        enc.finish()
    }

    fn parts(rows: &[(&[u8], &str)]) -> Vec<u8> {
        let rows: Vec<Vec<Value<'_>>> = rows
            .iter()
            .map(|(k, body)| vec![Value::Bytes(k), Value::Bytes(body.as_bytes())])
            .collect();
        encode(&[ColumnType::Bytea, ColumnType::Jsonb], &rows)
    }

    #[test]
    fn unsent_parts_drop_known_and_repeated_keys() {
        let payload = parts(&[
            (b"a", "1"),
            (b"b", "2"),
            (b"a", "3"),
            (b"c", "4"),
            (b"b", "5"),
        ]);
        let (out, keys) = unsent_parts(&payload, |k| k == b"c").unwrap();
        assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(out.unwrap(), parts(&[(b"a", "1"), (b"b", "2")]));
    }

    #[test]
    fn unsent_parts_keep_the_payload_when_nothing_goes() {
        let payload = parts(&[(b"a", "1"), (b"b", "2")]);
        let (out, keys) = unsent_parts(&payload, |_| false).unwrap();
        assert!(out.is_none());
        assert_eq!(keys.len(), 2);
        let (out, keys) = unsent_parts(&payload, |_| true).unwrap();
        assert_eq!(out.unwrap(), parts(&[]));
        assert!(keys.is_empty());
    }

    #[test]
    fn unsent_parts_refuse_malformed_payloads() {
        let payload = parts(&[(b"a", "1")]);
        assert!(unsent_parts(&payload[..payload.len() - 3], |_| false).is_err());
        assert!(unsent_parts(b"not copy", |_| false).is_err());
    }

    #[test]
    fn header_and_trailer() {
        let out = encode(&[ColumnType::Int4], &[]);
        assert_eq!(&out[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&out[11..19], &[0u8; 8]);
        assert_eq!(&out[19..], &[0xff, 0xff]);
    }

    #[test]
    fn scalar_fields() {
        let out = encode(
            &[
                ColumnType::Int4,
                ColumnType::Text,
                ColumnType::Jsonb,
                ColumnType::Bool,
                ColumnType::Int2,
                ColumnType::Int8,
            ],
            &[vec![
                Value::Int(7),
                Value::Str("é"),
                Value::Bytes(b"{}"),
                Value::Null,
                Value::Int(-2),
                Value::Int(i64::MIN),
            ]],
        );
        let row = &out[19..out.len() - 2];
        let mut expected = vec![0, 6];
        expected.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 7]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9]);
        expected.extend_from_slice(&[0, 0, 0, 3, 1, b'{', b'}']);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xfe]);
        expected.extend_from_slice(&[0, 0, 0, 8, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row, expected.as_slice());
    }

    #[test]
    fn timestamps_count_from_2000() {
        let out = encode(
            &[ColumnType::Timestamptz],
            &[vec![Value::Int(PG_EPOCH_OFFSET_US + 1)]],
        );
        assert_eq!(&out[21..33], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn uuid_from_text_and_bytes() {
        let id = "01a20ff9-a7fd-799f-8b74-7e2b1304e5de";
        let a = encode(&[ColumnType::Uuid], &[vec![Value::Str(id)]]);
        let raw = parse_uuid(id).unwrap();
        let b = encode(&[ColumnType::Uuid], &[vec![Value::Bytes(&raw)]]);
        assert_eq!(a, b);
        assert_eq!(raw[0], 0x01);
        assert_eq!(raw[15], 0xde);
        assert!(parse_uuid("nope").is_err());
        assert!(parse_uuid("01a20ff9a7fd799f8b747e2b1304e5de00").is_err());
    }

    #[test]
    fn arrays_with_nulls_and_empty() {
        let out = encode(
            &[ColumnType::ByteaArray, ColumnType::TextArray],
            &[vec![
                Value::Array(vec![Value::Bytes(b"ab"), Value::Null]),
                Value::Array(vec![]),
            ]],
        );
        let row = &out[19..out.len() - 2];
        let mut expected = vec![0, 2];
        let mut arr = vec![];
        arr.extend_from_slice(&1i32.to_be_bytes());
        arr.extend_from_slice(&1i32.to_be_bytes());
        arr.extend_from_slice(&17i32.to_be_bytes());
        arr.extend_from_slice(&2i32.to_be_bytes());
        arr.extend_from_slice(&1i32.to_be_bytes());
        arr.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&(arr.len() as i32).to_be_bytes());
        expected.extend_from_slice(&arr);
        expected.extend_from_slice(&[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
        assert_eq!(row, expected.as_slice());
    }

    #[test]
    fn errors_name_row_column_and_type() {
        let mut enc = CopyEncoder::new(vec![ColumnType::Int4, ColumnType::Bool]).unwrap();
        enc.push_row(&[Value::Int(1), Value::Bool(true)]).unwrap();
        let err = enc.push_row(&[Value::Int(1), Value::Str("x")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: row 1, column 1 (bool): a str value does not fit a bool column"
        );
        let err = enc.push_row(&[Value::Int(1)]).unwrap_err();
        assert!(err.to_string().contains("has 1 values for 2 columns"));
        // The failed rows are left out: the payload holds the good row only.
        enc.push_row(&[Value::Int(2), Value::Null]).unwrap();
        let out = enc.finish();
        assert_eq!(copy_rows(&out).unwrap().len(), 2);
        assert!(ColumnType::parse("money").is_err());
    }

    /// The fields of the only row of a one-row payload.
    fn fields_of(out: &[u8]) -> Vec<Option<Vec<u8>>> {
        let rows = copy_rows(out).unwrap();
        assert_eq!(rows.len(), 1);
        copy_row_fields(rows[0])
            .unwrap()
            .into_iter()
            .map(|f| f.map(<[u8]>::to_vec))
            .collect()
    }

    fn push(types: &[ColumnType], row: &[Value<'_>]) -> (Repairs, Vec<u8>) {
        let mut enc = CopyEncoder::new(types.to_vec()).unwrap();
        let repairs = enc.push_row(row).unwrap();
        (repairs, enc.finish())
    }

    fn names(items: &[&str]) -> Vec<u8> {
        let mut buf = Vec::new();
        let items: Vec<&[u8]> = items.iter().map(|s| s.as_bytes()).collect();
        write_names(&mut buf, &items).unwrap();
        buf[4..].to_vec()
    }

    #[test]
    fn integers_are_clamped_to_their_column() {
        use ColumnType::*;
        let (repairs, out) = push(
            &[Int2, Int4, Int8, Int8, Int2, Int8Array],
            &[
                Value::Int(70_000),
                Value::Int(i64::MIN),
                Value::BigInt { negative: false },
                Value::BigInt { negative: true },
                Value::Int(-5),
                Value::Array(vec![Value::BigInt { negative: false }, Value::Int(3)]),
            ],
        );
        assert_eq!(repairs, safe::Repairs::INT_CLAMPED);
        let f = fields_of(&out);
        assert_eq!(f[0], Some(i16::MAX.to_be_bytes().to_vec()));
        assert_eq!(f[1], Some(i32::MIN.to_be_bytes().to_vec()));
        assert_eq!(f[2], Some(i64::MAX.to_be_bytes().to_vec()));
        assert_eq!(f[3], Some(i64::MIN.to_be_bytes().to_vec()));
        assert_eq!(f[4], Some((-5i16).to_be_bytes().to_vec()));
        let (repairs, _) = push(&[Int2], &[Value::Int(7)]);
        assert!(repairs.is_empty());
        // Other columns refuse an int past i64, as before.
        let mut enc = CopyEncoder::new(vec![Timestamptz]).unwrap();
        let err = enc
            .push_row(&[Value::BigInt { negative: false }])
            .unwrap_err();
        assert!(err.to_string().contains("int8 range"));
    }

    #[test]
    fn json_and_text_cells_are_made_safe() {
        use ColumnType::*;
        let (repairs, out) = push(
            &[Jsonb, Json, Text, Text, TextArray],
            &[
                Value::Bytes(br#"{"a":"\u0000"}"#),
                Value::Str("1e999"),
                Value::Bytes(b"a\0\xff"),
                Value::Str("fine"),
                Value::Array(vec![Value::Bytes(b"\xed\xa0\x80"), Value::Null]),
            ],
        );
        assert_eq!(
            repairs.names().collect::<Vec<_>>(),
            [
                "nul_escaped",
                "surrogate_escaped",
                "invalid_utf8",
                "number_as_text"
            ]
        );
        let f = fields_of(&out);
        assert_eq!(f[0].as_deref(), Some(&b"\x01{\"a\":\"\\\\u0000\"}"[..]));
        assert_eq!(f[1].as_deref(), Some(&b"\"1e999\""[..]));
        assert_eq!(f[2].as_deref(), Some(&br"a\u0000\xFF"[..]));
        assert_eq!(f[3].as_deref(), Some(&b"fine"[..]));
        assert!(f[4].as_deref().unwrap().windows(6).any(|w| w == br"\ud800"));
    }

    #[test]
    fn repairs_column_lists_python_names_then_the_rows_repairs() {
        use ColumnType::*;
        let types = [Jsonb, Int2, Repairs];
        let (_, out) = push(&types, &[Value::Bytes(b"{}"), Value::Int(1), Value::Null]);
        assert_eq!(fields_of(&out)[2], None);
        let (_, out) = push(
            &types,
            &[
                Value::Bytes(b"[1e400]"),
                Value::Int(1 << 20),
                Value::Array(vec![
                    Value::Str("usage_not_integer"),
                    Value::Str("int_clamped"),
                    Value::Str("usage_not_integer"),
                ]),
            ],
        );
        assert_eq!(
            fields_of(&out)[2].as_deref(),
            Some(&names(&["usage_not_integer", "int_clamped", "number_as_text"])[..])
        );
        let (_, out) = push(
            &types,
            &[
                Value::Null,
                Value::Int(0),
                Value::Array(vec![Value::Str("from_python")]),
            ],
        );
        assert_eq!(
            fields_of(&out)[2].as_deref(),
            Some(&names(&["from_python"])[..])
        );
        let mut enc = CopyEncoder::new(types.to_vec()).unwrap();
        let err = enc
            .push_row(&[Value::Null, Value::Null, Value::Array(vec![Value::Int(1)])])
            .unwrap_err();
        assert!(err.to_string().contains("repair names must be str"));
    }

    #[test]
    fn raw_column_keeps_the_original_of_a_repaired_cell() {
        use ColumnType::*;
        let types = [Jsonb, Raw, Text, Raw, Json, Raw];
        let (_, out) = push(
            &types,
            &[
                Value::Bytes(b"{\"a\":1}"),
                Value::Null,
                Value::Str("a\0"),
                Value::Null,
                Value::Str("nope"),
                Value::Null,
            ],
        );
        let f = fields_of(&out);
        assert_eq!(f[1], None);
        assert_eq!(f[3].as_deref(), Some(&b"a\0"[..]));
        assert_eq!(f[5].as_deref(), Some(&b"nope"[..]));
        // Bytes given for a raw cell are written as they are, repaired cell before it or not.
        let (_, out) = push(
            &types,
            &[
                Value::Bytes(b"{\"unparsed_body\":\"\"}"),
                Value::Bytes(b"\xff\x00 not json"),
                Value::Str("a\0"),
                Value::Bytes(b""),
                Value::Str("nope"),
                Value::Null,
            ],
        );
        let f = fields_of(&out);
        assert_eq!(f[1].as_deref(), Some(&b"\xff\x00 not json"[..]));
        assert_eq!(f[3].as_deref(), Some(&b""[..]));
        assert_eq!(f[5].as_deref(), Some(&b"nope"[..]));
        let mut enc = CopyEncoder::new(vec![Text, Raw]).unwrap();
        for wrong in [Value::Str("y"), Value::Int(1)] {
            assert!(enc
                .push_row(&[Value::Str("x"), wrong])
                .unwrap_err()
                .to_string()
                .contains("raw column takes bytes or None"));
        }
    }

    #[test]
    fn pseudo_columns_must_stand_in_their_place() {
        use ColumnType::*;
        for bad in [
            &[Repairs, Int2][..],
            &[Repairs, Repairs],
            &[Raw],
            &[Int2, Raw],
            &[Jsonb, Raw, Raw],
            &[TextArray, Raw],
        ] {
            assert!(CopyEncoder::new(bad.to_vec()).is_err(), "{bad:?}");
        }
        for good in [
            &[Repairs][..],
            &[Jsonb, Raw, Text, Raw, Repairs],
            &[Json, Raw],
        ] {
            assert!(CopyEncoder::new(good.to_vec()).is_ok(), "{good:?}");
        }
        assert_eq!(
            ColumnType::parse_all(&["text", "raw", "repairs"]).unwrap(),
            [Text, Raw, Repairs]
        );
        assert!(ColumnType::parse_all(&["repairs", "text"]).is_err());
    }

    #[test]
    fn payloads_split_into_rows_and_back() {
        use ColumnType::*;
        let mut enc = CopyEncoder::new(vec![Int4, Text]).unwrap();
        enc.push_row(&[Value::Int(1), Value::Str("a")]).unwrap();
        enc.push_row(&[Value::Null, Value::Null]).unwrap();
        enc.push_row(&[Value::Int(3), Value::Str("")]).unwrap();
        let payload = enc.finish();
        let rows = copy_rows(&payload).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            &[0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(copy_payload(rows.iter().copied()), payload);
        assert_eq!(copy_payload([rows[2]]).len(), 19 + rows[2].len() + 2);
        assert_eq!(copy_row_field(rows[0], 1).unwrap(), Some(&b"a"[..]));
        assert_eq!(copy_row_field(rows[1], 0).unwrap(), None);
        assert!(copy_row_field(rows[0], 2).is_err());
        assert!(copy_rows(&copy_payload([])).unwrap().is_empty());
        // merged: the rows of each payload in order, an empty payload holding none
        let first = copy_payload([rows[0]]);
        let merged = merge_payloads([&first[..], &[], &payload[..]]).unwrap();
        assert_eq!(
            copy_rows(&merged).unwrap(),
            [&[rows[0]][..], &rows[..]].concat()
        );
        assert!(merge_payloads([&first[..], &payload[..payload.len() - 1]]).is_err());
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let good = copy_payload([&[0u8, 1, 0, 0, 0, 1, b'x'][..]]);
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        cases.push([good.clone(), vec![0]].concat());
        let mut flags = good.clone();
        flags[15] = 1;
        cases.push(flags);
        let mut negative = good.clone();
        negative[21..25].copy_from_slice(&(-2i32).to_be_bytes());
        cases.push(negative);
        let mut huge = good.clone();
        huge[21..25].copy_from_slice(&i32::MAX.to_be_bytes());
        cases.push(huge);
        let mut count = good.clone();
        count[19..21].copy_from_slice(&(-3i16).to_be_bytes());
        cases.push(count);
        for case in cases {
            assert!(copy_rows(&case).is_err(), "{case:?}");
        }
        assert!(copy_rows(&good).is_ok());
        assert!(copy_row_fields(&[0, 1, 0, 0, 0, 1, b'x', 0]).is_err());
        assert!(copy_row_fields(&[0xff, 0xff]).is_err());
        assert!(copy_row_fields(&[]).is_err());
    }

    #[test]
    fn last_resort_stores_json_as_text() {
        use ColumnType::*;
        let types = [Jsonb, Raw, Json, Text, Raw, Int4, Repairs];
        let (_, payload) = push(
            &types,
            &[
                Value::Bytes(br#"{"a":[1,2]}"#),
                Value::Null,
                Value::Str("[1e999]"),
                Value::Str("plain"),
                Value::Null,
                Value::Int(5),
                Value::Array(vec![Value::Str("from_python")]),
            ],
        );
        let row = copy_rows(&payload).unwrap()[0].to_vec();
        let out = copy_row_last_resort(&types, &row).unwrap();
        let f: Vec<Option<&[u8]>> = copy_row_fields(&out).unwrap();
        assert_eq!(f[0], Some(&b"\x01\"{\\\"a\\\":[1,2]}\""[..]));
        assert_eq!(f[1], Some(&br#"{"a":[1,2]}"#[..]));
        // The json cell was already repaired: its text is the repaired JSON, raw-less column.
        assert_eq!(f[2], Some(&br#""[\"1e999\"]""#[..]));
        assert_eq!(f[3], Some(&b"plain"[..]));
        assert_eq!(f[4], None);
        assert_eq!(f[5], Some(&5i32.to_be_bytes()[..]));
        assert_eq!(
            f[6],
            Some(&names(&["from_python", "number_as_text", "stored_as_text"])[..])
        );
        // NULL cells stay NULL and a NULL repairs gains the flag.
        let (_, payload) = push(
            &[Jsonb, Raw, Repairs],
            &[Value::Null, Value::Null, Value::Null],
        );
        let row = copy_rows(&payload).unwrap()[0];
        let out = copy_row_last_resort(&[Jsonb, Raw, Repairs], row).unwrap();
        let f = copy_row_fields(&out).unwrap();
        assert_eq!(f[..2], [None, None]);
        assert_eq!(f[2], Some(&names(&["stored_as_text"])[..]));
        // Malformed input.
        assert!(copy_row_last_resort(&[Jsonb], &[0, 1, 0, 0, 0, 1, 2]).is_err());
        assert!(copy_row_last_resort(&[Jsonb, Int2], &[0, 1, 0, 0, 0, 1, 1]).is_err());
        assert!(copy_row_last_resort(&[Repairs], &[0, 1, 0, 0, 0, 2, 0, 0]).is_err());
    }
}
