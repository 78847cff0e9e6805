//! MQTT over WebSocket: the HTTP upgrade (path, subprotocol `mqtt`) and [`WsStream`], which
//! presents the binary frames as the one byte stream the broker's codec reads.
//!
//! The adapter is ours, not a crate's: the one published adapter (ws_stream_tungstenite) trails
//! tungstenite by several releases and brings its own event machinery; what MQTT needs is small
//! (binary payloads concatenated on read, one binary frame per write) and is tested here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

/// Subprotocols we speak, preferred first: `mqtt` is MQTT 3.1.1 and 5's registered name;
/// `mqttv3.1` is what MQTT 3.1 era clients (old paho JavaScript) offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Runs the upgrade on `stream`; `Err` is the reason, for the log.
// The callback's shape, large error response included, is tungstenite's `Callback`.
#[allow(clippy::result_large_err)]
pub(super) async fn accept<S>(stream: S, path: &str) -> Result<WsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let callback = |request: &Request, response: Response| upgrade(path, request, response);
    tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config()))
        .await
        .map(WsStream::new)
        .map_err(|error| match error {
            WsError::Http(response) => format!(
                "websocket upgrade refused ({}): {}",
                response.status(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
            ),
            error => format!("websocket: {error}"),
        })
}

/// tungstenite allocates its read buffer eagerly per connection (128 KiB by default); with
/// thousands of mostly idle devices that dominates memory, and MQTT packets from sensors are
/// small. Larger messages still arrive, in more reads. The message size limits stay at
/// tungstenite's defaults (64 MiB message, 16 MiB frame): the broker's max_packet_bytes is the
/// limit that matters, and one MQTT packet may span frames.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
}

#[allow(clippy::result_large_err)] // tungstenite's `Callback` shape, as above
fn upgrade(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("path {:?} is not {path:?}", request.uri().path()),
        ));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect();
    if offered.is_empty() {
        // The MQTT spec has clients offer `mqtt`, but some embedded clients offer nothing; with
        // no subprotocol header in the reply they still work, and refusing them gains nothing.
        return Ok(response);
    }
    let Some(chosen) = SUBPROTOCOLS.iter().find(|ours| {
        offered
            .iter()
            .any(|theirs| theirs.eq_ignore_ascii_case(ours))
    }) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("no MQTT subprotocol among {offered:?} (expected \"mqtt\")"),
        ));
    };
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(chosen),
    );
    Ok(response)
}

fn refusal(status: StatusCode, reason: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason));
    *response.status_mut() = status;
    response
}

/// A WebSocket as a byte stream: reads concatenate binary messages (an MQTT packet may be split
/// across frames, or several packets share one); each write is one binary message. A text
/// message is an error (MQTT over WebSocket allows binary only); a close is end of stream.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    closed: bool,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Queues one binary message of `len` bytes that `fill` writes; nothing for zero bytes,
    /// since an empty message would mean nothing to the client.
    fn send(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(io_error)?;
        let mut frame = Vec::with_capacity(len);
        fill(&mut frame);
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(frame.into()))
            .map_err(io_error)?;
        Poll::Ready(Ok(len))
    }
}

fn io_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        error => io::Error::new(io::ErrorKind::InvalidData, error),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => this.pending = bytes,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text websocket message; MQTT over websocket is binary only",
                    )));
                }
                // tungstenite answers pings itself (the pong goes out with the next read or write).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    // Push tungstenite's queued close reply out if the socket takes it now; the
                    // stream ends either way.
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    this.closed = true;
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.closed = true;
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.send(cx, buf.len(), |frame| frame.extend_from_slice(buf))
    }

    /// One message for all the slices: a codec writing header and payload as two slices should
    /// not cost the client two frames.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        self.send(cx, len, |frame| {
            bufs.iter().for_each(|buf| frame.extend_from_slice(buf))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(io_error(error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    #[tokio::test]
    async fn a_vectored_write_is_one_binary_message_and_an_empty_write_sends_none() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let mut stream =
            WsStream::new(WebSocketStream::from_raw_socket(ours, Role::Server, None).await);
        let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;

        assert_eq!(stream.write(&[]).await.expect("empty write"), 0);
        let slices = [
            io::IoSlice::new(&[0x30, 0x03]),
            io::IoSlice::new(b"\x00\x01a"),
        ];
        assert_eq!(stream.write_vectored(&slices).await.expect("write"), 5);
        stream.write_all(&[0xc0, 0x00]).await.expect("write");
        stream.flush().await.expect("flush");

        let first = client.next().await.expect("open").expect("message");
        assert_eq!(
            first,
            Message::Binary(Bytes::from_static(b"\x30\x03\x00\x01a"))
        );
        let second = client.next().await.expect("open").expect("message");
        assert_eq!(second, Message::Binary(Bytes::from_static(&[0xc0, 0x00])));
    }

    #[tokio::test]
    async fn a_ping_between_packets_is_answered_and_does_not_reach_the_byte_stream() {
        use futures_util::SinkExt;
        use tokio::io::AsyncReadExt;

        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let mut stream =
            WsStream::new(WebSocketStream::from_raw_socket(ours, Role::Server, None).await);
        let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
        client
            .send(Message::binary(&b"ab"[..]))
            .await
            .expect("send");
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .expect("ping");
        client
            .send(Message::binary(&b"cd"[..]))
            .await
            .expect("send");

        let mut read = [0u8; 4];
        stream.read_exact(&mut read).await.expect("read");
        assert_eq!(&read, b"abcd");
        let pong = client.next().await.expect("open").expect("message");
        assert_eq!(pong, Message::Pong(Bytes::from_static(b"hi")));
    }
}
