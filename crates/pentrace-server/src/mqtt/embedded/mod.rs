//! The embedded MQTT broker that `pentrace serve` runs when no external
//! broker is configured (issue 7), so a laptop, a demo or a single clinic
//! needs nothing installed: pentrace's own MQTT 3.1.1 front end, built on
//! rumqttc's codec (issue 13). It is not a general broker — the server is
//! the only consumer — so each device connection feeds the ingest pipeline
//! directly and the server knows which authenticated pen published each
//! message.
//!
//! What it enforces (the same rules as the production Mosquitto,
//! `deploy/mosquitto/`):
//!
//! - Authentication: CONNECT must carry a username and a password; the
//!   password is the device secret (`pentrace device add`, Registry API).
//!   Username and client id must both be the credential's principal: a
//!   pen's device id, or a gateway's name. Anonymous → `NotAuthorized`, a
//!   bad secret → `BadUserNamePassword`, another principal's username →
//!   `NotAuthorized`, another client id → `IdentifierRejected`. Every
//!   refusal is reported to the device authenticator (counted, audited).
//!   A second connection with the same client id takes over (MQTT 3.1.1
//!   §3.1.4): the first is closed, and the authenticator sees the two at
//!   once.
//! - Topics (`access`): a pen publishes only on its own `up` topic and
//!   subscribes only to its own `down` topic; a gateway may do both for
//!   every pen of its clinic (`pentrace/v1/devices/+/down` meaning those;
//!   a publish for a device registered nowhere goes on to the pipeline,
//!   which answers UNKNOWN_DEVICE).
//!   A PUBLISH anywhere else stores nothing and closes the connection
//!   (§3.3.5); any other subscription filter (`#`, `$share/…`, `$SYS/…`,
//!   another pen's, the clinics' flags) gets return code 0x80. Both are
//!   reported as denials.
//! - Delivery (`connection`): a publish is validated as behind Mosquitto
//!   (`uplink`), submitted to the pipeline and PUBACKed in arrival order
//!   once its outcome is final — stored, duplicate, quarantined, refused
//!   for good; a retryable refusal is not PUBACKed (the pen resends). The
//!   pen learns of each outcome on its `down` topic (QoS 0).
//! - Revocation: every connected credential is checked again every
//!   5 s (as a gRPC stream); a revoked one is disconnected.
//! - Limits: a packet over `max_message_bytes` plus [`TOPIC_ALLOWANCE`]
//!   closes the connection from its fixed header, before it is read; one
//!   just over `max_message_bytes` is refused as `oversized` and
//!   acknowledged. At most [`MAX_CONNECTIONS`] connections; per connection
//!   a bounded number (and size) of publishes not yet acknowledged, past
//!   which its socket is not read.
//! - No sessions, no retained messages, no wills: state dies with the
//!   process, and pens resend whatever no ack on their `down` topic
//!   covers.
//! - It listens on 127.0.0.1 only (no TLS yet).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pentrace_ingest::IngestHandle;
use pentrace_ingest::metrics::Label;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::MqttMetrics;
use crate::device_auth::DeviceAuthenticator;

mod access;
mod connection;
mod wire;

/// The embedded broker listens on the loopback interface only.
pub const LISTEN_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Bytes of an MQTT PUBLISH besides its payload that the size limit allows
/// for: the topic (with its length) and the packet id. Device topics are
/// far shorter.
pub const TOPIC_ALLOWANCE: usize = 1024;

/// Connections served at once (authenticated or not); more are closed at
/// once.
pub const MAX_CONNECTIONS: usize = 10_000;

/// The transport name in envelopes, metrics and the authenticator's
/// records.
const TRANSPORT: &str = "mqtt";

/// What the embedded broker needs.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Port on [`LISTEN_IP`]; 0 = any free port.
    pub port: u16,
    /// The server's largest device message, bytes.
    pub max_message_bytes: usize,
}

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "the embedded MQTT broker cannot listen on {addr}: {source}. Choose another port with \
         --mqtt-port PORT (0 = any free port; setting mqtt.embedded_port), use an external \
         broker with --mqtt-url, or turn MQTT off with --no-mqtt"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The embedded broker's listening socket, bound but not yet serving.
#[derive(Debug)]
pub struct EmbeddedBroker {
    listener: TcpListener,
    addr: SocketAddr,
    max_message_bytes: usize,
}

impl EmbeddedBroker {
    /// Binds 127.0.0.1:`port` (a port in use fails here, with the ways out).
    pub async fn bind(config: &EmbeddedConfig) -> Result<EmbeddedBroker, EmbeddedError> {
        let wanted = SocketAddr::from((LISTEN_IP, config.port));
        let listen_error = |source| EmbeddedError::Listen {
            addr: wanted,
            source,
        };
        let listener = TcpListener::bind(wanted).await.map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        Ok(EmbeddedBroker {
            listener,
            addr,
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:PORT`, for pens.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Serves until `shutdown`: then stops accepting, lets every connection
    /// settle what it took (PUBACKs what got stored) and closes it. The
    /// task ends once every connection is closed (and so every
    /// [`IngestHandle`] it held is dropped).
    pub fn spawn(
        self,
        ingest: IngestHandle,
        auth: DeviceAuthenticator,
        metrics: MqttMetrics,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let shared = Arc::new(connection::Shared {
            ingest,
            auth,
            metrics,
            sessions: Sessions::default(),
            max_message_bytes: self.max_message_bytes,
            max_packet_bytes: self.max_message_bytes.saturating_add(TOPIC_ALLOWANCE),
            recheck_interval: connection::RECHECK_INTERVAL,
            shutdown,
        });
        tracing::info!(addr = %self.addr, "embedded mqtt broker listening");
        tokio::spawn(accept(self.listener, shared))
    }
}

/// The accept loop.
async fn accept(listener: TcpListener, shared: Arc<connection::Shared>) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: the connections that exist
                // go on; try again shortly.
                tracing::warn!(error = %e, "embedded mqtt broker cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .refused_connects
                .get_or_create(&Label {
                    name: "too_many_connections",
                })
                .inc();
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            connection::serve(stream, peer, shared).await;
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::info!("embedded mqtt broker stopped");
}

/// The live connections by client id, for take-overs.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, (u64, CancellationToken)>>,
}

/// A connection's place in [`Sessions`].
#[derive(Debug)]
struct Ticket {
    id: u64,
    /// Cancelled when another connection takes the client id.
    kicked: CancellationToken,
    /// Whether it took the id from a live connection.
    replaced: bool,
}

impl Sessions {
    /// Registers a connection under `client_id`; the one it replaces is
    /// told to close.
    fn take_over(&self, client_id: &str) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kicked = CancellationToken::new();
        let previous = match self.live.lock() {
            Ok(mut live) => live.insert(client_id.to_owned(), (id, kicked.clone())),
            Err(_) => None,
        };
        let replaced = previous.is_some();
        if let Some((_, old)) = previous {
            old.cancel();
        }
        Ticket {
            id,
            kicked,
            replaced,
        }
    }

    /// Removes a connection that ended, unless another took its id since.
    fn leave(&self, client_id: &str, id: u64) {
        if let Ok(mut live) = self.live.lock()
            && live
                .get(client_id)
                .is_some_and(|(current, _)| *current == id)
        {
            live.remove(client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_new_connection_takes_the_client_id_over_and_the_old_one_leaves_nothing_behind() {
        let sessions = Sessions::default();
        let first = sessions.take_over("pen-a");
        assert!(!first.replaced);
        let second = sessions.take_over("pen-a");
        assert!(second.replaced && first.kicked.is_cancelled());
        assert!(!second.kicked.is_cancelled());
        // The first one ending does not remove the second.
        sessions.leave("pen-a", first.id);
        let third = sessions.take_over("pen-a");
        assert!(third.replaced && second.kicked.is_cancelled());
        sessions.leave("pen-a", third.id);
        assert!(!sessions.take_over("pen-a").replaced);
    }

    #[tokio::test]
    async fn a_port_in_use_is_named_with_the_flags_to_change_it() {
        let taken = std::net::TcpListener::bind((LISTEN_IP, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let config = EmbeddedConfig {
            port,
            max_message_bytes: 1024,
        };
        let text = EmbeddedBroker::bind(&config).await.unwrap_err().to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        for flag in ["--mqtt-port", "--mqtt-url", "--no-mqtt"] {
            assert!(text.contains(flag), "{text}");
        }
    }
}
