//! The text a stored request is found by: its newest user message and its reply, without what the
//! client injects. PostgreSQL's `nexus_search_vector` (migration 0012) computes the same text from the
//! stored row and the content parts; the writer now stages this text with the row, so PostgreSQL only
//! runs `to_tsvector` on it (extracting it in plpgsql was about half of a row's insert).
//!
//! Every rule here is the SQL's, to the character: `nexus_visible_text` keeps the `content` string,
//! or the `text` of the first 100 blocks of type `text` (each cut to 20,000 characters, joined by a
//! newline), cuts to 50,000 characters, removes each injected block (`<tag>…</tag>`, the shortest
//! match, and then an unclosed `<tag>` to the end of the text, each replaced by one space) tag after
//! tag in [`TAGS`] order, and trims spaces, tabs and line ends. The user message is the newest of
//! the last four messages whose `role` is `user` (none for a compaction or an auxiliary request),
//! and the whole is cut to 100,000 characters. Where this code cannot be sure to read what
//! PostgreSQL reads (a part that is not JSON serde reads, a NUL it would have stored repaired), or
//! would read a part bigger than [`MAX_READ_BYTES`], it answers `None` and PostgreSQL computes the
//! text itself, as before.

use std::borrow::Cow;

use crate::conversation::lenient::{Content, LBlock, LMessage};

/// The injected blocks removed, in the order the SQL removes them.
pub const TAGS: [&str; 12] = [
    "system-reminder",
    "command-name",
    "command-message",
    "command-args",
    "local-command-stdout",
    "local-command-stderr",
    "local-command-caveat",
    "task-notification",
    "bash-input",
    "bash-stdout",
    "bash-stderr",
    "user-prompt-submit-hook",
];

/// The largest message or reply read here: a bigger one (a hostile body of many small objects would
/// become a tree many times its size in memory) is left to PostgreSQL, as before.
pub const MAX_READ_BYTES: usize = 256 * 1024;

/// The first `n` characters of `s` (PostgreSQL's `left`).
fn left(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s; // no more characters than bytes: nothing to cut, and no walk through the text
    }
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// A message's (or a reply's) `role` and `content`, the last of each where a key repeats (as jsonb
/// keeps it), read without building a tree: every other field is skipped unread (a tool result's
/// file, an image), so a part costs a scan instead of a map per object. `None`: not JSON serde reads.
fn read_message(bytes: &[u8]) -> Option<(Option<Cow<'_, str>>, Content<'_>)> {
    match serde_json::from_slice::<LMessage<'_>>(bytes).ok()? {
        LMessage(Some(message)) => Some(message),
        LMessage(None) => Some((None, Content::Absent)), // not an object: no role, no content
    }
}

/// `nexus_visible_text(content)`; `None` when the text holds a NUL (PostgreSQL stores those repaired).
pub(crate) fn visible_text(content: &Content<'_>) -> Option<String> {
    let mut txt = match content {
        Content::Text(s) => left(s, 50_000).to_owned(),
        Content::Blocks(blocks) => {
            // string_agg: a newline between the texts, empty ones included; none at all is no text
            let texts: Vec<&str> = blocks
                .iter()
                .take(100)
                .filter_map(|b| match b {
                    LBlock::Block(fields) if fields.kind.as_deref() == Some("text") => {
                        fields.text.as_deref()
                    }
                    _ => None,
                })
                .map(|t| left(t, 20_000))
                .collect();
            if texts.is_empty() {
                return Some(String::new());
            }
            left(&texts.join("\n"), 50_000).to_owned()
        }
        _ => return Some(String::new()),
    };
    if txt.contains('\0') {
        return None;
    }
    if txt.contains('<') {
        // every injected block opens with one: without it there is nothing to remove
        for tag in TAGS {
            let open = format!("<{tag}>");
            if !txt.contains(&open) {
                continue;
            }
            let close = format!("</{tag}>");
            txt = remove_blocks(&txt, &open, &close);
            if let Some(at) = txt.find(&open) {
                txt.truncate(at);
                txt.push(' ');
            }
        }
    }
    Some(txt.trim_matches([' ', '\t', '\r', '\n']).to_owned())
}

/// `regexp_replace(txt, '<tag>.*?</tag>', ' ', 'g')`: each leftmost, shortest block becomes a space.
fn remove_blocks(txt: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(txt.len());
    let mut rest = txt;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push(' ');
        rest = &after[end + close.len()..];
    }
    out.push_str(rest);
    out
}

/// The staged search text of a request: `messages` are the bytes of its last (up to four) message
/// parts, newest first; `reply` the stored response body. `None`: let PostgreSQL compute it.
pub fn search_text(
    messages: &[&[u8]],
    request_type: Option<&str>,
    reply: Option<&[u8]>,
) -> Option<String> {
    let mut user = String::new();
    if !matches!(request_type, Some("compaction") | Some("auxiliary")) {
        for part in messages.iter().take(4) {
            if part.len() > MAX_READ_BYTES {
                return None;
            }
            let (role, content) = read_message(part)?;
            if role.as_deref() == Some("user") {
                user = visible_text(&content)?;
                break;
            }
        }
    }
    let reply_text = match reply {
        Some(bytes) if bytes.len() > MAX_READ_BYTES => return None,
        Some(bytes) => {
            let (_, content) = read_message(bytes)?;
            visible_text(&content)?
        }
        None => String::new(),
    };
    user.push('\n');
    user.push_str(&reply_text);
    Some(left(&user, 100_000).to_owned())
}

/// The prefix of the summary a continued Claude Code session opens with: never a title.
const CONTINUED: &str = "This session is being continued from a previous conversation";

/// `btrim(regexp_replace(txt, '\s+', ' ', 'g'))`: runs of whitespace become one space, spaces at the
/// ends go. `None` when the text holds a character whose class depends on PostgreSQL's locale or
/// collation provider (a control character or a space outside ASCII): PostgreSQL decides those.
fn collapse_spaces(txt: &str) -> Option<String> {
    let mut out = String::with_capacity(txt.len());
    let mut space = false;
    for c in txt.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r') {
            space = true;
            continue;
        }
        if c.is_control()
            || (!c.is_ascii()
                && (c.is_whitespace() || matches!(c, '\u{180e}' | '\u{200b}' | '\u{feff}')))
        {
            return None;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    Some(out)
}

/// `nexus_title(keys)` (migration 0012) of a request whose first (up to twelve) message parts are
/// `messages`, in order: the first user message with text of its own (not a continued session's
/// summary), spaces collapsed, cut to 120 characters. `Some(None)`: no title in them; `None`: let
/// PostgreSQL compute it (a part it reads otherwise, or bigger than [`MAX_READ_BYTES`]).
pub fn title(messages: &[&[u8]]) -> Option<Option<String>> {
    for part in messages.iter().take(12) {
        if part.len() > MAX_READ_BYTES {
            return None;
        }
        let (role, content) = read_message(part)?;
        if role.as_deref() != Some("user") {
            continue;
        }
        let text = collapse_spaces(&visible_text(&content)?)?;
        if text.is_empty() || text.starts_with(CONTINUED) {
            continue;
        }
        if text.chars().nth(120).is_none() {
            return Some(Some(text));
        }
        return Some(Some(format!("{}…", left(&text, 119))));
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn text(v: Value) -> String {
        content_text(&v).unwrap()
    }

    /// `visible_text` of a JSON value given as a message's content.
    fn content_text(v: &Value) -> Option<String> {
        let message = serde_json::to_vec(&json!({ "content": v })).unwrap();
        visible_text(&read_message(&message).unwrap().1)
    }

    #[test]
    fn strings_and_text_blocks() {
        assert_eq!(text(json!("  hello \n")), "hello");
        let blocks = json!([
            {"type": "text", "text": "a"},
            {"type": "tool_use", "text": "no"},
            "not an object",
            {"type": "text", "text": ""},
            {"type": "text", "text": 5},
            {"type": "text", "text": "b"}
        ]);
        assert_eq!(text(blocks), "a\n\nb");
        assert_eq!(text(json!([])), "");
        assert_eq!(text(json!({"type": "text"})), "");
        assert_eq!(visible_text(&Content::Absent), Some(String::new()));
        assert_eq!(text(json!({"text": "an object is no content"})), "");
        assert_eq!(text(json!(7)), "");
    }

    #[test]
    fn only_the_first_hundred_blocks_and_the_character_limits() {
        let mut blocks: Vec<Value> = (0..101)
            .map(|i| json!({"type": "text", "text": i.to_string()}))
            .collect();
        blocks[0] = json!({"type": "text", "text": "é".repeat(20_001)});
        let out = text(Value::Array(blocks));
        assert!(out.starts_with(&"é".repeat(20_000)));
        assert!(out.ends_with("\n99"));
        assert_eq!(text(json!("x".repeat(50_001))).chars().count(), 50_000);
    }

    #[test]
    fn injected_blocks_go() {
        assert_eq!(
            text(json!(
                "a<system-reminder>x</system-reminder>b<system-reminder>y"
            )),
            "a b"
        );
        assert_eq!(
            text(json!(
                "<command-name>/x</command-name><command-args></command-args>hi"
            )),
            "hi"
        );
        assert_eq!(
            text(json!("a<bash-input>1<bash-input>2</bash-input>3")),
            "a 3"
        );
    }

    #[test]
    fn a_nul_is_left_to_postgresql() {
        assert_eq!(content_text(&json!("a\u{0}b")), None);
    }

    #[test]
    fn the_newest_user_message_and_the_reply() {
        let user = br#"{"role":"user","content":"find it"}"#.as_slice();
        let older = br#"{"role":"user","content":"older"}"#.as_slice();
        let assistant = br#"{"role":"assistant","content":"no"}"#.as_slice();
        let reply = br#"{"content":[{"type":"text","text":"found"}]}"#.as_slice();
        assert_eq!(
            search_text(&[assistant, user, older], None, Some(reply)).unwrap(),
            "find it\nfound"
        );
        assert_eq!(
            search_text(&[user], Some("compaction"), Some(reply)).unwrap(),
            "\nfound"
        );
        assert_eq!(search_text(&[], None, None).unwrap(), "\n");
        assert_eq!(search_text(&[b"{not json"], None, None), None);
        let huge = format!(
            r#"{{"role":"user","content":[{}{{}}]}}"#,
            "{},".repeat(MAX_READ_BYTES / 3)
        );
        assert_eq!(search_text(&[huge.as_bytes()], None, None), None);
        assert_eq!(search_text(&[], None, Some(huge.as_bytes())), None);
    }

    #[test]
    fn the_title_is_the_first_user_text_collapsed_and_cut() {
        let user = |c: Value| serde_json::to_vec(&json!({"role": "user", "content": c})).unwrap();
        let assistant = serde_json::to_vec(&json!({"role": "assistant", "content": "no"})).unwrap();
        let empty = user(json!("<system-reminder>only this</system-reminder>"));
        let continued = user(json!(format!("{CONTINUED} that ran out")));
        let first = user(json!("  fix\tthe \n\n bug  "));
        let parts: Vec<&[u8]> = vec![&assistant, &empty, &continued, &first];
        assert_eq!(title(&parts), Some(Some("fix the bug".to_owned())));
        assert_eq!(title(&parts[..3]), Some(None));
        let long = user(json!("é".repeat(121)));
        assert_eq!(
            title(&[&long]).unwrap().unwrap(),
            format!("{}…", "é".repeat(119))
        );
        let exact = user(json!("é".repeat(120)));
        assert_eq!(title(&[&exact]).unwrap().unwrap(), "é".repeat(120));
        let late = user(json!("late"));
        let thirteen: Vec<&[u8]> = (0..12)
            .map(|_| assistant.as_slice())
            .chain([late.as_slice()])
            .collect();
        assert_eq!(title(&thirteen), Some(None));
    }

    #[test]
    fn a_title_postgresql_reads_by_its_locale_is_left_to_it() {
        let user = |c: &str| serde_json::to_vec(&json!({"role": "user", "content": c})).unwrap();
        for odd in [
            "a\u{a0}b",
            "a\u{3000}b",
            "a\u{1c}b",
            "a\u{200b}b",
            "a\u{85}b",
        ] {
            assert_eq!(title(&[&user(odd)]), None, "{odd:?}");
        }
        assert_eq!(title(&[b"{not json"]), None);
        assert_eq!(
            title(&[&user("a\u{b}\u{c}b")]),
            Some(Some("a b".to_owned()))
        );
    }
}
