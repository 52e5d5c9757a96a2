//! The audit trail holds: every kind of tampering makes `pentrace audit
//! verify` exit non-zero naming the first broken link, and the database
//! refuses changes to audit tables.

use chrono::{Duration as Span, Utc};
use pentrace_domain::audit::{GENESIS, chain_hash};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use sqlx::Executor;
use tokio_stream::StreamExt;

use crate::helpers::{Backend, TestApp, pentrace_run, register, spawn_app, ts};

crate::both_stores!(
    a_changed_field_is_caught,
    a_deleted_event_is_caught,
    swapped_events_are_caught,
    a_cut_tail_is_caught_by_the_exported_checkpoint,
    a_recomputed_chain_is_caught_by_the_exported_checkpoint,
    audit_tables_refuse_update_and_delete,
    serve_as_the_app_role_ingests_and_takes_scheduled_checkpoints,
);

const GTIN: &str = "09506000134352";

/// Two sessions sharing a cartridge on two devices: sessions started and
/// ended, and a reuse flag, on clinic-a's chain.
pub async fn stream_sessions(app: &TestApp) {
    let udi = format!("(01){GTIN}(17)301231(10)L1(21)AUDIT-1");
    let mut messages = Vec::new();
    for (device, minutes_ago) in [("pen-1", 30), ("pen-2", 10)] {
        let started = Utc::now() - Span::minutes(minutes_ago);
        let session = pb::SessionContext {
            session_id: uuid::Uuid::new_v4().to_string(),
            cartridge: Some(pb::Cartridge {
                udi: udi.clone(),
                chip_uid: String::new(),
            }),
            area: pb::TreatmentArea::Cheeks as i32,
            skin: pb::SkinThickness::Thick as i32,
            patient_ref: "p".into(),
            started_at: Some(ts(started)),
        };
        let start = Body::SessionStart(pb::SessionStart {
            session: Some(session.clone()),
            ..Default::default()
        });
        let end = Body::SessionEnd(pb::SessionEnd {
            session: Some(session),
            ended_at: Some(ts(started + Span::minutes(5))),
            ..Default::default()
        });
        for (seq, body) in [(1, start), (2, end)] {
            messages.push(pb::DeviceMessage {
                device_id: device.into(),
                seq,
                sent_at: Some(ts(Utc::now())),
                body: Some(body),
            });
        }
    }
    let mut client = app.telemetry_for("clinic-a").await;
    let mut acks = client
        .ingest(tokio_stream::iter(messages))
        .await
        .expect("ingest")
        .into_inner();
    while let Some(ack) = acks.next().await {
        ack.expect("ack");
    }
}

/// An app with a populated chain, a key, and exported checkpoints.
struct Fixture {
    app: TestApp,
    dir: std::path::PathBuf,
    exported: Vec<String>,
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let app = spawn_app(backend, &[]).await;
        let product = pb::Product {
            gtin: GTIN.into(),
            name: "n".into(),
            ..Default::default()
        };
        register(
            &app,
            "clinic-a",
            &[("pen-1", 0), ("pen-2", 0)],
            &[product],
            &[],
        )
        .await;
        stream_sessions(&app).await;
        let dir =
            std::env::temp_dir().join(format!("pentrace-audit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = dir.join("audit.key");
        let key = key.to_str().expect("path");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pentrace"))
            .args(["audit", "keygen", "--out", key])
            .output()
            .expect("keygen");
        assert!(out.status.success());
        let export = dir.join("export");
        let (code, text) = pentrace_run(
            &app.store,
            &[
                "audit",
                "checkpoint",
                "--key",
                key,
                "--export",
                export.to_str().expect("path"),
            ],
        );
        assert_eq!(code, 0, "{text}");
        let exported = std::fs::read_dir(&export)
            .expect("export dir")
            .map(|e| e.expect("entry").path().to_string_lossy().into_owned())
            .collect();
        let f = Fixture { app, dir, exported };
        let (code, text) = f.verify(true);
        assert_eq!(code, 0, "an untouched trail verifies:\n{text}");
        assert!(text.contains("chain clinic-a: OK"), "{text}");
        f
    }

    /// `pentrace audit verify` with the public key, with or without the
    /// exported checkpoint files.
    fn verify(&self, with_exports: bool) -> (i32, String) {
        let public = self.dir.join("audit.pub");
        let mut args = vec![
            "audit",
            "verify",
            "--public-key",
            public.to_str().expect("path"),
        ];
        if with_exports {
            for f in &self.exported {
                args.extend(["--checkpoint", f.as_str()]);
            }
        }
        pentrace_run(&self.app.store, &args)
    }

    /// Tampering as someone who owns the database would: the append-only
    /// triggers off first, on again after. PostgreSQL disables them; SQLite
    /// cannot, so they are dropped and created again, in one transaction.
    async fn tamper(&self, sql: &str) {
        let store = &self.app.store;
        match store.backend() {
            Backend::Postgres => {
                let mut conn = store.pg().pool.acquire().await.expect("conn");
                for table in ["audit_events", "audit_checkpoints"] {
                    conn.execute(format!("ALTER TABLE {table} DISABLE TRIGGER USER").as_str())
                        .await
                        .expect("disable");
                }
                conn.execute(sql).await.expect(sql);
                for table in ["audit_events", "audit_checkpoints"] {
                    conn.execute(format!("ALTER TABLE {table} ENABLE TRIGGER USER").as_str())
                        .await
                        .expect("enable");
                }
            }
            Backend::Sqlite => {
                let triggers: Vec<(String, String)> = self
                    .app
                    .rows()
                    .await
                    .fetch(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' \
                         AND tbl_name IN ('audit_events', 'audit_checkpoints')",
                    )
                    .await;
                assert_eq!(triggers.len(), 4, "{triggers:?}");
                let mut script = String::from("BEGIN IMMEDIATE;");
                for (name, _) in &triggers {
                    script.push_str(&format!("DROP TRIGGER {name};"));
                }
                script.push_str(sql);
                script.push(';');
                for (_, create) in &triggers {
                    script.push_str(create);
                    script.push(';');
                }
                script.push_str("COMMIT;");
                store.execute_as_owner(&script).await.expect(sql);
            }
        }
    }

    /// A SQL literal of the bytes.
    fn blob(&self, bytes: &[u8]) -> String {
        match self.app.store.backend() {
            Backend::Postgres => format!("'\\x{}'", hex(bytes)),
            Backend::Sqlite => format!("X'{}'", hex(bytes)),
        }
    }

    /// The position of clinic-a's head, from `pentrace audit verify`
    /// ("chain clinic-a: OK, N events, ...": positions run 1..=N).
    fn head(&self) -> i64 {
        let (code, text) = self.verify(false);
        assert_eq!(code, 0, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("chain clinic-a: OK, "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no event count of clinic-a in:\n{text}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_broken_at(result: (i32, String), position: i64) {
    let (code, text) = result;
    assert_eq!(code, 1, "verify must fail:\n{text}");
    assert!(
        text.contains(&format!("chain clinic-a: BROKEN at position {position}")),
        "wrong first broken link:\n{text}"
    );
}

async fn a_changed_field_is_caught(backend: Backend) {
    let f = Fixture::new(backend).await;
    f.tamper("UPDATE audit_events SET subject_id = 'forged' WHERE clinic_id = 'clinic-a' AND position = 3").await;
    assert_broken_at(f.verify(false), 3);
}

async fn a_deleted_event_is_caught(backend: Backend) {
    let f = Fixture::new(backend).await;
    f.tamper("DELETE FROM audit_events WHERE clinic_id = 'clinic-a' AND position = 3")
        .await;
    assert_broken_at(f.verify(false), 4);
}

async fn swapped_events_are_caught(backend: Backend) {
    let f = Fixture::new(backend).await;
    f.tamper(
        "UPDATE audit_events SET position = 1000000 WHERE clinic_id = 'clinic-a' AND position = 2; \
         UPDATE audit_events SET position = 2 WHERE clinic_id = 'clinic-a' AND position = 3; \
         UPDATE audit_events SET position = 3 WHERE clinic_id = 'clinic-a' AND position = 1000000",
    )
    .await;
    assert_broken_at(f.verify(false), 2);
}

async fn a_cut_tail_is_caught_by_the_exported_checkpoint(backend: Backend) {
    let f = Fixture::new(backend).await;
    let head = f.head();
    let keep = head - 2;
    // Cut the last two events, make the head agree, remove the stored
    // checkpoints: only the exported file remembers.
    f.tamper(&format!(
        "DELETE FROM audit_events WHERE clinic_id = 'clinic-a' AND position > {keep}; \
         UPDATE audit_heads SET position = {keep}, hash = (SELECT hash FROM audit_events \
             WHERE clinic_id = 'clinic-a' AND position = {keep}) WHERE clinic_id = 'clinic-a'; \
         DELETE FROM audit_checkpoints"
    ))
    .await;
    let (code, text) = f.verify(false);
    assert_eq!(
        code, 0,
        "without the exported checkpoint a clean cut is invisible:\n{text}"
    );
    let (code, text) = f.verify(true);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("BROKEN at position {}", keep + 1)) && text.contains("cut off"),
        "{text}"
    );
}

async fn a_recomputed_chain_is_caught_by_the_exported_checkpoint(backend: Backend) {
    let f = Fixture::new(backend).await;
    // Rewrite event 2 and recompute every hash after it, as someone with
    // the database and the hashing code (but not the signing key) could.
    let store = f.app.store.open_store().await;
    let mut events = store.audit_page("clinic-a", 0, 1000).await.expect("events");
    drop(store);
    events[1].event.subject_id = "forged".into();
    let mut prev = GENESIS;
    let mut sql = String::from("DELETE FROM audit_checkpoints;");
    for e in &mut events {
        e.prev_hash = prev;
        e.hash = chain_hash(&prev, &e.event);
        prev = e.hash;
        sql.push_str(&format!(
            "UPDATE audit_events SET subject_id = '{}', prev_hash = {}, hash = {} \
             WHERE clinic_id = 'clinic-a' AND position = {};",
            e.event.subject_id,
            f.blob(&e.prev_hash),
            f.blob(&e.hash),
            e.event.position
        ));
    }
    sql.push_str(&format!(
        "UPDATE audit_heads SET hash = {} WHERE clinic_id = 'clinic-a'",
        f.blob(&prev)
    ));
    f.tamper(&sql).await;
    let (code, text) = f.verify(false);
    assert_eq!(
        code, 0,
        "a consistent rewrite passes the hash walk alone:\n{text}"
    );
    let (code, text) = f.verify(true);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("rewritten"), "{text}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn audit_tables_refuse_update_and_delete(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;
    // The application role: no privilege at all. PostgreSQL only: SQLite
    // has no roles (whoever can write the file can drop the triggers; the
    // hash chain and the signed checkpoints are for that).
    if backend == Backend::Postgres {
        let mut conn = app.store.pg().pool.acquire().await.expect("conn");
        conn.execute("SET ROLE pentrace_app").await.expect("role");
        for sql in [
            "UPDATE audit_events SET reason = 'x'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ] {
            let err = conn.execute(sql).await.expect_err(sql);
            let code = err
                .as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
            assert!(
                err.to_string().contains("permission denied"),
                "{sql}: {err}"
            );
        }
        // The role may still append (ingest runs as it).
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
            .fetch_one(&mut *conn)
            .await
            .expect("select");
        assert!(n > 0);
        conn.execute("RESET ROLE").await.expect("reset");
    }
    // Even the owner is refused by the trigger.
    let before = app.count("SELECT count(*) FROM audit_events").await;
    assert!(before > 0);
    for sql in [
        "UPDATE audit_events SET reason = 'x'",
        "DELETE FROM audit_events",
    ] {
        let err = app.store.execute_as_owner(sql).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM audit_events").await, before);
}

async fn serve_as_the_app_role_ingests_and_takes_scheduled_checkpoints(backend: Backend) {
    let dir = std::env::temp_dir().join(format!("pentrace-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("audit.key");
    let key = key.to_str().expect("path");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(["audit", "keygen", "--out", key])
        .output()
        .expect("keygen");
    assert!(out.status.success());
    let mut envs = vec![
        ("PENTRACE_AUDIT__CHECKPOINT_KEY", key),
        ("PENTRACE_AUDIT__CHECKPOINT_INTERVAL_S", "1"),
    ];
    // As production runs it on PostgreSQL; SQLite has no roles.
    if backend == Backend::Postgres {
        envs.push(("PENTRACE_DATABASE_ROLE", "pentrace_app"));
    }
    let app = crate::helpers::spawn_app_with(backend, &[], &envs).await;
    let product = pb::Product {
        gtin: GTIN.into(),
        name: "n".into(),
        ..Default::default()
    };
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0), ("pen-2", 0)],
        &[product],
        &[],
    )
    .await;
    stream_sessions(&app).await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "a checkpoint of clinic-a's head",
        || async {
            app.count(
                "SELECT count(*) FROM audit_checkpoints c JOIN audit_heads h USING (clinic_id) \
             WHERE c.clinic_id = 'clinic-a' AND c.position = h.position",
            )
            .await
                > 0
        },
    )
    .await;
    let public = dir.join("audit.pub");
    let (code, text) = pentrace_run(
        &app.store,
        &[
            "audit",
            "verify",
            "--public-key",
            public.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
