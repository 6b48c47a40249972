//! Part-file sinks: each sink subtask writes its own file under the output directory, as CSV
//! (with a header for struct rows) or as JSON lines.
//!
//! Not yet exactly-once: files are written directly and flushed on watermarks, every second and
//! at the end of input. The transactional version (hidden in-progress files renamed on checkpoint
//! completion) replaces this once checkpoints exist.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;
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

    /// The part file of a subtask.
    pub fn part_path(&self, subtask: usize) -> PathBuf {
        self.dir.join(format!("part-{subtask:05}.{}", self.format.extension()))
    }

    pub(crate) fn operator<T>(&self, info: &TaskInfo) -> FileSinkOperator<T> {
        FileSinkOperator { sink: self.clone(), path: self.part_path(info.subtask), writer: None, _t: PhantomData }
    }
}

enum Writer {
    Csv(Box<csv::Writer<BufWriter<File>>>),
    Json(BufWriter<File>),
}

/// Writes one subtask's records to its part file.
pub struct FileSinkOperator<T> {
    sink: FileSink,
    path: PathBuf,
    writer: Option<Writer>,
    _t: PhantomData<fn(T)>,
}

impl<T> FileSinkOperator<T> {
    fn flush(&mut self) -> Result<()> {
        match &mut self.writer {
            Some(Writer::Csv(w)) => w.flush()?,
            Some(Writer::Json(w)) => w.flush()?,
            None => {}
        }
        Ok(())
    }
}

impl<T: Data + Serialize> Operator for FileSinkOperator<T> {
    type In = T;
    type Out = ();

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        std::fs::create_dir_all(&self.sink.dir)
            .with_context(|| format!("creating output directory {}", self.sink.dir.display()))?;
        let file = File::create(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        let buf = BufWriter::with_capacity(1 << 16, file);
        self.writer = Some(match self.sink.format {
            FileFormat::Csv => Writer::Csv(Box::new(csv::WriterBuilder::new().has_headers(true).from_writer(buf))),
            FileFormat::JsonLines => Writer::Json(buf),
        });
        ctx.request_processing_time(ctx.processing_time() + 1000);
        Ok(())
    }

    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        match &mut self.writer {
            Some(Writer::Csv(w)) => {
                w.serialize(&r.value).with_context(|| format!("writing {}", self.path.display()))?
            }
            Some(Writer::Json(w)) => {
                serde_json::to_writer(&mut *w, &r.value)?;
                w.write_all(b"\n").with_context(|| format!("writing {}", self.path.display()))?;
            }
            None => anyhow::bail!("file sink used before open"),
        }
        Ok(())
    }

    fn on_watermark(&mut self, _: i64, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.flush()
    }

    fn on_processing_time(&mut self, now: i64, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        ctx.request_processing_time(now + 1000);
        self.flush()
    }

    fn end_input(&mut self, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.flush()
    }
}
