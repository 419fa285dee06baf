//! What `verify` measured, and the verdict.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    time::Duration,
};

use serde::Serialize;

/// One visit as the client saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub client: u64,
    pub latency: Duration,
    /// When the answer came, from the start of the run.
    pub finished: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Counted {
        count: i64,
        replica: Option<String>,
        version: Option<String>,
    },
    Failed(String),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency: Latency,
    pub per_replica: BTreeMap<String, u64>,
    pub per_version: BTreeMap<String, u64>,
    /// Counts that more than one successful response carried.
    pub duplicate_counts: u64,
    /// Successful responses that carried a count an earlier one had carried (fifty
    /// answers of one count are one duplicate count and 49 duplicate answers).
    pub duplicate_answers: u64,
    /// Responses whose count was not above the same client's previous one.
    pub out_of_order: u64,
    pub lowest_count: Option<i64>,
    pub highest_count: Option<i64>,
    /// The longest time in the run during which no visit succeeded (from the start to the
    /// first success, between two, or from the last to the end).
    pub longest_gap_ms: f64,
    /// Clients that stopped without reporting what they got (a panic): their visits are
    /// unknown, so the run fails.
    pub clients_failed: u64,
}

impl Report {
    pub fn from_samples(samples: Vec<Sample>, elapsed: Duration) -> Self {
        let mut report = Report {
            requests: samples.len() as u64,
            elapsed_s: elapsed.as_secs_f64(),
            ..Report::default()
        };
        let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latencies.sort_unstable();
        report.latency = Latency {
            p50_ms: percentile(&latencies, 0.50),
            p90_ms: percentile(&latencies, 0.90),
            p99_ms: percentile(&latencies, 0.99),
            max_ms: latencies.last().map_or(0.0, ms),
        };
        if elapsed > Duration::ZERO {
            report.requests_per_s = samples.len() as f64 / elapsed.as_secs_f64();
        }
        let mut seen: HashMap<i64, u32> = HashMap::new();
        let mut last_by_client: HashMap<u64, i64> = HashMap::new();
        // Samples of one client are in the order that client sent them.
        for sample in &samples {
            match &sample.outcome {
                Outcome::Failed(kind) => {
                    report.failed += 1;
                    *report.failures.entry(kind.clone()).or_default() += 1;
                }
                Outcome::Counted {
                    count,
                    replica,
                    version,
                } => {
                    report.succeeded += 1;
                    let name = replica.clone().unwrap_or_else(|| "(none)".into());
                    *report.per_replica.entry(name).or_default() += 1;
                    let version = version.clone().unwrap_or_else(|| "(none)".into());
                    *report.per_version.entry(version).or_default() += 1;
                    let times = seen.entry(*count).or_default();
                    *times += 1;
                    if *times > 1 {
                        report.duplicate_answers += 1;
                    }
                    if *times == 2 {
                        report.duplicate_counts += 1;
                    }
                    if let Some(previous) = last_by_client.insert(sample.client, *count)
                        && *count <= previous
                    {
                        report.out_of_order += 1;
                    }
                    report.lowest_count =
                        Some(report.lowest_count.map_or(*count, |l| l.min(*count)));
                    report.highest_count =
                        Some(report.highest_count.map_or(*count, |h| h.max(*count)));
                }
            }
        }
        let mut successes: Vec<Duration> = samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Counted { .. }))
            .map(|s| s.finished)
            .collect();
        successes.sort_unstable();
        let bounds = std::iter::once(Duration::ZERO)
            .chain(successes)
            .chain(std::iter::once(elapsed))
            .collect::<Vec<_>>();
        report.longest_gap_ms = bounds
            .windows(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .max()
            .map_or(0.0, |gap| ms(&gap));
        report
    }

    /// True when every visit succeeded and the counter's invariants held.
    pub fn passed(&self) -> bool {
        self.requests > 0
            && self.failed == 0
            && self.clients_failed == 0
            && self.duplicate_counts == 0
            && self.out_of_order == 0
    }
}

fn ms(d: &Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    ms(&sorted[rank - 1])
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "visits:     {} sent, {} succeeded, {} failed in {:.1} s ({:.0}/s)",
            self.requests, self.succeeded, self.failed, self.elapsed_s, self.requests_per_s
        )?;
        for (kind, n) in &self.failures {
            writeln!(f, "  failed:   {n} × {kind}")?;
        }
        let l = &self.latency;
        writeln!(
            f,
            "latency:    p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )?;
        writeln!(f, "replicas:   {}", self.per_replica.len())?;
        for (name, n) in &self.per_replica {
            writeln!(f, "  {name}: {n}")?;
        }
        writeln!(f, "versions:   {}", self.per_version.len())?;
        for (name, n) in &self.per_version {
            writeln!(f, "  {name}: {n}")?;
        }
        if let (Some(lo), Some(hi)) = (self.lowest_count, self.highest_count) {
            writeln!(f, "counts:     {lo} .. {hi}")?;
        }
        writeln!(
            f,
            "longest without a success: {:.1} s",
            self.longest_gap_ms / 1000.0
        )?;
        if self.clients_failed > 0 {
            writeln!(
                f,
                "clients lost: {} (stopped without reporting their visits)",
                self.clients_failed
            )?;
        }
        write!(f, "duplicates: {}", self.duplicate_counts)?;
        if self.duplicate_answers > 0 {
            write!(
                f,
                " counts, carried by {} answers more than once",
                self.duplicate_answers
            )?;
        }
        writeln!(f)?;
        writeln!(f, "out of order per client: {}", self.out_of_order)?;
        write!(
            f,
            "verdict:    {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(client: u64, count: i64) -> Sample {
        Sample {
            client,
            latency: Duration::from_millis(1),
            finished: Duration::from_millis(count as u64),
            outcome: Outcome::Counted {
                count,
                replica: Some("a".into()),
                version: Some("1".into()),
            },
        }
    }

    #[test]
    fn distinct_increasing_counts_pass() {
        let report = Report::from_samples(
            vec![counted(0, 1), counted(1, 2), counted(0, 3)],
            Duration::from_secs(1),
        );
        assert!(report.passed(), "{report}");
    }

    #[test]
    fn a_count_seen_twice_fails() {
        let report =
            Report::from_samples(vec![counted(0, 1), counted(1, 1)], Duration::from_secs(1));
        assert_eq!(report.duplicate_counts, 1);
        assert!(!report.passed());
    }

    #[test]
    fn every_answer_repeating_a_count_is_told() {
        let mut samples: Vec<_> = (0..50).map(|client| counted(client, 5)).collect();
        samples.extend([counted(0, 6), counted(1, 6), counted(2, 7)]);
        let report = Report::from_samples(samples, Duration::from_secs(1));
        assert_eq!(report.duplicate_counts, 2);
        assert_eq!(report.duplicate_answers, 50);
        assert!(
            report
                .to_string()
                .contains("duplicates: 2 counts, carried by 50 answers more than once"),
            "{report}"
        );
    }

    #[test]
    fn a_client_seeing_its_count_go_down_fails() {
        let report =
            Report::from_samples(vec![counted(0, 5), counted(0, 4)], Duration::from_secs(1));
        assert_eq!(report.out_of_order, 1);
        assert!(!report.passed());
    }

    #[test]
    fn the_longest_time_without_a_success_is_reported() {
        let report = Report::from_samples(
            vec![counted(0, 100), counted(1, 150), counted(0, 900)],
            Duration::from_secs(1),
        );
        assert_eq!(report.longest_gap_ms, 750.0);
    }

    #[test]
    fn a_client_lost_with_its_visits_fails_the_run() {
        let mut report = Report::from_samples(vec![counted(0, 1)], Duration::from_secs(1));
        assert!(report.passed());

        report.clients_failed = 1;

        assert!(!report.passed(), "{report}");
        assert!(report.to_string().contains("clients lost: 1"));
    }

    #[test]
    fn any_failure_fails() {
        let failed = Sample {
            client: 0,
            latency: Duration::ZERO,
            finished: Duration::ZERO,
            outcome: Outcome::Failed("http 503".into()),
        };
        let report = Report::from_samples(vec![counted(0, 1), failed], Duration::from_secs(1));
        assert_eq!(report.failures.get("http 503"), Some(&1));
        assert!(!report.passed());
    }
}
