//! Who a visitor is, for unique counts, without keeping who it was.
//!
//! A visitor is its client address and user agent, hashed (`raw`); before it reaches a
//! store, the hash is hashed again with a salt of the day (`salted`), which the store
//! keeps only for that day (Redis: a key that expires at the end of the day; embedded:
//! only today's is kept). What a store keeps is a HyperLogLog sketch of the salted
//! hashes: neither addresses nor hashes, and nothing that links one day's visitors to
//! another's once the day's salt is gone.
//!
//! The client address is the connection's peer, or, when the peer is a trusted proxy
//! (the edge), the one it says it forwarded for: the rightmost address in
//! `X-Forwarded-For` that is not itself a trusted proxy. `X-Forwarded-For` from anyone
//! else is ignored, so clients cannot pose as many visitors.

use std::{
    hash::Hasher,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;
use siphasher::sip::SipHasher13;

/// The key of the first hash, fixed: it only spreads the input; the day's salt is the
/// secret.
const RAW_KEY: (u64, u64) = (0x5354_4143_4b44_454d, 0x4f5f_5649_5349_544f);

/// The client's address and user agent, hashed, before the day's salt.
pub fn raw(address: IpAddr, user_agent: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(RAW_KEY.0, RAW_KEY.1);
    match address {
        IpAddr::V4(v4) => hasher.write(&v4.octets()),
        IpAddr::V6(v6) => hasher.write(&v6.octets()),
    }
    hasher.write_u8(0xff);
    hasher.write(user_agent);
    hasher.finish()
}

/// A visitor's hash with the day's salt, as stores keep it (in a sketch).
pub fn salted(salt: &[u8; 16], raw: u64) -> u64 {
    let (k0, k1) = salt.split_at(8);
    let key = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("8 bytes"));
    let mut hasher = SipHasher13::new_with_keys(key(k0), key(k1));
    hasher.write_u64(raw);
    hasher.finish()
}

/// The salt a store holds, as bytes of any kind (an operator may have written it): the
/// same bytes give the same salt.
pub fn salt_from(held: &[u8]) -> [u8; 16] {
    let half = |key: u64| {
        let mut hasher = SipHasher13::new_with_keys(RAW_KEY.0 ^ key, RAW_KEY.1);
        hasher.write(held);
        hasher.finish().to_le_bytes()
    };
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&half(1));
    salt[8..].copy_from_slice(&half(2));
    salt
}

/// A new day's salt.
pub fn new_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    salt[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    salt
}

/// The proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated addresses or networks: `10.0.9.0/24,127.0.0.1`. IPv4 written as
    /// IPv6 (`::ffff:10.0.9.4`, `::ffff:10.0.9.0/120`) is taken as the IPv4 it is, as
    /// peers are.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let network = part
                .parse::<IpNet>()
                .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{part}' is not an address or a network (10.0.0.0/8)"))?;
            networks.push(as_ipv4(network));
        }
        Ok(Self(networks))
    }
}

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client's address: the peer's, or, from a trusted proxy, the rightmost address
    /// of `forwarded_for` (the values of `X-Forwarded-For`, in order) that is not a
    /// trusted proxy. IPv4 addresses written as IPv6 (`::ffff:10.0.9.4`, as a dual-stack
    /// socket reports IPv4 peers) are taken as the IPv4 addresses they are. The walk stops
    /// at the first entry that is not an address (a byte that is not text included), so
    /// that what a client wrote to the left of its proxy's entry never replaces it.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&[u8]]) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded_for
            .iter()
            .rev()
            .flat_map(|value| value.rsplit(|&byte| byte == b','))
            // Nothing between two commas, or after the last: no entry.
            .filter(|entry| !entry.trim_ascii().is_empty())
        {
            match std::str::from_utf8(entry)
                .ok()
                .and_then(|entry| forwarded_address(entry.trim()))
            {
                Some(address) => {
                    client = address;
                    if !self.trusts(address) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// An IPv6 network within the IPv4-mapped range (`::ffff:0:0/96`) as the IPv4 network it
/// is; any other as it is.
fn as_ipv4(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .addr()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(network, IpNet::V4),
        other => other,
    }
}

/// An entry of `X-Forwarded-For`: an address, or one with a port as some proxies write it
/// (`203.0.113.7:41234`, `[2001:db8::7]:41234`, `[2001:db8::7]`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|address: IpAddr| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The client by `trusted`, for header values given as text.
    fn client_of(trusted: &TrustedProxies, peer: IpAddr, values: &[&str]) -> IpAddr {
        let values: Vec<&[u8]> = values.iter().map(|value| value.as_bytes()).collect();
        trusted.client(peer, &values)
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let trusted: TrustedProxies = "10.0.9.0/24, 127.0.0.1".parse().unwrap();
        let from_edge = client_of(&trusted, ip("10.0.9.4"), &["203.0.113.7"]);
        let from_client = client_of(&trusted, ip("198.51.100.2"), &["203.0.113.7"]);
        let through_two = client_of(&trusted, ip("127.0.0.1"), &["203.0.113.7, 10.0.9.5"]);
        let spoofed_left = client_of(&trusted, ip("10.0.9.4"), &["1.2.3.4", "203.0.113.7"]);
        let garbage = client_of(&trusted, ip("10.0.9.4"), &["not an address"]);

        assert_eq!(from_edge, ip("203.0.113.7"));
        assert_eq!(
            from_client,
            ip("198.51.100.2"),
            "a client's header is ignored"
        );
        assert_eq!(through_two, ip("203.0.113.7"));
        assert_eq!(
            spoofed_left,
            ip("203.0.113.7"),
            "the rightmost untrusted wins"
        );
        assert_eq!(garbage, ip("10.0.9.4"));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn proxies_written_as_ipv4_in_ipv6_are_the_ipv4_they_are() {
        for written in [
            "::ffff:10.0.9.4",
            "::ffff:10.0.9.0/120",
            "::ffff:a00:904/128",
        ] {
            let trusted: TrustedProxies = written.parse().unwrap();
            for peer in ["10.0.9.4", "::ffff:10.0.9.4"] {
                assert_eq!(
                    client_of(&trusted, ip(peer), &["203.0.113.7"]),
                    ip("203.0.113.7"),
                    "{written} trusts {peer}"
                );
            }
            assert_eq!(
                client_of(&trusted, ip("10.0.8.1"), &["203.0.113.7"]),
                ip("10.0.8.1"),
                "{written} trusts no other peer"
            );
        }
    }

    #[test]
    fn empty_entries_of_x_forwarded_for_are_none() {
        let trusted: TrustedProxies = "10.0.9.0/24".parse().unwrap();
        assert_eq!(
            client_of(&trusted, ip("10.0.9.4"), &["198.51.100.1,"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_of(&trusted, ip("10.0.9.4"), &["198.51.100.1, ,10.0.9.5"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn forwarded_addresses_with_a_port_are_read_as_the_address() {
        let trusted: TrustedProxies = "10.0.9.0/24".parse().unwrap();
        let edge = ip("10.0.9.4");

        assert_eq!(
            client_of(&trusted, edge, &["203.0.113.7:41234"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_of(&trusted, edge, &["[2001:db8::7]:41234"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_of(&trusted, edge, &["[2001:db8::7]"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_of(&trusted, edge, &["203.0.113.7:41234, 10.0.9.5:80"]),
            ip("203.0.113.7"),
            "a trusted proxy with a port is passed over too"
        );
        assert_eq!(
            client_of(&trusted, edge, &["203.0.113.7:port"]),
            edge,
            "garbage stops the walk at the last trusted address"
        );
        assert_eq!(client_of(&trusted, edge, &["[203.0.113.7"]), edge);
    }

    #[test]
    fn ipv4_addresses_written_as_ipv6_are_the_ipv4_addresses() {
        let trusted: TrustedProxies = "127.0.0.1, 10.0.0.0/8".parse().unwrap();

        // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        assert_eq!(
            client_of(&trusted, ip("::ffff:127.0.0.1"), &["203.0.113.7"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_of(&trusted, ip("::ffff:198.51.100.2"), &["203.0.113.7"]),
            ip("198.51.100.2"),
            "an untrusted peer, as IPv4"
        );
        assert_eq!(
            client_of(&trusted, ip("127.0.0.1"), &["203.0.113.7, ::ffff:10.1.2.3"]),
            ip("203.0.113.7"),
            "a trusted hop written as IPv6 is passed over"
        );
        assert_eq!(
            client_of(&trusted, ip("127.0.0.1"), &["::ffff:203.0.113.7"]),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn bytes_that_are_not_text_stop_the_walk_only_where_they_are() {
        let trusted: TrustedProxies = "10.0.9.0/24".parse().unwrap();
        let edge = ip("10.0.9.4");
        // A proxy that appends to the client's own line: the client wrote the first entry.
        let line: &[u8] = b"\xff\xfe, 203.0.113.7";

        assert_eq!(trusted.client(edge, &[line]), ip("203.0.113.7"));
        assert_eq!(
            trusted.client(edge, &[b"203.0.113.9, \xff"]),
            edge,
            "the proxy's own entry unreadable: nothing to its left is believed"
        );
    }

    #[test]
    fn the_same_visitor_hashes_alike_within_a_day_and_apart_across_days() {
        let visitor = raw(ip("203.0.113.7"), b"Mozilla/5.0");
        let other = raw(ip("203.0.113.8"), b"Mozilla/5.0");
        let (today, tomorrow) = ([1u8; 16], [2u8; 16]);

        assert_eq!(salted(&today, visitor), salted(&today, visitor));
        assert_ne!(salted(&today, visitor), salted(&today, other));
        assert_ne!(salted(&today, visitor), salted(&tomorrow, visitor));
        assert_ne!(raw(ip("203.0.113.7"), b"curl"), visitor);
    }
}
