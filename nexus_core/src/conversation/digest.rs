//! The canonical byte stream a kept message is hashed as.
//!
//! Every field is tagged and length-prefixed, so no two different messages give the same stream.
//! What the client changes between turns does not enter it: `cache_control` and other block fields,
//! string-vs-block content (a string is one text block), reminder text, thinking blocks (clients drop or
//! keep them), empty text blocks, the input of a tool call that has an id. JSON values (id-less tool
//! inputs) are hashed structurally with object keys sorted, so key order and number spelling do not
//! matter either.
//!
//! Stream grammar (the Python reference emits exactly the same bytes):
//! - message: `M` + role byte (`u` / `a`), then its blocks;
//! - text: `T` + lp(text); tool_use: `U` + lp(id) + lp(name), and json(input) only when the id is
//!   empty (Claude Code re-sends earlier tool inputs with keys added, e.g. Edit's `replace_all`);
//! - tool_result: `R` + lp(tool_use_id) + (`E` error / `-`) + its items + `r`;
//! - image / document: `I` + lp(type) + lp(media_type) + lp(xxh3-128 of the data or url);
//! - any other block: `O` + lp(type);
//! - lp(x) = u32 big-endian byte length + bytes;
//! - json: null `n`, true `t`, false `f`, integer `i` + lp(decimal), other number `d` + f64 big-endian
//!   bits, string `s` + lp, array `[` items `]`, object `{` (lp(key) value)* sorted by key `}`.

use serde_json::Value;
use xxhash_rust::xxh3::Xxh3Default;

/// Something that takes the canonical stream: the running prefix hasher, or a byte buffer in tests.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn tag(&mut self, tag: u8) {
        self.put(&[tag]);
    }

    fn lp(&mut self, bytes: &[u8]) {
        self.put(&(bytes.len() as u32).to_be_bytes());
        self.put(bytes);
    }

    fn json(&mut self, value: &Value) {
        match value {
            Value::Null => self.tag(b'n'),
            Value::Bool(true) => self.tag(b't'),
            Value::Bool(false) => self.tag(b'f'),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.tag(b'i');
                    self.lp(i.to_string().as_bytes());
                } else if let Some(u) = n.as_u64() {
                    self.tag(b'i');
                    self.lp(u.to_string().as_bytes());
                } else {
                    self.tag(b'd');
                    self.put(&n.as_f64().unwrap_or(f64::NAN).to_bits().to_be_bytes());
                }
            }
            Value::String(s) => {
                self.tag(b's');
                self.lp(s.as_bytes());
            }
            Value::Array(items) => {
                self.tag(b'[');
                for item in items {
                    self.json(item);
                }
                self.tag(b']');
            }
            Value::Object(map) => {
                self.tag(b'{');
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (key, item) in entries {
                    self.lp(key.as_bytes());
                    self.json(item);
                }
                self.tag(b'}');
            }
        }
    }
}

impl Sink for Xxh3Default {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(v: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.json(&serde_json::from_str(v).unwrap());
        out
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        assert_eq!(
            stream(r#"{"b":1,"a":[true,null]}"#),
            stream(r#"{"a":[true,null],"b":1}"#)
        );
        assert_eq!(stream("1.5"), stream("15e-1"));
        assert_ne!(stream("1"), stream("1.0"));
        assert_ne!(stream(r#""1""#), stream("1"));
    }

    #[test]
    fn grammar_is_exact() {
        assert_eq!(
            stream(r#"{"k":"v"}"#),
            b"{\0\0\0\x01ks\0\0\0\x01v}".to_vec()
        );
        assert_eq!(stream("-3"), b"i\0\0\0\x02-3".to_vec());
    }
}
