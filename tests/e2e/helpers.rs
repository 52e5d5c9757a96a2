//! `spawn_app`: a store of its own (a PostgreSQL database or an SQLite file
//! in a data directory of its own) and the real binary serving on free
//! ports; [`Rows`], the one way a test reads rows no API shows.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pentrace_proto::v1 as pb;
use pentrace_proto::v1::compliance_client::ComplianceClient;
use pentrace_proto::v1::fleet_client::FleetClient;
use pentrace_proto::v1::registry_client::RegistryClient;
use pentrace_proto::v1::telemetry_client::TelemetryClient;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Connection, Executor, FromRow, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Server of the tests' PostgreSQL (databases are created per test).
pub fn admin_url() -> String {
    std::env::var("PENTRACE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{db}")
}

/// A database of its own for one test, dropped with it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("pentrace_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        let url = url_for(&name);
        let pool = PgPool::connect(&url).await.expect("test pool");
        TestDb { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs its own runtime and connection: the test's runtime
        // may be shutting down.
        let drop_db = async move {
            if let Ok(mut c) = PgConnection::connect(&admin_url()).await {
                let _ = c
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        };
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(drop_db))
        })
        .join();
    }
}

/// The store a test runs on. [`crate::both_stores!`] runs each test body
/// once with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A database of its own on the tests' PostgreSQL (`--database-url`).
    Postgres,
    /// The embedded default: `pentrace.db` in the data directory.
    Sqlite,
}

/// One test's store and the server's data directory (a fresh temporary
/// directory on both stores: its PKI, and on SQLite its database file),
/// removed with it; on PostgreSQL also a database of its own, dropped with
/// it. Every `pentrace` process of the test ([`Server::start`],
/// [`pentrace_cli`]) is pointed at it.
pub struct TestStore {
    pub data_dir: PathBuf,
    pg: Option<TestDb>,
    rows: OnceCell<Rows>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl TestStore {
    pub async fn create(backend: Backend) -> TestStore {
        let data_dir =
            std::env::temp_dir().join(format!("pentrace-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let pg = match backend {
            Backend::Postgres => Some(TestDb::create().await),
            Backend::Sqlite => None,
        };
        TestStore {
            data_dir,
            pg,
            rows: OnceCell::new(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pg {
            Some(_) => Backend::Postgres,
            None => Backend::Sqlite,
        }
    }

    /// The PostgreSQL database, for the parts of a test that only
    /// PostgreSQL has (roles, row locks); panics on SQLite.
    pub fn pg(&self) -> &TestDb {
        self.pg
            .as_ref()
            .expect("a PostgreSQL-only step in a test on SQLite")
    }

    /// The SQLite file (created by the server's first start).
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("pentrace.db")
    }

    /// What names the server's log file.
    fn label(&self) -> String {
        match &self.pg {
            Some(db) => db.name.clone(),
            None => self.data_dir.file_name().map_or_else(
                || "pentrace-sqlite".into(),
                |n| n.to_string_lossy().into_owned(),
            ),
        }
    }

    /// The flags that point a `pentrace` command at the store (after its
    /// subcommand's own); the data directory goes in the environment.
    fn store_args(&self) -> Vec<String> {
        match &self.pg {
            Some(db) => vec!["--database-url".into(), db.url.clone()],
            None => Vec::new(),
        }
    }

    /// `pentrace ARGS` against this store, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pentrace"));
        cmd.env_remove("DATABASE_URL")
            .env("PENTRACE_DATA_DIR", &self.data_dir)
            .args(args)
            .args(self.store_args());
        cmd
    }

    /// A read-only view of the store's rows (opened on first use, once the
    /// server has created the SQLite file).
    pub async fn rows(&self) -> &Rows {
        self.rows
            .get_or_init(|| async {
                match &self.pg {
                    Some(db) => {
                        let options: PgConnectOptions = db.url.parse().expect("url");
                        let pool = PgPoolOptions::new()
                            .max_connections(2)
                            .connect_with(
                                options.options([("default_transaction_read_only", "on")]),
                            )
                            .await
                            .expect("a read-only pool");
                        Rows::Postgres(pool)
                    }
                    None => {
                        let options = SqliteConnectOptions::new()
                            .filename(self.sqlite_path())
                            .read_only(true)
                            .busy_timeout(Duration::from_secs(10));
                        let pool = SqlitePoolOptions::new()
                            .max_connections(2)
                            .connect_with(options)
                            .await
                            .unwrap_or_else(|e| {
                                panic!("{} read-only: {e}", self.sqlite_path().display())
                            });
                        Rows::Sqlite(pool)
                    }
                }
            })
            .await
    }

    /// Runs `sql` (one or more statements) as someone with write access to
    /// the database itself would, past the server: for tests of what the
    /// server does when its database is changed under it.
    pub async fn execute_as_owner(&self, sql: &str) -> Result<(), sqlx::Error> {
        match &self.pg {
            Some(db) => db.pool.execute(sql).await.map(drop),
            None => {
                let options = SqliteConnectOptions::new()
                    .filename(self.sqlite_path())
                    .busy_timeout(Duration::from_secs(10));
                let mut c = sqlx::SqliteConnection::connect_with(&options).await?;
                let done = c.execute(sql).await.map(drop);
                c.close().await?;
                done
            }
        }
    }

    /// The store as the server uses it (through the store crate), for a
    /// test that must read records exactly as they were hashed.
    pub async fn open_store(&self) -> std::sync::Arc<dyn pentrace_store::Store> {
        match &self.pg {
            Some(db) => std::sync::Arc::new(pentrace_store::postgres::PgStore::from_pool(
                db.pool.clone(),
            )),
            None => std::sync::Arc::new(
                pentrace_store::sqlite::SqliteStore::open(&self.sqlite_path())
                    .await
                    .expect("the SQLite store"),
            ),
        }
    }
}

/// Direct reads of a store's rows, read-only, for what no API shows (the
/// messages stored per key, audit events, quarantined bytes). SQL given
/// here must mean the same in both dialects.
#[derive(Debug, Clone)]
pub enum Rows {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Rows {
    /// Every row of a query both dialects share, as a tuple of `String`,
    /// `i64`, `Vec<u8>` or `Option`s of them.
    pub async fn fetch<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
    {
        let rows = match self {
            Rows::Postgres(pool) => sqlx::query_as::<_, T>(sql).fetch_all(pool).await,
            Rows::Sqlite(pool) => sqlx::query_as::<_, T>(sql).fetch_all(pool).await,
        };
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one integer of a query (`SELECT count(*) FROM ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        let rows: Vec<(i64,)> = self.fetch(sql).await;
        match rows.as_slice() {
            [(n,)] => *n,
            _ => panic!("{sql}: {} rows, not one", rows.len()),
        }
    }

    /// Messages of the device stored (rows of `device_messages`).
    pub async fn messages(&self, device: &str) -> i64 {
        self.count(&format!(
            "SELECT count(*) FROM device_messages WHERE device_id = '{device}'"
        ))
        .await
    }

    /// Stroke samples stored more than once: the same (device, seq, time),
    /// which one message of the simulator never repeats. `stroke_samples`
    /// has no key (the message keys stop duplicates one level up), so this
    /// is what a message committed twice would leave behind.
    pub async fn doubled(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM (SELECT device_id, seq, time FROM stroke_samples \
             GROUP BY device_id, seq, time HAVING count(*) > 1) AS doubled",
        )
        .await
    }
}

/// A running `pentrace serve` process.
pub struct Server {
    pub grpc: String,
    pub http: String,
    /// What the start-up line says about MQTT: `embedded:127.0.0.1:PORT`,
    /// the external broker's URL, or `off`.
    pub mqtt: String,
    /// What it says about the store: `postgres` or `sqlite:PATH`.
    pub store: String,
    child: Child,
    pub log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test's server log stays, for whoever reads the failure,
        // and every log with TEST_LOG.
        if !std::thread::panicking() && std::env::var_os("TEST_LOG").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Server {
    /// Starts the real binary on free ports on the test's store, with the
    /// store's data directory.
    pub async fn start(store: &TestStore, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let dir = store.data_dir.to_string_lossy().into_owned();
        let mut with_dir = vec![("PENTRACE_DATA_DIR", dir.as_str())];
        // The test's own settings last: they win.
        with_dir.extend_from_slice(envs);
        let store_args = store.store_args();
        let store_args: Vec<&str> = store_args.iter().map(String::as_str).collect();
        let server = Server::launch(&store.label(), &store_args, args, &with_dir).await;
        // The test runs on the store its name says.
        let expected = match store.backend() {
            Backend::Postgres => "postgres".to_owned(),
            Backend::Sqlite => format!("sqlite:{}", store.sqlite_path().display()),
        };
        assert_eq!(server.store, expected, "the server's store");
        server
    }

    /// Starts the real binary on free ports against the database at `url`
    /// (e.g. a private [`crate::pgcluster::PgCluster`]); `name` names its log.
    pub async fn start_at(url: &str, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::launch(name, &["--database-url", url], args, envs).await
    }

    async fn launch(name: &str, store: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Server {
        let log =
            std::env::temp_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log).expect("log file");
        // The embedded broker's default port (1883) is taken on a machine
        // running Mosquitto, and by the tests running in parallel.
        let mqtt_chosen = args
            .iter()
            .any(|a| ["--mqtt-url", "--mqtt-port", "--no-mqtt"].contains(a));
        let free_mqtt_port: &[&str] = if mqtt_chosen {
            &[]
        } else {
            &["--mqtt-port", "0"]
        };
        // A test that restarts a server may keep its gRPC address.
        let grpc_chosen = args.contains(&"--grpc-addr");
        let any_grpc_port: &[&str] = if grpc_chosen {
            &[]
        } else {
            &["--grpc-addr", "127.0.0.1:0"]
        };
        // Plaintext on loopback unless the test configures TLS itself
        // (tests/e2e/identity.rs covers TLS and mTLS).
        let tls_chosen = envs.iter().any(|(k, _)| k.starts_with("PENTRACE_TLS__"));
        let plaintext: &[&str] = if tls_chosen { &[] } else { &["--plaintext"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_pentrace"))
            .env_remove("DATABASE_URL")
            .args(["serve", "--http-addr", "127.0.0.1:0"])
            .args(plaintext)
            .args(store)
            .args(any_grpc_port)
            .args(free_mqtt_port)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").map(|_| "info").unwrap_or("warn"),
            )
            .env("PENTRACE_INGEST__GAP_CHECK_INTERVAL_S", "1")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start pentrace");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // Keep draining so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            line
        })
        .await
        .expect("read stdout");
        let field = |key: &str| -> String {
            let value = line.split_whitespace().find_map(|w| w.strip_prefix(key));
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            value
                .unwrap_or_else(|| panic!("no {key} in {line:?}; server log:\n{log_text}"))
                .to_owned()
        };
        let grpc = format!("http://{}", field("grpc="));
        let http = format!("http://{}", field("http="));
        let mqtt = field("mqtt=");
        let store = field("store=");
        Server {
            grpc,
            http,
            mqtt,
            store,
            child,
            log,
        }
    }

    /// The process id (for [`crate::rss::RssSampler`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far (stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the exit.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose calls carry a bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Runs the real binary's admin commands against the test's store.
pub fn pentrace_cli(store: &TestStore, args: &[&str]) -> String {
    let out = store.command(args).output().expect("run pentrace");
    assert!(
        out.status.success(),
        "pentrace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the real binary's admin commands against the database at `url`.
pub fn pentrace_cli_at(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(args)
        .args(["--database-url", url])
        .output()
        .expect("run pentrace");
    assert!(
        out.status.success(),
        "pentrace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the real binary against the test's store; returns the exit code
/// and everything it printed.
pub fn pentrace_run(store: &TestStore, args: &[&str]) -> (i32, String) {
    let out = store.command(args).output().expect("run pentrace");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Creates a user with `pentrace user add` and returns a token from
/// `pentrace token issue`.
pub fn user_token(store: &TestStore, name: &str, role: &str, clinics: &[&str]) -> String {
    let mut args = vec!["user", "add", "--name", name, "--role", role];
    for c in clinics {
        args.extend(["--clinic", c]);
    }
    pentrace_cli(store, &args);
    pentrace_cli(store, &["token", "issue", "--user", name])
        .trim()
        .to_owned()
}

/// A server and its store, with an admin's token.
pub struct TestApp {
    /// First: stopped before its store is removed.
    pub server: Server,
    pub store: TestStore,
    pub grpc: String,
    pub http: String,
    pub admin_token: String,
}

impl TestApp {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }
    /// A Telemetry client with a new gateway credential of the clinic: it
    /// may send for every pen registered there.
    pub async fn telemetry_for(&self, clinic: &str) -> TelemetryClient<Authed> {
        let secret = self.gateway_secret(clinic).await;
        TelemetryClient::with_interceptor(self.channel().await, Self::bearer(&secret))
    }
    /// Issues a gateway credential for the clinic.
    pub async fn gateway_secret(&self, clinic: &str) -> String {
        self.issue(
            pb::CredentialKind::GatewaySecret,
            &format!("gw-{clinic}"),
            clinic,
        )
        .await
        .secret
    }
    /// Issues a pen's own secret.
    pub async fn pen_secret(&self, device_id: &str) -> String {
        self.issue(pb::CredentialKind::PenSecret, device_id, "")
            .await
            .secret
    }
    pub async fn issue(
        &self,
        kind: pb::CredentialKind,
        principal: &str,
        clinic: &str,
    ) -> pb::IssuedDeviceCredential {
        self.registry()
            .await
            .issue_device_credential(pb::IssueDeviceCredentialRequest {
                kind: kind as i32,
                principal: principal.into(),
                clinic_id: clinic.into(),
                replace: false,
            })
            .await
            .unwrap_or_else(|s| panic!("issue a {kind:?} credential for {principal}: {s:?}"))
            .into_inner()
    }
    /// A Telemetry client presenting `secret`.
    pub async fn telemetry_with(&self, secret: &str) -> TelemetryClient<Authed> {
        TelemetryClient::with_interceptor(self.channel().await, Self::bearer(secret))
    }
    pub fn bearer(token: &str) -> Bearer {
        Bearer(format!("Bearer {token}").parse().expect("ascii token"))
    }
    pub async fn registry(&self) -> RegistryClient<Authed> {
        self.registry_as(&self.admin_token).await
    }
    pub async fn registry_as(&self, token: &str) -> RegistryClient<Authed> {
        RegistryClient::with_interceptor(self.channel().await, Self::bearer(token))
    }
    pub async fn compliance(&self) -> ComplianceClient<Authed> {
        self.compliance_as(&self.admin_token).await
    }
    pub async fn compliance_as(&self, token: &str) -> ComplianceClient<Authed> {
        ComplianceClient::with_interceptor(self.channel().await, Self::bearer(token))
    }
    pub async fn fleet(&self) -> FleetClient<Authed> {
        self.fleet_as(&self.admin_token).await
    }
    pub async fn fleet_as(&self, token: &str) -> FleetClient<Authed> {
        FleetClient::with_interceptor(self.channel().await, Self::bearer(token))
    }
    /// The device's sessions, as `Fleet.ListSessions` gives them.
    pub async fn sessions_of(&self, device_id: &str) -> Vec<pb::Session> {
        self.fleet()
            .await
            .list_sessions(pb::ListSessionsRequest {
                device_id: device_id.into(),
                ..Default::default()
            })
            .await
            .expect("sessions")
            .into_inner()
            .sessions
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.server.signal("TERM")
    }

    /// Replaces the server process with a new one on the same store.
    pub async fn restart(&mut self, args: &[&str], envs: &[(&str, &str)]) {
        self.server = Server::start(&self.store, args, envs).await;
        self.grpc = self.server.grpc.clone();
        self.http = self.server.http.clone();
    }

    /// The store's rows, read-only ([`Rows`]).
    pub async fn rows(&self) -> &Rows {
        self.store.rows().await
    }

    /// [`Rows::count`].
    pub async fn count(&self, sql: &str) -> i64 {
        self.rows().await.count(sql).await
    }

    /// [`Rows::messages`].
    pub async fn stored(&self, device: &str) -> i64 {
        self.rows().await.messages(device).await
    }
}

/// Creates a store and starts `pentrace serve` on it, on free ports.
pub async fn spawn_app(backend: Backend, args: &[&str]) -> TestApp {
    spawn_app_with(backend, args, &[]).await
}

/// [`spawn_app`] with extra environment variables.
pub async fn spawn_app_with(backend: Backend, args: &[&str], envs: &[(&str, &str)]) -> TestApp {
    spawn_app_on(TestStore::create(backend).await, args, envs).await
}

/// [`spawn_app_with`] on a store the test has prepared (e.g. files in its
/// data directory).
pub async fn spawn_app_on(store: TestStore, args: &[&str], envs: &[(&str, &str)]) -> TestApp {
    let server = Server::start(&store, args, envs).await;
    let (grpc, http) = (server.grpc.clone(), server.http.clone());
    let admin_token = user_token(&store, "Ada Admin", "admin", &[]);
    TestApp {
        server,
        store,
        grpc,
        http,
        admin_token,
    }
}

/// Waits for `check` to hold, polling, up to `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Registers a clinic, devices, products and lots.
pub async fn register(
    app: &TestApp,
    clinic: &str,
    devices: &[(&str, u32)],
    products: &[pb::Product],
    lots: &[pb::Lot],
) {
    register_on(&mut app.registry().await, clinic, devices, products, lots).await;
}

/// [`register`] through a given Registry client (a TLS channel, a server
/// started without a [`TestApp`]).
pub async fn register_on(
    r: &mut RegistryClient<Authed>,
    clinic: &str,
    devices: &[(&str, u32)],
    products: &[pb::Product],
    lots: &[pb::Lot],
) {
    r.register_clinic(pb::RegisterClinicRequest {
        clinic: Some(pb::Clinic {
            clinic_id: clinic.into(),
            name: clinic.into(),
            time_zone: "UTC".into(),
        }),
    })
    .await
    .expect("clinic");
    for (id, max_depth_um) in devices {
        r.register_device(pb::RegisterDeviceRequest {
            device: Some(pb::Device {
                device_id: (*id).into(),
                clinic_id: clinic.into(),
                model: "test-pen".into(),
                max_depth_um: *max_depth_um,
            }),
        })
        .await
        .expect("device");
    }
    for p in products {
        r.register_product(pb::RegisterProductRequest {
            product: Some(p.clone()),
        })
        .await
        .expect("product");
    }
    for l in lots {
        r.register_lot(pb::RegisterLotRequest {
            lot: Some(l.clone()),
        })
        .await
        .expect("lot");
    }
}

/// What the server answered on one `Telemetry.Ingest` stream.
#[derive(Debug)]
pub struct Downlinks {
    pub acks: Vec<pb::IngestAck>,
    pub rejections: Vec<pb::Rejection>,
    pub commands: Vec<pb::RejectCartridge>,
    /// How the stream ended: `Ok` when cleanly.
    pub end: Result<(), tonic::Status>,
}

impl Downlinks {
    /// The device's highest watermark announced (0 if none). Also checks
    /// that watermarks never went back.
    pub fn watermark(&self, device_id: &str) -> u64 {
        let mut last = 0;
        for a in self.acks.iter().filter(|a| a.device_id == device_id) {
            assert!(a.committed_seq >= last, "a watermark went back: {a:?}");
            last = a.committed_seq;
        }
        last
    }

    /// Whether an ack covers the seq (the pen's side of the contract).
    pub fn covers(&self, device_id: &str, seq: u64) -> bool {
        self.acks
            .iter()
            .filter(|a| a.device_id == device_id)
            .any(|a| {
                (1..=a.committed_seq).contains(&seq)
                    || a.stored.iter().any(|r| r.first <= seq && seq <= r.last)
            })
    }

    /// The rejection of one seq, if any.
    pub fn rejection(&self, device_id: &str, seq: u64) -> Option<&pb::Rejection> {
        self.rejections
            .iter()
            .find(|r| r.device_id == device_id && r.seq == seq)
    }
}

/// Streams the messages on one stream and collects every downlink until
/// the server ends the stream.
pub async fn exchange(
    client: &mut TelemetryClient<Authed>,
    messages: Vec<pb::DeviceMessage>,
) -> Downlinks {
    use pb::device_downlink::Body;
    use tokio_stream::StreamExt;
    let mut out = Downlinks {
        acks: Vec::new(),
        rejections: Vec::new(),
        commands: Vec::new(),
        end: Ok(()),
    };
    let mut inbound = match client.ingest(tokio_stream::iter(messages)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            out.end = Err(status);
            return out;
        }
    };
    while let Some(item) = inbound.next().await {
        match item.map(|d| d.body) {
            Ok(Some(Body::Ack(a))) => out.acks.push(a),
            Ok(Some(Body::Rejection(r))) => out.rejections.push(r),
            Ok(Some(Body::RejectCartridge(c))) => out.commands.push(c),
            Ok(None) => {}
            Err(status) => {
                out.end = Err(status);
                break;
            }
        }
    }
    out
}
