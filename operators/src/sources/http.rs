//! An HTTP ingest source: `POST <path>` with a JSON object or array of events feeds the job.
//!
//! Clients cannot replay what they sent unless told to, so the answer is the contract: with
//! durable acknowledgements (checkpointing on), a request is answered `200` only once a
//! completed checkpoint covers its events — their effects are in the checkpoint and the sinks
//! commit them — so an acknowledged event is never lost. A request whose events were not yet
//! covered when the job failed gets no `200` (the connection drops or `503` comes back) and must
//! be sent again. Malformed JSON is answered `400` with the reason; a full queue (backpressure)
//! `503` with `Retry-After`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use weir_runtime::{Data, Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

/// Where an accepted request's answer goes: the checkpoint that covered it, or an error.
type Ack = oneshot::Sender<std::result::Result<Option<u64>, String>>;

/// Events of one request with the way to answer it.
struct Request<T> {
    events: Vec<T>,
    ack: Ack,
}

/// Events posted to an HTTP endpoint.
///
/// ```no_run
/// use weir_operators::sources::HttpSource;
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Event { user: String, clicks: u32 }
/// let source = HttpSource::<Event>::new("127.0.0.1:8080").path("/events").durable_acks(true);
/// ```
#[derive(Clone, Debug)]
pub struct HttpSource<T> {
    addr: String,
    path: String,
    queue: usize,
    ack_timeout: Duration,
    durable: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> HttpSource<T> {
    /// Listens on `addr` (`host:port`) for `POST /events`.
    pub fn new(addr: &str) -> Self {
        HttpSource {
            addr: addr.to_string(),
            path: "/events".to_string(),
            queue: 64,
            ack_timeout: Duration::from_secs(60),
            durable: true,
            _t: std::marker::PhantomData,
        }
    }
    /// The path events are posted to.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }
    /// Requests waiting to enter the job before new ones are refused with 503.
    pub fn queue(mut self, requests: usize) -> Self {
        self.queue = requests.max(1);
        self
    }
    /// How long a request waits for a checkpoint to cover it before it is answered 503.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }
    /// Answer 200 only once a completed checkpoint covers the events (the default; needs
    /// checkpointing), or as soon as they entered the job (`false`: nothing survives a failure).
    pub fn durable_acks(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}

struct Shared<T> {
    tx: Sender<Request<T>>,
    ack_timeout: Duration,
}

/// Splits a body into events: one JSON object, or an array of them.
fn parse_events<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<Vec<T>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        one @ serde_json::Value::Object(_) => vec![one],
        other => return Err(format!("expected a JSON object or an array of objects, got {other}")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| serde_json::from_value(v).map_err(|e| format!("event {i}: {e}")))
        .collect()
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

async fn ingest<T: Send + DeserializeOwned + 'static>(State(shared): State<Arc<Shared<T>>>, body: Bytes) -> Response {
    let events: Vec<T> = match parse_events(&body) {
        Ok(e) => e,
        Err(e) => return answer(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
    };
    let n = events.len();
    if n == 0 {
        return answer(StatusCode::OK, serde_json::json!({ "accepted": 0 }));
    }
    let (ack, done) = oneshot::channel();
    match shared.tx.try_send(Request { events, ack }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": "the job is backpressured: retry later" }),
            )
        }
        Err(TrySendError::Disconnected(_)) => {
            return answer(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": "the job is not running" }))
        }
    }
    match tokio::time::timeout(shared.ack_timeout, done).await {
        Ok(Ok(Ok(checkpoint))) => {
            answer(StatusCode::OK, serde_json::json!({ "accepted": n, "checkpoint": checkpoint }))
        }
        Ok(Ok(Err(e))) => answer(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": e })),
        Ok(Err(_)) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the job stopped or restarted before a checkpoint covered these events: send them again" }),
        ),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": format!("no checkpoint covered these events within {:?}: their fate is unknown", shared.ack_timeout) }),
        ),
    }
}

struct HttpReader<T> {
    rx: Receiver<Request<T>>,
    durable: bool,
    /// Answers of requests emitted since the last barrier.
    current: Vec<Ack>,
    /// Answers waiting for their checkpoint to complete.
    epochs: BTreeMap<u64, Vec<Ack>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl<T> Drop for HttpReader<T> {
    /// Stops the server and frees the port (a restarted job binds it again). Waiting clients
    /// learn that their events were not covered: their answers are dropped, which the handlers
    /// turn into 503. Requests still queued are dropped the same way, until the server is gone.
    fn drop(&mut self) {
        self.current.clear();
        self.epochs.clear();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.server.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("the HTTP ingest endpoint did not stop within 10 s");
            }
        }
    }
}

impl<T: Data> Source<T> for HttpSource<T> {
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }
    fn replayable(&self) -> bool {
        false
    }
    fn create_reader(&self, _info: &TaskInfo) -> Result<Box<dyn SourceReader<T>>> {
        let listener =
            std::net::TcpListener::bind(&self.addr).with_context(|| format!("listening on {}", self.addr))?;
        listener.set_nonblocking(true)?;
        let local: SocketAddr = listener.local_addr()?;
        let (tx, rx) = crossbeam_channel::bounded(self.queue);
        let shared = Arc::new(Shared { tx, ack_timeout: self.ack_timeout });
        let app = axum::Router::new().route(&self.path, post(ingest::<T>)).with_state(shared);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("http-ingest".into()).spawn(move || {
            rt.block_on(async move {
                let l = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "HTTP ingest endpoint failed to start"),
                };
                let serve = axum::serve(l, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP ingest endpoint stopped");
                }
            })
        })?;
        tracing::info!(addr = %local, path = %self.path, "HTTP ingest endpoint listening");
        Ok(Box::new(HttpReader {
            rx,
            durable: self.durable,
            current: Vec::new(),
            epochs: BTreeMap::new(),
            shutdown: Some(shutdown),
            server: Some(thread),
        }))
    }
}

impl<T: Data> SourceReader<T> for HttpReader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        let mut any = false;
        while out.remaining() > 0 {
            let Ok(req) = self.rx.try_recv() else { break };
            any = true;
            for e in req.events {
                out.collect(0, e);
            }
            if self.durable {
                self.current.push(req.ack);
            } else {
                let _ = req.ack.send(Ok(None));
            }
        }
        Ok(if any { SourcePoll::Ready } else { SourcePoll::Idle(Duration::from_millis(5)) })
    }

    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<serde_json::Value> {
        // Everything emitted so far precedes this checkpoint's barrier.
        if !self.current.is_empty() {
            self.epochs.insert(checkpoint_id, std::mem::take(&mut self.current));
        }
        Ok(serde_json::Value::Null)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let later = self.epochs.split_off(&(checkpoint_id + 1));
        for (_, acks) in std::mem::replace(&mut self.epochs, later) {
            for a in acks {
                let _ = a.send(Ok(Some(checkpoint_id)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    struct Event {
        id: u32,
    }

    fn post(port: u16, body: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{port}/events");
        match ureq::post(&url).timeout(Duration::from_secs(10)).send_string(body) {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("POST failed: {e}"),
        }
    }

    #[test]
    fn a_full_queue_answers_503_and_a_stopped_job_releases_waiting_clients() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let source = HttpSource::<Event>::new(&format!("127.0.0.1:{port}")).queue(1);
        let info = TaskInfo {
            job_name: "t".into(),
            operator_name: "http".into(),
            uid: "http".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
        };
        let reader = source.create_reader(&info).unwrap();
        // Nothing polls the reader: the first request fills the queue and waits for its ack.
        let first = std::thread::spawn(move || post(port, r#"{"id": 1}"#));
        std::thread::sleep(Duration::from_millis(500));
        let (code, body) = post(port, r#"[{"id": 2}, {"id": 3}]"#);
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("backpressured"), "{body}");
        let (code, body) = post(port, r#"{"id": "x"}"#);
        assert_eq!(code, 400, "malformed events are refused before they are queued: {body}");
        drop(reader);
        let (code, body) = first.join().unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("send them again"), "{body}");
    }
}
