//! The `status` output: periodic statistics and error records, as JSON text.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::{json, Value};

/// Counters and recent latencies of the node.
pub struct Stats {
    started: Instant,
    pub frames_in: u64,
    pub frames_out: u64,
    pub rejected: u64,
    pub failed_units: u64,
    /// Warnings (inputs used partly or not as given: see `warning`).
    pub warnings: u64,
    /// Inputs dora discarded on full queues (e.g. `queue_size: 1`) before they reached the node.
    pub dropped_by_dora: u64,
    latencies_ms: VecDeque<f64>,
    out_times: VecDeque<Instant>,
    errors: VecDeque<Value>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            frames_in: 0,
            frames_out: 0,
            rejected: 0,
            failed_units: 0,
            warnings: 0,
            dropped_by_dora: 0,
            latencies_ms: VecDeque::new(),
            out_times: VecDeque::new(),
            errors: VecDeque::new(),
        }
    }
}

/// Resident memory of this process in MiB (Linux), `None` elsewhere.
pub fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[i])
}

impl Stats {
    pub fn frame_out(&mut self, latency_ms: f64) {
        self.frames_out += 1;
        self.latencies_ms.push_back(latency_ms);
        if self.latencies_ms.len() > 200 {
            self.latencies_ms.pop_front();
        }
        let now = Instant::now();
        self.out_times.push_back(now);
        while self
            .out_times
            .front()
            .is_some_and(|t| now.duration_since(*t).as_secs_f64() > 10.0)
        {
            self.out_times.pop_front();
        }
    }

    /// Records an error and returns the status record to send.
    pub fn error(&mut self, kind: &str, input: &str, frame: Option<u64>, reason: &str) -> Value {
        self.record("error", kind, input, frame, reason)
    }

    /// Counts a warning (the frame is processed, something of it is not used as given) and
    /// returns its status record.
    pub fn warning(&mut self, kind: &str, input: &str, frame: Option<u64>, reason: &str) -> Value {
        self.warnings += 1;
        self.record("warning", kind, input, frame, reason)
    }

    fn record(
        &mut self,
        ty: &str,
        kind: &str,
        input: &str,
        frame: Option<u64>,
        reason: &str,
    ) -> Value {
        let rec = json!({
            "type": ty,
            "kind": kind,
            "input": input,
            "frame_id": frame,
            "reason": reason,
        });
        self.errors.push_back(rec.clone());
        if self.errors.len() > 10 {
            self.errors.pop_front();
        }
        rec
    }

    pub fn report(&self, base: &Value, dropped: u64, pending: usize, in_flight: usize) -> Value {
        let mut lat: Vec<f64> = self.latencies_ms.iter().copied().collect();
        lat.sort_by(f64::total_cmp);
        let fps = if self.out_times.len() >= 2 {
            let span = self
                .out_times
                .back()
                .zip(self.out_times.front())
                .map(|(b, a)| b.duration_since(*a).as_secs_f64())
                .unwrap_or(0.0);
            if span > 0.0 {
                (self.out_times.len() - 1) as f64 / span
            } else {
                0.0
            }
        } else {
            0.0
        };
        let mut v = base.clone();
        let extra = json!({
            "type": "stats",
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": dropped,
            "dropped_by_dora": self.dropped_by_dora,
            "rejected": self.rejected,
            "failed_units": self.failed_units,
            "warnings": self.warnings,
            "pending": pending,
            "in_flight": in_flight,
            "fps": fps,
            "latency_ms": {"p50": pct(&lat, 50.0), "p95": pct(&lat, 95.0)},
            "rss_mib": rss_mib(),
            "recent_errors": self.errors.iter().cloned().collect::<Vec<_>>(),
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }
}
