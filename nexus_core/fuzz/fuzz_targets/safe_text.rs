//! Any bytes through `safe_text` and `json_as_text`: valid UTF-8 without NUL, idempotent, and the
//! JSON string decodes to exactly the safe text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_core::safe::{json_as_text, safe_text, Repairs};

fuzz_target!(|data: &[u8]| {
    let mut text = Vec::new();
    let repairs = safe_text(data, &mut text);
    let decoded = std::str::from_utf8(&text).expect("safe_text output is UTF-8");
    assert!(!text.contains(&0));
    if repairs.is_empty() {
        assert_eq!(text, data);
    }
    let mut again = Vec::new();
    assert!(safe_text(&text, &mut again).is_empty());
    let mut json = Vec::new();
    assert!(json_as_text(data, &mut json).contains(Repairs::STORED_AS_TEXT));
    let value: String = serde_json::from_slice(&json).expect("a JSON string");
    assert_eq!(value, decoded);
});
