//! Resident memory of a child process over time (`VmRSS` of
//! `/proc/PID/status`), sampled on a thread of its own, so a test can
//! assert how much it grew and print the curve.

#![allow(dead_code)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Samples a process's RSS every `interval` until [`RssSampler::finish`].
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<RssCurve>>,
}

/// The samples: time since the start, and `VmRSS` in KiB.
#[derive(Debug, Clone, Default)]
pub struct RssCurve {
    pub points: Vec<(Duration, u64)>,
}

/// `VmRSS` of `pid` in KiB; None once the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl RssSampler {
    pub fn start(pid: u32, interval: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut curve = RssCurve::default();
            // The last sample is taken after the stop, so the curve covers
            // everything up to `finish`.
            loop {
                let done = stopped.load(Ordering::Relaxed);
                match rss_kib(pid) {
                    Some(kib) => curve.points.push((t0.elapsed(), kib)),
                    None => break,
                }
                if done {
                    break;
                }
                std::thread::park_timeout(interval);
            }
            curve
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the curve.
    pub fn finish(mut self) -> RssCurve {
        self.stop_thread().unwrap_or_default()
    }

    fn stop_thread(&mut self) -> Option<RssCurve> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take()?;
        thread.thread().unpark();
        thread.join().ok()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

impl RssCurve {
    pub fn first_kib(&self) -> u64 {
        self.points.first().map_or(0, |p| p.1)
    }

    pub fn max_kib(&self) -> u64 {
        self.points.iter().map(|p| p.1).max().unwrap_or(0)
    }

    /// Peak over the first sample.
    pub fn growth_kib(&self) -> u64 {
        self.max_kib().saturating_sub(self.first_kib())
    }
}

/// Waits until `pid`'s RSS has stayed within `tolerance_kib` for `steady`
/// (sampled every 100 ms), up to `timeout`; returns the last sample.
pub async fn wait_steady(pid: u32, steady: Duration, tolerance_kib: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let tick = Duration::from_millis(100);
    let window = (steady.as_millis() / tick.as_millis()).max(1) as usize;
    let mut samples: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    loop {
        let kib = rss_kib(pid).expect("the process is running");
        samples.push_back(kib);
        if samples.len() > window {
            samples.pop_front();
            let (lo, hi) = samples
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), &k| (lo.min(k), hi.max(k)));
            if hi - lo <= tolerance_kib {
                return kib;
            }
        }
        assert!(
            Instant::now() < deadline,
            "RSS of {pid} never settled within {tolerance_kib} KiB for {steady:?}: {samples:?}"
        );
        tokio::time::sleep(tick).await;
    }
}

impl fmt::Display for RssCurve {
    /// One `seconds KiB` line per sample.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (t, kib) in &self.points {
            writeln!(f, "{:7.2} s {kib:>9} KiB", t.as_secs_f64())?;
        }
        Ok(())
    }
}
