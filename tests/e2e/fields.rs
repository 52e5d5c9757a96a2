//! Issue 14, item 5: no request field is accepted and ignored. Every
//! Registry field is shown honoured (read back through the List RPCs, or by
//! its effect on the flags judged) or refused with INVALID_ARGUMENT naming
//! it; so are the Fleet and Compliance fields this issue changed, and enum
//! numbers the server does not know.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, Utc};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost_types::Timestamp;
use tonic::Code;

use pentrace_proto::v1::registry_client::RegistryClient;

use crate::helpers::{Authed, Backend, TestApp, exchange, register, spawn_app, ts};

crate::both_stores!(
    every_registry_entry_is_stored_as_registered_or_refused_by_field,
    a_lot_is_recalled_by_recall_lot_only_and_re_registering_keeps_the_recall,
    registry_limits_decide_the_flags,
    credential_request_fields_are_honoured_or_refused,
    fleet_and_compliance_refuse_unknown_enum_numbers_and_unusable_bounds,
);

/// Valid GTIN-14s, one product each.
const GTIN: &str = "09506000134352";
const GTIN_2: &str = "04012345000016";
const GTIN_SHALLOW: &str = "09506000134369";
const GTIN_RATED: &str = "09506000134376";
const GTIN_TIMED: &str = "09506000134383";
const GTIN_SHELF: &str = "09506000134390";

/// The status of a refused call, checked to be INVALID_ARGUMENT with a
/// message that starts with the field's name.
#[track_caller]
fn refused<T>(result: Result<T, tonic::Status>, field: &str) -> tonic::Status {
    let Err(status) = result else {
        panic!("a request with a bad {field} was accepted");
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(
        status.message().starts_with(field),
        "the refusal does not name {field}: {:?}",
        status.message()
    );
    status
}

fn clinic(id: &str, name: &str, time_zone: &str) -> pb::Clinic {
    pb::Clinic {
        clinic_id: id.into(),
        name: name.into(),
        time_zone: time_zone.into(),
    }
}

fn lot(gtin: &str, lot: &str, expiry: &str) -> pb::Lot {
    pb::Lot {
        gtin: gtin.into(),
        lot: lot.into(),
        expiry: expiry.into(),
        ..Default::default()
    }
}

/// A product with no limits but the ones a test sets.
fn product(gtin: &str) -> pb::Product {
    pb::Product {
        gtin: gtin.into(),
        name: format!("product {gtin}"),
        ..Default::default()
    }
}

fn yymmdd(d: NaiveDate) -> String {
    format!("{:02}{:02}{:02}", d.year() % 100, d.month(), d.day())
}

/// A pen sending whole sessions with consecutive seqs.
struct Pen {
    id: String,
    seq: u64,
    sent: Vec<pb::DeviceMessage>,
}

impl Pen {
    fn new(id: &str) -> Pen {
        Pen {
            id: id.into(),
            seq: 0,
            sent: Vec::new(),
        }
    }

    fn push(&mut self, body: Body) {
        self.seq += 1;
        self.sent.push(pb::DeviceMessage {
            device_id: self.id.clone(),
            seq: self.seq,
            sent_at: Some(ts(Utc::now())),
            body: Some(body),
        });
    }

    /// A session of `batches` batches, each 10 samples of 10 strokes 100 ms
    /// apart (100 strokes, 1 s active) at `depth_um`; returns its id.
    fn session(
        &mut self,
        udi: &str,
        started_at: DateTime<Utc>,
        batches: u32,
        depth: u32,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let context = pb::SessionContext {
            session_id: id.clone(),
            cartridge: Some(pb::Cartridge {
                udi: udi.into(),
                chip_uid: String::new(),
            }),
            area: pb::TreatmentArea::Cheeks as i32,
            skin: pb::SkinThickness::Thick as i32,
            patient_ref: "patient-1".into(),
            started_at: Some(ts(started_at)),
        };
        self.push(Body::SessionStart(pb::SessionStart {
            session: Some(context.clone()),
            operator_ref: "op-1".into(),
            firmware: "2.4.1".into(),
        }));
        for b in 0..batches {
            let samples = (0..10)
                .map(|i| pb::StrokeSample {
                    offset_ms: i * 100,
                    strokes: 10,
                    depth_um: depth,
                    speed_hz: 100,
                })
                .collect();
            self.push(Body::StrokeBatch(pb::StrokeBatch {
                session: Some(context.clone()),
                started_at: Some(ts(started_at + Span::seconds(i64::from(b)))),
                samples,
            }));
        }
        self.push(Body::SessionEnd(pb::SessionEnd {
            session: Some(context),
            ended_at: Some(ts(started_at + Span::seconds(i64::from(batches)))),
            total_strokes: u64::from(batches) * 100,
            reason: pb::EndReason::Completed as i32,
        }));
        id
    }
}

/// Streams the pens' messages through the clinic's gateway; every one must
/// be committed (acked) when the stream ends.
async fn send(app: &TestApp, clinic: &str, pens: &[&Pen]) {
    let mut client = app.telemetry_for(clinic).await;
    let messages = pens.iter().flat_map(|p| p.sent.clone()).collect();
    let down = exchange(&mut client, messages).await;
    assert!(down.end.is_ok(), "the stream ended with {:?}", down.end);
    assert!(down.rejections.is_empty(), "{:?}", down.rejections);
    for pen in pens {
        assert_eq!(down.watermark(&pen.id), pen.seq, "acks of {}", pen.id);
    }
}

async fn lots_of(r: &mut RegistryClient<Authed>, gtin: &str) -> Vec<pb::Lot> {
    let request = pb::ListLotsRequest { gtin: gtin.into() };
    r.list_lots(request).await.expect("lots").into_inner().lots
}

/// Every flag stored, as (kind, session id).
async fn flags(app: &TestApp) -> BTreeSet<(i32, String)> {
    let listed = app
        .compliance()
        .await
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("flags")
        .into_inner()
        .flags;
    let found: BTreeSet<_> = listed
        .iter()
        .map(|f| (f.kind, f.session_id.clone()))
        .collect();
    assert_eq!(found.len(), listed.len(), "no flag twice: {listed:#?}");
    found
}

async fn every_registry_entry_is_stored_as_registered_or_refused_by_field(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let mut r = app.registry().await;
    let clinic_request = |c: pb::Clinic| pb::RegisterClinicRequest { clinic: Some(c) };

    // Clinic: every field is kept; an empty name is the id, an empty time
    // zone UTC; registering again changes both.
    let f = clinic("clinic-f", "Fields Clinic", "Europe/Berlin");
    let stored = r.register_clinic(clinic_request(f.clone())).await;
    assert_eq!(stored.expect("clinic").into_inner(), f);
    let bare = r
        .register_clinic(clinic_request(clinic("clinic-g", "", "")))
        .await
        .expect("bare clinic")
        .into_inner();
    assert_eq!(bare, clinic("clinic-g", "clinic-g", "UTC"));
    let g = clinic("clinic-g", "G", "America/Argentina/Buenos_Aires");
    r.register_clinic(clinic_request(g.clone()))
        .await
        .expect("renamed");
    let listed = r
        .list_clinics(pb::ListClinicsRequest {})
        .await
        .expect("clinics")
        .into_inner()
        .clinics;
    assert_eq!(listed, vec![f.clone(), g.clone()]);
    refused(
        r.register_clinic(pb::RegisterClinicRequest { clinic: None })
            .await,
        "clinic",
    );
    let bad_clinics = [
        (clinic("", "No id", "UTC"), "clinic.clinic_id"),
        (clinic("clinic-h", "bell\u{7}", "UTC"), "clinic.name"),
        (clinic("clinic-h", "H", "Mars Time"), "clinic.time_zone"),
        (clinic("clinic-h", "H", "<b>UTC</b>"), "clinic.time_zone"),
    ];
    for (c, field) in bad_clinics {
        refused(r.register_clinic(clinic_request(c)).await, field);
    }

    // Device: every field is kept and shown by Fleet.ListDevices, whose
    // clinic filter follows a device that moved.
    let device_request = |d: pb::Device| pb::RegisterDeviceRequest { device: Some(d) };
    let pen = pb::Device {
        device_id: "pen-f".into(),
        clinic_id: "clinic-f".into(),
        model: "MT-Exceed".into(),
        max_depth_um: 1500,
    };
    let stored = r.register_device(device_request(pen.clone())).await;
    assert_eq!(stored.expect("device").into_inner(), pen);
    let moved = pb::Device {
        clinic_id: "clinic-g".into(),
        model: "SkinPen".into(),
        max_depth_um: 0,
        ..pen.clone()
    };
    let stored = r.register_device(device_request(moved.clone())).await;
    assert_eq!(stored.expect("moved").into_inner(), moved);
    let devices_of = |clinic: &str| pb::ListDevicesRequest {
        clinic_id: clinic.into(),
    };
    let mut fleet = app.fleet().await;
    let in_g = fleet.list_devices(devices_of("clinic-g")).await;
    let in_g: Vec<_> = in_g.expect("devices").into_inner().devices;
    assert_eq!(
        in_g.into_iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![Some(moved.clone())]
    );
    let in_f = fleet.list_devices(devices_of("clinic-f")).await;
    assert!(in_f.expect("devices").into_inner().devices.is_empty());
    refused(
        r.register_device(pb::RegisterDeviceRequest { device: None })
            .await,
        "device",
    );
    let no_id = pb::Device {
        device_id: String::new(),
        ..pen.clone()
    };
    refused(
        r.register_device(device_request(no_id)).await,
        "device.device_id",
    );
    // Held to the rule its messages are: one MQTT topic level, 64 bytes.
    for bad in ["pen/a", "pen+a", "pen#", &"p".repeat(65), "pen\u{7}"] {
        let id = pb::Device {
            device_id: bad.to_owned(),
            ..pen.clone()
        };
        refused(
            r.register_device(device_request(id)).await,
            "device.device_id",
        );
    }
    let no_clinic = pb::Device {
        clinic_id: " ".into(),
        ..pen.clone()
    };
    refused(
        r.register_device(device_request(no_clinic)).await,
        "device.clinic_id",
    );
    let unknown_clinic = pb::Device {
        clinic_id: "clinic-nowhere".into(),
        ..pen.clone()
    };
    let status = r
        .register_device(device_request(unknown_clinic))
        .await
        .expect_err("unknown clinic");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Product: every field is kept (their effects: registry_limits_…).
    let product_request = |p: pb::Product| pb::RegisterProductRequest { product: Some(p) };
    let nano = pb::Product {
        gtin: GTIN.into(),
        name: "Nano 12".into(),
        max_depth_um: 1200,
        rated_strokes: 5000,
        max_active_s: 600,
        shelf_life_days: 730,
    };
    let other = pb::Product {
        gtin: GTIN_2.into(),
        name: "Nano 36".into(),
        max_depth_um: 2500,
        rated_strokes: 0,
        max_active_s: 0,
        shelf_life_days: 365,
    };
    for p in [&nano, &other] {
        let stored = r.register_product(product_request(p.clone())).await;
        assert_eq!(&stored.expect("product").into_inner(), p);
    }
    let listed = r
        .list_products(pb::ListProductsRequest {})
        .await
        .expect("products")
        .into_inner()
        .products;
    assert_eq!(listed, vec![other.clone(), nano.clone()]);
    refused(
        r.register_product(pb::RegisterProductRequest { product: None })
            .await,
        "product",
    );
    for bad in ["0950600013435", "09506000134353", "0950600013435x"] {
        let p = pb::Product {
            gtin: bad.into(),
            ..nano.clone()
        };
        refused(r.register_product(product_request(p)).await, "product.gtin");
    }

    // Lot: gtin, lot and expiry are kept, an empty expiry is none (the
    // UDI's then applies); ListLots filters by GTIN. (The recall fields:
    // a_lot_is_recalled_by_recall_lot_only_….)
    let lot_request = |l: pb::Lot| pb::RegisterLotRequest { lot: Some(l) };
    let dated = lot(GTIN, "L-1", "2030-12-31");
    let undated = lot(GTIN_2, "L-2", "");
    for l in [&dated, &undated] {
        let stored = r.register_lot(lot_request(l.clone())).await;
        assert_eq!(&stored.expect("lot").into_inner(), l);
    }
    let lots = |gtin: &str| pb::ListLotsRequest { gtin: gtin.into() };
    let all = r.list_lots(lots("")).await.expect("lots").into_inner().lots;
    assert_eq!(all, vec![undated.clone(), dated.clone()]);
    let of_gtin = r.list_lots(lots(GTIN)).await.expect("lots").into_inner();
    assert_eq!(of_gtin.lots, vec![dated.clone()]);
    let cleared = lot(GTIN, "L-1", "");
    let stored = r.register_lot(lot_request(cleared.clone())).await;
    assert_eq!(stored.expect("re-registered").into_inner(), cleared);
    refused(
        r.register_lot(pb::RegisterLotRequest { lot: None }).await,
        "lot",
    );
    let bad_lots = [
        (lot("0950600013435", "L-1", ""), "lot.gtin"),
        (lot(GTIN, "", ""), "lot.lot"),
        (lot(GTIN, "L-1", "31.12.2030"), "lot.expiry"),
        (lot(GTIN, "L-1", "2030-02-30"), "lot.expiry"),
    ];
    for (l, field) in bad_lots {
        refused(r.register_lot(lot_request(l)).await, field);
    }
    let status = r
        .register_lot(lot_request(lot(GTIN_SHALLOW, "L-1", "")))
        .await
        .expect_err("a lot of an uncatalogued product");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

async fn a_lot_is_recalled_by_recall_lot_only_and_re_registering_keeps_the_recall(
    backend: Backend,
) {
    let app = spawn_app(backend, &[]).await;
    let today = Utc::now().date_naive();
    let expiry = yymmdd(today + Span::days(400));
    register(
        &app,
        "clinic-r",
        &[("pen-r", 0)],
        &[product(GTIN)],
        &[lot(GTIN, "L-R", "")],
    )
    .await;
    let mut pen = Pen::new("pen-r");
    let before = Utc::now() - Span::minutes(10);
    let used = pen.session(
        &format!("(01){GTIN}(17){expiry}(10)L-R(21)R-1"),
        before,
        1,
        800,
    );
    send(&app, "clinic-r", &[&pen]).await;
    assert!(flags(&app).await.is_empty());

    // Any recall field on RegisterLot is refused, naming it, and nothing
    // changes: no recall, no exposure flag.
    let mut r = app.registry().await;
    let recall_fields = [
        (
            pb::Lot {
                recalled: true,
                ..lot(GTIN, "L-R", "")
            },
            "lot.recalled",
        ),
        (
            pb::Lot {
                recalled_at: Some(ts(before - Span::days(1))),
                ..lot(GTIN, "L-R", "")
            },
            "lot.recalled_at",
        ),
        (
            pb::Lot {
                recall_reason: "sterility breach".into(),
                ..lot(GTIN, "L-R", "")
            },
            "lot.recall_reason",
        ),
    ];
    for (l, field) in recall_fields {
        let status = refused(
            r.register_lot(pb::RegisterLotRequest { lot: Some(l) })
                .await,
            field,
        );
        assert_eq!(
            status.message(),
            format!("{field} is output-only: call RecallLot to recall a lot")
        );
    }
    assert_eq!(lots_of(&mut r, GTIN).await, vec![lot(GTIN, "L-R", "")]);
    assert!(flags(&app).await.is_empty());

    // RecallLot's gtin, lot and reason are honoured: the recall is recorded
    // with the server's time and the past session is flagged.
    let recall = |reason: &str| pb::RecallLotRequest {
        gtin: GTIN.into(),
        lot: "L-R".into(),
        reason: reason.into(),
    };
    let asked = Utc::now();
    let answer = r
        .recall_lot(recall("sterility breach"))
        .await
        .expect("recall")
        .into_inner();
    assert_eq!(answer.exposure_flags_raised, 1);
    let recalled = answer.lot.expect("lot");
    assert!(recalled.recalled);
    assert_eq!(recalled.recall_reason, "sterility breach");
    let at = recalled.recalled_at.expect("recalled_at");
    assert!(at.seconds >= asked.timestamp() - 1, "{at:?} is not now");
    let exposure = (pb::FlagKind::RecallExposure as i32, used.clone());
    assert_eq!(flags(&app).await, BTreeSet::from([exposure.clone()]));

    // Re-registering the lot (a new expiry) keeps its recall as it was.
    let changed = lot(GTIN, "L-R", "2031-01-31");
    let stored = r
        .register_lot(pb::RegisterLotRequest {
            lot: Some(changed.clone()),
        })
        .await
        .expect("re-register")
        .into_inner();
    let kept = pb::Lot {
        expiry: "2031-01-31".into(),
        ..recalled.clone()
    };
    assert_eq!(stored, kept);
    assert_eq!(lots_of(&mut r, GTIN).await, vec![kept.clone()]);
    // Recalling again keeps the first recall and raises nothing new.
    let again = r
        .recall_lot(recall("another reason"))
        .await
        .expect("recall again")
        .into_inner();
    assert_eq!(again.lot, Some(kept));
    assert_eq!(again.exposure_flags_raised, 0);
    assert_eq!(flags(&app).await, BTreeSet::from([exposure]));

    let bad_recalls = [
        (
            pb::RecallLotRequest {
                gtin: "123".into(),
                ..recall("x")
            },
            "gtin",
        ),
        (
            pb::RecallLotRequest {
                lot: String::new(),
                ..recall("x")
            },
            "lot",
        ),
        (recall(""), "reason"),
    ];
    for (request, field) in bad_recalls {
        refused(r.recall_lot(request).await, field);
    }
    let unknown = pb::RecallLotRequest {
        lot: "L-NONE".into(),
        ..recall("x")
    };
    let status = r.recall_lot(unknown).await.expect_err("an unknown lot");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

async fn registry_limits_decide_the_flags(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let today = Utc::now().date_naive();
    let good = yymmdd(today + Span::days(400));
    let products = [
        product(GTIN),
        pb::Product {
            max_depth_um: 1000,
            ..product(GTIN_SHALLOW)
        },
        pb::Product {
            rated_strokes: 150,
            ..product(GTIN_RATED)
        },
        pb::Product {
            max_active_s: 1,
            ..product(GTIN_TIMED)
        },
        pb::Product {
            shelf_life_days: 30,
            ..product(GTIN_SHELF)
        },
    ];
    // Two days back: a session started 30 minutes ago is past it even just
    // after midnight.
    let expired = (today - Span::days(2)).to_string();
    let lots = [lot(GTIN, "L-EXP", &expired), lot(GTIN_SHELF, "L-S", "")];
    let pens = [
        ("pen-shallow", 1200),
        ("pen-default", 0),
        ("pen-product", 0),
        ("pen-rated", 0),
        ("pen-timed", 0),
        ("pen-shelf", 0),
        ("pen-lot", 0),
    ];
    register(&app, "clinic-l", &pens, &products, &lots).await;
    let labelled =
        |gtin: &str, lot: &str, serial: &str| format!("(01){gtin}(17){good}(10){lot}(21){serial}");
    let start = Utc::now() - Span::minutes(30);
    let kind = |k: pb::FlagKind, session: &String| (k as i32, session.clone());
    let mut expected = BTreeSet::new();

    // Device.max_depth_um: 1300 µm is too deep for a 1200 µm pen, not for
    // one with the default limit (2000 µm).
    let mut shallow = Pen::new("pen-shallow");
    let s = shallow.session(&labelled(GTIN, "L-OK", "D-1"), start, 1, 1300);
    expected.insert(kind(pb::FlagKind::DepthExceeded, &s));
    let mut free = Pen::new("pen-default");
    free.session(&labelled(GTIN, "L-OK", "D-2"), start, 1, 1300);
    // Product.max_depth_um lowers the pen's limit.
    let mut by_product = Pen::new("pen-product");
    let s = by_product.session(&labelled(GTIN_SHALLOW, "L-OK", "D-3"), start, 1, 1100);
    expected.insert(kind(pb::FlagKind::DepthExceeded, &s));
    // Product.rated_strokes: 200 strokes on a 150-stroke cartridge.
    let mut rated = Pen::new("pen-rated");
    let s = rated.session(&labelled(GTIN_RATED, "L-OK", "O-1"), start, 2, 800);
    expected.insert(kind(pb::FlagKind::CartridgeOverused, &s));
    // Product.max_active_s: 2 s of activity on a 1 s cartridge.
    let mut timed = Pen::new("pen-timed");
    let s = timed.session(&labelled(GTIN_TIMED, "L-OK", "O-2"), start, 2, 800);
    expected.insert(kind(pb::FlagKind::CartridgeOverused, &s));
    // Product.shelf_life_days: without (17) and a lot expiry, a cartridge
    // made 60 days ago is expired after 30 days; one made 10 days ago not.
    let made = |days: i64, serial: &str| {
        let produced = yymmdd(today - Span::days(days));
        format!("(01){GTIN_SHELF}(11){produced}(10)L-S(21){serial}")
    };
    let mut shelf = Pen::new("pen-shelf");
    let old = shelf.session(&made(60, "S-1"), start, 1, 800);
    let newer = shelf.session(&made(10, "S-2"), start + Span::minutes(5), 1, 800);
    expected.insert(kind(pb::FlagKind::CartridgeExpired, &old));
    // Lot.expiry: the lot's (two days ago) is earlier than the UDI's (17).
    let mut by_lot = Pen::new("pen-lot");
    let s = by_lot.session(&labelled(GTIN, "L-EXP", "E-1"), start, 1, 800);
    expected.insert(kind(pb::FlagKind::CartridgeExpired, &s));

    let all = [
        &shallow,
        &free,
        &by_product,
        &rated,
        &timed,
        &shelf,
        &by_lot,
    ];
    send(&app, "clinic-l", &all).await;
    assert_eq!(flags(&app).await, expected);

    // The query fields of ListSessions and ListFlags this issue checks are
    // honoured when usable: a period and a limit.
    let mut fleet = app.fleet().await;
    let sessions = |from: Option<DateTime<Utc>>, limit: u32| pb::ListSessionsRequest {
        device_id: "pen-shelf".into(),
        from: from.map(ts),
        to: None,
        limit,
    };
    let ids = |r: pb::ListSessionsResponse| -> Vec<String> {
        r.sessions.into_iter().map(|s| s.session_id).collect()
    };
    let both = fleet.list_sessions(sessions(None, 0)).await.expect("both");
    assert_eq!(ids(both.into_inner()), vec![newer.clone(), old.clone()]);
    let after = start + Span::minutes(1);
    let later = fleet.list_sessions(sessions(Some(after), 0)).await;
    assert_eq!(ids(later.expect("later").into_inner()), vec![newer.clone()]);
    let newest = fleet.list_sessions(sessions(None, 1)).await;
    assert_eq!(ids(newest.expect("newest").into_inner()), vec![newer]);
    let before_ts = pb::ListSessionsRequest {
        to: Some(ts(start + Span::minutes(1))),
        ..sessions(None, 10_000)
    };
    let earlier = fleet.list_sessions(before_ts).await.expect("earlier");
    assert_eq!(ids(earlier.into_inner()), vec![old]);
    let mut compliance = app.compliance().await;
    let flags_in = |from: DateTime<Utc>, kinds: Vec<i32>| pb::ListFlagsRequest {
        from: Some(ts(from)),
        kinds,
        limit: 50_000,
        ..Default::default()
    };
    let since_start = compliance
        .list_flags(flags_in(start, Vec::new()))
        .await
        .expect("flags since the start")
        .into_inner();
    assert_eq!(since_start.flags.len(), expected.len());
    let depth = vec![pb::FlagKind::DepthExceeded as i32];
    let deep = compliance
        .list_flags(flags_in(start, depth))
        .await
        .expect("depth flags")
        .into_inner();
    assert_eq!(deep.flags.len(), 2);
    let future = compliance
        .list_flags(flags_in(Utc::now() + Span::hours(1), Vec::new()))
        .await
        .expect("future flags")
        .into_inner();
    assert!(future.flags.is_empty());
}

async fn credential_request_fields_are_honoured_or_refused(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    register(&app, "clinic-c", &[("pen-c", 0)], &[], &[]).await;
    register(&app, "clinic-d", &[("pen-d", 0)], &[], &[]).await;
    let mut r = app.registry().await;
    let issue = |kind: i32, principal: &str, clinic: &str, replace: bool| {
        pb::IssueDeviceCredentialRequest {
            kind,
            principal: principal.into(),
            clinic_id: clinic.into(),
            replace,
        }
    };
    let pen_secret = pb::CredentialKind::PenSecret as i32;
    let gateway = pb::CredentialKind::GatewaySecret as i32;

    // kind and principal are honoured; a pen's clinic is its device's.
    let first = r
        .issue_device_credential(issue(pen_secret, "pen-c", "", false))
        .await
        .expect("pen secret")
        .into_inner();
    assert!(!first.secret.is_empty());
    let first = first.credential.expect("credential");
    assert_eq!(
        (
            first.kind,
            first.principal.as_str(),
            first.clinic_id.as_str()
        ),
        (pen_secret, "pen-c", "clinic-c")
    );
    // A clinic given for a pen is refused, even its own: it would be
    // dropped.
    for clinic in ["clinic-d", "clinic-c"] {
        refused(
            r.issue_device_credential(issue(pen_secret, "pen-c", clinic, false))
                .await,
            "clinic_id",
        );
    }
    // A gateway speaks for the clinic given.
    let gw = r
        .issue_device_credential(issue(gateway, "gw-d", "clinic-d", false))
        .await
        .expect("gateway")
        .into_inner()
        .credential
        .expect("credential");
    assert_eq!(
        (gw.kind, gw.principal.as_str(), gw.clinic_id.as_str()),
        (gateway, "gw-d", "clinic-d")
    );
    // replace revokes the principal's other credentials of the kind; its
    // absence keeps them.
    let second = r
        .issue_device_credential(issue(pen_secret, "pen-c", "", true))
        .await
        .expect("rotation")
        .into_inner();
    assert_eq!(
        second.revoked_credential_ids,
        vec![first.credential_id.clone()]
    );
    let third = r
        .issue_device_credential(issue(pen_secret, "pen-c", "", false))
        .await
        .expect("another")
        .into_inner();
    assert!(third.revoked_credential_ids.is_empty());
    let second = second.credential.expect("credential");
    let third = third.credential.expect("credential");
    // Unknown kinds: see fleet_and_compliance_refuse_unknown_enum_numbers_….

    // Revoke: the credential and the reason, which the audit trail keeps.
    let revoke = |id: &str, reason: &str| pb::RevokeDeviceCredentialRequest {
        credential_id: id.into(),
        reason: reason.into(),
    };
    let revoked = r
        .revoke_device_credential(revoke(&third.credential_id, "pen lost in transit"))
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.credential_id, third.credential_id);
    assert!(revoked.revoked_at.is_some());
    let audited = format!(
        "SELECT count(*) FROM audit_events WHERE action = 'device.credential_revoked' \
         AND subject_id = '{}' AND reason = 'pen lost in transit'",
        third.credential_id
    );
    assert_eq!(app.count(&audited).await, 1);
    refused(
        r.revoke_device_credential(revoke("not-a-uuid", "x")).await,
        "credential_id",
    );
    refused(
        r.revoke_device_credential(revoke(&second.credential_id, "bell\u{7}"))
            .await,
        "reason",
    );

    // ListDeviceCredentials' clinic filter.
    let list = |clinic: &str| pb::ListDeviceCredentialsRequest {
        clinic_id: clinic.into(),
    };
    let valid = |c: &pb::DeviceCredential| (c.credential_id.clone(), c.revoked_at.is_none());
    let of_c = r.list_device_credentials(list("clinic-c")).await;
    let of_c: BTreeSet<_> = of_c
        .expect("list")
        .into_inner()
        .credentials
        .iter()
        .map(valid)
        .collect();
    let want = BTreeSet::from([
        (first.credential_id.clone(), false),
        (second.credential_id.clone(), true),
        (third.credential_id.clone(), false),
    ]);
    assert_eq!(of_c, want);
    let of_d = r.list_device_credentials(list("clinic-d")).await;
    let of_d = of_d.expect("list").into_inner().credentials;
    assert_eq!(
        of_d.iter().map(valid).collect::<Vec<_>>(),
        vec![(gw.credential_id, true)]
    );
    let every = r.list_device_credentials(list("")).await;
    assert_eq!(every.expect("list").into_inner().credentials.len(), 4);
}

async fn fleet_and_compliance_refuse_unknown_enum_numbers_and_unusable_bounds(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    register(&app, "clinic-e", &[("pen-e", 0)], &[], &[]).await;
    let mut compliance = app.compliance().await;
    let mut fleet = app.fleet().await;
    let mut registry = app.registry().await;
    const UNKNOWN: i32 = 99;

    // Enum numbers the server does not know, and UNSPECIFIED, are refused:
    // never read as "any" or as some default.
    let list = |kinds: Vec<i32>, states: Vec<i32>| pb::ListFlagsRequest {
        kinds,
        states,
        ..Default::default()
    };
    let depth = pb::FlagKind::DepthExceeded as i32;
    for kinds in [vec![UNKNOWN], vec![0], vec![depth, UNKNOWN]] {
        refused(
            compliance.list_flags(list(kinds.clone(), Vec::new())).await,
            "kinds",
        );
        let watch = pb::WatchFlagsRequest {
            clinic_id: String::new(),
            kinds,
        };
        refused(compliance.watch_flags(watch).await, "kinds");
    }
    let open = pb::FlagState::Open as i32;
    for states in [vec![UNKNOWN], vec![0], vec![open, UNKNOWN]] {
        refused(
            compliance.list_flags(list(Vec::new(), states)).await,
            "states",
        );
    }
    let every_kind: Vec<i32> = (1..=12).collect();
    let every_state: Vec<i32> = (1..=3).collect();
    compliance
        .list_flags(list(every_kind, every_state))
        .await
        .expect("every known kind and state");
    let flag_id = uuid::Uuid::new_v4().to_string();
    for meaning in [0, UNKNOWN] {
        let action = pb::FlagActionRequest {
            flag_id: flag_id.clone(),
            meaning,
            reason: "checked".into(),
        };
        refused(compliance.acknowledge_flag(action.clone()).await, "meaning");
        refused(compliance.resolve_flag(action).await, "meaning");
    }
    for kind in [0, UNKNOWN] {
        let request = pb::IssueDeviceCredentialRequest {
            kind,
            principal: "pen-e".into(),
            clinic_id: String::new(),
            replace: false,
        };
        refused(registry.issue_device_credential(request).await, "kind");
    }

    // Period bounds that are not times both stores hold are refused by
    // name, not dropped (which would answer for every time).
    let unusable = [
        Timestamp {
            seconds: 0,
            nanos: -1,
        },
        Timestamp {
            seconds: 0,
            nanos: 1_000_000_000,
        },
        // 10000-01-01 and far beyond PostgreSQL's range.
        Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        },
        Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        },
        Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        },
    ];
    let sessions = pb::ListSessionsRequest {
        device_id: "pen-e".into(),
        ..Default::default()
    };
    for t in unusable {
        let from = pb::ListFlagsRequest {
            from: Some(t),
            ..Default::default()
        };
        refused(compliance.list_flags(from).await, "from");
        let to = pb::ListFlagsRequest {
            to: Some(t),
            ..Default::default()
        };
        refused(compliance.list_flags(to).await, "to");
        let from = pb::ListSessionsRequest {
            from: Some(t),
            ..sessions.clone()
        };
        refused(fleet.list_sessions(from).await, "from");
        let to = pb::ListSessionsRequest {
            to: Some(t),
            ..sessions.clone()
        };
        refused(fleet.list_sessions(to).await, "to");
    }
    // The widest period there is, is one.
    let widest = pb::ListSessionsRequest {
        from: Some(Timestamp {
            seconds: -62_135_596_800,
            nanos: 0,
        }),
        to: Some(Timestamp {
            seconds: 253_402_300_799,
            nanos: 999_999_999,
        }),
        ..sessions.clone()
    };
    fleet
        .list_sessions(widest)
        .await
        .expect("the widest period");

    // ListSessions has no page token: a limit it cannot honour is refused.
    let limit = |limit: u32| pb::ListSessionsRequest {
        limit,
        ..sessions.clone()
    };
    refused(fleet.list_sessions(limit(10_001)).await, "limit");
    fleet.list_sessions(limit(10_000)).await.expect("10000");
    refused(
        fleet
            .list_sessions(pb::ListSessionsRequest::default())
            .await,
        "device_id",
    );
}
