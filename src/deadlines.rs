//! Every time bound the service keeps, derived once from the settings.
//!
//! "A visit answered with an error was not counted" rests on this chain, from the moment
//! a visit's request head has arrived:
//!
//! ```text
//! body read    ≤ request − visit        a visit whose body ends later is refused uncounted
//! visit        = queue wait + write     joining the batch queue → the answer
//! queue wait   ≤ store                  a visit that waited longer for its batch is refused,
//!                                       unsent (the batcher checks before each write)
//! write        ≤ store                  one store write, all its attempts included
//! arrival      ≤ half of what is left   of the write's budget at each attempt: Redis refuses
//!                                       a write that reaches it later, so the reply of an
//!                                       applied write has as long to come back as it had
//!                                       to get there
//! request      > visit                  checked here, at start-up
//! ```
//!
//! So a visit is answered by the request timeout, and its write, if applied, is applied
//! while someone still waits for the answer. Two things take longer: an embedded commit
//! that has begun is waited for, however slow the disk (it cannot be called back), and a
//! Redis reply that does not come back in time leaves the write *in doubt*, counted in
//! `stackdemo_visits_in_doubt_total`. The visit route is not under the request timeout
//! layer, which would drop a visit whose write is under way; it keeps to the chain above
//! by itself.
//!
//! At shutdown, connections get `shutdown` to finish, and those closing gracefully
//! `LINGER_QUIET` more; the batcher then has `visit` to answer what it holds, which is
//! the longest a queued visit can take; the replica's heartbeat is removed within
//! `depart`. So the process exits within `exit` of the signal.
//!
//! A call that needs a Redis connection while another call is opening one waits for that
//! attempt at most `CONNECT_WAIT` from its start: an attempt that hangs then costs one
//! visit the store timeout, and the others a prompt 503.

use std::time::Duration;

use tokio::time::Instant;

/// The most that removing the heartbeat at exit may take.
const DEPART_MAX: Duration = Duration::from_millis(500);

/// The least store timeout that is accepted: below it a Redis round trip on a busy host,
/// or one fsync, would not fit.
pub const MIN_STORE: Duration = Duration::from_millis(10);
/// The least header read timeout: below it ordinary clients on slow links are cut off.
pub const MIN_HEADER_READ: Duration = Duration::from_millis(100);
/// Reads behind `/api/stats` give up after this long at most, so that a page's poll
/// answers within a second even while the store hangs.
const STATS_READ_MAX: Duration = Duration::from_millis(500);

/// The time bounds of the service. Made by `Deadlines::new`, which checks the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A connection with no request being served is closed after this long: silent
    /// clients, slow headers and idle keep-alive connections alike.
    pub header_read: Duration,
    /// A connection whose client has taken nothing of an answer being written for this
    /// long is closed. Longer than `header_read` as a rule: a client reading slowly
    /// through a large receive buffer shows the service no progress until a sixteenth of
    /// that buffer is free (TCP's window opens in steps), several seconds at 100 KB/s.
    pub send: Duration,
    /// A request is answered by then (see the chain for visits).
    pub request: Duration,
    /// One store call: a write with its retries, a readiness ping, a stats read.
    pub store: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown: Duration,
}

/// Which bound a set of settings breaks; `config` names the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineError {
    StoreTooShort,
    HeaderReadTooShort,
    SendTooShort,
    RequestNotAboveVisit,
    ShutdownZero,
}

impl Deadlines {
    /// How long a call waits for another call's connection attempt before giving up on
    /// it. A healthy server is connected to in a few milliseconds.
    pub const CONNECT_WAIT: Duration = Duration::from_millis(100);
    /// After a failed connection attempt, calls fail at once for this long before the
    /// next attempt; the delay doubles with each failure in a row, up to
    /// `RECONNECT_BACKOFF_MAX` (`store::backoff`, which also spreads it by jitter).
    pub const RECONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(50);
    pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
    /// How long one sentinel may take to answer a lookup before it is left out of it.
    pub const SENTINEL_ANSWER: Duration = Duration::from_millis(500);
    /// How often the sentinels are asked for the primary again, announcements or not.
    pub const SENTINEL_REFRESH: Duration = Duration::from_secs(1);
    /// A replica the primary has not heard from for this long (its `INFO replication`
    /// `lag`, in whole seconds; a replica answers every second) is taken as unable to
    /// confirm writes: one the sentinels do not count is then not waited for
    /// (`store::redis::failover`), so that a hung replica costs no more than until the
    /// sentinels see it down.
    pub const REPLICA_SILENT: Duration = Duration::from_secs(2);
    /// A connection the service ends is closed once the client has sent nothing for this
    /// long (what it sends until then is read and dropped), and at most the header read
    /// timeout after it was ended (`server::connection::close_gracefully`).
    pub const LINGER_QUIET: Duration = Duration::from_millis(500);

    pub fn new(
        header_read: Duration,
        send: Duration,
        request: Duration,
        store: Duration,
        shutdown: Duration,
    ) -> Result<Self, DeadlineError> {
        let deadlines = Self {
            header_read,
            send,
            request,
            store,
            shutdown,
        };
        if store < MIN_STORE {
            return Err(DeadlineError::StoreTooShort);
        }
        if header_read < MIN_HEADER_READ {
            return Err(DeadlineError::HeaderReadTooShort);
        }
        if send < MIN_HEADER_READ {
            return Err(DeadlineError::SendTooShort);
        }
        if request <= deadlines.visit() {
            return Err(DeadlineError::RequestNotAboveVisit);
        }
        if shutdown.is_zero() {
            return Err(DeadlineError::ShutdownZero);
        }
        Ok(deadlines)
    }

    /// How long a visit may wait in the queue for its batch's write to start.
    pub fn queue_wait(&self) -> Duration {
        self.store
    }

    /// From joining the queue to the answer, at most.
    pub fn visit(&self) -> Duration {
        self.queue_wait() + self.store
    }

    /// How long past its write's deadline a visit waits for an embedded commit already
    /// under way (a disk that stalls), for it still to be answered within the request
    /// timeout; then it is answered as in doubt.
    pub fn commit_grace(&self) -> Duration {
        self.request.saturating_sub(self.visit())
    }

    /// The latest a visit's body may end, after its head arrived at `start`, for the
    /// visit still to be answered within the request timeout.
    pub fn body_read_by(&self, start: Instant) -> Instant {
        start + (self.request - self.visit())
    }

    /// How long the batcher gets at shutdown to answer the visits it holds.
    pub fn drain(&self) -> Duration {
        self.visit()
    }

    /// How long removing this replica's heartbeat may take at exit: a courtesy to
    /// `/api/stats` (the heartbeat also expires), which a hung store must not hold up.
    pub fn depart(&self) -> Duration {
        self.store.min(DEPART_MAX)
    }

    /// The longest from a stop signal to the process's exit.
    pub fn exit(&self) -> Duration {
        self.shutdown + Self::LINGER_QUIET + self.drain() + self.depart()
    }

    /// Bound on one read for `/api/stats`.
    pub fn stats_read(&self) -> Duration {
        self.store.min(STATS_READ_MAX)
    }

    /// The time by which an attempt of a write sent at `now` must reach Redis, for a
    /// write that must be answered by `answer_by`: halfway.
    pub fn arrival_by(now: Instant, answer_by: Instant) -> Instant {
        now + answer_by.saturating_duration_since(now) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_defaults_keep_the_chain() {
        let d = Deadlines::new(ms(10_000), ms(60_000), ms(5_000), ms(400), ms(10_000)).unwrap();
        assert_eq!(d.visit(), ms(800));
        let start = Instant::now();
        assert_eq!(d.body_read_by(start), start + ms(4_200));
        assert_eq!(d.stats_read(), ms(400));
    }

    #[test]
    fn a_request_timeout_that_does_not_leave_room_for_a_visit_is_refused() {
        assert_eq!(
            Deadlines::new(ms(10_000), ms(60_000), ms(800), ms(400), ms(1)),
            Err(DeadlineError::RequestNotAboveVisit)
        );
        assert!(Deadlines::new(ms(10_000), ms(60_000), ms(801), ms(400), ms(1)).is_ok());
    }

    #[test]
    fn bounds_that_would_break_the_service_are_refused() {
        assert_eq!(
            Deadlines::new(ms(10_000), ms(60_000), ms(5_000), ms(0), ms(1)),
            Err(DeadlineError::StoreTooShort)
        );
        assert_eq!(
            Deadlines::new(ms(0), ms(60_000), ms(5_000), ms(400), ms(1)),
            Err(DeadlineError::HeaderReadTooShort)
        );
        assert_eq!(
            Deadlines::new(ms(10_000), ms(0), ms(5_000), ms(400), ms(1)),
            Err(DeadlineError::SendTooShort)
        );
        assert_eq!(
            Deadlines::new(ms(10_000), ms(60_000), ms(5_000), ms(400), ms(0)),
            Err(DeadlineError::ShutdownZero)
        );
    }

    #[test]
    fn a_write_must_arrive_halfway_to_its_answer() {
        let now = Instant::now();
        assert_eq!(Deadlines::arrival_by(now, now + ms(400)), now + ms(200));
        assert_eq!(Deadlines::arrival_by(now + ms(500), now), now + ms(500));
    }
}
