//! Part-file sinks: each sink subtask writes its own files under the output directory, as CSV
//! (with a header per file for struct rows), JSON lines or Parquet, optionally split into
//! bucket subdirectories (`year=2026/month=01/...`) chosen per record.
//!
//! Without checkpoints a subtask writes one visible file per bucket, `part-<subtask>.<ext>`.
//! With checkpoints the sink is exactly-once (two-phase commit, as Flink's and Spark's file
//! sinks, driven by [`TwoPhaseCommitOperator`]: each closed file is one transaction): records go to a hidden in-progress file (`.part-<subtask>-<seq>.<ext>.inprogress`,
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
use weir_runtime::{Data, OperatorContext, TaskInfo};

use super::parquet::ParquetPart;
use super::two_phase::{SinkSnapshot, Transaction, TwoPhaseCommitOperator, TwoPhaseCommitSink};

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

/// Where and how a [`FileSinkWriter`] writes.
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
}

impl<T: Data + Serialize> FileSink<T> {
    pub(crate) fn operator(&self, info: &TaskInfo) -> TwoPhaseCommitOperator<FileSinkWriter<T>> {
        let writer = FileSinkWriter {
            sink: self.clone(),
            subtask: info.subtask,
            writers: BTreeMap::new(),
            seq: 0,
            parquet_schema: None,
        };
        TwoPhaseCommitOperator::new(writer, info.subtask)
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

/// A closed in-progress file waiting for its checkpoint to complete: one transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingFile {
    checkpoint: u64,
    hidden: String,
    visible: String,
}

impl Transaction for PendingFile {
    fn checkpoint(&self) -> u64 {
        self.checkpoint
    }
}

/// What the sink keeps in a checkpoint beside its pending files.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileSinkMeta {
    /// The last in-progress file number used, so that new files never reuse a name.
    seq: u64,
}

/// Writes one subtask's records to its part files; run by [`TwoPhaseCommitOperator`].
pub struct FileSinkWriter<T> {
    sink: FileSink<T>,
    subtask: usize,
    /// The open file of each bucket and its path relative to the output directory (hidden
    /// while checkpointing, visible otherwise).
    writers: BTreeMap<String, (Writer<T>, String)>,
    seq: u64,
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

impl<T: Data + Serialize> FileSinkWriter<T> {
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

    /// Removes this sink's in-progress files written after the restored checkpoint by the old
    /// subtasks `handled`, and files committed by checkpoints newer than `restored` (when a newer
    /// one was broken and skipped): their records will be replayed. Returns the removed paths.
    fn remove_stray_files(&self, handled: &[usize], restored: u64) -> Result<Vec<String>> {
        let ext = self.sink.format.extension();
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
        Ok(removed)
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
}

impl<T: Data + Serialize> TwoPhaseCommitSink for FileSinkWriter<T> {
    type In = T;
    type Txn = PendingFile;
    type Meta = FileSinkMeta;

    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        std::fs::create_dir_all(&self.sink.dir)
            .with_context(|| format!("creating output directory {}", self.sink.dir.display()))
    }

    fn write(&mut self, value: T, ctx: &mut OperatorContext) -> Result<()> {
        let bucket = self.bucket_of(&value);
        // The common case, a file already open for the bucket, costs one lookup.
        if let Some((w, rel)) = self.writers.get_mut(&bucket) {
            return w.write(value).with_context(|| format!("writing {}", self.sink.dir.join(rel.as_str()).display()));
        }
        let ext = self.sink.format.extension();
        let rel = if ctx.checkpointing() {
            self.seq += 1;
            Self::in_bucket(&bucket, format!(".part-{}-{}.{ext}.inprogress", self.subtask, self.seq))
        } else {
            Self::in_bucket(&bucket, format!("part-{:05}.{ext}", self.subtask))
        };
        let mut w = self.open_file(&rel)?;
        w.write(value).with_context(|| format!("writing {}", self.sink.dir.join(&rel).display()))?;
        self.writers.insert(bucket, (w, rel));
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        for (w, _) in self.writers.values_mut() {
            w.flush()?;
        }
        Ok(())
    }

    fn end_input(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if ctx.checkpointing() {
            // The final checkpoint commits the last files.
            return self.flush();
        }
        for (_, (w, _)) in std::mem::take(&mut self.writers) {
            w.close()?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, checkpoint: u64, _pending: &[PendingFile]) -> Result<Vec<PendingFile>> {
        let ext = self.sink.format.extension();
        let mut closed = Vec::new();
        for (bucket, (w, hidden)) in std::mem::take(&mut self.writers) {
            w.close()?;
            let visible = Self::in_bucket(&bucket, format!("part-{:05}-{checkpoint:06}.{ext}", self.subtask));
            closed.push(PendingFile { checkpoint, hidden, visible });
        }
        Ok(closed)
    }

    fn meta(&self) -> FileSinkMeta {
        FileSinkMeta { seq: self.seq }
    }

    /// Renames a pending file to its visible name; idempotent, so restores may repeat it.
    fn commit(&mut self, p: &PendingFile) -> Result<()> {
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

    fn after_commit(&mut self, committed: &[PendingFile], _pending: &[PendingFile]) -> Result<()> {
        self.sync_dirs_of(committed.iter().map(|p| p.visible.as_str()))
    }

    fn recover(
        &mut self,
        inherited: Vec<SinkSnapshot<PendingFile, FileSinkMeta>>,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        self.open(ctx)?;
        let mut handled = Vec::new();
        let mut committed = Vec::new();
        for st in inherited {
            for pf in &st.pending {
                self.commit(pf)?;
                committed.push(pf.visible.clone());
            }
            if st.subtask == self.subtask {
                self.seq = self.seq.max(st.meta.seq);
            }
            handled.push(st.subtask);
        }
        if !handled.contains(&self.subtask) {
            handled.push(self.subtask);
        }
        let removed = self.remove_stray_files(&handled, ctx.restored_checkpoint().unwrap_or(u64::MAX))?;
        sync_dir(&self.sink.dir)?;
        self.sync_dirs_of(committed.iter().chain(&removed).map(String::as_str))
    }
}
