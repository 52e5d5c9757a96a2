//! What a run did: counters, throughput, ack latency, the ground truth and
//! what the server should now hold.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Transport;
use crate::driver::Reject;
use crate::error::SimError;
use crate::scenario::TruthRecord;

/// A session the server should now hold, with its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedSession {
    pub device_id: String,
    pub session_id: String,
    /// Distinct samples sent (each must be stored exactly once).
    pub samples: u64,
}

/// The result of [`crate::run`].
#[derive(Debug, Clone)]
pub struct SimReport {
    pub transport: Transport,
    pub seed: u64,
    pub pens: usize,
    pub sessions: usize,
    /// Real (and virtual) time the pens started; flags raised by this run
    /// are raised after it.
    pub started_at: DateTime<Utc>,
    /// Distinct messages sent.
    pub messages: u64,
    /// Messages put on the wire: duplicates and resends included.
    pub transmissions: u64,
    pub duplicates: u64,
    pub resends: u64,
    pub reconnects: u64,
    /// Distinct samples sent.
    pub samples: u64,
    /// Distinct messages acknowledged (committed by the server).
    pub acked: u64,
    pub samples_acked: u64,
    /// From the first pen starting to the last ack.
    pub elapsed: Duration,
    /// Per acknowledged message, microseconds from first send to ack.
    pub ack_latencies_us: Vec<u32>,
    /// `RejectCartridge` commands the pens received.
    pub rejects: Vec<Reject>,
    /// Every injected fault.
    pub truth: Vec<TruthRecord>,
    pub expected_sessions: Vec<ExpectedSession>,
    /// Per pen: the device id and the last seq it sent.
    pub last_seqs: Vec<(String, u64)>,
}

impl SimReport {
    /// Committed messages per second.
    pub fn messages_per_s(&self) -> f64 {
        per_second(self.acked, self.elapsed)
    }

    /// Committed samples per second.
    pub fn samples_per_s(&self) -> f64 {
        per_second(self.samples_acked, self.elapsed)
    }

    /// The `p`-th percentile (0..=100) of the ack latency.
    pub fn ack_latency(&self, p: f64) -> Option<Duration> {
        percentile(&self.ack_latencies_us, p).map(|us| Duration::from_micros(u64::from(us)))
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

/// Nearest-rank percentile of unsorted values.
pub fn percentile(values: &[u32], p: f64) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

impl fmt::Display for SimReport {
    /// The summary table printed at the end of `pentrace sim`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults = self.truth.len();
        writeln!(
            f,
            "pentrace sim: {} pens over {}, seed {}",
            self.pens, self.transport, self.seed
        )?;
        let rows = [
            ("pens", self.pens.to_string()),
            ("sessions", self.sessions.to_string()),
            ("faults injected", faults.to_string()),
            (
                "messages sent",
                format!(
                    "{}  ({} distinct, {} duplicates, {} resends)",
                    self.transmissions, self.messages, self.duplicates, self.resends
                ),
            ),
            ("samples sent", self.samples.to_string()),
            (
                "acked",
                format!("{} messages, {} samples", self.acked, self.samples_acked),
            ),
            ("reconnects", self.reconnects.to_string()),
            ("cartridge rejects", self.rejects.len().to_string()),
            ("elapsed", format!("{:.2} s", self.elapsed.as_secs_f64())),
            (
                "msgs/s",
                format!("{:.1}  (committed)", self.messages_per_s()),
            ),
            (
                "samples/s",
                format!("{:.1}  (committed)", self.samples_per_s()),
            ),
            (
                "ack latency",
                format!(
                    "p50 {}  p99 {}  max {}",
                    ms(self.ack_latency(50.0)),
                    ms(self.ack_latency(99.0)),
                    ms(self.ack_latency(100.0))
                ),
            ),
        ];
        for (name, value) in rows {
            writeln!(f, "  {name:<18} {value}")?;
        }
        Ok(())
    }
}

/// Writes the truth as JSON lines.
pub fn write_truth(path: &Path, truth: &[TruthRecord]) -> Result<(), SimError> {
    let fail = |source| SimError::Truth {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut out = std::io::BufWriter::new(file);
    for record in truth {
        let line = serde_json::to_string(record).map_err(|e| fail(e.into()))?;
        writeln!(out, "{line}").map_err(fail)?;
    }
    out.flush().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
