//! Part-file sinks: each sink subtask writes its own files under the output location (a local
//! directory or `s3://bucket/prefix`), as CSV (with a header per file for struct rows), JSON lines
//! or Parquet, optionally split into bucket subdirectories (`year=2026/month=01/...`) chosen per
//! record.
//!
//! Without checkpoints a subtask writes one file per bucket, `part-<subtask>.<ext>`. With
//! checkpoints the sink is exactly-once (two-phase commit, as Flink's and Spark's file sinks,
//! driven by [`TwoPhaseCommitOperator`]: each closed file is one transaction): records go to a
//! file no reader sees, closed at each barrier and made visible when its checkpoint completes
//! (renamed in a directory, a multipart upload completed on an object store; see
//! [`super::part_store`]). A restore commits the files its checkpoint holds and removes those
//! written after it, whose records are replayed.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use weir_checkpoint::Location;
use weir_runtime::{AsyncSnapshotPart, Data, OperatorContext, TaskInfo};

use super::parquet::ParquetPart;
use super::part_store::{sync_files, PartFile, PartName, PartStore, PendingFile};
use super::two_phase::{SinkSnapshot, TwoPhaseCommitOperator, TwoPhaseCommitSink};

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
/// let sink = FileSink::<Row>::parquet(std::path::Path::new("out")).bucket_by(|r: &Row| format!("hour={}", r.hour));
/// assert_eq!(sink.location().to_string(), "out");
/// // The same on S3 (endpoint and credentials from the AWS_* environment when the job starts).
/// let on_s3 = FileSink::<Row>::parquet("s3://bucket/hourly".parse::<weir_checkpoint::Location>().unwrap());
/// assert_eq!(on_s3.location().to_string(), "s3://bucket/hourly");
/// ```
pub struct FileSink<T> {
    location: Location,
    format: FileFormat,
    bucket: Option<BucketFn<T>>,
    timestamp_columns: Vec<String>,
}

impl<T> Clone for FileSink<T> {
    fn clone(&self) -> Self {
        FileSink {
            location: self.location.clone(),
            format: self.format,
            bucket: self.bucket.clone(),
            timestamp_columns: self.timestamp_columns.clone(),
        }
    }
}

impl<T> std::fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("location", &self.location)
            .field("format", &self.format)
            .field("bucketed", &self.bucket.is_some())
            .finish()
    }
}

impl<T> FileSink<T> {
    fn new(location: Location, format: FileFormat) -> Self {
        FileSink { location, format, bucket: None, timestamp_columns: Vec::new() }
    }
    /// CSV part files under `location` (a directory or `s3://bucket/prefix`).
    pub fn csv(location: impl Into<Location>) -> Self {
        Self::new(location.into(), FileFormat::Csv)
    }
    /// JSON-lines part files under `location`.
    pub fn json_lines(location: impl Into<Location>) -> Self {
        Self::new(location.into(), FileFormat::JsonLines)
    }
    /// Parquet part files under `location`; one row group per 8192 records and per checkpoint.
    pub fn parquet(location: impl Into<Location>) -> Self {
        Self::new(location.into(), FileFormat::Parquet)
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
    /// Where the part files go.
    pub fn location(&self) -> &Location {
        &self.location
    }
}

impl<T: Data + Serialize> FileSink<T> {
    /// The operator subtask `info` runs: what `write_files` builds, and what an operator test
    /// harness drives.
    pub fn operator(&self, info: &TaskInfo) -> TwoPhaseCommitOperator<FileSinkWriter<T>> {
        let writer = FileSinkWriter {
            sink: self.clone(),
            subtask: info.subtask,
            store: None,
            writers: BTreeMap::new(),
            seq: 0,
            base: 0,
            parquet_schema: None,
            unsynced: Vec::new(),
        };
        TwoPhaseCommitOperator::new(writer, info.subtask)
    }
}

enum Writer<T> {
    Csv(Box<csv::Writer<BufWriter<PartFile>>>),
    Json(BufWriter<PartFile>),
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

    /// Writes what is buffered (and Parquet's footer) and returns the file to finish.
    fn close(self) -> Result<PartFile> {
        Ok(match self {
            Writer::Csv(w) => {
                let buf = w.into_inner().map_err(|e| anyhow::anyhow!("flushing CSV: {}", e.error()))?;
                buf.into_inner().map_err(|e| anyhow::anyhow!("flushing: {}", e.error()))?
            }
            Writer::Json(w) => w.into_inner().map_err(|e| anyhow::anyhow!("flushing: {}", e.error()))?,
            Writer::Parquet(w) => w.finish()?,
        })
    }
}

/// A file sink subtask's checkpointed state as the inspection tools show it.
pub(crate) fn pending(state: &serde_json::Value) -> Option<crate::describe::SinkPending> {
    let st: SinkSnapshot<PendingFile, FileSinkMeta> = serde_json::from_value(state.clone()).ok()?;
    Some(crate::describe::SinkPending::Files { pending: st.pending.iter().map(PendingFile::describe).collect() })
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
    /// Opened with the sink (on a restore, before the sink opens).
    store: Option<PartStore>,
    /// The open file of each bucket and its name relative to the output location.
    writers: BTreeMap<String, (Writer<T>, String)>,
    /// The last part-file number used.
    seq: u64,
    /// The last barrier this subtask passed (or the restored checkpoint).
    base: u64,
    parquet_schema: Option<super::parquet::Schema>,
    /// Files the last barrier closed, for its snapshot's asynchronous part to fsync.
    unsynced: Vec<(std::fs::File, String)>,
}

/// `rel` under the output location, for messages.
fn show(store: &Option<PartStore>, rel: &str) -> String {
    store.as_ref().map_or_else(|| rel.to_string(), |s| s.show(rel))
}

impl<T: Data + Serialize> FileSinkWriter<T> {
    fn bucket_of(&self, value: &T) -> String {
        self.sink.bucket.as_ref().map(|f| f(value)).unwrap_or_default()
    }

    fn store(&self) -> Result<&PartStore> {
        self.store.as_ref().context("the file sink is not open")
    }

    fn name<'a>(&self, bucket: &'a str) -> PartName<'a> {
        PartName { subtask: self.subtask, bucket, ext: self.sink.format.extension() }
    }

    fn open_file(&mut self, bucket: &str, checkpointing: bool) -> Result<(Writer<T>, String)> {
        let n = self.name(bucket);
        let (file, rel) = if checkpointing {
            self.seq += 1;
            self.store()?.create_staged(&n, self.base, self.seq)?
        } else {
            self.store()?.create_plain(&n)?
        };
        let w = match self.sink.format {
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
        };
        Ok((w, rel))
    }
}

impl<T: Data + Serialize> TwoPhaseCommitSink for FileSinkWriter<T> {
    type In = T;
    type Txn = PendingFile;
    type Meta = FileSinkMeta;

    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        if self.store.is_none() {
            let store = PartStore::open(&self.sink.location)?;
            store.prepare()?;
            self.store = Some(store);
        }
        Ok(())
    }

    fn write(&mut self, value: T, ctx: &mut OperatorContext) -> Result<()> {
        let bucket = self.bucket_of(&value);
        // The common case, a file already open for the bucket, costs one lookup.
        if let Some((w, rel)) = self.writers.get_mut(&bucket) {
            return w.write(value).with_context(|| format!("writing {}", show(&self.store, rel)));
        }
        let (mut w, rel) = self.open_file(&bucket, ctx.checkpointing())?;
        w.write(value).with_context(|| format!("writing {}", show(&self.store, &rel)))?;
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
        for (_, (w, rel)) in std::mem::take(&mut self.writers) {
            let file = w.close()?;
            self.store()?.publish(file, &rel)?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, checkpoint: u64, _pending: &[PendingFile]) -> Result<Vec<PendingFile>> {
        self.base = checkpoint;
        let mut closed = Vec::new();
        let mut unsynced = std::mem::take(&mut self.unsynced);
        for (bucket, (w, rel)) in std::mem::take(&mut self.writers) {
            let file = w.close().with_context(|| format!("closing {}", show(&self.store, &rel)))?;
            closed.push(self.store()?.stage(file, rel, &self.name(&bucket), checkpoint, &mut unsynced)?);
        }
        self.unsynced = unsynced;
        Ok(closed)
    }

    fn pre_commit_async(&mut self) -> Option<AsyncSnapshotPart> {
        let files = std::mem::take(&mut self.unsynced);
        (!files.is_empty()).then(|| Box::new(move || sync_files(files)) as AsyncSnapshotPart)
    }

    fn meta(&self) -> FileSinkMeta {
        FileSinkMeta { seq: self.seq }
    }

    fn commit(&mut self, p: &PendingFile) -> Result<()> {
        self.store()?.commit(p)
    }

    fn after_commit(&mut self, committed: &[PendingFile], _pending: &[PendingFile]) -> Result<()> {
        self.store()?.after_commit(committed)
    }

    fn recover(
        &mut self,
        inherited: Vec<SinkSnapshot<PendingFile, FileSinkMeta>>,
        ctx: &mut OperatorContext,
    ) -> Result<()> {
        self.open(ctx)?;
        let restored = ctx.restored_checkpoint().unwrap_or(u64::MAX);
        let mut handled = Vec::new();
        let mut committed = Vec::new();
        for st in inherited {
            for pf in st.pending {
                self.commit(&pf)?;
                committed.push(pf);
            }
            if st.subtask == self.subtask {
                self.seq = self.seq.max(st.meta.seq);
            }
            handled.push(st.subtask);
        }
        if !handled.contains(&self.subtask) {
            handled.push(self.subtask);
        }
        self.base = ctx.restored_checkpoint().unwrap_or(0);
        let ext = self.sink.format.extension();
        self.store()?.remove_strays(&handled, ext, restored, &committed)
    }
}
