//! The Kafka flags a job binary shares with every other: flattened into its clap `Cli`.

use std::time::Duration;

use clap::error::ErrorKind;
use serde::de::DeserializeOwned;
use weir_runtime::{parse_duration, Data, JobArgs};

use super::{check_transaction_timeout, Delivery, KafkaSink, KafkaSource, StartOffsets};

/// Brokers, where sources start, and how sinks deliver: `#[command(flatten)]` it beside
/// [`JobArgs`], keep the topics (whose help differs per job) in the job's own `Cli`, and build
/// sources and sinks from it so that every job honours every flag.
///
/// ```
/// use clap::Parser;
/// use weir_operators::kafka::{Delivery, KafkaArgs};
/// use weir_runtime::JobArgs;
///
/// #[derive(Parser)]
/// struct Cli {
///     /// Read from this topic.
///     #[arg(long, requires = "brokers")]
///     input_topic: Option<String>,
///     #[command(flatten)]
///     kafka: KafkaArgs,
///     #[command(flatten)]
///     job: JobArgs,
/// }
///
/// let cli = Cli::parse_from(["job", "--input-topic", "bids", "--brokers", "localhost:9092"]);
/// assert_eq!(cli.kafka.delivery, Delivery::ExactlyOncePublish);
/// let source = cli.kafka.json_source::<serde_json::Value>("bids");
/// // Exactly-once publishing needs checkpoints, which this command line does not ask for.
/// assert!(cli.kafka.check(&cli.job, true).is_err());
/// assert!(cli.kafka.check(&cli.job, false).is_ok());
/// ```
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,

    /// Where Kafka partitions start without a checkpoint: earliest, latest, committed or
    /// timestamp:MS.
    #[arg(long, value_name = "WHERE", default_value = "earliest")]
    pub start_offsets: StartOffsets,

    /// Read input topics up to the end offsets seen at the first start, then finish.
    #[arg(long)]
    pub stop_at_end: bool,

    /// How rows reach output topics: at-least-once, exactly-once-publish (any broker) or
    /// exactly-once-txn (a Kafka transaction per checkpoint; needs full transaction support).
    /// Both exactly-once modes need checkpoints.
    #[arg(long, value_name = "MODE", default_value = "exactly-once-publish")]
    pub delivery: Delivery,

    /// exactly-once-txn: the producers' transaction.timeout.ms; must exceed --checkpoint-interval
    /// + --min-pause + --checkpoint-timeout.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub transaction_timeout: Duration,

    /// exactly-once-txn: transactional ids are PREFIX-<uid>-<subtask>.
    #[arg(long, value_name = "PREFIX", default_value = "weir")]
    pub transactional_id_prefix: String,
}

impl KafkaArgs {
    /// Checks the delivery flags against the job's checkpointing, for a job that writes to Kafka
    /// (`writes`): exactly-once needs checkpoints, and a transaction must outlive a checkpoint.
    /// Exit with `err.format(&mut Cli::command()).exit()` for clap's message.
    pub fn check(&self, job: &JobArgs, writes: bool) -> Result<(), clap::Error> {
        if !writes {
            return Ok(());
        }
        match self.delivery {
            Delivery::AtLeastOnce => Ok(()),
            Delivery::ExactlyOncePublish if !job.checkpointing() => Err(clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                "--delivery exactly-once-publish needs --checkpoint-dir and --checkpoint-interval",
            )),
            Delivery::ExactlyOncePublish => Ok(()),
            Delivery::ExactlyOnceTxn => check_transaction_timeout(self.transaction_timeout, job)
                .map_err(|e| clap::Error::raw(ErrorKind::ArgumentConflict, format!("{e:#}"))),
        }
    }

    fn brokers(&self) -> &str {
        // Jobs declare their topic flags with `requires = "brokers"`, so clap has checked this.
        self.brokers.as_deref().unwrap_or_default()
    }

    /// A source of `topic` starting and stopping as the flags say.
    pub fn source<T>(
        &self,
        topic: &str,
        parse: impl Fn(&[u8]) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> KafkaSource<T> {
        self.configure(KafkaSource::new(self.brokers(), topic, parse))
    }

    /// [`KafkaArgs::source`] of JSON values.
    pub fn json_source<T: DeserializeOwned + 'static>(&self, topic: &str) -> KafkaSource<T> {
        self.configure(KafkaSource::json(self.brokers(), topic))
    }

    /// [`KafkaArgs::source`] of UTF-8 lines.
    pub fn text_source(&self, topic: &str) -> KafkaSource<String> {
        self.configure(KafkaSource::text(self.brokers(), topic))
    }

    fn configure<T>(&self, source: KafkaSource<T>) -> KafkaSource<T> {
        source.start_offsets(self.start_offsets).stop_at_end(self.stop_at_end)
    }

    /// A sink to `topic` delivering as the flags say, records turned into (key, value) by
    /// `serialize`.
    pub fn sink<T: Data>(
        &self,
        topic: &str,
        serialize: impl Fn(&T) -> (Option<String>, String) + Send + Sync + 'static,
    ) -> KafkaSink<T> {
        KafkaSink::new(self.brokers(), topic, self.delivery, serialize)
            .transaction_timeout(self.transaction_timeout)
            .transactional_id_prefix(&self.transactional_id_prefix)
    }
}
