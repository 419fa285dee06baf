//! A client that hangs up: it sends a visit on a connection of its own and closes it at
//! once, with a reset or a plain close, reading nothing, as a browser tab closed or a
//! proxy that gave up does.
//!
//! Whether the service could have answered before the client left is a matter of time:
//! a visit takes the service well over `LEAVE_GAP` from the moment its request has
//! arrived (reading, counting, a store round trip, writing). A client that closed within
//! that gap of sending its request left before any answer, and every such visit the
//! store counted must be reported in doubt. One that took longer (its thread set aside
//! between the two calls) may have had its answer written to it and dropped unread; it is
//! told apart, as `Left::Late`.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// Less than any visit takes from its request to its answer: a client gone within this
/// of sending its request is gone before the answer.
pub const LEAVE_GAP: Duration = Duration::from_micros(10);

/// When the client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Before the service could have answered.
    Before,
    /// Perhaps after its answer was written.
    Late,
    /// It could not even send its request (nothing listens).
    Unsent,
}

/// Sends one visit to `address` and hangs up at once: with a reset when `reset`, else
/// with a plain close. Blocking: run it off the test's runtime.
pub fn hang_up(address: SocketAddr, reset: bool) -> Left {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return Left::Unsent;
    };
    if reset {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return Left::Unsent;
    }
    // The request has arrived at the service (loopback delivers it within the write).
    let sent = Instant::now();
    drop(stream);
    if sent.elapsed() < LEAVE_GAP {
        Left::Before
    } else {
        Left::Late
    }
}
