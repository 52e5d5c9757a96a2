//! The simulator end to end, on each store: 50 pens with every fault kind
//! over MQTT (behind Mosquitto; `embedded.rs` has the same run over the
//! embedded broker) and over gRPC, verified against ground truth; and a
//! crash test that kills the server with SIGKILL while pens stream, and
//! finds nothing lost or doubled.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::broker::Broker;
use crate::helpers::{Backend, TestApp, eventually, spawn_app_with};
use crate::ingest::http_get;

crate::both_stores!(
    fifty_pens_with_every_fault_over_mqtt_are_judged_exactly,
    fifty_pens_with_every_fault_over_grpc_are_judged_exactly,
    ten_sigkills_during_mqtt_ingest_lose_nothing_and_double_nothing,
    ten_sigkills_during_grpc_ingest_lose_nothing_and_double_nothing,
);

/// Every fault kind, often enough that each occurs in a few sessions (a
/// backlog on a few pens).
pub(crate) const EVERY_FAULT: &str = "reuse=0.08,moved=0.05,expired=0.04,recalled=0.04,unknown=0.04,\
bad_udi=0.04,resume=0.08,cartridge_swap=0.04,resume_overuse=0.04,backlog=0.1,depth=0.06,\
skew=0.04,disconnect=0.04,dup=0.05,reorder=0.03";

const FAULT_KINDS: [&str; 15] = [
    "reuse",
    "moved",
    "expired",
    "recalled",
    "unknown",
    "bad_udi",
    "resume",
    "cartridge_swap",
    "resume_overuse",
    "backlog",
    "depth",
    "skew",
    "disconnect",
    "dup",
    "reorder",
];

fn sim_command(
    app: &TestApp,
    transport: &str,
    broker: Option<&Broker>,
    truth: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = sim_command_at(
        &app.grpc,
        &app.admin_token,
        transport,
        "sim-clinic",
        broker,
        truth,
        extra,
    );
    cmd.args(["--faults", EVERY_FAULT]);
    cmd
}

/// `pentrace sim --setup --verify` against the server at `grpc` (and
/// `broker` for MQTT pens), with the pens of `clinic`; `extra` says which
/// faults (`--faults`) and how much load.
pub(crate) fn sim_command_at(
    grpc: &str,
    token: &str,
    transport: &str,
    clinic: &str,
    broker: Option<&Broker>,
    truth: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pentrace"));
    cmd.args([
        "sim",
        "--transport",
        transport,
        "--grpc-url",
        grpc,
        "--token",
        token,
    ])
    .args([
        "--clinic", clinic, "--seed", "20261125", "--setup", "--verify", "--quiet",
    ])
    .args(["--truth", truth])
    .args(extra);
    if let Some(b) = broker {
        cmd.args(["--mqtt-url", &b.url]);
    }
    cmd
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The verification passed: precision and recall 1.000 for every flag
/// kind, as many samples stored as sent.
pub(crate) fn assert_verified(report: &str) {
    assert!(report.contains("verify: PASSED"), "{report}");
    let table = report
        .lines()
        .skip_while(|l| !l.starts_with("kind "))
        .skip(1)
        .take_while(|l| !l.starts_with("samples:"));
    let mut kinds = 0;
    for row in table {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells[cells.len() - 2..],
            ["1.000", "1.000"],
            "{row}\n{report}"
        );
        kinds += 1;
    }
    assert!(kinds > 10, "no per-kind table in:\n{report}");
    let samples = report
        .lines()
        .find_map(|l| l.strip_prefix("samples: "))
        .expect("samples line");
    let counts: Vec<&str> = samples.split_whitespace().collect();
    // "N sessions checked, S samples sent, S stored"
    assert_eq!(counts[3], counts[6], "{samples}");
}

/// Every fault kind was injected at least once.
pub(crate) fn assert_every_fault_injected(truth: &str) {
    let lines = std::fs::read_to_string(truth).expect("truth file");
    for kind in FAULT_KINDS {
        assert!(
            lines.contains(&format!("\"fault\":\"{kind}\"")),
            "no {kind} fault was injected:\n{lines}"
        );
    }
}

pub(crate) fn truth_file() -> String {
    std::env::temp_dir()
        .join(format!(
            "pentrace-truth-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ))
        .to_string_lossy()
        .into_owned()
}

/// The load of the verified runs: 50 pens, 4 sessions of 5 batches each
/// (and the backlogs), at ×600.
const FIFTY_PENS: [&str; 8] = [
    "--devices",
    "50",
    "--sessions",
    "4",
    "--batches",
    "5",
    "--compression",
    "600",
];

async fn verified_run(backend: Backend, transport: &str) {
    let broker = Broker::start();
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-sim-test",
    ];
    let app = spawn_app_with(backend, &args, &[]).await;
    let truth = truth_file();
    let mut cmd = sim_command(&app, transport, Some(&broker), &truth, &FIFTY_PENS);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run sim");
    let report = text(&out);
    assert!(
        out.status.success(),
        "sim --verify over {transport} failed:\n{report}"
    );
    assert_verified(&report);
    assert_every_fault_injected(&truth);
    // Belt and braces beside the simulator's own check: no message key twice.
    assert_eq!(app.rows().await.doubled().await, 0);
    let _ = std::fs::remove_file(&truth);
}

async fn fifty_pens_with_every_fault_over_mqtt_are_judged_exactly(backend: Backend) {
    verified_run(backend, "mqtt").await;
}

async fn fifty_pens_with_every_fault_over_grpc_are_judged_exactly(backend: Backend) {
    verified_run(backend, "grpc").await;
}

/// Duplicates the server recognised, from its metrics (a killed server's
/// count since its last scrape is lost, so this is a lower bound).
async fn duplicates_seen(app: &TestApp) -> u64 {
    let metrics = http_get(&format!("{}/metrics", app.http))
        .await
        .unwrap_or_default();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pentrace_ingest_duplicates_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// SIGKILLs the server this many times while the pens stream.
const KILLS: usize = 10;

/// Kills the server `KILLS` times while 20 pens stream over `transport`,
/// restarting it each time on the same database and addresses; the
/// simulator's verification then finds every sample stored exactly once
/// and every flag as injected.
async fn sigkill_run(backend: Backend, transport: &str) {
    let broker = Broker::start();
    // A fixed gRPC address: pens reconnect to it, and the simulator
    // verifies against the server that runs after the last crash.
    let grpc = format!("127.0.0.1:{}", crate::broker::free_port());
    let client_id = format!("pentrace-crash-{transport}");
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        client_id.as_str(),
        "--grpc-addr",
        grpc.as_str(),
    ];
    let mut app = spawn_app_with(backend, &args, &[]).await;
    let truth = truth_file();
    // Paced so the run outlasts the kills (about 1 s apart).
    let extra = [
        "--devices",
        "20",
        "--sessions",
        "4",
        "--batches",
        "80",
        "--compression",
        "100",
        "--ack-timeout-s",
        "60",
    ];
    let mut sim: Child = sim_command(&app, transport, Some(&broker), &truth, &extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sim");
    // Kill only once the pens stream (not during the simulator's setup).
    eventually(Duration::from_secs(60), "the pens streaming", || async {
        app.count("SELECT count(*) FROM device_messages").await > 0
    })
    .await;
    let mut duplicates = 0;
    let mut kills = 0;
    for pause_ms in [900u64, 1300, 700, 1100, 1500, 800, 1200, 1000, 600, 1400] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        if sim.try_wait().expect("sim status").is_some() {
            break;
        }
        duplicates += duplicates_seen(&app).await;
        let status = app.server.signal("KILL");
        assert!(!status.success(), "SIGKILL ends the server abruptly");
        kills += 1;
        app.restart(&args, &[]).await;
    }
    let out = tokio::task::spawn_blocking(move || sim.wait_with_output())
        .await
        .expect("join")
        .expect("sim");
    duplicates += duplicates_seen(&app).await;
    let report = text(&out);
    assert!(
        out.status.success(),
        "after {kills} SIGKILLs the simulator's verification over {transport} failed:\n{report}"
    );
    assert_eq!(
        kills, KILLS,
        "the run ended before {KILLS} kills: make it longer"
    );
    let stored = app.count("SELECT count(*) FROM device_messages").await;
    let doubled = app.rows().await.doubled().await;
    assert_eq!(doubled, 0);
    // The counts for the closing note (visible with --no-capture).
    println!(
        "crash test over {transport} on {backend:?}: {kills} SIGKILLs, stored {stored} messages, \
         {duplicates} redeliveries recognised as duplicates (at least), 0 stored twice"
    );
    println!("{report}");
    let _ = std::fs::remove_file(&truth);
}

async fn ten_sigkills_during_mqtt_ingest_lose_nothing_and_double_nothing(backend: Backend) {
    sigkill_run(backend, "mqtt").await;
}

async fn ten_sigkills_during_grpc_ingest_lose_nothing_and_double_nothing(backend: Backend) {
    sigkill_run(backend, "grpc").await;
}
