//! The ingest vertical slice end to end: several concurrent pens stream
//! sessions with every cartridge and depth fault; the test asserts exactly
//! the expected flags, the exact sample count, and that every seq was acked.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, Utc};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use tokio_stream::StreamExt;

use crate::helpers::{Backend, Downlinks, TestApp, eventually, exchange, register, spawn_app, ts};

crate::both_stores!(every_fault_is_flagged_exactly_once_and_every_sample_stored_once);

const GTIN: &str = "09506000134352";
/// A valid GTIN-14 that is not in the catalogue.
const UNKNOWN_GTIN: &str = "04012345000016";

/// One simulated pen: its id, its seq counter and the messages it sent.
pub(crate) struct Pen {
    pub(crate) id: String,
    pub(crate) seq: u64,
    pub(crate) sent: Vec<pb::DeviceMessage>,
    pub(crate) samples: u64,
}

/// A session a pen runs.
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) udi: String,
    pub(crate) area: pb::TreatmentArea,
    pub(crate) skin: pb::SkinThickness,
    pub(crate) patient: String,
    pub(crate) started_at: DateTime<Utc>,
}

impl Session {
    pub(crate) fn new(udi: &str, started_at: DateTime<Utc>) -> Session {
        Session {
            id: uuid::Uuid::new_v4().to_string(),
            udi: udi.into(),
            area: pb::TreatmentArea::Cheeks,
            skin: pb::SkinThickness::Thick,
            patient: "patient-hash-1".into(),
            started_at,
        }
    }

    pub(crate) fn context(&self) -> pb::SessionContext {
        pb::SessionContext {
            session_id: self.id.clone(),
            cartridge: Some(pb::Cartridge {
                udi: self.udi.clone(),
                chip_uid: String::new(),
            }),
            area: self.area as i32,
            skin: self.skin as i32,
            patient_ref: self.patient.clone(),
            started_at: Some(ts(self.started_at)),
        }
    }
}

impl Pen {
    pub(crate) fn new(id: &str) -> Pen {
        Pen {
            id: id.into(),
            seq: 0,
            sent: Vec::new(),
            samples: 0,
        }
    }

    pub(crate) fn push(&mut self, sent_at: DateTime<Utc>, body: Body) {
        self.seq += 1;
        self.sent.push(pb::DeviceMessage {
            device_id: self.id.clone(),
            seq: self.seq,
            sent_at: Some(ts(sent_at)),
            body: Some(body),
        });
    }

    /// A whole session: start, `batches` batches of 10 × 100 ms at `depth_um`,
    /// end. `skew` is how far the pen's clock is behind.
    pub(crate) fn session(&mut self, s: &Session, batches: u32, depth_um: u32, skew: Span) {
        let clock = |t: DateTime<Utc>| t - skew;
        self.push(
            clock(Utc::now()),
            Body::SessionStart(pb::SessionStart {
                session: Some(s.context()),
                operator_ref: "op-1".into(),
                firmware: "2.4.1".into(),
            }),
        );
        for b in 0..batches {
            let started_at = s.started_at + Span::seconds(i64::from(b));
            let samples = (0..10)
                .map(|i| pb::StrokeSample {
                    offset_ms: i * 100,
                    strokes: 10,
                    depth_um,
                    speed_hz: 100,
                })
                .collect();
            self.samples += 10;
            self.push(
                clock(Utc::now()),
                Body::StrokeBatch(pb::StrokeBatch {
                    session: Some(s.context()),
                    started_at: Some(ts(started_at)),
                    samples,
                }),
            );
        }
        let ended_at = s.started_at + Span::seconds(i64::from(batches));
        self.push(
            clock(Utc::now()),
            Body::SessionEnd(pb::SessionEnd {
                session: Some(s.context()),
                ended_at: Some(ts(ended_at)),
                total_strokes: u64::from(batches) * 100,
                reason: pb::EndReason::Completed as i32,
            }),
        );
    }
}

pub(crate) fn udi(gtin: &str, expiry: &str, lot: &str, serial: &str) -> String {
    format!("(01){gtin}(17){expiry}(10){lot}(21){serial}")
}

fn yymmdd(d: NaiveDate) -> String {
    format!("{:02}{:02}{:02}", d.year() % 100, d.month(), d.day())
}

/// `YYMM00`: day 00 = last day of the month.
fn yymm00(year: i32, month: u32) -> String {
    format!("{:02}{:02}00", year % 100, month)
}

/// Streams the messages over one gRPC stream and returns the last ack per
/// device.
pub(crate) async fn stream(
    app: &TestApp,
    messages: Vec<pb::DeviceMessage>,
) -> HashMap<String, u64> {
    let mut client = app.telemetry_for("clinic-a").await;
    watermarks(exchange(&mut client, messages).await)
}

/// The last watermark per device of a stream that must end cleanly,
/// without rejections.
fn watermarks(down: Downlinks) -> HashMap<String, u64> {
    assert!(down.end.is_ok(), "the stream ended with {:?}", down.end);
    assert!(
        down.rejections.is_empty(),
        "rejected: {:?}",
        down.rejections
    );
    let devices: BTreeSet<String> = down.acks.iter().map(|a| a.device_id.clone()).collect();
    devices
        .into_iter()
        .map(|d| {
            let w = down.watermark(&d);
            (d, w)
        })
        .collect()
}

/// The expected flags as (kind, session id).
type Expected = BTreeSet<(i32, String)>;

async fn every_fault_is_flagged_exactly_once_and_every_sample_stored_once(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let today = Utc::now().date_naive();
    let product = pb::Product {
        gtin: GTIN.into(),
        name: "Nano 12".into(),
        max_depth_um: 0,
        rated_strokes: 0,
        max_active_s: 0,
        shelf_life_days: 730,
    };
    let lots = ["L-OK", "L-RECALLED", "L-LATE"].map(|l| pb::Lot {
        gtin: GTIN.into(),
        lot: l.into(),
        ..Default::default()
    });
    let pens = [
        "pen-reuse",
        "pen-moved-a",
        "pen-moved-b",
        "pen-resume",
        "pen-expiry",
        "pen-recall",
        "pen-unknown",
        "pen-depth",
        "pen-area",
        "pen-skew",
        "pen-order",
        "pen-backfill",
    ];
    let devices: Vec<(&str, u32)> = pens
        .iter()
        .map(|p| (*p, if *p == "pen-depth" { 1500 } else { 0 }))
        .collect();
    register(&app, "clinic-a", &devices, &[product], &lots).await;
    let mut registry = app.registry().await;
    registry
        .recall_lot(pb::RecallLotRequest {
            gtin: GTIN.into(),
            lot: "L-RECALLED".into(),
            reason: "sterility breach".into(),
        })
        .await
        .expect("recall before");

    let mut watcher = app
        .compliance()
        .await
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let good_expiry = yymmdd(today + Span::days(400));
    let now = Utc::now();
    let mut expected = Expected::new();
    let flag = |kind: pb::FlagKind, s: &Session| (kind as i32, s.id.clone());

    // Reuse on the same device after the resume window (10 min).
    let mut reuse = Pen::new("pen-reuse");
    let first = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "R-1"),
        now - Span::minutes(40),
    );
    let again = Session::new(&first.udi, now - Span::minutes(20));
    reuse.session(&first, 3, 800, Span::zero());
    reuse.session(&again, 3, 800, Span::zero());
    expected.insert(flag(pb::FlagKind::CartridgeReused, &again));

    // A cartridge moved to another device is always reuse.
    let mut moved_a = Pen::new("pen-moved-a");
    let mut moved_b = Pen::new("pen-moved-b");
    let on_a = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "M-1"),
        now - Span::minutes(30),
    );
    let on_b = Session::new(&on_a.udi, now - Span::minutes(29));
    moved_a.session(&on_a, 2, 800, Span::zero());

    // A reboot mid-treatment inside the window is a resume, not a reuse.
    let mut resume = Pen::new("pen-resume");
    let before = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "S-1"),
        now - Span::minutes(30),
    );
    let after = Session::new(
        &before.udi,
        now - Span::minutes(30) + Span::seconds(3) + Span::minutes(5),
    );
    resume.session(&before, 3, 800, Span::zero());
    resume.session(&after, 3, 800, Span::zero());
    expected.insert(flag(pb::FlagKind::SessionResumed, &after));

    // Expired (17), a day-00 expiry last month (expired) and this month
    // (valid through the month's last day), judged on the session's day.
    let mut expiry = Pen::new("pen-expiry");
    let start = now - Span::minutes(50);
    let day = start.date_naive();
    let expired = Session::new(
        &udi(GTIN, &yymmdd(day - Span::days(3)), "L-OK", "E-1"),
        start,
    );
    let last_month = day.with_day(1).expect("first of month") - Span::days(1);
    let past_00 = yymm00(last_month.year(), last_month.month());
    let day00_past = Session::new(
        &udi(GTIN, &past_00, "L-OK", "E-2"),
        start + Span::minutes(1),
    );
    let day00_now = Session::new(
        &udi(GTIN, &yymm00(day.year(), day.month()), "L-OK", "E-3"),
        start,
    );
    expiry.session(&expired, 1, 800, Span::zero());
    expiry.session(&day00_past, 1, 800, Span::zero());
    expiry.session(&day00_now, 1, 800, Span::zero());
    expected.insert(flag(pb::FlagKind::CartridgeExpired, &expired));
    expected.insert(flag(pb::FlagKind::CartridgeExpired, &day00_past));

    // A lot recalled before use, and one recalled after its sessions.
    let mut recall = Pen::new("pen-recall");
    // Started after the recall was registered.
    let recalled = Session::new(&udi(GTIN, &good_expiry, "L-RECALLED", "C-1"), now);
    let late_1 = Session::new(
        &udi(GTIN, &good_expiry, "L-LATE", "C-2"),
        now - Span::minutes(9),
    );
    let late_2 = Session::new(
        &udi(GTIN, &good_expiry, "L-LATE", "C-3"),
        now - Span::minutes(8),
    );
    recall.session(&recalled, 1, 800, Span::zero());
    recall.session(&late_1, 1, 800, Span::zero());
    recall.session(&late_2, 1, 800, Span::zero());
    expected.insert(flag(pb::FlagKind::CartridgeRecalled, &recalled));
    expected.insert(flag(pb::FlagKind::RecallExposure, &late_1));
    expected.insert(flag(pb::FlagKind::RecallExposure, &late_2));

    // Unknown GTIN and an invalid UDI (wrong check digit).
    let mut unknown = Pen::new("pen-unknown");
    let counterfeit = Session::new(
        &udi(UNKNOWN_GTIN, &good_expiry, "X", "U-1"),
        now - Span::minutes(10),
    );
    let garbled = Session::new(
        &udi("09506000134353", &good_expiry, "L-OK", "U-2"),
        now - Span::minutes(9),
    );
    unknown.session(&counterfeit, 1, 800, Span::zero());
    unknown.session(&garbled, 1, 800, Span::zero());
    expected.insert(flag(pb::FlagKind::CartridgeUnknown, &counterfeit));
    expected.insert(flag(pb::FlagKind::UdiInvalid, &garbled));

    // Depth beyond the device's own limit (1.5 mm), inside the area guidance.
    let mut depth = Pen::new("pen-depth");
    let deep = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "D-1"),
        now - Span::minutes(10),
    );
    depth.session(&deep, 2, 1800, Span::zero());
    expected.insert(flag(pb::FlagKind::DepthExceeded, &deep));

    // Deeper than the forehead guidance (thin skin: 0.5 mm), within limits.
    let mut area = Pen::new("pen-area");
    let mut forehead = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "A-1"),
        now - Span::minutes(10),
    );
    forehead.area = pb::TreatmentArea::Forehead;
    forehead.skin = pb::SkinThickness::Thin;
    area.session(&forehead, 2, 800, Span::zero());
    expected.insert(flag(pb::FlagKind::DepthAboveAreaGuidance, &forehead));

    // A pen whose clock is an hour behind: flagged once, data kept.
    let mut skew = Pen::new("pen-skew");
    let skewed = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "K-1"),
        now - Span::minutes(70),
    );
    skew.session(&skewed, 3, 800, Span::hours(1));
    expected.insert(flag(pb::FlagKind::ClockSkew, &skewed));

    // Out of order and duplicated: reversed, with every message twice.
    let mut order = Pen::new("pen-order");
    let shuffled = Session::new(
        &udi(GTIN, &good_expiry, "L-OK", "O-1"),
        now - Span::minutes(10),
    );
    order.session(&shuffled, 4, 800, Span::zero());

    // A pen offline for three days uploads its backlog: judged like live data.
    let mut backfill = Pen::new("pen-backfill");
    let old = Session::new(&udi(GTIN, &good_expiry, "L-OK", "B-1"), now - Span::days(3));
    backfill.session(&old, 2, 800, Span::zero());

    // Several concurrent clients.
    let mut reversed = order.sent.clone();
    reversed.reverse();
    let doubled: Vec<_> = reversed.iter().chain(order.sent.iter()).cloned().collect();
    let streams = vec![
        [reuse.sent.clone(), moved_a.sent.clone()].concat(),
        [
            resume.sent.clone(),
            expiry.sent.clone(),
            recall.sent.clone(),
        ]
        .concat(),
        [unknown.sent.clone(), depth.sent.clone(), area.sent.clone()].concat(),
        [skew.sent.clone(), doubled, backfill.sent.clone()].concat(),
    ];
    let results = futures_join(&app, streams).await;
    // The moved cartridge is presented on B after A's session is committed.
    moved_b.session(&on_b, 2, 800, Span::zero());
    let b_acks = stream(&app, moved_b.sent.clone()).await;
    expected.insert(flag(pb::FlagKind::CartridgeReused, &on_b));

    let late = registry
        .recall_lot(pb::RecallLotRequest {
            gtin: GTIN.into(),
            lot: "L-LATE".into(),
            reason: "supplier notice".into(),
        })
        .await
        .expect("recall after")
        .into_inner();
    assert_eq!(late.exposure_flags_raised, 2);

    // Every seq sent was acknowledged.
    let all = [
        &reuse, &moved_a, &resume, &expiry, &recall, &unknown, &depth, &area, &skew, &order,
        &backfill,
    ];
    let mut acked: HashMap<String, u64> = results.into_iter().flatten().collect();
    acked.extend(b_acks);
    for pen in all.iter().copied().chain([&moved_b]) {
        assert_eq!(
            acked.get(&pen.id),
            Some(&pen.seq),
            "final ack of {}",
            pen.id
        );
    }

    // Exactly the expected flags, no more, no fewer.
    let listed = app
        .compliance()
        .await
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("flags")
        .into_inner()
        .flags;
    let found: Expected = listed
        .iter()
        .map(|f| (f.kind, f.session_id.clone()))
        .collect();
    assert_eq!(listed.len(), found.len(), "no flag twice: {listed:#?}");
    assert_eq!(found, expected, "flags differ: {listed:#?}");

    // The live feed delivered the same flags.
    let mut watched = BTreeSet::new();
    while watched.len() < expected.len() {
        let f = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("watch feed")
            .expect("open")
            .expect("flag");
        watched.insert((f.kind, f.session_id));
    }
    assert_eq!(watched, expected);

    // Every sample exactly once.
    let pens_samples: u64 = all.iter().map(|p| p.samples).sum::<u64>() + moved_b.samples;
    assert_eq!(
        app.count("SELECT count(*) FROM stroke_samples").await as u64,
        pens_samples
    );
    let messages: u64 = all.iter().map(|p| p.seq).sum::<u64>() + moved_b.seq;
    assert_eq!(
        app.count("SELECT count(*) FROM device_messages").await as u64,
        messages
    );

    // The fleet view and the lookback answer from what was stored.
    let fleet = app
        .fleet()
        .await
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .expect("fleet")
        .into_inner();
    assert_eq!(fleet.devices.len(), pens.len());
    let lookback = app
        .compliance()
        .await
        .lot_lookback(pb::LotLookbackRequest {
            gtin: GTIN.into(),
            lot: "L-LATE".into(),
        })
        .await
        .expect("lookback")
        .into_inner();
    let ids: BTreeSet<_> = lookback
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    assert_eq!(ids, BTreeSet::from([late_1.id.clone(), late_2.id.clone()]));
    let history = app
        .compliance()
        .await
        .cartridge_history(pb::CartridgeHistoryRequest {
            cartridge: first.udi.clone(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.bound_session_id, first.id);
    assert_eq!(history.sessions.len(), 2);

    eventually(Duration::from_secs(5), "readyz", || async {
        http_get(&format!("{}/readyz", app.http))
            .await
            .is_some_and(|b| b.starts_with("ready"))
    })
    .await;
}

/// Runs the streams concurrently, one client each.
async fn futures_join(
    app: &TestApp,
    streams: Vec<Vec<pb::DeviceMessage>>,
) -> Vec<HashMap<String, u64>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, messages) in streams.into_iter().enumerate() {
        let mut client = app.telemetry_for("clinic-a").await;
        tasks.spawn(async move {
            let down = exchange(&mut client, messages).await;
            assert!(down.end.is_ok(), "stream {i} ended with {:?}", down.end);
            watermarks(down)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("stream task"));
    }
    out
}

/// A minimal HTTP GET over a TCP socket: one probe needs no HTTP client crate.
pub async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
