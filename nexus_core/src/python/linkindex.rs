//! Binding for the linker's index (`crate::linkindex`): `LinkEntries` holds the entries in Rust,
//! `IndexEntry` is a request as Python reads it (built on each lookup, ids formatted when read).
//!
//! Strings many entries share (project, session, agent, request type, branch, and any id that is not
//! a canonical UUID) are interned here, each kept as one Python string with a count of the entries
//! that name it, and forgotten with the last of them.

use std::borrow::Cow;
use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use xxhash_rust::xxh3::xxh3_128;

use crate::linkindex::{Id, LinkEntries as Entries, Slot, Sym, NO};

/// An id as an entry holds it: a canonical UUID's 16 bytes, or the string itself.
enum IdVal {
    Uuid([u8; 16]),
    Str(Py<PyString>),
}

/// The 16 bytes of a lower-case canonical UUID (what `str(uuid.UUID(...))` gives), else None: only
/// those are stored as bytes, so formatting them again gives back the very same string.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        match hi.take() {
            None => hi = Some(v),
            Some(h) => {
                out[n] = h << 4 | v;
                n += 1;
            }
        }
    }
    Some(out)
}

fn format_uuid(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

impl IdVal {
    fn of(s: &Bound<'_, PyString>) -> PyResult<Self> {
        Ok(match s.to_str().ok().and_then(parse_uuid) {
            Some(b) => IdVal::Uuid(b),
            None => IdVal::Str(s.clone().unbind()),
        })
    }

    fn py<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        match self {
            IdVal::Uuid(b) => PyString::new(py, &format_uuid(b)),
            IdVal::Str(s) => s.bind(py).clone(),
        }
    }
}

fn opt_id(v: Option<&Bound<'_, PyString>>) -> PyResult<Option<IdVal>> {
    v.map(IdVal::of).transpose()
}

/// A history hash as the index keys it: 16 bytes (the request analysis's); a stored hash of another
/// length (none is written today) is reduced to 16 by xxh3, so it can never equal a request's.
fn digest(b: &[u8]) -> [u8; 16] {
    match <[u8; 16]>::try_from(b) {
        Ok(d) => d,
        Err(_) => xxh3_128(b).to_be_bytes(),
    }
}

/// What the linker remembers of one request (the fields of `nexus.conversations.index.Entry`).
#[pyclass(module = "nexus._core", name = "IndexEntry")]
pub struct IndexEntry {
    request_id: IdVal,
    #[pyo3(get)]
    project: Py<PyString>,
    #[pyo3(get)]
    timestamp: f64,
    #[pyo3(get)]
    request_type: Py<PyString>,
    current: Option<[u8; 16]>,
    conversation_id: Option<IdVal>,
    #[pyo3(get)]
    branch_id: Option<Py<PyString>>,
    parent_request_id: Option<IdVal>,
    #[pyo3(get)]
    is_subtask: bool,
    parent_task_request_id: Option<IdVal>,
    #[pyo3(get)]
    session: Option<Py<PyString>>,
    #[pyo3(get)]
    agent_id: Option<Py<PyString>>,
    #[pyo3(get, set)]
    status: u8,
}

#[pymethods]
impl IndexEntry {
    #[new]
    #[pyo3(signature = (request_id, project, timestamp, request_type, current, conversation_id, branch_id,
                        parent_request_id, is_subtask, parent_task_request_id, session, agent_id, status = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        request_id: &Bound<'_, PyString>,
        project: &Bound<'_, PyString>,
        timestamp: f64,
        request_type: &Bound<'_, PyString>,
        current: Option<&Bound<'_, PyBytes>>,
        conversation_id: Option<&Bound<'_, PyString>>,
        branch_id: Option<&Bound<'_, PyString>>,
        parent_request_id: Option<&Bound<'_, PyString>>,
        is_subtask: bool,
        parent_task_request_id: Option<&Bound<'_, PyString>>,
        session: Option<&Bound<'_, PyString>>,
        agent_id: Option<&Bound<'_, PyString>>,
        status: u8,
    ) -> PyResult<Self> {
        Ok(IndexEntry {
            request_id: IdVal::of(request_id)?,
            project: project.clone().unbind(),
            timestamp,
            request_type: request_type.clone().unbind(),
            current: current.map(|b| digest(b.as_bytes())),
            conversation_id: opt_id(conversation_id)?,
            branch_id: branch_id.map(|b| b.clone().unbind()),
            parent_request_id: opt_id(parent_request_id)?,
            is_subtask,
            parent_task_request_id: opt_id(parent_task_request_id)?,
            session: session.map(|b| b.clone().unbind()),
            agent_id: agent_id.map(|b| b.clone().unbind()),
            status,
        })
    }

    #[getter]
    fn request_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.request_id.py(py)
    }
    #[getter]
    fn current<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.current.as_ref().map(|d| PyBytes::new(py, d))
    }
    #[getter]
    fn conversation_id<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.conversation_id.as_ref().map(|v| v.py(py))
    }
    #[getter]
    fn parent_request_id<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.parent_request_id.as_ref().map(|v| v.py(py))
    }
    #[getter]
    fn parent_task_request_id<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.parent_task_request_id.as_ref().map(|v| v.py(py))
    }

    /// The fields in order, as the dataclass this replaces compared them.
    fn _fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            [
                self.request_id(py).into_any(),
                self.project.bind(py).clone().into_any(),
                self.timestamp.into_pyobject(py)?.into_any(),
                self.request_type.bind(py).clone().into_any(),
                self.current(py).into_pyobject(py)?.into_any(),
                self.conversation_id(py).into_pyobject(py)?.into_any(),
                self.branch_id
                    .as_ref()
                    .map(|b| b.bind(py).clone())
                    .into_pyobject(py)?
                    .into_any(),
                self.parent_request_id(py).into_pyobject(py)?.into_any(),
                pyo3::types::PyBool::new(py, self.is_subtask)
                    .to_owned()
                    .into_any(),
                self.parent_task_request_id(py)
                    .into_pyobject(py)?
                    .into_any(),
                self.session
                    .as_ref()
                    .map(|b| b.bind(py).clone())
                    .into_pyobject(py)?
                    .into_any(),
                self.agent_id
                    .as_ref()
                    .map(|b| b.bind(py).clone())
                    .into_pyobject(py)?
                    .into_any(),
                self.status.into_pyobject(py)?.into_any(),
            ],
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = other.py();
        match other.cast::<IndexEntry>() {
            Ok(o) => self._fields(py)?.eq(o.borrow()._fields(py)?),
            Err(_) => Ok(false),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Entry{}", self._fields(py)?.repr()?))
    }
}

/// A string's identity as the symbol table keys it: its UTF-8, or for a string holding a lone
/// surrogate (no UTF-8: a header or JSON value can carry an escaped one) its `surrogatepass`
/// encoding, which no valid string's UTF-8 equals. So such a string neither fails the index nor is
/// taken for another.
fn key<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, [u8]>> {
    match s.to_str() {
        Ok(text) => Ok(Cow::Borrowed(text.as_bytes())),
        Err(_) => Ok(Cow::Owned(
            s.call_method1("encode", ("utf-8", "surrogatepass"))?
                .extract::<Vec<u8>>()?,
        )),
    }
}

/// The interned strings, each with the number of entries that name it.
#[derive(Default)]
struct Symbols {
    strings: Vec<Option<(Py<PyString>, u32)>>,
    by_text: HashMap<Box<[u8]>, Sym>,
    free: Vec<Sym>,
}

impl Symbols {
    fn retain(&mut self, s: &Bound<'_, PyString>) -> PyResult<Sym> {
        let text = key(s)?;
        if let Some(&n) = self.by_text.get(text.as_ref()) {
            if let Some((_, count)) = self.strings[n as usize].as_mut() {
                *count += 1;
            }
            return Ok(n);
        }
        let held = Some((s.clone().unbind(), 1));
        let n = match self.free.pop() {
            Some(n) => {
                self.strings[n as usize] = held;
                n
            }
            None => {
                self.strings.push(held);
                (self.strings.len() - 1) as Sym
            }
        };
        self.by_text.insert(text.into_owned().into_boxed_slice(), n);
        Ok(n)
    }

    fn retain_opt(&mut self, s: Option<&Py<PyString>>, py: Python<'_>) -> PyResult<Sym> {
        match s {
            Some(s) => self.retain(s.bind(py)),
            None => Ok(NO),
        }
    }

    fn retain_id(&mut self, v: &IdVal, py: Python<'_>) -> PyResult<Id> {
        Ok(match v {
            IdVal::Uuid(b) => Id::Uuid(*b),
            IdVal::Str(s) => Id::Sym(self.retain(s.bind(py))?),
        })
    }

    /// An id given as a string (None stays None), counted.
    fn retain_str_id(&mut self, s: Option<&Bound<'_, PyString>>) -> PyResult<Option<Id>> {
        s.map(|s| self.retain_id(&IdVal::of(s)?, s.py()))
            .transpose()
    }

    fn retain_opt_id(&mut self, v: Option<&IdVal>, py: Python<'_>) -> PyResult<Option<Id>> {
        v.map(|v| self.retain_id(v, py)).transpose()
    }

    fn release(&mut self, n: Sym) {
        if n == NO {
            return;
        }
        let Some((s, count)) = self.strings[n as usize].as_mut() else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            if let Ok(text) = Python::attach(|py| key(s.bind(py)).map(Cow::into_owned)) {
                self.by_text.remove(text.as_slice());
            }
            self.strings[n as usize] = None;
            self.free.push(n);
        }
    }

    fn release_id(&mut self, id: Option<Id>) {
        if let Some(Id::Sym(n)) = id {
            self.release(n);
        }
    }

    fn release_slot(&mut self, s: &Slot) {
        self.release_id(Some(s.id));
        for n in [s.project, s.kind, s.branch, s.session, s.agent] {
            self.release(n);
        }
        for id in [s.conversation, s.parent, s.parent_task] {
            self.release_id(id);
        }
    }

    fn get(&self, n: Sym, py: Python<'_>) -> Option<Py<PyString>> {
        if n == NO {
            return None;
        }
        self.strings[n as usize]
            .as_ref()
            .map(|(s, _)| s.clone_ref(py))
    }

    fn id(&self, id: Id, py: Python<'_>) -> IdVal {
        match id {
            Id::Uuid(b) => IdVal::Uuid(b),
            Id::Sym(n) => IdVal::Str(self.get(n, py).expect("a held symbol")),
        }
    }

    /// The symbol of a string already interned, without counting it (a lookup's key).
    fn find(&self, s: Option<&Bound<'_, PyString>>) -> PyResult<Option<Sym>> {
        match s {
            None => Ok(Some(NO)),
            Some(s) => Ok(self.by_text.get(key(s)?.as_ref()).copied()),
        }
    }

    fn find_id(&self, s: &Bound<'_, PyString>) -> PyResult<Option<Id>> {
        Ok(match s.to_str().ok().and_then(parse_uuid) {
            Some(b) => Some(Id::Uuid(b)),
            None => self.by_text.get(key(s)?.as_ref()).map(|&n| Id::Sym(n)),
        })
    }
}

/// The linker's entries: by id, by history hash and by parent, oldest forgotten first.
#[pyclass(module = "nexus._core", name = "LinkEntries")]
pub struct LinkEntries {
    inner: Entries,
    symbols: Symbols,
    /// The request type whose entries are compactions (`nexus.conversations.classify.COMPACTION`).
    compaction: String,
}

impl LinkEntries {
    fn entry(&self, slot: &Slot, py: Python<'_>) -> IndexEntry {
        let sym = |n: Sym| self.symbols.get(n, py);
        IndexEntry {
            request_id: self.symbols.id(slot.id, py),
            project: sym(slot.project).expect("a project"),
            timestamp: slot.timestamp,
            request_type: sym(slot.kind).expect("a request type"),
            current: slot.current,
            conversation_id: slot.conversation.map(|i| self.symbols.id(i, py)),
            branch_id: sym(slot.branch),
            parent_request_id: slot.parent.map(|i| self.symbols.id(i, py)),
            is_subtask: slot.is_subtask,
            parent_task_request_id: slot.parent_task.map(|i| self.symbols.id(i, py)),
            session: sym(slot.session),
            agent_id: sym(slot.agent),
            status: slot.status,
        }
    }

    /// The id of `request_id` when the index holds it.
    fn held(&self, request_id: &Bound<'_, PyString>) -> PyResult<Option<Id>> {
        Ok(self
            .symbols
            .find_id(request_id)?
            .filter(|id| self.inner.get(id).is_some()))
    }

    fn entries(&self, found: Vec<u32>, py: Python<'_>) -> Vec<IndexEntry> {
        found
            .into_iter()
            .map(|n| self.entry(self.inner.slot(n), py))
            .collect()
    }
}

#[pymethods]
impl LinkEntries {
    #[new]
    #[pyo3(signature = (capacity, compaction))]
    fn new(capacity: usize, compaction: String) -> Self {
        LinkEntries {
            inner: Entries::new(capacity),
            symbols: Symbols::default(),
            compaction,
        }
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity
    }

    #[getter]
    fn examined(&self) -> u64 {
        self.inner.examined
    }
    #[setter]
    fn set_examined(&mut self, value: u64) {
        self.inner.examined = value;
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// File an entry; one already held (by id) is left as it is.
    #[pyo3(signature = (entry, /))]
    fn add(&mut self, entry: &Bound<'_, IndexEntry>) -> PyResult<()> {
        let py = entry.py();
        let e = entry.borrow();
        if let IdVal::Uuid(b) = e.request_id {
            if self.inner.get(&Id::Uuid(b)).is_some() {
                return Ok(());
            }
        }
        let s = &mut self.symbols;
        let slot = Slot {
            id: s.retain_id(&e.request_id, py)?,
            project: s.retain(e.project.bind(py))?,
            timestamp: e.timestamp,
            kind: s.retain(e.request_type.bind(py))?,
            compaction: e
                .request_type
                .bind(py)
                .to_str()
                .is_ok_and(|t| t == self.compaction),
            current: e.current,
            conversation: s.retain_opt_id(e.conversation_id.as_ref(), py)?,
            branch: s.retain_opt(e.branch_id.as_ref(), py)?,
            parent: s.retain_opt_id(e.parent_request_id.as_ref(), py)?,
            is_subtask: e.is_subtask,
            parent_task: s.retain_opt_id(e.parent_task_request_id.as_ref(), py)?,
            session: s.retain_opt(e.session.as_ref(), py)?,
            agent: s.retain_opt(e.agent_id.as_ref(), py)?,
            status: e.status,
        };
        let (added, forgotten) = self.inner.add(slot.clone());
        if !added {
            self.symbols.release_slot(&slot);
        }
        for old in &forgotten {
            self.symbols.release_slot(old);
        }
        Ok(())
    }

    #[pyo3(signature = (request_id, /))]
    fn get(
        &self,
        py: Python<'_>,
        request_id: &Bound<'_, PyString>,
    ) -> PyResult<Option<IndexEntry>> {
        Ok(match self.symbols.find_id(request_id)? {
            Some(id) => self.inner.get(&id).map(|s| self.entry(s, py)),
            None => None,
        })
    }

    /// Entries of `project` whose history hashes to `digest` that can win a pick for a request from
    /// `session` and `agent` (see `LinkIndex.with_hash`).
    #[pyo3(signature = (project, digest, session, agent))]
    fn with_hash(
        &mut self,
        py: Python<'_>,
        project: &Bound<'_, PyString>,
        digest: &Bound<'_, PyBytes>,
        session: Option<&Bound<'_, PyString>>,
        agent: Option<&Bound<'_, PyString>>,
    ) -> PyResult<Vec<IndexEntry>> {
        // a project, session or agent no entry names matches nothing (a symbol none has), but the
        // lookup is still made: its work is counted as the Python index counted it
        let project = self.symbols.find(Some(project))?.unwrap_or(NO - 1);
        let session = self.symbols.find(session)?.unwrap_or(NO - 1);
        let agent = self.symbols.find(agent)?.unwrap_or(NO - 1);
        let found = self
            .inner
            .with_hash(project, &self::digest(digest.as_bytes()), session, agent);
        Ok(self.entries(found, py))
    }

    #[pyo3(signature = (request_id, /))]
    fn children(
        &mut self,
        py: Python<'_>,
        request_id: &Bound<'_, PyString>,
    ) -> PyResult<Vec<IndexEntry>> {
        let Some(id) = self.symbols.find_id(request_id)? else {
            return Ok(Vec::new());
        };
        let found = self.inner.children(&id);
        Ok(self.entries(found, py))
    }

    /// Revise a held entry's conversation, branch and sub-agent mark; False when it is not held.
    #[pyo3(signature = (request_id, conversation_id, branch_id, is_subtask, /))]
    fn revise(
        &mut self,
        request_id: &Bound<'_, PyString>,
        conversation_id: Option<&Bound<'_, PyString>>,
        branch_id: Option<&Bound<'_, PyString>>,
        is_subtask: bool,
    ) -> PyResult<bool> {
        let Some(id) = self.held(request_id)? else {
            return Ok(false);
        };
        let conversation = self.symbols.retain_str_id(conversation_id)?;
        let branch = match branch_id {
            Some(b) => self.symbols.retain(b)?,
            None => NO,
        };
        let old = self
            .inner
            .revise(&id, conversation, branch, is_subtask)
            .expect("held");
        self.symbols.release_id(old.conversation);
        self.symbols.release(old.branch);
        Ok(true)
    }

    /// Give a held entry another parent or parent task (filed again under its parent's children);
    /// False when it is not held.
    #[pyo3(name = "move", signature = (request_id, parent_request_id, parent_task_request_id, /))]
    fn move_to(
        &mut self,
        request_id: &Bound<'_, PyString>,
        parent_request_id: Option<&Bound<'_, PyString>>,
        parent_task_request_id: Option<&Bound<'_, PyString>>,
    ) -> PyResult<bool> {
        let Some(id) = self.held(request_id)? else {
            return Ok(false);
        };
        let parent = self.symbols.retain_str_id(parent_request_id)?;
        let task = self.symbols.retain_str_id(parent_task_request_id)?;
        let old = self.inner.move_to(&id, parent, task).expect("held");
        self.symbols.release_id(old.parent);
        self.symbols.release_id(old.parent_task);
        Ok(true)
    }

    #[pyo3(signature = (request_id, status, /))]
    fn set_status(&mut self, request_id: &Bound<'_, PyString>, status: u8) -> PyResult<bool> {
        Ok(match self.symbols.find_id(request_id)? {
            Some(id) => self.inner.set_status(&id, status),
            None => false,
        })
    }

    /// Every entry, oldest first.
    fn entries_in_order(&self, py: Python<'_>) -> Vec<IndexEntry> {
        self.inner.iter().map(|s| self.entry(s, py)).collect()
    }

    /// Whether every entry a bucket or a parent holds is live and each group within its bound.
    fn consistent(&self) -> bool {
        self.inner.consistent()
    }

    /// Strings interned (entries' projects, sessions, agents, branches, types, non-UUID ids).
    fn symbol_count(&self) -> usize {
        self.symbols.by_text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canonical_uuid_round_trips_and_nothing_else_parses() {
        let s = "0190b5c1-7e2a-7000-8000-00000000002a";
        assert_eq!(format_uuid(&parse_uuid(s).unwrap()), s);
        assert!(parse_uuid("0190B5C1-7E2A-7000-8000-00000000002A").is_none());
        assert!(parse_uuid("conv-1").is_none());
        assert!(parse_uuid("0190b5c1x7e2a-7000-8000-00000000002a").is_none());
    }
}
