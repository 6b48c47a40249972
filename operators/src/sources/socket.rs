//! A socket text source, like Spark's `readStream.format("socket")`: connects to `host:port` and
//! reads lines until the other side closes the connection.
//!
//! It cannot replay its input, so it runs in one subtask and a failure loses what was in flight.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};
use weir_runtime::{Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

/// Lines from a TCP server.
#[derive(Clone, Debug)]
pub struct SocketSource {
    addr: String,
}

impl SocketSource {
    /// Reads lines from `addr` (`host:port`).
    pub fn new(addr: &str) -> Self {
        SocketSource { addr: addr.to_string() }
    }
}

struct SocketReader {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Source<String> for SocketSource {
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }
    fn replayable(&self) -> bool {
        false
    }
    fn create_reader(&self, _info: &TaskInfo) -> Result<Box<dyn SourceReader<String>>> {
        let stream = TcpStream::connect(&self.addr).with_context(|| format!("connecting to {}", self.addr))?;
        // A short read timeout lets the task notice cancellation and flush while the peer is quiet.
        stream.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Box::new(SocketReader { reader: BufReader::new(stream), line: Vec::new() }))
    }
}

impl SourceReader<String> for SocketReader {
    fn poll(&mut self, out: &mut SourceOutput<'_, String>) -> Result<SourcePoll> {
        while out.remaining() > 0 {
            // On a timeout `read_until` keeps the bytes read so far in `line`, so a line split
            // across reads is completed on the next poll.
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => {
                    if !self.line.is_empty() {
                        let l = String::from_utf8_lossy(&self.line).trim_end_matches(['\r', '\n']).to_string();
                        out.collect(0, l);
                        self.line.clear();
                    }
                    return Ok(SourcePoll::Finished);
                }
                Ok(_) if self.line.last() == Some(&b'\n') => {
                    let l = String::from_utf8_lossy(&self.line).trim_end_matches(['\r', '\n']).to_string();
                    out.collect(0, l);
                    self.line.clear();
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(SourcePoll::Idle(Duration::ZERO));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from the socket"),
            }
        }
        Ok(SourcePoll::Ready)
    }
}
