use super::*;
use proptest::prelude::*;
use serde_json::json;

const REALISTIC: &[u8] = include_bytes!("../../tests/data/realistic_stream.sse");
const THINKING_ERROR: &[u8] = include_bytes!("../../tests/data/thinking_error_stream.sse");

type Outcome = (SseSummary, Option<Vec<u8>>, Option<Vec<u8>>, Repairs);

fn outcome(obs: &SseObserver) -> Outcome {
    (
        obs.summary().clone(),
        obs.message_json(),
        obs.usage_json(),
        obs.repairs(),
    )
}

fn observe_whole(stream: &[u8], cap: usize) -> Outcome {
    let mut obs = SseObserver::with_max_line_bytes(cap).unwrap();
    obs.feed(stream);
    outcome(&obs)
}

fn observe_split(stream: &[u8], cuts: &[usize], cap: usize) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut obs = SseObserver::with_max_line_bytes(cap).unwrap();
    let mut start = 0;
    let mut events = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        events += obs.feed(&stream[start..cut]);
        start = cut;
    }
    assert_eq!(events as u64, obs.summary().event_count);
    outcome(&obs)
}

fn with_line_endings(stream: &[u8], eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stream.len() * 2);
    for &b in stream {
        if b == b'\n' {
            out.extend_from_slice(eol);
        } else {
            out.push(b);
        }
    }
    out
}

fn message(obs: &SseObserver) -> Value {
    serde_json::from_slice(&obs.message_json().unwrap()).unwrap()
}

fn realistic() -> SseObserver {
    let mut obs = SseObserver::new();
    assert_eq!(obs.feed(REALISTIC), 15);
    obs
}

#[test]
fn message_start_fields() {
    let obs = realistic();
    let s = obs.summary();
    assert_eq!(
        s.message_id.as_deref(),
        Some("msg_01XFDUDYJgAACzvnptvVoYEL")
    );
    assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-6"));
    assert_eq!(s.role.as_deref(), Some("assistant"));
}

#[test]
fn usage_is_cumulative_and_merged() {
    let obs = realistic();
    let s = obs.summary();
    assert_eq!(s.input_tokens, 12);
    assert_eq!(s.cache_creation_input_tokens, 2048);
    assert_eq!(s.cache_read_input_tokens, 10240);
    assert_eq!(s.output_tokens, 89, "last message_delta wins, never summed");
    let usage: Value = serde_json::from_slice(&obs.usage_json().unwrap()).unwrap();
    assert_eq!(
        usage,
        json!({
            "input_tokens": 12,
            "cache_creation_input_tokens": 2048,
            "cache_read_input_tokens": 10240,
            "cache_creation": {"ephemeral_5m_input_tokens": 2048, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 89,
            "service_tier": "standard",
            "server_tool_use": {"web_search_requests": 0}
        })
    );
}

#[test]
fn message_delta_usage_replaces_not_adds() {
    let mut obs = SseObserver::new();
    obs.feed(b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n");
    obs.feed(
        b"data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":10}}\n\n",
    );
    obs.feed(b"data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":25,\"input_tokens\":null}}\n\n");
    assert_eq!(obs.summary().output_tokens, 25);
    assert_eq!(obs.summary().input_tokens, 3, "null never erases a count");
}

#[test]
fn stop_reason_and_counters() {
    let obs = realistic();
    let s = obs.summary();
    assert_eq!(s.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(s.stop_sequence, None);
    assert_eq!(s.event_count, 15);
    assert_eq!(s.malformed_events, 0);
    assert!(s.saw_message_stop);
    assert_eq!(s.content_blocks, 2);
    assert!(!s.overflowed);
    assert_eq!(s.error, None);
}

#[test]
fn tool_uses_listed() {
    let obs = realistic();
    assert_eq!(
        obs.summary().tool_uses,
        vec![ToolUse {
            id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
            name: "get_weather".into()
        }]
    );
}

#[test]
fn message_json_rebuilt() {
    let obs = realistic();
    let msg = message(&obs);
    assert_eq!(
        msg["content"],
        json!([
            {"type": "text", "text": "Okay, let me check the weather in São Paulo — 東京 too 🌦️."},
            {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
             "input": {"location": "São Paulo", "unit": "celsius"}}
        ])
    );
    assert_eq!(msg["stop_reason"], "tool_use");
    assert_eq!(msg["stop_sequence"], Value::Null);
    assert_eq!(msg["usage"]["output_tokens"], 89);
    assert_eq!(
        msg["usage"]["cache_creation"]["ephemeral_5m_input_tokens"],
        2048
    );
    assert_eq!(msg["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    // compact serialization, upstream key order kept
    let raw = obs.message_json().unwrap();
    assert!(raw.starts_with(b"{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\""));
    assert_eq!(serde_json::to_vec(&msg).unwrap(), raw);
}

#[test]
fn thinking_blocks_and_error_after_content() {
    let mut obs = SseObserver::new();
    obs.feed(THINKING_ERROR);
    let s = obs.summary();
    assert_eq!(
        s.error,
        Some(ApiError {
            error_type: "overloaded_error".into(),
            message: "Overloaded".into()
        })
    );
    assert!(!s.saw_message_stop);
    assert_eq!(s.stop_reason, None);
    assert_eq!(s.content_blocks, 3);
    let msg = message(&obs);
    assert_eq!(
        msg["content"],
        json!([
            {"type": "thinking", "thinking": "Let me think step by step.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "text", "text": "Partial"}
        ])
    );
    assert_eq!(msg["stop_reason"], Value::Null);
}

#[test]
fn tool_input_edge_cases() {
    let start = |i: u32| {
        format!("data: {{\"type\":\"content_block_start\",\"index\":{i},\"content_block\":{{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_{i}\",\"name\":\"web_search\",\"input\":{{}}}}}}\n\n")
    };
    let delta = |i: u32, p: &str| {
        format!("data: {{\"type\":\"content_block_delta\",\"index\":{i},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}\n\n", json!(p))
    };
    let stop = |i: u32| format!("data: {{\"type\":\"content_block_stop\",\"index\":{i}}}\n\n");
    let mut s = String::from(
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[]}}\n\n",
    );
    s += &start(0);
    s += &stop(0); // no deltas: input stays {}
    s += &start(1);
    s += &delta(1, "{\"query\": \"unterminated");
    s += &stop(1); // does not parse: raw string kept
    let mut obs = SseObserver::new();
    obs.feed(s.as_bytes());
    let msg = message(&obs);
    assert_eq!(msg["content"][0]["input"], json!({}));
    assert_eq!(
        msg["content"][1]["input"],
        json!("{\"query\": \"unterminated")
    );
    assert_eq!(obs.summary().tool_uses.len(), 2);
    assert_eq!(obs.summary().tool_uses[1].name, "web_search");
    assert!(obs.usage_json().is_none());
}

#[test]
fn crlf_and_cr_line_endings() {
    let whole = observe_whole(REALISTIC, DEFAULT_MAX_LINE_BYTES);
    for eol in [&b"\r\n"[..], b"\r"] {
        let converted = with_line_endings(REALISTIC, eol);
        assert_eq!(observe_whole(&converted, DEFAULT_MAX_LINE_BYTES), whole);
        let cuts: Vec<usize> = (0..converted.len()).collect();
        assert_eq!(
            observe_split(&converted, &cuts, DEFAULT_MAX_LINE_BYTES),
            whole
        );
    }
}

#[test]
fn cr_then_lf_in_next_chunk_is_one_line_ending() {
    let mut obs = SseObserver::new();
    obs.feed(b"data: {\"type\":\"ping\"}\r");
    obs.feed(b"\n");
    assert_eq!(
        obs.summary().event_count,
        0,
        "CRLF split across chunks is not a blank line"
    );
    assert_eq!(obs.feed(b"\r\n"), 1);
}

#[test]
fn comments_ids_retry_and_bom_ignored() {
    let mut stream = b"\xEF\xBB\xBF: keep-alive\nid: 7\nretry: 1000\n".to_vec();
    stream.extend_from_slice(
        b"event: message_stop\n:comment inside\ndata:{\"type\":\"message_stop\"}\n\n",
    );
    let mut obs = SseObserver::new();
    assert_eq!(obs.feed(&stream), 1);
    assert!(obs.summary().saw_message_stop);
    assert_eq!(obs.summary().malformed_events, 0);
}

#[test]
fn multi_line_data_joined_with_newline() {
    let stream = b"event: error\ndata: {\"type\": \"error\",\ndata:  \"error\": {\"type\": \"api_error\",\ndata: \"message\": \"boom\"}}\n\n";
    let mut obs = SseObserver::new();
    assert_eq!(obs.feed(stream), 1);
    assert_eq!(
        obs.summary().error,
        Some(ApiError {
            error_type: "api_error".into(),
            message: "boom".into()
        })
    );
}

#[test]
fn event_name_used_when_type_missing_and_unknown_events_tolerated() {
    let mut obs = SseObserver::new();
    obs.feed(b"event: message_stop\ndata: {}\n\nevent: brand_new\ndata: {\"type\":\"brand_new\",\"x\":[1]}\n\n");
    assert!(obs.summary().saw_message_stop);
    assert_eq!(obs.summary().event_count, 2);
    assert_eq!(obs.summary().malformed_events, 0);
}

#[test]
fn malformed_json_counted_and_skipped() {
    let mut obs = SseObserver::new();
    let n = obs.feed(b"data: {not json\n\ndata: [1,2]\n\ndata:\n\nevent: x\n\ndata: {\"type\":\"message_stop\"}\n\n");
    assert_eq!(n, 4, "an event without data lines is not dispatched");
    assert_eq!(obs.summary().malformed_events, 3);
    assert!(obs.summary().saw_message_stop);
    assert!(obs.message_json().is_none());
}

#[test]
fn incomplete_trailing_event_not_dispatched() {
    let mut obs = SseObserver::new();
    assert_eq!(obs.feed(b"data: {\"type\":\"message_stop\"}\n"), 0);
    assert!(!obs.summary().saw_message_stop);
    assert_eq!(obs.feed(b"\n"), 1);
}

#[test]
fn overflowing_line_is_dropped_with_its_event() {
    let mut obs = SseObserver::with_max_line_bytes(32).unwrap();
    obs.feed(b"data: {\"type\":\"message_stop\", \"pad\": \"");
    obs.feed(&[b'x'; 100]);
    assert!(obs.summary().overflowed);
    assert!(obs.line.is_empty(), "nothing buffered once overflowed");
    obs.feed(b"\"}\n\n");
    assert_eq!(obs.summary().event_count, 0);
    assert!(!obs.summary().saw_message_stop);
    assert_eq!(obs.feed(b"data: {\"type\":\"message_stop\"}\n\n"), 1);
    assert!(obs.summary().saw_message_stop);
}

#[test]
fn overflowing_data_is_dropped() {
    let mut obs = SseObserver::with_max_line_bytes(22).unwrap();
    obs.feed(b"data: {\"type\":\ndata: \"message_stop\"}\n\n");
    assert!(obs.line.is_empty());
    assert!(obs.summary().overflowed);
    assert_eq!(obs.summary().event_count, 0);
}

#[test]
fn zero_cap_is_rejected() {
    assert!(matches!(
        SseObserver::with_max_line_bytes(0),
        Err(crate::NexusError::InvalidArgument(_))
    ));
}

#[test]
fn single_byte_feeding_matches_whole() {
    for stream in [REALISTIC, THINKING_ERROR] {
        let cuts: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(
            observe_split(stream, &cuts, DEFAULT_MAX_LINE_BYTES),
            observe_whole(stream, DEFAULT_MAX_LINE_BYTES)
        );
    }
}

fn sse_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"data"[..]),
        Just(&b"event"[..]),
        Just(&b"data: "[..]),
        Just(&b"{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}"[..]),
        Just(&b"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"n\"}}"[..]),
        Just(&b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}"[..]),
        Just(&b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}"[..]),
        // Hostile data the failure path repairs.
        Just(&b"{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\"}}"[..]),
        Just(&b"{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"\\ud800\xff\"}}"[..]),
        Just(&b"{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":123456789012345678901,\"input_tokens\":1e999}}"[..]),
        Just(&b"{\"type\":\"ping\",\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"[..]), // past serde's 128 levels
        Just(&b"\xEF\xBB\xBF"[..]),
        Just("é東🌦".as_bytes()),
        Just(&b"\xff\xfe"[..]),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(piece, 0..60).prop_map(|ps| ps.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_of_valid_stream_matches_whole(
        which in 0usize..6,
        cuts in proptest::collection::vec(any::<usize>(), 0..64),
    ) {
        let base = if which % 2 == 0 { REALISTIC } else { THINKING_ERROR };
        let stream = match which / 2 {
            0 => base.to_vec(),
            1 => with_line_endings(base, b"\r\n"),
            _ => with_line_endings(base, b"\r"),
        };
        let whole = observe_whole(&stream, DEFAULT_MAX_LINE_BYTES);
        prop_assert_eq!(observe_split(&stream, &cuts, DEFAULT_MAX_LINE_BYTES), whole);
    }

    #[test]
    fn any_split_of_any_bytes_matches_whole_without_panic(
        stream in sse_ish_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..32),
        cap in prop_oneof![Just(DEFAULT_MAX_LINE_BYTES), 1usize..80],
    ) {
        let whole = observe_whole(&stream, cap);
        prop_assert_eq!(observe_split(&stream, &cuts, cap), whole);
    }
}

// --- hostile event data: repaired and kept, never silently dropped ------------------------------

fn names(obs: &SseObserver) -> Vec<&'static str> {
    obs.repairs().names().collect()
}

/// `[[[...]]]` nested `n` deep.
fn nested(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n";
const TEXT_START: &str = "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const TOOL_START: &str = "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"t\",\"input\":{}}}\n\n";
const END: &str = "data: {\"type\":\"content_block_stop\",\"index\":0}\n\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\ndata: {\"type\":\"message_stop\"}\n\n";

fn text_delta(text_json: &[u8]) -> Vec<u8> {
    let mut out = b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":".to_vec();
    out.extend_from_slice(text_json);
    out.extend_from_slice(b"}}\n\n");
    out
}

/// A whole stream whose text block gets the deltas `a`, `hostile` and `z`.
fn text_stream(hostile: &[u8]) -> Vec<u8> {
    let mut s = START.as_bytes().to_vec();
    s.extend_from_slice(TEXT_START.as_bytes());
    s.extend(text_delta(b"\"a\""));
    s.extend_from_slice(hostile);
    s.extend(text_delta(b"\"z\""));
    s.extend_from_slice(END.as_bytes());
    s
}

fn observe(stream: &[u8]) -> SseObserver {
    let mut obs = SseObserver::new();
    obs.feed(stream);
    // Byte by byte gives the same result, repairs included.
    let cuts: Vec<usize> = (0..stream.len()).collect();
    assert_eq!(
        observe_split(stream, &cuts, DEFAULT_MAX_LINE_BYTES),
        outcome(&obs)
    );
    obs
}

/// The message as any reader gets it (it may nest up to MAX_JSON_DEPTH + 1 levels).
fn message_deep(obs: &SseObserver) -> Value {
    let raw = obs.message_json().unwrap();
    let mut de = serde_json::Deserializer::from_slice(&raw);
    de.disable_recursion_limit();
    serde::Deserialize::deserialize(&mut de).unwrap()
}

fn assert_rest_kept(obs: &SseObserver) {
    let s = obs.summary();
    assert_eq!(s.message_id.as_deref(), Some("msg_1"));
    assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!((s.input_tokens, s.output_tokens), (7, 5));
    assert!(s.saw_message_stop);
    assert_eq!(s.malformed_events, 0);
}

#[test]
fn valid_streams_report_no_repairs() {
    for stream in [REALISTIC, THINKING_ERROR] {
        let mut obs = SseObserver::new();
        obs.feed(stream);
        assert_eq!(obs.repairs(), Repairs::NONE);
    }
    let obs = observe(&text_stream(&text_delta(b"\"m\\u00e9\\ud83d\\ude00\"")));
    assert_eq!(message(&obs)["content"][0]["text"], "amé😀z");
    assert!(names(&obs).is_empty());
    // serde_json stops at 128 levels; at exactly that depth the data needs no repair either.
    let at_limit = format!(
        "data: {{\"type\":\"ping\",\"x\":{}}}\n\n",
        nested(crate::safe::MAX_JSON_DEPTH - 1)
    );
    let obs = observe(at_limit.as_bytes());
    assert_eq!(obs.summary().malformed_events, 0);
    assert!(names(&obs).is_empty());
}

#[test]
fn lone_surrogate_escape_in_a_text_delta_is_kept_visibly() {
    let obs = observe(&text_stream(&text_delta(b"\"b\\ud800c\\udc00\"")));
    assert_eq!(
        message(&obs)["content"][0]["text"],
        "ab\\ud800c\\udc00z",
        "the delta is kept, its lone surrogates as visible text"
    );
    assert_rest_kept(&obs);
    assert_eq!(names(&obs), ["surrogate_escaped"]);
}

#[test]
fn invalid_utf8_in_a_text_delta_is_kept_visibly() {
    let obs = observe(&text_stream(&text_delta(b"\"b\xffc\xed\xa0\x80\"")));
    assert_eq!(message(&obs)["content"][0]["text"], "ab\\xFFc\\ud800z");
    assert_rest_kept(&obs);
    assert_eq!(names(&obs), ["surrogate_escaped", "invalid_utf8"]);
    // A raw control byte (which JSON forbids in a string) keeps its meaning.
    let obs = observe(&text_stream(&text_delta(b"\"tab\there\"")));
    assert_eq!(message(&obs)["content"][0]["text"], "atab\therez");
    assert_eq!(names(&obs), ["control_escaped"]);
}

#[test]
fn deep_nesting_in_a_text_delta_keeps_the_text() {
    let hostile = format!(
        "data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"b\",\"pad\":{}}}}}\n\n",
        nested(100_000)
    );
    let obs = observe(&text_stream(hostile.as_bytes()));
    assert_eq!(message(&obs)["content"][0]["text"], "abz");
    assert_rest_kept(&obs);
    assert_eq!(names(&obs), ["depth_limited"]);
}

#[test]
fn deep_nesting_in_a_tool_input_json_delta_keeps_the_input() {
    let delta = |partial: &str, pad: &str| {
        format!(
            "data: {{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}{pad}}}}}\n\n",
            json!(partial)
        )
    };
    let mut s = String::from(START);
    s += TOOL_START;
    s += &delta("{\"city\": ", "");
    s += &delta("\"Paris\"}", &format!(",\"pad\":{}", nested(100_000)));
    s += "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    s += END;
    let obs = observe(s.as_bytes());
    assert_eq!(
        message(&obs)["content"][0]["input"],
        json!({"city": "Paris"})
    );
    assert_rest_kept(&obs);
    assert_eq!(names(&obs), ["depth_limited"]);

    // The tool input itself nested 100,000 deep: kept as JSON down to the limit, the rest as text.
    let mut s = String::from(START);
    s += TOOL_START;
    s += &delta(&nested(100_000), "");
    s += "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    s += END;
    let mut obs = SseObserver::new();
    obs.feed(s.as_bytes());
    let input = &message_deep(&obs)["content"][0]["input"];
    let mut depth = 0;
    let mut v = input;
    while let Value::Array(items) = v {
        depth += 1;
        v = &items[0];
    }
    assert_eq!(depth, crate::safe::MAX_JSON_DEPTH);
    assert_eq!(v.as_str().map(str::len), Some(2 * (100_000 - depth)));
    assert_rest_kept(&obs);
    assert_eq!(names(&obs), ["depth_limited"]);
}

#[test]
fn deep_nesting_in_message_start_keeps_the_message() {
    let start = START.replace(
        "\"content\":[]",
        &format!("\"content\":[],\"container\":{}", nested(100_000)),
    );
    let mut s = start;
    s.push_str(TEXT_START);
    let mut stream = s.into_bytes();
    stream.extend(text_delta(b"\"b\""));
    stream.extend_from_slice(END.as_bytes());
    let obs = observe(&stream);
    let msg = message_deep(&obs);
    assert_eq!(msg["id"], "msg_1");
    assert_eq!(msg["content"][0]["text"], "b");
    assert!(msg["container"][0][0].is_array());
    assert_rest_kept(&obs);
    assert_eq!(names(&obs), ["depth_limited"]);
}

#[test]
fn huge_usage_numbers_are_kept_exactly_and_counts_saturate() {
    // 1e999999 has no f64 value: the event is repaired, the number kept as the string of its text.
    let s = START.replace("\"input_tokens\":7", "\"input_tokens\":1e999999");
    let obs = observe(s.as_bytes());
    let msg = message(&obs);
    assert_eq!(msg["id"], "msg_1");
    assert_eq!(msg["usage"]["input_tokens"], "1e999999");
    let usage: Value = serde_json::from_slice(&obs.usage_json().unwrap()).unwrap();
    assert_eq!(
        usage,
        json!({"input_tokens": "1e999999", "output_tokens": 1})
    );
    assert_eq!(obs.summary().input_tokens, 0, "a string is not a count");
    assert_eq!(obs.summary().output_tokens, 1);
    assert_eq!(names(&obs), ["number_as_text"]);

    // 30 digits: a count past u64 saturates (int_clamped); the usage JSON keeps the exact digits.
    let big = "123456789012345678901234567890";
    let mut s = START.to_owned();
    s += &format!(
        "data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{big},\"cache_read_input_tokens\":1e300,\"cache_creation\":{{\"ephemeral_5m_input_tokens\":{big}}}}}}}\n\n"
    );
    let obs = observe(s.as_bytes());
    let summary = obs.summary();
    assert_eq!(summary.output_tokens, u64::MAX);
    assert_eq!(summary.cache_read_input_tokens, u64::MAX);
    assert_eq!(summary.input_tokens, 7);
    assert_eq!(summary.stop_reason.as_deref(), Some("end_turn"));
    let usage = String::from_utf8(obs.usage_json().unwrap()).unwrap();
    assert_eq!(
        usage,
        format!("{{\"input_tokens\":7,\"output_tokens\":\"{big}\",\"cache_read_input_tokens\":1e+300,\"cache_creation\":{{\"ephemeral_5m_input_tokens\":\"{big}\"}}}}")
    );
    assert_eq!(message(&obs)["usage"]["output_tokens"], big);
    assert_eq!(names(&obs), ["number_as_text", "int_clamped"]);

    // A float that is a whole number is a count; a fraction or a negative number is not.
    let mut s = START.to_owned();
    s += "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":12.0,\"input_tokens\":2.5,\"cache_read_input_tokens\":-3}}\n\n";
    let obs = observe(s.as_bytes());
    let summary = obs.summary();
    assert_eq!(
        (
            summary.output_tokens,
            summary.input_tokens,
            summary.cache_read_input_tokens
        ),
        (12, 7, 0)
    );
    assert_eq!(
        obs.usage_json().unwrap(),
        b"{\"input_tokens\":2.5,\"output_tokens\":12.0,\"cache_read_input_tokens\":-3}"
    );
    assert!(names(&obs).is_empty());
}

#[test]
fn garbage_event_is_counted_flagged_and_the_rest_kept() {
    let obs = observe(&text_stream(
        b"data: {\"type\":\"content_block_delta\",\"index\":0,,}\n\ndata: [DONE]\n\n",
    ));
    assert_eq!(message(&obs)["content"][0]["text"], "az");
    let s = obs.summary();
    assert_eq!(s.malformed_events, 2);
    assert_eq!((s.input_tokens, s.output_tokens), (7, 5));
    assert!(s.saw_message_stop);
    assert_eq!(names(&obs), ["not_json"]);
    // Valid JSON that is not an object is malformed too, but nothing was repaired.
    let obs = observe(b"data: [1,2]\n\ndata: \"text\"\n\n");
    assert_eq!(obs.summary().malformed_events, 2);
    assert!(names(&obs).is_empty());
}

#[test]
fn unparsable_tool_input_is_kept_as_text_and_flagged() {
    let mut obs = SseObserver::new();
    obs.feed(START.as_bytes());
    obs.feed(TOOL_START.as_bytes());
    obs.feed(b"data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\": \\\"\\\\ud800\\\"}\"}}\n\n");
    // Not stopped yet: rendered (and its repairs reported) from what arrived.
    assert_eq!(
        message(&obs)["content"][0]["input"],
        json!({"q": "\\ud800"})
    );
    assert_eq!(names(&obs), ["surrogate_escaped"]);
    obs.feed(b"data: {\"type\":\"content_block_stop\",\"index\":1}\n\n");
    assert_eq!(
        message(&obs)["content"][0]["input"],
        json!({"q": "\\ud800"})
    );
    assert_eq!(names(&obs), ["surrogate_escaped"]);
    // A truncated input stays the string of its text, now flagged.
    let mut obs = SseObserver::new();
    obs.feed(START.as_bytes());
    obs.feed(TOOL_START.as_bytes());
    obs.feed(b"data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\": 1\"}}\n\n");
    assert_eq!(message(&obs)["content"][0]["input"], json!("{\"q\": 1"));
    assert_eq!(names(&obs), ["not_json"]);
}

/// A stream whose message_start carries `start_usage` and whose message_delta carries `delta_usage`.
fn usage_stream(start_usage: &str, delta_usage: &str) -> Vec<u8> {
    format!(
        "data: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{start_usage}}}}}\n\n\
         data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{delta_usage}}}\n\n"
    )
    .into_bytes()
}

#[test]
fn exact_digits_kept_wherever_the_usage_holds_them() {
    let big = "123456789012345678901234567890";
    // in message_start's usage (not only message_delta's)
    let obs = observe(&usage_stream(
        &format!("{{\"input_tokens\":{big},\"output_tokens\":1}}"),
        "{\"output_tokens\":2}",
    ));
    assert_eq!(obs.summary().input_tokens, u64::MAX);
    let usage = String::from_utf8(obs.usage_json().unwrap()).unwrap();
    assert_eq!(
        usage,
        format!("{{\"input_tokens\":\"{big}\",\"output_tokens\":2}}")
    );
    // nested only in an object, or only in an array, of the usage
    for (nested, expect) in [
        (
            format!("{{\"output_tokens\":3,\"cache_creation\":{{\"ephemeral_1h_input_tokens\":{big}}}}}"),
            format!("{{\"input_tokens\":7,\"output_tokens\":3,\"cache_creation\":{{\"ephemeral_1h_input_tokens\":\"{big}\"}}}}"),
        ),
        (
            format!("{{\"output_tokens\":3,\"iterations\":[{big}]}}"),
            format!("{{\"input_tokens\":7,\"output_tokens\":3,\"iterations\":[\"{big}\"]}}"),
        ),
    ] {
        let obs = observe(&usage_stream("{\"input_tokens\":7}", &nested));
        assert_eq!(
            String::from_utf8(obs.usage_json().unwrap()).unwrap(),
            expect
        );
        assert_eq!(obs.summary().output_tokens, 3);
    }
}

#[test]
fn a_tool_block_without_input_deltas_needs_no_repair() {
    let mut s = START.as_bytes().to_vec();
    s.extend_from_slice(TOOL_START.as_bytes());
    s.extend_from_slice(b"data: {\"type\":\"content_block_stop\",\"index\":1}\n\n");
    let obs = observe(&s);
    assert!(obs.repairs().is_empty());
    assert_eq!(message(&obs)["content"][0]["input"], json!({}));
}

#[test]
fn citations_of_the_start_and_of_deltas_are_kept_in_order() {
    let mut s = START.as_bytes().to_vec();
    s.extend_from_slice(b"data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\",\"citations\":[{\"n\":0}]}}\n\n");
    s.extend_from_slice(b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"citations_delta\",\"citation\":{\"n\":1}}}\n\n");
    s.extend_from_slice(END.as_bytes());
    let obs = observe(&s);
    assert_eq!(
        message(&obs)["content"][0]["citations"],
        json!([{"n": 0}, {"n": 1}])
    );
}

#[test]
fn deltas_find_their_block_by_index_when_blocks_interleave() {
    let mut s = START.as_bytes().to_vec();
    s.extend_from_slice(TEXT_START.as_bytes());
    s.extend_from_slice(TOOL_START.as_bytes());
    s.extend(text_delta(b"\"late text\""));
    s.extend_from_slice(b"data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n");
    s.extend_from_slice(END.as_bytes());
    let obs = observe(&s);
    let msg = message(&obs);
    assert_eq!(msg["content"][0]["text"], "late text");
    assert_eq!(msg["content"][1]["input"], json!({"a": 1}));
}

#[test]
fn the_line_cap_is_what_was_asked() {
    assert_eq!(DEFAULT_MAX_LINE_BYTES, 16 * 1024 * 1024);
    assert_eq!(SseObserver::new().max_line_bytes(), DEFAULT_MAX_LINE_BYTES);
    assert_eq!(
        SseObserver::with_max_line_bytes(7)
            .unwrap()
            .max_line_bytes(),
        7
    );
}

fn capped(cap: usize, chunks: &[&[u8]]) -> SseObserver {
    let mut obs = SseObserver::with_max_line_bytes(cap).unwrap();
    for chunk in chunks {
        obs.feed(chunk);
    }
    obs
}

#[test]
fn a_line_of_exactly_the_cap_is_kept_one_more_byte_is_not() {
    // completed within one chunk
    let fits = capped(8, &[b"data: ab\n\n"]);
    assert_eq!(
        (fits.summary().overflowed, fits.summary().event_count),
        (false, 1)
    );
    let over = capped(8, &[b"data: abc\n\n"]);
    assert_eq!(
        (over.summary().overflowed, over.summary().event_count),
        (true, 0)
    );
    // buffered across chunks: a partial line of exactly the cap, then its end
    let fits = capped(8, &[b"data: ab", b"\n\n"]);
    assert_eq!(
        (fits.summary().overflowed, fits.summary().event_count),
        (false, 1)
    );
    let fits = capped(8, &[b"data: a", b"b\n\n"]);
    assert!(!fits.summary().overflowed);
    let over = capped(8, &[b"data: ab", b"c\n\n"]);
    assert_eq!(
        (over.summary().overflowed, over.summary().event_count),
        (true, 0)
    );
}

#[test]
fn joined_data_of_exactly_the_cap_is_kept_newlines_counted() {
    // "ab\nab\nab": 8 bytes with the two joining newlines
    let fits = capped(8, &[b"data: ab\ndata: ab\ndata: ab\n\n"]);
    assert_eq!(
        (fits.summary().overflowed, fits.summary().event_count),
        (false, 1)
    );
    let fits = capped(8, &[b"data: ab\ndata: ab\ndata: a\n\n"]);
    assert!(!fits.summary().overflowed);
    // "ab\nab\na\na" would be 9
    let over = capped(8, &[b"data: ab\ndata: ab\ndata: a\ndata: a\n\n"]);
    assert_eq!(
        (over.summary().overflowed, over.summary().event_count),
        (true, 0)
    );
}

#[test]
fn stop_sequence_and_the_usage_value() {
    let mut s = START.to_owned();
    s += "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"\\n\\nHuman:\"},\"usage\":{\"output_tokens\":5}}\n\n";
    let obs = observe(s.as_bytes());
    assert_eq!(obs.summary().stop_sequence.as_deref(), Some("\n\nHuman:"));
    assert_eq!(
        obs.usage_value(),
        Some(json!({"input_tokens": 7, "output_tokens": 5}))
    );
    assert_eq!(SseObserver::new().usage_value(), None);
}
