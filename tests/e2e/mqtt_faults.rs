//! The MQTT consumer under faults, with the real binary: a Mosquitto killed
//! with SIGKILL and restarted (persistence on and off); a consumer that
//! leaves the shared subscription when it stops gracefully, and
//! `pentrace mqtt forget-session` for one that crashed; and a private
//! PostgreSQL taken away under a backlog (memory stays bounded, nothing is
//! lost, a poller stopped past its keep-alive reconnects).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

use crate::broker::Broker;
use crate::helpers::{Backend, Server, TestApp, eventually, register, spawn_app_with};
use crate::ingest::http_get;
use crate::mqtt::heartbeat;
use crate::pgcluster::PgCluster;
use crate::rss::{RssSampler, wait_steady};

crate::both_stores!(
    ingest_resumes_after_a_persistent_broker_is_killed_and_restarted,
    ingest_resumes_after_a_broker_without_persistence_is_killed_and_restarted,
    a_consumer_that_stopped_gracefully_gets_no_more_share_of_the_messages,
);

/// The consumer's connection and subscription lines reach the server's log
/// file (never the test's output), so a test can wait for them and check
/// which case it exercised.
const CONSUMER_LOG: (&str, &str) = ("RUST_LOG", "warn,pentrace_server::mqtt::consumer=debug");

/// Waits until the server's consumer has had its subscription granted
/// (what is published before has no subscriber and is dropped).
async fn wait_subscribed(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !plain(&server.log_text()).contains("mqtt subscription granted") {
        assert!(
            Instant::now() < deadline,
            "no subscription granted:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pen publishing heartbeats (QoS 1) every few milliseconds until
/// dropped, reconnecting on its own when the broker goes away.
struct LivePen {
    /// The seq the next publish will carry.
    next_seq: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LivePen {
    fn start(port: u16, device: &str) -> LivePen {
        let mut options = MqttOptions::new(format!("{device}-live"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let poll = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    // The broker is away: try again shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let next_seq = Arc::new(AtomicU64::new(1));
        let seqs = next_seq.clone();
        let device = device.to_owned();
        let publish = tokio::spawn(async move {
            let topic = format!("pentrace/v1/devices/{device}/up");
            loop {
                let seq = seqs.load(Ordering::SeqCst);
                let payload = heartbeat(&device, seq).encode_to_vec();
                // Waits while the client's queue is full (broker away).
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
                seqs.store(seq + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        LivePen {
            next_seq,
            tasks: vec![poll, publish],
        }
    }

    fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }
}

impl Drop for LivePen {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Publishes `messages` (device, seq) as heartbeats from one plain client
/// and waits until the broker has acknowledged every one.
async fn publish_all(port: u16, client_id: &str, messages: &[(String, u64)]) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, messages.len().max(1));
    for (device, seq) in messages {
        client
            .publish(
                format!("pentrace/v1/devices/{device}/up"),
                QoS::AtLeastOnce,
                false,
                heartbeat(device, *seq).encode_to_vec(),
            )
            .await
            .expect("queue a publish");
    }
    let acked = async {
        let mut acked = 0;
        while acked < messages.len() {
            match eventloop.poll().await.expect("publisher connection") {
                Event::Incoming(Incoming::PubAck(_)) => acked += 1,
                _ => continue,
            }
        }
        client.disconnect().await.expect("disconnect");
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    };
    tokio::time::timeout(Duration::from_secs(20), acked)
        .await
        .expect("the broker acknowledged every publish");
}

async fn stored(app: &TestApp, device: &str, min_seq: u64) -> i64 {
    app.count(&format!(
        "SELECT count(*) FROM device_messages WHERE device_id = '{device}' AND seq >= {min_seq}"
    ))
    .await
}

/// `text` without ANSI colour sequences (the server colours its log).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `session_present` of each "mqtt connected" line in a server log.
fn sessions_present(log: &str) -> Vec<bool> {
    plain(log)
        .lines()
        .filter(|l| l.contains("mqtt connected"))
        .filter_map(|l| {
            if l.contains("session_present=true") {
                Some(true)
            } else if l.contains("session_present=false") {
                Some(false)
            } else {
                None
            }
        })
        .collect()
}

/// How soon after the broker's return ingest must have resumed.
const RESUMPTION: Duration = Duration::from_secs(10);

/// Kills the broker while a pen publishes, restarts it, and checks that
/// what is published after its return is stored within [`RESUMPTION`].
/// Returns the server's `session_present` on each of its connections.
async fn ingest_resumes_after_a_broker_kill(
    backend: Backend,
    mut broker: Broker,
    client_id: &str,
) -> Vec<bool> {
    let url = broker.url.clone();
    let args = ["--mqtt-url", url.as_str(), "--mqtt-client-id", client_id];
    let app = spawn_app_with(backend, &args, &[CONSUMER_LOG]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-live", 0), ("pen-fresh", 0)],
        &[],
        &[],
    )
    .await;
    let live = LivePen::start(broker.port, "pen-live");
    eventually(
        Duration::from_secs(10),
        "the pen's first messages stored",
        || async { stored(&app, "pen-live", 1).await >= 5 },
    )
    .await;
    if broker.persistent() {
        // The consumer's session and subscription are on disk: the restart
        // restores them (session_present) — the case under test.
        broker.wait_saved_after(SystemTime::now(), Duration::from_secs(5));
    }

    broker.kill9();
    broker.restart();
    let back = Instant::now();
    let after = live.next_seq();
    // And a pen that connects only after the restart. What either publishes
    // before the consumer is subscribed again has no subscriber and is
    // dropped by the broker (pens resend what is not acknowledged); what
    // they publish after it must be stored.
    let fresh = LivePen::start(broker.port, "pen-fresh");
    loop {
        let fresh_stored = stored(&app, "pen-fresh", 1).await;
        let live_stored = stored(&app, "pen-live", after).await;
        if fresh_stored >= 20 && live_stored >= 20 {
            break;
        }
        assert!(
            back.elapsed() < RESUMPTION,
            "{RESUMPTION:?} after the broker's return, stored: {fresh_stored} of pen-fresh's \
             messages, {live_stored} of pen-live's since seq {after} (20 of each wanted)\n\
             server log:\n{}\nbroker log:\n{}",
            app.server.log_text(),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = back.elapsed();
    if std::env::var_os("TEST_LOG").is_some() {
        println!("ingest resumed {resumed:?} after the broker's return");
    }
    drop((live, fresh));
    sessions_present(&app.server.log_text())
}

async fn ingest_resumes_after_a_persistent_broker_is_killed_and_restarted(backend: Backend) {
    let present =
        ingest_resumes_after_a_broker_kill(backend, Broker::start(), "pentrace-kill-p").await;
    // Mosquitto restored the session (and not its $share subscription):
    // only subscribing on every ConnAck brings the messages back.
    assert_eq!(present.last(), Some(&true), "connections: {present:?}");
    assert!(present.len() >= 2, "connections: {present:?}");
}

async fn ingest_resumes_after_a_broker_without_persistence_is_killed_and_restarted(
    backend: Backend,
) {
    let present = ingest_resumes_after_a_broker_kill(
        backend,
        Broker::start_without_persistence(),
        "pentrace-kill-np",
    )
    .await;
    assert_eq!(present.last(), Some(&false), "connections: {present:?}");
    assert!(present.len() >= 2, "connections: {present:?}");
}

/// Committed messages counted in one server's `/metrics`.
async fn committed_by(server: &Server) -> u64 {
    let metrics = http_get(&format!("{}/metrics", server.http))
        .await
        .unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.starts_with("pentrace_ingest_messages_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn a_consumer_that_stopped_gracefully_gets_no_more_share_of_the_messages(backend: Backend) {
    let broker = Broker::start();
    let stays = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-stays",
    ];
    let leaves = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-leaves",
    ];
    let app = spawn_app_with(backend, &stays, &[CONSUMER_LOG]).await;
    let mut leaving = Server::start(&app.store, &leaves, &[CONSUMER_LOG]).await;
    let devices: Vec<String> = (0..10).map(|i| format!("pen-{i}")).collect();
    let registered: Vec<(&str, u32)> = devices.iter().map(|d| (d.as_str(), 0)).collect();
    register(&app, "clinic-a", &registered, &[], &[]).await;

    // Both are in the share group: each has committed some of the traffic.
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while committed_by(&leaving).await == 0 || committed_by(&app.server).await == 0 {
        assert!(
            Instant::now() < deadline,
            "both consumers should get a share"
        );
        seq += 1;
        let round: Vec<(String, u64)> = devices.iter().map(|d| (d.clone(), seq)).collect();
        publish_all(broker.port, "warm-up", &round).await;
        let total = (seq * devices.len() as u64) as i64;
        eventually(Duration::from_secs(10), "warm-up stored", || async {
            app.count("SELECT count(*) FROM device_messages").await == total
        })
        .await;
    }

    assert!(leaving.signal("TERM").success(), "graceful stop");
    assert!(
        plain(&leaving.log_text()).contains("mqtt session ended"),
        "the leaving consumer ended its session:\n{}",
        leaving.log_text()
    );

    // Mosquitto would go on handing the gone member's session half of
    // these, never to be stored, had it kept its session.
    const N: u64 = 500;
    let first = seq + 1;
    let messages: Vec<(String, u64)> = (first..first + N / devices.len() as u64)
        .flat_map(|s| devices.iter().map(move |d| (d.clone(), s)))
        .collect();
    publish_all(broker.port, "publisher", &messages).await;
    eventually(
        Duration::from_secs(15),
        "all N stored by the remaining consumer",
        || async {
            app.count(&format!(
                "SELECT count(*) FROM device_messages WHERE seq >= {first}"
            ))
            .await
                == N as i64
        },
    )
    .await;
}

/// Rows in `device_messages` of the database at `url`.
async fn messages_in(url: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .expect("the private cluster");
    let n = sqlx::query_scalar("SELECT count(*) FROM device_messages")
        .fetch_one(&mut c)
        .await
        .expect("count");
    let _ = c.close().await;
    n
}

/// A heartbeat with the largest firmware string a message may carry, so the
/// backlog weighs something.
fn fat_heartbeat(device: &str, seq: u64) -> Vec<u8> {
    let mut m = heartbeat(device, seq);
    if let Some(pentrace_proto::v1::device_message::Body::Heartbeat(h)) = &mut m.body {
        h.firmware = "f".repeat(250);
    }
    m.encode_to_vec()
}

/// Publishes `count` fat heartbeats round-robin over `devices` (seqs from
/// `first`) and waits until the broker has acknowledged all of them.
async fn publish_backlog(port: u16, devices: &[String], first: u64, count: u64) {
    let mut options = MqttOptions::new("backlog", "127.0.0.1", port);
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let devices = devices.to_vec();
    let producer = tokio::spawn(async move {
        for i in 0..count {
            let device = &devices[(i % devices.len() as u64) as usize];
            let seq = first + i / devices.len() as u64;
            client
                .publish(
                    format!("pentrace/v1/devices/{device}/up"),
                    QoS::AtLeastOnce,
                    false,
                    fat_heartbeat(device, seq),
                )
                .await
                .expect("queue a publish");
        }
        client
    });
    let acked = async {
        let mut acked = 0;
        while acked < count {
            if let Event::Incoming(Incoming::PubAck(_)) =
                eventloop.poll().await.expect("publisher connection")
            {
                acked += 1;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("the broker acknowledged the backlog");
    let client = producer.await.expect("producer");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
}

// PostgreSQL only: it stops a private PostgreSQL cluster (an embedded
// SQLite file cannot go away while its server runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_and_nothing_is_lost_while_the_database_is_away() {
    // A broker without an in-flight limit (the shipped config before): only
    // the consumer's own bounds keep the backlog out of its memory.
    let broker = Broker::start_with(true, "max_inflight_messages 0\nmax_inflight_bytes 0\n");
    let mut pg = PgCluster::create();
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-outage",
        "--auto-register",
    ];
    let server = Server::start_at(&pg.url(), "pentrace_outage", &args, &[CONSUMER_LOG]).await;
    let devices: Vec<String> = (0..20).map(|i| format!("pen-{i}")).collect();
    wait_subscribed(&server).await;
    publish_backlog(broker.port, &devices, 1, devices.len() as u64).await;
    let warm = devices.len() as i64;
    let url = pg.url();
    eventually(Duration::from_secs(15), "warm-up stored", || async {
        messages_in(&url).await == warm
    })
    .await;

    pg.stop_immediate();
    let sampler = RssSampler::start(server.pid(), Duration::from_millis(100));
    const BACKLOG: u64 = 80_000;
    let published = Instant::now();
    publish_backlog(broker.port, &devices, 2, BACKLOG).await;
    let published = published.elapsed();
    // Whatever the consumer takes in, it has taken once its memory settles.
    wait_steady(
        server.pid(),
        Duration::from_secs(1),
        512,
        Duration::from_secs(20),
    )
    .await;
    let curve = sampler.finish();
    if std::env::var_os("TEST_LOG").is_some() {
        println!("backlog of {BACKLOG} published in {published:?}; server RSS meanwhile:\n{curve}");
    }
    // What the consumer holds at most: its intake's 10,000, the pipeline's
    // queue (10,000) and batches (2 × 2,000), the 1,000 of the hand-off,
    // about 25,000 of these messages (~23 MiB measured); a consumer that
    // took the whole backlog in grew by ~50 MiB.
    assert!(
        curve.growth_kib() < 35 * 1024,
        "RSS grew by {} KiB with the database away:\n{curve}",
        curve.growth_kib()
    );

    pg.start();
    let back = Instant::now();
    let all = warm + BACKLOG as i64;
    eventually(
        Duration::from_secs(40),
        "the whole backlog stored",
        || async { messages_in(&url).await == all },
    )
    .await;
    if std::env::var_os("TEST_LOG").is_some() {
        println!(
            "backlog stored {:?} after the database's return",
            back.elapsed()
        );
    }
}

// PostgreSQL only, as the one above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_stopped_past_its_keep_alive_reconnects_and_gets_everything_redelivered() {
    // An in-flight window above what the consumer holds (its intake, the
    // pipeline's queue and batches, the hand-off: about 25,000), so a
    // backlog with the database away fills it and the poller stops polling.
    let broker = Broker::start_with(true, "max_inflight_messages 30000\nmax_inflight_bytes 0\n");
    let mut pg = PgCluster::create();
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-keepalive",
        "--auto-register",
    ];
    // Keep-alive 3 s: the broker drops the stopped poller after 4.5 s and the
    // poller releases the connection after 6 s, as they would after 45 and
    // 60 s with the default 30 s. Long enough that after the reconnection
    // the ping answer, queued behind up to a window of redeliveries, comes
    // back within a keep-alive.
    let envs = [CONSUMER_LOG, ("PENTRACE_MQTT__KEEP_ALIVE_S", "3")];
    let server = Server::start_at(&pg.url(), "pentrace_keepalive", &args, &envs).await;
    let devices: Vec<String> = (0..20).map(|i| format!("pen-{i}")).collect();
    wait_subscribed(&server).await;
    publish_backlog(broker.port, &devices, 1, devices.len() as u64).await;
    let warm = devices.len() as i64;
    let url = pg.url();
    eventually(Duration::from_secs(15), "warm-up stored", || async {
        messages_in(&url).await == warm
    })
    .await;

    pg.stop_immediate();
    const BACKLOG: u64 = 35_000;
    publish_backlog(broker.port, &devices, 2, BACKLOG).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !plain(&server.log_text()).contains("mqtt intake full") {
        assert!(
            Instant::now() < deadline,
            "the poller never stopped for a full intake:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pg.start();
    let all = warm + BACKLOG as i64;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let n = messages_in(&url).await;
        if n == all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {all} stored after the database's return:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = plain(&server.log_text());
    let present = sessions_present(&log);
    assert!(
        present.len() >= 2 && present[1..].iter().all(|p| *p),
        "reconnected into the persistent session: {present:?}\n{log}"
    );
    let metrics = http_get(&format!("{}/metrics", server.http))
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("pentrace_mqtt_stalls_total 1"),
        "one stall counted:\n{metrics}"
    );
}

/// Connects `client_id` with a persistent session, subscribes to the
/// shared group unless `subscribe` is false, disconnects; returns the
/// ConnAck's `session_present`.
async fn persistent_visit(port: u16, client_id: &str, subscribe: bool) -> bool {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let visit = async {
        let present = loop {
            if let Event::Incoming(Incoming::ConnAck(ack)) =
                eventloop.poll().await.expect("connect")
            {
                break ack.session_present;
            }
        };
        if subscribe {
            client
                .subscribe("$share/pentrace/pentrace/v1/devices/+/up", QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            while !matches!(
                eventloop.poll().await.expect("suback"),
                Event::Incoming(Incoming::SubAck(_))
            ) {}
        }
        client.disconnect().await.expect("disconnect");
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
        present
    };
    tokio::time::timeout(Duration::from_secs(10), visit)
        .await
        .expect("the broker answers")
}

// No server, so no store: the command talks to the broker only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_forget_session_ends_a_gone_consumers_session() {
    let broker = Broker::start();
    // A consumer that crashed: its session stays, in the share group.
    assert!(!persistent_visit(broker.port, "pentrace-crashed", true).await);
    assert!(
        persistent_visit(broker.port, "pentrace-crashed", false).await,
        "the broker kept the session"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args([
            "mqtt",
            "forget-session",
            "--client-id",
            "pentrace-crashed",
            "--mqtt-url",
            broker.url.as_str(),
        ])
        .output()
        .expect("run pentrace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !persistent_visit(broker.port, "pentrace-crashed", false).await,
        "the session is gone"
    );
}
