//! A private PostgreSQL cluster per test, for tests that take the database
//! away: `initdb` into a temporary directory, served on a free port on
//! 127.0.0.1 with trust auth, stopped the hard way (`stop_immediate`, as a
//! crash would) and started again on the same port. The machine's own
//! PostgreSQL (127.0.0.1:5432) is never touched.
//!
//! PostgreSQL refuses to run as root; CI runs as root, so there every
//! command runs as the `postgres` user (Debian's package creates it) through
//! `runuser`, and the directory is handed to that user. Binaries: the
//! newest `/usr/lib/postgresql/*/bin` (Debian's layout), or
//! `PENTRACE_TEST_PG_BIN`, or the PATH.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::broker::free_port;

pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    bin: Option<PathBuf>,
    /// Run as this user (`postgres` when we are root).
    run_as: Option<&'static str>,
    running: bool,
}

impl PgCluster {
    /// Creates the cluster and starts it.
    pub fn create() -> PgCluster {
        let dir =
            std::env::temp_dir().join(format!("pentrace-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let run_as = running_as_root().then_some("postgres");
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot hand {} to user {user}",
                dir.display()
            );
        }
        let mut cluster = PgCluster {
            port: free_port(),
            dir,
            bin: pg_bin(),
            run_as,
            running: false,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                // No fsync of the new files: the directory dies with the test.
                "--no-sync",
            ],
        );
        cluster.start();
        cluster
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts it (again), on the same port, and waits until it accepts
    /// connections.
    pub fn start(&mut self) {
        assert!(!self.running, "the cluster is running");
        let data = self.data();
        let log = self.dir.join("postgres.log");
        // fsync off: an immediate stop kills the server, not the machine, so
        // the OS still holds every write; commits stay synchronous, so what
        // was committed before the stop survives it.
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
            ],
        );
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: every backend killed at once, no
    /// checkpoint; the next start recovers from the WAL, as after a crash.
    pub fn stop_immediate(&mut self) {
        self.stop("immediate");
    }

    fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let data = self.data();
        self.run(
            "pg_ctl",
            &["stop", "-D", path_str(&data), "-m", mode, "-w", "-t", "60"],
        );
        self.running = false;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` of the cluster's binaries, as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let program = match &self.bin {
            Some(bin) => bin.join(program),
            None => PathBuf::from(program),
        };
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        // The test's own directory may not be readable by that user.
        command.current_dir(&self.dir);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing in it is worth a checkpoint. Not `run`, which
        // panics: a drop during a panic must not panic again.
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits, up to `timeout`, until a connection to `url` succeeds.
pub async fn wait_accepting(url: &str, timeout: Duration) {
    use sqlx::Connection;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(c) => {
                let _ = c.close().await;
                return;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "{url} does not accept connections: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn running_as_root() -> bool {
    // The effective uid is the second field of /proc/self/status's Uid line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PENTRACE_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
