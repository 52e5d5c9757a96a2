//! A private Mosquitto per test, on a free port, with the project's
//! `deploy/mosquitto/conf.d` limits — never the machine's default broker,
//! whose stock queue limit silently drops QoS 1 messages. Persistence on by
//! default; fault tests kill it (`kill9`) and bring it back (`restart`) on
//! the same port, config and persistence directory. `start_with_dynsec`
//! runs the shipped production config instead: dynamic security plugin,
//! no anonymous clients.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub struct Broker {
    pub port: u16,
    pub url: String,
    /// None once killed and not restarted.
    child: Option<Child>,
    dir: PathBuf,
    persistence: bool,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The dynsec admin of [`Broker::start_with_dynsec`]: username, password.
pub const DYNSEC_ADMIN: (&str, &str) = ("dynsec-admin", "admin-secret-for-tests");

/// The plugin where Debian's mosquitto package puts it, else where the
/// shipped config (the eclipse-mosquitto image) has it.
fn dynsec_plugin() -> &'static str {
    let debian = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
    if std::path::Path::new(debian).exists() {
        debian
    } else {
        "/usr/lib/mosquitto_dynamic_security.so"
    }
}

/// The shipped limits (`deploy/mosquitto/conf.d`).
const LIMITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/mosquitto/conf.d");

fn new_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pentrace-mosquitto-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("broker dir");
    dir
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Broker {
    /// Persistence on: sessions and queued messages survive a restart (as
    /// far as the last save; it saves every second).
    pub fn start() -> Broker {
        Broker::start_with(true, "")
    }

    /// Persistence off: a restart forgets every session.
    pub fn start_without_persistence() -> Broker {
        Broker::start_with(false, "")
    }

    /// `extra` config lines after the shipped limits, which they override
    /// (Mosquitto keeps the last value of a setting).
    pub fn start_with(persistence: bool, extra: &str) -> Broker {
        let (port, dir) = (free_port(), new_dir());
        // `user root`: started as root (CI), Mosquitto would otherwise
        // switch to user mosquitto, which cannot write this directory (no
        // log, no persistence, silently). Ignored when not run as root.
        // Saving every second lets a kill -9 lose at most a second of
        // session state (production saves every 30 s).
        let persistence_lines = if persistence {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n{persistence_lines}\
             log_dest file {}/mosquitto.log\ninclude_dir {LIMITS}\n{extra}",
            dir.display()
        );
        Broker::launch(port, dir, &config, persistence)
    }

    /// The shipped `deploy/mosquitto/mosquitto.conf`, line by line, with
    /// only its paths and listener made local: the dynamic security plugin
    /// (Debian's path), `allow_anonymous false`, the conf.d limits. Its
    /// admin is [`DYNSEC_ADMIN`], made by `mosquitto_ctrl dynsec init` as
    /// deploy/mosquitto/README.md says; nothing else is set up.
    pub fn start_with_dynsec() -> Broker {
        let (port, dir) = (free_port(), new_dir());
        let dynsec = dir.join("dynamic-security.json");
        let init = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args([DYNSEC_ADMIN.0, DYNSEC_ADMIN.1])
            .output()
            .expect("mosquitto_ctrl is installed (package mosquitto-clients)");
        assert!(
            init.status.success(),
            "mosquitto_ctrl dynsec init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/mosquitto/mosquitto.conf"
        ))
        .expect("shipped mosquitto.conf");
        let mut config = String::from("user root\n");
        for line in shipped.lines() {
            let local = match line.split_whitespace().next() {
                Some("listener") => format!("listener {port} 127.0.0.1"),
                Some("persistence_location") => format!("persistence_location {}/", dir.display()),
                Some("log_dest") => format!("log_dest file {}/mosquitto.log", dir.display()),
                Some("plugin") => format!("plugin {}", dynsec_plugin()),
                Some("plugin_opt_config_file") => {
                    format!("plugin_opt_config_file {}", dynsec.display())
                }
                Some("include_dir") => format!("include_dir {LIMITS}"),
                _ => line.to_owned(),
            };
            config.push_str(&local);
            config.push('\n');
        }
        assert!(
            config.contains("allow_anonymous false") && config.contains("plugin_opt_config_file"),
            "the shipped config no longer loads dynsec without anonymous clients:\n{config}"
        );
        // Every packet and dynsec command, for a failing test's message.
        config.push_str("log_type all\n");
        let persistence = config.lines().any(|l| l.trim() == "persistence true");
        Broker::launch(port, dir, &config, persistence)
    }

    fn launch(port: u16, dir: PathBuf, config: &str, persistence: bool) -> Broker {
        std::fs::write(dir.join("mosquitto.conf"), config).expect("broker config");
        let mut broker = Broker {
            port,
            url: format!("mqtt://127.0.0.1:{port}"),
            child: None,
            dir,
            persistence,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (.ci/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "mosquitto exited ({status}) on port {}:\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no final save, connections cut without a DISCONNECT.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after `kill9`: same port, config and persistence
    /// directory (and so whatever it last saved).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Waits until the broker has saved its state after `since` (sessions
    /// and subscriptions made before then survive a kill -9).
    pub fn wait_saved_after(&self, since: SystemTime, timeout: Duration) {
        assert!(self.persistence, "a broker without persistence never saves");
        let db = self.dir.join("mosquitto.db");
        let deadline = Instant::now() + timeout;
        loop {
            let saved = std::fs::metadata(&db)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since);
            if saved {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not save within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it saves its state (sessions, queued messages).
    pub fn persistent(&self) -> bool {
        self.persistence
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

fn mosquitto() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}
