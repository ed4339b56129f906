//! Any bytes through `safe_json`: the output is JSON we accept unchanged (idempotent), an
//! independent parser reads it, and unrepaired input comes out as the same bytes.
//!
//! The check itself is `nexus_core::fuzzing::safe_json`, which `cargo test` also runs over
//! this target's seed corpus (`fuzz/seeds/safe_json/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_core::fuzzing::safe_json(data));
