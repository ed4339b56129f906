//! Any bytes through `safe_text` and `json_as_text`: valid UTF-8 without NUL, idempotent, and the
//! JSON string decodes to exactly the safe text.
//!
//! The check itself is `nexus_core::fuzzing::safe_text`, which `cargo test` also runs over
//! this target's seed corpus (`fuzz/seeds/safe_text/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_core::fuzzing::safe_text(data));
