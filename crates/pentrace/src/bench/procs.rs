//! Processes the bench starts (a private Mosquitto, `pentrace serve`) and
//! what `/proc` says about them: peak RSS and CPU seconds.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (free when asked; another process may
/// take it before it is used, which the caller then sees as a start error).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts on `port`, or the child exits.
fn wait_for_port(child: &mut Child, port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A child process killed (and its scratch directory removed) on drop.
#[derive(Debug)]
pub struct Owned {
    child: Child,
    dir: PathBuf,
    keep: bool,
}

impl Owned {
    /// Keeps the scratch directory (e.g. a failed server's log) and says
    /// where it is.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.keep = true;
        self.dir.clone()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop (SIGTERM: drain, commit, ack) and waits up
    /// to `patience` before killing it.
    pub fn stop(&mut self, patience: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // PENTRACE_BENCH_KEEP=1 keeps every server's log for profiling.
        if !self.keep && std::env::var_os("PENTRACE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A scratch directory under the system's temporary directory.
pub fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "pentrace-bench-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A private Mosquitto on a free port with the shipped limits
/// (`deploy/mosquitto/conf.d`): the stock `max_queued_messages 1000` drops
/// QoS 1 messages silently (docs/architecture.md, "Delivery").
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    pub process: Owned,
}

impl Mosquitto {
    /// Starts it; `limits` is the `conf.d` directory to include.
    pub fn start(limits: &Path) -> anyhow::Result<Mosquitto> {
        let port = free_port()?;
        let dir = scratch_dir("mosquitto")?;
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest file {}/mosquitto.log\ninclude_dir {}\n",
            dir.display(),
            limits.display()
        );
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        let binary = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let mut process = Owned {
            child,
            dir,
            keep: false,
        };
        wait_for_port(&mut process.child, port, "mosquitto")?;
        Ok(Mosquitto { port, process })
    }

    /// Ends the persistent session of a consumer that is gone for good.
    /// Mosquitto keeps an offline session in the shared subscription and
    /// goes on handing it its share of the messages, which then wait for a
    /// consumer that never returns: a later run's pens would lose them.
    pub async fn forget_session(&self, client_id: &str) -> anyhow::Result<()> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 10);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
                    return Ok::<(), rumqttc::ConnectionError>(());
                }
            }
        });
        connected
            .await
            .with_context(|| format!("no CONNACK for {client_id}"))??;
        client.disconnect().await?;
        // Poll until the DISCONNECT is out and the broker closes the socket.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while events.poll().await.is_ok() {}
        })
        .await;
        Ok(())
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Where the server keeps its data.
#[derive(Debug, Clone)]
pub enum ServerStore {
    Postgres(String),
    Sqlite(PathBuf),
}

/// `pentrace serve` as a child process of this binary.
#[derive(Debug)]
pub struct Server {
    pub grpc_port: u16,
    /// The CA its TLS certificate chains to; None = plaintext.
    pub ca_cert: Option<PathBuf>,
    /// Its MQTT client id (persistent session).
    pub client_id: String,
    pub process: Owned,
}

impl Server {
    /// Starts the server on free ports, consuming MQTT from `mqtt_url`;
    /// its log goes to `serve.log` in a scratch directory. With `tls` it
    /// serves TLS with the CA and certificate it creates in its data
    /// directory (as a fresh `pentrace serve` does); else `--plaintext`.
    pub fn start(store: &ServerStore, mqtt_url: &str, tls: bool) -> anyhow::Result<Server> {
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        let client_id = format!("pentrace-bench-{grpc_port}");
        let dir = scratch_dir("serve")?;
        let log = std::fs::File::create(dir.join("serve.log")).context("server log")?;
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--mqtt-url")
            .arg(mqtt_url)
            .arg("--mqtt-client-id")
            .arg(&client_id)
            .env_remove("DATABASE_URL")
            .env_remove("PENTRACE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log);
        let data_dir = match store {
            ServerStore::Postgres(url) => {
                command.env("DATABASE_URL", url);
                dir.clone()
            }
            ServerStore::Sqlite(data_dir) => data_dir.clone(),
        };
        command.env("PENTRACE_DATA_DIR", &data_dir);
        if !tls {
            command.arg("--plaintext");
        }
        let child = command.spawn().context("cannot start pentrace serve")?;
        let mut process = Owned {
            child,
            dir,
            keep: false,
        };
        wait_for_port(&mut process.child, grpc_port, "pentrace serve")?;
        Ok(Server {
            grpc_port,
            ca_cert: tls.then(|| data_dir.join("pki").join("ca.pem")),
            client_id,
            process,
        })
    }

    /// `https://127.0.0.1:PORT` (or `http://` in plaintext) of the gRPC
    /// services.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.ca_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.grpc_port)
    }
}

/// Peak resident set size (VmHWM) of a process, in bytes.
pub fn peak_rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds a process has used.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds of every process whose command name is `comm` (e.g. all of
/// PostgreSQL's backends), living now.
pub fn cpu_seconds_of_all(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|pid| cpu_seconds(&pid))
        .sum()
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on
/// Linux almost everywhere).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds used, by the parts sharing the machine, between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    pub server: f64,
    pub postgres: f64,
    pub broker: f64,
    /// This process: the simulator (load generator), the flag probe and
    /// watcher.
    pub load: f64,
}

impl CpuSplit {
    /// A reading now.
    pub fn now(server: &str, broker: Option<&str>) -> CpuSplit {
        CpuSplit {
            server: cpu_seconds(server).unwrap_or(0.0),
            postgres: cpu_seconds_of_all("postgres"),
            broker: broker.and_then(cpu_seconds).unwrap_or(0.0),
            load: cpu_seconds("self").unwrap_or(0.0),
        }
    }

    /// What was used since `earlier`.
    pub fn since(self, earlier: CpuSplit) -> CpuSplit {
        CpuSplit {
            server: self.server - earlier.server,
            // Backends that exited in between are not counted (a pool keeps
            // its connections, so there are few).
            postgres: (self.postgres - earlier.postgres).max(0.0),
            broker: self.broker - earlier.broker,
            load: self.load - earlier.load,
        }
    }
}
