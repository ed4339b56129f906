//! Thin PyO3 bindings exposed to Python as `nexus._core`.
//!
//! All logic lives in the pure-Rust modules; this file only converts types. Rust errors become
//! Python exceptions here and nowhere else (`impl From<NexusError> for PyErr`).

mod body;
mod conversation;
mod linkindex;
mod pgcopy;
mod reply;
mod rows;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::sse::{self, DEFAULT_MAX_LINE_BYTES};
use crate::NexusError;

create_exception!(
    nexus._core,
    NexusCoreError,
    PyValueError,
    "Raised for invalid input to nexus._core (a ValueError)."
);

impl From<NexusError> for PyErr {
    fn from(err: NexusError) -> PyErr {
        NexusCoreError::new_err(err.to_string())
    }
}

/// Incremental observer of an Anthropic Messages SSE stream. Feed it every network chunk as
/// is; it never changes the bytes, it only extracts a summary.
#[pyclass(module = "nexus._core", name = "SseObserver")]
struct PySseObserver {
    inner: sse::SseObserver,
}

#[pymethods]
impl PySseObserver {
    #[new]
    #[pyo3(signature = (*, max_line_bytes = DEFAULT_MAX_LINE_BYTES))]
    fn new(max_line_bytes: usize) -> PyResult<Self> {
        Ok(PySseObserver {
            inner: sse::SseObserver::with_max_line_bytes(max_line_bytes)?,
        })
    }

    /// Observe one chunk (bytes, bytearray or memoryview); returns the events it completed.
    #[pyo3(signature = (chunk, /))]
    fn feed(&mut self, chunk: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Ok(b) = chunk.cast::<PyBytes>() {
            return Ok(self.inner.feed(b.as_bytes()));
        }
        let buf = PyBuffer::<u8>::get(chunk)?;
        let bytes = buf.to_vec(chunk.py())?;
        Ok(self.inner.feed(&bytes))
    }

    #[getter]
    fn max_line_bytes(&self) -> usize {
        self.inner.max_line_bytes()
    }
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.inner.summary().message_id.as_deref()
    }
    #[getter]
    fn model(&self) -> Option<&str> {
        self.inner.summary().model.as_deref()
    }
    #[getter]
    fn role(&self) -> Option<&str> {
        self.inner.summary().role.as_deref()
    }
    #[getter]
    fn stop_reason(&self) -> Option<&str> {
        self.inner.summary().stop_reason.as_deref()
    }
    #[getter]
    fn stop_sequence(&self) -> Option<&str> {
        self.inner.summary().stop_sequence.as_deref()
    }
    #[getter]
    fn input_tokens(&self) -> u64 {
        self.inner.summary().input_tokens
    }
    #[getter]
    fn output_tokens(&self) -> u64 {
        self.inner.summary().output_tokens
    }
    #[getter]
    fn cache_creation_input_tokens(&self) -> u64 {
        self.inner.summary().cache_creation_input_tokens
    }
    #[getter]
    fn cache_read_input_tokens(&self) -> u64 {
        self.inner.summary().cache_read_input_tokens
    }
    #[getter]
    fn event_count(&self) -> u64 {
        self.inner.summary().event_count
    }
    #[getter]
    fn malformed_events(&self) -> u64 {
        self.inner.summary().malformed_events
    }
    #[getter]
    fn content_blocks(&self) -> u64 {
        self.inner.summary().content_blocks
    }
    #[getter]
    fn saw_message_stop(&self) -> bool {
        self.inner.summary().saw_message_stop
    }
    #[getter]
    fn overflowed(&self) -> bool {
        self.inner.summary().overflowed
    }
    #[getter]
    fn tool_uses(&self) -> Vec<(String, String)> {
        let s = self.inner.summary();
        s.tool_uses
            .iter()
            .map(|t| (t.id.clone(), t.name.clone()))
            .collect()
    }
    #[getter]
    fn error(&self) -> Option<(String, String)> {
        self.inner
            .summary()
            .error
            .as_ref()
            .map(|e| (e.error_type.clone(), e.message.clone()))
    }

    /// Names of the repairs made to keep hostile event data (see `REPAIR_NAMES`), in that order.
    #[getter]
    fn repairs(&self) -> Vec<&'static str> {
        self.inner.repairs().names().collect()
    }

    /// Merged usage object as compact JSON bytes, or None if no usage was seen.
    fn usage_json<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.usage_json().map(|v| PyBytes::new(py, &v))
    }

    /// The reply's facts at the end of the stream (the same `Reply` as `read_reply` gives a JSON body).
    fn reply(&self) -> reply::PyReply {
        self.inner.reply().into()
    }

    /// Final message rebuilt from the stream as compact JSON bytes, or None before message_start.
    fn message_json<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.message_json().map(|v| PyBytes::new(py, &v))
    }

    fn __repr__(&self) -> String {
        fn py_str(v: &Option<String>) -> String {
            v.as_ref()
                .map_or_else(|| "None".into(), |s| format!("'{s}'"))
        }
        let s = self.inner.summary();
        format!(
            "SseObserver(message_id={}, event_count={}, stop_reason={}, saw_message_stop={})",
            py_str(&s.message_id),
            s.event_count,
            py_str(&s.stop_reason),
            if s.saw_message_stop { "True" } else { "False" }
        )
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn nexus_core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES)?;
    m.add("NexusCoreError", m.py().get_type::<NexusCoreError>())?;
    m.add_class::<PySseObserver>()?;
    m.add("MAX_JSON_DEPTH", crate::safe::MAX_JSON_DEPTH)?;
    m.add(
        "REPAIR_NAMES",
        pyo3::types::PyTuple::new(m.py(), crate::safe::Repairs::NAMES)?,
    )?;
    m.add_function(wrap_pyfunction!(pgcopy::encode_copy_binary, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::safe_json, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::safe_text, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::json_as_text, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::copy_rows, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::copy_payload, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::merge_payloads, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::copy_row_last_resort, m)?)?;
    m.add_function(wrap_pyfunction!(pgcopy::copy_row_field, m)?)?;
    m.add_function(wrap_pyfunction!(rows::build_request_batch, m)?)?;
    m.add_class::<rows::KnownKeys>()?;
    m.add_function(wrap_pyfunction!(rows::request_columns, m)?)?;
    m.add_function(wrap_pyfunction!(rows::blob_columns, m)?)?;
    m.add(
        "STORED_REQUEST_HEADERS",
        pyo3::types::PyFrozenSet::new(m.py(), rows::STORED_REQUEST_HEADERS)?,
    )?;
    m.add_function(wrap_pyfunction!(body::split_body, m)?)?;
    m.add_function(wrap_pyfunction!(body::join_body, m)?)?;
    m.add_class::<body::PySplitBody>()?;
    m.add_function(wrap_pyfunction!(conversation::analyze_request, m)?)?;
    m.add_function(wrap_pyfunction!(conversation::prompt_key, m)?)?;
    m.add_function(wrap_pyfunction!(conversation::envelope_session, m)?)?;
    m.add_function(wrap_pyfunction!(conversation::session_in_user_id, m)?)?;
    m.add_function(wrap_pyfunction!(conversation::normalize_text, m)?)?;
    m.add_class::<conversation::PyRequestAnalysis>()?;
    m.add_function(wrap_pyfunction!(reply::read_reply, m)?)?;
    m.add_class::<linkindex::LinkEntries>()?;
    m.add_class::<linkindex::IndexEntry>()?;
    m.add("LINK_PER_KEY", crate::linkindex::PER_KEY)?;
    m.add("LINK_CHILD_HISTORIES", crate::linkindex::CHILD_HISTORIES)?;
    m.add_class::<reply::PyReply>()?;
    Ok(())
}
