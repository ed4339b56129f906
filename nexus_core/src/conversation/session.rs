//! Which client session a body names in `metadata.user_id` (older Claude Code; 2.1 sends an
//! `x-claude-code-session-id` header, which the proxy reads itself).
//!
//! Claude Code 1.0 and 2.0 write `user_<hex>_account_<uuid>_session_<uuid>`, 2.1 also a JSON object
//! with a `session_id`. The value comes from the client: it is bounded, and only ever compared, never
//! trusted (the linker prefers a candidate of the request's own session; it is never evidence alone).

use serde_json::Value;

/// Longer `user_id` values are not read (a session id is a UUID; anything much longer is not one).
pub const MAX_USER_ID: usize = 512;
/// A session is cut to this many characters.
pub const MAX_SESSION: usize = 128;
const LEGACY: &str = "_session_";

/// The session named in `metadata.user_id` of a body's envelope (the body without messages, system
/// and tools), or None: no such string, or an envelope that is not a JSON object serde_json reads.
pub fn envelope_session(envelope: &[u8]) -> Option<String> {
    memchr::memmem::find(envelope, b"\"user_id\"")?;
    let body: Value = serde_json::from_slice(envelope).ok()?;
    session_in_user_id(body.get("metadata")?.get("user_id")?.as_str()?)
}

/// `..._session_<id>` (Claude Code 1.0, 2.0: 1 to 128 of `[A-Za-z0-9-]` ending the value) or
/// `{"session_id": "<id>"}` (2.1: a non-empty string, cut to [`MAX_SESSION`] characters).
pub fn session_in_user_id(user_id: &str) -> Option<String> {
    if user_id.len() > MAX_USER_ID && user_id.chars().count() > MAX_USER_ID {
        return None;
    }
    if user_id.starts_with('{') {
        let value: Value = serde_json::from_str(user_id).ok()?;
        let session = value.get("session_id")?.as_str()?;
        return (!session.is_empty()).then(|| session.chars().take(MAX_SESSION).collect());
    }
    // only the last `_session_` can start the match: an earlier one's tail holds its `_`
    let tail = &user_id[user_id.rfind(LEGACY)? + LEGACY.len()..];
    let legacy = (1..=MAX_SESSION).contains(&tail.len())
        && tail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    legacy.then(|| tail.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "6a1e49c3-0000-4000-8000-000000000001";

    #[test]
    fn the_forms_claude_code_writes_and_what_is_refused() {
        let hex = "783c3bb607fe3631b85552952c8acde5fbbc32423ddad2c31a11568e27f3a393";
        let ok = |s: &str| session_in_user_id(s);
        assert_eq!(
            ok(&format!("user_{hex}_account__session_{S1}")).as_deref(),
            Some(S1)
        );
        assert_eq!(
            ok(&format!("a_session_b_session_{S1}")).as_deref(),
            Some(S1)
        );
        assert_eq!(ok(&format!("a_session_{S1}_session_")), None);
        assert_eq!(ok(&format!("user_{hex}_session_{S1}; DROP TABLE")), None);
        assert_eq!(ok(&format!("{}_session_{S1}", "x".repeat(600))), None);
        // 512 characters of two bytes each are still read
        assert_eq!(
            ok(&format!("{}_session_{S1}", "é".repeat(466))).as_deref(),
            Some(S1)
        );
        assert_eq!(ok(&format!("_session_{}", "a".repeat(129))), None);
        assert_eq!(
            ok(&format!("{{\"session_id\":\"{S1}\"}}")).as_deref(),
            Some(S1)
        );
        assert_eq!(ok("{\"session_id\":7}"), None);
        assert_eq!(ok("{\"session_id\":\"\"}"), None);
        assert_eq!(ok("{not json"), None);
        let long = format!("{{\"session_id\":\"{}\"}}", "é".repeat(200));
        assert_eq!(ok(&long).map(|s| s.chars().count()), Some(MAX_SESSION));
    }

    #[test]
    fn the_envelope_s_metadata() {
        let env = |m: &str| envelope_session(format!("{{\"model\":\"m\",{m}}}").as_bytes());
        assert_eq!(
            env(&format!("\"metadata\":{{\"user_id\":\"u_session_{S1}\"}}")).as_deref(),
            Some(S1)
        );
        // a repeated key: the last one, as a JSON reader keeps it
        let twice = format!("\"metadata\":{{\"user_id\":\"x\",\"user_id\":\"u_session_{S1}\"}}");
        assert_eq!(env(&twice).as_deref(), Some(S1));
        assert_eq!(env("\"metadata\":[\"user_id\"]"), None);
        assert_eq!(env("\"metadata\":{\"user_id\":7}"), None);
        assert_eq!(envelope_session(b"[\"user_id\"]"), None);
        assert_eq!(envelope_session(b"{\"user_id\":"), None);
    }
}
