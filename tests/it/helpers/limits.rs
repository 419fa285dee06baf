//! Every time limit of the tests, in one place.
//!
//! A limit is what the settings under test imply on an idle machine (a store timeout, a
//! reconnect backoff, a sentinel's failure detection), times one slowness factor for a
//! loaded one: `STACKDEMO_TEST_SLOWNESS`, 3 unless set. A machine slower than that (a
//! debugger, an emulator) raises it; nothing else in the tests needs to change.

use std::time::Duration;

use stackdemo::{
    cli::{Cli, Command},
    deadlines::Deadlines,
};

/// How much slower than an idle machine the tests allow this one to be.
pub fn slowness() -> u32 {
    std::env::var("STACKDEMO_TEST_SLOWNESS")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&factor| factor >= 1)
        .unwrap_or(3)
}

/// The time allowed for something that takes `expected` on an idle machine.
pub fn allowed(expected: Duration) -> Duration {
    expected * slowness()
}

/// The service's time bounds with the settings `args` (flags of `serve`), as a service
/// started with them keeps them.
pub fn deadlines(args: &[&str]) -> Deadlines {
    let argv = std::iter::once("stackdemo").chain(args.iter().copied());
    let Command::Serve(settings) = Cli::parse_args(argv).expect("valid settings").command else {
        unreachable!("options alone are serve's");
    };
    settings
        .check()
        .expect("settings that pass the checks")
        .deadlines
}

/// A local process (redis-server, a sentinel, the service) answering after it was
/// started: tens of milliseconds on an idle machine.
pub const PROCESS_START: Duration = Duration::from_secs(2);

/// The least rate at which a service on loopback counts visits under the tests' load on
/// an idle machine (it counts thousands a second): waiting for `n` visits takes at most
/// `n` over this.
pub const VISITS_PER_SECOND: u32 = 200;

/// How long `n` visits under load may take.
pub fn for_visits(n: u32) -> Duration {
    allowed(Duration::from_secs(1) * n / VISITS_PER_SECOND)
}

/// How long a service may take to count again after its Redis returns: its store
/// timeout twice (a write cut off, then one on a fresh connection) and the longest
/// reconnect backoff.
pub fn redis_return(deadlines: &Deadlines) -> Duration {
    deadlines.store * 2 + Deadlines::RECONNECT_BACKOFF_MAX
}
