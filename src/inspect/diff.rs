//! `weir savepoint diff A B`: two snapshots side by side — per operator its parallelism,
//! watermark, entries and bytes of every state, timers, source positions and pending sink
//! transactions, with the difference — and, for one state, the keys added, removed and changed.

use std::cmp::Ordering;
use std::fmt::Write;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::{json, Value};
use weir_checkpoint::LoadedSnapshot;
use weir_state::snapshot::{decode_entry, decode_value, entry_key_group, Entry, SnapshotReader};
use weir_state::KeyGroupRange;
use weir_state::StateMeta;

use super::{Inspection, OperatorInfo, SinkSummary, SourceSummary};

/// Two snapshots compared (the `--json` form of `weir savepoint diff`).
#[derive(Debug, Serialize)]
pub struct Diff {
    /// The first snapshot.
    pub a: Side,
    /// The second snapshot.
    pub b: Side,
    /// Operators of either, in A's order then those only in B.
    pub operators: Vec<OperatorDiff>,
}

/// Which snapshot one side is.
#[derive(Debug, Serialize)]
pub struct Side {
    /// Job name.
    pub job: String,
    /// Checkpoint or savepoint id.
    pub checkpoint_id: u64,
    /// When it was taken (UTC).
    pub taken_at: String,
}

/// One operator in both snapshots.
#[derive(Debug, Serialize)]
pub struct OperatorDiff {
    /// Its uid.
    pub uid: String,
    /// Whether A has it.
    pub in_a: bool,
    /// Whether B has it.
    pub in_b: bool,
    /// What is compared, one quantity a row.
    pub rows: Vec<Row>,
}

/// One quantity in A and B.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What it is (`parallelism`, `watermark`, `state <name> entries`, `state <name> bytes`,
    /// `timers`, `bytes read`, `splits done`, `<topic> partition <n> offset`,
    /// `subtask <i> next event`, `pending files`, `pending epochs`, `pending records`).
    pub what: String,
    /// Its value in A, if A has it.
    pub a: Option<Value>,
    /// Its value in B, if B has it.
    pub b: Option<Value>,
    /// B minus A, for numbers both have.
    pub change: Option<i64>,
}

/// Compares two inspections.
pub fn diff(a: &Inspection, b: &Inspection) -> Diff {
    let side =
        |i: &Inspection| Side { job: i.job.clone(), checkpoint_id: i.checkpoint_id, taken_at: i.taken_at.clone() };
    let mut uids: Vec<&str> = a.operators.iter().map(|o| o.uid.as_str()).collect();
    uids.extend(b.operators.iter().map(|o| o.uid.as_str()).filter(|u| !a.operators.iter().any(|o| o.uid == *u)));
    let operators = uids
        .into_iter()
        .map(|uid| {
            let (oa, ob) = (a.operators.iter().find(|o| o.uid == uid), b.operators.iter().find(|o| o.uid == uid));
            OperatorDiff { uid: uid.to_string(), in_a: oa.is_some(), in_b: ob.is_some(), rows: rows(oa, ob) }
        })
        .collect();
    Diff { a: side(a), b: side(b), operators }
}

/// The quantities of one operator, by name, in display order.
fn quantities(op: &OperatorInfo) -> Vec<(String, Value)> {
    let mut q =
        vec![("parallelism".to_string(), json!(op.parallelism)), ("watermark".into(), json!(op.watermark.millis))];
    for s in &op.states {
        q.push((format!("state {} entries", s.name), json!(s.entries)));
        q.push((format!("state {} bytes", s.name), json!(s.bytes)));
    }
    if op.timers > 0 || !op.states.is_empty() {
        q.push(("timers".into(), json!(op.timers)));
    }
    match &op.source {
        Some(SourceSummary::File { splits_done, bytes_read, .. }) => {
            q.push(("bytes read".into(), json!(bytes_read)));
            q.push(("splits done".into(), json!(splits_done)));
        }
        Some(SourceSummary::Kafka { topic, partitions }) => {
            for p in partitions {
                q.push((format!("{topic} partition {} offset", p.partition), json!(p.next_offset)));
            }
        }
        Some(SourceSummary::Generator { next }) => {
            for (i, n) in next.iter().enumerate() {
                q.push((format!("subtask {i} next event"), json!(n)));
            }
        }
        Some(SourceSummary::Other) | None => {}
    }
    match &op.sink {
        Some(SinkSummary::Files { pending_files, .. }) => q.push(("pending files".into(), json!(pending_files))),
        Some(SinkSummary::Kafka { pending_epochs, pending_records, .. }) => {
            q.push(("pending epochs".into(), json!(pending_epochs)));
            q.push(("pending records".into(), json!(pending_records)));
        }
        None => {}
    }
    q
}

fn rows(a: Option<&OperatorInfo>, b: Option<&OperatorInfo>) -> Vec<Row> {
    let qa = a.map(quantities).unwrap_or_default();
    let qb = b.map(quantities).unwrap_or_default();
    let mut names: Vec<&String> = qa.iter().map(|(n, _)| n).collect();
    names.extend(qb.iter().map(|(n, _)| n).filter(|n| !qa.iter().any(|(m, _)| m == *n)));
    names
        .into_iter()
        .map(|what| {
            let va = qa.iter().find(|(n, _)| n == what).map(|(_, v)| v.clone());
            let vb = qb.iter().find(|(n, _)| n == what).map(|(_, v)| v.clone());
            let change = match (va.as_ref().and_then(Value::as_i64), vb.as_ref().and_then(Value::as_i64)) {
                // A watermark that is none or end of input has no difference in time.
                (Some(x), Some(y))
                    if what == "watermark" && [x, y].iter().any(|w| *w == i64::MIN || *w == i64::MAX) =>
                {
                    None
                }
                (Some(x), Some(y)) => Some(y.wrapping_sub(x)),
                _ => None,
            };
            Row { what: what.clone(), a: va, b: vb, change }
        })
        .collect()
}

fn shown(what: &str, v: &Option<Value>) -> String {
    match v {
        None => "-".into(),
        Some(v) if what == "watermark" => super::Watermark::of(v.as_i64().unwrap_or(i64::MIN)).time,
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The text of `weir savepoint diff`.
pub fn render(d: &Diff) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A: job '{}' checkpoint {}, taken {}\nB: job '{}' checkpoint {}, taken {}",
        d.a.job, d.a.checkpoint_id, d.a.taken_at, d.b.job, d.b.checkpoint_id, d.b.taken_at
    );
    for op in &d.operators {
        let only = match (op.in_a, op.in_b) {
            (true, false) => " (only in A)",
            (false, true) => " (only in B)",
            _ => "",
        };
        let _ = writeln!(s, "\n{}{only}", op.uid);
        let _ = writeln!(s, "  {:<36} {:>24} {:>24} {:>12}", "", "A", "B", "change");
        for r in &op.rows {
            let change = match r.change {
                Some(0) | None => String::new(),
                Some(c) => format!("{c:+}"),
            };
            let _ = writeln!(
                s,
                "  {:<36} {:>24} {:>24} {:>12}",
                r.what,
                shown(&r.what, &r.a),
                shown(&r.what, &r.b),
                change
            );
        }
    }
    s
}

/// How many entries were added, removed and changed.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyChanges {
    /// Entries only in B.
    pub added: u64,
    /// Entries only in A.
    pub removed: u64,
    /// Entries in both with different values.
    pub changed: u64,
}

/// One subtask's snapshot opened for reading, with the key groups it owns.
struct Opened {
    reader: SnapshotReader,
    range: Option<KeyGroupRange>,
}

fn open_all(snapshot: &LoadedSnapshot, uid: &str, scratch: &Path) -> Result<Vec<Opened>> {
    let op = weir_checkpoint::inspect::operator(snapshot, uid)?;
    let mut subs: Vec<_> = op.subtasks.iter().filter(|s| !s.keyed_files.is_empty()).collect();
    subs.sort_by_key(|s| s.key_groups.map(|r| r.start));
    let mut out = Vec::new();
    for sub in subs {
        let dir = scratch.join(sub.subtask.to_string());
        weir_checkpoint::materialize(snapshot, sub, &dir)?;
        out.push(Opened { reader: SnapshotReader::open(&dir)?, range: sub.key_groups });
    }
    Ok(out)
}

/// Every entry of `state` over the subtasks, in stored-key order (subtasks are in key-group
/// order and each holds one contiguous key-group range).
fn entries<'a>(opened: &'a [Opened], state: &'a str) -> impl Iterator<Item = Result<(Entry, &'a StateMeta)>> + 'a {
    opened.iter().filter_map(move |o| o.reader.meta(state).ok().map(|m| (o, m))).flat_map(move |(o, meta)| {
        let iter: Box<dyn Iterator<Item = Result<Entry>>> = match o.reader.entries(state, &[]) {
            Ok(it) => Box::new(it),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        iter.filter(move |item| match (item, o.range) {
            (Ok((k, _)), Some(range)) => entry_key_group(k).is_some_and(|kg| range.contains(kg)),
            _ => true,
        })
        .map(move |item| item.map(|e| (e, meta)))
    })
}

/// Streams the entries of `state` of operator `uid` that differ between A and B to `emit` as
/// JSON (`change`: `added`, `removed` or `changed` with `old` and `new` values), walking both in
/// key order side by side: memory stays bounded whatever the state's size.
pub fn key_changes(
    a: &LoadedSnapshot,
    b: &LoadedSnapshot,
    uid: &str,
    state: &str,
    emit: &mut dyn FnMut(&Value) -> Result<()>,
) -> Result<KeyChanges> {
    let scratch = tempfile::tempdir()?;
    let (oa, ob) = (open_all(a, uid, &scratch.path().join("a"))?, open_all(b, uid, &scratch.path().join("b"))?);
    let has = |o: &[Opened]| o.iter().any(|x| x.reader.meta(state).is_ok());
    if !has(&oa) && !has(&ob) {
        bail!("operator '{uid}' has no state '{state}' in either snapshot");
    }
    let (mut ia, mut ib) = (entries(&oa, state), entries(&ob, state));
    let (mut ca, mut cb) = (ia.next().transpose()?, ib.next().transpose()?);
    let mut counts = KeyChanges::default();
    let tagged = |change: &str, meta: &StateMeta, (k, v): &Entry| -> Result<Value> {
        let mut e = decode_entry(meta, k, v)?;
        e["change"] = json!(change);
        Ok(e)
    };
    loop {
        let order = match (&ca, &cb) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(((ka, _), _)), Some(((kb, _), _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                if let Some((e, meta)) = &ca {
                    emit(&tagged("removed", meta, e)?)?;
                    counts.removed += 1;
                }
                ca = ia.next().transpose()?;
            }
            Ordering::Greater => {
                if let Some((e, meta)) = &cb {
                    emit(&tagged("added", meta, e)?)?;
                    counts.added += 1;
                }
                cb = ib.next().transpose()?;
            }
            Ordering::Equal => {
                if let (Some(((_, va), ma)), Some((eb, mb))) = (&ca, &cb) {
                    // Equal bytes are equal values; otherwise decode (a TTL header may differ
                    // while the value does not).
                    if va != &eb.1 {
                        let (old, new) = (decode_value(ma, va)?, decode_value(mb, &eb.1)?);
                        if old != new {
                            let mut e = tagged("changed", mb, eb)?;
                            if let Some(obj) = e.as_object_mut() {
                                obj.remove("value");
                                obj.insert("old".into(), old);
                                obj.insert("new".into(), new);
                            }
                            emit(&e)?;
                            counts.changed += 1;
                        }
                    }
                }
                ca = ia.next().transpose()?;
                cb = ib.next().transpose()?;
            }
        }
    }
    Ok(counts)
}
