use super::*;
use crate::conversation::prompt_key;
use serde_json::json;

fn facts(body: &Value) -> RequestFacts {
    let bytes = serde_json::to_vec(body).unwrap();
    analyze_request(&bytes, true).unwrap().facts
}

fn body(messages: Value) -> Value {
    json!({"model": "m", "max_tokens": 1, "messages": messages})
}

#[test]
fn string_and_block_content_hash_the_same_and_cache_control_is_ignored() {
    let a = facts(&body(json!([{"role": "user", "content": "hello"}])));
    let b = facts(&body(json!([{"role": "user", "content": [
        {"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}
    ]}])));
    assert_eq!(a.prefix_hashes, b.prefix_hashes);
    assert_eq!(a.prefix_hashes.len(), 1);
}

#[test]
fn a_child_extends_its_parent() {
    let parent = facts(&body(json!([
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                                      {"type": "text", "text": "do it"}]},
        {"role": "system", "content": "injected"}
    ])));
    let child = facts(&body(json!([
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>other ctx</system-reminder>"},
                                      {"type": "text", "text": "do it", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"b": 1, "a": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}
    ])));
    assert_eq!(parent.prefix_hashes.len(), 1);
    assert_eq!(parent.system_message_count, 1);
    assert_eq!(child.prefix_hashes.len(), 3);
    assert_eq!(child.prefix_hashes[0], parent.prefix_hashes[0]);
    assert_eq!(child.kept_roles, b"uau".to_vec());
    // the same turn with the tool input changed and the thinking block dropped
    let again = facts(&body(json!([
        {"role": "user", "content": "do it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"a": "x", "b": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}]}]}
    ])));
    assert_eq!(again.prefix_hashes[..2], child.prefix_hashes[..2]);
    // a string tool_result and a one-text-block tool_result are the same too
    assert_eq!(again.prefix_hashes, child.prefix_hashes);
}

#[test]
fn different_content_gives_different_hashes() {
    let a = facts(&body(json!([{"role": "user", "content": "a"}])));
    let b = facts(&body(json!([{"role": "user", "content": "b"}])));
    let c = facts(&body(json!([{"role": "assistant", "content": "a"}])));
    assert_ne!(a.prefix_hashes, b.prefix_hashes);
    assert_ne!(a.prefix_hashes, c.prefix_hashes);
}

#[test]
fn repeated_tool_ids_drop_the_whole_message_and_empty_messages_are_skipped() {
    let once = facts(&body(json!([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}
    ])));
    let twice = facts(&body(json!([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]},
        {"role": "user", "content": "<system-reminder>only a reminder</system-reminder>"}
    ])));
    assert_eq!(once.prefix_hashes, twice.prefix_hashes);
    assert_eq!(twice.message_count, 6);
}

#[test]
fn system_prompt_hash_ignores_the_billing_line_and_flags_sub_agents() {
    let system = |billing: &str| {
        json!({"model": "m", "messages": [], "system": [
            {"type": "text", "text": billing},
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Main prompt", "cache_control": {"type": "ephemeral"}}
        ]})
    };
    let a = facts(&system(
        "x-anthropic-billing-header: cc_version=2.1.330.a1b; cc_entrypoint=cli;",
    ));
    let b = facts(&system("x-anthropic-billing-header: cc_version=2.1.330.ff0; cc_entrypoint=cli; cc_is_subagent=true;"));
    assert_eq!(a.system_hash, b.system_hash);
    assert!(a.system_hash.is_some());
    assert!(!a.is_subagent);
    assert!(b.is_subagent);
    assert_eq!(a.system_block_count, 3);
    assert_eq!(a.system_head, "You are Claude Code.\nMain prompt");
    let plain = facts(&json!({"model": "m", "messages": [], "system": "Be brief."}));
    assert_eq!(plain.system_block_count, 1);
    assert_eq!(
        plain.system_hash,
        Some(xxh3_128(b"Be brief.").to_be_bytes())
    );
}

#[test]
fn first_user_text_matches_a_spawning_prompt_and_continuations_are_seen() {
    let prompt = "Find every TODO in src/\n\nReport file:line.";
    let sub = facts(&body(json!([
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\nAs you answer...\n</system-reminder>\n"},
            {"type": "text", "text": prompt}]},
        {"role": "system", "content": "x"}
    ])));
    assert_eq!(sub.first_user_key, Some(prompt_key(prompt)));
    assert_eq!(sub.first_user_head, prompt);
    assert!(sub.continuation_text.is_none());
    let cont = facts(&body(json!([{"role": "user", "content":
        "This session is being continued from a previous conversation that ran out of context. Summary: ..."}])));
    assert!(cont
        .continuation_text
        .unwrap()
        .starts_with(CONTINUATION_MARKER));
}

#[test]
fn strict_checks_name_the_field() {
    let err = |b: &[u8]| match analyze_request(b, true) {
        Err(NexusError::InvalidRequest(msg)) => msg,
        other => panic!("expected an InvalidRequest, got {other:?}"),
    };
    assert!(err(b"").contains("empty"));
    assert!(err(b"{nope").contains("not valid JSON"));
    assert!(err(b"[1]").contains("must be a JSON object"));
    assert!(err(br#"{"messages": []}"#).starts_with("model:"));
    assert!(err(br#"{"model": "", "messages": []}"#).starts_with("model:"));
    assert!(err(br#"{"model": "m"}"#).starts_with("messages:"));
    assert!(err(br#"{"model": "m", "messages": {}}"#).starts_with("messages:"));
    assert!(err(br#"{"model": "m", "messages": [], "stream": "yes"}"#).starts_with("stream:"));
    // not strict: the same bodies are analysed, never refused for their fields
    assert!(analyze_request(br#"{"model": "m"}"#, false).is_ok());
}

#[test]
fn malformed_messages_never_fail_the_request() {
    let f = facts(&body(json!([
        1, {"role": "user"}, {"role": "user", "content": 5}, {"role": "user", "content": [3, {"type": "text", "text": 7}]},
        {"role": "user", "content": "fine"}
    ])));
    assert_eq!(f.message_count, 5);
    assert!(!f.prefix_hashes.is_empty());
}

#[test]
fn the_split_is_the_same_as_split_body() {
    let raw = serde_json::to_vec(
        &json!({"model": "m", "system": "s", "tools": [{"name": "t"}],
        "messages": [{"role": "user", "content": "a"}], "stream": true}),
    )
    .unwrap();
    let analysis = analyze_request(&raw, true).unwrap();
    assert_eq!(analysis.split, crate::body::split_body(&raw).unwrap());
    assert!(analysis.facts.has_tools);
    assert_eq!(analysis.facts.stream, Some(true));
    assert_eq!(analysis.facts.model.as_deref(), Some("m"));
}

#[test]
fn a_tool_call_is_known_by_its_id_not_its_re_sent_input() {
    let turn = |input: Value, id: &str| {
        facts(&body(json!([
            {"role": "user", "content": "edit it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "Edit", "input": input}]}
        ])))
        .prefix_hashes
    };
    let sent = json!({"file_path": "a.py", "old_string": "x", "new_string": "y"});
    let resent =
        json!({"replace_all": false, "file_path": "a.py", "old_string": "x", "new_string": "y"});
    assert_eq!(
        turn(sent.clone(), "toolu_1"),
        turn(resent.clone(), "toolu_1")
    );
    assert_ne!(turn(sent.clone(), "toolu_1"), turn(sent.clone(), "toolu_2"));
    assert_ne!(turn(sent, ""), turn(resent, "")); // without an id the input is all there is
}

/// Found by the `analyze_request` fuzz target: with a field given twice, the facts came from both
/// copies while the stored body (the split, like every JSON reader) keeps the last one only.
#[test]
fn a_repeated_field_is_read_as_its_last_copy_like_the_stored_body() {
    let twice = br#"{"system":"x-anthropic-billing-header: cc_is_subagent=true;","model":"m",
        "messages":[{"role":"user","content":"first copy"},{"role":"system","content":"s"}],
        "system":"plain","stream":"no","stream":true,
        "messages":[{"role":"user","content":"second copy"}]}"#;
    let once = br#"{"model":"m","system":"plain","stream":true,"messages":[{"role":"user","content":"second copy"}]}"#;
    let (twice, once) = (
        analyze_request(twice, true).unwrap(),
        analyze_request(once, true).unwrap(),
    );
    assert_eq!(twice.facts, once.facts);
    assert_eq!(twice.split.message_keys, once.split.message_keys);
    assert_eq!(twice.facts.kept_roles.len(), twice.facts.message_count);
}

#[test]
fn a_last_user_turn_with_a_block_appended_also_hashes_without_it() {
    // Claude Code 2.1.197's `/compact`: the last turn re-sent without its reply, the prompt appended.
    let turn = facts(&body(json!([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "third", "cache_control": {"type": "ephemeral"}}]}
    ])));
    let compaction = facts(&body(json!([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "third\n"},
                                      {"type": "text", "text": "Your task is to create a detailed summary"}]}
    ])));
    assert_eq!(turn.trimmed_hash, None); // one block: nothing to leave out
    assert_eq!(compaction.trimmed_hash, turn.prefix_hashes.last().copied());
    assert_ne!(compaction.prefix_hashes.last(), turn.prefix_hashes.last());
    // only the last kept message counts, and only a user one
    let answered = facts(&body(json!([
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ])));
    assert_eq!(answered.trimmed_hash, None);
}

/// A system prompt's facts come from the cache from its second request on: the same as read afresh
/// (the billing line's sub-agent flag, the block count, the hash and head without the reminder).
#[test]
fn system_facts_from_the_cache_are_those_read() {
    let body = br#"{"model":"m","system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=1.abc; cc_is_subagent=true;"},{"type":"text","text":"You are\r\n  helpful <system-reminder>r</system-reminder>"}],"messages":[]}"#;
    let key = crate::body::split_body(body).unwrap().system_key.unwrap();
    super::SYSTEMS.lock().unwrap().remove(&key);
    let read = analyze_request(body, true).unwrap().facts;
    assert!(super::SYSTEMS.lock().unwrap().contains_key(&key));
    let cached = analyze_request(body, true).unwrap().facts;
    assert_eq!(read, cached);
    assert!(read.is_subagent);
    assert_eq!(read.system_block_count, 2);
    assert_eq!(read.system_head, "You are\n  helpful");
    // another billing hex: another cache entry, the same hash
    let other = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("1.abc", "1.def");
    let other = analyze_request(other.as_bytes(), true).unwrap().facts;
    assert_eq!(other.system_hash, read.system_hash);
}

/// The recorded Claude Code sessions (their histories repeat turn after turn, tool loops, a
/// compaction, sub-agents, forks): every request's facts are the same whether its messages come from
/// the memo of earlier requests or are read afresh.
#[test]
fn message_digests_from_the_memo_are_those_read() {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/claude_code");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|f| f.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-messages.json"))
        .collect();
    files.sort();
    assert!(files.len() > 40, "{} fixture requests", files.len());
    let clear = || super::MESSAGES.lock().unwrap().digests.clear();
    clear();
    let mut kept = 0;
    for file in &files {
        let recorded: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let body = serde_json::to_vec(&recorded["body"]).unwrap();
        let warm = analyze_request(&body, true).unwrap().facts;
        kept = kept.max(super::MESSAGES.lock().unwrap().digests.len());
        let saved = std::mem::take(&mut super::MESSAGES.lock().unwrap().digests);
        let cold = analyze_request(&body, true).unwrap().facts;
        super::MESSAGES.lock().unwrap().digests = saved;
        assert_eq!(warm, cold, "{}", file.display());
    }
    assert!(kept > 20, "the memo held {kept} messages");
}
