//! Reconnect backoff for the Redis store. After Redis is found unreachable, calls fail at
//! once with the same reason for a short, growing delay (50 ms up to 500 ms) instead of
//! each trying to connect; the first call after the delay tries again. So a dead Redis
//! gets a few connection attempts per second, clients get an immediate 503 that names the
//! cause, and service resumes within half a second of Redis coming back.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{StoreError, StoreErrorKind};

const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_millis(500);

pub struct Backoff {
    state: Mutex<State>,
}

struct State {
    closed_until: Option<Instant>,
    delay: Duration,
    last: Option<StoreError>,
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                closed_until: None,
                delay: FIRST_DELAY,
                last: None,
            }),
        }
    }

    /// The error to answer with instead of trying, while the delay runs.
    pub fn check(&self) -> Result<(), StoreError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (&state.closed_until, &state.last) {
            (Some(until), Some(last)) if Instant::now() < *until => Err(last.clone()),
            _ => Ok(()),
        }
    }

    /// Records how a call ended.
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Err(error)
                if matches!(
                    error.kind(),
                    StoreErrorKind::Unreachable | StoreErrorKind::Auth
                ) =>
            {
                state.closed_until = Some(Instant::now() + state.delay);
                state.delay = (state.delay * 2).min(MAX_DELAY);
                state.last = Some(error.clone());
            }
            Err(_) => {}
            Ok(_) => {
                state.closed_until = None;
                state.delay = FIRST_DELAY;
                state.last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_store_fails_fast_until_the_delay_passes() {
        let backoff = Backoff::new();
        assert!(backoff.check().is_ok());

        backoff.record::<()>(&Err(StoreError::new(
            StoreErrorKind::Unreachable,
            "refused",
        )));
        let error = backoff.check().unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Unreachable);

        std::thread::sleep(FIRST_DELAY + Duration::from_millis(10));
        assert!(
            backoff.check().is_ok(),
            "a retry is allowed after the delay"
        );
    }

    #[test]
    fn success_resets_the_delay() {
        let backoff = Backoff::new();
        backoff.record::<()>(&Err(StoreError::new(
            StoreErrorKind::Unreachable,
            "refused",
        )));
        backoff.record(&Ok(()));
        assert!(backoff.check().is_ok());
    }

    #[test]
    fn other_errors_do_not_hold_calls_back() {
        let backoff = Backoff::new();
        backoff.record::<()>(&Err(StoreError::new(StoreErrorKind::OutOfMemory, "OOM")));
        assert!(backoff.check().is_ok());
    }
}
