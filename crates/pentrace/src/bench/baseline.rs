//! The limits underneath pentrace: raw binary `COPY` into `stroke_samples`
//! (storage) and Mosquitto's QoS 1 pass-through (transport).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use pentrace_proto::v1 as pb;
use pentrace_store::{SampleBlock, SampleRow};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

/// Samples per message, as the simulator's pens send them.
const SAMPLES_PER_MESSAGE: u32 = pentrace_sim::profile::SAMPLES_PER_BATCH;
/// Rows per `COPY` statement (each its own transaction): about what the
/// ingest pipeline writes per batch at full load, times a hundred.
const ROWS_PER_COPY: usize = 100_000;

/// Sample rows shaped as the pipeline writes them: `devices` pens, blocks
/// of one message's samples, 200 samples per session, times from `start`
/// 100 ms apart per pen.
pub fn sample_blocks(rows: u64, devices: u32, start: DateTime<Utc>) -> Vec<SampleBlock> {
    let per_session = 20 * SAMPLES_PER_MESSAGE;
    let messages = rows.div_ceil(u64::from(SAMPLES_PER_MESSAGE));
    let devices = u64::from(devices.max(1));
    let mut session_ids: Vec<(u64, String)> = Vec::new();
    (0..messages)
        .map(|m| {
            let device = m % devices;
            let seq = m / devices + 1;
            let session = (seq - 1) * u64::from(SAMPLES_PER_MESSAGE) / u64::from(per_session);
            let idx = usize::try_from(device).unwrap_or(0);
            if session_ids.len() <= idx {
                session_ids.resize_with(idx + 1, || (u64::MAX, String::new()));
            }
            if let Some(slot) = session_ids.get_mut(idx)
                && slot.0 != session
            {
                *slot = (session, uuid::Uuid::new_v4().to_string());
            }
            let session_id = session_ids
                .get(idx)
                .map(|s| s.1.clone())
                .unwrap_or_default();
            let first = (seq - 1) * u64::from(SAMPLES_PER_MESSAGE);
            SampleBlock {
                device_id: format!("bench-load-pen-{device:04}"),
                session_id,
                rows: (0..u64::from(SAMPLES_PER_MESSAGE))
                    .map(|i| SampleRow {
                        time: start
                            + chrono::Duration::milliseconds(
                                i64::try_from((first + i) * 100).unwrap_or(i64::MAX / 2),
                            ),
                        seq,
                        strokes: 12,
                        depth_um: 1000 + u32::try_from(i).unwrap_or(0) * 10,
                        speed_hz: 120,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Copies the blocks into `stroke_samples` of `url` in `COPY` statements
/// of [`ROWS_PER_COPY`] rows from one connection; returns the seconds spent.
pub async fn copy_blocks(url: &str, blocks: &[SampleBlock]) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(url).await?;
    let per_copy = (ROWS_PER_COPY / SAMPLES_PER_MESSAGE as usize).max(1);
    let started = Instant::now();
    for chunk in blocks.chunks(per_copy) {
        pentrace_store::postgres::copy_sample_blocks(&mut conn, chunk)
            .await
            .context("COPY into stroke_samples")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    conn.close().await.ok();
    Ok(seconds)
}

/// A real `StrokeBatch` message as a pen sends it, encoded: its size is the
/// broker baseline's payload size.
pub fn stroke_batch_payload() -> Vec<u8> {
    let now = Utc::now();
    let ts = |t: DateTime<Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    };
    let (gtin, _) = pentrace_sim::catalogue::PRODUCTS[0];
    let message = pb::DeviceMessage {
        device_id: "bench-load-pen-0000".into(),
        seq: 1234,
        sent_at: Some(ts(now)),
        body: Some(pb::device_message::Body::StrokeBatch(pb::StrokeBatch {
            session: Some(pb::SessionContext {
                session_id: uuid::Uuid::new_v4().to_string(),
                cartridge: Some(pb::Cartridge {
                    udi: format!(
                        "(01){gtin}(17)280101(10){}(21)SN{:08}",
                        pentrace_sim::catalogue::OK_LOT,
                        42
                    ),
                    chip_uid: String::new(),
                }),
                area: pb::TreatmentArea::Cheeks as i32,
                skin: pb::SkinThickness::Thick as i32,
                patient_ref: "patient-0042".into(),
                started_at: Some(ts(now)),
            }),
            started_at: Some(ts(now)),
            samples: (0..SAMPLES_PER_MESSAGE)
                .map(|i| pb::StrokeSample {
                    offset_ms: i * 100,
                    strokes: 12,
                    depth_um: 1500,
                    speed_hz: 120,
                })
                .collect(),
        })),
    };
    message.encode_to_vec()
}

/// One broker pass-through run.
#[derive(Debug, Clone, Copy)]
pub struct BrokerRun {
    pub sent: u64,
    pub received: u64,
    pub msgs_per_s: f64,
}

/// One QoS 1 publisher → one QoS 1 subscriber through the broker at
/// `port`, publishing `payload` for `duration`; counts what the subscriber
/// received (each sequence number once) until 10 s after the last PUBACK.
pub async fn broker_run(
    port: u16,
    payload: &[u8],
    duration: Duration,
) -> anyhow::Result<BrokerRun> {
    let topic = format!("bench/{}", uuid::Uuid::new_v4().simple());
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(100);
        o
    };
    // Subscriber first, and wait for its SUBACK.
    let (sub, mut sub_loop) = AsyncClient::new(options(&format!("{topic}-sub")), 1000);
    sub.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Instant::now() > deadline {
            bail!("the broker did not acknowledge the subscription");
        }
        if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await? {
            break;
        }
    }
    let seen = Arc::new(Mutex::new(Vec::<bool>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let last_receive = Arc::new(Mutex::new(None::<Instant>));
    let subscriber = {
        let (seen, received, last_receive) = (seen.clone(), received.clone(), last_receive.clone());
        tokio::spawn(async move {
            while let Ok(event) = sub_loop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let n = p
                        .payload
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(u64::MAX, u64::from_be_bytes);
                    let Ok(n) = usize::try_from(n) else { continue };
                    let mut seen = seen.lock().await;
                    if seen.len() <= n {
                        seen.resize(n + 1, false);
                    }
                    if let Some(slot) = seen.get_mut(n)
                        && !*slot
                    {
                        *slot = true;
                        received.fetch_add(1, Ordering::Relaxed);
                        *last_receive.lock().await = Some(Instant::now());
                    }
                }
            }
        })
    };
    let (publisher, mut pub_loop) = AsyncClient::new(options(&format!("{topic}-pub")), 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let pub_task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            while let Ok(event) = pub_loop.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut body = payload.to_vec();
    if body.len() < 8 {
        body.resize(8, 0);
    }
    while started.elapsed() < duration {
        if let Some(head) = body.get_mut(..8) {
            head.copy_from_slice(&sent.to_be_bytes());
        }
        publisher
            .publish(topic.clone(), QoS::AtLeastOnce, false, body.clone())
            .await?;
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (acked.load(Ordering::Relaxed) < sent || received.load(Ordering::Relaxed) < sent)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received_n = received.load(Ordering::Relaxed);
    let last = (*last_receive.lock().await).unwrap_or_else(Instant::now);
    pub_task.abort();
    subscriber.abort();
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    let seconds = last.duration_since(started).as_secs_f64();
    Ok(BrokerRun {
        sent,
        received: received_n,
        msgs_per_s: if seconds > 0.0 {
            received_n as f64 / seconds
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_the_asked_rows_in_sessions_of_200() {
        let blocks = sample_blocks(1000, 3, Utc::now());
        assert_eq!(blocks.len(), 100);
        assert!(blocks.iter().all(|b| b.rows.len() == 10));
        let pen0: Vec<&SampleBlock> = blocks
            .iter()
            .filter(|b| b.device_id == "bench-load-pen-0000")
            .collect();
        // 34 messages of pen 0: sessions change after 20 messages.
        assert_eq!(pen0.len(), 34);
        assert_eq!(pen0[0].session_id, pen0[19].session_id);
        assert_ne!(pen0[19].session_id, pen0[20].session_id);
    }

    #[test]
    fn the_payload_is_a_decodable_stroke_batch() {
        let payload = stroke_batch_payload();
        let decoded = pb::DeviceMessage::decode(payload.as_slice()).unwrap();
        assert_eq!(decoded.seq, 1234);
        assert!(
            payload.len() > 100 && payload.len() < 1024,
            "{}",
            payload.len()
        );
    }
}
