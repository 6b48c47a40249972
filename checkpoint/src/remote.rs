//! An object-store prefix seen through blocking calls: the checkpoint I/O thread, the restore
//! path, the CLI and the file sinks are plain threads, so each call runs its future on a small
//! runtime of this module's own. Transfers of many files run in parallel (bounded), never on task
//! threads. Multipart uploads that a checkpoint completes later are in [`crate::upload`].
//!
//! Object stores have no rename: commit points are written with create-only puts
//! ([`Remote::put_new`]), which exactly one writer wins.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

/// Transfers in flight at once per call.
const PARALLEL_TRANSFERS: usize = 8;

/// Bytes an upload buffers before it turns into a multipart upload (parts of this size).
const UPLOAD_BUFFER: usize = 8 << 20;

pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("weir-object-store")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("starting the object-store runtime: {e}"))
}

/// Runs `f` to completion from a plain thread (or, when called inside a runtime, from a scoped
/// thread of its own, since a runtime cannot block on another inside itself).
pub(crate) fn block_on<F>(f: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
        Ok(out) => Ok(out),
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A key prefix in a bucket.
#[derive(Clone)]
pub struct Remote {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) multipart: Arc<dyn MultipartStore>,
    prefix: String,
    url: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn is_exists(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
}

impl Remote {
    /// `s3://bucket/prefix`, with endpoint, region and credentials from the `AWS_*` environment
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP=true` for a server without TLS).
    pub fn s3(bucket: &str, prefix: &str) -> Result<Self> {
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("configuring s3://{bucket} from the AWS_* environment"))?;
        let url = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        let store = Arc::new(store);
        Ok(Remote { store: store.clone(), multipart: store, prefix: prefix.trim_matches('/').to_string(), url })
    }

    /// The same store under `prefix/child`.
    pub fn child(&self, child: &str) -> Remote {
        Remote {
            store: self.store.clone(),
            multipart: self.multipart.clone(),
            prefix: self.key(child),
            url: format!("{}/{child}", self.url.trim_end_matches('/')),
        }
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    pub(crate) fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(self.key(key))
    }

    /// Creates `key` unless it exists: `Ok(false)` when another writer created it first.
    pub(crate) fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        let path = self.path(key);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match block_on(self.store.put_opts(&path, PutPayload::from(bytes), opts))? {
            Ok(_) => Ok(true),
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing {}/{key}", self.url)),
        }
    }

    /// Writes `key`, replacing what is there.
    pub(crate) fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        block_on(self.store.put(&self.path(key), PutPayload::from(bytes)))?
            .with_context(|| format!("writing {}/{key}", self.url))?;
        Ok(())
    }

    /// Whether `key` exists.
    pub(crate) fn exists(&self, key: &str) -> Result<bool> {
        match block_on(self.store.head(&self.path(key)))? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("reading {}/{key}", self.url)),
        }
    }

    /// Reads `key`; `None` if it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let got = block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        Ok(got.with_context(|| format!("reading {}/{key}", self.url))?.map(|b| b.to_vec()))
    }

    /// Uploads local files, each `(local path, key)`, several at a time. Each file streams
    /// through a bounded buffer (a multipart upload once it outgrows it), so memory stays bounded
    /// however large the files.
    pub(crate) fn upload(&self, files: Vec<(PathBuf, String)>) -> Result<()> {
        block_on(
            futures::stream::iter(files)
                .map(|(local, key)| async move {
                    let mut src =
                        tokio::fs::File::open(&local).await.with_context(|| format!("opening {}", local.display()))?;
                    let mut dst = object_store::buffered::BufWriter::with_capacity(
                        self.store.clone(),
                        self.path(&key),
                        UPLOAD_BUFFER,
                    );
                    let copied = async {
                        tokio::io::copy(&mut src, &mut dst).await?;
                        tokio::io::AsyncWriteExt::shutdown(&mut dst).await
                    }
                    .await;
                    if let Err(e) = copied {
                        // Leaves no multipart upload behind.
                        let _ = dst.abort().await;
                        return Err(anyhow::Error::new(e).context(format!(
                            "uploading {} to {}/{key}",
                            local.display(),
                            self.url
                        )));
                    }
                    anyhow::Ok(())
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .try_collect::<Vec<()>>(),
        )??;
        Ok(())
    }

    /// Downloads objects, each `(key, local path, expected size and xxh3)`, several at a time.
    /// Each is written to a temporary name and checked as it streams in (no second read), and
    /// only an object with the expected size and checksum gets its real name, so neither a crash
    /// nor a corrupt object ever leaves a wrong file under the real name.
    pub(crate) fn download(&self, files: Vec<(String, PathBuf, u64, String)>) -> Result<()> {
        block_on(
            futures::stream::iter(files)
                .map(|(key, local, size, xxh3)| async move {
                    let context = || format!("downloading {}/{key}", self.url);
                    let stream = self.store.get(&self.path(&key)).await.with_context(context)?.into_stream();
                    let (got_size, got) = write_new_file(&local, stream, |got_size, got| {
                        got_size == size && got == xxh3
                    })
                    .await
                    .with_context(context)?;
                    if got_size != size || got != xxh3 {
                        bail!(
                            "{}/{key} is corrupt: {got_size} bytes with checksum {got}, expected {size} bytes with {xxh3}",
                            self.url
                        );
                    }
                    Ok(())
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .try_collect::<Vec<()>>(),
        )??;
        Ok(())
    }

    /// The names directly below `prefix` that are "directories" (have keys below them).
    pub(crate) fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.path(prefix);
        let listed = block_on(self.store.list_with_delimiter(Some(&path)))?
            .with_context(|| format!("listing {}/{prefix}", self.url))?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }

    /// Every key below `prefix` (recursively) relative to this remote's prefix, with its size.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(prefix);
        let metas = block_on(self.store.list(Some(&path)).try_collect::<Vec<_>>())?
            .with_context(|| format!("listing {}/{prefix}", self.url))?;
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(strip.as_str())?.to_string();
                Some((key, m.size))
            })
            .collect())
    }

    /// Deletes keys (missing ones are fine), several at a time.
    pub fn delete(&self, keys: Vec<String>) -> Result<()> {
        block_on(
            futures::stream::iter(keys)
                .map(|key| async move {
                    match self.store.delete(&self.path(&key)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(anyhow::Error::new(e).context(format!("deleting {}/{key}", self.url))),
                    }
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .try_collect::<Vec<()>>(),
        )??;
        Ok(())
    }
}

/// Writes a stream of chunks to `local` through a temporary name, hashing it as it comes; the file
/// gets its real name only if `keep(size, xxh3)` accepts it. Returns the size and checksum.
async fn write_new_file<B: AsRef<[u8]>>(
    local: &Path,
    mut chunks: impl futures::Stream<Item = object_store::Result<B>> + Unpin,
    keep: impl Fn(u64, &str) -> bool,
) -> Result<(u64, String)> {
    use tokio::io::AsyncWriteExt;
    let dir = local.parent().context("download target without a directory")?;
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.part", local.file_name().and_then(|n| n.to_str()).unwrap_or("download")));
    let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.try_next().await? {
        let chunk = chunk.as_ref();
        hash.update(chunk);
        size += chunk.len() as u64;
        f.write_all(chunk).await.with_context(|| format!("writing {}", tmp.display()))?;
    }
    f.flush().await?;
    drop(f);
    let sum = crate::metadata::hex(hash.digest());
    if keep(size, &sum) {
        tokio::fs::rename(&tmp, local).await.with_context(|| format!("renaming to {}", local.display()))?;
    } else {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    Ok((size, sum))
}
