//! `stackdemo healthcheck`: the container HEALTHCHECK for images without curl.
//!
//! Healthy means: the service answers `/readyz` in time, and it is ready, or it has been
//! ready before and only its store is out of reach now. Swarm restarts unhealthy tasks;
//! restarting every replica because Redis is gone would not bring Redis back and would
//! make the return slower, so a store outage leaves a replica healthy but not ready (the
//! edge routes around it). A replica that has never been ready is unhealthy, so a rolling
//! update to a version that cannot count rolls back.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use clap::Args;

use crate::verify::longer_than_zero;

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The service's listen address (0.0.0.0 is probed on 127.0.0.1).
    #[arg(long, env = "STACKDEMO_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// How long the check may take in all.
    #[arg(long, default_value = "2s", value_parser = longer_than_zero)]
    pub timeout: Duration,
}

/// The address to probe: a wildcard listen address is reached on loopback.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs `/readyz`. `Ok` with a note when healthy, `Err` with the reason when not.
pub async fn check(args: &HealthcheckArgs) -> Result<&'static str, String> {
    let url = format!("http://{}/readyz", probe_address(args.listen));
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    // The service's own words, read whole: a 200 from something else on the port, or an
    // answer cut short or too large, is not a ready service.
    let body = match crate::verify::read_bounded(response, crate::verify::MAX_ANSWER).await {
        Ok(body) => body,
        Err(error) => return Err(format!("{url}: {status}, {}", error.reason())),
    };
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status == reqwest::StatusCode::OK && readiness["status"] == "ready" {
        Ok("ready")
    } else if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && readiness["was_ready"] == true {
        Ok("not ready, but ready before: a store outage, which a restart would not mend")
    } else {
        Err(format!("{url}: {status} {}", shown(&body)))
    }
}

/// An answer as the reason shows it: its first line, at most 200 characters.
fn shown(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:8000".parse().unwrap()),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:80".parse().unwrap()),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            probe_address("10.1.2.3:9".parse().unwrap()),
            "10.1.2.3:9".parse().unwrap()
        );
    }
}
