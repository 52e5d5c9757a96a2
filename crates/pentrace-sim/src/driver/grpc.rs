//! gRPC transport: one `Telemetry.Ingest` bidi stream per pen, on the
//! pen's own HTTP/2 connection (so a disconnect really drops it).

use std::time::Duration;

use pentrace_proto::v1 as pb;
use pentrace_proto::v1::telemetry_client::TelemetryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::link::{EVENT_QUEUE, Event, Link, OUTBOUND_QUEUE, Task};
use crate::error::SimError;

/// The CA certificate of `config.ca_cert`, read once.
pub fn ca_pem(config: &crate::config::SimConfig) -> Result<Option<String>, SimError> {
    config
        .ca_cert
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|e| {
                SimError::Config(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })
        })
        .transpose()
}

/// A channel to the server's gRPC endpoint; `https://` URLs verify the
/// server against `ca_pem` (or the system's roots when none is given).
pub async fn channel(url: &str, ca_pem: Option<&str>) -> Result<Channel, SimError> {
    let fail = |reason: String| SimError::Connect {
        url: url.to_owned(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| fail(e.to_string()))?;
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| fail(error_chain(&e)))?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| fail(error_chain(&e)))
}

/// A tonic transport error with its causes (the top level alone says only
/// "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Opens a pen's ingest stream; the link reports `Ready` at once.
pub async fn connect(
    url: &str,
    ca_pem: Option<&str>,
    device_id: &str,
    secret: &str,
) -> Result<Link, String> {
    let channel = channel(url, ca_pem).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {secret}")
        .parse()
        .map_err(|_| "the pen's secret cannot be sent as metadata".to_owned())?;
    request.metadata_mut().insert("authorization", bearer);
    let response = TelemetryClient::new(channel)
        .ingest(request)
        .await
        .map_err(|s| format!("Telemetry.Ingest: {s}"))?;
    let mut inbound = response.into_inner();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let _ = events_tx.try_send(Event::Ready);
    let device = device_id.to_owned();
    let reader = tokio::spawn(async move {
        loop {
            let event = match inbound.message().await {
                Ok(Some(down)) => match downlink_event(down, &device) {
                    Some(event) => event,
                    None => continue,
                },
                Ok(None) => Event::Closed {
                    reason: "the server ended the stream".into(),
                    fatal: false,
                },
                Err(status) => Event::Closed {
                    reason: format!("{:?}: {}", status.code(), status.message()),
                    fatal: is_fatal(status.code()),
                },
            };
            let closed = matches!(event, Event::Closed { .. });
            if events_tx.send(event).await.is_err() || closed {
                break;
            }
        }
    });
    Ok(Link {
        tx,
        events,
        tasks: vec![Task(reader)],
    })
}

/// What a downlink means for the pen `device` (`None`: not for it).
fn downlink_event(down: pb::DeviceDownlink, device: &str) -> Option<Event> {
    use pb::device_downlink::Body;
    match down.body? {
        Body::Ack(ack) if ack.device_id == device => Some(Event::Ack(ack)),
        Body::Rejection(r) if r.device_id == device => Some(Event::Rejected(r)),
        Body::RejectCartridge(r) if r.device_id == device || r.device_id.is_empty() => {
            Some(Event::Reject {
                session_id: r.session_id,
                reason: r.reason,
            })
        }
        _ => None,
    }
}

/// Statuses that say the pen's messages are refused, not that the server
/// is briefly away: resending would be refused again.
fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented
    )
}
