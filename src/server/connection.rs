//! One connection on a worker: hyper serves it, with two things added around it.
//!
//! - **An idle limit.** A connection with no request being served is closed once it has
//!   been so for the header read timeout, counted from when it was accepted, its last
//!   request was answered, or a byte of an answer was last written; a request is served
//!   until its answer has been produced to its end (a streamed answer, an export, goes on
//!   being produced after its head). While an answer waits for the client to take what
//!   was written before it, the limit is the send timeout instead, a request under way
//!   or not. That covers, with one timer per connection, a client that never sends a
//!   byte (which hyper would wait for forever), one that sends its headers too slowly,
//!   one that stops reading its answer, and an idle keep-alive connection, so that
//!   silent sockets cannot hold every connection slot.
//! - **hyper's own answers made whole.** A request hyper cannot parse (bad syntax, a head
//!   over the size limit) is answered by hyper itself, with an empty body and none of the
//!   service's headers. Such an answer is recognised as it is written (a response head
//!   the service did not produce) and replaced by a complete one: the service's headers,
//!   a short body, and `Connection: close`, as hyper closes the connection after it.
//!   Its status is kept (`Activity::refused`), so that the worker logs and counts the
//!   request as the router does its own.
//! - **Which answers were written out.** A flush that succeeds confirms the counted
//!   visits whose answers were handed to the connection (`delivery::Handover`), and a
//!   read that finds the client's end marks them as ones the client may not read.
//!   A connection the service ends is closed gracefully (`close_gracefully`), so that
//!   "written out" stays true of what the client then gets: closed with requests still
//!   unread, a socket sends a reset, and the kernel throws away the answers it had not
//!   sent yet.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::StatusCode,
    response::Response,
};
use hyper::{
    body::{Body as HttpBody, Frame, SizeHint},
    rt::{Read, ReadBufCursor, Write},
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};

use crate::{deadlines::Deadlines, delivery::Handover};

/// Ends the connection of `activity` once hyper is done with it (hyper hands its socket
/// back when it drops it), without losing what it wrote: the answers are followed by the
/// end of the stream, and what the client still sends (pipelined requests, a body not
/// read) is read and dropped until the client closes its end, sends nothing for
/// `Deadlines::LINGER_QUIET`, or `limit` has passed. Only then is the socket closed, with
/// nothing unread, so that no reset discards answers the kernel had not sent yet, as
/// lingering close in nginx and Apache does.
pub async fn close_gracefully(activity: &Activity, limit: Duration) {
    use tokio::io::AsyncReadExt;

    let closing = activity
        .closing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut stream) = closing else {
        return;
    };
    if socket2::SockRef::from(&stream)
        .shutdown(std::net::Shutdown::Write)
        .is_err()
    {
        // Not connected any more: nothing left to deliver.
        return;
    }
    let until = Instant::now() + limit;
    let mut dropped = vec![0; 4096];
    loop {
        let quiet_until = (Instant::now() + Deadlines::LINGER_QUIET).min(until);
        match tokio::time::timeout_at(quiet_until, stream.read(&mut dropped)).await {
            Ok(Ok(1..)) => {}
            // The client's end, an error, or quiet for long enough.
            _ => return,
        }
    }
}

/// What the service did on one connection, shared by its service wrapper, its I/O
/// wrapper and its idle watch.
pub struct Activity {
    accepted: Instant,
    /// Requests being served now.
    in_flight: AtomicU32,
    /// When the last request was answered, in µs after `accepted`.
    last_answer_us: AtomicU64,
    /// When bytes of an answer were last written out, in µs after `accepted`.
    last_written_us: AtomicU64,
    /// The last write found the socket full: the client has not taken what was sent.
    write_waiting: AtomicBool,
    /// The socket, once hyper is done with it, to be closed gracefully.
    closing: Mutex<Option<TcpStream>>,
    /// Responses the service produced, and response heads written.
    answered: AtomicU64,
    heads_written: AtomicU64,
    /// The status of hyper's own answer, 0 while there is none.
    refused: AtomicU16,
    /// When bytes last came after an answer (or after the connection opened), in µs after
    /// `accepted`: when the request after it began to arrive.
    began_us: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_answer_us: AtomicU64::new(0),
            last_written_us: AtomicU64::new(0),
            write_waiting: AtomicBool::new(false),
            closing: Mutex::new(None),
            answered: AtomicU64::new(0),
            heads_written: AtomicU64::new(0),
            refused: AtomicU16::new(0),
            began_us: AtomicU64::new(0),
        })
    }

    /// The status hyper answered a request it could not parse with, if it did, and how
    /// long since that request began: its first bytes after the last answer, or the last
    /// answer itself when they had come with an earlier request.
    pub fn refused(&self) -> Option<(StatusCode, Duration)> {
        let status = StatusCode::from_u16(self.refused.load(Ordering::Relaxed)).ok()?;
        let began = self
            .began_us
            .load(Ordering::Relaxed)
            .max(self.last_answer_us.load(Ordering::Relaxed));
        Some((
            status,
            (self.accepted + Duration::from_micros(began)).elapsed(),
        ))
    }

    /// Bytes came in: the first since the last answer mark when the next request began.
    fn bytes_arrived(&self) {
        let began = self.began_us.load(Ordering::Relaxed);
        if began <= self.last_answer_us.load(Ordering::Relaxed) {
            let now = self.accepted.elapsed().as_micros() as u64;
            self.began_us.store(now.max(1), Ordering::Relaxed);
        }
    }

    /// Marks a request as being served until the guard is dropped.
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Serving {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Bytes of an answer went out.
    fn bytes_written(&self) {
        let now = self.accepted.elapsed().as_micros() as u64;
        self.last_written_us.store(now, Ordering::Relaxed);
        self.write_waiting.store(false, Ordering::Relaxed);
    }

    /// A write found the socket full.
    fn write_waits(&self) {
        self.write_waiting.store(true, Ordering::Relaxed);
    }

    /// When the connection last did something for its client: answered a request, or
    /// wrote part of an answer.
    fn last_activity(&self) -> Instant {
        let at = self
            .last_answer_us
            .load(Ordering::Relaxed)
            .max(self.last_written_us.load(Ordering::Relaxed));
        self.accepted + Duration::from_micros(at)
    }

    /// Resolves once the connection has had no request under way and written nothing
    /// for `limit`, or has written nothing for `send_limit` while what it wrote waits for
    /// the client to take it (a request under way or not); says which.
    pub async fn idle_for(&self, limit: Duration, send_limit: Duration) -> Idle {
        let mut deadline = self.accepted + limit;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            let waiting = self.write_waiting.load(Ordering::Relaxed);
            if !waiting && self.in_flight.load(Ordering::Relaxed) > 0 {
                // The service's turn, bounded by its own deadlines.
                deadline = now + limit;
                continue;
            }
            let idle_until = self.last_activity() + if waiting { send_limit } else { limit };
            if idle_until <= now {
                return if waiting {
                    Idle::NotTaking
                } else {
                    Idle::NoRequest
                };
            }
            // While waiting, looked at again within the shorter limit: the client may take
            // the rest and the connection fall idle.
            deadline = if waiting {
                idle_until.min(now + limit)
            } else {
                idle_until
            };
        }
    }
}

/// Why a connection was idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// No request under way for the header read timeout.
    NoRequest,
    /// The client took nothing of an answer for the send timeout.
    NotTaking,
}

impl Idle {
    pub fn describe(self) -> &'static str {
        match self {
            Idle::NoRequest => "closed a connection idle for the header read timeout",
            Idle::NotTaking => {
                "closed a connection whose client took nothing of its answer for the send timeout"
            }
        }
    }
}

/// A request being served: from its arrival until its answer has been produced to its end
/// (a streamed answer, an export, goes on being produced after its head), or it was
/// cancelled. Dropping it ends that.
pub struct Serving {
    activity: Arc<Activity>,
    answered: bool,
}

impl Serving {
    /// The service produced `response`. An answer with a body of known length is
    /// produced whole; a streamed one keeps the request under way until its body ends
    /// (or hyper drops it), so that the connection is not idle while the service, not
    /// its client, is the one taking time.
    pub fn answered(mut self, response: Response) -> Response {
        self.answered = true;
        let activity = &self.activity;
        activity.answered.fetch_add(1, Ordering::Relaxed);
        let since = activity.accepted.elapsed().as_micros() as u64;
        activity.last_answer_us.fetch_max(since, Ordering::Relaxed);
        let body = response.body();
        if body.is_end_stream() || body.size_hint().exact().is_some() {
            return response;
        }
        response.map(|body| {
            Body::new(Producing {
                body,
                serving: Some(self),
            })
        })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let activity = &self.activity;
        if !self.answered {
            let since = activity.accepted.elapsed().as_micros() as u64;
            activity.last_answer_us.fetch_max(since, Ordering::Relaxed);
        }
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A streamed answer's body, its request under way until its last frame.
struct Producing {
    body: Body,
    serving: Option<Serving>,
}

impl HttpBody for Producing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.serving = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream as hyper sees it, with hyper's own error answers replaced and the
/// answers it writes out confirmed.
pub struct ConnectionIo {
    inner: TokioIo<ClientStream>,
    activity: Arc<Activity>,
    /// The header lines every response carries (`X-Served-By` and the like), each ending
    /// in CRLF.
    headers: Arc<[u8]>,
    replacing: Option<Replacement>,
}

struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported to hyper as written.
    replaces: usize,
}

impl ConnectionIo {
    pub fn new(
        stream: TcpStream,
        activity: Arc<Activity>,
        handover: Handover,
        headers: Arc<[u8]>,
    ) -> Self {
        Self {
            inner: TokioIo::new(ClientStream {
                stream: Some(stream),
                handover,
                activity: activity.clone(),
            }),
            activity,
            headers,
            replacing: None,
        }
    }

    /// Whether `buf` begins a response head the service did not produce: hyper's answer
    /// to a request it could not parse. Interim (1xx) heads are hyper's to send.
    fn is_hypers_own_answer(&self, buf: &[u8]) -> Option<StatusCode> {
        if !buf.starts_with(b"HTTP/1.") || buf.get(9) == Some(&b'1') {
            return None;
        }
        let heads = self.activity.heads_written.fetch_add(1, Ordering::Relaxed) + 1;
        if heads <= self.activity.answered.load(Ordering::Relaxed) {
            return None;
        }
        let code = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
        let status = StatusCode::from_u16(code).ok()?;
        self.activity.refused.store(code, Ordering::Relaxed);
        Some(status)
    }
}

/// A complete answer with `status`, carrying the service's headers.
fn whole_answer(status: StatusCode, headers: &[u8]) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = format!("{reason}\n");
    let mut answer = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(headers);
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(body.as_bytes());
    answer
}

impl Read for ConnectionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Write for ConnectionIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(status) = self.is_hypers_own_answer(buf)
        {
            let bytes = whole_answer(status, &self.headers);
            self.replacing = Some(Replacement {
                bytes,
                written: 0,
                replaces: buf.len(),
            });
        }
        let this = &mut *self;
        let Some(replacement) = &mut this.replacing else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while replacement.written < replacement.bytes.len() {
            let rest = &replacement.bytes[replacement.written..];
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            replacement.written += n;
        }
        let replaced = replacement.replaces;
        this.replacing = None;
        Poll::Ready(Ok(replaced))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // One write per buffer, so that each response head starts a write of its own.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The client's TCP stream, telling the connection's `Handover` when a flush has written
/// everything out and when a read finds the client's end, and its `Activity` when bytes
/// come in and go out.
pub struct ClientStream {
    /// `None` only once dropped: the stream then goes to `Activity::closing`.
    stream: Option<TcpStream>,
    handover: Handover,
    activity: Arc<Activity>,
}

impl ClientStream {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

/// hyper is done with the connection: the socket is handed to the connection's task,
/// which closes it gracefully, rather than closed here.
impl Drop for ClientStream {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            *self
                .activity
                .closing
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(stream);
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        let before = buf.filled().len();
        let read = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(error) => return Poll::Ready(Err(error)),
        };
        if room > 0 && matches!(read, Poll::Ready(Ok(()))) {
            if buf.filled().len() == before {
                self.handover.peer_closed();
            } else {
                self.activity.bytes_arrived();
            }
        }
        read
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if this.handover.awaiting() {
            if peer_has_closed(stream) {
                this.handover.peer_closed();
            }
            this.handover.writing();
        }
        let written = Pin::new(stream).poll_write(cx, buf);
        match written {
            Poll::Ready(Ok(1..)) => this.activity.bytes_written(),
            Poll::Pending => this.activity.write_waits(),
            _ => {}
        }
        written
    }

    /// hyper flushes once it has written everything it buffered: the answers handed over
    /// before are out, to a client that had not closed its side when they were written,
    /// as far as a look at the socket before each write can tell. The socket itself is
    /// asked (a peek, which reads nothing), as the runtime may not have seen yet what
    /// arrived: a close that came while the process was paused, or while its workers
    /// were busy, is found by the peek and not by the runtime's readiness until its next
    /// poll of the sockets. A close that comes after the answers were written, however
    /// soon (a one-shot client reads its answer and leaves), does not put them in doubt.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(error) => return Poll::Ready(Err(error)),
        };
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.handover.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

/// Whether the client has closed its side of `stream` (its FIN, or a reset, has arrived),
/// asked of the socket itself: Tokio's readiness may not have seen it yet.
fn peer_has_closed(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(stream).peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle watch of `activity`, running.
    fn watch(
        activity: &Arc<Activity>,
        limit: Duration,
        send_limit: Duration,
    ) -> tokio::task::JoinHandle<Idle> {
        let activity = activity.clone();
        tokio::spawn(async move { activity.idle_for(limit, send_limit).await })
    }

    /// A connection whose request was read to the last byte, as hyper reads it (the
    /// runtime's readiness is cleared by the read that finds nothing more), with a
    /// counted visit's answer handed over; and its client.
    async fn a_visit_to_answer() -> (ClientStream, Handover, std::net::TcpStream) {
        use std::io::Write;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        server.readable().await.unwrap();
        assert!(server.try_read(&mut buf).unwrap() > 0);
        assert!(server.try_read(&mut buf).is_err());
        let handover = Handover::default();
        let stream = ClientStream {
            stream: Some(server),
            handover: handover.clone(),
            activity: Activity::new(),
        };
        handover.take(crate::delivery::Counted::new(1));
        (stream, handover, client)
    }

    /// Waits (in this thread, without letting the runtime poll its sockets) until the
    /// client's close has reached `stream`'s socket.
    fn close_arrives(stream: &ClientStream) {
        let socket = stream.stream.as_ref().unwrap();
        let arrived = (0..2000).any(|_| {
            peer_has_closed(socket) || {
                std::thread::sleep(Duration::from_millis(1));
                false
            }
        });
        assert!(arrived, "the close did not reach the socket");
    }

    /// Polls once, as hyper's connection task does, with a waker that is never woken.
    fn poll_once<T>(poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// A client's close that arrived after its request was read, before the runtime
    /// polled its sockets again (a paused process, busy workers), is found when the
    /// answer is written: the socket itself is asked, and the answer is in doubt. The
    /// runtime's readiness alone does not show it yet.
    #[tokio::test]
    async fn a_close_the_runtime_has_not_seen_yet_is_found_when_the_answer_is_written() {
        let (mut stream, handover, client) = a_visit_to_answer().await;
        client.shutdown(std::net::Shutdown::Both).unwrap();
        close_arrives(&stream);

        let in_doubt = crate::delivery::in_doubt_during(|| {
            let written = poll_once(|cx| Pin::new(&mut stream).poll_write(cx, b"answer"));
            assert!(matches!(written, Poll::Ready(Ok(6))), "{written:?}");
            let flushed = poll_once(|cx| Pin::new(&mut stream).poll_flush(cx));
            assert!(matches!(flushed, Poll::Ready(Ok(()))));
        });

        assert!(handover.found_peer_closed(), "the close was not found");
        assert!(!handover.awaiting(), "the answer was settled");
        assert_eq!(in_doubt, 1);
    }

    /// A one-shot client reads its answer and closes at once, before the connection's
    /// flush is done (it reads the client's end first): the answer was written before the
    /// close, and is delivered.
    #[tokio::test]
    async fn a_client_that_closes_once_its_answer_was_written_got_it() {
        use std::io::Read;

        let (mut stream, handover, mut client) = a_visit_to_answer().await;

        let in_doubt = crate::delivery::in_doubt_during(|| {
            let written = poll_once(|cx| Pin::new(&mut stream).poll_write(cx, b"answer"));
            assert!(matches!(written, Poll::Ready(Ok(6))), "{written:?}");
            let mut answer = [0u8; 6];
            client.read_exact(&mut answer).unwrap();
            client.shutdown(std::net::Shutdown::Both).unwrap();
            close_arrives(&stream);
            let mut buf = [0u8; 64];
            let mut buf = ReadBuf::new(&mut buf);
            // The runtime may not show the socket readable yet: the read finds the close
            // or waits, as it happens.
            let _ = poll_once(|cx| Pin::new(&mut stream).poll_read(cx, &mut buf));
            let flushed = poll_once(|cx| Pin::new(&mut stream).poll_flush(cx));
            assert!(matches!(flushed, Poll::Ready(Ok(()))));
        });

        assert!(!handover.awaiting(), "the answer was settled");
        assert_eq!(
            in_doubt, 0,
            "an answer its client read was reported in doubt"
        );
    }

    #[test]
    fn a_replaced_answer_is_a_whole_response_with_the_service_headers() {
        let answer = whole_answer(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            b"x-served-by: web.1\r\n",
        );
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("x-served-by: web.1\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "Request Header Fields Too Large\n");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_request_is_served() {
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        let serving = activity.serving();
        tokio::time::advance(Duration::from_secs(15)).await;
        let idle = watch(&activity, limit, 6 * limit);
        tokio::time::advance(Duration::from_secs(20)).await;
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "a request under way keeps it open");

        serving.answered(Response::default());
        tokio::time::advance(Duration::from_secs(9)).await;
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "idle for less than the limit");
        tokio::time::advance(Duration::from_secs(2)).await;
        idle.await.unwrap();
    }

    /// A streamed answer (an export) goes on being written after its request was
    /// answered: the connection is idle only once nothing has been written for the limit.
    #[tokio::test(start_paused = true)]
    async fn a_connection_writing_its_answer_is_not_idle() {
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        activity.serving().answered(Response::default());
        let idle = watch(&activity, limit, 6 * limit);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(6)).await;
            activity.bytes_written();
            tokio::task::yield_now().await;
            assert!(
                !idle.is_finished(),
                "closed while its answer was being written"
            );
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        tokio::task::yield_now().await;
        assert!(
            !idle.is_finished(),
            "nothing written for less than the limit"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(idle.await.unwrap(), Idle::NoRequest);
    }

    /// A streamed answer (an export) whose next part the service takes longer than the
    /// limit to produce keeps its connection: the service is the one taking time. Once
    /// its body has ended, the connection is idle.
    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_answer_is_still_being_produced_is_not_idle() {
        use http_body_util::BodyExt;

        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        let (produce, produced) = tokio::sync::oneshot::channel::<()>();
        let page = futures_util::stream::once(async move {
            produced.await.map(|()| Bytes::from_static(b"a page\n"))
        });
        let response = activity
            .serving()
            .answered(Response::new(Body::from_stream(page)));
        let idle = watch(&activity, limit, 6 * limit);
        let read = tokio::spawn(response.into_body().collect());
        tokio::time::advance(3 * limit).await;
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "closed while its answer was produced");

        produce.send(()).unwrap();
        read.await.unwrap().unwrap();
        tokio::time::advance(limit - Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "idle for less than the limit");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(idle.await.unwrap(), Idle::NoRequest);
    }

    /// A streamed answer still being produced whose client takes nothing of it is closed
    /// after the send limit all the same.
    #[tokio::test(start_paused = true)]
    async fn a_streamed_answer_its_client_does_not_take_has_the_send_limit() {
        let activity = Activity::new();
        let (limit, send_limit) = (Duration::from_secs(10), Duration::from_secs(60));
        let pages = futures_util::stream::pending::<Result<Bytes, io::Error>>();
        let _response = activity
            .serving()
            .answered(Response::new(Body::from_stream(pages)));
        activity.bytes_written();
        activity.write_waits();
        let idle = watch(&activity, limit, send_limit);
        tokio::time::advance(send_limit - Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "closed before the send limit");
        tokio::time::advance(Duration::from_secs(2)).await;
        let closed = tokio::time::timeout(limit, idle).await;
        assert_eq!(
            closed.expect("open after the send limit").unwrap(),
            Idle::NotTaking
        );
    }

    /// An answer whose client has not taken what was written (the socket full) keeps
    /// its connection for the send limit, counted from the last byte written.
    #[tokio::test(start_paused = true)]
    async fn a_connection_waiting_for_its_client_to_take_its_answer_has_the_send_limit() {
        let activity = Activity::new();
        let (limit, send_limit) = (Duration::from_secs(10), Duration::from_secs(60));
        activity.serving().answered(Response::default());
        activity.bytes_written();
        activity.write_waits();
        let idle = watch(&activity, limit, send_limit);
        tokio::time::advance(Duration::from_secs(59)).await;
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "closed before the send limit");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(idle.await.unwrap(), Idle::NotTaking);

        // Once the client takes it, the header read limit again.
        let activity = Activity::new();
        activity.write_waits();
        activity.bytes_written();
        let idle = watch(&activity, limit, send_limit);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(idle.await.unwrap(), Idle::NoRequest);

        // The client takes the rest while the watch waits on the send limit: idle from
        // then on, closed after the header read limit, not the send limit.
        let activity = Activity::new();
        activity.bytes_written();
        activity.write_waits();
        let idle = watch(&activity, limit, send_limit);
        tokio::time::advance(Duration::from_secs(11)).await;
        tokio::task::yield_now().await;
        activity.bytes_written();
        tokio::time::advance(Duration::from_secs(21)).await;
        tokio::task::yield_now().await;
        assert!(idle.is_finished(), "held for the send limit once idle");
        assert_eq!(idle.await.unwrap(), Idle::NoRequest);
    }
}
