//! Any bytes through `safe_json`: the output is JSON we accept unchanged (idempotent), an
//! independent parser reads it, and unrepaired input comes out as the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_core::safe::{is_safe_json, safe_json};
use serde::Deserialize;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let repairs = safe_json(data, &mut out);
    assert!(is_safe_json(&out), "output not safe: {out:?}");
    if repairs.is_empty() {
        assert_eq!(out, data);
    }
    let mut again = Vec::new();
    assert!(safe_json(&out, &mut again).is_empty());
    assert_eq!(again, out);
    let mut de = serde_json::Deserializer::from_slice(&out);
    de.disable_recursion_limit();
    serde_json::Value::deserialize(&mut de).expect("serde_json reads the output");
    de.end().expect("one value");
});
