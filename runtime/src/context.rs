//! What a factory gets to build one subtask of one operator, and the set-up of its driver:
//! opening or restoring its keyed state, restoring its operator state and watermark.

use std::any::Any;
use std::path::PathBuf;

use anyhow::Result;

use crate::checkpointing::{CheckpointEnv, SharedRestore};
use crate::driver::DriverEnv;
use crate::metrics::MetricGroup;
use crate::operator::{Counter, OperatorContext, TaskInfo};
use crate::output::SidePort;

/// What a factory gets to build one subtask of one operator.
pub(crate) struct BuildContext {
    pub info: TaskInfo,
    pub checkpoint: Option<CheckpointEnv>,
    pub restore: SharedRestore,
    pub metrics: MetricGroup,
    pub state_dir: PathBuf,
    pub state_memory: weir_state::StateMemory,
    pub main: Box<dyn Any>,
    pub sides: Vec<SidePort>,
    /// `(this process, processes)`: which subtasks run here (see `net::process_of`).
    pub placement: (usize, usize),
}

impl BuildContext {
    pub(crate) fn driver_env(&self, keyed: bool) -> Result<DriverEnv> {
        let info = &self.info;
        let backend = if keyed {
            let range = weir_state::KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.subtask);
            let restored = match &self.restore {
                Some(r) => {
                    r.restore_backend(&info.uid, &self.state_dir, range, info.max_parallelism, &self.state_memory)?
                }
                None => None,
            };
            match restored {
                Some(b) => Some(b),
                None => {
                    if self.state_dir.exists() {
                        std::fs::remove_dir_all(&self.state_dir)?;
                    }
                    Some(weir_state::KeyedStateBackend::open_with(
                        &self.state_dir,
                        range,
                        info.max_parallelism,
                        &self.state_memory,
                    )?)
                }
            }
        } else {
            None
        };
        let mut ctx = OperatorContext::new(info.clone(), self.metrics.clone(), self.checkpoint.is_some());
        let mut restored = None;
        if let Some(r) = &self.restore {
            ctx.restored_checkpoint = Some(r.snapshot.meta.checkpoint_id);
            if let Some((states, watermark)) = r.operator_states(&info.uid)? {
                ctx.watermark = watermark;
                restored = Some(states);
            }
        }
        Ok(DriverEnv {
            ctx,
            checkpoint: self.checkpoint.clone(),
            restored,
            backend,
            records_in: Counter(self.metrics.counter("records_in")),
            records_out: Counter(self.metrics.counter("records_out")),
            watermark_gauge: self.metrics.watermark_gauge(),
        })
    }
}
