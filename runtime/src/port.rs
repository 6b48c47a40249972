//! Type-specific plumbing of an output port: the graph is type-erased, and each port carries a
//! `PortType` that makes its channels, outputs and input readers for its record type.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use crossbeam_channel::{bounded, Receiver};

use crate::element::{Data, Record, StreamElement};
use crate::graph::Partition;
use crate::net::{RemoteRx, RemoteTx};
use crate::output::{
    Chained, ChannelTx, Discard, Erased, ErasedOutput, KeyGroupFn, Mode, NetworkOutput, Output, SendEnv, TaskHead, Tee,
};
use crate::task::{ChannelIn, InputChannel, RemoteIn};

/// Type-specific plumbing of one output port, so the executor can wire ports of any type.
pub(crate) trait PortType: Send + Sync {
    fn channel(&self, capacity: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>);
    /// The sending end of a channel to another process, as [`PortType::channel`] gives it.
    fn remote_sender(&self, tx: RemoteTx) -> Box<dyn Any + Send>;
    fn network_output(
        &self,
        senders: Vec<Box<dyn Any + Send>>,
        partition: &Partition,
        env: SendEnv,
    ) -> Result<Box<dyn Any>>;
    fn chained(&self, head: Box<dyn TaskHead>) -> Box<dyn Any>;
    fn tee(&self, outs: Vec<Box<dyn Any>>) -> Box<dyn Any>;
    fn discard(&self) -> Box<dyn Any>;
    fn erase(&self, out: Box<dyn Any>) -> Box<dyn ErasedOutput>;
    fn empty_buffer(&self) -> Box<dyn Any>;
    fn input_channel(&self, rx: Box<dyn Any + Send>, input: usize) -> Box<dyn InputChannel>;
}

struct TypedPort<T>(PhantomData<fn() -> T>);

pub(crate) fn typed_port<T: Data>() -> Arc<dyn PortType> {
    Arc::new(TypedPort::<T>(PhantomData))
}

pub(crate) fn unbox_output<T: Data>(b: Box<dyn Any>) -> Result<Box<dyn Output<T>>> {
    b.downcast::<Box<dyn Output<T>>>().map(|b| *b).map_err(|_| anyhow!("internal error: output of the wrong type"))
}

impl<T: Data> PortType for TypedPort<T> {
    fn channel(&self, capacity: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
        let (tx, rx) = bounded::<StreamElement<T>>(capacity);
        (Box::new(ChannelTx::Local(tx)), Box::new(rx))
    }

    fn remote_sender(&self, tx: RemoteTx) -> Box<dyn Any + Send> {
        Box::new(ChannelTx::<T>::Remote(tx))
    }

    fn network_output(
        &self,
        senders: Vec<Box<dyn Any + Send>>,
        partition: &Partition,
        env: SendEnv,
    ) -> Result<Box<dyn Any>> {
        let senders = senders
            .into_iter()
            .map(|s| s.downcast::<ChannelTx<T>>().map(|s| *s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow!("internal error: channel of the wrong type"))?;
        let mode = match partition {
            Partition::Forward | Partition::Default => Mode::Forward,
            Partition::Rebalance => Mode::Rebalance,
            Partition::Broadcast => Mode::Broadcast,
            Partition::Hash { key_group, max_parallelism } => Mode::Hash {
                key_group: key_group
                    .downcast_ref::<KeyGroupFn<T>>()
                    .ok_or_else(|| anyhow!("internal error: key function of the wrong type"))?
                    .clone(),
                max_parallelism: *max_parallelism,
            },
        };
        let out: Box<dyn Output<T>> = Box::new(NetworkOutput::new(senders, mode, env));
        Ok(Box::new(out))
    }

    fn chained(&self, head: Box<dyn TaskHead>) -> Box<dyn Any> {
        let out: Box<dyn Output<T>> = Box::new(Chained::<T>::new(head));
        Box::new(out)
    }

    fn tee(&self, outs: Vec<Box<dyn Any>>) -> Box<dyn Any> {
        let outs: Vec<Box<dyn Output<T>>> = outs.into_iter().filter_map(|o| unbox_output::<T>(o).ok()).collect();
        let out: Box<dyn Output<T>> = Box::new(Tee::new(outs));
        Box::new(out)
    }

    fn discard(&self) -> Box<dyn Any> {
        let out: Box<dyn Output<T>> = Box::new(Discard);
        Box::new(out)
    }

    fn erase(&self, out: Box<dyn Any>) -> Box<dyn ErasedOutput> {
        match unbox_output::<T>(out) {
            Ok(o) => Box::new(Erased(o)),
            Err(_) => Box::new(Erased::<T>(Box::new(Discard))),
        }
    }

    fn empty_buffer(&self) -> Box<dyn Any> {
        Box::new(Vec::<Record<T>>::new())
    }

    fn input_channel(&self, rx: Box<dyn Any + Send>, input: usize) -> Box<dyn InputChannel> {
        let rx = match rx.downcast::<Receiver<StreamElement<T>>>() {
            Ok(rx) => return Box::new(ChannelIn { rx: *rx, input }),
            Err(rx) => rx,
        };
        match rx.downcast::<RemoteRx>() {
            Ok(rx) => Box::new(RemoteIn::<T>::new(*rx, input)),
            // Unreachable by construction: channels are made by the same port type.
            Err(_) => Box::new(ChannelIn { rx: crossbeam_channel::never::<StreamElement<T>>(), input }),
        }
    }
}
