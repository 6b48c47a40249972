//! What `weir savepoint inspect` and `dump` show: a snapshot's operators, key groups, states with
//! entry counts and sizes, operator state (source offsets, pending sink epochs) and watermarks,
//! decoded without the job's Rust types.

use anyhow::{anyhow, Context, Result};
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

/// Every entry of one state of one operator, over all subtasks, as JSON values.
pub fn dump(snapshot: &LoadedSnapshot, uid: &str, state: &str) -> Result<Vec<serde_json::Value>> {
    let op = snapshot.meta.operator(uid).ok_or_else(|| {
        let uids: Vec<&str> = snapshot.meta.operators.iter().map(|o| o.uid.as_str()).collect();
        anyhow!("no operator with uid '{uid}'; operators: {}", uids.join(", "))
    })?;
    let tmp = tempfile::tempdir()?;
    let mut out = Vec::new();
    for sub in op.subtasks.iter().filter(|s| !s.keyed_files.is_empty()) {
        let dir = tmp.path().join(sub.subtask.to_string());
        materialize(snapshot, sub, &dir)?;
        out.extend(SnapshotReader::open(&dir)?.dump(state)?);
    }
    Ok(out)
}

/// Human-readable rendering of a report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{:?} {} of job '{}' (max parallelism {})", r.kind, r.checkpoint_id, r.job, r.max_parallelism);
    for op in &r.operators {
        let _ = writeln!(s, "\noperator {} ({}), parallelism {}", op.uid, op.name, op.parallelism);
        for st in &op.states {
            let ttl = st.ttl_ms.map(|t| format!(", ttl {t} ms")).unwrap_or_default();
            let _ =
                writeln!(s, "  state {:<24} {:?}{ttl}: {} entries, {} bytes", st.name, st.kind, st.entries, st.bytes);
        }
        for sub in &op.subtasks {
            let kg = sub.key_groups.map(|k| format!(" key groups {}..={}", k[0], k[1])).unwrap_or_default();
            let wm = if sub.watermark == i64::MIN { "none".to_string() } else { sub.watermark.to_string() };
            let _ = write!(s, "  subtask {}{kg}, watermark {wm}, timers {}", sub.subtask, sub.timers);
            match &sub.operator_state {
                Some(v) => {
                    let _ = writeln!(s, ", state {v}");
                }
                None => {
                    let _ = writeln!(s);
                }
            }
        }
    }
    s
}
