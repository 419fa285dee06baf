//! How many visits one client may count (`--rate-limit`): governor's GCRA limiter keyed by
//! client, which lets a client count `visits` at once and then one every `per / visits`.
//!
//! A client is an IPv4 address or an IPv6 /64 (one host's usual share of addresses), so
//! a client cannot pose as many by changing the low bits. The clients remembered are
//! bounded: every second the ones back at a full allowance are forgotten, and should
//! more than `MAX_CLIENTS` remain (a flood of addresses), all are forgotten: each then
//! starts again from a full allowance, which costs accuracy, never memory.

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

use crate::config::RateLimit;

/// Clients remembered at most (each about a hundred bytes).
pub const MAX_CLIENTS: usize = 100_000;

pub struct RateLimiter {
    quota: Quota,
    clock: DefaultClock,
    clients: Mutex<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let visits = NonZeroU32::new(limit.visits).unwrap_or(NonZeroU32::MIN);
        let period = (limit.per / visits.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("a period above zero")
            .allow_burst(visits);
        Self {
            quota,
            clock: DefaultClock::default(),
            clients: Mutex::new(Arc::new(DefaultKeyedRateLimiter::keyed(quota))),
        }
    }

    /// Takes one visit from `address`'s allowance, or says how long until it may count
    /// again.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let clients = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        clients
            .check_key(&client(address))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients back at a full allowance, and everyone past `MAX_CLIENTS`.
    pub fn upkeep(&self) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain_recent();
        if clients.len() > MAX_CLIENTS {
            *clients = Arc::new(DefaultKeyedRateLimiter::keyed(self.quota));
        } else {
            clients.shrink_to_fit();
        }
    }

    /// Clients remembered now.
    pub fn clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The client an address belongs to: itself (IPv4), or its /64 (IPv6).
fn client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(visits: u32, per: Duration) -> RateLimiter {
        RateLimiter::new(RateLimit { visits, per })
    }

    #[test]
    fn a_client_counts_its_allowance_then_waits_and_others_are_not_held_up() {
        let limiter = limit(3, Duration::from_secs(60));
        let one: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();

        for _ in 0..3 {
            assert_eq!(limiter.check(one), Ok(()));
        }
        let wait = limiter.check(one).unwrap_err();

        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(limiter.check(other), Ok(()));
    }

    #[test]
    fn an_ipv6_host_is_one_client_across_its_slash_64() {
        let limiter = limit(1, Duration::from_secs(60));
        assert_eq!(limiter.check("2001:db8:1:2::1".parse().unwrap()), Ok(()));
        assert!(
            limiter
                .check("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_err()
        );
        assert_eq!(limiter.check("2001:db8:1:3::1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn a_flood_of_addresses_is_forgotten_rather_than_kept() {
        let limiter = limit(1, Duration::from_secs(3600));
        for n in 0..(MAX_CLIENTS as u32 + 10) {
            let _ = limiter.check(IpAddr::from(n.to_be_bytes()));
        }
        assert!(limiter.clients() > MAX_CLIENTS);

        limiter.upkeep();

        assert_eq!(limiter.clients(), 0);
    }
}
