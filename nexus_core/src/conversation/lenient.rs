//! Messages read in one pass, leniently: a field of an unexpected type reads as absent, never as an
//! error, so a malformed message cannot fail the request (it only hashes differently).
//!
//! serde's derive would reject a whole message for one odd field, and reading through `RawValue`
//! first scans every byte again per nesting level; these visitors take each message's bytes once,
//! borrowing strings that need no unescaping and skipping what linking ignores.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A string, or None for any other JSON value.
pub struct LStr<'a>(pub Option<Cow<'a, str>>);

/// `true` only for the JSON literal `true`.
pub struct LTrue(pub bool);

/// A message `content` (or a tool_result's): absent/null, a string, a list of blocks, or anything else.
pub enum Content<'a> {
    Absent,
    Text(Cow<'a, str>),
    Blocks(Vec<LBlock<'a>>),
    Invalid,
}

/// One content block, or `Invalid` when the element is not an object.
pub enum LBlock<'a> {
    Invalid,
    Block(Box<Fields<'a>>),
}

/// The block fields linking reads; every other field is skipped unread.
#[derive(Default)]
pub struct Fields<'a> {
    pub kind: Option<Cow<'a, str>>,
    pub text: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub input: Option<&'a RawValue>,
    pub tool_use_id: Option<Cow<'a, str>>,
    pub content: Option<Content<'a>>,
    pub is_error: bool,
    pub source: Option<Source<'a>>,
}

/// An image or document `source`.
#[derive(Default)]
pub struct Source<'a> {
    pub media_type: Option<Cow<'a, str>>,
    pub data: Option<Cow<'a, str>>,
    pub url: Option<Cow<'a, str>>,
    pub file_id: Option<Cow<'a, str>>,
}

/// A message: its role (if a string) and content; `None` when the JSON value is not an object.
pub struct LMessage<'a>(pub Option<(Option<Cow<'a, str>>, Content<'a>)>);

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the scalar `visit_*` methods of a visitor as "not what we wanted": `$other`.
macro_rules! otherwise {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

impl<'de> Deserialize<'de> for LStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'de>(PhantomData<&'de ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = LStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LStr(None))
            }
            otherwise!(LStr(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de> Deserialize<'de> for LTrue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LTrue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LTrue(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LTrue(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LTrue(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LTrue(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LTrue(false))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LTrue(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LTrue(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LTrue(false))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Content<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'de>(PhantomData<&'de ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("message content")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Content::Absent)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Content::Absent)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(block) = seq.next_element::<LBlock<'de>>()? {
                    blocks.push(block);
                }
                Ok(Content::Blocks(blocks))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| Content::Invalid)
            }
            otherwise!(Content::Invalid);
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de> Deserialize<'de> for LBlock<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'de>(PhantomData<&'de ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = LBlock<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content block")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut b = Fields::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => b.kind = map.next_value::<LStr<'de>>()?.0,
                        "text" => b.text = map.next_value::<LStr<'de>>()?.0,
                        "id" => b.id = map.next_value::<LStr<'de>>()?.0,
                        "name" => b.name = map.next_value::<LStr<'de>>()?.0,
                        "input" => b.input = map.next_value::<Option<&'de RawValue>>()?,
                        "tool_use_id" => b.tool_use_id = map.next_value::<LStr<'de>>()?.0,
                        "content" => b.content = Some(map.next_value::<Content<'de>>()?),
                        "is_error" => b.is_error = map.next_value::<LTrue>()?.0,
                        "source" => b.source = map.next_value::<LSource<'de>>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(LBlock::Block(Box::new(b)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LBlock::Invalid)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LBlock::Invalid)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LBlock::Invalid)
            }
            otherwise!(LBlock::Invalid);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A `source` object, or None for any other value.
pub struct LSource<'a>(pub Option<Source<'a>>);

impl<'de> Deserialize<'de> for LSource<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'de>(PhantomData<&'de ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = LSource<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a source object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut s = Source::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "media_type" => &mut s.media_type,
                        "data" => &mut s.data,
                        "url" => &mut s.url,
                        "file_id" => &mut s.file_id,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value::<LStr<'de>>()?.0;
                }
                Ok(LSource(Some(s)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LSource(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LSource(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LSource(None))
            }
            otherwise!(LSource(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de> Deserialize<'de> for LMessage<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'de>(PhantomData<&'de ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = LMessage<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut role = None;
                let mut content = Content::Absent;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "role" => role = map.next_value::<LStr<'de>>()?.0,
                        "content" => content = map.next_value::<Content<'de>>()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(LMessage(Some((role, content))))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LMessage(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LMessage(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LMessage(None))
            }
            otherwise!(LMessage(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}
