//! Files as a source: text lines or JSON lines, from one file or a directory, bounded or
//! monitored for new files.
//!
//! A bounded read cuts the files into byte-range splits (a file larger than its share is split at
//! line boundaries, like Hadoop's `TextInputFormat`) and deals them to subtasks round-robin, so the
//! set of records read does not depend on the parallelism. Each split has its own watermark.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use weir_runtime::{Data, OutputTag, Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

/// A record that could not be parsed, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// File (or topic/partition) the record came from.
    pub origin: String,
    /// Byte offset of the line in the file (or the record's offset).
    pub offset: u64,
    /// Line number in the file, from 1 (none for records that are not lines of a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The raw record text (lossy UTF-8).
    pub raw: String,
    /// Why it was rejected.
    pub error: String,
}

/// What to do with records that cannot be parsed.
#[derive(Clone)]
pub enum OnMalformed {
    /// Fail the job with the file and offset of the record.
    Fail,
    /// Send a [`DeadLetter`] to this side output and carry on.
    DeadLetter(OutputTag<DeadLetter>),
}

/// Parses one line (without its line terminator).
pub type LineParser<T> = Arc<dyn Fn(&[u8]) -> Result<T> + Send + Sync>;

/// A file source; build it with [`FileSource::text_lines`], [`FileSource::json_lines`] or
/// [`FileSource::new`].
///
/// ```no_run
/// use weir_operators::sources::FileSource;
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Reading { station: String, bikes: i64 }
/// let lines = FileSource::text_lines("input.txt");
/// let readings = FileSource::<Reading>::json_lines("readings/");
/// ```
pub struct FileSource<T> {
    path: PathBuf,
    parse: LineParser<T>,
    skip_blank: bool,
    on_malformed: OnMalformed,
    monitor: Option<Duration>,
    rate: Option<u64>,
}

impl<T> Clone for FileSource<T> {
    fn clone(&self) -> Self {
        FileSource {
            path: self.path.clone(),
            parse: self.parse.clone(),
            skip_blank: self.skip_blank,
            on_malformed: self.on_malformed.clone(),
            monitor: self.monitor,
            rate: self.rate,
        }
    }
}

impl FileSource<String> {
    /// Every line of the file(s) as a string.
    pub fn text_lines(path: impl Into<PathBuf>) -> Self {
        FileSource::new(path, |line| Ok(std::str::from_utf8(line).context("line is not valid UTF-8")?.to_string()))
    }
}

impl<T: DeserializeOwned + 'static> FileSource<T> {
    /// Every non-blank line parsed as a JSON object into `T`.
    pub fn json_lines(path: impl Into<PathBuf>) -> Self {
        let mut s = FileSource::new(path, |line| Ok(serde_json::from_slice(line)?));
        s.skip_blank = true;
        s
    }
}

impl<T> FileSource<T> {
    /// Lines parsed by `parse`.
    pub fn new(path: impl Into<PathBuf>, parse: impl Fn(&[u8]) -> Result<T> + Send + Sync + 'static) -> Self {
        FileSource {
            path: path.into(),
            parse: Arc::new(parse),
            skip_blank: false,
            on_malformed: OnMalformed::Fail,
            monitor: None,
            rate: None,
        }
    }

    /// Sends unparsable lines to a dead-letter side output instead of failing the job.
    pub fn dead_letters(mut self, tag: &OutputTag<DeadLetter>) -> Self {
        self.on_malformed = OnMalformed::DeadLetter(tag.clone());
        self
    }

    /// Skips blank lines.
    pub fn skip_blank_lines(mut self) -> Self {
        self.skip_blank = true;
        self
    }

    /// Reads at most `records_per_second` per subtask (replaying a file at a steady pace). Whole
    /// batches are released at a time, so the batches are the same as at full speed.
    pub fn rate_limit(mut self, records_per_second: u64) -> Self {
        self.rate = Some(records_per_second.max(1));
        self
    }

    /// Keeps watching the directory for new files every `interval` (unbounded; files are dealt
    /// to subtasks by name and read whole).
    pub fn monitor(mut self, interval: Duration) -> Self {
        self.monitor = Some(interval);
        self
    }
}

/// A byte range of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSplit {
    /// The file.
    pub path: PathBuf,
    /// First byte of the range.
    pub start: u64,
    /// First byte after the range.
    pub end: u64,
}

/// Visible regular files of a path (the file itself, or a directory's files sorted by name;
/// names starting with `.` or `_` are skipped, as Hadoop and Spark do).
pub fn list_files(path: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading input {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta.len())]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let m = entry.metadata()?;
        if m.is_file() {
            files.push((entry.path(), m.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// Cuts files into splits of at least 1 MiB, about 64 in all. The plan does not depend on the
/// parallelism, so a checkpoint's split offsets stay valid when the job is rescaled.
pub fn plan_splits(files: &[(PathBuf, u64)]) -> Vec<FileSplit> {
    let total: u64 = files.iter().map(|f| f.1).sum();
    let target = total.div_ceil(64).max(1 << 20);
    let mut splits = Vec::new();
    for (path, len) in files {
        let mut start = 0;
        loop {
            let end = (start + target).min(*len);
            splits.push(FileSplit { path: path.clone(), start, end });
            if end >= *len {
                break;
            }
            start = end;
        }
    }
    splits
}

struct OpenSplit {
    id: u64,
    split: FileSplit,
    origin: String,
    reader: BufReader<File>,
    pos: u64,
    end: u64,
}

/// Opens a split at `offset` (its start, or a line start recorded in a checkpoint).
fn open_split(id: u64, split: &FileSplit, offset: u64) -> Result<OpenSplit> {
    let file = File::open(&split.path).with_context(|| format!("opening {}", split.path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut pos = offset;
    if offset > split.start {
        reader.seek(SeekFrom::Start(offset))?;
    } else if split.start > 0 {
        // Lines belong to the split their first byte is in: start one byte early and drop
        // everything up to the first line break, which is the previous split's last line.
        reader.seek(SeekFrom::Start(split.start - 1))?;
        let mut skipped = Vec::new();
        pos = split.start - 1 + reader.read_until(b'\n', &mut skipped)? as u64;
    }
    Ok(OpenSplit { id, split: split.clone(), origin: split.path.display().to_string(), reader, pos, end: split.end })
}

/// Where a split stands, as kept in checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SplitState {
    id: u64,
    path: PathBuf,
    start: u64,
    end: u64,
    /// Next byte to read (a line start).
    offset: u64,
    done: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct FileReaderState {
    splits: Vec<SplitState>,
}

/// A file source reader's checkpointed state as the inspection tools show it.
pub(crate) fn position(reader: &serde_json::Value) -> Option<crate::describe::FilePosition> {
    let st: FileReaderState = serde_json::from_value(reader.clone()).ok()?;
    let splits = st
        .splits
        .into_iter()
        .map(|s| crate::describe::SplitPosition {
            id: s.id,
            path: s.path.display().to_string(),
            start: s.start,
            end: s.end,
            offset: s.offset,
            done: s.done,
        })
        .collect();
    Some(crate::describe::FilePosition { splits })
}

/// The 1-based number of the line that starts at byte `offset` of `path`.
fn line_number(path: &str, offset: u64) -> Result<u64> {
    use std::io::Read;
    let mut head = Vec::with_capacity(offset as usize);
    File::open(path)?.take(offset).read_to_end(&mut head)?;
    Ok(head.iter().filter(|b| **b == b'\n').count() as u64 + 1)
}

struct FileReader<T> {
    source: FileSource<T>,
    /// Splits not finished yet, with the offset to start reading at.
    pending: std::collections::VecDeque<(u64, FileSplit, u64)>,
    done: Vec<(u64, FileSplit)>,
    current: Option<OpenSplit>,
    line: Vec<u8>,
    info: TaskInfo,
    seen: std::collections::HashSet<PathBuf>,
    next_id: u64,
    pace: Option<super::Pace>,
}

fn name_hash(path: &Path) -> u64 {
    fnv1a(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    // FNV-1a: a stable spread of names over subtasks; no need for a strong hash here.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl<T: Data> FileReader<T> {
    fn discover(&mut self) -> Result<()> {
        for (path, len) in list_files(&self.source.path)? {
            if self.seen.contains(&path) {
                continue;
            }
            if name_hash(&path) % self.info.parallelism as u64 != self.info.subtask as u64 {
                continue;
            }
            self.seen.insert(path.clone());
            let id = self.next_id;
            self.next_id += 1;
            self.pending.push_back((id, FileSplit { path, start: 0, end: len }, 0));
        }
        Ok(())
    }

    fn reject(
        &self,
        out: &mut SourceOutput<'_, T>,
        origin: &str,
        offset: u64,
        raw: &[u8],
        err: anyhow::Error,
    ) -> Result<()> {
        // Counting lines up to the bad one costs a read of the file's head, which is fine for the
        // rare record that is rejected and saves counting lines for every good one.
        let line = line_number(origin, offset)?;
        match &self.source.on_malformed {
            OnMalformed::Fail => {
                bail!("malformed record in {origin} at line {line} (byte offset {offset}): {err:#}")
            }
            OnMalformed::DeadLetter(tag) => {
                out.side(
                    tag,
                    DeadLetter {
                        origin: origin.to_string(),
                        offset,
                        line: Some(line),
                        raw: String::from_utf8_lossy(raw).into_owned(),
                        error: format!("{err:#}"),
                    },
                );
                Ok(())
            }
        }
    }
}

impl<T: Data> FileReader<T> {
    fn owns(&self, id: u64, path: &Path) -> bool {
        let p = self.info.parallelism as u64;
        match self.source.monitor {
            None => id % p == self.info.subtask as u64,
            Some(_) => name_hash(path) % p == self.info.subtask as u64,
        }
    }
}

impl<T: Data> SourceReader<T> for FileReader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        if let Some(wait) = self.pace.as_mut().and_then(|p| p.admit(out.remaining())) {
            return Ok(SourcePoll::Idle(wait));
        }
        // A poll fills its batch across split boundaries, so batches (and the watermarks emitted
        // after each) depend only on the input, not on where splits happen to end.
        while out.remaining() > 0 {
            if self.current.is_none() {
                match self.pending.pop_front() {
                    Some((id, split, offset)) => self.current = Some(open_split(id, &split, offset)?),
                    None => {
                        return match self.source.monitor {
                            None => Ok(SourcePoll::Finished),
                            Some(interval) => {
                                self.discover()?;
                                Ok(if self.pending.is_empty() { SourcePoll::Idle(interval) } else { SourcePoll::Ready })
                            }
                        };
                    }
                }
            }
            let mut cur = self.current.take().ok_or_else(|| anyhow!("internal error: no open split"))?;
            let mut finished = false;
            while out.remaining() > 0 {
                if cur.pos >= cur.end {
                    finished = true;
                    break;
                }
                self.line.clear();
                let n = cur.reader.read_until(b'\n', &mut self.line)?;
                if n == 0 {
                    finished = true;
                    break;
                }
                let offset = cur.pos;
                cur.pos += n as u64;
                let mut line = &self.line[..];
                if line.last() == Some(&b'\n') {
                    line = &line[..line.len() - 1];
                }
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if self.source.skip_blank && line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match (self.source.parse)(line) {
                    Ok(v) => out.collect(cur.id, v),
                    Err(e) => {
                        let line = line.to_vec();
                        self.reject(out, &cur.origin, offset, &line, e)?
                    }
                }
            }
            if finished || cur.pos >= cur.end {
                out.finish_split(cur.id);
                self.done.push((cur.id, cur.split));
            } else {
                self.current = Some(cur);
            }
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot_state(&mut self, _checkpoint_id: u64) -> Result<serde_json::Value> {
        let mut splits = Vec::new();
        let entry = |id: u64, s: &FileSplit, offset: u64, done: bool| SplitState {
            id,
            path: s.path.clone(),
            start: s.start,
            end: s.end,
            offset,
            done,
        };
        for (id, s) in &self.done {
            splits.push(entry(*id, s, s.end, true));
        }
        if let Some(c) = &self.current {
            splits.push(entry(c.id, &c.split, c.pos, false));
        }
        for (id, s, offset) in &self.pending {
            splits.push(entry(*id, s, *offset, false));
        }
        splits.sort_by_key(|s| s.id);
        Ok(serde_json::to_value(FileReaderState { splits })?)
    }

    fn restore_state(&mut self, states: Vec<serde_json::Value>) -> Result<()> {
        let mut all: Vec<SplitState> = Vec::new();
        for st in states {
            let st: FileReaderState = serde_json::from_value(st).context("decoding a file source snapshot")?;
            all.extend(st.splits);
        }
        all.sort_by_key(|s| s.id);
        all.dedup_by_key(|s| s.id);
        self.pending.clear();
        self.done.clear();
        self.current = None;
        self.seen.clear();
        self.next_id = all.last().map_or(0, |s| s.id + 1);
        for s in all {
            self.seen.insert(s.path.clone());
            if !self.owns(s.id, &s.path) {
                continue;
            }
            let split = FileSplit { path: s.path, start: s.start, end: s.end };
            if s.done {
                self.done.push((s.id, split));
            } else {
                self.pending.push_back((s.id, split, s.offset));
            }
        }
        if self.source.monitor.is_some() {
            // Files that arrived while the job was down.
            self.discover()?;
        }
        Ok(())
    }
}

impl<T: Data> Source<T> for FileSource<T> {
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<T>>> {
        let mut reader = FileReader {
            source: self.clone(),
            pending: Default::default(),
            done: Vec::new(),
            current: None,
            line: Vec::new(),
            info: info.clone(),
            seen: Default::default(),
            next_id: 0,
            pace: self.rate.map(super::Pace::new),
        };
        if self.monitor.is_some() {
            if !self.path.is_dir() {
                bail!("monitoring needs a directory, and {} is not one", self.path.display());
            }
            reader.discover()?;
        } else {
            let files = list_files(&self.path)?;
            for (i, split) in plan_splits(&files).into_iter().enumerate() {
                if i % info.parallelism == info.subtask {
                    let start = split.start;
                    reader.pending.push_back((i as u64, split, start));
                }
            }
        }
        Ok(Box::new(reader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_split(split: &FileSplit) -> Vec<String> {
        let mut s = open_split(0, split, split.start).unwrap();
        let mut lines = Vec::new();
        while s.pos < s.end {
            let mut l = Vec::new();
            let n = s.reader.read_until(b'\n', &mut l).unwrap();
            if n == 0 {
                break;
            }
            s.pos += n as u64;
            lines.push(String::from_utf8(l).unwrap().trim_end().to_string());
        }
        lines
    }

    #[test]
    fn splits_at_any_byte_read_every_line_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        let mut f = File::create(&path).unwrap();
        let expected: Vec<String> = (0..200).map(|i| format!("line-{i}-{}", "x".repeat(i % 7))).collect();
        for l in &expected {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        let len = std::fs::metadata(&path).unwrap().len();
        for cut in [1, 2, 7, 11, 100, len - 1] {
            let mut got = Vec::new();
            let mut start = 0;
            while start < len {
                let end = (start + cut).min(len);
                got.extend(read_split(&FileSplit { path: path.clone(), start, end }));
                start = end;
            }
            assert_eq!(got, expected, "cut every {cut} bytes");
        }
    }
}
