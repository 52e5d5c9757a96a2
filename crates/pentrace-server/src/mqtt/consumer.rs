//! The MQTT event loop: kept polling whatever happens (that is how rumqttc
//! reconnects), never blocked by ingest work, and re-subscribing whenever
//! the broker has no session for us.

use std::time::Duration;

use pentrace_ingest::IngestHandle;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::intake::{Inbound, Intake};
use super::{MqttSettings, connect, downlink, parse_url};

/// Starts the consumer; the returned task ends once every message taken
/// from the broker is committed and acknowledged after `shutdown`.
pub fn spawn(
    settings: &MqttSettings,
    ingest: IngestHandle,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, String> {
    let url = settings.url.as_deref().ok_or("no MQTT url configured")?;
    let (host, port) = parse_url(url)?;
    let (client, eventloop) = connect(settings, &host, port);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let stop_polling = CancellationToken::new();
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        settings.subscription(),
        events_tx,
        stop_polling.clone(),
    ));
    let flags = ingest.subscribe_flags();
    let downlink = tokio::spawn(downlink::run(client.clone(), flags, shutdown.clone()));
    let intake = Intake::new(client.clone(), ingest, max_message_bytes);
    Ok(tokio::spawn(async move {
        intake.run(events_rx, shutdown).await;
        let _ = downlink.await;
        // Queued PUBACKs are sent before the DISCONNECT that follows them.
        if let Err(e) = client.disconnect().await {
            tracing::debug!(error = %e, "mqtt disconnect request failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), stop_polling.cancelled()).await;
        stop_polling.cancel();
        let _ = poller.await;
        tracing::info!("mqtt consumer stopped");
    }))
}

/// Polls until told to stop or the client disconnects; hands publishes and
/// reconnects to the intake in arrival order.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: &'static str,
    events: mpsc::UnboundedSender<Inbound>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let _ = events.send(Inbound::Publish(p));
            }
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                failures = 0;
                tracing::info!(session_present = ack.session_present, "mqtt connected");
                if !ack.session_present {
                    subscribe(&client, filter);
                }
                let _ = events.send(Inbound::Connected);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                stop.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(error = %e, ?wait, "mqtt connection error; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

fn subscribe(client: &AsyncClient, filter: &str) {
    // try_: the poll loop must never wait on its own request queue.
    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
        tracing::error!(error = %e, "cannot queue the mqtt subscription");
    }
}
