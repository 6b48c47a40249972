//! Part-file sinks: each sink subtask writes its own files under the output directory, as CSV
//! (with a header per file for struct rows) or as JSON lines.
//!
//! Without checkpoints a subtask writes one visible file, `part-<subtask>.<ext>`.
//! With checkpoints the sink is exactly-once (two-phase commit, as Flink's and Spark's file
//! sinks): records go to a hidden in-progress file (`.part-<subtask>-<seq>.<ext>.inprogress`,
//! skipped by readers); at checkpoint `n` the file is closed, fsynced and recorded in the sink's
//! state as pending; when checkpoint `n` completes it is renamed to
//! `part-<subtask>-<n>.<ext>`. A crash between completion and rename is repaired on restore,
//! which commits the pending files the checkpoint holds and deletes in-progress files written
//! after it (their records are replayed).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use weir_runtime::fault::crash_point;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record, TaskInfo};

/// The format of part files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values; struct rows get a header line.
    Csv,
    /// One JSON value per line.
    JsonLines,
}

impl FileFormat {
    fn extension(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::JsonLines => "jsonl",
        }
    }
}

/// Where and how a [`FileSinkOperator`] writes.
#[derive(Clone, Debug)]
pub struct FileSink {
    dir: PathBuf,
    format: FileFormat,
}

impl FileSink {
    /// CSV part files under `dir`.
    pub fn csv(dir: impl Into<PathBuf>) -> Self {
        FileSink { dir: dir.into(), format: FileFormat::Csv }
    }
    /// JSON-lines part files under `dir`.
    pub fn json_lines(dir: impl Into<PathBuf>) -> Self {
        FileSink { dir: dir.into(), format: FileFormat::JsonLines }
    }

    pub(crate) fn operator<T>(&self, info: &TaskInfo) -> FileSinkOperator<T> {
        FileSinkOperator {
            sink: self.clone(),
            subtask: info.subtask,
            writer: None,
            seq: 0,
            pending: Vec::new(),
            _t: PhantomData,
        }
    }
}

enum Writer {
    Csv(Box<csv::Writer<BufWriter<File>>>),
    Json(BufWriter<File>),
}

impl Writer {
    fn flush(&mut self) -> Result<()> {
        match self {
            Writer::Csv(w) => w.flush()?,
            Writer::Json(w) => w.flush()?,
        }
        Ok(())
    }

    /// Flushes, fsyncs and closes the file.
    fn close(self) -> Result<()> {
        let buf = match self {
            Writer::Csv(w) => w.into_inner().map_err(|e| anyhow::anyhow!("flushing CSV: {}", e.error()))?,
            Writer::Json(w) => w,
        };
        let file = buf.into_inner().map_err(|e| anyhow::anyhow!("flushing: {}", e.error()))?;
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
    sink: FileSink,
    subtask: usize,
    /// The open file and its hidden name (visible name when not checkpointing).
    writer: Option<(Writer, String)>,
    seq: u64,
    pending: Vec<PendingFile>,
    _t: PhantomData<fn(T)>,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl<T> FileSinkOperator<T> {
    fn open_file(&self, name: &str) -> Result<Writer> {
        let path = self.sink.dir.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let buf = BufWriter::with_capacity(1 << 16, file);
        Ok(match self.sink.format {
            FileFormat::Csv => Writer::Csv(Box::new(csv::WriterBuilder::new().has_headers(true).from_writer(buf))),
            FileFormat::JsonLines => Writer::Json(buf),
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
        sync_dir(&self.sink.dir)
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
        for bytes in states {
            let st: SinkState = serde_json::from_slice(&bytes).context("decoding a file sink snapshot")?;
            // Each old subtask's files are repaired by exactly one new subtask.
            if st.subtask % p != self.subtask {
                continue;
            }
            for pf in &st.pending {
                self.commit(pf)?;
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
        for e in std::fs::read_dir(&self.sink.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
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
                std::fs::remove_file(self.sink.dir.join(&name))?;
            }
        }
        sync_dir(&self.sink.dir)
    }

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        std::fs::create_dir_all(&self.sink.dir)
            .with_context(|| format!("creating output directory {}", self.sink.dir.display()))?;
        if !ctx.checkpointing() {
            let name = format!("part-{:05}.{}", self.subtask, self.sink.format.extension());
            self.writer = Some((self.open_file(&name)?, name));
        }
        ctx.request_processing_time(ctx.processing_time() + 1000);
        Ok(())
    }

    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        if self.writer.is_none() {
            self.seq += 1;
            let name = format!(".part-{}-{}.{}.inprogress", self.subtask, self.seq, self.sink.format.extension());
            self.writer = Some((self.open_file(&name)?, name));
        }
        let Some((w, name)) = &mut self.writer else { bail!("file sink without an open file") };
        match w {
            Writer::Csv(w) => w.serialize(&r.value).with_context(|| format!("writing {name}"))?,
            Writer::Json(w) => {
                serde_json::to_writer(&mut *w, &r.value)?;
                w.write_all(b"\n").with_context(|| format!("writing {name}"))?;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, _: i64, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        match &mut self.writer {
            Some((w, _)) => w.flush(),
            None => Ok(()),
        }
    }

    fn on_processing_time(&mut self, now: i64, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        ctx.request_processing_time(now + 1000);
        match &mut self.writer {
            Some((w, _)) => w.flush(),
            None => Ok(()),
        }
    }

    fn end_input(&mut self, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        match &mut self.writer {
            // With checkpoints the final checkpoint commits the last file.
            Some((w, _)) if ctx.checkpointing() => w.flush(),
            Some(_) => match self.writer.take() {
                Some((w, _)) => w.close(),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        if let Some((w, hidden)) = self.writer.take() {
            w.close()?;
            let visible = format!("part-{:05}-{:06}.{}", self.subtask, checkpoint_id, self.sink.format.extension());
            self.pending.push(PendingFile { checkpoint: checkpoint_id, hidden, visible });
        }
        let state = SinkState { subtask: self.subtask, seq: self.seq, pending: self.pending.clone() };
        Ok(Some(serde_json::to_vec(&state)?))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<()> {
        self.commit_up_to(checkpoint_id)
    }
}
