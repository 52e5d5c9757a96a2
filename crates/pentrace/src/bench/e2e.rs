//! End to end: the simulator's realistic traffic through a `pentrace serve`
//! child process, plus a small probe load whose depth excursions time the
//! path from a pen's send to the flag's `WatchFlags` delivery.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::compliance_client::ComplianceClient;
use pentrace_proto::v1::fleet_client::FleetClient;
use pentrace_sim::{FaultRates, ProgressMode, SimConfig, Transport};
use pentrace_store::Store;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::procs::{CpuSplit, Mosquitto, Server, ServerStore, peak_rss_bytes, scratch_dir};
use super::scratch::ScratchDb;
use super::stats::percentile;

/// Clinic of the main load's pens.
pub const LOAD_CLINIC: &str = "bench-load";
/// Clinic of the flag probe's pens.
const PROBE_CLINIC: &str = "bench-probe";
/// Probe pens: each session has one depth excursion, so one flag.
const PROBE_PENS: usize = 8;
/// The probe's virtual clock: a session (20 s) every ~0.2 s of real time
/// per pen, ~5% of the samples of a saturating load.
const PROBE_COMPRESSION: f64 = 600.0;
/// Stroke batches per session of the main load (10 samples each).
const BATCHES: u32 = 20;

/// Which store the server runs on.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// A scratch database on the server of this URL.
    Postgres(String),
    /// The embedded default, in a scratch directory.
    Sqlite,
}

/// What one end-to-end run does.
#[derive(Debug, Clone)]
pub struct Spec {
    pub transport: Transport,
    pub devices: usize,
    /// Sessions per pen (the work is fixed; its size sets the duration).
    pub sessions: u32,
    /// Virtual clock speed: 100 000 saturates; lower values pace the pens.
    pub compression: f64,
    pub store: StoreChoice,
    pub seed: u64,
    /// Sample rows copied into the database before the server starts
    /// (history, for `growth`).
    pub prefill: u64,
    /// Whether to time the compliance queries after the load.
    pub queries: bool,
    /// TLS on the server (the default), or plaintext for comparison.
    pub tls: bool,
}

impl Spec {
    /// Sessions per pen so that `rate` samples/s take about `seconds`.
    pub fn sessions_for(devices: usize, rate: f64, seconds: f64) -> u32 {
        let per_session = f64::from(BATCHES * pentrace_sim::profile::SAMPLES_PER_BATCH);
        let sessions = (rate * seconds / (devices.max(1) as f64 * per_session)).ceil();
        sessions.clamp(1.0, 100_000.0) as u32
    }
}

/// What one end-to-end run measured.
#[derive(Debug, Clone)]
pub struct Run {
    pub samples_per_s: f64,
    pub msgs_per_s: f64,
    pub elapsed_s: f64,
    pub samples: u64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    /// Send-to-delivery latencies of the probe's flags, in ms.
    pub flag_latencies_ms: Vec<f64>,
    pub rss_mib: Option<f64>,
    pub cpu: CpuSplit,
    /// Seconds the history fill took, if there was one.
    pub prefill_s: Option<f64>,
    pub lot_lookback_ms: Option<f64>,
    pub device_month_ms: Option<f64>,
}

impl Run {
    /// A percentile of this run's flag latency.
    pub fn flag_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.flag_latencies_ms, p)
    }
}

/// One run on a fresh store (scratch database or directory), removed after.
pub async fn run_once(spec: &Spec, broker: &Mosquitto) -> anyhow::Result<Run> {
    match &spec.store {
        StoreChoice::Postgres(admin_url) => {
            let db = ScratchDb::create(admin_url).await?;
            let result = run_in(spec, broker, &ServerStore::Postgres(db.url.clone())).await;
            if let Err(e) = db.drop_now().await {
                eprintln!("warning: {e:#}");
            }
            result
        }
        StoreChoice::Sqlite => {
            let dir = scratch_dir("sqlite")?;
            let result = run_in(spec, broker, &ServerStore::Sqlite(dir.clone())).await;
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    }
}

async fn open(store: &ServerStore) -> anyhow::Result<Arc<dyn Store>> {
    let mut config = pentrace_server::Config::default();
    match store {
        ServerStore::Postgres(url) => {
            config.database_url = Some(secrecy::SecretString::from(url.clone()));
        }
        ServerStore::Sqlite(dir) => config.data_dir = dir.clone(),
    }
    Ok(pentrace_server::storage::open(&config, 2).await?)
}

async fn run_in(spec: &Spec, broker: &Mosquitto, store: &ServerStore) -> anyhow::Result<Run> {
    // Schema and an admin's token before the server starts.
    let token = {
        let opened = open(store).await.context("opening the scratch store")?;
        crate::demo::admin_token(opened.as_ref()).await?
    };
    let prefill_s = match (store, spec.prefill) {
        (ServerStore::Postgres(url), rows) if rows > 0 => Some(prefill(url, rows).await?),
        _ => None,
    };
    let server = Server::start(store, &broker.url(), spec.tls)?;
    let result = drive(spec, broker, &server, &token).await;
    let mut server = server;
    server.process.stop(Duration::from_secs(20));
    if let Err(e) = broker.forget_session(&server.client_id).await {
        eprintln!("warning: cannot end the server's MQTT session: {e:#}");
    }
    let mut run = result.with_context(|| {
        format!(
            "server log kept in {}",
            server.process.keep_dir().join("serve.log").display()
        )
    })?;
    run.prefill_s = prefill_s;
    Ok(run)
}

/// Copies `rows` history samples (a year ago, other pens) in chunks.
async fn prefill(url: &str, rows: u64) -> anyhow::Result<f64> {
    const CHUNK: u64 = 1_000_000;
    let started = Instant::now();
    let mut done = 0;
    let from = Utc::now() - chrono::Duration::days(365);
    while done < rows {
        let n = CHUNK.min(rows - done);
        let offset = chrono::Duration::seconds(i64::try_from(done / 100).unwrap_or(0));
        let mut blocks = super::baseline::sample_blocks(n, 500, from + offset);
        for b in &mut blocks {
            b.device_id = b.device_id.replace("bench-load", "bench-history");
        }
        super::baseline::copy_blocks(url, &blocks).await?;
        done += n;
        eprintln!("  history: {done}/{rows} samples");
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    sqlx::query("VACUUM ANALYZE stroke_samples")
        .execute(&mut conn)
        .await?;
    // The fill wrote gigabytes of WAL: flush it now, or the checkpoint it
    // owes runs during the measured load (and taxes it, not the history).
    // Needs a superuser (or pg_checkpoint); without one, say so and go on.
    if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut conn).await {
        eprintln!("warning: CHECKPOINT after the history fill failed: {e}");
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn drive(
    spec: &Spec,
    broker: &Mosquitto,
    server: &Server,
    token: &str,
) -> anyhow::Result<Run> {
    let grpc = server.grpc_url();
    let ca = server.ca_cert.clone();
    let ca_pem = match &ca {
        Some(path) => Some(std::fs::read_to_string(path).context("the server's CA")?),
        None => None,
    };
    let channel = pentrace_sim::grpc_channel(&grpc, ca_pem.as_deref())
        .await
        .context("cannot reach the server's gRPC port")?;
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("token as a header")?;
    let deliveries = watch_flags(channel.clone(), bearer.clone()).await?;

    let probe = sim_config(&grpc, ca.clone(), broker, token, spec.seed ^ 0x5eed);
    let probe = SimConfig {
        devices: PROBE_PENS,
        transport: Transport::Mqtt,
        clinic: PROBE_CLINIC.into(),
        compression: PROBE_COMPRESSION,
        // Enough sessions to outlast the load (the probe is stopped then).
        sessions: probe_sessions(spec),
        faults: "depth=1"
            .parse()
            .map_err(|e| anyhow::anyhow!("probe faults: {e}"))?,
        ..probe
    };
    let sends = observe_sends(broker.port, &probe).await?;
    let probe_task = tokio::spawn(async move { pentrace_sim::run(&probe).await });
    // The probe's setup registers the shared catalogue; let it finish
    // before the load's setup does the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sends.lock().await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let load = SimConfig {
        devices: spec.devices,
        transport: spec.transport,
        clinic: LOAD_CLINIC.into(),
        sessions: spec.sessions,
        compression: spec.compression,
        faults: FaultRates::default(),
        ..sim_config(&grpc, ca, broker, token, spec.seed)
    };
    let pid = server.process.pid().to_string();
    let broker_pid = broker.process.pid().to_string();
    let cpu_before = CpuSplit::now(&pid, Some(&broker_pid));
    let report = pentrace_sim::run(&load).await.context("the load failed")?;
    let cpu = CpuSplit::now(&pid, Some(&broker_pid)).since(cpu_before);
    let rss_mib = peak_rss_bytes(&pid).map(|b| b as f64 / (1024.0 * 1024.0));
    // Flags of messages sent just before the end are still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    probe_task.abort();

    let window_end = report.started_at
        + chrono::Duration::from_std(report.elapsed).unwrap_or(chrono::Duration::zero());
    let flag_latencies_ms = {
        let sends = sends.lock().await;
        let deliveries = deliveries.lock().await;
        deliveries
            .iter()
            .filter_map(|(key, delivered)| {
                let sent = sends.get(key)?;
                (*sent >= report.started_at && *sent <= window_end)
                    .then(|| (*delivered - *sent).num_microseconds())
                    .flatten()
                    .map(|us| us as f64 / 1000.0)
            })
            .collect()
    };
    let (lot_lookback_ms, device_month_ms) = if spec.queries {
        let (a, b) = time_queries(channel, bearer).await?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    Ok(Run {
        samples_per_s: report.samples_per_s(),
        msgs_per_s: report.messages_per_s(),
        elapsed_s: report.elapsed.as_secs_f64(),
        samples: report.samples_acked,
        ack_p50_ms: ms(report.ack_latency(50.0)),
        ack_p99_ms: ms(report.ack_latency(99.0)),
        flag_latencies_ms,
        rss_mib,
        cpu,
        prefill_s: None,
        lot_lookback_ms,
        device_month_ms,
    })
}

fn probe_sessions(spec: &Spec) -> u32 {
    // A probe session takes ~0.23 s of real time (20 s of strokes and a
    // 1-3 min gap at 600×); assume the load could take 10× its estimate.
    let load_samples = spec.devices as f64 * f64::from(spec.sessions) * f64::from(BATCHES) * 10.0;
    let expected_s = (load_samples / 50_000.0).max(5.0);
    (expected_s * 10.0 / 0.2).clamp(50.0, 5_000.0) as u32
}

fn sim_config(
    grpc: &str,
    ca_cert: Option<PathBuf>,
    broker: &Mosquitto,
    token: &str,
    seed: u64,
) -> SimConfig {
    SimConfig {
        grpc_url: grpc.to_owned(),
        ca_cert,
        token: Some(token.to_owned()),
        mqtt_url: broker.url(),
        batches: BATCHES,
        seed,
        setup: true,
        progress: ProgressMode::Off,
        ..SimConfig::default()
    }
}

type Key = (String, u64);
type Times = Arc<Mutex<HashMap<Key, DateTime<Utc>>>>;

/// Every flag `WatchFlags` delivers: (device, seq) → delivery time.
async fn watch_flags(channel: Channel, bearer: MetadataValue<Ascii>) -> anyhow::Result<Times> {
    let mut client =
        ComplianceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let mut stream = client
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .context("WatchFlags")?
        .into_inner();
    let times: Times = Arc::default();
    let sink = times.clone();
    tokio::spawn(async move {
        while let Ok(Some(flag)) = stream.message().await {
            let now = Utc::now();
            if flag.clinic_id == PROBE_CLINIC && flag.seq > 0 {
                sink.lock()
                    .await
                    .entry((flag.device_id, flag.seq))
                    .or_insert(now);
            }
        }
    });
    Ok(times)
}

/// The `sent_at` of every message the probe's pens publish, read off the
/// broker: (device, seq) → send time (the pens share this machine's clock).
async fn observe_sends(port: u16, probe: &SimConfig) -> anyhow::Result<Times> {
    let mut options = MqttOptions::new(
        format!("pentrace-bench-observer-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 100);
    for i in 0..probe.devices {
        let topic = format!("pentrace/v1/devices/{}/up", probe.device_id(i));
        client.subscribe(topic, QoS::AtMostOnce).await?;
    }
    let times: Times = Arc::default();
    let sink = times.clone();
    tokio::spawn(async move {
        // Keeps the client alive as long as the loop runs.
        let _client = client;
        while let Ok(event) = events.poll().await {
            let Event::Incoming(Packet::Publish(p)) = event else {
                continue;
            };
            let Ok(m) = pb::DeviceMessage::decode(p.payload.as_ref()) else {
                continue;
            };
            let Some(sent) = m
                .sent_at
                .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
            else {
                continue;
            };
            sink.lock()
                .await
                .entry((m.device_id, m.seq))
                .or_insert(sent);
        }
    });
    Ok(times)
}

/// Median of five timings each of a lot lookback and one pen's sessions
/// over a month, in ms.
async fn time_queries(
    channel: Channel,
    bearer: MetadataValue<Ascii>,
) -> anyhow::Result<(f64, f64)> {
    let auth = move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    };
    let mut compliance = ComplianceClient::with_interceptor(channel.clone(), auth.clone());
    let mut fleet = FleetClient::with_interceptor(channel, auth);
    let (gtin, _) = pentrace_sim::catalogue::PRODUCTS[0];
    let now = Utc::now();
    let ts = |t: DateTime<Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    };
    let (mut lot, mut month) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        compliance
            .lot_lookback(pb::LotLookbackRequest {
                gtin: gtin.to_owned(),
                lot: pentrace_sim::catalogue::OK_LOT.to_owned(),
            })
            .await
            .context("LotLookback")?;
        lot.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        fleet
            .list_sessions(pb::ListSessionsRequest {
                device_id: format!("{LOAD_CLINIC}-pen-0000"),
                from: Some(ts(now - chrono::Duration::days(30))),
                to: Some(ts(now + chrono::Duration::days(1))),
                limit: 1000,
            })
            .await
            .context("ListSessions")?;
        month.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &[f64]| super::stats::Spread::of(v).map_or(f64::NAN, |s| s.median);
    Ok((median(&lot), median(&month)))
}
