//! PostgreSQL `COPY ... FROM STDIN (FORMAT binary)` encoding of a whole batch of rows.
//!
//! The writer sends one payload per batch, so the Python/Rust boundary is crossed once per batch
//! and the server parses no text. Format: the 11-byte signature, flags and header-extension
//! length, then per row an `i16` field count and per field an `i32` length (`-1` for NULL) and the
//! value in the type's binary send format, then the `-1` trailer.

use crate::NexusError;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01 (UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

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
            other => {
                return Err(NexusError::InvalidArgument(format!(
                    "unsupported COPY column type {other:?}"
                )))
            }
        })
    }

    /// The element type of an array column.
    pub fn element(self) -> Option<ColumnType> {
        match self {
            Self::TextArray => Some(Self::Text),
            Self::ByteaArray => Some(Self::Bytea),
            Self::UuidArray => Some(Self::Uuid),
            Self::Int8Array => Some(Self::Int8),
            _ => None,
        }
    }

    fn oid(self) -> i32 {
        match self {
            Self::Text => 25,
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
        }
    }
}

/// One cell, borrowing from its source where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bytes(&'a [u8]),
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Value<'a>>),
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

/// Builds one COPY BINARY payload.
pub struct CopyEncoder {
    types: Vec<ColumnType>,
    buf: Vec<u8>,
    rows: usize,
}

impl CopyEncoder {
    pub fn new(types: Vec<ColumnType>) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyEncoder {
            types,
            buf,
            rows: 0,
        }
    }

    pub fn types(&self) -> &[ColumnType] {
        &self.types
    }

    /// Append one row; on error the payload is left unusable, so callers stop at the first error.
    pub fn push_row(&mut self, row: &[Value<'_>]) -> Result<(), NexusError> {
        if row.len() != self.types.len() {
            return Err(NexusError::InvalidArgument(format!(
                "row {} has {} values for {} columns",
                self.rows,
                row.len(),
                self.types.len()
            )));
        }
        self.buf
            .extend_from_slice(&(self.types.len() as i16).to_be_bytes());
        for (col, value) in row.iter().enumerate() {
            let ty = self.types[col];
            write_field(&mut self.buf, ty, value).map_err(|msg| {
                NexusError::InvalidArgument(format!(
                    "row {}, column {} ({}): {msg}",
                    self.rows,
                    col,
                    ty.name()
                ))
            })?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

fn with_length(
    buf: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let at = buf.len();
    buf.extend_from_slice(&0i32.to_be_bytes());
    body(buf)?;
    let len = buf.len() - at - 4;
    let len = i32::try_from(len).map_err(|_| "value larger than 2 GiB".to_string())?;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn write_field(buf: &mut Vec<u8>, ty: ColumnType, value: &Value<'_>) -> Result<(), String> {
    if matches!(value, Value::Null) {
        buf.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    with_length(buf, |buf| write_value(buf, ty, value))
}

fn int_in(value: i64, min: i64, max: i64, ty: ColumnType) -> Result<i64, String> {
    if value < min || value > max {
        return Err(format!("{value} out of range for {}", ty.name()));
    }
    Ok(value)
}

fn wrong(ty: ColumnType, value: &Value<'_>) -> String {
    let got = match value {
        Value::Null => "null",
        Value::Bytes(_) => "bytes",
        Value::Str(_) => "str",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Bool(_) => "bool",
        Value::Array(_) => "list",
    };
    format!("a {got} value does not fit a {} column", ty.name())
}

fn write_value(buf: &mut Vec<u8>, ty: ColumnType, value: &Value<'_>) -> Result<(), String> {
    match (ty, value) {
        (ColumnType::Jsonb, Value::Bytes(b)) => {
            buf.push(1); // jsonb binary format version
            buf.extend_from_slice(b);
        }
        (ColumnType::Jsonb, Value::Str(s)) => {
            buf.push(1);
            buf.extend_from_slice(s.as_bytes());
        }
        (ColumnType::Json, Value::Bytes(b)) | (ColumnType::Bytea, Value::Bytes(b)) => {
            buf.extend_from_slice(b)
        }
        (ColumnType::Json, Value::Str(s)) | (ColumnType::Text, Value::Str(s)) => {
            buf.extend_from_slice(s.as_bytes())
        }
        (ColumnType::Text, Value::Bytes(b)) => {
            std::str::from_utf8(b).map_err(|_| "text bytes are not valid UTF-8".to_string())?;
            buf.extend_from_slice(b);
        }
        (ColumnType::Uuid, Value::Str(s)) => {
            buf.extend_from_slice(&parse_uuid(s).map_err(|e| e.to_string())?)
        }
        (ColumnType::Uuid, Value::Bytes(b)) if b.len() == 16 => buf.extend_from_slice(b),
        (ColumnType::Timestamptz, Value::Int(us)) => {
            let pg = us
                .checked_sub(PG_EPOCH_OFFSET_US)
                .ok_or_else(|| format!("timestamp {us} out of range"))?;
            buf.extend_from_slice(&pg.to_be_bytes());
        }
        (ColumnType::Int2, Value::Int(v)) => {
            let v = int_in(*v, i16::MIN.into(), i16::MAX.into(), ty)? as i16;
            buf.extend_from_slice(&v.to_be_bytes());
        }
        (ColumnType::Int4, Value::Int(v)) => {
            let v = int_in(*v, i32::MIN.into(), i32::MAX.into(), ty)? as i32;
            buf.extend_from_slice(&v.to_be_bytes());
        }
        (ColumnType::Int8, Value::Int(v)) => buf.extend_from_slice(&v.to_be_bytes()),
        (ColumnType::Float8, Value::Float(v)) => buf.extend_from_slice(&v.to_be_bytes()),
        (ColumnType::Float8, Value::Int(v)) => buf.extend_from_slice(&(*v as f64).to_be_bytes()),
        (ColumnType::Bool, Value::Bool(v)) => buf.push(u8::from(*v)),
        (_, Value::Array(items)) if ty.element().is_some() => {
            let elem = ty.element().unwrap_or(ColumnType::Text);
            let has_null = items.iter().any(|v| matches!(v, Value::Null));
            if items.is_empty() {
                buf.extend_from_slice(&0i32.to_be_bytes()); // no dimensions
                buf.extend_from_slice(&0i32.to_be_bytes());
                buf.extend_from_slice(&elem.oid().to_be_bytes());
                return Ok(());
            }
            let len = i32::try_from(items.len()).map_err(|_| "array too long".to_string())?;
            buf.extend_from_slice(&1i32.to_be_bytes());
            buf.extend_from_slice(&i32::from(has_null).to_be_bytes());
            buf.extend_from_slice(&elem.oid().to_be_bytes());
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for (i, item) in items.iter().enumerate() {
                write_field(buf, elem, item).map_err(|e| format!("element {i}: {e}"))?;
            }
        }
        _ => return Err(wrong(ty, value)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(types: &[ColumnType], rows: &[Vec<Value<'_>>]) -> Vec<u8> {
        let mut enc = CopyEncoder::new(types.to_vec());
        for row in rows {
            enc.push_row(row).unwrap();
        }
        enc.finish()
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
        let mut enc = CopyEncoder::new(vec![ColumnType::Int4, ColumnType::Int2]);
        enc.push_row(&[Value::Int(1), Value::Int(1)]).unwrap();
        let err = enc
            .push_row(&[Value::Int(1), Value::Int(70_000)])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: row 1, column 1 (int2): 70000 out of range for int2"
        );
        let mut enc = CopyEncoder::new(vec![ColumnType::Bool]);
        let err = enc.push_row(&[Value::Str("x")]).unwrap_err();
        assert!(err
            .to_string()
            .contains("a str value does not fit a bool column"));
        assert!(ColumnType::parse("money").is_err());
    }
}
