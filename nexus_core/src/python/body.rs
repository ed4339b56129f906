//! Bindings for the content-addressed body splitter.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::body;

/// A request body split for storage (see `nexus._core.split_body`).
#[pyclass(module = "nexus._core", name = "SplitBody", frozen)]
pub struct PySplitBody {
    #[pyo3(get)]
    envelope: Py<PyBytes>,
    #[pyo3(get)]
    system_key: Option<Py<PyBytes>>,
    #[pyo3(get)]
    tools_key: Option<Py<PyBytes>>,
    #[pyo3(get)]
    message_keys: Option<Py<PyList>>,
    #[pyo3(get)]
    parts: Py<PyList>,
}

/// Split a JSON request body into its envelope and content-addressed parts (GIL released while it works).
#[pyfunction]
#[pyo3(signature = (body, /))]
pub fn split_body(py: Python<'_>, body: &Bound<'_, PyBytes>) -> PyResult<PySplitBody> {
    let data = body.as_bytes();
    let split = py.detach(|| body::split_body(data))?;
    let bytes = |b: &[u8]| PyBytes::new(py, b).unbind();
    let parts = PyList::empty(py);
    for (key, kind, json) in &split.parts {
        let item = PyTuple::new(
            py,
            [
                PyBytes::new(py, key).into_any(),
                (*kind as u8).into_pyobject(py)?.into_any(),
                PyBytes::new(py, json).into_any(),
            ],
        )?;
        parts.append(item)?;
    }
    let message_keys = match &split.message_keys {
        Some(keys) => Some(PyList::new(py, keys.iter().map(|k| PyBytes::new(py, k)))?.unbind()),
        None => None,
    };
    Ok(PySplitBody {
        envelope: bytes(&split.envelope),
        system_key: split.system_key.as_ref().map(|k| bytes(k)),
        tools_key: split.tools_key.as_ref().map(|k| bytes(k)),
        message_keys,
        parts: parts.unbind(),
    })
}

/// Rebuild a body from its envelope and parts.
#[pyfunction]
#[pyo3(signature = (envelope, system, tools, messages, /))]
pub fn join_body<'py>(
    py: Python<'py>,
    envelope: &[u8],
    system: Option<&[u8]>,
    tools: Option<&[u8]>,
    messages: Option<Vec<Vec<u8>>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let refs: Option<Vec<&[u8]>> = messages
        .as_ref()
        .map(|m| m.iter().map(Vec::as_slice).collect());
    let out = body::join_body(envelope, system, tools, refs.as_deref())?;
    Ok(PyBytes::new(py, &out))
}
