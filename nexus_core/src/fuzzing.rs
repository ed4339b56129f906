//! The fuzz targets' checks, shared by `cargo fuzz` (`nexus_core/fuzz/`, feature `fuzzing`) and by
//! `cargo test`, which runs every check over each target's committed corpus
//! (`nexus_core/fuzz/seeds/<target>/`): what a fuzzing run once found stays checked on every
//! `make test`, without libFuzzer (cargo-fuzz takes minutes to install and build on a clean machine).
//!
//! Each function panics when a property does not hold; any input is valid.

use serde::Deserialize;

use crate::body::{content_key, join_body, split_body};
use crate::conversation::analyze::HEAD_BYTES;
use crate::conversation::analyze_request as analyze;
use crate::pgcopy::{
    copy_payload, copy_row_field, copy_row_fields, copy_row_last_resort, copy_rows as split_rows,
    ColumnType,
};
use crate::reply::read_reply;
use crate::safe::{
    is_safe_json, json_as_text, safe_json as repair_json, safe_text as repair_text, Repairs,
};
use crate::{SseObserver, DEFAULT_MAX_LINE_BYTES};

/// Any bytes through `safe_json`: the output is JSON we accept unchanged (idempotent), an
/// independent parser reads it, and unrepaired input comes out as the same bytes.
pub fn safe_json(data: &[u8]) {
    let mut out = Vec::new();
    let repairs = repair_json(data, &mut out);
    assert!(is_safe_json(&out), "output not safe: {out:?}");
    if repairs.is_empty() {
        assert_eq!(out, data);
    }
    let mut again = Vec::new();
    assert!(repair_json(&out, &mut again).is_empty());
    assert_eq!(again, out);
    let mut de = serde_json::Deserializer::from_slice(&out);
    de.disable_recursion_limit();
    serde_json::Value::deserialize(&mut de).expect("serde_json reads the output");
    de.end().expect("one value");
}

/// Any bytes through `safe_text` and `json_as_text`: valid UTF-8 without NUL, idempotent, and the
/// JSON string decodes to exactly the safe text.
pub fn safe_text(data: &[u8]) {
    let mut text = Vec::new();
    let repairs = repair_text(data, &mut text);
    let decoded = std::str::from_utf8(&text).expect("safe_text output is UTF-8");
    assert!(!text.contains(&0));
    if repairs.is_empty() {
        assert_eq!(text, data);
    }
    let mut again = Vec::new();
    assert!(repair_text(&text, &mut again).is_empty());
    let mut json = Vec::new();
    assert!(json_as_text(data, &mut json).contains(Repairs::STORED_AS_TEXT));
    let value: String = serde_json::from_slice(&json).expect("a JSON string");
    assert_eq!(value, decoded);
}

const LAYOUTS: &[&[&str]] = &[
    &["jsonb"],
    &["text"],
    &["jsonb", "raw", "text", "raw", "repairs"],
    &["uuid", "json", "raw", "int4", "repairs"],
    &["repairs"],
    &["text[]", "bytea", "jsonb", "raw"],
];

fn last_resort(types: &[ColumnType], row: &[u8]) {
    if let Ok(out) = copy_row_last_resort(types, row) {
        let fields = copy_row_fields(&out).expect("last resort writes a well-formed tuple");
        assert_eq!(fields.len(), types.len());
        // And the result is itself acceptable input.
        copy_row_last_resort(types, &out).expect("a last-resort row is valid input");
    }
}

/// Any bytes as a COPY payload or tuple: the error-path helpers return errors, never panic, and
/// what they accept round-trips. The first byte picks the column types for the last resort.
pub fn copy_rows(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let types = ColumnType::parse_all(LAYOUTS[usize::from(pick) % LAYOUTS.len()]).unwrap();
    // As a whole payload.
    if let Ok(rows) = split_rows(rest) {
        assert_eq!(copy_payload(rows.iter().copied()), rest);
        for row in rows {
            last_resort(&types, row);
        }
    }
    // As one tuple, and as a tuple inside a payload.
    last_resort(&types, rest);
    let _ = copy_row_field(rest, usize::from(pick) % 8);
    if copy_row_fields(rest).is_ok() {
        let payload = copy_payload([rest]);
        assert_eq!(
            split_rows(&payload).expect("a valid tuple splits back"),
            [rest]
        );
    }
}

const CAPS: [usize; 4] = [1, 16, 300, DEFAULT_MAX_LINE_BYTES];

fn observe(stream: &[u8], cap: usize, step: usize) -> (SseObserver, usize) {
    let mut observer = SseObserver::with_max_line_bytes(cap).expect("a cap of at least 1");
    let mut dispatched = 0;
    for chunk in stream.chunks(step) {
        dispatched += observer.feed(chunk);
        dispatched += observer.feed(&[]); // an empty read changes nothing
    }
    (observer, dispatched)
}

fn json_object(data: &[u8]) {
    let mut de = serde_json::Deserializer::from_slice(data);
    de.disable_recursion_limit();
    let value = serde_json::Value::deserialize(&mut de).expect("the observer writes JSON");
    de.end().expect("one value");
    assert!(value.is_object(), "not an object: {value}");
}

/// Any bytes as an SSE stream, cut into chunks of any size: the observer never panics, and what it
/// reports does not depend on where the chunks were cut (the proxy sees whatever the network gives).
/// The first byte picks the line cap (so overflow is reached) and the chunk size.
pub fn sse_observer(data: &[u8]) {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let cap = CAPS[usize::from(pick & 3)];
    let step = usize::from(pick >> 2) + 1; // 1..=64 bytes
    let (whole, n_whole) = observe(stream, cap, stream.len().max(1));
    let (cut, n_cut) = observe(stream, cap, step);
    assert_eq!(n_whole, n_cut);
    assert_eq!(whole.summary(), cut.summary());
    assert!(whole.repairs() == cut.repairs());
    assert_eq!(whole.usage_json(), cut.usage_json());
    assert_eq!(whole.message_json(), cut.message_json());
    let summary = whole.summary();
    assert_eq!(summary.event_count, n_whole as u64);
    assert!(summary.malformed_events <= summary.event_count);
    if let Some(usage) = whole.usage_json() {
        json_object(&usage);
    }
    if let Some(message) = whole.message_json() {
        json_object(&message);
    }
}

/// Any bytes as a JSON reply, and as a stream: the reader never panics, reads the same twice,
/// writes a usage that is a JSON object and a text already canonical; a stream's launches and text
/// are those of its rebuilt message read as a JSON reply; its search text is bounded, without NUL.
pub fn reply(data: &[u8]) {
    let reply = read_reply(data);
    assert_eq!(reply, read_reply(data));
    if let Some(usage) = &reply.usage_json {
        json_object(usage);
        assert!(reply.tool_call_count.is_some());
    } else {
        assert!(reply.tool_call_count.is_none() && !reply.usage_not_integer);
    }
    let text = reply.text();
    assert_eq!(text.trim(), text);
    assert!(!text.contains("  "));
    let (observer, _) = observe(data, DEFAULT_MAX_LINE_BYTES, data.len().max(1));
    let streamed = observer.reply();
    let rebuilt = observer
        .message_json()
        .map(|m| read_reply(&m))
        .unwrap_or_default();
    assert_eq!(streamed.launches, rebuilt.launches);
    assert_eq!(streamed.joined_text, rebuilt.joined_text);
    assert_eq!(streamed.usage_json, observer.usage_json());
    // the same bytes as the last message and as the reply of a stored row: the staged search text
    // (`search.rs`) never panics, never holds a NUL and stays within its bound
    if let Some(text) = crate::search::search_text(&[data], None, Some(data)) {
        assert!(!text.contains('\0'));
        assert!(text.chars().count() <= 100_000);
    }
    // and as the first message: the staged title holds no NUL, no run of spaces, at most 120 characters
    if let Some(Some(title)) = crate::search::title(&[data]) {
        assert!(!title.contains('\0') && !title.contains("  "));
        assert!(!title.is_empty() && title.chars().count() <= 120);
    }
}

fn within(part: &[u8], body: &[u8]) -> bool {
    let (start, end) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
    let (lo, hi) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    lo <= start && end <= hi
}

/// Any bytes as a `/v1/messages` body through the request analysis: never a panic, only `Ok` or an
/// error; what it returns is consistent (each part keyed by the hash of its exact bytes, a slice of
/// the body; one role and one prefix hash per kept message; heads within their bound), the strict
/// checks hold when they pass, and the body rebuilt from the split splits to the same keys.
pub fn analyze_request(data: &[u8]) {
    crate::body::check_quick_read(data);
    let lenient = analyze(data, false);
    let strict = analyze(data, true);
    if let (Ok(strict), Err(e)) = (&strict, &lenient) {
        panic!(
            "strict passed where lenient failed: {e:?} / {:?}",
            strict.facts
        );
    }
    let Ok(analysis) = lenient else {
        return;
    };
    let (split, facts) = (&analysis.split, &analysis.facts);
    if let Ok(strict) = &strict {
        assert_eq!(strict.facts, *facts);
        assert_eq!(strict.split, *split);
        assert!(facts.model.as_deref().is_some_and(|m| !m.is_empty()));
        assert!(split.message_keys.is_some());
    }
    assert_eq!(split_body(data).expect("the analysis split it"), *split);
    for (key, _, part) in &split.parts {
        assert_eq!(*key, content_key(part));
        assert!(within(part, data), "a part is not a slice of the body");
    }
    assert_eq!(facts.prefix_hashes.len(), facts.kept_roles.len());
    assert!(facts.kept_roles.iter().all(|r| *r == b'u' || *r == b'a'));
    assert!(facts.kept_roles.len() <= facts.message_count);
    assert_eq!(
        facts.message_count,
        split.message_keys.as_ref().map_or(0, Vec::len)
    );
    for head in [
        &facts.system_head,
        &facts.first_user_head,
        &facts.last_user_head,
    ] {
        assert!(head.len() <= HEAD_BYTES, "head of {} bytes", head.len());
    }
    // Rebuild from the envelope and the parts (the last of a repeated field wins, as in JSON readers).
    let part = |key: &[u8; 16]| -> &[u8] {
        let found = split.parts.iter().find(|(k, _, _)| k == key);
        found.expect("every key has its part").2
    };
    let system = split.system_key.as_ref().map(part);
    let tools = split.tools_key.as_ref().map(part);
    let messages: Option<Vec<&[u8]>> = split
        .message_keys
        .as_ref()
        .map(|keys| keys.iter().map(part).collect());
    let rebuilt =
        join_body(&split.envelope, system, tools, messages.as_deref()).expect("the split rebuilds");
    let again = split_body(&rebuilt).expect("a rebuilt body splits");
    assert_eq!(again.envelope, split.envelope);
    assert_eq!(again.system_key, split.system_key);
    assert_eq!(again.tools_key, split.tools_key);
    assert_eq!(again.message_keys, split.message_keys);
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    /// Every target's committed corpus, through its check. A target without a corpus fails: the
    /// corpus is what makes this test mean something.
    #[test]
    fn every_corpus_passes_its_check() {
        type Check = fn(&[u8]);
        let targets: [(&str, Check); 6] = [
            ("safe_json", super::safe_json),
            ("safe_text", super::safe_text),
            ("copy_rows", super::copy_rows),
            ("sse_observer", super::sse_observer),
            ("analyze_request", super::analyze_request),
            ("reply", super::reply),
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        for (target, check) in targets {
            let dir = root.join(target);
            let mut inputs = 0;
            for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                let data = fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "{target}: {} fails its check",
                    path.display()
                );
                inputs += 1;
            }
            assert!(
                inputs >= 10,
                "{target}: only {inputs} corpus inputs in {}",
                dir.display()
            );
        }
    }
}
