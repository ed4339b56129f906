//! Any bytes as an SSE stream, cut into chunks of any size: the observer never panics, and what it
//! reports does not depend on where the chunks were cut (the proxy sees whatever the network gives).
//! The first byte picks the line cap (so overflow is reached) and the chunk size.
//!
//! The check itself is `nexus_core::fuzzing::sse_observer`, which `cargo test` also runs over
//! this target's seed corpus (`fuzz/seeds/sse_observer/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_core::fuzzing::sse_observer(data));
