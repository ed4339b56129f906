//! The linker's bounded index of recent requests (`nexus/conversations/index.py` drives it): requests
//! by id, by history hash and by parent, oldest forgotten first.
//!
//! It held 50,000 Python objects of ~0.35 KB each (an entry, its id, its hash, its timestamp, dict
//! slots) that grew a worker's resident size by ~0.57 KB a request (pymalloc pools pinned by them):
//! here an entry is one slot of a vector (ids as 16 bytes, strings as symbols the caller interns),
//! filed in three hash maps. The rules are the Python index's, unchanged: what a bucket keeps is only
//! what can still change a decision, so a lookup's work never grows with how often a body was seen.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

/// A string the caller interned (project, session, agent, request type, branch); [`NO`] for None.
pub type Sym = u32;
pub const NO: Sym = u32::MAX;
pub const PENDING: u8 = 0;
pub const OK: u8 = 1;
pub const FAILED: u8 = 2;
/// Entries kept per history hash for each (project, session, agent), each (project, agent), each
/// (project, session) and each project: the newest, and always the newest that succeeded.
pub const PER_KEY: usize = 4;
/// Distinct child histories kept per parent, for ordinary children and for compactions apart, each by
/// its oldest and its newest request.
pub const CHILD_HISTORIES: usize = 3;

/// A request or conversation id: a canonical UUID as its 16 bytes, any other string as a symbol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Id {
    Uuid([u8; 16]),
    Sym(Sym),
}

/// What the linker remembers of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub id: Id,
    pub project: Sym,
    pub timestamp: f64,
    pub kind: Sym,
    /// Whether `kind` is a compaction (children of one kind and the other are kept apart).
    pub compaction: bool,
    pub current: Option<[u8; 16]>,
    pub conversation: Option<Id>,
    pub branch: Sym,
    pub parent: Option<Id>,
    pub is_subtask: bool,
    pub parent_task: Option<Id>,
    pub session: Sym,
    pub agent: Sym,
    pub status: u8,
}

type Map<K, V> = HashMap<K, V, RandomState>;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    SessionAgent(Sym, Sym, Sym),
    Project(Sym),
    Agent(Sym, Sym),
    Session(Sym, Sym),
}

/// The requests that share one history hash (two or more), kept per group a pick can prefer.
#[derive(Default)]
struct Bucket {
    groups: Map<Group, Vec<u32>>,
}

enum ByHash {
    One(u32),
    Bucket(Box<Bucket>),
}

/// A parent's children: most have one (no allocation); the few with more keep a boxed slice, so an
/// entry of the map is 16 bytes, not the 32 of an inline `Vec`.
enum Kids {
    One(u32),
    Many(Box<[u32]>),
}

pub struct LinkEntries {
    pub capacity: usize,
    /// Entries and lookup work looked at since start (the linker's work, counted).
    pub examined: u64,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_id: Map<Id, u32>,
    order: VecDeque<u32>,
    by_hash: Map<[u8; 16], ByHash>,
    children: Map<Id, Kids>,
}

fn groups(s: &Slot) -> impl Iterator<Item = Group> {
    let sa = Some(Group::SessionAgent(s.project, s.session, s.agent));
    let p = Some(Group::Project(s.project));
    let a = (s.agent != NO).then_some(Group::Agent(s.project, s.agent));
    let se = (s.session != NO).then_some(Group::Session(s.project, s.session));
    [sa, p, a, se].into_iter().flatten()
}

fn drop_item(items: &mut Vec<u32>, item: u32) -> bool {
    match items.iter().position(|&x| x == item) {
        Some(n) => {
            items.remove(n);
            true
        }
        None => false,
    }
}

impl LinkEntries {
    pub fn new(capacity: usize) -> Self {
        LinkEntries {
            capacity,
            examined: 0,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: Map::default(),
            order: VecDeque::new(),
            by_hash: Map::default(),
            children: Map::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn slot(&self, n: u32) -> &Slot {
        self.slots[n as usize].as_ref().expect("a live slot")
    }

    pub fn get(&self, id: &Id) -> Option<&Slot> {
        self.by_id.get(id).map(|&n| self.slot(n))
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.order.iter().map(|&n| self.slot(n))
    }

    /// File a request; an id already held is left as it is (returns false). Returns the entries
    /// forgotten to stay within `capacity`, for the caller to release their symbols.
    pub fn add(&mut self, slot: Slot) -> (bool, Vec<Slot>) {
        if self.by_id.contains_key(&slot.id) {
            return (false, Vec::new());
        }
        let id = slot.id;
        let current = slot.current;
        let n = match self.free.pop() {
            Some(n) => {
                self.slots[n as usize] = Some(slot);
                n
            }
            None => {
                if self.slots.len() == self.slots.capacity() {
                    // grow by doubling, but never past the bound: the last doubling would leave up to
                    // half the vector unused for good (~40 bytes an entry at the default bound)
                    let room = self
                        .slots
                        .len()
                        .max(16)
                        .min(self.capacity + 1 - self.slots.len());
                    self.slots.reserve_exact(room.max(1));
                }
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, n);
        self.order.push_back(n);
        if let Some(digest) = current {
            match self.by_hash.remove(&digest) {
                None => {
                    self.by_hash.insert(digest, ByHash::One(n));
                }
                Some(ByHash::Bucket(mut bucket)) => {
                    self.examined += self.bucket_add(&mut bucket, n);
                    self.by_hash.insert(digest, ByHash::Bucket(bucket));
                }
                Some(ByHash::One(held)) => {
                    let mut bucket = Box::<Bucket>::default();
                    self.examined += self.bucket_add(&mut bucket, held);
                    self.examined += self.bucket_add(&mut bucket, n);
                    self.by_hash.insert(digest, ByHash::Bucket(bucket));
                }
            }
        }
        self.adopt(n);
        let mut forgotten = Vec::new();
        while self.by_id.len() > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            forgotten.push(self.forget(old));
        }
        (true, forgotten)
    }

    fn forget(&mut self, n: u32) -> Slot {
        let (id, current) = {
            let s = self.slot(n);
            (s.id, s.current)
        };
        if let Some(digest) = current {
            match self.by_hash.remove(&digest) {
                Some(ByHash::One(held)) if held != n => {
                    self.by_hash.insert(digest, ByHash::One(held));
                }
                Some(ByHash::Bucket(mut bucket)) => {
                    self.examined += self.bucket_remove(&mut bucket, n);
                    if !bucket.groups.is_empty() {
                        self.by_hash.insert(digest, ByHash::Bucket(bucket));
                    }
                }
                _ => {}
            }
        }
        self.disown(n);
        self.by_id.remove(&id);
        self.free.push(n);
        self.slots[n as usize].take().expect("a live slot")
    }

    /// Entries of `project` whose history hashes to `digest` that can win the linker's pick for a
    /// request from `session` and `agent`: the newest few of each group (the same may appear twice).
    pub fn with_hash(
        &mut self,
        project: Sym,
        digest: &[u8; 16],
        session: Sym,
        agent: Sym,
    ) -> Vec<u32> {
        match self.by_hash.get(digest) {
            None => Vec::new(),
            Some(ByHash::One(n)) => {
                self.examined += 1;
                if self.slot(*n).project == project {
                    vec![*n]
                } else {
                    Vec::new()
                }
            }
            Some(ByHash::Bucket(bucket)) => {
                let get = |g: Group| bucket.groups.get(&g).map(Vec::as_slice).unwrap_or(&[]);
                let mut out: Vec<u32> = Vec::new();
                out.extend_from_slice(get(Group::SessionAgent(project, session, agent)));
                out.extend_from_slice(get(Group::Project(project)));
                if agent != NO {
                    out.extend_from_slice(get(Group::Agent(project, agent)));
                }
                if session != NO {
                    out.extend_from_slice(get(Group::Session(project, session)));
                }
                self.examined += out.len() as u64;
                out
            }
        }
    }

    /// Children of a request that can make a newcomer a branch (see `adopt`).
    pub fn children(&mut self, id: &Id) -> Vec<u32> {
        let out = match self.children.get(id) {
            None => Vec::new(),
            Some(Kids::One(n)) => vec![*n],
            Some(Kids::Many(v)) => v.to_vec(),
        };
        self.examined += out.len() as u64;
        out
    }

    /// Revise an entry's conversation, branch and sub-agent mark (a decision taken again after a
    /// database lookup). Returns the entry as it was, or None when it is not held.
    pub fn revise(
        &mut self,
        id: &Id,
        conversation: Option<Id>,
        branch: Sym,
        is_subtask: bool,
    ) -> Option<Slot> {
        let &n = self.by_id.get(id)?;
        let s = self.slots[n as usize].as_mut().expect("a live slot");
        let old = s.clone();
        s.conversation = conversation;
        s.branch = branch;
        s.is_subtask = is_subtask;
        Some(old)
    }

    /// Give a held entry another parent or parent task: it is filed again under its parent's
    /// children. Returns the entry as it was, or None when it is not held.
    pub fn move_to(
        &mut self,
        id: &Id,
        parent: Option<Id>,
        parent_task: Option<Id>,
    ) -> Option<Slot> {
        let &n = self.by_id.get(id)?;
        self.disown(n);
        let s = self.slots[n as usize].as_mut().expect("a live slot");
        let old = s.clone();
        s.parent = parent;
        s.parent_task = parent_task;
        self.adopt(n);
        Some(old)
    }

    pub fn set_status(&mut self, id: &Id, status: u8) -> bool {
        match self.by_id.get(id) {
            Some(&n) => {
                self.slots[n as usize].as_mut().expect("a live slot").status = status;
                true
            }
            None => false,
        }
    }

    /// File entry `n` under its parent's children, keeping only what "does the parent already have a
    /// child with another history?" needs: a sub-agent the parent spawned is not filed; children with
    /// one history are kept by their oldest and newest request; only the first `CHILD_HISTORIES`
    /// histories of ordinary children and of compactions are kept.
    fn adopt(&mut self, n: u32) {
        let (parent, parent_task, current, compaction, ts) = {
            let s = self.slot(n);
            (
                s.parent,
                s.parent_task,
                s.current,
                s.compaction,
                s.timestamp,
            )
        };
        let Some(parent) = parent else { return };
        if parent_task == Some(parent) {
            return;
        }
        let mut kids = match self.children.remove(&parent) {
            None => {
                self.children.insert(parent, Kids::One(n));
                return;
            }
            Some(Kids::One(k)) => vec![k],
            Some(Kids::Many(v)) => v.into_vec(),
        };
        self.examined += kids.len() as u64;
        let same: Vec<u32> = kids
            .iter()
            .copied()
            .filter(|&k| {
                let c = self.slot(k);
                c.current == current && c.compaction == compaction
            })
            .collect();
        let keep = if same.is_empty() {
            let mut histories: Vec<Option<[u8; 16]>> = Vec::new();
            for &k in &kids {
                let c = self.slot(k);
                if c.compaction == compaction && !histories.contains(&c.current) {
                    histories.push(c.current);
                }
            }
            histories.len() < CHILD_HISTORIES
        } else if same.len() >= 2 {
            // Python's min/max by timestamp: the first of equals wins
            let ts_of = |k: u32| self.slot(k).timestamp;
            let mut oldest = same[0];
            let mut newest = same[0];
            for &k in &same[1..] {
                if ts_of(k) < ts_of(oldest) {
                    oldest = k;
                }
                if ts_of(k) > ts_of(newest) {
                    newest = k;
                }
            }
            if ts >= ts_of(newest) {
                drop_item(&mut kids, newest);
                true
            } else if ts < ts_of(oldest) {
                drop_item(&mut kids, oldest);
                true
            } else {
                false
            }
        } else {
            true
        };
        if keep {
            kids.push(n);
        }
        let held = if kids.len() == 1 {
            Kids::One(kids[0])
        } else {
            Kids::Many(kids.into_boxed_slice())
        };
        self.children.insert(parent, held);
    }

    fn disown(&mut self, n: u32) {
        let Some(parent) = self.slot(n).parent else {
            return;
        };
        match self.children.remove(&parent) {
            Some(Kids::One(k)) if k != n => {
                self.children.insert(parent, Kids::One(k));
            }
            Some(Kids::Many(v)) => {
                let mut v = v.into_vec();
                self.examined += v.len() as u64;
                drop_item(&mut v, n);
                match v.len() {
                    0 => {}
                    1 => {
                        self.children.insert(parent, Kids::One(v[0]));
                    }
                    _ => {
                        self.children
                            .insert(parent, Kids::Many(v.into_boxed_slice()));
                    }
                }
            }
            _ => {}
        }
    }

    /// File `n` in each of its groups; past `PER_KEY` a group drops its oldest entry, unless that is
    /// its newest that succeeded. Returns how many entries were looked at.
    fn bucket_add(&self, bucket: &mut Bucket, n: u32) -> u64 {
        let mut seen = 0;
        for g in groups(self.slot(n)) {
            let group = bucket.groups.entry(g).or_default();
            if group.is_empty() {
                group.push(n);
                continue;
            }
            group.push(n);
            seen += group.len() as u64;
            if group.len() > PER_KEY {
                let mut ok: Option<u32> = None;
                for &k in group.iter() {
                    let s = self.slot(k);
                    if s.status == OK && ok.is_none_or(|o| s.timestamp > self.slot(o).timestamp) {
                        ok = Some(k);
                    }
                }
                let mut oldest: Option<u32> = None;
                for &k in group.iter() {
                    if Some(k) == ok {
                        continue;
                    }
                    if oldest.is_none_or(|o| self.slot(k).timestamp < self.slot(o).timestamp) {
                        oldest = Some(k);
                    }
                }
                if let Some(o) = oldest {
                    drop_item(group, o);
                }
            }
        }
        seen
    }

    fn bucket_remove(&self, bucket: &mut Bucket, n: u32) -> u64 {
        let mut seen = 0;
        for g in groups(self.slot(n)) {
            if let Some(group) = bucket.groups.get_mut(&g) {
                seen += group.len() as u64;
                if drop_item(group, n) && group.is_empty() {
                    bucket.groups.remove(&g);
                }
            }
        }
        seen
    }

    /// Whether every entry a bucket or a parent's children hold is a live entry, each group within
    /// its bound (for tests).
    pub fn consistent(&self) -> bool {
        let live = |n: &u32| self.slots.get(*n as usize).is_some_and(Option::is_some);
        let hashes = self.by_hash.values().all(|held| match held {
            ByHash::One(n) => live(n),
            ByHash::Bucket(b) => b
                .groups
                .values()
                .all(|g| !g.is_empty() && g.len() <= PER_KEY && g.iter().all(live)),
        });
        let kids = self.children.values().all(|held| match held {
            Kids::One(n) => live(n),
            Kids::Many(v) => v.len() >= 2 && v.len() <= 4 * CHILD_HISTORIES && v.iter().all(live),
        });
        hashes && kids && self.order.len() == self.by_id.len() && self.order.iter().all(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: u8, current: u8, parent: Option<u8>, ts: f64) -> Slot {
        Slot {
            id: Id::Uuid([n; 16]),
            project: 1,
            timestamp: ts,
            kind: 2,
            compaction: false,
            current: Some([current; 16]),
            conversation: None,
            branch: NO,
            parent: parent.map(|p| Id::Uuid([p; 16])),
            is_subtask: false,
            parent_task: None,
            session: 3,
            agent: NO,
            status: PENDING,
        }
    }

    #[test]
    fn the_oldest_is_forgotten_past_capacity() {
        let mut e = LinkEntries::new(2);
        for n in 1..=3 {
            e.add(slot(n, n, None, n as f64));
        }
        assert_eq!(e.len(), 2);
        assert!(e.get(&Id::Uuid([1; 16])).is_none() && e.get(&Id::Uuid([3; 16])).is_some());
        assert!(e.with_hash(1, &[1; 16], 3, NO).is_empty());
        assert!(e.consistent());
    }

    #[test]
    fn a_repeated_hash_keeps_per_key_entries_a_group() {
        let mut e = LinkEntries::new(1000);
        for n in 1..=50 {
            e.add(slot(n, 7, None, n as f64));
        }
        let found = e.with_hash(1, &[7; 16], 3, NO);
        // (project, session, agent), project, (project, session): PER_KEY each
        assert_eq!(found.len(), 3 * PER_KEY);
        assert!(e.consistent());
    }

    #[test]
    fn children_of_one_history_are_kept_by_oldest_and_newest() {
        let mut e = LinkEntries::new(1000);
        e.add(slot(1, 1, None, 0.0));
        for n in 2..=20 {
            e.add(slot(n, 9, Some(1), n as f64));
        }
        let kids = e.children(&Id::Uuid([1; 16]));
        let ts: Vec<f64> = kids.iter().map(|&k| e.slot(k).timestamp).collect();
        assert_eq!(ts, vec![2.0, 20.0]);
        assert!(e.consistent());
    }

    #[test]
    fn moving_refiles_under_the_new_parent() {
        let mut e = LinkEntries::new(1000);
        e.add(slot(1, 1, None, 0.0));
        e.add(slot(2, 2, None, 0.0));
        e.add(slot(3, 3, Some(1), 1.0));
        e.move_to(&Id::Uuid([3; 16]), Some(Id::Uuid([2; 16])), None);
        assert!(e.children(&Id::Uuid([1; 16])).is_empty());
        assert_eq!(e.children(&Id::Uuid([2; 16])).len(), 1);
        assert!(e.consistent());
    }
}
