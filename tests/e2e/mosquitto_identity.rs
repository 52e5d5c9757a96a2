//! Device identity on the production Mosquitto (issue 13): a private broker
//! with the shipped config (dynamic security plugin, no anonymous clients,
//! the conf.d limits), its accounts set up by pentrace's `BrokerAccounts`,
//! and a pen holding valid credentials attacking the others and the
//! consumer. Each attack asserts its outcome; "nothing received" is shown by
//! a marker sent after the attack on the same path arriving first.

use std::collections::VecDeque;
use std::time::Duration;

use pentrace_server::mqtt::dynsec::{BrokerAccounts, DynsecError};
use pentrace_server::mqtt::{SUBSCRIPTION, down_topic, up_topic};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::broker::{Broker, DYNSEC_ADMIN};
use crate::helpers::{Backend, eventually, register, spawn_app_with};
use crate::mqtt::{MqttPen, heartbeat};

// The two tests with a pentrace server run on both stores; the others
// talk to Mosquitto through `BrokerAccounts` only, no server, no store.
crate::both_stores!(
    pentrace_serve_consumes_from_the_dynsec_broker_set_up_by_prepare_broker,
    issuing_and_revoking_through_pentrace_reach_the_managed_broker_at_once,
);

const CONSUMER: &str = "pentrace-1";
const CONSUMER_PASSWORD: &str = "consumer-secret-1";
const WAIT: Duration = Duration::from_secs(10);

async fn admin(broker: &Broker) -> BrokerAccounts {
    BrokerAccounts::connect("127.0.0.1", broker.port, DYNSEC_ADMIN.0, DYNSEC_ADMIN.1)
        .await
        .expect("dynsec admin")
}

/// A broker prepared for the consumer `pentrace-1`, with pens `pen-a` and
/// `pen-b` (secrets `secret-<id>`).
async fn prepared_broker() -> (Broker, BrokerAccounts) {
    let broker = Broker::start_with_dynsec();
    let accounts = admin(&broker).await;
    accounts
        .prepare(&[(CONSUMER.into(), SecretString::from(CONSUMER_PASSWORD))])
        .await
        .expect("prepare");
    for pen in ["pen-a", "pen-b"] {
        accounts.set_pen(pen, &secret(pen)).await.expect("set_pen");
    }
    (broker, accounts)
}

fn secret(pen: &str) -> String {
    format!("secret-{pen}")
}

/// One MQTT connection and everything its event loop yields after the
/// CONNACK. The loop stops at the first error, so a disconnection stays
/// visible instead of being papered over by a reconnection.
struct Conn {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    received: VecDeque<Publish>,
    poller: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Connects as `client_id` with `username`/`password`; the broker's
/// refusal is the error.
async fn connect(
    broker: &Broker,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<Conn, ConnectionError> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
                return Ok::<_, ConnectionError>(());
            }
        }
    })
    .await
    .expect("no CONNACK")?;
    let (tx, events) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await.map_err(|e| e.to_string());
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    Ok(Conn {
        client,
        events,
        received: VecDeque::new(),
        poller,
    })
}

/// A pen connecting as itself.
async fn pen(broker: &Broker, id: &str) -> Conn {
    connect(broker, id, Some((id, &secret(id))))
        .await
        .unwrap_or_else(|e| panic!("{id} connects: {e}\n{}", broker.log()))
}

/// The consumer `pentrace-1`, in the shared group as pentrace runs it.
async fn consumer(broker: &Broker) -> Conn {
    let mut c = connect(broker, CONSUMER, Some((CONSUMER, CONSUMER_PASSWORD)))
        .await
        .expect("consumer connects");
    assert_eq!(
        c.subscribe(SUBSCRIPTION).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    c
}

fn refused(result: Result<Conn, ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("not a CONNACK refusal: {e}"),
        Ok(_) => panic!("connected"),
    }
}

impl Conn {
    /// The next event; a disconnection or a new session fails the test.
    async fn next_event(&mut self) -> Event {
        let event = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("nothing from the broker")
            .expect("event loop gone");
        match event {
            Err(e) => panic!("disconnected: {e}"),
            Ok(Event::Incoming(Packet::ConnAck(c))) => panic!("connected again: {c:?}"),
            Ok(e) => e,
        }
    }

    /// Subscribes and returns the broker's verdict from the SUBACK.
    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match self.next_event().await {
                Event::Incoming(Packet::SubAck(ack)) => return ack.return_codes[0],
                Event::Incoming(Packet::Publish(p)) => self.received.push_back(p),
                _ => {}
            }
        }
    }

    async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .expect("publish");
    }

    /// The next message delivered to this connection.
    async fn next_message(&mut self) -> (String, String) {
        let p = match self.received.pop_front() {
            Some(p) => p,
            None => loop {
                if let Event::Incoming(Packet::Publish(p)) = self.next_event().await {
                    break p;
                }
            },
        };
        (p.topic, String::from_utf8_lossy(&p.payload).into_owned())
    }

    /// The connection ends within the deadline (the broker cut it).
    async fn wait_disconnected(&mut self) -> String {
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("still connected")
                .expect("event loop gone");
            if let Err(e) = event {
                return e;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_and_wrong_credentials_are_refused() {
    let (broker, _accounts) = prepared_broker().await;
    let anonymous = connect(&broker, "pen-a", None).await;
    assert_eq!(refused(anonymous), ConnectReturnCode::NotAuthorized);
    let wrong = connect(&broker, "pen-a", Some(("pen-a", &secret("pen-b")))).await;
    assert_eq!(refused(wrong), ConnectReturnCode::NotAuthorized);
    let unknown = connect(&broker, "pen-z", Some(("pen-z", "whatever"))).await;
    assert_eq!(refused(unknown), ConnectReturnCode::NotAuthorized);
    // The dynsec admin of `mosquitto_ctrl dynsec init` is no pen either:
    // it may not publish telemetry (the consumer sees only the marker).
    let mut consumer = consumer(&broker).await;
    let admin = connect(&broker, "admin-probe", Some(DYNSEC_ADMIN))
        .await
        .expect("admin");
    admin
        .publish(&up_topic("pen-a"), "forged by the admin")
        .await;
    let a = pen(&broker, "pen-a").await;
    a.publish(&up_topic("pen-a"), "marker").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "marker".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pen_with_its_own_credentials_talks_to_the_consumer_both_ways() {
    let (broker, _accounts) = prepared_broker().await;
    let mut consumer = consumer(&broker).await;
    let mut a = pen(&broker, "pen-a").await;
    assert_eq!(
        a.subscribe(&down_topic("pen-a")).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    a.publish(&up_topic("pen-a"), "telemetry").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "telemetry".into())
    );
    consumer.publish(&down_topic("pen-a"), "ack").await;
    assert_eq!(a.next_message().await, (down_topic("pen-a"), "ack".into()));
    // The consumer's plain subscription (the embedded broker's form) and
    // its flags topic are allowed too.
    assert_eq!(
        consumer.subscribe("pentrace/v1/devices/+/up").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pen_publishing_as_another_pen_or_as_the_server_is_not_delivered() {
    let (broker, _accounts) = prepared_broker().await;
    let mut consumer = consumer(&broker).await;
    let mut b = pen(&broker, "pen-b").await;
    b.subscribe(&down_topic("pen-b")).await;
    let a = pen(&broker, "pen-a").await;

    // Telemetry in B's name: dropped by the broker (an MQTT 3.1.1
    // publisher still gets its PUBACK), so the marker A sends next on its
    // own topic is the first thing the consumer sees.
    a.publish(&up_topic("pen-b"), "forged telemetry").await;
    a.publish("pentrace/v1/devices/pen-b/up/extra", "forged")
        .await;
    a.publish(&up_topic("pen-a"), "marker").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "marker".into())
    );

    // A downlink to B in the server's name (a forged ack or
    // RejectCartridge), and a forged flag: dropped too.
    a.publish(&down_topic("pen-b"), "forged downlink").await;
    a.publish("pentrace/v1/clinics/clinic-a/flags", "forged flag")
        .await;
    consumer
        .publish(&down_topic("pen-b"), "real downlink")
        .await;
    assert_eq!(
        b.next_message().await,
        (down_topic("pen-b"), "real downlink".into())
    );

    // A will naming B's topic, fired by dropping the connection: dropped
    // (wills are checked like publishes). A's reconnection with the same
    // client id means the broker has ended the old connection, will and
    // all, before A's marker.
    let will = {
        let mut options = MqttOptions::new("pen-a", "127.0.0.1", broker.port);
        options.set_credentials("pen-a", secret("pen-a"));
        options.set_last_will(rumqttc::LastWill::new(
            up_topic("pen-b"),
            "forged will",
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.expect("connect") {
                break;
            }
        }
        (client, eventloop)
    };
    drop(will);
    drop(a);
    let a = pen(&broker, "pen-a").await;
    a.publish(&up_topic("pen-a"), "marker after the will").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "marker after the will".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pen_cannot_subscribe_beyond_its_own_down_topic_nor_join_the_shared_group() {
    let (broker, _accounts) = prepared_broker().await;
    let mut consumer = consumer(&broker).await;
    let mut a = pen(&broker, "pen-a").await;
    let b = pen(&broker, "pen-b").await;
    // Every one refused in the SUBACK (0x80): dynsec checks a `$share`
    // filter as the whole string, so the pens' literal grants never match.
    for filter in [
        down_topic("pen-b").as_str(),
        up_topic("pen-b").as_str(),
        "#",
        "pentrace/#",
        "pentrace/v1/devices/+/down",
        "pentrace/v1/devices/+/up",
        SUBSCRIPTION,
        "$share/pentrace/#",
        "$share/x/pentrace/v1/devices/pen-a/down",
        "$CONTROL/dynamic-security/#",
        "$SYS/#",
    ] {
        assert_eq!(
            a.subscribe(filter).await,
            SubscribeReasonCode::Failure,
            "{filter}"
        );
    }
    assert_eq!(
        a.subscribe(&down_topic("pen-a")).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    // Nothing of B's reaches A, and the consumer gets every one of B's
    // messages: A took no share of the group.
    consumer.publish(&down_topic("pen-b"), "for b").await;
    for n in 0..20 {
        b.publish(&up_topic("pen-b"), &format!("b-{n}")).await;
    }
    for n in 0..20 {
        assert_eq!(
            consumer.next_message().await,
            (up_topic("pen-b"), format!("b-{n}"))
        );
    }
    consumer.publish(&down_topic("pen-a"), "marker").await;
    assert_eq!(
        a.next_message().await,
        (down_topic("pen-a"), "marker".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pen_cannot_take_another_pens_or_the_consumers_client_id() {
    let (broker, _accounts) = prepared_broker().await;
    let mut consumer = consumer(&broker).await;
    let mut b = pen(&broker, "pen-b").await;
    b.subscribe(&down_topic("pen-b")).await;
    // Each attempt of the issue's six-kicks-in-six-seconds attack, and
    // more: refused at CONNECT, before the broker looks for the session.
    for _ in 0..6 {
        for (client_id, user, password) in [
            (CONSUMER, "pen-a", secret("pen-a")),
            ("pen-b", "pen-a", secret("pen-a")),
            (CONSUMER, CONSUMER, secret("pen-a")),
            ("pen-b", "pen-b", "guess".into()),
            (CONSUMER, DYNSEC_ADMIN.0, "guess".into()),
        ] {
            let attempt = connect(&broker, client_id, Some((user, &password))).await;
            assert_eq!(
                refused(attempt),
                ConnectReturnCode::NotAuthorized,
                "{user} as {client_id}"
            );
        }
    }
    // A's own connection with a random client id is refused as well.
    let random = connect(&broker, "rumqtt-1234", Some(("pen-a", &secret("pen-a")))).await;
    assert_eq!(refused(random), ConnectReturnCode::NotAuthorized);
    // Neither the consumer nor B was disconnected: their event loops saw
    // no error and no new CONNACK before the markers arrived.
    let a = pen(&broker, "pen-a").await;
    a.publish(&up_topic("pen-a"), "marker").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "marker".into())
    );
    consumer.publish(&down_topic("pen-b"), "marker").await;
    assert_eq!(
        b.next_message().await,
        (down_topic("pen-b"), "marker".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pen_set_connects_at_once_and_a_removed_or_rotated_one_is_cut_off() {
    let (broker, accounts) = prepared_broker().await;
    let mut consumer = consumer(&broker).await;
    // Registered and connected straight away: no broker restart, no wait.
    accounts.set_pen("pen-new", "first").await.expect("set");
    let mut fresh = connect(&broker, "pen-new", Some(("pen-new", "first")))
        .await
        .expect("a new pen connects at once");
    let mut pens = accounts.pens().await.expect("pens");
    pens.sort();
    assert_eq!(pens, ["pen-a", "pen-b", "pen-new"], "not the consumer");

    // Rotation: the connection made with the old secret is cut, the old
    // secret refused, the new one works.
    accounts.set_pen("pen-new", "second").await.expect("rotate");
    fresh.wait_disconnected().await;
    let old = connect(&broker, "pen-new", Some(("pen-new", "first"))).await;
    assert_eq!(refused(old), ConnectReturnCode::NotAuthorized);
    let mut rotated = connect(&broker, "pen-new", Some(("pen-new", "second")))
        .await
        .expect("the new secret works");
    rotated
        .publish(&up_topic("pen-new"), "after rotation")
        .await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-new"), "after rotation".into())
    );

    // Revocation: the connected pen is disconnected at once and cannot
    // come back; removing it again is no error.
    accounts.remove_pen("pen-new").await.expect("remove");
    rotated.wait_disconnected().await;
    let again = connect(&broker, "pen-new", Some(("pen-new", "second"))).await;
    assert_eq!(refused(again), ConnectReturnCode::NotAuthorized);
    accounts.remove_pen("pen-new").await.expect("remove twice");
    let mut pens = accounts.pens().await.expect("pens");
    pens.sort();
    assert_eq!(pens, ["pen-a", "pen-b"]);
    // The other pens were not touched.
    let a = pen(&broker, "pen-a").await;
    a.publish(&up_topic("pen-a"), "still here").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "still here".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_and_admin_accounts_and_bad_names_are_never_pens() {
    let (broker, accounts) = prepared_broker().await;
    let mut consumer = consumer(&broker).await;
    // A device registered with the consumer's or the admin's name would
    // otherwise reset their password or delete them.
    for name in [CONSUMER, DYNSEC_ADMIN.0] {
        match accounts.set_pen(name, "takeover").await {
            Err(DynsecError::NotAPen(n)) => assert_eq!(n, name),
            other => panic!("set_pen({name}): {other:?}"),
        }
        match accounts.remove_pen(name).await {
            Err(DynsecError::NotAPen(n)) => assert_eq!(n, name),
            other => panic!("remove_pen({name}): {other:?}"),
        }
    }
    for name in ["", "a/b", "+", "#", "pen-#", "a\0b"] {
        assert!(
            matches!(
                accounts.set_pen(name, "x").await,
                Err(DynsecError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        accounts.set_pen("pen-c", "").await,
        Err(DynsecError::EmptySecret)
    ));
    // A pen's name may not be prepared as a consumer either.
    match accounts
        .prepare(&[("pen-a".into(), SecretString::from("x"))])
        .await
    {
        Err(DynsecError::NotAConsumer(n)) => assert_eq!(n, "pen-a"),
        other => panic!("prepare(pen-a): {other:?}"),
    }
    // The consumer was never disconnected.
    let a = pen(&broker, "pen-a").await;
    a.publish(&up_topic("pen-a"), "marker").await;
    assert_eq!(
        consumer.next_message().await,
        (up_topic("pen-a"), "marker".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_twice_and_a_second_consumer_leave_every_account_working() {
    let (broker, accounts) = prepared_broker().await;
    let consumers = [
        (CONSUMER.into(), SecretString::from(CONSUMER_PASSWORD)),
        ("pentrace-2".into(), SecretString::from("consumer-secret-2")),
    ];
    accounts.prepare(&consumers).await.expect("again");
    accounts.prepare(&consumers).await.expect("and again");
    // Through another admin connection too (answers go to every admin).
    let other = admin(&broker).await;
    other.prepare(&consumers).await.expect("from another admin");
    let mut one = consumer(&broker).await;
    let mut two = connect(
        &broker,
        "pentrace-2",
        Some(("pentrace-2", "consumer-secret-2")),
    )
    .await
    .expect("second consumer");
    two.subscribe(SUBSCRIPTION).await;
    // pentrace-2's id is reserved for it like pentrace-1's.
    let taken = connect(&broker, "pentrace-2", Some((CONSUMER, CONSUMER_PASSWORD))).await;
    assert_eq!(refused(taken), ConnectReturnCode::NotAuthorized);
    // The two share the pens' messages, and nobody else got any.
    let a = pen(&broker, "pen-a").await;
    for n in 0..20 {
        a.publish(&up_topic("pen-a"), &format!("a-{n}")).await;
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "got only {got:?}");
        tokio::select! {
            m = one.next_message() => got.push(m.1),
            m = two.next_message() => got.push(m.1),
        }
    }
    got.sort();
    let mut sent: Vec<_> = (0..20).map(|n| format!("a-{n}")).collect();
    sent.sort();
    assert_eq!(got, sent);
    let mut pens = accounts.pens().await.expect("pens");
    pens.sort();
    assert_eq!(pens, ["pen-a", "pen-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynsec_admin_must_be_an_admin() {
    let (broker, _accounts) = prepared_broker().await;
    match BrokerAccounts::connect("127.0.0.1", broker.port, DYNSEC_ADMIN.0, "wrong").await {
        Err(DynsecError::ConnectRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized);
        }
        other => panic!("wrong admin password: {other:?}"),
    }
    // A pen's or a consumer's credentials: refused at CONNECT already,
    // since the admin connection's client id is not their reserved one.
    for (user, password) in [
        ("pen-a", secret("pen-a")),
        (CONSUMER, CONSUMER_PASSWORD.into()),
    ] {
        match BrokerAccounts::connect("127.0.0.1", broker.port, user, &password).await {
            Err(DynsecError::ConnectRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::NotAuthorized);
            }
            other => panic!("{user} as admin: {other:?}"),
        }
    }
}

async fn pentrace_serve_consumes_from_the_dynsec_broker_set_up_by_prepare_broker(backend: Backend) {
    let broker = Broker::start_with_dynsec();
    let client_id = "pentrace-dynsec";
    // The operator's command, as deploy/mosquitto/README.md gives it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(["mqtt", "prepare-broker", "--mqtt-url", &broker.url])
        .env("PENTRACE_MQTT__CLIENT_ID", client_id)
        .env("PENTRACE_MQTT__USERNAME", client_id)
        .env("PENTRACE_MQTT__PASSWORD", CONSUMER_PASSWORD)
        .env("PENTRACE_MQTT__DYNSEC_ADMIN__USERNAME", DYNSEC_ADMIN.0)
        .env("PENTRACE_MQTT__DYNSEC_ADMIN__PASSWORD", DYNSEC_ADMIN.1)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run pentrace");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "prepare-broker: {}{}",
        printed,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!(
            "consumer {client_id}: client id {client_id} (reserved)"
        )),
        "{printed}"
    );
    assert!(!printed.contains(CONSUMER_PASSWORD) && !printed.contains(DYNSEC_ADMIN.1));
    admin(&broker)
        .await
        .set_pen("pen-a", &secret("pen-a"))
        .await
        .expect("set_pen");

    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        client_id,
    ];
    let envs = [
        ("PENTRACE_MQTT__USERNAME", client_id),
        ("PENTRACE_MQTT__PASSWORD", CONSUMER_PASSWORD),
    ];
    let app = spawn_app_with(backend, &args, &envs).await;
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    let mut a = MqttPen::connect_with(broker.port, "pen-a", Some(&secret("pen-a"))).await;
    for seq in 1..=3 {
        a.send(&heartbeat("pen-a", seq)).await;
    }
    // The ack comes back on pen-a's down topic: the consumer may publish
    // there, and pen-a may read it.
    a.wait_ack(3).await;
    eventually(WAIT, "stored", || async { app.stored("pen-a").await == 3 }).await;
    // Connected once, subscribed at the first try.
    let log = app.server.log_text();
    assert!(
        !log.contains("mqtt connection error") && !log.contains("refused the mqtt subscription"),
        "{log}"
    );
}

/// The real path: the Registry issues a pen's secret and pentrace gives
/// the managed broker the pen's account at once; a second secret replaces
/// the first (the broker has one password per pen, so the store revokes
/// the first too); a revocation removes the account; and a revocation the
/// broker does not hear of is an error, not a silent success.
async fn issuing_and_revoking_through_pentrace_reach_the_managed_broker_at_once(backend: Backend) {
    use pentrace_proto::v1 as pb;
    let broker = Broker::start_with_dynsec();
    admin(&broker)
        .await
        .prepare(&[(CONSUMER.into(), SecretString::from(CONSUMER_PASSWORD))])
        .await
        .expect("prepare");
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        CONSUMER,
    ];
    let envs = [
        ("PENTRACE_MQTT__USERNAME", CONSUMER),
        ("PENTRACE_MQTT__PASSWORD", CONSUMER_PASSWORD),
        ("PENTRACE_MQTT__DYNSEC_ADMIN__USERNAME", DYNSEC_ADMIN.0),
        ("PENTRACE_MQTT__DYNSEC_ADMIN__PASSWORD", DYNSEC_ADMIN.1),
    ];
    let app = spawn_app_with(backend, &args, &envs).await;
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;

    let first = app.issue(pb::CredentialKind::PenSecret, "pen-a", "").await;
    let conn = connect(&broker, "pen-a", Some(("pen-a", &first.secret)))
        .await
        .expect("a pen issued a secret connects at once");
    drop(conn);
    let second = app.issue(pb::CredentialKind::PenSecret, "pen-a", "").await;
    let first_id = first.credential.expect("credential").credential_id;
    assert_eq!(second.revoked_credential_ids, vec![first_id]);
    assert_eq!(
        refused(connect(&broker, "pen-a", Some(("pen-a", &first.secret))).await),
        ConnectReturnCode::NotAuthorized
    );
    let mut conn = connect(&broker, "pen-a", Some(("pen-a", &second.secret)))
        .await
        .expect("the new secret connects");

    let second_id = second.credential.expect("credential").credential_id;
    app.registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: second_id.clone(),
            reason: "lost".into(),
        })
        .await
        .expect("revoke");
    // The open connection is cut and the secret no longer connects.
    let cut = tokio::time::timeout(WAIT, async {
        loop {
            match conn.events.recv().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the revoked pen's connection stayed open");
    assert_eq!(
        refused(connect(&broker, "pen-a", Some(("pen-a", &second.secret))).await),
        ConnectReturnCode::NotAuthorized
    );

    // With the broker gone, revoking says so instead of claiming success.
    let third = app.issue(pb::CredentialKind::PenSecret, "pen-a", "").await;
    drop(broker);
    let error = app
        .registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: third.credential.expect("credential").credential_id,
            reason: "lost".into(),
        })
        .await
        .expect_err("the broker did not hear of it");
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert!(
        error.message().contains("still has the pen's account"),
        "{error:?}"
    );
}
