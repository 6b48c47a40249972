//! Multipart uploads that outlive the process that started them, for exactly-once output on
//! object stores (as Flink's S3 recoverable writer): an object has no rename, so a part file is
//! written as one multipart upload on its final key. Parts go up as data arrives; the upload is
//! only *completed* — the object becomes visible, whole, at once — when the checkpoint holding
//! its [`Uploaded`] id and parts completes, by whichever process commits it (the writer or a
//! restore). An upload never completed is aborted and leaves nothing a reader sees.

use std::io::Write;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::PartId;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use crate::remote::{block_on, runtime, Remote};

/// The size of every part but the last (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 5 << 20;

/// Parts in flight per upload; a writer that is further ahead waits (backpressure, bounded
/// memory: about `PART_SIZE * (PARTS_IN_FLIGHT + 2)` per open upload).
const PARTS_IN_FLIGHT: usize = 2;

/// A finished (all parts uploaded) but not completed upload: what a checkpoint records so that
/// any process can complete it later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The store's id of the multipart upload.
    pub upload_id: String,
    /// The store's id of each part, in order.
    pub parts: Vec<String>,
    /// The size of the object once completed.
    pub size: u64,
}

/// A multipart upload being written, through [`std::io::Write`]: bytes are cut into parts of
/// [`PART_SIZE`] that are uploaded on the object-store runtime while the writer goes on.
pub struct PartUpload {
    url: String,
    buf: Vec<u8>,
    size: u64,
    parts: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<Result<Uploaded>>>,
}

impl Remote {
    /// Starts a multipart upload of `key`. When `record` names a key, the upload id is written
    /// there as soon as the store gives it, before any part, so that a restore can abort an
    /// upload whose id no checkpoint holds ([`Remote::abort_recorded`]).
    pub fn start_upload(&self, key: &str, record: Option<&str>) -> Result<PartUpload> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let store = self.store.clone();
        let multipart = self.multipart.clone();
        let path = self.path(key);
        let record = record.map(|r| self.path(r));
        let url = format!("{}/{key}", self.url());
        let context = url.clone();
        let task = runtime()?.spawn(async move {
            let upload_id =
                multipart.create_multipart(&path).await.with_context(|| format!("starting an upload of {context}"))?;
            if let Some(record) = record {
                store
                    .put(&record, PutPayload::from(upload_id.clone().into_bytes()))
                    .await
                    .with_context(|| format!("recording the upload of {context}"))?;
            }
            let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let mut size = 0u64;
            let uploaded: Result<Vec<PartId>> = chunks
                .enumerate()
                .map(|(i, bytes)| {
                    size += bytes.len() as u64;
                    let (multipart, path, upload_id) = (&multipart, &path, &upload_id);
                    async move { multipart.put_part(path, upload_id, i, PutPayload::from(bytes)).await }
                })
                .buffered(PARTS_IN_FLIGHT)
                .try_collect()
                .await
                .with_context(|| format!("uploading a part of {context}"));
            match uploaded {
                Ok(parts) => Ok(Uploaded { upload_id, parts: parts.into_iter().map(|p| p.content_id).collect(), size }),
                Err(e) => {
                    // Leaves no parts behind; the error is what the writer reports.
                    let _ = multipart.abort_multipart(&path, &upload_id).await;
                    Err(e)
                }
            }
        });
        Ok(PartUpload { url, buf: Vec::new(), size: 0, parts: Some(tx), task: Some(task) })
    }

    /// Makes an upload visible. Idempotent, as a restore repeats commits that may have run: when
    /// the store no longer knows the upload, the object must be there with the upload's size.
    pub fn complete_upload(&self, key: &str, up: &Uploaded) -> Result<()> {
        let parts = up.parts.iter().map(|p| PartId { content_id: p.clone() }).collect();
        let path = self.path(key);
        let Err(e) = block_on(self.multipart.complete_multipart(&path, &up.upload_id, parts))? else {
            return Ok(());
        };
        match self.size_of(key)? {
            Some(size) if size == up.size => Ok(()),
            found => Err(anyhow::Error::new(e).context(format!(
                "completing the upload of {}/{key} ({} bytes; the store has {})",
                self.url(),
                up.size,
                found.map_or("no object".to_string(), |s| format!("{s} bytes"))
            ))),
        }
    }

    /// Aborts the upload whose id is recorded at `record` (unless it is one of `keep`) and
    /// deletes the record. An upload already completed or aborted is fine.
    pub fn abort_recorded(&self, record: &str, keep: &[&str]) -> Result<()> {
        if let Some(id) = self.get(record)? {
            let id = String::from_utf8(id).with_context(|| format!("reading {}/{record}", self.url()))?;
            if !keep.contains(&id.as_str()) {
                let key = record_target(record);
                match block_on(self.multipart.abort_multipart(&self.path(key), &id))? {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e).with_context(|| format!("aborting the upload of {}/{key}", self.url())),
                }
            }
        }
        self.delete(vec![record.to_string()])
    }

    /// The size of `key`, `None` if there is no such object.
    pub fn size_of(&self, key: &str) -> Result<Option<u64>> {
        match block_on(self.store.head(&self.path(key)))? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}/{key}", self.url())),
        }
    }
}

/// Where upload ids are recorded for [`Remote::start_upload`]: `_uploads/<key>` beside the data
/// (readers skip names starting with `_`, as Spark does).
pub fn upload_record(key: &str) -> String {
    format!("{UPLOAD_RECORDS}/{key}")
}

/// The prefix of upload records.
pub const UPLOAD_RECORDS: &str = "_uploads";

/// The key whose upload `record` holds.
fn record_target(record: &str) -> &str {
    record.strip_prefix(UPLOAD_RECORDS).map_or(record, |k| k.trim_start_matches('/'))
}

impl PartUpload {
    /// Sends the buffered bytes as the next part; waits while too many parts are in flight.
    fn send(&mut self) -> std::io::Result<()> {
        let bytes = std::mem::take(&mut self.buf);
        let tx = self.parts.as_ref().ok_or_else(|| std::io::Error::other("upload already finished"))?;
        let sent = block_on(tx.send(bytes)).map_err(std::io::Error::other)?;
        if sent.is_err() {
            // The upload task stopped: its error says why.
            let err = match self.join() {
                Err(e) => e,
                Ok(_) => anyhow::anyhow!("the upload stopped early"),
            };
            return Err(std::io::Error::other(format!("{err:#}")));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<Uploaded> {
        self.parts = None;
        let task = self.task.take().context("upload already finished")?;
        block_on(task)?.with_context(|| format!("upload task of {}", self.url))?
    }

    /// Uploads the rest and waits for every part: the upload is ready to be completed (by
    /// [`Remote::complete_upload`], with the same key) but not visible yet.
    pub fn finish(mut self) -> Result<Uploaded> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        let up = self.join()?;
        anyhow::ensure!(up.size == self.size, "{}: {} bytes written, {} uploaded", self.url, self.size, up.size);
        Ok(up)
    }
}

impl Write for PartUpload {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PART_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == PART_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    /// Parts go up only when full (the store's minimum part size): nothing to do.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
