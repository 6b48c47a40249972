//! The text form of an inspection: one block per operator that a person takes in at a glance;
//! `--verbose` adds every subtask with its splits, partitions and pending files.

use std::fmt::Write;

use weir_operators::describe::{SinkPending, SourcePosition};

use super::{Inspection, OperatorInfo, Role, SinkSummary, SourceSummary};

/// Bytes with a binary unit: `312 B`, `1.5 KiB`, `3.4 MiB`.
///
/// ```
/// assert_eq!(weir::inspect::bytes(312), "312 B");
/// assert_eq!(weir::inspect::bytes(1536), "1.5 KiB");
/// ```
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn role(op: &OperatorInfo) -> &'static str {
    match op.role {
        Role::Source => "source",
        Role::Sink => "sink",
        Role::Keyed => "keyed",
        Role::Operator => "operator",
    }
}

/// The text of `weir savepoint inspect` (`verbose`: with every subtask).
pub fn render(r: &Inspection, verbose: bool) -> String {
    let mut s = String::new();
    let kind = match r.kind {
        weir_checkpoint::SnapshotKind::Checkpoint => "checkpoint",
        weir_checkpoint::SnapshotKind::Savepoint => "savepoint",
    };
    let _ = writeln!(
        s,
        "{kind} {} of job '{}', taken {}, {} key groups",
        r.checkpoint_id, r.job, r.taken_at, r.max_parallelism
    );
    for op in &r.operators {
        let _ = writeln!(s);
        operator(&mut s, op, verbose);
    }
    s
}

fn operator(s: &mut String, op: &OperatorInfo, verbose: bool) {
    let _ = writeln!(
        s,
        "{} ({}): {}, parallelism {}, watermark {}",
        op.uid,
        op.name,
        role(op),
        op.parallelism,
        op.watermark.time
    );
    let ranges: Vec<String> =
        op.subtasks.iter().filter_map(|t| t.key_groups).map(|[a, b]| format!("{a}..={b}")).collect();
    if !ranges.is_empty() {
        let _ = writeln!(s, "  key groups  {}", ranges.join(", "));
    }
    for st in &op.states {
        let ttl = st.ttl_ms.map(|t| format!(", ttl {}", humantime::format_duration(ms(t)))).unwrap_or_default();
        let kind = serde_json::to_value(st.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let _ =
            writeln!(s, "  state {:<24} {:<12} {:>12} entries {:>12}{ttl}", st.name, kind, st.entries, bytes(st.bytes));
    }
    if op.role == Role::Keyed || op.timers > 0 {
        let _ = writeln!(s, "  timers      {}", op.timers);
    }
    match &op.source {
        Some(SourceSummary::File { splits_done, splits_total, bytes_read, bytes_total }) => {
            let _ = writeln!(
                s,
                "  file        {splits_done} of {splits_total} splits done, {} of {} read ({})",
                bytes(*bytes_read),
                bytes(*bytes_total),
                percent(*bytes_read, *bytes_total)
            );
        }
        Some(SourceSummary::Kafka { topic, partitions }) => {
            // Every partition with --verbose; a line's worth otherwise.
            let shown = if verbose { partitions.len() } else { partitions.len().min(8) };
            let mut parts: Vec<String> = partitions[..shown]
                .iter()
                .map(|p| {
                    let lag = p.lag.map(|l| format!(" (lag {l})")).unwrap_or_default();
                    format!("{} at {}{lag}", p.partition, p.next_offset)
                })
                .collect();
            if shown < partitions.len() {
                parts.push(format!("and {} more (--verbose)", partitions.len() - shown));
            }
            let _ = writeln!(s, "  kafka       topic {topic}, partition next offsets: {}", parts.join(", "));
            if let Some(lag) = partitions.iter().map(|p| p.lag).sum::<Option<i64>>() {
                let _ = writeln!(s, "  lag         {lag} records behind the partitions' ends now");
            }
        }
        Some(SourceSummary::Generator { next }) => {
            let _ = writeln!(s, "  generator   next event index per subtask {next:?}");
        }
        Some(SourceSummary::Other) => {
            let nothing = op.subtasks.iter().all(|t| {
                matches!(&t.source, Some(SourcePosition::Other { state }) if state.is_null()) || t.source.is_none()
            });
            if nothing {
                let _ = writeln!(s, "  position    none kept: this source does not replay its input");
            } else {
                let _ = writeln!(s, "  position    in a format of the source's own (see --json)");
            }
        }
        None => {}
    }
    match &op.sink {
        Some(SinkSummary::Files { pending_files, checkpoints }) => {
            let _ = writeln!(s, "  files       {pending_files} pending{}", committed_by(checkpoints));
        }
        Some(SinkSummary::Kafka { transactional, topic, pending_epochs, pending_records, checkpoints, .. }) => {
            let mode = if *transactional { "transactions" } else { "published epochs" };
            let _ = writeln!(
                s,
                "  kafka       topic {topic}, {pending_epochs} {mode} pending ({pending_records} records){}",
                committed_by(checkpoints)
            );
        }
        None => {}
    }
    if verbose {
        for t in &op.subtasks {
            subtask(s, t);
        }
    }
}

fn committed_by(checkpoints: &[u64]) -> String {
    if checkpoints.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = checkpoints.iter().map(u64::to_string).collect();
    format!(", committed by checkpoint {}", ids.join(", "))
}

fn ms(t: i64) -> std::time::Duration {
    std::time::Duration::from_millis(t.max(0) as u64)
}

fn subtask(s: &mut String, t: &super::SubtaskInfo) {
    let kg = t.key_groups.map(|[a, b]| format!(", key groups {a}..={b}")).unwrap_or_default();
    let timers = if t.timers > 0 { format!(", {} timers", t.timers) } else { String::new() };
    let _ = writeln!(s, "  subtask {}{kg}, watermark {}{timers}", t.subtask, t.watermark.time);
    match &t.source {
        Some(SourcePosition::File(f)) => {
            for sp in &f.splits {
                let state = if sp.done { "done".to_string() } else { format!("at byte {}", sp.offset) };
                let _ = writeln!(s, "    split {:<4} {} bytes {}..{}: {state}", sp.id, sp.path, sp.start, sp.end);
            }
        }
        Some(SourcePosition::Kafka(k)) => {
            for p in &k.partitions {
                let stop = p.stop_offset.map(|o| format!(", stops at {o}")).unwrap_or_default();
                let _ = writeln!(s, "    {} partition {:<4} next offset {}{stop}", k.topic, p.partition, p.next_offset);
            }
        }
        Some(SourcePosition::Generator { next }) => {
            let _ = writeln!(s, "    next event index {next}");
        }
        Some(SourcePosition::Other { state }) => {
            let _ = writeln!(s, "    state {state}");
        }
        None => {}
    }
    match &t.sink {
        Some(SinkPending::Files { pending }) => {
            for p in pending {
                let _ = writeln!(s, "    pending {} (checkpoint {})", p.file, p.checkpoint);
            }
        }
        Some(SinkPending::Kafka { producer_id, pending, .. }) => {
            let _ = writeln!(s, "    producer {producer_id}");
            for e in pending {
                let _ = writeln!(s, "    pending epoch of checkpoint {}: {} records", e.checkpoint, e.records);
            }
        }
        None => {}
    }
}
