//! Binding for the COPY BINARY encoder: one call per batch, cells read straight from Python objects,
//! plus the safe JSON/text functions and the helpers of the writer's error path.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::pgcopy::{self, ColumnType, CopyEncoder, Value};
use crate::safe::{self, Repairs};
use crate::NexusError;

/// Why a cell could not become a [`Value`].
enum CellError {
    /// A programming error: the message says what was wrong.
    Message(String),
    /// A `str` holding lone surrogates, which has no UTF-8 form: re-read it as `surrogatepass`
    /// bytes, which `safe_text`/`safe_json` turn into visible `\udXXX`.
    Surrogates,
}

fn scalar<'a>(cell: &'a Bound<'_, PyAny>) -> Result<Value<'a>, CellError> {
    if cell.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = cell.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes()));
    }
    if let Ok(s) = cell.cast::<PyString>() {
        return s
            .to_str()
            .map(Value::Str)
            .map_err(|_| CellError::Surrogates);
    }
    if let Ok(b) = cell.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if cell.cast::<PyInt>().is_ok() {
        return match cell.extract::<i64>() {
            Ok(v) => Ok(Value::Int(v)),
            // Past i64: only the sign is needed, to clamp to the column's range.
            Err(_) => cell
                .lt(0)
                .map(|negative| Value::BigInt { negative })
                .map_err(|e| CellError::Message(e.to_string())),
        };
    }
    if let Ok(f) = cell.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    let kind = cell
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(CellError::Message(format!(
        "unsupported value of type {kind}"
    )))
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

/// Where a cell failed: its column, its element for an array, and why.
type CellFailure = (usize, Option<usize>, CellError);

/// The row's values, borrowing from the cells.
fn row_values<'a>(
    types: &[ColumnType],
    cells: &'a [Bound<'_, PyAny>],
    elements: &'a [Option<Vec<Bound<'_, PyAny>>>],
) -> Result<Vec<Value<'a>>, CellFailure> {
    let mut values = Vec::with_capacity(cells.len());
    for (c, cell) in cells.iter().enumerate() {
        let value = match &elements[c] {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(e, item)| scalar(item).map_err(|err| (c, Some(e), err)))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)?,
            None => match types.get(c).and_then(|&t| expected(t, cell)) {
                Some(v) => v,
                None => scalar(cell).map_err(|err| (c, None, err))?,
            },
        };
        values.push(value);
    }
    Ok(values)
}

/// Encode `rows` (sequences of cells) for columns of `types` into one COPY BINARY payload.
#[pyfunction]
#[pyo3(signature = (types, rows, /))]
pub fn encode_copy_binary(types: Vec<String>, rows: &Bound<'_, PyAny>) -> PyResult<Py<PyBytes>> {
    let py = rows.py();
    let types = ColumnType::parse_all(&types)?;
    let mut encoder = CopyEncoder::new(types.clone())?;
    for (r, row) in rows.try_iter()?.enumerate() {
        let row = row?;
        let mut cells: Vec<Bound<'_, PyAny>> = match row.cast::<PyList>() {
            Ok(list) => list.iter().collect(),
            Err(_) => row.try_iter()?.collect::<PyResult<_>>()?,
        };
        let mut elements: Vec<Option<Vec<Bound<'_, PyAny>>>> = cells
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
        // Usually one pass; a str with lone surrogates is swapped for its bytes and the row redone.
        loop {
            let surrogates = match row_values(&types, &cells, &elements) {
                Ok(values) => {
                    encoder.push_row(&values)?;
                    None
                }
                Err((c, e, CellError::Surrogates)) => Some((c, e)),
                Err((c, _, CellError::Message(msg))) => {
                    let ty = types.get(c).map(|t| t.name()).unwrap_or("?");
                    return Err(NexusError::InvalidArgument(format!(
                        "row {r}, column {c} ({ty}): {msg}"
                    ))
                    .into());
                }
            };
            let Some((c, e)) = surrogates else { break };
            let cell = match (e, elements[c].as_mut()) {
                (Some(e), Some(items)) => &mut items[e],
                _ => &mut cells[c],
            };
            *cell = cell.call_method1(intern!(py, "encode"), ("utf-8", "surrogatepass"))?;
        }
    }
    Ok(PyBytes::new(py, &encoder.finish()).unbind())
}

fn with_names<'py>(
    py: Python<'py>,
    out: &[u8],
    repairs: Repairs,
) -> (Bound<'py, PyBytes>, Vec<&'static str>) {
    (PyBytes::new(py, out), repairs.names().collect())
}

/// `data` made storable as jsonb, and the names of the repairs (GIL released while it works).
#[pyfunction]
#[pyo3(signature = (data, /))]
pub fn safe_json<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> (Bound<'py, PyBytes>, Vec<&'static str>) {
    let input = data.as_bytes();
    let (out, repairs) = py.detach(|| {
        let mut out = Vec::with_capacity(input.len());
        let repairs = safe::safe_json(input, &mut out);
        (out, repairs)
    });
    with_names(py, &out, repairs)
}

/// `data` made storable as text, and the names of the repairs.
#[pyfunction]
#[pyo3(signature = (data, /))]
pub fn safe_text<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> (Bound<'py, PyBytes>, Vec<&'static str>) {
    let mut out = Vec::with_capacity(data.as_bytes().len());
    let repairs = safe::safe_text(data.as_bytes(), &mut out);
    with_names(py, &out, repairs)
}

/// `data` (any bytes) as one JSON string, and the names of the repairs (`stored_as_text` first).
#[pyfunction]
#[pyo3(signature = (data, /))]
pub fn json_as_text<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> (Bound<'py, PyBytes>, Vec<&'static str>) {
    let mut out = Vec::with_capacity(data.as_bytes().len() + 2);
    let repairs = safe::json_as_text(data.as_bytes(), &mut out);
    with_names(py, &out, repairs)
}

/// The tuples of a COPY BINARY payload.
#[pyfunction]
#[pyo3(signature = (payload, /))]
pub fn copy_rows<'py>(payload: &Bound<'py, PyBytes>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let py = payload.py();
    Ok(pgcopy::copy_rows(payload.as_bytes())?
        .into_iter()
        .map(|row| PyBytes::new(py, row))
        .collect())
}

/// A COPY BINARY payload of `rows` (tuples as `copy_rows` returns them).
#[pyfunction]
#[pyo3(signature = (rows, /))]
pub fn copy_payload<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let rows = rows
        .try_iter()?
        .map(|row| Ok(row?.cast_into::<PyBytes>()?))
        .collect::<PyResult<Vec<_>>>()?;
    let payload = pgcopy::copy_payload(rows.iter().map(|r| r.as_bytes()));
    Ok(PyBytes::new(py, &payload))
}

/// One COPY BINARY payload with the rows of `payloads` in order (each checked, none copied into an
/// object of its own).
#[pyfunction]
#[pyo3(signature = (payloads, /))]
pub fn merge_payloads<'py>(
    py: Python<'py>,
    payloads: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let merged = pgcopy::merge_payloads(payloads.iter().map(|p| p.as_bytes()))?;
    Ok(PyBytes::new(py, &merged))
}

/// A tuple with every jsonb/json field stored as a JSON string (the writer's last resort).
#[pyfunction]
#[pyo3(signature = (types, row, /))]
pub fn copy_row_last_resort<'py>(
    types: Vec<String>,
    row: &Bound<'py, PyBytes>,
) -> PyResult<Bound<'py, PyBytes>> {
    let types = ColumnType::parse_all(&types)?;
    let out = pgcopy::copy_row_last_resort(&types, row.as_bytes())?;
    Ok(PyBytes::new(row.py(), &out))
}

/// The bytes of field `index` of a tuple, or None for NULL.
#[pyfunction]
#[pyo3(signature = (row, index, /))]
pub fn copy_row_field<'py>(
    row: &Bound<'py, PyBytes>,
    index: usize,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    Ok(pgcopy::copy_row_field(row.as_bytes(), index)?.map(|f| PyBytes::new(row.py(), f)))
}
