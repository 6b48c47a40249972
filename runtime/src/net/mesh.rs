//! The connections of one process to every other process of the job: one TCP connection per
//! pair (the higher index connects, the lower accepts), a writer and a reader task per
//! connection on a small tokio runtime of the mesh's own, heartbeats, and fail-stop: a
//! connection lost without a goodbye, a silent peer or a protocol error is reported on
//! [`Mesh::failures`], and the job fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::buffers::BufferPool;
use super::channel::{Credits, RemoteRx, RemoteTx};
use super::frame::{data_channel, read_frame, write_frame, Frame, Hello};
use crate::metrics::ChannelStats;

/// How often a connection says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Who this process is among the job's processes, and how long to wait for the others.
#[derive(Clone, Debug)]
pub(crate) struct MeshConfig {
    pub job: String,
    pub index: usize,
    /// `host:port` of every process, in index order.
    pub peers: Vec<String>,
    /// Where to accept connections [default: this process's entry of `peers`].
    pub listen: Option<String>,
    pub fingerprint: u64,
    /// The id of the snapshot this process restores from.
    pub restore: Option<u64>,
    /// A peer silent this long is lost.
    pub peer_timeout: Duration,
    /// How long to wait at start for every peer to be reachable.
    pub connect_timeout: Duration,
}

/// One peer's connection, as the task threads see it.
pub(crate) struct Link {
    peer: usize,
    addr: String,
    out: UnboundedSender<Frame>,
    out_rx: Mutex<Option<UnboundedReceiver<Frame>>>,
    /// Queues of the channels this process receives from the peer.
    inbound: Mutex<HashMap<u64, Sender<Vec<u8>>>>,
    /// Credits of the channels this process sends to the peer.
    credits: Mutex<HashMap<u64, Arc<Credits>>>,
    /// The peer said goodbye: its connection closing is no failure.
    peer_done: AtomicBool,
    /// The connection failed.
    down: AtomicBool,
    /// Buffers of the data frames this process sends to the peer: taken by the encoding task,
    /// returned by the writer once written.
    pub(crate) sent: BufferPool,
    /// Buffers of the data frames the peer sends: taken by the reader, returned by the decoding
    /// task.
    pub(crate) received: BufferPool,
}

impl Link {
    /// Queues a frame for the writer; an error once the connection is gone.
    pub(crate) fn send(&self, frame: Frame) -> Result<()> {
        self.out.send(frame).map_err(|_| anyhow!("the connection to process {} is closed", self.peer))
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn name(&self) -> String {
        format!("process {} ({})", self.peer, self.addr)
    }
}

/// The mesh of one process. Register every channel ([`Mesh::sender`], [`Mesh::receiver`])
/// before [`Mesh::connect`], which must run before the tasks start sending.
pub(crate) struct Mesh {
    cfg: MeshConfig,
    links: Vec<Option<Arc<Link>>>,
    rt: tokio::runtime::Runtime,
    failures_tx: Sender<anyhow::Error>,
    failures: Receiver<anyhow::Error>,
    control_tx: Sender<(usize, Vec<u8>)>,
    control: Receiver<(usize, Vec<u8>)>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    closing: Arc<AtomicBool>,
}

impl Mesh {
    pub(crate) fn new(cfg: MeshConfig) -> Result<Self> {
        if cfg.index >= cfg.peers.len() {
            bail!("process index {} is not below the number of processes, {}", cfg.index, cfg.peers.len());
        }
        // One worker: the connections only move bytes between sockets and queues, and a second
        // worker woken for each frame cost q7 as two processes 6 % more CPU on two busy cores.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-net")
            .enable_all()
            .build()
            .context("starting the network runtime")?;
        let links = (0..cfg.peers.len())
            .map(|p| {
                (p != cfg.index).then(|| {
                    let (out, out_rx) = unbounded_channel();
                    Arc::new(Link {
                        peer: p,
                        addr: cfg.peers[p].clone(),
                        out,
                        out_rx: Mutex::new(Some(out_rx)),
                        inbound: Mutex::default(),
                        credits: Mutex::default(),
                        peer_done: AtomicBool::new(false),
                        down: AtomicBool::new(false),
                        sent: BufferPool::default(),
                        received: BufferPool::default(),
                    })
                })
            })
            .collect();
        let (failures_tx, failures) = unbounded();
        let (control_tx, control) = unbounded();
        Ok(Mesh {
            cfg,
            links,
            rt,
            failures_tx,
            failures,
            control_tx,
            control,
            writers: Mutex::default(),
            closing: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn index(&self) -> usize {
        self.cfg.index
    }

    pub(crate) fn processes(&self) -> usize {
        self.cfg.peers.len()
    }

    fn link(&self, peer: usize) -> Result<Arc<Link>> {
        self.links.get(peer).and_then(|l| l.clone()).ok_or_else(|| anyhow!("internal error: no link to process {peer}"))
    }

    /// The sending end of logical channel `channel` to `peer`, with `capacity` credits.
    pub(crate) fn sender(
        &self,
        peer: usize,
        channel: u64,
        capacity: usize,
        stats: Arc<ChannelStats>,
    ) -> Result<RemoteTx> {
        let link = self.link(peer)?;
        let credits = Arc::new(Credits::new(capacity as u32));
        link.credits.lock().insert(channel, credits.clone());
        Ok(RemoteTx { channel, credits, link, stats })
    }

    /// The receiving end of logical channel `channel` from `peer`, holding `capacity` elements.
    pub(crate) fn receiver(
        &self,
        peer: usize,
        channel: u64,
        capacity: usize,
        stats: Arc<ChannelStats>,
    ) -> Result<RemoteRx> {
        let link = self.link(peer)?;
        let (tx, rx) = bounded(capacity);
        link.inbound.lock().insert(channel, tx);
        let return_at = (capacity as u32 / 4).max(1);
        Ok(RemoteRx { channel, rx, link, stats, owed: Default::default(), return_at })
    }

    /// Failures of connections (each reported once).
    pub(crate) fn failures(&self) -> &Receiver<anyhow::Error> {
        &self.failures
    }

    /// Control-plane messages from peers, with the sending process.
    pub(crate) fn control(&self) -> &Receiver<(usize, Vec<u8>)> {
        &self.control
    }

    /// Sends a control-plane message to `peer`.
    pub(crate) fn send_control(&self, peer: usize, msg: Vec<u8>) -> Result<()> {
        self.link(peer)?.send(Frame::Control(msg))
    }

    /// Connects to every peer (waiting up to the connect timeout for them to come up), checks
    /// that they run the same job, and starts the connections' reader and writer tasks.
    pub(crate) fn connect(&self) -> Result<()> {
        let hello = Hello {
            job: self.cfg.job.clone(),
            process: self.cfg.index,
            processes: self.cfg.peers.len(),
            fingerprint: self.cfg.fingerprint,
            restore: self.cfg.restore,
        };
        let listen = self.cfg.listen.clone().unwrap_or_else(|| self.cfg.peers[self.cfg.index].clone());
        let deadline = Instant::now() + self.cfg.connect_timeout;
        // Each connection runs as soon as its handshake is done, so a peer that dies while the
        // others are still connecting fails this process at once instead of at the deadline.
        let on_peer = |peer: usize, stream: TcpStream| self.start(peer, stream);
        self.rt.block_on(async {
            let listener = TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
            let accept = accept_higher(&listener, &hello, self.cfg.peers.len(), &on_peer);
            let connect = connect_lower(&self.cfg.peers, &hello, &on_peer);
            let all = async { tokio::try_join!(accept, connect) };
            let lost = async {
                loop {
                    if let Ok(e) = self.failures.try_recv() {
                        return e.context("a process of the job failed while the processes were connecting");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), all) => match r {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(anyhow!(
                        "not every process of the job was reachable within {:?} (peers: {})",
                        self.cfg.connect_timeout,
                        self.cfg.peers.join(",")
                    )),
                },
                e = lost => Err(e),
            }
        })?;
        tracing::info!(process = self.cfg.index, processes = self.cfg.peers.len(), "connected to every peer");
        Ok(())
    }

    fn start(&self, peer: usize, stream: TcpStream) -> Result<()> {
        let link = self.link(peer)?;
        let out_rx =
            link.out_rx.lock().take().ok_or_else(|| anyhow!("internal error: process {peer} connected twice"))?;
        let (r, w) = stream.into_split();
        let fail = Failer { link: link.clone(), tx: self.failures_tx.clone(), closing: self.closing.clone() };
        let writer = self.rt.spawn(write_loop(w, out_rx, fail.clone()));
        self.writers.lock().push(writer);
        let reader = Reader { link, control: self.control_tx.clone(), fail, timeout: self.cfg.peer_timeout };
        self.rt.spawn(reader.run(r));
        Ok(())
    }

    /// Ends this process's part cleanly: says goodbye to every peer after everything queued,
    /// and waits (10 s at most) until it is written.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        for link in self.links.iter().flatten() {
            let _ = link.send(Frame::Goodbye);
        }
        let writers = std::mem::take(&mut *self.writers.lock());
        let _ =
            self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), futures_join_all(writers)).await });
    }
}

async fn futures_join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// What to do with a connection to a peer once the hellos are exchanged.
type OnPeer<'a> = &'a (dyn Fn(usize, TcpStream) -> Result<()> + Sync);

/// Accepts a connection from every process with a higher index.
async fn accept_higher(listener: &TcpListener, hello: &Hello, processes: usize, on_peer: OnPeer<'_>) -> Result<()> {
    let mut got: Vec<usize> = Vec::new();
    while got.len() < processes - hello.process - 1 {
        let (mut s, from) = listener.accept().await?;
        s.set_nodelay(true)?;
        let theirs = match handshake(&mut s, hello).await {
            Ok(h) => h,
            Err(e) => {
                // A stray connection (a port scan, a process of another job) is refused, not fatal.
                tracing::warn!(%from, error = format!("{e:#}"), "refused a connection");
                continue;
            }
        };
        if theirs.process <= hello.process || got.contains(&theirs.process) {
            bail!("process {} connected to process {} twice or out of order", theirs.process, hello.process);
        }
        got.push(theirs.process);
        on_peer(theirs.process, s)?;
    }
    Ok(())
}

/// Connects to every process with a lower index, retrying until it listens.
async fn connect_lower(peers: &[String], hello: &Hello, on_peer: OnPeer<'_>) -> Result<()> {
    for (p, addr) in peers.iter().enumerate().take(hello.process) {
        let mut s = loop {
            match TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        s.set_nodelay(true)?;
        let theirs = handshake(&mut s, hello).await.with_context(|| format!("connecting to process {p} at {addr}"))?;
        if theirs.process != p {
            bail!("{addr} is process {} of the job, but --peers lists it as process {p}", theirs.process);
        }
        on_peer(p, s)?;
    }
    Ok(())
}

/// Exchanges hellos; refuses a peer of another job, graph or flags.
async fn handshake(s: &mut TcpStream, ours: &Hello) -> Result<Hello> {
    write_frame(s, &Frame::Hello(ours.clone())).await?;
    s.flush().await?;
    let theirs = match tokio::time::timeout(Duration::from_secs(10), read_frame(s, &BufferPool::default())).await {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(_)) => bail!("the peer did not say hello"),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("no hello within 10 s"),
    };
    if theirs.job != ours.job || theirs.processes != ours.processes || theirs.fingerprint != ours.fingerprint {
        bail!(
            "process {} runs job '{}' as {} processes with another plan or other flags than this one \
             (job '{}', {} processes); every process must run the same binary with the same flags",
            theirs.process,
            theirs.job,
            theirs.processes,
            ours.job,
            ours.processes
        );
    }
    if theirs.restore != ours.restore {
        let show = |r: Option<u64>| r.map_or("nothing".to_string(), |id| format!("checkpoint {id}"));
        bail!(
            "process {} restores from {}, this one from {}: every process must start from the same snapshot",
            theirs.process,
            show(theirs.restore),
            show(ours.restore)
        );
    }
    Ok(theirs)
}

/// Reports a connection's failure once, unless it is expected (the peer said goodbye, or this
/// process is closing).
#[derive(Clone)]
struct Failer {
    link: Arc<Link>,
    tx: Sender<anyhow::Error>,
    closing: Arc<AtomicBool>,
}

impl Failer {
    fn expected(&self) -> bool {
        self.link.peer_done.load(Ordering::Relaxed) || self.closing.load(Ordering::Relaxed)
    }

    fn fail(&self, e: anyhow::Error) {
        if !self.expected() && !self.link.down.swap(true, Ordering::Relaxed) {
            let _ = self.tx.send(e.context(format!("lost the connection to {}", self.link.name())));
        }
    }
}

async fn write_loop(w: OwnedWriteHalf, mut rx: UnboundedReceiver<Frame>, fail: Failer) {
    let mut w = BufWriter::with_capacity(1 << 16, w);
    let mut tick = tokio::time::interval(HEARTBEAT);
    let result: Result<()> = async {
        loop {
            tokio::select! {
                f = rx.recv() => {
                    let Some(mut f) = f else { return Ok(()) };
                    // Everything queued goes out before one flush.
                    loop {
                        write_frame(&mut w, &f).await?;
                        match f {
                            Frame::Data(body) => fail.link.sent.give(body),
                            Frame::Goodbye => {
                                w.flush().await?;
                                w.shutdown().await?;
                                return Ok(());
                            }
                            _ => {}
                        }
                        match rx.try_recv() {
                            Ok(next) => f = next,
                            Err(_) => break,
                        }
                    }
                    w.flush().await?;
                }
                _ = tick.tick() => {
                    write_frame(&mut w, &Frame::Heartbeat).await?;
                    w.flush().await?;
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        // A peer that finished closes its socket right after its goodbye, which may reach our
        // reader only after our next write failed: give the reader a moment to see it.
        for _ in 0..100 {
            if fail.expected() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fail.fail(e);
    }
}

struct Reader {
    link: Arc<Link>,
    control: Sender<(usize, Vec<u8>)>,
    fail: Failer,
    timeout: Duration,
}

impl Reader {
    async fn run(self, r: OwnedReadHalf) {
        let mut r = BufReader::with_capacity(1 << 16, r);
        // Lookups without the lock: every channel is registered before the mesh connects.
        let inbound = std::mem::take(&mut *self.link.inbound.lock());
        let credits = self.link.credits.lock().clone();
        loop {
            let frame = match tokio::time::timeout(self.timeout, read_frame(&mut r, &self.link.received)).await {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => {
                    self.fail.fail(anyhow!("it closed the connection without a goodbye"));
                    break;
                }
                Ok(Err(e)) => {
                    self.fail.fail(e);
                    break;
                }
                Err(_) => {
                    self.fail.fail(anyhow!("no word from it for {:?}", self.timeout));
                    break;
                }
            };
            let result = match frame {
                Frame::Data(body) => {
                    let channel = data_channel(&body);
                    match inbound.get(&channel).map(|q| q.try_send(body)) {
                        None => Err(anyhow!("data for channel {channel:#x}, which it does not send on")),
                        Some(Err(TrySendError::Full(_))) => {
                            Err(anyhow!("it sent more than its credits on channel {channel:#x}"))
                        }
                        // The receiving task ended (its job is failing or done): drop.
                        Some(Err(TrySendError::Disconnected(_))) | Some(Ok(())) => Ok(()),
                    }
                }
                Frame::Credit { channel, n } => match credits.get(&channel) {
                    Some(c) => {
                        c.grant(n);
                        Ok(())
                    }
                    None => Err(anyhow!("credits for channel {channel:#x}, which this process does not send on")),
                },
                Frame::Heartbeat => Ok(()),
                Frame::Control(msg) => {
                    let _ = self.control.send((self.link.peer, msg));
                    Ok(())
                }
                Frame::Goodbye => {
                    self.link.peer_done.store(true, Ordering::Relaxed);
                    Ok(())
                }
                Frame::Hello(_) => Err(anyhow!("a second hello")),
            };
            if let Err(e) = result {
                self.fail.fail(e.context("protocol error"));
                break;
            }
        }
        // Dropping the queues lets the receiving tasks see the end after the last element.
        self.link.down.store(true, Ordering::Relaxed);
        drop(inbound);
    }
}

#[cfg(test)]
#[path = "mesh_tests.rs"]
mod tests;
