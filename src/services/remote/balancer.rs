//! Which inference server takes the next request: the one with the fewest requests in
//! flight among those that are up and whose circuit breaker lets requests through. Pure
//! state, no I/O, so every rule is tested here without a server.

use std::time::{Duration, Instant};

/// When a failing server is shut off, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed requests that open the breaker.
    pub failures: u32,
    /// How long an open breaker keeps requests away before one trial request goes through.
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    /// Three failures in a row is a server in trouble rather than one bad request; 10 s lets
    /// a restarting server come back without a flood of requests failing against it.
    fn default() -> Self {
        Self {
            failures: 3,
            cool_down: Duration::from_secs(10),
        }
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Requests go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// No request goes through until `until`.
    Open { until: Instant },
    /// The cool-down is over: one trial request is in flight, the others wait for its outcome.
    HalfOpen,
}

impl Breaker {
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// How a request to a server went, for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (a 4xx about the request itself counts: the server is fine).
    Answered,
    /// It could not be reached, timed out, answered 5xx or broke off.
    Failed,
}

/// One server as the balancer sees it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    /// Requests sent and not yet finished.
    pub outstanding: usize,
    /// What the last health check said (up until one says otherwise).
    pub healthy: bool,
    pub breaker: Breaker,
    /// Why it last failed, for the error that says no server is left.
    pub last_error: Option<String>,
    /// Requests it was given, and how many of them failed.
    pub requests: u64,
    pub failures: u64,
}

/// The servers and the rules for choosing among them.
#[derive(Debug)]
pub struct Balancer {
    remotes: Vec<Remote>,
    policy: BreakerPolicy,
    /// Where the search for the least busy server starts, moved on at each pick so equally
    /// busy servers take turns.
    next: usize,
}

impl Balancer {
    pub fn new(urls: &[String], policy: BreakerPolicy) -> Self {
        Self {
            remotes: urls
                .iter()
                .map(|url| Remote {
                    url: url.clone(),
                    outstanding: 0,
                    healthy: true,
                    breaker: Breaker::Closed { failures: 0 },
                    last_error: None,
                    requests: 0,
                    failures: 0,
                })
                .collect(),
            policy,
            next: 0,
        }
    }

    pub fn remotes(&self) -> &[Remote] {
        &self.remotes
    }

    /// Whether the breaker of `remote` lets a request through at `now`.
    fn admits(&self, remote: &Remote, now: Instant) -> bool {
        match remote.breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } => now >= until,
            Breaker::HalfOpen => false,
        }
    }

    /// Picks the up server with the fewest requests in flight, skipping `tried` ones, and
    /// counts the request against it; `None` when none can take it.
    pub fn pick(&mut self, now: Instant, tried: &[usize]) -> Option<usize> {
        let n = self.remotes.len();
        let chosen = (0..n)
            .map(|k| (self.next + k) % n)
            .filter(|i| !tried.contains(i))
            .filter(|&i| self.remotes[i].healthy && self.admits(&self.remotes[i], now))
            .min_by_key(|&i| self.remotes[i].outstanding)?;
        self.next = (chosen + 1) % n;
        let remote = &mut self.remotes[chosen];
        if matches!(remote.breaker, Breaker::Open { .. }) {
            remote.breaker = Breaker::HalfOpen;
        }
        remote.outstanding += 1;
        remote.requests += 1;
        Some(chosen)
    }

    /// Whether any server could take a request at `now`.
    pub fn any_available(&self, now: Instant) -> bool {
        self.remotes
            .iter()
            .any(|r| r.healthy && self.admits(r, now))
    }

    /// Ends a request picked on `index`, moving its breaker.
    pub fn release(&mut self, index: usize, outcome: Outcome, error: Option<String>, now: Instant) {
        let policy = self.policy;
        let remote = &mut self.remotes[index];
        remote.outstanding = remote.outstanding.saturating_sub(1);
        match outcome {
            Outcome::Answered => remote.breaker = Breaker::Closed { failures: 0 },
            Outcome::Failed => {
                remote.failures += 1;
                remote.last_error = error;
                let open = Breaker::Open {
                    until: now + policy.cool_down,
                };
                remote.breaker = match remote.breaker {
                    Breaker::Closed { failures } if failures + 1 >= policy.failures => open,
                    Breaker::Closed { failures } => Breaker::Closed {
                        failures: failures + 1,
                    },
                    Breaker::Open { .. } | Breaker::HalfOpen => open,
                };
            }
        }
    }

    /// Records a health check of `index`.
    pub fn set_health(&mut self, index: usize, healthy: bool, error: Option<String>) {
        let remote = &mut self.remotes[index];
        remote.healthy = healthy;
        if !healthy {
            remote.last_error = error;
        }
    }

    /// Why no server can take a request: each one and its state, for the 503's message.
    pub fn why_unavailable(&self, now: Instant) -> String {
        self.remotes
            .iter()
            .map(|r| {
                let state = if !r.healthy {
                    "down".to_owned()
                } else {
                    match r.breaker {
                        Breaker::Open { until } => format!(
                            "circuit open for {} s more",
                            until.saturating_duration_since(now).as_secs() + 1
                        ),
                        Breaker::HalfOpen => "circuit half-open, trial request running".into(),
                        Breaker::Closed { .. } => "failed".into(),
                    }
                };
                match &r.last_error {
                    Some(err) => format!("{}: {state}, {err}", r.url),
                    None => format!("{}: {state}", r.url),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(n: usize) -> Balancer {
        let urls: Vec<String> = (0..n).map(|i| format!("http://r{i}")).collect();
        Balancer::new(
            &urls,
            BreakerPolicy {
                failures: 2,
                cool_down: Duration::from_secs(10),
            },
        )
    }

    #[test]
    fn picks_the_server_with_the_fewest_requests_in_flight() {
        let mut b = balancer(3);
        let now = Instant::now();
        let first = b.pick(now, &[]).unwrap();
        let second = b.pick(now, &[]).unwrap();
        let third = b.pick(now, &[]).unwrap();
        let mut all = vec![first, second, third];
        all.sort();
        assert_eq!(
            all,
            vec![0, 1, 2],
            "each idle server takes one before any takes two"
        );
        b.release(second, Outcome::Answered, None, now);
        assert_eq!(
            b.pick(now, &[]),
            Some(second),
            "the one that finished is least busy"
        );
    }

    #[test]
    fn equally_idle_servers_take_turns() {
        let mut b = balancer(2);
        let now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let i = b.pick(now, &[]).unwrap();
            b.release(i, Outcome::Answered, None, now);
            seen.push(i);
        }
        assert_eq!(seen, vec![0, 1, 0, 1]);
    }

    #[test]
    fn skips_tried_and_unhealthy_servers_and_says_none_is_left() {
        let mut b = balancer(2);
        let now = Instant::now();
        b.set_health(1, false, Some("connection refused".into()));
        assert_eq!(b.pick(now, &[]), Some(0));
        assert_eq!(b.pick(now, &[0]), None);
        b.set_health(0, false, None);
        assert!(!b.any_available(now));
        let why = b.why_unavailable(now);
        assert!(why.contains("http://r1: down, connection refused"), "{why}");
        b.set_health(1, true, None);
        assert!(b.any_available(now));
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_half_opens_after_the_cool_down() {
        let mut b = balancer(1);
        let now = Instant::now();
        let i = b.pick(now, &[]).unwrap();
        b.release(i, Outcome::Failed, Some("500".into()), now);
        assert_eq!(b.remotes()[0].breaker, Breaker::Closed { failures: 1 });
        let i = b.pick(now, &[]).unwrap();
        b.release(i, Outcome::Failed, Some("500".into()), now);
        assert!(matches!(b.remotes()[0].breaker, Breaker::Open { .. }));
        assert_eq!(b.pick(now, &[]), None, "open: nothing goes through");
        assert!(b.why_unavailable(now).contains("circuit open"));

        let later = now + Duration::from_secs(11);
        assert_eq!(b.pick(later, &[]), Some(0), "one trial after the cool-down");
        assert_eq!(b.remotes()[0].breaker, Breaker::HalfOpen);
        assert_eq!(b.pick(later, &[]), None, "only one trial at a time");
        b.release(0, Outcome::Failed, None, later);
        assert!(
            matches!(b.remotes()[0].breaker, Breaker::Open { until } if until > later),
            "a failed trial opens it again"
        );

        let much_later = later + Duration::from_secs(11);
        assert_eq!(b.pick(much_later, &[]), Some(0));
        b.release(0, Outcome::Answered, None, much_later);
        assert_eq!(b.remotes()[0].breaker, Breaker::Closed { failures: 0 });
    }

    #[test]
    fn an_answer_resets_the_failure_count() {
        let mut b = balancer(1);
        let now = Instant::now();
        for outcome in [Outcome::Failed, Outcome::Answered, Outcome::Failed] {
            let i = b.pick(now, &[]).unwrap();
            b.release(i, outcome, None, now);
        }
        assert_eq!(b.remotes()[0].breaker, Breaker::Closed { failures: 1 });
        assert_eq!((b.remotes()[0].requests, b.remotes()[0].failures), (3, 2));
    }
}
