//! A structured fuzz of the decode → validate → judge → commit path on both
//! stores: 10,000 messages mutated from valid ones — every field at its
//! limits and beyond, extreme times, control characters, wrong ids,
//! repeated and absurd seqs — streamed to the real server. Every message is
//! answered (an ack covers it or a rejection names it), an ack never covers
//! a seq that is not stored, nothing panics, the stream never ends on a bad
//! message, and the server is ready afterwards.

use std::collections::{BTreeSet, HashSet};

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost_types::Timestamp;

use crate::helpers::{Backend, Server, exchange, pentrace_cli, register, spawn_app};
use crate::ingest::http_get;

crate::both_stores!(fuzzed_messages_are_answered_never_panic_and_acks_cover_only_stored);

/// Messages per store (the issue asks for at least 10,000 in CI).
const MESSAGES: usize = 10_000;
const PENS: u64 = 8;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const GTIN: &str = "09506000134352";

fn text(rng: &mut Rng, good: &str) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => "x".repeat(300 + rng.below(300) as usize),
        2 => format!("{good}\u{0}nul"),
        3 => format!("{good}\u{7}\u{1b}[31m\u{1d}"),
        4 => "ü∂ßé😀".repeat(1 + rng.below(80) as usize),
        5 => "'; DROP TABLE sessions; --<script>".into(),
        _ => good.to_owned(),
    }
}

fn time(rng: &mut Rng) -> Option<Timestamp> {
    let now = Utc::now().timestamp();
    let seconds = match rng.below(14) {
        0 => return None,
        1 => i64::MIN,
        2 => i64::MAX,
        3 => -8_330_000_000_000,
        4 => 253_402_300_800, // year 10000
        5 => -62_135_596_801, // before year 1
        6 => 0,
        7 => now - 3 * 365 * 86_400,
        8 => now + 30 * 86_400,
        _ => now - rng.below(3600) as i64,
    };
    let nanos = match rng.below(12) {
        0 => -1,
        1 => i32::MAX,
        2 => 1_000_000_000,
        _ => rng.below(1_000_000_000) as i32,
    };
    Some(Timestamp { seconds, nanos })
}

fn number(rng: &mut Rng, typical: u32) -> u32 {
    match rng.below(10) {
        0 => u32::MAX,
        1 => 0,
        2 => i32::MAX as u32 + 1,
        _ => typical / 2 + rng.below(u64::from(typical)) as u32,
    }
}

fn udi(rng: &mut Rng) -> String {
    let serial = format!("S{}", rng.below(40));
    let good = format!("(01){GTIN}(17)301231(10)L1(21){serial}");
    match rng.below(8) {
        0 => text(rng, &good),
        1 => format!("\u{1d}]d2\u{1d}01{GTIN}\u{1d}\u{1d}"),
        2 => format!("(01){GTIN}(17)99999(21)"),
        3 => "https://id.example/01/09506000134352/21/?17=&10=%00".into(),
        _ => good,
    }
}

fn session_id(rng: &mut Rng, sessions: &[String]) -> String {
    match rng.below(10) {
        0 => text(rng, "not-a-uuid"),
        1 => uuid::Uuid::new_v4().to_string(),
        _ => rng.pick(sessions).clone(),
    }
}

fn context(rng: &mut Rng, sessions: &[String]) -> Option<pb::SessionContext> {
    if rng.chance(3) {
        return None;
    }
    Some(pb::SessionContext {
        session_id: session_id(rng, sessions),
        cartridge: (!rng.chance(3)).then(|| pb::Cartridge {
            udi: udi(rng),
            chip_uid: if rng.chance(10) {
                text(rng, "04A2B3C4D5")
            } else {
                String::new()
            },
        }),
        area: if rng.chance(10) {
            rng.next() as i32
        } else {
            rng.below(9) as i32
        },
        skin: if rng.chance(10) {
            rng.next() as i32
        } else {
            rng.below(3) as i32
        },
        patient_ref: text(rng, "p-17"),
        started_at: time(rng),
    })
}

fn body(rng: &mut Rng, sessions: &[String]) -> Option<Body> {
    Some(match rng.below(20) {
        0 => return None,
        1..=3 => Body::SessionStart(pb::SessionStart {
            session: context(rng, sessions),
            operator_ref: text(rng, "op-1"),
            firmware: text(rng, "2.4.1"),
        }),
        4..=14 => {
            let n = match rng.below(40) {
                0 => 2_000 + rng.below(9_000),
                1 => 0,
                _ => 1 + rng.below(20),
            };
            Body::StrokeBatch(pb::StrokeBatch {
                session: context(rng, sessions),
                started_at: time(rng),
                samples: (0..n)
                    .map(|i| pb::StrokeSample {
                        offset_ms: if rng.chance(5) {
                            u32::MAX
                        } else {
                            i as u32 * 100
                        },
                        strokes: number(rng, 12),
                        depth_um: number(rng, 1200),
                        speed_hz: number(rng, 120),
                    })
                    .collect(),
            })
        }
        15..=16 => Body::SessionEnd(pb::SessionEnd {
            session: context(rng, sessions),
            ended_at: time(rng),
            total_strokes: if rng.chance(10) {
                u64::MAX
            } else {
                rng.below(100_000)
            },
            reason: if rng.chance(10) {
                rng.next() as i32
            } else {
                rng.below(5) as i32
            },
        }),
        _ => Body::Heartbeat(pb::Heartbeat {
            battery_pct: number(rng, 80),
            firmware: text(rng, "2.4.1"),
        }),
    })
}

/// The mutated messages, and the pens they name.
fn messages(seed: u64) -> Vec<pb::DeviceMessage> {
    let mut rng = Rng(seed | 1);
    let sessions: Vec<String> = (0..30).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut next_seq = vec![1u64; PENS as usize];
    (0..MESSAGES)
        .map(|_| {
            let pen = rng.below(PENS) as usize;
            let mut device_id = format!("fuzz-pen-{pen}");
            let seq = match rng.below(40) {
                0 => 0,
                1 => u64::MAX,
                2 => i64::MAX as u64 + 1,
                3 => next_seq[pen].saturating_sub(1 + rng.below(5)).max(1),
                4 => next_seq[pen] + 1 + rng.below(3),
                _ => {
                    next_seq[pen] += 1;
                    next_seq[pen] - 1
                }
            };
            match rng.below(60) {
                0 => device_id.clear(),
                1 => device_id.push_str("/up/#"),
                2 => device_id.push('\u{0}'),
                3 => device_id = "d".repeat(200),
                _ => {}
            }
            pb::DeviceMessage {
                device_id,
                seq,
                sent_at: time(&mut rng),
                body: body(&mut rng, &sessions),
            }
        })
        .collect()
}

/// A metric's value summed over its labels (0 when absent).
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| label.is_none_or(|want| l.contains(&format!("name=\"{want}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// Streams the fuzz to a server and checks every promise; returns the
/// message keys every ack covered, for the caller to find in the store.
async fn fuzz(server: &Server, gateway: &str, seed: u64) -> BTreeSet<(String, u64)> {
    let sent = messages(seed);
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = pentrace_proto::v1::telemetry_client::TelemetryClient::with_interceptor(
        channel,
        crate::helpers::TestApp::bearer(gateway),
    );
    let keys: HashSet<(String, u64)> = sent.iter().map(|m| (m.device_id.clone(), m.seq)).collect();
    let started = std::time::Instant::now();
    let down = exchange(&mut client, sent).await;
    assert!(
        down.end.is_ok(),
        "a bad message ended the stream: {:?}",
        down.end
    );
    let mut covered = BTreeSet::new();
    let mut unanswered = Vec::new();
    for (device, seq) in &keys {
        if down.covers(device, *seq) {
            covered.insert((device.clone(), *seq));
        } else if down
            .rejections
            .iter()
            .all(|r| !(&r.device_id == device && (r.seq == *seq || r.seq == 0)))
        {
            unanswered.push((device.clone(), *seq));
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of {} message keys got no answer, e.g. {:?}",
        unanswered.len(),
        keys.len(),
        &unanswered[..unanswered.len().min(5)]
    );
    let metrics = http_get(&format!("{}/metrics", server.http))
        .await
        .expect("metrics");
    let panics = metric(&metrics, "pentrace_ingest_retries_total", Some("panic"));
    let restarts = metric(
        &metrics,
        "pentrace_ingest_retries_total",
        Some("writer_restart"),
    );
    let quarantined = metric(
        &metrics,
        "pentrace_ingest_rejects_total",
        Some("quarantined"),
    );
    println!(
        "fuzz seed {seed}: {MESSAGES} messages, {} keys: {} covered by acks, {} rejections, \
         {quarantined} quarantined, {panics} panics, {:.1} s",
        keys.len(),
        covered.len(),
        down.rejections.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(panics, 0.0, "a message panicked the pipeline");
    assert_eq!(restarts, 0.0, "a writer died");
    let ready = http_get(&format!("{}/readyz", server.http)).await;
    assert!(ready.is_some(), "the server is not ready after the fuzz");
    covered
}

/// The seeds of the two stores' runs: two different fuzzes, each the same
/// every run.
fn seed(backend: Backend) -> u64 {
    match backend {
        Backend::Postgres => 0x5EED_0001,
        Backend::Sqlite => 0x5EED_0002,
    }
}

async fn fuzzed_messages_are_answered_never_panic_and_acks_cover_only_stored(backend: Backend) {
    let app = spawn_app(backend, &["--auto-register", "--no-mqtt"]).await;
    // The fuzzed pens join the default clinic as they appear; a gateway of
    // that clinic sends for them all.
    register(&app, "default", &[], &[], &[]).await;
    let gateway = pentrace_cli(
        &app.store,
        &[
            "device", "gateway", "--name", "gw-fuzz", "--clinic", "default",
        ],
    );
    let covered = fuzz(&app.server, gateway.trim(), seed(backend)).await;
    let stored: Vec<(String, i64)> = app
        .rows()
        .await
        .fetch("SELECT device_id, seq FROM device_messages")
        .await;
    let stored: HashSet<(String, u64)> = stored.into_iter().map(|(d, s)| (d, s as u64)).collect();
    let unstored: Vec<_> = covered.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(unstored.is_empty(), "acked but not stored: {unstored:?}");
}
