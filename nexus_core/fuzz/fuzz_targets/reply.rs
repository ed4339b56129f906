//! Any bytes as a JSON reply and as a stream through the reply reader: never a panic, a stable
//! result, and a stream's launches and text equal to those of its rebuilt message.
//!
//! The check itself is `nexus_core::fuzzing::reply`, which `cargo test` also runs over this
//! target's seed corpus (`fuzz/seeds/reply/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_core::fuzzing::reply(data));
