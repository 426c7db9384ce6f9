//! Counters and latency histograms of the engine, written by the engine thread after each
//! generation and read by `GET /metrics` (Prometheus text format) and `GET /api/status`.
//! Plain atomics: recording costs nothing next to a forward pass, and reading never waits
//! for the engine.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The process's peak resident memory in bytes, where the system tells it: for the status
/// badge, so the web layer asks the services rather than the engine's device code.
pub fn peak_rss_bytes() -> Option<u64> {
    crate::inference::device::peak_rss_bytes()
}

/// Upper bounds (seconds) of the time-to-first-token buckets: from a cached short turn on a
/// fast machine to a long prompt on two cores.
const TTFT_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Upper bounds (seconds) of the inter-token latency buckets: 200 tokens/s down to 1.
const ITL_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A Prometheus histogram over fixed buckets, in microseconds internally.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What one finished (or stopped) generation adds to the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationRecord {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// From the start of the prompt to the first new token.
    pub time_to_first_token: Option<Duration>,
    pub generation_time: Duration,
    pub failed: bool,
}

/// The engine's metrics; see the module doc.
pub struct Metrics {
    started: Instant,
    load_seconds: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    kv_cache_bytes: AtomicU64,
    ttft: Histogram,
    itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            load_seconds: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            kv_cache_bytes: AtomicU64::new(0),
            ttft: Histogram::new(&TTFT_BUCKETS),
            itl: Histogram::new(&ITL_BUCKETS),
        }
    }
}

/// The engine's queue at one moment, for the metrics text.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueState {
    pub waiting: usize,
    pub running: usize,
}

impl Metrics {
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn set_load_time(&self, load: Duration) {
        self.load_seconds
            .store(load.as_micros() as u64, Ordering::Relaxed);
    }

    /// Bytes the kept KV caches hold now.
    pub fn set_kv_cache_bytes(&self, bytes: usize) {
        self.kv_cache_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.kv_cache_bytes.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn record(&self, r: GenerationRecord) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.requests, 1);
        add(&self.failed, usize::from(r.failed));
        add(&self.prompt_tokens, r.prompt_tokens);
        add(&self.cached_tokens, r.cached_tokens);
        add(&self.generated_tokens, r.generated_tokens);
        if let Some(ttft) = r.time_to_first_token {
            self.ttft.observe(ttft);
        }
        if r.generated_tokens > 1 {
            let per_token = r.generation_time / r.generated_tokens as u32;
            self.itl.observe(per_token);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn prometheus(&self, queue: QueueState) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        metric(
            "smolbot_requests_total",
            "counter",
            "Generations run (finished, stopped or failed).",
            get(&self.requests),
        );
        metric(
            "smolbot_requests_failed_total",
            "counter",
            "Generations that failed.",
            get(&self.failed),
        );
        metric(
            "smolbot_prompt_tokens_total",
            "counter",
            "Prompt tokens of all generations, reused ones included.",
            get(&self.prompt_tokens),
        );
        metric(
            "smolbot_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens reused from a kept KV cache instead of being run.",
            get(&self.cached_tokens),
        );
        metric(
            "smolbot_generated_tokens_total",
            "counter",
            "Tokens generated.",
            get(&self.generated_tokens),
        );
        metric(
            "smolbot_queue_depth",
            "gauge",
            "Requests waiting for the engine.",
            queue.waiting as f64,
        );
        metric(
            "smolbot_active_sequences",
            "gauge",
            "Generations running now.",
            queue.running as f64,
        );
        metric(
            "smolbot_kv_cache_bytes",
            "gauge",
            "Bytes held by kept KV caches between requests.",
            get(&self.kv_cache_bytes),
        );
        metric(
            "smolbot_model_load_seconds",
            "gauge",
            "Time the model took to load.",
            get(&self.load_seconds) / 1e6,
        );
        metric(
            "smolbot_uptime_seconds",
            "gauge",
            "Seconds since the engine started.",
            self.uptime().as_secs_f64(),
        );
        self.ttft.write(
            &mut out,
            "smolbot_time_to_first_token_seconds",
            "From the start of the prompt to the first new token.",
        );
        self.itl.write(
            &mut out,
            "smolbot_inter_token_latency_seconds",
            "Mean time between generated tokens, one sample per generation.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_move_counters_and_histogram_buckets() {
        let m = Metrics::default();
        m.record(GenerationRecord {
            prompt_tokens: 100,
            cached_tokens: 60,
            generated_tokens: 11,
            time_to_first_token: Some(Duration::from_millis(300)),
            generation_time: Duration::from_millis(1000),
            failed: false,
        });
        let text = m.prometheus(QueueState {
            waiting: 2,
            running: 1,
        });
        for line in [
            "smolbot_requests_total 1",
            "smolbot_prompt_tokens_total 100",
            "smolbot_prompt_tokens_cached_total 60",
            "smolbot_generated_tokens_total 11",
            "smolbot_queue_depth 2",
            "smolbot_active_sequences 1",
            "smolbot_time_to_first_token_seconds_bucket{le=\"0.25\"} 0",
            "smolbot_time_to_first_token_seconds_bucket{le=\"0.5\"} 1",
            "smolbot_time_to_first_token_seconds_count 1",
            "smolbot_inter_token_latency_seconds_bucket{le=\"0.1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
