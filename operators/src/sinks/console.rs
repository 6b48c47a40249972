//! Spark's console sink in complete output mode: the whole result table, printed to standard
//! output once per trigger interval when it changed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

type RowFn<T> = Arc<dyn Fn(&T) -> (String, Vec<String>) + Send + Sync>;

/// A table of the latest row per key, printed every trigger interval.
///
/// ```
/// use std::time::Duration;
/// use weir_operators::sinks::ConsoleTable;
/// let table = ConsoleTable::new(&["word", "count"], |r: &(String, u64)| (r.0.clone(), vec![r.0.clone(), r.1.to_string()]))
///     .trigger(Duration::from_secs(1))
///     .rows(20);
/// ```
pub struct ConsoleTable<T> {
    columns: Vec<String>,
    row: RowFn<T>,
    trigger: Duration,
    rows: usize,
    sort_by: Option<usize>,
}

impl<T> Clone for ConsoleTable<T> {
    fn clone(&self) -> Self {
        ConsoleTable {
            columns: self.columns.clone(),
            row: self.row.clone(),
            trigger: self.trigger,
            rows: self.rows,
            sort_by: self.sort_by,
        }
    }
}

impl<T> ConsoleTable<T> {
    /// `row` turns a record into its key (a newer record of a key replaces the older) and its
    /// cells, one per column.
    pub fn new(columns: &[&str], row: impl Fn(&T) -> (String, Vec<String>) + Send + Sync + 'static) -> Self {
        ConsoleTable {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            row: Arc::new(row),
            trigger: Duration::from_secs(1),
            rows: 20,
            sort_by: None,
        }
    }
    /// How often the table is printed (if it changed); Spark's trigger interval.
    pub fn trigger(mut self, every: Duration) -> Self {
        self.trigger = every.max(Duration::from_millis(1));
        self
    }
    /// Rows shown per batch (Spark's `numRows`, 20 by default).
    pub fn rows(mut self, n: usize) -> Self {
        self.rows = n;
        self
    }
    /// Shows rows by descending numeric value of this column (ties by key) instead of by key.
    pub fn sort_desc_by(mut self, column: &str) -> Self {
        self.sort_by = self.columns.iter().position(|c| c == column);
        self
    }

    pub(crate) fn operator(&self) -> ConsoleTableOperator<T> {
        ConsoleTableOperator { table: self.clone(), latest: BTreeMap::new(), changed: false, batch: 0 }
    }
}

/// The operator behind [`ConsoleTable`]; runs with parallelism 1.
pub struct ConsoleTableOperator<T> {
    table: ConsoleTable<T>,
    latest: BTreeMap<String, Vec<String>>,
    changed: bool,
    batch: u64,
}

impl<T> ConsoleTableOperator<T> {
    fn render(&self) -> String {
        let mut rows: Vec<(&String, &Vec<String>)> = self.latest.iter().collect();
        if let Some(c) = self.table.sort_by {
            let num = |r: &Vec<String>| r.get(c).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NEG_INFINITY);
            rows.sort_by(|a, b| num(b.1).total_cmp(&num(a.1)).then_with(|| a.0.cmp(b.0)));
        }
        let shown = &rows[..rows.len().min(self.table.rows)];
        let widths: Vec<usize> = (0..self.table.columns.len())
            .map(|i| {
                shown
                    .iter()
                    .map(|(_, r)| r.get(i).map_or(0, |v| v.chars().count()))
                    .fold(self.table.columns[i].len(), usize::max)
            })
            .collect();
        let line: String = widths.iter().map(|w| format!("+{}", "-".repeat(*w))).collect::<String>() + "+\n";
        let cells = |values: &mut dyn Iterator<Item = &str>| -> String {
            widths.iter().zip(values).map(|(&w, v)| format!("|{v:>w$}")).collect::<String>() + "|\n"
        };
        let mut s = format!(
            "-------------------------------------------\nBatch: {}\n-------------------------------------------\n",
            self.batch
        );
        s += &line;
        s += &cells(&mut self.table.columns.iter().map(String::as_str));
        s += &line;
        for (_, r) in shown {
            s += &cells(&mut r.iter().map(String::as_str));
        }
        s += &line;
        if rows.len() > shown.len() {
            s += &format!("only showing top {} rows\n", shown.len());
        }
        s + "\n"
    }

    fn print(&mut self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let text = self.render();
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).context("writing to standard output")?;
        self.batch += 1;
        self.changed = false;
        Ok(())
    }
}

impl<T: Data> Operator for ConsoleTableOperator<T> {
    type In = T;
    type Out = ();

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        ctx.request_processing_time(ctx.processing_time() + self.table.trigger.as_millis() as i64);
        Ok(())
    }

    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        let (key, cells) = (self.table.row)(&r.value);
        self.latest.insert(key, cells);
        self.changed = true;
        Ok(())
    }

    fn on_processing_time(&mut self, now: i64, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        ctx.request_processing_time(now + self.table.trigger.as_millis() as i64);
        self.print()
    }

    fn end_input(&mut self, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.print()
    }

    /// The table is state: after a restore the next batch shows the whole table again.
    fn snapshot_state(&mut self, _: u64, _: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        Ok(Some(serde_json::to_vec(&self.latest)?))
    }

    fn restore_state(&mut self, states: Vec<Vec<u8>>, _: &mut OperatorContext) -> Result<()> {
        for s in states {
            let table: BTreeMap<String, Vec<String>> =
                serde_json::from_slice(&s).context("decoding a console table snapshot")?;
            self.latest.extend(table);
        }
        self.changed = !self.latest.is_empty();
        Ok(())
    }
}
