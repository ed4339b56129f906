//! What conversation linking needs from a request body, computed in the same pass as the storage split.
//!
//! Claude Code re-sends its whole history every turn but changes its shape between turns: it moves
//! `cache_control` markers, turns a block list into a plain string, injects and removes
//! `<system-reminder>` text and `role: "system"` entries, and its system prompt carries a billing line
//! that differs per session. Raw JSON never matches across turns, so each kept message is normalised
//! into a canonical byte stream (see [`digest`]) and hashed incrementally: one xxh3-128 state is fed
//! message by message and read after each one, which gives the hash of every message prefix in one
//! pass. A request continues another when one of its prefix hashes equals the other's full hash.

pub mod analyze;
pub mod digest;
pub(crate) mod lenient;
pub mod session;
pub mod text;

pub use analyze::{analyze_request, Analysis, RequestFacts};
pub use text::{normalize_text, prompt_key, strip_reminders};
