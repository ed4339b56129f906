//! Splitting a request body into an envelope and content-addressed parts.
//!
//! Claude Code re-sends the whole history, the system prompt and ~20 KB of tool definitions on every
//! turn, so storing bodies whole grows as the square of a conversation's length. Each element of
//! `messages`, the `system` value and the `tools` value is kept once, keyed by the xxh3-128 of its
//! exact JSON bytes as the client sent them (never re-serialised, so equal bytes always give equal
//! keys); the rest of the body is the envelope. `join_body` rebuilds a body equal to the original
//! after canonical re-serialisation (parsed-JSON equality; key order is the database's concern).

use foldhash::{HashSet, HashSetExt};

use serde_json::value::RawValue;
use xxhash_rust::xxh3::xxh3_128;

use crate::NexusError;

/// What a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PartKind {
    Message = 0,
    System = 1,
    Tools = 2,
}

pub type Key = [u8; 16];

/// A body split for storage: borrowed slices of the original bytes where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBody<'a> {
    pub envelope: Vec<u8>,
    pub system_key: Option<Key>,
    pub tools_key: Option<Key>,
    pub message_keys: Option<Vec<Key>>,
    /// Distinct parts in first-seen order.
    pub parts: Vec<(Key, PartKind, &'a [u8])>,
}

impl<'a> SplitBody<'a> {
    fn add(&mut self, seen: &mut HashSet<Key>, kind: PartKind, json: &'a [u8]) -> Key {
        let key = content_key(json);
        if seen.insert(key) {
            self.parts.push((key, kind, json));
        }
        key
    }

    /// A `messages` list: each element a part (its key in order), then shown to `visitor`. One
    /// place for both ways the list is read (in the first pass, or from a body read again).
    fn add_messages<V: FieldVisitor<'a>>(
        &mut self,
        seen: &mut HashSet<Key>,
        items: &[&'a str],
        span: impl Fn(&str) -> &'a [u8],
        visitor: &mut V,
    ) -> Result<(), NexusError> {
        let keys: Vec<Key> = items
            .iter()
            .map(|m| self.add(seen, PartKind::Message, span(m)))
            .collect();
        visitor.messages(items, &keys)?;
        self.message_keys = Some(keys);
        Ok(())
    }
}

/// The storage key of a part: xxh3-128 of its exact bytes, big-endian.
pub fn content_key(json: &[u8]) -> Key {
    xxh3_128(json).to_be_bytes()
}

fn invalid(msg: impl Into<String>) -> NexusError {
    NexusError::InvalidArgument(msg.into())
}

/// Called for the fields of a body while it is split, so other passes need not parse it again.
pub trait FieldVisitor<'a> {
    /// A top-level field other than a `messages` list.
    fn field(&mut self, _name: &str, _raw: &'a str) -> Result<(), NexusError> {
        Ok(())
    }
    /// The elements of a `messages` list, in order, with the keys the split stores them by.
    fn messages(&mut self, _items: &[&'a str], _keys: &[Key]) -> Result<(), NexusError> {
        Ok(())
    }
    /// The `system` value, with the key the split stores it by (the xxh3-128 of its bytes).
    fn system(&mut self, raw: &'a str, _key: &Key) -> Result<(), NexusError> {
        self.field("system", raw)
    }
}

impl<'a> FieldVisitor<'a> for () {}

pub fn split_body(body: &[u8]) -> Result<SplitBody<'_>, NexusError> {
    split_body_with(body, &mut ())
}

/// Split `body`, showing every top-level field to `visitor` on the way.
pub fn split_body_with<'a, V: FieldVisitor<'a>>(
    body: &'a [u8],
    visitor: &mut V,
) -> Result<SplitBody<'a>, NexusError> {
    let text =
        simdutf8::basic::from_utf8(body).map_err(|_| invalid("request body is not valid UTF-8"))?;
    let read = |lists| {
        indexmap_like::read(text, lists).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                invalid("request body must be a JSON object")
            } else {
                invalid(format!("request body is not valid JSON: {e}"))
            }
        })
    };
    // the quick read accepts only what serde_json accepts; anything else (an error, a `messages` that
    // is not a list, a key with an escape) is read by serde_json, which says what is wrong
    let object = match indexmap_like::read_quick(text) {
        Some(object) => object,
        None => {
            let object = read(true)?;
            if object
                .0
                .iter()
                .any(|(_, v)| matches!(v, indexmap_like::Field::NotList))
            {
                read(false)?
            } else {
                object
            }
        }
    };
    let mut split = SplitBody {
        envelope: Vec::with_capacity(256),
        system_key: None,
        tools_key: None,
        message_keys: None,
        parts: Vec::new(),
    };
    let mut seen = HashSet::new();
    // Raw values point into `text`, which is `body`: recover each span as a borrow of `body`.
    let span = |raw: &str| -> &'a [u8] {
        let start = raw.as_ptr() as usize - text.as_ptr() as usize;
        &body[start..start + raw.len()]
    };
    split.envelope.push(b'{');
    let mut first = true;
    for (name, value) in object.0 {
        let raw = match value {
            // A `messages` list was read element by element in the same pass (no second parse).
            indexmap_like::Field::List(items) if name == "messages" => {
                split.add_messages(&mut seen, &items, span, visitor)?;
                continue;
            }
            indexmap_like::Field::Raw(raw) => raw,
            // Read with `lists` only as `messages`, and a `NotList` made the body be read again.
            _ => unreachable!("a list read as a field other than messages"),
        };
        match name.as_ref() {
            "system" => {
                let key = split.add(&mut seen, PartKind::System, span(raw));
                split.system_key = Some(key);
                visitor.system(raw, &key)?;
                continue;
            }
            "tools" => {
                split.tools_key = Some(split.add(&mut seen, PartKind::Tools, span(raw)));
                visitor.field(&name, raw)?;
                continue;
            }
            // Read again without lists (a `messages` that is not one is in the body): a list here
            // still splits, whatever else another copy of the field held.
            "messages" => {
                if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw) {
                    let items: Vec<&str> = items.iter().map(|r| r.get()).collect();
                    split.add_messages(&mut seen, &items, span, visitor)?;
                    continue;
                }
            }
            _ => {}
        }
        visitor.field(&name, raw)?;
        if !first {
            split.envelope.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut split.envelope, name.as_ref())
            .map_err(|e| invalid(e.to_string()))?;
        split.envelope.push(b':');
        split.envelope.extend_from_slice(raw.as_bytes());
    }
    split.envelope.push(b'}');
    Ok(split)
}

/// Rebuild a body from its envelope and parts (equal to the original after canonical re-serialisation).
pub fn join_body(
    envelope: &[u8],
    system: Option<&[u8]>,
    tools: Option<&[u8]>,
    messages: Option<&[&[u8]]>,
) -> Result<Vec<u8>, NexusError> {
    let trimmed = envelope.trim_ascii();
    if trimmed.first() != Some(&b'{') || trimmed.last() != Some(&b'}') {
        return Err(invalid("envelope is not a JSON object"));
    }
    let inner = trimmed[1..trimmed.len() - 1].trim_ascii();
    let mut out = Vec::with_capacity(envelope.len() + 1024);
    out.push(b'{');
    out.extend_from_slice(inner);
    let mut first = inner.is_empty();
    let mut field = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(format!("\"{name}\":").as_bytes());
        out.extend_from_slice(value);
    };
    if let Some(s) = system {
        field(&mut out, "system", s);
    }
    if let Some(t) = tools {
        field(&mut out, "tools", t);
    }
    if let Some(ms) = messages {
        let mut list = vec![b'['];
        for (i, m) in ms.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            list.extend_from_slice(m);
        }
        list.push(b']');
        field(&mut out, "messages", &list);
    }
    out.push(b'}');
    Ok(out)
}

/// The quick read of a body agrees with serde_json's wherever it answers: serde_json accepts the body
/// and reads the same fields, values and `messages` elements (the same bytes). A fuzz check
/// (`fuzzing::analyze_request`) and the tests below.
#[cfg(any(test, feature = "fuzzing"))]
pub fn check_quick_read(body: &[u8]) {
    use indexmap_like::Field;
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Some(quick) = indexmap_like::read_quick(text) else {
        return;
    };
    let slow = indexmap_like::read(text, true)
        .unwrap_or_else(|e| panic!("serde_json refuses what the quick read accepted: {e}"));
    let same = |a: &str, b: &str| std::ptr::eq(a, b);
    assert_eq!(quick.0.len(), slow.0.len());
    for ((qk, qv), (sk, sv)) in quick.0.iter().zip(&slow.0) {
        assert_eq!(qk, sk);
        match (qv, sv) {
            (Field::Raw(a), Field::Raw(b)) => assert!(same(a, b), "{a:?} / {b:?}"),
            (Field::List(a), Field::List(b)) => {
                assert_eq!(a.len(), b.len());
                assert!(a.iter().zip(b).all(|(x, y)| same(x, y)), "{a:?} / {b:?}");
            }
            _ => panic!("the quick read gave another shape for {qk:?}"),
        }
    }
}

mod indexmap_like {
    //! A top-level JSON object read as an ordered list of (name, value), duplicates kept, in one pass:
    //! a `messages` array is read as its raw elements right away, every other value as raw bytes.
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;
    use std::borrow::Cow;
    use std::fmt;

    pub enum Field<'a> {
        /// A value's JSON text, as the client sent it.
        Raw(&'a str),
        /// The elements of a `messages` array.
        List(Vec<&'a str>),
        /// A `messages` that is not an array: its bytes were not kept (see [`read`]).
        NotList,
    }

    pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, Field<'a>)>);

    /// Read the object; with `lists`, a `messages` array as its elements. serde_json cannot give back
    /// the bytes of a value it started to read as an array, so a `messages` that turns out not to be
    /// one reads as `NotList`, and the caller reads the body again without `lists` (a rare, refused
    /// shape: the common one costs one pass over the messages instead of two).
    pub fn read(text: &str, lists: bool) -> Result<RawObject<'_>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let object = Object { lists }.deserialize(&mut de)?;
        de.end()?;
        Ok(object)
    }

    /// The same as `read(text, true)` where serde_json would accept the body, found with
    /// [`crate::scan`] (a third of serde_json's instructions on Claude Code bodies); None for anything
    /// else: a body serde_json refuses, a `messages` that is not a list, a key with an escape (serde
    /// decodes those), so the caller reads it with serde_json.
    pub fn read_quick(text: &str) -> Option<RawObject<'_>> {
        use crate::scan::{after_item, skip_string, skip_value, skip_ws};
        let b = text.as_bytes();
        let mut at = skip_ws(b, 0);
        if b.get(at) != Some(&b'{') {
            return None;
        }
        let mut out = Vec::new();
        at = skip_ws(b, at + 1);
        if b.get(at) == Some(&b'}') {
            at += 1;
        } else {
            loop {
                if b.get(at) != Some(&b'"') {
                    return None;
                }
                let end = skip_string(b, at + 1)?;
                let key = &text[at + 1..end - 1];
                if key.contains('\\') {
                    return None;
                }
                at = skip_ws(b, end);
                if b.get(at) != Some(&b':') {
                    return None;
                }
                at = skip_ws(b, at + 1);
                let value = if key == "messages" {
                    if b.get(at) != Some(&b'[') {
                        return None;
                    }
                    let mut items = Vec::with_capacity(16);
                    at = skip_ws(b, at + 1);
                    if b.get(at) == Some(&b']') {
                        at += 1;
                    } else {
                        loop {
                            let end = skip_value(b, at)?;
                            items.push(&text[at..end]);
                            let closed;
                            (at, closed) = after_item(b, end, b']')?;
                            if closed {
                                break;
                            }
                        }
                    }
                    Field::List(items)
                } else {
                    let end = skip_value(b, at)?;
                    let raw = &text[at..end];
                    at = end;
                    Field::Raw(raw)
                };
                out.push((Cow::Borrowed(key), value));
                let closed;
                (at, closed) = after_item(b, at, b'}')?;
                if closed {
                    break;
                }
            }
        }
        (skip_ws(b, at) == b.len()).then_some(RawObject(out))
    }

    struct Object {
        lists: bool,
    }

    impl<'de> DeserializeSeed<'de> for Object {
        type Value = RawObject<'de>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Object {
        type Value = RawObject<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                let v = if self.lists && k == "messages" {
                    map.next_value_seed(Elements)?
                } else {
                    Field::Raw(map.next_value::<&'de RawValue>()?.get())
                };
                out.push((k, v));
            }
            Ok(RawObject(out))
        }
    }

    /// A `messages` value: an array's raw elements, or `NotList` (skipped) for anything else.
    struct Elements;

    impl<'de> DeserializeSeed<'de> for Elements {
        type Value = Field<'de>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Elements {
        type Value = Field<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16));
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                out.push(item.get());
            }
            Ok(Field::List(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Field::NotList)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Field::NotList)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Field::NotList)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Field::NotList)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Field::NotList)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Field::NotList)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Field::NotList)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"model":"m","system":[{"type":"text","text":"s"}],"max_tokens":5,
        "messages":[{"role":"user","content":"hi \u00e9"},{"role":"assistant","content":"yo"},{"role":"user","content":"hi \u00e9"}],
        "tools":[{"name":"t"}],"stream":true,"we\"ird":1}"#;

    #[test]
    fn quick_read_agrees_with_serde_json() {
        use indexmap_like::read_quick;
        // a key with an escape is left to serde_json (it decodes keys); without one, the quick read
        let plain = BODY.replace(r#""we\"ird""#, r#""weird""#);
        assert!(read_quick(BODY).is_none());
        assert!(read_quick(&plain).is_some());
        assert_eq!(split_body(BODY.as_bytes()).unwrap().parts.len(), 4);
        check_quick_read(plain.as_bytes());
        // every one-byte deletion and every insertion of a JSON-significant byte: wherever the quick
        // read answers, serde_json agrees (check_quick_read), and the split is the same either way
        let bytes = plain.as_bytes();
        let mut variants = 0;
        for at in 0..bytes.len() {
            let mut deleted = bytes.to_vec();
            deleted.remove(at);
            check_quick_read(&deleted);
            for c in [b'"', b'\\', b',', b'}', b']', b'0', b'-', b'\x01', b' '] {
                let mut inserted = bytes.to_vec();
                inserted.insert(at, c);
                check_quick_read(&inserted);
                variants += 1;
            }
        }
        assert!(variants > 1000);
        // a `messages` that is not a list, and a body that is not an object: serde_json's answers
        assert!(read_quick(r#"{"messages":{"a":1}}"#).is_none());
        assert_eq!(
            split_body(br#"{"messages":{"a":1}}"#).unwrap().message_keys,
            None
        );
        assert!(split_body(b"[1]").is_err());
        assert!(split_body(br#"{"a":01}"#).is_err());
    }

    #[test]
    fn splits_and_joins() {
        let split = split_body(BODY.as_bytes()).unwrap();
        let envelope: serde_json::Value = serde_json::from_slice(&split.envelope).unwrap();
        assert_eq!(
            envelope,
            serde_json::json!({"model":"m","max_tokens":5,"stream":true,"we\"ird":1})
        );
        let keys = split.message_keys.clone().unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0], keys[2]); // identical messages share one key
        assert_ne!(keys[0], keys[1]);
        assert_eq!(split.parts.len(), 4); // system, 2 distinct messages, tools
        assert_eq!(
            split.parts[1].2,
            br#"{"role":"user","content":"hi \u00e9"}"#
        ); // exact bytes
        let part = |k: Key| split.parts.iter().find(|p| p.0 == k).unwrap().2;
        let messages: Vec<&[u8]> = keys.iter().map(|k| part(*k)).collect();
        let joined = join_body(
            &split.envelope,
            split.system_key.map(part),
            split.tools_key.map(part),
            Some(&messages),
        )
        .unwrap();
        let a: serde_json::Value = serde_json::from_slice(&joined).unwrap();
        let b: serde_json::Value = serde_json::from_str(BODY).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn non_array_messages_stay_in_the_envelope() {
        let split = split_body(br#"{"messages":{"oops":1}}"#).unwrap();
        assert_eq!(split.message_keys, None);
        assert_eq!(split.envelope, br#"{"messages":{"oops":1}}"#);
        for other in [
            r#""text""#,
            "1",
            "-2.5",
            "true",
            "null",
            r#"{"a":[1,{"b":"c"}]}"#,
        ] {
            let body = format!(r#"{{"model":"m","messages":{other},"x":1}}"#);
            let split = split_body(body.as_bytes()).unwrap();
            assert_eq!(split.message_keys, None, "{body}");
            let expected = format!(r#"{{"model":"m","messages":{other},"x":1}}"#);
            assert_eq!(split.envelope, expected.as_bytes());
        }
        // A list and another copy that is not one: the list splits, the other stays in the envelope
        // (as when every field was read raw).
        for body in [
            r#"{"messages":[{"role":"user","content":"hi"}],"messages":"x"}"#,
            r#"{"messages":"x","messages":[{"role":"user","content":"hi"}]}"#,
        ] {
            let split = split_body(body.as_bytes()).unwrap();
            assert_eq!(split.message_keys.as_ref().map(Vec::len), Some(1), "{body}");
            assert_eq!(split.envelope, br#"{"messages":"x"}"#);
        }
        assert!(split_body(b"[1]").is_err());
        assert!(split_body(b"{").is_err());
        assert!(split_body(b"\xff").is_err());
    }

    #[test]
    fn key_is_xxh3_128_big_endian() {
        assert_eq!(content_key(b"{}"), xxh3_128(b"{}").to_be_bytes());
    }
}
