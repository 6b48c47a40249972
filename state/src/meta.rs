//! What a declared state is: its kind, its time-to-live and its description stored beside the
//! data, and the clock TTL is measured with.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A source of the current processing time in epoch milliseconds (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock in epoch milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    })
}

/// What kind of state a column family holds; recorded so tools can decode it without the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// An appendable list per key and namespace.
    List,
    /// A map per key and namespace.
    Map,
    /// A value folded with a reduce function.
    Reducing,
    /// An accumulator of an aggregate function.
    Aggregating,
}

/// Time-to-live of state entries, measured in processing time (like Flink's `StateTtlConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTtlConfig {
    /// How long an entry lives after it was written (or read, with `update_on_read`).
    pub ttl_ms: i64,
    /// Whether reading an entry extends its life (Flink's `OnReadAndWrite`).
    pub update_on_read: bool,
}

impl StateTtlConfig {
    /// Entries expire `ttl` after their last write; expired entries are never returned.
    ///
    /// ```
    /// let ttl = weir_state::StateTtlConfig::new(std::time::Duration::from_secs(60));
    /// assert_eq!(ttl.ttl_ms, 60_000);
    /// ```
    pub fn new(ttl: std::time::Duration) -> Self {
        StateTtlConfig { ttl_ms: ttl.as_millis() as i64, update_on_read: false }
    }

    /// Reading an entry also extends its life.
    pub fn update_on_read(mut self) -> Self {
        self.update_on_read = true;
        self
    }
}

/// The description of one declared state, stored beside the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    /// The state's name (its column family).
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Its time-to-live, if any. With a TTL every stored value starts with an 8-byte expiry.
    pub ttl: Option<StateTtlConfig>,
}
