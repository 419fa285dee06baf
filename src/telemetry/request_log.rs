//! The line per request (`request served`), written as a web server writes its access
//! log: no allocation per line, and no system call on the request path. Each worker
//! formats its lines into a buffer of its own (`RequestLog`) and hands the buffer over
//! whole, when it holds `CHUNK` bytes and at least every `FLUSH_EVERY` (so that a line
//! waits no longer), to a writer thread that writes each buffer with one system call.
//! The queue of buffers is bounded (`QUEUED_CHUNKS`, a megabyte or so): when the output
//! blocks (a slow log reader) and the queue is full, a buffer's lines are dropped and
//! counted (`dropped_lines`), never held. A worker hands over what it holds when it
//! stops, and the writer thread writes out everything queued before the process exits
//! (`Writer`, kept by the `LogGuard`).
//!
//! The lines are JSON with the keys, order and formats of the other lines
//! (json-subscriber's): level, target, timestamp, then the fields by name. In a terminal
//! the line is written through `tracing` with the rest, as readable text.

use std::{
    io::Write,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

/// A worker hands its buffer over once it holds this much (about a hundred lines).
const CHUNK: usize = 16 * 1024;

/// Buffers waiting for the writer thread at most.
const QUEUED_CHUNKS: usize = 64;

/// The longest a line waits in a worker's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// How long the process waits at exit for the writer thread to write what is queued.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// The most of a request's path its line holds (a path is as long as its request line
/// allows, 16 KiB).
pub const LOGGED_PATH: usize = 256;
/// The most of a request's method its line holds: a method is any token a client sends,
/// as long as its request line allows; the longest registered one has 17 letters.
pub const LOGGED_METHOD: usize = 32;

/// The target the line names: the module that logged it before it had a writer of its
/// own, so that filters and searches on it keep working. `tracing`'s filter is asked
/// with it (`enabled`).
pub const TARGET: &str = "stackdemo::routes::metrics";

enum Message {
    Lines(Vec<u8>),
    /// Write what came before, then the lines dropped in all (these and
    /// `dropped_elsewhere`), if any, and end.
    Stop {
        dropped_elsewhere: u64,
    },
}

static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The writer thread: writes out what is queued until `stop`.
pub(super) struct Writer {
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
}

impl Writer {
    /// Starts the writer thread on standard output, once per process.
    pub(super) fn start() -> std::io::Result<Self> {
        let (queue, queued) = sync_channel(QUEUED_CHUNKS);
        let (finished, done) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("stackdemo-request-log".into())
            .spawn(move || {
                let mut out = std::io::stdout();
                // Nothing better to do with a failed write than to go on.
                let mut write = |bytes: &[u8]| {
                    let _ = out.write_all(bytes).and_then(|()| out.flush());
                };
                while let Ok(message) = queued.recv() {
                    match message {
                        Message::Lines(lines) => write(&lines),
                        Message::Stop { dropped_elsewhere } => {
                            let dropped = dropped_lines() + dropped_elsewhere;
                            if dropped > 0 {
                                write(&dropped_line(dropped, SystemTime::now()));
                            }
                            break;
                        }
                    }
                }
                let _ = finished.send(());
            })?;
        let _ = QUEUE.set(queue);
        Ok(Self {
            thread: Some(thread),
            done,
        })
    }

    /// Writes out what is queued and then, if any lines were dropped, how many in all
    /// (`dropped_elsewhere` more than this writer's), as the last line. The workers have
    /// handed over their last lines. If the output is stuck, the process does not wait
    /// for it for ever: after `EXIT_WAIT`, what is queued is given up, and so is the last
    /// line, which would not get through either.
    pub(super) fn stop(mut self, dropped_elsewhere: u64) {
        let deadline = Instant::now() + EXIT_WAIT;
        if !send_within(Message::Stop { dropped_elsewhere }, EXIT_WAIT) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if self.done.recv_timeout(left).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// The last line when lines were dropped, as JSON in the format of the others.
fn dropped_line(dropped: u64, now: SystemTime) -> Vec<u8> {
    format!(
        "{{\"level\":\"WARN\",\"target\":\"stackdemo::telemetry\",\"timestamp\":\"{}\",\
         \"dropped\":{dropped},\"message\":\"{DROPPED_MESSAGE}\"}}\n",
        humantime::format_rfc3339_micros(now)
    )
    .into_bytes()
}

/// What the last line says when lines were dropped.
pub const DROPPED_MESSAGE: &str = "log lines dropped: the output could not keep up";

/// One request, as its line tells it.
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub replica: &'a str,
    pub status: u16,
    pub latency_us: u64,
}

/// A worker's buffer of lines.
#[derive(Default)]
pub struct RequestLog {
    buffer: Mutex<Buffer>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    lines: u64,
}

impl RequestLog {
    /// A buffer for one worker, when the lines go to the writer thread (JSON logs);
    /// `None` when they go through `tracing`.
    pub fn for_worker() -> Option<Self> {
        QUEUE.get().map(|_| Self::default())
    }

    /// Adds `line`, handing the buffer over when it is full.
    pub fn record(&self, line: &RequestLine<'_>) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        line.write_json(&mut buffer.bytes, SystemTime::now());
        buffer.lines += 1;
        if buffer.bytes.len() >= CHUNK {
            hand_over(&mut buffer);
        }
    }

    /// Hands over what the buffer holds (every `FLUSH_EVERY`).
    pub fn flush(&self) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.lines > 0 {
            hand_over(&mut buffer);
        }
    }

    /// Hands over the last lines when the worker stops, waiting up to `EXIT_WAIT` for
    /// room in the queue.
    pub fn flush_at_exit(&self) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.lines > 0 {
            let lines = std::mem::take(&mut buffer.bytes);
            let count = std::mem::take(&mut buffer.lines);
            if !send_within(Message::Lines(lines), EXIT_WAIT) {
                DROPPED.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
}

fn hand_over(buffer: &mut Buffer) {
    let lines = std::mem::replace(&mut buffer.bytes, Vec::with_capacity(CHUNK + 1024));
    let count = std::mem::take(&mut buffer.lines);
    let sent = QUEUE
        .get()
        .is_some_and(|queue| queue.try_send(Message::Lines(lines)).is_ok());
    if !sent {
        DROPPED.fetch_add(count, Ordering::Relaxed);
    }
}

/// Queues `message`, waiting up to `limit` for room; whether it was queued.
fn send_within(mut message: Message, limit: Duration) -> bool {
    let Some(queue) = QUEUE.get() else {
        return false;
    };
    let deadline = Instant::now() + limit;
    loop {
        match queue.try_send(message) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                message = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

impl RequestLine<'_> {
    /// Appends the line, as JSON ending in a newline, at `now`.
    fn write_json(&self, out: &mut Vec<u8>, now: SystemTime) {
        out.extend_from_slice(b"{\"level\":\"INFO\",\"target\":\"");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b"\",\"timestamp\":\"");
        let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
        let _ = write!(out, "\",\"latency_us\":{}", self.latency_us);
        out.extend_from_slice(b",\"message\":\"request served\",\"method\":\"");
        let method = LoggedPath::method(self.method);
        escaped(out, method.kept);
        out.extend_from_slice(method.marker().as_bytes());
        out.extend_from_slice(b"\",\"path\":\"");
        let path = LoggedPath::of(self.path);
        escaped(out, path.kept);
        out.extend_from_slice(path.marker().as_bytes());
        out.extend_from_slice(b"\",\"replica\":\"");
        escaped(out, self.replica);
        out.extend_from_slice(b"\",\"route\":\"");
        escaped(out, self.route);
        let _ = writeln!(out, "\",\"status\":{}}}", self.status);
    }
}

/// A path (or a method) as logged: at most `LOGGED_PATH` (`LOGGED_METHOD`) bytes of it,
/// cut on a character's boundary, and `…` after it when it was cut.
pub struct LoggedPath<'a> {
    pub kept: &'a str,
    pub cut: bool,
}

impl<'a> LoggedPath<'a> {
    /// The marker after a path that was cut.
    const CUT: &'static str = "…";

    pub fn of(path: &'a str) -> Self {
        Self::within(path, LOGGED_PATH)
    }

    pub fn method(method: &'a str) -> Self {
        Self::within(method, LOGGED_METHOD)
    }

    fn within(text: &'a str, limit: usize) -> Self {
        if text.len() <= limit {
            return Self {
                kept: text,
                cut: false,
            };
        }
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            kept: &text[..end],
            cut: true,
        }
    }

    fn marker(&self) -> &'static str {
        if self.cut { Self::CUT } else { "" }
    }
}

impl std::fmt::Display for LoggedPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.kept, self.marker())
    }
}

/// Appends `text` as the inside of a JSON string.
fn escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str) -> RequestLine<'_> {
        RequestLine {
            method: "GET",
            path,
            route: "/c/{*name}",
            replica: "web-1",
            status: 200,
            latency_us: 417,
        }
    }

    fn raw(line: &RequestLine<'_>) -> String {
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_093_069_123_456);
        line.write_json(&mut out, at);
        String::from_utf8(out).expect("UTF-8")
    }

    fn written(line: &RequestLine<'_>) -> serde_json::Map<String, serde_json::Value> {
        let out = raw(line);
        assert!(out.ends_with('\n'), "one line");
        assert_eq!(out.matches('\n').count(), 1, "one line");
        serde_json::from_str(&out).expect("the line is JSON")
    }

    #[test]
    fn a_line_has_the_fields_and_order_of_the_other_lines() {
        let fields = written(&line("/c/home"));
        let text = raw(&line("/c/home"));
        let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        keys.sort_by_key(|key| text.find(&format!("\"{key}\":")));
        assert_eq!(
            keys,
            [
                "level",
                "target",
                "timestamp",
                "latency_us",
                "message",
                "method",
                "path",
                "replica",
                "route",
                "status"
            ]
        );
        assert_eq!(fields["level"], "INFO");
        assert_eq!(fields["timestamp"], "2026-12-01T02:44:29.123456Z");
        assert_eq!(fields["message"], "request served");
        assert_eq!(fields["path"], "/c/home");
        assert_eq!(fields["route"], "/c/{*name}");
        assert_eq!(fields["replica"], "web-1");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["latency_us"], 417);
    }

    #[test]
    fn any_text_in_a_field_stays_inside_its_string() {
        for (i, text) in [
            "/\"},\"status\":500,\"x\":\"",
            "/back\\slash\\",
            "/a\nb\r\tc\u{1}\u{1f}\u{7f}",
            "/é/名前/🙂",
            "",
        ]
        .into_iter()
        .enumerate()
        {
            let mut line = line(text);
            let method = format!("M{i}\"\\");
            line.method = &method;
            line.replica = text;
            let fields = written(&line);
            assert_eq!(fields["path"], text);
            assert_eq!(fields["replica"], text);
            assert_eq!(fields["method"], method.as_str());
            assert_eq!(fields["status"], 200, "{text:?}");
        }
    }

    #[test]
    fn a_long_path_is_cut_on_a_character_boundary_and_marked() {
        let long = format!("/{}", "é".repeat(300));
        let fields = written(&line(&long));
        let logged = fields["path"].as_str().unwrap();
        assert!(logged.ends_with('…'));
        let kept = logged.trim_end_matches('…');
        assert!(kept.len() <= LOGGED_PATH && kept.len() > LOGGED_PATH - 2);
        assert!(long.starts_with(kept));
        assert_eq!(written(&line("/short"))["path"], "/short");
    }

    #[test]
    fn a_long_method_is_cut_and_marked() {
        let method = "M".repeat(16_000);
        let long = RequestLine {
            method: &method,
            ..line("/")
        };
        let fields = written(&long);
        assert_eq!(fields["method"], format!("{}…", "M".repeat(LOGGED_METHOD)));
        assert_eq!(written(&line("/"))["method"], "GET");
    }
}
