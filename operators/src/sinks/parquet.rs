//! Parquet encoding of part files: records are buffered, turned into Arrow record batches by
//! `serde_arrow` with a schema traced from the record type, and written as row groups.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_schema::{DataType, Field, FieldRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_arrow::schema::{SchemaLike, TracingOptions};

use super::part_store::PartFile;

/// Rows per row group: large enough for columnar compression, small enough to bound the
/// memory a subtask holds per open file.
const ROWS_PER_BATCH: usize = 8192;

/// The Arrow fields of a record type.
#[derive(Clone, Debug)]
pub(crate) struct Schema {
    fields: Arc<Vec<FieldRef>>,
}

impl Schema {
    /// Traces the fields of `T`; the integer columns named in `timestamps` become UTC
    /// millisecond timestamps.
    pub(crate) fn of<T: Serialize + DeserializeOwned>(timestamps: &[String]) -> Result<Self> {
        let traced = Vec::<FieldRef>::from_type::<T>(TracingOptions::default().strings_as_large_utf8(false))
            .context("deriving a Parquet schema from the record type")?;
        let mut fields = Vec::with_capacity(traced.len());
        for f in traced {
            if timestamps.iter().any(|t| t == f.name()) {
                anyhow::ensure!(
                    matches!(f.data_type(), DataType::Int64 | DataType::UInt64),
                    "timestamp column {} is {}, not an integer of epoch milliseconds",
                    f.name(),
                    f.data_type()
                );
                let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
                fields.push(Arc::new(Field::new(f.name(), ts, f.is_nullable())));
            } else {
                fields.push(f);
            }
        }
        for t in timestamps {
            anyhow::ensure!(fields.iter().any(|f| f.name() == t), "no column {t} to store as a timestamp");
        }
        Ok(Schema { fields: Arc::new(fields) })
    }
}

/// One Parquet part file being written.
pub(crate) struct ParquetPart<T> {
    writer: ArrowWriter<PartFile>,
    schema: Schema,
    rows: Vec<T>,
}

impl<T: Serialize> ParquetPart<T> {
    pub(crate) fn create(file: PartFile, schema: Schema) -> Result<Self> {
        let arrow_schema = Arc::new(arrow_schema::Schema::new(schema.fields.as_slice().to_vec()));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROWS_PER_BATCH))
            .build();
        let writer = ArrowWriter::try_new(file, arrow_schema, Some(props)).context("starting a Parquet file")?;
        Ok(ParquetPart { writer, schema, rows: Vec::with_capacity(ROWS_PER_BATCH) })
    }

    pub(crate) fn write(&mut self, row: T) -> Result<()> {
        self.rows.push(row);
        if self.rows.len() >= ROWS_PER_BATCH {
            self.write_rows()?;
        }
        Ok(())
    }

    fn write_rows(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = serde_arrow::to_record_batch(&self.schema.fields, &self.rows).context("encoding rows as Arrow")?;
        self.writer.write(&batch).context("writing a Parquet row group")?;
        self.rows.clear();
        Ok(())
    }

    /// Writes the buffered rows and the footer, and returns the file to finish.
    pub(crate) fn finish(mut self) -> Result<PartFile> {
        self.write_rows()?;
        self.writer.into_inner().context("finishing a Parquet file")
    }
}
