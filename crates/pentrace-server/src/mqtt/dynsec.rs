//! The production Mosquitto's accounts, managed through its dynamic security
//! plugin: JSON commands published on [`CONTROL_TOPIC`], answers on
//! [`RESPONSE_TOPIC`] (deploy/mosquitto/README.md sets the broker up).
//!
//! What Mosquitto 2.0.11's plugin does, found by experiment against the real
//! broker (and held by tests/e2e/mosquitto_identity.rs):
//!
//! - ACL topics are taken literally: `%u` and `%c` are not substituted (a
//!   role allowing `pentrace/v1/devices/%u/up` lets pen `a` publish on
//!   neither `…/a/up` nor anything else). Hence one role per pen
//!   ([`pen_role`]), naming its own topics.
//! - A subscription to `$share/<group>/<filter>` is checked as that whole
//!   string, `$share/<group>/` included: a pen allowed
//!   `pentrace/v1/devices/a/down` is refused `$share/x/pentrace/v1/devices/a/down`,
//!   and the consumers need `$share/pentrace/…` granted in so many words.
//!   Deliveries through a shared subscription are checked
//!   (`publishClientReceive`) against the message's own topic.
//! - A client with a `clientid` may connect with that client id only; any
//!   other is refused (CONNACK 5) before the broker looks for a session to
//!   take over, so a pen claiming `pentrace-1` never disturbs the consumer.
//!   A client without one (the admin made by `mosquitto_ctrl dynsec init`)
//!   may use any client id.
//! - Every change to a client or to a role it holds disconnects its
//!   connections at once ("disconnected by administrative action"):
//!   `deleteClient`, `disableClient`, `setClientPassword`, `modifyClient`,
//!   `addClientRole`, `removeClientRole` (of a role it holds), and
//!   `addRoleACL`/`removeRoleACL` (every client holding the role).
//!   `enableClient`, `setDefaultACLAccess` and the `get`/`list` commands
//!   disconnect nobody. So [`BrokerAccounts::prepare`] changes only what
//!   differs, and a pen's new secret locks out a connection made with the
//!   old one.
//! - A publish the ACL refuses is dropped silently: an MQTT 3.1.1 client
//!   still gets its PUBACK. A refused subscription gets SUBACK 0x80.
//! - `mosquitto_ctrl` 2.0.11's `setDefaultACLAccess publishClientReceive
//!   deny` reports success and changes nothing; the JSON command works.
//! - `addClientRole` of a role the client already holds answers
//!   "Internal error".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{PLAIN_SUBSCRIPTION, SUBSCRIPTION, down_topic, up_topic};

/// Where the plugin takes commands.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where it answers them, to every admin listening (hence correlation ids).
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// The role every pentrace consumer holds.
pub const CONSUMER_ROLE: &str = "pentrace-consumer";

/// How long a command may wait for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients per `listClients` page: keeps an answer far below the broker's
/// 1 MiB message limit (conf.d/limits.conf).
const LIST_PAGE: usize = 1000;

/// The role of one pen (dynsec has no `%u`, see the module comment).
pub fn pen_role(device_id: &str) -> String {
    format!("pentrace-pen:{device_id}")
}

/// Why the broker's accounts could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    #[error("cannot connect to the broker as its dynsec admin: {0}")]
    Connect(#[source] Box<rumqttc::ConnectionError>),
    #[error("the broker refused the dynsec admin's connection: {0:?} (wrong credentials?)")]
    ConnectRefused(ConnectReturnCode),
    #[error(
        "the broker refused {RESPONSE_TOPIC} to {0:?}: not a dynsec admin, or the plugin is not loaded"
    )]
    NotAdmin(String),
    #[error("cannot send to the broker: {0}")]
    Send(#[from] rumqttc::ClientError),
    #[error(
        "the broker did not answer {command} within {ANSWER_TIMEOUT:?} (is the dynamic security plugin loaded?)"
    )]
    Timeout { command: String },
    #[error("the broker refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error("unexpected answer to {command}: {problem}")]
    Malformed { command: String, problem: String },
    #[error("{name:?} cannot be a broker username: {problem}")]
    InvalidName { name: String, problem: &'static str },
    #[error("a pen's secret must not be empty")]
    EmptySecret,
    #[error("client {0:?} exists at the broker and is not a pen (a consumer or an admin)")]
    NotAPen(String),
    #[error("client {0:?} exists at the broker and is a pen, not a consumer")]
    NotAConsumer(String),
}

/// One command's answer.
#[derive(Debug, Deserialize)]
struct Answer {
    command: String,
    error: Option<String>,
    data: Option<Value>,
    #[serde(rename = "correlationData")]
    correlation: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Answers {
    responses: Vec<Answer>,
}

impl Answer {
    /// The broker's refusal, unless it is one of `tolerated` (an
    /// "already exists" or "not found" that leaves the wanted state).
    fn check(&self, tolerated: &[&str]) -> Result<(), DynsecError> {
        match &self.error {
            Some(e) if !tolerated.contains(&e.as_str()) => Err(DynsecError::Refused {
                command: self.command.clone(),
                error: e.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// `data.<key>` of a successful answer (`data` itself for `None`).
    fn data<T: serde::de::DeserializeOwned>(&self, key: Option<&str>) -> Result<T, DynsecError> {
        self.check(&[])?;
        let data = self.data.as_ref();
        let value = match key {
            Some(key) => data.and_then(|d| d.get(key)),
            None => data,
        };
        serde_json::from_value(value.cloned().unwrap_or(Value::Null)).map_err(|e| {
            DynsecError::Malformed {
                command: self.command.clone(),
                problem: e.to_string(),
            }
        })
    }
}

/// An ACL entry of a role, as the plugin spells it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Acl {
    pub acltype: String,
    pub topic: String,
    pub allow: bool,
}

impl Acl {
    fn allow(acltype: &str, topic: &str) -> Acl {
        Acl {
            acltype: acltype.into(),
            topic: topic.into(),
            allow: true,
        }
    }

    fn to_json(&self) -> Value {
        json!({"acltype": self.acltype, "topic": self.topic, "allow": self.allow})
    }
}

/// A pen: publish its own `up`, subscribe to and receive its own `down`.
/// Literal subscriptions, so no wildcard or `$share` form of them passes.
pub fn pen_acls(device_id: &str) -> Vec<Acl> {
    let (up, down) = (up_topic(device_id), down_topic(device_id));
    vec![
        Acl::allow("publishClientSend", &up),
        Acl::allow("subscribeLiteral", &down),
        Acl::allow("unsubscribeLiteral", &down),
        Acl::allow("publishClientReceive", &down),
    ]
}

/// The consumers: the two filters they subscribe to (exactly those), every
/// pen's `up`, and the downlinks and flags they publish.
pub fn consumer_acls() -> Vec<Acl> {
    let mut acls = Vec::new();
    for filter in [SUBSCRIPTION, PLAIN_SUBSCRIPTION] {
        acls.push(Acl::allow("subscribeLiteral", filter));
        acls.push(Acl::allow("unsubscribeLiteral", filter));
    }
    acls.push(Acl::allow("publishClientReceive", PLAIN_SUBSCRIPTION));
    acls.push(Acl::allow(
        "publishClientSend",
        "pentrace/v1/devices/+/down",
    ));
    acls.push(Acl::allow(
        "publishClientSend",
        "pentrace/v1/clinics/+/flags",
    ));
    acls
}

/// A client as `getClient`/`listClients` describe it.
#[derive(Debug, Deserialize)]
struct ClientInfo {
    username: String,
    clientid: Option<String>,
    #[serde(default)]
    roles: Vec<RoleRef>,
}

#[derive(Debug, Deserialize)]
struct RoleRef {
    rolename: String,
}

impl ClientInfo {
    fn holds(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.rolename == role)
    }

    fn is_pen(&self) -> bool {
        self.holds(&pen_role(&self.username))
    }
}

#[derive(Debug, Deserialize)]
struct RoleInfo {
    #[serde(default)]
    acls: Vec<Acl>,
}

#[derive(Debug, Deserialize)]
struct ClientPage {
    #[serde(rename = "totalCount")]
    total: usize,
    clients: Vec<ClientInfo>,
}

/// Checks a name that becomes a username, a client id and a topic level.
pub fn check_name(name: &str) -> Result<(), DynsecError> {
    let problem = if name.is_empty() {
        Some("empty")
    } else if name.len() > 256 {
        Some("longer than 256 bytes")
    } else if name.contains(['+', '#', '/']) {
        Some("contains an MQTT wildcard or a topic separator (+ # /)")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(DynsecError::InvalidName {
            name: name.into(),
            problem,
        }),
        None => Ok(()),
    }
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Answer>>>>>;

/// A connection to the broker as its dynsec admin.
#[derive(Debug)]
pub struct BrokerAccounts {
    client: AsyncClient,
    waiting: Waiting,
    poller: JoinHandle<()>,
}

impl Drop for BrokerAccounts {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl BrokerAccounts {
    /// Connects to the broker as its dynsec admin.
    pub async fn connect(
        host: &str,
        port: u16,
        admin_user: &str,
        admin_password: &str,
    ) -> Result<BrokerAccounts, DynsecError> {
        // The admin made by `mosquitto_ctrl dynsec init` has no fixed
        // client id; a random one lets several processes administer at once.
        let id = format!("pentrace-dynsec-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_credentials(admin_user, admin_password)
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(16 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(options, 64);
        let waiting = Waiting::default();
        let (ready_tx, ready) = oneshot::channel();
        let poller = tokio::spawn(poll(
            eventloop,
            client.clone(),
            waiting.clone(),
            ready_tx,
            admin_user.to_owned(),
        ));
        let accounts = BrokerAccounts {
            client,
            waiting,
            poller,
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, ready).await {
            Ok(Ok(Ok(()))) => Ok(accounts),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) | Err(_) => Err(DynsecError::Timeout {
                command: format!("the SUBSCRIBE to {RESPONSE_TOPIC}"),
            }),
        }
    }

    /// Sends `commands` in one message and returns their answers, in order.
    /// The plugin runs one message's commands back to back, with no client
    /// packet handled in between.
    async fn run(&self, mut commands: Vec<Value>) -> Result<Vec<Answer>, DynsecError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let first = commands
            .first()
            .and_then(|c| c.get("command"))
            .and_then(Value::as_str)
            .unwrap_or("nothing")
            .to_owned();
        let id = uuid::Uuid::new_v4().simple().to_string();
        for c in &mut commands {
            c["correlationData"] = Value::String(id.clone());
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), tx);
        let payload = json!({ "commands": commands }).to_string();
        let sent = self
            .client
            .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload)
            .await;
        let answered = match sent {
            Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, rx).await,
            Err(e) => {
                self.lock().remove(&id);
                return Err(e.into());
            }
        };
        let Ok(Ok(answers)) = answered else {
            self.lock().remove(&id);
            return Err(DynsecError::Timeout { command: first });
        };
        if answers.len() != commands.len() {
            return Err(DynsecError::Malformed {
                command: first,
                problem: format!("{} answers to {} commands", answers.len(), commands.len()),
            });
        }
        Ok(answers)
    }

    /// One command.
    async fn run_one(&self, command: Value) -> Result<Answer, DynsecError> {
        let mut answers = self.run(vec![command]).await?;
        answers.pop().ok_or_else(|| DynsecError::Malformed {
            command: "a command".into(),
            problem: "no answer".into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<Answer>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client `username`, if the broker has one.
    async fn client_info(&self, username: &str) -> Result<Option<ClientInfo>, DynsecError> {
        let answer = self
            .run_one(json!({"command": "getClient", "username": username}))
            .await?;
        if answer.error.as_deref() == Some("Client not found") {
            return Ok(None);
        }
        answer.data(Some("client")).map(Some)
    }

    /// Idempotent set-up: default ACL access deny, the consumer role, and
    /// one client per consumer (reserved client id = username).
    ///
    /// There is no shared pen role: each pen gets its own from
    /// [`BrokerAccounts::set_pen`] (no `%u` in dynsec). Consumers are given
    /// as (username, password). Only what differs is changed, because changes
    /// disconnect the clients they touch; but each consumer's password is
    /// always set (it cannot be read back), which reconnects a running
    /// consumer once: its persistent session stays, and what it had not
    /// acknowledged is delivered again.
    pub async fn prepare(&self, consumers: &[(String, SecretString)]) -> Result<(), DynsecError> {
        for (username, _) in consumers {
            check_name(username)?;
        }
        let deny: Vec<Value> = [
            "publishClientSend",
            "publishClientReceive",
            "subscribe",
            "unsubscribe",
        ]
        .iter()
        .map(|t| json!({"acltype": t, "allow": false}))
        .collect();
        let mut reads = vec![
            json!({"command": "setDefaultACLAccess", "acls": deny}),
            json!({"command": "getRole", "rolename": CONSUMER_ROLE}),
        ];
        for (username, _) in consumers {
            reads.push(json!({"command": "getClient", "username": username}));
        }
        let answers = self.run(reads).await?;
        answers[0].check(&[])?;
        let mut changes = role_changes(&answers[1])?;
        for ((username, password), answer) in consumers.iter().zip(&answers[2..]) {
            changes.extend(consumer_changes(username, password, answer)?);
        }
        for answer in self.run(changes).await? {
            answer.check(&[])?;
        }
        Ok(())
    }

    /// Creates the pen's client (username = client id = device id, password
    /// = secret, its own role), or sets its password and enables it if it
    /// exists. A newly registered pen can connect at once.
    ///
    /// Setting the password of an existing pen disconnects its connections
    /// (dynsec does so on every change to a client), so a rotated-out
    /// secret stops working at once; the pen reconnects with the new one.
    pub async fn set_pen(&self, device_id: &str, secret: &str) -> Result<(), DynsecError> {
        check_name(device_id)?;
        if secret.is_empty() {
            return Err(DynsecError::EmptySecret);
        }
        let role = pen_role(device_id);
        let new_password = [
            json!({"command": "setClientPassword", "username": device_id, "password": secret}),
            json!({"command": "enableClient", "username": device_id}),
        ];
        match self.client_info(device_id).await? {
            Some(client) if !client.is_pen() => Err(DynsecError::NotAPen(device_id.into())),
            Some(_) => self.run_all(new_password.into()).await,
            None => {
                let acls: Vec<Value> = pen_acls(device_id).iter().map(Acl::to_json).collect();
                let answers = self
                    .run(vec![
                        json!({"command": "createRole", "rolename": role, "acls": acls}),
                        json!({
                            "command": "createClient",
                            "username": device_id,
                            "password": secret,
                            "clientid": device_id,
                            "roles": [{"rolename": role}],
                        }),
                    ])
                    .await?;
                answers[0].check(&["Role already exists"])?;
                match answers[1].error.as_deref() {
                    // Created meanwhile by another admin, as a pen (it
                    // holds the role, which only pens hold).
                    Some("Client already exists") => self.run_all(new_password.into()).await,
                    _ => answers[1].check(&[]),
                }
            }
        }
    }

    /// Deletes the pen's client; a connected one is disconnected at once.
    ///
    /// Its role goes too. A pen the broker does not know is not an error.
    pub async fn remove_pen(&self, device_id: &str) -> Result<(), DynsecError> {
        check_name(device_id)?;
        if let Some(client) = self.client_info(device_id).await?
            && !client.is_pen()
        {
            return Err(DynsecError::NotAPen(device_id.into()));
        }
        let answers = self
            .run(vec![
                json!({"command": "deleteClient", "username": device_id}),
                json!({"command": "deleteRole", "rolename": pen_role(device_id)}),
            ])
            .await?;
        answers[0].check(&["Client not found"])?;
        answers[1].check(&["Role not found"])
    }

    /// Usernames of the pens the broker knows (for reconciling with the
    /// registry): the clients holding their own pen role.
    pub async fn pens(&self) -> Result<Vec<String>, DynsecError> {
        let mut pens = Vec::new();
        let mut offset = 0;
        loop {
            let page: ClientPage = self
                .run_one(json!({
                    "command": "listClients",
                    "verbose": true,
                    "count": LIST_PAGE,
                    "offset": offset,
                }))
                .await?
                .data(None)?;
            let last = page.clients.is_empty();
            offset += page.clients.len();
            pens.extend(
                page.clients
                    .into_iter()
                    .filter(ClientInfo::is_pen)
                    .map(|c| c.username),
            );
            if last || offset >= page.total {
                return Ok(pens);
            }
        }
    }

    async fn run_all(&self, commands: Vec<Value>) -> Result<(), DynsecError> {
        for answer in self.run(commands).await? {
            answer.check(&[])?;
        }
        Ok(())
    }
}

/// The commands that make the consumer role hold [`consumer_acls`], from
/// its `getRole` answer.
fn role_changes(answer: &Answer) -> Result<Vec<Value>, DynsecError> {
    let wanted = consumer_acls();
    if answer.error.as_deref() == Some("Role not found") {
        let acls: Vec<Value> = wanted.iter().map(Acl::to_json).collect();
        return Ok(vec![
            json!({"command": "createRole", "rolename": CONSUMER_ROLE, "acls": acls}),
        ]);
    }
    let held: RoleInfo = answer.data(Some("role"))?;
    let mut changes = Vec::new();
    for acl in wanted.iter().filter(|a| !held.acls.contains(a)) {
        // Same type and topic, but a deny: replace it.
        if held
            .acls
            .iter()
            .any(|h| h.acltype == acl.acltype && h.topic == acl.topic)
        {
            changes.push(json!({
                "command": "removeRoleACL",
                "rolename": CONSUMER_ROLE,
                "acltype": acl.acltype,
                "topic": acl.topic,
            }));
        }
        let mut add = acl.to_json();
        add["command"] = "addRoleACL".into();
        add["rolename"] = CONSUMER_ROLE.into();
        changes.push(add);
    }
    Ok(changes)
}

/// The commands that make `username` a consumer client with `password`,
/// from its `getClient` answer.
fn consumer_changes(
    username: &str,
    password: &SecretString,
    answer: &Answer,
) -> Result<Vec<Value>, DynsecError> {
    let password = password.expose_secret();
    if answer.error.as_deref() == Some("Client not found") {
        return Ok(vec![json!({
            "command": "createClient",
            "username": username,
            "password": password,
            "clientid": username,
            "roles": [{"rolename": CONSUMER_ROLE}],
        })]);
    }
    let client: ClientInfo = answer.data(Some("client"))?;
    if client.is_pen() {
        return Err(DynsecError::NotAConsumer(username.into()));
    }
    let mut changes = Vec::new();
    if client.clientid.as_deref() != Some(username) {
        changes
            .push(json!({"command": "modifyClient", "username": username, "clientid": username}));
    }
    if !client.holds(CONSUMER_ROLE) {
        changes.push(
            json!({"command": "addClientRole", "username": username, "rolename": CONSUMER_ROLE}),
        );
    }
    changes
        .push(json!({"command": "setClientPassword", "username": username, "password": password}));
    changes.push(json!({"command": "enableClient", "username": username}));
    Ok(changes)
}

/// Drives the admin connection: subscribes to the answers on every
/// CONNACK (clean session), hands each answer to its waiting command, and
/// keeps polling after errors so rumqttc reconnects. The first CONNACK and
/// SUBACK, or the first error, go to `ready`.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    waiting: Waiting,
    ready: oneshot::Sender<Result<(), DynsecError>>,
    admin: String,
) {
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "cannot subscribe to the dynsec answers");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, SubscribeReasonCode::Failure));
                let outcome = if granted {
                    Ok(())
                } else {
                    Err(DynsecError::NotAdmin(admin.clone()))
                };
                match ready.take() {
                    Some(r) => {
                        let _ = r.send(outcome);
                    }
                    None if !granted => tracing::error!("{}", DynsecError::NotAdmin(admin.clone())),
                    None => {}
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                deliver(&waiting, &p.payload);
            }
            Ok(_) => {}
            Err(e) => match ready.take() {
                Some(r) => {
                    let error = match e {
                        ConnectionError::ConnectionRefused(code) => {
                            DynsecError::ConnectRefused(code)
                        }
                        other => DynsecError::Connect(Box::new(other)),
                    };
                    let _ = r.send(Err(error));
                    return;
                }
                None => {
                    tracing::warn!(error = %e, "dynsec admin connection lost; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

/// Hands an answer message to the command waiting for it. Answers to other
/// admins' commands (every admin gets every answer) are ignored.
fn deliver(waiting: &Waiting, payload: &[u8]) {
    let Ok(answers) = serde_json::from_slice::<Answers>(payload) else {
        tracing::warn!("an unreadable dynsec answer");
        return;
    };
    let Some(id) = answers
        .responses
        .first()
        .and_then(|a| a.correlation.clone())
    else {
        return;
    };
    let waiter = waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    if let Some(w) = waiter {
        let _ = w.send(answers.responses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::device_of_topic;
    use proptest::prelude::*;

    fn answer(json: Value) -> Answer {
        serde_json::from_value(json).expect("answer")
    }

    #[test]
    fn names_that_would_widen_a_topic_are_refused() {
        for bad in ["", "+", "#", "a/b", "pen-#", "a\nb", &"x".repeat(257)] {
            assert!(
                matches!(check_name(bad), Err(DynsecError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        for good in ["pen-0001", "PEN_7", "a.b", "ü"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    proptest! {
        /// An accepted name is exactly one topic level: its topics name it
        /// and nobody else.
        #[test]
        fn an_accepted_name_is_one_topic_level(name in "\\PC{0,40}") {
            if check_name(&name).is_ok() {
                let topic = up_topic(&name);
                prop_assert_eq!(device_of_topic(&topic), Some(name.as_str()));
            }
        }
    }

    #[test]
    fn the_consumer_role_is_created_whole_or_completed() {
        let missing = answer(json!({"command": "getRole", "error": "Role not found"}));
        let changes = role_changes(&missing).expect("changes");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0]["command"], "createRole");
        assert_eq!(
            changes[0]["acls"].as_array().map(Vec::len),
            Some(consumer_acls().len())
        );

        let acls: Vec<Value> = consumer_acls().iter().map(Acl::to_json).collect();
        let whole = answer(json!({"command": "getRole", "data": {"role": {"acls": acls}}}));
        assert!(role_changes(&whole).expect("none").is_empty());

        // One grant turned into a deny, one missing: replaced and added.
        let mut acls = acls;
        acls[0]["allow"] = false.into();
        acls.pop();
        let drifted = answer(json!({"command": "getRole", "data": {"role": {"acls": acls}}}));
        let commands: Vec<_> = role_changes(&drifted)
            .expect("changes")
            .iter()
            .map(|c| c["command"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(commands, ["removeRoleACL", "addRoleACL", "addRoleACL"]);
    }

    #[test]
    fn a_consumer_is_created_or_corrected_and_a_pen_is_never_one() {
        let password = SecretString::from("pw");
        let missing = answer(json!({"command": "getClient", "error": "Client not found"}));
        let created = consumer_changes("pentrace-1", &password, &missing).expect("create");
        assert_eq!(created[0]["command"], "createClient");
        assert_eq!(created[0]["clientid"], "pentrace-1");

        let loose = answer(json!({"command": "getClient", "data": {"client": {
            "username": "pentrace-1", "roles": []}}}));
        let commands: Vec<_> = consumer_changes("pentrace-1", &password, &loose)
            .expect("fix")
            .iter()
            .map(|c| c["command"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            commands,
            [
                "modifyClient",
                "addClientRole",
                "setClientPassword",
                "enableClient"
            ]
        );

        let pen = answer(json!({"command": "getClient", "data": {"client": {
            "username": "pen-1", "clientid": "pen-1",
            "roles": [{"rolename": pen_role("pen-1")}]}}}));
        assert!(matches!(
            consumer_changes("pen-1", &password, &pen),
            Err(DynsecError::NotAConsumer(_))
        ));
    }

    #[test]
    fn answers_reach_only_their_own_command() {
        let waiting = Waiting::default();
        let (tx, mut rx) = oneshot::channel();
        waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert("mine".into(), tx);
        let theirs = json!({"responses": [{"command": "getClient", "correlationData": "theirs"}]});
        deliver(&waiting, theirs.to_string().as_bytes());
        deliver(&waiting, b"not json");
        assert!(rx.try_recv().is_err(), "delivered someone else's answer");
        let mine = json!({"responses": [
            {"command": "createRole", "correlationData": "mine"},
            {"command": "createClient", "error": "Client already exists", "correlationData": "mine"},
        ]});
        deliver(&waiting, mine.to_string().as_bytes());
        let answers = rx.try_recv().expect("mine");
        assert_eq!(answers.len(), 2);
        assert!(answers[1].check(&["Client already exists"]).is_ok());
        assert!(answers[1].check(&[]).is_err());
    }
}
