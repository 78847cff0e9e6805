//! The two halves of a client's socket as every phase uses them: `Outbound` buffers replies and
//! writes them after each event, `receive` reads what came next, and `linger` drains a socket
//! we are about to close.
//!
//! The decision a reader would question: neither half keeps a buffer while idle. Most
//! connections are silent between readings, and 4 KB held for reading plus 1 KB for writing
//! was most of what an idle one cost; the price is an allocation per read and per write.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, WriteHalf};
use tracing::debug;

use crate::broker::codec::{self, Reply, Version};
use crate::broker::listener::Stream;

/// A client that does not read what we write for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most one read of the socket takes in.
const READ_CHUNK: usize = 4096;

/// How long a connection closed for breaking a rule is still read from, so that its DISCONNECT
/// (and reason code) reaches the client.
const LINGER: Duration = Duration::from_secs(1);

/// The write side: replies are encoded into a buffer and written after each event, so one
/// socket write carries every ack a batch of settlements released.
pub(super) struct Outbound {
    writer: WriteHalf<Box<dyn Stream>>,
    buf: BytesMut,
    version: Version,
    /// The client's maximum packet size (MQTT 5).
    pub(super) max_packet: Option<u32>,
}

impl Outbound {
    pub(super) fn new(writer: WriteHalf<Box<dyn Stream>>, version: Version) -> Outbound {
        Outbound {
            writer,
            buf: BytesMut::new(),
            version,
            max_packet: None,
        }
    }

    /// Encodes `reply`; false if it is a PUBLISH the client's packet size limit excludes.
    pub(super) fn reply(&mut self, reply: &Reply) -> bool {
        match codec::write(reply, self.version, &mut self.buf, self.max_packet) {
            Ok(()) => true,
            Err(error) => {
                debug!(%error, "packet not sent");
                false
            }
        }
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // write_all alone leaves a WebSocket frame (and possibly a TLS record) queued in the
        // stream: flush is what puts it on the socket.
        let writer = &mut self.writer;
        let buf = &self.buf;
        let write = async move {
            writer.write_all(buf).await?;
            writer.flush().await
        };
        let result = tokio::time::timeout(WRITE_TIMEOUT, write).await;
        // Freed, not cleared: most connections write seldom, and a buffer kept between writes
        // would be 1 KB of every idle one.
        self.buf = BytesMut::new();
        match result {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client does not read",
            )),
        }
    }

    /// Closes the write side (what was buffered and not flushed is not sent).
    pub(super) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.writer.shutdown().await
    }
}

/// Reads what the client sent next into `inbuf`: how many bytes, 0 at the end of the stream.
///
/// An idle connection holds no read buffer: that was 4 KB of every connection's memory, most
/// of them silent between readings. So while `inbuf` holds no partial packet, its memory goes
/// (payloads parsed out of it keep what they share) and the read lands on the stack, and only
/// what arrived is copied to the heap, to be parsed and freed in turn.
pub(super) async fn receive<R: AsyncRead + Unpin>(
    reader: &mut R,
    inbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    if !inbuf.is_empty() {
        // Room behind a partial packet, as much as one read from the stack would take.
        inbuf.reserve(READ_CHUNK);
        return reader.read_buf(inbuf).await;
    }
    *inbuf = BytesMut::new();
    std::future::poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut chunk))?;
        inbuf.extend_from_slice(chunk.filled());
        Poll::Ready(Ok(chunk.filled().len()))
    })
    .await
}

/// Reads and drops what the client still sends after our goodbye, until it closes or `LINGER`
/// passes. Closing a socket with unread bytes in it makes the kernel send RST, and a client
/// that gets RST may lose the DISCONNECT still in its receive buffer: a client that was busy
/// sending (PUBRELs for the PUBRECs it got, say) would never learn why it was cut off.
pub(super) async fn linger<R: AsyncRead + Unpin>(reader: &mut R) {
    let drain = async {
        let mut buf = [0u8; 1024];
        let mut left = 256 * 1024usize;
        while left > 0 {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
