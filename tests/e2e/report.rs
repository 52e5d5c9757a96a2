//! `pentrace report` over a simulated month: two clinics stream a month of
//! backfilled sessions (some with cartridge and depth faults), a compliance
//! officer signs some flags, and the reports must hold exactly the clinic's
//! sessions and flags of the period, parse back to the database's counts,
//! carry a footer hash that recomputes, and be recorded in the audit trail.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, Utc};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, pentrace_cli, register, spawn_app, ts, user_token};

crate::both_stores!(a_months_report_holds_exactly_the_clinics_sessions_and_flags);

const GTIN: &str = "09506000134352";
/// A valid GTIN-14 that is not in the catalogue.
const UNKNOWN_GTIN: &str = "04012345000016";
const LOT: &str = "L-MONTH";

/// One session to simulate.
struct Planned {
    id: String,
    device: String,
    udi: String,
    started_at: DateTime<Utc>,
    depth_um: u32,
}

/// A pen's messages, seq from 1, in the order it sends them.
#[derive(Default)]
struct Pen {
    seq: u64,
    messages: Vec<pb::DeviceMessage>,
}

impl Pen {
    fn push(&mut self, device: &str, body: Body) {
        self.seq += 1;
        self.messages.push(pb::DeviceMessage {
            device_id: device.into(),
            seq: self.seq,
            // Sent now, recorded in the past: a pen uploading its backlog.
            sent_at: Some(ts(Utc::now())),
            body: Some(body),
        });
    }

    /// Start, three batches of 10 × 100 ms, end.
    fn session(&mut self, s: &Planned) {
        let context = pb::SessionContext {
            session_id: s.id.clone(),
            cartridge: Some(pb::Cartridge {
                udi: s.udi.clone(),
                chip_uid: String::new(),
            }),
            area: pb::TreatmentArea::Cheeks as i32,
            skin: pb::SkinThickness::Thick as i32,
            patient_ref: format!("patient-{}", &s.id[..8]),
            started_at: Some(ts(s.started_at)),
        };
        self.push(
            &s.device,
            Body::SessionStart(pb::SessionStart {
                session: Some(context.clone()),
                operator_ref: "op-1".into(),
                firmware: "2.4.1".into(),
            }),
        );
        for b in 0..3 {
            let samples = (0..10)
                .map(|i| pb::StrokeSample {
                    offset_ms: i * 100,
                    strokes: 10,
                    depth_um: s.depth_um,
                    speed_hz: 100,
                })
                .collect();
            self.push(
                &s.device,
                Body::StrokeBatch(pb::StrokeBatch {
                    session: Some(context.clone()),
                    started_at: Some(ts(s.started_at + Span::seconds(b))),
                    samples,
                }),
            );
        }
        self.push(
            &s.device,
            Body::SessionEnd(pb::SessionEnd {
                session: Some(context),
                ended_at: Some(ts(s.started_at + Span::seconds(3))),
                total_strokes: 300,
                reason: pb::EndReason::Completed as i32,
            }),
        );
    }
}

fn udi(gtin: &str, expiry: NaiveDate, serial: &str) -> String {
    let yymmdd = format!(
        "{:02}{:02}{:02}",
        expiry.year() % 100,
        expiry.month(),
        expiry.day()
    );
    format!("(01){gtin}(17){yymmdd}(10){LOT}(21){serial}")
}

/// A clinic's month: `count` sessions going back from `newest`, `step`
/// apart, round-robin over `pens`; every few sessions one has a fault
/// (depth, a reused cartridge, an expired one, an unknown product).
fn plan(
    prefix: &str,
    pens: &[&str],
    count: usize,
    newest: DateTime<Utc>,
    step: Span,
) -> Vec<Planned> {
    let good = Utc::now().date_naive() + Span::days(400);
    let mut planned: Vec<Planned> = (0..count)
        .map(|i| {
            let started_at = newest - step * i as i32;
            let serial = format!("{prefix}-{i}");
            let (gtin, expiry) = match i % 11 {
                5 => (GTIN, started_at.date_naive() - Span::days(10)),
                8 => (UNKNOWN_GTIN, good),
                _ => (GTIN, good),
            };
            Planned {
                id: uuid::Uuid::new_v4().to_string(),
                device: pens[i % pens.len()].into(),
                udi: udi(gtin, expiry, &serial),
                started_at,
                depth_um: if i % 7 == 3 { 2500 } else { 800 },
            }
        })
        .collect();
    // A cartridge presented again on the same pen, one round later: the
    // older session owns it, the newer one is a reuse.
    for i in (0..count).filter(|i| i % 9 == 2) {
        if let Some(older) = planned.get(i + pens.len()).map(|p| p.udi.clone()) {
            planned[i].udi = older;
        }
    }
    planned
}

/// Streams each pen's sessions oldest first, one gRPC stream per pen, and
/// waits for every ack.
async fn stream_all(app: &TestApp, planned: &[Planned]) {
    let mut pens: HashMap<&str, Pen> = HashMap::new();
    let mut oldest_first: Vec<&Planned> = planned.iter().collect();
    oldest_first.sort_by_key(|p| p.started_at);
    for p in oldest_first {
        pens.entry(&p.device).or_default().session(p);
    }
    for (device, pen) in pens {
        // Each pen on its own credential.
        let mut client = app.telemetry_with(&app.pen_secret(device).await).await;
        let down = crate::helpers::exchange(&mut client, pen.messages).await;
        assert!(down.end.is_ok(), "{:?}", down.end);
        assert_eq!(
            down.watermark(device),
            pen.seq,
            "every message of {device} committed"
        );
    }
}

/// Checks the footer's seal: the last line names the SHA-256 and length of
/// every byte before it. Returns the hash.
fn check_seal(text: &str) -> String {
    assert!(text.ends_with('\n'), "a report ends with a line break");
    let body_len = text[..text.len() - 1].rfind('\n').expect("a body") + 1;
    let digest = hex::encode(Sha256::digest(&text.as_bytes()[..body_len]));
    let footer = &text[body_len..];
    assert!(footer.contains(&digest), "footer {footer:?} names {digest}");
    assert!(
        footer.contains(&format!("first {body_len} bytes")),
        "footer {footer:?} says what it hashes"
    );
    digest
}

/// The ids of the pens' sessions started in [from, to), by Fleet.ListSessions.
async fn sessions_started(
    app: &TestApp,
    pens: &[&str],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for pen in pens {
        let sessions = app
            .fleet()
            .await
            .list_sessions(pb::ListSessionsRequest {
                device_id: (*pen).into(),
                from: Some(ts(from)),
                to: Some(ts(to)),
                limit: 10_000,
            })
            .await
            .expect("sessions")
            .into_inner()
            .sessions;
        ids.extend(sessions.into_iter().map(|s| s.session_id));
    }
    ids
}

/// Flags by Compliance.ListFlags (fewer than one page).
async fn flags(app: &TestApp, request: pb::ListFlagsRequest) -> Vec<pb::Flag> {
    let response = app
        .compliance()
        .await
        .list_flags(request)
        .await
        .expect("flags")
        .into_inner();
    assert!(response.next_page_token.is_empty(), "one page");
    response.flags
}

async fn exported_events(app: &TestApp, chain: &str, sha256: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) FROM audit_events WHERE clinic_id = '{chain}' \
         AND action = 'report.exported' AND subject_type = 'report' \
         AND new_value LIKE '%{sha256}%'"
    ))
    .await
}

/// Signs `flag` with the officer's token.
async fn sign(app: &TestApp, token: &str, flag: &str, resolve: bool, reason: &str) {
    let request = pb::FlagActionRequest {
        flag_id: flag.into(),
        meaning: if resolve {
            pb::SignatureMeaning::Approved
        } else {
            pb::SignatureMeaning::Reviewed
        } as i32,
        reason: reason.into(),
    };
    let mut compliance = app.compliance_as(token).await;
    let result = if resolve {
        compliance.resolve_flag(request).await
    } else {
        compliance.acknowledge_flag(request).await
    };
    result.expect("signed");
}

async fn a_months_report_holds_exactly_the_clinics_sessions_and_flags(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let product = pb::Product {
        gtin: GTIN.into(),
        name: "Nano 12".into(),
        shelf_life_days: 730,
        ..Default::default()
    };
    let lot = pb::Lot {
        gtin: GTIN.into(),
        lot: LOT.into(),
        ..Default::default()
    };
    let a_pens = ["pen-a1", "pen-a2", "pen-a3"];
    let b_pens = ["pen-b1", "pen-b2"];
    register(
        &app,
        "clinic-a",
        &a_pens.map(|p| (p, 0)),
        &[product],
        &[lot],
    )
    .await;
    register(&app, "clinic-b", &b_pens.map(|p| (p, 0)), &[], &[]).await;

    // The period: 29 whole UTC days ending yesterday. Clinic A's sessions
    // run from 2 h ago back over ~33 days, so some fall after the period
    // and some before it; B's run over the same month.
    let now = Utc::now();
    let today = now.date_naive();
    let (from, to) = (today - Span::days(30), today - Span::days(1));
    let (start, end) = (
        from.and_hms_opt(0, 0, 0).unwrap().and_utc(),
        to.and_hms_opt(0, 0, 0).unwrap().and_utc(),
    );
    let a = plan("A", &a_pens, 40, now - Span::hours(2), Span::hours(20));
    let b = plan("B", &b_pens, 12, now - Span::hours(5), Span::hours(60));
    stream_all(&app, &a).await;
    stream_all(&app, &b).await;

    let in_period: BTreeSet<String> = a
        .iter()
        .filter(|p| p.started_at >= start && p.started_at < end)
        .map(|p| p.id.clone())
        .collect();
    assert!(in_period.len() > 20 && in_period.len() < a.len());
    let stored = sessions_started(&app, &a_pens, start, end).await;
    assert_eq!(
        stored, in_period,
        "every planned session of the period is stored"
    );
    // Flags are raised at ingest (today), after the period: the ones in the
    // report are exactly those of the period's sessions.
    let a_flags = flags(
        &app,
        pb::ListFlagsRequest {
            clinic_id: "clinic-a".into(),
            ..Default::default()
        },
    )
    .await;
    let flags_in_period: BTreeSet<String> = a_flags
        .iter()
        .filter(|f| stored.contains(&f.session_id))
        .map(|f| f.flag_id.clone())
        .collect();
    let raised_before_the_end = flags(
        &app,
        pb::ListFlagsRequest {
            to: Some(ts(end)),
            ..Default::default()
        },
    )
    .await;
    assert!(
        raised_before_the_end.is_empty(),
        "{raised_before_the_end:?}"
    );
    let all_flags = flags(&app, pb::ListFlagsRequest::default()).await;
    assert!(
        all_flags.iter().all(|f| !f.session_id.is_empty()),
        "every flag is of a session: {all_flags:?}"
    );
    assert!(flags_in_period.len() >= 5, "{flags_in_period:?}");
    assert!(
        a_flags.len() > flags_in_period.len(),
        "some of A's flags are outside"
    );
    let b_flags = flags(
        &app,
        pb::ListFlagsRequest {
            clinic_id: "clinic-b".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!b_flags.is_empty());

    // A compliance officer signs two of the period's flags; the reasons
    // carry what CSV and HTML must quote and escape.
    let officer = user_token(
        &app.store,
        "Carla Compliance",
        "compliance_officer",
        &["clinic-a"],
    );
    let mut flags = flags_in_period.iter();
    let (first, second) = (flags.next().unwrap(), flags.next().unwrap());
    let awkward = "Pen checked, cartridge \"discarded\";\nnew one issued";
    let hostile = "Resolved <script>alert('x')</script> & closed";
    sign(&app, &officer, first, false, awkward).await;
    sign(&app, &officer, second, false, "Reviewed with the operator").await;
    sign(&app, &officer, second, true, hostile).await;

    let (from_arg, to_arg) = (from.to_string(), to.to_string());
    let sterility = |format: &'static str| {
        vec![
            "report",
            "sterility",
            "--clinic",
            "clinic-a",
            "--from",
            from_arg.as_str(),
            "--to",
            to_arg.as_str(),
            "--format",
            format,
        ]
    };

    // CSV: parses back to the database's sets and counts, nothing of B.
    let csv_text = pentrace_cli(&app.store, &sterility("csv"));
    let csv_sha = check_seal(&csv_text);
    for b_thing in ["clinic-b", "pen-b"]
        .into_iter()
        .chain(b.iter().map(|p| p.id.as_str()))
    {
        assert!(!csv_text.contains(b_thing), "the report shows {b_thing}");
    }
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().expect("header").clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    let of = |kind: &str| rows.iter().filter(|r| &r[0] == kind).collect::<Vec<_>>();
    let sessions: BTreeSet<String> = of("session")
        .iter()
        .map(|r| r[col("session_id")].to_owned())
        .collect();
    assert_eq!(of("session").len(), stored.len());
    assert_eq!(sessions, stored);
    let flag_ids: BTreeSet<String> = of("flag")
        .iter()
        .map(|r| r[col("flag_id")].to_owned())
        .collect();
    assert_eq!(of("flag").len(), flags_in_period.len());
    assert_eq!(flag_ids, flags_in_period);
    let actions = of("action");
    assert_eq!(
        actions.len() as i64,
        app.count("SELECT count(*) FROM flag_actions").await
    );
    assert!(
        actions
            .iter()
            .all(|r| &r[col("signer_name")] == "Carla Compliance")
    );
    let reasons: BTreeSet<&str> = actions.iter().map(|r| &r[col("reason")]).collect();
    assert!(reasons.contains(awkward) && reasons.contains(hostile));
    let second_state = of("flag")
        .iter()
        .find(|r| &r[col("flag_id")] == second.as_str())
        .map(|r| r[col("state")].to_owned());
    assert_eq!(second_state.as_deref(), Some("resolved"));
    let audit = of("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(&audit[0][col("status")], "OK");
    assert_eq!(of("footer")[0][col("sha256")], csv_sha);
    assert_eq!(exported_events(&app, "clinic-a", &csv_sha).await, 1);

    // JSON: one object with the same contents.
    let json_text = pentrace_cli(&app.store, &sterility("json"));
    let json_sha = check_seal(&json_text);
    let json: serde_json::Value = serde_json::from_str(&json_text).expect("one JSON object");
    let report = &json["report"];
    assert_eq!(report["sessions"].as_array().unwrap().len(), stored.len());
    assert_eq!(
        report["flags"].as_array().unwrap().len(),
        flags_in_period.len()
    );
    assert_eq!(report["audit"]["status"], "OK");
    assert_eq!(json["footer"]["sha256"], json_sha.as_str());
    assert_eq!(exported_events(&app, "clinic-a", &json_sha).await, 1);

    // HTML, to a file: no scripts, escaped values, every session listed.
    let out = app.store.data_dir.join("report.html");
    let mut args = sterility("html");
    let out_arg = out.display().to_string();
    args.extend(["--out", out_arg.as_str()]);
    assert_eq!(
        pentrace_cli(&app.store, &args),
        "",
        "with --out, stdout stays empty"
    );
    let html = std::fs::read_to_string(&out).expect("HTML report");
    let _ = std::fs::remove_file(&out);
    let html_sha = check_seal(&html);
    assert!(!html.to_ascii_lowercase().contains("<script"));
    assert!(html.contains("@page { size: A4;"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; closed"));
    assert!(stored.iter().all(|id| html.contains(id.as_str())));
    assert!(!html.contains("pen-b") && !html.contains("clinic-b"));
    assert_eq!(exported_events(&app, "clinic-a", &html_sha).await, 1);

    // The lot lookback spans both clinics and goes to the global chain.
    let lot_text = pentrace_cli(
        &app.store,
        &[
            "report", "lot", "--gtin", GTIN, "--lot", LOT, "--format", "csv",
        ],
    );
    let lot_sha = check_seal(&lot_text);
    let mut reader = csv::Reader::from_reader(lot_text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    let count = |kind: &str| rows.iter().filter(|r| &r[0] == kind).count() as i64;
    let lookback = app
        .compliance()
        .await
        .lot_lookback(pb::LotLookbackRequest {
            gtin: GTIN.into(),
            lot: LOT.into(),
        })
        .await
        .expect("lookback")
        .into_inner();
    assert_eq!(count("session"), lookback.sessions.len() as i64);
    assert_eq!(count("clinic"), 2);
    assert_eq!(count("device"), (a_pens.len() + b_pens.len()) as i64);
    assert_eq!(exported_events(&app, "*", &lot_sha).await, 1);
    let lot_html = pentrace_cli(
        &app.store,
        &[
            "report", "lot", "--gtin", GTIN, "--lot", LOT, "--format", "html",
        ],
    );
    check_seal(&lot_html);
    assert!(!lot_html.to_ascii_lowercase().contains("<script"));
    assert!(lot_html.contains("Clinics (2)") && lot_html.contains("clinic-b"));

    // The exports extended the chains, which still verify.
    pentrace_cli(&app.store, &["audit", "verify"]);
}
