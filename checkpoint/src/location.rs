//! Where checkpoints live: a local directory (a plain path or `file://`) or a prefix on an object
//! store (`s3://bucket/prefix`). Parsing is strict: a URL with any other scheme is an error at
//! start, never a local directory named `gs:`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};

/// A checkpoint location, as given to `--checkpoint-dir`.
///
/// ```
/// use weir_checkpoint::Location;
/// let s3: Location = "s3://bucket/some/prefix".parse().unwrap();
/// assert_eq!(s3, Location::S3 { bucket: "bucket".into(), prefix: "some/prefix".into() });
/// assert_eq!("file:///tmp/chk".parse::<Location>().unwrap(), Location::Local("/tmp/chk".into()));
/// assert_eq!("chk".parse::<Location>().unwrap(), Location::Local("chk".into()));
/// assert!("gs://bucket/x".parse::<Location>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine.
    Local(PathBuf),
    /// A prefix in an S3 bucket (endpoint and credentials from the `AWS_*` environment).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix inside it, without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl Location {
    /// The local directory, if this is one.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3 { .. } => None,
        }
    }
}

/// Splits `scheme://rest`; `None` for a plain path.
pub fn url_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some((scheme, rest))
}

impl FromStr for Location {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match url_scheme(s) {
            None => Ok(Location::Local(PathBuf::from(s))),
            Some(("file", path)) => Ok(Location::Local(PathBuf::from(path))),
            Some(("s3" | "s3a", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    bail!("{s}: no bucket (expected s3://bucket/prefix)");
                }
                Ok(Location::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() })
            }
            Some((scheme, _)) => {
                bail!("{s}: weir does not support {scheme}:// locations (use a local path, file:// or s3://)")
            }
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Self {
        Location::Local(p.clone())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Self {
        l.clone()
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Local(p.to_path_buf())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A clap value parser for a location flag that accepts only local directories (for flags whose
/// object-store support has not landed): a URL is refused with a clear error instead of becoming a
/// directory named after its scheme.
///
/// ```
/// assert!(weir_checkpoint::location::local_path("out/dir").is_ok());
/// assert!(weir_checkpoint::location::local_path("s3://bucket/out").is_err());
/// ```
pub fn local_path(s: &str) -> Result<PathBuf> {
    match url_scheme(s) {
        None => Ok(PathBuf::from(s)),
        Some(("file", path)) => Ok(PathBuf::from(path)),
        Some((scheme, _)) => bail!("{s}: this flag takes a local directory; {scheme}:// is not supported here"),
    }
}
