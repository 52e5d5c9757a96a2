//! A pen's connection, whatever the transport: a queue of messages out and
//! a queue of events in, served by background tasks that die with it.

use std::time::Duration;

use pentrace_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a connection reports to its pen.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected (and, for MQTT, subscribed to the downlink): the pen may
    /// send, starting with everything unacknowledged.
    Ready,
    /// The connection broke and is being re-established by the transport.
    Down(String),
    /// The connection is gone for good; `fatal` when reconnecting cannot
    /// help (the server refuses the pen's messages).
    Closed { reason: String, fatal: bool },
    /// Which of the pen's seqs are stored (see `inflight`).
    Ack(pb::IngestAck),
    /// The server did not store one message.
    Rejected(pb::Rejection),
    /// The server told the pen to stop using a cartridge.
    Reject { session_id: String, reason: String },
}

/// Aborts its task when dropped, so no task outlives its connection.
#[derive(Debug)]
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One live connection of a pen.
#[derive(Debug)]
pub struct Link {
    pub tx: mpsc::Sender<pb::DeviceMessage>,
    pub events: mpsc::Receiver<Event>,
    pub tasks: Vec<Task>,
}

/// Messages queued toward the transport per connection.
pub const OUTBOUND_QUEUE: usize = 16;
/// Events queued toward the pen per connection.
pub const EVENT_QUEUE: usize = 1024;

impl Link {
    /// Ends the connection cleanly: no more messages, and the transport
    /// gets a moment to say goodbye before its tasks are aborted.
    pub async fn close(self) {
        let Link { tx, events, tasks } = self;
        drop(tx);
        drop(events);
        for mut task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut task.0).await;
        }
    }
}

/// Delay before reconnect attempt `attempt` (1-based): exponential from
/// 100 ms to 5 s, spread by `jitter` (0..1) so pens do not all retry at once.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    let ms = base.min(5_000) as f64 * (1.0 + jitter.clamp(0.0, 1.0) / 2.0);
    Duration::from_millis(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(30, 0.0), Duration::from_millis(5_000));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(150));
    }
}
