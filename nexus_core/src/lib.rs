//! Rust core of the Nexus gateway.
//!
//! The logic here is plain Rust with no PyO3 dependency, so `cargo test` and fuzzing need no
//! Python. The Python bindings (`nexus._core`) live in [`python`] behind the `python` feature.

pub mod body;
pub mod conversation;
pub mod error;
/// The fuzz targets' checks (`nexus_core/fuzz/`), also run over their corpora by `cargo test`.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod linkindex;
pub mod pgcopy;
pub mod reply;
pub mod rows;
pub mod safe;
pub mod scan;
pub mod search;
pub mod sse;

#[cfg(feature = "python")]
mod python;

pub use error::NexusError;
pub use reply::{read_reply, Reply};
pub use sse::{ApiError, SseObserver, SseSummary, ToolUse, DEFAULT_MAX_LINE_BYTES};
