//! Bindings for the one-pass request analysis (storage split + linking facts).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::body;
use crate::conversation::{self, analyze_request as analyze};

/// A request body analysed once on the request path (see `nexus._core.analyze_request`).
///
/// Parts are given as offsets into the original body, so the storage writer copies only the parts
/// the database does not have yet.
#[pyclass(module = "nexus._core", name = "RequestAnalysis", frozen)]
pub struct PyRequestAnalysis {
    #[pyo3(get)]
    pub(crate) envelope: Py<PyBytes>,
    pub(crate) system_key: Option<body::Key>,
    pub(crate) tools_key: Option<body::Key>,
    #[pyo3(get)]
    pub(crate) model: Option<String>,
    #[pyo3(get)]
    stream: Option<bool>,
    #[pyo3(get)]
    message_count: usize,
    #[pyo3(get)]
    system_message_count: usize,
    /// 16 bytes per kept message, concatenated.
    #[pyo3(get)]
    prefix_hashes: Py<PyBytes>,
    #[pyo3(get)]
    kept_roles: Py<PyBytes>,
    #[pyo3(get)]
    pub(crate) system_hash: Option<Py<PyBytes>>,
    /// `(key, kind, start, end)`: the part is `body[start:end]` (the storage row builder reads them
    /// without Python; `part_spans` makes the Python objects only when asked).
    pub(crate) spans: Vec<(body::Key, u8, usize, usize)>,
    /// The message keys, likewise (`message_keys`).
    pub(crate) message_key_list: Option<Vec<body::Key>>,
    #[pyo3(get)]
    system_block_count: usize,
    #[pyo3(get)]
    system_head: String,
    #[pyo3(get)]
    is_subagent: bool,
    #[pyo3(get)]
    has_tools: bool,
    #[pyo3(get)]
    first_user_key: Option<Py<PyBytes>>,
    #[pyo3(get)]
    first_user_head: String,
    #[pyo3(get)]
    last_user_head: String,
    #[pyo3(get)]
    continuation_text: Option<String>,
    /// The session named in the envelope's `metadata.user_id` (`conversation::session`).
    #[pyo3(get)]
    pub(crate) envelope_session: Option<String>,
    #[pyo3(get)]
    trimmed_hash: Option<Py<PyBytes>>,
}

/// Analyse a request body: split for storage, check it (`strict`), and compute the linking facts.
/// The GIL is released while the body is parsed and hashed.
#[pyfunction]
#[pyo3(signature = (body, /, *, strict = true))]
pub fn analyze_request(
    py: Python<'_>,
    body: &Bound<'_, PyBytes>,
    strict: bool,
) -> PyResult<PyRequestAnalysis> {
    let data = body.as_bytes();
    let analysis = py.detach(|| analyze(data, strict))?;
    let bytes = |b: &[u8]| PyBytes::new(py, b).unbind();
    let base = data.as_ptr() as usize;
    // the request path reads none of the parts in Python: they stay Rust values (no Python object
    // per part or message key on every request; the getters below make them when asked)
    let spans = analysis
        .split
        .parts
        .iter()
        .map(|(key, kind, json)| {
            let start = json.as_ptr() as usize - base;
            (*key, *kind as u8, start, start + json.len())
        })
        .collect();
    let split = analysis.split;
    let facts = analysis.facts;
    Ok(PyRequestAnalysis {
        envelope: bytes(&split.envelope),
        system_key: split.system_key,
        tools_key: split.tools_key,
        message_key_list: split.message_keys,
        spans,
        model: facts.model,
        stream: facts.stream,
        message_count: facts.message_count,
        system_message_count: facts.system_message_count,
        prefix_hashes: bytes(&facts.prefix_hashes.concat()),
        kept_roles: bytes(&facts.kept_roles),
        system_hash: facts.system_hash.as_ref().map(|k| bytes(k)),
        system_block_count: facts.system_block_count,
        system_head: facts.system_head,
        is_subagent: facts.is_subagent,
        has_tools: facts.has_tools,
        first_user_key: facts.first_user_key.as_ref().map(|k| bytes(k)),
        first_user_head: facts.first_user_head,
        last_user_head: facts.last_user_head,
        continuation_text: facts.continuation_text,
        envelope_session: facts.envelope_session,
        trimmed_hash: facts.trimmed_hash.as_ref().map(|k| bytes(k)),
    })
}

#[pymethods]
impl PyRequestAnalysis {
    #[getter]
    fn system_key<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.system_key.as_ref().map(|k| PyBytes::new(py, k))
    }

    #[getter]
    fn tools_key<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.tools_key.as_ref().map(|k| PyBytes::new(py, k))
    }

    #[getter]
    fn message_keys<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        self.message_key_list
            .as_ref()
            .map(|keys| PyList::new(py, keys.iter().map(|k| PyBytes::new(py, k))))
            .transpose()
    }

    /// `(key, kind, start, end)` per distinct part: the part is `body[start:end]`.
    #[getter]
    fn part_spans<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .spans
            .iter()
            .map(|(key, kind, start, end)| {
                PyTuple::new(
                    py,
                    [
                        PyBytes::new(py, key).into_any(),
                        kind.into_pyobject(py)?.into_any(),
                        start.into_pyobject(py)?.into_any(),
                        end.into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }
}

/// The session named in an envelope's `metadata.user_id`, or None.
#[pyfunction]
#[pyo3(signature = (envelope, /))]
pub fn envelope_session(envelope: &[u8]) -> Option<String> {
    conversation::session::envelope_session(envelope)
}

/// The session a `metadata.user_id` value names, or None.
#[pyfunction]
#[pyo3(signature = (user_id, /))]
pub fn session_in_user_id(user_id: &str) -> Option<String> {
    conversation::session::session_in_user_id(user_id)
}

/// The key a sub-agent prompt is matched by (xxh3-128 of the normalised text).
#[pyfunction]
#[pyo3(signature = (text, /))]
pub fn prompt_key<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &conversation::prompt_key(text))
}

/// Normalised text: reminders removed, CRLF as LF, trimmed.
#[pyfunction]
#[pyo3(signature = (text, /))]
pub fn normalize_text(text: &str) -> String {
    conversation::normalize_text(text).into_owned()
}
