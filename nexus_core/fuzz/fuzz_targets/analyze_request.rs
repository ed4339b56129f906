//! Any bytes as a `/v1/messages` body through the request analysis: never a panic, only `Ok` or an
//! error; what it returns is consistent (each part keyed by the hash of its exact bytes, a slice of
//! the body; one role and one prefix hash per kept message; heads within their bound), the strict
//! checks hold when they pass, and the body rebuilt from the split splits to the same keys.
//!
//! The check itself is `nexus_core::fuzzing::analyze_request`, which `cargo test` also runs over
//! this target's seed corpus (`fuzz/seeds/analyze_request/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_core::fuzzing::analyze_request(data));
