//! The S3-compatible test server (`scripts/s3`, moto on loopback): a bucket per test, the
//! environment a job needs to reach it, and listing keys without a client library.

use std::path::Path;
use std::process::Command;

/// A fresh bucket on the test server.
pub struct Bucket {
    pub endpoint: String,
    pub name: String,
}

/// Starts (or finds) the test server with `scripts/s3 start` and creates a bucket named after
/// `test` and the process id. Fails the test loudly if there is no server: S3 tests never skip.
pub fn bucket(test: &str) -> Bucket {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3");
    let out = Command::new(&script).arg("start").output().expect("running scripts/s3");
    assert!(out.status.success(), "no S3 server: scripts/s3 start failed\n{}", String::from_utf8_lossy(&out.stderr));
    let endpoint = String::from_utf8_lossy(&out.stdout).lines().last().expect("endpoint").trim().to_string();
    let name = format!("{test}-{}", std::process::id()).replace('_', "-");
    ureq::put(&format!("{endpoint}/{name}")).call().expect("creating the test bucket");
    Bucket { endpoint, name }
}

impl Bucket {
    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// The `AWS_*` variables a job needs to reach the server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Sets the `AWS_*` variables in this test process, for code that runs in it (a storage
    /// opened by the test itself) and for children that inherit them.
    pub fn export(&self) {
        // Every test that calls this sets the same values (one server per machine), so a reader
        // on another thread never sees a half-configured environment.
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }

    /// A signed client of the bucket (objects a job wrote are private to signed requests).
    fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_bucket_name(&self.name)
            .build()
            .expect("an S3 client")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// Every key under `prefix` with its size.
    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures::TryStreamExt;
        let store = self.store();
        let path = object_store::path::Path::from(prefix);
        let metas: Vec<object_store::ObjectMeta> =
            Self::block_on(object_store::ObjectStore::list(&store, Some(&path)).try_collect()).expect("listing");
        metas.into_iter().map(|m| (m.location.to_string(), m.size)).collect()
    }

    /// The highest checkpoint id under `prefix` (`<prefix>/chk-<n>/...`), 0 if none.
    pub fn max_checkpoint(&self, prefix: &str) -> u64 {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        self.list(&prefix)
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix)?.strip_prefix("chk-")?.split('/').next()?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Reads one object.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let store = self.store();
        let path = object_store::path::Path::from(key);
        Self::block_on(async {
            match object_store::ObjectStore::get(&store, &path).await {
                Ok(r) => Some(r.bytes().await.expect("reading an object").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("reading {key}: {e}"),
            }
        })
    }

    /// Replaces one object.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let store = self.store();
        let path = object_store::path::Path::from(key);
        Self::block_on(object_store::ObjectStore::put(&store, &path, bytes.to_vec().into()))
            .expect("writing an object");
    }

    /// Downloads every object under `prefix` into `dir`, keeping the key below the prefix as the
    /// relative path.
    pub fn download(&self, prefix: &str, dir: &Path) {
        let strip = format!("{}/", prefix.trim_end_matches('/'));
        for (key, _) in self.list(&strip) {
            let rel = key.strip_prefix(&strip).unwrap();
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, self.get(&key).unwrap()).unwrap();
        }
    }

    /// The multipart uploads in progress (started, neither completed nor aborted) under
    /// `prefix`, each as (key, upload id, number of parts uploaded), read with the S3 API calls
    /// the client library lacks (ListMultipartUploads, ListParts).
    pub fn uploads(&self, prefix: &str) -> Vec<(String, String, usize)> {
        let url = format!("{}/{}?uploads&prefix={prefix}", self.endpoint, self.name);
        let listing = ureq::get(&url).call().expect("listing uploads").into_string().unwrap();
        xml_elements(&listing, "Upload")
            .into_iter()
            .map(|u| {
                let key = xml_elements(u, "Key")[0].to_string();
                let id = xml_elements(u, "UploadId")[0].to_string();
                let url = format!("{}/{}/{key}?uploadId={id}", self.endpoint, self.name);
                let parts = ureq::get(&url).call().expect("listing parts").into_string().unwrap();
                let n = xml_elements(&parts, "Part").len();
                (key, id, n)
            })
            .collect()
    }
}

impl Bucket {
    /// After a job's last run: every upload of its file sinks under `prefix` (`out/`) was
    /// completed or aborted and its record removed. The one exception a kill can leave is an
    /// upload created in the instant before its id was recorded, which never received a part
    /// (nothing stored, nothing visible).
    pub fn assert_no_open_uploads(&self, prefix: &str) {
        let records = self.list(&format!("{prefix}_uploads/"));
        assert!(records.is_empty(), "upload records left: {records:?}");
        let open: Vec<_> = self.uploads(prefix).into_iter().filter(|u| u.2 > 0).collect();
        assert!(open.is_empty(), "uploads with parts neither completed nor aborted: {open:?}");
    }
}

/// The contents of every `<tag>...</tag>` in `xml` (flat: enough for S3's listings).
fn xml_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body.find(&close).expect("a closing tag");
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}
