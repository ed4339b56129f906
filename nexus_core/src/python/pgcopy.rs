//! Binding for the COPY BINARY encoder: one call per batch, cells read straight from Python objects.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::pgcopy::{ColumnType, CopyEncoder, Value};
use crate::NexusError;

fn scalar<'a>(cell: &'a Bound<'_, PyAny>) -> Result<Value<'a>, String> {
    if cell.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = cell.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes()));
    }
    if let Ok(s) = cell.cast::<PyString>() {
        return s.to_str().map(Value::Str).map_err(|e| e.to_string());
    }
    if let Ok(b) = cell.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if cell.cast::<PyInt>().is_ok() {
        return cell
            .extract::<i64>()
            .map(Value::Int)
            .map_err(|_| "integer out of the int8 range".to_string());
    }
    if let Ok(f) = cell.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    let kind = cell
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(format!("unsupported value of type {kind}"))
}

/// The common case for each column type, tried first: one type check instead of `scalar`'s chain.
/// `None` means "not the expected Python type" and the generic `scalar` decides (same result).
fn expected<'a>(ty: ColumnType, cell: &'a Bound<'_, PyAny>) -> Option<Value<'a>> {
    if cell.is_none() {
        return Some(Value::Null);
    }
    match ty {
        ColumnType::Text | ColumnType::Uuid => {
            cell.cast::<PyString>().ok()?.to_str().ok().map(Value::Str)
        }
        ColumnType::Jsonb | ColumnType::Json | ColumnType::Bytea => cell
            .cast::<PyBytes>()
            .ok()
            .map(|b| Value::Bytes(b.as_bytes())),
        ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8 | ColumnType::Timestamptz => {
            if cell.cast::<PyBool>().is_ok() {
                return None;
            }
            cell.cast::<PyInt>()
                .ok()?
                .extract::<i64>()
                .ok()
                .map(Value::Int)
        }
        ColumnType::Bool => cell.cast::<PyBool>().ok().map(|b| Value::Bool(b.is_true())),
        _ => None,
    }
}

fn is_sequence(cell: &Bound<'_, PyAny>) -> bool {
    cell.cast::<PyList>().is_ok() || cell.cast::<PyTuple>().is_ok()
}

/// Encode `rows` (sequences of cells) for columns of `types` into one COPY BINARY payload.
#[pyfunction]
#[pyo3(signature = (types, rows, /))]
pub fn encode_copy_binary(types: Vec<String>, rows: &Bound<'_, PyAny>) -> PyResult<Py<PyBytes>> {
    let py = rows.py();
    let types = types
        .iter()
        .map(|t| ColumnType::parse(t))
        .collect::<Result<Vec<_>, NexusError>>()?;
    let mut encoder = CopyEncoder::new(types.clone());
    for (r, row) in rows.try_iter()?.enumerate() {
        let row = row?;
        let cells: Vec<Bound<'_, PyAny>> = match row.cast::<PyList>() {
            Ok(list) => list.iter().collect(),
            Err(_) => row.try_iter()?.collect::<PyResult<_>>()?,
        };
        let elements: Vec<Option<Vec<Bound<'_, PyAny>>>> = cells
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let array = types.get(c).and_then(|t| t.element()).is_some();
                if array && is_sequence(cell) {
                    cell.try_iter()?.collect::<PyResult<Vec<_>>>().map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect::<PyResult<_>>()?;
        let mut values = Vec::with_capacity(cells.len());
        for (c, cell) in cells.iter().enumerate() {
            let value = match &elements[c] {
                Some(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                None => match types.get(c).and_then(|&t| expected(t, cell)) {
                    Some(v) => Ok(v),
                    None => scalar(cell),
                },
            };
            values.push(value.map_err(|msg| {
                let ty = types.get(c).map(|t| t.name()).unwrap_or("?");
                NexusError::InvalidArgument(format!("row {r}, column {c} ({ty}): {msg}"))
            })?);
        }
        encoder.push_row(&values)?;
    }
    Ok(PyBytes::new(py, &encoder.finish()).unbind())
}
