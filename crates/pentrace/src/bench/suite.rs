//! The suite: baselines, end to end over gRPC and MQTT, flag latency at
//! half load, and growth; a table on stdout, JSON with `--json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use pentrace_sim::Transport;
use serde_json::{Value, json};

use super::baseline;
use super::e2e::{self, Spec, StoreChoice};
use super::procs::Mosquitto;
use super::scratch::ScratchDb;
use super::stats::Spread;
use crate::serve::runtime;

/// Options of `pentrace bench` without a subcommand.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Seconds each run aims to last (the end-to-end runs size their work
    /// from the first run's rate).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Simulated pens of the end-to-end load.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Runs per figure (median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Store of the server under test.
    #[arg(long, value_enum, default_value_t = StoreKind::Postgres)]
    store: StoreKind,
    /// PostgreSQL server for scratch databases (any database on it; the
    /// bench creates and drops its own).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Parts to run, comma-separated: baseline-copy, baseline-broker, grpc
    /// (TLS and device credentials, as deployed), grpc-plaintext (the same
    /// without TLS, for the cost of TLS), mqtt, half (flag latency at half
    /// of grpc's load), growth.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline-copy,baseline-broker,grpc,mqtt,half"
    )]
    only: Vec<Part>,
    /// Stored samples before the growth runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,10000000")]
    growth_sizes: Vec<u64>,
    /// Mosquitto's `conf.d` with the shipped limits.
    #[arg(long)]
    mosquitto_conf_d: Option<PathBuf>,
    /// Seed of the simulated traffic.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

/// Which store the server under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Postgres,
    Sqlite,
}

/// A part of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    BaselineCopy,
    BaselineBroker,
    Grpc,
    GrpcPlaintext,
    Mqtt,
    Half,
    Growth,
}

/// One figure over the runs.
#[derive(Debug)]
struct Figure {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
}

/// A part's figures.
#[derive(Debug)]
struct Section {
    name: String,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Section {
    fn new(name: impl Into<String>) -> Section {
        Section {
            name: name.into(),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, unit: &'static str, values: Vec<f64>) {
        self.figures.push(Figure {
            name: name.to_owned(),
            unit,
            values,
        });
    }

    fn median(&self, name: &str) -> Option<f64> {
        let f = self.figures.iter().find(|f| f.name == name)?;
        Spread::of(&f.values).map(|s| s.median)
    }
}

/// Runs the parts asked for and prints the result.
pub fn run(args: SuiteArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.devices == 0 || args.duration <= 0.0 {
        bail!("--runs, --devices and --duration must be positive");
    }
    runtime()?.block_on(async {
        let broker = Mosquitto::start(&conf_d(&args)?).context("starting a private Mosquitto")?;
        let mut sections = Vec::new();
        let wants = |p: Part| args.only.contains(&p);
        if wants(Part::BaselineCopy) {
            sections.push(baseline_copy(&args).await?);
        }
        if wants(Part::BaselineBroker) {
            sections.push(baseline_broker(&args, &broker).await?);
        }
        let mut grpc_rate = None;
        for (part, transport) in [(Part::Grpc, Transport::Grpc), (Part::Mqtt, Transport::Mqtt)] {
            if wants(part) {
                let section = end_to_end(&args, &broker, transport).await?;
                if part == Part::Grpc {
                    grpc_rate = section.median("samples_per_s");
                }
                sections.push(section);
            }
        }
        if wants(Part::GrpcPlaintext) {
            let mut section = end_to_end_tls(&args, &broker, Transport::Grpc, false).await?;
            if let (Some(tls), Some(plain)) = (grpc_rate, section.median("samples_per_s")) {
                section.notes.push(format!(
                    "grpc (TLS, device credentials) / grpc-plaintext = {:.3}",
                    tls / plain
                ));
            }
            sections.push(section);
        }
        if wants(Part::Half) {
            sections.push(half_load(&args, &broker, grpc_rate).await?);
        }
        if wants(Part::Growth) {
            for &size in &args.growth_sizes {
                sections.push(growth(&args, &broker, size).await?);
            }
        }
        let ratio = |a: (&str, &str), b: (&str, &str)| {
            let find = |(s, f): (&str, &str)| sections.iter().find(|x| x.name == s)?.median(f);
            Some(find(a)? / find(b)?)
        };
        let grpc_over_copy = ratio(("grpc", "samples_per_s"), ("baseline-copy", "rows_per_s"));
        let mqtt_over_broker = ratio(("mqtt", "msgs_per_s"), ("baseline-broker", "msgs_per_s"));
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&to_json(
                    &args,
                    &sections,
                    grpc_over_copy,
                    mqtt_over_broker
                ))?
            );
        } else {
            print_table(&args, &sections, grpc_over_copy, mqtt_over_broker);
        }
        Ok(())
    })
}

fn conf_d(args: &SuiteArgs) -> anyhow::Result<PathBuf> {
    let candidates = [
        args.mosquitto_conf_d.clone(),
        Some(PathBuf::from("deploy/mosquitto/conf.d")),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/mosquitto/conf.d"
        ))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_dir())
        .map(|p| p.canonicalize().unwrap_or(p))
        .context("cannot find deploy/mosquitto/conf.d (give --mosquitto-conf-d)")
}

fn store_choice(args: &SuiteArgs) -> StoreChoice {
    match args.store {
        StoreKind::Postgres => StoreChoice::Postgres(args.database_url.clone()),
        StoreKind::Sqlite => StoreChoice::Sqlite,
    }
}

async fn baseline_copy(args: &SuiteArgs) -> anyhow::Result<Section> {
    // ~1.2M rows/s expected: `duration`'s worth, at least 1M rows.
    let rows = ((args.duration * 400_000.0) as u64).max(1_000_000);
    let blocks = baseline::sample_blocks(rows, 200, chrono::Utc::now());
    let mut rates = Vec::new();
    for i in 0..args.runs {
        let db = ScratchDb::create(&args.database_url).await?;
        let result = async {
            let config = pentrace_server::Config {
                database_url: Some(secrecy::SecretString::from(db.url.clone())),
                ..pentrace_server::Config::default()
            };
            drop(pentrace_server::storage::open(&config, 1).await?);
            baseline::copy_blocks(&db.url, &blocks).await
        }
        .await;
        db.drop_now().await?;
        let seconds = result?;
        rates.push(rows as f64 / seconds);
        eprintln!(
            "baseline-copy run {}: {:.0} rows/s",
            i + 1,
            rows as f64 / seconds
        );
    }
    let mut s = Section::new("baseline-copy");
    s.add("rows_per_s", "rows/s", rates);
    s.notes.push(format!(
        "{rows} rows per run, binary COPY of {} rows per statement, one connection, \
         the migrated stroke_samples (BRIN on time, btree on session_id)",
        100_000
    ));
    Ok(s)
}

async fn baseline_broker(args: &SuiteArgs, broker: &Mosquitto) -> anyhow::Result<Section> {
    let payload = baseline::stroke_batch_payload();
    let (mut rates, mut lost) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        let run = baseline::broker_run(
            broker.port,
            &payload,
            Duration::from_secs_f64(args.duration),
        )
        .await?;
        eprintln!(
            "baseline-broker run {}: {:.0} msgs/s, {} sent, {} received",
            i + 1,
            run.msgs_per_s,
            run.sent,
            run.received
        );
        rates.push(run.msgs_per_s);
        lost.push((run.sent - run.received.min(run.sent)) as f64);
    }
    let mut s = Section::new("baseline-broker");
    s.add("msgs_per_s", "msgs/s", rates);
    s.add("lost", "msgs", lost);
    s.notes.push(format!(
        "QoS 1, {}-byte payloads (an encoded 10-sample StrokeBatch), one publisher \
         (100 in flight) to one subscriber, private Mosquitto with deploy/mosquitto/conf.d",
        payload.len()
    ));
    Ok(s)
}

async fn end_to_end(
    args: &SuiteArgs,
    broker: &Mosquitto,
    transport: Transport,
) -> anyhow::Result<Section> {
    end_to_end_tls(args, broker, transport, true).await
}

async fn end_to_end_tls(
    args: &SuiteArgs,
    broker: &Mosquitto,
    transport: Transport,
    tls: bool,
) -> anyhow::Result<Section> {
    let name = match (transport, tls) {
        (Transport::Grpc, false) => "grpc-plaintext",
        (t, _) => t.as_str(),
    };
    let spec = Spec {
        transport,
        devices: args.devices,
        sessions: Spec::sessions_for(args.devices, 120_000.0, args.duration),
        compression: 100_000.0,
        store: store_choice(args),
        seed: args.seed,
        prefill: 0,
        queries: false,
        tls,
    };
    let runs = repeat(args, name, spec, broker).await?;
    Ok(section_of(name, args, &runs))
}

async fn half_load(
    args: &SuiteArgs,
    broker: &Mosquitto,
    grpc_rate: Option<f64>,
) -> anyhow::Result<Section> {
    let max = match grpc_rate {
        Some(r) => r,
        None => {
            let quick = end_to_end(args, broker, Transport::Grpc).await?;
            quick.median("samples_per_s").unwrap_or(100_000.0)
        }
    };
    let target = max / 2.0;
    // A pen strokes 20 s of every ~140 s of virtual time (1-3 min gaps),
    // 10 samples per virtual second while it strokes.
    let per_pen_per_compression = 10.0 * 20.0 / 140.0;
    let compression = target / (args.devices as f64 * per_pen_per_compression);
    let spec = Spec {
        transport: Transport::Grpc,
        devices: args.devices,
        sessions: Spec::sessions_for(args.devices, target, args.duration),
        compression,
        store: store_choice(args),
        seed: args.seed,
        prefill: 0,
        queries: false,
        tls: true,
    };
    let runs = repeat(args, "half", spec, broker).await?;
    let mut s = section_of("half", args, &runs);
    s.notes.push(format!(
        "gRPC paced at ~half of {max:.0} samples/s (virtual clock ×{compression:.0})"
    ));
    Ok(s)
}

async fn growth(args: &SuiteArgs, broker: &Mosquitto, size: u64) -> anyhow::Result<Section> {
    if args.store == StoreKind::Sqlite && size > 0 {
        bail!("growth with stored history needs --store postgres");
    }
    let spec = Spec {
        transport: Transport::Grpc,
        devices: args.devices,
        sessions: Spec::sessions_for(args.devices, 120_000.0, args.duration),
        compression: 100_000.0,
        store: store_choice(args),
        seed: args.seed,
        prefill: size,
        queries: true,
        tls: true,
    };
    let name = format!("growth-{size}");
    let runs = repeat(args, &name, spec, broker).await?;
    let mut s = section_of(&name, args, &runs);
    let pick = |f: fn(&e2e::Run) -> Option<f64>| runs.0.iter().filter_map(f).collect::<Vec<_>>();
    s.add("lot_lookback_ms", "ms", pick(|r| r.lot_lookback_ms));
    s.add(
        "device_month_sessions_ms",
        "ms",
        pick(|r| r.device_month_ms),
    );
    s.add("history_fill_s", "s", pick(|r| r.prefill_s));
    Ok(s)
}

/// `--runs` runs; the work of the later ones is sized from the first's rate.
async fn repeat(
    args: &SuiteArgs,
    name: &str,
    mut spec: Spec,
    broker: &Mosquitto,
) -> anyhow::Result<(Vec<e2e::Run>, Vec<String>)> {
    let mut runs: Vec<e2e::Run> = Vec::new();
    let mut failures = Vec::new();
    // A failed run is reported, not hidden; another takes its place, up to
    // as many extra attempts as runs.
    for attempt in 0..args.runs * 2 {
        if runs.len() == args.runs {
            break;
        }
        let i = runs.len();
        let run = match e2e::run_once(&spec, broker).await {
            Ok(run) => run,
            Err(e) => {
                eprintln!("{name} attempt {}: FAILED: {e:#}", attempt + 1);
                failures.push(format!("{e:#}"));
                continue;
            }
        };
        eprintln!(
            "{name} run {}: {:.0} samples/s, {:.0} msgs/s over {:.1} s, ack p99 {:.1} ms, \
             flag p99 {:.1} ms ({} flags), RSS {:.0} MiB, CPU server {:.1} s postgres {:.1} s \
             broker {:.1} s load {:.1} s",
            i + 1,
            run.samples_per_s,
            run.msgs_per_s,
            run.elapsed_s,
            run.ack_p99_ms.unwrap_or(f64::NAN),
            run.flag_ms(99.0).unwrap_or(f64::NAN),
            run.flag_latencies_ms.len(),
            run.rss_mib.unwrap_or(f64::NAN),
            run.cpu.server,
            run.cpu.postgres,
            run.cpu.broker,
            run.cpu.load,
        );
        if i == 0 && spec.compression >= 100_000.0 && run.samples_per_s > 0.0 {
            spec.sessions = Spec::sessions_for(args.devices, run.samples_per_s, args.duration);
        }
        runs.push(run);
    }
    if runs.is_empty() {
        bail!("every {name} run failed: {}", failures.join("; "));
    }
    Ok((runs, failures))
}

fn section_of(
    name: &str,
    args: &SuiteArgs,
    (runs, failures): &(Vec<e2e::Run>, Vec<String>),
) -> Section {
    let mut s = Section::new(name);
    for f in failures {
        s.notes.push(format!("a failed run (replaced): {f}"));
    }
    let pick = |f: &dyn Fn(&e2e::Run) -> Option<f64>| runs.iter().filter_map(f).collect::<Vec<_>>();
    s.add(
        "samples_per_s",
        "samples/s",
        pick(&|r| Some(r.samples_per_s)),
    );
    s.add("msgs_per_s", "msgs/s", pick(&|r| Some(r.msgs_per_s)));
    s.add("ack_p50_ms", "ms", pick(&|r| r.ack_p50_ms));
    s.add("ack_p99_ms", "ms", pick(&|r| r.ack_p99_ms));
    s.add("flag_p50_ms", "ms", pick(&|r| r.flag_ms(50.0)));
    s.add("flag_p99_ms", "ms", pick(&|r| r.flag_ms(99.0)));
    s.add(
        "flags_timed",
        "flags",
        pick(&|r| Some(r.flag_latencies_ms.len() as f64)),
    );
    s.add("server_peak_rss_mib", "MiB", pick(&|r| r.rss_mib));
    s.add("server_cpu_s", "s", pick(&|r| Some(r.cpu.server)));
    s.add("postgres_cpu_s", "s", pick(&|r| Some(r.cpu.postgres)));
    s.add("broker_cpu_s", "s", pick(&|r| Some(r.cpu.broker)));
    s.add("loadgen_cpu_s", "s", pick(&|r| Some(r.cpu.load)));
    s.add("elapsed_s", "s", pick(&|r| Some(r.elapsed_s)));
    s.add(
        "samples_committed",
        "samples",
        pick(&|r| Some(r.samples as f64)),
    );
    s.notes.push(format!(
        "{} pens (+8 MQTT probe pens with a depth excursion per session), default fault \
         rates, {:?} store, server as a `pentrace serve` child process",
        args.devices, args.store
    ));
    s
}

fn print_table(
    args: &SuiteArgs,
    sections: &[Section],
    grpc_over_copy: Option<f64>,
    mqtt_over_broker: Option<f64>,
) {
    println!(
        "pentrace bench: {} runs per figure, ~{} s each, {} pens, {:?} store, {} cores",
        args.runs,
        args.duration,
        args.devices,
        args.store,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| {:<16} | {:<26} | {:>12} | {:>12} | {:>12} |",
        "part", "figure", "median", "min", "max"
    );
    println!(
        "|{:-<18}|{:-<28}|{:->14}|{:->14}|{:->14}|",
        "", "", "", "", ""
    );
    for s in sections {
        for f in &s.figures {
            if let Some(spread) = Spread::of(&f.values) {
                println!(
                    "| {:<16} | {:<26} | {:>12} | {:>12} | {:>12} |",
                    s.name,
                    format!("{} ({})", f.name, f.unit),
                    fmt(spread.median),
                    fmt(spread.min),
                    fmt(spread.max)
                );
            }
        }
    }
    println!();
    let show = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.3}"));
    println!("grpc_over_copy   {}  (target >= 0.5)", show(grpc_over_copy));
    println!(
        "mqtt_over_broker {}  (target >= 0.8)",
        show(mqtt_over_broker)
    );
    for s in sections {
        for n in &s.notes {
            println!("{}: {n}", s.name);
        }
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn to_json(
    args: &SuiteArgs,
    sections: &[Section],
    grpc_over_copy: Option<f64>,
    mqtt_over_broker: Option<f64>,
) -> Value {
    let mut out = serde_json::Map::new();
    out.insert(
        "config".into(),
        json!({
            "runs": args.runs, "duration_s": args.duration, "devices": args.devices,
            "store": format!("{:?}", args.store).to_lowercase(), "seed": args.seed,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        }),
    );
    for s in sections {
        let mut figures = serde_json::Map::new();
        for f in &s.figures {
            let spread = Spread::of(&f.values);
            figures.insert(
                f.name.clone(),
                json!({
                    "unit": f.unit,
                    "median": spread.map(|s| s.median),
                    "min": spread.map(|s| s.min),
                    "max": spread.map(|s| s.max),
                    "runs": f.values,
                }),
            );
        }
        figures.insert("notes".into(), json!(s.notes));
        out.insert(s.name.clone(), Value::Object(figures));
    }
    out.insert("grpc_over_copy".into(), json!(grpc_over_copy));
    out.insert("mqtt_over_broker".into(), json!(mqtt_over_broker));
    Value::Object(out)
}
