//! The MQTT event loop: kept polling whatever happens (that is how rumqttc
//! reconnects), subscribing on every ConnAck and re-subscribing when nothing
//! arrives, and handing publishes to the intake only as fast as it takes
//! them (bounded read-ahead).
//!
//! Why the poller and the intake cannot deadlock: the poller stops polling
//! while the intake's event channel is full, and rumqttc's request channel
//! (the intake's PUBACKs and downlinks) drains only while the poller polls.
//! So the intake must not wait on a full request channel meanwhile. The
//! request channel is sized to hold every request the intake can have
//! queued ([`super::REQUEST_CAPACITY`]); should it fill anyway (flags of a
//! mass recall, a broker without an in-flight limit), the poller ends the
//! wait itself: after two keep-alives without room it releases the
//! connection, which empties the request channel (rumqttc drops the queued
//! PUBACKs, whose publishes the broker redelivers, and keeps the rest for
//! the next connection), so a waiting intake goes on. By then the broker has
//! dropped the connection anyway (no ping for 1.5 × keep-alive). The two can
//! wait on each other for at most two keep-alives, never for good.

use std::time::{Duration, Instant};

use pentrace_ingest::IngestHandle;
use pentrace_ingest::metrics::Label;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS, SubAck, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::intake::{Inbound, Intake};
use super::{MqttMetrics, MqttSettings, connect, downlink, end_session, parse_url};

/// Publishes handed to the intake and not yet taken by it. Only a hand-off
/// buffer: the intake queues up to its own limit, and the broker's in-flight
/// window bounds what is unacknowledged; once this is full the poller stops
/// reading and TCP holds the rest.
const READ_AHEAD: usize = 1000;

/// How long the poller waits for room in a full intake before it releases
/// the connection (see the module comment): twice the keep-alive. The
/// broker has given up on the connection after 1.5 keep-alives without a
/// packet from us, so releasing it then costs nothing: the broker
/// redelivers what is unacknowledged when we are back.
fn stall_limit(keep_alive: Duration) -> Duration {
    keep_alive * 2
}

/// Nothing delivered for this long while connected: re-send the SUBSCRIBE,
/// which is idempotent (the broker replaces the subscription without
/// interrupting it). A broker can hold our session without the
/// subscription: Mosquitto 2.0 restores a persistent session after a
/// restart but not its `$share` subscription, and says `session_present`.
/// Short enough that such a loss costs under a minute, long enough that an
/// idle fleet costs one small packet per interval. Checked whenever the
/// event loop yields, which the keep-alive ping makes it do at least once
/// per keep-alive (30 s by default).
const IDLE_RESUBSCRIBE: Duration = Duration::from_secs(30);

/// A SUBSCRIBE without SUBACK for this long counts as lost; until then no
/// other is sent, so re-subscribing cannot pile up.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait after a refused subscription; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long a graceful shutdown waits for the broker to end the session.
const SESSION_END_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the consumer; the returned task ends once every message taken
/// from the broker is committed and acknowledged after `shutdown`, and,
/// unless [`MqttSettings::keep_session_on_shutdown`], the persistent session
/// has been ended.
pub fn spawn(
    settings: &MqttSettings,
    ingest: IngestHandle,
    metrics: MqttMetrics,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, String> {
    let url = settings.url.as_deref().ok_or("no MQTT url configured")?;
    let (host, port) = parse_url(url)?;
    let (client, eventloop) = connect(settings, &host, port);
    let (events_tx, events_rx) = mpsc::channel(READ_AHEAD);
    let stop_polling = CancellationToken::new();
    let leave = !settings.keep_session_on_shutdown;
    let filter = super::SUBSCRIPTION;
    let poller = tokio::spawn(
        Poller {
            eventloop,
            client: client.clone(),
            filter,
            events: events_tx,
            metrics,
            leave_on_shutdown: leave,
            stall_limit: stall_limit(settings.keep_alive()),
            shutdown: shutdown.clone(),
            stop: stop_polling.clone(),
        }
        .run(),
    );
    let flags = ingest.subscribe_flags();
    let downlink = tokio::spawn(downlink::run(client.clone(), flags, shutdown.clone()));
    let intake = Intake::new(client.clone(), ingest, max_message_bytes);
    let settings = settings.clone();
    Ok(tokio::spawn(async move {
        // Leaving the group at once sends new messages to the other members
        // while this process drains (first in the select, so it runs even
        // when the intake has nothing left to drain).
        let leave_group = async {
            shutdown.cancelled().await;
            if leave {
                unsubscribe(&client, filter);
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            biased;
            () = leave_group => {}
            () = intake.run(events_rx, shutdown.clone()) => {}
        }
        let _ = downlink.await;
        // Queued PUBACKs are sent before the DISCONNECT that follows them.
        if let Err(e) = client.disconnect().await {
            tracing::debug!(error = %e, "mqtt disconnect request failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), stop_polling.cancelled()).await;
        stop_polling.cancel();
        let _ = poller.await;
        // Only a graceful stop: if the pipeline went away, what the intake
        // held is unacknowledged and the session keeps it.
        if leave && shutdown.is_cancelled() {
            match end_session(&settings, &host, port, SESSION_END_TIMEOUT).await {
                Ok(()) => tracing::info!(client_id = %settings.client_id, "mqtt session ended"),
                Err(e) => tracing::warn!(
                    error = %e,
                    client_id = %settings.client_id,
                    "cannot end the mqtt session; the broker keeps it (and its share of \
                     the messages) until persistent_client_expiration, or until \
                     `pentrace mqtt forget-session`"
                ),
            }
        }
        tracing::info!("mqtt consumer stopped");
    }))
}

/// The poll loop's state.
struct Poller {
    eventloop: EventLoop,
    client: AsyncClient,
    filter: &'static str,
    events: mpsc::Sender<Inbound>,
    metrics: MqttMetrics,
    leave_on_shutdown: bool,
    stall_limit: Duration,
    shutdown: CancellationToken,
    stop: CancellationToken,
}

impl Poller {
    /// Polls until told to stop or the client disconnects; hands publishes
    /// and reconnects to the intake in arrival order.
    async fn run(mut self) {
        let mut failures = 0u32;
        // Some while connected.
        let mut subscription: Option<Subscription> = None;
        loop {
            let event = tokio::select! {
                e = self.eventloop.poll() => e,
                _ = self.stop.cancelled() => return,
            };
            match event {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    self.hand_over(Inbound::Publish(p)).await;
                    // After the hand-over: a wait for room is no silence.
                    if let Some(s) = subscription.as_mut() {
                        s.delivered(Instant::now());
                    }
                }
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    failures = 0;
                    tracing::info!(session_present = ack.session_present, "mqtt connected");
                    subscription = Some(self.connected(Instant::now()));
                    self.hand_over(Inbound::Connected).await;
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    if let Some(s) = subscription.as_mut() {
                        self.answered(s, &ack, Instant::now());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    self.stop.cancel();
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    subscription = None;
                    failures += 1;
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tracing::warn!(error = %e, ?wait, "mqtt connection error; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                continue;
            }
            let now = Instant::now();
            if let Some(s) = subscription.as_mut()
                && let Some(why) = s.due(now)
            {
                tracing::debug!(
                    filter = self.filter,
                    why = why.label(),
                    "mqtt re-subscribing"
                );
                self.subscribe(s, why, now);
            }
        }
    }

    /// Subscribes on every ConnAck, whatever `session_present` says (or
    /// leaves the group when shutting down).
    fn connected(&self, now: Instant) -> Subscription {
        let mut s = Subscription::new(now);
        if self.shutdown.is_cancelled() {
            if self.leave_on_shutdown {
                unsubscribe(&self.client, self.filter);
            }
        } else {
            self.subscribe(&mut s, Why::Connected, now);
        }
        s
    }

    fn subscribe(&self, s: &mut Subscription, why: Why, now: Instant) {
        // try_: the poll loop must never wait on its own request queue. A
        // failed attempt counts as sent: the next waits for SUBACK_TIMEOUT.
        match self.client.try_subscribe(self.filter, QoS::AtLeastOnce) {
            Ok(()) => {
                self.metrics
                    .subscribes
                    .get_or_create(&Label { name: why.label() })
                    .inc();
            }
            Err(e) => {
                tracing::error!(error = %e, filter = self.filter, "cannot queue the mqtt subscription");
            }
        }
        s.sent(now);
    }

    fn answered(&self, s: &mut Subscription, ack: &SubAck, now: Instant) {
        let granted = ack
            .return_codes
            .iter()
            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
        s.answered(granted, now);
        if granted {
            if ack
                .return_codes
                .contains(&SubscribeReasonCode::Success(QoS::AtMostOnce))
            {
                tracing::warn!(
                    filter = self.filter,
                    "the broker granted the mqtt subscription at QoS 0 only: messages \
                     arrive without redelivery"
                );
            }
            tracing::debug!(filter = self.filter, "mqtt subscription granted");
        } else {
            self.metrics.subscribe_refusals.inc();
            tracing::error!(
                filter = self.filter,
                retry_in = ?refusal_backoff(s.refusals),
                "the broker refused the mqtt subscription (SUBACK 0x80); does its ACL \
                 let this user read the filter? Nothing is consumed until it is granted"
            );
        }
    }

    /// Hands one event to the intake, waiting for room: meanwhile the event
    /// loop is not polled, so TCP and the broker's in-flight window hold the
    /// rest.
    async fn hand_over(&mut self, inbound: Inbound) {
        if self.shutdown.is_cancelled() {
            // The intake takes nothing new: a publish dropped here is not
            // acknowledged, so the broker redelivers it to this session, or
            // drops it with the session (the pen resends it).
            if matches!(inbound, Inbound::Connected) {
                let _ = self.events.try_send(inbound);
            }
            return;
        }
        match self.events.try_send(inbound) {
            Ok(()) => {}
            // The intake stopped (the pipeline is gone): keep polling so the
            // PUBACKs already queued go out.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(inbound)) => self.wait_for_room(inbound).await,
        }
    }

    /// Waits for room in the intake, releasing the connection if that takes
    /// the stall limit (see the module comment).
    async fn wait_for_room(&mut self, inbound: Inbound) {
        let mut released = false;
        loop {
            tokio::select! {
                permit = self.events.reserve() => {
                    if let Ok(permit) = permit {
                        permit.send(inbound);
                    }
                    return;
                }
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.stall_limit) => {
                    if !released {
                        released = true;
                        self.metrics.stalls.inc();
                        tracing::warn!(
                            after = ?self.stall_limit,
                            "mqtt intake full (is the store slow or away?); connection \
                             released, the broker redelivers what is unacknowledged"
                        );
                    }
                    self.eventloop.clean();
                }
            }
        }
    }
}

fn unsubscribe(client: &AsyncClient, filter: &str) {
    match client.try_unsubscribe(filter) {
        Ok(()) => tracing::info!(filter, "leaving the mqtt subscription"),
        Err(e) => tracing::warn!(error = %e, filter, "cannot queue the mqtt unsubscription"),
    }
}

/// Why a SUBSCRIBE is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A ConnAck, with or without a session.
    Connected,
    /// Nothing delivered for [`IDLE_RESUBSCRIBE`].
    Idle,
    /// The last one was refused and its backoff is over.
    Retry,
}

impl Why {
    fn label(self) -> &'static str {
        match self {
            Why::Connected => "connected",
            Why::Idle => "idle",
            Why::Retry => "retry",
        }
    }
}

/// What the poller knows of its subscription on the current connection,
/// and when to send the next SUBSCRIBE: at most one unanswered at a time,
/// and at most one per [`IDLE_RESUBSCRIBE`] (or refusal backoff).
#[derive(Debug)]
struct Subscription {
    /// When the SUBSCRIBE awaiting its SUBACK was sent.
    awaiting: Option<Instant>,
    /// The last delivery, SUBSCRIBE or SUBACK: the timers count from it.
    last_activity: Instant,
    /// Refusals in a row; a granted SUBACK resets it.
    refusals: u32,
}

impl Subscription {
    fn new(now: Instant) -> Subscription {
        Subscription {
            awaiting: None,
            last_activity: now,
            refusals: 0,
        }
    }

    fn sent(&mut self, now: Instant) {
        self.awaiting = Some(now);
        self.last_activity = now;
    }

    fn delivered(&mut self, now: Instant) {
        // A refused subscription can still deliver what the session had
        // queued; that must not put the retry off.
        if self.refusals == 0 {
            self.last_activity = now;
        }
    }

    fn answered(&mut self, granted: bool, now: Instant) {
        self.awaiting = None;
        self.refusals = if granted { 0 } else { self.refusals + 1 };
        self.last_activity = now;
    }

    /// Whether to send a SUBSCRIBE now, and why.
    fn due(&self, now: Instant) -> Option<Why> {
        if self
            .awaiting
            .is_some_and(|sent| now < sent + SUBACK_TIMEOUT)
        {
            return None;
        }
        let quiet = now.saturating_duration_since(self.last_activity);
        match self.refusals {
            0 => (quiet >= IDLE_RESUBSCRIBE).then_some(Why::Idle),
            n => (quiet >= refusal_backoff(n)).then_some(Why::Retry),
        }
    }
}

/// Wait before retrying after `refusals` refusals in a row (at least one).
fn refusal_backoff(refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_unanswered_subscribe_holds_the_next_back() {
        let t0 = Instant::now();
        let mut s = Subscription::new(t0);
        s.sent(t0);
        assert_eq!(s.due(t0 + secs(29)), None);
        // A SUBACK that never comes counts as lost after SUBACK_TIMEOUT.
        assert_eq!(s.due(t0 + SUBACK_TIMEOUT), Some(Why::Idle));
    }

    #[test]
    fn a_quiet_subscription_is_renewed_once_per_interval() {
        let t0 = Instant::now();
        let mut s = Subscription::new(t0);
        s.sent(t0);
        s.answered(true, t0 + secs(1));
        assert_eq!(s.due(t0 + secs(30)), None);
        assert_eq!(s.due(t0 + secs(31)), Some(Why::Idle));
        s.sent(t0 + secs(31));
        s.answered(true, t0 + secs(31));
        // Checked on every event: nothing more until the next interval.
        for t in 32..61 {
            assert_eq!(s.due(t0 + secs(t)), None, "at {t} s");
        }
        assert_eq!(s.due(t0 + secs(61)), Some(Why::Idle));
    }

    #[test]
    fn deliveries_keep_a_subscription_from_being_renewed() {
        let t0 = Instant::now();
        let mut s = Subscription::new(t0);
        s.sent(t0);
        s.answered(true, t0);
        for t in (10..300).step_by(10) {
            s.delivered(t0 + secs(t));
            assert_eq!(s.due(t0 + secs(t + 5)), None, "at {t} s");
        }
    }

    #[test]
    fn a_refusal_is_retried_with_a_growing_backoff() {
        let t0 = Instant::now();
        let mut s = Subscription::new(t0);
        s.sent(t0);
        s.answered(false, t0);
        assert_eq!(s.due(t0 + secs(4)), None);
        assert_eq!(s.due(t0 + secs(5)), Some(Why::Retry));
        s.sent(t0 + secs(5));
        s.answered(false, t0 + secs(5));
        // Deliveries of what the session had queued do not put it off.
        s.delivered(t0 + secs(12));
        assert_eq!(s.due(t0 + secs(14)), None);
        assert_eq!(s.due(t0 + secs(15)), Some(Why::Retry));
        s.sent(t0 + secs(15));
        s.answered(true, t0 + secs(16));
        assert_eq!(s.refusals, 0);
        assert_eq!(s.due(t0 + secs(45)), None);
        assert_eq!(s.due(t0 + secs(46)), Some(Why::Idle));
    }

    #[test]
    fn the_refusal_backoff_doubles_and_is_capped() {
        let waits: Vec<u64> = (1..=9).map(|n| refusal_backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(refusal_backoff(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn the_stall_limit_is_past_the_brokers_keep_alive_timeout() {
        for s in [1, 30, 65_535] {
            let keep_alive = secs(s);
            assert!(stall_limit(keep_alive) > keep_alive * 3 / 2);
        }
    }
}
