//! Progress on stderr: a live line on a terminal, a plain line every 5 s
//! otherwise (logs of CI runs stay readable).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::driver::Counters;

/// Stops the progress task (and clears the live line) when dropped or
/// finished.
#[derive(Debug)]
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `counters` against `total` distinct messages.
    pub fn start(counters: Arc<Counters>, total: u64) -> Progress {
        let (stop, stopped) = oneshot::channel();
        let live = std::io::stderr().is_terminal();
        let task = tokio::spawn(report(counters, total, live, stopped));
        Progress {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops reporting and waits for the line to be cleared.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn report(
    counters: Arc<Counters>,
    total: u64,
    live: bool,
    mut stopped: oneshot::Receiver<()>,
) {
    let every = if live {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let start = Instant::now();
    let mut ticker = tokio::time::interval_at(start + every, every);
    let mut last = Snapshot::take(&counters, start);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = ticker.tick() => {
                let now = Snapshot::take(&counters, Instant::now());
                let text = line(&counters, total, start, &last, &now);
                last = now;
                let mut err = std::io::stderr().lock();
                let _ = if live {
                    write!(err, "\r\x1b[K{text}")
                } else {
                    writeln!(err, "{text}")
                };
                let _ = err.flush();
            }
        }
    }
    if live {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
}

/// Acked counts at one moment, for the current rate.
struct Snapshot {
    at: Instant,
    acked: u64,
    samples: u64,
}

impl Snapshot {
    fn take(c: &Counters, at: Instant) -> Snapshot {
        Snapshot {
            at,
            acked: Counters::get(&c.acked),
            samples: Counters::get(&c.samples_acked),
        }
    }
}

/// Totals so far, and the committed rate since the previous line.
fn line(c: &Counters, total: u64, start: Instant, last: &Snapshot, now: &Snapshot) -> String {
    let get = Counters::get;
    let window = now.at.duration_since(last.at).as_secs_f64().max(0.001);
    format!(
        "[{:>6.1} s] sent {}/{} msgs ({} dup, {} resent) · acked {} · {:.0} msg/s · {:.0} samples/s · {} reconnects",
        now.at.duration_since(start).as_secs_f64(),
        get(&c.messages),
        total,
        get(&c.duplicates),
        get(&c.resends),
        now.acked,
        now.acked.saturating_sub(last.acked) as f64 / window,
        now.samples.saturating_sub(last.samples) as f64 / window,
        get(&c.reconnects),
    )
}
