//! Frames on a connection between two processes: `u32 LE length ‖ kind ‖ body`.
//!
//! A data frame's body is built by the sending task itself, header included (see
//! [`data_frame`]), so an encoded batch is written to the socket without another copy, and the
//! receiving task decodes straight from the frame ([`DATA_AT`]). Data frame bodies come from and
//! go back to the connection's [`BufferPool`]s.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::buffers::BufferPool;

const HELLO: u8 = 0;
const DATA: u8 = 1;
const CREDIT: u8 = 2;
const HEARTBEAT: u8 = 3;
const CONTROL: u8 = 4;
const GOODBYE: u8 = 5;

/// Where a data frame's element starts: after the kind and the channel id.
pub(crate) const DATA_AT: usize = 9;

/// The largest frame accepted; a corrupt length fails the connection instead of allocating it.
const MAX_FRAME: usize = 1 << 30;

/// What a process says first on a connection, so that processes of different jobs, graphs or
/// flags never exchange data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Hello {
    pub job: String,
    pub process: usize,
    pub processes: usize,
    /// Hash of the job's plan and of the flags that shape its channels.
    pub fingerprint: u64,
    /// The checkpoint or savepoint this process restores from: all must restore the same.
    pub restore: Option<u64>,
}

/// One frame.
#[derive(Debug)]
pub(crate) enum Frame {
    Hello(Hello),
    /// A stream element for a logical channel: the whole body, see [`data_frame`].
    Data(Vec<u8>),
    /// The receiver took `n` elements of a channel off its queue: `n` more may be sent.
    Credit {
        channel: u64,
        n: u32,
    },
    /// Sent every second, so a peer that went silent is noticed.
    Heartbeat,
    /// A message of the checkpoint control plane.
    Control(Vec<u8>),
    /// The sender finished cleanly; the connection closing after it is no failure.
    Goodbye,
}

/// Makes `body` (an empty buffer) a data frame body for `channel`; the element is appended to it.
pub(crate) fn data_frame(channel: u64, mut body: Vec<u8>) -> Vec<u8> {
    body.clear();
    body.push(DATA);
    body.extend_from_slice(&channel.to_le_bytes());
    body
}

/// The channel of a data frame body.
pub(crate) fn data_channel(body: &[u8]) -> u64 {
    body.get(1..DATA_AT).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(u64::MAX)
}

/// Writes `frame` (buffered; the caller flushes).
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    let small;
    let body: &[u8] = match frame {
        Frame::Data(body) => body,
        Frame::Hello(h) => {
            small = [&[HELLO][..], &serde_json::to_vec(h)?].concat();
            &small
        }
        Frame::Credit { channel, n } => {
            small = [&[CREDIT][..], &channel.to_le_bytes(), &n.to_le_bytes()].concat();
            &small
        }
        Frame::Heartbeat => &[HEARTBEAT],
        Frame::Control(msg) => {
            small = [&[CONTROL][..], msg].concat();
            &small
        }
        Frame::Goodbye => &[GOODBYE],
    };
    write_prefixed(w, &(body.len() as u32).to_le_bytes(), body).await
}

/// Writes `head ‖ body` with as few writes as the writer allows: one vectored write when the two
/// go straight to the socket. Two `write_all`s through a `BufWriter` sent a data frame (larger
/// than its buffer) as two writes, the 4-byte length alone in its own TCP segment (no Nagle
/// here), and the peer's reader woke twice per frame.
async fn write_prefixed<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], body: &[u8]) -> Result<()> {
    let total = head.len() + body.len();
    let mut done = 0;
    while done < total {
        let n = if done < head.len() {
            let parts = [std::io::IoSlice::new(&head[done..]), std::io::IoSlice::new(body)];
            w.write_vectored(&parts).await?
        } else {
            w.write(&body[done - head.len()..]).await?
        };
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        done += n;
    }
    Ok(())
}

/// Reads one frame into a buffer of `buffers`; `None` when the peer closed the connection
/// between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buffers: &BufferPool) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        bail!("a frame of {len} bytes (corrupt stream?)");
    }
    // Read into the buffer's spare capacity: a reused buffer is neither zeroed nor grown.
    let mut body = buffers.take();
    body.reserve(len);
    let got = r.take(len as u64).read_to_end(&mut body).await.context("reading a frame")?;
    if got < len {
        bail!("a frame of {len} bytes ended after {got}");
    }
    Ok(Some(match body[0] {
        DATA if len >= DATA_AT => Frame::Data(body),
        HELLO => Frame::Hello(serde_json::from_slice(&body[1..]).context("decoding a hello")?),
        CREDIT if len == 13 => Frame::Credit {
            channel: data_channel(&body),
            n: u32::from_le_bytes([body[9], body[10], body[11], body[12]]),
        },
        HEARTBEAT => Frame::Heartbeat,
        CONTROL => {
            body.remove(0);
            Frame::Control(body)
        }
        GOODBYE => Frame::Goodbye,
        kind => bail!("a frame of unknown kind {kind} and {len} bytes"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_clean_close_reads_as_none() {
        let hello = Hello { job: "j".into(), process: 1, processes: 3, fingerprint: 42, restore: Some(4) };
        let mut data = data_frame(77, Vec::new());
        data.extend_from_slice(b"abc");
        let frames = vec![
            Frame::Hello(hello.clone()),
            Frame::Data(data.clone()),
            Frame::Credit { channel: 77, n: 5 },
            Frame::Heartbeat,
            Frame::Control(b"{}".to_vec()),
            Frame::Goodbye,
        ];
        let mut wire = Vec::new();
        for f in &frames {
            write_frame(&mut wire, f).await.unwrap();
        }
        let mut r = &wire[..];
        let pool = BufferPool::default();
        assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Hello(h)) if h == hello));
        match read_frame(&mut r, &pool).await.unwrap() {
            Some(Frame::Data(body)) => {
                assert_eq!(data_channel(&body), 77);
                assert_eq!(&body[DATA_AT..], b"abc");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Credit { channel: 77, n: 5 })));
        assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Heartbeat)));
        assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Control(m)) if m == b"{}"));
        assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Goodbye)));
        assert!(read_frame(&mut r, &pool).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_read_into_a_reused_buffer_holds_only_its_own_bytes() {
        let pool = BufferPool::default();
        let mut wire = Vec::new();
        for payload in [&b"a longer first payload"[..], b"xy"] {
            let mut data = data_frame(5, pool.take());
            data.extend_from_slice(payload);
            write_frame(&mut wire, &Frame::Data(data)).await.unwrap();
        }
        let mut r = &wire[..];
        let Some(Frame::Data(first)) = read_frame(&mut r, &pool).await.unwrap() else { panic!("a data frame") };
        assert_eq!(&first[DATA_AT..], b"a longer first payload");
        let capacity = first.capacity();
        pool.give(first);
        let Some(Frame::Data(second)) = read_frame(&mut r, &pool).await.unwrap() else { panic!("a data frame") };
        assert_eq!(&second[DATA_AT..], b"xy");
        assert_eq!(data_channel(&second), 5);
        assert_eq!(second.capacity(), capacity, "the first frame's buffer was reused");
    }

    /// A socket stand-in that counts writes and takes at most `max` bytes per write.
    struct Counting {
        wire: Vec<u8>,
        writes: usize,
        max: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.wire.extend_from_slice(&buf[..n]);
            self.writes += 1;
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut left = self.max;
            for b in bufs {
                let n = b.len().min(left);
                self.wire.extend_from_slice(&b[..n]);
                left -= n;
            }
            self.writes += 1;
            std::task::Poll::Ready(Ok(self.max - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn big_frame(channel: u64, fill: u8) -> Frame {
        let mut body = data_frame(channel, Vec::new());
        body.resize(200_000, fill);
        Frame::Data(body)
    }

    #[tokio::test]
    async fn a_large_data_frame_is_one_write_length_included() {
        let mut w =
            tokio::io::BufWriter::with_capacity(1 << 16, Counting { wire: Vec::new(), writes: 0, max: usize::MAX });
        write_frame(&mut w, &big_frame(1, 7)).await.unwrap();
        write_frame(&mut w, &big_frame(2, 8)).await.unwrap();
        w.flush().await.unwrap();
        let sock = w.into_inner();
        assert_eq!(sock.writes, 2, "one write per frame, not the length apart from the body");
        let pool = BufferPool::default();
        let mut r = &sock.wire[..];
        for (channel, fill) in [(1, 7), (2, 8)] {
            let Some(Frame::Data(body)) = read_frame(&mut r, &pool).await.unwrap() else { panic!("a data frame") };
            assert_eq!(data_channel(&body), channel);
            assert!(body[DATA_AT..].iter().all(|&b| b == fill) && body.len() == 200_000);
        }
    }

    #[tokio::test]
    async fn frames_survive_a_socket_that_takes_a_few_bytes_at_a_time() {
        for max in [1, 3, 5, 4096] {
            let mut sock = Counting { wire: Vec::new(), writes: 0, max };
            write_frame(&mut sock, &Frame::Credit { channel: 9, n: 2 }).await.unwrap();
            write_frame(&mut sock, &big_frame(3, 1)).await.unwrap();
            write_frame(&mut sock, &Frame::Heartbeat).await.unwrap();
            let pool = BufferPool::default();
            let mut r = &sock.wire[..];
            assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Credit { channel: 9, n: 2 })));
            let Some(Frame::Data(body)) = read_frame(&mut r, &pool).await.unwrap() else { panic!("a data frame") };
            assert_eq!((data_channel(&body), body.len()), (3, 200_000));
            assert!(matches!(read_frame(&mut r, &pool).await.unwrap(), Some(Frame::Heartbeat)));
            assert!(read_frame(&mut r, &pool).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_corrupt_length_or_kind_fails_the_read() {
        assert!(read_frame(&mut &[0u8, 0, 0, 0][..], &BufferPool::default()).await.is_err());
        assert!(read_frame(&mut &[255u8, 255, 255, 255][..], &BufferPool::default()).await.is_err());
        assert!(read_frame(&mut &[1u8, 0, 0, 0, 99][..], &BufferPool::default()).await.is_err());
        assert!(read_frame(&mut &[5u8, 0, 0, 0, 1][..], &BufferPool::default()).await.is_err(), "a truncated frame");
    }
}
