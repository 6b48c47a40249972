//! What `weir savepoint inspect` and `dump` show: a snapshot's operators, key groups, states with
//! entry counts and sizes, operator state (source offsets, pending sink epochs) and watermarks,
//! decoded without the job's Rust types.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use weir_state::snapshot::SnapshotReader;

use crate::metadata::{LoadedSnapshot, SubtaskSnapshot};
use crate::storage::materialize;

/// The operator state of a subtask, as JSON.
pub fn operator_state(snapshot: &LoadedSnapshot, sub: &SubtaskSnapshot) -> Result<Option<serde_json::Value>> {
    match &sub.operator_state {
        None => Ok(None),
        Some(f) => {
            let bytes = std::fs::read(snapshot.base.join(&f.path))?;
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("decoding {}", f.path))?))
        }
    }
}

/// One state of an operator, summed over subtasks.
#[derive(Debug, Serialize)]
pub struct StateReport {
    /// Name.
    pub name: String,
    /// Kind (value, list, map, reducing, aggregating).
    pub kind: weir_state::StateKind,
    /// Time-to-live in ms, if any.
    pub ttl_ms: Option<i64>,
    /// Entries over all subtasks.
    pub entries: u64,
    /// Bytes of keys and values over all subtasks.
    pub bytes: u64,
}

/// One subtask of an operator.
#[derive(Debug, Serialize)]
pub struct SubtaskReport {
    /// Index.
    pub subtask: usize,
    /// Key groups (inclusive), if keyed.
    pub key_groups: Option<[u16; 2]>,
    /// Watermark at the snapshot.
    pub watermark: i64,
    /// Registered timers.
    pub timers: u64,
    /// Operator state (source offsets, pending sink epochs), as JSON.
    pub operator_state: Option<serde_json::Value>,
}

/// One operator of a snapshot.
#[derive(Debug, Serialize)]
pub struct OperatorReport {
    /// Stable id.
    pub uid: String,
    /// Display name.
    pub name: String,
    /// Parallelism at the snapshot.
    pub parallelism: usize,
    /// Keyed states.
    pub states: Vec<StateReport>,
    /// Subtasks.
    pub subtasks: Vec<SubtaskReport>,
}

/// The whole report of `weir savepoint inspect`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Job name.
    pub job: String,
    /// Checkpoint or savepoint.
    pub kind: crate::SnapshotKind,
    /// Id in the job's checkpoint sequence.
    pub checkpoint_id: u64,
    /// Trigger time (epoch ms).
    pub timestamp: i64,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// Operators.
    pub operators: Vec<OperatorReport>,
}

/// Builds the inspection report of a snapshot (opens every subtask's RocksDB files).
pub fn inspect(snapshot: &LoadedSnapshot) -> Result<Report> {
    let tmp = tempfile::tempdir()?;
    let mut operators = Vec::new();
    for op in &snapshot.meta.operators {
        let mut states: Vec<StateReport> = Vec::new();
        let mut subtasks = Vec::new();
        for sub in &op.subtasks {
            let mut timers = 0;
            if !sub.keyed_files.is_empty() {
                let dir = tmp.path().join(format!("{}-{}", op.uid, sub.subtask));
                materialize(snapshot, sub, &dir)?;
                let reader = SnapshotReader::open(&dir)?;
                let (stats, t) = reader.stats()?;
                timers = t;
                for s in stats {
                    match states.iter_mut().find(|r| r.name == s.meta.name) {
                        Some(r) => {
                            r.entries += s.entries;
                            r.bytes += s.bytes;
                        }
                        None => states.push(StateReport {
                            name: s.meta.name.clone(),
                            kind: s.meta.kind,
                            ttl_ms: s.meta.ttl.map(|t| t.ttl_ms),
                            entries: s.entries,
                            bytes: s.bytes,
                        }),
                    }
                }
            }
            subtasks.push(SubtaskReport {
                subtask: sub.subtask,
                key_groups: sub.key_groups.map(|r| [r.start, r.end]),
                watermark: sub.watermark,
                timers,
                operator_state: operator_state(snapshot, sub)?,
            });
        }
        operators.push(OperatorReport {
            uid: op.uid.clone(),
            name: op.name.clone(),
            parallelism: op.parallelism,
            states,
            subtasks,
        });
    }
    let m = &snapshot.meta;
    Ok(Report {
        job: m.job.clone(),
        kind: m.kind,
        checkpoint_id: m.checkpoint_id,
        timestamp: m.timestamp,
        max_parallelism: m.max_parallelism,
        operators,
    })
}

/// Which entries `weir savepoint dump` prints.
#[derive(Clone, Debug, Default)]
pub struct DumpFilter {
    /// Only this key, given as JSON and encoded the way jobs encode keys.
    pub key: Option<serde_json::Value>,
    /// Only this key group.
    pub key_group: Option<u16>,
    /// At most this many entries.
    pub limit: Option<u64>,
}

/// The operator `uid` of a snapshot, or an error naming the operators there are.
pub fn operator<'a>(snapshot: &'a LoadedSnapshot, uid: &str) -> Result<&'a crate::OperatorSnapshot> {
    snapshot.meta.operator(uid).ok_or_else(|| {
        let uids: Vec<&str> = snapshot.meta.operators.iter().map(|o| o.uid.as_str()).collect();
        anyhow!("no operator with uid '{uid}'; operators: {}", uids.join(", "))
    })
}

/// Passes the entries of one state of one operator that `filter` selects to `emit`, decoded to
/// JSON, one at a time: one subtask's files are on local disk at once and no entries are
/// collected, so a state of any size dumps in bounded memory. Returns how many were emitted.
///
/// A key is looked up by its encoding (MessagePack of the JSON value: equal to the job's for
/// numbers, strings, booleans, tuples and sequences). A key whose encoding differs, such as a
/// struct whose fields the JSON lists in another order, is found by comparing every key.
pub fn dump(
    snapshot: &LoadedSnapshot,
    uid: &str,
    state: &str,
    filter: &DumpFilter,
    emit: &mut dyn FnMut(&serde_json::Value) -> Result<()>,
) -> Result<u64> {
    let op = operator(snapshot, uid)?;
    if !op.keyed {
        bail!("operator '{uid}' has no keyed state");
    }
    let mut prefix = Vec::new();
    let mut key_group = filter.key_group;
    if let Some(key) = &filter.key {
        let bytes = weir_state::codec::encode(key)?;
        let kg = weir_state::keygroup::key_group_of(&bytes, snapshot.meta.max_parallelism);
        if filter.key_group.is_some_and(|g| g != kg) {
            return Ok(0);
        }
        key_group = Some(kg);
        prefix.extend_from_slice(&kg.to_be_bytes());
        prefix.extend_from_slice(&bytes);
    } else if let Some(kg) = key_group {
        prefix.extend_from_slice(&kg.to_be_bytes());
    }
    let limit = filter.limit.unwrap_or(u64::MAX);
    let mut emitted = walk(
        snapshot,
        op,
        state,
        &prefix,
        key_group,
        &mut |v| {
            emit(v)?;
            Ok(true)
        },
        limit,
    )?;
    if emitted == 0 {
        if let Some(key) = &filter.key {
            // The job encoded the key differently (a struct's field order): compare decoded keys.
            emitted = walk(
                snapshot,
                op,
                state,
                &[],
                filter.key_group,
                &mut |v| {
                    if v.get("key") == Some(key) {
                        emit(v)?;
                        return Ok(true);
                    }
                    Ok(false)
                },
                limit,
            )?;
        }
    }
    Ok(emitted)
}

/// Walks the subtasks that can hold `key_group` (all if `None`), passing entries under `prefix`
/// to `f`, which says whether it counted the entry against `limit`.
fn walk(
    snapshot: &LoadedSnapshot,
    op: &crate::OperatorSnapshot,
    state: &str,
    prefix: &[u8],
    key_group: Option<u16>,
    f: &mut dyn FnMut(&serde_json::Value) -> Result<bool>,
    limit: u64,
) -> Result<u64> {
    let mut counted = 0;
    let mut known_state = false;
    let mut names = Vec::new();
    for sub in op.subtasks.iter().filter(|s| !s.keyed_files.is_empty()) {
        if let (Some(kg), Some(range)) = (key_group, sub.key_groups) {
            if !range.contains(kg) {
                continue;
            }
        }
        if counted >= limit {
            break;
        }
        let tmp = tempfile::tempdir()?;
        materialize(snapshot, sub, tmp.path())?;
        let reader = SnapshotReader::open(tmp.path())?;
        let Ok(meta) = reader.meta(state) else {
            names.extend(reader.states().iter().map(|m| m.name.clone()));
            continue;
        };
        known_state = true;
        for entry in reader.entries(state, prefix)? {
            let (k, v) = entry?;
            // A subtask's files hold only its key groups; anything else is not its state.
            let kg = weir_state::snapshot::entry_key_group(&k);
            if let (Some(kg), Some(range)) = (kg, sub.key_groups) {
                if !range.contains(kg) {
                    continue;
                }
            }
            if f(&weir_state::snapshot::decode_entry(meta, &k, &v)?)? {
                counted += 1;
                if counted >= limit {
                    break;
                }
            }
        }
    }
    if !known_state && !names.is_empty() {
        names.sort();
        names.dedup();
        bail!("operator '{}' has no state '{state}'; states: {}", op.uid, names.join(", "));
    }
    Ok(counted)
}
