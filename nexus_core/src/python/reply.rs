//! Bindings for the reply reader (`nexus._core.read_reply`, `SseObserver.reply`).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat};

use crate::reply::{self, Count};

/// What one upstream reply says, read once (see `nexus._core.Reply`).
#[pyclass(module = "nexus._core", name = "Reply", frozen)]
pub struct PyReply {
    pub(crate) inner: reply::Reply,
}

impl From<reply::Reply> for PyReply {
    fn from(inner: reply::Reply) -> Self {
        PyReply { inner }
    }
}

fn count<'py>(py: Python<'py>, c: Option<Count>) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(match c {
        None => None,
        Some(Count::Int(u)) => Some(u.into_pyobject(py)?.into_any()),
        // a whole double past 64 bits, exact, as Python's `int(float)` gives it
        Some(Count::Whole(f)) => Some(PyFloat::new(py, f).call_method0("__int__")?),
    })
}

#[pymethods]
impl PyReply {
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.inner.message_id.as_deref()
    }
    #[getter]
    fn model(&self) -> Option<&str> {
        self.inner.model.as_deref()
    }
    #[getter]
    fn stop_reason(&self) -> Option<&str> {
        self.inner.stop_reason.as_deref()
    }
    #[getter]
    fn usage_json<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.usage_json.as_ref().map(|u| PyBytes::new(py, u))
    }
    #[getter]
    fn input_tokens<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        count(py, self.inner.input_tokens)
    }
    #[getter]
    fn output_tokens<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        count(py, self.inner.output_tokens)
    }
    #[getter]
    fn cache_creation_input_tokens<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        count(py, self.inner.cache_creation_input_tokens)
    }
    #[getter]
    fn cache_read_input_tokens<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        count(py, self.inner.cache_read_input_tokens)
    }
    #[getter]
    fn usage_not_integer(&self) -> bool {
        self.inner.usage_not_integer
    }
    #[getter]
    fn tool_call_count(&self) -> Option<u64> {
        self.inner.tool_call_count
    }
    #[getter]
    fn launches<'py>(&self, py: Python<'py>) -> Vec<(String, Bound<'py, PyBytes>)> {
        let launch = |(id, key): &(String, [u8; 16])| (id.clone(), PyBytes::new(py, key));
        self.inner.launches.iter().map(launch).collect()
    }
    /// Canonicalised when asked (only a compaction's reply is).
    #[getter]
    fn text(&self) -> String {
        self.inner.text()
    }

    fn __repr__(&self) -> String {
        format!(
            "Reply(message_id={:?}, stop_reason={:?}, tool_call_count={:?}, launches={})",
            self.inner.message_id,
            self.inner.stop_reason,
            self.inner.tool_call_count,
            self.inner.launches.len()
        )
    }
}

/// Read a JSON reply body once (GIL released while it works). Never raises on content.
#[pyfunction]
#[pyo3(signature = (body, /))]
pub fn read_reply(py: Python<'_>, body: &Bound<'_, PyBytes>) -> PyReply {
    let data = body.as_bytes();
    py.detach(|| reply::read_reply(data)).into()
}
