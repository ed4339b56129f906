//! Any bytes as a COPY payload or tuple: the error-path helpers return errors, never panic, and
//! what they accept round-trips. The first byte picks the column types for the last resort.
//!
//! The check itself is `nexus_core::fuzzing::copy_rows`, which `cargo test` also runs over
//! this target's seed corpus (`fuzz/seeds/copy_rows/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_core::fuzzing::copy_rows(data));
