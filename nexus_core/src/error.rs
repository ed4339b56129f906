//! The crate's single error type. It is converted to a Python exception in exactly one place
//! (`python/mod.rs`).

use std::fmt;

/// Every error the core can report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NexusError {
    /// A constructor argument is out of range.
    InvalidArgument(String),
    /// A request body the proxy must refuse; the message is meant for the client as it is.
    InvalidRequest(String),
}

impl fmt::Display for NexusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NexusError::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            NexusError::InvalidRequest(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for NexusError {}
