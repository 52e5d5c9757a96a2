//! The delivery contract end to end (proto/pentrace/v1/device.proto): an
//! ack covers exactly the stored seqs, whichever stream carried them; a
//! message the store refuses is quarantined, acknowledged and listed; gRPC
//! pens are told to stop using a reused cartridge, as MQTT pens are.

use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost::Message;

use crate::helpers::{Backend, exchange, pentrace_cli, register, spawn_app};
use crate::ingest::http_get;
use crate::mqtt::{heartbeat, session_start};

crate::both_stores!(
    an_ack_covers_exactly_what_is_stored_whichever_stream_carried_it,
    a_message_the_store_refuses_is_quarantined_acknowledged_and_listed,
    a_grpc_pen_is_told_to_stop_using_a_reused_cartridge,
);

async fn an_ack_covers_exactly_what_is_stored_whichever_stream_carried_it(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;
    let mut client = app.telemetry_for("clinic-a").await;
    // Seq 3 is lost on the way: 4 and 5 are acknowledged on their own, the
    // watermark stays at 2, and 3 is never covered.
    let down = exchange(
        &mut client,
        [1, 2, 4, 5].map(|s| heartbeat("pen-1", s)).to_vec(),
    )
    .await;
    assert!(down.end.is_ok(), "{:?}", down.end);
    assert_eq!(down.watermark("pen-1"), 2);
    for seq in [1, 2, 4, 5] {
        assert!(down.covers("pen-1", seq), "{seq} is stored");
    }
    assert!(!down.covers("pen-1", 3), "3 was never received");
    // The pen resends 3 on another stream: the watermark, kept in the
    // database, moves over everything stored.
    let down = exchange(&mut client, vec![heartbeat("pen-1", 3)]).await;
    assert_eq!(down.watermark("pen-1"), 5);
    // A copy of a stored seq is acknowledged again and stored once.
    let down = exchange(&mut client, vec![heartbeat("pen-1", 4)]).await;
    assert!(down.covers("pen-1", 4));
    assert_eq!(app.stored("pen-1").await, 5);
}

async fn a_message_the_store_refuses_is_quarantined_acknowledged_and_listed(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;
    // A refusal the code cannot foresee: the database itself rejects one
    // session's row (a trigger each dialect writes its own way).
    let trigger = match backend {
        Backend::Postgres => {
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.operator_ref = 'poison' THEN \
               RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = 'check_violation'; \
             END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON sessions \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        }
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON sessions \
             WHEN NEW.operator_ref = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        }
    };
    app.store
        .execute_as_owner(trigger)
        .await
        .expect("the test trigger");
    let session = uuid::Uuid::new_v4().to_string();
    let mut poison = session_start("pen-1", 3, &session, "(01)09506000134352(21)S1");
    if let Some(Body::SessionStart(s)) = &mut poison.body {
        s.operator_ref = "poison".into();
    }
    let raw = poison.encode_to_vec();
    let messages = vec![
        heartbeat("pen-1", 1),
        heartbeat("pen-1", 2),
        poison,
        heartbeat("pen-1", 4),
        heartbeat("pen-1", 5),
    ];
    let mut client = app.telemetry_for("clinic-a").await;
    let down = exchange(&mut client, messages).await;
    assert!(down.end.is_ok(), "{:?}", down.end);
    assert!(down.rejections.is_empty(), "{:?}", down.rejections);
    assert_eq!(
        down.watermark("pen-1"),
        5,
        "the quarantined seq is acknowledged"
    );
    assert_eq!(app.stored("pen-1").await, 5);
    let sessions = app.sessions_of("pen-1").await;
    assert!(sessions.is_empty(), "{sessions:?}");
    let quarantined: Vec<(Vec<u8>, String)> = app
        .rows()
        .await
        .fetch("SELECT payload, error FROM quarantine WHERE device_id = 'pen-1' AND seq = 3")
        .await;
    let [(payload, error)] = quarantined.as_slice() else {
        panic!("seq 3 quarantined once: {quarantined:?}");
    };
    assert_eq!(payload, &raw, "the raw bytes are kept");
    assert!(error.contains("refused by a test trigger"), "{error}");
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'message.quarantined'")
            .await,
        1
    );
    let listed = pentrace_cli(&app.store, &["quarantine", "list"]);
    assert!(listed.contains("pen-1/3"), "{listed}");
    let id = listed.split_whitespace().next().expect("an id");
    let shown = pentrace_cli(&app.store, &["quarantine", "show", id]);
    assert!(shown.contains("refused by a test trigger"), "{shown}");
    assert!(shown.contains(&session), "the payload is decoded:\n{shown}");
    let metrics = http_get(&format!("{}/metrics", app.http))
        .await
        .expect("metrics");
    assert!(metrics.contains("name=\"quarantined\""), "{metrics}");
    assert!(
        http_get(&format!("{}/readyz", app.http)).await.is_some(),
        "ready after a quarantine"
    );
}

async fn a_grpc_pen_is_told_to_stop_using_a_reused_cartridge(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    let gtin = "09506000134352";
    let product = pb::Product {
        gtin: gtin.into(),
        name: "n".into(),
        ..Default::default()
    };
    register(
        &app,
        "clinic-a",
        &[("pen-a", 0), ("pen-b", 0)],
        &[product],
        &[],
    )
    .await;
    let udi = format!("(01){gtin}(17)301231(10)L1(21)SER-7");
    let mut client = app.telemetry_for("clinic-a").await;
    let first = uuid::Uuid::new_v4().to_string();
    let down = exchange(&mut client, vec![session_start("pen-a", 1, &first, &udi)]).await;
    assert!(
        down.commands.is_empty(),
        "the owner may use it: {:?}",
        down.commands
    );
    // pen-b presents it, and keeps its stream open until told.
    let second = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(session_start("pen-b", 1, &second, &udi))
        .await
        .expect("queue");
    let mut inbound = client
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ingest")
        .into_inner();
    let command = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match inbound.message().await.expect("stream").expect("open").body {
                Some(pb::device_downlink::Body::RejectCartridge(c)) => return c,
                _ => continue,
            }
        }
    })
    .await
    .expect("a RejectCartridge within 10 s");
    drop(tx);
    assert_eq!(command.session_id, second);
    assert_eq!(command.device_id, "pen-b");
    assert_eq!(command.reason, "CARTRIDGE_REUSED");
    assert_eq!(command.cartridge_id, format!("{gtin}:SER-7"));
}
