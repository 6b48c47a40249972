//! Part-file sinks: each sink subtask writes its own files under the output directory, as CSV
//! (with a header per file for struct rows), JSON lines or Parquet, optionally split into
//! bucket subdirectories (`year=2026/month=01/...`) chosen per record.
//!
//! Without checkpoints a subtask writes one visible file per bucket, `part-<subtask>.<ext>`.
//! With checkpoints the sink is exactly-once (two-phase commit, as Flink's and Spark's file
//! sinks): records go to a hidden in-progress file (`.part-<subtask>-<seq>.<ext>.inprogress`,
//! skipped by readers); at checkpoint `n` the file is closed, fsynced and recorded in the sink's
//! state as pending; when checkpoint `n` completes it is renamed to
//! `part-<subtask>-<n>.<ext>`. A crash between completion and rename is repaired on restore,
//! which commits the pending files the checkpoint holds and deletes in-progress files written
//! after it (their records are replayed).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use weir_runtime::fault::crash_point;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record, TaskInfo};

use super::parquet::ParquetPart;

/// The format of part files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values; struct rows get a header line.
    Csv,
    /// One JSON value per line.
    JsonLines,
    /// Apache Parquet, with the Arrow schema traced from the record type.
    Parquet,
}

impl FileFormat {
    fn extension(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::JsonLines => "jsonl",
            FileFormat::Parquet => "parquet",
        }
    }
}

type BucketFn<T> = Arc<dyn Fn(&T) -> String + Send + Sync>;

/// Where and how a [`FileSinkOperator`] writes.
///
/// ```
/// use weir_operators::sinks::FileSink;
/// #[derive(serde::Serialize)]
/// struct Row { hour: i64, n: u64 }
/// // Parquet files under out/hour=<h>/, like Spark's partitionBy("hour").
/// let sink = FileSink::<Row>::parquet("out").bucket_by(|r: &Row| format!("hour={}", r.hour));
/// assert_eq!(sink.dir(), std::path::Path::new("out"));
/// ```
pub struct FileSink<T> {
    dir: PathBuf,
    format: FileFormat,
    bucket: Option<BucketFn<T>>,
    timestamp_columns: Vec<String>,
}

impl<T> Clone for FileSink<T> {
    fn clone(&self) -> Self {
        FileSink {
            dir: self.dir.clone(),
            format: self.format,
            bucket: self.bucket.clone(),
            timestamp_columns: self.timestamp_columns.clone(),
        }
    }
}

impl<T> std::fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.dir)
            .field("format", &self.format)
            .field("bucketed", &self.bucket.is_some())
            .finish()
    }
}

impl<T> FileSink<T> {
    fn new(dir: PathBuf, format: FileFormat) -> Self {
        FileSink { dir, format, bucket: None, timestamp_columns: Vec::new() }
    }
    /// CSV part files under `dir`.
    pub fn csv(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir.into(), FileFormat::Csv)
    }
    /// JSON-lines part files under `dir`.
    pub fn json_lines(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir.into(), FileFormat::JsonLines)
    }
    /// Parquet part files under `dir`; one row group per 8192 records and per checkpoint.
    pub fn parquet(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir.into(), FileFormat::Parquet)
    }
    /// Writes each record into the subdirectory `f` names (e.g. `year=2026/month=01`), as
    /// Flink's bucket assigners and Spark's `partitionBy` do.
    pub fn bucket_by(mut self, f: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        self.bucket = Some(Arc::new(f));
        self
    }
    /// Parquet: store these integer columns (epoch milliseconds) as UTC timestamps, so that
    /// Spark, pandas and DuckDB read them as times.
    pub fn timestamp_millis(mut self, columns: &[&str]) -> Self {
        self.timestamp_columns = columns.iter().map(|c| c.to_string()).collect();
        self
    }
    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn operator(&self, info: &TaskInfo) -> FileSinkOperator<T> {
        FileSinkOperator {
            sink: self.clone(),
            subtask: info.subtask,
            writers: BTreeMap::new(),
            seq: 0,
            pending: Vec::new(),
            parquet_schema: None,
        }
    }
}

enum Writer<T> {
    Csv(Box<csv::Writer<BufWriter<File>>>),
    Json(BufWriter<File>),
    Parquet(Box<ParquetPart<T>>),
}

impl<T: Serialize> Writer<T> {
    fn write(&mut self, value: T) -> Result<()> {
        match self {
            Writer::Csv(w) => w.serialize(&value)?,
            Writer::Json(w) => {
                serde_json::to_writer(&mut *w, &value)?;
                w.write_all(b"\n")?;
            }
            Writer::Parquet(w) => w.write(value)?,
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Writer::Csv(w) => w.flush()?,
            Writer::Json(w) => w.flush()?,
            // Parquet data is readable only once the footer is written: nothing to flush early.
            Writer::Parquet(_) => {}
        }
        Ok(())
    }

    /// Flushes, fsyncs and closes the file.
    fn close(self) -> Result<()> {
        let file = match self {
            Writer::Csv(w) => {
                let buf = w.into_inner().map_err(|e| anyhow::anyhow!("flushing CSV: {}", e.error()))?;
                buf.into_inner().map_err(|e| anyhow::anyhow!("flushing: {}", e.error()))?
            }
            Writer::Json(w) => w.into_inner().map_err(|e| anyhow::anyhow!("flushing: {}", e.error()))?,
            Writer::Parquet(w) => w.finish()?,
        };
        file.sync_all()?;
        Ok(())
    }
}

/// A closed in-progress file waiting for its checkpoint to complete.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingFile {
    checkpoint: u64,
    hidden: String,
    visible: String,
}

/// The sink's checkpointed state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SinkState {
    subtask: usize,
    seq: u64,
    pending: Vec<PendingFile>,
}

/// Writes one subtask's records to its part files.
pub struct FileSinkOperator<T> {
    sink: FileSink<T>,
    subtask: usize,
    /// The open file of each bucket and its path relative to the output directory (hidden
    /// while checkpointing, visible otherwise).
    writers: BTreeMap<String, (Writer<T>, String)>,
    seq: u64,
    pending: Vec<PendingFile>,
    parquet_schema: Option<super::parquet::Schema>,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Paths of all files under `dir`, relative to it.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).with_context(|| format!("listing {}", dir.join(&rel).display()))? {
            let e = e?;
            let path = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

impl<T: Data + Serialize> FileSinkOperator<T> {
    fn bucket_of(&self, value: &T) -> String {
        self.sink.bucket.as_ref().map(|f| f(value)).unwrap_or_default()
    }

    /// `name` in the directory of `bucket`, relative to the output directory.
    fn in_bucket(bucket: &str, name: String) -> String {
        if bucket.is_empty() {
            name
        } else {
            format!("{bucket}/{name}")
        }
    }

    fn open_file(&mut self, rel: &str) -> Result<Writer<T>> {
        let path = self.sink.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(match self.sink.format {
            FileFormat::Csv => Writer::Csv(Box::new(
                csv::WriterBuilder::new().has_headers(true).from_writer(BufWriter::with_capacity(1 << 16, file)),
            )),
            FileFormat::JsonLines => Writer::Json(BufWriter::with_capacity(1 << 16, file)),
            FileFormat::Parquet => {
                let schema = match &self.parquet_schema {
                    Some(s) => s.clone(),
                    None => {
                        let s = super::parquet::Schema::of::<T>(&self.sink.timestamp_columns)?;
                        self.parquet_schema = Some(s.clone());
                        s
                    }
                };
                Writer::Parquet(Box::new(ParquetPart::create(file, schema)?))
            }
        })
    }

    /// Renames a pending file to its visible name; idempotent, so restores may repeat it.
    fn commit(&self, p: &PendingFile) -> Result<()> {
        let hidden = self.sink.dir.join(&p.hidden);
        let visible = self.sink.dir.join(&p.visible);
        if hidden.exists() {
            std::fs::rename(&hidden, &visible).with_context(|| format!("committing {}", visible.display()))?;
        } else if !visible.exists() {
            bail!(
                "the output of checkpoint {} is lost: neither {} nor {} exists",
                p.checkpoint,
                hidden.display(),
                visible.display()
            );
        }
        Ok(())
    }

    /// Fsyncs the directories holding `files` (relative paths), so renames survive a crash.
    fn sync_dirs_of<'a>(&self, files: impl Iterator<Item = &'a str>) -> Result<()> {
        let mut dirs: Vec<PathBuf> =
            files.filter_map(|f| self.sink.dir.join(f).parent().map(Path::to_path_buf)).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            sync_dir(&d)?;
        }
        Ok(())
    }

    fn commit_up_to(&mut self, checkpoint: u64) -> Result<()> {
        let (ready, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.checkpoint <= checkpoint);
        self.pending = later;
        if ready.is_empty() {
            return Ok(());
        }
        crash_point("before-sink-commit", checkpoint);
        for (i, p) in ready.iter().enumerate() {
            self.commit(p)?;
            if i == 0 {
                crash_point("mid-sink-commit", checkpoint);
            }
        }
        self.sync_dirs_of(ready.iter().map(|p| p.visible.as_str()))
    }

    fn flush_all(&mut self) -> Result<()> {
        for (w, _) in self.writers.values_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

impl<T: Data + Serialize> Operator for FileSinkOperator<T> {
    type In = T;
    type Out = ();

    fn restore_state(&mut self, states: Vec<Vec<u8>>, ctx: &mut OperatorContext) -> Result<()> {
        std::fs::create_dir_all(&self.sink.dir)
            .with_context(|| format!("creating output directory {}", self.sink.dir.display()))?;
        let p = ctx.info().parallelism;
        let mut handled = Vec::new();
        let mut committed = Vec::new();
        for bytes in states {
            let st: SinkState = serde_json::from_slice(&bytes).context("decoding a file sink snapshot")?;
            // Each old subtask's files are repaired by exactly one new subtask.
            if st.subtask % p != self.subtask {
                continue;
            }
            for pf in &st.pending {
                self.commit(pf)?;
                committed.push(pf.visible.clone());
            }
            if st.subtask == self.subtask {
                self.seq = self.seq.max(st.seq);
            }
            handled.push(st.subtask);
        }
        if !handled.contains(&self.subtask) {
            handled.push(self.subtask);
        }
        // In-progress files written after the checkpoint, and files committed by checkpoints
        // newer than the one restored (when a newer one was broken and skipped): their records
        // will be replayed.
        let ext = self.sink.format.extension();
        let restored = ctx.restored_checkpoint().unwrap_or(u64::MAX);
        let mut removed = Vec::new();
        for rel in files_under(&self.sink.dir)? {
            let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            let stray = handled.iter().any(|s| {
                let in_progress =
                    name.starts_with(&format!(".part-{s}-")) && name.ends_with(&format!(".{ext}.inprogress"));
                let newer = name
                    .strip_prefix(&format!("part-{s:05}-"))
                    .and_then(|rest| rest.strip_suffix(&format!(".{ext}")))
                    .and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id > restored);
                in_progress || newer
            });
            if stray {
                std::fs::remove_file(self.sink.dir.join(&rel))?;
                removed.push(rel.to_string_lossy().into_owned());
            }
        }
        sync_dir(&self.sink.dir)?;
        self.sync_dirs_of(committed.iter().chain(&removed).map(String::as_str))
    }

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        std::fs::create_dir_all(&self.sink.dir)
            .with_context(|| format!("creating output directory {}", self.sink.dir.display()))?;
        ctx.request_processing_time(ctx.processing_time() + 1000);
        Ok(())
    }

    fn process(&mut self, r: Record<T>, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        let bucket = self.bucket_of(&r.value);
        // The common case, a file already open for the bucket, costs one lookup.
        if let Some((w, rel)) = self.writers.get_mut(&bucket) {
            return w.write(r.value).with_context(|| format!("writing {}", self.sink.dir.join(rel.as_str()).display()));
        }
        let ext = self.sink.format.extension();
        let rel = if ctx.checkpointing() {
            self.seq += 1;
            Self::in_bucket(&bucket, format!(".part-{}-{}.{ext}.inprogress", self.subtask, self.seq))
        } else {
            Self::in_bucket(&bucket, format!("part-{:05}.{ext}", self.subtask))
        };
        let mut w = self.open_file(&rel)?;
        w.write(r.value).with_context(|| format!("writing {}", self.sink.dir.join(&rel).display()))?;
        self.writers.insert(bucket, (w, rel));
        Ok(())
    }

    fn on_watermark(&mut self, _: i64, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.flush_all()
    }

    fn on_processing_time(&mut self, now: i64, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        ctx.request_processing_time(now + 1000);
        self.flush_all()
    }

    fn end_input(&mut self, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        if ctx.checkpointing() {
            // The final checkpoint commits the last files.
            return self.flush_all();
        }
        for (_, (w, _)) in std::mem::take(&mut self.writers) {
            w.close()?;
        }
        Ok(())
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        let ext = self.sink.format.extension();
        for (bucket, (w, hidden)) in std::mem::take(&mut self.writers) {
            w.close()?;
            let visible = Self::in_bucket(&bucket, format!("part-{:05}-{checkpoint_id:06}.{ext}", self.subtask));
            self.pending.push(PendingFile { checkpoint: checkpoint_id, hidden, visible });
        }
        let state = SinkState { subtask: self.subtask, seq: self.seq, pending: self.pending.clone() };
        Ok(Some(serde_json::to_vec(&state)?))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<()> {
        self.commit_up_to(checkpoint_id)
    }
}
